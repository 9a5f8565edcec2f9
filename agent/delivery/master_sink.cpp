// SPDX-License-Identifier: Apache-2.0
// Event delivery to the qman master; see master_sink.h for the design.
#include "agent/delivery/master_sink.h"

#include <curl/curl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <optional>

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
// Kept of a reply's body: the master's error bodies are one short JSON object;
// the bound keeps a misbehaving peer from filling the agent's memory. The rest
// is read and dropped, so a 2xx with a big body is still a 2xx.
constexpr size_t kMaxBody = 64u << 10;
// Longest sleep of the request loop: a stall is noticed at most this late.
constexpr long kMaxPollMs = 1000;

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
std::string masterMessage(const std::string& body) {
  if (body.empty()) return "(empty body)";
  json j = json::parse(body, nullptr, false);
  if (j.is_object() && j.contains("msg") && j["msg"].is_string()) return j["msg"].get<std::string>();
  return snippet(body);
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

void globalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// A part of a parsed URL, nullopt when the URL has none.
std::optional<std::string> urlPart(CURLU* u, CURLUPart part) {
  char* s = nullptr;
  const CURLUcode rc = curl_url_get(u, part, &s, 0);
  std::optional<std::string> out;
  if (rc == CURLUE_OK) out = s ? s : "";
  curl_free(s);
  return out;
}

// Why curl refused a URL, in the words of the checks that follow it.
std::string urlProblem(CURLUcode rc, const std::string& authority) {
  switch (rc) {
    case CURLUE_BAD_SCHEME:
    case CURLUE_BAD_SLASHES: return "want http://host[:port][/path] or https://...";
    case CURLUE_NO_HOST: return "no host";
    case CURLUE_BAD_PORT_NUMBER:
      if (authority[0] != '[' && std::count(authority.begin(), authority.end(), ':') > 1)
        return "an IPv6 address must be in brackets";
      return "bad port";
    case CURLUE_BAD_IPV6: return "bad IPv6 address in brackets";
    case CURLUE_BAD_LOGIN:
    case CURLUE_BAD_USER:
    case CURLUE_BAD_PASSWORD: return "user info is not allowed (the secret is its own option)";
    default: return curl_url_strerror(rc);
  }
}

// The path as cpp-httplib, the client before libcurl, put it on the wire
// (its encode_url: ' ', '+', '\'', ',', ';' and non-ASCII bytes as %XX), so
// that a master behind such a path sees the same request line as before.
// parseUrl() has refused spaces and control characters already.
std::string wirePath(const std::string& path) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : path) {
    if (c >= 0x80 || c == '+' || c == '\'' || c == ',' || c == ';') {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
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
  // curl drops an empty query or fragment ("http://m/#") without a trace.
  if (url.find_first_of("?#") != std::string::npos) return bad("a query or fragment is not allowed");
  const size_t sep = url.find("://");
  // The authority as written; curl has read "m:" as "m" and "m%41" as "mA" by the time it is asked.
  const std::string authority = sep == std::string::npos ? "" : url.substr(sep + 3, url.find('/', sep + 3) - sep - 3);

  globalInit();
  std::unique_ptr<CURLU, void (*)(CURLU*)> h(curl_url(), curl_url_cleanup);
  if (!h) return Error{ENOMEM, "master: cannot create a curl URL handle"};
  // As written: "/a/../b" stays, since the master's path is the admin's, not ours to resolve.
  const CURLUcode rc = curl_url_set(h.get(), CURLUPART_URL, url.c_str(), CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS);
  if (rc != CURLUE_OK) return bad(urlProblem(rc, authority));
  MasterUrl u;
  u.scheme = urlPart(h.get(), CURLUPART_SCHEME).value_or("");  // lower case
  if (u.scheme != "http" && u.scheme != "https") return bad("scheme must be http or https");
  // curl also takes "http:/m" and "http:///m".
  if (sep != u.scheme.size()) return bad("want http://host[:port][/path] or https://...");
  if (authority.empty()) return bad("no host");
  if (urlPart(h.get(), CURLUPART_USER) || urlPart(h.get(), CURLUPART_PASSWORD) || urlPart(h.get(), CURLUPART_OPTIONS))
    return bad("user info is not allowed (the secret is its own option)");

  u.host = urlPart(h.get(), CURLUPART_HOST).value_or("");
  if (!u.host.empty() && u.host[0] == '[') {  // checked by curl, but a zone (fe80::1%25eth0) is not for us
    if (urlPart(h.get(), CURLUPART_ZONEID) || authority.find('%') != std::string::npos)
      return bad("bad IPv6 address in brackets");
    u.host = u.host.substr(1, u.host.size() - 2);
  } else {
    if (authority.find('%') != std::string::npos) return bad("bad character '%' in the host");
    for (char c : u.host)  // curl takes IDN and more
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_')
        return bad(std::string("bad character '") + c + "' in the host");
  }

  if (auto port = urlPart(h.get(), CURLUPART_PORT)) {
    u.port = std::stoi(*port);  // curl checked: decimal, at most 65535
    if (u.port < 1) return bad("port out of range");
  } else if (authority.back() == ':') {
    return bad("bad port");
  } else {
    u.port = u.scheme == "https" ? 443 : 80;
  }
  std::string path = urlPart(h.get(), CURLUPART_PATH).value_or("");
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
  if (!sink->multi_) return Error{ENOMEM, "master: cannot set up a client for " + sink->post_url_ + " (curl)"};
  return sink;
}

MasterSink::MasterSink(EventSpool& spool, Options options, MasterUrl url)
    : spool_(spool),
      opt_(std::move(options)),
      url_(std::move(url)),
      post_url_(url_.scheme + "://" + hostForUrl(url_.host) + ":" + std::to_string(url_.port) + url_.path),
      request_url_(url_.scheme + "://" + hostForUrl(url_.host) + ":" + std::to_string(url_.port) +
                   wirePath(url_.path)) {
  globalInit();
  multi_ = curl_multi_init();
}

MasterSink::~MasterSink() {
  stop();
  if (multi_) curl_multi_cleanup(static_cast<CURLM*>(multi_));
}

// --- thread --------------------------------------------------------------------

void MasterSink::start() {
  if (worker_.running()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(false);
    cut_.store(false);
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
      cut_.store(true);  // the request loop gives up at its next step
      curl_multi_wakeup(static_cast<CURLM*>(multi_));
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

// One POST's transport and reply, filled in by exchange().
struct MasterSink::Exchange {
  CURLcode rc = CURLE_OK;  // curl's verdict, when it finished the transfer
  bool cut = false;        // by stop()
  bool stalled = false;    // connected, but nothing moved for `timeout`
  bool sent = false;       // the whole request went out: a stall was waiting for the reply
  long status = 0;
  std::string body;      // its first kMaxBody bytes
  std::string location;  // of a redirect
  long verify_result = X509_V_OK;
  char errbuf[CURL_ERROR_SIZE] = {};
};

namespace {

size_t keepBody(char* p, size_t size, size_t n, void* ud) noexcept {
  auto* body = static_cast<std::string*>(ud);
  const size_t len = size * n;
  try {
    body->append(p, std::min(len, kMaxBody - std::min(kMaxBody, body->size())));
  } catch (...) {  // bad_alloc: the body only explains a failure
  }
  return len;
}

// What the TLS context gets beyond curl's options.
struct TlsSetup {
  const std::string* host;
  bool system_cas;
};

// "the system's" CAs were OpenSSL's default paths under cpp-httplib (which
// honour SSL_CERT_FILE and SSL_CERT_DIR); curl's own default is a bundle path
// fixed at its build. And OpenSSL checks the host name during the handshake
// as well as curl after it: a mismatch then has its own verify result
// (X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH), where curl's check
// leaves CURLINFO_SSL_VERIFYRESULT at an unspecified error.
CURLcode setupTls(CURL*, void* ssl_ctx, void* ud) noexcept {
  const auto* t = static_cast<const TlsSetup*>(ud);
  auto* ctx = static_cast<SSL_CTX*>(ssl_ctx);
  if (t->system_cas && SSL_CTX_set_default_verify_paths(ctx) != 1) return CURLE_SSL_CACERT_BADFILE;
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx);
  const bool named = X509_VERIFY_PARAM_set1_ip_asc(param, t->host->c_str()) == 1 ||
                     X509_VERIFY_PARAM_set1_host(param, t->host->c_str(), 0) == 1;
  return named ? CURLE_OK : CURLE_SSL_CONNECT_ERROR;
}

struct CurlSlist {
  curl_slist* list = nullptr;
  ~CurlSlist() { curl_slist_free_all(list); }
  bool add(const std::string& line) {
    curl_slist* l = curl_slist_append(list, line.c_str());
    if (l) list = l;
    return l != nullptr;
  }
};

}  // namespace

MasterSink::Attempt MasterSink::post(const std::vector<Event>& batch) {
  json events = json::array();
  for (const Event& e : batch)
    events.push_back({{"host_user_name", e.user},
                      {"event_type", e.type},
                      {"detail", e.detail.is_null() ? json::object() : e.detail}});
  const json envelope = {{"host_id", opt_.host_id}, {"events", std::move(events)}};
  // Names come from the system and containers: invalid UTF-8 must not throw.
  const std::string body = envelope.dump(-1, ' ', false, json::error_handler_t::replace);

  Exchange x;
  in_flight_.store(true);
  exchange(body, x);
  in_flight_.store(false);

  Attempt a;
  a.where = "POST " + post_url_;
  const bool replied = !x.cut && !x.stalled && x.rc == CURLE_OK;
  if (stop_.load() && !replied) {
    a.stopped = true;
    return a;
  }
  if (replied) {
    a.status = static_cast<int>(x.status);
    if (x.status >= 200 && x.status < 300) {
      a.ok = true;
      return a;
    }
    a.key = "http " + std::to_string(x.status);
    a.error = "HTTP " + std::to_string(x.status) + ": " + masterMessage(x.body);
    // 400/401/403/404... do not heal by themselves (secret, host_id, url);
    // 408 and 429 are load, like 5xx.
    a.needs_admin = x.status >= 400 && x.status < 500 && x.status != 408 && x.status != 429;
    if (x.status == 401 || x.status == 403) a.error += " (check the secret against the master's SLAVE_EVENT_SECRET)";
    if (x.status == 404) a.error += " (check the url's path)";
    if (x.status >= 300 && x.status < 400) a.error += " (redirect to " + x.location + ")";
    return a;
  }
  transportFailure(x, a);
  return a;
}

// One POST on multi_, driven step by step: stop() can cut it at any point,
// and the loop applies `timeout` the way it is meant, to each wait for the
// master (curl's own timeouts are for the whole transfer or an average speed).
void MasterSink::exchange(const std::string& body, Exchange& x) {
  auto* multi = static_cast<CURLM*>(multi_);
  std::unique_ptr<CURL, void (*)(CURL*)> easy(curl_easy_init(), curl_easy_cleanup);
  CurlSlist headers;
  const bool https = url_.scheme == "https";
  const TlsSetup tls{&url_.host, opt_.ca_file.empty()};
  // The headers cpp-httplib sent, but for its User-Agent (curl sends none).
  // A connection per batch: an idle keep-alive connection the master (or a
  // proxy) closed would fail the next POST for nothing. The empty Expect keeps
  // curl from waiting for a 100 Continue before a big body.
  const std::string lines[] = {
      "X-API-Key: " + opt_.secret, "Accept: application/json", "Content-Type: application/json",
      "User-Agent: dockquotad",    "Connection: close",        "Expect:"};
  bool ok = easy != nullptr;
  for (const std::string& line : lines) ok = ok && headers.add(line);
  if (!ok) {
    x.rc = CURLE_OUT_OF_MEMORY;
    return;
  }
  CURL* c = easy.get();
  const long connect_ms = static_cast<long>(std::min(opt_.timeout, kConnectTimeout).count());
  curl_easy_setopt(c, CURLOPT_URL, request_url_.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(c, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
  curl_easy_setopt(c, CURLOPT_PROXY, "");  // the *_proxy environment is not the master's url
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, x.errbuf);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
  curl_easy_setopt(c, CURLOPT_FORBID_REUSE, 1L);
  // A redirect is a misconfigured url: reported, not followed with the secret.
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.list);
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keepBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &x.body);
  if (https) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);  // curl's defaults; said out loud
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    // ca_file alone, or OpenSSL's default paths (setupTls): never curl's build-time bundle or dir.
    curl_easy_setopt(c, CURLOPT_CAPATH, nullptr);
    curl_easy_setopt(c, CURLOPT_CAINFO, opt_.ca_file.empty() ? nullptr : opt_.ca_file.c_str());
    curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, setupTls);
    curl_easy_setopt(c, CURLOPT_SSL_CTX_DATA, &tls);
  }
  if (curl_multi_add_handle(multi, c) != CURLM_OK) {
    x.rc = CURLE_OUT_OF_MEMORY;
    return;
  }
  drive(c, body.size(), x);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x.status);
  curl_easy_getinfo(c, CURLINFO_SSL_VERIFYRESULT, &x.verify_result);
  curl_header* loc = nullptr;
  if (curl_easy_header(c, "Location", 0, CURLH_HEADER, -1, &loc) == CURLHE_OK && loc) x.location = loc->value;
  curl_multi_remove_handle(multi, c);
}

