// SPDX-License-Identifier: Apache-2.0
#include "api/qman_api.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <set>

#include <httplib.h>

#include "agent/base/log.h"
#include "agent/base/utf8.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "qman";
constexpr const char* kDockerOff = "Docker quota not enabled on this host";
constexpr size_t kMaxResolverBytes = 256;  // manual_resolver: the master's user name, stored with the override
using json = nlohmann::json;
using Req = httplib::Request;
using Res = httplib::Response;

double now() { return static_cast<double>(time(nullptr)); }

// --- request helpers ---------------------------------------------------------------

// One limit field: absent/null -> nullopt; else a non-negative integer <= kMaxLimitKiB.
// The messages are qman's for the first two.
bool readLimit(const json& body, const char* key, std::optional<uint64_t>& out, Res& res) {
  out.reset();
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer()) {
    sendError(res, 400, "quota limits must be integers");
    return false;
  }
  if (it->is_number_unsigned() ? false : it->get<int64_t>() < 0) {
    sendError(res, 400, "quota limits must be non-negative");
    return false;
  }
  const uint64_t v = it->get<uint64_t>();
  if (v > kMaxLimitKiB) {
    sendError(res, 400,
              std::string(key) + " must not exceed " + std::to_string(kMaxLimitKiB) + " (1 KiB blocks, 1 PiB)");
    return false;
  }
  out = v;
  return true;
}

struct Limits4 {
  std::optional<uint64_t> block_hard, block_soft, inode_hard, inode_soft;
};
bool readLimits(const json& body, Limits4& l, Res& res) {
  return readLimit(body, "block_hard_limit", l.block_hard, res) &&
         readLimit(body, "block_soft_limit", l.block_soft, res) &&
         readLimit(body, "inode_hard_limit", l.inode_hard, res) &&
         readLimit(body, "inode_soft_limit", l.inode_soft, res);
}

// Where a device= value goes: the docker device, or a block/ZFS device.
struct Target {
  QuotaDevice* device = nullptr;  // nullptr: docker
};

// device= must be present and name a device served here: "docker" (when
// Docker quota is on) or a QuotaDevices device. Else 400, as qman.
std::optional<Target> checkDevice(const QmanContext& ctx, const std::string& device, bool present, Res& res) {
  if (!present || device.empty()) {
    sendError(res, 400, "device query parameter required");
    return std::nullopt;
  }
  if (device == kDockerDevice && ctx.options.docker_enabled) return Target{};
  if (QuotaDevice* d = ctx.devices ? ctx.devices->find(device) : nullptr) return Target{d};
  sendError(res, 400, "device not recognized: " + printable(device, kEchoBytes));
  return std::nullopt;
}

std::optional<uint32_t> parseUid(const std::string& digits) {
  if (digits.empty() || digits.size() > 10) return std::nullopt;
  const uint64_t v = std::stoull(digits);
  if (v > UINT32_MAX) return std::nullopt;
  return static_cast<uint32_t>(v);
}

// "true"/"1"/"yes" and "false"/"0"/"no"; absent = `def`.
std::optional<bool> boolParam(const Req& req, const char* key, bool def) {
  if (!req.has_param(key)) return def;
  std::string v = req.get_param_value(key);
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no" || v.empty()) return false;
  return std::nullopt;
}

// entity_type + its id (container_id | image_id | volume_name | entity_id), from a
// query string or a JSON body.
struct Entity {
  ObjectKind kind;
  std::string ref;
};
std::optional<Entity> readEntity(const std::function<std::optional<std::string>(const char*)>& get, bool id_required,
                                 Res& res) {
  auto type = get("entity_type");
  std::optional<ObjectKind> kind = type ? parseObjectKind(*type) : std::nullopt;
  if (!kind) {
    sendError(res, 400, "entity_type must be container, image or volume");
    return std::nullopt;
  }
  const char* key = *kind == ObjectKind::Container ? "container_id"
                    : *kind == ObjectKind::Image   ? "image_id"
                                                   : "volume_name";
  auto ref = get(key);
  if (!ref || ref->empty()) ref = get("entity_id");
  if (id_required && (!ref || ref->empty())) {
    sendError(res, 400, std::string(key) + " required");
    return std::nullopt;
  }
  return Entity{*kind, ref.value_or("")};
}

std::function<std::optional<std::string>(const char*)> fromQuery(const Req& req) {
  return [&req](const char* k) -> std::optional<std::string> {
    if (!req.has_param(k)) return std::nullopt;
    return req.get_param_value(k);
  };
}

std::function<std::optional<std::string>(const char*)> fromBody(const json& body) {
  return [&body](const char* k) -> std::optional<std::string> {
    auto it = body.find(k);
    if (it == body.end() || it->is_null()) return std::nullopt;
    return it->is_string() ? it->get<std::string>() : it->dump();
  };
}

json isoOrNull(const std::optional<double>& t) { return t ? json(isoTime(*t)) : json(nullptr); }

// --- the quota shapes (spec §3) ------------------------------------------------------

uint64_t lookup(const QuotaBook::Limits& m, uint32_t uid) {
  auto it = m.find(uid);
  return it == m.end() ? 0 : it->second;
}

// A UserQuota (spec §3.2) written straight as JSON text: GET /remote-api/quotas
// lists 1,000 of them, and a DOM per user costs ten times the time and memory.
// Every route's UserQuota comes from here. Key order is alphabetical, as Flask's.
void appendUserQuota(std::string& out, QmanContext& ctx, uint32_t uid, uint64_t limit_kib, const UserUsage& u) {
  char buf[512];
  snprintf(buf, sizeof buf,
           "{\"block_current\":%" PRIu64 ",\"block_hard_limit\":%" PRIu64 ",\"block_soft_limit\":%" PRIu64
           ",\"block_time_limit\":0,\"docker_container_bytes\":%" PRIu64 ",\"docker_image_layer_bytes\":%" PRIu64
           ",\"docker_volume_bytes\":%" PRIu64
           ",\"inode_current\":0,\"inode_hard_limit\":0,\"inode_soft_limit\":0,\"inode_time_limit\":0,\"name\":",
           u.total(), limit_kib, limit_kib, u.container_bytes, u.image_layer_bytes, u.volume_bytes);
  out += buf;
  out += jsonText(ctx.users.name(uid));  // escaped; a passwd name may be any bytes
  out += ",\"uid\":";
  out += std::to_string(uid);
  out += '}';
}

json userQuota(QmanContext& ctx, uint32_t uid, uint64_t limit_kib, const UserUsage& u) {
  std::string text;
  appendUserQuota(text, ctx, uid, limit_kib, u);
  return json::parse(text);
}

const UserUsage& usageOf(const UsageSnapshot& snap, uint32_t uid) {
  static const UserUsage kNone;
  auto it = snap.users.find(uid);
  return it == snap.users.end() ? kNone : it->second;
}

}  // namespace

