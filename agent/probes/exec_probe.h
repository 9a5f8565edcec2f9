// SPDX-License-Identifier: Apache-2.0
// Owns the exec BPF skeleton: executions of the docker client binaries.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/base/result.h"
#include "agent/probes/evidence_source.h"

struct exec_bpf;
struct ring_buffer;

namespace dockquota {

struct ExecRecord {
  uint64_t ts_ns = 0;
  uint32_t pid = 0, tgid = 0, ppid = 0, uid = 0, gid = 0, euid = 0;
  uint32_t loginuid = UINT32_MAX;  // unset
  std::string comm;
  std::string path;               // as given to execve
  std::vector<std::string> argv;  // possibly cut at EXEC_ARGS_LEN bytes
};

class ExecProbe : public EvidenceSource {
 public:
  using Handler = std::function<void(const ExecRecord&)>;
  static Result<std::unique_ptr<ExecProbe>> open(const std::vector<std::string>& binaries, Handler handler);
  ~ExecProbe() override;

  // Re-reads the binaries' inodes (a package upgrade replaces the file).
  Status refreshBinaries();
  // The ring buffer's fd, to poll alongside others; consume() drains it.
  int fd() const;
  Result<int> consume() override;
  const std::vector<std::string>& binaries() const { return binaries_; }
  uint64_t lost() const;
  const char* name() const override { return "exec"; }
  // The hook, the binaries watched and the events the ring had no room for
  // (degraded: an exec lost is a docker CLI the agent cannot name).
  Health health() const override;

 private:
  ExecProbe(std::vector<std::string> b, Handler h) : binaries_(std::move(b)), handler_(std::move(h)) {}
  std::vector<std::string> binaries_;
  Handler handler_;
  exec_bpf* skel_ = nullptr;
  ring_buffer* ring_ = nullptr;
};

}  // namespace dockquota
