#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# tests/tools/check_format.sh SOURCE_DIR [CLANG_FORMAT]
# Fails, naming the files, when a C++ file of agent/, api/, app/, cli/ or tests/ is
# not as .clang-format says (bpf/ keeps the kernel's C style). To fix:
#   clang-format-14 -i $(find agent api app cli tests -name '*.cpp' -o -name '*.h' -o -name '*.hpp')
set -eu
src=$1
cf=${2:-clang-format-14}
command -v "$cf" >/dev/null || { echo "check_format: $cf not found (Debian: clang-format-14)" >&2; exit 1; }
cd "$src"
bad=""
for f in $(find agent api app cli tests -name '*.cpp' -o -name '*.h' -o -name '*.hpp' | sort); do
  if ! "$cf" --dry-run -Werror "$f" >/dev/null 2>&1; then bad="$bad $f"; fi
done
if [ -n "$bad" ]; then
  echo "check_format: not formatted (clang-format-14 -i FILE):$bad" >&2
  exit 1
fi
echo "check_format: every C++ file is formatted"
