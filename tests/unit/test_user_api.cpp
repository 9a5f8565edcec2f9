// SPDX-License-Identifier: Apache-2.0
// The per-user socket (api/user_api.h): who sees what, through the router
// with the credentials a connection would carry (a test cannot connect as
// another uid without root: tests/e2e/test_user_quota.py does, as real users),
// then the real unix socket as this process's own uid.
#include <catch2/catch.hpp>

#include <httplib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/enforcement/enforcer.h"
#include "api/http_server.h"
#include "api/user_api.h"
#include "tests/unit/qman_agent.h"

using namespace dockquota;
using namespace dockquota::testing;
using json = nlohmann::json;

namespace {

class NoRuntime : public ContainerRuntime {
 public:
  const char* name() const override { return "none"; }
  Result<uint64_t> writableBytes(const std::string&) override { return Error{ENOENT, "none"}; }
  Status stop(const std::string&, std::chrono::seconds) override { return Error{EIO, "not here"}; }
  Status remove(const std::string&, bool) override { return Error{EIO, "not here"}; }
};

struct UserWorld {
  QmanAgent agent{QmanAgent::Setup{}};
  NoRuntime runtime;
  std::unique_ptr<Enforcer> enforcer;
  std::unique_ptr<UserApiContext> ctx;
  std::unique_ptr<UserApi> api;

  UserWorld() {
    EnforcerOptions o;
    o.mode = EnforceMode::DryRun;
    auto e = Enforcer::create(
        *agent.store, *agent.book, [this] { return agent.usage->snapshot(); }, *agent.users, runtime, o);
    REQUIRE(e);
    enforcer = std::move(*e);
    ctx = std::make_unique<UserApiContext>(UserApiContext{*agent.ctx, enforcer.get()});
    UserApiOptions uo;
    uo.path = agent.dir.file("user.sock");
    api = std::make_unique<UserApi>(uo, *ctx);
  }

  // What a request line from `uid` gets, parsed as the transport parses it.
  std::pair<int, json> ask(uint32_t uid, const std::string& target, const std::string& method = "GET") {
    httplib::Request req;
    REQUIRE(parseRequestHead(method + " " + target + " HTTP/1.1\r\nHost: x\r\n\r\n", req).status == 0);
    httplib::Response res;
    api->handle(PeerCred{true, uid, uid, 4242}, req, res);
    json body = json::parse(res.body, nullptr, false);
    REQUIRE_FALSE(body.is_discarded());
    return {res.status, body};
  }
};

// Every uid a JSON text mentions as "uid": the proof nobody else's figures are in it.
std::set<uint32_t> uidsIn(const json& j) {
  std::set<uint32_t> out;
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) {
      if (k == "uid" && v.is_number_unsigned()) out.insert(v.get<uint32_t>());
      auto more = uidsIn(v);
      out.insert(more.begin(), more.end());
    }
  } else if (j.is_array()) {
    for (const auto& v : j) {
      auto more = uidsIn(v);
      out.insert(more.begin(), more.end());
    }
  }
  return out;
}

}  // namespace

TEST_CASE("user api: a user sees their own figures and objects, nobody else's", "[user-api]") {
  UserWorld w;
  auto [s, q] = w.ask(kAlice, "/v1/quota");
  REQUIRE(s == 200);
  CHECK(q["uid"] == kAlice);
  CHECK(q["user"] == "alice");
  CHECK(q["usage_bytes"] == Scenario::kAliceBytes);
  CHECK(q["docker"]["container_bytes"] == 1000);
  CHECK(q["limit_bytes"] == 0);
  CHECK(q["level"] == "ok");
  CHECK(uidsIn(q) == std::set<uint32_t>{kAlice});
  CHECK(q.dump().find("bob") == std::string::npos);

  auto [so, o] = w.ask(kAlice, "/v1/objects");
  REQUIRE(so == 200);
  REQUIRE(o["containers"].size() == 1);
  CHECK(o["containers"][0]["name"] == "alice-c");
  REQUIRE(o["images"].size() == 1);
  CHECK(o["images"][0]["tags"][0] == "base:1");
  CHECK(o["images"][0]["billed_bytes"] == Scenario::L1 + Scenario::L2);
  CHECK(o["volumes"].empty());
  CHECK(o.dump().find("bob") == std::string::npos);
  CHECK(o.dump().find("carol") == std::string::npos);

  auto [sb, b] = w.ask(kBob, "/v1/objects");
  REQUIRE(sb == 200);
  CHECK(b["containers"][0]["name"] == "bob-c");
  CHECK(b["volumes"][0]["name"] == "v1");
  CHECK(b.dump().find("alice") == std::string::npos);
}

