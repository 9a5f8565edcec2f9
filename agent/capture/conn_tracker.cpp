// SPDX-License-Identifier: Apache-2.0
#include "agent/capture/conn_tracker.h"

#include <unistd.h>

#include <climits>
#include <cstdio>

#include "agent/base/log.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "tracker";
// Connections we stopped following whose late events must not revive them.
constexpr size_t kMaxIgnored = 4096;

std::string readExe(uint32_t tgid) {
  char buf[PATH_MAX];
  std::string link = "/proc/" + std::to_string(tgid) + "/exe";
  ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, n) : std::string();
}

bool fdNamesSocket(uint32_t tgid, uint32_t fd, uint64_t ino) {
  char buf[64];
  std::string link = "/proc/" + std::to_string(tgid) + "/fd/" + std::to_string(fd);
  ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
  return n > 0 && std::string_view(buf, n) == "socket:[" + std::to_string(ino) + "]";
}

uint64_t fdKey(uint32_t tgid, uint32_t fd) { return uint64_t{tgid} << 32 | fd; }

// For logs: bytes a client sent, with anything unprintable escaped.
std::string printable(std::string_view d) {
  std::string out;
  for (unsigned char ch : d) {
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      out += static_cast<char>(ch);
    } else {
      char buf[8];
      snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    }
  }
  return out;
}

void add(HttpStreamStats& a, const HttpStreamStats& b) {
  a.exchanges += b.exchanges;
  a.parse_errors += b.parse_errors;
  a.resyncs += b.resyncs;
  a.gap_bytes += b.gap_bytes;
  a.discarded_bytes += b.discarded_bytes;
  a.orphan_responses += b.orphan_responses;
  a.lost_heads += b.lost_heads;
  a.doubts += b.doubts;
  a.doubtful_exchanges += b.doubtful_exchanges;
  a.lost_events += b.lost_events;
}

HttpSender senderOf(const dsock_event& ev) {
  HttpSender s;
  s.known = true;
  s.tgid = ev.tgid;
  s.pid = ev.pid;
  s.uid = ev.uid;
  s.gid = ev.gid;
  s.loginuid = ev.loginuid;
  s.comm = DsockEventView{&ev}.comm();
  return s;
}

// The process and credentials of a call, as the probe saw them.
void setCredentials(ClientInfo& ci, const HttpSender& s) {
  ci.tgid = s.tgid;
  ci.pid = s.pid;
  ci.uid = s.uid;
  ci.gid = s.gid;
  ci.loginuid = s.loginuid;
  ci.comm = s.comm;
}

}  // namespace

ConnTracker::ConnTracker(Hooks hooks, size_t max_connections, size_t memory_budget)
    : hooks_(std::move(hooks)), max_(max_connections), budget_(memory_budget) {
  if (!hooks_.exe_of) hooks_.exe_of = readExe;
  if (!hooks_.alive) hooks_.alive = fdNamesSocket;
}

void ConnTracker::onExec(const ExecRecord& rec) {
  closed_.execs++;
  if (execs_.size() >= kMaxExecs) execs_.erase(execs_.begin());
  execs_[rec.tgid] = rec;
  LOG_DEBUG(kSub, "exec %s pid=%u uid=%u loginuid=%d", rec.path.c_str(), rec.tgid, rec.uid,
            static_cast<int>(rec.loginuid));
}

