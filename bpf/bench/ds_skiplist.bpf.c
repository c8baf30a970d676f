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

SEC("syscall")
int skl_update(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, fails = 0, done = 0;
	struct ds_key *k;
	struct ds_val v;
	int r;

	ds_stuck = 0;
	if (!skl.head)
		return 1;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		ds_make_val(&v, k, start + i);
		r = sl_upsert(&skl, k, &v);
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
int skl_lookup(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, sum = 0, done = 0, res;
	struct skl_node __arena *x;
	struct ds_key *k;

	ds_use_heap();
	ds_stuck = 0;
	if (!skl.head)
		return 1;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		x = sl_find(&skl, k);
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
int skl_delete(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, done = 0;
	struct ds_key *k;
	int r;

	ds_stuck = 0;
	if (!skl.head)
		return 1;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		r = sl_erase(&skl, k);
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
