// SPDX-License-Identifier: GPL-2.0
/* Connections to the Docker socket, and the bytes their clients move.
 *
 * Programs (one of three hook sets is loaded; the agent tries them in this order):
 *   tp_btf__sock_{send,recv}_length  "socket" set (6.3+): every socket send and
 *                                  receive, after it moved its bytes; the syscall's
 *                                  arguments are read from the task's pt_regs
 *   fexit__{read,write,...}        "fentry" set: the ten syscalls, hooked one by
 *                                  one (the socket ones at their __sys_* functions)
 *   tp_btf__sys_exit               "tracepoint" set: every syscall's return:
 *                                  connect, close and the eight read/write calls
 *   tp_btf__sched_process_fork     syscall sets: a tracked process's child may use
 *                                  the connections it inherits
 *   tp__sched__sched_process_exit  forget a process's connections (all sets)
 *
 * Why the socket set comes first: it is the only one that costs nothing to
 * syscalls that are not socket I/O. Any syscall tracepoint (even one program
 * on sys_exit) puts every syscall of every process on the tracepoint slow path
 * (+46 ns and more on a null syscall here), and fexit on read/write still runs
 * a program on every file read and write. sock_send_length/sock_recv_length
 * fire in sock_sendmsg_nosec()/sock_recvmsg_nosec(), which every socket
 * read/write/send/recv call passes through (the sock tracepoints of Linux
 * 6.3; 6.1 has none, checked in the BTF of the vmtest kernels), and need
 * neither fentry (refused under lockdown here) nor kprobes.
 *
 * Why one raw (BTF) tracepoint on sys_exit, and nothing on sys_enter:
 * - Any syscall tracepoint puts every syscall of every process on the slow
 *   path; that cost is paid once, whatever we attach. On top of it, a
 *   syscalls:sys_{enter,exit}_* program costs a perf record per call (built
 *   even for processes we ignore): measured +290 ns on a 4 KiB file write with
 *   enter+exit programs. A raw tracepoint calls the program directly.
 * - At sys_exit the arguments are still in pt_regs (lib/syscall.bpf.h) and
 *   the result is known, so one program sees everything: no enter program, no map of
 *   calls in flight, half the invocations.
 * - Filter first, copy second: for everything but connect, the first step is
 *   one bit test in an array map indexed by tgid (the verifier inlines array
 *   lookups). Only processes that connected to the Docker socket have their bit
 *   set. The bit is set with an atomic add guarded by a NOEXIST insert into
 *   tgid_refs, so no fetch-atomics are needed (5.10 lacks them).
 *
 * Wake-ups: events are written with BPF_RB_NO_WAKEUP and the agent polls on a
 * short timer while connections are open; only a connect (rare, and the moment
 * the agent must start polling) or a filling ring forces a wake-up. Waking the
 * consumer on every event made docker.sock round trips 2.6x slower here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "dsock.h"
#include "lib/probe.bpf.h"
#include "lib/syscall.bpf.h"
#include "lib/task.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_UNIX 1
#define DIR_TX 0
#define DIR_RX 1

/* Bytes copied per call (<= DSOCK_CAP_BYTES); set by the agent before load. */
const volatile __u32 targ_cap_bytes = DSOCK_CAP_BYTES;
/* The agent's own tgid: its Docker API client is not a user to attribute,
 * and capturing it would only feed the agent its own traffic. */
const volatile __u32 targ_self_tgid = 0;
/* Force a consumer wake-up once this much data waits in the ring. */
const volatile __u64 targ_wakeup_bytes = 512 * 1024;

/* One bit per tgid; max_entries = pid_max / 64 + 1, set by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tracked_tgids SEC(".maps");

/* tgids whose bit is set: the NOEXIST insert makes exactly one CPU set it.
 * The value says why: TGID_CONNECTED (it connected to a watched socket) or
 * TGID_INHERITED (syscall sets: a child forked by a tracked process, which
 * may use its parent's connections on inherited fds). */
#define TGID_CONNECTED 1
#define TGID_INHERITED 2
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u32);
} tgid_refs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); /* open docker.sock connections on one host */
	__type(key, struct dsock_key);
	__type(value, struct dsock_conn);
} conns SEC(".maps");

/* The agent's instructions per connection (struct dsock_ctl), by conn_id.
 * Written only by the agent, read here: see dsock.h. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); /* as conns */
	__type(key, __u64);
	__type(value, struct dsock_ctl);
} conn_ctl SEC(".maps");

