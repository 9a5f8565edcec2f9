// SPDX-License-Identifier: Apache-2.0
// Objects, owners, evidence, layers and sizes: see object_repo.h; the
// tables are described with the migrations in store.cpp.
#include "agent/store/object_repo.h"

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
namespace {

using namespace sql;

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

Status ObjectRepo::noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                            const std::optional<std::string>& label_user, double now) {
  auto r = noteSeen(kind, id, name, parent, label_user, now, std::nullopt);
  if (!r) return r.error();
  return {};
}

Result<Seen> ObjectRepo::noteSeen(ObjectKind kind, const std::string& id, const std::string& name,
                                  const std::string& parent, const std::optional<std::string>& label_user, double now,
                                  std::optional<uint64_t> observed_since) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "note " + describe(kind, id);
  // An empty label is "no label", as Docker reports it.
  std::optional<std::string> label = label_user && !label_user->empty() ? label_user : std::nullopt;

  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  auto loaded = loadRow(db_.handle, kind, id, what);
  if (!loaded) return loaded.error();
  const std::optional<Row>& row = *loaded;
  Seen seen = Seen::Updated;
  if (!row) {
    seen = Seen::Inserted;
    if (auto s = insertObject(db_.handle, kind, id, name, parent, label, now, db_.nextSeq(), what); !s)
      return s.error();
  } else if (row->rec.gone_at) {
    seen = reviveDecision(kind, *row, observed_since);
    if (seen == Seen::Stale) return seen;  // nothing written: rollback of an unchanged txn
    if (seen == Seen::Reset) {
      if (auto s = resetObject(db_.handle, kind, id, name, parent, label, now, db_.nextSeq(), what); !s)
        return s.error();
    } else {
      LOG_WARN("store", "%s was marked gone at %.3f but Docker has it: live again, owner kept",
               describe(kind, id).c_str(), *row->rec.gone_at);
      if (auto s = restoreObject(db_.handle, kind, id, db_.nextSeq(), what); !s) return s.error();
    }
  }
  if (seen == Seen::Updated || seen == Seen::Restored) {
    Stmt st(db_.handle,
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

void ObjectRepo::setOwnerListener(ObjectListener f) {
  std::lock_guard<std::mutex> l(listener_mu_);
  on_owner_ = std::move(f);
}

void ObjectRepo::ownerChanged(ObjectKind kind, const std::string& id) {
  ObjectListener f;
  {
    std::lock_guard<std::mutex> l(listener_mu_);
    f = on_owner_;
  }
  if (f) f(kind, id);
}

Result<bool> ObjectRepo::attribute(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new) {
  auto changed = attributeTxn(kind, id, ev, brings_new);
  if (changed && *changed) ownerChanged(kind, id);
  return changed;
}

Result<bool> ObjectRepo::attributeTxn(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "attribute " + describe(kind, id);

  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  auto loaded = loadRow(db_.handle, kind, id, what);
  if (!loaded) return loaded.error();
  std::optional<Row>& row = *loaded;

  // A gone id whose request began after it went is a new object with a reused
  // name (volume, re-pulled image). Evidence whose request began earlier is
  // late news about the old object: record it there.
  bool fresh = !row;
  const uint64_t seq = db_.nextSeq();  // every attribution attempt is a change (ObjectRepo::reconcile)
  if (!row) {
    if (auto s = insertObject(db_.handle, kind, id, "", "", std::nullopt, ev.time, seq, what); !s) return s.error();
  } else if (row->rec.gone_at && ev.request_time >= *row->rec.gone_at) {
    if (auto s = resetObject(db_.handle, kind, id, "", "", std::nullopt, ev.time, seq, what); !s) return s.error();
    fresh = true;
  } else if (auto s = touchObject(db_.handle, kind, id, seq, what); !s) {
    return s.error();
  }

  bool changed = false;
  if (ev.source == Source::Admin) {
    if (auto s = upsertOverride(db_.handle, kind, id, ev, what); !s) return s.error();
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
      Stmt st(db_.handle,
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

  if (auto s = insertEvidence(db_.handle, kind, id, ev, what); !s) return s.error();
  if (auto s = txn.commit(what); !s) return s.error();
  return changed;
}

Status ObjectRepo::setOverride(ObjectKind kind, const std::string& id, const Evidence& ev) {
  return setOverride(kind, id, ev, "");
}

Status ObjectRepo::setOverride(ObjectKind kind, const std::string& id, const Evidence& ev,
                               const std::string& resolver) {
  auto st = setOverrideTxn(kind, id, ev, resolver);
  if (st) ownerChanged(kind, id);
  return st;
}

Status ObjectRepo::setOverrideTxn(ObjectKind kind, const std::string& id, const Evidence& ev,
                                  const std::string& resolver) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "set override on " + describe(kind, id);
  Evidence admin = ev;
  admin.source = Source::Admin;

  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s;
  auto row = loadRow(db_.handle, kind, id, what);
  if (!row) return row.error();
  if (!*row) return osError(ENOENT, "store: " + what + ": no such object");
  if (auto s = upsertOverride(db_.handle, kind, id, admin, what); !s) return s;
  {
    Stmt st(db_.handle, "UPDATE overrides SET resolver = ?3 WHERE kind = ?1 AND id = ?2");
    st.bind(1, toString(kind));
    st.bind(2, id);
    st.bind(3, resolver);
    if (auto s = st.run(what); !s) return s;
  }
  if (auto s = insertEvidence(db_.handle, kind, id, admin, what); !s) return s;
  return txn.commit(what);
}

Status ObjectRepo::clearOverride(ObjectKind kind, const std::string& id) {
  auto st = clearOverrideTxn(kind, id);
  if (st) ownerChanged(kind, id);
  return st;
}

Status ObjectRepo::clearOverrideTxn(ObjectKind kind, const std::string& id) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "clear override on " + describe(kind, id);

  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s;
  auto row = loadRow(db_.handle, kind, id, what);
  if (!row) return row.error();
  if (!*row) return osError(ENOENT, "store: " + what + ": no such object");
  Stmt st(db_.handle, "DELETE FROM overrides WHERE kind = ?1 AND id = ?2");
  st.bind(1, toString(kind));
  st.bind(2, id);
  if (auto s = st.run(what); !s) return s;
  return txn.commit(what);
}

Result<bool> ObjectRepo::markGone(ObjectKind kind, const std::string& id, double now,
                                  std::optional<uint64_t> unless_changed_after) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle,
          "UPDATE objects SET gone_at = ?3, seq = ?4 WHERE kind = ?1 AND id = ?2 AND gone_at IS NULL "
          "AND (?5 IS NULL OR seq <= ?5)");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, now);
  st.bind(4, static_cast<int64_t>(db_.seq + 1));
  if (unless_changed_after) {
    st.bind(5, static_cast<int64_t>(*unless_changed_after));
  } else {
    st.bindNull(5);
  }
  if (auto s = st.run("mark " + describe(kind, id) + " gone"); !s) return s.error();
  if (sqlite3_changes(db_.handle) == 0) return false;
  db_.nextSeq();
  return true;
}

