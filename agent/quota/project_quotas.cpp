// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/project_quotas.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/base/mountinfo.h"
#include "agent/base/short_id.h"
#include "agent/store/billing.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "prjquota";
constexpr const char* kUser = "user";
constexpr const char* kContainer = "container";
// Rows of other kinds (ctrd, ctrd-tenant: agent/quota/ctrd_quotas.h) share the
// table so ids never collide, and are never judged here.
bool ofDocker(const ProjectRecord& p) { return p.owner_kind == kUser || p.owner_kind == kContainer; }

std::string parentDir(const std::string& p) {
  auto slash = p.find_last_of('/');
  return slash == std::string::npos || slash == 0 ? p : p.substr(0, slash);
}

bool isDir(const std::string& p) {
  struct stat st {};
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) {
  struct stat st {};
  return lstat(p.c_str(), &st) == 0;
}

std::string key(const std::string& kind, const std::string& owner) { return kind + ":" + owner; }

}  // namespace

const char* toString(ProjectMode m) { return m == ProjectMode::User ? "user" : "container"; }

// --- where things live -------------------------------------------------------------

std::string layerRootFromMounts(const std::string& mountinfo, const std::string& container_id) {
  for (const auto& m : parseMountinfo(mountinfo)) {
    if (m.fstype != "overlay" || m.mount_point.find(container_id) == std::string::npos) continue;
    std::istringstream so(m.super_options);
    for (std::string opt; std::getline(so, opt, ',');)
      if (opt.rfind("upperdir=", 0) == 0) return parentDir(opt.substr(9));
  }
  return "";
}

DockerLayerLocator::DockerLayerLocator(DockerClient& docker, std::string data_root)
    : docker_(docker), root_(std::move(data_root)) {}

std::optional<std::string> DockerLayerLocator::containerOfLayer(const std::string& root) {
  const std::string want = root.substr(root.find_last_of('/') + 1);
  const std::string mounts = root_ + "/image/overlay2/layerdb/mounts";
  DIR* d = opendir(mounts.c_str());
  if (!d) return std::nullopt;
  std::optional<std::string> found;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::ifstream in(mounts + "/" + e->d_name + "/mount-id");
    std::string mount_id;
    if (in >> mount_id && mount_id == want) {
      found = e->d_name;
      break;
    }
  }
  closedir(d);
  return found;
}

Result<std::vector<std::string>> DockerLayerLocator::container(const std::string& id) {
  std::vector<std::string> dirs;
  // overlay2's own record of the container's layer (what dockerd reads at
  // start): a file read, no Engine API round trip while `docker run` goes on.
  if (id.find('/') == std::string::npos && id.find("..") == std::string::npos) {
    std::ifstream in(root_ + "/image/overlay2/layerdb/mounts/" + id + "/mount-id");
    std::string mount_id;
    if (in >> mount_id && mount_id.find('/') == std::string::npos && mount_id.find("..") == std::string::npos &&
        isDir(root_ + "/overlay2/" + mount_id)) {
      dirs.push_back(root_ + "/overlay2/" + mount_id);
      if (isDir(dirs.back() + "-init")) dirs.push_back(dirs.back() + "-init");
      return dirs;
    }
  }
  auto j = docker_.inspectContainer(id);
  if (!j) return j.error();
  std::string upper;
  const auto& gd = (*j)["GraphDriver"];
  if (gd.is_object() && gd["Data"].is_object() && gd["Data"]["UpperDir"].is_string())
    upper = gd["Data"]["UpperDir"].get<std::string>();
  if (!upper.empty()) {
    std::string layer = parentDir(upper);
    dirs.push_back(layer);
    if (isDir(layer + "-init")) dirs.push_back(layer + "-init");  // the container's small init layer
    return dirs;
  }
  // The containerd image store has no GraphDriver: the mounted rootfs says where its upper dir is.
  std::ifstream in("/proc/self/mountinfo");
  std::stringstream text;
  text << in.rdbuf();
  std::string layer = layerRootFromMounts(text.str(), id);
  if (!layer.empty()) dirs.push_back(layer);
  return dirs;
}

Result<std::string> DockerLayerLocator::layer(const std::string& chain_id) {
  std::string hex = chain_id.rfind("sha256:", 0) == 0 ? chain_id.substr(7) : chain_id;
  std::ifstream in(root_ + "/image/overlay2/layerdb/sha256/" + hex + "/cache-id");
  std::string cache;
  if (!in || !(in >> cache) || cache.find('/') != std::string::npos || cache.find("..") != std::string::npos)
    return Error{ENOENT, "no overlay2 cache-id for layer " + chain_id};
  return root_ + "/overlay2/" + cache;
}

Result<std::string> DockerLayerLocator::volume(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    return Error{EINVAL, "bad volume name " + name};
  std::string dir = root_ + "/volumes/" + name;
  if (!isDir(dir)) return Error{ENOENT, "no local volume directory " + dir};
  return dir;
}

// --- the backend ---------------------------------------------------------------------

ProjectQuotas::ProjectQuotas(Store& store, QuotaBook& book, std::unique_ptr<LayerLocator> locator, QuotaFs fs,
                             Options options)
    : store_(store), book_(book), locator_(std::move(locator)), fs_(std::move(fs)), opt_(options) {
  if (!active()) return;
  if (auto projects = store_.projectIds().projects()) {
    for (const auto& p : *projects) ids_[key(p.owner_kind, p.owner)] = p.id;
  }
}

ProjectQuotas::~ProjectQuotas() { stop(); }

void ProjectQuotas::start() {
  if (!active() || sync_worker_.running()) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = false;
  }
  sync_worker_.start(
      "dq-prj-sync", [this] { run(); }, [this] { haltSync(); });
  if (!locator_->layersDir().empty() && isDir(locator_->layersDir())) {
    stop_fd_ = eventfd(0, EFD_CLOEXEC);
    work_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd_ >= 0 && work_fd_ >= 0) startWatch();
  }
}

