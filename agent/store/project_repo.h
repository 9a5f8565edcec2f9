// SPDX-License-Identifier: Apache-2.0
// Kernel project-quota ids and what each is for: a user, a container, or a
// new layer whose container is not named yet (schema v3).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.h"
#include "agent/store/db.h"
#include "agent/store/records.h"

namespace dockquota {

class ProjectRepo {
 public:
  explicit ProjectRepo(Db& db) : db_(db) {}

  // The project of (kind, owner); a new one takes the lowest id in [lo, hi]
  // that no row holds and `usable` accepts (ENOSPC when none).
  Result<ProjectRecord> project(const std::string& kind, const std::string& owner, uint32_t lo, uint32_t hi, double now,
                                const std::function<bool(uint32_t)>& usable = {});
  // Frees the id (no-op when there is none).
  Status releaseProject(const std::string& kind, const std::string& owner);
  // The project keeps its id and limit under a new owner (a layer's project
  // becomes its container's once the create reply names it). ENOENT when
  // there is none; EEXIST when the new owner has one already.
  Status renameProject(const std::string& kind, const std::string& owner, const std::string& new_owner);
  Status setProjectLimit(const std::string& kind, const std::string& owner, std::optional<uint64_t> bytes);
  Result<std::vector<ProjectRecord>> projects() const;

 private:
  Db& db_;
};

}  // namespace dockquota
