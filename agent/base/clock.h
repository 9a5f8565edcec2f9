// SPDX-License-Identifier: Apache-2.0
// Wall-clock time as the store and the API keep it: unix seconds, double.
#pragma once

namespace dockquota {

double unixNow();

}  // namespace dockquota
