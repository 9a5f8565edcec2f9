# SPDX-License-Identifier: Apache-2.0
"""Shared pieces of the end-to-end tests: a real dockerd, real users in its
socket group, the real agent, and its HTTP API over loopback.

Prerequisites (root, dockerd, busybox) missing: the test SKIPs outside CI and
FAILS with CI=true, so a green CI run means it really ran."""
import base64
import ctypes
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DOCKERD_SH = os.path.join(ROOT, "tests", "tools", "dockerd.sh")
GROUP = "dqdocker"
USERS = {"alice": 2001, "bob": 2002, "carol": 2003, "dave": 2004}  # dave: the zoo's fourth user
API_KEY = "e2e-test-key"


def in_ci():
    return os.environ.get("CI") == "true"


def skip_or_fail(msg):
    """A prerequisite is missing: SKIP outside CI, FAIL in CI (green must mean it ran)."""
    if in_ci():
        print("FAIL: " + msg, file=sys.stderr)
        sys.exit(1)
    print("SKIPPED: " + msg, file=sys.stderr)
    sys.exit(0)


def user_project(env, uid):
    """The user's project as /api/v1/projects lists it, or None."""
    status, body = env.http("/api/v1/projects")
    assert status == 200, (status, body)
    for p in body["projects"]:
        if p["kind"] == "user" and p["owner"] == str(uid):
            return p
    return None


def require_prerequisites():
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("dockerd", "docker", "curl", "useradd"):
        if not shutil.which(tool):
            missing.append(tool)
    if not os.path.exists("/bin/busybox"):
        missing.append("/bin/busybox (busybox-static)")
    if not missing:
        return
    msg = "end-to-end prerequisites missing: " + ", ".join(missing)
    if in_ci():
        print("FAIL: " + msg, file=sys.stderr)
        sys.exit(1)
    print("SKIPPED: " + msg, file=sys.stderr)
    sys.exit(0)


