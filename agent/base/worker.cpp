// SPDX-License-Identifier: Apache-2.0
#include "agent/base/worker.h"

#include <pthread.h>

#include <utility>

namespace dockquota {

bool Worker::start(std::string name, std::function<void()> body, std::function<void()> wake) {
  if (thread_.joinable()) return false;
  if (name.size() > kMaxName) name.resize(kMaxName);
  wake_ = std::move(wake);
  // Named from inside: on its own thread glibc uses prctl(PR_SET_NAME), which
  // needs no /proc/self/task (the sandbox may hide it); a name longer than 15
  // would be refused (ERANGE), not cut, hence the resize above.
  thread_ = std::jthread([name = std::move(name), body = std::move(body)] {
    pthread_setname_np(pthread_self(), name.c_str());
    body();
  });
  return true;
}

void Worker::requestStop() {
  // request_stop() is true for the first request only: the wake runs once per thread.
  if (thread_.joinable() && thread_.request_stop() && wake_) wake_();
}

void Worker::stop() {
  requestStop();
  if (thread_.joinable() && !onThisThread()) thread_.join();
}

}  // namespace dockquota
