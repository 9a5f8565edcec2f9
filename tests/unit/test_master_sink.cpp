// SPDX-License-Identifier: Apache-2.0
// MasterSink against a real httplib::Server on loopback standing in for the
// qman master, fed by an in-memory EventSpool.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/delivery/master_sink.h"
#include "tests/unit/master_fakes.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using namespace dockquota::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Received {
  std::string api_key, content_type, path;
  json body;
  std::vector<int64_t> seqs() const {
    std::vector<int64_t> v;
    for (const auto& e : body["events"]) v.push_back(e["detail"]["event_id"].get<int64_t>());
    return v;
  }
};

// The master's /api/internal/slave-events on 127.0.0.1. `answer` picks the
// reply to the i-th request (0-based); `hold` runs before it (may block).
class FakeMaster {
 public:
  using Answer = std::function<std::pair<int, std::string>(size_t i)>;
  explicit FakeMaster(std::string base = "", int port = 0, httplib::Server* server = nullptr)
      : own_(server ? nullptr : std::make_unique<httplib::Server>()), svr_(server ? *server : *own_) {
    svr_.Post(base + "/api/internal/slave-events", [this](const httplib::Request& req, httplib::Response& res) {
      size_t i;
      Answer answer;
      std::function<void(size_t)> hold;
      {
        std::lock_guard<std::mutex> lock(mu_);
        i = got_.size();
        got_.push_back({req.get_header_value("X-API-Key"), req.get_header_value("Content-Type"), req.path,
                        json::parse(req.body, nullptr, false)});
        answer = answer_;
        hold = hold_;
      }
      cv_.notify_all();
      if (hold) hold(i);
      auto [status, body] = answer ? answer(i) : std::make_pair(200, std::string(R"({"msg": "ok"})"));
      res.status = status;
      res.set_content(body, "application/json");
    });
    if (port == 0) {
      port_ = svr_.bind_to_any_port("127.0.0.1");
    } else if (svr_.bind_to_port("127.0.0.1", port)) {
      port_ = port;
    }
    if (port_ <= 0) throw std::runtime_error("FakeMaster: cannot bind");
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    while (!svr_.is_running()) std::this_thread::sleep_for(1ms);  // stop() before this would be lost
  }
  ~FakeMaster() {
    svr_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  std::string url(const std::string& base = "") const { return "http://127.0.0.1:" + std::to_string(port_) + base; }
  void setAnswer(Answer a) {
    std::lock_guard<std::mutex> lock(mu_);
    answer_ = std::move(a);
  }
  void setHold(std::function<void(size_t)> h) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = std::move(h);
  }
  std::vector<Received> got() {
    std::lock_guard<std::mutex> lock(mu_);
    return got_;
  }
  bool waitRequests(size_t n, std::chrono::milliseconds limit = 2000ms) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, limit, [&] { return got_.size() >= n; });
  }

 private:
  std::unique_ptr<httplib::Server> own_;
  httplib::Server& svr_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Received> got_;
  Answer answer_;
  std::function<void(size_t)> hold_;
};

std::unique_ptr<MasterSink> make(FakeSpool& spool, const MasterSink::Options& o) {
  auto s = MasterSink::create(spool, o);
  if (!s) FAIL(s.error().message);
  return std::move(*s);
}

// A port nothing listens on: bound once, then closed. (An httplib::Server
// that never listen()s keeps its socket listening until destroyed... and after.)
int freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

// The seqs of the requests the master answered 2xx, in arrival order.
std::vector<int64_t> acceptedSeqs(const std::vector<Received>& got, const std::function<bool(size_t)>& accepted) {
  std::vector<int64_t> v;
  for (size_t i = 0; i < got.size(); ++i)
    if (accepted(i))
      for (int64_t s : got[i].seqs()) v.push_back(s);
  return v;
}

std::vector<int64_t> iota(int64_t from, int64_t to) {
  std::vector<int64_t> v;
  for (int64_t i = from; i <= to; ++i) v.push_back(i);
  return v;
}

}  // namespace

