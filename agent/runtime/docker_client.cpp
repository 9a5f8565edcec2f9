// SPDX-License-Identifier: Apache-2.0
// Docker Engine API client over the unix socket, with libcurl.
//
// DockerClient: one easy handle, reused under a mutex so requests share one
// keep-alive connection. The API version is negotiated lazily (GET /version,
// min(kMaxApiVersion, daemon's ApiVersion)) and forgotten on any transport error,
// because the next connection may reach a restarted dockerd of another version.
// Requests run on a multi handle driven step by step, so that a big list can
// be parsed while it arrives (getStreamed) instead of being held whole.
//
// DockerEventStream: its own thread and easy handle, driven through a multi
// handle so stop() can interrupt an idle stream at once (curl_multi_wakeup)
// instead of waiting for a progress callback.
#include "agent/runtime/docker_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <streambuf>
#include <string_view>

#include "agent/base/log.h"

namespace dockquota {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kLog = "docker";
// Largest reply we buffer. /containers/json or /system/df on a host with
// thousands of objects are a few MiB; the bound keeps a runaway peer from
// exhausting the agent's memory.
constexpr curl_off_t kMaxBody = 256LL << 20;
// Longest event message. Real ones are under 4 KiB; labels can grow them, but
// not to a MiB.
constexpr size_t kMaxEventLine = 1u << 20;
// Kept from a non-200 events reply, for the error message.
constexpr size_t kMaxErrorBody = 64u << 10;
// A local unix socket connects at once or fails at once; 2 s only matters when
// dockerd's accept backlog is full (a wedged daemon).
constexpr long kConnectTimeoutMs = 2000;
// GET /version by the event stream, which has no caller-configured timeout.
constexpr long kStreamNegotiateTimeoutMs = 10000;
// A connection that lived this long was healthy: the next failure starts the
// backoff from the beginning.
constexpr auto kHealthyConnection = std::chrono::seconds(10);
// Only what takes disk: the agent reconciles containers, images and volumes.
constexpr const char* kEventsFilter = R"({"type":["container","image","volume"]})";

void globalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// RFC 3986 unreserved characters pass, everything else is %XX. dockerd decodes
// %2F and %3A in path variables (verified on 20.10 for /images/{name}/json with
// "registry.local:5000/ns/img:2"), so refs are escaped whole.
std::string escape(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                 c == '_' || c == '~';
    if (plain) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// A user-supplied id, name or ref as one path segment. "." and ".." survive
// escaping and curl would resolve them as dot segments, so they are refused.
Result<std::string> pathSegment(const char* what, const std::string& s) {
  if (s.empty() || s == "." || s == "..")
    return Error{EINVAL, std::string("docker: invalid ") + what + " \"" + s + "\""};
  return escape(s);
}

// Errors start with "docker: " for callers; log lines get that from the logger.
const char* forLog(const std::string& message) {
  return message.rfind("docker: ", 0) == 0 ? message.c_str() + 8 : message.c_str();
}

std::string snippet(std::string_view body, size_t max = 200) {
  std::string s(body.substr(0, max));
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  if (body.size() > max) s += "...";
  return s;
}

// Docker's error bodies are {"message": "..."}; a few early rejections (API
// version too old) are plain text.
std::string dockerMessage(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_object()) {
    auto it = j.find("message");
    if (it != j.end() && it->is_string()) return it->get<std::string>();
  }
  std::string s = snippet(body);
  return s.empty() ? "(empty reply)" : s;
}

std::string stringField(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// "1.41" -> {1, 41}; compared numerically, so 1.9 < 1.10.
bool parseApiVersion(const std::string& s, int* major, int* minor) {
  int consumed = 0;
  if (std::sscanf(s.c_str(), "%d.%d%n", major, minor, &consumed) != 2) return false;
  return consumed == static_cast<int>(s.size()) && *major >= 0 && *minor >= 0;
}

int compareApiVersions(int amaj, int amin, int bmaj, int bmin) {
  if (amaj != bmaj) return amaj < bmaj ? -1 : 1;
  if (amin != bmin) return amin < bmin ? -1 : 1;
  return 0;
}

// The version we speak with a daemon whose GET /version reply is `body`.
Result<std::string> chooseApiVersion(long status, const std::string& body) {
  if (status != 200) return Error{EIO, "HTTP " + std::to_string(status) + ": " + dockerMessage(body)};
  json j = json::parse(body, nullptr, false);
  if (!j.is_object()) return Error{EPROTO, "reply is not a JSON object: " + snippet(body)};
  std::string api = stringField(j, "ApiVersion");
  int dmaj, dmin, kmaj, kmin;
  if (!parseApiVersion(api, &dmaj, &dmin)) return Error{EPROTO, "no usable ApiVersion in reply: " + snippet(body)};
  parseApiVersion(DockerClient::kMaxApiVersion, &kmaj, &kmin);
  std::string chosen = compareApiVersions(kmaj, kmin, dmaj, dmin) < 0 ? DockerClient::kMaxApiVersion : api;
  int cmaj, cmin, mmaj, mmin;
  parseApiVersion(chosen, &cmaj, &cmin);
  std::string min_api = stringField(j, "MinAPIVersion");
  if (parseApiVersion(min_api, &mmaj, &mmin) && compareApiVersions(cmaj, cmin, mmaj, mmin) < 0)
    return Error{EPROTONOSUPPORT,
                 "dockerd speaks API " + min_api + ".." + api + ", we speak up to " + DockerClient::kMaxApiVersion};
  return chosen;
}

bool versionTooNew(long status, const std::string& body) {
  // dockerd's version middleware: "client version 1.45 is too new. Maximum
  // supported API version is 1.41" (400), before any handler runs.
  return status == 400 && dockerMessage(body).find("is too new") != std::string::npos;
}

struct Body {
  std::string data;
  size_t limit = static_cast<size_t>(kMaxBody);
  bool overflow = false;
};

size_t writeBody(char* p, size_t size, size_t n, void* ud) noexcept {
  auto* b = static_cast<Body*>(ud);
  size_t len = size * n;
  if (b->data.size() + len > b->limit) {
    b->overflow = true;
    return 0;  // CURLE_WRITE_ERROR
  }
  try {
    b->data.append(p, len);
  } catch (...) {
    b->overflow = true;
    return 0;
  }
  return len;
}

// Transport failure -> errno + text, without the "docker: GET /x" prefix the
// caller adds: "cannot connect to /var/run/docker.sock: No such file or directory".
Error transportError(CURL* h, CURLcode rc, const char* errbuf, const std::string& socket, bool overflow,
                     long timeout_ms) {
  long os = 0;
  curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os);
  std::string detail = errbuf && *errbuf ? errbuf : curl_easy_strerror(rc);
  switch (rc) {
    case CURLE_COULDNT_CONNECT: {
      int e = os > 0 ? static_cast<int>(os) : ECONNREFUSED;
      return Error{e, "cannot connect to " + socket + ": " + std::strerror(e)};
    }
    case CURLE_OPERATION_TIMEDOUT: {
      double connect_s = 0;
      curl_easy_getinfo(h, CURLINFO_CONNECT_TIME, &connect_s);
      if (connect_s <= 0)
        return Error{ETIMEDOUT,
                     "cannot connect to " + socket + ": no answer within " + std::to_string(kConnectTimeoutMs) + " ms"};
      return Error{ETIMEDOUT, "no complete reply within " + std::to_string(timeout_ms) + " ms"};
    }
    case CURLE_FILESIZE_EXCEEDED:
      return Error{EMSGSIZE, "reply larger than " + std::to_string(kMaxBody >> 20) + " MiB, refused"};
    case CURLE_WRITE_ERROR:
      if (overflow) return Error{EMSGSIZE, "reply larger than " + std::to_string(kMaxBody >> 20) + " MiB, refused"};
      return Error{EIO, detail};
    case CURLE_ABORTED_BY_CALLBACK: return Error{ECANCELED, "stopped"};
    case CURLE_GOT_NOTHING: return Error{EIO, "connection closed without a reply (dockerd restarting?)"};
    case CURLE_PARTIAL_FILE: return Error{EIO, "connection closed in the middle of the reply (dockerd restarting?)"};
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
      if (os > 0) return Error{static_cast<int>(os), "connection lost: " + std::string(std::strerror(os))};
      return Error{EIO, "connection lost: " + detail};
    case CURLE_OUT_OF_MEMORY: return Error{ENOMEM, detail};
    default: return Error{EIO, detail};
  }
}

// Options every request shares. curl copies string options.
void setCommon(CURL* h, const std::string& socket, const std::string& url, char* errbuf) {
  curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, socket.c_str());
  curl_easy_setopt(h, CURLOPT_URL, url.c_str());
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, kConnectTimeoutMs);
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "dockquota");
  curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, kMaxBody);
  errbuf[0] = '\0';
}

