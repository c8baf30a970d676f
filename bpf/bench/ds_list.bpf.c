// SPDX-License-Identifier: GPL-2.0
/*
 * Doubly linked list benchmark and test programs (bpf/ds/list.h), driven
 * by BPF_PROG_TEST_RUN with a struct ds_args: update pushes the key's node
 * to the front, lookup searches from the front (at most `arg` nodes),
 * delete pops the back node (the key is not used).
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(ds_heap, 1 << 28);
#define DS_HEAP ds_heap
#include "ds/list.h"

DS_WORKLOAD_MAPS();

struct dl_list list;

SEC("syscall")
int list_init(struct ds_args *a)
{
	a->fails = ds_reserve(a->arg);
	return 0;
}

SEC("syscall")
int list_update(struct ds_args *a)
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
		r = dl_push_front(&list, k, &v);
		if (r)
			fails++;
		else
			hits++;
		ds_record(flags, start + i, r ? 0 : 1);
		done++;
	}
	a->hits = hits;
	a->fails = fails;
	a->done = done;
	return 0;
}

SEC("syscall")
int list_lookup(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, max = a->arg;
	__u64 hits = 0, sum = 0, done = 0, res;
	struct dl_node __arena *x;
	struct ds_key *k;

	ds_use_heap();
	ds_stuck = 0;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		x = dl_find(&list, k, max);
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
int list_delete(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, done = 0, res;

	ds_stuck = 0;
	bpf_for(i, 0, n) {
		res = dl_pop_back(&list);
		if (res)
			hits++;
		ds_record(flags, start + i, res);
		done++;
	}
	a->hits = hits;
	a->done = done;
	return 0;
}

/* Free every node. */
SEC("syscall")
int list_clear(struct ds_args *a)
{
	__u64 freed = 0;

	ds_stuck = 0;
	while (list.tail) {
		if (!ds_loop_ok())
			break;
		dl_pop_back(&list);
		freed++;
	}
	a->hits = freed;
	a->done = !ds_stuck;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
