#include "agent/attributor.h"

#include <malloc.h>

#include <set>

#include "agent/docker_lists.h"
#include "agent/log.h"
#include "agent/probe_util.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "attribution";

std::string shortId(const std::string& id) {
  std::string s = id.rfind("sha256:", 0) == 0 ? id.substr(7) : id;
  return s.substr(0, 12);
}

}  // namespace

Evidence evidenceFor(const ApiCall& call, const ClientInfo& client, Source source) {
  Evidence ev;
  ev.source = source;
  ev.uid = client.uid;
  ev.gid = client.gid;
  if (client.loginuid != UINT32_MAX) ev.login_uid = client.loginuid;
  ev.pid = client.tgid;
  ev.comm = client.comm;
  ev.exe = client.exe;
  ev.method = toString(call.action);
  ev.request_time = monoToUnix(call.request_ns);
  ev.time = monoToUnix(call.response_ns);
  return ev;
}

uint32_t billedUid(const Evidence& ev, bool bill_root_to_login_uid) {
  if (bill_root_to_login_uid && ev.uid == 0 && ev.login_uid && *ev.login_uid != 0) return *ev.login_uid;
  return ev.uid;
}

Attributor::Attributor(Store& store, DockerClient& docker) : store_(store), docker_(docker) {}

Attributor::~Attributor() { stop(); }

void Attributor::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (worker_.joinable()) return;
  stop_ = false;
  worker_ = std::thread([this] { run(); });
}

void Attributor::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Attributor::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  cv_.notify_all();
}

void Attributor::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return (tasks_.empty() && !busy_) || stop_; });
}

void Attributor::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
    if (stop_) return;
    auto task = std::move(tasks_.front());
    tasks_.pop_front();
    busy_ = true;
    lock.unlock();
    try {
      task();
    } catch (const std::exception& e) {
      LOG_ERROR(kSub, "task failed: %s", e.what());
    }
    lock.lock();
    busy_ = false;
    cv_.notify_all();
  }
}

void Attributor::attribute(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new) {
  auto changed = store_.attribute(kind, id, ev, brings_new);
  if (!changed) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", changed.error().message.c_str());
    return;
  }
  if (*changed) {
    stats_.attributed++;
    LOG_INFO(kSub, "%s %s -> uid %u (login uid %d, pid %u, %s, %s)", toString(kind), shortId(id).c_str(), ev.uid,
             ev.login_uid ? static_cast<int>(*ev.login_uid) : -1, ev.pid, ev.comm.c_str(), ev.method.c_str());
    if (on_owner_) on_owner_(kind, id);
  }
}

void Attributor::noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                          const std::optional<std::string>& label) {
  if (auto st = store_.noteSeen(kind, id, name, parent, label, unixNow()); !st) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", st.error().message.c_str());
  }
}

void Attributor::markGone(ObjectKind kind, const std::string& id) {
  if (auto st = store_.markGone(kind, id, unixNow()); !st) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", st.error().message.c_str());
    return;
  }
  if (on_gone_) on_gone_(kind, id);
}

void Attributor::onApiCall(const ApiCall& call, const ClientInfo& client) {
  if (!call.succeeded) {
    stats_.failed_calls++;
    LOG_DEBUG(kSub, "%s by uid %u failed with HTTP %d: nothing to attribute", toString(call.action), client.uid,
              call.status);
    return;
  }
  stats_.calls++;
  const Evidence ev = evidenceFor(call, client);
  switch (call.action) {
    case ApiAction::ContainerCreate:
      for (const auto& id : call.ids) {
        // Record the name and the (untrusted) label first, then the owner.
        noteSeen(ObjectKind::Container, id, call.container_name, "", call.label_user);
        attribute(ObjectKind::Container, id, ev, /*brings_new=*/true);
        post([this, id, ev] { attributeContainerVolumes(id, ev); });
      }
      break;
    case ApiAction::ImageImport:
    case ApiAction::ImageCommit:
      // A new image config (its creation time is in it): the id is new by construction.
      for (const auto& id : call.ids) {
        noteSeen(ObjectKind::Image, id, call.refs.empty() ? "" : call.refs.front(), "", std::nullopt);
        attribute(ObjectKind::Image, id, ev, /*brings_new=*/true);
      }
      break;
    case ApiAction::ImageBuild:
    case ApiAction::ImageLoad:
    case ApiAction::ImagePull:
      // May find the image already there (cache hit, same tarball, pulled
      // before): only credited if it appeared while this request ran.
      for (const auto& id : call.ids) attribute(ObjectKind::Image, id, ev, /*brings_new=*/false);
      if (call.ids.empty() || call.action == ApiAction::ImageLoad) {
        for (const auto& ref : call.refs) post([this, ref, ev] { attributeImageRef(ref, ev); });
      }
      break;
    case ApiAction::VolumeCreate:
      // Creating a volume that exists returns it: not necessarily new.
      for (const auto& id : call.ids) {
        noteSeen(ObjectKind::Volume, id, id, "", call.label_user);
        attribute(ObjectKind::Volume, id, ev, /*brings_new=*/false);
      }
      break;
    case ApiAction::ContainerRemove:
      for (const auto& ref : call.refs) {
        auto id = store_.resolve(ObjectKind::Container, ref);
        if (id && *id) markGone(ObjectKind::Container, **id);
      }
      break;
    case ApiAction::ImageRemove:
      for (const auto& id : call.ids) markGone(ObjectKind::Image, id);
      break;
    case ApiAction::VolumeRemove:
      for (const auto& ref : call.refs) markGone(ObjectKind::Volume, ref);
      break;
    case ApiAction::ImageTag:
      // A tag takes no disk and does not move ownership.
      break;
  }
}

