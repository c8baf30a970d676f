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

/* The table in the heap, for SK_OP_PROGS. */
#define SK_HEAP_TABLE(tab)						\
	struct sk_table __arena *t = (tab);				\
	ds_use_heap()

/* The programs of both sketches, generated for each. */
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
SK_OP_PROGS(pfx, SK_HEAP_TABLE(tab), add, query)				\
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
