// SPDX-License-Identifier: Apache-2.0
// Real BPF programs on the running kernel. Need root and BTF. Outside CI a
// missing prerequisite SKIPs with a warning; with CI=true it FAILS, so a green
// CI run means these really ran.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <bpf/btf.h>

#include "agent/probes/dsock_probe.h"
#include "agent/probes/exec_probe.h"
#include "agent/probes/probe_util.h"

using namespace dockquota;

namespace {

bool prerequisites() {
  const bool ci = std::getenv("CI") && std::string(std::getenv("CI")) == "true";
  std::string why;
  if (geteuid() != 0)
    why = "not root";
  else if (access("/sys/kernel/btf/vmlinux", R_OK) != 0)
    why = "no /sys/kernel/btf/vmlinux";
  if (why.empty()) return true;
  if (ci) FAIL("real-kernel test cannot run in CI: " << why);
  WARN("SKIPPED: " << why);
  return false;
}

struct Captured {
  uint32_t type, tgid, uid, gid, loginuid, fd;
  uint64_t conn_id, len;
  std::string data;
  uint32_t turn = 0, flags = 0;
  uint64_t ino = 0;
};

// A unix listener in a temp dir that echoes what it reads, standing in for dockerd.
struct EchoServer {
  std::string dir, path;
  int lfd = -1;
  std::thread thr;
  bool close_after_first = false;  // answer one read, then close (Go's reply to a malformed request)
  explicit EchoServer(const std::string& name = "docker.sock", bool once = false) : close_after_first(once) {
    char tmpl[] = "/tmp/dq-bpftest-XXXXXX";
    dir = mkdtemp(tmpl);
    chmod(dir.c_str(), 0755);
    path = dir + "/" + name;
    listenAt();
  }
  void listenAt() {
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, path.c_str());
    REQUIRE(bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    chmod(path.c_str(), 0777);
    REQUIRE(listen(lfd, 16) == 0);
    thr = std::thread([fd = lfd, once = close_after_first] {
      for (;;) {
        int c = accept(fd, nullptr, nullptr);
        if (c < 0) return;
        std::thread([c, once] {
          char buf[65536];
          for (ssize_t n; (n = read(c, buf, sizeof buf)) > 0;) {
            if (write(c, buf, n) != n || once) break;
          }
          close(c);
        }).detach();
      }
    });
  }
  void stop() {
    if (lfd >= 0) {
      shutdown(lfd, SHUT_RDWR);
      close(lfd);
      lfd = -1;
    }
    if (thr.joinable()) thr.join();
    unlink(path.c_str());
  }
  ~EchoServer() {
    stop();
    rmdir(dir.c_str());
  }
};

int connectTo(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, path.c_str());
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  return fd;
}

std::string readN(int fd, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, out.data() + got, n - got);
    if (r <= 0) break;
    got += r;
  }
  out.resize(got);
  return out;
}

// Every dsock test runs once per hook set: "tracepoint" everywhere, "fentry"
// where the kernel allows it, "socket" where the kernel has the sock_*_length
// tracepoints (6.3+). DQ_REQUIRE_FENTRY=1 (set for the QEMU kernels, which
// have no lockdown) makes an unavailable fentry set a failure; a kernel whose
// BTF has the socket tracepoints must load the socket set.
std::string hookUnderTest() { return GENERATE(as<std::string>{}, "tracepoint", "fentry", "socket"); }

bool kernelHasSocketTracepoints() {
  btf* vmlinux = btf__load_vmlinux_btf();
  if (!vmlinux) return false;
  bool has = btf__find_by_name_kind(vmlinux, "btf_trace_sock_send_length", BTF_KIND_TYPEDEF) > 0 &&
             btf__find_by_name_kind(vmlinux, "btf_trace_sock_recv_length", BTF_KIND_TYPEDEF) > 0;
  btf__free(vmlinux);
  return has;
}

