// SPDX-License-Identifier: Apache-2.0
#include "app/quota_wiring.h"

#include <ctime>
#include <set>

#include "agent/base/log.h"

namespace dockquota {
namespace {
constexpr const char* kSub = "qman";
// Inspect answers a browser request: qman's master waits up to 180 s, a person far less.
constexpr auto kInspectTimeout = std::chrono::seconds(10);
// /system/df walks every volume; on a big host that takes minutes.
constexpr auto kMeasureTimeout = std::chrono::seconds(300);
}  // namespace

namespace {
// The project-quota backend for Docker's data root (config, else Docker's
// DockerRootDir, else /var/lib/docker). Degraded (not an error) when the
// filesystem has no project quotas, unless the config says "required".
Result<std::pair<std::unique_ptr<ProjectQuotas>, std::unique_ptr<DockerClient>>> openProjectQuotas(
    const Config& config, Store& store, QuotaBook& book, DockerClient& docker) {
  std::string root = config.docker_data_root;
  if (root.empty()) {
    auto info = docker.getJson("/info");
    if (info && (*info)["DockerRootDir"].is_string()) root = (*info)["DockerRootDir"].get<std::string>();
  }
  if (root.empty()) root = "/var/lib/docker";
  QuotaFs fs;
  if (auto probed = probeQuotaFs(root)) {
    fs = *probed;
  } else {
    fs.path = root;
    fs.reason = probed.error().message;
  }
  if (!fs.usable()) {
    if (config.project_quotas == "required")
      return Error{ENOTSUP, "prjquota: project quotas are required (config project_quotas) but unavailable under " +
                                root + ": " + fs.reason};
    LOG_WARN("prjquota",
             "DEGRADED: no kernel project quotas under %s: %s. Usage stays walk-based (Docker's figures) and "
             "limits are not enforced by the kernel",
             root.c_str(), fs.reason.c_str());
  } else {
    LOG_INFO("prjquota", "%s: %s mode, ids %u..%u", fs.describe().c_str(), config.project_quota_mode.c_str(),
             config.project_id_min, config.project_id_max);
  }
  auto client = std::make_unique<DockerClient>(config.docker_socket, kInspectTimeout);
  ProjectQuotas::Options o;
  o.mode = config.project_quota_mode == "container" ? ProjectMode::Container : ProjectMode::User;
  o.id_min = config.project_id_min;
  o.id_max = config.project_id_max;
  o.container_default_bytes = config.container_quota_default_mib << 20;
  o.bill_root_to_login_uid = config.bill_root_to_login_uid;
  o.interval = std::chrono::seconds(config.project_sync_interval_s);
  auto p = std::make_unique<ProjectQuotas>(store, book, std::make_unique<DockerLayerLocator>(*client, root), fs, o);
  return std::make_pair(std::move(p), std::move(client));
}
}  // namespace

ApiServerOptions apiServerOptions(const Config& c) {
  ApiServerOptions o;
  o.address = c.listen_address;
  o.port = c.listen_port;
  o.api_key = c.api_key;
  o.bill_root_to_login_uid = c.bill_root_to_login_uid;
  o.threads = static_cast<int>(c.http_threads);
  o.tls_cert_file = c.tls_cert_file;
  o.tls_key_file = c.tls_key_file;
  o.max_connections = static_cast<int>(c.http_max_connections);
  o.max_connections_per_peer = static_cast<int>(c.http_max_connections_per_peer);
  o.request_timeout = std::chrono::seconds(c.http_request_timeout_s);
  o.idle_timeout = std::chrono::seconds(c.http_idle_timeout_s);
  return o;
}

Result<std::unique_ptr<QuotaServices>> QuotaServices::create(const Config& config, Store& store, ApiServer& api,
                                                             std::function<nlohmann::json()> probe_counters) {
  std::unique_ptr<QuotaServices> q(new QuotaServices());
  q->default_interval_ = std::chrono::seconds(config.default_apply_interval_s);
  q->measure_client_ = std::make_unique<DockerClient>(config.docker_socket, kMeasureTimeout);
  q->inspect_client_ = std::make_unique<DockerClient>(config.docker_socket, kInspectTimeout);
  auto book = QuotaBook::load(store);
  if (!book) return book.error();
  q->quotas_ = std::move(*book);
  q->docker_ = config.runtimeEnabled("docker");  // off: Docker's side idles (App::start)
  if (config.project_quotas != "off" && q->docker_) {
    auto p = openProjectQuotas(config, store, *q->quotas_, *q->inspect_client_);
    if (!p) return p.error();
    q->project_client_ = std::move(p->second);
    q->projects_ = std::move(p->first);
  }
  std::function<std::shared_ptr<const KernelUsage>()> kernel;
  if (q->projects_ && q->projects_->active()) kernel = [p = q->projects_.get()] { return p->usage(); };
  q->users_ = std::make_unique<UserDirectory>();
  q->usage_ = std::make_unique<UsageAccountant>(
      store, std::make_unique<DockerUsageSource>(*q->measure_client_),
      UsageAccountant::Options{.interval = std::chrono::seconds(config.usage_interval_s),
                               .bill_root_to_login_uid = config.bill_root_to_login_uid,
                               .kernel = kernel,
                               .on_publish = [q = q.get()] {
                                 if (q->on_usage_) q->on_usage_();
                               }});
  if (q->projects_ && q->projects_->active()) {
    // Kernel figures are current: re-publish whenever they are read; a limit change goes to the kernel at once.
    q->projects_->setUsageListener([u = q->usage_.get()] { u->rejoinSoon(); });
    q->quotas_->setChangeListener([p = q->projects_.get()] { p->limitsChanged(); });
  }
  q->ctx_.reset(new QmanContext{store, *q->quotas_, *q->usage_, *q->users_, q->inspect_client_.get(),
                                std::move(probe_counters),
                                QmanOptions{.docker_enabled = config.docker_quota_enabled,
                                            .reserved_bytes = config.docker_quota_reserved_bytes,
                                            .data_root = config.docker_data_root}});
  q->ctx_->projects = q->projects_.get();
  q->devices_ = openQuotaDevices(config, {});
  q->ctx_->devices = q->devices_.devices.get();
  // Quota events of block devices and ZFS after each refresh (spec §5), to
  // whichever senders are configured, as enforcement's events.
  q->notices_ = std::make_unique<DiskNotices>(
      store,
      DiskNotices::Options{.window_s = config.disk_notification_window_s,
                           .route = EventRoute{.master = !config.master_url.empty(), .mail = !config.smtp_url.empty()},
                           .name_of = [u = q->users_.get()](uint32_t uid) { return u->name(uid); },
                           .on_events =
                               [q = q.get()] {
                                 if (q->on_disk_events_) q->on_disk_events_();
                               }});
  q->devices_.devices->setRefreshListener([q = q.get()] {
    auto view = q->devices_.devices->view();
    // The list's text now, on this thread, so that no request builds it.
    (void)q->ctx_->device_cache->texts(*view, *q->users_, q->ctx_->candidates);
    q->notices_->scan(*view, static_cast<uint64_t>(time(nullptr)));
  });
  installQmanRoutes(api, *q->ctx_);
  return q;
}

QuotaServices::~QuotaServices() { stop(); }

void QuotaServices::start() {
  if (projects_) projects_->start();
  if (docker_) usage_->start();
  devices_.devices->start();
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = false;
  }
  defaults_worker_.start(
      "dq-defaults", [this] { runDefaults(); }, [this] { haltDefaults(); });
}

