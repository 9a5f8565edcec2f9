// SPDX-License-Identifier: Apache-2.0
// The ZFS backend on a real pool: hidden ([.zfs-vm]), run only by
// tests/e2e/vm_zfs_quotas.py inside the vmtest `zfs` guest (ctest
// vm_zfs_quotas), which loads the module, makes the pool and the users and
// passes them in DQ_ZFS_* variables. Nothing here is faked: the backend runs
// the real `zfs` binary (DQ_ZFS_BINARY), and an unprivileged child writes
// until the kernel refuses.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "agent/base/subprocess.h"
#include "agent/quota/zfs_quota.h"

using namespace dockquota;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) FAIL(std::string("vm_zfs_quotas.py sets ") + name);
  return v;
}

// As uid/gid, appends 256 KiB blocks (each fsync'ed: a failure shows at
// once) to `path` until a write fails or `max` bytes are written.
// Returns (bytes written, errno of the failed write or 0).
std::pair<uint64_t, int> writeAs(uid_t uid, const std::string& path, uint64_t max) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    uint64_t res[2] = {0, 0};
    if (::setgid(uid) != 0 || ::setuid(uid) != 0) _exit(3);
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) _exit(4);
    static char block[256 * 1024];
    while (res[0] < max) {
      ssize_t n = ::write(fd, block, sizeof block);
      if (n < 0 || ::fsync(fd) != 0) {
        res[1] = uint64_t(errno);
        break;
      }
      res[0] += uint64_t(n);
    }
    (void)!::write(p[1], res, sizeof res);
    _exit(0);
  }
  ::close(p[1]);
  uint64_t res[2] = {0, 0};
  REQUIRE(::read(p[0], res, sizeof res) == sizeof res);
  ::close(p[0]);
  int ws = 0;
  ::waitpid(pid, &ws, 0);
  REQUIRE(WIFEXITED(ws));
  REQUIRE(WEXITSTATUS(ws) == 0);
  return {res[0], int(res[1])};
}

// `zfs get userused@UID` through another command than the backend's reads.
uint64_t userused(const std::string& zfs, const std::string& ds, uint32_t uid) {
  auto r = runProgram({zfs, "get", "-H", "-p", "-o", "value", "userused@" + std::to_string(uid), ds}, RunLimits{});
  REQUIRE(r.ok());
  REQUIRE(r->exit_code == 0);
  return std::stoull(r->out);
}

const QuotaFigures* entryOf(const DeviceSnapshot& s, uint32_t uid) {
  for (const auto& e : s.users.entries)
    if (e.id == uid) return &e;
  return nullptr;
}

}  // namespace

