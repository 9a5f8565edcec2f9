// SPDX-License-Identifier: Apache-2.0
#include "agent/attribution/attributor.h"

#include <malloc.h>

#include <set>

#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/base/short_id.h"
#include "agent/runtime/docker_lists.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "attribution";

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

std::vector<std::pair<const char*, uint64_t>> lossCounters(const AttributorStats& s) {
  return {{"store_error", s.store_errors.load()},
          {"docker_error", s.docker_errors.load()},
          {"reconcile_gone", s.reconcile_gone.load()},
          {"removal_unconfirmed", s.removal_unconfirmed.load()},
          {"revived_reset", s.revived_reset.load()},
          {"restored", s.restored.load()},
          {"missed", s.missed.load()},
          {"unwatched_create", s.unwatched_creates.load()},
          {"missed_unchecked", s.missed_unchecked.load()}};
}

Attributor::Attributor(Store& store, DockerClient& docker) : Attributor(store, docker, Options{}) {}

Attributor::Attributor(Store& store, DockerClient& docker, Options options)
    : store_(store), docker_(docker), options_(std::move(options)) {}

Attributor::~Attributor() { stop(); }

void Attributor::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (worker_.running()) return;
  stop_ = false;
  worker_.start(
      "dq-attrib", [this] { run(); }, [this] { halt(); });
}

void Attributor::stop() {
  halt();  // also when never started: drain() returns once stopped
  worker_.stop();
}

void Attributor::halt() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
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

size_t Attributor::pendingMissChecks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return checks_.size();
}

void Attributor::run() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    // One wait at a time, then look again: a check queued meanwhile may be
    // due before whatever the wait was for.
    if (!stop_ && tasks_.empty()) {
      if (checks_.empty()) {
        cv_.wait(lock);
      } else if (checks_.front().due > std::chrono::steady_clock::now()) {
        cv_.wait_until(lock, checks_.front().due);
      }
    }
    if (stop_) return;
    std::function<void()> task;
    if (!tasks_.empty()) {
      task = std::move(tasks_.front());
      tasks_.pop_front();
    } else if (!checks_.empty() && checks_.front().due <= std::chrono::steady_clock::now()) {
      MissCheck c = std::move(checks_.front());
      checks_.pop_front();
      task = [this, c] { checkMissed(c.kind, c.id, c.created_at); };
    } else {
      continue;
    }
    busy_ = true;
    lock.unlock();
    try {
      task();
    } catch (const std::exception& e) { LOG_ERROR(kSub, "task failed: %s", e.what()); }
    lock.lock();
    busy_ = false;
    cv_.notify_all();
  }
}

bool Attributor::goneSince(ObjectKind kind, const std::string& id, double t) {
  auto rec = store_.objects().get(kind, id);
  return rec && *rec && (*rec)->gone_at && *(*rec)->gone_at >= t;
}

void Attributor::expectEvidence(ObjectKind kind, const std::string& id, double created_at) {
  if (!options_.watching || !options_.watching(created_at - options_.request_grace.count() / 1000.0)) {
    // Not watching: Docker made it without the probes able to see who asked,
    // unless an earlier run of the agent did (a create replayed after a
    // restart, already attributed or removed).
    auto rec = store_.objects().get(kind, id);
    if (rec && *rec && ((*rec)->owner || (*rec)->gone_at)) return;
    stats_.unwatched_creates++;
    LOG_WARN(kSub, "%s %s created while the agent was not watching docker.sock: it stays unattributed", toString(kind),
             shortId(id).c_str());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    checks_.push_back({std::chrono::steady_clock::now() + options_.missed_after, kind, id, created_at});
  }
  cv_.notify_all();
}

