#include "agent/prjquota.h"

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

#include "agent/mountinfo.h"

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

// Sets `id` (+ PROJINHERIT on a directory) on an open inode. Returns true when it changed.
Result<bool> setOnFd(int fd, uint32_t id, bool dir) {
  fsxattr fa{};
  if (ioctl(fd, FS_IOC_FSGETXATTR, &fa) != 0) return osError(errno, "FS_IOC_FSGETXATTR");
  bool inherit = !dir || (fa.fsx_xflags & FS_XFLAG_PROJINHERIT);
  if (fa.fsx_projid == id && inherit) return false;
  fa.fsx_projid = id;
  if (dir) fa.fsx_xflags |= FS_XFLAG_PROJINHERIT;
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

Result<TagStats> tagTree(const std::string& root, uint32_t id) {
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
    auto r = setOnFd(dfd, id, true);
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
