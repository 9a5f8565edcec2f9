// SPDX-License-Identifier: Apache-2.0
#include "agent/probes/growth_probe.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "agent/base/log.h"
#include "agent/base/mountinfo.h"
#include "agent/probes/probe_util.h"
#include "growth.skel.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "growth-probe";

// GROWTH_CTR_LIST: same order as the GROWTH_CTR_* numbers in bpf/growth.h.
constexpr const char* kCounterNames[GROWTH_CTR_MAX] = {"counted", "not_overlay", "no_file"};

static_assert(sizeof(growth_val) == 16, "growth_val is two u64s; per-CPU values are 8-byte aligned");

// overlayfs functions the fentry set hooks. ovl_write_iter is required; the
// others are hooked when the kernel has them (without them, splice and
// copy_file_range end in ovl_write_iter or the generic splice path).
constexpr const char* kOvlFuncs[] = {"ovl_write_iter", "ovl_splice_write", "ovl_copy_file_range"};

// Which of kOvlFuncs have BTF: vmlinux (overlayfs built in) or the overlay
// module's (needs 5.11+ module BTF, and the module loaded, as Docker does).
std::vector<std::string> overlayFuncsWithBtf() {
  std::vector<std::string> found;
  btf* vmlinux = btf__load_vmlinux_btf();
  if (!vmlinux) return found;
  btf* module = access("/sys/kernel/btf/overlay", R_OK) == 0 ? btf__load_module_btf("overlay", vmlinux) : nullptr;
  for (const char* f : kOvlFuncs) {
    if (btf__find_by_name_kind(vmlinux, f, BTF_KIND_FUNC) > 0 ||
        (module && btf__find_by_name_kind(module, f, BTF_KIND_FUNC) > 0)) {
      found.push_back(f);
    }
  }
  btf__free(module);
  btf__free(vmlinux);
  if (!found.empty() && found.front() != kOvlFuncs[0]) found.clear();
  return found;
}

uint32_t levelOf(const std::string& rel) {
  uint32_t n = 0;
  std::stringstream ss(rel);
  for (std::string part; std::getline(ss, part, '/');) {
    if (!part.empty()) n++;
  }
  return n;
}

}  // namespace

// ---- cgroups ----------------------------------------------------------------

Result<std::string> cgroup2Mount() {
  auto mounts = readMountinfo();
  if (!mounts) return mounts.error();
  for (const auto& m : *mounts)
    if (m.fstype == "cgroup2" && m.root == "/") return m.mount_point;
  return Error{ENOENT, "cgroup2 is not mounted (no cgroup2 line in /proc/self/mountinfo)"};
}

Result<CgroupRef> cgroupOfDir(const std::string& dir) {
  auto mnt = cgroup2Mount();
  if (!mnt) return mnt.error();
  if (!underMount(dir, *mnt)) { return Error{EINVAL, dir + " is not under the cgroup2 mount " + *mnt}; }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return osError(errno, "stat " + dir);
  CgroupRef ref{static_cast<uint64_t>(st.st_ino), levelOf(dir.substr(mnt->size())), dir};
  if (ref.level > GROWTH_MAX_LEVEL) {
    return Error{E2BIG, dir + " is at cgroup level " + std::to_string(ref.level) + ", deeper than " +
                            std::to_string(GROWTH_MAX_LEVEL)};
  }
  return ref;
}

Result<CgroupRef> containerCgroup(const std::string& container_id, pid_t pid) {
  const std::string file = "/proc/" + std::to_string(pid) + "/cgroup";
  std::ifstream f(file);
  if (!f) return osError(errno ? errno : ENOENT, "read " + file);
  std::string rel;
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("0::", 0) == 0) rel = line.substr(3);
  }
  if (rel.empty() || rel == "/") {
    return Error{ENOENT, "container " + container_id + ": pid " + std::to_string(pid) +
                             " has no cgroup v2 of its own (Docker with cgroup v1 on a hybrid host?)"};
  }
  // Keep the path up to the deepest component naming the container.
  std::string keep, walked;
  std::stringstream ss(rel);
  for (std::string part; std::getline(ss, part, '/');) {
    if (part.empty()) continue;
    walked += "/" + part;
    if (!container_id.empty() && part.find(container_id) != std::string::npos) keep = walked;
  }
  if (keep.empty()) {
    return Error{ENOENT, "container " + container_id + ": no component of pid " + std::to_string(pid) + "'s cgroup " +
                             rel + " names it"};
  }
  auto mnt = cgroup2Mount();
  if (!mnt) return mnt.error();
  return cgroupOfDir(*mnt + keep);
}

