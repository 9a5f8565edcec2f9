// SPDX-License-Identifier: Apache-2.0
// Project-quota ids: see project_repo.h.
#include "agent/store/project_repo.h"

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

namespace {
ProjectRecord projectRow(const Stmt& st) {
  ProjectRecord p;
  p.id = st.u32(0);
  p.owner_kind = st.text(1);
  p.owner = st.text(2);
  if (!st.isNull(3)) p.limit_bytes = static_cast<uint64_t>(st.i64(3));
  p.created_at = st.f64(4);
  return p;
}
constexpr const char* kProjectCols = "SELECT id, owner_kind, owner, limit_bytes, created_at FROM projects ";
}  // namespace

Result<ProjectRecord> ProjectRepo::project(const std::string& kind, const std::string& owner, uint32_t lo, uint32_t hi,
                                           double now, const std::function<bool(uint32_t)>& usable) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "project id of " + kind + " " + owner;
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  Stmt find(db_.handle, std::string(kProjectCols) + "WHERE owner_kind = ?1 AND owner = ?2");
  find.bind(1, kind);
  find.bind(2, owner);
  auto r = find.next(what);
  if (!r) return r.error();
  if (*r) return projectRow(find);  // rollback of a read-only txn is harmless

  // The lowest id in [lo, hi] no row holds (and the caller accepts: e.g. the
  // kernel shows no usage for it, so it is not someone else's).
  Stmt used(db_.handle, "SELECT id FROM projects WHERE id BETWEEN ?1 AND ?2 ORDER BY id");
  used.bind(1, lo);
  used.bind(2, hi);
  uint64_t candidate = lo;
  std::optional<uint32_t> chosen;
  auto take = [&](uint64_t below) {  // try every free id in [candidate, below)
    for (; !chosen && candidate < below; ++candidate)
      if (!usable || usable(uint32_t(candidate))) chosen = uint32_t(candidate);
  };
  for (;;) {
    auto row = used.next(what);
    if (!row) return row.error();
    if (!*row) break;
    take(used.u32(0));
    if (chosen) break;
    candidate = uint64_t(used.u32(0)) + 1;
  }
  take(uint64_t(hi) + 1);
  if (!chosen)
    return Error{ENOSPC,
                 "store: " + what + ": no free project id in " + std::to_string(lo) + ".." + std::to_string(hi)};
  Stmt ins(db_.handle, "INSERT INTO projects (id, owner_kind, owner, created_at) VALUES (?1, ?2, ?3, ?4)");
  ins.bind(1, *chosen);
  ins.bind(2, kind);
  ins.bind(3, owner);
  ins.bind(4, now);
  if (auto s = ins.run(what); !s) return s.error();
  if (auto s = txn.commit(what); !s) return s.error();
  ProjectRecord p;
  p.id = *chosen;
  p.owner_kind = kind;
  p.owner = owner;
  p.created_at = now;
  return p;
}

Status ProjectRepo::releaseProject(const std::string& kind, const std::string& owner) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle, "DELETE FROM projects WHERE owner_kind = ?1 AND owner = ?2");
  st.bind(1, kind);
  st.bind(2, owner);
  return st.run("release project of " + kind + " " + owner);
}

Status ProjectRepo::renameProject(const std::string& kind, const std::string& owner, const std::string& new_owner) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "rename project of " + kind + " " + owner + " to " + new_owner;
  Stmt taken(db_.handle, "SELECT 1 FROM projects WHERE owner_kind = ?1 AND owner = ?2");
  taken.bind(1, kind);
  taken.bind(2, new_owner);
  auto r = taken.next(what);
  if (!r) return r.error();
  if (*r) return Error{EEXIST, "store: " + what + ": it has one"};
  Stmt st(db_.handle, "UPDATE projects SET owner = ?3 WHERE owner_kind = ?1 AND owner = ?2");
  st.bind(1, kind);
  st.bind(2, owner);
  st.bind(3, new_owner);
  if (auto s = st.run(what); !s) return s;
  if (sqlite3_changes(db_.handle) == 0) return Error{ENOENT, "store: " + what + ": no such project"};
  return {};
}

Status ProjectRepo::setProjectLimit(const std::string& kind, const std::string& owner, std::optional<uint64_t> bytes) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "set project limit of " + kind + " " + owner;
  if (bytes && *bytes > static_cast<uint64_t>(INT64_MAX)) return Error{EINVAL, "store: " + what + ": out of range"};
  Stmt st(db_.handle, "UPDATE projects SET limit_bytes = ?3 WHERE owner_kind = ?1 AND owner = ?2");
  st.bind(1, kind);
  st.bind(2, owner);
  if (bytes)
    st.bind(3, static_cast<int64_t>(*bytes));
  else
    st.bindNull(3);
  if (auto s = st.run(what); !s) return s;
  if (sqlite3_changes(db_.handle) == 0) return Error{ENOENT, "store: " + what + ": no such project"};
  return {};
}

Result<std::vector<ProjectRecord>> ProjectRepo::projects() const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader, std::string(kProjectCols) + "ORDER BY id");
  std::vector<ProjectRecord> out;
  for (;;) {
    auto r = st.next("list projects");
    if (!r) return r.error();
    if (!*r) break;
    out.push_back(projectRow(st));
  }
  return out;
}

}  // namespace dockquota
