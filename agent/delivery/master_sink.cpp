// SPDX-License-Identifier: Apache-2.0
// Event delivery to the qman master; see master_sink.h for the design.
#include "agent/delivery/master_sink.h"

#include <openssl/x509.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cstdio>

#include <httplib.h>

#include "agent/base/backoff.h"
#include "agent/base/clock.h"
#include "agent/base/log.h"

namespace dockquota {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kLog = "master";
constexpr const char* kEventsPath = "/api/internal/slave-events";  // spec §5
// Between two tries to cut a request in flight during stop(): the request may
// be between connecting and sending, where there is no socket to shut yet.
constexpr auto kStopPoll = std::chrono::milliseconds(20);
// Of a failed reply's body, in logs and last_error: the master's are one short
// {"msg": ...}; a proxy's HTML page is cut.
constexpr size_t kMaxBodySnippet = 200;

bool isControl(char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; }

std::string snippet(const std::string& body) {
  std::string s = body.substr(0, kMaxBodySnippet);
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  if (body.size() > kMaxBodySnippet) s += "...";
  return s;
}

// The master's error bodies are {"msg": "..."} (spec §1, §5); anything else is quoted.
std::string masterMessage(const httplib::Response& r) {
  if (r.body.empty()) return "(empty body)";
  json j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("msg") && j["msg"].is_string()) return j["msg"].get<std::string>();
  return snippet(r.body);
}

std::string seconds(std::chrono::milliseconds d) {
  char buf[32];
  if (d < std::chrono::seconds(1))
    std::snprintf(buf, sizeof buf, "%lld ms", static_cast<long long>(d.count()));
  else
    std::snprintf(buf, sizeof buf, "%.1f s", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

std::string span(Clock::duration d) {
  const long long s = std::chrono::duration_cast<std::chrono::seconds>(d).count();
  char buf[48];
  if (s < 120)
    std::snprintf(buf, sizeof buf, "%lld s", s);
  else if (s < 7200)
    std::snprintf(buf, sizeof buf, "%lld min", s / 60);
  else
    std::snprintf(buf, sizeof buf, "%lld h %02lld min", s / 3600, s / 60 % 60);
  return buf;
}

std::string hostForUrl(const std::string& host) {
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

}  // namespace

// One POST: its outcome, and what to log about a failure.
struct MasterSink::Attempt {
  bool ok = false;
  bool stopped = false;      // cut by stop(): neither a success nor a failure
  int status = 0;            // HTTP status, 0 without a reply
  std::string key;           // kind of failure: a new kind is logged at once
  std::string error;         // for the log and last_error
  bool needs_admin = false;  // the master refused us (4xx), or our spool failed: log at ERROR
  std::string where;         // what failed: "POST <url>", or the spool
};

// --- options -----------------------------------------------------------------

Result<MasterUrl> MasterSink::parseUrl(const std::string& url) {
  auto bad = [&](const std::string& why) { return Error{EINVAL, "master: bad url \"" + url + "\": " + why}; };
  if (url.empty()) return bad("empty");
  if (std::any_of(url.begin(), url.end(), isControl)) return bad("contains spaces or control characters");
  const size_t sep = url.find("://");
  if (sep == std::string::npos) return bad("want http://host[:port][/path] or https://...");
  MasterUrl u;
  u.scheme = url.substr(0, sep);
  std::transform(u.scheme.begin(), u.scheme.end(), u.scheme.begin(), [](unsigned char c) { return std::tolower(c); });
  if (u.scheme != "http" && u.scheme != "https") return bad("scheme must be http or https");
  const std::string rest = url.substr(sep + 3);
  if (rest.find_first_of("?#") != std::string::npos) return bad("a query or fragment is not allowed");
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  std::string path = slash == std::string::npos ? "" : rest.substr(slash);
  if (authority.find('@') != std::string::npos) return bad("user info is not allowed (the secret is its own option)");

  std::string port;
  bool has_port = false;
  if (!authority.empty() && authority[0] == '[') {  // [IPv6]
    const size_t close = authority.find(']');
    if (close == std::string::npos) return bad("unclosed '[' in the host");
    u.host = authority.substr(1, close - 1);
    if (u.host.empty() || u.host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos)
      return bad("bad IPv6 address in brackets");
    const std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("junk after ']'");
      port = after.substr(1);
      has_port = true;
    }
  } else {
    const size_t colon = authority.find(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) {
      port = authority.substr(colon + 1);
      has_port = true;
      if (port.find(':') != std::string::npos) return bad("an IPv6 address must be in brackets");
    }
    if (u.host.empty()) return bad("no host");
    for (char c : u.host)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_')
        return bad(std::string("bad character '") + c + "' in the host");
  }
  if (has_port) {
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos)
      return bad("bad port");
    u.port = std::stoi(port);
    if (u.port < 1 || u.port > 65535) return bad("port out of range");
  } else {
    u.port = u.scheme == "https" ? 443 : 80;
  }
  while (!path.empty() && path.back() == '/') path.pop_back();  // the master's own URLs have none either
  u.path = path + kEventsPath;
  return u;
}

