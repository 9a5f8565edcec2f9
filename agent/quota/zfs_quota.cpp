// SPDX-License-Identifier: Apache-2.0
#include "agent/quota/zfs_quota.h"

#include <fnmatch.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>

#include "agent/base/log.h"

namespace dockquota {

namespace {

// Splits on '\t' (-H output: one tab between fields, no padding).
std::vector<std::string_view> fields(std::string_view line) {
  std::vector<std::string_view> f;
  size_t start = 0;
  for (;;) {
    size_t tab = line.find('\t', start);
    f.push_back(line.substr(start, tab == std::string_view::npos ? tab : tab - start));
    if (tab == std::string_view::npos) return f;
    start = tab + 1;
  }
}

// Calls fn(line) for each line, without its '\n' (and a '\r' before it).
template <typename Fn>
void eachLine(std::string_view text, Fn fn) {
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(line);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
}

// A decimal integer, the whole field, no sign (what -p prints).
template <typename T>
std::optional<T> number(std::string_view s) {
  T v{};
  if (s.empty() || s.front() < '0' || s.front() > '9') return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// A size field where "-" or "" (no value: objused of an id without objects,
// quota of an id without one) and "none" mean 0.
std::optional<uint64_t> sizeOrZero(std::string_view s) {
  if (s.empty() || s == "-" || s == "none") return uint64_t(0);
  return number<uint64_t>(s);
}

bool validComponent(std::string_view c) {
  if (c.empty() || c == "." || c == "..") return false;
  return std::all_of(c.begin(), c.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' || ch == '-' ||
           ch == '.' || ch == ':' || ch == ' ';
  });
}

// The tool's own words for a failed call, one line.
std::string failureText(const RunOutput& o, const std::string& what) {
  std::string msg = !o.err.empty() ? o.err : !o.out.empty() ? o.out : what + " failed";
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
  return msg;
}

double percentOf(uint64_t used, uint64_t total) {
  if (total == 0) return 0.0;
  return std::round(double(used) / double(total) * 1000.0) / 10.0;
}

}  // namespace

std::vector<ZfsListRow> parseZfsList(std::string_view text) {
  std::vector<ZfsListRow> rows;
  eachLine(text, [&](std::string_view line) {
    auto f = fields(line);
    if (f.size() != 4 || !validZfsDatasetName(f[0])) return;
    auto used = number<uint64_t>(f[2]);
    auto avail = number<uint64_t>(f[3]);
    if (!used || !avail) return;
    if (f[1].empty() || f[1] == "-" || f[1] == "none") return;
    rows.push_back(ZfsListRow{std::string(f[0]), std::string(f[1]), *used, *avail});
  });
  return rows;
}

std::vector<QuotaFigures> parseZfsUserspace(std::string_view text) {
  std::map<uint32_t, QuotaFigures> by_uid;
  eachLine(text, [&](std::string_view line) {
    auto f = fields(line);
    if ((f.size() != 4 && f.size() != 6) || f[0] != "POSIX User") return;
    auto uid = number<uint32_t>(f[1]);
    auto used = number<uint64_t>(f[2]);
    auto quota = sizeOrZero(f[3]);
    if (!uid || !used || !quota) return;
    if (f.size() == 6 && (!sizeOrZero(f[4]) || !sizeOrZero(f[5]))) return;
    QuotaFigures q;
    q.id = *uid;
    q.block_current = *used;
    q.block_hard_kib = q.block_soft_kib = *quota / 1024;
    by_uid.emplace(*uid, q);  // the first line of a uid wins
  });
  std::vector<QuotaFigures> out;
  out.reserve(by_uid.size());
  for (auto& [uid, q] : by_uid) out.push_back(q);
  return out;
}

std::optional<ZfsUserValues> parseZfsGetUser(std::string_view text) {
  std::vector<std::string_view> lines;
  eachLine(text, [&](std::string_view line) { lines.push_back(line); });
  if (lines.size() != 2) return std::nullopt;
  auto used = sizeOrZero(lines[0]);
  auto quota = sizeOrZero(lines[1]);
  if (!used || !quota) return std::nullopt;
  return ZfsUserValues{*used, *quota};
}

bool validZfsDatasetName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '-') return false;
  size_t start = 0;
  for (;;) {
    size_t slash = name.find('/', start);
    if (!validComponent(name.substr(start, slash == std::string_view::npos ? slash : slash - start))) return false;
    if (slash == std::string_view::npos) return true;
    start = slash + 1;
  }
}

ZfsExec realZfsExec(std::string binary) {
  return [binary = std::move(binary)](const std::vector<std::string>& args, std::chrono::milliseconds timeout) {
    std::vector<std::string> argv{binary};
    argv.insert(argv.end(), args.begin(), args.end());
    // Listings of big pools stay far below 64 MiB (about 60 bytes per id).
    return runProgram(argv, RunLimits{timeout, size_t(64) << 20});
  };
}

