// SPDX-License-Identifier: Apache-2.0
// Enforcement: the pure policy, the Store's v4 tables (a real SQLite file),
// and the Enforcer's decisions against a real Store with a fake runtime (the
// real-dockerd and VM runs are tests/e2e/test_enforce.py).
#include <catch2/catch.hpp>

#include <map>
#include <set>
#include <thread>
#include <vector>

#include "agent/enforcement/enforcer.h"
#include "agent/enforcement/policy.h"
#include "agent/store/store.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;

namespace {

constexpr uint64_t MiB = 1 << 20;
constexpr uint32_t kAlice = 2001, kBob = 2002;

std::string cid(char c) { return std::string(64, c); }

EventQuery ofType(const std::string& type) {
  EventQuery q;
  q.type = type;
  return q;
}
EventQuery ofUid(uint32_t uid) {
  EventQuery q;
  q.uid = uid;
  return q;
}
EventQuery after(int64_t seq) {
  EventQuery q;
  q.after = seq;
  return q;
}
EventQuery first(size_t n) {
  EventQuery q;
  q.limit = n;
  return q;
}
EnforcementAction action(char c, uint32_t uid, uint64_t bytes, ActionState state, double t) {
  EnforcementAction a;
  a.container_id = cid(c);
  a.uid = uid;
  a.name = std::string("c") + c;
  a.size_bytes = bytes;
  a.state = state;
  a.started_at = t;
  return a;
}

}  // namespace

// --- policy ------------------------------------------------------------------------

TEST_CASE("policy: levels, the kernel margin and hysteresis", "[enforce][policy]") {
  Thresholds t;
  CHECK(quotaLevel(5 * MiB, 0, t) == QuotaLevel::Ok);  // no limit
  CHECK(quotaLevel(79 * MiB, 100 * MiB, t) == QuotaLevel::Ok);
  CHECK(quotaLevel(80 * MiB, 100 * MiB, t) == QuotaLevel::Warning);
  CHECK(quotaLevel(100 * MiB, 100 * MiB, t) == QuotaLevel::Warning);  // at the limit is not over it
  CHECK(quotaLevel(100 * MiB + 1, 100 * MiB, t) == QuotaLevel::Over);
  t.full_margin = MiB;  // the kernel holds the limit: within a MiB of it is over
  CHECK(quotaLevel(99 * MiB, 100 * MiB, t) == QuotaLevel::Warning);
  CHECK(quotaLevel(99 * MiB + 1, 100 * MiB, t) == QuotaLevel::Over);
  CHECK(overLimit(1, MiB / 2, t));  // a limit below the margin: anything is over
  // Announced conditions end only clearly below their line (95 % of it).
  Thresholds h;
  CHECK(conditionHolds("exceeded", 96 * MiB, 100 * MiB, h));
  CHECK_FALSE(conditionHolds("exceeded", 94 * MiB, 100 * MiB, h));
  CHECK(conditionHolds("warning", 77 * MiB, 100 * MiB, h));  // 0.8 * 0.95 = 76
  CHECK_FALSE(conditionHolds("warning", 75 * MiB, 100 * MiB, h));
  CHECK_FALSE(conditionHolds("exceeded", 200 * MiB, 0, h));  // the limit was removed
}

