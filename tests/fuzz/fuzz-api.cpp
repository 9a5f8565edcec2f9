// SPDX-License-Identifier: Apache-2.0
// fuzz-api: the whole HTTP API through ApiServer::dispatch() (api/http_api.h),
// no socket: every /healthz, /metrics, /api/v1 and /remote-api route, the qman
// routes over a real SQLite Store in a temporary directory (the objects of
// tests/unit/qman_fixture.h, plus a few with hostile bytes: a passwd name and
// a process comm that are not UTF-8, an exemption stored by an older agent
// with a reason cut inside a character), the enforcement routes over a
// dry-run Enforcer with a runtime that does nothing.
//
// The world is built once per process and requests change it (limits,
// overrides, exemptions, events): state carries over from input to input, as
// on a real host. A finding that needs an earlier input to reproduce shows in
// the -print_final_stats run, not in the replay of the one input.
//
// Input:
//   u8   method: GET HEAD PUT POST DELETE PATCH OPTIONS, else the token str'd below
//   u8   flags: bits 0-1 Authorization (0, 1: api:<key>; 2: none; 3: the value str'd below)
//              bit 2: Content-Type application/json; bit 3: Content-Type str'd below
//              bit 4: Content-Length header (the body's size); bit 5: Content-Length str'd below
//   [str method token when method >= 7]
//   [str Authorization value when auth == 3] [str Content-Type when bit 3] [str Content-Length when bit 5]
//   str  path, as the transport hands it over (percent-decoded: any bytes)
//   u8   n params (at most 8), then n times str key, str value (decoded)
//   u8   n more headers (at most 4), then n times str name, str value
//   rest the body
// (str = u16 little-endian length, then that many bytes; tests/fuzz/fuzz_input.h.)
//
// Checked, per request:
//   - dispatch() returns (a crash or an exception out of it is a finding);
//   - the status is 200..599, and no 5xx except the genuine ones below;
//   - HEAD has no body; every other answer is JSON (a valid UTF-8 text
//     nlohmann parses), Content-Type application/json, except /metrics 200
//     (Prometheus text, still valid UTF-8);
//   - every 4xx and 5xx is an object with a string "msg" and no null "detail";
//   - a 405 has an Allow header.
// Genuine 5xx (nothing a client sent could avoid them): 502 from
// /remote-api/docker/inspect, whose Docker socket does not exist here.
#include <httplib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/log.h"
#include "agent/base/utf8.h"
#include "agent/enforcement/enforcer.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "api/enforcement_api.h"
#include "api/http_api.h"
#include "api/qman_api.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/unit/api_stack.h"
#include "tests/unit/qman_fixture.h"

namespace dockquota::fuzz {
namespace {

using json = nlohmann::json;
using namespace dockquota::testing;

const char* const kMethods[] = {"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"};
const char* const kAuth = "Basic YXBpOmszeQ==";  // api:k3y

void must(const Status& s) {
  if (!s) {
    std::fprintf(stderr, "fuzz-api: setup: %s\n", s.error().message.c_str());
    std::abort();
  }
}
template <typename T>
T take(Result<T> r) {
  if (!r) must(r.error());
  return std::move(*r);
}

// Everything the routes need, built once (a Store per input would cost more
// than the request).
struct World {
  TempDir dir;
  std::unique_ptr<Store> store;
  Scenario sc;
  std::unique_ptr<DockerClient> docker;
  std::unique_ptr<RouteStack> routes;
  ApiServer* api = nullptr;

  World() {
    store = take(Store::open(dir.file("s.db")));
    sc.fill(*store);
    // Hostile bytes already in the store: a comm and exe from the kernel that
    // are not UTF-8 or hold control bytes, and an exemption an older agent cut
    // in the middle of a character.
    must(store->objects().noteSeen(ObjectKind::Container, hex64('e'), "evil-c", img('a'), std::string("\xff"), 45));
    Evidence ev = evidenceOf(kAlice, 45, "container_create");
    ev.comm = "\xff\xfe\x1b[31m";
    ev.exe = "/tmp/\xc3(\n<3>forged";
    take(store->objects().attribute(ObjectKind::Container, hex64('e'), ev, true));
    must(store->enforcement().setExemption(
        {"user", std::to_string(kBob), "a" + std::string("\xc3\xa9", 2) + "\xc3", 46}));
    auto src = std::make_unique<FakeSource>(sc.figures());
    src->figures.addContainer(hex64('e'), "evil-c", img('a'), "running", 10);
    docker = std::make_unique<DockerClient>(dir.file("no-docker.sock"), std::chrono::milliseconds(200));
    RouteStack::Options o;
    o.users = {{0, "root"},    {kAlice, "alice"}, {kBob, "bob"},     {kCarol, "carol"},
               {5000, "dave"}, {5001, "caf\xe9"}, {65534, "nobody"}, {999, "sys"}};
    o.docker = docker.get();
    o.master = [] { return json{{"x", 1}}; };
    o.delivery = [] { return json{{"master", {{"sent", 1}}}}; };
    o.health = [] { return json{{"status", "ok"}}; };
    o.clock = [] { return 1000.0; };
    o.threads = 1;
    routes = std::make_unique<RouteStack>(*store, std::move(src), std::move(o));
    api = routes->api.get();
  }
};

World& world() {
  // Never destroyed (libFuzzer exits without unwinding); its directory is
  // removed at exit.
  static World* w = [] {
    auto* made = new World();
    static const std::string dir = made->dir.path;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    });
    return made;
  }();
  return *w;
}

