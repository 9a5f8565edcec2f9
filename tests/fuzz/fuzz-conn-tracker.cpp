// SPDX-License-Identifier: Apache-2.0
// fuzz-conn-tracker: ConnTracker (agent/capture/conn_tracker.h) fed probe events and
// docker CLI executions.
//
// Input: u8 connection limit (% 16 + 1, so eviction happens), then operations:
//   op & 7 = 0  connect      1 tx    2 rx    3 close    4 exit (tgid only)
//            5  exec record: tgid, uid, loginuid (u8 each), path, u8 argc % 4, argv strings
//            6  tx or rx (op & 0x10) split into (op >> 5) + 1 events at u16 offsets
//            7  an event of any type: u32 type, then as for tx
// An event's identity: with op & 0x80 a u64 conn_id and a u32 tgid, else one
// byte each (ids % 8, tgid % 8 + 100, so they collide); then u8 pid, u8 uid,
// u8 fd % 8; for tx/rx the data (a string of at most DSOCK_CAP_BYTES, the
// copy limit) and with op & 0x08 a u32 of bytes moved beyond it (a gap); for
// ops 1, 2 and 7, op & 0x40 adds a u8: its low two bits are the event's
// DSOCK_F_LOST_* flags (earlier events lost to a full ring), the rest its turn.
// The kernel's contract is kept (cap_len <= the copy limit, len >= cap_len);
// everything else is free. Fields not named here stay zero.
//
// Checked: open connections never exceed the limit and match stats(); every
// recognised call reaches on_call, counted, with a process that sent events;
// the probe is only given instructions (mutes, ignore) for connections it
// reported; the tracked bytes stay within the memory budget.
#include <algorithm>
#include <cstring>
#include <memory>
#include <set>
#include <utility>

#include "agent/capture/conn_tracker.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {
namespace {

constexpr size_t kCap = sizeof(dsock_event::data);

struct Identity {
  uint64_t conn_id;
  uint32_t tgid, pid, uid, fd;
};

Identity identityFrom(Reader& in, uint8_t op) {
  Identity id{};
  if (op & 0x80) {
    id.conn_id = in.u64();
    id.tgid = in.u32();
  } else {
    id.conn_id = in.u8() % 8;
    id.tgid = in.u8() % 8 + 100;
  }
  id.pid = in.u8();
  id.uid = in.u8();
  id.fd = in.u8() % 8;
  return id;
}

void fill(dsock_event& ev, uint32_t type, const Identity& id, std::string_view data, uint64_t len, uint8_t extra = 0) {
  std::memset(&ev, 0, sizeof ev);
  ev.type = type;
  ev.conn_id = id.conn_id;
  ev.tgid = id.tgid;
  ev.pid = id.pid;
  ev.uid = id.uid;
  ev.fd = id.fd;
  const size_t n = std::min(data.size(), kCap);
  if (n) std::memcpy(ev.data, data.data(), n);  // an empty view may hold nullptr
  ev.cap_len = static_cast<decltype(ev.cap_len)>(n);
  ev.len = std::max<uint64_t>(len, n);
  ev.flags = extra & (DSOCK_F_LOST_TX | DSOCK_F_LOST_RX);
  ev.turn = extra >> 2;
  ev.ino = id.conn_id + 1;
}

}  // namespace