TEST_CASE("policy: order and the fewest containers that bring a user under", "[enforce][policy]") {
  std::vector<Candidate> c = {
      {"b", "old", 10, 5 * MiB}, {"c", "mid", 20, 1 * MiB}, {"a", "new", 30, 3 * MiB}, {"d", "tie", 20, 3 * MiB}};
  orderCandidates(c, EnforceOrder::Newest);
  CHECK(c[0].name == "new");
  CHECK(c[1].id == "c");  // equal times: by id
  CHECK(c[2].id == "d");
  orderCandidates(c, EnforceOrder::Oldest);
  CHECK(c[0].name == "old");
  orderCandidates(c, EnforceOrder::Largest);
  CHECK(c[0].name == "old");
  CHECK(c[1].id == "a");  // 3 MiB each: by id

  orderCandidates(c, EnforceOrder::Newest);  // new 3, mid 1, tie 3, old 5
  Thresholds t;
  std::vector<std::string> asked;
  auto size_of = [&](const Candidate& x) {
    asked.push_back(x.name);
    return *x.size;
  };
  // 12 MiB used, 10 allowed: new (3) is enough.
  auto s = selectUntilUnder(c, 12 * MiB, 10 * MiB, t, size_of);
  CHECK(s.enough);
  CHECK(s.picked == std::vector<size_t>{0});
  CHECK(asked == std::vector<std::string>{"new"});  // sizes are asked lazily
  // 14 MiB: new + mid leave 10 MiB, which is not over (at the limit).
  s = selectUntilUnder(c, 14 * MiB, 10 * MiB, t, size_of);
  CHECK(s.picked == std::vector<size_t>{0, 1});
  CHECK(s.freed == 4 * MiB);
  // More than every container frees: all picked, not enough.
  s = selectUntilUnder(c, 30 * MiB, 10 * MiB, t, size_of);
  CHECK(s.picked.size() == 4);
  CHECK_FALSE(s.enough);
  // Not over: nothing.
  s = selectUntilUnder(c, 9 * MiB, 10 * MiB, t, size_of);
  CHECK(s.picked.empty());
  CHECK(s.enough);
  // Empty containers free nothing: passed over.
  c[0].size = 0;
  s = selectUntilUnder(c, 12 * MiB, 10 * MiB, t, size_of);
  CHECK(s.picked == std::vector<size_t>{1, 2});
}

TEST_CASE("policy: modes and orders parse", "[enforce][policy]") {
  CHECK(parseEnforceMode("dry-run") == EnforceMode::DryRun);
  CHECK(parseEnforceMode("enforce") == EnforceMode::Enforce);
  CHECK_FALSE(parseEnforceMode("yes"));
  CHECK(parseEnforceOrder("largest") == EnforceOrder::Largest);
  CHECK_FALSE(parseEnforceOrder("random"));
}

// --- the Store's v4 tables ------------------------------------------------------------------

TEST_CASE("store v4: events, conditions and the per-channel spool", "[enforce][store]") {
  TempDir dir;
  auto st = Store::open(dir.file("s.db"));
  REQUIRE(st);
  Store& s = **st;
  CHECK(s.schemaVersion() >= 4);

  Event e1{0, event_type::kExceeded, kBob, "bob", "", {{"block_current", 5}}, 100};
  auto seq = s.eventLog().addEvent(e1, {true, true}, {"exceeded", "warning"});
  REQUIRE(seq);
  REQUIRE(*seq);
  CHECK(e1.seq == **seq);
  CHECK(e1.detail["event_id"] == e1.seq);
  // Announced: neither the same condition nor the one it holds announce again.
  Event again = e1;
  auto none = s.eventLog().addEvent(again, {true, true}, {"exceeded"});
  REQUIRE(none);
  CHECK_FALSE(*none);
  Event warn{0, event_type::kWarning, kBob, "bob", "", {}, 101};
  CHECK_FALSE(*s.eventLog().addEvent(warn, {false, true}, {"warning"}));
  auto held = s.eventLog().conditions();
  REQUIRE(held);
  CHECK((*held)[kBob] == std::set<std::string>{"exceeded", "warning"});
  REQUIRE(s.eventLog().clearCondition(kBob, "warning"));
  CHECK(*s.eventLog().addEvent(warn, {false, true}, {"warning"}));  // a new episode

  Event e3{0, event_type::kDryRun, kAlice, "alice", "", {}, 102};  // no channel
  REQUIRE(s.eventLog().addEvent(e3, {}));
  // Master: only e1; mail: e1 and the warning, in order.
  auto pm = s.eventLog().pending(Channel::Master, 10);
  REQUIRE(pm);
  REQUIRE(pm->size() == 1);
  CHECK(pm->front().seq == e1.seq);
  CHECK(pm->front().detail["block_current"] == 5);
  auto pmail = s.eventLog().pending(Channel::Mail, 10);
  REQUIRE(pmail->size() == 2);
  CHECK(pmail->at(0).seq < pmail->at(1).seq);
  REQUIRE(s.eventLog().delivered(Channel::Master, {e1.seq}, true, 200));
  CHECK(s.eventLog().pending(Channel::Master, 10)->empty());
  CHECK(*s.eventLog().pendingCount(Channel::Mail) == 2);
  REQUIRE(s.eventLog().delivered(Channel::Mail, {warn.seq}, false, 200));  // given up
  CHECK(*s.eventLog().pendingCount(Channel::Mail) == 1);

  // The list: cursor, uid and type filters, delivery states.
  auto all = s.eventLog().events({});
  REQUIRE(all->size() == 3);
  CHECK(all->at(0).master == "delivered");
  CHECK(all->at(0).mail == "pending");
  CHECK(all->at(1).mail == "given_up");
  CHECK(all->at(2).master == "not_sent");
  CHECK(s.eventLog().events(after(all->at(0).event.seq))->size() == 2);
  CHECK(s.eventLog().events(ofUid(kAlice))->size() == 1);
  CHECK(s.eventLog().events(ofType(event_type::kWarning))->size() == 1);
  CHECK(s.eventLog().events(first(1))->size() == 1);

  // Pruning never takes an event still pending somewhere.
  auto pruned = s.eventLog().pruneEvents(1000);
  REQUIRE(pruned);
  CHECK(*pruned == 2);  // the warning (given up, no master) and the dry-run; e1's mail is pending
  CHECK(s.eventLog().events({})->size() == 1);
  // Ids are never reused after a prune.
  Event e4{0, event_type::kWarning, kAlice, "alice", "", {}, 103};
  REQUIRE(s.eventLog().addEvent(e4, {}));
  CHECK(e4.seq > e3.seq);
}