def ensure_users():
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "-g", "2990", GROUP], check=True)
    for name, uid in USERS.items():
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-u", str(uid), "-U", "-G", GROUP, "-M", "-s", "/bin/sh", name], check=True)
        subprocess.run(["usermod", "-a", "-G", GROUP, name], check=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Env:
    """One dockerd + one agent, in a temp dir."""

    def __init__(self, agent_bin):
        self.agent_bin = agent_bin
        self.dir = tempfile.mkdtemp(prefix="dq-e2e-")
        os.chmod(self.dir, 0o755)
        self.sock = os.path.join(self.dir, "docker.sock")
        # The per-user socket in the test's own directory (the agent makes run/
        # 0755): never the host's /run/dockquota, which an installed agent owns.
        self.user_sock = os.path.join(self.dir, "run", "user.sock")
        self.db = os.path.join(self.dir, "state", "dockquota.db")
        self.port = free_port()
        self.agent = None
        self.agent_log = os.path.join(self.dir, "agent.log")
        self.homes = {}
        for name in USERS:
            home = os.path.join(self.dir, "home-" + name)
            os.makedirs(home)
            os.chown(home, USERS[name], USERS[name])
            self.homes[name] = home

    # -- dockerd -----------------------------------------------------------
    def start_dockerd(self):
        subprocess.run([DOCKERD_SH, "start", self.dir, GROUP], check=True, stdout=subprocess.DEVNULL)

    def stop_dockerd(self):
        subprocess.run([DOCKERD_SH, "stop", self.dir], check=False)

    # -- agent -------------------------------------------------------------
    def write_config(self, **extra):
        cfg = {
            "listen_address": "127.0.0.1",
            "listen_port": self.port,
            "api_key": API_KEY,
            "docker_socket": self.sock,
            "watch_sockets": [self.sock],
            "database": self.db,
            "log_level": "debug",
            "user_socket": self.user_sock,
        }
        if os.environ.get("DQ_PROBE_HOOK"):  # force a hook set (e.g. loops in vmtest)
            cfg["probe_hook"] = os.environ["DQ_PROBE_HOOK"]
        cfg.update(extra)
        path = os.path.join(self.dir, "config.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        return path

    def start_agent(self, **extra):
        cfg = self.write_config(**extra)
        log = open(self.agent_log, "a")
        self.agent = subprocess.Popen([self.agent_bin, "--config", cfg], stdout=log, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.agent.poll() is not None:
                raise AssertionError("agent exited with %s; log:\n%s" % (self.agent.returncode, self.tail_log()))
            try:
                h = self.health()
                if h.get("docker", {}).get("reconciled"):
                    return h
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError("agent did not become ready; log:\n" + self.tail_log())

    def stop_agent(self, sig=signal.SIGTERM):
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(sig)
            self.agent.wait(timeout=20)
        rc = self.agent.returncode if self.agent else None
        self.agent = None
        return rc

    def tail_log(self, n=60):
        try:
            with open(self.agent_log) as f:  # without libbpf's debug lines (relocations at every start)
                return "".join([ln for ln in f if "debug   libbpf:" not in ln][-n:])
        except OSError:
            return "(no log)"

    # -- HTTP API ----------------------------------------------------------
    def _send(self, req, auth=True, timeout=5):
        """Sends req (Basic auth unless auth=False); returns (status, parsed JSON body)."""
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(("api:" + API_KEY).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def http(self, path, auth=True, method="GET"):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method=method)
        return self._send(req, auth=auth)

    def http_json(self, method, path, body, content_type="application/json"):
        """A request with a JSON body (PUT/POST), authenticated; returns (status, parsed body)."""
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method=method,
                                     data=json.dumps(body).encode())
        req.add_header("Content-Type", content_type)
        return self._send(req, timeout=10)

    def http_text(self, path):
        """An authenticated GET returning (status, text): /metrics."""
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path))
        req.add_header("Authorization", "Basic " + base64.b64encode(("api:" + API_KEY).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def health(self):
        return self.http("/healthz", auth=False)[1]

    def listing(self, kind):
        status, body = self.http("/api/v1/" + kind)
        assert status == 200, (status, body)
        return {o["id"]: o for o in body[kind]}

    def wait_listed(self, kind, match, timeout=1.0):
        """Polls until an object satisfying match(obj) is listed; returns (obj, seconds)."""
        start = time.time()
        while True:
            for o in self.listing(kind).values():
                if match(o):
                    return o, time.time() - start
            if time.time() - start > timeout:
                return None, time.time() - start
            time.sleep(0.01)

    # -- clients -----------------------------------------------------------
    def run_as(self, user, argv, input=None, check=True, env_extra=None, loginuid=None):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": "unix://" + self.sock,
               "HOME": self.homes.get(user, self.dir)}
        env.update(env_extra or {})
        kwargs = {}
        if user != "root":
            uid = USERS[user]
            kwargs = dict(user=uid, group=uid, extra_groups=[GROUP])
        if loginuid is not None:
            argv = ["sh", "-c", 'echo %d > /proc/self/loginuid && exec "$@"' % loginuid, "sh"] + argv
        p = subprocess.run(argv, input=input, capture_output=True, env=env, **kwargs)
        if check and p.returncode != 0:
            raise AssertionError("%s as %s failed (%d): %s" % (argv, user, p.returncode, p.stderr.decode(errors="replace")))
        return p.stdout.decode(errors="replace").strip()

    def docker(self, user, *args, **kw):
        return self.run_as(user, ["docker"] + list(args), **kw)

    def cleanup(self):
        self.stop_agent()
        self.stop_dockerd()
        if getattr(self, "unmount", None):  # a data root filesystem (mount_data_root)
            subprocess.run(["umount", self.unmount], check=False)
        if os.environ.get("DQ_KEEP"):
            print("kept " + self.dir)
        else:
            subprocess.run(["rm", "-rf", self.dir], check=False)


def busybox_rootfs_tar(marker=None):
    """A tar (bytes) of a folder holding /bin/busybox and a few applet links.
    `marker`: text written to /marker, so that two images made in the same
    second get different layers (equal tars are one layer to Docker)."""
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "bin"))
    if marker is not None:
        with open(os.path.join(root, "marker"), "w") as f:
            f.write(marker)
    shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
    for a in ("sh", "ls", "cat", "echo", "dd", "sleep", "true", "mkdir", "rm", "sync", "head"):
        os.symlink("busybox", os.path.join(root, "bin", a))
    tar = subprocess.run(["tar", "-C", root, "-cf", "-", "."], capture_output=True, check=True).stdout
    shutil.rmtree(root)
    return tar



# --- shared by the quota and enforcement suites -----------------------------------

def unit_environment():
    """The Environment= settings of deploy/systemd/dockquota.service, for
    benchmarks that start the agent as the unit would."""
    unit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "systemd", "dockquota.service")
    env = {}
    with open(unit) as f:
        for line in f:
            if line.startswith("Environment="):
                k, _, v = line.strip()[len("Environment="):].partition("=")
                env[k] = v
    return env


def start_device_agent(env, **cfg):
    """The real agent with no dockerd behind it (block and ZFS devices do not
    need one), ready once it has read its quota devices."""
    path = env.write_config(**cfg)
    log = open(env.agent_log, "a")
    env.agent = subprocess.Popen([env.agent_bin, "--config", path], stdout=log, stderr=log)
    deadline = time.time() + 40
    while time.time() < deadline:
        if env.agent.poll() is not None:
            raise AssertionError("agent exited with %s; log:\n%s" % (env.agent.returncode, env.tail_log()))
        try:
            if env.health().get("quota_devices", {}).get("refreshed_at"):
                return
        except Exception:  # noqa: BLE001 (not listening yet)
            pass
        time.sleep(0.1)
    raise AssertionError("agent did not read the devices; log:\n" + env.tail_log())


