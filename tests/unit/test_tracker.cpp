// SPDX-License-Identifier: Apache-2.0
// ConnTracker over synthesised probe events: the glue between the probe, the
// stream parser and the recogniser, without a kernel.
#include <catch2/catch.hpp>

#include <linux/types.h>

#include <cstring>
#include <memory>
#include <algorithm>
#include <set>
#include <vector>

#include "agent/capture/conn_tracker.h"

using namespace dockquota;

namespace {

std::unique_ptr<dsock_event> ev(uint32_t type, uint64_t conn, uint32_t tgid, const std::string& data = "",
                                uint64_t len = 0, uint32_t fd = 5, uint32_t turn = 1, uint32_t uid = 2001) {
  auto e = std::make_unique<dsock_event>();
  memset(e.get(), 0, sizeof(dsock_event));
  e->type = type;
  e->conn_id = conn;
  e->tgid = tgid;
  e->pid = tgid;
  e->uid = uid;
  e->gid = uid;
  e->loginuid = 2001;
  e->fd = fd;
  e->turn = turn;
  e->ino = 1000 + conn;
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
const std::string kCreateResp =
    "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(kCreateBody.size()) +
    "\r\n\r\n" + kCreateBody;

}  // namespace

TEST_CASE("tracker: a create on a tracked connection reaches on_call with the client", "[tracker]") {
  std::vector<std::pair<ApiCall, ClientInfo>> calls;
  ConnTracker t({.on_call = [&](const ApiCall& c, const ClientInfo& w) { calls.emplace_back(c, w); },
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

TEST_CASE("tracker: uploads are muted for their turn, process exit closes all its connections", "[tracker]") {
  std::vector<std::pair<uint64_t, dsock_ctl>> ctls;
  ConnTracker t({.on_call = nullptr,
                 .control = [&](uint64_t id, const dsock_ctl& c) { ctls.emplace_back(id, c); },
                 .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  t.onEvent(*ev(DSOCK_EV_CONNECT, 2, 10, "", 0, /*fd=*/6));
  t.onEvent(*ev(DSOCK_EV_CONNECT, 3, 12));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "POST /v1.41/build?t=x HTTP/1.1\r\nHost: d\r\nContent-Length: 100000\r\n\r\n", 0, 5,
                /*turn=*/3));
  REQUIRE(ctls.size() == 1);
  CHECK(ctls[0].first == 1);
  CHECK(ctls[0].second.mute_tx_turn == 3);
  CHECK(ctls[0].second.mute_rx_turn == 0);
  CHECK(ctls[0].second.ignore == 0);
  CHECK(t.openConnections() == 3);
  t.onEvent(*ev(DSOCK_EV_EXIT, 0, 10));
  CHECK(t.openConnections() == 1);
}

TEST_CASE("tracker: a connection whose connect event was lost is followed from its first data", "[tracker]") {
  std::vector<ClientInfo> who;
  ConnTracker t({.on_call = [&](const ApiCall&, const ClientInfo& w) { who.push_back(w); },
                 .exe_of = [](uint32_t) { return std::string(); }});
  // The connect event carries no stream bytes: nothing is missing.
  t.onEvent(*ev(DSOCK_EV_TX, 42, 10, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 42, 10, kCreateResp));
  REQUIRE(who.size() == 1);
  CHECK(who[0].uid == 2001);
  CHECK(t.stats().late_connects == 1);
  CHECK(t.stats().orphan_events == 0);
}

TEST_CASE("tracker: the oldest connection is evicted at the limit", "[tracker]") {
  std::vector<uint64_t> ignored;
  ConnTracker t({.on_call = nullptr,
                 .control =
                     [&](uint64_t id, const dsock_ctl& c) {
                       if (c.ignore) ignored.push_back(id);
                     },
                 .exe_of = [](uint32_t) { return std::string(); }},
                /*max_connections=*/4);
  for (uint64_t i = 1; i <= 6; i++) t.onEvent(*ev(DSOCK_EV_CONNECT, i, 100 + i));
  CHECK(t.openConnections() == 4);
  CHECK(t.stats().evicted == 2);
  CHECK(ignored == std::vector<uint64_t>{1, 2});  // the probe stops sending their calls
  t.onEvent(*ev(DSOCK_EV_TX, 1, 101, "x"));       // evicted: not revived by a late event
  CHECK(t.stats().orphan_events == 1);
  CHECK(t.openConnections() == 4);
}

TEST_CASE("tracker: big downloads are muted after their head, and the next call still pairs", "[tracker]") {
  std::vector<uint32_t> mutes;  // the rx turn of each mute
  std::vector<ApiCall> calls;
  ConnTracker t({.on_call = [&](const ApiCall& c, const ClientInfo&) { calls.push_back(c); },
                 .control = [&](uint64_t, const dsock_ctl& c) { mutes.push_back(c.mute_rx_turn); },
                 .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  // docker save: a chunked tar. The head and the first chunk's start come in
  // one read; what follows is muted (lengths only: gaps over chunk framing).
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "GET /v1.41/images/get?names=bb%3A1 HTTP/1.1\r\nHost: d\r\n\r\n"));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10,
                "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n"
                "8000\r\nlayer.tar",
                4096));
  REQUIRE(mutes == std::vector<uint32_t>{1});
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

// Each request is billed to the process that sent it, not
// to whoever opened the connection.
TEST_CASE("tracker: every request is billed to its own sender (setuid, a child on an inherited fd)", "[tracker]") {
  std::vector<ClientInfo> who;
  ConnTracker t({.on_call = [&](const ApiCall&, const ClientInfo& w) { who.push_back(w); },
                 .exe_of = [](uint32_t tgid) { return "/proc-exe-of-" + std::to_string(tgid); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10, "", 0, 5, 1, /*uid=*/0));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, kCreateReq, 0, 5, 1, /*uid=*/0));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp, 0, 5, 1, 0));
  // The same process after setuid(2002), same connection.
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, kCreateReq, 0, 5, 2, /*uid=*/2002));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp, 0, 5, 2, 0));
  // A child (tgid 11) writing on the inherited connection as uid 2003.
  auto child = ev(DSOCK_EV_TX, 1, 11, kCreateReq, 0, 5, 3, /*uid=*/2003);
  t.onEvent(*child);
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp, 0, 5, 3, 0));
  REQUIRE(who.size() == 3);
  CHECK(who[0].uid == 0);
  CHECK(who[1].uid == 2002);
  CHECK(who[1].tgid == 10);
  CHECK(who[2].uid == 2003);
  CHECK(who[2].tgid == 11);
  CHECK(who[2].exe == "/proc-exe-of-11");
}