std::string baseUrl(const std::string& version) {
  return version.empty() ? "http://localhost" : "http://localhost/v" + version;
}

// One transfer of an easy handle on a multi handle, driven step by step: to
// its end, or until the caller has what it waits for (the reply's head, the
// next piece of a streamed body, a stop flag).
class Transfer {
 public:
  Transfer(CURLM* m, CURL* h) : m_(m), h_(h) {
    if (curl_multi_add_handle(m, h) != CURLM_OK) {
      ended_ = true;
      result_ = CURLE_FAILED_INIT;
    } else {
      added_ = true;
    }
  }
  // Removing an unfinished transfer closes its connection.
  ~Transfer() {
    if (added_) curl_multi_remove_handle(m_, h_);
  }
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;

  // Runs until the transfer ends (true) or `enough()` holds (false). Waits
  // in curl_multi_poll, which curl_multi_wakeup() interrupts.
  bool run(const std::function<bool()>& enough) {
    while (!ended_) {
      if (enough && enough()) return false;
      int running = 0;
      if (curl_multi_perform(m_, &running) != CURLM_OK) {
        end(CURLE_FAILED_INIT);
        break;
      }
      int left = 0;
      while (CURLMsg* msg = curl_multi_info_read(m_, &left)) {
        if (msg->msg == CURLMSG_DONE && msg->easy_handle == h_) end(msg->data.result);
      }
      if (ended_ || (enough && enough())) break;
      // 1 s is only a safety net: curl wakes the poll for its own timers.
      if (curl_multi_poll(m_, nullptr, 0, 1000, nullptr) != CURLM_OK) end(CURLE_FAILED_INIT);
    }
    return ended_;
  }
  bool ended() const { return ended_; }
  CURLcode result() const { return result_; }

