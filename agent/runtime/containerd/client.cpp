// SPDX-License-Identifier: Apache-2.0
#include "agent/runtime/containerd/client.h"

#include <signal.h>
#include <time.h>

#include <cerrno>
#include <cstring>

#include "agent/base/backoff.h"
#include "agent/runtime/containerd/mount_options.h"
#include "github.com/containerd/containerd/api/events/container.pb.h"
#include "github.com/containerd/containerd/api/events/task.pb.h"

namespace dqctrd {
namespace {

using std::chrono::milliseconds;
namespace ev = containerd::events;

// containerd's metadata key for the namespace of a call (namespaces/grpc.go).
constexpr const char* kNamespaceHeader = "containerd-namespace";
// containerd lists whole container specs (10-50 KiB each): a node with a few
// hundred containers passes gRPC's 4 MiB default.
constexpr int kMaxMessage = 64 << 20;

int64_t monoNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

int errnoOf(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::NOT_FOUND: return ENOENT;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return ETIMEDOUT;
    case grpc::StatusCode::UNAVAILABLE: return ECONNREFUSED;
    case grpc::StatusCode::FAILED_PRECONDITION: return EBUSY;
    case grpc::StatusCode::ALREADY_EXISTS: return EEXIST;
    case grpc::StatusCode::CANCELLED: return ECANCELED;
    default: return EIO;
  }
}

uint32_t stateOf(containerd::v1::types::Status s) {
  using containerd::v1::types::Status;
  switch (s) {
    case Status::CREATED: return DQ_CTRD_STATE_CREATED;
    case Status::RUNNING: return DQ_CTRD_STATE_RUNNING;
    case Status::STOPPED: return DQ_CTRD_STATE_STOPPED;
    case Status::PAUSED:
    case Status::PAUSING: return DQ_CTRD_STATE_PAUSED;
    default: return DQ_CTRD_STATE_UNKNOWN;
  }
}

// The envelope's payload is a protobuf Any whose type URL is containerd's
// typeurl name ("containerd.events.TaskCreate", no "type.googleapis.com/"),
// which protobuf's UnpackTo refuses: matched by suffix, parsed by hand.
template <typename M>
bool unpack(const es::Envelope& env, M& m) {
  const std::string& url = env.event().type_url();
  const std::string& name = M::descriptor()->full_name();
  if (url.size() < name.size() || url.compare(url.size() - name.size(), name.size(), name) != 0) return false;
  if (url.size() > name.size() && url[url.size() - name.size() - 1] != '/') return false;
  return m.ParseFromString(env.event().value());
}

}  // namespace

Client::Client(const dq_ctrd_config& c)
    : address_(c.address),
      call_timeout_(milliseconds(c.call_timeout_ms)),
      backoff_min_(milliseconds(c.backoff_min_ms)),
      backoff_max_(milliseconds(c.backoff_max_ms)),
      on_event_(c.on_event),
      log_(c.log),
      ctx_(c.ctx),
      rng_(std::random_device{}()) {
  for (uint32_t i = 0; i < c.n_namespaces; i++) namespaces_.emplace_back(c.namespaces[i]);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessage);
  // The channel's own reconnect backoff (default up to 120 s) would keep our
  // retries failing long after containerd is back: ours (with jitter) rules.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Not only a backoff: gRPC gives each connection attempt this long to
  // finish its HTTP/2 handshake (MIN_CONNECT_TIMEOUT). At 100 ms a containerd
  // slow to send its SETTINGS frame (a loaded node: 15 attempts in a row
  // failed in the systemd VM) was never reached. As long as a call may take.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, int(std::max<int64_t>(call_timeout_.count(), 1000)));
  // The event stream has no deadline (it lasts as long as containerd): a
  // containerd that hangs without closing the socket is found by keepalive
  // pings. 6 min: containerd's gRPC server (grpc-go defaults, no policy set)
  // answers pings more often than every 5 min with GOAWAY "too_many_pings".
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 6 * 60 * 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20 * 1000);
  channel_ = grpc::CreateCustomChannel("unix://" + address_, grpc::InsecureChannelCredentials(), args);
  events_ = es::Events::NewStub(channel_);
  containers_ = cs::Containers::NewStub(channel_);
  tasks_ = ts::Tasks::NewStub(channel_);
  snapshots_ = ss::Snapshots::NewStub(channel_);
  stats_.struct_size = sizeof stats_;
  stats_.down_since_ns = monoNs();
}

