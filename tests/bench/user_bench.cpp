// SPDX-License-Identifier: Apache-2.0
// user-bench: the per-user socket (api/user_api.h) with 1,000 users, 10,000
// attributed containers, 500 images and 1,000 volumes in a real Store file:
// what `docker quota` (GET /v1/quota) and `docker quota ls` (GET /v1/objects,
// with enforcement's removal order) cost, over the real unix socket with a
// new connection per request (the plugin makes one per run), through
// libcurl as the plugin does; and the RSS the socket adds to the agent.
// Run as root to ask for every user's figures (?uid=): another uid sees its own.
//
// usage: user-bench [--users N] [--containers N] [--requests N] [--plugin PATH]
//   --plugin: also time whole runs of the docker-quota executable (process
//   start included), as `docker-quota quota --format json`.
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "agent/base/log.h"
#include "agent/enforcement/enforcer.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "api/qman_api.h"
#include "api/user_api.h"
#include "cli/http_client.h"
#include "tests/bench/bench_util.h"

using namespace dockquota;
using bench::must;
using bench::pct;
using bench::SyntheticSource;
using Clock = std::chrono::steady_clock;

namespace {

long rssKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

double ms(Clock::time_point a) { return std::chrono::duration<double, std::milli>(Clock::now() - a).count(); }

class NoRuntime : public ContainerRuntime {
 public:
  const char* name() const override { return "none"; }
  Result<uint64_t> writableBytes(const std::string&) override { return Error{ENOENT, "none"}; }
  Status stop(const std::string&, std::chrono::seconds) override { return Error{EIO, "bench"}; }
  Status remove(const std::string&, bool) override { return Error{EIO, "bench"}; }
};

std::string hexId(int n, char kind) {
  char buf[65];
  snprintf(buf, sizeof buf, "%c%063d", kind, n);
  return buf;
}

Evidence evidence(uint32_t uid, double t, const char* method) {
  Evidence ev;
  ev.uid = ev.gid = uid;
  ev.method = method;
  ev.request_time = ev.time = t;
  return ev;
}

// The qman bench's world: a shared base layer, an own layer per image, containers round-robin.
UsageFigures fill(Store& store, int users, int containers) {
  UsageFigures f;
  f.data_root = "/var/lib/docker";
  f.measured_at = 1;
  auto uidOf = [&](int i) { return uint32_t(2000 + i % users); };
  const int images = users / 2;
  std::vector<SharedText> image_ids;
  for (int i = 0; i < images; i++) {
    const std::string id = "sha256:" + hexId(i, 'a');
    must(store.objects().noteSeen(ObjectKind::Image, id, "img" + std::to_string(i) + ":1", "", std::nullopt, 10 + i),
         "noteSeen");
    must(store.objects().attribute(ObjectKind::Image, id, evidence(uidOf(i), 10 + i, "image_pull"), true), "attribute");
    f.images.push_back({id,
                        {"img" + std::to_string(i) + ":1"},
                        3000000 + 1000 * uint64_t(i),
                        10.0 + i,
                        {"sha256:base", "sha256:" + hexId(i, 'l')}});
    f.layer_sizes["sha256:" + hexId(i, 'l')] = 1000 * uint64_t(i);
    image_ids.emplace_back(id);
  }
  f.layer_sizes["sha256:base"] = 3000000;
  for (int i = 0; i < containers; i++) {
    const std::string id = hexId(i, 'c');
    must(store.objects().noteSeen(ObjectKind::Container, id, "c" + std::to_string(i),
                                  "sha256:" + hexId(i % images, 'a'), std::nullopt, 1000 + i),
         "noteSeen");
    must(store.objects().attribute(ObjectKind::Container, id, evidence(uidOf(i), 1000 + i, "container_create"), true),
         "attribute");
    f.containers.push_back(
        {id, "c" + std::to_string(i), image_ids[size_t(i % images)], "running", 4096 * uint64_t(i % 97 + 1)});
  }
  for (int i = 0; i < users; i++) {
    const std::string name = "vol" + std::to_string(i);
    must(store.objects().noteSeen(ObjectKind::Volume, name, name, "", std::nullopt, 5000 + i), "noteSeen");
    must(store.objects().attribute(ObjectKind::Volume, name, evidence(uidOf(i), 5000 + i, "volume_create"), true),
         "attribute");
    f.volumes.push_back({name, 65536, 65536, 1, ""});
  }
  return f;
}

void report(const char* what, std::vector<double> lat, size_t bytes) {
  printf("%-44s p50 %6.2f ms  p99 %6.2f ms  max %6.2f ms  (%zu requests, %zu bytes each)\n", what, pct(lat, 0.5),
         pct(lat, 0.99), pct(lat, 1.0), lat.size(), bytes);
}

// `n` requests, each on a new connection, rotating over the users (root) or our own uid.
std::vector<double> timeRoute(const std::string& sock, const std::string& path, int n, int users, size_t* bytes) {
  cli::HttpTarget t;
  t.unix_socket = sock;
  std::vector<double> lat;
  for (int i = 0; i < n + 20; i++) {
    const std::string q = getuid() == 0 ? "?uid=" + std::to_string(2000 + (i * 7919) % users) : "";
    const auto t0 = Clock::now();
    auto r = cli::httpRequest(t, "GET", path + q);
    const double took = ms(t0);
    if (!r.reached || r.status != 200) {
      fprintf(stderr, "bench: GET %s: %s %ld %s\n", path.c_str(), r.error.c_str(), r.status, r.body.c_str());
      exit(1);
    }
    *bytes = r.body.size();
    if (i >= 20) lat.push_back(took);  // after warm-up
  }
  return lat;
}

std::vector<double> timePlugin(const std::string& plugin, const std::string& sock, int n, int users) {
  std::vector<double> lat;
  for (int i = 0; i < n; i++) {
    const std::string uid = std::to_string(2000 + (i * 7919) % users);
    fflush(stdout);  // or the child's copy of the buffer is printed again
    const auto t0 = Clock::now();
    pid_t pid = fork();
    if (pid == 0) {
      if (!freopen("/dev/null", "w", stdout)) _exit(127);
      execl(plugin.c_str(), plugin.c_str(), "quota", "--format", "json", "--socket", sock.c_str(), "--uid", uid.c_str(),
            (char*)nullptr);
      _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "bench: %s exited %d\n", plugin.c_str(), WEXITSTATUS(st));
      exit(1);
    }
    lat.push_back(ms(t0));
  }
  return lat;
}

}  // namespace