TEST_CASE("master sink: url parsing", "[master]") {
  auto u = MasterSink::parseUrl("http://qman.example.org");
  REQUIRE(u.ok());
  CHECK(u->scheme == "http");
  CHECK(u->host == "qman.example.org");
  CHECK(u->port == 80);
  CHECK(u->path == "/api/internal/slave-events");

  u = MasterSink::parseUrl("HTTPS://10.0.0.5:8443/qman/");  // trailing slash tolerated
  REQUIRE(u.ok());
  CHECK(u->scheme == "https");
  CHECK(u->port == 8443);
  CHECK(u->path == "/qman/api/internal/slave-events");
  CHECK(MasterSink::parseUrl("https://m/")->port == 443);
  CHECK(MasterSink::parseUrl("https://m/")->path == "/api/internal/slave-events");

  u = MasterSink::parseUrl("http://[fd00::1a]:5000/a/b");
  REQUIRE(u.ok());
  CHECK(u->host == "fd00::1a");
  CHECK(u->port == 5000);
  CHECK(u->path == "/a/b/api/internal/slave-events");

  for (const char* bad : {"", "qman.example.org", "ftp://m", "http://", "http://:80", "http://m:0", "http://m:65536",
                          "http://m:8x", "http://m:", "http://u:p@m", "http://m/x?y=1", "http://m/#f", "http://m /x",
                          "http://fd00::1/", "http://[fd00::1", "http://[fd00::1]x", "http://m\n", "http://m!/"}) {
    INFO(bad);
    auto r = MasterSink::parseUrl(bad);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::StartsWith(std::string("master: bad url \"") + bad + "\""));
  }
}

TEST_CASE("master sink: a run of failures logs its first, each change, and every 10 minutes", "[master]") {
  using V = FailureLogGate::Verdict;
  FailureLogGate g(std::chrono::minutes(10));
  const auto t0 = FailureLogGate::Clock::time_point{} + std::chrono::hours(1);
  CHECK_FALSE(g.succeeded());
  CHECK(g.failed("transport 2", t0) == V::First);
  for (int i = 1; i < 100; ++i)  // retries every 6 s, for 9 min 54 s
    REQUIRE(g.failed("transport 2", t0 + std::chrono::seconds(6 * i)) == V::Quiet);
  CHECK(g.failed("transport 2", t0 + std::chrono::minutes(10)) == V::Repeated);
  CHECK(g.failed("transport 2", t0 + std::chrono::minutes(11)) == V::Quiet);
  CHECK(g.failed("http 500", t0 + std::chrono::minutes(12)) == V::Changed);
  CHECK(g.failed("http 500", t0 + std::chrono::minutes(13)) == V::Quiet);
  CHECK(g.failed("transport 2", t0 + std::chrono::minutes(14)) == V::Changed);
  CHECK(g.failed("transport 2", t0 + std::chrono::minutes(24)) == V::Repeated);
  CHECK(g.failing());
  CHECK(g.attempts() == 106);
  CHECK(g.since() == t0);
  CHECK(g.succeeded());
  CHECK_FALSE(g.failing());
  CHECK(g.failed("transport 2", t0 + std::chrono::minutes(25)) == V::First);  // a new run
  CHECK(g.since() == t0 + std::chrono::minutes(25));
}

TEST_CASE("master sink: bad options are refused at creation, naming what is wrong", "[master]") {
  FakeSpool spool;
  auto o = options("htp://m:1");
  auto s = MasterSink::create(spool, o);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(s.error().message, Catch::Contains("htp://m:1"));

  o = options("http://m");
  o.host_id = "";
  CHECK_THAT(MasterSink::create(spool, o).error().message, Catch::Contains("host_id"));
  o = options("http://m");
  o.secret = "";
  CHECK_THAT(MasterSink::create(spool, o).error().message, Catch::Contains("secret"));
  o.secret = "a\r\nX-Evil: 1";
  CHECK_THAT(MasterSink::create(spool, o).error().message, Catch::Contains("secret"));
  o = options("http://m");
  o.batch_max = 0;
  CHECK_THAT(MasterSink::create(spool, o).error().message, Catch::Contains("batch_max"));
  o = options("https://m");
  o.ca_file = "/nonexistent/ca.pem";
  CHECK_THAT(MasterSink::create(spool, o).error().message, Catch::Contains("/nonexistent/ca.pem"));
  o = options("http://m");
  o.ca_file = "/etc/hostname";
  CHECK_THAT(MasterSink::create(spool, o).error().message, Catch::Contains("not https"));
  CHECK(MasterSink::create(spool, options("https://m:8443/q/")).ok());
}

