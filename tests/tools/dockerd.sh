#!/bin/sh
# Starts or stops a throwaway dockerd whose every path lives under DIR.
#   tests/tools/dockerd.sh start DIR [GROUP]   -> socket DIR/docker.sock, pid DIR/dockerd.pid
#   tests/tools/dockerd.sh stop DIR
#   tests/tools/dockerd.sh image DIR NAME      -> imports a busybox image named NAME
# No network: --bridge=none --iptables=false, so containers need --network none.
# DQ_DOCKERD_DEBUG=1: dockerd -D, so DIR/dockerd.log has every API call and
# containerd event with its time (test_enforce.py's timeline shows them).
set -eu
cmd=$1 dir=$2
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock=$dir/docker.sock
case "$cmd" in
start)
  group=${3:-}
  dockerd ${DQ_DOCKERD_DEBUG:+-D} --iptables=false --ip6tables=false --bridge=none --data-root "$dir/data" \
    --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" -H "unix://$sock" \
    ${group:+--group "$group"} --storage-driver overlay2 >"$dir/dockerd.log" 2>&1 &
  pid=$!
  # 60 s of wall time: under QEMU TCG on a busy 2-core host dockerd's start
  # takes tens of seconds (and each curl there a good part of one, so counting
  # tries was minutes). A dockerd that exited (e.g. "timeout waiting for
  # containerd to start") is reported at once.
  deadline=$(($(date +%s) + 60))
  while ! curl -sf -m 5 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "dockerd exited while starting; log:" >&2; tail -30 "$dir/dockerd.log" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "dockerd did not come up in 60 s; log:" >&2; tail -30 "$dir/dockerd.log" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "$sock"
  ;;
stop)
  if [ -f "$dir/dockerd.pid" ]; then
    pid=$(cat "$dir/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
  fi
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
