#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""User and group quotas on real ext4 and XFS filesystems through the real
agent's qman API (ctest vm_block_quotas: vmtest/run.sh on every kernel; the
host kernel has no quota support).

An ext4 image made with -O quota and mounted usrquota,grpquota (vfsv1) and an
XFS image mounted uquota,gquota become two devices beside docker. Limits are
set through PUT, an unprivileged writer (setpriv to the user's uid) is stopped
at the hard limit, soft limit and grace are reported, every figure equals
repquota -n / xfs_quota -x -c 'report -n' to the byte, defaults and batch
write what the spec says, and bad bodies are refused with nothing changed.

Prerequisites missing (root, quota tools, a kernel with quota support): SKIP
outside CI, FAIL with CI=true."""
import os
import pwd
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS, sh  # noqa: E402

failures = []
check = harness.checker(failures)
KIB = 1024


def managed_uids():
    """qman's candidates: passwd uids 1000..9999 but 65534 (the host may have more users than ours)."""
    return {p.pw_uid for p in pwd.getpwall() if 1000 <= p.pw_uid <= 9999 and p.pw_uid != 65534}


def make_filesystems(d):
    """ext4 (vfsv1, user+group) and XFS (uquota,gquota) on loop devices; returns {kind: (device, mount point)}."""
    out = {}
    e4, x = os.path.join(d, "e4"), os.path.join(d, "x")
    os.makedirs(e4)
    os.makedirs(x)
    sh("truncate -s 64M %s/e4.img && mkfs.ext4 -q -O quota -E quotatype=usrquota:grpquota %s/e4.img" % (d, d))
    if sh("mount -o loop,usrquota,grpquota %s/e4.img %s" % (d, e4), check_rc=False).returncode != 0:
        harness.skip_or_fail("this kernel cannot mount ext4 with usrquota,grpquota")
    # 320 MiB: the smallest XFS mkfs.xfs 6.x makes.
    sh("truncate -s 320M %s/x.img && mkfs.xfs -q %s/x.img" % (d, d))
    if sh("mount -o loop,uquota,gquota %s/x.img %s" % (d, x), check_rc=False).returncode != 0:
        harness.skip_or_fail("this kernel cannot mount XFS with uquota,gquota")
    # Quota asked for and never turned on (no quotacheck, no quotaon): listed
    # with empty lists, and /healthz says why.
    off = os.path.join(d, "off")
    os.makedirs(off)
    sh("truncate -s 16M %s/off.img && mkfs.ext4 -q %s/off.img" % (d, d))
    sh("mount -o loop,usrquota %s/off.img %s" % (d, off))
    for kind, mp in (("ext4", e4), ("xfs", x), ("off", off)):
        os.chmod(mp, 0o1777)
        dev = sh("findmnt -n -o SOURCE %s" % mp).stdout.strip()
        out[kind] = (dev, mp)
    return out


def write_as(user, path, mib):
    """dd of `mib` MiB as the user (no capabilities): returns (exit code, stderr)."""
    uid = USERS[user]
    p = subprocess.run(["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups", "--inh-caps=-all",
                        "dd", "if=/dev/zero", "of=" + path, "bs=64K", "count=%d" % (mib * 16), "conv=fsync"],
                       capture_output=True, text=True)
    return p.returncode, p.stderr


# --- the kernel's own report ------------------------------------------------------

def repquota(mp, kind):
    """{id: (used KiB, soft, hard, grace end, inodes, isoft, ihard, igrace end)} from repquota -v -n -p (ext4)."""
    out = {}
    # -v: also ids with no usage (limits only), which repquota skips by default.
    p = sh("repquota -v -%s -n -p %s" % ("u" if kind == "user" else "g", mp))
    for line in p.stdout.splitlines():
        t = line.split()
        if not t or not t[0].startswith("#"):
            continue
        # "#2001 +- 2048 1024 2048 1790000000 1 0 0 0"
        out[int(t[0][1:])] = tuple(int(v) for v in t[2:10])
    return out


XFS_LINE = re.compile(r"^#(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\[([^\]]*)\]\s+(\d+)\s+(\d+)\s+(\d+)")


def xfs_report(mp, kind):
    """{id: (used KiB, soft, hard, inodes, isoft, ihard)} from xfs_quota report -n (XFS)."""
    out = {}
    p = sh("xfs_quota -x -c 'report -%s -n -b -i -N' %s" % ("u" if kind == "user" else "g", mp))
    for line in p.stdout.splitlines():
        m = XFS_LINE.match(line.strip())
        if m:
            g = [int(m.group(i)) for i in (2, 3, 4, 6, 7, 8)]
            out[int(m.group(1))] = tuple(g)
    return out


def device(listing, name):
    for d in listing:
        if d["name"] == name:
            return d
    return None


def entries(dev, key="user_quotas", id_key="uid"):
    return {e[id_key]: e for e in dev.get(key, [])}


def same_as_kernel(env, fs):
    """Every listed entry equals the kernel's report, to the byte."""
    status, listing = env.http("/remote-api/quotas")
    check(status == 200, "GET /remote-api/quotas: %s" % status)
    for kind, (dev, mp) in fs.items():
        if kind == "off":
            continue
        d = device(listing, dev)
        check(d is not None, "%s (%s) listed" % (dev, kind))
        if d is None:
            continue
        for qtype, key, id_key in (("user", "user_quotas", "uid"), ("group", "group_quotas", "gid")):
            listed = entries(d, key, id_key)
            if kind == "ext4":
                rep = repquota(mp, qtype)
                for i, e in listed.items():
                    got = (e["block_current"], e["block_soft_limit"], e["block_hard_limit"], e["block_time_limit"],
                           e["inode_current"], e["inode_soft_limit"], e["inode_hard_limit"], e["inode_time_limit"])
                    # ext4 lists every candidate; one without a quota-file entry is all zeros (repquota skips it).
                    r = rep.get(i, (0,) * 8)
                    want = (r[0] * KIB,) + r[1:]
                    check(got == want, "ext4 %s %d: agent %s, repquota %s" % (qtype, i, got, want))
            else:
                rep = xfs_report(mp, qtype)
                for i, e in listed.items():
                    r = rep.get(i)
                    check(r is not None, "xfs %s %d in xfs_quota report" % (qtype, i))
                    if r is None:
                        continue
                    got = (e["block_current"], e["block_soft_limit"], e["block_hard_limit"], e["inode_current"],
                           e["inode_soft_limit"], e["inode_hard_limit"])
                    want = (r[0] * KIB,) + r[1:]
                    check(got == want, "xfs %s %d: agent %s, xfs_quota %s" % (qtype, i, got, want))
                # XFS lists exactly the managed passwd users that have a dquot.
                if qtype == "user":
                    managed = managed_uids()
                    check(set(listed) == {i for i in rep if i in managed},
                          "xfs users listed %s, with a dquot %s" % (sorted(listed), sorted(i for i in rep if i in managed)))
    return listing


def wait_refreshed(env, seconds=2.5):
    """The agent re-reads every device each second (device_refresh_interval_s 1)."""
    time.sleep(seconds)


def run(env, fs):
    e4dev, e4 = fs["ext4"]
    xdev, x = fs["xfs"]
    # Some usage before the agent starts: bob on ext4, carol on XFS.
    check(write_as("bob", e4 + "/bob0", 1)[0] == 0, "bob writes 1 MiB on ext4")
    check(write_as("carol", x + "/carol0", 1)[0] == 0, "carol writes 1 MiB on XFS")

    t0 = time.time()
    start_agent(env)
    print("agent up in %.1f s" % (time.time() - t0))
    h = env.health()
    qd = h.get("quota_devices", {})
    offdev = fs["off"][0]
    check(set(qd.get("devices", {})) == {e4dev, xdev, offdev}, "healthz lists the three devices: %s" % qd)
    quota_reasons = [r for r in h.get("degraded", []) if "quota" in r]
    check(len(quota_reasons) == 1 and quota_reasons[0].startswith(offdev + ": user quota is off on " + offdev)
          and "quotaon" in quota_reasons[0], "degraded: only the device with quota off, saying so: %s" % quota_reasons)

    listing = same_as_kernel(env, fs)
    names = [d["name"] for d in listing]
    check(names == sorted(names) and names[-1] == "docker", "order: %s" % names)
    doff = device(listing, offdev) or {}
    check(doff.get("user_quotas") == [] and "user_quota_format" not in doff and "user_quota_info" not in doff
          and "group_quotas" not in doff and "usrquota" in doff.get("opts", []),
          "quota off: listed with no entries, no format or info, no group fields: %s" % doff)
    d4 = device(listing, e4dev) or {}
    check(d4.get("fstype") == "ext4" and "usrquota" in d4.get("opts", []) and "grpquota" in d4.get("opts", []),
          "ext4 fstype and opts: %s" % d4.get("opts"))
    check(d4.get("user_quota_format") == "vfsv1", "ext4 format vfsv1: %s" % d4.get("user_quota_format"))
    check(d4.get("user_quota_info", {}).get("block_grace") == 604800, "ext4 grace: %s" % d4.get("user_quota_info"))
    check(d4.get("group_quota_format") == "vfsv1" and "group_quotas" in d4, "ext4 group fields")
    check([e["name"] for e in d4.get("user_quotas", []) if e["name"] in USERS] == ["alice", "bob", "carol", "dave"]
          and len(d4.get("user_quotas", [])) == len(managed_uids()),
          "ext4 lists every candidate in passwd order: %s" % [e["name"] for e in d4.get("user_quotas", [])])
    dx = device(listing, xdev) or {}
    check(dx.get("fstype") == "xfs" and "user_quota_format" not in dx, "xfs: no format (ESRCH)")
    check(dx.get("user_quota_info", {}).get("flags") == 65536, "xfs info flags: %s" % dx.get("user_quota_info"))
    check(list(entries(dx)) == [USERS["carol"]], "xfs lists carol only (a dquot): %s" % list(entries(dx)))
    u = d4.get("usage", {})
    check(u.get("total", 0) > 0 and u.get("used", 0) + u.get("free", 0) <= u.get("total", 0), "ext4 usage: %s" % u)

    # --- PUT, the writer stopped at the hard limit, soft limit and grace ---------------
    for user, dev, mp, hard, soft in (("alice", e4dev, e4, 2048, 1024), ("bob", xdev, x, 4096, 2048)):
        uid = USERS[user]
        status, body = env.http_json("PUT", "/remote-api/quotas/users/%d?device=%s" % (uid, dev),
                                     {"block_hard_limit": hard, "block_soft_limit": soft,
                                      "inode_hard_limit": 100, "inode_soft_limit": 50})
        check(status == 200 and body.get("block_hard_limit") == hard and body.get("name") == user,
              "PUT %s on %s: %s %s" % (user, dev, status, body))
        rc, err = write_as(user, mp + "/" + user, hard // 1024 * 2)
        check(rc != 0 and "quota" in err.lower(), "%s's writer stopped by the quota: rc %d %s" % (user, rc, err.strip()))
        size = os.path.getsize(mp + "/" + user)
        check(size <= hard * KIB, "%s wrote %d bytes, hard limit %d" % (user, size, hard * KIB))
    wait_refreshed(env)
    listing = same_as_kernel(env, fs)
    now = time.time()
    for user, dev, hard in (("alice", e4dev, 2048), ("bob", xdev, 4096)):
        e = entries(device(listing, dev) or {}).get(USERS[user], {})
        check(e.get("block_current", 0) > e.get("block_soft_limit", 0) * KIB, "%s over soft: %s" % (user, e))
        check(e.get("block_current", 1 << 60) <= hard * KIB, "%s not over hard: %s" % (user, e))
        grace = e.get("block_time_limit", 0)
        check(now + 604800 - 120 < grace <= now + 604800 + 5, "%s's grace ends in 7 days: %s (now %d)" % (user, grace, now))
    status, mine = env.http("/remote-api/quotas/users/by-name/alice")
    check(status == 200 and [d["name"] for d in mine] == [e4dev],
          "alice's own devices: ext4 only (no dquot on XFS, no docker bytes): %s" % [d["name"] for d in mine])
    status, metrics = env.http_text("/metrics")
    check('dockquota_device_user_bytes{device="%s",uid="%d",user="alice",kind="hard"} %d' % (e4dev, USERS["alice"], 2048 * KIB)
          in metrics, "alice's hard limit in /metrics")

    # --- bad bodies: refused, nothing changed -------------------------------------------
    before = (repquota(e4, "user"), xfs_report(x, "user"))
    bad = [
        ("/remote-api/quotas/users/%d?device=%s" % (USERS["carol"], e4dev), {"block_hard_limit": 100, "block_soft_limit": 200}, 400),
        ("/remote-api/quotas/users/%d?device=%s" % (USERS["carol"], xdev), {"inode_hard_limit": 5, "inode_soft_limit": 6}, 400),
        ("/remote-api/quotas/users/%d?device=%s" % (USERS["carol"], xdev), {"block_hard_limit": -5}, 400),
        ("/remote-api/quotas/users/%d?device=%s" % (USERS["carol"], xdev), {"block_hard_limit": "5"}, 400),
        ("/remote-api/quotas/users/%d?device=%s" % (USERS["carol"], xdev), {}, 400),
        ("/remote-api/quotas/users/%d?device=/dev/nosuch" % USERS["carol"], {"block_hard_limit": 5}, 400),
        ("/remote-api/quotas/users/7777?device=%s" % xdev, {"block_hard_limit": 5}, 404),  # no passwd entry
        ("/remote-api/quotas/users/7777?device=%s" % e4dev, {"block_hard_limit": 5}, 404),
    ]
    for path, body, want in bad:
        status, reply = env.http_json("PUT", path, body)
        check(status == want and isinstance(reply, dict) and "msg" in reply, "PUT %s %s: %s %s" % (path, body, status, reply))
    status, reply = env.http_json("POST", "/remote-api/quotas/batch", {"device": xdev, "block_hard_limit": 10, "block_soft_limit": 20})
    check(status == 400, "batch soft > hard: %s %s" % (status, reply))
    status, reply = env.http_json("PUT", "/remote-api/quotas/defaults?device=%s" % e4dev, {"block_hard_limit": "x"})
    check(status == 400, "defaults with a string: %s %s" % (status, reply))
    after = (repquota(e4, "user"), xfs_report(x, "user"))
    check(before == after, "nothing changed by refused requests")
    check(7777 not in after[0] and 7777 not in after[1], "no entry was made for uid 7777")

    # --- batch (XFS) and defaults (ext4) ---------------------------------------------
    status, r = env.http_json("POST", "/remote-api/quotas/batch",
                              {"device": xdev, "block_hard_limit": 10240, "block_soft_limit": 5120, "preserve_if_nonzero": True})
    n = len(managed_uids())
    check(status == 200 and r == {"total_users": n, "updated_users": n - 1, "skipped_users": 1, "errors": []},
          "batch on XFS: %s %s" % (status, r))
    rep = xfs_report(x, "user")
    check(rep.get(USERS["bob"], (0, 0, 0))[1:3] == (2048, 4096), "bob kept his limits: %s" % (rep.get(USERS["bob"]),))
    for user in ("alice", "carol", "dave"):
        check(rep.get(USERS[user], (0, 0, 0))[1:3] == (5120, 10240), "%s got the batch's limits: %s" % (user, rep.get(USERS[user])))
    status, d = env.http_json("PUT", "/remote-api/quotas/defaults?device=%s" % e4dev,
                              {"block_hard_limit": 8192, "block_soft_limit": 4096, "inode_hard_limit": 0, "inode_soft_limit": 0})
    check(status == 200 and d.get("device_name") == e4dev, "PUT defaults: %s %s" % (status, d))
    status, got = env.http("/remote-api/quotas/defaults?device=%s" % e4dev)
    check(status == 200 and got == d, "GET defaults: %s" % got)
    # The job runs every default_apply_interval_s (10 s): carol and dave (no limits) get the default.
    deadline = time.time() + 25
    while time.time() < deadline:
        rep = repquota(e4, "user")
        if all(rep.get(USERS[u], (0, 0, 0))[1:3] == (4096, 8192) for u in ("carol", "dave")):
            break
        time.sleep(1)
    rep = repquota(e4, "user")
    for user in ("carol", "dave"):
        check(rep.get(USERS[user], (0, 0, 0))[1:3] == (4096, 8192), "%s got the default: %s" % (user, rep.get(USERS[user])))
    check(rep.get(USERS["alice"], (0, 0, 0))[1:3] == (1024, 2048), "alice kept hers: %s" % (rep.get(USERS["alice"]),))
    check(rep.get(USERS["bob"], (0, 0, 0))[1:3] == (4096, 8192), "bob (no limits, 1 MiB used) got the default")
    wait_refreshed(env)
    same_as_kernel(env, fs)


def start_agent(env):
    harness.start_device_agent(env, block_quotas="on", device_refresh_interval_s=1, default_apply_interval_s=10,
                               project_quotas="off", growth_probe=False)


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def main():
    import argparse
    print("guest uptime at start: %.1f s" % uptime())
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    args = ap.parse_args()
    missing = [t for t in ("repquota", "xfs_quota", "mkfs.xfs", "mkfs.ext4", "setpriv", "useradd", "findmnt") if not shutil.which(t)]
    if os.geteuid() != 0:
        missing.append("root")
    if missing:
        harness.skip_or_fail("block quota prerequisites missing: " + ", ".join(missing))
    harness.ensure_users()
    print("users ready at guest uptime %.1f s" % uptime())
    env = harness.Env(args.agent)
    fs = {}
    started = time.time()
    try:
        fs = make_filesystems(env.dir)
        run(env, fs)
    except AssertionError as e:
        failures.append(str(e))
        print("FAIL: %s" % e)
    except Exception as e:  # the agent gone or stuck: its log says why
        failures.append(repr(e))
        print("FAIL: %r" % e)
        raise
    finally:
        if failures:
            print("---- agent log (tail) ----\n" + env.tail_log(80))
        env.stop_agent()
        for _, mp in fs.values():
            subprocess.run(["umount", mp], check=False)
        subprocess.run(["rm", "-rf", env.dir], check=False)
    print("%d failure(s) in %.1f s (guest uptime %.1f s)" % (len(failures), time.time() - started, uptime()))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
