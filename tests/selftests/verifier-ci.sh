#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/selftests/verifier-ci.sh -- one test of `make test`: the 6.12 tree's
# test_verifier on the y kernel, compared with the committed list of known
# failures (tests/selftests/verifier-known-failures.txt: one "#N/p description"
# per line, each with the reason in a "# " comment above it). Fails on a failure
# not in the list, or when test_verifier does not finish (no Summary line).
# A known failure that now passes is reported, not failed. Builds
# test_verifier and bpf_testmod.ko for the y kernel first (about a minute the
# first time, seconds after).
set -euo pipefail
. "$(dirname "$0")/../../linux/env.sh"

variant=${1:-y}
"$KFLEX_REPO/tests/selftests/build.sh" verifier "$variant" "$variant"
st=$KFLEX_CACHE/selftests
run=$(mktemp -d /tmp/kflex-verifier.XXXXXX)
"$KFLEX_REPO/tests/vm.sh" --variant "$variant" --timeout 900 --quiet --dir "$run" -- \
	bash "$KFLEX_REPO/tests/selftests/guest.sh" verifier "$st/out-verifier-$variant" "$st/mods-$variant" "$variant" ||
	kflex_die "the guest run failed (see above; logs in $run)"
log=$run/$variant-verifier.log
summary=$(grep -a '^Summary:' "$log" || true)
[ -n "$summary" ] || { tail -n 30 "$log" >&2; kflex_die "test_verifier did not finish (no Summary line; log: $log)"; }
known=$KFLEX_REPO/tests/selftests/verifier-known-failures.txt
export LC_ALL=C
failures=$(grep -aoE '^#[0-9]+/[pu] .* FAIL' "$log" | sed 's/ FAIL$//' | sort -u)
# Entries are the lines "#N/p description"; "# " lines are comments.
known_list=$(grep -E '^#[0-9]+/[pu] ' "$known" | sed 's/[[:space:]]*$//' | sort -u || true)
new=$(comm -23 <(echo "$failures" | sed '/^$/d') <(echo "$known_list" | sed '/^$/d'))
fixed=$(comm -13 <(echo "$failures" | sed '/^$/d') <(echo "$known_list" | sed '/^$/d'))
echo "test_verifier on the $variant kernel: $summary"
[ -z "$fixed" ] || printf 'known failure now passing (remove it from %s):\n%s\n' "${known#"$KFLEX_REPO"/}" "$fixed"
if [ -n "$new" ]; then
	printf 'NEW test_verifier failures:\n%s\n' "$new" >&2
	grep -a -A6 -F "$(echo "$new" | head -n 5)" "$log" | head -n 60 >&2 || true
	kflex_die "test_verifier: failures not in ${known#"$KFLEX_REPO"/} (log: $log)"
fi
rm -rf "$run"
