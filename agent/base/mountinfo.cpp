// SPDX-License-Identifier: Apache-2.0
#include "agent/base/mountinfo.h"

#include <sys/sysmacros.h>

#include <cctype>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace dockquota {
namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && isdigit(s[i + 1]) && isdigit(s[i + 2]) && isdigit(s[i + 3])) {
      out += char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace

std::vector<MountEntry> parseMountinfo(const std::string& text) {
  std::vector<MountEntry> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    std::string id, parent, majmin, root, mp, opts, tok;
    if (!(ls >> id >> parent >> majmin >> root >> mp >> opts)) continue;
    while (ls >> tok && tok != "-") {}
    MountEntry e;
    unsigned maj = 0, min = 0;
    if (tok != "-" || !(ls >> e.fstype >> e.source) || sscanf(majmin.c_str(), "%u:%u", &maj, &min) != 2) continue;
    ls >> e.super_options;
    e.dev = makedev(maj, min);
    e.root = unescape(root);
    e.mount_point = unescape(mp);
    e.options = opts;
    e.source = unescape(e.source);
    out.push_back(std::move(e));
  }
  return out;
}

Result<std::vector<MountEntry>> readMountinfo() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return osError(errno, "/proc/self/mountinfo");
  std::stringstream text;
  text << in.rdbuf();
  return parseMountinfo(text.str());
}

bool underMount(const std::string& path, const std::string& mp) {
  if (mp == "/") return true;
  return path.compare(0, mp.size(), mp) == 0 && (path.size() == mp.size() || path[mp.size()] == '/');
}

}  // namespace dockquota
