// SPDX-License-Identifier: Apache-2.0
// /proc/self/mountinfo, parsed once for everyone who needs the mount table:
// the project-quota probe (which filesystem holds a path), the layer locator
// (a rootfs mount's upperdir), the growth probe (where cgroup2 is).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "agent/base/result.h"

namespace dockquota {

// One line: "id parent maj:min root mount-point options [optional...] - fstype source super-options".
struct MountEntry {
  dev_t dev = 0;            // maj:min
  std::string root;         // the mounted subtree of its filesystem
  std::string mount_point;  // octal escapes (\040 ...) undone
  std::string options;      // the mount's own: "rw,nosuid,relatime"
  std::string fstype;
  std::string source;         // escapes undone
  std::string super_options;  // "rw,lowerdir=...,upperdir=..."
};

// Every well-formed line of `text` (malformed ones are skipped).
std::vector<MountEntry> parseMountinfo(const std::string& text);
// The running process's mount table.
Result<std::vector<MountEntry>> readMountinfo();

// `path` is `mount_point` or below it.
bool underMount(const std::string& path, const std::string& mount_point);

}  // namespace dockquota
