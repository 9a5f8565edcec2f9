// SPDX-License-Identifier: Apache-2.0
// dockquotad: attributes Docker containers, images and volumes to the Linux
// uid that asked for them, and serves what it knows over HTTP.
//
// Start-up order matters: the probes attach before the first reconcile with
// Docker, so nothing created during start-up is missed; anything Docker has
// that the probes did not see is recorded as unattributed.
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>

#include "agent/attribution/attributor.h"
#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/capture/conn_tracker.h"
#include "agent/probes/dsock_probe.h"
#include "agent/probes/exec_probe.h"
#include "agent/probes/probe_util.h"
#include "agent/runtime/docker_client.h"
#include "app/config.h"
#include <httplib.h>

#include "agent/store/store.h"
#include "agent/usage/growth_monitor.h"
#include "api/http_api.h"
#include "api/metrics.h"
#include "app/enforcement_wiring.h"
#include "app/qman_wiring.h"

using namespace dockquota;
using json = nlohmann::json;

namespace {
// /healthz "project_quotas": the backend's state in words an admin can act on.
json projectQuotaHealth(const ProjectQuotas& p) {
  const auto& fs = p.filesystem();
  const auto& st = p.stats();
  json j = {{"state", p.active() ? "active" : "degraded"},
            {"usage_source", p.active() ? "kernel" : "docker"},
            {"mode", toString(p.options().mode)},
            {"path", fs.path},
            {"filesystem", fs.fstype},
            {"device", fs.device},
            {"ids", {p.options().id_min, p.options().id_max}}};
  if (!p.active()) {
    j["reason"] = fs.reason;
    return j;
  }
  j["syncs"] = st.syncs.load();
  j["errors"] = st.errors.load();
  j["ids_allocated"] = st.ids_allocated.load();
  j["ids_released"] = st.ids_released.load();
  j["tagged_trees"] = st.tagged_trees.load();
  j["deferred_layers"] = st.deferred_layers.load();
  j["deferred_layers_total"] = st.deferred_layers_total.load();
  j["raced_mounts"] = st.raced_mounts.load();
  j["early_tagged"] = st.early_tagged.load();
  j["early_unclear"] = st.early_unclear.load();
  j["early_mounting"] = st.early_mounting.load();
  j["last_sync"] = st.last_sync.load();
  j["last_sync_seconds"] = st.last_sync_seconds.load();
  return j;
}
}  // namespace

namespace {

constexpr const char* kSub = "dockquotad";
constexpr const char* kDefaultConfig = "/etc/dockquota/config.json";
constexpr auto kRefreshEvery = std::chrono::seconds(30);
constexpr auto kSweepEvery = std::chrono::seconds(5);

// /healthz "stream": the connection tracker's figures, and under "losses"
// every way it lost or doubted an attribution, by reason. Any loss makes the
// agent degraded: a green /healthz must mean nothing was missed.
nlohmann::json streamHealth(const TrackerStats& ts, std::vector<std::string>& reasons) {
  const nlohmann::json losses = {
      {"doubtful_calls", ts.doubtful_calls},        // recognised, not billed: pairing in doubt, several writers
      {"dropped_memory", ts.dropped_memory},        // connections dropped over the memory budget
      {"evicted", ts.evicted},                      // dropped over the connection count limit
      {"lost_events", ts.http.lost_events},         // stream calls lost to a full ring
  };
  for (const auto& [reason, n] : losses.items()) {
    if (n.get<uint64_t>() > 0) reasons.push_back("attribution stream: " + reason + " " + n.dump());
  }
  return {{"connections", ts.connections}, {"open", ts.open}, {"exchanges", ts.http.exchanges},
          {"parse_errors", ts.http.parse_errors}, {"resyncs", ts.http.resyncs}, {"gap_bytes", ts.http.gap_bytes},
          {"discarded_bytes", ts.http.discarded_bytes}, {"orphan_responses", ts.http.orphan_responses},
          {"orphan_events", ts.orphan_events}, {"late_connects", ts.late_connects}, {"replaced", ts.replaced},
          {"ended_unseen", ts.ended_unseen}, {"lost_heads", ts.http.lost_heads}, {"doubts", ts.http.doubts},
          {"doubtful_exchanges", ts.http.doubtful_exchanges}, {"doubtful_billed", ts.doubtful_billed}, {"api_calls", ts.calls}, {"docker_execs", ts.execs},
          {"muted_uploads", ts.muted_uploads}, {"muted_downloads", ts.muted_downloads},
          {"memory_bytes", ts.memory_bytes}, {"memory_peak_bytes", ts.memory_peak},
          {"memory_budget_bytes", ts.memory_budget}, {"losses", losses}};
}

void usage(FILE* out) {
  fprintf(out,
          "usage: dockquotad [--config FILE] [-v] [--check-config] [--version]\n"
          "  --config FILE    JSON config (default %s; built-in defaults if it is missing)\n"
          "  -v, --verbose    debug logging (overrides log_level)\n"
          "  --check-config   validate the config and exit\n",
          kDefaultConfig);
}

// systemd Type=notify without libsystemd: one datagram to $NOTIFY_SOCKET.
void sdNotify(const char* state) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@')) return;
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
  if (path[0] == '@') sa.sun_path[0] = '\0';
  sendto(fd, state, strlen(state), 0, reinterpret_cast<sockaddr*>(&sa),
         offsetof(sockaddr_un, sun_path) + strlen(path));
  close(fd);
}

