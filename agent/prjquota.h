// Project quotas in the kernel: the filesystem under a path, whether it keeps
// and enforces project quotas, project ids on directory trees, limits and
// usage. XFS (`prjquota`/`pquota`) and ext4 (`project` feature + `prjquota`)
// answer the same generic calls, so one code path serves both:
//
//   FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR   project id + PROJINHERIT on an inode
//   quotactl(Q_XGETQSTATV, PRJQUOTA)        accounting / enforcement state
//   quotactl(Q_XSETQLIM, PRJQUOTA)          hard/soft block limits of one id
//   quotactl(Q_XGETNEXTQUOTA, PRJQUOTA)     usage of every id in one pass (4.6+),
//                                           Q_XGETQUOTA per id where it is missing
//
// quotactl(2) takes the block device (quotactl_fd needs 5.14; 5.10 is supported).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agent/result.h"

namespace dockquota {

// The filesystem a path lives on, and its project-quota state.
struct QuotaFs {
  std::string path;         // what was asked about (realpath)
  std::string mount_point;  // where that filesystem is mounted
  std::string device;       // block device for quotactl ("/dev/loop0")
  std::string fstype;       // "xfs", "ext4", "overlay", ...
  uint64_t dev = 0;         // st_dev of the mount
  bool accounting = false;  // the kernel keeps project usage
  bool enforcing = false;   // ... and refuses writes past a hard limit
  std::string reason;       // why not, when !enforcing ("" when on)

  bool usable() const { return accounting && enforcing; }
  std::string describe() const;  // "xfs /dev/loop0 on /data (prjquota)" or the reason
};

// Where `path` lives and whether project quotas work there. Fails only when
// the path or the mount table cannot be read; a filesystem without quotas is a
// QuotaFs with usable() false and a reason an admin can act on.
Result<QuotaFs> probeQuotaFs(const std::string& path);

struct ProjectUsage {
  uint64_t bytes = 0;       // blocks in use, in bytes
  uint64_t inodes = 0;
  uint64_t hard_bytes = 0;  // 0 = no limit
  uint64_t soft_bytes = 0;
};

// The project id of one file or directory (FS_IOC_FSGETXATTR).
Result<uint32_t> projectOf(const std::string& path);

struct TagStats {
  uint64_t tagged = 0;   // inodes whose id was changed
  uint64_t already = 0;  // inodes that had it
  uint64_t skipped = 0;  // symlinks, devices, fifos, sockets (no ioctl on them)
  uint64_t failed = 0;   // vanished or refused (first error kept in TagStats::error)
  std::string error;
};

// Sets `id` on every directory and regular file under `root` (itself
// included), with PROJINHERIT on directories so what is created later inherits
// it. Stays on one filesystem and never follows symlinks. Usage moves with the
// inode (the kernel transfers its blocks from the old project to the new one).
Result<TagStats> tagTree(const std::string& root, uint32_t id);

// Limits in bytes (0 = none). The kernel keeps them in 512-byte blocks; bytes
// are rounded up to whole blocks.
Status setProjectLimit(const QuotaFs& fs, uint32_t id, uint64_t hard_bytes, uint64_t soft_bytes = 0);

// Usage of every project id the kernel has a record for (ids with neither
// usage nor limits may be absent: read them as zero).
Result<std::map<uint32_t, ProjectUsage>> readProjects(const QuotaFs& fs);
// One id (Q_XGETQUOTA); an id the kernel has no record of is all zeros.
Result<ProjectUsage> readProject(const QuotaFs& fs, uint32_t id);

}  // namespace dockquota
