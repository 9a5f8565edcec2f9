// SPDX-License-Identifier: Apache-2.0
#include "api/authz_plugin.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/base64.h"
#include "agent/base/log.h"
#include "agent/base/utf8.h"

namespace dockquota {
namespace {

using json = nlohmann::json;
constexpr const char* kSub = "authz-plugin";
// What Docker's plugin client sends in Accept; it reads any JSON back.
constexpr const char* kPluginMediaType = "application/vnd.docker.plugins.v1.2+json";

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), kPluginMediaType);
}

// Docker reads {"Err": ...} from a plugin's non-200 answer.
void fail(httplib::Response& res, int status, const std::string& why) { reply(res, status, {{"Err", why}}); }

// Docker's field as Go's decoder finds it: the key matched without regard
// to case (Docker writes "RequestUri" for its RequestURI), exact first.
const json* field(const json& j, std::string_view key) {
  if (auto it = j.find(key); it != j.end()) return &*it;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k.size() == key.size() &&
        std::equal(k.begin(), k.end(), key.begin(), [](char a, char b) { return std::tolower(a) == std::tolower(b); }))
      return &*it;
  }
  return nullptr;
}

std::string textField(const json& j, std::string_view key) {
  const json* v = field(j, key);
  return v && v->is_string() ? v->get<std::string>() : std::string();
}

// Go encodes RequestBody ([]byte) as base64, absent or null when Docker sent none.
std::optional<std::string> requestBody(const json& j) {
  if (const json* b = field(j, "RequestBody"); b && b->is_string()) return base64Decode(b->get<std::string>());
  return std::nullopt;
}

}  // namespace

AuthzPlugin::AuthzPlugin(AuthzPluginOptions options) : opt_(std::move(options)) {}

AuthzPlugin::~AuthzPlugin() { stop(); }

Status AuthzPlugin::start() {
  HttpServerOptions o;
  o.unix_path = opt_.path;
  o.unix_mode = 0600;  // dockerd runs as root; nobody else may answer for it or ask it
  o.listen_fd = opt_.listen_fd;
  o.threads = opt_.threads;
  o.max_body_bytes = opt_.max_body_bytes;
  o.max_buffered_bytes = 4 * opt_.max_body_bytes;
  o.max_connections = 512;
  o.max_connections_per_peer = 512;  // one peer: dockerd
  // Go's transport keeps idle connections for 90 s: do not make it redial.
  o.idle_timeout = std::chrono::seconds(120);
  o.discard_body = [](const httplib::Request& head) { return head.path == "/AuthZPlugin.AuthZRes"; };
  // Answered on the transport's loop thread whenever that takes no waiting:
  // Docker waits for two plugin calls on every API request, and each
  // hand-over to a worker and back costs a loaded host milliseconds. Only a
  // judged request whose probe event has not been read yet goes to a worker,
  // which may wait for it (admission_match_timeout_ms).
  o.try_inline = [this](const PeerCred&, httplib::Request& req, httplib::Response& res) { return answerNow(req, res); };
  http_ = std::make_unique<HttpServer>(
      o, [this](const PeerCred&, httplib::Request& req, httplib::Response& res) { handle(req, res); }, transport_);
  auto port = http_->start();
  if (!port) return port.error();
  LOG_NOTICE(kSub, "serving Docker's authorization plugin protocol on %s%s", opt_.path.c_str(),
             opt_.listen_fd >= 0 ? " (socket from systemd)" : "");
  return {};
}

void AuthzPlugin::stop() {
  if (http_) http_->stop();
}

void AuthzPlugin::handle(const httplib::Request& req, httplib::Response& res) {
  if (req.method != "POST") return fail(res, 405, "only POST");
  if (req.path == "/Plugin.Activate") {
    activations_++;
    return reply(res, 200, {{"Implements", {"authz"}}});
  }
  if (req.path == "/AuthZPlugin.AuthZReq") {
    (void)authzReq(req, res, /*wait=*/true);
    return;
  }
  if (req.path == "/AuthZPlugin.AuthZRes") {
    responses_++;
    return reply(res, 200, {{"Allow", true}});
  }
  return fail(res, 404, "no such plugin method: " + printable(req.path, 128));
}

bool AuthzPlugin::answerNow(const httplib::Request& req, httplib::Response& res) {
  if (req.path != "/AuthZPlugin.AuthZReq") {
    handle(req, res);
    return true;
  }
  return authzReq(req, res, /*wait=*/false);
}

void AuthzPlugin::verdictReply(httplib::Response& res, const Verdict& v, const std::string& method,
                               const std::string& uri) {
  LOG_DEBUG(kSub, "AuthZReq %s %s: %s (%s)", printable(method, 16).c_str(), printable(uri, 256).c_str(),
            v.allow ? "allow" : "refuse", v.reason);
  json out = {{"Allow", v.allow}};
  if (!v.allow) out["Msg"] = v.msg;
  reply(res, 200, out);
}

