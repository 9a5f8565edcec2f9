#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The shipped unit, sandbox and all, under a real systemd (ctest vm_systemd_unit).

Runs inside `vmtest/run.sh -S`: systemd is PID 1 of a Debian kernel's VM, the
host's files are the guest's. Installs the agent the way deploy/install.sh does
(it runs install.sh --binary), with Docker's data root on an XFS image mounted
with prjquota, then checks through the running dockquota.service:
  - it started (Type=notify: READY=1), keeps pinging the watchdog, runs with
    exactly the unit's capabilities, and every probe attached;
  - attribution: alice's and bob's containers are listed with their uid, by
    the kernel probe (source "bpf");
  - project quotas: a 16 MiB limit for alice stops her container's write with
    EDQUOT/ENOSPC, bob's 48 MiB write goes through;
  - safe state: /var/lib/dockquota 0700, the database files 0600;
  - admission control (dockquota.socket, Docker's authorization-plugins):
    alice over her limit refused a create, bob allowed, and a kill -9 of the
    agent fails no Docker request (systemd restarts it behind the socket);
  - the journal has no EPERM/EACCES/EROFS from the agent, `docker rm` works,
    and the agent stops cleanly.
Any directive of the unit that breaks one of these fails the test.

Not a test_*.py: the e2e suite on the host must not run it (it needs systemd as
PID 1, and it installs into /usr/local and /etc: only the VM's overlay)."""
import argparse
import grp
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = harness.ROOT
UNIT = "dockquota.service"
USERS = {"alice": 2001, "bob": 2002}
DATA_ROOT = "/var/lib/docker"
PORT = 8436
failures = []
check = harness.checker(failures)
T0 = time.time()


def log(msg):
    print("[%6.1fs] %s" % (time.time() - T0, msg), flush=True)


def sh(cmd, check_rc=True, timeout=300):
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (cmd, p.returncode, p.stdout, p.stderr))
    return p.stdout.strip()


def show(unit, *props):
    out = sh("systemctl show %s %s" % (unit, " ".join("-p " + p for p in props)))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(what, fn, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            v = fn()
        except (AssertionError, OSError, urllib.error.URLError, ValueError):
            v = None
        if v or time.time() > deadline:
            if not v:
                log("gave up waiting (%d s): %s" % (timeout, what))
            return v
        time.sleep(0.25)


class Api:
    def __init__(self):
        with open("/etc/dockquota/api-key") as f:
            self.key = f.read().strip()

    def call(self, method, path, body=None, auth=True):
        import base64
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (PORT, path), method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(("api:" + self.key).encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


def docker(user, *args, input=None, check_rc=True, timeout=300):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"}
    kw = {}
    if user != "root":
        uid = USERS[user]
        kw = dict(user=uid, group=uid, extra_groups=[grp.getgrnam("docker").gr_gid])
    p = subprocess.run(["docker"] + list(args), input=input, capture_output=True, env=env, timeout=timeout, **kw)
    if check_rc and p.returncode != 0:
        raise AssertionError("docker %s as %s failed (%d): %s" % (" ".join(args), user, p.returncode,
                                                                  p.stderr.decode(errors="replace")))
    return p.returncode, p.stdout.decode(errors="replace").strip()


def journal():
    return sh("journalctl -u %s -o cat --no-pager" % UNIT, check_rc=False)


def setup():
    if not os.path.isdir("/run/systemd/system") or open("/proc/1/comm").read().strip() != "systemd":
        msg = "systemd is not PID 1: run this under `vmtest/run.sh -S`"
        print(("FAIL: " if harness.in_ci() else "SKIPPED: ") + msg)
        sys.exit(1 if harness.in_ci() else 0)
    log("Docker's data root: XFS with prjquota on a loop image")
    sh("truncate -s 1G /var/tmp/docker-xfs.img && mkfs.xfs -q /var/tmp/docker-xfs.img")
    os.makedirs(DATA_ROOT, exist_ok=True)
    sh("mount -o loop,prjquota /var/tmp/docker-xfs.img " + DATA_ROOT)
    # No network in the VM: no bridge, no iptables (the host's docker.service
    # and docker.socket are used as shipped).
    os.makedirs("/etc/docker", exist_ok=True)
    with open("/etc/docker/daemon.json", "w") as f:
        json.dump({"iptables": False, "bridge": "none", "storage-driver": "overlay2"}, f)
    for name, uid in USERS.items():  # the host may have them already (the e2e suites make them)
        if sh("id -u %s" % name, check_rc=False) != str(uid):
            sh("useradd -u %d -U -M -s /bin/sh %s" % (uid, name))
        sh("usermod -a -G docker %s" % name)
    # The agent's config: the default one plus kernel project quotas, synced
    # every second. Written before install.sh, which keeps an existing config.
    with open(os.path.join(ROOT, "deploy", "config.default.json")) as f:
        cfg = json.load(f)
    cfg.update(project_quotas="required", project_sync_interval_s=1, usage_interval_s=5)
    os.makedirs("/etc/dockquota", mode=0o700, exist_ok=True)
    with open("/etc/dockquota/config.json", "w") as f:
        json.dump(cfg, f)


def install(agent):
    log("deploy/install.sh --binary %s" % agent)
    t = time.time()
    # As an admin would run it: from a shell with umask 022.
    p = subprocess.run("umask 022; %s/deploy/install.sh --binary %s" % (ROOT, agent), shell=True,
                       capture_output=True, text=True, timeout=900)
    print(p.stdout + p.stderr, flush=True)
    check(p.returncode == 0, "install.sh installed and started docker and dockquota (%.0f s)" % (time.time() - t))
    if p.returncode != 0:
        print(sh("systemctl status --no-pager docker.service containerd.service %s" % UNIT, check_rc=False))
        print(journal()[-4000:])
        raise AssertionError("install.sh failed")


def check_service():
    s = show(UNIT, "ActiveState", "SubState", "NRestarts", "WatchdogUSec", "MainPID", "Type", "NotifyAccess")
    log("service: %s" % s)
    check(s.get("ActiveState") == "active" and s.get("SubState") == "running",
          "dockquota.service is active (running): READY=1 arrived")
    check(s.get("Type") == "notify" and s.get("WatchdogUSec") == "30s", "Type=notify with a 30 s watchdog")
    pid = s.get("MainPID", "0")
    with open("/proc/%s/status" % pid) as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    # DQ_CAPABILITIES: the same list as the unit's CapabilityBoundingSet
    # (numbers from linux/capability.h).
    want = {"cap_dac_read_search": 2, "cap_fowner": 3, "cap_sys_ptrace": 19, "cap_sys_admin": 21,
            "cap_perfmon": 38, "cap_bpf": 39}
    want_mask = sum(1 << bit for bit in want.values())
    for field in ("CapEff", "CapBnd"):
        mask = int(status[field].strip(), 16)
        extra = [bit for bit in range(64) if mask & ~want_mask & (1 << bit)]
        check(mask == want_mask, "%s of the agent is exactly the unit's set (%s; extra bits %s, missing %s)" % (
            field, status[field].strip(), extra, [n for n, b in want.items() if not mask & (1 << b)]))
    check(status.get("NoNewPrivs", "").strip() == "1", "no_new_privs is set")
    check(status.get("Seccomp", "").strip() == "2", "a seccomp filter is on (SystemCallFilter)")
    umask = status.get("Umask", "").strip()
    check(umask == "0077", "the agent's umask is 0077 (%s)" % umask)
    return pid


def check_health(api):
    h = wait_for("/healthz with Docker reconciled",
                 lambda: (lambda b: b if b.get("docker", {}).get("reconciled") else None)(
                     api.call("GET", "/healthz", auth=False)[1]), 120)
    check(bool(h), "/healthz answers and Docker is reconciled")
    if not h:
        return
    log("healthz: status %s; degraded: %s" % (h["status"], h["degraded"]))
    p = h["probes"]
    check(p["exec"]["attached"], "exec probe attached")
    check(p["docker_sock"]["attached"], "docker.sock probe attached (hook %s)" % p["docker_sock"].get("hook"))
    check(p["growth"]["attached"], "growth probe attached (%s)" % p["growth"].get("unavailable", p["growth"].get("hook")))
    pq = h.get("project_quotas", {})
    check(pq.get("state") == "active" and pq.get("filesystem") == "xfs",
          "project quotas active on the XFS data root: %s" % json.dumps(pq))
    check(h["status"] == "ok", "/healthz status ok (degraded: %s)" % h["degraded"])


def owner_of(api, cid):
    status, body = api.call("GET", "/api/v1/containers")
    for o in body.get("containers", []) if status == 200 else []:
        if o["id"] == cid and o.get("uid") is not None:
            return o
    return None


def with_private_file(tar, uid):
    """The image tar plus /home/private, owned by `uid`, mode 0600: tagging
    it needs CAP_DAC_READ_SEARCH (to open it) and CAP_FOWNER (to set its
    project id: the agent is not its owner)."""
    import io
    import tarfile
    buf = io.BytesIO(tar)
    with tarfile.open(fileobj=buf, mode="a") as t:
        home = tarfile.TarInfo("./home")
        home.type, home.mode = tarfile.DIRTYPE, 0o755
        t.addfile(home)
        data = b"x" * 4096
        info = tarfile.TarInfo("./home/private")
        info.size, info.mode, info.uid, info.gid = len(data), 0o600, uid, uid
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def check_attribution(api):
    owners = {}
    for user in USERS:
        log("%s: docker import + run" % user)
        tar = with_private_file(harness.busybox_rootfs_tar(marker="systemd-unit-" + user), USERS[user])
        docker(user, "import", "-", "%s-img:1" % user, input=tar)
        _, cid = docker(user, "run", "-d", "--network", "none", "--name", "%s-sleeper" % user,
                        "%s-img:1" % user, "sleep", "3600")
        owners[user] = (cid, wait_for("%s's container listed with an owner" % user, lambda: owner_of(api, cid), 30))
    for user, (cid, o) in owners.items():
        check(bool(o) and o["uid"] == USERS[user] and o["source"] == "bpf",
              "%s's container is attributed to uid %d by the probe: %s" % (
                  user, USERS[user], json.dumps({k: o.get(k) for k in ("uid", "source", "exe")} if o else None)))


# bob's own client on one keep-alive connection: a ping, 12 s idle, then a
# create. The tracker checks an idle connection's socket through
# /proc/PID/fd/N of another user's process (CAP_SYS_PTRACE and
# CAP_DAC_READ_SEARCH). Measured without CAP_SYS_PTRACE: the tracker ends the
# connection, and its next event opens it again with the kernel's credentials,
# so the create is still bob's; what the capability shows is curl's path.
IDLE_CLIENT = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect("/run/docker.sock")
def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    s.sendall(("%s %s HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
               % (method, path, len(data))).encode() + data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0])
    while len(rest) < n:
        rest += s.recv(65536)
    return head.split(b" ")[1], rest[:n]
call("GET", "/_ping")
time.sleep(12)
status, body = call("POST", "/containers/create?name=bob-idle", {"Image": "bob-img:1", "Cmd": ["true"]})
print(status.decode(), json.loads(body)["Id"])
"""


def run_as(user, argv):
    uid = USERS[user]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, user=uid, group=uid,
                       extra_groups=[grp.getgrnam("docker").gr_gid], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if p.returncode != 0:
        raise AssertionError("%s as %s failed (%d): %s" % (argv[0], user, p.returncode, p.stderr))
    return p.stdout.strip()


def check_other_clients(api):
    """Clients that are not the docker CLI: their executable and their idle
    connections are read from /proc of another user's process."""
    bob = USERS["bob"]
    log("bob: curl create, and a create after 12 s idle on one connection")
    out = run_as("bob", ["curl", "-sf", "--unix-socket", "/run/docker.sock", "-H", "Content-Type: application/json",
                         "-d", '{"Image": "bob-img:1", "Cmd": ["true"]}', "http://d/containers/create?name=bob-curl"])
    cid = json.loads(out)["Id"]
    o = wait_for("bob's curl container listed with an owner", lambda: owner_of(api, cid), 30)
    check(bool(o) and o["uid"] == bob and o["source"] == "bpf" and o.get("exe") == "/usr/bin/curl",
          "bob's curl create is attributed to uid %d, exe /usr/bin/curl: %s" % (
              bob, json.dumps({k: o.get(k) for k in ("uid", "source", "exe")} if o else None)))
    status, cid = run_as("bob", ["python3", "-c", IDLE_CLIENT]).split()
    o = wait_for("bob's idle-connection container listed with an owner", lambda: owner_of(api, cid), 30)
    check(status == "201" and bool(o) and o["uid"] == bob and o["source"] == "bpf",
          "bob's create after 12 s idle on a kept connection is attributed to uid %d: %s" % (
              bob, json.dumps({k: o.get(k) for k in ("uid", "source", "exe")} if o else None)))


def user_project(api, uid):
    status, body = api.call("GET", "/api/v1/projects")
    for p in body.get("projects", []) if status == 200 else []:
        if p["kind"] == "user" and p["owner"] == str(uid):
            return p
    return None


def hard_limit_kib(project_id):
    # xfs_quota's report: "#ID used soft hard warn/grace", in KiB blocks.
    for line in sh("xfs_quota -x -c 'report -p -b -N -n' %s" % DATA_ROOT).splitlines():
        f = line.split()
        if f and f[0] == "#%d" % project_id:
            return int(f[3])
    return None


def project_of(path):
    import fcntl
    import struct
    fd = os.open(path, os.O_RDONLY)
    try:
        # FS_IOC_FSGETXATTR = _IOR('X', 31, struct fsxattr): 28 bytes, fsx_projid at 12.
        buf = fcntl.ioctl(fd, 0x801C581F, bytes(28))
        return struct.unpack_from("I", buf, 12)[0]
    finally:
        os.close(fd)


def private_file_project(user):
    """The project id of /home/private in `user`'s image layer."""
    import glob
    for path in glob.glob(DATA_ROOT + "/overlay2/*/diff/home/private"):
        if os.stat(path).st_uid == USERS[user]:
            return project_of(path)
    return None


def writer(user, mib):
    name = "%s-writer" % user
    docker(user, "run", "-d", "--network", "none", "--name", name, "%s-img:1" % user, "sh", "-c",
           "dd if=/dev/zero of=/fill bs=1048576 count=%d 2>&1; rc=$?; sync; exit $rc" % mib)
    _, rc = docker("root", "wait", name, timeout=600)
    _, out = docker("root", "logs", name, check_rc=False)
    return int(rc), out


def check_quota(api):
    alice = USERS["alice"]
    proj = wait_for("alice's project id", lambda: user_project(api, alice), 30)
    check(bool(proj), "alice has a project: %s" % json.dumps(proj))
    if not proj:
        return
    got = wait_for("alice's private file tagged", lambda: private_file_project("alice") == proj["id"], 30)
    check(bool(got), "a 0600 file of uid %d in alice's image has her project id %d (%s): DAC_READ_SEARCH + FOWNER" % (
        alice, proj["id"], private_file_project("alice")))
    status, body = api.call("PUT", "/remote-api/quotas/users/%d?device=docker" % alice, {"block_hard_limit": 16384})
    check(status == 200, "PUT a 16 MiB limit for alice: %d %s" % (status, body))
    got = wait_for("the limit in the kernel", lambda: hard_limit_kib(proj["id"]) == 16384, 30)
    check(bool(got), "the kernel has alice's 16 MiB hard limit on project %d" % proj["id"])
    rc, out = writer("alice", 48)
    log("alice's 48 MiB write: rc=%d %s" % (rc, out.replace("\n", " | ")))
    check(rc != 0 and ("quota" in out.lower() or "no space" in out.lower()),
          "alice's write stopped at her limit with EDQUOT/ENOSPC inside the container")
    rc, out = writer("bob", 48)
    check(rc == 0, "bob's 48 MiB write (no limit) went through: rc=%d %s" % (rc, out.replace("\n", " | ")))


def check_modes():
    st = os.stat("/var/lib/dockquota")
    check(oct(st.st_mode & 0o7777) == "0o700", "/var/lib/dockquota is 0700 (%o)" % (st.st_mode & 0o7777))
    for f in ("dockquota.db", "dockquota.db-wal", "dockquota.db-shm"):
        path = "/var/lib/dockquota/" + f
        if os.path.exists(path):
            mode = os.stat(path).st_mode & 0o7777
            check(mode == 0o600, "%s is 0600 (%o)" % (path, mode))
        else:
            check(f != "dockquota.db", "%s exists" % path)


def check_watchdog(pid):
    s = show(UNIT, "WatchdogTimestampMonotonic", "ExecMainStartTimestampMonotonic", "NRestarts", "MainPID")
    first = int(s.get("WatchdogTimestampMonotonic", "0"))
    started = int(s.get("ExecMainStartTimestampMonotonic", "0"))
    check(first > started, "the agent pinged the watchdog (last ping %.1f s after start)" % ((first - started) / 1e6))
    check(s.get("NRestarts") == "0" and s.get("MainPID") == pid, "no restart while the test ran: %s" % s)


def set_docker_plugins(plugins):
    with open("/etc/docker/daemon.json") as f:
        cfg = json.load(f)
    cfg.pop("authorization-plugins", None)
    if plugins:
        cfg["authorization-plugins"] = plugins
    with open("/etc/docker/daemon.json", "w") as f:
        json.dump(cfg, f)
    sh("systemctl restart docker.service", timeout=600)


def check_admission(api):
    """Admission control as README says to turn it on: dockquota.socket holds
    the plugin socket, Docker is told to use it; alice (over a 4 MiB limit,
    below what she wrote in check_quota) is refused a create, bob is not; a kill -9 of the agent
    while bob creates: systemd restarts it, no Docker request fails."""
    log("admission: dockquota.socket, admission on, Docker's authorization-plugins")
    with open("/etc/dockquota/config.json") as f:
        cfg = json.load(f)
    cfg["admission"] = "on"
    with open("/etc/dockquota/config.json", "w") as f:
        json.dump(cfg, f)
    # systemd refuses to start a socket whose service already runs: stop it first.
    sh("systemctl stop %s" % UNIT)
    sh("systemctl enable --now dockquota.socket")
    sh("systemctl start %s" % UNIT)
    def health():
        try:
            return api.call("GET", "/healthz", auth=False)[1] or {}
        except (urllib.error.URLError, OSError):
            return {}
    wait_for("the agent up again", lambda: health().get("docker", {}).get("reconciled"), 120)
    h = health().get("admission", {})
    check(h.get("socket_activated") is True and h.get("socket") == "/run/docker/plugins/dockquota.sock",
          "the agent serves the plugin on systemd's socket: %s" % json.dumps({k: h.get(k) for k in (
              "socket", "socket_activated")}))
    set_docker_plugins(["dockquota"])
    # Her write stopped a little under 16 MiB: a limit below her usage puts
    # her over it in the agent's figures (admission judges those).
    status, body = api.call("PUT", "/remote-api/quotas/users/%d?device=docker" % USERS["alice"],
                            {"block_hard_limit": 4096})
    check(status == 200, "PUT a 4 MiB limit for alice (below her usage): %d" % status)
    p = subprocess.run(["docker", "create", "--network", "none", "alice-img:1", "true"], capture_output=True,
                       text=True, user=USERS["alice"], group=USERS["alice"],
                       extra_groups=[grp.getgrnam("docker").gr_gid], env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    check(p.returncode != 0 and "authorization denied by plugin dockquota" in p.stderr,
          "alice (over her limit) is refused a create through the unit's socket: %s" % p.stderr.strip()[:200])
    rc, _ = docker("bob", "create", "--network", "none", "--name", "bob-admitted", "bob-img:1", "true",
                   check_rc=False)
    check(rc == 0, "bob (no limit) is allowed a create")
    # kill -9 while bob creates: Restart=on-failure after RestartSec.
    import threading
    lat, errors, stop = [], [], threading.Event()

    def loop():
        i = 0
        while not stop.is_set():
            t = time.time()
            rc, out = docker("bob", "create", "--network", "none", "--name", "bob-r%d" % i, "bob-img:1", "true",
                             check_rc=False)
            lat.append(time.time() - t)
            if rc != 0:
                errors.append(out[:160])
            i += 1
    th = threading.Thread(target=loop)
    th.start()
    time.sleep(3)
    before = show(UNIT, "NRestarts")["NRestarts"]
    t_kill = time.time()
    sh("systemctl kill -s KILL %s" % UNIT)
    back = wait_for("systemd restarted the agent", lambda: show(UNIT, "NRestarts")["NRestarts"] != before and
                    show(UNIT, "ActiveState")["ActiveState"] == "active", 120)
    down = time.time() - t_kill
    time.sleep(5)
    stop.set()
    th.join()
    log("admission: agent down %.1f s; %d creates meanwhile, slowest %.2f s, %d failed" % (
        down, len(lat), max(lat) if lat else 0, len(errors)))
    check(bool(back), "systemd restarted the agent after kill -9")
    check(not errors, "no Docker request failed while the agent restarted behind dockquota.socket: %s" % errors[:2])
    check(bool(lat) and max(lat) <= down + 5, "no request waited much longer than the restart (slowest %.1f s, "
          "restart %.1f s)" % (max(lat) if lat else 0, down))
    # Off again in README's order (Docker first), for the checks that follow.
    set_docker_plugins([])
    sh("systemctl disable --now dockquota.socket")


DROPIN = "/etc/systemd/system/dockquota.service.d/containerd.conf"


def set_runtime(agent, runtime):
    with open("/etc/dockquota/config.json") as f:
        cfg = json.load(f)
    # admission off: its phase is over, and without dockquota.socket the agent
    # would bind the plugin socket itself, in /run/docker/plugins (read-only here).
    cfg.update(runtime=runtime, containerd_namespaces=["k8s.io"], admission="off")
    with open("/etc/dockquota/config.json", "w") as f:
        json.dump(cfg, f)
    install(agent)  # as an admin would: install.sh reads the runtime and puts the drop-in in place


def containerd_state(api):
    try:
        c = (api.call("GET", "/healthz", auth=False)[1] or {}).get("runtimes", {}).get("containerd", {})
    except (urllib.error.URLError, OSError):
        return {}
    return c


def check_containerd(api, agent):
    """The unit on a containerd node: runtime docker,containerd makes
    install.sh add the drop-in (Wants= and After=containerd.service); the
    module loads and connects inside the sandbox; a containerd restart does
    not restart the agent, which reconnects by itself."""
    log("containerd: runtime docker,containerd through install.sh")
    set_runtime(agent, "docker,containerd")
    check(os.path.exists(DROPIN), "install.sh put the containerd drop-in in place")
    s = show(UNIT, "After", "Wants", "DropInPaths")
    check("containerd.service" in s.get("After", "").split() and "containerd.service" in s.get("Wants", "").split(),
          "dockquota.service wants and starts after containerd.service: %s" % s)
    up = wait_for("the module connected to containerd", lambda: containerd_state(api).get("connected"), 120)
    check(bool(up), "the containerd module loaded and connected under the sandbox: %s" % json.dumps(
        {k: containerd_state(api).get(k) for k in ("connected", "last_error", "module_build")}))
    pid = show(UNIT, "MainPID")["MainPID"]
    before = containerd_state(api).get("counters", {}).get("reconnects", 0)
    sh("systemctl restart containerd.service")
    again = wait_for("reconnected after containerd's restart", lambda: (lambda c: c.get("connected") and c.get(
        "counters", {}).get("reconnects", 0) > before)(containerd_state(api)), 120)
    check(bool(again), "the agent reconnected after containerd restarted: %s" % json.dumps(
        containerd_state(api).get("counters")))
    check(show(UNIT, "MainPID")["MainPID"] == pid and show(UNIT, "ActiveState")["ActiveState"] == "active",
          "a containerd restart did not restart the agent (Wants=, not BindsTo=)")
    # Docker's containers still run through its containerd: the node works on.
    rc, _ = docker("root", "run", "--rm", "--network", "none", "alice-img:1", "true", check_rc=False)
    check(rc == 0, "docker run works after containerd's restart")
    log("containerd: runtime docker again: install.sh removes the drop-in")
    set_runtime(agent, "docker")
    check(not os.path.exists(DROPIN) and "containerd.service" not in show(UNIT, "Wants")["Wants"].split(),
          "install.sh removed the drop-in for runtime docker")


def check_cleanup():
    for user in USERS:
        for c in ("sleeper", "writer") + (("curl", "idle") if user == "bob" else ()):
            rc, _ = docker("root", "rm", "-f", "%s-%s" % (user, c), check_rc=False)
            check(rc == 0, "docker rm -f %s-%s works next to the agent's mount namespace" % (user, c))
    bad = [ln for ln in journal().splitlines()
           if any(w in ln for w in ("Operation not permitted", "Permission denied", "Read-only file system",
                                    "Bad system call"))]
    check(not bad, "the agent's journal has no EPERM/EACCES/EROFS/SIGSYS: %s" % bad[:10])
    t = time.time()
    sh("systemctl stop %s" % UNIT)
    s = show(UNIT, "Result", "ExecMainStatus", "ActiveState")
    check(s.get("Result") == "success" and s.get("ExecMainStatus") == "0",
          "systemctl stop: the agent exits 0 (%s, %.1f s)" % (s, time.time() - t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    args = ap.parse_args()
    setup()
    try:
        install(os.path.abspath(args.agent))
        pid = check_service()
        api = Api()
        check_health(api)
        check_attribution(api)
        check_other_clients(api)
        check_quota(api)
        check_modes()
        check_watchdog(pid)
        check_admission(api)
        check_containerd(api, os.path.abspath(args.agent))
        check_cleanup()
    except AssertionError as e:
        check(False, "raised: %s" % e)
    finally:
        if failures:
            print("---- journal of %s (tail) ----\n%s" % (UNIT, "\n".join(journal().splitlines()[-80:])))
        print(sh("systemd-analyze security %s --no-pager | tail -1" % UNIT, check_rc=False))
    log("%d failure(s)" % len(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
