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

Not in a guest with ZFS (no VMTEST_KERNEL_ROOT, no module): SKIP (exit 77)
outside CI, FAIL with CI=true."""
import argparse
import os
import subprocess
import sys
import time

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unit-tests", required=True)
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
    print("PASS: vm_zfs_quotas in %.1f s" % (time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
