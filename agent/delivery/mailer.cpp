// SPDX-License-Identifier: Apache-2.0
// Quota mail: SmtpMailer (libcurl), composeMail, EmailDirectory, planMails and
// the MailNotifier thread.
//
// SmtpMailer opens one connection per message: a mail goes out at most every
// few minutes per user, so keep-alive would only hold a relay connection open
// for nothing. curl does the SMTP dialogue, the dot-stuffing of lines that
// start with "." and the final "." line; we hand it the finished message.
//
// composeMail never trusts what it prints: names, ids and the host come from
// Docker, the passwd database or the config, and anything that reaches a
// header is stripped of control characters (no header injection) and encoded
// per RFC 2047 when it is not ASCII.
#include "agent/delivery/mailer.h"

#include <curl/curl.h>
#include <time.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <string_view>

#include "agent/base/base64.h"
#include "agent/base/clock.h"
#include "agent/base/log.h"
#include "agent/base/short_id.h"

namespace dockquota {
namespace {

using nlohmann::json;

constexpr const char* kLog = "mail";
// Events fetched per pass. A user has a handful per burst; 1000 covers a host
// where hundreds of users went over a shared limit at once.
constexpr size_t kBatch = 1000;
// Events described one by one in a mail; more are counted, not listed, so a
// long outage of the relay does not end in a mail nobody reads to the end.
constexpr size_t kMaxListed = 50;
// Longest value printed from outside (names, host); container names are at
// most 253 bytes in practice, user names 32.
constexpr size_t kMaxValue = 128;
// The sliding window of max_per_hour.
constexpr double kHour = 3600;
// How far in the future an event's time may be before planMails takes it for
// a clock stepped back (seconds).
constexpr double kClockSlack = 60;
// A curl connect that takes longer than this will not succeed; the rest of
// `timeout` is for the exchange itself.
constexpr long kMaxConnectTimeoutMs = 15000;
// Kept of the server's last reply line, for error messages.
constexpr size_t kMaxReply = 200;

void globalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

bool isControl(unsigned char c) { return c < 0x20 || c == 0x7f; }

// Cuts `s` to at most `max` bytes without splitting a UTF-8 sequence.
void truncateUtf8(std::string& s, size_t max) {
  if (s.size() <= max) return;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) --n;
  s.resize(n);
}

// Control characters (CR, LF, TAB, ESC, DEL...) out, then at most `max` bytes.
std::string clean(std::string_view s, size_t max = kMaxValue) {
  std::string out;
  out.reserve(std::min(s.size(), max + 4));
  for (unsigned char c : s)
    if (!isControl(c)) out += static_cast<char>(c);
  while (!out.empty() && out.back() == ' ') out.pop_back();
  size_t lead = out.find_first_not_of(' ');
  out.erase(0, lead == std::string::npos ? out.size() : lead);
  truncateUtf8(out, max);
  return out;
}

bool isAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// Header text: control characters gone; not ASCII -> RFC 2047 encoded words
// of at most 45 bytes each (60 base64 characters, under the 75 allowed),
// split between UTF-8 sequences and folded onto their own lines.
std::string headerText(std::string_view s, size_t max = kMaxValue) {
  std::string c = clean(s, max);
  if (isAscii(c)) return c;
  std::string out;
  size_t i = 0;
  while (i < c.size()) {
    size_t n = std::min<size_t>(45, c.size() - i);
    while (i + n < c.size() && n > 0 && (static_cast<unsigned char>(c[i + n]) & 0xc0) == 0x80) --n;
    if (n == 0) n = std::min<size_t>(45, c.size() - i);  // not UTF-8: any cut will do
    if (!out.empty()) out += "\r\n ";
    out += "=?utf-8?B?" + base64Encode(std::string_view(c).substr(i, n)) + "?=";
    i += n;
  }
  return out;
}

// A display name: atoms and spaces as they are, other ASCII as a quoted
// string, the rest as encoded words.
std::string displayName(std::string_view s) {
  std::string c = clean(s);
  if (!isAscii(c)) return headerText(c);
  bool plain = std::all_of(c.begin(), c.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) ||
           std::string_view(" !#$%&'*+-/=?^_`{|}~").find(ch) != std::string_view::npos;
  });
  if (plain) return c;
  std::string q = "\"";
  for (char ch : c) {
    if (ch == '"' || ch == '\\') q += '\\';
    q += ch;
  }
  return q + "\"";
}

// The host as a domain for Message-ID: letters, digits, '-' and '.' only.
std::string domainPart(std::string_view host) {
  std::string d;
  for (char c : host) {
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || (c == '.' && !d.empty() && d.back() != '.')) d += c;
  }
  while (!d.empty() && d.back() == '.') d.pop_back();
  if (d.size() > 200) d.resize(200);
  return d.empty() ? "dockquota.invalid" : d;
}

// RFC 5322 section 3.3 in UTC: "Thu, 13 Feb 2025 14:05:09 +0000".
std::string rfc5322Date(double unix_s) {
  static constexpr const char* kDays[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t t = static_cast<time_t>(std::floor(unix_s));
  tm u{};
  gmtime_r(&t, &u);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000", kDays[u.tm_wday % 7], u.tm_mday,
                kMonths[u.tm_mon % 12], u.tm_year + 1900, u.tm_hour, u.tm_min, u.tm_sec);
  return buf;
}

// "2025-02-13 14:05 UTC", for the body.
std::string whenText(double unix_s) {
  if (!(unix_s > 0) || !std::isfinite(unix_s)) return "";
  time_t t = static_cast<time_t>(unix_s);
  tm u{};
  gmtime_r(&t, &u);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02d %02d:%02d UTC", u.tm_year + 1900, u.tm_mon + 1, u.tm_mday, u.tm_hour,
                u.tm_min);
  return buf;
}

