#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/vm.sh [--variant V] [--timeout SECONDS] [--dir DIR] [--quiet] [--] [CMD...]
#
# Boots a kernel built by linux/build.sh (V: y or m, the guest kernels of
# `make test`; base, st or debug, see linux/build.sh) under QEMU with TCG (KVM
# hangs on the machines this project runs on) and runs CMD as root in the
# guest, whose root file system is the host's, read-only, with tmpfs on /tmp,
# /run, /var/*. The repository (read-only) and $KFLEX_CACHE (read-only: the
# build trees with kflex.ko, the cargo target directory with the binaries)
# are shared into the guest at their own paths, wherever they are, even
# under /tmp. The loader and test binaries are on PATH; KFLEX_KO names
# kflex.ko, KFLEX_VARIANT is the kernel's CONFIG_KFLEX (y or m; y for st and
# debug, n for base), KFLEX_KERNEL the variant and KFLEX_REPO the repository.
# Without CMD, an interactive shell. An unknown option is an error; put `--`
# before a CMD that starts with `-`. KFLEX_VM_MEM (default 2G) sets the
# guest's memory, KFLEX_VM_APPEND adds kernel command-line parameters.
#
# The run fails (exit 1) when CMD fails, the guest does not finish within the
# timeout, or the kernel log shows an oops, BUG, WARNING, KASAN report or call
# trace; then the tail of the guest's kernel log is printed. Exit code 0
# otherwise. DIR (default: a temporary directory) is writable in the guest as
# /run/kflex and keeps console.log and dmesg.
set -euo pipefail
. "$(dirname "$0")/../linux/env.sh"

usage() {
	echo "usage: tests/vm.sh [--variant $(echo "$KFLEX_VARIANTS" | tr ' ' '|')] [--timeout SECONDS] [--dir DIR] [--quiet] [--] [CMD...]" >&2
	kflex_die "$*"
}

variant=y
timeout=600
dir=""
quiet=0
while [ $# -gt 0 ]; do
	case "$1" in
	--variant | --timeout | --dir)
		[ $# -ge 2 ] || usage "$1 needs a value"
		case "$1" in
		--variant) variant=$2 ;;
		--timeout) timeout=$2 ;;
		--dir) dir=$2 ;;
		esac
		shift 2
		;;
	--quiet) quiet=1; shift ;;
	--) shift; break ;;
	-*) usage "unknown option $1 (a guest command starting with - goes after --)" ;;
	*) break ;;
	esac
done
kflex_variant_ok "$variant" || kflex_die "--variant must be one of: $KFLEX_VARIANTS"
case "$timeout" in '' | *[!0-9]*) kflex_die "--timeout needs a number of seconds" ;; esac

case "$variant" in m) config_kflex=m ;; base) config_kflex=n ;; *) config_kflex=y ;; esac
build=$(kflex_build_dir "$variant")
kernel=$build/arch/x86/boot/bzImage
[ -f "$kernel" ] || kflex_die "no kernel at $kernel: run \`make $(kflex_variant_target "$variant")\` first"
command -v qemu-system-x86_64 >/dev/null || kflex_die "qemu-system-x86_64 missing: run linux/setup.sh"

# The initramfs: busybox and our init, rebuilt when either changes.
mkdir -p "$KFLEX_CACHE"
initrd=$KFLEX_CACHE/initramfs.cpio.gz
if [ ! -f "$initrd" ] || [ "$KFLEX_REPO/tests/init.sh" -nt "$initrd" ] || [ /bin/busybox -nt "$initrd" ]; then
	root=$(mktemp -d)
	mkdir -p "$root"/{bin,proc,sys,dev,host}
	cp /bin/busybox "$root/bin/busybox"
	cp "$KFLEX_REPO/tests/init.sh" "$root/init"
	chmod +x "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp.$$"
	mv "$initrd.tmp.$$" "$initrd"
	rm -rf "$root"
fi

if [ -z "$dir" ]; then
	dir=$(mktemp -d /tmp/kflex-vm.XXXXXX)
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
rm -f "$dir/rc" "$dir/dmesg" "$dir/console.log"

# QEMU option values: a comma is written as two.
qarg() { printf '%s' "${1//,/,,}"; }

# Host directories shared into the guest at their own path, after init has
# put tmpfs on /tmp, /run and /var/*: the repository, the cache and the cargo
# target directory (when outside the cache). One not needed because it lies
# inside another is left out; outer directories are mounted first.
shares=()
for d in "$KFLEX_REPO" "$KFLEX_CACHE" "$CARGO_TARGET_DIR"; do
	[ -d "$d" ] || continue
	d=$(cd "$d" && pwd)
	case "$d" in *$'\n'*) kflex_die "cannot share a path with a newline: $d" ;; esac
	shares+=("$d")
