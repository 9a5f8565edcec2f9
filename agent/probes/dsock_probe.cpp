// SPDX-License-Identifier: Apache-2.0
#include "agent/probes/dsock_probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cstring>

#include "agent/base/log.h"
#include "agent/probes/probe_util.h"
#include "dsock.skel.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "dsock-probe";

int onRingEvent(void* ctx, void* data, size_t size) {
  auto* self = static_cast<DsockProbe::Handler*>(ctx);
  if (size < offsetof(dsock_event, data)) return 0;
  const auto* ev = static_cast<const dsock_event*>(data);
  if (offsetof(dsock_event, data) + ev->cap_len > size) return 0;
  // Never let an exception unwind through libbpf's C frames.
  try {
    (*self)(DsockEventView{ev});
  } catch (const std::exception& e) { LOG_ERROR(kSub, "event handler failed: %s", e.what()); }
  return 0;
}

}  // namespace

const std::vector<std::string> DsockProbe::kHookSets = {"socket", "fentry", "tracepoint"};

DsockProbe::DsockProbe(const Options& o, Handler h) : options_(o), handler_(std::move(h)) {}

DsockProbe::~DsockProbe() {
  if (ring_) ring_buffer__free(ring_);
  if (skel_) dsock_bpf__destroy(skel_);
}

Result<std::unique_ptr<DsockProbe>> DsockProbe::open(const Options& options, Handler handler) {
  if (options.capture_bytes == 0 || options.capture_bytes > DSOCK_CAP_BYTES) {
    return Error{EINVAL, std::string(kSub) + ": capture_bytes must be 1.." + std::to_string(DSOCK_CAP_BYTES)};
  }
  std::unique_ptr<DsockProbe> p(new DsockProbe(options, std::move(handler)));
  auto hook = loadHookSet(
      kSub, options.hook, kHookSets, kHookSets.size(), [&](const std::string& set) { return p->loadAndAttach(set); },
      p->refused_hooks_);
  if (!hook) return hook.error();
  p->hook_ = *hook;
  if (auto st = p->refreshSockets(); !st) return st.error();
  p->ring_ = ring_buffer__new(bpf_map__fd(p->skel_->maps.events), onRingEvent, &p->handler_, nullptr);
  if (!p->ring_) return osError(errno, std::string(kSub) + ": ring buffer");
  LOG_INFO(kSub, "attached %zu programs (%s hooks); capturing %u bytes per call; ring %u KiB", p->attached_.size(),
           p->hook_.c_str(), options.capture_bytes, options.ringbuf_bytes / 1024);
  return p;
}

// Open, set rodata and map sizes, choose the hook set, load, attach
// (libbpf-tools order). On failure the skeleton is destroyed again.
Status DsockProbe::loadAndAttach(const std::string& set) {
  auto fail = [&](int err, const std::string& what) -> Status {
    dsock_bpf__destroy(skel_);
    skel_ = nullptr;
    attached_.clear();
    return osError(err, std::string(kSub) + ": " + set + " hooks: " + what);
  };
  skel_ = dsock_bpf__open();
  if (!skel_) return osError(errno, std::string(kSub) + ": open BPF object");
  skel_->rodata->targ_cap_bytes = options_.capture_bytes;
  skel_->rodata->targ_wakeup_bytes = options_.ringbuf_bytes / 8;
  skel_->rodata->targ_self_tgid = options_.ignore_self ? static_cast<uint32_t>(getpid()) : 0;
  bpf_map__set_max_entries(skel_->maps.tracked_tgids, pidMax() / 64 + 1);  // one bit per tgid
  if (int err = bpf_map__set_max_entries(skel_->maps.events, options_.ringbuf_bytes)) {
    return fail(err, "ring buffer size " + std::to_string(options_.ringbuf_bytes));
  }
  // Each set's programs by name (bpf/dsock.bpf.c); sched_process_exit serves all.
  bpf_program* prog;
  bpf_object__for_each_program(prog, skel_->obj) {
    const std::string name = bpf_program__name(prog);
    if (name.rfind("fexit__", 0) == 0) bpf_program__set_autoload(prog, set == "fentry");
    if (name == "tp_btf__sys_exit") bpf_program__set_autoload(prog, set == "tracepoint");
    if (name.rfind("tp_btf__sock_", 0) == 0) bpf_program__set_autoload(prog, set == "socket");
    // The socket set tracks any socket at its first call; the syscall sets
    // need to know which children inherited a tracked process's fds.
    if (name == "tp_btf__sched_process_fork") bpf_program__set_autoload(prog, set != "socket");
  }
  if (int err = dsock_bpf__load(skel_)) return fail(err, "load");
  if (auto st = attachAutoloaded(skel_->skeleton, attached_); !st) return fail(st.error().code, st.error().message);
  return {};
}

