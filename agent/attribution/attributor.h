// SPDX-License-Identifier: Apache-2.0
// Joins what the probes saw (recognised API calls and who made them) with what
// Docker has (inspect, events, lists) and keeps the result in the Store.
//
// Threads: onApiCall runs on the probe consumer thread and writes the store at
// once (a container create is listed the moment Docker's reply is read); work
// that needs Docker (inspecting a new container for its volumes, resolving an
// image reference to an id) goes to one worker thread; onDockerEvent and
// reconcile run on the events thread; the missed-object checks run on the
// worker when they are due.
//
// Nothing here erases a bill on a client's word: an object is marked gone only
// when Docker confirms it (its destroy/delete event, a 404 when the worker
// inspects it after a removal call, its absence from a list begun after the
// row's last change). Every way an attribution can be lost or doubted is
// counted by reason (AttributorStats, /healthz "attribution.losses").
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/health.h"
#include "agent/base/worker.h"
#include "agent/capture/conn_tracker.h"
#include "agent/capture/docker_api.h"
#include "agent/runtime/docker_client.h"
#include "agent/store/billing.h"
#include "agent/store/store.h"

namespace dockquota {

// Evidence for a call, from the kernel's view of the client.
Evidence evidenceFor(const ApiCall& call, const ClientInfo& client, Source source = Source::Bpf);

struct AttributorStats {
  std::atomic<uint64_t> calls{0};         // recognised successful calls handled
  std::atomic<uint64_t> failed_calls{0};  // calls Docker refused (nothing created)
  std::atomic<uint64_t> attributed{0};    // owner set or changed
  std::atomic<uint64_t> reconciles{0};
  std::atomic<double> last_reconcile{0};
  // Losses and doubts, by reason (LOSS_REASONS: keep in step with
  // lossCounters() and the README's /healthz table).
  std::atomic<uint64_t> store_errors{0};         // a store read or write failed: evidence may be lost
  std::atomic<uint64_t> docker_errors{0};        // inspect/list failures: details or a check not done
  std::atomic<uint64_t> reconcile_gone{0};       // absent from a list: marked gone (removed while not watched)
  std::atomic<uint64_t> removal_unconfirmed{0};  // a 2xx removal call, yet Docker still has the object
  std::atomic<uint64_t> revived_reset{0};        // a gone id Docker has again: a new object, old owner dropped
  std::atomic<uint64_t> restored{0};             // marked gone, yet Docker has it: made live again, owner kept
  std::atomic<uint64_t> missed{0};               // created while watched, no kernel evidence in time
  std::atomic<uint64_t> unwatched_creates{0};    // created while not attached/watching: unattributed by design
  std::atomic<uint64_t> missed_unchecked{0};     // watching stopped before a pending miss check was due
  // Confirmations and what the reconcile left alone (not losses).
  std::atomic<uint64_t> gone_by_event{0};          // destroy/delete events that marked a row gone
  std::atomic<uint64_t> gone_by_check{0};          // removals confirmed by a 404 after the call
  std::atomic<uint64_t> reconcile_kept_recent{0};  // changed after the list began: not judged by it
  std::atomic<uint64_t> stale_observations{0};     // a list/inspect older than a gone mark: ignored
};

// {"reason": count} of every loss/doubt counter above (LOSS_REASONS).
std::vector<std::pair<const char*, uint64_t>> lossCounters(const AttributorStats& s);

class Attributor {
 public:
  struct Options {
    // How long after Docker's create event an object created while watching
    // may go without kernel evidence before it counts as missed.
    std::chrono::milliseconds missed_after{5000};
    // Have the probes been attached and the events stream connected, without
    // a break, since `since` (unix seconds)? Injected, so that the owner of the
    // probes decides (unset: never watching, so no object is judged missed).
    std::function<bool(double since)> watching;
    // How long before Docker's create event the client's request may have
    // begun: a create is judged only if the agent watched since then (a
    // request sent before the probes attached leaves no evidence).
    std::chrono::milliseconds request_grace{2000};
  };

  Attributor(Store& store, DockerClient& docker);
  Attributor(Store& store, DockerClient& docker, Options options);
  ~Attributor();

  void start();
  void stop();

  void onApiCall(const ApiCall& call, const ClientInfo& client);
  void onDockerEvent(const nlohmann::json& event);
  // Adds what Docker has and the store lacks (unattributed), marks the rest gone.
  Status reconcile();

  // Called (on the attributing thread) when an object is gone. Set before
  // start(). Owner changes come from the store (ObjectRepo::setOwnerListener).
  using ObjectListener = std::function<void(ObjectKind, const std::string& id)>;
  void setGoneListener(ObjectListener f) { on_gone_ = std::move(f); }

  const AttributorStats& stats() const { return stats_; }
  const Options& options() const { return options_; }
  // /healthz "attribution": calls, losses by reason, misses, gone marks.
  Health health() const;
  // Blocks until the worker queue is empty (tests, benchmarks); pending miss checks are not waited for.
  void drain();
  size_t pendingMissChecks() const;

 private:
  void post(std::function<void()> task);
  void run();
  void halt();  // sets stop_ and wakes run()
  void attribute(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new);
  void attributeImageRef(const std::string& ref, const Evidence& ev);
  void attributeContainerVolumes(const std::string& container_id, const Evidence& ev);
  // `observed_since`: ObjectRepo::noteSeen().
  void noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                const std::optional<std::string>& label, std::optional<uint64_t> observed_since = std::nullopt);
  bool markGone(ObjectKind kind, const std::string& id, std::optional<uint64_t> unless_changed_after = std::nullopt);
  // Inspect: a 404 marks it gone (unless the row changed since). After a
  // removal call Docker answered 2xx, finding it is counted unconfirmed.
  void confirmGone(ObjectKind kind, const std::string& id, bool after_removal);
  // The store marked it gone at or after t (an event from before its removal).
  bool goneSince(ObjectKind kind, const std::string& id, double t);
  void expectEvidence(ObjectKind kind, const std::string& id, double created_at);
  void checkMissed(ObjectKind kind, const std::string& id, double created_at);

  Store& store_;
  DockerClient& docker_;
  Options options_;
  AttributorStats stats_;
  ObjectListener on_gone_;

  struct MissCheck {
    std::chrono::steady_clock::time_point due;
    ObjectKind kind;
    std::string id;
    double created_at;
  };

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::deque<MissCheck> checks_;  // in due order (one fixed delay)
  bool busy_ = false;
  bool stop_ = false;
  Worker worker_;  // last: stopped before the state its body uses goes
};

}  // namespace dockquota
