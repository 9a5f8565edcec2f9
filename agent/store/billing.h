// SPDX-License-Identifier: Apache-2.0
// Who pays for an object: usage, quotas, enforcement and the API all bill by
// this one rule, without the attribution machinery (BPF event types).
#pragma once

#include <cstdint>

#include "agent/store/store.h"

namespace dockquota {

// The actor, or the login uid when root acted for a logged-in user
// (`sudo docker ...`) and the policy says so.
inline uint32_t billedUid(const Evidence& ev, bool bill_root_to_login_uid) {
  if (bill_root_to_login_uid && ev.uid == 0 && ev.login_uid && *ev.login_uid != 0) return *ev.login_uid;
  return ev.uid;
}

}  // namespace dockquota
