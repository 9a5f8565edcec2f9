// ConnTracker over synthesised probe events: the glue between the probe, the
// stream parser and the recogniser, without a kernel.
#include <catch2/catch.hpp>

#include <linux/types.h>

#include <cstring>
#include <memory>
#include <vector>

#include "agent/conn_tracker.h"

using namespace dockquota;

namespace {

std::unique_ptr<dsock_event> ev(uint32_t type, uint64_t conn, uint32_t tgid, const std::string& data = "",
                                uint64_t len = 0) {
  auto e = std::make_unique<dsock_event>();
  memset(e.get(), 0, sizeof(dsock_event));
  e->type = type;
  e->conn_id = conn;
  e->tgid = tgid;
  e->pid = tgid;
  e->uid = 2001;
  e->gid = 2001;
  e->loginuid = 2001;
  e->fd = 5;
  e->ts_ns = 1000;
  size_t n = std::min(data.size(), sizeof e->data);
  memcpy(e->data, data.data(), n);
  e->cap_len = n;
  e->len = len ? len : data.size();
  strcpy(e->comm, "docker");
  return e;
}

const std::string kCreateReq =
    "POST /v1.41/containers/create?name=web HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
    "Content-Length: 17\r\n\r\n{\"Image\":\"bb:1\"}\n";
const std::string kId = std::string(64, 'a');
const std::string kCreateBody = "{\"Id\":\"" + kId + "\",\"Warnings\":[]}\n";
const std::string kCreateResp = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: " +
                                std::to_string(kCreateBody.size()) + "\r\n\r\n" + kCreateBody;

}  // namespace

TEST_CASE("tracker: a create on a tracked connection reaches on_call with the client", "[tracker]") {
  std::vector<std::pair<ApiCall, ClientInfo>> calls;
  ConnTracker t({.on_call = [&](const ApiCall& c, const ClientInfo& w) { calls.emplace_back(c, w); },
                 .mute = nullptr, .untrack = nullptr,
                 .exe_of = [](uint32_t) { return std::string("/usr/bin/docker"); }});
  ExecRecord rec;
  rec.tgid = 77;
  rec.path = "/usr/local/bin/docker";
  rec.argv = {"docker", "create", "bb:1"};
  t.onExec(rec);
  t.onEvent(*ev(DSOCK_EV_CONNECT, 9, 77));
  t.onEvent(*ev(DSOCK_EV_TX, 9, 77, kCreateReq.substr(0, 20)));
  t.onEvent(*ev(DSOCK_EV_TX, 9, 77, kCreateReq.substr(20)));
  t.onEvent(*ev(DSOCK_EV_RX, 9, 77, kCreateResp));
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].first.action == ApiAction::ContainerCreate);
  REQUIRE(calls[0].first.ids.size() == 1);
  CHECK(calls[0].first.ids[0] == kId);
  CHECK(calls[0].second.uid == 2001);
  CHECK(calls[0].second.loginuid == 2001);
  CHECK(calls[0].second.exe == "/usr/local/bin/docker");  // from the exec probe, not /proc
  CHECK(calls[0].second.argv.size() == 3);
  t.onEvent(*ev(DSOCK_EV_CLOSE, 9, 77));
  CHECK(t.openConnections() == 0);
  CHECK(t.stats().calls == 1);
}

TEST_CASE("tracker: exe falls back to /proc, then to the kernel's name", "[tracker]") {
  std::vector<ClientInfo> who;
  std::string proc_exe = "/usr/bin/curl";
  ConnTracker t({.on_call = [&](const ApiCall&, const ClientInfo& w) { who.push_back(w); },
                 .mute = nullptr, .untrack = nullptr,
                 .exe_of = [&](uint32_t) { return proc_exe; }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10, "curl"));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp));
  proc_exe.clear();  // the process is gone before we look
  t.onEvent(*ev(DSOCK_EV_CONNECT, 2, 11, "curl"));
  t.onEvent(*ev(DSOCK_EV_TX, 2, 11, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 2, 11, kCreateResp));
  REQUIRE(who.size() == 2);
  CHECK(who[0].exe == "/usr/bin/curl");
  CHECK(who[1].exe == "curl");
}

