// SPDX-License-Identifier: Apache-2.0
// The agent, wired: App owns every service and its lifetime. One build order
// (create), one start order (start), one stop path (stop, the reverse), and
// /healthz assembled from each service's own health() report.
//
// The order matters in two places. The probes attach in create(), before the
// Docker events stream can connect and reconcile (start), so nothing made
// during start-up is missed; anything Docker has that they did not see is
// recorded as unattributed. And every listener is wired before any thread
// runs, so no service ever calls one that does not exist yet.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/admission/admission.h"
#include "agent/admission/request_matcher.h"
#include "agent/attribution/attributor.h"
#include "agent/base/result.h"
#include "agent/capture/conn_tracker.h"
#include "agent/probes/dsock_probe.h"
#include "agent/probes/exec_probe.h"
#include "agent/quota/zfs_quota.h"
#include "agent/runtime/docker_client.h"
#include "agent/store/store.h"
#include "agent/usage/growth_monitor.h"
#include "api/authz_plugin.h"
#include "api/http_api.h"
#include "api/user_api.h"
#include "app/config.h"
#include "app/containerd_wiring.h"
#include "app/enforcement_wiring.h"
#include "app/quota_wiring.h"

namespace dockquota {

class App {
 public:
  // Opens the store, attaches the probes, builds and wires every service.
  // Nothing runs yet; an error names what could not be built.
  static Result<std::unique_ptr<App>> create(Config config);
  ~App();  // stops

  // Starts the services in order, the HTTP API last.
  Status start();
  // Drains the probes into the tracker until `signal_fd` (a signalfd for
  // SIGINT/SIGTERM) is readable; pings systemd's watchdog while it runs.
  void run(int signal_fd);
  // Stops everything, in the reverse order of start(); once.
  void stop();

  // The /healthz document: each service's report and every degraded reason.
  nlohmann::json health();

 private:
  explicit App(Config config);
  Status openStore();
  void attachProbes();
  void attachGrowth();
  Status buildServices();
  Status startUserSocket();
  Status startAuthz();
  void wireAdmission();
  void wire();
  void consumeProbes();                   // under tracker_mu_
  std::optional<uint32_t> soleCreator();  // the one user with container creates pending
  uint32_t billedCreator(uint32_t uid, uint32_t loginuid) const;
  void refreshSockets();
  void onEventsConnected();
  void onEventsLost(const std::string& why);
  nlohmann::json probesHealth(std::vector<std::string>& reasons);
  nlohmann::json dockerHealth(std::vector<std::string>& reasons);

  Config config_;
  std::string kernel_;
  std::vector<std::string> degraded_;  // what create() could not attach, for every /healthz
  std::unique_ptr<Store> store_;
  std::unique_ptr<DockerClient> docker_;
  // Unix time the events stream last connected (the probes attach before it
  // can), 0 while it is down: the missed-object check judges only objects
  // made while this holds.
  std::atomic<double> watching_since_{0};
  std::unique_ptr<Attributor> attributor_;
  std::mutex tracker_mu_;  // the main loop feeds the tracker; /healthz and the layer watch read it
  std::unique_ptr<ConnTracker> tracker_;
  std::unique_ptr<ExecProbe> exec_;
  std::unique_ptr<DsockProbe> dsock_;
  std::vector<EvidenceSource*> sources_;  // exec_, dsock_: the ones attached, drained in this order
  std::mutex refresh_mu_;                 // refreshSockets() from two threads
  std::unique_ptr<GrowthMonitor> growth_;
  std::string growth_unavailable_;
  std::unique_ptr<DockerEventStream> events_;
  std::atomic<bool> reconciled_{false};
  std::mutex docker_err_mu_;
  std::string docker_error_;
  std::unique_ptr<ApiServer> api_;
  std::unique_ptr<QuotaServices> quota_;
  ProjectQuotas* projects_ = nullptr;             // quota_'s kernel backend, when on
  UsageAccountant* measure_on_change_ = nullptr;  // no kernel usage: a create asks for a measure
  std::unique_ptr<EnforcementServices> enforcement_;
  std::unique_ptr<ContainerdServices> containerd_;  // config runtime includes containerd
  // Last: it reads quota_ and enforcement_, so it goes first.
  std::unique_ptr<UserApiContext> user_ctx_;
  std::unique_ptr<UserApi> user_api_;  // when config_.user_socket is set
  // Admission control (config_.admission "on"): the plugin socket is served
  // from create() on; the matcher is fed by the tracker, under tracker_mu_.
  std::unique_ptr<AuthzPlugin> authz_;
  RequestMatcher matcher_;
  std::unique_ptr<UserApiContext> admission_ctx_;
  std::unique_ptr<Admission> admission_;
  bool started_ = false, stopped_ = false;
};

}  // namespace dockquota