TEST_CASE("store v4: actions with their event in one transaction; exemptions", "[enforce][store]") {
  TempDir dir;
  auto s = std::move(*Store::open(dir.file("s.db")));
  EnforcementAction a = action('a', kBob, 3 * MiB, ActionState::Stopping, 10);
  REQUIRE(s->enforcement().putAction(a));
  a.state = ActionState::Stopped;
  a.stopped_at = 11;
  a.remove_after = 14;
  Event e{0, event_type::kStopped, kBob, "bob", a.container_id, {}, 11};
  REQUIRE(s->enforcement().putAction(a, {{&e, {true, false}}}));
  CHECK(e.seq > 0);
  // Two events with one outcome (a forced removal: stopped, then removed), in order.
  EnforcementAction b = action('c', kBob, 1 * MiB, ActionState::Removed, 10);
  Event e1{0, event_type::kStopped, kBob, "bob", b.container_id, {}, 12};
  Event e2{0, event_type::kRemoved, kBob, "bob", b.container_id, {}, 12};
  REQUIRE(s->enforcement().putAction(b, {{&e1, {true, false}}, {&e2, {false, true}}}));
  CHECK(e1.seq > e.seq);
  CHECK(e2.seq == e1.seq + 1);
  CHECK(*s->eventLog().pendingCount(Channel::Master) == 2);
  CHECK(*s->eventLog().pendingCount(Channel::Mail) == 1);
  auto open = s->enforcement().actions(true);
  REQUIRE(open->size() == 1);
  CHECK(open->front().state == ActionState::Stopped);
  CHECK(open->front().remove_after == 14);
  a.state = ActionState::Removed;
  a.finished_at = 15;
  REQUIRE(s->enforcement().putAction(a));
  CHECK(s->enforcement().actions(true)->empty());
  CHECK(s->enforcement().actions(false)->size() == 2);

  REQUIRE(s->enforcement().setExemption({"container", cid('b'), "thesis", 1}));
  REQUIRE(s->enforcement().setExemption({"user", "2001", "", 2}));
  CHECK(s->enforcement().exemptions()->size() == 2);
  CHECK(*s->enforcement().clearExemption("container", cid('b')));
  CHECK_FALSE(*s->enforcement().clearExemption("container", cid('b')));
  CHECK(s->enforcement().setExemption({"group", "x", "", 3}).ok() == false);  // the schema's CHECK
}

