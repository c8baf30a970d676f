#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# linux/build.sh VARIANT -- build the KFlex guest kernel (VARIANT: y or m,
# the value of CONFIG_KFLEX) in $KFLEX_CACHE/build-VARIANT/linux.
#
# Three more variants, not part of `make kernel`, each in its own tree:
#   st     y plus linux/kflex-selftests.config (what the BPF selftests need);
#   base   st's configuration without KFlex: no patches applied, no component
#          copied, the CONFIG_KFLEX* lines of kflex.config dropped (the
#          unpatched baseline of `make selftests`);
#   debug  y plus linux/kflex-debug.config (KASAN, lockdep, ...).
#
#  1. extract Debian's linux-source-6.12 once (pristine copy in the cache);
#  2. apply Kconfig.patch and linux/patches/*.patch: the files they touch are
#     re-made from pristine + patches every run and copied into the build tree
#     only when their content changed, so unchanged files keep their mtimes;
#  3. sync module/ and rust/ into kernel/bpf/kflex/ the same way;
#  4. configure (tinyconfig + kvm_guest.config + linux/kflex*.config) when
#     the fragments changed, and check every requested option stuck;
#  5. make bzImage and modules, showing phase and elapsed time, with the full
#     log in $KFLEX_CACHE/build-VARIANT/build.log.
set -euo pipefail
. "$(dirname "$0")/env.sh"

variant=${1:-}
case "$variant" in y|m|st|base|debug) ;; *) kflex_die "usage: linux/build.sh y|m|st|base|debug" ;; esac

[ -f "$KFLEX_TARBALL" ] || kflex_die "$KFLEX_TARBALL not found: run linux/setup.sh"
build=$(kflex_build_dir "$variant")
top=$(dirname "$build")
log=$top/build.log
clog=$top/config.log
mkdir -p "$top" "$KFLEX_CACHE/src"

# 1. Pristine source, re-extracted when the tarball changes.
tar_id=$(stat -c '%s %Y' "$KFLEX_TARBALL")
if [ "$(cat "$KFLEX_PRISTINE/.kflex-tarball" 2>/dev/null)" != "$tar_id" ]; then
	kflex_log "extracting $KFLEX_TARBALL"
	rm -rf "$KFLEX_PRISTINE"
	tar -C "$KFLEX_CACHE/src" -xf "$KFLEX_TARBALL"
	echo "$tar_id" >"$KFLEX_PRISTINE/.kflex-tarball"
	rm -rf "$KFLEX_CACHE"/build-*/linux
fi
if [ ! -f "$build/Makefile" ]; then
	kflex_log "creating build tree $build"
	rm -rf "$build"
	cp -a "$KFLEX_PRISTINE" "$build"
	rm -f "$build/.kflex-patched-files" "$build/.kflex-config-id"
fi

# Copy $1 over $2 only if the content differs (keeps mtimes of unchanged files).
sync_file() {
	if ! cmp -s "$1" "$2"; then
		mkdir -p "$(dirname "$2")"
		cp "$1" "$2"
		echo "  updated ${2#"$build"/}" >&2
	fi
}