// The body is parsed once here, whichever thread asks. Without `wait` (the
// loop thread) false means not answered: the request is judged and the
// probe has not paired it yet, so a worker asks again, waiting.
bool AuthzPlugin::authzReq(const httplib::Request& req, httplib::Response& res, bool wait) {
  const json j = json::parse(req.body, nullptr, false);
  if (!j.is_object()) {
    // Docker's plugin client retries a call whose connection broke (this
    // agent killed mid-call) with the request body it already drained: the
    // retry arrives empty. Nothing to judge; a 400 would fail the user's
    // request, so it is unsure, as a request the probe did not see.
    bad_requests_++;
    if (!opt_.fail_closed) {
      reply(res, 200, {{"Allow", true}});
      return true;
    }
    reply(res, 200,
          {{"Allow", false},
           {"Msg",
            "dockquota: the quota agent got this request without its content (was it restarting?), "
            "and this host refuses what it cannot judge (admission_fail_closed). Try again."}});
    return true;
  }
  const std::string method = textField(j, "RequestMethod"), uri = textField(j, "RequestUri");
  Admission* admission = admission_.load();
  if (!admission) {
    starting(method, uri, res);
    return true;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const std::optional<std::string> body = requestBody(j);
  const std::optional<Verdict> v = wait ? admission->judge(method, uri, body) : admission->judgeNow(method, uri, body);
  if (!v) return false;
  observeJudge(
      uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count()));
  verdictReply(res, *v, method, uri);
  return true;
}

// The agent is not built yet (it serves this socket first of all): what
// admission would judge is allowed, or refused with fail_closed.
void AuthzPlugin::starting(const std::string& method, const std::string& uri, httplib::Response& res) {
  if (!isAdmissionRequest(method, pathOf(uri))) return reply(res, 200, {{"Allow", true}});
  starting_++;
  if (!opt_.fail_closed) return reply(res, 200, {{"Allow", true}});
  reply(res, 200,
        {{"Allow", false},
         {"Msg",
          "dockquota: the quota agent is starting and cannot judge this request yet, and this host refuses "
          "such requests (admission_fail_closed). Try again in a few seconds."}});
}

void AuthzPlugin::observeJudge(uint64_t us) {
  for (size_t i = 0; i < std::size(kJudgeBoundsUs); i++)
    if (us <= kJudgeBoundsUs[i]) {
      judge_us_[i]++;
      break;
    }
  uint64_t prev = judge_us_max_.load();
  while (us > prev && !judge_us_max_.compare_exchange_weak(prev, us)) {}
}

Health AuthzPlugin::health() const {
  Admission* a = admission_.load();
  Health h = a ? a->health() : Health{};
  h.report["socket"] = opt_.path;
  h.report["socket_activated"] = opt_.listen_fd >= 0;
  h.report["judged_while_starting"] = starting_.load();
  h.report["activations"] = activations_.load();
  h.report["responses"] = responses_.load();
  h.report["bad_requests"] = bad_requests_.load();
  // {"50": n, ..., "10000": n, "more": n}: AuthZReq judged within each bound (µs).
  json hist = json::object();
  for (size_t i = 0; i < std::size(kJudgeBoundsUs); i++)
    hist[kJudgeBoundsUs[i] == UINT64_MAX ? "more" : std::to_string(kJudgeBoundsUs[i])] = judge_us_[i].load();
  h.report["judge_us"] = hist;
  h.report["judge_us_max"] = judge_us_max_.load();
  if (bad_requests_.load())
    h.degraded.push_back("authz plugin: " + std::to_string(bad_requests_.load()) +
                         " AuthZReq call(s) without a JSON body could not be judged (" +
                         (opt_.fail_closed ? "refused" : "allowed") + ")");
  return h;
}

void AuthzPlugin::renderMetrics(std::string& out) const {
  promHeader(out, "dockquota_admission_verdicts_total", "counter",
             "Docker requests the authorization plugin answered, by reason (starting: before the agent could judge).");
  promSample(out, "dockquota_admission_verdicts_total", "reason=\"starting\"", starting_.load());
  if (Admission* a = admission_.load())
    for (const auto& [reason, n] : a->verdictCounts())
      promSample(out, "dockquota_admission_verdicts_total", "reason=\"" + std::string(reason) + "\"", n);
  promHeader(out, "dockquota_admission_bad_requests_total", "counter",
             "AuthZReq calls without a JSON body (Docker's retry of a broken call sends none): not judged.");
  promSample(out, "dockquota_admission_bad_requests_total", "", bad_requests_.load());
}

namespace {

// What became of the requests the matcher kept, by outcome (kept: seen).
std::vector<std::pair<const char*, uint64_t>> outcomes(const MatcherStats& s) {
  return {{"kept", s.kept},
          {"matched", s.matched},
          {"ambiguous", s.ambiguous},
          {"answered_unclaimed", s.answered_unclaimed},
          {"expired", s.expired},
          {"dropped_user_share", s.dropped_user_share},
          {"dropped_budget", s.dropped_budget},
          {"uri_too_long", s.uri_too_long}};
}

}  // namespace

json matcherJson(const MatcherStats& s) {
  json j = {{"open", s.open}, {"bytes", s.bytes}};
  for (const auto& [outcome, n] : outcomes(s)) j[outcome] = n;
  return j;
}

void promMatcherStats(std::string& out, const MatcherStats& s) {
  const char* name = "dockquota_admission_requests_total";
  promHeader(out, name, "counter",
             "Judged requests the docker.sock probe saw, by what became of them (kept: seen; the others: how "
             "each left the matcher).");
  for (const auto& [outcome, n] : outcomes(s)) promSample(out, name, std::string("outcome=\"") + outcome + "\"", n);
  promHeader(out, "dockquota_admission_requests_open", "gauge", "Judged requests waiting for Docker's plugin call.");
  promSample(out, "dockquota_admission_requests_open", "", s.open);
}

}  // namespace dockquota
