// The agent's HTTP surface over real loopback HTTP, backed by a real SQLite store.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/store.h"
#include "exporter/http_api.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using json = nlohmann::json;

namespace {


}  // namespace

TEST_CASE("basic auth: constant-time check of api:<key>", "[http]") {
  // "api:k3y" base64 = YXBpOmszeQ==
  CHECK(ApiServer::checkBasicAuth("Basic YXBpOmszeQ==", "k3y") == 0);
  CHECK(ApiServer::checkBasicAuth("Basic YXBpOmszeQ==", "k3") == 403);
  CHECK(ApiServer::checkBasicAuth("Basic YXBpOmszeQ==", "k3yy") == 403);
  CHECK(ApiServer::checkBasicAuth("Basic Ym9iOmszeQ==", "k3y") == 403);  // user bob
  CHECK(ApiServer::checkBasicAuth("Basic !!!!", "k3y") == 403);
  CHECK(ApiServer::checkBasicAuth("", "k3y") == 401);
  CHECK(ApiServer::checkBasicAuth("Bearer k3y", "k3y") == 401);
  CHECK(ApiServer::checkBasicAuth("Basic YXBpOmszeQ==", "") == 500);
}

TEST_CASE("http api: auth errors, listings with owners, JSON 404", "[http]") {
  TempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  Store& s = **store;
  const std::string cid(64, 'c');
  REQUIRE(s.noteSeen(ObjectKind::Container, cid, "web", "sha256:img", std::string("alice"), 100.0).ok());
  Evidence ev;
  ev.uid = 0;
  ev.gid = 0;
  ev.login_uid = 2001;
  ev.pid = 4242;
  ev.comm = "docker";
  ev.exe = "/usr/bin/docker";
  ev.method = "container_create";
  ev.request_time = 99.5;
  ev.time = 100.5;
  REQUIRE(s.attribute(ObjectKind::Container, cid, ev, true).ok());
  REQUIRE(s.noteSeen(ObjectKind::Volume, "orphan", "orphan", "", std::nullopt, 101.0).ok());

  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "k3y", .bill_root_to_login_uid = true, .threads = 2},
                s, [] { return json{{"status", "degraded"}, {"degraded", {"x"}}}; });
  auto port = api.start();
  REQUIRE(port.ok());
  httplib::Client cli("127.0.0.1", *port);

  auto h = cli.Get("/healthz");
  REQUIRE(h);
  CHECK(h->status == 200);
  CHECK(json::parse(h->body)["status"] == "degraded");

  auto noauth = cli.Get("/api/v1/containers");
  REQUIRE(noauth);
  CHECK(noauth->status == 401);
  CHECK(json::parse(noauth->body) == json{{"msg", "authorization required"}});
  cli.set_basic_auth("api", "wrong");
  auto bad = cli.Get("/api/v1/containers");
  REQUIRE(bad);
  CHECK(bad->status == 403);
  CHECK(json::parse(bad->body) == json{{"msg", "access forbidden"}});

  cli.set_basic_auth("api", "k3y");
  auto r = cli.Get("/api/v1/containers");
  REQUIRE(r);
  REQUIRE(r->status == 200);
  CHECK(r->get_header_value("Content-Type") == "application/json");
  auto body = json::parse(r->body);
  REQUIRE(body["count"] == 1);
  auto c = body["containers"][0];
  CHECK(c["id"] == cid);
  CHECK(c["name"] == "web");
  CHECK(c["image"] == "sha256:img");
  CHECK(c["uid"] == 0);
  CHECK(c["user"] == "root");
  CHECK(c["login_uid"] == 2001);
  CHECK(c["billed_uid"] == 2001);  // root acting for login uid 2001
  CHECK(c["source"] == "bpf");
  CHECK(c["label_user"] == "alice");
  CHECK(c["attributed_at"] == "1970-01-01T00:01:40.500Z");

  auto v = json::parse(cli.Get("/api/v1/volumes")->body);
  REQUIRE(v["count"] == 1);
  CHECK(v["volumes"][0]["source"] == "unattributed");
  CHECK(v["volumes"][0]["uid"].is_null());

  auto nf = cli.Get("/no/such/route");
  REQUIRE(nf);
  CHECK(nf->status == 404);
  CHECK(json::parse(nf->body) == json{{"msg", "not found"}});
  api.stop();
}

TEST_CASE("http api: no key configured answers 500 as qman does", "[http]") {
  TempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "", .bill_root_to_login_uid = true, .threads = 1},
                **store, nullptr);
  auto port = api.start();
  REQUIRE(port.ok());
  httplib::Client cli("127.0.0.1", *port);
  cli.set_basic_auth("api", "x");
  auto r = cli.Get("/api/v1/images");
  REQUIRE(r);
  CHECK(r->status == 500);
  CHECK(json::parse(r->body) == json{{"msg", "api key not specified in app config"}});
}

TEST_CASE("http api: a second server on the same port fails to bind (no SO_REUSEPORT)", "[http]") {
  TempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  ApiServer first({.address = "127.0.0.1", .port = 0, .api_key = "k", .bill_root_to_login_uid = true, .threads = 1},
                  **store, nullptr);
  auto port = first.start();
  REQUIRE(port.ok());
  ApiServer second({.address = "127.0.0.1", .port = static_cast<uint16_t>(*port), .api_key = "k",
                    .bill_root_to_login_uid = true, .threads = 1},
                   **store, nullptr);
  auto again = second.start();
  REQUIRE_FALSE(again.ok());
  CHECK_THAT(again.error().message, Catch::Contains("cannot listen on 127.0.0.1:"));
}
