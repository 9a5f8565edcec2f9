// SPDX-License-Identifier: Apache-2.0
// Block devices and the merged device list against the spec's own documents
// (../shared/spec/qman-slave-devices.md §3, §6): discovery from mountinfo,
// device assembly, units, ordering, and the qman routes over loopback HTTP
// with a fake device that records every write.
#include <catch2/catch.hpp>

#include <sys/mount.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/quota/block_quota.h"
#include "agent/quota/disk_notices.h"
#include "agent/quota/quota_devices.h"
#include "api/qman_api.h"
#include "api/qman_devices.h"
#include "api/user_api.h"
#include "tests/unit/in_ci.h"
#include "tests/unit/qman_agent.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using namespace dockquota::testing;
using json = nlohmann::json;

namespace {

// §6: ext4 -O quota mounted usrquota,grpquota on /home, bind-mounted on /srv/home.
const char* kMountinfo =
    "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw\n"
    "30 22 259:3 / /home rw,relatime shared:2 - ext4 /dev/nvme0n1p2 rw,quota,usrquota,grpquota\n"
    "31 22 0:25 / /tmp rw,nosuid,nodev shared:3 - tmpfs tmpfs rw,size=1024k\n"
    "32 22 259:3 / /srv/home rw,relatime shared:2 - ext4 /dev/nvme0n1p2 rw,quota,usrquota,grpquota\n"
    "33 22 7:0 / /mnt/x rw,noatime - xfs /dev/loop0 "
    "rw,lazytime,attr2,inode64,logbufs=8,logbsize=32k,usrquota,grpquota\n"
    "34 22 7:1 / /mnt/noenf rw,relatime - xfs /dev/loop1 rw,attr2,inode64,uqnoenforce\n"
    "35 22 7:2 / /mnt/plain rw,relatime - ext4 /dev/loop2 rw\n"
    "36 22 7:3 / /mnt/sp\\040ace rw,relatime - ext4 /dev/loop3 rw,usrquota\n"
    "37 22 0:40 / /mnt/b rw,relatime - btrfs /dev/loop4 rw,usrquota\n"
    "38 22 259:1 / /boot rw,relatime - ext4 /dev/root rw,usrquota\n";

// The spec's example figures for /dev/nvme0n1p2 (§6).
DeviceSnapshot exampleExt4() {
  DeviceSnapshot s;
  s.name = "/dev/nvme0n1p2";
  s.mount_points = {"/home", "/srv/home"};
  s.fstype = "ext4";
  s.opts = {"rw", "relatime", "quota", "usrquota", "grpquota"};
  s.usage = {1073741824000, 429496729600, 590558003200, 42.1};
  const QuotaInfo info{604800, 604800, 65536};
  s.users = {true,
             "vfsv1",
             info,
             {QuotaFigures{0, 0, 0, 4096, 0, 0, 3, 0, 0},  // root: an entry, not a candidate
              QuotaFigures{1001, 125829120, 104857600, 118111600640, 0, 0, 51234, 1780302400, 0},
              QuotaFigures{1002, 62914560, 52428800, 21474836480, 0, 0, 1200, 0, 0}}};
  s.groups = {true, "vfsv1", info, {QuotaFigures{1001, 0, 0, 139586437120, 0, 0, 52434, 0, 0}}};
  s.rule = ListRule::kPasswdZeroFill;
  return s;
}

Candidates exampleCandidates() {
  return Candidates{{{1001, "alice"}, {1002, "bob"}, {1003, "carol"}}, {{1001, "team"}}};
}

std::string nameOf(uint32_t uid) {
  switch (uid) {
    case 1001: return "alice";
    case 1002: return "bob";
    case 1003: return "carol";
    default: return "user_" + std::to_string(uid);
  }
}

const char* kExampleDevice = R"({"name": "/dev/nvme0n1p2", "mount_points": ["/home", "/srv/home"], "fstype": "ext4",
  "opts": ["rw", "relatime", "quota", "usrquota", "grpquota"],
  "usage": {"total": 1073741824000, "used": 429496729600, "free": 590558003200, "percent": 42.1},
  "user_quota_format": "vfsv1", "user_quota_info": {"block_grace": 604800, "inode_grace": 604800, "flags": 65536},
  "user_quotas": [
   {"uid": 1001, "name": "alice", "block_hard_limit": 125829120, "block_soft_limit": 104857600,
    "block_current": 118111600640, "inode_hard_limit": 0, "inode_soft_limit": 0, "inode_current": 51234,
    "block_time_limit": 1780302400, "inode_time_limit": 0},
   {"uid": 1002, "name": "bob", "block_hard_limit": 62914560, "block_soft_limit": 52428800,
    "block_current": 21474836480, "inode_hard_limit": 0, "inode_soft_limit": 0, "inode_current": 1200,
    "block_time_limit": 0, "inode_time_limit": 0},
   {"uid": 1003, "name": "carol", "block_hard_limit": 0, "block_soft_limit": 0, "block_current": 0,
    "inode_hard_limit": 0, "inode_soft_limit": 0, "inode_current": 0, "block_time_limit": 0, "inode_time_limit": 0}],
  "group_quota_format": "vfsv1", "group_quota_info": {"block_grace": 604800, "inode_grace": 604800, "flags": 65536},
  "group_quotas": [
   {"gid": 1001, "name": "team", "block_hard_limit": 0, "block_soft_limit": 0, "block_current": 139586437120,
    "inode_hard_limit": 0, "inode_soft_limit": 0, "inode_current": 52434, "block_time_limit": 0, "inode_time_limit": 0}]})";

}  // namespace

