// SPDX-License-Identifier: Apache-2.0
// fuzz-recognizer: recognize() and the mute predicates (agent/capture/docker_api.h) on
// exchanges built field by field from the input, bodies included, so JSON
// bodies, progress streams, forms and queries all see hostile bytes.
//
// Input (every string is a u16 length + bytes; "pick" is a byte: below the
// table's size it takes that entry, else a string follows):
//   request:  method (pick), path (pick; "{}" in an entry is replaced by a
//             string), api_version, target, query (u8 count % 8 of key (pick),
//             value), headers (u8 count % 8 of name (pick), value), body,
//             body_tail (<= 16 KiB), u8 flags (1: body_gap, 2: u32 extra
//             body bytes follow), first_ns, last_ns (u64)
//   response: u16 status, reason, headers, body, body_tail, flags as above,
//             u8 upgraded, first_ns, last_ns
//
// Checked: a recognised call carries the exchange's status, method and path,
// only a 2xx can succeed, ids and refs hold no duplicates or empty strings.
#include <string>
#include <string_view>

#include "agent/capture/docker_api.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {
namespace {

constexpr std::string_view kMethods[] = {"GET", "POST", "DELETE", "PUT", "HEAD"};
constexpr std::string_view kPaths[] = {
    "/containers/create",
    "/containers/{}",
    "/images/create",
    "/build",
    "/images/load",
    "/commit",
    "/images/{}/tag",
    "/images/{}",
    "/volumes/create",
    "/volumes/{}",
    "/containers/{}/archive",
    "/images/{}/get",
    "/containers/{}/export",
    "/containers/{}/logs",
    "/events",
    "/containers/json",
    "/images/json",
    "/system/df",
    "/_ping",
    "/containers/{}/attach",
};
constexpr std::string_view kQueryKeys[] = {"fromImage", "fromSrc", "tag",     "repo",   "t",         "name",
                                           "force",     "v",       "noprune", "labels", "container", "message"};
constexpr std::string_view kHeaders[] = {"Content-Type", "Content-Length",    "Transfer-Encoding", "Connection",
                                         "Upgrade",      "X-Registry-Config", "Api-Version"};

template <size_t N>
std::string pick(Reader& in, const std::string_view (&table)[N]) {
  const uint8_t b = in.u8();
  if (b < N) return std::string(table[b]);
  return std::string(in.str());
}

std::string pathFrom(Reader& in) {
  std::string p = pick(in, kPaths);
  if (auto at = p.find("{}"); at != std::string::npos) p.replace(at, 2, in.str());
  return p;
}

template <size_t N>
std::vector<HttpHeader> headersFrom(Reader& in, const std::string_view (&names)[N]) {
  std::vector<HttpHeader> out;
  for (unsigned n = in.u8() % 8; n > 0; --n) {
    HttpHeader h;
    h.name = pick(in, names);
    h.value = std::string(in.str());
    out.push_back(std::move(h));
  }
  return out;
}

// body, body_tail, flags [, extra]: body_bytes as the stream parser counts them.
void bodyFrom(Reader& in, std::string& body, std::string& tail, uint64_t& body_bytes, bool& gap) {
  body = std::string(in.str(HttpConnection::kBodyHeadBytes));
  tail = std::string(in.str(HttpConnection::kBodyTailBytes));
  const uint8_t flags = in.u8();
  gap = flags & 1;
  body_bytes = body.size() + tail.size() + ((flags & 2) ? in.u32() : 0);
}

void checkList(const std::vector<std::string>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    DQ_FUZZ_CHECK(!v[i].empty());
    for (size_t j = i + 1; j < v.size(); ++j) DQ_FUZZ_CHECK(v[i] != v[j]);
  }
}

}  // namespace

