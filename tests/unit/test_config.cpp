// SPDX-License-Identifier: Apache-2.0
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>

#include "app/config.h"
#include "app/quota_wiring.h"

using namespace dockquota;

TEST_CASE("config: empty object gives documented defaults", "[config]") {
  auto c = parseConfig("{}", "t.json");
  REQUIRE(c.ok());
  CHECK(c->listen_address == "127.0.0.1");
  CHECK(c->listen_port == 8436);
  CHECK(c->watch_sockets == std::vector<std::string>{"/var/run/docker.sock", "/run/docker.sock"});
  CHECK(c->docker_binaries == std::vector<std::string>{"/usr/bin/docker", "/usr/local/bin/docker"});
  CHECK(c->capture_bytes == 4096);
  CHECK(c->ringbuf_kib == 2048);
  CHECK(c->tracker_memory_mib == 16);
  CHECK(c->bill_root_to_login_uid);
  CHECK(c->probe_hook == "auto");
  CHECK(c->growth_probe_hook == "auto");
}

TEST_CASE("config: the hook sets each probe has", "[config]") {
  for (const char* h : {"auto", "socket", "fentry", "tracepoint"}) {
    auto c = parseConfig(std::string(R"({"probe_hook": ")") + h + "\"}", "t.json");
    REQUIRE(c.ok());
    CHECK(c->probe_hook == h);
  }
  for (const char* h : {"auto", "fentry", "tracepoint"}) {
    auto c = parseConfig(std::string(R"({"growth_probe_hook": ")") + h + "\"}", "t.json");
    REQUIRE(c.ok());
    CHECK(c->growth_probe_hook == h);
  }
  // The growth probe has no socket set: it counts file writes.
  auto bad = parseConfig(R"({"growth_probe_hook": "socket"})", "t.json");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message,
             Catch::Contains("key \"growth_probe_hook\": must be one of auto, fentry, tracepoint"));
  bad = parseConfig(R"({"probe_hook": "kprobe"})", "t.json");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.error().message,
             Catch::Contains("key \"probe_hook\": must be one of auto, socket, fentry, tracepoint"));
}

TEST_CASE("config: unknown keys and wrong types are refused, naming the key", "[config]") {
  struct Case {
    const char* text;
    const char* needle;
  } cases[] = {
      {R"({"listen_prot": 1})", "key \"listen_prot\": unknown key"},
      {R"({"listen_port": "8436"})", "key \"listen_port\": must be a non-negative integer"},
      {R"({"listen_port": 70000})", "key \"listen_port\": must be between 1 and 65535"},
      {R"({"listen_port": -1})", "key \"listen_port\": must be a non-negative integer"},
      {R"({"watch_sockets": "/var/run/docker.sock"})", "key \"watch_sockets\": must be an array"},
      {R"({"watch_sockets": ["relative.sock"]})", "key \"watch_sockets\": must be an array of absolute paths"},
      {R"({"capture_bytes": 8192})", "key \"capture_bytes\": must be between 512 and 4096"},
      {R"({"ringbuf_kib": 1000})", "key \"ringbuf_kib\": must be a power of two"},
      {R"({"bill_root_to_login_uid": 1})", "key \"bill_root_to_login_uid\": must be true or false"},
      {R"({"log_level": "loud"})", "key \"log_level\": must be one of"},
      {R"({"api_key": ""})", "key \"api_key\": must not be empty"},
      {R"({"api_key": "a", "api_key_file": "/x"})", "not both"},
      {R"({"api_key_file": "/nonexistent/dq-key"})", "key \"api_key_file\": cannot read /nonexistent/dq-key"},
      {R"([1,2])", "must be a JSON object"},
      {R"({"listen_port": )", "not valid JSON"},
  };
  for (const auto& tc : cases) {
    INFO(tc.text);
    auto c = parseConfig(tc.text, "t.json");
    REQUIRE_FALSE(c.ok());
    CHECK_THAT(c.error().message, Catch::Contains(tc.needle));
    CHECK_THAT(c.error().message, Catch::StartsWith("config t.json: "));
  }
}

TEST_CASE("config: the API key can come from a file, trimmed", "[config]") {
  char path[] = "/tmp/dq-key-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << "  s3cret\n";
  auto c = parseConfig(std::string(R"({"api_key_file": ")") + path + "\"}", "t.json");
  REQUIRE(c.ok());
  CHECK(c->api_key == "s3cret");
  std::ofstream(path) << "\n";
  auto empty = parseConfig(std::string(R"({"api_key_file": ")") + path + "\"}", "t.json");
  CHECK_FALSE(empty.ok());
  std::remove(path);
}

TEST_CASE("config: a missing file is an error unless optional", "[config]") {
  CHECK_FALSE(loadConfig("/nonexistent/dq.json").ok());
  auto d = loadConfig("/nonexistent/dq.json", /*optional=*/true);
  REQUIRE(d.ok());
  CHECK(d->listen_port == 8436);
}

