// SPDX-License-Identifier: Apache-2.0
#include "agent/base/utf8.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

namespace dockquota {
namespace {

bool cont(unsigned char c) { return (c & 0xc0) == 0x80; }

// Length of the well-formed character at s[i] (Unicode Table 3-7), or 0 when
// the byte there does not start one.
size_t charLen(std::string_view s, size_t i) {
  const auto b = [&](size_t k) -> unsigned char { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0; };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return cont(b(1)) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    const unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    return b(1) >= lo && b(1) <= hi && cont(b(2)) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    const unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    return b(1) >= lo && b(1) <= hi && cont(b(2)) && cont(b(3)) ? 4 : 0;
  }
  return 0;
}

uint32_t codePoint(std::string_view s, size_t i, size_t n) {
  const auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k])); };
  switch (n) {
    case 1: return b(0);
    case 2: return (b(0) & 0x1f) << 6 | (b(1) & 0x3f);
    case 3: return (b(0) & 0x0f) << 12 | (b(1) & 0x3f) << 6 | (b(2) & 0x3f);
    default: return (b(0) & 0x07) << 18 | (b(1) & 0x3f) << 12 | (b(2) & 0x3f) << 6 | (b(3) & 0x3f);
  }
}

// Characters that would let text pretend to be something else in a terminal
// or the journal: line/paragraph separators, bidi embeddings and isolates,
// left-to-right/right-to-left marks.
bool invisibleControl(uint32_t cp) {
  return cp == 0x2028 || cp == 0x2029 || cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

}  // namespace

bool utf8Valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = charLen(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8Prefix(std::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return std::string(s);
  size_t end = 0;
  while (end < s.size()) {
    size_t n = charLen(s, end);
    if (n == 0) n = 1;
    if (end + n > max_bytes) break;
    end += n;
  }
  return std::string(s.substr(0, end));
}

std::string utf8Fix(std::string_view s) {
  if (utf8Valid(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    const size_t n = charLen(s, i);
    if (n == 0) {
      out += "\xef\xbf\xbd";  // U+FFFD
      i++;
    } else {
      out.append(s, i, n);
      i += n;
    }
  }
  return out;
}

std::string printable(std::string_view s, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(s.size(), max_bytes) + 4);
  for (size_t i = 0; i < s.size();) {
    const size_t n = charLen(s, i);
    char esc[16];
    std::string_view piece;
    if (n == 0) {
      snprintf(esc, sizeof esc, "\\x%02x", static_cast<unsigned char>(s[i]));
      piece = esc;
    } else {
      const uint32_t cp = codePoint(s, i, n);
      if (cp < 0x20 || cp == 0x7f) {
        snprintf(esc, sizeof esc, "\\x%02x", static_cast<unsigned>(cp));
        piece = esc;
      } else if ((cp >= 0x80 && cp < 0xa0) || invisibleControl(cp)) {
        snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(cp));
        piece = esc;
      } else {
        piece = s.substr(i, n);
      }
    }
    if (out.size() + piece.size() > max_bytes) {
      out += "...";
      return out;
    }
    out += piece;
    i += n == 0 ? 1 : n;
  }
  return out;
}

std::string jsonText(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace dockquota