done
mapfile -t shares < <(printf '%s\n' "${shares[@]}" | awk '{ print length($0) "\t" $0 }' | sort -n -s -k1,1 | cut -f2- | awk '!seen[$0]++')
virtfs=()
: >"$dir/shares"
n=0
for d in "${shares[@]}"; do
	inside=0
	for o in "${shares[@]}"; do
		[ "$o" != "$d" ] && [ "$o" != / ] && case "$d/" in "$o"/*) inside=1 ;; esac
	done
	[ "$d" = / ] && inside=1
	[ $inside -eq 0 ] || continue
	virtfs+=(-virtfs "local,path=$(qarg "$d"),mount_tag=kflexshare$n,security_model=none,readonly=on,multidevs=remap")
	printf 'kflexshare%d ro %s\n' "$n" "$d" >>"$dir/shares"
	n=$((n + 1))
done

interactive=0
[ $# -eq 0 ] && interactive=1
{
	echo "#!/bin/bash"
	printf 'export PATH=%q\n' "$CARGO_TARGET_DIR/release:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	printf 'export HOME=/tmp TERM=%q KFLEX_VARIANT=%q KFLEX_KERNEL=%q KFLEX_REPO=%q KFLEX_CACHE=%q\n' \
		"${TERM:-linux}" "$config_kflex" "$variant" "$KFLEX_REPO" "$KFLEX_CACHE"
	printf 'export KFLEX_KO=%q KFLEX_RUN=/run/kflex\n' "$build/kernel/bpf/kflex/kflex.ko"
	echo "cd /tmp"
	if [ $interactive -eq 1 ]; then
		printf 'echo %q\n' "KFlex guest ($variant): exit the shell to power off"
		echo "setsid -c bash -i </dev/ttyS0 >/dev/ttyS0 2>&1"
	else
		printf '%q ' "$@"
		echo
	fi
} >"$dir/cmd.sh"

qemu=(qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m "${KFLEX_VM_MEM:-2G}" -nographic -no-reboot
	-nic none -kernel "$kernel" -initrd "$initrd"
	-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init ${KFLEX_VM_APPEND:-}"
	-virtfs local,path=/,mount_tag=hostfs,security_model=none,readonly=on,multidevs=remap
	-virtfs "local,path=$(qarg "$dir"),mount_tag=kflexrun,security_model=none"
	"${virtfs[@]}")

start=$(date +%s)
if [ $interactive -eq 1 ]; then
	"${qemu[@]}"
	exit 0
fi
qrc=0
if [ $quiet -eq 1 ]; then
	timeout --foreground -k 5 "$timeout" "${qemu[@]}" </dev/null >"$dir/console.log" 2>&1 || qrc=$?
else
	timeout --foreground -k 5 "$timeout" "${qemu[@]}" </dev/null 2>&1 | tee "$dir/console.log" || qrc=$?
fi
elapsed=$(($(date +%s) - start))

fail=""
if [ $qrc -eq 124 ] || [ $qrc -eq 137 ]; then
	fail="guest did not finish within ${timeout} s"
elif [ ! -f "$dir/rc" ]; then
	fail="guest stopped without finishing the command (kernel panic?)"
elif [ "$(cat "$dir/rc")" != 0 ]; then
	fail="command exited with status $(cat "$dir/rc")"
fi
# Kernel trouble: in the kernel log, or in kernel lines on the console.
pattern='Oops|BUG:|WARNING:|KASAN|Call Trace|Kernel panic|general protection'
splat=$( { cat "$dir/dmesg" 2>/dev/null || true; grep -aE '^\[ *[0-9]+\.[0-9]+\]' "$dir/console.log" || true; } |
	grep -aE "$pattern" | head -n 5 || true)
if [ -n "$splat" ]; then
	fail="${fail:+$fail; }kernel log reports trouble: $(echo "$splat" | head -n 1)"
fi
if [ -n "$fail" ]; then
	echo "kflex-vm: FAILED ($variant, ${elapsed} s): $fail" >&2
	echo "---- guest kernel log (tail) ----" >&2
	if [ -f "$dir/dmesg" ]; then tail -n 60 "$dir/dmesg" >&2; else tail -n 60 "$dir/console.log" >&2; fi
	echo "---- end of guest kernel log ----" >&2
	exit 1
fi
[ $quiet -eq 1 ] || echo "kflex-vm: ok ($variant, ${elapsed} s)" >&2
exit 0
