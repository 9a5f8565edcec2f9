// SPDX-License-Identifier: Apache-2.0
#include "agent/base/backoff.h"

#include <algorithm>
#include <random>

namespace dockquota {

namespace {
uint64_t splitmix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

// seed 0 means "seed from std::random_device": agents restarted together by a
// dockerd restart must not reconnect in lockstep.
Backoff::Backoff(std::chrono::milliseconds base, std::chrono::milliseconds cap, uint64_t seed)
    : base_(std::max(base, std::chrono::milliseconds(0))),
      cap_(std::max(cap, std::chrono::milliseconds(0))),
      state_(seed) {
  if (state_ == 0) {
    std::random_device rd;
    state_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
}

std::chrono::milliseconds Backoff::next() {
  const uint64_t base = static_cast<uint64_t>(base_.count());
  const uint64_t cap = static_cast<uint64_t>(cap_.count());
  uint64_t ceiling = cap;  // min(cap, base * 2^attempt) without overflowing
  if (attempt_ < 63 && base <= (cap >> attempt_)) ceiling = base << attempt_;
  // Lemire's multiply-shift maps 64 random bits onto [0, ceiling].
  uint64_t r = splitmix64(&state_);
  uint64_t v = static_cast<uint64_t>((static_cast<unsigned __int128>(r) * (ceiling + 1)) >> 64);
  if (attempt_ < 1000) ++attempt_;
  return std::chrono::milliseconds(static_cast<int64_t>(v));
}

void Backoff::reset() { attempt_ = 0; }

}  // namespace dockquota
