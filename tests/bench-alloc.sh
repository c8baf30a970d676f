#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# tests/bench-alloc.sh OUTDIR -- the allocator's benchmarks and the native
# data-structure rows (issue: allocator speed, the native limit), in one
# guest: kflex-bench --filter alloc/ (pairs, batches, XDP pairs, remote
# frees, kmalloc, the cost breakdown) and the rbtree, skiplist and hash map with every
# variant (native on kernel memory and native-heap included), then the
# fragmentation workload (10 M operations). Each part's table and JSON land
# in OUTDIR.
set -euo pipefail
out=${1:?usage: bench-alloc.sh OUTDIR}
mkdir -p "$out"
reps=${KFLEX_BENCH_REPS:-3}
for part in alloc/ ds/rbtree/ ds/skiplist/ ds/hashmap/; do
	name=$(echo "${part%/}" | tr / -)
	echo "kflex-bench --filter $part" >&2
	kflex-bench --filter "$part" --reps "$reps" --json-file "$out/$name.json" >"$out/$name.txt"
	cat "$out/$name.txt"
done
echo "kflex-bench --fragmentation" >&2
kflex-bench --fragmentation --json-file "$out/fragmentation.json" >"$out/fragmentation.txt"
cat "$out/fragmentation.txt"
