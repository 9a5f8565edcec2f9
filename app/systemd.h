// SPDX-License-Identifier: Apache-2.0
// The parts of systemd's service protocol the agent speaks, without
// libsystemd: readiness and watchdog notifications (Type=notify,
// WatchdogSec=) and sockets passed by socket activation (LISTEN_FDS).
#pragma once

#include <chrono>
#include <string>

namespace dockquota {

// One datagram to $NOTIFY_SOCKET ("READY=1", "WATCHDOG=1", ...); nothing
// when systemd did not start us.
void sdNotify(const char* state);

// The interval at which to send WATCHDOG=1: half of $WATCHDOG_USEC, as
// sd_watchdog_enabled(3) advises; zero when systemd set no watchdog for us
// (WatchdogSec= unset, or $WATCHDOG_PID names another process).
std::chrono::milliseconds watchdogInterval();

// The listening socket systemd passed under FileDescriptorName=`name` (or
// the only one passed, when it named none), else -1. The first call takes
// every passed fd (LISTEN_PID must be ours) and clears LISTEN_* from the
// environment, so no child inherits them (as sd_listen_fds(1) does).
int inheritedSocket(const std::string& name);

}  // namespace dockquota