TEST_CASE("zfs on a real pool: discover, set, a writer stopped, read back, degraded", "[.zfs-vm]") {
  const std::string zfs = env("DQ_ZFS_BINARY");                  // and DQ_ZPOOL_BINARY
  const std::string pool = env("DQ_ZFS_POOL");                   // "tank", mounted on /tank
  const std::string home = pool + "/home";                       // mounted on /tank/home, mode 1777
  const std::string gone = pool + "/gone";                       // destroyed by this test
  const uint32_t uid = uint32_t(std::stoul(env("DQ_ZFS_UID")));  // a user with no files yet
  auto cli = std::make_shared<ZfsCli>(zfs, realZfsExec(zfs));

  // Discovery (ZFS_DATASETS null): every filesystem; a zvol and mountpoint=none are not devices.
  ZfsBackend all(ZfsSelection{true, {}, {pool + "/excluded*"}}, cli);
  std::vector<std::string> names;
  for (auto& d : all.datasets()) names.push_back(d->name());
  CHECK(names == std::vector<std::string>{pool, gone, home, pool + "/legacy"});
  CHECK(all.health().degraded.empty());

  ZfsBackend configured(ZfsSelection{false, {home, gone}, {}}, cli);
  auto ds = configured.datasets();
  REQUIRE(ds.size() == 2);
  auto& dhome = *ds[0];
  auto& dgone = *ds[1];

  // 4 MiB through the PUT's path (KiB in, bytes to zfs), read back at once.
  LimitsUpdate four;
  four.block_hard_kib = 4096;
  four.block_soft_kib = 1;  // ignored: ZFS has one limit
  REQUIRE(dhome.setUserLimits(uid, four).ok());
  auto q = dhome.readUser(uid);
  REQUIRE(q.ok());
  REQUIRE(q->has_value());
  CHECK((*q)->block_hard_kib == 4096);
  CHECK((*q)->block_soft_kib == 4096);
  CHECK((*q)->block_current == 0);
  // An id with a quota and no usage is listed (spec §4.2).
  auto before = dhome.read();
  REQUIRE(before.ok());
  REQUIRE(entryOf(*before, uid) != nullptr);
  CHECK(entryOf(*before, uid)->block_hard_kib == 4096);
  CHECK(before->mount_points == std::vector<std::string>{"/tank/home"});
  CHECK(before->usage.total == before->usage.used + before->usage.free);

  // The writer: stopped by the kernel (EDQUOT) near the quota, not at the 64 MiB it asked for.
  auto [written, err] = writeAs(uid, "/tank/home/fill-" + std::to_string(uid), 64u << 20);
  INFO("written " << written << " errno " << err);
  CHECK(err == EDQUOT);
  CHECK(written >= (2u << 20));
  // ZFS enforces at txg sync (zfs_txg_timeout = 1 s here): what the writer
  // manages in about a second passes the quota, never the whole 64 MiB.
  CHECK(written <= (24u << 20));
  // The last writes are charged at the next txg sync: force it, so the
  // backend's read and `zfs get` below see the same settled figure.
  auto synced = runProgram({env("DQ_ZPOOL_BINARY"), "sync", pool}, RunLimits{});
  REQUIRE(synced.ok());
  REQUIRE(synced->exit_code == 0);
  auto after = dhome.read();
  REQUIRE(after.ok());
  const QuotaFigures* e = entryOf(*after, uid);
  REQUIRE(e != nullptr);
  CHECK(e->block_current == userused(zfs, home, uid));
  CHECK(e->block_current >= 4u << 20);  // stopped because it reached the quota
  CHECK(e->block_hard_kib == 4096);

  // Removing the quota (0) keeps the entry (it still has usage) with limit 0.
  LimitsUpdate zero;
  zero.block_hard_kib = 0;
  REQUIRE(dhome.setUserLimits(uid, zero).ok());
  q = dhome.readUser(uid);
  REQUIRE(q.ok());
  REQUIRE(q->has_value());
  CHECK((*q)->block_hard_kib == 0);
  // An unknown uid: no entry.
  q = dhome.readUser(4000000000u);
  REQUIRE(q.ok());
  CHECK_FALSE(q->has_value());

  // A configured dataset that is gone: read fails, degraded, counted; set fails with zfs's message.
  REQUIRE(dgone.read().ok());
  auto destroyed = runProgram({zfs, "destroy", gone}, RunLimits{});
  REQUIRE(destroyed.ok());
  REQUIRE(destroyed->exit_code == 0);
  auto r = dgone.read();
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("does not exist") != std::string::npos);
  CHECK(cli->counters().dataset_missing == 1);
  auto h = configured.health();
  REQUIRE(h.degraded.size() == 1);
  CHECK(h.degraded[0].find(gone) != std::string::npos);
  auto st = dgone.setUserLimits(uid, four);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message == "cannot open '" + gone + "': dataset does not exist");

  // No binary: discovery reports it loudly.
  auto none = std::make_shared<ZfsCli>("/nonexistent/zfs", realZfsExec("/nonexistent/zfs"));
  ZfsBackend missing(ZfsSelection{}, none);
  CHECK(missing.datasets().empty());
  REQUIRE(missing.health().degraded.size() == 1);
}
