// SPDX-License-Identifier: Apache-2.0
#include "agent/base/base64.h"

#include <openssl/evp.h>

#include <algorithm>

namespace dockquota {

// EVP_EncodeBlock and EVP_DecodeBlock take an int length: long input goes in
// pieces of whole 3-byte (4-character) groups, so no padding lands in the middle.
constexpr size_t kPiece = 3 << 10;

std::string base64Encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  unsigned char buf[kPiece / 3 * 4 + 1];  // + the NUL EVP_EncodeBlock writes
  for (size_t i = 0; i < in.size(); i += kPiece) {
    const size_t n = std::min(kPiece, in.size() - i);
    const int len = EVP_EncodeBlock(buf, reinterpret_cast<const unsigned char*>(in.data() + i), static_cast<int>(n));
    out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(len));
  }
  return out;
}

std::optional<std::string> base64Decode(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  // '=' only as the last one or two characters (EVP_DecodeBlock would take
  // "QQ==QQ==" as two groups).
  const size_t eq = in.find('=');
  if (eq != std::string_view::npos && (eq + 2 < in.size() || in.find_first_not_of('=', eq) != std::string_view::npos))
    return std::nullopt;
  // EVP_DecodeBlock trims whitespace at a piece's ends: refuse it up front.
  for (char c : in.substr(0, eq == std::string_view::npos ? in.size() : eq)) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
    if (!ok) return std::nullopt;
  }
  std::string out;
  out.reserve(in.size() / 4 * 3);
  constexpr size_t kChars = kPiece / 3 * 4;
  unsigned char buf[kPiece];
  for (size_t i = 0; i < in.size(); i += kChars) {
    const size_t n = std::min(kChars, in.size() - i);
    const int len = EVP_DecodeBlock(buf, reinterpret_cast<const unsigned char*>(in.data() + i), static_cast<int>(n));
    if (len < 0) return std::nullopt;
    out.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(len));
  }
  // EVP_DecodeBlock keeps the bytes that '=' padding stands for.
  if (!in.empty() && in.back() == '=') out.pop_back();
  if (in.size() >= 2 && in[in.size() - 2] == '=') out.pop_back();
  return out;
}

}  // namespace dockquota
