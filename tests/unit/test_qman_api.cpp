// SPDX-License-Identifier: Apache-2.0
// The qman slave contract over real loopback HTTP: a real Store file, the real
// routes, a fake UsageSource with known figures (tests/unit/qman_fixture.h).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/quota/quotas.h"
#include "api/http_api.h"
#include "api/qman_api.h"
#include "tests/unit/qman_agent.h"

using namespace dockquota;
using namespace dockquota::testing;
using json = nlohmann::json;

namespace {

// Keys the spec allows to be null (§4.3 `|null`); everything else must be absent instead.
const std::set<std::string> kNullable = {"host_user_name",
                                         "uid",
                                         "created_at",
                                         "created",
                                         "first_puller_host_user_name",
                                         "first_puller_uid",
                                         "creation_method",
                                         "first_seen_at",
                                         "actual_disk_bytes",
                                         "attribution_source",
                                         "auto",
                                         "override",
                                         "manual_resolved_at",
                                         "manual_resolved_by_oauth_user_id"};

void checkNulls(const json& j, const std::set<std::string>& nullable, const std::string& path = "$") {
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) {
      if (v.is_null()) {
        INFO(path + "." + k);
        CHECK(nullable.count(k) == 1);
      }
      checkNulls(v, nullable, path + "." + k);
    }
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); i++) {
      INFO(path + "[" + std::to_string(i) + "]");
      CHECK_FALSE(j[i].is_null());
      checkNulls(j[i], nullable, path + "[" + std::to_string(i) + "]");
    }
  }
}

void checkError(const httplib::Result& r, int status, const std::string& msg = "") {
  REQUIRE(r);
  INFO(r->body);
  CHECK(r->status == status);
  CHECK(r->get_header_value("Content-Type") == "application/json");
  json j = json::parse(r->body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("msg"));
  CHECK(j["msg"].is_string());
  CHECK_FALSE(j.contains("detail"));
  if (!msg.empty()) CHECK(j["msg"] == msg);
}

json ok(const httplib::Result& r) {
  REQUIRE(r);
  INFO(r->body);
  REQUIRE(r->status == 200);
  CHECK(r->get_header_value("Content-Type") == "application/json");
  return json::parse(r->body);
}

// The docker device's routes, served at once.
struct Agent : QmanAgent {
  explicit Agent(QmanOptions opt = {}, ApiServerOptions aopt = Setup{}.server)
      : QmanAgent({.qman = opt, .server = aopt}) {
    serve();
  }
};

const char* kJson = "application/json";

}  // namespace

TEST_CASE("qman api: auth on every route, exact error bodies", "[qman][http]") {
  Agent a;
  httplib::Client anon("127.0.0.1", a.port);
  for (const char* path :
       {"/remote-api/ping", "/remote-api/users", "/remote-api/quotas", "/remote-api/docker/containers", "/metrics"}) {
    INFO(path);
    checkError(anon.Get(path), 401, "authorization required");
  }
  httplib::Client wrong("127.0.0.1", a.port);
  wrong.set_basic_auth("api", "nope");
  checkError(wrong.Get("/remote-api/ping"), 403, "access forbidden");
  wrong.set_basic_auth("admin", "k3y");
  checkError(wrong.Put("/remote-api/quotas/users/2001?device=docker", "{}", kJson), 403, "access forbidden");
  CHECK(ok(a.client().Get("/remote-api/ping")) == json{{"status", "ok"}});
}

TEST_CASE("qman api: users, resolve, 404 and 405 as JSON", "[qman][http]") {
  Agent a;
  auto c = a.client();
  CHECK(ok(c.Get("/remote-api/users")) == json{"alice", "bob", "carol", "dave"});
  checkError(c.Get("/remote-api/users/resolve"), 400, "username query parameter required");
  checkError(c.Get("/remote-api/users/resolve?username=zed"), 404, "user not found: zed");
  CHECK(ok(c.Get("/remote-api/users/resolve?username=bob")) == json{{"uid", kBob}, {"name", "bob"}});
  CHECK(ok(c.Get("/remote-api/users/resolve?username=user_4321")) == json{{"uid", 4321}, {"name", "user_4321"}});

  checkError(c.Get("/remote-api/nope"), 404, "not found");
  checkError(c.Get("/remote-api/quotas/users/abc"), 404, "not found");
  auto r = c.Delete("/remote-api/quotas");
  checkError(r, 405, "method not allowed");
  CHECK(r->get_header_value("Allow") == "GET, HEAD, OPTIONS");
  checkError(c.Post("/remote-api/ping", "{}", kJson), 405, "method not allowed");
  checkError(c.Get("/remote-api/quotas/batch"), 405, "method not allowed");
  checkError(c.Put("/remote-api/docker/usage/attribute", "{}", kJson), 405, "method not allowed");
}