TEST_CASE("user api: another user's figures are refused; root may ask for anyone", "[user-api]") {
  UserWorld w;
  for (const char* t : {"/v1/quota?uid=2002", "/v1/objects?uid=2002", "/v1/events?uid=0", "/v1/quota?user=bob",
                        "/v1/quota?user=nosuchuser"}) {
    INFO(t);
    auto [s, body] = w.ask(kAlice, t);
    CHECK(s == 403);
    CHECK(body["msg"].is_string());
    CHECK(body.dump().find("2002") == std::string::npos);  // not even bob's figures in the refusal
  }
  CHECK(w.ask(kAlice, "/v1/quota?uid=2001&uid=2002").first == 400);  // one subject, named once
  CHECK(w.ask(kAlice, "/v1/quota?uid=2001&user=bob").first == 400);
  CHECK(w.ask(kAlice, "/v1/quota?uid=2001").first == 200);  // herself, named
  CHECK(w.ask(kAlice, "/v1/quota?user=alice").first == 200);
  CHECK(w.ask(kAlice, "/v1/users").first == 403);

  auto [s, q] = w.ask(0, "/v1/quota?uid=2002");
  REQUIRE(s == 200);
  CHECK(q["uid"] == kBob);
  CHECK(q["usage_bytes"] == Scenario::kBobBytes);
  CHECK(w.ask(0, "/v1/quota?user=carol").second["uid"] == kCarol);
  CHECK(w.ask(0, "/v1/quota?user=nosuchuser").first == 404);
  auto [su, users] = w.ask(0, "/v1/users");
  REQUIRE(su == 200);
  std::set<uint32_t> listed;
  for (const auto& u : users["users"]) listed.insert(u["uid"].get<uint32_t>());
  CHECK(listed.count(kAlice));
  CHECK(listed.count(kBob));
  CHECK(listed.count(kCarol));
}

TEST_CASE("user api: read-only, exact paths, JSON errors", "[user-api]") {
  UserWorld w;
  for (const char* m : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"}) {
    INFO(m);
    auto [s, body] = w.ask(kAlice, "/v1/quota", m);
    CHECK(s == 405);
    CHECK(body["msg"].is_string());
  }
  CHECK(w.ask(kAlice, "/v1/quota", "HEAD").first == 200);
  for (const char* t : {"/", "/v1/quota/", "/v1/../v1/quota", "/v1/quota/../users", "/v1/%71uota/x", "/healthz",
                        "/remote-api/quotas", "/api/v1/events"}) {
    INFO(t);
    auto [s, body] = w.ask(kAlice, t);
    CHECK(s == 404);
    CHECK(body["msg"].is_string());
  }
  CHECK(w.ask(kAlice, "/v1/quota?uid=-1").first == 400);
  CHECK(w.ask(0, "/v1/quota?uid=99999999999").first == 400);
  CHECK(w.ask(kAlice, "/v1/events?limit=0").first == 400);
  CHECK(w.ask(kAlice, "/v1/events?limit=201").first == 400);
  const json h = w.api->health().report;
  CHECK(h["requests"]["method_not_allowed"] == 6);
  CHECK(h["requests"]["forbidden"] == 0);
  std::string metrics;
  w.api->renderMetrics(metrics);
  CHECK(metrics.find("dockquota_user_socket_requests_total{outcome=\"method_not_allowed\"} 6\n") != std::string::npos);
  CHECK(metrics.find("dockquota_user_socket_requests_total{outcome=\"forbidden\"} 0\n") != std::string::npos);
}

TEST_CASE("user api: the removal order is enforcement's, and what a sweep would take", "[user-api]") {
  UserWorld w;
  // alice: 1300 bytes used, limit 1 KiB: over. Her one container (kernel
  // evidence) is what dry-run enforcement would pick.
  REQUIRE(w.agent.book->setLimit(kAlice, 1));
  auto [s, q] = w.ask(kAlice, "/v1/quota");
  REQUIRE(s == 200);
  CHECK(q["level"] == "over");
  CHECK(q["limit_bytes"] == 1024);
  CHECK(q["enforcement"]["mode"] == "dry-run");
  auto [so, o] = w.ask(kAlice, "/v1/objects");
  REQUIRE(so == 200);
  REQUIRE(o["removal_order"].size() == 1);
  CHECK(o["removal_order"][0]["rank"] == 1);
  CHECK(o["removal_order"][0]["name"] == "alice-c");
  CHECK(o["removal_order"][0]["size_bytes"] == 1000);
  CHECK(o["removal_order"][0]["would_remove"] == true);
  // Exempt: enforcement takes nothing of hers, and says so.
  REQUIRE(w.agent.store->enforcement().setExemption({"user", std::to_string(kAlice), "", 1}));
  CHECK(w.ask(kAlice, "/v1/objects").second["removal_order"].empty());
  // Under her limit: still listed, nothing would go.
  REQUIRE(w.agent.store->enforcement().clearExemption("user", std::to_string(kAlice)));
  REQUIRE(w.agent.book->setLimit(kAlice, 100));
  auto [s2, o2] = w.ask(kAlice, "/v1/objects");
  REQUIRE(o2["removal_order"].size() == 1);
  CHECK(o2["removal_order"][0]["would_remove"] == false);
}

