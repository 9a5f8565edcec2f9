// SPDX-License-Identifier: Apache-2.0
// MasterSink's URL handling (libcurl's parser plus the checks it does not
// make) and the request as it goes on the wire, against a real
// httplib::Server on loopback (IPv4 and IPv6).
#include <catch2/catch.hpp>

#include <stdlib.h>

#include <chrono>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/delivery/master_sink.h"
#include "tests/unit/master_fakes.h"

using namespace dockquota;
using namespace dockquota::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr const char* kEvents = "/api/internal/slave-events";

// One handler on `host`; every request's headers and path are kept.
class Server {
 public:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;
  Server(const std::string& host, const std::string& path, Handler h) {
    svr_.Post(path, [this, h](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        got_.push_back(req);
      }
      h(req, res);
    });
    port_ = svr_.bind_to_any_port(host);
    if (port_ <= 0) throw std::runtime_error("Server: cannot bind " + host);
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    while (!svr_.is_running()) std::this_thread::sleep_for(1ms);
  }
  ~Server() {
    svr_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  std::vector<httplib::Request> got() {
    std::lock_guard<std::mutex> lock(mu_);
    return got_;
  }

 private:
  httplib::Server svr_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<httplib::Request> got_;
};

// Sets an environment variable for a scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = ::getenv(name)) old_ = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST_CASE("master url: IPv6 literals, in brackets, as written", "[master][url]") {
  auto u = MasterSink::parseUrl("http://[::1]");
  REQUIRE(u.ok());
  CHECK(u->host == "::1");
  CHECK(u->port == 80);
  CHECK(u->path == kEvents);

  u = MasterSink::parseUrl("https://[FD00::1A]/q");
  REQUIRE(u.ok());
  CHECK(u->host == "FD00::1A");  // not lower-cased or compressed
  CHECK(u->port == 443);
  CHECK(u->path == std::string("/q") + kEvents);

  u = MasterSink::parseUrl("http://[::ffff:192.0.2.7]:8080/");
  REQUIRE(u.ok());
  CHECK(u->host == "::ffff:192.0.2.7");
  CHECK(u->port == 8080);

  for (const char* bad : {"http://[fe80::1%25eth0]/", "http://[fe80::1%eth0]/", "http://[fd00::1]:/", "http://[]/",
                          "http://[fd00::zz]/", "http://fd00::1:80/", "http://[fd00::1]:8o/"}) {
    INFO(bad);
    auto r = MasterSink::parseUrl(bad);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::StartsWith(std::string("master: bad url \"") + bad + "\""));
  }
}

TEST_CASE("master url: ports, explicit or the scheme's", "[master][url]") {
  CHECK(MasterSink::parseUrl("http://m:1")->port == 1);
  CHECK(MasterSink::parseUrl("http://m:65535")->port == 65535);
  CHECK(MasterSink::parseUrl("https://m:80")->port == 80);  // the scheme does not override it
  CHECK(MasterSink::parseUrl("http://m:443")->scheme == "http");
  CHECK(MasterSink::parseUrl("http://m:080")->port == 80);
  CHECK(MasterSink::parseUrl("http://m:8080/x")->path == std::string("/x") + kEvents);
  for (const char* bad :
       {"http://m:/x", "http://m:0/", "http://m:-1", "http://m:99999", "http://m:+80", "http://m:1:2"}) {
    INFO(bad);
    auto r = MasterSink::parseUrl(bad);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::StartsWith(std::string("master: bad url \"") + bad + "\""));
  }
}

