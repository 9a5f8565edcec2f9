// SPDX-License-Identifier: Apache-2.0
// Docker Engine API client over the unix socket (libcurl; cpp-httplib has no
// unix-socket client). Negotiates the API version once per connection epoch,
// and keeps the /events stream open with reconnects (exponential backoff with
// full jitter) across dockerd restarts.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <istream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/backoff.h"
#include "agent/base/result.h"
#include "agent/base/worker.h"
#include "agent/runtime/docker_lists.h"

namespace dockquota {

struct DockerReply {
  long status = 0;   // HTTP status
  std::string body;  // raw body ("" when a BodyReader read it)
};

// Reads a 200 reply's body from `in` as it arrives (to the end, or fails).
using BodyReader = std::function<Status(std::istream& in)>;

class DockerClient {
 public:
  // The highest API version we speak; the client uses min(this, daemon's).
  static constexpr const char* kMaxApiVersion = "1.45";

  explicit DockerClient(std::string socket_path, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  ~DockerClient();
  DockerClient(const DockerClient&) = delete;
  DockerClient& operator=(const DockerClient&) = delete;

  // GET /version; sets apiVersion(). Called lazily by request(); call again after a reconnect.
  Result<std::string> negotiate();
  std::string apiVersion() const;
  const std::string& socketPath() const { return socket_; }

  // One request; `path` has no version prefix ("/containers/json?all=1").
  // Transport failures are errors; any HTTP status is a reply.
  Result<DockerReply> request(const std::string& method, const std::string& path, const std::string& body = "");
  // GET that expects 200 and a JSON body; 404 is Error{ENOENT, ...}.
  Result<nlohmann::json> getJson(const std::string& path);
  // GET that expects 200, whose body `read` takes as it arrives: the reply is
  // never held whole (big lists). Errors as getJson; `read`'s get the prefix.
  Status getStreamed(const std::string& path, const BodyReader& read);

  Result<nlohmann::json> inspectContainer(const std::string& id);  // /containers/{id}/json
  Result<nlohmann::json> inspectImage(const std::string& ref);     // /images/{ref}/json
  Result<nlohmann::json> inspectVolume(const std::string& name);   // /volumes/{name}
  // Lists, streamed into compact records (agent/runtime/docker_lists.h).
  Result<std::vector<DockerContainer>> listContainers();          // /containers/json?all=1
  Result<std::vector<DockerImage>> listImages(bool all = false);  // /images/json, intermediate ones with all
  Result<std::vector<DockerVolume>> listVolumes();                // /volumes
  Result<DockerDiskUsage> systemDf();                             // /system/df: sizes of containers and volumes

 private:
  Result<DockerReply> exchange(const std::string& method, const std::string& path, const std::string& body,
                               const BodyReader* read);
  template <typename T>
  Result<T> getParsed(const std::string& path, Result<T> (*parse)(std::istream&));

  std::string socket_;
  std::chrono::milliseconds timeout_;
  mutable std::mutex mu_;  // guards curl_, multi_ and version_
  void* curl_ = nullptr;   // CURL*, reused for keep-alive
  void* multi_ = nullptr;  // CURLM* that drives curl_ (and holds its connection), so a body can be read as it comes
  std::string version_;
};

// GET /events, kept open. Calls on_event for every JSON message; on_connected
// after each (re)connect, before any event of that connection (callers reconcile
// there); on_disconnected with the reason. Runs its own thread.
class DockerEventStream {
 public:
  struct Callbacks {
    std::function<void(const nlohmann::json&)> on_event;
    std::function<void()> on_connected;
    std::function<void(const std::string&)> on_disconnected;
  };

  DockerEventStream(std::string socket_path, Callbacks callbacks,
                    std::chrono::milliseconds backoff_base = std::chrono::milliseconds(250),
                    std::chrono::milliseconds backoff_cap = std::chrono::seconds(30));
  ~DockerEventStream();  // stops
  void start();
  void stop();  // returns within ~1 s
  bool connected() const { return connected_.load(); }
  uint64_t reconnects() const { return reconnects_.load(); }

 private:
  void run();
  void halt();  // sets stop_, wakes the backoff wait and an idle poll
  std::string socket_;
  Callbacks cb_;
  Backoff backoff_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> reconnects_{0};
  // stop() must not wait out a backoff sleep or an idle stream: it wakes both.
  std::mutex wait_mu_;
  std::condition_variable wait_cv_;  // the backoff sleep waits here
  void* multi_ = nullptr;            // CURLM*; curl_multi_wakeup() ends an idle poll
  Worker worker_;
};

}  // namespace dockquota
