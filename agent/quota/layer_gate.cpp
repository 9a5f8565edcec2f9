// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/layer_gate.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "agent/base/log.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "layer-gate";
// Opens under a marked root: the layer's small files (link, lower), its
// diff/ and work/ directories. Only the read of "lower" comes before a mount.
constexpr const char* kMountRead = "/lower";

std::string pathOf(int fd) {
  char link[64], buf[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, buf, sizeof buf - 1);
  if (n <= 0) return "";
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace

Result<std::unique_ptr<LayerGate>> LayerGate::open(Options options, HeldFn on_held) {
  const int fan = fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY | O_LARGEFILE | O_CLOEXEC);
  if (fan < 0) {
    const int e = errno;
    return osError(e, std::string("layer-gate: fanotify_init(FAN_CLASS_CONTENT)") +
                          (e == EINVAL  ? " (kernel without CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"
                           : e == EPERM ? " (needs CAP_SYS_ADMIN, and fanotify_init in the unit's SystemCallFilter)"
                                        : ""));
  }
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    const int e = errno;
    close(fan);
    return osError(e, "layer-gate: eventfd");
  }
  return std::unique_ptr<LayerGate>(new LayerGate(fan, wake, options, std::move(on_held)));
}

LayerGate::LayerGate(int fan_fd, int wake_fd, Options options, HeldFn on_held)
    : fan_fd_(fan_fd), wake_fd_(wake_fd), opt_(options), on_held_(std::move(on_held)) {}

LayerGate::~LayerGate() {
  stop();
  close(fan_fd_);  // the kernel lets any mount still waiting on it through
  close(wake_fd_);
}

void LayerGate::start() {
  if (worker_.running()) return;
  worker_.start(
      "dq-layer-gate", [this] { run(); },
      [this] {
        {
          std::lock_guard<std::mutex> l(mu_);
          stop_ = true;
        }
        uint64_t one = 1;
        (void)!write(wake_fd_, &one, sizeof one);
      });
}

void LayerGate::stop() { worker_.stop(); }

Status LayerGate::guard(const std::string& root) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (guarded_.size() >= opt_.max_layers) return Error{ENOSPC, "layer-gate: " + root + ": too many layers held"};
    if (!guarded_.insert(root).second) return {};
  }
  if (fanotify_mark(fan_fd_, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD, AT_FDCWD, root.c_str()) != 0) {
    const int e = errno;
    stats_.errors++;
    std::lock_guard<std::mutex> l(mu_);
    guarded_.erase(root);
    return osError(e, "layer-gate: fanotify_mark " + root);
  }
  stats_.guarded++;
  return {};
}

void LayerGate::release(const std::string& root) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!guarded_.erase(root)) return;
    released_.insert(root);
  }
  // A path lookup, not an open: no event of our own to answer. ENOENT: the
  // layer is gone, and its mark with its inode.
  if (fanotify_mark(fan_fd_, FAN_MARK_REMOVE, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD, AT_FDCWD, root.c_str()) != 0 &&
      errno != ENOENT && errno != ENOTDIR)
    stats_.errors++;
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
}

void LayerGate::pass(const std::string& root) {
  {
    std::lock_guard<std::mutex> l(mu_);
    released_.insert(root);
  }
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof one);
}

bool LayerGate::guarded(const std::string& root) const {
  std::lock_guard<std::mutex> l(mu_);
  return guarded_.count(root) > 0;
}

void LayerGate::answer(int fd) {
  fanotify_response r{};
  r.fd = fd;
  r.response = FAN_ALLOW;
  if (write(fan_fd_, &r, sizeof r) != sizeof r) stats_.errors++;
  close(fd);
}

// Lets through what was released, and (all: at stop) everything, and what
// waited longer than `hold`.
void LayerGate::answerDue(bool all) {
  std::set<std::string> released;
  {
    std::lock_guard<std::mutex> l(mu_);
    released.swap(released_);
  }
  const auto now = std::chrono::steady_clock::now();
  std::erase_if(held_, [&](const Held& h) {
    const bool timed_out = now - h.since >= opt_.hold;
    if (!all && !released.count(h.root) && !timed_out) return false;
    const double waited = std::chrono::duration<double>(now - h.since).count();
    if (waited > stats_.longest_hold.load()) stats_.longest_hold = waited;
    if (timed_out && !released.count(h.root)) {
      stats_.timeouts++;
      LOG_WARN(kSub, "%s: its mount waited %.0f ms for the layer's project and goes on untagged", h.root.c_str(),
               waited * 1000);
      release(h.root);  // held once: later mounts of it go straight through
    }
    answer(h.fd);
    return true;
  });
}

void LayerGate::readEvents() {
  alignas(fanotify_event_metadata) char buf[8192];
  for (;;) {
    const ssize_t n = read(fan_fd_, buf, sizeof buf);
    if (n <= 0) return;  // EAGAIN: all read
    auto* m = reinterpret_cast<fanotify_event_metadata*>(buf);
    for (ssize_t left = n; FAN_EVENT_OK(m, left); m = FAN_EVENT_NEXT(m, left)) {
      if (m->vers != FANOTIFY_METADATA_VERSION || m->fd < 0) continue;
      if (!(m->mask & FAN_OPEN_PERM)) {
        close(m->fd);
        continue;
      }
      // Our own opens (the tagger's, the usage walk's) never wait: the
      // tagger may be what a held mount waits for.
      std::string path = m->pid == getpid() ? "" : pathOf(m->fd);
      const size_t tail = std::strlen(kMountRead);
      std::string root;
      if (path.size() > tail && path.compare(path.size() - tail, tail, kMountRead) == 0)
        root = path.substr(0, path.size() - tail);
      if (root.empty() || !guarded(root)) {
        stats_.passed++;
        answer(m->fd);
        continue;
      }
      stats_.held++;
      held_.push_back({m->fd, root, std::chrono::steady_clock::now()});
      on_held_(root);
    }
  }
}

void LayerGate::run() {
  for (;;) {
    int timeout = -1;
    if (!held_.empty()) {
      auto oldest =
          std::min_element(held_.begin(), held_.end(), [](const Held& a, const Held& b) { return a.since < b.since; });
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(oldest->since + opt_.hold -
                                                                        std::chrono::steady_clock::now());
      timeout = static_cast<int>(std::max<int64_t>(1, left.count() + 1));
    }
    pollfd fds[2] = {{fan_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, timeout) < 0 && errno != EINTR) break;
    if (fds[1].revents) {
      uint64_t n;
      (void)!read(wake_fd_, &n, sizeof n);
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) break;
    }
    if (fds[0].revents) readEvents();
    answerDue(false);
  }
  readEvents();  // what came in meanwhile: let it through below
  answerDue(true);
}

}  // namespace dockquota
