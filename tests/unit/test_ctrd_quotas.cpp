// SPDX-License-Identifier: Apache-2.0
// containerd rootfs quotas without a kernel: label sizes, the project plan
// (own, label, tenant), id allocation and recycling in a real Store, the
// kernel check before an id is taken, reconcile after a restart, limit events.
#include <filesystem>
#include <random>
#include <set>
#include <thread>

#include <catch2/catch.hpp>

#include "agent/quota/ctrd_plan.h"
#include "agent/quota/ctrd_quotas.h"
#include "temp_dir.h"

using namespace dockquota;

TEST_CASE("ctrd label sizes", "[ctrd-quota]") {
  CHECK(parseLabelSize("10G") == uint64_t(10) << 30);
  CHECK(parseLabelSize("10GiB") == uint64_t(10) << 30);
  CHECK(parseLabelSize("10gb") == uint64_t(10) << 30);
  CHECK(parseLabelSize("512Mi") == uint64_t(512) << 20);
  CHECK(parseLabelSize("16m") == uint64_t(16) << 20);
  CHECK(parseLabelSize("4k") == 4096);
  CHECK(parseLabelSize("1048576") == 1048576);
  CHECK(parseLabelSize("1T") == uint64_t(1) << 40);
  CHECK_FALSE(parseLabelSize(""));
  CHECK_FALSE(parseLabelSize("0"));
  CHECK_FALSE(parseLabelSize("G"));
  CHECK_FALSE(parseLabelSize("1.5G"));
  CHECK_FALSE(parseLabelSize("10X"));
  CHECK_FALSE(parseLabelSize("10Gx"));
  CHECK_FALSE(parseLabelSize("-1"));
  CHECK_FALSE(parseLabelSize("2048P"));  // past 2^60
  CHECK_FALSE(parseLabelSize("99999999999999999999999"));
}

TEST_CASE("ctrd plan: default, label, tenant", "[ctrd-quota]") {
  CtrdQuotaConfig cfg;
  cfg.default_bytes = 10 << 20;
  auto p = planCtrd(cfg, "k8s.io", "a", {});
  CHECK(p.kind == kCtrdKind);
  CHECK(p.owner == "k8s.io/a");
  CHECK(p.limit_bytes == 10 << 20);
  p = planCtrd(cfg, "k8s.io", "a", {{"dockquota.limit", "20M"}});
  CHECK(p.limit_bytes == 20 << 20);
  p = planCtrd(cfg, "k8s.io", "a", {{"dockquota.limit", "lots"}});
  CHECK(p.limit_bytes == 10 << 20);
  CHECK_FALSE(p.label_error.empty());
  // grouping off: the tenant label is just a label
  p = planCtrd(cfg, "k8s.io", "a", {{"io.kubernetes.pod.namespace", "team-a"}});
  CHECK(p.kind == kCtrdKind);
  CHECK(p.tenant.empty());

  cfg.tenant_default_bytes = 30 << 20;
  cfg.tenant_bytes["team-b"] = 40 << 20;
  p = planCtrd(cfg, "k8s.io", "a", {{"io.kubernetes.pod.namespace", "team-a"}, {"dockquota.limit", "1M"}});
  CHECK(p.kind == kCtrdTenantKind);
  CHECK(p.owner == "team-a");
  CHECK(p.tenant == "team-a");
  CHECK(p.limit_bytes == 30 << 20);  // the tenant's limit wins: one inode, one project
  p = planCtrd(cfg, "k8s.io", "b", {{"io.kubernetes.pod.namespace", "team-b"}});
  CHECK(p.limit_bytes == 40 << 20);
  p = planCtrd(cfg, "k8s.io", "c", {{"io.kubernetes.pod.namespace", ""}});
  CHECK(p.kind == kCtrdKind);
  cfg.tenant_label = "tenant";
  p = planCtrd(cfg, "k8s.io", "d", {{"tenant", "x"}});
  CHECK(p.owner == "x");
}

TEST_CASE("ctrd limit reached and cleared", "[ctrd-quota]") {
  CHECK_FALSE(limitReached(100, 0));
  CHECK(limitReached(100, 100));
  CHECK(limitReached(99, 100));
  CHECK_FALSE(limitReached(98, 100));
  CHECK_FALSE(limitCleared(95, 100));
  CHECK(limitCleared(89, 100));
}