TEST_CASE("master sink: the envelope, headers and order are the master's (spec §5)", "[master]") {
  FakeMaster master("/qman");
  FakeSpool spool;
  spool.record(event_type::kExceeded, "alice", {{"uid", 2001}, {"block_current", 5}, {"block_hard_limit", 4}});
  spool.record(event_type::kWarning, "alice", {{"uid", 2001}});  // mail only: never sent to the master
  spool.record(event_type::kStopped, "bob", {{"container_id", "0123456789ab"}});
  spool.record(event_type::kRemoved, "carol", {{"container_id", "ba9876543210"}});
  auto sink = make(spool, options(master.url("/qman/")));
  sink->start();
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  sink->stop();

  auto got = master.got();
  REQUIRE(got.size() == 1);
  CHECK(got[0].path == "/qman/api/internal/slave-events");
  CHECK(got[0].api_key == "s3cret");
  CHECK(got[0].content_type == "application/json");
  const json want = {{"host_id", "gpu-01"},
                     {"events",
                      {{{"host_user_name", "alice"},
                        {"event_type", "docker_quota_exceeded"},
                        {"detail", {{"uid", 2001}, {"block_current", 5}, {"block_hard_limit", 4}, {"event_id", 1}}}},
                       {{"host_user_name", "bob"},
                        {"event_type", "docker_container_stopped"},
                        {"detail", {{"container_id", "0123456789ab"}, {"event_id", 3}}}},
                       {{"host_user_name", "carol"},
                        {"event_type", "docker_container_removed"},
                        {"detail", {{"container_id", "ba9876543210"}, {"event_id", 4}}}}}}};
  CHECK(got[0].body == want);
  CHECK(spool.marks(1) == 1);
  CHECK(spool.marks(2) == 0);  // not the master's
  CHECK(spool.marks(3) == 1);

  auto st = sink->stats();
  CHECK(st.events_sent == 3);
  CHECK(st.batches_sent == 1);
  CHECK(st.failures == 0);
  CHECK(st.last_status == 200);
  CHECK(st.pending == 0);
  CHECK(st.last_success_at > 0);
  auto h = sink->health();
  CHECK(h["state"] == "ok");
  CHECK(h["running"] == false);
  CHECK(h["url"] == master.url("/qman/api/internal/slave-events"));
  CHECK(h["oldest_pending_age_seconds"] == 0.0);
  CHECK(h.dump().find("s3cret") == std::string::npos);
}

TEST_CASE("master sink: 500s, then 200: every event arrives once, in order", "[master]") {
  FakeMaster master;
  master.setAnswer([](size_t i) { return std::make_pair(i < 3 ? 500 : 200, std::string(R"({"msg": "x"})")); });
  FakeSpool spool;
  for (int i = 0; i < 20; ++i) spool.record(event_type::kExceeded, "u" + std::to_string(i));
  auto o = options(master.url());
  o.batch_max = 7;
  auto sink = make(spool, o);
  sink->start();
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  sink->stop();

  auto got = master.got();
  REQUIRE(got.size() == 6);                                           // 3 refused + ceil(20 / 7)
  for (size_t i = 0; i < 4; ++i) CHECK(got[i].seqs() == iota(1, 7));  // the same first batch until taken
  CHECK(acceptedSeqs(got, [](size_t i) { return i >= 3; }) == iota(1, 20));
  for (int64_t s = 1; s <= 20; ++s) CHECK(spool.marks(s) == 1);
  auto st = sink->stats();
  CHECK(st.failures == 3);
  CHECK(st.consecutive_failures == 0);
  CHECK(st.events_sent == 20);
  CHECK(st.batches_sent == 3);
  CHECK(st.last_error.empty());
}

TEST_CASE("master sink: a master not listening, then started, gets everything afterwards", "[master]") {
  const int port = freePort();
  REQUIRE(port > 0);
  FakeSpool spool;
  for (int i = 0; i < 5; ++i) spool.record(event_type::kStopped, "alice");
  auto sink = make(spool, options("http://127.0.0.1:" + std::to_string(port)));
  sink->start();
  REQUIRE(eventually([&] { return sink->stats().failures >= 2; }));
  auto st = sink->stats();
  CHECK(st.last_status == 0);
  CHECK_THAT(st.last_error, Catch::Contains("cannot connect to 127.0.0.1:" + std::to_string(port)));
  CHECK(st.pending == 5);
  CHECK(st.oldest_pending_at == 1001.0);
  CHECK(sink->health()["state"] == "failing");
  CHECK(sink->health()["oldest_pending_age_seconds"].get<double>() > 0);

  spool.record(event_type::kStopped, "alice");  // recorded during the outage, after the first ones
  sink->wake();
  FakeMaster master("", port);
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  sink->stop();
  // One batch, or two when a retry had read the spool before the 6th event.
  CHECK(acceptedSeqs(master.got(), [](size_t) { return true; }) == iota(1, 6));
  st = sink->stats();
  CHECK(st.consecutive_failures == 0);
  CHECK(st.last_status == 200);
  CHECK(st.pending == 0);
  CHECK(sink->health()["state"] == "ok");
}

