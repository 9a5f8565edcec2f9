#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# One command: install the Debian packages, build, install and start dockquota
# against the local Docker with the default config.
#   sudo deploy/install.sh
# Idempotent: re-running rebuilds and restarts; an existing config and API key are kept.
#   deploy/install.sh --binary FILE   installs FILE as dockquotad: no apt, no
#                                     build (packagers; tests/vm/systemd_unit.sh)
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
binary=
case "${1:-}" in
--binary) binary=${2:?install.sh: --binary needs a file} ;;
"") ;;
*) echo "usage: install.sh [--binary FILE]" >&2; exit 2 ;;
esac
# Whatever the caller's umask, what is created below has the modes it names.
umask 022

if [ -z "$binary" ]; then
  echo "==> packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $(grep -v '^#' "$here/deploy/packages.txt") >/dev/null

  echo "==> build"
  cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$here/build" -j"$(nproc)" --target dockquotad docker-quota dockquotactl dockquota_containerd
  binary=$here/build/dockquotad
fi
clients=$(dirname "$binary")

echo "==> install"
install -D -m 0755 "$binary" /usr/local/sbin/dockquotad
install -D -m 0644 "$here/README.md" /usr/local/share/doc/dockquota/README.md
# The clients, when built next to the agent (--binary: a packager's may not be).
# `docker quota`: /usr/libexec/docker/cli-plugins is searched by Debian's
# docker.io CLI (20.10) and by Docker's own (/usr/local/bin/docker, 2x.x) alike.
if [ -x "$clients/docker-quota" ]; then
  install -D -m 0755 "$clients/docker-quota" /usr/libexec/docker/cli-plugins/docker-quota
fi
# The containerd module, loaded only when the config's runtime includes
# containerd (the path dockquotad was built with: CMAKE_INSTALL_LIBDIR).
if [ -f "$clients/dockquota-containerd.so" ]; then
  install -D -m 0644 "$clients/dockquota-containerd.so" /usr/local/lib/dockquota/dockquota-containerd.so
fi
if [ -x "$clients/dockquotactl" ]; then
  install -D -m 0755 "$clients/dockquotactl" /usr/local/sbin/dockquotactl
  install -D -m 0644 "$here/deploy/completion/dockquotactl" /usr/share/bash-completion/completions/dockquotactl
fi
install -d -m 0700 /etc/dockquota /var/lib/dockquota
[ -f /etc/dockquota/config.json ] || install -m 0600 "$here/deploy/config.default.json" /etc/dockquota/config.json
if [ ! -s /etc/dockquota/api-key ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > /etc/dockquota/api-key)
  echo "    generated API key in /etc/dockquota/api-key"
fi
checked=$(/usr/local/sbin/dockquotad --config /etc/dockquota/config.json --check-config)
echo "$checked"

if [ -d /run/systemd/system ]; then
  echo "==> systemd"
  install -D -m 0644 "$here/deploy/systemd/dockquota.service" /etc/systemd/system/dockquota.service
  # Admission control's socket: installed, not enabled (README "Admission control").
  install -D -m 0644 "$here/deploy/systemd/dockquota.socket" /etc/systemd/system/dockquota.socket
  # A containerd node (the config's runtime includes containerd): the agent
  # wants containerd.service and starts after it (deploy/systemd/README.md).
  dropin=/etc/systemd/system/dockquota.service.d/containerd.conf
  if echo "$checked" | grep -q '^runtime:.*containerd'; then
    install -D -m 0644 "$here/deploy/systemd/dockquota.service.d/containerd.conf" "$dropin"
  else
    rm -f "$dropin"
  fi
  systemctl daemon-reload
  systemctl enable --now docker.service >/dev/null 2>&1 || true
  systemctl enable dockquota.service >/dev/null
  systemctl restart dockquota.service
else
  # No systemd (containers, minimal VMs): run Docker and the agent directly.
  echo "==> no systemd: starting processes directly"
  if ! curl -sf --unix-socket /var/run/docker.sock http://d/_ping >/dev/null 2>&1; then
    # Without systemd there is usually no network setup either (see README).
    nohup dockerd --iptables=false --bridge=none >/var/log/dockerd.log 2>&1 &
    i=0; until curl -sf --unix-socket /var/run/docker.sock http://d/_ping >/dev/null 2>&1; do
      i=$((i + 1)); [ $i -lt 300 ] || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }; sleep 0.1
    done
  fi
  if [ -f /run/dockquotad.pid ] && kill "$(cat /run/dockquotad.pid)" 2>/dev/null; then sleep 1; fi
  nohup /usr/local/sbin/dockquotad --config /etc/dockquota/config.json >>/var/log/dockquota.log 2>&1 &
  echo $! > /run/dockquotad.pid
  echo "    logs: /var/log/dockquota.log"
fi

port=$(sed -n 's/.*"listen_port": *\([0-9]*\).*/\1/p' /etc/dockquota/config.json); port=${port:-8436}
# Wall time, not tries: a slow machine (or a VM without KVM) may take a while
# to load the probes.
deadline=$(($(date +%s) + 60))
until curl -sf -m 5 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "dockquotad did not answer on :$port in 60 s" >&2; exit 1; }; sleep 0.2
done
echo "==> running: http://127.0.0.1:$port/healthz"
curl -s "http://127.0.0.1:$port/healthz" | python3 -c 'import json,sys; h=json.load(sys.stdin); print("    status:", h["status"], *h["degraded"], sep="\n      ")'
