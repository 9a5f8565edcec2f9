// SPDX-License-Identifier: Apache-2.0
// Project quotas on real filesystems: XFS and ext4 images on loop devices.
// Needs root. Where the kernel has quota support (the vmtest guests) the
// limits must hold exactly; where it has none (this host: CONFIG_QUOTA off)
// the probe must say so, and tagging must still work on XFS. DQ_REQUIRE_PRJQUOTA=1
// (set in the VM runs) turns "no quota support" into a failure.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/clock.h"
#include "agent/quota/prjquota.h"
#include "agent/quota/project_quotas.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;

namespace {

bool ci() { return std::getenv("CI") && std::string(std::getenv("CI")) == "true"; }
bool requirePrjquota() {
  return std::getenv("DQ_REQUIRE_PRJQUOTA") && std::string(std::getenv("DQ_REQUIRE_PRJQUOTA")) == "1";
}
// CONFIG_QUOTA shows itself as /proc/sys/fs/quota.
bool kernelHasQuota() { return access("/proc/sys/fs/quota", F_OK) == 0; }

bool prerequisites() {
  std::string why;
  if (geteuid() != 0)
    why = "not root";
  else if (system("command -v mkfs.xfs >/dev/null && command -v mkfs.ext4 >/dev/null") != 0)
    why = "no mkfs.xfs/mkfs.ext4 (xfsprogs, e2fsprogs)";
  if (why.empty()) return true;
  if (ci()) FAIL("real-filesystem test cannot run in CI: " << why);
  WARN("SKIPPED: " << why);
  return false;
}

int sh(const std::string& cmd) { return system((cmd + " >/dev/null 2>&1").c_str()); }

// A filesystem image on a loop device, mounted under a temp dir.
struct LoopFs {
  TempDir tmp;
  std::string image = tmp.file("fs.img"), mnt = tmp.file("mnt");
  bool quota = false;  // mounted with prjquota
  LoopFs(const std::string& type, uint64_t mib) {
    chmod(tmp.path.c_str(), 0755);  // the unprivileged writers below must get through
    REQUIRE(sh("truncate -s " + std::to_string(mib) + "M " + image) == 0);
    mkdir(mnt.c_str(), 0755);
    if (type == "xfs") {
      REQUIRE(sh("mkfs.xfs -q " + image) == 0);
      quota = sh("mount -o loop,prjquota " + image + " " + mnt) == 0;
      if (!quota) REQUIRE(sh("mount -o loop " + image + " " + mnt) == 0);
    } else {
      // ext4 project quotas: the quota + project features, then -o prjquota.
      REQUIRE(sh("mkfs.ext4 -q -I 256 -O quota,project " + image) == 0);
      quota = sh("mount -o loop,prjquota " + image + " " + mnt) == 0;
      if (!quota) {  // a kernel without CONFIG_QUOTA refuses the quota feature: a plain ext4 then
        REQUIRE(sh("mkfs.ext4 -q -F " + image) == 0);
        REQUIRE(sh("mount -o loop " + image + " " + mnt) == 0);
      }
    }
  }
  ~LoopFs() { sh("umount " + mnt); }
  std::string path(const std::string& rel) const { return mnt + "/" + rel; }
};

void writeFile(const std::string& path, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  std::string chunk(std::min<size_t>(bytes, 1 << 20), 'x');
  for (size_t left = bytes; left > 0; left -= std::min(left, chunk.size()))
    f.write(chunk.data(), std::min(left, chunk.size()));
}

// Writes 1 MiB chunks (fsync'd, so delayed allocation meets the limit now) until
// the kernel refuses; returns bytes written and the errno that stopped it.
// Runs as an unprivileged uid, like a container's processes: a writer with
// CAP_SYS_RESOURCE is allowed past ext4 hard limits (XFS holds even root).
std::pair<uint64_t, int> fill(const std::string& path, uint64_t max) {
  chmod(path.substr(0, path.rfind('/')).c_str(), 0777);
  int p[2];
  REQUIRE(pipe(p) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    uint64_t res[2] = {0, 0};
    if (setgid(65534) != 0 || setuid(65534) != 0) {
      res[1] = uint64_t(errno);
    } else {
      int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      std::string chunk(1 << 20, 'y');
      if (fd < 0) res[1] = uint64_t(errno);
      while (fd >= 0 && res[0] < max) {
        ssize_t n = write(fd, chunk.data(), chunk.size());
        if (n < 0 || fsync(fd) != 0) {
          res[1] = uint64_t(errno);
          break;
        }
        res[0] += uint64_t(n);  // a short write is followed by one that says why
      }
    }
    (void)!write(p[1], res, sizeof res);
    _exit(0);
  }
  close(p[1]);
  uint64_t res[2] = {0, 0};
  REQUIRE(read(p[0], res, sizeof res) == sizeof res);
  close(p[0]);
  waitpid(pid, nullptr, 0);
  return {res[0], int(res[1])};
}

void checkNoQuotaFs(const QuotaFs& fs) {
  // This kernel or mount cannot do it: the probe must say so in words an admin can act on.
  CHECK_FALSE(fs.usable());
  CHECK_FALSE(fs.reason.empty());
  INFO(fs.describe());
  if (requirePrjquota()) FAIL("project quotas required (DQ_REQUIRE_PRJQUOTA=1) but: " << fs.reason);
}

}  // namespace

