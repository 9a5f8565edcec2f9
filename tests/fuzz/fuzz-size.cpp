// SPDX-License-Identifier: Apache-2.0
// fuzz-size: parseSize() (cli/format.h), the human sizes `dockquotactl
// set-limit USER SIZE` reads from an admin's command line or a script.
//
// Input: the text as given. Checked: an accepted size is at most 2^63 and
// is what formatSize() gives back within its rounding (printed, then read
// again: never more than it was, less by under a tenth of it); renderTable()
// and bar() take the same text as a cell and a fraction without trouble.
#include <string>

#include "cli/format.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {

int size(const uint8_t* data, size_t n) {
  const std::string text(reinterpret_cast<const char*>(data), n);
  auto v = cli::parseSize(text);
  const std::string table = cli::renderTable({"A", "B"}, {{text, text}}, {1});
  DQ_FUZZ_CHECK(table.find('\n') != std::string::npos);
  if (!v) return 0;
  DQ_FUZZ_CHECK(*v <= (uint64_t(1) << 63));
  const std::string shown = cli::formatSize(*v);
  auto back = cli::parseSize(shown);
  DQ_FUZZ_CHECK(back.has_value());
  DQ_FUZZ_CHECK(*back <= *v);
  DQ_FUZZ_CHECK(*v - *back <= *v / 10 + 1);
  DQ_FUZZ_CHECK(cli::bar(double(*v) / 1e12, 10).size() == 12);
  return 0;
}

}  // namespace dockquota::fuzz