// --- the Enforcer against a real Store --------------------------------------------------------

namespace {

class FakeRuntime : public ContainerRuntime {
 public:
  const char* name() const override { return "fake"; }
  Status connect() override {
    calls.push_back("connect");
    return {};
  }
  Result<uint64_t> writableBytes(const std::string& id) override {
    asked.push_back(id);
    if (!sizes.count(id)) return Error{ENOENT, "no such container"};
    return sizes[id];
  }
  Status stop(const std::string& id, std::chrono::seconds) override {
    calls.push_back("stop " + id.substr(0, 1));
    if (fail_stop) return Error{EIO, "docker: stop: HTTP 500: boom"};
    return {};
  }
  Status remove(const std::string& id, bool) override {
    calls.push_back("remove " + id.substr(0, 1));
    if (fail_remove) return Error{EBUSY, "docker: remove: HTTP 409: boom"};
    if (!sizes.erase(id)) return Error{ENOENT, "no such container"};
    return {};
  }
  std::map<std::string, uint64_t> sizes;  // the containers that exist
  std::vector<std::string> calls, asked;
  bool fail_stop = false, fail_remove = false;
};

struct World {
  TempDir dir;
  std::unique_ptr<Store> store = std::move(*Store::open(dir.file("s.db")));
  std::unique_ptr<QuotaBook> book = std::move(*QuotaBook::load(*store));
  UserDirectory users{[] { return std::vector<PasswdUser>{{kAlice, "alice"}, {kBob, "bob"}}; }};
  FakeRuntime runtime;
  double clock = 1000;
  std::map<uint32_t, uint64_t> usage;  // what the "snapshot" says
  double measured_at = 1000;

  // A container owned by `uid` (kernel evidence unless `src` says otherwise), first seen at `t`, `bytes` in its layer.
  void container(char c, uint32_t uid, double t, uint64_t bytes, Source src = Source::Bpf) {
    REQUIRE(store->objects().noteSeen(ObjectKind::Container, cid(c), std::string("c") + c, "", std::nullopt, t));
    if (src != Source::None) {
      Evidence ev;
      ev.source = src;
      ev.uid = uid;
      ev.method = "container_create";
      ev.time = t;
      REQUIRE(store->objects().attribute(ObjectKind::Container, cid(c), ev, true));
    }
    runtime.sizes[cid(c)] = bytes;
  }
  // bob over his limit with one container: '1' holds 5 MiB, 6 MiB used of 4 MiB.
  void bobOverWithOne() {
    container('1', kBob, 10, 5 * MiB);
    usage = {{kBob, 6 * MiB}};
    REQUIRE(book->setLimit(kBob, 4 * 1024));
  }
  std::shared_ptr<const UsageSnapshot> snapshot() const {
    auto s = std::make_shared<UsageSnapshot>();
    s->measured = true;
    s->measured_at = measured_at;
    for (auto [uid, b] : usage) s->users[uid].container_bytes = b;
    return s;
  }
  std::unique_ptr<Enforcer> enforcer(EnforcerOptions o) {
    o.clock = [this] { return clock; };
    o.to_master = o.to_mail = true;
    auto e = Enforcer::create(
        *store, *book, [this] { return snapshot(); }, users, runtime, o);
    REQUIRE(e);
    return std::move(*e);
  }
  std::vector<std::string> types(std::optional<uint32_t> uid = std::nullopt) {
    std::vector<std::string> out;
    EventQuery q;
    q.limit = 1000;
    q.uid = uid;
    auto rows = store->eventLog().events(q);  // named: a range-for over *temporary would outlive it
    for (const auto& r : *rows) out.push_back(r.event.type);
    return out;
  }
};

EnforcerOptions enforce(std::chrono::seconds grace = std::chrono::seconds(300)) {
  EnforcerOptions o;
  o.mode = EnforceMode::Enforce;
  o.grace = grace;
  return o;
}

// Grace 0 with a stop timeout of 0: one forced removal (SIGKILL, then removed).
EnforcerOptions forcedRemoval() {
  auto o = enforce(std::chrono::seconds(0));
  o.stop_timeout = std::chrono::seconds(0);
  return o;
}

}  // namespace

