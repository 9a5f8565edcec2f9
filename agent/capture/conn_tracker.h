// SPDX-License-Identifier: Apache-2.0
// Turns probe events into recognised Engine API calls with the identity of the
// process that made each of them: one HttpConnection per tracked connection,
// joined with the docker CLI executions the exec probe saw. Pure logic over
// events, so the unit tests (and fuzz-conn-tracker) drive it with synthesised
// events.
//
// Identity: a connection is the kernel's conn_id, which the probe assigns
// anew whenever (tgid, fd) names another socket (inode number). Credentials
// travel with every call: a request is billed to the process that wrote its
// first byte, not to whoever opened the connection.
//
// Memory: every connection's buffers count against one global budget; over
// it, the connection holding the most is dropped from tracking (the probe is
// told to ignore it), counted and logged. A hostile client can lose its own
// attribution that way, never anyone else's or the agent's memory.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "agent/base/health.h"
#include "agent/capture/docker_api.h"
#include "agent/capture/http_stream.h"
#include "agent/probes/dsock_event.hpp"
#include "agent/probes/exec_probe.h"

namespace dockquota {

// Who made a call: the process that sent the request (its credentials at the
// time of the write), with what the exec probe knows of it.
struct ClientInfo {
  uint32_t tgid = 0;
  uint32_t pid = 0;  // thread that sent the request
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t loginuid = UINT32_MAX;  // UINT32_MAX = unset
  uint32_t sock = 0;               // index of the watched socket path
  std::string comm;
  std::string exe;                // docker CLI path from the exec probe, else /proc/<tgid>/exe
  std::vector<std::string> argv;  // when the exec probe saw the process start
  uint64_t connect_ns = 0;        // when the connection was first seen
};

struct TrackerStats {
  HttpStreamStats http;          // summed over all connections, open and closed
  uint64_t connections = 0;      // connections seen
  uint64_t open = 0;             // open now
  uint64_t evicted = 0;          // dropped to stay under the connection count limit
  uint64_t dropped_memory = 0;   // dropped to stay under the global memory budget
  uint64_t replaced = 0;         // a new connection on a (tgid, fd) whose old one we never saw end
  uint64_t ended_unseen = 0;     // idle connections whose socket was gone (end not reported)
  uint64_t late_connects = 0;    // data for a connection whose start event was lost: tracked from there
  uint64_t orphan_events = 0;    // data for a connection we stopped following
  uint64_t calls = 0;            // recognised API calls
  uint64_t doubtful_calls = 0;   // recognised calls whose pairing was in doubt, on a connection several
                                 // users (or an unknown one) wrote to: not billed
  uint64_t doubtful_billed = 0;  // in doubt, but every byte of the connection came from one user: billed
  uint64_t execs = 0;            // docker CLI executions seen
  uint64_t muted_uploads = 0;    // request bodies the probe was told not to copy
  uint64_t muted_downloads = 0;  // response bodies the probe was told not to copy
  uint64_t memory_bytes = 0;     // buffered now, all connections
  uint64_t memory_peak = 0;
  uint64_t memory_budget = 0;
};

class ConnTracker {
 public:
  struct Hooks {
    std::function<void(const ApiCall&, const ClientInfo&)> on_call;
    // A recognised call that cannot be billed: its pairing is in doubt.
    std::function<void(const ApiCall&, const ClientInfo&)> on_doubtful_call;  // may be empty
    // Writes the probe's instructions for a connection (bpf/dsock.h dsock_ctl).
    std::function<void(uint64_t conn_id, const dsock_ctl&)> control;  // may be empty
    std::function<std::string(uint32_t tgid)> exe_of;                 // default: readlink /proc/<tgid>/exe
    // Does tgid's fd still name socket inode `ino`? Default: /proc/<tgid>/fd/<fd>.
    std::function<bool(uint32_t tgid, uint32_t fd, uint64_t ino)> alive;
    // A container create was sent (its head seen), before Docker acts on it.
    std::function<void(uint32_t uid, uint32_t loginuid)> on_create_sent;  // may be empty
    // Every request head as it is seen, with who sent it, and every request
    // once whole (its body as far as captured): admission (agent/admission)
    // matches Docker's authorization-plugin calls to them. May be empty.
    std::function<void(uint64_t conn_id, const HttpRequest&, uint32_t uid, uint32_t loginuid)> on_request_head;
    std::function<void(uint64_t conn_id, const HttpRequest&)> on_request_done;
    // Docker's answer to a request was seen (every exchange, recognised or not).
    std::function<void(uint64_t conn_id, const HttpRequest&)> on_request_answered;  // may be empty
  };
  static constexpr size_t kMaxConnections = 16384;  // as the kernel's conns map
  static constexpr size_t kMaxExecs = 4096;
  // All connections' buffers together. Honest clients hold a few KiB each
  // (a create's request while its reply is awaited); 16 MiB is a thousand
  // busy connections, and half the agent's whole RSS budget.
  static constexpr size_t kDefaultMemoryBudget = 16u << 20;
  // A connection idle this long is checked against /proc (sweep()).
  static constexpr uint64_t kIdleCheckNs = 5'000'000'000ull;

