// SPDX-License-Identifier: Apache-2.0
#include "agent/base/mountinfo.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
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

MountTable::~MountTable() {
  if (fd_ >= 0) close(fd_);
}

namespace {
// The whole of an open mountinfo file, from its start.
Result<std::string> readAllFrom(int fd) {
  if (lseek(fd, 0, SEEK_SET) < 0) return osError(errno, "/proc/self/mountinfo: lseek");
  std::string text;
  char buf[16384];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return osError(errno, "/proc/self/mountinfo: read");
    if (n == 0) return text;
    text.append(buf, static_cast<size_t>(n));
  }
}
}  // namespace

Result<std::vector<MountEntry>> readMountinfo() {
  const int fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return osError(errno, "/proc/self/mountinfo");
  auto text = readAllFrom(fd);
  close(fd);
  if (!text) return text.error();
  return parseMountinfo(*text);
}

Result<MountTable::Table> MountTable::current() {
  std::lock_guard<std::mutex> l(mu_);
  if (fd_ < 0) {
    fd_ = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return osError(errno, "/proc/self/mountinfo");
  }
  // The poll is what consumes the change mark, so it comes before the read:
  // a mount between the two is in the text read and flags the next poll too.
  struct pollfd p {
    fd_, POLLPRI, 0
  };
  const bool changed = poll(&p, 1, 0) > 0 && (p.revents & (POLLPRI | POLLERR));
  if (table_ && !changed) return table_;
  auto text = readAllFrom(fd_);
  if (!text) return text.error();
  table_ = std::make_shared<const std::vector<MountEntry>>(parseMountinfo(*text));
  ++reads_;
  return table_;
}

uint64_t MountTable::reads() const {
  std::lock_guard<std::mutex> l(mu_);
  return reads_;
}

MountTable& processMountTable() {
  static MountTable table;
  return table;
}

bool underMount(const std::string& path, const std::string& mp) {
  if (mp == "/") return true;
  return path.compare(0, mp.size(), mp) == 0 && (path.size() == mp.size() || path[mp.size()] == '/');
}

}  // namespace dockquota