# 2. Patches (none for base: an unpatched tree, never touched after the copy).
if [ "$variant" != base ]; then
patches=("$KFLEX_REPO/Kconfig.patch")
for p in "$KFLEX_REPO"/linux/patches/*.patch; do
	[ -e "$p" ] && patches+=("$p")
done
stage=$top/stage
rm -rf "$stage"
mkdir -p "$stage"
new_files=$(sed -n 's|^+++ b/\([^[:space:]]*\).*|\1|p' "${patches[@]}" | sort -u)
old_files=$(cat "$build/.kflex-patched-files" 2>/dev/null || true)
all_files=$(printf '%s\n%s\n' "$new_files" "$old_files" | sed '/^$/d' | sort -u)
for f in $all_files; do
	if [ -f "$KFLEX_PRISTINE/$f" ]; then
		mkdir -p "$stage/$(dirname "$f")"
		cp -p "$KFLEX_PRISTINE/$f" "$stage/$f"
	fi
done
for p in "${patches[@]}"; do
	patch -d "$stage" -p1 --batch --forward --quiet --no-backup-if-mismatch <"$p" ||
		kflex_die "patch ${p#"$KFLEX_REPO"/} does not apply to linux-source-6.12"
done
for f in $all_files; do
	if [ -f "$stage/$f" ]; then
		sync_file "$stage/$f" "$build/$f"
	elif [ -e "$build/$f" ]; then
		rm -f "$build/$f"
		echo "  removed $f" >&2
	fi
done
printf '%s\n' "$new_files" >"$build/.kflex-patched-files"

# 3. The Rust component: module/ (crate root, Kbuild) and rust/ (mechanism).
comp=$build/kernel/bpf/kflex
cstage=$top/stage-kflex
rm -rf "$cstage"
mkdir -p "$cstage" "$comp"
cp "$KFLEX_REPO"/module/* "$cstage/"
(cd "$KFLEX_REPO/rust" && find . -name '*.rs' -not -path './target/*' -not -path './tests/*' \
	-not -name host.rs -print0 | cpio -0pdm --quiet "$cstage")
(cd "$cstage" && find . -type f | sed 's|^\./||') | while read -r f; do
	sync_file "$cstage/$f" "$comp/$f"
done
# Drop sources that no longer exist in the project.
(cd "$comp" && find . -type f \( -name '*.rs' -o -name Makefile \) | sed 's|^\./||') | while read -r f; do
	[ -f "$cstage/$f" ] || { rm -f "$comp/$f"; echo "  removed kernel/bpf/kflex/$f" >&2; }
done
elif [ -s "$build/.kflex-patched-files" ] || [ -d "$build/kernel/bpf/kflex" ]; then
	kflex_die "$build holds KFlex patches or sources; remove $(dirname "$build") and run again"
fi

# 4. Configuration.
llvm=$(kflex_llvm)
makeargs=(LLVM="$llvm" RUSTC="$KFLEX_RUSTC" HOSTRUSTC="$KFLEX_RUSTC" BINDGEN="$KFLEX_BINDGEN")
frags=("$build/kernel/configs/kvm_guest.config" "$KFLEX_REPO/linux/kflex.config" "$KFLEX_REPO/linux/kflex-$variant.config")
frag_names="kflex.config + kflex-$variant.config"
case "$variant" in
st | debug)
	extra=selftests
	[ "$variant" = st ] || extra=debug
	frags=("${frags[0]}" "$KFLEX_REPO/linux/kflex.config" "$KFLEX_REPO/linux/kflex-y.config" "$KFLEX_REPO/linux/kflex-$extra.config")
	frag_names="kflex.config + kflex-y.config + kflex-$extra.config"
	;;
base)
	# kflex.config without the KFlex options (they do not exist unpatched).
	grep -v '^CONFIG_KFLEX' "$KFLEX_REPO/linux/kflex.config" >"$top/kflex-base.config.tmp"
	if cmp -s "$top/kflex-base.config.tmp" "$top/kflex-base.config"; then
		rm "$top/kflex-base.config.tmp"
	else
		mv "$top/kflex-base.config.tmp" "$top/kflex-base.config"
	fi
	frags=("${frags[0]}" "$top/kflex-base.config" "$KFLEX_REPO/linux/kflex-selftests.config")
	frag_names="kflex.config without CONFIG_KFLEX* + kflex-selftests.config"
	;;
esac
config_id=$(cat "${frags[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$build/.kflex-config-id" 2>/dev/null)" != "$config_id" ] || [ ! -f "$build/.config" ]; then
	kflex_log "configuring ($variant): tinyconfig + kvm_guest.config + $frag_names"
	make -C "$build" -s "${makeargs[@]}" tinyconfig >"$clog" 2>&1
	(cd "$build" && ./scripts/kconfig/merge_config.sh -m .config "${frags[@]}") >>"$clog" 2>&1
	make -C "$build" -s "${makeargs[@]}" olddefconfig >>"$clog" 2>&1
	bad=0
	for f in "${frags[@]:1}"; do
		while read -r line; do
			case "$line" in CONFIG_*=*) ;; *) continue ;; esac
			if ! grep -qx "$line" "$build/.config"; then
				echo "kflex: config option did not stick: $line (got: $(grep "^${line%%=*}=" "$build/.config" || echo 'not set'))" >&2
				bad=1
			fi
		done <"$f"
	done
	[ "$bad" -eq 0 ] || kflex_die "configuration failed (dependencies missing?); see $clog"
	echo "$config_id" >"$build/.kflex-config-id"
fi

# 5. Build, with a progress line every 30 s.
start=$(date +%s)
kflex_log "building kernel ($variant) in $build (log: $log)"
echo "=== build $(date) ===" >"$log"
set +e
make -C "$build" -j"$(nproc)" "${makeargs[@]}" bzImage modules >>"$log" 2>&1 &
mpid=$!
trap 'kill $mpid 2>/dev/null' INT TERM
while kill -0 $mpid 2>/dev/null; do
	for _ in $(seq 30); do
		sleep 1
		kill -0 $mpid 2>/dev/null || break
	done
	kill -0 $mpid 2>/dev/null || break
	phase=$(tail -n 1 "$log" | awk '{print $1}')
	kflex_log "  ($variant) $(($(date +%s) - start)) s elapsed, now: ${phase:-?} $(tail -n 1 "$log" | awk '{print $2}')"
done
wait $mpid
rc=$?
set -e
trap - INT TERM
if [ $rc -ne 0 ]; then
	grep -E -A5 '(error|Error)[:\[]' "$log" | head -n 60 >&2 || true
	tail -n 20 "$log" >&2
	kflex_die "kernel build ($variant) failed; full log: $log"
fi
kflex_log "kernel ($variant) built in $(($(date +%s) - start)) s: $build/arch/x86/boot/bzImage"