  explicit ConnTracker(Hooks hooks, size_t max_connections = kMaxConnections,
                       size_t memory_budget = kDefaultMemoryBudget);

  void onExec(const ExecRecord& rec);
  void onEvent(const dsock_event& ev);
  // Ends connections idle since before now_ns - kIdleCheckNs whose socket is
  // gone (the client closed and the probe could not see it). now_ns on the
  // probe's clock (CLOCK_MONOTONIC).
  void sweep(uint64_t now_ns);

  TrackerStats stats() const;
  // /healthz "stream": these figures, and under "losses" every way an
  // attribution was lost or doubted, by reason; any loss degrades the agent.
  static Health health(const TrackerStats& ts);
  size_t openConnections() const { return conns_.size(); }

  // Container creates sent and not answered yet, with who sent them: the
  // layer Docker is making now belongs to one of these (ProjectQuotas tags
  // it before Docker can mount it when they all bill one user).
  struct PendingCreate {
    uint32_t uid = 0;
    uint32_t loginuid = UINT32_MAX;
    uint64_t since_ns = 0;
  };
  std::vector<PendingCreate> pendingCreates() const;

 private:
  struct Conn {
    ClientInfo client;
    uint32_t fd = 0;
    uint64_t ino = 0;
    uint64_t seq = 0;      // for eviction of the oldest
    uint64_t last_ns = 0;  // last event
    uint32_t turn = 0;     // the probe's exchange number of the event being fed
    size_t charged = 0;    // bytes counted in memory_bytes_
    dsock_ctl ctl{};       // what the probe was last told
    // Who wrote to it: one (uid, login uid) so far, or several (or bytes
    // from an unknown writer were lost). See deliver().
    bool have_writer = false, mixed_writers = false;
    uint32_t writer_uid = 0, writer_loginuid = 0;
    uint64_t tx_bytes = 0, rx_bytes = 0;  // what the probe reported, copied or not
    uint32_t end_why = 0;                 // DSOCK_END_* of the close event (0: ended otherwise)
    std::string first_tx;                 // the first bytes sent, for the log of a connection that said nothing
    std::unique_ptr<HttpConnection> http;
  };
  Conn& open(const dsock_event& ev);
  void deliver(uint64_t conn_id, const HttpExchange& x);
  void noteWriter(Conn& c, const dsock_event& ev);
  ClientInfo clientOf(const Conn& c, const HttpSender& sender) const;
  void control(uint64_t conn_id, Conn& c);
  void stopFollowing(uint64_t conn_id, uint64_t ts_ns);
  void closeConn(uint64_t conn_id, uint64_t ts_ns);
  void charge(Conn& c);
  void enforceBudget(uint64_t ts_ns);
  void evictOldest();

  Hooks hooks_;
  size_t max_;
  size_t budget_;
  uint64_t seq_ = 0;
  size_t memory_bytes_ = 0;
  std::unordered_map<uint64_t, Conn> conns_;             // by conn_id
  std::unordered_map<uint64_t, uint64_t> by_fd_;         // (tgid << 32 | fd) -> conn_id
  std::unordered_map<uint64_t, PendingCreate> creates_;  // conn_id -> its unanswered container create
  std::unordered_set<uint64_t> ignored_;                 // conn_ids we stopped following
  std::deque<uint64_t> ignored_order_;                   // bounds ignored_
  std::unordered_map<uint32_t, ExecRecord> execs_;       // by tgid, until the process exits
  TrackerStats closed_;                                  // stats of connections already gone
};

}  // namespace dockquota
