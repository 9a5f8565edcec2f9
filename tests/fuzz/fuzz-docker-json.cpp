// SPDX-License-Identifier: Apache-2.0
// fuzz-docker-json: the readers of Docker's JSON replies (agent/runtime/docker_lists.h):
// the streaming SAX list parsers and the field readers shared with the DOM
// readers of inspect replies and /events messages.
//
// Input: u8 kind (% 5), then the JSON text:
//   0 /containers/json   1 /images/json   2 /volumes   3 /system/df
//   4 one inspect reply or event: parsed as a DOM, then every field reader on
//     it and on each of its object members (as the attributor does)
//
// Checked: sizes the parsers return are below 2^63 (their documented
// contract: anything else counts as absent); an error has a message.
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/runtime/docker_lists.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/fuzz_targets.h"

namespace dockquota::fuzz {
namespace {

constexpr uint64_t kSizeLimit = uint64_t(1) << 63;

void checkSize(const std::optional<uint64_t>& v) {
  if (v) DQ_FUZZ_CHECK(*v < kSizeLimit);
}

template <typename T>
bool failed(const Result<T>& r) {
  if (r) return false;
  DQ_FUZZ_CHECK(!r.error().message.empty());
  return true;
}

void readFields(const nlohmann::json& j) {
  for (const char* key : {"Id", "ID", "Name", "Image", "Type", "Action", "status", "Size", "SizeRw"}) {
    (void)jsonText(j, key);
    checkSize(jsonSize(j, key));
  }
  (void)labelUser(j);
  if (j.is_object()) {
    if (auto it = j.find("Labels"); it != j.end()) (void)labelUser(*it);
    if (auto it = j.find("Config"); it != j.end() && it->is_object()) {
      if (auto l = it->find("Labels"); l != it->end()) (void)labelUser(*l);
    }
  }
}

}  // namespace

int dockerJson(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const auto kind = static_cast<JsonKind>(in.u8() % 5);
  const std::string_view text = in.rest();
  std::istringstream s{std::string(text)};
  switch (kind) {
    case JsonKind::ContainerList: {
      auto r = parseContainerList(s);
      if (failed(r)) break;
      for (const auto& c : *r) checkSize(c.size_rw);
      break;
    }
    case JsonKind::ImageList: {
      auto r = parseImageList(s);
      if (failed(r)) break;
      for (const auto& i : *r) {
        checkSize(i.size);
        checkSize(i.created);
      }
      break;
    }
    case JsonKind::VolumeList: {
      auto r = parseVolumeList(s);
      if (failed(r)) break;
      for (const auto& v : *r) checkSize(v.size);
      break;
    }
    case JsonKind::DiskUsage: {
      auto r = parseDiskUsage(s);
      if (failed(r)) break;
      for (const auto& c : r->containers) checkSize(c.size_rw);
      for (const auto& v : r->volumes) checkSize(v.size);
      break;
    }
    case JsonKind::Dom: {
      nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
      readFields(j);
      if (j.is_object()) {
        for (const auto& [k, v] : j.items()) readFields(v);
      } else if (j.is_array()) {
        for (const auto& v : j) readFields(v);
      }
      break;
    }
  }
  return 0;
}

std::string encodeDockerJson(JsonKind kind, const std::string& text) {
  Writer w;
  w.u8(static_cast<uint8_t>(kind)).bytes(text);
  return w.data();
}

}  // namespace dockquota::fuzz