// Starts following the connection of event `ev` (its connect, or its first
// data event when the connect was lost).
ConnTracker::Conn& ConnTracker::open(const dsock_event& ev) {
  const uint64_t conn_id = ev.conn_id;
  // The same fd in the same process with a new conn_id: the old connection
  // ended without us seeing it (its close event was lost).
  if (auto old = by_fd_.find(fdKey(ev.tgid, ev.fd)); old != by_fd_.end() && old->second != conn_id) {
    closed_.replaced++;
    closeConn(old->second, ev.ts_ns);
  }
  if (conns_.size() >= max_) evictOldest();
  Conn c;
  c.fd = ev.fd;
  c.ino = ev.ino;
  c.seq = ++seq_;
  c.last_ns = ev.ts_ns;
  ClientInfo& ci = c.client;
  setCredentials(ci, senderOf(ev));
  ci.sock = ev.sock;
  ci.connect_ns = ev.ts_ns;
  if (auto it = execs_.find(ev.tgid); it != execs_.end()) {
    ci.exe = it->second.path;
    ci.argv = it->second.argv;
  } else {
    ci.exe = hooks_.exe_of(ev.tgid);
    // Gone already (short-lived client): the kernel's name of its executable.
    if (ci.exe.empty() && ev.type == DSOCK_EV_CONNECT)
      ci.exe.assign(reinterpret_cast<const char*>(ev.data), ev.cap_len);
  }
  c.http = std::make_unique<HttpConnection>([this, conn_id](const HttpExchange& x) { deliver(conn_id, x); },
                                            [this, conn_id](const HttpRequest& req) {
                                              auto it = conns_.find(conn_id);
                                              if (it == conns_.end()) return;
                                              const HttpSender& s = req.sender;
                                              const ClientInfo& ci = it->second.client;
                                              const uint32_t uid = s.known ? s.uid : ci.uid,
                                                             loginuid = s.known ? s.loginuid : ci.loginuid;
                                              if (hooks_.on_request_head)
                                                hooks_.on_request_head(conn_id, req, uid, loginuid);
                                              if (req.method == "POST" && req.path == "/containers/create") {
                                                creates_[conn_id] = {uid, loginuid, req.first_ns};
                                                if (hooks_.on_create_sent) hooks_.on_create_sent(uid, loginuid);
                                              }
                                              // Uploads (build contexts, image loads) can be gigabytes that
                                              // attribution never reads: stop copying them for this turn.
                                              if (!uploadBodyIsIrrelevant(req)) return;
                                              closed_.muted_uploads++;
                                              it->second.ctl.mute_tx_turn = it->second.turn;
                                              control(conn_id, it->second);
                                            },
                                            [this, conn_id](const HttpRequest& req, const HttpResponse& resp) {
                                              // Downloads (image saves, exports, logs) fill the ring buffer as
                                              // fast as uploads, and no response body of an unrecognised call is
                                              // read: stop copying until the client's next request.
                                              auto it = conns_.find(conn_id);
                                              if (it == conns_.end() || !downloadBodyIsIrrelevant(req, resp)) return;
                                              closed_.muted_downloads++;
                                              it->second.ctl.mute_rx_turn = it->second.turn;
                                              control(conn_id, it->second);
                                            },
                                            [this, conn_id](const HttpRequest& req) {
                                              if (hooks_.on_request_done) hooks_.on_request_done(conn_id, req);
                                            });
  closed_.connections++;
  by_fd_[fdKey(ev.tgid, ev.fd)] = conn_id;
  return conns_[conn_id] = std::move(c);
}

// Who made the request: the sender the probe saw write it, with the
// connection's view of the process where it is the same one.
ClientInfo ConnTracker::clientOf(const Conn& c, const HttpSender& sender) const {
  ClientInfo ci = c.client;
  if (!sender.known) return ci;
  const bool same_process = sender.tgid == ci.tgid;
  setCredentials(ci, sender);
  if (!same_process) {
    // A child that inherited the connection, or another process it was
    // passed to: its own executable and argv.
    ci.argv.clear();
    if (auto it = execs_.find(sender.tgid); it != execs_.end()) {
      ci.exe = it->second.path;
      ci.argv = it->second.argv;
    } else {
      ci.exe = hooks_.exe_of(sender.tgid);
    }
  }
  return ci;
}