 private:
  void end(CURLcode rc) {
    ended_ = true;
    result_ = rc;
  }
  CURLM* m_;
  CURL* h_;
  bool added_ = false;
  bool ended_ = false;
  CURLcode result_ = CURLE_OK;
};

// The status of the final reply when `line` ends a head (1xx heads come
// before it), else 0.
long finalStatusAt(CURL* h, std::string_view line) {
  if (line != "\r\n" && line != "\n") return 0;
  long status = 0;
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  return status >= 200 ? status : 0;
}

// A streamed body waits here for the reader, at most about this much: beyond
// it curl is paused and the rest stays in the socket.
constexpr size_t kStreamChunk = 64u << 10;

// One request's reply as the callbacks fill it in.
struct Reply {
  CURL* h = nullptr;
  bool stream = false;  // a 200 reply's body goes to `pending` for a BodyReader
  bool drop = false;    // the reader is done: what is left of the body is dropped
  long status = 0;      // of the final head, once read
  Body kept;            // any other body, whole
  std::string pending;  // streamed bytes the reader has not taken yet
  bool paused = false;  // curl holds bytes back until the reader wants more
};

size_t replyHeader(char* p, size_t size, size_t n, void* ud) noexcept {
  auto* r = static_cast<Reply*>(ud);
  if (r->status == 0) r->status = finalStatusAt(r->h, std::string_view(p, size * n));
  return size * n;
}

