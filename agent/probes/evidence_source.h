// SPDX-License-Identifier: Apache-2.0
// Where attribution evidence comes from: kernel probes today (the docker.sock
// capture, the docker client execs), audit records next. The agent drains
// every source, in the order it was given them, before it acts on what they
// said (a client's exec precedes its connect), and /healthz shows each one's
// own report under its name.
#pragma once

#include "agent/base/health.h"
#include "agent/base/result.h"

namespace dockquota {

class EvidenceSource {
 public:
  virtual ~EvidenceSource() = default;
  // Its key in /healthz "probes".
  virtual const char* name() const = 0;
  // Hands every record waiting in the source to its handler, on the calling
  // thread; the number handed.
  virtual Result<int> consume() = 0;
  // What it is attached to and what it lost; degraded for any loss.
  virtual Health health() const = 0;
};

}  // namespace dockquota
