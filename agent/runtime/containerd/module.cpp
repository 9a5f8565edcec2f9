// SPDX-License-Identifier: Apache-2.0
// dockquota-containerd.so's one exported symbol, dq_ctrd_module(): the table
// of C functions the agent calls (agent/runtime/containerd_module.h). No C++
// exception crosses it: each entry catches and answers an errno.
#include <grpcpp/grpcpp.h>

#include <cerrno>
#include <cstdio>
#include <exception>
#include <new>

#include "agent/runtime/containerd/client.h"
#include "agent/runtime/containerd_module.h"

namespace {

using dqctrd::Client;
using dqctrd::Outcome;

void copyError(const std::string& msg, char* err, size_t len) {
  if (err && len > 0) snprintf(err, len, "%s", msg.c_str());
}

int answer(const Outcome& o, char* err, size_t len) {
  if (!o) copyError(o.message, err, len);
  return o.err;
}

template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    copyError(std::string("containerd module: ") + e.what(), err, len);
    return EIO;
  }
}

void* open(const dq_ctrd_config* c, char* err, size_t len) {
  if (!c || c->struct_size != sizeof(dq_ctrd_config)) {
    copyError("containerd module: config struct of another ABI", err, len);
    return nullptr;
  }
  if (!c->address || c->address[0] != '/' || c->n_namespaces == 0 || !c->on_event) {
    copyError("containerd module: needs an absolute socket path, a namespace and an event callback", err, len);
    return nullptr;
  }
  try {
    return new Client(*c);
  } catch (const std::exception& e) {
    copyError(std::string("containerd module: ") + e.what(), err, len);
    return nullptr;
  }
}

int start(void* client) {
  return guarded(nullptr, 0, [&] { return static_cast<Client*>(client)->start(); });
}

void close(void* client) { delete static_cast<Client*>(client); }

int stats(void* client, dq_ctrd_stats* out) {
  if (!out || out->struct_size != sizeof(dq_ctrd_stats)) return EINVAL;
  static_cast<Client*>(client)->stats(out);
  return 0;
}

int stopTask(void* client, const char* ns, const char* id, uint32_t timeout_s, char* err, size_t len) {
  return guarded(err, len, [&] { return answer(static_cast<Client*>(client)->stopTask(ns, id, timeout_s), err, len); });
}

int remove(void* client, const char* ns, const char* id, char* err, size_t len) {
  return guarded(err, len, [&] { return answer(static_cast<Client*>(client)->remove(ns, id), err, len); });
}

int writableBytes(void* client, const char* ns, const char* id, uint64_t* bytes, char* err, size_t len) {
  return guarded(err, len,
                 [&] { return answer(static_cast<Client*>(client)->writableBytes(ns, id, bytes), err, len); });
}

const std::string kBuild =
    "grpc " + grpc::Version() + ", protobuf " + google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION);

const dq_ctrd_api kModule = {
    .abi_version = DQ_CTRD_ABI_VERSION,
    .struct_size = sizeof(dq_ctrd_api),
    .build = kBuild.c_str(),
    .open = open,
    .start = start,
    .close = close,
    .stats = stats,
    .stop_task = stopTask,
    .remove = remove,
    .writable_bytes = writableBytes,
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const dq_ctrd_api* dq_ctrd_module() { return &kModule; }