/* Socket set only: the client's struct sock -> its conns key, so that the
 * server side seeing the client gone (dockerd's read returning 0) can end the
 * connection: the socket set has no close() hook. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); /* as conns */
	__type(key, __u64);
	__type(value, struct dsock_key);
} conn_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DSOCK_MAX_SOCKS);
	__type(key, struct dsock_sock_key);
	__type(value, struct dsock_sock_val);
} watched_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DSOCK_MAX_SOCKS);
	__type(key, struct dsock_path_key);
	__type(value, struct dsock_sock_val);
} watched_paths SEC(".maps");

/* Bit n set: a watched path is n bytes long (the agent writes it with the
 * paths). The bound-path fallback reads and hashes a 108-byte key; on the
 * socket set it would run for every send on every other bound unix socket
 * (journald, D-Bus), so a length that no watched path has rejects first. */
__u64 watched_path_lens[2] = {};

/* The event is built here, then copied into the ring at its real length. The
 * spill area lets the verifier prove every copy (offset < CAP, size < 2*CAP)
 * stays inside the value. */
struct scratch {
	struct dsock_event ev;
	__u8 spill[2 * DSOCK_CAP_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_buf SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024); /* set by the agent (ringbuf_kib) */
} events SEC(".maps");

DEFINE_COUNTERS(counters, DSOCK_CTR_MAX)

static __always_inline int tgid_tracked(__u32 tgid)
{
	__u32 idx = tgid >> 6;
	__u64 *w = bpf_map_lookup_elem(&tracked_tgids, &idx);

	return w && (*w & (1ULL << (tgid & 63)));
}

static __always_inline void tgid_mark(__u32 tgid, __u32 why)
{
	__u32 idx = tgid >> 6;
	__u64 *w;
	long err = bpf_map_update_elem(&tgid_refs, &tgid, &why, BPF_NOEXIST);

	if (err) {
		if (err != -17 /* EEXIST: already marked */)
			count(DSOCK_CTR_TRACK_FULL);
		return;
	}
	w = bpf_map_lookup_elem(&tracked_tgids, &idx);
	if (w)
		__sync_fetch_and_add(w, 1ULL << (tgid & 63));
}

static __always_inline void tgid_unmark(__u32 tgid)
{
	__u32 idx = tgid >> 6;
	__u64 *w;

	if (bpf_map_delete_elem(&tgid_refs, &tgid))
		return;
	w = bpf_map_lookup_elem(&tracked_tgids, &idx);
	if (w)
		__sync_fetch_and_add(w, -(1ULL << (tgid & 63)));
}

static __always_inline struct scratch *event_start(__u32 type, __u32 fd, const struct dsock_conn *conn)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_buf, &zero);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ug = bpf_get_current_uid_gid();

	if (!s)
		return NULL;
	s->ev.ts_ns = bpf_ktime_get_ns();
	s->ev.conn_id = conn ? conn->conn_id : 0;
	s->ev.sock = conn ? conn->sock : 0;
	s->ev.turn = conn ? conn->turn : 0;
	s->ev.ino = conn ? conn->ino : 0;
	s->ev.flags = 0;
	s->ev.len = 0;
	s->ev.type = type;
	s->ev.tgid = id >> 32;
	s->ev.pid = (__u32)id;
	s->ev.uid = (__u32)ug;
	s->ev.gid = ug >> 32;
	s->ev.loginuid = task_loginuid(task);
	s->ev.fd = fd;
	s->ev.cap_len = 0;
	s->ev.pad = 0;
	bpf_get_current_comm(s->ev.comm, sizeof(s->ev.comm));
	return s;
}

/* Returns 0 when the event is in the ring, -1 when it was lost. */
static __always_inline int event_send(struct scratch *s, __u32 cap, int wake)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (wake || bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= targ_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	s->ev.cap_len = cap;
	if (bpf_ringbuf_output(&events, &s->ev,
			       __builtin_offsetof(struct dsock_event, data) + BOUND(cap, 2 * DSOCK_CAP_BYTES - 1),
			       flags)) {
		count(DSOCK_CTR_RINGBUF_FULL);
		return -1;
	}
	count(DSOCK_CTR_EVENTS);
	return 0;
}

static __always_inline void send_control(__u32 type, __u32 fd, const struct dsock_conn *conn, int wake)
{
	struct scratch *s = event_start(type, fd, conn);

	if (s)
		event_send(s, 0, wake);
}

/* ---- which connections are Docker's ---------------------------------------- */

/* The inode number of a socket: SOCK_INODE(), the inode that follows the
 * struct socket in its struct socket_alloc (the socket is its first member
 * on every kernel). 0 once the socket is released (an orphaned sk). */
static __always_inline __u64 sock_ino(struct sock *sk)
{
	struct socket *sock = BPF_CORE_READ(sk, sk_socket);

	if (!sock)
		return 0;
	return BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
}

