// SPDX-License-Identifier: Apache-2.0
// The agent's background threads: each one named after its job (what top -H,
// ps -L and /proc/<pid>/task/*/comm show), stopped and joined once. Checked on
// Worker itself and on the real services, started as the agent starts them.
#include <catch2/catch.hpp>

#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "agent/attribution/attributor.h"
#include "agent/base/worker.h"
#include "agent/delivery/mailer.h"
#include "agent/delivery/master_sink.h"
#include "agent/enforcement/enforcer.h"
#include "agent/runtime/docker_client.h"
#include "agent/store/store.h"
#include "agent/usage/growth_monitor.h"
#include "api/http_api.h"
#include "app/config.h"
#include "app/quota_wiring.h"
#include "tests/unit/api_stack.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using namespace std::chrono_literals;

namespace {

// Thread name -> how many of this process's threads carry it.
std::map<std::string, int> threadNames() {
  std::map<std::string, int> names;
  DIR* d = opendir("/proc/self/task");
  if (!d) return names;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream f(std::string("/proc/self/task/") + e->d_name + "/comm");
    std::string name;
    if (std::getline(f, name)) names[name]++;
  }
  closedir(d);
  return names;
}

// A worker names itself as its first act: wait for that, not for a sleep.
bool waitForName(const std::string& name, int count = 1) {
  for (int i = 0; i < 500; i++) {
    if (threadNames()[name] >= count) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

class NoMail : public MailTransport {
 public:
  Status send(const std::string&, const std::string&) override { return Error{EIO, "no mail in tests"}; }
  const std::string& from() const override { return from_; }

 private:
  std::string from_ = "dockquota@example.org";
};

}  // namespace

TEST_CASE("worker: the thread carries its name, cut to 15 characters", "[worker]") {
  Worker w;
  std::atomic<bool> stop{false};
  CHECK(w.start(
      "dq-a-name-longer-than-fifteen",
      [&] {
        while (!stop) std::this_thread::sleep_for(1ms);
      },
      [&] { stop = true; }));
  REQUIRE(waitForName("dq-a-name-longe"));
  CHECK(w.running());
  w.stop();
  CHECK_FALSE(w.running());
  CHECK(threadNames().count("dq-a-name-longe") == 0);
}

TEST_CASE("worker: stop() wakes once and joins once, again is a no-op, and it starts again after", "[worker]") {
  Worker w;
  w.stop();  // never started
  std::atomic<bool> stop{false};
  std::atomic<int> wakes{0}, runs{0};
  auto body = [&] {
    runs++;
    while (!stop) std::this_thread::sleep_for(1ms);
  };
  auto wake = [&] {
    wakes++;
    stop = true;
  };
  REQUIRE(w.start("dq-test", body, wake));
  CHECK_FALSE(w.start("dq-test", body, wake));  // running: not a second thread
  w.requestStop();
  w.stop();
  w.stop();
  CHECK(wakes == 1);
  CHECK_FALSE(w.running());

  stop = false;
  REQUIRE(w.start("dq-test", body, wake));
  w.stop();
  CHECK(wakes == 2);
  CHECK(runs == 2);
}

TEST_CASE("worker: stop() from the body only asks, the owner's stop() joins", "[worker]") {
  Worker w;
  std::atomic<bool> stop{false}, asked{false};
  REQUIRE(w.start(
      "dq-test",
      [&] {
        w.stop();  // a callback stopping its own service
        asked = true;
        while (!stop) std::this_thread::sleep_for(1ms);
      },
      [&] { stop = true; }));
  for (int i = 0; i < 500 && !asked; i++) std::this_thread::sleep_for(10ms);
  CHECK(asked);
  CHECK(w.running());  // not joined by itself
  w.stop();
  CHECK_FALSE(w.running());
}

TEST_CASE("worker: the threads of the started services carry their names, and stop() twice is harmless", "[worker]") {
  TempDir dir;
  auto store = Store::open(dir.file("s.db"));
  REQUIRE(store.ok());
  const std::string nowhere = dir.file("no-docker.sock");  // every Docker call fails at once

  ApiServer api(ApiServerOptions{.address = "127.0.0.1", .port = 0, .api_key = "k3y", .threads = 3}, **store,
                [] { return nlohmann::json::object(); });
  Config config;
  config.docker_socket = nowhere;
  config.project_quotas = "off";  // the kernel backend needs a project-quota filesystem
  auto qman = QuotaServices::create(config, **store, api, {});
  REQUIRE(qman.ok());
  testing::IdleRuntime runtime;
  EnforcerOptions eo;
  eo.mode = EnforceMode::DryRun;
  auto enforcer = Enforcer::create(
      **store, (*qman)->quotas(), [&] { return (*qman)->usage().snapshot(); }, (*qman)->users(), runtime, eo);
  REQUIRE(enforcer.ok());
  DockerClient docker(nowhere);
  Attributor attributor(**store, docker);
  DockerEventStream events(nowhere, {});
  GrowthMonitor growth(nullptr, docker, {.interval = 1h});  // never reads the (absent) probe before stop
  NoMail transport;
  MailNotifier mailer((*store)->eventLog(), transport, EmailDirectory{}, {.host_id = "test"});
  auto master =
      MasterSink::create((*store)->eventLog(), {.url = "http://127.0.0.1:1", .secret = "s", .host_id = "test"});
  REQUIRE(master.ok());

  REQUIRE(api.start().ok());
  (*qman)->start();
  (*enforcer)->start();
  attributor.start();
  events.start();
  growth.start();
  mailer.start();
  (*master)->start();

  const std::map<std::string, int> expected = {
      {"dq-http-loop", 1}, {"dq-http-0", 1}, {"dq-http-1", 1}, {"dq-http-2", 1}, {"dq-usage", 1}, {"dq-defaults", 1},
      {"dq-enforce", 1},   {"dq-attrib", 1}, {"dq-events", 1}, {"dq-growth", 1}, {"dq-mail", 1},  {"dq-master", 1}};
  for (const auto& [name, n] : expected) {
    INFO(name);
    CHECK(waitForName(name, n));
  }

  for (int round = 0; round < 2; round++) {
    (*master)->stop();
    mailer.stop();
    growth.stop();
    events.stop();
    attributor.stop();
    (*enforcer)->stop();
    api.stop();
    (*qman)->stop();
    auto left = threadNames();
    for (const auto& [name, n] : expected) {
      INFO(name << " after stop() #" << round + 1);
      CHECK(left.count(name) == 0);
    }
  }
}