TEST_CASE("prjquota: probe finds the filesystem, device and quota state", "[prjquota]") {
  if (!prerequisites()) return;
  for (std::string type : {"xfs", "ext4"}) {
    SECTION(type) {
      LoopFs lfs(type, type == "xfs" ? 320 : 128);  // XFS wants >= 300 MiB
      mkdir(lfs.path("docker").c_str(), 0755);
      auto fs = probeQuotaFs(lfs.path("docker"));
      REQUIRE(fs.ok());
      CHECK(fs->fstype == type);
      CHECK(fs->mount_point == lfs.mnt);
      CHECK(fs->device.rfind("/dev/", 0) == 0);
      INFO(fs->describe());
      if (lfs.quota) {
        CHECK(fs->usable());
        CHECK(fs->reason.empty());
      } else {
        if (!kernelHasQuota())
          CHECK(fs->reason.find("no quota support") != std::string::npos);  // (CONFIG_QUOTA off entirely)
        checkNoQuotaFs(*fs);
      }
    }
  }
  SECTION("tmpfs is named as such") {
    auto fs = probeQuotaFs("/dev/shm");
    REQUIRE(fs.ok());
    CHECK(fs->fstype == "tmpfs");
    CHECK_FALSE(fs->usable());
    CHECK(fs->reason.find("needs XFS or ext4") != std::string::npos);
  }
  SECTION("a missing path is an error that names it") {
    auto fs = probeQuotaFs("/nonexistent/dockquota");
    REQUIRE_FALSE(fs.ok());
    CHECK(fs.error().message.find("/nonexistent/dockquota") != std::string::npos);
  }
}

TEST_CASE("prjquota: tagTree sets the id on a whole tree, inheriting, once", "[prjquota]") {
  if (!prerequisites()) return;
  LoopFs lfs("xfs", 320);  // XFS keeps project ids even without quota accounting
  std::string root = lfs.path("layer");
  mkdir(root.c_str(), 0755);
  mkdir((root + "/diff").c_str(), 0755);
  mkdir((root + "/diff/etc").c_str(), 0755);
  mkdir((root + "/work").c_str(), 0700);
  writeFile(root + "/diff/etc/a", 4096);
  writeFile(root + "/diff/b", 10);
  chmod((root + "/diff/b").c_str(), 0);  // unreadable: root still tags it
  REQUIRE(symlink("etc/a", (root + "/diff/link").c_str()) == 0);
  REQUIRE(mkfifo((root + "/diff/fifo").c_str(), 0600) == 0);

  auto st = tagTree(root, 4242);
  REQUIRE(st.ok());
  CHECK(st->tagged == 6);   // 4 directories + 2 files
  CHECK(st->skipped == 2);  // the symlink and the fifo
  CHECK(st->failed == 0);
  for (const char* p : {"", "/diff", "/diff/etc", "/work", "/diff/etc/a", "/diff/b"}) {
    auto id = projectOf(root + p);
    REQUIRE(id.ok());
    CHECK(*id == 4242);
  }
  // What is created later inherits (PROJINHERIT), with no walk.
  mkdir((root + "/diff/new").c_str(), 0755);
  writeFile(root + "/diff/new/file", 100);
  CHECK(*projectOf(root + "/diff/new/file") == 4242);
  // A second walk changes nothing.
  auto again = tagTree(root, 4242);
  REQUIRE(again.ok());
  CHECK(again->tagged == 0);
  CHECK(again->already == 8);
  // Not a directory, or not there: clear errors.
  CHECK(tagTree(root + "/diff/b", 1).error().code == ENOTDIR);
  CHECK(tagTree(root + "/missing", 1).error().code == ENOENT);
}

