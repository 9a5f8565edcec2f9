// SPDX-License-Identifier: Apache-2.0
#include "app/containerd_wiring.h"

#include "agent/base/log.h"
#include "api/containerd_api.h"

namespace dockquota {

namespace {

constexpr uint64_t kMiB = 1024 * 1024;

CtrdQuotas::Options quotaOptions(const Config& c, ContainerdService& service) {
  CtrdQuotas::Options o;
  o.cfg.default_bytes = c.containerd_quota_default_mib * kMiB;
  o.cfg.limit_label = c.containerd_limit_label;
  o.cfg.tenant_label = c.containerd_tenant_label;
  o.cfg.tenant_default_bytes = c.containerd_tenant_quota_mib * kMiB;
  for (const auto& [t, mib] : c.containerd_tenant_quotas_mib) o.cfg.tenant_bytes[t] = mib * kMiB;
  o.id_min = c.project_id_min;
  o.id_max = c.project_id_max;
  o.namespaces = c.containerd_namespaces;
  o.tenant_remove_newest = c.containerd_tenant_remove_newest;
  o.remove = [&service](const std::string& ns, const std::string& id) { return service.remove(ns, id); };
  return o;
}

}  // namespace

std::unique_ptr<ContainerdServices> openContainerd(const Config& config, ApiServer& api, Store& store) {
  if (!config.runtimeEnabled("containerd")) return nullptr;
  auto s = std::make_unique<ContainerdServices>();
  s->service = ContainerdService::open(ContainerdOptions{.module_path = containerdModulePath(config.containerd_module),
                                                         .address = config.containerd_address,
                                                         .namespaces = config.containerd_namespaces});
  s->runtime = std::make_unique<ContainerdRuntime>(*s->service);
  if (config.containerd_quotas) {
    s->quotas = std::make_unique<CtrdQuotas>(store, realCtrdKernel(), quotaOptions(config, *s->service));
    s->service->watch().setHooks(s->quotas->hooks(s->service->watch()));
  }
  installContainerdRoutes(api, *s->service, *s->runtime, s->quotas.get());
  return s;
}

Status ContainerdServices::start() {
  if (quotas) quotas->start();
  return service->start();
}

void ContainerdServices::stop() {
  service->stop();  // no more hooks
  if (quotas) quotas->stop();
}

Health ContainerdServices::health() const {
  Health h = service->health();
  if (quotas) {
    Health q = quotas->health();
    h.report["quotas"] = std::move(q.report);
    h.absorb(std::move(q));
  }
  return h;
}

void ContainerdServices::renderMetrics(std::string& out) const {
  promContainerdMetrics(out, health().report);
  if (quotas) promCtrdQuotaMetrics(out, quotas->health().report, quotas->tenants());
}

}  // namespace dockquota
