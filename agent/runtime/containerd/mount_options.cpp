// SPDX-License-Identifier: Apache-2.0
#include "agent/runtime/containerd/mount_options.h"

namespace dockquota {
namespace {

constexpr std::string_view kKey = "upperdir=";

}  // namespace

bool cleanAbsolutePath(std::string_view p) {
  if (p.empty() || p[0] != '/' || p.size() > 4096) return false;
  size_t start = 1;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    const std::string_view part = p.substr(start, end - start);
    if (part == "." || part == "..") return false;
    start = end + 1;
  }
  return p.find('\0') == std::string_view::npos;
}

UpperDir upperDirOf(const std::vector<std::string_view>& options) {
  UpperDir out;
  bool seen = false;
  for (std::string_view o : options) {
    if (o.substr(0, kKey.size()) != kKey) continue;
    // Two upperdirs: the kernel takes the last, a reader might take the
    // first; refuse rather than guess which directory the container writes.
    if (seen) return {"", "several_upperdirs"};
    seen = true;
    std::string_view v = o.substr(kKey.size());
    if (!cleanAbsolutePath(v)) return {"", "bad_upperdir"};
    out.path = std::string(v);
  }
  if (!seen) out.reason = "no_upperdir";
  return out;
}

}  // namespace dockquota