Result<ReconcileResult> ObjectRepo::reconcile(ObjectKind kind, const std::set<std::string>& present, double now,
                                              std::optional<uint64_t> listed_after) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = std::string("reconcile ") + toString(kind) + "s";
  ReconcileResult out;

  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();

  struct Known {
    bool live;
    uint64_t seq;
  };
  std::map<std::string, Known> known;
  {
    Stmt st(db_.handle, "SELECT id, gone_at IS NULL, seq FROM objects WHERE kind = ?1");
    st.bind(1, toString(kind));
    for (;;) {
      auto r = st.next(what);
      if (!r) return r.error();
      if (!*r) break;
      known.emplace(st.text(0), Known{st.i64(1) != 0, static_cast<uint64_t>(st.i64(2))});
    }
  }
  auto recent = [&](const Known& k) { return listed_after && k.seq > *listed_after; };

  Stmt gone(db_.handle, "UPDATE objects SET gone_at = ?3, seq = ?4 WHERE kind = ?1 AND id = ?2");
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
    gone.bind(4, static_cast<int64_t>(db_.nextSeq()));
    if (auto s = gone.run(what + ": " + id); !s) return s.error();
    ++out.gone;
  }

  Stmt insert(db_.handle, "INSERT INTO objects (kind, id, first_seen, seq) VALUES (?1, ?2, ?3, ?4)");
  for (const auto& id : present) {
    auto it = known.find(id);
    if (it == known.end()) {
      insert.reset();
      insert.bind(1, toString(kind));
      insert.bind(2, id);
      insert.bind(3, now);
      insert.bind(4, static_cast<int64_t>(db_.nextSeq()));
      if (auto s = insert.run(what + ": " + id); !s) return s.error();
      ++out.added;
    } else if (!it->second.live) {
      auto row = loadRow(db_.handle, kind, id, what + ": " + id);
      if (!row) return row.error();
      if (!*row) continue;
      switch (reviveDecision(kind, **row, listed_after)) {
        case Seen::Stale: ++out.stale; break;
        case Seen::Reset:
          if (auto s = resetObject(db_.handle, kind, id, "", "", std::nullopt, now, db_.nextSeq(), what + ": " + id);
              !s)
            return s.error();
          ++out.revived;
          break;
        default:
          LOG_WARN("store", "%s was marked gone at %.3f but Docker lists it: live again, owner kept",
                   describe(kind, id).c_str(), *(*row)->rec.gone_at);
          if (auto s = restoreObject(db_.handle, kind, id, db_.nextSeq(), what + ": " + id); !s) return s.error();
          ++out.restored;
          break;
      }
    }
  }

  if (auto s = txn.commit(what); !s) return s.error();
  return out;
}