/* Second chance for a socket whose inode the agent has not seen yet (dockerd
 * re-created it): the address it was bound to. Only runs when the inode lookup
 * missed, and only for addresses as long as a watched path. */
static __always_inline struct dsock_sock_val *lookup_bound_path(struct unix_sock *peer)
{
	__u32 zero = 0;
	struct scratch *s;
	struct dsock_path_key *key;
	struct unix_address *addr = BPF_CORE_READ(peer, addr);
	/* unix_mkname() stores a path address as strlen(path) + 3 bytes (family, NUL). */
	__u32 plen;

	if (!addr)
		return NULL;
	plen = (__u32)BPF_CORE_READ(addr, len) - 3;
	if (plen >= DSOCK_PATH_LEN || !(watched_path_lens[BOUND(plen >> 6, 1)] & (1ULL << (plen & 63))))
		return NULL;
	s = bpf_map_lookup_elem(&scratch_buf, &zero);
	if (!s)
		return NULL;
	/* The scratch event's data area doubles as a zeroed key buffer. */
	key = (struct dsock_path_key *)s->ev.data;
	__builtin_memset(key, 0, sizeof(*key));
	if (bpf_probe_read_kernel_str(key->path, sizeof(key->path),
				      __builtin_preserve_access_index(&addr->name[0].sun_path)) <= 1)
		return NULL;
	return bpf_map_lookup_elem(&watched_paths, key);
}

/* The watched socket whose listener file is (dev, ino), else the one peer
 * was bound to by path; NULL when neither. */
static __always_inline struct dsock_sock_val *watched_listener(__u32 dev, __u64 ino, struct unix_sock *peer)
{
	struct dsock_sock_key skey = {.ino = ino, .dev = dev};
	struct dsock_sock_val *watched = bpf_map_lookup_elem(&watched_socks, &skey);

	return watched ? watched : lookup_bound_path(peer);
}

/* The watched socket that client socket sk is connected to, or NULL.
 * unix_stream_connect() gives the new server-side socket a reference to the
 * listener's path (newu->path = otheru->path), so the peer's dentry is the
 * socket file dockerd bound, however the client named it. */
static __always_inline struct dsock_sock_val *watched_peer(struct sock *sk)
{
	struct sock *peer = BPF_CORE_READ((struct unix_sock *)sk, peer);
	struct inode *inode;

	if (!peer)
		return NULL;
	inode = BPF_CORE_READ((struct unix_sock *)peer, path.dentry, d_inode);
	if (!inode)
		return NULL; /* abstract or unbound socket */
	return watched_listener(inode_dev(inode), BPF_CORE_READ(inode, i_ino), (struct unix_sock *)peer);
}

static __always_inline struct sock *file_sock(struct file *file)
{
	struct socket *sock = BPF_CORE_READ(file, private_data);

	return sock ? BPF_CORE_READ(sock, sk) : NULL;
}

/* The connect event carries the name of the client's executable in data[]:
 * short-lived clients (curl) are often gone before the agent could read
 * /proc/<pid>/exe. (bpf_d_path is not allowed in tracepoints; the name is.) */
static __always_inline void connect_event(__u32 fd, const struct dsock_conn *conn, struct task_struct *task)
{
	struct scratch *s = event_start(DSOCK_EV_CONNECT, fd, conn);
	const unsigned char *name;
	long n;

	if (!s)
		return;
	name = BPF_CORE_READ(task, mm, exe_file, f_path.dentry, d_name.name);
	n = name ? bpf_probe_read_kernel_str(s->ev.data, 256, name) : 0;
	event_send(s, n > 1 ? n - 1 : 0, 1);
}

/* Starts tracking the connection on (tgid, fd): a connect on the syscall sets,
 * the first send or receive on the socket set (which also records sk, to end
 * the connection when the server sees the client gone). Returns the entry. */
static __always_inline struct dsock_conn *track_conn(struct task_struct *task, __u32 tgid, __u32 fd,
						     struct file *file, struct sock *sk,
						     const struct dsock_sock_val *watched)
{
	struct dsock_key key = {.tgid = tgid, .fd = fd};
	struct dsock_conn conn = {};
	__u64 skp = (__u64)sk;

	conn.conn_id = (bpf_ktime_get_ns() << 6) | (bpf_get_smp_processor_id() & 63);
	conn.file = (__u64)file;
	conn.sk = skp;
	conn.ino = BPF_CORE_READ(file, f_inode, i_ino);
	conn.turn = 1;
	conn.last_dir = DIR_TX;
	conn.sock = watched->index;
	if (bpf_map_update_elem(&conns, &key, &conn, BPF_ANY) ||
	    (sk && bpf_map_update_elem(&conn_socks, &skp, &key, BPF_ANY))) {
		bpf_map_delete_elem(&conns, &key);
		count(DSOCK_CTR_TRACK_FULL);
		return NULL;
	}
	tgid_mark(tgid, TGID_CONNECTED);
	count(DSOCK_CTR_CONNECTS);
	connect_event(fd, &conn, task);
	return bpf_map_lookup_elem(&conns, &key);
}