namespace {

// An overlay2-like layer on the loop filesystem: lower/ (an image layer with a
// file and a directory) under <root>/diff, work dir <root>/work, at <root>/merged.
struct Layer {
  std::string lower, root, diff, work, merged;
  explicit Layer(const LoopFs& lfs, const std::string& name)
      : lower(lfs.path(name + "-lower")),
        root(lfs.path(name)),
        diff(root + "/diff"),
        work(root + "/work"),
        merged(root + "/merged") {
    for (const auto& d : {lower, lower + "/etc", root, diff, work, merged}) mkdir(d.c_str(), 0755);
    writeFile(lower + "/etc/passwd", 100);
    writeFile(lower + "/big", 256 << 10);
    writeFile(root + "/lower", 10);  // overlay2's list of lower layers: a file in the root
  }
  bool mount() const {
    std::string opts = "lowerdir=" + lower + ",upperdir=" + diff + ",workdir=" + work;
    return ::mount("overlay", merged.c_str(), "overlay", 0, opts.c_str()) == 0;
  }
  void umount() const { ::umount(merged.c_str()); }
  ~Layer() {  // hundreds of rounds share one small filesystem
    umount();
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
    std::filesystem::remove_all(lower, ec);
  }
};

// What a container does first: copy-ups of a file and a directory, a new file
// renamed within and across directories, a hard link. 0 or the first errno.
int containerWrites(const std::string& merged, int round, int* step = nullptr) {
  const std::string r = std::to_string(round);
  int dummy = 0;
  int& at = step ? *step : dummy;
  auto fail = [&](int e) {
    fprintf(stderr, "containerWrites round %d: step %d failed: %s\n", round, at, strerror(e));
    return e ? e : EIO;
  };
  at = 1;
  int fd = open((merged + "/etc/passwd").c_str(), O_WRONLY | O_APPEND);  // copy-up of a file and its directory
  if (fd < 0) return fail(errno);
  if (write(fd, "x\n", 2) != 2) {
    int e = errno;
    close(fd);
    return fail(e);
  }
  close(fd);
  at = 2;
  fd = open((merged + "/big").c_str(), O_WRONLY | O_APPEND);  // a bigger copy-up
  if (fd < 0) return fail(errno);
  close(fd);
  at = 3;
  const std::string tmp = merged + "/etc/.new" + r, dir = merged + "/d" + r;
  fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return fail(errno);
  close(fd);
  at = 4;
  if (rename(tmp.c_str(), (merged + "/etc/new" + r).c_str()) != 0) return fail(errno);
  at = 5;
  if (mkdir(dir.c_str(), 0755) != 0) return fail(errno);
  at = 6;
  if (rename((merged + "/etc/new" + r).c_str(), (dir + "/moved").c_str()) != 0) return fail(errno);
  at = 7;
  if (link((dir + "/moved").c_str(), (merged + "/linked" + r).c_str()) != 0) return fail(errno);
  return 0;
}

// Every inode under `dir` carries `id` (directories with PROJINHERIT); the first that does not, or "".
std::string firstNotTagged(const std::string& dir, uint32_t id) {
  for (auto it = std::filesystem::recursive_directory_iterator(dir); it != std::filesystem::end(it); ++it) {
    if (it->is_symlink() || (!it->is_directory() && !it->is_regular_file())) continue;
    auto t = projectTagOf(it->path());
    if (!t || t->id != id || (it->is_directory() && !t->inherit)) return it->path();
  }
  return "";
}

}  // namespace

