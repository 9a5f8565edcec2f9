// SPDX-License-Identifier: Apache-2.0
// store-bench: how long the ring-drain thread's write path (noteSeen +
// attribute of a new container, as the attributor does for each create
// reply) takes on a store holding 10,000 containers, alone and while other
// threads read what the agent's services read (usage: forEach over every
// container; the API: list, projects, events; reconcile: the whole table).
// Side by side in one run, on one real SQLite file.
//
//   store-bench [--objects 10000] [--writes 2000] [--dir /tmp]
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/store/store.h"
#include "tests/bench/bench_util.h"

using namespace dockquota;
using bench::must;
using bench::pct;

namespace {

std::string containerId(size_t i) {
  char buf[65];
  std::snprintf(buf, sizeof buf, "%064zx", i);
  return buf;
}

Evidence evidenceFor(size_t i) {
  Evidence ev;
  ev.uid = 1000 + static_cast<uint32_t>(i % 1000);
  ev.gid = ev.uid;
  ev.pid = 4242;
  ev.comm = "docker";
  ev.exe = "/usr/bin/docker";
  ev.method = "container_create";
  ev.request_time = 1e9 + static_cast<double>(i);
  ev.time = ev.request_time + 0.01;
  return ev;
}

// One create reply, as the attributor stores it: the row, then its owner.
double writeOne(Store& store, size_t i) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string id = containerId(i);
  must(store.objects().noteSeen(ObjectKind::Container, id, "c" + std::to_string(i), "sha256:img", std::nullopt,
                                1e9 + static_cast<double>(i), 0),
       "noteSeen");
  must(store.objects().attribute(ObjectKind::Container, id, evidenceFor(i), true), "attribute");
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct Figures {
  double p50, p99, max;
};

Figures measureWrites(Store& store, size_t from, size_t n) {
  std::vector<double> ms;
  ms.reserve(n);
  for (size_t i = from; i < from + n; i++) ms.push_back(writeOne(store, i));
  return {pct(ms, 0.50), pct(ms, 0.99), pct(ms, 1.0)};
}

// The readers the agent runs beside the attributor, in a loop until `stop`.
std::vector<std::jthread> startReaders(Store& store, std::atomic<bool>& stop, std::atomic<uint64_t>& reads) {
  std::vector<std::jthread> readers;
  readers.emplace_back([&] {  // usage: every container, a batch at a time
    while (!stop) {
      size_t n = 0;
      must(store.objects().forEach(ObjectKind::Container, [&](const ObjectRecord&) { n++; }), "forEach");
      reads++;
    }
  });
  readers.emplace_back([&] {  // the API and reconcile: whole lists
    std::set<std::string> present;
    while (!stop) {
      auto all = store.objects().list(ObjectKind::Container);
      must(all, "list");
      must(store.projectIds().projects(), "projects");
      must(store.eventLog().events({}), "events");
      reads++;
    }
  });
  return readers;
}

}  // namespace

int main(int argc, char** argv) {
  size_t objects = 10000, writes = 2000;
  std::string dir = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--objects") objects = std::strtoul(argv[i + 1], nullptr, 10);
    if (a == "--writes") writes = std::strtoul(argv[i + 1], nullptr, 10);
    if (a == "--dir") dir = argv[i + 1];
  }
  const std::string path = dir + "/store-bench-" + std::to_string(getpid()) + ".db";
  auto opened = Store::open(path);
  must(opened, "open");
  Store& store = **opened;
  for (size_t i = 0; i < objects; i++) writeOne(store, i);

  const Figures alone = measureWrites(store, objects, writes);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  Figures busy{};
  {
    auto readers = startReaders(store, stop, reads);
    busy = measureWrites(store, objects + writes, writes);
    stop = true;
  }
  std::printf("store-bench: %zu containers, %zu create replies stored (noteSeen + attribute) each way\n", objects,
              writes);
  std::printf("  %-34s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms\n", "alone", alone.p50, alone.p99, alone.max);
  std::printf("  %-34s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (%llu full reads meanwhile)\n",
              "beside forEach + list readers", busy.p50, busy.p99, busy.max, (unsigned long long)reads.load());
  std::printf("  ratio busy/alone: p50 %.1fx  p99 %.1fx\n", busy.p50 / alone.p50, busy.p99 / alone.p99);
  opened->reset();
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
  return 0;
}
