// SPDX-License-Identifier: Apache-2.0
#include "agent/base/human_bytes.h"

#include <cmath>
#include <cstdio>
#include <iterator>

namespace dockquota {

std::string humanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " bytes";
  double v = static_cast<double>(bytes);
  size_t u = 0;
  while (v >= 1024 && u + 1 < std::size(kUnits)) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  // Truncated, not rounded: 99.97% of a GiB must not print as "100.0 GiB" next to a 100 GiB limit.
  if (v < 100)
    std::snprintf(buf, sizeof buf, "%.1f %s", std::floor(v * 10) / 10, kUnits[u]);
  else
    std::snprintf(buf, sizeof buf, "%.0f %s", std::floor(v), kUnits[u]);
  return buf;
}

}  // namespace dockquota
