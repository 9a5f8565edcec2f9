// SPDX-License-Identifier: Apache-2.0
// Enforcement and its delivery, built from the config and started and
// stopped as one: the Enforcer (with a Docker runtime on its own client),
// the master sender and the mail notifier (each when configured), and the
// /api/v1/events, /api/v1/enforcement, /api/v1/exemptions routes.
//
// main.cpp, after QuotaServices::create() and before api.start():
//   auto enf = EnforcementServices::create(config, store, **quota, api);
//   (*quota)->setUsageListener([e = enf->get()] { e->usageChanged(); });
//   (*enf)->start();   ... at shutdown, after api.stop(): (*enf)->stop();
#pragma once

#include <memory>

#include <nlohmann/json.hpp>

#include "agent/base/health.h"
#include "agent/delivery/mailer.h"
#include "agent/delivery/master_sink.h"
#include "agent/enforcement/enforcer.h"
#include "agent/runtime/docker_client.h"
#include "agent/runtime/runtime.h"
#include "agent/store/store.h"
#include "api/enforcement_api.h"
#include "api/http_api.h"
#include "app/config.h"
#include "app/quota_wiring.h"

namespace dockquota {

class EnforcementServices {
 public:
  static Result<std::unique_ptr<EnforcementServices>> create(const Config& config, Store& store, QuotaServices& quota,
                                                             ApiServer& api);
  ~EnforcementServices();  // stops

  void start();
  void stop();
  // New usage figures were published: sweep soon.
  void usageChanged() { enforcer_->wake(); }
  Enforcer& enforcer() { return *enforcer_; }
  // Events were recorded elsewhere (the block devices' quota events): send them now.
  void wakeDelivery() { eventsRecorded(); }
  // For /healthz: the enforcer's counters and each sender's state (a failing
  // sender degrades the agent).
  Health health() const;

 private:
  EnforcementServices() = default;
  nlohmann::json delivery() const;
  void eventsRecorded();

  std::unique_ptr<DockerClient> client_;  // stop waits up to the stop timeout: its own client
  std::unique_ptr<DockerRuntime> runtime_;
  std::unique_ptr<Enforcer> enforcer_;
  std::unique_ptr<MasterSink> master_;  // when master_url is set
  std::unique_ptr<SmtpMailer> mailer_;  // when smtp_url is set
  std::unique_ptr<MailNotifier> mail_;
  std::unique_ptr<EnforcementContext> ctx_;
};

// The uids of enforcement_exempt_users (UserDirectory::resolve); unknown names are an error.
Result<std::set<uint32_t>> exemptUids(const std::vector<std::string>& refs, UserDirectory& users);

}  // namespace dockquota
