// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/ctrd_plan.h"

#include <cctype>

namespace dockquota {

std::optional<uint64_t> parseLabelSize(const std::string& s) {
  size_t i = 0;
  uint64_t n = 0;
  for (; i < s.size() && isdigit(static_cast<unsigned char>(s[i])); i++) {
    if (n > (uint64_t(1) << 60) / 10) return std::nullopt;
    n = n * 10 + uint64_t(s[i] - '0');
  }
  if (i == 0) return std::nullopt;
  std::string unit;
  for (; i < s.size(); i++) unit += char(tolower(static_cast<unsigned char>(s[i])));
  int shift = 0;
  if (!unit.empty()) {
    const std::string scale = "kmgtp";
    const size_t at = scale.find(unit[0]);
    const std::string rest = unit.substr(1);
    if (at == std::string::npos || !(rest.empty() || rest == "b" || rest == "i" || rest == "ib")) return std::nullopt;
    shift = 10 * int(at + 1);
  }
  if (n == 0 || n > ((uint64_t(1) << 60) >> shift)) return std::nullopt;
  return n << shift;
}

CtrdPlan planCtrd(const CtrdQuotaConfig& cfg, const std::string& ns, const std::string& id,
                  const std::map<std::string, std::string>& labels) {
  CtrdPlan p;
  if (cfg.grouping()) {
    auto t = labels.find(cfg.tenant_label);
    if (t != labels.end() && !t->second.empty()) {
      auto o = cfg.tenant_bytes.find(t->second);
      p.kind = kCtrdTenantKind;
      p.owner = p.tenant = t->second;
      p.limit_bytes = o == cfg.tenant_bytes.end() ? cfg.tenant_default_bytes : o->second;
      return p;
    }
  }
  p.kind = kCtrdKind;
  p.owner = ns + "/" + id;
  p.limit_bytes = cfg.default_bytes;
  auto l = labels.find(cfg.limit_label);
  if (l != labels.end()) {
    if (auto b = parseLabelSize(l->second))
      p.limit_bytes = *b;
    else
      p.label_error = cfg.limit_label + "=" + l->second + ": not a size (10G, 512Mi, bytes)";
  }
  return p;
}

bool limitReached(uint64_t used, uint64_t limit) { return limit > 0 && used >= limit - limit / 100; }

bool limitCleared(uint64_t used, uint64_t limit) { return limit == 0 || used < limit - limit / 10; }

}  // namespace dockquota
