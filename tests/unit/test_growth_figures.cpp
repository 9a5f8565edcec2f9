// SPDX-License-Identifier: Apache-2.0
// What the agent does with the growth probe's figures: deltas between two
// reads (the early signal) and sums per owner. No kernel needed.
#include <catch2/catch.hpp>

#include "agent/probes/growth_probe.h"

using namespace dockquota;

TEST_CASE("growthSince: deltas, new containers whole, re-watched ones from their new zero", "[growth]") {
  std::map<std::string, GrowthFigure> before = {{"a", {100, 2}}, {"b", {500, 5}}, {"gone", {7, 1}}};
  std::map<std::string, GrowthFigure> after = {{"a", {150, 3}}, {"b", {40, 1}}, {"new", {9, 1}}};
  auto d = growthSince(before, after);
  REQUIRE(d.size() == 3);
  CHECK(d["a"].bytes == 50);
  CHECK(d["a"].writes == 1);
  CHECK(d["b"].bytes == 40);  // went down: unwatched and watched again since
  CHECK(d["b"].writes == 1);
  CHECK(d["new"].bytes == 9);
  CHECK(d.count("gone") == 0);
}

TEST_CASE("growthByOwner: sums per uid, leaves unattributed containers out", "[growth]") {
  std::map<std::string, GrowthFigure> f = {{"a", {10, 1}}, {"b", {20, 2}}, {"c", {40, 4}}, {"x", {80, 8}}};
  auto by = growthByOwner(f, [](const std::string& id) -> std::optional<uint32_t> {
    if (id == "a" || id == "c") return 1000;
    if (id == "b") return 1001;
    return std::nullopt;
  });
  REQUIRE(by.size() == 2);
  CHECK(by[1000].bytes == 50);
  CHECK(by[1000].writes == 5);
  CHECK(by[1001].bytes == 20);
}
