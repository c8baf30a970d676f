// SPDX-License-Identifier: GPL-2.0
/*
 * Red-black tree benchmark and test programs (bpf/ds/rbtree.h), driven by
 * BPF_PROG_TEST_RUN with a struct ds_args: update inserts the key or
 * replaces its value, lookup finds it, delete removes it.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(ds_heap, 1 << 28);
#define DS_HEAP ds_heap
#include "ds/rbtree.h"

DS_WORKLOAD_MAPS();

struct rbt_tree rbt;

SEC("syscall")
int rbt_init(struct ds_args *a)
{
	a->fails = ds_reserve(a->arg);
	return 0;
}

DS_UPDATE_PROG(rbt_update, 1, rb_upsert(&rbt, key, val))

DS_LOOKUP_PROG(rbt_lookup, 1, struct rbt_node, rb_find(&rbt, key))

DS_DELETE_PROG(rbt_delete, 1, rb_erase(&rbt, key))

/* Free every node. */
SEC("syscall")
int rbt_clear(struct ds_args *a)
{
	ds_stuck = 0;
	a->hits = rb_clear(&rbt);
	a->done = !ds_stuck;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
