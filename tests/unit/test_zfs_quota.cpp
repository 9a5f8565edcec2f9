// SPDX-License-Identifier: Apache-2.0
// The ZFS backend against the spec's documents
// (../shared/spec/qman-slave-devices.md §4, §6): the verified `zfs userspace`
// output, the example's tank/home device, the PUT's `zfs set`; and the
// process runner it uses (a real child each time).
#include <catch2/catch.hpp>

#include <map>

#include "agent/base/subprocess.h"
#include "agent/quota/zfs_quota.h"
#include "app/config.h"

using namespace dockquota;
using namespace std::chrono_literals;

namespace {

// §4.2's listing, verified on ZFS 2.1.11 with all six fields.
constexpr const char* kSpecUserspace =
    "POSIX User\t0\t1536\t0\t1\t0\n"
    "POSIX User\t1001\t3150848\t4194304\t6\t10\n"
    "POSIX User\t1003\t0\t2097152\t-\t-\n"
    "POSIX User\t70000\t68608\t0\t6\t0\n";

// Answers `zfs ARGS` from a table (args joined by spaces); records every call.
struct FakeZfs {
  std::map<std::string, RunOutput> answers;
  std::vector<std::string> calls;

  std::shared_ptr<ZfsCli> cli() {
    return std::make_shared<ZfsCli>("/sbin/zfs",
                                    [this](const std::vector<std::string>& args, std::chrono::milliseconds) {
                                      std::string key;
                                      for (auto& a : args) key += (key.empty() ? "" : " ") + a;
                                      calls.push_back(key);
                                      auto it = answers.find(key);
                                      if (it == answers.end())
                                        return Result<RunOutput>(RunOutput{1, 0, "", "unexpected call\n"});
                                      return Result<RunOutput>(it->second);
                                    });
  }
};

RunOutput ok(std::string out) { return RunOutput{0, 0, std::move(out), ""}; }

const std::string kListHome = "list -H -p -o name,mountpoint,used,avail tank/home";
const std::string kUsersHome = "userspace -H -n -p -o type,name,used,quota -t posixuser tank/home";

}  // namespace

TEST_CASE("zfs: userspace output of the spec, in the wire's units", "[zfs]") {
  auto q = parseZfsUserspace(kSpecUserspace);
  REQUIRE(q.size() == 4);
  CHECK(q[0] == QuotaFigures{0, 0, 0, 1536, 0, 0, 0, 0, 0});
  // quota bytes // 1024 in both block limits; inode fields stay 0 (qman's shape).
  CHECK(q[1] == QuotaFigures{1001, 4096, 4096, 3150848, 0, 0, 0, 0, 0});
  CHECK(q[2] == QuotaFigures{1003, 2048, 2048, 0, 0, 0, 0, 0, 0});
  CHECK(q[3] == QuotaFigures{70000, 0, 0, 68608, 0, 0, 0, 0, 0});
  // qman's four columns parse the same.
  auto four = parseZfsUserspace("POSIX User\t1001\t3150848\t4194304\n");
  REQUIRE(four.size() == 1);
  CHECK(four[0] == q[1]);
}

TEST_CASE("zfs: userspace lines that do not parse are skipped, a uid listed twice once", "[zfs]") {
  auto q = parseZfsUserspace(
      "POSIX Group\t1001\t1\t0\n"         // not a user
      "SMB User\tS-1-5-21\t1\t0\n"        // not numeric
      "POSIX User\talice\t1\t0\n"         // a name: -n was not honoured
      "POSIX User\t1001\t12K\t0\n"        // not -p
      "POSIX User\t-1\t1\t0\n"            // a sign
      "POSIX User\t4294967296\t1\t0\n"    // beyond uid_t
      "POSIX User\t1002\t1\t0\textra\n"   // five fields
      "POSIX User\t1004\t5120\t1025\r\n"  // CRLF; 1025 bytes = 1 KiB, truncated as qman's //
      "POSIX User\t1004\t1\t1\n"          // the same uid again: the first wins
      "POSIX User\t1003\t7\t-");          // no final newline, quota "-" = 0
  REQUIRE(q.size() == 2);
  CHECK(q[0] == QuotaFigures{1003, 0, 0, 7, 0, 0, 0, 0, 0});
  CHECK(q[1] == QuotaFigures{1004, 1, 1, 5120, 0, 0, 0, 0, 0});
}

