// SPDX-License-Identifier: Apache-2.0
#include "agent/admission/request_matcher.h"

#include <algorithm>

namespace dockquota {
namespace {

// FNV-1a: the digest only tells honest bodies apart. A collision a hostile
// user could craft pairs two of their own requests, or makes a pairing
// ambiguous, which admission allows and counts; it never bills another user.
uint64_t fnv(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

bool isAdmissionRequest(std::string_view method, std::string_view path) {
  if (method != "POST") return false;
  return path == "/containers/create" || path == "/images/create" || path == "/build" || path == "/images/load" ||
         path == "/commit" || path == "/volumes/create";
}

std::string pathOf(std::string_view uri) {
  HttpRequest r;
  r.target = uri;
  parseTarget(r);
  return std::move(r.path);
}

uint64_t bodyDigest(std::string_view head, std::string_view tail, uint64_t total) {
  // The tracker's tail may hold up to twice its bound between trims.
  if (tail.size() > HttpConnection::kBodyTailBytes) tail.remove_prefix(tail.size() - HttpConnection::kBodyTailBytes);
  uint64_t h = fnv(14695981039346656037ull, head);
  h = fnv(h ^ 0xff, tail);
  return h ^ (total * 0x9e3779b97f4a7c15ull);
}

uint64_t bodyDigestOf(std::string_view whole) {
  const std::string_view head = whole.substr(0, HttpConnection::kBodyHeadBytes);
  std::string_view rest = whole.substr(head.size());
  return bodyDigest(head, rest, whole.size());
}

void RequestMatcher::onHead(uint64_t conn_id, const HttpRequest& req, Sender sender, uint64_t now_ns) {
  if (!isAdmissionRequest(req.method, req.path)) return;
  if (req.target.size() > kMaxUriBytes) {
    stats_.uri_too_long++;
    return;
  }
  expire(now_ns);
  makeRoom(sender.uid);
  Entry e;
  e.id = next_id_++;
  e.conn_id = conn_id;
  e.method = req.method;
  e.target = req.target;
  e.sender = sender;
  e.seen_ns = now_ns;
  e.body_pending = true;  // onDone() follows at once when there is no body
  bytes_ += e.target.size();
  per_uid_[sender.uid]++;
  entries_.push_back(std::move(e));
  stats_.kept++;
}

void RequestMatcher::onDone(uint64_t conn_id, const HttpRequest& req) {
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    if (it->conn_id != conn_id || !it->body_pending || it->target != req.target) continue;
    it->body_pending = false;
    if (!req.body_gap) it->digest = bodyDigest(req.body, req.body_tail, req.body_bytes);
    return;
  }
}

void RequestMatcher::onAnswered(uint64_t conn_id, const HttpRequest& req) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->conn_id != conn_id || it->target != req.target) continue;
    stats_.answered_unclaimed++;
    erase(it);
    return;
  }
}

MatchResult RequestMatcher::match(std::string_view method, std::string_view uri, const std::optional<std::string>& body,
                                  uint64_t now_ns, bool last_try) {
  expire(now_ns);
  const bool have_body = body.has_value();
  const uint64_t want = have_body ? bodyDigestOf(*body) : 0;
  std::vector<std::deque<Entry>::iterator> set;
  bool waiting = false;
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->method != method || it->target != uri) continue;
    if (have_body && it->body_pending) {
      waiting = true;  // its body may yet be this one
    } else if (have_body && it->digest && *it->digest != want) {
      continue;  // another body: another request
    }
    set.push_back(it);
  }
  if (waiting && !last_try) return MatchResult{MatchResult::Kind::Waiting, {}, {}, 0};
  if (set.empty()) return MatchResult{};
  return claim(set);
}

// The oldest of `set` is claimed. The senders it could be: the set's, and
// those of any earlier ambiguous group a member was left over from.
MatchResult RequestMatcher::claim(std::vector<std::deque<Entry>::iterator>& set) {
  std::vector<Sender> senders;
  auto add = [&senders](const Sender& s) {
    if (std::find(senders.begin(), senders.end(), s) == senders.end()) senders.push_back(s);
  };
  for (auto it : set) {
    add(it->sender);
    for (const Sender& s : it->ambiguous_with) add(s);
  }
  MatchResult r;
  r.sender = set.front()->sender;
  r.seen_ns = set.front()->seen_ns;
  if (senders.size() == 1) {
    r.kind = MatchResult::Kind::Matched;
    stats_.matched++;
  } else {
    r.kind = MatchResult::Kind::Ambiguous;
    r.candidates = senders;
    stats_.ambiguous++;
    // Which of them Docker asked about first is unknown: the ones left stay
    // ambiguous for their own calls.
    for (size_t i = 1; i < set.size(); i++) set[i]->ambiguous_with = senders;
  }
  erase(set.front());
  return r;
}

void RequestMatcher::expire(uint64_t now_ns) {
  while (!entries_.empty() && entries_.front().seen_ns + kKeepNs < now_ns) {
    stats_.expired++;
    erase(entries_.begin());
  }
}

void RequestMatcher::makeRoom(uint32_t uid) {
  if (per_uid_[uid] >= kMaxPerUid) {
    auto it = std::find_if(entries_.begin(), entries_.end(), [uid](const Entry& e) { return e.sender.uid == uid; });
    if (it != entries_.end()) {
      stats_.dropped_user_share++;
      erase(it);
    }
  }
  while (!entries_.empty() && (entries_.size() >= kMaxRequests || bytes_ + kMaxUriBytes > kMaxBytes)) {
    stats_.dropped_budget++;
    erase(entries_.begin());
  }
}

void RequestMatcher::erase(std::deque<Entry>::iterator it) {
  bytes_ -= it->target.size();
  if (auto u = per_uid_.find(it->sender.uid); u != per_uid_.end() && --u->second == 0) per_uid_.erase(u);
  entries_.erase(it);
}

MatcherStats RequestMatcher::stats() const {
  MatcherStats s = stats_;
  s.open = entries_.size();
  s.bytes = bytes_;
  return s;
}

}  // namespace dockquota