TEST_CASE("qman api: GET quotas — shape, units, sorting, filter, usage rules", "[qman][http]") {
  Agent a;
  auto c = a.client();
  REQUIRE(a.book->setLimit(kAlice, 20971520));  // 20 GiB
  REQUIRE(a.book->setLimit(5000, 1024));        // dave: a limit, no usage
  REQUIRE(a.book->setLimit(999, 1024));         // below the filter
  json devs = ok(c.Get("/remote-api/quotas"));
  checkNulls(devs, {});
  REQUIRE(devs.size() == 1);
  json d = devs[0];
  CHECK(d["name"] == "docker");
  CHECK(d["fstype"] == "docker");
  CHECK(d["opts"] == json{"docker"});
  CHECK(d["mount_points"] == json{"/var/lib/docker"});
  CHECK(d["user_quota_format"] == "docker");
  CHECK_FALSE(d.contains("user_quota_info"));
  CHECK_FALSE(d.contains("group_quotas"));
  CHECK(d["unattributed_usage"] == Scenario::kUnattributed);

  json uq = d["user_quotas"];
  REQUIRE(uq.size() == 4);  // alice, bob, carol by usage; dave by limit; root and 999 filtered
  std::vector<uint32_t> uids;
  for (const auto& u : uq) uids.push_back(u["uid"]);
  CHECK(uids == std::vector<uint32_t>{kAlice, kBob, kCarol, 5000});
  const json& alice = uq[0];
  CHECK(alice["name"] == "alice");
  CHECK(alice["block_hard_limit"] == 20971520);  // KiB
  CHECK(alice["block_soft_limit"] == 20971520);
  CHECK(alice["block_current"] == Scenario::kAliceBytes);  // bytes
  CHECK(alice["docker_container_bytes"] == 1000);
  CHECK(alice["docker_image_layer_bytes"] == Scenario::L1 + Scenario::L2);
  CHECK(alice["docker_volume_bytes"] == 0);
  for (const char* k :
       {"inode_hard_limit", "inode_soft_limit", "inode_current", "block_time_limit", "inode_time_limit"})
    CHECK(alice[k] == 0);
  uint64_t sum = 0;
  for (const auto& u : uq) {
    CHECK(u["block_current"].get<uint64_t>() == u["docker_container_bytes"].get<uint64_t>() +
                                                    u["docker_image_layer_bytes"].get<uint64_t>() +
                                                    u["docker_volume_bytes"].get<uint64_t>());
    sum += u["block_current"].get<uint64_t>();
  }
  // §3.3: L = (20 GiB + 1 MiB) limits of listed users, U unattributed, A attributed.
  const uint64_t L = 20971520ULL * 1024 + 1024 * 1024, U = Scenario::kUnattributed;
  CHECK(d["usage"]["total"] == L + U);
  CHECK(d["usage"]["used"] == sum + U);
  CHECK(d["usage"]["used"] == Scenario::kTotal);
  CHECK(d["usage"]["free"] == L + U - Scenario::kTotal);
  CHECK(d["usage"]["percent"].is_number_float());
  CHECK(d["usage"]["percent"].get<double>() == Approx(std::round(Scenario::kTotal * 1000.0 / (L + U)) / 10.0));

  // No limits at all: total = max(L + U, 1) = U < used -> free 0, over-subscribed.
  REQUIRE(a.book->setLimits({{kAlice, 0}, {5000, 0}, {999, 0}}));
  d = ok(c.Get("/remote-api/quotas"))[0];
  CHECK(d["usage"]["total"] == U);
  CHECK(d["usage"]["free"] == 0);
  CHECK(d["usage"]["percent"].get<double>() == 100.0);
}

