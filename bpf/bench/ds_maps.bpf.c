// SPDX-License-Identifier: GPL-2.0
/*
 * Baselines in BPF maps: the hash map workload on a preallocated
 * BPF_MAP_TYPE_HASH (bhash_*), and both sketches with their tables in a
 * BPF array (acms_*, acs_*, same code as the heap sketches). bhash_update
 * records 3 ("stored"): the map does not say whether the key was new.
 */
#include "vmlinux.h"

#define SK_AS
#include "ds/sketch.h"

DS_WORKLOAD_MAPS();

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DS_MAX_OPS);
	__type(key, struct ds_key);
	__type(value, struct ds_val);
} bhash SEC(".maps");

/*
 * Entry 0: the count-min sketch, entry 1: the count sketch. The value is
 * given by size, not type: the skeleton generator cannot derive Default
 * for its large arrays.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct sk_table));
} sk_tabs SEC(".maps");

SEC("syscall")
int bhash_update(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, fails = 0, done = 0;
	struct ds_key *k;
	struct ds_val v;
	long r;

	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		ds_make_val(&v, k, start + i);
		r = bpf_map_update_elem(&bhash, k, &v, BPF_ANY);
		if (r)
			fails++;
		else
			hits++;
		ds_record(flags, start + i, r ? 0 : 3);
		done++;
	}
	a->hits = hits;
	a->fails = fails;
	a->done = done;
	return 0;
}

SEC("syscall")
int bhash_lookup(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, sum = 0, done = 0, res;
	struct ds_val *v;
	struct ds_key *k;

	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		v = bpf_map_lookup_elem(&bhash, k);
		res = 0;
		if (v) {
			res = DS_CSUM(v);
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
int bhash_delete(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, done = 0;
	struct ds_key *k;
	long r;

	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		r = bpf_map_delete_elem(&bhash, k);
		if (!r)
			hits++;
		ds_record(flags, start + i, r ? 0 : 1);
		done++;
	}
	a->hits = hits;
	a->done = done;
	return 0;
}

static long bhash_drop(void *map, struct ds_key *k, struct ds_val *v, __u64 *freed)
{
	if (!bpf_map_delete_elem(map, k))
		(*freed)++;
	return 0;
}

SEC("syscall")
int bhash_clear(struct ds_args *a)
{
	__u64 freed = 0;

	bpf_for_each_map_elem(&bhash, bhash_drop, &freed, 0);
	a->hits = freed;
	a->done = 1;
	return 0;
}

/* Table `slot` of sk_tabs, for SK_OP_PROGS. */
#define SK_MAP_TABLE(slot)						\
	__u32 __sk_slot = (slot);					\
	struct sk_table *t = bpf_map_lookup_elem(&sk_tabs, &__sk_slot)

#define SK_MAP_PROGS(pfx, slot, add, query)				\
SK_OP_PROGS(pfx, SK_MAP_TABLE(slot), add, query)				\
									\
/* Zero the table. */							\
SEC("syscall")								\
int pfx##_clear(struct ds_args *a)					\
{									\
	SK_MAP_TABLE(slot);						\
	__s32 *c;							\
	__u64 i;							\
									\
	if (!t)								\
		return 1;						\
	c = &t->c[0][0];						\
	bpf_for(i, 0, SK_ROWS * SK_COLS)				\
		c[i & (SK_ROWS * SK_COLS - 1)] = 0;			\
	a->done = 1;							\
	return 0;							\
}

SK_MAP_PROGS(acms, 0, cms_add, cms_query)
SK_MAP_PROGS(acs, 1, cs_add, cs_query)

char LICENSE[] SEC("license") = "GPL";