// "<ms>.<random>.<n>@host": unique across agents (random), restarts (time)
// and mails within one millisecond (counter).
std::string newMessageId(const std::string& host) {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t random = [] {
    std::random_device rd;
    return static_cast<uint64_t>(rd()) << 32 ^ rd();
  }();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
                .count();
  char buf[96];
  std::snprintf(buf, sizeof buf, "%lld.%016llx.%llu", static_cast<long long>(ms),
                static_cast<unsigned long long>(random), static_cast<unsigned long long>(counter.fetch_add(1)));
  return "<" + std::string(buf) + "@" + domainPart(host) + ">";
}

std::string thousands(uint64_t v) {
  std::string digits = std::to_string(v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Joins words that wrap() must not split ("10.0 GiB", "(1,024 bytes)"); it
// prints as a space. A control character, so nothing from outside carries one.
constexpr char kGlue = '\x01';

// "9.3 GiB (9,987,654,321 bytes)", glued for wrap().
std::string figure(uint64_t bytes) {
  std::string s = bytes < 1024 ? thousands(bytes) + (bytes == 1 ? " byte" : " bytes")
                               : humanBytes(bytes) + " (" + thousands(bytes) + " bytes)";
  std::replace(s.begin(), s.end(), ' ', kGlue);
  return s;
}

// --- event details, read defensively ------------------------------------------

std::optional<uint64_t> u64Field(const json& d, const char* key) {
  if (!d.is_object()) return std::nullopt;
  auto it = d.find(key);
  if (it == d.end()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer()) {
    int64_t v = it->get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
    return std::nullopt;
  }
  if (it->is_number_float()) {
    double v = it->get<double>();
    if (std::isfinite(v) && v >= 0 && v < 1.8e19) return static_cast<uint64_t>(std::llround(v));
  }
  return std::nullopt;
}

std::optional<double> doubleField(const json& d, const char* key) {
  if (!d.is_object()) return std::nullopt;
  auto it = d.find(key);
  if (it == d.end() || !it->is_number()) return std::nullopt;
  double v = it->get<double>();
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

std::string stringField(const json& d, const char* key) {
  if (!d.is_object()) return "";
  auto it = d.find(key);
  return it != d.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// block_hard_limit is in 1 KiB blocks (quotactl's unit, the qman spec's).
std::optional<uint64_t> limitBytes(const json& d) {
  auto kib = u64Field(d, "block_hard_limit");
  if (!kib || *kib == 0 || *kib > (std::numeric_limits<uint64_t>::max() >> 10)) return std::nullopt;
  return *kib << 10;
}

// A container id from an event's text, printable and short.
std::string mailId(std::string_view id) { return shortId(clean(id, 64)); }

// Kind of event, most severe last.
enum class Kind { Other, Disk, Warning, Exceeded, Stopped, Removed };

Kind kindOf(const std::string& type) {
  if (diskEventType(type)) return Kind::Disk;
  if (type == event_type::kWarning) return Kind::Warning;
  if (type == event_type::kExceeded) return Kind::Exceeded;
  if (type == event_type::kStopped) return Kind::Stopped;
  if (type == event_type::kRemoved) return Kind::Removed;
  return Kind::Other;
}

const char* subjectFor(Kind k) {
  switch (k) {
    case Kind::Removed: return "container removed";
    case Kind::Stopped: return "container stopped";
    case Kind::Exceeded: return "quota exceeded";
    case Kind::Warning: return "nearly full";
    case Kind::Disk: return "disk quota notice";
    case Kind::Other: break;
  }
  return "notice";
}

// `"web" (3f2a9c0d1e2b)`, or just the id, or "a container".
std::string containerText(const Event& e) {
  std::string name = clean(stringField(e.detail, "container_name"));
  if (!name.empty() && name[0] == '/') name.erase(0, 1);  // Docker's "/name" form
  std::string id = mailId(stringField(e.detail, "container_id"));
  if (id.empty()) id = mailId(e.container_id);
  if (!name.empty() && !id.empty()) return "\"" + name + "\" (" + id + ")";
  if (!name.empty()) return "\"" + name + "\"";
  if (!id.empty()) return id;
  return "a container";
}

// "your usage, 10.5 GiB (...), is over your limit of 10.0 GiB (...) by 512.0 MiB (...)"
std::string overText(std::optional<uint64_t> usage, std::optional<uint64_t> limit, bool now_word) {
  std::string is = now_word ? "is now" : "was";
  if (usage && limit) {
    std::string s = "your Docker disk usage, " + figure(*usage) + ", " + is;
    if (*usage > *limit) return s + " over your limit of " + figure(*limit) + " by " + figure(*usage - *limit);
    return s + " within your limit of " + figure(*limit);
  }
  if (usage) return "your Docker disk usage " + is + " " + figure(*usage);
  if (limit) return "your Docker disk usage " + is + " over your limit of " + figure(*limit);
  return "your Docker disk usage " + is + " over your limit";
}

// A block device / ZFS quota event (spec slave-devices §5) in plain English.
std::string diskText(const Event& e) {
  const json& d = e.detail;
  const std::string dev = clean(stringField(d, "device_name"));
  std::string s;
  if (e.type == "disk_soft_limit_exceeded")
    s = "you went over your soft limit on " + dev;
  else if (e.type == "disk_soft_grace_ending")
    s = "your grace period on " + dev + " is ending";
  else if (e.type == "disk_soft_grace_expired")
    s = "your grace period on " + dev + " has expired: writes are refused until you are under the soft limit";
  else if (e.type == "disk_hard_limit_reached")
    s = "you reached your hard limit on " + dev + ": writes are refused";
  else if (e.type == "disk_back_to_ok")
    s = "you are back within your limits on " + dev;
  else
    s = "your disk quota on " + dev + " changed state (" + clean(e.type) + ")";
  auto kib = [&](const char* k) -> std::optional<uint64_t> {
    auto v = u64Field(d, k);
    if (!v || *v == 0 || *v > (std::numeric_limits<uint64_t>::max() >> 10)) return std::nullopt;
    return *v << 10;
  };
  if (auto used = u64Field(d, "block_current")) s += ". Usage " + figure(*used);
  if (auto soft = kib("block_soft_limit")) s += ", soft limit " + figure(*soft);
  if (auto hard = kib("block_hard_limit")) s += ", hard limit " + figure(*hard);
  if (auto end = u64Field(d, "block_time_limit"); end && *end > 0)
    s += ", grace ends " + whenText(static_cast<double>(*end));
  return s + ".";
}

// One paragraph per event, in plain English.
std::string describe(const Event& e) {
  const json& d = e.detail;
  std::string when = whenText(e.created_at);
  std::string at = when.empty() ? "" : "At " + when + ", ";
  auto cap = [&](std::string s) {
    if (at.empty() && !s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
    return at + s;
  };
  auto usage = u64Field(d, "block_current");
  auto limit = limitBytes(d);
  switch (kindOf(e.type)) {
    case Kind::Warning: {
      auto pct = doubleField(d, "percent");
      if (pct && (*pct < 0 || *pct > 1e6)) pct.reset();
      if (!pct && usage && limit) pct = 100.0 * static_cast<double>(*usage) / static_cast<double>(*limit);
      std::string s = "your Docker disk usage reached ";
      if (pct) {
        char p[32];
        std::snprintf(p, sizeof p, "%.0f%%", std::floor(*pct));
        s += std::string(p) + " of your limit";
      } else {
        s += "nearly all of your limit";
      }
      if (usage && limit)
        s += ": " + figure(*usage) + " of " + figure(*limit);
      else if (usage)
        s += ": " + figure(*usage);
      else if (limit)
        s += " of " + figure(*limit);
      return cap(s + ". Over the limit, your containers may be stopped or removed.");
    }
    case Kind::Exceeded: return cap(overText(usage, limit, false) + ".");
    case Kind::Stopped: {
      std::string s =
          "your container " + containerText(e) + " was stopped because " + overText(usage, limit, false) + ".";
      if (auto size = u64Field(d, "size_bytes")) s += " Its writable layer holds " + figure(*size) + ".";
      std::string own = mailId(stringField(d, "container_id"));
      if (own.empty()) own = mailId(e.container_id);
      std::vector<std::string> others;
      auto it = d.is_object() ? d.find("stopped_ids") : d.end();
      if (d.is_object() && it != d.end() && it->is_array()) {
        for (const auto& x : *it)
          if (x.is_string() && mailId(x.get<std::string>()) != own && others.size() < 20)
            others.push_back(mailId(x.get<std::string>()));
      }
      if (!others.empty()) {
        s += " Also stopped:";
        for (size_t i = 0; i < others.size(); ++i) s += (i ? ", " : " ") + others[i];
        s += ".";
      }
      return cap(s);
    }
    case Kind::Removed: {
      std::string s = "your container " + containerText(e) + " was removed because you were over your limit";
      if (limit) s += " of " + figure(*limit);
      s += ".";
      if (auto size = u64Field(d, "size_bytes")) s += " Its writable layer held " + figure(*size) + ".";
      if (auto now = u64Field(d, "new_usage")) s += " Your Docker disk usage is now " + figure(*now) + ".";
      return cap(s);
    }
    case Kind::Disk: return cap(diskText(e));
    case Kind::Other: break;
  }
  return "";
}

// Greedy word wrap at `width`, continuation lines indented by `indent`.
std::string wrap(const std::string& text, size_t width, const std::string& first, const std::string& indent) {
  std::string out, line = first;
  size_t start = 0;
  bool empty_line = true;
  while (start < text.size()) {
    size_t end = text.find(' ', start);
    if (end == std::string::npos) end = text.size();
    std::string word = text.substr(start, end - start);
    start = end + 1;
    if (word.empty()) continue;
    if (!empty_line && line.size() + 1 + word.size() > width) {
      out += line + "\r\n";
      line = indent;
      empty_line = true;
    }
    if (!empty_line) line += ' ';
    line += word;
    empty_line = false;
  }
  out += line + "\r\n";
  std::replace(out.begin(), out.end(), kGlue, ' ');
  return out;
}

// --- SMTP ----------------------------------------------------------------------

struct Upload {
  const std::string* data = nullptr;
  size_t off = 0;
};

size_t readUpload(char* buf, size_t size, size_t n, void* ud) noexcept {
  auto* u = static_cast<Upload*>(ud);
  size_t len = std::min(size * n, u->data->size() - u->off);
  std::memcpy(buf, u->data->data() + u->off, len);
  u->off += len;
  return len;
}

// The server's replies reach us only through curl's debug callback (curl
// 7.88 does not pass SMTP replies to the header callback). The last negative
// one (4xx, 5xx) explains a failure: "550 5.1.1 <x@y>: Recipient address
// rejected"; the "221 Bye" to curl's QUIT after it must not replace it. What
// we send (CURLINFO_HEADER_OUT, AUTH included) is never looked at.
int keepReply(CURL*, curl_infotype type, char* p, size_t len, void* ud) noexcept {
  if (type != CURLINFO_HEADER_IN) return 0;
  auto* last = static_cast<std::string*>(ud);
  try {
    std::string_view data(p, len);
    while (!data.empty() && (data.back() == '\n' || data.back() == '\r')) data.remove_suffix(1);
    size_t nl = data.rfind('\n');  // a multi-line reply: its last line
    if (nl != std::string_view::npos) data.remove_prefix(nl + 1);
    if (!data.empty() && (data[0] == '4' || data[0] == '5')) *last = clean(data, kMaxReply);
  } catch (...) {}
  return 0;
}

// "smtp://user:pw@host:25/x" -> "smtp://host:25/x": URLs get into messages.
std::string redactUrl(const std::string& url) {
  size_t scheme = url.find("://");
  size_t start = scheme == std::string::npos ? 0 : scheme + 3;
  size_t end = url.find_first_of("/?#", start);
  size_t at = url.rfind('@', end == std::string::npos ? url.size() : end);
  if (at == std::string::npos || at < start) return url;
  return url.substr(0, start) + url.substr(at + 1);
}

struct Abort {
  const std::atomic<uint64_t>* generation;
  uint64_t started;
};

int checkAbort(void* ud, curl_off_t, curl_off_t, curl_off_t, curl_off_t) noexcept {
  auto* a = static_cast<Abort*>(ud);
  return a->generation->load() != a->started ? 1 : 0;
}

std::string curlText(CURLcode rc, const char* errbuf) {
  return errbuf && *errbuf ? std::string(errbuf) : std::string(curl_easy_strerror(rc));
}

}  // namespace

// --- addresses -------------------------------------------------------------------

bool validMailAddress(const std::string& a) {
  if (a.empty() || a.size() > 254) return false;
  size_t at = a.find('@');
  if (at == std::string::npos || at == 0 || a.find('@', at + 1) != std::string::npos) return false;
  std::string_view local(a.data(), at), domain(a.data() + at + 1, a.size() - at - 1);
  if (local.size() > 64 || local.front() == '.' || local.back() == '.' || local.find("..") != std::string_view::npos)
    return false;
  static constexpr std::string_view kAtext = "!#$%&'*+-/=?^_`{|}~.";
  for (char c : local)
    if (!std::isalnum(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80)
      if (kAtext.find(c) == std::string_view::npos) return false;
  if (domain.empty() || domain.size() > 253) return false;
  size_t label = 0;
  for (size_t i = 0; i <= domain.size(); ++i) {
    if (i == domain.size() || domain[i] == '.') {
      if (label == 0 || label > 63 || domain[i - 1] == '-' || domain[i - label] == '-') return false;
      label = 0;
    } else if (std::isalnum(static_cast<unsigned char>(domain[i])) || domain[i] == '-') {
      ++label;
    } else {
      return false;
    }
  }
  return true;
}

// --- SmtpMailer --------------------------------------------------------------------

SmtpMailer::SmtpMailer(Options options, std::string server) : opt_(std::move(options)), server_(std::move(server)) {}

Result<std::unique_ptr<SmtpMailer>> SmtpMailer::create(Options o) {
  globalInit();
  const std::string what = "mail: SMTP server \"" + clean(redactUrl(o.url)) + "\"";
  std::unique_ptr<CURLU, void (*)(CURLU*)> u(curl_url(), curl_url_cleanup);
  if (!u) return Error{ENOMEM, "mail: cannot create a curl URL handle"};
  if (curl_url_set(u.get(), CURLUPART_URL, o.url.c_str(), 0) != CURLUE_OK)
    return Error{EINVAL, what + ": not a URL (want smtp://host:port or smtps://host:port)"};
  auto part = [&](CURLUPart p) {
    char* s = nullptr;
    std::string out;
    if (curl_url_get(u.get(), p, &s, 0) == CURLUE_OK && s) out = s;
    curl_free(s);
    return out;
  };
  std::string scheme = part(CURLUPART_SCHEME), host = part(CURLUPART_HOST), port = part(CURLUPART_PORT);
  if (scheme != "smtp" && scheme != "smtps")
    return Error{EINVAL, what + ": scheme must be smtp or smtps, not \"" + clean(scheme) + "\""};
  if (host.empty()) return Error{EINVAL, what + ": no host"};
  if (!validMailAddress(o.from))
    return Error{EINVAL, "mail: sender \"" + clean(o.from) + "\" is not a plain address like dockquota@example.org"};
  if (o.timeout.count() <= 0) return Error{EINVAL, "mail: the SMTP timeout must be positive"};
  if (o.username.empty() != o.password.empty()) return Error{EINVAL, "mail: SMTP username and password go together"};
  if (!part(CURLUPART_USER).empty())
    return Error{EINVAL, what + ": credentials go in username and password, not in the URL"};
  std::string server = scheme + "://" + host + (port.empty() ? "" : ":" + port);
  if (!o.username.empty() && scheme == "smtp" && !o.starttls)
    LOG_WARN(kLog, "%s: the SMTP password goes out in clear text; use starttls or smtps://", server.c_str());
  return std::unique_ptr<SmtpMailer>(new SmtpMailer(std::move(o), std::move(server)));
}

// curl_easy_perform() would wait out a silent server for up to a second
// before its progress callback sees interrupt(); driven through a multi
// handle, interrupt() wakes the poll at once.
int SmtpMailer::perform(void* easy, uint64_t generation) {
  auto* c = static_cast<CURL*>(easy);
  std::unique_ptr<CURLM, CURLMcode (*)(CURLM*)> m(curl_multi_init(), curl_multi_cleanup);
  if (!m || curl_multi_add_handle(m.get(), c) != CURLM_OK) return CURLE_OUT_OF_MEMORY;
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_.insert(m.get());
  }
  CURLcode rc = CURLE_OK;
  bool done = false;
  while (!done) {
    // Interrupted: the progress callback fails the transfer on curl's next
    // step. Removing it unfinished instead would make curl end the message
    // and wait for the server's reply to that, up to `timeout`.
    const bool interrupted = generation_.load() != generation;
    int running = 0;
    CURLMcode mc = curl_multi_perform(m.get(), &running);
    if (mc == CURLM_OK && running > 0) mc = curl_multi_poll(m.get(), nullptr, 0, interrupted ? 10 : 1000, nullptr);
    if (mc != CURLM_OK) {
      rc = CURLE_OUT_OF_MEMORY;  // the multi interface fails only on bad use or memory
      break;
    }
    int queued = 0;
    while (CURLMsg* msg = curl_multi_info_read(m.get(), &queued)) {
      if (msg->msg == CURLMSG_DONE) {
        rc = msg->data.result;
        done = true;
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(m.get());
  }
  curl_multi_remove_handle(m.get(), c);
  return rc;
}

void SmtpMailer::interrupt() {
  generation_.fetch_add(1);
  std::lock_guard<std::mutex> lock(mu_);
  for (void* m : active_) curl_multi_wakeup(static_cast<CURLM*>(m));
}

Status SmtpMailer::send(const std::string& to, const std::string& message) {
  const std::string what = "mail: sending to " + clean(to) + " via " + server_;
  if (!validMailAddress(to)) return Error{EINVAL, what + ": not a plain address"};
  globalInit();
  std::unique_ptr<CURL, void (*)(CURL*)> h(curl_easy_init(), curl_easy_cleanup);
  std::string mail_from = "<" + opt_.from + ">", rcpt = "<" + to + ">";
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> rcpts(curl_slist_append(nullptr, rcpt.c_str()),
                                                           curl_slist_free_all);
  if (!h || !rcpts) return Error{ENOMEM, what + ": cannot create a curl handle"};
  Upload up{&message, 0};
  std::string reply;
  const uint64_t generation = generation_.load();
  Abort abort{&generation_, generation};
  char errbuf[CURL_ERROR_SIZE];
  errbuf[0] = '\0';
  const long timeout_ms = static_cast<long>(opt_.timeout.count()) * 1000;
  CURL* c = h.get();
  curl_easy_setopt(c, CURLOPT_URL, opt_.url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, std::min(timeout_ms, kMaxConnectTimeoutMs));
  curl_easy_setopt(c, CURLOPT_MAIL_FROM, mail_from.c_str());
  curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpts.get());
  curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
  curl_easy_setopt(c, CURLOPT_READFUNCTION, readUpload);
  curl_easy_setopt(c, CURLOPT_READDATA, &up);
  curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(message.size()));  // SIZE= when offered
  curl_easy_setopt(c, CURLOPT_VERBOSE, 1L);  // for the debug callback only: it prints nothing
  curl_easy_setopt(c, CURLOPT_DEBUGFUNCTION, keepReply);
  curl_easy_setopt(c, CURLOPT_DEBUGDATA, &reply);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, checkAbort);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &abort);
  if (opt_.starttls && server_.rfind("smtp://", 0) == 0)
    curl_easy_setopt(c, CURLOPT_USE_SSL, static_cast<long>(CURLUSESSL_ALL));
  if (!opt_.username.empty()) {
    curl_easy_setopt(c, CURLOPT_USERNAME, opt_.username.c_str());
    curl_easy_setopt(c, CURLOPT_PASSWORD, opt_.password.c_str());
  }
  auto rc = static_cast<CURLcode>(perform(c, generation));
  if (rc == CURLE_OK) return {};

  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  long os = 0;
  curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os);
  std::string text = curlText(rc, errbuf);
  std::string smtp;  // " (SMTP 550: 550 5.1.1 ... rejected)"; a positive last reply explains nothing
  if (code >= 400) {
    smtp = " (SMTP " + std::to_string(code);
    if (!reply.empty() && reply.rfind(std::to_string(code), 0) == 0 && text.find(reply) == std::string::npos)
      smtp += ": " + reply;
    smtp += ")";
  }
  int err = EIO;
  switch (rc) {
    case CURLE_ABORTED_BY_CALLBACK: return Error{ECANCELED, what + ": interrupted"};
    case CURLE_COULDNT_CONNECT: err = os > 0 ? static_cast<int>(os) : ECONNREFUSED; break;
    case CURLE_COULDNT_RESOLVE_HOST: err = EHOSTUNREACH; break;
    case CURLE_OPERATION_TIMEDOUT:
      err = ETIMEDOUT;
      text += " (timeout " + std::to_string(opt_.timeout.count()) + " s)";
      break;
    case CURLE_LOGIN_DENIED: err = EACCES; break;
    case CURLE_USE_SSL_FAILED:
      err = EPROTO;
      text += " (starttls is on: the server must offer STARTTLS)";
      break;
    case CURLE_SEND_ERROR:
      // curl's "RCPT failed: 550": the server will never take this recipient.
      if (text.rfind("RCPT failed", 0) == 0 && code >= 500 && code < 600) err = kMailRecipientRefused;
      break;
    default: break;
  }
  return Error{err, what + ": " + text + smtp};
}

// --- composeMail -----------------------------------------------------------------

Result<std::string> composeMail(const MailInfo& info, const std::vector<Event>& events) {
  if (!validMailAddress(info.to))
    return Error{EINVAL, "mail: recipient \"" + clean(info.to) + "\" is not a plain address"};
  if (!validMailAddress(info.from))
    return Error{EINVAL, "mail: sender \"" + clean(info.from) + "\" is not a plain address"};
  std::vector<const Event*> shown;
  Kind worst = Kind::Other;
  for (const auto& e : events) {
    Kind k = kindOf(e.type);
    if (k == Kind::Other) continue;
    shown.push_back(&e);
    worst = std::max(worst, k);
  }
  if (shown.empty()) return Error{EINVAL, "mail: none of the events is one users are mailed about"};
  std::stable_sort(shown.begin(), shown.end(), [](const Event* a, const Event* b) { return a->seq < b->seq; });

  const std::string host = clean(info.host).empty() ? "(unknown host)" : clean(info.host);
  const std::string user = clean(info.user);
  const bool disk_only = worst == Kind::Disk;
  std::string subject =
      "[dockquota " + host + "] " + (disk_only ? "Disk quota: " : "Docker disk quota: ") + subjectFor(worst);
  if (shown.size() > 1) subject += " (" + std::to_string(shown.size()) + " notices)";

  std::string m;
  m += "From: " + displayName("dockquota on " + host) + " <" + info.from + ">\r\n";
  m += "To: " + info.to + "\r\n";
  m += "Subject: " + headerText(subject, 3 * kMaxValue) + "\r\n";
  m += "Date: " + rfc5322Date(info.date > 0 ? info.date : unixNow()) + "\r\n";
  std::string id = clean(info.message_id, 250);
  m += "Message-ID: " + (id.empty() ? newMessageId(info.host) : id) + "\r\n";
  m += "MIME-Version: 1.0\r\n";
  m += "Content-Type: text/plain; charset=utf-8\r\n";
  m += "Content-Transfer-Encoding: 8bit\r\n";
  m += "Auto-Submitted: auto-generated\r\n";  // RFC 3834: no vacation replies to this
  m += "\r\n";

  m += "Hello " + (user.empty() ? "uid " + std::to_string(info.uid) : user) + ",\r\n\r\n";
  m += wrap(disk_only ? "This is dockquota on " + host + ". Your files on " + host +
                            "'s filesystems count against your disk quotas (uid " + std::to_string(info.uid) + ")."
                      : "This is dockquota on " + host + ". The Docker containers, images and volumes you create on " +
                            host + " count against your Docker disk quota (uid " + std::to_string(info.uid) + ").",
            72, "", "");
  m += "\r\n";
  size_t skip = shown.size() > kMaxListed ? shown.size() - kMaxListed : 0;
  if (skip > 0) {
    m += wrap(
        std::to_string(skip) + " earlier notices are not listed; the latest " + std::to_string(kMaxListed) + " follow.",
        72, "", "");
    m += "\r\n";
  }
  bool stopped = false;
  for (size_t i = skip; i < shown.size(); ++i) {
    stopped = stopped || kindOf(shown[i]->type) == Kind::Stopped;
    m += wrap(describe(*shown[i]), 72, "  * ", "    ");
    m += "\r\n";
  }
  m += "What you can do:\r\n\r\n";
  m += wrap("See what you have and how big it is:", 72, "  * ", "    ");
  m += "      docker ps --all --size\r\n";
  m += "      docker images\r\n";
  m += "      docker volume ls\r\n";
  m += wrap("Remove the containers, images and volumes you no longer need (removing a volume deletes its data):", 72,
            "  * ", "    ");
  m += "      docker rm <container>\r\n";
  m += "      docker rmi <image>\r\n";
  m += "      docker volume rm <volume>\r\n";
  if (stopped) {
    m += wrap(
        "A stopped container is kept. Once you are under your limit again, start it with: docker start "
        "<container>",
        72, "  * ", "    ");
  }
  m += wrap("If you need more space, ask the administrators of " + host + " for a higher limit.", 72, "  * ", "    ");
  m += "\r\n";
  m += "-- \r\n";
  m += wrap("Sent automatically by dockquota on " + host + ".", 72, "", "");
  return m;
}

// --- EmailDirectory -------------------------------------------------------------

namespace {
// Replaces {user} and {uid}; any other "{...}" is an error (a typo would
// otherwise send mail to a literal "{usr}@...").
Result<std::string> expand(const std::string& tmpl, const std::string& user, uint32_t uid) {
  std::string out;
  for (size_t i = 0; i < tmpl.size();) {
    if (tmpl.compare(i, 6, "{user}") == 0) {
      out += user;
      i += 6;
    } else if (tmpl.compare(i, 5, "{uid}") == 0) {
      out += std::to_string(uid);
      i += 5;
    } else if (tmpl[i] == '{' || tmpl[i] == '}') {
      return Error{EINVAL, "only {user} and {uid} may appear in braces"};
    } else {
      out += tmpl[i++];
    }
  }
  return out;
}
}  // namespace

Result<EmailDirectory> EmailDirectory::create(Options o) {
  for (const auto& [user, address] : o.addresses) {
    if (user.empty()) return Error{EINVAL, "mail: an address is given for an empty user name"};
    if (!validMailAddress(address))
      return Error{EINVAL, "mail: the address of user \"" + clean(user) + "\", \"" + clean(address) +
                               "\", is not a plain address like name@example.org"};
  }
  const std::string& t = o.address_template;
  if (!t.empty()) {
    const std::string what = "mail: address template \"" + clean(t) + "\"";
    if (std::any_of(t.begin(), t.end(), [](char c) { return isControl(static_cast<unsigned char>(c)); }))
      return Error{EINVAL, what + ": has control characters"};
    if (t.find('@') == std::string::npos) return Error{EINVAL, what + ": has no '@'"};
    auto sample = expand(t, "user", 1000);
    if (!sample) return Error{EINVAL, what + ": " + sample.error().message};
    if (!validMailAddress(*sample))
      return Error{EINVAL, what + ": gives \"" + *sample + "\" for user \"user\", not a plain address"};
  }
  return EmailDirectory(std::move(o));
}

std::optional<std::string> EmailDirectory::addressFor(const std::string& user, uint32_t uid) const {
  if (!user.empty()) {
    auto it = opt_.addresses.find(user);
    if (it != opt_.addresses.end()) return it->second;
  }
  if (opt_.address_template.empty()) return std::nullopt;
  if (user.empty() && opt_.address_template.find("{user}") != std::string::npos) return std::nullopt;
  auto a = expand(opt_.address_template, user, uid);
  if (!a || !validMailAddress(*a)) return std::nullopt;
  return *a;
}

// --- planMails ---------------------------------------------------------------------

MailPlan planMails(const std::vector<Event>& pending, const std::map<uint32_t, double>& last_sent,
                   const std::deque<double>& sent, double now, const MailNotifier::Options& o) {
  const double burst = static_cast<double>(o.burst.count());
  const double interval = static_cast<double>(o.min_interval.count());
  std::map<uint32_t, double> oldest;  // uid -> created_at of their oldest pending event
  for (const auto& e : pending) {
    // Stamped well in the future: the clock was stepped back since. Waiting
    // for it to catch up could take hours, so the event counts as old enough.
    // A little in the future (another thread's clock read): as if stamped now.
    double t = e.created_at > now + kClockSlack ? now - burst : std::min(e.created_at, now);
    auto [it, fresh] = oldest.emplace(e.uid, t);
    if (!fresh) it->second = std::min(it->second, t);
  }
  MailPlan plan;
  auto wakeAt = [&](double t) { plan.wake_at = plan.wake_at ? std::min(*plan.wake_at, t) : t; };
  std::vector<std::pair<double, uint32_t>> ready;  // (oldest, uid)
  for (const auto& [uid, first] : oldest) {
    double at = first + burst;
    auto it = last_sent.find(uid);
    if (it != last_sent.end()) at = std::max(at, it->second + interval);
    if (at <= now)
      ready.emplace_back(first, uid);
    else
      wakeAt(at);
  }
  std::sort(ready.begin(), ready.end());
  size_t room = ready.size();
  if (o.max_per_hour > 0) {
    size_t in_hour = 0;
    std::optional<double> first_in_hour;
    for (double t : sent) {
      if (t > now - kHour) {
        ++in_hour;
        first_in_hour = first_in_hour ? std::min(*first_in_hour, t) : t;
      }
    }
    room = in_hour >= o.max_per_hour ? 0 : o.max_per_hour - in_hour;
    if (ready.size() > room) wakeAt(first_in_hour ? *first_in_hour + kHour : now + 1);
  }
  for (size_t i = 0; i < ready.size() && i < room; ++i) plan.due.push_back(ready[i].second);
  return plan;
}

// --- MailNotifier -------------------------------------------------------------------

MailNotifier::MailNotifier(EventSpool& spool, MailTransport& transport, EmailDirectory directory, Options options)
    : spool_(spool),
      transport_(transport),
      directory_(std::move(directory)),
      opt_(std::move(options)),
      backoff_(opt_.backoff_base, opt_.backoff_cap) {}

MailNotifier::~MailNotifier() { stop(); }

void MailNotifier::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (worker_.running()) return;
  stop_ = false;
  running_ = true;
  worker_.start(
      "dq-mail", [this] { run(); }, [this] { halt(); });
}

