// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Types shared by bpf/exec.bpf.c and agent/probes/exec_probe.cpp: executions of the
 * docker client binaries. No includes. */
#ifndef DOCKQUOTA_EXEC_H
#define DOCKQUOTA_EXEC_H

#define EXEC_COMM_LEN 16
#define EXEC_PATH_LEN 256 /* filename as passed to execve; PATH_MAX paths are cut */
#define EXEC_ARGS_LEN 512 /* NUL-separated argv prefix: enough for `docker run ... IMAGE` */
#define EXEC_MAX_BINS 16

/* Per-CPU counters of exec_counters, indexed by reason (tetragon-style error
 * metrics). agent/probes/exec_probe.cpp reports EXEC_CTR_RINGBUF_FULL as lost. */
#define EXEC_CTR_RINGBUF_FULL 0 /* event lost: ring buffer full */
#define EXEC_CTR_EVENTS 1       /* events sent */
#define EXEC_CTR_MAX 2

/* Identity of a watched binary: its inode (symlinks and relative paths resolve
 * to it; a copied binary does not, the socket probe still sees its traffic). */
struct exec_bin_key {
	__u64 ino; /* inode number */
	__u32 dev; /* kernel dev_t: MAJOR << 20 | MINOR */
	__u32 pad; /* zero */
};

struct exec_event {
	__u64 ts_ns;    /* bpf_ktime_get_ns() */
	__u32 pid;      /* thread id (== tgid after exec) */
	__u32 tgid;     /* process id */
	__u32 ppid;     /* parent's tgid */
	__u32 uid;      /* real uid */
	__u32 gid;      /* real gid */
	__u32 euid;     /* effective uid (setuid wrappers) */
	__u32 loginuid; /* audit login uid; (__u32)-1 when unset */
	__u32 args_len; /* bytes in args[] */
	char comm[EXEC_COMM_LEN];   /* comm after exec */
	char path[EXEC_PATH_LEN];   /* filename given to execve, NUL-terminated */
	char args[EXEC_ARGS_LEN];   /* argv, NUL-separated, args_len bytes */
};

#endif /* DOCKQUOTA_EXEC_H */
