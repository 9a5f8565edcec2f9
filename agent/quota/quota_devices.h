// SPDX-License-Identifier: Apache-2.0
// QuotaDevices: every non-Docker quota device (block devices, ZFS datasets)
// and their last reads. One Worker ("dq-devices") reads them all in the
// background every `interval`; the HTTP routes answer from the published
// view and never wait for a quotactl or a `zfs` process, except the PUT that
// writes one user and re-reads that user.
//
// A device whose read fails keeps no place in the view until a read works
// again (qman answers HTML 500 for the whole list; the spec asks us to drop
// the device and log). Devices are in the spec's order by name (§2).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/base/health.h"
#include "agent/base/worker.h"
#include "agent/quota/quota_device.h"

namespace dockquota {

class QuotaDevices {
 public:
  struct Options {
    std::chrono::milliseconds interval = std::chrono::seconds(30);  // between background refreshes
    std::function<void()> on_refresh = {};  // after each published refresh (the notification scan)
  };
  // Immutable; swapped whole on every refresh or write.
  struct View {
    uint64_t generation = 0;                                     // +1 on every publish: the JSON caches key on it
    std::vector<std::shared_ptr<const DeviceSnapshot>> devices;  // sorted by name, code point order
    double refreshed_at = 0;                                     // unix seconds of the last full refresh, 0 = never
  };

  explicit QuotaDevices(Options options);
  ~QuotaDevices();
  QuotaDevices(const QuotaDevices&) = delete;
  QuotaDevices& operator=(const QuotaDevices&) = delete;

  // Called after each full refresh (replaces Options::on_refresh). Before start().
  void setRefreshListener(std::function<void()> f) { opt_.on_refresh = std::move(f); }
  // Before start(). Two devices may not share a name (the second is refused, logged).
  void add(std::unique_ptr<QuotaDevice> device);
  // Refreshes in the background: at once, then every interval.
  void start();
  void stop();
  // One full refresh on the caller's thread; returns its duration in seconds.
  double refreshNow();

  std::shared_ptr<const View> view() const;
  bool empty() const { return devices_.empty(); }
  // nullptr when no device has that name.
  QuotaDevice* find(const std::string& name) const;
  std::vector<QuotaDevice*> all() const;
  // Writes a user's limits on one device, re-reads that user and publishes the
  // view with the entry replaced. Returns the figures as now read (nullopt:
  // the filesystem keeps no entry for the uid, e.g. XFS with all limits 0 and no usage).
  Result<std::optional<QuotaFigures>> setUserLimits(QuotaDevice& device, uint32_t uid, const LimitsUpdate& u);

  // "devices": each device's own report; degraded: theirs, and devices that failed to read.
  Health health() const;
  double lastRefreshSeconds() const;

 private:
  void run();
  void publish(std::vector<std::shared_ptr<const DeviceSnapshot>> devices, bool full);

  Options opt_;
  std::vector<std::unique_ptr<QuotaDevice>> devices_;
  mutable std::mutex view_mu_;  // guards view_, failures_, last_seconds_
  std::shared_ptr<const View> view_;
  std::vector<std::string> failures_;  // devices whose last read failed, with why
  double last_seconds_ = 0;
  std::mutex write_mu_;     // one write (set + re-read + publish) at a time, and not during a refresh's publish
  uint64_t write_gen_ = 0;  // guarded by write_mu_: +1 per write
  std::map<std::string, uint64_t> written_during_;  // guarded by write_mu_: device -> its last write's gen

  std::mutex mu_;  // guards stop_ for the Worker's wait
  std::condition_variable cv_;
  bool stop_ = false;
  Worker worker_;
};

}  // namespace dockquota