// Runs the transfer on multi_ until it ends, stop() cuts it, or nothing moves
// for `timeout` once connected: cpp-httplib's read and write timeouts, which
// bounded each wait for the master, not the whole request.
void MasterSink::drive(void* easy, size_t body_size, Exchange& x) {
  auto* multi = static_cast<CURLM*>(multi_);
  auto* c = static_cast<CURL*>(easy);
  const bool https = url_.scheme == "https";
  bool connected = false;
  curl_off_t up = -1, down = -1;
  long header_bytes = -1;
  Clock::time_point moved = Clock::now();
  for (;;) {
    if (cut_.load()) {
      x.cut = true;
      return;
    }
    int running = 0;
    if (curl_multi_perform(multi, &running) != CURLM_OK) {
      x.rc = CURLE_OUT_OF_MEMORY;  // the multi interface fails only on bad use or memory
      return;
    }
    int queued = 0;
    while (CURLMsg* m = curl_multi_info_read(multi, &queued))
      if (m->msg == CURLMSG_DONE) {
        x.rc = m->data.result;
        return;
      }
    curl_off_t now_up = 0, now_down = 0, connect_us = 0;
    long now_headers = 0;
    curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &now_up);
    curl_easy_getinfo(c, CURLINFO_SIZE_DOWNLOAD_T, &now_down);
    curl_easy_getinfo(c, CURLINFO_HEADER_SIZE, &now_headers);
    curl_easy_getinfo(c, https ? CURLINFO_APPCONNECT_TIME_T : CURLINFO_CONNECT_TIME_T, &connect_us);
    const auto now = Clock::now();
    if (connect_us > 0 && !connected) {
      connected = true;  // the connect had its own timeout
      moved = now;
    }
    if (now_up != up || now_down != down || now_headers != header_bytes) {
      up = now_up;
      down = now_down;
      header_bytes = now_headers;
      moved = now;
    }
    x.sent = up >= static_cast<curl_off_t>(body_size);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(moved + opt_.timeout - now);
    if (connected && left.count() <= 0) {
      x.stalled = true;
      return;
    }
    const long wait_ms = connected ? std::clamp<long>(static_cast<long>(left.count()), 1, kMaxPollMs) : kMaxPollMs;
    if (running > 0 && curl_multi_poll(multi, nullptr, 0, static_cast<int>(wait_ms), nullptr) != CURLM_OK) {
      x.rc = CURLE_OUT_OF_MEMORY;
      return;
    }
  }
}

