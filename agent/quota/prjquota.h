// SPDX-License-Identifier: Apache-2.0
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
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent/base/result.h"

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
  uint64_t bytes = 0;  // blocks in use, in bytes
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

// Inherit: directories also get PROJINHERIT, so what is created in them later
// inherits the id. IdsOnly: ids only, every directory keeps the flags it has.
enum class TagFlags { Inherit, IdsOnly };

// Sets `id` on every directory and regular file under `root` (itself
// included). Stays on one filesystem and never follows symlinks. Usage moves
// with the inode (the kernel transfers its blocks from the old project to the
// new one).
Result<TagStats> tagTree(const std::string& root, uint32_t id, TagFlags flags = TagFlags::Inherit);

// An inode's project id and whether it passes it on (PROJINHERIT).
struct ProjectTag {
  uint32_t id = 0;
  bool inherit = false;
};
Result<ProjectTag> projectTagOf(const std::string& path);

// Tagging an overlay layer root (<root>/diff = upper dir, <root>/work = work
// dir) must never make overlayfs fail. XFS and ext4 refuse with EXDEV a rename
// or link into a PROJINHERIT directory from an inode of another project, and
// overlayfs renames (or links) every copy-up and whiteout from work/work into
// diff/. A layer is therefore tagged in an order in which no source can differ
// from its target:
//   1. the root and work/ (PROJINHERIT): the work/work that the next mount
//      creates (overlayfs recreates it at every mount) is born with the id, so
//      every copy-up is born with it too;
//   2. only then is the mount table read: if diff/ is an upper dir already
//      (the container started before its owner was known), diff/ is left
//      alone (Deferred) and tagged after the layer is unmounted;
//   3. diff/: ids on every inode first with no new PROJINHERIT (a directory
//      without the flag accepts any inode), then the flags; inodes created
//      meanwhile are caught by the second pass.
// A mount shows in the mount table only once overlayfs has set it up, and the
// set-up creates work/work: so a work/work younger than `mount_setup_seconds`
// with another id is a mount in progress that began before step 1 (Deferred);
// an older one is what an earlier mount left (the next mount replaces it with
// one born in the tagged work/). A mount that starts after step 2 finds work/
// tagged, and diff/ of a new container is empty: nothing in it has another id.
// `upper_mounted` says whether `<root>/diff` is an overlay upper dir now
// (overlayUpperMounted()). A false "in progress" only defers to the next sync.
// `finished_before` (unix seconds, 0 = unknown): every mount that began
// before it is known to be over. Docker mounts a new container's layer once
// inside the create request (to make the mount points of its volumes) and
// unmounts it before it replies: a work/work older than the create reply is
// that finished mount, not one in progress, however young.
enum class LayerTag { Tagged, Deferred };
struct LayerTagResult {
  LayerTag state = LayerTag::Tagged;
  TagStats stats;
  bool raced_mount = false;  // the layer was mounted while diff/ was being tagged
  std::string why;           // Deferred: "mounted", or how old work/work is (for the log)
};
constexpr int kMountSetupSeconds = 10;  // a slow mount under load, with margin
Result<LayerTagResult> tagLayer(const std::string& root, uint32_t id, const std::function<bool()>& upper_mounted,
                                int mount_setup_seconds = kMountSetupSeconds, double finished_before = 0);
// A containerd overlayfs snapshot (<root> = .../snapshots/<n>, holding fs/ =
// the upper dir and work/), tagged while it may already be mounted: containerd
// mounts the rootfs inside the task create, before its event reaches us, so
// tagLayer()'s "leave a live upper dir alone" would defer every container.
// The order keeps overlayfs' renames from work/work into fs/ from failing
// with EXDEV: root and work/ (work/work included) get the id with
// PROJINHERIT first, so copy-ups are born with it; then fs/ gets ids with no
// new flags (a directory without PROJINHERIT accepts any inode), then the
// flags. Only a copy-up begun before work/work was flagged and renamed after
// its target directory was can still fail; at task create, before the task
// starts, nothing writes yet. Without work/ (another layout) fs/ alone.
Result<TagStats> tagSnapshot(const std::string& root, const std::string& upper, uint32_t id);

// `root` holds diff/ and work/ (an overlay2 layer root, not a volume).
bool isLayerRoot(const std::string& root);

// When a layer's work/work was made (its ctime, Unix seconds), or nullopt
// before the layer's first mount: overlayfs makes it at every mount, so it
// dates the last mount that began.
std::optional<double> workWorkBorn(const std::string& root);
// diff/ carries `id` with PROJINHERIT: the layer was tagged.
bool layerTagged(const std::string& root, uint32_t id);
// Some overlay mount in /proc/self/mountinfo has `upper_dir` as its upperdir.
bool overlayUpperMounted(const std::string& upper_dir);

// Limits in bytes (0 = none). The kernel keeps them in 512-byte blocks; bytes
// are rounded up to whole blocks.
Status setProjectLimit(const QuotaFs& fs, uint32_t id, uint64_t hard_bytes, uint64_t soft_bytes = 0);

// Usage of every project id the kernel has a record for (ids with neither
// usage nor limits may be absent: read them as zero).
Result<std::map<uint32_t, ProjectUsage>> readProjects(const QuotaFs& fs);
// One id (Q_XGETQUOTA); an id the kernel has no record of is all zeros.
Result<ProjectUsage> readProject(const QuotaFs& fs, uint32_t id);

}  // namespace dockquota
