// SPDX-License-Identifier: Apache-2.0
// Keeps Docker's storage under kernel project quotas, so limits hold in the
// kernel and usage is a quota read instead of a tree walk.
//
//   per-user mode (default)   one project per uid: its containers' layer roots,
//                             the image layers it owns and its volumes; the
//                             hard limit is the uid's Docker quota, so the
//                             kernel stops the user's combined writes.
//   per-container mode        one project per container (the containerd
//                             rootfs quota manager's model): a default limit
//                             and per-container limits; images and volumes
//                             are left to the walk-based figures.
//
// Ids come from a configured range, are kept in the Store (they survive
// restarts) and are freed when their last object is gone; an id is only
// handed out when the kernel shows nothing charged to it (so ids that Docker's
// own `--storage-opt size` or an admin uses are not taken over).
//
// A container's layer root (<data-root>/overlay2/<id>: holds `diff` and
// `work`, so overlayfs renames inside it never fail with EXDEV) is tagged with
// PROJINHERIT as soon as the attributor names its owner (at Docker's create
// reply, before the container runs); a periodic sync re-checks every object,
// re-tags trees that were written before they were tagged, applies limits,
// releases ids and reads usage for all ids in one pass.
//
// When the filesystem under the data root has no project quotas, the backend
// is "degraded": it does nothing, says why (log, /healthz, metrics), and the
// walk-based figures stay in use.
#pragma once

#include <atomic>
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

#include "agent/base/health.h"
#include "agent/quota/layer_gate.h"
#include "agent/base/worker.h"
#include "agent/quota/prjquota.h"
#include "agent/quota/quotas.h"
#include "agent/runtime/docker_client.h"
#include "agent/store/store.h"
#include "agent/quota/kernel_usage.h"

namespace dockquota {

enum class ProjectMode { User, Container };
const char* toString(ProjectMode m);  // "user", "container"

// Where an object's data lives on disk (what gets the project id).
class LayerLocator {
 public:
  virtual ~LayerLocator() = default;
  // A container's layer roots: <root>/overlay2/<x> and <x>-init, from the
  // layer store's mounts/<id>/mount-id, else inspect's GraphDriver, else the
  // upperdir of its mounted rootfs (containerd image store). Empty when none
  // of these says (not mounted yet).
  virtual Result<std::vector<std::string>> container(const std::string& id) = 0;
  // An image layer's directory by chain id (overlay2 layer store).
  virtual Result<std::string> layer(const std::string& chain_id) = 0;
  // A local volume's directory (<root>/volumes/<name>).
  virtual Result<std::string> volume(const std::string& name) = 0;
  // Where the storage driver makes a directory per new layer ("" = none to watch).
  virtual std::string layersDir() const { return ""; }
  // The container whose writable layer `root` is, if the layer store says.
  virtual std::optional<std::string> containerOfLayer(const std::string& root) { return std::nullopt; }
};

// The overlay2 layout under Docker's data root.
class DockerLayerLocator : public LayerLocator {
 public:
  DockerLayerLocator(DockerClient& docker, std::string data_root);
  Result<std::vector<std::string>> container(const std::string& id) override;
  Result<std::string> layer(const std::string& chain_id) override;
  Result<std::string> volume(const std::string& name) override;
  std::string layersDir() const override { return root_ + "/overlay2"; }
  // Reads mounts/*/mount-id (one small file per container): for a mount
  // the gate holds, not for every layer.
  std::optional<std::string> containerOfLayer(const std::string& root) override;

