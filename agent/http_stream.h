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

struct HttpRequest {
  std::string method;       // "POST"
  std::string target;       // as sent: "/v1.41/containers/create?name=web"
  std::string path;         // decoded path without query and version prefix: "/containers/create"
  std::string api_version;  // "1.41", or "" when the client sent no /vX.YZ prefix
  std::multimap<std::string, std::string> query;  // percent-decoded
  std::vector<HttpHeader> headers;
  std::string body;          // first kBodyHeadBytes of the body
  std::string body_tail;     // last kBodyTailBytes when the body was longer than the head, else ""
  uint64_t body_bytes = 0;   // full body length seen on the wire (captured or not)
  bool body_gap = false;     // some body bytes were not captured (probe prefix limit)
  uint64_t first_ns = 0;     // probe timestamp of the first byte
  uint64_t last_ns = 0;      // probe timestamp of the last byte

  // First header value with this name (case-insensitive), or "".
  std::string header(std::string_view name) const;
};

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
  uint64_t exchanges = 0;       // complete request/response pairs delivered
  uint64_t parse_errors = 0;    // malformed start lines, headers, chunk sizes, oversize heads
  uint64_t resyncs = 0;         // times the parser found its footing again after an error or gap
  uint64_t gap_bytes = 0;       // bytes the probe reported but did not copy
  uint64_t discarded_bytes = 0; // captured bytes thrown away while out of sync
  uint64_t orphan_responses = 0;// responses with no request to pair with
};

class HttpConnection {
 public:
  // Limits. A request or response head longer than this is a parse error.
  static constexpr size_t kMaxHeadBytes = 64 * 1024;
  static constexpr size_t kBodyHeadBytes = 64 * 1024;
  static constexpr size_t kBodyTailBytes = 16 * 1024;
  static constexpr size_t kMaxPendingRequests = 64;  // pipelined requests awaiting replies

  using ExchangeSink = std::function<void(const HttpExchange&)>;
  // Called when a request head is complete (before its body), so the caller
  // can decide to stop copying an upload it does not need.
  using RequestHeadSink = std::function<void(const HttpRequest&)>;
  // Called when a response head with a body to follow is complete, with the
  // request it answers, so the caller can stop copying a download it does not
  // need. Uncopied body bytes are gaps: a Content-Length body stays framed
  // exactly; a chunked one loses sync until the next status line.
  using ResponseHeadSink = std::function<void(const HttpRequest&, const HttpResponse&)>;

  explicit HttpConnection(ExchangeSink on_exchange, RequestHeadSink on_request_head = nullptr,
                          ResponseHeadSink on_response_head = nullptr);

  // Bytes the client wrote. `data` is what the probe copied; `total` is how many
  // bytes the syscall moved (total >= data.size()); the rest is a gap.
  void onSend(std::string_view data, uint64_t total, uint64_t ts_ns);
  // Bytes the client read.
  void onRecv(std::string_view data, uint64_t total, uint64_t ts_ns);
  // The connection closed: a response delimited by close completes here.
  void onClose(uint64_t ts_ns);

  // True once the connection switched to a raw stream (upgrade/hijack): no more
  // HTTP on it, and the probe may stop copying both directions.
  bool raw() const;
  const HttpStreamStats& stats() const;
  // Bytes held in buffers and queued requests, bounded whatever the input
  // (queued requests are capped at 8 MiB). For tests and per-connection accounting.
  size_t bufferedBytes() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace dockquota
