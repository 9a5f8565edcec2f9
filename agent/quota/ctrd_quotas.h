// SPDX-License-Identifier: Apache-2.0
// containerd rootfs quotas: the quota stage behind ContainerdWatch's hooks.
//
//   on_rootfs           the container's project (its own, or its tenant's:
//                       ctrd_plan.h) allocated from the project-id range,
//                       checked against the kernel, kept in the Store; its
//                       hard limit set, then its snapshot (<n>/, work/,
//                       fs/) tagged: at the container's create, before the
//                       rootfs is mounted (else at its task create)
//   on_container_delete its own project freed (limit cleared, row deleted);
//                       a tenant's when its last container goes
//   on_reconcile_end    rows of containers containerd no longer lists are
//                       freed (the agent was down when they were deleted);
//                       running ones were re-announced to on_rootfs
//   sync()              every project's usage in one quota read per
//                       filesystem; a limit reached is an event
//                       (containerd_limit_reached), once per crossing;
//                       with tenant_remove_newest, a tenant at its limit
//                       loses its newest container (containerd_tenant_removed)
//
// Everything the kernel does goes through CtrdKernel (prjquota.h for real),
// so the unit tests drive this class with a fake one.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/health.h"
#include "agent/base/worker.h"
#include "agent/quota/ctrd_plan.h"
#include "agent/quota/prjquota.h"
#include "agent/runtime/containerd_watch.h"
#include "agent/store/store.h"

namespace dockquota {

// The kernel side, one call per prjquota.h function used.
class CtrdKernel {
 public:
  virtual ~CtrdKernel() = default;
  virtual Result<QuotaFs> probe(const std::string& path) = 0;
  virtual Result<TagStats> tag(const std::string& snapshot_root, const std::string& upper, uint32_t id) = 0;
  virtual Status setLimit(const QuotaFs& fs, uint32_t id, uint64_t hard_bytes) = 0;
  virtual Result<ProjectUsage> readOne(const QuotaFs& fs, uint32_t id) = 0;
  virtual Result<std::map<uint32_t, ProjectUsage>> readAll(const QuotaFs& fs) = 0;
};
std::unique_ptr<CtrdKernel> realCtrdKernel();

// The snapshot directory that holds `upper` ("" when `upper` is not the
// overlayfs snapshotter's <n>/fs: then the upper dir alone is tagged).
std::string snapshotRootOf(const std::string& upper);

struct CtrdQuotaStats {
  uint64_t tagged = 0;      // snapshots tagged (re-announced ones included)
  uint64_t tag_errors = 0;  // tagging, limits, allocation
  uint64_t unresolved = 0;  // rootfs hooks without an upper dir (nothing to tag)
  uint64_t degraded = 0;    // rootfs hooks on a filesystem without project quotas
  uint64_t ids_allocated = 0;
  uint64_t ids_released = 0;
  uint64_t reconcile_released = 0;  // of those: rows of containers gone while the agent was not looking
  uint64_t limit_events = 0;        // containerd_limit_reached recorded
  uint64_t syncs = 0;
  uint64_t tenant_removals = 0;        // newest containers of full tenants removed (tenant_remove_newest)
  uint64_t tenant_removal_errors = 0;  // ... whose removal failed
};

class CtrdQuotas {
 public:
  struct Options {
    CtrdQuotaConfig cfg;
    uint32_t id_min = 100000, id_max = 199999;
    std::vector<std::string> namespaces;  // all reconciled once: tenant rows without members are freed
    std::chrono::milliseconds interval = std::chrono::seconds(5);
    // Off by default: on a Kubernetes node the kubelet owns pods and starts
    // again what it did not delete (README "containerd quotas").
    bool tenant_remove_newest = false;
    // Removes a container: its task (SIGKILL), it and its snapshot
    // (ContainerdRuntime::remove). Needed by tenant_remove_newest.
    std::function<Status(const std::string& ns, const std::string& id)> remove;
  };
  CtrdQuotas(Store& store, std::unique_ptr<CtrdKernel> kernel, Options opt);
  ~CtrdQuotas();

  // The hooks (ContainerdWatch: the module's thread, in event order).
  // `created_ns`: containerd's CreatedAt of the container (0: unknown), which
  // orders a tenant's containers for tenant_remove_newest.
  void onRootfs(const std::string& ns, const std::string& id, const std::map<std::string, std::string>& labels,
                const std::string& upper, int64_t created_ns = 0);
  void onContainerDelete(const std::string& ns, const std::string& id);
  // `live`: what the watch holds after the reconcile (all namespaces).
  void onReconcileEnd(const std::string& ns, const std::vector<CtrdContainer>& live);
  CtrdHooks hooks(const ContainerdWatch& watch);

  // One usage read per filesystem, then the events.
  Status sync();
  void start();  // sync() every interval on its own thread
  void stop();

  // A container's figures for the API: project_id, kind, tenant, limit_bytes,
  // used_bytes (its project's: the tenant's for a tenant member, said by
  // "shared"); null when it has no project.
  nlohmann::json containerFigures(const std::string& ns, const std::string& id) const;
  nlohmann::json tenants() const;  // [{tenant, project_id, limit_bytes, used_bytes, containers}]
  Health health() const;           // the counters, filesystems, tag latency
  CtrdQuotaStats stats() const;

 private:
  struct Member {
    std::string kind, owner, tenant, upper;
    uint32_t project = 0;
    uint64_t limit = 0;
    uint64_t dev = 0;        // the filesystem (fs_)
    int64_t created_ns = 0;  // containerd's CreatedAt; 0 unknown
    uint64_t seen = 0;       // order the agent first tagged it (ties, unknown CreatedAt)
  };
  using Victim = std::pair<std::string, std::string>;  // namespace, id
  Status readUsage();                                  // mu_ held
  std::vector<Victim> tenantVictims();                 // mu_ held
  void removeVictims(const std::vector<Victim>& victims);
  Result<QuotaFs> fsFor(const std::string& upper);
  Result<uint32_t> allocate(const QuotaFs& fs, const CtrdPlan& plan);
  Status applyLimit(const QuotaFs& fs, uint32_t id, uint64_t bytes);
  void release(const std::string& kind, const std::string& owner, uint32_t id, const QuotaFs* fs);
  bool tenantHeld(const std::string& tenant) const;  // mu_ held
  void announce(const std::string& kind, const std::string& owner, const std::string& what, uint32_t id, uint64_t used,
                uint64_t limit);
  void loadConditions();
  void run();

  Store& store_;
  std::unique_ptr<CtrdKernel> kernel_;
  Options opt_;

  mutable std::mutex mu_;                  // guards what follows
  std::map<std::string, Member> members_;  // "<ns>/<id>" -> its project
  std::map<uint64_t, QuotaFs> fs_;         // st_dev -> that filesystem
  std::set<uint64_t> warned_;              // filesystems whose lack of quotas was logged
  std::map<uint32_t, uint64_t> applied_;   // project id -> hard limit in the kernel
  std::map<uint32_t, uint64_t> used_;      // project id -> bytes at the last sync
  std::set<std::string> reconciled_;       // namespaces reconciled at least once
  std::set<std::string> announced_;        // conditions held ("ctrd_limit:<kind>:<owner>")
  CtrdQuotaStats stats_;
  std::deque<double> tag_ms_;  // hook entry -> tagged and limited, for p50/p99
  double last_sync_ = 0;
  uint64_t seen_ = 0;
  std::map<std::string, double> removed_at_;  // tenant -> when its last container was removed
  std::string removal_error_;                 // the last removal's failure; "" after a success

  std::mutex run_mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  Worker worker_;
};

}  // namespace dockquota