TEST_CASE("qman api: reserved bytes, docker disabled", "[qman][http]") {
  {
    Agent a({.docker_enabled = true, .reserved_bytes = 1ULL << 40, .data_root = "/srv/docker"});
    json d = ok(a.client().Get("/remote-api/quotas"))[0];
    CHECK(d["usage"]["total"] == 1ULL << 40);
    CHECK(d["usage"]["free"] == (1ULL << 40) - Scenario::kTotal);
    CHECK(d["mount_points"] == json{"/srv/docker"});
  }
  Agent off({.docker_enabled = false});
  auto c = off.client();
  CHECK(ok(c.Get("/remote-api/quotas")) == json::array());
  for (const char* p : {"/remote-api/docker/containers", "/remote-api/docker/images", "/remote-api/docker/volumes",
                        "/remote-api/docker/inspect?kind=container&id=x"})
    checkError(c.Get(p), 400, "Docker quota not enabled on this host");
  checkError(c.Put("/remote-api/quotas/users/2001?device=docker", R"({"block_hard_limit": 1})", kJson), 400,
             "device not recognized: docker");
}

TEST_CASE("qman api: per-user routes", "[qman][http]") {
  Agent a;
  auto c = a.client();
  json mine = ok(c.Get("/remote-api/quotas/users/by-name/bob"));
  checkNulls(mine, {});
  REQUIRE(mine.size() == 1);
  REQUIRE(mine[0]["user_quotas"].size() == 1);
  CHECK(mine[0]["user_quotas"][0]["uid"] == kBob);
  CHECK(mine[0]["user_quotas"][0]["block_current"] == Scenario::kBobBytes);
  // Same usage as the full list (used = A + U: the deliberate deviation).
  CHECK(mine[0]["usage"] == ok(c.Get("/remote-api/quotas"))[0]["usage"]);
  CHECK(ok(c.Get("/remote-api/quotas/users/2002")) == mine);
  checkError(c.Get("/remote-api/quotas/users/by-name/zed"), 404, "user not found: zed");
  CHECK(ok(c.Get("/remote-api/quotas/users/by-name/dave")) == json::array());  // no limit, no bytes
  CHECK(ok(c.Get("/remote-api/quotas/users/0")) == json::array());             // filtered
  CHECK(ok(c.Get("/remote-api/quotas/users/99999999999")) == json::array());
}

