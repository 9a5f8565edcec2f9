// SPDX-License-Identifier: Apache-2.0
#include "app/enforcement_wiring.h"

#include "agent/base/log.h"

namespace dockquota {
namespace {
constexpr const char* kSub = "enforce";
}  // namespace

Result<std::set<uint32_t>> exemptUids(const std::vector<std::string>& refs, UserDirectory& users) {
  std::set<uint32_t> out;
  for (const auto& r : refs) {
    auto uid = users.resolve(r);
    if (!uid) return Error{ENOENT, "config: key \"enforcement_exempt_users\": no such user: " + r};
    out.insert(*uid);
  }
  return out;
}

Result<std::unique_ptr<EnforcementServices>> EnforcementServices::create(const Config& config, Store& store,
                                                                         QuotaServices& quota, ApiServer& api) {
  std::unique_ptr<EnforcementServices> s(new EnforcementServices());
  auto exempt = exemptUids(config.enforcement_exempt_users, quota.users());
  if (!exempt) return exempt.error();

  EnforcerOptions o;
  o.mode = parseEnforceMode(config.enforcement).value_or(EnforceMode::DryRun);
  o.order = parseEnforceOrder(config.enforcement_order).value_or(EnforceOrder::Newest);
  o.grace = std::chrono::seconds(config.enforcement_grace_s);
  o.stop_timeout = std::chrono::seconds(config.enforcement_stop_timeout_s);
  o.remove_volumes = config.enforcement_remove_volumes;
  o.interval = std::chrono::seconds(config.enforcement_interval_s);
  o.thresholds.warn_fraction = config.quota_warn_percent / 100.0;
  // Where the kernel holds each user's limit, usage stops at it: within a
  // MiB of it the user's writes fail, and that is over.
  if (auto* p = quota.projects(); p && p->active() && p->options().mode == ProjectMode::User) {
    o.thresholds.full_margin = 1 << 20;
    o.kernel_usage = [p] { return p->usage(); };  // fresher than the snapshot: targeted reads each growth tick
  }
  o.exempt_uids = std::move(*exempt);
  o.bill_root_to_login_uid = config.bill_root_to_login_uid;
  o.host_id = config.host_id;
  o.to_master = !config.master_url.empty();
  o.to_mail = !config.smtp_url.empty();
  o.event_retention = std::chrono::seconds(uint64_t(config.event_retention_days) * 86400);

  // The client waits for a stop: SIGTERM, the timeout, SIGKILL, and Docker's own work.
  s->client_ = std::make_unique<DockerClient>(config.docker_socket,
                                              std::chrono::seconds(config.enforcement_stop_timeout_s + 60));
  s->runtime_ = std::make_unique<DockerRuntime>(*s->client_);
  auto* raw = s.get();
  auto e = Enforcer::create(
      store, quota.quotas(), [&u = quota.usage()] { return u.snapshot(); }, quota.users(), *s->runtime_, o,
      {.on_events = [raw] { raw->eventsRecorded(); }, .on_freed = [&u = quota.usage()] { u.refreshNow(); }});
  if (!e) return e.error();
  s->enforcer_ = std::move(*e);
  if (auto* p = quota.projects(); p && p->active()) p->setFastUsageListener([raw] { raw->usageChanged(); });

  if (!config.master_url.empty()) {
    MasterSink::Options mo;
    mo.url = config.master_url;
    mo.secret = config.master_secret;
    mo.host_id = config.host_id;
    mo.ca_file = config.master_ca_file;
    auto m = MasterSink::create(store.eventLog(), mo);
    if (!m) return m.error().context("config: key \"master_url\"");
    s->master_ = std::move(*m);
  }
  if (!config.smtp_url.empty()) {
    auto m = SmtpMailer::create({.url = config.smtp_url,
                                 .from = config.smtp_from,
                                 .username = config.smtp_username,
                                 .password = config.smtp_password,
                                 .starttls = config.smtp_starttls});
    if (!m) return m.error().context("config: key \"smtp_url\"");
    auto dir = EmailDirectory::create({.addresses = config.email_addresses, .address_template = config.email_to});
    if (!dir) return dir.error().context("config: key \"email_to\"");
    s->mailer_ = std::move(*m);
    MailNotifier::Options mo;
    mo.host_id = config.host_id;
    mo.burst = std::chrono::seconds(config.email_burst_s);
    mo.min_interval = std::chrono::seconds(config.email_interval_s);
    mo.max_per_hour = config.email_max_per_hour;
    s->mail_ = std::make_unique<MailNotifier>(store.eventLog(), *s->mailer_, std::move(*dir), mo);
  }

  s->ctx_.reset(new EnforcementContext{store, *s->enforcer_, quota.users(), [raw] { return raw->delivery(); }});
  installEnforcementRoutes(api, *s->ctx_);
  quota.context().more_metrics = [ctx = s->ctx_.get()](std::string& out) { renderEnforcementMetrics(out, *ctx); };
  LOG_INFO(kSub, "mode %s, %s first, grace %us, warning at %u%%, master %s, mail %s", config.enforcement.c_str(),
           config.enforcement_order.c_str(), config.enforcement_grace_s, config.quota_warn_percent,
           config.master_url.empty() ? "off" : config.master_url.c_str(),
           config.smtp_url.empty() ? "off" : config.smtp_url.c_str());
  if (o.mode == EnforceMode::DryRun)
    LOG_NOTICE(kSub,
               "enforcement is dry-run: over-limit users are reported, no container is stopped "
               "(config \"enforcement\": \"enforce\" to act)");
  return s;
}

EnforcementServices::~EnforcementServices() { stop(); }

void EnforcementServices::start() {
  if (master_) master_->start();
  if (mail_) mail_->start();
  enforcer_->start();
}

void EnforcementServices::stop() {
  if (enforcer_) enforcer_->stop();
  if (mail_) mail_->stop();
  if (master_) master_->stop();
}

void EnforcementServices::eventsRecorded() {
  if (master_) master_->wake();
  if (mail_) mail_->wake();
}

nlohmann::json EnforcementServices::delivery() const {
  nlohmann::json d = nlohmann::json::object();
  if (master_) d["master"] = master_->health();
  if (mail_) d["mail"] = mail_->health();
  return d;
}

Health EnforcementServices::health() const {
  Health h;
  h.report = enforcer_->health();
  h.report["delivery"] = delivery();
  for (const auto& [channel, d] : h.report["delivery"].items())
    if (d.value("consecutive_failures", 0) > 0 || d.value("failing", false))
      h.degraded.push_back("event delivery to the " + channel + " is failing: " + d.value("last_error", std::string()));
  return h;
}

}  // namespace dockquota
