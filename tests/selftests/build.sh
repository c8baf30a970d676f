#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/selftests/build.sh verifier|progs BTF_VARIANT [MOD_VARIANT...]
#
# Builds the 6.12 tree's BPF selftests (tools/testing/selftests/bpf) in
# $KFLEX_CACHE/selftests, never inside a kernel build tree:
#   verifier  test_verifier only, in out-verifier-BTF_VARIANT;
#   progs     test_verifier, a test_progs trimmed to the groups of GROUPS
#             below, xdp_synproxy and the KFlex arena shim, in out-progs.
# BTF_VARIANT names the kernel whose vmlinux gives vmlinux.h. For every
# MOD_VARIANT, the test modules (bpf_testmod and friends) are built against
# that kernel's tree (M= into mods-MOD_VARIANT, rebuilt when its vmlinux is
# newer): the module's BTF must match the kernel it is loaded into.
#
# The source is a copy of the pristine tree's tools/, scripts/, include/,
# arch/x86/ and kernel/bpf/ (selftests/src), in which prog_tests/ keeps only
# the tests of GROUPS and progs/ only the BPF programs those tests use (found
# by the skeleton headers and .bpf.o names they mention, transitively): the
# whole test_progs takes far longer to build on 2 cores. Prints nothing on
# success but progress lines; build logs in selftests/*.log.
set -euo pipefail
. "$(dirname "$0")/../../linux/env.sh"

# The test_progs groups (test-name globs) `make selftests` runs.
SEL_GROUPS_DEFAULT='arena* verifier* exceptions* iters* spin_lock* xdp* sockmap* sk_* tc* bpf_loop* timer* kfunc*'
SEL_GROUPS=${KFLEX_SELFTEST_GROUPS:-$SEL_GROUPS_DEFAULT}

what=${1:-}
btf_variant=${2:-}
[ $# -ge 2 ] || kflex_die "usage: tests/selftests/build.sh verifier|progs BTF_VARIANT [MOD_VARIANT...]"
shift 2
case "$what" in verifier | progs) ;; *) kflex_die "first argument: verifier or progs" ;; esac
kflex_variant_ok "$btf_variant" || kflex_die "unknown variant $btf_variant ($KFLEX_VARIANTS)"

st=$KFLEX_CACHE/selftests
src=$st/src
sub=$src/tools/testing/selftests/bpf
mkdir -p "$st"
btf=$(kflex_build_dir "$btf_variant")/vmlinux
[ -f "$btf" ] || kflex_die "no $btf: run \`make $(kflex_variant_target "$btf_variant")\` first"

# 1. The source copy, refreshed when the pristine tree was re-extracted.
tar_id=$(cat "$KFLEX_PRISTINE/.kflex-tarball" 2>/dev/null || true)
[ -n "$tar_id" ] || kflex_die "no pristine source in $KFLEX_PRISTINE: run \`make kernel\` first"
if [ "$(cat "$src/.kflex-tarball" 2>/dev/null)" != "$tar_id" ]; then
	kflex_log "selftests: copying the 6.12 tools and headers to $src"
	rm -rf "$src" "$st"/out-*
	mkdir -p "$src/arch" "$src/kernel"
	cp -a "$KFLEX_PRISTINE/tools" "$KFLEX_PRISTINE/scripts" "$KFLEX_PRISTINE/include" "$KFLEX_PRISTINE/Makefile" "$src/"
	cp -a "$KFLEX_PRISTINE/arch/x86" "$src/arch/"
	cp -a "$KFLEX_PRISTINE/kernel/bpf" "$src/kernel/"
	cp -a "$sub/prog_tests" "$st/all-prog_tests"
	cp -a "$sub/progs" "$st/all-progs"
	echo "$tar_id" >"$src/.kflex-tarball"
fi

