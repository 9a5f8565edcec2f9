// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/quotas.h"

#include <algorithm>
#include <ctime>

#include <pwd.h>

namespace dockquota {

uint64_t defaultLimitKiB(uint64_t default_kib, uint64_t usage_bytes) {
  if (usage_bytes <= default_kib * 1024) return default_kib;
  const uint64_t want = satAdd(usage_bytes, 2 * kGiB);
  const uint64_t gib = want / kGiB + (want % kGiB ? 1 : 0);
  return std::min(gib * (kGiB / 1024), kMaxLimitKiB);
}

namespace {
uint64_t lookup(const std::map<uint32_t, uint64_t>& m, uint32_t uid) {
  auto it = m.find(uid);
  return it == m.end() ? 0 : it->second;
}
}  // namespace

BatchPlan planBatch(const std::vector<uint32_t>& eligible, const std::map<uint32_t, uint64_t>& limits,
                    const std::map<uint32_t, uint64_t>& usage_bytes, const BatchRequest& req) {
  BatchPlan plan;
  for (uint32_t uid : eligible) {
    if (!managedUid(uid)) continue;
    plan.total_users++;
    // qman compares block_current // 1024 with the new limit.
    const bool skip = (req.preserve_if_nonzero && lookup(limits, uid) != 0) ||
                      (req.preserve_if_usage_exceeds && lookup(usage_bytes, uid) / 1024 > req.block_hard_kib);
    if (skip) {
      plan.skipped_users++;
    } else {
      plan.set[uid] = req.block_hard_kib;
    }
  }
  return plan;
}

std::map<uint32_t, uint64_t> planDefaults(const std::vector<uint32_t>& candidates,
                                          const std::map<uint32_t, uint64_t>& limits,
                                          const std::map<uint32_t, uint64_t>& usage_bytes, uint64_t default_kib) {
  std::map<uint32_t, uint64_t> out;
  if (default_kib == 0) return out;
  for (uint32_t uid : candidates) {
    if (!managedUid(uid) || lookup(limits, uid) != 0) continue;
    out[uid] = defaultLimitKiB(default_kib, lookup(usage_bytes, uid));
  }
  return out;
}

Result<std::unique_ptr<QuotaBook>> QuotaBook::load(Store& store) {
  auto limits = store.limits().userLimits();
  if (!limits) return limits.error().context("quotas: load limits");
  return std::unique_ptr<QuotaBook>(new QuotaBook(store, std::move(*limits)));
}

QuotaBook::QuotaBook(Store& store, Limits limits)
    : store_(store), limits_(std::make_shared<const Limits>(std::move(limits))) {}

std::shared_ptr<const QuotaBook::Limits> QuotaBook::limits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return limits_;
}

uint64_t QuotaBook::limitKiB(uint32_t uid) const { return lookup(*limits(), uid); }

Status QuotaBook::setLimit(uint32_t uid, uint64_t kib) { return setLimits({{uid, kib}}); }

Status QuotaBook::setLimits(const Limits& kib_by_uid) {
  auto n = write(kib_by_uid, false);
  if (!n) return n.error();
  return {};
}

Result<size_t> QuotaBook::setLimitsWhereUnset(const Limits& kib_by_uid) { return write(kib_by_uid, true); }

Result<size_t> QuotaBook::write(const Limits& wanted, bool only_unset) {
  for (const auto& [uid, kib] : wanted) {
    if (kib > kMaxLimitKiB)
      return Error{EINVAL, "quotas: limit " + std::to_string(kib) + " KiB for uid " + std::to_string(uid) +
                               " exceeds the maximum " + std::to_string(kMaxLimitKiB)};
  }
  std::lock_guard<std::mutex> lock(mu_);
  // Decided under the lock: a limit set since the caller planned (a PUT racing
  // the defaults job) is never overwritten by a default.
  Limits kib_by_uid;
  for (const auto& [uid, kib] : wanted)
    if (!only_unset || !limits_->count(uid)) kib_by_uid[uid] = kib;
  if (kib_by_uid.empty()) return size_t(0);
  if (auto s = store_.limits().setUserLimits(kib_by_uid, static_cast<double>(time(nullptr))); !s) return s.error();
  auto next = std::make_shared<Limits>(*limits_);
  for (const auto& [uid, kib] : kib_by_uid) {
    if (kib == 0) {
      next->erase(uid);
    } else {
      (*next)[uid] = kib;
    }
  }
  limits_ = std::move(next);
  if (on_change_) on_change_();
  return kib_by_uid.size();
}

