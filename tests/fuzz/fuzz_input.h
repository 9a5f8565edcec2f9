// SPDX-License-Identifier: Apache-2.0
// Shared by the libFuzzer targets (tests/fuzz/fuzz-*.cpp) and the unit suite
// that replays their corpora and regression inputs (tests/unit/test_fuzz_replay.cpp):
// a reader that turns fuzz bytes into values, the matching writer that builds
// seed inputs, and the invariant check.
//
// Every read succeeds: past the end of the input a reader returns zeros and
// empty strings, so a harness never has to check for truncation (the input is
// a prefix of a longer, valid one).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

// A broken invariant is a finding like a sanitizer report: print it and abort
// (libFuzzer saves the input; the unit replay fails).
#define DQ_FUZZ_CHECK(cond)                                                                    \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "fuzz: invariant failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

namespace dockquota::fuzz {

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  bool empty() const { return n_ == 0; }
  size_t remaining() const { return n_; }

  uint8_t u8() {
    if (n_ == 0) return 0;
    --n_;
    return *p_++;
  }
  uint16_t u16() {  // little endian
    uint16_t lo = u8();
    return static_cast<uint16_t>(lo | u8() << 8);
  }
  uint32_t u32() {
    uint32_t lo = u16();
    return lo | static_cast<uint32_t>(u16()) << 16;
  }
  uint64_t u64() {
    uint64_t lo = u32();
    return lo | static_cast<uint64_t>(u32()) << 32;
  }
  // Up to `want` bytes (fewer at the end of the input).
  std::string_view bytes(size_t want) {
    size_t k = std::min(want, n_);
    std::string_view s(reinterpret_cast<const char*>(p_), k);
    p_ += k;
    n_ -= k;
    return s;
  }
  // A string with a 16-bit length prefix, at most `max` bytes long.
  std::string_view str(size_t max = 0xffff) { return bytes(std::min<size_t>(u16(), max)); }
  std::string_view rest() { return bytes(n_); }

 private:
  const uint8_t* p_;
  size_t n_;
};

// Builds inputs that Reader reads back (seed corpora).
class Writer {
 public:
  Writer& u8(uint8_t v) {
    out_.push_back(static_cast<char>(v));
    return *this;
  }
  Writer& u16(uint16_t v) { return u8(v & 0xff).u8(v >> 8); }
  Writer& u32(uint32_t v) { return u16(v & 0xffff).u16(v >> 16); }
  Writer& u64(uint64_t v) { return u32(static_cast<uint32_t>(v)).u32(static_cast<uint32_t>(v >> 32)); }
  Writer& bytes(std::string_view s) {
    out_.append(s);
    return *this;
  }
  Writer& str(std::string_view s) {  // callers keep s within 0xffff bytes
    return u16(static_cast<uint16_t>(s.size())).bytes(s.substr(0, 0xffff));
  }
  const std::string& data() const { return out_; }

 private:
  std::string out_;
};

}  // namespace dockquota::fuzz