Result<bool> ObjectRepo::markMissed(ObjectKind kind, const std::string& id, double now, double created_at) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "flag " + describe(kind, id) + " missed";
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  auto row = loadRow(db_.handle, kind, id, what);
  if (!row) return row.error();
  if (!*row) {
    if (auto s = insertObject(db_.handle, kind, id, "", "", std::nullopt, now, db_.nextSeq(), what); !s)
      return s.error();
  } else if ((*row)->rec.missed_at || (*row)->rec.first_seen < created_at - kSeenSlackSeconds) {
    return false;
  } else {
    const auto& owner = (*row)->rec.owner;
    if (owner && (isKernel(owner->source) || owner->source == Source::Admin)) return false;
    if ((*row)->automatic && isKernel((*row)->automatic->source)) return false;
  }
  Stmt st(db_.handle, "UPDATE objects SET missed_at = ?3 WHERE kind = ?1 AND id = ?2");
  st.bind(1, toString(kind));
  st.bind(2, id);
  st.bind(3, now);
  if (auto s = st.run(what); !s) return s.error();
  if (auto s = txn.commit(what); !s) return s.error();
  return true;
}

Result<size_t> ObjectRepo::unresolvedMissed() const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader,
          "SELECT count(*) FROM objects o WHERE o.missed_at IS NOT NULL AND o.gone_at IS NULL "
          "AND (o.source IS NULL OR o.source NOT IN ('bpf', 'audit')) "
          "AND NOT EXISTS (SELECT 1 FROM overrides v WHERE v.kind = o.kind AND v.id = o.id)");
  auto r = st.next("count unresolved missed objects");
  if (!r) return r.error();
  return *r ? static_cast<size_t>(st.i64(0)) : 0;
}

Result<std::optional<ObjectRecord>> ObjectRepo::get(ObjectKind kind, const std::string& id) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  auto row = loadRow(db_.reader, kind, id, "get " + describe(kind, id));
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

Result<size_t> ObjectRepo::count(ObjectKind kind, bool include_gone) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt count(db_.reader, "SELECT count(*) FROM objects WHERE kind = ?1 AND (?2 OR gone_at IS NULL)");
  count.bind(1, toString(kind));
  count.bind(2, static_cast<int64_t>(include_gone));
  auto r = count.next(std::string("count ") + toString(kind) + "s");
  if (!r) return r.error();
  return *r ? static_cast<size_t>(count.i64(0)) : 0;
}

Result<std::vector<ObjectRecord>> ObjectRepo::list(ObjectKind kind, bool include_gone) const {
  std::vector<ObjectRecord> out;
  // Sized up front: growing a vector of ObjectRecord moves every record ~14
  // times. (Objects added meanwhile only make it grow once.)
  auto n = count(kind, include_gone);
  if (!n) return n.error();
  out.reserve(*n);
  std::lock_guard<std::mutex> lock(db_.read_mu);
  auto r = scanObjects(db_.reader, kind, include_gone, std::nullopt, 0, std::string("list ") + toString(kind) + "s",
                       [&]() -> ObjectRecord& { return out.emplace_back(); });
  if (!r) return r.error();
  return out;
}