// Two threads: the spot thread notices new layers (and guards them), the
// watch thread tags them. Without inotify on the layers dir, container
// layers are tagged at Docker's create reply.
void ProjectQuotas::startWatch() {
  const std::string dir = locator_->layersDir();
  int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (in < 0 || inotify_add_watch(in, dir.c_str(), IN_CREATE | IN_ONLYDIR) < 0) {
    LOG_WARN(kSub, "cannot watch %s for new layers (%s): container layers are tagged at Docker's create reply",
             dir.c_str(), std::strerror(errno));
    if (in >= 0) close(in);
    return;
  }
  openGate();
  {
    std::lock_guard<std::mutex> l(mu_);
    watching_ = true;
  }
  watch_worker_.start(
      "dq-prj-watch", [this] { watchLayers(); }, [this] { haltWatch(); });
  spot_worker_.start(
      "dq-prj-spot", [this, in] { spotLayers(in); }, [this] { haltWatch(); });
}

// The gate holds a new layer's mounts until it is tagged (layer_gate.h).
// Without it (an old or locked-down kernel) the watch still tags early, and
// a lost race is deferred and counted, as before.
void ProjectQuotas::openGate() {
  auto g = LayerGate::open({}, [this](const std::string& root) {
    {
      std::lock_guard<std::mutex> l(mu_);
      gated_.push_back(root);
    }
    uint64_t one = 1;
    (void)!write(work_fd_, &one, sizeof one);
  });
  if (!g) {
    gate_unavailable_ = g.error().message;
    LOG_WARN(kSub, "%s: a container start can win the race against its layer's tag (then deferred and counted)",
             gate_unavailable_.c_str());
    return;
  }
  gate_ = std::move(*g);
  gate_->start();
  LOG_INFO(kSub, "layer gate on: a new container layer's mounts wait for its project (at most %lld ms)",
           static_cast<long long>(LayerGate::Options{}.hold.count()));
}

// The sync pass is told first, so both wind down together; the watch is
// joined (and its eventfds closed) before the sync thread.
void ProjectQuotas::stop() {
  spot_worker_.stop();       // first: no layer is guarded by a gate that stops
  if (gate_) gate_->stop();  // then: no mount waits on a stopping agent
  sync_worker_.requestStop();
  watch_worker_.stop();
  if (stop_fd_ >= 0) close(stop_fd_);
  if (work_fd_ >= 0) close(work_fd_);
  stop_fd_ = work_fd_ = -1;
  sync_worker_.stop();
}

void ProjectQuotas::haltSync() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

void ProjectQuotas::haltWatch() {
  uint64_t one = 1;
  (void)!write(stop_fd_, &one, sizeof one);
}

void ProjectQuotas::prepareUser(uint32_t uid) {
  if (opt_.mode != ProjectMode::User || projectOfUser(uid) || work_fd_ < 0) return;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (prepare_.size() >= 64) return;  // a flood of creates from new users: the layer watch allocates then
    prepare_.push_back(uid);
  }
  uint64_t one = 1;
  (void)!write(work_fd_, &one, sizeof one);
}

// The creator lookup, outside mu_ (it drains the rings, which may call back
// into this backend); it also brings every captured reply into the store.
std::optional<uint32_t> ProjectQuotas::soleCreator() {
  CreatorLookup lookup;
  {
    std::lock_guard<std::mutex> l(mu_);
    lookup = creator_;
  }
  return lookup ? lookup() : std::nullopt;
}

void ProjectQuotas::setCreatorLookup(CreatorLookup f) {
  std::lock_guard<std::mutex> l(mu_);
  creator_ = std::move(f);
}

namespace {
bool isLayerId(const char* name) {  // overlay2 names a container layer by 64 hex ("<id>-init" is its init layer)
  size_t n = 0;
  for (; name[n]; n++)
    if (!std::isxdigit(static_cast<unsigned char>(name[n])) || std::isupper(static_cast<unsigned char>(name[n])))
      return false;
  return n == 64;
}
}  // namespace

// overlay2 makes <root>/overlay2/<id> (with diff/ and work/) inside the create
// request, and mounts it only at start, after the reply: a tag put on here
// is in place before any mount, so no overlayfs operation can see the id
// change and no byte is written outside the project. Image layers from pulls
// and builds also appear here, while being extracted: they have no
// "<id>-init" sibling, are never touched here, and are tagged layer by layer
// in sync() once their image is attributed, as before.
void ProjectQuotas::watchLayers() {
  LOG_INFO(kSub, "watching %s: container layers are tagged as Docker makes them", locator_->layersDir().c_str());
  // The mount table, polled (POLLPRI) only while a new layer waits out
  // Docker's create-time mount.
  const int mounts = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
  for (;;) {
    const bool waiting = waitingForUnmounts();
    pollfd fds[3] = {{stop_fd_, POLLIN, 0}, {work_fd_, POLLIN, 0}, {waiting ? mounts : -1, POLLPRI, 0}};
    if (poll(fds, 3, waiting ? 100 : -1) < 0 && errno != EINTR) break;
    if (fds[0].revents) break;
    if (fds[1].revents) handleWork();
    if (waiting) resolveCreateMounts();
  }
  if (mounts >= 0) close(mounts);
  std::lock_guard<std::mutex> l(mu_);  // what it had not tagged yet goes to the sync thread
  watching_ = false;
  for (auto& id : owned_) queue_.emplace_back(ObjectKind::Container, std::move(id));
  owned_.clear();
  cv_.notify_all();
}

