#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""containerd rootfs quotas in the kernel (ctest vm_containerd_quotas:
vmtest/run.sh on every kernel; the host kernel has no quota support).

A private containerd (Debian's 1.6, test_containerd_watch.Containerd) whose
root is on an XFS image mounted prjquota, then on an ext4 one made with
-O quota,project and mounted prjquota; the real agent with `runtime:
containerd`, containerd_quota_default_mib 16, tenant grouping on
(containerd_tenant_quota_mib 24). Containers from `ctr -n k8s.io run -d` of
an image imported with `ctr image import`; every write is a `ctr task exec`
once the agent shows the container's project (so the figures do not depend
on who wins the race with the task start; that race is measured apart:
bytes written by the container's first command):
  - `first` (label dockquota.limit=4M), whose own first command writes 16
    MiB at once: stopped at 4 MiB, because the snapshot was tagged at the
    container's create, before the task existed (the watch's
    hook_done_before_task_start_ms > 0 for every task, none started before);
  - `dflt`: a 32 MiB dd stops with EDQUOT/ENOSPC, nothing past 16 MiB;
  - `lbl` (label dockquota.limit=8M): stops at 8 MiB;
  - `t1`, `t2` (label io.kubernetes.pod.namespace=team-a): t1 writes 16 MiB,
    t2's 16 MiB stops at the tenant's 24 MiB, and then t1 cannot write either;
    GET /api/v1/containerd/tenants and /metrics show the tenant;
  - containerd_limit_reached events for dflt, lbl and the tenant;
  - with containerd_tenant_remove_newest (the agent restarted with it):
    team-a, still full, loses t2 (its newest); team-c filled by c-old then
    c-new loses c-new; one containerd_tenant_removed event each; t1 and
    c-old kept, c-old writing again once c-new's snapshot is gone;
  - every container deleted: ids released; new containers get the same ids;
  - churn: DQ_CTRD_CHURN create/delete cycles (default 12) with the agent
    killed (-9) at random points and restarted: afterwards the rows in
    SQLite are exactly containerd's containers, each with its own id.

