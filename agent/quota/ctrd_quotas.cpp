// SPDX-License-Identifier: Apache-2.0
// containerd rootfs quotas: see ctrd_quotas.h.
#include "agent/quota/ctrd_quotas.h"

#include <sys/stat.h>

#include <algorithm>

#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/store/events.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "ctrd-quota";
constexpr const char* kLimitEvent = "containerd_limit_reached";
constexpr const char* kRemovedEvent = "containerd_tenant_removed";
constexpr const char* kCondPrefix = "ctrd_limit:";
constexpr size_t kTagSamples = 1024;  // as the watch keeps for its latency

class RealKernel : public CtrdKernel {
 public:
  Result<QuotaFs> probe(const std::string& path) override { return probeQuotaFs(path); }
  Result<TagStats> tag(const std::string& root, const std::string& upper, uint32_t id) override {
    if (root.empty()) return tagTree(upper, id);
    return tagSnapshot(root, upper, id);
  }
  Status setLimit(const QuotaFs& fs, uint32_t id, uint64_t hard) override { return setProjectLimit(fs, id, hard); }
  Result<ProjectUsage> readOne(const QuotaFs& fs, uint32_t id) override { return readProject(fs, id); }
  Result<std::map<uint32_t, ProjectUsage>> readAll(const QuotaFs& fs) override { return readProjects(fs); }
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

std::string condition(const std::string& kind, const std::string& owner) { return kCondPrefix + kind + ":" + owner; }

// Store writes whose failure only costs a figure or a repeated announcement.
void logFailed(const Status& st) {
  if (!st) LOG_WARN(kSub, "%s", st.error().message.c_str());
}

}  // namespace

std::unique_ptr<CtrdKernel> realCtrdKernel() { return std::make_unique<RealKernel>(); }

std::string snapshotRootOf(const std::string& upper) {
  const std::string tail = "/fs";
  if (upper.size() <= tail.size() || upper.compare(upper.size() - tail.size(), tail.size(), tail) != 0) return "";
  const std::string root = upper.substr(0, upper.size() - tail.size());
  // .../io.containerd.snapshotter.v1.overlayfs/snapshots/<n>
  const auto slash = root.find_last_of('/');
  if (slash == std::string::npos) return "";
  const std::string parent = root.substr(0, slash);
  if (parent.size() < 10 || parent.compare(parent.size() - 10, 10, "/snapshots") != 0) return "";
  return root;
}

CtrdQuotas::CtrdQuotas(Store& store, std::unique_ptr<CtrdKernel> kernel, Options opt)
    : store_(store), kernel_(std::move(kernel)), opt_(std::move(opt)) {
  loadConditions();
}

CtrdQuotas::~CtrdQuotas() { stop(); }

void CtrdQuotas::loadConditions() {
  auto c = store_.eventLog().conditions();
  if (!c) {
    LOG_WARN(kSub, "announced limits not read (each may be announced once more): %s", c.error().message.c_str());
    return;
  }
  for (const auto& s : (*c)[0])
    if (s.rfind(kCondPrefix, 0) == 0) announced_.insert(s);
}

Result<QuotaFs> CtrdQuotas::fsFor(const std::string& upper) {
  struct stat st {};
  if (stat(upper.c_str(), &st) != 0) return osError(errno, std::string(kSub) + ": " + upper);
  auto it = fs_.find(uint64_t(st.st_dev));
  if (it != fs_.end()) return it->second;
  auto fs = kernel_->probe(upper);
  if (!fs) return fs.error();
  fs_[uint64_t(st.st_dev)] = *fs;
  if (!fs->usable()) LOG_WARN(kSub, "no quotas for containers on %s", fs->describe().c_str());
  return *fs;
}

Result<uint32_t> CtrdQuotas::allocate(const QuotaFs& fs, const CtrdPlan& plan) {
  bool fresh = false;
  // An id is only taken when the kernel charges nothing to it: another
  // tool's project (or a snapshot containerd has not removed yet) keeps it.
  auto usable = [&](uint32_t id) {
    auto u = kernel_->readOne(fs, id);
    fresh = u && u->bytes == 0 && u->inodes == 0;
    return fresh;
  };
  auto rec = store_.projectIds().project(plan.kind, plan.owner, opt_.id_min, opt_.id_max, unixNow(), usable);
  if (!rec) return rec.error();
  if (fresh) {
    stats_.ids_allocated++;
    LOG_INFO(kSub, "project %u for %s %s", rec->id, plan.kind.c_str(), plan.owner.c_str());
  }
  if (plan.kind == kCtrdKind)  // the row says which limit the container asked for, for the API after a restart
    logFailed(store_.projectIds().setProjectLimit(plan.kind, plan.owner, plan.limit_bytes));
  return rec->id;
}

