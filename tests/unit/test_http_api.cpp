// SPDX-License-Identifier: Apache-2.0
// The agent's HTTP surface over real loopback HTTP, backed by a real SQLite store.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/store/store.h"
#include "api/http_api.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using json = nlohmann::json;

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
  REQUIRE(s.objects().noteSeen(ObjectKind::Container, cid, "web", "sha256:img", std::string("alice"), 100.0).ok());
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
  REQUIRE(s.objects().attribute(ObjectKind::Container, cid, ev, true).ok());
  REQUIRE(s.objects().noteSeen(ObjectKind::Volume, "orphan", "orphan", "", std::nullopt, 101.0).ok());

  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "k3y", .bill_root_to_login_uid = true, .threads = 2}, s,
                [] {
                  return json{{"status", "degraded"}, {"degraded", {"x"}}};
                });
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
  ApiServer second({.address = "127.0.0.1",
                    .port = static_cast<uint16_t>(*port),
                    .api_key = "k",
                    .bill_root_to_login_uid = true,
                    .threads = 1},
                   **store, nullptr);
  auto again = second.start();
  REQUIRE_FALSE(again.ok());
  CHECK_THAT(again.error().message, Catch::Contains("cannot listen on 127.0.0.1:"));
}

namespace {

httplib::Request request(const std::string& method, const std::string& path) {
  httplib::Request req;
  req.method = method;
  req.path = path;
  return req;
}

json errorBody(const httplib::Response& res) {
  CHECK(res.get_header_value("Content-Type") == "application/json");
  json j = json::parse(res.body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("msg"));
  CHECK(j["msg"].is_string());
  return j;
}

}  // namespace

