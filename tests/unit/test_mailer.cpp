// SPDX-License-Identifier: Apache-2.0
// Quota mail (agent/delivery/mailer.h).
//
// Three layers:
//  - pure: composeMail, humanBytes, addresses and EmailDirectory, planMails
//    with a fake clock;
//  - MailNotifier::runOnce() with a fake spool and a fake transport: who gets
//    mail, what is given up, what stays pending, when to retry;
//  - [smtp]: a real SMTP server on loopback (Debian's python3-aiosmtpd, run by
//    /usr/bin/python3, storing into a Maildir) for SmtpMailer and the
//    notifier's thread. Without aiosmtpd they WARN and return; with CI=true
//    that is a failure, so green always means they ran.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/unit/in_ci.h"
#include "agent/delivery/mailer.h"
#include "tests/unit/temp_dir.h"

using namespace dockquota;
using nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kAlice = 1001;
constexpr uint32_t kBob = 1002;
constexpr uint32_t kCarol = 1003;
constexpr double kT0 = 1739455509;  // Thu, 13 Feb 2025 14:05:09 UTC
constexpr const char* kId64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr uint64_t kGiB = 1ull << 30;

Event event(int64_t seq, const char* type, uint32_t uid, const std::string& user, json detail, double created_at,
            const std::string& container_id = "") {
  Event e;
  e.seq = seq;
  e.type = type;
  e.uid = uid;
  e.user = user;
  e.container_id = container_id;
  e.detail = std::move(detail);
  e.detail["event_id"] = seq;
  e.created_at = created_at;
  return e;
}

// 11 GiB used of a 10 GiB limit (block_hard_limit in KiB).
Event stoppedEvent(int64_t seq, uint32_t uid = kAlice, const std::string& user = "alice", double at = kT0) {
  return event(seq, event_type::kStopped, uid, user,
               {{"uid", uid},
                {"container_id", std::string(kId64).substr(0, 12)},
                {"container_name", "web"},
                {"size_bytes", 3 * kGiB / 2},
                {"block_current", 11 * kGiB},
                {"block_hard_limit", 10 * (kGiB >> 10)},
                {"stopped_ids", {kId64}}},
               at, kId64);
}

Event warningEvent(int64_t seq, uint32_t uid = kAlice, const std::string& user = "alice", double at = kT0) {
  return event(seq, event_type::kWarning, uid, user,
               {{"uid", uid}, {"block_current", 9 * kGiB}, {"block_hard_limit", 10 * (kGiB >> 10)}, {"percent", 90}},
               at);
}

MailInfo info(const std::string& to = "alice@example.org") {
  MailInfo i;
  i.host = "build-01";
  i.from = "dockquota@example.org";
  i.to = to;
  i.user = "alice";
  i.uid = kAlice;
  i.date = kT0;
  return i;
}

std::string compose(const MailInfo& i, const std::vector<Event>& evs) {
  auto m = composeMail(i, evs);
  INFO((m ? "" : m.error().message));
  REQUIRE(m.ok());
  return *m;
}

std::string headersOf(const std::string& m) { return m.substr(0, m.find("\r\n\r\n") + 2); }
std::string bodyOf(const std::string& m) { return m.substr(m.find("\r\n\r\n") + 4); }

// Body lines joined into one line, so a check does not depend on the wrapping.
std::string flat(const std::string& body) {
  std::string out;
  std::istringstream in(body);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t start = line.find_first_not_of(' ');
    if (start == std::string::npos) continue;
    if (!out.empty()) out += ' ';
    out += line.substr(start);
  }
  return out;
}

// The value of header `name` (unfolded), or "".
std::string header(const std::string& headers, const std::string& name) {
  std::string unfolded = std::regex_replace(headers, std::regex("\r?\n[ \t]"), " ");
  std::istringstream in(unfolded);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > name.size() && line.compare(0, name.size() + 1, name + ":") == 0) {
      std::string v = line.substr(name.size() + 1);
      return v.substr(v.find_first_not_of(' ') == std::string::npos ? v.size() : v.find_first_not_of(' '));
    }
  }
  return "";
}

std::vector<std::string> headerNames(const std::string& headers) {
  std::vector<std::string> names;
  size_t pos = 0;
  while (pos < headers.size()) {
    size_t end = headers.find("\r\n", pos);
    std::string line = headers.substr(pos, end - pos);
    if (!line.empty() && line[0] != ' ' && line[0] != '\t') names.push_back(line.substr(0, line.find(':')));
    pos = end + 2;
  }
  return names;
}

// --- fakes -------------------------------------------------------------------------

class FakeSpool : public EventSpool {
 public:
  void add(Event e) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
  }
  Result<std::vector<Event>> pending(Channel c, size_t max) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail_) return Error{EIO, "store: disk on fire"};
    std::vector<Event> out;
    for (const auto& e : events_)
      if (!done_.count(e.seq) && channelWants(c, e.type) && out.size() < max) out.push_back(e);
    return out;
  }
  Status delivered(Channel c, const std::vector<int64_t>& seqs, bool ok, double now) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (c != Channel::Mail) return Error{EINVAL, "fake spool: delivered on the master channel"};
    for (int64_t s : seqs) done_[s] = ok;
    return {};
  }
  Result<size_t> pendingCount(Channel c) override {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const auto& e : events_)
      if (!done_.count(e.seq) && channelWants(c, e.type)) ++n;
    return n;
  }
  std::map<int64_t, bool> done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  void setFail(bool f) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_ = f;
  }

 private:
  std::mutex mu_;
  std::vector<Event> events_;
  std::map<int64_t, bool> done_;
  bool fail_ = false;
};

class FakeTransport : public MailTransport {
 public:
  struct Sent {
    std::string to, message;
  };
  Status send(const std::string& to, const std::string& message) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++attempts_;
    if (fail_) {
      Status st = fail_(to);
      if (!st) return st;
    }
    sent_.push_back({to, message});
    return {};
  }
  const std::string& from() const override { return from_; }
  void failWith(std::function<Status(const std::string&)> f) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_ = std::move(f);
  }
  std::vector<Sent> sent() {
    std::lock_guard<std::mutex> lock(mu_);
    return sent_;
  }
  int attempts() {
    std::lock_guard<std::mutex> lock(mu_);
    return attempts_;
  }

 private:
  std::mutex mu_;
  std::string from_ = "dockquota@example.org";
  std::function<Status(const std::string&)> fail_;
  std::vector<Sent> sent_;
  int attempts_ = 0;
};

EmailDirectory directory(std::map<std::string, std::string> addresses, std::string tmpl = "") {
  auto d = EmailDirectory::create({std::move(addresses), std::move(tmpl)});
  INFO((d ? "" : d.error().message));
  REQUIRE(d.ok());
  return std::move(*d);
}