/* Stops tracking `entry` (already looked up at key) and tells the agent
 * why (DSOCK_END_*, in the close event's len: a close carries no bytes). */
static __always_inline void untrack_conn(const struct dsock_key *key, struct dsock_conn *entry, __u32 why)
{
	struct dsock_conn gone = *entry;
	struct scratch *s;

	bpf_map_delete_elem(&conns, key);
	bpf_map_delete_elem(&conn_ctl, &gone.conn_id);
	if (gone.sk) {
		/* Only its own entry: a connection that ended unseen is untracked
		 * late (when its fd is reused), and its struct sock address may
		 * belong by then to a newer connection of the same client. */
		struct dsock_key *k = bpf_map_lookup_elem(&conn_socks, &gone.sk);

		if (k && k->tgid == key->tgid && k->fd == key->fd)
			bpf_map_delete_elem(&conn_socks, &gone.sk);
	}
	s = event_start(DSOCK_EV_CLOSE, key->fd, &gone);
	if (!s)
		return;
	s->ev.tgid = key->tgid; /* the client, also when the server side noticed */
	s->ev.len = why;
	event_send(s, 0, 0);
}

/* Syscall sets: starts tracking fd of tgid if it is a unix socket connected
 * to a watched one (after a connect, or a forked child's first call on an
 * inherited fd). Returns the entry, or NULL. */
static __always_inline struct dsock_conn *track_fd(struct task_struct *task, __u32 tgid, __u32 fd)
{
	struct dsock_sock_val *watched;
	struct file *file = task_fd_file(task, fd);
	struct sock *sk;

	if (!file)
		return NULL;
	sk = file_sock(file);
	if (!sk || BPF_CORE_READ(sk, __sk_common.skc_family) != AF_UNIX)
		return NULL;
	watched = watched_peer(sk);
	return watched ? track_conn(task, tgid, fd, file, NULL, watched) : NULL;
}

static __always_inline int on_connect(__u32 fd, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (ret != 0 || (id >> 32) == targ_self_tgid)
		return 0;
	track_fd((struct task_struct *)bpf_get_current_task(), id >> 32, fd);
	return 0;
}

/* ---- read / write ------------------------------------------------------- */

static __always_inline __u32 copy_iov(struct scratch *s, __u64 uiov, __u32 iovcnt, __u64 len, __u32 cap)
{
	__u32 off = 0;
	int i;

#pragma unroll
	for (i = 0; i < DSOCK_MAX_IOV; i++) {
		struct iovec iov;
		__u64 n;

		if (i >= iovcnt || off >= cap || off >= len)
			break;
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(uiov + i * sizeof(iov))))
			break;
		n = iov.iov_len;
		if (n > cap - off)
			n = cap - off;
		if (n > len - off)
			n = len - off;
		if (bpf_probe_read_user(&s->ev.data[BOUND(off, DSOCK_CAP_BYTES - 1)],
					BOUND(n, 2 * DSOCK_CAP_BYTES - 1), iov.iov_base)) {
			count(DSOCK_CTR_READ_FAIL);
			break;
		}
		off += n;
	}
	return off;
}

/* Does a call's copy start like an Engine API request line? ("GET ", "POST",
 * "PUT ", "DELE", "HEAD", "PATC", "OPTI", as little-endian words.) */
static __always_inline int looks_like_request(const __u8 *d)
{
	__u32 w;

	__builtin_memcpy(&w, d, sizeof(w));
	return w == 0x20544547 || w == 0x54534f50 || w == 0x20545550 || w == 0x454c4544 || w == 0x44414548 ||
	       w == 0x43544150 || w == 0x4954504f;
}

/* Sends a write of `ret` bytes at user address buf, whose first `cap` bytes
 * are already in s, as pieces of at most cap bytes (DSOCK_MAX_PIECES; the
 * last reports the rest by length). Stops at the first piece the ring
 * refuses: later pieces would look contiguous with what came before; the
 * connection's lost bit tells the agent instead. Returns -1 if one was lost. */