Client::~Client() { stop(); }

int Client::start() {
  if (thread_.joinable()) return EALREADY;
  thread_ = std::thread([this] { run(); });
  pthread_setname_np(thread_.native_handle(), "dq-containerd");
  return 0;
}

void Client::stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
    if (stream_ctx_) stream_ctx_->TryCancel();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Client::stats(dq_ctrd_stats* out) {
  std::lock_guard<std::mutex> l(stats_mu_);
  *out = stats_;
}

void Client::log(uint32_t level, const std::string& msg) {
  if (log_) log_(ctx_, level, msg.c_str());
}

void Client::setError(const std::string& msg) {
  count([&](dq_ctrd_stats& s) { snprintf(s.last_error, sizeof s.last_error, "%s", msg.c_str()); });
}

void Client::setConnected(bool up) {
  count([&](dq_ctrd_stats& s) {
    if (up) {
      if (s.connects > 0) s.reconnects++;
      s.connects++;
    }
    s.connected = up;
    s.down_since_ns = up ? 0 : monoNs();
  });
}

std::unique_ptr<grpc::ClientContext> Client::context(const std::string& ns, milliseconds timeout) {
  auto c = std::make_unique<grpc::ClientContext>();
  if (!ns.empty()) c->AddMetadata(kNamespaceHeader, ns);
  c->set_deadline(std::chrono::system_clock::now() + (timeout.count() > 0 ? timeout : call_timeout_));
  return c;
}

Outcome Client::check(const grpc::Status& st, const std::string& what) {
  if (st.ok()) return {};
  Outcome o{errnoOf(st.error_code()), "containerd: " + what + ": " + st.error_message()};
  if (o.err != ENOENT) {
    count([](dq_ctrd_stats& s) { s.rpc_errors++; });
    setError(o.message);
  }
  return o;
}

// --- the stream thread ---------------------------------------------------------

void Client::run() {
  dockquota::Backoff backoff(backoff_min_, backoff_max_);
  for (;;) {
    if (stopping()) return;
    if (session()) backoff.reset();
    if (!waitBackoff(backoff.next())) return;
  }
}

bool Client::stopping() {
  std::lock_guard<std::mutex> l(mu_);
  return stopping_;
}

bool Client::waitBackoff(milliseconds d) {
  std::unique_lock<std::mutex> l(mu_);
  return !cv_.wait_for(l, d, [this] { return stopping_; });
}

// Subscribe first, then list: an event that happens while the lists are read
// is delivered after them (applying it again is harmless), so nothing falls
// between the lists and the stream. containerd registers the subscription as
// soon as the request arrives; the lists go out after it on the same
// connection.
bool Client::session() {
  grpc::ClientContext ctx;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return false;
    stream_ctx_ = &ctx;
  }
  es::SubscribeRequest req;
  for (const auto& ns : namespaces_) req.add_filters("namespace==" + ns);
  auto reader = events_->Subscribe(&ctx, req);
  bool established = false;
  described_.clear();  // events were missed while the stream was down
  if (auto o = reconcileAll(); !o) {
    count([](dq_ctrd_stats& s) { s.connect_failures++; });
    log(DQ_CTRD_LOG_DEBUG, o.message);
    ctx.TryCancel();
  } else {
    established = true;
    setConnected(true);
    log(
        DQ_CTRD_LOG_NOTICE, "containerd: connected to " + address_ + ", watching namespace(s) " + [&] {
          std::string s;
          for (const auto& n : namespaces_) s += (s.empty() ? "" : ",") + n;
          return s;
        }());
    es::Envelope env;
    while (reader->Read(&env)) handle(env, monoNs());
  }
  grpc::Status st = reader->Finish();
  {
    std::lock_guard<std::mutex> l(mu_);
    stream_ctx_ = nullptr;
  }
  if (established) {
    setConnected(false);
    count([](dq_ctrd_stats& s) { s.stream_breaks++; });
    const std::string why = "containerd: event stream ended: " + st.error_message();
    setError(why);
    std::lock_guard<std::mutex> l(mu_);
    if (!stopping_) log(DQ_CTRD_LOG_WARNING, why + "; reconnecting with backoff");
  }
  return established;
}