// The spot thread does nothing but notice new container layers and put the
// gate on them: the watch thread can be busy tagging (seen on 6.1 at load 8:
// a layer noticed only after the create's reply, its start already mounting
// it), and a mark put on late holds nothing.
void ProjectQuotas::spotLayers(int in) {
  const std::string dir = locator_->layersDir();
  for (;;) {
    pollfd fds[2] = {{in, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0 && errno != EINTR) break;
    if (fds[1].revents) break;
    if (!fds[0].revents) continue;
    auto roots = readNewLayers(in, dir);
    if (roots.empty()) continue;
    if (gate_) {
      for (const auto& root : roots)
        if (auto st = gate_->guard(root); !st) LOG_WARN(kSub, "%s", st.error().message.c_str());
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& root : roots) {
        if (spotted_.size() >= kMaxSpotted) {
          stats_.early_unclear++;  // a flood the watch thread cannot keep up with: tagged at the replies
          continue;
        }
        spotted_.push_back(std::move(root));
      }
    }
    uint64_t one = 1;
    (void)!write(work_fd_, &one, sizeof one);
  }
  close(in);
}

// New container layer roots from the inotify queue. A container layer comes
// right after its init layer; an image layer (a pull or build extracting
// into it now) has none, and is left alone.
std::vector<std::string> ProjectQuotas::readNewLayers(int in, const std::string& dir) {
  std::vector<std::string> roots;
  alignas(inotify_event) char buf[64 * 1024];
  ssize_t n = read(in, buf, sizeof buf);
  for (ssize_t off = 0; n > 0 && off < n;) {
    const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
    off += sizeof(inotify_event) + ev->len;
    if (ev->mask & IN_Q_OVERFLOW) {
      stats_.early_unclear++;
      LOG_WARN(kSub, "new layers in %s went unnoticed (inotify queue overflow): tagged at their create replies",
               dir.c_str());
    }
    if (!(ev->mask & IN_ISDIR) || !ev->len || !isLayerId(ev->name)) continue;
    std::string root = dir + "/" + ev->name;
    if (isDir(root + "-init")) roots.push_back(std::move(root));
  }
  return roots;
}

void ProjectQuotas::handleWork() {
  uint64_t n;
  (void)!read(work_fd_, &n, sizeof n);
  std::vector<uint32_t> uids;
  std::vector<std::string> owned, gated, spotted;
  {
    std::lock_guard<std::mutex> l(mu_);
    uids.swap(prepare_);
    owned.swap(owned_);
    gated.swap(gated_);
    spotted.swap(spotted_);
  }
  for (const auto& root : gated) tagHeld(root);  // a mount waits on each
  for (const auto& root : spotted) tagNewLayer(root);
  for (uint32_t uid : uids)
    if (auto id = allocateNow(kUser, std::to_string(uid)); !id) LOG_WARN(kSub, "%s", id.error().message.c_str());
  // A create reply named its owner: the start that mounts the layer is one
  // client round trip away, so it is tagged here, not behind a sync pass
  // (which can take seconds on a loaded host with many containers).
  for (const auto& id : owned) tagQueued(ObjectKind::Container, id);
}

// The watch thread: a new container layer the spot thread found (and the
// gate guards), tagged before Docker mounts it where its maker is clear.
void ProjectQuotas::tagNewLayer(const std::string& root) {
  if (opt_.mode == ProjectMode::Container) {
    // Its own project from the start, keyed by the layer until the create
    // reply names the container (tagObject() then renames it).
    tagEarly(root, std::nullopt);
    return;
  }
  auto uid = soleCreator();
  // The lookup names this layer's maker only while its create is pending:
  // a layer with a work/work has been mounted, so the reply may have gone
  // out before the lookup, and the pending creates be others'.
  if (!uid || exists(root + "/work/work")) {
    stats_.early_unclear++;
    return;
  }
  // Tagged right here, not behind a sync pass that may hold the backend's
  // thread; a user's first object gets its id allocated here too (a pass
  // that began before leaves a project younger than itself alone). A tag
  // of the same layer at the same time (the create reply's) follows the
  // same order with the same id: no harm.
  tagEarly(root, uid);
}

bool ProjectQuotas::waitingForUnmounts() const {
  std::lock_guard<std::mutex> l(mu_);
  return !create_mounts_.empty();
}

// Docker's create mounts the new layer (the working dir, volume mount points)
// and unmounts it before it replies; the start mounts it again only after the
// reply. A layer the early tag found in that first mount is tagged as soon as
// the mount table shows it gone: every mount that began before was then over,
// and one that began since (the start) made a newer work/work (tagLayer()).
void ProjectQuotas::resolveCreateMounts() {
  std::map<std::string, CreateMount> waiting;
  {
    std::lock_guard<std::mutex> l(mu_);
    waiting = create_mounts_;
  }
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [root, cm] : waiting) {
    const bool mounted = overlayUpperMounted(root + "/diff");
    if (mounted && cm.until > now) continue;  // still in the create's mount
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!create_mounts_.erase(root)) continue;  // the reply's tag took it over meanwhile
    }
    if (mounted) continue;  // past the wait: the reply's tag decides (and counts)
    // Just after the waited-out mount's work/work, so that one counts as over.
    auto deferred = tagDirs({root}, cm.project, {.finished_before = cm.work_born + 1e-6});
    if (!deferred) {
      stats_.errors++;
      LOG_WARN(kSub, "new layer %s: %s", root.c_str(), deferred.error().message.c_str());
      continue;
    }
    if (*deferred) continue;  // a newer mount (the start's): counted and warned by tagDirs()
    stats_.early_tagged++;
    std::lock_guard<std::mutex> l(mu_);
    waited_out_[root] = cm.work_born;
    LOG_DEBUG(kSub, "new layer %s tagged with project %u once Docker's create unmounted it", root.c_str(), cm.project);
  }
}

// The create reply settles whether the mount the early tag waited out was the
// create's (made before the reply) or already the start's (after it): then
// the container ran before its layer was tagged, and that is counted.
void ProjectQuotas::settleCreateMount(const std::string& root, double reply) {
  std::optional<double> born;
  {
    std::lock_guard<std::mutex> l(mu_);
    create_mounts_.erase(root);  // still waiting: the reply's own tag decides
    auto it = waited_out_.find(root);
    if (it == waited_out_.end()) return;
    born = it->second;
    waited_out_.erase(it);
  }
  if (reply > 0 && *born < reply) return;
  LayerTagResult r;
  r.state = LayerTag::Deferred;
  r.why = reply > 0 ? "the mount waited out began after the create reply: the container's own"
                    : "no create reply known for the mount waited out";
  noteLayer(root, r);
  noteLayer(root, LayerTagResult{});  // tagged since: not deferred now
}