static __always_inline int send_pieces(struct scratch *s, __u64 buf, __u64 ret, __u32 cap)
{
	__u64 off = 0, n;
	int i;

	for (i = 0; i < DSOCK_MAX_PIECES; i++) {
		n = ret - off;
		if (n > cap)
			n = cap;
		if (i > 0) {
			s->ev.flags = 0; /* lost bits go with the first piece only */
			if (bpf_probe_read_user(s->ev.data, BOUND(n, 2 * DSOCK_CAP_BYTES - 1), (void *)(buf + off))) {
				count(DSOCK_CTR_READ_FAIL);
				n = 0;
			}
		}
		s->ev.len = (i == DSOCK_MAX_PIECES - 1 || n == 0) ? ret - off : n;
		if (event_send(s, (__u32)n, 0))
			return -1;
		off += s->ev.len;
		if (off >= ret)
			break;
	}
	return 0;
}

/* Is `conn` (tracked at tgid/fd) still the socket the call used? The
 * socket set passes the call's sk (NULL for bytes read after the server
 * closed, on an already tracked socket); the syscall sets pass none and the
 * fd's struct file is checked instead. The inode number is compared too: a
 * client that closed without the agent seeing it and opened a new connection
 * often gets the same fd, struct file and struct sock addresses back. */
static __always_inline int same_socket(const struct dsock_conn *conn, struct sock *sk, struct file *file)
{
	if (sk)
		return conn->sk == (__u64)sk && conn->ino == sock_ino(sk);
	return file && conn->file == (__u64)file && conn->ino == BPF_CORE_READ(file, f_inode, i_ino);
}

/* A read or write of `ret` bytes finished on fd. `buf` is the user buffer, or
 * the user iovec array (iovcnt entries) when is_iov. `sk` and `watched` are
 * set by the socket set, which has no connect hook: an untracked fd whose
 * socket is sk is then tracked from this call on. */
static __always_inline int on_call(__u32 tgid, __u32 fd, __u64 buf, __u32 iovcnt, int is_iov, int dir, long ret,
				   struct sock *sk, const struct dsock_sock_val *watched)
{
	struct dsock_key key = {.tgid = tgid, .fd = fd};
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct dsock_conn *conn;
	struct dsock_ctl *ctl;
	struct scratch *s;
	struct file *file = NULL;
	__u32 cap = targ_cap_bytes, copied = 0, muted = 0, turn, lost, bit;
	int failed;

	if (ret <= 0)
		return 0; /* EAGAIN from Go's netpoller, EOF, errors: nothing moved */
	conn = bpf_map_lookup_elem(&conns, &key);
	if (!conn && !sk) {
		/* Syscall sets: a forked child's fds are its parent's; it is tracked
		 * from its first call on a watched socket, as the socket set does. */
		__u32 *why = bpf_map_lookup_elem(&tgid_refs, &tgid);

		if (!why || *why != TGID_INHERITED)
			return 0;
		conn = track_fd(task, tgid, fd);
		if (!conn)
			return 0;
		goto capture;
	}
	/* The common case without a helper call: the socket set's sk and inode
	 * are those of the tracked connection. */
	if (conn && sk && same_socket(conn, sk, NULL))
		goto capture;
	/* Otherwise the fd may have been closed and reused without close() being
	 * seen (dup2, close_range, exec of a CLOEXEC fd; on the socket set any
	 * close): the struct file and the inode tell. */
	file = task_fd_file(task, fd);
	if (conn && (sk || !same_socket(conn, NULL, file))) {
		count(conn->ino && file && conn->ino != BPF_CORE_READ(file, f_inode, i_ino) ? DSOCK_CTR_SOCK_REUSED
											     : DSOCK_CTR_STALE_FD);
		untrack_conn(&key, conn, DSOCK_END_REUSED);
		conn = NULL;
		if (!sk)
			return 0;
	}
	if (!conn) {
		/* The socket set read fd from the syscall's registers: make sure it
		 * names the socket the tracepoint reported. */
		if (!file || file_sock(file) != sk) {
			count(DSOCK_CTR_UNSUPPORTED_CALL);
			return 0;
		}
		conn = track_conn(task, tgid, fd, file, sk, watched);
		if (!conn)
			return 0;
	}

capture:
	/* A send after a receive starts the next exchange (request/response
	 * turn). The agent's mutes name the turn they are for. */
	if (dir == DIR_TX && conn->last_dir == DIR_RX)
		__sync_fetch_and_add(&conn->turn, 1);
	conn->last_dir = dir;
	turn = conn->turn;
	ctl = bpf_map_lookup_elem(&conn_ctl, &conn->conn_id);
	if (ctl) {
		if (ctl->ignore) {
			count(DSOCK_CTR_IGNORED);
			return 0;
		}
		muted = turn == (dir == DIR_TX ? ctl->mute_tx_turn : ctl->mute_rx_turn);
	}