ZfsCli::ZfsCli(std::string binary, ZfsExec exec, ZfsTimeouts t)
    : binary_(std::move(binary)), exec_(std::move(exec)), timeouts_(t) {}

Result<std::string> ZfsCli::run(const std::vector<std::string>& args, std::chrono::milliseconds timeout,
                                const std::string& what) {
  counters_.runs++;
  auto r = exec_(args, timeout);
  if (!r) {
    counters_.failures++;
    if (r.error().code == ENOENT || r.error().code == EACCES) {
      counters_.binary_missing++;
      return Error{r.error().code, "zfs: cannot run " + binary_ + ": " + std::strerror(r.error().code)};
    }
    return r.error().context("zfs: " + what);
  }
  if (r->exit_code != 0) {
    counters_.failures++;
    return Error{0, failureText(*r, what)};
  }
  return std::move(r->out);
}

// --- ZfsDataset ----------------------------------------------------------------------

ZfsDataset::ZfsDataset(std::string name, std::shared_ptr<ZfsCli> cli) : name_(std::move(name)), cli_(std::move(cli)) {}

void ZfsDataset::noteResult(const Status& st) {
  std::string now = st ? std::string() : st.error().message;
  std::lock_guard lk(mu_);
  // Once per change, not once per refresh.
  if (now != problem_ && !now.empty()) LOG_WARN("zfs", "%s", now.c_str());
  if (now.empty() && !problem_.empty()) LOG_NOTICE("zfs", "dataset %s readable again", name_.c_str());
  problem_ = std::move(now);
}

Result<DeviceSnapshot> ZfsDataset::read() {
  auto listed = cli_->run({"list", "-H", "-p", "-o", "name,mountpoint,used,avail", name_}, cli_->timeouts().list_one,
                          "zfs list " + name_);
  if (!listed) {
    // "cannot open 'tank/x': dataset does not exist": gone since configured.
    if (listed.error().message.find("does not exist") != std::string::npos) cli_->counters().dataset_missing++;
    Error e = listed.error().context("zfs: dataset " + name_);
    noteResult(e);
    return e;
  }
  auto rows = parseZfsList(*listed);
  if (rows.size() != 1 || rows[0].name != name_) {
    // A zvol (mountpoint "-") or unreadable output: not a device.
    Error e{0, "zfs: dataset " + name_ + ": not a filesystem with a mountpoint"};
    noteResult(e);
    return e;
  }
  auto users = cli_->run({"userspace", "-H", "-n", "-p", "-o", "type,name,used,quota", "-t", "posixuser", name_},
                         cli_->timeouts().userspace, "zfs userspace " + name_);
  if (!users) {
    Error e = users.error().context("zfs: dataset " + name_);
    noteResult(e);
    return e;
  }
  noteResult({});
  DeviceSnapshot s;
  s.name = name_;
  s.mount_points = {rows[0].mountpoint};
  s.fstype = "zfs";
  s.opts = {"zfs"};
  s.usage.used = rows[0].used;
  s.usage.free = rows[0].avail;
  // Saturated: two sizes near 2^64 from a broken tool must not wrap to a small total.
  s.usage.total = rows[0].avail > UINT64_MAX - rows[0].used ? UINT64_MAX : rows[0].used + rows[0].avail;
  s.usage.percent = percentOf(s.usage.used, s.usage.total);
  s.users.on = true;
  s.users.format = "zfs";
  s.users.entries = parseZfsUserspace(*users);
  s.rule = ListRule::kAllIds;
  s.drop_when_empty = true;
  return s;
}

Result<std::optional<QuotaFigures>> ZfsDataset::readUser(uint32_t uid) {
  const std::string id = std::to_string(uid);
  auto got = cli_->run({"get", "-H", "-p", "-o", "value", "userused@" + id + ",userquota@" + id, name_},
                       cli_->timeouts().get, "zfs get userquota");
  if (!got) return got.error().context("zfs: dataset " + name_);
  auto v = parseZfsGetUser(*got);
  if (!v) return Error{0, "zfs: dataset " + name_ + ": unreadable `zfs get` output for uid " + id};
  // No usage and no quota: `zfs userspace` does not list the id either.
  if (v->used == 0 && v->quota == 0) return std::optional<QuotaFigures>();
  QuotaFigures q;
  q.id = uid;
  q.block_current = v->used;
  q.block_hard_kib = q.block_soft_kib = v->quota / 1024;
  return std::optional<QuotaFigures>(q);
}

Status ZfsDataset::setUserLimits(uint32_t uid, const LimitsUpdate& u) {
  // ZFS has one limit: the hard one (soft and inode fields are ignored, spec
  // §4.4); an absent hard limit keeps the current quota.
  if (!u.block_hard_kib) return {};
  if (*u.block_hard_kib > UINT64_MAX / 1024) return Error{ERANGE, "zfs: block_hard_limit out of range"};
  const std::string arg = "userquota@" + std::to_string(uid) + "=" + std::to_string(*u.block_hard_kib * 1024);
  auto r = cli_->run({"set", arg, name_}, cli_->timeouts().set, "zfs set userquota");
  if (!r) return r.error();
  return {};
}

