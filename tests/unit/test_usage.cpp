// SPDX-License-Identifier: Apache-2.0
// Usage accounting with synthetic Docker figures: per-user sums, layer
// ownership (once per host, first image wins), and the device totals.
#include <catch2/catch.hpp>

#include <fstream>

#include "agent/quota/quotas.h"
#include "agent/usage/usage.h"
#include "qman_fixture.h"

using namespace dockquota;
using namespace dockquota::testing;

TEST_CASE("usage: chain ids follow the image spec", "[qman][usage]") {
  const std::string a = "sha256:" + std::string(64, 'a'), b = "sha256:" + std::string(64, 'b'),
                    c = "sha256:" + std::string(64, 'c');
  // Computed independently: python3 hashlib.sha256(f"{a} {b}").
  auto ids = chainIds({a, b, c});
  REQUIRE(ids.size() == 3);
  CHECK(ids[0] == a);
  CHECK(ids[1] == "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c");
  CHECK(ids[2] == "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588");
  CHECK(chainIds({}).empty());
}

TEST_CASE("usage: directoryBytes counts file bytes, hard links once", "[qman][usage]") {
  QmanTempDir dir;
  std::ofstream(dir.path + "/a") << std::string(1000, 'x');
  std::system(("mkdir -p " + dir.path + "/sub && head -c 4096 /dev/zero > " + dir.path + "/sub/b && ln " + dir.path +
               "/sub/b " + dir.path + "/sub/b2")
                  .c_str());
  CHECK(directoryBytes(dir.path) == 1000 + 4096);
  CHECK(directoryBytes(dir.path + "/missing") == 0);
}

TEST_CASE("usage: two users, shared and unshared layers, containers, volumes add up exactly", "[qman][usage]") {
  QmanTempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  Scenario sc;
  sc.fill(**store);
  OwnerView owners = ownersOf(**store);
  UsageSnapshot s = account(std::make_shared<const UsageFigures>(sc.figures()), owners, true);

  CHECK(s.total_bytes == Scenario::kTotal);
  REQUIRE(s.users.count(kAlice));
  REQUIRE(s.users.count(kBob));
  CHECK(s.users[kAlice].container_bytes == 1000);
  CHECK(s.users[kAlice].image_layer_bytes == Scenario::L1 + Scenario::L2);
  CHECK(s.users[kAlice].volume_bytes == 0);
  CHECK(s.users[kBob].container_bytes == 2000);
  CHECK(s.users[kBob].image_layer_bytes == Scenario::L3);  // the shared base is alice's
  CHECK(s.users[kBob].volume_bytes == 5000);
  CHECK(s.users[kCarol].image_layer_bytes == Scenario::L6);  // L5 came with an unattributed image
  CHECK(s.users[kAlice].total() == Scenario::kAliceBytes);
  CHECK(s.users[kBob].total() == Scenario::kBobBytes);
  CHECK(s.users[kCarol].total() == Scenario::kCarolBytes);
  CHECK(s.users[0].image_layer_bytes == Scenario::L0);

  const uint64_t a = s.attributedTo(managedUid);
  CHECK(a == Scenario::kAliceBytes + Scenario::kBobBytes + Scenario::kCarolBytes);
  CHECK(s.total_bytes - a == Scenario::kUnattributed);
  CHECK(a + Scenario::kUnattributed == Scenario::kTotal);

  // Rows: the Docker-only container is listed unattributed, the intermediate image is not listed.
  CHECK(s.containers.size() == 4);
  CHECK(s.images.size() == 5);
  CHECK(s.layers.size() == 7);
  CHECK(s.layer_bytes ==
        Scenario::L0 + Scenario::L1 + Scenario::L2 + Scenario::L3 + Scenario::L4 + Scenario::L5 + Scenario::L6);
  CHECK(s.counts["container"]["bpf"] == 3);
  CHECK(s.counts["volume"]["unattributed"] == 1);
}

TEST_CASE("usage: root acting for a logged-in user bills that user", "[qman][usage]") {
  QmanTempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  const std::string cid(64, 'd');
  REQUIRE((*store)->objects().noteSeen(ObjectKind::Container, cid, "sudo-c", "", std::nullopt, 1));
  Evidence ev = evidenceOf(0, 2, "container_create");
  ev.login_uid = kAlice;
  REQUIRE((*store)->objects().attribute(ObjectKind::Container, cid, ev, true).ok());
  UsageFigures f;
  f.addContainer(cid, "sudo-c", "", "running", 123);
  OwnerView owners;
  owners.containers = *(*store)->objects().list(ObjectKind::Container);
  auto figures = std::make_shared<const UsageFigures>(std::move(f));
  CHECK(account(figures, owners, true).users[kAlice].container_bytes == 123);
  CHECK(account(figures, owners, false).users[0].container_bytes == 123);
}

