// SPDX-License-Identifier: Apache-2.0
// SQLite plumbing shared by the store's translation units (store.cpp and the
// repositories, *_repo*.cpp): error text, prepared statements, transactions.
// Internal to the store: nothing outside agent/store/*.cpp includes it.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "agent/base/result.h"

namespace dockquota::sql {

// "store: <what>: <sqlite message>", with errno when SQLite got one from the OS.
inline Error sqlError(sqlite3* db, int rc, const std::string& what) {
  int code = 0;
  switch (rc & 0xff) {
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_PERM: code = db ? sqlite3_system_errno(db) : 0; break;
    default: break;
  }
  std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (code != 0) msg += std::string(" (") + std::strerror(code) + ")";
  return Error{code, "store: " + what + ": " + msg};
}

// One prepared statement. Binds are 1-based; bind failures (misuse only) are
// kept and reported by the next run()/next().
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &st_, nullptr);
    if (rc_ != SQLITE_OK) prepare_msg_ = sqlite3_errmsg(db);
  }
  Stmt(sqlite3* db, const std::string& sql) : Stmt(db, sql.c_str()) {}
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  void bind(int i, const std::string& v) {
    note(sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  void bind(int i, std::string_view v) {
    note(sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
  }
  void bind(int i, const char* v) { note(sqlite3_bind_text(st_, i, v, -1, SQLITE_STATIC)); }
  void bind(int i, int64_t v) { note(sqlite3_bind_int64(st_, i, v)); }
  void bind(int i, uint32_t v) { bind(i, static_cast<int64_t>(v)); }
  void bind(int i, double v) { note(sqlite3_bind_double(st_, i, v)); }
  void bindNull(int i) { note(sqlite3_bind_null(st_, i)); }
  void bind(int i, const std::optional<std::string>& v) { v ? bind(i, *v) : bindNull(i); }
  void bind(int i, const std::optional<uint32_t>& v) { v ? bind(i, *v) : bindNull(i); }

  // Steps once: true = a row is ready, false = done.
  Result<bool> next(const std::string& what) {
    if (rc_ != SQLITE_OK) return failed(what);
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    last_error_ = rc;
    Error e = sqlError(db_, rc, what);
    sqlite3_reset(st_);
    return e;
  }
  // Runs a statement that returns no rows (or whose rows we ignore).
  Status run(const std::string& what) {
    auto r = next(what);
    if (!r) return r.error();
    return {};
  }
  int params() const { return st_ ? sqlite3_bind_parameter_count(st_) : 0; }

  // The primary SQLite result code of the last failure (prepare or step), or SQLITE_OK.
  int lastError() const { return (rc_ != SQLITE_OK ? rc_ : last_error_) & 0xff; }

  // Ready for new binds and a new run.
  void reset() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }

  bool isNull(int col) const { return sqlite3_column_type(st_, col) == SQLITE_NULL; }
  int64_t i64(int col) const { return sqlite3_column_int64(st_, col); }
  uint32_t u32(int col) const { return static_cast<uint32_t>(sqlite3_column_int64(st_, col)); }
  double f64(int col) const { return sqlite3_column_double(st_, col); }
  std::string text(int col) const {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, col));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(st_, col))) : std::string();
  }
  void textInto(int col, std::string& out) const {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, col));
    if (p) {
      out.assign(p, static_cast<size_t>(sqlite3_column_bytes(st_, col)));
    } else {
      out.clear();
    }
  }
  // Valid until the next step/reset.
  std::string_view view(int col) const {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st_, col));
    return p ? std::string_view(p, static_cast<size_t>(sqlite3_column_bytes(st_, col))) : std::string_view();
  }

 private:
  void note(int rc) {
    if (rc != SQLITE_OK && rc_ == SQLITE_OK) {
      rc_ = rc;
      prepare_msg_ = sqlite3_errmsg(db_);
    }
  }
  Error failed(const std::string& what) const { return Error{0, "store: " + what + ": " + prepare_msg_}; }

  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  int rc_ = SQLITE_OK;  // prepare or bind failure
  int last_error_ = SQLITE_OK;
  std::string prepare_msg_;
};

// Runs SQL text we own (migration steps, transaction control, pragmas).
inline Status execSql(sqlite3* db, const char* sql, const std::string& what) {
  char* msg = nullptr;
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, &msg);
  if (rc == SQLITE_OK) return {};
  Error e{0, "store: " + what + ": " + (msg ? msg : sqlite3_errstr(rc))};
  if ((rc & 0xff) == SQLITE_IOERR || (rc & 0xff) == SQLITE_FULL) e.code = sqlite3_system_errno(db);
  sqlite3_free(msg);
  return e;
}

// BEGIN IMMEDIATE (take the write lock up front, so busy_timeout applies to
// BEGIN rather than failing mid-transaction) ... COMMIT, or ROLLBACK on scope exit.
class Txn {
 public:
  explicit Txn(sqlite3* db) : db_(db) {}
  ~Txn() {
    if (open_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;

  Status begin(const std::string& what) {
    auto st = execSql(db_, "BEGIN IMMEDIATE", what);
    if (st) open_ = true;
    return st;
  }
  Status commit(const std::string& what) {
    auto st = execSql(db_, "COMMIT", what);
    if (st) open_ = false;
    return st;  // on failure the destructor rolls back
  }

 private:
  sqlite3* db_;
  bool open_ = false;
};

}  // namespace dockquota::sql
