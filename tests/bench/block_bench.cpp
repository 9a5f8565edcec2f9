// SPDX-License-Identifier: Apache-2.0
// block-bench: the block-device side of the qman slave.
//
//   block-bench http [--users N] [--requests N]
//     GET /remote-api/quotas over loopback with N users on 3 block devices
//     (in-memory devices of N entries each, user and group tables) and the
//     docker device (N users with limits): p50/p99, once from the cached
//     answer and once with every device's text rebuilt per request (as after
//     each background refresh). Target p99 <= 10 ms.
//   block-bench refresh [--rounds N]
//     One QuotaDevices refresh of every ext4/XFS mount with usrquota/grpquota
//     on this host (real quotactl, one Q_GETNEXTQUOTA pass per type), timed,
//     next to `repquota -a -u -g -n` (quota-tools). Target <= 50 ms at 1,000
//     ids per device. Run in vmtest after tests/bench/block_bench.sh made the
//     filesystems.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <httplib.h>

#include "agent/base/log.h"
#include "agent/base/mountinfo.h"
#include "agent/quota/block_quota.h"
#include "agent/quota/quota_devices.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "api/http_api.h"
#include "api/qman_api.h"
#include "api/qman_devices.h"
#include "tests/bench/bench_util.h"

using namespace dockquota;
using bench::must;
using bench::pct;
using Clock = std::chrono::steady_clock;

namespace {

double ms(Clock::time_point a) { return std::chrono::duration<double, std::milli>(Clock::now() - a).count(); }

// A device of `users` user and group entries, read from memory.
class MemoryDevice : public QuotaDevice {
 public:
  MemoryDevice(std::string name, int users) : name_(std::move(name)) {
    s_.name = name_;
    s_.mount_points = {"/srv" + name_};
    s_.fstype = "ext4";
    s_.opts = {"rw", "relatime", "quota", "usrquota", "grpquota"};
    s_.usage = {1ull << 40, 1ull << 39, 1ull << 39, 50.0};
    s_.users = {true, "vfsv1", QuotaInfo{604800, 604800, 65536}, {}};
    for (int i = 0; i < users; i++) {
      const uint32_t id = 2000 + static_cast<uint32_t>(i);
      s_.users.entries.push_back(QuotaFigures{id, 10485760, 8388608, uint64_t(i) * 1048576, 100000, 50000,
                                              uint64_t(i) * 10, i % 7 == 0 ? 1780302400u : 0u, 0});
    }
    s_.groups = s_.users;
  }
  const std::string& name() const override { return name_; }
  const char* kind() const override { return "block"; }
  bool singleLimit() const override { return false; }
  Result<DeviceSnapshot> read() override { return s_; }
  Result<std::optional<QuotaFigures>> readUser(uint32_t) override { return std::optional<QuotaFigures>{}; }
  Status setUserLimits(uint32_t, const LimitsUpdate&) override { return {}; }
  Health health() const override { return {}; }

