// SPDX-License-Identifier: Apache-2.0
#include "app/app.h"

#include <malloc.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/probes/probe_util.h"
#include "agent/store/billing.h"
#include "api/growth_api.h"
#include "api/metrics.h"
#include "app/systemd.h"

namespace dockquota {
namespace {

using json = nlohmann::json;
constexpr const char* kSub = "dockquotad";
constexpr auto kRefreshEvery = std::chrono::seconds(30);
constexpr auto kSweepEvery = std::chrono::seconds(5);

std::string kernelRelease() {
  utsname u;
  return uname(&u) == 0 ? u.release : "unknown";
}

}  // namespace

App::App(Config config) : config_(std::move(config)), kernel_(kernelRelease()) {}

App::~App() { stop(); }

Result<std::unique_ptr<App>> App::create(Config config) {
  std::unique_ptr<App> app(new App(std::move(config)));
  // First of all: Docker waits for its authorization plugin on every request.
  if (auto st = app->startAuthz(); !st) return st.error();
  if (auto st = app->openStore(); !st) return st.error();
  app->docker_ = std::make_unique<DockerClient>(app->config_.docker_socket);
  App* a = app.get();
  app->attributor_ = std::make_unique<Attributor>(
      *app->store_, *app->docker_,
      Attributor::Options{.missed_after = std::chrono::milliseconds(app->config_.missed_check_ms),
                          .watching = [a](double since) {
                            const double from = a->watching_since_.load();
                            return a->dsock_ != nullptr && from > 0 && from <= since;
                          }});
  app->attachProbes();
  if (auto st = app->buildServices(); !st) return st.error();
  app->wire();
  return app;
}

Status App::openStore() {
  // The database's directory is 0700 however the agent was started (a
  // shell's umask of 022 would make it 0755).
  if (auto st = makeStateDirectory(std::filesystem::path(config_.database).parent_path().string()); !st) return st;
  auto store = Store::open(config_.database);
  if (!store) return store.error();
  store_ = std::move(*store);
  LOG_INFO(kSub, "store %s (schema v%d)", store_->path().c_str(), store_->schemaVersion());
  return {};
}

// Served before anything else is built (it allows everything until wire()
// gives it the admission stage), so a restart blocks Docker for as short a
// time as can be; under systemd on the socket unit's socket (socket activation).
Status App::startAuthz() {
  if (config_.admission != "on") return {};
  AuthzPluginOptions o;
  o.path = config_.admission_socket;
  o.listen_fd = inheritedSocket("authz");
  o.fail_closed = config_.admission_fail_closed;
  if (o.listen_fd < 0) {
    // Docker looks for plugins' sockets in /run/docker/plugins.
    const std::string dir = std::filesystem::path(o.path).parent_path();
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return Error{ec.value(), "authz plugin: cannot make " + dir + ": " + ec.message()};
  }
  authz_ = std::make_unique<AuthzPlugin>(o);
  return authz_->start();
}

uint32_t App::billedCreator(uint32_t uid, uint32_t loginuid) const {
  Evidence ev;
  ev.uid = uid;
  if (loginuid != UINT32_MAX) ev.login_uid = loginuid;
  return billedUid(ev, config_.bill_root_to_login_uid);
}

void App::attachProbes() {
  tracker_ = std::make_unique<ConnTracker>(
      ConnTracker::Hooks{
          .on_call = [this](const ApiCall& call, const ClientInfo& who) { attributor_->onApiCall(call, who); },
          .on_doubtful_call = nullptr,
          .control =
              [this](uint64_t conn_id, const dsock_ctl& ctl) {
                if (dsock_) dsock_->control(conn_id, ctl);
              },
          .exe_of = nullptr,
          .alive = nullptr,
          // A user's first container layer is tagged as Docker makes it only if
          // their project exists by then: allocated as soon as the create is sent.
          .on_create_sent =
              [this](uint32_t uid, uint32_t loginuid) {
                if (projects_) projects_->prepareUser(billedCreator(uid, loginuid));
              },
          // Admission pairs Docker's plugin calls with these (under tracker_mu_, as the matcher needs).
          .on_request_head =
              [this](uint64_t conn_id, const HttpRequest& req, uint32_t uid, uint32_t loginuid) {
                if (authz_) matcher_.onHead(conn_id, req, Sender{uid, loginuid}, req.first_ns);
              },
          .on_request_done =
              [this](uint64_t conn_id, const HttpRequest& req) {
                if (authz_) matcher_.onDone(conn_id, req);
              },
          .on_request_answered =
              [this](uint64_t conn_id, const HttpRequest& req) {
                if (authz_) matcher_.onAnswered(conn_id, req);
              },
      },
      ConnTracker::kMaxConnections, size_t{config_.tracker_memory_mib} << 20);

  if (auto tracefs = ensureTracefs(); !tracefs) {
    LOG_WARN(kSub, "%s; tracepoint probes will fail to attach", tracefs.error().message.c_str());
  }
  auto exec = ExecProbe::open(config_.docker_binaries, [this](const ExecRecord& r) { tracker_->onExec(r); });
  if (exec) {
    exec_ = std::move(*exec);
    sources_.push_back(exec_.get());  // first: a docker CLI's exec precedes its connect
  } else {
    LOG_WARN(kSub, "%s; docker CLI executions will not be recorded (socket attribution still works)",
             exec.error().message.c_str());
    degraded_.push_back("exec probe unavailable: " + exec.error().message);
  }
  DsockProbe::Options dopt;
  dopt.socket_paths = config_.watch_sockets;
  dopt.capture_bytes = config_.capture_bytes;
  dopt.ringbuf_bytes = config_.ringbuf_kib * 1024;
  dopt.hook = config_.probe_hook;
  auto dsock = DsockProbe::open(dopt, [this](const DsockEventView& ev) { tracker_->onEvent(*ev.raw); });
  if (dsock) {
    dsock_ = std::move(*dsock);
    sources_.push_back(dsock_.get());
  } else {
    LOG_ERROR(kSub, "%s; NEW OBJECTS WILL BE UNATTRIBUTED until the probe can attach", dsock.error().message.c_str());
    degraded_.push_back("docker.sock probe unavailable: " + dsock.error().message);
  }
  attachGrowth();
  // Loading parsed the kernel's BTF for CO-RE (tens of MiB on a 6.x kernel,
  // twice when fentry was refused); libbpf freed it, glibc kept the pages.
  malloc_trim(0);
}

// Live growth of running containers' layers: an early signal to re-read
// project quotas. Needs Docker's client for inspect.
void App::attachGrowth() {
  // It watches Docker's containers only: nothing to watch on a containerd-only node.
  if (!config_.growth_probe || !config_.runtimeEnabled("docker")) return;
  GrowthProbe::Options gopt;
  gopt.hook = config_.growth_probe_hook;
  auto g = GrowthProbe::open(gopt);
  if (!g) {
    // "auto" does not fall back to tp_btf/sys_exit: that would tax every
    // syscall on the host for an early signal.
    const std::string why = g.error().message + (config_.growth_probe_hook == "auto"
                                                     ? " (the tp_btf/sys_exit fallback would slow every syscall on "
                                                       "the host; growth_probe_hook \"tracepoint\" accepts that)"
                                                     : "");
    LOG_WARN(kSub, "%s; live container growth is not watched (quotas are re-read on their interval only)", why.c_str());
    degraded_.push_back("growth probe unavailable: " + why);
    growth_unavailable_ = why;
    return;
  }
  growth_ =
      std::make_unique<GrowthMonitor>(std::move(*g), *docker_,
                                      // Read every 250 ms: a container filling its owner's quota is seen (a
                                      // targeted quota read of its project) well within a second.
                                      GrowthMonitor::Options{.interval = std::chrono::milliseconds(250),
                                                             .signal_bytes = uint64_t(config_.growth_signal_mib) << 20,
                                                             .on_growth =
                                                                 [this] {
                                                                   if (projects_ && projects_->active())
                                                                     projects_->wake();
                                                                   else if (measure_on_change_)
                                                                     measure_on_change_->refreshNow();
                                                                 },
                                                             .on_write =
                                                                 [this](const std::vector<std::string>& ids) {
                                                                   if (!projects_ || !projects_->active()) return;
                                                                   if (auto st = projects_->readProjectsOf(ids); !st)
                                                                     LOG_WARN(kSub, "%s", st.error().message.c_str());
                                                                 }});
}

Status App::buildServices() {
  // Docker events: a reconcile on every (re)connect.
  events_ = std::make_unique<DockerEventStream>(
      config_.docker_socket, DockerEventStream::Callbacks{
                                 .on_event =
                                     [this](const json& e) {
                                       attributor_->onDockerEvent(e);
                                       if (growth_) growth_->onDockerEvent(e);
                                     },
                                 .on_connected = [this] { onEventsConnected(); },
                                 .on_disconnected = [this](const std::string& why) { onEventsLost(why); },
                             });
  api_ = std::make_unique<ApiServer>(apiServerOptions(config_), *store_, [this] { return health(); });
  // The qman slave surface (/remote-api, /metrics) and the usage accounting
  // behind it. /metrics: the probes' counters, and the stream's losses.
  auto quota = QuotaServices::create(config_, *store_, *api_, [this] {
    json h = health();
    json p = h["probes"];
    p["stream"] = h["stream"];
    return p;
  });
  if (!quota) return quota.error();
  quota_ = std::move(*quota);
  projects_ = quota_->projects();
  auto enforcement = EnforcementServices::create(config_, *store_, *quota_, *api_);
  if (!enforcement) return enforcement.error();
  enforcement_ = std::move(*enforcement);
  installGrowthRoute(*api_, *store_, growth_.get(), config_.bill_root_to_login_uid);
  containerd_ = openContainerd(config_, *api_, *store_);
  if (!config_.user_socket.empty()) {
    user_ctx_ = std::make_unique<UserApiContext>(UserApiContext{quota_->context(), &enforcement_->enforcer()});
    UserApiOptions o;
    o.path = config_.user_socket;
    user_api_ = std::make_unique<UserApi>(o, *user_ctx_);
  }
  return {};
}

// The socket's directory is made 0755 when missing (systemd's
// RuntimeDirectory= makes it under the unit): users must reach the socket,
// whatever the agent's umask.
Status App::startUserSocket() {
  if (!user_api_) return {};
  const std::string dir = std::filesystem::path(config_.user_socket).parent_path();
  if (mkdir(dir.c_str(), 0755) == 0) {
    if (chmod(dir.c_str(), 0755) != 0) return osError(errno, "user socket: chmod " + dir);
  } else if (errno != EEXIST) {
    return osError(errno, "user socket: cannot make " + dir);
  }
  return user_api_->start();
}

void App::wire() {
  const bool kernel_usage = projects_ && projects_->active();
  if (config_.enforcement != "off" && !kernel_usage) measure_on_change_ = &quota_->usage();
  // Owner changes from the store, whoever made them (a reply, an admin).
  store_->objects().setOwnerListener([this](ObjectKind kind, const std::string& id) {
    if (projects_) projects_->onOwnerChanged(kind, id);
    if (measure_on_change_ && kind != ObjectKind::Volume) measure_on_change_->refreshNow();
  });
  attributor_->setGoneListener([this](ObjectKind, const std::string&) {
    if (projects_) projects_->wake();  // free ids soon
  });
  // Container layers are tagged as Docker makes them, for the one user whose
  // create is pending (project_quotas.h).
  if (projects_) projects_->setCreatorLookup([this] { return soleCreator(); });
  // Attribution losses in /metrics, after what enforcement renders.
  auto& more = quota_->context().more_metrics;
  more = [prev = more, this](std::string& out) {
    if (prev) prev(out);
    promAttributionCounters(out, attributor_->health().report);
    if (auto h = quota_->devicesHealth(); h.report.contains("zfs")) promZfsCounters(out, h.report["zfs"]);
    if (user_api_) user_api_->renderMetrics(out);
    if (containerd_) containerd_->renderMetrics(out);
  };
  wireAdmission();
  quota_->setUsageListener([e = enforcement_.get()] { e->usageChanged(); });
  quota_->setDiskEventsListener([e = enforcement_.get()] { e->wakeDelivery(); });
}

// From here on the plugin judges: who sent a request is the matcher's word
// (the ring drained first: the request's event may still wait in it), what
// they use and may use the user socket's view.
void App::wireAdmission() {
  if (!authz_) return;
  admission_ctx_ = std::make_unique<UserApiContext>(UserApiContext{quota_->context(), nullptr});
  AdmissionOptions o;
  o.share = config_.admission_share_percent / 100.0;
  o.fail_closed = config_.admission_fail_closed;
  o.match_timeout = std::chrono::milliseconds(config_.admission_match_timeout_ms);
  admission_ = std::make_unique<Admission>(
      o, Admission::Hooks{
             .match =
                 [this](std::string_view method, std::string_view uri, const std::optional<std::string>& body,
                        bool last_try) {
                   std::lock_guard<std::mutex> l(tracker_mu_);
                   consumeProbes();
                   return matcher_.match(method, uri, body, monotonicNs(), last_try);
                 },
             .billed = [this](const Sender& s) { return billedCreator(s.uid, s.loginuid); },
             .figures =
                 [this](uint32_t uid) {
                   const UserView v = userView(*admission_ctx_, uid);
                   return AdmissionFigures{v.usage, v.limit, quota_->context().users.name(uid)};
                 },
         });
  authz_->setAdmission(admission_.get());
  auto& more = quota_->context().more_metrics;
  more = [prev = more, this](std::string& out) {
    if (prev) prev(out);
    authz_->renderMetrics(out);
    std::lock_guard<std::mutex> l(tracker_mu_);
    promMatcherStats(out, matcher_.stats());
  };
}

// The create's request event may still wait in the ring (consumed on a
// timer): drained first.
std::optional<uint32_t> App::soleCreator() {
  std::lock_guard<std::mutex> l(tracker_mu_);
  consumeProbes();
  std::optional<uint32_t> who;
  for (const auto& pc : tracker_->pendingCreates()) {
    const uint32_t billed = billedCreator(pc.uid, pc.loginuid);
    if (who && *who != billed) return std::nullopt;  // two users creating at once: which layer is whose?
    who = billed;
  }
  return who;
}

void App::consumeProbes() {
  for (EvidenceSource* source : sources_) {
    if (auto r = source->consume(); !r) LOG_ERROR(kSub, "%s", r.error().message.c_str());
  }
}

// Re-watches the sockets (a socket Docker re-created has a new inode), on
// every Docker (re)connect (the events thread) and every kRefreshEvery (the
// main loop), which also retries a failure: one at a time, as the probe's
// map walk is not safe against itself.
void App::refreshSockets() {
  if (!dsock_) return;
  std::lock_guard<std::mutex> l(refresh_mu_);
  if (auto st = dsock_->refreshSockets(); !st) LOG_WARN(kSub, "%s", st.error().message.c_str());
}

void App::onEventsConnected() {
  watching_since_ = unixNow();
  refreshSockets();
  // On failure the version stays unknown: the next request negotiates again
  // and reports its own error.
  (void)docker_->negotiate();
  if (auto st = attributor_->reconcile(); !st) {
    LOG_WARN(kSub, "%s", st.error().message.c_str());
    std::lock_guard<std::mutex> l(docker_err_mu_);
    docker_error_ = st.error().message;
  } else {
    reconciled_ = true;
    std::lock_guard<std::mutex> l(docker_err_mu_);
    docker_error_.clear();
  }
  if (growth_) {
    if (auto st = growth_->watchRunning(); !st) LOG_WARN(kSub, "growth: %s", st.error().message.c_str());
  }
}

void App::onEventsLost(const std::string& why) {
  watching_since_ = 0;
  LOG_WARN(kSub, "docker events stream lost: %s; reconnecting with backoff", why.c_str());
  std::lock_guard<std::mutex> l(docker_err_mu_);
  docker_error_ = why;
}

Status App::start() {
  attributor_->start();
  // Without Docker in `runtime` (a containerd node) Docker's event stream,
  // its usage measures and its data root's project quotas stay off: they
  // would only log that docker.sock is missing and degrade /healthz.
  if (config_.runtimeEnabled("docker"))
    events_->start();
  else
    LOG_NOTICE(kSub, "runtime without docker: Docker's events, usage and project quotas are off");
  if (growth_) growth_->start();
  quota_->start();
  enforcement_->start();
  if (containerd_) {
    if (auto st = containerd_->start(); !st) return st.error();
  }
  started_ = true;
  auto port = api_->start();
  if (!port) return port.error();
  if (auto st = startUserSocket(); !st) return st.error();
  sdNotify("READY=1");
  LOG_NOTICE(kSub, "running: kernel %s, %s", kernel_.c_str(),
             degraded_.empty() ? "all probes attached" : "DEGRADED (see /healthz)");
  return {};
}

void App::run(int signal_fd) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event e{};
  e.events = EPOLLIN;
  for (int fd : {signal_fd, dsock_ ? dsock_->epollFd() : -1, exec_ ? exec_->fd() : -1}) {
    if (fd < 0) continue;
    e.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
  }
  // systemd's watchdog (WatchdogSec=): pinged from this loop, so a stuck loop
  // (no more ring buffer draining) stops the pings and systemd restarts us.
  const auto watchdog_every = watchdogInterval();
  auto next_watchdog = std::chrono::steady_clock::now();
  if (watchdog_every.count() > 0)
    LOG_INFO(kSub, "systemd watchdog: WATCHDOG=1 every %lld ms", static_cast<long long>(watchdog_every.count()));
  auto next_refresh = std::chrono::steady_clock::now() + kRefreshEvery;
  auto next_sweep = std::chrono::steady_clock::now() + kSweepEvery;
  for (bool running = true; running;) {
    // Events are written without wake-ups (cheaper for clients): poll on a
    // short timer while connections are open; a connect wakes us when idle.
    int timeout = tracker_->openConnections() > 0 ? static_cast<int>(config_.poll_interval_ms) : 1000;
    if (watchdog_every.count() > 0) {
      auto until =
          std::chrono::duration_cast<std::chrono::milliseconds>(next_watchdog - std::chrono::steady_clock::now());
      timeout = std::max(0, std::min<int>(timeout, static_cast<int>(until.count())));
    }
    epoll_event out[4];
    const int n = epoll_wait(ep, out, 4, timeout);
    for (int i = 0; i < n; i++) {
      signalfd_siginfo si;
      if (out[i].data.fd == signal_fd && read(signal_fd, &si, sizeof si) == sizeof si) {
        LOG_NOTICE(kSub, "signal %u: stopping", si.ssi_signo);
        running = false;
      }
    }
    {
      std::lock_guard<std::mutex> l(tracker_mu_);
      consumeProbes();
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_sweep) {
      // Connections whose end the probe could not see (the client closed
      // after dockerd did): end them, or their buffers would stay forever.
      next_sweep = now + kSweepEvery;
      std::lock_guard<std::mutex> l(tracker_mu_);
      tracker_->sweep(monotonicNs());
    }
    if (watchdog_every.count() > 0 && now >= next_watchdog) {
      next_watchdog = now + watchdog_every;
      // The store's lock is the one every worker (attributor, API, quota
      // sync, enforcement) takes: reading the change counter under it costs
      // nothing, and a thread that hangs holding it hangs us here, so the
      // pings stop and systemd restarts the agent.
      (void)store_->objects().sequence();
      sdNotify("WATCHDOG=1");
    }
    if (now >= next_refresh) {
      next_refresh = now + kRefreshEvery;
      refreshSockets();
      if (exec_) {
        if (auto st = exec_->refreshBinaries(); !st) LOG_WARN(kSub, "%s", st.error().message.c_str());
      }
    }
  }
  close(ep);
}

