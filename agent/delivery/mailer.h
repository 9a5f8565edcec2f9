// SPDX-License-Identifier: Apache-2.0
// Email to users near or over their Docker disk quota. MailNotifier drains the
// mail channel of the event spool (agent/store/events.h) on its own thread: a user's
// events are collected for `burst` after the first one so that a burst becomes
// one mail, a user gets at most one mail per `min_interval` (what happens
// meanwhile goes in the next one), and all users together get at most
// `max_per_hour` (protects the relay). That decision is a pure function,
// planMails(), tested with a fake clock. composeMail() writes the RFC 5322 text
// and SmtpMailer sends it with libcurl. A failed send keeps the events pending
// and retries after a backoff; a user without an address, or whose address the
// server refuses for good (5xx to RCPT TO), has them marked given up instead,
// so one bad recipient never holds up everyone else's mail.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/human_bytes.h"  // humanBytes(), for the mails' text
#include "agent/base/backoff.h"
#include "agent/base/result.h"
#include "agent/base/worker.h"
#include "agent/store/events.h"

namespace dockquota {

// send()'s error code when the server refused the recipient for good (a 5xx
// reply to RCPT TO): retrying cannot help. Every other error is worth a retry.
constexpr int kMailRecipientRefused = EADDRNOTAVAIL;

// A plain addr-spec, "local@domain": no display name, no quoting, no comments,
// at most 254 bytes; the local part is RFC 5322 atext and dots, the domain is
// dot-separated labels of letters, digits and '-'. Strict on purpose: the
// address goes into an SMTP command and a header as it is.
bool validMailAddress(const std::string& address);

// Where mail goes: anything that sends one finished message to one address.
class MailTransport {
 public:
  virtual ~MailTransport() = default;
  virtual Status send(const std::string& to, const std::string& message) = 0;
  // The sender address, for the From header.
  virtual const std::string& from() const = 0;
  // Makes a send in progress on another thread give up soon (stop()).
  virtual void interrupt() {}
};

// SMTP through libcurl, one connection per message (mail is rare).
class SmtpMailer : public MailTransport {
 public:
  struct Options {
    std::string url;       // "smtp://host:port" or "smtps://host:port" (TLS from the start)
    std::string from;      // envelope sender and From header
    std::string username;  // both empty: no AUTH
    std::string password;
    bool starttls = false;             // smtp:// only: require STARTTLS (CURLUSESSL_ALL) before anything is sent
    std::chrono::seconds timeout{30};  // the whole exchange, connection included
  };

  // Checks the URL (scheme, host, no credentials in it), the sender address,
  // the timeout; WARNs when a password would go out in clear text.
  static Result<std::unique_ptr<SmtpMailer>> create(Options options);

  // Errors read "mail: sending to <to> via smtp://host:port: <curl's text> (SMTP <code>: <reply>)".
  Status send(const std::string& to, const std::string& message) override;
  const std::string& from() const override { return opt_.from; }
  void interrupt() override;  // sends in progress end at once with ECANCELED
  // The URL without credentials, for messages and /healthz.
  const std::string& server() const { return server_; }

 private:
  SmtpMailer(Options options, std::string server);
  int perform(void* easy, uint64_t generation);  // CURLcode
  Options opt_;
  std::string server_;
  std::atomic<uint64_t> generation_{0};  // interrupt() bumps it; a send started under another gives up
  std::mutex mu_;                        // guards active_
  std::set<void*> active_;               // CURLM* of the sends in progress, for curl_multi_wakeup()
};

// Everything in a mail besides its events.
struct MailInfo {
  std::string host;  // the agent's host id: subject, body, Message-ID
  std::string from;  // sender address
  std::string to;    // recipient address
  std::string user;  // host user name, to greet them
  uint32_t uid = 0;
  double date = 0;         // unix seconds for the Date header; 0: now
  std::string message_id;  // "" : a fresh "<...@host>"
};

// The whole message for one user and their events (docker_quota_warning,
// _exceeded, docker_container_stopped, _removed; others are left out), CRLF
// line endings. The subject names the most severe event. Header values are
// stripped of control characters; an invalid `to` or `from` is EINVAL, as is
// a list without any of those four types.
Result<std::string> composeMail(const MailInfo& info, const std::vector<Event>& events);

// The address for a user: the explicit map wins, else the template with
// "{user}" and "{uid}" replaced, else none.
class EmailDirectory {
 public:
  struct Options {
    std::map<std::string, std::string> addresses;  // user name -> address
    std::string address_template;                  // "{user}@example.org"; "" = none
  };
  EmailDirectory() = default;  // nobody has an address
  // Every explicit address must be valid; the template must hold "@" and no
  // control characters, and give a valid address for a plain user name.
  static Result<EmailDirectory> create(Options options);
  // nullopt when the user has none, or the template gives an invalid one
  // (a user name with characters an address cannot carry).
  std::optional<std::string> addressFor(const std::string& user, uint32_t uid) const;