Status CtrdQuotas::applyLimit(const QuotaFs& fs, uint32_t id, uint64_t bytes) {
  auto it = applied_.find(id);
  if (it != applied_.end() && it->second == bytes) return {};
  if (auto st = kernel_->setLimit(fs, id, bytes); !st) return st;
  applied_[id] = bytes;
  return {};
}

void CtrdQuotas::onRootfs(const std::string& ns, const std::string& id,
                          const std::map<std::string, std::string>& labels, const std::string& upper,
                          int64_t created_ns) {
  const auto t0 = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> l(mu_);
  if (upper.empty()) {
    stats_.unresolved++;  // the watch said why (upper_error)
    return;
  }
  const CtrdPlan plan = planCtrd(opt_.cfg, ns, id, labels);
  if (!plan.label_error.empty())
    LOG_WARN(kSub, "%s/%s: %s; the default applies", ns.c_str(), id.c_str(), plan.label_error.c_str());
  auto fs = fsFor(upper);
  if (!fs || !fs->usable()) {
    if (!fs) LOG_WARN(kSub, "%s/%s: %s", ns.c_str(), id.c_str(), fs.error().message.c_str());
    stats_.degraded++;
    return;
  }
  auto pid = allocate(*fs, plan);
  if (!pid) {
    stats_.tag_errors++;
    LOG_WARN(kSub, "%s/%s untagged: %s", ns.c_str(), id.c_str(), pid.error().message.c_str());
    return;
  }
  // The limit first: the tag makes the snapshot's bytes count, the limit makes them stop.
  Status lim = applyLimit(*fs, *pid, plan.limit_bytes);
  auto tagged = kernel_->tag(snapshotRootOf(upper), upper, *pid);
  if (!lim || !tagged || tagged->failed > 0) {
    stats_.tag_errors++;
    LOG_WARN(kSub, "%s/%s project %u: %s", ns.c_str(), id.c_str(), *pid,
             !lim      ? lim.error().message.c_str()
             : !tagged ? tagged.error().message.c_str()
                       : tagged->error.c_str());
  }
  const std::string key = ns + "/" + id;
  auto old = members_.find(key);
  const uint64_t seen = old != members_.end() ? old->second.seen : ++seen_;
  members_[key] = Member{plan.kind, plan.owner, plan.tenant, upper, *pid, plan.limit_bytes, fs->dev, created_ns, seen};
  stats_.tagged++;
  tag_ms_.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  if (tag_ms_.size() > kTagSamples) tag_ms_.pop_front();
}

bool CtrdQuotas::tenantHeld(const std::string& tenant) const {
  return std::any_of(members_.begin(), members_.end(), [&](const auto& m) { return m.second.tenant == tenant; });
}

// Limit cleared first, so the id is clean for whoever gets it next.
void CtrdQuotas::release(const std::string& kind, const std::string& owner, uint32_t id, const QuotaFs* fs) {
  for (const auto& [dev, f] : fs_) {
    if (fs && f.dev != fs->dev) continue;
    if (!f.usable()) continue;
    if (auto st = kernel_->setLimit(f, id, 0); !st) LOG_WARN(kSub, "project %u: %s", id, st.error().message.c_str());
  }
  applied_.erase(id);
  used_.erase(id);
  if (auto st = store_.projectIds().releaseProject(kind, owner); !st) {
    stats_.tag_errors++;
    LOG_WARN(kSub, "project %u of %s %s: %s", id, kind.c_str(), owner.c_str(), st.error().message.c_str());
    return;
  }
  const std::string cond = condition(kind, owner);
  if (announced_.erase(cond)) logFailed(store_.eventLog().clearCondition(0, cond));
  stats_.ids_released++;
  LOG_INFO(kSub, "project %u of %s %s released", id, kind.c_str(), owner.c_str());
}

