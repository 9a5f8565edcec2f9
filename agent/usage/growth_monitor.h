// SPDX-License-Identifier: Apache-2.0
// Live growth: keeps the growth probe watching every running container's
// cgroup (Docker's start/die/destroy events, and all running containers after
// each reconcile), reads the kernel's per-container byte counts every
// `interval`, and when a container wrote `signal_bytes` or more since the last
// read, calls on_growth() at once: the early signal to re-read quotas; and
// on_write() with every container that wrote at all (a targeted read).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/health.h"
#include "agent/base/worker.h"
#include "agent/probes/growth_probe.h"
#include "agent/runtime/docker_client.h"

namespace dockquota {

class GrowthMonitor {
 public:
  struct Options {
    std::chrono::milliseconds interval = std::chrono::seconds(1);
    uint64_t signal_bytes = 16u << 20;
    std::function<void()> on_growth;  // may be empty
    // Every read in which containers wrote anything, with their ids (a cheap
    // targeted quota read follows); may be empty.
    std::function<void(const std::vector<std::string>&)> on_write;
  };
  GrowthMonitor(std::unique_ptr<GrowthProbe> probe, DockerClient& docker, Options options);
  ~GrowthMonitor();  // stops

  void start();
  void stop();

  // Docker's /events messages (the events thread).
  void onDockerEvent(const nlohmann::json& event);
  // Watches every running container (after a (re)connect to Docker).
  Status watchRunning();

  // Bytes written into each watched container's layer since it was watched.
  std::map<std::string, GrowthFigure> figures() const;
  const GrowthProbe& probe() const { return *probe_; }
  uint64_t signals() const;
  // /healthz probes.growth: hook, programs, signals and the kernel counters.
  Health health() const;

 private:
  void watch(const std::string& id);
  void run();
  void halt();  // sets stop_ and wakes run()

  std::unique_ptr<GrowthProbe> probe_;
  DockerClient& docker_;
  Options opt_;

  mutable std::mutex mu_;  // guards the probe's watch set and what follows
  std::map<std::string, GrowthFigure> last_;
  uint64_t signals_ = 0;
  bool stop_ = false;
  std::condition_variable cv_;
  Worker worker_;
};

}  // namespace dockquota