 private:
  explicit EmailDirectory(Options options) : opt_(std::move(options)) {}
  Options opt_;
};

class MailNotifier {
 public:
  struct Options {
    std::string host_id;                            // names this host in mails
    std::chrono::seconds burst{60};                 // collect a user's events this long after the first
    std::chrono::seconds min_interval{900};         // at most one mail per user per interval
    size_t max_per_hour = 100;                      // all users together, a sliding hour; 0 = no cap
    std::chrono::milliseconds backoff_base{1000};   // SMTP failures: full jitter, doubling...
    std::chrono::milliseconds backoff_cap{300000};  // ...up to 5 min
    std::chrono::seconds poll{30};                  // the longest sleep; wake() cuts it short
  };

  // `spool` and `transport` must outlive the notifier.
  MailNotifier(EventSpool& spool, MailTransport& transport, EmailDirectory directory, Options options);
  ~MailNotifier();  // stops

  void start();
  void stop();  // returns at once, even during a send (MailTransport::interrupt())
  void wake();  // new events were recorded: look now

  // One pass, for tests that drive the notifier without its thread: gives
  // up on unaddressable events, sends what planMails() says is due at `now`
  // (unix seconds). Returns when the next pass should run (unix seconds).
  double runOnce(double now);

  // running, mails_sent, events_mailed, failures (failed sends), failing (the
  // last send failed), skipped_no_address and events_refused (events given up),
  // last_error, pending (the spool's count after the last pass).
  nlohmann::json health() const;

 private:
  void run();
  void halt();  // sets stop_, wakes run() and ends a send in progress
  void giveUp(const std::vector<int64_t>& seqs, double now);
  void recordError(const std::string& message);

  EventSpool& spool_;
  MailTransport& transport_;
  EmailDirectory directory_;
  Options opt_;
  Backoff backoff_;

  // The thread's own state (runOnce() is never called concurrently with it).
  std::map<uint32_t, double> last_sent_;  // uid -> unix seconds of their last mail
  std::deque<double> sends_;              // every mail of the last hour, oldest first
  std::set<uint32_t> warned_no_address_;  // users already named in a WARN
  double retry_at_ = 0;                   // no sends before this (after a failure)

  mutable std::mutex mu_;  // guards what follows
  std::condition_variable cv_;
  bool stop_ = false;
  bool woken_ = false;
  bool running_ = false;
  uint64_t mails_sent_ = 0, events_mailed_ = 0, failures_ = 0, skipped_no_address_ = 0, refused_ = 0;
  size_t pending_ = 0;
  bool failing_ = false;    // the last send failed (and was not a refused recipient)
  std::string last_error_;  // kept after recovery, for /healthz

  Worker worker_;
};

// What to do at `now`.
struct MailPlan {
  std::vector<uint32_t> due;      // users to mail now, the longest-waiting first
  std::optional<double> wake_at;  // when someone not due now will be (unix seconds)
};

// The decision, pure. A user is due when their oldest pending event is at
// least `burst` old (one stamped over a minute in the future, after a clock
// step back, counts as old enough) and their last mail (last_sent) at least
// `min_interval` ago. Of those, at most max_per_hour minus the mails already
// sent within the hour before `now` (`sent`: their times) are due; the rest
// wait for the oldest of those to leave the hour.
MailPlan planMails(const std::vector<Event>& pending, const std::map<uint32_t, double>& last_sent,
                   const std::deque<double>& sent, double now, const MailNotifier::Options& options);

}  // namespace dockquota