std::string dockerDeviceText(QmanContext& ctx, const UsageSnapshot& snap, const QuotaBook::Limits& limits,
                             std::optional<uint32_t> only_uid) {
  // Spec §3.3. A = bytes billed to listed users, U = everything else Docker
  // holds (unattributed, or billed to root/system uids), L = sum of limits.
  const uint64_t a = snap.attributedTo(managedUid);
  const uint64_t u = snap.total_bytes - std::min(a, snap.total_bytes);
  uint64_t l = 0;
  for (const auto& [uid, kib] : limits)
    if (managedUid(uid)) l = satAdd(l, kib * 1024);
  const uint64_t total =
      ctx.options.reserved_bytes > 0 ? ctx.options.reserved_bytes : std::max<uint64_t>(satAdd(l, u), 1);
  const uint64_t used = satAdd(a, u);  // used = A + U on every route (spec §3.3: deliberate deviation)
  const uint64_t free_ = total > used ? total - used : 0;
  const double percent = std::round(static_cast<double>(total - free_) / static_cast<double>(total) * 1000.0) / 10.0;

  std::string root = ctx.options.data_root;
  if (root.empty()) root = snap.data_root.empty() ? "/var/lib/docker" : snap.data_root;
  json dev = {{"name", kDockerDevice},
              {"mount_points", json::array({root})},
              {"fstype", "docker"},
              {"opts", json::array({"docker"})},
              {"usage", {{"total", total}, {"used", used}, {"free", free_}, {"percent", percent}}},
              {"user_quota_format", "docker"}};
  if (u > 0) dev["unattributed_usage"] = u;

  // The device without its list, then "user_quotas" spliced in as text.
  std::string out = jsonText(dev);
  out.pop_back();  // '}'
  out += ",\"user_quotas\":[";
  bool first = true;
  auto add = [&](uint32_t uid, uint64_t kib, const UserUsage& uu) {
    if (!first) out += ',';
    first = false;
    appendUserQuota(out, ctx, uid, kib, uu);
  };
  if (only_uid) {
    add(*only_uid, lookup(limits, *only_uid), usageOf(snap, *only_uid));
  } else {
    // Every uid with a limit or bytes, filtered, by uid: merge two sorted maps.
    auto li = limits.begin();
    auto ui = snap.users.begin();
    while (li != limits.end() || ui != snap.users.end()) {
      uint32_t uid;
      if (ui == snap.users.end() || (li != limits.end() && li->first < ui->first)) {
        uid = (li++)->first;
      } else if (li == limits.end() || ui->first < li->first) {
        uid = (ui++)->first;
      } else {
        uid = li->first;
        ++li;
        ++ui;
      }
      if (!managedUid(uid)) continue;
      const UserUsage& uu = usageOf(snap, uid);
      const uint64_t kib = lookup(limits, uid);
      if (kib == 0 && uu.total() == 0) continue;
      add(uid, kib, uu);
    }
  }
  out += "]}";
  return out;
}

json dockerDevice(QmanContext& ctx, const UsageSnapshot& snap, const QuotaBook::Limits& limits,
                  std::optional<uint32_t> only_uid) {
  return json::parse(dockerDeviceText(ctx, snap, limits, only_uid));
}

namespace {

// --- route bodies --------------------------------------------------------------------

// A user's devices (the per-user routes): block and ZFS devices where the uid
// has an entry, and docker, in the spec's order.
std::string quotasFor(QmanContext& ctx, uint32_t uid) {
  std::vector<std::pair<std::string, std::string>> named;
  if (ctx.devices) {
    const std::string name = ctx.users.name(uid);
    for (const auto& d : ctx.devices->view()->devices)
      if (auto text = deviceTextFor(*d, uid, name)) named.emplace_back(d->name, std::move(*text));
  }
  if (ctx.options.docker_enabled) {
    auto snap = ctx.usage.snapshot();
    auto limits = ctx.quotas.limits();
    // Spec §4.1: the docker device only if the uid is listed and has a limit or bytes.
    if (managedUid(uid) && (lookup(*limits, uid) != 0 || usageOf(*snap, uid).total() != 0))
      named.emplace_back(kDockerDevice, dockerDeviceText(ctx, *snap, *limits, uid));
  }
  return mergeDevices({named.begin(), named.end()});
}

}  // namespace

std::string userQuotasText(QmanContext& ctx, uint32_t uid) { return quotasFor(ctx, uid); }

namespace {

// GET /remote-api/quotas: block and ZFS devices (their text cached per
// refresh), then docker's, merged in the spec's order (§2), the whole answer
// cached (QuotasCache).
std::shared_ptr<const std::string> quotasBody(QmanContext& ctx) {
  std::shared_ptr<const DeviceListCache::Texts> texts;
  if (ctx.devices) texts = ctx.device_cache->texts(*ctx.devices->view(), ctx.users, ctx.candidates);
  QuotasCache& c = *ctx.cache;
  auto snap = ctx.usage.snapshot();
  auto limits = ctx.quotas.limits();
  const auto t = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> l(c.mu);
    if (c.body && c.generation == snap->generation && c.limits == limits && c.texts == texts &&
        t - c.at < QuotasCache::kMaxAge)
      return c.body;
  }
  // Built outside the lock; two requests racing both build, the last one stays.
  std::vector<std::pair<std::string_view, std::string_view>> named;
  if (texts) named.assign(texts->begin(), texts->end());
  std::string docker;
  if (ctx.options.docker_enabled) {
    docker = dockerDeviceText(ctx, *snap, *limits, std::nullopt);
    named.emplace_back(kDockerDevice, docker);
  }
  auto body = std::make_shared<const std::string>(mergeDevices(std::move(named)));
  std::lock_guard<std::mutex> l(c.mu);
  c.generation = snap->generation;
  c.limits = std::move(limits);
  c.texts = std::move(texts);
  c.at = t;
  c.body = body;
  return body;
}

json deviceDefaultJson(const DeviceDefault& d) {
  return json{{"device_name", d.device},
              {"block_soft_limit", d.block_soft_kib},
              {"block_hard_limit", d.block_hard_kib},
              {"inode_soft_limit", d.inode_soft},
              {"inode_hard_limit", d.inode_hard}};
}

LimitsUpdate toUpdate(const Limits4& l) { return LimitsUpdate{l.block_hard, l.block_soft, l.inode_hard, l.inode_soft}; }
bool anyField(const Limits4& l) { return l.block_hard || l.block_soft || l.inode_hard || l.inode_soft; }

// PUT on a block device or ZFS dataset (spec §3.6, §4.4). Deliberate
// differences from qman, each refused before anything is written: a uid with
// no passwd entry (qman lets the kernel take the limits, then answers an HTML
// 500), soft above a non-zero hard (XFS would drop the write silently), a
// body with no limit at all. An absent field keeps its current value.
void putDeviceQuota(QmanContext& ctx, QuotaDevice& dev, const Req& req, Res& res) {
  auto uid = parseUid(req.matches[1]);
  if (!uid) return sendError(res, 400, "uid " + printable(req.matches[1].str(), kEchoBytes) + " is not a valid uid");
  auto body = jsonBody(req, res, ctx.options.max_body_bytes);
  if (!body) return;
  Limits4 l;
  if (!readLimits(*body, l, res)) return;
  if (!anyField(l))
    return sendError(
        res, 400,
        "no limit given (block_hard_limit, block_soft_limit, inode_hard_limit, inode_soft_limit); nothing was changed");
  if (!ctx.users.known(*uid))
    return sendError(res, 404,
                     "user not found: uid " + std::to_string(*uid) + " has no passwd entry; nothing was changed");
  const LimitsUpdate u = toUpdate(l);
  auto view = ctx.devices->view();
  const DeviceSnapshot* snap = nullptr;
  for (const auto& d : view->devices)
    if (d->name == dev.name()) snap = d.get();
  if (std::string why = checkLimits(u, currentFigures(snap, *uid), dev.singleLimit()); !why.empty())
    return sendError(res, 400, why);
  auto now = ctx.devices->setUserLimits(dev, *uid, u);
  if (!now) {
    LOG_ERROR(kSub, "%s", now.error().message.c_str());
    return sendError(res, 500, now.error().message);
  }
  LOG_INFO(kSub, "limits of uid %u on %s set", *uid, dev.name().c_str());
  std::string text;
  appendEntry(text, now->value_or(QuotaFigures{.id = *uid}), "uid", ctx.users.name(*uid));
  sendJsonText(res, 200, std::move(text));
}

