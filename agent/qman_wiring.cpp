#include "agent/qman_wiring.h"

#include <set>

#include "agent/log.h"

namespace dockquota {
namespace {
constexpr const char* kSub = "qman";
// Inspect answers a browser request: qman's master waits up to 180 s, a person far less.
constexpr auto kInspectTimeout = std::chrono::seconds(10);
// /system/df walks every volume; on a big host that takes minutes.
constexpr auto kMeasureTimeout = std::chrono::seconds(300);
}  // namespace

ApiServerOptions apiServerOptions(const Config& c, int threads) {
  ApiServerOptions o;
  o.address = c.listen_address;
  o.port = c.listen_port;
  o.api_key = c.api_key;
  o.bill_root_to_login_uid = c.bill_root_to_login_uid;
  o.threads = threads;
  o.tls_cert_file = c.tls_cert_file;
  o.tls_key_file = c.tls_key_file;
  return o;
}

Result<std::unique_ptr<QmanServices>> QmanServices::create(const Config& config, Store& store, ApiServer& api,
                                                           std::function<nlohmann::json()> probe_counters) {
  std::unique_ptr<QmanServices> q(new QmanServices());
  q->default_interval_ = std::chrono::seconds(config.default_apply_interval_s);
  q->measure_client_ = std::make_unique<DockerClient>(config.docker_socket, kMeasureTimeout);
  q->inspect_client_ = std::make_unique<DockerClient>(config.docker_socket, kInspectTimeout);
  auto book = QuotaBook::load(store);
  if (!book) return book.error();
  q->quotas_ = std::move(*book);
  q->users_ = std::make_unique<UserDirectory>();
  q->usage_ = std::make_unique<UsageAccountant>(
      store, std::make_unique<DockerUsageSource>(*q->measure_client_),
      UsageAccountant::Options{.interval = std::chrono::seconds(config.usage_interval_s),
                               .bill_root_to_login_uid = config.bill_root_to_login_uid});
  q->ctx_.reset(new QmanContext{store, *q->quotas_, *q->usage_, *q->users_, q->inspect_client_.get(),
                                std::move(probe_counters),
                                QmanOptions{.docker_enabled = config.docker_quota_enabled,
                                            .reserved_bytes = config.docker_quota_reserved_bytes,
                                            .data_root = config.docker_data_root}});
  installQmanRoutes(api, *q->ctx_);
  return q;
}

QmanServices::~QmanServices() { stop(); }

void QmanServices::start() {
  usage_->start();
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = false;
  }
  defaults_thread_ = std::thread([this] { runDefaults(); });
}

void QmanServices::stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (defaults_thread_.joinable()) defaults_thread_.join();
  if (usage_) usage_->stop();
}

Result<size_t> QmanServices::applyDefaultsNow() {
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

void QmanServices::runDefaults() {
  std::unique_lock<std::mutex> l(mu_);
  // First run once usage is known (a default depends on it), then every interval.
  for (int i = 0; i < 600 && !stop_ && !usage_->snapshot()->measured; i++)
    cv_.wait_for(l, std::chrono::seconds(1), [this] { return stop_; });
  while (!stop_) {
    l.unlock();
    if (auto n = applyDefaultsNow(); !n) LOG_WARN(kSub, "default quotas: %s", n.error().message.c_str());
    l.lock();
    cv_.wait_for(l, default_interval_, [this] { return stop_; });
  }
}

}  // namespace dockquota
