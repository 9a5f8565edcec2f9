// SPDX-License-Identifier: Apache-2.0
#include "agent/store/events.h"

namespace dockquota {

const char* toString(Channel c) { return c == Channel::Master ? "master" : "mail"; }

bool diskEventType(const std::string& type) { return type.rfind(event_type::kDiskPrefix, 0) == 0; }

bool channelWants(Channel c, const std::string& type) {
  using namespace event_type;
  const bool person = type == kExceeded || type == kStopped || type == kRemoved || diskEventType(type);
  if (c == Channel::Master) return person;  // the master ignores every other type (spec §5)
  return person || type == kWarning;
}

}  // namespace dockquota
