// SPDX-License-Identifier: Apache-2.0
// HTTP/1.1 reassembly for one captured docker.sock connection (see http_stream.h).
//
// Two framing state machines, one per direction, share a FIFO of requests
// awaiting their responses. A response is paired with the oldest request when
// it completes, even if that request's upload is still going (an early error
// reply): pairing must never slip, or a later create would be attributed with
// another call's id.
//
// What we accept follows the server that really parses these bytes, dockerd's
// Go net/http: LF or CRLF line ends, obs-fold header lines, one
// `Transfer-Encoding: chunked` overriding Content-Length, repeated identical
// Content-Length values. Being stricter than dockerd would let a client hide a
// call from us behind something we reject; being more lenient only makes us
// see a call dockerd rejects, and its error status tells the recogniser so.
//
// Losing sync: a gap (bytes the probe did not copy) where framing lives, or
// garbage. A gap is the probe's doing, not a parse error: it only costs a
// resync. Either way the partial message is dropped and we wait for a later
// syscall that starts like a request line (tx) or status line (rx): clients
// write and read each message from its start, so that is where footing is.
//
// Pairing after a loss: dockerd answers requests in order, so a response
// pairs with the oldest request still waiting, and that holds only while we
// have seen every request and every response. A request head cut by a gap
// still leaves a placeholder, so its reply does not go to the next request.
// But bytes the request side lost may have held more requests (a hostile
// client packs a ping padded past the capture limit and a DELETE into one
// write), and a response side that lost bytes with several requests waiting
// may have lost several replies: from then on every request of the
// connection is marked doubtful, and the caller must not trust the pairing
// (ConnTracker bills such a call only when one user wrote the whole
// connection). Only a new connection is certain again.
#include "agent/capture/http_stream.h"

#include <algorithm>
#include <cstring>
#include <deque>

namespace dockquota {
namespace {

// Go's net/http rejects longer chunk-size lines (internal/chunked.go maxLineLength).
constexpr size_t kMaxChunkLineBytes = 4096;
// A method token longer than this is not one dockerd routes; rejecting it early
// keeps garbage from filling kMaxHeadBytes before we notice.
constexpr size_t kMaxMethodBytes = 32;
// Request lines we resynchronise on (the brief's list: what Engine API clients send).
constexpr std::string_view kRequestStarts[] = {"GET /", "POST /", "PUT ", "DELETE ", "HEAD ", "PATCH ", "OPTIONS "};
constexpr std::string_view kStatusStart = "HTTP/1.";
constexpr size_t kMaxPendingBytes = HttpConnection::kMaxPendingBytes;

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

bool istartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// RFC 9110 token characters (method and header names).
bool isTchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!isTchar(c)) return false;
  return true;
}

bool allDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// "HTTP/1.<digits>": the only major version dockerd serves over HTTP/1 framing.
bool isHttp1Version(std::string_view s) {
  return s.size() > kStatusStart.size() && s.substr(0, kStatusStart.size()) == kStatusStart &&
         allDigits(s.substr(kStatusStart.size()));
}

