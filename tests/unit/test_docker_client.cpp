// SPDX-License-Identifier: Apache-2.0
// DockerClient, Backoff and DockerEventStream.
//
// Three layers of tests:
//  - Backoff: pure arithmetic.
//  - A fake dockerd on a unix socket in this process: what a real daemon will
//    not do on demand (odd versions, oversized or broken replies, events split
//    across reads, over-long messages).
//  - [dockerd]: a real, throwaway dockerd started by tests/tools/dockerd.sh.
//    Needs root and dockerd; outside CI they WARN and return, with CI=true a
//    missing prerequisite is a failure, so green always means they ran.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/in_ci.h"
#include "agent/runtime/docker_client.h"

using dockquota::Backoff;
using dockquota::DockerClient;
using dockquota::DockerEventStream;
using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

double msSince(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

std::string makeTempDir(const char* prefix) {
  std::string tmpl = std::string("/tmp/") + prefix + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  REQUIRE(mkdtemp(buf.data()) != nullptr);
  return buf.data();
}

// --- a fake dockerd -----------------------------------------------------------

// Serves one request per connection ("Connection: close"); each connection
// gets its own thread so a handler may hold a stream open.
class FakeDocker {
 public:
  // Gets the request line ("GET /v1.41/events?... HTTP/1.1") and writes the reply to fd.
  using Handler = std::function<void(int fd, const std::string& request_line)>;

  explicit FakeDocker(Handler handler) : handler_(std::move(handler)) {
    dir_ = makeTempDir("dq-fake");
    socket_ = dir_ + "/docker.sock";
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listen_fd_ >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_.c_str());
    REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(::listen(listen_fd_, 16) == 0);
    acceptor_ = std::thread([this] { acceptLoop(); });
  }

  ~FakeDocker() {
    stop_ = true;
    acceptor_.join();
    for (auto& t : conns_) t.join();
    ::close(listen_fd_);
    std::filesystem::remove_all(dir_);
  }

  const std::string& socket() const { return socket_; }
  bool stopping() const { return stop_.load(); }

  std::vector<std::string> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

  static void send(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }

  static std::string reply(int status, const std::string& body, const std::string& extra_headers = "") {
    return "HTTP/1.1 " + std::to_string(status) +
           " X\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\nConnection: close\r\n" + extra_headers + "\r\n" + body;
  }

  static std::string version(const std::string& api, const std::string& min_api = "1.12") {
    return reply(200, json{{"Version", "fake"}, {"ApiVersion", api}, {"MinAPIVersion", min_api}}.dump());
  }

 private:
  void acceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      conns_.emplace_back([this, fd] { serve(fd); });
    }
  }

  void serve(int fd) {
    std::string head;
    char buf[4096];
    while (head.find("\r\n\r\n") == std::string::npos) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 2000) <= 0) break;
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      head.append(buf, static_cast<size_t>(n));
    }
    std::string line = head.substr(0, head.find("\r\n"));
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(line);
    }
    if (!line.empty()) handler_(fd, line);
    ::close(fd);
  }

  Handler handler_;
  std::string dir_, socket_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> conns_;  // only the acceptor touches it until the join
  std::mutex mu_;
  std::vector<std::string> requests_;
};

bool startsWith(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// Records what a DockerEventStream reports, in order.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> seq;  // "connected", "event <Type> <Action> <Actor.ID>", "disconnected"
  std::vector<std::string> reasons;
  std::vector<Clock::time_point> connected_at, disconnected_at;
  int connects = 0, disconnects = 0;
  std::atomic<int> throw_on_events{0};  // the next N on_event calls throw

  DockerEventStream::Callbacks callbacks() {
    DockerEventStream::Callbacks cb;
    cb.on_event = [this](const json& e) {
      {
        std::lock_guard<std::mutex> lock(mu);
        seq.push_back("event " + e.value("Type", "") + " " + e.value("Action", "") + " " +
                      e.value("/Actor/ID"_json_pointer, std::string()));
      }
      cv.notify_all();
      if (throw_on_events.load() > 0) {
        --throw_on_events;
        throw std::runtime_error("test callback failure");
      }
    };
    cb.on_connected = [this] {
      {
        std::lock_guard<std::mutex> lock(mu);
        seq.push_back("connected");
        connected_at.push_back(Clock::now());
        ++connects;
      }
      cv.notify_all();
    };
    cb.on_disconnected = [this](const std::string& reason) {
      {
        std::lock_guard<std::mutex> lock(mu);
        seq.push_back("disconnected");
        reasons.push_back(reason);
        disconnected_at.push_back(Clock::now());
        ++disconnects;
      }
      cv.notify_all();
    };
    return cb;
  }

  template <typename Pred>
  bool waitFor(std::chrono::milliseconds timeout, Pred pred) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, [&] { return pred(); });
  }

  // Index of the first entry equal to `s` at or after `from`, or -1.
  int find(const std::string& s, size_t from = 0) {
    for (size_t i = from; i < seq.size(); ++i)
      if (seq[i] == s) return static_cast<int>(i);
    return -1;
  }
};

