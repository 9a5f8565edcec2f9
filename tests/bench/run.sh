#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Runs dockquota-bench against a throwaway dockerd. Usage: tests/bench/run.sh BUILD_DIR [bench args]
set -eu
build=${1:-build}; shift || true
here=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d /tmp/dq-benchd-XXXXXX)
trap '"$here/tests/tools/dockerd.sh" stop "$dir"; rm -rf "$dir"' EXIT
"$here/tests/tools/dockerd.sh" start "$dir" >/dev/null
"$here/tests/tools/dockerd.sh" image "$dir" bench:1
# Audit would tax every syscall of the benchmark; make sure it is off for new tasks.
command -v auditctl >/dev/null && auditctl -a never,task >/dev/null 2>&1 || true
"$build/tests/dockquota-bench" --agent "$build/dockquotad" --docker-sock "$dir/docker.sock" "$@"