// Decimal, digits only, below 2^63 (Go: strconv.ParseUint(s, 10, 63)).
bool parseContentLength(std::string_view s, uint64_t* out) {
  if (!allDigits(s) || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) v = v * 10 + static_cast<uint64_t>(c - '0');
  if (v > (uint64_t{1} << 63) - 1) return false;
  *out = v;
  return true;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Undoes %XX (and '+' in query components). A malformed escape stays as sent.
std::string percentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%' && i + 2 < s.size()) {
      int hi = hexValue(s[i + 1]), lo = hexValue(s[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(plus_is_space && c == '+' ? ' ' : c);
  }
  return out;
}

const HttpHeader* findHeader(const std::vector<HttpHeader>& headers, std::string_view name) {
  for (const auto& h : headers)
    if (iequals(h.name, name)) return &h;
  return nullptr;
}

// The media type of a Content-Type value, lowercased, without parameters.
std::string mediaType(std::string_view v) {
  v = trim(v.substr(0, v.find(';')));
  std::string out(v);
  for (char& c : out) c = lower(c);
  return out;
}

// Go's net/http request line: METHOD SP request-target SP HTTP/1.x. Without
// `r`, only checks it.
bool parseRequestLine(std::string_view line, HttpRequest* r) {
  size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return false;
  size_t sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return false;
  std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  if (!isToken(method) || target.empty() || !isHttp1Version(line.substr(sp2 + 1))) return false;
  for (char c : target)
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return false;
  if (r) {
    r->method = method;
    r->target = target;
    parseTarget(*r);
  }
  return true;
}

bool parseStatusLine(std::string_view line, HttpResponse& r) {
  size_t sp = line.find(' ');
  if (sp == std::string_view::npos || !isHttp1Version(line.substr(0, sp))) return false;
  std::string_view rest = line.substr(sp + 1);
  std::string_view code = rest.substr(0, 3);
  if (code.size() != 3 || !allDigits(code) || (rest.size() > 3 && rest[3] != ' ')) return false;
  r.status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
  r.reason = rest.size() > 4 ? std::string(trim(rest.substr(4))) : std::string();
  return true;
}

// Header lines, each without its line end. obs-fold lines (leading SP/HT)
// continue the previous value, as Go's textproto does.
bool parseHeaderLine(std::string_view line, std::vector<HttpHeader>& headers) {
  if (line.front() == ' ' || line.front() == '\t') {
    if (headers.empty()) return false;
    std::string_view more = trim(line);
    if (!more.empty()) {
      if (!headers.back().value.empty()) headers.back().value += ' ';
      headers.back().value += more;
    }
    return true;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || !isToken(line.substr(0, colon))) return false;
  headers.push_back(HttpHeader{std::string(line.substr(0, colon)), std::string(trim(line.substr(colon + 1)))});
  return true;
}

// Incomplete first line: can it still become a request line / status line?
bool plausibleStartPrefix(bool is_request, std::string_view first) {
  if (!is_request) {
    size_t n = std::min(first.size(), kStatusStart.size());
    return first.substr(0, n) == kStatusStart.substr(0, n);
  }
  for (size_t i = 0; i < first.size(); ++i) {
    if (first[i] == ' ') return i > 0;
    if (!isTchar(first[i]) || i >= kMaxMethodBytes) return false;
  }
  return true;
}

bool validStartLine(bool is_request, std::string_view line) {
  if (is_request) return parseRequestLine(line, nullptr);
  HttpResponse probe;
  return parseStatusLine(line, probe);
}

bool startsLikeMessage(bool is_request, std::string_view data) {
  if (!is_request) return data.substr(0, kStatusStart.size()) == kStatusStart;
  for (std::string_view p : kRequestStarts)
    if (data.substr(0, p.size()) == p) return true;
  return false;
}

// attach and exec start are hijacked (raw stream after the head) when dockerd
// answers 200 with a docker stream content type instead of 101.
bool isHijackPath(std::string_view path) {
  auto segments = [](std::string_view p, std::string_view* a, std::string_view* b, std::string_view* c) {
    if (p.empty() || p[0] != '/') return false;
    p.remove_prefix(1);
    size_t s1 = p.find('/');
    if (s1 == std::string_view::npos) return false;
    size_t s2 = p.find('/', s1 + 1);
    if (s2 == std::string_view::npos || p.find('/', s2 + 1) != std::string_view::npos) return false;
    *a = p.substr(0, s1), *b = p.substr(s1 + 1, s2 - s1 - 1), *c = p.substr(s2 + 1);
    return !b->empty();
  };
  std::string_view a, b, c;
  if (!segments(path, &a, &b, &c)) return false;
  return (a == "containers" && c == "attach") || (a == "exec" && c == "start");
}

bool isHijackCandidate(const HttpRequest& r) {
  return findHeader(r.headers, "Upgrade") != nullptr || isHijackPath(r.path);
}

// Body bytes: the first kBodyHeadBytes (by wire offset) in `body`, captured bytes
// past that in `tail`, of which the last kBodyTailBytes are kept (head and
// tail never overlap, so body + body_tail is the whole body when it fits and
// had no gap). `tail` may grow to twice its bound between trims, which makes
// trimming amortised O(1) per byte.
void appendBody(std::string& body, std::string& tail, uint64_t& body_bytes, std::string_view d) {
  if (body_bytes < HttpConnection::kBodyHeadBytes) {
    size_t take = static_cast<size_t>(std::min<uint64_t>(d.size(), HttpConnection::kBodyHeadBytes - body_bytes));
    body.append(d.data(), take);
    body_bytes += take;
    d.remove_prefix(take);
  }
  if (d.empty()) return;
  body_bytes += d.size();
  constexpr size_t kTail = HttpConnection::kBodyTailBytes;
  if (d.size() >= kTail) {
    tail.assign(d.substr(d.size() - kTail));
    return;
  }
  if (tail.size() + d.size() > 2 * kTail) tail.erase(0, tail.size() + d.size() - kTail);
  tail.append(d);
}

size_t headersBytes(const std::vector<HttpHeader>& headers) {
  size_t n = headers.capacity() * sizeof(HttpHeader);
  for (const auto& h : headers) n += h.name.capacity() + h.value.capacity();
  return n;
}

size_t requestBytes(const HttpRequest& r) {
  size_t n = sizeof(HttpRequest) + r.method.capacity() + r.target.capacity() + r.path.capacity() +
             r.api_version.capacity() + r.body.capacity() + r.body_tail.capacity() + headersBytes(r.headers);
  for (const auto& [k, v] : r.query) n += 64 + k.capacity() + v.capacity();  // 64: a map node's overhead
  return n;
}

size_t responseBytes(const HttpResponse& r) {
  return sizeof(HttpResponse) + r.reason.capacity() + r.body.capacity() + r.body_tail.capacity() +
         headersBytes(r.headers);
}

void trimTail(std::string& tail) {
  if (tail.size() > HttpConnection::kBodyTailBytes) tail.erase(0, tail.size() - HttpConnection::kBodyTailBytes);
}

}  // namespace