TEST_CASE("tracker: uploads are muted, process exit closes all its connections", "[tracker]") {
  std::vector<std::tuple<uint32_t, uint32_t, uint32_t>> mutes;
  ConnTracker t({.on_call = nullptr,
                 .mute = [&](uint32_t tg, uint32_t fd, uint32_t bits) { mutes.emplace_back(tg, fd, bits); },
                 .untrack = nullptr, .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  t.onEvent(*ev(DSOCK_EV_CONNECT, 2, 10));
  t.onEvent(*ev(DSOCK_EV_CONNECT, 3, 12));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "POST /v1.41/build?t=x HTTP/1.1\r\nHost: d\r\nContent-Length: 100000\r\n\r\n"));
  REQUIRE(mutes.size() == 1);
  CHECK(std::get<2>(mutes[0]) == DSOCK_MUTE_TX);
  CHECK(t.openConnections() == 3);
  t.onEvent(*ev(DSOCK_EV_EXIT, 0, 10));
  CHECK(t.openConnections() == 1);
}

TEST_CASE("tracker: data for unknown connections is counted, not guessed", "[tracker]") {
  int calls = 0;
  ConnTracker t({.on_call = [&](const ApiCall&, const ClientInfo&) { calls++; }, .mute = nullptr,
                 .untrack = nullptr, .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_TX, 42, 10, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 42, 10, kCreateResp));
  CHECK(calls == 0);
  CHECK(t.stats().orphan_events == 2);
}

TEST_CASE("tracker: the oldest connection is evicted at the limit", "[tracker]") {
  ConnTracker t({.on_call = nullptr, .mute = nullptr, .untrack = nullptr,
                 .exe_of = [](uint32_t) { return std::string(); }},
                /*max_connections=*/4);
  for (uint64_t i = 1; i <= 6; i++) t.onEvent(*ev(DSOCK_EV_CONNECT, i, 100 + i));
  CHECK(t.openConnections() == 4);
  CHECK(t.stats().evicted == 2);
  t.onEvent(*ev(DSOCK_EV_TX, 1, 101, "x"));  // evicted: now unknown
  CHECK(t.stats().orphan_events == 1);
}

TEST_CASE("tracker: big downloads are muted after their head, and the next call still pairs", "[tracker]") {
  std::vector<uint32_t> mutes;
  std::vector<ApiCall> calls;
  ConnTracker t({.on_call = [&](const ApiCall& c, const ClientInfo&) { calls.push_back(c); },
                 .mute = [&](uint32_t, uint32_t, uint32_t bits) { mutes.push_back(bits); },
                 .untrack = nullptr, .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  // docker save: a chunked tar. The head and the first chunk's start come in
  // one read; what follows is muted (lengths only: gaps over chunk framing).
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "GET /v1.41/images/get?names=bb%3A1 HTTP/1.1\r\nHost: d\r\n\r\n"));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
                "8000\r\nlayer.tar",
                4096));
  REQUIRE(mutes == std::vector<uint32_t>{DSOCK_MUTE_RX});
  for (int i = 0; i < 100; i++) t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "", 32768));
  // A small reply is not muted; neither is the reply of a recognised call.
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\n\r\n"));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp));
  CHECK(mutes.size() == 1);
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].action == ApiAction::ContainerCreate);
  CHECK(calls[0].ids == std::vector<std::string>{kId});
  // A muted Content-Length body stays framed exactly.
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: d\r\n\r\n"));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[{", 4096));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "", 100000 - (4096 - 43)));
  CHECK(mutes.size() == 2);
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp));
  REQUIRE(calls.size() == 2);
  CHECK(calls[1].ids == std::vector<std::string>{kId});
  CHECK(t.stats().muted_downloads == 2);
  CHECK(t.stats().http.parse_errors == 0);
}
