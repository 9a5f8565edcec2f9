// SPDX-License-Identifier: Apache-2.0
// Project-quota logic that needs no kernel: id allocation in the store, kernel
// figures joined into the usage snapshot, finding a layer root in mountinfo.
// (The kernel side is tests/bpf/test_prjquota.cpp, on real XFS and ext4.)
#include <catch2/catch.hpp>

#include <sys/sysmacros.h>

#include "agent/base/mountinfo.h"
#include "agent/quota/project_quotas.h"
#include "agent/usage/usage.h"
#include "app/config.h"
#include "qman_fixture.h"

using namespace dockquota;
using namespace dockquota::testing;

TEST_CASE("projects: a layer's project becomes its container's, id and limit kept", "[projects]") {
  QmanTempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  Store& s = **store;
  auto layer = s.projectIds().project("container", "layer:abc", 10, 13, 1);
  REQUIRE(layer.ok());
  REQUIRE(s.projectIds().setProjectLimit("container", "layer:abc", 1 << 20).ok());
  REQUIRE(s.projectIds().project("container", "c2", 10, 13, 1).ok());
  REQUIRE(s.projectIds().renameProject("container", "layer:abc", "c1").ok());
  auto c1 = s.projectIds().project("container", "c1", 10, 13, 2);
  REQUIRE(c1.ok());
  CHECK(c1->id == layer->id);
  CHECK(c1->limit_bytes == std::optional<uint64_t>(1 << 20));
  CHECK(s.projectIds().renameProject("container", "layer:abc", "c3").error().code ==
        ENOENT);                                                                        // gone under its old name
  CHECK(s.projectIds().renameProject("container", "c1", "c2").error().code == EEXIST);  // c2 has its own
  CHECK(s.projectIds().projects()->size() == 2);
}

TEST_CASE("projects: ids are allocated lowest-first, kept, freed and reused", "[projects]") {
  QmanTempDir dir;
  const std::string path = dir.path + "/s.db";
  {
    auto store = Store::open(path);
    REQUIRE(store.ok());
    Store& s = **store;
    auto a = s.projectIds().project("user", "2001", 10, 13, 1);
    auto b = s.projectIds().project("user", "2002", 10, 13, 1);
    auto c = s.projectIds().project("container", "c1", 10, 13, 1);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    REQUIRE(c.ok());
    CHECK(a->id == 10);
    CHECK(b->id == 11);
    CHECK(c->id == 12);
    CHECK(s.projectIds().project("user", "2001", 10, 13, 2)->id == 10);  // the same owner keeps its id
    // `usable` refuses ids someone else holds in the kernel: 13 is skipped, nothing is left.
    auto full = s.projectIds().project("user", "2003", 10, 13, 2, [](uint32_t id) { return id != 13; });
    REQUIRE_FALSE(full.ok());
    CHECK(full.error().code == ENOSPC);
    CHECK(full.error().message.find("10..13") != std::string::npos);
    REQUIRE(s.projectIds().releaseProject("user", "2002").ok());
    REQUIRE(s.projectIds().releaseProject("user", "nobody").ok());       // no-op
    CHECK(s.projectIds().project("user", "2003", 10, 13, 3)->id == 11);  // the freed id, lowest first
    REQUIRE(s.projectIds().setProjectLimit("container", "c1", uint64_t(32) << 20).ok());
    CHECK(s.projectIds().setProjectLimit("container", "c9", 1).error().code == ENOENT);
    CHECK(s.projectIds().setProjectLimit("container", "c1", uint64_t(1) << 63).error().code == EINVAL);
  }
  // Reopened: everything is still there.
  auto store = Store::open(path);
  REQUIRE(store.ok());
  CHECK((*store)->schemaVersion() == Store::kSchemaVersion);
  auto rows = (*store)->projectIds().projects();
  REQUIRE(rows.ok());
  REQUIRE(rows->size() == 3);
  CHECK((*rows)[0].owner == "2001");
  CHECK((*rows)[1].owner == "2003");
  CHECK((*rows)[1].id == 11);
  CHECK((*rows)[2].owner_kind == "container");
  CHECK((*rows)[2].limit_bytes == std::optional<uint64_t>(uint64_t(32) << 20));
  CHECK_FALSE((*rows)[0].limit_bytes);
}