TEST_CASE("enforcer: bob's newest is stopped, removed after the grace period, alice untouched", "[enforce]") {
  World w;
  w.container('1', kBob, 10, 3 * MiB);
  w.container('2', kBob, 20, 3 * MiB);
  w.container('3', kBob, 30, 3 * MiB);
  w.container('a', kAlice, 40, 2 * MiB);  // alice's is the newest of all
  w.usage = {{kBob, 9 * MiB}, {kAlice, 2 * MiB}};
  REQUIRE(w.book->setLimit(kBob, 7 * 1024));
  REQUIRE(w.book->setLimit(kAlice, 100 * 1024));
  auto e = w.enforcer(enforce());

  auto r = e->sweep();
  REQUIRE(r);
  CHECK(r->over == 1);
  CHECK(r->stopped == 1);
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 3"});
  CHECK(w.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kStopped});
  // The snapshot still says 9 MiB: the stopped container's bytes count as being freed, no second victim.
  w.clock += 100;
  REQUIRE(e->sweep());
  CHECK(w.runtime.calls.size() == 1);
  // Grace over: removed; afterwards the stale snapshot still does not pick another.
  w.clock += 201;
  r = e->sweep();
  CHECK(r->removed == 1);
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 3", "remove 3"});
  w.clock += 10;
  REQUIRE(e->sweep());
  CHECK(w.runtime.calls.size() == 2);
  CHECK(w.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kStopped, event_type::kRemoved});
  CHECK(w.types(kAlice).empty());
  auto removed = w.store->eventLog().events(ofType(event_type::kRemoved));
  REQUIRE(removed->size() == 1);
  const auto& d = removed->front().event.detail;
  CHECK(d["container_id"] == cid('3').substr(0, 12));
  CHECK(d["removed_ids"] == nlohmann::json::array({cid('3')}));
  CHECK(d["size_bytes"] == 3 * MiB);
  CHECK(d["new_usage"] == 6 * MiB);
  // A measurement after the removal: bob at 6 MiB, the exceeded condition ends (< 95 % of 7).
  w.usage[kBob] = 6 * MiB;
  w.measured_at = w.clock + 1;
  w.clock += 2;
  REQUIRE(e->sweep());
  CHECK(w.store->eventLog().conditions()->count(kBob) == 1);  // the warning it held stays: 6 of 7 MiB is 86 %
  CHECK(w.types(kBob).size() == 3);                           // and is not announced on the way down
  auto st = e->state(kBob);
  CHECK(st["users"][0]["level"] == "warning");
}

TEST_CASE("enforcer: grace 0 stops with SIGTERM first (docker stop), then removes at once", "[enforce]") {
  World w;
  w.container('1', kBob, 10, 5 * MiB);
  w.usage = {{kBob, 6 * MiB}};
  REQUIRE(w.book->setLimit(kBob, 4 * 1024));
  auto e = w.enforcer(enforce(std::chrono::seconds(0)));  // the stop timeout keeps its default, 10 s
  auto r = e->sweep();
  CHECK(r->stopped == 1);
  CHECK(r->removed == 1);
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 1", "remove 1"});
  CHECK(w.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kStopped, event_type::kRemoved});
  auto all = w.store->enforcement().actions(false);
  REQUIRE(all->size() == 1);
  CHECK(all->front().state == ActionState::Removed);
}

