// SPDX-License-Identifier: Apache-2.0
// Sizes as people read them, in mails, logs and Docker's error messages.
#pragma once

#include <cstdint>
#include <string>

namespace dockquota {

// "9.3 GiB": binary units, one decimal below 100 of a unit.
std::string humanBytes(uint64_t bytes);

}  // namespace dockquota
