// SPDX-License-Identifier: Apache-2.0
// Delivery of enforcement events to the qman master (spec §5): POST
// {url}/api/internal/slave-events with X-API-Key, from the Store's persistent
// spool (Channel::Master), so a master that is down for an hour gets every
// event afterwards.
//
// One thread drains the spool in seq order, one batch in flight at a time: a
// batch is marked delivered only after a 2xx, and the next batch is read only
// then, so event k+1 never leaves before k is acknowledged. Anything else
// (non-2xx, transport error, timeout) keeps the batch pending and waits a
// jittered exponential backoff (Backoff) before sending it again. A 400/401 is
// retried too: an admin may fix the secret on the master, and dropping events
// would be worse than waiting. Exactly once in the normal case; a reply lost
// after the master stored the batch (a cut connection, stop() mid-request)
// means the batch is sent again (at least once, never lost).
//
//   auto sink = MasterSink::create(store, {.url = ..., .secret = ..., .host_id = ...});
//   if (!sink) { LOG_ERROR(...sink.error().message...); }
//   (*sink)->start();  ... store.record(...); (*sink)->wake();  ...  (*sink)->stop();
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/result.h"
#include "agent/base/worker.h"
#include "agent/store/events.h"

namespace dockquota {

// The master's URL, split: scheme://host[:port][/base-path].
struct MasterUrl {
  std::string scheme;  // "http" or "https"
  std::string host;    // name or address; an IPv6 literal without brackets
  int port = 0;        // explicit, or 80/443
  std::string path;    // what is POSTed to: base path + "/api/internal/slave-events"
};

// Which failures of a run get a log line: the first, each change of error
// (`key`), and the same error again after `repeat`; the rest only at debug.
// A master down for an hour gives a handful of lines, not one per retry.
class FailureLogGate {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Verdict { First, Changed, Repeated, Quiet };
  explicit FailureLogGate(Clock::duration repeat) : repeat_(repeat) {}
  Verdict failed(const std::string& key, Clock::time_point now);
  // Ends the run; false when there was none.
  bool succeeded();
  bool failing() const { return attempts_ > 0; }
  Clock::time_point since() const { return since_; }  // the run's first failure
  uint64_t attempts() const { return attempts_; }     // failures in the run

 private:
  Clock::duration repeat_;
  std::string key_;  // last logged
  Clock::time_point logged_at_{}, since_{};
  uint64_t attempts_ = 0;
};

class MasterSink {
 public:
  struct Options {
    std::string url;         // the master's base URL (http:// or https://), as in MASTER_EVENT_CALLBACK_URL
    std::string secret;      // sent as X-API-Key (the master's SLAVE_EVENT_SECRET)
    std::string host_id;     // the envelope's host_id: this slave's id in the master's SLAVES
    size_t batch_max = 100;  // events per POST; the master sends one email per user per POST
    std::chrono::milliseconds timeout = std::chrono::seconds(30);  // per read/write of a request
    std::chrono::milliseconds backoff_base = std::chrono::seconds(1);
    std::chrono::milliseconds backoff_cap = std::chrono::seconds(300);
    std::string ca_file = {};  // https only: PEM CA bundle; empty = system CAs. Always verified.
  };

  struct Stats {
    uint64_t events_sent = 0;
    uint64_t batches_sent = 0;
    uint64_t failures = 0;              // attempts that failed, ever
    uint64_t consecutive_failures = 0;  // since the last success
    int last_status = 0;                // HTTP status of the last attempt, 0 when there was no reply
    std::string last_error;             // of the last failed attempt; "" after a success
    double last_success_at = 0;         // unix seconds, 0 = never
    double last_attempt_at = 0;
    uint64_t pending = 0;          // undelivered events, as of the last attempt or idle check
    double oldest_pending_at = 0;  // created_at of the oldest pending event, 0 when none
  };

