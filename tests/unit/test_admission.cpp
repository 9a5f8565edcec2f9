// SPDX-License-Identifier: Apache-2.0
// Admission control's pure parts: pairing Docker's plugin calls with the
// requests the probe saw (RequestMatcher), the verdicts (Admission), and the
// plugin protocol's router (AuthzPlugin::handle) with an Admission behind it.
#include <httplib.h>

#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "agent/admission/admission.h"
#include "agent/admission/request_matcher.h"
#include "agent/base/base64.h"
#include "api/authz_plugin.h"
#include "tests/fuzz/fuzz_targets.h"

using namespace dockquota;
using json = nlohmann::json;

namespace {

constexpr uint64_t kMs = 1'000'000;

HttpRequest request(const std::string& method, const std::string& target, const std::string& body = "") {
  return fuzz::seenRequest(method, target, body);
}

// What the tracker does for a request written whole at `t`.
void sent(RequestMatcher& m, uint64_t conn, const HttpRequest& r, uint32_t uid, uint64_t t) {
  m.onHead(conn, r, Sender{uid, uid}, t);
  m.onDone(conn, r);
}

const std::string kCreate = "/v1.41/containers/create";
const std::string kBody = R"({"Image":"busybox","Cmd":["true"]})";

}  // namespace

TEST_CASE("isAdmissionRequest: what makes new disk, after the router's decoding", "[admission]") {
  for (const char* t : {"/v1.41/containers/create?name=x", "/containers/create", "/v1.43/images/create?fromImage=a",
                        "/v1.41/build?t=x", "/v1.41/images/load?quiet=1", "/v1.41/commit?container=x",
                        "/v1.41/volumes/create", "/v1.41%2Fcontainers/%63reate", "http://docker/v1.41/build"}) {
    INFO(t);
    CHECK(isAdmissionRequest("POST", request("POST", t).path));
  }
  for (const char* t : {"/v1.41/containers/x/start", "/v1.41/containers/json", "/v1.41/images/prune",
                        "/v1.41/containers/create/x", "/v1.41/volumes/prune", "/v1.41/containers/x"}) {
    INFO(t);
    CHECK_FALSE(isAdmissionRequest("POST", request("POST", t).path));
  }
  CHECK_FALSE(isAdmissionRequest("DELETE", "/containers/create"));
  CHECK_FALSE(isAdmissionRequest("GET", "/images/create"));
}

TEST_CASE("bodyDigest: the probe's head+tail view and Docker's whole body agree", "[admission]") {
  for (size_t n : {0ul, 10ul, HttpConnection::kBodyHeadBytes, HttpConnection::kBodyHeadBytes + 1,
                   HttpConnection::kBodyHeadBytes + HttpConnection::kBodyTailBytes + 5, size_t(1) << 20}) {
    std::string whole(n, '\0');
    for (size_t i = 0; i < n; i++) whole[i] = char('a' + i % 23);
    const size_t head = std::min(n, HttpConnection::kBodyHeadBytes);
    // The tracker's tail holds up to twice its bound between trims.
    const size_t past = n - head, keep = std::min(past, 2 * HttpConnection::kBodyTailBytes);
    INFO(n);
    CHECK(bodyDigest(std::string_view(whole).substr(0, head), std::string_view(whole).substr(n - keep), n) ==
          bodyDigestOf(whole));
  }
  CHECK(bodyDigestOf("{\"a\":1}") != bodyDigestOf("{\"a\":2}"));
  CHECK(bodyDigestOf("") != bodyDigestOf(std::string(1, '\0')));
}

TEST_CASE("RequestMatcher: one sender is matched and the request claimed once", "[admission]") {
  RequestMatcher m;
  sent(m, 1, request("POST", kCreate + "?name=a", kBody), 1001, 10 * kMs);
  CHECK(m.match("POST", kCreate + "?name=b", kBody, 11 * kMs).kind == MatchResult::Kind::NotSeen);
  CHECK(m.match("PUT", kCreate + "?name=a", kBody, 11 * kMs).kind == MatchResult::Kind::NotSeen);
  auto r = m.match("POST", kCreate + "?name=a", kBody, 11 * kMs);
  CHECK(r.kind == MatchResult::Kind::Matched);
  CHECK(r.sender.uid == 1001);
  CHECK(m.match("POST", kCreate + "?name=a", kBody, 12 * kMs).kind == MatchResult::Kind::NotSeen);
  CHECK(m.stats().matched == 1);
  CHECK(m.stats().open == 0);
}