int recognizer(const uint8_t* data, size_t size) {
  Reader in(data, size);
  HttpExchange x;
  HttpRequest& rq = x.request;
  rq.method = pick(in, kMethods);
  rq.path = pathFrom(in);
  rq.api_version = std::string(in.str());
  rq.target = std::string(in.str());
  for (unsigned n = in.u8() % 8; n > 0; --n) {
    std::string key = pick(in, kQueryKeys);
    rq.query.emplace(std::move(key), std::string(in.str()));
  }
  rq.headers = headersFrom(in, kHeaders);
  bodyFrom(in, rq.body, rq.body_tail, rq.body_bytes, rq.body_gap);
  rq.first_ns = in.u64();
  rq.last_ns = in.u64();

  HttpResponse& rs = x.response;
  rs.status = in.u16();
  rs.reason = std::string(in.str());
  rs.headers = headersFrom(in, kHeaders);
  bodyFrom(in, rs.body, rs.body_tail, rs.body_bytes, rs.body_gap);
  rs.upgraded = in.u8() & 1;
  rs.first_ns = in.u64();
  rs.last_ns = in.u64();

  (void)uploadBodyIsIrrelevant(rq);
  (void)downloadBodyIsIrrelevant(rq, rs);
  if (auto call = recognize(x)) {
    DQ_FUZZ_CHECK(call->status == rs.status);
    DQ_FUZZ_CHECK(call->method == rq.method);
    DQ_FUZZ_CHECK(call->path == rq.path);
    if (call->succeeded) DQ_FUZZ_CHECK(rs.status >= 200 && rs.status < 300);
    DQ_FUZZ_CHECK(toString(call->action) != nullptr);
    checkList(call->ids);
    checkList(call->refs);
  }
  return 0;
}

namespace {

// A value the reader's pick() gives back: the table entry's index, else 0xff and the string.
template <size_t N>
void putPick(Writer& w, std::string_view v, const std::string_view (&table)[N]) {
  for (size_t i = 0; i < N; ++i) {
    if (table[i] == v && table[i].find("{}") == std::string_view::npos) {
      w.u8(static_cast<uint8_t>(i));
      return;
    }
  }
  w.u8(0xff).str(v);
}

template <size_t N>
void putHeaders(Writer& w, const std::vector<HttpHeader>& hs, const std::string_view (&names)[N]) {
  const size_t n = std::min<size_t>(hs.size(), 7);
  w.u8(static_cast<uint8_t>(n));
  for (size_t i = 0; i < n; ++i) {
    putPick(w, hs[i].name, names);
    w.str(hs[i].value);
  }
}

void putBody(Writer& w, const std::string& body, const std::string& tail, uint64_t body_bytes, bool gap) {
  std::string_view b = std::string_view(body).substr(0, 0xffff);
  std::string_view t = std::string_view(tail).substr(0, HttpConnection::kBodyTailBytes);
  w.str(b).str(t);
  const uint64_t extra = body_bytes > b.size() + t.size() ? body_bytes - b.size() - t.size() : 0;
  w.u8(static_cast<uint8_t>((gap ? 1 : 0) | (extra ? 2 : 0)));
  if (extra) w.u32(static_cast<uint32_t>(std::min<uint64_t>(extra, UINT32_MAX)));
}

}  // namespace

std::string encodeExchange(const HttpExchange& x) {
  Writer w;
  const HttpRequest& rq = x.request;
  putPick(w, rq.method, kMethods);
  w.u8(0xff).str(rq.path);  // the path as the parser decoded it
  w.str(rq.api_version).str(rq.target);
  const size_t nq = std::min<size_t>(rq.query.size(), 7);
  w.u8(static_cast<uint8_t>(nq));
  size_t i = 0;
  for (auto it = rq.query.begin(); i < nq; ++it, ++i) {
    putPick(w, it->first, kQueryKeys);
    w.str(it->second);
  }
  putHeaders(w, rq.headers, kHeaders);
  putBody(w, rq.body, rq.body_tail, rq.body_bytes, rq.body_gap);
  w.u64(rq.first_ns).u64(rq.last_ns);
  const HttpResponse& rs = x.response;
  w.u16(static_cast<uint16_t>(rs.status)).str(rs.reason);
  putHeaders(w, rs.headers, kHeaders);
  putBody(w, rs.body, rs.body_tail, rs.body_bytes, rs.body_gap);
  w.u8(rs.upgraded ? 1 : 0).u64(rs.first_ns).u64(rs.last_ns);
  return w.data();
}

}  // namespace dockquota::fuzz