void ConnTracker::deliver(uint64_t conn_id, const HttpExchange& x) {
  if (x.request.method == "POST" && x.request.path == "/containers/create") creates_.erase(conn_id);
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  if (hooks_.on_request_answered) hooks_.on_request_answered(conn_id, x.request);
  auto call = recognize(x);
  LOG_DEBUG(kSub, "conn %llx: %s %s -> %d%s%s", static_cast<unsigned long long>(conn_id), x.request.method.c_str(),
            x.request.target.c_str(), x.response.status, call ? " (recognised)" : "",
            x.request.doubtful ? " (doubtful)" : "");
  if (!call) return;
  const ClientInfo client = clientOf(it->second, x.request.sender);
  if (x.request.doubtful && !it->second.mixed_writers) {
    // The reply may be another request's, but every request on this
    // connection, seen or lost, was written by this one user: whichever of
    // their calls made the object, it is theirs. (Removals only take effect
    // once Docker confirms them, so a misplaced reply cannot strip a bill.)
    closed_.doubtful_billed++;
  } else if (x.request.doubtful) {
    // The reply may be another user's request's: billing on it could credit
    // the wrong user. Counted; the object goes to the missed-object check.
    closed_.doubtful_calls++;
    LOG_WARN(kSub,
             "conn %llx: %s by uid %u (pid %u) not billed: the connection lost bytes, so which reply "
             "answers it is not certain",
             static_cast<unsigned long long>(conn_id), toString(call->action), client.uid, client.tgid);
    if (hooks_.on_doubtful_call) hooks_.on_doubtful_call(*call, client);
    return;
  }
  closed_.calls++;
  if (hooks_.on_call) hooks_.on_call(*call, client);
}

void ConnTracker::noteWriter(Conn& c, const dsock_event& ev) {
  if (!c.have_writer) {
    c.have_writer = true;
    c.writer_uid = ev.uid;
    c.writer_loginuid = ev.loginuid;
  } else if (c.writer_uid != ev.uid || c.writer_loginuid != ev.loginuid) {
    c.mixed_writers = true;
  }
}

void ConnTracker::control(uint64_t conn_id, Conn& c) {
  if (hooks_.control) hooks_.control(conn_id, c.ctl);
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
    if (!conns_.count(ev.conn_id)) open(ev);
    return;
  }
  if (type == DsockEventType::Close) {
    if (auto it = conns_.find(ev.conn_id); it != conns_.end()) it->second.end_why = ev.len;
    closeConn(ev.conn_id, ev.ts_ns);
    return;
  }
  if (type != DsockEventType::Tx && type != DsockEventType::Rx) return;

  auto it = conns_.find(ev.conn_id);
  if (it == conns_.end()) {
    if (ignored_.count(ev.conn_id)) {
      closed_.orphan_events++;
      return;
    }
    // Its connect event was lost (ring buffer full): the connect carries no
    // stream bytes, so following it from here loses nothing.
    closed_.late_connects++;
    open(ev);
    it = conns_.find(ev.conn_id);
  }
  const uint64_t conn_id = ev.conn_id;
  Conn& c = it->second;
  c.last_ns = ev.ts_ns;
  c.turn = ev.turn;
  if (ev.flags & DSOCK_F_LOST_TX) {
    c.mixed_writers = true;  // who wrote the lost bytes is unknown
    c.http->onLoss(true, ev.ts_ns);
  }
  if (ev.flags & DSOCK_F_LOST_RX) c.http->onLoss(false, ev.ts_ns);
  std::string_view data(reinterpret_cast<const char*>(ev.data), ev.cap_len);
  const uint64_t doubts = c.http->stats().doubts;
  if (type == DsockEventType::Tx) {
    // Kept only for the debug line of a connection that ends without an
    // exchange: 80 bytes on the heap for every connection otherwise, outside
    // the tracker's memory budget.
    if (c.tx_bytes == 0 && log::enabled(log::Level::Debug)) c.first_tx.assign(data.substr(0, 80));
    c.tx_bytes += ev.len;
    noteWriter(c, ev);
    const HttpSender sender = senderOf(ev);
    c.http->onSend(data, ev.len, ev.ts_ns, &sender);
  } else {
    c.rx_bytes += ev.len;
    c.http->onRecv(data, ev.len, ev.ts_ns);
  }
  if (c.http->stats().doubts != doubts) {
    LOG_DEBUG(kSub, "conn %llx of pid %u: pairing in doubt from a %s of %llu bytes (%u copied, flags %u): %s",
              static_cast<unsigned long long>(conn_id), ev.tgid, toString(type),
              static_cast<unsigned long long>(ev.len), ev.cap_len, ev.flags, printable(data.substr(0, 120)).c_str());
  }
  // The callbacks above may have run; the connection is still ours (only
  // closeConn erases, and the callbacks never call it). A hijacked stream
  // (attach, exec, BuildKit session) carries no more API calls: stop
  // capturing it at all.
  if (c.http->raw()) {
    stopFollowing(conn_id, ev.ts_ns);
    return;
  }
  charge(c);
  enforceBudget(ev.ts_ns);
}