void parseTarget(HttpRequest& r) {
  std::string_view t = r.target;
  // Absolute-form ("POST http://d/v1.41/containers/create"): Go accepts it and
  // routes on the path, so we must too.
  for (std::string_view scheme : {std::string_view("http://"), std::string_view("https://")}) {
    if (istartsWith(t, scheme)) {
      t.remove_prefix(scheme.size());
      size_t slash = t.find_first_of("/?");
      t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
      break;
    }
  }
  size_t q = t.find('?');
  std::string_view raw_path = t.substr(0, q);
  std::string_view raw_query = q == std::string_view::npos ? std::string_view() : t.substr(q + 1);

  // dockerd's router matches the decoded path, so "/v1.41%2Fcontainers/create" is a
  // create too: decode first, then strip the version ("/v{version:[0-9.]+}").
  std::string path = percentDecode(raw_path, false);
  if (path.size() > 2 && path[0] == '/' && path[1] == 'v') {
    size_t end = 2;
    while (end < path.size() && ((path[end] >= '0' && path[end] <= '9') || path[end] == '.')) ++end;
    if (end > 2 && end < path.size() && path[end] == '/') {
      r.api_version = path.substr(2, end - 2);
      path.erase(0, end);
    }
  }
  r.path = std::move(path);

  // Go's url.ParseQuery: '&'-separated; pairs containing ';' are rejected (Go >= 1.17).
  while (!raw_query.empty()) {
    size_t amp = raw_query.find('&');
    std::string_view pair = raw_query.substr(0, amp);
    raw_query = amp == std::string_view::npos ? std::string_view() : raw_query.substr(amp + 1);
    if (pair.empty() || pair.find(';') != std::string_view::npos) continue;
    size_t eq = pair.find('=');
    std::string key = percentDecode(pair.substr(0, eq), true);
    std::string value = eq == std::string_view::npos ? std::string() : percentDecode(pair.substr(eq + 1), true);
    r.query.emplace(std::move(key), std::move(value));
  }
}

std::string HttpRequest::header(std::string_view name) const {
  const HttpHeader* h = findHeader(headers, name);
  return h ? h->value : std::string();
}

std::string HttpResponse::header(std::string_view name) const {
  const HttpHeader* h = findHeader(headers, name);
  return h ? h->value : std::string();
}

struct HttpConnection::Impl {
  enum class State {
    Idle,        // between messages
    Head,        // start line and headers
    Body,        // Content-Length body: `remaining` bytes to go
    ChunkSize,   // chunk-size line (with extensions)
    ChunkData,   // `remaining` bytes of chunk data
    ChunkEnd,    // the CRLF after chunk data
    Trailer,     // trailer lines after the last chunk
    UntilClose,  // response body delimited by the connection's close
    Lost,        // out of sync: waiting for a syscall that starts a message
  };

  // One direction's framing state and the message in progress.
  struct Side {
    explicit Side(bool req) : is_request(req) {}
    const bool is_request;
    State state = State::Idle;
    std::string head;       // head bytes so far (<= kMaxHeadBytes)
    size_t line_start = 0;  // offset in `head` of the line not yet terminated
    std::string line;       // chunk-size or trailer line so far
    size_t trailer_bytes = 0;
    uint64_t remaining = 0;
    bool saw_cr = false;    // ChunkEnd: the CR of the CRLF already seen
    uint64_t first_ns = 0;  // timestamp of the message's first byte
    HttpSender sender;      // requests: who wrote the first byte
    // The message. Requests are shared with the pending queue: a response may
    // be paired while the upload is still arriving.
    std::shared_ptr<HttpRequest> req;
    HttpResponse resp;
  };

  // A request awaiting its response, or a run of requests we could not keep
  // (queue full): their responses must still be consumed in order.
  struct Pending {
    std::shared_ptr<HttpRequest> req;  // null for a placeholder
    uint64_t skipped = 0;              // placeholder: how many requests (lost or not kept)
    bool hijack_candidate = false;
    size_t cost = 0;  // bytes charged to kMaxPendingBytes
  };

  // Counts kept aside while a request that may switch the connection to a raw
  // stream waits for its response: if it does switch, the bytes that followed
  // were stream data, not errors.
  struct Speculative {
    uint64_t parse_errors = 0, resyncs = 0, discarded_bytes = 0;
    bool doubt = false;  // the request side lost bytes: doubt, unless they were stream data
  };

  Impl(ExchangeSink on_exchange, RequestHeadSink on_head, ResponseHeadSink on_response_head,
       RequestDoneSink on_request_done)
      : on_exchange_(std::move(on_exchange)),
        on_request_head_(std::move(on_head)),
        on_response_head_(std::move(on_response_head)),
        on_request_done_(std::move(on_request_done)) {}

  ExchangeSink on_exchange_;
  RequestHeadSink on_request_head_;
  ResponseHeadSink on_response_head_;
  RequestDoneSink on_request_done_;
  HttpStreamStats stats_;
  Side tx_{true}, rx_{false};
  std::deque<Pending> pending_;
  size_t real_pending_ = 0;    // non-placeholder entries in pending_
  size_t pending_bytes_ = 0;   // sum of Pending::cost
  size_t hijack_pending_ = 0;  // hijack candidates in pending_
  Speculative spec_;
  bool raw_ = false;
  bool closed_ = false;
  bool doubt_ = false;                      // pairing is no longer certain (see the top of this file)
  const HttpSender* cur_sender_ = nullptr;  // the sender of the call being fed (tx)