TEST_CASE("dispatch: routes, matches, 404/405/414 JSON, HEAD, OPTIONS, exceptions, metrics", "[http][dispatch]") {
  TempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "k", .bill_root_to_login_uid = true, .threads = 1},
                **store, nullptr);
  api.route("GET", R"(/t/items/(\d+))", [](const httplib::Request& req, httplib::Response& res) {
    sendJson(res, 200, json{{"id", std::string(req.matches[1])}});
  });
  api.route("PUT", R"(/t/items/(\d+))", [](const httplib::Request& req, httplib::Response& res) {
    sendJson(res, 200, json{{"put", std::string(req.matches[1])}, {"body", req.body}});
  });
  api.route("GET", "/t/throws", [](const httplib::Request&, httplib::Response& res) {
    res.set_header("X-Half", "written");
    throw std::runtime_error("boom");
  });
  api.route("GET", "/t/silent", [](const httplib::Request&, httplib::Response&) {});

  SECTION("the route runs with req.matches filled") {
    auto req = request("GET", "/t/items/42");
    httplib::Response res;
    api.dispatch(req, res);
    CHECK(res.status == 200);
    CHECK(json::parse(res.body) == json{{"id", "42"}});
    req = request("PUT", "/t/items/7");
    req.body = "x";
    res = {};
    api.dispatch(req, res);
    CHECK(json::parse(res.body) == json{{"put", "7"}, {"body", "x"}});
  }
  SECTION("unknown path: 404 JSON") {
    auto req = request("GET", "/t/items/abc");
    httplib::Response res;
    api.dispatch(req, res);
    CHECK(res.status == 404);
    CHECK(errorBody(res)["msg"] == "not found");
  }
  SECTION("known path, other method: 405 JSON with Allow") {
    auto req = request("DELETE", "/t/items/1");
    httplib::Response res;
    api.dispatch(req, res);
    CHECK(res.status == 405);
    CHECK(errorBody(res)["msg"] == "method not allowed");
    CHECK(res.get_header_value("Allow") == "GET, HEAD, PUT, OPTIONS");
    req = request("BREW", "/t/items/1");  // a method no route has: 405 as well
    res = {};
    api.dispatch(req, res);
    CHECK(res.status == 405);
  }
  SECTION("OPTIONS: 200 with Allow") {
    auto req = request("OPTIONS", "/t/items/1");
    httplib::Response res;
    api.dispatch(req, res);
    CHECK(res.status == 200);
    CHECK(res.get_header_value("Allow") == "GET, HEAD, PUT, OPTIONS");
    CHECK(json::parse(res.body)["allow"] == json{"GET", "HEAD", "PUT", "OPTIONS"});
  }
  SECTION("HEAD: the GET route without its body, Content-Length kept") {
    auto req = request("HEAD", "/t/items/42");
    httplib::Response res;
    api.dispatch(req, res);
    CHECK(res.status == 200);
    CHECK(res.body.empty());
    CHECK(res.get_header_value("Content-Length") == std::to_string(json{{"id", "42"}}.dump().size()));
  }
  SECTION("a handler that throws or answers nothing: logged 500 internal error, its headers dropped") {
    for (const char* path : {"/t/throws", "/t/silent"}) {
      auto req = request("GET", path);
      httplib::Response res;
      api.dispatch(req, res);
      CHECK(res.status == 500);
      CHECK(errorBody(res) == json{{"msg", "internal error"}});
      CHECK_FALSE(res.has_header("X-Half"));
    }
  }
  SECTION("a path longer than kMaxPathBytes: 414 before any regex runs") {
    auto req = request("GET", "/t/items/" + std::string(ApiServer::kMaxPathBytes, '1'));
    httplib::Response res;
    api.dispatch(req, res);
    CHECK(res.status == 414);
    errorBody(res);
  }
  SECTION("every answer is counted under its pattern (unmatched for 404), methods bounded") {
    for (auto [m, p] : {std::pair{"GET", "/t/items/1"}, std::pair{"GET", "/nope"}, std::pair{"BREW", "/nope"},
                        std::pair{"GET", "/t/throws"}}) {
      auto req = request(m, p);
      httplib::Response res;
      api.dispatch(req, res);
    }
    std::string out;
    api.requestMetrics().render(out);
    CHECK_THAT(out, Catch::Contains(R"x(route="/t/items/(\\d+)",method="GET",code="200")x"));
    CHECK_THAT(out, Catch::Contains(R"(route="unmatched",method="GET",code="404")"));
    CHECK_THAT(out, Catch::Contains(R"(route="unmatched",method="other",code="404")"));
    CHECK_THAT(out, Catch::Contains(R"(route="/t/throws",method="GET",code="500")"));
    CHECK_THAT(out, !Catch::Contains("BREW"));
  }
}

TEST_CASE("dispatch over httplib: HEAD, OPTIONS and a PUT without Content-Length", "[http][dispatch]") {
  TempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "k", .bill_root_to_login_uid = true, .threads = 2},
                **store, nullptr);
  api.route("PUT", "/t/opt", [](const httplib::Request& req, httplib::Response& res) {
    sendJson(res, 200, json{{"body", req.body}});
  });
  auto port = api.start();
  REQUIRE(port.ok());
  httplib::Client cli("127.0.0.1", *port);
  auto h = cli.Head("/healthz");
  REQUIRE(h);
  CHECK(h->status == 200);
  CHECK(h->body.empty());
  auto o = cli.Options("/healthz");
  REQUIRE(o);
  CHECK(o->status == 200);
  CHECK(o->get_header_value("Allow") == "GET, HEAD, OPTIONS");
  auto nf = cli.Options("/nope");
  REQUIRE(nf);
  CHECK(nf->status == 404);

  // Raw: httplib's client always sends Content-Length. No body and no
  // Content-Length is a body of 0 bytes (RFC 9112 6.3), answered at once.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(*port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const std::string head = "PUT /t/opt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  REQUIRE(write(fd, head.data(), head.size()) == static_cast<ssize_t>(head.size()));
  const auto t0 = std::chrono::steady_clock::now();
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) got.append(buf, static_cast<size_t>(n));
  close(fd);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  CHECK_THAT(got, Catch::StartsWith("HTTP/1.1 200"));
  CHECK_THAT(got, Catch::EndsWith(R"({"body":""})"));
  api.stop();
}