struct Harness {
  std::vector<Captured> events;
  std::unique_ptr<DsockProbe> probe;
  bool ok = false;
  Harness(const std::vector<std::string>& paths, const std::string& hook, uint32_t ringbuf_bytes = 2u << 20) {
    (void)ensureTracefs();  // best effort: a tracepoint hook it was needed for fails in open(), naming it
    DsockProbe::Options o;
    o.socket_paths = paths;
    o.ignore_self = false;  // this process is the client under test
    o.hook = hook;
    o.ringbuf_bytes = ringbuf_bytes;
    auto p = DsockProbe::open(o, [this](const DsockEventView& v) {
      const dsock_event& e = *v.raw;
      events.push_back({e.type, e.tgid, e.uid, e.gid, e.loginuid, e.fd, e.conn_id, e.len, std::string(v.data()), e.turn,
                        e.flags, e.ino});
    });
    if (!p) {
      const char* req = std::getenv("DQ_REQUIRE_FENTRY");
      if (hook == "fentry" && !(req && std::string(req) == "1")) {
        WARN("fentry hooks not available on this kernel (" << p.error().message << "); set not tested");
        return;
      }
      if (hook == "socket" && !kernelHasSocketTracepoints()) {
        WARN("no sock_send_length/sock_recv_length tracepoints on this kernel (6.3+); set not tested");
        return;
      }
      FAIL(p.error().message);
    }
    probe = std::move(*p);
    ok = true;
  }
  // Drains until `pred` holds or 2 s pass. Events are written without a
  // wake-up (BPF_RB_NO_WAKEUP), so drain on a timer as the agent does.
  template <typename P>
  bool waitFor(P pred) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < until) {
      REQUIRE(probe->poll(20).ok());
      REQUIRE(probe->consume().ok());
      if (pred()) return true;
    }
    return false;
  }
  std::vector<Captured> of(uint32_t tgid, uint32_t type) const {
    std::vector<Captured> out;
    for (const auto& e : events) {
      if (e.tgid == tgid && e.type == type) out.push_back(e);
    }
    return out;
  }
  std::string joined(uint32_t tgid, uint32_t type) const {
    std::string s;
    for (const auto& e : of(tgid, type)) s += e.data;
    return s;
  }
};

}  // namespace

TEST_CASE("dsock probe captures write/read, send/recv, writev/readv, sendmsg/recvmsg", "[bpf]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();

  int fd = connectTo(srv.path);
  // The syscall sets see the connect; the socket set, the first send.
  const std::string a = "GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\n\r\n";
  REQUIRE(write(fd, a.data(), a.size()) == static_cast<ssize_t>(a.size()));
  REQUIRE(readN(fd, a.size()) == a);
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_CONNECT).empty(); }));
  auto c = h.of(me, DSOCK_EV_CONNECT).front();
  CHECK(c.fd == static_cast<uint32_t>(fd));
  CHECK(c.uid == getuid());
  CHECK(c.conn_id != 0);
  CHECK(h.events.front().type == DSOCK_EV_CONNECT);  // before the bytes it tracks
  const std::string b = "send-recv";
  REQUIRE(send(fd, b.data(), b.size(), 0) == static_cast<ssize_t>(b.size()));
  std::string rb(b.size(), '\0');
  REQUIRE(recv(fd, rb.data(), rb.size(), MSG_WAITALL) == static_cast<ssize_t>(b.size()));
  std::string p1 = "iov-one|", p2 = "iov-two";
  iovec iov[2] = {{p1.data(), p1.size()}, {p2.data(), p2.size()}};
  REQUIRE(writev(fd, iov, 2) == static_cast<ssize_t>(p1.size() + p2.size()));
  REQUIRE(readN(fd, p1.size() + p2.size()) == p1 + p2);
  std::string m = "sendmsg-body";
  iovec miov{m.data(), m.size()};
  msghdr msg{};
  msg.msg_iov = &miov;
  msg.msg_iovlen = 1;
  REQUIRE(sendmsg(fd, &msg, 0) == static_cast<ssize_t>(m.size()));
  std::string rm(m.size(), '\0');
  iovec riov{rm.data(), rm.size()};
  msghdr rmsg{};
  rmsg.msg_iov = &riov;
  rmsg.msg_iovlen = 1;
  REQUIRE(recvmsg(fd, &rmsg, MSG_WAITALL) == static_cast<ssize_t>(m.size()));
  close(fd);

  const std::string all = a + b + p1 + p2 + m;
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_CLOSE).empty(); }));
  CHECK(h.joined(me, DSOCK_EV_TX) == all);
  CHECK(h.joined(me, DSOCK_EV_RX) == all);
  for (const auto& e : h.of(me, DSOCK_EV_TX)) CHECK(e.conn_id == c.conn_id);
  CHECK(h.of(me, DSOCK_EV_CLOSE).front().conn_id == c.conn_id);
}