// A mount of `root` waits at the gate. Nothing else mounts or unmounts the
// layer while it waits (overlay2 holds the layer's lock), so a tag now is
// safe whatever work/work says. Its owner: the layer's own project
// (per-container mode); the one user with creates pending, but only at the
// layer's first mount (inside its create, before the reply: the pending
// creates include its own); else the create reply's tag, which releases it.
void ProjectQuotas::tagHeld(const std::string& root) {
  if (!isLayerRoot(root) || !exists(root + "/lower")) {
    gate_->release(root);  // not a layer overlay2 made whole: nothing to hold for
    return;
  }
  const bool first_mount = !exists(root + "/work/work");
  std::optional<Result<uint32_t>> p;
  if (opt_.mode == ProjectMode::Container) {
    p = allocateNow(kContainer, layerKey(root));
  } else if (first_mount) {
    if (auto uid = soleCreator()) p = allocateNow(kUser, std::to_string(*uid));
  }
  if (!p && !first_mount) {
    // A later mount (the start): its create was answered. The reply may not
    // have been read from the ring yet: drained (the lookup does), then the
    // container's owner from the store, without waiting for its turn in the
    // watch's queue.
    (void)soleCreator();
    auto cid = locator_->containerOfLayer(root);
    auto rec =
        cid ? store_.objects().get(ObjectKind::Container, *cid) : Result<std::optional<ObjectRecord>>(std::nullopt);
    if (rec && *rec && (*rec)->owner) {
      p = allocateNow(kUser, std::to_string(billedUid(*(*rec)->owner, opt_.bill_root_to_login_uid)));
    } else if (rec && *rec) {
      // The container has its row (Docker's create event, or the reply a
      // moment before its owner is written): the create is over, so this is
      // the start, and the reply that names the owner is being read (seen on
      // 5.10: 40 ms between the reply's capture and its owner in the
      // store). Held: the reply's tag releases it, else the gate's hold ends.
      LOG_DEBUG(kSub, "held layer %s: container %s is made but has no owner yet: held for the create reply",
                root.c_str(), shortId(*cid).c_str());
      return;
    } else {
      // No owner after the rings were drained: the client has not read the
      // create reply, so this is still the create's own mount (Docker's
      // create mounts a new layer more than once; seen on 5.10 and 6.1:
      // held for the reply that could not come, 1 s, then deferred).
      LOG_DEBUG(kSub, "held layer %s: container %s has no owner yet: a mount inside its create, let through",
                root.c_str(), cid ? shortId(*cid).c_str() : "not in the layer store");
      gate_->pass(root);  // its start is still held
      return;
    }
  }
  if (!p) {
    // A create's own first mount with its maker unclear goes on; the start
    // is held until the reply names the owner.
    LOG_DEBUG(kSub, "held layer %s: its create's own mount, maker unclear: let through", root.c_str());
    gate_->pass(root);
    return;
  }
  if (!*p) {
    stats_.errors++;
    LOG_WARN(kSub, "held layer %s: %s", root.c_str(), p->error().message.c_str());
    gate_->release(root);
    return;
  }
  auto deferred = tagDirs({root}, **p, {.finished_before = unixNow()});
  if (!deferred) {
    stats_.errors++;
    LOG_WARN(kSub, "held layer %s: %s", root.c_str(), deferred.error().message.c_str());
    gate_->release(root);
    return;
  }
  if (!*deferred) stats_.gated_tags++;
  LOG_DEBUG(kSub, "held layer %s: tagged with project %u before its %s mount", root.c_str(), **p,
            first_mount ? "first" : "next");
}

std::string ProjectQuotas::layerKey(const std::string& root) {
  return "layer:" + root.substr(root.find_last_of('/') + 1);
}

// Also on the watch thread, beside a sync pass: the store allocates (one
// transaction), the limit goes on before the tag, and applied_ (the pass's)
// is left to the next pass, which sets the same limit again.
Result<uint32_t> ProjectQuotas::allocateNow(const std::string& kind, const std::string& owner) {
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = ids_.find(key(kind, owner));
    if (it != ids_.end()) return it->second;
  }
  auto p = store_.projectIds().project(kind, owner, opt_.id_min, opt_.id_max, unixNow(), [this](uint32_t id) {
    auto u = readProject(fs_, id);
    return u && u->bytes == 0 && u->inodes == 0;
  });
  if (!p) return p.error();
  if (auto st = setProjectLimit(fs_, p->id, limitFor(*p)); !st) return st.error();
  stats_.ids_allocated++;
  LOG_INFO(kSub, "project %u for %s %s", p->id, kind.c_str(), owner.c_str());
  std::lock_guard<std::mutex> l(mu_);
  ids_[key(kind, owner)] = p->id;
  return p->id;
}

