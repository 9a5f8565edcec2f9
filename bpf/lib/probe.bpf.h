// SPDX-License-Identifier: GPL-2.0
/* Pieces the probes share: per-CPU counters by reason (all three). The
 * syscall numbers and the fexit-on-a-syscall hook of dsock and growth are
 * per architecture: lib/syscall.bpf.h. */
#ifndef DOCKQUOTA_PROBE_BPF_H
#define DOCKQUOTA_PROBE_BPF_H

/* A per-CPU array `map` of n counters (drops and events by reason, tetragon
 * errmetrics style), and count(reason) to bump one. */
#define DEFINE_COUNTERS(map, n)                                               \
	struct {                                                              \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                      \
		__uint(max_entries, n);                                       \
		__type(key, __u32);                                           \
		__type(value, __u64);                                         \
	} map SEC(".maps");                                                   \
	static __always_inline void count(__u32 reason)                       \
	{                                                                     \
		__u64 *c = bpf_map_lookup_elem(&map, &reason);                \
		if (c)                                                        \
			*c += 1;                                              \
	}

#endif
