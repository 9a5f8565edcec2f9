// SPDX-License-Identifier: Apache-2.0
// Enforcement events: what the agent tells people (the qman master, email)
// and keeps for its own API. An event is written to the Store before anything
// is sent, with a stable id (its sequence number); each delivery channel then
// drains its own pending ones in id order and marks them delivered, so a
// master that is down, or an agent killed between recording and sending,
// loses nothing.
//
//   type                         master?  mail?  detail (spec §5 where the master knows it)
//   docker_quota_warning         no       yes    uid, block_current, block_hard_limit, percent
//   docker_quota_exceeded        yes      yes    uid, block_current (bytes), block_hard_limit (KiB)
//   docker_container_stopped     yes      yes    container_id (12 chars), size_bytes, block_current,
//                                                block_hard_limit, stopped_ids (full ids)
//   docker_container_removed     yes      yes    container_id, size_bytes, new_usage, removed_ids
//   docker_enforcement_dry_run   no       no     what enforcement would have done
//   docker_enforcement_failed    no       no     container_id, action, error
//   docker_attribution_missed    no       no     entity_type, entity_id, name, created_at, check_after_s
//                                                (uid (uid_t)-1: nobody known; see Attributor)
// Every detail also carries "event_id" (the sequence number) and "container_name"
// where there is a container. The master ignores types it does not know (§5),
// so only its three are sent to it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/result.h"

namespace dockquota {

namespace event_type {  // EVENT_TYPES: keep in step with the table above and README
constexpr const char* kWarning = "docker_quota_warning";
constexpr const char* kExceeded = "docker_quota_exceeded";
constexpr const char* kStopped = "docker_container_stopped";
constexpr const char* kRemoved = "docker_container_removed";
constexpr const char* kDryRun = "docker_enforcement_dry_run";
constexpr const char* kFailed = "docker_enforcement_failed";
constexpr const char* kAttributionMissed = "docker_attribution_missed";
// Block devices and ZFS datasets (agent/quota/disk_notices.h; spec slave-devices §5).
constexpr const char* kDiskPrefix = "disk_";  // disk_soft_limit_exceeded, _soft_grace_ending, ...
}  // namespace event_type
// A block device / ZFS quota event (disk_*): to the master and mailed, like the docker_* ones.
bool diskEventType(const std::string& type);

// Where an event goes besides the agent's own API.
enum class Channel { Master, Mail };
const char* toString(Channel c);  // "master", "mail"

// Whether a type is sent on a channel at all (the table above).
bool channelWants(Channel c, const std::string& type);

struct Event {
  int64_t seq = 0;   // stable id: the order of recording, never reused
  std::string type;  // event_type::*
  uint32_t uid = 0;
  std::string user;          // host user name (qman's host_user_name)
  std::string container_id;  // full id, "" when the event is about the user
  nlohmann::json detail;     // object; see the table above
  double created_at = 0;     // unix seconds
};

// The persistent queue behind a channel (the Store implements it). pending()
// returns the oldest undelivered events of that channel in seq order;
// delivered() marks them so they are never returned again.
class EventSpool {
 public:
  virtual ~EventSpool() = default;
  virtual Result<std::vector<Event>> pending(Channel c, size_t max) = 0;
  // `ok` false: given up for good (e.g. a user without an address); kept for the record.
  virtual Status delivered(Channel c, const std::vector<int64_t>& seqs, bool ok, double now) = 0;
  virtual Result<size_t> pendingCount(Channel c) = 0;
};

}  // namespace dockquota
