#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/selftests/run.sh -- `make selftests`: the kernel's own BPF selftests
# on our kernel and on an unpatched kernel of the same configuration.
#
# Builds test_verifier, a trimmed test_progs (tests/selftests/build.sh) and the
# test modules for the st kernel (CONFIG_KFLEX=y plus the selftests options)
# and the base kernel (the same configuration, unpatched, without KFlex), then
# boots one guest per kernel, one after the other, running test_verifier and
# every test_progs test of the groups (tests/selftests/guest.sh), and one more
# st guest running the upstream arena tests with every arena turned into a
# KFlex heap (kflex_arena_shim.so). Compares per group and writes
# tests/results/selftests.md (the table and the lists) and trimmed raw logs
# under tests/results/selftests/. Exits 1 when a test passes on base and fails
# on ours.
set -euo pipefail
. "$(dirname "$0")/../../linux/env.sh"

SEL_GROUPS='arena* verifier* exceptions* iters* spin_lock* xdp* sockmap* sk_* tc* bpf_loop* timer* kfunc*'
export KFLEX_SELFTEST_GROUPS=$SEL_GROUPS
ours=st
base=base

# Commands some tests run: ethtool (xdp_do_redirect), iptables (xdp_synproxy).
missing=()
for p in ethtool iptables; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	kflex_log "installing Debian packages the selftests use: ${missing[*]}"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null
fi

"$KFLEX_REPO/tests/selftests/build.sh" progs base "$ours" "$base"
st=$KFLEX_CACHE/selftests
out=$st/out-progs
logdir=$(mktemp -d /tmp/kflex-selftests.XXXXXX)
timeout=${KFLEX_SELFTEST_VM_TIMEOUT:-10800}
guest=$KFLEX_REPO/tests/selftests/guest.sh
declare -A vmrc

# One guest: variant $1, mode $2, run directory $logdir/$3.
boot() {
	local v=$1 mode=$2 tag=$3 s=$SECONDS rc=0
	kflex_log "selftests: $mode on the $v kernel (log: $logdir/$tag)"
	mkdir -p "$logdir/$tag"
	"$KFLEX_REPO/tests/vm.sh" --variant "$v" --timeout "$timeout" --quiet --dir "$logdir/$tag" -- \
		env KFLEX_SELFTEST_GROUPS="$SEL_GROUPS" bash "$guest" "$mode" "$out" "$st/mods-$v" "$tag" || rc=$?
	vmrc[$tag]=$rc
	kflex_log "selftests: $mode on $v: guest exit $rc after $((SECONDS - s)) s"
}

boot "$ours" progs "$ours"
boot "$base" progs "$base"
timeout=1800 boot "$ours" kflex-arena "$ours-kflex"

res=$KFLEX_REPO/tests/results
rm -rf "$res/selftests"
mkdir -p "$res/selftests"
rc=0
python3 "$KFLEX_REPO/tests/selftests/compare.py" "$logdir/$ours" "$logdir/$base" "$SEL_GROUPS" "$logdir/compare.md" || rc=$?
python3 "$KFLEX_REPO/tests/selftests/arena_report.py" "$logdir/$ours-kflex" "$ours-kflex" >"$logdir/kflex-arena.md"
cat "$logdir/kflex-arena.md"

# Raw logs, trimmed: result lines and the logs of failing tests.
for tag in "$ours" "$base" "$ours-kflex"; do
	for f in "$logdir/$tag"/*.log "$logdir/$tag"/*.txt; do
		[ -f "$f" ] || continue
		case "$f" in
		*/console.log) tail -n 200 "$f" >"$res/selftests/$tag-console-tail.log" ;;
		*-progs.log | *-kflex-arena.log)
			# Without test_progs' second copy of the failure logs at the end.
			awk '/^All error logs:/ { skip = 1 } /^Summary:/ { skip = 0 } !skip' "$f" >"$res/selftests/${f##*/}" ;;
		*) [ ! -s "$f" ] || cp "$f" "$res/selftests/" ;;
		esac
	done
	if [ -f "$logdir/$tag/dmesg" ] && grep -qaE 'kflex|BUG|WARNING|KASAN|Oops|Call Trace' "$logdir/$tag/dmesg"; then
		grep -aE 'kflex|BUG|WARNING|KASAN|Oops|Call Trace' "$logdir/$tag/dmesg" | head -n 400 >"$res/selftests/$tag-dmesg-excerpt.txt"
	fi
done
{
	echo "# BPF selftests: KFlex kernel vs the unpatched kernel"
	echo
	echo "Produced by \`make selftests\` ($(date -u +%Y-%m-%d), commit $(git -C "$KFLEX_REPO" rev-parse --short HEAD 2>/dev/null || echo '?'))."
	echo "Kernels: \`$ours\` = Debian 6.12 + KFlex patches, CONFIG_KFLEX=y, tinyconfig-based guest configuration"
	echo "(linux/kflex.config + kflex-y.config) + linux/kflex-selftests.config; \`$base\` = the same configuration"
	echo "without KFlex (no patches, no component). Same test binaries on both (built against the base kernel's"
	echo "BTF), test modules built per kernel. QEMU TCG, 2 vCPUs. Groups: \`$SEL_GROUPS\`."
	echo "Guest exit status: $ours ${vmrc[$ours]}, $base ${vmrc[$base]}, $ours-kflex ${vmrc[$ours-kflex]} (non-zero: a test"
	echo "run ended with a kernel warning or the guest timed out; see the console tails)."
	echo
	cat "$logdir/compare.md"
	echo
	cat "$logdir/kflex-arena.md"
} >"$res/selftests.md"
kflex_log "selftests: report in $res/selftests.md, logs in $logdir"
exit $rc
