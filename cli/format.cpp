// SPDX-License-Identifier: Apache-2.0
#include "cli/format.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>

namespace dockquota::cli {
namespace {

int shiftOf(char unit) {
  switch (unit) {
    case 'k':
    case 'K': return 10;
    case 'm':
    case 'M': return 20;
    case 'g':
    case 'G': return 30;
    case 't':
    case 'T': return 40;
    case 'p':
    case 'P': return 50;
    case 'e':
    case 'E': return 60;
    default: return -1;
  }
}

// The unit part after the number: "", "B", "K", "KB", "KiB" (any case).
std::optional<int> unitShift(std::string_view u) {
  if (u.empty() || u == "b" || u == "B") return 0;
  const int shift = shiftOf(u[0]);
  if (shift < 0) return std::nullopt;
  u.remove_prefix(1);
  if (u.empty() || u == "b" || u == "B" || u == "ib" || u == "iB" || u == "Ib" || u == "IB") return shift;
  return std::nullopt;
}

size_t displayWidth(const std::string& s) {
  size_t w = 0;
  for (unsigned char c : s)
    if ((c & 0xc0) != 0x80) w++;  // UTF-8 lead bytes only: one column per character
  return w;
}

std::string clean(const std::string& s) {
  std::string out = s;
  for (char& c : out)
    if ((unsigned char)c < 0x20 || c == 0x7f) c = '?';
  return out;
}

}  // namespace

std::optional<uint64_t> parseSize(std::string_view t) {
  while (!t.empty() && t.front() == ' ') t.remove_prefix(1);
  while (!t.empty() && t.back() == ' ') t.remove_suffix(1);
  if (t.empty() || t.size() > 32) return std::nullopt;
  uint64_t whole = 0;
  size_t i = 0;
  for (; i < t.size() && t[i] >= '0' && t[i] <= '9'; i++) {
    if (whole > (UINT64_MAX - 9) / 10) return std::nullopt;
    whole = whole * 10 + uint64_t(t[i] - '0');
  }
  if (i == 0) return std::nullopt;  // no digits first: "", ".5", "-1", "G"
  uint64_t frac = 0, scale = 1;
  if (i < t.size() && t[i] == '.') {
    size_t digits = 0;
    for (i++; i < t.size() && t[i] >= '0' && t[i] <= '9'; i++, digits++) {
      if (digits == 3) return std::nullopt;
      frac = frac * 10 + uint64_t(t[i] - '0');
      scale *= 10;
    }
    if (digits == 0) return std::nullopt;
  }
  std::string_view unit = t.substr(i);
  if (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  auto shift = unitShift(unit);
  if (!shift) return std::nullopt;
  constexpr uint64_t kMax = uint64_t(1) << 63;
  if (*shift && whole > (kMax >> *shift)) return std::nullopt;
  const uint64_t whole_bytes = whole << *shift;
  if (whole_bytes > kMax) return std::nullopt;
  // frac/scale of a unit, rounded down to a byte: < 2^60 * 1000 would overflow,
  // so divide first (a unit is a power of two, scale a power of ten).
  const uint64_t unit_bytes = uint64_t(1) << *shift;
  const uint64_t frac_bytes = unit_bytes / scale * frac + unit_bytes % scale * frac / scale;
  if (frac_bytes > kMax - whole_bytes) return std::nullopt;
  return whole_bytes + frac_bytes;
}

// Integers only: a double rounds 2^64 - 1 up to 2^64, which would print more than there is.
std::string formatSize(uint64_t bytes) {
  static const char* kUnits[] = {"B", "K", "M", "G", "T", "P", "E"};
  int u = 0;
  while (u < 6 && (bytes >> (10 * (u + 1))) > 0) u++;
  char buf[32];
  const uint64_t whole = bytes >> (10 * u);
  if (u == 0 || whole >= 10) {
    snprintf(buf, sizeof buf, "%llu%s", (unsigned long long)whole, kUnits[u]);
  } else {
    const uint64_t rest = bytes & ((uint64_t(1) << (10 * u)) - 1);
    const auto tenths = static_cast<unsigned>((static_cast<unsigned __int128>(rest) * 10) >> (10 * u));
    snprintf(buf, sizeof buf, "%llu.%u%s", (unsigned long long)whole, tenths, kUnits[u]);
  }
  return buf;
}

std::string bar(double fraction, int width) {
  if (width < 1) width = 1;
  if (!(fraction >= 0)) fraction = 0;  // NaN too
  const bool over = fraction > 1;
  const int full = int(std::lround(std::min(fraction, 1.0) * width));
  std::string b = "[" + std::string(size_t(full), '#') + std::string(size_t(width - full), '-') + "]";
  if (over) b[size_t(width)] = '!';
  return b;
}

std::string renderTable(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                        const std::vector<size_t>& right) {
  std::vector<size_t> w(header.size(), 0);
  auto widen = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size() && i < w.size(); i++) w[i] = std::max(w[i], displayWidth(clean(r[i])));
  };
  widen(header);
  for (const auto& r : rows) widen(r);
  std::string out;
  auto line = [&](const std::vector<std::string>& r) {
    std::string l;
    for (size_t i = 0; i < w.size(); i++) {
      const std::string cell = i < r.size() ? clean(r[i]) : "";
      const std::string pad(w[i] - displayWidth(cell), ' ');
      const bool rightAligned = std::find(right.begin(), right.end(), i) != right.end();
      l += rightAligned ? pad + cell : cell + (i + 1 < w.size() ? pad : "");
      if (i + 1 < w.size()) l += "  ";
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    out += l + "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
  return out;
}

std::string str(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

uint64_t num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_unsigned() ? it->get<uint64_t>() : 0;
}

std::string displayId(std::string id) {
  if (id.rfind("sha256:", 0) == 0) id = id.substr(7);
  return id.size() == 64 ? id.substr(0, 12) : id;
}

}  // namespace dockquota::cli
