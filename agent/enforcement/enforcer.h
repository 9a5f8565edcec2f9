// SPDX-License-Identifier: Apache-2.0
// Enforcement: users over their Docker limit get their containers stopped,
// then removed after a grace period, in the configured order, until they are
// under it again; and people are told (events, agent/store/events.h).
//
// A sweep reads the latest usage snapshot and the limits, both in memory,
// and for each user with a limit:
//   1. announces a warning (at warn_fraction) or docker_quota_exceeded once
//      per episode: the condition is kept in the Store with its event and
//      cleared only when usage falls clearly below the line again;
//   2. when over (and neither the user nor Docker is exempt, mode enforce):
//      picks the fewest of the user's attributed containers, newest first by
//      default, whose writable layers bring the user under the limit (sizes
//      asked of the runtime now, not the last measurement), and stops them;
//   3. removes stopped containers whose grace period ended, while the user
//      is still over; if the user got under meanwhile, the rest are spared
//      (left stopped). With no grace, 2 and 3 are one forced removal (the
//      runtime kills and removes), recorded as stopped, then removed.
// Bytes in containers already stopped, or removed after the snapshot was
// measured, count as freed, so a stale figure never picks a second victim.
//
// Every step is written to the Store before (intent) and after (outcome, with
// its event, in one transaction) the runtime call, so a crash mid-enforcement
// is finished at the next start, never repeated and never forgotten.
//
// Only containers whose owner is kernel evidence (bpf, audit) or an admin
// override are ever touched: never an unattributed one, never one billed by
// a label the user could have set. Exemptions are the admin's (config,
// PUT /api/v1/exemptions/...), never a container label.
//
// Sweeps run on their own thread: at once after wake() (new usage: a quota
// read, a measurement, a create or pull, live growth), at the next due
// removal, and every `interval`.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/worker.h"
#include "agent/enforcement/policy.h"
#include "agent/quota/quotas.h"
#include "agent/runtime/runtime.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"

namespace dockquota {

struct EnforcerOptions {
  EnforceMode mode = EnforceMode::DryRun;
  EnforceOrder order = EnforceOrder::Newest;
  std::chrono::seconds grace{300};  // stop -> remove; 0: one forced removal (kill, remove)
  // SIGTERM -> SIGKILL, as `docker stop -t`. With grace 0 too: stopped
  // (SIGTERM first), then removed at once; 0 here and there = one forced
  // removal (SIGKILL at once: fastest, but a process writing to a volume,
  // which outlives the container, gets no chance to finish its write).
  std::chrono::seconds stop_timeout{10};
  bool remove_volumes = true;                                     // a removed container's anonymous volumes go too
  std::chrono::milliseconds interval = std::chrono::seconds(60);  // periodic sweep
  Thresholds thresholds;
  std::set<uint32_t> exempt_uids;  // from the config (the Store has the API's)
  bool bill_root_to_login_uid = true;
  std::string host_id;     // in logs and event details
  bool to_master = false;  // queue events for the master / for mail
  bool to_mail = false;
  // Kernel figures fresher than the snapshot (ProjectQuotas::usage(), updated
  // by targeted reads every growth tick); per-user ones replace the snapshot's
  // user totals. May be empty.
  std::function<std::shared_ptr<const KernelUsage>()> kernel_usage;
  std::chrono::seconds event_retention{90 * 86400};  // delivered events older than this are deleted (hourly)
  std::function<double()> clock;                     // unix seconds; default: the wall clock
};

struct SweepReport {
  size_t users = 0;  // with a limit
  size_t over = 0;   // over it
  size_t stopped = 0, removed = 0, spared = 0, failed = 0;
  size_t events = 0;     // recorded
  bool skipped = false;  // no usage measured yet
  double seconds = 0;
};

class Enforcer {
 public:
  using SnapshotFn = std::function<std::shared_ptr<const UsageSnapshot>()>;
  struct Hooks {
    std::function<void()> on_events;  // events were recorded (wake the senders)
    std::function<void()> on_freed;   // containers were removed (measure again)
  };

  // Loads the announced conditions from the store.
  static Result<std::unique_ptr<Enforcer>> create(Store& store, QuotaBook& book, SnapshotFn snapshot,
                                                  UserDirectory& users, ContainerRuntime& runtime,
                                                  EnforcerOptions options, Hooks hooks = {});
  ~Enforcer();  // stops

  void start();
  void stop();
  void wake();  // sweep soon (coalesced)

  // One sweep on the caller's thread (serialised with the thread's).
  Result<SweepReport> sweep();

  const EnforcerOptions& options() const { return opt_; }
  // Per-user state of the last sweep, with open actions: all users, or one.
  nlohmann::json state(std::optional<uint32_t> uid = std::nullopt) const;
  // Counters for /healthz and /metrics.
  nlohmann::json health() const;

