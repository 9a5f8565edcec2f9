// SPDX-License-Identifier: Apache-2.0
// The containerd runtime's pure parts: the watch's state machine driven by
// fake module events (agent/runtime/containerd_watch.h), the upperdir=
// parser, the config keys, and loading the module (the real one, built
// beside the tests; a missing one; a library that is not one).
#include <catch2/catch.hpp>

#include <thread>

#include "agent/runtime/containerd/mount_options.h"
#include "agent/runtime/containerd_runtime.h"
#include "agent/runtime/containerd_watch.h"
#include "app/config.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;

namespace {

// A dq_ctrd_event as the module hands one out, with storage for its strings.
struct FakeEvent {
  uint32_t kind;
  std::string ns = "k8s.io", id, snapshotter, key, upper, upper_error, upper_reason;
  std::map<std::string, std::string> labels;
  uint32_t state = DQ_CTRD_STATE_NONE, pid = 0, exit_status = 0;
  int64_t timestamp_ns = 0, created_ns = 0;
  std::vector<dq_ctrd_kv> kv;
  dq_ctrd_event ev{};

  const dq_ctrd_event& view(uint64_t seq) {
    kv.clear();
    for (const auto& [k, v] : labels) kv.push_back({k.c_str(), v.c_str()});
    ev = dq_ctrd_event{};
    ev.struct_size = sizeof ev;
    ev.kind = kind;
    ev.seq = seq;
    ev.timestamp_ns = timestamp_ns;
    ev.ns = ns.c_str();
    ev.container_id = id.c_str();
    ev.image = "";
    ev.snapshotter = snapshotter.c_str();
    ev.snapshot_key = key.c_str();
    ev.upper_dir = upper.c_str();
    ev.upper_error = upper_error.c_str();
    ev.upper_reason = upper_reason.c_str();
    ev.pid = pid;
    ev.exit_status = exit_status;
    ev.task_state = state;
    ev.n_labels = uint32_t(kv.size());
    ev.labels = kv.data();
    ev.created_ns = created_ns;
    return ev;
  }
};

struct Recorder {
  std::vector<std::string> calls;
  CtrdHooks hooks() {
    return CtrdHooks{
        .on_rootfs =
            [this](const std::string& ns, const std::string& id, const std::map<std::string, std::string>& labels,
                   const std::string& upper, int64_t) {
              auto it = labels.find("io.kubernetes.pod.namespace");
              calls.push_back("create " + ns + "/" + id + " " + upper +
                              (it != labels.end() ? " tenant=" + it->second : ""));
            },
        .on_container_delete = [this](const std::string& ns,
                                      const std::string& id) { calls.push_back("delete " + ns + "/" + id); },
    };
  }
};

uint64_t seq = 0;
void feed(ContainerdWatch& w, FakeEvent e, int64_t now = 0) { w.apply(e.view(++seq), now); }

FakeEvent taskCreate(const std::string& id, const std::string& upper) {
  FakeEvent e{.kind = DQ_CTRD_TASK_CREATE, .id = id, .snapshotter = "overlayfs", .key = id, .upper = upper};
  e.labels = {{"io.kubernetes.pod.namespace", "team-a"}};
  e.state = DQ_CTRD_STATE_CREATED;
  return e;
}

}  // namespace

