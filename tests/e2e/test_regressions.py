#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""End-to-end regression cases of the attribution core, each on its own dockerd and agent,
each asserting the correct outcome (they fail on the agent of commit 631f42c):

  (1) fd and address reuse: a malformed request, dockerd's 400 with
      Connection: close read but not its EOF, close, a new connection (same fd
      number) and a create: 8 of 8 such creates billed to their maker, in
      each of three rounds.
  (2) the uid of each request: a root process pings with Connection: close,
      setuid(bob), creates on a new connection -> bob; a root process pings,
      setuid(bob), creates on the same connection -> bob; a root process whose
      forked children setuid to alice and bob and create on its connection ->
      alice, bob, and root for its own create.
  (3) the mute race: on one keep-alive connection, "list (a long reply), then
      create" again and again, with Python http.client and with curl --next:
      every create attributed.
  (5) the pairing slip: bob sends GET /_ping padded to 5,000 bytes in one
      write and, pipelined in the next, DELETE of alice's running container
      (and of her volume in use); dockerd answers 409: both stay listed and billed to alice, also
      after an agent restart.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import USERS  # noqa: E402
from zoo import proc, rawhttp  # noqa: E402
from zoo.clients import UnixHTTPConnection  # noqa: E402

failures = []
check = harness.checker(failures)
BASE = "regr-base:1"
CREATE = {"Image": BASE, "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}


def setup(env, before_agent=None):
    """dockerd, the base image (made before the agent: unattributed), the agent."""
    env.start_dockerd()
    r = rawhttp.once(env.sock, "POST", "/images/create?fromSrc=-&repo=regr-base&tag=1",
                     harness.busybox_rootfs_tar(marker="regr"), content_type="application/x-tar")
    assert r.status == 200, r
    if before_agent:
        before_agent(env)
    env.start_agent()


def owners(env, kind, ids, timeout=5.0):
    """id -> the listed object once it has an owner, else what is listed (or
    None), waiting up to timeout for all of them."""
    deadline = time.time() + timeout
    while True:
        listed = env.listing(kind)
        got = {i: listed.get(i) for i in ids}
        if all(o is not None and o.get("uid") is not None for o in got.values()) or time.time() > deadline:
            return got
        time.sleep(0.05)


def describe(o):
    if o is None:
        return "not listed"
    return "uid %s (source %s)" % (o.get("uid"), o.get("source"))


# -- (1) ---------------------------------------------------------------------------------

def fd_reuse(env):
    """8 times: malformed request, read dockerd's 400 (Connection: close)
    without its EOF, close, new connection, create. Three rounds (each in its
    own process): on the agent of 631f42c the loss comes and goes."""
    setup(env)
    for round_ in (1, 2, 3):
        fd_reuse_round(env, round_)


def fd_reuse_round(env, round_):
    alice = USERS["alice"]

    def client():
        out = []
        for _ in range(8):
            c = rawhttp.Conn(env.sock)
            fd1 = c.fileno()
            c.send(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nBad Header Line\r\n\r\n")
            r = c.read_head()
            c.close()  # without reading to EOF
            c = rawhttp.Conn(env.sock)
            fd2 = c.fileno()
            rr = c.call("POST", "/containers/create", CREATE)
            c.close()
            out.append({"bad": r.status, "close": r.headers.get("connection"), "same_fd": fd1 == fd2,
                        "status": rr.status, "id": rr.json().get("Id")})
        return out
    res = proc.in_child(client, uid=alice)
    check(all(x["bad"] == 400 and x["close"] == "close" and x["status"] == 201 for x in res),
          "(1) round %d: dockerd answered each malformed request 400 with Connection: close, and each create 201 (%s)" % (
              round_, [(x["bad"], x["status"]) for x in res]))
    same = sum(x["same_fd"] for x in res)
    check(same == 8, "(1) round %d: the new connection got the closed one's fd number (%d of 8)" % (round_, same))
    got = owners(env, "containers", [x["id"] for x in res if x["id"]])
    billed = sum(1 for o in got.values() if o and o.get("uid") == alice)
    check(billed == 8, "(1) round %d: creates on a reused fd billed to alice: %d of 8 (%s)" % (
        round_, billed, ", ".join(sorted({describe(o) for o in got.values()}))))


# -- (2) ---------------------------------------------------------------------------------

def uid_per_request(env):
    setup(env)
    alice, bob = USERS["alice"], USERS["bob"]

    def between():
        # root: ping with Connection: close, setuid(bob), create on a new connection
        c = rawhttp.Conn(env.sock)
        r = c.call("GET", "/_ping", close=True)
        c.close()
        assert r.status == 200, r
        proc.become(bob)
        c = rawhttp.Conn(env.sock)
        rr = c.call("POST", "/containers/create", CREATE, close=True)
        c.close()
        return [os.getuid(), rr.status, rr.json().get("Id")]
    ids = []
    for _ in range(4):
        uid, status, cid = proc.in_child(between)
        check(uid == bob and status == 201, "(2a) root pinged, became bob (uid %d), created: %d" % (uid, status))
        ids.append(cid)
    got = owners(env, "containers", ids)
    n = sum(1 for o in got.values() if o and o.get("uid") == bob)
    check(n == len(ids), "(2a) setuid between connections: creates billed to bob: %d of %d (%s)" % (
        n, len(ids), ", ".join(sorted({describe(o) for o in got.values()}))))

    def same_conn():
        # one process, one connection: ping as root, setuid(bob), create
        c = rawhttp.Conn(env.sock)
        r = c.call("GET", "/_ping")
        assert r.status == 200, r
        proc.become(bob)
        rr = c.call("POST", "/containers/create", CREATE)
        c.close()
        return [rr.status, rr.json().get("Id")]
    status, cid = proc.in_child(same_conn)
    o = owners(env, "containers", [cid])[cid]
    check(status == 201 and o is not None and o.get("uid") == bob,
          "(2b) setuid within one connection: ping as root, create as bob -> %s" % describe(o))

    def shared_fd():
        # root connects and pings; forked children setuid to alice and bob and
        # each create on the shared connection; then root creates on it.
        c = rawhttp.Conn(env.sock)
        r = c.call("GET", "/_ping")
        assert r.status == 200, r
        made = []
        for uid in (alice, bob):
            def child():
                rr = c.call("POST", "/containers/create", CREATE)
                return [os.getuid(), rr.status, rr.json().get("Id")]
            made.append(proc.in_child(child, uid=uid))
        rr = c.call("POST", "/containers/create", CREATE)
        made.append([os.getuid(), rr.status, rr.json().get("Id")])
        c.close()
        return made
    made = proc.in_child(shared_fd)
    check(all(s == 201 for _, s, _ in made), "(2c) three creates on the shared connection: %s" % [s for _, s, _ in made])
    got = owners(env, "containers", [cid for _, _, cid in made])
    for uid, _, cid in made:
        o = got.get(cid)
        check(o is not None and o.get("uid") == uid,
              "(2c) fd shared across fork, child as uid %d: billed %s" % (uid, describe(o)))


# -- (3) ---------------------------------------------------------------------------------

def many_containers(env):
    """40 containers with long labels, made before the agent: the list reply
    is long (well over the 4 KiB the agent reads unmuted)."""
    for i in range(40):
        body = dict(CREATE, Labels={"regr.filler.%d" % k: "x" * 40 for k in range(8)})
        r = rawhttp.once(env.sock, "POST", "/containers/create?name=filler-%d" % i, body)
        assert r.status == 201, r


def mute_race(env):
    setup(env, before_agent=many_containers)
    carol, dave = USERS["carol"], USERS["dave"]
    n_py, n_curl = 15, 10

    def python_client():
        c = UnixHTTPConnection(env.sock)
        out = []
        for _ in range(n_py):
            c.request("GET", "/v1.41/containers/json?all=1")
            r = c.getresponse()
            body = r.read()
            c.request("POST", "/v1.41/containers/create", body=json.dumps(CREATE),
                      headers={"Content-Type": "application/json"})
            rr = c.getresponse()
            out.append([len(body), rr.status, json.loads(rr.read()).get("Id")])
        c.close()
        return out
    res = proc.in_child(python_client, uid=carol)
    check(all(s == 201 for _, s, _ in res) and min(n for n, _, _ in res) > 8192,
          "(3a) http.client keep-alive: %d lists (%d+ bytes each) and creates (%s)" % (
              len(res), min(n for n, _, _ in res), sorted({s for _, s, _ in res})))
    got = owners(env, "containers", [cid for _, _, cid in res])
    n = sum(1 for o in got.values() if o and o.get("uid") == carol)
    check(n == n_py, "(3a) list then create on one connection (Python http.client): %d of %d creates billed to carol (%s)" % (
        n, n_py, ", ".join(sorted({describe(o) for o in got.values()}))))

    tmp = tempfile.mkdtemp(dir=env.homes["dave"])
    os.chown(tmp, dave, dave)
    body_file = os.path.join(tmp, "create.json")
    with open(body_file, "w") as f:
        json.dump(CREATE, f)
    argv = ["curl", "-sS"]
    outs = []
    for i in range(n_curl):
        for kind in ("list", "create"):
            if argv[-1] != "-sS":
                argv.append("--next")
            out = os.path.join(tmp, "%s-%d" % (kind, i))
            argv += ["--unix-socket", env.sock, "-o", out, "-w", "%{http_code} %{num_connects}\\n"]
            if kind == "list":
                argv.append("http://docker/v1.41/containers/json?all=1")
            else:
                outs.append(out)
                argv += ["-H", "Content-Type: application/json", "--data-binary", "@" + body_file,
                         "http://docker/v1.41/containers/create"]
    p = subprocess.run(argv, capture_output=True, user=dave, group=dave, extra_groups=[harness.GROUP])
    lines = [ln.split() for ln in p.stdout.decode().splitlines()]
    connects = sum(int(c) for _, c in lines)
    check(p.returncode == 0 and len(lines) == 2 * n_curl and connects == 1,
          "(3b) curl --next: %d transfers on %d connection(s), rc %d %s" % (len(lines), connects, p.returncode,
                                                                            p.stderr.decode()[:200]))
    ids = []
    for out in outs:
        with open(out) as f:
            ids.append(json.load(f).get("Id"))
    got = owners(env, "containers", ids)
    n = sum(1 for o in got.values() if o and o.get("uid") == dave)
    check(n == n_curl, "(3b) list then create on one connection (curl --next): %d of %d creates billed to dave (%s)" % (
        n, n_curl, ", ".join(sorted({describe(o) for o in got.values()}))))


# -- (5) ---------------------------------------------------------------------------------

def pairing_slip(env):
    setup(env)
    alice, bob = USERS["alice"], USERS["bob"]
    env.docker("alice", "volume", "create", "alicevol")
    cid = env.docker("alice", "run", "-d", "--network", "none", "-v", "alicevol:/data", BASE, "sleep", "600")
    got = owners(env, "containers", [cid])
    vol = owners(env, "volumes", ["alicevol"])
    check(got[cid] is not None and got[cid].get("uid") == alice and vol["alicevol"] is not None and
          vol["alicevol"].get("uid") == alice,
          "(5) alice's running container and her volume are billed to her (%s, %s)" % (
              describe(got[cid]), describe(vol["alicevol"])))

    def bob_client():
        pad = "GET /_ping HTTP/1.1\r\nHost: docker\r\nX-Pad: %s\r\n\r\n" % ("p" * 5000)
        out = []
        for target in ("/containers/" + cid, "/volumes/alicevol"):
            c = rawhttp.Conn(env.sock)
            c.send(pad.encode())  # one write of a head longer than the probe's 4096-byte prefix
            c.send(rawhttp.request("DELETE", target))  # then, pipelined, the removal
            r1 = c.read_response("GET")
            r2 = c.read_response("DELETE")
            c.close()
            out.append([r1.status, r2.status])
        return out
    res = proc.in_child(bob_client, uid=bob)
    check(res == [[200, 409], [200, 409]], "(5) dockerd answered bob's ping 200 and both removals 409 (%s)" % res)
    r = rawhttp.once(env.sock, "GET", "/containers/%s/json" % cid)
    running = r.status == 200 and r.json()["State"]["Running"]
    v = rawhttp.once(env.sock, "GET", "/volumes/alicevol")
    check(running and v.status == 200, "(5) Docker still has alice's running container and her volume")
    time.sleep(2.0)  # what the agent makes of the exchange is in by now
    listed_c = env.listing("containers").get(cid)
    listed_v = env.listing("volumes").get("alicevol")
    check(listed_c is not None and listed_c.get("uid") == alice,
          "(5) after bob's padded removal, alice's container is listed and billed to her: %s" % describe(listed_c))
    check(listed_v is not None and listed_v.get("uid") == alice,
          "(5) after bob's padded removal, alice's volume is listed and billed to her: %s" % describe(listed_v))
    env.stop_agent()
    env.start_agent()
    listed_c = env.listing("containers").get(cid)
    listed_v = env.listing("volumes").get("alicevol")
    check(listed_c is not None and listed_c.get("uid") == alice and listed_c.get("source") == "bpf",
          "(5) after an agent restart, alice's container is still billed to her: %s" % describe(listed_c))
    check(listed_v is not None and listed_v.get("uid") == alice and listed_v.get("source") == "bpf",
          "(5) after an agent restart, alice's volume is still billed to her: %s" % describe(listed_v))


def run(env):
    harness.run_scenarios(env, [fd_reuse, uid_per_request, mute_race, pairing_slip], check)


if __name__ == "__main__":
    harness.main(run, failures)
