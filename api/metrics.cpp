// SPDX-License-Identifier: Apache-2.0
#include "api/metrics.h"

#include <cinttypes>
#include <cstdio>
#include <functional>

#include "agent/base/utf8.h"

namespace dockquota {

void RequestMetrics::observe(const std::string& route, const std::string& method, int status, double seconds) {
  std::lock_guard<std::mutex> l(mu_);
  counts_[{route, method, status}]++;
  Histogram& h = latency_[{route, method}];
  for (size_t i = 0; i < kBuckets.size(); i++)
    if (seconds <= kBuckets[i]) h.buckets[i]++;
  h.count++;
  h.sum += seconds;
}

void RequestMetrics::render(std::string& out) const {
  std::lock_guard<std::mutex> l(mu_);
  promHeader(out, "dockquota_http_requests_total", "counter", "HTTP requests answered, by route pattern and status.");
  for (const auto& [key, n] : counts_) {
    const auto& [route, method, status] = key;
    promSample(out, "dockquota_http_requests_total",
               "route=\"" + promEscape(route) + "\",method=\"" + promEscape(method) + "\",code=\"" +
                   std::to_string(status) + "\"",
               n);
  }
  promHeader(out, "dockquota_http_request_duration_seconds", "histogram", "Time spent in the handler.");
  for (const auto& [key, h] : latency_) {
    const std::string base = "route=\"" + promEscape(key.first) + "\",method=\"" + promEscape(key.second) + "\"";
    for (size_t i = 0; i < kBuckets.size(); i++) {
      char le[32];
      snprintf(le, sizeof le, "%g", kBuckets[i]);
      promSample(out, "dockquota_http_request_duration_seconds_bucket", base + ",le=\"" + le + "\"", h.buckets[i]);
    }
    promSample(out, "dockquota_http_request_duration_seconds_bucket", base + ",le=\"+Inf\"", h.count);
    promSample(out, "dockquota_http_request_duration_seconds_sum", base, h.sum);
    promSample(out, "dockquota_http_request_duration_seconds_count", base, h.count);
  }
  transport_.render(out);
}

namespace {
// PROMETHEUS_TRANSPORT: one row per TransportMetrics::Counter, in its order.
struct CounterName {
  const char* family;  // Prometheus metric
  const char* label;   // "reason" / "phase", or nullptr for a family of one sample
  const char* value;   // label value, also the /healthz key
  const char* group;   // /healthz object it sits in, or nullptr for top level
};
constexpr CounterName kNames[TransportMetrics::kCount] = {
    {"dockquota_http_connections_accepted_total", nullptr, "accepted", nullptr},
    {"dockquota_http_connections_refused_total", "reason", "max_connections", "refused"},
    {"dockquota_http_connections_refused_total", "reason", "max_connections_per_peer", "refused"},
    {"dockquota_http_connections_refused_total", "reason", "fd_limit", "refused"},
    {"dockquota_http_connections_evicted_total", "reason", "max_connections", "evicted"},
    {"dockquota_http_connections_evicted_total", "reason", "max_connections_per_peer", "evicted"},
    {"dockquota_http_request_timeouts_total", "phase", "head", "timeouts"},
    {"dockquota_http_request_timeouts_total", "phase", "body", "timeouts"},
    {"dockquota_http_request_timeouts_total", "phase", "write", "timeouts"},
    {"dockquota_http_idle_closed_total", nullptr, "idle_closed", nullptr},
    {"dockquota_http_requests_refused_total", "reason", "head_too_large", "rejected"},
    {"dockquota_http_requests_refused_total", "reason", "uri_too_long", "rejected"},
    {"dockquota_http_requests_refused_total", "reason", "body_too_large", "rejected"},
    {"dockquota_http_requests_refused_total", "reason", "length_required", "rejected"},
    {"dockquota_http_requests_refused_total", "reason", "bad_request", "rejected"},
    {"dockquota_http_requests_refused_total", "reason", "busy", "rejected"},
    {"dockquota_http_tls_handshake_failures_total", nullptr, "tls_handshake_failed", nullptr},
};
static_assert(kNames[TransportMetrics::kCount - 1].family != nullptr, "a TransportMetrics counter has no name");
const char* familyHelp(const std::string& family) {
  if (family == "dockquota_http_connections_accepted_total") return "HTTP connections accepted.";
  if (family == "dockquota_http_connections_refused_total")
    return "HTTP connections closed at accept, by the cap that was full with nothing evictable.";
  if (family == "dockquota_http_connections_evicted_total")
    return "HTTP connections without a complete request closed to make room for a new one, by cap.";
  if (family == "dockquota_http_request_timeouts_total")
    return "HTTP requests whose head or body was not complete, or answer not read, by the deadline.";
  if (family == "dockquota_http_idle_closed_total") return "Keep-alive HTTP connections closed after the idle timeout.";
  if (family == "dockquota_http_requests_refused_total")
    return "HTTP requests refused by the transport before any handler, by reason.";
  return "TLS handshakes that failed (plain HTTP or garbage on the HTTPS port).";
}
}  // namespace

void TransportMetrics::render(std::string& out) const {
  promHeader(out, "dockquota_http_connections_open", "gauge", "HTTP connections open now.");
  promSample(out, "dockquota_http_connections_open", "", open());
  std::string last;
  for (size_t i = 0; i < kCount; i++) {
    const CounterName& n = kNames[i];
    if (last != n.family) promHeader(out, n.family, "counter", familyHelp(n.family));
    last = n.family;
    promSample(out, n.family, n.label ? std::string(n.label) + "=\"" + n.value + "\"" : std::string(),
               get(static_cast<Counter>(i)));
  }
}

nlohmann::json TransportMetrics::toJson() const {
  nlohmann::json j = {{"open", open()}};
  for (size_t i = 0; i < kCount; i++) {
    const CounterName& n = kNames[i];
    if (n.group)
      j[n.group][n.value] = get(static_cast<Counter>(i));
    else
      j[n.value] = get(static_cast<Counter>(i));
  }
  return j;
}

// Label values must be UTF-8 (the exposition format): a passwd name or a
// filesystem type that is not comes out with U+FFFD for the bad bytes.
std::string promEscape(const std::string& s) {
  std::string out;
  for (char c : utf8Fix(s)) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

void promHeader(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

namespace {
void sampleText(std::string& out, const char* name, const std::string& labels, const char* value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}
}  // namespace

void promSample(std::string& out, const char* name, const std::string& labels, double value) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.17g", value);
  sampleText(out, name, labels, buf);
}

void promSample(std::string& out, const char* name, const std::string& labels, uint64_t value) {
  char buf[32];
  snprintf(buf, sizeof buf, "%" PRIu64, value);
  sampleText(out, name, labels, buf);
}

void promProbeCounters(std::string& out, const nlohmann::json& counters) {
  promHeader(out, "dockquota_probe_counter", "gauge",
             "BPF probe counters and state (drops by reason, attached = 1), as the probes report them.");
  std::function<void(const nlohmann::json&, const std::string&)> walk = [&](const nlohmann::json& j,
                                                                            const std::string& prefix) {
    for (const auto& [k, v] : j.items()) {
      const std::string name = prefix.empty() ? k : prefix + "_" + k;
      if (v.is_object()) {
        walk(v, name);
      } else if (v.is_boolean()) {
        promSample(out, "dockquota_probe_counter", "name=\"" + promEscape(name) + "\"", uint64_t(v.get<bool>()));
      } else if (v.is_number_unsigned()) {
        promSample(out, "dockquota_probe_counter", "name=\"" + promEscape(name) + "\"", v.get<uint64_t>());
      } else if (v.is_number()) {
        promSample(out, "dockquota_probe_counter", "name=\"" + promEscape(name) + "\"", v.get<double>());
      }
    }
  };
  if (counters.is_object()) walk(counters, "");
}

void promAttributionCounters(std::string& out, const nlohmann::json& a) {
  auto family = [&](const char* name, const char* type, const char* help, const char* key, const char* label) {
    auto it = a.find(key);
    if (it == a.end() || !it->is_object()) return;
    promHeader(out, name, type, help);
    for (const auto& [k, v] : it->items())
      if (v.is_number_unsigned())
        promSample(out, name, std::string(label) + "=\"" + promEscape(k) + "\"", v.get<uint64_t>());
  };
  family("dockquota_attribution_losses_total", "counter",
         "Ways an attribution was lost or doubted, by reason (see /healthz attribution.losses).", "losses", "reason");
  family("dockquota_attribution_gone_total", "counter", "Objects marked gone, by what confirmed it.", "gone",
         "confirmed_by");
  family("dockquota_attribution_reconcile_skipped_total", "counter",
         "Rows a reconcile did not judge because they changed after its list began.", "reconcile_skipped", "why");
  auto m = a.find("missed_unresolved");
  if (m != a.end() && m->is_number_unsigned()) {
    promHeader(out, "dockquota_attribution_missed_unresolved", "gauge",
               "Live objects created while the agent watched that still have no kernel or admin owner.");
    promSample(out, "dockquota_attribution_missed_unresolved", "", m->get<uint64_t>());
  }
}

}  // namespace dockquota
