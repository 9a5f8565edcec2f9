// SPDX-License-Identifier: Apache-2.0
// The pure parts of the command-line clients: human sizes (parsed and
// printed), plain-text tables, the usage bar and reading reply fields. No I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dockquota::cli {

// "50G", "1.5T", "500M", "1024", "2.5 GiB", "10k" -> bytes. Units are binary
// (K = 1024, as Docker's own `--memory 1g` and qman's limits read them);
// "B", "iB" after the letter are accepted and mean the same. At most 3
// decimals; nullopt for anything else (empty, negative, junk, over 2^63).
std::optional<uint64_t> parseSize(std::string_view text);

// Bytes as "1.5G", "500M", "0B": the largest unit with at least 1 of it,
// one decimal when under 10 of it.
std::string formatSize(uint64_t bytes);

// A fixed-width bar of `width` cells for `fraction` (0..1, clamped),
// "[#########-----------]"; past 1 the last cell is '!'.
std::string bar(double fraction, int width = 30);

// Columns padded to their widest cell, two spaces apart; columns listed in
// `right` are right-aligned (numbers). Cells are printed as given (control
// bytes replaced by '?': names come from users).
std::string renderTable(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows,
                        const std::vector<size_t>& right = {});

// A reply's field as text: "" when absent or null, numbers as JSON prints them.
std::string str(const nlohmann::json& j, const char* key);
// A reply's unsigned field; 0 when absent or not one.
uint64_t num(const nlohmann::json& j, const char* key);

// An object id as `docker ps` prints it: a 64-digit id (with or without
// "sha256:") cut to 12; anything else (a volume's name) whole. The agent's
// logs use agent/base/short_id.h, which always cuts: there the text can be
// hostile and long, here the reply's names are shown to their owner.
std::string displayId(std::string id);

}  // namespace dockquota::cli
