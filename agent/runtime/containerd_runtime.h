// SPDX-License-Identifier: Apache-2.0
// The containerd runtime, agent side: loads dockquota-containerd.so (the
// gRPC client, agent/runtime/containerd/) with dlopen, checks its ABI
// version, starts its stream thread and keeps what it reports in a
// ContainerdWatch. ContainerdRuntime is the ContainerRuntime (stop, remove,
// writable bytes) over it.
//
// The module is loaded only when the config's `runtime` includes containerd:
// dockquotad itself links no gRPC (ctest unit_no_grpc). A module that is
// missing or of another ABI leaves the service unloaded and /healthz
// degraded with the reason; the agent runs on without it.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/base/health.h"
#include "agent/base/result.h"
#include "agent/runtime/containerd_module.h"
#include "agent/runtime/containerd_watch.h"
#include "agent/runtime/runtime.h"

namespace dockquota {

struct ContainerdOptions {
  std::string module_path;  // see containerdModulePath()
  std::string address = "/run/containerd/containerd.sock";
  std::vector<std::string> namespaces = {"k8s.io"};
  // Every unary call's deadline: lists of a few hundred containers answer in
  // tens of ms; 5 s means containerd is stuck, not slow.
  std::chrono::milliseconds call_timeout{5000};
  std::chrono::milliseconds backoff_min{100}, backoff_max{30000};
  // Down this long (a containerd restart takes about a second) = degraded.
  std::chrono::seconds down_grace{5};
};

// The module to load: `configured` (config key containerd_module) when set,
// else $DOCKQUOTA_CONTAINERD_MODULE, else the install path
// (DOCKQUOTA_CONTAINERD_MODULE_PATH, ${libdir}/dockquota/dockquota-containerd.so).
std::string containerdModulePath(const std::string& configured);

// A loaded module: its dlopen handle and its function table. Never unloaded
// (RTLD_NODELETE): gRPC's shutdown runs on a thread of its own that would be
// left executing unmapped code.
class ContainerdModule {
 public:
  static Result<std::unique_ptr<ContainerdModule>> load(const std::string& path);
  const dq_ctrd_api& api() const { return *api_; }
  const std::string& path() const { return path_; }

 private:
  ContainerdModule(std::string path, const dq_ctrd_api* api) : path_(std::move(path)), api_(api) {}
  std::string path_;
  const dq_ctrd_api* api_;
};

class ContainerdService {
 public:
  // Loads the module and opens a client; never fails: an error is kept as
  // the service's degraded reason (and logged).
  static std::unique_ptr<ContainerdService> open(ContainerdOptions options);
  ~ContainerdService();
  ContainerdService(const ContainerdService&) = delete;
  ContainerdService& operator=(const ContainerdService&) = delete;

  Status start();  // the module's stream thread
  void stop();     // idempotent
  bool loaded() const { return client_ != nullptr; }
  ContainerdWatch& watch() { return watch_; }
  const ContainerdOptions& options() const { return options_; }
  std::optional<dq_ctrd_stats> stats() const;
  // runtimes.containerd of /healthz
  Health health() const;

  Status stopTask(const std::string& ns, const std::string& id, std::chrono::seconds timeout);
  Status remove(const std::string& ns, const std::string& id);
  Result<uint64_t> writableBytes(const std::string& ns, const std::string& id);

 private:
  explicit ContainerdService(ContainerdOptions options) : options_(std::move(options)) {}
  static void onEvent(void* ctx, const dq_ctrd_event* ev);
  static void onLog(void* ctx, uint32_t level, const char* message);

  ContainerdOptions options_;
  std::unique_ptr<ContainerdModule> module_;
  void* client_ = nullptr;
  std::string load_error_;
  ContainerdWatch watch_;
  // decode_errors when the last reconcile ended: more since = events lost
  // and not yet recovered by a reconcile.
  std::atomic<uint64_t> decode_errors_reconciled_{0};
  bool started_ = false;
};

// ContainerRuntime over the module. An id is "namespace/id" or a bare id the
// watch knows in exactly one namespace.
class ContainerdRuntime : public ContainerRuntime {
 public:
  explicit ContainerdRuntime(ContainerdService& service) : service_(service) {}
  const char* name() const override { return "containerd"; }
  Status connect() override;
  Result<uint64_t> writableBytes(const std::string& id) override;
  Status stop(const std::string& id, std::chrono::seconds timeout) override;
  Status remove(const std::string& id, bool volumes) override;

 private:
  Result<std::pair<std::string, std::string>> locate(const std::string& ref) const;
  ContainerdService& service_;
};

}  // namespace dockquota