TEST_CASE("containerd watch: a container's life, hooks in order with the upper dir", "[containerd]") {
  ContainerdWatch w;
  Recorder r;
  w.setHooks(r.hooks());
  feed(w, FakeEvent{.kind = DQ_CTRD_CONTAINER_CREATE, .id = "c1", .snapshotter = "overlayfs", .key = "c1"});
  REQUIRE(w.find("k8s.io", "c1"));
  CHECK(w.find("k8s.io", "c1")->task_state == DQ_CTRD_STATE_NONE);
  FakeEvent tc = taskCreate("c1", "/snap/1/fs");
  tc.timestamp_ns = 1'000'000'000;
  feed(w, tc, /*now=*/1'004'000'000);  // 4 ms later
  feed(w, FakeEvent{.kind = DQ_CTRD_TASK_START, .id = "c1", .pid = 42});
  auto c = w.find("k8s.io", "c1");
  REQUIRE(c);
  CHECK(c->task_state == DQ_CTRD_STATE_RUNNING);
  CHECK(c->pid == 42);
  CHECK(c->upper_dir == "/snap/1/fs");
  CHECK(c->labels.at("io.kubernetes.pod.namespace") == "team-a");
  feed(w, FakeEvent{.kind = DQ_CTRD_TASK_EXIT, .id = "c1", .exit_status = 137});
  CHECK(w.find("k8s.io", "c1")->task_state == DQ_CTRD_STATE_STOPPED);
  CHECK(w.find("k8s.io", "c1")->exit_status == 137);
  feed(w, FakeEvent{.kind = DQ_CTRD_TASK_DELETE, .id = "c1"});
  CHECK(w.find("k8s.io", "c1")->task_state == DQ_CTRD_STATE_NONE);
  // A task event carries no labels: the container's are kept.
  CHECK(w.find("k8s.io", "c1")->labels.size() == 1);
  feed(w, FakeEvent{.kind = DQ_CTRD_CONTAINER_DELETE, .id = "c1"});
  CHECK_FALSE(w.find("k8s.io", "c1"));
  CHECK(r.calls == std::vector<std::string>{"create k8s.io/c1 /snap/1/fs tenant=team-a", "delete k8s.io/c1"});

  const auto rep = w.report();
  for (const char* k :
       {"container_create", "task_create", "task_start", "task_exit", "task_delete", "container_delete"})
    CHECK(rep["events"][k] == 1);
  CHECK(rep["hook_calls"]["rootfs_at_task_create"] == 1);  // the container create had no upper dir
  CHECK(rep["hook_calls"]["container_delete"] == 1);
  CHECK(rep["task_create_to_upper_dir_ms"]["samples"] == 1);
  CHECK(rep["task_create_to_upper_dir_ms"]["p99"].get<double>() == Approx(4.0));
  const auto recent = w.recent();
  REQUIRE(recent.size() == 6);
  CHECK(std::string(recent.front().kind) == "container_create");
  CHECK(std::string(recent.back().kind) == "container_delete");
}

TEST_CASE("containerd watch: unresolved upper dirs are counted by reason", "[containerd]") {
  ContainerdWatch w;
  FakeEvent e = taskCreate("n1", "");
  e.snapshotter = "native";
  e.upper_error = "unsupported snapshotter native for container k8s.io/n1";
  e.upper_reason = "unsupported_snapshotter";
  feed(w, e);
  FakeEvent g = taskCreate("g1", "");
  g.upper_reason = "container_gone";
  feed(w, g);
  const auto rep = w.report();
  CHECK(rep["upper_dir_unresolved"]["unsupported_snapshotter"] == 1);
  CHECK(rep["upper_dir_unresolved"]["container_gone"] == 1);
  CHECK(w.find("k8s.io", "n1")->upper_error.find("native") != std::string::npos);
  CHECK(rep["task_create_to_upper_dir_ms"]["samples"] == 0);  // no upper dir: no latency sample
}

TEST_CASE("containerd watch: a reconcile replaces one namespace's set", "[containerd]") {
  ContainerdWatch w;
  Recorder r;
  w.setHooks(r.hooks());
  feed(w, taskCreate("kept", "/snap/1/fs"));
  feed(w, taskCreate("gone", "/snap/2/fs"));
  feed(w, FakeEvent{.kind = DQ_CTRD_CONTAINER_CREATE, .ns = "other", .id = "elsewhere"});
  r.calls.clear();

  feed(w, FakeEvent{.kind = DQ_CTRD_RECONCILE_BEGIN, .id = ""});
  FakeEvent kept{
      .kind = DQ_CTRD_RECONCILE_ITEM, .id = "kept", .snapshotter = "overlayfs", .key = "kept", .upper = "/snap/1/fs"};
  kept.state = DQ_CTRD_STATE_RUNNING;
  feed(w, kept);
  FakeEvent found{
      .kind = DQ_CTRD_RECONCILE_ITEM, .id = "found", .snapshotter = "overlayfs", .key = "found", .upper = "/snap/3/fs"};
  found.state = DQ_CTRD_STATE_RUNNING;
  found.labels = {{"io.kubernetes.pod.namespace", "team-b"}};
  feed(w, found);
  FakeEvent idle{
      .kind = DQ_CTRD_RECONCILE_ITEM, .id = "idle", .snapshotter = "overlayfs", .key = "idle", .upper = "/snap/4/fs"};
  feed(w, idle);  // a container without a task: not announced
  feed(w, FakeEvent{.kind = DQ_CTRD_RECONCILE_END, .id = ""});

  // Known with its task: not announced again. Found with a task: announced.
  // Not listed: deleted. Another namespace: untouched.
  CHECK(r.calls == std::vector<std::string>{"create k8s.io/found /snap/3/fs tenant=team-b", "delete k8s.io/gone"});
  CHECK(w.find("k8s.io", "kept")->task_state == DQ_CTRD_STATE_RUNNING);
  CHECK(w.find("k8s.io", "idle"));
  CHECK_FALSE(w.find("k8s.io", "gone"));
  CHECK(w.find("other", "elsewhere"));
  const auto rep = w.report();
  CHECK(rep["reconcile_adds"] == 2);
  CHECK(rep["reconcile_deletes"] == 1);
  CHECK(rep["containers"] == 4);
  CHECK(rep["tasks_running"] == 2);
  CHECK(std::string(w.recent().back().kind) == "reconcile_delete");
  CHECK(w.namespacesOf("elsewhere") == std::vector<std::string>{"other"});
}

TEST_CASE("containerd watch: hooks run after the set is updated, unlocked", "[containerd]") {
  ContainerdWatch w;
  bool seen_inside = false;
  w.setHooks(CtrdHooks{.on_rootfs = [&](const std::string& ns, const std::string& id,
                                        const std::map<std::string, std::string>&, const std::string&, int64_t) {
    seen_inside = w.find(ns, id).has_value();  // would deadlock if called under the watch's lock
  }});
  feed(w, taskCreate("c9", "/snap/9/fs"));
  CHECK(seen_inside);
}

TEST_CASE("upperdir= from mount options", "[containerd]") {
  using V = std::vector<std::string_view>;
  auto u = upperDirOf(V{"index=off", "workdir=/s/5/work", "upperdir=/s/5/fs", "lowerdir=/s/1/fs:/s/2/fs"});
  CHECK(u.path == "/s/5/fs");
  CHECK(u.reason.empty());
  CHECK(upperDirOf(V{"lowerdir=/s/1/fs"}).reason == "no_upperdir");
  CHECK(upperDirOf(V{}).reason == "no_upperdir");
  CHECK(upperDirOf(V{"upperdir=/a", "upperdir=/b"}).reason == "several_upperdirs");
  CHECK(upperDirOf(V{"upperdir=relative/fs"}).reason == "bad_upperdir");
  CHECK(upperDirOf(V{"upperdir=/s/../../etc"}).reason == "bad_upperdir");
  CHECK(upperDirOf(V{"upperdir=/s/./fs"}).reason == "bad_upperdir");
  CHECK(upperDirOf(V{"upperdir="}).reason == "bad_upperdir");
  CHECK(upperDirOf(V{std::string_view("upperdir=/a\0b", 13)}).reason == "bad_upperdir");
  CHECK(upperDirOf(V{"xupperdir=/a"}).reason == "no_upperdir");
  CHECK(cleanAbsolutePath("/var/lib/containerd/x..y/fs"));
}

TEST_CASE("containerd watch: reconcile end hook, task create -> hook done samples", "[containerd]") {
  ContainerdWatch w;
  Recorder r;
  CtrdHooks h = r.hooks();
  std::vector<std::string> ended;
  h.on_reconcile_end = [&](const std::string& ns) {
    ended.push_back(ns + " " + std::to_string(w.containers().size()));
  };
  w.setHooks(h);
  FakeEvent tc = taskCreate("c1", "/snap/1/fs");
  tc.timestamp_ns = 1'000'000'000;  // long ago: the sample is now - then, after the hook returned
  feed(w, tc);
  feed(w, taskCreate("c2", ""));  // no upper dir: no sample
  feed(w, FakeEvent{.kind = DQ_CTRD_RECONCILE_BEGIN, .id = ""});
  feed(w, FakeEvent{.kind = DQ_CTRD_RECONCILE_END, .id = ""});
  // after the reconcile's deletes: the hook sees the set as it now is
  CHECK(ended == std::vector<std::string>{"k8s.io 0"});
  const auto rep = w.report();
  CHECK(rep["create_to_hook_done_ms"]["samples"] == 1);
  CHECK(rep["create_to_hook_done_ms"]["p50"].get<double>() > 1000.0);
}

TEST_CASE("containerd watch: a rootfs known at container create is hooked then, once", "[containerd]") {
  ContainerdWatch w;
  Recorder r;
  w.setHooks(r.hooks());
  const int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  FakeEvent cc{
      .kind = DQ_CTRD_CONTAINER_CREATE, .id = "c1", .snapshotter = "overlayfs", .key = "c1", .upper = "/snap/1/fs"};
  cc.labels = {{"io.kubernetes.pod.namespace", "team-a"}};
  cc.timestamp_ns = now - 50'000'000;
  feed(w, cc);
  CHECK(r.calls == std::vector<std::string>{"create k8s.io/c1 /snap/1/fs tenant=team-a"});
  FakeEvent tc = taskCreate("c1", "/snap/1/fs");
  feed(w, tc);
  CHECK(r.calls.size() == 1);  // the same snapshot: not hooked again
  // containerd started the task a second after the hook returned
  feed(w, FakeEvent{.kind = DQ_CTRD_TASK_START, .id = "c1", .pid = 7, .timestamp_ns = now + 1'000'000'000});
  auto rep = w.report();
  CHECK(rep["hook_calls"]["rootfs_at_container_create"] == 1);
  CHECK_FALSE(rep["hook_calls"].contains("rootfs_at_task_create"));
  CHECK(rep["create_to_hook_done_ms"]["samples"] == 1);
  CHECK(rep["hook_done_before_task_start_ms"]["samples"] == 1);
  CHECK(rep["hook_done_before_task_start_ms"]["min"].get<double>() > 900.0);
  CHECK(rep["tasks_started_before_hook"] == 0);

  // A task started (by containerd's clock) before its hook returned is counted.
  FakeEvent c2{
      .kind = DQ_CTRD_CONTAINER_CREATE, .id = "c2", .snapshotter = "overlayfs", .key = "c2", .upper = "/snap/2/fs"};
  feed(w, c2);
  feed(w, FakeEvent{.kind = DQ_CTRD_TASK_START, .id = "c2", .pid = 8, .timestamp_ns = now - 1'000'000'000});
  rep = w.report();
  CHECK(rep["tasks_started_before_hook"] == 1);
  CHECK(rep["hook_done_before_task_start_ms"]["min"].get<double>() < -900.0);

  // A container create the module could not resolve (snapshot prepared
  // later) is neither hooked nor counted unresolved; its task create hooks it.
  feed(w, FakeEvent{.kind = DQ_CTRD_CONTAINER_CREATE,
                    .id = "c3",
                    .snapshotter = "overlayfs",
                    .key = "c3",
                    .upper_reason = "mounts_failed"});
  CHECK(w.report()["upper_dir_unresolved"].empty());
  feed(w, taskCreate("c3", "/snap/3/fs"));
  CHECK(r.calls.back() == "create k8s.io/c3 /snap/3/fs tenant=team-a");
  CHECK(w.report()["hook_calls"]["rootfs_at_task_create"] == 1);
}

TEST_CASE("config: the containerd quota keys", "[config][containerd]") {
  auto d = parseConfig("{}", "t.json");
  REQUIRE(d.ok());
  CHECK(d->containerd_quotas);
  CHECK(d->containerd_quota_default_mib == 0);
  CHECK(d->containerd_limit_label == "dockquota.limit");
  CHECK(d->containerd_tenant_label == "io.kubernetes.pod.namespace");
  CHECK(d->containerd_tenant_quota_mib == 0);
  CHECK(d->containerd_tenant_quotas_mib.empty());
  auto c = parseConfig(R"({"containerd_quotas": false, "containerd_quota_default_mib": 10240,
                           "containerd_limit_label": "io.dockquota/limit", "containerd_tenant_label": "tenant",
                           "containerd_tenant_quota_mib": 20480, "containerd_tenant_quotas_mib": {"a": 1, "b": 2}})",
                       "t.json");
  REQUIRE(c.ok());
  CHECK_FALSE(c->containerd_quotas);
  CHECK(c->containerd_quota_default_mib == 10240);
  CHECK(c->containerd_limit_label == "io.dockquota/limit");
  CHECK(c->containerd_tenant_label == "tenant");
  CHECK(c->containerd_tenant_quota_mib == 20480);
  CHECK(c->containerd_tenant_quotas_mib == std::map<std::string, uint64_t>{{"a", 1}, {"b", 2}});
  for (const char* bad :
       {R"({"containerd_tenant_quotas_mib": {"a": 0}})", R"({"containerd_tenant_quotas_mib": []})",
        R"({"containerd_tenant_quotas_mib": {"": 1}})", R"({"containerd_tenant_quotas_mib": {"a": -1}})",
        R"({"containerd_quota_default_mib": -1})", R"({"containerd_limit_label": ""})"})
    CHECK_FALSE(parseConfig(bad, "t.json").ok());
}

TEST_CASE("config: runtime and the containerd keys", "[config][containerd]") {
  auto d = parseConfig("{}", "t.json");
  REQUIRE(d.ok());
  CHECK(d->runtimes == std::vector<std::string>{"docker"});
  CHECK(d->containerd_address == "/run/containerd/containerd.sock");
  CHECK(d->containerd_namespaces == std::vector<std::string>{"k8s.io"});
  CHECK(d->containerd_module.empty());
  CHECK(d->runtimeEnabled("docker"));
  CHECK_FALSE(d->runtimeEnabled("containerd"));

  for (const char* v : {R"("docker,containerd")", R"(["docker", "containerd"])", R"("docker, containerd")"}) {
    auto c = parseConfig(std::string(R"({"runtime": )") + v + "}", "t.json");
    REQUIRE(c.ok());
    CHECK(c->runtimes == std::vector<std::string>{"docker", "containerd"});
  }
  auto c = parseConfig(R"({"runtime": "containerd", "containerd_address": "/tmp/c.sock",
                           "containerd_namespaces": ["k8s.io", "default"], "containerd_module": "/opt/m.so"})",
                       "t.json");
  REQUIRE(c.ok());
  CHECK(c->runtimes == std::vector<std::string>{"containerd"});
  CHECK(c->containerd_namespaces == std::vector<std::string>{"k8s.io", "default"});
  CHECK(c->containerd_module == "/opt/m.so");

  for (const char* bad : {R"({"runtime": "podman"})", R"({"runtime": ""})", R"({"runtime": []})",
                          R"({"runtime": "docker,docker"})", R"({"runtime": 1})", R"({"containerd_namespaces": []})",
                          R"({"containerd_namespaces": ["a,b"]})", R"({"containerd_namespaces": ["-x"]})",
                          R"({"containerd_address": "relative.sock"})", R"({"containerd_module": "m.so"})"}) {
    auto r = parseConfig(bad, "t.json");
    CHECK_FALSE(r.ok());
  }
  auto r = parseConfig(R"({"runtime": "podman"})", "t.json");
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("\"runtime\"") != std::string::npos);
}