	s = event_start(dir == DIR_TX ? DSOCK_EV_TX : DSOCK_EV_RX, fd, conn);
	if (!s)
		return 0;
	s->ev.turn = turn;
	s->ev.len = ret;
	/* Events this connection lost to a full ring: the agent must know that
	 * bytes are missing before these (pairing cannot be trusted past them). */
	lost = conn->lost;
	s->ev.flags = lost;
	if (cap > DSOCK_CAP_BYTES)
		cap = DSOCK_CAP_BYTES;
	if (!muted) {
		if ((__u64)ret > cap)
			count(DSOCK_CTR_TRUNCATED);
		if (is_iov) {
			copied = copy_iov(s, buf, iovcnt, ret, cap);
		} else {
			copied = (__u64)ret < cap ? (__u32)ret : cap;
			if (bpf_probe_read_user(s->ev.data, BOUND(copied, 2 * DSOCK_CAP_BYTES - 1), (void *)buf)) {
				count(DSOCK_CTR_READ_FAIL);
				copied = 0;
			}
		}
	}
	bit = dir == DIR_TX ? DSOCK_F_LOST_TX : DSOCK_F_LOST_RX;
	if (dir == DIR_TX && !is_iov && copied == cap && (__u64)ret > cap && looks_like_request(s->ev.data))
		failed = send_pieces(s, buf, ret, cap);
	else
		failed = event_send(s, copied, 0);
	if (failed)
		conn->lost = lost | bit;
	else if (lost)
		conn->lost = 0;
	return 0;
}

static __always_inline int on_msg(__u32 tgid, __u32 fd, __u64 umsg, int dir, long ret, struct sock *sk,
				  const struct dsock_sock_val *watched)
{
	struct user_msghdr msg;

	if (ret <= 0 || bpf_probe_read_user(&msg, sizeof(msg), (void *)umsg))
		return 0;
	return on_call(tgid, fd, (__u64)msg.msg_iov, (__u32)msg.msg_iovlen, 1, dir, ret, sk, watched);
}

static __always_inline int on_close(__u32 tgid, __u32 fd, long ret)
{
	struct dsock_key key = {.tgid = tgid, .fd = fd};
	struct dsock_conn *conn = bpf_map_lookup_elem(&conns, &key);

	if (conn)
		untrack_conn(&key, conn, DSOCK_END_CLOSE);
	return 0;
}

/* Syscall numbers: lib/syscall.bpf.h (DSOCK_SYSCALLS), per architecture. On
 * both, recvmsg has the highest number of the calls on_sys_exit() handles
 * after connect: its early return relies on that. */
_Static_assert(NR_close < NR_recvmsg && NR_read < NR_recvmsg && NR_write < NR_recvmsg && NR_readv < NR_recvmsg &&
		       NR_writev < NR_recvmsg && NR_sendto < NR_recvmsg && NR_recvfrom < NR_recvmsg &&
		       NR_sendmsg < NR_recvmsg,
	       "on_sys_exit() skips every call numbered above NR_recvmsg");

/* The read/write calls, by syscall number: what every hook set funnels into.
 * fd, arg1, arg2 are the syscall's first three arguments (SYSCALL_ARG1..3).
 * Returns -1 for a call that is not one of the eight. */
static __always_inline int on_data_call(long nr, __u32 tgid, __u64 fd, __u64 arg1, __u64 arg2, long ret,
					struct sock *sk, const struct dsock_sock_val *watched)
{
	switch (nr) {
	case NR_write:
	case NR_sendto:
		return on_call(tgid, fd, arg1, 0, 0, DIR_TX, ret, sk, watched);
	case NR_read:
	case NR_recvfrom:
		return on_call(tgid, fd, arg1, 0, 0, DIR_RX, ret, sk, watched);
	case NR_writev:
		return on_call(tgid, fd, arg1, (__u32)arg2, 1, DIR_TX, ret, sk, watched);
	case NR_readv:
		return on_call(tgid, fd, arg1, (__u32)arg2, 1, DIR_RX, ret, sk, watched);
	case NR_sendmsg:
		return on_msg(tgid, fd, arg1, DIR_TX, ret, sk, watched);
	case NR_recvmsg:
		return on_msg(tgid, fd, arg1, DIR_RX, ret, sk, watched);
	}
	return -1;
}

/* Syscall `nr` returned `ret`; its arguments are still in regs. */
static __always_inline int on_sys_exit(long nr, struct pt_regs *regs, long ret)
{
	__u32 tgid;

	if (nr == NR_connect)
		return on_connect((__u32)SYSCALL_ARG1(regs), ret);
	if (nr > NR_recvmsg)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (!tgid_tracked(tgid))
		return 0;
	if (nr == NR_close)
		return on_close(tgid, (__u32)SYSCALL_ARG1(regs), ret);
	on_data_call(nr, tgid, (__u32)SYSCALL_ARG1(regs), SYSCALL_ARG2(regs), SYSCALL_ARG3(regs), ret, NULL, NULL);
	return 0;
}

