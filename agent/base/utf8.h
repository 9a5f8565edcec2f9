// SPDX-License-Identifier: Apache-2.0
// Text that came from outside (a client's path or query, a process's comm or
// exe, a Docker name, a row an older agent stored) made safe for the three
// places that choke on it:
//   - JSON: nlohmann's dump() throws on invalid UTF-8 (type_error.316), which
//     turned 3,865 of ~1 M fuzzed requests into 500s: every dump
//     of text that may hold outside bytes goes through jsonText();
//   - stored text: cut with utf8Prefix(), never in the middle of a character
//     (an exemption reason cut at byte 500 broke GET /api/v1/exemptions until
//     the row was deleted);
//   - error messages and logs: printable() escapes control bytes and invalid
//     UTF-8 as \xNN and bounds the length (an admin greps the journal; a
//     client's "\n<3>..." must not forge a line).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace dockquota {

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points
// above U+10FFFF, as nlohmann and RFC 3629 require).
bool utf8Valid(std::string_view s);

// The longest prefix of `s` of at most `max_bytes` that does not end inside a
// well-formed character (a byte of an ill-formed sequence counts as one unit).
// Valid input gives valid output.
std::string utf8Prefix(std::string_view s, size_t max_bytes);

// `s` with every ill-formed sequence replaced by U+FFFD (text read back from
// an older database, or from the kernel, before it is served).
std::string utf8Fix(std::string_view s);

// For error messages and logs: valid UTF-8 in which control characters (C0,
// DEL, C1), line and paragraph separators, bidi controls and every byte of an
// ill-formed sequence are written as \xNN (\u{NNNN} for the multi-byte ones).
// At most `max_bytes` of output (not counting the "..." that marks a cut),
// never cut inside a character or an escape. Printable text comes out unchanged.
std::string printable(std::string_view s, size_t max_bytes = static_cast<size_t>(-1));

// How much of a client's input an error message echoes back: enough to
// recognise it, not a 1 MiB echo.
constexpr size_t kEchoBytes = 128;

// JSON text of `j` with ill-formed UTF-8 in strings replaced by U+FFFD: never
// throws for bytes from outside. `indent` as in nlohmann::json::dump.
std::string jsonText(const nlohmann::json& j, int indent = -1);

}  // namespace dockquota
