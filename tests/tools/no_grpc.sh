#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# tests/tools/no_grpc.sh DOCKQUOTAD MODULE: fails when dockquotad links gRPC,
# protobuf or abseil (ldd: what the loader maps at start), and checks the
# module does link gRPC, so the test cannot pass by looking at the wrong file.
set -eu
agent=$1
module=$2
n=$(ldd "$agent" | grep -c -E 'grpc|protobuf|absl' || true)
if [ "$n" != 0 ]; then
  echo "no_grpc: $agent links gRPC/protobuf/abseil:" >&2
  ldd "$agent" | grep -E 'grpc|protobuf|absl' >&2
  exit 1
fi
m=$(ldd "$module" | grep -c grpc || true)
if [ "$m" = 0 ]; then
  echo "no_grpc: $module does not link gRPC: is it the containerd module?" >&2
  exit 1
fi
echo "no_grpc: $agent links no gRPC, protobuf or abseil ($module links $m gRPC libraries)"
