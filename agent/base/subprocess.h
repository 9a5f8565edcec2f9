// SPDX-License-Identifier: Apache-2.0
// Runs a helper program (the `zfs` CLI) without a shell: an argv, stdin from
// /dev/null, stdout and stderr captured up to a cap, killed at a deadline.
// Hostile or broken output can cost at most `max_output` bytes per stream and
// `timeout` of one caller's time; nothing is ever parsed by a shell.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "agent/base/result.h"

namespace dockquota {

struct RunLimits {
  std::chrono::milliseconds timeout{10000};
  size_t max_output = 16u << 20;  // per stream; past it the child is killed
};

struct RunOutput {
  int exit_code = -1;  // the exit status; -1 when killed by a signal
  int signal = 0;      // the signal that ended it, 0 if it exited
  std::string out;
  std::string err;
};

// Spawns argv[0] (an absolute path, or looked up in PATH) with argv, the
// agent's environment plus LC_ALL=C (messages and number formats as the
// parsers expect), waits for it. Errors (not a non-zero exit, which is in
// RunOutput): it cannot be started (ENOENT: no such binary), it ran past
// the deadline (ETIMEDOUT) or wrote more than the cap (EFBIG); in the last
// two cases it was killed (SIGKILL) and reaped.
Result<RunOutput> runProgram(const std::vector<std::string>& argv, const RunLimits& limits);

}  // namespace dockquota
