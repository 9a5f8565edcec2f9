// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/quota_devices.h"

#include <algorithm>
#include <ctime>
#include <set>

#include "agent/base/log.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "quota-devices";

double wallNow() { return static_cast<double>(time(nullptr)); }

bool byName(const std::shared_ptr<const DeviceSnapshot>& a, const std::shared_ptr<const DeviceSnapshot>& b) {
  return a->name < b->name;  // std::string compares bytes: code point order for UTF-8
}

}  // namespace

QuotaDevices::QuotaDevices(Options options) : opt_(std::move(options)), view_(std::make_shared<View>()) {}

QuotaDevices::~QuotaDevices() { stop(); }

void QuotaDevices::add(std::unique_ptr<QuotaDevice> device) {
  if (find(device->name())) {
    LOG_WARN(kSub, "%s device %s is already served; the second one is ignored", device->kind(), device->name().c_str());
    return;
  }
  LOG_INFO(kSub, "serving %s device %s", device->kind(), device->name().c_str());
  devices_.push_back(std::move(device));
}

QuotaDevice* QuotaDevices::find(const std::string& name) const {
  for (const auto& d : devices_)
    if (d->name() == name) return d.get();
  return nullptr;
}

std::vector<QuotaDevice*> QuotaDevices::all() const {
  std::vector<QuotaDevice*> out;
  for (const auto& d : devices_) out.push_back(d.get());
  return out;
}

std::shared_ptr<const QuotaDevices::View> QuotaDevices::view() const {
  std::lock_guard<std::mutex> l(view_mu_);
  return view_;
}

void QuotaDevices::publish(std::vector<std::shared_ptr<const DeviceSnapshot>> devices, bool full) {
  std::stable_sort(devices.begin(), devices.end(), byName);
  std::lock_guard<std::mutex> l(view_mu_);
  auto v = std::make_shared<View>();
  v->generation = view_->generation + 1;
  v->devices = std::move(devices);
  v->refreshed_at = full ? wallNow() : view_->refreshed_at;
  view_ = std::move(v);
}

double QuotaDevices::refreshNow() {
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t started = 0;
  {
    std::lock_guard<std::mutex> w(write_mu_);
    started = write_gen_;
  }
  std::vector<std::shared_ptr<const DeviceSnapshot>> read;
  std::vector<std::string> failures;
  for (const auto& d : devices_) {
    auto s = d->read();
    if (!s) {
      failures.push_back(d->name() + ": " + s.error().message);
      continue;
    }
    read.push_back(std::make_shared<const DeviceSnapshot>(std::move(*s)));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  {
    // A PUT that wrote while we read has published its own entry; our read
    // of that device may predate it, so the next refresh brings it instead.
    std::lock_guard<std::mutex> w(write_mu_);
    std::set<std::string> written;
    for (const auto& [name, gen] : written_during_)
      if (gen > started) written.insert(name);
    auto old = view();
    for (auto& s : read) {
      if (!written.count(s->name)) continue;
      for (const auto& o : old->devices)
        if (o->name == s->name) s = o;
    }
    publish(std::move(read), true);
  }
  {
    std::lock_guard<std::mutex> l(view_mu_);
    if (failures != failures_)
      for (const auto& f : failures) LOG_WARN(kSub, "DEGRADED: %s (left out of the device list)", f.c_str());
    failures_ = std::move(failures);
    last_seconds_ = secs;
  }
  if (opt_.on_refresh) opt_.on_refresh();
  return secs;
}

Result<std::optional<QuotaFigures>> QuotaDevices::setUserLimits(QuotaDevice& device, uint32_t uid,
                                                                const LimitsUpdate& u) {
  std::lock_guard<std::mutex> w(write_mu_);
  written_during_[device.name()] = ++write_gen_;
  if (auto s = device.setUserLimits(uid, u); !s) return s.error();
  auto now = device.readUser(uid);
  if (!now) return now.error();
  // The view with this one entry replaced (or removed: XFS drops an id with
  // no limits and no usage), so the next GET shows the write.
  auto old = view();
  std::vector<std::shared_ptr<const DeviceSnapshot>> devices = old->devices;
  for (auto& d : devices) {
    if (d->name != device.name()) continue;
    auto copy = std::make_shared<DeviceSnapshot>(*d);
    auto& e = copy->users.entries;
    auto it = std::lower_bound(e.begin(), e.end(), uid, [](const QuotaFigures& f, uint32_t id) { return f.id < id; });
    const bool there = it != e.end() && it->id == uid;
    if (*now && there)
      *it = **now;
    else if (*now)
      e.insert(it, **now);
    else if (there)
      e.erase(it);
    d = std::move(copy);
  }
  publish(std::move(devices), false);
  return now;
}

void QuotaDevices::start() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = false;
  }
  worker_.start(
      "dq-devices", [this] { run(); },
      [this] {
        {
          std::lock_guard<std::mutex> l(mu_);
          stop_ = true;
        }
        cv_.notify_all();
      });
}

void QuotaDevices::stop() { worker_.stop(); }

void QuotaDevices::run() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stop_) {
    l.unlock();
    refreshNow();
    l.lock();
    cv_.wait_for(l, opt_.interval, [this] { return stop_; });
  }
}

Health QuotaDevices::health() const {
  Health h;
  nlohmann::json devices = nlohmann::json::object();
  for (const auto& d : devices_) {
    Health one = d->health();
    one.report["kind"] = d->kind();
    for (const auto& r : one.degraded) h.degraded.push_back(d->name() + ": " + r);
    devices[d->name()] = std::move(one.report);
  }
  auto v = view();
  std::lock_guard<std::mutex> l(view_mu_);
  for (const auto& f : failures_) h.degraded.push_back("unreadable, left out of the list: " + f);
  h.report = {{"devices", std::move(devices)},
              {"listed", v->devices.size()},
              {"refreshed_at", v->refreshed_at},
              {"last_refresh_seconds", last_seconds_},
              {"interval_seconds", std::chrono::duration<double>(opt_.interval).count()}};
  return h;
}

double QuotaDevices::lastRefreshSeconds() const {
  std::lock_guard<std::mutex> l(view_mu_);
  return last_seconds_;
}

}  // namespace dockquota
