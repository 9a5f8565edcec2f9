// SPDX-License-Identifier: Apache-2.0
// The containerd runtime's routes (HTTP Basic api + key, like /api/v1/*):
//   GET  /api/v1/containerd/containers             the live set the agent keeps
//        {"connected", "count", "containers": [{"namespace", "id", "image", "labels",
//         "snapshotter", "snapshot_key", "upper_dir", "upper_error", "state", "pid",
//         "exit_status", "project_id", "limit_bytes", "used_bytes", "tenant", "shared"}],
//         "recent_events": [{"seq", "kind", "namespace", "id", "upper_dir"}]}
//        (the quota figures: null without a project; used_bytes of the last usage read)
//   GET  /api/v1/containerd/tenants                 {"tenants": [{"tenant", "project_id",
//        "limit_bytes", "used_bytes", "containers"}]} (404 without the quota stage)
//   GET  /api/v1/containerd/containers/NS/ID       one of them, with "writable_bytes"
//        (Snapshots.Usage now, through ContainerdRuntime)
//   POST /api/v1/containerd/containers/NS/ID/stop?timeout=S   ContainerdRuntime::stop
//   POST /api/v1/containerd/containers/NS/ID/remove           ContainerdRuntime::remove
// and its /metrics families (dockquota_containerd_*), from /healthz's report.
// `quotas` may be nullptr (containerd_quotas false).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "agent/quota/ctrd_quotas.h"
#include "agent/runtime/containerd_runtime.h"
#include "api/http_api.h"

namespace dockquota {

// Registers the routes (before api.start()); both must outlive the server.
void installContainerdRoutes(ApiServer& api, ContainerdService& service, ContainerdRuntime& runtime,
                             const CtrdQuotas* quotas);

// dockquota_containerd_* from runtimes.containerd of /healthz.
void promContainerdMetrics(std::string& out, const nlohmann::json& report);
// dockquota_containerd_quota_* and _tenant_* from CtrdQuotas::health().report and tenants().
void promCtrdQuotaMetrics(std::string& out, const nlohmann::json& report, const nlohmann::json& tenants);

}  // namespace dockquota
