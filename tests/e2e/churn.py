# SPDX-License-Identifier: Apache-2.0
"""Shared by test_reconcile.py and test_crash.py: users that create
and remove containers over the Engine API as fast as Docker lets them, each in
its own process with its own uid, logging every call with its times; Docker's
own view of what exists; and the checks that no attribution the agent's API
once showed is lost or billed to someone else."""
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import harness  # noqa: E402
from harness import USERS, GROUP  # noqa: E402

# The worker: one process per user, its own connection per call (as the docker
# CLI does). argv: socket, seed, stop file, remove probability. One JSON line
# per call: {"op": "create"|"rm"|"error", "id", "status", "t0", "t1"}.
WORKER = r'''
import http.client, json, os, random, socket, sys, time
sock_path, seed, stop, p_rm = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(15)
        self.sock.connect(sock_path)
rnd = random.Random(seed)
mine = []
body = json.dumps({"Image": "base:1", "Cmd": ["true"], "HostConfig": {"NetworkMode": "none"}})
while not os.path.exists(stop):
    c = C("docker")
    try:
        if mine and rnd.random() < p_rm:
            cid = mine.pop(rnd.randrange(len(mine)))
            t0 = time.time()
            c.request("DELETE", "/v1.41/containers/%s?force=1" % cid)
            r = c.getresponse(); r.read(); t1 = time.time()
            print(json.dumps({"op": "rm", "id": cid, "status": r.status, "t0": t0, "t1": t1}), flush=True)
        else:
            t0 = time.time()
            c.request("POST", "/v1.41/containers/create", body, {"Content-Type": "application/json"})
            r = c.getresponse(); data = r.read(); t1 = time.time()
            cid = json.loads(data)["Id"] if r.status == 201 else None
            if cid:
                mine.append(cid)
            print(json.dumps({"op": "create", "id": cid, "status": r.status, "t0": t0, "t1": t1}), flush=True)
    except Exception as e:
        print(json.dumps({"op": "error", "err": str(e), "t0": time.time()}), flush=True)
        time.sleep(0.2)
    finally:
        c.close()
    time.sleep(rnd.random() * 0.03)
'''


# The users cannot read root's own interpreter (e.g. a pyenv under /root).
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


class Workers:
    """Users creating and removing containers until stop()."""

    def __init__(self, env, users, seed, p_rm=0.3):
        self.env = env
        self.stop_file = os.path.join(env.dir, "churn.stop")
        if os.path.exists(self.stop_file):
            os.unlink(self.stop_file)
        self.procs = {}
        self.logs = {}
        for i, user in enumerate(users):
            log = os.path.join(env.dir, "churn-%s.jsonl" % user)
            self.logs[user] = log
            uid = USERS[user]
            self.procs[user] = subprocess.Popen(
                [PYTHON, "-c", WORKER, env.sock, str(seed * 100 + i), self.stop_file, str(p_rm)],
                stdout=open(log, "w"), stderr=subprocess.DEVNULL, user=uid, group=uid, extra_groups=[GROUP])

    def stop(self):
        open(self.stop_file, "w").close()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    def calls(self):
        """user -> list of logged calls."""
        out = {}
        for user, path in self.logs.items():
            out[user] = []
            with open(path) as f:
                for line in f:
                    try:
                        out[user].append(json.loads(line))
                    except ValueError:
                        pass  # a line cut short
        return out

    def creators(self):
        """container id -> (user, t0, t1) for every create Docker answered 201."""
        out = {}
        for user, calls in self.calls().items():
            for c in calls:
                if c["op"] == "create" and c.get("id"):
                    out[c["id"]] = (user, c["t0"], c["t1"])
        return out


def docker_containers(env):
    """Docker's own list (as root, over the socket): the set of container ids."""
    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(30)
            self.sock.connect(env.sock)
    c = C("docker")
    c.request("GET", "/v1.41/containers/json?all=1")
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    return {x["Id"] for x in data}


def integrity(env):
    """PRAGMA integrity_check of the agent's database (read-only, WAL is shared)."""
    db = sqlite3.connect("file:%s?mode=ro" % env.db, uri=True, timeout=10)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def log_time(line):
    """The unix time of an agent log line ("2026-12-06T09:31:07.608Z ...")."""
    import calendar
    stamp = line.split(" ", 1)[0]
    try:
        base, frac = stamp.rstrip("Z").split(".")
        return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(frac) / 1000.0
    except ValueError:
        return None


def watch_starts(env):
    """Times (unix) the agent's events stream connected: its probes were attached
    by then (main.cpp attaches them first), and the reconcile began right after."""
    out = []
    with open(env.agent_log, errors="replace") as f:
        for line in f:
            if "events: connected to" in line:
                t = log_time(line)
                if t:
                    out.append(t)
    return out
