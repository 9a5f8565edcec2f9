// SPDX-License-Identifier: Apache-2.0
// Prometheus text exposition (format 0.0.4) for GET /metrics: request counts
// and latencies (RequestMetrics, fed by ApiServer::route()), plus helpers the
// qman routes use to render usage, limits, attribution counts and the probes'
// counters. Reads agent state only; never libbpf.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <nlohmann/json.hpp>

namespace dockquota {

// What the HTTP transport (api/http_server.h) refused, evicted or timed
// out, by reason: a flood of slow or oversized clients shows up here rather
// than only as slow answers. Lock-free: bumped from the event loop.
class TransportMetrics {
 public:
  // PROMETHEUS_TRANSPORT: each counter's family and label are in kNames (metrics.cpp).
  enum Counter : size_t {
    kAccepted,
    kRefusedMaxConnections,  // table full, nobody evictable: closed at accept
    kRefusedMaxPerPeer,      // this peer's share full, none of its own evictable
    kRefusedFdLimit,         // accept() hit EMFILE/ENFILE
    kEvictedMaxConnections,  // closed to make room for a new connection
    kEvictedMaxPerPeer,
    kTimeoutHead,           // request head not complete by the deadline (408)
    kTimeoutBody,           // body not complete by the deadline (408)
    kTimeoutWrite,          // the client did not read the answer
    kIdleClosed,            // keep-alive connection idle past http_idle_timeout_s
    kRejectHeadTooLarge,    // 431
    kRejectUriTooLong,      // 414
    kRejectBodyTooLarge,    // 413
    kRejectLengthRequired,  // 411: chunked request body
    kRejectBadRequest,      // 400: unparsable head
    kRejectBusy,            // 503: all connections' bodies over the memory budget
    kTlsHandshakeFailed,
    kCount
  };
  void add(Counter c) { counters_[c].fetch_add(1, std::memory_order_relaxed); }
  uint64_t get(Counter c) const { return counters_[c].load(std::memory_order_relaxed); }
  void setOpen(uint64_t n) { open_.store(n, std::memory_order_relaxed); }
  uint64_t open() const { return open_.load(std::memory_order_relaxed); }
  // dockquota_http_connections_open, _accepted_total, _refused_total{reason},
  // _evicted_total{reason}, dockquota_http_request_timeouts_total{phase},
  // dockquota_http_idle_closed_total, dockquota_http_requests_refused_total{reason},
  // dockquota_http_tls_handshake_failures_total.
  void render(std::string& out) const;
  // The same for /healthz: {"open", "accepted", "refused": {...}, "evicted": {...}, ...}.
  nlohmann::json toJson() const;

 private:
  std::array<std::atomic<uint64_t>, kCount> counters_{};
  std::atomic<uint64_t> open_{0};
};

class RequestMetrics {
 public:
  // Histogram buckets in seconds: the qman master's timeouts are 5..180 s, our
  // target is p99 <= 10 ms, so resolution sits below 100 ms.
  static constexpr std::array<double, 10> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5};

  // `route` is the registered pattern ("unmatched" for 404s), never the raw path:
  // label values stay bounded.
  void observe(const std::string& route, const std::string& method, int status, double seconds);
  // dockquota_http_requests_total and dockquota_http_request_duration_seconds,
  // then the transport's counters.
  void render(std::string& out) const;
  TransportMetrics& transport() { return transport_; }
  const TransportMetrics& transport() const { return transport_; }

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> buckets{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::tuple<std::string, std::string, int>, uint64_t> counts_;  // route, method, status
  std::map<std::pair<std::string, std::string>, Histogram> latency_;      // route, method
  TransportMetrics transport_;
};

// Label value escaping (backslash, quote, newline).
std::string promEscape(const std::string& s);
// Appends "# HELP"/"# TYPE" for a metric family.
void promHeader(std::string& out, const char* name, const char* type, const char* help);
// Appends `name{labels} value`; labels is pre-rendered ("a=\"b\",c=\"d\"") or "".
void promSample(std::string& out, const char* name, const std::string& labels, double value);
void promSample(std::string& out, const char* name, const std::string& labels, uint64_t value);
// Flattens a JSON object of counters (nested objects joined with '_', booleans
// as 0/1, strings skipped) into dockquota_probe_counter{name="..."} samples.
void promProbeCounters(std::string& out, const nlohmann::json& counters);

// Attribution losses and doubts, from /healthz's "attribution":
// dockquota_attribution_losses_total{reason} for every key of "losses",
// dockquota_attribution_missed_unresolved (live missed objects nobody owns),
// dockquota_attribution_gone_total{confirmed_by} and
// dockquota_attribution_reconcile_skipped_total{why}.
void promAttributionCounters(std::string& out, const nlohmann::json& attribution);

}  // namespace dockquota