TEST_CASE("block devices: discovery from mountinfo, options as /proc/self/mounts shows them", "[block]") {
  auto table = parseMountinfo(kMountinfo);
  auto devName = [](dev_t d) { return std::string(minor(d) == 1 ? "/dev/nvme0n1p1" : "/dev/nvme0n1p5"); };
  auto mounts = discoverBlockMounts(table, BlockFilter{}, devName);
  REQUIRE(mounts.size() == 4);
  CHECK(mounts[0].source == "/dev/nvme0n1p2");
  CHECK(mounts[0].mount_points == std::vector<std::string>{"/home", "/srv/home"});  // bind mounts: one device
  CHECK(mounts[0].opts == std::vector<std::string>{"rw", "relatime", "quota", "usrquota", "grpquota"});
  CHECK((mounts[0].usrquota && mounts[0].grpquota));
  // XFS uquota shows as usrquota; the superblock flag lazytime comes before the mount's flags.
  CHECK(mounts[1].source == "/dev/loop0");
  CHECK(mounts[1].opts == std::vector<std::string>{"rw", "lazytime", "noatime", "attr2", "inode64", "logbufs=8",
                                                   "logbsize=32k", "usrquota", "grpquota"});
  CHECK(mounts[2].mount_points == std::vector<std::string>{"/mnt/sp ace"});
  CHECK((mounts[2].usrquota && !mounts[2].grpquota));
  // /dev/root is named by its device number; uqnoenforce, no option, btrfs and tmpfs are not devices.
  CHECK(mounts[3].source == "/dev/nvme0n1p1");
  CHECK(mounts[3].mount_points == std::vector<std::string>{"/boot"});

  CHECK(discoverBlockMounts(table, BlockFilter{{"/home"}, {}}, devName).size() == 1);
  CHECK(discoverBlockMounts(table, BlockFilter{{}, {"/dev/loop0", "/srv/home"}}, devName).size() == 2);
  CHECK(unservedQuotaMounts(table) == std::vector<std::string>{"usrquota on /mnt/b (btrfs): not ext4 or XFS"});
  CHECK(quotaFormatName(2) == "vfsv0");
  CHECK(quotaFormatName(4) == "vfsv1");
  CHECK(quotaFormatName(3).empty());
}

TEST_CASE("block devices: the spec's example device, field for field", "[block]") {
  auto text = deviceText(exampleExt4(), exampleCandidates(), nameOf);
  REQUIRE(text);
  CHECK(json::parse(*text) == json::parse(kExampleDevice));

  // XFS: candidates without a dquot are left out (carol), never zero-filled.
  DeviceSnapshot x = exampleExt4();
  x.rule = ListRule::kPasswdPresent;
  json xj = json::parse(*deviceText(x, exampleCandidates(), nameOf));
  REQUIRE(xj["user_quotas"].size() == 2);
  CHECK(xj["user_quotas"][1]["name"] == "bob");

  // A uid twice in passwd (and a system user) is listed once.
  Candidates twice = exampleCandidates();
  twice.users = managedInOrder({{1002, "bob"}, {0, "root"}, {1001, "alice"}, {1002, "bob2"}, {65534, "nobody"}});
  json tj = json::parse(*deviceText(exampleExt4(), twice, nameOf));
  REQUIRE(tj["user_quotas"].size() == 2);
  CHECK(tj["user_quotas"][0]["uid"] == 1002);  // passwd order, not uid order
  CHECK(tj["user_quotas"][1]["uid"] == 1001);

  // Quota off (every quotactl ESRCH): listed with empty lists and no format/info.
  DeviceSnapshot off = exampleExt4();
  off.users = {true, std::nullopt, std::nullopt, {}, false};
  off.groups = {true, std::nullopt, std::nullopt, {}, false};  // ext4 would zero-fill every candidate if it were on
  json oj = json::parse(*deviceText(off, exampleCandidates(), nameOf));
  CHECK(oj["user_quotas"] == json::array());
  CHECK(oj["group_quotas"] == json::array());
  CHECK_FALSE(oj.contains("user_quota_format"));
  CHECK_FALSE(oj.contains("user_quota_info"));
  CHECK_FALSE(deviceTextFor(off, 1001, "alice"));  // the per-uid routes leave it out
  // usrquota only: no group fields at all.
  DeviceSnapshot u = exampleExt4();
  u.groups = {};
  json uj = json::parse(*deviceText(u, exampleCandidates(), nameOf));
  CHECK_FALSE(uj.contains("group_quotas"));
  CHECK_FALSE(uj.contains("group_quota_format"));
}

