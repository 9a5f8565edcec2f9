// SPDX-License-Identifier: Apache-2.0
#include "agent/probes/probe_util.h"

#include <bpf/libbpf.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>

#include "agent/base/log.h"

namespace dockquota {
namespace {

int libbpfPrint(enum libbpf_print_level level, const char* fmt, va_list ap) {
  log::Level l = level == LIBBPF_WARN   ? log::Level::Warning
                 : level == LIBBPF_INFO ? log::Level::Info
                                        : log::Level::Debug;
  if (!log::enabled(l)) return 0;
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  // A verifier log is many lines: one log line each (the logger escapes newlines).
  for (char *line = buf, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (*line) log::write(l, "libbpf", "%s", line);
    if (!nl) break;
  }
  return 0;
}

constexpr long kTracefsMagic = 0x74726163;

}  // namespace

void installLibbpfLogger() { libbpf_set_print(libbpfPrint); }

Result<std::string> loadHookSet(const char* sub, const std::string& hook, const std::vector<std::string>& sets,
                                size_t auto_count, const std::function<Status(const std::string& set)>& load,
                                std::string& refused) {
  if (hook != "auto") {
    if (std::find(sets.begin(), sets.end(), hook) == sets.end()) {
      std::string names = "auto";
      for (const auto& s : sets) names += ", " + s;
      return Error{EINVAL, std::string(sub) + ": hook must be one of " + names};
    }
    if (auto st = load(hook); !st) return st.error();
    return hook;
  }
  auto_count = std::min(auto_count, sets.size());
  for (size_t i = 0; i < auto_count; i++) {
    auto st = load(sets[i]);
    if (st) {
      // The last resort slows the whole host: say so where admins look.
      if (sets[i] == "tracepoint") {
        LOG_WARN(sub, "using tracepoint hooks (%s): every syscall of every process now pays the tracepoint slow path",
                 refused.c_str());
      } else if (i > 0) {
        LOG_INFO(sub, "using %s hooks (%s)", sets[i].c_str(), refused.c_str());
      }
      return sets[i];
    }
    refused += (refused.empty() ? "" : "; ") + st.error().message;
  }
  return Error{EOPNOTSUPP, refused.empty() ? std::string(sub) + ": no hook set allowed" : refused};
}

Status attachAutoloaded(bpf_object_skeleton* skeleton, std::vector<std::string>& attached) {
  bpf_program* prog;
  bpf_object__for_each_program(prog, *skeleton->obj) {
    if (!bpf_program__autoload(prog)) continue;
    bpf_link* link = bpf_program__attach(prog);
    const char* name = bpf_program__name(prog);
    if (!link) return Error{errno, std::string("attach ") + name};
    for (int i = 0; i < skeleton->prog_cnt; i++) {
      if (strcmp(skeleton->progs[i].name, name) == 0) *skeleton->progs[i].link = link;
    }
    attached.push_back(name);
  }
  return {};
}

Result<std::string> ensureTracefs() {
  for (const char* dir : {"/sys/kernel/tracing", "/sys/kernel/debug/tracing"}) {
    struct statfs sfs;
    if (statfs(dir, &sfs) == 0 && sfs.f_type == kTracefsMagic) return std::string(dir);
  }
  const char* dir = "/sys/kernel/tracing";
  if (mount("none", dir, "tracefs", 0, nullptr) != 0) { return osError(errno, std::string("mount tracefs on ") + dir); }
  LOG_NOTICE("probe", "mounted tracefs on %s (it was not mounted; libbpf needs it for tracepoints)", dir);
  return std::string(dir);
}

uint32_t kernelDev(dev_t d) { return (static_cast<uint32_t>(major(d)) << 20) | static_cast<uint32_t>(minor(d)); }

Result<FileId> fileId(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return osError(errno, "stat " + path);
  return FileId{kernelDev(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

uint32_t pidMax() {
  std::ifstream f("/proc/sys/kernel/pid_max");
  uint64_t v = 0;
  if (f >> v && v > 0 && v <= (1u << 22)) return static_cast<uint32_t>(v);
  return 1u << 22;
}

}  // namespace dockquota
