// SPDX-License-Identifier: Apache-2.0
// enforce-bench: what enforcement costs, against a real Store file with 1,000
// users and 10,000 attributed containers and a real usage snapshot, with a
// runtime that answers at once (Docker's own stop time is the VM test's figure).
//
//   sweep, nobody over     the steady state: every usage publish runs one
//   accountant rejoin      what precedes each triggered sweep (the same store),
//                          for the ratio
//   sweep, 1 % over        selection, stops, events and actions written
//   wake -> stop           a user's usage goes over; the enforcer thread is
//                          woken (as a usage publish does) until the runtime's
//                          stop() is called
//
// usage: enforce-bench [--users N] [--containers N] [--rounds N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "agent/base/log.h"
#include "agent/enforcement/enforcer.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "tests/bench/bench_util.h"

using namespace dockquota;
using bench::must;
using bench::pct;
using bench::SyntheticSource;
using Clock = std::chrono::steady_clock;

namespace {

// Answers at once; tells the waiting benchmark when stop() was called.
class InstantRuntime : public ContainerRuntime {
 public:
  const char* name() const override { return "instant"; }
  Result<uint64_t> writableBytes(const std::string&) override { return uint64_t(4) << 20; }
  Status stop(const std::string&, std::chrono::seconds) override {
    std::lock_guard<std::mutex> l(mu);
    stops++;
    last_stop = Clock::now();
    cv.notify_all();
    return {};
  }
  Status remove(const std::string&, bool) override { return {}; }
  std::mutex mu;
  std::condition_variable cv;
  uint64_t stops = 0;
  Clock::time_point last_stop;
};

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

int main(int argc, char** argv) {
  int users = 1000, containers = 10000, rounds = 30;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--users")
      users = next();
    else if (a == "--containers")
      containers = next();
    else if (a == "--rounds")
      rounds = next();
    else {
      fprintf(stderr, "usage: %s [--users N] [--containers N] [--rounds N]\n", argv[0]);
      return 2;
    }
  }
  if (users < 100 || containers < users || rounds < 1) {
    fprintf(stderr, "enforce-bench: need --users >= 100, --containers >= users, --rounds >= 1\n");
    return 2;
  }
  log::setLevel(log::Level::Error);
  char tmpl[] = "/tmp/dq-ebench-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto opened = Store::open(dir + "/bench.db");
  if (!opened) {
    fprintf(stderr, "%s\n", opened.error().message.c_str());
    return 1;
  }
  Store& store = **opened;
  auto uidOf = [&](int i) { return static_cast<uint32_t>(2000 + i % users); };

  // Every container 1 MiB, so each user holds containers/users MiB.
  const uint64_t per_container = 1 << 20;
  UsageFigures f;
  f.measured_at = 1;
  for (int i = 0; i < containers; i++) {
    char id[65];
    snprintf(id, sizeof id, "c%063d", i);
    must(store.objects().noteSeen(ObjectKind::Container, id, "c" + std::to_string(i), "", std::nullopt, 1000 + i),
         "noteSeen");
    Evidence ev;
    ev.uid = ev.gid = uidOf(i);
    ev.method = "container_create";
    ev.request_time = ev.time = 1000 + i;
    must(store.objects().attribute(ObjectKind::Container, id, ev, true), "attribute");
    f.addContainer(id, "c" + std::to_string(i), "", "running", per_container);
  }
  const uint64_t held = per_container * uint64_t(containers / users);
  auto book = std::move(*QuotaBook::load(store));
  QuotaBook::Limits limits;
  for (int i = 0; i < users; i++) limits[uidOf(i)] = 2 * held / 1024;  // everyone at 50 %
  must(book->setLimits(limits), "setLimits");
  std::vector<PasswdUser> passwd;
  for (int i = 0; i < users; i++) passwd.push_back({uidOf(i), "user" + std::to_string(i)});
  UserDirectory names([passwd] { return passwd; });
  UsageAccountant accountant(store, std::make_unique<SyntheticSource>(std::move(f)), {});
  if (auto s = accountant.refresh(); !s) {
    fprintf(stderr, "%s\n", s.error().message.c_str());
    return 1;
  }
  InstantRuntime runtime;
  EnforcerOptions o;
  o.mode = EnforceMode::Enforce;
  o.grace = std::chrono::seconds(3600);
  o.interval = std::chrono::hours(1);  // only wake() sweeps
  auto enforcer = std::move(*Enforcer::create(
      store, *book, [&] { return accountant.snapshot(); }, names, runtime, o));
  printf("store: %d users, %d containers (%.1f MiB each user, limits at 2x)\n", users, containers,
         double(held) / (1 << 20));

  // --- steady state: nobody over, next to the rejoin that precedes each sweep ------
  std::vector<double> sweep_ms, rejoin_ms;
  for (int r = 0; r < rounds; r++) {
    auto t = Clock::now();
    must(accountant.rejoin(), "rejoin");
    rejoin_ms.push_back(ms(Clock::now() - t));
    t = Clock::now();
    auto rep = enforcer->sweep();
    sweep_ms.push_back(ms(Clock::now() - t));
    if (!rep || rep->over != 0) {
      fprintf(stderr, "enforce-bench: unexpected sweep result\n");
      return 1;
    }
  }
  printf("sweep, nobody over (%d users):   p50 %.2f ms  p99 %.2f ms\n", users, pct(sweep_ms, 0.5), pct(sweep_ms, 0.99));
  printf("accountant rejoin (same store): p50 %.2f ms  p99 %.2f ms   sweep/rejoin = %.3f\n", pct(rejoin_ms, 0.5),
         pct(rejoin_ms, 0.99), pct(sweep_ms, 0.5) / pct(rejoin_ms, 0.5));

  // --- 1 % of users over: selection, stops, events, actions -----------------------
  QuotaBook::Limits tight;
  const int over = users / 100;
  for (int i = 0; i < over; i++) tight[uidOf(i)] = (held - per_container) / 1024;  // one container over
  must(book->setLimits(tight), "setLimits");
  auto t = Clock::now();
  auto rep = enforcer->sweep();
  const double over_ms = ms(Clock::now() - t);
  printf("sweep, %d users over:           %.2f ms (%zu stopped, %zu events)\n", over, over_ms, rep ? rep->stopped : 0,
         rep ? rep->events : 0);

  // --- wake -> stop: the enforcer's own latency after a usage publish ----------------
  enforcer->start();
  std::vector<double> lat;
  for (int r = 0; r < rounds; r++) {
    const uint32_t uid = uidOf(over + 1 + r % (users - over - 1));
    must(book->setLimit(uid, (held - per_container) / 1024), "setLimit");
    std::unique_lock<std::mutex> l(runtime.mu);
    const uint64_t before = runtime.stops;
    const auto t0 = Clock::now();
    enforcer->wake();
    if (!runtime.cv.wait_for(l, std::chrono::seconds(10), [&] { return runtime.stops > before; })) {
      fprintf(stderr, "enforce-bench: no stop within 10 s\n");
      return 1;
    }
    lat.push_back(ms(runtime.last_stop - t0));
    l.unlock();
    must(book->setLimit(uid, 2 * held / 1024), "setLimit");  // back under: the next round's sweep leaves it
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  enforcer->stop();
  printf("wake -> stop() called:           p50 %.2f ms  p99 %.2f ms (%d rounds)\n", pct(lat, 0.5), pct(lat, 0.99),
         rounds);
  std::system(("rm -rf " + dir).c_str());
  return 0;
}