size_t replyBody(char* p, size_t size, size_t n, void* ud) noexcept {
  auto* r = static_cast<Reply*>(ud);
  const size_t len = size * n;
  if (!r->stream || r->status != 200) return writeBody(p, size, n, &r->kept);
  if (r->drop) return len;
  if (!r->pending.empty() && r->pending.size() + len > kStreamChunk) {
    r->paused = true;
    return CURL_WRITEFUNC_PAUSE;  // curl keeps this piece and hands it over again
  }
  try {
    r->pending.append(p, len);
  } catch (...) { return 0; }
  return len;
}

// A 200 reply's body as a streambuf: underflow() drives the transfer until
// curl hands over the next piece.
class ReplyStream : public std::streambuf {
 public:
  ReplyStream(Transfer& t, Reply& r) : t_(t), r_(r) {}

 protected:
  int_type underflow() override {
    if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
    if (eback()) {  // all that was handed over is read (what came with the head was not yet)
      r_.pending.clear();
      setg(nullptr, nullptr, nullptr);
    }
    if (r_.paused) {
      r_.paused = false;
      curl_easy_pause(r_.h, CURLPAUSE_CONT);  // may hand the held piece over at once
    }
    t_.run([this] { return !r_.pending.empty(); });
    if (r_.pending.empty()) return traits_type::eof();
    char* p = r_.pending.data();
    setg(p, p, p + r_.pending.size());
    return traits_type::to_int_type(*p);
  }

 private:
  Transfer& t_;
  Reply& r_;
};

// One blocking request on a (reused) easy handle, driven by the multi handle
// `m`. Errors are the transport's. With `read`, a 200 reply's body goes to it
// as it arrives, and what it returns is put in *read_status.
Result<DockerReply> perform(CURLM* m, CURL* h, const std::string& socket, long timeout_ms, const std::string& method,
                            const std::string& url, const std::string& body, const BodyReader* read = nullptr,
                            Status* read_status = nullptr) {
  curl_easy_reset(h);
  char errbuf[CURL_ERROR_SIZE];
  setCommon(h, socket, url, errbuf);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
  Reply reply;
  reply.h = h;
  reply.stream = read != nullptr;
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, replyHeader);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &reply);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, replyBody);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply);
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers(nullptr, curl_slist_free_all);
  auto addHeader = [&](const char* line) { headers.reset(curl_slist_append(headers.release(), line)); };
  if (method == "GET") {
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
  } else if (method == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else {
    if (!body.empty() || method == "POST" || method == "PUT") {
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
      if (!body.empty()) addHeader("Content-Type: application/json");
      addHeader("Expect:");  // no 100-continue round trip
    }
    if (method != "POST") curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method.c_str());
  }
  if (headers) curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());

  Transfer t(m, h);
  bool read_failed = false;
  if (read) {
    t.run([&] { return reply.status != 0; });
    if (reply.status == 200) {
      ReplyStream buf(t, reply);
      std::istream in(&buf);
      *read_status = (*read)(in);
      read_failed = !read_status->ok();
      reply.drop = true;
      std::string().swap(reply.pending);
      if (reply.paused) curl_easy_pause(h, CURLPAUSE_CONT);
    }
  }
  // The rest of the reply (after a reader that took it all: nothing, but
  // finishing keeps the connection for the next request). After a reader
  // that gave up, the transfer is dropped with its connection.
  if (!read_failed) t.run(nullptr);
  // A connection lost in the middle of a body fails the reader too; the
  // transport's reason is the one to give.
  if (t.ended() && t.result() != CURLE_OK)
    return transportError(h, t.result(), errbuf, socket, reply.kept.overflow, timeout_ms);
  return DockerReply{reply.status, std::move(reply.kept.data)};
}