TEST_CASE("RequestMatcher: reads and removals are not kept", "[admission]") {
  RequestMatcher m;
  sent(m, 1, request("GET", "/v1.41/containers/json"), 1001, 1);
  sent(m, 1, request("DELETE", "/v1.41/containers/abc"), 1001, 2);
  CHECK(m.stats().kept == 0);
}

TEST_CASE("RequestMatcher: the body tells identical URIs of two users apart", "[admission]") {
  RequestMatcher m;
  const std::string alice_body = R"({"Image":"busybox","Cmd":["sh"]})", bob_body = R"({"Image":"busybox"})";
  sent(m, 1, request("POST", kCreate, alice_body), 1001, 1 * kMs);
  sent(m, 2, request("POST", kCreate, bob_body), 1002, 2 * kMs);
  auto b = m.match("POST", kCreate, bob_body, 3 * kMs);
  CHECK(b.kind == MatchResult::Kind::Matched);
  CHECK(b.sender.uid == 1002);
  auto a = m.match("POST", kCreate, alice_body, 3 * kMs);
  CHECK(a.kind == MatchResult::Kind::Matched);
  CHECK(a.sender.uid == 1001);
}

TEST_CASE("RequestMatcher: identical requests by two users are ambiguous, and so is the one left", "[admission]") {
  RequestMatcher m;
  sent(m, 1, request("POST", kCreate, kBody), 1001, 1 * kMs);
  sent(m, 2, request("POST", kCreate, kBody), 1002, 2 * kMs);
  auto first = m.match("POST", kCreate, kBody, 3 * kMs);
  REQUIRE(first.kind == MatchResult::Kind::Ambiguous);
  CHECK(first.candidates.size() == 2);
  // Docker may have asked about bob's first: the remaining one is not surely bob's.
  auto second = m.match("POST", kCreate, kBody, 3 * kMs);
  CHECK(second.kind == MatchResult::Kind::Ambiguous);
  CHECK(m.stats().ambiguous == 2);
  // The same user twice is no ambiguity.
  sent(m, 1, request("POST", kCreate, kBody), 1001, 4 * kMs);
  sent(m, 3, request("POST", kCreate, kBody), 1001, 5 * kMs);
  CHECK(m.match("POST", kCreate, kBody, 6 * kMs).kind == MatchResult::Kind::Matched);
  CHECK(m.match("POST", kCreate, kBody, 6 * kMs).kind == MatchResult::Kind::Matched);
}

TEST_CASE("RequestMatcher: a body still arriving makes the call wait, until the last try", "[admission]") {
  RequestMatcher m;
  HttpRequest r = request("POST", kCreate, kBody);
  m.onHead(1, r, Sender{1001, 1001}, 1 * kMs);
  CHECK(m.match("POST", kCreate, kBody, 2 * kMs).kind == MatchResult::Kind::Waiting);
  // Docker sent no body (not JSON, or over 1 MiB): the URI alone pairs it.
  CHECK(m.match("POST", kCreate, std::nullopt, 2 * kMs).kind == MatchResult::Kind::Matched);
  m.onHead(1, r, Sender{1001, 1001}, 3 * kMs);
  CHECK(m.match("POST", kCreate, kBody, 4 * kMs, /*last_try=*/true).kind == MatchResult::Kind::Matched);
}

TEST_CASE("RequestMatcher: a body with a capture gap pairs on the URI", "[admission]") {
  RequestMatcher m;
  HttpRequest r = request("POST", kCreate, "{\"Ima");
  r.body_gap = true;
  sent(m, 1, r, 1001, 1 * kMs);
  CHECK(m.match("POST", kCreate, kBody, 2 * kMs).kind == MatchResult::Kind::Matched);
}

