// SPDX-License-Identifier: Apache-2.0
// fuzz-authz: admission control as dockerd and docker.sock clients drive it:
// the RequestMatcher fed with the requests the probe saw, and the plugin's
// router (AuthzPlugin::handle) answering Docker's calls, interleaved.
//
// Input: a sequence of operations, each an op byte then its fields:
//   0 seen     conn u8, sender u8, method str, target str, body str, gap u8:
//              a request whose head and body the probe saw
//   1 head     conn u8, sender u8, method str, target str: its head only
//   2 answered conn u8, target str: Docker's answer to it was seen
//   3 call     which u8 (Activate, AuthZReq, AuthZRes, another path), method
//              str, uri str, body str, raw u8, raw_text str: a plugin call,
//              built as Docker does (the body base64) or, with raw, raw_text
//   4 clock    ms u16: time passes
// Senders: 0 root, 1 alice (over her limit), 2 bob (under), 3 carol (none).
//
// Checked: every answer is JSON with a status Docker understands (200, or a
// 4xx carrying "Err" for no method of ours); AuthZReq and AuthZRes always
// answer 200 {"Allow": bool}, whatever the body (a 4xx fails the user's request); a refusal
// carries a message; nothing that admission does not judge (reads, removals,
// another method or path) is ever refused; the matcher stays in its budget.
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <string>

#include "agent/admission/admission.h"
#include "agent/admission/request_matcher.h"
#include "agent/base/base64.h"
#include "api/authz_plugin.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {
namespace {

using json = nlohmann::json;
constexpr uint32_t kUids[] = {0, 1001, 1002, 1003};

void checkAnswer(const httplib::Response& res, bool judged_kind, bool is_authz) {
  const json j = json::parse(res.body, nullptr, false);
  DQ_FUZZ_CHECK(j.is_object());
  if (res.status != 200) {
    // Only a call to no method of ours, or not a POST: an AuthZ call is always answered.
    DQ_FUZZ_CHECK(!is_authz);
    DQ_FUZZ_CHECK(res.status >= 400 && res.status < 500);
    DQ_FUZZ_CHECK(j.contains("Err") && j["Err"].is_string());
    return;
  }
  if (!is_authz) return;
  DQ_FUZZ_CHECK(j.contains("Allow") && j["Allow"].is_boolean());
  if (!j["Allow"].get<bool>()) {
    DQ_FUZZ_CHECK(judged_kind);
    DQ_FUZZ_CHECK(j.contains("Msg") && !j["Msg"].get<std::string>().empty());
  }
}

}  // namespace

HttpRequest seenRequest(std::string_view method, std::string_view target, std::string_view body, bool gap) {
  HttpRequest r;
  r.method = method;
  r.target = target;
  parseTarget(r);
  r.body = body;
  r.body_bytes = body.size();
  r.body_gap = gap;
  return r;
}

int authz(const uint8_t* data, size_t size) {
  Reader in(data, size);
  RequestMatcher matcher;
  uint64_t now = 1'000'000'000;
  AdmissionOptions o;
  o.match_timeout = std::chrono::milliseconds(0);  // no sleeping: one look, then the last try
  Admission admission(o, Admission::Hooks{
                             .match = [&](std::string_view m, std::string_view u, const std::optional<std::string>& b,
                                          bool last) { return matcher.match(m, u, b, now, last); },
                             .billed = [](const Sender& s) { return s.uid; },
                             .figures =
                                 [](uint32_t uid) {
                                   if (uid == 1001) return AdmissionFigures{11 << 20, 10 << 20, "alice"};
                                   if (uid == 1002) return AdmissionFigures{1 << 20, 10 << 20, "bob"};
                                   return AdmissionFigures{};
                                 },
                         });
  AuthzPlugin plugin(AuthzPluginOptions{});
  bool wired = false;
  while (!in.empty()) {
    switch (in.u8() % 5) {
      case 0: {
        const uint64_t conn = in.u8();
        const Sender s{kUids[in.u8() % 4], kUids[1]};
        const std::string_view method = in.str(16), target = in.str(), body = in.str();
        const HttpRequest r = seenRequest(method, target, body, in.u8() & 1);
        matcher.onHead(conn, r, s, now);
        matcher.onDone(conn, r);
        break;
      }
      case 1: {
        const uint64_t conn = in.u8();
        const Sender s{kUids[in.u8() % 4], kUids[1]};
        const std::string_view method = in.str(16), target = in.str();
        matcher.onHead(conn, seenRequest(method, target, "", false), s, now);
        break;
      }
      case 2: {
        const uint64_t conn = in.u8();
        matcher.onAnswered(conn, seenRequest("POST", in.str(), "", false));
        break;
      }
      case 3: {
        static const char* kPaths[] = {"/Plugin.Activate", "/AuthZPlugin.AuthZReq", "/AuthZPlugin.AuthZRes", "/x"};
        const char* path = kPaths[in.u8() % 4];
        const std::string method(in.str(16)), uri(in.str()), body(in.str());
        const bool raw = in.u8() & 1;
        const std::string raw_text(in.str());
        httplib::Request req;
        req.method = "POST";
        req.path = path;
        req.body = raw ? raw_text
                       : json{{"RequestMethod", method}, {"RequestUri", uri}, {"RequestBody", base64Encode(body)}}.dump(
                             -1, ' ', false, json::error_handler_t::replace);
        // The plugin judges once the agent is built: half the calls before.
        if (!wired && (in.u8() & 1)) {
          plugin.setAdmission(&admission);
          wired = true;
        }
        httplib::Response res;
        plugin.handle(req, res);
        const bool authz = std::string(path).rfind("/AuthZPlugin.", 0) == 0;
        // A raw body's method and URI are whatever it says: judged or not.
        checkAnswer(res, raw || isAdmissionRequest(method, pathOf(uri)), authz);
        break;
      }
      case 4: now += uint64_t(in.u16()) * 1'000'000; break;
    }
    const MatcherStats st = matcher.stats();
    DQ_FUZZ_CHECK(st.open <= RequestMatcher::kMaxRequests);
    DQ_FUZZ_CHECK(st.bytes <= RequestMatcher::kMaxBytes);
  }
  plugin.setAdmission(nullptr);
  return 0;
}

}  // namespace dockquota::fuzz