Status MasterSink::validate(const Options& o) {
  auto u = parseUrl(o.url);
  if (!u) return u.error();
  if (o.host_id.empty())
    return Error{EINVAL, "master: host_id is empty (it must be this slave's id in the master's SLAVES)"};
  if (o.secret.empty()) return Error{EINVAL, "master: the secret is empty (the master's SLAVE_EVENT_SECRET)"};
  // It goes into a header line.
  if (std::any_of(o.secret.begin(), o.secret.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
    return Error{EINVAL, "master: the secret contains control characters"};
  if (o.batch_max == 0) return Error{EINVAL, "master: batch_max must be at least 1"};
  if (o.timeout.count() <= 0) return Error{EINVAL, "master: timeout must be positive"};
  if (!o.ca_file.empty()) {
    if (u->scheme != "https")
      return Error{EINVAL, "master: ca_file " + o.ca_file + " is set but url \"" + o.url + "\" is not https"};
    if (::access(o.ca_file.c_str(), R_OK) != 0) return osError(errno, "master: ca_file " + o.ca_file);
  }
  return {};
}

Result<std::unique_ptr<MasterSink>> MasterSink::create(EventSpool& spool, Options options) {
  if (Status st = validate(options); !st) return st.error();
  MasterUrl url = *parseUrl(options.url);
  std::unique_ptr<MasterSink> sink(new MasterSink(spool, std::move(options), std::move(url)));
  if (!sink->cli_->is_valid())
    return Error{EINVAL, "master: cannot set up a client for " + sink->post_url_ + " (TLS context)"};
  return sink;
}

MasterSink::MasterSink(EventSpool& spool, Options options, MasterUrl url)
    : spool_(spool),
      opt_(std::move(options)),
      url_(std::move(url)),
      post_url_(url_.scheme + "://" + hostForUrl(url_.host) + ":" + std::to_string(url_.port) + url_.path) {
  if (url_.scheme == "https") {
    auto c = std::make_unique<httplib::SSLClient>(url_.host, url_.port);
    if (!opt_.ca_file.empty()) c->set_ca_cert_path(opt_.ca_file);  // else the system's (OpenSSL default paths)
    c->enable_server_certificate_verification(true);               // httplib's default; said out loud
    cli_ = std::move(c);
  } else {
    cli_ = std::make_unique<httplib::ClientImpl>(url_.host, url_.port);
  }
  cli_->set_connection_timeout(std::min(opt_.timeout, std::chrono::milliseconds(kConnectTimeout)));
  cli_->set_read_timeout(opt_.timeout);
  cli_->set_write_timeout(opt_.timeout);
  // A connection per batch: an idle keep-alive connection the master (or a
  // proxy) closed would fail the next POST for nothing.
  cli_->set_keep_alive(false);
  cli_->set_follow_location(false);  // a redirect is a misconfigured url: reported, not followed with the secret
}

MasterSink::~MasterSink() { stop(); }

// --- thread --------------------------------------------------------------------

void MasterSink::start() {
  if (worker_.running()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(false);
    done_ = false;
  }
  running_.store(true);
  refreshPending();
  LOG_INFO(kLog, "delivering events to %s (%" PRIu64 " pending)", post_url_.c_str(), pending_.load());
  worker_.start(
      "dq-master",
      [this] {
        run();
        running_.store(false);
        {
          std::lock_guard<std::mutex> lock(mu_);
          done_ = true;
        }
        cv_.notify_all();
      },
      [this] { halt(); });
}

void MasterSink::stop() {
  worker_.requestStop();
  if (!worker_.running() || worker_.onThisThread()) return;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (in_flight_.load()) cv_.wait_for(lock, kStopGrace, [this] { return done_; });
    while (!done_) {
      lock.unlock();
      cli_->stop();  // shuts the socket of a request in flight; waits out a connect in progress
      lock.lock();
      cv_.wait_for(lock, kStopPoll, [this] { return done_; });
    }
  }
  worker_.stop();
}

void MasterSink::halt() {
  {
    std::lock_guard<std::mutex> lock(mu_);  // no lost wakeup against the waits in run()
    stop_.store(true);
  }
  cv_.notify_all();
}

void MasterSink::wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    woken_ = true;
  }
  cv_.notify_all();
}