TEST_CASE("block devices: per-uid variant and the merged order", "[block]") {
  const DeviceSnapshot s = exampleExt4();
  json alice = json::parse(*deviceTextFor(s, 1001, "alice"));
  json full = json::parse(kExampleDevice);
  CHECK(alice["user_quotas"] == json::array({full["user_quotas"][0]}));
  CHECK(alice["user_quota_info"] == full["user_quota_info"]);
  for (const char* k : {"group_quotas", "group_quota_format", "group_quota_info"}) CHECK_FALSE(alice.contains(k));
  // ext4 answers zeros for anyone (root included: no uid filter); XFS leaves an id without a dquot out.
  json root = json::parse(*deviceTextFor(s, 0, "root"));
  CHECK(root["user_quotas"][0]["block_current"] == 4096);
  CHECK(json::parse(*deviceTextFor(s, 1003, "carol"))["user_quotas"][0]["block_hard_limit"] == 0);
  DeviceSnapshot x = s;
  x.rule = ListRule::kPasswdPresent;
  CHECK_FALSE(deviceTextFor(x, 1003, "carol"));
  DeviceSnapshot z = s;
  z.rule = ListRule::kAllIds;
  CHECK_FALSE(deviceTextFor(z, 0, "root"));  // ZFS: the uid filter applies (§4.3)

  // §2: one stable sort by code point: /dev/... < backup < docker < tank/home.
  std::string merged =
      mergeDevices({{"tank/home", "3"}, {"docker", "2"}, {"/dev/sdb1", "1"}, {"backup", "4"}, {"/dev/nvme0n1p2", "0"}});
  CHECK(merged == "[0,1,4,2,3]");
  CHECK(mergeDevices({}) == "[]");
}

TEST_CASE("block devices: limits checks and default figures", "[block]") {
  const QuotaFigures cur{.id = 1001, .block_hard_kib = 100, .block_soft_kib = 50};
  // The kernel's rule: soft above a non-zero hard is invalid; soft equal to hard is not.
  CHECK(checkLimits(LimitsUpdate{100, 100, 0, 0}, cur, false).empty());
  CHECK_FALSE(checkLimits(LimitsUpdate{100, 101, 0, 0}, cur, false).empty());
  CHECK(checkLimits(LimitsUpdate{0, 500, 0, 0}, cur, false).empty());                     // no hard limit
  CHECK_FALSE(checkLimits(LimitsUpdate{std::nullopt, 101, {}, {}}, cur, false).empty());  // against the current hard
  CHECK_FALSE(checkLimits(LimitsUpdate{{}, {}, 10, 11}, cur, false).empty());
  CHECK(checkLimits(LimitsUpdate{100, 500, 0, 0}, cur, true).empty());  // single limit: soft ignored

  // §3.7: usage under the default gets the default; at or over it, +1/+2 GiB rounded up.
  const uint64_t GiB = uint64_t(1) << 30, GiBk = uint64_t(1) << 20;
  LimitsUpdate d = defaultLimitsFor(GiB / 2, GiBk, 2 * GiBk, 10, 20, false);
  CHECK((*d.block_soft_kib == GiBk && *d.block_hard_kib == 2 * GiBk && *d.inode_soft == 10 && *d.inode_hard == 20));
  d = defaultLimitsFor(2 * GiB, GiBk, 2 * GiBk, 10, 20, false);  // usage == hard default: over
  CHECK((*d.block_soft_kib == 3 * GiBk && *d.block_hard_kib == 4 * GiBk && *d.inode_hard == 20));
  d = defaultLimitsFor(2 * GiB + 1, GiBk, 2 * GiBk, 0, 0, false);
  CHECK((*d.block_soft_kib == 4 * GiBk && *d.block_hard_kib == 5 * GiBk));
  d = defaultLimitsFor(GiB / 2, 0, 2 * GiBk, 0, 0, true);  // ZFS: hard only
  CHECK((*d.block_soft_kib == 2 * GiBk && *d.block_hard_kib == 2 * GiBk && *d.inode_hard == 0));
  CHECK(limitsEmpty(QuotaFigures{.id = 1, .block_current = 5}));
  CHECK_FALSE(limitsEmpty(QuotaFigures{.id = 1, .inode_soft = 1}));
}