TEST_CASE("dsock probe copies a bounded prefix and reports the true length", "[bpf]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();
  int fd = connectTo(srv.path);
  std::string big(10000, 'x');
  for (size_t i = 0; i < big.size(); i++) big[i] = static_cast<char>('a' + i % 26);
  REQUIRE(write(fd, big.data(), big.size()) == static_cast<ssize_t>(big.size()));
  readN(fd, big.size());
  close(fd);
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_CLOSE).empty(); }));
  auto tx = h.of(me, DSOCK_EV_TX);
  REQUIRE(tx.size() == 1);
  CHECK(tx[0].len == 10000);
  CHECK(tx[0].data == big.substr(0, DSOCK_CAP_BYTES));
  CHECK(h.probe->counters()[DSOCK_CTR_TRUNCATED] >= 1);
}

TEST_CASE("dsock probe ignores other sockets and other processes' files", "[bpf]") {
  if (!prerequisites()) return;
  EchoServer watched, other("other.sock");
  const std::string hook = hookUnderTest();
  Harness h({watched.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();
  int fd = connectTo(other.path);
  REQUIRE(write(fd, "hello", 5) == 5);
  readN(fd, 5);
  close(fd);
  // A plain file write by a process with no tracked connection.
  int f = open((watched.dir + "/file").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  REQUIRE(write(f, "data", 4) == 4);
  close(f);
  unlink((watched.dir + "/file").c_str());
  h.waitFor([] { return false; });  // drain for 2 s
  CHECK(h.of(me, DSOCK_EV_CONNECT).empty());
  CHECK(h.of(me, DSOCK_EV_TX).empty());
}

TEST_CASE("dsock probe matches a re-created socket by its bound path before the inode refresh", "[bpf]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();
  srv.stop();  // dockerd restarts: the socket file is unlinked and bound again (new inode)
  srv.listenAt();
  int fd = connectTo(srv.path);
  REQUIRE(write(fd, "ping", 4) == 4);
  readN(fd, 4);
  close(fd);
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_CLOSE).empty(); }));
  CHECK(h.joined(me, DSOCK_EV_TX) == "ping");
}

TEST_CASE("dsock probe reports the uid and login uid of another user's process", "[bpf]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  pid_t child = fork();
  if (child == 0) {
    // Set a login uid as pam_loginuid does, then drop to uid 2001.
    int lf = open("/proc/self/loginuid", O_WRONLY);
    bool ok = lf >= 0 && write(lf, "2002", 4) == 4;
    if (lf >= 0) close(lf);
    if (!ok || setgid(2001) != 0 || setuid(2001) != 0) _exit(3);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, srv.path.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) _exit(4);
    if (write(fd, "hi", 2) != 2) _exit(5);
    char b[2];
    if (read(fd, b, 2) != 2) _exit(6);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  const uint32_t c = static_cast<uint32_t>(child);
  REQUIRE(h.waitFor([&] { return !h.of(c, DSOCK_EV_EXIT).empty(); }));
  auto conn = h.of(c, DSOCK_EV_CONNECT);
  REQUIRE(conn.size() == 1);
  CHECK(conn[0].uid == 2001);
  CHECK(conn[0].gid == 2001);
  CHECK(conn[0].loginuid == 2002);
  CHECK(h.joined(c, DSOCK_EV_TX) == "hi");
  CHECK(h.joined(c, DSOCK_EV_RX) == "hi");
}

