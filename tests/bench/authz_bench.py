#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What admission control costs Docker: two dockerds side by side in one run,
one started with --authorization-plugin (the agent's), one without, both
watched by the same agent (so attribution costs both the same), requests
interleaved A, B, A, B... A benchmark, not a test: it prints figures and
fails only if it could not measure.

    python3 tests/bench/authz_bench.py --agent build/dockquotad [-n 300] [--runs 40]

  create   POST /containers/create over the Engine API as alice (a judged
           request: paired, figures read), one connection per create as the
           docker CLI makes them: p50/p99/max per daemon and the difference
  run      `docker run --rm --network none base true` as alice, wall time

Needs root, dockerd, busybox (the e2e harness's prerequisites)."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))
import harness  # noqa: E402
from harness import USERS, GROUP  # noqa: E402
import test_admission  # noqa: E402

# alice's side: for each line naming a socket, one create on it; prints the
# milliseconds it took (or an error).
CLIENT = r'''
import http.client, json, socket, sys, time
class C(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("docker")
        self.path_ = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path_)
body = json.dumps({"Image": "base", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
for line in sys.stdin:
    t = time.perf_counter()
    c = C(line.strip())
    c.request("POST", "/v1.41/containers/create", body, {"Content-Type": "application/json"})
    r = c.getresponse(); r.read(); c.close()
    ms = (time.perf_counter() - t) * 1000
    print("%.3f" % ms if r.status == 201 else "error %d" % r.status, flush=True)
'''
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def row(name, xs):
    return "%-22s n=%4d  p50 %8.2f  p90 %8.2f  p99 %8.2f  max %8.2f  mean %8.2f" % (
        name, len(xs), pct(xs, 50), pct(xs, 90), pct(xs, 99), max(xs), statistics.mean(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("-n", type=int, default=300, help="creates per daemon")
    ap.add_argument("--runs", type=int, default=40, help="docker runs per daemon")
    args = ap.parse_args()
    harness.require_prerequisites()
    harness.ensure_users()
    a, b = harness.Env(args.agent), harness.Env(args.agent)
    adm = test_admission.AdmissionEnv(a)
    adm.write_spec()
    try:
        cfg = adm.config()
        cfg["watch_sockets"] = [a.sock, b.sock]
        cfg["log_level"] = "info"
        adm.config = lambda: cfg
        adm.hold_socket()
        adm.spawn_agent()
        adm.wait_serving()
        os.environ["DQ_DOCKERD_AUTHZ"] = adm.name
        a.start_dockerd()
        os.environ.pop("DQ_DOCKERD_AUTHZ")
        b.start_dockerd()
        for e in (a, b):
            subprocess.run([harness.DOCKERD_SH, "image", e.dir, "base"], check=True, stdout=subprocess.DEVNULL)
        adm.wait_ready()
        harness.set_limit(a, USERS["alice"], 100 * 1024 * 1024)  # judged, and under: every create goes through

        uid = USERS["alice"]
        client = subprocess.Popen([PYTHON, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  user=uid, group=uid, extra_groups=[GROUP])
        times = {a.sock: [], b.sock: []}
        for i in range(2 * args.n + 20):
            sock = a.sock if i % 2 == 0 else b.sock
            client.stdin.write(sock + "\n")
            client.stdin.flush()
            out = client.stdout.readline().strip()
            if out.startswith("error"):
                raise SystemExit("create failed on %s: %s" % (sock, out))
            if i >= 20:  # the first ten each: warm-up
                times[sock].append(float(out))
        client.stdin.close()
        client.wait()

        runs = {a.sock: [], b.sock: []}
        for i in range(2 * args.runs):
            e = a if i % 2 == 0 else b
            t = time.perf_counter()
            rc, out, err = test_admission.docker_as(e, "alice", "run", "--rm", "--network", "none", "base", "true")
            if rc != 0:
                raise SystemExit("docker run failed: " + err)
            runs[e.sock].append((time.perf_counter() - t) * 1000)

        h = a.health()
        verdicts = h["admission"]["verdicts"]
        print("admission verdicts: %s; matcher %s; longest wait for the probe %d us" % (
            json.dumps(verdicts), json.dumps(h["admission"]["matcher"]), h["admission"]["wait_us_max"]))
        print("AuthZReq judged within (us): %s; slowest %d us" % (
            json.dumps(h["admission"]["judge_us"]), h["admission"]["judge_us_max"]))
        print("create (ms), interleaved, as alice over the Engine API:")
        print(row("  with the plugin", times[a.sock]))
        print(row("  without", times[b.sock]))
        for p in (50, 99):
            print("  p%d difference: %+.2f ms" % (p, pct(times[a.sock], p) - pct(times[b.sock], p)))
        print("docker run --rm (ms), interleaved:")
        print(row("  with the plugin", runs[a.sock]))
        print(row("  without", runs[b.sock]))
        ratio = statistics.mean(runs[a.sock]) / statistics.mean(runs[b.sock])
        print("  mean ratio with/without: %.3f (%+.1f %%); median ratio %.3f" % (
            ratio, (ratio - 1) * 100, statistics.median(runs[a.sock]) / statistics.median(runs[b.sock])))
    finally:
        os.environ.pop("DQ_DOCKERD_AUTHZ", None)
        for e in (a, b):
            e.stop_dockerd()
        a.cleanup()
        b.cleanup()
        adm.remove_spec()


if __name__ == "__main__":
    main()