TEST_CASE("master url: the path prefix is kept as written, trailing slashes dropped", "[master][url]") {
  CHECK(MasterSink::parseUrl("http://m/a/b/")->path == std::string("/a/b") + kEvents);
  CHECK(MasterSink::parseUrl("http://m/a/b///")->path == std::string("/a/b") + kEvents);
  CHECK(MasterSink::parseUrl("http://m//")->path == kEvents);
  CHECK(MasterSink::parseUrl("http://m/a/../b")->path == std::string("/a/../b") + kEvents);  // not resolved
  CHECK(MasterSink::parseUrl("http://m/a%2Fb")->path == std::string("/a%2Fb") + kEvents);    // not decoded
  CHECK(MasterSink::parseUrl("http://m/a@b:c")->path == std::string("/a@b:c") + kEvents);
  CHECK(MasterSink::parseUrl("http://m/a@b:c")->host == "m");
}

TEST_CASE("master url: https, any case of the scheme", "[master][url]") {
  auto u = MasterSink::parseUrl("HTTPS://Qman.Example.org:8443/qman");
  REQUIRE(u.ok());
  CHECK(u->scheme == "https");
  CHECK(u->host == "Qman.Example.org");
  CHECK(u->port == 8443);
  CHECK(u->path == std::string("/qman") + kEvents);
  CHECK(MasterSink::parseUrl("hTtPs://m")->port == 443);
  CHECK(MasterSink::parseUrl("https://m_1.example-2.org")->host == "m_1.example-2.org");
}

TEST_CASE("master url: what curl's parser forgives is still refused", "[master][url]") {
  for (const char* bad : {"http:/m", "http:///m", "http:m", "http://m/?", "http://m/x?", "http://m/#", "http://@m/",
                          "http://:@m/", "http://u@m/", "http://m%41/",
                          "http://b\xc3\xbc"
                          "cher.example/",
                          "http://m;x/", "ftp://m", "file:///etc/passwd", "http://m\t/", "http://m/a b"}) {
    INFO(bad);
    auto r = MasterSink::parseUrl(bad);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::StartsWith(std::string("master: bad url \"") + bad + "\""));
  }
}

TEST_CASE("master url: a POST over IPv6 loopback under a path prefix, headers as before", "[master][url]") {
  Server master("::1", std::string("/pre/fix") + kEvents, [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"msg": "ok"})", "application/json");
  });
  // A body over 1 MiB: curl 7.88 adds "Expect: 100-continue" above that (older ones above 1 KiB).
  FakeSpool spool;
  spool.recordMany(40, 30000);
  auto sink = MasterSink::create(spool, options("http://[::1]:" + std::to_string(master.port()) + "/pre/fix/"));
  REQUIRE(sink.ok());
  CHECK((*sink)->postUrl() == "http://[::1]:" + std::to_string(master.port()) + "/pre/fix" + kEvents);
  (*sink)->start();
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  (*sink)->stop();

  auto got = master.got();
  REQUIRE(got.size() == 1);
  const httplib::Request& r = got[0];
  CHECK(r.path == std::string("/pre/fix") + kEvents);
  CHECK(r.version == "HTTP/1.1");
  CHECK(r.get_header_value("X-API-Key") == "s3cret");
  CHECK(r.get_header_value("Content-Type") == "application/json");
  CHECK(r.get_header_value("Accept") == "application/json");
  CHECK(r.get_header_value("Connection") == "close");
  CHECK(r.get_header_value("Host") == "[::1]:" + std::to_string(master.port()));
  CHECK_FALSE(r.has_header("Expect"));
  CHECK_FALSE(r.has_header("Accept-Encoding"));  // cpp-httplib asked for none: replies are not compressed
  CHECK(r.get_header_value("User-Agent") == "dockquotad");
  CHECK(r.body.size() > (1u << 20));
  CHECK(json::parse(r.body)["events"].size() == 40);
  CHECK((*sink)->stats().batches_sent == 1);
}

