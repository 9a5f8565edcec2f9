// SPDX-License-Identifier: Apache-2.0
// qman-bench: GET /remote-api/quotas with 1,000 users and 10,000 attributed
// containers in a real Store file, served over loopback from the usage
// snapshot, as the qman master calls it. Targets: p99 <= 10 ms, RSS <= 32 MiB.
// With --docker-sock, also times `docker system df -v` (what qman's Python
// slave runs per request) and one DockerUsageSource measurement on that host.
//
// usage: qman-bench [--users N] [--containers N] [--requests N] [--docker-sock SOCK]
#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
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

// kB from /proc/self/status.
long procStatus(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) return std::atol(line.c_str() + strlen(key) + 1);
  }
  return -1;
}

double seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

// Bytes malloc has handed out and not had back, in MiB.
double heapInUse() { return static_cast<double>(mallinfo2().uordblks + mallinfo2().hblkhd) / (1 << 20); }

}  // namespace

int main(int argc, char** argv) {
  int users = 1000, containers = 10000, requests = 2000;
  std::string docker_sock;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--users")
      users = std::atoi(next().c_str());
    else if (a == "--containers")
      containers = std::atoi(next().c_str());
    else if (a == "--requests")
      requests = std::atoi(next().c_str());
    else if (a == "--docker-sock")
      docker_sock = next();
    else {
      fprintf(stderr, "usage: %s [--users N] [--containers N] [--requests N] [--docker-sock SOCK]\n", argv[0]);
      return 2;
    }
  }
  log::setLevel(log::Level::Warning);
  printf("RSS at start (binary and libraries): %.1f MiB\n", procStatus("VmRSS:") / 1024.0);
  char tmpl[] = "/tmp/dq-qbench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);

  // --- fill the store: users, containers, images, volumes ----------------------
  auto t0 = Clock::now();
  auto opened = Store::open(dir + "/bench.db");
  if (!opened) {
    fprintf(stderr, "%s\n", opened.error().message.c_str());
    return 1;
  }
  Store& store = **opened;
  UsageFigures f;
  f.data_root = "/var/lib/docker";
  f.measured_at = 1;
  auto hex = [](int n, char kind) {
    char buf[65];
    snprintf(buf, sizeof buf, "%c%063d", kind, n);
    return std::string(buf);
  };
  auto uidOf = [&](int i) { return static_cast<uint32_t>(2000 + i % users); };
  const int images = users / 2, volumes = users;
  for (int i = 0; i < images; i++) {
    const std::string id = "sha256:" + hex(i, 'a');
    must(store.objects().noteSeen(ObjectKind::Image, id, "img" + std::to_string(i) + ":1", "", std::nullopt, 10 + i),
         "noteSeen");
    Evidence ev;
    ev.uid = ev.gid = uidOf(i);
    ev.method = "image_pull";
    ev.request_time = ev.time = 10 + i;
    must(store.objects().attribute(ObjectKind::Image, id, ev, true), "attribute");
    // A shared base layer and one own layer per image.
    f.images.push_back({id,
                        {"img" + std::to_string(i) + ":1"},
                        3000000 + 1000 * static_cast<uint64_t>(i),
                        10.0 + i,
                        {"sha256:base", "sha256:" + hex(i, 'l')}});
    f.layer_sizes["sha256:" + hex(i, 'l')] = 1000 * static_cast<uint64_t>(i);
  }
  f.layer_sizes["sha256:base"] = 3000000;
  std::vector<SharedText> image_ids;  // the containers share them, as DockerUsageSource's do
  for (int i = 0; i < images; i++) image_ids.emplace_back("sha256:" + hex(i, 'a'));
  for (int i = 0; i < containers; i++) {
    const std::string id = hex(i, 'c');
    must(store.objects().noteSeen(ObjectKind::Container, id, "c" + std::to_string(i), "sha256:" + hex(i % images, 'a'),
                                  std::nullopt, 1000 + i),
         "noteSeen");
    Evidence ev;
    ev.uid = ev.gid = uidOf(i);
    ev.pid = 1000 + i;
    ev.comm = "docker";
    ev.exe = "/usr/bin/docker";
    ev.method = "container_create";
    ev.request_time = ev.time = 1000 + i;
    must(store.objects().attribute(ObjectKind::Container, id, ev, true), "attribute");
    f.addContainer(id, "c" + std::to_string(i), image_ids[i % images], "running",
                   4096 * static_cast<uint64_t>(i % 97 + 1));
  }
  for (int i = 0; i < volumes; i++) {
    const std::string name = "vol" + std::to_string(i);
    must(store.objects().noteSeen(ObjectKind::Volume, name, name, "", std::nullopt, 5000 + i), "noteSeen");
    Evidence ev;
    ev.uid = ev.gid = uidOf(i);
    ev.method = "volume_create";
    ev.request_time = ev.time = 5000 + i;
    must(store.objects().attribute(ObjectKind::Volume, name, ev, true), "attribute");
    f.volumes.push_back({name, 65536, 65536, 1, ""});
  }
  auto book = QuotaBook::load(store);
  QuotaBook::Limits limits;
  for (int i = 0; i < users; i++) limits[uidOf(i)] = 10485760;
  must((*book)->setLimits(limits), "setLimits");
  std::vector<PasswdUser> passwd;
  for (int i = 0; i < users; i++) passwd.push_back({uidOf(i), "user" + std::to_string(i)});
  UserDirectory dirusers([passwd] { return passwd; });
  malloc_trim(0);  // the fill loop's garbage is the benchmark's, not the agent's
  printf("store: %d users, %d containers, %d images, %d volumes filled in %.1f s (RSS %.1f MiB)\n", users, containers,
         images, volumes, seconds(t0), procStatus("VmRSS:") / 1024.0);
  const double heap_before = heapInUse() - [&] {
    // The figures are the benchmark's until the accountant takes them.
    double bytes = static_cast<double>(f.containers.capacity() * sizeof(ContainerFigure) +
                                       f.volumes.capacity() * sizeof(VolumeFigure));
    for (const auto& c : f.containers) bytes += static_cast<double>(c.id.size() + c.name.size());
    return bytes / (1 << 20);
  }();

  // --- the snapshot and the server -----------------------------------------------
  UsageAccountant usage(store, std::make_unique<SyntheticSource>(std::move(f)), {});
  t0 = Clock::now();
  if (auto s = usage.refresh(); !s) {
    fprintf(stderr, "%s\n", s.error().message.c_str());
    return 1;
  }
  printf(
      "usage snapshot (store lists + accounting, background): %.1f ms (RSS %.1f MiB; heap kept by the figures, "
      "the snapshot and SQLite's cache: ~%.1f MiB)\n",
      seconds(t0) * 1000, procStatus("VmRSS:") / 1024.0, heapInUse() - heap_before);
  QmanContext ctx{store, **book, usage, dirusers, nullptr, nullptr, {}};
  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "bench", .bill_root_to_login_uid = true, .threads = 4},
                store, nullptr);
  installQmanRoutes(api, ctx);
  auto port = api.start();
  if (!port) {
    fprintf(stderr, "%s\n", port.error().message.c_str());
    return 1;
  }

  httplib::Client cli("127.0.0.1", *port);
  cli.set_basic_auth("api", "bench");
  cli.set_keep_alive(true);
  std::vector<double> lat;
  size_t bytes = 0;
  for (int i = 0; i < requests + 50; i++) {
    auto t = Clock::now();
    auto r = cli.Get("/remote-api/quotas");
    const double s = seconds(t);
    if (!r || r->status != 200) {
      fprintf(stderr, "request failed\n");
      return 1;
    }
    bytes = r->body.size();
    if (i >= 50) lat.push_back(s * 1000);  // after warm-up
  }
  // The same route with the serialized answer rebuilt every time (as after
  // every measurement or limit change).
  std::vector<double> cold;
  for (int i = 0; i < requests / 4; i++) {
    ctx.cache->body.reset();
    auto t = Clock::now();
    auto r = cli.Get("/remote-api/quotas");
    if (!r || r->status != 200) return 1;
    cold.push_back(seconds(t) * 1000);
  }
  const long rss = procStatus("VmRSS:"), hwm = procStatus("VmHWM:");
  printf(
      "GET /remote-api/quotas: %d requests, %zu users listed, %zu bytes each: p50 %.2f ms, p99 %.2f ms, max %.2f ms "
      "(target p99 <= 10 ms)\n",
      requests, usage.snapshot()->users.size(), bytes, pct(lat, 0.50), pct(lat, 0.99), pct(lat, 1.0));
  printf("GET /remote-api/quotas, answer rebuilt each time: %zu requests: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
         cold.size(), pct(cold, 0.50), pct(cold, 0.99), pct(cold, 1.0));
  printf("RSS: %.1f MiB now, %.1f MiB peak, server and client in one process (target <= 32 MiB)\n", rss / 1024.0,
         hwm / 1024.0);
  api.stop();

  if (!docker_sock.empty()) {
    std::vector<double> df;
    for (int i = 0; i < 5; i++) {
      auto t = Clock::now();
      const std::string cmd = "docker -H unix://" + docker_sock + " system df -v >/dev/null";
      if (std::system(cmd.c_str()) != 0) {
        fprintf(stderr, "docker system df -v failed\n");
        break;
      }
      df.push_back(seconds(t) * 1000);
    }
    if (!df.empty())
      printf("docker system df -v (qman's slave, per request): median %.1f ms over %zu runs\n", pct(df, 0.5),
             df.size());
    DockerClient docker(docker_sock);
    DockerUsageSource src(docker);
    std::vector<double> m;
    for (int i = 0; i < 5; i++) {
      auto t = Clock::now();
      auto r = src.measure();
      if (!r) {
        fprintf(stderr, "%s\n", r.error().message.c_str());
        break;
      }
      m.push_back(seconds(t) * 1000);
    }
    if (!m.empty()) printf("DockerUsageSource::measure (ours, background, every 60 s): median %.1f ms\n", pct(m, 0.5));
  }
  std::system(("rm -rf " + dir).c_str());
  return 0;
}
