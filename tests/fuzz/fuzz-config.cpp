// SPDX-License-Identifier: Apache-2.0
// fuzz-config: parseConfig() (app/config.h) on the input as the config file's text.
//
// parseConfig reads the files some keys name (api_key_file, the TLS files, the
// secret files). An input naming a device or a kernel file (/dev/zero never
// ends) is not a finding: the config is written by root. Those inputs are skipped.
//
// Checked: a config that is accepted keeps the documented limits (README,
// Configuration), whatever the input.
#include <string>

#include "agent/quota/zfs_quota.h"
#include "app/config.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {

int config(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const char* dir : {"/dev", "/proc", "/sys"})
    if (text.find(dir) != std::string::npos) return -1;  // libFuzzer: do not add to the corpus
  auto c = parseConfig(text, "fuzz");
  if (!c) {
    DQ_FUZZ_CHECK(!c.error().message.empty());
    return 0;
  }
  DQ_FUZZ_CHECK(c->listen_port >= 1);
  DQ_FUZZ_CHECK(c->capture_bytes >= 512 && c->capture_bytes <= 4096);
  DQ_FUZZ_CHECK(c->ringbuf_kib >= 256 && c->ringbuf_kib <= (1u << 20));
  DQ_FUZZ_CHECK((c->ringbuf_kib & (c->ringbuf_kib - 1)) == 0);
  DQ_FUZZ_CHECK(c->poll_interval_ms >= 1 && c->poll_interval_ms <= 1000);
  DQ_FUZZ_CHECK(c->watch_sockets.size() <= 16 && c->docker_binaries.size() <= 16);
  DQ_FUZZ_CHECK(c->project_id_min >= 1 && c->project_id_min <= c->project_id_max);
  DQ_FUZZ_CHECK(c->docker_data_root.empty() || c->docker_data_root[0] == '/');
  DQ_FUZZ_CHECK(c->enforcement == "off" || c->enforcement == "dry-run" || c->enforcement == "enforce");
  DQ_FUZZ_CHECK(c->project_quota_mode == "user" || c->project_quota_mode == "container");
  DQ_FUZZ_CHECK(c->master_url.empty() || !c->master_secret.empty());
  DQ_FUZZ_CHECK(c->smtp_url.empty() || c->smtp_from.find('@') != std::string::npos);
  DQ_FUZZ_CHECK(c->api_key_file.empty() || !c->api_key.empty());
  DQ_FUZZ_CHECK(c->zfs == "off" || c->zfs == "auto" || c->zfs == "on");
  DQ_FUZZ_CHECK(!c->zfs_binary.empty() && c->zfs_binary[0] == '/');
  for (const auto& d : c->zfs_datasets) DQ_FUZZ_CHECK(validZfsDatasetName(d));
  return 0;
}

}  // namespace dockquota::fuzz
