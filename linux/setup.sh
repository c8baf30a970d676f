#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Install everything the KFlex build and tests need on Debian 12 (bookworm):
# Debian packages (kernel source, Rust, clang/lld 19, QEMU, test peers) and
# bindgen-cli from crates.io. Idempotent: installs only what is missing.
set -euo pipefail
. "$(dirname "$0")/env.sh"

pkgs=(
	linux-source-6.12
	rustc-web rust-web-src libstd-rust-web-dev
	clang-19 lld-19 llvm-19 llvm-19-dev libclang-19-dev
	dwarves build-essential flex bison bc libelf-dev libssl-dev zlib1g-dev
	libzstd-dev libcap-dev pkg-config cpio kmod busybox-static rsync
	qemu-system-x86 iproute2 iputils-ping procps
	memcached libmemcached-tools redis-server redis-tools ethtool python3-redis
)

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	kflex_log "installing Debian packages: ${missing[*]}"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	$sudo apt-get update -q
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
	# The test peers are started by the tests in the guest, not as host services.
	for s in memcached redis-server; do
		$sudo systemctl disable --now "$s" >/dev/null 2>&1 || true
	done
fi

command -v cargo >/dev/null || kflex_die "cargo not found: install Rust (rustup) first"
if ! "$KFLEX_BINDGEN" --version 2>/dev/null | grep -q '0\.69\.5'; then
	kflex_log "installing bindgen-cli 0.69.5 (Debian's bindgen is too old for Linux 6.12)"
	cargo install --locked bindgen-cli@0.69.5
fi
[ -f "$KFLEX_TARBALL" ] || kflex_die "$KFLEX_TARBALL missing after install"
kflex_log "set-up complete"
