// SPDX-License-Identifier: Apache-2.0
#include "api/http_api.h"

#include <openssl/crypto.h>
#include <pwd.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <ctime>
#include <httplib.h>

#include "agent/attribution/attributor.h"
#include "agent/base/base64.h"
#include "agent/base/log.h"
#include "agent/base/utf8.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "http";
using json = nlohmann::json;

}  // namespace

std::optional<uint64_t> queryDecimal(const std::string& s, uint64_t max) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + uint64_t(c - '0');
  }
  if (v > max) return std::nullopt;
  return v;
}

std::string isoTime(double t) {
  time_t secs = static_cast<time_t>(t);
  int ms = static_cast<int>((t - static_cast<double>(secs)) * 1000);
  tm tmv;
  gmtime_r(&secs, &tmv);
  char buf[40];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tmv);
  snprintf(buf + n, sizeof buf - n, ".%03dZ", ms);
  return buf;
}

std::string userName(uint32_t uid) {
  passwd pw, *out = nullptr;
  char buf[4096];
  if (getpwuid_r(uid, &pw, buf, sizeof buf, &out) == 0 && out) return out->pw_name;
  return "user_" + std::to_string(uid);
}

// Every JSON answer: names, comm, exe, Docker's text and stored rows may hold
// bytes that are not UTF-8, and dump() would throw on them.
void sendJson(httplib::Response& res, int status, const json& body) { sendJsonText(res, status, jsonText(body)); }

void sendJsonText(httplib::Response& res, int status, std::string body) {
  // set_content() would copy the body; a listing of 10,000 objects is MiBs.
  res.status = status;
  res.body = std::move(body);
  res.headers.erase("Content-Type");
  res.set_header("Content-Type", "application/json");
}

void sendError(httplib::Response& res, int status, const std::string& msg) {
  sendJson(res, status, json{{"msg", msg}});
}

// The JSON object in a PUT/POST body, or the 4xx already written to `res`.
std::optional<json> jsonBody(const httplib::Request& req, httplib::Response& res, size_t max_bytes) {
  if (req.body.size() > max_bytes) {
    sendError(res, 413, "request body too large (limit " + std::to_string(max_bytes) + " bytes)");
    return std::nullopt;
  }
  // "application/json", any case, parameters (charset) allowed.
  std::string type = req.get_header_value("Content-Type");
  type = type.substr(0, type.find(';'));
  while (!type.empty() && type.back() == ' ') type.pop_back();
  std::transform(type.begin(), type.end(), type.begin(), [](unsigned char c) { return std::tolower(c); });
  if (type != "application/json") {
    sendError(res, 400, "Content-Type must be application/json");
    return std::nullopt;
  }
  json j = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    sendError(res, 400, "request body is not valid JSON");
    return std::nullopt;
  }
  if (!j.is_object()) {
    sendError(res, 400, "request body must be a JSON object");
    return std::nullopt;
  }
  return j;
}

std::string jsonObjectText(const json& members, const std::map<std::string, JsonRows>& arrays, size_t size_hint) {
  std::string out;
  out.reserve(size_hint);
  out += '{';
  auto key = [&](const std::string& k) {
    if (out.size() > 1) out += ',';
    out += jsonText(json(k));
    out += ':';
  };
  auto array = [&](const std::string& k, const JsonRows& rows) {
    key(k);
    out += '[';
    const size_t start = out.size();
    rows([&](const json& row) {
      if (out.size() > start) out += ',';
      out += jsonText(row);
    });
    out += ']';
  };
  auto a = arrays.begin();
  for (auto m = members.begin(); m != members.end(); ++m) {
    for (; a != arrays.end() && a->first < m.key(); ++a) array(a->first, a->second);
    key(m.key());
    out += jsonText(m.value());
  }
  for (; a != arrays.end(); ++a) array(a->first, a->second);
  out += '}';
  return out;
}

int ApiServer::checkBasicAuth(const std::string& header, const std::string& key) {
  if (key.empty()) return 500;
  static const std::string kBasic = "Basic ";
  if (header.size() <= kBasic.size() || header.compare(0, kBasic.size(), kBasic) != 0) return 401;
  // Credentials are a few dozen bytes: a longer header is refused unread.
  const std::string_view b64 = std::string_view(header).substr(kBasic.size());
  const std::string given = b64.size() > 4096 ? std::string() : base64Decode(b64).value_or("");
  const std::string want = "api:" + key;
  // Constant time in the key: compare equal-length buffers with CRYPTO_memcmp,
  // and fold the length check in rather than returning early on it.
  std::string padded = given;
  padded.resize(want.size(), '\0');
  const bool same_bytes = CRYPTO_memcmp(padded.data(), want.data(), want.size()) == 0;
  return (same_bytes && given.size() == want.size()) ? 0 : 403;
}

