// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* Types shared by bpf/dsock.bpf.c and agent/probes/dsock_probe.cpp: connections to
 * the Docker socket and the bytes their clients send and receive.
 * No includes: vmlinux.h or <linux/types.h> comes first. */
#ifndef DOCKQUOTA_DSOCK_H
#define DOCKQUOTA_DSOCK_H

/* Bytes copied per syscall. 4096 = the docker CLI's (Go net/http) read and
 * write buffer, so one docker CLI call is captured whole; an Engine API create
 * response with its headers is ~350 bytes, a request line with headers < 1 KiB.
 * Larger calls are uploads (build contexts, image loads) whose bodies
 * attribution never needs; their true length is still reported. Power of two. */
#define DSOCK_CAP_BYTES 4096
/* A write (not writev/sendmsg) that starts like a request line and is longer
 * than one copy is copied whole, in pieces of the copy size sent as events of
 * their own, up to this many pieces (256 KiB at 4096): request heads longer
 * than one copy (registry auth headers, padded requests) and requests
 * pipelined behind a body in the same write must not fall into a gap, or
 * pairing would have to be doubted. The rest is reported by length. */
#define DSOCK_MAX_PIECES 64
/* iovecs looked at per writev/readv/sendmsg/recvmsg (Go and curl use 1-2). */
#define DSOCK_MAX_IOV 8
#define DSOCK_COMM_LEN 16
/* Watched socket inodes (docker.sock paths; /var/run and /run are one inode). */
#define DSOCK_MAX_SOCKS 16

/* dsock_event.type */
#define DSOCK_EV_CONNECT 1 /* a client connected to a watched socket (socket set: its first
                              send or receive since the probe loaded); data = exe name */
#define DSOCK_EV_TX 2      /* the client wrote (request direction) */
#define DSOCK_EV_RX 3      /* the client read (response direction) */
#define DSOCK_EV_CLOSE 4   /* the client closed the fd (socket set: either side saw the other gone) */
#define DSOCK_EV_EXIT 5    /* the client process exited: all its connections are gone */

/* Why a connection ended: a DSOCK_EV_CLOSE event's len (it carries no bytes). */
#define DSOCK_END_CLOSE 1     /* the client closed the fd (syscall sets) */
#define DSOCK_END_REUSED 2    /* its fd named another socket: closed unseen (dup2, close_range, socket set) */
#define DSOCK_END_EOF 3       /* socket set: the client read EOF (dockerd closed) */
#define DSOCK_END_EPIPE 4     /* socket set: the client's send got EPIPE */
#define DSOCK_END_PEER_SAW 5  /* socket set: dockerd read EOF or got EPIPE, the client's socket orphaned */

/* dsock_event.flags */
#define DSOCK_F_LOST_TX 1 /* an earlier event of this connection's send side was lost (ring full):
                             bytes are missing from the stream before this one */
#define DSOCK_F_LOST_RX 2 /* the same for the receive side */

/* Per-CPU counters, indexed by reason (tetragon-style error metrics).
 * DSOCK_CTR_LIST: keep kDsockCounterNames in agent/probes/dsock_event.hpp in the same order. */
#define DSOCK_CTR_RINGBUF_FULL 0   /* event lost: ring buffer full */
#define DSOCK_CTR_READ_FAIL 1      /* event sent without data: user memory unreadable */
#define DSOCK_CTR_TRACK_FULL 2     /* connection not tracked: map full */
#define DSOCK_CTR_UNSUPPORTED_CALL 3 /* socket set: bytes moved by a call it cannot read (sendmmsg,
                                       splice, sendfile, io_uring) or on an fd it cannot name */
#define DSOCK_CTR_TRUNCATED 4      /* calls longer than the copy limit (not a loss) */
#define DSOCK_CTR_STALE_FD 5       /* fd no longer the tracked socket (dup2/close_range) */
#define DSOCK_CTR_EVENTS 6         /* events sent */
#define DSOCK_CTR_CONNECTS 7       /* connections tracked */
#define DSOCK_CTR_SOCK_REUSED 8    /* a tracked (tgid, fd) now names another socket (a new
                                      connection on a reused fd and address): the old one ended */
