#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The test command (README, .ci/run): build, then run every suite.
#   tests/run.sh              unit, bpf, e2e, vm, fuzz, asan (all of them, in that order)
#   tests/run.sh unit         only the fast unprivileged unit tests
#   tests/run.sh fuzz asan    only the clang suites
# unit, bpf, e2e and vm are ctest labels of the default build ($BUILD_DIR, build/:
# gcc, RelWithDebInfo). fuzz and asan run from a second build configured with
# clang, ASan+UBSan and the libFuzzer targets ($ASAN_BUILD_DIR, build-asan/):
#   fuzz   every committed fuzz input, then DOCKQUOTA_FUZZ_SECONDS (30) of fuzzing per target
#   asan   the unit and bpf suites built with -fsanitize=address,undefined
# Real-kernel and end-to-end tests need root; with CI=true a test that cannot
# run fails instead of skipping.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build}
asan_build=${ASAN_BUILD_DIR:-$here/build-asan}
labels=${*:-unit bpf e2e vm fuzz asan}
jobs=$(nproc)

main=false
for label in $labels; do
  case $label in
    fuzz | asan) ;;
    *) main=true ;;
  esac
done

if $main; then
  bstart=$(date +%s)
  cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$jobs"
  echo "==> gcc build: $(($(date +%s) - bstart))s"
fi
# The clang build: fuzz and asan need it. With the VM suite it is made in
# the background at nice 19 while the guests run (one TCG guest left the
# host ~70 % idle, vmstat over ctest -L vm), so it costs CI's 90 minutes
# little. Otherwise (no vm label, or tests/run.sh fuzz asan) it is made when
# its first suite comes. A failed build fails fuzz and asan only; the gcc
# suites still run and report.
clang_state=none  # none | ok | failed
build_clang() {
  # A cache made by another compiler cannot be switched: start over then.
  if [ -f "$asan_build/CMakeCache.txt" ] && ! grep -q "^CMAKE_CXX_COMPILER:.*clang" "$asan_build/CMakeCache.txt"; then
    rm -rf "$asan_build"
  fi
  bstart=$(date +%s)
  # -O1 and line tables only: what sanitizer reports need (file:line in each
  # frame), and a third less compile time than -O2 -g.
  CC=clang CXX=clang++ cmake -S "$here" -B "$asan_build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    -DDOCKQUOTA_FUZZ=ON -DDOCKQUOTA_SANITIZE=address,undefined >/dev/null &&
    cmake --build "$asan_build" -j"$jobs" --target unit_tests bpf_tests \
      fuzz-http-stream fuzz-recognizer fuzz-conn-tracker fuzz-config fuzz-docker-json fuzz-api fuzz-http-head fuzz-zfs-output fuzz-size fuzz-authz fuzz-mount-options || return 1
  echo "==> clang ASan+UBSan build: $(($(date +%s) - bstart))s" | tee -a "$summary"
}

# Every suite runs, even after one failed; the exit status says if any did.
# Each test's line (name, status, seconds) is kept for the summary at the end,
# the part of a long CI log that is always read.
failed=""
t0=$(date +%s)
summary=$(mktemp)
clang_log=$(mktemp)
trap 'rm -f "$summary" "$clang_log" "$clang_log.rc"' EXIT

clang_bg=""
# start_clang_bg: when the VM suite starts (its guests leave the cores partly
# idle; the host's bpf and e2e suites, which time things on the host, run
# before it without a compile next to them).
start_clang_bg() {
  case " $labels " in
    *" fuzz "* | *" asan "*) ;;
    *) return 0 ;;
  esac
  [ -z "$clang_bg" ] && [ "$clang_state" = none ] || return 0
  # renice the subshell itself before it forks: cmake, make and clang inherit it.
  (renice -n 19 -p "$(exec sh -c 'echo $PPID')" >/dev/null; build_clang >"$clang_log" 2>&1; echo $? >"$clang_log.rc") &
  clang_bg=$!
  echo "==> clang ASan+UBSan build: in the background at nice 19 (its log at the first clang suite)"
}
# wait_clang: the background build's end; its log, then ok or failed.
wait_clang() {
  wait "$clang_bg" || true
  cat "$clang_log"
  [ "$(cat "$clang_log.rc" 2>/dev/null)" = 0 ]
}

for label in $labels; do
  echo "==> tests: $label"
  start=$(date +%s)
  case $label in
    fuzz | asan)
      dir=$asan_build
      if [ $clang_state = none ]; then
        if [ -n "$clang_bg" ]; then
          if wait_clang; then clang_state=ok; else clang_state=failed; fi
        elif build_clang; then clang_state=ok; else clang_state=failed; fi
      fi
      if [ $clang_state = failed ]; then
        echo "==> tests: $label: the clang build failed" >&2
        failed="$failed $label"
        continue
      fi
      ;;
    vm)
      dir=$build
      start_clang_bg
      ;;
    *) dir=$build ;;
  esac
  log=$(mktemp)
  # -j: the short suites (unit, fuzz, asan) share the cores, and VM tests run
  # two at a time; the kernel and dockerd tests, and the VM tests with a
  # wall-clock bound in the guest, are RUN_SERIAL: one at a time.
  # sh has no pipefail: ctest's status goes through a file past tee.
  (cd "$dir" && ctest -j"$jobs" --output-on-failure --no-tests=error -L "^$label\$"; echo $? >"$log.rc") 2>&1 | tee "$log"
  [ "$(cat "$log.rc")" = 0 ] || failed="$failed $label"
  rm -f "$log.rc"
  # Failures, and tests of 10 s or more (the unit label has hundreds of short ones).
  grep -E "^ *[0-9]+/[0-9]+ Test +#[0-9]+: " "$log" | sed -e 's/^ *[0-9]*\/[0-9]* Test *#[0-9]*: /  /' |
    awk '$(NF-1) + 0 >= 10 || !/Passed/' >>"$summary"
  rm -f "$log"
  echo "==> tests: $label took $(($(date +%s) - start))s (at $(($(date +%s) - t0))s)" | tee -a "$summary"
done
echo "==> summary (each test, then each suite)"
cat "$summary"
if [ -n "$failed" ]; then
  echo "==> FAILED:$failed" >&2
  exit 1
fi