void putUserQuota(QmanContext& ctx, const Req& req, Res& res) {
  auto target = checkDevice(ctx, req.get_param_value("device"), req.has_param("device"), res);
  if (!target) return;
  if (target->device) return putDeviceQuota(ctx, *target->device, req, res);
  auto uid = parseUid(req.matches[1]);
  if (!uid || !managedUid(*uid)) {
    sendError(res, 400,
              "uid " + printable(req.matches[1].str(), kEchoBytes) + " is not a managed user (1000..9999, not 65534)");
    return;
  }
  auto body = jsonBody(req, res, ctx.options.max_body_bytes);
  if (!body) return;
  Limits4 l;
  if (!readLimits(*body, l, res)) return;
  // Deliberate: qman turns a missing limit into 0 and silently
  // removes the user's limit; we refuse and change nothing.
  if (!l.block_hard) {
    sendError(res, 400, "block_hard_limit is required (1 KiB blocks; 0 removes the limit); nothing was changed");
    return;
  }
  if (auto s = ctx.quotas.setLimit(*uid, *l.block_hard); !s) {
    LOG_ERROR(kSub, "%s", s.error().message.c_str());
    sendError(res, 500, s.error().message);
    return;
  }
  LOG_INFO(kSub, "docker limit of uid %u set to %llu KiB", *uid, static_cast<unsigned long long>(*l.block_hard));
  auto snap = ctx.usage.snapshot();
  sendJson(res, 200, userQuota(ctx, *uid, *l.block_hard, usageOf(*snap, *uid)));
}

void getDefaults(QmanContext& ctx, const Req& req, Res& res) {
  const std::string device = req.get_param_value("device");
  if (!checkDevice(ctx, device, req.has_param("device"), res)) return;
  auto d = ctx.quotas.deviceDefault(device);
  if (!d) return sendError(res, 500, d.error().message);
  sendJson(res, 200, *d ? deviceDefaultJson(**d) : json(nullptr));
}

void putDefaults(QmanContext& ctx, const Req& req, Res& res) {
  const std::string device = req.get_param_value("device");
  auto target = checkDevice(ctx, device, req.has_param("device"), res);
  if (!target) return;
  auto body = jsonBody(req, res, ctx.options.max_body_bytes);
  if (!body) return;
  Limits4 l;
  if (!readLimits(*body, l, res)) return;
  DeviceDefault d{device, l.block_soft.value_or(0), l.block_hard.value_or(0), l.inode_soft.value_or(0),
                  l.inode_hard.value_or(0)};
  if (target->device) {
    const LimitsUpdate u{d.block_hard_kib, d.block_soft_kib, d.inode_hard, d.inode_soft};
    if (std::string why = checkLimits(u, QuotaFigures{}, target->device->singleLimit()); !why.empty())
      return sendError(res, 400, why);
  }
  if (auto s = ctx.quotas.setDeviceDefault(d); !s) return sendError(res, 500, s.error().message);
  sendJson(res, 200, deviceDefaultJson(d));
}

// "preserve_if_nonzero" / "preserve_if_usage_exceeds": absent = false; else a boolean.
bool readFlag(const json& body, const char* key, bool& out, Res& res) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_boolean()) {
    sendError(res, 400, std::string(key) + " must be true or false");
    return false;
  }
  out = it->get<bool>();
  return true;
}

// Batch on a block device or ZFS dataset (spec §3.7). Every field is checked
// before the first write; absent limits keep each user's current value.
void deviceBatch(QmanContext& ctx, QuotaDevice& dev, const json& body, const Limits4& l, Res& res) {
  DeviceBatch b;
  b.limits = toUpdate(l);
  if (!readFlag(body, "preserve_if_nonzero", b.preserve_if_nonzero, res) ||
      !readFlag(body, "preserve_if_usage_exceeds", b.preserve_if_usage_exceeds, res))
    return;
  if (!anyField(l))
    return sendError(
        res, 400,
        "no limit given (block_hard_limit, block_soft_limit, inode_hard_limit, inode_soft_limit); nothing was changed");
  // Checked against zeros: with both of a pair in the body the check is exact;
  // with one, each user's other value is checked by the kernel's rule below.
  if (std::string why = checkLimits(b.limits, QuotaFigures{}, dev.singleLimit()); !why.empty())
    return sendError(res, 400, why);
  std::vector<uint32_t> eligible;
  for (const auto& u : ctx.users.managed()) eligible.push_back(u.uid);
  DeviceBatchResult r = runDeviceBatch(*ctx.devices, dev, eligible, b);
  sendJson(res, 200,
           json{{"total_users", r.total_users},
                {"updated_users", r.updated_users},
                {"skipped_users", r.skipped_users},
                {"errors", r.errors}});
}

void postBatch(QmanContext& ctx, const Req& req, Res& res) {
  auto body = jsonBody(req, res, ctx.options.max_body_bytes);
  if (!body) return;
  auto dev = body->find("device");
  if (dev == body->end() || !dev->is_string() || dev->get<std::string>().empty())
    return sendError(res, 400, "device is required");
  auto target = checkDevice(ctx, dev->get<std::string>(), true, res);
  if (!target) return;
  Limits4 l;
  if (!readLimits(*body, l, res)) return;
  if (target->device) return deviceBatch(ctx, *target->device, *body, l, res);
  // Same rule as PUT: a batch without a limit would clear everyone's.
  if (!l.block_hard)
    return sendError(res, 400, "block_hard_limit is required (1 KiB blocks; 0 removes limits); nothing was changed");
  BatchRequest br;
  br.block_hard_kib = *l.block_hard;
  for (auto [key, field] : {std::pair{"preserve_if_nonzero", &br.preserve_if_nonzero},
                            std::pair{"preserve_if_usage_exceeds", &br.preserve_if_usage_exceeds}}) {
    auto it = body->find(key);
    if (it == body->end() || it->is_null()) continue;
    if (!it->is_boolean()) return sendError(res, 400, std::string(key) + " must be true or false");
    *field = it->get<bool>();
  }
  std::vector<uint32_t> eligible;
  for (const auto& u : ctx.users.managed()) eligible.push_back(u.uid);
  auto snap = ctx.usage.snapshot();
  std::map<uint32_t, uint64_t> usage;
  for (const auto& [uid, u] : snap->users) usage[uid] = u.total();
  BatchPlan plan = planBatch(eligible, *ctx.quotas.limits(), usage, br);
  if (auto s = ctx.quotas.setLimits(plan.set); !s) return sendError(res, 500, s.error().message);
  LOG_INFO(kSub, "batch: docker limit %llu KiB for %zu of %zu users",
           static_cast<unsigned long long>(br.block_hard_kib), plan.set.size(), plan.total_users);
  sendJson(res, 200,
           json{{"total_users", plan.total_users},
                {"updated_users", plan.set.size()},
                {"skipped_users", plan.skipped_users},
                {"errors", json::array()}});
}

