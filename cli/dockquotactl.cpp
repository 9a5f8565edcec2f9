// SPDX-License-Identifier: Apache-2.0
// dockquotactl: the admin's command line over the agent's HTTP API (the key
// from the config's api_key / api_key_file, else /etc/dockquota/api-key; the
// address from the config). Tables by default, --json for scripts.
//
// Exit codes (scripts rely on them; README "dockquotactl"):
//   0 ok   1 the agent said no (4xx/5xx; health: degraded)   2 usage error
//   3 the agent is unreachable (or the key unreadable)
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <optional>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/format.h"
#include "cli/http_client.h"

namespace {

using json = nlohmann::json;
using namespace dockquota::cli;

const char* kUsageText =
    "Usage: dockquotactl [--config FILE] [--url URL] [--key-file FILE] [--json] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  users                          every user: docker usage, limit, level (largest first)\n"
    "  top [N]                        the N largest containers, images and volumes (default 20)\n"
    "  set-limit USER SIZE            docker limit of USER (name or uid): 50G, 1.5T, 500M; 0 removes it\n"
    "  exempt                         list exemptions from enforcement\n"
    "  exempt user|container REF [--reason TEXT]   exempt from enforcement\n"
    "  exempt --remove user|container REF          end an exemption\n"
    "  events [--uid N] [--type T] [--limit N]     the event log, oldest first\n"
    "  attribute container|image|volume ID USER    bill an object to USER (admin override)\n"
    "  unattribute container|image|volume ID       drop the admin override\n"
    "  health                         the agent's /healthz\n"
    "\n"
    "Exit codes: 0 ok, 1 the agent said no (health: degraded), 2 usage error, 3 agent unreachable.\n";

struct Ctx {
  HttpTarget target;
  bool json = false;
};

int usage(const std::string& why) {
  fprintf(stderr, "dockquotactl: %s\n\n%s", why.c_str(), kUsageText);
  return kUsage;
}

std::string readTrimmed(const std::string& path, bool* ok) {
  std::ifstream f(path);
  *ok = bool(f);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string urlEncode(const std::string& v) {
  std::string out;
  for (unsigned char c : v) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += char(c);
    } else {
      char b[4];
      snprintf(b, sizeof b, "%%%02X", c);
      out += b;
    }
  }
  return out;
}

struct Answer {
  int exit = kOk;
  json body;
};

// One request; errors are printed here and come back as an exit code.
Answer call(const Ctx& c, const std::string& method, const std::string& path, const json& body = nullptr) {
  HttpResult r = httpRequest(c.target, method, path, body.is_null() ? "" : body.dump());
  if (!r.reached) {
    fprintf(stderr, "dockquotactl: cannot reach the agent at %s: %s\n", c.target.base_url.c_str(), r.error.c_str());
    return {kUnreachable, nullptr};
  }
  json j = json::parse(r.body, nullptr, false);
  if (r.status < 200 || r.status >= 300) {
    std::string msg = j.is_object() && j.contains("msg") && j["msg"].is_string() ? j["msg"].get<std::string>() : "";
    fprintf(stderr, "dockquotactl: %s %s: HTTP %ld%s%s\n", method.c_str(), path.c_str(), r.status,
            msg.empty() ? "" : ": ", msg.c_str());
    return {kRefused, j.is_discarded() ? json(nullptr) : j};
  }
  if (j.is_discarded()) {
    fprintf(stderr, "dockquotactl: %s %s: the answer is not JSON\n", method.c_str(), path.c_str());
    return {kRefused, nullptr};
  }
  return {kOk, j};
}

int emit(const Ctx& c, const json& j, const std::string& table) {
  if (c.json)
    printf("%s\n", j.dump(2).c_str());
  else
    fputs(table.c_str(), stdout);
  return kOk;
}

// A user named by uid or name: the agent resolves names (its passwd, not ours).
std::optional<uint32_t> resolveUser(const Ctx& c, const std::string& ref, int* exit) {
  if (!ref.empty() && ref.size() <= 10 && ref.find_first_not_of("0123456789") == std::string::npos) {
    const unsigned long long v = std::stoull(ref);
    if (v <= UINT32_MAX) return uint32_t(v);
  }
  Answer a = call(c, "GET", "/remote-api/users/resolve?username=" + urlEncode(ref));
  *exit = a.exit;
  if (a.exit != kOk || !a.body.contains("uid")) return std::nullopt;
  return a.body["uid"].get<uint32_t>();
}

