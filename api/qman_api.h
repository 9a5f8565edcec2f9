// SPDX-License-Identifier: Apache-2.0
// The qman slave contract (../shared/spec/qman-remote-api.md): /remote-api/*
// behind HTTP Basic api:<key>, plus GET /metrics. Quota routes answer from
// memory (the UsageAccountant's snapshot and the QuotaBook's limits); the
// Docker detail routes read the snapshot too, except inspect (raw Docker
// inspect, with the inspect client's timeout) and the attribution/evidence
// views (point lookups in the Store).
//
// Units (spec §2): limits in 1 KiB blocks, every usage figure in bytes, all
// 64-bit. Optional fields are absent, never null, except where §4.3 lists
// `|null`. Errors are always {"msg": ...}.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/quota/project_quotas.h"
#include "agent/quota/quota_devices.h"
#include "agent/quota/quotas.h"
#include "agent/runtime/docker_client.h"
#include "agent/store/store.h"
#include "agent/usage/usage.h"
#include "api/http_api.h"
#include "api/qman_devices.h"

namespace dockquota {

struct QmanOptions {
  bool docker_enabled = true;         // false: no docker device; Docker pages answer 400
  uint64_t reserved_bytes = 0;        // DOCKER_QUOTA_RESERVED_BYTES: usage.total when > 0
  std::string data_root = {};         // mount point; "" = Docker's DockerRootDir, else /var/lib/docker
  size_t max_body_bytes = 64 * 1024;  // PUT/POST bodies are a few hundred bytes
};

// The GET /remote-api/quotas answer, reused while neither the snapshot, the
// limits nor the block/ZFS device texts changed (and names are at most
// kMaxAge old): the master polls it, and 1,000 users are 300 KB of JSON on
// the docker device alone. Only the whole answer is kept: docker's own text
// is a temporary of each build, not a second copy.
struct QuotasCache {
  static constexpr auto kMaxAge = std::chrono::seconds(10);
  std::mutex mu;
  // The snapshot it was built from, by generation: holding the snapshot itself
  // would keep a replaced one (MiBs of rows) alive until the next request.
  uint64_t generation = 0;
  std::shared_ptr<const QuotaBook::Limits> limits;
  std::shared_ptr<const DeviceListCache::Texts> texts;  // null: no block/ZFS devices
  std::chrono::steady_clock::time_point at;
  std::shared_ptr<const std::string> body;
};

struct QmanContext {
  Store& store;
  QuotaBook& quotas;
  UsageAccountant& usage;
  UserDirectory& users;
  DockerClient* inspect = nullptr;                 // nullptr: inspect answers 502
  std::function<nlohmann::json()> probe_counters;  // BPF counters for /metrics (may be empty)
  QmanOptions options;
  std::shared_ptr<QuotasCache> cache = std::make_shared<QuotasCache>();
  ProjectQuotas* projects = nullptr;                    // kernel project quotas (nullptr: off)
  std::function<void(std::string&)> more_metrics = {};  // appended to /metrics (enforcement); may be empty
  QuotaDevices* devices = nullptr;                      // block devices and ZFS datasets (nullptr: docker only)
  std::shared_ptr<DeviceListCache> device_cache = std::make_shared<DeviceListCache>();
  std::function<Candidates()> candidates = readCandidates;  // who block devices list, in passwd order
};

// Registers every route on `api` (before api.start()). `ctx` must outlive it.
void installQmanRoutes(ApiServer& api, QmanContext& ctx);

// One user's device list (GET /remote-api/quotas/users/<uid>): the block and
// ZFS devices where the uid has an entry, then docker, in the spec's order.
std::string userQuotasText(QmanContext& ctx, uint32_t uid);

// The docker DeviceQuota (spec §3.1) for the given users (all listed users
// when `only_uid` is unset). Exposed for the benchmark and tests.
nlohmann::json dockerDevice(QmanContext& ctx, const UsageSnapshot& snap, const QuotaBook::Limits& limits,
                            std::optional<uint32_t> only_uid);
// The same as JSON text (what GET /remote-api/quotas sends, without a DOM).
std::string dockerDeviceText(QmanContext& ctx, const UsageSnapshot& snap, const QuotaBook::Limits& limits,
                             std::optional<uint32_t> only_uid);

}  // namespace dockquota
