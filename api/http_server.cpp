// SPDX-License-Identifier: Apache-2.0
#include "api/http_server.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string_view>
#include <unordered_map>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/base/log.h"
#include "agent/base/worker.h"

namespace dockquota {
namespace {

constexpr const char* kSub = "http";
using Clock = std::chrono::steady_clock;
using M = TransportMetrics;

// After an answer that ends the connection, the unread rest of the request
// (a refused body) is read and dropped this long before close(): closing with
// unread input sends a RST, which can destroy the answer before the client
// reads it (the "lingering close" of Apache and nginx).
constexpr auto kLinger = std::chrono::seconds(2);
// Bytes read from one connection per wakeup before others get a turn (plain
// sockets; level-triggered epoll brings us back).
constexpr size_t kReadTurn = 64 << 10;
// A request with more header lines than this is refused (431) whatever its size.
constexpr size_t kMaxHeaders = kMaxRequestHeaders;
// accept() out of descriptors: the listener is paused this long instead of
// spinning on a level-triggered EMFILE.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);

// One log line per kind per 10 s at most, with the count held back: an
// attacker opening thousands of connections must not flood the journal.
class LogLimiter {
 public:
  bool allow(Clock::time_point now, uint64_t* held) {
    if (now < next_) {
      held_++;
      return false;
    }
    next_ = now + std::chrono::seconds(10);
    *held = held_;
    held_ = 0;
    return true;
  }

 private:
  Clock::time_point next_{};
  uint64_t held_ = 0;
};

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::tolower(x) == std::tolower(y); });
}

bool containsToken(std::string v, const char* token) {  // "keep-alive, Upgrade" has keep-alive
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  return v.find(token) != std::string::npos;
}

bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (std::isalnum(c)) continue;
    if (!std::strchr("!#$%&'*+-.^_`|~", c) || c == 0) return false;
  }
  return true;
}

std::string jsonError(const std::string& msg) { return nlohmann::json{{"msg", msg}}.dump(); }

std::string opensslError() {
  unsigned long e = ERR_get_error();
  if (!e) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

// Status, reason and body of a head the loop refuses; ok when status == 0.
struct HeadError {
  int status = 0;
  std::string msg;
  M::Counter counter = M::kRejectBadRequest;
};

// Parses a complete head (request line, header lines, the blank line) into
// `req`. Lines end in CRLF or a bare LF, as httplib and most servers accept.
HeadError parseHead(std::string_view head, httplib::Request& req) {
  auto bad = [](const std::string& msg) { return HeadError{400, msg, M::kRejectBadRequest}; };
  size_t pos = 0;
  auto nextLine = [&](std::string_view& line) {
    size_t e = head.find('\n', pos);
    if (e == std::string_view::npos) return false;
    line = head.substr(pos, e - pos);
    pos = e + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return true;
  };
  std::string_view line;
  if (!nextLine(line)) return bad("bad request line");
  const size_t sp1 = line.find(' '), sp2 = sp1 == line.npos ? line.npos : line.find(' ', sp1 + 1);
  if (sp2 == line.npos || line.find(' ', sp2 + 1) != line.npos) return bad("bad request line");
  const std::string_view method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1),
                         version = line.substr(sp2 + 1);
  if (!isToken(method)) return bad("bad method");
  if (target.empty() || (target[0] != '/' && target != "*")) return bad("bad request target");
  for (unsigned char c : target)
    if (c <= 0x20 || c == 0x7f) return bad("bad request target");
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    if (version.rfind("HTTP/", 0) == 0) return HeadError{505, "HTTP version not supported", M::kRejectBadRequest};
    return bad("bad HTTP version");
  }
  req.method = method;
  req.target = target;
  req.version = version;
  size_t count = 0;
  while (nextLine(line) && !line.empty()) {
    if (++count > kMaxHeaders) return HeadError{431, "too many header fields", M::kRejectHeadTooLarge};
    // Obsolete line folding, and a space before the colon, are refused (RFC 9112
    // 5.1/5.2): proxies read them differently, the way to request smuggling.
    const size_t colon = line.find(':');
    if (colon == line.npos || !isToken(line.substr(0, colon))) return bad("bad header field");
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
    for (unsigned char c : value)
      if ((c < 0x20 && c != '\t') || c == 0x7f) return bad("bad header field");
    req.headers.emplace(std::string(line.substr(0, colon)), std::string(value));
  }
  const size_t q = target.find('?');
  req.path = httplib::detail::decode_url(std::string(target.substr(0, q)), false);
  if (q != target.npos) httplib::detail::parse_query_text(std::string(target.substr(q + 1)), req.params);
  return {};
}

}  // namespace

HeadVerdict parseRequestHead(std::string_view head, httplib::Request& req) {
  HeadError e = parseHead(head, req);
  return {e.status, e.msg};
}

namespace {

// The peer's key for the per-peer cap: its IPv4 address, or its IPv6 /64 (one
// host usually holds a whole /64, so counting single addresses would cap nothing).
std::string peerKey(const sockaddr_storage& ss, std::string* addr, int* port) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
    *addr = buf;
    *port = ntohs(a->sin_port);
    return *addr;
  }
  const auto* a6 = reinterpret_cast<const sockaddr_in6*>(&ss);
  *port = ntohs(a6->sin6_port);
  if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
    inet_ntop(AF_INET, &a6->sin6_addr.s6_addr[12], buf, sizeof buf);
    *addr = buf;
    return *addr;
  }
  inet_ntop(AF_INET6, &a6->sin6_addr, buf, sizeof buf);
  *addr = buf;
  in6_addr net = a6->sin6_addr;
  std::memset(&net.s6_addr[8], 0, 8);
  inet_ntop(AF_INET6, &net, buf, sizeof buf);
  return std::string(buf) + "/64";
}

