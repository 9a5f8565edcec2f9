// SPDX-License-Identifier: Apache-2.0
// Engine API recogniser (see docker_api.h).
//
// Routes and parameter rules follow dockerd's router (api/server/router/...):
// paths are matched decoded and without the /vX.YZ prefix, methods exactly,
// container names as one path segment, image and volume names as the rest of
// the path ("{name:.*}", so registry.local/ns/img:1 is one name). Parameters
// are read the way Go's Request.Form is: a urlencoded request body first, then
// the query, first value wins; otherwise a client could move ?fromImage= into
// the body and hide a pull.
//
// References are kept as the client spelled them ("busybox" stays "busybox",
// not "docker.io/library/busybox"); only the tag is defaulted, where dockerd
// defaults it.
#include "agent/capture/docker_api.h"

#include <nlohmann/json.hpp>

#include <charconv>
#include <string_view>
#include <utility>

namespace dockquota {
namespace {

using nlohmann::json;

constexpr std::string_view kUserLabel = "qman.user";
// A response body this short fits in one copied read (DSOCK_CAP_BYTES).
constexpr uint64_t kSmallBodyBytes = 4096;
constexpr std::string_view kLoadedImage = "Loaded image: ";
constexpr std::string_view kLoadedImageId = "Loaded image ID: ";

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string formDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hexValue(s[i + 1]) >= 0 && hexValue(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hexValue(s[i + 1]) * 16 + hexValue(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i] == '+' ? ' ' : s[i]);
    }
  }
  return out;
}

bool isUrlencoded(const HttpRequest& r) {
  std::string ct = r.header("Content-Type");
  std::string_view v = ct;
  v = v.substr(0, v.find(';'));
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  constexpr std::string_view kForm = "application/x-www-form-urlencoded";
  if (v.size() != kForm.size()) return false;
  for (size_t i = 0; i < v.size(); ++i)
    if (lower(v[i]) != kForm[i]) return false;
  return true;
}

// Go's Request.Form: the urlencoded body of a POST/PUT/PATCH, then the query.
class Form {
 public:
  explicit Form(const HttpRequest& r) {
    if ((r.method == "POST" || r.method == "PUT" || r.method == "PATCH") && isUrlencoded(r)) {
      std::string_view body = r.body;
      while (!body.empty()) {
        size_t amp = body.find('&');
        std::string_view pair = body.substr(0, amp);
        body = amp == std::string_view::npos ? std::string_view() : body.substr(amp + 1);
        if (pair.empty() || pair.find(';') != std::string_view::npos) continue;
        size_t eq = pair.find('=');
        values_.emplace_back(formDecode(pair.substr(0, eq)),
                             eq == std::string_view::npos ? std::string() : formDecode(pair.substr(eq + 1)));
      }
    }
    for (const auto& [k, v] : r.query) values_.emplace_back(k, v);
  }

  std::string get(std::string_view key) const {
    for (const auto& [k, v] : values_)
      if (k == key) return v;
    return {};
  }

  std::vector<std::string> all(std::string_view key) const {
    std::vector<std::string> out;
    for (const auto& [k, v] : values_)
      if (k == key) out.push_back(v);
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::string>> values_;
};

// "name:tag" or "name@digest"? A colon before the last '/' is a registry port.
bool hasTagOrDigest(std::string_view ref) {
  if (ref.find('@') != std::string_view::npos) return true;
  size_t colon = ref.rfind(':');
  size_t slash = ref.rfind('/');
  return colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash);
}

std::string_view repositoryOf(std::string_view ref) {
  ref = ref.substr(0, ref.find('@'));
  size_t colon = ref.rfind(':');
  size_t slash = ref.rfind('/');
  if (colon != std::string_view::npos && (slash == std::string_view::npos || colon > slash)) ref = ref.substr(0, colon);
  return ref;
}

// dockerd's repo + tag rule (pull, import, commit, tag): an explicit tag replaces
// the one in repo and may be a digest ("sha256:..."); no tag keeps repo's own, or
// defaults to "latest". Empty repo: no reference.
std::string repoTagRef(std::string_view repo, std::string_view tag) {
  if (repo.empty()) return {};
  if (!tag.empty()) {
    std::string name(repositoryOf(repo));
    return name + (tag.find(':') != std::string_view::npos ? "@" : ":") + std::string(tag);
  }
  if (hasTagOrDigest(repo)) return std::string(repo);
  return std::string(repo) + ":latest";
}

