// SPDX-License-Identifier: Apache-2.0
// The `upperdir=` of an overlay mount's options, as containerd's snapshots
// service returns them (one string per option: "index=off",
// "workdir=/var/lib/.../work", "upperdir=/var/lib/.../fs", "lowerdir=a:b").
// Pure text, no gRPC: the module, the unit tests and fuzz-mount-options use
// it. The text comes from containerd, a peer we trust little: a path that is
// not absolute or holds a ".." component is refused, not followed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dockquota {

struct UpperDir {
  std::string path;    // "" when not found or refused
  std::string reason;  // "" when found; else no_upperdir, bad_upperdir, several_upperdirs
};

// Absolute, no NUL, no "." or ".." component, at most 4096 bytes: the agent
// tags this directory with a project id later, so it must be the one
// containerd meant.
bool cleanAbsolutePath(std::string_view path);

UpperDir upperDirOf(const std::vector<std::string_view>& options);

}  // namespace dockquota