  // Pairing can no longer be trusted from here on: requests already queued
  // keep their place only if the response side is intact (`pending_too`).
  void startDoubt(bool pending_too) {
    if (!doubt_) stats_.doubts++;
    doubt_ = true;
    if (pending_too)
      for (Pending& p : pending_)
        if (p.req) p.req->doubtful = true;
    // A request whose body was arriving keeps its place: its head was whole,
    // and what was lost came after it.
  }

  bool speculating(const Side& s) const { return s.is_request && hijack_pending_ > 0; }
  void countParseError(const Side& s) { (speculating(s) ? spec_.parse_errors : stats_.parse_errors)++; }
  void countResync(const Side& s) { (speculating(s) ? spec_.resyncs : stats_.resyncs)++; }
  void countDiscarded(const Side& s, uint64_t n) {
    (speculating(s) ? spec_.discarded_bytes : stats_.discarded_bytes) += n;
  }
  void commitSpeculation() {
    stats_.parse_errors += spec_.parse_errors;
    stats_.resyncs += spec_.resyncs;
    stats_.discarded_bytes += spec_.discarded_bytes;
    const bool doubt = spec_.doubt;
    spec_ = Speculative{};
    if (doubt) startDoubt(false);
  }

  // --- the pending queue -------------------------------------------------------

  void enqueue(std::shared_ptr<HttpRequest> req, bool candidate) {
    size_t cost = requestBytes(*req);
    if (real_pending_ >= kMaxPendingRequests || pending_bytes_ + cost > kMaxPendingBytes) {
      // A client that pipelines this far without reading is hostile. Keep a
      // count so its responses still pair in order, but not the requests.
      countParseError(tx_);
      enqueuePlaceholder();
      return;
    }
    pending_.push_back(Pending{std::move(req), 0, candidate, cost});
    pending_bytes_ += cost;
    real_pending_++;
    if (candidate) hijack_pending_++;
  }

  // A request dockerd will answer but we do not keep: its reply is consumed
  // in its place and paired with nothing.
  void enqueuePlaceholder() {
    if (!pending_.empty() && !pending_.back().req) {
      pending_.back().skipped++;
    } else {
      pending_.push_back(Pending{nullptr, 1, false, 0});
    }
  }

  // Removes the oldest request (or one request of a placeholder run).
  std::shared_ptr<HttpRequest> popFront() {
    Pending& p = pending_.front();
    if (!p.req) {
      if (--p.skipped == 0) pending_.pop_front();
      return nullptr;
    }
    std::shared_ptr<HttpRequest> req = std::move(p.req);
    bool candidate = p.hijack_candidate;
    pending_bytes_ -= p.cost;
    pending_.pop_front();
    real_pending_--;
    if (candidate && --hijack_pending_ == 0) commitSpeculation();
    return req;
  }

  // The request the response now being parsed answers (null: none or unknown).
  const HttpRequest* frontRequest() const { return pending_.empty() ? nullptr : pending_.front().req.get(); }

  void deliver(const HttpRequest& req, const HttpResponse& resp) {
    HttpExchange x{req, resp};
    trimTail(x.request.body_tail);
    trimTail(x.response.body_tail);
    stats_.exchanges++;
    if (x.request.doubtful) stats_.doubtful_exchanges++;
    if (on_exchange_) on_exchange_(x);
  }

  // --- framing -------------------------------------------------------------------

  void resetMessage(Side& s) {
    s.head.clear();
    s.line.clear();
    s.line_start = 0;
    s.trailer_bytes = 0;
    s.remaining = 0;
    s.saw_cr = false;
    s.first_ns = 0;
    s.sender = HttpSender{};
    s.req.reset();
    s.resp = HttpResponse{};
    // Drop capacity grown by a large head or trailer, so an idle connection is small.
    if (s.head.capacity() > 4096) std::string().swap(s.head);
    if (s.line.capacity() > 4096) std::string().swap(s.line);
  }

  // Out of sync. `malformed`: the bytes were wrong (a parse error), as opposed
  // to missing (a gap).
  void lose(Side& s, bool malformed, uint64_t ts) {
    if (malformed) countParseError(s);
    countDiscarded(s, s.head.size() + s.line.size());  // the partial head or framing line
    if (s.is_request) {
      // A request already queued keeps its place: dockerd got it whole and will
      // answer it. Only its body is incomplete.
      if (s.req) s.req->body_gap = true;
      // A head cut short is a request dockerd may answer: hold its reply's
      // place. What the lost bytes held beyond it is unknown. While an attach
      // or exec waits for its reply the bytes may be the stream's own: doubt
      // only if it does not go raw.
      if (speculating(s)) {
        spec_.doubt = true;
      } else {
        if (s.state == State::Head) {
          stats_.lost_heads++;
          enqueuePlaceholder();
        }
        startDoubt(false);
      }
    } else if (!pending_.empty()) {
      // The response being parsed (or the one that should have started here) is
      // gone; its request must not take the next response. With more requests
      // waiting, the lost bytes may have held their replies too.
      if (pending_.size() > 1 || pending_.front().skipped > 1) startDoubt(true);
      const HttpRequest* front = frontRequest();
      if (!front || front->first_ns <= ts) popFront();
    }
    resetMessage(s);
    s.state = State::Lost;
  }