MailNotifier::Options notifierOptions() {
  MailNotifier::Options o;
  o.host_id = "build-01";
  o.burst = 60s;
  o.min_interval = 900s;
  o.max_per_hour = 100;
  o.backoff_base = 1000ms;
  o.backoff_cap = 8000ms;
  o.poll = 3600s;  // so runOnce() returns the planned time, not the poll
  return o;
}

// What the logger writes to stderr while `f` runs.
std::string stderrOf(const std::function<void()>& f) {
  TempDir dir;
  std::string path = dir.file("stderr");
  std::fflush(stderr);
  int saved = ::dup(2);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  ::dup2(fd, 2);
  ::close(fd);
  try {
    f();
  } catch (...) {
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    throw;
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

size_t count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) ++n;
  return n;
}

}  // namespace

// --- composeMail -------------------------------------------------------------------

TEST_CASE("humanBytes: binary units, truncated, never rounded up to the limit", "[mail]") {
  CHECK(humanBytes(0) == "0 bytes");
  CHECK(humanBytes(1023) == "1023 bytes");
  CHECK(humanBytes(1024) == "1.0 KiB");
  CHECK(humanBytes(1536) == "1.5 KiB");
  CHECK(humanBytes(10 * kGiB) == "10.0 GiB");
  CHECK(humanBytes(100 * kGiB - 1) == "99.9 GiB");
  CHECK(humanBytes(150 * kGiB) == "150 GiB");
  CHECK(humanBytes(3ull << 40) == "3.0 TiB");
  CHECK(humanBytes(1ull << 63) == "8.0 EiB");
  CHECK(humanBytes(UINT64_MAX) == "16.0 EiB");  // a double's rounding, no crash
}

TEST_CASE("composeMail: headers, CRLF, Date, unique Message-ID", "[mail]") {
  std::string m = compose(info(), {stoppedEvent(7)});
  std::string h = headersOf(m);
  CHECK(headerNames(h) == std::vector<std::string>{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
                                                   "Content-Type", "Content-Transfer-Encoding", "Auto-Submitted"});
  CHECK(header(h, "From") == "dockquota on build-01 <dockquota@example.org>");
  CHECK(header(h, "To") == "alice@example.org");
  CHECK(header(h, "Subject") == "[dockquota build-01] Docker disk quota: container stopped");
  CHECK(header(h, "Date") == "Thu, 13 Feb 2025 14:05:09 +0000");
  CHECK(header(h, "MIME-Version") == "1.0");
  CHECK(header(h, "Content-Type") == "text/plain; charset=utf-8");
  CHECK(header(h, "Content-Transfer-Encoding") == "8bit");
  std::string id = header(h, "Message-ID");
  CHECK(std::regex_match(id, std::regex("<[0-9]+\\.[0-9a-f]{16}\\.[0-9]+@build-01>")));
  CHECK(header(headersOf(compose(info(), {stoppedEvent(7)})), "Message-ID") != id);

  // Every line ends in CRLF, no bare CR or LF, none longer than RFC 5322's 998.
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i] == '\n') REQUIRE((i > 0 && m[i - 1] == '\r'));
    if (m[i] == '\r') REQUIRE((i + 1 < m.size() && m[i + 1] == '\n'));
  }
  REQUIRE(m.size() >= 2);
  CHECK(m.substr(m.size() - 2) == "\r\n");
  size_t start = 0;
  for (size_t p = m.find("\r\n"); p != std::string::npos; start = p + 2, p = m.find("\r\n", start))
    CHECK(p - start <= 998);

  MailInfo given = info();
  given.message_id = "<fixed@build-01>";
  CHECK(header(headersOf(compose(given, {stoppedEvent(7)})), "Message-ID") == "<fixed@build-01>");
}

TEST_CASE("composeMail: the subject names the most severe event, the body each one with its figures", "[mail]") {
  Event warn = warningEvent(1);
  Event exceeded =
      event(2, event_type::kExceeded, kAlice, "alice",
            {{"uid", kAlice}, {"block_current", 11 * kGiB}, {"block_hard_limit", 10 * (kGiB >> 10)}}, kT0 + 60);
  Event stopped = stoppedEvent(3, kAlice, "alice", kT0 + 120);
  Event removed = event(4, event_type::kRemoved, kAlice, "alice",
                        {{"container_id", "fedcba987654"},
                         {"container_name", "/db"},
                         {"size_bytes", 2 * kGiB},
                         {"new_usage", 9 * kGiB + 512 * 1024 * 1024},
                         {"removed_ids", {"fedcba9876543210"}}},
                        kT0 + 180, "fedcba9876543210fedcba9876543210");

  CHECK(header(compose(info(), {warn}), "Subject") == "[dockquota build-01] Docker disk quota: nearly full");
  CHECK(header(compose(info(), {warn, exceeded}), "Subject") ==
        "[dockquota build-01] Docker disk quota: quota exceeded (2 notices)");
  CHECK(header(compose(info(), {stopped, warn}), "Subject") ==
        "[dockquota build-01] Docker disk quota: container stopped (2 notices)");
  std::string m = compose(info(), {removed, warn, stopped, exceeded});
  CHECK(header(headersOf(m), "Subject") == "[dockquota build-01] Docker disk quota: container removed (4 notices)");

  std::string b = flat(bodyOf(m));
  INFO(bodyOf(m));
  CHECK(b.rfind("Hello alice,", 0) == 0);
  CHECK(b.find("dockquota on build-01") != std::string::npos);
  CHECK(b.find("(uid 1001)") != std::string::npos);
  // Warning: 9 GiB of 10 GiB, 90%; block_hard_limit is KiB, shown as bytes.
  CHECK(b.find("At 2025-02-13 14:05 UTC, your Docker disk usage reached 90% of your limit: "
               "9.0 GiB (9,663,676,416 bytes) of 10.0 GiB (10,737,418,240 bytes).") != std::string::npos);
  CHECK(b.find("At 2025-02-13 14:06 UTC, your Docker disk usage, 11.0 GiB (11,811,160,064 bytes), was over your "
               "limit of 10.0 GiB (10,737,418,240 bytes) by 1.0 GiB (1,073,741,824 bytes).") != std::string::npos);
  CHECK(b.find("At 2025-02-13 14:07 UTC, your container \"web\" (0123456789ab) was stopped because your Docker disk "
               "usage, 11.0 GiB (11,811,160,064 bytes), was over your limit of 10.0 GiB (10,737,418,240 bytes)") !=
        std::string::npos);
  CHECK(b.find("Its writable layer holds 1.5 GiB (1,610,612,736 bytes).") != std::string::npos);
  CHECK(b.find("Also stopped") == std::string::npos);  // stopped_ids holds only the container itself
  CHECK(b.find("At 2025-02-13 14:08 UTC, your container \"db\" (fedcba987654) was removed") != std::string::npos);
  CHECK(b.find("Its writable layer held 2.0 GiB (2,147,483,648 bytes). Your Docker disk usage is now 9.5 GiB "
               "(10,200,547,328 bytes).") != std::string::npos);
  // Ids are 12 characters, never the full 64.
  CHECK(b.find("0123456789abc") == std::string::npos);
  CHECK(b.find("fedcba9876543") == std::string::npos);
  // In seq order, and what to do.
  CHECK(b.find("reached 90%") < b.find("was stopped"));
  CHECK(b.find("was stopped") < b.find("was removed"));
  CHECK(b.find("docker rm <container>") != std::string::npos);
  CHECK(b.find("docker rmi <image>") != std::string::npos);
  CHECK(b.find("docker volume rm <volume>") != std::string::npos);
  CHECK(b.find("docker start <container>") != std::string::npos);  // because one was stopped
  CHECK(flat(bodyOf(compose(info(), {warn}))).find("docker start") == std::string::npos);
  // Body lines are wrapped for a mail reader.
  std::istringstream lines(bodyOf(m));
  for (std::string line; std::getline(lines, line);) CHECK(line.size() <= 80);
}

