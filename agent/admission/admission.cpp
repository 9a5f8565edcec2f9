// SPDX-License-Identifier: Apache-2.0
#include "agent/admission/admission.h"

#include <algorithm>
#include <cstdio>
#include <thread>

#include "agent/base/human_bytes.h"
#include "agent/base/log.h"
#include "agent/base/utf8.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "admission";

uint64_t threshold(uint64_t limit, double share) {
  const long double t = static_cast<long double>(limit) * share;
  return t >= static_cast<long double>(UINT64_MAX) ? UINT64_MAX : static_cast<uint64_t>(t);
}

std::string who(uint32_t uid, const AdmissionFigures& f) {
  return f.name.empty() ? "uid " + std::to_string(uid) : f.name + " (uid " + std::to_string(uid) + ")";
}

}  // namespace

Verdict Admission::judge(std::string_view method, std::string_view uri, const std::optional<std::string>& body) {
  return counted(*decide(method, uri, body, true), method, uri);
}

std::optional<Verdict> Admission::judgeNow(std::string_view method, std::string_view uri,
                                           const std::optional<std::string>& body) {
  std::optional<Verdict> v = decide(method, uri, body, false);
  if (!v) return std::nullopt;
  return counted(std::move(*v), method, uri);
}

Verdict Admission::counted(Verdict v, std::string_view method, std::string_view uri) {
  count(v.reason);
  // Unsure verdicts log their own line.
  if (!v.allow && (std::string_view(v.reason) == "over_limit" || std::string_view(v.reason) == "ambiguous_same"))
    LOG_INFO(kSub, "refused %s %s: %s", printable(method, 16).c_str(), printable(uri, 256).c_str(), v.msg.c_str());
  return v;
}

// nullopt only without `wait`: not paired yet.
std::optional<Verdict> Admission::decide(std::string_view method, std::string_view uri,
                                         const std::optional<std::string>& body, bool wait) {
  if (!isAdmissionRequest(method, pathOf(uri))) return Verdict{true, "", "not_judged", std::nullopt};
  const MatchResult m = pair(method, uri, body, wait);
  if (m.kind == MatchResult::Kind::Matched) return forSender(m.sender);
  if (!wait && (m.kind == MatchResult::Kind::NotSeen || m.kind == MatchResult::Kind::Waiting)) return std::nullopt;
  if (m.kind != MatchResult::Kind::Ambiguous) return unsure("not_seen");
  // Identical requests from several users at once: if every one of them
  // would get the same verdict, that is the verdict.
  bool all_allowed = true, all_refused = true;
  for (const Sender& s : m.candidates) {
    const bool allow = forSender(s).allow;
    all_allowed = all_allowed && allow;
    all_refused = all_refused && !allow;
  }
  if (all_allowed) return Verdict{true, "", "ambiguous_same", std::nullopt};
  if (all_refused)
    // Not one user's figures: the message must not show another's.
    return Verdict{false,
                   "dockquota: you are over your Docker quota. Free space with docker rm, docker image rm or docker "
                   "volume rm; `docker quota` shows what you use.",
                   "ambiguous_same", std::nullopt};
  return unsure("ambiguous");
}

Verdict Admission::forSender(const Sender& s) {
  if (s.uid == 0) return Verdict{true, "", "root", 0u};
  const uint32_t uid = hooks_.billed(s);
  const AdmissionFigures f = hooks_.figures(uid);
  if (f.limit == 0) return Verdict{true, "", "no_limit", uid};
  if (f.usage < threshold(f.limit, opt_.share)) return Verdict{true, "", "under_limit", uid};
  std::string msg =
      "dockquota: " + who(uid, f) + " uses " + humanBytes(f.usage) + " of a " + humanBytes(f.limit) + " Docker quota";
  if (opt_.share < 1.0) {
    char pct[16];
    std::snprintf(pct, sizeof pct, "%.0f%%", opt_.share * 100);
    msg += std::string(" (new containers, images and volumes are refused from ") + pct + " of it)";
  }
  msg += ". Free space with docker rm, docker image rm or docker volume rm; `docker quota` shows what you use.";
  return Verdict{false, std::move(msg), "over_limit", uid};
}

// Asks until the probe's view has the request or the deadline passes.
MatchResult Admission::pair(std::string_view method, std::string_view uri, const std::optional<std::string>& body,
                            bool wait) {
  if (!wait) return hooks_.match(method, uri, body, false);
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + opt_.match_timeout;
  auto pause = std::chrono::microseconds(500);
  MatchResult m = hooks_.match(method, uri, body, false);
  bool waited = false;
  while ((m.kind == MatchResult::Kind::NotSeen || m.kind == MatchResult::Kind::Waiting) &&
         std::chrono::steady_clock::now() < deadline) {
    waited = true;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(10000));
    m = hooks_.match(method, uri, body, false);
  }
  if (m.kind == MatchResult::Kind::Waiting) m = hooks_.match(method, uri, body, true);
  if (waited) {
    waits_++;
    const uint64_t us = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count());
    uint64_t prev = wait_us_max_.load();
    while (us > prev && !wait_us_max_.compare_exchange_weak(prev, us)) {}
  }
  return m;
}

Verdict Admission::unsure(const char* reason) {
  if (!opt_.fail_closed) {
    LOG_WARN(kSub, "allowed a request it could not pair with its sender (%s)", reason);
    return Verdict{true, "", reason, std::nullopt};
  }
  LOG_WARN(kSub, "refused a request it could not pair with its sender (%s; fail_closed)", reason);
  return Verdict{false,
                 std::string("dockquota: this request could not be matched to the user who sent it (") + reason +
                     "), and this host refuses such requests (admission_fail_closed). Try again; if it persists, "
                     "ask the administrator.",
                 reason, std::nullopt};
}

void Admission::count(std::string_view reason) {
  for (size_t i = 0; i < kNumReasons; i++)
    if (reason == kReasons[i]) verdicts_[i]++;
}

uint64_t Admission::verdicts(std::string_view reason) const {
  for (size_t i = 0; i < kNumReasons; i++)
    if (reason == kReasons[i]) return verdicts_[i].load();
  return 0;
}

Health Admission::health() const {
  Health h;
  nlohmann::json by_reason = nlohmann::json::object();
  for (size_t i = 0; i < kNumReasons; i++) by_reason[kReasons[i]] = verdicts_[i].load();
  h.report = {
      {"share", opt_.share},   {"fail_closed", opt_.fail_closed}, {"match_timeout_ms", opt_.match_timeout.count()},
      {"verdicts", by_reason}, {"waits", waits_.load()},          {"wait_us_max", wait_us_max_.load()}};
  const char* what = opt_.fail_closed ? "refused" : "allowed unjudged";
  if (const uint64_t n = verdicts("ambiguous"))
    h.degraded.push_back("admission: " + std::to_string(n) +
                         " request(s) sent by several users at once could not be told apart (" + what + ")");
  if (const uint64_t n = verdicts("not_seen"))
    h.degraded.push_back("admission: " + std::to_string(n) +
                         " request(s) Docker asked about were not seen on a watched socket (" + what + ")");
  return h;
}

std::vector<std::pair<const char*, uint64_t>> Admission::verdictCounts() const {
  std::vector<std::pair<const char*, uint64_t>> out;
  for (size_t i = 0; i < kNumReasons; i++) out.emplace_back(kReasons[i], verdicts_[i].load());
  return out;
}

}  // namespace dockquota
