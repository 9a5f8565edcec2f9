#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Ring buffer losses under a burst: many concurrent docker.sock clients doing
creates next to big uploads (image load, build contexts) and downloads (image
save, container logs, archive copies), against the real agent. Prints, per
agent binary and `ringbuf_kib`, the kernel's `ringbuf_full` and event counts
over the burst and how many of the burst's creates were attributed to their
user. Rounds alternate the configurations, so a noisy host hits them alike.

usage (root): tests/bench/ring_burst.py --agent build/dockquotad [--agent OTHER]
              [--ringbuf-kib 4096,2048] [--rounds 2] [--workers 12] [--mib 32]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import harness  # noqa: E402

USERS = list(harness.USERS)


def counters(env):
    h = env.health()
    kc = h["probes"]["docker_sock"].get("kernel_counters", {})
    return kc, h.get("stream", {})


def make_fixtures(env, mib):
    """An image with `mib` MiB of random data, its saved tar, a build context of
    that size, a container whose log is ~`mib` MiB and one holding a `mib` MiB file."""
    root = tempfile.mkdtemp(dir=env.dir)
    os.chmod(root, 0o755)
    subprocess.run(["sh", "-c", "cd %s && tar -xf -" % root], input=harness.busybox_rootfs_tar(), check=True)
    with open(os.path.join(root, "big"), "wb") as f:
        f.write(os.urandom(mib << 20))
    tar = subprocess.run(["tar", "-C", root, "-cf", "-", "."], capture_output=True, check=True).stdout
    env.run_as("root", ["docker", "import", "-", "burst:1"], input=tar)
    saved = os.path.join(env.dir, "burst.tar")
    env.run_as("root", ["sh", "-c", "docker save burst:1 > " + saved])
    os.chmod(saved, 0o644)
    ctx = os.path.join(env.dir, "ctx")
    os.makedirs(ctx)
    os.rename(os.path.join(root, "big"), os.path.join(ctx, "big"))
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM burst:1\nLABEL burst=1\n")
    subprocess.run(["chmod", "-R", "a+rX", ctx], check=True)
    env.run_as("root", ["docker", "run", "--network", "none", "--name", "logger", "burst:1",
                        "sh", "-c", "head -c %d /big | busybox od -An -tx1 | head -c %d" % (mib << 19, mib << 20)])
    return saved, ctx


def burst(env, saved, ctx, workers, tag):
    """Runs `workers` clients at once, each a mix of downloads, uploads and creates."""
    names, errors = [], []

    def work(w):
        user = USERS[w % len(USERS)]
        mine = []
        steps = [
            ["sh", "-c", "docker save burst:1 > /dev/null"],
            ["sh", "-c", "docker logs logger > /dev/null 2>&1"],
            ["sh", "-c", "docker cp logger:/big - > /dev/null"],
            ["sh", "-c", "docker load -q < " + saved],
            ["env", "DOCKER_BUILDKIT=0", "docker", "build", "-q", "--network", "none", "-t", "b-%s-%d:1" % (tag, w), ctx],
        ]
        for i, argv in enumerate(steps[w % len(steps):] + steps[:w % len(steps)]):
            name = "burst-%s-%d-%d" % (tag, w, i)
            try:
                env.run_as(user, ["docker", "create", "--network", "none", "--name", name, "burst:1", "true"])
                mine.append((name, harness.USERS[user]))
                env.run_as(user, argv)
            except AssertionError as e:
                errors.append(str(e)[:200])
        names.extend(mine)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return names, errors, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", action="append", required=True)
    ap.add_argument("--ringbuf-kib", default="4096,2048")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--mib", type=int, default=32)
    a = ap.parse_args()
    harness.require_prerequisites()
    harness.ensure_users()
    env = harness.Env(a.agent[0])
    os.environ.update(harness.unit_environment())  # MALLOC_ARENA_MAX ...: as the unit starts it
    rows = []
    try:
        env.start_dockerd()
        saved, ctx = make_fixtures(env, a.mib)
        configs = [(agent, int(k)) for agent in a.agent for k in a.ringbuf_kib.split(",")]
        for r in range(a.rounds):
            for n, (agent, kib) in enumerate(configs):
                env.agent_bin = agent
                env.start_agent(log_level="warning", ringbuf_kib=kib)
                kc0, st0 = counters(env)
                names, errors, secs = burst(env, saved, ctx, a.workers, "%d-%d" % (r, n))
                time.sleep(1.5)  # the agent drains the ring every poll_interval_ms
                kc1, st1 = counters(env)
                listed = {o["name"]: o for o in env.listing("containers").values()}
                ok = sum(1 for name, uid in names if listed.get(name, {}).get("uid") == uid)
                d = lambda c, k: c[1].get(k, 0) - c[0].get(k, 0)  # noqa: E731
                rows.append((os.path.basename(agent), kib, r, secs, d((kc0, kc1), "ringbuf_full"),
                             d((kc0, kc1), "events"), d((st0, st1), "gap_bytes"), st1.get("muted_downloads", "-"),
                             ok, len(names), len(errors)))
                print("%-18s ring %5d KiB round %d: %5.1f s, ringbuf_full %6d, events %7d, gap %6.0f MiB, "
                      "muted downloads %s, creates attributed %d/%d, client errors %d" % (
                          rows[-1][0], kib, r, secs, rows[-1][4], rows[-1][5], rows[-1][6] / 2**20, rows[-1][7],
                          ok, len(names), len(errors)), flush=True)
                for e in errors[:3]:
                    print("   error: " + e)
                env.stop_agent()
    finally:
        env.cleanup()


if __name__ == "__main__":
    main()