TEST_CASE("composeMail: other stopped containers, the id from the event, many events", "[mail]") {
  Event e = stoppedEvent(1);
  e.detail.erase("container_id");
  e.detail.erase("container_name");
  e.detail["stopped_ids"] = {kId64, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 17, nullptr};
  std::string b = flat(bodyOf(compose(info(), {e})));
  INFO(b);
  CHECK(b.find("your container 0123456789ab was stopped") != std::string::npos);
  CHECK(b.find("Also stopped: aaaaaaaaaaaa.") != std::string::npos);

  std::vector<Event> many;
  for (int i = 1; i <= 60; ++i) many.push_back(warningEvent(i, kAlice, "alice", kT0 + i * 60));
  std::string m = compose(info(), many);
  CHECK(header(headersOf(m), "Subject") == "[dockquota build-01] Docker disk quota: nearly full (60 notices)");
  b = flat(bodyOf(m));
  CHECK(b.find("10 earlier notices are not listed; the latest 50 follow.") != std::string::npos);
  CHECK(count(b, "reached 90%") == 50);
}

TEST_CASE("composeMail: header injection is stripped, bad addresses are refused", "[mail]") {
  MailInfo i = info();
  i.host = "evil\r\nBcc: victim@example.com\r\n";
  i.user = "bob\r\nBcc: x@example.com\n\x1b[31m";
  Event e = stoppedEvent(1);
  e.detail["container_name"] = "web\r\n.\r\nRCPT TO:<x@example.com>\r\nBcc: y@example.com";
  std::string m = compose(i, {e});
  std::string h = headersOf(m);
  CHECK(headerNames(h) == std::vector<std::string>{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
                                                   "Content-Type", "Content-Transfer-Encoding", "Auto-Submitted"});
  CHECK(header(h, "Subject") == "[dockquota evilBcc: victim@example.com] Docker disk quota: container stopped");
  CHECK(header(h, "From") == "\"dockquota on evilBcc: victim@example.com\" <dockquota@example.org>");
  CHECK(std::regex_match(header(h, "Message-ID"), std::regex("<[^<>@ ]+@evilBccvictimexample.com>")));
  std::string body = bodyOf(m);
  CHECK(body.find('\x1b') == std::string::npos);
  CHECK(body.find("\r\n.\r\n") == std::string::npos);
  CHECK(body.find("\nBcc:") == std::string::npos);
  CHECK(body.find("\nRCPT") == std::string::npos);
  CHECK(flat(body).rfind("Hello bobBcc: x@example.com[31m,", 0) == 0);

  for (const char* bad : {"alice@example.org\r\nBcc: x@example.com", "alice", "", "alice@", "@example.org",
                          "a@b@example.org", "alice@exa mple.org", "<alice@example.org>", "alice@example.org\n",
                          "Alice <alice@example.org>", "alice@-example.org", "alice@example..org", ".a@example.org"}) {
    INFO(bad);
    CHECK_FALSE(validMailAddress(bad));
    auto r = composeMail(info(bad), {e});
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EINVAL);
    CHECK(r.error().message.find('\n') == std::string::npos);
    MailInfo from_bad = info();
    from_bad.from = bad;
    CHECK_FALSE(composeMail(from_bad, {e}).ok());
  }
  for (const char* good : {"alice@example.org", "a.b+quota@mail.example.org", "root@localhost", "x_y-1@a-b.c0"})
    CHECK(validMailAddress(good));
}

TEST_CASE("composeMail: non-ASCII in headers is encoded, in the body is UTF-8", "[mail]") {
  MailInfo i = info();
  i.host = "bâtiment-ü";
  i.user = "zoë";
  std::string m = compose(i, {stoppedEvent(1)});
  std::string h = headersOf(m);
  for (unsigned char c : h) CHECK(c < 0x80);
  // "[dockquota bâtiment-ü] Docker disk quota: container stopped", base64 in pieces.
  CHECK(header(h, "Subject").rfind("=?utf-8?B?", 0) == 0);
  CHECK(header(h, "From").rfind("=?utf-8?B?", 0) == 0);
  CHECK(header(h, "From").find("<dockquota@example.org>") != std::string::npos);
  CHECK(bodyOf(m).rfind("Hello zoë,", 0) == 0);
}

TEST_CASE("composeMail: missing or wrong-typed detail fields never throw", "[mail]") {
  std::vector<json> details = {json(nullptr),
                               json("a string"),
                               json::array({1, 2}),
                               json::object(),
                               json{{"block_current", "lots"},
                                    {"block_hard_limit", -5},
                                    {"percent", "high"},
                                    {"size_bytes", true},
                                    {"new_usage", json::array()},
                                    {"container_id", 42},
                                    {"container_name", json::object()},
                                    {"stopped_ids", "not a list"},
                                    {"removed_ids", 3}},
                               json{{"block_current", 1e300},
                                    {"block_hard_limit", 18446744073709551615ull},
                                    {"percent", -1.5},
                                    {"size_bytes", -1}}};
  for (const auto& d : details) {
    for (const char* type : {event_type::kWarning, event_type::kExceeded, event_type::kStopped, event_type::kRemoved}) {
      Event e = event(1, type, kAlice, "alice", json::object(), kT0);
      e.detail = d;  // as it is: not even an object
      INFO(type << " " << d.dump());
      std::string m;
      REQUIRE_NOTHROW(m = compose(info(), {e}));
      CHECK(m.find("Subject: [dockquota build-01] Docker disk quota: ") != std::string::npos);
    }
  }
  // Sensible text without figures.
  Event bare = event(1, event_type::kStopped, kAlice, "alice", json::object(), 0, kId64);
  std::string b = flat(bodyOf(compose(info(), {bare})));
  CHECK(b.find("Your container 0123456789ab was stopped because your Docker disk usage was over your limit.") !=
        std::string::npos);

  // Only types users are not mailed about: nothing to write.
  auto r = composeMail(info(), {event(1, event_type::kDryRun, kAlice, "alice", {}, kT0)});
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == EINVAL);
  CHECK_FALSE(composeMail(info(), {}).ok());
}

