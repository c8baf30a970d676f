#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/clone-test.sh -- the guest harness works wherever a newcomer clones.
#
# Clones the repository (its committed HEAD) to /tmp/kflex-clone-XXXXXX and
# makes a small KFLEX_CACHE under that directory, in a directory whose name
# holds a space and a comma (the guest puts tmpfs on /tmp, so both are only
# visible there if tests/vm.sh shares them; the odd name checks the quoting
# of cmd.sh and of QEMU's options). The cache gets a copy of the y kernel and
# of kflex-load. Then the clone's tests/vm.sh runs a guest command that reads
# a file only the clone has and runs kflex-load from the cache's target
# directory. Exit status 0 when both worked.
set -euo pipefail
. "$(dirname "$0")/../linux/env.sh"

kernel=$(kflex_build_dir y)/arch/x86/boot/bzImage
loader=$CARGO_TARGET_DIR/release/kflex-load
[ -f "$kernel" ] || kflex_die "no kernel at $kernel: run \`make kernel\` first"
[ -x "$loader" ] || kflex_die "no $loader: run \`make tools\` first"

clone=$(mktemp -d /tmp/kflex-clone-XXXXXX)
trap 'rm -rf "$clone"' EXIT
git clone -q "$KFLEX_REPO" "$clone/repo"
cache="$clone/cache, with space"
mkdir -p "$cache/build-y/linux/arch/x86/boot" "$cache/target/release"
cp "$kernel" "$cache/build-y/linux/arch/x86/boot/bzImage"
cp "$loader" "$cache/target/release/kflex-load"
token="clone-$$-$RANDOM$RANDOM"
echo "$token" >"$clone/repo/.kflex-clone-marker"
run=$clone/run
mkdir -p "$run"

# shellcheck disable=SC2016 # expanded in the guest
guest_cmd='cat "$KFLEX_REPO/.kflex-clone-marker" >/run/kflex/marker &&
command -v kflex-load >/run/kflex/which &&
kflex-load --help >/dev/null'
env -u CARGO_TARGET_DIR -u KFLEX_VMLINUX_DIR KFLEX_CACHE="$cache" \
	"$clone/repo/tests/vm.sh" --variant y --timeout 180 --quiet --dir "$run" -- bash -c "$guest_cmd" ||
	kflex_die "the guest command failed (console: see above)"
[ "$(cat "$run/marker")" = "$token" ] ||
	kflex_die "the guest did not read the clone's file (got: $(cat "$run/marker"))"
[ "$(cat "$run/which")" = "$cache/target/release/kflex-load" ] ||
	kflex_die "kflex-load in the guest is $(cat "$run/which"), not the cache's"
kflex_log "harness from a clone under /tmp: ok (repo $clone/repo, cache \"$cache\")"
