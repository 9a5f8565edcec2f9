// SPDX-License-Identifier: Apache-2.0
// The command-line clients' pure parts (cli/format.h): human sizes both
// ways, the usage bar and tables.
#include <catch2/catch.hpp>

#include "cli/format.h"

using namespace dockquota::cli;

TEST_CASE("cli: human sizes are read in binary units", "[cli]") {
  CHECK(parseSize("50G") == 50ull << 30);
  CHECK(parseSize("1.5T") == 3ull << 39);
  CHECK(parseSize("500M") == 500ull << 20);
  CHECK(parseSize("1024") == 1024);
  CHECK(parseSize("0") == 0);
  CHECK(parseSize("10k") == 10240);
  CHECK(parseSize("2.5 GiB") == 5ull << 29);
  CHECK(parseSize("2.5GB") == 5ull << 29);
  CHECK(parseSize(" 7m ") == 7ull << 20);
  CHECK(parseSize("1.125K") == 1152);
  CHECK(parseSize("8E") == 1ull << 63);
  for (const char* bad : {"", " ", "G", "-1G", "1.2.3G", ".5G", "5.G", "1.1255K", "9E", "50X", "50GG", "50 G B", "1e9",
                          "0x10", "12345678901234567890", "50Gi", "+5G", "5\nG"}) {
    INFO(bad);
    CHECK_FALSE(parseSize(bad).has_value());
  }
}

TEST_CASE("cli: sizes print short and read back", "[cli]") {
  CHECK(formatSize(0) == "0B");
  CHECK(formatSize(1023) == "1023B");
  CHECK(formatSize(1024) == "1.0K");
  CHECK(formatSize(1536ull << 20) == "1.5G");
  CHECK(formatSize(50ull << 30) == "50G");
  CHECK(formatSize((10ull << 30) - 1) == "9.9G");  // rounded down: never more than there is
  CHECK(formatSize(UINT64_MAX) == "15E");
  for (uint64_t v : {1ull, 999ull, 4096ull, 123456789ull, 5ull << 40}) {
    auto back = parseSize(formatSize(v));
    REQUIRE(back);
    CHECK(*back <= v);
    CHECK(v - *back <= v / 10 + 1);
  }
}

TEST_CASE("cli: the usage bar", "[cli]") {
  CHECK(bar(0, 10) == "[----------]");
  CHECK(bar(0.5, 10) == "[#####-----]");
  CHECK(bar(1, 10) == "[##########]");
  CHECK(bar(1.7, 10) == "[#########!]");
  CHECK(bar(-3, 4) == "[----]");
  CHECK(bar(0.0 / 0.0, 4) == "[----]");
}

TEST_CASE("cli: tables pad columns, align numbers right, neuter control bytes", "[cli]") {
  const std::string t = renderTable({"NAME", "SIZE"}, {{"alice-c", "1.5G"}, {"b", "12M"}}, {1});
  CHECK(t ==
        "NAME     SIZE\n"
        "alice-c  1.5G\n"
        "b         12M\n");
  // A name with a terminal escape is shown, not obeyed; UTF-8 counts one column per character.
  const std::string e = renderTable({"N", "X"}, {{"\x1b[2Jé", "1"}});
  CHECK(e.find('\x1b') == std::string::npos);
  CHECK(e == "N      X\n?[2Jé  1\n");
  CHECK(renderTable({"A"}, {}) == "A\n");
}

TEST_CASE("cli: ids shown short, names whole; reply fields read safely", "[cli]") {
  const std::string hex(64, 'a');
  CHECK(displayId(hex) == "aaaaaaaaaaaa");
  CHECK(displayId("sha256:" + hex) == "aaaaaaaaaaaa");
  CHECK(displayId("my-volume") == "my-volume");
  CHECK(displayId("sha256:short") == "short");
  // As a reply parses: 7 is an unsigned number there, -1 a signed one.
  const auto j = nlohmann::json::parse(R"({"s": "x", "n": 7, "neg": -1, "null": null})");
  CHECK(str(j, "s") == "x");
  CHECK(str(j, "n") == "7");
  CHECK(str(j, "null").empty());
  CHECK(str(j, "absent").empty());
  CHECK(num(j, "n") == 7);
  CHECK(num(j, "neg") == 0);
  CHECK(num(j, "s") == 0);
}
