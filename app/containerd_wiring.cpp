// SPDX-License-Identifier: Apache-2.0
#include "app/containerd_wiring.h"

#include "agent/base/log.h"
#include "api/containerd_api.h"

namespace dockquota {

std::unique_ptr<ContainerdServices> openContainerd(const Config& config, ApiServer& api) {
  if (!config.runtimeEnabled("containerd")) return nullptr;
  auto s = std::make_unique<ContainerdServices>();
  s->service = ContainerdService::open(ContainerdOptions{.module_path = containerdModulePath(config.containerd_module),
                                                         .address = config.containerd_address,
                                                         .namespaces = config.containerd_namespaces});
  s->runtime = std::make_unique<ContainerdRuntime>(*s->service);
  // Until a quota stage subscribes: what the hooks would get, in the debug log.
  s->service->watch().setHooks(CtrdHooks{
      .on_task_create =
          [](const std::string& ns, const std::string& id, const std::map<std::string, std::string>&,
             const std::string& upper) {
            LOG_DEBUG("containerd", "task create %s/%s, upper dir %s", ns.c_str(), id.c_str(),
                      upper.empty() ? "(unresolved)" : upper.c_str());
          },
      .on_container_delete =
          [](const std::string& ns, const std::string& id) {
            LOG_DEBUG("containerd", "container delete %s/%s", ns.c_str(), id.c_str());
          },
  });
  installContainerdRoutes(api, *s->service, *s->runtime);
  return s;
}

Status ContainerdServices::start() { return service->start(); }

void ContainerdServices::stop() { service->stop(); }

Health ContainerdServices::health() const { return service->health(); }

void ContainerdServices::renderMetrics(std::string& out) const { promContainerdMetrics(out, health().report); }

}  // namespace dockquota
