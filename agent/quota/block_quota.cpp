// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/block_quota.h"

#include <fcntl.h>
#include <linux/dqblk_xfs.h>
#include <sys/quota.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <set>

#include "agent/base/log.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "block-quota";

#ifndef Q_GETNEXTQUOTA
#define Q_GETNEXTQUOTA 0x800009  // Linux 4.6
#endif
#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443  // Linux 5.14, the same number on every architecture
#endif
constexpr uint32_t kDqfSysFile = 0x10000;  // DQF_SYS_FILE: XFS keeps quotas in system files

// struct if_nextdqblk (linux/quota.h; glibc's sys/quota.h lacks it and
// clashes with the kernel header): if_dqblk plus the id found.
struct NextDqblk {
  uint64_t dqb_bhardlimit;
  uint64_t dqb_bsoftlimit;
  uint64_t dqb_curspace;
  uint64_t dqb_ihardlimit;
  uint64_t dqb_isoftlimit;
  uint64_t dqb_curinodes;
  uint64_t dqb_btime;
  uint64_t dqb_itime;
  uint32_t dqb_valid;
  uint32_t dqb_id;
};
static_assert(sizeof(NextDqblk) == 72, "struct if_nextdqblk is 72 bytes");
static_assert(sizeof(struct dqblk) == 72, "struct if_dqblk is 72 bytes (8 u64 and dqb_valid, padded)");

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string::npos) end = s.size();
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

bool has(const std::vector<std::string>& v, const std::string& token) {
  return std::find(v.begin(), v.end(), token) != v.end();
}

bool quotaFstype(const std::string& t) { return t == "ext4" || t == "ext3" || t == "ext2" || t == "xfs"; }

// The node of a block device by number: DEVNAME in sysfs ("sda1" -> "/dev/sda1").
std::string sysfsDevName(dev_t dev) {
  std::ifstream in("/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev)) + "/uevent");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("DEVNAME=", 0) == 0) return "/dev/" + line.substr(8);
  return "";
}

template <typename T>
QuotaFigures figuresOf(const T& d, uint32_t id) {
  return QuotaFigures{id,
                      d.dqb_bhardlimit,
                      d.dqb_bsoftlimit,
                      d.dqb_curspace,
                      d.dqb_ihardlimit,
                      d.dqb_isoftlimit,
                      d.dqb_curinodes,
                      d.dqb_btime,
                      d.dqb_itime};
}

int quotaTypeId(QuotaType t) { return t == QuotaType::kUser ? USRQUOTA : GRPQUOTA; }
const char* typeName(QuotaType t) { return t == QuotaType::kUser ? "user" : "group"; }

// statvfs of the first mount point in the spec's units (§3.1 step 5).
DeviceUsage usageOf(const std::string& path) {
  struct statvfs st {};
  DeviceUsage u;
  if (statvfs(path.c_str(), &st) != 0) return u;
  u.total = uint64_t(st.f_blocks) * st.f_frsize;
  u.used = uint64_t(st.f_blocks - st.f_bfree) * st.f_frsize;
  u.free = uint64_t(st.f_bavail) * st.f_frsize;
  const uint64_t base = u.used + u.free;
  u.percent = base == 0 ? 0.0 : std::round(double(u.used) / double(base) * 1000.0) / 10.0;
  return u;
}

}  // namespace

// --- discovery -----------------------------------------------------------------

bool BlockFilter::wanted(const BlockMount& m) const {
  auto matches = [&m](const std::vector<std::string>& list) {
    for (const auto& e : list)
      if (e == m.source || has(m.mount_points, e)) return true;
    return false;
  };
  return (include.empty() || matches(include)) && !matches(exclude);
}