// The interval at which to send WATCHDOG=1: half of $WATCHDOG_USEC, as
// sd_watchdog_enabled(3) advises; zero when systemd set no watchdog for us
// (WatchdogSec= unset, or $WATCHDOG_PID names another process).
std::chrono::milliseconds watchdogInterval() {
  const char* usec = getenv("WATCHDOG_USEC");
  if (!usec || !*usec) return std::chrono::milliseconds(0);
  if (const char* pid = getenv("WATCHDOG_PID"); pid && *pid && strtoll(pid, nullptr, 10) != getpid())
    return std::chrono::milliseconds(0);
  char* end = nullptr;
  const unsigned long long us = strtoull(usec, &end, 10);
  if (*end != '\0' || us == 0) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(std::max<unsigned long long>(us / 2000, 1));
}

std::string kernelRelease() {
  utsname u;
  return uname(&u) == 0 ? u.release : "unknown";
}

// glibc's defaults favour throughput over footprint, and the agent's memory
// is mostly a few big short-lived buffers (Docker lists, store lists, pages)
// next to a small steady state. Set here rather than only in the unit's
// environment, so every way of starting the agent gets the same figures.
void setMallocPolicy() {
  // An arena per thread (8 x cores) keeps each one's freed pages apart; two
  // are plenty for an agent this size.
  mallopt(M_ARENA_MAX, 2);
  // Blocks of 128 KiB and up are mmap()ed and go back to the kernel when
  // freed. A fixed threshold turns off glibc's adaptive one, which after the
  // first big free would serve blocks of up to 32 MiB from the heap, where
  // they stay resident until trimmed.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
}

}  // namespace