TEST_CASE("master sink: 401 keeps events pending and is retried until the secret is fixed", "[master]") {
  FakeMaster master;
  master.setAnswer([](size_t) { return std::make_pair(401, std::string(R"({"msg": "unauthorized"})")); });
  FakeSpool spool;
  for (int i = 0; i < 5; ++i) spool.record(event_type::kExceeded, "alice");
  auto sink = make(spool, options(master.url()));
  sink->start();
  REQUIRE(eventually([&] { return sink->stats().failures >= 3; }));
  auto st = sink->stats();
  CHECK(st.last_status == 401);
  CHECK(st.pending == 5);
  CHECK(st.events_sent == 0);
  CHECK_THAT(st.last_error, Catch::StartsWith("HTTP 401: unauthorized"));
  for (int64_t s = 1; s <= 5; ++s) CHECK(spool.marks(s) == 0);

  master.setAnswer(nullptr);  // an admin fixed it on the master
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  sink->stop();
  for (int64_t s = 1; s <= 5; ++s) CHECK(spool.marks(s) == 1);
  CHECK(sink->stats().last_status == 200);
}

TEST_CASE("master sink: 250 events with batch_max 100 go as 3 POSTs in order", "[master]") {
  FakeMaster master;
  FakeSpool spool;
  for (int i = 0; i < 250; ++i) spool.record(event_type::kExceeded, "u" + std::to_string(i % 7));
  auto sink = make(spool, options(master.url()));
  sink->start();
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  sink->stop();
  auto got = master.got();
  REQUIRE(got.size() == 3);
  CHECK(got[0].seqs() == iota(1, 100));
  CHECK(got[1].seqs() == iota(101, 200));
  CHECK(got[2].seqs() == iota(201, 250));
  CHECK(sink->stats().batches_sent == 3);
  CHECK(sink->stats().events_sent == 250);
}

TEST_CASE("master sink: events recorded while a request is in flight go in a later batch", "[master]") {
  // Declared before the master: its destructor joins the server thread that may
  // still be in the hold below, which uses these (ASan: stack-use-after-scope).
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  FakeMaster master;
  master.setHold([&](size_t i) {
    if (i != 0) return;
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, 2s, [&] { return release; });
  });
  FakeSpool spool;
  spool.record(event_type::kExceeded, "alice");
  spool.record(event_type::kExceeded, "bob");
  auto sink = make(spool, options(master.url()));
  sink->start();
  REQUIRE(master.waitRequests(1));
  spool.record(event_type::kStopped, "alice");
  sink->wake();
  std::this_thread::sleep_for(50ms);
  CHECK(master.got().size() == 1);  // one batch in flight at a time
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  sink->stop();
  auto got = master.got();
  REQUIRE(got.size() == 2);
  CHECK(got[0].seqs() == iota(1, 2));
  CHECK(got[1].seqs() == iota(3, 3));
}

TEST_CASE("master sink: an idle sink sends at once on wake()", "[master]") {
  FakeMaster master;
  FakeSpool spool;
  auto sink = make(spool, options(master.url()));
  sink->start();
  std::this_thread::sleep_for(20ms);  // idle: nothing pending
  CHECK(master.got().empty());
  spool.record(event_type::kExceeded, "alice");
  const auto t0 = std::chrono::steady_clock::now();
  sink->wake();
  REQUIRE(master.waitRequests(1));
  CHECK(std::chrono::steady_clock::now() - t0 < 500ms);
  sink->stop();
}

