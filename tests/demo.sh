#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The demo, run inside a guest by `make demo`: enable KFlex, attach the XDP
# counter with kflex-load to a veth whose peer lives in another network
# namespace and ping through it; then put the memcached offload
# (kflex-load --kmemcached) in front of a real memcached and drive it with
# memaslap from the other namespace, verifying every value it gets back;
# then the Redis offloads (kflex-load --kmemcache, --kredis) in front of a
# real redis-server, with redis-cli and redis-benchmark.
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

say "memcached on 10.99.0.1, UDP and TCP port 6969"
memcached -u nobody -l 10.99.0.1 -p 6969 -U 6969 -t 1 -m 64 &
mc=$!
for _ in $(seq 50); do grep -q ':1B39 ' /proc/net/udp && break; sleep 0.2; done
# veth hands XDP_TX frames promptly only to a peer with an XDP program.
ip netns exec demo ethtool -K demo1 gro on >/dev/null
ip netns exec demo kflex-load --ifindex "$(ip netns exec demo cat /sys/class/net/demo1/ifindex)" \
	>/dev/null 2>&1 &
peer=$!

say "kflex-load --kmemcached --ifindex $ifindex --heap-size 256M"
kflex-load --kmemcached --ifindex "$ifindex" --heap-size 256M >"$out" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q '^ready' "$out" && break; sleep 0.2; done
cat "$out"
gets0=$(memcstat --servers=10.99.0.1:6969 | awk '/cmd_get:/ { print $2 }')

say "memaslap over UDP from namespace demo: 20000 requests, get:set 9:1, every value verified"
cfg=$(mktemp)
printf 'key\n64 64 1\nvalue\n64 64 1\ncmd\n0 0.1\n1 0.9\n' >"$cfg"
ip netns exec demo memcaslap -s 10.99.0.1:6969 -U -F "$cfg" -T 2 -c 8 -x 20000 -v 1.0 |
	grep -E 'verify_failed|get_misses|packet_drop|udp_timeout|^Run time|TPS'

say "kflex-load stats (while it runs)"
kflex-load stats
gets1=$(memcstat --servers=10.99.0.1:6969 | awk '/cmd_get:/ { print $2 }')
echo "memcached's own cmd_get over TCP: $gets0 before, $gets1 after (the kernel answered the gets)"

say "a UDP 'version' (keyless) goes on to memcached"
ip netns exec demo python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"\x00\x01\x00\x00\x00\x01\x00\x00version\r\n", ("10.99.0.1", 6969))
print(s.recv(2048)[8:].decode().strip())'

say "stopping kflex-load --kmemcached (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
cat "$out"
kill "$peer" "$mc"
wait "$peer" "$mc" 2>/dev/null || true

say "redis-server on TCP port 6979, then kflex-load --kmemcache --port 6979 --heap-size 256M"
redis-server --port 6979 --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
rs=$!
for _ in $(seq 50); do redis-cli -p 6979 PING >/dev/null 2>&1 && break; sleep 0.2; done
kflex-load --kmemcache --port 6979 --heap-size 256M >"$out" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q '^ready' "$out" && break; sleep 0.2; done
cat "$out"

say "redis-cli: SET and GET answered in the kernel, PING and INCR by redis-server"
redis-cli -p 6979 SET greeting "hello from the kernel"
redis-cli -p 6979 GET greeting
redis-cli -p 6979 PING
redis-cli -p 6979 INCR visits
say "redis-cli: another command on a key the offload holds is refused"
redis-cli -p 6979 APPEND greeting "!"
echo "keys redis-server itself holds: $(redis-cli -p 6979 DBSIZE) (the counter only)"
say "redis-cli: a 64 KiB binary value from a file (-x), and back"
blob=$(mktemp)
head -c 65536 /dev/urandom >"$blob"
redis-cli -p 6979 -x SET blob <"$blob"
redis-cli -p 6979 --raw GET blob >"$blob.back"
# --raw adds a newline
truncate -s 65536 "$blob.back"
cmp "$blob" "$blob.back"
echo "64 KiB read back whole"
rm -f "$blob" "$blob.back"

say "redis-benchmark GET/SET through the offload: 10000 requests, 64-byte values"
redis-benchmark -p 6979 -t get,set -n 10000 -r 1000 -d 64 -c 8 --csv

say "stopping kflex-load --kmemcache (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
cat "$out"
kill "$rs"
wait "$rs" 2>/dev/null || true

say "redis-server on TCP port 6979, then kflex-load --kredis --port 6979 --heap-size 256M"
redis-server --port 6979 --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
rs=$!
for _ in $(seq 50); do redis-cli -p 6979 PING >/dev/null 2>&1 && break; sleep 0.2; done
kflex-load --kredis --port 6979 --heap-size 256M >"$out" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q '^ready' "$out" && break; sleep 0.2; done
cat "$out"

say "redis-cli: a sorted set in the kernel (ZADD, ZRANGE, ZSCORE, ZCARD)"
redis-cli -p 6979 ZADD board 30 carol 10 alice 20 bob
redis-cli -p 6979 ZADD board XX CH 25 alice
redis-cli -p 6979 ZRANGE board 0 -1 WITHSCORES
redis-cli -p 6979 ZSCORE board alice
redis-cli -p 6979 ZCARD board
say "redis-cli: a fractional score is refused; ZPOPMIN on the held set too"
redis-cli -p 6979 ZADD board 1.5 dave
redis-cli -p 6979 ZPOPMIN board
echo "keys redis-server itself holds: $(redis-cli -p 6979 DBSIZE)"

say "redis-benchmark ZADD through the offload: 10000 requests"
redis-benchmark -p 6979 -t zadd -n 10000 -r 1000 -c 8 --csv

say "stopping kflex-load --kredis (SIGTERM)"
kill -TERM "$pid"
wait "$pid"
cat "$out"
kill "$rs"
wait "$rs" 2>/dev/null || true
