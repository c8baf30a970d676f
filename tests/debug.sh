#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/debug.sh -- `make test-debug` (= `make test VARIANT=debug`): the whole
# guest test suite on the debug kernel (the y kernel plus
# linux/kflex-debug.config: KASAN, lockdep, atomic-sleep and preemption
# checks, soft/hard lockup detectors, the irqsoff tracer), then a summary of
# what the kernel's checkers reported. Slow under TCG (KASAN, lockdep):
# KFLEX_DEBUG_TIMEOUT seconds (default 4 h) for the guest. The guest binary
# is copied first, so rebuilding it meanwhile does not disturb the run.
# Writes tests/results/debug.md and tests/results/debug/ (kernel log excerpts);
# exits non-zero on a failed test or any checker report.
set -euo pipefail
. "$(dirname "$0")/../linux/env.sh"

bin=$CARGO_TARGET_DIR/release/kflex-guest-tests
[ -x "$bin" ] || kflex_die "no $bin: run \`make tools\` first"
logdir=$(mktemp -d /tmp/kflex-debug.XXXXXX)
cp "$bin" "$logdir/kflex-guest-tests"
# What the report names: the tree and the binary as they were at the start.
commit=$(git -C "$KFLEX_REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
built=$(date -u -r "$bin" '+%Y-%m-%d %H:%M UTC')
timeout=${KFLEX_DEBUG_TIMEOUT:-14400}

# In the guest: the irqsoff tracer records the longest interrupts-off section
# (without function tracing inside it, to keep the overhead down), the suite
# runs, then the tracer's result is saved.
# shellcheck disable=SC2016 # expanded in the guest
guest='t=/sys/kernel/tracing
mount -t tracefs tracefs $t 2>/dev/null || true
if [ -w $t/current_tracer ] && grep -qw irqsoff $t/available_tracers; then
	echo 0 >$t/options/function-trace
	echo 0 >$t/tracing_max_latency
	echo irqsoff >$t/current_tracer
fi
rc=0
/run/kflex/kflex-guest-tests --test-threads=1 --color never ${KFLEX_TEST_FILTER:-} || rc=$?
if [ "$(cat $t/current_tracer 2>/dev/null)" = irqsoff ]; then
	cat $t/tracing_max_latency >/run/kflex/irqsoff-max-us
	head -n 40 $t/trace >/run/kflex/irqsoff-trace
	echo nop >$t/current_tracer
fi
exit $rc'
start=$(date +%s)
vrc=0
kflex_log "guest test suite on the debug kernel (timeout ${timeout} s, logs in $logdir)"
"$KFLEX_REPO/tests/vm.sh" --variant debug --timeout "$timeout" --dir "$logdir" -- \
	env KFLEX_TEST_FILTER="${KFLEX_TEST_FILTER:-}" bash -c "$guest" || vrc=$?
elapsed=$(($(date +%s) - start))

res=$KFLEX_REPO/tests/results
mkdir -p "$res/debug"
klog=$logdir/dmesg
[ -f "$klog" ] || klog=$logdir/console.log
# Checker reports, by kind.
kinds=(
	'KASAN|BUG: KASAN'
	'lockdep|possible circular locking|inconsistent lock state|possible recursive locking|lock held when returning|bad unlock balance|suspicious RCU usage|possible irq lock inversion|HARDIRQ-safe'
	'atomic sleep|sleeping function called from invalid context|scheduling while atomic'
	'preempt|using smp_processor_id\(\) in preemptible|using __this_cpu_[a-z_]+\(\) in preemptible'
	'soft lockup|soft lockup'
	'hard lockup|hard LOCKUP'
	'hung task|blocked for more than'
	'RCU stall|rcu_sched self-detected stall|rcu: INFO: .* stall'
	'other BUG/WARNING/Oops|BUG:|WARNING:|Oops|general protection'
)
total=0
table=""
for k in "${kinds[@]}"; do
	name=${k%%|*}
	re=${k#*|}
	n=$(grep -acE "$re" "$klog" || true)
	if [ "$name" = "other BUG/WARNING/Oops" ]; then
		# Everything the specific kinds above did not already count.
		n=$(grep -aE "$re" "$klog" | grep -cvE "KASAN|lockdep|circular locking|inconsistent lock|recursive locking|lock held|unlock balance|suspicious RCU|irq lock inversion|sleeping function|scheduling while atomic|smp_processor_id|__this_cpu|soft lockup|hard LOCKUP|blocked for more|stall" || true)
	fi
	total=$((total + n))
	table="$table| $name | $n |"$'\n'
done
grep -aE -A40 'BUG:|WARNING:|Oops|LOCKUP|soft lockup|blocked for more than|stall' "$klog" | head -n 600 >"$res/debug/dmesg-excerpt.txt" || true
result=$(tr -d '\r' <"$logdir/console.log" | grep -a '^test result:' | tail -n 1 || true)
failed_tests=$(tr -d '\r' <"$logdir/console.log" | grep -aE '^test .* \.\.\. FAILED' || true)
tr -d '\r' <"$logdir/console.log" | grep -aE '^test |^test result:' >"$res/debug/tests.txt" || true
irq_us=$(cat "$logdir/irqsoff-max-us" 2>/dev/null || echo 'not recorded')
[ ! -f "$logdir/irqsoff-trace" ] || cp "$logdir/irqsoff-trace" "$res/debug/irqsoff-trace.txt"
{
	echo "# The guest test suite on the debug kernel"
	echo
	echo "Produced by \`make test-debug\` ($(date -u +%Y-%m-%d), commit $commit,"
	echo "guest binary built $built). Kernel: the y configuration plus"
	echo "\`linux/kflex-debug.config\` (generic inline KASAN, PROVE_LOCKING, DEBUG_ATOMIC_SLEEP, PREEMPT +"
	echo "DEBUG_PREEMPT, soft-lockup and buddy hard-lockup detectors, hung-task detector, irqsoff tracer)."
	echo "QEMU TCG, 2 vCPUs; the run took ${elapsed} s; guest exit status ${vrc}."
	echo
	echo "Tests: \`${result:-no test result line (the guest did not finish)}\`"
	if [ -n "$failed_tests" ]; then
		echo
		echo "Failed tests:"
		echo "$failed_tests" | sed 's/^/- /'
	fi
	echo
	echo "| kernel checker | reports |"
	echo "|---|---|"
	printf '%s' "$table"
	echo
	echo "Longest interrupts-off section seen by the irqsoff tracer: ${irq_us} µs (emulated time under TCG;"
	echo "where: tests/results/debug/irqsoff-trace.txt). Report excerpts: tests/results/debug/dmesg-excerpt.txt."
} >"$res/debug.md"
cat "$res/debug.md"
[ "$vrc" -eq 0 ] && [ "$total" -eq 0 ]
