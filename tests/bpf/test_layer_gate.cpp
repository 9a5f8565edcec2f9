// SPDX-License-Identifier: Apache-2.0
// The layer gate on the real kernel (fanotify permission events; needs root):
// another process's read of <root>/lower waits until the layer is released
// or the hold runs out; our own opens and other files never wait.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/quota/layer_gate.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using namespace std::chrono_literals;

namespace {

bool ci() { return std::getenv("CI") && std::string(std::getenv("CI")) == "true"; }

// A layer root as overlay2 leaves it: diff/, work/, link, lower.
std::string makeLayer(TempDir& dir, const std::string& name) {
  const std::string root = dir.file(name);
  mkdir(root.c_str(), 0710);
  mkdir((root + "/diff").c_str(), 0755);
  mkdir((root + "/work").c_str(), 0700);
  std::ofstream(root + "/link") << "ABCDEF";
  std::ofstream(root + "/lower") << "l/ABCDEF";
  return root;
}

// Forks a process that opens `path` (as overlay2's Get() reads "lower") and
// returns how long the open took, in ms, through a pipe.
struct Opener {
  pid_t pid = -1;
  int fd = -1;
  explicit Opener(const std::string& path) {
    int p[2];
    REQUIRE(pipe(p) == 0);
    pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      close(p[0]);
      auto t0 = std::chrono::steady_clock::now();
      int f = open(path.c_str(), O_RDONLY);
      long ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      if (f >= 0) close(f);
      (void)!write(p[1], &ms, sizeof ms);
      _exit(f >= 0 ? 0 : 1);
    }
    close(p[1]);
    fd = p[0];
  }
  // The open's duration once it is done, or -1 if it is still waiting after `within`.
  long tookMs(std::chrono::milliseconds within) {
    pollfd pf{fd, POLLIN, 0};
    if (poll(&pf, 1, static_cast<int>(within.count())) <= 0) return -1;
    long ms = -1;
    if (read(fd, &ms, sizeof ms) != sizeof ms) return -1;
    return ms;
  }
  ~Opener() {
    if (fd >= 0) close(fd);
    int st;
    if (pid > 0) waitpid(pid, &st, 0);
  }
};

}  // namespace

TEST_CASE("layer gate: a mount's read of lower waits for the tag, and never longer than the hold", "[layer_gate]") {
  if (geteuid() != 0) {
    if (ci()) FAIL("the layer gate tests need root (CI=true: not skipped)");
    WARN("skipped: not root");
    return;
  }
  std::vector<std::string> held;
  std::mutex mu;
  auto gate = LayerGate::open({.hold = 1500ms}, [&](const std::string& root) {
    std::lock_guard<std::mutex> l(mu);
    held.push_back(root);
  });
  REQUIRE(gate.ok());
  auto& g = **gate;
  g.start();
  TempDir dir;

  SECTION("held until released: the read goes on right after") {
    const std::string root = makeLayer(dir, "a");
    REQUIRE(g.guard(root).ok());
    Opener mount(root + "/lower");
    CHECK(mount.tookMs(300ms) == -1);  // still waiting
    {
      std::lock_guard<std::mutex> l(mu);
      REQUIRE(held.size() == 1);
      CHECK(held[0] == root);
    }
    g.release(root);
    const long ms = mount.tookMs(1000ms);
    CHECK(ms >= 250);
    CHECK(ms < 1000);
    CHECK(g.stats().held == 1);
    CHECK(g.stats().timeouts == 0);
    // Released for good: the next mount is not held.
    Opener again(root + "/lower");
    CHECK(again.tookMs(1000ms) >= 0);
    CHECK(g.stats().held == 1);
  }
  SECTION("never released: the hold runs out, counted, and the layer is not held again") {
    const std::string root = makeLayer(dir, "b");
    REQUIRE(g.guard(root).ok());
    Opener mount(root + "/lower");
    const long ms = mount.tookMs(3000ms);
    CHECK(ms >= 1400);
    CHECK(ms < 2500);
    CHECK(g.stats().timeouts == 1);
    CHECK_FALSE(g.guarded(root));
    Opener again(root + "/lower");
    CHECK(again.tookMs(500ms) >= 0);
  }
  SECTION("passed: the held mount goes on, and the next one is held again (a create mounts twice)") {
    const std::string root = makeLayer(dir, "p");
    REQUIRE(g.guard(root).ok());
    Opener first(root + "/lower");
    CHECK(first.tookMs(300ms) == -1);
    g.pass(root);
    CHECK(first.tookMs(1000ms) >= 0);
    CHECK(g.guarded(root));
    Opener start(root + "/lower");
    CHECK(start.tookMs(300ms) == -1);  // held again
    g.release(root);
    CHECK(start.tookMs(1000ms) >= 0);
    CHECK(g.stats().held == 2);
    CHECK(g.stats().timeouts == 0);
  }
  SECTION("other files, other layers and our own opens never wait") {
    const std::string root = makeLayer(dir, "c"), other = makeLayer(dir, "d");
    REQUIRE(g.guard(root).ok());
    Opener link(root + "/link");
    CHECK(link.tookMs(500ms) >= 0);
    Opener unguarded(other + "/lower");
    CHECK(unguarded.tookMs(500ms) >= 0);
    auto t0 = std::chrono::steady_clock::now();
    int f = open((root + "/lower").c_str(), O_RDONLY);  // the tagger's own open
    CHECK(f >= 0);
    if (f >= 0) close(f);
    CHECK(std::chrono::steady_clock::now() - t0 < 200ms);
    CHECK(g.stats().held == 0);
    CHECK(g.stats().passed >= 2);
    g.release(root);
  }
  SECTION("stopping lets a held mount through at once") {
    const std::string root = makeLayer(dir, "e");
    REQUIRE(g.guard(root).ok());
    Opener mount(root + "/lower");
    CHECK(mount.tookMs(200ms) == -1);
    g.stop();
    CHECK(mount.tookMs(1000ms) >= 0);
  }
}