TEST_CASE("ctrd snapshot root of an upper dir", "[ctrd-quota]") {
  CHECK(snapshotRootOf("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs") ==
        "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12");
  CHECK(snapshotRootOf("/x/snapshots/12/diff").empty());
  CHECK(snapshotRootOf("/x/other/12/fs").empty());
  CHECK(snapshotRootOf("fs").empty());
}

namespace {

// The kernel, as a map: what is charged to which id, what was tagged and limited.
struct FakeKernelState {
  std::map<uint32_t, ProjectUsage> usage;
  std::map<uint32_t, uint64_t> limits;
  std::vector<std::string> tags;  // "<root>|<upper>|<id>"
  bool usable = true;
};

class FakeKernel : public CtrdKernel {
 public:
  explicit FakeKernel(FakeKernelState& s) : s_(s) {}
  Result<QuotaFs> probe(const std::string& path) override {
    QuotaFs fs;
    fs.path = path;
    fs.dev = 7;
    fs.fstype = "xfs";
    fs.accounting = fs.enforcing = s_.usable;
    if (!s_.usable) fs.reason = "no prjquota";
    return fs;
  }
  Result<TagStats> tag(const std::string& root, const std::string& upper, uint32_t id) override {
    s_.tags.push_back(root + "|" + upper + "|" + std::to_string(id));
    return TagStats{};
  }
  Status setLimit(const QuotaFs&, uint32_t id, uint64_t hard) override {
    s_.limits[id] = hard;
    return {};
  }
  Result<ProjectUsage> readOne(const QuotaFs&, uint32_t id) override {
    auto it = s_.usage.find(id);
    return it == s_.usage.end() ? ProjectUsage{} : it->second;
  }
  Result<std::map<uint32_t, ProjectUsage>> readAll(const QuotaFs&) override { return s_.usage; }

 private:
  FakeKernelState& s_;
};

struct Fixture {
  TempDir dir;
  std::unique_ptr<Store> store = std::move(*Store::open(dir.file("s.db")));
  FakeKernelState kernel;
  CtrdQuotas::Options opt;
  Fixture() {
    opt.id_min = 500;
    opt.id_max = 509;
    opt.namespaces = {"k8s.io"};
    opt.cfg.default_bytes = 8 << 20;
    opt.cfg.tenant_default_bytes = 24 << 20;
  }
  std::unique_ptr<CtrdQuotas> make() {
    return std::make_unique<CtrdQuotas>(*store, std::make_unique<FakeKernel>(kernel), opt);
  }
  std::string upper(const std::string& n) {
    const std::string root = dir.file("ovl/snapshots/" + n);
    std::filesystem::create_directories(root + "/fs");
    std::filesystem::create_directories(root + "/work");
    return root + "/fs";
  }
  std::map<std::string, uint32_t> rows() {
    std::map<std::string, uint32_t> out;
    auto all = store->projectIds().projects();  // kept: the loop must not range over a temporary's inside
    REQUIRE(all);
    for (const auto& p : *all) out[p.owner_kind + ":" + p.owner] = p.id;
    return out;
  }
  static CtrdContainer live(const std::string& id, const std::string& upper,
                            std::map<std::string, std::string> l = {}) {
    CtrdContainer c;
    c.ns = "k8s.io";
    c.id = id;
    c.upper_dir = upper;
    c.labels = std::move(l);
    c.task_state = DQ_CTRD_STATE_RUNNING;
    return c;
  }
};

}  // namespace