// The reverse of start(): the HTTP API first (no request reaches a stopped
// service), the event sources before what they feed, the quota backend last
// of the services (the growth probe and the attributor's listeners wake it).
void App::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (started_) sdNotify("STOPPING=1");
  // Judging stops first (it reads what is torn down next); the socket is
  // still answered, allowing, until the very end.
  if (authz_) authz_->setAdmission(nullptr);
  if (user_api_) user_api_->stop();
  if (api_) api_->stop();
  if (enforcement_) enforcement_->stop();
  if (containerd_) containerd_->stop();
  if (growth_) growth_->stop();
  if (events_) events_->stop();
  if (attributor_) attributor_->stop();
  if (quota_) quota_->stop();
  if (store_) store_->objects().setOwnerListener(nullptr);  // it points into what is torn down next
  if (authz_) authz_->stop();
  if (started_) LOG_NOTICE(kSub, "stopped");
}

json App::probesHealth(std::vector<std::string>& reasons) {
  // What an evidence source that could not attach shows; one that did gives its own report.
  json probes = {{"exec",
                  {{"attached", false},
                   {"hook", "tracepoint"},
                   {"programs", json::array()},
                   {"binaries", config_.docker_binaries},
                   {"lost_events", 0}}},
                 {"docker_sock", {{"attached", false}, {"sockets", config_.watch_sockets}}}};
  for (const EvidenceSource* source : sources_) {
    Health h = source->health();
    probes[source->name()] = std::move(h.report);
    reasons.insert(reasons.end(), h.degraded.begin(), h.degraded.end());
  }
  json gj = {{"attached", false}};
  if (growth_) gj = growth_->health().report;
  if (!growth_unavailable_.empty()) gj["unavailable"] = growth_unavailable_;
  probes["growth"] = gj;
  return probes;
}