// The socket set has no connect or close hook: it starts tracking at a
// connection's first send or receive and ends it when either side sees the
// other gone. What that buys and what it must still get right:
TEST_CASE("dsock socket set: connections from before the probe, inherited fds, server-side close, peeks", "[bpf]") {
  if (!prerequisites()) return;
  if (!kernelHasSocketTracepoints()) {
    WARN("no sock_send_length/sock_recv_length tracepoints on this kernel (6.3+); socket set not tested");
    return;
  }
  EchoServer srv;
  const uint32_t me = getpid();
  const int early = connectTo(srv.path);  // before the probe loaded
  Harness h({srv.path}, "socket");
  REQUIRE(h.ok);

  // 1. The connection made before the probe is tracked from its next request.
  REQUIRE(write(early, "early-req", 9) == 9);
  REQUIRE(readN(early, 9) == "early-req");
  REQUIRE(h.waitFor([&] { return h.joined(me, DSOCK_EV_RX) == "early-req"; }));
  auto conns = h.of(me, DSOCK_EV_CONNECT);
  REQUIRE(conns.size() == 1);
  CHECK(conns[0].fd == static_cast<uint32_t>(early));
  CHECK(h.joined(me, DSOCK_EV_TX) == "early-req");

  // 2. MSG_PEEK reads the same bytes twice: captured once.
  REQUIRE(write(early, "peek", 4) == 4);
  char pk[4];
  REQUIRE(recv(early, pk, 4, MSG_PEEK | MSG_WAITALL) == 4);
  REQUIRE(readN(early, 4) == "peek");
  REQUIRE(h.waitFor([&] { return h.joined(me, DSOCK_EV_RX) == "early-reqpeek"; }));

  // 3. A call the set cannot read (sendmmsg) is counted, not misread.
  {
    std::string m = "mmsg";
    iovec iov{m.data(), m.size()};
    mmsghdr mm{};
    mm.msg_hdr.msg_iov = &iov;
    mm.msg_hdr.msg_iovlen = 1;
    REQUIRE(sendmmsg(early, &mm, 1, 0) == 1);
    REQUIRE(readN(early, 4) == "mmsg");
    REQUIRE(h.waitFor([&] { return h.probe->counters()[DSOCK_CTR_UNSUPPORTED_CALL] >= 1; }));
    CHECK(h.joined(me, DSOCK_EV_TX) == "early-reqpeek");
  }

  // 4. The client closes: the server's EOF ends the connection.
  close(early);
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_CLOSE).empty(); }));
  CHECK(h.of(me, DSOCK_EV_CLOSE).front().conn_id == conns[0].conn_id);
  CHECK(h.of(me, DSOCK_EV_CLOSE).front().fd == static_cast<uint32_t>(early));

  // 5. A child that inherits a connected fd is seen as itself (its uid).
  const int shared = connectTo(srv.path);
  pid_t child = fork();
  if (child == 0) {
    if (setgid(2001) != 0 || setuid(2001) != 0) _exit(3);
    if (write(shared, "child", 5) != 5) _exit(4);
    char b[5];
    _exit(read(shared, b, 5) == 5 ? 0 : 5);
  }
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  const uint32_t c = static_cast<uint32_t>(child);
  REQUIRE(h.waitFor([&] { return h.joined(c, DSOCK_EV_RX) == "child"; }));
  auto cc = h.of(c, DSOCK_EV_CONNECT);
  REQUIRE(cc.size() == 1);
  CHECK(cc[0].uid == 2001);
  CHECK(h.joined(c, DSOCK_EV_TX) == "child");
  close(shared);
}

