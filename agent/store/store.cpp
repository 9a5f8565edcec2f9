// SPDX-License-Identifier: Apache-2.0
// The attribution store on SQLite: see store.h for the model.
//
// Schema v5: objects.seq (the change counter, see Store::sequence())
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
    // Docker list or inspect began (Store::sequence()); rows from before v5
    // have 0, older than any list this agent takes.
    R"sql(
ALTER TABLE objects ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN missed_at REAL;  -- created while watched, no kernel evidence after the check delay
CREATE INDEX objects_missed ON objects (kind, id) WHERE missed_at IS NOT NULL;
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

// --- rows ---------------------------------------------------------------------

// Evidence fields in column/parameter order after (kind, id[, source]):
// uid, gid, login_uid, pid, comm, exe, method, request_time, time.
void bindEvidence(Stmt& st, int first, const Evidence& ev) {
  st.bind(first + 0, ev.uid);
  st.bind(first + 1, ev.gid);
  st.bind(first + 2, ev.login_uid);
  st.bind(first + 3, ev.pid);
  st.bind(first + 4, ev.comm);
  st.bind(first + 5, ev.exe);
  st.bind(first + 6, ev.method);
  st.bind(first + 7, ev.request_time);
  st.bind(first + 8, ev.time);
}

void readEvidence(const Stmt& st, int first, Source source, Evidence& ev) {
  ev.source = source;
  ev.uid = st.u32(first + 0);
  ev.gid = st.u32(first + 1);
  if (st.isNull(first + 2)) {
    ev.login_uid.reset();
  } else {
    ev.login_uid = st.u32(first + 2);
  }
  ev.pid = st.u32(first + 3);
  st.textInto(first + 4, ev.comm);
  st.textInto(first + 5, ev.exe);
  st.textInto(first + 6, ev.method);
  ev.request_time = st.f64(first + 7);
  ev.time = st.f64(first + 8);
}

// Columns 0..2 id, name, parent; 3 source; 4..12 automatic evidence;
// 13 label_user; 14 first_seen; 15 gone_at; 16 size_bytes; 17..25 override;
// 26 missed_at; 27 seq.
// Every query on it selects one kind, so the kind is not read back.
const std::string kSelectObject =
    "SELECT o.id, o.name, o.parent, o.source, o.uid, o.gid, o.login_uid, o.pid, o.comm, o.exe, "
    "o.method, o.request_time, o.attributed_at, o.label_user, o.first_seen, o.gone_at, o.size_bytes, "
    "v.uid, v.gid, v.login_uid, v.pid, v.comm, v.exe, v.method, v.request_time, v.set_at, "
    "o.missed_at, o.seq "
    "FROM objects o LEFT JOIN overrides v ON v.kind = o.kind AND v.id = o.id ";

// Fills `r` in place from a kSelectObject row (list() reads 10,000 of these:
// no temporaries). `automatic`, when given, gets the owner under an override.
Status readObject(const Stmt& st, ObjectKind kind, ObjectRecord& r, std::optional<Evidence>* automatic) {
  r.kind = kind;
  st.textInto(0, r.id);
  st.textInto(1, r.name);
  st.textInto(2, r.parent);
  std::optional<Source> src;
  if (!st.isNull(3)) {
    const std::string_view text = st.view(3);
    if (text == "bpf") {
      src = Source::Bpf;
    } else if (text == "audit") {
      src = Source::Audit;
    } else if (text == "label") {
      src = Source::Label;
    } else {
      return Error{0,
                   "store: " + describe(kind, r.id) + ": bad owner source '" + std::string(text) + "' in the database"};
    }
  }
  if (st.isNull(13)) {
    r.label_user.reset();
  } else {
    st.textInto(13, r.label_user.emplace());
  }
  r.first_seen = st.f64(14);
  if (st.isNull(15)) {
    r.gone_at.reset();
  } else {
    r.gone_at = st.f64(15);
  }
  r.size_bytes = static_cast<uint64_t>(st.i64(16));
  if (st.isNull(26)) {
    r.missed_at.reset();
  } else {
    r.missed_at = st.f64(26);
  }
  r.seq = static_cast<uint64_t>(st.i64(27));

  const bool overridden = !st.isNull(17);
  if (overridden) {
    readEvidence(st, 17, Source::Admin, r.owner.emplace());
  } else if (src) {
    readEvidence(st, 4, *src, r.owner.emplace());
  } else {
    r.owner.reset();
  }
  if (automatic) {
    if (!src) {
      automatic->reset();
    } else if (overridden) {
      readEvidence(st, 4, *src, automatic->emplace());
    } else {
      *automatic = r.owner;
    }
  }
  return {};
}

// An object as stored: the effective record plus the layer under an override.
struct Row {
  ObjectRecord rec;  // owner = override if any, else automatic
  std::optional<Evidence> automatic;
  bool overridden() const { return rec.owner && rec.owner->source == Source::Admin; }
};

Result<std::optional<Row>> loadRow(sqlite3* db, ObjectKind kind, const std::string& id, const std::string& what) {
  static const std::string sql = kSelectObject + "WHERE o.kind = ?1 AND o.id = ?2";
  Stmt st(db, sql);
  st.bind(1, toString(kind));
  st.bind(2, id);
  auto r = st.next(what);
  if (!r) return r.error();
  std::optional<Row> row;
  if (!*r) return row;
  if (auto s = readObject(st, kind, row.emplace().rec, &row->automatic); !s) return s.error();
  return row;
}