Result<std::optional<DeviceDefault>> QuotaBook::deviceDefault(const std::string& device) const {
  return store_.limits().deviceDefault(device);
}

Status QuotaBook::setDeviceDefault(const DeviceDefault& d) {
  std::lock_guard<std::mutex> lock(mu_);
  return store_.limits().setDeviceDefault(d, static_cast<double>(time(nullptr)));
}

// --- users -----------------------------------------------------------------------

std::vector<PasswdUser> readPasswd() {
  // getpwent is not reentrant across threads: one enumeration at a time.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::vector<PasswdUser> out;
  setpwent();
  passwd pw, *res = nullptr;
  char buf[4096];
  while (getpwent_r(&pw, buf, sizeof buf, &res) == 0 && res) out.push_back({res->pw_uid, res->pw_name});
  endpwent();
  return out;
}

UserDirectory::UserDirectory(PasswdFn passwd, std::chrono::seconds ttl) : passwd_(std::move(passwd)), ttl_(ttl) {}

void UserDirectory::refreshLocked() {
  const auto now = std::chrono::steady_clock::now();
  if (loaded_once_ && now - loaded_ < ttl_) return;
  by_uid_.clear();
  by_name_.clear();
  for (const auto& u : passwd_()) {
    by_uid_.emplace(u.uid, u.name);  // the first entry of a uid names it, as getpwuid does
    by_name_.emplace(u.name, u.uid);
  }
  loaded_ = now;
  loaded_once_ = true;
}

std::string UserDirectory::name(uint32_t uid) {
  std::lock_guard<std::mutex> lock(mu_);
  refreshLocked();
  auto it = by_uid_.find(uid);
  return it != by_uid_.end() ? it->second : "user_" + std::to_string(uid);
}

bool UserDirectory::known(uint32_t uid) {
  std::lock_guard<std::mutex> lock(mu_);
  refreshLocked();
  return by_uid_.count(uid) > 0;
}

std::optional<uint32_t> UserDirectory::uid(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  refreshLocked();
  if (auto it = by_name_.find(name); it != by_name_.end()) return it->second;
  // The fallback name qman shows for a uid without a passwd entry.
  static const std::string kPrefix = "user_";
  if (name.size() > kPrefix.size() && name.size() <= kPrefix.size() + 10 &&
      name.compare(0, kPrefix.size(), kPrefix) == 0 &&
      name.find_first_not_of("0123456789", kPrefix.size()) == std::string::npos &&
      (name.size() == kPrefix.size() + 1 || name[kPrefix.size()] != '0')) {
    const uint64_t v = std::stoull(name.substr(kPrefix.size()));
    if (v <= UINT32_MAX && !by_uid_.count(static_cast<uint32_t>(v))) return static_cast<uint32_t>(v);
  }
  return std::nullopt;
}

std::optional<uint32_t> UserDirectory::resolve(const std::string& ref) {
  if (!ref.empty() && ref.size() <= 10 && ref.find_first_not_of("0123456789") == std::string::npos) {
    const uint64_t v = std::stoull(ref);
    if (v <= UINT32_MAX) return static_cast<uint32_t>(v);
  }
  return uid(ref);
}

std::vector<PasswdUser> UserDirectory::managed() {
  std::lock_guard<std::mutex> lock(mu_);
  refreshLocked();
  std::vector<PasswdUser> out;
  for (const auto& [uid, name] : by_uid_)
    if (managedUid(uid)) out.push_back({uid, name});
  return out;
}

Result<size_t> applyDefaults(QuotaBook& book, const std::vector<uint32_t>& candidates,
                             const std::map<uint32_t, uint64_t>& usage_bytes) {
  auto d = book.deviceDefault(kDockerDevice);
  if (!d) return d.error();
  if (!*d || (*d)->block_hard_kib == 0) return size_t(0);
  auto plan = planDefaults(candidates, *book.limits(), usage_bytes, (*d)->block_hard_kib);
  return book.setLimitsWhereUnset(plan);
}

}  // namespace dockquota
