// SPDX-License-Identifier: Apache-2.0
// The growth probe on the running kernel: a real overlayfs mount, real cgroup
// v2 directories, child processes writing known byte counts. Need root and
// BTF; outside CI a missing prerequisite SKIPs, with CI=true it FAILS.
// Sections follow bpf/growth.bpf.c: the filter (watched cgroups and their
// descendants only), the overlay check, the syscalls counted, the map.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "agent/probes/growth_probe.h"

using namespace dockquota;

namespace {

constexpr size_t kMiB = 1 << 20;
constexpr size_t kChunk = 64 * 1024;

bool inCi() { return std::getenv("CI") && std::string(std::getenv("CI")) == "true"; }
bool requireFentry() {
  return std::getenv("DQ_REQUIRE_FENTRY") && std::string(std::getenv("DQ_REQUIRE_FENTRY")) == "1";
}

bool skipOrFail(const std::string& why) {
  if (inCi()) FAIL("real-kernel test cannot run in CI: " << why);
  WARN("SKIPPED: " << why);
  return false;
}

bool prerequisites() {
  if (geteuid() != 0) return skipOrFail("not root");
  if (access("/sys/kernel/btf/vmlinux", R_OK) != 0) return skipOrFail("no /sys/kernel/btf/vmlinux");
  return true;
}

void writeFile(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  CHECK(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  close(fd);
}

// A tmpfs with an overlayfs mounted inside it: dir/{lower,upper,work,merged}.
// dir itself is the tmpfs, for writes that must not count.
struct Overlay {
  std::string dir, merged;
  bool ok = false;
  Overlay() {
    char tmpl[] = "/tmp/dq-growth-XXXXXX";
    dir = mkdtemp(tmpl);
    if (mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=64m") != 0) {
      skipOrFail(std::string("mount tmpfs: ") + strerror(errno));
      return;
    }
    for (const char* d : {"/lower", "/upper", "/work", "/merged"}) mkdir((dir + d).c_str(), 0755);
    merged = dir + "/merged";
    const std::string opts = "lowerdir=" + dir + "/lower,upperdir=" + dir + "/upper,workdir=" + dir + "/work";
    if (mount("overlay", merged.c_str(), "overlay", 0, opts.c_str()) != 0) {
      skipOrFail(std::string("mount overlay: ") + strerror(errno));
      return;
    }
    ok = true;
  }
  ~Overlay() {
    umount2(merged.c_str(), MNT_DETACH);
    umount2(dir.c_str(), MNT_DETACH);
    rmdir(dir.c_str());
  }
};

// cgroup v2 directories for the test, under <cgroup2>/dq-growth-<pid>/,
// named like Docker's (docker-<id>.scope). Mounts cgroup2 when the host has
// not (removed again at the end).
struct Cgroups {
  std::string mnt, own_mount, base;
  std::vector<std::string> made;
  Cgroups() {
    auto m = cgroup2Mount();
    if (m) {
      mnt = *m;
    } else {
      char tmpl[] = "/tmp/dq-cgroup2-XXXXXX";
      own_mount = mnt = mkdtemp(tmpl);
      REQUIRE(mount("none", mnt.c_str(), "cgroup2", 0, nullptr) == 0);
    }
    base = make(mnt + "/dq-growth-" + std::to_string(getpid()));
  }
  std::string make(const std::string& path) {
    REQUIRE((mkdir(path.c_str(), 0755) == 0 || errno == EEXIST));
    made.push_back(path);
    return path;
  }
  std::string container(const std::string& id) { return make(base + "/docker-" + id + ".scope"); }
  ~Cgroups() {
    for (auto it = made.rbegin(); it != made.rend(); ++it) rmdir(it->c_str());
    if (!own_mount.empty()) {
      umount2(own_mount.c_str(), MNT_DETACH);
      rmdir(own_mount.c_str());
    }
  }
};

CgroupRef cgroupAt(const std::string& dir) {
  auto r = cgroupOfDir(dir);
  if (!r) FAIL(r.error().message);
  return *r;
}

// Runs fn in a child that is moved into cgroup `cg` before fn starts; returns
// fn's result (0 = every call did what it should). No Catch2 in the child.
int runIn(const std::string& cg, const std::function<int()>& fn, pid_t* pid_out = nullptr) {
  int go[2];
  REQUIRE(pipe2(go, O_CLOEXEC) == 0);
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    char b;
    close(go[1]);
    if (read(go[0], &b, 1) != 1) _exit(90);
    _exit(fn());
  }
  close(go[0]);
  writeFile(cg + "/cgroup.procs", std::to_string(child));
  if (pid_out) *pid_out = child;
  REQUIRE(write(go[1], "g", 1) == 1);
  close(go[1]);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

// 3 MiB into a file on the overlay (1 MiB each by write, pwrite, writev of two
// halves), and 1 MiB each into a tmpfs file and /dev/null, which must not count.
int writeMix(const Overlay& ov, const std::string& name) {
  std::vector<char> buf(kMiB, 'g');
  int f = open((ov.merged + "/" + name).c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (f < 0) return 1;
  if (write(f, buf.data(), kMiB) != static_cast<ssize_t>(kMiB)) return 2;
  if (pwrite(f, buf.data(), kMiB, kMiB) != static_cast<ssize_t>(kMiB)) return 3;
  iovec iov[2] = {{buf.data(), kMiB / 2}, {buf.data(), kMiB / 2}};
  if (lseek(f, 2 * kMiB, SEEK_SET) < 0 || writev(f, iov, 2) != static_cast<ssize_t>(kMiB)) return 4;
  close(f);
  int t = open((ov.dir + "/" + name + ".tmpfs").c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (t < 0 || write(t, buf.data(), kMiB) != static_cast<ssize_t>(kMiB)) return 5;
  close(t);
  int n = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (n < 0 || write(n, buf.data(), kMiB) != static_cast<ssize_t>(kMiB)) return 6;
  close(n);
  return 0;
}

// Every test runs once per hook set: "tracepoint" everywhere, "fentry" where
// the kernel allows it (overlayfs's functions where they have BTF, else the
// syscalls), and "fentry/syscalls", the fentry set as 5.10 gets it, on every
// kernel. DQ_REQUIRE_FENTRY=1 (the QEMU kernels) makes an unavailable fentry
// set a failure.
std::string hookUnderTest() { return GENERATE(as<std::string>{}, "tracepoint", "fentry", "fentry/syscalls"); }

std::unique_ptr<GrowthProbe> openProbe(const std::string& hook, uint32_t max_containers = GROWTH_MAX_CGROUPS,
                                       bool force_probe_reads = false) {
  GrowthProbe::Options o;
  o.hook = hook.substr(0, hook.find('/'));
  o.overlay_functions = hook != "fentry/syscalls";
  o.max_containers = max_containers;
  o.force_probe_reads = force_probe_reads;
  auto p = GrowthProbe::open(o);
  if (!p) {
    if (hook.rfind("fentry", 0) == 0 && !requireFentry()) {
      WARN("fentry hooks not available on this kernel (" << p.error().message << "); tested the tracepoint set only");
      return nullptr;
    }
    FAIL(p.error().message);
  }
  return std::move(*p);
}

bool hooksOverlayfs(const GrowthProbe& p) {
  for (const auto& a : p.attached()) {
    if (a == "fexit__ovl_write_iter") return true;
  }
  return false;
}

GrowthFigure figureOf(const GrowthProbe& p, const std::string& id) {
  auto r = p.read();
  if (!r) FAIL(r.error().message);
  auto it = r->find(id);
  return it == r->end() ? GrowthFigure{UINT64_MAX, UINT64_MAX} : it->second;
}

}  // namespace

TEST_CASE("growth probe counts overlay writes of a watched cgroup only, exactly", "[bpf][growth]") {
  if (!prerequisites()) return;
  Overlay ov;
  if (!ov.ok) return;
  Cgroups cg;
  const std::string a = cg.container("aaaa"), b = cg.container("bbbb");
  const std::string hook = hookUnderTest();
  auto p = openProbe(hook);
  if (!p) return;
  INFO("hook set: " << hook << " (" << p->attached().front() << ", ...)");
  REQUIRE(p->watch("aaaa", cgroupAt(a)));

  REQUIRE(runIn(a, [&] { return writeMix(ov, "a"); }) == 0);
  REQUIRE(runIn(b, [&] { return writeMix(ov, "b"); }) == 0);  // same writes, cgroup not watched

  auto all = p->read();
  REQUIRE(all);
  REQUIRE(all->size() == 1);
  CHECK(all->at("aaaa").bytes == 3 * kMiB);
  CHECK(all->at("aaaa").writes == 3);
  auto c = p->counters();
  CHECK(c[GROWTH_CTR_COUNTED] == 3);
  CHECK(c[GROWTH_CTR_NO_FILE] == 0);
  // The syscall sets look at every write of a watched cgroup and skip the
  // tmpfs and /dev/null ones; on overlayfs's functions they never run.
  CHECK(c[GROWTH_CTR_NOT_OVERLAY] == (hooksOverlayfs(*p) ? 0u : 2u));

  // The unwatched cgroup's writes were really there: watched, they count.
  REQUIRE(p->watch("bbbb", cgroupAt(b)));
  REQUIRE(runIn(b, [&] { return writeMix(ov, "b"); }) == 0);
  CHECK(figureOf(*p, "bbbb").bytes == 3 * kMiB);
  CHECK(figureOf(*p, "aaaa").bytes == 3 * kMiB);  // unchanged
}

TEST_CASE("growth probe counts a watched cgroup's sub-cgroups for the container", "[bpf][growth]") {
  if (!prerequisites()) return;
  Overlay ov;
  if (!ov.ok) return;
  Cgroups cg;
  const std::string a = cg.container("cafe01");
  const std::string inner = cg.make(a + "/init.scope");  // systemd inside the container
  const std::string hook = hookUnderTest();
  auto p = openProbe(hook);
  if (!p) return;
  INFO("hook set: " << hook);

  // The child waits in the sub-cgroup while containerCgroup() (the agent's
  // helper: container id + one of its pids) finds the container's cgroup.
  int go[2];
  REQUIRE(pipe2(go, O_CLOEXEC) == 0);
  pid_t child = fork();
  if (child == 0) {
    char b;
    close(go[1]);
    if (read(go[0], &b, 1) != 1) _exit(90);
    _exit(writeMix(ov, "nested"));
  }
  close(go[0]);
  writeFile(inner + "/cgroup.procs", std::to_string(child));
  auto found = containerCgroup("cafe01", child);
  if (!found) FAIL(found.error().message);
  CHECK(found->path == a);
  CHECK(found->id == cgroupAt(a).id);
  CHECK(found->level == cgroupAt(a).level);
  REQUIRE(p->watch("cafe01", *found));
  REQUIRE(write(go[1], "g", 1) == 1);
  close(go[1]);
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));

  CHECK(figureOf(*p, "cafe01").bytes == 3 * kMiB);
  CHECK(figureOf(*p, "cafe01").writes == 3);
}

TEST_CASE("growth probe finds cgroups and files by probe reads where the helpers are not allowed (5.10)",
          "[bpf][growth]") {
  if (!prerequisites()) return;
  Overlay ov;
  if (!ov.ok) return;
  Cgroups cg;
  const std::string a = cg.container("beef01"), b = cg.container("beef02");
  const std::string a_inner = cg.make(a + "/init.scope");
  const std::string hook = hookUnderTest();
  auto p = openProbe(hook, GROWTH_MAX_CGROUPS, /*force_probe_reads=*/true);
  if (!p) return;
  INFO("hook set: " << hook);
  REQUIRE_FALSE(p->ancestorHelper());
  REQUIRE_FALSE(p->taskBtf());
  REQUIRE(p->watch("beef01", cgroupAt(a)));
  REQUIRE(runIn(a, [&] { return writeMix(ov, "own"); }) == 0);          // at the watched level
  REQUIRE(runIn(a_inner, [&] { return writeMix(ov, "sub"); }) == 0);    // below it
  REQUIRE(runIn(b, [&] { return writeMix(ov, "other"); }) == 0);        // a sibling
  REQUIRE(runIn(cg.base, [&] { return writeMix(ov, "above"); }) == 0);  // above it
  auto all = p->read();
  REQUIRE(all);
  REQUIRE(all->size() == 1);
  CHECK(all->at("beef01").bytes == 6 * kMiB);
  CHECK(all->at("beef01").writes == 6);
}

TEST_CASE("growth probe counts sendfile, splice, copy_file_range and pwritev2 into overlay files", "[bpf][growth]") {
  if (!prerequisites()) return;
  Overlay ov;
  if (!ov.ok) return;
  Cgroups cg;
  const std::string a = cg.container("c0ffee");
  const std::string hook = hookUnderTest();
  auto p = openProbe(hook);
  if (!p) return;
  INFO("hook set: " << hook);
  REQUIRE(p->watch("c0ffee", cgroupAt(a)));

  // Sources prepared outside the watched cgroup: a tmpfs file, a full pipe.
  std::string chunk(kChunk, 's');
  const std::string src = ov.dir + "/src.tmpfs";
  {
    int s = open(src.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    REQUIRE(write(s, chunk.data(), kChunk) == static_cast<ssize_t>(kChunk));
    close(s);
  }
  int pipefd[2];
  REQUIRE(pipe2(pipefd, O_CLOEXEC) == 0);
  REQUIRE(write(pipefd[1], chunk.data(), kChunk) == static_cast<ssize_t>(kChunk));

  const int rc = runIn(a, [&] {
    int out = open((ov.merged + "/out").c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    int in = open(src.c_str(), O_RDONLY | O_CLOEXEC);
    if (out < 0 || in < 0) return 1;
    if (sendfile(out, in, nullptr, kChunk) != static_cast<ssize_t>(kChunk)) return 2;
    if (splice(pipefd[0], nullptr, out, nullptr, kChunk, 0) != static_cast<ssize_t>(kChunk)) return 3;
    iovec iov{chunk.data(), kChunk};
    if (pwritev2(out, &iov, 1, -1, 0) != static_cast<ssize_t>(kChunk)) return 4;
    close(out);
    // overlay -> overlay (one superblock; cross-filesystem copies are EXDEV on 5.19+)
    int from = open((ov.merged + "/out").c_str(), O_RDONLY | O_CLOEXEC);
    int to = open((ov.merged + "/copy").c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (from < 0 || to < 0) return 5;
    if (copy_file_range(from, nullptr, to, nullptr, 3 * kChunk, 0) != static_cast<ssize_t>(3 * kChunk)) return 6;
    return 0;
  });
  close(pipefd[0]);
  close(pipefd[1]);
  REQUIRE(rc == 0);
  CHECK(figureOf(*p, "c0ffee").bytes == 6 * kChunk);
  CHECK(figureOf(*p, "c0ffee").writes == 4);
}

TEST_CASE("growth probe stops counting at unwatch and restarts from zero", "[bpf][growth]") {
  if (!prerequisites()) return;
  Overlay ov;
  if (!ov.ok) return;
  Cgroups cg;
  const std::string a = cg.container("dead01");
  const std::string hook = hookUnderTest();
  auto p = openProbe(hook);
  if (!p) return;
  INFO("hook set: " << hook);
  REQUIRE(p->watch("dead01", cgroupAt(a)));
  REQUIRE(runIn(a, [&] { return writeMix(ov, "1"); }) == 0);
  CHECK(figureOf(*p, "dead01").bytes == 3 * kMiB);

  p->unwatch("dead01");
  CHECK(p->watched() == 0);
  REQUIRE(runIn(a, [&] { return writeMix(ov, "2"); }) == 0);
  auto all = p->read();
  REQUIRE(all);
  CHECK(all->empty());
  CHECK(p->counters()[GROWTH_CTR_COUNTED] == 3);  // nothing after unwatch

  REQUIRE(p->watch("dead01", cgroupAt(a)));
  CHECK(figureOf(*p, "dead01").bytes == 0);
  REQUIRE(runIn(a, [&] { return writeMix(ov, "3"); }) == 0);
  CHECK(figureOf(*p, "dead01").bytes == 3 * kMiB);
}

TEST_CASE("growth probe refuses containers beyond its map and keeps counting the others", "[bpf][growth]") {
  if (!prerequisites()) return;
  Overlay ov;
  if (!ov.ok) return;
  Cgroups cg;
  const std::string a = cg.container("f00001"), b = cg.container("f00002"), c = cg.container("f00003");
  const std::string hook = hookUnderTest();
  auto p = openProbe(hook, /*max_containers=*/2);
  if (!p) return;
  INFO("hook set: " << hook);
  REQUIRE(p->watch("f00001", cgroupAt(a)));
  REQUIRE(p->watch("f00002", cgroupAt(b)));
  auto full = p->watch("f00003", cgroupAt(c));
  REQUIRE_FALSE(full);
  CHECK(full.error().code == E2BIG);
  CHECK(full.error().message.find("f00003") != std::string::npos);
  CHECK(p->watched() == 2);
  // Same cgroup under a second id: refused, the first keeps its counts.
  CHECK_FALSE(p->watch("other", cgroupAt(a)));
  // Not a container's cgroup.
  CHECK_FALSE(p->watch("root", cgroupAt(cg.mnt)));

  REQUIRE(runIn(a, [&] { return writeMix(ov, "a"); }) == 0);
  REQUIRE(runIn(c, [&] { return writeMix(ov, "c"); }) == 0);
  auto all = p->read();
  REQUIRE(all);
  CHECK(all->size() == 2);
  CHECK(all->at("f00001").bytes == 3 * kMiB);
  CHECK(all->at("f00002").bytes == 0);
  auto ctr = p->counters();
  CHECK(ctr[GROWTH_CTR_COUNTED] == 3);
  CHECK(ctr[GROWTH_CTR_NO_FILE] == 0);
}

TEST_CASE("growth probe: auto picks fentry where allowed and never falls back to the syscall tracepoint",
          "[bpf][growth]") {
  if (!prerequisites()) return;
  auto p = GrowthProbe::open({});
  if (!p) {
    // Refused fentry (lockdown, as on the host here): "auto" must fail and
    // say why, not tax every syscall of the host with tp_btf/sys_exit.
    INFO(p.error().message);
    CHECK_FALSE(requireFentry());
    CHECK(p.error().message.find("fentry hooks") != std::string::npos);
    return;
  }
  const auto& probe = **p;
  INFO("hook " << probe.hook());
  REQUIRE(probe.hook() == "fentry");
  // overlayfs's functions when their BTF is there (module BTF: 5.11+), else the syscalls.
  const bool ovl_btf = access("/sys/kernel/btf/overlay", R_OK) == 0;
  if (ovl_btf) CHECK(hooksOverlayfs(probe));
  for (const auto& a : probe.attached()) CHECK(a.rfind("fexit__", 0) == 0);
}

TEST_CASE("containerCgroup refuses a process with no container cgroup", "[bpf][growth]") {
  if (!prerequisites()) return;
  auto r = containerCgroup("0123456789ab", getpid());
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("0123456789ab") != std::string::npos);
}
