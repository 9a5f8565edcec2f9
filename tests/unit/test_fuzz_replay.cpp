// SPDX-License-Identifier: Apache-2.0
// Every committed fuzz input (tests/fuzz/fuzz-*/corpus and regressions), run
// through the same harness functions as the libFuzzer targets, without
// libFuzzer: a crash found once stays fixed. Harness invariants abort; in the
// sanitizer build (tests/run.sh asan) ASan and UBSan reports fail too.
//
// Also the seed writer: `unit_tests '[.fuzz-seeds]'` rebuilds the corpora's
// capture-* seeds from tests/data/captures (tests/fuzz/README.md).
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <tuple>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/capture/http_stream.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"
#include "tests/unit/captures.h"

namespace fs = std::filesystem;
using namespace dockquota;

namespace {

const std::string kFuzzDir = DOCKQUOTA_FUZZ_DIR;

std::string readFile(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  REQUIRE(f.good());
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Inputs of one target: "corpus" or "regressions".
std::vector<fs::path> inputs(const std::string& target, const std::string& kind) {
  std::vector<fs::path> out;
  const fs::path dir = fs::path(kFuzzDir) / target / kind;
  if (!fs::is_directory(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != "README.md") out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

void replay(const std::string& target, int (*run)(const uint8_t*, size_t)) {
  auto corpus = inputs(target, "corpus");
  auto regressions = inputs(target, "regressions");
  CHECK(corpus.size() >= 3);  // the seeds are committed with the harness
  size_t n = 0;
  for (const auto* list : {&corpus, &regressions}) {
    for (const fs::path& p : *list) {
      const std::string data = readFile(p);
      // A crash aborts the process before Catch can report: name the input first.
      std::fprintf(stderr, "fuzz replay: %s\n", p.c_str());
      run(reinterpret_cast<const uint8_t*>(data.data()), data.size());
      ++n;
    }
  }
  CHECK(n == corpus.size() + regressions.size());
}

}  // namespace

TEST_CASE("fuzz replay: fuzz-http-stream", "[fuzz]") { replay("fuzz-http-stream", fuzz::httpStream); }
TEST_CASE("fuzz replay: fuzz-recognizer", "[fuzz]") { replay("fuzz-recognizer", fuzz::recognizer); }
TEST_CASE("fuzz replay: fuzz-conn-tracker", "[fuzz]") { replay("fuzz-conn-tracker", fuzz::connTracker); }
TEST_CASE("fuzz replay: fuzz-config", "[fuzz]") { replay("fuzz-config", fuzz::config); }
TEST_CASE("fuzz replay: fuzz-docker-json", "[fuzz]") { replay("fuzz-docker-json", fuzz::dockerJson); }
TEST_CASE("fuzz replay: fuzz-api", "[fuzz]") { replay("fuzz-api", fuzz::api); }
TEST_CASE("fuzz replay: fuzz-http-head", "[fuzz]") { replay("fuzz-http-head", fuzz::httpHead); }
TEST_CASE("fuzz replay: fuzz-zfs-output", "[fuzz]") { replay("fuzz-zfs-output", fuzz::zfsOutput); }
TEST_CASE("fuzz replay: fuzz-size", "[fuzz]") { replay("fuzz-size", fuzz::size); }
TEST_CASE("fuzz replay: fuzz-authz", "[fuzz]") { replay("fuzz-authz", fuzz::authz); }
TEST_CASE("fuzz replay: fuzz-mount-options", "[fuzz]") { replay("fuzz-mount-options", fuzz::mountOptions); }

// Not a test: writes fuzz-zfs-output's hand-* seeds (the spec's and verified
// outputs of ZFS 2.1). Hidden ([.]), run by hand with '[.fuzz-seeds]'.
TEST_CASE("fuzz seeds: zfs CLI outputs", "[.fuzz-seeds]") {
  const std::vector<std::tuple<std::string, uint8_t, std::string>> seeds = {
      {"hand-list", 0,
       "tank\t/tank\t16948224\t41772032\ntank/home\t/tank/home\t16806912\t41772032\n"
       "tank/legacy\tlegacy\t1\t2\ntank/vol\t-\t1\t2\ntank/off\tnone\t1\t2\n"},
      {"hand-list-huge", 0, "fz\t/fz\t18446744073709551615\t18446744073709551615\n"},
      {"hand-userspace-spec", 1,
       "POSIX User\t0\t1536\t0\t1\t0\nPOSIX User\t1001\t3150848\t4194304\t6\t10\n"
       "POSIX User\t1003\t0\t2097152\t-\t-\nPOSIX User\t70000\t68608\t0\t6\t0\n"},
      {"hand-userspace-four", 1, "POSIX User\t1002\t1073741824\t0\nPOSIX User\t1002\t1\t1\r\n"},
      {"hand-userspace-names", 1, "POSIX User\talice\t16781824\t0\t1\t0\nSMB User\tS-1-5\t1\t0\n"},
      {"hand-get", 2, "1073741824\n21474836480\n"},
      {"hand-get-none", 2, "0\nnone\n"},
      {"hand-name", 3, "rpool/ROOT/debian_1.0:x-y"},
      {"hand-name-option", 3, "-o"},
  };
  for (const auto& [name, kind, text] : seeds) {
    const fs::path dir = fs::path(kFuzzDir) / "fuzz-zfs-output" / "corpus";
    fs::create_directories(dir);
    std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
    f << fuzz::encodeZfsOutput(kind, text);
    REQUIRE(f.good());
  }
}

// Not a test: writes the capture-* seeds. Hidden ([.]), run by hand.
TEST_CASE("fuzz seeds: write the corpora's capture seeds", "[.fuzz-seeds]") {
  auto write = [](const std::string& target, const std::string& name, const std::string& data) {
    const fs::path dir = fs::path(kFuzzDir) / target / "corpus";
    fs::create_directories(dir);
    std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
    f << data;
    REQUIRE(f.good());
  };
  for (const std::string& name : captures::names()) {
    const captures::Capture cap = captures::load(name);
    const std::string stem = "capture-" + fs::path(name).stem().string();
    std::vector<fuzz::Chunk> chunks;
    for (const auto& c : cap.chunks) chunks.push_back({c.tx, c.data, c.len});
    write("fuzz-http-stream", stem, fuzz::encodeHttpStream(chunks));
    write("fuzz-conn-tracker", stem, fuzz::encodeTrackerSession(chunks));
    // The exchanges the stream parser finds, one recogniser seed each.
    std::vector<std::string> exchanges;
    HttpConnection conn([&](const HttpExchange& x) { exchanges.push_back(fuzz::encodeExchange(x)); });
    for (const auto& c : cap.chunks) {
      if (c.tx) {
        conn.onSend(c.data, c.len, c.ts);
      } else {
        conn.onRecv(c.data, c.len, c.ts);
      }
    }
    conn.onClose(cap.chunks.empty() ? 1 : cap.chunks.back().ts + 1);
    for (size_t i = 0; i < exchanges.size(); ++i)
      write("fuzz-recognizer", stem + "-" + std::to_string(i), exchanges[i]);
  }

  // Hand-made seeds: what the captures do not show.
  const std::string kId(64, 'a');
  const std::string create_body = "{\"Id\":\"" + kId + "\",\"Warnings\":[]}";
  const std::string create_req =
      "POST /v1.41/containers/create?name=web HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
      "Content-Length: 17\r\n\r\n{\"Image\":\"bb:1\"}\n";
  const std::string create_resp = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: " +
                                  std::to_string(create_body.size()) + "\r\n\r\n" + create_body;
  const std::string ping = "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n";
  const std::string pong = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";
  const std::string chunked_resp =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "1f\r\n{\"status\":\"Loaded image: bb:1\"}\r\n0\r\n\r\n";
  const std::string load_req =
      "POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n"
      "Content-Length: 1000000\r\n\r\n";
  const std::map<std::string, std::vector<fuzz::Chunk>> streams = {
      // Two requests pipelined in one write, answered in one read.
      {"hand-pipelined", {{true, ping + create_req, 0}, {false, pong + create_resp, 0}}},
      // The reply read before the write that caused it is reported (two threads).
      {"hand-early-reply", {{false, create_resp, 0}, {true, create_req, 0}}},
      // A 1 MB upload of which the probe copied nothing, then a chunked reply.
      {"hand-upload-gap", {{true, load_req, 0}, {true, "", 1000000}, {false, chunked_resp, 0}}},
      // Garbage, then a request at a call boundary: resync.
      {"hand-garbage-resync",
       {{true, "\x16\x03\x01garbage\r\n\r\n", 0}, {true, create_req, 0}, {false, create_resp, 0}}},
      // Hijack: 101, then raw bytes both ways.
      {"hand-upgrade",
       {{true,
         "POST /v1.41/containers/x/attach?stream=1 HTTP/1.1\r\nConnection: Upgrade\r\n"
         "Upgrade: tcp\r\n\r\n",
         0},
        {false, "HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n", 0},
        {false, std::string("\x01\0\0\0\0\0\0\x05hello", 13), 0},
        {true, "input\n", 0}}},
      // A reply delimited by close.
      {"hand-close-delimited", {{true, ping, 0}, {false, "HTTP/1.0 200 OK\r\n\r\nbody until close", 0}}},
  };
  for (const auto& [name, chunks] : streams) {
    std::vector<fuzz::Chunk> cs = chunks;
    for (auto& c : cs) c.total = std::max<uint64_t>(c.total, c.data.size());
    write("fuzz-http-stream", name, fuzz::encodeHttpStream(cs));
    write("fuzz-conn-tracker", name, fuzz::encodeTrackerSession(cs));
  }
  // The tracker with two connections of two processes interleaved, an exit, a
  // second connect on a reused fd, and events for a connection never seen.
  {
    fuzz::Writer w;
    w.u8(1);  // limit 2
    auto event = [&](uint8_t op, uint8_t conn, uint8_t tgid, uint8_t fd) {
      w.u8(op).u8(conn).u8(tgid).u8(tgid).u8(7).u8(fd);
    };
    event(0, 1, 1, 3), w.str("docker");
    event(0, 2, 2, 3), w.str("curl");
    event(1, 1, 1, 3), w.str(create_req);
    event(1, 2, 2, 3), w.str(ping);
    event(2, 2, 2, 3), w.str(pong);
    event(2, 1, 1, 3), w.str(create_resp);
    event(4, 0, 2, 0);                     // tgid 2 exits
    event(0, 3, 1, 3), w.str("docker");    // tgid 1 again, same fd, a new connection
    event(0, 4, 3, 4), w.str("docker");    // a third: evicts the oldest
    event(1, 5, 1, 3), w.str(create_req);  // unknown connection
    event(3, 3, 1, 3);
    write("fuzz-conn-tracker", "hand-interleaved", w.data());
  }
  // Configs.
  const std::map<std::string, std::string> configs = {
      {"hand-default", readFile(fs::path(DOCKQUOTA_TEST_DATA) / "../../deploy/config.default.json")},
      {"hand-empty", "{}"},
      {"hand-comments", "// comment\n{ /* c */ \"listen_port\": 9000, \"log_level\": \"debug\" }"},
      {"hand-full", R"({"listen_address": "0.0.0.0", "listen_port": 8436, "api_key": "k",
        "docker_socket": "/var/run/docker.sock", "watch_sockets": ["/var/run/docker.sock"],
        "docker_binaries": ["/usr/bin/docker"], "database": "/tmp/x.db", "capture_bytes": 512,
        "ringbuf_kib": 4096, "poll_interval_ms": 5, "bill_root_to_login_uid": false, "probe_hook": "socket",
        "docker_quota_enabled": true, "docker_quota_reserved_bytes": 1073741824, "docker_data_root": "/var/lib/docker",
        "usage_interval_s": 30, "default_apply_interval_s": 60, "project_quotas": "off",
        "project_quota_mode": "container", "project_id_min": 1000, "project_id_max": 2000,
        "container_quota_default_mib": 1024, "growth_probe": false, "growth_probe_hook": "auto",
        "growth_signal_mib": 8, "project_sync_interval_s": 5, "enforcement": "enforce",
        "enforcement_order": "largest", "enforcement_grace_s": 0, "enforcement_stop_timeout_s": 3,
        "enforcement_remove_volumes": false, "enforcement_interval_s": 10,
        "enforcement_exempt_users": ["root", "1000"], "quota_warn_percent": 90, "event_retention_days": 7,
        "host_id": "h1", "master_url": "https://master:8000", "master_secret": "s",
        "smtp_url": "smtp://localhost:25", "smtp_from": "q@example.org", "email_to": "{user}@example.org",
        "email_addresses": {"alice": "a@example.org"}, "email_burst_s": 30, "email_interval_s": 60,
        "email_max_per_hour": 10})"},
      {"hand-wrong-type", R"({"listen_port": "8436"})"},
      {"hand-unknown-key", R"({"listen_prot": 1})"},
  };
  for (const auto& [name, text] : configs) write("fuzz-config", name, text);
  // Docker JSON.
  using fuzz::JsonKind;
  const std::vector<std::tuple<std::string, JsonKind, std::string>> json_seeds = {
      {"hand-containers", JsonKind::ContainerList,
       R"([{"Id": ")" + kId + R"(", "Names": ["/web-1"], "Image": "bb:1", "ImageID": "sha256:aaa",
           "Labels": {"qman.user": "alice"}, "State": "exited", "SizeRw": 4096,
           "Mounts": [{"Type": "volume", "Name": "v1"}]}, {"Id": "b", "Labels": null}])"},
      {"hand-images", JsonKind::ImageList,
       R"([{"Id": "sha256:bbb", "RepoTags": ["bb:1", "<none>:<none>"], "Size": 1000, "Created": 1700000000},
           {"Id": "sha256:ccc", "RepoTags": null, "Size": -1}])"},
      {"hand-volumes", JsonKind::VolumeList,
       R"({"Volumes": [{"Name": "v1", "Mountpoint": "/var/lib/docker/volumes/v1/_data",
           "Labels": {"qman.user": "bob"}, "UsageData": {"Size": -1, "RefCount": 1}}], "Warnings": null})"},
      {"hand-volumes-null", JsonKind::VolumeList, R"({"Volumes": null})"},
      {"hand-df", JsonKind::DiskUsage,
       R"({"LayersSize": 1, "Images": [], "Containers": [{"Id": "a", "Names": ["/a"], "SizeRw": 12}],
           "Volumes": [{"Name": "v", "UsageData": {"Size": 99, "RefCount": 0}}], "BuildCache": []})"},
      {"hand-inspect", JsonKind::Dom, R"({"Id": ")" + kId + R"(", "Name": "/web", "Image": "sha256:aaa",
           "Config": {"Labels": {"qman.user": "alice"}},
           "Mounts": [{"Type": "volume", "Name": "v1", "Destination": "/data"}],
           "GraphDriver": {"Data": {"UpperDir": "/var/lib/docker/overlay2/x/diff"}, "Name": "overlay2"}})"},
      {"hand-event", JsonKind::Dom,
       R"({"status": "create", "id": "abc", "Type": "container", "Action": "create",
           "Actor": {"ID": "abc", "Attributes": {"name": "web", "qman.user": "alice"}},
           "scope": "local", "time": 1700000000, "timeNano": 1700000000000000000})"},
      {"hand-numbers", JsonKind::ContainerList,
       R"([{"Id": "x", "SizeRw": 9223372036854775808}, {"Id": "y", "SizeRw": 1.5e3}, {"Id": "z", "SizeRw": -0}])"},
  };
  for (const auto& [name, kind, text] : json_seeds) write("fuzz-docker-json", name, fuzz::encodeDockerJson(kind, text));
  // The HTTP API: every route, with good and bad input (one request each).
  {
    using R = fuzz::ApiRequest;
    const std::string kJson = "application/json";
    const std::string ff = "\xff", cut_e = "a\xc3";
    std::string long_reason = "a";
    for (int i = 0; i < 300; i++) long_reason += "\xc3\xa9";
    const std::vector<std::pair<std::string, R>> api_seeds = {
        {"hand-healthz", {.auth = 2, .path = "/healthz"}},
        {"hand-healthz-head", {.method = "HEAD", .path = "/healthz"}},
        {"hand-metrics", {.path = "/metrics"}},
        {"hand-metrics-noauth", {.auth = 2, .path = "/metrics"}},
        {"hand-containers", {.path = "/api/v1/containers"}},
        {"hand-images-badauth", {.auth = 3, .auth_value = "Basic " + ff, .path = "/api/v1/images"}},
        {"hand-volumes", {.path = "/api/v1/volumes"}},
        {"hand-growth", {.path = "/api/v1/growth"}},
        {"hand-projects", {.path = "/api/v1/projects"}},
        {"hand-project-limit",
         {.method = "PUT",
          .path = "/api/v1/projects/containers/alice-c",
          .body = R"({"limit_bytes": 1048576})",
          .content_type = kJson}},
        {"hand-events", {.path = "/api/v1/events", .params = {{"after", "0"}, {"limit", "5"}, {"uid", "2001"}}}},
        {"hand-events-bad", {.path = "/api/v1/events", .params = {{"after", "-1"}, {"limit", "99999999999999999999"}}}},
        {"hand-enforcement", {.path = "/api/v1/enforcement"}},
        {"hand-enforcement-user", {.path = "/api/v1/enforcement/users/alice"}},
        {"hand-enforcement-user-ff", {.path = "/api/v1/enforcement/users/" + ff}},
        {"hand-sweep", {.method = "POST", .path = "/api/v1/enforcement/sweep"}},
        {"hand-exemptions", {.path = "/api/v1/exemptions"}},
        {"hand-exempt-user",
         {.method = "PUT",
          .path = "/api/v1/exemptions/users/bob",
          .body = R"({"reason": "build server"})",
          .content_type = kJson}},
        {"hand-exempt-user-long",
         {.method = "PUT",
          .path = "/api/v1/exemptions/users/carol",
          .body = nlohmann::json{{"reason", long_reason}}.dump(),
          .content_type = kJson}},
        {"hand-exempt-container-nobody", {.method = "PUT", .path = "/api/v1/exemptions/containers/bob-c"}},
        {"hand-exempt-container-badjson",
         {.method = "PUT",
          .path = "/api/v1/exemptions/containers/bob-c",
          .body = "{\"reason\": \"" + cut_e + "\"}",
          .content_type = kJson}},
        {"hand-unexempt-ff", {.method = "DELETE", .path = "/api/v1/exemptions/containers/" + ff}},
        {"hand-unexempt-user", {.method = "DELETE", .path = "/api/v1/exemptions/users/2002"}},
        {"hand-ping", {.path = "/remote-api/ping"}},
        {"hand-ping-post", {.method = "POST", .path = "/remote-api/ping", .body = "{}", .content_type = kJson}},
        {"hand-users", {.path = "/remote-api/users"}},
        {"hand-resolve", {.path = "/remote-api/users/resolve", .params = {{"username", "caf\xe9"}}}},
        {"hand-quotas", {.path = "/remote-api/quotas"}},
        {"hand-quotas-options", {.method = "OPTIONS", .path = "/remote-api/quotas"}},
        {"hand-quota-user", {.path = "/remote-api/quotas/users/2001"}},
        {"hand-quota-user-huge", {.path = "/remote-api/quotas/users/99999999999999999999"}},
        {"hand-quota-by-name-ff", {.path = "/remote-api/quotas/users/by-name/" + ff}},
        {"hand-put-quota",
         {.method = "PUT",
          .path = "/remote-api/quotas/users/2001",
          .params = {{"device", "docker"}},
          .body = R"({"block_hard_limit": 1048576, "block_soft_limit": 1048576})",
          .content_type = kJson,
          .content_length = true}},
        {"hand-put-quota-ff",
         {.method = "PUT",
          .path = "/remote-api/quotas/users/2001",
          .params = {{"device", ff}},
          .body = R"({"block_hard_limit": 1})",
          .content_type = kJson}},
        {"hand-put-quota-negative",
         {.method = "PUT",
          .path = "/remote-api/quotas/users/2001",
          .params = {{"device", "docker"}},
          .body = R"({"block_hard_limit": -1})",
          .content_type = kJson}},
        {"hand-put-quota-huge",
         {.method = "PUT",
          .path = "/remote-api/quotas/users/2001",
          .params = {{"device", "docker"}},
          .body = R"({"block_hard_limit": 184467440737095516160})",
          .content_type = kJson}},
        {"hand-defaults", {.path = "/remote-api/quotas/defaults", .params = {{"device", "docker"}}}},
        {"hand-defaults-ff", {.path = "/remote-api/quotas/defaults", .params = {{"device", ff}}}},
        {"hand-put-defaults",
         {.method = "PUT",
          .path = "/remote-api/quotas/defaults",
          .params = {{"device", "docker"}},
          .body = R"({"block_hard_limit": 2048})",
          .content_type = kJson}},
        {"hand-batch",
         {.method = "POST",
          .path = "/remote-api/quotas/batch",
          .body = R"({"device": "docker", "block_hard_limit": 4096, "preserve_if_nonzero": true})",
          .content_type = kJson}},
        {"hand-batch-text",
         {.method = "POST", .path = "/remote-api/quotas/batch", .body = "device=docker", .content_type = "text/plain"}},
        {"hand-docker-containers", {.path = "/remote-api/docker/containers"}},
        {"hand-docker-images", {.path = "/remote-api/docker/images"}},
        {"hand-docker-volumes", {.path = "/remote-api/docker/volumes"}},
        {"hand-inspect", {.path = "/remote-api/docker/inspect", .params = {{"kind", "container"}, {"id", "alice-c"}}}},
        {"hand-attribution-detail",
         {.path = "/remote-api/docker/usage/attribution-detail",
          .params = {{"entity_type", "container"}, {"container_id", "evil-c"}}}},
        {"hand-attribution-detail-ff",
         {.path = "/remote-api/docker/usage/attribution-detail",
          .params = {{"entity_type", "container"}, {"container_id", ff}}}},
        {"hand-review-queue", {.path = "/remote-api/docker/usage/review-queue", .params = {{"page_size", "0"}}}},
        {"hand-usage-events", {.path = "/remote-api/docker/usage/events", .params = {{"include_used", "true"}}}},
        {"hand-attribute",
         {.method = "POST",
          .path = "/remote-api/docker/usage/attribute",
          .body = R"({"entity_type": "volume", "volume_name": "v2", "uid": 2003, "cascade": true,
                                       "manual_resolver": "admin"})",
          .content_type = kJson}},
        {"hand-attribute-negative",
         {.method = "POST",
          .path = "/remote-api/docker/usage/attribute",
          .body = R"({"entity_type": "image", "image_id": "base:1", "uid": -5})",
          .content_type = kJson}},
        {"hand-unattribute",
         {.method = "DELETE",
          .path = "/remote-api/docker/usage/attribute",
          .params = {{"entity_type", "volume"}, {"volume_name", "v2"}, {"cascade", "maybe"}}}},
        {"hand-not-found", {.path = "/remote-api/" + ff}},
        {"hand-brew", {.method = "BREW", .path = "/remote-api/quotas"}},
    };
    for (const auto& [name, r] : api_seeds) write("fuzz-api", name, fuzz::encodeApiRequest(r));
  }
}
