// SPDX-License-Identifier: Apache-2.0
#include "app/device_wiring.h"

#include "agent/base/log.h"
#include "agent/base/mountinfo.h"
#include "agent/quota/block_quota.h"
#include "agent/quota/zfs_quota.h"
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
    s.degraded.push_back(
        "block quotas: block_quotas is \"on\" but no ext4 or XFS mount has usrquota or grpquota" +
        std::string(filter.include.empty() && filter.exclude.empty() ? "" : " (after include/exclude)"));
  if (mounts.empty()) LOG_INFO(kSub, "no ext4 or XFS mount with usrquota or grpquota");
}

// ZFS datasets (spec §4): discovered once here (or as configured), each a
// device of the registry; the backend stays for its discovery health and
// the CLI's counters.
void addZfsDevices(const Config& config, DeviceServices& s) {
  const std::string why = zfsUnavailable(config.zfs_binary);
  if (!why.empty() && config.zfs == "auto") {
    LOG_INFO("zfs", "not used (%s)", why.c_str());
    return;
  }
  ZfsSelection sel{config.zfs_datasets.empty(), config.zfs_datasets, config.zfs_exclude};
  if (!why.empty()) {
    LOG_ERROR("zfs", "configured on, but %s", why.c_str());
    if (!sel.discover) s.degraded.push_back("zfs: " + why);
  }
  auto cli = std::make_shared<ZfsCli>(config.zfs_binary, realZfsExec(config.zfs_binary));
  s.zfs = std::make_unique<ZfsBackend>(std::move(sel), cli);
  std::string names;
  for (const auto& n : s.zfs->names()) {
    s.devices->add(std::make_unique<ZfsDataset>(n, cli));
    names += (names.empty() ? "" : ", ") + n;
  }
  LOG_INFO("zfs", "datasets: %s", names.empty() ? "none" : names.c_str());
}

}  // namespace

Health DeviceServices::health() const {
  Health h = devices ? devices->health() : Health{};
  if (zfs) {
    Health z = zfs->health();
    h.report["zfs"] = std::move(z.report);
    h.absorb(std::move(z));
  }
  for (const auto& r : degraded) h.degraded.push_back(r);
  return h;
}

DeviceServices openQuotaDevices(const Config& config, std::function<void()> on_refresh) {
  DeviceServices s;
  s.devices = std::make_unique<QuotaDevices>(QuotaDevices::Options{
      .interval = std::chrono::seconds(config.device_refresh_interval_s), .on_refresh = std::move(on_refresh)});
  if (config.block_quotas != "off") addBlockDevices(config, s);
  if (config.zfs != "off") addZfsDevices(config, s);
  for (const auto& r : s.degraded) LOG_WARN(kSub, "DEGRADED: %s", r.c_str());
  return s;
}

}  // namespace dockquota
