// SPDX-License-Identifier: Apache-2.0
// User and group quotas on ext2/3/4 and XFS filesystems through quotactl(2)
// (../shared/spec/qman-slave-devices.md §3): which mounts are devices
// (discoverBlockMounts, from /proc/self/mountinfo), and one QuotaDevice per
// device (BlockQuotaDevice).
//
// Reads are one Q_GETNEXTQUOTA pass per quota type (Linux 4.6+), so a refresh
// costs one syscall per id that has an entry, never one per passwd user (and
// never writes: Q_GETQUOTA of an unknown id makes ext4 create a zero entry).
// Kernels or filesystems without it fall back to Q_GETQUOTA per candidate.
// Calls go through quotactl_fd(2) on the mount point (5.14+: no device node
// needed, so an agent in a mount namespace without /dev works) and fall back
// to the device path.
#pragma once

#include <sys/types.h>

#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "agent/base/mountinfo.h"
#include "agent/quota/quota_device.h"

namespace dockquota {

// One filesystem with user and/or group quotas asked for (spec §3.1-3.2).
struct BlockMount {
  std::string source;  // the device's `name`: "/dev/sda1" (/dev/root resolved)
  dev_t dev = 0;
  std::vector<std::string> mount_points;  // every mount of it, table order (bind mounts too)
  std::string fstype;                     // of the first mount
  std::vector<std::string> opts;          // as /proc/self/mounts shows the first mount
  bool usrquota = false;                  // the exact option token, not whether quota is on
  bool grpquota = false;
};

// Which devices are served (config block_quota_include / _exclude): an entry
// matches a device's name or one of its mount points. Empty include = all.
struct BlockFilter {
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  bool wanted(const BlockMount& m) const;
};

// /proc/self/mounts' option list for one mountinfo line: the mount's rw/ro,
// the superblock flags (sync, dirsync, mand, lazytime), the mount's own
// flags, then the filesystem's options (the kernel's show_vfsmnt order).
std::vector<std::string> mountsOptions(const MountEntry& e);

// ext2/3/4 and XFS mounts whose options hold usrquota or grpquota, one per
// source in table order, filtered. `dev_name(dev)` names a /dev/root source
// (default: /sys/dev/block/<maj>:<min>/uevent DEVNAME).
std::vector<BlockMount> discoverBlockMounts(const std::vector<MountEntry>& table, const BlockFilter& filter,
                                            const std::function<std::string(dev_t)>& dev_name = {});

// Mounts that ask for quotas the discovery does not serve, for /healthz:
// "usrquota on /mnt (btrfs): not ext4 or XFS". Empty when none.
std::vector<std::string> unservedQuotaMounts(const std::vector<MountEntry>& table);

// The quota format name of Q_GETFMT's answer ("vfsold", "vfsv0", "vfsv1"), or "" for others.
std::string quotaFormatName(uint32_t fmt);

// The ids a per-id fallback read asks about (managed passwd users or groups).
using CandidateIds = std::function<std::vector<uint32_t>(QuotaType)>;

class BlockQuotaDevice : public QuotaDevice {
 public:
  BlockQuotaDevice(BlockMount mount, CandidateIds candidates);

  const std::string& name() const override { return mount_.source; }
  const char* kind() const override { return "block"; }
  bool singleLimit() const override { return false; }
  Result<DeviceSnapshot> read() override;
  Result<std::optional<QuotaFigures>> readUser(uint32_t uid) override;
  Status setUserLimits(uint32_t uid, const LimitsUpdate& u) override;
  Health health() const override;

  const BlockMount& mount() const { return mount_; }
  // How the last read went: syscalls made, and whether it fell back per id.
  struct ReadStats {
    uint64_t calls = 0;
    bool per_id = false;
  };
  ReadStats lastRead() const;

 private:
  class Handle;
  QuotaTable readTable(Handle& h, QuotaType type, bool& per_id, std::string& problem);

  BlockMount mount_;
  CandidateIds candidates_;
  mutable std::mutex mu_;  // guards the fields below (health and stats of the last read)
  std::vector<std::string> problems_;
  ReadStats stats_;
};

}  // namespace dockquota
