// SPDX-License-Identifier: Apache-2.0
// The attribution store on SQLite: see store.h for the model.
//
// Schema v5: objects.seq (the change counter, see ObjectRepo::sequence())
//   and objects.missed_at (the missed-object check).
//
// Tables (schema v1):
//   objects    one row per (kind, id): names, the automatic owner (strongest
//              evidence so far; source NULL = unattributed), label, lifetime.
//   overrides  the admin owner of an object, kept apart from `objects` so that
//              clearOverride() falls back to the automatic owner underneath.
//   evidence   every attribution attempt, applied or not (the detail view).
//   meta       key/value facts about the file itself.
// Schema v2:
//   user_limits      per-uid Docker limit, 1 KiB blocks (no row = no limit).
//   device_defaults  qman's default quota per device.
//   layers           image layers by chain id: size, owner, first_seen.
//   overrides.resolver  who set an admin override.
//
// Every statement is prepared with bound parameters. The one exception is
// `PRAGMA user_version = N`, which takes no parameters; N is our own counter.
#include "agent/store/store.h"

#include <sqlite3.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <map>
#include <string_view>

#include "agent/base/log.h"
#include "agent/store/sqlite_util.h"

namespace dockquota {
namespace {

// Schema migrations, oldest first. Step i takes user_version i to i+1 and runs
// in one transaction with that bump. Never edit a step that has shipped: add a
// new one (e.g. "ALTER TABLE objects ADD COLUMN ...;") and bump kSchemaVersion.
// A step that rebuilds a table must turn foreign keys off around it itself
// (https://sqlite.org/lang_altertable.html#otheralter).
const char* const kMigrations[] = {
    // v1: the initial schema.
    R"sql(
CREATE TABLE objects (
  kind          TEXT    NOT NULL,            -- 'container', 'image', 'volume'
  id            TEXT    NOT NULL,            -- container id, 'sha256:...', volume name
  name          TEXT    NOT NULL DEFAULT '',
  parent        TEXT    NOT NULL DEFAULT '',
  -- Automatic owner: the evidence that won decide(). source NULL = unattributed.
  source        TEXT,                        -- 'label', 'audit', 'bpf'
  uid           INTEGER,
  gid           INTEGER,
  login_uid     INTEGER,                     -- NULL: the kernel said (uid_t)-1
  pid           INTEGER,
  comm          TEXT,
  exe           TEXT,
  method        TEXT,
  request_time  REAL,                        -- unix seconds
  attributed_at REAL,                        -- unix seconds (Evidence::time)
  label_user    TEXT,                        -- qman.user label: recorded, never trusted
  first_seen    REAL    NOT NULL,
  gone_at       REAL,                        -- NULL while Docker has it
  size_bytes    INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE INDEX objects_by_first_seen ON objects (kind, first_seen, id);
CREATE INDEX objects_by_name ON objects (kind, name);

CREATE TABLE overrides (
  kind          TEXT    NOT NULL,
  id            TEXT    NOT NULL,
  uid           INTEGER NOT NULL,
  gid           INTEGER NOT NULL,
  login_uid     INTEGER,
  pid           INTEGER NOT NULL,
  comm          TEXT    NOT NULL,
  exe           TEXT    NOT NULL,
  method        TEXT    NOT NULL,
  request_time  REAL    NOT NULL,
  set_at        REAL    NOT NULL,            -- Evidence::time of the override
  PRIMARY KEY (kind, id),
  FOREIGN KEY (kind, id) REFERENCES objects (kind, id) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE evidence (
  seq           INTEGER PRIMARY KEY,         -- the rowid: insertion (decision) order
  kind          TEXT    NOT NULL,
  id            TEXT    NOT NULL,
  source        TEXT    NOT NULL,            -- 'label', 'audit', 'bpf', 'admin'
  uid           INTEGER NOT NULL,
  gid           INTEGER NOT NULL,
  login_uid     INTEGER,
  pid           INTEGER NOT NULL,
  comm          TEXT    NOT NULL,
  exe           TEXT    NOT NULL,
  method        TEXT    NOT NULL,
  request_time  REAL    NOT NULL,
  time          REAL    NOT NULL,
  FOREIGN KEY (kind, id) REFERENCES objects (kind, id) ON DELETE CASCADE
);
CREATE INDEX evidence_by_object ON evidence (kind, id);

CREATE TABLE meta (
  key           TEXT    PRIMARY KEY,
  value         TEXT    NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('created_at', CAST(strftime('%s', 'now') AS TEXT));
)sql",
    // v2: quotas and measured usage. Limits are 1 KiB blocks in
    // 64-bit INTEGER columns; sizes are bytes.
    R"sql(
CREATE TABLE user_limits (
  uid           INTEGER PRIMARY KEY,         -- Linux uid
  block_hard_kib INTEGER NOT NULL CHECK (block_hard_kib > 0),  -- no row = no limit
  updated_at    REAL    NOT NULL
);

CREATE TABLE device_defaults (
  device        TEXT    PRIMARY KEY,         -- 'docker'
  block_soft_kib INTEGER NOT NULL,
  block_hard_kib INTEGER NOT NULL,
  inode_soft    INTEGER NOT NULL,
  inode_hard    INTEGER NOT NULL,
  updated_at    REAL    NOT NULL
) WITHOUT ROWID;

-- Image layers by chain id, each counted once on the host.
CREATE TABLE layers (
  id            TEXT    PRIMARY KEY,         -- chain id 'sha256:...'
  size_bytes    INTEGER NOT NULL,
  owner_uid     INTEGER,                     -- NULL = unattributed
  owner_image   TEXT    NOT NULL DEFAULT '',
  first_seen    REAL    NOT NULL
) WITHOUT ROWID;

-- Who set an admin override (qman's manual_resolver).
ALTER TABLE overrides ADD COLUMN resolver TEXT;
)sql",
    // v3: kernel project-quota ids. One row per id in use; an id
    // is free again when its row is deleted (its last object is gone).
    R"sql(
CREATE TABLE projects (
  id            INTEGER PRIMARY KEY,         -- kernel project id
  owner_kind    TEXT    NOT NULL CHECK (owner_kind IN ('user', 'container')),
  owner         TEXT    NOT NULL,            -- uid as text, or container id
  limit_bytes   INTEGER,                     -- container projects: own limit (NULL = the default)
  created_at    REAL    NOT NULL,
  UNIQUE (owner_kind, owner)
);
)sql",
    // v4: enforcement: events and their delivery, the conditions
    // already announced, the containers acted on, admin exemptions.
    R"sql(
-- Delivery state per channel: 0 not for this channel, 1 pending, 2 delivered, 3 given up.
CREATE TABLE events (
  seq           INTEGER PRIMARY KEY AUTOINCREMENT,  -- the stable id; AUTOINCREMENT: never reused
  type          TEXT    NOT NULL,
  uid           INTEGER NOT NULL,
  user          TEXT    NOT NULL,
  container_id  TEXT    NOT NULL DEFAULT '',
  detail        TEXT    NOT NULL,                   -- JSON object
  created_at    REAL    NOT NULL,
  master        INTEGER NOT NULL DEFAULT 0,
  master_at     REAL,
  mail          INTEGER NOT NULL DEFAULT 0,
  mail_at       REAL
);
CREATE INDEX events_master_pending ON events (seq) WHERE master = 1;
CREATE INDEX events_mail_pending ON events (seq) WHERE mail = 1;
CREATE INDEX events_by_uid ON events (uid, seq);

-- Conditions announced and still holding ("warning", "exceeded", ...): not re-announced.
CREATE TABLE conditions (
  uid        INTEGER NOT NULL,
  condition  TEXT    NOT NULL,
  since      REAL    NOT NULL,
  event_seq  INTEGER NOT NULL,
  PRIMARY KEY (uid, condition)
);

CREATE TABLE enforcement_actions (
  container_id  TEXT    PRIMARY KEY,
  uid           INTEGER NOT NULL,
  name          TEXT    NOT NULL,
  size_bytes    INTEGER NOT NULL,
  state         TEXT    NOT NULL CHECK (state IN ('stopping', 'stopped', 'removing', 'removed', 'spared', 'failed')),
  started_at    REAL    NOT NULL,
  stopped_at    REAL,
  remove_after  REAL,
  finished_at   REAL,
  error         TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX enforcement_open ON enforcement_actions (state) WHERE state IN ('stopping', 'stopped', 'removing');

CREATE TABLE exemptions (
  kind    TEXT NOT NULL CHECK (kind IN ('user', 'container')),
  id      TEXT NOT NULL,
  reason  TEXT NOT NULL DEFAULT '',
  set_at  REAL NOT NULL,
  PRIMARY KEY (kind, id)
);
)sql",
    // v5: removals and reconciles that cannot erase a bill, misses made
    // visible. seq orders a row's last change against the moment a
    // Docker list or inspect began (ObjectRepo::sequence()); rows from before v5
    // have 0, older than any list this agent takes.
    R"sql(
ALTER TABLE objects ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN missed_at REAL;  -- created while watched, no kernel evidence after the check delay
CREATE INDEX objects_missed ON objects (kind, id) WHERE missed_at IS NOT NULL;
)sql",
    // v6: containerd's projects in the same table (one id space for both
    // runtimes): 'ctrd' (owner "<namespace>/<id>") and 'ctrd-tenant' (owner
    // the tenant label's value). SQLite cannot alter a CHECK: the table is
    // rebuilt (nothing references it).
    R"sql(
CREATE TABLE projects_v6 (
  id            INTEGER PRIMARY KEY,         -- kernel project id
  owner_kind    TEXT    NOT NULL CHECK (owner_kind IN ('user', 'container', 'ctrd', 'ctrd-tenant')),
  owner         TEXT    NOT NULL,            -- uid as text, container id, <namespace>/<id>, tenant
  limit_bytes   INTEGER,                     -- container projects: own limit (NULL = the default)
  created_at    REAL    NOT NULL,
  UNIQUE (owner_kind, owner)
);
INSERT INTO projects_v6 SELECT id, owner_kind, owner, limit_bytes, created_at FROM projects;
DROP TABLE projects;
ALTER TABLE projects_v6 RENAME TO projects;
)sql",
};
static_assert(std::size(kMigrations) == Store::kSchemaVersion,
              "kSchemaVersion must equal the number of migration steps");

// SQLite plumbing: agent/store/sqlite_util.h.
using namespace sql;

// `sqlite_rc` (optional) gets the primary result code of a failure.
Result<int> userVersion(sqlite3* db, const std::string& what, int* sqlite_rc = nullptr) {
  Stmt st(db, "PRAGMA user_version");
  auto r = st.next(what);
  if (sqlite_rc) *sqlite_rc = st.lastError();
  if (!r) return r.error();
  if (!*r) return Error{0, "store: " + what + ": PRAGMA user_version returned no row"};
  return static_cast<int>(st.i64(0));
}

std::string describe(ObjectKind kind, const std::string& id) { return std::string(toString(kind)) + " " + id; }

}  // namespace