TEST_CASE("qman api: PUT a limit; every bad input is a 4xx JSON error and changes nothing", "[qman][http]") {
  Agent a;
  auto c = a.client();
  const std::string url = "/remote-api/quotas/users/2002?device=docker";
  json put = ok(c.Put(
      url,
      R"({"block_hard_limit": 31457280, "block_soft_limit": 31457280, "inode_hard_limit": 0, "inode_soft_limit": 0})",
      kJson));
  checkNulls(put, {});
  CHECK(put == json{{"uid", kBob},
                    {"name", "bob"},
                    {"block_hard_limit", 31457280},
                    {"block_soft_limit", 31457280},
                    {"block_current", Scenario::kBobBytes},
                    {"inode_hard_limit", 0},
                    {"inode_soft_limit", 0},
                    {"inode_current", 0},
                    {"block_time_limit", 0},
                    {"inode_time_limit", 0},
                    {"docker_container_bytes", 2000},
                    {"docker_image_layer_bytes", Scenario::L3},
                    {"docker_volume_bytes", 5000}});
  // A uid with no passwd entry and no history: allowed, named user_<uid>.
  CHECK(ok(c.Put("/remote-api/quotas/users/4321?device=docker", R"({"block_hard_limit": 5})", kJson))["name"] ==
        "user_4321");
  // 64-bit: 1 PiB in KiB.
  CHECK(ok(c.Put("/remote-api/quotas/users/2003?device=docker", R"({"block_hard_limit": 1099511627776})",
                 kJson))["block_hard_limit"] == 1099511627776ULL);
  const auto before = *a.store->limits().userLimits();
  REQUIRE(before == std::map<uint32_t, uint64_t>{{kBob, 31457280}, {kCarol, 1099511627776ULL}, {4321, 5}});
  const std::string quotas_before = ok(c.Get("/remote-api/quotas")).dump();

  checkError(c.Put("/remote-api/quotas/users/2002", R"({"block_hard_limit": 1})", kJson), 400,
             "device query parameter required");
  checkError(c.Put("/remote-api/quotas/users/2002?device=", R"({"block_hard_limit": 1})", kJson), 400,
             "device query parameter required");
  checkError(c.Put("/remote-api/quotas/users/2002?device=/dev/sda1", R"({"block_hard_limit": 1})", kJson), 400,
             "device not recognized: /dev/sda1");
  checkError(c.Put("/remote-api/quotas/users/2002?device=Docker", R"({"block_hard_limit": 1})", kJson), 400);
  checkError(c.Put(url, R"({"block_soft_limit": 1})", kJson), 400,
             "block_hard_limit is required (1 KiB blocks; 0 removes the limit); nothing was changed");
  checkError(c.Put(url, R"({"block_hard_limit": null})", kJson), 400);
  checkError(c.Put(url, R"({})", kJson), 400);
  for (const char* body : {R"({"block_hard_limit": 1.5})", R"({"block_hard_limit": "100"})",
                           R"({"block_hard_limit": true})", R"({"block_hard_limit": [1]})",
                           R"({"block_hard_limit": 1, "inode_hard_limit": "x"})", R"({"block_hard_limit": 1e3})"}) {
    INFO(body);
    checkError(c.Put(url, body, kJson), 400, "quota limits must be integers");
  }
  checkError(c.Put(url, R"({"block_hard_limit": -1})", kJson), 400, "quota limits must be non-negative");
  checkError(c.Put(url, R"({"block_hard_limit": -9223372036854775808})", kJson), 400,
             "quota limits must be non-negative");
  checkError(c.Put(url, R"({"block_hard_limit": 1099511627777})", kJson), 400);         // > 1 PiB
  checkError(c.Put(url, R"({"block_hard_limit": 18446744073709551615})", kJson), 400);  // 2^64-1
  checkError(c.Put(url, R"({"block_hard_limit": 123456789012345678901234567890})", kJson), 400);
  checkError(c.Put(url, R"({"block_hard_limit": 1)", kJson), 400, "request body is not valid JSON");
  checkError(c.Put(url, "", kJson), 400, "request body is not valid JSON");
  checkError(c.Put(url, "[1]", kJson), 400, "request body must be a JSON object");
  checkError(c.Put(url, R"({"block_hard_limit": 1})", "text/plain"), 400, "Content-Type must be application/json");
  checkError(c.Put(url, R"({"block_hard_limit": 1})", "application/x-www-form-urlencoded"), 400);
  checkError(c.Put("/remote-api/quotas/users/0?device=docker", R"({"block_hard_limit": 1})", kJson), 400);
  checkError(c.Put("/remote-api/quotas/users/65534?device=docker", R"({"block_hard_limit": 1})", kJson), 400);
  checkError(c.Put("/remote-api/quotas/users/99999999999?device=docker", R"({"block_hard_limit": 1})", kJson), 400);
  // A big body: our limit (64 KiB) and the server's (1 MiB) both answer 413 JSON.
  std::string big = R"({"block_hard_limit": 1, "pad": ")" + std::string(100 * 1024, 'x') + "\"}";
  checkError(c.Put(url, big, kJson), 413);
  {
    // Past the server's 1 MiB limit: cpp-httplib drains the body unparsed, then answers.
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(a.port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    const std::string head = "PUT " + url +
                             " HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YXBpOmszeQ==\r\n"
                             "Content-Type: application/json\r\nConnection: close\r\nContent-Length: 2097152\r\n\r\n";
    const std::string all = head + std::string(2097152, ' ');
    for (size_t off = 0; off < all.size();) {
      ssize_t n = write(fd, all.data() + off, all.size() - off);
      REQUIRE(n > 0);
      off += static_cast<size_t>(n);
    }
    std::string reply;
    char buf[4096];
    // Read until the JSON body is complete (the server may keep the socket open).
    timeval tv{2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    for (ssize_t n; reply.find("\"}") == std::string::npos && (n = read(fd, buf, sizeof buf)) > 0;)
      reply.append(buf, static_cast<size_t>(n));
    close(fd);
    INFO(reply);
    CHECK(reply.rfind("HTTP/1.1 413", 0) == 0);
    CHECK(reply.find("Content-Type: application/json") != std::string::npos);
    CHECK(reply.find(R"({"msg":"request body too large"})") != std::string::npos);
  }

  CHECK(*a.store->limits().userLimits() == before);
  CHECK(*a.book->limits() == before);
  CHECK(ok(c.Get("/remote-api/quotas")).dump() == quotas_before);

  // 0 removes the limit (an explicit choice, not a missing field).
  CHECK(ok(c.Put(url, R"({"block_hard_limit": 0})", kJson))["block_hard_limit"] == 0);
  CHECK(a.store->limits().userLimits()->count(kBob) == 0);
}

TEST_CASE("qman api: defaults GET/PUT, periodic application, batch", "[qman][http]") {
  Agent a;
  auto c = a.client();
  checkError(c.Get("/remote-api/quotas/defaults"), 400, "device query parameter required");
  checkError(c.Get("/remote-api/quotas/defaults?device=sda"), 400, "device not recognized: sda");
  auto none = c.Get("/remote-api/quotas/defaults?device=docker");
  REQUIRE(none);
  CHECK(none->status == 200);
  CHECK(none->body == "null");

  const std::string url = "/remote-api/quotas/defaults?device=docker";
  checkError(c.Put(url, R"({"block_hard_limit": "1"})", kJson), 400, "quota limits must be integers");
  checkError(c.Put(url, R"({"block_hard_limit": -5})", kJson), 400, "quota limits must be non-negative");
  checkError(c.Put(url, "{", kJson), 400);
  checkError(c.Put(url, R"({"block_hard_limit": 1})", "text/plain"), 400);
  checkError(c.Put("/remote-api/quotas/defaults", R"({"block_hard_limit": 1})", kJson), 400);
  CHECK(c.Get(url)->body == "null");

  json saved = ok(c.Put(url, R"({"block_hard_limit": 1048576})", kJson));  // 1 GiB; others missing -> 0
  CHECK(saved == json{{"device_name", "docker"},
                      {"block_soft_limit", 0},
                      {"block_hard_limit", 1048576},
                      {"inode_soft_limit", 0},
                      {"inode_hard_limit", 0}});
  CHECK(ok(c.Get(url)) == saved);

  // Periodic job: alice (1,300 B) and carol get 1 GiB; bob keeps his.
  REQUIRE(a.book->setLimit(kBob, 7));
  auto n = applyDefaults(*a.book, {kAlice, kBob, kCarol, 0}, {{kAlice, Scenario::kAliceBytes}});
  REQUIRE(n.ok());
  CHECK(*n == 2);
  CHECK(*a.book->limits() == QuotaBook::Limits{{kAlice, 1048576}, {kBob, 7}, {kCarol, 1048576}});

  // Batch.
  checkError(c.Post("/remote-api/quotas/batch", R"({"block_hard_limit": 5})", kJson), 400, "device is required");
  checkError(c.Post("/remote-api/quotas/batch", R"({"device": "sdb", "block_hard_limit": 5})", kJson), 400);
  checkError(c.Post("/remote-api/quotas/batch", R"({"device": "docker"})", kJson), 400);
  checkError(c.Post("/remote-api/quotas/batch",
                    R"({"device": "docker", "block_hard_limit": 5, "preserve_if_nonzero": "yes"})", kJson),
             400);
  checkError(c.Post("/remote-api/quotas/batch", R"({"device": "docker", "block_hard_limit": -5})", kJson), 400);
  CHECK(*a.book->limits() == QuotaBook::Limits{{kAlice, 1048576}, {kBob, 7}, {kCarol, 1048576}});
  json r = ok(c.Post("/remote-api/quotas/batch",
                     R"({"device": "docker", "block_hard_limit": 2097152, "preserve_if_nonzero": true})", kJson));
  CHECK(r == json{{"total_users", 4}, {"updated_users", 1}, {"skipped_users", 3}, {"errors", json::array()}});
  CHECK(a.book->limitKiB(5000) == 2097152);  // dave had none
  r = ok(c.Post("/remote-api/quotas/batch", R"({"device": "docker", "block_hard_limit": 4})", kJson));
  CHECK(r["updated_users"] == 4);
  CHECK(*a.store->limits().userLimits() ==
        std::map<uint32_t, uint64_t>{{kAlice, 4}, {kBob, 4}, {kCarol, 4}, {5000, 4}});
}

TEST_CASE("qman api: Docker pages — containers, images with layers, volumes", "[qman][http]") {
  Agent a;
  auto c = a.client();
  json cs = ok(c.Get("/remote-api/docker/containers"));
  checkNulls(cs, kNullable);
  REQUIRE(cs["containers"].size() == 4);
  CHECK(cs["total_bytes"] == 7300);
  CHECK(cs["attributed_bytes"] == 7000);
  CHECK(cs["unattributed_bytes"] == 300);
  CHECK(cs["containers"][0]["container_id"] == a.sc.c3);  // biggest first
  CHECK(cs["containers"][0]["host_user_name"] == "carol");
  CHECK(cs["containers"][0]["uid"] == kCarol);
  CHECK(cs["containers"][0]["image"] == img('c'));
  CHECK(cs["containers"][0]["created_at"] == isoTime(42));
  const json& stray = cs["containers"][3];
  CHECK(stray["container_id"] == a.sc.c4);
  CHECK(stray["uid"].is_null());
  CHECK(stray["host_user_name"].is_null());
  CHECK(stray["created_at"].is_null());

  json im = ok(c.Get("/remote-api/docker/images"));
  checkNulls(im, kNullable);
  CHECK(im["images"].size() == 5);
  CHECK(im["layers"].size() == 7);
  CHECK(im["total_layer_bytes"] ==
        Scenario::L0 + Scenario::L1 + Scenario::L2 + Scenario::L3 + Scenario::L4 + Scenario::L5 + Scenario::L6);
  CHECK(im["unattributed_layer_bytes"] == Scenario::L4 + Scenario::L5);
  CHECK(
      im["layers_by_user"] ==
      json{{"0", Scenario::L0}, {"2001", Scenario::L1 + Scenario::L2}, {"2002", Scenario::L3}, {"2003", Scenario::L6}});
  for (const auto& i : im["images"]) {
    if (i["image_id"] == img('p')) {
      CHECK_FALSE(i.contains("puller_uid"));  // optional: absent, not null
      CHECK_FALSE(i.contains("puller_host_user_name"));
    }
    if (i["image_id"] == img('b')) {
      CHECK(i["puller_uid"] == kBob);
      CHECK(i["tags"] == json{"bob-built:1"});
      CHECK(i["created"] == isoTime(20));
    }
  }
  for (const auto& l : im["layers"]) {
    if (l["layer_id"] == "L3") {
      CHECK(l["first_puller_uid"] == kBob);
      CHECK(l["creation_method"] == "image_build");
      CHECK(l["first_seen_at"] == isoTime(100));
    }
    if (l["layer_id"] == "L4") CHECK(l["first_puller_uid"].is_null());
  }

  json vs = ok(c.Get("/remote-api/docker/volumes"));
  checkNulls(vs, kNullable);
  REQUIRE(vs["volumes"].size() == 2);
  CHECK(vs["total_bytes"] == 5700);
  CHECK(vs["attributed_bytes"] == 5000);
  CHECK(vs["volumes"][0]["volume_name"] == "v1");
  CHECK(vs["volumes"][0]["attribution_source"] == "container");
  CHECK(vs["volumes"][0]["reported_size_bytes"] == 5000);
  CHECK(vs["volumes"][0]["ref_count"] == 1);
  CHECK(vs["volumes"][1]["attribution_source"].is_null());
  CHECK_FALSE(vs["volumes"][1].contains("reported_size_bytes"));

  checkError(c.Get("/remote-api/docker/inspect?kind=pod&id=x"), 400, "kind must be container, image or volume");
  checkError(c.Get("/remote-api/docker/inspect?kind=container"), 400, "id query parameter required");
  checkError(c.Get("/remote-api/docker/inspect?kind=container&id=x"), 502);  // no Docker client here
}

TEST_CASE("qman api: attribution detail, admin override wins until removed, review queue, events", "[qman][http]") {
  Agent a;
  auto c = a.client();
  checkError(c.Get("/remote-api/docker/usage/attribution-detail?entity_type=pod&entity_id=x"), 400);
  checkError(c.Get("/remote-api/docker/usage/attribution-detail?entity_type=container"), 400, "container_id required");
  checkError(c.Get("/remote-api/docker/usage/attribution-detail?entity_type=container&container_id=nope"), 404,
             "container not found: nope");
  json d = ok(c.Get("/remote-api/docker/usage/attribution-detail?entity_type=container&container_id=carol-c"));
  checkNulls(d, kNullable);
  CHECK(d["auto"]["uid"] == kCarol);
  CHECK(d["auto"]["source"] == "bpf");
  CHECK(d["override"].is_null());

  // Give carol's container to bob, cascade off.
  const std::string body =
      R"({"entity_type": "container", "container_id": ")" + a.sc.c3.substr(0, 12) +
      R"(", "host_user_name": "bob", "uid": 2002, "cascade": false, "manual_resolver": "admin@uni"})";
  CHECK(ok(c.Post("/remote-api/docker/usage/attribute", body, kJson)) == json{{"status", "ok"}});
  json bob = ok(c.Get("/remote-api/quotas/users/by-name/bob"))[0]["user_quotas"][0];
  CHECK(bob["docker_container_bytes"] == 2000 + 4000);  // at once: no wait for a measurement
  d = ok(c.Get("/remote-api/docker/usage/attribution-detail?entity_type=container&entity_id=" + a.sc.c3));
  CHECK(d["override"]["uid"] == kBob);
  CHECK(d["override"]["source"] == "admin");
  CHECK(d["override"]["manual_resolver"] == "admin@uni");
  CHECK(d["auto"]["uid"] == kCarol);

  checkError(
      c.Post("/remote-api/docker/usage/attribute",
             R"({"entity_type": "container", "container_id": "carol-c", "uid": 2001, "host_user_name": "bob"})", kJson),
      400);
  checkError(
      c.Post("/remote-api/docker/usage/attribute", R"({"entity_type": "container", "container_id": "carol-c"})", kJson),
      400);
  checkError(c.Post("/remote-api/docker/usage/attribute",
                    R"({"entity_type": "container", "container_id": "carol-c", "host_user_name": "zed"})", kJson),
             404);
  checkError(c.Post("/remote-api/docker/usage/attribute",
                    R"({"entity_type": "container", "container_id": "carol-c", "uid": -1})", kJson),
             400);
  checkError(c.Post("/remote-api/docker/usage/attribute", "uid=1", "application/x-www-form-urlencoded"), 400);

  // Events: the admin row is "docker", the kernel rows "audit".
  json ev =
      ok(c.Get("/remote-api/docker/usage/"
               "events?entity_type=container&container_id=carol-c&include_used=true&include_resolved=true"));
  checkNulls(ev, kNullable);
  REQUIRE(ev["events"].size() == 2);
  CHECK(ev["events"][0]["source"] == "docker");
  CHECK(ev["events"][1]["source"] == "audit");
  CHECK(ev["events"][1]["used_for_auto_attribution"] == true);
  CHECK(ev["events"][0]["manual_resolved_at"].is_string());
  CHECK(ev["events"][0]["payload"].is_string());
  CHECK(ok(c.Get("/remote-api/docker/usage/events?entity_type=container&container_id=carol-c"))["events"].empty());
  checkError(c.Get("/remote-api/docker/usage/events?include_used=maybe"), 400);

  // Remove the override: back to carol.
  CHECK(ok(c.Delete("/remote-api/docker/usage/attribute?entity_type=container&container_id=carol-c")) ==
        json{{"status", "ok"}});
  CHECK(ok(c.Get("/remote-api/quotas/users/by-name/carol"))[0]["user_quotas"][0]["docker_container_bytes"] == 4000);
  checkError(c.Delete("/remote-api/docker/usage/attribute?entity_type=volume&volume_name=nope"), 404);

  // Review queue: unattributed objects, biggest first.
  json q = ok(c.Get("/remote-api/docker/usage/review-queue"));
  checkNulls(q, kNullable);
  CHECK(q["total"] == 3);  // the stray container, pre:1, v2 (intermediate images are not listed)
  CHECK(q["page"] == 1);
  CHECK(q["page_size"] == 50);
  CHECK(q["items"][0]["entity_type"] == "volume");
  CHECK(q["items"][0]["volume_name"] == "v2");
  CHECK(q["items"][0]["unresolved_events"] == 0);
  json qc = ok(c.Get("/remote-api/docker/usage/review-queue?entity_type=container&page=1&page_size=1"));
  CHECK(qc["total"] == 1);
  CHECK(qc["items"][0]["container_id"] == a.sc.c4);
  CHECK(ok(c.Get("/remote-api/docker/usage/review-queue?page=9"))["items"].empty());
  checkError(c.Get("/remote-api/docker/usage/review-queue?page=0"), 400);
  checkError(c.Get("/remote-api/docker/usage/review-queue?page_size=501"), 400);
  checkError(c.Get("/remote-api/docker/usage/review-queue?page=x"), 400);
}