// --- EmailDirectory -------------------------------------------------------------------

TEST_CASE("EmailDirectory: the map wins, then the template, else none", "[mail]") {
  EmailDirectory d = directory({{"alice", "alice.smith@corp.example"}}, "{user}+{uid}@example.org");
  CHECK(d.addressFor("alice", kAlice) == std::optional<std::string>("alice.smith@corp.example"));
  CHECK(d.addressFor("bob", kBob) == std::optional<std::string>("bob+1002@example.org"));
  CHECK(d.addressFor("", kCarol) == std::nullopt);          // {user} without a name
  CHECK(d.addressFor("bad name", kCarol) == std::nullopt);  // would not be an address
  CHECK(d.addressFor("x@evil.example", kCarol) == std::nullopt);
  CHECK(d.addressFor("x\r\nBcc: y@z.org", kCarol) == std::nullopt);

  EmailDirectory only_map = directory({{"alice", "alice@example.org"}});
  CHECK(only_map.addressFor("alice", kAlice) == std::optional<std::string>("alice@example.org"));
  CHECK(only_map.addressFor("bob", kBob) == std::nullopt);
  CHECK(EmailDirectory().addressFor("alice", kAlice) == std::nullopt);

  EmailDirectory by_uid = directory({}, "u{uid}@example.org");
  CHECK(by_uid.addressFor("", kCarol) == std::optional<std::string>("u1003@example.org"));

  struct Bad {
    std::map<std::string, std::string> addresses;
    std::string tmpl;
    const char* why;
  };
  for (const Bad& bad : std::vector<Bad>{{{{"alice", "alice"}}, "", "is not a plain address"},
                                         {{{"alice", "a@b.org\r\nBcc: c@d.org"}}, "", "is not a plain address"},
                                         {{{"", "a@b.org"}}, "", "empty user name"},
                                         {{}, "{user}.example.org", "has no '@'"},
                                         {{}, "{usr}@example.org", "only {user} and {uid}"},
                                         {{}, "{user}@example.org\r\nBcc: x@y.org", "control characters"},
                                         {{}, "{user}@@example.org", "not a plain address"}}) {
    auto r = EmailDirectory::create({bad.addresses, bad.tmpl});
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == EINVAL);
    CHECK(r.error().message.rfind("mail: ", 0) == 0);
    CHECK(r.error().message.find(bad.why) != std::string::npos);
    CHECK(r.error().message.find('\n') == std::string::npos);
  }
}

// --- planMails ------------------------------------------------------------------------

TEST_CASE("planMails: a burst is collected for `burst` after its first event", "[mail]") {
  auto o = notifierOptions();  // burst 60 s, min_interval 900 s
  std::vector<Event> p = {warningEvent(1, kAlice, "alice", kT0), stoppedEvent(2, kAlice, "alice", kT0 + 30)};
  MailPlan plan = planMails(p, {}, {}, kT0 + 10, o);
  CHECK(plan.due.empty());
  CHECK(plan.wake_at == std::optional<double>(kT0 + 60));
  plan = planMails(p, {}, {}, kT0 + 59.9, o);
  CHECK(plan.due.empty());
  plan = planMails(p, {}, {}, kT0 + 60, o);  // the oldest decides, not the newest
  CHECK(plan.due == std::vector<uint32_t>{kAlice});
  CHECK_FALSE(plan.wake_at.has_value());

  // Nothing pending: nothing to do, nothing to wake for.
  plan = planMails({}, {{kAlice, kT0}}, {kT0}, kT0 + 5, o);
  CHECK(plan.due.empty());
  CHECK_FALSE(plan.wake_at.has_value());

  // Stamped well in the future (the clock stepped back): not held for hours.
  plan = planMails({warningEvent(1, kAlice, "alice", kT0 + 7200)}, {}, {}, kT0, o);
  CHECK(plan.due == std::vector<uint32_t>{kAlice});
  // A little in the future (clocks of two threads): as if stamped now.
  plan = planMails({warningEvent(1, kAlice, "alice", kT0 + 5)}, {}, {}, kT0, o);
  CHECK(plan.due.empty());
  CHECK(plan.wake_at == std::optional<double>(kT0 + 60));

  // burst 0: at once.
  o.burst = 0s;
  CHECK(planMails({warningEvent(1, kAlice, "alice", kT0)}, {}, {}, kT0, o).due == std::vector<uint32_t>{kAlice});
}

TEST_CASE("planMails: at most one mail per user per min_interval", "[mail]") {
  auto o = notifierOptions();
  std::map<uint32_t, double> last = {{kAlice, kT0}, {kBob, kT0 - 1000}};
  std::vector<Event> p = {warningEvent(1, kAlice, "alice", kT0 + 100), warningEvent(2, kBob, "bob", kT0 + 100)};
  MailPlan plan = planMails(p, last, {kT0}, kT0 + 200, o);
  CHECK(plan.due == std::vector<uint32_t>{kBob});  // alice had one 200 s ago
  CHECK(plan.wake_at == std::optional<double>(kT0 + 900));
  plan = planMails(p, last, {kT0}, kT0 + 899, o);
  CHECK(plan.due == std::vector<uint32_t>{kBob});
  plan = planMails(p, last, {kT0}, kT0 + 900, o);
  CHECK(plan.due == std::vector<uint32_t>{kAlice, kBob});  // the longest waiting first; same age: by uid
  CHECK_FALSE(plan.wake_at.has_value());

  // The later of the two conditions decides: interval over, burst not.
  p = {warningEvent(3, kAlice, "alice", kT0 + 890)};
  plan = planMails(p, last, {}, kT0 + 900, o);
  CHECK(plan.due.empty());
  CHECK(plan.wake_at == std::optional<double>(kT0 + 950));
}