int cmdUsers(const Ctx& c) {
  Answer q = call(c, "GET", "/remote-api/quotas");
  if (q.exit) return q.exit;
  Answer e = call(c, "GET", "/api/v1/enforcement");
  if (e.exit) return e.exit;
  std::map<uint32_t, std::string> level;
  for (const auto& u : e.body.value("users", json::array())) level[u["uid"].get<uint32_t>()] = str(u, "level");
  json users = json::array();
  for (const auto& dev : q.body)
    if (str(dev, "name") == "docker")
      for (const auto& u : dev.value("user_quotas", json::array())) {
        const uint32_t uid = u["uid"].get<uint32_t>();
        const uint64_t used = num(u, "block_current"), limit = num(u, "block_hard_limit") * 1024;
        json row = {{"uid", uid},
                    {"user", str(u, "name")},
                    {"usage_bytes", used},
                    {"limit_bytes", limit},
                    {"level", level.count(uid) ? level[uid] : "ok"}};
        row["percent"] = limit ? json(std::round(1000.0 * double(used) / double(limit)) / 10) : json(nullptr);
        users.push_back(row);
      }
  std::stable_sort(users.begin(), users.end(),
                   [](const json& a, const json& b) { return a["usage_bytes"] > b["usage_bytes"]; });
  std::vector<std::vector<std::string>> rows;
  for (const auto& u : users) {
    char p[16] = "-";
    if (u["percent"].is_number()) snprintf(p, sizeof p, "%.1f%%", u["percent"].get<double>());
    rows.push_back({str(u, "user"), str(u, "uid"), formatSize(num(u, "usage_bytes")),
                    num(u, "limit_bytes") ? formatSize(num(u, "limit_bytes")) : "none", p, str(u, "level")});
  }
  return emit(c, json{{"users", users}},
              renderTable({"USER", "UID", "USED", "LIMIT", "USE%", "LEVEL"}, rows, {1, 2, 3, 4}));
}

int cmdTop(const Ctx& c, size_t n) {
  json all = json::array();
  struct Page {
    const char* kind;
    const char* path;
    const char* list;
    const char* id;
    const char* owner;
  };
  for (const Page& p :
       {Page{"container", "/remote-api/docker/containers", "containers", "container_id", "host_user_name"},
        Page{"image", "/remote-api/docker/images", "images", "image_id", "puller_host_user_name"},
        Page{"volume", "/remote-api/docker/volumes", "volumes", "volume_name", "host_user_name"}}) {
    Answer a = call(c, "GET", p.path);
    if (a.exit) return a.exit;
    for (const auto& o : a.body.value(p.list, json::array())) {
      std::string name = str(o, "name");
      if (name.empty() && o.contains("tags") && !o["tags"].empty()) name = o["tags"][0].get<std::string>();
      all.push_back({{"kind", p.kind},
                     {"id", str(o, p.id)},
                     {"name", name},
                     {"owner", o.contains(p.owner) && !o[p.owner].is_null() ? o[p.owner] : json(nullptr)},
                     {"size_bytes", num(o, "size_bytes")}});
    }
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const json& a, const json& b) { return a["size_bytes"] > b["size_bytes"]; });
  if (all.size() > n) all.erase(all.begin() + long(n), all.end());
  std::vector<std::vector<std::string>> rows;
  for (const auto& o : all)
    rows.push_back({str(o, "kind"), displayId(str(o, "id")), str(o, "name"),
                    o["owner"].is_null() ? "(unattributed)" : str(o, "owner"), formatSize(num(o, "size_bytes"))});
  return emit(c, json{{"objects", all}}, renderTable({"KIND", "ID", "NAME", "OWNER", "SIZE"}, rows, {4}));
}

int cmdSetLimit(const Ctx& c, const std::string& user, const std::string& size) {
  auto bytes = parseSize(size);
  if (!bytes) return usage("not a size: '" + size + "' (examples: 50G, 1.5T, 500M, 0)");
  int exit = kOk;
  auto uid = resolveUser(c, user, &exit);
  if (!uid) return exit ? exit : kRefused;
  const uint64_t kib = (*bytes + 1023) / 1024;  // a limit is whole KiB: round up, never below what was asked
  Answer a = call(c, "PUT", "/remote-api/quotas/users/" + std::to_string(*uid) + "?device=docker",
                  json{{"block_hard_limit", kib}, {"block_soft_limit", kib}});
  if (a.exit) return a.exit;
  const std::string what = kib ? "set to " + formatSize(kib * 1024) : "removed";
  return emit(c, a.body,
              "docker limit of " + str(a.body, "name") + " (uid " + std::to_string(*uid) + ") " + what + "\n");
}

