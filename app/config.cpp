// SPDX-License-Identifier: Apache-2.0
#include "app/config.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <vector>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "agent/base/log.h"
#include "agent/probes/dsock_probe.h"
#include "agent/probes/growth_probe.h"
#include "agent/quota/zfs_quota.h"

namespace dockquota {
namespace {

using json = nlohmann::json;

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) i++;
  return s.substr(i);
}

Error keyError(const std::string& origin, const std::string& key, const std::string& why) {
  return Error{EINVAL, "config " + origin + ": key \"" + key + "\": " + why};
}

// A string key that must take one of `allowed`: nothing, or the key's error
// listing them.
std::optional<Error> oneOf(const std::string& origin, const char* key, const std::string& value,
                           const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return std::nullopt;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  return keyError(origin, key, "must be one of " + list);
}

// "auto", then a probe's hook sets.
std::vector<std::string> hookChoices(const std::vector<std::string>& sets) {
  std::vector<std::string> out{"auto"};
  out.insert(out.end(), sets.begin(), sets.end());
  return out;
}

// Typed readers: each checks the JSON type and range, names the key on failure.
using Reader = std::function<Status(const json&, Config&)>;

template <typename T>
Reader uintKey(const std::string& origin, const std::string& key, T Config::*field, uint64_t lo, uint64_t hi) {
  return [=](const json& v, Config& c) -> Status {
    if (!v.is_number_integer() || (v.is_number_integer() && v.get<int64_t>() < 0)) {
      return keyError(origin, key, "must be a non-negative integer");
    }
    uint64_t n = v.get<uint64_t>();
    if (n < lo || n > hi) {
      return keyError(origin, key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    }
    c.*field = static_cast<T>(n);
    return {};
  };
}

Reader stringKey(const std::string& origin, const std::string& key, std::string Config::*field, bool nonempty = true) {
  return [=](const json& v, Config& c) -> Status {
    if (!v.is_string()) return keyError(origin, key, "must be a string");
    if (nonempty && v.get<std::string>().empty()) return keyError(origin, key, "must not be empty");
    c.*field = v.get<std::string>();
    return {};
  };
}

Reader pathListKey(const std::string& origin, const std::string& key, std::vector<std::string> Config::*field) {
  return [=](const json& v, Config& c) -> Status {
    if (!v.is_array()) return keyError(origin, key, "must be an array of absolute paths");
    std::vector<std::string> out;
    for (const auto& e : v) {
      if (!e.is_string() || e.get<std::string>().empty() || e.get<std::string>()[0] != '/') {
        return keyError(origin, key, "must be an array of absolute paths");
      }
      out.push_back(e.get<std::string>());
    }
    c.*field = std::move(out);
    return {};
  };
}

Reader boolKey(const std::string& origin, const std::string& key, bool Config::*field) {
  return [=](const json& v, Config& c) -> Status {
    if (!v.is_boolean()) return keyError(origin, key, "must be true or false");
    c.*field = v.get<bool>();
    return {};
  };
}

// A file's content, trimmed; the key names the file in errors.
Result<std::string> readSecret(const std::string& origin, const std::string& key, const std::string& path) {
  std::ifstream f(path);
  if (!f) return keyError(origin, key, "cannot read " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  std::string v = trim(ss.str());
  if (v.empty()) return keyError(origin, key, path + " is empty");
  return v;
}

// "docker", "containerd", "docker,containerd" or an array of those: a set,
// each at most once, not empty.
Status runtimeKey(const std::string& origin, const json& v, Config& c) {
  const char* why = "must be \"docker\", \"containerd\", \"docker,containerd\" or an array of those";
  std::vector<std::string> names;
  if (v.is_string()) {
    std::stringstream ss(v.get<std::string>());
    for (std::string part; std::getline(ss, part, ',');) names.push_back(trim(part));
  } else if (v.is_array()) {
    for (const auto& e : v) {
      if (!e.is_string()) return keyError(origin, "runtime", why);
      names.push_back(e.get<std::string>());
    }
  } else {
    return keyError(origin, "runtime", why);
  }
  std::vector<std::string> out;
  for (const auto& n : names) {
    if ((n != "docker" && n != "containerd") || std::count(out.begin(), out.end(), n))
      return keyError(origin, "runtime", why);
    out.push_back(n);
  }
  if (out.empty()) return keyError(origin, "runtime", why);
  c.runtimes = std::move(out);
  return {};
}

// containerd namespace names: its own rule (namespaces/validate.go), a DNS
// label set: [A-Za-z0-9][A-Za-z0-9_.-]*, at most 76 bytes. Checked here
// because they are sent in filters.
bool validNamespace(const std::string& n) {
  if (n.empty() || n.size() > 76 || !isalnum(static_cast<unsigned char>(n[0]))) return false;
  for (char ch : n)
    if (!isalnum(static_cast<unsigned char>(ch)) && ch != '_' && ch != '.' && ch != '-') return false;
  return true;
}

Status namespacesKey(const std::string& origin, const json& v, Config& c) {
  const char* why = "must be a non-empty array of containerd namespace names (at most 64)";
  if (!v.is_array() || v.empty() || v.size() > 64) return keyError(origin, "containerd_namespaces", why);
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string() || !validNamespace(e.get<std::string>())) return keyError(origin, "containerd_namespaces", why);
    if (!std::count(out.begin(), out.end(), e.get<std::string>())) out.push_back(e.get<std::string>());
  }
  c.containerd_namespaces = std::move(out);
  return {};
}