// ---- the probe ----------------------------------------------------------------

GrowthProbe::~GrowthProbe() {
  if (skel_) growth_bpf__destroy(skel_);
}

const std::vector<std::string> GrowthProbe::kHookSets = {"fentry", "tracepoint"};

Result<std::unique_ptr<GrowthProbe>> GrowthProbe::open(const Options& options) {
  if (options.max_containers == 0) return Error{EINVAL, std::string(kSub) + ": max_containers must be > 0"};
  std::unique_ptr<GrowthProbe> p(new GrowthProbe(options));
  // Tracing and raw tracepoint programs share one helper list (bpf_tracing_func_proto).
  p->ancestor_helper_ =
      !options.force_probe_reads &&
      libbpf_probe_bpf_helper(BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_FUNC_get_current_ancestor_cgroup_id, nullptr) == 1;
  p->task_btf_ = !options.force_probe_reads &&
                 libbpf_probe_bpf_helper(BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_FUNC_get_current_task_btf, nullptr) == 1;
  // fexit programs run only on the calls they hook (only overlay writes,
  // where overlayfs has BTF). The tracepoint set would put every syscall of
  // every process on the slow path for the sake of an early signal (quota
  // reads still see every byte), so "auto" never falls back to it.
  std::string refused;
  auto hook = loadHookSet(
      kSub, options.hook, kHookSets, 1, [&](const std::string& set) { return p->loadAndAttach(set); }, refused);
  if (!hook) return hook.error();
  p->hook_ = *hook;
  LOG_INFO(kSub, "attached %zu programs (%s hooks: %s...); up to %u containers; cgroup by %s, fd table by %s",
           p->attached_.size(), p->hook_.c_str(), p->attached_.front().c_str(), options.max_containers,
           p->ancestor_helper_ ? "helper" : "probe reads", p->task_btf_ ? "BTF loads" : "probe reads");
  return p;
}

// Open, size the map, choose the programs, load, attach. On failure the
// skeleton is destroyed again.
Status GrowthProbe::loadAndAttach(const std::string& set) {
  const bool fentry = set == "fentry";
  auto fail = [&](int err, const std::string& what) -> Status {
    growth_bpf__destroy(skel_);
    skel_ = nullptr;
    attached_.clear();
    return osError(err, std::string(kSub) + ": " + set + " hooks: " + what);
  };
  skel_ = growth_bpf__open();
  if (!skel_) return osError(errno, std::string(kSub) + ": open BPF object");
  skel_->rodata->targ_ancestor_helper = ancestor_helper_;
  skel_->rodata->targ_task_btf = task_btf_;
  if (int err = bpf_map__set_max_entries(skel_->maps.growth, options_.max_containers)) {
    return fail(err, "map size " + std::to_string(options_.max_containers));
  }
  // Within the fentry set: overlayfs's functions when their BTF is there,
  // else the write syscalls (5.10 has no module BTF).
  const std::vector<std::string> ovl =
      fentry && options_.overlay_functions ? overlayFuncsWithBtf() : std::vector<std::string>{};
  if (fentry && ovl.empty() && options_.overlay_functions) {
    LOG_INFO(kSub, "no BTF for overlayfs's ovl_write_iter (module BTF needs 5.11+); hooking the write syscalls");
  }
  bpf_program* prog;
  bpf_object__for_each_program(prog, skel_->obj) {
    const std::string name = bpf_program__name(prog);
    bool load = false;
    if (name == "tp_btf__sys_exit") {
      load = !fentry;
    } else if (name.rfind("fexit__ovl_", 0) == 0) {
      for (const auto& f : ovl) load = load || name == "fexit__" + f;
    } else if (name.rfind("fexit__", 0) == 0) {
      load = fentry && ovl.empty();
    }
    bpf_program__set_autoload(prog, load);
  }
  if (int err = growth_bpf__load(skel_)) return fail(err, "load");
  if (auto st = attachAutoloaded(skel_->skeleton, attached_); !st) return fail(st.error().code, st.error().message);
  return {};
}

void GrowthProbe::publishLevels() {
  uint64_t mask = 0;
  for (uint32_t l = 1; l <= GROWTH_MAX_LEVEL; l++) {
    if (level_refs_[l]) mask |= 1ULL << l;
  }
  __atomic_store_n(&skel_->bss->watched_levels, mask, __ATOMIC_RELEASE);
}

