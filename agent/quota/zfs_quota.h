// SPDX-License-Identifier: Apache-2.0
// ZFS datasets as quota devices (../shared/spec/qman-slave-devices.md §4):
// user quotas read with `zfs userspace -Hnp` and set with `zfs set
// userquota@UID=BYTES`, through the zfs CLI only. Its -H -p output (tabs,
// exact integers, numeric ids with -n) is the interface OpenZFS keeps
// stable; libzfs has no stable ABI and is not used.
//
// The parsers are pure functions over that output (fuzzed: tests/fuzz/
// fuzz-zfs-output.cpp). Running the CLI goes through ZfsCli (no shell, a
// deadline and an output cap per call), which a test replaces with canned
// output.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/subprocess.h"
#include "agent/quota/quota_device.h"

namespace dockquota {

// --- parsers of `zfs ... -H -p` output ----------------------------------------

// One row of `zfs list -H -p -o name,mountpoint,used,avail`.
struct ZfsListRow {
  std::string name;
  std::string mountpoint;  // a path, or "legacy"
  uint64_t used = 0;       // bytes, children and snapshots included
  uint64_t avail = 0;
};

// The rows a device is made of (spec §4.1): mountpoint empty, "-" (a zvol) or
// "none" dropped, "legacy" kept; lines that are not four tab-separated
// fields with integer sizes, or whose name is not a dataset name, skipped.
std::vector<ZfsListRow> parseZfsList(std::string_view text);

// `zfs userspace -H -n -p -o type,name,used,quota[,objused,objquota] -t
// posixuser`: one entry per "POSIX User" line (spec §4.2): block_current =
// used bytes, both block limits = quota bytes / 1024 (truncated, as qman's
// `//`), quota "-" or empty = 0, inode fields and times 0. Sorted by uid,
// one entry per uid (the first line of a repeated uid wins); lines that do
// not parse are skipped.
std::vector<QuotaFigures> parseZfsUserspace(std::string_view text);

// `zfs get -H -p -o value userused@UID,userquota@UID`: line 1 used, line 2
// quota (bytes; "-" or "none" = 0). nullopt unless exactly those two lines parse.
struct ZfsUserValues {
  uint64_t used = 0;
  uint64_t quota = 0;
};
std::optional<ZfsUserValues> parseZfsGetUser(std::string_view text);

// A name we pass to `zfs` as a dataset: pool/child components of
// [A-Za-z0-9_.:-] and spaces, no empty, "." or ".." component, not starting
// with '-' (it would read as an option), no '@' or '#' (snapshots,
// bookmarks), at most 255 bytes (ZFS_MAX_DATASET_NAME_LEN - 1).
bool validZfsDatasetName(std::string_view name);

// --- running the CLI -------------------------------------------------------------

// Time limits per call (qman's: list 30 s, one dataset 10 s, userspace 60 s, set 30 s).
struct ZfsTimeouts {
  std::chrono::milliseconds list{30000};
  std::chrono::milliseconds list_one{10000};
  std::chrono::milliseconds userspace{60000};
  std::chrono::milliseconds set{30000};
  std::chrono::milliseconds get{10000};
};

// Runs `zfs ARGS...`. The default runs the binary for real (runProgram); a
// test passes a function answering from canned output.
using ZfsExec = std::function<Result<RunOutput>(const std::vector<std::string>& args, std::chrono::milliseconds)>;
ZfsExec realZfsExec(std::string binary);

// Where a CLI failure is counted (exposed on /healthz; /metrics labels).
struct ZfsCounters {
  std::atomic<uint64_t> runs{0};
  std::atomic<uint64_t> failures{0};         // any call that did not give usable output
  std::atomic<uint64_t> binary_missing{0};   // the binary could not be started
  std::atomic<uint64_t> dataset_missing{0};  // a configured dataset is gone
};

class ZfsCli {
 public:
  ZfsCli(std::string binary, ZfsExec exec, ZfsTimeouts t = {});

  const std::string& binary() const { return binary_; }
  const ZfsTimeouts& timeouts() const { return timeouts_; }
  ZfsCounters& counters() { return counters_; }
  const ZfsCounters& counters() const { return counters_; }

  // Runs one command; a non-zero exit becomes an Error whose message is the
  // tool's stderr, else stdout, else `what` failed (spec §4.4's message).
  Result<std::string> run(const std::vector<std::string>& args, std::chrono::milliseconds timeout,
                          const std::string& what);

 private:
  std::string binary_;
  ZfsExec exec_;
  ZfsTimeouts timeouts_;
  ZfsCounters counters_;
};

// --- the devices -------------------------------------------------------------------

// One dataset (spec §4.1-4.4). Reads: `zfs list` of the dataset, then `zfs
// userspace`. A dataset that is gone (or a missing binary) is an error for
// read(), so the registry drops it from the list, and a degraded reason
// here until a read succeeds again.
class ZfsDataset : public QuotaDevice {
 public:
  ZfsDataset(std::string name, std::shared_ptr<ZfsCli> cli);

  const std::string& name() const override { return name_; }
  const char* kind() const override { return "zfs"; }
  bool singleLimit() const override { return true; }
  Result<DeviceSnapshot> read() override;
  Result<std::optional<QuotaFigures>> readUser(uint32_t uid) override;
  Status setUserLimits(uint32_t uid, const LimitsUpdate& u) override;
  Health health() const override;

 private:
  void noteResult(const Status& st);

  std::string name_;
  std::shared_ptr<ZfsCli> cli_;
  mutable std::mutex mu_;  // guards problem_
  std::string problem_;    // why the last read failed; "" = fine
};

// Which datasets are devices (config `zfs_datasets`, `zfs_exclude`).
struct ZfsSelection {
  bool discover = true;               // every dataset `zfs list` shows (spec §4.1, ZFS_DATASETS null)
  std::vector<std::string> datasets;  // else exactly these, in this order
  std::vector<std::string> exclude;   // fnmatch(3) patterns on the dataset name, e.g. "tank/scratch*"
};

// The ZFS backend: picks the datasets (re-discovered on every refresh when
// `discover`, since datasets come and go) and keeps one ZfsDataset per name.
class ZfsBackend {
 public:
  ZfsBackend(ZfsSelection sel, std::shared_ptr<ZfsCli> cli);

  // The datasets to serve now, in `zfs list` (or configured) order. An error
  // (no binary, `zfs list` failed) leaves the list empty and is reported by
  // health().
  std::vector<std::shared_ptr<ZfsDataset>> datasets();
  // Only the names (a registry with a fixed set of devices builds its own
  // ZfsDataset per name, once); same errors as datasets().
  std::vector<std::string> names();
  Health health() const;

 private:
  std::shared_ptr<ZfsDataset> datasetFor(const std::string& name);
  bool excluded(const std::string& name) const;

  ZfsSelection sel_;
  std::shared_ptr<ZfsCli> cli_;
  mutable std::mutex mu_;  // guards the fields below
  std::vector<std::shared_ptr<ZfsDataset>> known_;
  std::string problem_;  // why discovery failed; "" = fine
};

// Why this host cannot serve ZFS now ("" = it can): the binary is not
// executable, or the zfs module is not loaded (no /dev/zfs; every `zfs`
// call would fail). `dev_zfs` is a parameter for tests.
std::string zfsUnavailable(const std::string& binary, const std::string& dev_zfs = "/dev/zfs");

// /metrics lines for the CLI's counters (dockquota_zfs_cli_*), from ZfsBackend::health().report.
void promZfsCounters(std::string& out, const nlohmann::json& zfs_report);

}  // namespace dockquota
