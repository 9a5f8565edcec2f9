// SPDX-License-Identifier: GPL-2.0
/* Bytes that watched cgroups (containers) write into files on overlayfs.
 *
 * Programs (one of three hook sets is loaded, chosen by the agent):
 *   fexit__ovl_{write_iter,splice_write,copy_file_range}
 *                          set "fentry" on kernels with overlayfs BTF (built in,
 *                          or module BTF: 5.11+): overlayfs's own write paths
 *   fexit__{write,pwrite64,...,vfs_copy_file_range}
 *                          set "fentry" elsewhere (5.10: no module BTF): the
 *                          eight write syscalls, hooked one by one
 *   tp_btf__sys_exit       set "tracepoint" (kernels that refuse fentry, like
 *                          the lockdown host): every syscall's return,
 *                          dispatched by number
 *
 * Nothing is sent to userspace: each call adds its byte count to the writer's
 * entry in `growth`, a per-CPU hash the agent reads on a timer. The key is the
 * cgroup v2 id of the container: the writer's own cgroup or its ancestor at a
 * level some watched cgroup sits at, so processes in sub-cgroups of a
 * container (systemd inside it, nested runtimes) count for the container.
 *
 * Filter first: the agent sets a bit in watched_levels per level that holds a
 * watched cgroup (usually one level). A writer outside every watched cgroup
 * pays, per set bit, one helper call and one hash lookup, and nothing else.
 * The lookup that filters is also the one that finds the counters.
 *
 * Only files on overlayfs count: that is a container's writable layer.
 * Volumes, bind mounts, tmpfs, pipes and sockets do not grow it.
 *
 * Not counted (see README): shared mmap stores, fallocate/truncate, io_uring
 * and aio writes on the syscall sets (and async completions on all), 32-bit
 * (ia32) syscalls on the tracepoint set, and writes into a container's layer
 * by processes outside its cgroup (docker cp, the host writing into merged/).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "growth.h"
#include "lib/probe.bpf.h"
#include "lib/syscall.bpf.h"
#include "lib/task.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* 1: bpf_get_current_ancestor_cgroup_id() is allowed in tracing programs
 * (5.10 refuses it there: "unknown func bpf_get_current_ancestor_cgroup_id#123").
 * 0: read the ancestor from task->cgroups->dfl_cgrp. Set by the agent, which
 * probes. */
const volatile __u8 targ_ancestor_helper = 1;
/* 1: bpf_get_current_task_btf() exists (5.11+), so the fd table is walked by
 * direct loads (see current_fd_file_btf). Set by the agent, which probes. */
const volatile __u8 targ_task_btf = 1;

/* Bit L set = some watched cgroup sits at cgroup v2 level L. Written by the
 * agent through the mmapped .bss: after inserting into `growth`, and cleared
 * before deleting the last cgroup of a level. */
__u64 watched_levels = 0;

/* Watched cgroups and their counters. The agent inserts a zeroed entry per
 * container (so the programs never insert: no map-full path in the kernel)
 * and sums the CPUs when it reads. max_entries set by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, GROWTH_MAX_CGROUPS);
	__type(key, __u64); /* cgroup v2 id */
	__type(value, struct growth_val);
} growth SEC(".maps");

DEFINE_COUNTERS(counters, GROWTH_CTR_MAX)

/* Before 6.2 (commit 7f203bc89eb6 "cgroup: Replace cgroup->ancestor_ids[]
 * with ->ancestors[]") a cgroup held its ancestors' ids, not pointers. */
struct cgroup___ancestor_ids {
	int level;
	__u64 ancestor_ids[];
} __attribute__((preserve_access_index));

/* The cgroup v2 id of the current task's ancestor at `level` (its own at its
 * own level), or 0 when the task sits above it: what the helper returns. */
static __always_inline __u64 ancestor_cgroup_id(int level)
{
	struct task_struct *task;
	struct cgroup *cgrp, *anc = NULL;
	__u64 id = 0;

	if (targ_ancestor_helper)
		return bpf_get_current_ancestor_cgroup_id(level);
	task = (struct task_struct *)bpf_get_current_task();
	cgrp = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	if (!cgrp || level > BPF_CORE_READ(cgrp, level))
		return 0;
	if (bpf_core_field_exists(((struct cgroup___ancestor_ids *)cgrp)->ancestor_ids)) {
		bpf_probe_read_kernel(&id, sizeof(id), &((struct cgroup___ancestor_ids *)cgrp)->ancestor_ids[level]);
		return id;
	}
	bpf_probe_read_kernel(&anc, sizeof(anc), &cgrp->ancestors[level]);
	return anc ? BPF_CORE_READ(anc, kn, id) : 0;
}

/* The counters of the watched cgroup the current task is in (at any depth
 * below it), or NULL. */
static __always_inline struct growth_val *watched_cgroup(void)
{
	__u64 levels = watched_levels;
	struct growth_val *v;
	__u64 id;
	int l;

	if (!levels)
		return NULL;
#pragma unroll
	for (l = 1; l <= GROWTH_MAX_LEVEL; l++) {
		if (!(levels & (1ULL << l)))
			continue;
		/* 0 when the task sits above level l: so does every deeper level. */
		id = ancestor_cgroup_id(l);
		if (!id)
			return NULL;
		v = bpf_map_lookup_elem(&growth, &id);
		if (v)
			return v;
	}
	return NULL;
}

static __always_inline void add(struct growth_val *v, long ret)
{
	/* Per-CPU value: no other writer on this CPU while we run. */
	v->bytes += ret;
	v->writes += 1;
	count(GROWTH_CTR_COUNTED);
}