Status GrowthProbe::watch(const std::string& container_id, const CgroupRef& cgroup) {
  if (cgroup.id == 0 || cgroup.level == 0 || cgroup.level > GROWTH_MAX_LEVEL) {
    return Error{EINVAL, std::string(kSub) + ": watch " + container_id + ": not a container cgroup: " + cgroup.path};
  }
  if (auto it = watched_.find(container_id); it != watched_.end()) {
    if (it->second.id == cgroup.id) return {};
    unwatch(container_id);
  }
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return osError(ncpu, std::string(kSub) + ": possible CPUs");
  std::vector<growth_val> zero(ncpu);
  // NOEXIST: two containers never share a cgroup; if the map says otherwise
  // the other one's counts must not be reset.
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.growth), &cgroup.id, zero.data(), BPF_NOEXIST) != 0) {
    int err = errno;
    std::string why = err == E2BIG ? " (" + std::to_string(options_.max_containers) + " containers watched)" : "";
    return osError(err, std::string(kSub) + ": watch " + container_id + " (cgroup " + cgroup.path + ")" + why);
  }
  watched_[container_id] = cgroup;
  level_refs_[cgroup.level]++;
  publishLevels();  // after the insert: a set bit always has entries to find
  return {};
}

void GrowthProbe::unwatch(const std::string& container_id) {
  auto it = watched_.find(container_id);
  if (it == watched_.end()) return;
  const CgroupRef c = it->second;
  watched_.erase(it);
  level_refs_[c.level]--;
  publishLevels();
  bpf_map_delete_elem(bpf_map__fd(skel_->maps.growth), &c.id);
}

Result<std::map<std::string, GrowthFigure>> GrowthProbe::read() const {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return osError(ncpu, std::string(kSub) + ": possible CPUs");
  std::vector<growth_val> per(ncpu);
  int fd = bpf_map__fd(skel_->maps.growth);
  std::map<std::string, GrowthFigure> out;
  for (const auto& [id, cgroup] : watched_) {
    if (bpf_map_lookup_elem(fd, &cgroup.id, per.data()) != 0) {
      return osError(errno, std::string(kSub) + ": read " + id);
    }
    GrowthFigure& g = out[id];
    for (const auto& v : per) {
      g.bytes += v.bytes;
      g.writes += v.writes;
    }
  }
  return out;
}

std::array<uint64_t, GROWTH_CTR_MAX> GrowthProbe::counters() const {
  std::array<uint64_t, GROWTH_CTR_MAX> out{};
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return out;
  std::vector<uint64_t> per(ncpu);
  int fd = bpf_map__fd(skel_->maps.counters);
  for (uint32_t i = 0; i < GROWTH_CTR_MAX; i++) {
    if (bpf_map_lookup_elem(fd, &i, per.data()) != 0) continue;
    for (uint64_t v : per) out[i] += v;
  }
  return out;
}

std::vector<GrowthProbe::ProgramStats> GrowthProbe::programStats() const {
  std::vector<ProgramStats> out;
  bpf_program* prog;
  bpf_object__for_each_program(prog, skel_->obj) {
    if (!bpf_program__autoload(prog)) continue;
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) != 0) continue;
    out.push_back({bpf_program__name(prog), info.run_cnt, info.run_time_ns});
  }
  return out;
}

const char* GrowthProbe::counterName(size_t i) { return i < GROWTH_CTR_MAX ? kCounterNames[i] : "?"; }

// ---- figures ----------------------------------------------------------------

std::map<std::string, GrowthFigure> growthSince(const std::map<std::string, GrowthFigure>& before,
                                                const std::map<std::string, GrowthFigure>& after) {
  std::map<std::string, GrowthFigure> out;
  for (const auto& [id, now] : after) {
    auto it = before.find(id);
    GrowthFigure d = now;
    if (it != before.end() && now.bytes >= it->second.bytes && now.writes >= it->second.writes) {
      d = {now.bytes - it->second.bytes, now.writes - it->second.writes};
    }
    out[id] = d;
  }
  return out;
}

std::map<uint32_t, GrowthFigure> growthByOwner(
    const std::map<std::string, GrowthFigure>& figures,
    const std::function<std::optional<uint32_t>(const std::string& container_id)>& owner) {
  std::map<uint32_t, GrowthFigure> out;
  for (const auto& [id, g] : figures) {
    auto uid = owner(id);
    if (!uid) continue;
    out[*uid].bytes += g.bytes;
    out[*uid].writes += g.writes;
  }
  return out;
}

}  // namespace dockquota
