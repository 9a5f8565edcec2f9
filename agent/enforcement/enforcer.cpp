// SPDX-License-Identifier: Apache-2.0
#include "agent/enforcement/enforcer.h"

#include <algorithm>
#include <cmath>

#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/base/short_id.h"
#include "agent/store/billing.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "enforce";
// Conditions kept per user in the Store. dry_run and insufficient end with "exceeded".
constexpr const char* kWarningCond = "warning";
constexpr const char* kExceededCond = "exceeded";
constexpr const char* kDryRunCond = "dry_run";
constexpr const char* kInsufficientCond = "insufficient";
// Removals stay "freed but maybe not yet measured" this long at most.
constexpr double kFreedMemorySeconds = 3600;

double mib(uint64_t b) { return double(b) / (1 << 20); }

// Only kernel evidence or an admin decides whose container is stopped: a
// label (Source::Label) is something any docker user can write.
bool actionableOwner(const ObjectRecord& r) {
  return r.owner &&
         (r.owner->source == Source::Bpf || r.owner->source == Source::Audit || r.owner->source == Source::Admin);
}

}  // namespace

Result<std::unique_ptr<Enforcer>> Enforcer::create(Store& store, QuotaBook& book, SnapshotFn snapshot,
                                                   UserDirectory& users, ContainerRuntime& runtime,
                                                   EnforcerOptions options, Hooks hooks) {
  if (!options.clock) options.clock = unixNow;
  std::unique_ptr<Enforcer> e(
      new Enforcer(store, book, std::move(snapshot), users, runtime, std::move(options), std::move(hooks)));
  auto held = store.eventLog().conditions();
  if (!held) return held.error().context(kSub);
  e->conditions_ = std::move(*held);
  return e;
}

Enforcer::Enforcer(Store& store, QuotaBook& book, SnapshotFn snapshot, UserDirectory& users, ContainerRuntime& runtime,
                   EnforcerOptions options, Hooks hooks)
    : store_(store),
      book_(book),
      snapshot_(std::move(snapshot)),
      users_(users),
      runtime_(runtime),
      opt_(std::move(options)),
      hooks_(std::move(hooks)) {}

Enforcer::~Enforcer() { stop(); }

// --- events -------------------------------------------------------------------------

EventRoute Enforcer::route(const char* type) const {
  return {opt_.to_master && channelWants(Channel::Master, type), opt_.to_mail && channelWants(Channel::Mail, type)};
}

Event Enforcer::makeEvent(const char* type, uint32_t uid, nlohmann::json detail, const std::string& container_id) {
  Event e;
  e.type = type;
  e.uid = uid;
  e.user = users_.name(uid);
  e.container_id = container_id;
  detail["uid"] = uid;
  if (!opt_.host_id.empty()) detail["host"] = opt_.host_id;
  e.detail = std::move(detail);
  e.created_at = now();
  return e;
}

bool Enforcer::record(Event& e, const std::vector<std::string>& conditions, SweepReport& rep) {
  auto seq = store_.eventLog().addEvent(e, route(e.type.c_str()), conditions);
  if (!seq) {
    storeFailed(seq.error());
    return false;
  }
  if (!*seq) return false;  // the condition was announced before (another sweep, before a restart)
  conditions_[e.uid].insert(conditions.begin(), conditions.end());
  rep.events++;
  stats_.events++;
  return true;
}