TEST_CASE("dsock socket set: the client reading EOF ends the connection", "[bpf]") {
  if (!prerequisites()) return;
  if (!kernelHasSocketTracepoints()) {
    WARN("no sock_send_length/sock_recv_length tracepoints on this kernel (6.3+); socket set not tested");
    return;
  }
  // A server that answers once and closes (HTTP/1.0-style).
  char tmpl[] = "/tmp/dq-bpftest-XXXXXX";
  const std::string dir = mkdtemp(tmpl), path = dir + "/docker.sock";
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, path.c_str());
  REQUIRE(bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(listen(lfd, 4) == 0);
  std::thread srv([lfd] {
    int c = accept(lfd, nullptr, nullptr);
    char b[64];
    if (c < 0) return;
    if (read(c, b, sizeof b) > 0 && write(c, "bye", 3) == 3) {}
    close(c);
  });
  Harness h({path}, "socket");
  REQUIRE(h.ok);
  const uint32_t me = getpid();
  int fd = connectTo(path);
  REQUIRE(write(fd, "hello", 5) == 5);
  std::string got = readN(fd, 16);  // "bye", then EOF
  CHECK(got == "bye");
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_CLOSE).empty(); }));
  CHECK(h.joined(me, DSOCK_EV_RX) == "bye");
  srv.join();
  close(fd);
  close(lfd);
  unlink(path.c_str());
  rmdir(dir.c_str());
}

