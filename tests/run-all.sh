#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Every test: host tests (`cargo test`), then the guest test suite on the
# built-in kernel (CONFIG_KFLEX=y) and on the module kernel (=m). Ends with
# one line "N passed, M failed"; exit status non-zero on any failure.
set -uo pipefail
. "$(dirname "$0")/../linux/env.sh"
export KFLEX_VMLINUX_DIR=${KFLEX_VMLINUX_DIR:-$KFLEX_CACHE/include}

passed=0
failed=0
# Adds the counts from libtest "test result:" lines in file $1.
count() {
	local p f
	p=$(grep -aE '^test result: ' "$1" | sed -E 's/.* ([0-9]+) passed.*/\1/' | paste -sd+ | bc)
	f=$(grep -aE '^test result: ' "$1" | sed -E 's/.* ([0-9]+) failed.*/\1/' | paste -sd+ | bc)
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0}))
	echo "${p:-0} ${f:-0}"
}

logdir=$(mktemp -d /tmp/kflex-test.XXXXXX)

kflex_log "host tests (cargo test)"
(cd "$KFLEX_REPO" && cargo test --workspace --locked 2>&1) | tee "$logdir/host.log"
hrc=${PIPESTATUS[0]}
read -r hp hf < <(count "$logdir/host.log")
if [ "$hrc" -ne 0 ] && [ "$hf" -eq 0 ]; then
	echo "kflex: cargo test failed before running tests" >&2
	failed=$((failed + 1))
fi

guest_bin=$CARGO_TARGET_DIR/release/kflex-guest-tests
for v in y m; do
	kflex_log "guest tests on the CONFIG_KFLEX=$v kernel"
	mkdir -p "$logdir/guest-$v"
	"$KFLEX_REPO/tests/vm.sh" --variant "$v" --timeout 1500 --dir "$logdir/guest-$v" -- \
		"$guest_bin" --test-threads=1 --color never ${KFLEX_TEST_FILTER:-}
	grc=$?
	read -r gp gf < <(count "$logdir/guest-$v/console.log")
	if [ "$grc" -ne 0 ] && [ "$gf" -eq 0 ]; then
		# The tests passed but the guest did not end cleanly (kernel splat,
		# timeout, crash): that is a failure of its own.
		echo "kflex: guest run ($v) failed outside the tests (see above)" >&2
		failed=$((failed + 1))
	fi
done

echo "logs: $logdir"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