TEST_CASE("master url: the path goes on the wire escaped as before", "[master][url]") {
  // '+', ',', ';', '\'' and non-ASCII bytes as %XX: the request line cpp-httplib sent.
  Server master("127.0.0.1", ".*", [](const httplib::Request&, httplib::Response& res) { res.status = 204; });
  FakeSpool spool;
  spool.recordMany(1);
  auto sink =
      MasterSink::create(spool, options("http://127.0.0.1:" + std::to_string(master.port()) + "/a+b,c;d'e\xc3\xbc"));
  REQUIRE(sink.ok());
  (*sink)->start();
  REQUIRE(eventually([&] { return spool.pendingCount(Channel::Master).value() == 0; }));
  (*sink)->stop();
  REQUIRE(master.got().size() == 1);
  CHECK(master.got()[0].target == "/a%2Bb%2Cc%3Bd%27e%C3%BC" + std::string(kEvents));
}

TEST_CASE("master url: the *_proxy environment is not used", "[master][url]") {
  Server master("127.0.0.1", kEvents, [](const httplib::Request&, httplib::Response& res) { res.status = 200; });
  // A proxy that answers everything with 502: a request through it fails.
  Server proxy("127.0.0.1", ".*", [](const httplib::Request&, httplib::Response& res) { res.status = 502; });
  const std::string proxy_url = "http://127.0.0.1:" + std::to_string(proxy.port());
  ScopedEnv http_proxy("http_proxy", proxy_url), all_proxy("ALL_PROXY", proxy_url), no_proxy("NO_PROXY", "");
  FakeSpool spool;
  spool.recordMany(1);
  auto sink = MasterSink::create(spool, options("http://127.0.0.1:" + std::to_string(master.port())));
  REQUIRE(sink.ok());
  (*sink)->start();
  REQUIRE(
      eventually([&] { return spool.pendingCount(Channel::Master).value() == 0 || (*sink)->stats().failures > 0; }));
  (*sink)->stop();
  CHECK((*sink)->stats().failures == 0);
  CHECK(master.got().size() == 1);
  CHECK(proxy.got().empty());
}

TEST_CASE("master url: a master silent for `timeout` after the request is a failure", "[master][url]") {
  Server master("127.0.0.1", kEvents, [](const httplib::Request&, httplib::Response& res) {
    std::this_thread::sleep_for(800ms);
    res.status = 200;
  });
  FakeSpool spool;
  spool.recordMany(1);
  auto o = options("http://127.0.0.1:" + std::to_string(master.port()));
  o.timeout = 200ms;
  o.backoff_base = 5s;  // one attempt within the test
  o.backoff_cap = 5s;
  auto sink = MasterSink::create(spool, o);
  REQUIRE(sink.ok());
  const auto t0 = std::chrono::steady_clock::now();
  (*sink)->start();
  REQUIRE(eventually([&] { return (*sink)->stats().failures >= 1; }));
  const auto took = std::chrono::steady_clock::now() - t0;
  (*sink)->stop();
  CHECK(took >= 190ms);
  CHECK(took < 700ms);
  CHECK((*sink)->stats().last_error == "no reply (connection closed, or nothing within 200 ms)");
  CHECK((*sink)->stats().last_status == 0);
  CHECK(spool.pendingCount(Channel::Master).value() == 1);
}

TEST_CASE("master url: a redirect is reported with its Location, not followed", "[master][url]") {
  Server master("127.0.0.1", kEvents, [](const httplib::Request&, httplib::Response& res) {
    res.status = 307;
    res.set_header("Location", "https://elsewhere.example/qman/api/internal/slave-events");
    res.set_content(R"({"msg": "moved"})", "application/json");
  });
  FakeSpool spool;
  spool.recordMany(1);
  auto sink = MasterSink::create(spool, options("http://127.0.0.1:" + std::to_string(master.port())));
  REQUIRE(sink.ok());
  (*sink)->start();
  REQUIRE(eventually([&] { return (*sink)->stats().failures >= 2; }));
  (*sink)->stop();
  const auto st = (*sink)->stats();
  CHECK(st.last_status == 307);
  CHECK(st.last_error == "HTTP 307: moved (redirect to https://elsewhere.example/qman/api/internal/slave-events)");
  CHECK(master.got().size() >= 2);  // retried, each time to the configured url
  CHECK(spool.pendingCount(Channel::Master).value() == 1);
}
