/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The C ABI between dockquotad and its containerd module
 * (dockquota-containerd.so, agent/runtime/containerd/): the agent dlopens the
 * module only when the config's `runtime` includes containerd, so the gRPC,
 * protobuf and abseil libraries it links are never mapped into a Docker host's
 * agent (they cost 7 MiB of RSS there).
 *
 * Only plain C crosses this line: no C++ type, no allocator. Strings and
 * arrays the module passes to a callback are valid during that call only; the
 * agent copies what it keeps. Strings are NUL-terminated UTF-8, "" when
 * unknown, never NULL. Errors come back as a positive errno and a message in
 * a caller's buffer.
 *
 * Versioning: DQ_CTRD_ABI_VERSION changes whenever any struct or function here
 * changes; the agent refuses a module of another version (the symbol
 * `dq_ctrd_module` returns its table). Every struct starts with its size, so
 * a mismatch is also caught by the size checks.
 *
 * Kept in C (no includes but <stddef.h>/<stdint.h>, no enum, no bool) like
 * the BPF shared headers (STYLE.md "Shared headers").
 */
#ifndef DOCKQUOTA_CONTAINERD_MODULE_H
#define DOCKQUOTA_CONTAINERD_MODULE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DQ_CTRD_ABI_VERSION 2 /* 2: dq_ctrd_event.created_ns */
#define DQ_CTRD_SYMBOL "dq_ctrd_module"

/* dq_ctrd_event.kind: what happened. Live events come from the events
 * service in containerd's order; a reconcile (at start and after every
 * reconnect) is RECONCILE_BEGIN, one RECONCILE_ITEM per container of the
 * namespace, RECONCILE_END, with no live event in between. */
#define DQ_CTRD_TASK_CREATE 1      /* /tasks/create: pid, upper dir resolved */
#define DQ_CTRD_TASK_START 2       /* /tasks/start: pid */
#define DQ_CTRD_TASK_EXIT 3        /* /tasks/exit of the init process: exit_status */
#define DQ_CTRD_TASK_DELETE 4      /* /tasks/delete of the init process: exit_status */
#define DQ_CTRD_CONTAINER_CREATE 5 /* /containers/create: labels, snapshot, upper dir when resolvable */
#define DQ_CTRD_CONTAINER_DELETE 6 /* /containers/delete */
#define DQ_CTRD_RECONCILE_BEGIN 7  /* ns: the namespace about to be listed */
#define DQ_CTRD_RECONCILE_ITEM 8   /* one container (and its task state) of ns */
#define DQ_CTRD_RECONCILE_END 9    /* ns listed completely: containers not listed are gone */

/* dq_ctrd_event.task_state (containerd.v1.types.Status) */
#define DQ_CTRD_STATE_NONE 0 /* no task */
#define DQ_CTRD_STATE_CREATED 1
#define DQ_CTRD_STATE_RUNNING 2
#define DQ_CTRD_STATE_STOPPED 3
#define DQ_CTRD_STATE_PAUSED 4
#define DQ_CTRD_STATE_UNKNOWN 5

/* Log levels of dq_ctrd_config.log (the agent's: error .. debug). */
#define DQ_CTRD_LOG_ERROR 0
#define DQ_CTRD_LOG_WARNING 1
#define DQ_CTRD_LOG_NOTICE 2
#define DQ_CTRD_LOG_INFO 3
#define DQ_CTRD_LOG_DEBUG 4

typedef struct dq_ctrd_kv {
  const char* key;
  const char* value;
} dq_ctrd_kv;