json App::dockerHealth(std::vector<std::string>& reasons) {
  std::string derr;
  {
    std::lock_guard<std::mutex> l(docker_err_mu_);
    derr = docker_error_;
  }
  const bool connected = events_->connected();
  if (!connected && config_.runtimeEnabled("docker"))
    reasons.push_back("not connected to Docker at " + config_.docker_socket);
  return {{"enabled", config_.runtimeEnabled("docker")},
          {"socket", config_.docker_socket},
          {"connected", connected},
          {"api_version", docker_->apiVersion()},
          {"reconnects", events_->reconnects()},
          {"reconciled", reconciled_.load()},
          {"last_error", derr.empty() ? json(nullptr) : json(derr)}};
}

json App::health() {
  json h;
  std::vector<std::string> reasons = degraded_;
  auto take = [&](const char* key, Health&& part) {
    h[key] = std::move(part.report);
    reasons.insert(reasons.end(), part.degraded.begin(), part.degraded.end());
  };
  json probes = probesHealth(reasons);
  TrackerStats ts;
  {
    std::lock_guard<std::mutex> l(tracker_mu_);
    ts = tracker_->stats();
  }
  take("stream", ConnTracker::health(ts));
  take("attribution", attributor_->health());
  h["docker"] = dockerHealth(reasons);
  const uint64_t store_errors = attributor_->stats().store_errors.load();
  h["store"] = {{"path", store_->path()}, {"schema_version", store_->schemaVersion()}, {"errors", store_errors}};
  if (store_errors > 0) reasons.push_back("store writes failed (see logs)");
  if (projects_) {
    take("project_quotas", projects_->health());
  } else {
    h["project_quotas"] = {{"state", "off"}, {"usage_source", "docker"}};
  }
  h["probes"] = std::move(probes);
  if (enforcement_) take("enforcement", enforcement_->health());
  if (quota_) take("quota_devices", quota_->devicesHealth());
  if (user_api_) take("user_socket", user_api_->health());
  if (authz_) {
    Health a = authz_->health();
    std::lock_guard<std::mutex> l(tracker_mu_);
    a.report["matcher"] = matcherJson(matcher_.stats());
    take("admission", std::move(a));
  }
  if (containerd_) {
    Health c = containerd_->health();
    h["runtimes"]["containerd"] = std::move(c.report);
    reasons.insert(reasons.end(), c.degraded.begin(), c.degraded.end());
  }
  h["kernel"] = kernel_;
  h["degraded"] = reasons;
  h["status"] = reasons.empty() ? "ok" : "degraded";
  return h;
}

}  // namespace dockquota
