// SPDX-License-Identifier: Apache-2.0
// The API's transport (api/http_server.h) over real loopback sockets:
// deadlines, caps, eviction, oversized heads and bodies, keep-alive and
// pipelining, HEAD, HTTP/1.0, TLS, stop(). Deadlines are short (hundreds of
// ms) so the suite stays fast; each check says what it proves.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/base/log.h"
#include "agent/store/store.h"
#include "api/http_api.h"
#include "api/http_server.h"
#include "api/metrics.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// A raw TCP client: what a slow or hostile client sends, byte for byte.
struct Raw {
  int fd = -1;
  explicit Raw(int port) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~Raw() {
    if (fd >= 0) close(fd);
  }
  Raw(const Raw&) = delete;
  bool send(const std::string& s) {
    return ::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size());
  }
  // Waits up to `ms` for bytes; appends them to `buf`. 0 = EOF/reset, -1 = timeout.
  int recvSome(std::string& buf, int ms) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, ms) <= 0) return -1;
    char tmp[65536];
    ssize_t n = recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return 0;
    buf.append(tmp, static_cast<size_t>(n));
    return 1;
  }
  // Everything until the server closes (or `ms` pass).
  std::string readToEof(int ms = 3000) {
    std::string buf;
    const auto t0 = Clock::now();
    while (msSince(t0) < ms) {
      if (recvSome(buf, 50) == 0) break;
    }
    return buf;
  }
  // True when the server has closed the connection within `ms`.
  bool closedWithin(int ms) {
    std::string ignore;
    const auto t0 = Clock::now();
    while (msSince(t0) < ms) {
      if (recvSome(ignore, 20) == 0) return true;
    }
    return false;
  }
};

struct Reply {
  int status = 0;
  std::string head, body;
  std::string header(const std::string& name) const {
    auto p = head.find("\r\n" + name + ": ");
    if (p == std::string::npos) return "";
    p += name.size() + 4;
    return head.substr(p, head.find("\r\n", p) - p);
  }
};

// Splits the next complete answer off `buf`; false when it is not all there.
bool takeReply(std::string& buf, Reply& r, bool head_request = false) {
  auto e = buf.find("\r\n\r\n");
  if (e == std::string::npos) return false;
  r.head = buf.substr(0, e + 2);
  r.status = std::atoi(r.head.c_str() + 9);
  size_t len = head_request ? 0 : std::stoul("0" + r.header("Content-Length"));
  if (buf.size() < e + 4 + len) return false;
  r.body = buf.substr(e + 4, len);
  buf.erase(0, e + 4 + len);
  return true;
}

Reply readReply(Raw& c, std::string& buf, int ms = 3000, bool head_request = false) {
  Reply r;
  const auto t0 = Clock::now();
  while (!takeReply(buf, r, head_request)) {
    if (msSince(t0) > ms || c.recvSome(buf, 50) == 0) {
      if (!takeReply(buf, r, head_request)) return Reply{};
      break;
    }
  }
  return r;
}

// The handler the tests serve: echoes what the transport parsed.
//   /block  waits until release() (a handler that holds a worker)
//   /big    a 4 MiB answer (partial writes, TLS WANT_WRITE)
struct Echo {
  std::mutex mu;
  std::condition_variable cv;
  bool released = false;
  std::atomic<int> blocked{0};
  void release() {
    std::lock_guard<std::mutex> l(mu);
    released = true;
    cv.notify_all();
  }
  HttpServer::Handler handler() {
    return [this](httplib::Request& req, httplib::Response& res) {
      if (req.path == "/block") {
        blocked++;
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return released; });
      }
      if (req.path == "/big") {
        res.body.assign(4 << 20, 'x');
        res.set_header("Content-Type", "text/plain");
        return;
      }
      json j = {{"method", req.method},
                {"path", req.path},
                {"body", req.body.size()},
                {"version", req.version},
                {"q", req.get_param_value("q")},
                {"remote", req.remote_addr},
                {"x", req.get_header_value("X-Test")}};
      res.status = 200;
      res.body = j.dump();
      res.set_header("Content-Type", "application/json");
    };
  }
};