// --- the routes with a fake device -------------------------------------------------

namespace {

// A device held in memory: what the kernel would keep, and every write made.
class FakeDevice : public QuotaDevice {
 public:
  FakeDevice(std::string name, ListRule rule) : name_(std::move(name)), rule_(rule) {}
  const std::string& name() const override { return name_; }
  const char* kind() const override { return "block"; }
  bool singleLimit() const override { return false; }
  Result<DeviceSnapshot> read() override {
    std::lock_guard<std::mutex> l(mu);
    if (fail) return Error{EIO, "fake: unreadable"};
    DeviceSnapshot s;
    s.name = name_;
    s.mount_points = {"/mnt" + name_};
    s.fstype = rule_ == ListRule::kPasswdPresent ? "xfs" : "ext4";
    s.opts = {"rw", "usrquota"};
    s.usage = {1000, 400, 500, 44.4};
    s.users = {true, "vfsv0", QuotaInfo{604800, 604800, 0}, {}};
    for (const auto& [id, f] : table) s.users.entries.push_back(f);
    s.rule = rule_;
    return s;
  }
  Result<std::optional<QuotaFigures>> readUser(uint32_t uid) override {
    std::lock_guard<std::mutex> l(mu);
    auto it = table.find(uid);
    if (it == table.end()) return std::optional<QuotaFigures>{};
    return std::optional<QuotaFigures>{it->second};
  }
  Status setUserLimits(uint32_t uid, const LimitsUpdate& u) override {
    std::lock_guard<std::mutex> l(mu);
    writes++;
    QuotaFigures& f = table[uid];
    f.id = uid;
    f.block_hard_kib = u.block_hard_kib.value_or(f.block_hard_kib);
    f.block_soft_kib = u.block_soft_kib.value_or(f.block_soft_kib);
    f.inode_hard = u.inode_hard.value_or(f.inode_hard);
    f.inode_soft = u.inode_soft.value_or(f.inode_soft);
    return {};
  }
  Health health() const override { return {}; }

  std::mutex mu;
  std::map<uint32_t, QuotaFigures> table;
  int writes = 0;
  bool fail = false;

 private:
  std::string name_;
  ListRule rule_;
};

// passwd as the block-device tests' host has it.
std::vector<PasswdUser> devicePasswd() {
  return {{0, "root"}, {kBob, "bob"}, {kAlice, "alice"}, {kCarol, "carol"}, {65534, "nobody"}};
}

// Two fake block devices beside docker.
struct DeviceAgent : QmanAgent {
  std::unique_ptr<QuotaDevices> devices;
  FakeDevice* ext4 = nullptr;
  FakeDevice* xfs = nullptr;

  DeviceAgent()
      : QmanAgent(
            {.passwd = devicePasswd(),
             .server =
                 {.address = "127.0.0.1", .port = 0, .api_key = "k3y", .bill_root_to_login_uid = true, .threads = 2},
             .probe_counters = nullptr}) {
    devices = std::make_unique<QuotaDevices>(QuotaDevices::Options{});
    auto e = std::make_unique<FakeDevice>("/dev/sdb1", ListRule::kPasswdZeroFill);
    auto x = std::make_unique<FakeDevice>("/dev/loop0", ListRule::kPasswdPresent);
    ext4 = e.get();
    xfs = x.get();
    ext4->table[kAlice] = QuotaFigures{kAlice, 2048, 1024, 3 << 20, 0, 0, 7, 1780302400, 0};
    xfs->table[kBob] = QuotaFigures{kBob, 0, 0, 8192, 0, 0, 2, 0, 0};
    devices->add(std::move(e));
    devices->add(std::move(x));
    devices->refreshNow();
    ctx->devices = devices.get();
    ctx->candidates = [] { return Candidates{managedInOrder(devicePasswd()), {}}; };
    serve();
  }
};

json okBody(const httplib::Result& r) {
  REQUIRE(r);
  INFO(r->body);
  REQUIRE(r->status == 200);
  return json::parse(r->body);
}

void refused(const httplib::Result& r, int status, const std::string& contains) {
  REQUIRE(r);
  INFO(r->body);
  CHECK(r->status == status);
  json j = json::parse(r->body);
  CHECK(j["msg"].get<std::string>().find(contains) != std::string::npos);
}

const char* kJson = "application/json";

}  // namespace