// Announces what is newly true for the user and forgets what no longer is.
void Enforcer::announce(uint32_t uid, uint64_t usage, uint64_t limit, QuotaLevel level, SweepReport& rep) {
  auto& held = conditions_[uid];
  for (auto it = held.begin(); it != held.end();) {
    const std::string line = *it == kWarningCond ? kWarningCond : kExceededCond;
    if (conditionHolds(line, usage, limit, opt_.thresholds)) {
      ++it;
      continue;
    }
    if (auto st = store_.eventLog().clearCondition(uid, *it); !st) {
      storeFailed(st.error());
      ++it;
      continue;
    }
    LOG_INFO(kSub, "uid %u (%s): %s ended (usage %.1f MiB of %.1f MiB)", uid, users_.name(uid).c_str(), it->c_str(),
             mib(usage), mib(limit));
    it = held.erase(it);
  }
  const uint64_t limit_kib = limit / 1024;
  if (level == QuotaLevel::Over && !held.count(kExceededCond)) {
    auto e = makeEvent(event_type::kExceeded, uid, {{"block_current", usage}, {"block_hard_limit", limit_kib}});
    // Holding the warning too: coming down from over is no news.
    if (record(e, {kExceededCond, kWarningCond}, rep))
      LOG_NOTICE(kSub, "host %s uid %u (%s): over the Docker limit: %llu bytes used of %llu (%.1f of %.1f MiB)",
                 opt_.host_id.c_str(), uid, e.user.c_str(), (unsigned long long)usage, (unsigned long long)limit,
                 mib(usage), mib(limit));
  } else if (level == QuotaLevel::Warning && !held.count(kWarningCond)) {
    const double percent = limit ? std::round(1000.0 * double(usage) / double(limit)) / 10 : 0;
    auto e = makeEvent(event_type::kWarning, uid,
                       {{"block_current", usage}, {"block_hard_limit", limit_kib}, {"percent", percent}});
    if (record(e, {kWarningCond}, rep))
      LOG_INFO(kSub, "uid %u (%s): at %.1f%% of the Docker limit (%.1f of %.1f MiB)", uid, e.user.c_str(), percent,
               mib(usage), mib(limit));
  }
  if (held.empty()) conditions_.erase(uid);
}

// --- the sweep ----------------------------------------------------------------------------