TEST_CASE("enforcer: grace 0 and stop timeout 0: one forced removal; largest order", "[enforce]") {
  World w;
  w.container('1', kBob, 10, 5 * MiB);
  w.container('2', kBob, 20, 1 * MiB);
  w.usage = {{kBob, 6 * MiB}};
  REQUIRE(w.book->setLimit(kBob, 4 * 1024));
  auto o = enforce(std::chrono::seconds(0));
  o.stop_timeout = std::chrono::seconds(0);
  o.order = EnforceOrder::Largest;
  auto e = w.enforcer(o);
  auto r = e->sweep();
  CHECK(r->stopped == 1);
  CHECK(r->removed == 1);
  CHECK(w.runtime.calls == std::vector<std::string>{"remove 1"});  // no graceful stop: Docker kills and removes
  CHECK(w.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kStopped, event_type::kRemoved});
  auto stopped = w.store->eventLog().events(ofType(event_type::kStopped));
  REQUIRE(stopped->size() == 1);
  CHECK(stopped->front().event.detail["block_current"] == 6 * MiB);
  CHECK(stopped->front().event.detail["remove_after_seconds"] == 0);
  CHECK(stopped->front().event.container_id == cid('1'));
  auto removed = w.store->eventLog().events(ofType(event_type::kRemoved));
  REQUIRE(removed->size() == 1);
  CHECK(removed->front().event.detail["new_usage"] == 1 * MiB);
  CHECK(removed->front().master == "pending");
  auto all = w.store->enforcement().actions(false);
  REQUIRE(all->size() == 1);
  CHECK(all->front().state == ActionState::Removed);
  CHECK(all->front().stopped_at == all->front().finished_at);
  // The stale snapshot (still 6 MiB) picks no second victim.
  w.clock += 5;
  REQUIRE(e->sweep());
  CHECK(w.runtime.calls.size() == 1);
}

TEST_CASE("enforcer: grace 0, two victims: each one's stopped then removed, usage counted down", "[enforce]") {
  World w;
  w.container('1', kBob, 10, 3 * MiB);
  w.container('2', kBob, 20, 3 * MiB);
  w.container('3', kBob, 30, 3 * MiB);
  w.usage = {{kBob, 9 * MiB}};
  REQUIRE(w.book->setLimit(kBob, 4 * 1024));
  auto e = w.enforcer(enforce(std::chrono::seconds(0)));
  auto r = e->sweep();
  CHECK(r->stopped == 2);
  CHECK(r->removed == 2);
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 3", "remove 3", "stop 2", "remove 2"});
  CHECK(w.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kStopped, event_type::kRemoved,
                                                  event_type::kStopped, event_type::kRemoved});
  auto stopped = w.store->eventLog().events(ofType(event_type::kStopped));
  auto removed = w.store->eventLog().events(ofType(event_type::kRemoved));
  REQUIRE(stopped->size() == 2);
  REQUIRE(removed->size() == 2);
  CHECK(stopped->at(0).event.container_id == cid('3'));
  CHECK(stopped->at(0).event.detail["block_current"] == 9 * MiB);
  CHECK(removed->at(0).event.detail["new_usage"] == 6 * MiB);
  CHECK(stopped->at(1).event.container_id == cid('2'));
  CHECK(stopped->at(1).event.detail["block_current"] == 6 * MiB);
  CHECK(removed->at(1).event.detail["new_usage"] == 3 * MiB);
}

TEST_CASE("enforcer: dry-run reports once and touches nothing", "[enforce]") {
  World w;
  w.bobOverWithOne();
  EnforcerOptions o;  // dry-run is the default
  auto e = w.enforcer(o);
  for (int i = 0; i < 3; i++) REQUIRE(e->sweep());
  CHECK(w.runtime.calls.empty());
  CHECK(w.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kDryRun});
  auto dry = w.store->eventLog().events(ofType(event_type::kDryRun));
  CHECK(dry->front().event.detail["would_stop"][0]["container_id"] == cid('1'));
  CHECK(dry->front().master == "not_sent");  // the master knows no such type
}

