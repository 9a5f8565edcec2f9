#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Unprivileged input cannot grow the agent without bound.

A docker-group user opens 150 connections to docker.sock and pipelines 60 KiB
request heads on each without ever reading a reply (17.6 MiB in all). Before
the global budget this took the agent from 24 MiB to 1,050 MiB RSS. Now: the
agent's RSS stays bounded, the connections that held the most are dropped
from tracking and counted (/healthz degraded, /metrics), and another user's
create made meanwhile on an honest connection is still billed to them."""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS  # noqa: E402

failures = []
check = harness.checker(failures)
CONNS = 150
HEAD_BYTES = 60 * 1024
BUDGET_MIB = 8


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def hostile_head(i):
    # A GET of many tiny query parameters: each one costs the parser a map
    # node, the worst case per byte for memory.
    q = "&".join("a%d=b" % j for j in range((HEAD_BYTES - 100) // 8))
    return ("GET /v1.41/containers/json?%s HTTP/1.1\r\nHost: docker\r\nX-Conn: %d\r\n\r\n" % (q, i)).encode()


def flood(env):
    """Runs as bob (a forked child): connects CONNS times, writes, never reads.
    Returns the child's pid; the sockets stay open until it is killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([2990])
            os.setgid(USERS["bob"])
            os.setuid(USERS["bob"])
            socks = []
            sent = 0
            for i in range(CONNS):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(env.sock)
                s.setblocking(False)
                head = hostile_head(i)
                for _ in range(2):  # pipelined, never read; as much as the socket takes
                    try:
                        sent += s.send(head)
                    except BlockingIOError:
                        break
                socks.append(s)
            os.write(w, b"%d\n" % sent)
            time.sleep(3600)
        finally:
            os._exit(0)
    os.close(w)
    sent = int(os.read(r, 64).decode().strip() or 0)
    os.close(r)
    return pid, sent


def run(env):
    env.start_dockerd()
    env.run_as("root", ["docker", "import", "-", "base:1"], input=harness.busybox_rootfs_tar())
    h = env.start_agent(tracker_memory_mib=BUDGET_MIB)
    agent_pid = env.agent.pid
    before = rss_mib(agent_pid)
    child, sent = flood(env)
    try:
        print("bob wrote %.1f MiB of pipelined heads on %d connections, reading nothing" % (sent / 2**20, CONNS))
        deadline = time.time() + 30
        peak = before
        while time.time() < deadline:
            peak = max(peak, rss_mib(agent_pid))
            st = env.health()["stream"]
            if st["losses"]["dropped_memory"] > 0 and st["memory_bytes"] <= BUDGET_MIB << 20:
                break
            time.sleep(0.5)
        for _ in range(6):  # a few more samples once it settled
            peak = max(peak, rss_mib(agent_pid))
            time.sleep(0.5)
        h = env.health()
        st = h["stream"]
        print("agent RSS: %.1f MiB before, peak %.1f MiB during; tracked bytes %d (peak %d), budget %d" %
              (before, peak, st["memory_bytes"], st["memory_peak_bytes"], st["memory_budget_bytes"]))
        check(st["losses"]["dropped_memory"] > 0,
              "connections over the budget were dropped and counted (%d)" % st["losses"]["dropped_memory"])
        check(st["memory_bytes"] <= BUDGET_MIB << 20, "tracked bytes within the %d MiB budget" % BUDGET_MIB)
        check(peak - before < BUDGET_MIB + 48,
              "agent RSS grew by %.1f MiB at most (budget %d MiB; was +1,026 MiB)" % (peak - before, BUDGET_MIB))
        check(h["status"] == "degraded" and any("dropped_memory" in r for r in h.get("degraded", [])),
              "/healthz degraded, naming the loss (%s)" % h.get("degraded"))
        _, metrics = env.http_text("/metrics")
        check('name="stream_losses_dropped_memory"' in metrics, "/metrics has stream_losses_dropped_memory")
        # An honest user is not hurt: alice creates through the docker CLI meanwhile.
        env.docker("alice", "create", "--network", "none", "--name", "alice-during-flood", "base:1", "true")
        # The row is listed (unattributed) a moment before its owner is
        # written: wait for an owner, not just the row.
        c, _ = env.wait_listed("containers",
                               lambda o: o["name"] == "alice-during-flood" and o.get("uid") is not None, timeout=10)
        check(c is not None and c.get("uid") == USERS["alice"],
              "alice's create during the flood billed to alice (%s)" % (c and c.get("uid")))
        check(env.agent.poll() is None, "the agent is still running")
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


if __name__ == "__main__":
    harness.main(run, failures)
