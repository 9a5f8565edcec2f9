// SPDX-License-Identifier: Apache-2.0
// dockquota-bench: what the agent costs everyone else, and how fast it attributes.
//
// Runs each workload without and with a real dockquotad (alternating, several
// rounds, medians) in one process, so the ratios are comparable on a noisy
// machine:
//   null syscall          getppid() loop                       target <= +30 ns
//   file write            4 KiB write() loop to a file         target <= 3 %
//                         (both in the thread's CPU time: the machine may be busy)
//   docker.sock RTT       GET /_ping keep-alive round trips    target <= 10 %
//   attribution latency   Docker's create reply -> listed in /api/v1/containers (p50/p99, target p99 <= 50 ms)
//
//   other unix socket     64-byte ping-pong on a unix socket that is not Docker's (CPU per round trip)
//
// usage: dockquota-bench --agent PATH [--agent PATH2 ...] --docker-sock SOCK [--rounds N] [--creates N]
//                        [--hook H[,H...]]
// (H: auto, socket, fentry, tracepoint; several sets, and several agent builds (say the last release
// and this tree), are measured side by side in one run: one column per agent and set)
// (tests/bench/run.sh starts a throwaway dockerd and calls this.)
//
// dockquota-bench --growth [--rounds N] measures the growth probe alone (no
// agent, no dockerd): a 4 KiB write() loop to a file on a private overlayfs
// and to a tmpfs file, and a null syscall, without the probe and with each
// hook set the kernel allows, the writer's cgroup watched and not.
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <bpf/bpf.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "agent/probes/growth_probe.h"

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
const char* kKey = "bench-key";

double nowNs() { return std::chrono::duration<double, std::nano>(Clock::now().time_since_epoch()).count(); }

// CPU time of this thread: the syscall loops below count what their own
// calls cost (a BPF program runs in the caller's syscall and is charged to
// it), not the time other processes on a busy 2-core machine held the CPU.
double threadCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double processCpuNs() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * v.size()));
  return v[i];
}

// ---- the agent under test -------------------------------------------------
struct Agent {
  std::string bin, config, dir;
  int port = 0;
  pid_t pid = -1;

  void start() {
    pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive the bench
      int log = open((dir + "/agent.log").c_str(), O_CREAT | O_APPEND | O_WRONLY | O_CLOEXEC, 0600);
      dup2(log, 2);
      execl(bin.c_str(), bin.c_str(), "--config", config.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    httplib::Client cli("127.0.0.1", port);
    for (int i = 0; i < 600; i++) {
      auto r = cli.Get("/healthz");
      if (r && r->status == 200 && json::parse(r->body, nullptr, false).value("/docker/reconciled"_json_pointer, false))
        return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    fprintf(stderr, "bench: agent did not become ready\n");
    exit(1);
  }
  // The docker.sock probe's hook set in use, from /healthz.
  std::string hook() {
    httplib::Client cli("127.0.0.1", port);
    auto r = cli.Get("/healthz");
    if (!r || r->status != 200) return "?";
    return json::parse(r->body, nullptr, false).value("/probes/docker_sock/hook"_json_pointer, std::string("?"));
  }
  void stop() {
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

// A free loopback port: bind to 0, read it back, close. (An httplib::Server
// that binds but never listens keeps its socket, and with SO_REUSEPORT the
// kernel would then split connections between it and the agent.)
int freePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    perror("bench: free port");
    exit(1);
  }
  close(fd);
  return ntohs(sa.sin_port);
}

// ---- workloads ----------------------------------------------------------------
double nullSyscallNs() {
  const int n = 2'000'000;
  double t0 = threadCpuNs();
  for (int i = 0; i < n; i++) getppid();
  return (threadCpuNs() - t0) / n;
}

double fileWriteNs(const std::string& path) {
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  char buf[4096];
  memset(buf, 'x', sizeof buf);
  const int n = 100'000;
  double t0 = threadCpuNs();
  for (int i = 0; i < n; i++) {
    if ((i & 255) == 0) lseek(fd, 0, SEEK_SET);  // stay within 1 MiB of page cache
    if (write(fd, buf, sizeof buf) != sizeof buf) abort();
  }
  double dt = (threadCpuNs() - t0) / n;
  close(fd);
  unlink(path.c_str());
  return dt;
}

int connectUnix(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    perror("bench: connect docker socket");
    exit(1);
  }
  return fd;
}

// Reads one HTTP response with Content-Length; returns the body.
std::string readResponse(int fd) {
  std::string buf;
  char tmp[8192];
  size_t head_end = std::string::npos, want = 0;
  for (;;) {
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n <= 0) return "";
    buf.append(tmp, n);
    if (head_end == std::string::npos) {
      head_end = buf.find("\r\n\r\n");
      if (head_end == std::string::npos) continue;
      auto cl = buf.find("Content-Length: ");
      want = cl == std::string::npos ? 0 : strtoul(buf.c_str() + cl + 16, nullptr, 10);
    }
    if (buf.size() >= head_end + 4 + want) return buf.substr(head_end + 4, want);
  }
}

