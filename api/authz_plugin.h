// SPDX-License-Identifier: Apache-2.0
// Docker's authorization plugin protocol, served on a unix socket that only
// dockerd (root) uses: admission control (agent/admission/admission.h).
//
//   POST /Plugin.Activate        {"Implements": ["authz"]}
//   POST /AuthZPlugin.AuthZReq   {"Allow": bool, "Msg": "..."}: the request,
//                                judged before Docker acts on it
//   POST /AuthZPlugin.AuthZRes   {"Allow": true}: responses are never
//                                filtered (their bodies are read and dropped)
//
// Enabled by the admin: `admission: "on"` here, and
// `"authorization-plugins": ["dockquota"]` in Docker's daemon.json. Docker
// finds the plugin by name at /run/docker/plugins/dockquota.sock.
//
// Docker refuses every request while a plugin it was told to use does not
// answer (it retries for up to 30 s, then fails the request). So the socket
// is served first, before the probes attach: until the agent can judge, every
// request is allowed and counted ("starting"). Under systemd the socket is
// dockquota-authz.socket's (socket activation): it outlives the agent, so
// Docker's calls made while the agent restarts wait in its backlog for the
// restart instead of failing or backing off.
#pragma once

#include <atomic>
#include <iterator>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/admission/admission.h"
#include "agent/base/health.h"
#include "agent/base/result.h"
#include "api/http_server.h"
#include "api/metrics.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace dockquota {

struct AuthzPluginOptions {
  std::string path = "/run/docker/plugins/dockquota.sock";
  int listen_fd = -1;  // systemd's socket (LISTEN_FDS), else -1: bind `path`
  int threads = 4;     // dockerd calls once per API request, many at once
  // AuthZReq carries a JSON body under 1 MiB, base64 (4/3) in JSON.
  size_t max_body_bytes = 4 << 20;
  // While the agent cannot judge yet: refuse what admission would judge
  // (admission_fail_closed), else allow it; everything else is allowed.
  bool fail_closed = false;
};

class AuthzPlugin {
 public:
  explicit AuthzPlugin(AuthzPluginOptions options);
  ~AuthzPlugin();
  AuthzPlugin(const AuthzPlugin&) = delete;
  AuthzPlugin& operator=(const AuthzPlugin&) = delete;

  Status start();
  void stop();
  // From now on requests are judged; until then they are allowed, or
  // refused with fail_closed when admission would judge them ("starting").
  // `admission` must outlive the plugin's serving (stop() first).
  void setAdmission(Admission* admission) { admission_.store(admission); }

  // The router, for tests and fuzz-authz: what dockerd gets for `req`.
  void handle(const httplib::Request& req, httplib::Response& res);

  Health health() const;
  void renderMetrics(std::string& out) const;

 private:
  bool authzReq(const httplib::Request& req, httplib::Response& res, bool wait);
  // The transport's loop thread: answers unless a judged request must wait.
  bool answerNow(const httplib::Request& req, httplib::Response& res);
  void verdictReply(httplib::Response& res, const Verdict& v, const std::string& method, const std::string& uri);
  void starting(const std::string& method, const std::string& uri, httplib::Response& res);

  AuthzPluginOptions opt_;
  std::atomic<Admission*> admission_{nullptr};
  std::atomic<uint64_t> starting_{0}, activations_{0}, responses_{0}, bad_requests_{0};
  // AuthZReq handling time (Docker waits for it on every request): counts at
  // or under each bound in microseconds, the last for anything longer.
  static constexpr uint64_t kJudgeBoundsUs[] = {50, 100, 250, 500, 1000, 2500, 10000, UINT64_MAX};
  std::atomic<uint64_t> judge_us_[std::size(kJudgeBoundsUs)]{};
  std::atomic<uint64_t> judge_us_max_{0};
  void observeJudge(uint64_t us);
  TransportMetrics transport_;
  std::unique_ptr<HttpServer> http_;
};

// The matcher's figures (agent/admission/request_matcher.h), for /healthz
// "admission.matcher" and /metrics dockquota_admission_requests_total{outcome}.
nlohmann::json matcherJson(const MatcherStats& s);
void promMatcherStats(std::string& out, const MatcherStats& s);

}  // namespace dockquota