  // A Content-Length body or a chunk's data ran out (captured or as a gap).
  void endOfBodyOrChunk(Side& s, uint64_t ts) {
    if (s.state == State::Body) {
      finishMessage(s, ts);
    } else {
      s.state = State::ChunkEnd;
    }
  }

  void finishMessage(Side& s, uint64_t ts) {
    if (s.is_request) {
      if (on_request_done_ && s.req) on_request_done_(*s.req);
      resetMessage(s);
      s.state = State::Idle;
      return;
    }
    HttpResponse resp = std::move(s.resp);
    resp.last_ns = ts;
    resetMessage(s);
    s.state = State::Idle;
    pairResponse(resp);
  }

  void pairResponse(const HttpResponse& resp) {
    if (pending_.empty()) {
      stats_.orphan_responses++;
      return;
    }
    const HttpRequest* front = frontRequest();
    if (front && front->first_ns > resp.first_ns) {
      // A response that began before its request was sent cannot be its answer.
      stats_.orphan_responses++;
      return;
    }
    std::shared_ptr<HttpRequest> req = popFront();
    if (!req) {
      stats_.orphan_responses++;  // answer to a request we could not keep
      return;
    }
    deliver(*req, resp);
  }

  void goRaw(const HttpResponse& resp) {
    raw_ = true;  // already true while the sink runs
    const HttpRequest* front = frontRequest();
    if (front && front->first_ns <= resp.first_ns) {
      deliver(*front, resp);
    } else {
      stats_.orphan_responses++;
    }
    // Whatever follows on either side is stream data: none of it is an error.
    spec_ = Speculative{};
    pending_.clear();
    real_pending_ = hijack_pending_ = pending_bytes_ = 0;
    resetMessage(tx_);
    resetMessage(rx_);
    std::string().swap(tx_.head);
    std::string().swap(rx_.head);
  }

  // Called with the complete head in s.head. Returns false if malformed.
  bool headComplete(Side& s, uint64_t ts) {
    std::string_view h = s.head;
    std::vector<HttpHeader> headers;
    std::string_view first;
    bool have_first = false;
    while (!h.empty()) {
      size_t nl = h.find('\n');
      std::string_view line = h.substr(0, nl);
      h.remove_prefix(nl == std::string_view::npos ? h.size() : nl + 1);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (!have_first) {
        first = line;
        have_first = true;
        continue;
      }
      if (line.empty()) break;  // the end of the head
      if (!parseHeaderLine(line, headers)) return false;
    }

    // Framing headers, as Go reads them.
    const HttpHeader* te = nullptr;
    int te_count = 0;
    bool have_cl = false, cl_conflict = false;
    uint64_t cl = 0;
    std::string_view first_cl;
    for (const auto& hd : headers) {
      if (iequals(hd.name, "Transfer-Encoding")) {
        te = &hd;
        te_count++;
      } else if (iequals(hd.name, "Content-Length")) {
        std::string_view v = trim(hd.value);
        if (!have_cl) {
          first_cl = v;
          have_cl = true;
        } else if (v != first_cl) {
          cl_conflict = true;
        }
      }
    }
    if (cl_conflict) return false;
    // An empty Content-Length is no Content-Length to Go.
    if (have_cl && first_cl.empty()) have_cl = false;
    if (have_cl && !parseContentLength(first_cl, &cl)) return false;

    if (s.is_request) {
      auto req = std::make_shared<HttpRequest>();
      if (!parseRequestLine(first, req.get())) return false;
      req->headers = std::move(headers);
      req->first_ns = s.first_ns;
      req->last_ns = ts;
      req->sender = s.sender;
      req->doubtful = doubt_;
      bool chunked = false;
      if (te) {
        // Go serves exactly one Transfer-Encoding, "chunked"; anything else is 501.
        if (te_count != 1 || !iequals(trim(te->value), "chunked")) return false;
        chunked = true;
      }
      s.req = req;
      if (on_request_head_) on_request_head_(*req);
      enqueue(req, isHijackCandidate(*req));
      if (chunked) {
        s.state = State::ChunkSize;
      } else if (have_cl && cl > 0) {
        s.state = State::Body;
        s.remaining = cl;
      } else {
        finishMessage(s, ts);
      }
      return true;
    }

    HttpResponse& resp = s.resp;
    if (!parseStatusLine(first, resp)) return false;
    resp.headers = std::move(headers);
    resp.first_ns = s.first_ns;
    resp.last_ns = ts;
    // Owned here: finishMessage() below may pair the response and free the
    // queue's reference (a HEAD answered 200 with Content-Length: 0, as every
    // docker CLI command's ping is) before the response-head sink reads it.
    const std::shared_ptr<HttpRequest> req_ref = pending_.empty() ? nullptr : pending_.front().req;
    const HttpRequest* req = req_ref.get();
    const bool only_pending = pending_.size() == 1 && req != nullptr;
    if (resp.status == 101) {
      resp.upgraded = true;
      HttpResponse r = std::move(resp);
      goRaw(r);
      return true;
    }
    if (resp.status >= 100 && resp.status < 200) {
      // Interim (100 Continue before an upload): the final response follows.
      resetMessage(s);
      s.state = State::Idle;
      return true;
    }
    if (resp.status == 200 && req && isHijackPath(req->path)) {
      std::string ct = mediaType(resp.header("Content-Type"));
      if (ct == "application/vnd.docker.raw-stream" || ct == "application/vnd.docker.multiplexed-stream") {
        resp.upgraded = true;
        HttpResponse r = std::move(resp);
        goRaw(r);
        return true;
      }
    }
    bool no_body = resp.status == 204 || resp.status == 304 || (req && req->method == "HEAD");
    if (no_body) {
      finishMessage(s, ts);
    } else if (te) {
      // The last coding decides; a response not ending in chunked runs to close.
      std::string_view v = trim(te->value);
      size_t comma = v.rfind(',');
      std::string_view last = trim(comma == std::string_view::npos ? v : v.substr(comma + 1));
      s.state = iequals(last, "chunked") ? State::ChunkSize : State::UntilClose;
    } else if (have_cl) {
      if (cl == 0) {
        finishMessage(s, ts);
      } else {
        s.state = State::Body;
        s.remaining = cl;
      }
    } else {
      s.state = State::UntilClose;
    }
    // Only for the request it will be paired with (pairResponse's rule).
    if (on_response_head_ && only_pending && req->first_ns <= resp.first_ns && s.state != State::Idle)
      on_response_head_(*req, resp);
    return true;
  }