Status insertObject(sqlite3* db, ObjectKind kind, const std::string& id, const std::string& name,
                    const std::string& parent, const std::optional<std::string>& label, double first_seen, uint64_t seq,
                    const std::string& what) {
  Stmt st(db,
          "INSERT INTO objects (kind, id, name, parent, label_user, first_seen, seq) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, name);
  st.bind(4, parent);
  st.bind(5, label);
  st.bind(6, first_seen);
  st.bind(7, static_cast<int64_t>(seq));
  return st.run(what);
}

// Sets objects.seq (the row changed now).
Status touchObject(sqlite3* db, ObjectKind kind, const std::string& id, uint64_t seq, const std::string& what) {
  Stmt st(db, "UPDATE objects SET seq = ?3 WHERE kind = ?1 AND id = ?2");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, static_cast<int64_t>(seq));
  return st.run(what);
}

// A gone row whose object Docker still has: live again, owner, override and evidence kept.
Status restoreObject(sqlite3* db, ObjectKind kind, const std::string& id, uint64_t seq, const std::string& what) {
  Stmt st(db, "UPDATE objects SET gone_at = NULL, seq = ?3 WHERE kind = ?1 AND id = ?2");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, static_cast<int64_t>(seq));
  return st.run(what);
}

// A gone id that Docker has again is a new object with a reused name: forget
// the old one's owner, override and evidence, keep nothing but the key.
Status resetObject(sqlite3* db, ObjectKind kind, const std::string& id, const std::string& name,
                   const std::string& parent, const std::optional<std::string>& label, double first_seen, uint64_t seq,
                   const std::string& what) {
  {
    Stmt st(db,
            "UPDATE objects SET name = ?3, parent = ?4, label_user = ?5, first_seen = ?6, gone_at = NULL, "
            "size_bytes = 0, source = NULL, uid = NULL, gid = NULL, login_uid = NULL, pid = NULL, "
            "comm = NULL, exe = NULL, method = NULL, request_time = NULL, attributed_at = NULL, "
            "missed_at = NULL, seq = ?7 "
            "WHERE kind = ?1 AND id = ?2");
    st.bind(1, toString(kind));
    st.bind(2, id);
    st.bind(3, name);
    st.bind(4, parent);
    st.bind(5, label);
    st.bind(6, first_seen);
    st.bind(7, static_cast<int64_t>(seq));
    if (auto s = st.run(what); !s) return s;
  }
  for (const char* sql :
       {"DELETE FROM overrides WHERE kind = ?1 AND id = ?2", "DELETE FROM evidence WHERE kind = ?1 AND id = ?2"}) {
    Stmt st(db, sql);
    st.bind(1, toString(kind));
    st.bind(2, id);
    if (auto s = st.run(what); !s) return s;
  }
  return {};
}

