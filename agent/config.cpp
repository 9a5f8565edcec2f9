#include "agent/config.h"

#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "agent/log.h"

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

}  // namespace

Result<Config> parseConfig(const std::string& text, const std::string& origin) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  if (j.is_discarded()) return Error{EINVAL, "config " + origin + ": not valid JSON"};
  if (!j.is_object()) return Error{EINVAL, "config " + origin + ": must be a JSON object"};

  const std::map<std::string, Reader> readers = {
      {"listen_address", stringKey(origin, "listen_address", &Config::listen_address)},
      {"listen_port", uintKey(origin, "listen_port", &Config::listen_port, 1, 65535)},
      {"api_key", stringKey(origin, "api_key", &Config::api_key)},
      {"api_key_file", stringKey(origin, "api_key_file", &Config::api_key_file)},
      {"docker_socket", stringKey(origin, "docker_socket", &Config::docker_socket)},
      {"watch_sockets", pathListKey(origin, "watch_sockets", &Config::watch_sockets)},
      {"docker_binaries", pathListKey(origin, "docker_binaries", &Config::docker_binaries)},
      {"database", stringKey(origin, "database", &Config::database)},
      {"capture_bytes", uintKey(origin, "capture_bytes", &Config::capture_bytes, 512, 4096)},
      {"ringbuf_kib", uintKey(origin, "ringbuf_kib", &Config::ringbuf_kib, 256, 1 << 20)},
      {"poll_interval_ms", uintKey(origin, "poll_interval_ms", &Config::poll_interval_ms, 1, 1000)},
      {"probe_hook", stringKey(origin, "probe_hook", &Config::probe_hook)},
      {"bill_root_to_login_uid", boolKey(origin, "bill_root_to_login_uid", &Config::bill_root_to_login_uid)},
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
      {"growth_signal_mib", uintKey(origin, "growth_signal_mib", &Config::growth_signal_mib, 1, 1u << 20)},
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
    std::ifstream f(c.api_key_file);
    if (!f) return keyError(origin, "api_key_file", "cannot read " + c.api_key_file + ": " + std::strerror(errno));
    std::stringstream ss;
    ss << f.rdbuf();
    c.api_key = trim(ss.str());
    if (c.api_key.empty()) return keyError(origin, "api_key_file", c.api_key_file + " is empty");
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
  if (!c.docker_data_root.empty() && c.docker_data_root[0] != '/') {
    return keyError(origin, "docker_data_root", "must be an absolute path");
  }
  const uint32_t kib = c.ringbuf_kib;
  if ((kib & (kib - 1)) != 0) return keyError(origin, "ringbuf_kib", "must be a power of two");
  if (c.watch_sockets.size() > 16) return keyError(origin, "watch_sockets", "at most 16 paths");
  if (c.docker_binaries.size() > 16) return keyError(origin, "docker_binaries", "at most 16 paths");
  if (c.probe_hook != "auto" && c.probe_hook != "fentry" && c.probe_hook != "tracepoint") {
    return keyError(origin, "probe_hook", "must be one of auto, fentry, tracepoint");
  }
  if (c.project_quotas != "auto" && c.project_quotas != "required" && c.project_quotas != "off") {
    return keyError(origin, "project_quotas", "must be one of auto, required, off");
  }
  if (c.project_quota_mode != "user" && c.project_quota_mode != "container") {
    return keyError(origin, "project_quota_mode", "must be one of user, container");
  }
  if (c.project_id_min > c.project_id_max) {
    return keyError(origin, "project_id_max", "must not be below project_id_min");
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
