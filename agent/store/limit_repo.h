// SPDX-License-Identifier: Apache-2.0
// The docker device's per-user limits and qman's per-device defaults (schema v2).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.h"
#include "agent/store/db.h"
#include "agent/store/records.h"

namespace dockquota {

class LimitRepo {
 public:
  explicit LimitRepo(Db& db) : db_(db) {}

  // Per-uid Docker limit in 1 KiB blocks. 0 removes the row (0 = no limit).
  Status setUserLimit(uint32_t uid, uint64_t block_hard_kib, double now);
  // Every stored (non-zero) limit, by uid.
  Result<std::map<uint32_t, uint64_t>> userLimits() const;
  // Several limits in one transaction (batch, default application).
  Status setUserLimits(const std::map<uint32_t, uint64_t>& kib_by_uid, double now);

  Status setDeviceDefault(const DeviceDefault& d, double now);
  Result<std::optional<DeviceDefault>> deviceDefault(const std::string& device) const;

 private:
  Db& db_;
};

}  // namespace dockquota
