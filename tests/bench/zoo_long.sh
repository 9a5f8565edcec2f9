#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The long run of the randomized client zoo (tests/e2e/test_zoo.py) for the
# record: 20,000 creates by default (CI runs 1,000), every object judged
# against the agent's lists, wrong/lost counts by client stack and connection
# pattern, and every object with its verdict in a JSON-lines ledger.
#   tests/bench/zoo_long.sh [BUILD_DIR] [test_zoo.py options: --seed N --creates N ...]
# Output: stdout, and a copy with the ledger in /tmp/dq-zoo-long-<time>/.
# Needs root, dockerd, the users of tests/e2e (made if missing). About 25 minutes
# on a 2-core machine at 20,000 creates.
set -eu
build=${1:-build}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")/../.." && pwd)
out=/tmp/dq-zoo-long-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
# Audit rules would tax every syscall of the run; make sure new tasks skip them.
command -v auditctl >/dev/null && auditctl -a never,task >/dev/null 2>&1 || true
start=$(date +%s)
python3 "$here/tests/e2e/test_zoo.py" --agent "$build/dockquotad" --creates 20000 --max-seconds 7200 \
  --ledger "$out/ledger.jsonl" --agent-log-level info "$@" 2>&1 | grep --line-buffered -v '^20[0-9][0-9]-[0-9][0-9]-[0-9][0-9]T' | tee "$out/zoo.log" || true
# (the agent's own log lines, printed on failure, are left out of the copy)
echo "zoo_long: $(($(date +%s) - start)) s; log and ledger in $out"
grep -q '^0 failure(s)$' "$out/zoo.log"