bool MasterSink::waitFor(std::chrono::milliseconds d, bool wake_ends) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, d, [&] { return stop_.load() || (wake_ends && woken_); });
  return !stop_.load();
}

void MasterSink::run() {
  Backoff backoff(opt_.backoff_base, opt_.backoff_cap);
  // Seqs the master took but the spool failed to mark: marked again, not sent again.
  std::vector<int64_t> unmarked;
  while (!stop_.load()) {
    std::chrono::milliseconds delay{0};
    try {
      if (!unmarked.empty()) {
        Status st = spool_.delivered(Channel::Master, unmarked, true, unixNow());
        if (!st) {
          delay = backoff.next();
          LOG_ERROR(kLog, "the master took %zu events but marking them delivered failed: %s; retrying in %s",
                    unmarked.size(), st.error().message.c_str(), seconds(delay).c_str());
          waitFor(delay, false);
          continue;
        }
        unmarked.clear();
        backoff.reset();
      }

      {
        std::lock_guard<std::mutex> lock(mu_);
        woken_ = false;  // before reading: an event recorded after this read wakes the idle wait
      }
      auto batch = spool_.pending(Channel::Master, opt_.batch_max);
      Attempt a;
      if (!batch) {
        a.key = "spool";
        a.where = "event spool";
        a.error = "cannot read pending events: " + batch.error().message;
        a.needs_admin = true;
      } else if (batch->empty()) {
        pending_.store(0);
        oldest_pending_at_.store(0);
        finishRecovery();
        waitFor(kIdleRecheck, true);
        continue;
      } else {
        oldest_pending_at_.store(batch->front().created_at);
        a = post(*batch);
        if (a.stopped) break;
        last_status_.store(a.status);
        last_attempt_at_.store(unixNow());
      }

      if (a.ok) {
        std::vector<int64_t> seqs;
        seqs.reserve(batch->size());
        for (const Event& e : *batch) seqs.push_back(e.seq);
        noteSuccess(*batch);
        backoff.reset();
        Status st = spool_.delivered(Channel::Master, seqs, true, unixNow());
        if (!st) {
          unmarked = std::move(seqs);
          continue;  // retried (and logged) at the top
        }
        refreshPending();
        continue;  // more may be pending: no wait
      }
      refreshPending();
      delay = backoff.next();
      noteFailure(a, delay);
    } catch (const std::exception& e) {  // bad_alloc, or a spool that throws: keep the thread alive
      delay = backoff.next();
      LOG_ERROR(kLog, "delivery round failed: %s; retrying in %s", e.what(), seconds(delay).c_str());
    }
    waitFor(delay, false);  // a wake() does not cut a backoff short
  }
}

