#!/bin/sh
# The test command (README, .ci/run): build, then run every suite.
#   tests/run.sh            unit, real-kernel BPF, real-dockerd end-to-end, BPF in QEMU VMs
#   tests/run.sh unit       only the fast unprivileged unit tests
# Real-kernel and end-to-end tests need root; with CI=true a test that cannot
# run fails instead of skipping.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build}
labels=${*:-unit bpf e2e vm}
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)"
for label in $labels; do
  echo "==> tests: $label"
  (cd "$build" && ctest --output-on-failure --no-tests=error -L "^$label\$")
done