Status insertEvidence(sqlite3* db, ObjectKind kind, const std::string& id, const Evidence& ev,
                      const std::string& what) {
  Stmt st(db,
          "INSERT INTO evidence (kind, id, source, uid, gid, login_uid, pid, comm, exe, method, request_time, time) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, toString(ev.source));
  bindEvidence(st, 4, ev);
  return st.run(what);
}

Status upsertOverride(sqlite3* db, ObjectKind kind, const std::string& id, const Evidence& ev,
                      const std::string& what) {
  Stmt st(db,
          "INSERT INTO overrides (kind, id, uid, gid, login_uid, pid, comm, exe, method, request_time, set_at) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) "
          "ON CONFLICT (kind, id) DO UPDATE SET uid = excluded.uid, gid = excluded.gid, "
          "login_uid = excluded.login_uid, pid = excluded.pid, comm = excluded.comm, exe = excluded.exe, "
          "method = excluded.method, request_time = excluded.request_time, set_at = excluded.set_at");
  st.bind(1, toString(kind));
  st.bind(2, id);
  bindEvidence(st, 3, ev);
  return st.run(what);
}

// --- join rules ----------------------------------------------------------------

bool isKernel(Source s) { return s == Source::Bpf || s == Source::Audit; }

// None < Label < kernel (Audit = Bpf: the first of the two stays) < Admin.
int rank(Source s) {
  switch (s) {
    case Source::None: return 0;
    case Source::Label: return 1;
    case Source::Audit:
    case Source::Bpf: return 2;
    case Source::Admin: return 3;
  }
  return 0;
}

// Clock granularity between the request probe and the store's first_seen.
constexpr double kSeenSlackSeconds = 1.0;

// A gone row, and Docker was seen to have its id (store.h, noteSeen()).
Seen reviveDecision(ObjectKind kind, const Row& row, std::optional<uint64_t> observed_since) {
  if (observed_since && (*observed_since == 0 || row.rec.seq > *observed_since)) return Seen::Stale;
  // Container ids are random and never reused: Docker still has this very
  // object, so the gone mark was wrong and the bill stands.
  if (kind == ObjectKind::Container) return Seen::Restored;
  // An owner whose reply came after the gone mark is about the object Docker has now.
  const double gone = *row.rec.gone_at;
  if ((row.automatic && row.automatic->time >= gone) || (row.overridden() && row.rec.owner->time >= gone))
    return Seen::Restored;
  return Seen::Reset;
}

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

// --- decide ---------------------------------------------------------------------

Decision decide(const ObjectRecord* existing, const Evidence& ev, bool brings_new) {
  if (ev.source == Source::Admin) return Decision::Attribute;
  if (ev.source == Source::None) return Decision::Keep;  // "no evidence" attributes nothing
  if (existing == nullptr) return Decision::Attribute;

  // An owner whose source is None is as good as none.
  const Source owner = existing->owner ? existing->owner->source : Source::None;
  if (owner == Source::Admin) return Decision::Keep;

  if (brings_new) {
    // Only this call can have made it: stronger evidence wins, equal keeps the
    // first (Bpf vs Audit, two labels, or a kernel conflict the caller logs).
    return rank(ev.source) > rank(owner) ? Decision::Attribute : Decision::Keep;
  }

  // pull/load/tag may find the object already there: credit the caller only if
  // the object appeared while its request ran. An object owned only by a label
  // is treated like an unattributed one for kernel evidence (kernel beats label,
  // but only when this request could have brought the object).
  if (rank(ev.source) <= rank(owner)) return Decision::Keep;
  return existing->first_seen >= ev.request_time - kSeenSlackSeconds ? Decision::Attribute : Decision::Keep;
}

// --- Store ------------------------------------------------------------------------

const std::vector<std::string>& Store::migrations() {
  static const std::vector<std::string> steps(std::begin(kMigrations), std::end(kMigrations));
  return steps;
}

Store::Store(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

Store::~Store() {
  std::lock_guard<std::mutex> lock(mu_);
  // Cheap, and keeps the query planner's statistics fresh across restarts.
  sqlite3_exec(db_, "PRAGMA optimize", nullptr, nullptr, nullptr);
  sqlite3_close_v2(db_);
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
  // NOMUTEX: every use of the handle is under Store::mu_.
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
  std::unique_ptr<Store> store(new Store(db.release(), path));
  store->seq_ = max_seq;
  return store;
}

uint64_t Store::sequence() const {
  std::lock_guard<std::mutex> lock(mu_);
  return seq_;
}

int Store::schemaVersion() const {
  std::lock_guard<std::mutex> lock(mu_);
  auto v = userVersion(db_, "schema version of " + path_);
  return v ? *v : -1;
}

Status Store::noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                       const std::optional<std::string>& label_user, double now) {
  auto r = noteSeen(kind, id, name, parent, label_user, now, std::nullopt);
  if (!r) return r.error();
  return {};
}

Result<Seen> Store::noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                             const std::optional<std::string>& label_user, double now,
                             std::optional<uint64_t> observed_since) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "note " + describe(kind, id);
  // An empty label is "no label", as Docker reports it.
  std::optional<std::string> label = label_user && !label_user->empty() ? label_user : std::nullopt;

  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s.error();
  auto loaded = loadRow(db_, kind, id, what);
  if (!loaded) return loaded.error();
  const std::optional<Row>& row = *loaded;
  Seen seen = Seen::Updated;
  if (!row) {
    seen = Seen::Inserted;
    if (auto s = insertObject(db_, kind, id, name, parent, label, now, nextSeq(), what); !s) return s.error();
  } else if (row->rec.gone_at) {
    seen = reviveDecision(kind, *row, observed_since);
    if (seen == Seen::Stale) return seen;  // nothing written: rollback of an unchanged txn
    if (seen == Seen::Reset) {
      if (auto s = resetObject(db_, kind, id, name, parent, label, now, nextSeq(), what); !s) return s.error();
    } else {
      LOG_WARN("store", "%s was marked gone at %.3f but Docker has it: live again, owner kept",
               describe(kind, id).c_str(), *row->rec.gone_at);
      if (auto s = restoreObject(db_, kind, id, nextSeq(), what); !s) return s.error();
    }
  }
  if (seen == Seen::Updated || seen == Seen::Restored) {
    Stmt st(db_,
            "UPDATE objects SET name = CASE WHEN ?3 = '' THEN name ELSE ?3 END, "
            "parent = CASE WHEN ?4 = '' THEN parent ELSE ?4 END, label_user = COALESCE(?5, label_user) "
            "WHERE kind = ?1 AND id = ?2");
    st.bind(1, toString(kind));
    st.bind(2, id);
    st.bind(3, name);
    st.bind(4, parent);
    st.bind(5, label);
    if (auto s = st.run(what); !s) return s.error();
  }
  if (auto s = txn.commit(what); !s) return s.error();
  return seen;
}

void Store::setOwnerListener(ObjectListener f) {
  std::lock_guard<std::mutex> l(listener_mu_);
  on_owner_ = std::move(f);
}

void Store::ownerChanged(ObjectKind kind, const std::string& id) {
  ObjectListener f;
  {
    std::lock_guard<std::mutex> l(listener_mu_);
    f = on_owner_;
  }
  if (f) f(kind, id);
}

Result<bool> Store::attribute(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new) {
  auto changed = attributeTxn(kind, id, ev, brings_new);
  if (changed && *changed) ownerChanged(kind, id);
  return changed;
}