MasterSink::Attempt MasterSink::post(const std::vector<Event>& batch) {
  json events = json::array();
  for (const Event& e : batch)
    events.push_back({{"host_user_name", e.user},
                      {"event_type", e.type},
                      {"detail", e.detail.is_null() ? json::object() : e.detail}});
  const json envelope = {{"host_id", opt_.host_id}, {"events", std::move(events)}};
  // Names come from the system and containers: invalid UTF-8 must not throw.
  const std::string body = envelope.dump(-1, ' ', false, json::error_handler_t::replace);
  const httplib::Headers headers = {{"X-API-Key", opt_.secret}, {"Accept", "application/json"}};

  in_flight_.store(true);
  httplib::Result r = cli_->Post(url_.path, headers, body, "application/json");
  in_flight_.store(false);

  Attempt a;
  a.where = "POST " + post_url_;
  if (stop_.load() && !r) {
    a.stopped = true;
    return a;
  }
  if (r) {
    a.status = r->status;
    if (r->status >= 200 && r->status < 300) {
      a.ok = true;
      return a;
    }
    a.key = "http " + std::to_string(r->status);
    a.error = "HTTP " + std::to_string(r->status) + ": " + masterMessage(*r);
    // 400/401/403/404... do not heal by themselves (secret, host_id, url);
    // 408 and 429 are load, like 5xx.
    a.needs_admin = r->status >= 400 && r->status < 500 && r->status != 408 && r->status != 429;
    if (r->status == 401 || r->status == 403) a.error += " (check the secret against the master's SLAVE_EVENT_SECRET)";
    if (r->status == 404) a.error += " (check the url's path)";
    if (r->status >= 300 && r->status < 400) a.error += " (redirect to " + r->get_header_value("Location") + ")";
    return a;
  }
  const httplib::Error err = r.error();
  a.key = "transport " + std::to_string(static_cast<int>(err));
  const std::string hp = hostForUrl(url_.host) + ":" + std::to_string(url_.port);
  switch (err) {
    case httplib::Error::Connection:
      a.error = "cannot connect to " + hp;
      break;
    case httplib::Error::ConnectionTimeout:
      a.error = "no connection to " + hp + " within " +
                seconds(std::min(opt_.timeout, std::chrono::milliseconds(kConnectTimeout)));
      break;
    case httplib::Error::Read:
      a.error = "no reply (connection closed, or nothing within " + seconds(opt_.timeout) + ")";
      break;
    case httplib::Error::Write:
      a.error = "cannot send the request (connection closed, or stalled for " + seconds(opt_.timeout) + ")";
      break;
    case httplib::Error::SSLConnection:
      a.error = "TLS handshake with " + hp + " failed";
      break;
    case httplib::Error::SSLLoadingCerts:
      a.error = "cannot load CA certificates from " + (opt_.ca_file.empty() ? "the system store" : opt_.ca_file);
      break;
    case httplib::Error::SSLServerVerification: {
      long v = static_cast<httplib::SSLClient*>(cli_.get())->get_openssl_verify_result();
      const std::string cas =
          opt_.ca_file.empty() ? "system CAs; set ca_file for a private CA" : "CA file " + opt_.ca_file;
      a.error = v != X509_V_OK
                    ? "certificate of " + hp + " not trusted: " + X509_verify_cert_error_string(v) + " (" + cas + ")"
                    : "certificate of " + hp + " is not for host " + url_.host;
      a.key += " " + std::to_string(v);
      break;
    }
    default:
      a.error = httplib::to_string(err);
  }
  return a;
}

// --- stats and logs --------------------------------------------------------------

FailureLogGate::Verdict FailureLogGate::failed(const std::string& key, Clock::time_point now) {
  Verdict v = Verdict::Quiet;
  if (attempts_++ == 0) {
    since_ = now;
    v = Verdict::First;
  } else if (key != key_) {
    v = Verdict::Changed;
  } else if (now - logged_at_ >= repeat_) {
    v = Verdict::Repeated;
  }
  if (v != Verdict::Quiet) {
    key_ = key;
    logged_at_ = now;
  }
  return v;
}

bool FailureLogGate::succeeded() {
  if (attempts_ == 0) return false;
  attempts_ = 0;
  key_.clear();
  return true;
}

void MasterSink::setLastError(std::string error) {
  std::lock_guard<std::mutex> lock(error_mu_);
  last_error_ = std::move(error);
}

