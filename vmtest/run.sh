#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# vmtest/run.sh [-k NAME]... [-t SECONDS] [-m MEM] -- CMD [ARGS...]
# vmtest/run.sh [-k NAME] -s
#
# Boots each chosen kernel of vmtest/kernels.txt (default: all, one after the
# other) under QEMU with the host's root as the guest's root (read-only 9p +
# a tmpfs overlay, see init.sh), runs CMD ARGS in the same working directory
# and exits with the command's status: 0 when every kernel passed, else the
# status of the first kernel that failed. 124 means that kernel timed out, 125
# that the VM itself failed (no exit marker: panic, missing module, bad init).
#
#   -k NAME     a kernel from kernels.txt (repeatable; `pinned` ones only so)
#   -s          interactive shell in the first chosen kernel instead of CMD
#   -S          boot systemd as init (PID 1); CMD runs as a service of it
#               once basic.target is up (see init.sh, boot_systemd)
#               (quit with `exit`, or Ctrl-A X to kill QEMU)
#   -t SECONDS  per-kernel time limit, default 1200
#   -m MEM      guest memory, default 3G (the overlay's writes live in it)
#
# The guest gets PATH, HOME=/root, CI, LANG, LC_ALL and VMTEST_KERNEL=NAME;
# VMTEST_PASSENV="VAR1 VAR2" passes more. Serial logs: vmtest/.cache/logs/.
# VMTEST_APPEND="..." adds kernel arguments (e.g. "loglevel=7 softlockup_all_cpu_backtrace=1").
set -uo pipefail

VMTEST_DIR=$(cd "$(dirname "$0")" && pwd -P)
CACHE=${VMTEST_CACHE:-$VMTEST_DIR/.cache}
export VMTEST_CACHE=$CACHE

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
say() { printf 'vmtest: %s\n' "$*" >&2; }

kernels=()
shell=0
systemd=0
timeout_s=1200
mem=3G
while getopts "k:sSt:m:h" opt; do
	case $opt in
	k) kernels+=("$OPTARG") ;;
	s) shell=1 ;;
	S) systemd=1 ;;
	t) timeout_s=$OPTARG ;;
	m) mem=$OPTARG ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))   # getopts also consumed a "--"