int main(int argc, char** argv) {
  setMallocPolicy();
  std::string config_path = kDefaultConfig;
  bool config_given = false, verbose = false, check_only = false;
  static const option kOptions[] = {{"config", required_argument, nullptr, 'c'},
                                    {"verbose", no_argument, nullptr, 'v'},
                                    {"check-config", no_argument, nullptr, 'C'},
                                    {"version", no_argument, nullptr, 'V'},
                                    {"help", no_argument, nullptr, 'h'},
                                    {nullptr, 0, nullptr, 0}};
  for (int c; (c = getopt_long(argc, argv, "c:vh", kOptions, nullptr)) != -1;) {
    switch (c) {
      case 'c': config_path = optarg; config_given = true; break;
      case 'v': verbose = true; break;
      case 'C': check_only = true; break;
      case 'V': printf("dockquotad 0.1.0\n"); return 0;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }

  auto cfg = loadConfig(config_path, /*optional=*/!config_given);
  if (!cfg) {
    LOG_ERROR(kSub, "%s", cfg.error().message.c_str());
    return 2;
  }
  Config& config = *cfg;
  log::Level level;
  log::parseLevel(config.log_level, &level);
  log::setLevel(verbose ? log::Level::Debug : level);
  if (check_only) {
    printf("config ok\n");
    return 0;
  }
  if (config.api_key.empty()) {
    LOG_WARN(kSub, "no api_key or api_key_file configured: authenticated routes answer 500 until one is set");
  }

  // Signals arrive through a signalfd in the main loop; block them before any
  // thread starts so every thread inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);
  int sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);

  installLibbpfLogger();

  // --- store ---------------------------------------------------------------
  // The database's directory is 0700 however the agent was started (a
  // shell's umask of 022 would make it 0755).
  if (auto st = makeStateDirectory(std::filesystem::path(config.database).parent_path().string()); !st) {
    LOG_ERROR(kSub, "%s", st.error().message.c_str());
    return 1;
  }
  auto store_r = Store::open(config.database);
  if (!store_r) {
    LOG_ERROR(kSub, "%s", store_r.error().message.c_str());
    return 1;
  }
  Store& store = **store_r;
  LOG_INFO(kSub, "store %s (schema v%d)", store.path().c_str(), store.schemaVersion());

  DockerClient docker(config.docker_socket);
  // --- issue 11: is the agent attached and watching? (the missed-object
  // check judges only objects created while this holds). Set below once the
  // probe and the events stream exist; the probe's own health can replace it.
  std::unique_ptr<DsockProbe> dsock;
  // Unix time the events stream last connected (the probes attach before it
  // can), 0 while it is down.
  std::atomic<double> watching_since{0};
  Attributor attributor(store, docker,
                        {.missed_after = std::chrono::milliseconds(config.missed_check_ms),
                         .watching = [&](double since) {
                           const double from = watching_since.load();
                           return dsock != nullptr && from > 0 && from <= since;
                         }});
  // The project-quota backend exists once the qman services are up (below);
  // until then there is nothing to tag.
  std::atomic<ProjectQuotas*> projects{nullptr};
  // Set once the qman services exist: a create or pull without kernel
  // quotas asks the accountant to measure (enforcement's trigger).
  std::atomic<UsageAccountant*> measure_on_change{nullptr};
  attributor.setOwnerListener([&](ObjectKind kind, const std::string& id) {
    if (auto* p = projects.load()) p->onOwnerChanged(kind, id);
    if (auto* u = measure_on_change.load(); u && kind != ObjectKind::Volume) u->refreshNow();
  });
  attributor.setGoneListener([&](ObjectKind, const std::string&) {
    if (auto* p = projects.load()) p->wake();  // free ids soon
  });
  attributor.start();

  // --- probes: attach before the first reconcile ----------------------------
  std::vector<std::string> degraded;
  std::mutex tracker_mu;  // the main loop feeds it; /healthz reads its stats
  std::unique_ptr<ExecProbe> exec;
  // Who pays for a container create the probe saw (uid, login uid as the kernel gives it).
  auto billedCreator = [&config](uint32_t uid, uint32_t loginuid) {
    Evidence ev;
    ev.uid = uid;
    if (loginuid != UINT32_MAX) ev.login_uid = loginuid;
    return billedUid(ev, config.bill_root_to_login_uid);
  };
  ConnTracker tracker(
      {
          .on_call = [&](const ApiCall& call, const ClientInfo& who) { attributor.onApiCall(call, who); },
          .on_doubtful_call = nullptr,
          .control = [&](uint64_t conn_id, const dsock_ctl& ctl) { if (dsock) dsock->control(conn_id, ctl); },
          .exe_of = nullptr,
          .alive = nullptr,
          // A user's first container layer is tagged as Docker makes it only if
          // their project exists by then: allocated as soon as the create is sent.
          .on_create_sent =
              [&](uint32_t uid, uint32_t loginuid) {
                auto* p = projects.load();
                if (!p) return;
                p->prepareUser(billedCreator(uid, loginuid));
              },
      },
      ConnTracker::kMaxConnections, size_t{config.tracker_memory_mib} << 20);

  if (auto tracefs = ensureTracefs(); !tracefs) {
    LOG_WARN(kSub, "%s; tracepoint probes will fail to attach", tracefs.error().message.c_str());
  }
  auto exec_r = ExecProbe::open(config.docker_binaries, [&](const ExecRecord& r) { tracker.onExec(r); });
  if (exec_r) {
    exec = std::move(*exec_r);
  } else {
    LOG_WARN(kSub, "%s; docker CLI executions will not be recorded (socket attribution still works)",
             exec_r.error().message.c_str());
    degraded.push_back("exec probe unavailable: " + exec_r.error().message);
  }
  DsockProbe::Options dopt;
  dopt.socket_paths = config.watch_sockets;
  dopt.capture_bytes = config.capture_bytes;
  dopt.ringbuf_bytes = config.ringbuf_kib * 1024;
  dopt.hook = config.probe_hook;
  auto dsock_r = DsockProbe::open(dopt, [&](const DsockEventView& ev) { tracker.onEvent(*ev.raw); });
  if (dsock_r) {
    dsock = std::move(*dsock_r);
  } else {
    LOG_ERROR(kSub, "%s; NEW OBJECTS WILL BE UNATTRIBUTED until the probe can attach",
              dsock_r.error().message.c_str());
    degraded.push_back("docker.sock probe unavailable: " + dsock_r.error().message);
  }
  // Re-watches the sockets (a socket Docker re-created has a new inode), on
  // every Docker (re)connect and every kRefreshEvery, which also retries a failure.
  auto refreshSockets = [&] {
    if (!dsock) return;
    if (auto st = dsock->refreshSockets(); !st) LOG_WARN(kSub, "%s", st.error().message.c_str());
  };

  // Live growth of running containers' layers: an early signal to re-read
  // project quotas (issue 4). Needs Docker's client for inspect.
  std::unique_ptr<GrowthMonitor> growth;
  std::string growth_unavailable;
  if (config.growth_probe) {
    GrowthProbe::Options gopt;
    gopt.hook = config.growth_probe_hook;
    auto g = GrowthProbe::open(gopt);
    if (g) {
      growth = std::make_unique<GrowthMonitor>(
          std::move(*g), docker,
          // Read every 250 ms: a container filling its owner's quota is seen
          // (a targeted quota read of its project) well within a second.
          GrowthMonitor::Options{.interval = std::chrono::milliseconds(250),
                                 .signal_bytes = uint64_t(config.growth_signal_mib) << 20,
                                 .on_growth = [&] {
                                   if (auto* p = projects.load(); p && p->active()) p->wake();
                                   else if (auto* u = measure_on_change.load()) u->refreshNow();
                                 },
                                 .on_write = [&](const std::vector<std::string>& ids) {
                                   if (auto* p = projects.load(); p && p->active())
                                     if (auto st = p->readProjectsOf(ids); !st)
                                       LOG_WARN(kSub, "%s", st.error().message.c_str());
                                 }});
    } else {
      // "auto" does not fall back to tp_btf/sys_exit: that would tax every
      // syscall on the host for an early signal.
      const std::string why = g.error().message + (config.growth_probe_hook == "auto"
                                                       ? " (the tp_btf/sys_exit fallback would slow every syscall on "
                                                         "the host; growth_probe_hook \"tracepoint\" accepts that)"
                                                       : "");
      LOG_WARN(kSub, "%s; live container growth is not watched (quotas are re-read on their interval only)",
               why.c_str());
      degraded.push_back("growth probe unavailable: " + why);
      growth_unavailable = why;
    }
  }

  // Loading parsed the kernel's BTF for CO-RE (tens of MiB on a 6.x kernel,
  // twice when fentry was refused); libbpf freed it, glibc kept the pages.
  malloc_trim(0);

  // --- Docker events: reconcile on every (re)connect ------------------------
  std::atomic<bool> reconciled{false};
  std::mutex docker_err_mu;
  std::string docker_error;
  DockerEventStream events(config.docker_socket, {
      .on_event =
          [&](const json& e) {
            attributor.onDockerEvent(e);
            if (growth) growth->onDockerEvent(e);
          },
      .on_connected =
          [&] {
            watching_since = unixNow();
            refreshSockets();
            // The daemon may be a new one, speaking another API version. On
            // failure the version stays unknown: the next request negotiates
            // again and reports the error itself (the reconcile below).
            (void)docker.negotiate();
            if (auto st = attributor.reconcile(); !st) {
              LOG_WARN(kSub, "%s", st.error().message.c_str());
              std::lock_guard<std::mutex> l(docker_err_mu);
              docker_error = st.error().message;
            } else {
              reconciled = true;
              std::lock_guard<std::mutex> l(docker_err_mu);
              docker_error.clear();
            }
            if (growth) {
              if (auto st = growth->watchRunning(); !st) LOG_WARN(kSub, "growth: %s", st.error().message.c_str());
            }
          },
      .on_disconnected =
          [&](const std::string& why) {
            watching_since = 0;
            LOG_WARN(kSub, "docker events stream lost: %s; reconnecting with backoff", why.c_str());
            std::lock_guard<std::mutex> l(docker_err_mu);
            docker_error = why;
          },
  });
  events.start();

  // --- HTTP -----------------------------------------------------------------
  const std::string kernel = kernelRelease();
  std::function<json()> enforcement_health;  // set once enforcement exists
  auto health = [&]() -> json {
    json h;
    std::vector<std::string> reasons = degraded;
    json probes = json::object();
    probes["exec"] = {{"attached", exec != nullptr}, {"hook", "tracepoint"},
                      {"programs", exec ? json::array({"tp/sched/sched_process_exec"}) : json::array()},
                      {"binaries", config.docker_binaries}, {"lost_events", exec ? exec->lost() : 0}};
    json dj = {{"attached", dsock != nullptr}, {"sockets", config.watch_sockets}};
    if (dsock) {
      dj["hook"] = dsock->hook();
      if (!dsock->refusedHooks().empty()) dj["hooks_refused"] = dsock->refusedHooks();
      dj["programs"] = dsock->attached();
      auto ctr = dsock->counters();
      json kc = json::object();
      for (int i = 0; i < DSOCK_CTR_MAX; i++) kc[kDsockCounterNames[i]] = ctr[i];
      dj["kernel_counters"] = kc;
      if (ctr[DSOCK_CTR_RINGBUF_FULL] || ctr[DSOCK_CTR_TRACK_FULL] || ctr[DSOCK_CTR_UNSUPPORTED_CALL]) {
        reasons.push_back("the docker.sock probe dropped events (see kernel_counters)");
      }
    }
    probes["docker_sock"] = dj;
    json gj = {{"attached", growth != nullptr}};
    if (!growth_unavailable.empty()) gj["unavailable"] = growth_unavailable;
    if (growth) {
      const auto& gp = growth->probe();
      gj["hook"] = gp.hook();
      gj["programs"] = gp.attached();
      gj["signals"] = growth->signals();
      auto ctr = gp.counters();
      json kc = json::object();
      for (size_t i = 0; i < ctr.size(); i++) kc[GrowthProbe::counterName(i)] = ctr[i];
      gj["kernel_counters"] = kc;
    }
    probes["growth"] = gj;
    TrackerStats ts;
    {
      std::lock_guard<std::mutex> l(tracker_mu);
      ts = tracker.stats();
    }
    h["stream"] = streamHealth(ts, reasons);
    const auto& as = attributor.stats();
    h["attribution"] = {{"calls", as.calls.load()}, {"failed_calls", as.failed_calls.load()},
                        {"attributed", as.attributed.load()}, {"docker_errors", as.docker_errors.load()},
                        {"store_errors", as.store_errors.load()}, {"reconciles", as.reconciles.load()}};
    {  // issue 11: losses by reason, misses, what confirmed the gone marks
      json losses = json::object();
      for (const auto& [reason, n] : lossCounters(as)) losses[reason] = n;
      auto unresolved = store.unresolvedMissed();
      if (!unresolved) reasons.push_back("store: " + unresolved.error().message);
      const uint64_t open_misses = unresolved ? *unresolved : 0;
      h["attribution"]["losses"] = losses;
      h["attribution"]["missed_unresolved"] = open_misses;
      h["attribution"]["missed_check_ms"] = config.missed_check_ms;
      h["attribution"]["watching"] = attributor.options().watching(unixNow());
      h["attribution"]["gone"] = {{"event", as.gone_by_event.load()}, {"inspect_404", as.gone_by_check.load()},
                                  {"reconcile", as.reconcile_gone.load()}};
      h["attribution"]["reconcile_skipped"] = {{"changed_while_listing", as.reconcile_kept_recent.load()},
                                               {"stale", as.stale_observations.load()}};
      if (as.missed.load() > 0 || open_misses > 0)
        reasons.push_back("missed: " + std::to_string(as.missed.load()) + " object(s) created since the start " +
                          "while the agent watched had no kernel evidence after " +
                          std::to_string(config.missed_check_ms) + " ms; " + std::to_string(open_misses) +
                          " flagged object(s) still without an owner (see the review queue)");
      if (as.removal_unconfirmed.load() > 0)
        reasons.push_back(std::to_string(as.removal_unconfirmed.load()) +
                          " removal call(s) answered 2xx for objects Docker still has (not marked gone)");
    }
    std::string derr;
    {
      std::lock_guard<std::mutex> l(docker_err_mu);
      derr = docker_error;
    }
    const bool connected = events.connected();
    h["docker"] = {{"socket", config.docker_socket}, {"connected", connected},
                   {"api_version", docker.apiVersion()}, {"reconnects", events.reconnects()},
                   {"reconciled", reconciled.load()},
                   {"last_error", derr.empty() ? json(nullptr) : json(derr)}};
    if (!connected) reasons.push_back("not connected to Docker at " + config.docker_socket);
    h["store"] = {{"path", store.path()}, {"schema_version", store.schemaVersion()},
                  {"errors", as.store_errors.load()}};
    if (as.store_errors.load() > 0) reasons.push_back("store writes failed (see logs)");
    if (auto* p = projects.load()) {
      h["project_quotas"] = projectQuotaHealth(*p);
      if (!p->active()) reasons.push_back("no kernel project quotas: " + p->reason() + " (usage is walk-based)");
      if (auto n = p->stats().deferred_layers.load())
        reasons.push_back(std::to_string(n) + " container layer(s) started before their owner was known: their "
                          "writes are outside the owner's project limit until they stop");
    } else {
      h["project_quotas"] = {{"state", "off"}, {"usage_source", "docker"}};
    }
    h["probes"] = probes;
    if (enforcement_health) {
      h["enforcement"] = enforcement_health();
      for (const auto& [channel, d] : h["enforcement"]["delivery"].items())
        if (d.value("consecutive_failures", 0) > 0 || d.value("failing", false))
          reasons.push_back("event delivery to the " + channel + " is failing: " + d.value("last_error", std::string()));
    }
    h["kernel"] = kernel;
    h["degraded"] = reasons;
    h["status"] = reasons.empty() ? "ok" : "degraded";
    return h;
  };
  ApiServer api(apiServerOptions(config), store, health);
  // The qman slave surface (/remote-api, /metrics) and the usage accounting behind it.
  // /metrics: the probes' counters, and the stream's losses by reason.
  auto qman = QmanServices::create(config, store, api, [&] {
    json h = health();
    json p = h["probes"];
    p["stream"] = h["stream"];
    return p;
  });
  if (!qman) {
    LOG_ERROR(kSub, "%s", qman.error().message.c_str());
    events.stop();
    attributor.stop();
    return 1;
  }
  projects = (*qman)->projects();
  // Container layers are tagged as Docker makes them, for the one user whose
  // create is pending (project_quotas.h). The create's request event may
  // still wait in the ring (consumed on a timer): drain it first.
  if (auto* p = projects.load()) {
    p->setCreatorLookup([&]() -> std::optional<uint32_t> {
      std::lock_guard<std::mutex> l(tracker_mu);
      if (exec) {
        if (auto r = exec->consume(); !r) LOG_ERROR(kSub, "%s", r.error().message.c_str());
      }
      if (dsock) {
        if (auto r = dsock->consume(); !r) LOG_ERROR(kSub, "%s", r.error().message.c_str());
      }
      std::optional<uint32_t> who;
      for (const auto& pc : tracker.pendingCreates()) {
        const uint32_t billed = billedCreator(pc.uid, pc.loginuid);
        if (who && *who != billed) return std::nullopt;  // two users creating at once: which layer is whose?
        who = billed;
      }
      return who;
    });
  }
  // Enforcement and events (issue 5): sweeps whenever usage is published.
  auto enforcement = EnforcementServices::create(config, store, **qman, api);
  if (!enforcement) {
    LOG_ERROR(kSub, "%s", enforcement.error().message.c_str());
    events.stop();
    attributor.stop();
    return 1;
  }
  enforcement_health = [e = enforcement->get()] { return e->health(); };
  {  // issue 11: attribution losses in /metrics, after what enforcement renders
    auto& more = (*qman)->context().more_metrics;
    more = [prev = more, &health](std::string& out) {
      if (prev) prev(out);
      promAttributionCounters(out, health()["attribution"]);
    };
  }
  (*qman)->setUsageListener([e = enforcement->get()] { e->usageChanged(); });
  const bool kernel_usage = (*qman)->projects() && (*qman)->projects()->active();
  if (config.enforcement != "off" && !kernel_usage) measure_on_change = &(*qman)->usage();
  // GET /api/v1/growth: bytes each running container wrote into its layer
  // since it started (the live-growth probe), and the sums per billed uid.
  api.route("GET", "/api/v1/growth", [&](const httplib::Request& req, httplib::Response& res) {
    if (!api.authorize(req, res)) return;
    json out = {{"attached", growth != nullptr}, {"containers", json::array()}, {"users", json::array()}};
    if (growth) {
      auto figs = growth->figures();
      std::map<std::string, std::optional<uint32_t>> owner;
      for (const auto& [id, g] : figs) {
        auto rec = store.get(ObjectKind::Container, id);
        owner[id] = rec && *rec && (*rec)->owner
                        ? std::optional<uint32_t>(billedUid(*(*rec)->owner, config.bill_root_to_login_uid))
                        : std::nullopt;
        json c = {{"id", id}, {"bytes", g.bytes}, {"writes", g.writes}};
        if (owner[id]) c["uid"] = *owner[id];
        out["containers"].push_back(c);
      }
      for (const auto& [uid, g] : growthByOwner(figs, [&](const std::string& id) { return owner[id]; }))
        out["users"].push_back({{"uid", uid}, {"bytes", g.bytes}, {"writes", g.writes}});
    }
    sendJson(res, 200, out);
  });
  if (growth) growth->start();
  (*qman)->start();
  (*enforcement)->start();
  auto port = api.start();
  if (!port) {
    LOG_ERROR(kSub, "%s", port.error().message.c_str());
    (*enforcement)->stop();
    if (growth) growth->stop();
    projects = nullptr;
    (*qman)->stop();
    events.stop();
    attributor.stop();
    return 1;
  }
  sdNotify("READY=1");
  LOG_NOTICE(kSub, "running: kernel %s, %s", kernel.c_str(),
             degraded.empty() ? "all probes attached" : "DEGRADED (see /healthz)");

  // --- main loop: probe events ------------------------------------------------
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = sig_fd;
  epoll_ctl(ep, EPOLL_CTL_ADD, sig_fd, &e);
  if (dsock) {
    e.data.fd = dsock->epollFd();
    epoll_ctl(ep, EPOLL_CTL_ADD, dsock->epollFd(), &e);
  }
  if (exec) {
    e.data.fd = exec->fd();
    epoll_ctl(ep, EPOLL_CTL_ADD, exec->fd(), &e);
  }
  // systemd's watchdog (WatchdogSec=): pinged from this loop, so a stuck loop
  // (no more ring buffer draining) stops the pings and systemd restarts us.
  const auto watchdog_every = watchdogInterval();
  auto next_watchdog = std::chrono::steady_clock::now();
  if (watchdog_every.count() > 0)
    LOG_INFO(kSub, "systemd watchdog: WATCHDOG=1 every %lld ms", static_cast<long long>(watchdog_every.count()));
  auto next_refresh = std::chrono::steady_clock::now() + kRefreshEvery;
  auto next_sweep = std::chrono::steady_clock::now() + kSweepEvery;
  bool running = true;
  while (running) {
    // Events are written without wake-ups (cheaper for clients): poll on a
    // short timer while connections are open; a connect wakes us when idle.
    int timeout = tracker.openConnections() > 0 ? static_cast<int>(config.poll_interval_ms) : 1000;
    if (watchdog_every.count() > 0) {
      auto until = std::chrono::duration_cast<std::chrono::milliseconds>(next_watchdog - std::chrono::steady_clock::now());
      timeout = std::max(0, std::min<int>(timeout, static_cast<int>(until.count())));
    }
    epoll_event out[4];
    int n = epoll_wait(ep, out, 4, timeout);
    for (int i = 0; i < n; i++) {
      if (out[i].data.fd == sig_fd) {
        signalfd_siginfo si;
        if (read(sig_fd, &si, sizeof si) == sizeof si) {
          LOG_NOTICE(kSub, "signal %u: stopping", si.ssi_signo);
          running = false;
        }
      }
    }
    {
      // Exec events first: a docker CLI's exec precedes its connect.
      std::lock_guard<std::mutex> l(tracker_mu);
      if (exec) {
        if (auto r = exec->consume(); !r) LOG_ERROR(kSub, "%s", r.error().message.c_str());
      }
      if (dsock) {
        if (auto r = dsock->consume(); !r) LOG_ERROR(kSub, "%s", r.error().message.c_str());
      }
    }
    if (std::chrono::steady_clock::now() >= next_sweep) {
      // Connections whose end the probe could not see (the client closed
      // after dockerd did): end them, or their buffers would stay forever.
      next_sweep = std::chrono::steady_clock::now() + kSweepEvery;
      std::lock_guard<std::mutex> l(tracker_mu);
      tracker.sweep(monotonicNs());
    }
    if (watchdog_every.count() > 0 && std::chrono::steady_clock::now() >= next_watchdog) {
      next_watchdog = std::chrono::steady_clock::now() + watchdog_every;
      // The store's lock is the one every worker (attributor, API, quota
      // sync, enforcement) takes: reading the change counter under it costs
      // nothing, and a thread that hangs holding it hangs us here, so the
      // pings stop and systemd restarts the agent.
      (void)store.sequence();
      sdNotify("WATCHDOG=1");
    }
    if (std::chrono::steady_clock::now() >= next_refresh) {
      next_refresh = std::chrono::steady_clock::now() + kRefreshEvery;
      refreshSockets();
      if (exec) {
        if (auto st = exec->refreshBinaries(); !st) LOG_WARN(kSub, "%s", st.error().message.c_str());
      }
    }
  }

  sdNotify("STOPPING=1");
  api.stop();
  (*enforcement)->stop();
  measure_on_change = nullptr;
  if (growth) growth->stop();  // it wakes the project-quota backend, which goes next
  projects = nullptr;
  (*qman)->stop();
  events.stop();
  attributor.stop();
  close(ep);
  LOG_NOTICE(kSub, "stopped");
  return 0;
}
