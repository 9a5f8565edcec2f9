// SPDX-License-Identifier: Apache-2.0
// The seam between the qman routes and every non-Docker quota backend: a
// block device read with quotactl(2) (block_quota.h) or a ZFS dataset read
// with the `zfs` CLI (zfs_*.h). A backend only reads and writes figures in
// the contract's units (../shared/spec/qman-slave-devices.md §3.3-3.4, §4.2);
// which users are listed, names, JSON and ordering are the registry's job
// (one rule for every backend, so a user is never listed twice).
//
// Threads: read() runs on the registry's refresh Worker, setLimits() and
// readOne() on HTTP threads; a backend must take both at once (quotactl is
// atomic per call; a CLI backend runs one process per call).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/base/health.h"
#include "agent/base/result.h"

namespace dockquota {

enum class QuotaType { kUser, kGroup };  // USRQUOTA / GRPQUOTA; ZFS has users only

// One id's figures. Units are the wire's (spec R§2): block limits in 1 KiB
// blocks, block_current in bytes allocated, inodes in counts, time limits
// in Unix seconds when grace ends (0 = none).
struct QuotaFigures {
  uint32_t id = 0;  // uid or gid
  uint64_t block_hard_kib = 0;
  uint64_t block_soft_kib = 0;
  uint64_t block_current = 0;
  uint64_t inode_hard = 0;
  uint64_t inode_soft = 0;
  uint64_t inode_current = 0;
  uint64_t block_time = 0;
  uint64_t inode_time = 0;
  bool operator==(const QuotaFigures&) const = default;
};

// Q_GETINFO's if_dqinfo: grace periods in seconds, DQF_* flags.
struct QuotaInfo {
  uint64_t block_grace = 0;
  uint64_t inode_grace = 0;
  uint32_t flags = 0;
  bool operator==(const QuotaInfo&) const = default;
};

// usage{} in bytes (spec §3.1 step 5 for block devices, §4.1 for ZFS).
struct DeviceUsage {
  uint64_t total = 0;
  uint64_t used = 0;
  uint64_t free = 0;
  double percent = 0.0;  // already rounded to one decimal
};

// How the registry turns a table into the listed entries (spec §3.4, §4.2).
enum class ListRule {
  kPasswdZeroFill,  // ext4: every passwd candidate; an id not in `entries` is a zero entry
  kPasswdPresent,   // XFS: passwd candidates found in `entries` only (no dquot = ENOENT)
  kAllIds,          // ZFS: every id in `entries` within the uid filter, passwd or not
};

// One quota type of one device, as last read.
struct QuotaTable {
  bool on = false;                    // the mount asks for it (usrquota/grpquota); else no fields at all
  std::optional<std::string> format;  // "vfsv0", "vfsv1", "zfs"; absent when unreadable (XFS: ESRCH)
  std::optional<QuotaInfo> info;      // absent when unreadable, and always for ZFS
  std::vector<QuotaFigures> entries;  // sorted by id, unique; every id the backend knows (one pass)
  bool active = true;                 // false: quota off in the kernel (ESRCH): listed empty, nobody zero-filled
};

// Everything one device reports; immutable once read (shared with readers).
struct DeviceSnapshot {
  std::string name;                       // the device= value: "/dev/sda1", "tank/home"
  std::vector<std::string> mount_points;  // table order
  std::string fstype;                     // "ext4", "xfs", "zfs"
  std::vector<std::string> opts;          // mount options split on ',' (ZFS: ["zfs"])
  DeviceUsage usage;
  QuotaTable users;
  QuotaTable groups;  // ZFS: on = false
  ListRule rule = ListRule::kPasswdZeroFill;
  bool drop_when_empty = false;  // ZFS: a dataset with no listed entry is not listed (§4.1)
};

// A PUT body: an absent field keeps its current value (spec §3.6, ours).
struct LimitsUpdate {
  std::optional<uint64_t> block_hard_kib;
  std::optional<uint64_t> block_soft_kib;
  std::optional<uint64_t> inode_hard;
  std::optional<uint64_t> inode_soft;
};

class QuotaDevice {
 public:
  virtual ~QuotaDevice() = default;

  // The device= value and the list's `name`; fixed for the object's life.
  virtual const std::string& name() const = 0;
  // "block" or "zfs": log prefixes, /metrics labels, /healthz.
  virtual const char* kind() const = 0;
  // Only a block hard limit (ZFS: soft = hard, no inodes); batch and defaults write just that.
  virtual bool singleLimit() const = 0;

  // Every figure in one pass (Q_GETNEXTQUOTA, `zfs userspace`). May block
  // for a while: called from the background refresh only. An error drops the
  // device from the list until the next good read (spec §2: log, not 500).
  virtual Result<DeviceSnapshot> read() = 0;

  // One uid now (after a write, for the PUT answer). nullopt: the backend
  // has no entry for it (XFS ENOENT, ZFS unknown uid) and it is not listed.
  virtual Result<std::optional<QuotaFigures>> readUser(uint32_t uid) = 0;

  // Writes a user's limits; fields absent in `u` keep their current value.
  // Limits only: grace periods and grace end times are never written.
  // Callers validate first (soft <= hard where both are set, ranges); a
  // backend refuses nothing it can store.
  virtual Status setUserLimits(uint32_t uid, const LimitsUpdate& u) = 0;

  // Its own degraded reasons (quota off on the mount, `zfs` missing...).
  virtual Health health() const = 0;
};

// The figures a default gives a user (spec §3.7, R§4.2): the default's four,
// or, when usage (bytes) has reached a non-zero default block limit, soft =
// ceil((usage + 1 GiB) / 1 GiB) GiB and hard = ceil((usage + 2 GiB) / 1 GiB) GiB
// (as KiB) with the default's inode limits. `single`: hard only (soft = hard).
LimitsUpdate defaultLimitsFor(uint64_t usage_bytes, uint64_t block_soft_kib, uint64_t block_hard_kib,
                              uint64_t inode_soft, uint64_t inode_hard, bool single);

// "Limits empty" for defaults and preserve_if_nonzero: all four 0 (single: both block limits 0).
bool limitsEmpty(const QuotaFigures& f);

}  // namespace dockquota
