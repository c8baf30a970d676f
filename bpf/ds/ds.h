/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ds.h - common pieces of the KFlex data-structure library (bpf/ds/).
 *
 * The structures live in an extension heap and link their nodes with
 * __arena pointers; the same source builds for a KFlex heap and, with
 * -DKFLEX_UPSTREAM_ARENA, for the upstream arena (see kflex.h). A program
 * declares its heap (KFLEX_HEAP) and defines DS_HEAP to its name before it
 * includes a structure's header.
 *
 * Keys are 32 bytes and values 64 bytes, compared and copied word by word.
 * Hashes and value formulas here are mirrored by user space
 * (loader/src/ds.rs), which checks the structures through the heap mapping:
 * keep both in sync.
 */
#ifndef __KFLEX_DS_H
#define __KFLEX_DS_H

#include "kflex.h"

#define DS_KEY_WORDS 4
#define DS_VAL_WORDS 8

struct ds_key {
	__u64 w[DS_KEY_WORDS];
};

struct ds_val {
	__u64 w[DS_VAL_WORDS];
};

#ifdef DS_HEAP
#define ds_alloc(size) kflex_malloc(DS_HEAP, (size))
#define ds_free(ptr) kflex_free(DS_HEAP, (ptr))
/* For programs that dereference heap pointers but never allocate. */
#define ds_use_heap() kflex_use_heap(DS_HEAP)
#endif

/*
 * ds_can_loop: true while the program's loop budget lasts, false once it
 * is spent (then the caller must stop). It is upstream's can_loop
 * (tools/testing/selftests/bpf/bpf_experimental.h, here in kflex.h): one
 * may_goto instruction, for which the kernel keeps a per-run counter and
 * takes the jump when it runs out.
 */
#define ds_can_loop can_loop

/*
 * DS_SET(lvalue, value): a store to heap memory that clang may not merge
 * with its neighbours. clang 19 turns adjacent stores of zero into a
 * memset intrinsic and then loses the address-space cast of its pointer,
 * which the verifier rejects; a volatile store is never merged.
 */
#define DS_SET(lv, v) (*(volatile __typeof__(lv) *)&(lv) = (v))

/*
 * Set when a loop ran out of budget in the middle of an operation: the
 * batch stops and reports how far it got (struct ds_args.done).
 */
__u64 ds_stuck;

/* ds_can_loop that also sets ds_stuck when the budget is spent. */
#define ds_loop_ok()							\
	({								\
		bool __ds_c = ds_can_loop;				\
		if (!__ds_c)						\
			ds_stuck = 1;					\
		__ds_c;							\
	})

/* Multiplicative constants (64-bit, odd) of the mixing functions. */
#define DS_M1 0xff51afd7ed558ccdULL
#define DS_M2 0xc4ceb9fe1a85ec53ULL
#define DS_GOLDEN 0x9e3779b97f4a7c15ULL

/* A bijective 64-bit mixer (xor-shift, multiply). */
static __always_inline __u64 ds_mix(__u64 x)
{
	x ^= x >> 33;
	x *= DS_M1;
	x ^= x >> 33;
	x *= DS_M2;
	x ^= x >> 33;
	return x;
}

/* The hash of a key: every word folded in, then mixed. */
static __always_inline __u64 ds_hash(const struct ds_key *k)
{
	__u64 h = DS_GOLDEN;

	h = (h ^ k->w[0]) * DS_M1;
	h ^= h >> 32;
	h = (h ^ k->w[1]) * DS_M1;
	h ^= h >> 32;
	h = (h ^ k->w[2]) * DS_M1;
	h ^= h >> 32;
	h = (h ^ k->w[3]) * DS_M1;
	return ds_mix(h);
}

/*
 * The value an update with the key at index `idx` of the workload stores:
 * user space recomputes it to check lookups.
 */
static __always_inline void ds_make_val(struct ds_val *v, const struct ds_key *k, __u64 idx)
{
	__u64 s = (idx + 1) * DS_GOLDEN;

	v->w[0] = k->w[0] ^ s;
	v->w[1] = k->w[1] ^ (s + 1);
	v->w[2] = k->w[2] ^ (s + 2);
	v->w[3] = k->w[3] ^ (s + 3);
	v->w[4] = k->w[0] ^ (s + 4);
	v->w[5] = k->w[1] ^ (s + 5);
	v->w[6] = k->w[2] ^ (s + 6);
	v->w[7] = k->w[3] ^ (s + 7);
}

