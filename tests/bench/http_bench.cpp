// SPDX-License-Identifier: Apache-2.0
// http-bench: the API transport under slow-drip clients, old against new in one
// run. Both serve the same routes (/healthz, the qman /remote-api surface on a
// real Store) through the same router (ApiServer::dispatch):
//   httplib  cpp-httplib 0.11's Server as ApiServer configured it before issue
//            12: a pool of 4 threads, a thread per connection, 10 s per read,
//            keep-alive 2 s, no deadline for a head, no connection cap
//   ours     api/http_server.h with the agent's defaults (32 connections
//            per peer: most drippers are evicted, as on a real host)
//   ours/nocap  the same with caps of 1024: every dripper is held open, so the
//            figures show the event loop alone, eviction aside
// For 0, 50 and 200 slow-drip connections (half a head, then a byte every
// 500 ms, reconnecting when closed): latency of /healthz and
// /remote-api/quotas on a new connection per request (as probes and the qman
// master call), p50/p99/max, and keep-alive throughput from 4 client threads.
// A request that takes over 1 s counts as failed; after 5 in a row the rest of
// that row is skipped (the old server then answers nothing at all).
//
// usage: http-bench [--users N] [--containers N] [--requests N] [--seconds S] [--drippers 0,50,200]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/base/log.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "api/http_api.h"
#include "api/qman_api.h"
#include "tests/bench/bench_util.h"

using namespace dockquota;
using bench::must;
using bench::pct;
using bench::SyntheticSource;
using Clock = std::chrono::steady_clock;