# 2. Trim prog_tests/ and progs/ to GROUPS (from the full copies), only when
# the selection changed, so that make sees unchanged files.
sel_id=$(echo "$SEL_GROUPS" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$src/.kflex-groups" 2>/dev/null)" != "$sel_id" ]; then
	kflex_log "selftests: trimming test_progs to: $SEL_GROUPS"
	read -r -a globs <<<"$SEL_GROUPS"
	re=$(for g in "${globs[@]}"; do printf '%s|' "$(printf '%s' "$g" | sed 's/\*/[A-Za-z0-9_]*/g')"; done)
	re="^void (serial_)?test_(${re%|})\\((void)?\\)"
	tests=$(cd "$st/all-prog_tests" && grep -lE "$re" -- *.c | sort)
	[ -n "$tests" ] || kflex_die "no test matches $SEL_GROUPS"
	# A test may call a function another test file defines (iters.c uses
	# test_lsm.c's stack_mprotect): add the defining files.
	for fn in $(cd "$st/all-prog_tests" && sed -nE 's/^(extern )?[a-z_][a-z_0-9 *]* \**([a-z_0-9]+)\([^)]*\);.*/\2/p' $tests | sort -u); do
		def=$(cd "$st/all-prog_tests" && grep -lE "^[a-z_][a-z_0-9 *]*[ *]$fn\([^;]*$" -- *.c | head -n 1 || true)
		[ -z "$def" ] || tests=$(printf '%s\n%s\n' "$tests" "$def" | sort -u)
	done
	# Program names a file mentions: X.skel.h, X.lskel.h, X.subskel.h, X.bpf.o,
	# and X.c included by a program.
	refs() {
		{ grep -ohE '[A-Za-z0-9_]+\.(l?skel\.h|subskel\.h|bpf\.o)|#include "[A-Za-z0-9_]+\.c"' "$@" 2>/dev/null || true; } |
			sed -E 's/^#include "//; s/"$//; s/\.(lskel\.h|subskel\.h|skel\.h|bpf\.o|c)$//' | sort -u
	}
	# Linked skeletons: NAME.skel.h-deps := a.bpf.o b.bpf.o in the Makefile.
	deps_of() {
		sed -nE "s/^$1\\.skel\\.h-deps := (.*)/\\1/p" "$sub/Makefile" | tr ' ' '\n' | sed -n 's/\.bpf\.o$//p' || true
	}
	want=$( (cd "$st/all-prog_tests" && refs $tests))
	progs=""
	while [ -n "$want" ]; do
		next=""
		for n in $want; do
			case " $progs " in *" $n "*) continue ;; esac
			if [ -f "$st/all-progs/$n.c" ]; then
				progs="$progs $n"
				next="$next $(refs "$st/all-progs/$n.c")"
			else
				d=$(deps_of "$n")
				[ -z "$d" ] || { progs="$progs $n"; next="$next $d"; }
			fi
		done
		want=$next
	done
	rm -rf "$sub/prog_tests" "$sub/progs"
	mkdir -p "$sub/prog_tests" "$sub/progs"
	cp -a "$st/all-prog_tests"/*.h "$sub/prog_tests/"
	for t in $tests; do cp -a "$st/all-prog_tests/$t" "$sub/prog_tests/"; done
	cp -a "$st/all-progs"/*.h "$sub/progs/"
	for p in $progs; do
		[ ! -f "$st/all-progs/$p.c" ] || cp -a "$st/all-progs/$p.c" "$sub/progs/"
	done
	echo "$tests" >"$st/tests.list"
	echo "$progs" | tr ' ' '\n' | sed '/^$/d' | sort >"$st/progs.list"
	echo "$sel_id" >"$src/.kflex-groups"
	rm -f "$st"/out-progs/test_progs
fi

# The skeleton lists of the Makefile, cut to the programs that are present.
present() {
	local n out=""
	for n in "$@"; do
		if [ -f "$sub/progs/${n%.c}.c" ]; then out="$out $n"; fi
	done
	echo "$out"
}
mkvar() { sed -nE "/^$1 :=/,/^\$/p" "$sub/Makefile" | sed -E "s/^$1 :=//; s/\\\\//g" | tr -s ' \t\n' ' '; }
lskels=$(present $(mkvar LSKELS))
lskels_extra=$(present $(mkvar LSKELS_EXTRA))
linked=""
for s in $(mkvar LINKED_SKELS); do
	deps=$(sed -nE "s/^${s//./\\.}-deps := (.*)/\\1/p" "$sub/Makefile")
	ok=0
	[ -z "$deps" ] || ok=1
	for d in $deps; do
		[ -f "$sub/progs/${d%.bpf.o}.c" ] || ok=0
	done
	[ $ok -eq 0 ] || linked="$linked $s"
done

llvm=$(kflex_llvm)
mk=(make -C "$sub" -j"$(nproc)" LLVM="$llvm" CLANG=clang-19 LLC=llc-19 LLVM_CONFIG=llvm-config-19
	LLVM_STRIP=llvm-strip-19 VMLINUX_BTF="$btf"
	"LSKELS=$lskels" "LSKELS_EXTRA=$lskels_extra" "LINKED_SKELS=$linked" TRUNNER_EXTRA_FILES=)

if [ "$what" = verifier ]; then
	out=$st/out-verifier-$btf_variant
	targets=("$out/test_verifier")
else
	out=$st/out-progs
	targets=("$out/test_verifier" "$out/test_progs" "$out/xdp_synproxy")
fi
mkdir -p "$out"
# Another vmlinux: every BPF object and skeleton is rebuilt; so must be the
# test objects that embed them.
btf_id="$btf $(stat -c %Y "$btf")"
if [ "$(cat "$out/.kflex-btf" 2>/dev/null)" != "$btf_id" ]; then
	rm -f "$out"/*.test.o "$out"/*.test.d "$out/tools/include/vmlinux.h"
fi
# The dependency files of a build outside the source directory name the
# .lskel.h headers without their directory (make then finds no rule for them):
# give them the output directory.
for d in "$out"/*.test.d; do
	[ -f "$d" ] || continue
	sed -i -E "s#(^|[[:space:]])([A-Za-z0-9_]+\.lskel\.h)#\1$out/\2#g" "$d"
done
log=$st/build-$what.log
start=$(date +%s)
kflex_log "selftests: building $(printf '%s ' "${targets[@]##*/}")(log: $log)"
if ! "${mk[@]}" OUTPUT="$out" "${targets[@]}" >"$log" 2>&1; then
	grep -E -B2 -A5 '(error|Error)[:\[ ]' "$log" | head -n 60 >&2 || true
	tail -n 20 "$log" >&2
	kflex_die "selftests build failed; see $log"
