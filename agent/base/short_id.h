// SPDX-License-Identifier: Apache-2.0
// Docker's short form of an object id, as `docker ps` and `docker images`
// print it: the first 12 hex digits, without an image's "sha256:". For log
// lines, error context and notices; the store and the API keep full ids.
#pragma once

#include <string>
#include <string_view>

namespace dockquota {

inline std::string shortId(std::string_view id) {
  if (id.substr(0, 7) == "sha256:") id.remove_prefix(7);
  return std::string(id.substr(0, 12));
}

}  // namespace dockquota
