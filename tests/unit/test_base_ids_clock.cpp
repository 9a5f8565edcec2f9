// SPDX-License-Identifier: Apache-2.0
// agent/base's one shortId() and one clock module, which replaced private
// copies in the attributor, the enforcer, the mailer, runtime and main.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>

#include "agent/base/clock.h"
#include "agent/base/short_id.h"

using namespace dockquota;

TEST_CASE("shortId: Docker's 12 digits, without an image's sha256:", "[base]") {
  const std::string hex(64, 'a');
  CHECK(shortId(hex) == std::string(12, 'a'));
  CHECK(shortId("sha256:" + std::string(60, 'b') + "cdef") == std::string(12, 'b'));
  CHECK(shortId("abc") == "abc");  // a short name stays whole
  CHECK(shortId("") == "");
  CHECK(shortId("my-volume-name-long") == "my-volume-na");
}

TEST_CASE("clock: the probes' monotonic time converts to the wall clock", "[base]") {
  const double wall = unixNow();
  const uint64_t mono = monotonicNs();
  CHECK(std::fabs(monoToUnix(mono) - wall) < 0.5);
  CHECK(std::fabs(monoToUnix(mono - 2'000'000'000ull) - (wall - 2)) < 0.5);
  CHECK(monotonicNs() >= mono);
  CHECK(secondsSince(std::chrono::steady_clock::now() - std::chrono::seconds(3)) >= 3.0);
}
