// SPDX-License-Identifier: Apache-2.0
// The agent's one JSON config file. Every key is documented in README.md
// ("Configuration"); unknown keys and wrong types are refused with a message
// that names the key.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agent/base/result.h"

namespace dockquota {

struct Config {
  // HTTP
  std::string listen_address = "127.0.0.1";
  uint16_t listen_port = 8436;
  std::string api_key;       // resolved: from api_key or api_key_file
  std::string api_key_file;  // where it came from, if a file
  // The API server's transport (api/http_server.h; README "HTTP API").
  uint32_t http_threads = 4;                    // handler workers; slow clients never hold one
  uint32_t http_max_connections = 256;          // open connections in all
  uint32_t http_max_connections_per_peer = 32;  // per client IPv4 address / IPv6 /64
  uint32_t http_request_timeout_s = 10;         // a whole request head + body, from its first byte
  uint32_t http_idle_timeout_s = 5;             // keep-alive wait for the next request
  // The per-user socket (api/user_api.h; README "Users see their own quota"):
  // read-only, mode 0666, no key; "" = off.
  std::string user_socket = "/run/dockquota/user.sock";
  // Admission control (agent/admission, api/authz_plugin.h; README "Admission
  // control"): Docker's authorization plugin protocol on admission_socket.
  std::string admission = "off";  // off | on
  std::string admission_socket = "/run/docker/plugins/dockquota.sock";
  uint32_t admission_share_percent = 100;  // refuse at this share of a user's limit
  bool admission_fail_closed = false;      // refuse what cannot be paired with its sender
  uint32_t admission_match_timeout_ms = 500;
  // Docker
  std::string docker_socket = "/var/run/docker.sock";  // the agent's own API client
  std::vector<std::string> watch_sockets = {"/var/run/docker.sock", "/run/docker.sock"};
  std::vector<std::string> docker_binaries = {"/usr/bin/docker", "/usr/local/bin/docker"};
  // Container runtimes watched (README "containerd"): "docker", "containerd", or both.
  std::vector<std::string> runtimes = {"docker"};
  std::string containerd_address = "/run/containerd/containerd.sock";
  std::vector<std::string> containerd_namespaces = {"k8s.io"};
  std::string containerd_module;  // "" = $DOCKQUOTA_CONTAINERD_MODULE, else the installed module
  // containerd rootfs quotas (README "containerd quotas"): a project per
  // container (or per tenant) on its snapshot, from the project_id range.
  bool containerd_quotas = true;
  bool containerd_tenant_remove_newest = false;            // README "containerd quotas": off, the kubelet owns pods
  uint64_t containerd_quota_default_mib = 0;               // per container, 0 = accounted, no limit
  std::string containerd_limit_label = "dockquota.limit";  // a container's own limit ("10G", "512Mi")
  std::string containerd_tenant_label = "io.kubernetes.pod.namespace";
  uint64_t containerd_tenant_quota_mib = 0;                      // 0 = no tenant grouping
  std::map<std::string, uint64_t> containerd_tenant_quotas_mib;  // per-tenant overrides
  bool runtimeEnabled(const std::string& name) const;
  // Store
  std::string database = "/var/lib/dockquota/dockquota.db";
  // Probes
  uint32_t capture_bytes = 4096;
  uint32_t ringbuf_kib = 2048;  // mapped twice by the kernel: RSS grows by 2x this; 2048 lost nothing in
                                // tests/bench/ring_burst.py once downloads are muted (README Benchmark)
  uint32_t poll_interval_ms = 10;
  // All tracked docker.sock connections' buffers together (ConnTracker); over
  // it the connection holding the most is dropped from tracking, loudly.
  uint32_t tracker_memory_mib = 16;
  std::string probe_hook = "auto";  // docker.sock probe: auto | socket | fentry | tracepoint
  // Attribution
  bool bill_root_to_login_uid = true;
  // An object Docker created while the agent watched, still without
  // kernel evidence this long after Docker's create event, counts as missed.
  uint32_t missed_check_ms = 5000;
  // Logging
  std::string log_level = "info";
  // qman slave (/remote-api):
  //   tls_cert_file, tls_key_file   PEM paths; both set = serve HTTPS only (the API
  //                                 key travels in every request), neither = HTTP.
  //   docker_quota_enabled          false: no "docker" device, Docker pages answer
  //                                 400 "Docker quota not enabled on this host".
  //   docker_quota_reserved_bytes   qman DOCKER_QUOTA_RESERVED_BYTES: the device's
  //                                 usage.total when > 0 (bytes).
  //   docker_data_root              the device's mount point; "" = Docker's
  //                                 DockerRootDir, else /var/lib/docker.
  //   usage_interval_s              how often sizes are measured (Docker figures).
  //   default_apply_interval_s      qman QUOTA_DEFAULT_APPLY_INTERVAL_SECONDS.
  std::string tls_cert_file;
  std::string tls_key_file;
  bool docker_quota_enabled = true;
  uint64_t docker_quota_reserved_bytes = 0;
  std::string docker_data_root;
  uint32_t usage_interval_s = 60;
  uint32_t default_apply_interval_s = 600;
  // Kernel project quotas on Docker's storage (README "Project quotas").
  std::string project_quotas = "auto";      // auto | required | off
  std::string project_quota_mode = "user";  // user | container
  uint32_t project_id_min = 100000;         // ids we allocate from (inclusive)
  uint32_t project_id_max = 199999;
  uint64_t container_quota_default_mib = 0;  // per-container mode: default limit, 0 = none
  uint32_t project_sync_interval_s = 10;     // full re-check + usage read
  bool growth_probe = true;                  // live per-container layer growth (BPF)
  std::string growth_probe_hook = "auto";    // auto (fentry, else off) | fentry | tracepoint
  uint32_t growth_signal_mib = 16;           // a container writing this much in 1 s re-reads quotas at once
  // Block devices with user/group quotas (README "Block devices").
  std::string block_quotas = "auto";             // auto | on | off
  std::vector<std::string> block_quota_include;  // device names or mount points; empty = all
  std::vector<std::string> block_quota_exclude;
  uint32_t device_refresh_interval_s = 30;      // background re-read of every block/ZFS device
  uint32_t disk_notification_window_s = 86400;  // qman QUOTA_NOTIFICATION_GRACE_ALERT_WINDOW_SECONDS
  // Enforcement and notification (README "Enforcement").
  std::string enforcement = "dry-run";                // off | dry-run | enforce
  std::string enforcement_order = "newest";           // newest | oldest | largest
  uint32_t enforcement_grace_s = 300;                 // stop -> remove
  uint32_t enforcement_stop_timeout_s = 10;           // SIGTERM -> SIGKILL
  bool enforcement_remove_volumes = true;             // anonymous volumes of removed containers
  uint32_t enforcement_interval_s = 60;               // periodic sweep
  std::vector<std::string> enforcement_exempt_users;  // names or uids, as given
  uint32_t quota_warn_percent = 80;                   // warning event at this share of the limit
  uint32_t event_retention_days = 90;                 // delivered events are deleted after this
  std::string host_id;                                // qman SLAVE_HOST_ID; "" = hostname
  std::string master_url;                             // qman master base URL; "" = no push
  std::string master_secret;                          // resolved: master_secret or master_secret_file
  std::string master_secret_file;
  std::string master_ca_file;
  std::string smtp_url;  // "" = no mail
  std::string smtp_from;
  std::string smtp_username;
  std::string smtp_password;  // resolved from smtp_password_file
  std::string smtp_password_file;
  bool smtp_starttls = false;
  std::string email_to;                                // template: {user}, {uid}
  std::map<std::string, std::string> email_addresses;  // user name -> address (wins over email_to)
  uint32_t email_burst_s = 60;
  uint32_t email_interval_s = 900;
  uint32_t email_max_per_hour = 100;
  // ZFS datasets as qman quota devices (README "ZFS datasets").
  std::string zfs = "off";                // off | auto (when the binary and /dev/zfs exist) | on
  std::vector<std::string> zfs_datasets;  // exactly these; [] = every dataset `zfs list` shows
  std::vector<std::string> zfs_exclude;   // fnmatch(3) patterns on dataset names
  std::string zfs_binary = "/sbin/zfs";   // Debian's and Ubuntu's path (a link into /usr/sbin on merged /usr)
};

// Parses and validates; `origin` names the source in errors (the file path).
Result<Config> parseConfig(const std::string& text, const std::string& origin);
// Reads the file (missing file: an error unless `optional`, then defaults).
Result<Config> loadConfig(const std::string& path, bool optional = false);

}  // namespace dockquota