void Attributor::attributeImageRef(const std::string& ref, const Evidence& ev) {
  auto img = docker_.inspectImage(ref);
  if (!img) {
    stats_.docker_errors++;
    LOG_WARN(kSub, "cannot resolve image %s for uid %u: %s", ref.c_str(), ev.uid, img.error().message.c_str());
    return;
  }
  const std::string id = jsonText(*img, "Id");
  if (id.empty()) return;
  attribute(ObjectKind::Image, id, ev, /*brings_new=*/false);
  noteSeen(ObjectKind::Image, id, ref, "", std::nullopt);
}

void Attributor::attributeContainerVolumes(const std::string& container_id, const Evidence& ev) {
  auto c = docker_.inspectContainer(container_id);
  if (!c) {
    if (c.error().code != ENOENT) {
      stats_.docker_errors++;
      LOG_WARN(kSub, "inspect container %s: %s", shortId(container_id).c_str(), c.error().message.c_str());
    }
    return;
  }
  std::string name = jsonText(*c, "Name");
  if (!name.empty() && name[0] == '/') name.erase(0, 1);
  noteSeen(ObjectKind::Container, container_id, name, jsonText(*c, "Image"), std::nullopt);
  // Volumes the create made (anonymous ones, and named ones that did not
  // exist) belong to whoever created the container.
  auto mounts = c->find("Mounts");
  if (mounts == c->end() || !mounts->is_array()) return;
  for (const auto& m : *mounts) {
    if (jsonText(m, "Type") != "volume") continue;
    const std::string vol = jsonText(m, "Name");
    if (vol.empty()) continue;
    Evidence vev = ev;
    vev.method = "anonymous_volume";
    noteSeen(ObjectKind::Volume, vol, vol, container_id, std::nullopt);
    attribute(ObjectKind::Volume, vol, vev, /*brings_new=*/false);
  }
}

void Attributor::onDockerEvent(const nlohmann::json& e) {
  const std::string type = jsonText(e, "Type");
  const std::string action = jsonText(e, "Action");
  auto actor = e.find("Actor");
  if (actor == e.end() || !actor->is_object()) return;
  const std::string id = jsonText(*actor, "ID");
  const nlohmann::json attrs = actor->value("Attributes", nlohmann::json::object());
  if (id.empty()) return;
  if (type == "container") {
    if (action == "create") {
      noteSeen(ObjectKind::Container, id, jsonText(attrs, "name"), "", labelUser(attrs));
    } else if (action == "destroy") {
      markGone(ObjectKind::Container, id);
    }
  } else if (type == "image") {
    // Image events name an id ("sha256:...") or a reference, by action.
    if (action == "delete") {
      markGone(ObjectKind::Image, id.rfind("sha256:", 0) == 0 ? id : "sha256:" + id);
    } else if (action == "pull" || action == "import" || action == "load" || action == "tag" ||
               action == "commit" || action == "build") {
      post([this, id] {
        auto img = docker_.inspectImage(id);
        if (img) {
          auto tags = img->value("RepoTags", nlohmann::json::array());
          std::string name = tags.is_array() && !tags.empty() && tags[0].is_string() ? tags[0].get<std::string>() : "";
          noteSeen(ObjectKind::Image, jsonText(*img, "Id"), name, "", std::nullopt);
        }
      });
    }
  } else if (type == "volume") {
    if (action == "create") {
      noteSeen(ObjectKind::Volume, id, id, "", std::nullopt);
    } else if (action == "destroy") {
      markGone(ObjectKind::Volume, id);
    }
  }
}

Status Attributor::reconcile() {
  const double now = unixNow();
  auto containers = docker_.listContainers();
  if (!containers) return containers.error().context("reconcile");
  auto images = docker_.listImages();
  if (!images) return images.error().context("reconcile");
  auto volumes = docker_.listVolumes();
  if (!volumes) return volumes.error().context("reconcile");

  std::set<std::string> ids;
  for (const auto& c : *containers) ids.insert(c.id);
  auto rc = store_.reconcile(ObjectKind::Container, ids, now);
  if (!rc) return rc.error().context("reconcile");
  ReconcileResult total = *rc;
  for (const auto& c : *containers) noteSeen(ObjectKind::Container, c.id, c.name, c.image_id, c.label_user);

  ids.clear();
  for (const auto& i : *images) ids.insert(i.id);
  rc = store_.reconcile(ObjectKind::Image, ids, now);
  if (!rc) return rc.error().context("reconcile");
  total.added += rc->added, total.gone += rc->gone, total.revived += rc->revived;
  for (const auto& i : *images) noteSeen(ObjectKind::Image, i.id, i.tags.empty() ? "" : i.tags.front(), "", std::nullopt);

  ids.clear();
  for (const auto& v : *volumes) ids.insert(v.name);
  rc = store_.reconcile(ObjectKind::Volume, ids, now);
  if (!rc) return rc.error().context("reconcile");
  total.added += rc->added, total.gone += rc->gone, total.revived += rc->revived;
  for (const auto& v : *volumes) noteSeen(ObjectKind::Volume, v.name, v.name, "", v.label_user);

  stats_.reconciles++;
  stats_.last_reconcile = now;
  malloc_trim(0);  // the lists and the store's statements were short-lived; return their pages
  LOG_INFO(kSub, "reconciled with Docker: %zu containers, %zu images, %zu volumes; %zu new (unattributed), %zu gone",
           containers->size(), images->size(), volumes->size(), total.added + total.revived, total.gone);
  return {};
}

}  // namespace dockquota