TEST_CASE("ctrd ids: allocated, kernel-checked, limited, tagged, recycled", "[ctrd-quota]") {
  Fixture f;
  auto q = f.make();
  f.kernel.usage[501] = ProjectUsage{4096, 1};  // someone else's project: skipped
  const auto ua = f.upper("1"), ub = f.upper("2"), uc = f.upper("3");
  q->onRootfs("k8s.io", "a", {}, ua);
  q->onRootfs("k8s.io", "b", {{"dockquota.limit", "20M"}}, ub);
  CHECK(f.rows() == std::map<std::string, uint32_t>{{"ctrd:k8s.io/a", 500}, {"ctrd:k8s.io/b", 502}});
  CHECK(f.kernel.limits[500] == 8 << 20);
  CHECK(f.kernel.limits[502] == 20 << 20);
  REQUIRE(f.kernel.tags.size() == 2);
  CHECK(f.kernel.tags[0] == f.dir.file("ovl/snapshots/1") + "|" + ua + "|500");
  // re-announced (a reconcile): same id, tagged again, no new allocation
  q->onRootfs("k8s.io", "a", {}, ua);
  CHECK(f.rows().size() == 2);
  CHECK(q->stats().ids_allocated == 2);
  CHECK(q->stats().tagged == 3);
  CHECK(q->containerFigures("k8s.io", "b")["limit_bytes"] == 20 << 20);

  q->onContainerDelete("k8s.io", "a");
  CHECK(f.rows() == std::map<std::string, uint32_t>{{"ctrd:k8s.io/b", 502}});
  CHECK(f.kernel.limits[500] == 0);  // cleared for the next owner
  CHECK(q->stats().ids_released == 1);
  q->onRootfs("k8s.io", "c", {}, uc);
  CHECK(f.rows()["ctrd:k8s.io/c"] == 500);  // recycled
  CHECK(q->containerFigures("k8s.io", "a")["project_id"].is_null());
}

TEST_CASE("ctrd ids: range exhausted, no upper dir, no quotas", "[ctrd-quota]") {
  Fixture f;
  f.opt.id_max = 501;
  auto q = f.make();
  q->onRootfs("k8s.io", "a", {}, f.upper("1"));
  q->onRootfs("k8s.io", "b", {}, f.upper("2"));
  q->onRootfs("k8s.io", "c", {}, f.upper("3"));
  CHECK(f.rows().size() == 2);
  CHECK(q->stats().tag_errors == 1);
  q->onRootfs("k8s.io", "d", {}, "");
  CHECK(q->stats().unresolved == 1);

  Fixture g;
  g.kernel.usable = false;
  auto q2 = g.make();
  q2->onRootfs("k8s.io", "a", {}, g.upper("1"));
  CHECK(q2->stats().degraded == 1);
  CHECK(g.rows().empty());
  CHECK_FALSE(q2->health().degraded.empty());
}

TEST_CASE("ctrd tenants share one project, freed with the last member", "[ctrd-quota]") {
  Fixture f;
  auto q = f.make();
  const std::map<std::string, std::string> ta{{"io.kubernetes.pod.namespace", "team-a"}};
  q->onRootfs("k8s.io", "a1", ta, f.upper("1"));
  q->onRootfs("k8s.io", "a2", ta, f.upper("2"));
  q->onRootfs("k8s.io", "solo", {}, f.upper("3"));
  CHECK(f.rows() == std::map<std::string, uint32_t>{{"ctrd-tenant:team-a", 500}, {"ctrd:k8s.io/solo", 501}});
  CHECK(f.kernel.limits[500] == 24 << 20);
  CHECK(f.kernel.tags[1].substr(f.kernel.tags[1].size() - 4) == "|500");
  auto t = q->tenants();
  REQUIRE(t.size() == 1);
  CHECK(t[0]["containers"].size() == 2);
  q->onContainerDelete("k8s.io", "a1");
  CHECK(f.rows().count("ctrd-tenant:team-a") == 1);  // a2 still in it
  q->onContainerDelete("k8s.io", "a2");
  CHECK(f.rows().count("ctrd-tenant:team-a") == 0);
  CHECK(q->tenants().empty());
}