  // Splits (with libcurl's URL parser) and checks a URL: an error naming it
  // when it is not http(s)://host[:port][/path] (no user info, query or
  // fragment; a host name of letters, digits, '.', '-' and '_', or an IPv6
  // address in brackets without a zone).
  static Result<MasterUrl> parseUrl(const std::string& url);
  // Checks the options (URL, host_id, secret, batch_max, timeout, readable ca_file).
  static Status validate(const Options& options);
  static Result<std::unique_ptr<MasterSink>> create(EventSpool& spool, Options options);
  ~MasterSink();  // stops
  MasterSink(const MasterSink&) = delete;
  MasterSink& operator=(const MasterSink&) = delete;

  void start();
  // Returns within ~1 s from a request, a connect included (a reply already
  // on its way is still taken), at once from a backoff sleep.
  void stop();
  // New events were recorded: send now, unless backing off.
  void wake();

  Stats stats() const;
  // For /healthz: the stats plus the URL posted to, "state" ("ok" or
  // "failing"), "running" and the oldest pending event's age in seconds.
  nlohmann::json health() const;
  const MasterUrl& url() const { return url_; }
  const std::string& postUrl() const { return post_url_; }  // scheme://host:port/path, for messages

  // A connect (TCP, and the TLS handshake for https) that takes longer fails
  // and is retried. The figure once bounded stop(), when the client could not
  // interrupt a connect; it is kept so that a silent master is retried at the
  // same pace as before (and not after the kernel's minutes of SYN retries).
  static constexpr std::chrono::milliseconds kConnectTimeout{3000};
  // stop() lets a request in flight finish for this long before cutting it:
  // a reply on its way is taken, so the batch is not sent twice.
  static constexpr std::chrono::milliseconds kStopGrace{1000};
  // With nothing pending, the spool is looked at this often even without a
  // wake(): a missed wake() delays delivery, never loses it.
  static constexpr std::chrono::seconds kIdleRecheck{60};
  // While failing, the same error is logged again at most this often.
  static constexpr std::chrono::minutes kRepeatLog{10};

 private:
  MasterSink(EventSpool& spool, Options options, MasterUrl url);
  void run();
  struct Attempt;
  Attempt post(const std::vector<Event>& batch);
  void noteFailure(const Attempt& a, std::chrono::milliseconds delay);
  void noteSuccess(const std::vector<Event>& batch);
  void finishRecovery();
  void refreshPending();
  void setLastError(std::string error);
  struct Exchange;
  void exchange(const std::string& body, Exchange& x);
  void drive(void* easy, size_t body_size, Exchange& x);
  void transportFailure(const Exchange& x, Attempt& a) const;
  bool waitFor(std::chrono::milliseconds d, bool wake_ends);  // false when stopping
  void halt();                                                // sets stop_ and wakes the waits in run()

  EventSpool& spool_;
  const Options opt_;
  const MasterUrl url_;
  const std::string post_url_;
  const std::string request_url_;  // post_url_ with the path escaped as it goes on the wire
  // CURLM*, the sink's for its life: the thread drives each POST on it, and
  // stop() wakes its poll (curl_multi_wakeup) to cut a request.
  void* multi_ = nullptr;

  std::mutex mu_;  // guards woken_, done_ and the waits
  std::condition_variable cv_;
  bool woken_ = false;
  bool done_ = true;  // the thread has left run()
  std::atomic<bool> stop_{false};
  std::atomic<bool> in_flight_{false};
  std::atomic<bool> cut_{false};      // stop() gave up on the request in flight
  std::atomic<bool> running_{false};  // the thread is in run()

  // Stats.
  std::atomic<uint64_t> events_sent_{0}, batches_sent_{0}, failures_{0}, consecutive_failures_{0};
  std::atomic<int> last_status_{0};
  std::atomic<double> last_success_at_{0}, last_attempt_at_{0};
  std::atomic<uint64_t> pending_{0};
  std::atomic<double> oldest_pending_at_{0};
  mutable std::mutex error_mu_;  // guards last_error_
  std::string last_error_;

  // Logging, the thread's own.
  FailureLogGate gate_{kRepeatLog};
  // After a run of failures: events delivered since, logged once the spool is drained.
  bool recovering_ = false;
  uint64_t recovered_events_ = 0;
  uint64_t recovered_after_attempts_ = 0;
  std::chrono::steady_clock::duration recovered_after_{};

  Worker worker_;
};

}  // namespace dockquota
