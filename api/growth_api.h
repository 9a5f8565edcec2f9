// SPDX-License-Identifier: Apache-2.0
// GET /api/v1/growth (HTTP Basic api + key, like /api/v1/*): the bytes each
// running container wrote into its layer since it started (the live-growth
// probe), and the sums per billed uid.
//   {"attached": bool, "containers": [{"id", "bytes", "writes", "uid"?}],
//    "users": [{"uid", "bytes", "writes"}]}
#pragma once

#include "agent/store/store.h"
#include "agent/usage/growth_monitor.h"
#include "api/http_api.h"

namespace dockquota {

// Registers the route (before api.start()). `growth` may be nullptr (the
// probe is off or unavailable: "attached": false); it and `store` must
// outlive the server.
void installGrowthRoute(ApiServer& api, Store& store, const GrowthMonitor* growth, bool bill_root_to_login_uid);

}  // namespace dockquota