  void appendBodyBytes(Side& s, std::string_view d, uint64_t ts) {
    if (s.is_request) {
      HttpRequest& r = *s.req;
      size_t before = r.body.capacity() + r.body_tail.capacity();
      appendBody(r.body, r.body_tail, r.body_bytes, d);
      r.last_ns = ts;
      // The upload's request is the newest queued one, if still queued.
      size_t after = r.body.capacity() + r.body_tail.capacity();
      if (after > before && !pending_.empty() && pending_.back().req == s.req) {
        pending_.back().cost += after - before;
        pending_bytes_ += after - before;
      }
    } else {
      appendBody(s.resp.body, s.resp.body_tail, s.resp.body_bytes, d);
      s.resp.last_ns = ts;
    }
  }

  void appendBodyGap(Side& s, uint64_t n, uint64_t ts) {
    if (s.is_request) {
      s.req->body_bytes += n;
      s.req->body_gap = true;
      s.req->last_ns = ts;
    } else {
      s.resp.body_bytes += n;
      s.resp.body_gap = true;
      s.resp.last_ns = ts;
    }
  }

  void touch(Side& s, uint64_t ts) {
    if (s.is_request) {
      if (s.req) s.req->last_ns = ts;
    } else {
      s.resp.last_ns = ts;
    }
  }

