// Joins what the probes saw (recognised API calls and who made them) with what
// Docker has (inspect, events, lists) and keeps the result in the Store.
//
// Threads: onApiCall runs on the probe consumer thread and writes the store at
// once (a container create is listed the moment Docker's reply is read); work
// that needs Docker (inspecting a new container for its volumes, resolving an
// image reference to an id) goes to one worker thread; onDockerEvent and
// reconcile run on the events thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "agent/conn_tracker.h"
#include "agent/docker_api.h"
#include "agent/docker_client.h"
#include "agent/store.h"

namespace dockquota {

// Evidence for a call, from the kernel's view of the client.
Evidence evidenceFor(const ApiCall& call, const ClientInfo& client, Source source = Source::Bpf);

// Who pays: the actor, or the login uid when root acted for a logged-in user
// (`sudo docker ...`) and the policy says so.
uint32_t billedUid(const Evidence& ev, bool bill_root_to_login_uid);

struct AttributorStats {
  std::atomic<uint64_t> calls{0};          // recognised successful calls handled
  std::atomic<uint64_t> failed_calls{0};   // calls Docker refused (nothing created)
  std::atomic<uint64_t> attributed{0};     // owner set or changed
  std::atomic<uint64_t> docker_errors{0};  // inspect/list failures
  std::atomic<uint64_t> reconciles{0};
  std::atomic<uint64_t> store_errors{0};
  std::atomic<double> last_reconcile{0};
};

class Attributor {
 public:
  Attributor(Store& store, DockerClient& docker);
  ~Attributor();

  void start();
  void stop();

  void onApiCall(const ApiCall& call, const ClientInfo& client);
  void onDockerEvent(const nlohmann::json& event);
  // Adds what Docker has and the store lacks (unattributed), marks the rest gone.
  Status reconcile();

  // Called (on the attributing thread) whenever an object's owner is set or
  // changes, and when an object is gone. Set before start().
  using ObjectListener = std::function<void(ObjectKind, const std::string& id)>;
  void setOwnerListener(ObjectListener f) { on_owner_ = std::move(f); }
  void setGoneListener(ObjectListener f) { on_gone_ = std::move(f); }

  const AttributorStats& stats() const { return stats_; }
  // Blocks until the worker queue is empty (tests, benchmarks).
  void drain();

 private:
  void post(std::function<void()> task);
  void run();
  void attribute(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new);
  void attributeImageRef(const std::string& ref, const Evidence& ev);
  void attributeContainerVolumes(const std::string& container_id, const Evidence& ev);
  void noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                const std::optional<std::string>& label);
  void markGone(ObjectKind kind, const std::string& id);

  Store& store_;
  DockerClient& docker_;
  AttributorStats stats_;
  ObjectListener on_owner_, on_gone_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool busy_ = false;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace dockquota
