// SPDX-License-Identifier: Apache-2.0
#include "app/device_wiring.h"

#include "agent/base/log.h"
#include "agent/base/mountinfo.h"
#include "agent/quota/block_quota.h"
#include "api/qman_devices.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "block-quota";

// Managed passwd users or groups, for a filesystem without Q_GETNEXTQUOTA.
std::vector<uint32_t> candidateIds(QuotaType type) {
  const Candidates c = readCandidates();
  std::vector<uint32_t> out;
  for (const auto& u : type == QuotaType::kUser ? c.users : c.groups) out.push_back(u.uid);
  return out;
}

void addBlockDevices(const Config& config, DeviceServices& s) {
  auto table = readMountinfo();
  if (!table) {
    s.degraded.push_back("block quotas: " + table.error().message);
    return;
  }
  const BlockFilter filter{config.block_quota_include, config.block_quota_exclude};
  const auto mounts = discoverBlockMounts(*table, filter);
  for (const auto& m : mounts) s.devices->add(std::make_unique<BlockQuotaDevice>(m, candidateIds));
  for (const auto& why : unservedQuotaMounts(*table)) s.degraded.push_back("block quotas: " + why);
  if (mounts.empty() && config.block_quotas == "on")
    s.degraded.push_back("block quotas: block_quotas is \"on\" but no ext4 or XFS mount has usrquota or grpquota" +
                         std::string(filter.include.empty() && filter.exclude.empty() ? "" : " (after include/exclude)"));
  if (mounts.empty()) LOG_INFO(kSub, "no ext4 or XFS mount with usrquota or grpquota");
}

}  // namespace

Health DeviceServices::health() const {
  Health h = devices ? devices->health() : Health{};
  for (const auto& r : degraded) h.degraded.push_back(r);
  return h;
}

DeviceServices openQuotaDevices(const Config& config, std::function<void()> on_refresh) {
  DeviceServices s;
  s.devices = std::make_unique<QuotaDevices>(QuotaDevices::Options{
      .interval = std::chrono::seconds(config.device_refresh_interval_s), .on_refresh = std::move(on_refresh)});
  if (config.block_quotas != "off") addBlockDevices(config, s);
  for (const auto& r : s.degraded) LOG_WARN(kSub, "DEGRADED: %s", r.c_str());
  return s;
}

}  // namespace dockquota
