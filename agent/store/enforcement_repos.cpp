// SPDX-License-Identifier: Apache-2.0
// The enforcement tables (schema v4, see the migration in store.cpp): events
// and their delivery per channel, announced conditions (EventRepo), the
// containers acted on and admin exemptions (ActionRepo). One file: an action
// and its events are written in one transaction.
#include <sqlite3.h>

#include "agent/base/utf8.h"
#include "agent/store/sqlite_util.h"
#include "agent/store/action_repo.h"
#include "agent/store/event_repo.h"

namespace dockquota {
using namespace sql;

namespace {

// Delivery states in events.master / events.mail.
enum Delivery : int64_t { kNotQueued = 0, kPending = 1, kDelivered = 2, kGivenUp = 3 };

const char* deliveryName(int64_t d) {
  switch (d) {
    case kPending: return "pending";
    case kDelivered: return "delivered";
    case kGivenUp: return "given_up";
    default: return "not_sent";
  }
}

// The column names of a channel; fixed text, never user input.
const char* stateColumn(Channel c) { return c == Channel::Master ? "master" : "mail"; }
const char* timeColumn(Channel c) { return c == Channel::Master ? "master_at" : "mail_at"; }

constexpr const char* kEventCols =
    "SELECT seq, type, uid, user, container_id, detail, created_at, master, mail FROM events ";

Event eventRow(const Stmt& st) {
  Event e;
  e.seq = st.i64(0);
  e.type = st.text(1);
  e.uid = st.u32(2);
  e.user = st.text(3);
  e.container_id = st.text(4);
  e.detail = nlohmann::json::parse(st.view(5), nullptr, /*allow_exceptions=*/false);
  if (!e.detail.is_object()) e.detail = nlohmann::json::object();  // never written so; a hand-edited row
  e.created_at = st.f64(6);
  return e;
}

Status insertEvent(sqlite3* db, Event& e, EventRoute route, const std::string& what) {
  Stmt ins(db,
           "INSERT INTO events (type, uid, user, container_id, detail, created_at, master, mail) "
           "VALUES (?1, ?2, ?3, ?4, '{}', ?5, ?6, ?7)");
  ins.bind(1, e.type);
  ins.bind(2, e.uid);
  ins.bind(3, e.user);
  ins.bind(4, e.container_id);
  ins.bind(5, e.created_at);
  ins.bind(6, int64_t(route.master ? kPending : kNotQueued));
  ins.bind(7, int64_t(route.mail ? kPending : kNotQueued));
  if (auto s = ins.run(what); !s) return s.error();
  e.seq = sqlite3_last_insert_rowid(db);
  // The id goes into the detail too: the master and mail show only the detail.
  if (!e.detail.is_object()) e.detail = nlohmann::json::object();
  e.detail["event_id"] = e.seq;
  Stmt upd(db, "UPDATE events SET detail = ?2 WHERE seq = ?1");
  upd.bind(1, e.seq);
  upd.bind(2, jsonText(e.detail));  // names and Docker text inside: never throws
  return upd.run(what);
}

constexpr const char* kActionCols =
    "SELECT container_id, uid, name, size_bytes, state, started_at, stopped_at, remove_after, finished_at, error "
    "FROM enforcement_actions ";

std::optional<double> optDouble(const Stmt& st, int col) {
  return st.isNull(col) ? std::nullopt : std::optional<double>(st.f64(col));
}
void bindOpt(Stmt& st, int i, const std::optional<double>& v) { v ? st.bind(i, *v) : st.bindNull(i); }

}  // namespace

const char* toString(ActionState s) {
  switch (s) {
    case ActionState::Stopping: return "stopping";
    case ActionState::Stopped: return "stopped";
    case ActionState::Removing: return "removing";
    case ActionState::Removed: return "removed";
    case ActionState::Spared: return "spared";
    case ActionState::Failed: return "failed";
  }
  return "failed";
}

std::optional<ActionState> parseActionState(const std::string& s) {
  for (auto st : {ActionState::Stopping, ActionState::Stopped, ActionState::Removing, ActionState::Removed,
                  ActionState::Spared, ActionState::Failed})
    if (s == toString(st)) return st;
  return std::nullopt;
}

// --- events ------------------------------------------------------------------------

Result<std::optional<int64_t>> EventRepo::addEvent(Event& e, EventRoute route,
                                                   const std::vector<std::string>& conditions) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = "record event " + e.type + " for uid " + std::to_string(e.uid);
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  if (!conditions.empty()) {
    Stmt find(db_.handle, "SELECT 1 FROM conditions WHERE uid = ?1 AND condition = ?2");
    find.bind(1, e.uid);
    find.bind(2, conditions[0]);
    auto r = find.next(what);
    if (!r) return r.error();
    if (*r) return std::optional<int64_t>();  // announced already
  }
  if (auto s = insertEvent(db_.handle, e, route, what); !s) return s.error();
  Stmt ins(db_.handle, "INSERT OR IGNORE INTO conditions (uid, condition, since, event_seq) VALUES (?1, ?2, ?3, ?4)");
  for (const auto& c : conditions) {
    ins.reset();
    ins.bind(1, e.uid);
    ins.bind(2, c);
    ins.bind(3, e.created_at);
    ins.bind(4, e.seq);
    if (auto s = ins.run(what); !s) return s.error();
  }
  if (auto s = txn.commit(what); !s) return s.error();
  return std::optional<int64_t>(e.seq);
}