TEST_CASE("RequestMatcher: answered or old requests leave; a user's flood pushes out only their own", "[admission]") {
  RequestMatcher m;
  const HttpRequest r = request("POST", "/v1.41/volumes/create", "{}");
  sent(m, 7, r, 1001, 1 * kMs);
  m.onAnswered(7, r);
  CHECK(m.stats().answered_unclaimed == 1);
  CHECK(m.match("POST", r.target, "{}", 2 * kMs).kind == MatchResult::Kind::NotSeen);

  sent(m, 8, r, 1001, 3 * kMs);
  CHECK(m.match("POST", r.target, "{}", 3 * kMs + RequestMatcher::kKeepNs + 1).kind == MatchResult::Kind::NotSeen);
  CHECK(m.stats().expired == 1);

  RequestMatcher f;
  const uint64_t t0 = 10 * kMs;
  sent(f, 1, request("POST", kCreate + "?name=bob", kBody), 1002, t0);
  for (size_t i = 0; i < RequestMatcher::kMaxPerUid + 50; i++)
    sent(f, 100 + i, request("POST", kCreate + "?name=m" + std::to_string(i), kBody), 1001, t0 + i);
  CHECK(f.stats().dropped_user_share == 50);
  CHECK(f.stats().open == RequestMatcher::kMaxPerUid + 1);
  auto bob = f.match("POST", kCreate + "?name=bob", kBody, t0 + kMs);
  CHECK(bob.kind == MatchResult::Kind::Matched);
  CHECK(bob.sender.uid == 1002);

  RequestMatcher g;  // many users together: the global budget holds
  for (size_t i = 0; i < RequestMatcher::kMaxRequests + 10; i++)
    sent(g, i, request("POST", kCreate + "?name=" + std::to_string(i), kBody), uint32_t(2000 + i % 100), t0 + i);
  CHECK(g.stats().open <= RequestMatcher::kMaxRequests);
  CHECK(g.stats().dropped_budget >= 10);

  RequestMatcher h;
  sent(h, 1, request("POST", kCreate + "?name=" + std::string(RequestMatcher::kMaxUriBytes, 'x'), kBody), 1001, 1);
  CHECK(h.stats().uri_too_long == 1);
  CHECK(h.stats().open == 0);
}

namespace {

struct Fixture {
  RequestMatcher matcher;
  std::map<uint32_t, AdmissionFigures> figures;
  uint64_t now = 1 * kMs;
  int match_calls = 0;
  Admission make(AdmissionOptions o = {}) {
    o.match_timeout = std::chrono::milliseconds(20);
    return Admission(
        o, Admission::Hooks{
               .match =
                   [this](std::string_view m, std::string_view u, const std::optional<std::string>& b, bool last) {
                     match_calls++;
                     return matcher.match(m, u, b, now, last);
                   },
               .billed = [](const Sender& s) { return s.uid == 0 ? s.loginuid : s.uid; },
               .figures = [this](uint32_t uid) { return figures[uid]; },
           });
  }
};

}  // namespace

TEST_CASE("Admission: over the limit is refused with the figures; under, root, no limit are allowed", "[admission]") {
  Fixture f;
  f.figures[1001] = {11ull << 30, 10ull << 30, "alice"};
  f.figures[1002] = {1ull << 30, 10ull << 30, "bob"};
  f.figures[1003] = {50ull << 30, 0, "carol"};
  Admission a = f.make();
  sent(f.matcher, 1, request("POST", kCreate, kBody), 1001, f.now);
  Verdict v = a.judge("POST", kCreate, kBody);
  CHECK_FALSE(v.allow);
  CHECK(std::string(v.reason) == "over_limit");
  CHECK(v.msg.find("alice (uid 1001) uses 11.0 GiB of a 10.0 GiB Docker quota") != std::string::npos);
  CHECK(v.msg.find("docker quota") != std::string::npos);

  sent(f.matcher, 2, request("POST", kCreate, kBody), 1002, f.now);
  CHECK(a.judge("POST", kCreate, kBody).allow);
  sent(f.matcher, 3, request("POST", kCreate, kBody), 1003, f.now);
  CHECK(std::string(a.judge("POST", kCreate, kBody).reason) == "no_limit");
  // root with alice's login uid: root is never refused.
  f.matcher.onHead(4, request("POST", kCreate, kBody), Sender{0, 1001}, f.now);
  f.matcher.onDone(4, request("POST", kCreate, kBody));
  CHECK(std::string(a.judge("POST", kCreate, kBody).reason) == "root");
  // Removals, stops, prunes, reads: never judged, never paired.
  for (auto [m, u] : {std::pair{"DELETE", "/v1.41/containers/x?force=1"},
                      {"POST", "/v1.41/containers/x/stop"},
                      {"POST", "/v1.41/images/prune"},
                      {"GET", "/v1.41/images/json"}}) {
    const int calls = f.match_calls;
    CHECK(a.judge(m, u, std::nullopt).allow);
    CHECK(f.match_calls == calls);
  }
  CHECK(a.health().degraded.empty());
  CHECK(a.health().report["verdicts"]["over_limit"] == 1);
}

