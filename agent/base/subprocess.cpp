// SPDX-License-Identifier: Apache-2.0
#include "agent/base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

extern char** environ;

namespace dockquota {

namespace {

// Closes on scope exit; -1 = nothing.
struct Fd {
  int fd = -1;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// The agent's environment with LC_ALL=C in place of any LC_ALL.
std::vector<std::string> childEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) {
    if (std::strncmp(*e, "LC_ALL=", 7) != 0) env.emplace_back(*e);
  }
  env.emplace_back("LC_ALL=C");
  return env;
}

std::vector<char*> pointers(std::vector<std::string>& v) {
  std::vector<char*> p;
  for (auto& s : v) p.push_back(s.data());
  p.push_back(nullptr);
  return p;
}

// posix_spawn with stdout/stderr to the pipes' write ends, stdin /dev/null.
Result<pid_t> spawn(const std::vector<std::string>& argv, int out_w, int err_w) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_w, 1);
  posix_spawn_file_actions_adddup2(&fa, err_w, 2);
  // The child starts with default signal dispositions and an empty mask,
  // whatever the agent's threads block (its signal thread blocks SIGTERM...).
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<std::string> args = argv, env = childEnvironment();
  auto argp = pointers(args), envp = pointers(env);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argp[0], &fa, &attr, argp.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return osError(rc, "spawn " + argv[0]);
  return pid;
}

// Reads both pipes until EOF on both, the deadline or the cap.
Status collect(int out_r, int err_r, const RunLimits& limits, RunOutput& o) {
  const auto deadline = std::chrono::steady_clock::now() + limits.timeout;
  struct pollfd fds[2] = {{out_r, POLLIN, 0}, {err_r, POLLIN, 0}};
  std::string* sinks[2] = {&o.out, &o.err};
  char buf[65536];
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return Error{ETIMEDOUT, "no answer within " + std::to_string(limits.timeout.count()) + " ms"};
    int n = ::poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return osError(errno, "poll");
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t r = ::read(fds[i].fd, buf, sizeof buf);
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (r <= 0) {
        fds[i].fd = -1;  // EOF (or an error: nothing more will come)
        continue;
      }
      if (sinks[i]->size() + size_t(r) > limits.max_output)
        return Error{EFBIG, "more than " + std::to_string(limits.max_output) + " bytes of output"};
      sinks[i]->append(buf, size_t(r));
    }
  }
  return {};
}

}  // namespace

Result<RunOutput> runProgram(const std::vector<std::string>& argv, const RunLimits& limits) {
  if (argv.empty() || argv[0].empty()) return Error{EINVAL, "run: empty command"};
  int out_p[2], err_p[2];
  if (::pipe2(out_p, O_CLOEXEC) != 0) return osError(errno, "run " + argv[0] + ": pipe");
  Fd out_r{out_p[0]}, out_w{out_p[1]};
  if (::pipe2(err_p, O_CLOEXEC) != 0) return osError(errno, "run " + argv[0] + ": pipe");
  Fd err_r{err_p[0]}, err_w{err_p[1]};
  auto pid = spawn(argv, out_w.fd, err_w.fd);
  if (!pid) return pid.error();
  // Our copies of the write ends go, so EOF comes when the child's do.
  out_w.reset();
  err_w.reset();
  RunOutput o;
  Status st = collect(out_r.fd, err_r.fd, limits, o);
  if (!st) ::kill(*pid, SIGKILL);
  int ws = 0;
  while (::waitpid(*pid, &ws, 0) < 0 && errno == EINTR) {}
  if (!st) return st.error().context(argv[0] + " killed");
  if (WIFEXITED(ws)) o.exit_code = WEXITSTATUS(ws);
  if (WIFSIGNALED(ws)) o.signal = WTERMSIG(ws);
  return o;
}

}  // namespace dockquota
