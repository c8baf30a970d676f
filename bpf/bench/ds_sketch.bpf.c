// SPDX-License-Identifier: GPL-2.0
/*
 * Count-min sketch (cms_*) and count sketch (cs_*) benchmark and test
 * programs (bpf/ds/sketch.h) with their tables in the heap, driven by
 * BPF_PROG_TEST_RUN with a struct ds_args: update counts the key once,
 * lookup estimates its count, delete uncounts it once.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(ds_heap, 1 << 28);
#define DS_HEAP ds_heap
#include "ds/sketch.h"

DS_WORKLOAD_MAPS();

/*
 * The tables (void: the skeleton generator cannot derive Default for the
 * large arrays of struct sk_table).
 */
void __arena *cms_tab;
void __arena *cs_tab;

/* Allocate a zeroed table: NULL if the heap is exhausted. */
static __always_inline struct sk_table __arena *sk_new(void)
{
	struct sk_table __arena *t = ds_alloc(sizeof(*t));
	__s32 __arena *c;
	__u64 i;

	if (!t)
		return NULL;
	c = &t->c[0][0];
	bpf_for(i, 0, SK_ROWS * SK_COLS)
		DS_SET(c[i], 0);
	return t;
}

/* The operations of both sketches, generated for each. */
#define SK_PROGS(pfx, tab, add, query)					\
SEC("syscall")								\
int pfx##_init(struct ds_args *a)					\
{									\
	long r = ds_reserve(a->arg);					\
									\
	if (!r && !tab) {						\
		tab = sk_new();						\
		if (!tab)						\
			r = -1;						\
	}								\
	a->fails = r;							\
	return 0;							\
}									\
									\
SEC("syscall")								\
int pfx##_update(struct ds_args *a)					\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags, done = 0; \
	struct sk_table __arena *t = tab;				\
	struct ds_key *k;						\
									\
	ds_use_heap();							\
	if (!t)								\
		return 1;						\
	bpf_for(i, 0, n) {						\
		k = ds_key_at(start + i);				\
		if (!k)							\
			break;						\
		add(t, ds_hash(k), 1);					\
		ds_record(flags, start + i, 1);				\
		done++;							\
	}								\
	a->hits = done;							\
	a->done = done;							\
	return 0;							\
}									\
									\
SEC("syscall")								\
int pfx##_lookup(struct ds_args *a)					\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags, done = 0; \
	struct sk_table __arena *t = tab;				\
	__u64 hits = 0, sum = 0;					\
	struct ds_key *k;						\
	__s64 est;							\
									\
	ds_use_heap();							\
	if (!t)								\
		return 1;						\
	bpf_for(i, 0, n) {						\
		k = ds_key_at(start + i);				\
		if (!k)							\
			break;						\
		est = query(t, ds_hash(k));				\
		if (est > 0)						\
			hits++;						\
		sum += est;						\
		ds_record(flags, start + i, est);			\
		done++;							\
	}								\
	a->hits = hits;							\
	a->sum = sum;							\
	a->done = done;							\
	return 0;							\
}									\
									\
SEC("syscall")								\
int pfx##_delete(struct ds_args *a)					\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags, done = 0; \
	struct sk_table __arena *t = tab;				\
	struct ds_key *k;						\
									\
	ds_use_heap();							\
	if (!t)								\
		return 1;						\
	bpf_for(i, 0, n) {						\
		k = ds_key_at(start + i);				\
		if (!k)							\
			break;						\
		add(t, ds_hash(k), -1);					\
		ds_record(flags, start + i, 1);				\
		done++;							\
	}								\
	a->hits = done;							\
	a->done = done;							\
	return 0;							\
}									\
									\
/* Free the table. */							\
SEC("syscall")								\
int pfx##_clear(struct ds_args *a)					\
{									\
	struct sk_table __arena *t = tab;				\
									\
	if (t) {							\
		tab = NULL;						\
		ds_free(t);						\
	}								\
	a->done = 1;							\
	return 0;							\
}

SK_PROGS(cms, cms_tab, cms_add, cms_query)
SK_PROGS(cs, cs_tab, cs_add, cs_query)

char LICENSE[] SEC("license") = "GPL";