Result<SweepReport> Enforcer::sweep() {
  std::lock_guard<std::mutex> one(sweep_mu_);
  const double t0 = now();
  const auto wall0 = std::chrono::steady_clock::now();
  SweepReport rep;
  auto snap = snapshot_();
  auto kernel = opt_.kernel_usage ? opt_.kernel_usage() : nullptr;
  if (kernel && !kernel->per_user) kernel = nullptr;
  if (!snap || !(snap->measured || snap->kernel || kernel)) {
    rep.skipped = true;  // never act on usage we do not know
    return rep;
  }
  // A user's usage and when it was read: the kernel's latest per-user figure
  // where there is one (it is the user's whole project), else the snapshot's.
  const double snap_at = snap->kernel ? snap->kernel_read_at : snap->measured_at;
  auto usageOf = [&](uint32_t uid) -> std::pair<uint64_t, double> {
    if (kernel)
      if (auto it = kernel->users.find(uid); it != kernel->users.end()) return {it->second, kernel->read_at};
    auto it = snap->users.find(uid);
    return {it == snap->users.end() ? 0 : it->second.total(), snap_at};
  };
  const double oldest = std::min(snap_at, kernel ? kernel->read_at : snap_at);
  std::erase_if(recent_removals_, [&](const Freed& f) { return f.at < oldest || f.at < t0 - kFreedMemorySeconds; });

  // Exemptions: the config's users and the admin's (Store).
  std::set<uint32_t>& exempt = exempt_uids_;
  exempt = opt_.exempt_uids;
  exempt_containers_.clear();
  if (auto xs = store_.enforcement().exemptions()) {
    for (const auto& x : *xs) {
      if (x.kind == "container")
        exempt_containers_.insert(x.id);
      else if (x.kind == "user")
        exempt.insert(uint32_t(std::stoul(x.id)));
    }
  } else {
    // Without the list, nobody can be known not to be exempt: act on no one this time.
    stats_.store_errors++;
    return xs.error().context(kSub);
  }
  auto open = store_.enforcement().actions(/*open_only=*/true);
  if (!open) {
    stats_.store_errors++;
    return open.error().context(kSub);
  }
  std::map<uint32_t, uint64_t> being_freed;  // stopped, waiting for removal
  std::set<std::string> acted_on;
  for (const auto& a : *open) {
    being_freed[a.uid] = satAdd(being_freed[a.uid], a.size_bytes);
    acted_on.insert(a.container_id);
  }

  auto limits = book_.limits();
  std::map<uint32_t, UserView> seen;
  std::map<uint32_t, uint64_t> over;  // uid -> usage to bring under the limit
  for (const auto& [uid, kib] : *limits) {
    UserView v;
    v.limit = kib * 1024;
    const auto [usage, as_of] = usageOf(uid);
    v.usage = usage;
    v.level = quotaLevel(v.usage, v.limit, opt_.thresholds);
    v.exempt = exempt.count(uid) > 0;
    announce(uid, v.usage, v.limit, v.level, rep);
    rep.users++;
    if (v.level == QuotaLevel::Over) rep.over++;
    const uint64_t freed = satAdd(being_freed[uid], recentlyFreed(uid, as_of));
    const uint64_t left = v.usage - std::min(v.usage, freed);
    if (opt_.mode != EnforceMode::Off && !v.exempt && overLimit(left, v.limit, opt_.thresholds)) over[uid] = left;
    seen[uid] = v;
  }
  // Users whose limit was removed: nothing they announced holds any more.
  for (auto it = conditions_.begin(); it != conditions_.end();) {
    uint32_t uid = (it++)->first;
    if (!limits->count(uid)) announce(uid, 0, 0, QuotaLevel::Ok, rep);
  }

  if (!over.empty()) {
    std::set<uint32_t> uids;
    for (const auto& [uid, _] : over) uids.insert(uid);
    auto cands = candidates(uids, acted_on);
    for (const auto& [uid, usage] : over) enforceUser(uid, usage, seen[uid].limit, std::move(cands[uid]), rep);
  }

  // Due removals, and steps a crash interrupted.
  if (opt_.mode == EnforceMode::Enforce) {
    auto open_now = store_.enforcement().actions(true);
    if (!open_now) {
      stats_.store_errors++;
      return open_now.error().context(kSub);
    }
    std::map<uint32_t, std::vector<EnforcementAction>> due;
    double next = 0;
    for (auto& a : *open_now) {
      if (a.state == ActionState::Stopping) {
        LOG_NOTICE(kSub, "finishing the interrupted stop of container %s (uid %u)", shortId(a.container_id).c_str(),
                   a.uid);
        auto u = seen.count(a.uid) ? seen[a.uid] : UserView{};
        stopContainer(a, u.usage, u.limit, rep);
        continue;
      }
      const bool ready = a.state == ActionState::Removing || (a.remove_after && *a.remove_after <= now());
      if (ready) {
        due[a.uid].push_back(std::move(a));
      } else if (a.remove_after && (next == 0 || *a.remove_after < next)) {
        next = *a.remove_after;
      }
    }
    for (auto& [uid, actions] : due) {
      auto [usage, as_of] = usageOf(uid);
      usage -= std::min(usage, recentlyFreed(uid, as_of));
      removeDue(uid, std::move(actions), usage, rep);
    }
    // Grace periods that ended while we worked are picked up by the next wake.
    std::lock_guard<std::mutex> l(state_mu_);
    next_due_ = next;
  }

  if (t0 - last_prune_ >= 3600) {
    last_prune_ = t0;
    if (auto n = store_.eventLog().pruneEvents(t0 - double(opt_.event_retention.count())); !n)
      LOG_WARN(kSub, "%s", n.error().message.c_str());
    else if (*n)
      LOG_INFO(kSub, "deleted %zu delivered event(s) older than %lld days", *n,
               (long long)(opt_.event_retention.count() / 86400));
  }

  rep.seconds = secondsSince(wall0);
  stats_.sweeps++;
  stats_.last_sweep_seconds = rep.seconds;
  stats_.over = rep.over;
  {
    std::lock_guard<std::mutex> l(state_mu_);
    users_seen_ = std::move(seen);
    last_sweep_at_ = t0;
  }
  if (rep.events && hooks_.on_events) hooks_.on_events();
  if (rep.removed && hooks_.on_freed) hooks_.on_freed();
  return rep;
}