// --- Docker pages (spec §4.3) -------------------------------------------------------------

// Owner fields: `name_key`/`uid_key` as null when unattributed (the lists' nullable pair).
void ownerNullable(QmanContext& ctx, json& j, const UsageRow& r, const char* name_key, const char* uid_key) {
  j[name_key] = r.uid ? json(ctx.users.name(*r.uid)) : json(nullptr);
  j[uid_key] = r.uid ? json(*r.uid) : json(nullptr);
}

uint64_t attributedBytes(const std::vector<const UsageRow*>& rows) {
  uint64_t sum = 0;
  for (const UsageRow* r : rows)
    if (r->uid) sum += r->size_bytes;
  return sum;
}

// Biggest first, then by id: stable across requests.
std::vector<const UsageRow*> sorted(const std::vector<UsageRow>& rows) {
  std::vector<const UsageRow*> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back(&r);
  std::sort(out.begin(), out.end(), [](const UsageRow* a, const UsageRow* b) {
    return a->size_bytes != b->size_bytes ? a->size_bytes > b->size_bytes : a->id < b->id;
  });
  return out;
}

// The pages write their lists row by row (jsonObjectText): 10,000 containers
// as one tree would take ~30 MiB for the length of a request.
std::string containersPage(QmanContext& ctx, const UsageSnapshot& snap) {
  const auto rows = sorted(snap.containers);
  const uint64_t attributed = attributedBytes(rows);
  return jsonObjectText({{"total_bytes", snap.container_bytes},
                         {"attributed_bytes", attributed},
                         {"unattributed_bytes", snap.container_bytes - attributed}},
                        {{"containers",
                          [&](const JsonRowSink& add) {
                            for (const UsageRow* r : rows) {
                              json c = {{"container_id", r->id},       {"name", r->name},
                                        {"image", r->parent},          {"status", r->status},
                                        {"size_bytes", r->size_bytes}, {"created_at", isoOrNull(r->attributed_at)}};
                              ownerNullable(ctx, c, *r, "host_user_name", "uid");
                              c["source"] =
                                  toString(r->source);  // ours, extra: "bpf", "label", "admin", "unattributed"
                              add(c);
                            }
                          }}},
                        rows.size() * 384);
}

std::string imagesPage(QmanContext& ctx, const UsageSnapshot& snap) {
  const auto layers = sorted(snap.layers);
  json by_user = json::object();
  std::map<uint32_t, uint64_t> per_uid;
  uint64_t attributed = 0;
  for (const UsageRow* r : layers) {
    if (r->uid) {
      attributed += r->size_bytes;
      per_uid[*r->uid] += r->size_bytes;
    }
  }
  for (const auto& [uid, bytes] : per_uid) by_user[std::to_string(uid)] = bytes;
  return jsonObjectText(
      {{"total_image_bytes", snap.image_bytes},
       {"total_layer_bytes", snap.layer_bytes},
       {"attributed_layer_bytes", attributed},
       {"unattributed_layer_bytes", snap.layer_bytes - attributed},
       {"layers_by_user", std::move(by_user)}},
      {{"images",
        [&](const JsonRowSink& add) {
          for (const UsageRow* r : sorted(snap.images)) {
            json i = {{"image_id", r->id},
                      {"tags", r->tags()},
                      {"size_bytes", r->size_bytes},
                      {"created", isoOrNull(r->created())}};
            if (r->uid) {  // optional, not nullable
              i["puller_host_user_name"] = ctx.users.name(*r->uid);
              i["puller_uid"] = *r->uid;
            }
            add(i);
          }
        }},
       {"layers",
        [&](const JsonRowSink& add) {
          for (const UsageRow* r : layers) {
            json l = {
                {"layer_id", r->id},
                {"size_bytes", r->size_bytes},
                {"creation_method", r->method.empty() ? json(nullptr) : json(r->method)},
                {"first_seen_at", r->first_seen && *r->first_seen > 0 ? json(isoTime(*r->first_seen)) : json(nullptr)}};
            ownerNullable(ctx, l, *r, "first_puller_host_user_name", "first_puller_uid");
            add(l);
          }
        }}},
      (snap.images.size() + layers.size()) * 384);
}

std::string volumesPage(QmanContext& ctx, const UsageSnapshot& snap) {
  const auto rows = sorted(snap.volumes);
  const uint64_t attributed = attributedBytes(rows);
  return jsonObjectText({{"total_bytes", snap.volume_bytes},
                         {"attributed_bytes", attributed},
                         {"unattributed_bytes", snap.volume_bytes - attributed}},
                        {{"volumes",
                          [&](const JsonRowSink& add) {
                            for (const UsageRow* r : rows) {
                              json v = {{"volume_name", r->id},
                                        {"size_bytes", r->size_bytes},
                                        {"ref_count", r->refCount()},
                                        {"first_seen_at", isoOrNull(r->first_seen)}};
                              if (auto reported = r->reportedSize()) v["reported_size_bytes"] = *reported;
                              ownerNullable(ctx, v, *r, "host_user_name", "uid");
                              // qman's enum is "label" | "container"; kernel and admin evidence are the
                              // creating request, which qman calls "container". Ours is in "source".
                              v["attribution_source"] =
                                  !r->uid ? json(nullptr) : json(r->source == Source::Label ? "label" : "container");
                              v["source"] = toString(r->source);
                              add(v);
                            }
                          }}},
                        rows.size() * 384);
}

void inspect(QmanContext& ctx, const Req& req, Res& res) {
  auto kind = parseObjectKind(req.get_param_value("kind"));
  if (!kind) return sendError(res, 400, "kind must be container, image or volume");
  const std::string id = req.get_param_value("id");
  if (id.empty()) return sendError(res, 400, "id query parameter required");
  if (!ctx.inspect) return sendError(res, 502, "no Docker client configured");
  auto r = *kind == ObjectKind::Container ? ctx.inspect->inspectContainer(id)
           : *kind == ObjectKind::Image   ? ctx.inspect->inspectImage(id)
                                          : ctx.inspect->inspectVolume(id);
  if (!r) {
    if (r.error().code == ENOENT)
      return sendError(res, 404, std::string(toString(*kind)) + " not found: " + printable(id, kEchoBytes));
    return sendError(res, 502, r.error().message);
  }
  sendJson(res, 200, json{{"inspect", std::move(*r)}});
}

// Resolves an entity's id (name, prefix, full id) in the store; 404 when unknown.
std::optional<std::string> resolveEntity(QmanContext& ctx, const Entity& e, Res& res) {
  auto id = ctx.store.objects().resolve(e.kind, e.ref);
  if (!id) {
    sendError(res, 500, id.error().message);
    return std::nullopt;
  }
  if (!*id) {
    sendError(res, 404, std::string(toString(e.kind)) + " not found: " + printable(e.ref, kEchoBytes));
    return std::nullopt;
  }
  return **id;
}