// --- a real dockerd -----------------------------------------------------------

std::string dockerdScript() {
  return (std::filesystem::path(DOCKQUOTA_TEST_DATA).parent_path() / "tools" / "dockerd.sh").string();
}

// Runs a command, returns its stdout (trimmed) and exit status.
int run(const std::string& cmd, std::string* out = nullptr) {
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return -1;
  std::string s;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) s.append(buf, n);
  int rc = ::pclose(f);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  if (out) *out = s;
  return rc;
}

bool dockerdAvailable(std::string* why) {
  if (::geteuid() != 0) {
    *why = "needs root to run dockerd";
    return false;
  }
  if (run("command -v dockerd >/dev/null 2>&1") != 0) {
    *why = "no dockerd binary on PATH";
    return false;
  }
  if (run("command -v docker >/dev/null 2>&1") != 0 || access("/bin/busybox", X_OK) != 0) {
    *why = "tests/tools/dockerd.sh needs the docker CLI and /bin/busybox";
    return false;
  }
  if (access(dockerdScript().c_str(), X_OK) != 0) {
    *why = dockerdScript() + " is missing";
    return false;
  }
  return true;
}

#define REQUIRE_DOCKERD()                                                       \
  do {                                                                          \
    std::string why_;                                                           \
    if (!dockerdAvailable(&why_)) {                                             \
      if (inCi()) FAIL("CI=true and a real dockerd is required, but " << why_); \
      WARN("skipping: " << why_ << " (with CI=true this fails)");               \
      return;                                                                   \
    }                                                                           \
  } while (0)

// A throwaway dockerd whose every path is under a fresh /tmp directory.
class ScratchDockerd {
 public:
  ScratchDockerd() : dir_(makeTempDir("dq-client")) {}
  ~ScratchDockerd() {
    stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void start() {
    std::string out;
    int rc = run(dockerdScript() + " start " + dir_ + " 2>&1", &out);
    INFO(out);
    REQUIRE(rc == 0);
    socket_ = out.substr(out.rfind('\n') + 1);
    REQUIRE(socket_ == dir_ + "/docker.sock");
    running_ = true;
  }
  void stop() {
    if (running_) run(dockerdScript() + " stop " + dir_ + " >/dev/null 2>&1");
    running_ = false;
  }
  void importImage(const std::string& name) {
    std::string out;
    int rc = run(dockerdScript() + " image " + dir_ + " " + name + " 2>&1", &out);
    INFO(out);
    REQUIRE(rc == 0);
  }
  const std::string& socket() const { return socket_; }

 private:
  std::string dir_, socket_;
  bool running_ = false;
};

// POST /containers/create + DELETE, through the client under test.
std::string createContainer(DockerClient& c, const std::string& name) {
  json spec = {{"Image", "bb:1"}, {"Cmd", {"true"}}, {"HostConfig", {{"NetworkMode", "none"}}}};
  auto r = c.request("POST", "/containers/create?name=" + name, spec.dump());
  REQUIRE(r.ok());
  INFO(r->body);
  REQUIRE(r->status == 201);
  return json::parse(r->body).at("Id").get<std::string>();
}

void removeContainer(DockerClient& c, const std::string& id) {
  auto r = c.request("DELETE", "/containers/" + id + "?force=1");
  REQUIRE(r.ok());
  REQUIRE(r->status == 204);
}

}  // namespace

// --- Backoff -------------------------------------------------------------------

TEST_CASE("Backoff: full jitter under a doubling ceiling, capped", "[docker_client]") {
  Backoff b(100ms, 1000ms, 42);
  for (unsigned i = 0; i < 40; ++i) {
    REQUIRE(b.attempt() == i);
    auto ceiling = std::min<int64_t>(1000, i < 20 ? 100LL << i : 1000);
    auto d = b.next();
    REQUIRE(d.count() >= 0);
    REQUIRE(d.count() <= ceiling);
  }
  b.reset();
  REQUIRE(b.attempt() == 0);
  for (int i = 0; i < 100; ++i) {
    Backoff fresh(100ms, 1000ms, 1000 + i);
    REQUIRE(fresh.next() <= 100ms);  // attempt 0 after a reset/fresh: at most base
  }
}