std::vector<std::string> mountsOptions(const MountEntry& e) {
  static const std::set<std::string> kSbFlags = {"sync", "dirsync", "mand", "lazytime"};
  const auto mnt = split(e.options, ',');
  const auto sb = split(e.super_options, ',');
  std::vector<std::string> out;
  if (!mnt.empty()) out.push_back(mnt[0]);  // rw/ro of the mount
  for (size_t i = 1; i < sb.size(); i++)
    if (kSbFlags.count(sb[i])) out.push_back(sb[i]);
  for (size_t i = 1; i < mnt.size(); i++) out.push_back(mnt[i]);
  for (size_t i = 1; i < sb.size(); i++)
    if (!kSbFlags.count(sb[i])) out.push_back(sb[i]);
  return out;
}

std::vector<BlockMount> discoverBlockMounts(const std::vector<MountEntry>& table, const BlockFilter& filter,
                                            const std::function<std::string(dev_t)>& dev_name) {
  std::vector<BlockMount> out;
  for (const auto& e : table) {
    if (!quotaFstype(e.fstype) || e.source.empty() || e.source == "none") continue;
    std::string source = e.source;
    if (source == "/dev/root" || source == "rootfs") {
      const std::string real = dev_name ? dev_name(e.dev) : sysfsDevName(e.dev);
      if (!real.empty()) source = real;
    }
    auto it = std::find_if(out.begin(), out.end(), [&](const BlockMount& m) { return m.source == source; });
    if (it != out.end()) {
      it->mount_points.push_back(e.mount_point);
      continue;
    }
    BlockMount m{source, e.dev, {e.mount_point}, e.fstype, mountsOptions(e)};
    m.usrquota = has(m.opts, "usrquota");
    m.grpquota = has(m.opts, "grpquota");
    out.push_back(std::move(m));
  }
  std::erase_if(out, [&](const BlockMount& m) { return !(m.usrquota || m.grpquota) || !filter.wanted(m); });
  return out;
}

std::vector<std::string> unservedQuotaMounts(const std::vector<MountEntry>& table) {
  std::vector<std::string> out;
  for (const auto& e : table) {
    if (quotaFstype(e.fstype)) continue;
    const auto opts = split(e.super_options, ',');
    for (const char* q : {"usrquota", "grpquota"})
      if (has(opts, q)) out.push_back(std::string(q) + " on " + e.mount_point + " (" + e.fstype + "): not ext4 or XFS");
  }
  return out;
}

std::string quotaFormatName(uint32_t fmt) {
  switch (fmt) {
    case 1: return "vfsold";  // QFMT_VFS_OLD
    case 2: return "vfsv0";   // QFMT_VFS_V0
    case 4: return "vfsv1";   // QFMT_VFS_V1
    default: return "";
  }
}

// --- quotactl ---------------------------------------------------------------------