uint64_t Enforcer::recentlyFreed(uint32_t uid, double since) const {
  uint64_t sum = 0;
  for (const auto& f : recent_removals_)
    if (f.uid == uid && f.at >= since) sum = satAdd(sum, f.bytes);
  return sum;
}

// The live containers of each uid that enforcement may touch.
std::map<uint32_t, std::vector<Candidate>> Enforcer::candidates(const std::set<uint32_t>& uids,
                                                                const std::set<std::string>& skip) const {
  std::map<uint32_t, std::vector<Candidate>> out;
  auto st = store_.objects().forEach(ObjectKind::Container, [&](const ObjectRecord& r) {
    const auto uid = candidateUid(r, skip, exempt_containers_);
    if (uid && uids.count(*uid)) out[*uid].push_back({r.id, r.name, r.first_seen, std::nullopt});
  });
  if (!st) LOG_ERROR(kSub, "%s", st.error().message.c_str());
  return out;
}

std::optional<uint32_t> Enforcer::candidateUid(const ObjectRecord& r, const std::set<std::string>& skip,
                                               const std::set<std::string>& exempt_containers) const {
  if (r.gone_at || !actionableOwner(r) || skip.count(r.id) || exempt_containers.count(r.id)) return std::nullopt;
  return billedUid(*r.owner, opt_.bill_root_to_login_uid);
}

void Enforcer::enforceUser(uint32_t uid, uint64_t usage, uint64_t limit, std::vector<Candidate> cands,
                           SweepReport& rep) {
  // Sizes now, from the runtime: the snapshot's may predate the growth that got the user here.
  // Asked once per container, and only for those the selection considers.
  std::map<std::string, uint64_t> sizes;
  auto size_of = [&](const Candidate& c) -> uint64_t {
    if (auto it = sizes.find(c.id); it != sizes.end()) return it->second;
    const auto t = std::chrono::steady_clock::now();
    auto b = runtime_.writableBytes(c.id);
    if (!b && b.error().code != ENOENT) LOG_WARN(kSub, "%s; counting it as 0 bytes", b.error().message.c_str());
    LOG_DEBUG(kSub, "size of container %s: %llu bytes (asked in %.3fs)", shortId(c.id).c_str(),
              (unsigned long long)(b ? *b : 0), secondsSince(t));
    return sizes[c.id] = b ? *b : 0;
  };
  if (opt_.order == EnforceOrder::Largest)
    for (auto& c : cands) c.size = size_of(c);
  orderCandidates(cands, opt_.order);
  auto sel = selectUntilUnder(cands, usage, limit, opt_.thresholds, size_of);

  const std::string user = users_.name(uid);
  if (!sel.enough) {
    auto e = makeEvent(event_type::kFailed, uid,
                       {{"action", "select"},
                        {"block_current", usage},
                        {"block_hard_limit", limit / 1024},
                        {"error", "removing every container enforcement may touch frees " + std::to_string(sel.freed) +
                                      " bytes, not enough: images and volumes hold the rest"}});
    if (record(e, {kInsufficientCond}, rep))
      LOG_WARN(kSub,
               "host %s uid %u (%s): over the limit and its %zu removable container(s) free only %llu bytes; "
               "images and volumes hold the rest",
               opt_.host_id.c_str(), uid, user.c_str(), cands.size(), (unsigned long long)sel.freed);
  }
  if (sel.picked.empty()) return;

  if (opt_.mode == EnforceMode::DryRun) {
    nlohmann::json would = nlohmann::json::array();
    for (size_t i : sel.picked)
      would.push_back(
          {{"container_id", cands[i].id}, {"container_name", cands[i].name}, {"size_bytes", sizes[cands[i].id]}});
    auto e = makeEvent(event_type::kDryRun, uid,
                       {{"would_stop", would},
                        {"order", toString(opt_.order)},
                        {"block_current", usage},
                        {"block_hard_limit", limit / 1024},
                        {"grace_seconds", opt_.grace.count()}});
    if (record(e, {kDryRunCond}, rep))
      LOG_NOTICE(kSub,
                 "dry-run: host %s uid %u (%s) is over the limit: would stop %zu container(s) (%s first), "
                 "freeing %llu bytes",
                 opt_.host_id.c_str(), uid, user.c_str(), sel.picked.size(), toString(opt_.order),
                 (unsigned long long)sel.freed);
    return;
  }
  uint64_t freed = 0;
  for (size_t i : sel.picked) {
    EnforcementAction a;
    a.container_id = cands[i].id;
    a.uid = uid;
    a.name = cands[i].name;
    a.size_bytes = sizes[cands[i].id];
    a.started_at = now();
    if (opt_.grace.count() > 0) {
      stopContainer(std::move(a), usage, limit, rep);
      continue;
    }
    // No grace: removed at once. Still stopped with SIGTERM first (as
    // `docker stop`), unless the stop timeout is 0 too: the layer goes
    // anyway, but a database writing to a volume (which stays) must get to
    // finish its write. With both 0, one forced removal (Docker's SIGKILL,
    // then the removal): a round trip and a second of state writes less.
    const uint64_t before = usage - std::min(usage, freed);
    if (opt_.stop_timeout.count() > 0) {
      auto stopped = stopContainer(std::move(a), before, limit, rep);
      if (!stopped) continue;
      a = std::move(*stopped);
    }
    freed = satAdd(freed, a.size_bytes);
    removeContainer(std::move(a), before, usage - std::min(usage, freed), limit, rep);
  }
}