// GET /version (unversioned) on `h`. Errors have no prefix; *transport tells
// a daemon that is not there from one that answered something unusable.
Result<std::string> negotiateOn(CURLM* m, CURL* h, const std::string& socket, long timeout_ms, bool* transport) {
  auto r = perform(m, h, socket, timeout_ms, "GET", baseUrl("") + "/version", "");
  *transport = !r.ok();
  if (!r) return r.error();
  return chooseApiVersion(r->status, r->body);
}

}  // namespace

// --- DockerClient -------------------------------------------------------------

DockerClient::DockerClient(std::string socket_path, std::chrono::milliseconds timeout)
    : socket_(std::move(socket_path)), timeout_(timeout) {
  globalInit();
  curl_ = curl_easy_init();
  multi_ = curl_multi_init();
}

DockerClient::~DockerClient() {
  if (curl_) curl_easy_cleanup(static_cast<CURL*>(curl_));
  if (multi_) curl_multi_cleanup(static_cast<CURLM*>(multi_));
}

Result<std::string> DockerClient::negotiate() {
  std::lock_guard<std::mutex> lock(mu_);
  auto* h = static_cast<CURL*>(curl_);
  auto* m = static_cast<CURLM*>(multi_);
  if (!h || !m) return Error{ENOMEM, "docker: cannot create a curl handle"};
  version_.clear();
  bool transport = false;
  auto v = negotiateOn(m, h, socket_, timeout_.count(), &transport);
  if (!v) return v.error().context("docker: GET /version");
  version_ = *v;
  LOG_DEBUG(kLog, "speaking API %s with %s", version_.c_str(), socket_.c_str());
  return v;
}

std::string DockerClient::apiVersion() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

Result<DockerReply> DockerClient::request(const std::string& method, const std::string& path, const std::string& body) {
  return exchange(method, path, body, nullptr);
}

Result<DockerReply> DockerClient::exchange(const std::string& method, const std::string& path, const std::string& body,
                                           const BodyReader* read) {
  const std::string what = "docker: " + method + " " + path;
  if (path.empty() || path[0] != '/') return Error{EINVAL, what + ": path must start with /"};
  std::lock_guard<std::mutex> lock(mu_);
  auto* h = static_cast<CURL*>(curl_);
  auto* m = static_cast<CURLM*>(multi_);
  if (!h || !m) return Error{ENOMEM, what + ": cannot create a curl handle"};
  for (int attempt = 0;; ++attempt) {
    if (version_.empty()) {
      bool transport = false;
      auto v = negotiateOn(m, h, socket_, timeout_.count(), &transport);
      if (!v) {
        // A daemon that is not there fails the caller's request as such
        // ("cannot connect"); an unusable /version reply is named.
        return v.error().context(transport ? what : what + ": API version negotiation: GET /version");
      }
      version_ = *v;
      LOG_DEBUG(kLog, "speaking API %s with %s", version_.c_str(), socket_.c_str());
    }
    Status read_status;
    auto r = perform(m, h, socket_, timeout_.count(), method, baseUrl(version_) + path, body, read, &read_status);
    if (!r) {
      version_.clear();  // the next connection may reach another dockerd
      return r.error().context(what);
    }
    if (!read_status) return read_status.error().context(what);
    if (attempt == 0 && versionTooNew(r->status, r->body)) {
      // curl reconnected transparently to a restarted, older dockerd; the
      // version check runs before any handler, so repeating is safe.
      LOG_INFO(kLog, "%s: dockerd refused API %s (%s); renegotiating", forLog(what), version_.c_str(),
               dockerMessage(r->body).c_str());
      version_.clear();
      continue;
    }
    return r;
  }
}