// Round trips of GET /_ping on one keep-alive connection: wall time per
// round trip, and this thread's CPU time per round trip (the client's write
// and reads, where the probe's capture runs) in *cpu_ns.
double dockerRttNs(const std::string& sock, double* cpu_ns) {
  int fd = connectUnix(sock);
  const std::string req = "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n";
  const int n = 2000;
  for (int i = 0; i < 50; i++) {  // warm up
    if (write(fd, req.data(), req.size()) < 0) abort();
    readResponse(fd);
  }
  double t0 = nowNs(), c0 = threadCpuNs();
  for (int i = 0; i < n; i++) {
    if (write(fd, req.data(), req.size()) < 0) abort();
    readResponse(fd);
  }
  double dt = (nowNs() - t0) / n;
  *cpu_ns = (threadCpuNs() - c0) / n;
  close(fd);
  return dt;
}

// A unix socket that is not Docker's, answering each read with the same
// bytes: what the docker.sock probe costs the host's other unix traffic
// (journald, D-Bus, X, databases).
struct EchoListener {
  int lfd;
  std::thread thr;
  explicit EchoListener(const std::string& path) {
    lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    if (bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || listen(lfd, 4) != 0) {
      perror("bench: echo listener");
      exit(1);
    }
    thr = std::thread([this] {
      for (int c; (c = accept(lfd, nullptr, nullptr)) >= 0;) {
        char b[256];
        for (ssize_t n; (n = read(c, b, sizeof b)) > 0;) {
          if (write(c, b, n) != n) break;
        }
        close(c);
      }
    });
  }
  ~EchoListener() {
    shutdown(lfd, SHUT_RDWR);
    close(lfd);
    thr.join();
  }
};

// CPU time of this process (both ends: the listener is a thread of it) per
// 64-byte round trip: four socket calls, each of which runs the socket set.
double unixEchoCpuNs(const std::string& path) {
  int fd = connectUnix(path);
  char b[64] = {};
  const int n = 20000;
  double t0 = processCpuNs();
  for (int i = 0; i < n; i++) {
    if (write(fd, b, sizeof b) != sizeof b || read(fd, b, sizeof b) != sizeof b) abort();
  }
  double dt = (processCpuNs() - t0) / n;
  close(fd);
  return dt;
}

