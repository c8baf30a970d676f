#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/panic-sites.sh [--update] [OBJECT]
#
# Lists the panic call sites of the built KFlex component (default: the
# CONFIG_KFLEX=y build's kernel/bpf/kflex/kflex.o) per function -- calls to
# core::panicking::* (explicit panics, failed bounds, overflow and division
# checks), to the slice-index failure functions and to unwrap/expect failure
# paths -- and compares them with tests/panic-allowlist.txt, which says for
# each remaining site why it cannot be reached. A site that is not on the
# list, or more sites in a function than the list allows, fails (exit 1):
# a new panic path waits until someone removes it or argues it away. Entries
# that no longer match are reported too (the list must stay true).
#
# --update rewrites the counts of the list from the object, keeping reasons
# (new entries get "REASON?", which the check refuses).
set -euo pipefail
. "$(dirname "$0")/../linux/env.sh"

update=0
if [ "${1:-}" = --update ]; then update=1; shift; fi
obj=${1:-$(kflex_build_dir y)/kernel/bpf/kflex/kflex.o}
list=$KFLEX_REPO/tests/panic-allowlist.txt
[ -f "$obj" ] || kflex_die "no $obj: build the kernel first (make kernel)"
command -v llvm-objdump-19 >/dev/null || kflex_die "llvm-objdump-19 missing: run linux/setup.sh"

# "function<TAB>callee" for every call of a panic function, demangled, crate
# hashes dropped.
sites=$(llvm-objdump-19 -dr --no-show-raw-insn "$obj" | awk '
	/^[0-9a-f]+ <.*>:$/ { fn = $2; gsub(/[<>:]/, "", fn); next }
	/R_X86_64_(PLT|PC)32/ {
		callee = $3; sub(/[-+]0x[0-9a-f]+$/, "", callee)
		if (callee ~ /panicking|panic_bounds_check|slice_(start|end)_index|slice_index_order|index_fail|unwrap_failed|expect_failed|len_mismatch_fail/)
			print fn "\t" callee
	}' | llvm-cxxfilt-19 | sed -E 's/\[[0-9a-f]+\]//g; s/::h[0-9a-f]{16}$//')
current=$(printf '%s\n' "$sites" | sed '/^$/d' | awk -F'\t' '
	{ n = split($2, p, "::"); kind = p[n]; c[$1 "\t" kind]++ }
	END { for (k in c) print c[k] "\t" k }' | sort -t$'\t' -k2)

if [ $update -eq 1 ]; then
	tmp=$(mktemp)
	{
		sed -n '/^#/p' "$list" 2>/dev/null
		printf '%s\n' "$current" | while IFS=$'\t' read -r n fn kind; do
			[ -n "$n" ] || continue
			reason=$(awk -F'\t' -v f="$fn" -v k="$kind" '$2 == f && $3 == k { print $4 }' "$list" 2>/dev/null | head -n 1)
			printf '%s\t%s\t%s\t%s\n' "$n" "$fn" "$kind" "${reason:-REASON?}"
		done
	} >"$tmp"
	mv "$tmp" "$list"
	kflex_log "rewrote $list"
fi

total=$(printf '%s\n' "$current" | awk -F'\t' '{ s += $1 } END { print s + 0 }')
echo "panic call sites in $(basename "$obj"): $total in $(printf '%s\n' "$current" | sed '/^$/d' | wc -l) (function, kind) pairs"
bad=0
while IFS=$'\t' read -r n fn kind; do
	[ -n "$n" ] || continue
	allowed=$(awk -F'\t' -v f="$fn" -v k="$kind" '!/^#/ && $2 == f && $3 == k { print $1 "\t" $4 }' "$list" | head -n 1)
	if [ -z "$allowed" ]; then
		echo "NEW: $n x $kind in $fn" >&2
		bad=1
	elif [ "$n" -gt "${allowed%%$'\t'*}" ]; then
		echo "MORE: $n (allowed ${allowed%%$'\t'*}) x $kind in $fn" >&2
		bad=1
	elif [ "${allowed#*$'\t'}" = "REASON?" ] || [ -z "${allowed#*$'\t'}" ]; then
		echo "NO REASON: $kind in $fn" >&2
		bad=1
	fi
done <<<"$current"
while IFS=$'\t' read -r n fn kind reason; do
	case "$n" in ''|'#'*) continue ;; esac
	if ! printf '%s\n' "$current" | awk -F'\t' -v f="$fn" -v k="$kind" '$2 == f && $3 == k { found = 1 } END { exit !found }'; then
		echo "STALE (no longer in the object): $kind in $fn" >&2
		bad=1
	fi
done <"$list"
if [ $bad -ne 0 ]; then
	echo "panic sites differ from tests/panic-allowlist.txt: remove the new ones or add them with a reason (tests/panic-sites.sh --update writes the counts)" >&2
	exit 1
fi
echo "panic sites match tests/panic-allowlist.txt"
