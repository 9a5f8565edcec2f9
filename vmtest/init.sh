#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0
# The guest's PID 1, in two stages. run.sh puts this file in the initramfs as
# /init, next to /vmtest/config (variables) and /vmtest/cmd (the command).
#
# stage 1 (no argument, in the initramfs, only busybox):
#   load the boot modules, mount the host root (9p, read-only) as the lower
#   layer of an overlayfs whose upper layer is a tmpfs: the guest sees every
#   host file at its host path, and everything it writes stays in guest RAM.
#   Mount the kernel filesystems into it, then switch_root.
# stage 2 (argument "stage2", in the new root, busybox copied to /run/vmtest):
#   hostname, lo, cgroup controllers, then run the command (or a shell) with a
#   clean environment, print "<marker> exit=<status>" on the console and power
#   off. run.sh reads the marker from the serial log.
#
# Everything here is busybox: the host's own tools are only used by the command.

BB=/bin/busybox

# Called on any setup failure: still print the marker (status 125, "the VM
# failed, not the command") so run.sh fails fast instead of timing out.
fail() {
	echo "vmtest-init: $*"
	echo "$VMTEST_MARK exit=125"
	echo o >/proc/sysrq-trigger
	$BB poweroff -f
}

stage1() {
	$BB mkdir -p /proc /sys /dev
	$BB mount -t proc proc /proc
	$BB mount -t sysfs sysfs /sys
	# devtmpfs: device nodes (loop*, loop-control, ttyS0, kmsg) appear by
	# themselves as drivers register, no mdev/udev needed.
	$BB mount -t devtmpfs devtmpfs /dev
	# shellcheck source=/dev/null
	. /vmtest/config

	# Boot modules, dependencies first (order computed by fetch.sh).
	while read -r mod; do
		out=$($BB insmod "/modules/$mod" 2>&1) || case $out in
			*exists*) ;; # already loaded as someone's dependency
			*) echo "vmtest-init: insmod $mod: $out" ;;
		esac
	done </modules/order

	# The host root. cache=loose: the share is read-only and the host should
	# not change it during a run, so the guest may cache pages and metadata
	# (measured on 6.1: metadata-heavy walks ~15 % faster, big binaries ~30 %
	# faster to start than with cache=none; fork+exec is TCG-bound either way).
	$BB mkdir -p /host /rw /newroot
	$BB mount -t 9p -o "trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose" host /host ||
		fail "cannot mount the 9p host share"
	$BB mount -t tmpfs -o mode=0755 rw /rw
	$BB mkdir -p /rw/upper /rw/work
	# xino=on: without it, a file from the 9p layer has an in-kernel inode
	# (i_ino, s_dev) that differs from what stat(2) reports, so a BPF probe that
	# keys binaries by inode (bpf/exec.bpf.c) never matches a stat()ed path.
	# With xino, overlay makes both the same, as on a normal host filesystem.
	$BB mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work,xino=on root /newroot ||
		fail "cannot mount the overlay root"

	R=/newroot
	for d in proc sys dev; do $BB mount --move "/$d" "$R/$d" || fail "cannot move /$d"; done
	# Kernel filesystems the agent and its tests use. Each may be missing on an
	# old kernel: warn, do not fail.
	try_mount() { $BB mount -t "$1" "$1" "$2" 2>/dev/null || echo "vmtest-init: no $1 on $2"; }
	try_mount cgroup2 $R/sys/fs/cgroup
	try_mount securityfs $R/sys/kernel/security
	try_mount debugfs $R/sys/kernel/debug
	try_mount tracefs $R/sys/kernel/tracing
	try_mount bpf $R/sys/fs/bpf
	$BB mkdir -p $R/dev/pts $R/dev/shm
	$BB mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts $R/dev/pts
	$BB mount -t tmpfs -o mode=1777 shm $R/dev/shm
	# devtmpfs lacks these links; bash's <(...) needs /dev/fd.
	$BB ln -sf /proc/self/fd $R/dev/fd
	$BB ln -sf /proc/self/fd/0 $R/dev/stdin
	$BB ln -sf /proc/self/fd/1 $R/dev/stdout
	$BB ln -sf /proc/self/fd/2 $R/dev/stderr
	# Fresh /run: the host's (docker.sock, pid files) must not leak in.
	$BB mount -t tmpfs -o mode=0755 run $R/run
	# Fresh /tmp, unless the command runs from under the host's /tmp (a
	# checkout there): then keep the overlay's /tmp, writable all the same.
	case $VMTEST_CWD/ in
	/tmp/*) echo "vmtest-init: cwd is under /tmp: /tmp is the host's (overlay), not a fresh tmpfs" ;;
	*) $BB mount -t tmpfs -o mode=1777 tmp $R/tmp ;;
	esac

	# The kernel's own module tree, unpacked by fetch.sh on the host, at the
	# place modprobe and the kernel's request_module() look for it.
	kver=$($BB uname -r)
	mods=$R$VMTEST_CACHE/$VMTEST_NAME/root/lib/modules/$kver
	if [ -d "$mods" ]; then
		$BB mkdir -p "$R/lib/modules/$kver"
		$BB mount --bind "$mods" "$R/lib/modules/$kver"
	else
		echo "vmtest-init: no module tree at $mods: modprobe will not work"
	fi

	$BB mkdir -p $R/run/vmtest
	$BB cp $BB /vmtest/config /vmtest/cmd $R/run/vmtest/
	$BB cp /init $R/run/vmtest/init.sh
	exec $BB switch_root $R /run/vmtest/busybox sh /run/vmtest/init.sh stage2
}

stage2() {
	BB=/run/vmtest/busybox
	# shellcheck source=/dev/null
	. /run/vmtest/config
	# No dots: a prompt's \h would cut "vmtest-6.12" at the first one.
	$BB hostname "vmtest-$(echo "$VMTEST_NAME" | $BB tr . -)"
	$BB ip link set lo up
	# Delegate every controller from the cgroup2 root, as dockerd (cgroupfs
	# driver, no systemd here) expects when it creates /sys/fs/cgroup/docker.
	# (With systemd as init, systemd does this itself.)
	if [ "${VMTEST_SYSTEMD:-0}" != 1 ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then
		ctrls=$($BB sed -e 's/^/+/' -e 's/ / +/g' /sys/fs/cgroup/cgroup.controllers)
		for c in $ctrls; do echo "$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; done
	fi
	read -r up _ </proc/uptime
	echo "vmtest: $VMTEST_NAME $($BB uname -r) up after ${up}s, lockdown: $(
		$BB cat /sys/kernel/security/lockdown 2>/dev/null || echo n/a)"

	[ "${VMTEST_SYSTEMD:-0}" = 1 ] && boot_systemd

	cd "$VMTEST_CWD" 2>/dev/null || { echo "vmtest: no $VMTEST_CWD in the guest"; cd /; }
	# The command gets only what /run/vmtest/cmd exports (PATH, HOME, CI...).
	if [ "$VMTEST_SHELL" = 1 ]; then
		# cttyhack makes the console the shell's controlling tty (job control,
		# Ctrl-C); setsid gives it a session of its own.
		$BB setsid $BB cttyhack $BB env -i /bin/sh /run/vmtest/cmd
	else
		$BB env -i /bin/sh /run/vmtest/cmd </dev/null
	fi
	rc=$?
	echo
	echo "$VMTEST_MARK exit=$rc"
	$BB sleep 0.5 # let the console drain before the kernel's own "sysrq: Power Off"
	echo o >/proc/sysrq-trigger
	$BB sleep 5
	$BB poweroff -f
}

# run.sh -S: systemd becomes PID 1 and boots vmtest.target: sysinit and
# basic.target (journald, udev, tmpfiles, sockets such as docker.socket:
# what a real host has), then vmtest-cmd.service, which runs the command with
# the same clean environment, prints the marker on the console and powers
# off. Nothing else is started (no multi-user.target: the host's enabled
# services stay off unless the command starts them with systemctl).
boot_systemd() {
	[ -x /lib/systemd/systemd ] || fail "run.sh -S: no /lib/systemd/systemd on the host (apt-get install systemd)"
	units=/etc/systemd/system
	$BB mkdir -p $units
	$BB cat >$units/vmtest.target <<-EOF
	[Unit]
	Description=vmtest: run the command
	Requires=vmtest-cmd.service
	After=vmtest-cmd.service
	AllowIsolate=yes
	EOF
	$BB cat >$units/vmtest-cmd.service <<-EOF
	[Unit]
	Description=vmtest: the command
	[Service]
	Type=oneshot
	TimeoutStartSec=infinity
	WorkingDirectory=-$VMTEST_CWD
	StandardInput=null
	StandardOutput=tty
	StandardError=inherit
	TTYPath=/dev/console
	ExecStart=/run/vmtest/busybox sh /run/vmtest/init.sh systemd-cmd
	EOF
	# A boot that falls into emergency mode would wait for a root password
	# on the console until the time limit: print the failure and power off.
	$BB mkdir -p $units/emergency.service.d $units/rescue.service.d
	for d in emergency rescue; do
		$BB cat >$units/$d.service.d/vmtest.conf <<-EOF
		[Service]
		ExecStart=
		ExecStart=/run/vmtest/busybox sh /run/vmtest/init.sh systemd-failed
		EOF
	done
	echo "vmtest: exec /lib/systemd/systemd (unit vmtest.target)"
	# --show-status: which units started, and which failed, in the serial log.
	exec /lib/systemd/systemd --unit=vmtest.target --show-status=yes --log-target=kmsg
}

# vmtest-cmd.service's body: the command, its status as the marker, power off.
systemd_cmd() {
	BB=/run/vmtest/busybox
	# shellcheck source=/dev/null
	. /run/vmtest/config
	$BB env -i /bin/sh /run/vmtest/cmd </dev/null
	rc=$?
	echo
	echo "$VMTEST_MARK exit=$rc"
	$BB sleep 0.5
	echo o >/proc/sysrq-trigger
}

case ${1:-} in
stage2) stage2 ;;
systemd-cmd) systemd_cmd ;;
systemd-failed) BB=/run/vmtest/busybox; . /run/vmtest/config; /bin/systemctl --failed --no-pager; fail "systemd fell into emergency mode" ;;
*) stage1 ;;
esac