Result<bool> Store::attributeTxn(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "attribute " + describe(kind, id);

  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s.error();
  auto loaded = loadRow(db_, kind, id, what);
  if (!loaded) return loaded.error();
  std::optional<Row>& row = *loaded;

  // A gone id whose request began after it went is a new object with a reused
  // name (volume, re-pulled image). Evidence whose request began earlier is
  // late news about the old object: record it there.
  bool fresh = !row;
  const uint64_t seq = nextSeq();  // every attribution attempt is a change (Store::reconcile)
  if (!row) {
    if (auto s = insertObject(db_, kind, id, "", "", std::nullopt, ev.time, seq, what); !s) return s.error();
  } else if (row->rec.gone_at && ev.request_time >= *row->rec.gone_at) {
    if (auto s = resetObject(db_, kind, id, "", "", std::nullopt, ev.time, seq, what); !s) return s.error();
    fresh = true;
  } else if (auto s = touchObject(db_, kind, id, seq, what); !s) {
    return s.error();
  }

  bool changed = false;
  if (ev.source == Source::Admin) {
    if (auto s = upsertOverride(db_, kind, id, ev, what); !s) return s.error();
    changed = true;
  } else {
    // Decide on the automatic layer, so that an override in force still lets
    // it improve underneath (clearOverride() returns to it).
    ObjectRecord automatic;
    if (!fresh) {
      automatic = row->rec;
      automatic.owner = row->automatic;
    }
    Decision d = decide(fresh ? nullptr : &automatic, ev, brings_new);
    if (d == Decision::Attribute) {
      Stmt st(db_,
              "UPDATE objects SET source = ?3, uid = ?4, gid = ?5, login_uid = ?6, pid = ?7, comm = ?8, "
              "exe = ?9, method = ?10, request_time = ?11, attributed_at = ?12 WHERE kind = ?1 AND id = ?2");
      st.bind(1, toString(kind));
      st.bind(2, id);
      st.bind(3, toString(ev.source));
      bindEvidence(st, 4, ev);
      if (auto s = st.run(what); !s) return s.error();
      changed = fresh || !row->overridden();
    } else if (brings_new && !fresh && automatic.owner && isKernel(automatic.owner->source) && isKernel(ev.source) &&
               automatic.owner->uid != ev.uid) {
      // Ids of new objects are unique, so two creators means a probe bug or a
      // reused volume name we did not see go.
      LOG_WARN("store", "%s: %s evidence for uid %u (pid %u %s, %s) ignored: already owned by uid %u (%s, %s)",
               describe(kind, id).c_str(), toString(ev.source), ev.uid, ev.pid, ev.comm.c_str(), ev.method.c_str(),
               automatic.owner->uid, toString(automatic.owner->source), automatic.owner->method.c_str());
    }
  }

  if (auto s = insertEvidence(db_, kind, id, ev, what); !s) return s.error();
  if (auto s = txn.commit(what); !s) return s.error();
  return changed;
}

Status Store::setOverride(ObjectKind kind, const std::string& id, const Evidence& ev) {
  return setOverride(kind, id, ev, "");
}

Status Store::setOverride(ObjectKind kind, const std::string& id, const Evidence& ev, const std::string& resolver) {
  auto st = setOverrideTxn(kind, id, ev, resolver);
  if (st) ownerChanged(kind, id);
  return st;
}

Status Store::setOverrideTxn(ObjectKind kind, const std::string& id, const Evidence& ev, const std::string& resolver) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "set override on " + describe(kind, id);
  Evidence admin = ev;
  admin.source = Source::Admin;

  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s;
  auto row = loadRow(db_, kind, id, what);
  if (!row) return row.error();
  if (!*row) return osError(ENOENT, "store: " + what + ": no such object");
  if (auto s = upsertOverride(db_, kind, id, admin, what); !s) return s;
  {
    Stmt st(db_, "UPDATE overrides SET resolver = ?3 WHERE kind = ?1 AND id = ?2");
    st.bind(1, toString(kind));
    st.bind(2, id);
    st.bind(3, resolver);
    if (auto s = st.run(what); !s) return s;
  }
  if (auto s = insertEvidence(db_, kind, id, admin, what); !s) return s;
  return txn.commit(what);
}

Status Store::clearOverride(ObjectKind kind, const std::string& id) {
  auto st = clearOverrideTxn(kind, id);
  if (st) ownerChanged(kind, id);
  return st;
}

Status Store::clearOverrideTxn(ObjectKind kind, const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "clear override on " + describe(kind, id);

  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s;
  auto row = loadRow(db_, kind, id, what);
  if (!row) return row.error();
  if (!*row) return osError(ENOENT, "store: " + what + ": no such object");
  Stmt st(db_, "DELETE FROM overrides WHERE kind = ?1 AND id = ?2");
  st.bind(1, toString(kind));
  st.bind(2, id);
  if (auto s = st.run(what); !s) return s;
  return txn.commit(what);
}

Result<bool> Store::markGone(ObjectKind kind, const std::string& id, double now,
                             std::optional<uint64_t> unless_changed_after) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_,
          "UPDATE objects SET gone_at = ?3, seq = ?4 WHERE kind = ?1 AND id = ?2 AND gone_at IS NULL "
          "AND (?5 IS NULL OR seq <= ?5)");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, now);
  st.bind(4, static_cast<int64_t>(seq_ + 1));
  if (unless_changed_after) {
    st.bind(5, static_cast<int64_t>(*unless_changed_after));
  } else {
    st.bindNull(5);
  }
  if (auto s = st.run("mark " + describe(kind, id) + " gone"); !s) return s.error();
  if (sqlite3_changes(db_) == 0) return false;
  nextSeq();
  return true;
}

