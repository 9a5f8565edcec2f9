#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Kernel project quotas on Docker's storage, end to end: a real dockerd whose
data root is an XFS or ext4 filesystem (a loop image mounted with prjquota),
alice/bob/carol, the real agent.

Where the kernel has quota support (the vmtest guests; DQ_REQUIRE_PRJQUOTA=1
makes it mandatory):
  - alice has 64 MiB; two of her containers writing together stop at 64 MiB
    (EDQUOT/ENOSPC inside), her imported image counts toward it; bob writes
    100 MiB unhindered; the agent's figure for alice matches `du` of her
    directories within 1 % (and xfs_quota's on XFS);
  - project ids survive an agent restart and are reused after removal;
  - per-container mode: a container with a 32 MiB default stops at 32 MiB,
    removing it frees its id.
Everywhere (the host here has no quota support at all):
  - a data root without project quotas: the agent runs, says "degraded" in
    /healthz and /metrics, and serves correct walk-based usage."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS, mount_data_root, prjquota_works, set_limit, sh, wait_for  # noqa: E402

failures = []
MiB = 1024 * 1024
ALICE, BOB, CAROL = USERS["alice"], USERS["bob"], USERS["carol"]


check = harness.checker(failures)








def du(paths):
    """Allocated bytes under the paths (what a quota counts), each inode once."""
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return 0
    out = sh("du -s -B1 -c %s" % " ".join(paths)).stdout.strip().splitlines()[-1]
    return int(out.split()[0])


def layer_root(env, ref, kind="container"):
    upper = env.docker("root", kind, "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", ref)
    return os.path.dirname(upper)


def container_dirs(env, ref):
    root = layer_root(env, ref)
    return [root, root + "-init"]


def projects(env):
    status, body = env.http("/api/v1/projects")
    assert status == 200, (status, body)
    return body


def user_project(env, uid):
    for p in projects(env)["projects"]:
        if p["kind"] == "user" and p["owner"] == str(uid):
            return p
    return None


def block_current(env, uid):
    """The uid's usage on the docker device as the qman master reads it (0 when not listed)."""
    status, body = env.http("/remote-api/quotas/users/%d" % uid)
    assert status == 200, (status, body)
    for dev in body:
        for u in dev.get("user_quotas", []):
            if u["uid"] == uid:
                return u["block_current"]
    return 0






def run_writer(env, user, name, image, mib, target="/fill", delay=0, gate=False):
    """A detached container that writes `mib` MiB with dd (after `delay` s,
    or with `gate` once the test creates /go in it); returns its name."""
    wait = "while [ ! -e /go ]; do sleep 0.2; done" if gate else "sleep %d" % delay
    env.docker(user, "run", "-d", "--network", "none", "--name", name, image, "sh", "-c",
               # dd's complaint goes straight to the log: a file in the full layer could not hold it.
               "%s; dd if=/dev/zero of=%s bs=1048576 count=%d 2>&1; rc=$?; sync; exit $rc" % (wait, target, mib))
    return name


def finish(env, name):
    """Waits for a container; returns (exit code, its output)."""
    rc = int(env.docker("root", "wait", name))
    out = env.docker("root", "logs", name, check=False)
    return rc, out


# --- scenarios ---------------------------------------------------------------------

def per_user(env, fstype):
    print("== per-user project quotas on %s" % fstype, flush=True)
    mount_data_root(env, fstype)
    env.start_dockerd()
    # growth_signal_mib 1: the signal is "this much in one second", and a TCG
    # guest beside another writes bob's burst at less than the default 16 MiB/s.
    cfg = dict(project_quotas="required", project_sync_interval_s=1, usage_interval_s=5, growth_signal_mib=1)
    env.start_agent(**cfg)
    h = env.health()["project_quotas"]
    check(h["state"] == "active" and h["usage_source"] == "kernel" and h["filesystem"] == fstype,
          "%s: /healthz says project quotas are active, usage from the kernel: %s" % (fstype, json.dumps(h)))

    # alice's imported image counts toward her usage.
    env.docker("alice", "import", "-", "alice-img:1", input=harness.busybox_rootfs_tar(marker="alice-" + fstype))
    env.docker("bob", "import", "-", "bob-img:1", input=harness.busybox_rootfs_tar(marker="bob-" + fstype))
    img_dir = layer_root(env, "alice-img:1", "image")
    img_bytes = du([img_dir])
    got = wait_for("alice's image tagged", lambda: block_current(env, ALICE) >= img_bytes * 0.99 and
                   (user_project(env, ALICE) or {}).get("used_bytes", 0) > 0)
    check(bool(got), "%s: alice's imported image counts toward her usage (%d bytes, du %d)" % (
        fstype, block_current(env, ALICE), img_bytes))

    # 64 MiB for alice; two containers writing 48 MiB each at once.
    set_limit(env, ALICE, 64 * 1024)
    time.sleep(1.5)  # the limit reaches the kernel on the woken sync (interval 1 s)
    t0 = time.time()
    a1 = run_writer(env, "alice", "alice-w1", "alice-img:1", 48)
    a2 = run_writer(env, "alice", "alice-w2", "alice-img:1", 48)
    (rc1, out1), (rc2, out2) = finish(env, a1), finish(env, a2)
    print("alice-w1 rc=%d %s\nalice-w2 rc=%d %s (%.1f s)" % (rc1, out1, rc2, out2, time.time() - t0))
    stopped = [o for rc, o in ((rc1, out1), (rc2, out2)) if rc != 0]
    check(len(stopped) >= 1 and all(("quota" in o.lower() or "no space" in o.lower()) for o in stopped),
          "%s: alice's writers stopped with EDQUOT/ENOSPC inside the container" % fstype)
    alice_dirs = container_dirs(env, a1) + container_dirs(env, a2) + [img_dir]
    time.sleep(2.5)  # one sync reads the quota again
    independent = du(alice_dirs)
    agent = block_current(env, ALICE)
    check(agent <= 64 * MiB, "%s: alice's usage %d <= her 64 MiB limit" % (fstype, agent))
    m = env.http_text("/metrics")[1]
    lat = [l for l in m.splitlines() if l.startswith("dockquota_project_tag_latency_seconds ")]
    print("FIGURES %s: bytes past alice's limit %d; owner known -> layer root tagged %.1f ms (last container)" % (
        fstype, max(0, agent - 64 * MiB), float(lat[0].split()[1]) * 1000 if lat else -1), flush=True)
    check(agent >= 60 * MiB, "%s: alice's writers got close to the limit (%d bytes)" % (fstype, agent))
    check(abs(agent - independent) <= 0.01 * independent,
          "%s: agent's figure for alice (%d) matches du of her directories (%d) within 1 %%" % (fstype, agent, independent))
    pid = user_project(env, ALICE)["id"]
    if fstype == "xfs":
        rep = sh("xfs_quota -x -c 'quota -p -N -b -n %d' %s" % (pid, env.unmount)).stdout.split()
        xq = int(rep[1]) * 1024 if len(rep) > 1 else -1
        check(abs(agent - xq) <= 0.01 * xq, "xfs: agent's figure (%d) matches xfs_quota's (%d) within 1 %%" % (agent, xq))

    # bob is not limited by alice's quota.
    # Written once the growth probe watches it (the agent inspects the
    # container at Docker's start event: seconds under TCG on a busy host).
    watched = env.health()["probes"]["growth"].get("watched", 0)
    b = run_writer(env, "bob", "bob-w", "bob-img:1", 100, gate=True)
    check(harness.wait_for("bob's writer watched", lambda: env.health()["probes"]["growth"].get("watched", 0) > watched,
                           timeout=60), "%s: the growth probe watches bob's writer" % fstype)
    env.docker("root", "exec", b, "sh", "-c", ": >/go")  # the image has sh and dd, no touch
    rc, out = finish(env, b)
    check(rc == 0, "%s: bob's container wrote 100 MiB unhindered (rc %d: %s)" % (fstype, rc, out))
    time.sleep(2.5)
    check(block_current(env, BOB) >= 100 * MiB, "%s: bob's usage %d >= 100 MiB" % (fstype, block_current(env, BOB)))
    signals = env.health()["probes"]["growth"].get("signals", 0)
    check(signals >= 1, "%s: bob's burst raised the live-growth signal (re-read quotas at once): %d" % (fstype, signals))

    # Project ids survive a restart.
    before = {(p["kind"], p["owner"]): p["id"] for p in projects(env)["projects"]}
    env.stop_agent()
    env.start_agent(**cfg)
    after = {(p["kind"], p["owner"]): p["id"] for p in projects(env)["projects"]}
    check(before == after and (("user", str(ALICE)) in after), "%s: project ids survive a restart: %s" % (fstype, after))

    # Removing all of alice's objects frees her id; carol's first object gets it.
    env.docker("alice", "rm", "-f", a1, a2)
    env.docker("alice", "rmi", "alice-img:1")
    gone = wait_for("alice's project released", lambda: user_project(env, ALICE) is None, timeout=30)
    check(bool(gone), "%s: alice's project id %d is freed once her objects are gone" % (fstype, pid))
    # XFS frees a deleted inode's blocks in the background (inodegc, 5.19+): until
    # then the kernel still charges them to the freed id, and the agent rightly
    # skips an id the kernel charges. A sync flushes that work.
    sh("sync")
    env.docker("carol", "import", "-", "carol-img:1", input=harness.busybox_rootfs_tar(marker="carol-" + fstype))
    env.docker("carol", "create", "--network", "none", "--name", "carol-c", "carol-img:1", "true")
    carol = wait_for("carol's project", lambda: user_project(env, CAROL), timeout=20)
    check(bool(carol) and carol["id"] == pid, "%s: carol's new project reuses the freed id %d: %s" % (fstype, pid, carol))
    m = env.http_text("/metrics")[1]
    check('dockquota_project_quota_active{filesystem="%s",mode="user"} 1' % fstype in m and
          'dockquota_usage_source{source="kernel"} 1' in m, "%s: /metrics says kernel project quotas" % fstype)


def per_container(env):
    print("== per-container project quotas on xfs", flush=True)
    mount_data_root(env, "xfs")
    env.start_dockerd()
    env.docker("alice", "import", "-", "alice-img:1", input=harness.busybox_rootfs_tar(marker="alice-pc"))
    env.start_agent(project_quotas="required", project_quota_mode="container", container_quota_default_mib=32,
                    project_sync_interval_s=1)
    c = run_writer(env, "alice", "alice-big", "alice-img:1", 64)
    rc, out = finish(env, c)
    check(rc != 0 and ("quota" in out.lower() or "no space" in out.lower()),
          "container mode: the writer stopped with EDQUOT/ENOSPC (rc %d: %s)" % (rc, out))
    written = du(container_dirs(env, c))
    check(31 * MiB <= written <= 32 * MiB + 64 * 1024, "container mode: its layer holds ~32 MiB (%d bytes)" % written)
    cid = env.docker("root", "inspect", "-f", "{{.Id}}", c)
    mine = [p for p in projects(env)["projects"] if p["kind"] == "container" and p["owner"] == cid]
    check(len(mine) == 1, "container mode: the container has its own project: %s" % mine)
    # A container's own limit outranks the default; bad input changes nothing.
    c2 = "alice-own"
    env.docker("alice", "create", "--network", "none", "--name", c2, "alice-img:1", "sh", "-c",
               "dd if=/dev/zero of=/fill bs=1048576 count=64 2>&1; rc=$?; sync; exit $rc")
    wait_for("alice-own's project", lambda: any(p["kind"] == "container" and p["owner"].startswith(
        env.docker("root", "inspect", "-f", "{{.Id}}", c2)) for p in projects(env)["projects"]))
    for bad in ({}, {"limit_bytes": -1}, {"limit_bytes": "1"}, {"limit_bytes": 1.5}):
        status, body = env.http_json("PUT", "/api/v1/projects/containers/" + c2, bad)
        check(status == 400 and "msg" in body, "container mode: PUT %s -> 400 (%s)" % (json.dumps(bad), body))
    status, body = env.http_json("PUT", "/api/v1/projects/containers/nope", {"limit_bytes": 1})
    check(status == 404, "container mode: PUT for an unknown container -> 404")
    status, body = env.http_json("PUT", "/api/v1/projects/containers/" + c2, {"limit_bytes": 48 * MiB})
    check(status == 200 and body["limit_bytes"] == 48 * MiB, "container mode: PUT its own 48 MiB limit (%s)" % body)
    time.sleep(1.5)
    env.docker("alice", "start", c2)
    rc2, out2 = finish(env, c2)
    own = du(container_dirs(env, c2))
    check(rc2 != 0 and 47 * MiB <= own <= 48 * MiB + 64 * 1024,
          "container mode: its own 48 MiB limit held (rc %d, %d bytes)" % (rc2, own))
    env.docker("alice", "rm", c2)
    env.docker("alice", "rm", c)
    freed = wait_for("container project freed", lambda: not any(p["owner"] == cid for p in projects(env)["projects"]))
    check(bool(freed), "container mode: removing the container frees its id")


def degraded(env, fstype=None):
    where = fstype + " without prjquota" if fstype else "the host's own filesystem"
    print("== no project quotas: %s" % where, flush=True)
    if fstype:
        mount_data_root(env, fstype, quota=False)
    env.start_dockerd()
    env.start_agent(usage_interval_s=5)  # project_quotas: auto (the default)
    env.docker("alice", "import", "-", "alice-img:1", input=harness.busybox_rootfs_tar(marker="alice-deg"))
    h = env.health()
    pq = h["project_quotas"]
    check(pq["state"] == "degraded" and pq["usage_source"] == "docker" and pq.get("reason"),
          "%s: /healthz names the degraded mode and why: %s" % (where, json.dumps(pq)))
    check(h["status"] == "degraded" and any("project quotas" in r for r in h["degraded"]),
          "%s: /healthz status is degraded with the reason listed" % where)
    m = env.http_text("/metrics")[1]
    check("dockquota_project_quota_active{" in m and 'dockquota_usage_source{source="docker"} 1' in m and
          [l for l in m.splitlines() if l.startswith("dockquota_project_quota_active{")][0].endswith(" 0"),
          "%s: /metrics says degraded, walk-based usage" % where)
    env.docker("alice", "run", "--network", "none", "--name", "alice-dd", "alice-img:1",
               "dd", "if=/dev/zero", "of=/fill", "bs=1048576", "count=8")
    gp = h["probes"]["growth"]
    if not gp["attached"]:
        # A kernel that refuses fentry (the lockdown host): "auto" leaves the
        # growth probe off rather than tax every syscall with tp_btf/sys_exit,
        # and says so. Then the fallback, asked for by name.
        check(os.environ.get("DQ_REQUIRE_FENTRY") != "1" and "fentry" in gp.get("unavailable", "") and
              "every syscall" in gp.get("unavailable", "") and any("growth probe" in r for r in h["degraded"]),
              "%s: growth probe off without fentry, and /healthz says why: %s" % (where, json.dumps(gp)))
        env.stop_agent()
        env.start_agent(usage_interval_s=5, growth_probe_hook="tracepoint")
        gp = env.health()["probes"]["growth"]
        check(gp["attached"] and gp["hook"] == "tracepoint", "%s: growth_probe_hook tracepoint attaches the fallback: %s"
              % (where, json.dumps(gp)))
    # Live growth (BPF): a running container's layer writes, per container and per uid.
    env.docker("alice", "run", "-d", "--network", "none", "--name", "alice-grow", "alice-img:1", "sh", "-c",
               # counted from the start event on (the cgroup exists only then): write a moment later
               "sleep 3; dd if=/dev/zero of=/grow bs=1048576 count=20; echo x > /dev/null; sleep 120")
    gid = env.docker("root", "inspect", "-f", "{{.Id}}", "alice-grow")

    def grown():
        status, g = env.http("/api/v1/growth")
        c = [x for x in g.get("containers", []) if x["id"] == gid]
        u = [x for x in g.get("users", []) if x["uid"] == ALICE]
        return (c[0], u[0]) if c and u and c[0]["bytes"] >= 20 * MiB else None
    g = wait_for("growth", grown, timeout=30)
    check(bool(g) and g[0]["bytes"] == 20 * MiB and g[0].get("uid") == ALICE and g[1]["bytes"] >= 20 * MiB,
          "%s: live growth: alice-grow wrote exactly 20 MiB into its layer, billed to alice: %s" % (where, g))
    env.docker("root", "rm", "-f", "alice-grow")
    # Walk-based usage is still right: Docker's own figures for alice's container and image.
    df = json.loads(sh("curl -sS --unix-socket %s http://d/system/df" % env.sock).stdout)
    want = sum(c.get("SizeRw") or 0 for c in df["Containers"]) + df["LayersSize"]
    got = wait_for("walk-based usage", lambda: block_current(env, ALICE) == want, timeout=30)
    check(bool(got), "%s: alice's walk-based usage equals Docker's figures (%d, agent %d)" % (
        where, want, block_current(env, ALICE)))


def run(env):
    have_quota = prjquota_works()
    if os.environ.get("DQ_REQUIRE_PRJQUOTA") == "1" and not have_quota:
        check(False, "project quotas required (DQ_REQUIRE_PRJQUOTA=1) but this kernel has no quota support")
        return
    scenarios = [lambda e: degraded(e)]
    if have_quota:
        scenarios += [lambda e: per_user(e, "xfs"), lambda e: per_user(e, "ext4"), per_container]
    else:
        # The host kernel here (no XFS quota support): XFS mounts without prjquota, and the agent must degrade on it too.
        scenarios += [lambda e: degraded(e, "xfs")]
    harness.run_scenarios(env, scenarios, check)


if __name__ == "__main__":
    harness.main(run, failures)