/*
 * A value's checksum as lookups report it: any changed word changes it.
 * The low bit is always set, so 0 means "not found".
 */
#define DS_CSUM(v)							\
	(((v)->w[0] + (v)->w[1] * 3 + (v)->w[2] * 5 + (v)->w[3] * 7 +	\
	  (v)->w[4] * 9 + (v)->w[5] * 11 + (v)->w[6] * 13 + (v)->w[7] * 15) | 1)

/* The same for keys (list pops report the key they removed). */
#define DS_KEY_CSUM(k)							\
	(((k)->w[0] + (k)->w[1] * 3 + (k)->w[2] * 5 + (k)->w[3] * 7) | 1)

/*
 * Key order: word by word, as unsigned numbers. Written as a macro so that
 * it works for any mix of kernel and heap (__arena) operands.
 */
#define DS_KEY_CMP(a, b)						\
	((a)->w[0] != (b)->w[0] ? ((a)->w[0] < (b)->w[0] ? -1 : 1) :	\
	 (a)->w[1] != (b)->w[1] ? ((a)->w[1] < (b)->w[1] ? -1 : 1) :	\
	 (a)->w[2] != (b)->w[2] ? ((a)->w[2] < (b)->w[2] ? -1 : 1) :	\
	 (a)->w[3] != (b)->w[3] ? ((a)->w[3] < (b)->w[3] ? -1 : 1) : 0)

#define DS_KEY_EQ(a, b)							\
	((a)->w[0] == (b)->w[0] && (a)->w[1] == (b)->w[1] &&		\
	 (a)->w[2] == (b)->w[2] && (a)->w[3] == (b)->w[3])

#define DS_KEY_COPY(dst, src)						\
	do {								\
		(dst)->w[0] = (src)->w[0];				\
		(dst)->w[1] = (src)->w[1];				\
		(dst)->w[2] = (src)->w[2];				\
		(dst)->w[3] = (src)->w[3];				\
	} while (0)

#define DS_VAL_COPY(dst, src)						\
	do {								\
		(dst)->w[0] = (src)->w[0];				\
		(dst)->w[1] = (src)->w[1];				\
		(dst)->w[2] = (src)->w[2];				\
		(dst)->w[3] = (src)->w[3];				\
		(dst)->w[4] = (src)->w[4];				\
		(dst)->w[5] = (src)->w[5];				\
		(dst)->w[6] = (src)->w[6];				\
		(dst)->w[7] = (src)->w[7];				\
	} while (0)

/*
 * The workload: user space fills ds_keys with the keys of the operations
 * (one per operation, drawn from the key set) and passes a struct ds_args
 * as the context of BPF_PROG_TEST_RUN; with DS_RECORD set, each operation
 * writes its result to ds_results at its index:
 *   update: 1 inserted, 2 replaced, 0 failed (heap exhausted);
 *   lookup: the checksum of the value found (DS_CSUM), 0 when absent;
 *           sketches: the estimate;
 *   delete: 1 removed, 0 absent; list: DS_KEY_CSUM of the key popped.
 */
#define DS_MAX_OPS 100000
#define DS_RECORD 1

struct ds_args {
	__u64 start;	/* index of the first key in ds_keys */
	__u64 count;	/* operations */
	__u64 flags;	/* DS_RECORD */
	__u64 arg;	/* per program (init: bytes to reserve, list lookup: walk limit) */
	__u64 hits;	/* out: operations that found (or inserted) their key */
	__u64 sum;	/* out: sum of the lookup results */
	__u64 fails;	/* out: failed allocations (or lock timeouts) */
	__u64 done;	/* out: operations completed */
};

#define DS_WORKLOAD_MAPS()						\
	struct {							\
		__uint(type, BPF_MAP_TYPE_ARRAY);			\
		__uint(map_flags, BPF_F_MMAPABLE);			\
		__uint(max_entries, DS_MAX_OPS);			\
		__type(key, __u32);					\
		__type(value, struct ds_key);				\
	} ds_keys SEC(".maps");						\
	struct {							\
		__uint(type, BPF_MAP_TYPE_ARRAY);			\
		__uint(map_flags, BPF_F_MMAPABLE);			\
		__uint(max_entries, DS_MAX_OPS);			\
		__type(key, __u32);					\
		__type(value, __u64);					\
	} ds_results SEC(".maps")

