// SPDX-License-Identifier: Apache-2.0
// Store schema v2: per-uid limits, device defaults, layers, sizes, override
// resolver, evidence rows. Real SQLite files in a temp dir.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "tests/unit/qman_fixture.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;

namespace {

using QuotaTempDir = TempDir;

std::unique_ptr<Store> openStore(const std::string& path) {
  auto s = Store::open(path);
  INFO((s ? std::string() : s.error().message));
  REQUIRE(s.ok());
  return std::move(*s);
}

Evidence ev(uint32_t uid, double t, const std::string& method, Source src = Source::Bpf) {
  return testing::evidenceOf(uid, t, method, src);
}

}  // namespace

TEST_CASE("store v2: user limits are 64-bit KiB, 0 removes, survive a restart", "[qman][store]") {
  QuotaTempDir dir;
  const std::string path = dir.path + "/s.db";
  const uint64_t big = uint64_t(1) << 40;  // 1 PiB in KiB: bytes exceed 2^32 many times over
  {
    auto s = openStore(path);
    CHECK(s->schemaVersion() == Store::kSchemaVersion);
    REQUIRE(s->limits().setUserLimit(2001, 20971520, 1.0));
    REQUIRE(s->limits().setUserLimit(2002, big, 1.0));
    REQUIRE(s->limits().setUserLimit(2003, 5, 1.0));
    REQUIRE(s->limits().setUserLimit(2003, 0, 2.0));  // removed
    REQUIRE(s->limits().setUserLimit(2004, 0, 2.0));  // never set: still nothing
  }
  auto s = openStore(path);
  auto limits = s->limits().userLimits();
  REQUIRE(limits.ok());
  CHECK(*limits == std::map<uint32_t, uint64_t>{{2001, 20971520}, {2002, big}});

  // Several at once, one transaction; a value SQLite cannot hold is refused and nothing changes.
  REQUIRE(s->limits().setUserLimits({{2001, 1}, {2005, 7}}, 3.0));
  CHECK(*s->limits().userLimits() == std::map<uint32_t, uint64_t>{{2001, 1}, {2002, big}, {2005, 7}});
  CHECK_FALSE(s->limits().setUserLimits({{2006, 9}, {2007, UINT64_MAX}}, 4.0).ok());
  CHECK(*s->limits().userLimits() == std::map<uint32_t, uint64_t>{{2001, 1}, {2002, big}, {2005, 7}});
}

TEST_CASE("store v2: device defaults", "[qman][store]") {
  QuotaTempDir dir;
  auto s = openStore(dir.path + "/s.db");
  auto none = s->limits().deviceDefault("docker");
  REQUIRE(none.ok());
  CHECK_FALSE(none->has_value());
  REQUIRE(s->limits().setDeviceDefault({"docker", 1, 10485760, 3, 4}, 1.0));
  REQUIRE(s->limits().setDeviceDefault({"docker", 2, 20971520, 0, 0}, 2.0));
  auto d = s->limits().deviceDefault("docker");
  REQUIRE(d.ok());
  REQUIRE(d->has_value());
  CHECK((*d)->block_soft_kib == 2);
  CHECK((*d)->block_hard_kib == 20971520);
  CHECK((*d)->inode_soft == 0);
  CHECK_FALSE(s->limits().deviceDefault("/dev/sda1")->has_value());
}

TEST_CASE("store v2: layers keep their first sighting, lose what no image has", "[qman][store]") {
  QuotaTempDir dir;
  auto s = openStore(dir.path + "/s.db");
  auto first = s->objects().syncLayers(
      {{"sha256:l1", 100, 2001u, "sha256:img1", 0}, {"sha256:l2", 200, std::nullopt, "", 0}}, 10.0);
  REQUIRE(first.ok());
  REQUIRE(first->size() == 2);
  CHECK((*first)[0].first_seen == 10.0);
  auto second = s->objects().syncLayers(
      {{"sha256:l2", 250, 2002u, "sha256:img2", 0}, {"sha256:l3", 5, std::nullopt, "", 0}}, 20.0);
  REQUIRE(second.ok());
  REQUIRE(second->size() == 2);
  CHECK((*second)[0].id == "sha256:l2");
  CHECK((*second)[0].first_seen == 10.0);  // kept
  CHECK((*second)[0].size_bytes == 250);
  CHECK((*second)[0].owner_uid == std::optional<uint32_t>(2002));
  CHECK((*second)[1].id == "sha256:l3");
  CHECK((*second)[1].first_seen == 20.0);
  CHECK_FALSE((*second)[1].owner_uid.has_value());
  CHECK(s->objects().layers()->size() == 2);
}