std::optional<EnforcementAction> Enforcer::stopContainer(EnforcementAction a, uint64_t usage, uint64_t limit,
                                                         SweepReport& rep) {
  const std::string user = users_.name(a.uid);
  a.state = ActionState::Stopping;
  if (auto st = store_.enforcement().putAction(a);
      !st) {  // the intent first: a crash now is finished at the next start
    storeFailed(st.error().context("not stopping it"));
    return std::nullopt;
  }
  const auto t_stop = std::chrono::steady_clock::now();
  auto st = runtime_.stop(a.container_id, opt_.stop_timeout);
  const double stop_s = secondsSince(t_stop);
  std::vector<Event> events;
  if (!st && st.error().code == ENOENT) {
    a.state = ActionState::Spared;
    a.finished_at = now();
    a.error = "the container was gone before it could be stopped";
    LOG_INFO(kSub, "uid %u (%s): container %s was gone before it could be stopped", a.uid, user.c_str(),
             shortId(a.container_id).c_str());
    rep.spared++;
    stats_.spared++;
  } else if (!st) {
    events.push_back(failed(a, "stop", st.error(), rep));
  } else {
    a.state = ActionState::Stopped;
    a.stopped_at = now();
    a.remove_after = *a.stopped_at + double(opt_.grace.count());
    events.push_back(stoppedEvent(a, usage, limit));
    LOG_NOTICE(kSub,
               "host %s uid %u (%s): stopped container %s (%s) in %.2fs, %llu bytes in its layer; usage %llu of "
               "limit %llu bytes; removal in %llds unless the user gets under the limit",
               opt_.host_id.c_str(), a.uid, user.c_str(), a.name.c_str(), shortId(a.container_id).c_str(), stop_s,
               (unsigned long long)a.size_bytes, (unsigned long long)usage, (unsigned long long)limit,
               (long long)opt_.grace.count());
    rep.stopped++;
    stats_.stopped++;
  }
  const bool stopped = a.state == ActionState::Stopped;
  settle(a, std::move(events), rep);
  if (!stopped) return std::nullopt;
  return a;
}

Event Enforcer::stoppedEvent(const EnforcementAction& a, uint64_t usage, uint64_t limit) {
  return makeEvent(event_type::kStopped, a.uid,
                   {{"container_id", shortId(a.container_id)},
                    {"container_name", a.name},
                    {"size_bytes", a.size_bytes},
                    {"block_current", usage},
                    {"block_hard_limit", limit / 1024},
                    {"stopped_ids", {a.container_id}},
                    {"remove_after_seconds", opt_.grace.count()}},
                   a.container_id);
}

