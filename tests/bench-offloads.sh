#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/bench-offloads.sh OUTDIR -- the memcached offload against memcached
# alone, in one guest run (run by `make bench-offloads` inside a guest).
#
# Topology: tests/bench-net.sh (kbcli/kc1 client, ks0 server side); the
# pass-through packet counter on kc1 (veth delivers XDP_TX frames promptly
# only to a peer with an XDP program). memcached -t 1 pinned to CPU 1, memaslap pinned to CPU 0.
# For each value size (64, 1024) and get:set ratio (9:1, 5:5) the variants
# alternate: memcached alone, memcached behind BMC's policy on the same code
# (kflex-load --kmemcached --policy bmc) and memcached behind the offload
# (kflex-load --kmemcached), three rounds; the table gives the median of the
# three (TPS, average latency, the log2 histogram's p50 and p99 buckets) and
# the ratios offload / memcached and offload / bmc. Raw memaslap outputs go
# to OUTDIR/raw/.
#
# Timings in a TCG guest are emulated: only the ratios mean anything.
set -uo pipefail

out=${1:?usage: bench-offloads.sh OUTDIR}
dur=${KFLEX_BENCH_DURATION:-20s}
rounds=${KFLEX_BENCH_ROUNDS:-3}
# shellcheck source=tests/bench-net.sh
. "$(dirname "$0")/bench-net.sh"
bench_setup "$out"
ip netns exec kbcli kflex-load --ifindex "$(ip netns exec kbcli cat /sys/class/net/kc1/ifindex)" \
	>"$out/raw/peer-xdp.log" 2>&1 &
peer=$!
taskset -c 1 memcached -u nobody -l 10.77.0.1 -p 6969 -U 6969 -t 1 -m 1024 &
mc=$!
sleep 2
pin_napi
ifindex=$(cat /sys/class/net/ks0/ifindex)

