// SPDX-License-Identifier: Apache-2.0
// The qman and enforcement routes of one agent over a Store the caller filled:
// usage from a FakeSource, enforcement in dry-run with a runtime that does
// nothing. What the API tests (test_utf8.cpp) and the API fuzz harness
// (tests/fuzz/fuzz-api.cpp) drive, built the one way.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/enforcement/enforcer.h"
#include "agent/quota/quotas.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "api/enforcement_api.h"
#include "api/http_api.h"
#include "api/qman_api.h"

namespace dockquota::testing {

class IdleRuntime : public ContainerRuntime {
 public:
  const char* name() const override { return "idle"; }
  Result<uint64_t> writableBytes(const std::string&) override { return Error{ENOENT, "no such container"}; }
  Status stop(const std::string&, std::chrono::seconds) override { return {}; }
  Status remove(const std::string&, bool) override { return {}; }
};

struct RouteStack {
  struct Options {
    std::vector<PasswdUser> users;
    DockerClient* docker = nullptr;            // /remote-api/docker/*: none = those routes say so
    std::function<nlohmann::json()> master;    // the qman master's health, when wired
    std::function<nlohmann::json()> delivery;  // enforcement's delivery health, when wired
    HealthFn health;                           // /healthz
    std::function<double()> clock;             // the enforcer's, when fixed
    int threads = 2;
  };

  IdleRuntime runtime;
  std::unique_ptr<QuotaBook> book;
  std::unique_ptr<UserDirectory> users;
  std::unique_ptr<UsageAccountant> usage;
  std::unique_ptr<QmanContext> qman;
  std::unique_ptr<Enforcer> enforcer;
  std::unique_ptr<EnforcementContext> enforcement;
  std::unique_ptr<ApiServer> api;  // routes installed, not started

  RouteStack(Store& store, std::unique_ptr<UsageSource> source, Options o) {
    book = take(QuotaBook::load(store));
    users = std::make_unique<UserDirectory>([list = o.users] { return list; });
    usage = std::make_unique<UsageAccountant>(store, std::move(source), UsageAccountant::Options{});
    must(usage->refresh());
    qman.reset(new QmanContext{store, *book, *usage, *users, o.docker, o.master, QmanOptions{}});
    EnforcerOptions eo;
    eo.mode = EnforceMode::DryRun;
    if (o.clock) eo.clock = o.clock;
    enforcer = take(Enforcer::create(
        store, *book, [this] { return usage->snapshot(); }, *users, runtime, eo));
    enforcement.reset(new EnforcementContext{store, *enforcer, *users, o.delivery});
    if (o.delivery) qman->more_metrics = [this](std::string& out) { renderEnforcementMetrics(out, *enforcement); };
    api = std::make_unique<ApiServer>(
        ApiServerOptions{
            .address = "127.0.0.1", .port = 0, .api_key = "k3y", .bill_root_to_login_uid = true, .threads = o.threads},
        store, o.health);
    installQmanRoutes(*api, *qman);
    installEnforcementRoutes(*api, *enforcement);
  }

 private:
  static void must(const Status& s) {
    if (!s) throw std::runtime_error("route stack: " + s.error().message);
  }
  template <typename T>
  static T take(Result<T> r) {
    if (!r) must(r.error());
    return std::move(*r);
  }
};

}  // namespace dockquota::testing