int cmdExempt(const Ctx& c, const std::vector<std::string>& args) {
  bool remove = false;
  std::string reason;
  std::vector<std::string> pos;
  for (size_t i = 0; i < args.size(); i++) {
    if (args[i] == "--remove") {
      remove = true;
    } else if (args[i] == "--reason") {
      if (i + 1 >= args.size()) return usage("--reason needs a text");
      reason = args[++i];
    } else {
      pos.push_back(args[i]);
    }
  }
  if (pos.empty() && !remove) {
    Answer a = call(c, "GET", "/api/v1/exemptions");
    if (a.exit) return a.exit;
    std::vector<std::vector<std::string>> rows;
    for (const auto& x : a.body["exemptions"])
      rows.push_back({str(x, "kind"), displayId(str(x, "id")), str(x, "set_at"), str(x, "reason")});
    return emit(c, a.body, renderTable({"KIND", "ID", "SINCE", "REASON"}, rows));
  }
  if (pos.size() != 2 || (pos[0] != "user" && pos[0] != "container"))
    return usage("exempt [--remove] user|container REF [--reason TEXT]");
  const std::string path = "/api/v1/exemptions/" + pos[0] + "s/" + urlEncode(pos[1]);
  Answer a = remove ? call(c, "DELETE", path)
                    : call(c, "PUT", path, reason.empty() ? json::object() : json{{"reason", reason}});
  if (a.exit) return a.exit;
  return emit(c, a.body,
              pos[0] + " " + str(a.body, "id") + (remove ? " no longer exempt\n" : " exempt from enforcement\n"));
}

int cmdEvents(const Ctx& c, const std::vector<std::string>& args) {
  std::string q;
  for (size_t i = 0; i < args.size(); i++) {
    const std::string& a = args[i];
    if ((a == "--uid" || a == "--type" || a == "--limit" || a == "--after") && i + 1 < args.size()) {
      q += std::string(q.empty() ? "?" : "&") + a.substr(2) + "=" + urlEncode(args[++i]);
    } else {
      return usage("events [--uid N] [--type T] [--limit N] [--after ID]");
    }
  }
  Answer a = call(c, "GET", "/api/v1/events" + q);
  if (a.exit) return a.exit;
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : a.body["events"])
    rows.push_back(
        {str(e, "id"), str(e, "created_at"), str(e, "type"), str(e, "user"), displayId(str(e, "container_id"))});
  return emit(c, a.body, renderTable({"ID", "TIME", "TYPE", "USER", "CONTAINER"}, rows, {0}));
}

const char* idKey(const std::string& kind) {
  return kind == "container" ? "container_id" : kind == "image" ? "image_id" : "volume_name";
}

int cmdAttribute(const Ctx& c, const std::vector<std::string>& args, bool set) {
  const size_t want = set ? 3 : 2;
  if (args.size() != want || (args[0] != "container" && args[0] != "image" && args[0] != "volume"))
    return usage(set ? "attribute container|image|volume ID USER" : "unattribute container|image|volume ID");
  Answer a;
  if (set) {
    int exit = kOk;
    auto uid = resolveUser(c, args[2], &exit);
    if (!uid) return exit ? exit : kRefused;
    a = call(
        c, "POST", "/remote-api/docker/usage/attribute",
        json{{"entity_type", args[0]}, {idKey(args[0]), args[1]}, {"uid", *uid}, {"manual_resolver", "dockquotactl"}});
  } else {
    a = call(
        c, "DELETE",
        "/remote-api/docker/usage/attribute?entity_type=" + args[0] + "&" + idKey(args[0]) + "=" + urlEncode(args[1]));
  }
  if (a.exit) return a.exit;
  return emit(c, a.body,
              args[0] + " " + args[1] + (set ? " billed to " + args[2] + "\n" : ": admin override dropped\n"));
}

int cmdHealth(const Ctx& c) {
  HttpTarget t = c.target;
  t.basic_auth.clear();  // /healthz is open
  Ctx open{t, c.json};
  Answer a = call(open, "GET", "/healthz");
  if (a.exit) return a.exit;
  std::string text = "status: " + str(a.body, "status") + "\n";
  for (const auto& r : a.body.value("degraded", json::array())) text += "  degraded: " + r.get<std::string>() + "\n";
  emit(c, a.body, text);
  return str(a.body, "status") == "ok" ? kOk : kRefused;
}

