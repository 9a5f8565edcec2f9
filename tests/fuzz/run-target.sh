#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# One fuzz target in CI (ctest -L fuzz): run-target.sh BIN SRC WORK SECONDS MAX_LEN
#   BIN      the fuzz-<what> executable
#   SRC      tests/fuzz/fuzz-<what> (corpus/ and regressions/)
#   WORK     a scratch dir: the grown corpus, and crash inputs (artifacts/)
# First every committed input once, then SECONDS of fuzzing from the corpus.
# Exits non-zero on any finding.
set -eu
bin=$1 src=$2 work=$3 secs=$4 max_len=$5
rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
inputs=$(find "$src/corpus" "$src/regressions" -type f ! -name README.md 2>/dev/null | sort)
if [ -z "$inputs" ]; then
  echo "run-target: no committed inputs under $src" >&2
  exit 1
fi
n=$(echo "$inputs" | wc -l)
echo "run-target: replaying $n committed inputs"
# shellcheck disable=SC2086 # one argument per file (names have no spaces)
"$bin" -timeout=30 -rss_limit_mb=2048 $inputs >"$work/replay.log" 2>&1 || {
  cat "$work/replay.log"
  echo "run-target: a committed input fails (see above)" >&2
  exit 1
}
echo "run-target: fuzzing for ${secs}s"
start=$(date +%s)
"$bin" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -max_len="$max_len" \
  -artifact_prefix="$work/artifacts/" -print_final_stats=1 "$work/corpus" "$src/corpus"
echo "run-target: done in $(($(date +%s) - start))s, corpus grew to $(ls "$work/corpus" | wc -l) inputs"