/* ---- hook set "socket" (6.3+) --------------------------------------------- */

#define MSG_PEEK 2
#define EPIPE 32

/* The connection of client socket `client` ends: forget it. */
static __always_inline void end_client(struct sock *client, __u32 why)
{
	__u64 skp = (__u64)client;
	struct dsock_key *k = bpf_map_lookup_elem(&conn_socks, &skp);
	struct dsock_key key;
	struct dsock_conn *conn;

	if (!k)
		return;
	key = *k;
	conn = bpf_map_lookup_elem(&conns, &key);
	if (conn && conn->sk == skp)
		untrack_conn(&key, conn, why);
	else
		bpf_map_delete_elem(&conn_socks, &skp);
}

/* kfunc of Linux 6.2+ (loads here on 6.12 and 6.18): view a pointer as
 * another BTF type, read-only. Only the socket set (6.3+) calls it;
 * __weak lets the object load on kernels without it, where that set is not
 * loaded. */
extern void *bpf_rdonly_cast(void *obj, __u32 btf_id) __ksym __weak;

/* watched_peer() for the socket set, where sk is a BTF pointer: the chain to
 * the peer's inode is walked with direct loads (the JIT makes them plain
 * loads with a fault fixup) instead of one bpf_probe_read_kernel() call per
 * step. This runs on every send and receive of every unix socket on the host,
 * so it must reject the ones that are not Docker's cheaply. */
static __always_inline const struct dsock_sock_val *watched_peer_btf(struct sock *sk, int *peer_gone)
{
	struct unix_sock *u = bpf_skc_to_unix_sock(sk), *pu;
	struct inode *inode;

	if (!u || !u->peer)
		return NULL;
	/* u->peer is an untrusted pointer, which bpf_skc_to_unix_sock() refuses. */
	pu = bpf_rdonly_cast(u->peer, bpf_core_type_id_kernel(struct unix_sock));
	if (!pu)
		return NULL;
	if (!pu->path.dentry) {
		/* Unbound (sk is a server-side socket, or abstract), or released:
		 * unix_release_sock() clears the path. dockerd may have closed
		 * before the client read the rest of its reply. */
		*peer_gone = !pu->sk.sk_socket;
		return NULL;
	}
	inode = pu->path.dentry->d_inode;
	if (!inode)
		return NULL;
	return watched_listener(inode->i_sb->s_dev, inode->i_ino, pu);
}

/* A send or receive on sk moved ret bytes (or failed with ret < 0). */
static __always_inline int on_sock_io(struct sock *sk, int ret, int flags, int dir)
{
	const struct dsock_sock_val *watched;
	struct pt_regs *regs;
	struct sock *peer;
	int peer_gone = 0;
	__u32 tgid;

	if (sk->__sk_common.skc_family != AF_UNIX)
		return 0; /* all of TCP/UDP/netlink stops here */
	if (ret <= 0) {
		/* No close() hook on this set. A connection ends when either side
		 * sees the other gone: the client reads EOF or gets EPIPE (dockerd
		 * closed), or dockerd does (the client closed: its socket is
		 * orphaned; a mere shutdown(SHUT_WR) leaves it attached). */
		if (!((dir == DIR_RX && ret == 0) || (dir == DIR_TX && ret == -EPIPE)))
			return 0;
		end_client(sk, dir == DIR_RX ? DSOCK_END_EOF : DSOCK_END_EPIPE);
		peer = BPF_CORE_READ((struct unix_sock *)sk, peer);
		if (peer && !BPF_CORE_READ(peer, sk_socket))
			end_client(peer, DSOCK_END_PEER_SAW);
		return 0;
	}
	if (flags & MSG_PEEK)
		return 0; /* the same bytes will be read again */
	watched = watched_peer_btf(sk, &peer_gone);
	if (!watched && !peer_gone)
		return 0;
	tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == targ_self_tgid)
		return 0;
	/* Inside the syscall: its number and arguments are in the task's pt_regs. */
	regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!watched) {
		/* A tracked connection whose server has gone still delivers what
		 * it had sent: read it, but track nothing new (sk = NULL). The
		 * connection is found by the call's own (tgid, fd), not through
		 * conn_socks, whose entry may be gone: a connection that ended
		 * unseen is untracked late, and its struct sock address may be
		 * this newer connection's by then (and an LRU map may evict early).
		 * The reply to a "Connection: close" or half-closed request is
		 * often read only after dockerd released its socket (the zoo lost
		 * about one such create in 1,000: its reply never captured). */
		struct dsock_key key = {.tgid = tgid, .fd = (__u32)SYSCALL_ARG1(regs)};
		struct dsock_conn *conn = bpf_map_lookup_elem(&conns, &key);

		if (!conn || conn->sk != (__u64)sk)
			return 0;
		sk = NULL;
	}
	if (on_data_call(SYSCALL_NR(regs), tgid, (__u32)SYSCALL_ARG1(regs), SYSCALL_ARG2(regs), SYSCALL_ARG3(regs), ret,
			 sk, watched) < 0)
		count(DSOCK_CTR_UNSUPPORTED_CALL); /* sendmmsg, splice, sendfile, io_uring */
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tp_btf__sock_send_length, struct sock *sk, int ret, int flags)
{
	return on_sock_io(sk, ret, flags, DIR_TX);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tp_btf__sock_recv_length, struct sock *sk, int ret, int flags)
{
	return on_sock_io(sk, ret, flags, DIR_RX);
}

