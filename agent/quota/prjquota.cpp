// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/prjquota.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/dqblk_xfs.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/quota.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "agent/base/clock.h"
#include "agent/base/mountinfo.h"

namespace dockquota {
namespace {

#ifndef PRJQUOTA
#define PRJQUOTA 2
#endif
#ifndef Q_XGETNEXTQUOTA
#define Q_XGETNEXTQUOTA XQM_CMD(9)  // Linux 4.6
#endif

constexpr uint64_t kBasicBlock = 512;  // quotactl's XFS interface counts 512-byte "basic blocks"

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

int quotactlPrj(const QuotaFs& fs, int cmd, uint32_t id, void* addr) {
  return quotactl(QCMD(cmd, PRJQUOTA), fs.device.c_str(), int(id), static_cast<caddr_t>(addr));
}

ProjectUsage fromDisk(const fs_disk_quota& d) {
  ProjectUsage u;
  u.bytes = d.d_bcount * kBasicBlock;
  u.inodes = d.d_icount;
  u.hard_bytes = d.d_blk_hardlimit * kBasicBlock;
  u.soft_bytes = d.d_blk_softlimit * kBasicBlock;
  return u;
}

// Sets `id` on an open inode, and PROJINHERIT on a directory when `inherit`
// (without it a directory keeps the flag it has). Returns true when it changed.
Result<bool> setOnFd(int fd, uint32_t id, bool dir, bool inherit = true) {
  fsxattr fa{};
  if (ioctl(fd, FS_IOC_FSGETXATTR, &fa) != 0) return osError(errno, "FS_IOC_FSGETXATTR");
  const bool add_flag = dir && inherit && !(fa.fsx_xflags & FS_XFLAG_PROJINHERIT);
  if (fa.fsx_projid == id && !add_flag) return false;
  fa.fsx_projid = id;
  if (add_flag) fa.fsx_xflags |= FS_XFLAG_PROJINHERIT;
  if (ioctl(fd, FS_IOC_FSSETXATTR, &fa) != 0) return osError(errno, "FS_IOC_FSSETXATTR");
  return true;
}

void count(TagStats& st, const Result<bool>& r, const std::string& path) {
  if (!r) {
    ++st.failed;
    if (st.error.empty()) st.error = path + ": " + r.error().message;
  } else if (*r) {
    ++st.tagged;
  } else {
    ++st.already;
  }
}

}  // namespace

std::string QuotaFs::describe() const {
  std::string s = fstype + " " + device + " on " + mount_point;
  if (usable()) return s + " (project quotas on)";
  return s + " (" + reason + ")";
}

Result<QuotaFs> probeQuotaFs(const std::string& path) {
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real)) return osError(errno, "prjquota: " + path);
  struct stat st {};
  if (stat(real, &st) != 0) return osError(errno, "prjquota: stat " + std::string(real));

  QuotaFs fs;
  fs.path = real;
  fs.dev = st.st_dev;
  auto mounts = readMountinfo();
  if (!mounts) return mounts.error().context("prjquota");
  // The deepest mount of this device that holds the path (bind mounts repeat the device).
  const MountEntry* best = nullptr;
  for (const auto& m : *mounts) {
    if (m.dev != st.st_dev || !underMount(fs.path, m.mount_point)) continue;
    if (!best || m.mount_point.size() >= best->mount_point.size()) best = &m;
  }
  const bool found = best != nullptr;
  if (found) {
    fs.mount_point = best->mount_point;
    fs.fstype = best->fstype;
    fs.device = best->source;
  }
  if (!found) return Error{ENOENT, "prjquota: no mount in /proc/self/mountinfo holds " + fs.path};

  if (fs.fstype != "xfs" && fs.fstype != "ext4") {
    fs.reason = fs.fstype + " has no project quotas (needs XFS or ext4)";
    return fs;
  }
  struct stat dst {};
  if (stat(fs.device.c_str(), &dst) != 0 || !S_ISBLK(dst.st_mode) || dst.st_rdev != st.st_dev) {
    // "/dev/root" and friends: the kernel's own name for the device always works.
    std::string alt = "/dev/block/" + std::to_string(major(st.st_dev)) + ":" + std::to_string(minor(st.st_dev));
    if (stat(alt.c_str(), &dst) == 0 && S_ISBLK(dst.st_mode)) {
      fs.device = alt;
    } else {
      fs.reason = "no block device node for " + std::to_string(major(st.st_dev)) + ":" +
                  std::to_string(minor(st.st_dev)) + " (quotactl needs one)";
      return fs;
    }
  }
  // Tagging sets each layer's project id (FS_IOC_FSSETXATTR), which a
  // read-only mount refuses with EROFS though no data changes. Under systemd
  // that is ProtectSystem=strict without this path in ReadWritePaths=: say so
  // once here, not on every layer.
  struct statvfs vfs {};
  if (statvfs(fs.path.c_str(), &vfs) == 0 && (vfs.f_flag & ST_RDONLY)) {
    fs.reason = fs.path + " is mounted read-only for the agent, so project ids cannot be set (under systemd: " +
                "add it to ReadWritePaths= of dockquota.service, see the README)";
    return fs;
  }
  fs_quota_statv sv{};
  sv.qs_version = FS_QSTATV_VERSION1;
  if (quotactlPrj(fs, Q_XGETQSTATV, 0, &sv) != 0) {
    int err = errno;
    fs.reason = err == ENOSYS ? "the kernel has no quota support for " + fs.fstype + " (CONFIG_QUOTA, CONFIG_XFS_QUOTA)"
                              : "project quotas are off on " + fs.device + " (" + std::strerror(err) + "; mount " +
                                    (fs.fstype == "xfs" ? "XFS with -o prjquota"
                                                        : "ext4 with the project,quota features and -o prjquota") +
                                    ")";
    return fs;
  }
  fs.accounting = sv.qs_flags & FS_QUOTA_PDQ_ACCT;
  fs.enforcing = sv.qs_flags & FS_QUOTA_PDQ_ENFD;
  if (!fs.accounting)
    fs.reason = "project quota accounting is off on " + fs.device;
  else if (!fs.enforcing)
    fs.reason = "project quotas are accounted but not enforced on " + fs.device;
  return fs;
}

