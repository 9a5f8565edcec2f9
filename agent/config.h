// The agent's one JSON config file. Every key is documented in README.md
// ("Configuration"); unknown keys and wrong types are refused with a message
// that names the key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "agent/result.h"

namespace dockquota {

struct Config {
  // HTTP
  std::string listen_address = "127.0.0.1";
  uint16_t listen_port = 8436;
  std::string api_key;       // resolved: from api_key or api_key_file
  std::string api_key_file;  // where it came from, if a file
  // Docker
  std::string docker_socket = "/var/run/docker.sock";  // the agent's own API client
  std::vector<std::string> watch_sockets = {"/var/run/docker.sock", "/run/docker.sock"};
  std::vector<std::string> docker_binaries = {"/usr/bin/docker", "/usr/local/bin/docker"};
  // Store
  std::string database = "/var/lib/dockquota/dockquota.db";
  // Probes
  uint32_t capture_bytes = 4096;
  uint32_t ringbuf_kib = 8192;
  uint32_t poll_interval_ms = 10;
  // Attribution
  bool bill_root_to_login_uid = true;
  // Logging
  std::string log_level = "info";
};

// Parses and validates; `origin` names the source in errors (the file path).
Result<Config> parseConfig(const std::string& text, const std::string& origin);
// Reads the file (missing file: an error unless `optional`, then defaults).
Result<Config> loadConfig(const std::string& path, bool optional = false);

}  // namespace dockquota