/* ---- hook set "tracepoint" ------------------------------------------------ */

/* Works wherever BTF does. Runs on every syscall's return. */
SEC("tp_btf/sys_exit")
int BPF_PROG(tp_btf__sys_exit, struct pt_regs *regs, long ret)
{
	return on_sys_exit(SYSCALL_NR(regs), regs, ret);
}

/* ---- hook set "fentry" ---------------------------------------------------- */

/* fexit on the ten syscall functions themselves, where the kernel allows it.
 * No syscall tracepoint is attached, so no process pays the tracepoint slow
 * path, and only these ten syscalls run a program at all. */
FEXIT_SYSCALL(read)
FEXIT_SYSCALL(write)
FEXIT_SYSCALL(close)
FEXIT_SYSCALL(readv)
FEXIT_SYSCALL(writev)

/* The socket syscalls: in 5.10's BTF, net/socket.c's __x64_sys_* wrappers see
 * struct pt_regs only as a forward declaration ("arg0 type FWD is not a
 * struct"), so the verifier refuses to read their argument. The __sys_*
 * functions they call take plain values, on every kernel. */
SEC("fexit/__sys_connect")
int BPF_PROG(fexit__connect, int fd, void *uaddr, int addrlen, int ret)
{
	return on_connect((__u32)fd, ret);
}

SEC("fexit/__sys_sendto")
int BPF_PROG(fexit__sendto, int fd, void *buf, __u64 len, unsigned int flags, void *addr, int addr_len, int ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return tgid_tracked(tgid) ? on_call(tgid, (__u32)fd, (__u64)buf, 0, 0, DIR_TX, ret, NULL, NULL) : 0;
}

SEC("fexit/__sys_recvfrom")
int BPF_PROG(fexit__recvfrom, int fd, void *buf, __u64 size, unsigned int flags, void *addr, void *addr_len, int ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return tgid_tracked(tgid) ? on_call(tgid, (__u32)fd, (__u64)buf, 0, 0, DIR_RX, ret, NULL, NULL) : 0;
}

SEC("fexit/__sys_sendmsg")
int BPF_PROG(fexit__sendmsg, int fd, void *msg, unsigned int flags, bool forbid_cmsg_compat, long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return tgid_tracked(tgid) ? on_msg(tgid, (__u32)fd, (__u64)msg, DIR_TX, ret, NULL, NULL) : 0;
}

SEC("fexit/__sys_recvmsg")
int BPF_PROG(fexit__recvmsg, int fd, void *msg, unsigned int flags, bool forbid_cmsg_compat, long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	return tgid_tracked(tgid) ? on_msg(tgid, (__u32)fd, (__u64)msg, DIR_RX, ret, NULL, NULL) : 0;
}

/* ---- syscall sets ("fentry", "tracepoint") ---------------------------------- */

/* A child of a tracked process inherits its connected fds; the syscall sets
 * only track at connect and filter on the tgid bit, so the child gets the bit
 * (TGID_INHERITED) and is tracked from its first call on a watched socket.
 * Runs on every fork of the host: one bitmap test for untracked parents. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(tp_btf__sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);

	if (ctgid == ptgid || !tgid_tracked(ptgid))
		return 0; /* a new thread, or a parent with no Docker connection */
	tgid_mark(ctgid, TGID_INHERITED);
	return 0;
}

/* ---- all sets -------------------------------------------------------------- */

SEC("tp/sched/sched_process_exit")
int tp__sched__sched_process_exit(void *ctx)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (!tgid_tracked(tgid))
		return 0;
	/* do_exit() drops signal->live before this tracepoint: 0 = last thread. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	tgid_unmark(tgid);
	send_control(DSOCK_EV_EXIT, 0, NULL, 0);
	return 0;
}