void QuotaServices::stop() {
  defaults_worker_.stop();
  if (devices_.devices) devices_.devices->stop();
  if (usage_) usage_->stop();
  if (projects_) projects_->stop();
}

Result<size_t> QuotaServices::applyDefaultsNow() {
  auto snap = usage_->snapshot();
  std::set<uint32_t> candidates;
  for (const auto& u : users_->managed()) candidates.insert(u.uid);
  std::map<uint32_t, uint64_t> usage;
  for (const auto& [uid, u] : snap->users) {
    candidates.insert(uid);
    usage[uid] = u.total();
  }
  auto n = applyDefaults(*quotas_, {candidates.begin(), candidates.end()}, usage);
  if (n && *n > 0) LOG_INFO(kSub, "default docker quota applied to %zu user(s)", *n);
  return n;
}

size_t QuotaServices::applyDeviceDefaults() {
  // Block devices and ZFS (spec §3.7): eligible = managed passwd users.
  std::vector<uint32_t> eligible;
  for (const auto& u : users_->managed()) eligible.push_back(u.uid);
  size_t n = 0;
  for (QuotaDevice* dev : devices_.devices->all()) {
    auto d = quotas_->deviceDefault(dev->name());
    if (!d) {
      LOG_WARN(kSub, "default quota of %s: %s", dev->name().c_str(), d.error().message.c_str());
      continue;
    }
    if (*d) n += applyDeviceDefault(*devices_.devices, *dev, eligible, **d);
  }
  return n;
}

void QuotaServices::haltDefaults() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
}

void QuotaServices::runDefaults() {
  using Clock = std::chrono::steady_clock;
  std::unique_lock<std::mutex> l(mu_);
  // Each backend's first run once its figures are known (a default depends on
  // usage: Docker's first measurement, at most 600 s late; the devices' first
  // read), then every interval. Apart: block devices need no dockerd.
  const auto docker_deadline = Clock::now() + std::chrono::seconds(600);
  auto docker_next = Clock::now(), devices_next = Clock::now();
  while (!stop_) {
    const auto now = Clock::now();
    if (docker_ && now >= docker_next && (usage_->snapshot()->measured || now >= docker_deadline)) {
      l.unlock();
      if (auto n = applyDefaultsNow(); !n) LOG_WARN(kSub, "default quotas: %s", n.error().message.c_str());
      l.lock();
      docker_next = now + default_interval_;
    }
    if (now >= devices_next && devices_.devices->view()->refreshed_at > 0) {
      l.unlock();
      applyDeviceDefaults();
      l.lock();
      devices_next = now + default_interval_;
    }
    cv_.wait_for(l, std::chrono::seconds(1), [this] { return stop_; });
  }
}

}  // namespace dockquota