void MasterSink::transportFailure(const Exchange& x, Attempt& a) const {
  const std::string hp = hostForUrl(url_.host) + ":" + std::to_string(url_.port);
  const std::string no_reply = "no reply (connection closed, or nothing within " + seconds(opt_.timeout) + ")";
  const std::string no_send =
      "cannot send the request (connection closed, or stalled for " + seconds(opt_.timeout) + ")";
  if (x.stalled) {
    a.key = x.sent ? "transport read" : "transport write";
    a.error = x.sent ? no_reply : no_send;
    return;
  }
  switch (x.rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
      a.key = "transport connect";
      a.error = "cannot connect to " + hp;
      break;
    case CURLE_OPERATION_TIMEDOUT:  // the only curl timeout set is the connect's
      a.key = "transport connect timeout";
      a.error = "no connection to " + hp + " within " + seconds(std::min(opt_.timeout, kConnectTimeout));
      break;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
      a.key = "transport read";
      a.error = no_reply;
      break;
    case CURLE_SEND_ERROR:
      a.key = "transport write";
      a.error = no_send;
      break;
    case CURLE_SSL_CONNECT_ERROR:
      a.key = "transport tls";
      a.error = "TLS handshake with " + hp + " failed";
      break;
    case CURLE_SSL_CACERT_BADFILE:
      a.key = "transport ca";
      a.error = "cannot load CA certificates from " + (opt_.ca_file.empty() ? "the system store" : opt_.ca_file);
      break;
    case CURLE_PEER_FAILED_VERIFICATION: {
      const long v = x.verify_result;
      const std::string cas =
          opt_.ca_file.empty() ? "system CAs; set ca_file for a private CA" : "CA file " + opt_.ca_file;
      a.key = "transport verify " + std::to_string(v);
      const bool other_host =
          v == X509_V_OK || v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH;
      a.error = !other_host
                    ? "certificate of " + hp + " not trusted: " + X509_verify_cert_error_string(v) + " (" + cas + ")"
                    : "certificate of " + hp + " is not for host " + url_.host;
      break;
    }
    default:
      a.key = "transport curl " + std::to_string(static_cast<int>(x.rc));
      a.error = x.errbuf[0] ? std::string(x.errbuf) : std::string(curl_easy_strerror(x.rc));
  }
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