// A new connection on the same fd is a new connection,
// even when its end was never reported.
TEST_CASE("tracker: a new connection on the same (tgid, fd) replaces an old one stuck mid-reply", "[tracker]") {
  std::vector<ApiCall> calls;
  ConnTracker t({.on_call = [&](const ApiCall& c, const ClientInfo&) { calls.push_back(c); },
                 .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "GARBAGE\r\n\r\n"));
  // Go's error reply, delimited by close: this side waits for a close that never comes.
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n400 Bad Request"));
  t.onEvent(*ev(DSOCK_EV_CONNECT, 2, 10));  // same tgid, same fd
  CHECK(t.stats().replaced == 1);
  CHECK(t.openConnections() == 1);
  t.onEvent(*ev(DSOCK_EV_TX, 2, 10, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 2, 10, kCreateResp));
  REQUIRE(calls.size() == 1);
  CHECK(calls[0].ids == std::vector<std::string>{kId});
}

// A mute names the exchange (turn) it was decided for.
TEST_CASE("tracker: a download mute carries the turn of the reply it is for", "[tracker]") {
  std::vector<dsock_ctl> ctls;
  ConnTracker t({.on_call = nullptr,
                 .control = [&](uint64_t, const dsock_ctl& c) { ctls.push_back(c); },
                 .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  for (uint32_t turn = 1; turn <= 3; turn++) {
    t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: d\r\n\r\n", 0, 5, turn));
    t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[{", 4096, 5, turn));
    t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "", 100000 - (4096 - 43), 5, turn));
  }
  REQUIRE(ctls.size() == 3);
  for (uint32_t i = 0; i < 3; i++) CHECK(ctls[i].mute_rx_turn == i + 1);
  // Two pipelined lists: the first reply's body is not muted, or the second
  // reply's head would be lost with it.
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10,
                "GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: d\r\n\r\n"
                "GET /v1.41/images/json HTTP/1.1\r\nHost: d\r\n\r\n",
                0, 5, 4));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[{", 4096, 5, 4));
  CHECK(ctls.size() == 3);
}

// Calls the ring lost make the
// rest of the connection doubtful; doubtful calls are counted, not billed.
TEST_CASE("tracker: after events were lost, calls are doubtful: counted and not billed", "[tracker]") {
  int billed = 0, doubted = 0;
  ConnTracker t({.on_call = [&](const ApiCall&, const ClientInfo&) { billed++; },
                 .on_doubtful_call = [&](const ApiCall&, const ClientInfo&) { doubted++; },
                 .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, kCreateReq));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp));
  CHECK(billed == 1);
  auto tx = ev(DSOCK_EV_TX, 1, 10, kCreateReq, 0, 5, 2);
  tx->flags = DSOCK_F_LOST_TX;  // a request before this one never reached us
  t.onEvent(*tx);
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, kCreateResp, 0, 5, 2));
  CHECK(billed == 1);
  CHECK(doubted == 1);
  const auto s = t.stats();
  CHECK(s.doubtful_calls == 1);
  CHECK(s.http.lost_events == 1);
  CHECK(s.http.doubts == 1);
}

