// SPDX-License-Identifier: Apache-2.0
// The pure part of containerd rootfs quotas (no kernel, no store): which
// project a container belongs to and with what limit, from its labels and the
// config. agent/quota/ctrd_quotas.h applies it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace dockquota {

struct CtrdQuotaConfig {
  uint64_t default_bytes = 0;                   // per container; 0 = accounted, no limit
  std::string limit_label = "dockquota.limit";  // a container's own limit
  std::string tenant_label = "io.kubernetes.pod.namespace";
  uint64_t tenant_default_bytes = 0;             // 0 = no tenant grouping
  std::map<std::string, uint64_t> tenant_bytes;  // per-tenant overrides (grouping on only)

  bool grouping() const { return tenant_default_bytes > 0; }
};

// Project rows in the Store's projects table (shared with Docker's, so ids
// never collide): one per container outside tenants, one per tenant.
constexpr const char* kCtrdKind = "ctrd";               // owner "<namespace>/<id>"
constexpr const char* kCtrdTenantKind = "ctrd-tenant";  // owner: the tenant label's value

struct CtrdPlan {
  std::string kind, owner;  // the project's row
  std::string tenant;       // "" outside tenants
  uint64_t limit_bytes = 0;
  std::string label_error;  // the limit label was there but unreadable (the default applies)
};

// A size as people write it in a label: "10G", "10GiB", "512Mi", "512MB",
// "1048576". Units are binary whatever their spelling (Docker's
// --storage-opt size and Kubernetes' "Gi" agree on that for quotas), case
// does not matter, no fractions. nullopt when unreadable, 0 or past 2^60.
std::optional<uint64_t> parseLabelSize(const std::string& s);

// The container's project: its tenant's when grouping is on and it carries
// the tenant label (the tenant's limit wins over a container label: one inode
// has one project id), else its own with the label's limit or the default.
CtrdPlan planCtrd(const CtrdQuotaConfig& cfg, const std::string& ns, const std::string& id,
                  const std::map<std::string, std::string>& labels);

// The kernel stops writes at the hard limit, so usage ends a little below it
// (the last write that did not fit): within 1 % counts as reached.
bool limitReached(uint64_t used, uint64_t limit);
// Below 90 %: a reached limit is announced again after the next crossing.
bool limitCleared(uint64_t used, uint64_t limit);

}  // namespace dockquota
