// SPDX-License-Identifier: Apache-2.0
// Reconnect delays for every client that retries (Docker's event stream, the
// qman master, SMTP): exponential with full jitter, seeded per process.
#pragma once

#include <chrono>
#include <cstdint>

namespace dockquota {

// Reconnect delays: full jitter over min(cap, base * 2^attempt) (AWS architecture blog).
class Backoff {
 public:
  Backoff(std::chrono::milliseconds base, std::chrono::milliseconds cap, uint64_t seed = 0);
  std::chrono::milliseconds next();  // grows until reset()
  void reset();
  unsigned attempt() const { return attempt_; }

 private:
  std::chrono::milliseconds base_, cap_;
  unsigned attempt_ = 0;
  uint64_t state_;
};

}  // namespace dockquota
