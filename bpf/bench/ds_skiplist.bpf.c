// SPDX-License-Identifier: GPL-2.0
/*
 * Skiplist benchmark and test programs (bpf/ds/skiplist.h), driven by
 * BPF_PROG_TEST_RUN with a struct ds_args: update inserts the key or
 * replaces its value, lookup finds it, delete removes it.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(ds_heap, 1 << 28);
#define DS_HEAP ds_heap
#include "ds/skiplist.h"

DS_WORKLOAD_MAPS();

struct skl_list skl;

SEC("syscall")
int skl_init(struct ds_args *a)
{
	long r = ds_reserve(a->arg);

	if (!r && sl_init(&skl))
		r = -1;
	a->fails = r;
	return 0;
}

DS_UPDATE_PROG(skl_update, skl.head, sl_upsert(&skl, key, val))

DS_LOOKUP_PROG(skl_lookup, skl.head, struct skl_node, sl_find(&skl, key))

DS_DELETE_PROG(skl_delete, skl.head, sl_erase(&skl, key))

/* Free every node and the head. */
SEC("syscall")
int skl_clear(struct ds_args *a)
{
	ds_stuck = 0;
	a->hits = sl_destroy(&skl);
	a->done = !ds_stuck;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
