// SPDX-License-Identifier: Apache-2.0
#include "app/systemd.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace dockquota {
namespace {

constexpr int kListenFdsStart = 3;  // SD_LISTEN_FDS_START

// name -> fd of every socket passed to us; read once.
const std::map<std::string, int>& passedSockets() {
  static std::map<std::string, int> fds;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* pid = getenv("LISTEN_PID");
    const char* count = getenv("LISTEN_FDS");
    const char* names = getenv("LISTEN_FDNAMES");
    if (pid && count && strtoll(pid, nullptr, 10) == getpid()) {
      const int n = static_cast<int>(std::clamp(strtol(count, nullptr, 10), 0L, 64L));
      std::vector<std::string> named;
      for (std::string rest = names ? names : ""; names;) {
        const size_t colon = rest.find(':');
        named.push_back(rest.substr(0, colon));
        if (colon == std::string::npos) break;
        rest.erase(0, colon + 1);
      }
      // systemd names an unnamed socket "unknown"; one socket without names is "".
      for (int i = 0; i < n; i++)
        fds[i < int(named.size()) ? named[i] : (n == 1 ? "" : "unknown")] = kListenFdsStart + i;
    }
    for (const char* v : {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}) unsetenv(v);
  });
  return fds;
}

}  // namespace

void sdNotify(const char* state) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@')) return;
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
  if (path[0] == '@') sa.sun_path[0] = '\0';
  sendto(fd, state, strlen(state), 0, reinterpret_cast<sockaddr*>(&sa), offsetof(sockaddr_un, sun_path) + strlen(path));
  close(fd);
}

std::chrono::milliseconds watchdogInterval() {
  const char* usec = getenv("WATCHDOG_USEC");
  if (!usec || !*usec) return std::chrono::milliseconds(0);
  if (const char* pid = getenv("WATCHDOG_PID"); pid && *pid && strtoll(pid, nullptr, 10) != getpid())
    return std::chrono::milliseconds(0);
  char* end = nullptr;
  const unsigned long long us = strtoull(usec, &end, 10);
  if (*end != '\0' || us == 0) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds(std::max<unsigned long long>(us / 2000, 1));
}

int inheritedSocket(const std::string& name) {
  const auto& fds = passedSockets();
  if (auto it = fds.find(name); it != fds.end()) return it->second;
  if (fds.size() == 1 && (fds.begin()->first.empty() || fds.begin()->first == "unknown")) return fds.begin()->second;
  return -1;
}

}  // namespace dockquota
