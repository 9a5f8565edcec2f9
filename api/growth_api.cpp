// SPDX-License-Identifier: Apache-2.0
#include "api/growth_api.h"

#include <map>
#include <optional>

#include "agent/store/billing.h"

namespace dockquota {

void installGrowthRoute(ApiServer& api, Store& store, const GrowthMonitor* growth, bool bill_root_to_login_uid) {
  api.route("GET", "/api/v1/growth",
            [&api, &store, growth, bill_root_to_login_uid](const httplib::Request& req, httplib::Response& res) {
              if (!api.authorize(req, res)) return;
              nlohmann::json out = {{"attached", growth != nullptr},
                                    {"containers", nlohmann::json::array()},
                                    {"users", nlohmann::json::array()}};
              if (growth) {
                auto figs = growth->figures();
                std::map<std::string, std::optional<uint32_t>> owner;
                for (const auto& [id, g] : figs) {
                  auto rec = store.objects().get(ObjectKind::Container, id);
                  owner[id] = rec && *rec && (*rec)->owner
                                  ? std::optional<uint32_t>(billedUid(*(*rec)->owner, bill_root_to_login_uid))
                                  : std::nullopt;
                  nlohmann::json c = {{"id", id}, {"bytes", g.bytes}, {"writes", g.writes}};
                  if (owner[id]) c["uid"] = *owner[id];
                  out["containers"].push_back(c);
                }
                for (const auto& [uid, g] : growthByOwner(figs, [&](const std::string& id) { return owner[id]; }))
                  out["users"].push_back({{"uid", uid}, {"bytes", g.bytes}, {"writes", g.writes}});
              }
              sendJson(res, 200, out);
            });
}

}  // namespace dockquota