TEST_CASE("exec probe reports executions of watched binaries only", "[bpf]") {
  if (!prerequisites()) return;
  (void)ensureTracefs();  // best effort: a tracepoint hook it was needed for fails in open(), naming it
  std::vector<ExecRecord> seen;
  auto p = ExecProbe::open({"/bin/true"}, [&](const ExecRecord& r) { seen.push_back(r); });
  if (!p) FAIL(p.error().message);
  auto run = [](const char* path, const char* arg) {
    pid_t c = fork();
    if (c == 0) {
      execl(path, path, arg, static_cast<char*>(nullptr));
      _exit(127);
    }
    int st;
    waitpid(c, &st, 0);
    return c;
  };
  pid_t watched = run("/bin/true", "--marker-arg");
  pid_t other = run("/bin/false", "--other");
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < until && seen.empty()) {
    REQUIRE((*p)->consume().ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE((*p)->consume().ok());
  REQUIRE(seen.size() >= 1);
  bool found = false;
  for (const auto& r : seen) {
    CHECK(r.tgid != static_cast<uint32_t>(other));
    if (r.tgid == static_cast<uint32_t>(watched)) {
      found = true;
      CHECK(r.path == "/bin/true");
      CHECK(r.ppid == static_cast<uint32_t>(getpid()));
      CHECK(r.uid == getuid());
      REQUIRE(r.argv.size() == 2);
      CHECK(r.argv[1] == "--marker-arg");
    }
  }
  CHECK(found);
}

TEST_CASE("dsock probe ignores the agent's own connections", "[bpf]") {
  if (!prerequisites()) return;
  EchoServer srv;
  std::vector<uint32_t> types;
  (void)ensureTracefs();  // best effort: a tracepoint hook it was needed for fails in open(), naming it
  DsockProbe::Options o;
  o.socket_paths = {srv.path};  // ignore_self defaults to true
  auto p = DsockProbe::open(o, [&](const DsockEventView& v) {
    if (v.raw->tgid == static_cast<uint32_t>(getpid())) types.push_back(v.raw->type);
  });
  if (!p) FAIL(p.error().message);
  int fd = connectTo(srv.path);
  REQUIRE(write(fd, "x", 1) == 1);
  readN(fd, 1);
  close(fd);
  auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (std::chrono::steady_clock::now() < until) REQUIRE((*p)->poll(20).ok());
  CHECK(types.empty());
}

// A client that closes without the probe seeing an end
// (dockerd closed first; the client never read EOF) and connects again gets
// the same fd and often the same struct sock back. Every connection must
// still be a new one, with its own id and its socket's inode.
TEST_CASE("dsock probe: a new socket on a reused fd and address is a new connection", "[bpf][identity]") {
  if (!prerequisites()) return;
  EchoServer srv("docker.sock", /*once=*/true);
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();
  std::vector<int> fds;
  for (int i = 0; i < 8; i++) {
    int fd = connectTo(srv.path);
    fds.push_back(fd);
    const std::string req = "BAD " + std::to_string(i) + "\r\n\r\n";
    REQUIRE(write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size()));
    REQUIRE(readN(fd, req.size()) == req);  // the reply; EOF never read
    // Let the server's close land before ours, as with Go's error reply.
    usleep(20000);
    close(fd);
  }
  REQUIRE(h.waitFor([&] { return h.of(me, DSOCK_EV_TX).size() >= 8; }));
  auto tx = h.of(me, DSOCK_EV_TX);
  REQUIRE(tx.size() == 8);
  std::set<uint64_t> ids, inos;
  for (size_t i = 0; i < tx.size(); i++) {
    CHECK(tx[i].data == "BAD " + std::to_string(i) + "\r\n\r\n");
    CHECK(tx[i].fd == static_cast<uint32_t>(fds[i]));
    ids.insert(tx[i].conn_id);
    inos.insert(tx[i].ino);
  }
  // The case under test happened: fds were reused (the echo server's
  // threads share this process's fd table, so the first may differ).
  CHECK(std::set<int>(fds.begin(), fds.end()).size() < 8);
  CHECK(ids.size() == 8);
  CHECK(inos.size() == 8);
  CHECK(h.of(me, DSOCK_EV_CONNECT).size() == 8);
  // The socket set has no close hook: it met the old connection's entry on
  // the reused fd and ended it by its inode.
  if (hook == "socket") CHECK(h.probe->counters()[DSOCK_CTR_SOCK_REUSED] >= 1);
  // Each reply is reported on its own connection.
  for (const auto& rx : h.of(me, DSOCK_EV_RX)) {
    auto t = std::find_if(tx.begin(), tx.end(), [&](const Captured& c) { return c.data == rx.data; });
    REQUIRE(t != tx.end());
    CHECK(t->conn_id == rx.conn_id);
  }
}

// Credentials are read at every call, not fixed at connect.
TEST_CASE("dsock probe: every call carries the credentials of its caller, also after setuid", "[bpf][identity]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  pid_t child = fork();
  if (child == 0) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, srv.path.c_str());
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) _exit(4);
    char b[8];
    if (write(fd, "root", 4) != 4 || read(fd, b, 4) != 4) _exit(5);
    if (setgid(2002) != 0 || setuid(2002) != 0) _exit(3);
    if (write(fd, "bob!", 4) != 4 || read(fd, b, 4) != 4) _exit(6);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  const uint32_t c = static_cast<uint32_t>(child);
  REQUIRE(h.waitFor([&] { return h.of(c, DSOCK_EV_TX).size() >= 2; }));
  auto tx = h.of(c, DSOCK_EV_TX);
  REQUIRE(tx.size() == 2);
  CHECK(tx[0].data == "root");
  CHECK(tx[0].uid == 0);
  CHECK(tx[1].data == "bob!");
  CHECK(tx[1].uid == 2002);
  CHECK(tx[1].gid == 2002);
  CHECK(tx[0].conn_id == tx[1].conn_id);
}

