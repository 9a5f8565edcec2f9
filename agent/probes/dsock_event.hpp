// SPDX-License-Identifier: Apache-2.0
// C++ view of bpf/dsock.h events (the struct itself is never re-declared).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <cstring>

#include <linux/types.h>  // before dsock.h, which has no includes

#include "dsock.h"

namespace dockquota {

enum class DsockEventType : uint32_t {
  Connect = DSOCK_EV_CONNECT,
  Tx = DSOCK_EV_TX,
  Rx = DSOCK_EV_RX,
  Close = DSOCK_EV_CLOSE,
  Exit = DSOCK_EV_EXIT,
};

inline const char* toString(DsockEventType t) {
  switch (t) {
    case DsockEventType::Connect: return "connect";
    case DsockEventType::Tx: return "tx";
    case DsockEventType::Rx: return "rx";
    case DsockEventType::Close: return "close";
    case DsockEventType::Exit: return "exit";
  }
  return "?";
}

// One event, borrowed from the ring buffer for the duration of a callback.
struct DsockEventView {
  const dsock_event* raw;
  DsockEventType type() const { return static_cast<DsockEventType>(raw->type); }
  std::string_view data() const { return {reinterpret_cast<const char*>(raw->data), raw->cap_len}; }
  std::string comm() const { return std::string(raw->comm, strnlen(raw->comm, sizeof raw->comm)); }
};

// Kernel-side counter names, in DSOCK_CTR_* order (DSOCK_CTR_LIST).
inline constexpr const char* kDsockCounterNames[DSOCK_CTR_MAX] = {
    "ringbuf_full", "read_fail", "track_full", "unsupported_call", "truncated_calls",
    "stale_fd",     "events",    "connects",   "sock_reused",      "ignored_calls",
};

}  // namespace dockquota
