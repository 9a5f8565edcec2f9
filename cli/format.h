// SPDX-License-Identifier: Apache-2.0
// The pure parts of the command-line clients: human sizes (parsed and
// printed), plain-text tables and the usage bar. No I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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

}  // namespace dockquota::cli
