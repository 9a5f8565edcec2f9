// SPDX-License-Identifier: Apache-2.0
#include "agent/runtime/runtime.h"

#include <nlohmann/json.hpp>

#include "agent/base/short_id.h"

namespace dockquota {
namespace {

Error replyError(const std::string& what, const DockerReply& r) {
  // Docker's errors are {"message": "..."}.
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  std::string msg = j.is_object() && j["message"].is_string() ? j["message"].get<std::string>() : r.body.substr(0, 200);
  int code = r.status == 404 ? ENOENT : r.status == 409 ? EBUSY : EIO;
  return Error{code, "docker: " + what + ": HTTP " + std::to_string(r.status) + ": " + msg};
}

}  // namespace

bool validContainerId(const std::string& id) {
  if (id.size() != 64) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Status DockerRuntime::connect() {
  auto v = docker_.negotiate();  // GET /version on the client's keep-alive connection
  if (!v) return v.error();
  return {};
}

Result<uint64_t> DockerRuntime::writableBytes(const std::string& id) {
  if (!validContainerId(id)) return Error{EINVAL, "docker: size of container '" + id + "': not a container id"};
  // size=1 makes Docker walk the writable layer now: current, unlike /system/df's cached figure.
  auto j = docker_.getJson("/containers/" + id + "/json?size=1");
  if (!j) return j.error().context("docker: size of container " + shortId(id));
  const auto& v = (*j)["SizeRw"];
  if (v.is_number_integer() && v.get<int64_t>() > 0) return uint64_t(v.get<int64_t>());
  return uint64_t(0);  // absent (older daemons without a layer yet) or -1
}

Status DockerRuntime::stop(const std::string& id, std::chrono::seconds timeout) {
  if (!validContainerId(id)) return Error{EINVAL, "docker: stop container '" + id + "': not a container id"};
  const std::string what = "stop container " + shortId(id);
  auto r = docker_.request("POST", "/containers/" + id + "/stop?t=" + std::to_string(timeout.count()));
  if (!r) return r.error().context("docker: " + what);
  if (r->status == 204 || r->status == 304) return {};  // stopped now / already stopped
  return replyError(what, *r);
}

Status DockerRuntime::remove(const std::string& id, bool volumes) {
  if (!validContainerId(id)) return Error{EINVAL, "docker: remove container '" + id + "': not a container id"};
  const std::string what = "remove container " + shortId(id);
  auto r = docker_.request("DELETE", "/containers/" + id + "?force=1&v=" + (volumes ? "1" : "0"));
  if (!r) return r.error().context("docker: " + what);
  if (r->status == 204) return {};
  return replyError(what, *r);
}

}  // namespace dockquota