// Stopped containers whose grace ended: removed, in the order they were
// chosen, while the user is over; spared once the user is under.
void Enforcer::removeDue(uint32_t uid, std::vector<EnforcementAction> due, uint64_t usage, SweepReport& rep) {
  std::sort(due.begin(), due.end(), [](const auto& a, const auto& b) {
    return a.started_at != b.started_at ? a.started_at < b.started_at : a.container_id < b.container_id;
  });
  const uint64_t limit = book_.limitKiB(uid) * 1024;
  const std::string user = users_.name(uid);
  uint64_t freed = 0;
  for (auto& a : due) {
    const uint64_t left = usage - std::min(usage, freed);
    std::string spare_why;
    if (a.state != ActionState::Removing) {  // a removal already begun is finished whatever changed
      if (!overLimit(left, limit, opt_.thresholds))
        spare_why = limit ? "the user is under the limit again" : "the user has no limit any more";
      else if (exempt_containers_.count(a.container_id) || exempt_uids_.count(uid))
        spare_why = "exempted by an admin";
      else if (!stillOwnedBy(a.container_id, uid))
        spare_why = "no longer attributed to uid " + std::to_string(uid);
    }
    if (!spare_why.empty()) {
      a.state = ActionState::Spared;
      a.finished_at = now();
      a.error = spare_why;
      LOG_INFO(kSub, "uid %u (%s): container %s (%s) stays stopped, not removed: %s", uid, user.c_str(), a.name.c_str(),
               shortId(a.container_id).c_str(), spare_why.c_str());
      if (auto st = store_.enforcement().putAction(a); !st) storeFailed(st.error());
      rep.spared++;
      stats_.spared++;
      continue;
    }
    const uint64_t before = usage - std::min(usage, freed);
    freed = satAdd(freed, a.size_bytes);
    removeContainer(std::move(a), before, usage - std::min(usage, freed), limit, rep);
  }
}

void Enforcer::removeContainer(EnforcementAction a, uint64_t usage, uint64_t new_usage, uint64_t limit,
                               SweepReport& rep) {
  const std::string user = users_.name(a.uid);
  const bool running = !a.stopped_at;  // not stopped by us first: the removal stops it (grace 0)
  a.state = ActionState::Removing;
  if (auto st = store_.enforcement().putAction(a); !st) return storeFailed(st.error().context("not removing it"));
  const auto t_remove = std::chrono::steady_clock::now();
  auto st = runtime_.remove(a.container_id, opt_.remove_volumes);
  std::vector<Event> events;
  a.finished_at = now();
  if (!st && st.error().code == ENOENT) {
    a.state = ActionState::Removed;
    a.error = "already removed by someone else";
    LOG_INFO(kSub, "uid %u (%s): container %s (%s) was already removed", a.uid, user.c_str(), a.name.c_str(),
             shortId(a.container_id).c_str());
  } else if (!st) {
    events.push_back(failed(a, "remove", st.error(), rep));
  } else {
    a.state = ActionState::Removed;
    if (running) {  // stopped on the way: its event first, as after a stop of our own
      a.stopped_at = a.finished_at;
      a.remove_after = a.finished_at;
      events.push_back(stoppedEvent(a, usage, limit));
      rep.stopped++;
      stats_.stopped++;
    }
    events.push_back(makeEvent(event_type::kRemoved, a.uid,
                               {{"container_id", shortId(a.container_id)},
                                {"container_name", a.name},
                                {"size_bytes", a.size_bytes},
                                {"new_usage", new_usage},
                                {"block_hard_limit", limit / 1024},
                                {"removed_ids", {a.container_id}}},
                               a.container_id));
    LOG_NOTICE(kSub,
               "host %s uid %u (%s): %s container %s (%s) in %.2fs, freeing %llu bytes; usage now about %llu "
               "of limit %llu bytes",
               opt_.host_id.c_str(), a.uid, user.c_str(), running ? "stopped (killed) and removed" : "removed",
               a.name.c_str(), shortId(a.container_id).c_str(), secondsSince(t_remove),
               (unsigned long long)a.size_bytes, (unsigned long long)new_usage, (unsigned long long)limit);
    rep.removed++;
    stats_.removed++;
  }
  if (a.state == ActionState::Removed) recent_removals_.push_back({a.uid, a.size_bytes, *a.finished_at});
  settle(a, std::move(events), rep);
}

