// SPDX-License-Identifier: Apache-2.0
#include "agent/runtime/containerd_runtime.h"

#include <dlfcn.h>

#include <cstdlib>

#include "agent/base/clock.h"
#include "agent/base/log.h"

#ifndef DOCKQUOTA_CONTAINERD_MODULE_PATH
#define DOCKQUOTA_CONTAINERD_MODULE_PATH "/usr/local/lib/dockquota/dockquota-containerd.so"
#endif

namespace dockquota {
namespace {

constexpr const char* kSub = "containerd";

int64_t realtimeNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The module's message already names containerd and what failed.
Error moduleError(int err, const char* buf, const std::string& what) {
  return buf[0] ? Error{err, buf} : osError(err, "containerd: " + what);
}

}  // namespace

std::string containerdModulePath(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (const char* env = getenv("DOCKQUOTA_CONTAINERD_MODULE"); env && *env) return env;
  return DOCKQUOTA_CONTAINERD_MODULE_PATH;
}

Result<std::unique_ptr<ContainerdModule>> ContainerdModule::load(const std::string& path) {
  // RTLD_LOCAL: the module's gRPC and protobuf symbols stay its own.
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (!h) return Error{ENOENT, "containerd module: cannot load " + path + ": " + dlerror()};
  auto fn = reinterpret_cast<dq_ctrd_module_fn>(dlsym(h, DQ_CTRD_SYMBOL));
  if (!fn) return Error{ENOEXEC, "containerd module: " + path + " has no " + DQ_CTRD_SYMBOL + " symbol"};
  const dq_ctrd_api* api = fn();
  if (!api || api->abi_version != DQ_CTRD_ABI_VERSION || api->struct_size != sizeof(dq_ctrd_api))
    return Error{ENOEXEC, "containerd module: " + path + " speaks ABI version " +
                              std::to_string(api ? api->abi_version : 0) + ", this agent " +
                              std::to_string(DQ_CTRD_ABI_VERSION) + " (install the module built with it)"};
  return std::unique_ptr<ContainerdModule>(new ContainerdModule(path, api));
}

std::unique_ptr<ContainerdService> ContainerdService::open(ContainerdOptions options) {
  std::unique_ptr<ContainerdService> s(new ContainerdService(std::move(options)));
  auto m = ContainerdModule::load(s->options_.module_path);
  if (!m) {
    s->load_error_ = m.error().message;
    LOG_ERROR(kSub, "%s; containerd is NOT watched", s->load_error_.c_str());
    return s;
  }
  s->module_ = std::move(*m);
  std::vector<const char*> ns;
  for (const auto& n : s->options_.namespaces) ns.push_back(n.c_str());
  dq_ctrd_config c{};
  c.struct_size = sizeof c;
  c.address = s->options_.address.c_str();
  c.namespaces = ns.data();
  c.n_namespaces = uint32_t(ns.size());
  c.call_timeout_ms = uint32_t(s->options_.call_timeout.count());
  c.backoff_min_ms = uint32_t(s->options_.backoff_min.count());
  c.backoff_max_ms = uint32_t(s->options_.backoff_max.count());
  c.on_event = &ContainerdService::onEvent;
  c.log = &ContainerdService::onLog;
  c.ctx = s.get();
  char err[512] = "";
  s->client_ = s->module_->api().open(&c, err, sizeof err);
  if (!s->client_) {
    s->load_error_ = err;
    LOG_ERROR(kSub, "%s; containerd is NOT watched", err);
    return s;
  }
  LOG_INFO(kSub, "module %s (%s), socket %s", s->module_->path().c_str(), s->module_->api().build,
           s->options_.address.c_str());
  return s;
}

ContainerdService::~ContainerdService() { stop(); }

Status ContainerdService::start() {
  if (!client_) return {};  // degraded, said at open and in every /healthz
  if (int e = module_->api().start(client_); e != 0) return osError(e, "containerd: starting the event stream");
  started_ = true;
  return {};
}

void ContainerdService::stop() {
  if (!client_) return;
  module_->api().close(client_);  // joins the stream thread: no callback after this
  client_ = nullptr;
}

void ContainerdService::onEvent(void* ctx, const dq_ctrd_event* ev) {
  auto* self = static_cast<ContainerdService*>(ctx);
  if (ev->struct_size != sizeof(dq_ctrd_event)) return;  // guarded by the ABI version already
  self->watch_.apply(*ev, realtimeNs());
  if (ev->kind == DQ_CTRD_RECONCILE_END) {
    if (auto st = self->stats()) self->decode_errors_reconciled_ = st->decode_errors;
  }
}

void ContainerdService::onLog(void*, uint32_t level, const char* message) {
  static constexpr log::Level kLevels[] = {log::Level::Error, log::Level::Warning, log::Level::Notice, log::Level::Info,
                                           log::Level::Debug};
  const log::Level l = level < 5 ? kLevels[level] : log::Level::Debug;
  if (log::enabled(l)) log::write(l, "containerd-module", "%s", message);
}

std::optional<dq_ctrd_stats> ContainerdService::stats() const {
  if (!client_) return std::nullopt;
  dq_ctrd_stats s{};
  s.struct_size = sizeof s;
  if (module_->api().stats(client_, &s) != 0) return std::nullopt;
  return s;
}

Health ContainerdService::health() const {
  Health h;
  h.report = {{"address", options_.address},
              {"namespaces", options_.namespaces},
              {"module", options_.module_path},
              {"loaded", loaded()}};
  if (!loaded()) {
    h.report["connected"] = false;
    h.report["last_error"] = load_error_;
    h.degraded.push_back(load_error_);
    return h;
  }
  h.report["module_build"] = module_->api().build;
  const auto s = stats();
  if (!s) return h;
  const bool up = s->connected != 0;
  const double down_s = up ? 0 : double(int64_t(monotonicNs()) - s->down_since_ns) / 1e9;
  h.report["connected"] = up;
  h.report["down_for_s"] = down_s;
  h.report["last_error"] = s->last_error[0] ? nlohmann::json(s->last_error) : nlohmann::json(nullptr);
  h.report["counters"] = {{"connects", s->connects},
                          {"reconnects", s->reconnects},
                          {"stream_breaks", s->stream_breaks},
                          {"connect_failures", s->connect_failures},
                          {"events_received", s->events_received},
                          {"events_delivered", s->events_delivered},
                          {"events_ignored", s->events_ignored},
                          {"decode_errors", s->decode_errors},
                          {"reconciles", s->reconciles},
                          {"rpc_errors", s->rpc_errors},
                          {"upper_dir_resolved", s->upper_resolved}};
  h.report["watch"] = watch_.report();
  if (!up && down_s > double(options_.down_grace.count()))
    h.degraded.push_back("containerd: not connected to " + options_.address + " for " +
                         std::to_string(int64_t(down_s)) + " s" +
                         (s->last_error[0] ? std::string(": ") + s->last_error : ""));
  if (s->decode_errors > decode_errors_reconciled_.load())
    h.degraded.push_back("containerd: " + std::to_string(s->decode_errors - decode_errors_reconciled_.load()) +
                         " event(s) lost (undecodable), not yet recovered by a reconcile");
  return h;
}

Status ContainerdService::stopTask(const std::string& ns, const std::string& id, std::chrono::seconds timeout) {
  if (!client_) return Error{ENOTCONN, load_error_};
  char err[512] = "";
  if (int e = module_->api().stop_task(client_, ns.c_str(), id.c_str(), uint32_t(timeout.count()), err, sizeof err))
    return moduleError(e, err, "stop " + ns + "/" + id);
  return {};
}

Status ContainerdService::remove(const std::string& ns, const std::string& id) {
  if (!client_) return Error{ENOTCONN, load_error_};
  char err[512] = "";
  if (int e = module_->api().remove(client_, ns.c_str(), id.c_str(), err, sizeof err))
    return moduleError(e, err, "remove " + ns + "/" + id);
  return {};
}

Result<uint64_t> ContainerdService::writableBytes(const std::string& ns, const std::string& id) {
  if (!client_) return Error{ENOTCONN, load_error_};
  char err[512] = "";
  uint64_t bytes = 0;
  if (int e = module_->api().writable_bytes(client_, ns.c_str(), id.c_str(), &bytes, err, sizeof err))
    return moduleError(e, err, "size of " + ns + "/" + id);
  return bytes;
}

// --- ContainerRuntime ----------------------------------------------------------

Result<std::pair<std::string, std::string>> ContainerdRuntime::locate(const std::string& ref) const {
  if (auto slash = ref.find('/'); slash != std::string::npos)
    return std::pair(ref.substr(0, slash), ref.substr(slash + 1));
  auto nss = service_.watch().namespacesOf(ref);
  if (nss.empty()) return Error{ENOENT, "containerd: no container " + ref + " in the watched namespaces"};
  if (nss.size() > 1) return Error{EINVAL, "containerd: container " + ref + " is in several namespaces: say which"};
  return std::pair(nss[0], ref);
}

Status ContainerdRuntime::connect() {
  if (!service_.loaded()) return Error{ENOTCONN, "containerd: module not loaded (see /healthz)"};
  return {};
}

Result<uint64_t> ContainerdRuntime::writableBytes(const std::string& id) {
  auto where = locate(id);
  if (!where) return where.error();
  return service_.writableBytes(where->first, where->second);
}

Status ContainerdRuntime::stop(const std::string& id, std::chrono::seconds timeout) {
  auto where = locate(id);
  if (!where) return where.error();
  return service_.stopTask(where->first, where->second, timeout);
}

// containerd has no anonymous volumes: `volumes` has nothing to act on.
Status ContainerdRuntime::remove(const std::string& id, bool) {
  auto where = locate(id);
  if (!where) return where.error();
  return service_.remove(where->first, where->second);
}

}  // namespace dockquota