TEST_CASE("planMails: the global cap over a sliding hour, the longest waiting first", "[mail]") {
  auto o = notifierOptions();
  o.max_per_hour = 3;
  std::vector<Event> p = {warningEvent(1, kCarol, "carol", kT0 + 20), warningEvent(2, kAlice, "alice", kT0),
                          warningEvent(3, kBob, "bob", kT0 + 10), warningEvent(4, 2000, "dave", kT0 + 30)};
  double now = kT0 + 100;
  MailPlan plan = planMails(p, {}, {}, now, o);
  CHECK(plan.due == std::vector<uint32_t>{kAlice, kBob, kCarol});  // dave waits
  CHECK(plan.wake_at == std::optional<double>(now + 1));           // nothing sent yet: look again soon

  // Two sent in the last hour (one just outside it does not count): one slot.
  std::deque<double> sent = {now - 3600, now - 3000, now - 10};
  plan = planMails(p, {}, sent, now, o);
  CHECK(plan.due == std::vector<uint32_t>{kAlice});
  CHECK(plan.wake_at == std::optional<double>(now - 3000 + 3600));  // when the oldest leaves the hour

  sent = {now - 3000, now - 2000, now - 10};
  plan = planMails(p, {}, sent, now, o);
  CHECK(plan.due.empty());
  CHECK(plan.wake_at == std::optional<double>(now + 600));

  // A user still inside their burst brings the wake time forward.
  p.push_back(warningEvent(5, 3000, "erin", now - 30));
  plan = planMails(p, {}, sent, now, o);
  CHECK(plan.wake_at == std::optional<double>(now + 30));

  o.max_per_hour = 0;  // no cap
  plan = planMails(p, {}, sent, now, o);
  CHECK(plan.due.size() == 4);
}

// --- MailNotifier::runOnce with fakes --------------------------------------------------

TEST_CASE("MailNotifier: one mail per user for a burst, then min_interval", "[mail]") {
  FakeSpool spool;
  FakeTransport mail;
  MailNotifier n(spool, mail, directory({{"alice", "alice@example.org"}}, "{user}@example.org"), notifierOptions());
  spool.add(warningEvent(1, kAlice, "alice", kT0));
  spool.add(stoppedEvent(2, kAlice, "alice", kT0 + 20));
  spool.add(warningEvent(3, kBob, "bob", kT0 + 30));

  CHECK(n.runOnce(kT0 + 30) == Approx(kT0 + 60));  // alice's burst ends first
  CHECK(mail.sent().empty());
  CHECK(n.runOnce(kT0 + 60) == Approx(kT0 + 90));  // bob's burst
  REQUIRE(mail.sent().size() == 1);
  CHECK(mail.sent()[0].to == "alice@example.org");
  CHECK(header(mail.sent()[0].message, "Subject") ==
        "[dockquota build-01] Docker disk quota: container stopped (2 notices)");
  CHECK(header(mail.sent()[0].message, "From") == "dockquota on build-01 <dockquota@example.org>");
  CHECK(spool.done() == std::map<int64_t, bool>{{1, true}, {2, true}});
  n.runOnce(kT0 + 90);
  REQUIRE(mail.sent().size() == 2);
  CHECK(mail.sent()[1].to == "bob@example.org");

  // Alice again within min_interval: held, then everything in one mail.
  spool.add(stoppedEvent(4, kAlice, "alice", kT0 + 100));
  spool.add(stoppedEvent(5, kAlice, "alice", kT0 + 500));
  CHECK(n.runOnce(kT0 + 600) == Approx(kT0 + 60 + 900));
  CHECK(mail.sent().size() == 2);
  n.runOnce(kT0 + 960);
  REQUIRE(mail.sent().size() == 3);
  CHECK(header(mail.sent()[2].message, "Subject") ==
        "[dockquota build-01] Docker disk quota: container stopped (2 notices)");
  CHECK(spool.done().size() == 5);

  auto h = n.health();
  CHECK(h["mails_sent"] == 3);
  CHECK(h["events_mailed"] == 5);
  CHECK(h["failures"] == 0);
  CHECK(h["pending"] == 0);
  CHECK(h["running"] == false);
}

TEST_CASE("MailNotifier: a user without an address is given up once, with one WARN", "[mail]") {
  FakeSpool spool;
  FakeTransport mail;
  MailNotifier n(spool, mail, directory({{"alice", "alice@example.org"}}), notifierOptions());
  spool.add(warningEvent(1, kBob, "bob", kT0));
  spool.add(stoppedEvent(2, kBob, "bob", kT0));
  spool.add(warningEvent(3, kAlice, "alice", kT0));
  spool.add(event(4, event_type::kDryRun, kAlice, "alice", {}, kT0));  // never pending on the mail channel
  std::string err = stderrOf([&] {
    n.runOnce(kT0 + 1);  // bob is given up before his burst ends: no waiting for nothing
    spool.add(warningEvent(5, kBob, "bob", kT0 + 2));
    n.runOnce(kT0 + 3);
  });
  INFO(err);
  CHECK(count(err, "no email address for user bob (uid 1002)") == 1);
  CHECK(spool.done() == std::map<int64_t, bool>{{1, false}, {2, false}, {5, false}});
  CHECK(n.health()["skipped_no_address"] == 3);
  CHECK(n.health()["pending"] == 1);  // alice, in her burst
  n.runOnce(kT0 + 60);
  CHECK(mail.sent().size() == 1);
  CHECK(spool.done().at(3) == true);
}

TEST_CASE("MailNotifier: SMTP failure keeps events pending, backs off, WARNs per change", "[mail]") {
  FakeSpool spool;
  FakeTransport mail;
  auto o = notifierOptions();
  o.burst = 0s;
  MailNotifier n(spool, mail, directory({}, "{user}@example.org"), o);
  spool.add(warningEvent(1, kAlice, "alice", kT0));
  spool.add(warningEvent(2, kBob, "bob", kT0));
  std::string error = "mail: sending to alice@example.org via smtp://relay:25: Couldn't connect to server";
  mail.failWith([&](const std::string&) { return Status(Error{ECONNREFUSED, error}); });

  double t = kT0;
  std::string err = stderrOf([&] {
    for (int i = 0; i < 4; ++i) {
      double next = n.runOnce(t);
      CHECK(next >= t);               // full jitter may pick 0
      CHECK(next <= t + 8.0 + 1e-6);  // backoff_cap
      t = next;
    }
  });
  INFO(err);
  CHECK(mail.attempts() == 4);  // one per pass: the relay is down for everyone
  CHECK(count(err, "Couldn't connect to server") == 1);
  CHECK(spool.done().empty());
  auto h = n.health();
  CHECK(h["failures"] == 4);
  CHECK(h["failing"] == true);
  CHECK(h["last_error"] == error);
  CHECK(h["pending"] == 2);

  // A pass before the retry time (a wake()) sends nothing.
  mail.failWith(nullptr);
  double retry = n.runOnce(t - 0.0005);
  CHECK(mail.attempts() == 4);
  CHECK(retry == Approx(t).margin(0.001));

  err = stderrOf([&] { n.runOnce(t); });
  CHECK(count(err, "mail goes out again") == 1);
  CHECK(mail.sent().size() == 2);
  CHECK(spool.done() == std::map<int64_t, bool>{{1, true}, {2, true}});
  h = n.health();
  CHECK(h["failing"] == false);
  CHECK(h["last_error"] == error);  // kept for /healthz
  CHECK(h["mails_sent"] == 2);

  // Another error: WARN again.
  spool.add(warningEvent(3, kCarol, "carol", t));
  mail.failWith([&](const std::string&) { return Status(Error{ETIMEDOUT, "mail: timed out"}); });
  err = stderrOf([&] { n.runOnce(t + 1000); });
  CHECK(count(err, "timed out") == 1);

  // The spool failing is reported, and nothing is lost.
  spool.setFail(true);
  err = stderrOf([&] {
    n.runOnce(t + 2000);
    n.runOnce(t + 2001);
  });
  CHECK(count(err, "disk on fire") == 1);
  CHECK(n.health()["last_error"] == "store: disk on fire");
}

