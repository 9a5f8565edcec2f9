#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# vmtest/fetch.sh [NAME...]      download + unpack kernels, build their initramfs
#                                (Debian kernels through apt; SUITE `pinned` ones:
#                                the .debs of pinned-debs.txt, sha256-checked)
# vmtest/fetch.sh --list [SUITE...]   show the image packages a suite offers
#
# For each kernel of vmtest/kernels.txt (default: all) this leaves in
# vmtest/.cache/NAME/:
#   vmlinuz        the kernel image
#   root/          the unpacked package (root/lib/modules/KVER, depmod'ed), which
#                  the guest bind-mounts on /lib/modules/KVER so modprobe and the
#                  kernel's module autoload work there
#   initrd.img     busybox + the modules needed to mount the host root (in insmod
#                  order); run.sh appends /init and the command to it per run
#   kver           the kernel release (uname -r)
# A second run with an unchanged kernels.txt line does nothing (no network).
#
# apt runs with a private config under vmtest/.cache/apt: the system's
# /etc/apt is only read (to find the mirror), never changed.
set -euo pipefail

VMTEST_DIR=$(cd "$(dirname "$0")" && pwd -P)
CACHE=${VMTEST_CACHE:-$VMTEST_DIR/.cache}
KERNELS_TXT=$VMTEST_DIR/kernels.txt
PINNED_DEBS=$VMTEST_DIR/pinned-debs.txt
APT_DIR=$CACHE/apt

# Modules put in the initramfs, loaded in this order (with dependencies first).
# Boot needs: virtio_pci (the PCI transport for every virtio device), virtio_rng
# (entropy, so getrandom() never stalls early in a TCG guest), 9pnet_virtio + 9p
# (the host root), overlay (the writable root). The rest are loaded up front
# because every quota test needs them: loop + xfs (project quotas on a loop
# image), ext4 + quota_v2 (ext4 prjquota uses the v2 quota format).
# Anything else autoloads in the guest from the bind-mounted module tree.
# Built-in ones (=y in that kernel) are skipped.
INITRD_MODULES="virtio_pci virtio_rng 9pnet_virtio 9p overlay loop xfs ext4 quota_v2"

log() { printf 'fetch: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# --- the mirror --------------------------------------------------------------
# Read the Debian mirror from the host's apt sources (one-line .list and deb822
# .sources), so the same script works on any machine whose apt already works.
# VMTEST_MIRROR / VMTEST_SECURITY_MIRROR override.
host_sources() {
	cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++;
			print $i, $(i + 1) }'
	cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk 'BEGIN { RS = ""; FS = "\n" }
			{ uris = ""; suites = ""
			  for (i = 1; i <= NF; i++) {
			    if ($i ~ /^URIs:/) uris = substr($i, 6)
			    if ($i ~ /^Suites:/) suites = substr($i, 8) }
			  n = split(uris, u, " "); m = split(suites, s, " ")
			  for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print u[a], s[b] }'
}

find_mirrors() {
	local codename
	# shellcheck source=/dev/null
	codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
	[ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"
	MIRROR=${VMTEST_MIRROR:-$(host_sources | awk -v s="$codename" '$2 == s { print $1; exit }')}
	[ -n "$MIRROR" ] || die "no apt source for '$codename' in /etc/apt; set VMTEST_MIRROR"
	SECURITY_MIRROR=${VMTEST_SECURITY_MIRROR:-$(host_sources |
		awk -v s="$codename-security" '$2 == s { print $1; exit }')}
	# Debian's layout: .../debian and .../debian-security side by side.
	SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR%/}-security}
}

# --- private apt -------------------------------------------------------------
# apt_cmd TOOL ARGS...: apt-get/apt-cache with only our sources, lists and
# archives. Sandbox::User=root because _apt may not write into .cache.
apt_cmd() {
	local tool=$1; shift
	"$tool" -o Dir::Etc::SourceList="$APT_DIR/sources.list" \
		-o Dir::Etc::SourceParts=/dev/null \
		-o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null \
		-o Dir::State::Lists="$APT_DIR/lists" \
		-o Dir::State::status="$APT_DIR/status" \
		-o Dir::Cache="$APT_DIR/cache" \
		-o Dir::Cache::Archives="$APT_DIR/archives" \
		-o APT::Sandbox::User=root \
		-o Debug::NoLocking=1 \
		"$@"
}