void MailNotifier::stop() {
  halt();  // also when never started: runOnce() called directly then stops early
  worker_.stop();
  std::lock_guard<std::mutex> lock(mu_);
  running_ = false;
}

void MailNotifier::halt() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  transport_.interrupt();
}

void MailNotifier::wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    woken_ = true;
  }
  cv_.notify_all();
}

void MailNotifier::run() {
  LOG_INFO(kLog, "mailing quota notices for %s (burst %lld s, at most one mail per user per %lld s)",
           opt_.host_id.c_str(), static_cast<long long>(opt_.burst.count()),
           static_cast<long long>(opt_.min_interval.count()));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    woken_ = false;  // a wake() from here on means another pass
    lock.unlock();
    double next = runOnce(unixNow());
    lock.lock();
    // At least 50 ms between passes, at most `poll`.
    double wait_s = std::clamp(next - unixNow(), 0.05, static_cast<double>(std::max<int64_t>(opt_.poll.count(), 1)));
    cv_.wait_for(lock, std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000)),
                 [this] { return stop_ || woken_; });
  }
}

void MailNotifier::giveUp(const std::vector<int64_t>& seqs, double now) {
  if (seqs.empty()) return;
  auto st = spool_.delivered(Channel::Mail, seqs, false, now);
  if (!st) LOG_ERROR(kLog, "cannot mark %zu events as not mailable: %s", seqs.size(), st.error().message.c_str());
}

