#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Crash safety: `kill -9` of the agent at random moments while two
users create and remove containers, once while dockerd restarts. After every
restart: each attribution the API had already shown is still there for every
container Docker still has, nothing is billed to anyone but its creator, and
`PRAGMA integrity_check` is ok.

Seeded (DQ_SEED, else random) and reproducible as far as timing allows; the
seed is printed first and again on failure. DQ_KILLS sets the number of kills
(default 22)."""
import os
import random
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import churn  # noqa: E402
from harness import USERS  # noqa: E402

failures = []
check = harness.checker(failures)
SEED = int(os.environ.get("DQ_SEED") or random.SystemRandom().randrange(1, 1 << 31))
KILLS = int(os.environ.get("DQ_KILLS") or 22)
stats = {"kills": 0, "creates": 0, "removes": 0, "shown": 0, "checked": 0, "restored": 0}


def run(env):
    print("seed %d (DQ_SEED=%d reproduces the schedule)" % (SEED, SEED), flush=True)
    rnd = random.Random(SEED)
    env.start_dockerd()
    env.run_as("root", ["docker", "import", "-", "base:1"], input=harness.busybox_rootfs_tar())
    env.start_agent(missed_check_ms=3000)
    workers = churn.Workers(env, ["alice", "bob"], SEED)
    shown = {}     # container id -> uid the API showed (ever)
    creators = {}  # container id -> user (from the workers' logs)
    dockerd_kill = rnd.randrange(3, KILLS - 2)  # the kill that lands while dockerd restarts
    try:
        for k in range(KILLS):
            time.sleep(rnd.uniform(0.2, 2.0))
            # What the API shows now is a promise: it must survive the crash.
            for cid, o in env.listing("containers").items():
                if o.get("uid") is None:
                    continue
                if cid in shown and shown[cid] != o["uid"]:
                    check(False, "kill %d: %s was shown as uid %s, now uid %s" % (k, cid[:12], shown[cid], o["uid"]))
                shown.setdefault(cid, o["uid"])
            # A row marked gone while Docker had it would have lost its bill
            # but for the restore: count those too (the reconcile race).
            stats["restored"] += env.health()["attribution"]["losses"]["restored"]
            restarter = None
            if k == dockerd_kill:
                restarter = threading.Thread(target=lambda: (env.stop_dockerd(), env.start_dockerd()))
                restarter.start()
                time.sleep(rnd.uniform(0.1, 1.5))
            env.agent.send_signal(signal.SIGKILL)
            env.agent.wait(timeout=20)
            env.agent = None
            stats["kills"] += 1
            time.sleep(rnd.uniform(0, 0.5))  # creates go on while the agent is down
            if restarter:
                restarter.join()
            env.start_agent(missed_check_ms=3000)
            verify(env, k, shown, creators, workers)
    finally:
        workers.stop()
    time.sleep(1)
    verify(env, "end", shown, creators, workers)
    h = env.health()
    stats["restored"] += h["attribution"]["losses"]["restored"]
    check(h["attribution"]["losses"]["store_error"] == 0, "no store errors after %d kills" % stats["kills"])
    check(stats["restored"] == 0, "no row was marked gone while Docker had it (restored %d)" % stats["restored"])
    calls = workers.calls()
    stats["creates"] = sum(1 for u in calls.values() for c in u if c["op"] == "create" and c.get("id"))
    stats["removes"] = sum(1 for u in calls.values() for c in u if c["op"] == "rm" and c["status"] == 204)
    check(stats["kills"] >= 20 and stats["creates"] >= 100,
          "%d kills (one during a dockerd restart) over %d creates, %d removes" % (
              stats["kills"], stats["creates"], stats["removes"]))


def verify(env, k, shown, creators, workers):
    ok = churn.integrity(env)
    check(ok == "ok", "after kill %s: PRAGMA integrity_check: %s" % (k, ok))
    creators.update(workers.creators())
    # The users go on removing meanwhile: "still there" is what Docker had
    # both before and after the agent's list was read.
    present = churn.docker_containers(env)
    listed = env.listing("containers")
    present &= churn.docker_containers(env)
    lost = [cid for cid, uid in shown.items() if cid in present and (cid not in listed or listed[cid].get("uid") != uid)]
    wrong = []
    for cid, o in listed.items():
        if o.get("uid") is None:
            continue
        who = creators.get(cid)
        if who is None:  # created so recently the worker's log line is not out yet
            time.sleep(0.5)
            creators.update(workers.creators())
            who = creators.get(cid)
        if who is None or USERS[who[0]] != o["uid"]:
            wrong.append((cid[:12], o["uid"], who and who[0]))
    stats["shown"] = len(shown)
    stats["checked"] += len([c for c in shown if c in present])
    check(not lost, "after kill %s: every attribution shown before is still there (%d shown, lost: %s)" % (
        k, len(shown), [(c[:12], shown[c], listed.get(c, {}).get("uid", "unlisted")) for c in lost][:10]))
    check(not wrong, "after kill %s: nothing billed to anyone but its creator (wrong: %s)" % (k, wrong[:10]))


def summary():
    print("crash test: seed %d, %d kills, %d creates, %d removes, %d attributions shown, %d re-checked" % (
        SEED, stats["kills"], stats["creates"], stats["removes"], stats["shown"], stats["checked"]))
    if failures:
        print("FAILED with seed %d: rerun with DQ_SEED=%d" % (SEED, SEED))


if __name__ == "__main__":
    harness.main(run, failures, summary)
