#include "agent/quotas.h"

#include <algorithm>
#include <ctime>

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
  auto limits = store.userLimits();
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
  for (const auto& [uid, kib] : kib_by_uid) {
    if (kib > kMaxLimitKiB)
      return Error{EINVAL, "quotas: limit " + std::to_string(kib) + " KiB for uid " + std::to_string(uid) +
                               " exceeds the maximum " + std::to_string(kMaxLimitKiB)};
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (auto s = store_.setUserLimits(kib_by_uid, static_cast<double>(time(nullptr))); !s) return s;
  auto next = std::make_shared<Limits>(*limits_);
  for (const auto& [uid, kib] : kib_by_uid) {
    if (kib == 0) {
      next->erase(uid);
    } else {
      (*next)[uid] = kib;
    }
  }
  limits_ = std::move(next);
  return {};
}

Result<std::optional<DeviceDefault>> QuotaBook::deviceDefault(const std::string& device) const {
  return store_.deviceDefault(device);
}

Status QuotaBook::setDeviceDefault(const DeviceDefault& d) {
  std::lock_guard<std::mutex> lock(mu_);
  return store_.setDeviceDefault(d, static_cast<double>(time(nullptr)));
}

}  // namespace dockquota
