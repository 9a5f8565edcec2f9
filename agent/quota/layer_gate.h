// SPDX-License-Identifier: Apache-2.0
// Holds Docker's mount of a new container layer until the layer carries its
// owner's project, so no start can win the race against the tag.
//
// overlay2 reads <root>/lower right before every mount of a layer, holding
// the layer's lock (moby daemon/graphdriver/overlay2 Get()): a fanotify
// FAN_OPEN_PERM mark on <root> (FAN_EVENT_ON_CHILD) makes that read wait for
// our answer. While it waits no mount or unmount of the layer can be in
// progress, so the tag is safe whatever work/work says. Every answer is
// FAN_ALLOW: the gate only ever delays, never refuses; a layer it cannot tag
// within `hold` goes through (counted), and each layer is held at most once
// past its tag or timeout (its mark is removed then).
//
// Two threads, so that nothing deadlocks: the gate's own thread only answers
// (it never opens a file under a marked root: its own opens would wait for
// itself), and the tagger (ProjectQuotas' watch thread) tags, whose opens
// under the root the gate answers at once (they are our pid's).
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "agent/base/result.h"
#include "agent/base/worker.h"

namespace dockquota {

struct LayerGateStats {
  std::atomic<uint64_t> guarded{0};     // layer roots marked
  std::atomic<uint64_t> held{0};        // mounts held until the tag (or the timeout)
  std::atomic<uint64_t> timeouts{0};    // held mounts let through untagged after `hold`
  std::atomic<uint64_t> passed{0};      // other opens under a marked root, answered at once
  std::atomic<uint64_t> errors{0};      // a mark or an answer failed
  std::atomic<double> longest_hold{0};  // seconds
};

class LayerGate {
 public:
  struct Options {
    std::chrono::milliseconds hold{1000};  // longest a mount waits for its tag
    size_t max_layers = 4096;              // roots guarded at once (creates in flight, with margin)
  };
  // on_held(root): a mount of `root` waits now. Called on the
  // gate's thread: must return at once (queue the work for the tagger).
  using HeldFn = std::function<void(const std::string& root)>;

  // fanotify_init(FAN_CLASS_CONTENT): needs CAP_SYS_ADMIN and a kernel with
  // CONFIG_FANOTIFY_ACCESS_PERMISSIONS; the error says which is missing.
  static Result<std::unique_ptr<LayerGate>> open(Options options, HeldFn on_held);
  ~LayerGate();

  void start();
  void stop();  // lets every held mount through

  // Holds the mounts of this layer root from now on, until release().
  Status guard(const std::string& root);
  // The layer is tagged (or will not be): its held mount goes on, and later
  // ones are not held.
  void release(const std::string& root);
  bool guarded(const std::string& root) const;
  // Lets the mounts of `root` held now go on, and keeps holding later ones
  // (Docker's create mounts a new layer more than once before it replies).
  void pass(const std::string& root);

  const LayerGateStats& stats() const { return stats_; }

 private:
  struct Held {
    int fd;
    std::string root;
    std::chrono::steady_clock::time_point since;
  };
  LayerGate(int fan_fd, int wake_fd, Options options, HeldFn on_held);
  void run();
  void readEvents();
  void answer(int fd);
  void answerDue(bool all);

  const int fan_fd_;
  const int wake_fd_;  // eventfd: a release, or stop
  const Options opt_;
  HeldFn on_held_;
  LayerGateStats stats_;
  mutable std::mutex mu_;
  std::set<std::string> guarded_;
  std::set<std::string> released_;  // since the gate's thread last looked (released or passed)
  bool stop_ = false;
  std::vector<Held> held_;  // the gate's thread only
  Worker worker_;
};

}  // namespace dockquota
