#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# The BPF side for both architectures, checked on any host (ctest, label unit):
#
# tests/tools/bpf_arch_check.sh objects CLANG BPFTOOL OBJDUMP SRC_DIR OUT_DIR CFLAGS...
#   Compiles every bpf/*.bpf.c for x86 and for arm64 (CFLAGS, then
#   -D__TARGET_ARCH_<arch> -Ibpf/vmlinux/<arch>), links each with `bpftool gen
#   object`, and checks the arm64 object against the x86 one: the same
#   programs, the syscall ones attached to __arm64_sys_* instead of
#   __x64_sys_*, and a struct pt_regs (if used) that is arm64's. Running arm64
#   is not possible here: this shows the objects are built as intended.
#
# tests/tools/bpf_arch_check.sh numbers CLANG SRC_DIR
#   Compares every NR_<name> of bpf/lib/syscall.bpf.h, per architecture, with
#   __NR_<name> of the kernel's UAPI headers (linux-libc-dev): asm/unistd_64.h
#   for x86-64, asm-generic/unistd.h (the generic table) for arm64.
set -euo pipefail

fail() { echo "FAIL: $*" >&2; exit 1; }

# program_sections OBJ: the ELF sections holding BPF programs (executable,
# other than .text, which only holds subprograms).
program_sections() {
	"$objdump" -h "$1" | awk '$NF == "TEXT" && $2 != ".text" { print $2 }'
}

check_objects() {
	local clang=$1 bpftool=$2 objdump=$3 src=$4 out=$5
	shift 5
	local cflags=("$@") f name arch obj x86_progs arm_progs want n total=0
	mkdir -p "$out"
	for f in "$src"/bpf/*.bpf.c; do
		name=$(basename "$f" .bpf.c)
		for arch in x86 arm64; do
			"$clang" "${cflags[@]}" -D__TARGET_ARCH_$arch -I"$src/bpf/vmlinux/$arch" -I"$src/bpf" \
				-c "$f" -o "$out/$name.$arch.tmp.o" || fail "$name: clang for $arch"
			"$bpftool" gen object "$out/$name.$arch.bpf.o" "$out/$name.$arch.tmp.o" ||
				fail "$name: bpftool gen object for $arch"
		done
		x86_progs=$(program_sections "$out/$name.x86.bpf.o")
		arm_progs=$(program_sections "$out/$name.arm64.bpf.o")
		[ -n "$arm_progs" ] || fail "$name: no programs in the arm64 object"
		want=$(printf '%s\n' "$x86_progs" | sed 's,/__x64_sys_,/__arm64_sys_,')
		if [ "$want" != "$arm_progs" ]; then
			diff <(printf '%s\n' "$want") <(printf '%s\n' "$arm_progs") >&2 || true
			fail "$name: arm64 programs differ from x86's (beyond the syscall wrapper prefix)"
		fi
		! printf '%s\n' "$arm_progs" | grep -q x64 || fail "$name: an x86 hook in the arm64 object"
		# The pt_regs in the object's BTF is the vmlinux.h one it was built with.
		for arch in x86 arm64; do
			local btf field
			btf=$("$bpftool" btf dump file "$out/$name.$arch.bpf.o")
			grep -q "STRUCT 'pt_regs'" <<<"$btf" || continue
			case $arch in x86) field=orig_ax ;; arm64) field=syscallno ;; esac
			grep -q "'$field'" <<<"$btf" || fail "$name: $arch object's struct pt_regs has no $field"
		done
		n=$(printf '%s\n' "$arm_progs" | wc -l)
		total=$((total + n))
		echo "$name: arm64 object has $n programs, as x86:"
		"$objdump" -h "$out/$name.arm64.bpf.o" | awk '$NF == "TEXT" && $2 != ".text" { print $2, $3 }' |
			while read -r sec size; do printf '  %-36s %6d insns\n' "$sec" $((16#$size / 8)); done
	done
	[ "$total" -gt 0 ] || fail "no bpf/*.bpf.c under $src"
	echo "ok: $total programs built for arm64"
}

# values_of CLANG ARGS... -- INCLUDE EXPR...: the value of each expression
# after `#include INCLUDE`, one a line (nothing if the include fails).
values_of() {
	local clang=() include e
	while [ "$1" != -- ]; do clang+=("$1"); shift; done
	include=$2
	shift 2
	{
		echo "#include $include"
		for e in "$@"; do echo "dockquota_value $e"; done
	} | "${clang[@]}" -E -P -x c - 2>/dev/null | sed -n 's/^dockquota_value *//p' | tr -d ' ' || true
}

# uapi_values CLANG ARCH NAMES...: the kernel's number for each NR_<name>, from
# the UAPI table of ARCH; nothing when this host has no header for it.
uapi_values() {
	local clang=$1 arch=$2 n
	shift 2
	local exprs=()
	# sendfile64 is "sendfile" in both tables (the 64-bit offset variant).
	for n in "$@"; do exprs+=("__${n/#NR_sendfile64/NR_sendfile}"); done
	case $arch in
	x86) values_of "$clang" --target=x86_64-linux-gnu -- '<asm/unistd_64.h>' "${exprs[@]}" ;;
	# Needs only a 64-bit <asm/bitsperlong.h>: the host's does.
	arm64) values_of "$clang" -- '<asm-generic/unistd.h>' "${exprs[@]}" ;;
	esac
}

check_numbers() {
	local clang=$1 src=$2 arch names ours theirs checked=0
	for arch in x86 arm64; do
		names=$("$clang" -E -dM -D__TARGET_ARCH_$arch -I"$src/bpf" "$src/bpf/lib/syscall.bpf.h" |
			sed -n 's/^#define \(NR_[a-z0-9_]*\) .*/\1/p' | sort)
		[ -n "$names" ] || fail "$arch: no NR_ numbers in bpf/lib/syscall.bpf.h"
		# shellcheck disable=SC2086  # names are single words
		ours=$(values_of "$clang" -D__TARGET_ARCH_$arch -I"$src/bpf" -- '"lib/syscall.bpf.h"' $names |
			paste -d= <(printf '%s\n' $names) -)
		# shellcheck disable=SC2086
		theirs=$(uapi_values "$clang" $arch $names)
		if [ -z "$theirs" ]; then
			echo "$arch: no UAPI syscall header on this host: not checked"
			continue
		fi
		# shellcheck disable=SC2086
		theirs=$(paste -d= <(printf '%s\n' $names) <(printf '%s\n' "$theirs"))
		if [ "$ours" != "$theirs" ]; then
			diff <(printf '%s\n' "$ours") <(printf '%s\n' "$theirs") >&2 || true
			fail "$arch: bpf/lib/syscall.bpf.h (<) differs from the kernel's UAPI table (>)"
		fi
		echo "$arch: $(wc -w <<<"$names") syscall numbers match the UAPI table"
		checked=$((checked + 1))
	done
	# The arm64 (generic) table is arch-independent and always installed.
	[ "$checked" -gt 0 ] || fail "no UAPI syscall table found (apt-get install linux-libc-dev)"
}

mode=${1:-}
shift || true
case $mode in
objects) [ $# -ge 5 ] || fail "usage: $0 objects CLANG BPFTOOL OBJDUMP SRC_DIR OUT_DIR CFLAGS..."
	objdump=$3
	check_objects "$@" ;;
numbers) [ $# -eq 2 ] || fail "usage: $0 numbers CLANG SRC_DIR"
	check_numbers "$@" ;;
*) fail "usage: $0 objects|numbers ..." ;;
esac
