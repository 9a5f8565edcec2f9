// SPDX-License-Identifier: Apache-2.0
// The containerd runtime's routes (HTTP Basic api + key, like /api/v1/*):
//   GET  /api/v1/containerd/containers             the live set the agent keeps
//        {"connected", "count", "containers": [{"namespace", "id", "image", "labels",
//         "snapshotter", "snapshot_key", "upper_dir", "upper_error", "state", "pid",
//         "exit_status"}], "recent_events": [{"seq", "kind", "namespace", "id", "upper_dir"}]}
//   GET  /api/v1/containerd/containers/NS/ID       one of them, with "writable_bytes"
//        (Snapshots.Usage now, through ContainerdRuntime)
//   POST /api/v1/containerd/containers/NS/ID/stop?timeout=S   ContainerdRuntime::stop
//   POST /api/v1/containerd/containers/NS/ID/remove           ContainerdRuntime::remove
// and its /metrics families (dockquota_containerd_*), from /healthz's report.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "agent/runtime/containerd_runtime.h"
#include "api/http_api.h"

namespace dockquota {

// Registers the routes (before api.start()); both must outlive the server.
void installContainerdRoutes(ApiServer& api, ContainerdService& service, ContainerdRuntime& runtime);

// dockquota_containerd_* from runtimes.containerd of /healthz.
void promContainerdMetrics(std::string& out, const nlohmann::json& report);

}  // namespace dockquota