TEST_CASE("Admission: a share of the limit; at the threshold exactly is refused", "[admission]") {
  Fixture f;
  f.figures[1001] = {8ull << 30, 10ull << 30, ""};
  AdmissionOptions o;
  o.share = 0.8;
  Admission a = f.make(o);
  sent(f.matcher, 1, request("POST", "/v1.41/volumes/create", "{}"), 1001, f.now);
  Verdict v = a.judge("POST", "/v1.41/volumes/create", "{}");
  CHECK_FALSE(v.allow);
  CHECK(v.msg.find("uid 1001 uses 8.0 GiB of a 10.0 GiB Docker quota (new containers, images and volumes are "
                   "refused from 80% of it)") != std::string::npos);
  f.figures[1001].usage = (8ull << 30) - 1;
  sent(f.matcher, 1, request("POST", "/v1.41/volumes/create", "{}"), 1001, f.now);
  CHECK(a.judge("POST", "/v1.41/volumes/create", "{}").allow);
}

TEST_CASE("Admission: unsure is allowed and degrades, or refused with fail_closed", "[admission]") {
  Fixture f;
  f.figures[1001] = {11ull << 30, 10ull << 30, "alice"};
  f.figures[1002] = {1ull << 30, 10ull << 30, "bob"};
  f.figures[1003] = {12ull << 30, 10ull << 30, "carol"};
  for (bool closed : {false, true}) {
    AdmissionOptions o;
    o.fail_closed = closed;
    Admission a = f.make(o);
    // Never seen (a TCP client, a lost event): waits its timeout, then decides.
    Verdict v = a.judge("POST", "/v1.41/build?t=x", std::nullopt);
    CHECK(v.allow == !closed);
    CHECK(std::string(v.reason) == "not_seen");
    // alice (over) and bob (under) sent identical creates.
    sent(f.matcher, 1, request("POST", kCreate, kBody), 1001, f.now);
    sent(f.matcher, 2, request("POST", kCreate, kBody), 1002, f.now);
    v = a.judge("POST", kCreate, kBody);
    CHECK(v.allow == !closed);
    CHECK(std::string(v.reason) == "ambiguous");
    CHECK(a.judge("POST", kCreate, kBody).allow == !closed);
    // alice and carol, both over: refused either way, naming neither.
    sent(f.matcher, 3, request("POST", kCreate, kBody), 1001, f.now);
    sent(f.matcher, 4, request("POST", kCreate, kBody), 1003, f.now);
    v = a.judge("POST", kCreate, kBody);
    CHECK_FALSE(v.allow);
    CHECK(std::string(v.reason) == "ambiguous_same");
    CHECK(v.msg.find("alice") == std::string::npos);
    CHECK(v.msg.find("carol") == std::string::npos);
    CHECK_FALSE(a.judge("POST", kCreate, kBody).allow);
    const Health h = a.health();
    CHECK(h.degraded.size() == 2);
    CHECK(h.report["verdicts"]["not_seen"] == 1);
    CHECK(h.report["verdicts"]["ambiguous"] == 2);
  }
}

namespace {

httplib::Response call(AuthzPlugin& p, const std::string& path, const std::string& body) {
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body;
  httplib::Response res;
  p.handle(req, res);
  return res;
}

}  // namespace

