// SPDX-License-Identifier: Apache-2.0
// What the master sink's tests share: an event spool in memory, the sink's
// options for a test master, and a wait for a condition.
#pragma once

#include <catch2/catch.hpp>

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/delivery/master_sink.h"

namespace dockquota::test {

using json = nlohmann::json;
using namespace std::chrono_literals;

// Event spool in memory: the Store's contract (events.h) as plain logic.
class FakeSpool : public EventSpool {
 public:
  int64_t record(const std::string& type, const std::string& user, json detail = json::object()) {
    std::lock_guard<std::mutex> lock(mu_);
    Event e;
    e.seq = static_cast<int64_t>(events_.size()) + 1;
    e.type = type;
    e.user = user;
    detail["event_id"] = e.seq;
    e.detail = std::move(detail);
    e.created_at = 1000.0 + static_cast<double>(e.seq);
    events_.push_back(e);
    return e.seq;
  }
  // `n` events for `user`, each padded with `padding` bytes of detail.
  void recordMany(int n, size_t padding = 0, const std::string& user = "alice") {
    for (int i = 0; i < n; ++i) {
      json detail = json::object();
      if (padding > 0) detail["padding"] = std::string(padding, 'x');
      record(event_type::kExceeded, user, std::move(detail));
    }
  }
  Result<std::vector<Event>> pending(Channel c, size_t max) override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Event> out;
    for (const Event& e : events_)
      if (out.size() < max && channelWants(c, e.type) && marks_[e.seq] == 0) out.push_back(e);
    return out;
  }
  Status delivered(Channel c, const std::vector<int64_t>& seqs, bool ok, double now) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail_delivered_ > 0) {
      --fail_delivered_;
      return Error{EIO, "spool: disk full"};
    }
    for (int64_t s : seqs) ++marks_[s];
    return {};
  }
  Result<size_t> pendingCount(Channel c) override {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const Event& e : events_) n += channelWants(c, e.type) && marks_[e.seq] == 0;
    return n;
  }
  int marks(int64_t seq) {
    std::lock_guard<std::mutex> lock(mu_);
    return marks_[seq];
  }
  void failDelivered(int times) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_delivered_ = times;
  }

 private:
  std::mutex mu_;
  std::vector<Event> events_;
  std::map<int64_t, int> marks_;  // seq -> times marked delivered
  int fail_delivered_ = 0;
};

template <typename P>
inline bool eventually(P pred, std::chrono::milliseconds limit = 3000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

inline MasterSink::Options options(const std::string& url) {
  MasterSink::Options o;
  o.url = url;
  o.secret = "s3cret";
  o.host_id = "gpu-01";
  o.timeout = 2s;
  o.backoff_base = 10ms;
  o.backoff_cap = 40ms;
  return o;
}

}  // namespace dockquota::test