void localAddr(int fd, std::string* addr, int* port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) peerKey(ss, addr, port);
}

bool isLoopback(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return (ntohl(reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr.s_addr) >> 24) == 127;
  const auto& a = reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(&a) || (IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127);
}

// The answer's status line and header fields. Content-Length and Connection
// are ours; a handler's field holding CR or LF is dropped, never sent.
std::string responseHead(const httplib::Response& res, int status, size_t body_len, bool keep_alive,
                         std::chrono::milliseconds idle) {
  std::string h = "HTTP/1.1 " + std::to_string(status) + " " + httpReason(status) + "\r\n";
  for (const auto& [k, v] : res.headers) {
    if (iequals(k, "Content-Length") || iequals(k, "Connection") || iequals(k, "Transfer-Encoding") ||
        iequals(k, "Keep-Alive"))
      continue;
    if (!isToken(k) || v.find_first_of("\r\n") != std::string::npos) continue;
    h += k;
    h += ": ";
    h += v;
    h += "\r\n";
  }
  h += "Content-Length: " + std::to_string(body_len) + "\r\n";
  if (keep_alive) {
    h += "Connection: keep-alive\r\nKeep-Alive: timeout=" +
         std::to_string(std::chrono::duration_cast<std::chrono::seconds>(idle).count()) + "\r\n";
  } else {
    h += "Connection: close\r\n";
  }
  h += "\r\n";
  return h;
}

}  // namespace

const char* httpReason(int s) {
  switch (s) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "";
  }
}

// ---------------------------------------------------------------------------
struct HttpServer::Loop {
  enum class Phase {
    Head,       // waiting for (the rest of) a request head; also keep-alive idle
    Body,       // head parsed, reading Content-Length bytes
    Handling,   // on a worker; nothing read meanwhile (pipelined bytes wait in `in`)
    Writing,    // answer queued in `out`
    Lingering,  // answered and shut for writing; dropping input until EOF or kLinger
  };
  struct Conn {
    uint64_t id = 0;
    int fd = -1;
    SSL* ssl = nullptr;
    std::string peer_key, peer;
    int peer_port = 0;
    std::string local;
    int local_port = 0;
    Phase phase = Phase::Head;
    bool in_request = true;  // a request has begun: its deadline runs (the first from accept)
    bool rejected = false;   // the answer in `out` is the loop's own refusal
    bool keep_alive = false;
    bool peer_eof = false;
    bool ssl_read_wants_write = false, ssl_write_wants_read = false;
    Clock::time_point since;     // when it began waiting for its current request (eviction order)
    Clock::time_point deadline;  // of the current phase
    std::string in;
    size_t scanned = 0;  // `in` has no end of head before this
    std::deque<std::string> out;
    size_t out_off = 0;
    std::unique_ptr<httplib::Request> req;
    PeerCred cred;
    size_t body_need = 0, reserved = 0;
    bool discard = false;  // the body is dropped as it comes (options.discard_body)
    uint32_t interest = 0;
    ~Conn() {
      if (ssl) SSL_free(ssl);
      if (fd >= 0) ::close(fd);
    }
  };
  struct Job {
    uint64_t conn;
    std::unique_ptr<httplib::Request> req;
    bool keep_alive;
    PeerCred cred;
  };
  struct Done {
    uint64_t conn;
    std::string head, body;
  };
  static constexpr uint64_t kListenId = 0, kWakeId = 1;

  const HttpServerOptions& opt;
  const PeerHandler& handler;
  TransportMetrics& metrics;
  int listen_fd = -1, epoll_fd = -1, wake_fd = -1;
  ino_t unix_ino = 0;  // the socket file we made: removed at stop only if it is still ours
  SSL_CTX* ssl_ctx = nullptr;
  std::atomic<bool> stopping{false};

  // Loop thread only.
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns;
  std::unordered_map<std::string, int> per_peer;
  size_t buffered = 0;  // bytes reserved for request bodies, all connections
  uint64_t next_id = 2;
  bool listen_paused = false;
  Clock::time_point listen_resume{};
  LogLimiter log_refused, log_evicted, log_timeout, log_rejected, log_tls;

  // Workers: the queue holds at most one request per connection, so it is
  // bounded by max_connections.
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> jobs;
  bool workers_stop = false;
  std::mutex done_mu;
  std::vector<Done> done;

  // Last: a worker still running when the rest goes would wake a destroyed cv.
  Worker loop_worker;
  std::vector<Worker> workers;

  Loop(const HttpServerOptions& o, const PeerHandler& h, TransportMetrics& m) : opt(o), handler(h), metrics(m) {}
  ~Loop() {
    conns.clear();
    struct stat st {};
    if (unix_ino && lstat(opt.unix_path.c_str(), &st) == 0 && st.st_ino == unix_ino) ::unlink(opt.unix_path.c_str());
    for (int fd : {listen_fd, epoll_fd, wake_fd})
      if (fd >= 0) ::close(fd);
    if (ssl_ctx) SSL_CTX_free(ssl_ctx);
  }

