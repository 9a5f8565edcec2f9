// SPDX-License-Identifier: Apache-2.0
// Pieces the benchmark programs share.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "agent/usage/usage.h"

namespace dockquota::bench {

// Figures made up by the benchmark, measured once: the first measure() hands
// them over instead of keeping a copy the real source (Docker) would not hold.
class SyntheticSource : public UsageSource {
 public:
  explicit SyntheticSource(UsageFigures f) : f_(std::move(f)) {}
  const char* name() const override { return "synthetic"; }
  Result<UsageFigures> measure() override { return std::move(f_); }

 private:
  UsageFigures f_;
};

// The p-quantile (0..1) of the samples.
inline double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// A step that fails makes every figure after it meaningless: stop there, saying which.
template <typename R>
void must(const R& r, const char* what) {
  if (r.ok()) return;
  std::fprintf(stderr, "bench: %s: %s\n", what, r.error().message.c_str());
  std::exit(1);
}

}  // namespace dockquota::bench
