// SPDX-License-Identifier: Apache-2.0
#include "agent/enforcement/policy.h"

#include <algorithm>

namespace dockquota {

const char* toString(EnforceOrder o) {
  switch (o) {
    case EnforceOrder::Newest: return "newest";
    case EnforceOrder::Oldest: return "oldest";
    case EnforceOrder::Largest: return "largest";
  }
  return "newest";
}

std::optional<EnforceOrder> parseEnforceOrder(const std::string& s) {
  for (auto o : {EnforceOrder::Newest, EnforceOrder::Oldest, EnforceOrder::Largest})
    if (s == toString(o)) return o;
  return std::nullopt;
}

const char* toString(EnforceMode m) {
  switch (m) {
    case EnforceMode::Off: return "off";
    case EnforceMode::DryRun: return "dry-run";
    case EnforceMode::Enforce: return "enforce";
  }
  return "off";
}

std::optional<EnforceMode> parseEnforceMode(const std::string& s) {
  for (auto m : {EnforceMode::Off, EnforceMode::DryRun, EnforceMode::Enforce})
    if (s == toString(m)) return m;
  return std::nullopt;
}

const char* toString(QuotaLevel l) {
  switch (l) {
    case QuotaLevel::Ok: return "ok";
    case QuotaLevel::Warning: return "warning";
    case QuotaLevel::Over: return "over";
  }
  return "ok";
}

namespace {
// `fraction` of `limit`, to the nearest byte (0.8 * 100 MiB is 80 MiB, not a hair above).
uint64_t share(uint64_t limit, double fraction) {
  return static_cast<uint64_t>(static_cast<long double>(limit) * fraction + 0.5L);
}
}  // namespace

bool overLimit(uint64_t usage, uint64_t limit, const Thresholds& t) {
  if (limit == 0) return false;
  return usage > (limit > t.full_margin ? limit - t.full_margin : 0);
}

QuotaLevel quotaLevel(uint64_t usage, uint64_t limit, const Thresholds& t) {
  if (limit == 0) return QuotaLevel::Ok;
  if (overLimit(usage, limit, t)) return QuotaLevel::Over;
  if (usage >= share(limit, t.warn_fraction)) return QuotaLevel::Warning;
  return QuotaLevel::Ok;
}

bool conditionHolds(const std::string& condition, uint64_t usage, uint64_t limit, const Thresholds& t) {
  if (limit == 0) return false;
  const uint64_t line = condition == "warning" ? share(limit, t.warn_fraction) : limit;
  return usage >= share(line, t.clear_fraction);
}

void orderCandidates(std::vector<Candidate>& c, EnforceOrder order) {
  std::sort(c.begin(), c.end(), [order](const Candidate& a, const Candidate& b) {
    switch (order) {
      case EnforceOrder::Newest:
        if (a.created != b.created) return a.created > b.created;
        break;
      case EnforceOrder::Oldest:
        if (a.created != b.created) return a.created < b.created;
        break;
      case EnforceOrder::Largest:
        if (a.size.value_or(0) != b.size.value_or(0)) return a.size.value_or(0) > b.size.value_or(0);
        break;
    }
    return a.id < b.id;
  });
}

Selection selectUntilUnder(const std::vector<Candidate>& ordered, uint64_t usage, uint64_t limit, const Thresholds& t,
                           const std::function<uint64_t(const Candidate&)>& size_of) {
  Selection s;
  for (size_t i = 0; i < ordered.size(); i++) {
    if (!overLimit(usage - std::min(usage, s.freed), limit, t)) break;
    const uint64_t bytes = size_of(ordered[i]);
    if (bytes == 0) continue;  // removing it frees nothing: spare it
    s.picked.push_back(i);
    s.freed += bytes;
  }
  s.enough = !overLimit(usage - std::min(usage, s.freed), limit, t);
  return s;
}

}  // namespace dockquota
