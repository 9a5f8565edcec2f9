// Turns probe events into recognised Engine API calls with the identity of the
// client that made them: one HttpConnection per tracked connection, joined with
// the docker CLI executions the exec probe saw. Pure logic over events, so the
// unit tests drive it with synthesised events.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/docker_api.h"
#include "agent/dsock_event.hpp"
#include "agent/exec_probe.h"
#include "agent/http_stream.h"

namespace dockquota {

// Who was on the client end of a connection.
struct ClientInfo {
  uint32_t tgid = 0;
  uint32_t pid = 0;  // thread that connected
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t loginuid = UINT32_MAX;  // UINT32_MAX = unset
  uint32_t sock = 0;               // index of the watched socket path
  std::string comm;
  std::string exe;                 // docker CLI path from the exec probe, else /proc/<tgid>/exe
  std::vector<std::string> argv;   // when the exec probe saw the process start
  uint64_t connect_ns = 0;
};

struct TrackerStats {
  HttpStreamStats http;          // summed over all connections, open and closed
  uint64_t connections = 0;      // connects seen
  uint64_t open = 0;             // open now
  uint64_t evicted = 0;          // dropped to stay under the connection limit
  uint64_t orphan_events = 0;    // data for a connection we never saw connect (agent started later)
  uint64_t calls = 0;            // recognised API calls
  uint64_t execs = 0;            // docker CLI executions seen
  uint64_t muted_downloads = 0;  // response bodies the probe was told not to copy
};

class ConnTracker {
 public:
  struct Hooks {
    std::function<void(const ApiCall&, const ClientInfo&)> on_call;
    std::function<void(uint32_t tgid, uint32_t fd, uint32_t bits)> mute;  // may be empty
    std::function<void(uint32_t tgid, uint32_t fd)> untrack;              // may be empty
    std::function<std::string(uint32_t tgid)> exe_of;  // default: readlink /proc/<tgid>/exe
  };
  static constexpr size_t kMaxConnections = 16384;  // as the kernel's conns map
  static constexpr size_t kMaxExecs = 4096;

  explicit ConnTracker(Hooks hooks, size_t max_connections = kMaxConnections);

  void onExec(const ExecRecord& rec);
  void onEvent(const dsock_event& ev);

  TrackerStats stats() const;
  size_t openConnections() const { return conns_.size(); }

 private:
  struct Conn {
    ClientInfo client;
    uint32_t fd = 0;
    uint64_t seq = 0;  // for eviction of the oldest
    std::unique_ptr<HttpConnection> http;
  };
  void closeConn(uint64_t conn_id, uint64_t ts_ns);
  void evictOldest();

  Hooks hooks_;
  size_t max_;
  uint64_t seq_ = 0;
  std::unordered_map<uint64_t, Conn> conns_;       // by conn_id
  std::unordered_map<uint32_t, ExecRecord> execs_; // by tgid, until the process exits
  TrackerStats closed_;                            // stats of connections already gone
};

}  // namespace dockquota