TEST_CASE("store v2: sizes, override resolver, attribution detail, evidence rows", "[qman][store]") {
  QuotaTempDir dir;
  auto s = openStore(dir.path + "/s.db");
  const std::string cid(64, 'c');
  REQUIRE(s->objects().noteSeen(ObjectKind::Container, cid, "web", "sha256:i", std::nullopt, 1.0));
  REQUIRE(s->objects().attribute(ObjectKind::Container, cid, ev(2001, 2.0, "container_create"), true).ok());
  REQUIRE(s->objects().setSizes(ObjectKind::Container, {{cid, 5000000000ULL}, {"unknown", 7}}));
  CHECK(s->objects().get(ObjectKind::Container, cid)->value().size_bytes == 5000000000ULL);

  auto d = s->objects().detail(ObjectKind::Container, cid);
  REQUIRE(d.ok());
  REQUIRE(d->has_value());
  CHECK((*d)->automatic->uid == 2001);
  CHECK_FALSE((*d)->override_.has_value());

  REQUIRE(s->objects().setOverride(ObjectKind::Container, cid, ev(2002, 3.0, "admin_override", Source::Admin),
                                   "admin@qman"));
  d = s->objects().detail(ObjectKind::Container, cid);
  REQUIRE((*d)->override_.has_value());
  CHECK((*d)->override_->uid == 2002);
  CHECK((*d)->automatic->uid == 2001);  // still underneath
  CHECK((*d)->resolver == "admin@qman");
  CHECK((*d)->record.owner->source == Source::Admin);

  auto rows = s->objects().evidenceRows(ObjectKind::Container, cid, 10);
  REQUIRE(rows.ok());
  REQUIRE(rows->size() == 2);
  CHECK((*rows)[0].ev.source == Source::Admin);  // newest first
  CHECK((*rows)[0].seq > (*rows)[1].seq);
  CHECK(s->objects().evidenceRows(std::nullopt, "", 1)->size() == 1);
  CHECK(s->objects().evidenceRows(ObjectKind::Volume, "", 10)->empty());

  REQUIRE(s->objects().clearOverride(ObjectKind::Container, cid));
  d = s->objects().detail(ObjectKind::Container, cid);
  CHECK_FALSE((*d)->override_.has_value());
  CHECK((*d)->record.owner->uid == 2001);
  CHECK_FALSE(s->objects().detail(ObjectKind::Image, "sha256:none")->has_value());
}

TEST_CASE("quota rules: default application and batch", "[qman]") {
  const uint64_t gib_kib = kGiB / 1024;
  CHECK(defaultLimitKiB(10 * gib_kib, 0) == 10 * gib_kib);
  CHECK(defaultLimitKiB(10 * gib_kib, 10 * kGiB) == 10 * gib_kib);      // not exceeding
  CHECK(defaultLimitKiB(10 * gib_kib, 10 * kGiB + 1) == 13 * gib_kib);  // +2 GiB, rounded up
  CHECK(defaultLimitKiB(1, 12 * kGiB) == 14 * gib_kib);

  auto plan = planDefaults({999, 2001, 2002, 2003, 65534}, {{2002, 5}}, {{2003, 20 * kGiB}}, 10 * gib_kib);
  CHECK(plan == std::map<uint32_t, uint64_t>{{2001, 10 * gib_kib}, {2003, 22 * gib_kib}});
  CHECK(planDefaults({2001}, {}, {}, 0).empty());

  BatchRequest br;
  br.block_hard_kib = 1024;
  br.preserve_if_nonzero = true;
  auto b = planBatch({0, 2001, 2002, 2003}, {{2002, 5}}, {{2003, 2 * 1024 * 1024}}, br);
  CHECK(b.total_users == 3);
  CHECK(b.skipped_users == 1);
  CHECK(b.set == std::map<uint32_t, uint64_t>{{2001, 1024}, {2003, 1024}});
  br.preserve_if_usage_exceeds = true;
  b = planBatch({2001, 2002, 2003}, {{2002, 5}}, {{2003, 2 * 1024 * 1024}}, br);
  CHECK(b.skipped_users == 2);  // 2002 has a limit, 2003 uses 2048 KiB > 1024
  CHECK(b.set == std::map<uint32_t, uint64_t>{{2001, 1024}});
}