TEST_CASE("Backoff: samples spread over [0, ceiling]", "[docker_client]") {
  // At attempt >= 4 the ceiling is the cap: 1000 draws should cover the range
  // evenly (mean ~500, both ends reached), not cluster.
  Backoff b(100ms, 1000ms, 7);
  for (int i = 0; i < 4; ++i) b.next();
  double sum = 0;
  int64_t lo = 1000, hi = 0;
  std::set<int64_t> distinct;
  for (int i = 0; i < 1000; ++i) {
    int64_t v = b.next().count();
    REQUIRE(v <= 1000);
    sum += v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    distinct.insert(v);
  }
  CHECK(sum / 1000 > 450);
  CHECK(sum / 1000 < 550);
  CHECK(lo < 20);
  CHECK(hi > 980);
  CHECK(distinct.size() > 400);
}

TEST_CASE("Backoff: deterministic per seed, no overflow at huge attempts", "[docker_client]") {
  Backoff a(250ms, 30s, 1234), b(250ms, 30s, 1234), c(250ms, 30s, 4321);
  std::vector<int64_t> va, vb, vc;
  for (int i = 0; i < 50; ++i) {
    va.push_back(a.next().count());
    vb.push_back(b.next().count());
    vc.push_back(c.next().count());
  }
  REQUIRE(va == vb);
  REQUIRE(va != vc);
  for (int i = 0; i < 2000; ++i) REQUIRE(a.next() <= 30s);  // attempt far past 64
  Backoff zero(0ms, 30s, 9);
  REQUIRE(zero.next() == 0ms);
  Backoff big(std::chrono::milliseconds(INT64_MAX / 2), std::chrono::milliseconds(INT64_MAX / 2), 9);
  for (int i = 0; i < 70; ++i) REQUIRE(big.next().count() >= 0);
}

// --- DockerClient without dockerd ------------------------------------------------

TEST_CASE("DockerClient: clear errors when dockerd is not there", "[docker_client]") {
  SECTION("socket path does not exist") {
    DockerClient c("/nonexistent-dq/docker.sock", 2s);
    auto r = c.listContainers();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ENOENT);
    CHECK(r.error().message ==
          "docker: GET /containers/json?all=1: cannot connect to /nonexistent-dq/docker.sock: No such file or "
          "directory");
    auto v = c.negotiate();
    REQUIRE_FALSE(v.ok());
    CHECK(v.error().code == ENOENT);
    CHECK(c.apiVersion().empty());
  }
  SECTION("socket file with nobody listening") {
    std::string dir = makeTempDir("dq-refused");
    std::string path = dir + "/docker.sock";
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    ::close(fd);  // the file stays, nobody listens
    DockerClient c(path, 2s);
    auto r = c.inspectContainer("abc");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == ECONNREFUSED);
    CHECK(r.error().message == "docker: GET /containers/abc/json: cannot connect to " + path + ": Connection refused");
    std::filesystem::remove_all(dir);
  }
  SECTION("ids that cannot be a path segment") {
    DockerClient c("/nonexistent-dq/docker.sock");
    for (const char* bad : {"", ".", ".."}) {
      auto r = c.inspectContainer(bad);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == EINVAL);
    }
    CHECK(c.inspectVolume("..").error().code == EINVAL);
    CHECK(c.request("GET", "containers/json").error().code == EINVAL);
  }
}

TEST_CASE("DockerClient: version negotiation is numeric and bounded", "[docker_client]") {
  std::string api, min_api = "1.12";
  std::mutex mu;
  FakeDocker fake([&](int fd, const std::string& line) {
    std::lock_guard<std::mutex> lock(mu);
    if (startsWith(line, "GET /version "))
      FakeDocker::send(
          fd, api == "none" ? FakeDocker::reply(200, R"({"Version":"x"})") : FakeDocker::version(api, min_api));
    else
      FakeDocker::send(fd, FakeDocker::reply(200, "[]"));
  });
  auto negotiate = [&](const std::string& a, const std::string& m) {
    {
      std::lock_guard<std::mutex> lock(mu);
      api = a;
      min_api = m;
    }
    DockerClient c(fake.socket(), 5s);
    return c.negotiate();
  };
  CHECK(negotiate("1.41", "1.12").value() == "1.41");
  CHECK(negotiate("1.9", "1.9").value() == "1.9");      // 1.9 < 1.45
  CHECK(negotiate("1.100", "1.12").value() == "1.45");  // 1.100 > 1.45, not "1.100" < "1.45"
  CHECK(negotiate("1.45", "1.24").value() == "1.45");
  CHECK(negotiate("2.3", "1.24").value() == "1.45");
  auto too_old = negotiate("1.60", "1.50");
  REQUIRE_FALSE(too_old.ok());
  CHECK(too_old.error().code == EPROTONOSUPPORT);
  CHECK(too_old.error().message == "docker: GET /version: dockerd speaks API 1.50..1.60, we speak up to 1.45");
  // Through request(), the caller's path comes first.
  {
    std::lock_guard<std::mutex> lock(mu);
    api = "1.60";
    min_api = "1.50";
  }
  DockerClient old_client(fake.socket(), 5s);
  auto via_request = old_client.listVolumes();
  REQUIRE_FALSE(via_request.ok());
  CHECK(via_request.error().message ==
        "docker: GET /volumes: API version negotiation: GET /version: dockerd speaks API 1.50..1.60, we speak up "
        "to 1.45");
  auto none = negotiate("none", "");
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().code == EPROTO);

  // request() negotiates lazily and uses the version as the path prefix.
  {
    std::lock_guard<std::mutex> lock(mu);
    api = "1.41";
  }
  DockerClient c(fake.socket(), 5s);
  CHECK(c.apiVersion().empty());
  REQUIRE(c.listImages().ok());
  CHECK(c.apiVersion() == "1.41");
  auto reqs = fake.requests();
  REQUIRE(reqs.size() >= 2);
  CHECK(reqs[reqs.size() - 2] == "GET /version HTTP/1.1");
  CHECK(reqs.back() == "GET /v1.41/images/json HTTP/1.1");
}