Result<ReconcileResult> Store::reconcile(ObjectKind kind, const std::set<std::string>& present, double now,
                                         std::optional<uint64_t> listed_after) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = std::string("reconcile ") + toString(kind) + "s";
  ReconcileResult out;

  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s.error();

  struct Known {
    bool live;
    uint64_t seq;
  };
  std::map<std::string, Known> known;
  {
    Stmt st(db_, "SELECT id, gone_at IS NULL, seq FROM objects WHERE kind = ?1");
    st.bind(1, toString(kind));
    for (;;) {
      auto r = st.next(what);
      if (!r) return r.error();
      if (!*r) break;
      known.emplace(st.text(0), Known{st.i64(1) != 0, static_cast<uint64_t>(st.i64(2))});
    }
  }
  auto recent = [&](const Known& k) { return listed_after && k.seq > *listed_after; };

  Stmt gone(db_, "UPDATE objects SET gone_at = ?3, seq = ?4 WHERE kind = ?1 AND id = ?2");
  for (const auto& [id, k] : known) {
    if (!k.live || present.count(id)) continue;
    // Inserted or attributed after the list began: the list cannot know it.
    if (recent(k)) {
      ++out.kept_recent;
      out.kept_ids.push_back(id);
      continue;
    }
    gone.reset();
    gone.bind(1, toString(kind));
    gone.bind(2, id);
    gone.bind(3, now);
    gone.bind(4, static_cast<int64_t>(nextSeq()));
    if (auto s = gone.run(what + ": " + id); !s) return s.error();
    ++out.gone;
  }

  Stmt insert(db_, "INSERT INTO objects (kind, id, first_seen, seq) VALUES (?1, ?2, ?3, ?4)");
  for (const auto& id : present) {
    auto it = known.find(id);
    if (it == known.end()) {
      insert.reset();
      insert.bind(1, toString(kind));
      insert.bind(2, id);
      insert.bind(3, now);
      insert.bind(4, static_cast<int64_t>(nextSeq()));
      if (auto s = insert.run(what + ": " + id); !s) return s.error();
      ++out.added;
    } else if (!it->second.live) {
      auto row = loadRow(db_, kind, id, what + ": " + id);
      if (!row) return row.error();
      if (!*row) continue;
      switch (reviveDecision(kind, **row, listed_after)) {
        case Seen::Stale: ++out.stale; break;
        case Seen::Reset:
          if (auto s = resetObject(db_, kind, id, "", "", std::nullopt, now, nextSeq(), what + ": " + id); !s)
            return s.error();
          ++out.revived;
          break;
        default:
          LOG_WARN("store", "%s was marked gone at %.3f but Docker lists it: live again, owner kept",
                   describe(kind, id).c_str(), *(*row)->rec.gone_at);
          if (auto s = restoreObject(db_, kind, id, nextSeq(), what + ": " + id); !s) return s.error();
          ++out.restored;
          break;
      }
    }
  }

  if (auto s = txn.commit(what); !s) return s.error();
  return out;
}

Result<bool> Store::markMissed(ObjectKind kind, const std::string& id, double now, double created_at) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "flag " + describe(kind, id) + " missed";
  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s.error();
  auto row = loadRow(db_, kind, id, what);
  if (!row) return row.error();
  if (!*row) {
    if (auto s = insertObject(db_, kind, id, "", "", std::nullopt, now, nextSeq(), what); !s) return s.error();
  } else if ((*row)->rec.missed_at || (*row)->rec.first_seen < created_at - kSeenSlackSeconds) {
    return false;
  } else {
    const auto& owner = (*row)->rec.owner;
    if (owner && (isKernel(owner->source) || owner->source == Source::Admin)) return false;
    if ((*row)->automatic && isKernel((*row)->automatic->source)) return false;
  }
  Stmt st(db_, "UPDATE objects SET missed_at = ?3 WHERE kind = ?1 AND id = ?2");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, now);
  if (auto s = st.run(what); !s) return s.error();
  if (auto s = txn.commit(what); !s) return s.error();
  return true;
}

Result<size_t> Store::unresolvedMissed() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_,
          "SELECT count(*) FROM objects o WHERE o.missed_at IS NOT NULL AND o.gone_at IS NULL "
          "AND (o.source IS NULL OR o.source NOT IN ('bpf', 'audit')) "
          "AND NOT EXISTS (SELECT 1 FROM overrides v WHERE v.kind = o.kind AND v.id = o.id)");
  auto r = st.next("count unresolved missed objects");
  if (!r) return r.error();
  return *r ? static_cast<size_t>(st.i64(0)) : 0;
}

Result<std::optional<ObjectRecord>> Store::get(ObjectKind kind, const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto row = loadRow(db_, kind, id, "get " + describe(kind, id));
  if (!row) return row.error();
  if (!*row) return std::optional<ObjectRecord>();
  return std::optional<ObjectRecord>(std::move((*row)->rec));
}

namespace {
// Rows of list() and forEach(), in their order, after (first_seen, id) `after`
// when given and at most `limit` of them (0: all): `slot()` gives the record
// each row is read into. Returns how many were read.
Result<size_t> scanObjects(sqlite3* db, ObjectKind kind, bool include_gone,
                           const std::optional<std::pair<double, std::string>>& after, size_t limit,
                           const std::string& what, const std::function<ObjectRecord&()>& slot) {
  // Two texts, not one with "(?3 OR (first_seen, id) > ...)": behind an OR
  // SQLite cannot start the index range there, and every batch would scan
  // from the first row.
  static const std::string from_start = kSelectObject +
                                        "WHERE o.kind = ?1 AND (?2 OR o.gone_at IS NULL) "
                                        "ORDER BY o.first_seen, o.id LIMIT ?3";
  static const std::string from_after =
      kSelectObject +
      "WHERE o.kind = ?1 AND (?2 OR o.gone_at IS NULL) AND (o.first_seen, o.id) > (?4, ?5) "
      "ORDER BY o.first_seen, o.id LIMIT ?3";
  Stmt st(db, after ? from_after : from_start);
  st.bind(1, toString(kind));
  st.bind(2, static_cast<int64_t>(include_gone));
  st.bind(3, limit ? static_cast<int64_t>(limit) : int64_t{-1});
  if (after) {
    st.bind(4, after->first);
    st.bind(5, after->second);
  }
  size_t n = 0;
  for (;; ++n) {
    auto r = st.next(what);
    if (!r) return r.error();
    if (!*r) return n;
    if (auto s = readObject(st, kind, slot(), nullptr); !s) return s.error();
  }
}
}  // namespace

