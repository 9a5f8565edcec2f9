// SPDX-License-Identifier: Apache-2.0
#include "api/user_api.h"

#include <httplib.h>

#include <cmath>
#include <set>

#include "agent/base/log.h"
#include "agent/base/utf8.h"
#include "agent/enforcement/policy.h"
#include "api/http_api.h"

namespace dockquota {
namespace {

using json = nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;
constexpr const char* kSub = "user-api";
constexpr size_t kDefaultEvents = 20;
constexpr size_t kMaxEvents = 200;  // a screenful or a script's page; the admin API has the whole log

Thresholds thresholdsOf(const UserApiContext& ctx) {
  return ctx.enforcer ? ctx.enforcer->options().thresholds : Thresholds{};
}

json percentOf(uint64_t usage, uint64_t limit) {
  if (!limit) return nullptr;
  return std::round(1000.0 * double(usage) / double(limit)) / 10;
}

json viewJson(UserApiContext& ctx, const UserView& v) {
  return {{"uid", v.uid},           {"user", ctx.qman.users.name(v.uid)}, {"usage_bytes", v.usage},
          {"limit_bytes", v.limit}, {"level", toString(v.level)},         {"percent", percentOf(v.usage, v.limit)}};
}

// GET /v1/quota: the docker figures split by kind, every device's entry for
// the uid (the qman per-user list), and what enforcement holds for them.
void quota(UserApiContext& ctx, uint32_t uid, Res& res) {
  const UserView v = userView(ctx, uid);
  json out = viewJson(ctx, v);
  auto snap = ctx.qman.usage.snapshot();
  UserUsage u;
  if (auto it = snap->users.find(uid); it != snap->users.end()) u = it->second;
  out["docker"] = {{"container_bytes", u.container_bytes},
                   {"image_layer_bytes", u.image_layer_bytes},
                   {"volume_bytes", u.volume_bytes},
                   {"measured_at", snap->measured ? json(isoTime(snap->measured_at)) : json(nullptr)}};
  out["warn_percent"] = std::round(thresholdsOf(ctx).warn_fraction * 1000) / 10;
  out["devices"] = json::parse(userQuotasText(ctx.qman, uid));
  if (ctx.enforcer) {
    json e = ctx.enforcer->state(uid);
    json mine = e["users"].empty() ? json::object() : e["users"][0];
    out["enforcement"] = {{"mode", e["mode"]},
                          {"order", e["order"]},
                          {"grace_seconds", e["grace_seconds"]},
                          {"exempt", mine.value("exempt", false)},
                          {"pending_actions", mine.value("pending_actions", json::array())}};
  }
  sendJson(res, 200, out);
}

json rowJson(UserApiContext&, const UsageRow& r) {
  json j = {{"id", r.id}, {"name", r.name}, {"size_bytes", r.size_bytes}};
  if (r.first_seen) j["first_seen"] = isoTime(*r.first_seen);
  return j;
}

// Biggest first, then by id, as the admin pages sort.
std::vector<const UsageRow*> ownRows(const std::vector<UsageRow>& rows, uint32_t uid) {
  std::vector<const UsageRow*> out;
  for (const auto& r : rows)
    if (r.uid && *r.uid == uid) out.push_back(&r);
  std::sort(out.begin(), out.end(), [](const UsageRow* a, const UsageRow* b) {
    return a->size_bytes != b->size_bytes ? a->size_bytes > b->size_bytes : a->id < b->id;
  });
  return out;
}

// Enforcement's own order and its own selection over the last measured sizes:
// `would_remove` marks what a sweep now would take to bring the user under.
json removalOrder(UserApiContext& ctx, const UserView& v, const UsageSnapshot& snap, Res& res, bool* ok) {
  *ok = true;
  json out = json::array();
  if (!ctx.enforcer) return out;
  std::map<std::string, uint64_t, std::less<>> sizes;
  std::vector<std::string> mine;
  for (const auto& r : snap.containers)
    if (r.uid && *r.uid == v.uid) {
      sizes.emplace(std::string(r.id), r.size_bytes);
      mine.emplace_back(r.id);
    }
  auto order = ctx.enforcer->removalOrder(v.uid, mine, [&](const std::string& id) -> std::optional<uint64_t> {
    auto it = sizes.find(id);
    return it == sizes.end() ? std::nullopt : std::optional<uint64_t>(it->second);
  });
  if (!order) {
    *ok = false;
    sendError(res, 500, order.error().message);
    return out;
  }
  std::set<size_t> picked;
  if (ctx.enforcer->options().mode != EnforceMode::Off && overLimit(v.usage, v.limit, thresholdsOf(ctx))) {
    auto sel = selectUntilUnder(*order, v.usage, v.limit, thresholdsOf(ctx),
                                [](const Candidate& c) { return c.size.value_or(0); });
    picked.insert(sel.picked.begin(), sel.picked.end());
  }
  for (size_t i = 0; i < order->size(); i++) {
    const Candidate& c = (*order)[i];
    out.push_back({{"rank", i + 1},
                   {"container_id", c.id},
                   {"name", c.name},
                   {"size_bytes", c.size ? json(*c.size) : json(nullptr)},
                   {"would_remove", picked.count(i) > 0}});
  }
  return out;
}

// GET /v1/objects
void objects(UserApiContext& ctx, uint32_t uid, Res& res) {
  auto snap = ctx.qman.usage.snapshot();
  const UserView v = userView(ctx, uid);
  bool ok = true;
  json order = removalOrder(ctx, v, *snap, res, &ok);
  if (!ok) return;
  json out = viewJson(ctx, v);
  out["removal_order"] = std::move(order);
  if (ctx.enforcer) {
    out["enforcement_mode"] = toString(ctx.enforcer->options().mode);
    out["enforcement_order"] = toString(ctx.enforcer->options().order);
  }
  json cs = json::array();
  for (const UsageRow* r : ownRows(snap->containers, uid)) {
    json j = rowJson(ctx, *r);
    j["image"] = r->parent;
    j["status"] = r->status;
    cs.push_back(std::move(j));
  }
  // An image's own bytes are the layers it brought first (a layer is billed
  // once, to its first puller); its size is Docker's whole figure.
  std::map<std::string_view, uint64_t> billed;
  for (const auto& l : snap->layers)
    if (l.uid && *l.uid == uid) billed[l.parent] += l.size_bytes;
  json is = json::array();
  for (const UsageRow* r : ownRows(snap->images, uid)) {
    json j = rowJson(ctx, *r);
    j["tags"] = r->tags();
    j["billed_bytes"] = billed.count(r->id) ? billed[r->id] : 0;
    is.push_back(std::move(j));
  }
  json vs = json::array();
  for (const UsageRow* r : ownRows(snap->volumes, uid)) vs.push_back(rowJson(ctx, *r));
  out["containers"] = std::move(cs);
  out["images"] = std::move(is);
  out["volumes"] = std::move(vs);
  sendJson(res, 200, out);
}

// GET /v1/events
void events(UserApiContext& ctx, uint32_t uid, const Req& req, Res& res) {
  EventQuery q;
  q.uid = uid;
  q.newest_first = true;
  q.limit = kDefaultEvents;
  if (req.has_param("limit")) {
    auto n = queryDecimal(req.get_param_value("limit"), kMaxEvents);
    if (!n || *n == 0) return sendError(res, 400, "limit must be an integer from 1 to " + std::to_string(kMaxEvents));
    q.limit = *n;
  }
  auto rows = ctx.qman.store.eventLog().events(q);
  if (!rows) return sendError(res, 500, rows.error().message);
  json list = json::array();
  for (const auto& r : *rows)
    list.push_back({{"id", r.event.seq},
                    {"type", r.event.type},
                    {"container_id", r.event.container_id},
                    {"detail", r.event.detail},
                    {"created_at", isoTime(r.event.created_at)}});
  sendJson(res, 200, {{"uid", uid}, {"user", ctx.qman.users.name(uid)}, {"events", std::move(list)}});
}

// GET /v1/users (root): every uid with a limit or bytes, by uid.
void users(UserApiContext& ctx, Res& res) {
  auto snap = ctx.qman.usage.snapshot();
  auto limits = ctx.qman.quotas.limits();
  std::set<uint32_t> uids;
  for (const auto& [uid, _] : *limits) uids.insert(uid);
  for (const auto& [uid, u] : snap->users)
    if (u.total()) uids.insert(uid);
  json list = json::array();
  for (uint32_t uid : uids) list.push_back(viewJson(ctx, userView(ctx, uid)));
  sendJson(res, 200, {{"users", std::move(list)}});
}

}  // namespace

UserView userView(UserApiContext& ctx, uint32_t uid) {
  UserView v;
  v.uid = uid;
  auto snap = ctx.qman.usage.snapshot();
  if (auto it = snap->users.find(uid); it != snap->users.end()) v.usage = it->second.total();
  auto limits = ctx.qman.quotas.limits();
  if (auto it = limits->find(uid); it != limits->end()) v.limit = it->second * 1024;
  v.level = quotaLevel(v.usage, v.limit, thresholdsOf(ctx));
  return v;
}

UserApi::UserApi(UserApiOptions options, UserApiContext& ctx) : opt_(std::move(options)), ctx_(ctx) {}

UserApi::~UserApi() { stop(); }

Status UserApi::start() {
  HttpServerOptions t;
  t.unix_path = opt_.path;
  t.unix_mode = opt_.mode;
  t.threads = opt_.threads;
  t.max_connections = opt_.max_connections;
  t.max_connections_per_peer = opt_.max_connections_per_peer;
  t.request_timeout = opt_.request_timeout;
  t.idle_timeout = opt_.idle_timeout;
  t.max_head_bytes = opt_.max_head_bytes;
  t.max_body_bytes = opt_.max_body_bytes;
  t.max_buffered_bytes = size_t(opt_.max_connections) * opt_.max_body_bytes;
  http_ = std::make_unique<HttpServer>(
      t, [this](const PeerCred& peer, Req& req, Res& res) { handle(peer, req, res); }, transport_);
  auto st = http_->start();
  if (!st) {
    http_.reset();
    return st.error();
  }
  LOG_INFO(kSub, "serving users on %s (mode %04o)", opt_.path.c_str(), opt_.mode);
  return {};
}

void UserApi::stop() {
  if (http_) http_->stop();
  http_.reset();
}

// Whose figures a request may see: the caller's own, or, for root only,
// anyone's named by ?uid= or ?user=.
std::optional<uint32_t> UserApi::subject(const PeerCred& peer, const Req& req, Res& res) {
  if (!peer.known) {
    sendError(res, 403, "no peer credentials");
    return std::nullopt;
  }
  // One subject, named once: with two, which one a check read and which one
  // the answer used could differ.
  if (req.get_param_value_count("uid") + req.get_param_value_count("user") > 1) {
    sendError(res, 400, "name one user: a single uid= or user=");
    return std::nullopt;
  }
  std::optional<uint32_t> asked;
  if (req.has_param("uid")) {
    asked = queryDecimal(req.get_param_value("uid"), UINT32_MAX);
    if (!asked) {
      sendError(res, 400, "uid must be a non-negative integer");
      return std::nullopt;
    }
  } else if (req.has_param("user")) {
    const std::string name = req.get_param_value("user");
    asked = ctx_.qman.users.uid(name);
    if (!asked) {
      sendError(res, peer.uid == 0 ? 404 : 403,
                peer.uid == 0 ? "no such user: " + printable(name, kEchoBytes) : "you may see only your own figures");
      return std::nullopt;
    }
  }
  if (!asked || *asked == peer.uid) return peer.uid;
  if (peer.uid != 0) {
    LOG_NOTICE(kSub, "uid %u (pid %d) asked for uid %u's figures: refused", peer.uid, peer.pid, *asked);
    sendError(res, 403, "you may see only your own figures");
    return std::nullopt;
  }
  return asked;
}

void UserApi::handle(const PeerCred& peer, const Req& req, Res& res) {
  try {
    if (req.method != "GET" && req.method != "HEAD") {
      res.set_header("Allow", "GET, HEAD");
      sendError(res, 405, "read-only: only GET is served here");
    } else if (req.path == "/v1/users") {
      if (!peer.known || peer.uid != 0)
        sendError(res, 403, "only root may list every user");
      else
        users(ctx_, res);
    } else if (req.path != "/v1/quota" && req.path != "/v1/objects" && req.path != "/v1/events") {
      sendError(res, 404, "no such path; try /v1/quota, /v1/objects, /v1/events");
    } else if (auto uid = subject(peer, req, res)) {
      if (req.path == "/v1/quota") quota(ctx_, *uid, res);
      if (req.path == "/v1/objects") objects(ctx_, *uid, res);
      if (req.path == "/v1/events") events(ctx_, *uid, req, res);
    }
  } catch (const std::exception& e) {
    LOG_ERROR(kSub, "%s %s: %s", req.method.c_str(), printable(req.path, kEchoBytes).c_str(), e.what());
    res = Res();
    sendError(res, 500, "internal error");
  }
  count(res.status);
}

void UserApi::count(int status) {
  switch (status) {
    case 200: stats_.answered++; break;
    case 400: stats_.bad_request++; break;
    case 403: stats_.forbidden++; break;
    case 404: stats_.not_found++; break;
    case 405: stats_.not_allowed++; break;
    default: stats_.failed++; break;
  }
}

Health UserApi::health() const {
  Health h;
  h.report = {{"path", opt_.path},
              {"listening", http_ != nullptr},
              {"requests",
               {{"answered", stats_.answered.load()},
                {"bad_request", stats_.bad_request.load()},
                {"forbidden", stats_.forbidden.load()},
                {"not_found", stats_.not_found.load()},
                {"method_not_allowed", stats_.not_allowed.load()},
                {"failed", stats_.failed.load()}}},
              {"http", transport_.toJson()}};
  if (!http_) h.degraded.push_back("user socket " + opt_.path + " is not listening");
  return h;
}

void UserApi::renderMetrics(std::string& out) const {
  constexpr const char* kRequests = "dockquota_user_socket_requests_total";
  promHeader(out, kRequests, "counter", "Requests on the per-user socket, by outcome.");
  const std::pair<const char*, const std::atomic<uint64_t>*> outcomes[] = {
      {"answered", &stats_.answered},   {"bad_request", &stats_.bad_request},        {"forbidden", &stats_.forbidden},
      {"not_found", &stats_.not_found}, {"method_not_allowed", &stats_.not_allowed}, {"failed", &stats_.failed}};
  for (const auto& [name, v] : outcomes) promSample(out, kRequests, std::string("outcome=\"") + name + "\"", v->load());
  promHeader(out, "dockquota_user_socket_connections_open", "gauge", "Open connections on the per-user socket.");
  promSample(out, "dockquota_user_socket_connections_open", "", transport_.open());
  // What the transport cut short (the rest is in /healthz): timeouts, evictions, refused heads.
  constexpr const char* kCut = "dockquota_user_socket_connections_cut_total";
  promHeader(out, kCut, "counter", "Connections the per-user socket timed out, evicted or refused, by reason.");
  using M = TransportMetrics;
  const std::pair<const char*, M::Counter> cut[] = {
      {"head_timeout", M::kTimeoutHead},          {"evicted_per_uid", M::kEvictedMaxPerPeer},
      {"evicted", M::kEvictedMaxConnections},     {"refused", M::kRefusedMaxConnections},
      {"head_too_large", M::kRejectHeadTooLarge}, {"uri_too_long", M::kRejectUriTooLong}};
  for (const auto& [name, c] : cut) promSample(out, kCut, std::string("reason=\"") + name + "\"", transport_.get(c));
}

}  // namespace dockquota