namespace {

double ms(Clock::time_point a) { return std::chrono::duration<double, std::milli>(Clock::now() - a).count(); }

int connectTo(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  return fd;
}

// `n` connections that never finish a head: a byte every 500 ms, a new
// connection for every one the server closes.
class Drippers {
 public:
  Drippers(int port, int n) : port_(port) {
    if (n == 0) return;
    for (int i = 0; i < n; i++) fds_.push_back(open());
    thread_ = std::thread([this] {
      while (!stop_) {
        for (int& fd : fds_) {
          char b[4096];
          ssize_t r = recv(fd, b, sizeof b, MSG_DONTWAIT);
          if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK) || r > 0) {  // answered (408) or closed
            close(fd);
            fd = open();
            reconnects_++;
            continue;
          }
          send(fd, "a", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        for (int i = 0; i < 50 && !stop_; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  ~Drippers() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    for (int fd : fds_) close(fd);
  }
  uint64_t reconnects() const { return reconnects_; }

 private:
  int open() {
    int fd = connectTo(port_);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // connected (loopback)
    const char* head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    send(fd, head, strlen(head), MSG_NOSIGNAL | MSG_DONTWAIT);
    return fd;
  }
  int port_;
  std::vector<int> fds_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> reconnects_{0};
};

struct Row {
  std::vector<double> lat;
  int failed = 0;
  bool gave_up = false;
  double rps = 0;
};

// One request per new connection, as a probe does.
Row latency(int port, const std::string& path, bool auth, int requests) {
  Row row;
  int in_a_row = 0;
  for (int i = 0; i < requests; i++) {
    httplib::Client c("127.0.0.1", port);
    c.set_keep_alive(false);
    c.set_connection_timeout(1, 0);
    c.set_read_timeout(1, 0);
    if (auth) c.set_basic_auth("api", "bench");
    const auto t0 = Clock::now();
    auto r = c.Get(path.c_str());
    const double t = ms(t0);
    if (!r || r->status != 200 || t > 1000) {
      row.failed++;
      if (++in_a_row >= 5) {
        row.gave_up = true;
        break;
      }
      continue;
    }
    in_a_row = 0;
    row.lat.push_back(t);
  }
  return row;
}

// Keep-alive clients in a loop for `seconds`: answers per second.
double throughput(int port, const std::string& path, bool auth, double seconds) {
  std::atomic<uint64_t> done{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; t++) {
    ts.emplace_back([&] {
      httplib::Client c("127.0.0.1", port);
      c.set_keep_alive(true);
      c.set_connection_timeout(1, 0);
      c.set_read_timeout(1, 0);
      if (auth) c.set_basic_auth("api", "bench");
      while (!stop) {
        auto r = c.Get(path.c_str());
        if (r && r->status == 200) done++;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  return static_cast<double>(done) / seconds;
}

// The old transport, as ApiServer set up httplib::Server before the transport was replaced, in
// front of the same router.
std::unique_ptr<httplib::Server> oldServer(ApiServer& api, int* port) {
  auto s = std::make_unique<httplib::Server>();
  auto fwd = [&api](const httplib::Request& req, httplib::Response& res) {
    api.dispatch(const_cast<httplib::Request&>(req), res);
  };
  s->Get(".*", fwd);
  s->Put(".*", fwd);
  s->Post(".*", fwd);
  s->Delete(".*", fwd);
  s->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  s->set_keep_alive_timeout(2);
  s->set_payload_max_length(1 << 20);
  s->set_read_timeout(10, 0);
  s->set_write_timeout(10, 0);
  s->new_task_queue = [] { return new httplib::ThreadPool(4); };
  *port = s->bind_to_any_port("127.0.0.1");
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int users = 100, containers = 1000, requests = 300;
  double secs = 2;
  std::vector<int> dripper_counts = {0, 50, 200};
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--users")
      users = std::atoi(next().c_str());
    else if (a == "--containers")
      containers = std::atoi(next().c_str());
    else if (a == "--requests")
      requests = std::atoi(next().c_str());
    else if (a == "--seconds")
      secs = std::atof(next().c_str());
    else if (a == "--drippers") {
      dripper_counts.clear();
      std::stringstream ss(next());
      for (std::string v; std::getline(ss, v, ',');) dripper_counts.push_back(std::atoi(v.c_str()));
    } else {
      fprintf(stderr, "usage: %s [--users N] [--containers N] [--requests N] [--seconds S] [--drippers 0,50,200]\n",
              argv[0]);
      return 2;
    }
  }
  log::setLevel(log::Level::Error);  // the new server logs the drippers (rate-limited); not the point here
  char tmpl[] = "/tmp/dq-hbench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);

  // A store and usage figures like qman-bench's, smaller: the transport is measured, not the route.
  auto opened = Store::open(dir + "/bench.db");
  if (!opened) {
    fprintf(stderr, "%s\n", opened.error().message.c_str());
    return 1;
  }
  Store& store = **opened;
  UsageFigures f;
  f.data_root = "/var/lib/docker";
  f.measured_at = 1;
  for (int i = 0; i < containers; i++) {
    char id[65];
    snprintf(id, sizeof id, "c%063d", i);
    must(store.objects().noteSeen(ObjectKind::Container, id, "c" + std::to_string(i), "sha256:img", std::nullopt,
                                  1000 + i),
         "noteSeen");
    Evidence ev;
    ev.uid = ev.gid = static_cast<uint32_t>(2000 + i % users);
    ev.method = "container_create";
    ev.request_time = ev.time = 1000 + i;
    must(store.objects().attribute(ObjectKind::Container, id, ev, true), "attribute");
    f.addContainer(id, "c" + std::to_string(i), SharedText("sha256:img"), "running", 4096);
  }
  auto book = QuotaBook::load(store);
  QuotaBook::Limits limits;
  std::vector<PasswdUser> passwd;
  for (int i = 0; i < users; i++) {
    limits[static_cast<uint32_t>(2000 + i)] = 10485760;
    passwd.push_back({static_cast<uint32_t>(2000 + i), "user" + std::to_string(i)});
  }
  must((*book)->setLimits(limits), "setLimits");
  UserDirectory dirusers([passwd] { return passwd; });
  UsageAccountant usage(store, std::make_unique<SyntheticSource>(std::move(f)), {});
  if (auto s = usage.refresh(); !s) {
    fprintf(stderr, "%s\n", s.error().message.c_str());
    return 1;
  }
  QmanContext ctx{store, **book, usage, dirusers, nullptr, nullptr, {}};
  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "bench", .bill_root_to_login_uid = true, .threads = 4},
                store, nullptr);
  installQmanRoutes(api, ctx);
  auto new_port = api.start();
  ApiServer nocap({.address = "127.0.0.1",
                   .port = 0,
                   .api_key = "bench",
                   .bill_root_to_login_uid = true,
                   .threads = 4,
                   .max_connections = 1024,
                   .max_connections_per_peer = 1024},
                  store, nullptr);
  installQmanRoutes(nocap, ctx);
  auto nocap_port = nocap.start();
  if (!new_port || !nocap_port) {
    fprintf(stderr, "%s\n", (new_port ? nocap_port : new_port).error().message.c_str());
    return 1;
  }
  int old_port = 0;
  auto old = oldServer(api, &old_port);
  std::thread old_thread([&] { old->listen_after_bind(); });
  while (!old->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  printf(
      "http-bench: %d users, %d containers; %d requests per cell, each on a new connection; throughput: 4 "
      "keep-alive clients for %.0f s; failed = no 200 within 1 s\n",
      users, containers, requests, secs);
  printf("%-11s %8s %5s  %-19s %8s %8s %8s %7s %11s\n", "server", "drippers", "open", "route", "p50 ms", "p99 ms",
         "max ms", "failed", "req/s");
  struct Target {
    const char* name;
    int port;
    ApiServer* api;  // nullptr: httplib (no count of open connections)
  };
  for (int drippers : dripper_counts) {
    for (Target t : {Target{"httplib", old_port, nullptr}, Target{"ours", *new_port, &api},
                     Target{"ours/nocap", *nocap_port, &nocap}}) {
      Drippers d(t.port, drippers);
      std::this_thread::sleep_for(std::chrono::milliseconds(drippers ? 1500 : 0));
      char open[16] = "?";
      if (t.api) snprintf(open, sizeof open, "%llu", (unsigned long long)t.api->requestMetrics().transport().open());
      for (auto [path, auth] : {std::pair<const char*, bool>{"/healthz", false}, {"/remote-api/quotas", true}}) {
        Row row = latency(t.port, path, auth, requests);
        row.rps = row.gave_up ? 0 : throughput(t.port, path, auth, secs);
        char p50[16] = "-", p99[16] = "-", mx[16] = "-";
        if (!row.lat.empty()) {
          snprintf(p50, sizeof p50, "%.2f", pct(row.lat, 0.50));
          snprintf(p99, sizeof p99, "%.2f", pct(row.lat, 0.99));
          snprintf(mx, sizeof mx, "%.2f", pct(row.lat, 1.0));
        }
        char failed[32];
        snprintf(failed, sizeof failed, "%d%s", row.failed, row.gave_up ? "+" : "");
        printf("%-11s %8d %5s  %-19s %8s %8s %8s %7s %11.0f\n", t.name, drippers, open, path, p50, p99, mx, failed,
               row.rps);
        fflush(stdout);
      }
    }
  }
  const auto& m = api.requestMetrics().transport();
  printf(
      "ours, transport counters: accepted %llu, evicted per peer %llu, in all %llu, refused %llu, head timeouts "
      "%llu\n",
      (unsigned long long)m.get(TransportMetrics::kAccepted),
      (unsigned long long)m.get(TransportMetrics::kEvictedMaxPerPeer),
      (unsigned long long)m.get(TransportMetrics::kEvictedMaxConnections),
      (unsigned long long)(m.get(TransportMetrics::kRefusedMaxPerPeer) +
                           m.get(TransportMetrics::kRefusedMaxConnections)),
      (unsigned long long)m.get(TransportMetrics::kTimeoutHead));
  printf(
      "(\"+\": gave up after 5 failures in a row; the old server's workers are all held by drippers. open: the\n"
      " server's open connections with the drippers in place, before the probes)\n");
  old->stop();
  old_thread.join();
  api.stop();
  nocap.stop();
  std::string rm = "rm -rf " + dir;
  (void)!std::system(rm.c_str());
  return 0;
}
