#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# The block-device refresh benchmark, in a guest with quota support:
#   vmtest/run.sh -k 6.1 -- tests/bench/block_bench.sh build/tests/block-bench
# Makes three filesystems (ext4 vfsv1 user+group, ext4 vfsv0 user+group with
# quotacheck files, XFS uquota,gquota) with 1,000 user and 1,000 group ids each
# (setquota -b, and a file per id so usage is real), then runs
# `block-bench refresh` (our one-pass read next to repquota -a).
set -euo pipefail
bench=${1:?usage: block_bench.sh BLOCK_BENCH}
ids=${DQ_BENCH_IDS:-1000}
d=$(mktemp -d /tmp/dq-bb-XXXXXX)
mkdir -p "$d"/a "$d"/b "$d"/x
truncate -s 256M "$d"/a.img "$d"/b.img
truncate -s 320M "$d"/x.img
mkfs.ext4 -q -O quota -E quotatype=usrquota:grpquota "$d"/a.img
mkfs.ext4 -q "$d"/b.img
mkfs.xfs -q "$d"/x.img
mount -o loop,usrquota,grpquota "$d"/a.img "$d"/a
mount -o loop,usrquota,grpquota "$d"/b.img "$d"/b
quotacheck -cug "$d"/b && quotaon "$d"/b
mount -o loop,uquota,gquota "$d"/x.img "$d"/x
for m in a b x; do
	# One small file per id (real usage), in one process: a fork costs ~24 ms under TCG.
	python3 - "$d/$m" "$ids" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(1, n + 1):
    p = os.path.join(d, "f%d" % i)
    with open(p, "w") as f:
        f.write("x" * (i % 4096 + 1))
    os.chown(p, 5000 + i, 5000 + i)
PY
	seq 1 "$ids" | awk '{ printf "%d 1000 2000 10 20\n", 5000 + $1 }' | setquota -b -u "$d/$m"
	seq 1 "$ids" | awk '{ printf "%d 1000 2000 10 20\n", 5000 + $1 }' | setquota -b -g "$d/$m"
done
"$bench" refresh --rounds 20
for m in a b x; do umount "$d/$m"; done
rm -rf "$d"
