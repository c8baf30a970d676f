#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Every test: host tests (`cargo test`), formatting and lints, the harness
# from a clone under /tmp (tests/clone-test.sh), the kernel's test_verifier on
# the y kernel against its known failures (tests/selftests/verifier-ci.sh),
# then the guest test suite on the built-in kernel (CONFIG_KFLEX=y) and on the
# module kernel (=m). Ends with one line "N passed, M failed"; exit status
# non-zero on any failure.
set -uo pipefail
. "$(dirname "$0")/../linux/env.sh"
export KFLEX_VMLINUX_DIR=${KFLEX_VMLINUX_DIR:-$KFLEX_CACHE/include}

passed=0
failed=0
# Adds the counts of the libtest "test result:" lines in file $1 to the
# totals; sets last_passed and last_failed to this file's counts.
count() {
	local line p f
	last_passed=0
	last_failed=0
	while read -r line; do
		p=$(sed -E 's/.* ([0-9]+) passed.*/\1/' <<<"$line")
		f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
		last_passed=$((last_passed + p))
		last_failed=$((last_failed + f))
	done < <(tr -d '\r' <"$1" | grep -aE '^test result: ')
	passed=$((passed + last_passed))
	failed=$((failed + last_failed))
}

logdir=$(mktemp -d /tmp/kflex-test.XXXXXX)

# Runs "$@" as one test with a time limit of $STEP_TIMEOUT seconds; its
# output goes to the console and to $logdir/$name.log.
step() {
	local name=$1 rc=0
	shift
	timeout -k 10 "$STEP_TIMEOUT" "$@" 2>&1 | tee "$logdir/$name.log" || rc=$?
	if [ "$rc" -eq 0 ]; then
		passed=$((passed + 1))
	else
		[ "$rc" -ne 124 ] || echo "kflex: $name did not finish within $STEP_TIMEOUT s" >&2
		echo "kflex: FAILED: $name (log: $logdir/$name.log)" >&2
		failed=$((failed + 1))
	fi
}

[ -f "$KFLEX_VMLINUX_DIR/vmlinux.h" ] ||
	kflex_die "no $KFLEX_VMLINUX_DIR/vmlinux.h: run \`make test\` (or \`make tools\` first); \`cargo test -p kflex-core\` needs no kernel"
kflex_log "host tests (cargo test)"
(cd "$KFLEX_REPO" && cargo test --workspace --locked 2>&1) | tee "$logdir/host.log"
hrc=${PIPESTATUS[0]}
count "$logdir/host.log"
if [ "$hrc" -ne 0 ] && [ "$last_failed" -eq 0 ]; then
	echo "kflex: cargo test failed before running tests" >&2
	failed=$((failed + 1))
fi

kflex_log "formatting and lints (cargo fmt --check, cargo clippy -D warnings)"
for check in "cargo fmt --all --check" "cargo clippy --workspace --all-targets --locked -q -- -D warnings"; do
	if (cd "$KFLEX_REPO" && $check); then
		passed=$((passed + 1))
	else
		echo "kflex: FAILED: $check" >&2
		failed=$((failed + 1))
	fi
done

kflex_log "panic call sites of the Rust component, against tests/panic-allowlist.txt"
STEP_TIMEOUT=120 step panic-sites "$KFLEX_REPO/tests/panic-sites.sh"

kflex_log "the guest harness from a clone under /tmp"
STEP_TIMEOUT=300 step clone-test "$KFLEX_REPO/tests/clone-test.sh"

kflex_log "the kernel's test_verifier on the y kernel, against the known failures"
STEP_TIMEOUT=900 step test-verifier "$KFLEX_REPO/tests/selftests/verifier-ci.sh" y

guest_bin=$CARGO_TARGET_DIR/release/kflex-guest-tests
for v in y m; do
	kflex_log "guest tests on the CONFIG_KFLEX=$v kernel"
	mkdir -p "$logdir/guest-$v"
	"$KFLEX_REPO/tests/vm.sh" --variant "$v" --timeout 1500 --dir "$logdir/guest-$v" -- \
		"$guest_bin" --test-threads=1 --color never ${KFLEX_TEST_FILTER:-}
	grc=$?
	count "$logdir/guest-$v/console.log"
	if [ "$grc" -ne 0 ] && [ "$last_failed" -eq 0 ]; then
		# The tests passed but the guest did not end cleanly (kernel splat,
		# timeout, crash): that is a failure of its own.
		echo "kflex: guest run ($v) failed outside the tests (see above)" >&2
		failed=$((failed + 1))
	fi
done

echo "logs: $logdir"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
