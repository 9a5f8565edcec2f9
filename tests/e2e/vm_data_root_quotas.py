#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""One filesystem that holds Docker's data root AND has user and group
quotas (ctest vm_data_root_quotas: vmtest/run.sh on every kernel; the host
kernel has no quota support).

An XFS image mounted uquota,gquota,prjquota (then an ext4 one made with
-O quota,project and mounted usrquota,grpquota,prjquota) holds a real
dockerd's data root in a subdirectory and the users' own directories beside
it, as a host with /srv/docker and /srv/home on one disk has. The real agent
runs with per-user project quotas and block devices "auto". Through
/remote-api only:
  - the list holds that filesystem once as a block device (user and group
    quotas) and `docker` once, in the spec's order;
  - bytes a container of alice's writes (as uid 0 inside) are in her docker
    figure (her project) and not in her block-device figure (root owns
    them: uid 0's user quota); bytes alice writes herself are in her
    block-device figure and not in her docker figure. No byte counted twice;
  - every figure equals the kernel's report (xfs_quota -u/-g/-p, or
    repquota on ext4) to the byte;
  - a user hard limit PUT on the block device stops alice's own writer
    (unprivileged) at the limit, a docker limit PUT (device=docker) stops
    her container's writer at the limit, and neither PUT moves the other
    limit (read back through the API and from the kernel);
  - every container create and start succeeds.

