// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Types shared by bpf/growth.bpf.c and agent/probes/growth_probe.cpp: bytes that
 * watched cgroups (containers) write into files on overlayfs.
 * No includes: vmlinux.h or <linux/types.h> comes first. */
#ifndef DOCKQUOTA_GROWTH_H
#define DOCKQUOTA_GROWTH_H

/* Containers watched at once (default max_entries of `growth`; the agent may
 * set another). Preallocated per CPU: 16 bytes x entries x possible CPUs, so
 * 4096 is 64 KiB per CPU. A shared host runs hundreds of containers, not
 * thousands. */
#define GROWTH_MAX_CGROUPS 4096

/* Deepest cgroup v2 level a watched cgroup may sit at (the root is level 0).
 * docker-<id>.scope under system.slice is level 2, /docker/<id> is 2, a
 * Kubernetes pod container 4; 15 leaves room for nesting. One bit each in
 * `watched_levels`, so < 64. */
#define GROWTH_MAX_LEVEL 15

/* The overlayfs superblock magic (include/uapi/linux/magic.h). */
#define GROWTH_OVERLAYFS_MAGIC 0x794c7630

/* Per-CPU counters, indexed by reason (tetragon-style error metrics).
 * GROWTH_CTR_LIST: keep agent/probes/growth_probe.cpp kCounterNames in the same order. */
#define GROWTH_CTR_COUNTED 0    /* write calls added to a watched cgroup */
#define GROWTH_CTR_NOT_OVERLAY 1 /* a watched cgroup wrote elsewhere (volume, tmpfs, pipe): not growth */
#define GROWTH_CTR_NO_FILE 2    /* lost: the fd no longer resolved to a file at syscall exit */
#define GROWTH_CTR_MAX 3

/* Value of `growth`, one per CPU per watched cgroup; the agent sums the CPUs.
 * Key: the cgroup v2 id (the inode number of its directory). */
struct growth_val {
	__u64 bytes;  /* bytes the calls returned as written */
	__u64 writes; /* calls that wrote at least one byte */
};

#endif /* DOCKQUOTA_GROWTH_H */