TEST_CASE("block devices over HTTP: one merged list, per-user routes", "[block][http]") {
  DeviceAgent a;
  json list = okBody(a.client().Get("/remote-api/quotas"));
  REQUIRE(list.size() == 3);
  CHECK(list[0]["name"] == "/dev/loop0");
  CHECK(list[1]["name"] == "/dev/sdb1");
  CHECK(list[2]["name"] == "docker");
  // ext4: every candidate in passwd order (bob, alice, carol); XFS: bob only.
  REQUIRE(list[1]["user_quotas"].size() == 3);
  CHECK(list[1]["user_quotas"][0]["name"] == "bob");
  CHECK(list[1]["user_quotas"][1]["block_current"] == 3 << 20);
  CHECK(list[1]["user_quotas"][1]["block_time_limit"] == 1780302400);
  REQUIRE(list[0]["user_quotas"].size() == 1);
  for (const auto& d : list) {
    for (const char* k : {"name", "mount_points", "fstype", "opts", "usage"}) CHECK(d.contains(k));
    CHECK_FALSE((d.contains("unattributed_usage") && d["name"] != "docker"));
  }

  json alice = okBody(a.client().Get("/remote-api/quotas/users/by-name/alice"));
  REQUIRE(alice.size() == 2);  // ext4 (zero-fill is not needed: she has an entry) + docker; not XFS
  CHECK(alice[0]["name"] == "/dev/sdb1");
  CHECK(alice[0]["user_quotas"].size() == 1);
  CHECK(alice[1]["name"] == "docker");
  json bob = okBody(a.client().Get("/remote-api/quotas/users/2002"));
  CHECK(bob.size() == 3);

  // A device that cannot be read is dropped from the list, not a 500.
  a.xfs->fail = true;
  a.devices->refreshNow();
  CHECK(okBody(a.client().Get("/remote-api/quotas")).size() == 2);
  CHECK_FALSE(a.devices->health().degraded.empty());
}

TEST_CASE("block devices over HTTP: PUT dispatch, bad bodies change nothing", "[block][http]") {
  DeviceAgent a;
  auto c = a.client();
  const std::string url = "/remote-api/quotas/users/2003?device=/dev/sdb1";
  json carol = okBody(c.Put(url, R"({"block_hard_limit": 4096, "block_soft_limit": 2048, "inode_hard_limit": 100,
                                    "inode_soft_limit": 50})",
                            kJson));
  CHECK(carol == json{{"uid", kCarol},
                      {"name", "carol"},
                      {"block_hard_limit", 4096},
                      {"block_soft_limit", 2048},
                      {"block_current", 0},
                      {"inode_hard_limit", 100},
                      {"inode_soft_limit", 50},
                      {"inode_current", 0},
                      {"block_time_limit", 0},
                      {"inode_time_limit", 0}});
  CHECK(a.ext4->writes == 1);
  // The next GET shows it at once (the view was patched, no refresh needed).
  json list = okBody(c.Get("/remote-api/quotas"));
  CHECK(list[1]["user_quotas"][2]["block_hard_limit"] == 4096);
  // A missing field keeps its value.
  CHECK(okBody(c.Put(url, R"({"block_hard_limit": 8192})", kJson))["block_soft_limit"] == 2048);
  CHECK(a.ext4->writes == 2);

  refused(c.Put("/remote-api/quotas/users/2003?device=/dev/nope", "{}", kJson), 400,
          "device not recognized: /dev/nope");
  refused(c.Put("/remote-api/quotas/users/2003", "{}", kJson), 400, "device query parameter required");
  refused(c.Put(url, R"({"block_hard_limit": -1})", kJson), 400, "non-negative");
  refused(c.Put(url, R"({"block_hard_limit": "5"})", kJson), 400, "integers");
  refused(c.Put(url, R"({})", kJson), 400, "no limit given");
  refused(c.Put(url, R"({"block_hard_limit": 100, "block_soft_limit": 101})", kJson), 400, "must not be above");
  refused(c.Put(url, R"({"block_soft_limit": 9000})", kJson), 400, "must not be above");  // over the current 8192
  refused(c.Put(url, "not json", kJson), 400, "");
  refused(c.Put("/remote-api/quotas/users/7777?device=/dev/sdb1", R"({"block_hard_limit": 1})", kJson), 404,
          "no passwd entry");
  CHECK(a.ext4->writes == 2);
  CHECK(a.xfs->writes == 0);
  // docker still goes to the book.
  okBody(c.Put("/remote-api/quotas/users/2003?device=docker", R"({"block_hard_limit": 10})", kJson));
  CHECK(a.book->limitKiB(kCarol) == 10);
  CHECK(a.ext4->writes == 2);
}