Result<size_t> Store::count(ObjectKind kind, bool include_gone) const {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt count(db_, "SELECT count(*) FROM objects WHERE kind = ?1 AND (?2 OR gone_at IS NULL)");
  count.bind(1, toString(kind));
  count.bind(2, static_cast<int64_t>(include_gone));
  auto r = count.next(std::string("count ") + toString(kind) + "s");
  if (!r) return r.error();
  return *r ? static_cast<size_t>(count.i64(0)) : 0;
}

Result<std::vector<ObjectRecord>> Store::list(ObjectKind kind, bool include_gone) const {
  std::vector<ObjectRecord> out;
  // Sized up front: growing a vector of ObjectRecord moves every record ~14
  // times. (Objects added meanwhile only make it grow once.)
  auto n = count(kind, include_gone);
  if (!n) return n.error();
  out.reserve(*n);
  std::lock_guard<std::mutex> lock(mu_);
  auto r = scanObjects(db_, kind, include_gone, std::nullopt, 0, std::string("list ") + toString(kind) + "s",
                       [&]() -> ObjectRecord& { return out.emplace_back(); });
  if (!r) return r.error();
  return out;
}

Status Store::forEach(ObjectKind kind, const std::function<void(const ObjectRecord&)>& fn, bool include_gone) const {
  // Read under the lock a batch at a time; `fn` runs without it.
  constexpr size_t kBatch = 256;
  const std::string what = std::string("list ") + toString(kind) + "s";
  std::vector<ObjectRecord> batch(kBatch);
  std::optional<std::pair<double, std::string>> after;
  for (;;) {
    size_t i = 0;
    Result<size_t> n = size_t{0};
    {
      std::lock_guard<std::mutex> lock(mu_);
      n = scanObjects(db_, kind, include_gone, after, kBatch, what, [&]() -> ObjectRecord& { return batch[i++]; });
    }
    if (!n) return n.error();
    for (size_t j = 0; j < *n; j++) fn(batch[j]);
    if (*n < kBatch) return {};
    after.emplace(batch[kBatch - 1].first_seen, batch[kBatch - 1].id);
  }
}

Result<std::optional<std::string>> Store::resolve(ObjectKind kind, const std::string& ref) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = std::string("resolve ") + toString(kind) + " '" + ref + "'";
  using Found = std::optional<std::string>;
  if (ref.empty()) return Found();

  // Up to two live ids matching `sql` with ?2 = ref and ?3 = alt: one is an
  // answer, two is ambiguous.
  auto lookup = [&](const char* sql, const std::optional<std::string>& alt) -> Result<std::vector<std::string>> {
    Stmt st(db_, sql);
    st.bind(1, toString(kind));
    st.bind(2, ref);
    if (st.params() >= 3) st.bind(3, alt);
    std::vector<std::string> ids;
    for (;;) {
      auto r = st.next(what);
      if (!r) return r.error();
      if (!*r) break;
      ids.push_back(st.text(0));
    }
    return ids;
  };

  // Docker's order: full id, then name, then a unique id prefix.
  auto exact = lookup("SELECT id FROM objects WHERE kind = ?1 AND id = ?2 AND gone_at IS NULL", std::nullopt);
  if (!exact) return exact.error();
  if (!exact->empty()) return Found(exact->front());

  auto named = lookup("SELECT id FROM objects WHERE kind = ?1 AND name = ?2 AND gone_at IS NULL LIMIT 2", std::nullopt);
  if (!named) return named.error();
  if (named->size() == 1) return Found(named->front());
  if (named->size() > 1) return Found();

  // Images: "sha256:abcd" and "abcd" both name the digest. The 4-character
  // minimum counts digest characters, and a piece of "sha256:" itself ("sha2")
  // is no digest prefix, or it would match every image.
  static const std::string kDigest = "sha256:";
  std::optional<std::string> alt;
  size_t significant = ref.size();
  if (kind == ObjectKind::Image) {
    if (ref.compare(0, kDigest.size(), kDigest) == 0) {
      significant = ref.size() - kDigest.size();
    } else if (kDigest.compare(0, ref.size(), ref) == 0) {
      return Found();
    } else {
      alt = kDigest + ref;
    }
  }
  if (significant < 4) return Found();
  // Prefix by substr(), not LIKE/GLOB, so '%', '_', '*' in a ref are literal.
  auto prefixed = lookup(
      "SELECT id FROM objects WHERE kind = ?1 AND gone_at IS NULL "
      "AND (substr(id, 1, length(?2)) = ?2 OR substr(id, 1, length(?3)) = ?3) LIMIT 2",
      alt);
  if (!prefixed) return prefixed.error();
  if (prefixed->size() == 1) return Found(prefixed->front());
  return Found();
}

Result<std::vector<Evidence>> Store::evidence(ObjectKind kind, const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "evidence for " + describe(kind, id);
  Stmt st(db_,
          "SELECT source, uid, gid, login_uid, pid, comm, exe, method, request_time, time "
          "FROM evidence WHERE kind = ?1 AND id = ?2 ORDER BY seq");
  st.bind(1, toString(kind));
  st.bind(2, id);
  std::vector<Evidence> out;
  for (;;) {
    auto r = st.next(what);
    if (!r) return r.error();
    if (!*r) break;
    auto src = parseSource(st.text(0));
    if (!src) return Error{0, "store: " + what + ": bad source '" + st.text(0) + "' in the database"};
    readEvidence(st, 1, *src, out.emplace_back());
  }
  return out;
}

// --- v2: quotas and usage ------------------------------------------------------