// {"tenant": MiB, ...}: at most 4096 tenants (a node's Kubernetes namespaces).
Status tenantQuotasKey(const std::string& origin, const json& v, Config& c) {
  const char* why = "must be an object of tenant name -> MiB (1..2^30), at most 4096 entries";
  if (!v.is_object() || v.size() > 4096) return keyError(origin, "containerd_tenant_quotas_mib", why);
  std::map<std::string, uint64_t> out;
  for (const auto& [k, mib] : v.items()) {
    if (k.empty() || !mib.is_number_unsigned() || mib.get<uint64_t>() == 0 || mib.get<uint64_t>() > (uint64_t(1) << 30))
      return keyError(origin, "containerd_tenant_quotas_mib", why);
    out[k] = mib.get<uint64_t>();
  }
  c.containerd_tenant_quotas_mib = std::move(out);
  return {};
}

}  // namespace

bool Config::runtimeEnabled(const std::string& name) const {
  return std::find(runtimes.begin(), runtimes.end(), name) != runtimes.end();
}

Result<Config> parseConfig(const std::string& text, const std::string& origin) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (j.is_discarded()) return Error{EINVAL, "config " + origin + ": not valid JSON"};
  if (!j.is_object()) return Error{EINVAL, "config " + origin + ": must be a JSON object"};

  const std::map<std::string, Reader> readers = {
      {"listen_address", stringKey(origin, "listen_address", &Config::listen_address)},
      {"listen_port", uintKey(origin, "listen_port", &Config::listen_port, 1, 65535)},
      {"api_key", stringKey(origin, "api_key", &Config::api_key)},
      {"api_key_file", stringKey(origin, "api_key_file", &Config::api_key_file)},
      // 64 workers: handlers are short reads of memory and SQLite; more would
      // only contend on the store.
      {"http_threads", uintKey(origin, "http_threads", &Config::http_threads, 1, 64)},
      // 16: room for the master, probes and a few admins; 65536: each
      // connection costs a descriptor (LimitNOFILE) and up to 16 KiB of head.
      {"http_max_connections", uintKey(origin, "http_max_connections", &Config::http_max_connections, 16, 65536)},
      {"http_max_connections_per_peer",
       uintKey(origin, "http_max_connections_per_peer", &Config::http_max_connections_per_peer, 1, 65536)},
      // Below 1 s a loaded host's legitimate client could miss it; over 5 min a
      // slow client holds its slot that long.
      {"http_request_timeout_s", uintKey(origin, "http_request_timeout_s", &Config::http_request_timeout_s, 1, 300)},
      {"http_idle_timeout_s", uintKey(origin, "http_idle_timeout_s", &Config::http_idle_timeout_s, 1, 3600)},
      {"user_socket", stringKey(origin, "user_socket", &Config::user_socket, /*nonempty=*/false)},
      {"admission", stringKey(origin, "admission", &Config::admission)},
      {"admission_socket", stringKey(origin, "admission_socket", &Config::admission_socket)},
      // 1%: refuse almost at once (a host nearly full); 100%: at the limit.
      {"admission_share_percent",
       uintKey(origin, "admission_share_percent", &Config::admission_share_percent, 1, 100)},
      {"admission_fail_closed", boolKey(origin, "admission_fail_closed", &Config::admission_fail_closed)},
      // 10 ms: the probe's poll interval; 10 s: every judged request would wait
      // that long when the probe is down (Docker waits for the plugin).
      {"admission_match_timeout_ms",
       uintKey(origin, "admission_match_timeout_ms", &Config::admission_match_timeout_ms, 10, 10000)},
      {"docker_socket", stringKey(origin, "docker_socket", &Config::docker_socket)},
      {"watch_sockets", pathListKey(origin, "watch_sockets", &Config::watch_sockets)},
      {"docker_binaries", pathListKey(origin, "docker_binaries", &Config::docker_binaries)},
      {"runtime", [origin](const json& v, Config& c) { return runtimeKey(origin, v, c); }},
      {"containerd_address", stringKey(origin, "containerd_address", &Config::containerd_address)},
      {"containerd_namespaces", [origin](const json& v, Config& c) { return namespacesKey(origin, v, c); }},
      {"containerd_module", stringKey(origin, "containerd_module", &Config::containerd_module)},
      {"containerd_quotas", boolKey(origin, "containerd_quotas", &Config::containerd_quotas)},
      {"containerd_tenant_remove_newest",
       boolKey(origin, "containerd_tenant_remove_newest", &Config::containerd_tenant_remove_newest)},
      // 1 TiB in MiB: past any snapshot filesystem a node has; 0 = no limit.
      {"containerd_quota_default_mib",
       uintKey(origin, "containerd_quota_default_mib", &Config::containerd_quota_default_mib, 0, uint64_t(1) << 20)},
      {"containerd_limit_label", stringKey(origin, "containerd_limit_label", &Config::containerd_limit_label)},
      {"containerd_tenant_label", stringKey(origin, "containerd_tenant_label", &Config::containerd_tenant_label)},
      {"containerd_tenant_quota_mib",
       uintKey(origin, "containerd_tenant_quota_mib", &Config::containerd_tenant_quota_mib, 0, uint64_t(1) << 30)},
      {"containerd_tenant_quotas_mib", [origin](const json& v, Config& c) { return tenantQuotasKey(origin, v, c); }},
      {"database", stringKey(origin, "database", &Config::database)},
      {"capture_bytes", uintKey(origin, "capture_bytes", &Config::capture_bytes, 512, 4096)},
      {"ringbuf_kib", uintKey(origin, "ringbuf_kib", &Config::ringbuf_kib, 256, 1 << 20)},
      {"poll_interval_ms", uintKey(origin, "poll_interval_ms", &Config::poll_interval_ms, 1, 1000)},
      {"tracker_memory_mib", uintKey(origin, "tracker_memory_mib", &Config::tracker_memory_mib, 1, 4096)},
      {"probe_hook", stringKey(origin, "probe_hook", &Config::probe_hook)},
      {"bill_root_to_login_uid", boolKey(origin, "bill_root_to_login_uid", &Config::bill_root_to_login_uid)},
      // 100 ms: a busy host's ring drain and inspect still fit; 10 min: a miss is still news.
      {"missed_check_ms", uintKey(origin, "missed_check_ms", &Config::missed_check_ms, 100, 600000)},
      {"log_level", stringKey(origin, "log_level", &Config::log_level)},
      {"tls_cert_file", stringKey(origin, "tls_cert_file", &Config::tls_cert_file)},
      {"tls_key_file", stringKey(origin, "tls_key_file", &Config::tls_key_file)},
      {"docker_quota_enabled", boolKey(origin, "docker_quota_enabled", &Config::docker_quota_enabled)},
      // 2^62: sums with 9,000 users' limits still fit in 64 bits (saturating anyway).
      {"docker_quota_reserved_bytes",
       uintKey(origin, "docker_quota_reserved_bytes", &Config::docker_quota_reserved_bytes, 0, uint64_t(1) << 62)},
      {"docker_data_root", stringKey(origin, "docker_data_root", &Config::docker_data_root)},
      // Below 5 s the measurement (one /system/df) would run back to back on a big host.
      {"usage_interval_s", uintKey(origin, "usage_interval_s", &Config::usage_interval_s, 5, 86400)},
      {"default_apply_interval_s",
       uintKey(origin, "default_apply_interval_s", &Config::default_apply_interval_s, 10, 86400)},
      {"project_quotas", stringKey(origin, "project_quotas", &Config::project_quotas)},
      {"project_quota_mode", stringKey(origin, "project_quota_mode", &Config::project_quota_mode)},
      // Id 0 is "no project"; ids are 32-bit, (u32)-1 is reserved by the kernel.
      {"project_id_min", uintKey(origin, "project_id_min", &Config::project_id_min, 1, UINT32_MAX - 1)},
      {"project_id_max", uintKey(origin, "project_id_max", &Config::project_id_max, 1, UINT32_MAX - 1)},
      // 2^40 MiB = 1 EiB: beyond any filesystem, and * 2^20 still fits in 64 bits.
      {"container_quota_default_mib",
       uintKey(origin, "container_quota_default_mib", &Config::container_quota_default_mib, 0, uint64_t(1) << 40)},
      {"project_sync_interval_s", uintKey(origin, "project_sync_interval_s", &Config::project_sync_interval_s, 1, 3600)},
      {"growth_probe", boolKey(origin, "growth_probe", &Config::growth_probe)},
      {"growth_probe_hook", stringKey(origin, "growth_probe_hook", &Config::growth_probe_hook)},
      {"growth_signal_mib", uintKey(origin, "growth_signal_mib", &Config::growth_signal_mib, 1, 1u << 20)},
      {"block_quotas", stringKey(origin, "block_quotas", &Config::block_quotas)},
      {"block_quota_include", pathListKey(origin, "block_quota_include", &Config::block_quota_include)},
      {"block_quota_exclude", pathListKey(origin, "block_quota_exclude", &Config::block_quota_exclude)},
      // 1 s: a quotactl pass over 1,000 ids takes milliseconds; 1 h: the dashboard is that stale at worst.
      {"device_refresh_interval_s",
       uintKey(origin, "device_refresh_interval_s", &Config::device_refresh_interval_s, 1, 3600)},
      {"disk_notification_window_s",
       uintKey(origin, "disk_notification_window_s", &Config::disk_notification_window_s, 0, 365 * 86400)},
      {"enforcement", stringKey(origin, "enforcement", &Config::enforcement)},
      {"enforcement_order", stringKey(origin, "enforcement_order", &Config::enforcement_order)},
      {"enforcement_grace_s", uintKey(origin, "enforcement_grace_s", &Config::enforcement_grace_s, 0, 30 * 86400)},
      {"enforcement_stop_timeout_s",
       uintKey(origin, "enforcement_stop_timeout_s", &Config::enforcement_stop_timeout_s, 0, 3600)},
      {"enforcement_remove_volumes",
       boolKey(origin, "enforcement_remove_volumes", &Config::enforcement_remove_volumes)},
      {"enforcement_interval_s", uintKey(origin, "enforcement_interval_s", &Config::enforcement_interval_s, 1, 86400)},
      {"enforcement_exempt_users",
       [origin](const json& v, Config& c) -> Status {
         const char* why = "must be an array of user names or uids";
         if (!v.is_array()) return keyError(origin, "enforcement_exempt_users", why);
         for (const auto& e : v) {
           if (e.is_number_unsigned()) c.enforcement_exempt_users.push_back(std::to_string(e.get<uint64_t>()));
           else if (e.is_string() && !e.get<std::string>().empty()) c.enforcement_exempt_users.push_back(e.get<std::string>());
           else return keyError(origin, "enforcement_exempt_users", why);
         }
         return {};
       }},
      {"quota_warn_percent", uintKey(origin, "quota_warn_percent", &Config::quota_warn_percent, 1, 99)},
      {"event_retention_days", uintKey(origin, "event_retention_days", &Config::event_retention_days, 1, 3650)},
      {"host_id", stringKey(origin, "host_id", &Config::host_id)},
      {"master_url", stringKey(origin, "master_url", &Config::master_url, /*nonempty=*/false)},
      {"master_secret", stringKey(origin, "master_secret", &Config::master_secret)},
      {"master_secret_file", stringKey(origin, "master_secret_file", &Config::master_secret_file)},
      {"master_ca_file", stringKey(origin, "master_ca_file", &Config::master_ca_file)},
      {"smtp_url", stringKey(origin, "smtp_url", &Config::smtp_url, /*nonempty=*/false)},
      {"smtp_from", stringKey(origin, "smtp_from", &Config::smtp_from)},
      {"smtp_username", stringKey(origin, "smtp_username", &Config::smtp_username)},
      {"smtp_password_file", stringKey(origin, "smtp_password_file", &Config::smtp_password_file)},
      {"smtp_starttls", boolKey(origin, "smtp_starttls", &Config::smtp_starttls)},
      {"email_to", stringKey(origin, "email_to", &Config::email_to, /*nonempty=*/false)},
      {"email_addresses",
       [origin](const json& v, Config& c) -> Status {
         if (!v.is_object()) return keyError(origin, "email_addresses", "must be an object of user name -> address");
         for (const auto& [user, addr] : v.items()) {
           if (!addr.is_string() || addr.get<std::string>().find('@') == std::string::npos)
             return keyError(origin, "email_addresses", "the address of \"" + user + "\" must be a string with an @");
           c.email_addresses[user] = addr.get<std::string>();
         }
         return {};
       }},
      {"email_burst_s", uintKey(origin, "email_burst_s", &Config::email_burst_s, 0, 86400)},
      {"email_interval_s", uintKey(origin, "email_interval_s", &Config::email_interval_s, 0, 7 * 86400)},
      {"email_max_per_hour", uintKey(origin, "email_max_per_hour", &Config::email_max_per_hour, 1, 100000)},
      {"zfs", stringKey(origin, "zfs", &Config::zfs)},
      {"zfs_datasets",
       [origin](const json& v, Config& c) -> Status {
         // Checked here: a name is handed to the zfs CLI as an argument.
         const char* why = "must be an array of dataset names (pool/child, no '@', not starting with '-')";
         if (!v.is_array()) return keyError(origin, "zfs_datasets", why);
         for (const auto& e : v) {
           if (!e.is_string() || !validZfsDatasetName(e.get<std::string>())) return keyError(origin, "zfs_datasets", why);
           c.zfs_datasets.push_back(e.get<std::string>());
         }
         return {};
       }},
      {"zfs_exclude",
       [origin](const json& v, Config& c) -> Status {
         const char* why = "must be an array of non-empty patterns";
         if (!v.is_array()) return keyError(origin, "zfs_exclude", why);
         for (const auto& e : v) {
           if (!e.is_string() || e.get<std::string>().empty()) return keyError(origin, "zfs_exclude", why);
           c.zfs_exclude.push_back(e.get<std::string>());
         }
         return {};
       }},
      {"zfs_binary", stringKey(origin, "zfs_binary", &Config::zfs_binary)},
  };

  Config c;
  for (const auto& [key, value] : j.items()) {
    auto it = readers.find(key);
    if (it == readers.end()) return keyError(origin, key, "unknown key (see README.md, Configuration)");
    if (auto st = it->second(value, c); !st) return st.error();
  }

  if (j.contains("api_key") && j.contains("api_key_file")) {
    return keyError(origin, "api_key_file", "set either api_key or api_key_file, not both");
  }
  if (!c.api_key_file.empty()) {
    auto v = readSecret(origin, "api_key_file", c.api_key_file);
    if (!v) return v.error();
    c.api_key = *v;
  }
  if (c.http_max_connections_per_peer > c.http_max_connections) {
    return keyError(origin, "http_max_connections_per_peer", "must not be above http_max_connections");
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty()) {
    return keyError(origin, c.tls_cert_file.empty() ? "tls_cert_file" : "tls_key_file",
                    "set both tls_cert_file and tls_key_file, or neither");
  }
  for (const auto* key : {"tls_cert_file", "tls_key_file"}) {
    const std::string& file = std::string(key) == "tls_cert_file" ? c.tls_cert_file : c.tls_key_file;
    if (file.empty()) continue;
    std::ifstream f(file);
    if (!f) return keyError(origin, key, "cannot read " + file + ": " + std::strerror(errno));
  }
  // 107: sun_path's size on Linux, less its NUL.
  if (!c.user_socket.empty() && (c.user_socket[0] != '/' || c.user_socket.size() > 107)) {
    return keyError(origin, "user_socket", "must be an absolute path of at most 107 bytes, or \"\" for none");
  }
  if (c.admission_socket.empty() || c.admission_socket[0] != '/' || c.admission_socket.size() > 107) {
    return keyError(origin, "admission_socket", "must be an absolute path of at most 107 bytes");
  }
  if (auto err = oneOf(origin, "admission", c.admission, {"off", "on"})) return *err;
  // 107: sun_path, as user_socket.
  if (c.containerd_address[0] != '/' || c.containerd_address.size() > 107)
    return keyError(origin, "containerd_address", "must be an absolute socket path of at most 107 bytes");
  if (!c.containerd_module.empty() && c.containerd_module[0] != '/')
    return keyError(origin, "containerd_module", "must be an absolute path");
  if (!c.docker_data_root.empty() && c.docker_data_root[0] != '/') {
    return keyError(origin, "docker_data_root", "must be an absolute path");
  }
  const uint32_t kib = c.ringbuf_kib;
  if ((kib & (kib - 1)) != 0) return keyError(origin, "ringbuf_kib", "must be a power of two");
  if (c.watch_sockets.size() > 16) return keyError(origin, "watch_sockets", "at most 16 paths");
  if (c.docker_binaries.size() > 16) return keyError(origin, "docker_binaries", "at most 16 paths");
  for (auto err : {oneOf(origin, "probe_hook", c.probe_hook, hookChoices(DsockProbe::kHookSets)),
                   oneOf(origin, "growth_probe_hook", c.growth_probe_hook, hookChoices(GrowthProbe::kHookSets)),
                   oneOf(origin, "project_quotas", c.project_quotas, {"auto", "required", "off"}),
                   oneOf(origin, "project_quota_mode", c.project_quota_mode, {"user", "container"}),
                   oneOf(origin, "block_quotas", c.block_quotas, {"auto", "on", "off"})}) {
    if (err) return *err;
  }
  if (auto err = oneOf(origin, "zfs", c.zfs, {"off", "auto", "on"})) return *err;
  if (c.zfs_binary[0] != '/') return keyError(origin, "zfs_binary", "must be an absolute path");
  if (c.zfs_datasets.size() > 4096) return keyError(origin, "zfs_datasets", "at most 4096 datasets");
  if (c.zfs_exclude.size() > 256) return keyError(origin, "zfs_exclude", "at most 256 patterns");
  if (c.project_id_min > c.project_id_max) {
    return keyError(origin, "project_id_max", "must not be below project_id_min");
  }
  for (auto err : {oneOf(origin, "enforcement", c.enforcement, {"off", "dry-run", "enforce"}),
                   oneOf(origin, "enforcement_order", c.enforcement_order, {"newest", "oldest", "largest"})}) {
    if (err) return *err;
  }
  if (j.contains("master_secret") && j.contains("master_secret_file")) {
    return keyError(origin, "master_secret_file", "set either master_secret or master_secret_file, not both");
  }
  if (!c.master_secret_file.empty()) {
    auto v = readSecret(origin, "master_secret_file", c.master_secret_file);
    if (!v) return v.error();
    c.master_secret = *v;
  }
  if (!c.master_url.empty()) {
    if (c.master_url.rfind("http://", 0) != 0 && c.master_url.rfind("https://", 0) != 0)
      return keyError(origin, "master_url", "must start with http:// or https://");
    if (c.master_secret.empty())
      return keyError(origin, "master_url",
                      "needs master_secret or master_secret_file (the master's SLAVE_EVENT_SECRET)");
  }
  if (!c.smtp_password_file.empty()) {
    auto v = readSecret(origin, "smtp_password_file", c.smtp_password_file);
    if (!v) return v.error();
    c.smtp_password = *v;
  }
  if (!c.smtp_url.empty()) {
    if (c.smtp_url.rfind("smtp://", 0) != 0 && c.smtp_url.rfind("smtps://", 0) != 0)
      return keyError(origin, "smtp_url", "must start with smtp:// or smtps://");
    if (c.smtp_from.find('@') == std::string::npos)
      return keyError(origin, "smtp_from", "smtp_url needs a sender address with an @");
    if (c.email_to.empty() && c.email_addresses.empty())
      return keyError(origin, "smtp_url", "needs email_to (e.g. \"{user}@example.org\") or email_addresses");
  }
  if (!c.email_to.empty() && c.email_to.find('@') == std::string::npos) {
    return keyError(origin, "email_to", "must be an address template with an @, e.g. \"{user}@example.org\"");
  }
  if (c.host_id.empty()) {
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) == 0) c.host_id = host;
  }
  log::Level lvl;
  if (!log::parseLevel(c.log_level, &lvl)) {
    return keyError(origin, "log_level", "must be one of error, warning, notice, info, debug");
  }
  return c;
}

Result<Config> loadConfig(const std::string& path, bool optional) {
  std::ifstream f(path);
  if (!f) {
    if (optional && errno == ENOENT) return parseConfig("{}", "(defaults)");
    return osError(errno, "config: cannot read " + path);
  }
  std::stringstream ss;
  ss << f.rdbuf();
  return parseConfig(ss.str(), path);
}

}  // namespace dockquota