// Every namespace listed before any is delivered: a failure half-way must not
// leave the agent with one namespace reconciled and the stream unwatched.
Outcome Client::reconcileAll() {
  std::vector<std::pair<std::string, std::vector<Item>>> all;
  for (const auto& ns : namespaces_) {
    std::vector<Item> items;
    if (auto o = listNamespace(ns, items); !o) return o;
    all.emplace_back(ns, std::move(items));
  }
  for (auto& [ns, items] : all) {
    Item begin{.kind = DQ_CTRD_RECONCILE_BEGIN, .ns = ns};
    emit(begin);
    for (auto& it : items) emit(it);
    Item end{.kind = DQ_CTRD_RECONCILE_END, .ns = ns};
    emit(end);
    count([](dq_ctrd_stats& s) { s.reconciles++; });
  }
  return {};
}

Outcome Client::listNamespace(const std::string& ns, std::vector<Item>& out) {
  cs::ListContainersResponse containers;
  auto c1 = context(ns);
  if (auto o = check(containers_->List(c1.get(), cs::ListContainersRequest{}, &containers), "list containers in " + ns);
      !o)
    return o;
  ts::ListTasksResponse tasks;
  auto c2 = context(ns);
  if (auto o = check(tasks_->List(c2.get(), ts::ListTasksRequest{}, &tasks), "list tasks in " + ns); !o) return o;
  std::map<std::string, const containerd::v1::types::Process*> task_of;
  // containerd 1.6 fills only `id` (the container's) in listed tasks.
  for (const auto& t : tasks.tasks()) task_of[t.container_id().empty() ? t.id() : t.container_id()] = &t;
  for (const auto& c : containers.containers()) {
    // One Snapshots.Mounts per container, each up to the call deadline if
    // containerd hangs: stop() must not wait for all of them.
    if (stopping()) return {ECANCELED, "containerd: stopping"};
    Item it{.kind = DQ_CTRD_RECONCILE_ITEM, .ns = ns, .id = c.id()};
    fill(c, it);
    resolveUpper(ns, it, /*warn=*/true);
    if (auto t = task_of.find(c.id()); t != task_of.end()) {
      it.pid = t->second->pid();
      it.exit_status = t->second->exit_status();
      it.task_state = stateOf(t->second->status());
    }
    out.push_back(std::move(it));
  }
  return {};
}

static int64_t unixNs(const google::protobuf::Timestamp& t) { return int64_t(t.seconds()) * 1000000000 + t.nanos(); }

void Client::fill(const cs::Container& c, Item& it) {
  it.image = c.image();
  it.snapshotter = c.snapshotter();
  it.snapshot_key = c.snapshot_key();
  if (c.has_created_at()) it.created_ns = unixNs(c.created_at());
  for (const auto& [k, v] : c.labels()) it.labels[k] = v;
}