Result<uint32_t> projectOf(const std::string& path) {
  Fd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (fd.fd < 0) return osError(errno, "prjquota: open " + path);
  fsxattr fa{};
  if (ioctl(fd.fd, FS_IOC_FSGETXATTR, &fa) != 0) return osError(errno, "prjquota: FS_IOC_FSGETXATTR " + path);
  return fa.fsx_projid;
}

Result<ProjectTag> projectTagOf(const std::string& path) {
  Fd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (fd.fd < 0) return osError(errno, "prjquota: open " + path);
  fsxattr fa{};
  if (ioctl(fd.fd, FS_IOC_FSGETXATTR, &fa) != 0) return osError(errno, "prjquota: FS_IOC_FSGETXATTR " + path);
  return ProjectTag{fa.fsx_projid, (fa.fsx_xflags & FS_XFLAG_PROJINHERIT) != 0};
}

Result<TagStats> tagTree(const std::string& root, uint32_t id, TagFlags flags) {
  const bool inherit = flags == TagFlags::Inherit;
  TagStats st;
  struct stat rs {};
  if (lstat(root.c_str(), &rs) != 0) return osError(errno, "prjquota: " + root);
  if (!S_ISDIR(rs.st_mode)) return Error{ENOTDIR, "prjquota: " + root + " is not a directory"};

  // Iterative, so a deep tree costs heap, not stack; one directory fd open at a time.
  std::vector<std::string> dirs{root};
  while (!dirs.empty()) {
    std::string dir = std::move(dirs.back());
    dirs.pop_back();
    int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0) {
      if (dir == root) return osError(errno, "prjquota: open " + root);
      count(st, osError(errno, "open"), dir);
      continue;
    }
    struct stat ds {};
    if (fstat(dfd, &ds) != 0 || ds.st_dev != rs.st_dev) {  // another filesystem mounted inside: not ours
      close(dfd);
      ++st.skipped;
      continue;
    }
    auto r = setOnFd(dfd, id, true, inherit);
    if (!r && dir == root) {
      close(dfd);
      return r.error().context("prjquota: " + root);
    }
    count(st, r, dir);
    DIR* d = fdopendir(dfd);  // takes dfd
    if (!d) {
      close(dfd);
      continue;
    }
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      unsigned char type = e->d_type;
      if (type == DT_UNKNOWN) {
        struct stat es {};
        if (fstatat(dirfd(d), e->d_name, &es, AT_SYMLINK_NOFOLLOW) != 0) continue;  // vanished
        type = S_ISDIR(es.st_mode) ? DT_DIR : S_ISREG(es.st_mode) ? DT_REG : DT_LNK;
      }
      if (type == DT_DIR) {
        dirs.push_back(dir + "/" + name);
      } else if (type == DT_REG) {
        int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
          if (errno != ENOENT) count(st, osError(errno, "open"), dir + "/" + name);
          continue;
        }
        count(st, setOnFd(fd, id, false), dir + "/" + name);
        close(fd);
      } else {
        ++st.skipped;
      }
    }
    closedir(d);
  }
  return st;
}

