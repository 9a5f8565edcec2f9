// SPDX-License-Identifier: Apache-2.0
// Quota and enforcement events: recorded once, queued for the master and the
// mailer (the EventSpool they drain), and the conditions already announced,
// so a user is told once per crossing (schema v4).
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

class EventRepo : public EventSpool {
 public:
  explicit EventRepo(Db& db) : db_(db) {}

  // Records `e` (seq and detail.event_id are filled in) and queues it on the
  // channels given. With `conditions`, only if (uid, conditions[0]) is not
  // already announced; all of them are then recorded as held, in the same
  // transaction (the rest only if not held yet: an exceeded limit also holds
  // the warning, so a user coming down from over is not warned on the way).
  // Returns the seq, or nullopt when conditions[0] was already announced.
  using Route = EventRoute;
  Result<std::optional<int64_t>> addEvent(Event& e, Route route, const std::vector<std::string>& conditions = {});
  // The condition no longer holds: the next addEvent() with it announces again.
  Status clearCondition(uint32_t uid, const std::string& condition);
  // Every announced condition: uid -> conditions.
  Result<std::map<uint32_t, std::set<std::string>>> conditions() const;
  Result<std::vector<EventRow>> events(const EventQuery& q) const;
  // Deletes delivered (or never queued) events older than `before`; never a pending one.
  Result<size_t> pruneEvents(double before);

  // EventSpool, for MasterSink and MailNotifier.
  Result<std::vector<Event>> pending(Channel c, size_t max) override;
  Status delivered(Channel c, const std::vector<int64_t>& seqs, bool ok, double now) override;
  Result<size_t> pendingCount(Channel c) override;

 private:
  Db& db_;
};

}  // namespace dockquota
