// SPDX-License-Identifier: Apache-2.0
// Docker's list replies (/containers/json, /images/json, /volumes,
// /system/df) read with nlohmann's SAX interface into compact records.
//
// A JSON tree of /system/df on a host with 10,000 containers takes ~60 MiB
// (every node is a 16-byte value plus a map node per key); the agent uses five
// fields of each element. Here only one element at a time is a (small) tree,
// holding only the keys that are read; it becomes a record and is dropped.
// One parser serves usage accounting and reconciliation, so both read the
// same fields the same way.
#pragma once

#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/result.h"

namespace dockquota {

// An element of /containers/json or of /system/df "Containers".
struct DockerContainer {
  std::string id;                         // Id
  std::string name;                       // Names[0] without the leading '/'
  std::string image_id;                   // ImageID ("sha256:...")
  std::string state;                      // State ("running", "exited", ...)
  std::optional<uint64_t> size_rw;        // SizeRw (only /system/df computes it)
  std::optional<std::string> label_user;  // Labels["qman.user"]
};

// An element of /images/json.
struct DockerImage {
  std::string id;                   // Id
  std::vector<std::string> tags;    // RepoTags as sent (20.10 lists "<none>:<none>" for an untagged image)
  std::optional<uint64_t> size;     // Size
  std::optional<uint64_t> created;  // Created, unix seconds
};

// An element of /volumes "Volumes" or of /system/df "Volumes".
struct DockerVolume {
  std::string name;                       // Name
  std::string mountpoint;                 // Mountpoint
  std::optional<uint64_t> size;           // UsageData.Size (only /system/df computes it)
  uint64_t ref_count = 0;                 // UsageData.RefCount
  std::optional<std::string> label_user;  // Labels["qman.user"]
};

// What the agent reads of /system/df.
struct DockerDiskUsage {
  std::vector<DockerContainer> containers;
  std::vector<DockerVolume> volumes;
};

// Whole replies, read from `in` to its end. JSON that does not parse, or a
// reply of another shape (an object where a list belongs, a list key holding
// neither a list nor null), is Error{EPROTO}. Unknown fields are ignored, a
// missing field stays empty, and a size that is not an integer in
// [0, 2^63) counts as absent (Docker sends -1 for "not computed").
Result<std::vector<DockerContainer>> parseContainerList(std::istream& in);  // [...]
Result<std::vector<DockerImage>> parseImageList(std::istream& in);          // [...]
Result<std::vector<DockerVolume>> parseVolumeList(std::istream& in);        // {"Volumes": [...] | null}
Result<DockerDiskUsage> parseDiskUsage(std::istream& in);                   // {"Containers": [...], "Volumes": [...]}

// Field readers for Docker's JSON, shared with the DOM readers (inspect, events).
std::string jsonText(const nlohmann::json& obj, const char* key);              // "" unless a string
std::optional<uint64_t> jsonSize(const nlohmann::json& obj, const char* key);  // see above
std::optional<std::string> labelUser(const nlohmann::json& labels);            // labels["qman.user"]

}  // namespace dockquota