void Attributor::checkMissed(ObjectKind kind, const std::string& id, double created_at) {
  if (!options_.watching || !options_.watching(created_at - options_.request_grace.count() / 1000.0)) {
    // The probes or the events stream went away meanwhile: no verdict.
    stats_.missed_unchecked++;
    return;
  }
  const double now = unixNow();
  auto flagged = store_.objects().markMissed(kind, id, now, created_at);
  if (!flagged) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", flagged.error().message.c_str());
    return;
  }
  if (!*flagged) return;
  stats_.missed++;
  auto rec = store_.objects().get(kind, id);
  const std::string name = rec && *rec ? (*rec)->name : "";
  LOG_ERROR(kSub,
            "MISSED: %s %s (%s) was created while the agent watched docker.sock, but no kernel evidence of who "
            "asked arrived within %lld ms; it is unattributed and in the review queue",
            toString(kind), shortId(id).c_str(), name.c_str(), static_cast<long long>(options_.missed_after.count()));
  Event e;
  e.type = event_type::kAttributionMissed;
  e.uid = UINT32_MAX;  // nobody known: (uid_t)-1
  e.user = "";
  e.container_id = kind == ObjectKind::Container ? id : "";
  e.created_at = now;
  e.detail = {{"entity_type", toString(kind)},
              {"entity_id", id},
              {"name", name},
              {"created_at", created_at},
              {"check_after_s", options_.missed_after.count() / 1000.0}};
  if (auto r = store_.eventLog().addEvent(e, EventRoute{}); !r) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", r.error().message.c_str());
  }
}

void Attributor::attribute(ObjectKind kind, const std::string& id, const Evidence& ev, bool brings_new) {
  auto changed = store_.objects().attribute(kind, id, ev, brings_new);
  if (!changed) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", changed.error().message.c_str());
    return;
  }
  if (*changed) {
    stats_.attributed++;
    LOG_INFO(kSub, "%s %s -> uid %u (login uid %d, pid %u, %s, %s)", toString(kind), shortId(id).c_str(), ev.uid,
             ev.login_uid ? static_cast<int>(*ev.login_uid) : -1, ev.pid, ev.comm.c_str(), ev.method.c_str());
  }
}

void Attributor::noteSeen(ObjectKind kind, const std::string& id, const std::string& name, const std::string& parent,
                          const std::optional<std::string>& label, std::optional<uint64_t> observed_since) {
  auto seen = store_.objects().noteSeen(kind, id, name, parent, label, unixNow(), observed_since);
  if (!seen) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", seen.error().message.c_str());
    return;
  }
  switch (*seen) {
    case Seen::Reset:
      stats_.revived_reset++;
      LOG_INFO(kSub, "%s %s: gone, and Docker has it again: a new object with a reused name (unattributed)",
               toString(kind), shortId(id).c_str());
      break;
    case Seen::Restored: stats_.restored++; break;
    case Seen::Stale:
      if (observed_since && *observed_since != 0) stats_.stale_observations++;
      break;
    default: break;
  }
}

bool Attributor::markGone(ObjectKind kind, const std::string& id, std::optional<uint64_t> unless_changed_after) {
  auto marked = store_.objects().markGone(kind, id, unixNow(), unless_changed_after);
  if (!marked) {
    stats_.store_errors++;
    LOG_ERROR(kSub, "%s", marked.error().message.c_str());
    return false;
  }
  if (*marked && on_gone_) on_gone_(kind, id);
  return *marked;
}