// One filesystem's quotactl target for a series of calls: an O_PATH fd of the
// mount point for quotactl_fd, else the device path. Opened per series and
// closed after, never held: an open fd would keep the mount busy (umount EBUSY).
class BlockQuotaDevice::Handle {
 public:
  explicit Handle(const BlockMount& m) : dev_(m.source) {
    if (fdSupported().load() != 0) fd_ = open(m.mount_points.front().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  }
  ~Handle() {
    if (fd_ >= 0) close(fd_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  // quotactl(cmd, type); -1 with errno on failure.
  int call(int cmd, int type, uint32_t id, void* addr) {
    calls_++;
    if (fd_ >= 0) {
      const long r = syscall(SYS_quotactl_fd, fd_, QCMD(cmd, type), id, addr);
      if (r == 0 || errno != ENOSYS) return int(r);
      fdSupported().store(0);  // an older kernel: the path from now on
      LOG_INFO(kSub, "no quotactl_fd (Linux < 5.14): using device paths");
    }
    return quotactl(QCMD(cmd, type), dev_.c_str(), int(id), static_cast<caddr_t>(addr));
  }
  uint64_t calls() const { return calls_; }

 private:
  // 1 until a call says ENOSYS; shared by every device.
  static std::atomic<int>& fdSupported() {
    static std::atomic<int> s{1};
    return s;
  }
  std::string dev_;
  int fd_ = -1;
  uint64_t calls_ = 0;
};

BlockQuotaDevice::BlockQuotaDevice(BlockMount mount, CandidateIds candidates)
    : mount_(std::move(mount)), candidates_(std::move(candidates)) {}

namespace {

// Q_GETNEXTQUOTA from id 0 until ENOENT: every id the filesystem has an entry
// for. nullopt when the kernel or filesystem lacks it (caller falls back).
template <typename Call>
std::optional<std::vector<QuotaFigures>> nextPass(Call&& call, int type, int& err) {
  std::vector<QuotaFigures> out;
  uint32_t id = 0;
  for (;;) {
    NextDqblk d{};
    if (call(Q_GETNEXTQUOTA, type, id, &d) != 0) {
      if (errno == ENOENT) return out;
      err = errno;
      if ((errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) && out.empty()) return std::nullopt;
      return out;  // a failure midway: what was read, and err says why it stopped
    }
    out.push_back(figuresOf(d, d.dqb_id));
    if (d.dqb_id == UINT32_MAX) return out;
    id = d.dqb_id + 1;
  }
}

}  // namespace

QuotaTable BlockQuotaDevice::readTable(Handle& h, QuotaType type, bool& per_id, std::string& problem) {
  QuotaTable t;
  t.on = true;
  const int qt = quotaTypeId(type);
  uint32_t fmt = 0;
  if (h.call(Q_GETFMT, qt, 0, &fmt) == 0 && !quotaFormatName(fmt).empty()) t.format = quotaFormatName(fmt);
  struct dqinfo info {};
  if (h.call(Q_GETINFO, qt, 0, &info) == 0) {
    t.info = QuotaInfo{info.dqi_bgrace, info.dqi_igrace, info.dqi_flags};
  } else if (errno == ESRCH) {
    // Quota accounting off (quotaoff, or never quotaon'd): the kernel answers
    // ESRCH to everything; the device is listed with no entries (spec §3.2).
    t.active = false;
    problem = std::string(typeName(type)) + " quota is off on " + mount_.source + " (" + mount_.mount_points.front() +
              " is mounted with " + (type == QuotaType::kUser ? "usrquota" : "grpquota") + "; run quotaon)";
    return t;
  } else if (mount_.fstype == "xfs") {
    // XFS's own state call, for the grace periods (its quotas live in system files).
    fs_quota_statv sv{};
    sv.qs_version = FS_QSTATV_VERSION1;
    if (h.call(Q_XGETQSTATV, qt, 0, &sv) == 0)
      t.info = QuotaInfo{uint64_t(sv.qs_btimelimit), uint64_t(sv.qs_itimelimit), kDqfSysFile};
  }
  int err = 0;
  auto auto_call = [&h](int cmd, int type_, uint32_t id, void* addr) { return h.call(cmd, type_, id, addr); };
  if (auto all = nextPass(auto_call, qt, err)) {
    t.entries = std::move(*all);
    if (err != 0) problem = std::string("Q_GETNEXTQUOTA on ") + mount_.source + ": " + std::strerror(err);
    return t;
  }
  // No one-pass read: one Q_GETQUOTA per candidate (ext4 then keeps a zero
  // entry for each, as qman's own slave leaves them).
  per_id = true;
  for (uint32_t id : candidates_ ? candidates_(type) : std::vector<uint32_t>{}) {
    struct dqblk d {};
    if (h.call(Q_GETQUOTA, qt, id, &d) == 0) t.entries.push_back(figuresOf(d, id));
  }
  std::sort(t.entries.begin(), t.entries.end(), [](auto& a, auto& b) { return a.id < b.id; });
  t.entries.erase(std::unique(t.entries.begin(), t.entries.end(), [](auto& a, auto& b) { return a.id == b.id; }),
                  t.entries.end());
  return t;
}

// Where the device is mounted now, in table order: mounts come and go while
// the agent runs (dockerd bind-mounts its data root onto itself when the
// mount holding it is private), and qman's own slave reads them on every
// request. The discovered list stands when the table cannot be read or no
// longer holds the device.
namespace {
std::vector<std::string> currentMountPoints(const BlockMount& m) {
  auto table = processMountTable().current();
  if (!table) return m.mount_points;
  std::vector<std::string> out;
  for (const auto& e : **table)
    if (e.dev == m.dev && quotaFstype(e.fstype)) out.push_back(e.mount_point);
  return out.empty() ? m.mount_points : out;
}
}  // namespace

Result<DeviceSnapshot> BlockQuotaDevice::read() {
  Handle h(mount_);
  DeviceSnapshot s;
  s.name = mount_.source;
  s.mount_points = currentMountPoints(mount_);
  s.fstype = mount_.fstype;
  s.opts = mount_.opts;
  s.usage = usageOf(mount_.mount_points.front());
  s.rule = mount_.fstype == "xfs" ? ListRule::kPasswdPresent : ListRule::kPasswdZeroFill;
  std::vector<std::string> problems;
  ReadStats st;
  for (QuotaType type : {QuotaType::kUser, QuotaType::kGroup}) {
    if (!(type == QuotaType::kUser ? mount_.usrquota : mount_.grpquota)) continue;
    std::string problem;
    (type == QuotaType::kUser ? s.users : s.groups) = readTable(h, type, st.per_id, problem);
    if (!problem.empty()) problems.push_back(std::move(problem));
  }
  st.calls = h.calls();
  std::lock_guard<std::mutex> l(mu_);
  if (problems != problems_)
    for (const auto& p : problems) LOG_WARN(kSub, "DEGRADED: %s", p.c_str());
  problems_ = std::move(problems);
  stats_ = st;
  return s;
}

Result<std::optional<QuotaFigures>> BlockQuotaDevice::readUser(uint32_t uid) {
  Handle h(mount_);
  struct dqblk d {};
  if (h.call(Q_GETQUOTA, USRQUOTA, uid, &d) != 0) {
    if (errno == ENOENT) return std::optional<QuotaFigures>{};  // XFS: no dquot
    return osError(errno, "block-quota: Q_GETQUOTA uid " + std::to_string(uid) + " on " + mount_.source);
  }
  return std::optional<QuotaFigures>{figuresOf(d, uid)};
}

Status BlockQuotaDevice::setUserLimits(uint32_t uid, const LimitsUpdate& u) {
  Handle h(mount_);
  struct dqblk d {};
  if (h.call(Q_GETQUOTA, USRQUOTA, uid, &d) != 0 && errno != ENOENT)
    return osError(errno, "block-quota: Q_GETQUOTA uid " + std::to_string(uid) + " on " + mount_.source);
  struct dqblk w {};
  w.dqb_bhardlimit = u.block_hard_kib.value_or(d.dqb_bhardlimit);
  w.dqb_bsoftlimit = u.block_soft_kib.value_or(d.dqb_bsoftlimit);
  w.dqb_ihardlimit = u.inode_hard.value_or(d.dqb_ihardlimit);
  w.dqb_isoftlimit = u.inode_soft.value_or(d.dqb_isoftlimit);
  w.dqb_valid = QIF_LIMITS;  // limits only: usage, grace times and periods are the kernel's
  if (h.call(Q_SETQUOTA, USRQUOTA, uid, &w) != 0)
    return osError(errno, "block-quota: Q_SETQUOTA uid " + std::to_string(uid) + " on " + mount_.source);
  return {};
}

Health BlockQuotaDevice::health() const {
  std::lock_guard<std::mutex> l(mu_);
  Health h;
  h.report = {{"fstype", mount_.fstype},        {"mount_points", currentMountPoints(mount_)},
              {"usrquota", mount_.usrquota},    {"grpquota", mount_.grpquota},
              {"quotactl_calls", stats_.calls}, {"read", stats_.per_id ? "per-id" : "one-pass"}};
  h.degraded = problems_;
  return h;
}

BlockQuotaDevice::ReadStats BlockQuotaDevice::lastRead() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
}

}  // namespace dockquota