// One budget over all connections.
TEST_CASE("tracker: a global memory budget holds over many connections that pipeline and never read", "[tracker]") {
  std::vector<uint64_t> ignored;
  constexpr size_t kBudget = 2u << 20;
  ConnTracker t({.on_call = nullptr,
                 .control =
                     [&](uint64_t id, const dsock_ctl& c) {
                       if (c.ignore) ignored.push_back(id);
                     },
                 .exe_of = [](uint32_t) { return std::string(); }},
                ConnTracker::kMaxConnections, kBudget);
  // A big (4 KiB captured of each write) head of query parameters, pipelined
  // again and again on 150 connections.
  std::string head = "GET /v1.41/containers/json?";
  while (head.size() < 4000) head += "a=b&";
  head += " HTTP/1.1\r\nHost: d\r\n\r\n";
  // A small honest connection, with a request waiting for its reply.
  t.onEvent(*ev(DSOCK_EV_CONNECT, 9999, 9999, "", 0, 7));
  t.onEvent(*ev(DSOCK_EV_TX, 9999, 9999, kCreateReq, 0, 7));
  for (uint64_t c = 1; c <= 150; c++) {
    t.onEvent(*ev(DSOCK_EV_CONNECT, c, 100 + c));
    for (int i = 0; i < 40; i++) {
      t.onEvent(*ev(DSOCK_EV_TX, c, 100 + c, head));
      REQUIRE(t.stats().memory_bytes <= kBudget);
    }
  }
  const auto s = t.stats();
  CHECK(s.dropped_memory > 0);
  CHECK(ignored.size() == s.dropped_memory);
  // Checked after each event: over by one event's growth at most (a 4 KiB
  // head of 1,000 query pairs is ~66 KB parsed).
  CHECK(s.memory_peak <= kBudget + 128 * 1024);
  // The honest connection was never the biggest: it still pairs.
  CHECK(std::find(ignored.begin(), ignored.end(), 9999) == ignored.end());
}

TEST_CASE("tracker: idle connections whose socket is gone are ended by the sweep", "[tracker]") {
  std::set<uint64_t> alive_inos = {1001};
  ConnTracker t({.on_call = nullptr,
                 .exe_of = [](uint32_t) { return std::string(); },
                 .alive = [&](uint32_t, uint32_t, uint64_t ino) { return alive_inos.count(ino) > 0; }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));        // ino 1001
  t.onEvent(*ev(DSOCK_EV_CONNECT, 2, 11));        // ino 1002: closed, end unseen
  t.sweep(1000 + ConnTracker::kIdleCheckNs - 1);  // not idle long enough yet
  CHECK(t.openConnections() == 2);
  t.sweep(1000 + ConnTracker::kIdleCheckNs);
  CHECK(t.openConnections() == 1);
  CHECK(t.stats().ended_unseen == 1);
}