Status Store::setUserLimit(uint32_t uid, uint64_t block_hard_kib, double now) {
  return setUserLimits({{uid, block_hard_kib}}, now);
}

Status Store::setUserLimits(const std::map<uint32_t, uint64_t>& kib_by_uid, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "set " + std::to_string(kib_by_uid.size()) + " user limit(s)";
  if (kib_by_uid.empty()) return {};
  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s;
  Stmt upsert(db_,
              "INSERT INTO user_limits (uid, block_hard_kib, updated_at) VALUES (?1, ?2, ?3) "
              "ON CONFLICT (uid) DO UPDATE SET block_hard_kib = excluded.block_hard_kib, "
              "updated_at = excluded.updated_at");
  Stmt remove(db_, "DELETE FROM user_limits WHERE uid = ?1");
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

Result<std::map<uint32_t, uint64_t>> Store::userLimits() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, "SELECT uid, block_hard_kib FROM user_limits ORDER BY uid");
  std::map<uint32_t, uint64_t> out;
  for (;;) {
    auto r = st.next("list user limits");
    if (!r) return r.error();
    if (!*r) break;
    out.emplace_hint(out.end(), st.u32(0), static_cast<uint64_t>(st.i64(1)));
  }
  return out;
}

// --- v3: project ids ---------------------------------------------------------

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

Result<ProjectRecord> Store::project(const std::string& kind, const std::string& owner, uint32_t lo, uint32_t hi,
                                     double now, const std::function<bool(uint32_t)>& usable) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "project id of " + kind + " " + owner;
  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s.error();
  Stmt find(db_, std::string(kProjectCols) + "WHERE owner_kind = ?1 AND owner = ?2");
  find.bind(1, kind);
  find.bind(2, owner);
  auto r = find.next(what);
  if (!r) return r.error();
  if (*r) return projectRow(find);  // rollback of a read-only txn is harmless

  // The lowest id in [lo, hi] no row holds (and the caller accepts: e.g. the
  // kernel shows no usage for it, so it is not someone else's).
  Stmt used(db_, "SELECT id FROM projects WHERE id BETWEEN ?1 AND ?2 ORDER BY id");
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
  Stmt ins(db_, "INSERT INTO projects (id, owner_kind, owner, created_at) VALUES (?1, ?2, ?3, ?4)");
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

Status Store::releaseProject(const std::string& kind, const std::string& owner) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, "DELETE FROM projects WHERE owner_kind = ?1 AND owner = ?2");
  st.bind(1, kind);
  st.bind(2, owner);
  return st.run("release project of " + kind + " " + owner);
}

Status Store::renameProject(const std::string& kind, const std::string& owner, const std::string& new_owner) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "rename project of " + kind + " " + owner + " to " + new_owner;
  Stmt taken(db_, "SELECT 1 FROM projects WHERE owner_kind = ?1 AND owner = ?2");
  taken.bind(1, kind);
  taken.bind(2, new_owner);
  auto r = taken.next(what);
  if (!r) return r.error();
  if (*r) return Error{EEXIST, "store: " + what + ": it has one"};
  Stmt st(db_, "UPDATE projects SET owner = ?3 WHERE owner_kind = ?1 AND owner = ?2");
  st.bind(1, kind);
  st.bind(2, owner);
  st.bind(3, new_owner);
  if (auto s = st.run(what); !s) return s;
  if (sqlite3_changes(db_) == 0) return Error{ENOENT, "store: " + what + ": no such project"};
  return {};
}

Status Store::setProjectLimit(const std::string& kind, const std::string& owner, std::optional<uint64_t> bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "set project limit of " + kind + " " + owner;
  if (bytes && *bytes > static_cast<uint64_t>(INT64_MAX)) return Error{EINVAL, "store: " + what + ": out of range"};
  Stmt st(db_, "UPDATE projects SET limit_bytes = ?3 WHERE owner_kind = ?1 AND owner = ?2");
  st.bind(1, kind);
  st.bind(2, owner);
  if (bytes)
    st.bind(3, static_cast<int64_t>(*bytes));
  else
    st.bindNull(3);
  if (auto s = st.run(what); !s) return s;
  if (sqlite3_changes(db_) == 0) return Error{ENOENT, "store: " + what + ": no such project"};
  return {};
}

Result<std::vector<ProjectRecord>> Store::projects() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, std::string(kProjectCols) + "ORDER BY id");
  std::vector<ProjectRecord> out;
  for (;;) {
    auto r = st.next("list projects");
    if (!r) return r.error();
    if (!*r) break;
    out.push_back(projectRow(st));
  }
  return out;
}