Status EventRepo::clearCondition(uint32_t uid, const std::string& condition) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle, "DELETE FROM conditions WHERE uid = ?1 AND condition = ?2");
  st.bind(1, uid);
  st.bind(2, condition);
  return st.run("clear condition " + condition + " of uid " + std::to_string(uid));
}

Result<std::map<uint32_t, std::set<std::string>>> EventRepo::conditions() const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader, "SELECT uid, condition FROM conditions");
  std::map<uint32_t, std::set<std::string>> out;
  for (;;) {
    auto r = st.next("list conditions");
    if (!r) return r.error();
    if (!*r) return out;
    out[st.u32(0)].insert(st.text(1));
  }
}

Result<std::vector<EventRow>> EventRepo::events(const EventQuery& q) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader, std::string(kEventCols) +
                          "WHERE seq > ?1 AND (?2 IS NULL OR uid = ?2) AND (?3 = '' OR type = ?3) ORDER BY seq" +
                          (q.newest_first ? " DESC" : "") + " LIMIT ?4");
  st.bind(1, q.after);
  st.bind(2, q.uid);
  st.bind(3, q.type);
  st.bind(4, int64_t(q.limit));
  std::vector<EventRow> out;
  for (;;) {
    auto r = st.next("list events");
    if (!r) return r.error();
    if (!*r) return out;
    out.push_back({eventRow(st), deliveryName(st.i64(7)), deliveryName(st.i64(8))});
  }
}

Result<size_t> EventRepo::pruneEvents(double before) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle, "DELETE FROM events WHERE created_at < ?1 AND master != 1 AND mail != 1");
  st.bind(1, before);
  if (auto s = st.run("prune events"); !s) return s.error();
  return size_t(sqlite3_changes(db_.handle));
}

Result<std::vector<Event>> EventRepo::pending(Channel c, size_t max) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle, std::string(kEventCols) + "WHERE " + stateColumn(c) + " = 1 ORDER BY seq LIMIT ?1");
  st.bind(1, int64_t(max));
  std::vector<Event> out;
  for (;;) {
    auto r = st.next(std::string("pending ") + toString(c) + " events");
    if (!r) return r.error();
    if (!*r) return out;
    out.push_back(eventRow(st));
  }
}

Status EventRepo::delivered(Channel c, const std::vector<int64_t>& seqs, bool ok, double now) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = std::string("mark ") + toString(c) + " events delivered";
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  Stmt st(db_.handle, std::string("UPDATE events SET ") + stateColumn(c) + " = ?2, " + timeColumn(c) +
                          " = ?3 WHERE seq = ?1 AND " + stateColumn(c) + " = 1");
  for (int64_t seq : seqs) {
    st.reset();
    st.bind(1, seq);
    st.bind(2, int64_t(ok ? kDelivered : kGivenUp));
    st.bind(3, now);
    if (auto s = st.run(what); !s) return s.error();
  }
  return txn.commit(what);
}

Result<size_t> EventRepo::pendingCount(Channel c) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle, std::string("SELECT count(*) FROM events WHERE ") + stateColumn(c) + " = 1");
  auto r = st.next(std::string("count pending ") + toString(c) + " events");
  if (!r) return r.error();
  return size_t(st.i64(0));
}