TEST_CASE("enforcer: never touches unattributed, label-billed or exempt containers", "[enforce]") {
  World w;
  w.container('1', kBob, 10, 5 * MiB);                 // kernel evidence
  w.container('2', kBob, 20, 5 * MiB, Source::Label);  // only a label says bob
  w.container('3', kBob, 30, 5 * MiB, Source::None);   // unattributed
  w.container('4', kBob, 40, 5 * MiB);                 // exempted by the admin
  REQUIRE(w.store->enforcement().setExemption({"container", cid('4'), "", 1}));
  w.usage = {{kBob, 20 * MiB}};
  REQUIRE(w.book->setLimit(kBob, 10 * 1024));
  auto e = w.enforcer(enforce());
  REQUIRE(e->sweep());
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 1"});
  // Not enough (5 of 10 MiB over): said once, as a failure event, not re-announced.
  REQUIRE(e->sweep());
  CHECK(w.store->eventLog().events(ofType(event_type::kFailed))->size() == 1);

  // An exempt user: nothing, though over.
  World x;
  x.container('1', kAlice, 10, 5 * MiB);
  x.usage = {{kAlice, 6 * MiB}};
  REQUIRE(x.book->setLimit(kAlice, 4 * 1024));
  auto o = enforce();
  o.exempt_uids = {kAlice};
  auto ex = x.enforcer(o);
  REQUIRE(ex->sweep());
  CHECK(x.runtime.calls.empty());
  CHECK(x.types(kAlice) == std::vector<std::string>{event_type::kExceeded});  // still told
}

TEST_CASE("enforcer: spared when the user gets under during the grace period", "[enforce]") {
  World w;
  w.bobOverWithOne();
  auto e = w.enforcer(enforce(std::chrono::seconds(60)));
  REQUIRE(e->sweep());
  w.usage[kBob] = 3 * MiB;  // bob deleted an image meanwhile
  w.clock += 61;
  auto r = e->sweep();
  CHECK(r->spared == 1);
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 1"});
  auto all = w.store->enforcement().actions(false);
  CHECK(all->front().state == ActionState::Spared);
}

TEST_CASE("enforcer: a crash mid-stop is finished at the next start; failures are events", "[enforce]") {
  World w;
  w.bobOverWithOne();
  // What a crash between the intent and Docker's answer leaves behind.
  REQUIRE(w.store->enforcement().putAction(action('1', kBob, 5 * MiB, ActionState::Stopping, 990)));
  auto e = w.enforcer(enforce());
  REQUIRE(e->sweep());
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 1"});  // once: not picked again as a new victim
  CHECK(w.store->enforcement().actions(true)->front().state == ActionState::Stopped);
  CHECK(w.store->eventLog().events(ofType(event_type::kStopped))->size() == 1);

  World f;
  f.bobOverWithOne();
  f.runtime.fail_stop = true;
  auto ef = f.enforcer(enforce());
  auto r = ef->sweep();
  CHECK(r->failed == 1);
  auto failed = f.store->eventLog().events(ofType(event_type::kFailed));
  REQUIRE(failed->size() == 1);
  CHECK(failed->front().event.detail["error"].get<std::string>().find("boom") != std::string::npos);
}

TEST_CASE(
    "enforcer: forced removal (grace 0, stop timeout 0), a crash mid-removal is finished at the next start, its events "
    "once",
    "[enforce]") {
  // What a crash between the intent (removing, never stopped by us) and
  // Docker's answer leaves behind, the container still there.
  World w;
  w.container('1', kBob, 10, 5 * MiB);
  w.container('2', kBob, 20, 5 * MiB);
  w.usage = {{kBob, 10 * MiB}};
  REQUIRE(w.book->setLimit(kBob, 8 * 1024));
  REQUIRE(w.store->enforcement().putAction(action('2', kBob, 5 * MiB, ActionState::Removing, 990)));
  auto e = w.enforcer(forcedRemoval());
  auto r = e->sweep();
  REQUIRE(r);
  CHECK(w.runtime.calls == std::vector<std::string>{"remove 2"});  // once, and no second victim
  CHECK(r->stopped == 1);
  CHECK(r->removed == 1);
  CHECK(w.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kStopped, event_type::kRemoved});
  CHECK(w.store->enforcement().actions(true)->empty());
  w.clock += 5;
  REQUIRE(e->sweep());
  CHECK(w.runtime.calls.size() == 1);

  // The crash came after Docker removed it: finished without a second call's
  // effect, as a removal someone else did (no events), and not picked again.
  World g;
  g.container('1', kBob, 10, 5 * MiB);
  g.usage = {{kBob, 10 * MiB}};
  REQUIRE(g.book->setLimit(kBob, 8 * 1024));
  REQUIRE(g.store->enforcement().putAction(action('2', kBob, 5 * MiB, ActionState::Removing, 990)));
  auto eg = g.enforcer(forcedRemoval());
  REQUIRE(eg->sweep());
  CHECK(g.runtime.calls == std::vector<std::string>{"remove 2"});
  auto all = g.store->enforcement().actions(false);
  REQUIRE(all->size() == 1);
  CHECK(all->front().state == ActionState::Removed);
  CHECK(g.types(kBob) == std::vector<std::string>{event_type::kExceeded});

  // Docker refuses: one failure event, neither stopped nor removed is claimed.
  World f;
  f.bobOverWithOne();
  f.runtime.fail_remove = true;
  auto ef = f.enforcer(forcedRemoval());
  auto rf = ef->sweep();
  CHECK(rf->failed == 1);
  CHECK(rf->stopped == 0);
  CHECK(f.types(kBob) == std::vector<std::string>{event_type::kExceeded, event_type::kFailed});
  CHECK(f.store->eventLog().events(ofType(event_type::kFailed))->front().event.detail["action"] == "remove");
}