void Attributor::confirmGone(ObjectKind kind, const std::string& id, bool after_removal) {
  const uint64_t since = store_.objects().sequence();
  Result<nlohmann::json> r = kind == ObjectKind::Container ? docker_.inspectContainer(id)
                             : kind == ObjectKind::Image   ? docker_.inspectImage(id)
                                                           : docker_.inspectVolume(id);
  if (r) {
    if (!after_removal) return;  // there, as its row says
    // A 2xx reply to a removal, and Docker still has it: the reply was not
    // this request's (a slipped pairing) or something re-made it. Nothing is
    // marked; the destroy event or a later list decides.
    stats_.removal_unconfirmed++;
    LOG_WARN(kSub, "%s %s: a removal call got a 2xx reply, but Docker still has it; not marked gone", toString(kind),
             shortId(id).c_str());
    return;
  }
  if (r.error().code != ENOENT) {
    stats_.docker_errors++;
    LOG_WARN(kSub, "cannot check whether Docker still has %s %s: %s (its event or the next reconcile will)",
             toString(kind), shortId(id).c_str(), r.error().message.c_str());
    return;
  }
  if (markGone(kind, id, since)) stats_.gone_by_check++;
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
    // A create reply names a new object: it never revives a gone row
    // (observed_since 0); attribute() tells a reused name by time.
    case ApiAction::ContainerCreate:
      for (const auto& id : call.ids) {
        // Record the name and the (untrusted) label first, then the owner.
        noteSeen(ObjectKind::Container, id, call.container_name, "", call.label_user, 0);
        attribute(ObjectKind::Container, id, ev, /*brings_new=*/true);
        post([this, id, ev] { attributeContainerVolumes(id, ev); });
      }
      break;
    case ApiAction::ImageImport:
    case ApiAction::ImageCommit:
      // A new image config (its creation time is in it): the id is new by construction.
      for (const auto& id : call.ids) {
        noteSeen(ObjectKind::Image, id, call.refs.empty() ? "" : call.refs.front(), "", std::nullopt, 0);
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
        noteSeen(ObjectKind::Volume, id, id, "", call.label_user, 0);
        attribute(ObjectKind::Volume, id, ev, /*brings_new=*/false);
      }
      break;
    // A removal's reply is a hint, never proof: a client can make the agent
    // pair a DELETE with another request's 2xx. Docker confirms (a 404 now,
    // else the destroy event or the next list) before a row is marked gone.
    case ApiAction::ContainerRemove:
      for (const auto& ref : call.refs) {
        auto id = store_.objects().resolve(ObjectKind::Container, ref);
        if (!id) {
          stats_.store_errors++;
          continue;
        }
        if (*id) post([this, cid = **id] { confirmGone(ObjectKind::Container, cid, true); });
      }
      break;
    case ApiAction::ImageRemove:
      for (const auto& id : call.ids) post([this, id] { confirmGone(ObjectKind::Image, id, true); });
      break;
    case ApiAction::VolumeRemove:
      for (const auto& ref : call.refs) post([this, ref] { confirmGone(ObjectKind::Volume, ref, true); });
      break;
    case ApiAction::ImageTag:
      // A tag takes no disk and does not move ownership.
      break;
  }
}

void Attributor::attributeImageRef(const std::string& ref, const Evidence& ev) {
  const uint64_t since = store_.objects().sequence();
  auto img = docker_.inspectImage(ref);
  if (!img) {
    stats_.docker_errors++;
    LOG_WARN(kSub, "cannot resolve image %s for uid %u: %s", ref.c_str(), ev.uid, img.error().message.c_str());
    return;
  }
  const std::string id = jsonText(*img, "Id");
  if (id.empty()) return;
  attribute(ObjectKind::Image, id, ev, /*brings_new=*/false);
  noteSeen(ObjectKind::Image, id, ref, "", std::nullopt, since);
}

void Attributor::attributeContainerVolumes(const std::string& container_id, const Evidence& ev) {
  const uint64_t since = store_.objects().sequence();
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
  noteSeen(ObjectKind::Container, container_id, name, jsonText(*c, "Image"), std::nullopt, since);
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
    noteSeen(ObjectKind::Volume, vol, vol, container_id, std::nullopt, since);
    attribute(ObjectKind::Volume, vol, vev, /*brings_new=*/false);
  }
}

namespace {
// Docker's time of an event, unix seconds (timeNano, else time; else now).
double eventTime(const nlohmann::json& e) {
  auto t = e.find("timeNano");
  if (t != e.end() && t->is_number()) return t->get<double>() / 1e9;
  t = e.find("time");
  if (t != e.end() && t->is_number()) return t->get<double>();
  return unixNow();
}
}  // namespace