void ConnTracker::charge(Conn& c) {
  const size_t now = c.http->bufferedBytes();
  memory_bytes_ = memory_bytes_ - c.charged + now;
  c.charged = now;
  if (memory_bytes_ > closed_.memory_peak) closed_.memory_peak = memory_bytes_;
}

// Over budget: drop the connections holding the most until under it. The
// one that grew is usually the biggest; an honest small one is never chosen
// while a bigger one exists.
void ConnTracker::enforceBudget(uint64_t ts_ns) {
  while (memory_bytes_ > budget_ && !conns_.empty()) {
    auto biggest = conns_.begin();
    for (auto it = conns_.begin(); it != conns_.end(); ++it)
      if (it->second.charged > biggest->second.charged) biggest = it;
    const uint64_t id = biggest->first;
    const Conn& c = biggest->second;
    closed_.dropped_memory++;
    LOG_WARN(kSub,
             "conn %llx of pid %u (uid %u): dropped from tracking: it holds %zu bytes and all connections "
             "%zu, over the %zu-byte budget; its calls are not attributed",
             static_cast<unsigned long long>(id), c.client.tgid, c.client.uid, c.charged, memory_bytes_, budget_);
    stopFollowing(id, ts_ns);
  }
}

// Tells the probe to send nothing more for the connection and forgets it.
void ConnTracker::stopFollowing(uint64_t conn_id, uint64_t ts_ns) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  it->second.ctl.ignore = 1;
  control(conn_id, it->second);
  if (ignored_.insert(conn_id).second) {
    ignored_order_.push_back(conn_id);
    if (ignored_order_.size() > kMaxIgnored) {
      ignored_.erase(ignored_order_.front());
      ignored_order_.pop_front();
    }
  }
  closeConn(conn_id, ts_ns);
}

void ConnTracker::closeConn(uint64_t conn_id, uint64_t ts_ns) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  // onClose may complete a close-delimited response and call on_call, which
  // looks the connection up: keep it in the map until that returns.
  it->second.http->onClose(ts_ns);
  it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  if (const auto& hs = c.http->stats(); hs.exchanges == 0 && c.tx_bytes > 0)
    LOG_DEBUG(kSub,
              "conn %llx of pid %u ended (probe's reason %u) without an exchange: %llu bytes sent, %llu received, "
              "%llu parse errors, %llu orphan responses, %llu lost heads, %llu gap bytes; first sent: %s",
              static_cast<unsigned long long>(conn_id), c.client.tgid, c.end_why,
              static_cast<unsigned long long>(c.tx_bytes), static_cast<unsigned long long>(c.rx_bytes),
              static_cast<unsigned long long>(hs.parse_errors), static_cast<unsigned long long>(hs.orphan_responses),
              static_cast<unsigned long long>(hs.lost_heads), static_cast<unsigned long long>(hs.gap_bytes),
              printable(c.first_tx).c_str());
  creates_.erase(conn_id);
  memory_bytes_ -= c.charged;
  add(closed_.http, c.http->stats());
  if (auto f = by_fd_.find(fdKey(c.client.tgid, c.fd)); f != by_fd_.end() && f->second == conn_id) by_fd_.erase(f);
  conns_.erase(it);
}