TEST_CASE("DockerClient: replies map to results", "[docker_client]") {
  std::atomic<int> max_api_minor{45};  // the fake "restarts" as an older daemon
  FakeDocker fake([&](int fd, const std::string& line) {
    std::string ver = "1." + std::to_string(max_api_minor.load());
    if (startsWith(line, "GET /version ")) return FakeDocker::send(fd, FakeDocker::version(ver));
    if (line.find("/v" + ver + "/") == std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(400, R"({"message":"client version 1.45 is too new. )"
                                                         R"(Maximum supported API version is 1.41"})"));
    if (line.find("/containers/missing/json") != std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(404, R"({"message":"No such container: missing"})"));
    if (line.find("/containers/boom/json") != std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(500, R"({"message":"boom"})"));
    if (line.find("/containers/plain/json") != std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(400, "client version 1.9 is too old\n"));
    if (line.find("/containers/garbage/json") != std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(200, "{\"Id\": \"abc\", oops"));
    if (line.find("/containers/huge/json") != std::string::npos)
      return FakeDocker::send(fd, "HTTP/1.1 200 OK\r\nContent-Length: 314572800\r\n\r\n{");
    if (line.find("/volumes ") != std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(200, R"({"Volumes":null,"Warnings":null})"));
    if (line.find("/images/") != std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(200, R"({"Id":"sha256:1"})"));
    if (line.find("/containers/json") != std::string::npos)
      return FakeDocker::send(fd, FakeDocker::reply(200, R"({"not":"an array"})"));
    FakeDocker::send(fd, FakeDocker::reply(404, R"({"message":"page not found"})"));
  });
  DockerClient c(fake.socket(), 5s);

  auto missing = c.inspectContainer("missing");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ENOENT);
  CHECK(missing.error().message == "docker: GET /containers/missing/json: not found: No such container: missing");

  auto boom = c.inspectContainer("boom");
  CHECK(boom.error().code == EIO);
  CHECK(boom.error().message == "docker: GET /containers/boom/json: HTTP 500: boom");

  auto plain = c.inspectContainer("plain");
  CHECK(plain.error().message == "docker: GET /containers/plain/json: HTTP 400: client version 1.9 is too old");

  auto garbage = c.inspectContainer("garbage");
  CHECK(garbage.error().code == EPROTO);
  CHECK(garbage.error().message == "docker: GET /containers/garbage/json: reply is not JSON: {\"Id\": \"abc\", oops");

  auto t0 = Clock::now();
  auto huge = c.inspectContainer("huge");
  CHECK(huge.error().code == EMSGSIZE);
  CHECK(huge.error().message == "docker: GET /containers/huge/json: reply larger than 256 MiB, refused");
  CHECK(msSince(t0) < 1000);  // refused from Content-Length, not after reading

  auto shape = c.listContainers();
  CHECK(shape.error().code == EPROTO);

  auto vols = c.listVolumes();
  REQUIRE(vols.ok());
  CHECK(vols->empty());

  // User-supplied refs are escaped whole (dockerd decodes %2F and %3A).
  REQUIRE(c.inspectImage("registry.local:5000/ns/img:1").ok());
  REQUIRE(c.inspectImage("sha256:abc").ok());
  auto reqs = fake.requests();
  CHECK(std::count(reqs.begin(), reqs.end(), "GET /v1.45/images/registry.local%3A5000%2Fns%2Fimg%3A1/json HTTP/1.1") ==
        1);
  CHECK(std::count(reqs.begin(), reqs.end(), "GET /v1.45/images/sha256%3Aabc/json HTTP/1.1") == 1);
  (void)c.inspectContainer("a b?c#d/../e");
  CHECK(fake.requests().back() == "GET /v1.45/containers/a%20b%3Fc%23d%2F..%2Fe/json HTTP/1.1");

  // A transparent reconnect to an older dockerd: 400 "is too new" -> renegotiate once.
  CHECK(c.apiVersion() == "1.45");
  max_api_minor = 41;
  auto again = c.inspectImage("x");
  REQUIRE(again.ok());
  CHECK(c.apiVersion() == "1.41");
}

