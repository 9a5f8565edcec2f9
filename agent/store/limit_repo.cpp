// SPDX-License-Identifier: Apache-2.0
// Per-user limits and device defaults: see limit_repo.h.
#include "agent/store/limit_repo.h"

#include <sqlite3.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <map>
#include <string_view>

#include "agent/base/log.h"
#include "agent/store/sqlite_util.h"

namespace dockquota {

using namespace sql;

Status LimitRepo::setUserLimit(uint32_t uid, uint64_t block_hard_kib, double now) {
  return setUserLimits({{uid, block_hard_kib}}, now);
}

Status LimitRepo::setUserLimits(const std::map<uint32_t, uint64_t>& kib_by_uid, double now) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "set " + std::to_string(kib_by_uid.size()) + " user limit(s)";
  if (kib_by_uid.empty()) return {};
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s;
  Stmt upsert(db_.handle,
              "INSERT INTO user_limits (uid, block_hard_kib, updated_at) VALUES (?1, ?2, ?3) "
              "ON CONFLICT (uid) DO UPDATE SET block_hard_kib = excluded.block_hard_kib, "
              "updated_at = excluded.updated_at");
  Stmt remove(db_.handle, "DELETE FROM user_limits WHERE uid = ?1");
  for (const auto& [uid, kib] : kib_by_uid) {
    // SQLite integers are signed 64-bit: a larger value would wrap.
    if (kib > static_cast<uint64_t>(INT64_MAX)) return Error{EINVAL, "store: " + what + ": limit out of range"};
    Stmt& st = kib == 0 ? remove : upsert;
    st.reset();
    st.bind(1, uid);
    if (kib != 0) {
      st.bind(2, static_cast<int64_t>(kib));
      st.bind(3, now);
    }
    if (auto s = st.run(what + ": uid " + std::to_string(uid)); !s) return s;
  }
  return txn.commit(what);
}

Result<std::map<uint32_t, uint64_t>> LimitRepo::userLimits() const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader, "SELECT uid, block_hard_kib FROM user_limits ORDER BY uid");
  std::map<uint32_t, uint64_t> out;
  for (;;) {
    auto r = st.next("list user limits");
    if (!r) return r.error();
    if (!*r) break;
    out.emplace_hint(out.end(), st.u32(0), static_cast<uint64_t>(st.i64(1)));
  }
  return out;
}

Status LimitRepo::setDeviceDefault(const DeviceDefault& d, double now) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "set default quota of device " + d.device;
  for (uint64_t v : {d.block_soft_kib, d.block_hard_kib, d.inode_soft, d.inode_hard})
    if (v > static_cast<uint64_t>(INT64_MAX)) return Error{EINVAL, "store: " + what + ": limit out of range"};
  Stmt st(db_.handle,
          "INSERT INTO device_defaults (device, block_soft_kib, block_hard_kib, inode_soft, inode_hard, updated_at) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (device) DO UPDATE SET "
          "block_soft_kib = excluded.block_soft_kib, block_hard_kib = excluded.block_hard_kib, "
          "inode_soft = excluded.inode_soft, inode_hard = excluded.inode_hard, updated_at = excluded.updated_at");
  st.bind(1, d.device);
  st.bind(2, static_cast<int64_t>(d.block_soft_kib));
  st.bind(3, static_cast<int64_t>(d.block_hard_kib));
  st.bind(4, static_cast<int64_t>(d.inode_soft));
  st.bind(5, static_cast<int64_t>(d.inode_hard));
  st.bind(6, now);
  return st.run(what);
}

Result<std::optional<DeviceDefault>> LimitRepo::deviceDefault(const std::string& device) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader,
          "SELECT block_soft_kib, block_hard_kib, inode_soft, inode_hard FROM device_defaults WHERE device = ?1");
  st.bind(1, device);
  auto r = st.next("get default quota of device " + device);
  if (!r) return r.error();
  std::optional<DeviceDefault> out;
  if (!*r) return out;
  out = DeviceDefault{device, static_cast<uint64_t>(st.i64(0)), static_cast<uint64_t>(st.i64(1)),
                      static_cast<uint64_t>(st.i64(2)), static_cast<uint64_t>(st.i64(3))};
  return out;
}

}  // namespace dockquota