// --- enums ----------------------------------------------------------------------

const char* toString(ObjectKind k) {
  switch (k) {
    case ObjectKind::Container: return "container";
    case ObjectKind::Image: return "image";
    case ObjectKind::Volume: return "volume";
  }
  return "?";
}

std::optional<ObjectKind> parseObjectKind(const std::string& s) {
  if (s == "container") return ObjectKind::Container;
  if (s == "image") return ObjectKind::Image;
  if (s == "volume") return ObjectKind::Volume;
  return std::nullopt;
}

const char* toString(Source s) {
  switch (s) {
    case Source::None: return "unattributed";
    case Source::Label: return "label";
    case Source::Audit: return "audit";
    case Source::Bpf: return "bpf";
    case Source::Admin: return "admin";
  }
  return "?";
}

const char* toString(Seen s) {
  switch (s) {
    case Seen::Inserted: return "inserted";
    case Seen::Updated: return "updated";
    case Seen::Reset: return "reset";
    case Seen::Restored: return "restored";
    case Seen::Stale: return "stale";
  }
  return "?";
}

std::optional<Source> parseSource(const std::string& s) {
  if (s == "unattributed") return Source::None;
  if (s == "label") return Source::Label;
  if (s == "audit") return Source::Audit;
  if (s == "bpf") return Source::Bpf;
  if (s == "admin") return Source::Admin;
  return std::nullopt;
}

