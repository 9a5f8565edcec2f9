// SPDX-License-Identifier: Apache-2.0
#include "agent/usage/growth_monitor.h"

#include "agent/base/log.h"
#include "agent/base/short_id.h"

namespace dockquota {
namespace {
constexpr const char* kSub = "growth";
}

GrowthMonitor::GrowthMonitor(std::unique_ptr<GrowthProbe> probe, DockerClient& docker, Options options)
    : probe_(std::move(probe)), docker_(docker), opt_(std::move(options)) {}

GrowthMonitor::~GrowthMonitor() { stop(); }

void GrowthMonitor::start() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = false;
  }
  worker_.start(
      "dq-growth", [this] { run(); }, [this] { halt(); });
}

void GrowthMonitor::stop() { worker_.stop(); }

void GrowthMonitor::halt() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

void GrowthMonitor::watch(const std::string& id) {
  auto c = docker_.inspectContainer(id);
  if (!c) {
    LOG_DEBUG(kSub, "container %s: %s", shortId(id).c_str(), c.error().message.c_str());
    return;
  }
  const auto& state = (*c)["State"];
  if (!state.is_object() || !state.value("Running", false)) return;
  pid_t pid = state.value("Pid", 0);
  auto cg = containerCgroup(id, pid);
  if (!cg) {
    LOG_WARN(kSub, "container %s: no cgroup to watch: %s", shortId(id).c_str(), cg.error().message.c_str());
    return;
  }
  std::lock_guard<std::mutex> l(mu_);
  if (auto s = probe_->watch(id, *cg); !s) LOG_WARN(kSub, "%s", s.error().message.c_str());
}

void GrowthMonitor::onDockerEvent(const nlohmann::json& e) {
  if (e.value("Type", "") != "container") return;
  const std::string action = e.value("Action", "");
  const auto& actor = e.value("Actor", nlohmann::json::object());
  const std::string id = actor.is_object() ? actor.value("ID", "") : "";
  if (id.empty()) return;
  if (action == "start" || action == "unpause") {
    watch(id);
  } else if (action == "die" || action == "destroy") {
    std::lock_guard<std::mutex> l(mu_);
    probe_->unwatch(id);
    last_.erase(id);
  }
}

Status GrowthMonitor::watchRunning() {
  auto list = docker_.getJson("/containers/json");  // running ones only
  if (!list) return list.error();
  if (!list->is_array()) return Error{EPROTO, "growth: /containers/json is not a list"};
  for (const auto& c : *list)
    if (c.is_object() && c["Id"].is_string()) watch(c["Id"].get<std::string>());
  return {};
}

std::map<std::string, GrowthFigure> GrowthMonitor::figures() const {
  std::lock_guard<std::mutex> l(mu_);
  return last_;
}

uint64_t GrowthMonitor::signals() const {
  std::lock_guard<std::mutex> l(mu_);
  return signals_;
}

void GrowthMonitor::run() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    cv_.wait_for(l, opt_.interval, [this] { return stop_; });
    if (stop_) break;
    auto now = probe_->read();
    if (!now) {
      LOG_WARN(kSub, "%s", now.error().message.c_str());
      continue;
    }
    bool signal = false;
    std::vector<std::string> wrote;
    for (const auto& [id, g] : growthSince(last_, *now)) {
      if (g.bytes > 0) wrote.push_back(id);
      if (g.bytes >= opt_.signal_bytes) {
        LOG_DEBUG(kSub, "container %s wrote %llu bytes in its layer since the last read", shortId(id).c_str(),
                  (unsigned long long)g.bytes);
        signal = true;
      }
    }
    last_ = std::move(*now);
    if (!wrote.empty() && opt_.on_write) {
      l.unlock();
      opt_.on_write(wrote);
      l.lock();
    }
    if (signal) {
      signals_++;
      l.unlock();
      if (opt_.on_growth) opt_.on_growth();
      l.lock();
    }
  }
}

Health GrowthMonitor::health() const {
  Health h;
  const auto& gp = probe();
  h.report = {{"attached", true}, {"hook", gp.hook()}, {"programs", gp.attached()}, {"signals", signals()}};
  {
    std::lock_guard<std::mutex> l(mu_);
    h.report["watched"] = gp.watched();  // containers whose writes are counted now
  }
  auto ctr = gp.counters();
  nlohmann::json kc = nlohmann::json::object();
  for (size_t i = 0; i < ctr.size(); i++) kc[GrowthProbe::counterName(i)] = ctr[i];
  h.report["kernel_counters"] = kc;
  return h;
}

}  // namespace dockquota