// The agent's mutes name the turn (exchange) they are for;
// a mute that arrives after the client moved on is ignored; the kernel's
// own fields are never overwritten by the agent.
TEST_CASE("dsock probe: mutes apply to their turn only, and ignore stops a connection", "[bpf][mute]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();
  int fd = connectTo(srv.path);
  auto say = [&](const std::string& s) { REQUIRE(write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size())); };
  auto hear = [&](size_t n) { return readN(fd, n); };
  say("A");
  CHECK(hear(1) == "A");
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_RX).empty(); }));
  const uint64_t id = h.of(me, DSOCK_EV_TX).front().conn_id;
  dsock_ctl ctl{};
  ctl.mute_rx_turn = 1;  // decided for turn 1, arriving late
  h.probe->control(id, ctl);
  say("B");               // turn 2
  CHECK(hear(1) == "B");  // not muted: the mute was for turn 1
  say("CC");              // turn 3
  CHECK(hear(1) == "C");
  ctl.mute_rx_turn = 3;
  h.probe->control(id, ctl);
  CHECK(hear(1) == "C");  // muted: length only
  say("E");               // turn 4: its reply is copied again
  ctl.mute_tx_turn = 4;
  h.probe->control(id, ctl);
  say("F");  // muted: same turn
  CHECK(hear(1) == "E");
  CHECK(hear(1) == "F");
  say("G");  // turn 5
  CHECK(hear(1) == "G");
  REQUIRE(h.waitFor([&] { return h.of(me, DSOCK_EV_RX).size() >= 7; }));
  auto rx = h.of(me, DSOCK_EV_RX);
  auto tx = h.of(me, DSOCK_EV_TX);
  std::vector<std::pair<std::string, uint32_t>> rxs, txs;
  for (const auto& e : rx) rxs.emplace_back(e.data + "/" + std::to_string(e.len), e.turn);
  for (const auto& e : tx) txs.emplace_back(e.data + "/" + std::to_string(e.len), e.turn);
  using V = std::vector<std::pair<std::string, uint32_t>>;
  CHECK(txs == V{{"A/1", 1}, {"B/1", 2}, {"CC/2", 3}, {"E/1", 4}, {"/1", 4}, {"G/1", 5}});
  CHECK(rxs == V{{"A/1", 1}, {"B/1", 2}, {"C/1", 3}, {"/1", 3}, {"E/1", 4}, {"F/1", 4}, {"G/1", 5}});
  // ignore: nothing more is sent for this connection.
  ctl = dsock_ctl{};
  ctl.ignore = 1;
  h.probe->control(id, ctl);
  const size_t before = h.events.size();
  say("H");
  CHECK(hear(1) == "H");
  close(fd);
  h.waitFor([] { return false; });
  size_t mine = 0;
  for (size_t i = before; i < h.events.size(); i++)
    if (h.events[i].conn_id == id && h.events[i].type != DSOCK_EV_CLOSE) mine++;
  CHECK(mine == 0);
  CHECK(h.probe->counters()[DSOCK_CTR_IGNORED] >= 2);
}

// Calls lost to a full ring are reported on the connection's next event, so
// the agent knows its stream has a hole it cannot frame.
TEST_CASE("dsock probe: events lost to a full ring are flagged on the next event", "[bpf][loss]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook, /*ringbuf_bytes=*/16384);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();
  int fd = connectTo(srv.path);
  const std::string chunk(3000, 'z');
  for (int i = 0; i < 12; i++) {  // ~36 KiB of events into a 16 KiB ring, not drained
    REQUIRE(write(fd, chunk.data(), chunk.size()) == static_cast<ssize_t>(chunk.size()));
    readN(fd, chunk.size());
  }
  CHECK(h.probe->counters()[DSOCK_CTR_RINGBUF_FULL] > 0);
  REQUIRE(h.probe->consume().ok());
  REQUIRE(write(fd, "after", 5) == 5);
  CHECK(readN(fd, 5) == "after");
  REQUIRE(h.waitFor([&] { return h.joined(me, DSOCK_EV_RX).find("after") != std::string::npos; }));
  uint32_t flags = 0;
  for (const auto& e : h.events) {
    if (e.data == "after") flags |= e.flags;
  }
  CHECK((flags & DSOCK_F_LOST_TX) != 0);
  CHECK((flags & DSOCK_F_LOST_RX) != 0);
  close(fd);
}