// The rootfs upper dir: Snapshots.Mounts of the container's snapshot, the
// overlayfs snapshotter's `upperdir=` (a one-layer snapshot is a bind mount
// of the same directory). Other snapshotters keep their data elsewhere
// (native: a full copy; devmapper: a block device): not supported, counted.
// `warn`: log an unsupported snapshotter (once per container: at its task
// create, not again at its container create).
void Client::resolveUpper(const std::string& ns, Item& it, bool warn) {
  // Counted by reason by the agent's watch (upper_dir_unresolved), from the event.
  auto fail = [&](const char* reason, const std::string& why) {
    it.upper_reason = reason;
    it.upper_error = why;
  };
  if (it.snapshotter != "overlayfs") {
    const std::string why = "unsupported snapshotter " + (it.snapshotter.empty() ? "(none)" : it.snapshotter) +
                            " for container " + ns + "/" + it.id + ": only overlayfs rootfs are watched";
    fail("unsupported_snapshotter", why);
    if (warn) log(DQ_CTRD_LOG_WARNING, "containerd: " + why);
    return;
  }
  ss::MountsRequest req;
  req.set_snapshotter(it.snapshotter);
  req.set_key(it.snapshot_key);
  ss::MountsResponse resp;
  auto c = context(ns);
  if (auto o = check(snapshots_->Mounts(c.get(), req, &resp), "mounts of snapshot " + it.snapshot_key); !o) {
    fail("mounts_failed", o.message);
    return;
  }
  for (const auto& m : resp.mounts()) {
    if (m.type() == "bind" && dockquota::cleanAbsolutePath(m.source())) {
      it.upper_dir = m.source();
      break;
    }
    std::vector<std::string_view> opts(m.options().begin(), m.options().end());
    auto u = dockquota::upperDirOf(opts);
    if (!u.path.empty()) {
      it.upper_dir = u.path;
      break;
    }
  }
  if (it.upper_dir.empty()) {
    fail("no_upperdir", "snapshot " + it.snapshot_key + " of " + ns + "/" + it.id + " has no upperdir= mount option");
    return;
  }
  count([](dq_ctrd_stats& s) { s.upper_resolved++; });
}

// A container's labels and snapshot (events carry neither), and its upper dir.
void Client::describe(const std::string& ns, const std::string& id, Item& it, bool resolve_upper, bool warn) {
  cs::GetContainerRequest req;
  req.set_id(id);
  cs::GetContainerResponse resp;
  auto c = context(ns);
  auto o = check(containers_->Get(c.get(), req, &resp), "get container " + ns + "/" + id);
  if (!o) {
    if (!resolve_upper) return;
    it.upper_reason = o.err == ENOENT ? "container_gone" : "mounts_failed";
    it.upper_error = o.message;
    return;
  }
  fill(resp.container(), it);
  if (resolve_upper) resolveUpper(ns, it, warn);
}

bool Client::decodeTask(const es::Envelope& env, Item& it) {
  const std::string& t = env.topic();
  if (t == "/tasks/create") {
    ev::TaskCreate m;
    if (!unpack(env, m)) return false;
    it = Item{.kind = DQ_CTRD_TASK_CREATE, .id = m.container_id(), .pid = m.pid(), .task_state = DQ_CTRD_STATE_CREATED};
  } else if (t == "/tasks/start") {
    ev::TaskStart m;
    if (!unpack(env, m)) return false;
    it = Item{.kind = DQ_CTRD_TASK_START, .id = m.container_id(), .pid = m.pid(), .task_state = DQ_CTRD_STATE_RUNNING};
  } else if (t == "/tasks/exit") {
    ev::TaskExit m;
    if (!unpack(env, m)) return false;
    // An exec'd process exiting says nothing about the container's task.
    if (!m.id().empty() && m.id() != m.container_id()) return true;
    it = Item{.kind = DQ_CTRD_TASK_EXIT,
              .id = m.container_id(),
              .pid = m.pid(),
              .exit_status = m.exit_status(),
              .task_state = DQ_CTRD_STATE_STOPPED};
  } else if (t == "/tasks/delete") {
    ev::TaskDelete m;
    if (!unpack(env, m)) return false;
    if (!m.id().empty() && m.id() != m.container_id()) return true;
    it = Item{.kind = DQ_CTRD_TASK_DELETE, .id = m.container_id(), .pid = m.pid(), .exit_status = m.exit_status()};
  }
  return true;
}

bool Client::decodeContainer(const es::Envelope& env, Item& it) {
  const std::string& t = env.topic();
  if (t == "/containers/create") {
    ev::ContainerCreate m;
    if (!unpack(env, m)) return false;
    it = Item{.kind = DQ_CTRD_CONTAINER_CREATE, .id = m.id(), .image = m.image()};
  } else if (t == "/containers/delete") {
    ev::ContainerDelete m;
    if (!unpack(env, m)) return false;
    it = Item{.kind = DQ_CTRD_CONTAINER_DELETE, .id = m.id()};
  }
  return true;
}