void CtrdQuotas::onContainerDelete(const std::string& ns, const std::string& id) {
  std::lock_guard<std::mutex> l(mu_);
  const std::string key = ns + "/" + id;
  auto it = members_.find(key);
  if (it == members_.end()) {
    // Created and deleted without a task, or before the agent saw it: its row, if any.
    auto rows = store_.projectIds().projects();
    if (rows)
      for (const auto& p : *rows)
        if (p.owner_kind == kCtrdKind && p.owner == key) release(p.owner_kind, p.owner, p.id, nullptr);
    return;
  }
  const Member m = it->second;
  members_.erase(it);
  const QuotaFs* fs = nullptr;
  for (const auto& [dev, f] : fs_)
    if (f.dev == m.dev) fs = &f;
  if (m.kind == kCtrdKind || !tenantHeld(m.tenant)) release(m.kind, m.owner, m.project, fs);
}

void CtrdQuotas::onReconcileEnd(const std::string& ns, const std::vector<CtrdContainer>& live) {
  std::set<std::string> listed;  // "<ns>/<id>" of every namespace
  for (const auto& c : live) listed.insert(c.ns + "/" + c.id);
  // Containers with a snapshot the watch holds but announced no rootfs
  // for (no task now): their rows stay, their tags are in place already.
  for (const auto& c : live)
    if (c.ns == ns && !c.upper_dir.empty() && c.task_state == DQ_CTRD_STATE_NONE) {
      bool known;
      {
        std::lock_guard<std::mutex> l(mu_);
        known = members_.count(c.ns + "/" + c.id) > 0;
      }
      if (!known) onRootfs(c.ns, c.id, c.labels, c.upper_dir, c.created_ns);
    }
  std::lock_guard<std::mutex> l(mu_);
  reconciled_.insert(ns);
  for (auto it = members_.begin(); it != members_.end();)
    it = it->first.rfind(ns + "/", 0) == 0 && !listed.count(it->first) ? members_.erase(it) : std::next(it);
  const bool all = std::all_of(opt_.namespaces.begin(), opt_.namespaces.end(),
                               [&](const std::string& n) { return reconciled_.count(n) > 0; });
  auto rows = store_.projectIds().projects();
  if (!rows) return;
  for (const auto& p : *rows) {
    const bool gone_container = p.owner_kind == kCtrdKind && p.owner.rfind(ns + "/", 0) == 0 && !listed.count(p.owner);
    const bool gone_tenant = all && p.owner_kind == kCtrdTenantKind && !tenantHeld(p.owner);
    if (!gone_container && !gone_tenant) continue;
    release(p.owner_kind, p.owner, p.id, nullptr);
    stats_.reconcile_released++;
  }
}

CtrdHooks CtrdQuotas::hooks(const ContainerdWatch& watch) {
  return CtrdHooks{
      .on_rootfs = [this](const std::string& ns, const std::string& id,
                          const std::map<std::string, std::string>& labels, const std::string& upper,
                          int64_t created_ns) { onRootfs(ns, id, labels, upper, created_ns); },
      .on_container_delete = [this](const std::string& ns, const std::string& id) { onContainerDelete(ns, id); },
      .on_reconcile_end = [this, &watch](const std::string& ns) { onReconcileEnd(ns, watch.containers()); },
  };
}

void CtrdQuotas::announce(const std::string& kind, const std::string& owner, const std::string& what, uint32_t id,
                          uint64_t used, uint64_t limit) {
  const std::string cond = condition(kind, owner);
  if (!limitReached(used, limit)) {
    if (limitCleared(used, limit) && announced_.erase(cond)) logFailed(store_.eventLog().clearCondition(0, cond));
    return;
  }
  if (announced_.count(cond)) return;
  Event e;
  e.type = kLimitEvent;
  e.uid = 0;
  const bool tenant = kind == kCtrdTenantKind;
  if (!tenant) e.container_id = owner.substr(owner.find('/') + 1);
  e.detail = {
      {"scope", tenant ? "tenant" : "container"}, {"project_id", id},  {"used_bytes", used}, {"limit_bytes", limit},
      {tenant ? "tenant" : "container", owner},   {"containers", what}};
  e.created_at = unixNow();
  // Kept in the agent's event log (GET /api/v1/events) only: the master knows docker_* types alone.
  auto r = store_.eventLog().addEvent(e, EventRoute{}, {cond});
  if (!r) {
    LOG_WARN(kSub, "%s not recorded: %s", kLimitEvent, r.error().message.c_str());
    return;
  }
  announced_.insert(cond);
  if (!*r) return;  // announced before a restart
  stats_.limit_events++;
  LOG_NOTICE(kSub, "%s %s reached its limit: %llu of %llu bytes", tenant ? "tenant" : "container", owner.c_str(),
             (unsigned long long)used, (unsigned long long)limit);
}