def sh(cmd, check_rc=True):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if check_rc and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (cmd, p.returncode, p.stderr))
    return p


def prjquota_works():
    """Can this kernel mount XFS with prjquota? (The host here cannot: no XFS quota support.)"""
    d = tempfile.mkdtemp(prefix="dq-prjq-")
    try:
        sh("truncate -s 320M %s/img && mkfs.xfs -q %s/img && mkdir %s/m" % (d, d, d))
        ok = sh("mount -o loop,prjquota %s/img %s/m" % (d, d), check_rc=False).returncode == 0
        if ok:
            sh("umount %s/m" % d, check_rc=False)
        return ok
    finally:
        sh("rm -rf %s" % d, check_rc=False)


def mount_data_root(env, fstype, quota=True):
    """A fresh filesystem image mounted at the dockerd data root of `env`."""
    image = os.path.join(env.dir, "fs.img")
    data = os.path.join(env.dir, "data")
    os.makedirs(data, exist_ok=True)
    sh("truncate -s 768M %s" % image)
    if fstype == "xfs":
        sh("mkfs.xfs -q %s" % image)
    else:
        sh("mkfs.ext4 -q -I 256 %s %s" % ("-O quota,project" if quota else "", image))
    sh("mount -o loop%s %s %s" % (",prjquota" if quota else "", image, data))
    env.unmount = data
    return data


def mount_source(mountpoint):
    """The device a mount point is mounted from (/proc/self/mountinfo)."""
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        if f[4] == os.path.realpath(mountpoint):
            return f[f.index("-") + 2]
    return None


def kernel_project_hard_kib(mountpoint, project):
    """The kernel's own hard block limit of a project, in KiB (0 = none), read
    with quotactl(Q_GETQUOTA, PRJQUOTA): what the agent claims is not evidence."""
    class Dqblk(ctypes.Structure):
        _fields_ = [(n, ctypes.c_uint64) for n in ("bhard", "bsoft", "curspace", "ihard", "isoft", "curinodes",
                                                     "btime", "itime")] + [("valid", ctypes.c_uint32)]
    libc = ctypes.CDLL(None, use_errno=True)
    q_getquota, prjquota = 0x800007, 2
    d = Dqblk()
    dev = mount_source(mountpoint)
    if libc.quotactl((q_getquota << 8) | prjquota, dev.encode(), project, ctypes.byref(d)) != 0:
        raise OSError(ctypes.get_errno(), "quotactl(Q_GETQUOTA, PRJQUOTA) %s project %d" % (dev, project))
    return d.bhard


def wait_for(what, fn, timeout=30.0):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v or time.time() > deadline:
            return v
        time.sleep(0.25)


def set_limit(env, uid, kib):
    status, body = env.http_json("PUT", "/remote-api/quotas/users/%d?device=docker" % uid, {"block_hard_limit": kib})
    assert status == 200, (status, body)


def checker(failures):
    """check(cond, what): prints ok/FAIL and keeps what failed in `failures`."""
    def check(cond, what):
        print(("ok    " if cond else "FAIL  ") + what, flush=True)
        if not cond:
            failures.append(what)
    return check


def run_scenarios(env, scenarios, check):
    """Runs each scenario(env) on its own dockerd + agent (the first on `env`),
    so one that fails cannot spoil the next; a raised AssertionError is a
    failed check with the agent's log."""
    for i, scenario in enumerate(scenarios):
        e = env if i == 0 else Env(env.agent_bin)
        try:
            scenario(e)
        except AssertionError as ex:
            check(False, "scenario raised: %s" % ex)
            print("---- agent log (tail) ----\n" + e.tail_log(60))
        finally:
            if e is not env:
                e.cleanup()


ARGS = None  # the parsed command line, for tests that add options (main's add_args)


def main(run, failures, summary=None, add_args=None):
    """The body every e2e test shares: --agent, prerequisites, users, one Env,
    run(env), the agent log on failure, cleanup, exit status. add_args(parser)
    adds a test's own options; they are in harness.ARGS."""
    import argparse
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    if add_args:
        add_args(ap)
    args = ARGS = ap.parse_args()
    require_prerequisites()
    ensure_users()
    env = Env(args.agent)
    try:
        run(env)
    finally:
        if failures:
            print("---- agent log (tail) ----\n" + env.tail_log(80))
        env.cleanup()
    if summary:
        summary()
    print("%d failure(s)" % len(failures))
    sys.exit(1 if failures else 0)
