// SPDX-License-Identifier: Apache-2.0
// Owns the growth BPF skeleton: bytes each watched container writes into its
// overlayfs layer, summed in the kernel and read on demand (no events).
//
//   auto probe = GrowthProbe::open({});
//   (*probe)->watch(id, *containerCgroup(id, state_pid));   // at start / create
//   auto now = (*probe)->read();                            // on a timer
//   for (auto& [id, g] : growthSince(last, *now)) if (g.bytes > threshold) rescan(id);
//   (*probe)->unwatch(id);                                  // at die / destroy
//
// A restarted container gets a new cgroup: watch it again (watch() replaces).
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <linux/types.h>  // before growth.h, which has no includes

#include "agent/base/result.h"
#include "growth.h"

struct growth_bpf;

namespace dockquota {

struct GrowthFigure {
  uint64_t bytes = 0;   // written into overlay files since watch()
  uint64_t writes = 0;  // calls that wrote at least one byte
};

// A cgroup v2 directory: id (its inode number, what BPF sees) and level (the
// root is 0).
struct CgroupRef {
  uint64_t id = 0;
  uint32_t level = 0;
  std::string path;  // absolute, under the cgroup2 mount
};

// Where cgroup2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
// hybrid hosts), from /proc/self/mountinfo.
Result<std::string> cgroup2Mount();
// The cgroup of a directory under the cgroup2 mount.
Result<CgroupRef> cgroupOfDir(const std::string& dir);
// A container's cgroup, from the cgroup v2 line of /proc/<pid>/cgroup of one
// of its processes (Docker's State.Pid). The deepest component naming the
// container (docker-<id>.scope, /docker/<id>) is taken, so a pid in a
// sub-cgroup of the container still gives the container's. Fails when the
// pid sits in the root cgroup (a cgroup v1 Docker on a hybrid host) or no
// component names the container.
Result<CgroupRef> containerCgroup(const std::string& container_id, pid_t pid);

class GrowthProbe {
 public:
  struct Options {
    // "auto" (fentry; nothing when the kernel refuses it), "fentry" or
    // "tracepoint" (tp_btf/sys_exit: every syscall of every process on the
    // host pays the tracepoint slow path, so only on request).
    std::string hook = "auto";
    uint32_t max_containers = GROWTH_MAX_CGROUPS;  // watched at once
    // bpf_get_current_ancestor_cgroup_id() and bpf_get_current_task_btf() are
    // used where tracing programs may call them; 5.10 may not, and reads the
    // cgroup and the fd table with bpf_probe_read_kernel. true forces that
    // path everywhere (tests).
    bool force_probe_reads = false;
    // fentry set: hook overlayfs's functions when their BTF is there. false
    // forces the write syscalls, as on 5.10 (tests).
    bool overlay_functions = true;
  };

  // The hook sets (bpf/growth.bpf.c), cheapest first; "auto" tries only the first.
  static const std::vector<std::string> kHookSets;

  static Result<std::unique_ptr<GrowthProbe>> open(const Options& options);
  ~GrowthProbe();

  // Starts counting the container's writes from zero. Watching an id again
  // with another cgroup (restart) replaces it; with the same one, no-op.
  Status watch(const std::string& container_id, const CgroupRef& cgroup);
  void unwatch(const std::string& container_id);
  size_t watched() const { return watched_.size(); }

  // Totals since each container's watch(), summed over CPUs.
  Result<std::map<std::string, GrowthFigure>> read() const;

  std::array<uint64_t, GROWTH_CTR_MAX> counters() const;
  static const char* counterName(size_t i);

  // "fentry" or "tracepoint"; program names.
  const std::string& hook() const { return hook_; }
  const std::vector<std::string>& attached() const { return attached_; }
  // Whether the helpers above are used (see Options::force_probe_reads).
  bool ancestorHelper() const { return ancestor_helper_; }
  bool taskBtf() const { return task_btf_; }

  // Run counts and time in each attached program, while BPF run-time stats
  // are on (sysctl kernel.bpf_stats_enabled, or a bpf_enable_stats() fd).
  struct ProgramStats {
    std::string name;
    uint64_t runs = 0;
    uint64_t run_ns = 0;
  };
  std::vector<ProgramStats> programStats() const;

 private:
  explicit GrowthProbe(const Options& o) : options_(o) {}
  Status loadAndAttach(const std::string& set);
  void publishLevels();

  Options options_;
  growth_bpf* skel_ = nullptr;
  std::map<std::string, CgroupRef> watched_;  // container id -> cgroup
  std::array<uint32_t, GROWTH_MAX_LEVEL + 1> level_refs_{};
  std::vector<std::string> attached_;
  std::string hook_;
  bool ancestor_helper_ = false;
  bool task_btf_ = false;
};

// What grew between two read()s: per container, after minus before (a
// container missing from `before` counts whole; one whose figures went down
// was re-watched and counts from its new zero).
std::map<std::string, GrowthFigure> growthSince(const std::map<std::string, GrowthFigure>& before,
                                                const std::map<std::string, GrowthFigure>& after);

// Sums figures per owner (a uid); containers without one are left out.
std::map<uint32_t, GrowthFigure> growthByOwner(
    const std::map<std::string, GrowthFigure>& figures,
    const std::function<std::optional<uint32_t>(const std::string& container_id)>& owner);

}  // namespace dockquota