Prerequisites missing: SKIP outside CI, FAIL with CI=true."""
import json
import os
import random
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import test_containerd_watch as ctw  # noqa: E402

failures = []
check = harness.checker(failures)
MIB = 1024 * 1024
DEFAULT_MIB, LABEL_MIB, TENANT_MIB = 16, 8, 24
NS = ctw.NS
TENANT = "io.kubernetes.pod.namespace"


def start_agent(env, ctrd, **extra):
    return ctw.start_agent(env, ctrd, containerd_quotas=True, containerd_quota_default_mib=DEFAULT_MIB,
                           containerd_tenant_quota_mib=TENANT_MIB, project_id_min=3000, project_id_max=3099, **extra)


def figures(env):
    return ctw.listed(env)


def quotas(env):
    return ctw.ctrd_health(env)["quotas"]


def run_tagged(env, ctrd, cid, *labels):
    """A sleeping container, returned once the agent shows its project."""
    opts = []
    for lab in labels:
        opts += ["--label", lab]
    t0 = time.time()
    ctrd.ctr("run", "-d", *opts, ctw.IMAGE, cid, "sh", "-c",
             "dd if=/dev/zero of=/race bs=4096 count=256 2>/dev/null; sleep 100000")
    c = harness.wait_for(cid + " tagged", lambda: (lambda x: x if x and x.get("project_id") else None)(
        figures(env).get(cid)), timeout=60)
    if not c:
        raise AssertionError(cid + ": no project after 60 s: " + json.dumps(figures(env).get(cid)))
    print("%s: project %s after %.2f s" % (cid, c["project_id"], time.time() - t0), flush=True)
    return c


def write(ctrd, cid, name, mib):
    """dd of `mib` MiB in the container: (exit status, stderr)."""
    p = ctrd.ctr("task", "exec", "--exec-id", "w%d" % random.randrange(1 << 30), cid, "sh", "-c",
                 "dd if=/dev/zero of=/%s bs=1048576 count=%d conv=fsync" % (name, mib), check=False)
    return p.returncode, p.stderr.strip()


def size(c, name):
    p = os.path.join(c["upper_dir"], name)
    return os.path.getsize(p) if os.path.exists(p) else 0


def stopped(rc, err):
    return rc != 0 and ("quota" in err.lower() or "no space" in err.lower())


def wait_used(env, cid, at_least):
    return harness.wait_for(cid + " usage read", lambda: (figures(env).get(cid, {}).get("used_bytes") or 0) >= at_least,
                            timeout=30)


def events(env, kind="containerd_limit_reached"):
    status, body = env.http("/api/v1/events?type=%s&limit=100" % kind)
    assert status == 200, (status, body)
    return body["events"] if isinstance(body, dict) else body


def first_write(env, ctrd, fs):
    """The container's first instruction writes past its limit: the limit
    must already hold (the rootfs is tagged at the container's create)."""
    limit = 4
    # dd's status and complaint go to /dev/shm (a tmpfs): the full rootfs
    # could not hold them.
    ctrd.ctr("run", "-d", "--label", "dockquota.limit=%dM" % limit, ctw.IMAGE, "first", "sh", "-c",
             "dd if=/dev/zero of=/first bs=1048576 count=16 conv=fsync 2>/dev/shm/err; echo $? >/dev/shm/rc; "
             "sleep 100000")
    c = harness.wait_for("first tagged", lambda: (lambda x: x if x and x.get("project_id") else None)(
        figures(env).get("first")), timeout=60)
    if not c:
        raise AssertionError("first: no project after 60 s: " + json.dumps(figures(env).get("first")))
    def shm(name):
        return ctrd.ctr("task", "exec", "--exec-id", "r%d" % random.randrange(1 << 30), "first", "cat",
                        "/dev/shm/" + name, check=False).stdout.strip()
    rc = harness.wait_for("first's dd done", lambda: shm("rc"), timeout=60)
    err = shm("err")
    check(rc not in (None, "", "0"), "%s: first's dd ended with an error (%r)" % (fs, rc))
    got = size(c, "first")
    check(stopped(1, err), "%s: first's own first command was stopped: %s" % (fs, err.strip()[-100:]))
    check(got <= limit * MIB, "%s: first wrote %d bytes at its start: none past its %d MiB" % (fs, got, limit))
    w = ctw.ctrd_health(env)["watch"]
    lead = w["hook_done_before_task_start_ms"]
    print("%s: first: %d bytes of 16 MiB; tagged before the task started by min %.1f ms, p50 %.1f ms (%d tasks); "
          "hooks %s" % (fs, got, lead["min"], lead["p50"], lead["samples"], w["hook_calls"]), flush=True)
    check(w["tasks_started_before_hook"] == 0 and lead["samples"] >= 1 and lead["min"] > 0,
          "%s: every task started after its rootfs was tagged: %s, %s" % (fs, w["tasks_started_before_hook"], lead))
    check(w["hook_calls"].get("rootfs_at_container_create", 0) >= 1 and
          not w["hook_calls"].get("rootfs_at_task_create"),
          "%s: rootfs tagged at container create, never left to the task create: %s" % (fs, w["hook_calls"]))
    delete(ctrd, "first")


def single_limits(env, ctrd, fs):
    d = run_tagged(env, ctrd, "dflt")
    lb = run_tagged(env, ctrd, "lbl", "dockquota.limit=%dM" % LABEL_MIB)
    check(d["limit_bytes"] == DEFAULT_MIB * MIB and lb["limit_bytes"] == LABEL_MIB * MIB,
          "%s: limits default %s, label %s" % (fs, d["limit_bytes"], lb["limit_bytes"]))
    check(d["project_id"] != lb["project_id"], fs + ": own projects")
    for c, limit in ((d, DEFAULT_MIB), (lb, LABEL_MIB)):
        rc, err = write(ctrd, c["id"], "big", 32)
        got = size(c, "big")
        check(stopped(rc, err), "%s: %s: a 32 MiB dd stopped (%d, %s)" % (fs, c["id"], rc, err[-80:]))
        check(got <= limit * MIB and got >= (limit - 2) * MIB,
              "%s: %s wrote %d bytes: none past its %d MiB (and near it)" % (fs, c["id"], got, limit))
        race = size(c, "race")
        print("%s: %s first command's 1 MiB before/while tagging: %d bytes in the upper dir" % (fs, c["id"], race))
        ok = wait_used(env, c["id"], (limit - 2) * MIB)
        u = figures(env)[c["id"]]["used_bytes"]
        check(ok and u <= limit * MIB, "%s: %s used_bytes %s <= limit" % (fs, c["id"], u))


def tenant_limit(env, ctrd, fs):
    t1 = run_tagged(env, ctrd, "t1", TENANT + "=team-a", "dockquota.limit=1M")
    t2 = run_tagged(env, ctrd, "t2", TENANT + "=team-a")
    check(t1["project_id"] == t2["project_id"] and t1["tenant"] == "team-a" and t1["shared"],
          "%s: t1, t2 share the tenant's project %s" % (fs, t1["project_id"]))
    check(t1["limit_bytes"] == TENANT_MIB * MIB, fs + ": the tenant's limit, not t1's label")
    rc1, err1 = write(ctrd, "t1", "a", 16)
    check(rc1 == 0, "%s: t1's 16 MiB fits the tenant (%d %s)" % (fs, rc1, err1[-80:]))
    rc2, err2 = write(ctrd, "t2", "b", 16)
    both = size(t1, "a") + size(t2, "b")
    check(stopped(rc2, err2), "%s: t2 stopped at the tenant limit (%d %s)" % (fs, rc2, err2[-80:]))
    rc3, err3 = write(ctrd, "t1", "c", 4)
    both += size(t1, "c")
    check(stopped(rc3, err3), "%s: t1 stopped too: the tenant is full (%d %s)" % (fs, rc3, err3[-80:]))
    check(both <= TENANT_MIB * MIB, "%s: t1 + t2 wrote %d bytes: none past %d MiB" % (fs, both, TENANT_MIB))
    ok = harness.wait_for("tenant usage", lambda: any(
        t["tenant"] == "team-a" and t["used_bytes"] >= (TENANT_MIB - 2) * MIB
        for t in env.http("/api/v1/containerd/tenants")[1]["tenants"]), timeout=30)
    tenants = env.http("/api/v1/containerd/tenants")[1]["tenants"]
    check(ok and tenants[0]["containers"] == [NS + "/t1", NS + "/t2"] and tenants[0]["limit_bytes"] == TENANT_MIB * MIB,
          "%s: GET /api/v1/containerd/tenants: %s" % (fs, tenants))
    m = ctw.metric(env, "dockquota_containerd_tenant_used_bytes", 'tenant="team-a"')
    check(m is not None and m >= (TENANT_MIB - 2) * MIB and m <= TENANT_MIB * MIB,
          "%s: /metrics tenant used bytes %s" % (fs, m))


def tenant_remove(env, ctrd, fs):
    """containerd_tenant_remove_newest on: a tenant filled to its limit loses
    its newest container (and that one only); the older one writes again
    once the removed snapshot has left the project."""
    since = max([e["id"] for e in events(env, "containerd_tenant_removed")] or [0])
    env.stop_agent()
    start_agent(env, ctrd, containerd_tenant_remove_newest=True)
    old = run_tagged(env, ctrd, "c-old", TENANT + "=team-c")
    new = run_tagged(env, ctrd, "c-new", TENANT + "=team-c")
    check(old["project_id"] == new["project_id"], fs + ": c-old and c-new share team-c's project")
    rc1, _ = write(ctrd, "c-old", "a", 16)
    rc2, err2 = write(ctrd, "c-new", "b", 16)
    check(rc1 == 0 and stopped(rc2, err2), "%s: team-c filled: c-old's 16 MiB fit, c-new stopped (%d, %d %s)" % (
        fs, rc1, rc2, err2[-60:]))
    t0 = time.time()
    gone = harness.wait_for("c-new removed", lambda: "c-new" not in ctrd.containers(), timeout=60)
    took = time.time() - t0
    removed = [e for e in events(env, "containerd_tenant_removed") if e["id"] > since]
    # team-a is still full from tenant_limit: at the first usage read with
    # removal on, its newest (t2) goes too, and t1 stays.
    left = ctrd.containers()
    check(gone and "c-old" in left and "t1" in left and "t2" not in left,
          "%s: the newest container of each full tenant removed (c-new after %.1f s, t2), the older ones kept: %s" % (
              fs, took, sorted(left)))
    check(sorted(e["detail"]["container"] for e in removed) == [NS + "/c-new", NS + "/t2"],
          "%s: one containerd_tenant_removed event each for t2 and c-new: %s" % (fs, [e["detail"] for e in removed]))
    q = quotas(env)
    check(q["counters"]["tenant_removals"] == 2 and q["tenant_remove_newest"] is True,
          "%s: tenant_removals 2 (%s)" % (fs, q["counters"]))
    # containerd's GC removes the snapshot: the tenant has room again.
    room = harness.wait_for("team-c below its limit", lambda: any(
        t["tenant"] == "team-c" and t["used_bytes"] < (TENANT_MIB - 4) * MIB
        for t in env.http("/api/v1/containerd/tenants")[1]["tenants"]), timeout=60)
    rc3, err3 = write(ctrd, "c-old", "c", 4)
    check(room and rc3 == 0, "%s: c-old writes again once c-new's snapshot is gone (%d %s)" % (fs, rc3, err3[-60:]))
    time.sleep(16)  # past the cool-down of 3 usage reads: nothing else goes
    check("c-old" in ctrd.containers() and "t1" in ctrd.containers() and
          quotas(env)["counters"]["tenant_removals"] == 2, "%s: below their limits, the tenants keep c-old and t1" % fs)
    delete(ctrd, "c-old")
    env.stop_agent()
    start_agent(env, ctrd)


def limit_events(env, fs, since):
    want = {("container", NS + "/dflt"), ("container", NS + "/lbl"), ("tenant", "team-a")}
    ok = harness.wait_for("limit events", lambda: want <= {
        (e["detail"]["scope"], e["detail"].get("container") or e["detail"].get("tenant"))
        for e in events(env) if e["id"] > since}, timeout=30)
    got = [(e["detail"]["scope"], e["detail"].get("container") or e["detail"].get("tenant"))
           for e in events(env) if e["id"] > since]
    check(ok and len(got) == len(set(got)), "%s: one containerd_limit_reached per limit: %s" % (fs, got))
    q = quotas(env)["counters"]
    check(q["limit_events"] == 3 and ctw.metric(env, "dockquota_containerd_quota_limit_events_total") == 3,
          "%s: limit_events counter and metric 3 (%s)" % (fs, q))


def delete(ctrd, cid):
    ctrd.ctr("task", "kill", "-s", "SIGKILL", cid, check=False)
    for _ in range(50):
        if ctrd.ctr("task", "rm", cid, check=False).returncode == 0:
            break
        time.sleep(0.2)
    ctrd.ctr("c", "rm", cid, check=False)


def rows(env):
    db = sqlite3.connect(env.db, timeout=10)
    try:
        return {(k, o): i for i, k, o in db.execute(
            "SELECT id, owner_kind, owner FROM projects WHERE owner_kind IN ('ctrd', 'ctrd-tenant')")}
    finally:
        db.close()


def recycled(env, ctrd, fs):
    before = {c["id"]: c for c in figures(env).values()}
    ids = sorted({c["project_id"] for c in before.values()})
    uppers = [c["upper_dir"] for c in before.values()]
    for cid in before:
        delete(ctrd, cid)
    ok = harness.wait_for("rows gone", lambda: not rows(env), timeout=30)
    check(ok, "%s: every row released after the deletes (%s)" % (fs, rows(env)))
    gone = harness.wait_for("snapshots removed", lambda: not any(os.path.exists(u) for u in uppers), timeout=90)
    check(gone, fs + ": containerd removed the snapshots")
    n1 = run_tagged(env, ctrd, "n1")
    n2 = run_tagged(env, ctrd, "n2", TENANT + "=team-b")
    got = sorted([n1["project_id"], n2["project_id"]])
    check(got == ids[:2], "%s: ids recycled: %s, freed %s" % (fs, got, ids))
    q = quotas(env)["counters"]
    check(q["ids_released"] >= len(ids) and
          ctw.metric(env, "dockquota_containerd_quota_ids_released_total") == q["ids_released"],
          "%s: ids_released %s (metric too)" % (fs, q["ids_released"]))
    for cid in ("n1", "n2"):
        delete(ctrd, cid)
    check(harness.wait_for("rows gone", lambda: not rows(env), timeout=30), fs + ": n1, n2 released")


def consistent(env, ctrd, fs, what):
    want = {(NS + "/" + c) for c in ctrd.containers()}
    ok = harness.wait_for("rows = containers", lambda: {o for (k, o) in rows(env) if k == "ctrd"} == want, timeout=30)
    r = rows(env)
    check(ok and len(set(r.values())) == len(r), "%s: %s: rows %s = containerd's %s, distinct ids" % (
        fs, what, sorted(r), sorted(want)))


def churn(env, ctrd, fs):
    n = int(os.environ.get("DQ_CTRD_CHURN", "12"))
    rnd = random.Random(15)
    kills = 0
    t0 = time.time()
    for i in range(n):
        cid = "ch%d" % i
        ctrd.ctr("run", "-d", ctw.IMAGE, cid, "sleep", "100000")
        if rnd.random() < 0.3:
            env.agent.kill()  # -9 between a create and a delete
            env.agent.wait()
            kills += 1
            if rnd.random() < 0.5:
                delete(ctrd, cid)  # while it is down
            start_agent(env, ctrd)
        if ctrd.containers() & {cid} and rnd.random() < 0.8:
            delete(ctrd, cid)
    consistent(env, ctrd, fs, "after %d cycles, %d kill -9" % (n, kills))
    h = quotas(env)["counters"]
    print("%s: churn %d cycles, %d kills, %.1f s; counters %s" % (fs, n, kills, time.time() - t0, h), flush=True)
    left = rows(env)
    env.agent.kill()
    env.agent.wait()
    for cid in sorted(ctrd.containers()):
        delete(ctrd, cid)
    start_agent(env, ctrd)
    consistent(env, ctrd, fs, "all deleted while killed")
    released = quotas(env)["counters"]["reconcile_released"]
    check(not rows(env) and released == len(left),
          "%s: the %d rows left at the kill freed by the reconcile (%d)" % (fs, len(left), released))


def bench(env, ctrd, fs):
    """DQ_CTRD_BENCH=N: `ctr run -d` wall time over N containers with the agent
    stopped, then running (side by side in one boot), and task create ->
    tagged from /healthz. Off by default (CI has no time for it under TCG)."""
    n = int(os.environ.get("DQ_CTRD_BENCH", "0"))
    if n <= 0:
        return

    def runs(tag):
        walls = []
        for i in range(n):
            t0 = time.time()
            ctrd.ctr("run", "-d", ctw.IMAGE, "%s%d" % (tag, i), "sleep", "100000")
            walls.append(time.time() - t0)
        for i in range(n):
            delete(ctrd, "%s%d" % (tag, i))
        walls.sort()
        return walls[len(walls) // 2], sum(walls) / len(walls)

    env.stop_agent()
    off = runs("off")
    start_agent(env, ctrd)
    on = runs("on")
    w = ctw.ctrd_health(env)["watch"]["create_to_hook_done_ms"]
    print("BENCH %s: ctr run -d wall, agent stopped: median %.3f s mean %.3f s; running: median %.3f s mean %.3f s "
          "(%+.1f %% mean); task create -> tagged p50 %.1f ms p99 %.1f ms (%d samples)" % (
              fs, off[0], off[1], on[0], on[1], 100.0 * (on[1] - off[1]) / off[1], w["p50"], w["p99"],
              w["samples"]), flush=True)


def scenario(env, fs):
    data = harness.mount_data_root(env, fs)
    ctrd = ctw.Containerd(os.path.join(data, "ctrd"))
    # A snapshot is removed at the next GC: after every deletion here, so a
    # freed id is clean (nothing charged) when the next container comes.
    with open(ctrd.cfg, "a") as f:
        f.write('[plugins."io.containerd.gc.v1.scheduler"]\n  deletion_threshold = 1\n')
    try:
        ctrd.start()
        tar = os.path.join(env.dir, "busybox-oci.tar")
        ctw.oci_image_tar(tar)
        ctrd.ctr("image", "import", tar)
        start_agent(env, ctrd)
        since = max([e["id"] for e in events(env)] or [0])
        for step in (single_limits, tenant_limit):
            step(env, ctrd, fs)
        limit_events(env, fs, since)
        first_write(env, ctrd, fs)  # after the event count: it reaches its limit too
        tenant_remove(env, ctrd, fs)
        h = ctw.ctrd_health(env)
        print("%s: task create -> hook done %s; tag step %s" % (
            fs, h["watch"].get("create_to_hook_done_ms"), quotas(env)["tag_ms"]), flush=True)
        recycled(env, ctrd, fs)
        bench(env, ctrd, fs)
        churn(env, ctrd, fs)
        hq = env.health()
        # Docker's own backend (no Docker data root here) may say its piece; the containerd stage must not.
        check(not [r for r in hq.get("degraded", []) if r.startswith("containerd quotas")],
              "%s: /healthz names no containerd quota problem: %s" % (fs, hq.get("degraded")))
        check(quotas(env)["counters"]["tag_errors"] == 0, "%s: no tag errors (%s)" % (fs, quotas(env)["counters"]))
    finally:
        ctrd.cleanup()


# In CI (not DQ_VM_FULL) each kernel runs one filesystem, so that the three
# kernels cover both and CI's 90 minutes hold it: XFS on 5.10 and 6.12, ext4
# on 6.1. DQ_CTRD_FS chooses, DQ_VM_FULL=1 runs both on every kernel.
ROTATION = {"5.10": "xfs", "6.1": "ext4", "6.12": "xfs"}


def filesystems():
    if os.environ.get("DQ_CTRD_FS"):
        return os.environ["DQ_CTRD_FS"].split()
    kernel = os.environ.get("VMTEST_KERNEL", "")
    if os.environ.get("DQ_VM_FULL") == "1" or kernel not in ROTATION:
        return ["xfs", "ext4"]
    return [ROTATION[kernel]]


def run(env):
    fss = filesystems()
    print("filesystems: %s (kernel %s)" % (" ".join(fss), os.environ.get("VMTEST_KERNEL", "?")), flush=True)
    for fs in fss:
        e = harness.Env(env.agent_bin)
        t0 = time.time()
        try:
            scenario(e, fs)
        except AssertionError as ex:
            check(False, "%s: scenario raised: %s" % (fs, ex))
        finally:
            if failures:
                print("---- agent log (tail) ----\n" + e.tail_log(60))
            e.cleanup()
        print("%s: %.1f s" % (fs, time.time() - t0), flush=True)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    args, _ = ap.parse_known_args()
    ctw.require(args.agent)
    if not harness.prjquota_works():
        harness.skip_or_fail("no project quotas in this kernel (the host's has none: run it in vmtest)")
    harness.main(run, failures)