  Status loadTls() {
    ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!ssl_ctx) return Error{ENOMEM, std::string(kSub) + ": SSL_CTX_new: " + opensslError()};
    SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION);
    // Client renegotiation costs us a handshake per request on demand: refused.
    SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    // Partial writes from a buffer we keep; RELEASE_BUFFERS frees the 34 KiB
    // record buffers of an idle connection.
    SSL_CTX_set_mode(ssl_ctx,
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ssl_ctx, opt.tls_cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ssl_ctx, opt.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ssl_ctx) != 1) {
      return Error{EINVAL, std::string(kSub) + ": cannot load TLS certificate " + opt.tls_cert_file + " / key " +
                               opt.tls_key_file + ": " + opensslError()};
    }
    return {};
  }

  // A socket file left by an agent that died is replaced; one that answers
  // belongs to a running agent, and two must not share a path (as two must
  // not share a port: see SO_REUSEPORT below).
  Status clearStaleSocket(const sockaddr_un& sa) {
    struct stat st {};
    if (lstat(opt.unix_path.c_str(), &st) != 0) return {};
    const std::string where = std::string(kSub) + ": cannot listen on " + opt.unix_path;
    if (!S_ISSOCK(st.st_mode)) return Error{EEXIST, where + ": exists and is not a socket"};
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return osError(errno, where);
    const bool live = connect(probe, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0;
    ::close(probe);
    if (live) return Error{EADDRINUSE, where + ": another process serves it"};
    if (::unlink(opt.unix_path.c_str()) != 0 && errno != ENOENT)
      return osError(errno, where + ": removing the stale socket");
    return {};
  }

  // A socket systemd made and listens on for us (socket activation): it
  // outlives this process, so connections made while we restart wait in its
  // backlog instead of failing.
  Result<int> adoptListener() {
    int accepting = 0;
    socklen_t len = sizeof accepting;
    if (getsockopt(opt.listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0 || !accepting)
      return Error{
          EINVAL, std::string(kSub) + ": inherited fd " + std::to_string(opt.listen_fd) + " is not a listening socket"};
    const int flags = fcntl(opt.listen_fd, F_GETFL);
    if (flags < 0 || fcntl(opt.listen_fd, F_SETFL, flags | O_NONBLOCK) != 0 ||
        fcntl(opt.listen_fd, F_SETFD, FD_CLOEXEC) != 0)
      return osError(errno, std::string(kSub) + ": inherited listening socket");
    listen_fd = opt.listen_fd;
    return 0;
  }

  Result<int> bindUnix() {
    const std::string where = std::string(kSub) + ": cannot listen on " + opt.unix_path;
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (opt.unix_path.empty() || opt.unix_path.size() >= sizeof sa.sun_path)
      return Error{ENAMETOOLONG, where + ": path empty or too long"};
    std::memcpy(sa.sun_path, opt.unix_path.data(), opt.unix_path.size());
    if (auto st = clearStaleSocket(sa); !st) return st.error();
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return osError(errno, where);
    // bind() makes the file with the process umask (0077 under systemd):
    // chmod() before listen(), so no connection is ever taken under the wrong mode.
    if (bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0 ||
        chmod(opt.unix_path.c_str(), opt.unix_mode & 07777) != 0 || listen(fd, SOMAXCONN) != 0) {
      const int err = errno;
      ::close(fd);
      return osError(err, where);
    }
    struct stat st {};
    if (lstat(opt.unix_path.c_str(), &st) == 0) unix_ino = st.st_ino;
    listen_fd = fd;
    return 0;
  }

  Result<int> bindListen() {
    if (opt.listen_fd >= 0) return adoptListener();
    if (!opt.unix_path.empty()) return bindUnix();
    const std::string where = opt.address + ":" + std::to_string(opt.port);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    const std::string port = std::to_string(opt.port);
    if (int rc = getaddrinfo(opt.address.empty() ? nullptr : opt.address.c_str(), port.c_str(), &hints, &res))
      return Error{EINVAL, std::string(kSub) + ": cannot listen on " + where + ": " + gai_strerror(rc)};
    int err = EADDRNOTAVAIL;
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
      int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) {
        err = errno;
        continue;
      }
      // SO_REUSEADDR only, never SO_REUSEPORT: a second agent (or a stale one
      // still shutting down) would then silently share the port and answer half
      // the requests from another database. This way it fails to bind, loudly.
      int yes = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) {
        listen_fd = fd;
        break;
      }
      err = errno;
      ::close(fd);
    }
    freeaddrinfo(res);
    if (listen_fd < 0) return osError(err, std::string(kSub) + ": cannot listen on " + where);
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len);
    std::string addr;
    int bound = 0;
    peerKey(ss, &addr, &bound);
    if (!isLoopback(ss) && opt.tls_cert_file.empty()) {
      LOG_WARN(kSub,
               "listening on %s:%d without TLS: the API key and every answer cross the network in clear text; "
               "set tls_cert_file and tls_key_file, or listen on 127.0.0.1",
               opt.address.c_str(), bound);
    }
    return bound;
  }

  Status startThreads() {
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd < 0 || wake_fd < 0) return osError(errno, std::string(kSub) + ": epoll/eventfd");
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenId;
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listen_fd, &ev);
    ev.data.u64 = kWakeId;
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, wake_fd, &ev);
    const int n = std::max(1, opt.threads);
    workers.reserve(n);
    for (int i = 0; i < n; i++) {
      workers.emplace_back();
      workers.back().start(
          "dq-http-" + std::to_string(i), [this] { work(); }, [this] { stopWorkers(); });
    }
    loop_worker.start(
        "dq-http-loop", [this] { run(); },
        [this] {
          stopping = true;
          wake();
        });
    return {};
  }

  // The loop first: it queues no job once joined; then the workers.
  void stop() {
    loop_worker.stop();
    for (auto& w : workers) w.stop();
    workers.clear();
  }

  void stopWorkers() {
    {
      std::lock_guard<std::mutex> l(mu);
      workers_stop = true;
    }
    cv.notify_all();
  }

  void wake() {
    uint64_t one = 1;
    if (wake_fd >= 0) (void)!write(wake_fd, &one, sizeof one);
  }

  // --- workers -------------------------------------------------------------
  // The handler on a complete request, and its answer serialised.
  Done runJob(Job& j) {
    httplib::Response res;
    try {
      handler(j.cred, *j.req, res);
    } catch (const std::exception& e) {
      LOG_ERROR(kSub, "%s: handler failed: %s", j.req->method.c_str(), e.what());
      res = internalError();
    } catch (...) { res = internalError(); }
    return answer(j.conn, *j.req, res, j.keep_alive);
  }

  static httplib::Response internalError() {
    httplib::Response res;
    res.status = 500;
    res.body = jsonError("internal error");
    res.set_header("Content-Type", "application/json");
    return res;
  }

  // The handler's answer serialised, for the loop to write.
  Done answer(uint64_t conn, const httplib::Request& req, httplib::Response& res, bool keep_alive) const {
    const int status = res.status < 0 ? 200 : res.status;
    const bool head = req.method == "HEAD";
    size_t length = res.body.size();
    if (head && length == 0) {  // the router dropped the GET answer's body and said its size
      const std::string v = res.get_header_value("Content-Length");
      if (!v.empty() && v.size() < 19 && v.find_first_not_of("0123456789") == std::string::npos)
        length = std::stoull(v);
    }
    Done d{conn, responseHead(res, status, length, keep_alive, opt.idle_timeout), {}};
    if (!head) d.body = std::move(res.body);
    return d;
  }

  void work() {
    for (;;) {
      Job j;
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return workers_stop || !jobs.empty(); });
        if (workers_stop) return;
        j = std::move(jobs.front());
        jobs.pop_front();
      }
      Done d = runJob(j);
      {
        std::lock_guard<std::mutex> l(done_mu);
        done.push_back(std::move(d));
      }
      wake();
    }
  }

  // --- the loop ------------------------------------------------------------
  void run() {
    epoll_event evs[64];
    int timeout = -1;
    while (!stopping) {
      int n = epoll_wait(epoll_fd, evs, 64, timeout);
      if (n < 0 && errno != EINTR) {
        LOG_ERROR(kSub, "epoll_wait: %s", strerror(errno));
        break;
      }
      for (int i = 0; i < n; i++) {
        const uint64_t id = evs[i].data.u64;
        if (id == kListenId) {
          acceptAll();
        } else if (id == kWakeId) {
          uint64_t v;
          (void)!read(wake_fd, &v, sizeof v);
          completions();
        } else {
          auto it = conns.find(id);
          if (it != conns.end()) onEvent(*it->second, evs[i].events);
        }
      }
      timeout = expire(Clock::now());
    }
    conns.clear();
    metrics.setOpen(0);
  }

  void closeConn(Conn& c) {
    auto p = per_peer.find(c.peer_key);
    if (p != per_peer.end() && --p->second <= 0) per_peer.erase(p);
    buffered -= c.reserved;
    conns.erase(c.id);  // destroys c: close() also takes it out of the epoll set
    metrics.setOpen(conns.size());
  }

  void setInterest(Conn& c) {
    const bool reading = c.phase == Phase::Head || c.phase == Phase::Body || c.phase == Phase::Lingering;
    uint32_t ev = 0;
    if (reading || (c.ssl_write_wants_read && !c.out.empty())) ev |= EPOLLIN;
    if (!c.out.empty() || (reading && c.ssl_read_wants_write)) ev |= EPOLLOUT;
    if (ev == c.interest) return;
    epoll_event e{};
    e.events = ev;
    e.data.u64 = c.id;
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c.fd, &e);
    c.interest = ev;
  }

  // Who makes room when a cap is full: among connections that have not
  // completed a request (waiting for a head or a body, keep-alive idle, or
  // lingering after an answer), the one waiting longest; lingering ones first.
  // Never one whose request a worker holds or whose answer is being written.
  //
  // Why evict rather than refuse: every local user reaches a loopback listener
  // from 127.0.0.1 (or ::1), so a per-peer cap cannot tell an attacker's
  // slow-drip connections from the health check or a local qman master; nor can
  // the global cap tell a botnet's from the master's. Refusing at a full cap
  // would hand the API to whoever fills it first. Evicting the oldest
  // incomplete connection keeps it for clients that send their request at once
  // (every real client does: it is the newest connection, evicted last), and a
  // slow-dripper's patience buys it nothing. Refused only when every slot holds
  // a request being handled or answered, which the workers finish.
  Conn* victim(const std::string* peer_key) {
    Conn* best = nullptr;
    for (auto& [id, cp] : conns) {
      Conn& c = *cp;
      if (c.phase == Phase::Handling || c.phase == Phase::Writing) continue;
      if (peer_key && c.peer_key != *peer_key) continue;
      if (!best) {
        best = &c;
        continue;
      }
      const bool cl = c.phase == Phase::Lingering, bl = best->phase == Phase::Lingering;
      if (cl != bl ? cl : c.since < best->since) best = &c;
    }
    return best;
  }

  // `make` builds the line only when it is logged (under attack most are not).
  template <typename F>
  void logLimited(LogLimiter& lim, Clock::time_point now, F make) {
    uint64_t held = 0;
    if (!lim.allow(now, &held)) return;
    std::string line = make();
    if (held) line += " (" + std::to_string(held) + " more like it in the last 10 s)";
    LOG_WARN(kSub, "%s", line.c_str());
  }

  bool makeRoom(const std::string& key, const std::string& addr, Clock::time_point now) {
    auto caps = [this] {
      return std::to_string(conns.size()) + " open, caps " + std::to_string(opt.max_connections) + " in all and " +
             std::to_string(opt.max_connections_per_peer) + " per peer";
    };
    auto p = per_peer.find(key);
    if (p != per_peer.end() && p->second >= opt.max_connections_per_peer) {
      Conn* v = victim(&key);
      if (!v) {
        metrics.add(M::kRefusedMaxPerPeer);
        logLimited(log_refused, now, [&] {
          return "refused a connection from " + addr + ": all its connections are busy (" + caps() + ")";
        });
        return false;
      }
      metrics.add(M::kEvictedMaxPerPeer);
      logLimited(log_evicted, now, [&] {
        return "closed a connection from " + v->peer + " that had not sent a complete request, for a new one (" +
               caps() + ")";
      });
      closeConn(*v);
    }
    if (conns.size() >= static_cast<size_t>(std::max(1, opt.max_connections))) {
      Conn* v = victim(nullptr);
      if (!v) {
        metrics.add(M::kRefusedMaxConnections);
        logLimited(log_refused, now,
                   [&] { return "refused a connection from " + addr + ": every connection is busy (" + caps() + ")"; });
        return false;
      }
      metrics.add(M::kEvictedMaxConnections);
      logLimited(log_evicted, now, [&] {
        return "closed a connection from " + v->peer + " that had not sent a complete request, for a new one (" +
               caps() + ")";
      });
      closeConn(*v);
    }
    return true;
  }

  void acceptAll() {
    const auto now = Clock::now();
    for (int i = 0; i < 64 && !stopping; i++) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      int fd = accept4(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          metrics.add(M::kRefusedFdLimit);
          const int err = errno;
          logLimited(log_refused, now,
                     [&] { return std::string("accept: ") + strerror(err) + "; not accepting for 100 ms"; });
          epoll_event e{};
          e.data.u64 = kListenId;
          epoll_ctl(epoll_fd, EPOLL_CTL_MOD, listen_fd, &e);
          listen_paused = true;
          listen_resume = now + kAcceptPause;
        }
        return;
      }
      auto c = std::make_unique<Conn>();
      c->fd = fd;
      if (ss.ss_family == AF_UNIX) {
        if (!unixPeer(*c)) continue;  // ~Conn closes fd
      } else {
        c->peer_key = peerKey(ss, &c->peer, &c->peer_port);
      }
      if (!makeRoom(c->peer_key, c->peer, now)) continue;
      metrics.add(M::kAccepted);
      if (ss.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        localAddr(fd, &c->local, &c->local_port);
      }
      if (ssl_ctx) {
        c->ssl = SSL_new(ssl_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) continue;
        SSL_set_accept_state(c->ssl);
      }
      c->id = next_id++;
      c->since = now;
      c->deadline = now + opt.request_timeout;  // the first request, TLS handshake included
      epoll_event e{};
      e.events = EPOLLIN;
      e.data.u64 = c->id;
      if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &e) != 0) continue;
      c->interest = EPOLLIN;
      per_peer[c->peer_key]++;
      conns.emplace(c->id, std::move(c));
      metrics.setOpen(conns.size());
    }
  }

  // A unix peer is its uid, for the per-peer cap too: one user's connections
  // make room among themselves, never at another user's expense.
  static bool unixPeer(Conn& c) {
    ucred cr{};
    socklen_t len = sizeof cr;
    if (getsockopt(c.fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || len != sizeof cr) return false;
    c.cred = PeerCred{true, uint32_t(cr.uid), uint32_t(cr.gid), int32_t(cr.pid)};
    c.peer_key = "uid:" + std::to_string(cr.uid);
    c.peer = "uid " + std::to_string(cr.uid) + " (pid " + std::to_string(cr.pid) + ")";
    c.local = "unix";
    return true;
  }

  void onEvent(Conn& c, uint32_t ev) {
    if (ev & (EPOLLERR | EPOLLHUP)) return closeConn(c);
    const uint64_t id = c.id;
    if (!c.out.empty()) {
      if (!flush(c)) return;
    }
    if (!alive(id)) return;
    if (c.phase == Phase::Head || c.phase == Phase::Body || c.phase == Phase::Lingering) onReadable(c);
  }

  bool alive(uint64_t id) const { return conns.count(id) != 0; }

  // Reads what is there (up to the phase's need), then parses. False when `c` is gone.
  bool onReadable(Conn& c) {
    char buf[16384];
    size_t turn = 0;
    bool eof = false;
    for (;;) {
      // Enough to decide: over the head cap, or the whole body (plus what may follow).
      const size_t cap = c.phase == Phase::Body ? c.body_need + opt.max_head_bytes + 1 : opt.max_head_bytes + 1;
      if (c.phase != Phase::Lingering && c.in.size() >= cap) break;
      ssize_t n;
      if (c.ssl) {
        ERR_clear_error();
        int r = SSL_read(c.ssl, buf, sizeof buf);
        c.ssl_read_wants_write = false;
        if (r > 0) {
          n = r;
        } else {
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_READ) break;
          if (e == SSL_ERROR_WANT_WRITE) {
            c.ssl_read_wants_write = true;
            break;
          }
          if (e == SSL_ERROR_ZERO_RETURN) {
            n = 0;
          } else {
            if (!SSL_is_init_finished(c.ssl) && c.phase != Phase::Lingering) {
              metrics.add(M::kTlsHandshakeFailed);
              logLimited(log_tls, Clock::now(),
                         [&] { return "TLS handshake with " + c.peer + " failed: " + opensslError(); });
            }
            ERR_clear_error();
            closeConn(c);
            return false;
          }
        }
      } else {
        n = recv(c.fd, buf, sizeof buf, 0);
        if (n < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          if (errno == EINTR) continue;
          closeConn(c);
          return false;
        }
      }
      if (n == 0) {
        eof = true;
        break;
      }
      if (c.phase != Phase::Lingering) c.in.append(buf, static_cast<size_t>(n));
      turn += static_cast<size_t>(n);
      if (!c.ssl && turn >= kReadTurn) break;  // TLS: decrypted bytes have no epoll event, read them now
    }
    if (c.phase == Phase::Lingering) {
      if (eof) closeConn(c);
      return !eof && alive(c.id);
    }
    if (eof) c.peer_eof = true;
    const uint64_t id = c.id;
    if (!processInput(c)) return false;
    if (!alive(id)) return false;
    if (eof && (c.phase == Phase::Head || c.phase == Phase::Body)) {
      closeConn(c);  // gone before completing a request: nobody to answer
      return false;
    }
    setInterest(c);
    return true;
  }

  // Parses the requests in `in`: a complete one goes to a worker, a bad one is
  // answered here. False when `c` is gone.
  bool processInput(Conn& c) {
    const auto now = Clock::now();
    if (c.phase == Phase::Head) {
      // Blank lines before a request line are ignored (RFC 9112 2.2).
      size_t skip = 0;
      while (skip < c.in.size() && (c.in[skip] == '\r' || c.in[skip] == '\n')) skip++;
      if (skip) {
        c.in.erase(0, skip);
        c.scanned = 0;
      }
      if (c.in.empty()) return true;
      if (!c.in_request) {  // first byte after keep-alive idle: the request's deadline starts
        c.in_request = true;
        c.deadline = now + opt.request_timeout;
      }
      size_t end = std::string::npos;
      for (size_t i = c.scanned > 2 ? c.scanned - 2 : 0; i < c.in.size(); i++) {
        if (c.in[i] != '\n') continue;
        if (i + 1 < c.in.size() && c.in[i + 1] == '\n') {
          end = i + 2;
          break;
        }
        if (i + 2 < c.in.size() && c.in[i + 1] == '\r' && c.in[i + 2] == '\n') {
          end = i + 3;
          break;
        }
      }
      if (end == std::string::npos || end > opt.max_head_bytes) {
        if (end == std::string::npos && c.in.size() <= opt.max_head_bytes) {
          c.scanned = c.in.size();
          return true;
        }
        const size_t nl = c.in.find('\n');
        if (nl == std::string::npos || nl > opt.max_head_bytes)
          return reject(c, 414, "request URI too long (limit " + std::to_string(opt.max_head_bytes) + " bytes)",
                        M::kRejectUriTooLong);
        return reject(c, 431,
                      "request header fields too large (limit " + std::to_string(opt.max_head_bytes) + " bytes)",
                      M::kRejectHeadTooLarge);
      }
      auto req = std::make_unique<httplib::Request>();
      HeadError err = parseHead(std::string_view(c.in.data(), end), *req);
      if (err.status) return reject(c, err.status, err.msg, err.counter);
      c.in.erase(0, end);
      c.scanned = 0;
      req->remote_addr = c.peer;
      req->remote_port = c.peer_port;
      req->local_addr = c.local;
      req->local_port = c.local_port;
      // Chunked request bodies: none of our clients sends them (the qman master's
      // requests carry Content-Length); refusing them also closes the
      // Transfer-Encoding + Content-Length smuggling door.
      if (req->has_header("Transfer-Encoding"))
        return reject(c, 411, "send the body with Content-Length (no Transfer-Encoding)", M::kRejectLengthRequired);
      size_t length = 0;
      const size_t n = req->get_header_value_count("Content-Length");
      for (size_t i = 0; i < n; i++) {
        const std::string v = req->get_header_value("Content-Length", i);
        if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos)
          return reject(c, 400, "bad Content-Length", M::kRejectBadRequest);
        const size_t l = std::stoull(v);
        if (i && l != length) return reject(c, 400, "conflicting Content-Length", M::kRejectBadRequest);
        length = l;
      }
      c.discard = opt.discard_body && opt.discard_body(*req);
      if (length > opt.max_body_bytes && !c.discard)
        return reject(c, 413, "request body too large", M::kRejectBodyTooLarge);  // as httplib said it
      if (!c.discard && buffered + length > opt.max_buffered_bytes)
        return reject(c, 503, "server busy, retry", M::kRejectBusy);
      if (!c.discard) buffered += length;
      c.reserved = c.discard ? 0 : length;
      c.body_need = length;
      c.req = std::move(req);
      c.phase = Phase::Body;
      if (length > c.in.size() && containsToken(c.req->get_header_value("Expect"), "100-continue")) {
        c.out.push_back("HTTP/1.1 100 Continue\r\n\r\n");
        const uint64_t id = c.id;
        if (!flush(c) || !alive(id)) return false;
      }
    }
    if (c.phase == Phase::Body && c.discard) {
      const size_t take = std::min(c.in.size(), c.body_need);
      c.in.erase(0, take);
      c.body_need -= take;
      if (c.body_need > 0) return true;
      c.discard = false;
      dispatch(c);
    } else if (c.phase == Phase::Body) {
      if (c.in.size() < c.body_need) return true;
      c.req->body.assign(c.in, 0, c.body_need);
      c.in.erase(0, c.body_need);
      dispatch(c);
    }
    return true;
  }

  void dispatch(Conn& c) {
    const httplib::Request& r = *c.req;
    const std::string conn = r.get_header_value("Connection");
    c.keep_alive = !c.peer_eof && !stopping &&
                   (r.version == "HTTP/1.0" ? containsToken(conn, "keep-alive") : !containsToken(conn, "close"));
    c.phase = Phase::Handling;
    setInterest(c);
    if (opt.try_inline) {
      httplib::Response res;
      bool answered = false;
      try {
        answered = opt.try_inline(c.cred, *c.req, res);
      } catch (...) {
        answered = false;  // the worker's handler says what went wrong
        res = httplib::Response();
      }
      if (answered) {
        Done d = answer(c.id, r, res, c.keep_alive);
        c.req.reset();
        {
          std::lock_guard<std::mutex> l(done_mu);
          done.push_back(std::move(d));
        }
        wake();  // written by completions() on this thread's next turn: the caller may still use `c`
        return;
      }
    }
    {
      std::lock_guard<std::mutex> l(mu);
      jobs.push_back(Job{c.id, std::move(c.req), c.keep_alive, c.cred});
    }
    cv.notify_one();
  }

  void completions() {
    std::vector<Done> ready;
    {
      std::lock_guard<std::mutex> l(done_mu);
      ready.swap(done);
    }
    const auto now = Clock::now();
    for (Done& d : ready) {
      auto it = conns.find(d.conn);
      if (it == conns.end()) continue;  // closed meanwhile (peer reset, stop)
      Conn& c = *it->second;
      buffered -= c.reserved;
      c.reserved = 0;
      c.phase = Phase::Writing;
      c.rejected = false;
      c.deadline = now + opt.request_timeout;
      c.out.push_back(std::move(d.head));
      if (!d.body.empty()) c.out.push_back(std::move(d.body));
      flush(c);
    }
  }

  // The loop's own answer ({"msg": ...}, then close): the handler never sees it.
  bool reject(Conn& c, int status, const std::string& msg, M::Counter why) {
    if (why != M::kCount) metrics.add(why);
    if (status != 408)
      logLimited(log_rejected, Clock::now(),
                 [&] { return "refused a request from " + c.peer + ": " + std::to_string(status) + " " + msg; });
    httplib::Response res;
    res.set_header("Content-Type", "application/json");
    if (status == 503) res.set_header("Retry-After", "1");
    std::string body = jsonError(msg);
    buffered -= c.reserved;
    c.reserved = 0;
    c.req.reset();
    c.in.clear();
    c.keep_alive = false;
    c.phase = Phase::Writing;
    c.rejected = true;
    c.deadline = Clock::now() + kLinger;  // an error answer: not worth waiting long for its reader
    c.out.push_back(responseHead(res, status, body.size(), false, opt.idle_timeout));
    c.out.push_back(std::move(body));
    return flush(c);
  }

  // Writes what `out` holds. False when `c` is gone.
  bool flush(Conn& c) {
    const auto now = Clock::now();
    bool progress = false;
    while (!c.out.empty()) {
      const std::string& s = c.out.front();
      size_t wrote = 0;
      if (c.ssl) {
        ERR_clear_error();
        const int len = static_cast<int>(std::min<size_t>(s.size() - c.out_off, INT_MAX));
        int r = SSL_write(c.ssl, s.data() + c.out_off, len);
        c.ssl_write_wants_read = false;
        if (r <= 0) {
          int e = SSL_get_error(c.ssl, r);
          if (e == SSL_ERROR_WANT_WRITE) break;
          if (e == SSL_ERROR_WANT_READ) {
            c.ssl_write_wants_read = true;
            break;
          }
          ERR_clear_error();
          closeConn(c);
          return false;
        }
        wrote = static_cast<size_t>(r);
      } else {
        iovec iov[4];
        size_t k = 0;
        for (auto it = c.out.begin(); it != c.out.end() && k < 4; ++it, ++k) {
          const size_t off = k == 0 ? c.out_off : 0;
          iov[k].iov_base = const_cast<char*>(it->data() + off);
          iov[k].iov_len = it->size() - off;
        }
        msghdr mh{};
        mh.msg_iov = iov;
        mh.msg_iovlen = k;
        ssize_t r = sendmsg(c.fd, &mh, MSG_NOSIGNAL);
        if (r < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          if (errno == EINTR) continue;
          closeConn(c);
          return false;
        }
        wrote = static_cast<size_t>(r);
      }
      progress = progress || wrote > 0;
      while (wrote > 0 && !c.out.empty()) {
        const size_t left = c.out.front().size() - c.out_off;
        if (wrote < left) {
          c.out_off += wrote;
          wrote = 0;
        } else {
          wrote -= left;
          c.out.pop_front();
          c.out_off = 0;
        }
      }
    }
    if (progress && c.phase == Phase::Writing && !c.rejected)
      c.deadline = now + opt.request_timeout;  // a slow reader, not a dead one
    if (c.out.empty() && c.phase == Phase::Writing) return finish(c, now);
    setInterest(c);
    return true;
  }

  // The answer is out: the next request on a keep-alive connection, else close.
  bool finish(Conn& c, Clock::time_point now) {
    if (!c.keep_alive) {
      c.phase = Phase::Lingering;
      c.deadline = now + kLinger;
      c.since = now;
      c.in.clear();
      if (c.ssl) {
        ERR_clear_error();
        SSL_shutdown(c.ssl);  // close_notify; its answer is not waited for
      }
      shutdown(c.fd, SHUT_WR);
      setInterest(c);
      return true;
    }
    c.phase = Phase::Head;
    c.in_request = false;
    c.since = now;
    c.deadline = now + opt.idle_timeout;
    c.scanned = 0;
    setInterest(c);
    // A pipelined request may be waiting in `in`, or decrypted in the TLS buffer
    // (no epoll event for that): look now.
    return onReadable(c);
  }

  // Deadlines; returns the epoll timeout (ms) to the next one, -1 for none.
  int expire(Clock::time_point now) {
    if (listen_paused && now >= listen_resume) {
      epoll_event e{};
      e.events = EPOLLIN;
      e.data.u64 = kListenId;
      epoll_ctl(epoll_fd, EPOLL_CTL_MOD, listen_fd, &e);
      listen_paused = false;
    }
    std::vector<uint64_t> due;
    Clock::time_point next = Clock::time_point::max();
    if (listen_paused) next = listen_resume;
    for (auto& [id, cp] : conns) {
      if (cp->phase == Phase::Handling) continue;
      if (cp->deadline <= now)
        due.push_back(id);
      else
        next = std::min(next, cp->deadline);
    }
    for (uint64_t id : due) {
      auto it = conns.find(id);
      if (it == conns.end()) continue;
      Conn& c = *it->second;
      switch (c.phase) {
        case Phase::Head:
          if (!c.in_request) {
            metrics.add(M::kIdleClosed);
            closeConn(c);
            break;
          }
          metrics.add(M::kTimeoutHead);
          if (c.ssl && !SSL_is_init_finished(c.ssl)) {  // no channel to send a 408 over
            logLimited(log_timeout, now, [&] { return c.peer + ": TLS handshake not complete in time"; });
            closeConn(c);
            break;
          }
          logLimited(log_timeout, now, [&] { return c.peer + ": request head not complete in time: 408"; });
          if (reject(c, 408, "request not complete in time", M::kCount) && alive(id)) next = std::min(next, c.deadline);
          break;
        case Phase::Body:
          metrics.add(M::kTimeoutBody);
          logLimited(log_timeout, now, [&] { return c.peer + ": request body not complete in time: 408"; });
          if (reject(c, 408, "request not complete in time", M::kCount) && alive(id)) next = std::min(next, c.deadline);
          break;
        case Phase::Writing:
          if (!c.rejected) {
            metrics.add(M::kTimeoutWrite);
            logLimited(log_timeout, now, [&] { return c.peer + ": the client did not read its answer in time"; });
          }
          closeConn(c);
          break;
        case Phase::Lingering: closeConn(c); break;
        case Phase::Handling: break;
      }
    }
    if (next == Clock::time_point::max()) return -1;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1;
    return static_cast<int>(std::clamp<long long>(ms, 0, 60000));
  }
};