TEST_CASE("MailNotifier: a recipient refused for good is given up, the others still get mail", "[mail]") {
  FakeSpool spool;
  FakeTransport mail;
  auto o = notifierOptions();
  o.burst = 0s;
  MailNotifier n(spool, mail, directory({}, "{user}@example.org"), o);
  spool.add(warningEvent(1, kAlice, "alice", kT0));  // the longest waiting: tried first
  spool.add(warningEvent(2, kBob, "bob", kT0 + 1));
  mail.failWith([](const std::string& to) {
    if (to == "alice@example.org")
      return Status(Error{kMailRecipientRefused,
                          "mail: sending to alice@example.org via smtp://relay:25: RCPT "
                          "failed: 550 (SMTP 550: 550 5.1.1 unknown user)"});
    return Status();
  });
  std::string err = stderrOf([&] { n.runOnce(kT0 + 2); });
  INFO(err);
  CHECK(count(err, "RCPT failed: 550") == 1);
  CHECK(err.find("given up") != std::string::npos);
  CHECK(spool.done() == std::map<int64_t, bool>{{1, false}, {2, true}});
  REQUIRE(mail.sent().size() == 1);
  CHECK(mail.sent()[0].to == "bob@example.org");
  auto h = n.health();
  CHECK(h["events_refused"] == 1);
  CHECK(h["failures"] == 1);
  CHECK(h["failing"] == false);
}

TEST_CASE("MailNotifier: the global cap holds mail back across passes", "[mail]") {
  FakeSpool spool;
  FakeTransport mail;
  auto o = notifierOptions();
  o.burst = 0s;
  o.max_per_hour = 2;
  MailNotifier n(spool, mail, directory({}, "u{uid}@example.org"), o);
  for (uint32_t uid = 1; uid <= 3; ++uid) spool.add(warningEvent(uid, 5000 + uid, "", kT0 + uid));
  CHECK(n.runOnce(kT0 + 10) <= kT0 + 11);  // planned before the two went out: look again soon
  CHECK(mail.sent().size() == 2);
  CHECK(n.runOnce(kT0 + 11) == Approx(kT0 + 10 + 3600));  // when the first leaves the hour
  CHECK(mail.sent().size() == 2);
  n.runOnce(kT0 + 3609);
  CHECK(mail.sent().size() == 2);
  n.runOnce(kT0 + 3610);
  REQUIRE(mail.sent().size() == 3);
  CHECK(mail.sent()[2].to == "u5003@example.org");
  CHECK(flat(bodyOf(mail.sent()[2].message)).rfind("Hello uid 5003,", 0) == 0);
}

// --- a real SMTP server ------------------------------------------------------------------