  // Head bytes: scans only new bytes for line ends (O(n) however the head is split).
  void consumeHead(Side& s, std::string_view& data, uint64_t ts) {
    while (!data.empty()) {
      const void* nl = std::memchr(data.data(), '\n', data.size());
      size_t take = nl ? static_cast<size_t>(static_cast<const char*>(nl) - data.data()) + 1 : data.size();
      if (s.head.size() + take > kMaxHeadBytes) {
        lose(s, true, ts);
        return;
      }
      s.head.append(data.data(), take);
      data.remove_prefix(take);
      if (!nl) {
        if (s.line_start == 0 && !plausibleStartPrefix(s.is_request, s.head)) lose(s, true, ts);
        return;
      }
      std::string_view line(s.head.data() + s.line_start, s.head.size() - 1 - s.line_start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      bool first_line = s.line_start == 0;
      s.line_start = s.head.size();
      if (first_line) {
        // Reject a bad start line now rather than after up to kMaxHeadBytes.
        if (!validStartLine(s.is_request, line)) {
          lose(s, true, ts);
          return;
        }
        continue;
      }
      if (line.empty()) {
        if (headComplete(s, ts)) {
          s.head.clear();  // parsed: no longer ours to count if the body goes wrong
        } else {
          lose(s, true, ts);
        }
        return;
      }
    }
  }

  // A chunk-size or trailer line; returns true once `s.line` holds a whole line.
  bool consumeLine(Side& s, std::string_view& data, size_t limit, uint64_t ts) {
    const void* nl = std::memchr(data.data(), '\n', data.size());
    size_t take = nl ? static_cast<size_t>(static_cast<const char*>(nl) - data.data()) + 1 : data.size();
    if (s.line.size() + take > limit) {
      lose(s, true, ts);
      return false;
    }
    s.line.append(data.data(), take);
    data.remove_prefix(take);
    return nl != nullptr;
  }

  void consumeChunkSize(Side& s, std::string_view& data, uint64_t ts) {
    if (!consumeLine(s, data, kMaxChunkLineBytes, ts)) return;
    std::string_view line = s.line;
    line.remove_suffix(1);                  // '\n'
    line = line.substr(0, line.find(';'));  // chunk extensions
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
    line = trim(line);
    // Go: hex digits only, at most 16 of them (internal/chunked.go parseHexUint).
    if (line.empty() || line.size() > 16) {
      lose(s, true, ts);
      return;
    }
    uint64_t size = 0;
    for (char c : line) {
      int v = hexValue(c);
      if (v < 0) {
        lose(s, true, ts);
        return;
      }
      size = size << 4 | static_cast<uint64_t>(v);
    }
    s.line.clear();
    if (size == 0) {
      s.state = State::Trailer;
      s.trailer_bytes = 0;
    } else {
      s.state = State::ChunkData;
      s.remaining = size;
    }
  }

  void consumeChunkEnd(Side& s, std::string_view& data, uint64_t ts) {
    if (!s.saw_cr && data.front() == '\r') {
      s.saw_cr = true;
      data.remove_prefix(1);
      if (data.empty()) return;
    }
    if (data.front() != '\n') {
      lose(s, true, ts);
      return;
    }
    data.remove_prefix(1);
    s.saw_cr = false;
    s.state = State::ChunkSize;
  }

  // Trailer lines, together bounded like a head.
  void consumeTrailer(Side& s, std::string_view& data, uint64_t ts) {
    const void* nl = std::memchr(data.data(), '\n', data.size());
    size_t take = nl ? static_cast<size_t>(static_cast<const char*>(nl) - data.data()) + 1 : data.size();
    s.trailer_bytes += take;
    if (s.trailer_bytes > kMaxHeadBytes) {
      lose(s, true, ts);
      return;
    }
    s.line.append(data.data(), take);
    data.remove_prefix(take);
    if (!nl) return;
    std::string_view line = s.line;
    line.remove_suffix(1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    s.line.clear();
    if (line.empty()) finishMessage(s, ts);  // trailers are not kept: nothing needs them
  }

  void feed(Side& s, std::string_view data, uint64_t total, uint64_t ts) {
    if (closed_ || raw_) return;
    uint64_t gap = total > data.size() ? total - data.size() : 0;
    stats_.gap_bytes += gap;

    if (s.state == State::Lost) {
      if (!startsLikeMessage(s.is_request, data)) {
        countDiscarded(s, data.size());
        return;
      }
      countResync(s);
      s.state = State::Idle;
    }

    while (!data.empty() && !raw_ && s.state != State::Lost) {
      switch (s.state) {
        case State::Idle: {
          // Go's server skips stray CR/LF between requests (RFC 9112 2.2).
          size_t skip = 0;
          while (skip < data.size() && (data[skip] == '\r' || data[skip] == '\n')) ++skip;
          data.remove_prefix(skip);
          if (data.empty()) break;
          resetMessage(s);
          s.first_ns = ts;
          if (s.is_request && cur_sender_) s.sender = *cur_sender_;
          s.state = State::Head;
          consumeHead(s, data, ts);
          break;
        }
        case State::Head: consumeHead(s, data, ts); break;
        case State::Body:
        case State::ChunkData: {
          size_t n = static_cast<size_t>(std::min<uint64_t>(s.remaining, data.size()));
          appendBodyBytes(s, data.substr(0, n), ts);
          data.remove_prefix(n);
          s.remaining -= n;
          if (s.remaining == 0) endOfBodyOrChunk(s, ts);
          break;
        }
        case State::ChunkSize:
          touch(s, ts);
          consumeChunkSize(s, data, ts);
          break;
        case State::ChunkEnd:
          touch(s, ts);
          consumeChunkEnd(s, data, ts);
          break;
        case State::Trailer:
          touch(s, ts);
          consumeTrailer(s, data, ts);
          break;
        case State::UntilClose:
          appendBodyBytes(s, data, ts);
          data = {};
          break;
        case State::Lost: break;
      }
    }
    if (raw_) return;
    if (s.state == State::Lost && !data.empty()) countDiscarded(s, data.size());

    while (gap > 0 && !raw_) {
      switch (s.state) {
        case State::Body:
        case State::ChunkData: {
          uint64_t n = std::min(gap, s.remaining);
          appendBodyGap(s, n, ts);
          gap -= n;
          s.remaining -= n;
          if (s.remaining == 0) endOfBodyOrChunk(s, ts);
          break;
        }
        case State::ChunkEnd: {
          // Dockerd rejects anything but CRLF here, so a gap over it is a CRLF.
          uint64_t need = s.saw_cr ? 1 : 2;
          uint64_t n = std::min(gap, need);
          gap -= n;
          touch(s, ts);
          if (n == need) {
            s.saw_cr = false;
            s.state = State::ChunkSize;
          } else {
            s.saw_cr = true;
          }
          break;
        }
        case State::UntilClose:
          appendBodyGap(s, gap, ts);
          gap = 0;
          break;
        case State::Lost: gap = 0; break;
        case State::Idle:
        case State::Head:
        case State::ChunkSize:
        case State::Trailer:
          // Framing we cannot see: the rest of the stream cannot be trusted.
          lose(s, false, ts);
          gap = 0;
          break;
      }
    }
  }

  size_t bufferedBytes() const {
    size_t n = sizeof(Impl);
    for (const Side* s : {&tx_, &rx_}) {
      n += s->head.capacity() + s->line.capacity() + responseBytes(s->resp);
      // A request still receiving its body after leaving the queue.
      if (s->req && s->req.use_count() == 1) n += requestBytes(*s->req);
    }
    for (const Pending& p : pending_) n += sizeof(Pending) + (p.req ? requestBytes(*p.req) : 0);
    n += early_bytes_ + early_.capacity() * sizeof(Early);
    return n;
  }

  // The probe reports a call when it returns. A client that writes on one
  // thread and reads on another (the Go CLI) can have its read return, and be
  // reported, before the write that caused the answer is: the writer was
  // preempted between queueing the bytes and its exit hook. dockerd never
  // speaks first, so a response starting with no request pending is early,
  // not an orphan: hold it (bounded) until the request arrives.
  static constexpr size_t kMaxEarlyBytes = 256 * 1024;
  struct Early {
    std::string data;
    uint64_t total;
    uint64_t ts;
  };
  std::vector<Early> early_;
  size_t early_bytes_ = 0;

  void recv(std::string_view data, uint64_t total, uint64_t ts) {
    // Only a plausible response start, at a boundary, with no request pending
    // and the request side in sync: after a lost request (tx out of sync) the
    // response is that request's, and must not be given to the next one.
    const bool at_boundary = rx_.state == State::Idle || rx_.state == State::Lost;
    const bool starts_response = data.substr(0, 7) == "HTTP/1.";
    const bool hold =
        !early_.empty() || (at_boundary && pending_.empty() && starts_response && tx_.state != State::Lost);
    if (!raw_ && hold && early_bytes_ + data.size() <= kMaxEarlyBytes) {
      early_.push_back(Early{std::string(data), total, ts});
      early_bytes_ += data.size();
      return;
    }
    releaseEarly();
    feed(rx_, data, total, ts);
  }

  void send(std::string_view data, uint64_t total, uint64_t ts, const HttpSender* sender) {
    cur_sender_ = sender;
    feed(tx_, data, total, ts);
    cur_sender_ = nullptr;
    if (!early_.empty() && !pending_.empty()) releaseEarly();
  }

  // Whole calls of one side went missing: any number of messages.
  void loss(bool send_side, uint64_t ts) {
    if (closed_ || raw_) return;
    stats_.lost_events++;
    if (send_side) {
      startDoubt(false);
      if (tx_.state != State::Lost) lose(tx_, false, ts);
    } else {
      releaseEarly();
      startDoubt(true);
      if (rx_.state != State::Lost) lose(rx_, false, ts);
    }
  }

  // Replays held response bytes; a request that came late is still their
  // request, so they are dated no earlier than it.
  void releaseEarly() {
    if (early_.empty()) return;
    std::vector<Early> held;
    held.swap(early_);
    early_bytes_ = 0;
    // By value: feeding the first piece can complete the exchange and free
    // that request.
    const HttpRequest* front = frontRequest();
    const uint64_t not_before = front ? front->first_ns : 0;
    for (const Early& e : held) feed(rx_, e.data, e.total, std::max(e.ts, not_before));
  }

  void close(uint64_t ts) {
    releaseEarly();  // still no request: they are counted as orphans now
    if (closed_) return;
    closed_ = true;
    if (raw_) return;
    switch (rx_.state) {
      case State::UntilClose:
      case State::Trailer:  // only trailers missing: the body is whole
      case State::Body:
      case State::ChunkSize:
      case State::ChunkData:
      case State::ChunkEnd: {
        // A body cut by the close is still delivered, marked as incomplete:
        // clients stop reading a stream once they have what they need (the
        // docker CLI closes right after a build's error message, before the
        // last chunk), and the head and what came of the body still say what
        // happened.
        HttpResponse resp = std::move(rx_.resp);
        if (rx_.state != State::UntilClose && rx_.state != State::Trailer) resp.body_gap = true;
        resetMessage(rx_);
        rx_.state = State::Idle;
        pairResponse(resp);
        break;
      }
      case State::Idle:
      case State::Head:
      case State::Lost: break;
    }
    // No response can switch the connection to a raw stream any more.
    commitSpeculation();
    hijack_pending_ = 0;
    pending_.clear();
    real_pending_ = pending_bytes_ = 0;
    resetMessage(tx_);
    resetMessage(rx_);
  }
};

HttpConnection::HttpConnection(ExchangeSink on_exchange, RequestHeadSink on_request_head,
                               ResponseHeadSink on_response_head, RequestDoneSink on_request_done)
    : impl_(std::make_shared<Impl>(std::move(on_exchange), std::move(on_request_head), std::move(on_response_head),
                                   std::move(on_request_done))) {}

void HttpConnection::onSend(std::string_view data, uint64_t total, uint64_t ts_ns, const HttpSender* sender) {
  impl_->send(data, std::max<uint64_t>(total, data.size()), ts_ns, sender);
}

void HttpConnection::onLoss(bool send_side, uint64_t ts_ns) { impl_->loss(send_side, ts_ns); }

void HttpConnection::onRecv(std::string_view data, uint64_t total, uint64_t ts_ns) {
  impl_->recv(data, std::max<uint64_t>(total, data.size()), ts_ns);
}

void HttpConnection::onClose(uint64_t ts_ns) { impl_->close(ts_ns); }

bool HttpConnection::raw() const { return impl_->raw_; }

const HttpStreamStats& HttpConnection::stats() const { return impl_->stats_; }

size_t HttpConnection::bufferedBytes() const { return impl_->bufferedBytes(); }

}  // namespace dockquota
