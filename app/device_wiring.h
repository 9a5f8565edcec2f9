// SPDX-License-Identifier: Apache-2.0
// The non-Docker quota devices the config asks for, built into one
// QuotaDevices: block devices (block_quotas, block_quota_include/_exclude)
// found in /proc/self/mountinfo. QuotaServices owns the result, starts and
// stops it with the rest of the quota services.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/base/health.h"
#include "agent/quota/quota_devices.h"
#include "agent/quota/zfs_quota.h"
#include "app/config.h"

namespace dockquota {

struct DeviceServices {
  std::unique_ptr<QuotaDevices> devices;
  // Reasons found while building (block_quotas "on" with no device, mounts
  // asking for quotas on a filesystem we do not serve): degraded for good.
  std::vector<std::string> degraded;
  std::unique_ptr<ZfsBackend> zfs;  // config zfs not off: discovery and the CLI's counters
  Health health() const;
};

// `on_refresh`: after each background refresh (the notification scan).
DeviceServices openQuotaDevices(const Config& config, std::function<void()> on_refresh);

}  // namespace dockquota