Status CtrdQuotas::sync() {
  std::vector<Victim> victims;
  Status first;
  {
    std::lock_guard<std::mutex> l(mu_);
    first = readUsage();
    victims = tenantVictims();
  }
  // Outside the lock: a removal is a few containerd calls, and its
  // /containers/delete comes back through onContainerDelete.
  removeVictims(victims);
  return first;
}

// One quota read per filesystem, then the limit events. mu_ held.
Status CtrdQuotas::readUsage() {
  Status first;
  std::map<uint32_t, uint64_t> used;
  for (const auto& [dev, fs] : fs_) {
    if (!fs.usable()) continue;
    auto all = kernel_->readAll(fs);  // one pass: every container and tenant on it
    if (!all) {
      if (first) first = all.error();
      continue;
    }
    for (const auto& m : members_)
      if (m.second.dev == fs.dev) {
        auto u = all->find(m.second.project);
        used[m.second.project] = u == all->end() ? 0 : u->second.bytes;
      }
  }
  used_ = std::move(used);
  std::map<uint32_t, std::pair<const Member*, std::string>> projects;  // id -> a member, who
  for (const auto& [key, m] : members_) {
    auto& p = projects[m.project];
    if (!p.first) p.first = &m;
    p.second += (p.second.empty() ? "" : ",") + key;
  }
  for (const auto& [id, p] : projects) announce(p.first->kind, p.first->owner, p.second, id, used_[id], p.first->limit);
  stats_.syncs++;
  last_sync_ = unixNow();
  return first;
}

// With tenant_remove_newest: for each tenant at its limit, its newest
// container (containerd's CreatedAt, else the order the agent first tagged
// them). One per tenant, then none for three sync intervals: the removed
// snapshot's blocks must leave the project (containerd's GC) before the next
// usage read can say whether the tenant is still full. mu_ held.
std::vector<CtrdQuotas::Victim> CtrdQuotas::tenantVictims() {
  std::vector<Victim> out;
  if (!opt_.tenant_remove_newest || !opt_.remove) return out;
  const double now = unixNow();
  const double cooldown = 3.0 * std::chrono::duration<double>(opt_.interval).count();
  std::map<std::string, const std::pair<const std::string, Member>*> newest;  // tenant -> member
  for (const auto& entry : members_) {
    const Member& m = entry.second;
    if (m.kind != kCtrdTenantKind || !limitReached(used_[m.project], m.limit)) continue;
    auto r = removed_at_.find(m.tenant);
    if (r != removed_at_.end() && now - r->second < cooldown) continue;
    auto& n = newest[m.tenant];
    if (!n || std::make_pair(m.created_ns, m.seen) > std::make_pair(n->second.created_ns, n->second.seen)) n = &entry;
  }
  for (const auto& [tenant, entry] : newest) {
    const std::string& key = entry->first;
    const auto slash = key.find('/');
    out.emplace_back(key.substr(0, slash), key.substr(slash + 1));
    removed_at_[tenant] = now;
  }
  return out;
}

void CtrdQuotas::removeVictims(const std::vector<Victim>& victims) {
  for (const auto& [ns, id] : victims) {
    const std::string key = ns + "/" + id;
    Member m;
    uint64_t used = 0;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = members_.find(key);
      if (it == members_.end()) continue;  // deleted meanwhile
      m = it->second;
      used = used_[m.project];
    }
    LOG_NOTICE(kSub, "tenant %s at its limit (%llu of %llu bytes): removing its newest container %s", m.tenant.c_str(),
               (unsigned long long)used, (unsigned long long)m.limit, key.c_str());
    const Status st = opt_.remove(ns, id);
    std::lock_guard<std::mutex> l(mu_);
    if (!st) {
      stats_.tenant_removal_errors++;
      removal_error_ = "removing " + key + " (newest of full tenant " + m.tenant + "): " + st.error().message;
      LOG_WARN(kSub, "%s", removal_error_.c_str());
      continue;
    }
    stats_.tenant_removals++;
    removal_error_.clear();
    Event e;
    e.type = kRemovedEvent;
    e.uid = 0;
    e.container_id = id;
    e.detail = {{"tenant", m.tenant}, {"container", key},       {"project_id", m.project},
                {"used_bytes", used}, {"limit_bytes", m.limit}, {"reason", "newest container of a full tenant"}};
    e.created_at = unixNow();
    if (auto r = store_.eventLog().addEvent(e, EventRoute{}); !r)
      LOG_WARN(kSub, "%s not recorded: %s", kRemovedEvent, r.error().message.c_str());
  }
}