TEST_CASE("zfs: list rows as the spec filters them", "[zfs]") {
  auto rows = parseZfsList(
      "tank\t/tank\t100\t900\n"
      "tank/home\t/tank/home\t322122547200\t751619276800\n"
      "tank/legacy\tlegacy\t1\t2\n"
      "tank/nomount\tnone\t1\t2\n"
      "tank/vol\t-\t1\t2\n"
      "tank/empty\t\t1\t2\n"
      "-o\t/x\t1\t2\n"
      "tank/bad\t/b\tx\t2\n");
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].name == "tank");
  CHECK(rows[1].mountpoint == "/tank/home");
  CHECK(rows[1].used == 322122547200);
  CHECK(rows[2].mountpoint == "legacy");
}

TEST_CASE("zfs: dataset names passed to the CLI", "[zfs]") {
  CHECK(validZfsDatasetName("tank"));
  CHECK(validZfsDatasetName("tank/home"));
  CHECK(validZfsDatasetName("rpool/ROOT/debian_1.0:x-y"));
  CHECK(validZfsDatasetName("tank/my data"));
  CHECK_FALSE(validZfsDatasetName(""));
  CHECK_FALSE(validZfsDatasetName("-o"));
  CHECK_FALSE(validZfsDatasetName("/dev/sda1"));
  CHECK_FALSE(validZfsDatasetName("tank/"));
  CHECK_FALSE(validZfsDatasetName("tank//home"));
  CHECK_FALSE(validZfsDatasetName("tank/../etc"));
  CHECK_FALSE(validZfsDatasetName("tank/home@snap"));
  CHECK_FALSE(validZfsDatasetName("tank/home#mark"));
  CHECK_FALSE(validZfsDatasetName("tank\thome"));
  CHECK_FALSE(validZfsDatasetName(std::string(256, 'a')));
}

TEST_CASE("zfs: get userused/userquota", "[zfs]") {
  auto v = parseZfsGetUser("1073741824\n21474836480\n");
  REQUIRE(v);
  CHECK(v->used == 1073741824);
  CHECK(v->quota == 21474836480);
  CHECK(parseZfsGetUser("0\n0\n")->quota == 0);
  CHECK_FALSE(parseZfsGetUser("1\n"));
  CHECK_FALSE(parseZfsGetUser("1\n2\n3\n"));
  CHECK_FALSE(parseZfsGetUser("1G\n2\n"));
}

TEST_CASE("zfs: the spec's tank/home device (§6)", "[zfs]") {
  FakeZfs z;
  z.answers[kListHome] = ok("tank/home\t/tank/home\t322122547200\t751619276800\n");
  z.answers[kUsersHome] = ok("POSIX User\t1002\t1073741824\t0\n");
  ZfsDataset d("tank/home", z.cli());
  auto s = d.read();
  REQUIRE(s.ok());
  CHECK(s->name == "tank/home");
  CHECK(s->mount_points == std::vector<std::string>{"/tank/home"});
  CHECK(s->fstype == "zfs");
  CHECK(s->opts == std::vector<std::string>{"zfs"});
  CHECK(s->usage.total == 1073741824000);
  CHECK(s->usage.used == 322122547200);
  CHECK(s->usage.free == 751619276800);
  CHECK(s->usage.percent == 30.0);
  CHECK(s->users.on);
  CHECK(s->users.format == std::optional<std::string>("zfs"));
  CHECK_FALSE(s->users.info);
  CHECK_FALSE(s->groups.on);
  CHECK(s->rule == ListRule::kAllIds);
  CHECK(s->drop_when_empty);
  REQUIRE(s->users.entries.size() == 1);
  CHECK(s->users.entries[0] == QuotaFigures{1002, 0, 0, 1073741824, 0, 0, 0, 0, 0});
  CHECK(d.health().degraded.empty());
  CHECK(d.singleLimit());
}

TEST_CASE("zfs: the spec's PUT on tank/home runs zfs set with bytes, and reads bob back", "[zfs]") {
  FakeZfs z;
  z.answers["set userquota@1002=21474836480 tank/home"] = ok("");
  z.answers["get -H -p -o value userused@1002,userquota@1002 tank/home"] = ok("1073741824\n21474836480\n");
  ZfsDataset d("tank/home", z.cli());
  LimitsUpdate u;
  u.block_hard_kib = 20971520;
  u.block_soft_kib = 20971520;
  u.inode_hard = 0;
  REQUIRE(d.setUserLimits(1002, u).ok());
  auto q = d.readUser(1002);
  REQUIRE(q.ok());
  REQUIRE(q->has_value());
  CHECK(**q == QuotaFigures{1002, 20971520, 20971520, 1073741824, 0, 0, 0, 0, 0});
  CHECK(z.calls == std::vector<std::string>{"set userquota@1002=21474836480 tank/home",
                                            "get -H -p -o value userused@1002,userquota@1002 tank/home"});
}