TEST_CASE("enforcer: start() connects to the runtime before the first sweep, in enforce mode only", "[enforce]") {
  World w;
  w.bobOverWithOne();
  {
    auto dry = w.enforcer(EnforcerOptions{});
    dry->start();
    dry->stop();
  }
  CHECK(w.runtime.calls.empty());
  auto e = w.enforcer(forcedRemoval());
  e->start();
  for (int i = 0; i < 200 && w.store->enforcement().actions(false)->empty(); i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  e->stop();
  CHECK(w.runtime.calls == std::vector<std::string>{"connect", "remove 1"});
}

TEST_CASE("enforcer: the removal order a user is shown is the one a sweep follows", "[enforce][user-api]") {
  World w;
  w.container('1', kBob, 10, 5 * MiB);
  w.container('2', kBob, 20, 1 * MiB);
  w.container('3', kBob, 30, 3 * MiB, Source::Label);  // a label is the user's word: never enforcement's
  w.container('4', kAlice, 40, 1 * MiB);
  auto e = w.enforcer(enforce());
  auto known = [](const std::string&) -> std::optional<uint64_t> { return std::nullopt; };
  // What the preview is given: every container measured (here: all, and one Docker no longer has).
  std::vector<std::string> all = {cid('1'), cid('2'), cid('3'), cid('4'), cid('5'), cid('9')};
  auto order = e->removalOrder(kBob, all, known);
  REQUIRE(order);
  REQUIRE(order->size() == 2);
  CHECK((*order)[0].id == cid('2'));  // newest first, as configured
  CHECK((*order)[1].id == cid('1'));

  // bob over by less than '2' holds: the sweep stops the first of that order.
  w.usage = {{kBob, 6 * MiB}};
  REQUIRE(w.book->setLimit(kBob, 5 * 1024 + 512));
  REQUIRE(e->sweep());
  CHECK(w.runtime.calls == std::vector<std::string>{"stop 2"});
  // Being acted on, it is no longer a candidate; what is left keeps its place.
  order = e->removalOrder(kBob, all, known);
  REQUIRE(order->size() == 1);
  CHECK((*order)[0].id == cid('1'));

  // Largest first orders by the sizes given (the last measured), and an exempt user has none.
  auto o = enforce();
  o.order = EnforceOrder::Largest;
  o.exempt_uids = {kAlice};
  auto largest = w.enforcer(o);
  w.container('5', kBob, 50, 1);
  auto sizes = [](const std::string& id) -> std::optional<uint64_t> { return id == cid('5') ? 9 * MiB : MiB; };
  order = largest->removalOrder(kBob, all, sizes);
  REQUIRE(order->size() == 2);
  CHECK((*order)[0].id == cid('5'));
  CHECK(largest->removalOrder(kAlice, all, sizes)->empty());
}
