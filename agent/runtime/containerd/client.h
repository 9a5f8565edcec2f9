// SPDX-License-Identifier: Apache-2.0
// The module's containerd client: one gRPC channel to containerd's socket,
// one thread that keeps the event stream (connect, subscribe, reconcile,
// read; backoff and again on any break), and the unary calls enforcement
// makes. Lives inside dockquota-containerd.so only; the agent sees it
// through agent/runtime/containerd_module.h.
#pragma once

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agent/runtime/containerd_module.h"
#include "github.com/containerd/containerd/api/services/containers/v1/containers.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/events/v1/events.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.grpc.pb.h"
#include "github.com/containerd/containerd/api/services/tasks/v1/tasks.grpc.pb.h"

namespace dqctrd {

namespace cs = containerd::services::containers::v1;
namespace es = containerd::services::events::v1;
namespace ss = containerd::services::snapshots::v1;
namespace ts = containerd::services::tasks::v1;

// One event as the module builds it before handing a dq_ctrd_event view out.
struct Item {
  uint32_t kind = 0;
  std::string ns, id, image, snapshotter, snapshot_key, upper_dir, upper_error, upper_reason;
  uint32_t pid = 0, exit_status = 0, task_state = DQ_CTRD_STATE_NONE;
  int64_t timestamp_ns = 0, received_ns = 0, created_ns = 0;
  std::map<std::string, std::string> labels;
};

// A call's outcome: 0 or a positive errno, and what failed.
struct Outcome {
  int err = 0;
  std::string message;
  explicit operator bool() const { return err == 0; }
};

class Client {
 public:
  explicit Client(const dq_ctrd_config& config);
  ~Client();

  int start();
  void stop();
  void stats(dq_ctrd_stats* out);

  Outcome stopTask(const std::string& ns, const std::string& id, uint32_t timeout_s);
  Outcome remove(const std::string& ns, const std::string& id);
  Outcome writableBytes(const std::string& ns, const std::string& id, uint64_t* bytes);

 private:
  std::unique_ptr<grpc::ClientContext> context(const std::string& ns,
                                               std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  Outcome check(const grpc::Status& st, const std::string& what);
  // The stream thread.
  void run();
  bool session();  // true when a stream was established (the backoff restarts)
  bool waitBackoff(std::chrono::milliseconds d);
  bool stopping();
  Outcome reconcileAll();
  Outcome listNamespace(const std::string& ns, std::vector<Item>& out);
  void handle(const es::Envelope& env, int64_t received_ns);
  bool decodeTask(const es::Envelope& env, Item& it);
  bool decodeContainer(const es::Envelope& env, Item& it);
  void describe(const std::string& ns, const std::string& id, Item& it, bool resolve_upper, bool warn);
  void fill(const cs::Container& c, Item& it);
  void resolveUpper(const std::string& ns, Item& it, bool warn);
  static void fromDescribed(const Item& d, Item& it);
  void emit(Item& it);
  void log(uint32_t level, const std::string& msg);
  void setError(const std::string& msg);
  void setConnected(bool up);
  template <typename F>
  void count(F&& f) {
    std::lock_guard<std::mutex> l(stats_mu_);
    f(stats_);
  }
  // Task enforcement steps.
  Outcome kill(const std::string& ns, const std::string& id, uint32_t signal);
  Outcome wait(const std::string& ns, const std::string& id, std::chrono::milliseconds timeout);

  std::string address_;
  std::vector<std::string> namespaces_;
  std::chrono::milliseconds call_timeout_, backoff_min_, backoff_max_;
  void (*on_event_)(void*, const dq_ctrd_event*);
  void (*log_)(void*, uint32_t, const char*);
  void* ctx_;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<es::Events::Stub> events_;
  std::unique_ptr<cs::Containers::Stub> containers_;
  std::unique_ptr<ts::Tasks::Stub> tasks_;
  std::unique_ptr<ss::Snapshots::Stub> snapshots_;

  std::thread thread_;
  std::mutex mu_;  // stopping_, stream_ctx_
  std::condition_variable cv_;
  bool stopping_ = false;
  grpc::ClientContext* stream_ctx_ = nullptr;  // the open stream, for cancel on stop
  uint64_t seq_ = 0;                           // stream thread only
  // What a /containers/create resolved (labels, snapshot, upper dir), so its
  // /tasks/create, on ctr run's critical path between create and start,
  // costs containerd no second Get and Mounts. Stream thread only; dropped at
  // the container's delete and at every reconnect; bounded.
  std::map<std::pair<std::string, std::string>, Item> described_;
  static constexpr size_t kDescribedMax = 4096;
  std::mt19937_64 rng_;

  std::mutex stats_mu_;
  dq_ctrd_stats stats_{};
};

}  // namespace dqctrd