TEST_CASE("AuthzPlugin: the protocol, allowing until admission is set", "[admission][authz]") {
  Fixture f;
  f.figures[1001] = {11ull << 30, 10ull << 30, "alice"};
  Admission a = f.make();
  AuthzPlugin p(AuthzPluginOptions{});
  auto act = call(p, "/Plugin.Activate", "");
  CHECK(act.status == 200);
  CHECK(json::parse(act.body) == json{{"Implements", {"authz"}}});

  const json req = {{"User", ""},
                    {"RequestMethod", "POST"},
                    {"RequestUri", kCreate},
                    {"RequestBody", base64Encode(kBody)},
                    {"RequestHeaders", {{"Content-Type", "application/json"}}}};
  sent(f.matcher, 1, request("POST", kCreate, kBody), 1001, f.now);
  auto early = call(p, "/AuthZPlugin.AuthZReq", req.dump());
  CHECK(json::parse(early.body)["Allow"] == true);
  CHECK(p.health().report["judged_while_starting"] == 1);
  // A read while starting is not counted; with fail_closed a create is refused until then.
  const json read = {{"RequestMethod", "GET"}, {"RequestUri", "/v1.41/containers/json"}};
  CHECK(json::parse(call(p, "/AuthZPlugin.AuthZReq", read.dump()).body)["Allow"] == true);
  CHECK(p.health().report["judged_while_starting"] == 1);
  AuthzPluginOptions closed_opt;
  closed_opt.fail_closed = true;
  AuthzPlugin closed(closed_opt);
  CHECK(json::parse(call(closed, "/AuthZPlugin.AuthZReq", req.dump()).body)["Allow"] == false);
  CHECK(json::parse(call(closed, "/AuthZPlugin.AuthZReq", read.dump()).body)["Allow"] == true);

  p.setAdmission(&a);
  auto judged = call(p, "/AuthZPlugin.AuthZReq", req.dump());
  REQUIRE(judged.status == 200);
  const json j = json::parse(judged.body);
  CHECK(j["Allow"] == false);
  CHECK(j["Msg"].get<std::string>().find("alice") != std::string::npos);
  // Responses are never filtered. A call without a JSON body (Docker's retry
  // of a broken call sends its drained, empty body) is allowed, counted and
  // degrades; refused with fail_closed.
  CHECK(json::parse(call(p, "/AuthZPlugin.AuthZRes", req.dump()).body)["Allow"] == true);
  auto bad = call(p, "/AuthZPlugin.AuthZReq", "");
  CHECK(bad.status == 200);
  CHECK(json::parse(bad.body)["Allow"] == true);
  CHECK(json::parse(call(closed, "/AuthZPlugin.AuthZReq", "{not json").body)["Allow"] == false);
  CHECK(call(p, "/Nope", "").status == 404);
  CHECK(p.health().degraded.size() == 1);
  std::string metrics;
  p.renderMetrics(metrics);
  CHECK(metrics.find("dockquota_admission_verdicts_total{reason=\"over_limit\"} 1") != std::string::npos);
  CHECK(metrics.find("dockquota_admission_verdicts_total{reason=\"starting\"} 1") != std::string::npos);
}

TEST_CASE("Admission::judgeNow: a verdict when the request is paired, nothing (no count) when not yet", "[admission]") {
  Fixture f;
  f.figures[1001] = {11ull << 30, 10ull << 30, "alice"};
  Admission a = f.make();
  CHECK_FALSE(a.judgeNow("POST", kCreate, kBody));
  CHECK(a.health().report["verdicts"]["not_seen"] == 0);
  sent(f.matcher, 1, request("POST", kCreate, kBody), 1001, f.now);
  auto v = a.judgeNow("POST", kCreate, kBody);
  REQUIRE(v);
  CHECK_FALSE(v->allow);
  CHECK(a.health().report["verdicts"]["over_limit"] == 1);
  // Never judged: answered at once.
  auto read = a.judgeNow("GET", "/v1.41/containers/json", std::nullopt);
  REQUIRE(read);
  CHECK(read->allow);
}