namespace {
// overlay2 makes a container layer as <root>/, diff/, "link", work/ and, last,
// "lower"; the two files are written to a temporary name in <root> and
// renamed. A tag put on <root> between the two would make that rename cross
// projects: EXDEV, and `docker create` fails. So the early tag waits for
// "lower" (a few ms at most; 2 s on a host so loaded that the reply's tag
// will come first anyway).
bool layerMade(const std::string& root) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  struct stat st {};
  while (lstat((root + "/lower").c_str(), &st) != 0) {
    if (errno != ENOENT || std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}
}  // namespace

void ProjectQuotas::tagEarly(const std::string& root, std::optional<uint32_t> uid) {
  if (!layerMade(root)) {
    stats_.early_unclear++;
    LOG_DEBUG(kSub, "new layer %s: Docker is still making it: tagged at the reply", root.c_str());
    return;
  }
  auto p = uid ? allocateNow(kUser, std::to_string(*uid)) : allocateNow(kContainer, layerKey(root));
  if (!p) {
    stats_.errors++;
    LOG_WARN(kSub, "new layer %s: %s", root.c_str(), p.error().message.c_str());
    return;
  }
  auto deferred = tagDirs({root}, *p, {.provisional = true});
  if (!deferred) {
    stats_.errors++;
    LOG_WARN(kSub, "new layer %s: %s", root.c_str(), deferred.error().message.c_str());
    return;
  }
  if (*deferred) {
    stats_.early_mounting++;
    const auto born = workWorkBorn(root);
    if (!born) return;  // gone meanwhile
    std::lock_guard<std::mutex> l(mu_);
    if (create_mounts_.size() >= kMaxCreateMounts) return;  // a flood: the replies' tags decide
    create_mounts_[root] = {*p, *born, std::chrono::steady_clock::now() + kCreateMountWait};
    LOG_DEBUG(kSub, "new layer %s: Docker's create has it mounted: tagged when it unmounts", root.c_str());
    return;
  }
  stats_.early_tagged++;
  LOG_DEBUG(kSub, "new layer %s tagged with project %u as Docker made it", root.c_str(), *p);
}

void ProjectQuotas::onOwnerChanged(ObjectKind kind, const std::string& id) {
  if (!active() || kind == ObjectKind::Image) return;  // images are tagged layer by layer, in sync()
  bool to_watch = false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (kind == ObjectKind::Container) queued_at_.emplace(id, unixNow());
    to_watch = kind == ObjectKind::Container && watching_;
    if (to_watch) {
      owned_.push_back(id);
    } else {
      queue_.emplace_back(kind, id);
    }
  }
  if (!to_watch) {
    cv_.notify_all();
    return;
  }
  uint64_t one = 1;
  (void)!write(work_fd_, &one, sizeof one);
}

void ProjectQuotas::tagQueued(ObjectKind kind, const std::string& id) {
  auto rec = store_.objects().get(kind, id);
  if (!rec || !*rec || (*rec)->gone_at) return;
  if (auto st = tagObject(kind, **rec, /*owner_changed=*/true); !st) {
    stats_.errors++;
    LOG_WARN(kSub, "%s", st.error().message.c_str());
  }
}

void ProjectQuotas::wake() {
  {
    std::lock_guard<std::mutex> l(mu_);
    wake_ = true;
  }
  cv_.notify_all();
}

bool ProjectQuotas::ofThisMode(const ProjectRecord& p) const {
  if (!ofDocker(p)) return false;
  return (p.owner_kind == kUser) == (opt_.mode == ProjectMode::User);
}

void ProjectQuotas::limitsChanged() {
  {
    std::lock_guard<std::mutex> l(mu_);
    wake_ = limits_changed_ = true;
  }
  cv_.notify_all();
}

void ProjectQuotas::applyLimitsNow() {
  std::lock_guard<std::mutex> s(sync_mu_);
  const auto t0 = std::chrono::steady_clock::now();
  auto projects = store_.projectIds().projects();
  if (!projects) {
    stats_.errors++;
    LOG_WARN(kSub, "new limits: %s (the sync pass retries)", projects.error().message.c_str());
    return;
  }
  std::erase_if(*projects, [&](const ProjectRecord& p) { return !ofThisMode(p); });
  if (auto st = applyLimits(*projects); !st) {
    stats_.errors++;
    LOG_WARN(kSub, "new limits: %s (the sync pass retries)", st.error().message.c_str());
  }
  LOG_DEBUG(kSub, "new limits in the kernel %.1f ms after the change was picked up",
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
}

void ProjectQuotas::setUsageListener(std::function<void()> f) {
  std::lock_guard<std::mutex> l(mu_);
  on_usage_ = std::move(f);
}

std::shared_ptr<const KernelUsage> ProjectQuotas::usage() const {
  std::lock_guard<std::mutex> l(mu_);
  return usage_;
}

std::optional<uint32_t> ProjectQuotas::projectOfUser(uint32_t uid) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = ids_.find(key(kUser, std::to_string(uid)));
  return it == ids_.end() ? std::nullopt : std::optional<uint32_t>(it->second);
}

std::optional<uint32_t> ProjectQuotas::projectOfContainer(const std::string& id) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = ids_.find(key(kContainer, id));
  return it == ids_.end() ? std::nullopt : std::optional<uint32_t>(it->second);
}

void ProjectQuotas::run() {
  auto next_sync = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    cv_.wait_until(l, next_sync, [this] { return stop_ || wake_ || !queue_.empty(); });
    if (stop_) break;
    // New objects first: their layer roots should carry the id before they are written to.
    while (!queue_.empty()) {
      auto [kind, id] = queue_.front();
      queue_.pop_front();
      l.unlock();
      {
        std::lock_guard<std::mutex> s(sync_mu_);
        tagQueued(kind, id);
      }
      l.lock();
    }
    bool due = wake_ || std::chrono::steady_clock::now() >= next_sync;
    if (!due) continue;
    wake_ = false;
    const bool limits = std::exchange(limits_changed_, false);
    l.unlock();
    if (limits) applyLimitsNow();
    if (auto st = sync(); !st) LOG_WARN(kSub, "sync: %s", st.error().message.c_str());
    l.lock();
    next_sync = std::chrono::steady_clock::now() + opt_.interval;
  }
}

// The limit goes on before anything is tagged, so no byte is written
// unlimited (allocateNow()); the next pass records it in applied_.
Result<uint32_t> ProjectQuotas::projectFor(const std::string& kind, const std::string& owner) {
  return allocateNow(kind, owner);
}

