#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# tests/tools/unit_security.sh UNIT_FILE MAX
# Fails when `systemd-analyze security --offline=true` scores UNIT_FILE's
# exposure above MAX (ctest unit_systemd_security): a change that loosens the
# sandbox must raise MAX in tests/CMakeLists.txt, in the same commit, on purpose.
# No systemd-analyze: SKIP (77), or FAIL with CI=true.
set -eu
unit=$1 max=$2
if ! command -v systemd-analyze >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then echo "FAIL: no systemd-analyze (apt-get install systemd)" >&2; exit 1; fi
  echo "SKIPPED: no systemd-analyze (apt-get install systemd)"; exit 77
fi
# Offline, the file is read as is: no running systemd, and ExecStart's binary
# need not be installed.
out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
line=$(printf '%s\n' "$out" | grep "Overall exposure level" || true)
score=$(printf '%s\n' "$line" | sed -n 's/.*: \([0-9][0-9.]*\) .*/\1/p')
if [ -z "$score" ]; then
  printf '%s\n' "$out" >&2
  echo "FAIL: no exposure score in systemd-analyze's output" >&2
  exit 1
fi
echo "$line"
if awk -v s="$score" -v m="$max" 'BEGIN { exit !(s > m) }'; then
  printf '%s\n' "$out" | grep "✗" >&2 || true
  echo "FAIL: $unit scores $score, above the agreed $max: tighten it back, or raise the number in tests/CMakeLists.txt and say why" >&2
  exit 1
fi
echo "ok: $score <= $max"