// A task create's description from its container create's (same container,
// same snapshot: containers do not change snapshots).
void Client::fromDescribed(const Item& d, Item& it) {
  it.image = d.image;
  it.snapshotter = d.snapshotter;
  it.snapshot_key = d.snapshot_key;
  it.labels = d.labels;
  it.created_ns = d.created_ns;
  it.upper_dir = d.upper_dir;
}

void Client::handle(const es::Envelope& env, int64_t received_ns) {
  count([](dq_ctrd_stats& s) { s.events_received++; });
  Item it;
  const bool ok = env.topic().rfind("/tasks/", 0) == 0 ? decodeTask(env, it) : decodeContainer(env, it);
  if (!ok) {
    // Lost: its container's state is wrong until the next reconcile, so one
    // follows at once (the stream is restarted, which re-lists).
    count([](dq_ctrd_stats& s) { s.decode_errors++; });
    const std::string why =
        "containerd: cannot decode " + env.topic() + " (" + env.event().type_url() + "); re-listing to recover";
    setError(why);
    log(DQ_CTRD_LOG_ERROR, why);
    std::lock_guard<std::mutex> l(mu_);
    if (stream_ctx_) stream_ctx_->TryCancel();
    return;
  }
  if (it.kind == 0) {
    count([](dq_ctrd_stats& s) { s.events_ignored++; });
    return;
  }
  it.ns = env.namespace_();
  it.timestamp_ns = unixNs(env.timestamp());
  it.received_ns = received_ns;
  // The upper dir at container create too: clients (ctr, nerdctl, CRI)
  // prepare the snapshot before they create the container, and the task (the
  // rootfs mount, then the process) comes only after, so a quota stage can
  // tag the snapshot before anything is mounted on it or written to it.
  // Again at task create, for clients that prepare it later.
  const auto key = std::make_pair(it.ns, it.id);
  if (it.kind == DQ_CTRD_TASK_CREATE) {
    auto d = described_.find(key);
    if (d != described_.end()) {
      fromDescribed(d->second, it);
    } else {
      describe(it.ns, it.id, it, /*resolve_upper=*/true, /*warn=*/true);
    }
  }
  if (it.kind == DQ_CTRD_CONTAINER_CREATE) {
    describe(it.ns, it.id, it, /*resolve_upper=*/true, /*warn=*/false);
    if (!it.upper_dir.empty()) {
      if (described_.size() >= kDescribedMax) described_.clear();  // only a cost: task creates describe again
      described_[key] = it;
    }
  }
  if (it.kind == DQ_CTRD_CONTAINER_DELETE) described_.erase(key);
  emit(it);
}

void Client::emit(Item& it) {
  std::vector<dq_ctrd_kv> kv;
  kv.reserve(it.labels.size());
  for (const auto& [k, v] : it.labels) kv.push_back({k.c_str(), v.c_str()});
  dq_ctrd_event e{};
  e.struct_size = sizeof e;
  e.kind = it.kind;
  e.seq = ++seq_;
  e.timestamp_ns = it.timestamp_ns;
  e.received_ns = it.received_ns;
  e.ns = it.ns.c_str();
  e.container_id = it.id.c_str();
  e.image = it.image.c_str();
  e.snapshotter = it.snapshotter.c_str();
  e.snapshot_key = it.snapshot_key.c_str();
  e.upper_dir = it.upper_dir.c_str();
  e.upper_error = it.upper_error.c_str();
  e.upper_reason = it.upper_reason.c_str();
  e.pid = it.pid;
  e.exit_status = it.exit_status;
  e.task_state = it.task_state;
  e.n_labels = uint32_t(kv.size());
  e.labels = kv.data();
  e.created_ns = it.created_ns;
  if (on_event_) on_event_(ctx_, &e);
  count([](dq_ctrd_stats& s) { s.events_delivered++; });
}

// --- enforcement ------------------------------------------------------------------

Outcome Client::kill(const std::string& ns, const std::string& id, uint32_t signal) {
  ts::KillRequest req;
  req.set_container_id(id);
  req.set_signal(signal);
  req.set_all(true);  // the whole container, not only its init: a forked writer too
  google::protobuf::Empty resp;
  auto c = context(ns);
  auto o = check(tasks_->Kill(c.get(), req, &resp), "kill " + ns + "/" + id);
  // FAILED_PRECONDITION: the process already exited.
  if (o.err == EBUSY) return {};
  return o;
}

