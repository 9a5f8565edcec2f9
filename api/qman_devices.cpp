// SPDX-License-Identifier: Apache-2.0
#include "api/qman_devices.h"

#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <set>
#include <unordered_map>

#include "agent/base/log.h"
#include "agent/base/utf8.h"
#include "api/metrics.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "qman-devices";
using json = nlohmann::json;

std::vector<PasswdUser> readGroups() {
  // getgrent is not reentrant across threads: one enumeration at a time.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::vector<PasswdUser> out;
  setgrent();
  group gr, *res = nullptr;
  std::vector<char> buf(1 << 16);  // a group line lists its members: bigger than a passwd line
  while (getgrent_r(&gr, buf.data(), buf.size(), &res) == 0 && res) out.push_back({res->gr_gid, res->gr_name});
  endgrent();
  return out;
}

const QuotaFigures* findEntry(const std::vector<QuotaFigures>& e, uint32_t id) {
  auto it = std::lower_bound(e.begin(), e.end(), id, [](const QuotaFigures& f, uint32_t v) { return f.id < v; });
  return it != e.end() && it->id == id ? &*it : nullptr;
}

json infoJson(const QuotaInfo& i) {
  return json{{"block_grace", i.block_grace}, {"inode_grace", i.inode_grace}, {"flags", i.flags}};
}

// The device's own fields (spec §3.3), without the lists; `groups` adds the group_* ones.
json deviceHead(const DeviceSnapshot& s, bool groups) {
  json d = {{"name", s.name},
            {"mount_points", s.mount_points},
            {"fstype", s.fstype},
            {"opts", s.opts},
            {"usage",
             {{"total", s.usage.total}, {"used", s.usage.used}, {"free", s.usage.free}, {"percent", s.usage.percent}}}};
  if (s.users.format) d["user_quota_format"] = *s.users.format;
  if (s.users.info) d["user_quota_info"] = infoJson(*s.users.info);
  if (groups && s.groups.on) {
    if (s.groups.format) d["group_quota_format"] = *s.groups.format;
    if (s.groups.info) d["group_quota_info"] = infoJson(*s.groups.info);
  }
  return d;
}

// The listed entries of one table under the device's rule, appended as text.
// Returns how many were listed.
size_t appendListed(std::string& out, const QuotaTable& t, ListRule rule, const std::vector<PasswdUser>& candidates,
                    const char* id_key, const std::function<std::string(uint32_t)>& name_of) {
  size_t n = 0;
  if (!t.active) return n;  // quota off: qman's slave lists [] (every quotactl fails)
  auto add = [&](const QuotaFigures& f, const std::string& name) {
    if (n++ > 0) out += ',';
    appendEntry(out, f, id_key, name);
  };
  if (rule == ListRule::kAllIds) {
    for (const auto& f : t.entries)
      if (managedUid(f.id)) add(f, name_of(f.id));
    return n;
  }
  for (const auto& c : candidates) {
    const QuotaFigures* f = findEntry(t.entries, c.uid);
    if (f)
      add(*f, c.name);
    else if (rule == ListRule::kPasswdZeroFill)
      add(QuotaFigures{.id = c.uid}, c.name);
  }
  return n;
}

}  // namespace

std::vector<PasswdUser> managedInOrder(const std::vector<PasswdUser>& all) {
  std::vector<PasswdUser> out;
  std::set<uint32_t> seen;
  for (const auto& u : all)
    if (managedUid(u.uid) && seen.insert(u.uid).second) out.push_back(u);
  return out;
}

Candidates readCandidates() { return Candidates{managedInOrder(readPasswd()), managedInOrder(readGroups())}; }

void appendEntry(std::string& out, const QuotaFigures& f, const char* id_key, const std::string& name) {
  char buf[448];
  snprintf(buf, sizeof buf,
           "{\"block_current\":%" PRIu64 ",\"block_hard_limit\":%" PRIu64 ",\"block_soft_limit\":%" PRIu64
           ",\"block_time_limit\":%" PRIu64 ",\"%s\":%" PRIu32 ",\"inode_current\":%" PRIu64
           ",\"inode_hard_limit\":%" PRIu64 ",\"inode_soft_limit\":%" PRIu64 ",\"inode_time_limit\":%" PRIu64
           ",\"name\":",
           f.block_current, f.block_hard_kib, f.block_soft_kib, f.block_time, id_key, f.id, f.inode_current,
           f.inode_hard, f.inode_soft, f.inode_time);
  out += buf;
  out += jsonText(name);  // escaped: a passwd name may be any bytes
  out += '}';
}

