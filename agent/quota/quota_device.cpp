// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/quota_device.h"

namespace dockquota {

namespace {
constexpr uint64_t kGiBKiB = uint64_t(1) << 20;  // 1 GiB in 1 KiB blocks

// ceil((usage + extra GiB) / 1 GiB) GiB, in KiB.
uint64_t roundedUpKiB(uint64_t usage_bytes, uint64_t extra_gib) {
  const uint64_t usage_kib = (usage_bytes + 1023) / 1024;
  return ((usage_kib + extra_gib * kGiBKiB + kGiBKiB - 1) / kGiBKiB) * kGiBKiB;
}
}  // namespace

LimitsUpdate defaultLimitsFor(uint64_t usage_bytes, uint64_t block_soft_kib, uint64_t block_hard_kib,
                              uint64_t inode_soft, uint64_t inode_hard, bool single) {
  // qman compares usage with the hard default, or the soft one when hard is 0.
  const uint64_t limit = block_hard_kib != 0 ? block_hard_kib : block_soft_kib;
  LimitsUpdate u{block_hard_kib, block_soft_kib, inode_hard, inode_soft};
  if (limit != 0 && usage_bytes >= limit * 1024) {
    u.block_soft_kib = roundedUpKiB(usage_bytes, 1);
    u.block_hard_kib = roundedUpKiB(usage_bytes, 2);
  }
  if (single) u = LimitsUpdate{u.block_hard_kib, u.block_hard_kib, uint64_t(0), uint64_t(0)};
  return u;
}

bool limitsEmpty(const QuotaFigures& f) {
  return f.block_hard_kib == 0 && f.block_soft_kib == 0 && f.inode_hard == 0 && f.inode_soft == 0;
}

}  // namespace dockquota
