// SPDX-License-Identifier: Apache-2.0
#include "api/containerd_api.h"

#include <httplib.h>

#include "api/metrics.h"

namespace dockquota {
namespace {

using json = nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;

// containerd's names (namespaces/validate.go, identifiers/validate.go): no '/'.
constexpr const char* kOne =
    R"(/api/v1/containerd/containers/([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9][A-Za-z0-9_.-]*))";

json rowOf(const CtrdContainer& c) {
  return {{"namespace", c.ns},
          {"id", c.id},
          {"image", c.image},
          {"labels", c.labels},
          {"snapshotter", c.snapshotter},
          {"snapshot_key", c.snapshot_key},
          {"upper_dir", c.upper_dir},
          {"upper_error", c.upper_error},
          {"state", ContainerdWatch::stateName(c.task_state)},
          {"pid", c.pid},
          {"exit_status", c.exit_status}};
}

int statusOf(const Error& e) { return e.code == ENOENT ? 404 : e.code == ENOTCONN ? 503 : 502; }

json withQuota(json row, const CtrdQuotas* quotas, const CtrdContainer& c) {
  if (quotas) row.update(quotas->containerFigures(c.ns, c.id));
  return row;
}

void list(ContainerdService& service, const CtrdQuotas* quotas, Res& res) {
  json out = {{"connected", false}, {"containers", json::array()}, {"recent_events", json::array()}};
  if (auto st = service.stats()) out["connected"] = st->connected != 0;
  for (const auto& c : service.watch().containers()) out["containers"].push_back(withQuota(rowOf(c), quotas, c));
  out["count"] = out["containers"].size();
  for (const auto& e : service.watch().recent())
    out["recent_events"].push_back(
        {{"seq", e.seq}, {"kind", e.kind}, {"namespace", e.ns}, {"id", e.id}, {"upper_dir", e.upper_dir}});
  sendJson(res, 200, out);
}

void one(ContainerdService& service, ContainerdRuntime& runtime, const CtrdQuotas* quotas, const Req& req, Res& res) {
  const std::string ns = req.matches[1], id = req.matches[2];
  auto c = service.watch().find(ns, id);
  if (!c) return sendError(res, 404, "no container " + ns + "/" + id + " in the watch");
  json out = withQuota(rowOf(*c), quotas, *c);
  auto bytes = runtime.writableBytes(ns + "/" + id);
  if (!bytes) return sendError(res, statusOf(bytes.error()), bytes.error().message);
  out["writable_bytes"] = *bytes;
  sendJson(res, 200, out);
}

void act(ContainerdRuntime& runtime, const Req& req, Res& res, bool remove) {
  const std::string ref = req.matches[1].str() + "/" + req.matches[2].str();
  uint64_t timeout = 10;
  if (req.has_param("timeout")) {
    auto t = queryDecimal(req.get_param_value("timeout"), 3600);
    if (!t) return sendError(res, 400, "timeout: seconds, 0..3600");
    timeout = *t;
  }
  const Status st = remove ? runtime.remove(ref, false) : runtime.stop(ref, std::chrono::seconds(timeout));
  if (!st) return sendError(res, statusOf(st.error()), st.error().message);
  sendJson(res, 200, {{"id", ref}, {remove ? "removed" : "stopped", true}});
}

}  // namespace

void installContainerdRoutes(ApiServer& api, ContainerdService& service, ContainerdRuntime& runtime,
                             const CtrdQuotas* quotas) {
  api.route("GET", "/api/v1/containerd/containers", [&api, &service, quotas](const Req& req, Res& res) {
    if (api.authorize(req, res)) list(service, quotas, res);
  });
  api.route("GET", "/api/v1/containerd/tenants", [&api, quotas](const Req& req, Res& res) {
    if (!api.authorize(req, res)) return;
    if (!quotas) return sendError(res, 404, "containerd quotas are off (containerd_quotas)");
    sendJson(res, 200, {{"tenants", quotas->tenants()}});
  });
  api.route("GET", kOne, [&api, &service, &runtime, quotas](const Req& req, Res& res) {
    if (api.authorize(req, res)) one(service, runtime, quotas, req, res);
  });
  api.route("POST", std::string(kOne) + "/stop", [&api, &runtime](const Req& req, Res& res) {
    if (api.authorize(req, res)) act(runtime, req, res, false);
  });
  api.route("POST", std::string(kOne) + "/remove", [&api, &runtime](const Req& req, Res& res) {
    if (api.authorize(req, res)) act(runtime, req, res, true);
  });
}

void promContainerdMetrics(std::string& out, const json& r) {
  auto gauge = [&](const char* name, const char* help, double v) {
    promHeader(out, name, "gauge", help);
    promSample(out, name, "", v);
  };
  gauge("dockquota_containerd_connected", "1 while the containerd event stream is up and reconciled.",
        r.value("connected", false) ? 1.0 : 0.0);
  const json counters = r.value("counters", json::object());
  for (const auto& [k, v] : counters.items()) {
    if (!v.is_number_unsigned()) continue;
    const std::string name = "dockquota_containerd_" + k + "_total";
    promHeader(out, name.c_str(), "counter", "containerd module counter (see /healthz runtimes.containerd.counters).");
    promSample(out, name.c_str(), "", v.get<uint64_t>());
  }
  const json w = r.value("watch", json::object());
  auto family = [&](const char* name, const char* help, const char* key, const char* label) {
    promHeader(out, name, "counter", help);
    const json values = w.value(key, json::object());  // items() refers into it: not a temporary
    for (const auto& [k, v] : values.items())
      if (v.is_number_unsigned())
        promSample(out, name, std::string(label) + "=\"" + promEscape(k) + "\"", v.get<uint64_t>());
  };
  family("dockquota_containerd_events_total", "containerd events applied to the watch, by kind.", "events", "kind");
  family("dockquota_containerd_upper_dir_unresolved_total",
         "Containers whose rootfs upper dir could not be found, by reason (unsupported_snapshotter, ...).",
         "upper_dir_unresolved", "reason");
  family("dockquota_containerd_hook_calls_total",
         "Calls of the quota hooks (rootfs_at_container_create, rootfs_at_task_create, rootfs_at_reconcile, "
         "container_delete).",
         "hook_calls", "hook");
  if (w.is_object()) {
    // A task whose process ran before its rootfs was tagged: its first
    // bytes are charged late (the tag moves them) and could pass a limit.
    promHeader(out, "dockquota_containerd_tasks_started_before_hook_total", "counter",
               "Tasks containerd started before the agent's rootfs hook (the tag) returned.");
    promSample(out, "dockquota_containerd_tasks_started_before_hook_total", "",
               w.value("tasks_started_before_hook", uint64_t(0)));
    gauge("dockquota_containerd_containers", "containerd containers in the watched namespaces.",
          w.value("containers", 0.0));
    gauge("dockquota_containerd_tasks_running", "Running containerd tasks in the watched namespaces.",
          w.value("tasks_running", 0.0));
  }
}

void promCtrdQuotaMetrics(std::string& out, const json& r, const json& tenants) {
  const json counters = r.value("counters", json::object());  // items() refers into it: not a temporary
  for (const auto& [k, v] : counters.items()) {
    if (!v.is_number_unsigned()) continue;
    const std::string name = "dockquota_containerd_quota_" + k + "_total";
    promHeader(out, name.c_str(), "counter",
               "containerd quota stage counter (see /healthz runtimes.containerd.quotas).");
    promSample(out, name.c_str(), "", v.get<uint64_t>());
  }
  auto family = [&](const char* name, const char* help, const char* key) {
    promHeader(out, name, "gauge", help);
    for (const auto& t : tenants)
      promSample(out, name, "tenant=\"" + promEscape(t.value("tenant", "")) + "\"", t.value(key, uint64_t(0)));
  };
  family("dockquota_containerd_tenant_used_bytes", "Bytes in a tenant's project (its containers' writable layers).",
         "used_bytes");
  family("dockquota_containerd_tenant_limit_bytes", "A tenant's hard limit in bytes (0 = none).", "limit_bytes");
}

}  // namespace dockquota
