// SPDX-License-Identifier: Apache-2.0
// Quota events for block devices and ZFS datasets (../shared/spec/
// qman-slave-devices.md §5): after each refresh of the devices, every listed
// (device, uid) gets a status, and a change of status that the spec names
// records one event in the Store (to the master and to mail, through the
// existing senders in agent/delivery).
//
// Deliberate differences from qman's slave scan: "over the soft limit" is the
// kernel's rule, usage strictly above it (the kernel starts grace only then;
// qman uses >=, and would report a user sitting exactly at the limit whose
// grace never starts); a hard limit counts as reached at usage >= limit (the
// kernel refuses the next byte there). The statuses live in memory: after a
// restart the first scan reports everyone then in grace or at a hard limit
// again, as qman's first run does; the master's throttle drops repeats
// within its window.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "agent/quota/quota_device.h"
#include "agent/quota/quota_devices.h"
#include "agent/store/store.h"

namespace dockquota {

enum class DiskStatus { kOk, kInGrace, kGraceEnding, kGraceExpired, kHardOver };
const char* toString(DiskStatus s);

// The status of one entry at `now` (unix s); `window_s` is the alert window
// (config disk_notification_window_s).
DiskStatus diskStatus(const QuotaFigures& f, const std::optional<QuotaInfo>& info, uint64_t now, uint64_t window_s);

// The event a change of status announces (spec §5's table), or nullptr.
const char* diskEventType(DiskStatus from, DiskStatus to);

// The event's detail (spec §5): time limits null when 0, user_quota_info null when absent.
nlohmann::json diskEventDetail(const std::string& device, const QuotaFigures& f, const std::optional<QuotaInfo>& info);

class DiskNotices {
 public:
  struct Options {
    uint64_t window_s = 86400;
    EventRoute route;                              // which senders get the events
    std::function<std::string(uint32_t)> name_of;  // passwd name, else user_<uid>
    std::function<void()> on_events = {};          // events were recorded: wake the senders
  };
  DiskNotices(Store& store, Options options);

  // One scan of `view` at `now`; returns how many events were recorded.
  size_t scan(const QuotaDevices::View& view, uint64_t now);

 private:
  Store& store_;
  Options opt_;
  std::mutex mu_;                                                 // one scan at a time; guards state_
  std::map<std::pair<std::string, uint32_t>, DiskStatus> state_;  // none = ok
};

}  // namespace dockquota
