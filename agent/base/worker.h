// SPDX-License-Identifier: Apache-2.0
// Worker: one background thread and its lifetime, the same for every service.
//
// start() runs a body on a thread named after its job ("dq-usage"), so top -H,
// ps -L, gdb and /proc/<pid>/task/*/comm tell the loops apart. stop() asks the
// body to return through the owner's own wake-up (its stop flag set under its
// mutex and a condition variable notified, or an eventfd written: the wake
// given to start()) and joins, once. The owner keeps its loop and its flags;
// only the start/stop/join pattern lives here.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <thread>

namespace dockquota {

class Worker {
 public:
  // The kernel keeps 15 characters of a thread name (TASK_COMM_LEN 16 with the NUL).
  static constexpr size_t kMaxName = 15;

  Worker() = default;
  Worker(Worker&&) = default;  // a pool of them lives in a vector
  Worker& operator=(Worker&&) = delete;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() { stop(); }

  // Runs `body` on a new thread named `name` (cut to kMaxName). `wake` must
  // make `body` return soon; stop() calls it. False, and nothing started,
  // while a thread started earlier has not been joined yet.
  bool start(std::string name, std::function<void()> body, std::function<void()> wake = {});

  // Calls wake, once per start(); does not wait. A no-op when not running.
  void requestStop();

  // requestStop(), then join. Idempotent, and a no-op when never started.
  // From the body itself it only requests: the owner's next stop() (or the
  // destructor) joins.
  void stop();

  bool running() const { return thread_.joinable(); }
  // True on the worker's own thread (a callback of the body calling its owner's stop()).
  bool onThisThread() const { return thread_.get_id() == std::this_thread::get_id(); }

 private:
  std::jthread thread_;
  std::function<void()> wake_;
};

}  // namespace dockquota