TEST_CASE("zfs: set keeps the quota when the hard limit is absent; 0 removes it; errors carry zfs's words", "[zfs]") {
  FakeZfs z;
  z.answers["set userquota@1001=0 tank/home"] = ok("");
  z.answers["set userquota@1001=1024 tank/gone"] =
      RunOutput{1, 0, "", "cannot open 'tank/gone': dataset does not exist\n"};
  z.answers["get -H -p -o value userused@1001,userquota@1001 tank/home"] = ok("0\n0\n");
  ZfsDataset home("tank/home", z.cli());
  LimitsUpdate soft_only;
  soft_only.block_soft_kib = 5;
  REQUIRE(home.setUserLimits(1001, soft_only).ok());
  CHECK(z.calls.empty());
  LimitsUpdate zero;
  zero.block_hard_kib = 0;
  REQUIRE(home.setUserLimits(1001, zero).ok());
  // No usage and no quota: not listed, so no entry.
  auto q = home.readUser(1001);
  REQUIRE(q.ok());
  CHECK_FALSE(q->has_value());
  ZfsDataset gone("tank/gone", z.cli());
  LimitsUpdate one;
  one.block_hard_kib = 1;
  auto st = gone.setUserLimits(1001, one);
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().message == "cannot open 'tank/gone': dataset does not exist");
  LimitsUpdate huge;
  huge.block_hard_kib = UINT64_MAX / 1024 + 1;
  CHECK_FALSE(home.setUserLimits(1001, huge).ok());
}

TEST_CASE("zfs: a dataset that is gone is an error and a degraded reason until it is back", "[zfs]") {
  FakeZfs z;
  z.answers[kListHome] = RunOutput{1, 0, "", "cannot open 'tank/home': dataset does not exist\n"};
  auto cli = z.cli();
  ZfsDataset d("tank/home", cli);
  auto s = d.read();
  REQUIRE_FALSE(s.ok());
  CHECK(s.error().message == "zfs: dataset tank/home: cannot open 'tank/home': dataset does not exist");
  REQUIRE(d.health().degraded.size() == 1);
  CHECK(cli->counters().dataset_missing == 1);
  z.answers[kListHome] = ok("tank/home\t/tank/home\t1\t1\n");
  z.answers[kUsersHome] = ok("");
  REQUIRE(d.read().ok());
  CHECK(d.health().degraded.empty());
}

TEST_CASE("zfs: a zvol named as a dataset is not a device", "[zfs]") {
  FakeZfs z;
  z.answers["list -H -p -o name,mountpoint,used,avail tank/vol"] = ok("tank/vol\t-\t1\t2\n");
  ZfsDataset d("tank/vol", z.cli());
  CHECK_FALSE(d.read().ok());
  CHECK(d.health().degraded.size() == 1);
}

TEST_CASE("zfs: discovery, exclusion, and a missing binary reported loudly", "[zfs]") {
  FakeZfs z;
  z.answers["list -t filesystem -H -p -o name,mountpoint,used,avail"] =
      ok("tank\t/tank\t1\t2\ntank/home\t/tank/home\t1\t2\ntank/scratch\t/s\t1\t2\ntank/vol\t-\t1\t2\n");
  ZfsBackend b(ZfsSelection{true, {}, {"tank/scratch*"}}, z.cli());
  auto ds = b.datasets();
  REQUIRE(ds.size() == 2);
  CHECK(ds[0]->name() == "tank");
  CHECK(ds[1]->name() == "tank/home");
  CHECK(b.datasets()[1] == ds[1]);  // the same object across refreshes
  CHECK(b.names() == std::vector<std::string>{"tank", "tank/home"});
  CHECK(b.health().degraded.empty());

  ZfsBackend configured(ZfsSelection{false, {"tank/home", "tank/scratch"}, {"tank/scratch"}}, z.cli());
  auto cds = configured.datasets();
  REQUIRE(cds.size() == 1);
  CHECK(cds[0]->name() == "tank/home");

  auto missing = std::make_shared<ZfsCli>("/nonexistent/zfs", realZfsExec("/nonexistent/zfs"));
  ZfsBackend none(ZfsSelection{}, missing);
  CHECK(none.datasets().empty());
  auto h = none.health();
  REQUIRE(h.degraded.size() == 1);
  CHECK(h.degraded[0] == "zfs: cannot run /nonexistent/zfs: No such file or directory");
  CHECK(h.report["binary_missing"] == 1);
}

