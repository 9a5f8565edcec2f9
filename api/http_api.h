// SPDX-License-Identifier: Apache-2.0
// The agent's HTTP surface: /healthz without auth, /api/v1/* behind HTTP
// Basic `api` + the configured key. Served by our own transport
// (api/http_server.h: an epoll loop with deadlines and connection caps);
// httplib::Request/Response are the handlers' data types. Reads agent state
// through the Store and a health callback; never touches libbpf or Docker.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/result.h"
#include "agent/store/store.h"
#include "api/http_server.h"
#include "api/metrics.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace dockquota {

struct ApiServerOptions {
  std::string address = "127.0.0.1";
  uint16_t port = 8436;  // 0 = pick a free port (tests)
  std::string api_key;   // empty: every authenticated route answers 500, as qman does
  bool bill_root_to_login_uid = true;
  int threads = 4;  // workers running handlers; slow clients never hold one
  // Both set: HTTPS only (PEM files). The API key is sent with every request,
  // so anything but loopback should use it.
  std::string tls_cert_file = {};
  std::string tls_key_file = {};
  // The transport's caps and deadlines (HttpServerOptions says why each).
  int max_connections = 256;
  int max_connections_per_peer = 32;
  std::chrono::milliseconds request_timeout{10000};
  std::chrono::milliseconds idle_timeout{5000};
};

// Health as JSON: {"status": "ok"|"degraded"|"failing", ...}. Called per request.
using HealthFn = std::function<nlohmann::json()>;

class ApiServer {
 public:
  ApiServer(ApiServerOptions options, Store& store, HealthFn health);
  ~ApiServer();

  using Handler = std::function<void(const httplib::Request&, httplib::Response&)>;

  // More routes (the qman /remote-api surface): installed before start().
  // They share the server, its JSON errors and authorize().
  // Registers `handler` for `method` ("GET", "PUT", "POST", "DELETE", "PATCH")
  // on `pattern` (a std::regex matched against the whole path, as httplib
  // does), timed into requestMetrics() under the pattern. Before start()
  // only: dispatch() reads the table without a lock.
  void route(const std::string& method, const std::string& pattern, Handler handler);
  // The router every transport calls with a parsed request (path decoded,
  // params and headers filled, body read): the first route, in registration
  // order, whose pattern matches the path and whose method is the request's
  // runs, with req.matches filled and its time observed into requestMetrics().
  // HEAD runs the GET route and drops the body (Content-Length says its size);
  // OPTIONS answers 200 with Allow; a known path with another method answers
  // 405 with Allow, an unknown one 404, a path over kMaxPathBytes 414, all as
  // JSON {"msg": ...}. A handler that throws gets a logged 500
  // {"msg": "internal error"}. Never throws.
  void dispatch(httplib::Request& req, httplib::Response& res);
  static constexpr size_t kMaxPathBytes = 8192;  // httplib's request-URI limit; the regexes recurse per byte
  RequestMetrics& requestMetrics() { return metrics_; }
  bool tls() const { return !opt_.tls_cert_file.empty(); }
  // Writes the 401/403/500 JSON error and returns false unless `req` carries
  // HTTP Basic api:<key>.
  bool authorize(const httplib::Request& req, httplib::Response& res) const;

  // Binds and serves on a thread; returns the bound port.
  Result<int> start();
  void stop();

  // Constant-time check of an Authorization header value against `api:<key>`.
  // 0 = ok, 401 = missing/not Basic, 403 = wrong, 500 = no key configured.
  static int checkBasicAuth(const std::string& header, const std::string& key);

 private:
  struct Route {
    std::string method;
    std::string pattern;
    std::regex re;
    Handler handler;
  };

  void routes();
  void handle(const Route& r, httplib::Request& req, httplib::Response& res);
  void route(httplib::Request& req, httplib::Response& res);  // dispatch() but HEAD's body
  nlohmann::json objectJson(const ObjectRecord& r, const std::function<const std::string&(uint32_t)>& user) const;
  void listObjects(ObjectKind kind, const char* plural, httplib::Response& res) const;

  ApiServerOptions opt_;
  Store& store_;
  HealthFn health_;
  RequestMetrics metrics_;
  std::vector<Route> routes_;                             // in registration order
  std::map<std::string, std::set<std::string>> methods_;  // pattern -> methods with a handler
  std::unique_ptr<HttpServer> http_;                      // calls dispatch(); last: stopped first
};

// Shared JSON helpers (also for later routes).
// A query value as a non-negative decimal that fits `max` (19 digits at
// most, so it cannot overflow), else nullopt: "", signs, spaces, hex refused.
std::optional<uint64_t> queryDecimal(const std::string& s, uint64_t max);
std::string isoTime(double unix_seconds);  // "2026-11-22T08:20:00.123Z"
std::string userName(uint32_t uid);        // passwd name, else "user_<uid>" (as qman)
void sendJson(httplib::Response& res, int status, const nlohmann::json& body);
void sendError(httplib::Response& res, int status, const std::string& msg);
// The JSON object in a PUT/POST body (Content-Type application/json, at most
// `max_bytes`), or nullopt with the 4xx already written to `res`.
std::optional<nlohmann::json> jsonBody(const httplib::Request& req, httplib::Response& res, size_t max_bytes);

// A JSON object with long arrays, as text: `members` are the other keys, each
// array is written one row at a time (`rows` calls `add` per row). A tree of
// 10,000 listed objects takes ~30 MiB; this holds one row's. Keys come out
// sorted, as nlohmann dumps objects. `size_hint`: the text's expected size
// (reserved, so it is not copied as it grows; untouched pages cost nothing).
using JsonRowSink = std::function<void(const nlohmann::json& row)>;
using JsonRows = std::function<void(const JsonRowSink& add)>;
std::string jsonObjectText(const nlohmann::json& members, const std::map<std::string, JsonRows>& arrays,
                           size_t size_hint = 0);
// sendJson() for a body already written as text (moved in, not copied).
void sendJsonText(httplib::Response& res, int status, std::string body);

}  // namespace dockquota