TEST_CASE("usage: the accountant publishes snapshots, keeps the last figures on failure", "[qman][usage]") {
  QmanTempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  Scenario sc;
  sc.fill(**store);
  auto src = std::make_unique<FakeSource>(sc.figures());
  FakeSource* fake = src.get();
  UsageAccountant acc(**store, std::move(src), {std::chrono::milliseconds(50), true, {}, {}});
  CHECK_FALSE(acc.snapshot()->measured);
  REQUIRE(acc.refresh());
  auto s1 = acc.snapshot();
  CHECK(s1->measured);
  CHECK(s1->total_bytes == Scenario::kTotal);
  CHECK(s1->source == "fake");
  // Sizes and layers went to the store.
  CHECK((*store)->objects().get(ObjectKind::Container, sc.c2)->value().size_bytes == 2000);
  CHECK((*store)->objects().layers()->size() == 7);
  for (const auto& l : s1->layers) CHECK(l.first_seen == Approx(100));

  fake->fail = true;
  CHECK_FALSE(acc.refresh().ok());
  auto s2 = acc.snapshot();
  CHECK(s2->generation > s1->generation);
  CHECK(s2->total_bytes == Scenario::kTotal);  // still the last figures
  CHECK(s2->error == "fake: docker unreachable");
  CHECK(acc.failures() == 1);

  // The thread measures on its own and on refreshNow().
  fake->fail = false;
  acc.start();
  for (int i = 0; i < 200 && acc.measurements() < 3; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  acc.refreshNow();
  acc.stop();
  CHECK(acc.measurements() >= 3);
  CHECK(acc.snapshot()->error.empty());
}

TEST_CASE("usage: rows point at text that lives as long as their snapshot", "[qman][usage]") {
  QmanTempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  Scenario sc;
  sc.fill(**store);
  std::shared_ptr<const UsageSnapshot> snap;
  {
    OwnerView owners = ownersOf(**store);
    // A stored name that differs from Docker's, so the snapshot keeps a copy.
    owners.containers.front().name = std::string(40, 'n');
    snap = std::make_shared<UsageSnapshot>(account(std::make_shared<const UsageFigures>(sc.figures()), owners, true));
  }
  // The owners are gone; churn the heap over what they held.
  std::vector<std::string> churn(1000, std::string(100, 'x'));
  auto row = [&](const std::vector<UsageRow>& rows, std::string_view id) -> const UsageRow& {
    auto it = std::find_if(rows.begin(), rows.end(), [&](const UsageRow& r) { return r.id == id; });
    REQUIRE(it != rows.end());
    return *it;
  };
  const UsageRow& c1 = row(snap->containers, sc.c1);
  CHECK(c1.name == std::string(40, 'n'));
  CHECK(c1.parent == img('a'));
  CHECK(c1.status == "running");  // short: inside the figure's string itself
  CHECK(c1.method == "container_create");
  const UsageRow& stray = row(snap->containers, sc.c4);
  CHECK(stray.name == "stray");
  CHECK(stray.status == "created");
  CHECK(stray.method.empty());
  CHECK_FALSE(stray.known);
  const UsageRow& pre = row(snap->images, img('p'));
  CHECK(pre.name == "pre:1");
  REQUIRE(pre.tags().size() == 1);
  CHECK(pre.tags()[0] == "pre:1");
  const UsageRow& l1 = row(snap->layers, "L1");
  CHECK(l1.parent == img('a'));
  CHECK(l1.method == "image_import");
  CHECK(row(snap->volumes, "v2").name == "v2");
  CHECK(snap->figures.use_count() == 1);  // the snapshot alone keeps its figures now
}

TEST_CASE("usage: the text pool keeps one copy of each string, in blocks that do not move", "[usage]") {
  TextPool pool;
  std::vector<std::pair<std::string, std::string_view>> kept;
  for (int i = 0; i < 5000; i++) {
    std::string s = "text-" + std::to_string(i) + std::string(static_cast<size_t>(i % 50), 'y');
    kept.emplace_back(s, pool.add(s));
  }
  const std::string big(40000, 'b');  // longer than a block
  std::string_view big_view = pool.add(big);
  std::string_view after = pool.add("after the big one");
  CHECK(pool.add("text-7" + std::string(7, 'y')).data() == kept[7].second.data());  // one copy
  CHECK(pool.add("").empty());
  TextPool moved = std::move(pool);
  moved.seal();
  for (const auto& [s, v] : kept) REQUIRE(v == s);
  CHECK(big_view == big);
  CHECK(after == "after the big one");
}