if [ "$shell" = 0 ] && [ $# -eq 0 ]; then usage; fi
if [ "$shell" = 1 ] && [ "$systemd" = 1 ]; then say "-s and -S do not go together"; exit 2; fi

if [ ${#kernels[@]} -eq 0 ]; then
	# The matrix: every kernel but the `pinned` ones (those only by -k NAME).
	mapfile -t kernels < <(sed -e 's/#.*//' "$VMTEST_DIR/kernels.txt" | awk 'NF && $2 != "pinned" { print $1 }')
fi
[ "$shell" = 0 ] || kernels=("${kernels[0]}")   # a shell is for one kernel

# Cached after the first time: this does nothing and needs no network then.
"$VMTEST_DIR/fetch.sh" "${kernels[@]}" || exit 1

for tool in qemu-system-x86_64 cpio gzip timeout; do
	command -v "$tool" >/dev/null || { say "missing $tool (apt-get install qemu-system-x86 cpio)"; exit 1; }
done

# q ARG: ARG in single quotes, for the sh scripts we hand to the guest, so any
# argument (spaces, quotes, $, newlines) arrives unchanged.
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

mkdir -p "$CACHE/runs" "$CACHE/logs"
# Logs of old runs, and run folders a killed run.sh left behind, go after a week.
find "$CACHE/logs" "$CACHE/runs" -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {} + 2>/dev/null
run_dir=
qemu_pidfile=
# shellcheck disable=SC2317  # called by the trap
cleanup() {
	# Never leave a QEMU behind (Ctrl-C, CI's SIGTERM, a crash of this script).
	if [ -n "$qemu_pidfile" ] && [ -s "$qemu_pidfile" ]; then
		kill "$(cat "$qemu_pidfile")" 2>/dev/null
	fi
	[ -z "$run_dir" ] || rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# make_initrd NAME: $run_dir/initrd = fetch.sh's initramfs + a small second
# archive with /init (init.sh), /vmtest/config and /vmtest/cmd. The kernel
# unpacks concatenated archives in order, so no rebuild per run or per edit of
# init.sh, and the command never has to go through the kernel command line.
make_initrd() {
	local name=$1 stage=$run_dir/cpio var
	mkdir -p "$stage/vmtest"
	install -m 0755 "$VMTEST_DIR/init.sh" "$stage/init"
	{
		echo "VMTEST_NAME=$(q "$name")"
		echo "VMTEST_CACHE=$(q "$CACHE")"
		echo "VMTEST_CWD=$(q "$(pwd -P)")"
		echo "VMTEST_MARK=$(q "$mark")"
		echo "VMTEST_SHELL=$shell"
		echo "VMTEST_SYSTEMD=$systemd"
	} >"$stage/vmtest/config"
	{
		echo "export PATH=$(q "$PATH") HOME=/root USER=root LOGNAME=root"
		echo "export VMTEST_KERNEL=$(q "$name")"
		# The unpacked packages of this kernel (a pinned kernel's userland, e.g.
		# zfs in sbin/ and its libraries in lib/x86_64-linux-gnu/).
		echo "export VMTEST_KERNEL_ROOT=$(q "$CACHE/$name/root")"
		for var in CI LANG LC_ALL ${VMTEST_PASSENV:-}; do
			[ -z "${!var+set}" ] || echo "export $var=$(q "${!var}")"
		done
		if [ "$shell" = 1 ]; then
			# A serial console has no window size: give it the host's.
			echo "export TERM=$(q "${TERM:-vt100}")"
			stty size 2>/dev/null | awk '{ print "stty rows " $1 " cols " $2 }'
			echo 'exec /bin/bash -i'
		else
			echo "export TERM=dumb"
			printf 'exec'
			for arg in "${cmd[@]}"; do printf ' %s' "$(q "$arg")"; done
			echo
		fi
	} >"$stage/vmtest/cmd"
	(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) >"$run_dir/extra.img"
	cat "$CACHE/$name/initrd.img" "$run_dir/extra.img" >"$run_dir/initrd"
}

# boot NAME: run QEMU for one kernel; sets $status (the command's, or 124/125).
boot() {
	local name=$1 qemu_rc line
	# shellcheck disable=SC2054  # the commas are QEMU's, not array separators
	local qemu=(qemu-system-x86_64
		-accel tcg -cpu max -smp 2 -m "$mem"
		# qboot instead of SeaBIOS: it only loads -kernel/-initrd, and does
		# not clear the screen with escape codes that garble the logs.
		-nodefaults -no-user-config -nographic -no-reboot -bios qboot.rom
		-serial mon:stdio
		-kernel "$CACHE/$name/vmlinuz" -initrd "$run_dir/initrd"
		# panic=-1: a panic reboots at once, which -no-reboot turns into a
		# QEMU exit instead of a hang until the timeout.
		# cgroup.memory=nokmem: the first memory cgroup (a container's, made
		# by runc) flips the memcg kmem static key, patching kmalloc's code
		# while the other vCPU runs it; under TCG that has crashed guests
		# ("Oops: int3" in __kmalloc_node_track_caller, 6.12) and stalled them
		# (soft lockups in runc init, 6.1). Kernel memory accounting is
		# nothing the suites test.
		-append "console=ttyS0 quiet panic=-1 cgroup.memory=nokmem ${VMTEST_APPEND:-}"
		-device virtio-rng-pci
		# multidevs=remap: the host root spans several filesystems; keep
		# their inode numbers apart in the guest.
		-virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap
		-pidfile "$run_dir/qemu.pid")
	qemu_pidfile=$run_dir/qemu.pid
	log=$CACHE/logs/$name-$(date +%Y%m%d-%H%M%S).log
	if [ "$shell" = 1 ]; then
		# The terminal is QEMU's (raw mode: Ctrl-C goes to the guest), no
		# time limit.
		say "shell in $name; 'exit' powers off, Ctrl-A X kills QEMU"
		"${qemu[@]}" 2>&1 | tee "$log"
		qemu_rc=${PIPESTATUS[0]}
	else
		# In the background + wait: bash runs the INT/TERM traps (cleanup
		# kills QEMU) only once a foreground pipeline ends, but interrupts
		# wait. timeout(1) puts QEMU in its own process group, so a Ctrl-C
		# reaches it only through that trap. stdin: nothing to read.
		{
			timeout -k 10 "$timeout_s" "${qemu[@]}" </dev/null 2>&1
			# (quietly: after Ctrl-C, cleanup may have removed run_dir)
			{ echo $? >"$run_dir/qemu.rc"; } 2>/dev/null
		} | tee "$log" &
		wait $!
		qemu_rc=$(cat "$run_dir/qemu.rc" 2>/dev/null || echo 1)
	fi
	# A kernel message may land inside the marker's line on the console
	# ("VMTEST-EXIT-b61d[  131.58] sysrq: Power Off" + newline + "1fd1... exit=0"):
	# cut each "[ seconds] message" out and join what was before it with the next line.
	line=$(awk '{ sub(/\r$/, "")
	             if (match($0, /\[ *[0-9]+\.[0-9]+\] /)) { buf = buf substr($0, 1, RSTART - 1); next }
	             print buf $0; buf = "" }
	           END { if (buf != "") print buf }' "$log" | grep -ao "$mark exit=[0-9]*" | tail -n1)
	if [ -n "$line" ]; then
		status=${line##*exit=}
	elif [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
		say "$name: timed out after ${timeout_s}s"
		status=124
	else
		say "$name: no exit marker (QEMU status $qemu_rc): the guest did not finish"
		status=125
	fi
	[ "$status" = 0 ] || say "$name: serial log $log"
}

cmd=("$@")
summary=()
first_failure=0
for name in "${kernels[@]}"; do
	run_dir=$(mktemp -d "$CACHE/runs/$name.XXXXXX")
	mark="VMTEST-EXIT-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
	make_initrd "$name"
	say "=== $name ($(cat "$CACHE/$name/kver")): $([ "$shell" = 1 ] && echo shell || echo "${cmd[*]}")"
	start=$(date +%s%N)
	boot "$name"
	# A guest that died before its init started the command (under TCG, 6.12
	# has panicked in a boot initcall: "Oops: int3" in sched_clock_cpu) is
	# booted once more. Nothing of the command ran, so nothing it would have
	# found is hidden; a guest that dies while the command runs is not retried.
	if [ "$status" = 125 ] && [ "$shell" = 0 ] && ! grep -aq "up after .*lockdown" "$log"; then
		say "$name: the guest died before it ran the command; booting it once more"
		boot "$name"
	fi
	secs=$(( ($(date +%s%N) - start) / 1000000000 ))
	rm -rf "$run_dir"
	run_dir='' qemu_pidfile=''
	[ "$shell" = 0 ] || exit "$status"
	case $status in
	0) word=ok ;;
	124) word=timeout ;;
	125) word=vm-failed ;;
	*) word="exit $status" ;;
	esac
	summary+=("$(printf '%-8s %-26s %-10s %5ss' "$name" "$(cat "$CACHE/$name/kver")" "$word" "$secs")")
	[ "$status" = 0 ] || [ "$first_failure" != 0 ] || first_failure=$status
done

{
	echo
	printf '%-8s %-26s %-10s %6s\n' kernel release status time
	printf '%s\n' "${summary[@]}"
} >&2
exit "$first_failure"