# write_sources SUITE...: our sources.list holds exactly these suites (sorted,
# so the file, and apt's lists, only change when the set of suites does).
write_sources() {
	local suite uri new
	find_mirrors
	mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache" "$APT_DIR/archives/partial"
	touch "$APT_DIR/status"
	new=$(for suite in "$@"; do
		case $suite in *-security) uri=$SECURITY_MIRROR ;; *) uri=$MIRROR ;; esac
		echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main"
	done | sort -u)
	if [ "$new" != "$(cat "$APT_DIR/sources.list" 2>/dev/null)" ]; then
		printf '%s\n' "$new" >"$APT_DIR/sources.list"
		rm -f "$APT_DIR/updated"
	fi
}

apt_update() {
	log "apt-get update (private lists in $APT_DIR)"
	apt_cmd apt-get -q update >&2 || die "apt-get update failed"
	touch "$APT_DIR/updated"
}

# --- kernels.txt -------------------------------------------------------------
# kernel_lines [NAME...]: the kernels.txt lines to act on, comments stripped.
kernel_lines() {
	local all name found
	all=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$KERNELS_TXT")
	[ $# -gt 0 ] || { printf '%s\n' "$all"; return; }
	for name in "$@"; do
		found=$(printf '%s\n' "$all" | awk -v n="$name" '$1 == n')
		[ -n "$found" ] || die "no kernel '$name' in $KERNELS_TXT"
		printf '%s\n' "$found"
	done
}

# --- --list: help bumping kernels.txt ----------------------------------------
if [ "${1:-}" = "--list" ]; then
	shift
	[ $# -gt 0 ] || set -- bullseye bookworm bookworm-backports trixie
	write_sources "$@"
	apt_update
	# shellcheck disable=SC2046  # package names are single words
	apt_cmd apt-cache madison $(apt_cmd apt-cache pkgnames linux-image- |
		grep -E '^linux-image-[0-9][^ ]*-amd64$' | sort -V) |
		awk '{ printf "%-45s %-22s %s\n", $1, $3, $6 }'
	exit 0
fi

# --- one kernel --------------------------------------------------------------
# build_initrd DIR KVER: busybox + INITRD_MODULES (decompressed, in insmod order,
# listed in /modules/order) as a gzip'ed newc cpio.
build_initrd() {
	local dir=$1 kver=$2 stage mod line path base
	stage=$(mktemp -d "$dir/initrd.XXXXXX")
	mkdir -p "$stage/bin" "$stage/modules" "$stage/dev" "$stage/proc" "$stage/sys" "$stage/newroot"
	# Debian's busybox-static: no shared libraries to copy.
	cp "$(command -v busybox)" "$stage/bin/busybox"
	: >"$stage/modules/order"
	for mod in $INITRD_MODULES; do
		# Lines are "insmod /path/x.ko[.xz] [opts]" or "builtin x"; a module
		# missing from this kernel is not fatal (e.g. quota_v2 built in).
		if ! out=$(modprobe -d "$dir/root" -S "$kver" --show-depends "$mod" 2>&1); then
			log "$kver: $mod not available as a module, skipped ($out)"
			continue
		fi
		while read -r line; do
			case $line in
			builtin\ *) continue ;;
			insmod\ *) path=$(echo "$line" | awk '{ print $2 }') ;;
			*) continue ;;
			esac
			base=$(basename "$path")
			base=${base%.xz}; base=${base%.zst}; base=${base%.gz}
			grep -qxF "$base" "$stage/modules/order" && continue
			# busybox insmod cannot decompress: store plain .ko files.
			case $path in
			*.xz) xz -dc "$path" >"$stage/modules/$base" ;;
			*.zst) zstd -qdc "$path" >"$stage/modules/$base" ;;
			*.gz) gzip -dc "$path" >"$stage/modules/$base" ;;
			*) cp "$path" "$stage/modules/$base" ;;
			esac
			echo "$base" >>"$stage/modules/order"
		done <<<"$out"
	done
	(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -6) >"$dir/initrd.img.new"
	# Pad to 4 bytes so the per-run archive that run.sh appends starts aligned.
	truncate -s %4 "$dir/initrd.img.new"
	mv "$dir/initrd.img.new" "$dir/initrd.img"
	log "$kver: initramfs modules: $(tr '\n' ' ' <"$stage/modules/order")"
	rm -rf "$stage"
}

# unpack_debs DIR DEB...: extract each package into DIR/root, then delete it.
unpack_debs() {
	local dir=$1 deb; shift
	for deb in "$@"; do
		dpkg-deb -x "$deb" "$dir/root" || die "cannot unpack $deb"
		rm -f "$deb"
	done
}