Status DsockProbe::refreshSockets() {
  int inodes = bpf_map__fd(skel_->maps.watched_socks);
  int paths = bpf_map__fd(skel_->maps.watched_paths);
  // Drop stale inode entries: a re-created socket has a new inode.
  dsock_sock_key key{}, next{};
  std::vector<dsock_sock_key> old;
  void* prev = nullptr;
  while (bpf_map_get_next_key(inodes, prev, &next) == 0) {
    old.push_back(next);
    key = next;
    prev = &key;
  }
  for (auto& k : old) bpf_map_delete_elem(inodes, &k);

  // The lengths of the watched paths: the kernel side's cheap first test
  // before it reads a bound path (watched_path_lens in bpf/dsock.bpf.c).
  uint64_t lens[2] = {0, 0};
  for (const auto& path : options_.socket_paths) {
    if (path.size() < DSOCK_PATH_LEN) lens[path.size() / 64] |= 1ULL << (path.size() % 64);
  }
  for (int i = 0; i < 2; i++) __atomic_store_n(&skel_->bss->watched_path_lens[i], lens[i], __ATOMIC_RELEASE);

  for (uint32_t i = 0; i < options_.socket_paths.size() && i < DSOCK_MAX_SOCKS; i++) {
    const std::string& path = options_.socket_paths[i];
    dsock_sock_val val{i, 0};
    dsock_path_key pk{};
    if (path.size() >= sizeof pk.path) {
      return Error{ENAMETOOLONG, std::string(kSub) + ": socket path longer than sun_path: " + path};
    }
    memcpy(pk.path, path.data(), path.size());
    if (bpf_map_update_elem(paths, &pk, &val, BPF_ANY) != 0) {
      return osError(errno, std::string(kSub) + ": watch path " + path);
    }
    auto id = fileId(path);
    if (!id) {
      LOG_DEBUG(kSub, "%s", id.error().message.c_str());
      continue;
    }
    dsock_sock_key sk{id->ino, id->kdev, 0};
    if (bpf_map_update_elem(inodes, &sk, &val, BPF_ANY) != 0) {
      return osError(errno, std::string(kSub) + ": watch inode of " + path);
    }
  }
  return {};
}

Result<int> DsockProbe::poll(int timeout_ms) {
  int n = ring_buffer__poll(ring_, timeout_ms);
  if (n == -EINTR) return 0;
  if (n < 0) return osError(n, std::string(kSub) + ": ring buffer poll");
  return n;
}

int DsockProbe::epollFd() const { return ring_buffer__epoll_fd(ring_); }

Result<int> DsockProbe::consume() {
  int n = ring_buffer__consume(ring_);
  if (n < 0 && n != -EINTR) return osError(n, std::string(kSub) + ": ring buffer");
  return n < 0 ? 0 : n;
}

void DsockProbe::control(uint64_t conn_id, const dsock_ctl& ctl) {
  if (bpf_map_update_elem(bpf_map__fd(skel_->maps.conn_ctl), &conn_id, &ctl, BPF_ANY) != 0)
    LOG_DEBUG(kSub, "control of conn %llx: %s", static_cast<unsigned long long>(conn_id), strerror(errno));
}

std::array<uint64_t, DSOCK_CTR_MAX> DsockProbe::counters() const {
  std::array<uint64_t, DSOCK_CTR_MAX> out{};
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return out;
  std::vector<uint64_t> per(ncpu);
  int fd = bpf_map__fd(skel_->maps.counters);
  for (uint32_t i = 0; i < DSOCK_CTR_MAX; i++) {
    if (bpf_map_lookup_elem(fd, &i, per.data()) != 0) continue;
    for (uint64_t v : per) out[i] += v;
  }
  return out;
}

Health DsockProbe::health() const {
  Health h;
  h.report = {{"attached", true}, {"hook", hook()}, {"programs", attached()}, {"sockets", options_.socket_paths}};
  if (!refusedHooks().empty()) h.report["hooks_refused"] = refusedHooks();
  auto ctr = counters();
  nlohmann::json kc = nlohmann::json::object();
  for (int i = 0; i < DSOCK_CTR_MAX; i++) kc[kDsockCounterNames[i]] = ctr[i];
  h.report["kernel_counters"] = kc;
  if (ctr[DSOCK_CTR_RINGBUF_FULL] || ctr[DSOCK_CTR_TRACK_FULL] || ctr[DSOCK_CTR_UNSUPPORTED_CALL])
    h.degraded.push_back("the docker.sock probe dropped events (see kernel_counters)");
  return h;
}

}  // namespace dockquota
