// SPDX-License-Identifier: Apache-2.0
// Real docker.sock captures (tests/data/captures/*.json, one chunk per client
// syscall, as the BPF probe sees them): loading, shared by the parser and
// recogniser tests.
#pragma once

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace captures {

inline const std::string kDir = std::string(DOCKQUOTA_TEST_DATA) + "/captures";

struct Chunk {
  bool tx = true;
  uint64_t ts = 0;   // ns, never 0
  uint64_t len = 0;  // bytes the syscall moved
  std::string data;  // what the probe copied (a prefix)
};

struct Capture {
  std::string name;
  nlohmann::json expect;
  std::vector<Chunk> chunks;
};

inline std::string base64Decode(std::string_view in) {
  static const std::string kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    size_t v = kAlphabet.find(c);
    if (v == std::string::npos) continue;  // '=' padding
    acc = acc << 6 | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

inline Capture load(const std::string& name) {
  std::ifstream f(kDir + "/" + name);
  REQUIRE(f.good());
  nlohmann::json j = nlohmann::json::parse(f);
  Capture c;
  c.name = name;
  c.expect = j["expect"];
  for (const auto& ch : j["chunks"]) {
    Chunk k;
    k.tx = ch["dir"] == "tx";
    k.ts = ch["t_us"].get<uint64_t>() * 1000 + 1;
    k.len = ch["len"].get<uint64_t>();
    k.data = base64Decode(ch["b64"].get<std::string>());
    REQUIRE(k.data.size() <= k.len);
    c.chunks.push_back(std::move(k));
  }
  return c;
}

inline std::vector<std::string> names() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(kDir))
    if (e.path().extension() == ".json") out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace captures
