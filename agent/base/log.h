// SPDX-License-Identifier: Apache-2.0
// One logger for the agent. Lines look like
//   <4>dsock-probe: failed to attach sys_enter_write: Operation not permitted
// The <N> prefix is the syslog priority, which journald parses (SyslogLevelPrefix),
// so `journalctl -u dockquota -p warning` filters. Without journald (a terminal),
// the prefix becomes a readable level name and a timestamp.
#pragma once

#include <cstdarg>
#include <string>

namespace dockquota::log {

enum class Level { Error = 3, Warning = 4, Notice = 5, Info = 6, Debug = 7 };

void setLevel(Level level);
Level level();
bool parseLevel(const std::string& name, Level* out);
bool enabled(Level level);

// printf-style; `subsystem` is the prefix before the colon ("dsock-probe", "store").
void write(Level level, const char* subsystem, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
void vwrite(Level level, const char* subsystem, const char* fmt, va_list ap);

}  // namespace dockquota::log

#define LOG_ERROR(sub, ...) ::dockquota::log::write(::dockquota::log::Level::Error, sub, __VA_ARGS__)
#define LOG_WARN(sub, ...) ::dockquota::log::write(::dockquota::log::Level::Warning, sub, __VA_ARGS__)
#define LOG_NOTICE(sub, ...) ::dockquota::log::write(::dockquota::log::Level::Notice, sub, __VA_ARGS__)
#define LOG_INFO(sub, ...) ::dockquota::log::write(::dockquota::log::Level::Info, sub, __VA_ARGS__)
#define LOG_DEBUG(sub, ...)                                                      \
  do {                                                                           \
    if (::dockquota::log::enabled(::dockquota::log::Level::Debug))               \
      ::dockquota::log::write(::dockquota::log::Level::Debug, sub, __VA_ARGS__); \
  } while (0)