TEST_CASE("DockerClient: lists are parsed as they arrive, never held whole", "[docker_client]") {
  // 20,000 containers (~2.5 MiB), chunked as dockerd sends big lists.
  constexpr int kContainers = 20000;
  std::string list = "[";
  for (int i = 0; i < kContainers; ++i) {
    json c = {{"Id", "c" + std::to_string(i)},
              {"Names", {"/n" + std::to_string(i)}},
              {"State", "exited"},
              {"Ports", json::array()},
              {"Labels", {{"qman.user", "u" + std::to_string(i % 7)}}},
              {"NetworkSettings", {{"Networks", {{"none", {{"NetworkID", std::string(64, 'f')}}}}}}}};
    list += (i ? "," : "") + c.dump();
  }
  list += "]";
  auto chunk = [](int fd, std::string_view data) {
    char len[32];
    std::snprintf(len, sizeof len, "%zx\r\n", data.size());
    FakeDocker::send(fd, len + std::string(data) + "\r\n");
  };
  const std::string head =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  FakeDocker fake([&](int fd, const std::string& line) {
    if (startsWith(line, "GET /version ")) return FakeDocker::send(fd, FakeDocker::version("1.41"));
    if (line == "GET /v1.41/containers/json?all=1 HTTP/1.1") {
      // Pieces of every size up to 64 KiB, some split inside a token.
      FakeDocker::send(fd, head);
      for (size_t off = 0, k = 1; off < list.size(); k = k * 7919 % 65536 + 1) {
        const size_t len = std::min(list.size() - off, k);
        chunk(fd, std::string_view(list).substr(off, len));
        off += len;
      }
      return FakeDocker::send(fd, "0\r\n\r\n");
    }
    if (line == "GET /v1.41/images/json?all=1 HTTP/1.1") {
      // The whole list in one chunk: faster than it is read, so curl is paused.
      FakeDocker::send(fd, head);
      std::string images = "[";
      for (int i = 0; i < kContainers; ++i) images += (i ? "," : "") + json{{"Id", "i" + std::to_string(i)}}.dump();
      chunk(fd, images + "]");
      return FakeDocker::send(fd, "0\r\n\r\n");
    }
    if (line == "GET /v1.41/volumes HTTP/1.1") {  // dockerd dies inside the list
      FakeDocker::send(fd, head);
      return chunk(fd, R"({"Volumes":[{"Name":"a"},{"Na)");
    }
    if (line == "GET /v1.41/images/json HTTP/1.1")
      return FakeDocker::send(fd, FakeDocker::reply(200, R"([{"Id":"a"}, oops])"));
    if (line == "GET /v1.41/system/df HTTP/1.1")
      return FakeDocker::send(fd, FakeDocker::reply(500, R"({"message":"df failed"})"));
    FakeDocker::send(fd, FakeDocker::reply(404, R"({"message":"page not found"})"));
  });
  DockerClient c(fake.socket(), 10s);

  auto t0 = Clock::now();
  auto cs = c.listContainers();
  REQUIRE(cs.ok());
  std::printf("[docker_client] %d containers (%.1f MiB) in pieces: %.0f ms\n", kContainers,
              static_cast<double>(list.size()) / (1 << 20), msSince(t0));
  REQUIRE(cs->size() == kContainers);
  for (int i : {0, 1, 4999, kContainers - 1}) {
    CHECK(cs->at(i).id == "c" + std::to_string(i));
    CHECK(cs->at(i).name == "n" + std::to_string(i));
    CHECK(cs->at(i).label_user == "u" + std::to_string(i % 7));
  }

  auto is = c.listImages(/*all=*/true);
  REQUIRE(is.ok());
  REQUIRE(is->size() == kContainers);
  CHECK(is->back().id == "i" + std::to_string(kContainers - 1));

  // The transport's reason wins over the parser's "unexpected end of input".
  auto cut = c.listVolumes();
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.error().code == EIO);
  CHECK(cut.error().message ==
        "docker: GET /volumes: connection closed in the middle of the reply (dockerd restarting?)");

  auto garbage = c.listImages();
  REQUIRE_FALSE(garbage.ok());
  CHECK(garbage.error().code == EPROTO);
  CHECK_THAT(garbage.error().message,
             Catch::StartsWith("docker: GET /images/json: reply is not JSON: parse error at line 1"));
  CHECK(c.apiVersion() == "1.41");  // an answer that made no sense is not a reason to renegotiate

  auto df = c.systemDf();
  REQUIRE_FALSE(df.ok());
  CHECK(df.error().code == EIO);
  CHECK(df.error().message == "docker: GET /system/df: HTTP 500: df failed");

  // After all that the client still works.
  REQUIRE(c.listContainers().ok());
}

