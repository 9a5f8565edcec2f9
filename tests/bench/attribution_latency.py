#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Attribution latency: Docker's `Created` time of a
container -> the moment the agent's API lists it with its owner, idle and with
both cores busy, side by side in one run. A benchmark, not a test: it prints
figures (p50/p90/p99/max) and fails only if it could not measure.

    python3 tests/bench/attribution_latency.py --agent build/dockquotad [-n 200] [--busy 2]

Needs root, dockerd, busybox (like the e2e tests, whose harness it uses). The
creates are made by alice (uid 2001) over the Engine API with python's
http.client, one connection per create as the docker CLI does; a root poller
asks GET /api/v1/containers every millisecond meanwhile. `Created` is
dockerd's own clock (same host clock as ours), stamped before it answers.
The loaded phase runs `--busy` spinning processes (default: one per core)."""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import base64
import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
import harness  # noqa: E402
from harness import USERS, GROUP  # noqa: E402

# alice's side: one create per line read on stdin; prints the id (or an error).
CLIENT = r'''
import http.client, json, socket, sys
sock_path = sys.argv[1]
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sock_path)
body = json.dumps({"Image": "base:1", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
for line in sys.stdin:
    c = C("docker")
    c.request("POST", "/v1.41/containers/create", body, {"Content-Type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close()
    print(json.loads(data).get("Id", "error %d" % r.status), flush=True)
'''
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def parse_created(s):
    """Docker's RFC 3339 with nanoseconds -> unix seconds (float)."""
    s = s.rstrip("Z")
    base, _, frac = s.partition(".")
    t = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def docker_get(env, path):
    out = subprocess.run(["curl", "-sf", "--unix-socket", env.sock, "http://d/v1.41" + path],
                         capture_output=True, check=True).stdout
    return json.loads(out)


def docker_delete(env, cid):
    subprocess.run(["curl", "-sf", "-X", "DELETE", "--unix-socket", env.sock,
                    "http://d/v1.41/containers/%s?force=1" % cid], capture_output=True)


def measure(env, n, label):
    auth = "Basic " + base64.b64encode(("api:" + harness.API_KEY).encode()).decode()
    url = "http://127.0.0.1:%d/api/v1/containers" % env.port
    client = subprocess.Popen([PYTHON, "-c", CLIENT, env.sock], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, user=USERS["alice"], group=USERS["alice"], extra_groups=[GROUP])
    lat = []  # (Created -> listed, Created -> Docker's reply as the probe saw it (attributed_at))
    try:
        for i in range(n):
            known = set()
            client.stdin.write("go\n")
            client.stdin.flush()
            listed_at = None
            deadline = time.time() + 10
            while time.time() < deadline:
                req = urllib.request.Request(url, headers={"Authorization": auth})
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = json.loads(r.read())
                owned = [o for o in body["containers"] if o.get("uid") == USERS["alice"]]
                if owned:
                    listed_at = time.time()
                    replied = owned[0].get("attributed_at")
                    break
                time.sleep(0.001)
            cid = client.stdout.readline().strip()
            if len(cid) != 64:
                raise AssertionError("create failed: " + cid)
            created = parse_created(docker_get(env, "/containers/%s/json" % cid)["Created"])
            if listed_at is None:
                raise AssertionError("%s: container %s not listed with an owner within 10 s" % (label, cid[:12]))
            if isinstance(replied, str):
                replied = parse_created(replied)
            lat.append((listed_at - created, (replied - created) if replied else float("nan"), cid, replied))
            docker_delete(env, cid)
            # the removal is confirmed (404 or destroy event) before the next create
            t = time.time()
            while time.time() - t < 5:
                req = urllib.request.Request(url, headers={"Authorization": auth})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if not json.loads(r.read())["containers"]:
                        break
                time.sleep(0.005)
            time.sleep(0.02)
    finally:
        client.stdin.close()
        client.wait(timeout=10)
    return lat


def commit_times(env):
    """short container id -> the agent's log time of 'attribution: container X -> uid'
    (written right after the store's commit)."""
    out = {}
    with open(env.agent_log, errors="replace") as f:
        for line in f:
            if "attribution: container " in line and " -> uid " in line:
                short = line.split("attribution: container ", 1)[1].split(" ", 1)[0]
                out[short] = parse_created(line.split(" ", 1)[0])
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--config", default="{}", help="extra agent config, JSON")
    args = ap.parse_args()
    harness.require_prerequisites()
    harness.ensure_users()
    env = harness.Env(args.agent)
    spinners = []
    try:
        env.start_dockerd()
        env.run_as("root", ["docker", "import", "-", "base:1"], input=harness.busybox_rootfs_tar())
        env.start_agent(log_level="info", **json.loads(args.config))
        load = [open("/proc/loadavg").read().split()[0]]
        measure(env, 5, "warm-up")
        idle = measure(env, args.n, "idle")
        spinners = [subprocess.Popen([PYTHON, "-c", "while True: pass"]) for _ in range(args.busy)]
        time.sleep(1)
        loaded = measure(env, args.n, "loaded")
        load.append(open("/proc/loadavg").read().split()[0])
        committed = commit_times(env)
    finally:
        for s in spinners:
            s.kill()
        env.cleanup()
    print("attribution latency, Docker's Created -> listed with its owner by GET /api/v1/containers "
          "(n=%d each, %d spinning processes when loaded, %d cores)" % (args.n, args.busy, os.cpu_count()))
    print("load average before/after: %s" % load)
    print("%-8s %-26s %8s %8s %8s %8s" % ("", "", "p50 ms", "p90 ms", "p99 ms", "max ms"))
    for name, pairs in (("idle", idle), ("loaded", loaded)):
        for part, xs in (("Created -> listed", [p[0] for p in pairs]),
                         ("Created -> reply (probe)", [p[1] for p in pairs]),
                         ("reply (probe) -> stored", [committed[p[2][:12]] - p[3] for p in pairs
                                                      if p[2][:12] in committed]),
                         ("reply (probe) -> listed", [p[0] - p[1] for p in pairs])):
            print("%-8s %-26s %8.1f %8.1f %8.1f %8.1f" % (name, part, pct(xs, 50) * 1e3, pct(xs, 90) * 1e3,
                                                          pct(xs, 99) * 1e3, max(xs) * 1e3))


if __name__ == "__main__":
    main()
