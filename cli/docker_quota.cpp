// SPDX-License-Identifier: Apache-2.0
// docker-quota: the `docker quota` CLI plugin. The Docker CLI runs
// `docker-quota docker-cli-plugin-metadata` to list it, and
// `docker-quota quota [ARGS]` for `docker quota [ARGS]`. It asks the agent's
// per-user socket, which answers with the caller's own figures (the kernel
// tells the agent who is asking): no key, no configuration.
//
//   docker quota                 my usage and limit, with a bar
//   docker quota ls              my containers, images, volumes; what goes first
//   docker quota events          my recent events
//   --format json                the agent's JSON instead of tables
//
// Exit codes: 0 ok, 1 the agent refused, 2 usage error, 3 agent unreachable.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/format.h"
#include "cli/http_client.h"

namespace {

using json = nlohmann::json;
using namespace dockquota::cli;

constexpr const char* kDefaultSocket = "/run/dockquota/user.sock";

const char* kUsageText =
    "Usage:  docker quota [ls | events] [OPTIONS]\n"
    "\n"
    "Show your Docker disk usage, your limit and what enforcement would remove first.\n"
    "\n"
    "Commands:\n"
    "  (none)      your usage per device and your limit, with a bar\n"
    "  ls          your containers, images and volumes by size, and the removal order\n"
    "  events      your recent quota events\n"
    "\n"
    "Options:\n"
    "  --format string   table (default) or json\n"
    "  --limit N         events: how many (1-200, default 20)\n"
    "  --uid N, --user NAME   root only: another user's figures\n"
    "  --socket PATH     the agent's user socket (default "
    "/run/dockquota/user.sock"
    ", or $DOCKQUOTA_USER_SOCKET)\n";

struct Args {
  std::string command;  // "", "ls", "events"
  bool json = false;
  std::string query;
  std::string socket;
};

int usage(const std::string& why) {
  fprintf(stderr, "docker quota: %s\n\n%s", why.c_str(), kUsageText);
  return kUsage;
}

std::string pct(const json& p) {
  if (!p.is_number()) return "-";
  char b[16];
  snprintf(b, sizeof b, "%.1f%%", p.get<double>());
  return b;
}

void printSummary(const json& q) {
  printf("%s (uid %s)\n", str(q, "user").c_str(), str(q, "uid").c_str());
  const uint64_t usage = num(q, "usage_bytes"), limit = num(q, "limit_bytes");
  if (limit) {
    printf("docker  %s of %s  %s  %s  %s\n", formatSize(usage).c_str(), formatSize(limit).c_str(),
           bar(double(usage) / double(limit)).c_str(), pct(q["percent"]).c_str(), str(q, "level").c_str());
  } else {
    printf("docker  %s, no limit\n", formatSize(usage).c_str());
  }
  const json& d = q["docker"];
  printf("        containers %s, images %s, volumes %s\n", formatSize(num(d, "container_bytes")).c_str(),
         formatSize(num(d, "image_layer_bytes")).c_str(), formatSize(num(d, "volume_bytes")).c_str());
  if (q.contains("enforcement")) {
    const json& e = q["enforcement"];
    printf("        warning at %s; enforcement %s (%s first)%s\n", pct(q["warn_percent"]).c_str(),
           str(e, "mode").c_str(), str(e, "order").c_str(), e.value("exempt", false) ? "; you are exempt" : "");
    for (const auto& a : e.value("pending_actions", json::array()))
      printf("        pending: container %s (%s) %s\n", str(a, "container_name").c_str(),
             displayId(str(a, "container_id")).c_str(), str(a, "state").c_str());
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& dev : q.value("devices", json::array())) {
    if (str(dev, "name") == "docker") continue;
    std::string mount =
        dev.contains("mount_points") && !dev["mount_points"].empty() ? dev["mount_points"][0].get<std::string>() : "";
    for (const auto& uq : dev.value("user_quotas", json::array())) {
      const uint64_t hard = num(uq, "block_hard_limit") * 1024, used = num(uq, "block_current");
      rows.push_back({str(dev, "name"), mount, formatSize(used), hard ? formatSize(hard) : "none",
                      hard ? bar(double(used) / double(hard), 20) : ""});
    }
  }
  if (!rows.empty()) {
    printf("\nOther devices:\n");
    fputs(renderTable({"DEVICE", "MOUNT", "USED", "LIMIT", ""}, rows, {2, 3}).c_str(), stdout);
  }
}

void printObjects(const json& o) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : o["containers"])
    rows.push_back({displayId(str(c, "id")), str(c, "name"), displayId(str(c, "image")), str(c, "status"),
                    formatSize(num(c, "size_bytes"))});
  printf("CONTAINERS\n%s", renderTable({"ID", "NAME", "IMAGE", "STATUS", "SIZE"}, rows, {4}).c_str());
  rows.clear();
  for (const auto& i : o["images"]) {
    std::string tags;
    for (const auto& t : i.value("tags", json::array())) tags += (tags.empty() ? "" : ",") + t.get<std::string>();
    rows.push_back({displayId(str(i, "id")), tags.empty() ? "<none>" : tags, formatSize(num(i, "size_bytes")),
                    formatSize(num(i, "billed_bytes"))});
  }
  printf("\nIMAGES\n%s", renderTable({"ID", "TAGS", "SIZE", "BILLED"}, rows, {2, 3}).c_str());
  rows.clear();
  for (const auto& v : o["volumes"]) rows.push_back({str(v, "name"), formatSize(num(v, "size_bytes"))});
  printf("\nVOLUMES\n%s", renderTable({"NAME", "SIZE"}, rows, {1}).c_str());
  rows.clear();
  for (const auto& r : o.value("removal_order", json::array()))
    rows.push_back({str(r, "rank"), str(r, "name"), displayId(str(r, "container_id")),
                    r["size_bytes"].is_number() ? formatSize(num(r, "size_bytes")) : "?",
                    r.value("would_remove", false) ? "yes" : ""});
  printf("\nREMOVAL ORDER (enforcement %s, %s first)\n%s", str(o, "enforcement_mode").c_str(),
         str(o, "enforcement_order").c_str(),
         renderTable({"#", "NAME", "CONTAINER", "SIZE", "WOULD GO NOW"}, rows, {0, 3}).c_str());
}