TEST_CASE("containerd module: path precedence", "[containerd]") {
  CHECK(containerdModulePath("/x/m.so") == "/x/m.so");
  setenv("DOCKQUOTA_CONTAINERD_MODULE", "/env/m.so", 1);
  CHECK(containerdModulePath("") == "/env/m.so");
  CHECK(containerdModulePath("/x/m.so") == "/x/m.so");
  unsetenv("DOCKQUOTA_CONTAINERD_MODULE");
  CHECK(containerdModulePath("") == DOCKQUOTA_CONTAINERD_MODULE_PATH);
}

TEST_CASE("containerd module: missing, or not a module: degraded with the reason", "[containerd]") {
  auto missing = ContainerdModule::load("/nonexistent/dockquota-containerd.so");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("/nonexistent/dockquota-containerd.so") != std::string::npos);
  auto other = ContainerdModule::load("libm.so.6");
  REQUIRE_FALSE(other.ok());
  CHECK(other.error().message.find("no dq_ctrd_module symbol") != std::string::npos);

  auto s = ContainerdService::open(ContainerdOptions{.module_path = "/nonexistent/m.so"});
  CHECK_FALSE(s->loaded());
  REQUIRE(s->start().ok());  // the agent runs on
  const Health h = s->health();
  REQUIRE(h.degraded.size() == 1);
  CHECK(h.degraded[0].find("/nonexistent/m.so") != std::string::npos);
  ContainerdRuntime rt(*s);
  CHECK(rt.connect().error().code == ENOTCONN);
}

