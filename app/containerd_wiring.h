// SPDX-License-Identifier: Apache-2.0
// The containerd runtime, wired (config `runtime` includes "containerd"):
// the module loaded (agent/runtime/containerd_runtime.h), its routes on the
// API, its /healthz part (runtimes.containerd) and /metrics families, and
// the quota stage on the watch's hooks (agent/quota/ctrd_quotas.h) unless
// `containerd_quotas` is false. App holds one of these or none.
#pragma once

#include <memory>
#include <string>

#include "agent/base/health.h"
#include "agent/quota/ctrd_quotas.h"
#include "agent/runtime/containerd_runtime.h"
#include "api/http_api.h"
#include "app/config.h"

namespace dockquota {

struct ContainerdServices {
  // Declared first, destroyed last: the service's thread calls its hooks.
  std::unique_ptr<CtrdQuotas> quotas;  // nullptr: containerd_quotas false
  std::unique_ptr<ContainerdService> service;
  std::unique_ptr<ContainerdRuntime> runtime;

  Status start();
  void stop();
  Health health() const;
  void renderMetrics(std::string& out) const;
};

// nullptr when the config leaves containerd out: the module is not loaded.
std::unique_ptr<ContainerdServices> openContainerd(const Config& config, ApiServer& api, Store& store);

}  // namespace dockquota