TEST_CASE("runProgram: argv without a shell, exit codes, stderr, deadline, output cap", "[zfs][subprocess]") {
  auto r = runProgram({"/bin/sh", "-c", "printf 'a;b $x'; echo err >&2; exit 3", "ignored"}, RunLimits{});
  REQUIRE(r.ok());
  CHECK(r->exit_code == 3);
  CHECK(r->out == "a;b $x");
  CHECK(r->err == "err\n");
  // An argument with shell syntax arrives as one verbatim argument.
  auto echo = runProgram({"printf", "%s", "$(id); rm -rf /"}, RunLimits{});
  REQUIRE(echo.ok());
  CHECK(echo->out == "$(id); rm -rf /");
  auto env = runProgram({"/bin/sh", "-c", "echo $LC_ALL"}, RunLimits{});
  REQUIRE(env.ok());
  CHECK(env->out == "C\n");
  auto missing = runProgram({"/nonexistent/zfs"}, RunLimits{});
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == ENOENT);
  auto t0 = std::chrono::steady_clock::now();
  auto slow = runProgram({"sleep", "10"}, RunLimits{200ms, 1024});
  REQUIRE_FALSE(slow.ok());
  CHECK(slow.error().code == ETIMEDOUT);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  auto loud = runProgram({"yes"}, RunLimits{10s, 1 << 20});
  REQUIRE_FALSE(loud.ok());
  CHECK(loud.error().code == EFBIG);
}

TEST_CASE("zfs: config keys", "[zfs][config]") {
  auto d = parseConfig("{}", "t.json");
  REQUIRE(d.ok());
  CHECK(d->zfs == "off");
  CHECK(d->zfs_datasets.empty());
  CHECK(d->zfs_binary == "/sbin/zfs");
  auto c = parseConfig(R"({"zfs": "on", "zfs_datasets": ["tank/home", "backup"], "zfs_exclude": ["tank/tmp*"],
                           "zfs_binary": "/usr/local/sbin/zfs"})",
                       "t.json");
  REQUIRE(c.ok());
  CHECK(c->zfs == "on");
  CHECK(c->zfs_datasets == std::vector<std::string>{"tank/home", "backup"});
  CHECK(c->zfs_exclude == std::vector<std::string>{"tank/tmp*"});
  CHECK(c->zfs_binary == "/usr/local/sbin/zfs");
  for (const char* bad : {R"({"zfs": "yes"})", R"({"zfs_datasets": ["-o"]})", R"({"zfs_datasets": ["tank@snap"]})",
                          R"({"zfs_datasets": "tank"})", R"({"zfs_exclude": [""]})", R"({"zfs_binary": "zfs"})"}) {
    auto r = parseConfig(bad, "t.json");
    INFO(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find("zfs") != std::string::npos);
  }
}

TEST_CASE("zfs: a host without the binary or the module is unavailable, and says why", "[zfs]") {
  CHECK(zfsUnavailable("/nonexistent/zfs") == "cannot run /nonexistent/zfs: No such file or directory");
  CHECK(zfsUnavailable("/bin/sh", "/nonexistent/zfs-dev") ==
        "/nonexistent/zfs-dev missing (the zfs module is not loaded)");
  CHECK(zfsUnavailable("/bin/sh", "/dev/null").empty());
}

TEST_CASE("zfs: CLI counters in /metrics", "[zfs]") {
  std::string out;
  promZfsCounters(out, nlohmann::json{{"runs", 7}, {"failures", 4}, {"binary_missing", 1}, {"dataset_missing", 2}});
  CHECK(out.find("dockquota_zfs_cli_runs_total 7\n") != std::string::npos);
  CHECK(out.find("dockquota_zfs_cli_failures_total{reason=\"binary_missing\"} 1\n") != std::string::npos);
  CHECK(out.find("dockquota_zfs_cli_failures_total{reason=\"dataset_missing\"} 2\n") != std::string::npos);
  CHECK(out.find("dockquota_zfs_cli_failures_total{reason=\"other\"} 1\n") != std::string::npos);
}
