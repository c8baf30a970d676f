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

SEC("syscall")
int rbt_update(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, fails = 0, done = 0;
	struct ds_key *k;
	struct ds_val v;
	int r;

	ds_stuck = 0;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		ds_make_val(&v, k, start + i);
		r = rb_upsert(&rbt, k, &v);
		if (ds_stuck)
			break;
		if (r == 1)
			hits++;
		else if (!r)
			fails++;
		ds_record(flags, start + i, r);
		done++;
	}
	a->hits = hits;
	a->fails = fails;
	a->done = done;
	return 0;
}

SEC("syscall")
int rbt_lookup(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, sum = 0, done = 0, res;
	struct rbt_node __arena *x;
	struct ds_key *k;

	ds_use_heap();
	ds_stuck = 0;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		x = rb_find(&rbt, k);
		if (ds_stuck)
			break;
		res = 0;
		if (x) {
			res = DS_CSUM(&x->val);
			hits++;
			sum += res;
		}
		ds_record(flags, start + i, res);
		done++;
	}
	a->hits = hits;
	a->sum = sum;
	a->done = done;
	return 0;
}

SEC("syscall")
int rbt_delete(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, done = 0;
	struct ds_key *k;
	int r;

	ds_stuck = 0;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		r = rb_erase(&rbt, k);
		if (ds_stuck)
			break;
		hits += r;
		ds_record(flags, start + i, r);
		done++;
	}
	a->hits = hits;
	a->done = done;
	return 0;
}

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