TEST_CASE("prjquota: layers are tagged in an order no overlayfs copy-up or rename can trip on", "[prjquota]") {
  if (!prerequisites()) return;
  LoopFs lfs("xfs", 320);  // XFS keeps ids and refuses cross-project renames without quota accounting too

  SECTION("the hazard is real: a PROJINHERIT upper dir refuses copy-ups born with another id (EXDEV)") {
    Layer l(lfs, "hazard");
    REQUIRE(l.mount());
    REQUIRE(tagTree(l.diff, 4300).ok());  // diff/ alone, under a live mount: what tagLayer() never does
    CHECK(containerWrites(l.merged, 0) == EXDEV);
  }
  SECTION("a layer tagged before its mount: every write lands in the project") {
    Layer l(lfs, "fresh");
    auto r = tagLayer(l.root, 4301, [&] { return overlayUpperMounted(l.diff); });
    REQUIRE(r.ok());
    CHECK(r->state == LayerTag::Tagged);
    CHECK(layerTagged(l.root, 4301));
    REQUIRE(l.mount());
    for (int i = 0; i < 3; i++) CHECK(containerWrites(l.merged, i) == 0);
    CHECK(firstNotTagged(l.diff, 4301) == "");
    // Tagged once: a second call is one check, no walk.
    auto again = tagLayer(l.root, 4301, [&] { return overlayUpperMounted(l.diff); });
    REQUIRE(again.ok());
    CHECK(again->stats.tagged == 0);
  }
  SECTION("a layer mounted first: diff/ is left alone until it is unmounted, and nothing fails") {
    Layer l(lfs, "late");
    REQUIRE(l.mount());
    CHECK(containerWrites(l.merged, 0) == 0);
    CHECK(overlayUpperMounted(l.diff));
    auto r = tagLayer(l.root, 4302, [&] { return overlayUpperMounted(l.diff); });
    REQUIRE(r.ok());
    CHECK(r->state == LayerTag::Deferred);
    CHECK_FALSE(layerTagged(l.root, 4302));
    CHECK(*projectOf(l.work) == 4302);  // the next mount's work/work is born with the id
    for (int i = 1; i < 4; i++) CHECK(containerWrites(l.merged, i) == 0);  // the live container is unharmed
    l.umount();
    CHECK_FALSE(overlayUpperMounted(l.diff));
    // Just unmounted: its work/work is seconds old, so this pass cannot tell it from a mount in progress.
    auto soon = tagLayer(l.root, 4302, [&] { return overlayUpperMounted(l.diff); });
    REQUIRE(soon.ok());
    CHECK(soon->state == LayerTag::Deferred);
    // The next sync, once work/work is older than a mount's set-up (0 s stands in for 10 s here).
    auto later = tagLayer(
        l.root, 4302, [&] { return overlayUpperMounted(l.diff); }, 0);
    REQUIRE(later.ok());
    CHECK(later->state == LayerTag::Tagged);
    CHECK(firstNotTagged(l.diff, 4302) == "");
    REQUIRE(l.mount());  // restarted: copy-ups from work/work match diff/
    for (int i = 4; i < 7; i++) CHECK(containerWrites(l.merged, i) == 0);
    CHECK(firstNotTagged(l.diff, 4302) == "");
  }
  SECTION("a mount known to be over (Docker's inside the create) does not defer the tag at the reply") {
    // docker create mounts the new layer once (volume mount points) and
    // unmounts it before replying: its work/work is young and untagged when
    // the reply's tag comes, yet no mount is in progress.
    Layer l(lfs, "created");
    REQUIRE(l.mount());
    l.umount();
    const double reply = unixNow() + 0.001;
    auto unknown = tagLayer(l.root, 4303, [&] { return overlayUpperMounted(l.diff); });
    REQUIRE(unknown.ok());
    CHECK(unknown->state == LayerTag::Deferred);  // without the reply's time: cannot tell
    auto at_reply = tagLayer(
        l.root, 4303, [&] { return overlayUpperMounted(l.diff); }, kMountSetupSeconds, reply);
    REQUIRE(at_reply.ok());
    CHECK(at_reply->state == LayerTag::Tagged);
    CHECK(firstNotTagged(l.diff, 4303) == "");
    REQUIRE(l.mount());  // the start: its work/work is born in the tagged work/
    for (int i = 0; i < 3; i++) CHECK(containerWrites(l.merged, i) == 0);
    CHECK(firstNotTagged(l.diff, 4303) == "");
  }
  SECTION("a work/work made after the reply is a mount in progress, reply time or not") {
    Layer l(lfs, "restarted");
    const double reply = unixNow() - 0.5;
    REQUIRE(l.mount());
    l.umount();
    auto r = tagLayer(
        l.root, 4304, [&] { return overlayUpperMounted(l.diff); }, kMountSetupSeconds, reply);
    REQUIRE(r.ok());
    CHECK(r->state == LayerTag::Deferred);
  }
  SECTION("Docker mounting a new layer while it is tagged: never an EXDEV, no write outside the project") {
    // docker run: the layer is created, then the tag (at the create reply)
    // races the mount (at start) and the container's first writes.
    int deferred = 0, raced = 0, first_err = 0;
    const int rounds = std::getenv("DQ_LAYER_ROUNDS") ? std::atoi(std::getenv("DQ_LAYER_ROUNDS")) : 100;
    for (int i = 0; i < rounds && !first_err; i++) {
      Layer l(lfs, "race" + std::to_string(i));
      std::atomic<int> err{0};
      std::thread docker([&] {
        if (!l.mount()) {
          err = errno ? errno : EIO;
          fprintf(stderr, "round %d: mount failed: %s\n", i, strerror(errno));
          return;
        }
        err = containerWrites(l.merged, i);
      });
      auto r = tagLayer(l.root, 4310, [&] { return overlayUpperMounted(l.diff); });
      docker.join();
      REQUIRE(r.ok());
      first_err = err;
      if (r->raced_mount) raced++;
      if (r->state == LayerTag::Deferred) {
        deferred++;  // mounted first: tagged once unmounted, like a stopped container
        l.umount();
        auto later = tagLayer(
            l.root, 4310, [&] { return overlayUpperMounted(l.diff); }, 0);
        REQUIRE(later.ok());
        CHECK(later->state == LayerTag::Tagged);
      }
      INFO("round " << i);
      CHECK(firstNotTagged(l.diff, 4310) == "");
    }
    fprintf(stderr, "FIGURES layer race: %d rounds, %d deferred (mounted first), %d raced (mounted during the walk)\n",
            rounds, deferred, raced);
    CHECK(first_err == 0);
  }
}

