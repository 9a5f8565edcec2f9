#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Attribution end to end: a real dockerd, users alice/bob/carol in its socket
group, the real agent with its BPF probes, and every kind of client.

Each object must be listed with the right uid (and login uid) within 1 s of the
client getting Docker's reply; labels never outrank kernel evidence; hostile
bytes on the socket are counted and change nothing; objects created while the
agent was down are unattributed after a restart, removed ones are gone, and
everything attributed before is unchanged."""
import http.client
import json
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS  # noqa: E402

failures = []
latencies = []


check = harness.checker(failures)


def expect_owner(env, kind, match, uid, login_uid=None, what="", source="bpf", billed=None):
    obj, secs = env.wait_listed(kind, lambda o: match(o) and o.get("uid") is not None)
    if obj is None:
        any_obj, _ = env.wait_listed(kind, match, timeout=0)
        check(False, "%s: listed with an owner within 1 s (found: %s)" % (what, json.dumps(any_obj)))
        return None
    latencies.append(secs)
    ok = obj["uid"] == uid and obj["source"] == source
    if login_uid is not None:
        ok = ok and obj["login_uid"] == login_uid
    if billed is not None:
        ok = ok and obj["billed_uid"] == billed
    check(ok, "%s: uid %s login_uid %s billed %s source %s, listed after %.0f ms" % (
        what, obj["uid"], obj["login_uid"], obj["billed_uid"], obj["source"], secs * 1000))
    return obj


def python_http_create(sock_path, body):
    """A third kind of client: Python's http.client over the unix socket."""
    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(sock_path)
    c = UnixConnection("localhost")
    c.request("POST", "/v1.41/containers/create?name=carol-py", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return data["Id"]


def hostile(env):
    """Bytes any docker-group user can write to the socket."""
    rnd = random.Random(1234)
    payloads = [
        bytes(rnd.getrandbits(8) for _ in range(200000)),                      # random garbage
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Le",    # truncated head
        b"GET /_ping HTTP/1.1\r\nX-Big: " + b"a" * 300000 + b"\r\n\r\n",      # oversized head
        b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\n",   # bad chunk size
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\n{\"Id\"",             # a fake "response" sent as a request
        b"\r\n" * 5000,
    ]
    code = ("import socket,sys\n"
            "for p in sys.stdin.buffer.read().split(b'\\0SEP\\0'):\n"
            "  s=socket.socket(socket.AF_UNIX); s.connect(%r); s.settimeout(2)\n"
            "  try:\n"
            "    s.sendall(p); s.recv(65536)\n"
            "  except Exception: pass\n"
            "  s.close()\n") % env.sock
    env.run_as("bob", ["python3", "-c", code], input=b"\0SEP\0".join(payloads), check=False)


def summary():
    if latencies:
        latencies.sort()
        print("attribution latency after the client returned: n=%d median %.0f ms max %.0f ms" % (
            len(latencies), latencies[len(latencies) // 2] * 1000, latencies[-1] * 1000))


def run(env):
    env.start_dockerd()
    # A base image made before the agent runs: it must come up unattributed.
    env.run_as("root", ["docker", "import", "-", "base:1"], input=harness.busybox_rootfs_tar())
    doomed = env.docker("root", "create", "--network", "none", "base:1", "true")

    h = env.start_agent()
    check(h["probes"]["docker_sock"]["attached"], "healthz: docker.sock probe attached")
    check(h["probes"]["exec"]["attached"], "healthz: exec probe attached")
    check(h["docker"]["connected"], "healthz: connected to Docker")
    base = [o for o in env.listing("images").values() if o["name"] == "base:1"]
    check(len(base) == 1 and base[0]["source"] == "unattributed", "pre-existing image is unattributed")
    pre = env.listing("containers").get(doomed)
    check(pre is not None and pre["source"] == "unattributed", "pre-existing container is unattributed")

    owners = {}  # id -> (uid, login_uid) for the restart check
    a = USERS["alice"]
    b = USERS["bob"]
    c = USERS["carol"]

    # alice: docker create and docker run (the docker CLI on PATH)
    cid = env.docker("alice", "create", "--network", "none", "--name", "alice-create", "base:1", "sleep", "600")
    o = expect_owner(env, "containers", lambda o: o["id"] == cid, a, what="alice docker create")
    if o:
        check(o["exe"].endswith("/docker"), "alice's container records the docker CLI as exe (%s)" % o["exe"])
        check(o["name"] == "alice-create", "container name recorded (%s)" % o["name"])
        owners[cid] = o
    rid = env.docker("alice", "run", "-d", "--network", "none", "--name", "alice-run", "base:1", "sleep", "600")
    o = expect_owner(env, "containers", lambda o: o["id"] == rid, a, what="alice docker run")
    owners[rid] = o

    # bob: curl --unix-socket, with a label claiming alice
    body = json.dumps({"Image": "base:1", "Cmd": ["true"], "Labels": {"qman.user": "alice"},
                       "HostConfig": {"NetworkMode": "none"}})
    out = env.run_as("bob", ["curl", "-sS", "--unix-socket", env.sock, "-H", "Content-Type: application/json",
                             "-d", body, "http://localhost/v1.41/containers/create?name=bob-curl"])
    bid = json.loads(out)["Id"]
    o = expect_owner(env, "containers", lambda o: o["id"] == bid, b, what="bob curl create labelled qman.user=alice")
    if o:
        check(o["label_user"] == "alice", "the qman.user label is recorded but not trusted")
        check(o["exe"].endswith("curl"), "curl recorded as exe (%s)" % o["exe"])
    owners[bid] = o

    # carol: Python http.client (send/recv, not write/read)
    code = ("import sys,json; sys.path.insert(0,%r); import test_attribution as t; "
            "print(t.python_http_create(%r, {'Image':'base:1','Cmd':['true'],'HostConfig':{'NetworkMode':'none'}}))"
            % (os.path.dirname(os.path.abspath(__file__)), env.sock))
    pid_ = env.run_as("carol", ["python3", "-c", code])
    owners[pid_] = expect_owner(env, "containers", lambda o: o["id"] == pid_, c, what="carol python http.client create")

    # alice imports an image
    iid = env.docker("alice", "import", "-", "alice-imported:1", input=harness.busybox_rootfs_tar())
    owners[iid] = expect_owner(env, "images", lambda o: o["id"] == iid, a, what="alice docker import")

    # bob builds one (offline, FROM an imported image), with Debian's docker 20.10 CLI and the legacy builder
    ctx = os.path.join(env.homes["bob"], "ctx")
    os.makedirs(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM base:1\nCOPY hello /hello\nLABEL built=by-bob\n")
    with open(os.path.join(ctx, "hello"), "w") as f:
        f.write("hello\n" * 1000)
    os.system("chown -R %d:%d %s" % (b, b, ctx))
    docker_cli = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    env.run_as("bob", [docker_cli, "build", "-q", "-t", "bob-built:1", ctx], env_extra={"DOCKER_BUILDKIT": "0"})
    o = expect_owner(env, "images", lambda o: o["name"] == "bob-built:1", b, what="bob docker build (legacy builder)")
    if o:
        owners[o["id"]] = o

    # alice commits her container
    cimg = env.docker("alice", "commit", cid, "alice-committed:1")
    owners[cimg] = expect_owner(env, "images", lambda o: o["id"] == cimg, a, what="alice docker commit")

    # bob creates a named volume
    env.docker("bob", "volume", "create", "bobvol")
    owners["bobvol"] = expect_owner(env, "volumes", lambda o: o["id"] == "bobvol", b, what="bob volume create")

    # alice: a container with an anonymous volume
    avc = env.docker("alice", "create", "--network", "none", "-v", "/data", "base:1", "true")
    owners[avc] = expect_owner(env, "containers", lambda o: o["id"] == avc, a, what="alice create with -v /data")
    vol = expect_owner(env, "volumes", lambda o: o.get("container") == avc, a, what="alice's anonymous volume")
    if vol:
        owners[vol["id"]] = vol

    # root acting for alice (login uid 2001), like `sudo docker ...`
    sid = env.docker("root", "create", "--network", "none", "base:1", "true", loginuid=a)
    owners[sid] = expect_owner(env, "containers", lambda o: o["id"] == sid, 0, login_uid=a, billed=a,
                               what="root with login uid 2001 (sudo) create")

    # hostile bytes from an unprivileged docker user
    before = env.health()["stream"]
    hostile(env)
    time.sleep(0.5)
    h = env.health()
    after = h["stream"]
    check(env.agent.poll() is None, "agent survives hostile input")
    check(after["parse_errors"] > before["parse_errors"],
          "hostile input is counted (parse_errors %d -> %d)" % (before["parse_errors"], after["parse_errors"]))
    post = env.docker("alice", "create", "--network", "none", "base:1", "true")
    owners[post] = expect_owner(env, "containers", lambda o: o["id"] == post, a, what="attribution still works after hostile input")
    check(env.listing("containers")[bid]["uid"] == b, "hostile input changed nothing stored")

    # restart: created while down -> unattributed; removed while down -> gone
    check(env.stop_agent() == 0, "agent stops cleanly on SIGTERM")
    down = env.docker("alice", "create", "--network", "none", "base:1", "true")
    env.docker("root", "rm", "-f", rid)
    env.start_agent()
    now = env.listing("containers")
    check(down in now and now[down]["source"] == "unattributed" and now[down]["uid"] is None,
          "container created while the agent was down is unattributed")
    check(rid not in now, "container removed while the agent was down is gone")
    listed = {}
    for kind in ("containers", "images", "volumes"):
        listed.update(env.listing(kind))
    for oid, was in owners.items():
        if was is None or oid == rid:
            continue
        cur = listed.get(oid)
        same = cur is not None and all(cur[k] == was[k] for k in ("uid", "login_uid", "source", "billed_uid"))
        check(same, "after restart %s %s is unchanged" % (was.get("name") or "", oid[:19]))

    # removal by a user is seen while running
    env.docker("bob", "rm", bid)
    deadline = time.time() + 1
    while time.time() < deadline and bid in env.listing("containers"):
        time.sleep(0.02)
    check(bid not in env.listing("containers"), "a removed container disappears from the list within 1 s")

    # dockerd restarts under the running agent: a new socket inode, a new
    # events stream, a reconcile; attribution goes on without a restart of ours.
    before = env.health()["docker"]["reconnects"]
    env.stop_dockerd()
    env.start_dockerd()
    deadline = time.time() + 30
    while time.time() < deadline:
        d = env.health()["docker"]
        if d["connected"] and d["reconnects"] > before:
            break
        time.sleep(0.1)
    check(env.health()["docker"]["reconnects"] > before, "the agent reconnects to a restarted dockerd")
    again = env.docker("bob", "create", "--network", "none", "base:1", "true")
    expect_owner(env, "containers", lambda o: o["id"] == again, b, what="attribution after dockerd restarted")

    k = env.health()["probes"]["docker_sock"]["kernel_counters"]
    check(k["ringbuf_full"] == 0, "no ring buffer drops (%s)" % json.dumps(k))


if __name__ == "__main__":
    harness.main(run, failures, summary)