Status ObjectRepo::forEach(ObjectKind kind, const std::function<void(const ObjectRecord&)>& fn,
                           bool include_gone) const {
  // Read under the lock a batch at a time; `fn` runs without it.
  constexpr size_t kBatch = 256;
  const std::string what = std::string("list ") + toString(kind) + "s";
  std::vector<ObjectRecord> batch(kBatch);
  std::optional<std::pair<double, std::string>> after;
  for (;;) {
    size_t i = 0;
    Result<size_t> n = size_t{0};
    {
      std::lock_guard<std::mutex> lock(db_.read_mu);
      n = scanObjects(db_.reader, kind, include_gone, after, kBatch, what,
                      [&]() -> ObjectRecord& { return batch[i++]; });
    }
    if (!n) return n.error();
    for (size_t j = 0; j < *n; j++) fn(batch[j]);
    if (*n < kBatch) return {};
    after.emplace(batch[kBatch - 1].first_seen, batch[kBatch - 1].id);
  }
}

Result<std::optional<std::string>> ObjectRepo::resolve(ObjectKind kind, const std::string& ref) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  const std::string what = std::string("resolve ") + toString(kind) + " '" + ref + "'";
  using Found = std::optional<std::string>;
  if (ref.empty()) return Found();

  // Up to two live ids matching `sql` with ?2 = ref and ?3 = alt: one is an
  // answer, two is ambiguous.
  auto lookup = [&](const char* sql, const std::optional<std::string>& alt) -> Result<std::vector<std::string>> {
    Stmt st(db_.reader, sql);
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

Result<std::vector<Evidence>> ObjectRepo::evidence(ObjectKind kind, const std::string& id) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  const std::string what = "evidence for " + describe(kind, id);
  Stmt st(db_.reader,
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

Result<std::vector<LayerRecord>> ObjectRepo::syncLayers(const std::vector<LayerRecord>& present, double now) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "sync layers";
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  if (auto s = execSql(
          db_.handle, "CREATE TEMP TABLE IF NOT EXISTS layers_now (id TEXT PRIMARY KEY); DELETE FROM layers_now", what);
      !s)
    return s.error();
  Stmt upsert(db_.handle,
              "INSERT INTO layers (id, size_bytes, owner_uid, owner_image, first_seen) VALUES (?1, ?2, ?3, ?4, ?5) "
              "ON CONFLICT (id) DO UPDATE SET size_bytes = excluded.size_bytes, owner_uid = excluded.owner_uid, "
              "owner_image = excluded.owner_image");
  Stmt mark(db_.handle, "INSERT OR IGNORE INTO layers_now (id) VALUES (?1)");
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
  if (auto s = execSql(db_.handle,
                       "DELETE FROM layers WHERE id NOT IN (SELECT id FROM layers_now); DELETE FROM layers_now", what);
      !s)
    return s.error();
  auto rows = readLayers(db_.handle, what);
  if (!rows) return rows.error();
  if (auto s = txn.commit(what); !s) return s.error();
  return rows;
}

Result<std::vector<LayerRecord>> ObjectRepo::layers() const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  return readLayers(db_.reader, "list layers");
}

Status ObjectRepo::setSizes(ObjectKind kind, const std::vector<std::pair<std::string_view, uint64_t>>& bytes_by_id) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = std::string("set sizes of ") + toString(kind) + "s";
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s;
  Stmt st(db_.handle,
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

Result<std::optional<AttributionDetail>> ObjectRepo::detail(ObjectKind kind, const std::string& id) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  const std::string what = "attribution detail of " + describe(kind, id);
  auto row = loadRow(db_.reader, kind, id, what);
  if (!row) return row.error();
  std::optional<AttributionDetail> out;
  if (!*row) return out;
  AttributionDetail& d = out.emplace();
  d.record = std::move((*row)->rec);
  d.automatic = (*row)->automatic;
  if (d.record.owner && d.record.owner->source == Source::Admin) {
    d.override_ = d.record.owner;
    Stmt st(db_.reader, "SELECT resolver FROM overrides WHERE kind = ?1 AND id = ?2");
    st.bind(1, toString(kind));
    st.bind(2, id);
    auto r = st.next(what);
    if (!r) return r.error();
    if (*r) d.resolver = st.text(0);
  }
  return out;
}

Result<std::vector<EvidenceRow>> ObjectRepo::evidenceRows(std::optional<ObjectKind> kind, const std::string& id,
                                                          size_t limit) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  const std::string what = "list evidence";
  Stmt st(db_.reader,
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

uint64_t ObjectRepo::sequence() const {
  std::lock_guard<std::mutex> lock(db_.mu);
  return db_.seq;
}

}  // namespace dockquota