TEST_CASE("prjquota: limits stop writes at the limit and reads see every id", "[prjquota]") {
  if (!prerequisites()) return;
  for (std::string type : {"xfs", "ext4"}) {
    SECTION(type) {
      LoopFs lfs(type, type == "xfs" ? 320 : 160);
      auto fs = probeQuotaFs(lfs.mnt);
      REQUIRE(fs.ok());
      if (!fs->usable()) {
        checkNoQuotaFs(*fs);
        // Limits and reads fail with the reason, not silently.
        CHECK_FALSE(setProjectLimit(*fs, 7, 1 << 20).ok());
        CHECK_FALSE(readProjects(*fs).ok());
        return;
      }
      std::string limited = lfs.path("limited"), free = lfs.path("free");
      mkdir(limited.c_str(), 0755);
      mkdir(free.c_str(), 0755);
      REQUIRE(tagTree(limited, 101).ok());
      REQUIRE(tagTree(free, 102).ok());
      REQUIRE(setProjectLimit(*fs, 101, 8 << 20).ok());

      auto [wrote, err] = fill(limited + "/f", 32 << 20);
      INFO("wrote " << wrote << " bytes, stopped by errno " << err);
      CHECK((err == EDQUOT || err == ENOSPC));
      CHECK(wrote <= (8u << 20));
      CHECK(wrote >= (7u << 20));
      auto [wrote_free, err_free] = fill(free + "/f", 24 << 20);
      CHECK(err_free == 0);
      CHECK(wrote_free == (24u << 20));

      auto all = readProjects(*fs);
      REQUIRE(all.ok());
      REQUIRE(all->count(101));
      REQUIRE(all->count(102));
      CHECK(all->at(101).hard_bytes == (8u << 20));
      CHECK(all->at(101).bytes >= wrote);
      CHECK(all->at(101).bytes <= (8u << 20));
      CHECK(all->at(102).bytes >= (24u << 20));
      CHECK(all->at(102).hard_bytes == 0);
      auto one = readProject(*fs, 101);
      REQUIRE(one.ok());
      CHECK(one->bytes == all->at(101).bytes);
      CHECK(readProject(*fs, 999)->bytes == 0);  // no record: zeros

      // Moving a tree to another id moves its usage with it.
      REQUIRE(tagTree(free, 103).ok());
      auto moved = readProjects(*fs);
      REQUIRE(moved.ok());
      CHECK(moved->at(103).bytes >= (24u << 20));
      CHECK((moved->count(102) == 0 || moved->at(102).bytes == 0));
      // Lifting the limit lets the writer go on.
      REQUIRE(setProjectLimit(*fs, 101, 0).ok());
      auto [more, err_more] = fill(limited + "/g", 4 << 20);
      CHECK(err_more == 0);
      CHECK(more == (4u << 20));
    }
  }
}