 private:
  DockerClient& docker_;
  std::string root_;
};

// The overlay mount whose mount point names `container_id`, as its upper
// dir's parent (a layer root); "" when none. `mountinfo` is /proc/self/mountinfo's text.
std::string layerRootFromMounts(const std::string& mountinfo, const std::string& container_id);

struct ProjectQuotaStats {
  std::atomic<uint64_t> syncs{0};
  std::atomic<uint64_t> tagged_trees{0};  // trees (re)tagged
  std::atomic<uint64_t> tagged_inodes{0};
  std::atomic<uint64_t> errors{0};  // tagging, limits, reads
  std::atomic<uint64_t> limit_sets{0};
  std::atomic<uint64_t> ids_allocated{0};
  std::atomic<uint64_t> ids_released{0};
  std::atomic<double> last_sync{0};          // unix seconds
  std::atomic<double> last_sync_seconds{0};  // how long it took
  std::atomic<double> last_read_seconds{0};  // the usage read alone
  std::atomic<double> last_tag_latency{0};   // owner known -> layer root tagged, seconds
  // Layers mounted before they could be tagged (tagLayer() Deferred): now, and ever.
  std::atomic<uint64_t> deferred_layers{0};
  std::atomic<uint64_t> deferred_layers_total{0};
  std::atomic<uint64_t> raced_mounts{0};  // mounted while their diff/ was being tagged
  // New container layers tagged as Docker made them (before the create reply),
  // and those whose maker was unclear (no single user with a create pending:
  // tagged at the reply instead, which can lose the race with the start).
  std::atomic<uint64_t> early_tagged{0};
  std::atomic<uint64_t> early_unclear{0};
  std::atomic<uint64_t> early_mounting{0};
  std::atomic<uint64_t> gated_tags{0};  // tagged while the gate held the layer's mount  // found in Docker's mount
                                        // inside the create: tagged at the reply
};

// When a tag is made. finished_before: see tagLayer() (a container's create
// reply, 0 = unknown). provisional: tried before the owner is settled (the
// layer watch, as Docker makes the layer); a layer found mounting then is in
// Docker's own mount inside the create, left to the reply's tag, not noted
// as deferred.
struct TagWhen {
  double finished_before = 0;
  bool provisional = false;
};

class ProjectQuotas {
 public:
  struct Options {
    ProjectMode mode = ProjectMode::User;
    uint32_t id_min = 100000;  // the range we allocate from
    uint32_t id_max = 199999;
    uint64_t container_default_bytes = 0;  // per-container mode: 0 = no limit
    bool bill_root_to_login_uid = true;
    std::chrono::milliseconds interval = std::chrono::seconds(10);  // full sync + usage read
  };

  // Probes the filesystem under `data_root`. Never fails for "no project
  // quotas": the result is then degraded (active() false, reason() says why).
  ProjectQuotas(Store& store, QuotaBook& book, std::unique_ptr<LayerLocator> locator, QuotaFs fs, Options options);
  ~ProjectQuotas();  // stops

  bool active() const { return fs_.usable(); }
  const QuotaFs& filesystem() const { return fs_; }
  const std::string& reason() const { return fs_.reason; }
  const Options& options() const { return opt_; }

  void start();
  void stop();

  // The attributor learned (or changed) an object's owner: tag it now.
  void onOwnerChanged(ObjectKind kind, const std::string& id);
  // Who is creating a container right now: the billed uid when every create
  // Docker has not answered yet comes from that one user, else nullopt.
  // The storage driver's layer directory is watched: a container layer is
  // tagged as Docker makes it, before the create reply, so the tag is in
  // place before any start can mount it: per-user mode for that uid,
  // per-container mode with the layer's own project (the container's once
  // the reply names it).
  using CreatorLookup = std::function<std::optional<uint32_t>()>;
  void setCreatorLookup(CreatorLookup f);
  // A user just sent a container create: their project is allocated now (on
  // the watch thread), so the layer Docker makes next is tagged without
  // waiting for an allocation. Never blocks.
  void prepareUser(uint32_t uid);
  // Something changed that a sync should see soon (a removal).
  void wake();
  // A limit changed: the kernel gets every project's limit before the sync
  // pass this starts (which can take seconds on a busy host).
  void limitsChanged();
  // Called after every usage read (the accountant re-publishes).
  void setUsageListener(std::function<void()> f);
  // Re-reads only the projects that hold these containers (the growth probe
  // saw them write): one quota call per project, microseconds, so it can run
  // every growth tick. Updates usage() in place and calls the fast listener
  // (the enforcer), not the usage listener (a rejoin costs far more than this).
  Status readProjectsOf(const std::vector<std::string>& containers);
  void setFastUsageListener(std::function<void()> f);

  // One full pass on the caller's thread: tag, limits, releases, usage read.
  Status sync();
  // Latest usage (nullptr until the first read, or when degraded).
  std::shared_ptr<const KernelUsage> usage() const;
  // The id of a uid's / a container's project, if it has one.
  std::optional<uint32_t> projectOfUser(uint32_t uid) const;
  std::optional<uint32_t> projectOfContainer(const std::string& id) const;

  const ProjectQuotaStats& stats() const { return stats_; }
  // /healthz "project_quotas": the backend's state in words an admin can act on.
  Health health() const;
  // The layer gate's state and figures ("state": on, off, unavailable + "reason").
  nlohmann::json gateHealth() const;