json evidenceJson(QmanContext& ctx, const Evidence& ev) {
  json j = {{"source", toString(ev.source)},
            {"uid", ev.uid},
            {"host_user_name", ctx.users.name(ev.uid)},
            {"gid", ev.gid},
            {"pid", ev.pid},
            {"comm", ev.comm},
            {"exe", ev.exe},
            {"method", ev.method},
            {"request_ts", isoTime(ev.request_time)},
            {"attributed_at", isoTime(ev.time)}};
  if (ev.login_uid) j["login_uid"] = *ev.login_uid;
  return j;
}

void attributionDetail(QmanContext& ctx, const Req& req, Res& res) {
  auto e = readEntity(fromQuery(req), true, res);
  if (!e) return;
  auto id = resolveEntity(ctx, *e, res);
  if (!id) return;
  auto d = ctx.store.objects().detail(e->kind, *id);
  if (!d) return sendError(res, 500, d.error().message);
  if (!*d) return sendError(res, 404, std::string(toString(e->kind)) + " not found: " + printable(e->ref, kEchoBytes));
  json out = {{"entity_type", toString(e->kind)}, {"entity_id", *id}};
  out["auto"] = (*d)->automatic ? evidenceJson(ctx, *(*d)->automatic) : json(nullptr);
  if ((*d)->override_) {
    json o = evidenceJson(ctx, *(*d)->override_);
    o["manual_resolver"] = (*d)->resolver;
    out["override"] = std::move(o);
  } else {
    out["override"] = nullptr;
  }
  sendJson(res, 200, out);
}

// The objects a cascade reaches: a container's volumes, an image's containers.
std::vector<std::pair<ObjectKind, std::string>> cascadeOf(QmanContext& ctx, ObjectKind kind, const std::string& id) {
  std::vector<std::pair<ObjectKind, std::string>> out;
  const ObjectKind child = kind == ObjectKind::Container ? ObjectKind::Volume : ObjectKind::Container;
  if (kind == ObjectKind::Volume) return out;
  auto rows = ctx.store.objects().list(child);
  if (!rows) return out;
  for (const auto& r : *rows)
    if (r.parent == id) out.emplace_back(child, r.id);
  return out;
}

void postAttribute(QmanContext& ctx, const Req& req, Res& res) {
  auto body = jsonBody(req, res, ctx.options.max_body_bytes);
  if (!body) return;
  auto e = readEntity(fromBody(*body), true, res);
  if (!e) return;
  // The owner: uid, or host_user_name resolved here; both must agree.
  std::optional<uint32_t> uid;
  if (auto it = body->find("uid"); it != body->end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() >= int64_t(UINT32_MAX))
      return sendError(res, 400, "uid must be a non-negative integer");
    uid = it->get<uint32_t>();
  }
  if (auto it = body->find("host_user_name"); it != body->end() && !it->is_null()) {
    if (!it->is_string()) return sendError(res, 400, "host_user_name must be a string");
    auto named = ctx.users.uid(it->get<std::string>());
    if (!named) return sendError(res, 404, "user not found: " + printable(it->get<std::string>(), kEchoBytes));
    if (uid && *uid != *named) return sendError(res, 400, "uid and host_user_name name different users");
    uid = named;
  }
  if (!uid) return sendError(res, 400, "uid or host_user_name required");
  bool cascade = false;
  if (auto it = body->find("cascade"); it != body->end() && !it->is_null()) {
    if (!it->is_boolean()) return sendError(res, 400, "cascade must be true or false");
    cascade = it->get<bool>();
  }
  std::string resolver;
  if (auto it = body->find("manual_resolver"); it != body->end() && !it->is_null())
    resolver = utf8Prefix(it->is_string() ? it->get<std::string>() : it->dump(), kMaxResolverBytes);
  auto id = resolveEntity(ctx, *e, res);
  if (!id) return;

  Evidence ev;
  ev.source = Source::Admin;
  ev.uid = *uid;
  ev.gid = *uid;
  ev.comm = "qman";
  ev.exe = "remote-api";
  ev.method = "admin_override";
  ev.request_time = ev.time = now();
  std::vector<std::pair<ObjectKind, std::string>> targets = {{e->kind, *id}};
  if (cascade) {
    auto more = cascadeOf(ctx, e->kind, *id);
    targets.insert(targets.end(), more.begin(), more.end());
  }
  for (const auto& [kind, oid] : targets) {
    if (auto s = ctx.store.objects().setOverride(kind, oid, ev, resolver); !s)
      return sendError(res, 500, s.error().message);
    LOG_NOTICE(kSub, "admin override: %s %s -> uid %u (by %s)", toString(kind), oid.c_str(), *uid,
               resolver.empty() ? "?" : resolver.c_str());
  }
  if (auto s = ctx.usage.rejoin(); !s) LOG_WARN(kSub, "%s", s.error().message.c_str());
  sendJson(res, 200, json{{"status", "ok"}});
}

void deleteAttribute(QmanContext& ctx, const Req& req, Res& res) {
  auto e = readEntity(fromQuery(req), true, res);
  if (!e) return;
  auto cascade = boolParam(req, "cascade", false);
  if (!cascade) return sendError(res, 400, "cascade must be true or false");
  auto id = resolveEntity(ctx, *e, res);
  if (!id) return;
  std::vector<std::pair<ObjectKind, std::string>> targets = {{e->kind, *id}};
  if (*cascade) {
    auto more = cascadeOf(ctx, e->kind, *id);
    targets.insert(targets.end(), more.begin(), more.end());
  }
  for (const auto& [kind, oid] : targets) {
    if (auto s = ctx.store.objects().clearOverride(kind, oid); !s) return sendError(res, 500, s.error().message);
    LOG_NOTICE(kSub, "admin override removed: %s %s", toString(kind), oid.c_str());
  }
  if (auto s = ctx.usage.rejoin(); !s) LOG_WARN(kSub, "%s", s.error().message.c_str());
  sendJson(res, 200, json{{"status", "ok"}});
}

// page/page_size: positive integers, page_size <= 500.
std::optional<size_t> pageParam(const Req& req, const char* key, size_t def, size_t max) {
  if (!req.has_param(key)) return def;
  const std::string v = req.get_param_value(key);
  if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  const size_t n = std::stoul(v);
  if (n < 1 || n > max) return std::nullopt;
  return n;
}

const char* idKey(ObjectKind k) {
  return k == ObjectKind::Container ? "container_id" : k == ObjectKind::Image ? "image_id" : "volume_name";
}