namespace {
// Directories standing in for Docker's layout: the backend's logic over real inodes and quotas.
struct DirLocator : LayerLocator {
  std::string root;
  explicit DirLocator(std::string r) : root(std::move(r)) {}
  Result<std::vector<std::string>> container(const std::string& id) override {
    return std::vector<std::string>{root + "/overlay2/" + id};
  }
  Result<std::string> layer(const std::string& chain) override { return root + "/overlay2/L" + chain.substr(7, 8); }
  Result<std::string> volume(const std::string& name) override { return root + "/volumes/" + name; }
};

Evidence ev(uint32_t uid) {
  Evidence e;
  e.uid = uid;
  e.gid = uid;
  e.pid = 1;
  e.method = "container_create";
  e.time = 1;
  return e;
}
// The backend's setting: a quota-enabled XFS holding a Docker-like tree
// (overlay2/, volumes/ and `dirs` under them) and a fresh store. nullptr,
// after saying why, where the kernel cannot do project quotas.
struct QuotaTree {
  LoopFs lfs{"xfs", 320};
  std::string root = lfs.path("docker");
  QuotaFs fs;
  TempDir dbdir;
  std::unique_ptr<Store> store;
};
std::unique_ptr<QuotaTree> quotaTree(std::initializer_list<const char*> dirs) {
  auto t = std::make_unique<QuotaTree>();
  auto fs = probeQuotaFs(t->lfs.mnt);
  REQUIRE(fs.ok());
  if (!fs->usable()) {
    checkNoQuotaFs(*fs);
    return nullptr;
  }
  t->fs = *fs;
  for (const char* d : {"", "/overlay2", "/volumes"}) mkdir((t->root + d).c_str(), 0755);
  for (const char* d : dirs) mkdir((t->root + d).c_str(), 0755);
  auto store = Store::open(t->dbdir.file("dq.db"));
  REQUIRE(store.ok());
  t->store = std::move(*store);
  return t;
}
}  // namespace