namespace {
// A GET's reply that is not 200.
Error statusError(const std::string& path, const DockerReply& r) {
  const std::string what = "docker: GET " + path;
  if (r.status == 404) return Error{ENOENT, what + ": not found: " + dockerMessage(r.body)};
  return Error{EIO, what + ": HTTP " + std::to_string(r.status) + ": " + dockerMessage(r.body)};
}
}  // namespace

Result<nlohmann::json> DockerClient::getJson(const std::string& path) {
  auto r = request("GET", path);
  if (!r) return r.error();
  if (r->status != 200) return statusError(path, *r);
  json j = json::parse(r->body, nullptr, false);
  if (j.is_discarded()) return Error{EPROTO, "docker: GET " + path + ": reply is not JSON: " + snippet(r->body)};
  return j;
}

Status DockerClient::getStreamed(const std::string& path, const BodyReader& read) {
  auto r = exchange("GET", path, "", &read);
  if (!r) return r.error();
  if (r->status != 200) return statusError(path, *r);
  return {};
}

template <typename T>
Result<T> DockerClient::getParsed(const std::string& path, Result<T> (*parse)(std::istream&)) {
  std::optional<T> out;
  auto st = getStreamed(path, [&](std::istream& in) -> Status {
    auto r = parse(in);
    if (!r) return r.error();
    out = std::move(*r);
    return {};
  });
  if (!st) return st.error();
  if (!out)
    return Error{EPROTO, "docker: GET " + path + ": no reply body was read"};  // not reached: 200 runs the reader
  return std::move(*out);
}

Result<nlohmann::json> DockerClient::inspectContainer(const std::string& id) {
  auto seg = pathSegment("container id", id);
  if (!seg) return seg.error();
  return getJson("/containers/" + *seg + "/json");
}

Result<nlohmann::json> DockerClient::inspectImage(const std::string& ref) {
  auto seg = pathSegment("image reference", ref);
  if (!seg) return seg.error();
  return getJson("/images/" + *seg + "/json");
}

Result<nlohmann::json> DockerClient::inspectVolume(const std::string& name) {
  auto seg = pathSegment("volume name", name);
  if (!seg) return seg.error();
  return getJson("/volumes/" + *seg);
}

Result<std::vector<DockerContainer>> DockerClient::listContainers() {
  return getParsed("/containers/json?all=1", parseContainerList);
}

Result<std::vector<DockerImage>> DockerClient::listImages(bool all) {
  return getParsed(all ? "/images/json?all=1" : "/images/json", parseImageList);
}

Result<std::vector<DockerVolume>> DockerClient::listVolumes() { return getParsed("/volumes", parseVolumeList); }

Result<DockerDiskUsage> DockerClient::systemDf() { return getParsed("/system/df", parseDiskUsage); }

// --- DockerEventStream -------------------------------------------------------

