// SPDX-License-Identifier: Apache-2.0
#include "agent/base/clock.h"

#include <ctime>

namespace dockquota {

double unixNow() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

}  // namespace dockquota
