// SPDX-License-Identifier: Apache-2.0
#include "cli/http_client.h"

#include <curl/curl.h>

#include <memory>

namespace dockquota::cli {
namespace {

// An answer over this is not one of ours: the agent's largest listing of
// 10,000 objects is a few MiB.
constexpr size_t kMaxBody = 64 << 20;

size_t collect(char* data, size_t size, size_t n, void* user) {
  auto* out = static_cast<std::string*>(user);
  if (out->size() + size * n > kMaxBody) return 0;  // curl fails the transfer (CURLE_WRITE_ERROR)
  out->append(data, size * n);
  return size * n;
}

}  // namespace

HttpResult httpRequest(const HttpTarget& t, const std::string& method, const std::string& path,
                       const std::string& body) {
  HttpResult r;
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) {
    r.error = "cannot initialise libcurl";
    return r;
  }
  CURL* c = curl.get();
  const std::string url = t.base_url + path;
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
  if (method == "HEAD") curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  if (!t.unix_socket.empty()) curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, t.unix_socket.c_str());
  if (!t.basic_auth.empty()) {
    curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
    curl_easy_setopt(c, CURLOPT_USERPWD, t.basic_auth.c_str());
  }
  if (!t.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, t.ca_file.c_str());
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, t.timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_slist* headers = nullptr;
  if (!body.empty()) {
    headers = curl_slist_append(headers, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, long(body.size()));
  }
  headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  const CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK) {
    r.error = curl_easy_strerror(rc);
    return r;
  }
  r.reached = true;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  return r;
}

}  // namespace dockquota::cli
