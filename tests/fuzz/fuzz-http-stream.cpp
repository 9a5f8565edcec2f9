// SPDX-License-Identifier: Apache-2.0
// fuzz-http-stream: HttpConnection (agent/capture/http_stream.h), both directions.
//
// Input: a sequence of operations, each an op byte and its arguments:
//   op & 7 = 0 / 1   send / recv: data (u16 length + bytes); with op & 0x08 a
//                    u32 follows: bytes the call moved beyond the data (a gap)
//            2 / 3   send / recv split: data as above, cut into (op >> 4) + 1
//                    calls at u16 offsets; op & 0x08: a gap after the last piece
//            4 / 5   send / recv of which nothing was copied: u32 bytes moved
//            6       close (the rest of the input is ignored)
//            7       clock: the next calls are dated u32 ns later (or earlier,
//                    with op & 0x08: the ring buffer is per CPU, so dates can go back)
// At the end of the input the connection is closed.
//
// Checked after every call: stats only grow; raw() never reverts; the sink
// is called once per counted exchange; delivered bodies keep their bounds;
// bufferedBytes() stays under the documented cap and linear in the input.
// Every exchange also goes through recognize(), and every head through the
// mute predicates, as ConnTracker does.
#include <cstring>

#include "agent/capture/docker_api.h"
#include "agent/capture/http_stream.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {
namespace {

// Queued requests are capped at 8 MiB (http_stream.cpp kMaxPendingBytes); on
// top of that each side holds at most one head (64 KiB), one chunk line, a
// request still receiving its body and a response: their parsed headers cost
// more than their bytes, a few MiB at worst.
constexpr size_t kBufferedCap = 16u << 20;
// Linear in what was copied: a parsed header or query parameter costs about
// 64-100 bytes of bookkeeping for as little as 1-3 bytes of input.
constexpr size_t kBufferedBase = 256u << 10;
constexpr size_t kBufferedPerByte = 128;

void checkBody(const std::string& body, const std::string& tail, uint64_t body_bytes) {
  DQ_FUZZ_CHECK(body.size() <= HttpConnection::kBodyHeadBytes);
  DQ_FUZZ_CHECK(tail.size() <= HttpConnection::kBodyTailBytes);
  DQ_FUZZ_CHECK(body.size() <= body_bytes);
  DQ_FUZZ_CHECK(tail.size() <= body_bytes);
}

void checkGrew(const HttpStreamStats& before, const HttpStreamStats& after) {
  DQ_FUZZ_CHECK(after.exchanges >= before.exchanges);
  DQ_FUZZ_CHECK(after.parse_errors >= before.parse_errors);
  DQ_FUZZ_CHECK(after.resyncs >= before.resyncs);
  DQ_FUZZ_CHECK(after.gap_bytes >= before.gap_bytes);
  DQ_FUZZ_CHECK(after.discarded_bytes >= before.discarded_bytes);
  DQ_FUZZ_CHECK(after.orphan_responses >= before.orphan_responses);
}

}  // namespace

int httpStream(const uint8_t* data, size_t size) {
  Reader in(data, size);
  uint64_t delivered = 0;
  HttpConnection conn(
      [&](const HttpExchange& x) {
        ++delivered;
        checkBody(x.request.body, x.request.body_tail, x.request.body_bytes);
        checkBody(x.response.body, x.response.body_tail, x.response.body_bytes);
        if (auto call = recognize(x)) {
          DQ_FUZZ_CHECK(call->status == x.response.status);
          DQ_FUZZ_CHECK(toString(call->action) != nullptr);
        }
      },
      [&](const HttpRequest& req) { (void)uploadBodyIsIrrelevant(req); },
      [&](const HttpRequest& req, const HttpResponse& resp) { (void)downloadBodyIsIrrelevant(req, resp); });

  uint64_t ts = 1'000'000;
  uint64_t copied = 0;
  bool was_raw = false;
  HttpStreamStats last = conn.stats();
  auto check = [&] {
    const HttpStreamStats& now = conn.stats();
    checkGrew(last, now);
    DQ_FUZZ_CHECK(now.exchanges == delivered);
    last = now;
    if (was_raw) DQ_FUZZ_CHECK(conn.raw());
    was_raw = conn.raw();
    const size_t buffered = conn.bufferedBytes();
    DQ_FUZZ_CHECK(buffered <= kBufferedCap);
    DQ_FUZZ_CHECK(buffered <= kBufferedBase + kBufferedPerByte * copied);
  };
  auto call = [&](bool tx, std::string_view bytes, uint64_t total) {
    ts += 1000;
    copied += bytes.size();
    if (tx) {
      conn.onSend(bytes, total, ts);
    } else {
      conn.onRecv(bytes, total, ts);
    }
    check();
  };

  while (!in.empty()) {
    const uint8_t op = in.u8();
    switch (op & 7) {
      case 0:
      case 1: {
        std::string_view d = in.str();
        uint64_t total = d.size() + ((op & 0x08) ? in.u32() : 0);
        call((op & 7) == 0, d, total);
        break;
      }
      case 2:
      case 3: {
        std::string_view d = in.str();
        const unsigned pieces = (op >> 4) + 1;
        for (unsigned i = 0; i < pieces; ++i) {
          size_t take = i + 1 == pieces ? d.size() : std::min<size_t>(in.u16(), d.size());
          uint64_t total = take + ((i + 1 == pieces && (op & 0x08)) ? in.u32() : 0);
          call((op & 7) == 2, d.substr(0, take), total);
          d.remove_prefix(take);
        }
        break;
      }
      case 4:
      case 5: call((op & 7) == 4, {}, in.u32()); break;
      case 6:
        conn.onClose(ts + 1000);
        check();
        return 0;
      case 7:
        if (op & 0x08) {
          ts -= in.u32();
        } else {
          ts += in.u32();
        }
        break;
    }
  }
  conn.onClose(ts + 1000);
  check();
  return 0;
}

std::string encodeHttpStream(const std::vector<Chunk>& chunks) {
  Writer w;
  for (const Chunk& c : chunks) {
    if (c.data.empty()) {
      w.u8(c.tx ? 4 : 5).u32(static_cast<uint32_t>(std::min<uint64_t>(c.total, UINT32_MAX)));
      continue;
    }
    for (size_t off = 0; off < c.data.size(); off += 0xffff) {
      std::string_view piece = std::string_view(c.data).substr(off, 0xffff);
      const bool last = off + 0xffff >= c.data.size();
      const uint64_t gap = last && c.total > c.data.size() ? c.total - c.data.size() : 0;
      const bool has_gap = gap > 0 && gap <= UINT32_MAX;
      w.u8(static_cast<uint8_t>((c.tx ? 0 : 1) | (has_gap ? 0x08 : 0))).str(piece);
      if (has_gap) w.u32(static_cast<uint32_t>(gap));
    }
  }
  w.u8(6);
  return w.data();
}

}  // namespace dockquota::fuzz
