// SPDX-License-Identifier: Apache-2.0
#include "agent/runtime/containerd_watch.h"

#include <time.h>

#include <algorithm>

namespace dockquota {

static int64_t realtimeNs() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

std::map<std::string, std::string> labelsOf(const dq_ctrd_event& ev) {
  std::map<std::string, std::string> out;
  for (uint32_t i = 0; i < ev.n_labels; i++) out[ev.labels[i].key] = ev.labels[i].value;
  return out;
}

const char* ContainerdWatch::kindName(uint32_t kind) {
  switch (kind) {
    case DQ_CTRD_TASK_CREATE: return "task_create";
    case DQ_CTRD_TASK_START: return "task_start";
    case DQ_CTRD_TASK_EXIT: return "task_exit";
    case DQ_CTRD_TASK_DELETE: return "task_delete";
    case DQ_CTRD_CONTAINER_CREATE: return "container_create";
    case DQ_CTRD_CONTAINER_DELETE: return "container_delete";
    case DQ_CTRD_RECONCILE_BEGIN: return "reconcile_begin";
    case DQ_CTRD_RECONCILE_ITEM: return "reconcile_item";
    case DQ_CTRD_RECONCILE_END: return "reconcile_end";
    default: return "unknown";
  }
}

const char* ContainerdWatch::stateName(uint32_t state) {
  switch (state) {
    case DQ_CTRD_STATE_NONE: return "no_task";
    case DQ_CTRD_STATE_CREATED: return "created";
    case DQ_CTRD_STATE_RUNNING: return "running";
    case DQ_CTRD_STATE_STOPPED: return "stopped";
    case DQ_CTRD_STATE_PAUSED: return "paused";
    default: return "unknown";
  }
}

void ContainerdWatch::remember(uint64_t seq, const char* kind, const std::string& ns, const std::string& id,
                               const std::string& upper) {
  recent_.push_back(CtrdSeen{seq, kind, ns, id, upper});
  if (recent_.size() > kRecent) recent_.pop_front();
}

void ContainerdWatch::countUnresolved(const dq_ctrd_event& ev) {
  if (ev.upper_dir[0] == '\0') unresolved_[ev.upper_reason[0] ? ev.upper_reason : "unknown"]++;
}

// Fields an event knows overwrite; what it does not know (a task event has no
// labels) is kept from earlier events.
static void merge(CtrdContainer& c, const dq_ctrd_event& ev) {
  if (ev.image[0]) c.image = ev.image;
  if (ev.snapshotter[0]) c.snapshotter = ev.snapshotter;
  if (ev.snapshot_key[0]) c.snapshot_key = ev.snapshot_key;
  if (ev.n_labels > 0) c.labels = labelsOf(ev);
  if (ev.created_ns > 0) c.created_ns = ev.created_ns;
}

// on_rootfs for `c`'s upper dir, after the set is updated and unlocked;
// `event_ns`: containerd's timestamp of the event that hooks it (0: none, a
// reconcile), for the event -> tagged latency.
void ContainerdWatch::hookRootfs(CtrdContainer& c, const char* stage, int64_t event_ns,
                                 std::vector<std::function<void()>>& calls) {
  c.hooked_upper = c.upper_dir;
  hook_calls_[std::string("rootfs_at_") + stage]++;
  if (!hooks_.on_rootfs) return;
  calls.push_back(
      [this, ns = c.ns, id = c.id, labels = c.labels, upper = c.upper_dir, created = c.created_ns, event_ns] {
        hooks_.on_rootfs(ns, id, labels, upper, created);
        const int64_t done = realtimeNs();
        std::lock_guard<std::mutex> l(mu_);
        auto it = live_.find({ns, id});
        if (it != live_.end() && it->second.hooked_upper == upper) it->second.hooked_done_ns = done;
        if (event_ns <= 0) return;
        hooked_ms_.push_back(double(done - event_ns) / 1e6);
        if (hooked_ms_.size() > kLatencies) hooked_ms_.pop_front();
      });
}

// The snapshot is prepared before the container is created (ctr, nerdctl,
// the CRI): its upper dir, when the module resolved it, is hooked now,
// before the task create mounts it. An unresolved one is not counted here:
// the task create resolves it again, and counts it if it still fails.
void ContainerdWatch::containerCreate(const dq_ctrd_event& ev, std::vector<std::function<void()>>& calls) {
  CtrdContainer& c = live_[{ev.ns, ev.container_id}];
  c.ns = ev.ns;
  c.id = ev.container_id;
  merge(c, ev);
  if (!ev.upper_dir[0]) return;
  c.upper_dir = ev.upper_dir;
  c.upper_error.clear();
  hookRootfs(c, "container_create", ev.timestamp_ns, calls);
}

void ContainerdWatch::taskCreate(const dq_ctrd_event& ev, int64_t now_unix_ns,
                                 std::vector<std::function<void()>>& calls) {
  CtrdContainer& c = live_[{ev.ns, ev.container_id}];
  c.ns = ev.ns;
  c.id = ev.container_id;
  merge(c, ev);
  c.upper_dir = ev.upper_dir;
  c.upper_error = ev.upper_error;
  c.task_state = DQ_CTRD_STATE_CREATED;
  c.pid = ev.pid;
  countUnresolved(ev);
  if (ev.upper_dir[0] && ev.timestamp_ns > 0) {
    latencies_ms_.push_back(double(now_unix_ns - ev.timestamp_ns) / 1e6);
    if (latencies_ms_.size() > kLatencies) latencies_ms_.pop_front();
  }
  // Hooked at its container create already: the same snapshot, nothing new.
  if (c.upper_dir.empty() || c.hooked_upper == c.upper_dir) return;
  hookRootfs(c, "task_create", ev.timestamp_ns, calls);
}

// How far ahead of the task's start its rootfs was hooked (tagged, with a
// quota stage): the figure that says whether the first byte the container
// wrote was already under its limit. Hooks run in event order, so a hook of
// an earlier event has returned by now.
void ContainerdWatch::taskStart(const dq_ctrd_event& ev) {
  CtrdContainer& c = live_[{ev.ns, ev.container_id}];
  c.ns = ev.ns;
  c.id = ev.container_id;
  c.task_state = DQ_CTRD_STATE_RUNNING;
  c.pid = ev.pid;
  if (!hooks_.on_rootfs || c.upper_dir.empty() || ev.timestamp_ns <= 0) return;  // nothing hooked, nothing to time
  if (c.hooked_done_ns <= 0 || c.hooked_done_ns > ev.timestamp_ns) {
    started_before_hook_++;
    if (c.hooked_done_ns <= 0) return;
  }
  lead_ms_.push_back(double(ev.timestamp_ns - c.hooked_done_ns) / 1e6);
  if (lead_ms_.size() > kLatencies) lead_ms_.pop_front();
}

// A reconciled container with a task the watch did not hold (agent start,
// events missed while disconnected) is announced as a task create.
void ContainerdWatch::reconcileItem(const dq_ctrd_event& ev, std::vector<std::function<void()>>& calls) {
  listing_[ev.ns].insert(ev.container_id);
  auto it = live_.find({ev.ns, ev.container_id});
  const bool known = it != live_.end();
  const bool had_task = known && it->second.task_state != DQ_CTRD_STATE_NONE;
  CtrdContainer& c = known ? it->second : live_[{ev.ns, ev.container_id}];
  if (!known) reconcile_adds_++;
  c.ns = ev.ns;
  c.id = ev.container_id;
  merge(c, ev);
  const bool upper_changed = c.upper_dir != ev.upper_dir;
  c.upper_dir = ev.upper_dir;
  c.upper_error = ev.upper_error;
  c.task_state = ev.task_state;
  c.pid = ev.pid;
  c.exit_status = ev.exit_status;
  if (!known) countUnresolved(ev);
  if (ev.task_state != DQ_CTRD_STATE_NONE && (!had_task || upper_changed)) hookRootfs(c, "reconcile", 0, calls);
}

void ContainerdWatch::reconcileEnd(const std::string& ns, std::vector<std::function<void()>>& calls) {
  const std::set<std::string> listed = std::move(listing_[ns]);
  listing_.erase(ns);
  for (auto it = live_.begin(); it != live_.end();) {
    if (it->first.first != ns || listed.count(it->first.second)) {
      ++it;
      continue;
    }
    remember(0, "reconcile_delete", ns, it->first.second, it->second.upper_dir);
    if (hooks_.on_container_delete)
      calls.push_back([this, ns, id = it->first.second] { hooks_.on_container_delete(ns, id); });
    hook_calls_["container_delete"]++;
    reconcile_deletes_++;
    it = live_.erase(it);
  }
}

void ContainerdWatch::apply(const dq_ctrd_event& ev, int64_t now_unix_ns) {
  std::vector<std::function<void()>> calls;  // hooks, run after the set is updated and unlocked
  {
    std::lock_guard<std::mutex> l(mu_);
    const char* kind = kindName(ev.kind);
    events_[kind]++;
    const Key key{ev.ns, ev.container_id};
    switch (ev.kind) {
      case DQ_CTRD_CONTAINER_CREATE: containerCreate(ev, calls); break;
      case DQ_CTRD_TASK_CREATE: taskCreate(ev, now_unix_ns, calls); break;
      case DQ_CTRD_TASK_START: taskStart(ev); break;
      case DQ_CTRD_TASK_EXIT:
      case DQ_CTRD_TASK_DELETE: {
        CtrdContainer& c = live_[key];
        c.ns = ev.ns;
        c.id = ev.container_id;
        c.task_state = ev.kind == DQ_CTRD_TASK_EXIT ? DQ_CTRD_STATE_STOPPED : DQ_CTRD_STATE_NONE;
        c.exit_status = ev.exit_status;
        break;
      }
      case DQ_CTRD_CONTAINER_DELETE:
        live_.erase(key);
        if (hooks_.on_container_delete)
          calls.push_back([this, ns = std::string(ev.ns), id = std::string(ev.container_id)] {
            hooks_.on_container_delete(ns, id);
          });
        hook_calls_["container_delete"]++;
        break;
      case DQ_CTRD_RECONCILE_BEGIN: listing_[ev.ns].clear(); break;
      case DQ_CTRD_RECONCILE_ITEM: reconcileItem(ev, calls); break;
      case DQ_CTRD_RECONCILE_END:
        reconcileEnd(ev.ns, calls);
        if (hooks_.on_reconcile_end) calls.push_back([this, ns = std::string(ev.ns)] { hooks_.on_reconcile_end(ns); });
        break;
      default: break;
    }
    if (ev.kind <= DQ_CTRD_CONTAINER_DELETE) remember(ev.seq, kind, ev.ns, ev.container_id, ev.upper_dir);
  }
  for (auto& call : calls) call();
}

std::vector<CtrdContainer> ContainerdWatch::containers() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<CtrdContainer> out;
  for (const auto& [k, c] : live_) out.push_back(c);
  return out;
}

