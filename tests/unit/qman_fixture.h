// SPDX-License-Identifier: Apache-2.0
// Shared by the [qman] tests: a store with alice/bob/carol's objects and
// Docker figures that match them, served through a fake UsageSource.
#pragma once

#include "tests/unit/temp_dir.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "agent/store/store.h"
#include "agent/usage/usage.h"

namespace dockquota::testing {

constexpr uint32_t kAlice = 2001, kBob = 2002, kCarol = 2003;

inline std::string hex64(char c) { return std::string(64, c); }
inline std::string img(char c) { return "sha256:" + hex64(c); }

using QmanTempDir = TempDir;

class FakeSource : public UsageSource {
 public:
  explicit FakeSource(UsageFigures f) : figures(std::move(f)) {}
  const char* name() const override { return "fake"; }
  Result<UsageFigures> measure() override {
    if (fail) return Error{EIO, "fake: docker unreachable"};
    return figures;
  }
  UsageFigures figures;
  bool fail = false;
};

inline Evidence evidenceOf(uint32_t uid, double t, const std::string& method, Source src = Source::Bpf) {
  Evidence e;
  e.source = src;
  e.uid = e.gid = uid;
  e.pid = 100 + uid;
  e.comm = "docker";
  e.exe = "/usr/bin/docker";
  e.method = method;
  e.request_time = t - 0.5;
  e.time = t;
  return e;
}

// The scenario (sizes chosen so every sum is distinct):
//   images   rootimg (root, t=5)  layers L0            -> L0 billed to root (uid 0: not a listed user)
//            base    (alice,t=10) layers L1 L2         -> alice owns L1, L2
//            bobimg  (bob,  t=20) layers L1 L2 L3      -> bob owns L3 only (shared base not counted twice)
//            interm. (Docker only, untagged) L1 L2 L3 L4 -> L4 unattributed, image not listed
//            preimg  (unattributed, t=1) layers L5; carolimg (carol, t=30) layers L5 L6
//                                                      -> L5 unattributed (brought before anyone), carol owns L6
//   containers c1 alice 1000, c2 bob 2000, c3 carol 4000, c4 Docker-only 300
//   volumes    v1 bob 5000 (Docker's figure), v2 unattributed 700
struct Scenario {
  static constexpr uint64_t L0 = 30, L1 = 100, L2 = 200, L3 = 400, L4 = 50, L5 = 60, L6 = 70;
  std::string c1 = hex64('1'), c2 = hex64('2'), c3 = hex64('3'), c4 = hex64('4');

  void fill(Store& s) {
    auto ok = [](const Status& st) {
      if (!st) throw std::runtime_error(st.error().message);
    };
    auto own = [&](ObjectKind k, const std::string& id, uint32_t uid, double t, const char* method) {
      auto r = s.objects().attribute(k, id, evidenceOf(uid, t, method), true);
      if (!r) throw std::runtime_error(r.error().message);
    };
    ok(s.objects().noteSeen(ObjectKind::Image, img('0'), "rootimg:1", "", std::nullopt, 5));
    own(ObjectKind::Image, img('0'), 0, 5, "image_import");
    ok(s.objects().noteSeen(ObjectKind::Image, img('a'), "base:1", "", std::nullopt, 10));
    own(ObjectKind::Image, img('a'), kAlice, 10, "image_import");
    ok(s.objects().noteSeen(ObjectKind::Image, img('b'), "bob-built:1", "", std::nullopt, 20));
    own(ObjectKind::Image, img('b'), kBob, 20, "image_build");
    ok(s.objects().noteSeen(ObjectKind::Image, img('p'), "pre:1", "", std::nullopt, 1));
    ok(s.objects().noteSeen(ObjectKind::Image, img('c'), "carol:1", "", std::nullopt, 30));
    own(ObjectKind::Image, img('c'), kCarol, 30, "image_pull");
    ok(s.objects().noteSeen(ObjectKind::Container, c1, "alice-c", img('a'), std::nullopt, 40));
    own(ObjectKind::Container, c1, kAlice, 40, "container_create");
    ok(s.objects().noteSeen(ObjectKind::Container, c2, "bob-c", img('b'), std::nullopt, 41));
    own(ObjectKind::Container, c2, kBob, 41, "container_create");
    ok(s.objects().noteSeen(ObjectKind::Container, c3, "carol-c", img('c'), std::string("alice"), 42));
    own(ObjectKind::Container, c3, kCarol, 42, "container_create");
    ok(s.objects().noteSeen(ObjectKind::Volume, "v1", "v1", "", std::nullopt, 43));
    own(ObjectKind::Volume, "v1", kBob, 43, "volume_create");
    ok(s.objects().noteSeen(ObjectKind::Volume, "v2", "v2", "", std::nullopt, 44));
  }

  UsageFigures figures() const {
    UsageFigures f;
    f.measured_at = 100;
    f.data_root = "/var/lib/docker";
    f.containers = {{c1, "alice-c", img('a'), "running", 1000},
                    {c2, "bob-c", img('b'), "exited", 2000},
                    {c3, "carol-c", img('c'), "running", 4000},
                    {c4, "stray", img('a'), "created", 300}};
    f.images = {{img('0'), {"rootimg:1"}, L0, 5.0, {"L0"}},
                {img('a'), {"base:1"}, L1 + L2, 10.0, {"L1", "L2"}},
                {img('b'), {"bob-built:1"}, L1 + L2 + L3, 20.0, {"L1", "L2", "L3"}},
                {img('i'), {}, L1 + L2 + L3 + L4, 19.0, {"L1", "L2", "L3", "L4"}},
                {img('p'), {"pre:1"}, L5, 1.0, {"L5"}},
                {img('c'), {"carol:1"}, L5 + L6, 30.0, {"L5", "L6"}}};
    f.layer_sizes = {{"L0", L0}, {"L1", L1}, {"L2", L2}, {"L3", L3}, {"L4", L4}, {"L5", L5}, {"L6", L6}};
    f.volumes = {{"v1", 5000, 5000, 1, "/nonexistent/v1"}, {"v2", 700, std::nullopt, 0, "/nonexistent/v2"}};
    return f;
  }

  // Independently: everything Docker holds.
  static constexpr uint64_t kTotal = (1000 + 2000 + 4000 + 300) + (L0 + L1 + L2 + L3 + L4 + L5 + L6) + (5000 + 700);
  static constexpr uint64_t kAliceBytes = 1000 + L1 + L2;
  static constexpr uint64_t kBobBytes = 2000 + L3 + 5000;
  static constexpr uint64_t kCarolBytes = 4000 + L6;
  static constexpr uint64_t kUnattributed = 300 + L0 + L4 + L5 + 700;  // stray, root's layer, intermediate, pre, v2
};

// The store's live objects, as account() takes them.
inline OwnerView ownersOf(const Store& store) {
  OwnerView owners;
  owners.containers = *store.objects().list(ObjectKind::Container);
  owners.images = *store.objects().list(ObjectKind::Image);
  owners.volumes = *store.objects().list(ObjectKind::Volume);
  return owners;
}

}  // namespace dockquota::testing