/* The key of operation `idx` (NULL past the end). */
#define ds_key_at(idx)							\
	({								\
		__u32 __ds_i = (idx);					\
		(struct ds_key *)bpf_map_lookup_elem(&ds_keys, &__ds_i); \
	})

#define ds_record(flags, idx, res)					\
	do {								\
		if ((flags) & DS_RECORD) {				\
			__u32 __ds_i = (idx);				\
			__u64 *__ds_r = bpf_map_lookup_elem(&ds_results, &__ds_i); \
			if (__ds_r)					\
				*__ds_r = (res);			\
		}							\
	} while (0)

/*
 * The update, lookup and delete programs of a keyed structure, each a batch
 * of operations over struct ds_args (see above). The program returns 1
 * without doing anything unless `ready` (the structure is set up). The
 * operation expressions see `key` (const struct ds_key *) and, for update,
 * `val` (const struct ds_val *):
 *   upsert: 1 inserted, 2 replaced, 0 heap exhausted;
 *   find:   the node holding the key (a pointer to node_t, which has a
 *           `val`) or NULL;
 *   erase:  1 removed, 0 absent.
 * An operation that sets ds_stuck ends the batch uncounted.
 */
#define DS_UPDATE_PROG(name, ready, upsert)				\
SEC("syscall")								\
int name(struct ds_args *a)						\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags;	\
	__u64 hits = 0, fails = 0, done = 0;				\
	const struct ds_key *key;					\
	struct ds_val __v;						\
	const struct ds_val *val = &__v;				\
	int r;								\
									\
	ds_stuck = 0;							\
	if (!(ready))							\
		return 1;						\
	bpf_for(i, 0, n) {						\
		key = ds_key_at(start + i);				\
		if (!key)						\
			break;						\
		ds_make_val(&__v, key, start + i);			\
		r = (upsert);						\
		if (ds_stuck)						\
			break;						\
		if (r == 1)						\
			hits++;						\
		else if (!r)						\
			fails++;					\
		ds_record(flags, start + i, r);				\
		done++;							\
	}								\
	a->hits = hits;							\
	a->fails = fails;						\
	a->done = done;							\
	return 0;							\
}

#define DS_LOOKUP_PROG(name, ready, node_t, find)			\
SEC("syscall")								\
int name(struct ds_args *a)						\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags;	\
	__u64 hits = 0, sum = 0, done = 0, res;				\
	const struct ds_key *key;					\
	node_t __arena *x;						\
									\
	ds_use_heap();							\
	ds_stuck = 0;							\
	if (!(ready))							\
		return 1;						\
	bpf_for(i, 0, n) {						\
		key = ds_key_at(start + i);				\
		if (!key)						\
			break;						\
		x = (find);						\
		if (ds_stuck)						\
			break;						\
		res = 0;						\
		if (x) {						\
			res = DS_CSUM(&x->val);				\
			hits++;						\
			sum += res;					\
		}							\
		ds_record(flags, start + i, res);			\
		done++;							\
	}								\
	a->hits = hits;							\
	a->sum = sum;							\
	a->done = done;							\
	return 0;							\
}

#define DS_DELETE_PROG(name, ready, erase)				\
SEC("syscall")								\
int name(struct ds_args *a)						\
{									\
	__u64 i, n = a->count, start = a->start, flags = a->flags;	\
	__u64 hits = 0, done = 0;					\
	const struct ds_key *key;					\
	int r;								\
									\
	ds_stuck = 0;							\
	if (!(ready))							\
		return 1;						\
	bpf_for(i, 0, n) {						\
		key = ds_key_at(start + i);				\
		if (!key)						\
			break;						\
		r = (erase);						\
		if (ds_stuck)						\
			break;						\
		hits += r;						\
		ds_record(flags, start + i, r);				\
		done++;							\
	}								\
	a->hits = hits;							\
	a->done = done;							\
	return 0;							\
}

/* Populate `bytes` of a KFlex heap ahead (nothing to do on the arena). */
#ifdef DS_HEAP
#define ds_reserve(bytes) ((bytes) ? kflex_reserve(DS_HEAP, (bytes)) : 0)
#endif

#endif /* __KFLEX_DS_H */