struct Fixture {
  TransportMetrics metrics;
  Echo echo;
  std::unique_ptr<HttpServer> server;
  int port = 0;
  explicit Fixture(HttpServerOptions o = {}) {
    server = std::make_unique<HttpServer>(std::move(o), echo.handler(), metrics);
    auto p = server->start();
    REQUIRE(p.ok());
    port = *p;
  }
  ~Fixture() {
    echo.release();
    server->stop();
  }
};

HttpServerOptions fast() {
  HttpServerOptions o;
  o.request_timeout = 600ms;
  o.idle_timeout = 400ms;
  return o;
}

}  // namespace

TEST_CASE("http server: keep-alive, pipelining, HEAD, HTTP/1.0, Connection: close", "[http][http_server]") {
  Fixture f;
  Raw c(f.port);
  std::string buf;

  // Two requests in one segment: both answered, in order, on one connection.
  REQUIRE(
      c.send("GET /a?q=%C3%A9+x HTTP/1.1\r\nHost: x\r\nX-Test: one\r\n\r\n"
             "GET /b%20c HTTP/1.1\r\nHost: x\r\n\r\n"));
  Reply a = readReply(c, buf), b = readReply(c, buf);
  REQUIRE(a.status == 200);
  auto ja = json::parse(a.body);
  CHECK(ja["path"] == "/a");
  CHECK(ja["q"] == "\xC3\xA9 x");  // query decoded, '+' is a space
  CHECK(ja["x"] == "one");
  CHECK(ja["remote"] == "127.0.0.1");
  CHECK(a.header("Connection") == "keep-alive");
  REQUIRE(b.status == 200);
  CHECK(json::parse(b.body)["path"] == "/b c");  // path decoded

  // A body split over several writes, with bare-LF line ends.
  REQUIRE(c.send("POST /p HTTP/1.1\nContent-Length: 10\n\n01234"));
  std::this_thread::sleep_for(50ms);
  REQUIRE(c.send("56789"));
  Reply p = readReply(c, buf);
  REQUIRE(p.status == 200);
  CHECK(json::parse(p.body)["body"] == 10);

  // HEAD: the GET answer's Content-Length, no body; the connection stays usable,
  // which proves no body bytes were sent.
  REQUIRE(c.send("HEAD /h HTTP/1.1\r\n\r\n"));
  Reply h = readReply(c, buf, 3000, /*head_request=*/true);
  REQUIRE(h.status == 200);
  CHECK(std::stoul(h.header("Content-Length")) > 0);
  REQUIRE(c.send("GET /after-head HTTP/1.1\r\n\r\n"));
  CHECK(json::parse(readReply(c, buf).body)["path"] == "/after-head");

  // Connection: close: answered, then closed.
  REQUIRE(c.send("GET /last HTTP/1.1\r\nConnection: close\r\n\r\n"));
  Reply last = readReply(c, buf);
  CHECK(last.status == 200);
  CHECK(last.header("Connection") == "close");
  CHECK(c.closedWithin(1000));

  // HTTP/1.0 closes unless it asks for keep-alive.
  Raw old(f.port);
  REQUIRE(old.send("GET /old HTTP/1.0\r\n\r\n"));
  std::string all = old.readToEof();
  CHECK(all.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  CHECK(all.find("Connection: close") != std::string::npos);
  Raw ka(f.port);
  std::string kbuf;
  REQUIRE(ka.send("GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  CHECK(readReply(ka, kbuf).header("Connection") == "keep-alive");
  REQUIRE(ka.send("GET /2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
  CHECK(readReply(ka, kbuf).status == 200);

  // httplib's client (what tests and the old server spoke) works unchanged.
  httplib::Client cli("127.0.0.1", f.port);
  for (int i = 0; i < 3; i++) {
    auto r = cli.Post("/json", std::string(100000, 'z'), "application/json");
    REQUIRE(r);
    CHECK(json::parse(r->body)["body"] == 100000);
  }
}

TEST_CASE("http server: a head or body that does not arrive in time is cut at the deadline", "[http][http_server]") {
  Fixture f(fast());

  SECTION("a slow drip keeps no connection past the head deadline, however often it sends") {
    // One byte every 50 ms: a per-read timeout (httplib's 10 s) would never fire.
    Raw c(f.port);
    const std::string req = "GET /drip HTTP/1.1\r\nX-Long-Header: " + std::string(200, 'a');
    const auto t0 = Clock::now();
    std::string got;
    for (size_t i = 0; i < req.size() && msSince(t0) < 3000; i++) {
      if (!c.send(req.substr(i, 1))) break;
      if (c.recvSome(got, 50) == 0) break;
    }
    const double took = msSince(t0);
    if (got.empty()) got = c.readToEof(1000);
    CHECK(got.rfind("HTTP/1.1 408", 0) == 0);
    CHECK(took < 1500);  // cut near the 600 ms deadline
    CHECK(f.metrics.get(TransportMetrics::kTimeoutHead) == 1);
  }
  SECTION("a connection that never sends a byte is closed too") {
    Raw c(f.port);
    const auto t0 = Clock::now();
    std::string got = c.readToEof(3000);
    CHECK(msSince(t0) < 1500);
    CHECK(got.rfind("HTTP/1.1 408", 0) == 0);
    CHECK(f.metrics.get(TransportMetrics::kTimeoutHead) == 1);
  }
  SECTION("a body short of its Content-Length") {
    Raw c(f.port);
    REQUIRE(c.send("PUT /x HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part"));
    std::string got = c.readToEof(3000);
    CHECK(got.rfind("HTTP/1.1 408", 0) == 0);
    CHECK(f.metrics.get(TransportMetrics::kTimeoutBody) == 1);
  }
  SECTION("keep-alive idle: closed after the idle timeout, counted apart from attacks") {
    Raw c(f.port);
    std::string buf;
    REQUIRE(c.send("GET / HTTP/1.1\r\n\r\n"));
    REQUIRE(readReply(c, buf).status == 200);
    const auto t0 = Clock::now();
    CHECK(c.closedWithin(2000));
    CHECK(msSince(t0) >= 300);
    CHECK(f.metrics.get(TransportMetrics::kIdleClosed) == 1);
    CHECK(f.metrics.get(TransportMetrics::kTimeoutHead) == 0);
  }
}

TEST_CASE("http server: oversized and malformed requests are refused before any handler", "[http][http_server]") {
  HttpServerOptions o;
  o.max_head_bytes = 1024;
  o.max_body_bytes = 4096;
  Fixture f(o);
  auto one = [&](const std::string& req) {
    Raw c(f.port);
    c.send(req);
    std::string buf = c.readToEof(3000);
    Reply r;
    takeReply(buf, r);
    return r;
  };
  Reply r = one("GET /" + std::string(2000, 'a') + " HTTP/1.1\r\n\r\n");
  CHECK(r.status == 414);
  CHECK(json::parse(r.body)["msg"].get<std::string>().find("too long") != std::string::npos);
  CHECK(one("GET / HTTP/1.1\r\nX: " + std::string(2000, 'a') + "\r\n\r\n").status == 431);
  // 431 also for a head that never ends, without waiting for the deadline.
  CHECK(one("GET / HTTP/1.1\r\nX: " + std::string(2000, 'a')).status == 431);
  // 413 from the declared length alone: the body is never read, nor buffered.
  r = one("PUT / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
  CHECK(r.status == 413);
  CHECK(json::parse(r.body)["msg"] == "request body too large");
  CHECK(one("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").status == 411);
  CHECK(one("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab").status == 400);
  CHECK(one("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").status == 400);
  CHECK(one("GET / HTTP/1.1\r\n folded: x\r\n\r\n").status == 400);
  CHECK(one("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").status == 400);
  CHECK(one("GET /\x01 HTTP/1.1\r\n\r\n").status == 400);
  CHECK(one("GARBAGE\r\n\r\n").status == 400);
  CHECK(one("GET / HTTP/2.0\r\n\r\n").status == 505);
  CHECK(f.metrics.get(TransportMetrics::kRejectUriTooLong) == 1);
  CHECK(f.metrics.get(TransportMetrics::kRejectHeadTooLarge) == 2);
  CHECK(f.metrics.get(TransportMetrics::kRejectBodyTooLarge) == 1);
  CHECK(f.metrics.get(TransportMetrics::kRejectLengthRequired) == 1);
  // Every refusal is JSON {"msg": ...} with Connection: close.
  r = one("GARBAGE\r\n\r\n");
  CHECK(r.header("Content-Type") == "application/json");
  CHECK(r.header("Connection") == "close");
  CHECK(json::parse(r.body).contains("msg"));
  // A body at the cap is fine.
  httplib::Client cli("127.0.0.1", f.port);
  auto ok = cli.Put("/", std::string(4096, 'b'), "text/plain");
  REQUIRE(ok);
  CHECK(ok->status == 200);
}

TEST_CASE("http server: bodies of all connections together stay under the memory budget", "[http][http_server]") {
  HttpServerOptions o = fast();
  o.max_body_bytes = 1000;
  o.max_buffered_bytes = 2500;
  Fixture f(o);
  // Two 1000-byte bodies announced and not sent: 2000 of 2500 reserved.
  Raw a(f.port), b(f.port);
  REQUIRE(a.send("PUT / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n"));
  REQUIRE(b.send("PUT / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n"));
  std::this_thread::sleep_for(100ms);
  Raw c(f.port);
  REQUIRE(c.send("PUT / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n"));
  std::string got = c.readToEof(3000);
  CHECK(got.rfind("HTTP/1.1 503", 0) == 0);
  CHECK(got.find("Retry-After: 1") != std::string::npos);
  CHECK(f.metrics.get(TransportMetrics::kRejectBusy) == 1);
  // A bodiless request still goes through.
  httplib::Client cli("127.0.0.1", f.port);
  auto r = cli.Get("/healthz");
  REQUIRE(r);
  CHECK(r->status == 200);
}

TEST_CASE("http server: a full table evicts the oldest incomplete connection, never a request in hand",
          "[http][http_server]") {
  HttpServerOptions o;
  o.max_connections = 8;
  o.max_connections_per_peer = 4;  // every test client is 127.0.0.1: this cap binds first
  o.threads = 1;
  Fixture f(o);

  // 20 connections sending half a head: only 4 stay open (the per-peer cap), each
  // new one evicting the oldest.
  std::vector<std::unique_ptr<Raw>> drip;
  for (int i = 0; i < 20; i++) {
    drip.push_back(std::make_unique<Raw>(f.port));
    drip.back()->send("GET /slow HTTP/1.1\r\nX: ");
    std::this_thread::sleep_for(5ms);
  }
  std::this_thread::sleep_for(100ms);
  CHECK(f.metrics.open() == 4);
  CHECK(f.metrics.get(TransportMetrics::kEvictedMaxPerPeer) == 16);
  CHECK(drip[0]->closedWithin(500));         // the oldest went first
  CHECK_FALSE(drip[19]->closedWithin(100));  // the newest stays

  // Requests sent at once after connecting get through, every time.
  httplib::Client cli("127.0.0.1", f.port);
  cli.set_keep_alive(false);
  for (int i = 0; i < 20; i++) {
    const auto t0 = Clock::now();
    auto r = cli.Get("/healthz");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(msSince(t0) < 100);
  }

  // Connections whose request a worker holds are never evicted: with the 1
  // worker blocked and 4 requests in hand, a 5th connection is refused.
  drip.clear();
  std::vector<std::unique_ptr<Raw>> busy;
  for (int i = 0; i < 4; i++) {
    busy.push_back(std::make_unique<Raw>(f.port));
    busy.back()->send("GET /block HTTP/1.1\r\n\r\n");
  }
  for (int i = 0; i < 100 && f.echo.blocked == 0; i++) std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(50ms);
  const uint64_t refused = f.metrics.get(TransportMetrics::kRefusedMaxPerPeer);
  Raw extra(f.port);
  CHECK(extra.closedWithin(1000));
  CHECK(f.metrics.get(TransportMetrics::kRefusedMaxPerPeer) == refused + 1);
  f.echo.release();
  for (auto& b : busy) {
    std::string buf;
    CHECK(readReply(*b, buf).status == 200);  // all four answered after all
  }
}

TEST_CASE("http server: 50 slow-drip connections do not delay /healthz", "[http][http_server]") {
  // The reported attack: slow clients held all of httplib's 4 workers and 4 of 5
  // probes timed out at 5 s. Here they cost a table slot each, no worker.
  Fixture f;  // defaults: 4 workers, 256 connections, 32 per peer, 10 s deadline
  std::atomic<bool> stop{false};
  std::thread dripper([&] {
    std::vector<std::unique_ptr<Raw>> conns;
    for (int i = 0; i < 50; i++) {
      conns.push_back(std::make_unique<Raw>(f.port));
      conns.back()->send("GET /remote-api/quotas HTTP/1.1\r\n");
    }
    while (!stop) {
      for (auto& c : conns) c->send("X");
      std::this_thread::sleep_for(100ms);
    }
  });
  std::this_thread::sleep_for(200ms);
  std::vector<double> lat;
  for (int i = 0; i < 200; i++) {
    httplib::Client cli("127.0.0.1", f.port);
    const auto t0 = Clock::now();
    auto r = cli.Get("/healthz");
    lat.push_back(msSince(t0));
    REQUIRE(r);
    CHECK(r->status == 200);
  }
  stop = true;
  dripper.join();
  std::sort(lat.begin(), lat.end());
  const double p99 = lat[lat.size() * 99 / 100];
  INFO("p99 " << p99 << " ms");
  CHECK(p99 < 100);
  // 50 drippers from 127.0.0.1 over a per-peer cap of 32: the oldest were evicted.
  CHECK(f.metrics.get(TransportMetrics::kEvictedMaxPerPeer) >= 18);
}

TEST_CASE("http server: TLS with keep-alive, large bodies both ways, refused plain text", "[http][http_server]") {
  TempDir dir;
  const std::string cert = dir.path + "/cert.pem", key = dir.path + "/key.pem";
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout " + key +
                          " -out " + cert + " >/dev/null 2>&1";
  REQUIRE(std::system(cmd.c_str()) == 0);
  HttpServerOptions o = fast();
  o.request_timeout = 1000ms;
  o.tls_cert_file = cert;
  o.tls_key_file = key;
  Fixture f(o);
  CHECK(f.server->tls());

  httplib::SSLClient s("127.0.0.1", f.port);
  s.set_ca_cert_path(cert.c_str());
  for (int i = 0; i < 3; i++) {  // one connection, kept alive
    auto r = s.Get("/tls?q=1");
    REQUIRE(r);
    CHECK(json::parse(r->body)["q"] == "1");
  }
  auto up = s.Post("/up", std::string(900000, 'u'), "application/octet-stream");  // many TLS records
  REQUIRE(up);
  CHECK(json::parse(up->body)["body"] == 900000);
  auto big = s.Get("/big");  // 4 MiB down: partial SSL_write, WANT_WRITE
  REQUIRE(big);
  CHECK(big->body.size() == (4u << 20));

  // Plain HTTP to the TLS port: no answer, a counted handshake failure.
  Raw plain(f.port);
  plain.send("GET / HTTP/1.1\r\n\r\n");
  std::string got = plain.readToEof(2000);
  CHECK(got.find("HTTP/1.1 200") == std::string::npos);
  CHECK(f.metrics.get(TransportMetrics::kTlsHandshakeFailed) == 1);
  // A TCP connection that never starts the handshake is cut at the deadline.
  Raw silent(f.port);
  const auto t0 = Clock::now();
  CHECK(silent.closedWithin(3000));
  CHECK(msSince(t0) < 2500);

  // Bad files fail at start(), naming them.
  HttpServerOptions bad = o;
  bad.tls_cert_file = "/nonexistent.pem";
  TransportMetrics m;
  HttpServer b(
      bad, [](httplib::Request&, httplib::Response&) {}, m);
  auto p = b.start();
  REQUIRE_FALSE(p.ok());
  CHECK_THAT(p.error().message, Catch::Contains("cannot load TLS certificate /nonexistent.pem"));
}

TEST_CASE("http server: stop() is quick with connections open and a request in hand", "[http][http_server]") {
  auto f = std::make_unique<Fixture>();
  std::vector<std::unique_ptr<Raw>> conns;
  for (int i = 0; i < 30; i++) {
    conns.push_back(std::make_unique<Raw>(f->port));
    conns.back()->send("GET / HTTP/1.1\r\n");
  }
  std::this_thread::sleep_for(50ms);
  const auto t0 = Clock::now();
  f->server->stop();
  CHECK(msSince(t0) < 500);
  for (auto& c : conns) CHECK(c->closedWithin(500));
  f->server->stop();  // idempotent
}

TEST_CASE("http server: counters in Prometheus text and JSON", "[http][http_server]") {
  TransportMetrics m;
  m.add(TransportMetrics::kEvictedMaxPerPeer);
  m.add(TransportMetrics::kTimeoutHead);
  m.add(TransportMetrics::kTimeoutHead);
  m.setOpen(7);
  std::string out;
  m.render(out);
  CHECK(out.find("dockquota_http_connections_open 7\n") != std::string::npos);
  CHECK(out.find("dockquota_http_connections_evicted_total{reason=\"max_connections_per_peer\"} 1\n") !=
        std::string::npos);
  CHECK(out.find("dockquota_http_request_timeouts_total{phase=\"head\"} 2\n") != std::string::npos);
  CHECK(out.find("dockquota_http_connections_refused_total{reason=\"max_connections\"} 0\n") != std::string::npos);
  // One HELP/TYPE per family.
  size_t types = 0;
  for (size_t p = out.find("# TYPE dockquota_http_request_timeouts_total"); p != std::string::npos;
       p = out.find("# TYPE dockquota_http_request_timeouts_total", p + 1))
    types++;
  CHECK(types == 1);
  json j = m.toJson();
  CHECK(j["open"] == 7);
  CHECK(j["evicted"]["max_connections_per_peer"] == 1);
  CHECK(j["timeouts"]["head"] == 2);
}

TEST_CASE("http server: ApiServer on the new transport — HEAD, OPTIONS, JSON errors, /healthz counters",
          "[http][http_server]") {
  TempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "k", .bill_root_to_login_uid = true, .threads = 2},
                **store, [] {
                  return json{{"status", "ok"}};
                });
  auto port = api.start();
  REQUIRE(port.ok());
  Raw c(*port);
  std::string buf;
  c.send("HEAD /healthz HTTP/1.1\r\n\r\n");
  Reply h = readReply(c, buf, 3000, /*head_request=*/true);
  CHECK(h.status == 200);
  CHECK(h.header("Content-Type") == "application/json");
  CHECK(std::stoul(h.header("Content-Length")) > 0);  // the GET answer's size, from dispatch()
  c.send("OPTIONS /healthz HTTP/1.1\r\n\r\n");
  Reply o = readReply(c, buf);
  CHECK(o.status == 200);
  CHECK(o.header("Allow") == "GET, HEAD, OPTIONS");
  c.send("BREW /healthz HTTP/1.1\r\n\r\n");  // any token reaches the router: 405, JSON
  Reply b = readReply(c, buf);
  CHECK(b.status == 405);
  CHECK(json::parse(b.body) == json{{"msg", "method not allowed"}});
  c.send("GET /healthz HTTP/1.1\r\n\r\n");
  Reply g = readReply(c, buf);
  REQUIRE(g.status == 200);
  auto j = json::parse(g.body);
  CHECK(j["status"] == "ok");
  CHECK(j["http"]["open"] == 1);
  CHECK(j["http"]["evicted"].contains("max_connections_per_peer"));
  // The transport's refusals are JSON too, and counted in /healthz.
  Raw big(*port);
  big.send("PUT /api/v1/exemptions/users/1 HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n");
  CHECK(big.readToEof().find("{\"msg\":\"request body too large\"}") != std::string::npos);
  c.send("GET /healthz HTTP/1.1\r\n\r\n");
  CHECK(json::parse(readReply(c, buf).body)["http"]["rejected"]["body_too_large"] == 1);
  api.stop();
}

TEST_CASE("http server: a listener off loopback without TLS is a warning at start", "[http][http_server]") {
  // What the logger writes to stderr while `f` runs (journald-style lines).
  auto stderrOf = [](const std::function<void()>& f) {
    TempDir dir;
    const std::string path = dir.path + "/stderr";
    std::fflush(stderr);
    int saved = ::dup(2);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    ::dup2(fd, 2);
    ::close(fd);
    f();
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  log::setLevel(log::Level::Info);  // another test may have lowered it
  TransportMetrics m;
  auto run = [&](const std::string& address) {
    return stderrOf([&] {
      HttpServerOptions o;
      o.address = address;
      HttpServer s(
          o, [](httplib::Request&, httplib::Response&) {}, m);
      REQUIRE(s.start().ok());
      s.stop();
    });
  };
  const std::string any = run("0.0.0.0");
  CHECK_THAT(any, Catch::Contains("without TLS: the API key and every answer cross the network in clear text"));
  CHECK(run("127.0.0.1").find("without TLS") == std::string::npos);
  CHECK(run("::1").find("without TLS") == std::string::npos);
}
