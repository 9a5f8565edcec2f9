// SPDX-License-Identifier: Apache-2.0
// A real qman API over loopback, on a store filled with the Scenario: the
// fixture the route tests share (the docker device's, the block devices').
// Built in two steps so a test can add to the context (devices, candidates)
// before the routes go in: construct, adjust `ctx`, then serve().
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/quota/quotas.h"
#include "api/http_api.h"
#include "api/qman_api.h"
#include "tests/unit/qman_fixture.h"

namespace dockquota::testing {

struct QmanAgent {
  struct Setup {
    std::vector<PasswdUser> passwd = {{0, "root"},    {kAlice, "alice"}, {kBob, "bob"}, {kCarol, "carol"},
                                      {5000, "dave"}, {65534, "nobody"}, {999, "sys"}};
    QmanOptions qman{};
    ApiServerOptions server{
        .address = "127.0.0.1", .port = 0, .api_key = "k3y", .bill_root_to_login_uid = true, .threads = 4};
    std::function<nlohmann::json()> probe_counters = [] {
      return nlohmann::json{{"docker_sock", {{"attached", true}, {"kernel_counters", {{"ringbuf_full", 3}}}}}};
    };
  };

  QmanTempDir dir;
  std::unique_ptr<Store> store;
  Scenario sc;
  FakeSource* fake = nullptr;
  std::unique_ptr<QuotaBook> book;
  std::unique_ptr<UserDirectory> users;
  std::unique_ptr<UsageAccountant> usage;
  std::unique_ptr<QmanContext> ctx;
  std::unique_ptr<ApiServer> api;
  ApiServerOptions server_options;
  int port = 0;

  explicit QmanAgent(Setup s) : server_options(s.server) {
    store = std::move(*Store::open(dir.path + "/s.db"));
    sc.fill(*store);
    auto src = std::make_unique<FakeSource>(sc.figures());
    fake = src.get();
    book = std::move(*QuotaBook::load(*store));
    users = std::make_unique<UserDirectory>([pw = s.passwd] { return pw; });
    usage = std::make_unique<UsageAccountant>(*store, std::move(src), UsageAccountant::Options{});
    REQUIRE(usage->refresh());
    ctx.reset(new QmanContext{*store, *book, *usage, *users, nullptr, s.probe_counters, s.qman});
  }

  // The routes on a real ApiServer, listening on a free loopback port.
  void serve() {
    api = std::make_unique<ApiServer>(server_options, *store, nullptr);
    installQmanRoutes(*api, *ctx);
    auto p = api->start();
    REQUIRE(p.ok());
    port = *p;
  }

  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_basic_auth("api", "k3y");
    return c;
  }
};

}  // namespace dockquota::testing