Result<size_t> ProjectQuotas::tagDirs(const std::vector<std::string>& dirs, uint32_t id, TagWhen when) {
  size_t deferred = 0;
  for (const auto& dir : dirs) {
    struct stat st {};
    if (stat(dir.c_str(), &st) != 0) continue;  // removed meanwhile
    if (st.st_dev != fs_.dev) continue;         // not on the quota filesystem (a bind-mounted volume driver...)
    TagStats ts;
    if (isLayerRoot(dir)) {
      // Docker mounts a container's init layer once, inside the create (to
      // write /etc/hosts and the like), and never again: a young work/work
      // there is that finished mount, not one in progress.
      const bool init = dir.size() > 5 && dir.compare(dir.size() - 5, 5, "-init") == 0;
      auto r = tagLayer(
          dir, id, [&] { return overlayUpperMounted(dir + "/diff"); }, init ? 0 : kMountSetupSeconds,
          when.finished_before);
      if (!r) return r.error();
      if (r->state == LayerTag::Deferred) deferred++;
      if (!when.provisional || r->state != LayerTag::Deferred) {
        noteLayer(dir, *r);
        if (gate_) gate_->release(dir);  // tagged, or deferred for good: its mounts go on
      }
      if (r->stats.already && !r->stats.tagged) continue;
      ts = r->stats;
    } else {
      auto cur = projectOf(dir);
      if (cur && *cur == id) continue;  // tagged before; its tree inherited the id since
      // A volume may be in use: ids first, flags second, as tagLayer() does for diff/.
      auto ids = tagTree(dir, id, TagFlags::IdsOnly);
      if (!ids) return ids.error();
      auto r = tagTree(dir, id);
      if (!r) return r.error();
      ts = *ids;
      ts.tagged += r->tagged;
    }
    stats_.tagged_trees++;
    stats_.tagged_inodes += ts.tagged;
    if (ts.failed) {
      stats_.errors++;
      LOG_WARN(kSub, "tagging %s with project %u: %llu inode(s) failed, first: %s", dir.c_str(), id,
               (unsigned long long)ts.failed, ts.error.c_str());
    }
    LOG_DEBUG(kSub, "tagged %s with project %u (%llu inodes changed)", dir.c_str(), id, (unsigned long long)ts.tagged);
  }
  return deferred;
}

// A layer whose container started before its owner was known keeps writing
// outside the owner's project until it stops: counted, in /healthz, retried
// by every sync (tagLayer() touches its diff/ only once it is unmounted).
void ProjectQuotas::noteLayer(const std::string& root, const LayerTagResult& r) {
  if (r.raced_mount) stats_.raced_mounts++;
  std::lock_guard<std::mutex> l(mu_);
  if (r.state == LayerTag::Deferred) {
    if (deferred_.insert(root).second) {
      stats_.deferred_layers_total++;
      LOG_WARN(kSub,
               "%s was mounted before its owner was known (%s): its writes are outside the owner's project "
               "until the container stops (then it is tagged)",
               root.c_str(), r.why.c_str());
    }
  } else if (deferred_.erase(root)) {
    LOG_INFO(kSub, "%s tagged after its container stopped", root.c_str());
  }
  stats_.deferred_layers = deferred_.size();
}

Status ProjectQuotas::tagObject(ObjectKind kind, const ObjectRecord& rec, bool owner_changed) {
  std::lock_guard<std::mutex> t(tag_mu_);
  // Which project, if any, should this object's directories carry?
  std::string pkind, powner;
  if (kind == ObjectKind::Container && opt_.mode == ProjectMode::Container) {
    pkind = kContainer, powner = rec.id;
  } else if ((kind == ObjectKind::Container || kind == ObjectKind::Volume) && opt_.mode == ProjectMode::User &&
             rec.owner) {
    pkind = kUser, powner = std::to_string(billedUid(*rec.owner, opt_.bill_root_to_login_uid));
  } else if (kind == ObjectKind::Image) {
    return {};  // images are tagged layer by layer (sync())
  }

  std::vector<std::string> dirs;
  if (kind == ObjectKind::Container) {
    auto cached = container_dirs_.find(rec.id);
    if (cached == container_dirs_.end() || cached->second.empty()) {
      auto d = locator_->container(rec.id);
      if (!d) return d.error().context("container " + shortId(rec.id));
      cached = container_dirs_.insert_or_assign(rec.id, *d).first;
    }
    dirs = cached->second;
  } else {
    auto d = locator_->volume(rec.id);
    if (!d) return {};  // not a local volume on this filesystem: nothing to tag
    dirs.push_back(*d);
  }
  if (dirs.empty()) return {};

  if (pkind == kContainer) adoptLayerProject(dirs.front(), rec.id);
  uint32_t id = 0;  // unattributed: back to project 0, but only from one of our ids
  if (!pkind.empty()) {
    auto p = projectFor(pkind, powner);
    if (!p) return p.error();
    id = *p;
  } else {
    // Only when its owner was taken away (an owner change). A sync pass sees
    // unattributed rows whose create reply is still on its way (Docker's
    // create event inserted them): their layer carries the project the
    // watch gave it as Docker made it, and resetting it to 0 there let the
    // start mount it untagged (seen on 6.1: 3 deferred).
    if (!owner_changed) return {};
    auto cur = projectOf(dirs.front());
    if (!cur || !ours(*cur)) return {};
  }
  // Docker's create reply, from the kernel's capture: its one mount inside
  // the create was over by then (tagLayer()), and the start's comes after.
  double finished_before = 0;
  if (kind == ObjectKind::Container && rec.owner && rec.owner->method == "container_create" &&
      (rec.owner->source == Source::Bpf || rec.owner->source == Source::Audit))
    finished_before = rec.owner->time;
  if (kind == ObjectKind::Container && !dirs.empty()) settleCreateMount(dirs.front(), finished_before);
  if (auto s = tagDirs(dirs, id, {.finished_before = finished_before}); !s)
    return s.error().context(std::string(toString(kind)) + " " + shortId(rec.id));

  std::lock_guard<std::mutex> l(mu_);
  auto q = queued_at_.find(rec.id);
  if (q != queued_at_.end()) {
    stats_.last_tag_latency = unixNow() - q->second;
    queued_at_.erase(q);
  }
  return {};
}