TEST_CASE("master sink: stop() during a backoff sleep returns at once", "[master]") {
  FakeSpool spool;
  spool.record(event_type::kExceeded, "alice");
  auto o = options("http://127.0.0.1:" + std::to_string(freePort()));
  o.backoff_base = 30s;
  o.backoff_cap = 30s;
  auto sink = make(spool, o);
  sink->start();
  REQUIRE(eventually([&] { return sink->stats().failures >= 1; }));
  std::this_thread::sleep_for(10ms);
  const auto t0 = std::chrono::steady_clock::now();
  sink->stop();
  CHECK(std::chrono::steady_clock::now() - t0 < 300ms);
  CHECK(sink->health()["running"] == false);
  CHECK(spool.marks(1) == 0);
}

TEST_CASE("master sink: stop() during a request that gets no reply returns promptly, events kept", "[master]") {
  // Declared before the master: its destructor joins the server thread that may
  // still be in the hold below, which uses these (ASan: stack-use-after-scope).
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  FakeMaster master;
  master.setHold([&](size_t) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, 5s, [&] { return release; });
  });
  FakeSpool spool;
  spool.record(event_type::kExceeded, "alice");
  auto o = options(master.url());
  o.timeout = 30s;
  auto sink = make(spool, o);
  sink->start();
  REQUIRE(master.waitRequests(1));
  const auto t0 = std::chrono::steady_clock::now();
  sink->stop();
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < MasterSink::kStopGrace + 500ms);
  CHECK(took >= MasterSink::kStopGrace - 50ms);  // the grace for a reply on its way was given
  CHECK(spool.marks(1) == 0);
  CHECK(sink->stats().failures == 0);  // cut by stop(), not a failure
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
}

TEST_CASE("master sink: a reply that comes within the stop grace is taken", "[master]") {
  FakeMaster master;
  master.setHold([](size_t) { std::this_thread::sleep_for(200ms); });
  FakeSpool spool;
  spool.record(event_type::kExceeded, "alice");
  auto sink = make(spool, options(master.url()));
  sink->start();
  REQUIRE(master.waitRequests(1));
  sink->stop();
  CHECK(spool.marks(1) == 1);
  CHECK(sink->stats().events_sent == 1);
}

TEST_CASE("master sink: when marking fails, the batch is marked again, not sent again", "[master]") {
  FakeMaster master;
  FakeSpool spool;
  spool.failDelivered(2);
  for (int i = 0; i < 3; ++i) spool.record(event_type::kExceeded, "alice");
  auto sink = make(spool, options(master.url()));
  sink->start();
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  sink->stop();
  REQUIRE(master.got().size() == 1);
  for (int64_t s = 1; s <= 3; ++s) CHECK(spool.marks(s) == 1);
}

TEST_CASE("master sink: https is verified, against ca_file or the system CAs", "[master]") {
  TempDir dir;
  auto makeCert = [&](const std::string& name, const std::string& ip) {
    const std::string cmd =
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=" + ip +
        " -addext subjectAltName=IP:" + ip + " -keyout " + dir.file(name + ".key") + " -out " +
        dir.file(name + ".pem") + " >/dev/null 2>&1";
    REQUIRE(std::system(cmd.c_str()) == 0);
  };
  makeCert("good", "127.0.0.1");
  makeCert("other", "127.0.0.2");  // a valid certificate, for another host

  auto run = [&](const std::string& cert, const std::string& ca_file, bool expect_delivery) {
    httplib::SSLServer svr(dir.file(cert + ".pem").c_str(), dir.file(cert + ".key").c_str());
    REQUIRE(svr.is_valid());
    FakeMaster master("", 0, &svr);
    FakeSpool spool;
    spool.record(event_type::kExceeded, "alice");
    auto o = options("https://127.0.0.1:" + std::to_string(master.port()));
    o.ca_file = ca_file;
    auto sink = make(spool, o);
    sink->start();
    if (expect_delivery) {
      REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
      CHECK(master.got().size() == 1);
    } else {
      REQUIRE(eventually([&] { return sink->stats().failures >= 1; }));
      CHECK(master.got().empty());
      CHECK(spool.marks(1) == 0);
    }
    sink->stop();
    return sink->stats().last_error;
  };

  SECTION("trusted through ca_file") { CHECK(run("good", dir.file("good.pem"), true).empty()); }
  SECTION("self-signed, system CAs: refused") {
    CHECK_THAT(run("good", "", false), Catch::Contains("not trusted") && Catch::Contains("system CAs"));
  }
  SECTION("trusted, but for another host: refused") {
    CHECK_THAT(run("other", dir.file("other.pem"), false), Catch::Contains("is not for host 127.0.0.1"));
  }
}