void MailNotifier::recordError(const std::string& message) {
  std::lock_guard<std::mutex> lock(mu_);
  last_error_ = message;
}

double MailNotifier::runOnce(double now) {
  double next = now + static_cast<double>(std::max<int64_t>(opt_.poll.count(), 1));
  auto wakeAt = [&](double t) { next = std::min(next, t); };
  auto stopping = [this] {
    std::lock_guard<std::mutex> lock(mu_);
    return stop_;
  };

  auto pending = spool_.pending(Channel::Mail, kBatch);
  if (!pending) {
    std::string msg = pending.error().message;
    bool changed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      changed = msg != last_error_;
      last_error_ = msg;
    }
    if (changed) LOG_WARN(kLog, "cannot read pending events: %s", msg.c_str());
    return next;
  }

  // Per user; events the mail channel does not carry are given up at once.
  std::map<uint32_t, std::vector<const Event*>> by_uid;
  std::vector<int64_t> foreign;
  for (const auto& e : *pending) {
    if (channelWants(Channel::Mail, e.type))
      by_uid[e.uid].push_back(&e);
    else
      foreign.push_back(e.seq);
  }
  if (!foreign.empty()) {
    LOG_DEBUG(kLog, "%zu pending events are of types never mailed; marking them not mailable", foreign.size());
    giveUp(foreign, now);
  }

  std::vector<Event> mailable;
  std::map<uint32_t, std::pair<std::string, std::string>> whom;  // uid -> (user, address)
  for (const auto& [uid, evs] : by_uid) {
    std::string user;
    for (const Event* e : evs)
      if (!e->user.empty()) user = e->user;  // the latest name wins
    auto address = directory_.addressFor(user, uid);
    if (!address) {
      std::vector<int64_t> seqs;
      for (const Event* e : evs) seqs.push_back(e->seq);
      giveUp(seqs, now);
      {
        std::lock_guard<std::mutex> lock(mu_);
        skipped_no_address_ += seqs.size();
      }
      if (warned_no_address_.insert(uid).second)
        LOG_WARN(kLog, "no email address for user %s (uid %u): their quota notices are not mailed",
                 clean(user).empty() ? "(unnamed)" : clean(user).c_str(), uid);
      continue;
    }
    whom[uid] = {user, *address};
    for (const Event* e : evs) mailable.push_back(*e);
  }

  // The clock stepped back: a time in the future would hold mail for as long.
  for (auto& [uid, t] : last_sent_) t = std::min(t, now);
  for (auto& t : sends_) t = std::min(t, now);
  while (!sends_.empty() && sends_.front() <= now - kHour) sends_.pop_front();

  MailPlan plan = planMails(mailable, last_sent_, sends_, now, opt_);
  if (plan.wake_at) wakeAt(*plan.wake_at);
  if (!plan.due.empty() && now < retry_at_) {
    wakeAt(retry_at_);
    plan.due.clear();
  }

  for (uint32_t uid : plan.due) {
    if (stopping()) break;
    std::vector<Event> evs;
    std::vector<int64_t> seqs;
    for (const auto& e : mailable) {
      if (e.uid != uid) continue;
      evs.push_back(e);
      seqs.push_back(e.seq);
    }
    const auto& [user, address] = whom[uid];
    MailInfo info;
    info.host = opt_.host_id;
    info.from = transport_.from();
    info.to = address;
    info.user = user;
    info.uid = uid;
    info.date = now;
    auto message = composeMail(info, evs);
    Status st = message ? transport_.send(address, *message) : Status(message.error());
    if (st) {
      sends_.push_back(now);
      last_sent_[uid] = now;
      backoff_.reset();
      retry_at_ = 0;
      bool recovered;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++mails_sent_;
        events_mailed_ += seqs.size();
        recovered = failing_;
        failing_ = false;
      }
      if (recovered) LOG_INFO(kLog, "mail goes out again (to %s)", address.c_str());
      LOG_DEBUG(kLog, "mailed %s (uid %u) about %zu events", address.c_str(), uid, seqs.size());
      auto d = spool_.delivered(Channel::Mail, seqs, true, now);
      if (!d) {
        // They will be mailed again, after min_interval: better twice than never.
        LOG_ERROR(kLog, "mailed %s but cannot mark %zu events delivered: %s", address.c_str(), seqs.size(),
                  d.error().message.c_str());
        recordError(d.error().message);
      }
      continue;
    }
    const std::string& msg = st.error().message;
    if (st.error().code == kMailRecipientRefused) {
      // The server answered, it just will not take this address: retrying
      // cannot help, and must not hold up everyone else's mail.
      sends_.push_back(now);
      last_sent_[uid] = now;
      backoff_.reset();
      giveUp(seqs, now);
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++failures_;
        refused_ += seqs.size();
        last_error_ = msg;
      }
      LOG_WARN(kLog, "%s; %zu notices for user %s (uid %u) are given up",
               msg.c_str() + (msg.rfind("mail: ", 0) == 0 ? 6 : 0), seqs.size(), clean(user).c_str(), uid);
      continue;
    }
    if (st.error().code == ECANCELED && stopping()) break;
    auto delay = backoff_.next();
    retry_at_ = now + static_cast<double>(delay.count()) / 1000.0;
    wakeAt(retry_at_);
    bool changed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++failures_;
      changed = !failing_ || msg != last_error_;
      failing_ = true;
      last_error_ = msg;
    }
    const char* shown = msg.c_str() + (msg.rfind("mail: ", 0) == 0 ? 6 : 0);
    if (changed)
      LOG_WARN(kLog, "%s; %zu notices stay pending, retrying in %lld ms", shown, seqs.size(),
               static_cast<long long>(delay.count()));
    else
      LOG_DEBUG(kLog, "%s; retrying in %lld ms", shown, static_cast<long long>(delay.count()));
    break;  // most failures are the relay's: the others would fail alike
  }

  auto count = spool_.pendingCount(Channel::Mail);
  if (count) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_ = *count;
  }
  return next;
}

nlohmann::json MailNotifier::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return json{{"running", running_ && !stop_}, {"mails_sent", mails_sent_}, {"events_mailed", events_mailed_},
              {"failures", failures_},         {"failing", failing_},       {"skipped_no_address", skipped_no_address_},
              {"events_refused", refused_},    {"last_error", last_error_}, {"pending", pending_}};
}

}  // namespace dockquota