void Attributor::onDockerEvent(const nlohmann::json& e) {
  const std::string type = jsonText(e, "Type");
  const std::string action = jsonText(e, "Action");
  auto actor = e.find("Actor");
  if (actor == e.end() || !actor->is_object()) return;
  const std::string id = jsonText(*actor, "ID");
  const nlohmann::json attrs = actor->value("Attributes", nlohmann::json::object());
  if (id.empty()) return;
  // Events are Docker's own word, in order: a destroy/delete marks gone. A
  // create event lags the create reply (and the removal reply right after
  // it), and after a restart the stream replays creates already removed: it
  // never revives a gone container (ids are never reused; a wrong gone mark
  // is the next list's to undo), nor a volume marked gone after it happened.
  if (type == "container") {
    if (action == "create") {
      noteSeen(ObjectKind::Container, id, jsonText(attrs, "name"), "", labelUser(attrs), 0);
      expectEvidence(ObjectKind::Container, id, eventTime(e));
    } else if (action == "destroy") {
      if (markGone(ObjectKind::Container, id)) stats_.gone_by_event++;
    }
  } else if (type == "image") {
    // Image events name an id ("sha256:...") or a reference, by action.
    if (action == "delete") {
      if (markGone(ObjectKind::Image, id.rfind("sha256:", 0) == 0 ? id : "sha256:" + id)) stats_.gone_by_event++;
    } else if (action == "pull" || action == "import" || action == "load" || action == "tag" || action == "commit" ||
               action == "build") {
      // Only an import always makes a new image (pull, load, build may find it there).
      const double created = eventTime(e);
      const bool is_new = action == "import";
      post([this, id, created, is_new] {
        const uint64_t since = store_.objects().sequence();
        auto img = docker_.inspectImage(id);
        if (img) {
          auto tags = img->value("RepoTags", nlohmann::json::array());
          std::string name = tags.is_array() && !tags.empty() && tags[0].is_string() ? tags[0].get<std::string>() : "";
          const std::string full = jsonText(*img, "Id");
          noteSeen(ObjectKind::Image, full, name, "", std::nullopt, since);
          if (is_new && !full.empty()) expectEvidence(ObjectKind::Image, full, created);
        } else if (img.error().code != ENOENT) {
          stats_.docker_errors++;
        }
      });
    }
  } else if (type == "volume") {
    if (action == "create") {
      if (goneSince(ObjectKind::Volume, id, eventTime(e))) return;
      noteSeen(ObjectKind::Volume, id, id, "", std::nullopt);
      expectEvidence(ObjectKind::Volume, id, eventTime(e));
    } else if (action == "destroy") {
      if (markGone(ObjectKind::Volume, id)) stats_.gone_by_event++;
    }
  }
}

