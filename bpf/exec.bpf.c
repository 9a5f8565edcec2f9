// SPDX-License-Identifier: GPL-2.0
/* Executions of the docker client binaries.
 *
 * Programs:
 *   tp__sched__sched_process_exec  one event per exec of a watched binary
 *
 * sched_process_exec is a scheduler tracepoint, not a syscall one: attaching
 * it does not put every syscall on the tracepoint slow path. The binary is
 * matched by the inode of the new mm's exe_file, so `docker`, `./docker`,
 * `/usr/bin/docker` and symlinks to it all match, whatever PATH said.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "exec.h"
#include "lib/probe.bpf.h"
#include "lib/task.bpf.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EXEC_MAX_BINS);
	__type(key, struct exec_bin_key);
	__type(value, __u32);
} docker_bins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); /* ~300 events: docker CLI execs are rare */
} exec_events SEC(".maps");

DEFINE_COUNTERS(exec_counters, EXEC_CTR_MAX)

SEC("tp/sched/sched_process_exec")
int tp__sched__sched_process_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct inode *inode = BPF_CORE_READ(task, mm, exe_file, f_inode);
	struct exec_bin_key key = {};
	struct exec_event *e;
	unsigned long arg_start, arg_end, n;
	__u64 uid_gid;
	unsigned int loc;

	if (!inode)
		return 0;
	key.ino = BPF_CORE_READ(inode, i_ino);
	key.dev = inode_dev(inode);
	/* Filter first: everything below runs only for the docker binaries. */
	if (!bpf_map_lookup_elem(&docker_bins, &key))
		return 0;

	e = bpf_ringbuf_reserve(&exec_events, sizeof(*e), 0);
	if (!e) {
		count(EXEC_CTR_RINGBUF_FULL);
		return 0;
	}
	uid_gid = bpf_get_current_uid_gid();
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = (__u32)bpf_get_current_pid_tgid();
	e->tgid = bpf_get_current_pid_tgid() >> 32;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)uid_gid;
	e->gid = uid_gid >> 32;
	e->euid = BPF_CORE_READ(task, cred, euid.val);
	e->loginuid = task_loginuid(task);
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	/* __data_loc: low 16 bits offset from ctx, high 16 bits length. */
	loc = ctx->__data_loc_filename;
	bpf_probe_read_kernel_str(e->path, sizeof(e->path), (void *)ctx + (loc & 0xFFFF));

	arg_start = BPF_CORE_READ(task, mm, arg_start);
	arg_end = BPF_CORE_READ(task, mm, arg_end);
	n = arg_end - arg_start;
	if (n > EXEC_ARGS_LEN - 1)
		n = EXEC_ARGS_LEN - 1; /* a power-of-two mask below keeps the verifier sure */
	n = BOUND(n, EXEC_ARGS_LEN - 1);
	e->args_len = 0;
	if (bpf_probe_read_user(e->args, n, (void *)arg_start) == 0)
		e->args_len = n;
	bpf_ringbuf_submit(e, 0);
	count(EXEC_CTR_EVENTS);
	return 0;
}
