// SPDX-License-Identifier: Apache-2.0
// "Errors that never fail": the UTF-8 helpers (agent/base/utf8.h), the
// logger's sanitizer, and the routes that answered 500 for a path or query
// holding invalid UTF-8, over real loopback HTTP with the qman and
// enforcement routes on a real SQLite store.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/base/log.h"
#include "agent/base/utf8.h"
#include "agent/enforcement/enforcer.h"
#include "agent/quota/quotas.h"
#include "api/enforcement_api.h"
#include "api/http_api.h"
#include "api/qman_api.h"
#include "api_stack.h"
#include "qman_fixture.h"

using namespace dockquota;
using namespace dockquota::testing;
using json = nlohmann::json;

namespace {

const std::string kE = "\xc3\xa9";  // é

}  // namespace

TEST_CASE("utf8: validity, prefixes on a character boundary, repair", "[utf8]") {
  CHECK(utf8Valid(""));
  CHECK(utf8Valid("plain ascii"));
  CHECK(utf8Valid("caf" + kE + " \xe2\x82\xac \xf0\x9f\x90\xb3"));
  for (const char* bad : {"\xff", "\xc3", "a\xc3(", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                          "\xf8\x88\x80\x80\x80", "\xe2\x82", "\x80"})
    CHECK_FALSE(utf8Valid(bad));

  // The issue's reason: "a" + "é"×300 is 601 bytes; byte 500 is inside an "é".
  std::string reason = "a";
  for (int i = 0; i < 300; i++) reason += kE;
  REQUIRE(reason.size() == 601);
  CHECK_FALSE(utf8Valid(reason.substr(0, 500)));
  const std::string cut = utf8Prefix(reason, 500);
  CHECK(cut.size() == 499);
  CHECK(utf8Valid(cut));
  CHECK(utf8Prefix("abc", 10) == "abc");
  CHECK(utf8Prefix("\xf0\x9f\x90\xb3", 3).empty());
  CHECK(utf8Prefix("ab\xff\xff", 3) == "ab\xff");  // a stray byte is one unit

  CHECK(utf8Fix("ok " + kE) == "ok " + kE);
  CHECK(utf8Fix("a\xff"
                "b") ==
        "a\xef\xbf\xbd"
        "b");
  CHECK(utf8Valid(utf8Fix(reason.substr(0, 500))));
}

TEST_CASE("utf8: printable() for error messages and logs", "[utf8]") {
  CHECK(printable("user not found: zed") == "user not found: zed");
  CHECK(printable("caf" + kE) == "caf" + kE);
  CHECK(printable("\xff") == "\\xff");
  CHECK(printable("a\nb\r\tc\x1b[31m") == "a\\x0ab\\x0d\\x09c\\x1b[31m");
  CHECK(printable("\x7f") == "\\x7f");
  CHECK(printable("\xc2\x85") == "\\u0085");  // NEL, a C1 control
  CHECK(printable("\xe2\x80\xae"
                  "evil") == "\\u202eevil");      // right-to-left override
  CHECK(printable("\xe2\x80\xa8") == "\\u2028");  // line separator
  // Bounded, never inside a character or an escape, the cut marked.
  CHECK(printable(std::string(200, 'x'), 10) == std::string(10, 'x') + "...");
  CHECK(printable("abcdefgh" + kE, 9) == "abcdefgh...");
  CHECK(printable("abcdefg\xff", 9) == "abcdefg...");
  for (const std::string& s : {std::string("\xff\xfe\xfd"), std::string("a\xc3"), std::string(1000, '\x01')})
    CHECK(utf8Valid(printable(s, 64)));
}

TEST_CASE("utf8: jsonText() replaces invalid UTF-8 instead of throwing", "[utf8]") {
  const json j = {{"name", "caf\xe9"}, {"ok", kE}};
  CHECK_THROWS(j.dump());  // what every route did (type_error.316)
  const std::string text = jsonText(j);
  CHECK(utf8Valid(text));
  CHECK(json::parse(text)["name"] == "caf\xef\xbf\xbd");
  CHECK(json::parse(text)["ok"] == kE);
}