TEST_CASE("qman api: /metrics in Prometheus text format", "[qman][http]") {
  Agent a;
  auto c = a.client();
  REQUIRE(a.book->setLimit(kAlice, 1024));
  ok(c.Get("/remote-api/quotas"));
  c.Get("/no/such");
  auto r = c.Get("/metrics");
  REQUIRE(r);
  REQUIRE(r->status == 200);
  CHECK(r->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0) == 0);
  const std::string& m = r->body;
  auto has = [&](const std::string& line) {
    INFO(line);
    CHECK(m.find(line + "\n") != std::string::npos);
  };
  has("dockquota_user_usage_bytes{uid=\"2001\",user=\"alice\",kind=\"container\"} 1000");
  has("dockquota_user_usage_bytes{uid=\"2002\",user=\"bob\",kind=\"volume\"} 5000");
  has("dockquota_user_limit_bytes{uid=\"2001\",user=\"alice\"} 1048576");
  has("dockquota_device_bytes{field=\"unattributed\"} " + std::to_string(Scenario::kUnattributed));
  has("dockquota_docker_bytes{kind=\"container\"} 7300");
  has("dockquota_objects{kind=\"container\",source=\"bpf\"} 3");
  has("dockquota_objects{kind=\"image\",source=\"unattributed\"} 1");
  has("dockquota_probe_counter{name=\"docker_sock_kernel_counters_ringbuf_full\"} 3");
  has("dockquota_probe_counter{name=\"docker_sock_attached\"} 1");
  has("dockquota_http_requests_total{route=\"/remote-api/quotas\",method=\"GET\",code=\"200\"} 1");
  has("dockquota_http_requests_total{route=\"unmatched\",method=\"GET\",code=\"404\"} 1");
  has("dockquota_http_request_duration_seconds_count{route=\"/remote-api/quotas\",method=\"GET\"} 1");
  has("# TYPE dockquota_http_request_duration_seconds histogram");
  // Every sample line is `name{labels} number`.
  std::istringstream in(m);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    INFO(line);
    const auto sp = line.rfind(' ');
    REQUIRE(sp != std::string::npos);
    CHECK_NOTHROW(std::stod(line.substr(sp + 1)));
  }
}