TEST_CASE("ctrd reconcile after a restart frees what containerd no longer lists", "[ctrd-quota]") {
  Fixture f;
  const std::map<std::string, std::string> ta{{"io.kubernetes.pod.namespace", "team-a"}},
      tb{{"io.kubernetes.pod.namespace", "team-b"}};
  const auto u1 = f.upper("1"), u2 = f.upper("2"), u3 = f.upper("3"), u4 = f.upper("4");
  {
    auto q = f.make();
    q->onRootfs("k8s.io", "kept", {}, u1);
    q->onRootfs("k8s.io", "gone", {}, u2);
    q->onRootfs("k8s.io", "ta", ta, u3);
    q->onRootfs("k8s.io", "tb", tb, u4);
  }  // the agent killed; "gone" and "tb" deleted meanwhile
  REQUIRE(f.rows().size() == 4);
  auto q = f.make();
  // the watch's reconcile re-announces running tasks, then ends
  q->onRootfs("k8s.io", "kept", {}, u1);
  q->onRootfs("k8s.io", "ta", ta, u3);
  q->onReconcileEnd("k8s.io", {Fixture::live("kept", u1), Fixture::live("ta", u3, ta)});
  CHECK(f.rows() == std::map<std::string, uint32_t>{{"ctrd:k8s.io/kept", 500}, {"ctrd-tenant:team-a", 502}});
  CHECK(q->stats().reconcile_released == 2);
  CHECK(q->stats().ids_allocated == 0);  // the same ids as before the restart
}

TEST_CASE("ctrd limit reached: one event per crossing, kept across a restart", "[ctrd-quota]") {
  Fixture f;
  auto q = f.make();
  q->onRootfs("k8s.io", "a", {}, f.upper("1"));
  auto events = [&] {
    EventQuery eq;
    eq.type = "containerd_limit_reached";
    return f.store->eventLog().events(eq)->size();
  };
  f.kernel.usage[500] = ProjectUsage{(8 << 20) - 4096, 3};
  REQUIRE(q->sync());
  CHECK(q->containerFigures("k8s.io", "a")["used_bytes"] == (8 << 20) - 4096);
  CHECK(events() == 1);
  CHECK(q->stats().limit_events == 1);
  REQUIRE(q->sync());
  CHECK(events() == 1);
  q = f.make();  // restarted: the condition is remembered
  q->onRootfs("k8s.io", "a", {}, f.upper("1"));
  REQUIRE(q->sync());
  CHECK(events() == 1);
  f.kernel.usage[500].bytes = 1 << 20;  // freed some
  REQUIRE(q->sync());
  f.kernel.usage[500].bytes = 8 << 20;
  REQUIRE(q->sync());
  CHECK(events() == 2);
  CHECK(q->stats().syncs == 3);
}