std::optional<std::string> deviceText(const DeviceSnapshot& s, const Candidates& c,
                                      const std::function<std::string(uint32_t)>& name_of) {
  std::string users;
  const size_t listed = s.users.on ? appendListed(users, s.users, s.rule, c.users, "uid", name_of) : 0;
  if (s.drop_when_empty && listed == 0) return std::nullopt;
  std::string out = jsonText(deviceHead(s, true));
  out.pop_back();  // '}': the lists are spliced in as text
  if (s.groups.on) {
    out += ",\"group_quotas\":[";
    // Groups are group-file candidates only (ZFS has none).
    appendListed(out, s.groups, s.rule == ListRule::kAllIds ? ListRule::kPasswdPresent : s.rule, c.groups, "gid",
                 name_of);
    out += ']';
  }
  if (s.users.on) out += ",\"user_quotas\":[" + users + "]";
  out += '}';
  return out;
}

std::optional<std::string> deviceTextFor(const DeviceSnapshot& s, uint32_t uid, const std::string& name) {
  if (!s.users.on || !s.users.active) return std::nullopt;  // qman: Q_GETQUOTA failed, device left out
  // ZFS lists no one outside the uid filter (§4.3); block devices filter no one (§3.5).
  if (s.rule == ListRule::kAllIds && !managedUid(uid)) return std::nullopt;
  const QuotaFigures* f = findEntry(s.users.entries, uid);
  QuotaFigures zero{.id = uid};
  if (!f && s.rule != ListRule::kPasswdZeroFill) return std::nullopt;  // XFS ENOENT, ZFS no row
  std::string out = jsonText(deviceHead(s, false));
  out.pop_back();
  out += ",\"user_quotas\":[";
  appendEntry(out, f ? *f : zero, "uid", name);
  out += "]}";
  return out;
}

std::string mergeDevices(std::vector<std::pair<std::string_view, std::string_view>> named) {
  std::stable_sort(named.begin(), named.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  size_t size = 2;
  for (const auto& [n, t] : named) size += t.size() + 1;
  std::string out;
  out.reserve(size);
  out += '[';
  for (size_t i = 0; i < named.size(); i++) {
    if (i) out += ',';
    out += named[i].second;
  }
  out += ']';
  return out;
}

std::shared_ptr<const DeviceListCache::Texts> DeviceListCache::texts(const QuotaDevices::View& v, UserDirectory& users,
                                                                     const std::function<Candidates()>& candidates) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (texts_ && generation_ == v.generation) return texts_;
  }
  // Built outside the lock; two requests racing both build, the last one stays.
  const Candidates c = candidates();
  auto out = std::make_shared<Texts>();
  auto name_of = [&users](uint32_t uid) { return users.name(uid); };
  for (const auto& d : v.devices)
    if (auto text = deviceText(*d, c, name_of)) out->emplace_back(d->name, std::move(*text));
  std::lock_guard<std::mutex> l(mu_);
  if (v.generation >= generation_) {  // a slower build of an older view never replaces a newer one
    generation_ = v.generation;
    texts_ = out;
  }
  return out;
}

// --- writes ------------------------------------------------------------------------

std::string checkLimits(const LimitsUpdate& u, const QuotaFigures& cur, bool single) {
  if (single) return "";  // one limit: soft follows hard
  const uint64_t bh = u.block_hard_kib.value_or(cur.block_hard_kib), bs = u.block_soft_kib.value_or(cur.block_soft_kib);
  const uint64_t ih = u.inode_hard.value_or(cur.inode_hard), is = u.inode_soft.value_or(cur.inode_soft);
  if (bh != 0 && bs > bh)
    return "block_soft_limit (" + std::to_string(bs) + ") must not be above block_hard_limit (" + std::to_string(bh) +
           "); nothing was changed";
  if (ih != 0 && is > ih)
    return "inode_soft_limit (" + std::to_string(is) + ") must not be above inode_hard_limit (" + std::to_string(ih) +
           "); nothing was changed";
  return "";
}

QuotaFigures currentFigures(const DeviceSnapshot* s, uint32_t uid) {
  if (s)
    if (const QuotaFigures* f = findEntry(s->users.entries, uid)) return *f;
  return QuotaFigures{.id = uid};
}

namespace {
const DeviceSnapshot* snapshotOf(const QuotaDevices::View& v, const std::string& name) {
  for (const auto& d : v.devices)
    if (d->name == name) return d.get();
  return nullptr;
}

bool anyLimit(const QuotaFigures& f, bool single) {
  return single ? (f.block_hard_kib != 0 || f.block_soft_kib != 0) : !limitsEmpty(f);
}
}  // namespace

