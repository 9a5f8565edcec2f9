// SPDX-License-Identifier: Apache-2.0
// Pairs Docker's authorization-plugin calls with the requests the docker.sock
// probe saw. Docker tells an authz plugin what was asked (method, raw URI,
// and a JSON body under 1 MiB) but, on the unix socket, never who asked; the
// probe saw that very request on the caller's connection, with the sender's
// credentials. Pure logic over the tracker's request events and the plugin's
// calls (the clock is the caller's), for the unit tests and fuzz-authz.
//
// A request is kept from its head until a plugin call claims it, Docker's
// answer to it is seen (Docker asks the plugin before it answers, so an
// unclaimed answered request was never asked about: the plugin is not in
// use, or Docker refused it earlier), or kKeepNs passes. A call is paired
// with the unclaimed requests of the same method and URI (and body, when
// Docker sent one and the probe captured it whole):
//   one sender (uid, login uid) among them   Matched: the oldest is claimed
//   several senders                          Ambiguous: identical requests by
//        two users at once cannot be told apart; the oldest is claimed and the
//        others of that group stay ambiguous for their own calls
//   none yet                                 NotSeen (the caller drains the
//        probe and asks again until its deadline)
//   a body still arriving                    Waiting (likewise)
//
// Memory: every kept request counts against one global budget (count and
// URI bytes) and a per-uid share of it, so one user holding many requests
// open pushes out only their own; every request dropped is counted by reason.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent/capture/http_stream.h"

namespace dockquota {

// The requests admission judges: what makes new disk (container create,
// image pull and import, build, load, commit, volume create). `path` as
// parseTarget() leaves it (decoded, no version).
bool isAdmissionRequest(std::string_view method, std::string_view path);
// The path of a raw request URI as the router reads it (parseTarget()).
std::string pathOf(std::string_view uri);

// A digest of a request body as the probe keeps it (the first
// kBodyHeadBytes, the last kBodyTailBytes past them, the length), computed
// the same way from a whole body Docker sent: equal bodies, equal digests.
uint64_t bodyDigest(std::string_view head, std::string_view tail, uint64_t total);
uint64_t bodyDigestOf(std::string_view whole);

struct Sender {
  uint32_t uid = 0;
  uint32_t loginuid = UINT32_MAX;
  bool operator==(const Sender& o) const { return uid == o.uid && loginuid == o.loginuid; }
};

struct MatchResult {
  enum class Kind { Matched, Ambiguous, NotSeen, Waiting } kind = Kind::NotSeen;
  Sender sender;                   // Matched; Ambiguous: the one claimed (the oldest)
  std::vector<Sender> candidates;  // Ambiguous: every sender it could be
  uint64_t seen_ns = 0;            // when the claimed request's head was seen
};

struct MatcherStats {
  uint64_t kept = 0;                // requests registered
  uint64_t matched = 0;             // calls paired with one sender
  uint64_t ambiguous = 0;           // calls with several possible senders
  uint64_t answered_unclaimed = 0;  // answered by Docker with no plugin call
  uint64_t expired = 0;             // unclaimed after kKeepNs
  uint64_t dropped_user_share = 0;  // pushed out by the same uid's newer requests
  uint64_t dropped_budget = 0;      // pushed out to stay under the global budget
  uint64_t uri_too_long = 0;        // not kept: URI over kMaxUriBytes
  uint64_t open = 0;                // kept now
  uint64_t bytes = 0;               // their URI bytes
};

class RequestMatcher {
 public:
  static constexpr size_t kMaxRequests = 4096;
  static constexpr size_t kMaxBytes = 4u << 20;
  static constexpr size_t kMaxPerUid = 256;
  // A build's query carries its labels and build args: 8 KiB is generous.
  static constexpr size_t kMaxUriBytes = 8 << 10;
  // Docker asks the plugin as soon as it has read a JSON body (at once for
  // the others): a minute covers a body dripping in; after that, a request
  // never asked about would only muddle later pairings.
  static constexpr uint64_t kKeepNs = 60'000'000'000ull;

  // From the tracker (agent/capture): every admission request's head, with
  // who sent it; its body once whole; Docker's answer to it.
  void onHead(uint64_t conn_id, const HttpRequest& req, Sender sender, uint64_t now_ns);
  void onDone(uint64_t conn_id, const HttpRequest& req);
  void onAnswered(uint64_t conn_id, const HttpRequest& req);

  // Docker's call: RequestMethod, RequestURI, RequestBody (when it sent one).
  // `last_try`: the caller's deadline has come; a request whose body is
  // still arriving counts as a candidate instead of making it wait.
  MatchResult match(std::string_view method, std::string_view uri, const std::optional<std::string>& body,
                    uint64_t now_ns, bool last_try = false);

  MatcherStats stats() const;

 private:
  struct Entry {
    uint64_t id = 0;
    uint64_t conn_id = 0;
    std::string method, target;
    Sender sender;
    uint64_t seen_ns = 0;
    bool body_pending = false;           // a body was announced and is not whole yet
    std::optional<uint64_t> digest;      // nullopt: none captured whole (no body, or a gap)
    std::vector<Sender> ambiguous_with;  // left over from an ambiguous claim: who it could be
  };
  void expire(uint64_t now_ns);
  void erase(std::deque<Entry>::iterator it);
  void makeRoom(uint32_t uid);
  MatchResult claim(std::vector<std::deque<Entry>::iterator>& set);
  // Not thread-safe: the caller serialises (the app: under the tracker's lock).

  std::deque<Entry> entries_;  // oldest first
  std::unordered_map<uint32_t, size_t> per_uid_;
  uint64_t next_id_ = 1;
  size_t bytes_ = 0;
  MatcherStats stats_;
};

}  // namespace dockquota
