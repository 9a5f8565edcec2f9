// SPDX-License-Identifier: Apache-2.0
// The agent's own enforcement routes (HTTP Basic api + key, like /api/v1/*):
//   GET    /api/v1/events?after=<id>&limit=<n>&uid=<uid>&type=<type>
//            events oldest first after the cursor; "next_after" continues
//   GET    /api/v1/enforcement              mode, per-user state, delivery
//   GET    /api/v1/enforcement/users/<uid>  one user's state
//   POST   /api/v1/enforcement/sweep        a sweep now; its report
//   GET    /api/v1/exemptions
//   PUT    /api/v1/exemptions/containers/<id or name>   {"reason": "..."} optional
//   DELETE /api/v1/exemptions/containers/<id or name>
//   PUT    /api/v1/exemptions/users/<uid or name>
//   DELETE /api/v1/exemptions/users/<uid or name>
// Exemptions are the admin's way to keep something out of enforcement; a
// label on the container would be the user's, so labels are never read.
#pragma once

#include <functional>

#include <nlohmann/json.hpp>

#include "agent/enforcement/enforcer.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "api/http_api.h"

namespace dockquota {

struct EnforcementContext {
  Store& store;
  Enforcer& enforcer;
  UserDirectory& users;
  std::function<nlohmann::json()> delivery;  // the senders' health ({} when none)
};

// Registers the routes (before api.start()); `ctx` must outlive the server.
void installEnforcementRoutes(ApiServer& api, EnforcementContext& ctx);

// Prometheus samples for /metrics: sweeps, actions, users over, events, delivery.
void renderEnforcementMetrics(std::string& out, const EnforcementContext& ctx);

}  // namespace dockquota
