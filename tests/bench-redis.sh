#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/bench-redis.sh OUTDIR -- the Redis GET/SET offload against
# redis-server alone, in one guest run (run by `make bench-redis` inside a
# guest). With KFLEX_BENCH_FAMILY=zset (tests/bench-zadd.sh, `make
# bench-zadd`) the sorted-set offload instead: `kflex-load --kredis`, a
# preload of ZADD myzset %d element:%012d for 0..99999, and redis-benchmark
# -t zadd (ZADD myzset <random score> element:<random>) at -P 1 and -P 16.
#
# Topology: tests/bench-net.sh (the receive side of ks0 and redis-server on
# CPU 1, redis-benchmark on CPU 0). For each round the variants alternate:
# redis-server alone, and redis-server behind `kflex-load --kmemcache`; each
# starts from a fresh redis-server preloaded with SET key:%012d <64 x> for
# 0..99999 through `redis-cli --pipe`, then runs redis-benchmark -t get,set
# -r 100000 -c 16 --csv with 64-byte values at -P 1 and -P 16 and 1024-byte
# values at -P 1. The table gives the median of the rounds (rps, p50, p99 from
# --csv) and the ratio offload / redis-server; raw outputs go to OUTDIR/raw/,
# the stream programs' run time per run to OUTDIR/bpf-stats.txt and the CPU
# shares to OUTDIR/cpu.txt. KFLEX_BENCH_REQUESTS (default 100000) sets -n,
# KFLEX_BENCH_ROUNDS (default 3) the rounds.
#
# Timings in a TCG guest are emulated: only the ratios mean anything.
set -uo pipefail

out=${1:?usage: bench-redis.sh OUTDIR}
n=${KFLEX_BENCH_REQUESTS:-100000}
rounds=${KFLEX_BENCH_ROUNDS:-3}
family=${KFLEX_BENCH_FAMILY:-getset}
if [ "$family" = zset ]; then
	flag=--kredis tests=zadd configs="P1:-P 1,P16:-P 16"
else
	flag=--kmemcache tests=get,set configs="d64-P1:-d 64 -P 1,d64-P16:-d 64 -P 16,d1024-P1:-d 1024 -P 1"
fi
# shellcheck source=tests/bench-net.sh
. "$(dirname "$0")/bench-net.sh"
bench_setup "$out"

# "TEST rps p50_ms p99_ms" per line of redis-benchmark --csv output.
summarise() {
	tr -d '"' | awk -F, '$1 == "SET" || $1 == "GET" || $1 == "ZADD" { print $1, $2, $5, $7 }'
}

start_server() {
	taskset -c 1 redis-server --bind 10.77.0.1 --port 6969 --save '' --appendonly no \
		--protected-mode no --daemonize no >"$1" 2>&1 &
	srv=$!
	for _ in $(seq 100); do
		redis-cli -h 10.77.0.1 -p 6969 ping 2>/dev/null | grep -q PONG && return 0
		sleep 0.1
	done
	echo "bench: redis-server did not start" >&2
	return 1
}

preload() {
	if [ "$family" = zset ]; then
		awk 'BEGIN { for (i = 0; i < 100000; i++) printf "ZADD myzset %d element:%012d\r\n", i, i }'
	else
		awk 'BEGIN { v = sprintf("%64s", ""); gsub(/ /, "x", v)
			for (i = 0; i < 100000; i++) printf "SET key:%012d %s\r\n", i, v }'
	fi | ip netns exec kbcli redis-cli -h 10.77.0.1 -p 6969 --pipe >"$1" 2>&1
	grep -q 'errors: 0, replies: 100000' "$1" || echo "bench: preload failed, see $1" >&2
}