# fetch_debian DIR PKG VER SUITE: the image package from the Debian mirror.
fetch_debian() {
	local dir=$1 pkg=$2 ver=$3 suite=$4
	# Lists may be missing or older than the pinned version: update once, retry.
	if [ ! -f "$APT_DIR/updated" ] || ! apt_cmd apt-cache show "$pkg=$ver" >/dev/null 2>&1; then
		apt_update
	fi
	apt_cmd apt-cache show "$pkg=$ver" >/dev/null 2>&1 ||
		die "$pkg=$ver is not on the mirror (suite $suite); see 'vmtest/fetch.sh --list $suite' and bump kernels.txt"
	(cd "$dir" && apt_cmd apt-get -q download "$pkg=$ver" >&2) || die "$pkg: download failed"
	unpack_debs "$dir" "$dir"/*.deb
}

# pinned_lines NAME: the pinned-debs.txt lines of kernel NAME, comments stripped.
pinned_lines() {
	sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$PINNED_DEBS" | awk -v n="$1" '$1 == n'
}

# fetch_pinned DIR NAME: every .deb pinned-debs.txt lists for NAME, from its
# archive by path, each checked against its sha256 before it is unpacked (the
# checksum is the trust anchor: no archive keyring is needed for these).
fetch_pinned() {
	local dir=$1 name=$2 _n sum archive path base url lines
	lines=$(pinned_lines "$name")
	[ -n "$lines" ] || die "$name: no lines for it in $PINNED_DEBS"
	while read -r _n sum archive path; do
		case $archive in
		ubuntu) url=${VMTEST_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}/$path ;;
		*) die "$name: unknown archive '$archive' in $PINNED_DEBS" ;;
		esac
		base=$(basename "$path")
		log "$name: downloading $base"
		curl -fsSL --retry 3 -o "$dir/$base" "$url" || die "$name: cannot download $url"
		echo "$sum  $dir/$base" | sha256sum -c --quiet - >&2 ||
			die "$name: $base does not match its sha256 in $PINNED_DEBS"
		unpack_debs "$dir" "$dir/$base"
	done <<<"$lines"
}

fetch_one() {
	local name=$1 suite=$2 pkg=$3 ver=$4 dir spec kver moddir
	dir=$CACHE/$name
	spec="$suite $pkg $ver initrd:$INITRD_MODULES"
	# A pinned kernel's cache also depends on its list of packages.
	[ "$suite" != pinned ] || spec="$spec $(pinned_lines "$name" | awk '{ print $2 }' | tr '\n' ' ')"
	if [ -f "$dir/spec" ] && [ "$(cat "$dir/spec")" = "$spec" ] && [ -f "$dir/initrd.img" ]; then
		log "$name: cached ($pkg $ver)"
		return
	fi
	log "$name: fetching $pkg=$ver from $suite"
	rm -rf "$dir"
	mkdir -p "$dir"
	if [ "$suite" = pinned ]; then
		fetch_pinned "$dir" "$name"
	else
		fetch_debian "$dir" "$pkg" "$ver" "$suite"
	fi

	# Newer packages (merged /usr) ship usr/lib/modules; depmod -b wants lib/.
	if [ ! -d "$dir/root/lib/modules" ] && [ -d "$dir/root/usr/lib/modules" ]; then
		ln -s usr/lib "$dir/root/lib"
	fi
	moddir=$(find "$dir/root/lib/modules/" -mindepth 1 -maxdepth 1 -type d | head -n1)
	kver=$(basename "$moddir")
	[ -f "$dir/root/boot/vmlinuz-$kver" ] || die "$name: no boot/vmlinuz-$kver in $pkg"
	ln -sf "root/boot/vmlinuz-$kver" "$dir/vmlinuz"
	echo "$kver" >"$dir/kver"
	# The .deb has no modules.dep (postinst makes it): make it for modprobe,
	# here and in the guest.
	depmod -b "$dir/root" "$kver"

	build_initrd "$dir" "$kver"
	echo "$spec" >"$dir/spec"
	log "$name: ready, kernel $kver"
}

main() {
	local lines name suite pkg ver
	# Two run.sh at once (two build folders) must not unpack into each other.
	mkdir -p "$CACHE"
	exec 9>"$CACHE/.fetch.lock"
	flock 9
	lines=$(kernel_lines "$@")
	# Always the suites of ALL kernels, so fetching one kernel does not make
	# the lists of the others stale.
	# shellcheck disable=SC2046  # suites are single words
	write_sources $(kernel_lines | awk '$2 != "pinned" { print $2 }')
	while read -r name suite pkg ver; do
		[ -n "$ver" ] || die "$name: kernels.txt line needs NAME SUITE PACKAGE VERSION"
		fetch_one "$name" "$suite" "$pkg" "$ver"
	done <<<"$lines"
}

main "$@"
