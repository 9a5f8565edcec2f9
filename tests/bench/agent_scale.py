#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The real agent at qman scale: 1,000 uids create 10,000 containers through the
watched docker.sock (each one attributed by the BPF path, not prefilled), then
measure dockquotad's RSS (now, peak since start-up, and by kind of mapping)
and GET /remote-api/quotas latency over loopback, once the agent has measured
them all, beside `docker system df -v` (what qman's Python slave runs per request).

usage (root): tests/bench/agent_scale.py --agent build/dockquotad [--users 1000] [--per-user 10] [--ringbuf-kib N]
"""
import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import harness  # noqa: E402


def create_as(uid, gid, sock, n):
    """Fork, become uid (in the socket's group), create n containers on one keep-alive connection."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setgroups([gid])
        os.setgid(uid)
        os.setuid(uid)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        body = json.dumps({"Image": "scale:1", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}}).encode()
        req = (b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        f = s.makefile("rb")
        for _ in range(n):
            s.sendall(req)
            length = 0
            while True:
                line = f.readline()
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\r\n", b""):
                    break
            f.read(length)
        os._exit(0)
    except Exception as e:  # noqa: BLE001
        print("uid %d: %s" % (uid, e), file=sys.stderr)
        os._exit(1)


def metric(env, sample):
    """A sample's value from the agent's /metrics (0 when absent)."""
    status, text = env.http_text("/metrics")
    assert status == 200, status
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def measured_at(env):
    """When the figures the agent serves were measured (unix seconds, 0 = not yet)."""
    return metric(env, "dockquota_usage_measured_timestamp_seconds")


def status_kib(pid, key):
    """A kB field of /proc/PID/status (VmRSS, VmHWM)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_parts(pid):
    """Resident KiB of a process by kind of mapping: anonymous, BPF maps, files."""
    parts = {"anon": 0, "bpf": 0, "file": 0}
    kind = "anon"
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                name = fields[5] if len(fields) > 5 else ""
                kind = "bpf" if name.startswith("anon_inode:bpf") else "file" if name.startswith("/") else "anon"
            elif fields[0] == "Rss:":
                parts[kind] += int(fields[1])
    return parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--per-user", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ringbuf-kib", type=int, default=0, help="the agent's ringbuf_kib (0: its default)")
    a = ap.parse_args()
    harness.require_prerequisites()
    harness.ensure_users()
    import grp
    gid = grp.getgrnam(harness.GROUP).gr_gid
    env = harness.Env(a.agent)
    os.environ.update(harness.unit_environment())  # MALLOC_ARENA_MAX ...: as the unit starts it
    try:
        env.start_dockerd()
        env.run_as("root", ["docker", "import", "-", "scale:1"], input=harness.busybox_rootfs_tar())
        extra = {"ringbuf_kib": a.ringbuf_kib} if a.ringbuf_kib else {}
        env.start_agent(log_level="warning", usage_interval_s=60, **extra)
        agent_pid = env.agent.pid
        # Loading the probes parses the kernel's BTF (libbpf, MiBs): a peak of
        # its own, before any container. Note it, then count peaks from here.
        startup_peak = status_kib(agent_pid, "VmHWM")
        with open("/proc/%d/clear_refs" % agent_pid, "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        t0 = time.time()
        running = []
        for i in range(a.users):
            running.append(create_as(1000 + i, gid, env.sock, a.per_user))
            if len(running) >= a.parallel:
                os.waitpid(running.pop(0), 0)
        for p in running:
            os.waitpid(p, 0)
        total = a.users * a.per_user
        print("created %d containers as %d uids in %.0f s" % (total, a.users, time.time() - t0))
        deadline = time.time() + 120
        while time.time() < deadline:
            owned = [c for c in env.listing("containers").values() if c["uid"] is not None and c["uid"] >= 1000]
            if len(owned) >= total:
                break
            time.sleep(1)
        counters = env.health()["probes"]["docker_sock"].get("kernel_counters", {})
        print("attributed by the probe: %d of %d (ring buffer full: %s times)"
              % (len(owned), total, counters.get("ringbuf_full", "?")))
        # A Docker limit for every uid, as an admin would set: each is then a
        # listed user of the docker device even before their containers run.
        for i in range(a.users):
            status, _ = env.http_json("PUT", "/remote-api/quotas/users/%d?device=docker" % (1000 + i),
                                      {"block_hard_limit": 1048576})
            assert status == 200, status
        # Measure once the accountant has taken figures of all of them (every
        # usage_interval_s): what is served then covers 10,000 containers.
        measured_after = time.time()
        deadline = measured_after + 120
        while time.time() < deadline and measured_at(env) < measured_after:
            time.sleep(1)
        print("usage measured %.0f s after the last create" % (measured_at(env) - measured_after))
        auth = "Basic " + base64.b64encode(("api:" + harness.API_KEY).encode()).decode()
        lat = []
        body = b""
        for _ in range(500):
            req = urllib.request.Request("http://127.0.0.1:%d/remote-api/quotas" % env.port, headers={"Authorization": auth})
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read()
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()
        users = len(json.loads(body)[0].get("user_quotas", []))
        rss, peak = status_kib(agent_pid, "VmRSS"), status_kib(agent_pid, "VmHWM")
        parts = rss_parts(agent_pid)
        df = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(["docker", "-H", "unix://" + env.sock, "system", "df", "-v"], capture_output=True, check=True)
            df.append(time.perf_counter() - t)
        df.sort()
        print("GET /remote-api/quotas (%d users, %d bytes), 500 requests incl. Python client: p50 %.2f ms, p99 %.2f ms"
              % (users, len(body), lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
        print("dockquotad RSS %.1f MiB now, peak %.1f MiB since start-up (start-up, loading the probes: %.1f MiB)"
              % (rss / 1024.0, peak / 1024.0, startup_peak / 1024.0))
        print("  of VmRSS: heap and other private memory %.1f MiB, BPF maps (ring buffers) %.1f MiB, "
              "binary and libraries %.1f MiB" % tuple(parts[k] / 1024.0 for k in ("anon", "bpf", "file")))
        print("  malloc: %.1f MiB in use, %.1f MiB freed but held"
              % (metric(env, 'dockquota_heap_bytes{state="in_use"}') / 2**20,
                 metric(env, 'dockquota_heap_bytes{state="free"}') / 2**20))
        print("docker system df -v on the same daemon: median %.0f ms" % (df[1] * 1000), flush=True)
        time.sleep(float(os.environ.get("DQ_SCALE_HOLD", "0")))  # time to inspect the agent
    finally:
        env.cleanup()


if __name__ == "__main__":
    main()
