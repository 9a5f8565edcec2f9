// SPDX-License-Identifier: Apache-2.0
// What enforcement needs from a container runtime, and nothing more: the
// current size of a container's writable layer, stop, remove. Docker is the
// one runtime today (DockerRuntime, over the Engine API); containerd on
// Kubernetes nodes comes later behind the same interface.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "agent/base/result.h"
#include "agent/runtime/docker_client.h"

namespace dockquota {

class ContainerRuntime {
 public:
  virtual ~ContainerRuntime() = default;
  virtual const char* name() const = 0;
  // Opens what the calls below use (Docker: the connection, with the API
  // version negotiated), so the first enforcement does not pay for it.
  virtual Status connect() { return {}; }
  // Bytes in the container's writable layer now. ENOENT: no such container.
  virtual Result<uint64_t> writableBytes(const std::string& id) = 0;
  // Stops it, waiting up to `timeout` after SIGTERM before SIGKILL. Already
  // stopped is success; ENOENT: no such container.
  virtual Status stop(const std::string& id, std::chrono::seconds timeout) = 0;
  // Removes it, running or not: a running one is killed (SIGKILL) and
  // removed in this one call, like `docker rm -f` (`volumes`: its anonymous
  // volumes too). ENOENT: it was already gone.
  virtual Status remove(const std::string& id, bool volumes) = 0;
};

// The Engine API: GET /containers/{id}/json?size=1, POST /containers/{id}/stop?t=,
// DELETE /containers/{id}?force=1&v=. Give it a client whose timeout exceeds
// the longest stop timeout used.
class DockerRuntime : public ContainerRuntime {
 public:
  explicit DockerRuntime(DockerClient& docker) : docker_(docker) {}
  const char* name() const override { return "docker"; }
  Status connect() override;
  Result<uint64_t> writableBytes(const std::string& id) override;
  Status stop(const std::string& id, std::chrono::seconds timeout) override;
  Status remove(const std::string& id, bool volumes) override;

 private:
  DockerClient& docker_;
};

// A full container id: 64 lower-case hex digits (all the enforcer acts on).
bool validContainerId(const std::string& id);

}  // namespace dockquota
