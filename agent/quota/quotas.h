// SPDX-License-Identifier: Apache-2.0
// Docker quotas as qman keeps them: one hard limit per uid in 1 KiB blocks
// (0 = no limit), a default per device, and the rules that set limits in bulk
// (batch, periodic default application). Limits live in the Store and are
// mirrored in memory, so a request reads them without SQLite.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/base/result.h"
#include "agent/store/store.h"

namespace dockquota {

constexpr const char* kDockerDevice = "docker";  // qman's device name and device= value

// qman's user filter (spec §3.2): 1000 <= uid <= 9999 and not nobody.
constexpr uint32_t kMinManagedUid = 1000;
constexpr uint32_t kMaxManagedUid = 9999;
constexpr uint32_t kNobodyUid = 65534;
constexpr bool managedUid(uint32_t uid) { return uid >= kMinManagedUid && uid <= kMaxManagedUid && uid != kNobodyUid; }

// The largest limit we accept: 1 PiB in KiB blocks. As bytes (2^50) it leaves
// room for 9,000 users' limits summed in 64 bits (spec L = sum of limits).
constexpr uint64_t kMaxLimitKiB = uint64_t(1) << 40;

constexpr uint64_t kGiB = uint64_t(1) << 30;

// a + b, stuck at UINT64_MAX instead of wrapping.
constexpr uint64_t satAdd(uint64_t a, uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }

// The limit the default gives a user who has none (qman's periodic job): the
// default itself, or, when usage already exceeds it, usage + 2 GiB rounded up
// to whole GiB (qman gives soft usage + 1 GiB, hard + 2 GiB; Docker has only hard).
uint64_t defaultLimitKiB(uint64_t default_kib, uint64_t usage_bytes);

// POST /remote-api/quotas/batch, Docker rules (spec §4.2).
struct BatchRequest {
  uint64_t block_hard_kib = 0;
  bool preserve_if_nonzero = false;
  bool preserve_if_usage_exceeds = false;
};
struct BatchPlan {
  std::map<uint32_t, uint64_t> set;  // uid -> new limit
  size_t total_users = 0;
  size_t skipped_users = 0;
};
// `eligible`: managed uids from passwd. `usage_of(uid)`: block_current in bytes.
BatchPlan planBatch(const std::vector<uint32_t>& eligible, const std::map<uint32_t, uint64_t>& limits,
                    const std::map<uint32_t, uint64_t>& usage_bytes, const BatchRequest& req);

// Periodic default application: every candidate with no limit gets
// defaultLimitKiB(); users with a limit are left alone.
std::map<uint32_t, uint64_t> planDefaults(const std::vector<uint32_t>& candidates,
                                          const std::map<uint32_t, uint64_t>& limits,
                                          const std::map<uint32_t, uint64_t>& usage_bytes, uint64_t default_kib);

class QuotaBook {
 public:
  using Limits = std::map<uint32_t, uint64_t>;  // uid -> KiB, only non-zero

  static Result<std::unique_ptr<QuotaBook>> load(Store& store);

  // Immutable view; swapped on every write.
  std::shared_ptr<const Limits> limits() const;
  uint64_t limitKiB(uint32_t uid) const;
  // Write-through: the store first, then memory. 0 removes the limit.
  Status setLimit(uint32_t uid, uint64_t kib);
  Status setLimits(const Limits& kib_by_uid);
  // Only for uids that have no limit when the write happens (default
  // application: never overwrites a limit set meanwhile). Returns how many were set.
  Result<size_t> setLimitsWhereUnset(const Limits& kib_by_uid);
  // Called after every successful limit change (e.g. to push it into the kernel). Set before use.
  void setChangeListener(std::function<void()> f) { on_change_ = std::move(f); }

  Result<std::optional<DeviceDefault>> deviceDefault(const std::string& device) const;
  Status setDeviceDefault(const DeviceDefault& d);

 private:
  explicit QuotaBook(Store& store, Limits limits);
  Result<size_t> write(const Limits& kib_by_uid, bool only_unset);
  Store& store_;
  mutable std::mutex mu_;  // serialises writers and guards limits_
  std::shared_ptr<const Limits> limits_;
  std::function<void()> on_change_;
};

// --- users -----------------------------------------------------------------------

struct PasswdUser {
  uint32_t uid = 0;
  std::string name;
};
using PasswdFn = std::function<std::vector<PasswdUser>()>;
// Every passwd entry (getpwent through NSS), in file order.
std::vector<PasswdUser> readPasswd();

// uid <-> name as qman sees them: passwd, else "user_<uid>". Caches the
// passwd list for `ttl` so that a request with 1,000 users costs no file reads.
class UserDirectory {
 public:
  explicit UserDirectory(PasswdFn passwd = readPasswd, std::chrono::seconds ttl = std::chrono::seconds(30));
  std::string name(uint32_t uid);
  // The uid has a passwd entry (as of the cached list).
  bool known(uint32_t uid);
  // passwd name, or "user_<uid>" for a uid not in passwd.
  std::optional<uint32_t> uid(const std::string& name);
  // A uid written out ("2001") or a name as uid() takes it: how an admin
  // names a user (config, API paths).
  std::optional<uint32_t> resolve(const std::string& uid_or_name);
  // Managed passwd users, sorted by uid.
  std::vector<PasswdUser> managed();

 private:
  void refreshLocked();
  PasswdFn passwd_;
  std::chrono::seconds ttl_;
  std::mutex mu_;
  std::chrono::steady_clock::time_point loaded_{};
  bool loaded_once_ = false;
  std::map<uint32_t, std::string> by_uid_;
  std::map<std::string, uint32_t> by_name_;
};

// The periodic job: every managed uid in `candidates` without a limit gets the
// docker device's default (defaultLimitKiB). Returns how many were set.
Result<size_t> applyDefaults(QuotaBook& book, const std::vector<uint32_t>& candidates,
                             const std::map<uint32_t, uint64_t>& usage_bytes);

}  // namespace dockquota