// --- Store ------------------------------------------------------------------------

const std::vector<std::string>& Store::migrations() {
  static const std::vector<std::string> steps(std::begin(kMigrations), std::end(kMigrations));
  return steps;
}

Store::Store(sqlite3* db, std::string path) : path_(std::move(path)) { db_.handle = db; }

Store::~Store() {
  std::lock_guard<std::mutex> lock(db_.mu);
  // Cheap, and keeps the query planner's statistics fresh across restarts.
  sqlite3_exec(db_.handle, "PRAGMA optimize", nullptr, nullptr, nullptr);
  sqlite3_close_v2(db_.handle);
  std::lock_guard<std::mutex> rlock(db_.read_mu);
  sqlite3_close_v2(db_.reader);
}

Result<std::unique_ptr<Store>> Store::open(const std::string& path) { return open(path, migrations()); }

namespace {

// Takes group and other bits (and set-id/sticky bits) off `path` when it has
// any, and says so: a database readable by every local user is a leak the
// admin should hear about, even once fixed.
void tightenMode(const std::string& path, mode_t mode, const char* what) {
  const mode_t now = mode & 07777;
  if ((now & 07077) == 0) return;
  const mode_t want = now & 0700;
  if (::chmod(path.c_str(), want) != 0) {
    LOG_WARN("store", "%s %s has mode %04o (open to other users) and could not be set to %04o: %s", what, path.c_str(),
             unsigned(now), unsigned(want), strerror(errno));
    return;
  }
  LOG_WARN("store", "%s %s had mode %04o (open to other users); set to %04o", what, path.c_str(), unsigned(now),
           unsigned(want));
}

// Is `name` one of the database's own files: the file itself, SQLite's
// -wal/-shm/-journal next to it, or a copy named after it (a backup)?
bool ownedByDatabase(const std::string& name, const std::string& db_name) {
  return name.compare(0, db_name.size(), db_name) == 0;
}

// The modes of the database's directory and files (kStateDirMode,
// kStateFileMode), after SQLite opened the file and before it writes.
void secureStateFiles(const std::string& dir, const std::string& path) {
  const std::string db_name = std::filesystem::path(path).filename().string();
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) tightenMode(path, st.st_mode, "database");
  bool dedicated = true;  // nothing in dir but the database's files
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!ownedByDatabase(name, db_name)) {
      dedicated = false;
      continue;
    }
    const std::string file = it->path().string();
    if (file == path) continue;
    // lstat: a symlink's own mode means nothing, and its target is not ours.
    if (::lstat(file.c_str(), &st) == 0 && S_ISREG(st.st_mode)) tightenMode(file, st.st_mode, "database file");
  }
  if (ec) dedicated = false;
  if (::stat(dir.c_str(), &st) != 0 || (st.st_mode & 077) == 0) return;
  if (dedicated) {
    tightenMode(dir, st.st_mode, "database directory");
  } else {
    // A directory shared with other files (/var/lib, a home): not ours to
    // close; the files above are 0600 all the same.
    LOG_WARN("store",
             "database directory %s has mode %04o and holds other files too: leaving its mode; the "
             "database files are %04o (give the database a directory of its own)",
             dir.c_str(), unsigned(st.st_mode & 07777), unsigned(kStateFileMode));
  }
}

}  // namespace