void reviewQueue(QmanContext& ctx, const Req& req, Res& res) {
  std::optional<ObjectKind> only;
  if (req.has_param("entity_type") && !req.get_param_value("entity_type").empty()) {
    only = parseObjectKind(req.get_param_value("entity_type"));
    if (!only) return sendError(res, 400, "entity_type must be container, image or volume");
  }
  auto page = pageParam(req, "page", 1, 1000000);
  auto size = pageParam(req, "page_size", 50, 500);
  if (!page || !size) return sendError(res, 400, "page and page_size must be positive integers (page_size <= 500)");
  // The queue: live objects nobody owns, biggest first.
  auto snap = ctx.usage.snapshot();
  std::vector<const UsageRow*> queue;
  for (const auto* rows : {&snap->containers, &snap->images, &snap->volumes}) {
    for (const auto& r : *rows)
      if (!r.uid && (!only || r.kind == *only)) queue.push_back(&r);
  }
  std::sort(queue.begin(), queue.end(), [](const UsageRow* a, const UsageRow* b) {
    return a->size_bytes != b->size_bytes ? a->size_bytes > b->size_bytes : a->id < b->id;
  });
  json items = json::array();
  const size_t first = (*page - 1) * *size;
  for (size_t i = first; i < queue.size() && i < first + *size; i++) {
    const UsageRow& r = *queue[i];
    auto ev = ctx.store.objects().evidence(r.kind, std::string(r.id));
    items.push_back(json{{"entity_type", toString(r.kind)},
                         {idKey(r.kind), r.id},
                         {"entity_id", r.id},
                         {"name", r.name},
                         {"size_bytes", r.size_bytes},
                         {"first_seen_at", isoOrNull(r.first_seen)},
                         {"unresolved_events", ev ? ev->size() : 0}});
  }
  sendJson(res, 200, json{{"items", std::move(items)}, {"total", queue.size()}, {"page", *page}, {"page_size", *size}});
}

bool sameEvidence(const Evidence& a, const Evidence& b) {
  return a.source == b.source && a.uid == b.uid && a.pid == b.pid && a.method == b.method && a.time == b.time &&
         a.request_time == b.request_time;
}

void events(QmanContext& ctx, const Req& req, Res& res) {
  std::optional<ObjectKind> kind;
  std::string id;
  if (req.has_param("entity_type") && !req.get_param_value("entity_type").empty()) {
    auto e = readEntity(fromQuery(req), false, res);
    if (!e) return;
    kind = e->kind;
    if (!e->ref.empty()) {
      auto full = resolveEntity(ctx, *e, res);
      if (!full) return;
      id = *full;
    }
  }
  auto include_used = boolParam(req, "include_used", false);
  auto include_resolved = boolParam(req, "include_resolved", false);
  if (!include_used || !include_resolved)
    return sendError(res, 400, "include_used and include_resolved must be true or false");
  auto rows = ctx.store.objects().evidenceRows(kind, id, 500);
  if (!rows) return sendError(res, 500, rows.error().message);
  std::map<std::pair<ObjectKind, std::string>, std::optional<AttributionDetail>> details;
  json list = json::array();
  for (const EvidenceRow& row : *rows) {
    auto key = std::make_pair(row.kind, row.id);
    auto it = details.find(key);
    if (it == details.end()) {
      auto d = ctx.store.objects().detail(row.kind, row.id);
      it = details.emplace(key, d ? *d : std::nullopt).first;
    }
    const auto& d = it->second;
    const bool used = d && d->automatic && sameEvidence(*d->automatic, row.ev);
    const bool resolved = d && d->override_.has_value();
    if ((used && !*include_used) || (resolved && !*include_resolved)) continue;
    json payload = evidenceJson(ctx, row.ev);
    const bool kernel = row.ev.source == Source::Bpf || row.ev.source == Source::Audit;
    json ev = {{"id", row.seq},
               {"entity_type", toString(row.kind)},
               {idKey(row.kind), row.id},
               {"entity_id", row.id},
               // qman's enum: "audit" (who, from the kernel) | "docker" (from Docker's metadata or an admin).
               {"source", kernel ? "audit" : "docker"},
               {"event_ts", isoTime(row.ev.request_time)},
               {"created_at", isoTime(row.ev.time)},
               {"used_for_auto_attribution", used},
               {"manual_resolved_at", resolved ? json(isoTime(d->override_->time)) : json(nullptr)},
               {"manual_resolved_by_oauth_user_id", nullptr},
               {"uid", row.ev.uid},
               {"host_user_name", ctx.users.name(row.ev.uid)},
               {"payload", jsonText(payload)}};  // comm and exe are the kernel's: any bytes
    list.push_back(std::move(ev));
  }
  sendJson(res, 200, json{{"events", std::move(list)}});
}

// --- /metrics ----------------------------------------------------------------------------

// GET /api/v1/projects: {"state", "mode", "projects": [{id, kind, owner, limit_bytes, used_bytes}]}.
void projectsPage(QmanContext& ctx, const Req&, Res& res) {
  const ProjectQuotas* p = ctx.projects;
  if (!p) return sendJson(res, 200, json{{"state", "off"}, {"projects", json::array()}});
  json out = {{"state", p->active() ? "active" : "degraded"}, {"mode", toString(p->options().mode)}};
  if (!p->active()) out["reason"] = p->reason();
  auto rows = ctx.store.projectIds().projects();
  if (!rows) return sendError(res, 500, rows.error().message);
  auto usage = p->usage();
  json list = json::array();
  for (const auto& r : *rows) {
    json j = {{"id", r.id}, {"kind", r.owner_kind}, {"owner", r.owner}, {"created_at", r.created_at}};
    if (r.limit_bytes) j["limit_bytes"] = *r.limit_bytes;
    if (usage) {
      if (r.owner_kind == "user") {
        auto it = usage->users.find(uint32_t(std::stoul(r.owner)));
        if (it != usage->users.end()) j["used_bytes"] = it->second;
      } else {
        auto it = usage->containers.find(r.owner);
        if (it != usage->containers.end()) j["used_bytes"] = it->second;
      }
    }
    list.push_back(std::move(j));
  }
  out["projects"] = std::move(list);
  sendJson(res, 200, out);
}

// PUT /api/v1/projects/containers/<id or name> {"limit_bytes": N | null}: a
// container's own limit in per-container mode (null = back to the default).
void putContainerLimit(QmanContext& ctx, const Req& req, Res& res) {
  ProjectQuotas* p = ctx.projects;
  if (!p || !p->active() || p->options().mode != ProjectMode::Container)
    return sendError(res, 409, "per-container project quotas are not active on this host (project_quota_mode)");
  auto body = jsonBody(req, res, ctx.options.max_body_bytes);
  if (!body) return;
  if (!body->is_object() || !body->contains("limit_bytes"))
    return sendError(res, 400, "limit_bytes is required (bytes, or null for the default); nothing was changed");
  const json& v = (*body)["limit_bytes"];
  std::optional<uint64_t> bytes;
  if (!v.is_null()) {
    if (!v.is_number_unsigned() || v.get<uint64_t>() > (uint64_t(1) << 60))
      return sendError(res, 400, "limit_bytes must be a non-negative integer up to 2^60, or null");
    bytes = v.get<uint64_t>();
  }
  auto id = ctx.store.objects().resolve(ObjectKind::Container, req.matches[1]);
  if (!id) return sendError(res, 500, id.error().message);
  if (!*id) return sendError(res, 404, "no such container: " + printable(req.matches[1].str(), kEchoBytes));
  if (!p->projectOfContainer(**id)) return sendError(res, 404, "container " + **id + " has no project yet");
  if (auto s = ctx.store.projectIds().setProjectLimit("container", **id, bytes); !s)
    return sendError(res, s.error().code == ENOENT ? 404 : 500, s.error().message);
  p->limitsChanged();  // in the kernel before the pass this starts
  LOG_INFO(kSub, "container %s: own limit %s", id->value().c_str(),
           bytes ? std::to_string(*bytes).c_str() : "cleared (default)");
  json out = {{"id", **id}, {"project", *p->projectOfContainer(**id)}};
  out["limit_bytes"] = bytes ? json(*bytes) : json(p->options().container_default_bytes);
  out["default"] = !bytes;
  sendJson(res, 200, out);
}

