// SPDX-License-Identifier: Apache-2.0
#include "api/enforcement_api.h"

#include <httplib.h>

#include <cerrno>

#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/base/utf8.h"
#include "api/metrics.h"

namespace dockquota {
namespace {

using json = nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;
constexpr const char* kSub = "enforce-api";
constexpr size_t kMaxBody = 64 << 10;
constexpr size_t kMaxEvents = 1000;
constexpr size_t kMaxReasonBytes = 500;  // a sentence or two; stored, listed, logged

json eventJson(const EventRow& r) {
  const Event& e = r.event;
  return {{"id", e.seq},
          {"type", e.type},
          {"uid", e.uid},
          {"user", e.user},
          {"container_id", e.container_id},
          {"detail", e.detail},
          {"created_at", isoTime(e.created_at)},
          {"delivery", {{"master", r.master}, {"mail", r.mail}}}};
}

// GET /api/v1/events
void listEvents(EnforcementContext& ctx, const Req& req, Res& res) {
  EventQuery q;
  if (req.has_param("after")) {
    auto v = queryDecimal(req.get_param_value("after"), INT64_MAX);
    if (!v) return sendError(res, 400, "after must be an event id (a non-negative integer)");
    q.after = int64_t(*v);
  }
  if (req.has_param("limit")) {
    auto v = queryDecimal(req.get_param_value("limit"), kMaxEvents);
    if (!v || *v == 0) return sendError(res, 400, "limit must be an integer from 1 to " + std::to_string(kMaxEvents));
    q.limit = *v;
  }
  if (req.has_param("uid")) {
    auto v = queryDecimal(req.get_param_value("uid"), UINT32_MAX);
    if (!v) return sendError(res, 400, "uid must be a non-negative integer");
    q.uid = uint32_t(*v);
  }
  if (req.has_param("type")) q.type = req.get_param_value("type");
  // One more than asked: tells whether there are more without a second query.
  const size_t want = q.limit;
  q.limit = want + 1;
  auto rows = ctx.store.eventLog().events(q);
  if (!rows) return sendError(res, 500, rows.error().message);
  const bool more = rows->size() > want;
  if (more) rows->pop_back();
  json list = json::array();
  for (const auto& r : *rows) list.push_back(eventJson(r));
  sendJson(res, 200,
           {{"events", std::move(list)},
            {"next_after", rows->empty() ? q.after : rows->back().event.seq},
            {"has_more", more}});
}

void putExemption(EnforcementContext& ctx, const std::string& kind, const Req& req, Res& res) {
  std::string reason;
  if (!req.body.empty()) {
    auto body = jsonBody(req, res, kMaxBody);
    if (!body) return;
    if (body->contains("reason")) {
      if (!(*body)["reason"].is_string()) return sendError(res, 400, "reason must be a string");
      // Cut on a character boundary: a cut "é" is invalid UTF-8 that every later
      // listing would serve.
      reason = utf8Prefix((*body)["reason"].get<std::string>(), kMaxReasonBytes);
    }
  }
  std::string id;
  const std::string ref = req.matches[1];
  if (kind == "container") {
    auto r = ctx.store.objects().resolve(ObjectKind::Container, ref);
    if (!r) return sendError(res, 500, r.error().message);
    if (!*r) return sendError(res, 404, "no such container: " + printable(ref, kEchoBytes));
    id = **r;
  } else {
    auto uid = ctx.users.resolve(ref);
    if (!uid) return sendError(res, 404, "no such user: " + printable(ref, kEchoBytes));
    id = std::to_string(*uid);
  }
  if (auto s = ctx.store.enforcement().setExemption({kind, id, reason, unixNow()}); !s)
    return sendError(res, 500, s.error().message);
  LOG_NOTICE(kSub, "%s %s exempted from enforcement%s%s", kind.c_str(), id.c_str(), reason.empty() ? "" : ": ",
             reason.c_str());
  ctx.enforcer.wake();
  sendJson(res, 200, {{"kind", kind}, {"id", id}, {"reason", reason}, {"exempt", true}});
}

void deleteExemption(EnforcementContext& ctx, const std::string& kind, const Req& req, Res& res) {
  const std::string ref = req.matches[1];
  std::string id = ref;
  if (kind == "container") {
    auto r = ctx.store.objects().resolve(ObjectKind::Container, ref);
    if (r && *r) id = **r;  // an exemption of a container that is gone can still be cleared by full id
  } else {
    auto uid = ctx.users.resolve(ref);
    if (!uid) return sendError(res, 404, "no such user: " + printable(ref, kEchoBytes));
    id = std::to_string(*uid);
  }
  auto gone = ctx.store.enforcement().clearExemption(kind, id);
  if (!gone) return sendError(res, 500, gone.error().message);
  if (!*gone) return sendError(res, 404, kind + " " + printable(id, kEchoBytes) + " is not exempt");
  LOG_NOTICE(kSub, "%s %s no longer exempt from enforcement", kind.c_str(), id.c_str());
  ctx.enforcer.wake();
  sendJson(res, 200, {{"kind", kind}, {"id", id}, {"exempt", false}});
}

}  // namespace

void installEnforcementRoutes(ApiServer& api, EnforcementContext& ctx) {
  auto guarded = [&api, &ctx](void (*fn)(EnforcementContext&, const Req&, Res&)) {
    return [&api, &ctx, fn](const Req& req, Res& res) {
      if (api.authorize(req, res)) fn(ctx, req, res);
    };
  };
  api.route("GET", "/api/v1/events", guarded(listEvents));
  api.route("GET", "/api/v1/enforcement", guarded([](EnforcementContext& c, const Req&, Res& res) {
              json s = c.enforcer.state();
              s["delivery"] = c.delivery ? c.delivery() : json::object();
              s["stats"] = c.enforcer.health();
              sendJson(res, 200, s);
            }));
  api.route("GET", R"(/api/v1/enforcement/users/([^/]+))", guarded([](EnforcementContext& c, const Req& req, Res& res) {
              auto uid = c.users.resolve(req.matches[1]);
              if (!uid) return sendError(res, 404, "no such user: " + printable(req.matches[1].str(), kEchoBytes));
              json s = c.enforcer.state(*uid);
              if (s["users"].empty())
                return sendError(res, 404,
                                 "uid " + std::to_string(*uid) + " has no Docker limit and no pending action");
              sendJson(res, 200, s["users"][0]);
            }));
  api.route("POST", "/api/v1/enforcement/sweep", guarded([](EnforcementContext& c, const Req&, Res& res) {
              auto r = c.enforcer.sweep();
              if (!r) return sendError(res, 500, r.error().message);
              sendJson(res, 200,
                       {{"users", r->users},
                        {"over", r->over},
                        {"stopped", r->stopped},
                        {"removed", r->removed},
                        {"spared", r->spared},
                        {"failed", r->failed},
                        {"events", r->events},
                        {"skipped", r->skipped},
                        {"seconds", r->seconds}});
            }));
  api.route("GET", "/api/v1/exemptions", guarded([](EnforcementContext& c, const Req&, Res& res) {
              auto xs = c.store.enforcement().exemptions();
              if (!xs) return sendError(res, 500, xs.error().message);
              json list = json::array();
              for (const auto& x : *xs)
                list.push_back({{"kind", x.kind}, {"id", x.id}, {"reason", x.reason}, {"set_at", isoTime(x.set_at)}});
              sendJson(res, 200, {{"exemptions", std::move(list)}});
            }));
  for (const char* kind : {"container", "user"}) {
    const std::string pattern = std::string("/api/v1/exemptions/") + kind + "s/([^/]+)";
    const std::string k = kind;
    api.route("PUT", pattern, [&api, &ctx, k](const Req& req, Res& res) {
      if (api.authorize(req, res)) putExemption(ctx, k, req, res);
    });
    api.route("DELETE", pattern, [&api, &ctx, k](const Req& req, Res& res) {
      if (api.authorize(req, res)) deleteExemption(ctx, k, req, res);
    });
  }
}

void renderEnforcementMetrics(std::string& out, const EnforcementContext& ctx) {
  const json h = ctx.enforcer.health();
  promHeader(out, "dockquota_enforcement_mode", "gauge", "The enforcement mode in force (1 for the active one).");
  for (const char* m : {"off", "dry-run", "enforce"})
    promSample(out, "dockquota_enforcement_mode", std::string("mode=\"") + m + "\"", uint64_t(h["mode"] == m ? 1 : 0));
  promHeader(out, "dockquota_enforcement_sweeps_total", "counter", "Enforcement sweeps.");
  promSample(out, "dockquota_enforcement_sweeps_total", "", h["sweeps"].get<uint64_t>());
  promHeader(out, "dockquota_enforcement_sweep_seconds", "gauge", "Duration of the last sweep.");
  promSample(out, "dockquota_enforcement_sweep_seconds", "", h["last_sweep_seconds"].get<double>());
  promHeader(out, "dockquota_users_over_limit", "gauge", "Users over their Docker limit at the last sweep.");
  promSample(out, "dockquota_users_over_limit", "", h["users_over_limit"].get<uint64_t>());
  promHeader(out, "dockquota_enforcement_actions_total", "counter",
             "Containers stopped, removed, spared, and failed actions.");
  for (const char* a : {"stopped", "removed", "spared", "failed"})
    promSample(out, "dockquota_enforcement_actions_total", std::string("action=\"") + a + "\"", h[a].get<uint64_t>());
  promHeader(out, "dockquota_events_recorded_total", "counter", "Enforcement events recorded.");
  promSample(out, "dockquota_events_recorded_total", "", h["events"].get<uint64_t>());
  promHeader(out, "dockquota_events_pending", "gauge", "Events waiting for delivery, by channel.");
  for (Channel c : {Channel::Master, Channel::Mail}) {
    auto n = ctx.store.eventLog().pendingCount(c);
    promSample(out, "dockquota_events_pending", std::string("channel=\"") + toString(c) + "\"", uint64_t(n ? *n : 0));
  }
  // The senders' own counters: {"master": {"events_sent": 3, ...}, "mail": {...}}.
  if (ctx.delivery) {
    promHeader(out, "dockquota_delivery", "gauge", "Delivery counters of the master and mail senders.");
    const json delivery = ctx.delivery();  // named: items() of a temporary would outlive it
    for (const auto& [channel, fields] : delivery.items()) {
      if (!fields.is_object()) continue;
      for (const auto& [k, v] : fields.items())
        if (v.is_number())
          promSample(out, "dockquota_delivery",
                     "channel=\"" + promEscape(channel) + "\",field=\"" + promEscape(k) + "\"", v.get<double>());
    }
  }
}

}  // namespace dockquota
