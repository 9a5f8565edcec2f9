// SPDX-License-Identifier: Apache-2.0
// The per-user socket: a read-only HTTP/1.1 + JSON API on a unix socket
// (default /run/dockquota/user.sock, mode 0666) that every local user may
// ask about their own quota, with no key. Who asks is the kernel's word
// (SO_PEERCRED at connect(), api/http_server.h), never the request's: a user
// sees only their own figures; root (uid 0) sees anyone's with ?uid= or
// ?user=, and the list of everyone.
//
//   GET /v1/quota    usage per device (docker, and the block/ZFS devices'
//                    entries for the uid), limit, level, enforcement state
//   GET /v1/objects  the user's containers, images and volumes by size, and
//                    the order enforcement would remove containers in
//   GET /v1/events   the user's recent events, newest first (?limit=, 1-200)
//   GET /v1/users    root only: every user with a limit or bytes
//
// Anything but GET (HEAD) is 405; every error is {"msg": ...}. The same
// transport as the main API (deadlines, caps, bounded heads), with the per-peer
// cap counted per uid. This is the read side other per-user services (an
// admission check) can share: UserView is what a user is judged on.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/base/health.h"
#include "agent/base/result.h"
#include "agent/enforcement/enforcer.h"
#include "api/http_server.h"
#include "api/metrics.h"
#include "api/qman_api.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace dockquota {

struct UserApiOptions {
  std::string path = "/run/dockquota/user.sock";
  uint32_t mode = 0666;  // every local user may connect; what they see is decided per uid
  int threads = 2;
  // Per uid, not per address: one user's connections make room among themselves.
  int max_connections = 256;
  int max_connections_per_peer = 16;
  std::chrono::milliseconds request_timeout{5000};
  std::chrono::milliseconds idle_timeout{5000};
  size_t max_head_bytes = 8 << 10;  // a GET with a query: well under 1 KiB
  size_t max_body_bytes = 4 << 10;  // GETs carry none; a small one is read so its 405 can be sent
};

struct UserApiContext {
  QmanContext& qman;             // usage snapshot, limits, users, devices
  Enforcer* enforcer = nullptr;  // nullptr: no enforcement preview
};

// A user's docker figures and level, as one request sees them.
struct UserView {
  uint32_t uid = 0;
  uint64_t usage = 0, limit = 0;  // bytes; limit 0 = none
  QuotaLevel level = QuotaLevel::Ok;
};
UserView userView(UserApiContext& ctx, uint32_t uid);

class UserApi {
 public:
  UserApi(UserApiOptions options, UserApiContext& ctx);
  ~UserApi();
  UserApi(const UserApi&) = delete;
  UserApi& operator=(const UserApi&) = delete;

  // Binds the socket (its directory must exist) and serves.
  Status start();
  void stop();
  // The router, for tests and the benchmark: what a request from `peer` gets.
  void handle(const PeerCred& peer, const httplib::Request& req, httplib::Response& res);
  // For /healthz: path, requests by outcome, the transport's counters.
  Health health() const;
  // For /metrics: dockquota_user_socket_requests_total{outcome},
  // dockquota_user_socket_connections_open and _refused_total{reason}.
  void renderMetrics(std::string& out) const;

 private:
  struct Stats {
    std::atomic<uint64_t> answered{0}, forbidden{0}, not_allowed{0}, not_found{0}, bad_request{0}, failed{0};
  };
  std::optional<uint32_t> subject(const PeerCred& peer, const httplib::Request& req, httplib::Response& res);
  void count(int status);

  UserApiOptions opt_;
  UserApiContext& ctx_;
  TransportMetrics transport_;
  Stats stats_;
  std::unique_ptr<HttpServer> http_;
};

}  // namespace dockquota
