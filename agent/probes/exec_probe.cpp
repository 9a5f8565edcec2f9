// SPDX-License-Identifier: Apache-2.0
#include "agent/probes/exec_probe.h"

#include <nlohmann/json.hpp>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cstring>

#include "agent/base/log.h"
#include "agent/probes/probe_util.h"
#include <linux/types.h>  // before exec.h

#include "exec.h"
#include "exec.skel.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "exec-probe";

int onRingEvent(void* ctx, void* data, size_t size) {
  if (size < sizeof(exec_event)) return 0;
  const auto* e = static_cast<const exec_event*>(data);
  ExecRecord r;
  r.ts_ns = e->ts_ns;
  r.pid = e->pid;
  r.tgid = e->tgid;
  r.ppid = e->ppid;
  r.uid = e->uid;
  r.gid = e->gid;
  r.euid = e->euid;
  r.loginuid = e->loginuid;
  r.comm.assign(e->comm, strnlen(e->comm, sizeof e->comm));
  r.path.assign(e->path, strnlen(e->path, sizeof e->path));
  size_t n = std::min<size_t>(e->args_len, sizeof e->args);
  for (size_t i = 0; i < n;) {
    size_t len = strnlen(e->args + i, n - i);
    r.argv.emplace_back(e->args + i, len);
    i += len + 1;
  }
  try {
    (*static_cast<ExecProbe::Handler*>(ctx))(r);
  } catch (const std::exception& ex) { LOG_ERROR(kSub, "event handler failed: %s", ex.what()); }
  return 0;
}

}  // namespace

ExecProbe::~ExecProbe() {
  if (ring_) ring_buffer__free(ring_);
  if (skel_) exec_bpf__destroy(skel_);
}

Result<std::unique_ptr<ExecProbe>> ExecProbe::open(const std::vector<std::string>& binaries, Handler handler) {
  std::unique_ptr<ExecProbe> p(new ExecProbe(binaries, std::move(handler)));
  p->skel_ = exec_bpf__open();
  if (!p->skel_) return osError(errno, std::string(kSub) + ": open BPF object");
  if (int err = exec_bpf__load(p->skel_)) return osError(err, std::string(kSub) + ": load BPF program");
  if (int err = exec_bpf__attach(p->skel_)) {
    return osError(err, std::string(kSub) + ": attach tp/sched/sched_process_exec");
  }
  if (auto st = p->refreshBinaries(); !st) return st.error();
  p->ring_ = ring_buffer__new(bpf_map__fd(p->skel_->maps.exec_events), onRingEvent, &p->handler_, nullptr);
  if (!p->ring_) return osError(errno, std::string(kSub) + ": ring buffer");
  LOG_INFO(kSub, "attached sched_process_exec; watching %zu docker binaries", binaries.size());
  return p;
}

Status ExecProbe::refreshBinaries() {
  int map = bpf_map__fd(skel_->maps.docker_bins);
  exec_bin_key key{}, next{};
  std::vector<exec_bin_key> old;
  void* prev = nullptr;
  while (bpf_map_get_next_key(map, prev, &next) == 0) {
    old.push_back(next);
    key = next;
    prev = &key;
  }
  for (auto& k : old) bpf_map_delete_elem(map, &k);
  uint32_t index = 0;
  for (const auto& path : binaries_) {
    auto id = fileId(path);
    if (!id) {
      LOG_DEBUG(kSub, "not watching %s", id.error().message.c_str());
      continue;
    }
    exec_bin_key k{id->ino, id->kdev, 0};
    if (bpf_map_update_elem(map, &k, &index, BPF_ANY) != 0) {
      return osError(errno, std::string(kSub) + ": watch " + path);
    }
    index++;
  }
  return {};
}

int ExecProbe::fd() const { return ring_buffer__epoll_fd(ring_); }

Result<int> ExecProbe::consume() {
  int n = ring_buffer__consume(ring_);
  if (n < 0 && n != -EINTR) return osError(n, std::string(kSub) + ": ring buffer");
  return n < 0 ? 0 : n;
}

uint64_t ExecProbe::lost() const {
  int ncpu = libbpf_num_possible_cpus();
  if (ncpu <= 0) return 0;
  std::vector<uint64_t> per(ncpu);
  uint32_t key = EXEC_CTR_RINGBUF_FULL;
  uint64_t sum = 0;
  if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.exec_counters), &key, per.data()) == 0) {
    for (uint64_t v : per) sum += v;
  }
  return sum;
}

Health ExecProbe::health() const {
  Health h;
  const uint64_t lost_events = lost();
  h.report = {{"attached", true},
              {"hook", "tracepoint"},
              {"programs", nlohmann::json::array({"tp/sched/sched_process_exec"})},
              {"binaries", binaries_},
              {"lost_events", lost_events}};
  if (lost_events > 0)
    h.degraded.push_back("the exec probe lost " + std::to_string(lost_events) + " events (ring buffer full)");
  return h;
}

}  // namespace dockquota