// VmRSS: resident pages (statm's second field) times the page size.
uint64_t residentBytes() {
  unsigned long size = 0, resident = 0;
  FILE* f = fopen("/proc/self/statm", "r");
  if (!f) return 0;
  const int n = fscanf(f, "%lu %lu", &size, &resident);
  fclose(f);
  return n == 2 ? static_cast<uint64_t>(resident) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

void metrics(QmanContext& ctx, ApiServer& api, Res& res) {
  std::string out;
  auto snap = ctx.usage.snapshot();
  auto limits = ctx.quotas.limits();
  auto lbl = [&](uint32_t uid) {
    return "uid=\"" + std::to_string(uid) + "\",user=\"" + promEscape(ctx.users.name(uid)) + "\"";
  };

  promHeader(out, "dockquota_user_usage_bytes", "gauge",
             "Bytes billed to a uid, by kind (container writable layers, image layers, volumes).");
  for (const auto& [uid, u] : snap->users) {
    promSample(out, "dockquota_user_usage_bytes", lbl(uid) + ",kind=\"container\"", u.container_bytes);
    promSample(out, "dockquota_user_usage_bytes", lbl(uid) + ",kind=\"image_layer\"", u.image_layer_bytes);
    promSample(out, "dockquota_user_usage_bytes", lbl(uid) + ",kind=\"volume\"", u.volume_bytes);
  }
  promHeader(out, "dockquota_user_limit_bytes", "gauge", "A uid's Docker limit in bytes (absent = no limit).");
  for (const auto& [uid, kib] : *limits) promSample(out, "dockquota_user_limit_bytes", lbl(uid), kib * 1024);

  json dev = dockerDevice(ctx, *snap, *limits, std::nullopt);
  promHeader(out, "dockquota_device_bytes", "gauge",
             "The docker device as qman sees it (usage.total/used/free, unattributed).");
  for (const char* k : {"total", "used", "free"})
    promSample(out, "dockquota_device_bytes", std::string("field=\"") + k + "\"", dev["usage"][k].get<uint64_t>());
  promSample(out, "dockquota_device_bytes", "field=\"unattributed\"", dev.value("unattributed_usage", uint64_t(0)));
  promHeader(out, "dockquota_docker_bytes", "gauge", "Everything Docker holds, by kind (each layer once).");
  promSample(out, "dockquota_docker_bytes", "kind=\"container\"", snap->container_bytes);
  promSample(out, "dockquota_docker_bytes", "kind=\"image_layer\"", snap->layer_bytes);
  promSample(out, "dockquota_docker_bytes", "kind=\"volume\"", snap->volume_bytes);

  promHeader(out, "dockquota_objects", "gauge", "Live objects in the attribution store, by kind and owner source.");
  for (const auto& [kind, by_source] : snap->counts)
    for (const auto& [source, n] : by_source)
      promSample(out, "dockquota_objects", "kind=\"" + kind + "\",source=\"" + source + "\"", n);

  promHeader(out, "dockquota_usage_measurements_total", "counter", "Usage measurements, by result.");
  promSample(out, "dockquota_usage_measurements_total", "result=\"ok\"", ctx.usage.measurements());
  promSample(out, "dockquota_usage_measurements_total", "result=\"error\"", ctx.usage.failures());
  promHeader(out, "dockquota_usage_measured_timestamp_seconds", "gauge", "When the figures served were measured.");
  promSample(out, "dockquota_usage_measured_timestamp_seconds", "", snap->measured ? snap->measured_at : 0.0);

  promHeader(out, "dockquota_usage_source", "gauge",
             "Where per-user figures come from: kernel (project-quota reads) or docker (walks, Docker's figures).");
  promSample(out, "dockquota_usage_source", "source=\"kernel\"", uint64_t(snap->kernel ? 1 : 0));
  promSample(out, "dockquota_usage_source", "source=\"docker\"", uint64_t(snap->kernel ? 0 : 1));
  if (const ProjectQuotas* p = ctx.projects) {
    const auto& st = p->stats();
    std::string fs =
        "filesystem=\"" + promEscape(p->filesystem().fstype) + "\",mode=\"" + toString(p->options().mode) + "\"";
    promHeader(out, "dockquota_project_quota_active", "gauge",
               "1 when kernel project quotas hold limits on Docker's storage, 0 when degraded (see /healthz).");
    promSample(out, "dockquota_project_quota_active", fs, uint64_t(p->active() ? 1 : 0));
    promHeader(out, "dockquota_project_quota_syncs_total", "counter",
               "Full project-quota passes (tag, limits, usage read).");
    promSample(out, "dockquota_project_quota_syncs_total", "", st.syncs.load());
    promHeader(out, "dockquota_project_quota_errors_total", "counter", "Tagging, limit and read failures.");
    promSample(out, "dockquota_project_quota_errors_total", "", st.errors.load());
    promHeader(out, "dockquota_project_ids_total", "counter", "Project ids allocated and released.");
    promSample(out, "dockquota_project_ids_total", "event=\"allocated\"", st.ids_allocated.load());
    promSample(out, "dockquota_project_ids_total", "event=\"released\"", st.ids_released.load());
    promHeader(out, "dockquota_project_tagged_inodes_total", "counter", "Inodes given a project id by a (re)tag walk.");
    promSample(out, "dockquota_project_tagged_inodes_total", "", st.tagged_inodes.load());
    promHeader(out, "dockquota_project_sync_seconds", "gauge",
               "Duration of the last pass, and of its usage read alone.");
    promSample(out, "dockquota_project_sync_seconds", "part=\"all\"", st.last_sync_seconds.load());
    promSample(out, "dockquota_project_sync_seconds", "part=\"read\"", st.last_read_seconds.load());
    promHeader(out, "dockquota_project_tag_latency_seconds", "gauge",
               "Owner known to layer root tagged, for the last container.");
    promSample(out, "dockquota_project_tag_latency_seconds", "", st.last_tag_latency.load());
    promHeader(out, "dockquota_project_deferred_layers", "gauge",
               "Container layers mounted before they could be tagged: their writes are outside the owner's project "
               "until the container stops.");
    promSample(out, "dockquota_project_deferred_layers", "", st.deferred_layers.load());
    promHeader(out, "dockquota_project_deferred_layers_total", "counter",
               "Container layers ever found mounted before they could be tagged.");
    promSample(out, "dockquota_project_deferred_layers_total", "", st.deferred_layers_total.load());
    promHeader(out, "dockquota_project_early_tags_total", "counter",
               "New container layers tagged as Docker made them (before the create reply), those whose maker was "
               "unclear, and those Docker's create had mounted at the time (both tagged at the reply).");
    promSample(out, "dockquota_project_early_tags_total", "result=\"tagged\"", st.early_tagged.load());
    promSample(out, "dockquota_project_early_tags_total", "result=\"unclear\"", st.early_unclear.load());
    promSample(out, "dockquota_project_early_tags_total", "result=\"mounting\"", st.early_mounting.load());
    {
      const auto g = p->gateHealth();
      promHeader(
          out, "dockquota_layer_gate_on", "gauge",
          "1 when new container layers' mounts wait for their project (fanotify), 0 when the gate is unavailable.");
      promSample(out, "dockquota_layer_gate_on", "", uint64_t{g.value("state", "") == "on" ? 1u : 0u});
      promHeader(
          out, "dockquota_layer_gate_mounts_total", "counter",
          "Container layer mounts the gate held: tagged while held, or let through untagged after the longest hold.");
      promSample(out, "dockquota_layer_gate_mounts_total", "result=\"tagged\"", g.value("tagged", uint64_t{0}));
      promSample(out, "dockquota_layer_gate_mounts_total", "result=\"timeout\"", g.value("timeouts", uint64_t{0}));
    }
    promHeader(out, "dockquota_project_raced_mounts_total", "counter",
               "Layers Docker mounted while their diff/ was being tagged (a second pass fixed what was written).");
    promSample(out, "dockquota_project_raced_mounts_total", "", st.raced_mounts.load());
  }
  // Memory, for the RSS budget (README: 1,000 users and 10,000 containers).
  const struct mallinfo2 mi = mallinfo2();
  promHeader(out, "dockquota_heap_bytes", "gauge",
             "malloc's heap: bytes in use, and freed bytes it still holds (glibc mallinfo2).");
  promSample(out, "dockquota_heap_bytes", "state=\"in_use\"", static_cast<uint64_t>(mi.uordblks + mi.hblkhd));
  promSample(out, "dockquota_heap_bytes", "state=\"free\"", static_cast<uint64_t>(mi.fordblks));
  promHeader(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  promSample(out, "process_resident_memory_bytes", "", residentBytes());

  if (ctx.devices) appendDeviceMetrics(out, *ctx.devices->view(), [&ctx](uint32_t uid) { return ctx.users.name(uid); });
  promProbeCounters(out, ctx.probe_counters ? ctx.probe_counters() : json::object());
  if (ctx.more_metrics) ctx.more_metrics(out);
  api.requestMetrics().render(out);
  res.status = 200;
  res.set_content(out, "text/plain; version=0.0.4; charset=utf-8");
}

}  // namespace

void installQmanRoutes(ApiServer& api, QmanContext& ctx) {
  // Every /remote-api route and /metrics: authorize first (spec §1).
  auto guarded = [&api, &ctx](void (*fn)(QmanContext&, const Req&, Res&)) {
    return [&api, &ctx, fn](const Req& req, Res& res) {
      if (api.authorize(req, res)) fn(ctx, req, res);
    };
  };
  auto docker = [&api, &ctx](std::string (*page)(QmanContext&, const UsageSnapshot&)) {
    return [&api, &ctx, page](const Req& req, Res& res) {
      if (!api.authorize(req, res)) return;
      if (!ctx.options.docker_enabled) return sendError(res, 400, kDockerOff);
      sendJsonText(res, 200, page(ctx, *ctx.usage.snapshot()));
    };
  };
  auto dockerOnly = [&api, &ctx](void (*fn)(QmanContext&, const Req&, Res&)) {
    return [&api, &ctx, fn](const Req& req, Res& res) {
      if (!api.authorize(req, res)) return;
      if (!ctx.options.docker_enabled) return sendError(res, 400, kDockerOff);
      fn(ctx, req, res);
    };
  };

  // §4.1
  api.route("GET", "/remote-api/ping", guarded([](QmanContext&, const Req&, Res& res) {
              sendJson(res, 200, json{{"status", "ok"}});
            }));
  api.route("GET", "/remote-api/users", guarded([](QmanContext& c, const Req&, Res& res) {
              std::vector<std::string> names;
              for (const auto& u : c.users.managed()) names.push_back(u.name);
              std::sort(names.begin(), names.end());
              names.erase(std::unique(names.begin(), names.end()), names.end());
              sendJson(res, 200, names);
            }));
  api.route("GET", "/remote-api/users/resolve", guarded([](QmanContext& c, const Req& req, Res& res) {
              const std::string name = req.get_param_value("username");
              if (name.empty()) return sendError(res, 400, "username query parameter required");
              auto uid = c.users.uid(name);
              if (!uid) return sendError(res, 404, "user not found: " + printable(name, kEchoBytes));
              sendJson(res, 200, json{{"uid", *uid}, {"name", c.users.name(*uid)}});
            }));
  api.route("GET", "/remote-api/quotas", guarded([](QmanContext& c, const Req&, Res& res) {
              res.status = 200;
              res.set_content(*quotasBody(c), "application/json");
            }));
  api.route("GET", R"(/remote-api/quotas/users/by-name/([^/]+))", guarded([](QmanContext& c, const Req& req, Res& res) {
              const std::string name = req.matches[1];
              auto uid = c.users.uid(name);
              if (!uid) return sendError(res, 404, "user not found: " + printable(name, kEchoBytes));
              sendJsonText(res, 200, quotasFor(c, *uid));
            }));
  api.route("GET", R"(/remote-api/quotas/users/(\d+))", guarded([](QmanContext& c, const Req& req, Res& res) {
              auto uid = parseUid(req.matches[1]);
              if (!uid) return sendJson(res, 200, json::array());
              sendJsonText(res, 200, quotasFor(c, *uid));
            }));
  api.route("PUT", R"(/remote-api/quotas/users/(\d+))", guarded(putUserQuota));
  // §4.2
  api.route("GET", "/remote-api/quotas/defaults", guarded(getDefaults));
  api.route("PUT", "/remote-api/quotas/defaults", guarded(putDefaults));
  api.route("POST", "/remote-api/quotas/batch", guarded(postBatch));
  // §4.3
  api.route("GET", "/remote-api/docker/containers", docker(containersPage));
  api.route("GET", "/remote-api/docker/images", docker(imagesPage));
  api.route("GET", "/remote-api/docker/volumes", docker(volumesPage));
  api.route("GET", "/remote-api/docker/inspect", dockerOnly(inspect));
  api.route("GET", "/remote-api/docker/usage/attribution-detail", dockerOnly(attributionDetail));
  api.route("GET", "/remote-api/docker/usage/review-queue", dockerOnly(reviewQueue));
  api.route("GET", "/remote-api/docker/usage/events", dockerOnly(events));
  api.route("POST", "/remote-api/docker/usage/attribute", dockerOnly(postAttribute));
  api.route("DELETE", "/remote-api/docker/usage/attribute", dockerOnly(deleteAttribute));
  // Same Basic auth as /remote-api: the listener may face the qman master's
  // network, and per-user usage is not public (Prometheus: basic_auth).
  api.route("GET", "/metrics", [&api, &ctx](const Req& req, Res& res) {
    if (api.authorize(req, res)) metrics(ctx, api, res);
  });
  // The agent's own API: kernel project ids in use, with their limits and usage.
  api.route("GET", "/api/v1/projects", guarded(projectsPage));
  api.route("PUT", R"(/api/v1/projects/containers/([^/]+))", guarded(putContainerLimit));
}

}  // namespace dockquota