int main(int argc, char** argv) {
  int users = 1000, containers = 10000, requests = 2000;
  std::string plugin;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--users")
      users = std::atoi(next().c_str());
    else if (a == "--containers")
      containers = std::atoi(next().c_str());
    else if (a == "--requests")
      requests = std::atoi(next().c_str());
    else if (a == "--plugin")
      plugin = next();
    else {
      fprintf(stderr, "usage: %s [--users N] [--containers N] [--requests N] [--plugin PATH]\n", argv[0]);
      return 2;
    }
  }
  if (users < 1 || containers < 0 || requests < 1) return 2;
  log::setLevel(log::Level::Warning);
  // dockquotad's malloc policy (app/main.cpp setMallocPolicy): else the
  // workers' own arenas would count here and not in the agent.
  mallopt(M_ARENA_MAX, 2);
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  char tmpl[] = "/tmp/dq-ubench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto opened = Store::open(dir + "/bench.db");
  must(opened, "open store");
  Store& store = **opened;
  auto t0 = Clock::now();
  UsageFigures f = fill(store, users, containers);
  auto book = QuotaBook::load(store);
  must(book, "load limits");
  QuotaBook::Limits limits;
  for (int i = 0; i < users; i++) limits[uint32_t(2000 + i)] = 1024;  // 1 MiB: everyone over, removal order selected
  must((*book)->setLimits(limits), "setLimits");
  std::vector<PasswdUser> passwd;
  for (int i = 0; i < users; i++) passwd.push_back({uint32_t(2000 + i), "user" + std::to_string(i)});
  UserDirectory dirusers([passwd] { return passwd; });
  UsageAccountant usage(store, std::make_unique<SyntheticSource>(std::move(f)), {});
  must(usage.refresh(), "usage refresh");
  printf("store: %d users, %d containers, %d images, %d volumes, filled and measured in %.1f s\n", users, containers,
         users / 2, users, ms(t0) / 1000);
  QmanContext qctx{store, **book, usage, dirusers, nullptr, nullptr, {}};
  NoRuntime runtime;
  EnforcerOptions eo;
  eo.mode = EnforceMode::DryRun;
  auto enforcer = Enforcer::create(
      store, **book, [&] { return usage.snapshot(); }, dirusers, runtime, eo);
  must(enforcer, "enforcer");
  UserApiContext uctx{qctx, enforcer->get()};
  malloc_trim(0);
  const long rss_before = rssKiB();

  UserApiOptions o;
  o.path = dir + "/user.sock";
  UserApi api(o, uctx);
  must(api.start(), "start the user socket");
  size_t bytes = 0;
  auto quota = timeRoute(o.path, "/v1/quota", requests, users, &bytes);
  report("GET /v1/quota (docker quota)", quota, bytes);
  auto objects = timeRoute(o.path, "/v1/objects", requests / 4, users, &bytes);
  report("GET /v1/objects (docker quota ls)", objects, bytes);
  auto events = timeRoute(o.path, "/v1/events", requests / 4, users, &bytes);
  report("GET /v1/events (docker quota events)", events, bytes);
  if (!plugin.empty()) report("docker-quota executable, whole run", timePlugin(plugin, o.path, 200, users), 0);
  malloc_trim(0);
  const long rss_after = rssKiB();
  printf("RSS: %.1f MiB before the socket, %.1f MiB after it served %d requests: +%.2f MiB\n", rss_before / 1024.0,
         rss_after / 1024.0, requests * 3 / 2, (rss_after - rss_before) / 1024.0);
  if (getuid() != 0) printf("(not root: every request asked for this uid's own figures, which are empty)\n");
  api.stop();
  std::string rm = "rm -rf " + dir;
  return system(rm.c_str()) == 0 ? 0 : 1;
}