TEST_CASE("tracker: a hijacked stream is ignored by the probe from then on", "[tracker]") {
  std::vector<dsock_ctl> ctls;
  ConnTracker t({.on_call = nullptr,
                 .control = [&](uint64_t, const dsock_ctl& c) { ctls.push_back(c); },
                 .exe_of = [](uint32_t) { return std::string(); }});
  t.onEvent(*ev(DSOCK_EV_CONNECT, 1, 10));
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10,
                "POST /v1.41/containers/abc/attach?stream=1 HTTP/1.1\r\nHost: d\r\n"
                "Upgrade: tcp\r\nConnection: Upgrade\r\n\r\n"));
  t.onEvent(*ev(DSOCK_EV_RX, 1, 10, "HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"));
  REQUIRE(ctls.size() == 1);
  CHECK(ctls[0].ignore == 1);
  CHECK(t.openConnections() == 0);
  t.onEvent(*ev(DSOCK_EV_TX, 1, 10, "ls\n"));  // already in the ring: not revived
  CHECK(t.openConnections() == 0);
  CHECK(t.stats().orphan_events == 1);
}

// A connection in doubt whose every byte came from one user: any reply that
// names a new object names one of that user's, so it is billed; with two
// writers it is not.
TEST_CASE("tracker: doubtful calls are billed only when one user wrote everything on the connection", "[tracker]") {
  std::vector<uint32_t> billed;
  int doubted = 0;
  ConnTracker t({.on_call = [&](const ApiCall&, const ClientInfo& w) { billed.push_back(w.uid); },
                 .on_doubtful_call = [&](const ApiCall&, const ClientInfo&) { doubted++; },
                 .exe_of = [](uint32_t) { return std::string(); }});
  const std::string garbage = "\x16\x03\x01 not http\r\n\r\n";
  const std::string bad = "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad";
  for (uint64_t conn : {1, 2}) {
    t.onEvent(*ev(DSOCK_EV_CONNECT, conn, 10 + conn));
    t.onEvent(*ev(DSOCK_EV_TX, conn, 10 + conn, garbage));  // pairing in doubt from here
    t.onEvent(*ev(DSOCK_EV_RX, conn, 10 + conn, bad));
    // conn 2: another user writes on the same connection (an fd passed on).
    t.onEvent(*ev(DSOCK_EV_TX, conn, 10 + conn, kCreateReq, 0, 5, 2, conn == 1 ? 2001 : 2002));
    t.onEvent(*ev(DSOCK_EV_RX, conn, 10 + conn, kCreateResp, 0, 5, 2));
  }
  CHECK(billed == std::vector<uint32_t>{2001});
  CHECK(doubted == 1);
  CHECK(t.stats().doubtful_billed == 1);
  CHECK(t.stats().doubtful_calls == 1);
}

TEST_CASE("tracker: its health report names every loss by reason, and any loss degrades", "[tracker][health]") {
  TrackerStats ts;
  ts.connections = 3;
  Health ok = ConnTracker::health(ts);
  CHECK(ok.degraded.empty());
  CHECK(ok.report["connections"] == 3);
  CHECK(ok.report["losses"]["dropped_memory"] == 0);

  ts.dropped_memory = 2;
  ts.http.lost_events = 1;
  Health lossy = ConnTracker::health(ts);
  CHECK(lossy.report["losses"]["dropped_memory"] == 2);
  CHECK(lossy.report["losses"]["lost_events"] == 1);
  REQUIRE(lossy.degraded.size() == 2);
  CHECK(std::find(lossy.degraded.begin(), lossy.degraded.end(), "attribution stream: dropped_memory 2") !=
        lossy.degraded.end());
}
