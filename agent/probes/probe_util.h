// SPDX-License-Identifier: Apache-2.0
// Small pieces both probes need: libbpf logging into our logger, tracefs,
// kernel dev_t encoding, monotonic->wall clock.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <sys/types.h>
#include <vector>

#include "agent/base/clock.h"
#include "agent/base/result.h"

struct bpf_object_skeleton;

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

// The hook-set choice of the probes that watch syscalls (dsock, growth).
// A probe has several sets of programs for the same job, `sets`, cheapest for
// the rest of the host first; the last one works wherever BTF does. `hook` is
// "auto" or a set's name: a named set must load, or it is an error; "auto"
// tries the first `auto_count` sets in turn, logging each refusal as a
// warning, and fails with all the reasons when none loads. Returns the set in
// use; `refused` gets "set: why" for each set passed over. `sub` names the
// probe in errors. (The costs: any syscall tracepoint puts every syscall of
// every process on the tracepoint slow path; fexit runs only on the hooked
// functions, but is refused under lockdown.)
Result<std::string> loadHookSet(const char* sub, const std::string& hook, const std::vector<std::string>& sets,
                                size_t auto_count, const std::function<Status(const std::string& set)>& load,
                                std::string& refused);

// Attaches every program set to autoload, one by one so that an error names
// the program (Error{errno, "attach <name>"}); the links go into the
// skeleton's slots, which it destroys. Appends the attached names.
Status attachAutoloaded(bpf_object_skeleton* skeleton, std::vector<std::string>& attached);

// /proc/sys/kernel/pid_max, or 4194304 (the 64-bit maximum) when unreadable.
uint32_t pidMax();

}  // namespace dockquota