void CtrdQuotas::run() {
  std::unique_lock<std::mutex> l(run_mu_);
  while (!stop_) {
    l.unlock();
    if (auto st = sync(); !st) LOG_WARN(kSub, "usage read: %s", st.error().message.c_str());
    l.lock();
    cv_.wait_for(l, opt_.interval, [this] { return stop_; });
  }
}

void CtrdQuotas::start() {
  {
    std::lock_guard<std::mutex> l(run_mu_);
    stop_ = false;
  }
  worker_.start(
      "dq-ctrd-quota", [this] { run(); },
      [this] {
        std::lock_guard<std::mutex> l(run_mu_);
        stop_ = true;
        cv_.notify_all();
      });
}

void CtrdQuotas::stop() { worker_.stop(); }

nlohmann::json CtrdQuotas::containerFigures(const std::string& ns, const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = members_.find(ns + "/" + id);
  if (it == members_.end())
    return {{"project_id", nullptr}, {"limit_bytes", nullptr}, {"used_bytes", nullptr}, {"tenant", nullptr}};
  const Member& m = it->second;
  auto u = used_.find(m.project);
  return {{"project_id", m.project},
          {"limit_bytes", m.limit},
          {"used_bytes", u == used_.end() ? nlohmann::json(nullptr) : nlohmann::json(u->second)},
          {"tenant", m.tenant.empty() ? nlohmann::json(nullptr) : nlohmann::json(m.tenant)},
          // a tenant's project: the bytes are the whole tenant's
          {"shared", !m.tenant.empty()}};
}

nlohmann::json CtrdQuotas::tenants() const {
  std::lock_guard<std::mutex> l(mu_);
  std::map<std::string, nlohmann::json> out;
  for (const auto& [key, m] : members_) {
    if (m.tenant.empty()) continue;
    auto& t = out[m.tenant];
    if (t.is_null()) {
      auto u = used_.find(m.project);
      t = {{"tenant", m.tenant},
           {"project_id", m.project},
           {"limit_bytes", m.limit},
           {"used_bytes", u == used_.end() ? 0 : u->second},
           {"containers", nlohmann::json::array()}};
    }
    t["containers"].push_back(key);
  }
  nlohmann::json arr = nlohmann::json::array();
  for (auto& [k, v] : out) arr.push_back(std::move(v));
  return arr;
}

CtrdQuotaStats CtrdQuotas::stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

Health CtrdQuotas::health() const {
  std::lock_guard<std::mutex> l(mu_);
  Health h;
  nlohmann::json fss = nlohmann::json::array();
  for (const auto& [dev, fs] : fs_) {
    fss.push_back({{"filesystem", fs.describe()}, {"usable", fs.usable()}});
    if (!fs.usable()) h.degraded.push_back("containerd quotas: " + fs.describe());
  }
  if (!removal_error_.empty()) h.degraded.push_back("containerd quotas: " + removal_error_);
  const std::vector<double> lat(tag_ms_.begin(), tag_ms_.end());
  h.report = {{"filesystems", fss},
              {"members", members_.size()},
              {"last_sync", last_sync_},
              {"counters",
               {{"tagged", stats_.tagged},
                {"tag_errors", stats_.tag_errors},
                {"unresolved", stats_.unresolved},
                {"degraded", stats_.degraded},
                {"ids_allocated", stats_.ids_allocated},
                {"ids_released", stats_.ids_released},
                {"reconcile_released", stats_.reconcile_released},
                {"limit_events", stats_.limit_events},
                {"syncs", stats_.syncs},
                {"tenant_removals", stats_.tenant_removals},
                {"tenant_removal_errors", stats_.tenant_removal_errors}}},
              {"tenant_remove_newest", opt_.tenant_remove_newest},
              // the hook's own work: allocate, limit, tag
              {"tag_ms", {{"samples", lat.size()}, {"p50", percentile(lat, 0.5)}, {"p99", percentile(lat, 0.99)}}}};
  return h;
}

}  // namespace dockquota
