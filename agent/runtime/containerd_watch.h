// SPDX-License-Identifier: Apache-2.0
// The live set of containerd containers and their tasks, in memory: kept
// from the module's events (agent/runtime/containerd_module.h) and replaced
// namespace by namespace by its reconciles. Pure logic (no gRPC, no dlopen):
// the unit tests drive it with fake events.
//
// The hooks a quota stage subscribes to: on_rootfs (a container's rootfs
// upper dir is known: at its container create when its snapshot is already
// prepared, as ctr, nerdctl and the CRI do, so before anything is mounted on
// it; else at its task create, before the task starts; and when a reconcile
// finds a task the watch did not hold: after an agent restart or a
// reconnect every running task is announced again, so a subscriber must
// treat it as idempotent) and on_container_delete (a /containers/delete, or
// a reconcile that no longer lists it). Both run synchronously on the
// module's thread in event order, after the set is updated, with the upper
// dir already resolved ("" when the module could not: see upper_error).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/runtime/containerd_module.h"

namespace dockquota {

struct CtrdContainer {
  std::string ns, id, image, snapshotter, snapshot_key;
  std::string upper_dir, upper_error;  // upper_error: why upper_dir is "" (when it is)
  std::map<std::string, std::string> labels;
  uint32_t task_state = DQ_CTRD_STATE_NONE;
  uint32_t pid = 0, exit_status = 0;
  int64_t created_ns = 0;      // containerd's CreatedAt (Unix ns); 0 when not known
  std::string hooked_upper;    // the upper dir on_rootfs was last called with
  int64_t hooked_done_ns = 0;  // realtime when that call returned
};

struct CtrdHooks {
  std::function<void(const std::string& ns, const std::string& id, const std::map<std::string, std::string>& labels,
                     const std::string& upper_dir, int64_t created_ns)>
      on_rootfs;
  std::function<void(const std::string& ns, const std::string& id)> on_container_delete;
  // A reconcile of `ns` ended: the watch now holds exactly what containerd
  // lists there (state kept elsewhere can be compared with containers()).
  std::function<void(const std::string& ns)> on_reconcile_end;
};

// One line of the recent-events log (GET /api/v1/containerd/containers).
struct CtrdSeen {
  uint64_t seq;
  const char* kind;  // "task_create", ..., "reconcile_delete" (a reconcile no longer lists it)
  std::string ns, id, upper_dir;
};

class ContainerdWatch {
 public:
  static constexpr size_t kRecent = 512;      // events kept for the API: a few minutes of a busy node
  static constexpr size_t kLatencies = 1024;  // samples kept of each latency (p50/p99)

  void setHooks(CtrdHooks hooks) { hooks_ = std::move(hooks); }
  // One event of the module's thread; `now_unix_ns`: the realtime clock when
  // it arrived (the latency sample of a task create is now - its timestamp).
  void apply(const dq_ctrd_event& ev, int64_t now_unix_ns);

  std::vector<CtrdContainer> containers() const;
  std::optional<CtrdContainer> find(const std::string& ns, const std::string& id) const;
  // The namespaces that hold `id` (containerd ids are per namespace).
  std::vector<std::string> namespacesOf(const std::string& id) const;
  std::vector<CtrdSeen> recent() const;
  // counters, latency, sizes
  nlohmann::json report() const;
  static const char* kindName(uint32_t kind);
  static const char* stateName(uint32_t state);

 private:
  using Key = std::pair<std::string, std::string>;  // namespace, id
  void containerCreate(const dq_ctrd_event& ev, std::vector<std::function<void()>>& calls);
  void taskCreate(const dq_ctrd_event& ev, int64_t now_unix_ns, std::vector<std::function<void()>>& calls);
  void taskStart(const dq_ctrd_event& ev);
  void hookRootfs(CtrdContainer& c, const char* stage, int64_t event_ns, std::vector<std::function<void()>>& calls);
  void reconcileEnd(const std::string& ns, std::vector<std::function<void()>>& calls);
  void reconcileItem(const dq_ctrd_event& ev, std::vector<std::function<void()>>& calls);
  void remember(uint64_t seq, const char* kind, const std::string& ns, const std::string& id, const std::string& upper);
  void countUnresolved(const dq_ctrd_event& ev);

  CtrdHooks hooks_;
  mutable std::mutex mu_;
  std::map<Key, CtrdContainer> live_;
  std::map<std::string, std::set<std::string>> listing_;  // namespace -> ids of the reconcile in progress
  std::deque<CtrdSeen> recent_;
  std::map<std::string, uint64_t> events_;      // by kind
  std::map<std::string, uint64_t> unresolved_;  // upper dir missing, by reason
  std::map<std::string, uint64_t> hook_calls_;  // rootfs_at_<stage>, container_delete
  uint64_t reconcile_deletes_ = 0, reconcile_adds_ = 0;
  std::deque<double> latencies_ms_;
  std::deque<double> hooked_ms_;      // the hooking event (container or task create) -> on_rootfs returned
  std::deque<double> lead_ms_;        // on_rootfs returned -> the task started (> 0: the quota was first)
  uint64_t started_before_hook_ = 0;  // tasks started before on_rootfs returned for their upper dir
};

// Parses a label set of an event into a map (for tests and the watch).
std::map<std::string, std::string> labelsOf(const dq_ctrd_event& ev);

}  // namespace dockquota