TEST_CASE("block devices over HTTP: defaults and batch", "[block][http]") {
  DeviceAgent a;
  auto c = a.client();
  CHECK(okBody(c.Get("/remote-api/quotas/defaults?device=/dev/sdb1")).is_null());
  refused(c.Put("/remote-api/quotas/defaults?device=/dev/sdb1", R"({"block_hard_limit": 10, "block_soft_limit": 20})",
                kJson),
          400, "must not be above");
  json d = okBody(c.Put("/remote-api/quotas/defaults?device=/dev/sdb1",
                        R"({"block_hard_limit": 4096, "block_soft_limit": 2048})", kJson));
  CHECK(d == json{{"device_name", "/dev/sdb1"},
                  {"block_soft_limit", 2048},
                  {"block_hard_limit", 4096},
                  {"inode_soft_limit", 0},
                  {"inode_hard_limit", 0}});
  CHECK(okBody(c.Get("/remote-api/quotas/defaults?device=/dev/sdb1")) == d);
  // The job: bob and carol have no limits; alice (3 MiB used, limits set) is left alone.
  REQUIRE(d["device_name"] == "/dev/sdb1");
  auto def = a.book->deviceDefault("/dev/sdb1");
  REQUIRE((def && *def));
  CHECK(applyDeviceDefault(*a.devices, *a.ext4, {kAlice, kBob, kCarol}, **def) == 2);
  CHECK(a.ext4->table[kBob].block_hard_kib == 4096);
  CHECK(a.ext4->table[kAlice].block_hard_kib == 2048);
  // Again: nobody left without limits.
  CHECK(applyDeviceDefault(*a.devices, *a.ext4, {kAlice, kBob, kCarol}, **def) == 0);

  refused(c.Post("/remote-api/quotas/batch", R"({"device": "/dev/sdb1"})", kJson), 400, "no limit given");
  refused(c.Post("/remote-api/quotas/batch",
                 R"({"device": "/dev/sdb1", "block_hard_limit": 5, "preserve_if_nonzero": 1})", kJson),
          400, "true or false");
  refused(c.Post("/remote-api/quotas/batch", R"({"device": "/dev/x", "block_hard_limit": 5})", kJson), 400,
          "device not recognized");
  const int before = a.ext4->writes;
  json r = okBody(c.Post("/remote-api/quotas/batch",
                         R"({"device": "/dev/sdb1", "block_hard_limit": 2048, "block_soft_limit": 1024,
                             "preserve_if_usage_exceeds": true})",
                         kJson));
  // alice uses 3 MiB > 2048 KiB: skipped; bob and carol updated.
  CHECK(r == json{{"total_users", 3}, {"updated_users", 2}, {"skipped_users", 1}, {"errors", json::array()}});
  CHECK(a.ext4->writes == before + 2);
  r = okBody(c.Post("/remote-api/quotas/batch",
                    R"({"device": "/dev/sdb1", "block_hard_limit": 1, "preserve_if_nonzero": true})", kJson));
  CHECK(r["skipped_users"] == 3);
  // Soft above a user's current hard: that user is an error, not a silent XFS drop.
  r = okBody(c.Post("/remote-api/quotas/batch", R"({"device": "/dev/sdb1", "block_soft_limit": 3000})", kJson));
  CHECK(r["updated_users"] == 0);  // everyone's hard limit is 2048 KiB now
  REQUIRE(r["errors"].size() == 3);
  CHECK(r["errors"][0].get<std::string>().rfind("uid=2001: block_soft_limit (3000) must not be above", 0) == 0);
  CHECK(a.ext4->writes == before + 2);
}

