#!/usr/bin/env python3
"""The real agent at qman scale: 1,000 uids create 10,000 containers through the
watched docker.sock (each one attributed by the BPF path, not prefilled), then
measure dockquotad's RSS and GET /remote-api/quotas latency over loopback,
beside `docker system df -v` (what qman's Python slave runs per request).

usage (root): tests/bench/agent_scale.py --agent build/dockquotad [--users 1000] [--per-user 10]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--per-user", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8)
    a = ap.parse_args()
    harness.require_prerequisites()
    harness.ensure_users()
    import grp
    gid = grp.getgrnam(harness.GROUP).gr_gid
    env = harness.Env(a.agent)
    os.environ["MALLOC_ARENA_MAX"] = "2"  # as deploy/systemd/dockquota.service sets it
    try:
        env.start_dockerd()
        env.run_as("root", ["docker", "import", "-", "scale:1"], input=harness.busybox_rootfs_tar())
        env.start_agent(log_level="warning", usage_interval_s=60)
        agent_pid = env.agent.pid
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
        print("attributed by the probe: %d of %d" % (len(owned), total))
        # A Docker limit for every uid, as an admin would set: each is then a
        # listed user of the docker device even before their containers run.
        for i in range(a.users):
            status, _ = env.http_json("PUT", "/remote-api/quotas/users/%d?device=docker" % (1000 + i),
                                      {"block_hard_limit": 1048576})
            assert status == 200, status
        # Let the accountant take its figures, then measure.
        time.sleep(5)
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
        rss = [l for l in open("/proc/%d/status" % agent_pid) if l.startswith(("VmRSS", "VmHWM"))]
        df = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(["docker", "-H", "unix://" + env.sock, "system", "df", "-v"], capture_output=True, check=True)
            df.append(time.perf_counter() - t)
        df.sort()
        print("GET /remote-api/quotas (%d users, %d bytes), 500 requests incl. Python client: p50 %.2f ms, p99 %.2f ms"
              % (users, len(body), lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
        print("dockquotad " + " ".join(x.strip() for x in rss))
        print("docker system df -v on the same daemon: median %.0f ms" % (df[1] * 1000), flush=True)
        time.sleep(float(os.environ.get("DQ_SCALE_HOLD", "0")))  # time to inspect the agent
    finally:
        env.cleanup()


if __name__ == "__main__":
    main()
