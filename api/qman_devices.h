// SPDX-License-Identifier: Apache-2.0
// The non-Docker devices as the qman contract shows them
// (../shared/spec/qman-slave-devices.md): a DeviceSnapshot (agent/quota/
// quota_device.h) turned into a DeviceQuota with its listed users and groups,
// the per-uid variant, the merge with the docker device in the spec's order,
// and the writes (PUT, batch, defaults) on a QuotaDevices device.
//
// Who is listed (spec §3.4, §4.2): block devices list passwd candidates
// (1000 <= uid <= 9999, not 65534) in passwd file order, each uid once (qman
// lists a uid twice when passwd has it twice: ours does not); ext4 lists
// every candidate (zeros when the filesystem has no entry), XFS only those
// with a dquot; ZFS every id in the uid filter, passwd or not.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/quota/quota_device.h"
#include "agent/quota/quota_devices.h"
#include "agent/quota/quotas.h"

namespace dockquota {

// Passwd users and groups in file order, managed ids only, each id once.
struct Candidates {
  std::vector<PasswdUser> users;
  std::vector<PasswdUser> groups;  // gid and group name
};
// getpwent/getgrent through NSS.
Candidates readCandidates();
// Keeps only managed ids, first occurrence of each (file order kept).
std::vector<PasswdUser> managedInOrder(const std::vector<PasswdUser>& all);

// One entry as UserQuota text (spec R§3.2 without docker_*; groups: "gid").
void appendEntry(std::string& out, const QuotaFigures& f, const char* id_key, const std::string& name);

// The full DeviceQuota (spec §3.3) as JSON text; nullopt when the device is
// not listed (ZFS with no entry left). `name_of(uid)`: passwd name, else user_<uid>.
std::optional<std::string> deviceText(const DeviceSnapshot& s, const Candidates& c,
                                      const std::function<std::string(uint32_t)>& name_of);
// The per-uid variant (spec §3.5, §4.3): the device with that user's one
// entry and no group fields; nullopt when it has none for the uid.
std::optional<std::string> deviceTextFor(const DeviceSnapshot& s, uint32_t uid, const std::string& name);

// The list in the spec's order (§2): one stable sort on `name` by code point.
// Views only: the texts stay where they are (1.3 MB for 3 devices of 1,000 users).
std::string mergeDevices(std::vector<std::pair<std::string_view, std::string_view>> named_texts);

// The device list text for a view, built once per view generation and
// reused: 1,000 users on 3 devices are 1.3 MB of JSON. The refresh that
// publishes a view builds it too (its listener, app/quota_wiring), so no
// request waits for it; passwd (who is listed, names) is read then, so it is
// at most one refresh old.
class DeviceListCache {
 public:
  using Texts = std::vector<std::pair<std::string, std::string>>;  // (name, DeviceQuota text)
  std::shared_ptr<const Texts> texts(const QuotaDevices::View& v, UserDirectory& users,
                                     const std::function<Candidates()>& candidates);

 private:
  std::mutex mu_;
  uint64_t generation_ = 0;
  std::shared_ptr<const Texts> texts_;
};

// --- writes: the qman routes' rules for a QuotaDevices device ---------------------

// A PUT / batch / default body's four limits, each optional (absent = keep).
// The kernel takes soft above a non-zero hard on ext4 but XFS silently drops
// such a write: both are refused (the kernel's own rule: invalid iff soft > hard).
// Returns "" when `u` over `current` is valid, else the 400 message.
std::string checkLimits(const LimitsUpdate& u, const QuotaFigures& current, bool single);

// The figures a uid has on a device as last read (zeros when absent).
QuotaFigures currentFigures(const DeviceSnapshot* s, uint32_t uid);

struct DeviceBatch {
  LimitsUpdate limits;
  bool preserve_if_nonzero = false;
  bool preserve_if_usage_exceeds = false;
};
struct DeviceBatchResult {
  size_t total_users = 0;
  size_t updated_users = 0;
  size_t skipped_users = 0;
  std::vector<std::string> errors;  // "uid=<n>: <text>"
};
// Batch on one device (spec §3.7 / R§4.2): eligible = managed passwd users.
DeviceBatchResult runDeviceBatch(QuotaDevices& devices, QuotaDevice& device, const std::vector<uint32_t>& eligible,
                                 const DeviceBatch& b);
// The default job on one device: every eligible user whose limits are all 0
// gets defaultLimitsFor(). Returns how many were set; errors are logged.
size_t applyDeviceDefault(QuotaDevices& devices, QuotaDevice& device, const std::vector<uint32_t>& eligible,
                          const DeviceDefault& d);

// /metrics lines for every listed user of every device (like docker's):
// dockquota_device_user_bytes{device,uid,user,kind=used|soft|hard} etc.
void appendDeviceMetrics(std::string& out, const QuotaDevices::View& v,
                         const std::function<std::string(uint32_t)>& name_of);

}  // namespace dockquota
