# SPDX-License-Identifier: GPL-2.0
#
# tests/bench-net.sh -- sourced by the offload benchmarks (tests/bench-*.sh)
# inside a guest: the client/server topology and helpers they share.
#
# Namespace kbcli with veth kc1 (client, 10.77.0.2) <-> ks0 (server side,
# root namespace, 10.77.0.1), GRO on both ends. The receive side of ks0
# runs on CPU 1, the server's CPU, as a NIC queue's interrupt would: in a
# NAPI kthread pinned there (pin_napi, again after anything that may have
# recreated it) and, for packets veth hands to the stack without NAPI, by
# RPS. Clients run on CPU 0.

# bench_setup OUTDIR: OUTDIR/raw/ made and the previous run's summaries
# removed, the working directory /tmp, the topology up.
bench_setup() {
	mkdir -p "$1/raw"
	rm -f "$1/runs.txt" "$1/bpf-stats.txt" "$1/cpu.txt"
	cd /tmp || return 1
	ip netns add kbcli 2>/dev/null
	ip link add ks0 type veth peer name kc1 netns kbcli
	ip addr add 10.77.0.1/24 dev ks0
	ip link set ks0 up
	ip -n kbcli addr add 10.77.0.2/24 dev kc1
	ip -n kbcli link set kc1 up
	ip -n kbcli link set lo up
	ip netns exec kbcli ethtool -K kc1 gro on
	ethtool -K ks0 gro on
	echo 1 >/sys/class/net/ks0/threaded
	echo 2 >/sys/class/net/ks0/queues/rx-0/rps_cpus
	sysctl -qw kernel.bpf_stats_enabled=1
	bpftool=${KFLEX_CACHE:-/root/.cache/kflex}/build-y/linux/tools/bpf/bpftool/bpftool
}

pin_napi() {
	for p in $(pgrep -f "napi/ks0"); do taskset -pc 1 "$p" >/dev/null; done
}

# Busy and total jiffies of CPUs 0 and 1 from /proc/stat: "b0 t0 b1 t1".
cpu_jiffies() {
	awk '/^cpu[01] / { t = 0; for (i = 2; i <= NF; i++) t += $i; printf "%d %d ", t - $5 - $6, t }' /proc/stat
}

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
