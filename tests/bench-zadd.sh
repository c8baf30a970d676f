#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/bench-zadd.sh OUTDIR -- the Redis sorted-set offload (kflex-load
# --kredis) against redis-server alone with redis-benchmark -t zadd, in one
# guest run (run by `make bench-zadd` inside a guest): tests/bench-redis.sh
# with KFLEX_BENCH_FAMILY=zset.
KFLEX_BENCH_FAMILY=zset exec bash "$(dirname "$0")/bench-redis.sh" "$@"