TEST_CASE("DockerClient: a daemon that does not answer times out", "[docker_client]") {
  FakeDocker fake([&](int fd, const std::string& line) {
    if (startsWith(line, "GET /version ")) return FakeDocker::send(fd, FakeDocker::version("1.41"));
    while (!fake.stopping()) std::this_thread::sleep_for(10ms);  // hung dockerd
  });
  DockerClient c(fake.socket(), 300ms);
  auto t0 = Clock::now();
  auto r = c.systemDf();
  double ms = msSince(t0);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == ETIMEDOUT);
  CHECK(r.error().message == "docker: GET /system/df: no complete reply within 300 ms");
  CHECK(ms >= 250);
  CHECK(ms < 1500);
  CHECK(c.apiVersion().empty());  // a transport error forgets the version
}

// --- DockerEventStream without dockerd -------------------------------------------

TEST_CASE("DockerEventStream: messages split across reads, bounded lines, callbacks", "[docker_client]") {
  std::atomic<int> streams{0};
  FakeDocker fake([&](int fd, const std::string& line) {
    if (startsWith(line, "GET /version ")) return FakeDocker::send(fd, FakeDocker::version("1.41"));
    if (!startsWith(line, "GET /v1.41/events?")) return FakeDocker::send(fd, FakeDocker::reply(404, "{}"));
    int n = ++streams;
    FakeDocker::send(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n");
    if (n == 1) {
      std::this_thread::sleep_for(100ms);  // on_connected must come before any event
      FakeDocker::send(fd, R"({"Type":"container","Action":"cre)");
      std::this_thread::sleep_for(50ms);
      FakeDocker::send(fd, "ate\",\"Actor\":{\"ID\":\"a\"}}\n{\"Type\":\"image\"");
      std::this_thread::sleep_for(50ms);
      FakeDocker::send(fd, ",\"Action\":\"tag\",\"Actor\":{\"ID\":\"b\"}}\r\n\n");
      // 1.5 MiB without a newline, in pieces: skipped whole, the stream goes on.
      std::string chunk(256 * 1024, 'x');
      FakeDocker::send(fd, "{\"Type\":\"image\",\"pad\":\"");
      for (int i = 0; i < 6; ++i) FakeDocker::send(fd, chunk);
      FakeDocker::send(fd, "\"}\nnot json at all\n");
      FakeDocker::send(fd, R"({"Type":"volume","Action":"create","Actor":{"ID":"c"}})"
                           "\n");
      std::this_thread::sleep_for(100ms);
      return;  // closes: the stream ends, reconnects
    }
    // Later connections: one event, then idle until the fake shuts down.
    FakeDocker::send(fd, R"({"Type":"container","Action":"destroy","Actor":{"ID":"d"}})"
                         "\n");
    while (!fake.stopping()) std::this_thread::sleep_for(10ms);
  });

  Recorder rec;
  rec.throw_on_events = 1;  // the first on_event throws: caught, logged, stream continues
  DockerEventStream stream(fake.socket(), rec.callbacks(), 10ms, 50ms);
  stream.start();
  REQUIRE(rec.waitFor(5s, [&] { return rec.connects >= 2 && rec.find("event container destroy d") >= 0; }));
  CHECK(stream.connected());
  CHECK(stream.reconnects() == 1);
  {
    std::lock_guard<std::mutex> lock(rec.mu);
    std::vector<std::string> want = {
        "connected", "event container create a", "event image tag b", "event volume create c", "disconnected",
        "connected", "event container destroy d"};
    CHECK(rec.seq == want);
    REQUIRE(rec.reasons.size() == 1);
    CHECK(rec.reasons[0] == "docker: GET /events: dockerd ended the stream");
  }
  auto reqs = fake.requests();
  CHECK(std::count(reqs.begin(), reqs.end(),
                   "GET /v1.41/events?filters=%7B%22type%22%3A%5B%22container%22%2C%22image%22%2C%22volume%22%5D%7D "
                   "HTTP/1.1") >= 2);

  // Idle stream: stop() interrupts curl's poll, it does not wait for it.
  std::this_thread::sleep_for(300ms);
  auto t0 = Clock::now();
  stream.stop();
  double stop_ms = msSince(t0);
  std::printf("[docker_client] fake dockerd: stop() of an idle stream took %.1f ms\n", stop_ms);
  CHECK(stop_ms < 1500);
  CHECK_FALSE(stream.connected());
  std::lock_guard<std::mutex> lock(rec.mu);
  CHECK(rec.seq.back() == "disconnected");
  CHECK(rec.reasons.back() == "stopped");
}

TEST_CASE("DockerEventStream: retries while dockerd is absent, stop() interrupts the backoff", "[docker_client]") {
  Recorder rec;
  DockerEventStream stream("/nonexistent-dq/docker.sock", rec.callbacks(), 5s, 30s);
  stream.start();
  std::this_thread::sleep_for(200ms);
  CHECK_FALSE(stream.connected());
  auto t0 = Clock::now();
  stream.stop();
  double stop_ms = msSince(t0);
  std::printf("[docker_client] stop() during a backoff sleep took %.1f ms\n", stop_ms);
  CHECK(stop_ms < 1500);
  std::lock_guard<std::mutex> lock(rec.mu);
  CHECK(rec.connects == 0);
  CHECK(rec.disconnects == 0);  // on_disconnected pairs with on_connected only
}

// --- against a real dockerd -------------------------------------------------------

TEST_CASE("DockerClient against a real dockerd", "[docker_client][dockerd]") {
  REQUIRE_DOCKERD();
  ScratchDockerd d;
  d.start();
  d.importImage("bb:1");
  DockerClient c(d.socket(), 30s);

  // min(kMaxApiVersion, the daemon's ApiVersion)
  auto v = c.negotiate();
  REQUIRE(v.ok());
  auto raw = c.request("GET", "/version");
  REQUIRE(raw.ok());
  std::string daemon_api = json::parse(raw->body).at("ApiVersion").get<std::string>();
  std::printf("[docker_client] dockerd ApiVersion %s, negotiated %s\n", daemon_api.c_str(), v->c_str());
  int dmaj = 0, dmin = 0;
  REQUIRE(std::sscanf(daemon_api.c_str(), "%d.%d", &dmaj, &dmin) == 2);
  CHECK(*v == ((dmaj == 1 && dmin < 45) ? daemon_api : std::string("1.45")));
  CHECK(c.apiVersion() == *v);

  std::string id = createContainer(c, "dq-inspect");
  auto ins = c.inspectContainer(id);
  REQUIRE(ins.ok());
  CHECK(ins->at("Id") == id);
  CHECK(ins->at("Name") == "/dq-inspect");
  auto by_name = c.inspectContainer("dq-inspect");
  REQUIRE(by_name.ok());
  CHECK(by_name->at("Id") == id);

  auto missing = c.inspectContainer("dq-no-such-container");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ENOENT);
  CHECK(missing.error().message ==
        "docker: GET /containers/dq-no-such-container/json: not found: No such container: dq-no-such-container");

  // Refs with '/' and ':' (registry with port, namespace, tag), escaped whole.
  auto tag = c.request("POST", "/images/bb:1/tag?repo=registry.local:5000/ns/img&tag=1");
  REQUIRE(tag.ok());
  REQUIRE(tag->status == 201);
  auto img = c.inspectImage("registry.local:5000/ns/img:1");
  REQUIRE(img.ok());
  auto bb = c.inspectImage("bb:1");
  REQUIRE(bb.ok());
  CHECK(img->at("Id") == bb->at("Id"));
  auto by_id = c.inspectImage(bb->at("Id").get<std::string>());
  REQUIRE(by_id.ok());
  auto no_img = c.inspectImage("registry.local/ns/none:1");
  CHECK(no_img.error().code == ENOENT);

  auto vc = c.request("POST", "/volumes/create", R"({"Name":"dq-vol"})");
  REQUIRE(vc.ok());
  REQUIRE(vc->status == 201);
  auto vol = c.inspectVolume("dq-vol");
  REQUIRE(vol.ok());
  CHECK(vol->at("Name") == "dq-vol");
  CHECK(c.inspectVolume("dq-no-vol").error().code == ENOENT);

  auto cs = c.listContainers();
  REQUIRE(cs.ok());
  auto listed = std::find_if(cs->begin(), cs->end(), [&](const auto& x) { return x.id == id; });
  REQUIRE(listed != cs->end());
  CHECK(listed->name == "dq-inspect");
  CHECK(listed->image_id == bb->at("Id"));
  CHECK(listed->state == "created");
  CHECK_FALSE(listed->size_rw);  // only /system/df computes it
  auto is = c.listImages();
  REQUIRE(is.ok());
  REQUIRE(is->size() == 1);
  CHECK(is->at(0).id == bb->at("Id"));
  CHECK(is->at(0).tags.size() == 2);
  CHECK(is->at(0).size.value_or(0) > 0);
  CHECK(is->at(0).created.value_or(0) > 0);
  auto vs = c.listVolumes();
  REQUIRE(vs.ok());
  CHECK(std::any_of(vs->begin(), vs->end(), [](const auto& x) { return x.name == "dq-vol"; }));
  auto df = c.systemDf();
  REQUIRE(df.ok());
  auto in_df = std::find_if(df->containers.begin(), df->containers.end(), [&](const auto& x) { return x.id == id; });
  REQUIRE(in_df != df->containers.end());
  CHECK(in_df->name == "dq-inspect");
  CHECK(in_df->size_rw.value_or(0) == 0u);  // never started: an empty layer (dockerd omits a zero SizeRw)
  auto vol_df = std::find_if(df->volumes.begin(), df->volumes.end(), [](const auto& x) { return x.name == "dq-vol"; });
  REQUIRE(vol_df != df->volumes.end());
  CHECK(vol_df->size == 0u);  // empty, and measured
  CHECK_FALSE(vol_df->mountpoint.empty());

  // Keep-alive: many small requests on one connection are cheap.
  auto t0 = Clock::now();
  for (int i = 0; i < 100; ++i) REQUIRE(c.inspectContainer(id).ok());
  std::printf("[docker_client] inspectContainer round trip: %.2f ms (mean of 100)\n", msSince(t0) / 100);

  removeContainer(c, id);
  CHECK(c.inspectContainer(id).error().code == ENOENT);
}