// Creates containers over a raw connection (a client the agent sees like any
// other) and times Docker's reply -> the id listed by the agent.
std::vector<double> attributionLatencyMs(const std::string& sock, const Agent& agent, int creates,
                                         std::vector<std::string>* ids) {
  httplib::Client api("127.0.0.1", agent.port);
  api.set_basic_auth("api", kKey);
  std::vector<double> out;
  for (int i = 0; i < creates; i++) {
    int fd = connectUnix(sock);
    const std::string body = R"({"Image":"bench:1","Cmd":["true"],"HostConfig":{"NetworkMode":"none"}})";
    std::string req =
        "POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    if (write(fd, req.data(), req.size()) < 0) abort();
    std::string resp = readResponse(fd);
    double replied = nowNs();
    close(fd);
    std::string id = json::parse(resp, nullptr, false).value("Id", "");
    if (id.empty()) {
      fprintf(stderr, "bench: create failed: %s\n", resp.c_str());
      exit(1);
    }
    ids->push_back(id);
    for (;;) {
      auto r = api.Get("/api/v1/containers");
      bool found = false;
      if (r && r->status == 200) {
        // Keep the parsed document alive: a range-for over a member of a
        // temporary would read freed memory (C++20 does not extend it).
        const json listing = json::parse(r->body);
        for (const auto& c : listing["containers"]) {
          if (c["id"] == id && !c["uid"].is_null()) found = true;
        }
      }
      if (found) break;
      if (nowNs() - replied > 5e9) {
        fprintf(stderr, "bench: %s not attributed after 5 s; agent log in %s/agent.log\n", id.c_str(),
                agent.dir.c_str());
        exit(1);
      }
    }
    out.push_back((nowNs() - replied) / 1e6);
  }
  return out;
}

void removeContainers(const std::string& sock, const std::vector<std::string>& ids) {
  for (const auto& id : ids) {
    int fd = connectUnix(sock);
    std::string req = "DELETE /v1.41/containers/" + id + " HTTP/1.1\r\nHost: docker\r\n\r\n";
    if (write(fd, req.data(), req.size()) < 0) abort();
    char tmp[4096];
    if (read(fd, tmp, sizeof tmp) < 0) {}
    close(fd);
  }
}

}  // namespace

// ---- growth probe alone ------------------------------------------------------
void moveTo(const std::string& cgroup_dir) {
  std::string pid = std::to_string(getpid());
  int fd = open((cgroup_dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, pid.data(), pid.size()) != static_cast<ssize_t>(pid.size())) {
    perror(("bench: join cgroup " + cgroup_dir).c_str());
    exit(1);
  }
  close(fd);
}