// A write that starts like a request and is longer than one copy (a padded
// head, a create pipelined behind a long body) is copied whole, in pieces,
// so nothing a request line could hide in is left uncopied.
TEST_CASE("dsock probe: a long write that starts a request is copied whole, in pieces", "[bpf][pieces]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  const uint32_t me = getpid();
  int fd = connectTo(srv.path);
  std::string padded = "GET /_ping HTTP/1.1\r\nX-Pad: " + std::string(5000, 'p') + "\r\n\r\n";
  padded += "POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
  REQUIRE(write(fd, padded.data(), padded.size()) == static_cast<ssize_t>(padded.size()));
  CHECK(readN(fd, padded.size()) == padded);
  // Past DSOCK_MAX_PIECES copies: the rest is reported by length.
  std::string huge = "POST /build HTTP/1.1\r\n" + std::string(DSOCK_MAX_PIECES * DSOCK_CAP_BYTES + 5000, 'x');
  REQUIRE(write(fd, huge.data(), huge.size()) == static_cast<ssize_t>(huge.size()));
  CHECK(readN(fd, huge.size()).size() == huge.size());
  close(fd);
  REQUIRE(h.waitFor([&] { return !h.of(me, DSOCK_EV_CLOSE).empty(); }));
  auto tx = h.of(me, DSOCK_EV_TX);
  REQUIRE(tx.size() == 2 + DSOCK_MAX_PIECES);
  std::string first;
  uint64_t first_len = 0;
  for (size_t i = 0; i < 2; i++) first += tx[i].data, first_len += tx[i].len;
  CHECK(first == padded);
  CHECK(first_len == padded.size());
  uint64_t len = 0;
  std::string copied;
  for (size_t i = 2; i < tx.size(); i++) len += tx[i].len, copied += tx[i].data;
  CHECK(len == huge.size());
  CHECK(copied == huge.substr(0, DSOCK_MAX_PIECES * DSOCK_CAP_BYTES));
  CHECK(tx.back().len == huge.size() - (DSOCK_MAX_PIECES - 1) * DSOCK_CAP_BYTES);
  // The echo (rx) is not split: one copy per read.
  for (const auto& e : h.of(me, DSOCK_EV_RX)) CHECK(e.data.size() <= DSOCK_CAP_BYTES);
}

// A child that inherits a connected fd (multiprocessing after the Docker
// client was made, a shell's subprocess) is followed from its first call, on
// every hook set: the socket set by its socket, the syscall sets by the tgid
// bit the fork passes on.
TEST_CASE("dsock probe: a forked child's calls on an inherited connection are seen", "[bpf][identity]") {
  if (!prerequisites()) return;
  EchoServer srv;
  const std::string hook = hookUnderTest();
  Harness h({srv.path}, hook);
  if (!h.ok) return;
  INFO("hook set: " << hook);
  int fd = connectTo(srv.path);
  REQUIRE(write(fd, "parent", 6) == 6);
  REQUIRE(readN(fd, 6) == "parent");
  pid_t child = fork();
  if (child == 0) {
    char b[6];
    if (write(fd, "child!", 6) != 6 || read(fd, b, 6) != 6) _exit(5);
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  close(fd);
  const uint32_t c = static_cast<uint32_t>(child);
  REQUIRE(h.waitFor([&] { return h.joined(c, DSOCK_EV_RX) == "child!"; }));
  CHECK(h.joined(c, DSOCK_EV_TX) == "child!");
  CHECK(h.of(c, DSOCK_EV_CONNECT).size() == 1);
  CHECK(h.joined(getpid(), DSOCK_EV_TX) == "parent");
}