Status Store::setDeviceDefault(const DeviceDefault& d, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "set default quota of device " + d.device;
  for (uint64_t v : {d.block_soft_kib, d.block_hard_kib, d.inode_soft, d.inode_hard})
    if (v > static_cast<uint64_t>(INT64_MAX)) return Error{EINVAL, "store: " + what + ": limit out of range"};
  Stmt st(db_,
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

Result<std::optional<DeviceDefault>> Store::deviceDefault(const std::string& device) const {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, "SELECT block_soft_kib, block_hard_kib, inode_soft, inode_hard FROM device_defaults WHERE device = ?1");
  st.bind(1, device);
  auto r = st.next("get default quota of device " + device);
  if (!r) return r.error();
  std::optional<DeviceDefault> out;
  if (!*r) return out;
  out = DeviceDefault{device, static_cast<uint64_t>(st.i64(0)), static_cast<uint64_t>(st.i64(1)),
                      static_cast<uint64_t>(st.i64(2)), static_cast<uint64_t>(st.i64(3))};
  return out;
}

namespace {
Result<std::vector<LayerRecord>> readLayers(sqlite3* db, const std::string& what) {
  Stmt st(db, "SELECT id, size_bytes, owner_uid, owner_image, first_seen FROM layers ORDER BY id");
  std::vector<LayerRecord> out;
  for (;;) {
    auto r = st.next(what);
    if (!r) return r.error();
    if (!*r) break;
    LayerRecord& l = out.emplace_back();
    st.textInto(0, l.id);
    l.size_bytes = static_cast<uint64_t>(st.i64(1));
    if (!st.isNull(2)) l.owner_uid = st.u32(2);
    st.textInto(3, l.owner_image);
    l.first_seen = st.f64(4);
  }
  return out;
}
}  // namespace

Result<std::vector<LayerRecord>> Store::syncLayers(const std::vector<LayerRecord>& present, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "sync layers";
  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s.error();
  if (auto s = execSql(db_, "CREATE TEMP TABLE IF NOT EXISTS layers_now (id TEXT PRIMARY KEY); DELETE FROM layers_now",
                       what);
      !s)
    return s.error();
  Stmt upsert(db_,
              "INSERT INTO layers (id, size_bytes, owner_uid, owner_image, first_seen) VALUES (?1, ?2, ?3, ?4, ?5) "
              "ON CONFLICT (id) DO UPDATE SET size_bytes = excluded.size_bytes, owner_uid = excluded.owner_uid, "
              "owner_image = excluded.owner_image");
  Stmt mark(db_, "INSERT OR IGNORE INTO layers_now (id) VALUES (?1)");
  for (const LayerRecord& l : present) {
    upsert.reset();
    upsert.bind(1, l.id);
    upsert.bind(2, static_cast<int64_t>(std::min<uint64_t>(l.size_bytes, INT64_MAX)));
    l.owner_uid ? upsert.bind(3, *l.owner_uid) : upsert.bindNull(3);
    upsert.bind(4, l.owner_image);
    upsert.bind(5, now);
    if (auto s = upsert.run(what + ": " + l.id); !s) return s.error();
    mark.reset();
    mark.bind(1, l.id);
    if (auto s = mark.run(what + ": " + l.id); !s) return s.error();
  }
  if (auto s =
          execSql(db_, "DELETE FROM layers WHERE id NOT IN (SELECT id FROM layers_now); DELETE FROM layers_now", what);
      !s)
    return s.error();
  auto rows = readLayers(db_, what);
  if (!rows) return rows.error();
  if (auto s = txn.commit(what); !s) return s.error();
  return rows;
}

Result<std::vector<LayerRecord>> Store::layers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return readLayers(db_, "list layers");
}

Status Store::setSizes(ObjectKind kind, const std::vector<std::pair<std::string_view, uint64_t>>& bytes_by_id) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = std::string("set sizes of ") + toString(kind) + "s";
  Txn txn(db_);
  if (auto s = txn.begin(what); !s) return s;
  Stmt st(db_,
          "UPDATE objects SET size_bytes = ?3 WHERE kind = ?1 AND id = ?2 AND gone_at IS NULL "
          "AND size_bytes != ?3");
  for (const auto& [id, bytes] : bytes_by_id) {
    st.reset();
    st.bind(1, toString(kind));
    st.bind(2, id);
    st.bind(3, static_cast<int64_t>(std::min<uint64_t>(bytes, INT64_MAX)));
    if (auto s = st.run(what + ": " + std::string(id)); !s) return s;
  }
  return txn.commit(what);
}

Result<std::optional<AttributionDetail>> Store::detail(ObjectKind kind, const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "attribution detail of " + describe(kind, id);
  auto row = loadRow(db_, kind, id, what);
  if (!row) return row.error();
  std::optional<AttributionDetail> out;
  if (!*row) return out;
  AttributionDetail& d = out.emplace();
  d.record = std::move((*row)->rec);
  d.automatic = (*row)->automatic;
  if (d.record.owner && d.record.owner->source == Source::Admin) {
    d.override_ = d.record.owner;
    Stmt st(db_, "SELECT resolver FROM overrides WHERE kind = ?1 AND id = ?2");
    st.bind(1, toString(kind));
    st.bind(2, id);
    auto r = st.next(what);
    if (!r) return r.error();
    if (*r) d.resolver = st.text(0);
  }
  return out;
}

Result<std::vector<EvidenceRow>> Store::evidenceRows(std::optional<ObjectKind> kind, const std::string& id,
                                                     size_t limit) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string what = "list evidence";
  Stmt st(db_,
          "SELECT seq, kind, id, source, uid, gid, login_uid, pid, comm, exe, method, request_time, time "
          "FROM evidence WHERE (?1 IS NULL OR kind = ?1) AND (?2 = '' OR id = ?2) ORDER BY seq DESC LIMIT ?3");
  kind ? st.bind(1, toString(*kind)) : st.bindNull(1);
  st.bind(2, id);
  st.bind(3, static_cast<int64_t>(std::min<size_t>(limit, INT64_MAX)));
  std::vector<EvidenceRow> out;
  for (;;) {
    auto r = st.next(what);
    if (!r) return r.error();
    if (!*r) break;
    auto k = parseObjectKind(st.text(1));
    auto src = parseSource(st.text(3));
    if (!k || !src) return Error{0, "store: " + what + ": bad kind or source in the database"};
    EvidenceRow& e = out.emplace_back();
    e.seq = st.i64(0);
    e.kind = *k;
    st.textInto(2, e.id);
    readEvidence(st, 4, *src, e.ev);
  }
  return out;
}

}  // namespace dockquota