TEST_CASE("block devices: /metrics per-user figures", "[block][http]") {
  DeviceAgent a;
  auto r = a.client().Get("/metrics");
  REQUIRE(r);
  REQUIRE(r->status == 200);
  CHECK(r->body.find(
            "dockquota_device_user_bytes{device=\"/dev/sdb1\",uid=\"2001\",user=\"alice\",kind=\"used\"} 3145728") !=
        std::string::npos);
  CHECK(r->body.find(
            "dockquota_device_user_bytes{device=\"/dev/sdb1\",uid=\"2001\",user=\"alice\",kind=\"hard\"} 2097152") !=
        std::string::npos);
  CHECK(r->body.find("dockquota_device_user_grace_end_timestamp_seconds{device=\"/dev/"
                     "sdb1\",uid=\"2001\",user=\"alice\",kind=\"block\"} 1780302400") != std::string::npos);
}

// --- quota events (spec §5) ------------------------------------------------------

TEST_CASE("block devices: quota event statuses, transitions and the spec's example event", "[block][notices]") {
  const uint64_t now = 1780000000;
  const DeviceSnapshot s = exampleExt4();
  const QuotaFigures alice = s.users.entries[1];
  // §6: alice is soft-over with 302400 s of grace left (> the 86400 s window).
  CHECK(diskStatus(alice, s.users.info, now, 86400) == DiskStatus::kInGrace);
  CHECK(diskEventType(DiskStatus::kOk, DiskStatus::kInGrace) == std::string("disk_soft_limit_exceeded"));
  const json want = json::parse(R"({"uid": 1001, "device_name": "/dev/nvme0n1p2",
    "block_current": 118111600640, "block_soft_limit": 104857600, "block_hard_limit": 125829120,
    "inode_current": 51234, "inode_soft_limit": 0, "inode_hard_limit": 0, "block_time_limit": 1780302400,
    "inode_time_limit": null, "user_quota_info": {"block_grace": 604800, "inode_grace": 604800, "flags": 65536}})");
  CHECK(diskEventDetail(s.name, alice, s.users.info) == want);
  CHECK(diskEventDetail(s.name, alice, std::nullopt)["user_quota_info"].is_null());

  // Grace ending within min(window, grace), then expired.
  CHECK(diskStatus(alice, s.users.info, 1780302400 - 86400, 86400) == DiskStatus::kGraceEnding);
  CHECK(diskStatus(alice, s.users.info, 1780302400, 86400) == DiskStatus::kGraceExpired);
  CHECK(diskStatus(alice, QuotaInfo{3600, 0, 0}, 1780302400 - 7200, 86400) == DiskStatus::kInGrace);  // W = 3600
  // The kernel's rule: exactly at the soft limit is not over it (qman's >= would say it is).
  QuotaFigures at = alice;
  at.block_current = at.block_soft_kib * 1024;
  at.block_time = 0;
  CHECK(diskStatus(at, s.users.info, now, 86400) == DiskStatus::kOk);
  at.block_current += 1;
  CHECK(diskStatus(at, s.users.info, now, 86400) == DiskStatus::kGraceExpired);  // over, no grace end: expired
  // A hard limit is reached at usage == limit: the kernel refuses the next byte.
  QuotaFigures hard = alice;
  hard.block_current = hard.block_hard_kib * 1024;
  CHECK(diskStatus(hard, s.users.info, now, 86400) == DiskStatus::kHardOver);
  QuotaFigures inodes{.id = 1, .inode_hard = 10, .inode_current = 10};
  CHECK(diskStatus(inodes, std::nullopt, now, 86400) == DiskStatus::kHardOver);

  // The table: only the pairs the spec names announce anything.
  using S = DiskStatus;
  CHECK(diskEventType(S::kInGrace, S::kGraceEnding) == std::string("disk_soft_grace_ending"));
  CHECK(diskEventType(S::kGraceEnding, S::kGraceExpired) == std::string("disk_soft_grace_expired"));
  CHECK(diskEventType(S::kInGrace, S::kGraceExpired) == std::string("disk_soft_grace_expired"));
  CHECK(diskEventType(S::kGraceExpired, S::kHardOver) == std::string("disk_hard_limit_reached"));
  CHECK(diskEventType(S::kHardOver, S::kOk) == std::string("disk_back_to_ok"));
  CHECK(diskEventType(S::kGraceExpired, S::kOk) == std::string("disk_back_to_ok"));
  CHECK(diskEventType(S::kOk, S::kGraceExpired) == nullptr);
  CHECK(diskEventType(S::kHardOver, S::kInGrace) == nullptr);
  CHECK(diskEventType(S::kGraceEnding, S::kInGrace) == nullptr);
  CHECK(diskEventType(S::kInGrace, S::kInGrace) == nullptr);
}

