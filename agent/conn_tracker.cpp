#include "agent/conn_tracker.h"

#include <unistd.h>

#include <climits>

#include "agent/log.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "tracker";

std::string readExe(uint32_t tgid) {
  char buf[PATH_MAX];
  std::string link = "/proc/" + std::to_string(tgid) + "/exe";
  ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, n) : std::string();
}

void add(HttpStreamStats& a, const HttpStreamStats& b) {
  a.exchanges += b.exchanges;
  a.parse_errors += b.parse_errors;
  a.resyncs += b.resyncs;
  a.gap_bytes += b.gap_bytes;
  a.discarded_bytes += b.discarded_bytes;
  a.orphan_responses += b.orphan_responses;
}

}  // namespace

ConnTracker::ConnTracker(Hooks hooks, size_t max_connections) : hooks_(std::move(hooks)), max_(max_connections) {
  if (!hooks_.exe_of) hooks_.exe_of = readExe;
}

void ConnTracker::onExec(const ExecRecord& rec) {
  closed_.execs++;
  if (execs_.size() >= kMaxExecs) execs_.erase(execs_.begin());
  execs_[rec.tgid] = rec;
  LOG_DEBUG(kSub, "exec %s pid=%u uid=%u loginuid=%d", rec.path.c_str(), rec.tgid, rec.uid,
            static_cast<int>(rec.loginuid));
}

void ConnTracker::onEvent(const dsock_event& ev) {
  const auto type = static_cast<DsockEventType>(ev.type);
  if (type == DsockEventType::Exit) {
    execs_.erase(ev.tgid);
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : conns_) {
      if (c.client.tgid == ev.tgid) ids.push_back(id);
    }
    for (uint64_t id : ids) closeConn(id, ev.ts_ns);
    return;
  }
  if (type == DsockEventType::Connect) {
    if (conns_.size() >= max_) evictOldest();
    Conn c;
    c.fd = ev.fd;
    c.seq = ++seq_;
    ClientInfo& ci = c.client;
    ci.tgid = ev.tgid;
    ci.pid = ev.pid;
    ci.uid = ev.uid;
    ci.gid = ev.gid;
    ci.loginuid = ev.loginuid;
    ci.sock = ev.sock;
    ci.comm = DsockEventView{&ev}.comm();
    ci.connect_ns = ev.ts_ns;
    if (auto it = execs_.find(ev.tgid); it != execs_.end()) {
      ci.exe = it->second.path;
      ci.argv = it->second.argv;
    } else {
      ci.exe = hooks_.exe_of(ev.tgid);
      // Gone already (short-lived client): the kernel's name of its executable.
      if (ci.exe.empty()) ci.exe.assign(reinterpret_cast<const char*>(ev.data), ev.cap_len);
    }
    const uint64_t conn_id = ev.conn_id;
    const uint32_t tgid = ev.tgid, fd = ev.fd;
    c.http = std::make_unique<HttpConnection>(
        [this, conn_id](const HttpExchange& x) {
          auto it = conns_.find(conn_id);
          if (it == conns_.end()) return;
          auto call = recognize(x);
          LOG_DEBUG(kSub, "conn %llx: %s %s -> %d%s", static_cast<unsigned long long>(conn_id),
                    x.request.method.c_str(), x.request.target.c_str(), x.response.status,
                    call ? " (recognised)" : "");
          if (call && hooks_.on_call) {
            closed_.calls++;
            hooks_.on_call(*call, it->second.client);
          }
        },
        [this, tgid, fd](const HttpRequest& req) {
          // Uploads (build contexts, image loads) can be gigabytes that
          // attribution never reads: stop copying them until the reply starts.
          if (uploadBodyIsIrrelevant(req) && hooks_.mute) hooks_.mute(tgid, fd, DSOCK_MUTE_TX);
        },
        [this, tgid, fd](const HttpRequest& req, const HttpResponse& resp) {
          // Downloads (image saves, exports, logs) fill the ring buffer as
          // fast as uploads, and no response body of an unrecognised call is
          // read: stop copying until the next request starts.
          if (hooks_.mute && downloadBodyIsIrrelevant(req, resp)) {
            closed_.muted_downloads++;
            hooks_.mute(tgid, fd, DSOCK_MUTE_RX);
          }
        });
    closed_.connections++;
    conns_[conn_id] = std::move(c);
    return;
  }

  auto it = conns_.find(ev.conn_id);
  if (it == conns_.end()) {
    if (type != DsockEventType::Close) closed_.orphan_events++;
    return;
  }
  if (type == DsockEventType::Close) {
    closeConn(ev.conn_id, ev.ts_ns);
    return;
  }
  Conn& c = it->second;
  std::string_view data(reinterpret_cast<const char*>(ev.data), ev.cap_len);
  if (type == DsockEventType::Tx) {
    c.http->onSend(data, ev.len, ev.ts_ns);
  } else {
    c.http->onRecv(data, ev.len, ev.ts_ns);
  }
  // The callbacks above may have run; the connection is still ours (only
  // closeConn erases). A hijacked stream (attach, exec, BuildKit session)
  // carries no more API calls: stop capturing it at all.
  if (c.http->raw()) {
    if (hooks_.untrack) hooks_.untrack(c.client.tgid, c.fd);
    closeConn(ev.conn_id, ev.ts_ns);
  }
}

void ConnTracker::closeConn(uint64_t conn_id, uint64_t ts_ns) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  // onClose may complete a close-delimited response and call on_call, which
  // looks the connection up: keep it in the map until that returns.
  it->second.http->onClose(ts_ns);
  it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  add(closed_.http, it->second.http->stats());
  conns_.erase(it);
}

void ConnTracker::evictOldest() {
  auto oldest = conns_.begin();
  for (auto it = conns_.begin(); it != conns_.end(); ++it) {
    if (it->second.seq < oldest->second.seq) oldest = it;
  }
  if (oldest == conns_.end()) return;
  closed_.evicted++;
  add(closed_.http, oldest->second.http->stats());
  conns_.erase(oldest);
}

TrackerStats ConnTracker::stats() const {
  TrackerStats s = closed_;
  for (const auto& [id, c] : conns_) add(s.http, c.http->stats());
  s.open = conns_.size();
  return s;
}

}  // namespace dockquota