Event Enforcer::failed(EnforcementAction& a, const char* action, const Error& err, SweepReport& rep) {
  a.state = ActionState::Failed;
  a.finished_at = now();
  a.error = err.message;
  LOG_ERROR(kSub, "host %s uid %u (%s): failed to %s container %s (%s): %s", opt_.host_id.c_str(), a.uid,
            users_.name(a.uid).c_str(), action, a.name.c_str(), shortId(a.container_id).c_str(), a.error.c_str());
  rep.failed++;
  stats_.failed++;
  return makeEvent(
      event_type::kFailed, a.uid,
      {{"action", action}, {"container_id", shortId(a.container_id)}, {"container_name", a.name}, {"error", a.error}},
      a.container_id);
}

void Enforcer::settle(const EnforcementAction& a, std::vector<Event> events, SweepReport& rep) {
  std::vector<ActionRepo::RoutedEvent> routed;
  for (auto& e : events) routed.push_back({&e, route(e.type.c_str())});
  if (auto s = store_.enforcement().putAction(a, routed); !s) return storeFailed(s.error());
  rep.events += events.size();
  stats_.events += events.size();
}

void Enforcer::storeFailed(const Error& err) {
  stats_.store_errors++;
  LOG_ERROR(kSub, "%s", err.message.c_str());
}

bool Enforcer::stillOwnedBy(const std::string& id, uint32_t uid) const {
  auto r = store_.objects().get(ObjectKind::Container, id);
  if (!r || !*r) return false;
  const auto& rec = **r;
  return actionableOwner(rec) && billedUid(*rec.owner, opt_.bill_root_to_login_uid) == uid;
}

// --- thread --------------------------------------------------------------------------------

void Enforcer::start() {
  {
    std::lock_guard<std::mutex> l(cv_mu_);
    stop_ = false;
    wake_ = true;  // a first sweep at once: finishes what a crash interrupted
  }
  worker_.start(
      "dq-enforce", [this] { run(); }, [this] { halt(); });
}

void Enforcer::stop() { worker_.stop(); }