int connTracker(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const size_t limit = in.u8() % 16 + 1;
  uint64_t calls = 0;
  std::set<uint64_t> conn_ids;  // every connection id an event named
  std::set<uint32_t> tgids;     // every process an event came from
  ConnTracker::Hooks hooks;
  hooks.on_call = [&](const ApiCall& call, const ClientInfo& client) {
    ++calls;
    DQ_FUZZ_CHECK(toString(call.action) != nullptr);
    DQ_FUZZ_CHECK(tgids.count(client.tgid));
  };
  hooks.control = [&](uint64_t conn_id, const dsock_ctl& ctl) {
    DQ_FUZZ_CHECK(conn_ids.count(conn_id));
    DQ_FUZZ_CHECK(ctl.ignore <= 1);
  };
  // Sockets are alive unless their inode is odd (the sweep ends those).
  hooks.alive = [](uint32_t, uint32_t, uint64_t ino) { return ino % 2 == 0; };
  // No /proc lookups: odd tgids have an executable, even ones are gone.
  hooks.exe_of = [](uint32_t tgid) { return tgid % 2 ? std::string("/usr/bin/docker") : std::string(); };
  constexpr size_t kBudget = 256 * 1024;  // small, so drops happen
  ConnTracker tracker(hooks, limit, kBudget);

  auto ev = std::make_unique<dsock_event>();
  uint64_t clock = 0;
  auto send = [&](uint32_t type, const Identity& id, std::string_view bytes, uint64_t len, uint8_t extra = 0) {
    conn_ids.insert(id.conn_id);
    tgids.insert(id.tgid);
    fill(*ev, type, id, bytes, len, extra);
    ev->ts_ns = clock += 1'000'000'000;  // a second per event: the sweep's idle check comes into play
    tracker.onEvent(*ev);
    if (clock % (8 * 1'000'000'000ull) == 0) tracker.sweep(clock);
    DQ_FUZZ_CHECK(tracker.openConnections() <= limit);
    const TrackerStats st = tracker.stats();
    DQ_FUZZ_CHECK(st.open == tracker.openConnections());
    DQ_FUZZ_CHECK(st.calls == calls);
    // One event may add at most one copy's worth of parsed head before the
    // budget is enforced; after it, the total is back under the budget.
    DQ_FUZZ_CHECK(st.memory_bytes <= kBudget);
  };

  while (!in.empty()) {
    const uint8_t op = in.u8();
    switch (op & 7) {
      case 0:
      case 3:
      case 4: {
        static constexpr uint32_t kTypes[] = {DSOCK_EV_CONNECT, 0, 0, DSOCK_EV_CLOSE, DSOCK_EV_EXIT};
        Identity id = identityFrom(in, op);
        send(kTypes[op & 7], id, (op & 7) == 0 ? in.str(kCap) : std::string_view(), 0);
        break;
      }
      case 1:
      case 2:
      case 7: {
        const uint32_t type = (op & 7) == 7 ? in.u32() : (op & 7) == 1 ? DSOCK_EV_TX : DSOCK_EV_RX;
        Identity id = identityFrom(in, op);
        std::string_view d = in.str(kCap);
        const uint64_t gap = (op & 0x08) ? in.u32() : 0;
        const uint8_t extra = (op & 0x40) ? in.u8() : 0;
        send(type, id, d, d.size() + gap, extra);
        break;
      }
      case 6: {
        // One write or read cut into several calls; a piece longer than the
        // copy limit is copied in part, as the probe does.
        Identity id = identityFrom(in, op);
        std::string_view d = in.str();
        const unsigned pieces = (op >> 5) + 1;
        for (unsigned i = 0; i < pieces && !d.empty(); ++i) {
          const size_t moved = i + 1 == pieces ? d.size() : std::min<size_t>(in.u16(), d.size());
          send((op & 0x10) ? DSOCK_EV_RX : DSOCK_EV_TX, id, d.substr(0, std::min(moved, kCap)), moved);
          d.remove_prefix(moved);
        }
        break;
      }
      case 5: {
        ExecRecord rec;
        rec.tgid = in.u8() % 8 + 100;
        rec.pid = rec.tgid;
        rec.uid = in.u8();
        rec.loginuid = in.u8();
        rec.path = std::string(in.str());
        for (unsigned n = in.u8() % 4; n > 0; --n) rec.argv.emplace_back(in.str());
        tracker.onExec(rec);
        break;
      }
    }
  }
  return 0;
}

std::string encodeTrackerSession(const std::vector<Chunk>& chunks) {
  // Limit 4; exec of tgid 101; connect (conn 1, tgid 101, pid 1, uid 7, fd 3); the chunks; close.
  Writer w;
  w.u8(3);
  w.u8(5).u8(1).u8(7).u8(7).str("/usr/local/bin/docker").u8(2).str("docker").str("run");
  auto identity = [&](uint8_t op) { w.u8(op).u8(1).u8(1).u8(1).u8(7).u8(3); };
  identity(0);
  w.str("docker");
  for (const Chunk& c : chunks) {
    std::string_view d = c.data;
    const uint64_t gap = c.total > d.size() ? c.total - d.size() : 0;
    const bool has_gap = gap > 0 && gap <= UINT32_MAX && d.size() <= kCap;
    identity(static_cast<uint8_t>((c.tx ? 1 : 2) | (has_gap ? 0x08 : 0)));
    w.str(d.substr(0, kCap));
    if (has_gap) w.u32(static_cast<uint32_t>(gap));
  }
  identity(3);
  return w.data();
}

}  // namespace dockquota::fuzz