namespace {

// State of one GET /events connection, shared with curl's callbacks. Nothing
// may throw out of a callback: user callbacks are wrapped, the rest is noexcept.
struct StreamConn {
  const DockerEventStream::Callbacks* cb = nullptr;
  std::atomic<bool>* connected = nullptr;
  std::atomic<uint64_t>* reconnects = nullptr;  // set when this is not the first connection
  CURL* h = nullptr;
  const char* version = "";
  const char* socket = "";
  long status = 0;
  bool headers_done = false;
  std::string line;       // partial message carried across callbacks
  bool skipping = false;  // inside a message longer than kMaxEventLine
  uint64_t events = 0;
  uint64_t skipped = 0;
  std::string error_body;  // of a non-200 reply
};

template <typename F>
void guarded(const char* which, F&& f) noexcept {
  try {
    f();
  } catch (const std::exception& e) { LOG_ERROR(kLog, "events: %s callback threw: %s", which, e.what()); } catch (...) {
    LOG_ERROR(kLog, "events: %s callback threw a non-exception", which);
  }
}

size_t streamHeader(char* p, size_t size, size_t n, void* ud) noexcept {
  auto* c = static_cast<StreamConn*>(ud);
  size_t len = size * n;
  if (c->headers_done) return len;
  if (long status = finalStatusAt(c->h, std::string_view(p, len))) {
    c->status = status;
    c->headers_done = true;
    if (status == 200) {
      LOG_INFO(kLog, "events: connected to %s (API %s)", c->socket, c->version);
      c->connected->store(true);
      if (c->reconnects) c->reconnects->fetch_add(1);
      if (c->cb->on_connected) guarded("on_connected", [&] { c->cb->on_connected(); });
    }
  }
  return len;
}

void deliver(StreamConn* c, std::string_view msg) noexcept {
  while (!msg.empty() && (msg.back() == '\r' || msg.back() == ' ')) msg.remove_suffix(1);
  if (msg.empty()) return;
  json j = json::parse(msg.begin(), msg.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    ++c->skipped;
    LOG_WARN(kLog, "events: skipping a message that is not a JSON object: %s", snippet(msg).c_str());
    return;
  }
  ++c->events;
  if (c->cb->on_event) guarded("on_event", [&] { c->cb->on_event(j); });
}

size_t streamBody(char* p, size_t size, size_t n, void* ud) noexcept {
  auto* c = static_cast<StreamConn*>(ud);
  size_t len = size * n;
  if (c->status != 200) {
    size_t room = kMaxErrorBody > c->error_body.size() ? kMaxErrorBody - c->error_body.size() : 0;
    try {
      c->error_body.append(p, std::min(room, len));
    } catch (...) {}
    return len;
  }
  std::string_view data(p, len);
  try {
    while (!data.empty()) {
      size_t nl = data.find('\n');
      std::string_view part = data.substr(0, nl);  // npos: all of it
      if (!c->skipping) {
        if (c->line.size() + part.size() > kMaxEventLine) {
          c->skipping = true;
          c->line.clear();
          c->line.shrink_to_fit();
          ++c->skipped;
          LOG_WARN(kLog, "events: skipping a message longer than %zu bytes", kMaxEventLine);
        } else if (nl != std::string_view::npos && c->line.empty()) {
          deliver(c, part);  // the common case: a whole message in one callback
        } else {
          c->line.append(part);
          if (nl != std::string_view::npos) {
            deliver(c, c->line);
            c->line.clear();
          }
        }
      }
      if (nl == std::string_view::npos) break;
      c->skipping = false;
      data.remove_prefix(nl + 1);
    }
  } catch (...) {
    return 0;  // bad_alloc: fail the transfer, the stream reconnects
  }
  return len;
}

// Runs one transfer to completion on the multi handle; returns early with
// CURLE_ABORTED_BY_CALLBACK when `stop` is set (stop() wakes the poll).
CURLcode runTransfer(CURLM* m, CURL* h, const std::atomic<bool>& stop) {
  Transfer t(m, h);
  return t.run([&] { return stop.load(); }) ? t.result() : CURLE_ABORTED_BY_CALLBACK;
}

}  // namespace

DockerEventStream::DockerEventStream(std::string socket_path, Callbacks callbacks,
                                     std::chrono::milliseconds backoff_base, std::chrono::milliseconds backoff_cap)
    : socket_(std::move(socket_path)), cb_(std::move(callbacks)), backoff_(backoff_base, backoff_cap) {
  globalInit();
  multi_ = curl_multi_init();
}

DockerEventStream::~DockerEventStream() {
  stop();
  if (multi_) curl_multi_cleanup(static_cast<CURLM*>(multi_));
}

void DockerEventStream::start() {
  if (worker_.running()) return;
  stop_.store(false);
  worker_.start(
      "dq-events", [this] { run(); }, [this] { halt(); });
}

// A callback may stop its own stream: the worker then only halts, and the next stop() joins.
void DockerEventStream::stop() { worker_.stop(); }

void DockerEventStream::halt() {
  {
    std::lock_guard<std::mutex> lock(wait_mu_);  // no lost wakeup against the backoff wait
    stop_.store(true);
  }
  wait_cv_.notify_all();
  if (multi_) curl_multi_wakeup(static_cast<CURLM*>(multi_));
}

