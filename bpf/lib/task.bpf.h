/* Task helpers shared by the probes. */
#ifndef DOCKQUOTA_TASK_BPF_H
#define DOCKQUOTA_TASK_BPF_H

#include <bpf/bpf_core_read.h>

/* audit login uid; (u32)-1 when unset or when the kernel has no CONFIG_AUDIT
 * (task_struct.loginuid only exists with CONFIG_AUDITSYSCALL). */
static __always_inline __u32 task_loginuid(struct task_struct *task)
{
	if (!bpf_core_field_exists(task->loginuid))
		return (__u32)-1;
	return BPF_CORE_READ(task, loginuid.val);
}

/* The struct file behind fd in the current task, or NULL. */
static __always_inline struct file *task_fd_file(struct task_struct *task, __u32 fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = NULL;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]))
		return NULL;
	return f;
}

/* Kernel dev_t of the filesystem holding inode. */
static __always_inline __u32 inode_dev(struct inode *inode)
{
	return BPF_CORE_READ(inode, i_sb, s_dev);
}

#endif /* DOCKQUOTA_TASK_BPF_H */
