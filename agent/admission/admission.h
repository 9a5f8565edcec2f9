// SPDX-License-Identifier: Apache-2.0
// Admission control: judges the requests Docker's authorization plugin is
// asked about (api/authz_plugin.h) before Docker writes a byte of them.
//
//   judged     container create, image pull and import, build, load, commit,
//              volume create (isAdmissionRequest): refused when the sender is
//              over `share` of their Docker limit
//   allowed    everything else (removals, stops, prunes, reads, ...), and
//              anything sent by root (uid 0)
//   unsure     the request was not seen on docker.sock by its deadline (TCP
//              clients, a lost event), or two users sent identical requests at
//              once and would be judged differently: allowed, or refused with
//              `fail_closed`; counted by reason, and /healthz is degraded
//
// Who sent the request is the probe's word (RequestMatcher), never the
// request's: Docker gives plugins no identity for unix-socket callers.
#pragma once

#include <atomic>
#include <cstddef>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/admission/request_matcher.h"
#include "agent/base/health.h"

namespace dockquota {

struct AdmissionOptions {
  // Refuse when usage >= share * limit (1.0: at or over the limit).
  double share = 1.0;
  bool fail_closed = false;
  // How long a call waits for the probe's view of its request: events reach
  // the agent within its poll interval (10 ms), and each retry drains the ring
  // first; a request not seen by then was not sent on a watched socket.
  std::chrono::milliseconds match_timeout{500};
};

// A user's figures as admission judges them (the user socket's UserView).
struct AdmissionFigures {
  uint64_t usage = 0, limit = 0;  // bytes; limit 0 = none
  std::string name;               // for the message ("" = uid only)
};

struct Verdict {
  bool allow = true;
  std::string msg;     // for a refusal: what the docker CLI prints after "authorization denied by plugin X: "
  const char* reason;  // the counter it went to (AdmissionStats)
  std::optional<uint32_t> uid;
};

class Admission {
 public:
  struct Hooks {
    // Drains the probe and pairs the call (RequestMatcher::match), under the
    // tracker's lock.
    std::function<MatchResult(std::string_view method, std::string_view uri, const std::optional<std::string>& body,
                              bool last_try)>
        match;
    std::function<uint32_t(const Sender&)> billed;          // the uid a sender's objects are billed to
    std::function<AdmissionFigures(uint32_t uid)> figures;  // usage and limit now
  };

  Admission(AdmissionOptions options, Hooks hooks) : opt_(options), hooks_(std::move(hooks)) {}

  // Docker's AuthZReq: RequestMethod, RequestURI, RequestBody (when sent).
  Verdict judge(std::string_view method, std::string_view uri, const std::optional<std::string>& body);
  // The same without waiting: nullopt when the request is not paired yet
  // (the caller then calls judge(), which waits), the verdict otherwise.
  std::optional<Verdict> judgeNow(std::string_view method, std::string_view uri,
                                  const std::optional<std::string>& body);

  // /healthz "admission": verdicts by reason; degraded once a call was
  // judged unsure (not seen, ambiguous).
  Health health() const;
  // Verdicts by reason, every reason (for /metrics).
  std::vector<std::pair<const char*, uint64_t>> verdictCounts() const;
  const AdmissionOptions& options() const { return opt_; }

 private:
  std::optional<Verdict> decide(std::string_view method, std::string_view uri, const std::optional<std::string>& body,
                                bool wait);
  MatchResult pair(std::string_view method, std::string_view uri, const std::optional<std::string>& body, bool wait);
  Verdict counted(Verdict v, std::string_view method, std::string_view uri);
  Verdict forSender(const Sender& s);
  Verdict unsure(const char* reason);
  void count(std::string_view reason);
  uint64_t verdicts(std::string_view reason) const;

  AdmissionOptions opt_;
  Hooks hooks_;
  // Verdicts by reason: Verdict::reason is one of kReasons.
  static constexpr const char* kReasons[] = {"not_judged", "root",           "no_limit",  "under_limit",
                                             "over_limit", "ambiguous_same", "ambiguous", "not_seen"};
  static constexpr size_t kNumReasons = sizeof kReasons / sizeof kReasons[0];
  std::atomic<uint64_t> verdicts_[kNumReasons]{};
  std::atomic<uint64_t> waits_{0}, wait_us_max_{0};  // calls that waited for the probe, and the longest wait
};

}  // namespace dockquota