void printEvents(const json& e) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& ev : e["events"]) {
    const json& d = ev["detail"];
    std::string what;
    if (d.is_object() && d.contains("block_current") && d.contains("block_hard_limit"))
      what = formatSize(num(d, "block_current")) + " of " + formatSize(num(d, "block_hard_limit") * 1024);
    rows.push_back({str(ev, "created_at"), str(ev, "type"), displayId(str(ev, "container_id")), what});
  }
  fputs(renderTable({"TIME", "EVENT", "CONTAINER", "USAGE"}, rows).c_str(), stdout);
}

// Parses argv after the plugin name; returns an exit code on error, -1 to go on.
int parse(int argc, char** argv, int i, Args& a) {
  std::string limit;
  for (; i < argc; i++) {
    std::string s = argv[i];
    auto value = [&](const char* flag, std::string& out) {
      const std::string f = flag;
      if (s == f) {
        if (i + 1 >= argc) return false;
        out = argv[++i];
        return true;
      }
      if (s.rfind(f + "=", 0) == 0) {
        out = s.substr(f.size() + 1);
        return true;
      }
      return false;
    };
    std::string v;
    if (s == "-h" || s == "--help") {
      fputs(kUsageText, stdout);
      exit(kOk);
    } else if (value("--format", v)) {
      if (v != "json" && v != "table") return usage("--format must be table or json");
      a.json = v == "json";
    } else if (value("--uid", v)) {
      a.query += std::string(a.query.empty() ? "?" : "&") + "uid=" + v;
    } else if (value("--user", v)) {
      std::string enc;
      for (unsigned char ch : v) {
        char b[4];
        snprintf(b, sizeof b, "%%%02X", ch);
        enc += isalnum(ch) ? std::string(1, char(ch)) : std::string(b);
      }
      a.query += std::string(a.query.empty() ? "?" : "&") + "user=" + enc;
    } else if (value("--limit", v)) {
      limit = v;
    } else if (value("--socket", v)) {
      a.socket = v;
    } else if (!s.empty() && s[0] != '-' && a.command.empty() && (s == "ls" || s == "events")) {
      a.command = s;
    } else {
      return usage("unknown argument: " + s);
    }
  }
  if (!limit.empty()) {
    if (a.command != "events") return usage("--limit is for `docker quota events`");
    if (limit.find_first_not_of("0123456789") != std::string::npos) return usage("--limit must be a number");
    a.query += std::string(a.query.empty() ? "?" : "&") + "limit=" + limit;
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "docker-cli-plugin-metadata") == 0) {
    printf("%s\n", json{{"SchemaVersion", "0.1.0"},
                        {"Vendor", "dockquota"},
                        {"Version", "0.1.0"},
                        {"ShortDescription", "Your Docker disk usage and quota (dockquota)"},
                        {"URL", "file:///usr/local/share/doc/dockquota/README.md"}}
                       .dump()
                       .c_str());
    return kOk;
  }
  // Under the Docker CLI the first argument is the plugin's name; run by hand, it may not be.
  int first = argc >= 2 && std::strcmp(argv[1], "quota") == 0 ? 2 : 1;
  Args a;
  if (int rc = parse(argc, argv, first, a); rc >= 0) return rc;
  if (a.socket.empty()) {
    const char* env = getenv("DOCKQUOTA_USER_SOCKET");
    a.socket = env && *env ? env : kDefaultSocket;
  }
  HttpTarget t;
  t.unix_socket = a.socket;
  t.timeout_ms = 10000;
  const std::string path = a.command == "ls" ? "/v1/objects" : a.command == "events" ? "/v1/events" : "/v1/quota";
  HttpResult r = httpRequest(t, "GET", path + a.query);
  if (!r.reached) {
    fprintf(stderr,
            "docker quota: cannot reach the dockquota agent at %s: %s\n"
            "  (is it running? `systemctl status dockquota`)\n",
            a.socket.c_str(), r.error.c_str());
    return kUnreachable;
  }
  json body = json::parse(r.body, nullptr, false);
  if (r.status != 200) {
    const std::string msg = body.is_object() && body.contains("msg") && body["msg"].is_string()
                                ? body["msg"].get<std::string>()
                                : "HTTP " + std::to_string(r.status);
    fprintf(stderr, "docker quota: %s\n", msg.c_str());
    return kRefused;
  }
  if (body.is_discarded() || !body.is_object()) {
    fprintf(stderr, "docker quota: the agent's answer is not JSON\n");
    return kRefused;
  }
  if (a.json) {
    printf("%s\n", body.dump(2).c_str());
  } else if (a.command == "ls") {
    printObjects(body);
  } else if (a.command == "events") {
    printEvents(body);
  } else {
    printSummary(body);
  }
  return kOk;
}