// The address and key from the agent's config, as the agent reads them.
int configure(Ctx& c, const std::string& config, const std::string& url, std::string key_file) {
  json cfg = json::object();
  std::ifstream f(config);
  if (f) {
    std::stringstream ss;
    ss << f.rdbuf();
    cfg = json::parse(ss.str(), nullptr, false, /*ignore_comments=*/true);
    if (!cfg.is_object()) {
      fprintf(stderr, "dockquotactl: %s is not a JSON object\n", config.c_str());
      return kUsage;
    }
  }
  const bool tls = cfg.value("tls_cert_file", std::string()).size() > 0;
  std::string host = cfg.value("listen_address", std::string("127.0.0.1"));
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  const int port = cfg.value("listen_port", 8436);
  c.target.base_url = url.empty() ? std::string(tls ? "https://" : "http://") + host + ":" + std::to_string(port) : url;
  if (tls && url.empty()) c.target.ca_file = cfg.value("tls_cert_file", std::string());
  // --key-file first, then the config's key, then its key file, then the default file.
  std::string key = key_file.empty() ? cfg.value("api_key", std::string()) : "";
  if (key_file.empty()) key_file = cfg.value("api_key_file", std::string("/etc/dockquota/api-key"));
  if (key.empty()) {
    bool ok = false;
    key = readTrimmed(key_file, &ok);
    if (!ok || key.empty()) {
      fprintf(stderr, "dockquotactl: cannot read the API key from %s: %s (run as root?)\n", key_file.c_str(),
              ok ? "empty" : strerror(errno));
      return kUnreachable;
    }
  }
  c.target.basic_auth = "api:" + key;
  return kOk;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = "/etc/dockquota/config.json", url, key_file;
  Ctx c;
  std::vector<std::string> args;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= argc) return false;
      out = argv[++i];
      return true;
    };
    if (a == "-h" || a == "--help") {
      fputs(kUsageText, stdout);
      return kOk;
    } else if (a == "--json" && args.empty()) {
      c.json = true;
    } else if (a == "--config" && args.empty()) {
      if (!value(config)) return usage("--config needs a file");
    } else if (a == "--url" && args.empty()) {
      if (!value(url)) return usage("--url needs a URL");
    } else if (a == "--key-file" && args.empty()) {
      if (!value(key_file)) return usage("--key-file needs a file");
    } else if (a == "--json") {
      c.json = true;  // after the command too: `dockquotactl users --json`
    } else {
      args.push_back(a);
    }
  }
  if (args.empty()) return usage("no command");
  const std::string cmd = args[0];
  args.erase(args.begin());
  static const char* kCommands[] = {"users",  "top",       "set-limit",   "exempt",
                                    "events", "attribute", "unattribute", "health"};
  if (std::find_if(std::begin(kCommands), std::end(kCommands), [&](const char* k) { return cmd == k; }) ==
      std::end(kCommands))
    return usage("unknown command: " + cmd);
  if (cmd != "health") {
    if (int rc = configure(c, config, url, key_file)) return rc;
  } else if (int rc = configure(c, config, url, key_file); rc == kUsage) {
    return rc;  // health needs no key: an unreadable one is fine
  }
  if (cmd == "users") return args.empty() ? cmdUsers(c) : usage("users takes no arguments");
  if (cmd == "top") {
    if (args.size() > 1) return usage("top [N]");
    size_t n = 20;
    if (!args.empty()) {
      if (args[0].empty() || args[0].size() > 6 || args[0].find_first_not_of("0123456789") != std::string::npos ||
          std::stoul(args[0]) == 0)
        return usage("top: N must be a number from 1 to 999999");
      n = std::stoul(args[0]);
    }
    return cmdTop(c, n);
  }
  if (cmd == "set-limit") return args.size() == 2 ? cmdSetLimit(c, args[0], args[1]) : usage("set-limit USER SIZE");
  if (cmd == "exempt") return cmdExempt(c, args);
  if (cmd == "events") return cmdEvents(c, args);
  if (cmd == "attribute") return cmdAttribute(c, args, true);
  if (cmd == "unattribute") return cmdAttribute(c, args, false);
  return args.empty() ? cmdHealth(c) : usage("health takes no arguments");
}
