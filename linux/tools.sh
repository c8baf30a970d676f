#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Build the tools that need the KFlex kernel: bpftool from the 6.12 tree
# (Debian's is too old for arena objects), vmlinux.h from the kernel's BTF,
# then kflex-load and the guest tests (which compile the BPF programs against
# that vmlinux.h).
set -euo pipefail
. "$(dirname "$0")/env.sh"

build=$(kflex_build_dir y)
[ -f "$build/vmlinux" ] || kflex_die "no $build/vmlinux: run linux/build.sh y first"
bpftool=$build/tools/bpf/bpftool/bpftool
if [ ! -x "$bpftool" ]; then
	kflex_log "building bpftool from the kernel tree"
	make -s -C "$build/tools/bpf/bpftool" -j"$(nproc)" CLANG=clang-19 \
		LLVM_CONFIG=llvm-config-19 LLVM_STRIP=llvm-strip-19 >"$KFLEX_CACHE/bpftool.log" 2>&1 ||
		kflex_die "bpftool build failed; see $KFLEX_CACHE/bpftool.log"
fi
inc=$KFLEX_CACHE/include
mkdir -p "$inc"
if [ ! -f "$inc/vmlinux.h" ] || [ "$build/vmlinux" -nt "$inc/.vmlinux.stamp" ]; then
	kflex_log "generating vmlinux.h from the kernel's BTF"
	"$bpftool" btf dump file "$build/vmlinux" format c >"$inc/vmlinux.h.tmp"
	# Replace only when the content changed, so the BPF objects are not rebuilt.
	if cmp -s "$inc/vmlinux.h.tmp" "$inc/vmlinux.h"; then
		rm "$inc/vmlinux.h.tmp"
	else
		mv "$inc/vmlinux.h.tmp" "$inc/vmlinux.h"
	fi
	touch "$inc/.vmlinux.stamp"
fi
# The UAPI header (BPF_F_KFLEX, heap limits) for the BPF programs' kflex.h.
mkdir -p "$inc/linux"
cmp -s "$build/include/uapi/linux/kflex.h" "$inc/linux/kflex.h" ||
	cp "$build/include/uapi/linux/kflex.h" "$inc/linux/kflex.h"
export KFLEX_VMLINUX_DIR=$inc
kflex_log "building kflex-load and the guest tests"
cd "$KFLEX_REPO"
cargo build --release --locked -q -p kflex-load -p kflex-guest-tests
