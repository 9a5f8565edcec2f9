// SPDX-License-Identifier: Apache-2.0
// Recognises, in a reassembled Engine API exchange, the calls that create or
// remove what uses disk, and pulls out the identifiers that attribution needs.
// Pure logic: no Docker calls, no state.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/capture/http_stream.h"

namespace dockquota {

enum class ApiAction {
  ContainerCreate,  // POST /containers/create           -> response {"Id": ...}
  ContainerRemove,  // DELETE /containers/{id}
  ImagePull,        // POST /images/create?fromImage=    -> refs from the query
  ImageImport,      // POST /images/create?fromSrc=      -> response {"status":"sha256:..."}
  ImageBuild,       // POST /build                       -> aux.ID in the stream, t= refs
  ImageLoad,        // POST /images/load                 -> "Loaded image[ ID]: ..." lines
  ImageCommit,      // POST /commit                      -> response {"Id": "sha256:..."}
  ImageTag,         // POST /images/{name}/tag
  ImageRemove,      // DELETE /images/{name}             -> [{"Deleted": ...}, {"Untagged": ...}]
  VolumeCreate,     // POST /volumes/create              -> response {"Name": ...}
  VolumeRemove,     // DELETE /volumes/{name}
};

// "container_create", "image_pull", ... (stable names for the store and the API)
const char* toString(ApiAction a);

struct ApiCall {
  ApiAction action;
  int status = 0;          // Docker's HTTP status
  bool succeeded = false;  // 2xx and, for streams, no error message in the stream
  // Identifiers Docker returned: 64-hex container ids, "sha256:<64hex>" image ids,
  // volume names. For ImageRemove: the "Deleted" ids.
  std::vector<std::string> ids;
  // References from the request (or the stream, for load): image refs such as
  // "busybox:latest" (tag defaulted to "latest" where Docker does), the name/id a
  // remove named, the tag a tag call created ("repo:tag").
  std::vector<std::string> refs;
  std::string container_name;             // create: ?name=
  std::string image;                      // create: body "Image"
  std::vector<std::string> volumes;       // create: anonymous volume targets from body "Volumes"
  std::optional<std::string> label_user;  // create/volume create: the "qman.user" label, recorded only
  std::string method;                     // request method
  std::string path;                       // request path without version
  uint64_t request_ns = 0;                // first byte of the request (probe clock)
  uint64_t response_ns = 0;               // last byte of the response (probe clock)
};

// Returns the call if this exchange is one we recognise, else nullopt.
std::optional<ApiCall> recognize(const HttpExchange& exchange);

// True for requests whose body we never need (build contexts, image loads and
// imports, archive uploads): the probe can stop copying until the response.
bool uploadBodyIsIrrelevant(const HttpRequest& request);

// True when the body of this response is never read (recognize() reads
// response bodies only of the calls it recognises) and may be large: image
// saves, exports, archive downloads, logs, stats and event streams, lists.
// The probe can stop copying it until the client's next request.
bool downloadBodyIsIrrelevant(const HttpRequest& request, const HttpResponse& response);

}  // namespace dockquota
