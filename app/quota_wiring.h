// SPDX-License-Identifier: Apache-2.0
// The quota side of the agent, built from the config and started and stopped
// as one: the usage accountant (its own Docker client), the quota book, the
// user directory, the kernel project quotas, the block devices and ZFS
// datasets, the periodic default-quota job, and the routes that serve them
// (/remote-api for the qman master, /metrics) on the agent's ApiServer.
//
// App::build(), after the ApiServer is constructed and before api.start():
//   auto quota = QuotaServices::create(config, store, api, [&] { return probeCounters(); });
//   if (!quota) return quota.error();
//   (*quota)->start();
//   ... at shutdown, after api.stop():  (*quota)->stop();
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>

#include <nlohmann/json.hpp>

#include "agent/base/worker.h"
#include "agent/quota/disk_notices.h"
#include "agent/quota/project_quotas.h"
#include "agent/quota/quotas.h"
#include "agent/runtime/docker_client.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "api/http_api.h"
#include "api/qman_api.h"
#include "app/config.h"
#include "app/device_wiring.h"

namespace dockquota {

// The ApiServer options the config asks for (address, port, key, TLS, the
// transport's workers, caps and deadlines).
ApiServerOptions apiServerOptions(const Config& config);

class QuotaServices {
 public:
  // Installs the routes on `api` (call before api.start()). `probe_counters`
  // feeds dockquota_probe_counter in /metrics (may be empty).
  static Result<std::unique_ptr<QuotaServices>> create(const Config& config, Store& store, ApiServer& api,
                                                       std::function<nlohmann::json()> probe_counters);
  ~QuotaServices();  // stops

  void start();  // the accountant's thread and the defaults job
  void stop();

  UsageAccountant& usage() { return *usage_; }
  UserDirectory& users() { return *users_; }
  QmanContext& context() { return *ctx_; }
  // Called after every usage publish (the enforcer's trigger). Set before start().
  void setUsageListener(std::function<void()> f) { on_usage_ = std::move(f); }
  // Called after block/ZFS quota events were recorded (wakes the senders). Set before start().
  void setDiskEventsListener(std::function<void()> f) { on_disk_events_ = std::move(f); }
  QuotaBook& quotas() { return *quotas_; }
  // The kernel project-quota backend; nullptr when the config turns it off.
  ProjectQuotas* projects() { return projects_.get(); }
  // Block devices and ZFS datasets: their figures and reasons for /healthz.
  Health devicesHealth() const { return devices_.health(); }
  QuotaDevices& devices() { return *devices_.devices; }
  // One run of the periodic default application; returns how many users got a limit.
  Result<size_t> applyDefaultsNow();
  // The same for block devices and ZFS datasets; how many users got limits.
  size_t applyDeviceDefaults();

 private:
  QuotaServices() = default;
  void runDefaults();
  void haltDefaults();  // sets stop_ and wakes runDefaults()

  std::chrono::seconds default_interval_{600};
  std::unique_ptr<DockerClient> measure_client_;  // slow calls (/system/df) off the attributor's client
  std::unique_ptr<DockerClient> inspect_client_;  // short timeout: a request waits on it
  std::unique_ptr<QuotaBook> quotas_;
  std::unique_ptr<UserDirectory> users_;
  std::unique_ptr<UsageAccountant> usage_;
  std::unique_ptr<DockerClient> project_client_;  // inspect for layer roots, never behind a slow /system/df
  std::unique_ptr<ProjectQuotas> projects_;
  bool docker_ = true;  // Docker in the config's runtime: its usage measures run
  DeviceServices devices_;
  std::unique_ptr<QmanContext> ctx_;
  std::function<void()> on_usage_;
  std::function<void()> on_disk_events_;
  std::unique_ptr<DiskNotices> notices_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  Worker defaults_worker_;
};

}  // namespace dockquota