namespace {
HttpServerOptions transportOptions(const ApiServerOptions& o) {
  HttpServerOptions t;
  t.address = o.address;
  t.port = o.port;
  t.tls_cert_file = o.tls_cert_file;
  t.tls_key_file = o.tls_key_file;
  t.threads = o.threads;
  t.max_connections = o.max_connections;
  t.max_connections_per_peer = o.max_connections_per_peer;
  t.request_timeout = o.request_timeout;
  t.idle_timeout = o.idle_timeout;
  return t;
}
}  // namespace

ApiServer::ApiServer(ApiServerOptions options, Store& store, HealthFn health)
    : opt_(std::move(options)), store_(store), health_(std::move(health)) {
  // /healthz also says what the transport refused, evicted and timed out.
  health_ = [this, inner = std::move(health_)] {
    json h = inner ? inner() : json{{"status", "ok"}};
    h["http"] = metrics_.transport().toJson();
    return h;
  };
  http_ = std::make_unique<HttpServer>(
      transportOptions(opt_), [this](httplib::Request& req, httplib::Response& res) { dispatch(req, res); },
      metrics_.transport());
  routes();
}

void ApiServer::route(const std::string& method, const std::string& pattern, Handler handler) {
  static const std::set<std::string> kMethods = {"GET", "PUT", "POST", "DELETE", "PATCH"};
  if (!kMethods.count(method)) {
    LOG_ERROR(kSub, "route %s %s: unsupported method", method.c_str(), pattern.c_str());
    return;
  }
  methods_[pattern].insert(method);
  routes_.push_back(Route{method, pattern, std::regex(pattern), std::move(handler)});
}

namespace {

// The method as a metrics label: a transport may pass any token through, and
// label values must stay bounded.
const std::string& methodLabel(const std::string& m) {
  static const std::set<std::string> kKnown = {"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"};
  static const std::string kOther = "other";
  return kKnown.count(m) ? m : kOther;
}

// A handler failed: whatever it wrote is dropped for a plain 500.
void internalError(httplib::Response& res) {
  res.headers.clear();
  res.body.clear();
  sendError(res, 500, "internal error");
}

}  // namespace

void ApiServer::handle(const Route& r, httplib::Request& req, httplib::Response& res) {
  const auto t0 = std::chrono::steady_clock::now();
  std::string failure;
  try {
    r.handler(req, res);
    if (res.status < 0 && res.body.empty()) failure = "the handler wrote no answer";
  } catch (const std::exception& e) { failure = e.what(); } catch (...) {
    failure = "unknown exception";
  }
  if (!failure.empty()) {
    LOG_ERROR(kSub, "%s %s: %s", req.method.c_str(), printable(req.path, kEchoBytes).c_str(),
              printable(failure, 512).c_str());
    internalError(res);
  }
  if (res.status < 0) res.status = 200;
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
  metrics_.observe(r.pattern, methodLabel(req.method), res.status, took.count());
}

void ApiServer::dispatch(httplib::Request& req, httplib::Response& res) {
  route(req, res);
  // HEAD: every answer (404 and 405 too, fuzz-api/regressions/head-404)
  // without its body, its size kept.
  if (req.method == "HEAD" && !res.body.empty()) {
    res.set_header("Content-Length", std::to_string(res.body.size()));
    res.body.clear();
  }
}

void ApiServer::route(httplib::Request& req, httplib::Response& res) {
  try {
    if (req.path.size() > kMaxPathBytes) {
      metrics_.observe("unmatched", methodLabel(req.method), 414, 0);
      return sendError(res, 414, "request URI too long");
    }
    const bool head = req.method == "HEAD";
    static const std::string kGet = "GET";
    const std::string& method = head ? kGet : req.method;
    std::set<std::string> allowed;       // methods of the patterns that match the path
    const std::string* first = nullptr;  // the first of them
    for (const Route& r : routes_) {
      if (!std::regex_match(req.path, req.matches, r.re)) continue;
      if (r.method == method) {
        handle(r, req, res);
        return;
      }
      if (!first) first = &r.pattern;
      allowed.insert(r.method);
    }
    req.matches = std::smatch();
    if (!first) {
      metrics_.observe("unmatched", methodLabel(req.method), 404, 0);
      return sendError(res, 404, "not found");
    }
    std::string allow;
    json list = json::array();
    auto add = [&](const std::string& m) {
      allow += (allow.empty() ? "" : ", ") + m;
      list.push_back(m);
    };
    for (const auto& m : allowed) {
      add(m);
      if (m == "GET") add("HEAD");
    }
    add("OPTIONS");
    res.set_header("Allow", allow);
    if (req.method == "OPTIONS") {
      sendJson(res, 200, json{{"allow", std::move(list)}});
    } else {
      sendError(res, 405, "method not allowed");
    }
    metrics_.observe(*first, methodLabel(req.method), res.status, 0);
  } catch (...) {
    // Only a failure of the router itself gets here (a regex out of stack, an
    // allocation): handlers' exceptions are caught in handle().
    LOG_ERROR(kSub, "%s %s: routing failed", methodLabel(req.method).c_str(), printable(req.path, kEchoBytes).c_str());
    internalError(res);
  }
}

