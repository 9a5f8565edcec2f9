// SPDX-License-Identifier: Apache-2.0
// What a service reports for /healthz: its own figures, and every reason it
// is degraded. app/ assembles the services' reports into one document; any
// reason makes the agent "degraded" (a green /healthz means nothing was lost).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace dockquota {

struct Health {
  nlohmann::json report = nlohmann::json::object();
  std::vector<std::string> degraded;  // empty: healthy

  // Takes another service's reasons, for a report that nests it.
  void absorb(Health&& other) {
    for (auto& r : other.degraded) degraded.push_back(std::move(r));
  }
};

}  // namespace dockquota