typedef struct dq_ctrd_event {
  uint32_t struct_size;     /* sizeof(dq_ctrd_event) of the module */
  uint32_t kind;            /* DQ_CTRD_* above */
  uint64_t seq;             /* 1, 2, ...: order of delivery (per module instance) */
  int64_t timestamp_ns;     /* containerd's envelope time (Unix ns); 0 for reconciles */
  int64_t received_ns;      /* CLOCK_MONOTONIC when the module read it off the stream */
  const char* ns;           /* containerd namespace ("k8s.io") */
  const char* container_id; /* "" for RECONCILE_BEGIN/END */
  const char* image;        /* image reference, when known */
  const char* snapshotter;  /* "overlayfs", ... when known */
  const char* snapshot_key; /* the container's rootfs snapshot */
  const char* upper_dir;    /* overlayfs upperdir of the rootfs; "" when unresolved */
  const char* upper_error;  /* why upper_dir is "" ("unsupported snapshotter native"); "" if none */
  const char* upper_reason; /* counter key of upper_error: unsupported_snapshotter, mounts_failed,
                               no_upperdir, container_gone; "" if none */
  uint32_t pid;             /* the task's init pid, when known */
  uint32_t exit_status;     /* TASK_EXIT, TASK_DELETE */
  uint32_t task_state;      /* DQ_CTRD_STATE_*: RECONCILE_ITEM, and after each task event */
  uint32_t n_labels;        /* container labels, when known (creates, reconciles) */
  const dq_ctrd_kv* labels;
  int64_t created_ns; /* the container's CreatedAt (Unix ns), when known (creates, reconciles); else 0 */
} dq_ctrd_event;

/* The module's counters and connection state, copied out on request. */
typedef struct dq_ctrd_stats {
  uint32_t struct_size;
  uint32_t connected;        /* 1 while the event stream is up and reconciled */
  int64_t down_since_ns;     /* CLOCK_MONOTONIC when it went down (or the module started); 0 while up */
  uint64_t connects;         /* streams established and reconciled */
  uint64_t reconnects;       /* connects after the first */
  uint64_t stream_breaks;    /* established streams that ended (containerd restarted, ...) */
  uint64_t connect_failures; /* attempts that failed (socket missing, reconcile failed) */
  uint64_t events_received;  /* envelopes read */
  uint64_t events_delivered; /* events passed to on_event */
  uint64_t events_ignored;   /* other topics, exec processes, other namespaces */
  uint64_t decode_errors;    /* envelopes whose payload did not parse: lost, a reconcile follows */
  uint64_t reconciles;       /* namespaces listed */
  uint64_t rpc_errors;       /* failed unary calls (lists, gets, mounts, enforcement) */
  uint64_t upper_resolved;   /* upper dirs found (the ones not found: each event says why) */
  char last_error[512];      /* "" if none yet */
} dq_ctrd_stats;

typedef struct dq_ctrd_config {
  uint32_t struct_size;
  const char* address;           /* containerd's socket path */
  const char* const* namespaces; /* the namespaces watched */
  uint32_t n_namespaces;
  uint32_t call_timeout_ms; /* deadline of every unary call */
  uint32_t backoff_min_ms;  /* reconnect delay: full jitter over min(max, min * 2^n) */
  uint32_t backoff_max_ms;
  /* Called on the module's stream thread, in order, one at a time. Must be
   * quick: the stream waits meanwhile (containerd buffers). */
  void (*on_event)(void* ctx, const dq_ctrd_event* ev);
  void (*log)(void* ctx, uint32_t level, const char* message);
  void* ctx;
} dq_ctrd_config;

typedef struct dq_ctrd_api {
  uint32_t abi_version; /* DQ_CTRD_ABI_VERSION the module was built with */
  uint32_t struct_size; /* sizeof(dq_ctrd_api) */
  const char* build;    /* the module's grpc/protobuf versions, for logs */
  /* A client; starts nothing. NULL and `err` on a bad config. */
  void* (*open)(const dq_ctrd_config* config, char* err, size_t err_len);
  /* Starts the stream thread: connect, subscribe, reconcile, events; on any
   * break, backoff and again. 0 or an errno. */
  int (*start)(void* client);
  /* Stops the thread (cancels the stream) and frees the client. */
  void (*close)(void* client);
  int (*stats)(void* client, dq_ctrd_stats* out);
  /* Enforcement, each bounded by the call deadline (stop: by timeout_s too).
   * 0, ENOENT (no such container or task), or another errno with `err`. */
  int (*stop_task)(void* client, const char* ns, const char* id, uint32_t timeout_s, char* err, size_t err_len);
  int (*remove)(void* client, const char* ns, const char* id, char* err, size_t err_len);
  int (*writable_bytes)(void* client, const char* ns, const char* id, uint64_t* bytes, char* err, size_t err_len);
} dq_ctrd_api;

typedef const dq_ctrd_api* (*dq_ctrd_module_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* DOCKQUOTA_CONTAINERD_MODULE_H */
