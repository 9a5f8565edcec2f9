// SPDX-License-Identifier: Apache-2.0
// The API's HTTP/1.1 transport: one epoll loop owns every socket, a bounded
// pool of workers runs the handlers. Replaces httplib::Server, whose thread
// per connection let 8 slow-drip clients (a byte now and then) hold all 4
// workers so /healthz timed out.
//
//   loop thread   accept (caps, eviction), non-blocking reads with deadlines,
//                 head/body parsing, 4xx without a handler, writes, TLS
//   workers (N)   run the handler on a complete request, serialise the answer
//
// A worker only ever sees a complete request, so slow clients cost a slot in
// the connection table and a few KiB, never a worker. httplib::Request and
// httplib::Response stay the plain data types the handlers see.
//
// Limits (HttpServerOptions) and why:
//   request_timeout     the whole head and body of one request, from its first
//                       byte (from accept for the first); 408 after it. Caps the
//                       time a slow client holds a slot, however it drips.
//   idle_timeout        keep-alive wait for the next request's first byte.
//   max_head_bytes      16 KiB: our longest legitimate head (Basic auth, a 64-hex
//                       id in the path, a query) is under 1 KiB; 431, or 414
//                       when the request line alone is over it.
//   max_body_bytes      1 MiB: the largest body is a quota batch (~100 B/user).
//   max_buffered_bytes  all connections' request bodies together: a limit per
//                       connection is not one when there are hundreds of them.
//   max_connections(_per_peer)  see victim() in http_server.cpp: a full cap
//                       evicts the oldest incomplete connection, not the newcomer.
//                       On a unix socket the peer is the caller's uid.
//
// `unix_path` set: the listener is that unix socket instead of address:port,
// and every connection's credentials (SO_PEERCRED, taken by the kernel at
// connect()) reach the handler as a PeerCred: who asks is never read from
// the request.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "agent/base/result.h"
#include "api/metrics.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace dockquota {

// Who is at the other end of a unix-socket connection, as the kernel says
// (SO_PEERCRED at connect()). `known` false on TCP.
struct PeerCred {
  bool known = false;
  uint32_t uid = 0;
  uint32_t gid = 0;
  int32_t pid = 0;
};

struct HttpServerOptions {
  std::string address = "127.0.0.1";
  uint16_t port = 0;  // 0 = pick a free port
  // Both set: HTTPS only (PEM; the certificate file may hold the chain).
  std::string tls_cert_file = {};
  std::string tls_key_file = {};
  // A unix socket instead of address:port: made with `unix_mode` (a stale
  // socket file there is replaced; anything else is an error). Its directory
  // must exist.
  std::string unix_path = {};
  uint32_t unix_mode = 0600;
  int threads = 4;
  int max_connections = 256;
  int max_connections_per_peer = 32;
  std::chrono::milliseconds request_timeout{10000};
  std::chrono::milliseconds idle_timeout{5000};
  size_t max_head_bytes = 16 << 10;
  size_t max_body_bytes = 1 << 20;
  size_t max_buffered_bytes = 32 << 20;
  // Requests whose body the handler never reads (Docker's AuthZRes carries
  // every JSON response, of any size): when this says so after the head, the
  // body is read and dropped, whatever its length, and the handler sees none.
  std::function<bool(const httplib::Request& head)> discard_body = {};
  // Tried on the loop thread itself with each complete request: returns true
  // when it answered (`res` filled), without a worker; false hands the
  // request to a worker's handler as usual. For answers that take
  // microseconds and never block (Docker waits for its authorization
  // plugin's answer on every API request, and each hand-over to a worker and
  // back costs a loaded host milliseconds). Default: none.
  std::function<bool(const PeerCred& peer, httplib::Request& req, httplib::Response& res)> try_inline = {};
  // An inherited listening socket (systemd socket activation) instead of
  // binding one: used as is and never unlinked. -1: bind.
  int listen_fd = -1;
};

class HttpServer {
 public:
  // Runs on a worker; `req` is complete (body read, path decoded, params parsed).
  // A status left at -1 is sent as 200.
  using Handler = std::function<void(httplib::Request& req, httplib::Response& res)>;
  // The same with the connection's credentials (unix sockets).
  using PeerHandler = std::function<void(const PeerCred& peer, httplib::Request& req, httplib::Response& res)>;

  // `metrics` must outlive the server.
  HttpServer(HttpServerOptions options, Handler handler, TransportMetrics& metrics);
  HttpServer(HttpServerOptions options, PeerHandler handler, TransportMetrics& metrics);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Loads the TLS files (if set), binds with SO_REUSEADDR (never SO_REUSEPORT:
  // a second agent must fail to bind, not share the port), starts the loop and
  // the workers. Returns the bound port (0 on a unix socket).
  Result<int> start();
  // Closes every connection and joins the threads; a handler still running is
  // waited for, its answer dropped. Idempotent.
  void stop();
  bool tls() const { return !opt_.tls_cert_file.empty(); }
  const HttpServerOptions& options() const { return opt_; }

 private:
  struct Loop;
  HttpServerOptions opt_;
  PeerHandler handler_;
  TransportMetrics& metrics_;
  std::unique_ptr<Loop> loop_;
};

// "Not Found" for 404 ... ("" for codes we never send).
const char* httpReason(int status);

// One complete request head as the loop reads it (request line, header lines,
// the blank line) into `req`: method, target, version, headers, decoded path,
// params. status 0 = accepted; else what the loop answers (400, 431, 505) and
// why. Pure, for the fuzz-http-head harness.
struct HeadVerdict {
  int status = 0;
  std::string msg;
};
HeadVerdict parseRequestHead(std::string_view head, httplib::Request& req);
constexpr size_t kMaxRequestHeaders = 100;  // header fields in one head; more: 431

}  // namespace dockquota