TEST_CASE("qman api: TLS with a self-signed certificate on loopback", "[qman][http]") {
  QmanTempDir tls;
  const std::string cert = tls.path + "/cert.pem", key = tls.path + "/key.pem";
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout " + key +
                          " -out " + cert + " >/dev/null 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  Agent a({}, {.address = "127.0.0.1",
               .port = 0,
               .api_key = "k3y",
               .bill_root_to_login_uid = true,
               .threads = 2,
               .tls_cert_file = cert,
               .tls_key_file = key});
  CHECK(a.api->tls());
  httplib::SSLClient s("127.0.0.1", a.port);
  s.enable_server_certificate_verification(false);
  s.set_basic_auth("api", "k3y");
  CHECK(ok(s.Get("/remote-api/ping")) == json{{"status", "ok"}});
  CHECK(ok(s.Get("/remote-api/quotas"))[0]["name"] == "docker");
  // With the cert as CA, verification passes too.
  httplib::SSLClient v("127.0.0.1", a.port);
  v.set_ca_cert_path(cert.c_str());
  v.set_basic_auth("api", "k3y");
  CHECK(ok(v.Get("/remote-api/ping")) == json{{"status", "ok"}});
  // Plain HTTP to the TLS port gets nothing usable.
  httplib::Client plain("127.0.0.1", a.port);
  plain.set_basic_auth("api", "k3y");
  auto r = plain.Get("/remote-api/ping");
  CHECK((!r || r->status != 200));

  // A bad certificate path fails at start(), naming the files.
  QmanTempDir d2;
  auto st = Store::open(d2.path + "/s.db");
  REQUIRE(st.ok());
  ApiServer bad({.address = "127.0.0.1",
                 .port = 0,
                 .api_key = "k",
                 .bill_root_to_login_uid = true,
                 .threads = 1,
                 .tls_cert_file = "/nonexistent.pem",
                 .tls_key_file = key},
                **st, nullptr);
  auto p = bad.start();
  REQUIRE_FALSE(p.ok());
  CHECK_THAT(p.error().message, Catch::Contains("cannot load TLS certificate /nonexistent.pem"));
}