TEST_CASE("block devices: a scan records each change once, to the master", "[block][notices]") {
  DeviceAgent a;
  std::vector<std::string> woken;
  DiskNotices n(*a.store, DiskNotices::Options{.window_s = 86400,
                                               .route = EventRoute{.master = true, .mail = false},
                                               .name_of = [&a](uint32_t uid) { return a.users->name(uid); },
                                               .on_events = [&] { woken.push_back("x"); }});
  // alice on /dev/sdb1: 3 MiB used, soft 1 MiB, hard 2 MiB: over the hard limit.
  CHECK(n.scan(*a.devices->view(), 1780000000) == 1);
  CHECK(n.scan(*a.devices->view(), 1780000001) == 0);  // no change, no event
  auto pending = a.store->eventLog().pending(Channel::Master, 10);
  REQUIRE(pending);
  REQUIRE(pending->size() == 1);
  CHECK((*pending)[0].type == "disk_hard_limit_reached");
  CHECK((*pending)[0].user == "alice");
  CHECK((*pending)[0].detail["device_name"] == "/dev/sdb1");
  CHECK((*pending)[0].detail["block_hard_limit"] == 2048);
  CHECK(woken.size() == 1);
  // Limits lifted: back to ok.
  REQUIRE(a.devices->setUserLimits(*a.ext4, kAlice, LimitsUpdate{0, 0, 0, 0}));
  CHECK(n.scan(*a.devices->view(), 1780000002) == 1);
  pending = a.store->eventLog().pending(Channel::Master, 10);
  REQUIRE(pending->size() == 2);
  CHECK((*pending)[1].type == "disk_back_to_ok");
}

// The mount table is read once, then again only after a mount or an unmount:
// a refresh of several devices (and /healthz) shares one read.
TEST_CASE("MountTable reads /proc/self/mountinfo again only when a mount changed", "[block][mountinfo]") {
  MountTable table;
  auto first = table.current();
  REQUIRE(first);
  auto again = table.current();
  REQUIRE(again);
  CHECK(table.reads() == 1);
  CHECK(first->get() == again->get());
  if (::geteuid() != 0) {
    if (inCi()) FAIL("CI=true: mounting a tmpfs needs root");
    WARN("skipping the mount half: needs root (with CI=true this fails)");
    return;
  }
  TempDir dir;
  auto has = [&](const MountTable::Table& t) {
    return std::any_of(t->begin(), t->end(), [&](const MountEntry& e) { return e.mount_point == dir.path; });
  };
  REQUIRE(::mount("dq-mounttable", dir.path.c_str(), "tmpfs", 0, "size=64k") == 0);
  auto mounted = table.current();
  ::umount2(dir.path.c_str(), MNT_DETACH);
  REQUIRE(mounted);
  CHECK(table.reads() == 2);
  CHECK(has(*mounted));
  auto gone = table.current();
  REQUIRE(gone);
  CHECK(table.reads() == 3);
  CHECK_FALSE(has(*gone));
  auto still = table.current();
  REQUIRE(still);
  CHECK(table.reads() == 3);
}

TEST_CASE("block devices on the per-user socket: a user's own entry on each device, nobody else's",
          "[block][user-api]") {
  DeviceAgent a;
  UserApiContext uctx{*a.ctx, nullptr};
  UserApi api(UserApiOptions{}, uctx);  // not started: the router alone, with a connection's credentials
  auto devicesFor = [&](uint32_t uid) {
    httplib::Request req;
    REQUIRE(parseRequestHead("GET /v1/quota HTTP/1.1\r\n\r\n", req).status == 0);
    httplib::Response res;
    api.handle(PeerCred{true, uid, uid, 1}, req, res);
    REQUIRE(res.status == 200);
    std::map<std::string, std::set<uint32_t>> uids;  // device -> uids of its entries
    const json body = json::parse(res.body);         // named: a loop over a temporary's member would dangle
    for (const auto& d : body["devices"])
      for (const auto& e : d["user_quotas"]) uids[d["name"]].insert(e["uid"].get<uint32_t>());
    return uids;
  };
  // alice: her ext4 entry and docker; XFS lists only who has a dquot (bob).
  CHECK(devicesFor(kAlice) == std::map<std::string, std::set<uint32_t>>{{"/dev/sdb1", {kAlice}}, {"docker", {kAlice}}});
  // bob: the XFS entry, ext4's zero-filled one, docker.
  CHECK(devicesFor(kBob) ==
        std::map<std::string, std::set<uint32_t>>{{"/dev/loop0", {kBob}}, {"/dev/sdb1", {kBob}}, {"docker", {kBob}}});
}
