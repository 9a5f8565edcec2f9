#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Users see their own quota, end to end: a real dockerd, alice and bob, the
real agent serving its per-user socket, the real `docker quota` plugin run
by both Docker CLIs (Debian's /usr/bin/docker and /usr/local/bin/docker) as
those users, and `dockquotactl` against the agent's HTTP API.

  - the plugin is listed by `docker --help` and `docker info` of both CLIs
    (installed, for the test, where deploy/install.sh puts it);
  - `docker quota` as alice shows alice's figures only, as bob bob's, as
    root root's own or anyone's with --uid; tables and JSON (which parses);
  - `docker quota ls` lists only the caller's objects and the removal order;
  - a hostile alice on the socket: another uid or name in the query, path
    tricks, writes, a huge head, a slow drip: refused, never bob's data,
    and the socket keeps answering others meanwhile;
  - the agent down: a clean message and exit 3;
  - dockquotactl: every command, tables and --json, and its exit codes."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS, wait_for  # noqa: E402

failures = []
check = harness.checker(failures)
ALICE, BOB = USERS["alice"], USERS["bob"]
CLIS = ["/usr/bin/docker", "/usr/local/bin/docker"]
PLUGIN_DIR = "/usr/libexec/docker/cli-plugins"  # searched by both (cli-plugins/manager defaultSystemPluginDirs)
PYTHON = "/usr/bin/python3"  # Debian's: the users must be able to run it (not a pyenv one under /root)


def build_dir(env):
    """The clients are built next to the agent (CMake's ALL: tests/run.sh builds them)."""
    return os.path.dirname(os.path.abspath(env.agent_bin))


def uids_in(j):
    """Every value of a "uid" key anywhere in a JSON document."""
    out = set()
    if isinstance(j, dict):
        for k, v in j.items():
            if k == "uid" and isinstance(v, int):
                out.add(v)
            out |= uids_in(v)
    elif isinstance(j, list):
        for v in j:
            out |= uids_in(v)
    return out


def quota(env, user, *args, cli="docker", check_rc=True):
    """`docker quota ARGS` as `user` through `cli`; (exit code, stdout, stderr)."""
    env_extra = {"DOCKQUOTA_USER_SOCKET": env.user_sock}
    p_argv = [cli, "quota"] + list(args)
    kwargs = {}
    if user != "root":
        kwargs = dict(user=USERS[user], group=USERS[user], extra_groups=[harness.GROUP])
    e = {"PATH": "/usr/bin:/bin", "HOME": env.homes.get(user, env.dir), "DOCKER_HOST": "unix://" + env.sock}
    e.update(env_extra)
    p = subprocess.run(p_argv, capture_output=True, env=e, **kwargs)
    if check_rc and p.returncode != 0:
        raise AssertionError("%s as %s: exit %d: %s" % (p_argv, user, p.returncode, p.stderr.decode()))
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def install_plugin(env):
    """The plugin where deploy/install.sh puts it; returns an undo function."""
    src = os.path.join(build_dir(env), "docker-quota")
    dst = os.path.join(PLUGIN_DIR, "docker-quota")
    existed = os.path.exists(dst)
    made_dir = not os.path.isdir(PLUGIN_DIR)
    backup = dst + ".e2e-saved"
    if existed:
        os.rename(dst, backup)
    os.makedirs(PLUGIN_DIR, exist_ok=True)
    shutil.copy(src, dst)
    os.chmod(dst, 0o755)

    def undo():
        os.unlink(dst)
        if existed:
            os.rename(backup, dst)
        elif made_dir:
            os.rmdir(PLUGIN_DIR)
    return undo


def make_objects(env):
    """alice: an image and a container; bob: an image, a container and a volume."""
    env.docker("alice", "import", "-", "alice-img:1", input=harness.busybox_rootfs_tar(marker="alice"))
    env.docker("alice", "create", "--name", "alice-box", "alice-img:1", "sh")
    env.docker("bob", "import", "-", "bob-img:1", input=harness.busybox_rootfs_tar(marker="bob"))
    env.docker("bob", "volume", "create", "bob-vol")
    env.docker("bob", "create", "--name", "bob-box", "-v", "bob-vol:/data", "bob-img:1", "sh")


def raw(env_sock, request, user, timeout=10):
    """Sends `request` (bytes) on the user socket as `user`, from a child
    process with that uid (SO_PEERCRED is taken at connect); returns the answer."""
    code = ("import socket,sys\n"
            "s=socket.socket(socket.AF_UNIX);s.settimeout(%d);s.connect(sys.argv[1])\n"
            "s.sendall(sys.stdin.buffer.read())\n"
            "out=b''\n"
            "try:\n"
            "  while True:\n"
            "    b=s.recv(65536)\n"
            "    if not b: break\n"
            "    out+=b\n"
            "except OSError: pass\n"
            "sys.stdout.buffer.write(out)\n" % timeout)
    kwargs = dict(user=USERS[user], group=USERS[user]) if user != "root" else {}
    p = subprocess.run([PYTHON, "-c", code, env_sock], input=request, capture_output=True, **kwargs)
    return p.stdout.decode(errors="replace")


def status_of(answer):
    try:
        return int(answer.split(" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def body_of(answer):
    return json.loads(answer.split("\r\n\r\n", 1)[1]) if "\r\n\r\n" in answer else None


def plugin_listed(env):
    for cli in CLIS:
        if not os.path.exists(cli):
            check(False, "%s is installed" % cli)
            continue
        e = {"PATH": "/usr/bin:/bin", "HOME": env.dir, "DOCKER_HOST": "unix://" + env.sock}
        helptext = subprocess.run([cli, "--help"], capture_output=True, env=e).stdout.decode()
        check(any(ln.strip().startswith("quota") for ln in helptext.splitlines()),
              "%s --help lists the quota plugin" % cli)
        info = subprocess.run([cli, "info", "--format", "{{json .ClientInfo.Plugins}}"], capture_output=True, env=e)
        plugins = json.loads(info.stdout or b"null") or []
        q = [p for p in plugins if p.get("Name") == "quota"]
        check(len(q) == 1 and q[0].get("Path") == os.path.join(PLUGIN_DIR, "docker-quota") and not q[0].get("Err"),
              "%s info lists the quota plugin from %s (%s)" % (cli, PLUGIN_DIR, q))


def users_see_their_own(env):
    for cli in CLIS:
        for user, uid, mine, theirs in (("alice", ALICE, "alice-box", "bob-box"),
                                        ("bob", BOB, "bob-box", "alice-box")):
            _, out, _ = quota(env, user, "--format", "json", cli=cli)
            q = json.loads(out)
            check(q["uid"] == uid and q["usage_bytes"] > 0 and uids_in(q) == {uid},
                  "%s: docker quota as %s: uid %d, %d bytes, no other uid in it" % (cli, user, uid, q["usage_bytes"]))
            _, table, _ = quota(env, user, cli=cli)
            other = "bob" if user == "alice" else "alice"
            check(user in table and other not in table and "docker" in table,
                  "%s: docker quota as %s: a table of %s's figures only" % (cli, user, user))
            _, out, _ = quota(env, user, "ls", "--format", "json", cli=cli)
            o = json.loads(out)
            names = [c["name"] for c in o["containers"]]
            check(names == [mine] and theirs not in out and uids_in(o) == {uid},
                  "%s: docker quota ls as %s: only %s (%s)" % (cli, user, mine, names))
            _, ls_table, _ = quota(env, user, "ls", cli=cli)
            check(mine in ls_table and theirs not in ls_table and "REMOVAL ORDER" in ls_table,
                  "%s: docker quota ls as %s: table with the removal order" % (cli, user))
            rc, out, _ = quota(env, user, "events", "--format", "json", cli=cli)
            check(rc == 0 and "events" in json.loads(out), "%s: docker quota events as %s parses" % (cli, user))
    bob_vol = json.loads(quota(env, "bob", "ls", "--format", "json")[1])["volumes"]
    check([v["name"] for v in bob_vol] == ["bob-vol"], "bob's volume is his (%s)" % bob_vol)
    # Root: its own by default, anyone's when asked.
    q = json.loads(quota(env, "root", "--format", "json")[1])
    check(q["uid"] == 0, "docker quota as root: uid 0")
    q = json.loads(quota(env, "root", "--uid", str(BOB), "--format", "json")[1])
    check(q["uid"] == BOB and q["usage_bytes"] > 0, "docker quota --uid bob as root: bob's figures")
    q = json.loads(quota(env, "root", "--user", "alice", "ls", "--format", "json")[1])
    check([c["name"] for c in q["containers"]] == ["alice-box"], "docker quota --user alice ls as root")
    # alice asking for bob: refused, exit 1, nothing of bob's.
    rc, out, err = quota(env, "alice", "--uid", str(BOB), "--format", "json", check_rc=False)
    check(rc == 1 and "bob" not in out and "only your own" in err, "alice --uid bob: refused (%d, %s)" % (rc, err.strip()))
    rc, _, err = quota(env, "alice", "--bogus", check_rc=False)
    check(rc == 2, "docker quota --bogus: usage error, exit 2")
    # alice over a 1 MiB limit: the level, the bar, and her container first in the removal order.
    harness.set_limit(env, ALICE, 1024)
    q = json.loads(quota(env, "alice", "--format", "json")[1])
    check(q["level"] == "over" and q["limit_bytes"] == 1 << 20, "alice over 1 MiB: level %s" % q["level"])
    table = quota(env, "alice")[1]
    check("of 1.0M" in table and "!]" in table and "over" in table, "alice's table shows the limit and a full bar")
    o = json.loads(quota(env, "alice", "ls", "--format", "json")[1])
    order = [(r["rank"], r["name"]) for r in o["removal_order"]]
    check(order == [(1, "alice-box")] and o["enforcement_mode"] == "dry-run",
          "alice's removal order: %s (enforcement %s)" % (order, o["enforcement_mode"]))


def hostile(env):
    s = env.user_sock
    for target in ("/v1/quota?uid=%d" % BOB, "/v1/objects?user=bob", "/v1/events?uid=%d" % BOB,
                   "/v1/quota?uid=%d&uid=%d" % (ALICE, BOB), "/v1/users", "/v1/quota?uid=0"):
        a = raw(s, ("GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % target).encode(), "alice")
        check(status_of(a) in (400, 403) and "bob-box" not in a and '"uid":%d' % BOB not in a.replace(" ", ""),
              "alice GET %s: %d, nothing of bob's" % (target, status_of(a)))
    for target in ("/v1/quota/../users", "/v1/%2e%2e/v1/users", "//v1/quota", "/v1/quota/", "/remote-api/quotas",
                   "/healthz"):
        a = raw(s, ("GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % target).encode(), "alice")
        check(status_of(a) == 404 and isinstance(body_of(a).get("msg"), str), "alice GET %s: 404 JSON" % target)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        a = raw(s, ("%s /v1/quota HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}" % method).encode(),
                "alice")
        check(status_of(a) == 405 and isinstance(body_of(a).get("msg"), str), "alice %s: 405 JSON" % method)
    # A header naming another uid changes nothing: the kernel's word counts.
    a = raw(s, b"GET /v1/quota HTTP/1.1\r\nX-Uid: 2002\r\nX-Forwarded-User: bob\r\nConnection: close\r\n\r\n", "alice")
    check(status_of(a) == 200 and body_of(a)["uid"] == ALICE, "a forged header is ignored: alice's figures")
    a = raw(s, b"GET /v1/quota?" + b"a" * 100000 + b" HTTP/1.1\r\n\r\n", "alice")
    check(status_of(a) == 414 and isinstance(body_of(a).get("msg"), str), "a 100 KB request line: 414 JSON")
    a = raw(s, b"GET /v1/quota HTTP/1.1\r\n" + b"X-A: " + b"b" * 60000 + b"\r\n\r\n", "alice")
    check(status_of(a) == 431, "a 60 KB header: 431 (%d)" % status_of(a))
    # Slow drip: a byte a second from 20 connections of alice's; bob is answered
    # at once meanwhile, and each drip is cut at the request deadline (5 s).
    code = ("import socket,sys,time\n"
            "cs=[]\n"
            "for i in range(20):\n"
            "  c=socket.socket(socket.AF_UNIX);c.connect(sys.argv[1]);cs.append(c)\n"
            "t=time.time();closed=0\n"
            "for b in b'GET /v1/quota HTTP/1.1\\r\\n'*4:\n"
            "  for c in cs:\n"
            "    try: c.send(bytes([b]))\n"
            "    except OSError: pass\n"
            "  time.sleep(0.5)\n"
            "  if time.time()-t>9: break\n"
            "ans=[]\n"
            "for c in cs:\n"
            "  c.settimeout(2)\n"
            "  try: ans.append(c.recv(100).split(b' ')[1].decode())\n"
            "  except Exception: ans.append('closed')\n"
            "print(' '.join(ans))\n")
    drip = subprocess.Popen([PYTHON, "-c", code, s], stdout=subprocess.PIPE, user=ALICE, group=ALICE)
    time.sleep(1.5)
    t0 = time.time()
    a = raw(s, b"GET /v1/quota HTTP/1.1\r\nConnection: close\r\n\r\n", "bob")
    took = time.time() - t0
    check(status_of(a) == 200 and body_of(a)["uid"] == BOB and took < 1.0,
          "bob answered in %.3f s while alice drips on 20 connections" % took)
    out = drip.communicate(timeout=30)[0].decode().split()
    check(len(out) == 20 and all(x in ("408", "closed") for x in out),
          "alice's 20 drips were cut at the deadline (%s)" % " ".join(sorted(set(out))))
    h = env.health()["user_socket"]
    # 16 connections per uid (UserApiOptions): the 17th evicts alice's own oldest.
    check(h["http"]["timeouts"]["head"] >= 1 and h["http"]["evicted"]["max_connections_per_peer"] >= 4,
          "/healthz user_socket counts the timeouts and evictions (%s)" % json.dumps(h["http"]))
    check(h["requests"]["forbidden"] >= 3 and h["requests"]["method_not_allowed"] >= 4,
          "/healthz user_socket counts refusals (%s)" % h["requests"])
    _, metrics = env.http_text("/metrics")
    check('dockquota_user_socket_requests_total{outcome="forbidden"} ' in metrics and
          'dockquota_user_socket_connections_cut_total{reason="head_timeout"} ' in metrics,
          "/metrics has the user socket's counters")
    mode = os.stat(s).st_mode & 0o7777
    dmode = os.stat(os.path.dirname(s)).st_mode & 0o7777
    check(mode == 0o666 and dmode == 0o755, "socket 0%o, directory 0%o" % (mode, dmode))


def ctl(env, *args, check_rc=None):
    p = subprocess.run([os.path.join(build_dir(env), "dockquotactl"), "--config",
                        os.path.join(env.dir, "config.json")] + list(args), capture_output=True)
    if check_rc is not None and p.returncode != check_rc:
        raise AssertionError("dockquotactl %s: exit %d (wanted %d): %s" % (args, p.returncode, check_rc,
                                                                           p.stderr.decode()))
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def dockquotactl(env):
    rc, out, _ = ctl(env, "set-limit", "alice", "50G", check_rc=0)
    status, body = env.http("/remote-api/quotas/users/%d" % ALICE)
    hard = next(u["block_hard_limit"] for d in body if d["name"] == "docker" for u in d["user_quotas"])
    check(hard == 50 * 1024 * 1024 and "50G" in out, "set-limit alice 50G: 52428800 KiB (%s)" % out.strip())
    rc, out, _ = ctl(env, "--json", "set-limit", str(BOB), "1.5T", check_rc=0)
    check(json.loads(out)["block_hard_limit"] == 3 << 29, "set-limit bob 1.5T --json: the agent's answer")
    rc, out, _ = ctl(env, "--json", "users", check_rc=0)
    users = {u["user"]: u for u in json.loads(out)["users"]}
    check(users["alice"]["limit_bytes"] == 50 << 30 and users["bob"]["limit_bytes"] == 3 << 39,
          "users --json: alice 50G, bob 1.5T")
    rc, out, _ = ctl(env, "users", check_rc=0)
    check(out.startswith("USER") and "alice" in out and "50G" in out and "1.5T" in out, "users: a table")
    rc, out, _ = ctl(env, "top", "3", "--json", check_rc=0)
    objs = json.loads(out)["objects"]
    check(0 < len(objs) <= 3 and objs == sorted(objs, key=lambda o: -o["size_bytes"]), "top 3 --json: largest first")
    rc, out, _ = ctl(env, "top", check_rc=0)
    check("KIND" in out and "alice" in out, "top: a table")
    ctl(env, "exempt", "user", "alice", "--reason", "e2e", check_rc=0)
    rc, out, _ = ctl(env, "exempt", "--json", check_rc=0)
    check(any(x["id"] == str(ALICE) and x["reason"] == "e2e" for x in json.loads(out)["exemptions"]),
          "exempt user alice: listed")
    rc, out, _ = ctl(env, "exempt", check_rc=0)
    check("e2e" in out, "exempt: a table")
    ctl(env, "exempt", "--remove", "user", "alice", check_rc=0)
    check(ctl(env, "exempt", "--remove", "user", "alice")[0] == 1, "exempt --remove again: the agent says no, exit 1")
    cid = env.docker("root", "inspect", "-f", "{{.Id}}", "alice-box")
    rc, out, _ = ctl(env, "attribute", "container", cid, "bob", "--json", check_rc=0)
    check(json.loads(out) == {"status": "ok"}, "attribute --json: the agent's answer")
    q = json.loads(quota(env, "bob", "ls", "--format", "json")[1])
    check("alice-box" in [c["name"] for c in q["containers"]], "attribute alice-box to bob: bob sees it")
    ctl(env, "unattribute", "container", cid, check_rc=0)
    q = json.loads(quota(env, "alice", "ls", "--format", "json")[1])
    check("alice-box" in [c["name"] for c in q["containers"]], "unattribute: alice has it again")
    rc, out, _ = ctl(env, "events", "--limit", "5", "--json", check_rc=0)
    check("events" in json.loads(out), "events --json parses")
    check(ctl(env, "events")[0] == 0, "events: a table")
    rc, out, _ = ctl(env, "health", "--json")
    h = json.loads(out)
    check(rc == (0 if h["status"] == "ok" else 1), "health: exit %d for %s" % (rc, h["status"]))
    for bad in (["set-limit", "alice", "50X"], ["set-limit", "alice"], ["frobnicate"], [], ["top", "x"],
                ["attribute", "container", cid], ["exempt", "group", "x"]):
        check(ctl(env, *bad)[0] == 2, "dockquotactl %s: usage error, exit 2" % " ".join(bad))
    check(ctl(env, "set-limit", "nosuchuser", "1G")[0] == 1, "set-limit nosuchuser: the agent says no, exit 1")
    check(ctl(env, "attribute", "container", "f" * 64, "bob")[0] == 1, "attribute an unknown container: exit 1")
    p = subprocess.run([os.path.join(build_dir(env), "dockquotactl"), "--url", "http://127.0.0.1:%d" % env.port,
                        "--key-file", "/nonexistent", "users"], capture_output=True)
    check(p.returncode == 3, "an unreadable key: exit 3")


def agent_down(env):
    env.stop_agent()
    rc, out, err = quota(env, "alice", check_rc=False)
    check(rc == 3 and "cannot reach the dockquota agent" in err and out == "",
          "docker quota with the agent down: exit 3, %s" % err.strip().splitlines()[0])
    rc, _, err = ctl(env, "users")
    check(rc == 3, "dockquotactl users with the agent down: exit 3")


def run(env):
    env.start_dockerd()
    env.start_agent(usage_interval_s=5, enforcement="dry-run")
    undo = install_plugin(env)
    try:
        make_objects(env)
        wait_for("alice's and bob's figures", lambda: all(
            json.loads(quota(env, "root", "--uid", str(u), "--format", "json")[1])["usage_bytes"] > 0
            for u in (ALICE, BOB)), timeout=60)
        plugin_listed(env)
        users_see_their_own(env)
        hostile(env)
        dockquotactl(env)
        agent_down(env)
    finally:
        undo()


if __name__ == "__main__":
    harness.main(run, failures)