Status makeStateDirectory(const std::string& dir) {
  if (dir.empty()) return {};
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) return {};  // Store::open checks and tightens it
  const auto parent = std::filesystem::path(dir).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) return osError(ec.value(), "store: create " + parent.string());
  if (::mkdir(dir.c_str(), kStateDirMode) != 0 && errno != EEXIST) return osError(errno, "store: create " + dir);
  // mkdir's mode passes through the umask; say exactly what we mean.
  if (::chmod(dir.c_str(), kStateDirMode) != 0) return osError(errno, "store: chmod " + dir);
  return {};
}

namespace {
// The read-only connection, once the writer has migrated the file.
Result<sqlite3*> openReader(const std::string& path, const std::string& what) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close_v2);
  if (rc != SQLITE_OK) return sqlError(raw, rc, what + " (reader)");
  sqlite3_busy_timeout(raw, 5000);  // only without WAL can a writer hold it up
  if (auto s = execSql(raw, "PRAGMA cache_size = -512", what + " (reader)"); !s) return s.error();
  return db.release();
}
}  // namespace

Result<std::unique_ptr<Store>> Store::open(const std::string& path, const std::vector<std::string>& steps) {
  const std::string what = "open " + path;

  // SQLite would say "unable to open database file"; name the real problem.
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return osError(errno, "store: " + what + ": directory " + dir);
  if (!S_ISDIR(st.st_mode)) return osError(ENOTDIR, "store: " + what + ": " + dir);

  // A new database file is 0600 from its first byte: SQLite would create it
  // 0644 less the umask. Its -wal and -shm then get the same mode (SQLite
  // gives them the main file's).
  {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, kStateFileMode);
    if (fd >= 0) {
      const int rc = ::fchmod(fd, kStateFileMode);  // the umask may have taken bits off
      const int err = errno;
      ::close(fd);
      if (rc != 0) return osError(err, "store: " + what + ": chmod");
    } else if (errno != EEXIST) {
      return osError(errno, "store: " + what);
    }
  }

  sqlite3* raw = nullptr;
  // NOMUTEX: every use of the handle is under Db::mu.
  int rc =
      sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  std::unique_ptr<sqlite3, int (*)(sqlite3*)> db(raw, sqlite3_close_v2);
  if (rc != SQLITE_OK) return sqlError(raw, rc, what);
  sqlite3_busy_timeout(raw, 5000);  // another dockquotad or the CLI holding the write lock
  // SQLite silently opens a write-protected file read-only; say so now rather
  // than at the first write.
  if (sqlite3_db_readonly(raw, "main") == 1)
    return Error{EACCES, "store: " + what + ": the file is read-only to this process"};

  // Read before writing anything: a newer schema or a file that is not a
  // database must be left exactly as found (journal_mode=WAL rewrites the header).
  int version_rc = SQLITE_OK;
  auto version = userVersion(raw, what, &version_rc);
  if (!version) {
    if (version_rc == SQLITE_NOTADB)
      return Error{0, "store: " + what + ": file is not a SQLite database; leaving it untouched"};
    return version.error();
  }
  const int known = static_cast<int>(steps.size());
  if (*version > known)
    return Error{0, "store: " + path + " has schema version " + std::to_string(*version) +
                        ", this dockquotad knows up to " + std::to_string(known) + "; refusing to downgrade"};
  if (*version < 0) return Error{0, "store: " + path + " has invalid schema version " + std::to_string(*version)};
  // A database it is (or a new one): its modes are ours to set.
  secureStateFiles(dir, path);

  {
    Stmt wal(raw, "PRAGMA journal_mode = WAL");
    auto r = wal.next(what + ": journal_mode=WAL");
    if (!r) return r.error();
    std::string mode = *r ? wal.text(0) : "";
    if (mode != "wal")
      LOG_WARN("store", "%s: journal_mode is '%s', not 'wal' (no shared memory on this filesystem?); continuing",
               path.c_str(), mode.c_str());
  }
  // NORMAL in WAL: a power cut may lose the last commits, never corrupts.
  if (auto s = execSql(raw, "PRAGMA synchronous = NORMAL", what); !s) return s.error();
  if (auto s = execSql(raw, "PRAGMA foreign_keys = ON", what); !s) return s.error();
  // SQLite caches up to 2 MiB of pages by default, and the listings scan
  // whole tables, so it fills up and stays full. 512 KiB keeps the B-trees'
  // inner pages, which is what lookups need; scans read the rest from the
  // kernel's page cache. Measured with 10,000 containers (qman-bench): lists
  // and accounting no slower (92 and 69 ms, within noise), 1.8 MiB less RSS.
  if (auto s = execSql(raw, "PRAGMA cache_size = -512", what); !s) return s.error();

  for (int v = *version; v < known; ++v) {
    const std::string step_what = path + ": migration to schema version " + std::to_string(v + 1);
    Txn txn(raw);
    if (auto s = txn.begin(step_what); !s) return s.error();
    // Another process may have migrated while we waited for the write lock.
    auto now = userVersion(raw, step_what);
    if (!now) return now.error();
    if (*now > v) {
      if (*now > known)
        return Error{0, "store: " + path + " has schema version " + std::to_string(*now) +
                            ", this dockquotad knows up to " + std::to_string(known) + "; refusing to downgrade"};
      if (auto s = txn.commit(step_what); !s) return s.error();
      v = *now - 1;
      continue;
    }
    if (auto s = execSql(raw, steps[static_cast<size_t>(v)].c_str(), step_what); !s) return s.error();
    // PRAGMA takes no bound parameters; the number is our loop counter.
    const std::string bump = "PRAGMA user_version = " + std::to_string(v + 1);
    if (auto s = execSql(raw, bump.c_str(), step_what); !s) return s.error();
    if (auto s = txn.commit(step_what); !s) return s.error();
    LOG_INFO("store", "%s: migrated to schema version %d", path.c_str(), v + 1);
  }

  // The change counter goes on from the highest value any row holds.
  uint64_t max_seq = 0;
  bool has_seq = false;  // open(path, steps) may stop before v5
  {
    Stmt st(raw, "SELECT count(*) FROM pragma_table_info('objects') WHERE name = 'seq'");
    auto r = st.next(what + ": change counter");
    if (!r) return r.error();
    has_seq = *r && st.i64(0) > 0;
  }
  if (has_seq) {
    Stmt st(raw, "SELECT coalesce(max(seq), 0) FROM objects");
    auto r = st.next(what + ": change counter");
    if (!r) return r.error();
    if (*r) max_seq = static_cast<uint64_t>(st.i64(0));
  }
  auto reader = openReader(path, what);
  if (!reader) return reader.error();
  std::unique_ptr<Store> store(new Store(db.release(), path));
  store->db_.seq = max_seq;
  store->db_.reader = *reader;
  return store;
}

int Store::schemaVersion() const {
  std::lock_guard<std::mutex> lock(db_.mu);
  auto v = userVersion(db_.handle, "schema version of " + path_);
  return v ? *v : -1;
}

}  // namespace dockquota