Prerequisites missing (root, dockerd, quota tools, a kernel with quotas):
SKIP outside CI, FAIL with CI=true. DQ_DATA_ROOT_FS=xfs runs XFS only."""
import os
import pwd
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import USERS, sh, wait_for  # noqa: E402

failures = []
check = harness.checker(failures)
KIB = 1024
MIB = 1024 * 1024
ALICE = USERS["alice"]
CONTAINER_MIB = 16  # what alice's first container writes as root
OWN_MIB = 4  # what alice writes herself
BLOCK_HARD_KIB = 8192  # her user limit on the block device
DOCKER_HEADROOM_MIB = 8  # her docker limit: her usage then, plus this


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


# --- the filesystem ---------------------------------------------------------------

def make_fs(env, fstype):
    """The image mounted at env.dir/fs with user, group and project quotas;
    Docker's data root (env.dir/data, what tests/tools/dockerd.sh uses) is a
    symlink to fs/docker, and alice's home fs/home/alice is hers. Returns
    (device, mount point, alice's home)."""
    image, mp = os.path.join(env.dir, "fs.img"), os.path.join(env.dir, "fs")
    os.makedirs(mp)
    sh("truncate -s 512M %s" % image)
    if fstype == "xfs":
        sh("mkfs.xfs -q %s" % image)
        opts = "uquota,gquota,prjquota"
    else:
        sh("mkfs.ext4 -q -I 256 -O quota,project -E quotatype=usrquota:grpquota:prjquota %s" % image)
        opts = "usrquota,grpquota,prjquota"
    if sh("mount -o loop,%s %s %s" % (opts, image, mp), check_rc=False).returncode != 0:
        harness.skip_or_fail("this kernel cannot mount %s with %s" % (fstype, opts))
    env.unmount = mp  # Env.cleanup unmounts it after dockerd stopped
    os.makedirs(os.path.join(mp, "docker"))
    os.symlink(os.path.join(mp, "docker"), os.path.join(env.dir, "data"))
    home = os.path.join(mp, "home", "alice")
    os.makedirs(home)
    os.chown(home, ALICE, gid_of("alice"))
    os.chmod(home, 0o700)
    dev = sh("findmnt -n -o SOURCE %s" % mp).stdout.strip()
    return dev, mp, home


def mounts_of(source):
    """The mount points of `source` in /proc/self/mounts, in table order."""
    with open("/proc/self/mounts") as f:
        return [t[1].replace("\\040", " ") for t in (line.split() for line in f) if t[0] == source]


def gid_of(user):
    return pwd.getpwnam(user).pw_gid


def write_as_alice(path, mib):
    """dd of `mib` MiB as alice, no capabilities: returns (exit code, stderr)."""
    p = subprocess.run(["setpriv", "--reuid=%d" % ALICE, "--regid=%d" % gid_of("alice"), "--clear-groups",
                        "--inh-caps=-all", "dd", "if=/dev/zero", "of=" + path, "bs=64K", "count=%d" % (mib * 16),
                        "conv=fsync"], capture_output=True, text=True)
    return p.returncode, p.stderr


# --- the kernel's own report ------------------------------------------------------

XFS_LINE = re.compile(r"^#(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+\[([^\]]*)\]\s+(\d+)\s+(\d+)\s+(\d+)")
REPQUOTA_FLAG = {"u": "-u", "g": "-g", "p": "-P"}


def kernel_report(fstype, mp, kind):
    """{id: (used bytes, soft KiB, hard KiB, inodes, isoft, ihard)} for kind u, g or p:
    xfs_quota report -n on XFS, repquota -n on ext4."""
    out = {}
    if fstype == "xfs":
        p = sh("xfs_quota -x -c 'report -%s -n -b -i -N' %s" % (kind, mp))
        for line in p.stdout.splitlines():
            m = XFS_LINE.match(line.strip())
            if m:
                g = [int(m.group(i)) for i in (2, 3, 4, 6, 7, 8)]
                out[int(m.group(1))] = (g[0] * KIB,) + tuple(g[1:])
        return out
    # -v: also ids with limits and no usage.
    p = sh("repquota -v %s -n -p %s" % (REPQUOTA_FLAG[kind], mp))
    for line in p.stdout.splitlines():
        t = line.split()
        if t and t[0].startswith("#"):
            # "#2001 +- 2048 1024 2048 1790000000 1 0 0 0"
            v = [int(x) for x in t[2:10]]
            out[int(t[0][1:])] = (v[0] * KIB, v[1], v[2], v[4], v[5], v[6])
    return out


def figures(e):
    return (e["block_current"], e["block_soft_limit"], e["block_hard_limit"], e["inode_current"],
            e["inode_soft_limit"], e["inode_hard_limit"])


# --- the agent's answers ------------------------------------------------------------

def device_list(env):
    status, listing = env.http("/remote-api/quotas")
    assert status == 200, (status, listing)
    return listing


def by_name(listing):
    return {d["name"]: d for d in listing}


def check_mounts_followed(env, fstype, mp, devname):
    """A mount of the device made (and removed) while the agent runs is in
    (and out of) its mount_points by the next refresh, as qman's slave reads
    them per request: the list is never the table of the agent's start."""
    extra = os.path.join(env.dir, "bind-%s" % fstype)
    os.makedirs(extra, exist_ok=True)
    sh("mount --bind %s %s" % (os.path.join(mp, "home"), extra))
    try:
        seen = wait_for("the new mount point", lambda: (by_name(device_list(env)).get(devname) or {}).get(
            "mount_points") == mounts_of(devname), timeout=15)
        check(seen and extra in mounts_of(devname), "%s: a bind mount made after the agent started is listed: %s" % (
            fstype, (by_name(device_list(env)).get(devname) or {}).get("mount_points")))
    finally:
        sh("umount %s" % extra, check_rc=False)
    gone = wait_for("the mount point gone", lambda: (by_name(device_list(env)).get(devname) or {}).get(
        "mount_points") == mounts_of(devname), timeout=15)
    check(gone, "%s: and no longer listed once unmounted" % fstype)


def alice_project(env):
    return harness.user_project(env, ALICE)


def entry(dev, uid, key="user_quotas", id_key="uid"):
    for e in (dev or {}).get(key, []):
        if e[id_key] == uid:
            return e
    return None


def mismatches(fstype, mp, devname, listing, pid):
    """What the agent's list says that the kernel does not, to the byte: every
    listed user and group of the block device, and alice's docker figures
    against her project. [] when all agree."""
    out = []
    devs = by_name(listing)
    blk = devs.get(devname) or {}
    for kind, key, id_key in (("u", "user_quotas", "uid"), ("g", "group_quotas", "gid")):
        rep = kernel_report(fstype, mp, kind)
        for e in blk.get(key, []):
            # ext4 lists every candidate; one without an entry is all zeros (repquota skips it).
            want = rep.get(e[id_key], (0,) * 6 if fstype == "ext4" else None)
            if figures(e) != want:
                out.append("%s %s %d: agent %s, kernel %s" % (devname, key, e[id_key], figures(e), want))
    if pid is not None:
        prj = kernel_report(fstype, mp, "p").get(pid, (0, 0, 0))
        d = entry(devs.get("docker"), ALICE)
        got = (d["block_current"], d["block_hard_limit"]) if d else (0, 0)
        if got != (prj[0], prj[2]):
            out.append("docker: alice (used, hard KiB) %s, her project %d %s" % (got, pid, (prj[0], prj[2])))
    return out


def settled(env, fstype, mp, devname, pid, what, extra=lambda listing: True, timeout=30):
    """Polls until the agent's list equals the kernel's reports (and extra(listing)
    holds); checks it did; returns the list."""
    last = {"bad": ["never read"], "listing": []}

    def agree():
        listing = device_list(env)
        bad = mismatches(fstype, mp, devname, listing, pid)
        if not extra(listing):
            bad.append("extra condition not met")
        last.update(bad=bad, listing=listing)
        return not bad

    t0 = time.time()
    wait_for(what, agree, timeout=timeout)
    check(not last["bad"], "%s %s: every figure equals the kernel's (%.1f s): %s" % (
        fstype, what, time.time() - t0, "; ".join(last["bad"][:4])))
    return last["listing"]


def used(listing, name, uid=ALICE):
    e = entry(by_name(listing).get(name), uid)
    return e["block_current"] if e else 0


def limits(listing, name, uid=ALICE):
    e = entry(by_name(listing).get(name), uid)
    return (e["block_soft_limit"], e["block_hard_limit"]) if e else (0, 0)


def metrics_agree(env, fstype, devname, listing):
    """/metrics keeps the two accountings apart as the list does: the block
    device's family for the user quota, docker's own for the project."""
    status, text = env.http_text("/metrics")
    samples = {}
    for line in text.splitlines():
        if line.startswith("dockquota_device_user_bytes{") or line.startswith("dockquota_user_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = int(float(value))
    lbl = 'uid="%d",user="alice"' % ALICE
    dev = 'device="%s",%s' % (devname, lbl)
    got = (samples.get('dockquota_device_user_bytes{%s,kind="used"}' % dev),
           samples.get('dockquota_device_user_bytes{%s,kind="hard"}' % dev),
           sum(samples.get('dockquota_user_usage_bytes{%s,kind="%s"}' % (lbl, k), 0)
               for k in ("container", "image_layer", "volume")),
           samples.get('dockquota_user_limit_bytes{%s}' % lbl))
    want = (used(listing, devname), limits(listing, devname)[1] * KIB, used(listing, "docker"),
            limits(listing, "docker")[1] * KIB)
    check(status == 200 and got == want, "%s: /metrics (block used, block hard, docker used, docker limit) %s, "
          "the list %s" % (fstype, got, want))


# --- the scenario -------------------------------------------------------------------

def writer(env, name, mib):
    """A container of alice's writing `mib` MiB as root into its layer; returns (rc, output)."""
    env.docker("alice", "create", "--network", "none", "--name", name, "alice-img:1", "sh", "-c",
               "dd if=/dev/zero of=/fill bs=1048576 count=%d 2>&1; rc=$?; sync; exit $rc" % mib)
    env.docker("alice", "start", name)
    rc = int(env.docker("root", "wait", name))
    return rc, env.docker("root", "logs", name, check=False)


def scenario(env, fstype):
    print("== %s: Docker's data root and user/group quotas on one filesystem" % fstype, flush=True)
    t_start = time.time()
    devname, mp, home = make_fs(env, fstype)
    env.start_dockerd()
    print("dockerd up in %.1f s" % (time.time() - t_start), flush=True)
    env.start_agent(project_quotas="required", block_quotas="auto", device_refresh_interval_s=1,
                    project_sync_interval_s=1, usage_interval_s=5)
    h = env.health()
    pq = h.get("project_quotas", {})
    check(pq.get("state") == "active" and pq.get("usage_source") == "kernel" and pq.get("filesystem") == fstype,
          "%s: project quotas active on the data root, usage from the kernel: %s" % (fstype, pq))
    check(set(h.get("quota_devices", {}).get("devices", {})) == {devname},
          "%s: the one block device is %s: %s" % (fstype, devname, h.get("quota_devices")))

    env.docker("alice", "import", "-", "alice-img:1", input=harness.busybox_rootfs_tar(marker="alice-" + fstype))
    p = wait_for("alice's project", lambda: alice_project(env), timeout=20)
    check(bool(p), "%s: alice's image gave her a project" % fstype)
    pid = p["id"] if p else None
    listing = settled(env, fstype, mp, devname, pid, "after alice's import",
                      extra=lambda ls: used(ls, "docker") > 0)

    # -- the list: that filesystem once as a block device, docker once, by name --
    names = [d["name"] for d in listing]
    check(names == [devname, "docker"], "%s: the list is the block device then docker, each once: %s" % (fstype, names))
    blk = by_name(listing).get(devname) or {}
    opts = blk.get("opts", [])
    # Spec §3.1: every mount of the source in table order. dockerd bind-mounts
    # its data root onto itself when the mount holding it is private (so that
    # it can make it shared): then fs/docker is the device's second mount point.
    check(blk.get("fstype") == fstype and blk.get("mount_points") == mounts_of(devname) and
          blk.get("mount_points", [None])[0] == mp and
          all(o in opts for o in ("usrquota", "grpquota", "prjquota")) and
          "user_quotas" in blk and "group_quotas" in blk,
          "%s: %s is a block device with user and group quotas: %s %s %s" % (
              fstype, devname, blk.get("fstype"), blk.get("mount_points"), opts))
    dock = by_name(listing).get("docker") or {}
    check(dock.get("fstype") == "docker" and dock.get("mount_points") == [os.path.join(mp, "docker")],
          "%s: docker's mount point is its data root on that filesystem: %s" % (fstype, dock.get("mount_points")))
    check_mounts_followed(env, fstype, mp, devname)
    root0 = kernel_report(fstype, mp, "u").get(0, (0,))[0]
    d0, b0 = used(listing, "docker"), used(listing, devname)

    # -- a container's bytes: alice's docker figure, uid 0's user quota --
    rc, out = writer(env, "alice-w1", CONTAINER_MIB)
    check(rc == 0, "%s: alice's container wrote %d MiB as root (rc %d %s)" % (fstype, CONTAINER_MIB, rc, out.strip()))
    listing = settled(env, fstype, mp, devname, pid, "after the container wrote",
                      extra=lambda ls: used(ls, "docker") >= d0 + CONTAINER_MIB * MIB)
    d1, b1 = used(listing, "docker"), used(listing, devname)
    root1 = kernel_report(fstype, mp, "u").get(0, (0,))[0]
    check(d1 >= d0 + CONTAINER_MIB * MIB, "%s: alice's docker figure grew by the container's bytes: %d -> %d" % (
        fstype, d0, d1))
    check(b1 == b0, "%s: alice's block-device figure did not move (root owns the layer): %d -> %d" % (fstype, b0, b1))
    check(root1 - root0 >= CONTAINER_MIB * MIB, "%s: uid 0's user quota holds the container's bytes: +%d" % (
        fstype, root1 - root0))

    # -- alice's own bytes: her block-device figure, not her docker one --
    rc, err = write_as_alice(os.path.join(home, "own"), OWN_MIB)
    check(rc == 0, "%s: alice wrote %d MiB herself (rc %d %s)" % (fstype, OWN_MIB, rc, err.strip()))
    listing = settled(env, fstype, mp, devname, pid, "after alice wrote",
                      extra=lambda ls: used(ls, devname) >= b1 + OWN_MIB * MIB)
    d2, b2 = used(listing, "docker"), used(listing, devname)
    check(b2 >= b1 + OWN_MIB * MIB, "%s: alice's block-device figure grew by her file: %d -> %d" % (fstype, b1, b2))
    check(d2 == d1, "%s: alice's docker figure did not move: %d -> %d" % (fstype, d1, d2))
    g = entry(by_name(listing).get(devname), gid_of("alice"), "group_quotas", "gid")
    check(g is not None and g["block_current"] >= OWN_MIB * MIB,
          "%s: alice's group holds her file in group_quotas: %s" % (fstype, g))
    status, mine = env.http("/remote-api/quotas/users/by-name/alice")
    mine_used = {d["name"]: d["user_quotas"][0]["block_current"] for d in mine} if status == 200 else {}
    check(mine_used == {devname: b2, "docker": d2} and [d["name"] for d in mine] == [devname, "docker"],
          "%s: alice's own routes: both devices, the same figures: %s" % (fstype, mine_used))

    # -- a user limit on the block device stops her own writer, docker's stays --
    status, body = env.http_json("PUT", "/remote-api/quotas/users/%d?device=%s" % (ALICE, devname),
                                 {"block_hard_limit": BLOCK_HARD_KIB, "block_soft_limit": 0,
                                  "inode_hard_limit": 0, "inode_soft_limit": 0})
    check(status == 200 and body.get("block_hard_limit") == BLOCK_HARD_KIB,
          "%s: PUT alice's block hard limit: %s %s" % (fstype, status, body))
    rc, err = write_as_alice(os.path.join(home, "more"), 2 * BLOCK_HARD_KIB // 1024)
    check(rc != 0 and "quota" in err.lower(), "%s: alice's own writer stopped by her user quota: rc %d %s" % (
        fstype, rc, err.strip()))
    u = kernel_report(fstype, mp, "u").get(ALICE, (0, 0, 0))
    check(BLOCK_HARD_KIB * KIB - MIB <= u[0] <= BLOCK_HARD_KIB * KIB and u[2] == BLOCK_HARD_KIB,
          "%s: the kernel has her at %d bytes, hard %d KiB" % (fstype, u[0], u[2]))
    prj = kernel_report(fstype, mp, "p").get(pid, (0, 0, 0))
    check(prj[2] == 0, "%s: her project still has no limit in the kernel: %s" % (fstype, prj))
    listing = settled(env, fstype, mp, devname, pid, "after the block PUT",
                      extra=lambda ls: used(ls, devname) == u[0])
    check(limits(listing, devname) == (0, BLOCK_HARD_KIB) and limits(listing, "docker") == (0, 0),
          "%s: read back: block (soft, hard) %s, docker %s" % (fstype, limits(listing, devname),
                                                              limits(listing, "docker")))

    # -- a docker limit stops her container's writer, the user limit stays --
    d3 = used(listing, "docker")
    docker_kib = (d3 // MIB + DOCKER_HEADROOM_MIB) * 1024
    status, body = env.http_json("PUT", "/remote-api/quotas/users/%d?device=docker" % ALICE,
                                 {"block_hard_limit": docker_kib, "block_soft_limit": docker_kib,
                                  "inode_hard_limit": 0, "inode_soft_limit": 0})
    check(status == 200 and body.get("block_hard_limit") == docker_kib,
          "%s: PUT alice's docker limit %d KiB: %s %s" % (fstype, docker_kib, status, body))
    got = wait_for("the limit in her project", lambda: kernel_report(fstype, mp, "p").get(pid, (0, 0, 0))[2] ==
                   docker_kib, timeout=15)
    check(bool(got), "%s: her project's hard limit is %d KiB in the kernel" % (fstype, docker_kib))
    rc, out = writer(env, "alice-w2", 2 * DOCKER_HEADROOM_MIB)
    check(rc != 0 and ("quota" in out.lower() or "no space" in out.lower()),
          "%s: alice's container writer stopped by her docker limit (rc %d: %s)" % (fstype, rc, out.strip()))
    prj = kernel_report(fstype, mp, "p").get(pid, (0, 0, 0))
    check(docker_kib * KIB - 1 * MIB <= prj[0] <= docker_kib * KIB,
          "%s: her project stopped at the limit: %d of %d bytes" % (fstype, prj[0], docker_kib * KIB))
    u2 = kernel_report(fstype, mp, "u").get(ALICE, (0, 0, 0))
    check(u2[0] == u[0] and u2[2] == BLOCK_HARD_KIB,
          "%s: her user quota did not move: %d bytes, hard %d KiB" % (fstype, u2[0], u2[2]))
    listing = settled(env, fstype, mp, devname, pid, "after the docker PUT",
                      extra=lambda ls: used(ls, "docker") == prj[0])
    check(limits(listing, devname) == (0, BLOCK_HARD_KIB) and limits(listing, "docker") == (docker_kib, docker_kib),
          "%s: read back: block (soft, hard) %s, docker %s" % (fstype, limits(listing, devname),
                                                              limits(listing, "docker")))
    check(used(listing, devname) == u[0], "%s: the container's bytes are still not in her block figure" % fstype)
    metrics_agree(env, fstype, devname, listing)
    h = env.health()
    check(not [r for r in h.get("degraded", []) if "quota" in r],
          "%s: /healthz names no quota problem: %s" % (fstype, h.get("degraded")))
    print("FIGURES %s: alice docker %d bytes (limit %d KiB), block %d bytes (limit %d KiB); scenario %.1f s" % (
        fstype, prj[0], docker_kib, u[0], BLOCK_HARD_KIB, time.time() - t_start), flush=True)


def run(env):
    """Each filesystem on its own dockerd and agent, the previous one gone
    (unmounted) first: the agent must find exactly one block device."""
    fss = ["xfs"] if os.environ.get("DQ_DATA_ROOT_FS") == "xfs" else ["xfs", "ext4"]
    for fstype in fss:
        e = harness.Env(env.agent_bin)
        try:
            scenario(e, fstype)
        except AssertionError as ex:
            check(False, "%s: scenario raised: %s" % (fstype, ex))
            print("---- agent log (tail) ----\n" + e.tail_log(60))
        finally:
            e.cleanup()


def main():
    print("guest uptime at start: %.1f s" % uptime())
    missing = [t for t in ("xfs_quota", "repquota", "mkfs.xfs", "mkfs.ext4", "setpriv", "findmnt") if not shutil.which(t)]
    if os.geteuid() == 0 and missing:
        harness.skip_or_fail("quota prerequisites missing: " + ", ".join(missing))
    started = time.time()
    try:
        harness.main(run, failures)
    finally:
        print("%.1f s in all (guest uptime %.1f s)" % (time.time() - started, uptime()))


if __name__ == "__main__":
    main()
