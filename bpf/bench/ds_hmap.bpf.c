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

SEC("syscall")
int hmap_update(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, fails = 0, done = 0;
	struct ds_key *k;
	struct ds_val v;
	int r;

	ds_stuck = 0;
	if (!hmap.buckets)
		return 1;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		ds_make_val(&v, k, start + i);
		r = hm_upsert(&hmap, k, &v);
		if (r < 0)
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
int hmap_lookup(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, sum = 0, done = 0, res;
	struct hm_node __arena *x;
	struct ds_key *k;

	ds_use_heap();
	ds_stuck = 0;
	if (!hmap.buckets)
		return 1;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		x = hm_find(&hmap, k);
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
int hmap_delete(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, done = 0;
	struct ds_key *k;
	int r;

	ds_stuck = 0;
	if (!hmap.buckets)
		return 1;
	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		r = hm_erase(&hmap, k);
		if (r < 0)
			break;
		hits += r;
		ds_record(flags, start + i, r);
		done++;
	}
	a->hits = hits;
	a->done = done;
	return 0;
}

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