TEST_CASE("DockerEventStream against a real dockerd, across a restart", "[docker_client][dockerd]") {
  REQUIRE_DOCKERD();
  ScratchDockerd d;
  d.start();
  d.importImage("bb:1");
  DockerClient c(d.socket(), 30s);

  Recorder rec;
  rec.throw_on_events = 1;
  DockerEventStream stream(d.socket(), rec.callbacks());
  stream.start();
  REQUIRE(rec.waitFor(5s, [&] { return rec.connects == 1; }));
  CHECK(stream.connected());

  auto t0 = Clock::now();
  std::string id1 = createContainer(c, "dq-ev1");
  removeContainer(c, id1);
  REQUIRE(rec.waitFor(2s, [&] {
    return rec.find("event container create " + id1) >= 0 && rec.find("event container destroy " + id1) >= 0;
  }));
  std::printf("[docker_client] create+remove -> both events delivered in %.1f ms\n", msSince(t0));

  // Restart dockerd on the same directory.
  auto t_stop = Clock::now();
  d.stop();
  REQUIRE(rec.waitFor(5s, [&] { return rec.disconnects == 1; }));
  double detect_ms;
  {
    std::lock_guard<std::mutex> lock(rec.mu);
    detect_ms = std::chrono::duration<double, std::milli>(rec.disconnected_at[0] - t_stop).count();
    INFO(rec.reasons[0]);
    std::printf("[docker_client] dockerd stop -> on_disconnected after %.1f ms (%s)\n", detect_ms,
                rec.reasons[0].c_str());
  }
  CHECK_FALSE(stream.connected());
  d.start();
  auto t_up = Clock::now();
  REQUIRE(rec.waitFor(15s, [&] { return rec.connects == 2; }));
  {
    std::lock_guard<std::mutex> lock(rec.mu);
    std::printf("[docker_client] dockerd answering again -> on_connected after %.1f ms; whole outage %.1f ms\n",
                std::chrono::duration<double, std::milli>(rec.connected_at[1] - t_up).count(),
                std::chrono::duration<double, std::milli>(rec.connected_at[1] - t_stop).count());
  }
  CHECK(stream.reconnects() == 1);

  // The request client recovers by itself too (new connection, renegotiated).
  auto list = c.listContainers();
  INFO((list.ok() ? std::string() : list.error().message));
  REQUIRE(list.ok());

  t0 = Clock::now();
  std::string id2 = createContainer(c, "dq-ev2");
  removeContainer(c, id2);
  REQUIRE(rec.waitFor(2s, [&] {
    return rec.find("event container create " + id2) >= 0 && rec.find("event container destroy " + id2) >= 0;
  }));
  std::printf("[docker_client] after restart: create+remove events in %.1f ms\n", msSince(t0));
  {
    std::lock_guard<std::mutex> lock(rec.mu);
    int c1 = rec.find("connected");
    int disc = rec.find("disconnected");
    int c2 = rec.find("connected", c1 + 1);
    CHECK(c1 == 0);
    CHECK(c1 < rec.find("event container create " + id1));
    CHECK(rec.find("event container destroy " + id1) < disc);
    CHECK(disc < c2);
    CHECK(c2 < rec.find("event container create " + id2));
  }

  // Idle stream: stop() returns promptly.
  std::this_thread::sleep_for(500ms);
  auto t_halt = Clock::now();
  stream.stop();
  double stop_ms = msSince(t_halt);
  std::printf("[docker_client] real dockerd: stop() of an idle stream took %.1f ms\n", stop_ms);
  CHECK(stop_ms < 1500);
}
