// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/disk_notices.h"

#include <algorithm>

#include "agent/base/log.h"
#include "agent/quota/quotas.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "disk-notices";
using json = nlohmann::json;

bool softOver(const QuotaFigures& f) {
  return (f.block_soft_kib != 0 && f.block_current > f.block_soft_kib * 1024) ||
         (f.inode_soft != 0 && f.inode_current > f.inode_soft);
}

bool hardReached(const QuotaFigures& f) {
  return (f.block_hard_kib != 0 && f.block_current >= f.block_hard_kib * 1024) ||
         (f.inode_hard != 0 && f.inode_current >= f.inode_hard);
}

}  // namespace

const char* toString(DiskStatus s) {
  switch (s) {
    case DiskStatus::kOk: return "ok";
    case DiskStatus::kInGrace: return "soft_over_in_grace";
    case DiskStatus::kGraceEnding: return "soft_over_grace_ending";
    case DiskStatus::kGraceExpired: return "soft_over_grace_expired";
    case DiskStatus::kHardOver: return "hard_over";
  }
  return "ok";
}

DiskStatus diskStatus(const QuotaFigures& f, const std::optional<QuotaInfo>& info, uint64_t now, uint64_t window_s) {
  if (hardReached(f)) return DiskStatus::kHardOver;
  if (!softOver(f)) return DiskStatus::kOk;
  uint64_t end = 0;  // the earliest non-zero grace end
  for (uint64_t t : {f.block_time, f.inode_time})
    if (t != 0) end = end == 0 ? t : std::min(end, t);
  if (end == 0 || end <= now) return DiskStatus::kGraceExpired;
  const uint64_t grace = info ? std::max(info->block_grace, info->inode_grace) : 0;
  const uint64_t w = grace == 0 ? window_s : std::min(window_s, grace);
  return end - now <= w ? DiskStatus::kGraceEnding : DiskStatus::kInGrace;
}

const char* diskEventType(DiskStatus from, DiskStatus to) {
  if (from == to) return nullptr;
  if (to == DiskStatus::kHardOver) return "disk_hard_limit_reached";
  if (to == DiskStatus::kOk) return "disk_back_to_ok";
  if (from == DiskStatus::kOk && (to == DiskStatus::kInGrace || to == DiskStatus::kGraceEnding))
    return "disk_soft_limit_exceeded";
  if (from == DiskStatus::kInGrace && to == DiskStatus::kGraceEnding) return "disk_soft_grace_ending";
  if ((from == DiskStatus::kInGrace || from == DiskStatus::kGraceEnding) && to == DiskStatus::kGraceExpired)
    return "disk_soft_grace_expired";
  return nullptr;  // ok -> expired, hard_over -> a soft state...: the spec announces none
}

json diskEventDetail(const std::string& device, const QuotaFigures& f, const std::optional<QuotaInfo>& info) {
  auto orNull = [](uint64_t t) { return t == 0 ? json(nullptr) : json(t); };
  return json{
      {"uid", f.id},
      {"device_name", device},
      {"block_current", f.block_current},
      {"block_soft_limit", f.block_soft_kib},
      {"block_hard_limit", f.block_hard_kib},
      {"inode_current", f.inode_current},
      {"inode_soft_limit", f.inode_soft},
      {"inode_hard_limit", f.inode_hard},
      {"block_time_limit", orNull(f.block_time)},
      {"inode_time_limit", orNull(f.inode_time)},
      {"user_quota_info",
       info ? json{{"block_grace", info->block_grace}, {"inode_grace", info->inode_grace}, {"flags", info->flags}}
            : json(nullptr)}};
}

DiskNotices::DiskNotices(Store& store, Options options) : store_(store), opt_(std::move(options)) {}

size_t DiskNotices::scan(const QuotaDevices::View& view, uint64_t now) {
  std::lock_guard<std::mutex> l(mu_);
  size_t recorded = 0;
  for (const auto& d : view.devices) {
    for (const auto& f : d->users.entries) {
      if (!managedUid(f.id)) continue;
      const DiskStatus to = diskStatus(f, d->users.info, now, opt_.window_s);
      auto key = std::make_pair(d->name, f.id);
      auto it = state_.find(key);
      const DiskStatus from = it == state_.end() ? DiskStatus::kOk : it->second;
      if (to == DiskStatus::kOk)
        state_.erase(key);
      else
        state_[key] = to;
      const char* type = diskEventType(from, to);
      if (!type) continue;
      Event e;
      e.type = type;
      e.uid = f.id;
      e.user = opt_.name_of ? opt_.name_of(f.id) : "user_" + std::to_string(f.id);
      e.detail = diskEventDetail(d->name, f, d->users.info);
      e.created_at = static_cast<double>(now);
      if (auto r = store_.eventLog().addEvent(e, opt_.route); !r) {
        LOG_WARN(kSub, "%s for uid %u on %s not recorded: %s", type, f.id, d->name.c_str(), r.error().message.c_str());
        continue;
      }
      LOG_INFO(kSub, "%s: uid %u (%s) on %s", type, f.id, e.user.c_str(), d->name.c_str());
      recorded++;
    }
  }
  if (recorded > 0 && opt_.on_events) opt_.on_events();
  return recorded;
}

}  // namespace dockquota