void DockerEventStream::run() {
  auto* m = static_cast<CURLM*>(multi_);
  CURL* h = curl_easy_init();
  if (!m || !h) {
    LOG_ERROR(kLog, "events: cannot create curl handles; no Docker events");
    if (h) curl_easy_cleanup(h);
    return;
  }
  const std::string filters = escape(kEventsFilter);
  bool ever_connected = false;
  std::string last_failure;
  char errbuf[CURL_ERROR_SIZE];

  while (!stop_.load()) {
    std::string reason;  // why this round ended
    bool was_connected = false;
    uint64_t delivered = 0;
    Clock::time_point connected_at;

    // Negotiate on every (re)connect: a restarted dockerd may speak another version.
    Body vbody;
    curl_easy_reset(h);
    setCommon(h, socket_, "http://localhost/version", errbuf);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, kStreamNegotiateTimeoutMs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, writeBody);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &vbody);
    CURLcode rc = runTransfer(m, h, stop_);
    Result<std::string> version = Error{};
    if (rc != CURLE_OK) {
      version = transportError(h, rc, errbuf, socket_, vbody.overflow, kStreamNegotiateTimeoutMs)
                    .context("docker: GET /events");
    } else {
      long status = 0;
      curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
      version = chooseApiVersion(status, vbody.data);
      if (!version) version = version.error().context("docker: GET /events: API version negotiation: GET /version");
    }

    if (version && !stop_.load()) {
      StreamConn conn;
      conn.cb = &cb_;
      conn.connected = &connected_;
      conn.reconnects = ever_connected ? &reconnects_ : nullptr;
      conn.h = h;
      conn.version = version->c_str();
      conn.socket = socket_.c_str();
      curl_easy_reset(h);
      setCommon(h, socket_, baseUrl(*version) + "/events?filters=" + filters, errbuf);
      curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(0));  // endless by design
      curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, streamHeader);
      curl_easy_setopt(h, CURLOPT_HEADERDATA, &conn);
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, streamBody);
      curl_easy_setopt(h, CURLOPT_WRITEDATA, &conn);
      auto t0 = Clock::now();
      rc = runTransfer(m, h, stop_);
      was_connected = conn.status == 200;
      connected_at = t0;
      delivered = conn.events;
      connected_.store(false);
      if (stop_.load()) {
        reason = "stopped";
      } else if (rc != CURLE_OK) {
        reason = transportError(h, rc, errbuf, socket_, false, 0).context("docker: GET /events").message;
      } else if (conn.status != 200) {
        reason = "docker: GET /events: HTTP " + std::to_string(conn.status) + ": " + dockerMessage(conn.error_body);
      } else {
        reason = "docker: GET /events: dockerd ended the stream";
      }
      if (was_connected) {
        ever_connected = true;
        last_failure.clear();
        if (cb_.on_disconnected) guarded("on_disconnected", [&] { cb_.on_disconnected(reason); });
      }
    } else if (!version) {
      reason = version.error().message;
    }
    if (stop_.load()) break;

    auto lived = Clock::now() - connected_at;
    if (was_connected && (delivered > 0 || lived > kHealthyConnection)) backoff_.reset();
    auto delay = backoff_.next();
    if (was_connected || reason != last_failure) {
      LOG_WARN(kLog, "%s; reconnecting in %lld ms", forLog(reason), static_cast<long long>(delay.count()));
    } else {
      LOG_DEBUG(kLog, "%s; reconnecting in %lld ms", forLog(reason), static_cast<long long>(delay.count()));
    }
    if (!was_connected) last_failure = reason;
    std::unique_lock<std::mutex> lock(wait_mu_);
    wait_cv_.wait_for(lock, delay, [this] { return stop_.load(); });
  }
  curl_easy_cleanup(h);
}

}  // namespace dockquota
