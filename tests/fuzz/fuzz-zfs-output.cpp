// SPDX-License-Identifier: Apache-2.0
// fuzz-zfs-output: the parsers of the zfs CLI's -H -p output
// (agent/quota/zfs_quota.h) and a dataset's device built from it.
//
// Input: one byte choosing the parser (mod 4), then the text:
//   0  `zfs list -H -p -o name,mountpoint,used,avail` (parseZfsList), and the
//      same text as the one-dataset list a ZfsDataset reads
//   1  `zfs userspace -H -n -p -o type,name,used,quota[,objused,objquota]`
//      (parseZfsUserspace), and the same text as a ZfsDataset's userspace
//   2  `zfs get -H -p -o value userused@UID,userquota@UID` (parseZfsGetUser)
//   3  a dataset name (validZfsDatasetName)
//
// Checked: rows keep the spec's filter (a valid name, a mountpoint that is
// not empty, "-" or "none"); entries are sorted by uid, unique, with soft =
// hard and no inode or grace figures (ZFS has one limit); a device's usage
// is consistent (used + free = total unless saturated, percent in 0..100);
// an accepted name can never read as an option, snapshot or bookmark.
#include <string>

#include "agent/quota/zfs_quota.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {

namespace {

void checkList(const std::string& text) {
  for (const auto& r : parseZfsList(text)) {
    DQ_FUZZ_CHECK(validZfsDatasetName(r.name));
    DQ_FUZZ_CHECK(!r.mountpoint.empty() && r.mountpoint != "-" && r.mountpoint != "none");
    DQ_FUZZ_CHECK(r.mountpoint.find_first_of("\t\n") == std::string::npos);
  }
}

void checkEntries(const std::vector<QuotaFigures>& q) {
  for (size_t i = 0; i < q.size(); ++i) {
    DQ_FUZZ_CHECK(i == 0 || q[i - 1].id < q[i].id);
    DQ_FUZZ_CHECK(q[i].block_hard_kib == q[i].block_soft_kib);
    DQ_FUZZ_CHECK(q[i].inode_hard == 0 && q[i].inode_soft == 0 && q[i].inode_current == 0);
    DQ_FUZZ_CHECK(q[i].block_time == 0 && q[i].inode_time == 0);
  }
}

// A dataset "fz" whose `zfs list` or `zfs userspace` answers `text`.
void checkDevice(const std::string& text, bool as_list) {
  const std::string good_list = "fz\t/fz\t1\t1\n";
  auto cli = std::make_shared<ZfsCli>("zfs", [&](const std::vector<std::string>& args, std::chrono::milliseconds) {
    const bool list = !args.empty() && args[0] == "list";
    std::string out = list ? (as_list ? text : good_list) : (as_list ? "" : text);
    return Result<RunOutput>(RunOutput{0, 0, std::move(out), ""});
  });
  ZfsDataset d("fz", cli);
  auto s = d.read();
  DQ_FUZZ_CHECK(s.ok() == d.health().degraded.empty());
  if (!s) return;
  DQ_FUZZ_CHECK(s->users.on && s->users.format == std::optional<std::string>("zfs"));
  DQ_FUZZ_CHECK(s->usage.total == UINT64_MAX || s->usage.total == s->usage.used + s->usage.free);
  DQ_FUZZ_CHECK(s->usage.percent >= 0.0 && s->usage.percent <= 100.0);
  checkEntries(s->users.entries);
}

}  // namespace

int zfsOutput(const uint8_t* data, size_t size) {
  if (size == 0) return -1;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0:
      checkList(text);
      checkDevice(text, true);
      break;
    case 1:
      checkEntries(parseZfsUserspace(text));
      checkDevice(text, false);
      break;
    case 2:
      if (auto v = parseZfsGetUser(text)) DQ_FUZZ_CHECK(text.find('\n') != std::string::npos);
      break;
    default:
      if (validZfsDatasetName(text)) {
        DQ_FUZZ_CHECK(text.size() <= 255 && text[0] != '-');
        DQ_FUZZ_CHECK(text.find_first_of("@#\t\n\r") == std::string::npos);
      }
  }
  return 0;
}

std::string encodeZfsOutput(uint8_t kind, const std::string& text) { return std::string(1, char(kind)) + text; }

}  // namespace dockquota::fuzz