 private:
  std::string name_;
  DeviceSnapshot s_;
};

class EmptySource : public UsageSource {
 public:
  const char* name() const override { return "empty"; }
  Result<UsageFigures> measure() override {
    UsageFigures f;
    f.data_root = "/var/lib/docker";
    f.measured_at = 1;
    return f;
  }
};

std::vector<double> timeGets(httplib::Client& cli, int n, const std::function<void()>& before, size_t& bytes) {
  std::vector<double> lat;
  for (int i = 0; i < n; i++) {
    if (before) before();
    auto t = Clock::now();
    auto r = cli.Get("/remote-api/quotas");
    const double v = ms(t);
    if (!r || r->status != 200) {
      fprintf(stderr, "request failed\n");
      exit(1);
    }
    bytes = r->body.size();
    lat.push_back(v);
  }
  return lat;
}

int httpBench(int users, int requests) {
  char tmpl[] = "/tmp/dq-bbench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto opened = Store::open(dir + "/bench.db");
  if (!opened) return fprintf(stderr, "%s\n", opened.error().message.c_str()), 1;
  Store& store = **opened;
  auto book = QuotaBook::load(store);
  QuotaBook::Limits limits;
  std::vector<PasswdUser> passwd;
  for (int i = 0; i < users; i++) {
    limits[2000 + i] = 10485760;
    passwd.push_back({static_cast<uint32_t>(2000 + i), "user" + std::to_string(i)});
  }
  must((*book)->setLimits(limits), "setLimits");
  UserDirectory dirusers([passwd] { return passwd; });
  UsageAccountant usage(store, std::make_unique<EmptySource>(), {});
  must(usage.refresh(), "usage");
  QuotaDevices devices({});
  for (const char* n : {"/dev/nvme0n1p2", "/dev/sdb1", "/dev/mapper/vg0-scratch"})
    devices.add(std::make_unique<MemoryDevice>(n, users));
  devices.refreshNow();
  QmanContext ctx{store, **book, usage, dirusers, nullptr, nullptr, {}};
  ctx.devices = &devices;
  ctx.candidates = [passwd] { return Candidates{passwd, passwd}; };
  // As app/quota_wiring.cpp: each refresh builds the list's text on the refresh thread.
  std::vector<double> builds;
  devices.setRefreshListener([&] {
    auto t = Clock::now();
    (void)ctx.device_cache->texts(*devices.view(), dirusers, ctx.candidates);
    builds.push_back(ms(t));
  });
  ApiServer api({.address = "127.0.0.1", .port = 0, .api_key = "bench", .bill_root_to_login_uid = true, .threads = 4},
                store, nullptr);
  installQmanRoutes(api, ctx);
  auto port = api.start();
  if (!port) return fprintf(stderr, "%s\n", port.error().message.c_str()), 1;
  httplib::Client cli("127.0.0.1", *port);
  cli.set_basic_auth("api", "bench");
  cli.set_keep_alive(true);
  size_t bytes = 0;
  timeGets(cli, 50, {}, bytes);  // warm-up
  auto warm = timeGets(cli, requests, {}, bytes);
  // Every request after a refresh (whose thread built the devices' text) and
  // with docker's text rebuilt: the merge is the request's.
  builds.clear();
  auto cold = timeGets(
      cli, requests / 4,
      [&] {
        devices.refreshNow();
        ctx.cache->body.reset();
      },
      bytes);
  printf("GET /remote-api/quotas, %d users on 3 block devices (users+groups) + docker, %zu bytes:\n", users, bytes);
  printf("  from memory (cached text):   %d requests: p50 %.2f ms, p99 %.2f ms, max %.2f ms (target p99 <= 10 ms)\n",
         requests, pct(warm, 0.5), pct(warm, 0.99), pct(warm, 1.0));
  printf("  first after each refresh:  %d requests: p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", requests / 4,
         pct(cold, 0.5), pct(cold, 0.99), pct(cold, 1.0));
  printf("  (the refresh thread's text build: p50 %.2f ms, max %.2f ms)\n", pct(builds, 0.5), pct(builds, 1.0));
  api.stop();
  std::system(("rm -rf " + dir).c_str());
  return 0;
}

int refreshBench(int rounds) {
  auto table = readMountinfo();
  if (!table) return fprintf(stderr, "%s\n", table.error().message.c_str()), 1;
  QuotaDevices devices({});
  std::vector<BlockQuotaDevice*> block;
  for (const auto& m : discoverBlockMounts(*table, {})) {
    auto d = std::make_unique<BlockQuotaDevice>(m, CandidateIds{});
    block.push_back(d.get());
    devices.add(std::move(d));
  }
  if (block.empty()) return fprintf(stderr, "no ext4/XFS mount with usrquota or grpquota here\n"), 1;
  std::vector<double> ours, theirs;
  for (int i = 0; i < rounds; i++) ours.push_back(devices.refreshNow() * 1000);
  size_t ids = 0;
  for (const auto& d : devices.view()->devices) ids += d->users.entries.size() + d->groups.entries.size();
  uint64_t calls = 0;
  for (auto* b : block) calls += b->lastRead().calls;
  for (int i = 0; i < rounds; i++) {
    auto t = Clock::now();
    if (std::system("repquota -a -u -g -n >/dev/null 2>&1") != 0) return fprintf(stderr, "repquota failed\n"), 1;
    theirs.push_back(ms(t));
  }
  printf("refresh of %zu block devices, %zu user+group entries, %llu quotactl calls per refresh:\n", block.size(), ids,
         static_cast<unsigned long long>(calls));
  printf("  QuotaDevices::refreshNow(): %d rounds: p50 %.2f ms, max %.2f ms (target <= 50 ms)\n", rounds,
         pct(ours, 0.5), pct(ours, 1.0));
  printf("  repquota -a -u -g -n:       %d rounds: p50 %.2f ms, max %.2f ms\n", rounds, pct(theirs, 0.5),
         pct(theirs, 1.0));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  log::setLevel(log::Level::Warning);
  const std::string mode = argc > 1 ? argv[1] : "";
  int users = 1000, requests = 2000, rounds = 20;
  for (int i = 2; i < argc; i++) {
    std::string a = argv[i];
    const int v = i + 1 < argc ? std::atoi(argv[++i]) : 0;
    if (a == "--users")
      users = v;
    else if (a == "--requests")
      requests = v;
    else if (a == "--rounds")
      rounds = v;
  }
  if (mode == "http") return httpBench(users, requests);
  if (mode == "refresh") return refreshBench(rounds);
  fprintf(stderr, "usage: %s http [--users N] [--requests N] | refresh [--rounds N]\n", argv[0]);
  return 2;
}