// Per-container mode: the project a layer got as Docker made it becomes its
// container's (same id and limit: nothing is retagged).
void ProjectQuotas::adoptLayerProject(const std::string& root, const std::string& container_id) {
  const std::string from = layerKey(root);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!ids_.count(key(kContainer, from)) || ids_.count(key(kContainer, container_id))) return;
  }
  if (auto st = store_.projectIds().renameProject(kContainer, from, container_id); !st) {
    stats_.errors++;
    LOG_WARN(kSub, "%s", st.error().message.c_str());
    return;
  }
  std::lock_guard<std::mutex> l(mu_);
  ids_[key(kContainer, container_id)] = ids_[key(kContainer, from)];
  ids_.erase(key(kContainer, from));
}

Status ProjectQuotas::sync() {
  if (!active()) return Error{ENOTSUP, "prjquota: " + fs_.reason};
  std::lock_guard<std::mutex> s(sync_mu_);
  auto t0 = std::chrono::steady_clock::now();
  const double pass_started = unixNow();
  Status first_error;
  auto note = [&](Status st) {
    if (st) return;
    stats_.errors++;
    LOG_WARN(kSub, "%s", st.error().message.c_str());
    if (first_error) first_error = st;
  };

  // 1. Every live container and volume carries its project.
  std::set<std::string> live_containers, live_users;
  for (ObjectKind kind : {ObjectKind::Container, ObjectKind::Volume}) {
    auto rows = store_.objects().list(kind);
    if (!rows) return rows.error().context(kSub);
    for (const auto& rec : *rows) {
      if (kind == ObjectKind::Container) live_containers.insert(rec.id);
      if (rec.owner) live_users.insert(std::to_string(billedUid(*rec.owner, opt_.bill_root_to_login_uid)));
      note(tagObject(kind, rec, /*owner_changed=*/false));
    }
  }
  std::set<std::string> live_dirs;
  {
    std::lock_guard<std::mutex> t(tag_mu_);
    for (const auto& [c, dirs] : container_dirs_)
      if (live_containers.count(c)) live_dirs.insert(dirs.begin(), dirs.end());
    std::erase_if(container_dirs_, [&](const auto& kv) { return !live_containers.count(kv.first); });
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    std::erase_if(deferred_, [&](const std::string& d) { return !live_dirs.count(d); });
    stats_.deferred_layers = deferred_.size();
    std::erase_if(queued_at_, [&](const auto& kv) { return !live_containers.count(kv.first); });
    // A layer whose create never got a reply (Docker failed it) is not settled.
    const double stale = unixNow() - 3600;
    std::erase_if(waited_out_, [&](const auto& kv) { return kv.second < stale; });
  }

  // 2. Per-user mode: each image layer carries the project of the uid it is billed to.
  if (opt_.mode == ProjectMode::User) {
    auto layers = store_.objects().layers();
    if (!layers) return layers.error().context(kSub);
    for (const auto& l : *layers) {
      if (!l.owner_uid) continue;
      auto dir = locator_->layer(l.id);
      if (!dir) continue;  // not an overlay2 layer we can find: the walk still counts it
      std::string owner = std::to_string(*l.owner_uid);
      live_users.insert(owner);
      auto p = projectFor(kUser, owner);
      if (!p) {
        note(p.error());
        continue;
      }
      if (auto t = tagDirs({*dir}, *p); !t) note(t.error());
    }
  }

  // 3. Ids whose last object is gone are freed (limit cleared first, so the id is clean for reuse).
  auto projects = store_.projectIds().projects();
  if (!projects) return projects.error().context(kSub);
  std::vector<ProjectRecord> kept;
  for (const auto& p : *projects) {
    if (!ofDocker(p)) continue;          // containerd's rows share the table and the range: CtrdQuotas owns them
    if (p.created_at >= pass_started) {  // allocated for a new layer while this pass ran: not judged on its snapshot
      kept.push_back(p);
      continue;
    }
    bool live = p.owner_kind == kUser ? live_users.count(p.owner) > 0 : live_containers.count(p.owner) > 0;
    // A layer's own project, its container not named yet (create reply pending): live while the layer is.
    if (p.owner_kind == kContainer && p.owner.rfind("layer:", 0) == 0)
      live = isDir(locator_->layersDir() + "/" + p.owner.substr(6));
    // A user's project the kernel still charges is in use, whatever the
    // store says: the layers the watch tagged for creates Docker has not
    // answered yet (their rows are not attributed yet). Freed then, the next
    // layer would get a new id and every running container of the first
    // batch be found mounted under the old one (seen on 6.1: 3 deferred).
    if (!live && p.owner_kind == kUser) {
      auto u = readProject(fs_, p.id);
      live = !u || u->inodes > 0 || u->bytes > 0;
    }
    bool wrong_mode = !ofThisMode(p);
    if (live && !wrong_mode) {
      kept.push_back(p);
      continue;
    }
    if (live && wrong_mode) {  // left from the other mode: keep the row until the object is gone
      continue;
    }
    note(setProjectLimit(fs_, p.id, 0));
    if (auto st = store_.projectIds().releaseProject(p.owner_kind, p.owner); !st) {
      note(st);
      continue;
    }
    applied_.erase(p.id);
    stats_.ids_released++;
    LOG_INFO(kSub, "project %u of %s %s released", p.id, p.owner_kind.c_str(), p.owner.c_str());
    std::lock_guard<std::mutex> l(mu_);
    ids_.erase(key(p.owner_kind, p.owner));
  }

  // 4. Limits, then 5. usage.
  note(applyLimits(kept));
  auto r0 = std::chrono::steady_clock::now();
  note(readUsage(kept));
  auto t1 = std::chrono::steady_clock::now();
  stats_.last_read_seconds = std::chrono::duration<double>(t1 - r0).count();
  stats_.last_sync_seconds = std::chrono::duration<double>(t1 - t0).count();
  stats_.last_sync = unixNow();
  stats_.syncs++;
  return first_error;
}

uint64_t ProjectQuotas::limitFor(const ProjectRecord& p) const {
  if (p.owner_kind == kUser) return book_.limitKiB(uint32_t(std::stoul(p.owner))) * 1024;
  return p.limit_bytes.value_or(opt_.container_default_bytes);
}