{
	echo "# redis-benchmark -t $tests -r 100000 -n $n -c 16 --csv (from namespace kbcli, CPU 0) against"
	echo "# redis-server 7.0 on CPU 1, alone (redis) and behind kflex-load $flag (offload);"
	if [ "$family" = zset ]; then
		echo "# each run on a fresh server preloaded with a 100,000-member sorted set. Medians of $rounds rounds,"
	else
		echo "# each run on a fresh server preloaded with 100,000 64-byte values. Medians of $rounds rounds,"
	fi
	echo "# variants alternating in one guest run (QEMU TCG, 2 vCPUs: only the ratios mean anything)."
	echo "# KeyDB is not packaged for Debian 12: the baseline is redis-server alone."
	printf '%-14s %9s %12s %10s %10s\n' "workload" "variant" "rps" "p50_ms" "p99_ms"
} >"$out/table.txt"
for r in $(seq "$rounds"); do
	for variant in redis offload; do
		start_server "$out/raw/$r-$variant-redis-server.log" || exit 1
		pin_napi
		kl=
		if [ "$variant" = offload ]; then
			kflex-load "$flag" --port 6969 --heap-size 1G \
				>"$out/raw/$r-$variant-kflex-load.log" 2>&1 &
			kl=$!
			for _ in $(seq 600); do
				grep -q '^ready:' "$out/raw/$r-$variant-kflex-load.log" && break
				sleep 0.2
			done
		fi
		preload "$out/raw/$r-$variant-preload.txt"
		IFS=, read -ra cfgs <<<"$configs"
		for c in "${cfgs[@]}"; do
			name=${c%%:*}
			args=${c#*:}
			log=$out/raw/$name-$r-$variant.csv
			j0=$(cpu_jiffies)
			# shellcheck disable=SC2086 # args are words
			ip netns exec kbcli taskset -c 0 timeout -s KILL 1200 redis-benchmark -h 10.77.0.1 \
				-p 6969 -t "$tests" -r 100000 -n "$n" -c 16 $args --csv >"$log" 2>"${log%.csv}.err"
			j1=$(cpu_jiffies)
			summarise <"$log" | while read -r t rps p50 p99; do
				echo "$name-$t $variant $rps $p50 $p99" >>"$out/runs.txt"
			done
			echo "$j0 $j1" | awk -v n="$name" -v v="$variant" -v r="$r" \
				'{ printf "%s %s round %s: cpu0 (client) %.0f%% busy, cpu1 (server) %.0f%% busy\n", n, v, r,
					100 * ($5 - $1) / ($6 - $2), 100 * ($7 - $3) / ($8 - $4) }' >>"$out/cpu.txt"
			echo "bench: $name round $r $variant: $(summarise <"$log" | paste -sd' ')" >&2
		done
		if [ -n "$kl" ]; then
			for prog in rd_parse rd_verdict; do
				"$bpftool" prog show name "$prog" | tr -s ' ' |
					sed -n 's/.*run_time_ns \([0-9]*\) run_cnt \([0-9]*\).*/\1 \2/p' |
					awk -v r="$r" -v p="$prog" \
						'$2 > 0 { printf "round %s %s %.0f ns per run, %d runs\n", r, p, $1 / $2, $2 }' \
						>>"$out/bpf-stats.txt"
			done
			kill -TERM "$kl"
			wait "$kl"
		fi
		kill "$srv"
		wait "$srv" 2>/dev/null
	done
done
for w in $(awk '{ print $1 }' "$out/runs.txt" | sort -u); do
	for variant in redis offload; do
		for col in 3 4 5; do
			grep "^$w $variant " "$out/runs.txt" | awk -v c="$col" '{ print $c }' | median
		done | paste -sd' ' | awk -v n="$w" -v v="$variant" \
			'{ printf "%-14s %9s %12s %10s %10s\n", n, v, $1, $2, $3 }' >>"$out/table.txt"
	done
	awk -v n="$w" '$1 == n && $2 == "redis" { m = $3 } $1 == n && $2 == "offload" { o = $3 }
		END { if (m > 0) printf "%-14s %9s %11.2fx\n", n, "off/redis", o / m }' \
		"$out/table.txt" >>"$out/table.txt"
done
errors=$(cat "$out"/raw/*.err 2>/dev/null | grep -ci error)
echo "# redis-benchmark error lines in all runs: $errors" >>"$out/table.txt"
cat "$out/table.txt" "$out/bpf-stats.txt" "$out/cpu.txt"