#ifdef DOCKQUOTA_TEST_CONTAINERD_MODULE
// The real module, against a socket nobody listens on: loaded, ABI checked,
// its thread retries with backoff (counted), /healthz degraded after the
// grace, calls fail with the module's message, stop joins the thread.
TEST_CASE("containerd module: loads, retries a dead socket, degrades", "[containerd]") {
  TempDir tmp;
  auto s = ContainerdService::open(ContainerdOptions{.module_path = DOCKQUOTA_TEST_CONTAINERD_MODULE,
                                                     .address = tmp.file("none.sock"),
                                                     .call_timeout = std::chrono::milliseconds(500),
                                                     .backoff_min = std::chrono::milliseconds(10),
                                                     .backoff_max = std::chrono::milliseconds(50),
                                                     .down_grace = std::chrono::seconds(0)});
  REQUIRE(s->loaded());
  REQUIRE(s->start().ok());
  for (int i = 0; i < 100 && s->stats()->connect_failures < 3; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const auto st = s->stats();
  REQUIRE(st);
  CHECK(st->connect_failures >= 3);
  CHECK(st->rpc_errors >= 3);
  CHECK(st->connected == 0);
  CHECK(std::string(st->last_error).find("list containers in k8s.io") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const Health h = s->health();
  REQUIRE_FALSE(h.degraded.empty());
  CHECK(h.degraded[0].find("not connected to " + tmp.file("none.sock")) != std::string::npos);
  CHECK(h.report["counters"]["connect_failures"].get<uint64_t>() >= 3);
  ContainerdRuntime rt(*s);
  auto bytes = rt.writableBytes("k8s.io/c1");
  REQUIRE_FALSE(bytes.ok());
  CHECK(bytes.error().message.find("containerd: get container k8s.io/c1") != std::string::npos);
  CHECK(rt.stop("c1", std::chrono::seconds(1)).error().code == ENOENT);  // not in the watch
  s->stop();
  s->stop();  // idempotent
}
#endif