#define DSOCK_CTR_IGNORED 9        /* calls on connections the agent stopped following (raw streams,
                                      connections dropped over the memory budget) */
#define DSOCK_CTR_MAX 10

/* Key of a tracked connection: the client's process and fd. */
struct dsock_key {
	__u32 tgid; /* process (thread group) id, init pid namespace */
	__u32 fd;   /* the connected socket's descriptor in that process */
};

/* A tracked connection. Its identity is the socket's inode number together
 * with the struct file (syscall sets) or struct sock (socket set): addresses
 * are reused as soon as a socket is freed, inode numbers are not (a 32-bit
 * counter shared by every pipe, socket and anon inode of the host), and the
 * pair is never reused by two live sockets. */
struct dsock_conn {
	__u64 conn_id; /* unique per agent lifetime, assigned when tracking starts */
	__u64 file;    /* struct file * of the fd at connect: detects fd reuse */
	__u64 sk;      /* socket set: the client's struct sock * (conn_socks key); else 0 */
	__u64 ino;     /* the client socket's inode number */
	__u32 turn;    /* exchange number, from 1: +1 whenever the client sends after it received */
	__u32 last_dir;/* 0 = the last call sent, 1 = it received */
	__u32 sock;    /* index of the watched socket (dsock_sock_val.index) */
	__u32 lost;    /* DSOCK_F_LOST_* bits not yet reported in an event */
};

/* The agent's instructions for one connection (map conn_ctl, keyed by
 * conn_id). Only the agent writes it, always whole; the kernel side only
 * reads it, so nothing the kernel keeps in dsock_conn is ever overwritten.
 * A mute names the exchange (turn) it is for: one that arrives after the
 * client moved on to its next request matches nothing and is ignored. The
 * events still report every call's length, so stream framing stays exact. */
struct dsock_ctl {
	__u32 mute_tx_turn; /* do not copy what the client sends during this turn (0 = none) */
	__u32 mute_rx_turn; /* do not copy what the client receives during this turn (0 = none) */
	__u32 ignore;       /* 1: send no more events for this connection (raw stream, dropped) */
	__u32 pad;
};

/* Identity of a watched socket file: the listener's inode, however the client
 * spelled the path (symlinks, /var/run vs /run, relative paths). */
struct dsock_sock_key {
	__u64 ino; /* inode number */
	__u32 dev; /* kernel dev_t of the filesystem: MAJOR << 20 | MINOR */
	__u32 pad; /* zero */
};

/* The path dockerd bound (unix_address.name.sun_path), zero-padded. Matches a
 * socket dockerd re-created after a restart before the agent re-reads inodes. */
#define DSOCK_PATH_LEN 108
struct dsock_path_key {
	char path[DSOCK_PATH_LEN]; /* sun_path as bound, NUL-padded */
};

struct dsock_sock_val {
	__u32 index; /* position in the agent's configured socket list */
	__u32 pad;
};

struct dsock_event {
	__u64 ts_ns;    /* bpf_ktime_get_ns() when the call returned */
	__u64 conn_id;  /* dsock_conn.conn_id; 0 for DSOCK_EV_EXIT */
	__u64 len;      /* bytes the syscall moved (>= cap_len) */
	__u32 type;     /* DSOCK_EV_* */
	__u32 tgid;     /* process id */
	__u32 pid;      /* thread id */
	__u32 uid;      /* real uid of the caller (init user namespace) */
	__u32 gid;      /* real gid */
	__u32 loginuid; /* audit login uid; (__u32)-1 when unset */
	__u32 fd;       /* the socket fd */
	__u32 cap_len;  /* bytes in data[] */
	__u32 sock;     /* index of the watched socket */
	__u32 turn;     /* dsock_conn.turn when the call ran (0 for DSOCK_EV_EXIT) */
	__u32 flags;    /* DSOCK_F_* */
	__u32 pad;
	__u64 ino;      /* the client socket's inode number (0 for DSOCK_EV_EXIT) */
	char comm[DSOCK_COMM_LEN]; /* task comm */
	__u8 data[DSOCK_CAP_BYTES]; /* first cap_len bytes of the call (only cap_len are sent) */
};

#endif /* DOCKQUOTA_DSOCK_H */
