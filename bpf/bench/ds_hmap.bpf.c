// SPDX-License-Identifier: GPL-2.0
/*
 * Chained hash map benchmark and test programs (bpf/ds/hashmap.h), driven
 * by BPF_PROG_TEST_RUN with a struct ds_args: update inserts the key or
 * replaces its value, lookup finds it, delete removes it. hmap_init takes
 * the bytes to reserve in `arg` and log2 of the bucket count in `flags`.
 * Updates and deletes may run on several CPUs at once.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(ds_heap, 1 << 28);
#define DS_HEAP ds_heap
#include "ds/hashmap.h"

DS_WORKLOAD_MAPS();

struct hm_map hmap;

SEC("syscall")
int hmap_init(struct ds_args *a)
{
	long r = ds_reserve(a->arg);

	if (!r && hm_init(&hmap, a->flags))
		r = -1;
	a->fails = r;
	return 0;
}

DS_UPDATE_PROG(hmap_update, hmap.buckets, hm_upsert(&hmap, key, val))

DS_LOOKUP_PROG(hmap_lookup, hmap.buckets, struct hm_node, hm_find(&hmap, key))

DS_DELETE_PROG(hmap_delete, hmap.buckets, hm_erase(&hmap, key))

/* Free every node and the buckets. */
SEC("syscall")
int hmap_clear(struct ds_args *a)
{
	ds_stuck = 0;
	a->hits = hm_destroy(&hmap);
	a->done = !ds_stuck;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