Status Attributor::reconcile() {
  // Before the first list: rows inserted, attributed or marked gone after
  // this are newer than the lists and are not judged by them (a create
  // attributed while the lists are read is not in them).
  const uint64_t mark = store_.objects().sequence();
  const double now = unixNow();
  auto fail = [&](const Error& e) {
    stats_.docker_errors++;
    return e.context("reconcile");
  };
  auto containers = docker_.listContainers();
  if (!containers) return fail(containers.error());
  auto images = docker_.listImages();
  if (!images) return fail(images.error());
  auto volumes = docker_.listVolumes();
  if (!volumes) return fail(volumes.error());

  ReconcileResult total;
  auto apply = [&](ObjectKind kind, const std::set<std::string>& ids) -> Status {
    auto rc = store_.objects().reconcile(kind, ids, now, mark);
    if (!rc) {
      stats_.store_errors++;
      return rc.error().context("reconcile");
    }
    total.added += rc->added, total.gone += rc->gone, total.revived += rc->revived;
    total.restored += rc->restored, total.kept_recent += rc->kept_recent, total.stale += rc->stale;
    stats_.reconcile_gone += rc->gone;
    stats_.revived_reset += rc->revived;
    stats_.restored += rc->restored;
    stats_.reconcile_kept_recent += rc->kept_recent;
    stats_.stale_observations += rc->stale;
    // Changed while the list was read, and not in it: made after the list
    // began, or made and removed while the events stream was down (no
    // destroy event will come). Docker answers for each.
    for (auto& id : rc->kept_ids) post([this, kind, id = std::move(id)] { confirmGone(kind, id, false); });
    return {};
  };

  std::set<std::string> ids;
  for (const auto& c : *containers) ids.insert(c.id);
  if (auto st = apply(ObjectKind::Container, ids); !st) return st;
  for (const auto& c : *containers) noteSeen(ObjectKind::Container, c.id, c.name, c.image_id, c.label_user, mark);

  ids.clear();
  for (const auto& i : *images) ids.insert(i.id);
  if (auto st = apply(ObjectKind::Image, ids); !st) return st;
  for (const auto& i : *images)
    noteSeen(ObjectKind::Image, i.id, i.tags.empty() ? "" : i.tags.front(), "", std::nullopt, mark);

  ids.clear();
  for (const auto& v : *volumes) ids.insert(v.name);
  if (auto st = apply(ObjectKind::Volume, ids); !st) return st;
  for (const auto& v : *volumes) noteSeen(ObjectKind::Volume, v.name, v.name, "", v.label_user, mark);

  stats_.reconciles++;
  stats_.last_reconcile = now;
  malloc_trim(0);  // the lists and the store's statements were short-lived; return their pages
  LOG_INFO(kSub,
           "reconciled with Docker: %zu containers, %zu images, %zu volumes; %zu new (unattributed), %zu gone, "
           "%zu restored, %zu changed while listing (left as they are)",
           containers->size(), images->size(), volumes->size(), total.added + total.revived, total.gone, total.restored,
           total.kept_recent + total.stale);
  return {};
}

Health Attributor::health() const {
  Health h;
  const auto& as = stats_;
  h.report = {{"calls", as.calls.load()},
              {"failed_calls", as.failed_calls.load()},
              {"attributed", as.attributed.load()},
              {"docker_errors", as.docker_errors.load()},
              {"store_errors", as.store_errors.load()},
              {"reconciles", as.reconciles.load()}};
  nlohmann::json losses = nlohmann::json::object();
  for (const auto& [reason, n] : lossCounters(as)) losses[reason] = n;
  auto unresolved = store_.objects().unresolvedMissed();
  if (!unresolved) h.degraded.push_back("store: " + unresolved.error().message);
  const uint64_t open_misses = unresolved ? *unresolved : 0;
  const auto missed_ms = std::to_string(options_.missed_after.count());
  h.report["losses"] = losses;
  h.report["missed_unresolved"] = open_misses;
  h.report["missed_check_ms"] = options_.missed_after.count();
  h.report["watching"] = options_.watching ? options_.watching(unixNow()) : false;
  h.report["gone"] = {{"event", as.gone_by_event.load()},
                      {"inspect_404", as.gone_by_check.load()},
                      {"reconcile", as.reconcile_gone.load()}};
  h.report["reconcile_skipped"] = {{"changed_while_listing", as.reconcile_kept_recent.load()},
                                   {"stale", as.stale_observations.load()}};
  if (as.missed.load() > 0 || open_misses > 0)
    h.degraded.push_back("missed: " + std::to_string(as.missed.load()) + " object(s) created since the start " +
                         "while the agent watched had no kernel evidence after " + missed_ms + " ms; " +
                         std::to_string(open_misses) +
                         " flagged object(s) still without an owner (see the review queue)");
  if (as.removal_unconfirmed.load() > 0)
    h.degraded.push_back(std::to_string(as.removal_unconfirmed.load()) +
                         " removal call(s) answered 2xx for objects Docker still has (not marked gone)");
  return h;
}

}  // namespace dockquota
