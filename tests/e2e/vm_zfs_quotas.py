#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""ZFS user quotas on a real pool, inside the vmtest `zfs` guest (ctest
vm_zfs_quotas: vmtest/run.sh -k zfs -- python3 this --unit-tests ...).

Loads the prebuilt zfs module of that kernel, puts its userland on /usr/sbin/zfs
(a wrapper in the guest's overlay; the host is not touched), makes a pool on a
file in tmpfs with the datasets the backend test expects, a user with no files,
then runs the backend test (unit_tests '[.zfs-vm]': discovery, a quota set
through the backend, an unprivileged writer stopped by the kernel, figures read
back, a dataset gone, no binary). Then reads the user's row with
`zfs userspace -Hp -o type,name,used,quota,objused,objquota` itself.

Then the same through the agent (--agent): the real dockquotad with ZFS on
and no dockerd, over its HTTP API as the qman master calls it: the dataset in
the device list with the user's figures equal to `zfs userspace`, a limit set
with PUT landing in `zfs get userquota@` to the byte, bad bodies refused with
nothing changed, a writer stopped at that limit, the figures after it, the
per-user route, /metrics, and the limit removed.

Not in a guest with ZFS (no VMTEST_KERNEL_ROOT, no module): SKIP (exit 77)
outside CI, FAIL with CI=true."""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

POOL = "dqtank"
UID = 3101
USER = "dqzfs"
QUOTA = 4 << 20


def in_ci():
    return os.environ.get("CI") == "true"


def cannot_run(msg):
    if in_ci():
        print("FAIL: " + msg, file=sys.stderr)
        sys.exit(1)
    print("SKIPPED: " + msg, file=sys.stderr)
    sys.exit(77)


def sh(*args, **kw):
    print("+ " + " ".join(args), flush=True)
    return subprocess.run(args, check=True, text=True, **kw)


def install_zfs(root):
    """The kernel's ZFS userland as /usr/sbin/zfs and /usr/sbin/zpool."""
    libs = os.path.join(root, "lib/x86_64-linux-gnu")
    for tool in ("zfs", "zpool"):
        path = "/usr/sbin/" + tool
        with open(path, "w") as f:
            f.write('#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' % (libs, os.path.join(root, "sbin", tool)))
        os.chmod(path, 0o755)


def make_pool():
    img = "/tmp/%s.img" % POOL
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    sh("zpool", "create", "-O", "mountpoint=/tank", POOL, img)
    sh("zfs", "create", POOL + "/home")
    sh("zfs", "create", POOL + "/gone")
    sh("zfs", "create", "-o", "mountpoint=legacy", POOL + "/legacy")
    sh("zfs", "create", "-o", "mountpoint=none", POOL + "/nomount")
    sh("zfs", "create", POOL + "/excluded")
    os.chmod("/tank/home", 0o1777)


def userspace_row(ds, uid):
    out = sh("zfs", "userspace", "-Hp", "-o", "type,name,used,quota,objused,objquota", ds,
             capture_output=True).stdout
    print(out, end="")
    for line in out.splitlines():
        f = line.split("\t")
        if f[1] in (str(uid), USER):
            return f
    return None


def zfs_get(ds, prop):
    """One property's exact value (-p: bytes), 0 for none."""
    out = sh("zfs", "get", "-H", "-p", "-o", "value", prop, ds, capture_output=True).stdout.strip()
    return 0 if out in ("-", "none", "") else int(out)


def write_until_refused(uid, path, limit):
    """As uid, appends 256 KiB blocks (fsync'ed) to path until the kernel
    refuses or `limit` bytes went in; (bytes written, errno or 0)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        written, err = 0, 0
        try:
            os.setgid(uid)
            os.setuid(uid)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            block = b"z" * (256 << 10)
            while written < limit:
                try:
                    written += os.write(fd, block)
                    os.fsync(fd)
                except OSError as e:
                    err = e.errno
                    break
        finally:
            os.write(w, json.dumps([written, err]).encode())
            os._exit(0)
    os.close(w)
    out = os.read(r, 256)
    os.waitpid(pid, 0)
    return tuple(json.loads(out))


def entry_of(dev, uid):
    rows = [e for e in dev.get("user_quotas", []) if e["uid"] == uid]
    return rows[0] if len(rows) == 1 else None


def through_agent(agent_bin, failures):
    """The dataset served by the real agent over HTTP, as the master sees it."""
    import errno
    check = harness.checker(failures)
    ds = POOL + "/home"
    env = harness.Env(agent_bin)
    try:
        t0 = time.monotonic()
        harness.start_device_agent(env, zfs="on", zfs_datasets=[ds], zfs_binary="/usr/sbin/zfs",
                                   block_quotas="off", project_quotas="off", growth_probe=False,
                                   device_refresh_interval_s=1)
        print("agent serving the devices after %.1f s" % (time.monotonic() - t0), flush=True)
        status, listing = env.http("/remote-api/quotas")
        check(status == 200, "GET /remote-api/quotas: %s" % status)
        names = [d["name"] for d in listing]
        check(names.count(ds) == 1, "%s listed once in %s" % (ds, names))
        check(POOL + "/excluded" not in names and POOL + "/gone" not in names, "only the configured dataset: %s" % names)
        dev = next((d for d in listing if d["name"] == ds), {})
        check(dev.get("fstype") == "zfs" and dev.get("opts") == ["zfs"] and dev.get("user_quota_format") == "zfs"
              and dev.get("mount_points") == ["/tank/home"], "device fields: %s" % {k: v for k, v in dev.items() if k != "user_quotas"})
        check("group_quotas" not in dev, "no group fields on a ZFS device")
        row = userspace_row(ds, UID)
        e = entry_of(dev, UID) or {}
        check(row is not None and e.get("block_current") == int(row[2]),
              "block_current %s == zfs userspace used %s" % (e.get("block_current"), row and row[2]))
        used = int(row[2])
        # A limit 4 MiB above what the user holds, through the master's route.
        limit_kib = used // 1024 + 4096
        url = "/remote-api/quotas/users/%d?device=%s" % (UID, ds)
        status, got = env.http_json("PUT", url, {"block_hard_limit": limit_kib, "block_soft_limit": limit_kib,
                                                 "inode_hard_limit": 0, "inode_soft_limit": 0})
        check(status == 200 and got.get("block_hard_limit") == limit_kib and got.get("uid") == UID,
              "PUT %s: %s %s" % (url, status, got))
        check(zfs_get(ds, "userquota@%d" % UID) == limit_kib * 1024,
              "zfs userquota@%d == %d bytes" % (UID, limit_kib * 1024))
        for body, want in (({"block_hard_limit": -5}, 400), ({"block_hard_limit": "5"}, 400),
                           ({"block_hard_limit": 1 << 41}, 400), ({"block_hard_limit": 1 << 70}, 400)):
            status, got = env.http_json("PUT", url, body)
            check(status == want and isinstance(got, dict) and "msg" in got, "PUT %s -> %s %s" % (body, status, got))
        status, got = env.http_json("PUT", "/remote-api/quotas/users/%d?device=%s/nosuch" % (UID, POOL), {"block_hard_limit": 5})
        check(status == 400, "unknown dataset -> %s %s" % (status, got))
        check(zfs_get(ds, "userquota@%d" % UID) == limit_kib * 1024, "the bad bodies changed nothing")
        # The kernel stops the user's writer at that limit (ZFS charges late: a
        # bounded overshoot of what one transaction group holds).
        written, err = write_until_refused(UID, "/tank/home/agent-fill", 64 << 20)
        over = zfs_get(ds, "userused@%d" % UID) - limit_kib * 1024
        print("writer: %d bytes, errno %d, %d bytes over the limit" % (written, err, over), flush=True)
        check(err == errno.EDQUOT, "writer stopped with EDQUOT (errno %d after %d bytes)" % (err, written))
        check(over < (8 << 20), "overshoot %d bytes under 8 MiB" % over)
        # The next refresh shows the new figures, on every route.
        time.sleep(2.5)
        now = zfs_get(ds, "userused@%d" % UID)
        status, listing = env.http("/remote-api/quotas")
        e = entry_of(next((d for d in listing if d["name"] == ds), {}), UID) or {}
        check(e.get("block_current") == now, "after the writer: block_current %s == userused %d" % (e.get("block_current"), now))
        status, mine = env.http("/remote-api/quotas/users/%d" % UID)
        mine_ds = [d for d in mine if d["name"] == ds] if status == 200 else []
        check(len(mine_ds) == 1 and entry_of(mine_ds[0], UID), "per-user route: %s %s" % (status, mine))
        status, text = env.http_text("/metrics")
        sample = 'dockquota_device_user_bytes{device="%s",uid="%d",user="%s",kind="hard"} %d' % (ds, UID, USER, limit_kib * 1024)
        check(status == 200 and sample in text, "/metrics has %s" % sample)
        status, got = env.http_json("PUT", url, {"block_hard_limit": 0, "block_soft_limit": 0})
        check(status == 200 and zfs_get(ds, "userquota@%d" % UID) == 0, "limit removed: %s %s" % (status, got))
        os.unlink("/tank/home/agent-fill")
    except AssertionError as e:
        failures.append(str(e))
    finally:
        if failures:
            print("---- agent log (tail) ----\n" + env.tail_log(60))
        env.stop_agent()
        subprocess.run(["rm", "-rf", env.dir], check=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unit-tests", required=True)
    ap.add_argument("--agent", required=True)
    args = ap.parse_args()
    root = os.environ.get("VMTEST_KERNEL_ROOT")
    if os.geteuid() != 0 or not root or not os.path.exists(os.path.join(root, "sbin/zfs")):
        cannot_run("needs root in the vmtest `zfs` guest (vmtest/run.sh -k zfs)")
    t0 = time.monotonic()
    if subprocess.run(["modprobe", "zfs"]).returncode != 0:
        cannot_run("modprobe zfs failed on %s" % os.uname().release)
    print("modprobe zfs: %.1f s" % (time.monotonic() - t0), flush=True)
    # ZFS charges a write to its user when the transaction group syncs (every
    # 5 s by default): a writer passes its quota by what it writes meanwhile.
    # 1 s keeps that overshoot small enough to bound in the test.
    with open("/sys/module/zfs/parameters/zfs_txg_timeout", "w") as f:
        f.write("1\n")
    install_zfs(root)
    make_pool()
    sh("useradd", "-M", "-u", str(UID), USER)
    env = dict(os.environ, DQ_ZFS_BINARY="/usr/sbin/zfs", DQ_ZPOOL_BINARY="/usr/sbin/zpool", DQ_ZFS_POOL=POOL, DQ_ZFS_UID=str(UID))
    t1 = time.monotonic()
    rc = subprocess.run([args.unit_tests, "[.zfs-vm]"], env=env).returncode
    print("backend test: %.1f s, exit %d" % (time.monotonic() - t1, rc), flush=True)
    if rc != 0:
        return 1
    # The backend removed the quota at the end; what it left, by zfs's own report.
    row = userspace_row(POOL + "/home", UID)
    if row is None or int(row[2]) < QUOTA or row[3] not in ("0", "none"):
        print("FAIL: zfs userspace row for %d: %r" % (UID, row), file=sys.stderr)
        return 1
    failures = []
    t2 = time.monotonic()
    through_agent(args.agent, failures)
    print("through the agent: %.1f s, %d failure(s)" % (time.monotonic() - t2, len(failures)), flush=True)
    for f in failures:
        print("FAIL: " + f, file=sys.stderr)
    if failures:
        return 1
    print("PASS: vm_zfs_quotas in %.1f s" % (time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