void Enforcer::halt() {
  {
    std::lock_guard<std::mutex> l(cv_mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

void Enforcer::wake() {
  {
    std::lock_guard<std::mutex> l(cv_mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

void Enforcer::run() {
  // Before the first sweep: an enforcement then starts with its first Docker call, not a handshake.
  if (opt_.mode == EnforceMode::Enforce)
    if (auto st = runtime_.connect(); !st) LOG_DEBUG(kSub, "%s (again at the first call)", st.error().message.c_str());
  std::unique_lock<std::mutex> l(cv_mu_);
  while (!stop_) {
    auto deadline = std::chrono::steady_clock::now() + opt_.interval;
    double due;
    {
      std::lock_guard<std::mutex> s(state_mu_);
      due = next_due_;
    }
    if (due > 0) {
      auto in = std::chrono::duration<double>(std::max(0.0, due - now()));
      deadline = std::min(deadline, std::chrono::steady_clock::now() +
                                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(in));
    }
    cv_.wait_until(l, deadline, [this] { return stop_ || wake_; });
    if (stop_) break;
    wake_ = false;
    l.unlock();
    if (auto r = sweep(); !r) LOG_ERROR(kSub, "sweep: %s", r.error().message.c_str());
    l.lock();
  }
}

// --- state --------------------------------------------------------------------------------

// What sweep() reads, read again here (exemptions, open actions), so a
// preview never takes sweep_mu_: a sweep can wait on Docker for seconds.
Result<std::vector<Candidate>> Enforcer::removalOrder(uint32_t uid, const std::vector<std::string>& containers,
                                                      const KnownSize& size_of) const {
  auto xs = store_.enforcement().exemptions();
  if (!xs) return xs.error().context(kSub);
  std::set<std::string> exempt_containers;
  bool exempt = opt_.exempt_uids.count(uid) > 0;
  for (const auto& x : *xs) {
    if (x.kind == "container") exempt_containers.insert(x.id);
    if (x.kind == "user" && x.id == std::to_string(uid)) exempt = true;
  }
  if (exempt) return std::vector<Candidate>{};
  auto open = store_.enforcement().actions(/*open_only=*/true);
  if (!open) return open.error().context(kSub);
  std::set<std::string> acted_on;
  for (const auto& a : *open) acted_on.insert(a.container_id);
  std::vector<Candidate> cands;
  for (const auto& id : containers) {
    auto r = store_.objects().get(ObjectKind::Container, id);
    if (!r) return r.error().context(kSub);
    if (*r && candidateUid(**r, acted_on, exempt_containers) == uid)
      cands.push_back({id, (*r)->name, (*r)->first_seen, size_of(id)});
  }
  orderCandidates(cands, opt_.order);
  return cands;
}

nlohmann::json Enforcer::state(std::optional<uint32_t> uid) const {
  std::map<uint32_t, UserView> seen;
  double at;
  {
    std::lock_guard<std::mutex> l(state_mu_);
    seen = users_seen_;
    at = last_sweep_at_;
  }
  std::map<uint32_t, nlohmann::json> acts;
  if (auto open = store_.enforcement().actions(true)) {
    for (const auto& a : *open) {
      if (uid && a.uid != *uid) continue;
      nlohmann::json j = {{"container_id", a.container_id},
                          {"container_name", a.name},
                          {"state", toString(a.state)},
                          {"size_bytes", a.size_bytes}};
      if (a.remove_after) j["remove_after"] = *a.remove_after;
      acts[a.uid].push_back(j);
      if (!seen.count(a.uid)) seen[a.uid] = UserView{};
    }
  }
  auto held = store_.eventLog().conditions();
  nlohmann::json users = nlohmann::json::array();
  for (const auto& [u, v] : seen) {
    if (uid && u != *uid) continue;
    nlohmann::json j = {{"uid", u},
                        {"user", users_.name(u)},
                        {"usage_bytes", v.usage},
                        {"limit_bytes", v.limit},
                        {"level", toString(v.level)},
                        {"exempt", v.exempt},
                        {"pending_actions", acts.count(u) ? acts[u] : nlohmann::json::array()},
                        {"conditions", nlohmann::json::array()}};
    if (v.limit) j["percent"] = std::round(1000.0 * double(v.usage) / double(v.limit)) / 10;
    if (held && held->count(u))
      for (const auto& c : held->at(u)) j["conditions"].push_back(c);
    users.push_back(std::move(j));
  }
  return {{"mode", toString(opt_.mode)},
          {"order", toString(opt_.order)},
          {"grace_seconds", opt_.grace.count()},
          {"warn_fraction", opt_.thresholds.warn_fraction},
          {"last_sweep", at},
          {"users", std::move(users)}};
}

nlohmann::json Enforcer::health() const {
  return {{"mode", toString(opt_.mode)},
          {"sweeps", stats_.sweeps.load()},
          {"last_sweep_seconds", stats_.last_sweep_seconds.load()},
          {"users_over_limit", stats_.over.load()},
          {"stopped", stats_.stopped.load()},
          {"removed", stats_.removed.load()},
          {"spared", stats_.spared.load()},
          {"failed", stats_.failed.load()},
          {"events", stats_.events.load()},
          {"store_errors", stats_.store_errors.load()}};
}

}  // namespace dockquota
