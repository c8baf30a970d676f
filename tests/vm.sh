#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/vm.sh [--variant y|m] [--timeout SECONDS] [--dir DIR] [--quiet] [CMD...]
#
# Boots the KFlex kernel (build-VARIANT) under QEMU with TCG (KVM hangs on the
# machines this project runs on) and runs CMD as root in the guest, whose root
# file system is the host's, read-only, with tmpfs on /tmp, /run, /var/*.
# The loader and test binaries are on PATH; KFLEX_KO names kflex.ko and
# KFLEX_VARIANT the variant. Without CMD, an interactive shell.
#
# The run fails (exit 1) when CMD fails, the guest does not finish within the
# timeout, or the kernel log shows an oops, BUG, WARNING, KASAN report or call
# trace; then the tail of the guest's kernel log is printed. Exit code 0
# otherwise. DIR (default: a temporary directory) is writable in the guest as
# /run/kflex and keeps console.log and dmesg.
set -uo pipefail
. "$(dirname "$0")/../linux/env.sh"

variant=y
timeout=600
dir=""
quiet=0
while [ $# -gt 0 ]; do
	case "$1" in
	--variant) variant=$2; shift 2 ;;
	--timeout) timeout=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--quiet) quiet=1; shift ;;
	--) shift; break ;;
	*) break ;;
	esac
done
case "$variant" in y|m) ;; *) kflex_die "--variant must be y or m" ;; esac

build=$(kflex_build_dir "$variant")
kernel=$build/arch/x86/boot/bzImage
[ -f "$kernel" ] || kflex_die "no kernel at $kernel: run \`make kernel\` first"
command -v qemu-system-x86_64 >/dev/null || kflex_die "qemu-system-x86_64 missing: run linux/setup.sh"

# The initramfs: busybox and our init, rebuilt when either changes.
initrd=$KFLEX_CACHE/initramfs.cpio.gz
if [ ! -f "$initrd" ] || [ "$KFLEX_REPO/tests/init.sh" -nt "$initrd" ] || [ /bin/busybox -nt "$initrd" ]; then
	root=$(mktemp -d)
	mkdir -p "$root"/{bin,proc,sys,dev,host}
	cp /bin/busybox "$root/bin/busybox"
	cp "$KFLEX_REPO/tests/init.sh" "$root/init"
	chmod +x "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp" && mv "$initrd.tmp" "$initrd"
	rm -rf "$root"
fi

if [ -z "$dir" ]; then
	dir=$(mktemp -d /tmp/kflex-vm.XXXXXX)
fi
mkdir -p "$dir"
rm -f "$dir/rc" "$dir/dmesg" "$dir/console.log"

interactive=0
[ $# -eq 0 ] && interactive=1
{
	echo "#!/bin/bash"
	echo "export PATH=$CARGO_TARGET_DIR/release:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	echo "export HOME=/tmp TERM=${TERM:-linux} KFLEX_VARIANT=$variant KFLEX_REPO=$KFLEX_REPO"
	echo "export KFLEX_KO=$build/kernel/bpf/kflex/kflex.ko KFLEX_RUN=/run/kflex"
	echo "cd /tmp"
	if [ $interactive -eq 1 ]; then
		echo "echo 'KFlex guest ($variant): exit the shell to power off'"
		echo "setsid -c bash -i </dev/ttyS0 >/dev/ttyS0 2>&1"
	else
		printf '%q ' "$@"
		echo
	fi
} >"$dir/cmd.sh"

qemu=(qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2G -nographic -no-reboot
	-nic none -kernel "$kernel" -initrd "$initrd"
	-append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init"
	-virtfs local,path=/,mount_tag=hostfs,security_model=none,readonly=on,multidevs=remap
	-virtfs local,path="$dir",mount_tag=kflexrun,security_model=none)

start=$(date +%s)
if [ $interactive -eq 1 ]; then
	"${qemu[@]}"
	exit 0
fi
if [ $quiet -eq 1 ]; then
	timeout --foreground -k 5 "$timeout" "${qemu[@]}" </dev/null >"$dir/console.log" 2>&1
else
	timeout --foreground -k 5 "$timeout" "${qemu[@]}" </dev/null 2>&1 | tee "$dir/console.log"
fi
qrc=$?
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
splat=$( { cat "$dir/dmesg" 2>/dev/null; grep -aE '^\[ *[0-9]+\.[0-9]+\]' "$dir/console.log"; } | grep -aE "$pattern" | head -n 5)
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
