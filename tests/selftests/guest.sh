#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/selftests/guest.sh MODE OUT MODS TAG -- runs in a guest (tests/vm.sh).
#
# Runs the BPF selftests built by tests/selftests/build.sh in OUT with the
# test modules of MODS (built for the running kernel), in a scratch copy under
# /tmp (the tests load ./bpf_testmod.ko and their objects from the current
# directory). Results go to /run/kflex/TAG-*.log:
#   verifier     test_verifier                         -> TAG-verifier.log
#   progs        test_verifier, then every test_progs test of the groups in
#                KFLEX_SELFTEST_GROUPS, one process per test with a time
#                limit (test_progs has no watchdog of its own)
#                                                     -> TAG-progs.log
#   kflex-arena  the arena tests (arena_htab, arena_list, arena_atomics,
#                verifier_arena*) with kflex_arena_shim.so preloaded: every
#                arena map becomes a KFlex heap        -> TAG-kflex-arena.log
#                (the maps it converted: TAG-shim.log)
# The exit status is 0 whatever the tests did; the host compares the logs.
set -euo pipefail

mode=$1 out=$2 mods=$3 tag=$4
res=/run/kflex
work=/tmp/selftests
rm -rf "$work"
mkdir -p "$work"
for f in "$out"/*; do ln -s "$f" "$work/"; done
rm -f "$work"/*.ko
cp "$mods"/*.ko "$work/"
cd "$work"
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
ulimit -l unlimited
echo "kernel: $(uname -r) $(cat /sys/kernel/kflex/status 2>/dev/null || echo 'no KFlex')" >"$res/$tag-info.txt"
per_test_timeout=${KFLEX_SELFTEST_TIMEOUT:-600}

run_verifier() {
	local s=$SECONDS rc=0
	./test_verifier >"$res/$tag-verifier.log" 2>&1 || rc=$?
	echo "test_verifier: exit $rc, $((SECONDS - s)) s" >>"$res/$tag-info.txt"
}

# Runs "$@" in the background and kills it after $1 seconds; status 124 then.
# Not coreutils' timeout: the guest kernels have no POSIX_TIMERS (tinyconfig),
# so its timer never fires.
run_limited() {
	local limit=$1 pid waited=0
	shift
	"$@" &
	pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		if [ "$waited" -ge "$limit" ]; then
			kill -TERM "$pid" 2>/dev/null
			sleep 5
			kill -KILL "$pid" 2>/dev/null
			wait "$pid" 2>/dev/null
			return 124
		fi
		sleep 1
		waited=$((waited + 1))
	done
	wait "$pid"
}

# Runs every test_progs test matching the globs "$@" (comma-separated
# allowlist), one process each; the output of all goes to $log.
run_progs() {
	local log=$1 t s rc
	shift
	local allow
	allow=$(IFS=,; echo "$*")
	: >"$log"
	for t in $(./test_progs -a "$allow" --list 2>/dev/null); do
		s=$SECONDS
		rc=0
		run_limited "$per_test_timeout" ./test_progs -a "$t" >>"$log" 2>&1 || rc=$?
		if [ $rc -eq 124 ]; then
			echo "#TIMEOUT $t:FAIL (no result within $per_test_timeout s)" >>"$log"
		fi
		echo "#RUN $t: exit $rc, $((SECONDS - s)) s" >>"$log"
	done
}

case "$mode" in
verifier)
	run_verifier
	;;
progs)
	run_verifier
	# The globs are for test_progs, not for the shell.
	read -r -a globs <<<"${KFLEX_SELFTEST_GROUPS:?}"
	run_progs "$res/$tag-progs.log" "${globs[@]}"
	;;
kflex-arena)
	# These take a second or two each when they work.
	per_test_timeout=${KFLEX_SELFTEST_TIMEOUT:-120}
	KFLEX_SHIM_LOG=$res/$tag-shim.log LD_PRELOAD=$work/kflex_arena_shim.so run_progs "$res/$tag-kflex-arena.log" \
		arena_htab arena_list arena_atomics 'verifier_arena*'
	;;
*)
	echo "unknown mode $mode" >&2
	exit 2
	;;
esac
dmesg | grep -aE 'kflex: prog=' >"$res/$tag-kflex-progs.txt" || true