DeviceBatchResult runDeviceBatch(QuotaDevices& devices, QuotaDevice& device, const std::vector<uint32_t>& eligible,
                                 const DeviceBatch& b) {
  DeviceBatchResult r;
  auto view = devices.view();
  const DeviceSnapshot* snap = snapshotOf(*view, device.name());
  // The limit usage is compared with: the new hard one, else the new soft one (spec §3.7).
  const std::optional<uint64_t> cmp = b.limits.block_hard_kib ? b.limits.block_hard_kib : b.limits.block_soft_kib;
  for (uint32_t uid : eligible) {
    r.total_users++;
    const QuotaFigures cur = currentFigures(snap, uid);
    const bool keep = (b.preserve_if_nonzero && anyLimit(cur, device.singleLimit())) ||
                      (b.preserve_if_usage_exceeds && cur.block_current > cmp.value_or(0) * 1024);
    if (keep) {
      r.skipped_users++;
      continue;
    }
    if (std::string why = checkLimits(b.limits, cur, device.singleLimit()); !why.empty()) {
      r.errors.push_back("uid=" + std::to_string(uid) + ": " + why);
      continue;
    }
    if (auto s = devices.setUserLimits(device, uid, b.limits); !s) {
      r.errors.push_back("uid=" + std::to_string(uid) + ": " + s.error().message);
      continue;
    }
    r.updated_users++;
  }
  LOG_INFO(kSub, "batch on %s: %zu of %zu users updated, %zu errors", device.name().c_str(), r.updated_users,
           r.total_users, r.errors.size());
  return r;
}

size_t applyDeviceDefault(QuotaDevices& devices, QuotaDevice& device, const std::vector<uint32_t>& eligible,
                          const DeviceDefault& d) {
  const bool single = device.singleLimit();
  const bool none =
      single ? d.block_hard_kib == 0 : (d.block_hard_kib | d.block_soft_kib | d.inode_hard | d.inode_soft) == 0;
  if (none) return 0;
  auto view = devices.view();
  const DeviceSnapshot* snap = snapshotOf(*view, device.name());
  if (!snap) return 0;  // not readable now: the next run
  size_t n = 0;
  for (uint32_t uid : eligible) {
    const QuotaFigures cur = currentFigures(snap, uid);
    if (anyLimit(cur, single)) continue;
    const LimitsUpdate u =
        defaultLimitsFor(cur.block_current, d.block_soft_kib, d.block_hard_kib, d.inode_soft, d.inode_hard, single);
    if (auto s = devices.setUserLimits(device, uid, u); !s) {
      LOG_WARN(kSub, "default on %s for uid %u: %s", device.name().c_str(), uid, s.error().message.c_str());
      continue;
    }
    n++;
  }
  if (n > 0) LOG_INFO(kSub, "default quota of %s applied to %zu user(s)", device.name().c_str(), n);
  return n;
}

void appendDeviceMetrics(std::string& out, const QuotaDevices::View& v,
                         const std::function<std::string(uint32_t)>& name_of) {
  // One pass over the entries, three metric families: each family's samples
  // must follow its own HELP/TYPE lines, so they are gathered apart first.
  std::string bytes, inodes, grace;
  for (const auto& d : v.devices) {
    const std::string dev = "device=\"" + promEscape(d->name) + "\",";
    const bool inode_figures = d->rule != ListRule::kAllIds;  // ZFS: block limits only
    for (const auto& f : d->users.entries) {
      if (!managedUid(f.id)) continue;
      const std::string l = dev + "uid=\"" + std::to_string(f.id) + "\",user=\"" + promEscape(name_of(f.id)) + "\"";
      promSample(bytes, "dockquota_device_user_bytes", l + ",kind=\"used\"", f.block_current);
      if (f.block_soft_kib)
        promSample(bytes, "dockquota_device_user_bytes", l + ",kind=\"soft\"", f.block_soft_kib * 1024);
      if (f.block_hard_kib)
        promSample(bytes, "dockquota_device_user_bytes", l + ",kind=\"hard\"", f.block_hard_kib * 1024);
      if (!inode_figures) continue;
      promSample(inodes, "dockquota_device_user_inodes", l + ",kind=\"used\"", f.inode_current);
      if (f.inode_soft) promSample(inodes, "dockquota_device_user_inodes", l + ",kind=\"soft\"", f.inode_soft);
      if (f.inode_hard) promSample(inodes, "dockquota_device_user_inodes", l + ",kind=\"hard\"", f.inode_hard);
      if (f.block_time)
        promSample(grace, "dockquota_device_user_grace_end_timestamp_seconds", l + ",kind=\"block\"", f.block_time);
      if (f.inode_time)
        promSample(grace, "dockquota_device_user_grace_end_timestamp_seconds", l + ",kind=\"inode\"", f.inode_time);
    }
  }
  promHeader(out, "dockquota_device_user_bytes", "gauge",
             "A uid's figures on a block device or ZFS dataset in bytes: used (block_current), soft and hard limits "
             "(absent = none).");
  out += bytes;
  promHeader(out, "dockquota_device_user_inodes", "gauge",
             "A uid's inodes on a block device: used, soft and hard limits (absent = none).");
  out += inodes;
  promHeader(out, "dockquota_device_user_grace_end_timestamp_seconds", "gauge",
             "When a uid's grace period on a device ends, block or inode (absent = none running).");
  out += grace;
}

}  // namespace dockquota
