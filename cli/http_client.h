// SPDX-License-Identifier: Apache-2.0
// One blocking HTTP/1.1 request, for the command-line clients: libcurl (the
// project's one HTTP client stack), over TCP or a unix socket.
#pragma once

#include <string>

namespace dockquota::cli {

// Both clients' exit codes, as their --help and the README document them.
enum Exit { kOk = 0, kRefused = 1, kUsage = 2, kUnreachable = 3 };

struct HttpTarget {
  std::string base_url = "http://localhost";  // scheme://host[:port]; the host is ignored on a unix socket
  std::string unix_socket;                    // "" = TCP
  std::string basic_auth;                     // "user:password", "" = none
  std::string ca_file;                        // HTTPS: a CA bundle (e.g. the agent's self-signed certificate)
  long timeout_ms = 10000;
};

struct HttpResult {
  bool reached = false;  // false: no answer (refused, no socket, timeout); `error` says why
  long status = 0;
  std::string body;
  std::string error;
};

// `body` is sent as application/json when not empty.
HttpResult httpRequest(const HttpTarget& t, const std::string& method, const std::string& path,
                       const std::string& body = "");

}  // namespace dockquota::cli