TEST_CASE("QuotaBook: write-through, refuses absurd limits, default application", "[qman]") {
  QuotaTempDir dir;
  auto s = openStore(dir.path + "/s.db");
  auto book = QuotaBook::load(*s);
  REQUIRE(book.ok());
  REQUIRE((*book)->setLimit(2001, 100));
  CHECK((*book)->limitKiB(2001) == 100);
  CHECK_FALSE((*book)->setLimit(2001, kMaxLimitKiB + 1).ok());
  CHECK((*book)->limitKiB(2001) == 100);
  CHECK(*s->limits().userLimits() == std::map<uint32_t, uint64_t>{{2001, 100}});
  auto again = QuotaBook::load(*s);
  CHECK((*again)->limitKiB(2001) == 100);

  REQUIRE((*book)->setDeviceDefault({"docker", 0, 1024, 0, 0}));
  auto n = applyDefaults(**book, {2001, 2002, 2003}, {{2003, 5 * kGiB}});
  REQUIRE(n.ok());
  CHECK(*n == 2);
  CHECK(*(*book)->limits() == QuotaBook::Limits{{2001, 100}, {2002, 1024}, {2003, 7 * (kGiB / 1024)}});
  CHECK(*s->limits().userLimits() == *(*book)->limits());

  // The defaults job plans, then a PUT lands before it writes: the PUT stays.
  auto plan = planDefaults({2004, 2005}, *(*book)->limits(), {}, 1024);
  REQUIRE(plan.size() == 2);
  REQUIRE((*book)->setLimit(2004, 4096));
  auto set = (*book)->setLimitsWhereUnset(plan);
  REQUIRE(set.ok());
  CHECK(*set == 1);
  CHECK((*book)->limitKiB(2004) == 4096);
  CHECK((*book)->limitKiB(2005) == 1024);
  CHECK(*s->limits().userLimits() == *(*book)->limits());
  CHECK(*(*book)->setLimitsWhereUnset({{2004, 1}, {2005, 1}}) == 0);  // nothing unset: nothing written
}

TEST_CASE("UserDirectory: passwd names, user_<uid> fallback, managed filter", "[qman]") {
  UserDirectory dir([] {
    return std::vector<PasswdUser>{{0, "root"}, {2001, "alice"}, {2002, "bob"}, {65534, "nobody"}, {12000, "big"}};
  });
  CHECK(dir.name(2001) == "alice");
  CHECK(dir.name(4321) == "user_4321");
  CHECK(dir.uid("bob") == std::optional<uint32_t>(2002));
  CHECK(dir.uid("user_4321") == std::optional<uint32_t>(4321));
  CHECK_FALSE(dir.uid("user_2001").has_value());  // 2001 is alice
  CHECK_FALSE(dir.uid("user_").has_value());
  CHECK_FALSE(dir.uid("user_0123").has_value());
  CHECK_FALSE(dir.uid("user_99999999999").has_value());
  CHECK_FALSE(dir.uid("zed").has_value());
  // resolve(): a uid written out, else a name.
  CHECK(dir.resolve("2001") == std::optional<uint32_t>(2001));
  CHECK(dir.resolve("4321") == std::optional<uint32_t>(4321));  // no passwd entry needed
  CHECK(dir.resolve("bob") == std::optional<uint32_t>(2002));
  CHECK(dir.resolve("user_4321") == std::optional<uint32_t>(4321));
  CHECK_FALSE(dir.resolve("4294967296").has_value());  // past 32 bits, and no such name
  CHECK_FALSE(dir.resolve("").has_value());
  auto m = dir.managed();
  REQUIRE(m.size() == 2);
  CHECK(m[0].name == "alice");
  CHECK(m[1].name == "bob");
}
