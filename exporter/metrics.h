// Prometheus text exposition (format 0.0.4) for GET /metrics: request counts
// and latencies (RequestMetrics, fed by ApiServer::route()), plus helpers the
// qman routes use to render usage, limits, attribution counts and the probes'
// counters. Reads agent state only; never libbpf.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include <nlohmann/json.hpp>

namespace dockquota {

class RequestMetrics {
 public:
  // Histogram buckets in seconds: the qman master's timeouts are 5..180 s, our
  // target is p99 <= 10 ms, so resolution sits below 100 ms.
  static constexpr std::array<double, 10> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                      0.025,  0.05,  0.1,    0.5,   2.5};

  // `route` is the registered pattern ("unmatched" for 404s), never the raw path:
  // label values stay bounded.
  void observe(const std::string& route, const std::string& method, int status, double seconds);
  // dockquota_http_requests_total and dockquota_http_request_duration_seconds.
  void render(std::string& out) const;

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> buckets{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::tuple<std::string, std::string, int>, uint64_t> counts_;  // route, method, status
  std::map<std::pair<std::string, std::string>, Histogram> latency_;      // route, method
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

// Attribution losses and doubts (issue 11), from /healthz's "attribution":
// dockquota_attribution_losses_total{reason} for every key of "losses",
// dockquota_attribution_missed_unresolved (live missed objects nobody owns),
// dockquota_attribution_gone_total{confirmed_by} and
// dockquota_attribution_reconcile_skipped_total{why}.
void promAttributionCounters(std::string& out, const nlohmann::json& attribution);

}  // namespace dockquota