Health ZfsDataset::health() const {
  Health h;
  std::lock_guard lk(mu_);
  h.report = {{"dataset", name_}, {"ok", problem_.empty()}};
  if (!problem_.empty()) {
    h.report["error"] = problem_;
    h.degraded.push_back(problem_);
  }
  return h;
}

// --- ZfsBackend ----------------------------------------------------------------------

ZfsBackend::ZfsBackend(ZfsSelection sel, std::shared_ptr<ZfsCli> cli) : sel_(std::move(sel)), cli_(std::move(cli)) {}

bool ZfsBackend::excluded(const std::string& name) const {
  return std::any_of(sel_.exclude.begin(), sel_.exclude.end(),
                     [&](const std::string& p) { return ::fnmatch(p.c_str(), name.c_str(), 0) == 0; });
}

std::vector<std::string> ZfsBackend::names() {
  std::vector<std::string> names;
  std::string problem;
  if (!sel_.discover) {
    names = sel_.datasets;
  } else {
    auto listed = cli_->run({"list", "-t", "filesystem", "-H", "-p", "-o", "name,mountpoint,used,avail"},
                            cli_->timeouts().list, "zfs list");
    if (listed) {
      for (auto& row : parseZfsList(*listed)) names.push_back(row.name);
    } else {
      problem = listed.error().message;
    }
  }
  std::erase_if(names, [&](const std::string& n) { return excluded(n); });
  std::lock_guard lk(mu_);
  if (problem != problem_ && !problem.empty()) LOG_WARN("zfs", "discovery failed: %s", problem.c_str());
  problem_ = problem;
  return names;
}

std::shared_ptr<ZfsDataset> ZfsBackend::datasetFor(const std::string& name) {
  for (auto& d : known_)
    if (d->name() == name) return d;
  return std::make_shared<ZfsDataset>(name, cli_);
}

std::vector<std::shared_ptr<ZfsDataset>> ZfsBackend::datasets() {
  auto wanted = names();
  std::lock_guard lk(mu_);
  std::vector<std::shared_ptr<ZfsDataset>> now;
  for (auto& n : wanted) now.push_back(datasetFor(n));
  known_ = now;
  return now;
}

Health ZfsBackend::health() const {
  Health h;
  const auto& c = cli_->counters();
  h.report = {{"binary", cli_->binary()},
              {"runs", c.runs.load()},
              {"failures", c.failures.load()},
              {"binary_missing", c.binary_missing.load()},
              {"dataset_missing", c.dataset_missing.load()}};
  std::lock_guard lk(mu_);
  if (!problem_.empty()) h.degraded.push_back(problem_);
  auto& ds = h.report["datasets"] = nlohmann::json::array();
  for (auto& d : known_) {
    Health dh = d->health();
    ds.push_back(dh.report);
    h.absorb(std::move(dh));
  }
  return h;
}

std::string zfsUnavailable(const std::string& binary, const std::string& dev_zfs) {
  if (::access(binary.c_str(), X_OK) != 0) return "cannot run " + binary + ": " + std::strerror(errno);
  if (::access(dev_zfs.c_str(), F_OK) != 0) return dev_zfs + " missing (the zfs module is not loaded)";
  return {};
}

void promZfsCounters(std::string& out, const nlohmann::json& r) {
  auto n = [&](const char* key) -> uint64_t {
    auto it = r.find(key);
    if (it == r.end() || !it->is_number_integer() || it->get<int64_t>() < 0) return 0;
    return it->get<uint64_t>();
  };
  out += "# HELP dockquota_zfs_cli_runs_total Runs of the zfs CLI.\n# TYPE dockquota_zfs_cli_runs_total counter\n";
  out += "dockquota_zfs_cli_runs_total " + std::to_string(n("runs")) + "\n";
  out +=
      "# HELP dockquota_zfs_cli_failures_total zfs CLI runs without usable output, by reason "
      "(other: a non-zero exit, a timeout, an output cap).\n"
      "# TYPE dockquota_zfs_cli_failures_total counter\n";
  const uint64_t missing = n("binary_missing"), gone = n("dataset_missing"), all = n("failures");
  out += "dockquota_zfs_cli_failures_total{reason=\"binary_missing\"} " + std::to_string(missing) + "\n";
  out += "dockquota_zfs_cli_failures_total{reason=\"dataset_missing\"} " + std::to_string(gone) + "\n";
  out += "dockquota_zfs_cli_failures_total{reason=\"other\"} " +
         std::to_string(all >= missing + gone ? all - missing - gone : 0) + "\n";
}

}  // namespace dockquota