TEST_CASE("user api: events are the user's own, newest first", "[user-api]") {
  UserWorld w;
  for (int i = 0; i < 3; i++) {
    Event a{0, event_type::kWarning, kAlice, "alice", "", {{"n", i}}, 100.0 + i};
    Event b{0, event_type::kExceeded, kBob, "bob", "", {{"n", i}}, 100.0 + i};
    REQUIRE(w.agent.store->eventLog().addEvent(a, {false, false}));
    REQUIRE(w.agent.store->eventLog().addEvent(b, {false, false}));
  }
  auto [s, e] = w.ask(kAlice, "/v1/events?limit=2");
  REQUIRE(s == 200);
  REQUIRE(e["events"].size() == 2);
  CHECK(e["events"][0]["detail"]["n"] == 2);
  CHECK(e["events"][1]["detail"]["n"] == 1);
  for (const auto& ev : e["events"]) CHECK(ev["type"] == event_type::kWarning);
  CHECK(w.ask(0, "/v1/events?uid=2002").second["events"].size() == 3);
}

namespace {

// One request over a fresh connection to `path`; the whole answer.
std::string rawRequest(const std::string& path, const std::string& request) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.data(), path.size());
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(write(fd, request.data(), request.size()) == ssize_t(request.size()));
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) out.append(buf, size_t(n));
  close(fd);
  return out;
}

json bodyOf(const std::string& answer) {
  const size_t at = answer.find("\r\n\r\n");
  REQUIRE(at != std::string::npos);
  return json::parse(answer.substr(at + 4));
}

}  // namespace

TEST_CASE("user api: the unix socket, its mode and the caller's own uid", "[user-api]") {
  UserWorld w;
  const std::string path = w.agent.dir.file("user.sock");
  REQUIRE(w.api->start());
  struct stat st {};
  REQUIRE(lstat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0666);

  const std::string ok = rawRequest(path, "GET /v1/quota HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  CHECK(ok.rfind("HTTP/1.1 200 ", 0) == 0);
  CHECK(bodyOf(ok)["uid"] == getuid());  // the kernel's word, whatever the request says
  const std::string post =
      rawRequest(path, "POST /v1/quota HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
  CHECK(post.rfind("HTTP/1.1 405 ", 0) == 0);
  CHECK(bodyOf(post)["msg"].is_string());
  const std::string huge = rawRequest(path, "GET /v1/quota?" + std::string(20000, 'a') + " HTTP/1.1\r\n\r\n");
  CHECK(huge.rfind("HTTP/1.1 414 ", 0) == 0);
  CHECK(bodyOf(huge)["msg"].is_string());

  // A second server on the same path must fail, not steal it.
  UserApiOptions again;
  again.path = path;
  UserApi second(again, *w.ctx);
  auto st2 = second.start();
  REQUIRE_FALSE(st2);
  CHECK(st2.error().code == EADDRINUSE);
  CHECK(w.api->health().report["requests"]["answered"] == 1);

  w.api->stop();
  CHECK(lstat(path.c_str(), &st) != 0);  // its socket file goes with it

  // A socket file an agent left behind (nobody listening) is replaced.
  int stale = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.data(), path.size());
  REQUIRE(bind(stale, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  close(stale);
  REQUIRE(second.start());
  CHECK(rawRequest(path, "GET /v1/events HTTP/1.1\r\nConnection: close\r\n\r\n").rfind("HTTP/1.1 200 ", 0) == 0);
  // A file that is not a socket is never removed.
  second.stop();
  { std::ofstream(path) << "mine"; }
  UserApi third(again, *w.ctx);
  CHECK_FALSE(third.start());
  CHECK(lstat(path.c_str(), &st) == 0);
}
