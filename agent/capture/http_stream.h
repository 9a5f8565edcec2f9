// SPDX-License-Identifier: Apache-2.0
// HTTP/1.1 stream reassembly for one captured docker.sock connection.
//
// The BPF probe hands us, per syscall, a bounded prefix of the bytes a client
// sent (tx) or received (rx), plus how many bytes the call really moved. This
// class rebuilds the request/response exchanges from that: requests split over
// many writes, keep-alive and pipelining, Content-Length and chunked bodies,
// `/vX.YZ/` prefixes, and gaps (bytes the probe did not copy). Input is hostile
// (any docker-group user can write anything to the socket): every buffer is
// bounded, garbage is counted and skipped, and the parser resynchronises at the
// next call boundary that looks like a request line or status line.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dockquota {

struct HttpHeader {
  std::string name;   // as sent
  std::string value;  // trimmed
};

// The process whose write carried a request's first byte, as the probe saw
// it. Each request is billed to its own sender: a connection can be shared
// (threads, an fd inherited by a child) and credentials change (setuid).
struct HttpSender {
  bool known = false;  // false when the caller gave no sender (tests, replays)
  uint32_t tgid = 0;
  uint32_t pid = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t loginuid = UINT32_MAX;  // UINT32_MAX = unset
  std::string comm;
};

struct HttpRequest {
  std::string method;                             // "POST"
  std::string target;                             // as sent: "/v1.41/containers/create?name=web"
  std::string path;                               // decoded path without query and version prefix: "/containers/create"
  std::string api_version;                        // "1.41", or "" when the client sent no /vX.YZ prefix
  std::multimap<std::string, std::string> query;  // percent-decoded
  std::vector<HttpHeader> headers;
  std::string body;         // first kBodyHeadBytes of the body
  std::string body_tail;    // last kBodyTailBytes when the body was longer than the head, else ""
  uint64_t body_bytes = 0;  // full body length seen on the wire (captured or not)
  bool body_gap = false;    // some body bytes were not captured (probe prefix limit)
  uint64_t first_ns = 0;    // probe timestamp of the first byte
  uint64_t last_ns = 0;     // probe timestamp of the last byte
  HttpSender sender;        // who wrote its first byte
  // Sent after the request stream lost bytes it could not frame (a gap over a
  // head, garbage, events the ring dropped): dockerd may have seen requests
  // we did not, so the response paired with this one may be another's.
  bool doubtful = false;

  // First header value with this name (case-insensitive), or "".
  std::string header(std::string_view name) const;
};

// Splits r.target into path (decoded, version prefix removed), api_version
// and query, as dockerd's router reads it (the parser's own; admission judges
// Docker's RequestURI with it, so both sides agree on what a path is).
void parseTarget(HttpRequest& r);

struct HttpResponse {
  int status = 0;
  std::string reason;
  std::vector<HttpHeader> headers;
  std::string body;       // first kBodyHeadBytes of the (de-chunked) body
  std::string body_tail;  // last kBodyTailBytes when longer, else ""
  uint64_t body_bytes = 0;
  bool body_gap = false;
  bool upgraded = false;  // 101, or a hijacked stream (attach/exec): raw bytes follow
  uint64_t first_ns = 0;
  uint64_t last_ns = 0;

  std::string header(std::string_view name) const;
};

struct HttpExchange {
  HttpRequest request;
  HttpResponse response;
};

struct HttpStreamStats {
  uint64_t exchanges = 0;           // complete request/response pairs delivered
  uint64_t parse_errors = 0;        // malformed start lines, headers, chunk sizes, oversize heads
  uint64_t resyncs = 0;             // times the parser found its footing again after an error or gap
  uint64_t gap_bytes = 0;           // bytes the probe reported but did not copy
  uint64_t discarded_bytes = 0;     // captured bytes thrown away while out of sync
  uint64_t orphan_responses = 0;    // responses with no request to pair with
  uint64_t lost_heads = 0;          // request heads cut by a gap or garbage (a placeholder keeps their reply's place)
  uint64_t doubts = 0;              // times pairing stopped being certain (requests dockerd may have seen unseen)
  uint64_t doubtful_exchanges = 0;  // exchanges delivered with request.doubtful set
  uint64_t lost_events = 0;         // probe events lost before a call (ring buffer full), per direction
};

class HttpConnection {
 public:
  // Limits. A request or response head longer than this is a parse error.
  static constexpr size_t kMaxHeadBytes = 64 * 1024;
  static constexpr size_t kBodyHeadBytes = 64 * 1024;
  static constexpr size_t kBodyTailBytes = 16 * 1024;
  static constexpr size_t kMaxPendingRequests = 64;  // pipelined requests awaiting replies
  // Memory the queue of requests awaiting replies may hold. Honest clients
  // have one or two small requests pending; a head full of tiny query
  // parameters expands to ~50x its size in HttpRequest::query.
  static constexpr size_t kMaxPendingBytes = 1 << 20;

  using ExchangeSink = std::function<void(const HttpExchange&)>;
  // Called when a request head is complete (before its body), so the caller
  // can decide to stop copying an upload it does not need.
  using RequestHeadSink = std::function<void(const HttpRequest&)>;
  // Called when a response head with a body to follow is complete, with the
  // request it answers, so the caller can stop copying a download it does not
  // need. Only when no other request waits behind that one: a muted body
  // could hide the next pipelined reply's head. Uncopied body bytes are gaps:
  // a Content-Length body stays framed exactly; a chunked one loses sync until
  // the next status line.
  using ResponseHeadSink = std::function<void(const HttpRequest&, const HttpResponse&)>;
  // Called when a request's body is complete (right after the head when it
  // has none), before its response: the body as far as captured.
  using RequestDoneSink = std::function<void(const HttpRequest&)>;

  explicit HttpConnection(ExchangeSink on_exchange, RequestHeadSink on_request_head = nullptr,
                          ResponseHeadSink on_response_head = nullptr, RequestDoneSink on_request_done = nullptr);

  // Bytes the client wrote. `data` is what the probe copied; `total` is how many
  // bytes the syscall moved (total >= data.size()); the rest is a gap.
  // `sender`, when given, is who made the call (the request starting in it is
  // billed to them).
  void onSend(std::string_view data, uint64_t total, uint64_t ts_ns, const HttpSender* sender = nullptr);
  // Bytes the client read.
  void onRecv(std::string_view data, uint64_t total, uint64_t ts_ns);
  // Bytes of one direction were lost before the next call (the probe's ring
  // buffer was full): how many, and how many messages, is unknown.
  void onLoss(bool send_side, uint64_t ts_ns);
  // The connection closed: a response delimited by close completes here.
  void onClose(uint64_t ts_ns);

  // True once the connection switched to a raw stream (upgrade/hijack): no more
  // HTTP on it, and the probe may stop copying both directions.
  bool raw() const;
  const HttpStreamStats& stats() const;
  // Bytes held in buffers, queued requests and held early replies, bounded
  // whatever the input (queued requests at kMaxPendingBytes, early replies at
  // 256 KiB). The tracker's global memory budget sums these.
  size_t bufferedBytes() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dockquota