namespace {

constexpr const char* kPython = "/usr/bin/python3";

bool smtpdAvailable(std::string* why) {
  static int cached = -1;  // the import takes ~100 ms; once per run
  if (cached < 0) {
    if (::access(kPython, X_OK) != 0)
      cached = 0;
    else
      cached = std::system("/usr/bin/python3 -c 'import aiosmtpd.handlers' >/dev/null 2>&1") == 0 ? 1 : 0;
  }
  if (cached == 0)
    *why = "/usr/bin/python3 cannot import aiosmtpd (apt-get install python3-aiosmtpd, deploy/packages-test.txt)";
  return cached == 1;
}

#define REQUIRE_SMTPD()                                                             \
  do {                                                                              \
    std::string why_;                                                               \
    if (!smtpdAvailable(&why_)) {                                                   \
      if (inCi()) FAIL("CI=true and a real SMTP server is required, but " << why_); \
      WARN("skipping: " << why_ << " (with CI=true this fails)");                   \
      return;                                                                       \
    }                                                                               \
  } while (0)

// A loopback port nobody listens on (now).
int freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool accepts(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// aiosmtpd's Mailbox handler stores each message in a Maildir; ours also
// refuses recipients whose local part is "refused" (550), as a relay does
// for an unknown user.
constexpr const char* kHandler = R"(from aiosmtpd.handlers import Mailbox


class Handler(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refused@"):
            return "550 5.1.1 <%s>: Recipient address rejected: unknown user" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"
)";

class SmtpServer {
 public:
  SmtpServer() : port_(freePort()) { std::ofstream(dir_.file("dq_smtp_handler.py")) << kHandler; }
  ~SmtpServer() { stop(); }

  int port() const { return port_; }
  std::string file(const std::string& name) const { return dir_.file(name); }
  std::string url() const { return "smtp://127.0.0.1:" + std::to_string(port_); }

  // `extra`: more aiosmtpd options (TLS).
  void start(const std::vector<std::string>& extra = {}) {
    REQUIRE(pid_ <= 0);
    std::string listen = "127.0.0.1:" + std::to_string(port_), maildir = dir_.file("maildir"),
                log = dir_.file("smtpd.log");
    std::vector<std::string> args = {kPython, "-m", "aiosmtpd", "-n", "-l", listen};
    args.insert(args.end(), extra.begin(), extra.end());
    for (const char* a : {"-c", "dq_smtp_handler.Handler"}) args.push_back(a);
    args.push_back(maildir);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_s = {"PYTHONPATH=" + dir_.path, "PYTHONDONTWRITEBYTECODE=1", "PATH=/usr/bin:/bin"};
    std::vector<char*> envp;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = posix_spawn(&pid_, kPython, &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    REQUIRE(rc == 0);
    auto deadline = Clock::now() + 10s;
    while (!accepts(port_)) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL("aiosmtpd exited at start: " << readFile(log));
      }
      if (Clock::now() > deadline) FAIL("aiosmtpd does not accept on " << listen << ": " << readFile(log));
      std::this_thread::sleep_for(10ms);
    }
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    auto deadline = Clock::now() + 3s;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    pid_ = -1;
  }

  // The messages received so far, oldest first, LF line endings (as stored).
  std::vector<std::string> messages() const {
    std::vector<std::pair<fs::file_time_type, std::string>> files;
    std::error_code ec;
    for (const auto& f : fs::directory_iterator(dir_.file("maildir/new"), ec))
      files.emplace_back(f.last_write_time(), f.path().string());
    std::sort(files.begin(), files.end());
    std::vector<std::string> out;
    for (const auto& f : files) out.push_back(readFile(f.second));
    return out;
  }

  std::vector<std::string> waitForMessages(size_t n, std::chrono::milliseconds timeout = 3000ms) const {
    auto deadline = Clock::now() + timeout;
    auto m = messages();
    while (m.size() < n && Clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
      m = messages();
    }
    return m;
  }

 private:
  static std::string readFile(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  TempDir dir_;
  int port_;
  pid_t pid_ = -1;
};

std::unique_ptr<SmtpMailer> mailer(const std::string& url, std::chrono::seconds timeout = 5s) {
  SmtpMailer::Options o;
  o.url = url;
  o.from = "dockquota@example.org";
  o.timeout = timeout;
  auto m = SmtpMailer::create(o);
  INFO((m ? "" : m.error().message));
  REQUIRE(m.ok());
  return std::move(*m);
}

template <typename Pred>
bool waitUntil(std::chrono::milliseconds timeout, Pred pred) {
  auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

}  // namespace

TEST_CASE("SmtpMailer::create checks the URL and the sender", "[mail]") {
  SmtpMailer::Options o;
  o.from = "dockquota@example.org";
  for (const char* bad : {"", "relay:25", "http://relay:25", "smtp://", "smtp://user:pw@relay:25"}) {
    o.url = bad;
    auto m = SmtpMailer::create(o);
    INFO(bad);
    REQUIRE_FALSE(m.ok());
    CHECK(m.error().code == EINVAL);
    CHECK(m.error().message.find("pw") == std::string::npos);  // never print a password
  }
  o.url = "smtp://relay.example.org:587";
  o.from = "dockquota";
  CHECK_FALSE(SmtpMailer::create(o).ok());
  o.from = "dockquota@example.org\r\nBcc: x@y.org";
  CHECK_FALSE(SmtpMailer::create(o).ok());
  o.from = "dockquota@example.org";
  o.username = "dq";
  CHECK_FALSE(SmtpMailer::create(o).ok());  // a username without a password
  o.password = "secret";
  o.starttls = true;
  auto m = SmtpMailer::create(o);
  REQUIRE(m.ok());
  CHECK((*m)->server() == "smtp://relay.example.org:587");
  CHECK((*m)->from() == "dockquota@example.org");
  o.url = "smtps://relay.example.org";
  REQUIRE(SmtpMailer::create(o).ok());
  CHECK((*SmtpMailer::create(o))->server() == "smtps://relay.example.org");
}

TEST_CASE("SmtpMailer delivers a composed mail to a real SMTP server", "[mail][smtp]") {
  REQUIRE_SMTPD();
  SmtpServer server;
  server.start();
  auto m = mailer(server.url());
  std::string message = compose(info(), {warningEvent(1), stoppedEvent(2)});
  Status st = m->send("alice@example.org", message);
  INFO((st ? "" : st.error().message));
  REQUIRE(st.ok());
  auto got = server.waitForMessages(1);
  REQUIRE(got.size() == 1);
  const std::string& r = got[0];
  INFO(r);
  std::string h = r.substr(0, r.find("\n\n") + 1);
  CHECK(header(h, "X-MailFrom") == "dockquota@example.org");  // the envelope, as aiosmtpd saw it
  CHECK(header(h, "X-RcptTo") == "alice@example.org");
  CHECK(header(h, "From") == "dockquota on build-01 <dockquota@example.org>");
  CHECK(header(h, "To") == "alice@example.org");
  CHECK(header(h, "Subject") == "[dockquota build-01] Docker disk quota: container stopped (2 notices)");
  CHECK(header(h, "Date") == "Thu, 13 Feb 2025 14:05:09 +0000");
  std::string b = flat(r.substr(r.find("\n\n") + 2));
  CHECK(b.rfind("Hello alice,", 0) == 0);
  CHECK(b.find("9.0 GiB (9,663,676,416 bytes) of 10.0 GiB (10,737,418,240 bytes)") != std::string::npos);
  CHECK(b.find("your container \"web\" (0123456789ab) was stopped") != std::string::npos);
  CHECK(b.find("11.0 GiB (11,811,160,064 bytes)") != std::string::npos);
}

TEST_CASE("SmtpMailer: lines starting with '.' arrive intact (curl dot-stuffs)", "[mail][smtp]") {
  REQUIRE_SMTPD();
  SmtpServer server;
  server.start();
  auto m = mailer(server.url());
  std::string message =
      "From: dockquota@example.org\r\nTo: alice@example.org\r\nSubject: dots\r\n\r\n"
      ".first line starts with a dot\r\n.\r\nafter a lone dot\r\n..two dots\r\nlast\r\n";
  Status st = m->send("alice@example.org", message);
  INFO((st ? "" : st.error().message));
  REQUIRE(st.ok());
  auto got = server.waitForMessages(1);
  REQUIRE(got.size() == 1);
  INFO(got[0]);
  CHECK(got[0].substr(got[0].find("\n\n") + 2) ==
        ".first line starts with a dot\n.\nafter a lone dot\n..two dots\nlast\n");
}

TEST_CASE("SmtpMailer: clear errors naming the server, curl's text and the SMTP reply", "[mail][smtp]") {
  REQUIRE_SMTPD();
  SmtpServer server;
  server.start();
  auto m = mailer(server.url());
  std::string message = compose(info("refused@example.org"), {warningEvent(1)});
  Status st = m->send("refused@example.org", message);
  REQUIRE_FALSE(st.ok());
  INFO(st.error().message);
  CHECK(st.error().code == kMailRecipientRefused);
  CHECK(st.error().message.rfind("mail: sending to refused@example.org via " + server.url() + ": ", 0) == 0);
  CHECK(st.error().message.find("RCPT failed: 550") != std::string::npos);
  CHECK(st.error().message.find("Recipient address rejected: unknown user") != std::string::npos);

  // STARTTLS required, not offered: nothing is sent in clear.
  SmtpMailer::Options o;
  o.url = server.url();
  o.from = "dockquota@example.org";
  o.starttls = true;
  o.username = "dq";
  o.password = "secret";
  auto tls = SmtpMailer::create(o);
  REQUIRE(tls.ok());
  st = (*tls)->send("alice@example.org", message);
  REQUIRE_FALSE(st.ok());
  INFO(st.error().message);
  CHECK(st.error().code == EPROTO);
  CHECK(st.error().message.find("STARTTLS") != std::string::npos);
  CHECK(st.error().message.find("secret") == std::string::npos);
  CHECK(server.messages().empty());

  // Nobody listening.
  server.stop();
  st = m->send("alice@example.org", message);
  REQUIRE_FALSE(st.ok());
  INFO(st.error().message);
  CHECK(st.error().code == ECONNREFUSED);
  CHECK(st.error().message.rfind("mail: sending to alice@example.org via " + server.url() + ": ", 0) == 0);
  CHECK(st.error().message.find("onnect") != std::string::npos);
}

TEST_CASE("SmtpMailer: smtps:// and starttls speak TLS and check the server's certificate", "[mail][smtp]") {
  REQUIRE_SMTPD();
  SmtpServer server;
  std::string cert = server.file("cert.pem"), key = server.file("key.pem");
  std::string cmd =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "
      "/CN=127.0.0.1 -keyout " +
      key + " -out " + cert + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    if (inCi()) FAIL("CI=true and openssl cannot make a test certificate");
    WARN("skipping: openssl cannot make a test certificate");
    return;
  }
  std::string message = compose(info(), {warningEvent(1)});
  SECTION("smtps://: TLS from the first byte") {
    server.start({"--smtpscert", cert, "--smtpskey", key});
    auto m = mailer("smtps://127.0.0.1:" + std::to_string(server.port()));
    Status st = m->send("alice@example.org", message);
    REQUIRE_FALSE(st.ok());
    INFO(st.error().message);
    CHECK(st.error().message.find("certificate") != std::string::npos);  // self-signed: refused
  }
  SECTION("smtp:// with starttls: upgraded before MAIL FROM") {
    server.start({"--tlscert", cert, "--tlskey", key, "--no-requiretls"});
    SmtpMailer::Options o;
    o.url = server.url();
    o.from = "dockquota@example.org";
    o.starttls = true;
    auto m = SmtpMailer::create(o);
    REQUIRE(m.ok());
    Status st = (*m)->send("alice@example.org", message);
    REQUIRE_FALSE(st.ok());
    INFO(st.error().message);
    CHECK(st.error().message.find("certificate") != std::string::npos);
    // Without starttls the same server takes the mail in clear.
    REQUIRE(mailer(server.url())->send("alice@example.org", message).ok());
    CHECK(server.waitForMessages(1).size() == 1);  // that one only
  }
}

TEST_CASE("MailNotifier + SmtpMailer: a burst of three events is one mail", "[mail][smtp]") {
  REQUIRE_SMTPD();
  SmtpServer server;
  server.start();
  auto m = mailer(server.url());
  FakeSpool spool;
  double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  spool.add(warningEvent(1, kAlice, "alice", now - 5));
  spool.add(event(2, event_type::kExceeded, kAlice, "alice",
                  {{"block_current", 11 * kGiB}, {"block_hard_limit", 10 * (kGiB >> 10)}}, now - 4));
  spool.add(stoppedEvent(3, kAlice, "alice", now - 3));
  auto o = notifierOptions();
  o.burst = 0s;
  MailNotifier n(spool, *m, directory({{"alice", "alice@example.org"}}), o);
  n.start();
  REQUIRE(waitUntil(3000ms, [&] { return spool.done().size() == 3; }));
  auto t0 = Clock::now();
  n.stop();
  CHECK(Clock::now() - t0 < 500ms);
  CHECK(spool.done() == std::map<int64_t, bool>{{1, true}, {2, true}, {3, true}});
  auto got = server.waitForMessages(1);
  REQUIRE(got.size() == 1);
  INFO(got[0]);
  CHECK(header(got[0], "Subject") == "[dockquota build-01] Docker disk quota: container stopped (3 notices)");
  CHECK(header(got[0], "X-RcptTo") == "alice@example.org");
  std::string b = flat(got[0].substr(got[0].find("\n\n") + 2));
  CHECK(b.find("reached 90%") != std::string::npos);
  CHECK(b.find("by 1.0 GiB (1,073,741,824 bytes)") != std::string::npos);
  CHECK(b.find("\"web\" (0123456789ab) was stopped") != std::string::npos);
  auto h = n.health();
  CHECK(h["mails_sent"] == 1);
  CHECK(h["events_mailed"] == 3);
  CHECK(h["pending"] == 0);
  CHECK(h["running"] == false);
}

TEST_CASE("MailNotifier + SmtpMailer: server down keeps events pending, server up delivers them", "[mail][smtp]") {
  REQUIRE_SMTPD();
  SmtpServer server;  // not started yet
  auto m = mailer(server.url());
  FakeSpool spool;
  double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  spool.add(warningEvent(1, kAlice, "alice", now));
  auto o = notifierOptions();
  o.burst = 0s;
  o.backoff_base = 50ms;
  o.backoff_cap = 200ms;
  MailNotifier n(spool, *m, directory({}, "{user}@example.org"), o);
  n.start();
  REQUIRE(waitUntil(2000ms, [&] { return n.health()["failures"].get<uint64_t>() >= 2; }));
  auto h = n.health();
  CHECK(h["failing"] == true);
  CHECK(h["last_error"].get<std::string>().find(server.url()) != std::string::npos);
  CHECK(h["pending"] == 1);
  CHECK(spool.done().empty());

  server.start();
  REQUIRE(waitUntil(3000ms, [&] { return spool.done().size() == 1; }));
  CHECK(spool.done().at(1) == true);
  REQUIRE(server.waitForMessages(1).size() == 1);
  h = n.health();
  CHECK(h["failing"] == false);
  CHECK(h["mails_sent"] == 1);
  n.stop();
}

TEST_CASE("MailNotifier::stop returns promptly, even with a send in progress", "[mail]") {
  // A server that accepts and never says a word: curl waits for its greeting.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(fd, 4) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  auto m = mailer("smtp://127.0.0.1:" + std::to_string(ntohs(a.sin_port)), 30s);
  FakeSpool spool;
  spool.add(warningEvent(1, kAlice, "alice", 1));
  auto o = notifierOptions();
  o.burst = 0s;
  MailNotifier n(spool, *m, directory({}, "{user}@example.org"), o);
  n.start();
  std::this_thread::sleep_for(300ms);  // waiting for the greeting by now
  auto t0 = Clock::now();
  n.stop();
  CHECK(Clock::now() - t0 < 300ms);
  CHECK(spool.done().empty());         // still pending
  CHECK(n.health()["failures"] == 0);  // being stopped is no failure
  ::close(fd);
}