void MasterSink::refreshPending() {
  auto n = spool_.pendingCount(Channel::Master);
  if (!n) return;  // keep the last figure; the next round reports the spool error
  pending_.store(*n);
  if (*n == 0) oldest_pending_at_.store(0);
}

void MasterSink::noteSuccess(const std::vector<Event>& batch) {
  events_sent_.fetch_add(batch.size());
  batches_sent_.fetch_add(1);
  consecutive_failures_.store(0);
  last_success_at_.store(unixNow());
  setLastError("");
  const uint64_t attempts = gate_.attempts();
  const auto since = gate_.since();
  if (gate_.succeeded()) {  // a run of failures ended
    recovering_ = true;
    recovered_events_ = 0;
    recovered_after_attempts_ = attempts;
    recovered_after_ = Clock::now() - since;
  }
  if (recovering_) recovered_events_ += batch.size();
  LOG_DEBUG(kLog, "delivered %zu events (%" PRId64 "..%" PRId64 ")", batch.size(), batch.front().seq, batch.back().seq);
}

// After an outage: one line once the backlog is gone (or the next failure
// interrupts it), rather than one per batch.
void MasterSink::finishRecovery() {
  if (!recovering_) return;
  recovering_ = false;
  LOG_NOTICE(kLog, "delivery to %s recovered after %" PRIu64 " failed attempts over %s: %" PRIu64 " events delivered",
             post_url_.c_str(), recovered_after_attempts_, span(recovered_after_).c_str(), recovered_events_);
}

void MasterSink::noteFailure(const Attempt& a, std::chrono::milliseconds delay) {
  failures_.fetch_add(1);
  consecutive_failures_.fetch_add(1);
  setLastError(a.error);
  const auto now = Clock::now();
  const unsigned long long pending = pending_.load();
  const FailureLogGate::Verdict v = gate_.failed(a.key, now);
  if (v == FailureLogGate::Verdict::Quiet) {
    LOG_DEBUG(kLog, "%s: %s; retrying in %s", a.where.c_str(), a.error.c_str(), seconds(delay).c_str());
    return;
  }
  const log::Level level = a.needs_admin ? log::Level::Error : log::Level::Warning;
  if (v == FailureLogGate::Verdict::First) {
    finishRecovery();  // an unfinished drain: its count, before the new trouble
    log::write(level, kLog, "%s: %s; %llu pending, retrying in %s", a.where.c_str(), a.error.c_str(), pending,
               seconds(delay).c_str());
  } else {
    log::write(level, kLog, "%s: %s; failing for %s (%" PRIu64 " attempts), %llu pending, retrying in %s",
               a.where.c_str(), a.error.c_str(), span(now - gate_.since()).c_str(), gate_.attempts(), pending,
               seconds(delay).c_str());
  }
}

MasterSink::Stats MasterSink::stats() const {
  Stats s;
  s.events_sent = events_sent_.load();
  s.batches_sent = batches_sent_.load();
  s.failures = failures_.load();
  s.consecutive_failures = consecutive_failures_.load();
  s.last_status = last_status_.load();
  {
    std::lock_guard<std::mutex> lock(error_mu_);
    s.last_error = last_error_;
  }
  s.last_success_at = last_success_at_.load();
  s.last_attempt_at = last_attempt_at_.load();
  s.pending = pending_.load();
  s.oldest_pending_at = oldest_pending_at_.load();
  return s;
}

json MasterSink::health() const {
  const Stats s = stats();
  json h = {{"url", post_url_},
            {"state", s.consecutive_failures > 0 ? "failing" : "ok"},
            {"running", running_.load()},
            {"events_sent", s.events_sent},
            {"batches_sent", s.batches_sent},
            {"failures", s.failures},
            {"consecutive_failures", s.consecutive_failures},
            {"last_status", s.last_status},
            {"last_error", s.last_error},
            {"last_success_at", s.last_success_at},
            {"last_attempt_at", s.last_attempt_at},
            {"pending", s.pending}};
  h["oldest_pending_age_seconds"] = s.oldest_pending_at > 0 ? std::max(0.0, unixNow() - s.oldest_pending_at) : 0.0;
  return h;
}

}  // namespace dockquota
