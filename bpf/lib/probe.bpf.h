// SPDX-License-Identifier: GPL-2.0
/* Pieces the probes share: x86-64 syscall numbers and the fexit-on-a-syscall
 * hook (dsock, growth), per-CPU counters by reason (all three). */
#ifndef DOCKQUOTA_PROBE_BPF_H
#define DOCKQUOTA_PROBE_BPF_H

/* x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
 * DSOCK_SYSCALLS, GROWTH_SYSCALLS: each probe's dispatch, fexit list and
 * tests/bpf (and README for growth) stay in step with the ones it uses. */
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_pwrite64 18
#define NR_readv 19
#define NR_writev 20
#define NR_sendfile64 40 /* "sendfile" in the table; the function is __x64_sys_sendfile64 */
#define NR_connect 42
#define NR_sendto 44 /* send() is sendto(): curl, Python, most SDKs */
#define NR_recvfrom 45 /* recv() is recvfrom() */
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_splice 275
#define NR_pwritev 296
#define NR_copy_file_range 326
#define NR_pwritev2 328

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

/* fexit on __x64_sys_<name>, handing (NR_<name>, regs, ret) to the probe's
 * own on_sys_exit(): the same path its tp_btf/sys_exit program takes, with
 * no tracepoint slow path for anyone. */
#define FEXIT_SYSCALL(name)                                                   \
	SEC("fexit/__x64_sys_" #name)                                         \
	int BPF_PROG(fexit__##name, struct pt_regs *regs, long ret)           \
	{                                                                     \
		return on_sys_exit(NR_##name, regs, ret);                     \
	}

#endif