TEST_CASE("log: one line of printable, valid UTF-8 whatever the message holds", "[utf8][log]") {
  char path[] = "/tmp/dockquota-log-XXXXXX";
  const int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  REQUIRE(dup2(fd, STDERR_FILENO) >= 0);
  const std::string hostile = "/x\xff\n<3>forged: line\r\x1b[2J" + kE;
  LOG_ERROR("http", "GET %s: not found", hostile.c_str());
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fd);
  std::ifstream f(path, std::ios::binary);
  const std::string out((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  unlink(path);
  INFO(out);
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  CHECK(out.back() == '\n');
  CHECK(utf8Valid(out));
  CHECK(out.find('\r') == std::string::npos);
  CHECK(out.find('\x1b') == std::string::npos);
  CHECK_THAT(out, Catch::Contains("http: GET /x\\xff\\x0a<3>forged: line\\x0d\\x1b[2J" + kE + ": not found"));
}

namespace {

// The qman and enforcement routes of one agent, on loopback.
struct Host {
  QmanTempDir dir;
  std::unique_ptr<Store> store;
  Scenario sc;
  std::unique_ptr<RouteStack> routes;
  ApiServer* api = nullptr;
  int port = 0;

  Host() {
    store = std::move(*Store::open(dir.path + "/s.db"));
    sc.fill(*store);
    RouteStack::Options o;
    o.users = {{kAlice, "alice"}, {kBob, "bob"}, {kCarol, "carol"}};
    routes = std::make_unique<RouteStack>(*store, std::make_unique<FakeSource>(sc.figures()), std::move(o));
    api = routes->api.get();
    auto p = api->start();
    REQUIRE(p);
    port = *p;
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", port);
    c.set_basic_auth("api", "k3y");
    return c;
  }
};

// A 4xx {"msg": <string>} in valid UTF-8; returns the message.
std::string clientError(const httplib::Result& r) {
  REQUIRE(r);
  INFO(r->status << " " << printable(r->body));
  CHECK(r->status >= 400);
  CHECK(r->status < 500);
  CHECK(r->get_header_value("Content-Type") == "application/json");
  CHECK(utf8Valid(r->body));
  const json j = json::parse(r->body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.contains("msg"));
  REQUIRE(j["msg"].is_string());
  return j["msg"].get<std::string>();
}

const char* kJson = "application/json";

}  // namespace

TEST_CASE("routes: %ff in a path or query answers 4xx JSON, never 500 (the fuzzed routes)", "[utf8][qman][http]") {
  Host h;
  auto c = h.client();
  // Each of the measured 500s.
  CHECK(clientError(c.Put("/remote-api/quotas/users/2001?device=%ff", R"({"block_hard_limit": 1})", kJson)) ==
        "device not recognized: \\xff");
  CHECK(clientError(c.Get("/remote-api/quotas/defaults?device=%ff")) == "device not recognized: \\xff");
  CHECK(clientError(c.Put("/remote-api/quotas/defaults?device=%ff", R"({"block_hard_limit": 1})", kJson)) ==
        "device not recognized: \\xff");
  CHECK(clientError(c.Get("/remote-api/docker/usage/attribution-detail?entity_type=container&container_id=%ff")) ==
        "container not found: \\xff");
  CHECK(clientError(c.Delete("/api/v1/exemptions/containers/%ff")) == "container \\xff is not exempt");
  CHECK(clientError(c.Delete("/api/v1/exemptions/users/%ff")) == "no such user: \\xff");
  CHECK(clientError(c.Put("/api/v1/exemptions/containers/%ff", "", kJson)) == "no such container: \\xff");
  CHECK(clientError(c.Get("/api/v1/enforcement/users/%ff")) == "no such user: \\xff");
  CHECK(clientError(c.Get("/remote-api/quotas/users/by-name/%ff")) == "user not found: \\xff");
  CHECK(clientError(c.Get("/remote-api/users/resolve?username=%c3")) == "user not found: \\xc3");
  CHECK(clientError(c.Get("/remote-api/%ff%fe")) == "not found");
  // Control bytes echoed are escaped; a long echo is bounded.
  CHECK(clientError(c.Get("/remote-api/quotas/defaults?device=a%0d%0ab")) == "device not recognized: a\\x0d\\x0ab");
  const std::string msg = clientError(c.Get(("/remote-api/quotas/defaults?device=" + std::string(5000, 'x')).c_str()));
  CHECK(msg.size() <= 30 + kEchoBytes + 3);
}

TEST_CASE("exemptions: a reason of \"a\" + é×300 is stored cut on a character, and listed", "[utf8][enforce][http]") {
  Host h;
  auto c = h.client();
  std::string reason = "a";
  for (int i = 0; i < 300; i++) reason += kE;
  auto put = c.Put("/api/v1/exemptions/users/bob", json{{"reason", reason}}.dump(), kJson);
  REQUIRE(put);
  INFO(printable(put->body, 200));
  REQUIRE(put->status == 200);
  const std::string answered = json::parse(put->body)["reason"];
  CHECK(answered.size() <= 500);
  CHECK(utf8Valid(answered));
  CHECK(answered == reason.substr(0, 499));

  auto xs = h.store->enforcement().exemptions();
  REQUIRE(xs);
  REQUIRE(xs->size() == 1);
  CHECK((*xs)[0].reason == answered);  // what is stored, not only what is answered

  auto list = c.Get("/api/v1/exemptions");
  REQUIRE(list);
  REQUIRE(list->status == 200);
  CHECK(json::parse(list->body)["exemptions"][0]["reason"] == answered);
}

TEST_CASE("exemptions: a row an older agent stored cut inside a character never breaks the listing",
          "[utf8][enforce][http]") {
  Host h;
  REQUIRE(h.store->enforcement().setExemption({"user", std::to_string(kBob), "a" + kE + "\xc3", 10}));
  auto c = h.client();
  auto list = c.Get("/api/v1/exemptions");
  REQUIRE(list);
  REQUIRE(list->status == 200);
  CHECK(json::parse(list->body)["exemptions"][0]["reason"] == "a" + kE + "\xef\xbf\xbd");
  // The same for text from the kernel and passwd: a comm that is not UTF-8.
  const std::string evil = hex64('f');
  REQUIRE(h.store->objects().noteSeen(ObjectKind::Container, evil, "evil", img('a'), std::nullopt, 50));
  Evidence ev = evidenceOf(kAlice, 50, "container_create");
  ev.comm = "\xff\xfe";
  REQUIRE(h.store->objects().attribute(ObjectKind::Container, evil, ev, true));
  auto d = c.Get(("/remote-api/docker/usage/attribution-detail?entity_type=container&container_id=" + evil).c_str());
  REQUIRE(d);
  CHECK(d->status == 200);
  CHECK(utf8Valid(d->body));
  CHECK(json::parse(d->body)["auto"]["comm"] == "\xef\xbf\xbd\xef\xbf\xbd");
  auto objs = c.Get("/api/v1/containers");
  REQUIRE(objs);
  CHECK(objs->status == 200);
  CHECK(utf8Valid(objs->body));
}

TEST_CASE("optional bodies: PUT and POST without a body or Content-Length are accepted at once",
          "[utf8][enforce][http]") {
  Host h;
  // httplib's client always sends Content-Length: a raw request.
  auto raw = [&](const std::string& head) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(h.port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    timeval tv{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    REQUIRE(write(fd, head.data(), head.size()) == static_cast<ssize_t>(head.size()));
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) got.append(buf, static_cast<size_t>(n));
    close(fd);
    return got;
  };
  const std::string auth = "Authorization: Basic YXBpOmszeQ==\r\nConnection: close\r\n";  // api:k3y
  // The README: PUT /api/v1/exemptions/... body optional.
  const auto t0 = std::chrono::steady_clock::now();
  std::string got = raw("PUT /api/v1/exemptions/users/bob HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n");
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  INFO(got);
  CHECK_THAT(got, Catch::StartsWith("HTTP/1.1 200"));
  CHECK_THAT(got, Catch::Contains(R"("exempt":true)"));
  got = raw("PUT /api/v1/exemptions/containers/bob-c HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n");
  CHECK_THAT(got, Catch::StartsWith("HTTP/1.1 200"));
  got = raw("DELETE /api/v1/exemptions/users/bob HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n");
  CHECK_THAT(got, Catch::StartsWith("HTTP/1.1 200"));
  got = raw("POST /api/v1/enforcement/sweep HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n");
  CHECK_THAT(got, Catch::StartsWith("HTTP/1.1 200"));
  // A route whose body is required says so, as JSON, at once.
  got = raw("PUT /remote-api/quotas/users/2001?device=docker HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n");
  CHECK_THAT(got, Catch::StartsWith("HTTP/1.1 400"));
  CHECK_THAT(got, Catch::Contains(R"({"msg":)"));
  // Content-Length: 0 is the same as none.
  auto c = h.client();
  auto r = c.Put("/api/v1/exemptions/users/carol", "", "");
  REQUIRE(r);
  CHECK(r->status == 200);
}