Outcome Client::wait(const std::string& ns, const std::string& id, milliseconds timeout) {
  ts::WaitRequest req;
  req.set_container_id(id);
  ts::WaitResponse resp;
  auto c = context(ns, timeout);
  return check(tasks_->Wait(c.get(), req, &resp), "wait for " + ns + "/" + id);
}

// SIGTERM, up to timeout_s for the exit, then SIGKILL. No task is success
// (stopped already) when the container exists.
Outcome Client::stopTask(const std::string& ns, const std::string& id, uint32_t timeout_s) {
  auto o = kill(ns, id, SIGTERM);
  if (o.err == ENOENT) {
    uint64_t ignored = 0;
    return writableBytes(ns, id, &ignored).err == ENOENT ? o : Outcome{};
  }
  if (!o) return o;
  auto w = wait(ns, id, milliseconds(uint64_t(timeout_s) * 1000 + 1));
  if (w || w.err == ENOENT) return {};
  if (w.err != ETIMEDOUT) return w;
  if (auto k = kill(ns, id, SIGKILL); !k && k.err != ENOENT) return k;
  w = wait(ns, id, call_timeout_);
  return w.err == ENOENT ? Outcome{} : w;
}

// `ctr c rm` with its task: SIGKILL, task delete, container delete, and the
// rootfs snapshot (a container delete leaves it: the client removes it).
Outcome Client::remove(const std::string& ns, const std::string& id) {
  Item it;
  cs::GetContainerRequest greq;
  greq.set_id(id);
  cs::GetContainerResponse gresp;
  auto c0 = context(ns);
  if (auto o = check(containers_->Get(c0.get(), greq, &gresp), "get container " + ns + "/" + id); !o) return o;
  fill(gresp.container(), it);
  if (auto k = kill(ns, id, SIGKILL); !k && k.err != ENOENT) return k;
  if (auto w = wait(ns, id, call_timeout_); !w && w.err != ENOENT) return w;
  ts::DeleteTaskRequest dt;
  dt.set_container_id(id);
  ts::DeleteResponse dtr;
  auto c1 = context(ns);
  if (auto o = check(tasks_->Delete(c1.get(), dt, &dtr), "delete task " + ns + "/" + id); !o && o.err != ENOENT)
    return o;
  cs::DeleteContainerRequest dc;
  dc.set_id(id);
  google::protobuf::Empty e;
  auto c2 = context(ns);
  if (auto o = check(containers_->Delete(c2.get(), dc, &e), "delete container " + ns + "/" + id); !o) return o;
  if (!it.snapshotter.empty() && !it.snapshot_key.empty()) {
    ss::RemoveSnapshotRequest rs;
    rs.set_snapshotter(it.snapshotter);
    rs.set_key(it.snapshot_key);
    auto c3 = context(ns);
    if (auto o = check(snapshots_->Remove(c3.get(), rs, &e), "remove snapshot " + it.snapshot_key);
        !o && o.err != ENOENT)
      log(DQ_CTRD_LOG_WARNING, o.message + " (containerd's garbage collector takes it later)");
  }
  return {};
}

Outcome Client::writableBytes(const std::string& ns, const std::string& id, uint64_t* bytes) {
  cs::GetContainerRequest greq;
  greq.set_id(id);
  cs::GetContainerResponse gresp;
  auto c0 = context(ns);
  if (auto o = check(containers_->Get(c0.get(), greq, &gresp), "get container " + ns + "/" + id); !o) return o;
  ss::UsageRequest req;
  req.set_snapshotter(gresp.container().snapshotter());
  req.set_key(gresp.container().snapshot_key());
  ss::UsageResponse resp;
  auto c1 = context(ns);
  if (auto o = check(snapshots_->Usage(c1.get(), req, &resp), "usage of " + ns + "/" + id); !o) return o;
  *bytes = resp.size() > 0 ? uint64_t(resp.size()) : 0;
  return {};
}

}  // namespace dqctrd