fi
if [ "$what" = progs ]; then
	gcc -O2 -Wall -Werror -shared -fPIC -I"$src/tools/include/uapi" -o "$out/kflex_arena_shim.so" \
		"$KFLEX_REPO/tests/selftests/kflex_arena_shim.c" -ldl
fi
echo "$btf_id" >"$out/.kflex-btf"
kflex_log "selftests: built in $(($(date +%s) - start)) s: $out"

# 3. Test modules per kernel.
for v in "$@"; do
	kflex_variant_ok "$v" || kflex_die "unknown variant $v"
	kb=$(kflex_build_dir "$v")
	[ -f "$kb/vmlinux" ] || kflex_die "no $kb/vmlinux: run \`make $(kflex_variant_target "$v")\` first"
	md=$st/mods-$v
	if [ -f "$md/bpf_testmod.ko" ] && [ "$md/bpf_testmod.ko" -nt "$kb/vmlinux" ] &&
		[ "$md/.kflex-release" -nt "$kb/vmlinux" ]; then
		continue
	fi
	kflex_log "selftests: test modules for the $v kernel"
	rm -rf "$md"
	mkdir -p "$md"
	for m in bpf_testmod bpf_test_no_cfi bpf_test_modorder_x bpf_test_modorder_y; do
		cp -a "$sub/$m" "$md/$m"
		make -C "$kb" LLVM="$llvm" RUSTC="$KFLEX_RUSTC" HOSTRUSTC="$KFLEX_RUSTC" BINDGEN="$KFLEX_BINDGEN" \
			M="$md/$m" modules >>"$md/build.log" 2>&1 ||
			{ tail -n 30 "$md/build.log" >&2; kflex_die "building $m for $v failed; see $md/build.log"; }
		cp "$md/$m/$m.ko" "$md/"
	done
	cat "$kb/include/config/kernel.release" >"$md/.kflex-release"
done
