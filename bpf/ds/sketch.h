/* SPDX-License-Identifier: GPL-2.0 */
/*
 * sketch.h - count-min sketch (Cormode and Muthukrishnan) and count sketch
 * (Charikar, Chen and Farach-Colton) over SK_ROWS x SK_COLS counters.
 *
 * Row r maps a key to column m_r & (SK_COLS - 1) and, for the count
 * sketch, to sign -1 if bit 63 of m_r is set, +1 otherwise, where
 * m_r = ds_mix(hash + (r + 1) * DS_GOLDEN). Updates add 1, deletes
 * subtract 1 (the turnstile model). A count-min query is the minimum of the
 * key's counters; a count-sketch query is the median of the signed
 * counters (mean of the middle two, rounded down).
 *
 * The table lives in the heap (SK_AS is __arena, the default) or, when the
 * includer defines SK_AS empty, in kernel memory such as a map value (the
 * BPF-map baseline uses the same code).
 */
#ifndef __KFLEX_DS_SKETCH_H
#define __KFLEX_DS_SKETCH_H

#include "ds.h"

#define SK_ROWS 4
#define SK_COLS 512

#ifndef SK_AS
#define SK_AS __arena
#endif

struct sk_table {
	__s32 c[SK_ROWS][SK_COLS];
};

static __always_inline __u64 sk_row_hash(__u64 h, int row)
{
	return ds_mix(h + (row + 1) * DS_GOLDEN);
}

/*
 * Branch-free minimum and maximum (the counters are 32-bit, so the
 * difference cannot overflow): every branch on a counter would double the
 * paths the verifier walks through a query.
 */
static __always_inline __s64 sk_min(__s64 a, __s64 b)
{
	__s64 d = a - b;

	return b + (d & (d >> 63));
}

static __always_inline __s64 sk_max(__s64 a, __s64 b)
{
	__s64 d = a - b;

	return a - (d & (d >> 63));
}

/* +1 or -1 from bit 63 of a row hash. */
static __always_inline __s64 sk_sign(__u64 m)
{
	return 1 - (__s64)((m >> 62) & 2);
}

/* Count-min: add `d` to the key's counter in every row. */
static __always_inline void cms_add(struct sk_table SK_AS *t, __u64 h, __s32 d)
{
	int r;

#pragma unroll
	for (r = 0; r < SK_ROWS; r++)
		t->c[r][sk_row_hash(h, r) & (SK_COLS - 1)] += d;
}

static __always_inline __s64 cms_query(struct sk_table SK_AS *t, __u64 h)
{
	__s64 est;
	int r;

	est = t->c[0][sk_row_hash(h, 0) & (SK_COLS - 1)];
#pragma unroll
	for (r = 1; r < SK_ROWS; r++)
		est = sk_min(est, t->c[r][sk_row_hash(h, r) & (SK_COLS - 1)]);
	return est;
}

/* Count sketch: add `d` times the row's sign of the key in every row. */
static __always_inline void cs_add(struct sk_table SK_AS *t, __u64 h, __s32 d)
{
	__u64 m;
	int r;

#pragma unroll
	for (r = 0; r < SK_ROWS; r++) {
		m = sk_row_hash(h, r);
		t->c[r][m & (SK_COLS - 1)] += (__s32)sk_sign(m) * d;
	}
}

static __always_inline __s64 cs_query(struct sk_table SK_AS *t, __u64 h)
{
	__s64 v[SK_ROWS], a, b;
	__u64 m;
	int r;

#pragma unroll
	for (r = 0; r < SK_ROWS; r++) {
		m = sk_row_hash(h, r);
		v[r] = t->c[r][m & (SK_COLS - 1)] * sk_sign(m);
	}
	/*
	 * The middle two of four values are the larger of the two pair
	 * minima and the smaller of the two pair maxima.
	 */
	a = sk_max(sk_min(v[0], v[1]), sk_min(v[2], v[3]));
	b = sk_min(sk_max(v[0], v[1]), sk_max(v[2], v[3]));
	return (a + b) >> 1;
}

/* Program `name`: adds `delta` to the counters of every key of the batch. */
#define SK_ADD_PROG(name, get_table, add, delta)			\
SEC("syscall")								\
int name(struct ds_args *a)						\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags, done = 0; \
	const struct ds_key *k;						\
	get_table;							\
									\
	if (!t)								\
		return 1;						\
	bpf_for(i, 0, n) {						\
		k = ds_key_at(start + i);				\
		if (!k)							\
			break;						\
		add(t, ds_hash(k), delta);				\
		ds_record(flags, start + i, 1);				\
		done++;							\
	}								\
	a->hits = done;							\
	a->done = done;							\
	return 0;							\
}

/*
 * The update, lookup and delete programs of sketch `pfx` (batches over
 * struct ds_args, see ds.h). `get_table` declares `t`, the table (a
 * pointer to struct sk_table SK_AS, NULL if there is none: the program
 * returns 1); `add` and `query` are the sketch's functions above.
 */
#define SK_OP_PROGS(pfx, get_table, add, query)			\
SK_ADD_PROG(pfx##_update, get_table, add, 1)				\
SK_ADD_PROG(pfx##_delete, get_table, add, -1)				\
									\
SEC("syscall")								\
int pfx##_lookup(struct ds_args *a)					\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags, done = 0; \
	__u64 hits = 0, sum = 0;					\
	const struct ds_key *k;						\
	__s64 est;							\
	get_table;							\
									\
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
}

#endif /* __KFLEX_DS_SKETCH_H */