 private:
  // owner_changed: an owner change, not a sync pass (only it takes a project away).
  Status tagObject(ObjectKind kind, const ObjectRecord& rec, bool owner_changed);
  uint64_t limitFor(const ProjectRecord& p) const;  // bytes, 0 = none
  Result<uint32_t> projectFor(const std::string& kind, const std::string& owner);
  // The number of layers left untagged because they were (being) mounted.
  Result<size_t> tagDirs(const std::vector<std::string>& dirs, uint32_t id, TagWhen when = {});
  void noteLayer(const std::string& root, const LayerTagResult& r);
  Status applyLimits(const std::vector<ProjectRecord>& projects);
  void applyLimitsNow();  // limitsChanged(): every project of this mode, before the pass
  Status readUsage(const std::vector<ProjectRecord>& projects);
  bool ours(uint32_t id) const { return id >= opt_.id_min && id <= opt_.id_max; }
  // A user's project in per-user mode, a container's in per-container mode
  // (rows of the other mode stay until their objects are gone).
  bool ofThisMode(const ProjectRecord& p) const;
  void run();
  void haltSync();   // sets stop_ and wakes run()
  void haltWatch();  // writes stop_fd_: watchLayers() and spotLayers() return
  void startWatch();
  void watchLayers();       // the watch thread: tags (work_fd_)
  void spotLayers(int in);  // the spot thread: new layer directories, guarded at once
  std::vector<std::string> readNewLayers(int inotify_fd, const std::string& dir);
  void tagNewLayer(const std::string& root);
  void tagEarly(const std::string& root, std::optional<uint32_t> uid);  // uid: per-user mode
  void tagQueued(ObjectKind kind, const std::string& id);
  void openGate();
  std::optional<uint32_t> soleCreator();  // creator_, called outside mu_
  void tagHeld(const std::string&
                   root);  // the gate holds a mount of it              // an owner change, as the store has it now
  void handleWork();       // the watch thread: prepare_ and owned_
  bool waitingForUnmounts() const;
  void resolveCreateMounts();
  void settleCreateMount(const std::string& root, double create_reply);
  static std::string layerKey(const std::string& root);  // "layer:<dir name>"
  Result<uint32_t> allocateNow(const std::string& kind, const std::string& owner);
  void adoptLayerProject(const std::string& root, const std::string& container_id);

  Store& store_;
  QuotaBook& book_;
  std::unique_ptr<LayerLocator> locator_;
  QuotaFs fs_;
  Options opt_;
  ProjectQuotaStats stats_;

  std::mutex sync_mu_;  // one pass at a time
  // One object tagged at a time: the sync pass and the watch thread both tag.
  std::mutex tag_mu_;                                               // guards container_dirs_ too
  std::map<std::string, std::vector<std::string>> container_dirs_;  // cache: container id -> layer roots
  std::map<uint32_t, uint64_t> applied_;                            // project id -> hard limit set

  mutable std::mutex mu_;  // guards what follows
  std::shared_ptr<const KernelUsage> usage_;
  std::map<std::string, uint32_t> ids_;  // "user:<uid>" / "container:<id>" -> project id
  std::function<void()> on_usage_;
  std::function<void()> on_fast_usage_;
  std::deque<std::pair<ObjectKind, std::string>> queue_;
  std::map<std::string, double> queued_at_;
  std::set<std::string> deferred_;  // layer roots tagLayer() deferred (mounted untagged)
  CreatorLookup creator_;
  int stop_fd_ = -1;  // eventfd: stops the watch thread
  int work_fd_ = -1;  // eventfd: work for the watch thread (prepare_, owned_)
  std::vector<uint32_t> prepare_;
  std::vector<std::string> owned_;  // containers whose owner just became known
  bool watching_ = false;           // the watch thread runs: owned_ is its to tag
  // New layers the early tag found in Docker's create-time mount: tagged when
  // it unmounts (resolveCreateMounts()), then checked against the create
  // reply (settleCreateMount()).
  struct CreateMount {
    uint32_t project = 0;
    double work_born = 0;  // that mount's work/work, unix seconds
    std::chrono::steady_clock::time_point until;
  };
  static constexpr size_t kMaxCreateMounts = 256;  // creates in flight at once, with margin
  static constexpr auto kCreateMountWait = std::chrono::seconds(10);
  std::map<std::string, CreateMount> create_mounts_;
  std::map<std::string, double> waited_out_;  // layer root -> work_born of the mount waited out
  std::unique_ptr<LayerGate> gate_;           // nullptr: unavailable (gate_unavailable_ says why)
  std::string gate_unavailable_;
  std::vector<std::string> gated_;    // roots whose mount the gate holds, for the watch thread
  std::vector<std::string> spotted_;  // new container layer roots, for the watch thread
  static constexpr size_t kMaxSpotted = 4096;
  bool wake_ = false, stop_ = false, limits_changed_ = false;
  std::condition_variable cv_;
  Worker sync_worker_;   // run(): sync passes
  Worker watch_worker_;  // watchLayers()
  Worker spot_worker_;   // spotLayers()
};

}  // namespace dockquota
