// SPDX-License-Identifier: Apache-2.0
// The agent's clocks, one place for each: wall-clock time as the store and
// the API keep it (unix seconds, double), the probes' clock (CLOCK_MONOTONIC,
// which bpf_ktime_get_ns() reads) and the conversion between them.
#pragma once

#include <chrono>
#include <cstdint>

namespace dockquota {

double unixNow();

// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns(), which
// stamps the probes' events (the connection tracker's deadlines compare them).
uint64_t monotonicNs();

// Converts a CLOCK_MONOTONIC time (bpf_ktime_get_ns()) to unix seconds, with
// the offset between the two clocks as it is now.
double monoToUnix(uint64_t mono_ns);

// Seconds elapsed on the steady clock since `t` (durations in log lines).
double secondsSince(std::chrono::steady_clock::time_point t);

}  // namespace dockquota
