// SPDX-License-Identifier: Apache-2.0
// The enforcement policy as pure functions (no clock, no Docker, no SQLite),
// so every rule is unit-tested on its own:
//   quotaLevel()        ok / warning / over for a usage against a limit
//   conditionHolds()    an announced condition ends only below a lower line
//                       (hysteresis), so a user hovering at the line is not
//                       told again on every sweep
//   orderCandidates()   newest first (default), oldest first, or largest first
//   selectUntilUnder()  the fewest containers, in that order, whose layers
//                       bring the user under the limit
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dockquota {

enum class EnforceOrder { Newest, Oldest, Largest };
const char* toString(EnforceOrder o);  // "newest", "oldest", "largest"
std::optional<EnforceOrder> parseEnforceOrder(const std::string& s);

enum class EnforceMode { Off, DryRun, Enforce };
const char* toString(EnforceMode m);  // "off", "dry-run", "enforce"
std::optional<EnforceMode> parseEnforceMode(const std::string& s);

enum class QuotaLevel { Ok, Warning, Over };
const char* toString(QuotaLevel l);  // "ok", "warning", "over"

struct Thresholds {
  double warn_fraction = 0.8;  // warning at this share of the limit
  // Over means usage > limit - full_margin. Where the kernel enforces the
  // limit, usage never passes it: a user whose next writes fail (within a
  // margin of the limit) is over. 0 where usage is only measured.
  uint64_t full_margin = 0;
  // An announced condition ends when usage falls below this share of the
  // line that started it.
  double clear_fraction = 0.95;
};

// `limit` in bytes; 0 = no limit (always Ok).
QuotaLevel quotaLevel(uint64_t usage, uint64_t limit, const Thresholds& t);
bool overLimit(uint64_t usage, uint64_t limit, const Thresholds& t);

// Whether an announced condition ("warning" or "exceeded") still holds.
bool conditionHolds(const std::string& condition, uint64_t usage, uint64_t limit, const Thresholds& t);

struct Candidate {
  std::string id;  // full container id
  std::string name;
  double created = 0;            // unix seconds (the agent's first sight of it)
  std::optional<uint64_t> size;  // writable-layer bytes, when known
};

// Sorts in place; ties by id, so the order is total and repeatable.
// Largest needs every size (missing counts as 0).
void orderCandidates(std::vector<Candidate>& c, EnforceOrder order);

struct Selection {
  std::vector<size_t> picked;  // indexes into the ordered candidates, in order
  uint64_t freed = 0;          // their bytes
  bool enough = false;         // usage - freed is under the limit
};
// Takes candidates from the front until `usage - freed` is no longer over,
// passing over empty ones (removing them would free nothing).
// `size_of` is asked lazily, only for candidates it considers (an API call each).
Selection selectUntilUnder(const std::vector<Candidate>& ordered, uint64_t usage, uint64_t limit, const Thresholds& t,
                           const std::function<uint64_t(const Candidate&)>& size_of);

}  // namespace dockquota
