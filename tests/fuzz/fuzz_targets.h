// SPDX-License-Identifier: Apache-2.0
// The harness functions behind the fuzz-* targets, callable without libFuzzer:
// fuzz_main.cpp wraps one of them as LLVMFuzzerTestOneInput (one executable per
// target), and the unit suite replays every committed input through the same
// functions (tests/unit/test_fuzz_replay.cpp). Input formats are described in
// each fuzz-<what>.cpp; the encoders build seed inputs in those formats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/capture/http_stream.h"

namespace dockquota::fuzz {

int httpStream(const uint8_t* data, size_t size);    // fuzz-http-stream
int recognizer(const uint8_t* data, size_t size);    // fuzz-recognizer
int connTracker(const uint8_t* data, size_t size);   // fuzz-conn-tracker
int config(const uint8_t* data, size_t size);        // fuzz-config
int dockerJson(const uint8_t* data, size_t size);    // fuzz-docker-json
int api(const uint8_t* data, size_t size);           // fuzz-api
int httpHead(const uint8_t* data, size_t size);      // fuzz-http-head
int zfsOutput(const uint8_t* data, size_t size);     // fuzz-zfs-output
int size(const uint8_t* data, size_t size);          // fuzz-size
int mountOptions(const uint8_t* data, size_t size);  // fuzz-mount-options
int authz(const uint8_t* data, size_t size);         // fuzz-authz

// One client syscall as the probe reports it: `data` copied of `total` moved.
struct Chunk {
  bool tx = true;
  std::string data;
  uint64_t total = 0;
};

// Seed encoders.
std::string encodeHttpStream(const std::vector<Chunk>& chunks);      // then a close
std::string encodeExchange(const HttpExchange& x);                   // fuzz-recognizer
std::string encodeTrackerSession(const std::vector<Chunk>& chunks);  // exec, connect, chunks, close
// fuzz-docker-json: which parser, then the JSON text.
enum class JsonKind : uint8_t { ContainerList, ImageList, VolumeList, DiskUsage, Dom };
std::string encodeDockerJson(JsonKind kind, const std::string& text);
// fuzz-api: one request as the transport hands it to ApiServer::dispatch().
struct ApiRequest {
  std::string method = "GET";
  uint8_t auth = 0;  // 0: api:<key>; 2: no Authorization; 3: auth_value
  std::string auth_value = {};
  std::string path = "/";
  std::vector<std::pair<std::string, std::string>> params = {};
  std::string body = {};
  std::string content_type = {};  // "" = none
  bool content_length = false;    // a Content-Length header with the body's size
  std::vector<std::pair<std::string, std::string>> headers = {};
};
std::string encodeApiRequest(const ApiRequest& r);
// fuzz-authz: a request as the probe saw it (head parsed, `body` captured
// whole unless `gap`); the unit tests build theirs the same way.
HttpRequest seenRequest(std::string_view method, std::string_view target, std::string_view body = "", bool gap = false);
// fuzz-zfs-output: which parser (0 list, 1 userspace, 2 get, 3 name), then the text.
std::string encodeZfsOutput(uint8_t kind, const std::string& text);

}  // namespace dockquota::fuzz
