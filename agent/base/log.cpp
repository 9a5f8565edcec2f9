// SPDX-License-Identifier: Apache-2.0
#include "agent/base/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <string>

#include "agent/base/utf8.h"

namespace dockquota::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::Info)};
std::mutex g_mu;

// journald sets JOURNAL_STREAM for services whose stderr it reads.
bool underJournald() {
  static const bool yes = std::getenv("JOURNAL_STREAM") != nullptr;
  return yes;
}

const char* levelName(Level l) {
  switch (l) {
    case Level::Error: return "error";
    case Level::Warning: return "warning";
    case Level::Notice: return "notice";
    case Level::Info: return "info";
    case Level::Debug: return "debug";
  }
  return "?";
}

}  // namespace

void setLevel(Level level) { g_level.store(static_cast<int>(level)); }
Level level() { return static_cast<Level>(g_level.load()); }
bool enabled(Level l) { return static_cast<int>(l) <= g_level.load(std::memory_order_relaxed); }

bool parseLevel(const std::string& name, Level* out) {
  static const struct {
    const char* n;
    Level l;
  } kLevels[] = {{"error", Level::Error},
                 {"warning", Level::Warning},
                 {"notice", Level::Notice},
                 {"info", Level::Info},
                 {"debug", Level::Debug}};
  for (const auto& e : kLevels) {
    if (name == e.n) {
      *out = e.l;
      return true;
    }
  }
  return false;
}

void vwrite(Level l, const char* subsystem, const char* fmt, va_list ap) {
  if (!enabled(l)) return;
  char buf[2048];
  vsnprintf(buf, sizeof buf, fmt, ap);
  // Messages carry outside text (paths, names, comm, Docker's and the
  // master's errors): each comes out as one line of printable, valid UTF-8
  // (agent/base/utf8.h printable(): control bytes, newlines included, and invalid
  // UTF-8 as \xNN), so it can neither forge a journal line nor break a
  // reader. Multi-line text is written one call per line (probe_util.cpp's
  // libbpf printer does so).
  const std::string msg = printable(buf);
  std::lock_guard<std::mutex> lock(g_mu);
  if (underJournald()) {
    fprintf(stderr, "<%d>%s: %s\n", static_cast<int>(l), subsystem, msg.c_str());
  } else {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    tm tmv;
    gmtime_r(&ts.tv_sec, &tmv);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tmv);
    fprintf(stderr, "%s.%03ldZ %-7s %s: %s\n", when, ts.tv_nsec / 1000000, levelName(l), subsystem, msg.c_str());
  }
}

void write(Level l, const char* subsystem, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vwrite(l, subsystem, fmt, ap);
  va_end(ap);
}

}  // namespace dockquota::log