int growthBench(int rounds) {
  using dockquota::GrowthProbe;
  char tmpl[] = "/tmp/dq-growth-bench-XXXXXX";
  const std::string dir = mkdtemp(tmpl), merged = dir + "/merged";
  if (mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=64m") != 0) return perror("bench: tmpfs"), 1;
  for (const char* d : {"/lower", "/upper", "/work", "/merged"}) mkdir((dir + d).c_str(), 0755);
  const std::string opts = "lowerdir=" + dir + "/lower,upperdir=" + dir + "/upper,workdir=" + dir + "/work";
  if (mount("overlay", merged.c_str(), "overlay", 0, opts.c_str()) != 0) return perror("bench: overlay"), 1;
  auto mnt = dockquota::cgroup2Mount();
  if (!mnt) return fprintf(stderr, "bench: %s\n", mnt.error().message.c_str()), 1;
  std::string home;  // this process's cgroup, to go back to
  {
    FILE* f = fopen("/proc/self/cgroup", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
      if (strncmp(line, "0::", 3) == 0) home = *mnt + std::string(line + 3, strcspn(line + 3, "\n"));
    }
    if (f) fclose(f);
  }
  const std::string base = *mnt + "/dq-growth-bench-" + std::to_string(getpid());
  const std::string cg = base + "/docker-bench.scope", other = base + "/docker-other.scope";
  mkdir(base.c_str(), 0755);
  mkdir(cg.c_str(), 0755);
  mkdir(other.c_str(), 0755);
  moveTo(cg);  // every loop below runs in the "container"
  auto ref = dockquota::cgroupOfDir(cg), other_ref = dockquota::cgroupOfDir(other);
  if (!ref || !other_ref) return fprintf(stderr, "bench: cannot read the bench cgroups\n"), 1;

  // The hook sets: "fentry/syscalls" is the fentry set as kernels without
  // overlayfs BTF (5.10) get it; where "fentry" hooks the syscalls anyway it is left out.
  auto options = [](const std::string& set) {
    GrowthProbe::Options o;
    o.hook = set.substr(0, set.find('/'));
    o.overlay_functions = set != "fentry/syscalls";
    return o;
  };
  std::vector<std::string> sets, hooks;  // hooks: the set and its first program, for the table
  for (const char* h : {"tracepoint", "fentry", "fentry/syscalls"}) {
    auto p = GrowthProbe::open(options(h));
    if (!p) {
      printf("growth probe: %s hooks unavailable: %s\n", h, p.error().message.c_str());
      continue;
    }
    const std::string progs = (*p)->attached().front() + ((*p)->attached().size() > 1 ? ", ..." : "");
    bool seen = false;
    for (const auto& l : hooks) seen = seen || l.find("(" + progs + ")") != std::string::npos;
    if (seen) continue;  // 5.10: "fentry" already is the syscall set
    sets.push_back(h);
    hooks.push_back(std::string(h) + " (" + progs + ")");
  }
  // Each program's own time per run, from BPF run-time stats: a figure the
  // machine's load does not blur the way wall-clock loops are. Stats make
  // every run slower, so they are on only in one extra round after the timed ones.
  int stats_fd = -1;
  std::map<std::string, std::vector<double>> prog_ns;  // "hooks / row / watched?" -> ns per run
  struct Row {
    const char* name;
    std::function<double()> run;
    std::vector<double> off;
    std::vector<std::vector<double>> watched, unwatched;  // per hook set
  };
  std::vector<Row> rows = {
      {"null syscall (getppid)", nullSyscallNs, {}, {}, {}},
      {"4 KiB write(), overlay file", [&] { return fileWriteNs(merged + "/f"); }, {}, {}, {}},
      {"4 KiB write(), tmpfs file", [&] { return fileWriteNs(dir + "/t"); }, {}, {}, {}},
  };
  for (auto& r : rows) {
    r.watched.resize(hooks.size());
    r.unwatched.resize(hooks.size());
  }
  for (int round = 0; round <= rounds; round++) {
    const bool stats_round = round == rounds;
    if (stats_round && (stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME)) < 0) break;
    for (auto& r : rows) {
      if (!stats_round) r.off.push_back(r.run());
    }
    for (size_t h = 0; h < hooks.size(); h++) {
      auto p = GrowthProbe::open(options(sets[h]));
      if (!p) return fprintf(stderr, "bench: %s\n", p.error().message.c_str()), 1;
      // Another container is watched, so the filter runs as on a real host.
      if (auto st = (*p)->watch("other", *other_ref); !st)
        return fprintf(stderr, "bench: %s\n", st.error().message.c_str()), 1;
      // Runs a row: timed, or noting the programs' time per run.
      auto measure = [&](Row& r, std::vector<double>& into, const char* what) {
        if (!stats_round) return into.push_back(r.run());
        auto before = (*p)->programStats();
        r.run();
        auto after = (*p)->programStats();
        uint64_t runs = 0, ns = 0;
        for (size_t i = 0; i < after.size() && i < before.size(); i++) {
          runs += after[i].runs - before[i].runs;
          ns += after[i].run_ns - before[i].run_ns;
        }
        if (runs) prog_ns[hooks[h] + "|" + r.name + "|" + what].push_back(static_cast<double>(ns) / runs);
      };
      for (auto& r : rows) measure(r, r.unwatched[h], "not watched");
      if (auto st = (*p)->watch("bench", *ref); !st)
        return fprintf(stderr, "bench: %s\n", st.error().message.c_str()), 1;
      for (auto& r : rows) measure(r, r.watched[h], "watched");
      auto fig = (*p)->read();
      if (round == 0 && fig)
        printf("check: %s counted %.1f MiB in %lu writes\n", hooks[h].c_str(), (*fig)["bench"].bytes / 1048576.0,
               static_cast<unsigned long>((*fig)["bench"].writes));
    }
  }
  moveTo(home);
  rmdir(cg.c_str());
  rmdir(other.c_str());
  rmdir(base.c_str());
  umount2(merged.c_str(), MNT_DETACH);
  umount2(dir.c_str(), MNT_DETACH);
  rmdir(dir.c_str());

  printf("\ngrowth probe, medians of %d alternating rounds (ns per call; ratio to no probe)\n", rounds);
  for (size_t h = 0; h < hooks.size(); h++) {
    printf("\nhooks: %s\n%-30s %10s %20s %20s\n", hooks[h].c_str(), "workload", "no probe", "cgroup not watched",
           "cgroup watched");
    for (const auto& r : rows) {
      double off = median(r.off), un = median(r.unwatched[h]), w = median(r.watched[h]);
      printf("%-30s %10.1f %11.1f %7.3fx %11.1f %7.3fx\n", r.name, off, un, un / off, w, w / off);
    }
    if (stats_fd < 0) continue;
    printf("program time per run (bpf_stats, ns):\n");
    for (const auto& r : rows) {
      auto un = prog_ns.find(hooks[h] + "|" + r.name + "|not watched");
      auto w = prog_ns.find(hooks[h] + "|" + r.name + "|watched");
      printf("%-30s %10s %20.1f %20.1f\n", r.name, "", un == prog_ns.end() ? 0.0 : median(un->second),
             w == prog_ns.end() ? 0.0 : median(w->second));
    }
  }
  if (stats_fd >= 0) close(stats_fd);
  return 0;
}