bool is2xx(int status) { return status >= 200 && status < 300; }

json parseJson(std::string_view s) { return json::parse(s.begin(), s.end(), nullptr, false); }

std::string stringField(const json& j, const char* key) {
  if (!j.is_object()) return {};
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::optional<std::string> userLabel(const json& labels) {
  if (!labels.is_object()) return std::nullopt;
  auto it = labels.find(std::string(kUserLabel));
  if (it == labels.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// Whole-body JSON (create, commit, volume create, image delete responses).
json bodyJson(const std::string& body, const std::string& tail, uint64_t body_bytes, bool gap) {
  if (gap || body_bytes != body.size() + tail.size()) return json(json::value_t::discarded);
  if (tail.empty()) return parseJson(body);
  return parseJson(body + tail);
}

// Calls fn for each JSON object line of a progress stream (pull, import, build,
// load: dockerd ends every message with "\r\n"). When the body's middle was not
// kept, or had gaps, head and tail are scanned apart and the tail's first line,
// cut by construction, is skipped.
template <typename Fn>
void forEachStreamMessage(const HttpResponse& r, Fn fn) {
  auto scan = [&](std::string_view text, bool skip_first) {
    bool first = true;
    while (!text.empty()) {
      size_t nl = text.find('\n');
      std::string_view line = text.substr(0, nl);
      text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
      if (std::exchange(first, false) && skip_first) continue;
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
      while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      if (line.empty() || line.front() != '{') continue;
      json j = parseJson(line);
      if (!j.is_discarded() && j.is_object()) fn(j);
    }
  };
  bool contiguous = !r.body_gap && r.body_bytes == r.body.size() + r.body_tail.size();
  if (contiguous) {
    scan(r.body_tail.empty() ? std::string_view(r.body) : std::string_view(r.body + r.body_tail), false);
  } else {
    scan(r.body, false);
    scan(r.body_tail, true);
  }
}

// jsonmessage.JSONMessage: "error" / "errorDetail" mean the operation failed,
// whatever the HTTP status (the 200 went out before the failure).
bool isErrorMessage(const json& m) { return m.contains("error") || m.contains("errorDetail"); }

bool isImageId(std::string_view s) {
  constexpr std::string_view kPrefix = "sha256:";
  if (s.size() != kPrefix.size() + 64 || s.substr(0, kPrefix.size()) != kPrefix) return false;
  for (char c : s.substr(kPrefix.size()))
    if (hexValue(c) < 0 || (c >= 'A' && c <= 'F')) return false;
  return true;
}

void addUnique(std::vector<std::string>& v, std::string s) {
  if (s.empty()) return;
  for (const auto& x : v)
    if (x == s) return;
  v.push_back(std::move(s));
}

// "/a/{rest}" -> rest (non-empty, may hold slashes), else nullopt.
std::optional<std::string_view> restAfter(std::string_view path, std::string_view prefix) {
  if (path.size() <= prefix.size() || path.substr(0, prefix.size()) != prefix) return std::nullopt;
  return path.substr(prefix.size());
}

std::optional<ApiAction> route(const HttpRequest& r) {
  std::string_view p = r.path;
  if (r.method == "POST") {
    if (p == "/containers/create") return ApiAction::ContainerCreate;
    if (p == "/images/create") {
      return Form(r).get("fromImage").empty() ? ApiAction::ImageImport : ApiAction::ImagePull;
    }
    if (p == "/build") return ApiAction::ImageBuild;
    if (p == "/images/load") return ApiAction::ImageLoad;
    if (p == "/commit") return ApiAction::ImageCommit;
    if (p == "/volumes/create") return ApiAction::VolumeCreate;
    constexpr std::string_view kTag = "/tag";
    if (auto rest = restAfter(p, "/images/");
        rest && rest->size() > kTag.size() && rest->substr(rest->size() - kTag.size()) == kTag) {
      return ApiAction::ImageTag;
    }
    return std::nullopt;
  }
  if (r.method == "DELETE") {
    if (auto rest = restAfter(p, "/containers/"); rest && rest->find('/') == std::string_view::npos) {
      return ApiAction::ContainerRemove;
    }
    if (restAfter(p, "/images/")) return ApiAction::ImageRemove;
    if (restAfter(p, "/volumes/")) return ApiAction::VolumeRemove;
  }
  return std::nullopt;
}

void recognizeContainerCreate(const HttpExchange& x, const Form& form, ApiCall& call) {
  call.container_name = form.get("name");
  const HttpRequest& req = x.request;
  json body = bodyJson(req.body, req.body_tail, req.body_bytes, req.body_gap);
  if (body.is_object()) {
    call.image = stringField(body, "Image");
    if (auto v = body.find("Volumes"); v != body.end() && v->is_object()) {
      for (const auto& [target, _] : v->items()) addUnique(call.volumes, target);
    }
    // `--mount type=volume,target=/x` without a source is anonymous too.
    if (auto hc = body.find("HostConfig"); hc != body.end() && hc->is_object()) {
      if (auto mounts = hc->find("Mounts"); mounts != hc->end() && mounts->is_array()) {
        for (const auto& m : *mounts) {
          if (stringField(m, "Type") == "volume" && stringField(m, "Source").empty())
            addUnique(call.volumes, stringField(m, "Target"));
        }
      }
    }
    if (auto labels = body.find("Labels"); labels != body.end()) call.label_user = userLabel(*labels);
  }
  const HttpResponse& resp = x.response;
  if (call.succeeded) {
    json out = bodyJson(resp.body, resp.body_tail, resp.body_bytes, resp.body_gap);
    addUnique(call.ids, stringField(out, "Id"));
  }
}

void recognizeStream(const HttpExchange& x, ApiCall& call) {
  forEachStreamMessage(x.response, [&](const json& m) {
    if (isErrorMessage(m)) {
      call.succeeded = false;
      return;
    }
    switch (call.action) {
      case ApiAction::ImageImport: {
        std::string status = stringField(m, "status");
        if (isImageId(status)) addUnique(call.ids, status);
        break;
      }
      case ApiAction::ImageBuild: {
        // Classic builder: {"aux":{"ID":..}}; BuildKit: {"id":"moby.image.id","aux":{"ID":..}}.
        // Other BuildKit aux messages (traces) carry a string, not an object.
        auto aux = m.find("aux");
        std::string id = stringField(m, "id");
        if (aux != m.end() && aux->is_object() && (id.empty() || id == "moby.image.id")) {
          std::string image = stringField(*aux, "ID");
          if (isImageId(image)) addUnique(call.ids, image);
        }
        break;
      }
      case ApiAction::ImageLoad: {
        std::string_view s;
        std::string stream = stringField(m, "stream");
        s = stream;
        while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.remove_suffix(1);
        if (s.substr(0, kLoadedImageId.size()) == kLoadedImageId) {
          addUnique(call.ids, std::string(s.substr(kLoadedImageId.size())));
        } else if (s.substr(0, kLoadedImage.size()) == kLoadedImage) {
          addUnique(call.refs, std::string(s.substr(kLoadedImage.size())));
        }
        break;
      }
      default: break;
    }
  });
}

}  // namespace

const char* toString(ApiAction a) {
  switch (a) {
    case ApiAction::ContainerCreate: return "container_create";
    case ApiAction::ContainerRemove: return "container_remove";
    case ApiAction::ImagePull: return "image_pull";
    case ApiAction::ImageImport: return "image_import";
    case ApiAction::ImageBuild: return "image_build";
    case ApiAction::ImageLoad: return "image_load";
    case ApiAction::ImageCommit: return "image_commit";
    case ApiAction::ImageTag: return "image_tag";
    case ApiAction::ImageRemove: return "image_remove";
    case ApiAction::VolumeCreate: return "volume_create";
    case ApiAction::VolumeRemove: return "volume_remove";
  }
  return "unknown";
}

std::optional<ApiCall> recognize(const HttpExchange& x) {
  const HttpRequest& req = x.request;
  const HttpResponse& resp = x.response;
  std::optional<ApiAction> action = route(req);
  if (!action) return std::nullopt;

  ApiCall call;
  call.action = *action;
  call.status = resp.status;
  call.succeeded = is2xx(resp.status);
  call.method = req.method;
  call.path = req.path;
  call.request_ns = req.first_ns;
  call.response_ns = resp.last_ns;
  Form form(req);
  std::string_view path = req.path;

  switch (call.action) {
    case ApiAction::ContainerCreate: recognizeContainerCreate(x, form, call); break;
    case ApiAction::ContainerRemove:
      addUnique(call.refs, std::string(path.substr(std::string_view("/containers/").size())));
      break;
    case ApiAction::ImagePull:
      addUnique(call.refs, repoTagRef(form.get("fromImage"), form.get("tag")));
      recognizeStream(x, call);
      break;
    case ApiAction::ImageImport:
      addUnique(call.refs, repoTagRef(form.get("repo"), form.get("tag")));
      recognizeStream(x, call);
      break;
    case ApiAction::ImageBuild:
      // Build tags are normalised one by one (no separate tag parameter).
      for (const std::string& t : form.all("t")) addUnique(call.refs, repoTagRef(t, ""));
      if (std::string labels = form.get("labels"); !labels.empty()) call.label_user = userLabel(parseJson(labels));
      recognizeStream(x, call);
      break;
    case ApiAction::ImageLoad: recognizeStream(x, call); break;
    case ApiAction::ImageCommit: {
      call.container_name = form.get("container");
      addUnique(call.refs, repoTagRef(form.get("repo"), form.get("tag")));
      if (call.succeeded) {
        json out = bodyJson(resp.body, resp.body_tail, resp.body_bytes, resp.body_gap);
        addUnique(call.ids, stringField(out, "Id"));
      }
      break;
    }
    case ApiAction::ImageTag: {
      std::string_view name = path.substr(std::string_view("/images/").size());
      name.remove_suffix(std::string_view("/tag").size());
      call.image = name;  // the image that got the new reference
      addUnique(call.refs, repoTagRef(form.get("repo"), form.get("tag")));
      break;
    }
    case ApiAction::ImageRemove: {
      addUnique(call.refs, std::string(path.substr(std::string_view("/images/").size())));
      if (call.succeeded) {
        json out = bodyJson(resp.body, resp.body_tail, resp.body_bytes, resp.body_gap);
        if (out.is_array()) {
          for (const auto& item : out) addUnique(call.ids, stringField(item, "Deleted"));
        }
      }
      break;
    }
    case ApiAction::VolumeCreate: {
      json body = bodyJson(req.body, req.body_tail, req.body_bytes, req.body_gap);
      if (body.is_object()) {
        if (auto labels = body.find("Labels"); labels != body.end()) call.label_user = userLabel(*labels);
      }
      if (call.succeeded) {
        json out = bodyJson(resp.body, resp.body_tail, resp.body_bytes, resp.body_gap);
        addUnique(call.ids, stringField(out, "Name"));
      }
      break;
    }
    case ApiAction::VolumeRemove:
      addUnique(call.refs, std::string(path.substr(std::string_view("/volumes/").size())));
      break;
  }
  return call;
}

bool uploadBodyIsIrrelevant(const HttpRequest& r) {
  // A urlencoded body carries parameters (Go merges it into Request.Form), never a tarball.
  if (isUrlencoded(r)) return false;
  std::string_view p = r.path;
  if (r.method == "POST") {
    if (p == "/build" || p == "/images/load") return true;
    if (p == "/images/create") {
      auto src = r.query.find("fromSrc");
      auto image = r.query.find("fromImage");
      return src != r.query.end() && !src->second.empty() && (image == r.query.end() || image->second.empty());
    }
    return false;
  }
  if (r.method == "PUT") {
    // PUT /containers/{id}/archive: files copied into a container.
    auto rest = restAfter(p, "/containers/");
    constexpr std::string_view kArchive = "/archive";
    if (!rest || rest->size() <= kArchive.size() || rest->substr(rest->size() - kArchive.size()) != kArchive)
      return false;
    std::string_view id = rest->substr(0, rest->size() - kArchive.size());
    return id.find('/') == std::string_view::npos;
  }
  return false;
}

bool downloadBodyIsIrrelevant(const HttpRequest& r, const HttpResponse& resp) {
  if (route(r)) return false;
  // A body the probe copies in one read (4 KiB) costs no more muted than
  // copied, and muting costs the agent a map update: only longer ones.
  std::string len = resp.header("Content-Length");
  if (resp.header("Transfer-Encoding").empty() && !len.empty()) {
    uint64_t n = 0;
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), n);
    if (ec == std::errc() && end == len.data() + len.size() && n <= kSmallBodyBytes) return false;
  }
  return true;
}

}  // namespace dockquota