// ---------------------------------------------------------------------------
HttpServer::HttpServer(HttpServerOptions options, Handler handler, TransportMetrics& metrics)
    : opt_(std::move(options)),
      handler_(
          [h = std::move(handler)](const PeerCred&, httplib::Request& req, httplib::Response& res) { h(req, res); }),
      metrics_(metrics) {}

HttpServer::HttpServer(HttpServerOptions options, PeerHandler handler, TransportMetrics& metrics)
    : opt_(std::move(options)), handler_(std::move(handler)), metrics_(metrics) {}

HttpServer::~HttpServer() { stop(); }

Result<int> HttpServer::start() {
  if (loop_) return Error{EBUSY, std::string(kSub) + ": already started"};
  // SSL_write() on a socket a client reset would raise SIGPIPE (plain writes
  // use MSG_NOSIGNAL); the agent ignores it already, tests and tools may not.
  struct sigaction sa {};
  if (sigaction(SIGPIPE, nullptr, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
  auto loop = std::make_unique<Loop>(opt_, handler_, metrics_);
  if (tls()) {
    if (auto st = loop->loadTls(); !st) return st.error();
  }
  auto port = loop->bindListen();
  if (!port) return port.error();
  if (auto st = loop->startThreads(); !st) return st.error();
  loop_ = std::move(loop);
  return *port;
}

void HttpServer::stop() {
  if (!loop_) return;
  loop_->stop();
  loop_.reset();
}

}  // namespace dockquota
