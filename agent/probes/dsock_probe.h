// SPDX-License-Identifier: Apache-2.0
// Owns the dsock BPF skeleton: tracks connections to the Docker socket(s) and
// delivers the bytes their clients send and receive.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/base/health.h"
#include "agent/base/result.h"
#include "agent/probes/dsock_event.hpp"
#include "agent/probes/evidence_source.h"

struct dsock_bpf;
struct ring_buffer;

namespace dockquota {

class DsockProbe : public EvidenceSource {
 public:
  struct Options {
    std::vector<std::string> socket_paths;     // e.g. /var/run/docker.sock, /run/docker.sock
    uint32_t capture_bytes = DSOCK_CAP_BYTES;  // per call, <= DSOCK_CAP_BYTES
    uint32_t ringbuf_bytes = 2u << 20;         // power of two (config ringbuf_kib)
    bool ignore_self = true;                   // do not capture this process's own Docker calls
    std::string hook = "auto";                 // "auto" (kHookSets in order) or one of kHookSets
  };
  using Handler = std::function<void(const DsockEventView&)>;
  // The hook sets (bpf/dsock.bpf.c), cheapest for the rest of the host first:
  // "socket" (sock_send_length/sock_recv_length tracepoints, 6.3+), "fentry"
  // (fexit on ten syscalls), "tracepoint" (tp_btf/sys_exit, everywhere).
  static const std::vector<std::string> kHookSets;

  // Open, set rodata and map sizes, load, attach (libbpf-tools order).
  static Result<std::unique_ptr<DsockProbe>> open(const Options& options, Handler handler);
  ~DsockProbe() override;

  // Re-reads the socket paths' inodes into the kernel map (dockerd re-creates
  // its socket on restart). Paths that do not exist yet are skipped; their
  // bound-path entry still matches.
  Status refreshSockets();

  // Consumes ready events; waits up to timeout_ms (0 = just drain). Returns
  // the number of events handled or an error (EINTR is not an error).
  Result<int> poll(int timeout_ms);
  // For callers that wait themselves (to drain the exec ring first).
  int epollFd() const;
  Result<int> consume() override;
  const char* name() const override { return "docker_sock"; }

  // The agent's instructions for one connection (bpf/dsock.h dsock_ctl:
  // mutes by turn, ignore). Written whole; only the agent writes that map.
  void control(uint64_t conn_id, const dsock_ctl& ctl);

  std::array<uint64_t, DSOCK_CTR_MAX> counters() const;
  const std::vector<std::string>& attached() const { return attached_; }
  // The hook set in use (one of kHookSets); and why "auto" passed over the
  // cheaper ones, if it did.
  const std::string& hook() const { return hook_; }
  const std::string& refusedHooks() const { return refused_hooks_; }
  // /healthz probes.docker_sock: hook, programs, the kernel side's counters
  // (any ring or table overflow degrades the agent).
  Health health() const override;
  const std::vector<std::string>& socketPaths() const { return options_.socket_paths; }

 private:
  DsockProbe(const Options& o, Handler h);
  Status loadAndAttach(const std::string& set);
  Options options_;
  Handler handler_;
  dsock_bpf* skel_ = nullptr;
  ring_buffer* ring_ = nullptr;
  std::vector<std::string> attached_;
  std::string hook_;
  std::string refused_hooks_;
};

}  // namespace dockquota
