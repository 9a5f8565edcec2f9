// SPDX-License-Identifier: Apache-2.0
// fuzz-mount-options: upperDirOf() (agent/runtime/containerd/mount_options.h),
// the `upperdir=` of the options of a mount containerd's snapshots service
// returns: the directory the quota stage will tag, so what is accepted must
// be exactly one option's value and a clean absolute path.
//
// Input: the options, one per line (the protobuf's repeated string; a NUL
// byte inside one is kept). Checked: an accepted path is absolute, has no
// "." or ".." component and is the text after "upperdir=" of exactly one
// option; a refusal has a reason and no path.
#include <string>
#include <string_view>
#include <vector>

#include "agent/runtime/containerd/mount_options.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {

int mountOptions(const uint8_t* data, size_t n) {
  const std::string text(reinterpret_cast<const char*>(data), n);
  std::vector<std::string_view> opts;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    opts.emplace_back(std::string_view(text).substr(start, end - start));
    start = end + 1;
  }
  const UpperDir u = upperDirOf(opts);
  DQ_FUZZ_CHECK(u.path.empty() != u.reason.empty());
  if (u.path.empty()) return 0;
  DQ_FUZZ_CHECK(cleanAbsolutePath(u.path));
  DQ_FUZZ_CHECK(u.path.find("/../") == std::string::npos && u.path.find("/./") == std::string::npos);
  size_t matches = 0;
  for (auto o : opts)
    if (o.substr(0, 9) == "upperdir=") matches += o.substr(9) == u.path ? 1 : 100;
  DQ_FUZZ_CHECK(matches == 1);
  return 0;
}

}  // namespace dockquota::fuzz