ApiServer::~ApiServer() { stop(); }

bool ApiServer::authorize(const httplib::Request& req, httplib::Response& res) const {
  switch (checkBasicAuth(req.get_header_value("Authorization"), opt_.api_key)) {
    case 0: return true;
    case 401: sendError(res, 401, "authorization required"); return false;
    case 403: sendError(res, 403, "access forbidden"); return false;
    default: sendError(res, 500, "api key not specified in app config"); return false;
  }
}

json ApiServer::objectJson(const ObjectRecord& r, const std::function<const std::string&(uint32_t)>& user) const {
  json j = {{"id", r.id}, {"name", r.name}, {"first_seen", isoTime(r.first_seen)}};
  if (r.kind == ObjectKind::Container) j["image"] = r.parent;
  if (r.kind == ObjectKind::Volume) j["container"] = r.parent.empty() ? json(nullptr) : json(r.parent);
  j["label_user"] = r.label_user ? json(*r.label_user) : json(nullptr);
  j["gone_at"] = r.gone_at ? json(isoTime(*r.gone_at)) : json(nullptr);
  if (!r.owner) {
    j["source"] = "unattributed";
    for (const char* k :
         {"uid", "user", "login_uid", "billed_uid", "billed_user", "pid", "comm", "exe", "method", "attributed_at"}) {
      j[k] = nullptr;
    }
    return j;
  }
  const Evidence& ev = *r.owner;
  const uint32_t billed = billedUid(ev, opt_.bill_root_to_login_uid);
  j["source"] = toString(ev.source);
  j["uid"] = ev.uid;
  j["user"] = user(ev.uid);
  j["login_uid"] = ev.login_uid ? json(*ev.login_uid) : json(nullptr);
  j["billed_uid"] = billed;
  j["billed_user"] = user(billed);
  j["pid"] = ev.pid;
  j["comm"] = ev.comm;
  j["exe"] = ev.exe;
  j["method"] = ev.method;
  j["attributed_at"] = isoTime(ev.time);
  return j;
}

// Written row by row as the store reads them (neither a list of records nor
// a JSON tree of 10,000 objects is held, only the text), with each uid's
// passwd name looked up once. The rows come before "count", which is known
// only after them.
void ApiServer::listObjects(ObjectKind kind, const char* plural, httplib::Response& res) const {
  std::map<uint32_t, std::string> names;
  auto user = [&](uint32_t uid) -> const std::string& {
    auto it = names.find(uid);
    return it != names.end() ? it->second : names.emplace(uid, userName(uid)).first->second;
  };
  constexpr size_t kRowBytes = 640;  // a container with both owners' names is ~450
  std::string body;
  if (auto n = store_.objects().count(kind)) body.reserve(*n * kRowBytes + 64);
  body += '{';
  body += jsonText(json(plural));
  body += ":[";
  size_t count = 0;
  auto st = store_.objects().forEach(kind, [&](const ObjectRecord& r) {
    if (count++) body += ',';
    body += jsonText(objectJson(r, user));
  });
  if (!st) {
    LOG_ERROR(kSub, "%s", st.error().message.c_str());
    sendError(res, 500, st.error().message);  // a store that cannot be read: genuine
    return;
  }
  body += "],\"count\":";
  body += std::to_string(count);
  body += '}';
  sendJsonText(res, 200, std::move(body));
}

void ApiServer::routes() {
  route("GET", "/healthz", [this](const httplib::Request&, httplib::Response& res) {
    json h = health_ ? health_() : json{{"status", "ok"}};
    sendJson(res, h.value("status", "ok") == "failing" ? 503 : 200, h);
  });
  struct Listing {
    const char* path;
    ObjectKind kind;
    const char* plural;
  };
  for (const Listing& l : {Listing{"/api/v1/containers", ObjectKind::Container, "containers"},
                           Listing{"/api/v1/images", ObjectKind::Image, "images"},
                           Listing{"/api/v1/volumes", ObjectKind::Volume, "volumes"}}) {
    route("GET", l.path, [this, l](const httplib::Request& req, httplib::Response& res) {
      if (authorize(req, res)) listObjects(l.kind, l.plural, res);
    });
  }
  // Every error is JSON {"msg": ...} (the qman master calls .json() on all
  // answers): dispatch() writes its own, the transport (HttpServer) its refusals.
  // The transport (SO_REUSEADDR only, caps, deadlines, body limit) is HttpServer's.
}

Result<int> ApiServer::start() {
  auto port = http_->start();  // errors name the TLS files or the address
  if (!port) return port.error();
  LOG_INFO(kSub, "listening on %s://%s:%d (%d workers, up to %d connections, %d per peer)", tls() ? "https" : "http",
           opt_.address.c_str(), *port, opt_.threads, opt_.max_connections, opt_.max_connections_per_peer);
  return *port;
}

void ApiServer::stop() {
  if (http_) http_->stop();
}

}  // namespace dockquota
