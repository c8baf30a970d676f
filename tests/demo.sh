#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The demo, run inside a guest by `make demo`: enable KFlex, attach the XDP
# counter with kflex-load to a veth whose peer lives in another network
# namespace, send real traffic through it and print what happened.
set -euo pipefail

say() { printf '\n== %s\n' "$*"; }

say "KFlex in this kernel: $(cat /sys/kernel/kflex/status)"
if grep -q absent /sys/kernel/kflex/status; then
	say "insmod $KFLEX_KO"
	insmod "$KFLEX_KO"
	cat /sys/kernel/kflex/status
fi
dmesg | grep 'kflex:' || true

say "veth pair: demo0 (10.99.0.1, this namespace) <-> demo1 (10.99.0.2, namespace demo)"
ip netns add demo
ip link add demo0 type veth peer name demo1 netns demo
ip addr add 10.99.0.1/24 dev demo0
ip link set demo0 up
ip -n demo addr add 10.99.0.2/24 dev demo1
ip -n demo link set demo1 up
ifindex=$(cat /sys/class/net/demo0/ifindex)

say "kflex-load --ifindex $ifindex"
out=$(mktemp)
kflex-load --ifindex "$ifindex" >"$out" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q ready "$out" && break; sleep 0.2; done
cat "$out"
ip link show demo0 | grep -o 'prog/xdp id [0-9]*' || true

say "ping -c 5 10.99.0.1 from namespace demo"
ip netns exec demo ping -c 5 -i 0.2 10.99.0.1

say "stopping kflex-load (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
cat "$out"
