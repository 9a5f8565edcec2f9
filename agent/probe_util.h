// Small pieces both probes need: libbpf logging into our logger, tracefs,
// kernel dev_t encoding, monotonic->wall clock.
#pragma once

#include <cstdint>
#include <string>
#include <sys/types.h>

#include "agent/result.h"

namespace dockquota {

// Routes libbpf's messages into the agent log (debug ones only with -v).
void installLibbpfLogger();

// libbpf attaches tracepoints through tracefs; mount it when missing, as
// production agents do. Returns where it is mounted.
Result<std::string> ensureTracefs();

// The kernel's dev_t (MAJOR << 20 | MINOR), as BPF reads inode->i_sb->s_dev.
uint32_t kernelDev(dev_t user_dev);

// (dev, ino) of a path, following symlinks; ENOENT when missing.
struct FileId {
  uint32_t kdev = 0;
  uint64_t ino = 0;
};
Result<FileId> fileId(const std::string& path);

// Converts bpf_ktime_get_ns() (CLOCK_MONOTONIC) to unix seconds.
double monoToUnix(uint64_t mono_ns);
double unixNow();

// /proc/sys/kernel/pid_max, or 4194304 (the 64-bit maximum) when unreadable.
uint32_t pidMax();

}  // namespace dockquota
