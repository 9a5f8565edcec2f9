// SPDX-License-Identifier: Apache-2.0
// What the kernel's project quotas say each user (or container) uses: made
// by ProjectQuotas, read by the usage accountant, where it outranks Docker's
// figures. Its own header so usage/ can read it without quota/ depending on
// usage/.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace dockquota {

// Figures the kernel keeps (project quotas: a quota read, exact and current)
// where the ProjectQuotas backend is on. They outrank Docker's figures.
struct KernelUsage {
  bool per_user = false;                       // users[] is each uid's whole usage (one project per uid)
  std::map<uint32_t, uint64_t> users;          // uid -> bytes of the uid's project
  std::map<std::string, uint64_t> containers;  // container id -> bytes of its own project (per-container mode)
  double read_at = 0;                          // unix seconds
};

}  // namespace dockquota
