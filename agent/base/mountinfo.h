// SPDX-License-Identifier: Apache-2.0
// /proc/self/mountinfo, parsed once for everyone who needs the mount table:
// the project-quota probe (which filesystem holds a path), the layer locator
// (a rootfs mount's upperdir), the growth probe (where cgroup2 is).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
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

// The mount table, read again only when it changed. The kernel flags an open
// /proc/self/mountinfo with POLLPRI after every mount or unmount in the
// namespace, so a caller that asks at every refresh pays one poll(2) while
// nothing moved, and several callers in one refresh share one read.
class MountTable {
 public:
  using Table = std::shared_ptr<const std::vector<MountEntry>>;
  MountTable() = default;
  ~MountTable();
  MountTable(const MountTable&) = delete;
  MountTable& operator=(const MountTable&) = delete;
  // The table as it is now; immutable, kept by the caller as long as it likes.
  Result<Table> current();
  // How many times the table was read (the first read included).
  uint64_t reads() const;

 private:
  mutable std::mutex mu_;
  int fd_ = -1;
  Table table_;
  uint64_t reads_ = 0;
};

// The process's one MountTable.
MountTable& processMountTable();

// `path` is `mount_point` or below it.
bool underMount(const std::string& path, const std::string& mount_point);

}  // namespace dockquota