TEST_CASE("projects: kernel figures replace Docker's and the parts still sum up", "[projects][usage]") {
  QmanTempDir dir;
  auto store = Store::open(dir.path + "/s.db");
  REQUIRE(store.ok());
  Scenario sc;
  sc.fill(**store);
  OwnerView owners = ownersOf(**store);
  UsageSnapshot docker = account(std::make_shared<const UsageFigures>(sc.figures()), owners, true);

  SECTION("per user") {
    KernelUsage k;
    k.per_user = true;
    k.read_at = 99;
    k.users[kAlice] = Scenario::kAliceBytes + 5000;  // alice's container grew since Docker measured
    k.users[kBob] = 1000;                            // less than bob's layers + volume (allocated < apparent)
    UsageSnapshot s = account(std::make_shared<const UsageFigures>(sc.figures()), owners, true, &k);
    CHECK(s.kernel);
    CHECK(s.kernel_read_at == 99);
    CHECK(s.users[kAlice].total() == Scenario::kAliceBytes + 5000);
    CHECK(s.users[kAlice].image_layer_bytes == docker.users[kAlice].image_layer_bytes);
    CHECK(s.users[kAlice].container_bytes == docker.users[kAlice].container_bytes + 5000);
    CHECK(s.users[kBob].total() == 1000);
    CHECK(s.users[kBob].container_bytes == 0);
    CHECK(s.users[kBob].image_layer_bytes == std::min<uint64_t>(Scenario::L3, 1000));
    CHECK(s.users[kCarol].total() == docker.users[kCarol].total());  // no project: Docker's figure
    // Unattributed bytes are untouched; the device total moves with the users.
    CHECK(s.total_bytes - s.attributedTo(managedUid) == Scenario::kUnattributed);
    CHECK(s.total_bytes == s.container_bytes + s.layer_bytes + s.volume_bytes);
    CHECK(s.total_bytes == docker.total_bytes + 5000 + 1000 - Scenario::kBobBytes);
  }
  SECTION("per container") {
    KernelUsage k;
    k.containers[sc.c1] = 7777;
    UsageSnapshot s = account(std::make_shared<const UsageFigures>(sc.figures()), owners, true, &k);
    CHECK(s.users[kAlice].container_bytes == 7777);
    CHECK(s.users[kBob].total() == docker.users[kBob].total());
    CHECK(s.total_bytes == docker.total_bytes - 1000 + 7777);
  }
}

TEST_CASE("projects: a container's layer root from its mounted rootfs", "[projects]") {
  const std::string id = std::string(64, 'f');
  const std::string mi =
      "24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
      "300 24 0:50 / /var/lib/docker/rootfs/overlayfs/" +
      id +
      " rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/var/lib/docker/containerd/daemon/"
      "io.containerd.snapshotter.v1.overlayfs/snapshots/42/fs,workdir=/var/lib/docker/containerd/daemon/"
      "io.containerd.snapshotter.v1.overlayfs/snapshots/42/work\n"
      "301 24 0:51 / /other rw - overlay overlay rw,upperdir=/x/fs,workdir=/x/work\n";
  CHECK(layerRootFromMounts(mi, id) ==
        "/var/lib/docker/containerd/daemon/io.containerd.snapshotter.v1.overlayfs/snapshots/42");
  CHECK(layerRootFromMounts(mi, std::string(64, 'e')).empty());
  CHECK(layerRootFromMounts("garbage line\n\n- - -", id).empty());
}

TEST_CASE("projects: config keys are checked", "[projects][config]") {
  auto c = parseConfig(R"({"project_quotas": "required", "project_quota_mode": "container",
                           "project_id_min": 5, "project_id_max": 9, "container_quota_default_mib": 32,
                           "project_sync_interval_s": 2})",
                       "t");
  REQUIRE(c.ok());
  CHECK(c->project_quotas == "required");
  CHECK(c->project_quota_mode == "container");
  CHECK(c->container_quota_default_mib == 32);
  auto d = parseConfig("{}", "t");
  CHECK(d->project_quotas == "auto");
  CHECK(d->project_quota_mode == "user");
  for (const char* bad : {R"({"project_quotas": "yes"})", R"({"project_quota_mode": "group"})",
                          R"({"project_id_min": 9, "project_id_max": 5})", R"({"project_id_min": 0})",
                          R"({"project_id_max": 4294967295})", R"({"project_sync_interval_s": 0})"}) {
    auto r = parseConfig(bad, "t");
    INFO(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("project_") != std::string::npos);
  }
}

TEST_CASE("mountinfo: fields, octal escapes, optional fields, malformed lines", "[projects]") {
  auto m = parseMountinfo(
      "36 25 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"
      "40 24 7:0 /sub /mnt/with\\040space rw master:1 shared:2 - xfs /dev/loop0 rw,prjquota\n"
      "garbage\n"
      "41 24 7:1 / /no/dash rw\n");
  REQUIRE(m.size() == 2);
  CHECK(m[0].fstype == "cgroup2");
  CHECK(m[0].mount_point == "/sys/fs/cgroup");
  CHECK(m[1].dev == makedev(7, 0));
  CHECK(m[1].root == "/sub");
  CHECK(m[1].mount_point == "/mnt/with space");
  CHECK(m[1].source == "/dev/loop0");
  CHECK(m[1].super_options == "rw,prjquota");
  CHECK(underMount("/mnt/with space/x", "/mnt/with space"));
  CHECK_FALSE(underMount("/mnt/with spacex", "/mnt/with space"));
  CHECK(underMount("/anything", "/"));
}