TEST_CASE("ctrd tenant at its limit: off by default; on, its newest container removed, once", "[ctrd-quota]") {
  Fixture f;
  std::vector<std::string> removed;
  Status answer;  // what the runtime's remove says
  f.opt.interval = std::chrono::milliseconds(50);
  f.opt.remove = [&](const std::string& ns, const std::string& id) {
    removed.push_back(ns + "/" + id);
    return answer;
  };
  const std::map<std::string, std::string> ta{{"io.kubernetes.pod.namespace", "team-a"}};
  auto fill = [&](CtrdQuotas& q) {
    // created: old, newest, middle (CreatedAt orders them, not the hook order)
    q.onRootfs("k8s.io", "old", ta, f.upper("1"), 1'000);
    q.onRootfs("k8s.io", "newest", ta, f.upper("2"), 3'000);
    q.onRootfs("k8s.io", "mid", ta, f.upper("3"), 2'000);
    q.onRootfs("k8s.io", "solo", {}, f.upper("4"), 9'000);  // its own project, full too: never removed
  };
  {
    auto q = f.make();  // off (the default)
    fill(*q);
    f.kernel.usage[500] = ProjectUsage{24 << 20, 3};
    f.kernel.usage[501] = ProjectUsage{8 << 20, 1};
    REQUIRE(q->sync());
    CHECK(removed.empty());
    CHECK(q->health().report["tenant_remove_newest"] == false);
  }
  f.opt.tenant_remove_newest = true;
  auto q = f.make();
  fill(*q);
  REQUIRE(q->sync());
  CHECK(removed == std::vector<std::string>{"k8s.io/newest"});
  CHECK(q->stats().tenant_removals == 1);
  EventQuery eq;
  eq.type = "containerd_tenant_removed";
  auto ev = f.store->eventLog().events(eq);
  REQUIRE(ev);
  REQUIRE(ev->size() == 1);
  CHECK(ev->front().event.detail["container"] == "k8s.io/newest");
  CHECK(ev->front().event.detail["tenant"] == "team-a");
  // Its delete comes back through the watch; the tenant is still full at the
  // next read (the snapshot's blocks not yet gone): nothing more until the
  // cool-down of three intervals has passed.
  q->onContainerDelete("k8s.io", "newest");
  REQUIRE(q->sync());
  CHECK(removed.size() == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // A failed removal is counted and degrades /healthz until one succeeds.
  answer = Error{EIO, "containerd said no"};
  REQUIRE(q->sync());
  CHECK(removed.back() == "k8s.io/mid");
  CHECK(q->stats().tenant_removal_errors == 1);
  auto h = q->health();
  REQUIRE(h.degraded.size() == 1);
  CHECK(h.degraded[0].find("k8s.io/mid") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  answer = Status{};
  REQUIRE(q->sync());
  CHECK(removed.back() == "k8s.io/mid");
  CHECK(q->stats().tenant_removals == 2);
  CHECK(q->health().degraded.empty());
  // Below the limit: nothing removed, however long it waits.
  q->onContainerDelete("k8s.io", "mid");
  f.kernel.usage[500].bytes = 1 << 20;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  REQUIRE(q->sync());
  CHECK(removed.size() == 3);
}

// The churn of vm_containerd_quotas at the size the issue asks (500 cycles),
// without a kernel: the agent "killed" (its object dropped, the Store kept)
// at random points, containers deleted while it is down, restarts that
// reconcile as the watch does (every live container announced again, then
// the reconcile's end). Afterwards the rows are exactly the live containers
// and tenants, ids distinct, and every released id has its limit cleared.
TEST_CASE("ctrd churn: 500 cycles with restarts at random points, no leaked id, no stale row", "[ctrd-quota]") {
  Fixture f;
  f.opt.id_max = 1499;
  std::mt19937 rnd(15);
  auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rnd) < p; };
  struct Live {
    std::string upper;
    std::map<std::string, std::string> labels;
  };
  std::map<std::string, Live> live;  // what containerd holds
  auto q = f.make();
  auto restart = [&] {
    q.reset();                                                   // kill -9: whatever it held in memory is gone
    if (chance(0.5) && !live.empty()) live.erase(live.begin());  // deleted while it was down
    q = f.make();
    std::vector<CtrdContainer> listed;
    for (const auto& [id, c] : live) {
      q->onRootfs("k8s.io", id, c.labels, c.upper);
      listed.push_back(Fixture::live(id, c.upper, c.labels));
    }
    q->onReconcileEnd("k8s.io", listed);
  };
  int kills = 0;
  for (int i = 0; i < 500; i++) {
    const std::string id = "ch" + std::to_string(i);
    Live c{f.upper(std::to_string(i)), {}};
    if (chance(0.2)) c.labels["io.kubernetes.pod.namespace"] = chance(0.5) ? "team-a" : "team-b";
    live[id] = c;
    if (chance(0.15)) {  // killed before it saw the create
      kills++;
      restart();
    } else {
      q->onRootfs("k8s.io", id, c.labels, c.upper);
    }
    if (chance(0.15)) {  // killed between the create and the delete
      kills++;
      restart();
    }
    if (live.count(id) && chance(0.8)) {
      live.erase(id);
      q->onContainerDelete("k8s.io", id);
    }
  }
  restart();
  kills++;
  std::set<std::string> want;
  for (const auto& [id, c] : live) {
    auto t = c.labels.find("io.kubernetes.pod.namespace");
    want.insert(t != c.labels.end() ? std::string(kCtrdTenantKind) + ":" + t->second
                                    : std::string(kCtrdKind) + ":k8s.io/" + id);
  }
  const auto rows = f.rows();
  std::set<std::string> got;
  std::set<uint32_t> ids;
  for (const auto& [owner, pid] : rows) {
    got.insert(owner);
    ids.insert(pid);
  }
  INFO(kills << " kills, " << live.size() << " live");
  CHECK(kills > 100);
  CHECK(got == want);
  CHECK(ids.size() == rows.size());
  for (const auto& [pid, limit] : f.kernel.limits)
    if (!ids.count(pid)) CHECK(limit == 0);  // released: cleared for the next owner
}