// --- actions ---------------------------------------------------------------------------

Status ActionRepo::putAction(const EnforcementAction& a, const std::vector<RoutedEvent>& events) {
  std::lock_guard<std::mutex> lock(db_.mu);
  const std::string what = std::string("record enforcement (") + toString(a.state) + ") of container " + a.container_id;
  Txn txn(db_.handle);
  if (auto s = txn.begin(what); !s) return s.error();
  Stmt st(db_.handle,
          "INSERT INTO enforcement_actions (container_id, uid, name, size_bytes, state, started_at, stopped_at, "
          "remove_after, finished_at, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
          "ON CONFLICT (container_id) DO UPDATE SET uid = excluded.uid, name = excluded.name, "
          "size_bytes = excluded.size_bytes, state = excluded.state, started_at = excluded.started_at, "
          "stopped_at = excluded.stopped_at, remove_after = excluded.remove_after, "
          "finished_at = excluded.finished_at, error = excluded.error");
  st.bind(1, a.container_id);
  st.bind(2, a.uid);
  st.bind(3, a.name);
  st.bind(4, int64_t(std::min<uint64_t>(a.size_bytes, INT64_MAX)));
  st.bind(5, toString(a.state));
  st.bind(6, a.started_at);
  bindOpt(st, 7, a.stopped_at);
  bindOpt(st, 8, a.remove_after);
  bindOpt(st, 9, a.finished_at);
  st.bind(10, a.error);
  if (auto s = st.run(what); !s) return s.error();
  for (const auto& e : events)
    if (auto s = insertEvent(db_.handle, *e.event, e.route, what); !s) return s.error();
  return txn.commit(what);
}

Result<std::vector<EnforcementAction>> ActionRepo::actions(bool open_only, size_t limit) const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader, std::string(kActionCols) +
                          (open_only ? "WHERE state IN ('stopping', 'stopped', 'removing') " : "") +
                          "ORDER BY started_at DESC, container_id LIMIT ?1");
  st.bind(1, int64_t(limit));
  std::vector<EnforcementAction> out;
  for (;;) {
    auto r = st.next("list enforcement actions");
    if (!r) return r.error();
    if (!*r) return out;
    EnforcementAction a;
    a.container_id = st.text(0);
    a.uid = st.u32(1);
    a.name = st.text(2);
    a.size_bytes = uint64_t(st.i64(3));
    a.state = parseActionState(st.text(4)).value_or(ActionState::Failed);
    a.started_at = st.f64(5);
    a.stopped_at = optDouble(st, 6);
    a.remove_after = optDouble(st, 7);
    a.finished_at = optDouble(st, 8);
    a.error = st.text(9);
    out.push_back(std::move(a));
  }
}

// --- exemptions ----------------------------------------------------------------------------

Status ActionRepo::setExemption(const Exemption& x) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle,
          "INSERT INTO exemptions (kind, id, reason, set_at) VALUES (?1, ?2, ?3, ?4) "
          "ON CONFLICT (kind, id) DO UPDATE SET reason = excluded.reason, set_at = excluded.set_at");
  st.bind(1, x.kind);
  st.bind(2, x.id);
  st.bind(3, x.reason);
  st.bind(4, x.set_at);
  return st.run("exempt " + x.kind + " " + x.id);
}

Result<bool> ActionRepo::clearExemption(const std::string& kind, const std::string& id) {
  std::lock_guard<std::mutex> lock(db_.mu);
  Stmt st(db_.handle, "DELETE FROM exemptions WHERE kind = ?1 AND id = ?2");
  st.bind(1, kind);
  st.bind(2, id);
  if (auto s = st.run("clear exemption of " + kind + " " + id); !s) return s.error();
  return sqlite3_changes(db_.handle) > 0;
}

Result<std::vector<Exemption>> ActionRepo::exemptions() const {
  std::lock_guard<std::mutex> lock(db_.read_mu);
  Stmt st(db_.reader, "SELECT kind, id, reason, set_at FROM exemptions ORDER BY kind, id");
  std::vector<Exemption> out;
  for (;;) {
    auto r = st.next("list exemptions");
    if (!r) return r.error();
    if (!*r) return out;
    out.push_back({st.text(0), st.text(1), st.text(2), st.f64(3)});
  }
}

}  // namespace dockquota