Status ProjectQuotas::applyLimits(const std::vector<ProjectRecord>& projects) {
  Status first;
  for (const auto& p : projects) {
    uint64_t want = limitFor(p);
    auto it = applied_.find(p.id);
    if (it != applied_.end() && it->second == want) continue;
    if (auto s = setProjectLimit(fs_, p.id, want); !s) {
      if (first) first = s;
      continue;
    }
    applied_[p.id] = want;
    stats_.limit_sets++;
    LOG_INFO(kSub, "project %u (%s %s): hard limit %llu bytes", p.id, p.owner_kind.c_str(), p.owner.c_str(),
             (unsigned long long)want);
  }
  return first;
}

void ProjectQuotas::setFastUsageListener(std::function<void()> f) {
  std::lock_guard<std::mutex> l(mu_);
  on_fast_usage_ = std::move(f);
}

Status ProjectQuotas::readProjectsOf(const std::vector<std::string>& containers) {
  if (!active()) return {};
  // container -> (project id, where its bytes go in KernelUsage)
  std::map<uint32_t, std::pair<bool, std::string>> wanted;  // id -> (per user?, uid text or container id)
  for (const auto& c : containers) {
    if (opt_.mode == ProjectMode::Container) {
      if (auto id = projectOfContainer(c)) wanted[*id] = {false, c};
      continue;
    }
    auto rec = store_.objects().get(ObjectKind::Container, c);
    if (!rec || !*rec || !(*rec)->owner) continue;
    const uint32_t uid = billedUid(*(*rec)->owner, opt_.bill_root_to_login_uid);
    if (auto id = projectOfUser(uid)) wanted[*id] = {true, std::to_string(uid)};
  }
  if (wanted.empty()) return {};
  std::map<uint32_t, uint64_t> bytes;
  for (const auto& [id, _] : wanted) {
    auto u = readProject(fs_, id);
    if (!u) return u.error().context(kSub);
    bytes[id] = u->bytes;
  }
  std::function<void()> listener;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!usage_) return {};  // before the first full read: nothing to update yet
    auto k = std::make_shared<KernelUsage>(*usage_);
    for (const auto& [id, where] : wanted) {
      if (where.first)
        k->users[uint32_t(std::stoul(where.second))] = bytes[id];
      else
        k->containers[where.second] = bytes[id];
    }
    k->read_at = unixNow();
    usage_ = std::move(k);
    listener = on_fast_usage_;
  }
  if (listener) listener();
  return {};
}

Status ProjectQuotas::readUsage(const std::vector<ProjectRecord>& projects) {
  auto all = readProjects(fs_);
  std::map<uint32_t, ProjectUsage> by_id;
  if (all) {
    by_id = std::move(*all);
  } else {
    // No Q_XGETNEXTQUOTA (pre-4.6 kernels): one read per id we hold.
    for (const auto& p : projects) {
      auto u = readProject(fs_, p.id);
      if (!u) return u.error();
      by_id[p.id] = *u;
    }
  }
  auto k = std::make_shared<KernelUsage>();
  k->per_user = opt_.mode == ProjectMode::User;
  k->read_at = unixNow();
  for (const auto& p : projects) {
    auto it = by_id.find(p.id);
    uint64_t bytes = it == by_id.end() ? 0 : it->second.bytes;
    if (p.owner_kind == kUser)
      k->users[uint32_t(std::stoul(p.owner))] = bytes;
    else
      k->containers[p.owner] = bytes;
  }
  std::function<void()> listener;
  {
    std::lock_guard<std::mutex> l(mu_);
    usage_ = std::move(k);
    listener = on_usage_;
  }
  if (listener) listener();
  return {};
}

nlohmann::json ProjectQuotas::gateHealth() const {
  if (!gate_) {
    return {{"state", gate_unavailable_.empty() ? "off" : "unavailable"},
            {"reason", gate_unavailable_.empty() ? "no layer watch" : gate_unavailable_}};
  }
  const auto& g = gate_->stats();
  return {{"state", "on"},
          {"guarded", g.guarded.load()},
          {"held", g.held.load()},
          {"tagged", stats_.gated_tags.load()},
          {"timeouts", g.timeouts.load()},
          {"longest_hold_ms", g.longest_hold.load() * 1000}};
}

Health ProjectQuotas::health() const {
  Health h;
  const auto& st = stats_;
  h.report = {{"state", active() ? "active" : "degraded"},
              {"usage_source", active() ? "kernel" : "docker"},
              {"mode", toString(opt_.mode)},
              {"path", fs_.path},
              {"filesystem", fs_.fstype},
              {"device", fs_.device},
              {"ids", {opt_.id_min, opt_.id_max}}};
  if (!active()) {
    h.report["reason"] = fs_.reason;
    h.degraded.push_back("no kernel project quotas: " + fs_.reason + " (usage is walk-based)");
    return h;
  }
  h.report["syncs"] = st.syncs.load();
  h.report["errors"] = st.errors.load();
  h.report["ids_allocated"] = st.ids_allocated.load();
  h.report["ids_released"] = st.ids_released.load();
  h.report["tagged_trees"] = st.tagged_trees.load();
  h.report["deferred_layers"] = st.deferred_layers.load();
  h.report["deferred_layers_total"] = st.deferred_layers_total.load();
  h.report["raced_mounts"] = st.raced_mounts.load();
  h.report["early_tagged"] = st.early_tagged.load();
  h.report["early_unclear"] = st.early_unclear.load();
  h.report["early_mounting"] = st.early_mounting.load();
  h.report["gate"] = gateHealth();
  h.report["last_sync"] = st.last_sync.load();
  h.report["last_sync_seconds"] = st.last_sync_seconds.load();
  if (auto n = st.deferred_layers.load())
    h.degraded.push_back(std::to_string(n) +
                         " container layer(s) started before their owner was known: their "
                         "writes are outside the owner's project limit until they stop");
  return h;
}

}  // namespace dockquota
