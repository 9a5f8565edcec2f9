// SPDX-License-Identifier: Apache-2.0
// What the enforcer did to which container (written before and after each
// Docker call, its events in the same transaction) and the admin's
// exemptions (schema v4).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.h"
#include "agent/store/db.h"
#include "agent/store/records.h"

namespace dockquota {

class ActionRepo {
 public:
  explicit ActionRepo(Db& db) : db_(db) {}

  // An action's new state, with its events (in this order) in the same transaction.
  struct RoutedEvent {
    Event* event;
    EventRoute route;
  };
  Status putAction(const EnforcementAction& a, const std::vector<RoutedEvent>& events = {});
  // Open ones (stopping, stopped, removing) or all (newest first, at most `limit`).
  Result<std::vector<EnforcementAction>> actions(bool open_only, size_t limit = 1000) const;

  Status setExemption(const Exemption& x);
  Result<bool> clearExemption(const std::string& kind, const std::string& id);  // false: there was none
  Result<std::vector<Exemption>> exemptions() const;

 private:
  Db& db_;
};

}  // namespace dockquota