int main(int argc, char** argv) {
  for (int i = 1; i < argc; i++) {
    if (std::string(argv[i]) == "--growth") {
      int rounds = 5;
      for (int j = 1; j + 1 < argc; j++) {
        if (std::string(argv[j]) == "--rounds") rounds = atoi(argv[j + 1]);
      }
      return growthBench(rounds);
    }
  }
  Agent agent;
  std::vector<std::string> bins;  // one or more agent builds, compared side by side
  std::string sock;
  int rounds = 3, creates = 100;
  std::string hooks_arg = "auto";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--agent")
      bins.push_back(argv[i + 1]);
    else if (a == "--docker-sock")
      sock = argv[i + 1];
    else if (a == "--rounds")
      rounds = atoi(argv[i + 1]);
    else if (a == "--creates")
      creates = atoi(argv[i + 1]);
    else if (a == "--hook")
      hooks_arg = argv[i + 1];
  }
  if (bins.empty() || sock.empty()) {
    fprintf(stderr,
            "usage: dockquota-bench --agent PATH --docker-sock SOCK [--rounds N] [--creates N] [--hook H[,H...]]\n");
    return 2;
  }
  // One or more hook sets (probe_hook), measured in the same run.
  std::vector<std::string> hooks;
  for (size_t p = 0; p <= hooks_arg.size();) {
    size_t q = hooks_arg.find(',', p);
    if (q == std::string::npos) q = hooks_arg.size();
    if (q > p) hooks.push_back(hooks_arg.substr(p, q - p));
    p = q + 1;
  }
  // Columns: every agent build with every hook set.
  std::vector<std::string> set_of, bin_of;
  for (const auto& b : bins)
    for (const auto& h : hooks) set_of.push_back(h), bin_of.push_back(b);
  hooks = set_of;
  agent.bin = bins[0];
  char tmpl[] = "/tmp/dq-bench-XXXXXX";
  agent.dir = mkdtemp(tmpl);
  agent.port = freePort();
  agent.config = agent.dir + "/config.json";
  auto configure = [&](const std::string& hook) {
    json cfg = {{"listen_port", agent.port},
                {"api_key", kKey},
                {"docker_socket", sock},
                {"watch_sockets", {sock}},
                {"database", agent.dir + "/state.db"},
                {"log_level", "debug"},
                {"probe_hook", hook}};
    FILE* f = fopen(agent.config.c_str(), "w");
    fputs(cfg.dump().c_str(), f);
    fclose(f);
  };

  struct Metric {
    const char* name;
    const char* unit;
    std::function<double()> run;
    std::vector<double> off;
    std::vector<std::vector<double>> on;  // per hook set
  };
  const std::string file = agent.dir + "/write-bench";
  const std::string other_sock = agent.dir + "/other.sock";
  EchoListener other(other_sock);
  double rtt_cpu_ns = 0;  // set by the RTT metric, read by the next one
  std::vector<Metric> metrics = {
      {"null syscall (getppid)", "ns", nullSyscallNs, {}, {}},
      {"4 KiB write() to a file", "ns", [&] { return fileWriteNs(file); }, {}, {}},
      {"docker.sock GET /_ping RTT", "us", [&] { return dockerRttNs(sock, &rtt_cpu_ns) / 1000; }, {}, {}},
      {"  client CPU per round trip", "us", [&] { return rtt_cpu_ns / 1000; }, {}, {}},
      {"other unix socket, CPU/RT", "us", [&] { return unixEchoCpuNs(other_sock) / 1000; }, {}, {}},
  };
  for (auto& m : metrics) m.on.resize(hooks.size());
  std::vector<std::string> in_use(hooks.size());
  // Alternate off / each set so drift in the machine hits every column alike.
  for (int r = 0; r < rounds; r++) {
    for (auto& m : metrics) m.off.push_back(m.run());
    for (size_t h = 0; h < hooks.size(); h++) {
      configure(hooks[h]);
      agent.bin = bin_of[h];
      agent.start();
      in_use[h] = agent.hook();
      for (auto& m : metrics) m.on[h].push_back(m.run());
      agent.stop();
    }
  }
  // Attribution latency and RSS with the first set (of the first build).
  configure(hooks[0]);
  agent.bin = bin_of[0];
  agent.start();
  std::vector<std::string> ids;
  auto lat = attributionLatencyMs(sock, agent, creates, &ids);
  long rss_kib = 0;
  {
    FILE* s = fopen(("/proc/" + std::to_string(agent.pid) + "/status").c_str(), "r");
    char line[256];
    while (s && fgets(line, sizeof line, s)) {
      if (strncmp(line, "VmRSS:", 6) == 0) rss_kib = strtol(line + 6, nullptr, 10);
    }
    if (s) fclose(s);
  }
  agent.stop();
  removeContainers(sock, ids);

  printf("\nmedians of %d alternating rounds; ratio = with agent / without\n", rounds);
  if (bins.size() > 1)
    for (size_t b = 0; b < bins.size(); b++) printf("agent #%zu: %s\n", b + 1, bins[b].c_str());
  printf("%-30s %12s", "workload", "without");
  for (size_t h = 0; h < hooks.size(); h++) {
    std::string col = hooks[h] == in_use[h] ? hooks[h] : hooks[h] + "=" + in_use[h];
    if (bins.size() > 1) col = "#" + std::to_string(h / (hooks.size() / bins.size()) + 1) + " " + col;
    printf(" %22s", col.c_str());
  }
  printf("\n");
  for (const auto& m : metrics) {
    double off = median(m.off);
    printf("%-30s %9.2f %-2s", m.name, off, m.unit);
    for (const auto& on_h : m.on) {
      double on = median(on_h);
      printf(" %8.2f %-2s (%6.3fx)", on, m.unit, on / off);
    }
    printf("\n");
  }
  printf(
      "\nattribution latency (%s hooks), Docker's reply -> listed (%d creates): p50 %.1f ms, p99 %.1f ms, max %.1f "
      "ms\n",
      in_use[0].c_str(), creates, percentile(lat, 50), percentile(lat, 99), percentile(lat, 100));
  printf("agent RSS after the run: %.1f MiB\n", rss_kib / 1024.0);
  std::string cmd = "rm -rf " + agent.dir;
  return system(cmd.c_str()) == 0 ? 0 : 1;
}