std::optional<CtrdContainer> ContainerdWatch::find(const std::string& ns, const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = live_.find({ns, id});
  if (it == live_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> ContainerdWatch::namespacesOf(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<std::string> out;
  for (const auto& [k, c] : live_)
    if (k.second == id) out.push_back(k.first);
  return out;
}

std::vector<CtrdSeen> ContainerdWatch::recent() const {
  std::lock_guard<std::mutex> l(mu_);
  return {recent_.begin(), recent_.end()};
}

static double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5));
  return v[i];
}

nlohmann::json ContainerdWatch::report() const {
  std::lock_guard<std::mutex> l(mu_);
  size_t tasks = 0, running = 0;
  for (const auto& [k, c] : live_) {
    if (c.task_state != DQ_CTRD_STATE_NONE) tasks++;
    if (c.task_state == DQ_CTRD_STATE_RUNNING) running++;
  }
  const std::vector<double> lat(latencies_ms_.begin(), latencies_ms_.end());
  const std::vector<double> hooked(hooked_ms_.begin(), hooked_ms_.end());
  const std::vector<double> lead(lead_ms_.begin(), lead_ms_.end());
  return {{"containers", live_.size()},
          {"tasks", tasks},
          {"tasks_running", running},
          {"events", events_},
          {"upper_dir_unresolved", unresolved_},
          {"hook_calls", hook_calls_},
          {"reconcile_adds", reconcile_adds_},
          {"reconcile_deletes", reconcile_deletes_},
          // containerd's task-create timestamp -> the agent holding the resolved upper dir
          {"task_create_to_upper_dir_ms",
           {{"samples", lat.size()}, {"p50", percentile(lat, 0.5)}, {"p99", percentile(lat, 0.99)}}},
          // the event that hooked the rootfs (container create, else task
          // create) -> on_rootfs returned (with a quota stage: tagged, limited)
          {"create_to_hook_done_ms",
           {{"samples", hooked.size()}, {"p50", percentile(hooked, 0.5)}, {"p99", percentile(hooked, 0.99)}}},
          // on_rootfs returned -> containerd started the task: > 0 means the
          // limit held before the container's first instruction; min is the tightest
          {"hook_done_before_task_start_ms",
           {{"samples", lead.size()}, {"min", percentile(lead, 0.0)}, {"p50", percentile(lead, 0.5)}}},
          {"tasks_started_before_hook", started_before_hook_}};
}

}  // namespace dockquota
