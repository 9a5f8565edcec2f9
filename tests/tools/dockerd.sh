#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Starts or stops a throwaway dockerd whose every path lives under DIR.
#   tests/tools/dockerd.sh start DIR [GROUP]   -> socket DIR/docker.sock, pid DIR/dockerd.pid
#   tests/tools/dockerd.sh stop DIR
#   tests/tools/dockerd.sh image DIR NAME      -> imports a busybox image named NAME
# No network: --bridge=none --iptables=false, so containers need --network none.
# DQ_DOCKERD_DEBUG=1: dockerd -D, so DIR/dockerd.log has every API call and
# containerd event with its time (test_enforce.py's timeline shows them).
# DQ_DOCKERD_AUTHZ=NAME: dockerd --authorization-plugin NAME (test_admission.py).
set -eu
cmd=$1 dir=$2
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$dir/docker.sock
case "$cmd" in
start)
  group=${3:-}
  # containerd first, on its own: dockerd gives the containerd it starts
  # itself a fixed time to come up, which QEMU TCG on a busy 2-core host
  # overran ("timeout waiting for containerd to start", a flake in the VM
  # suites). Started here, it gets the deadline below.
  printf '%s\n' 'version = 2' "root = \"$dir/containerd\"" "state = \"$dir/containerd-state\"" \
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]' '[grpc]' "  address = \"$dir/containerd.sock\"" \
    >"$dir/containerd.toml"
  containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
  echo $! >"$dir/containerd.pid"
  # 180 s of wall time: under QEMU TCG on a busy 2-core host containerd and
  # dockerd take tens of seconds each (and each probe there a good part of
  # one, so counting tries was minutes). One that exited is reported at once.
  deadline=$(($(date +%s) + 180))
  wait_up() {  # what pid log probe...
    what=$1 pid=$2 log=$3
    shift 3
    while ! "$@" >/dev/null 2>&1; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "$what exited while starting; log:" >&2; tail -30 "$log" >&2; exit 1
      fi
      if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "$what did not come up in 180 s; log:" >&2; tail -30 "$log" >&2; exit 1
      fi
      sleep 0.1
    done
  }
  wait_up containerd "$(cat "$dir/containerd.pid")" "$dir/containerd.log" \
    ctr --address "$dir/containerd.sock" --timeout 5s version
  dockerd ${DQ_DOCKERD_DEBUG:+-D} ${DQ_DOCKERD_AUTHZ:+--authorization-plugin "$DQ_DOCKERD_AUTHZ"} --iptables=false --ip6tables=false --bridge=none --data-root "$dir/data" \
    --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" -H "unix://$sock" --containerd "$dir/containerd.sock" \
    ${group:+--group "$group"} --storage-driver overlay2 >"$dir/dockerd.log" 2>&1 &
  wait_up dockerd $! "$dir/dockerd.log" curl -sf -m 5 --unix-socket "$sock" http://d/_ping
  echo "$sock"
  ;;
stop)
  # dockerd (it stops the containers), then the containerd it used.
  for name in dockerd containerd; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
  done
  ;;
image)
  name=$3
  root=$(mktemp -d)
  mkdir -p "$root/bin"
  cp /bin/busybox "$root/bin/busybox"
  for a in sh ls cat echo dd sleep head true mkdir rm sync; do ln -sf busybox "$root/bin/$a"; done
  tar -C "$root" -cf - . | docker -H "unix://$sock" import - "$name" >/dev/null
  rm -rf "$root"
  ;;
*) echo "usage: $0 start|stop|image DIR ..." >&2; exit 2 ;;
esac