TEST_CASE("config: qman keys (TLS pair, intervals, reserved bytes)", "[config][qman]") {
  auto d = parseConfig("{}", "t.json");
  REQUIRE(d.ok());
  CHECK(d->usage_interval_s == 60);
  CHECK(d->default_apply_interval_s == 600);
  CHECK(d->docker_quota_enabled);
  CHECK(d->docker_quota_reserved_bytes == 0);
  CHECK(d->tls_cert_file.empty());

  auto ok = parseConfig(R"({"usage_interval_s": 5, "default_apply_interval_s": 3600,
                            "docker_quota_reserved_bytes": 1099511627776, "docker_quota_enabled": false,
                            "docker_data_root": "/srv/docker"})",
                        "t.json");
  REQUIRE(ok.ok());
  CHECK(ok->usage_interval_s == 5);
  CHECK(ok->docker_quota_reserved_bytes == 1099511627776ULL);
  CHECK_FALSE(ok->docker_quota_enabled);
  CHECK(ok->docker_data_root == "/srv/docker");

  for (const char* bad : {R"({"usage_interval_s": 1})", R"({"usage_interval_s": "60"})",
                          R"({"default_apply_interval_s": 0})", R"({"docker_quota_reserved_bytes": -1})",
                          R"({"docker_quota_reserved_bytes": 1.5})", R"({"docker_data_root": "rel/path"})",
                          R"({"tls_cert_file": "/etc/hostname"})", R"({"tls_key_file": "/etc/hostname"})",
                          R"({"tls_cert_file": "/nonexistent.pem", "tls_key_file": "/nonexistent.key"})"}) {
    INFO(bad);
    auto c = parseConfig(bad, "t.json");
    CHECK_FALSE(c.ok());
  }
  auto one = parseConfig(R"({"tls_cert_file": "/etc/hostname"})", "t.json");
  REQUIRE_FALSE(one.ok());
  CHECK_THAT(one.error().message, Catch::Contains("set both tls_cert_file and tls_key_file"));
  auto both = parseConfig(R"({"tls_cert_file": "/etc/hostname", "tls_key_file": "/etc/hostname"})", "t.json");
  CHECK(both.ok());
}

TEST_CASE("config: the API transport's workers, caps and deadlines", "[config][http]") {
  auto d = parseConfig("{}", "t.json");
  REQUIRE(d.ok());
  CHECK(d->http_threads == 4);
  CHECK(d->http_max_connections == 256);
  CHECK(d->http_max_connections_per_peer == 32);
  CHECK(d->http_request_timeout_s == 10);
  CHECK(d->http_idle_timeout_s == 5);
  auto o = apiServerOptions(*d);
  CHECK(o.threads == 4);
  CHECK(o.request_timeout == std::chrono::seconds(10));

  auto ok = parseConfig(R"({"http_threads": 8, "http_max_connections": 1024, "http_max_connections_per_peer": 1024,
                            "http_request_timeout_s": 3, "http_idle_timeout_s": 60})",
                        "t.json");
  REQUIRE(ok.ok());
  o = apiServerOptions(*ok);
  CHECK(o.threads == 8);
  CHECK(o.max_connections == 1024);
  CHECK(o.max_connections_per_peer == 1024);
  CHECK(o.request_timeout == std::chrono::seconds(3));
  CHECK(o.idle_timeout == std::chrono::seconds(60));

  for (const char* bad : {R"({"http_threads": 0})", R"({"http_threads": 65})", R"({"http_max_connections": 8})",
                          R"({"http_max_connections_per_peer": 0})", R"({"http_request_timeout_s": 0})",
                          R"({"http_idle_timeout_s": "5"})"}) {
    INFO(bad);
    CHECK_FALSE(parseConfig(bad, "t.json").ok());
  }
  auto over = parseConfig(R"({"http_max_connections": 100, "http_max_connections_per_peer": 101})", "t.json");
  REQUIRE_FALSE(over.ok());
  CHECK_THAT(over.error().message, Catch::Contains("http_max_connections_per_peer"));
}

TEST_CASE("config: block device keys", "[config][block]") {
  auto d = parseConfig("{}", "t.json");
  REQUIRE(d.ok());
  CHECK(d->block_quotas == "auto");
  CHECK(d->block_quota_include.empty());
  CHECK(d->device_refresh_interval_s == 30);
  CHECK(d->disk_notification_window_s == 86400);
  auto ok = parseConfig(R"({"block_quotas": "on", "block_quota_include": ["/home", "/dev/sdb1"],
                            "block_quota_exclude": ["/srv"], "device_refresh_interval_s": 5,
                            "disk_notification_window_s": 3600})",
                        "t.json");
  REQUIRE(ok.ok());
  CHECK(ok->block_quotas == "on");
  CHECK(ok->block_quota_include == std::vector<std::string>{"/home", "/dev/sdb1"});
  CHECK(ok->block_quota_exclude == std::vector<std::string>{"/srv"});
  CHECK(ok->device_refresh_interval_s == 5);
  for (const char* bad :
       {R"({"block_quotas": "yes"})", R"({"block_quota_include": ["home"]})", R"({"block_quota_exclude": "/srv"})",
        R"({"device_refresh_interval_s": 0})", R"({"block_quota": "auto"})"}) {
    INFO(bad);
    CHECK_FALSE(parseConfig(bad, "t.json").ok());
  }
}