namespace {

bool isDirNoFollow(const std::string& p) {
  struct stat st {};
  return lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// One inode, not its tree (the layer root: diff/ and work/ get their own order).
Result<bool> tagOne(const std::string& path, uint32_t id) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return osError(errno, "prjquota: " + path);
  if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) return false;
  Fd fd(open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
  if (fd.fd < 0) return osError(errno, "prjquota: open " + path);
  auto r = setOnFd(fd.fd, id, S_ISDIR(st.st_mode));
  if (!r) return r.error().context("prjquota: " + path);
  return r;
}

void add(TagStats& into, const TagStats& from) {
  into.tagged += from.tagged;
  into.already += from.already;
  into.skipped += from.skipped;
  into.failed += from.failed;
  if (into.error.empty()) into.error = from.error;
}

// A mkdir in `dir` reads the parent's project flags under the parent's inode
// lock and makes the new entry visible before it lets go. FS_IOC_FSSETXATTR
// takes that lock on ext4 and on 5.13+ (vfs_fileattr_set), not on XFS before
// 5.13: there, overlayfs could be creating work/work with the old id while
// step 1 sets the flag, and the entry be invisible yet. A chmod to the same
// mode takes the lock on every kernel, so after it every such mkdir is over
// and its work/work in sight.
Status waitForMkdirs(const std::string& dir) {
  Fd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (fd.fd < 0 || fstat(fd.fd, &st) != 0 || fchmod(fd.fd, st.st_mode & 07777) != 0)
    return osError(errno, "prjquota: " + dir);
  return {};
}

// Why a mount may be in progress ("" = none): see tagLayer().
std::string mountInProgress(const std::string& root, uint32_t id, int setup_seconds, double finished_before) {
  const auto when = workWorkBorn(root);
  if (!when) return "";  // no mount yet: the first one creates it in tagged work/
  auto t = projectTagOf(root + "/work/work");
  if (t && t->id == id) return "";  // born after step 1
  const double born = *when;
  if (born < finished_before) return "";  // left by a mount known to be over
  const double age = unixNow() - born;
  if (age >= setup_seconds) return "";
  char why[160];
  if (finished_before > 0) {
    snprintf(why, sizeof why, "work/work made %.3f s ago, %.3f s after the create reply", age, born - finished_before);
  } else {
    snprintf(why, sizeof why, "work/work made %.3f s ago (no create reply known)", age);
  }
  return why;
}

}  // namespace

std::optional<double> workWorkBorn(const std::string& root) {
  struct stat st {};
  if (lstat((root + "/work/work").c_str(), &st) != 0) return std::nullopt;
  return static_cast<double>(st.st_ctim.tv_sec) + st.st_ctim.tv_nsec / 1e9;
}

bool isLayerRoot(const std::string& root) { return isDirNoFollow(root + "/diff") && isDirNoFollow(root + "/work"); }

bool layerTagged(const std::string& root, uint32_t id) {
  auto t = projectTagOf(root + "/diff");
  return t && t->id == id && t->inherit;
}

bool overlayUpperMounted(const std::string& upper_dir) {
  auto mounts = readMountinfo();
  if (!mounts) return true;  // cannot tell: assume the worst (a deferred tag is retried, an EXDEV is not)
  const std::string want = "upperdir=" + upper_dir;
  for (const auto& m : *mounts) {
    if (m.fstype != "overlay") continue;
    size_t at = m.super_options.find(want);
    while (at != std::string::npos) {
      const size_t end = at + want.size();
      const bool starts = at == 0 || m.super_options[at - 1] == ',';
      const bool ends = end == m.super_options.size() || m.super_options[end] == ',';
      if (starts && ends) return true;
      at = m.super_options.find(want, end);
    }
  }
  return false;
}