/* ---- syscall sets ------------------------------------------------------- */

static __always_inline int add_if_overlay(struct growth_val *v, struct file *file, long ret)
{
	if (BPF_CORE_READ(file, f_inode, i_sb, s_magic) != GROWTH_OVERLAYFS_MAGIC) {
		count(GROWTH_CTR_NOT_OVERLAY);
		return 0;
	}
	add(v, ret);
	return 0;
}

/* Syscall numbers: lib/syscall.bpf.h (GROWTH_SYSCALLS: keep the dispatch below, the
 * fexit list and README in step), per architecture. */

/* Syscall `nr` returned `ret`; its arguments are still in regs. */
static __always_inline int on_sys_exit(long nr, struct pt_regs *regs, long ret)
{
	struct growth_val *v;
	struct file *file;
	__u32 fd;

	switch (nr) {
	case NR_write:
	case NR_pwrite64:
	case NR_writev:
	case NR_pwritev:
	case NR_pwritev2:
	case NR_sendfile64:
		fd = (__u32)SYSCALL_ARG1(regs); /* the fd written, or out_fd */
		break;
	case NR_splice:
	case NR_copy_file_range:
		fd = (__u32)SYSCALL_ARG3(regs); /* fd_out, the third argument */
		break;
	default:
		return 0;
	}
	if (ret <= 0)
		return 0;
	v = watched_cgroup();
	if (!v)
		return 0;
	if (targ_task_btf)
		file = current_fd_file_btf(fd);
	else
		file = task_fd_file((struct task_struct *)bpf_get_current_task(), fd);
	if (!file) {
		count(GROWTH_CTR_NO_FILE);
		return 0;
	}
	return add_if_overlay(v, file, ret);
}

/* Hook set "tracepoint": works wherever BTF does (the host here: lockdown
 * refuses fentry). Runs on every syscall's return, like dsock's; when both
 * are attached, the tracepoint slow path is paid once. */
SEC("tp_btf/sys_exit")
int BPF_PROG(tp_btf__sys_exit, struct pt_regs *regs, long ret)
{
	/* The numbers are the 64-bit table's; ia32 (arm64: AArch32) has its own. */
	if (!SYSCALL_NATIVE(regs))
		return 0;
	return on_sys_exit(SYSCALL_NR(regs), regs, ret);
}

/* Hook set "fentry" without overlayfs BTF: fexit on the syscall functions.
 * Only these eight syscalls run a program, and no process pays the
 * tracepoint slow path. */
FEXIT_SYSCALL(write)
FEXIT_SYSCALL(pwrite64)
FEXIT_SYSCALL(writev)
FEXIT_SYSCALL(pwritev)
FEXIT_SYSCALL(pwritev2)
FEXIT_SYSCALL(sendfile64)
FEXIT_SYSCALL(splice)

/* copy_file_range at vfs_copy_file_range: on 5.10 the BTF of
 * __x64_sys_copy_file_range sees struct pt_regs only as a forward declaration
 * ("arg0 type FWD is not a struct", as dsock found for net/socket.c). The
 * out file comes as an argument. overlayfs copies between its upper files
 * through this function again; those are not overlay files, so they are
 * skipped and the copy counts once. */
SEC("fexit/vfs_copy_file_range")
int BPF_PROG(fexit__vfs_copy_file_range, struct file *file_in, loff_t pos_in, struct file *file_out,
	     loff_t pos_out, size_t len, unsigned int flags, long ret)
{
	struct growth_val *v;

	if (ret <= 0)
		return 0;
	v = watched_cgroup();
	return v ? add_if_overlay(v, file_out, ret) : 0;
}

/* ---- overlayfs set -------------------------------------------------------- */

/* Hook set "fentry" with overlayfs BTF: overlayfs's file operations, so only
 * writes to overlay files run a program at all (everything else on the host
 * pays nothing), and every way of writing through the overlay file counts:
 * the syscalls above, io_uring and aio (completed in the call), kernel_write.
 * The overlay file is the one written; the upper file below it is written
 * through backing-file helpers that do not come back here, so nothing is
 * counted twice. */
/* These functions only ever see overlay files: a successful write by a
 * watched writer counts whole. */
static __always_inline int count_overlay_write(long ret)
{
	struct growth_val *v;

	if (ret <= 0)
		return 0; /* errors, and -EIOCBQUEUED: async completions are not seen */
	v = watched_cgroup();
	if (v)
		add(v, ret);
	return 0;
}

SEC("fexit/ovl_write_iter")
int BPF_PROG(fexit__ovl_write_iter, struct kiocb *iocb, struct iov_iter *iter, long ret)
{
	return count_overlay_write(ret);
}

/* sendfile/splice into an overlay file (ovl_splice_write hands the pages to
 * the upper file's splice_write, not to ovl_write_iter). */
SEC("fexit/ovl_splice_write")
int BPF_PROG(fexit__ovl_splice_write, struct pipe_inode_info *pipe, struct file *out, loff_t *ppos,
	     size_t len, unsigned int flags, long ret)
{
	return count_overlay_write(ret);
}

/* copy_file_range into an overlay file (coreutils cp >= 9 uses it). When it
 * returns -EOPNOTSUPP the kernel falls back to splicing, which lands in
 * ovl_splice_write: still counted once. */
SEC("fexit/ovl_copy_file_range")
int BPF_PROG(fexit__ovl_copy_file_range, struct file *file_in, loff_t pos_in, struct file *file_out,
	     loff_t pos_out, size_t len, unsigned int flags, long ret)
{
	return count_overlay_write(ret);
}