  // A user's containers in the order a sweep would stop and remove them, the
  // first to go first: the same rule for what enforcement may touch (a kernel
  // or admin owner, not exempt, not already being acted on) and the same
  // orderCandidates() as a sweep. A preview reads only `containers` (the
  // user's, as last measured) from the store, where a sweep reads them all;
  // `size_of` gives each its last measured size (a preview asks Docker
  // nothing; a sweep asks again). Empty for an exempt user. Never waits for
  // a running sweep.
  using KnownSize = std::function<std::optional<uint64_t>(const std::string& id)>;
  Result<std::vector<Candidate>> removalOrder(uint32_t uid, const std::vector<std::string>& containers,
                                              const KnownSize& size_of) const;

 private:
  struct UserView {  // a user as the last sweep saw them
    uint64_t usage = 0, limit = 0;
    QuotaLevel level = QuotaLevel::Ok;
    bool exempt = false;
  };

  Enforcer(Store& store, QuotaBook& book, SnapshotFn snapshot, UserDirectory& users, ContainerRuntime& runtime,
           EnforcerOptions options, Hooks hooks);
  double now() const { return opt_.clock(); }
  EventRoute route(const char* type) const;
  Event makeEvent(const char* type, uint32_t uid, nlohmann::json detail, const std::string& container_id = "");
  void announce(uint32_t uid, uint64_t usage, uint64_t limit, QuotaLevel level, SweepReport& rep);
  // false: announced already, or the store failed.
  bool record(Event& e, const std::vector<std::string>& conditions, SweepReport& rep);
  std::map<uint32_t, std::vector<Candidate>> candidates(const std::set<uint32_t>& uids,
                                                        const std::set<std::string>& skip) const;
  // The one rule for what enforcement may touch: a live container with a
  // kernel or admin owner, neither in `skip` (acted on) nor exempt. Its
  // billed uid, or nullopt.
  std::optional<uint32_t> candidateUid(const ObjectRecord& r, const std::set<std::string>& skip,
                                       const std::set<std::string>& exempt_containers) const;
  void enforceUser(uint32_t uid, uint64_t usage, uint64_t limit, std::vector<Candidate> cands, SweepReport& rep);
  // The stopped action, or nullopt (gone, failed: already settled).
  std::optional<EnforcementAction> stopContainer(EnforcementAction a, uint64_t usage, uint64_t limit, SweepReport& rep);
  void removeDue(uint32_t uid, std::vector<EnforcementAction> due, uint64_t usage, SweepReport& rep);
  // Without a stop of ours first (a.stopped_at unset), the removal stops it too: both events are recorded.
  void removeContainer(EnforcementAction a, uint64_t usage, uint64_t new_usage, uint64_t limit, SweepReport& rep);
  Event stoppedEvent(const EnforcementAction& a, uint64_t usage, uint64_t limit);
  // A runtime call failed: the action is marked failed and logged; returns its docker_enforcement_failed event.
  Event failed(EnforcementAction& a, const char* action, const Error& err, SweepReport& rep);
  // An action's outcome and its events (in order), in one transaction.
  void settle(const EnforcementAction& a, std::vector<Event> events, SweepReport& rep);
  void storeFailed(const Error& err);  // counted for /healthz and logged
  bool stillOwnedBy(const std::string& id, uint32_t uid) const;
  uint64_t recentlyFreed(uint32_t uid, double since) const;
  void run();
  void halt();  // sets stop_ and wakes run()

  Store& store_;
  QuotaBook& book_;
  SnapshotFn snapshot_;
  UserDirectory& users_;
  ContainerRuntime& runtime_;
  EnforcerOptions opt_;
  Hooks hooks_;

  std::mutex sweep_mu_;                                   // one sweep at a time; guards what follows
  std::map<uint32_t, std::set<std::string>> conditions_;  // announced, as in the Store
  std::set<uint32_t> exempt_uids_;                        // this sweep's: config + Store
  std::set<std::string> exempt_containers_;
  struct Freed {
    uint32_t uid;
    uint64_t bytes;
    double at;
  };
  std::vector<Freed> recent_removals_;  // until a snapshot measured after them
  double last_prune_ = 0;

  mutable std::mutex state_mu_;
  std::map<uint32_t, UserView> users_seen_;
  double last_sweep_at_ = 0;
  double next_due_ = 0;  // earliest remove_after of an open action (0 none)

  struct Stats {
    std::atomic<uint64_t> sweeps{0}, stopped{0}, removed{0}, spared{0}, failed{0}, events{0}, store_errors{0};
    std::atomic<double> last_sweep_seconds{0};
    std::atomic<uint64_t> over{0};
  } stats_;

  std::mutex cv_mu_;
  std::condition_variable cv_;
  bool wake_ = false, stop_ = false;
  Worker worker_;
};

}  // namespace dockquota