TEST_CASE("prjquota: the backend tags owners' objects, applies limits, frees and reuses ids", "[prjquota]") {
  if (!prerequisites()) return;
  auto t = quotaTree({"/overlay2/c1", "/overlay2/c2", "/overlay2/c3", "/volumes/v1"});
  if (!t) return;
  const QuotaFs& fs = t->fs;
  const std::string& root = t->root;
  Store& s = *t->store;
  for (const char* c : {"c1", "c2", "c3"})
    REQUIRE(s.objects().noteSeen(ObjectKind::Container, c, c, "", std::nullopt, 1).ok());
  REQUIRE(s.objects().noteSeen(ObjectKind::Volume, "v1", "v1", "", std::nullopt, 1).ok());
  REQUIRE(s.objects().attribute(ObjectKind::Container, "c1", ev(2001), true).ok());
  REQUIRE(s.objects().attribute(ObjectKind::Container, "c2", ev(2001), true).ok());
  REQUIRE(s.objects().attribute(ObjectKind::Container, "c3", ev(2002), true).ok());
  REQUIRE(s.objects().attribute(ObjectKind::Volume, "v1", ev(2002), true).ok());
  auto book = QuotaBook::load(s);
  REQUIRE(book.ok());
  REQUIRE((*book)->setLimit(2001, 16 * 1024).ok());  // 16 MiB in KiB blocks

  ProjectQuotas::Options o;
  o.id_min = 500;
  o.id_max = 502;
  {
    ProjectQuotas pq(s, **book, std::make_unique<DirLocator>(root), fs, o);
    REQUIRE(pq.active());
    REQUIRE(pq.sync().ok());
    auto alice = pq.projectOfUser(2001), bob = pq.projectOfUser(2002);
    REQUIRE(alice);
    REQUIRE(bob);
    CHECK(*alice != *bob);
    CHECK(*projectOf(root + "/overlay2/c1") == *alice);
    CHECK(*projectOf(root + "/overlay2/c2") == *alice);
    CHECK(*projectOf(root + "/overlay2/c3") == *bob);
    CHECK(*projectOf(root + "/volumes/v1") == *bob);

    // alice's two containers together stop at her 16 MiB; bob is not limited.
    auto [a1, e1] = fill(root + "/overlay2/c1/f", 12 << 20);
    auto [a2, e2] = fill(root + "/overlay2/c2/f", 12 << 20);
    CHECK(e1 == 0);
    CHECK((e2 == EDQUOT || e2 == ENOSPC));
    CHECK(a1 + a2 <= (16u << 20));
    CHECK(a1 + a2 >= (15u << 20));
    auto [b, eb] = fill(root + "/overlay2/c3/f", 40 << 20);
    CHECK(eb == 0);
    CHECK(b == (40u << 20));

    REQUIRE(pq.sync().ok());
    auto k = pq.usage();
    REQUIRE(k);
    CHECK(k->per_user);
    CHECK(k->users.at(2001) >= a1 + a2);
    CHECK(k->users.at(2001) <= (16u << 20));
    CHECK(k->users.at(2002) >= (40u << 20));

    // A limit change reaches the kernel on the next pass.
    REQUIRE((*book)->setLimit(2001, 32 * 1024).ok());
    REQUIRE(pq.sync().ok());
    CHECK(readProject(fs, *alice)->hard_bytes == (32u << 20));
  }
  // A restart keeps the ids.
  uint32_t alice_id = 0, bob_id = 0;
  {
    ProjectQuotas pq(s, **book, std::make_unique<DirLocator>(root), fs, o);
    REQUIRE(pq.sync().ok());
    alice_id = *pq.projectOfUser(2001);
    bob_id = *pq.projectOfUser(2002);
    CHECK(*projectOf(root + "/overlay2/c1") == alice_id);
    // bob's objects are all gone from the store, but his layer's bytes are
    // still charged to his id (Docker has not deleted the layer yet): the id
    // stays his, so the next user is not billed for bob's bytes.
    REQUIRE(s.objects().markGone(ObjectKind::Container, "c3", 2).ok());
    REQUIRE(s.objects().markGone(ObjectKind::Volume, "v1", 2).ok());
    REQUIRE(pq.sync().ok());
    CHECK(pq.projectOfUser(2002));
    CHECK(pq.stats().ids_released.load() == 0);
    // Docker deletes the layer: the id is freed and its limit cleared.
    std::filesystem::remove_all(root + "/overlay2/c3");
    std::filesystem::remove_all(root + "/volumes/v1");
    // XFS frees unlinked inodes in the background since 5.19 (inodegc): wait
    // until the kernel shows bob's old id empty.
    ::sync();
    for (int i = 0; i < 100; i++) {
      auto u = readProject(fs, bob_id);
      if (u && u->bytes == 0 && u->inodes == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    REQUIRE(readProject(fs, bob_id)->inodes == 0);
    REQUIRE(pq.sync().ok());
    CHECK_FALSE(pq.projectOfUser(2002));
    CHECK(pq.stats().ids_released.load() == 1);
    CHECK(readProject(fs, bob_id)->hard_bytes == 0);
  }
  {
    mkdir((root + "/overlay2/c4").c_str(), 0755);
    REQUIRE(s.objects().noteSeen(ObjectKind::Container, "c4", "c4", "", std::nullopt, 3).ok());
    REQUIRE(s.objects().attribute(ObjectKind::Container, "c4", ev(2003), true).ok());
    ProjectQuotas pq(s, **book, std::make_unique<DirLocator>(root), fs, o);
    REQUIRE(pq.sync().ok());
    REQUIRE(pq.projectOfUser(2003));
    CHECK(*pq.projectOfUser(2003) == bob_id);  // the lowest free id again
    CHECK(*pq.projectOfUser(2001) == alice_id);
  }
}

// An admin override through the API changes an owner in the store, not in
// the attributor: the store tells the backend, which re-tags at once, not at
// the next full sync (an hour away here).
TEST_CASE("prjquota: an admin override moves the container's layer to the new owner's project at once", "[prjquota]") {
  if (!prerequisites()) return;
  auto t = quotaTree({"/overlay2/c1"});
  if (!t) return;
  const std::string& root = t->root;
  Store& s = *t->store;
  REQUIRE(s.objects().noteSeen(ObjectKind::Container, "c1", "c1", "", std::nullopt, 1).ok());
  REQUIRE(s.objects().attribute(ObjectKind::Container, "c1", ev(2001), true).ok());
  auto book = QuotaBook::load(s);
  REQUIRE(book.ok());
  ProjectQuotas::Options o;
  o.id_min = 500;
  o.id_max = 502;
  o.interval = std::chrono::hours(1);
  ProjectQuotas pq(s, **book, std::make_unique<DirLocator>(root), t->fs, o);
  REQUIRE(pq.active());
  s.objects().setOwnerListener([&pq](ObjectKind kind, const std::string& id) { pq.onOwnerChanged(kind, id); });
  pq.start();  // its first pass tags c1 for alice
  auto settles = [&](const std::function<bool()>& ok) {
    for (int i = 0; i < 50 && !ok(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return ok();
  };
  REQUIRE(
      settles([&] { return pq.projectOfUser(2001) && *projectOf(root + "/overlay2/c1") == *pq.projectOfUser(2001); }));
  Evidence admin = ev(2002);
  admin.source = Source::Admin;
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(s.objects().setOverride(ObjectKind::Container, "c1", admin, "admin").ok());
  CHECK(
      settles([&] { return pq.projectOfUser(2002) && *projectOf(root + "/overlay2/c1") == *pq.projectOfUser(2002); }));
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  INFO("re-tagged " << ms << " ms after the override");
  CHECK(ms < 5000);
  // And back when the override is cleared.
  REQUIRE(s.objects().clearOverride(ObjectKind::Container, "c1").ok());
  CHECK(settles([&] { return *projectOf(root + "/overlay2/c1") == *pq.projectOfUser(2001); }));
  pq.stop();
  s.objects().setOwnerListener(nullptr);
}

TEST_CASE("prjquota: per-container mode gives each container its own id and the default limit", "[prjquota]") {
  if (!prerequisites()) return;
  auto t = quotaTree({"/overlay2/k1", "/overlay2/k2"});
  if (!t) return;
  const QuotaFs& fs = t->fs;
  const std::string& root = t->root;
  Store& s = *t->store;
  for (const char* c : {"k1", "k2"})
    REQUIRE(s.objects().noteSeen(ObjectKind::Container, c, c, "", std::nullopt, 1).ok());
  REQUIRE(s.objects()
              .attribute(ObjectKind::Container, "k1", ev(2001), true)
              .ok());  // k2 stays unattributed: limited all the same
  auto book = QuotaBook::load(s);
  REQUIRE(book.ok());
  ProjectQuotas::Options o;
  o.mode = ProjectMode::Container;
  o.id_min = 700;
  o.id_max = 799;
  o.container_default_bytes = 8 << 20;
  ProjectQuotas pq(s, **book, std::make_unique<DirLocator>(root), fs, o);
  REQUIRE(pq.sync().ok());
  auto k1 = pq.projectOfContainer("k1"), k2 = pq.projectOfContainer("k2");
  REQUIRE(k1);
  REQUIRE(k2);
  CHECK(*k1 != *k2);
  auto [w1, e1] = fill(root + "/overlay2/k1/f", 20 << 20);
  CHECK((e1 == EDQUOT || e1 == ENOSPC));
  CHECK(w1 <= (8u << 20));
  CHECK(w1 >= (7u << 20));
  // A per-container limit outranks the default.
  REQUIRE(s.projectIds().setProjectLimit("container", "k2", uint64_t(12) << 20).ok());
  REQUIRE(pq.sync().ok());
  auto [w2, e2] = fill(root + "/overlay2/k2/f", 20 << 20);
  CHECK((e2 == EDQUOT || e2 == ENOSPC));
  CHECK(w2 > (8u << 20));
  CHECK(w2 <= (12u << 20));
  auto k = pq.usage();
  REQUIRE(k);
  CHECK_FALSE(k->per_user);
  CHECK(k->containers.at("k1") >= w1);
  // Removing a container frees its id.
  REQUIRE(s.objects().markGone(ObjectKind::Container, "k1", 2).ok());
  std::filesystem::remove_all(root + "/overlay2/k1");
  REQUIRE(pq.sync().ok());
  CHECK_FALSE(pq.projectOfContainer("k1"));
  CHECK(readProject(fs, *k1)->hard_bytes == 0);
}