bool isGenuine5xx(const httplib::Request& req, const httplib::Response& res) {
  return res.status == 502 && req.path == "/remote-api/docker/inspect";
}

}  // namespace

std::string encodeApiRequest(const ApiRequest& r) {
  Writer w;
  uint8_t m = 7;
  for (uint8_t i = 0; i < 7; i++)
    if (r.method == kMethods[i]) m = i;
  w.u8(m);
  uint8_t flags = r.auth;
  if (r.content_type == "application/json") {
    flags |= 4;
  } else if (!r.content_type.empty()) {
    flags |= 8;
  }
  if (r.content_length) flags |= 16;
  w.u8(flags);
  if (m == 7) w.str(r.method);
  if (r.auth == 3) w.str(r.auth_value);
  if (flags & 8) w.str(r.content_type);
  w.str(r.path);
  w.u8(static_cast<uint8_t>(r.params.size()));
  for (const auto& [k, v] : r.params) w.str(k).str(v);
  w.u8(static_cast<uint8_t>(r.headers.size()));
  for (const auto& [k, v] : r.headers) w.str(k).str(v);
  w.bytes(r.body);
  return w.data();
}

// The routes log every change: errors only while an input runs (and back
// after, so the unit suite's replay leaves the other tests' logging alone).
struct QuietLog {
  log::Level was = log::level();
  QuietLog() { log::setLevel(log::Level::Error); }
  ~QuietLog() { log::setLevel(was); }
};

int api(const uint8_t* data, size_t size) {
  QuietLog quiet;
  World& wd = world();
  Reader in(data, size);
  httplib::Request req;
  const uint8_t m = in.u8();
  const uint8_t flags = in.u8();
  req.method = m < 7 ? kMethods[m] : std::string(in.str(32));
  switch (flags & 3) {
    case 0:
    case 1: req.set_header("Authorization", kAuth); break;
    case 2: break;
    default: req.set_header("Authorization", std::string(in.str(256))); break;
  }
  if (flags & 4) req.set_header("Content-Type", "application/json");
  if (flags & 8) req.set_header("Content-Type", std::string(in.str(128)));
  std::string content_length;
  if (flags & 32) content_length = in.str(32);
  req.path = in.str(ApiServer::kMaxPathBytes + 16);
  const size_t nparams = std::min<size_t>(in.u8(), 8);
  for (size_t i = 0; i < nparams; i++) {
    std::string k(in.str(256));
    req.params.emplace(std::move(k), std::string(in.str(4096)));
  }
  const size_t nheaders = std::min<size_t>(in.u8(), 4);
  for (size_t i = 0; i < nheaders; i++) {
    std::string k(in.str(128));
    req.set_header(k, std::string(in.str(1024)));
  }
  req.body = in.rest();
  if (flags & 16) req.set_header("Content-Length", std::to_string(req.body.size()));
  if (flags & 32) req.set_header("Content-Length", content_length);

  httplib::Response res;
  wd.api->dispatch(req, res);

  DQ_FUZZ_CHECK(res.status >= 200 && res.status <= 599);
  if (res.status >= 500 && !isGenuine5xx(req, res)) {
    std::fprintf(stderr, "fuzz-api: %s %s -> %d %s\n", printable(req.method, 64).c_str(),
                 printable(req.path, 256).c_str(), res.status, printable(res.body, 512).c_str());
    DQ_FUZZ_CHECK(res.status < 500);
  }
  if (req.method == "HEAD") {
    DQ_FUZZ_CHECK(res.body.empty());
    return 0;
  }
  if (!utf8Valid(res.body)) {
    const std::string fixed = utf8Fix(res.body);
    size_t at = 0;
    while (at < res.body.size() && at < fixed.size() && res.body[at] == fixed[at]) at++;
    const size_t from = at > 80 ? at - 80 : 0;
    std::fprintf(stderr, "fuzz-api: %s %s -> %d, invalid UTF-8 at byte %zu: %s\n", printable(req.method, 64).c_str(),
                 printable(req.path, 256).c_str(), res.status, at, printable(res.body.substr(from, 160)).c_str());
    DQ_FUZZ_CHECK(utf8Valid(res.body));
  }
  if (res.status == 200 && req.path == "/metrics" && req.method == "GET") {
    DQ_FUZZ_CHECK(res.get_header_value("Content-Type").rfind("text/plain", 0) == 0);
    return 0;
  }
  DQ_FUZZ_CHECK(res.get_header_value("Content-Type") == "application/json");
  const json body = json::parse(res.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    std::fprintf(stderr, "fuzz-api: not JSON: %s\n", printable(res.body, 512).c_str());
    DQ_FUZZ_CHECK(!body.is_discarded());
  }
  if (res.status >= 400) {
    DQ_FUZZ_CHECK(body.is_object());
    DQ_FUZZ_CHECK(body.contains("msg") && body["msg"].is_string());
    DQ_FUZZ_CHECK(!body.contains("detail") || body["detail"].is_string());
  }
  if (res.status == 405) DQ_FUZZ_CHECK(res.has_header("Allow"));
  return 0;
}

}  // namespace dockquota::fuzz
