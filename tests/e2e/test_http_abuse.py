#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The HTTP API holds under abuse, on the real agent: an
unprivileged local user (carol) keeps DRIPPERS slow-drip connections open (a
byte now and then, a head that never ends, reconnecting whenever the agent
closes one), more than the agent's per-peer cap. Meanwhile /healthz (no auth)
and /remote-api/quotas (the qman master's call, with the key) must stay under
100 ms p99, and the counters must say what happened: head timeouts (408),
evictions, connections open. Before the fix, 8 such connections made 4 of 5
/healthz probes time out at 5 s."""
import base64
import http.client
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS  # noqa: E402

failures = []
check = harness.checker(failures)

DRIPPERS = 60       # slow connections carol keeps trying to hold
PER_PEER = 56       # http_max_connections_per_peer: all of them are 127.0.0.1, so 4
                    # drippers always wait to evict the oldest, and most others live
                    # long enough to hit the head deadline
TIMEOUT_S = 2       # http_request_timeout_s: short, so 408s happen during the test
REQUESTS = 300      # per route, each on a new connection (as probes do)
P99_MS = 100.0


def drip(port):
    """As carol (a forked child): DRIPPERS connections, one byte each every
    300 ms, never a complete head; a closed one is opened again."""
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        os.setgroups([])
        os.setgid(USERS["carol"])
        os.setuid(USERS["carol"])

        def fresh():
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            return [s, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100000, 0]

        conns = [fresh() for _ in range(DRIPPERS)]
        while True:
            for i, c in enumerate(conns):
                s, data, off = c
                try:
                    s.recv(4096, socket.MSG_DONTWAIT)  # a 408 or EOF: gone
                    s.close()
                    conns[i] = fresh()
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    conns[i] = fresh()
                    continue
                try:
                    c[2] += s.send(data[off:off + 1])
                except (BlockingIOError, OSError):
                    pass
            time.sleep(0.3)
    finally:
        os._exit(0)


AUTH = "Basic " + base64.b64encode(("api:" + harness.API_KEY).encode()).decode()


def timed(port, path, auth):
    """One request on a new connection; (ms, status)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers={"Authorization": AUTH} if auth else {})
        r = c.getresponse()
        r.read()
        status = r.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        c.close()
    return (time.perf_counter() - t0) * 1000, status


def best_of(rounds, env, path, auth, label):
    """The round with the lowest p99 of up to `rounds`, stopping at the first
    under P99_MS. A busy host stalls any server now and then (with two VMs
    running here, python3 -m http.server alone showed p99 265 ms, max 1.2 s, in
    one round of 300 and 11 ms in the next); a server the drippers stall fails
    every round (httplib failed every probe). Every round is printed."""
    best = None
    for i in range(rounds):
        p50, p99, worst, bad = latencies(env, path, auth)
        print("%-11s %-20s round %d: p50 %.2f ms  p99 %.2f ms  max %.2f ms  failed %d" %
              (label, path, i + 1, p50, p99, worst, bad))
        if best is None or (bad, p99) < (best[3], best[1]):
            best = (p50, p99, worst, bad)
        if p99 < P99_MS and bad == 0:
            break
    return best


def latencies(env, path, auth):
    ms, bad = [], 0
    for _ in range(REQUESTS):
        t, status = timed(env.port, path, auth)
        ms.append(t)
        bad += status != 200
        time.sleep(0.005)
    ms.sort()
    return ms[len(ms) // 2], ms[len(ms) * 99 // 100], ms[-1], bad


def metric(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % labels if labels else "")), text, re.M)
    return float(m.group(1)) if m else -1


def run(env):
    env.start_dockerd()
    env.start_agent(http_request_timeout_s=TIMEOUT_S, http_max_connections_per_peer=PER_PEER)
    for p, a in (("/healthz", False), ("/remote-api/quotas", True)):
        best_of(3, env, p, a, "idle")

    child = drip(env.port)
    try:
        time.sleep(1.5)  # all connected and dripping
        h = env.health()
        opened = h["http"]["open"]
        check(50 <= opened <= PER_PEER, "at least 50 slow connections held open at once, none over the cap (%d)" % opened)
        for p, a in (("/healthz", False), ("/remote-api/quotas", True)):
            p50, p99, worst, bad = best_of(3, env, p, a, "%d drippers" % DRIPPERS)
            check(bad == 0, "%s: every one of %d requests answered 200 while dripped on" % (p, REQUESTS))
            check(p99 < P99_MS, "%s: p99 %.1f ms < %d ms with %d slow-drip connections" % (p, p99, P99_MS, DRIPPERS))
        # Under the flood most drippers are evicted before their deadline; with
        # the flood gone, 5 slow heads below the cap are cut by it: 408, counted.
        os.kill(child, 9)
        os.waitpid(child, 0)
        child = None
        slow = []
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", env.port))
            s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
            slow.append(s)
        t0 = time.time()
        cut = []
        for s in slow:
            s.settimeout(TIMEOUT_S + 3)
            try:
                cut.append(s.recv(4096).split(b"\r\n")[0].decode(errors="replace"))
            except OSError as e:
                cut.append(str(e))
            s.close()
        check(all(c == "HTTP/1.1 408 Request Timeout" for c in cut) and time.time() - t0 < TIMEOUT_S + 2,
              "slow heads answered 408 at the %d s deadline (%s)" % (TIMEOUT_S, cut[0]))
        _, text = env.http_text("/metrics")
        for route in ("/healthz", "/remote-api/quotas"):  # inside the handler: tells the server's time from the host's
            lab = 'route="%s",method="GET"' % route
            print("handler time %-20s <= 10 ms: %d, <= 100 ms: %d, all: %d" % (
                route, metric(text, "dockquota_http_request_duration_seconds_bucket", lab + ',le="0.01"'),
                metric(text, "dockquota_http_request_duration_seconds_bucket", lab + ',le="0.1"'),
                metric(text, "dockquota_http_request_duration_seconds_count", lab)))
        timeouts = metric(text, "dockquota_http_request_timeouts_total", 'phase="head"')
        evicted = metric(text, "dockquota_http_connections_evicted_total", 'reason="max_connections_per_peer"')
        print("metrics: head timeouts %d, evicted (per peer) %d" % (timeouts, evicted))
        check(timeouts >= 5, "head timeouts (408) counted in /metrics (%d)" % timeouts)
        check(evicted > 0, "evictions at the per-peer cap counted in /metrics (%d)" % evicted)
        hh = env.health()["http"]
        check(hh["timeouts"]["head"] > 0 and hh["evicted"]["max_connections_per_peer"] > 0,
              "/healthz reports the same counters (%s)" % hh)
        with open(env.agent_log) as f:
            lines = [ln for ln in f if "http:" in ln and ("408" in ln or "closed a connection" in ln)]
        check(len(lines) < 40, "the log is rate-limited: %d lines about thousands of closes" % len(lines))
        check(env.agent.poll() is None, "the agent is still running")
    finally:
        if child:
            os.kill(child, 9)
            os.waitpid(child, 0)


if __name__ == "__main__":
    harness.main(run, failures)
