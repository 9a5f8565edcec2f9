// SPDX-License-Identifier: Apache-2.0
// fuzz-http-head: parseRequestHead() (api/http_server.h), the API
// transport's reading of a request head, on the input as the bytes a client
// sent up to and including the blank line (the loop only hands it a head that
// ends in "\r\n\r\n" or "\n\n" and is at most max_head_bytes: so does this).
//
// Checked: a refusal is one the loop knows how to answer (400, 431, 505) with
// a message; an accepted head has a token for a method, an origin-form target
// (or "*") without spaces or control bytes, HTTP/1.0 or 1.1, at most
// kMaxRequestHeaders fields whose names are tokens and whose values hold no
// CR, LF or other control byte but tab (so nothing can smuggle a second
// request or header through them), and a path decoded from the target.
#include <string>

#include <httplib.h>

#include "api/http_server.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {
namespace {

bool tokenChar(unsigned char c) {
  return c > 0x20 && c < 0x7f && std::string("()<>@,;:\\\"/[]?={}").find(char(c)) == std::string::npos;
}

bool token(const std::string& s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!tokenChar(c)) return false;
  return true;
}

}  // namespace

int httpHead(const uint8_t* data, size_t size) {
  std::string head(reinterpret_cast<const char*>(data), size);
  if (head.size() > 16 * 1024) return -1;  // the loop refuses it before parsing (431/414)
  const size_t end = head.find("\r\n\r\n") != std::string::npos ? head.find("\r\n\r\n") + 4
                     : head.find("\n\n") != std::string::npos   ? head.find("\n\n") + 2
                                                                : std::string::npos;
  if (end == std::string::npos)
    head += "\r\n\r\n";
  else
    head.resize(end);

  httplib::Request req;
  const HeadVerdict v = parseRequestHead(head, req);
  if (v.status != 0) {
    DQ_FUZZ_CHECK(v.status == 400 || v.status == 431 || v.status == 505);
    DQ_FUZZ_CHECK(!v.msg.empty());
    return 0;
  }
  DQ_FUZZ_CHECK(token(req.method));
  DQ_FUZZ_CHECK(!req.target.empty() && (req.target[0] == '/' || req.target == "*"));
  for (unsigned char c : req.target) DQ_FUZZ_CHECK(c > 0x20 && c != 0x7f);
  DQ_FUZZ_CHECK(req.version == "HTTP/1.1" || req.version == "HTTP/1.0");
  DQ_FUZZ_CHECK(req.headers.size() <= kMaxRequestHeaders);
  for (const auto& [name, value] : req.headers) {
    DQ_FUZZ_CHECK(token(name));
    for (unsigned char c : value) DQ_FUZZ_CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
  }
  DQ_FUZZ_CHECK(req.target == "*" || !req.path.empty() || req.target[0] == '/');
  return 0;
}

}  // namespace dockquota::fuzz