Result<LayerTagResult> tagLayer(const std::string& root, uint32_t id, const std::function<bool()>& upper_mounted,
                                int mount_setup_seconds, double finished_before) {
  LayerTagResult out;
  const std::string diff = root + "/diff", work = root + "/work";
  auto top = projectTagOf(root);
  if (top && top->id == id && top->inherit && layerTagged(root, id)) {
    out.stats.already = 1;
    return out;  // tagged before; its tree inherited the id since
  }
  // 1. The root (and its small files: link, lower), then work/, before anything is decided.
  if (auto r = tagOne(root, id); !r) return r.error();
  if (DIR* d = opendir(root.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == ".." || name == "diff" || name == "work" || name == "merged") continue;
      auto r = tagOne(root + "/" + name, id);
      count(out.stats, r, root + "/" + name);
    }
    closedir(d);
  }
  if (auto r = tagOne(work, id); !r) return r.error();
  if (auto b = waitForMkdirs(work); !b) return b.error();
  // 2. A live upper dir is never touched: the container writes into it now,
  //    and its copy-ups are born with work/work's old id. A mount shows in
  //    the mount table only once overlayfs has set it up, and setting up
  //    creates work/work: a young work/work with another id is a mount in
  //    progress that began before step 1 (an older one is what an earlier
  //    mount left, and the next mount replaces it with one born in work/).
  if (upper_mounted()) {
    out.state = LayerTag::Deferred;
    out.why = "mounted";
    return out;
  }
  if (auto why = mountInProgress(root, id, mount_setup_seconds, finished_before); !why.empty()) {
    out.state = LayerTag::Deferred;
    out.why = std::move(why);
    return out;
  }
  // 3. diff/: ids everywhere first, then the flags; inodes created between
  //    the passes are born without the flag's id and get it in the second.
  auto ids = tagTree(diff, id, TagFlags::IdsOnly);
  if (!ids) return ids.error();
  auto flags = tagTree(diff, id, TagFlags::Inherit);
  if (!flags) return flags.error();
  add(out.stats, *ids);
  out.stats.tagged += flags->tagged;  // the same inodes again: count changes only
  out.stats.failed += flags->failed;
  if (upper_mounted()) {
    // Docker started the container while diff/ was walked: one more pass for
    // what its first writes created in directories not yet flagged.
    out.raced_mount = true;
    if (auto again = tagTree(diff, id); again) out.stats.tagged += again->tagged;
  }
  return out;
}

Result<TagStats> tagSnapshot(const std::string& root, const std::string& upper, uint32_t id) {
  TagStats out;
  const std::string work = root + "/work";
  const bool has_work = isDirNoFollow(work);
  if (has_work) {
    if (auto r = tagOne(root, id); !r) return r.error();
    auto w = tagTree(work, id, TagFlags::Inherit);
    if (!w) return w.error();
    add(out, *w);
    if (auto b = waitForMkdirs(work); !b) return b.error();
  }
  auto ids = tagTree(upper, id, TagFlags::IdsOnly);
  if (!ids) return ids.error();
  auto flags = tagTree(upper, id, TagFlags::Inherit);
  if (!flags) return flags.error();
  add(out, *ids);
  out.tagged += flags->tagged;  // the same inodes again: count changes only
  out.failed += flags->failed;
  return out;
}

Status setProjectLimit(const QuotaFs& fs, uint32_t id, uint64_t hard_bytes, uint64_t soft_bytes) {
  fs_disk_quota d{};
  d.d_version = FS_DQUOT_VERSION;
  d.d_flags = FS_PROJ_QUOTA;
  d.d_id = id;
  d.d_fieldmask = FS_DQ_BHARD | FS_DQ_BSOFT;
  d.d_blk_hardlimit = (hard_bytes + kBasicBlock - 1) / kBasicBlock;
  d.d_blk_softlimit = (soft_bytes + kBasicBlock - 1) / kBasicBlock;
  if (quotactlPrj(fs, Q_XSETQLIM, id, &d) != 0)
    return osError(errno, "prjquota: Q_XSETQLIM project " + std::to_string(id) + " on " + fs.device);
  return {};
}

Result<ProjectUsage> readProject(const QuotaFs& fs, uint32_t id) {
  fs_disk_quota d{};
  if (quotactlPrj(fs, Q_XGETQUOTA, id, &d) != 0) {
    if (errno == ENOENT) return ProjectUsage{};
    return osError(errno, "prjquota: Q_XGETQUOTA project " + std::to_string(id) + " on " + fs.device);
  }
  return fromDisk(d);
}

Result<std::map<uint32_t, ProjectUsage>> readProjects(const QuotaFs& fs) {
  std::map<uint32_t, ProjectUsage> out;
  uint32_t id = 0;
  for (;;) {
    fs_disk_quota d{};
    if (quotactlPrj(fs, Q_XGETNEXTQUOTA, id, &d) != 0) {
      if (errno == ENOENT) break;  // no id >= `id` has a record
      return osError(errno, "prjquota: Q_XGETNEXTQUOTA from " + std::to_string(id) + " on " + fs.device);
    }
    out[d.d_id] = fromDisk(d);
    if (d.d_id == UINT32_MAX) break;
    id = d.d_id + 1;
  }
  return out;
}

}  // namespace dockquota