std::vector<ConnTracker::PendingCreate> ConnTracker::pendingCreates() const {
  std::vector<PendingCreate> out;
  out.reserve(creates_.size());
  for (const auto& [id, pc] : creates_) out.push_back(pc);
  return out;
}

void ConnTracker::evictOldest() {
  auto oldest = conns_.begin();
  for (auto it = conns_.begin(); it != conns_.end(); ++it) {
    if (it->second.seq < oldest->second.seq) oldest = it;
  }
  if (oldest == conns_.end()) return;
  closed_.evicted++;
  stopFollowing(oldest->first, oldest->second.last_ns);
}

void ConnTracker::sweep(uint64_t now_ns) {
  std::vector<uint64_t> gone;
  for (const auto& [id, c] : conns_) {
    if (c.ino == 0 || now_ns < c.last_ns + kIdleCheckNs) continue;
    if (!hooks_.alive(c.client.tgid, c.fd, c.ino)) gone.push_back(id);
  }
  for (uint64_t id : gone) {
    closed_.ended_unseen++;
    LOG_DEBUG(kSub, "conn %llx: socket gone without an end seen", static_cast<unsigned long long>(id));
    closeConn(id, now_ns);
  }
}

TrackerStats ConnTracker::stats() const {
  TrackerStats s = closed_;
  for (const auto& [id, c] : conns_) add(s.http, c.http->stats());
  s.open = conns_.size();
  s.memory_bytes = memory_bytes_;
  s.memory_budget = budget_;
  return s;
}

Health ConnTracker::health(const TrackerStats& ts) {
  Health h;
  const nlohmann::json losses = {
      {"doubtful_calls", ts.doubtful_calls},  // recognised, not billed: pairing in doubt, several writers
      {"dropped_memory", ts.dropped_memory},  // connections dropped over the memory budget
      {"evicted", ts.evicted},                // dropped over the connection count limit
      {"lost_events", ts.http.lost_events},   // stream calls lost to a full ring
  };
  for (const auto& [reason, n] : losses.items()) {
    if (n.get<uint64_t>() > 0) h.degraded.push_back("attribution stream: " + reason + " " + n.dump());
  }
  h.report = {{"connections", ts.connections},
              {"open", ts.open},
              {"exchanges", ts.http.exchanges},
              {"parse_errors", ts.http.parse_errors},
              {"resyncs", ts.http.resyncs},
              {"gap_bytes", ts.http.gap_bytes},
              {"discarded_bytes", ts.http.discarded_bytes},
              {"orphan_responses", ts.http.orphan_responses},
              {"orphan_events", ts.orphan_events},
              {"late_connects", ts.late_connects},
              {"replaced", ts.replaced},
              {"ended_unseen", ts.ended_unseen},
              {"lost_heads", ts.http.lost_heads},
              {"doubts", ts.http.doubts},
              {"doubtful_exchanges", ts.http.doubtful_exchanges},
              {"doubtful_billed", ts.doubtful_billed},
              {"api_calls", ts.calls},
              {"docker_execs", ts.execs},
              {"muted_uploads", ts.muted_uploads},
              {"muted_downloads", ts.muted_downloads},
              {"memory_bytes", ts.memory_bytes},
              {"memory_peak_bytes", ts.memory_peak},
              {"memory_budget_bytes", ts.memory_budget},
              {"losses", losses}};
  return h;
}

}  // namespace dockquota