# memaslap's summary: TPS, and from the Total statistics the average and the
# log2 histogram (lines "  n: count ..." give the count of latencies in
# [2^n, 2^(n+1)) us); prints "tps avg_us p50_us p99_us".
summarise() {
	awk '
	/TPS:/ { for (i = 1; i <= NF; i++) if ($i == "TPS:") tps = $(i + 1) }
	/^Total Statistics \(/ { total = 1; next }
	total && /^ *Avg:/ { avg = $2 }
	total && /Log2 Dist:/ { dist = 1; next }
	total && dist && /^ *[0-9]+:/ {
		sub(":", "", $1); base = $1
		for (i = 2; i <= NF; i++) { n[base + i - 2] = $i; count += $i }
		next
	}
	dist { dist = 0; total = 0 }
	END {
		p50 = p99 = "-"; c = 0
		for (b = 0; b < 64; b++) {
			c += n[b]
			if (p50 == "-" && count && c >= count * 0.5) p50 = 2 ^ b
			if (p99 == "-" && count && c >= count * 0.99) p99 = 2 ^ b
		}
		printf "%s %s %s %s\n", tps ? tps : 0, avg ? avg : "-", p50, p99
	}'
}

{
	echo "# memaslap (memcaslap -U -T 1 -c 16 -t $dur), key 64 B; medians of $rounds rounds per variant,"
	echo "# variants alternating in one guest run (QEMU TCG, 2 vCPUs: only the ratios mean anything)."
	echo "# memcached: memcached -t 1 alone; bmc: + kflex-load --kmemcached --policy bmc (BMC's"
	echo "# look-aside policy on the same code); offload: + kflex-load --kmemcached. KeyDB and"
	echo "# memtier_benchmark are not packaged for Debian 12: not measured."
	printf '%-22s %12s %12s %10s %10s %10s\n' "workload" "variant" "TPS" "avg_us" "p50_us<" "p99_us<"
} >"$out/table.txt"
for value in 64 1024; do
	for mix in "0.1 0.9" "0.5 0.5"; do
		set -- $mix
		name="v${value}-get$(echo "$2 * 10" | bc | cut -d. -f1):set$(echo "$1 * 10" | bc | cut -d. -f1)"
		cfg=/tmp/ms-$name.cfg
		printf 'key\n64 64 1\nvalue\n%s %s 1\ncmd\n0 %s\n1 %s\n' "$value" "$value" "$1" "$2" >"$cfg"
		for r in $(seq "$rounds"); do
			for variant in memcached bmc offload; do
				if [ "$variant" != memcached ]; then
					policy=kflex
					[ "$variant" = offload ] || policy=bmc
					kflex-load --kmemcached --policy "$policy" --ifindex "$ifindex" --heap-size 1G \
						>"$out/raw/$name-$r-$variant-kflex-load.log" 2>&1 &
					kl=$!
					for _ in $(seq 300); do
						grep -q '^ready:' "$out/raw/$name-$r-$variant-kflex-load.log" && break
						sleep 0.2
					done
				fi
				pin_napi
				log=$out/raw/$name-$r-$variant.txt
				j0=$(cpu_jiffies)
				ip netns exec kbcli taskset -c 0 timeout -s KILL 600 memcaslap -s 10.77.0.1:6969 -U \
					-F "$cfg" -T 1 -c 16 -t "$dur" -S "$dur" >"$log" 2>&1
				j1=$(cpu_jiffies)
				echo "$name $variant $(summarise <"$log")" >>"$out/runs.txt"
				# CPU shares: CPU 0 the client, CPU 1 memcached and the server side's NAPI.
				echo "$j0 $j1" | awk -v n="$name" -v v="$variant" -v r="$r" \
					'{ printf "%s %s round %s: cpu0 (client) %.0f%% busy, cpu1 (server) %.0f%% busy\n", n, v, r,
						100 * ($5 - $1) / ($6 - $2), 100 * ($7 - $3) / ($8 - $4) }' >>"$out/cpu.txt"
				echo "bench: $name round $r $variant: $(summarise <"$log")" >&2
				if [ "$variant" != memcached ]; then
					# Where the time goes: the programs' run time per run.
					for prog in kmc_xdp kmc_tc kmc_fill; do
						"$bpftool" prog show name "$prog" | tr -s ' ' | sed -n 's/.*run_time_ns \([0-9]*\) run_cnt \([0-9]*\).*/\1 \2/p' |
							awk -v n="$name" -v v="$variant" -v p="$prog" \
								'$2 > 0 { printf "%s %s %s %.0f ns per run, %d runs\n", n, v, p, $1 / $2, $2 }' >>"$out/bpf-stats.txt"
					done
					kill -TERM "$kl"
					wait "$kl"
				fi
			done
		done
		for variant in memcached bmc offload; do
			for col in 3 4 5 6; do
				grep "^$name $variant " "$out/runs.txt" | awk -v c="$col" '{ print $c }' | median
			done | paste -sd' ' | awk -v n="$name" -v v="$variant" \
				'{ printf "%-22s %12s %12s %10s %10s %10s\n", n, v, $1, $2, $3, $4 }' >>"$out/table.txt"
		done
		awk -v n="$name" '$1 == n && $2 == "memcached" { m = $3 } $1 == n && $2 == "bmc" { b = $3 }
			$1 == n && $2 == "offload" { o = $3 }
			END {
				if (m > 0) printf "%-22s %12s %12.2fx\n", n, "offload/mc", o / m
				if (b > 0) printf "%-22s %12s %12.2fx\n", n, "offload/bmc", o / b
				if (m > 0) printf "%-22s %12s %12.2fx\n", n, "bmc/mc", b / m
			}' "$out/table.txt" >>"$out/table.txt"
	done
done
kill "$mc" "$peer" 2>/dev/null
cat "$out/table.txt" "$out/bpf-stats.txt" "$out/cpu.txt"
