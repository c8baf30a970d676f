/* SPDX-License-Identifier: GPL-2.0 */
/*
 * hashmap.h - chained hash map of key/value nodes in the heap.
 *
 * An array of 2^k buckets (allocated in the heap by hm_init), each a
 * lock (a KFlex heap lock, or a spin lock on the upstream arena) and the
 * head of a singly linked chain; nodes remember their
 * key's full hash so that a chain walk compares keys only on a hash match.
 * Updates and deletes take the bucket's lock, so several CPUs may run
 * them at once. Lookups do not lock: a lookup racing with a delete of the
 * same bucket may read a node being freed (still heap memory, so this is
 * safe for the kernel) and miss or return a stale value.
 *
 * Built for the upstream arena, allocations take one global lock as well:
 * the BPF free-list allocator of arena_alloc.h is not safe on several CPUs.
 */
#ifndef __KFLEX_DS_HASHMAP_H
#define __KFLEX_DS_HASHMAP_H

#include "ds.h"

struct hm_node {
	struct hm_node __arena *next;
	__u64 hash;
	struct ds_key key;
	struct ds_val val;
};

struct hm_bucket {
	__u64 lock;
	struct hm_node __arena *head;
};

struct hm_map {
	struct hm_bucket __arena *buckets;
	__u64 mask;		/* buckets - 1 */
	__u64 count;
	__u64 alloc_lock;	/* upstream arena builds */
};

/*
 * Test-and-test-and-set spin lock on a word (heap or map value): 0 taken,
 * -1 when the loop budget ran out first.
 */
#define hm_spin_lock(l)							\
	({								\
		int __hm_r = 0;						\
		while (*(volatile __typeof__(*(l)) *)(l) ||			\
		       __sync_lock_test_and_set((l), 1)) {		\
			if (!ds_can_loop) {				\
				__hm_r = -1;				\
				break;					\
			}						\
		}							\
		__hm_r;							\
	})

/* Release: a plain store after a compiler barrier (x86 keeps the order). */
#define hm_spin_unlock(l)						\
	do {								\
		asm volatile("" : : : "memory");			\
		*(volatile __typeof__(*(l)) *)(l) = 0;				\
	} while (0)

/*
 * Bucket locks: KFlex heap locks on a KFlex heap (a deadlock or an endless
 * wait cancels the run; -1 only where cancellation is unavailable), the
 * spin lock above on the upstream arena.
 */
#ifdef KFLEX_UPSTREAM_ARENA
#define hm_lock(l) hm_spin_lock(l)
#define hm_unlock(l) hm_spin_unlock(l)
#else
#define hm_lock(l) (kflex_lock(DS_HEAP, (l)) ? -1 : 0)
#define hm_unlock(l) kflex_unlock(DS_HEAP, (l))
#endif

static __always_inline void __arena *hm_alloc(struct hm_map *m, __u64 size)
{
	void __arena *p;

#ifdef KFLEX_UPSTREAM_ARENA
	if (hm_spin_lock(&m->alloc_lock))
		return NULL;
	p = ds_alloc(size);
	hm_spin_unlock(&m->alloc_lock);
#else
	p = ds_alloc(size);
#endif
	return p;
}

static __always_inline void hm_free(struct hm_map *m, void __arena *p)
{
#ifdef KFLEX_UPSTREAM_ARENA
	if (hm_spin_lock(&m->alloc_lock))
		return;	/* leaked rather than corrupting the free lists */
	ds_free(p);
	hm_spin_unlock(&m->alloc_lock);
#else
	ds_free(p);
#endif
}

/*
 * hm_init() in parts, for tables too large to clear within one run's
 * budget: the first call allocates the buckets into *pending, each call
 * clears buckets [from, from + count), and the call that clears the last
 * one publishes the map. 0, or -1 if the heap is exhausted.
 */
static __always_inline int hm_init_part(struct hm_map *m, struct hm_bucket __arena **pending,
					__u32 order, __u64 from, __u64 count)
{
	struct hm_bucket __arena *b;
	__u64 i, n;

	if (m->buckets)
		return 0;
	if (order > 24)
		order = 24;
	n = 1ULL << order;
	if (!*pending) {
		*pending = ds_alloc(n * sizeof(*b));
		if (!*pending)
			return -1;
	}
	b = *pending;
	if (from >= n)
		return 0;
	if (count > n - from)
		count = n - from;
	bpf_for(i, from, from + count) {
		DS_SET(b[i].lock, 0);
		DS_SET(b[i].head, NULL);
	}
	if (from + count == n) {
		m->mask = n - 1;
		m->count = 0;
		m->buckets = b;
		*pending = NULL;
	}
	return 0;
}

/*
 * Allocate 2^`order` empty buckets: 0, or -1 if the heap is exhausted.
 * Does nothing if the map exists.
 */
static __always_inline int hm_init(struct hm_map *m, __u32 order)
{
	struct hm_bucket __arena *pending = NULL;

	return hm_init_part(m, &pending, order, 0, 1ULL << (order > 24 ? 24 : order));
}

static __always_inline struct hm_bucket __arena *hm_bucket_of(struct hm_map *m, __u64 h)
{
	return m->buckets + (h & m->mask);
}

/* The node holding `k`, or NULL (lock free, see above). */
static __always_inline struct hm_node __arena *hm_find(struct hm_map *m, const struct ds_key *k)
{
	__u64 h = ds_hash(k);
	struct hm_node __arena *n = hm_bucket_of(m, h)->head;

	while (n) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			return NULL;
		}
		if (n->hash == h && DS_KEY_EQ(&n->key, k))
			return n;
		n = n->next;
	}
	return NULL;
}

/*
 * Insert `k` with value `v`, or replace the value if `k` is there.
 * Returns 1 inserted, 2 replaced, 0 heap exhausted, -1 lock not taken or
 * loop budget spent.
 */
static __always_inline int hm_upsert(struct hm_map *m, const struct ds_key *k,
				     const struct ds_val *v)
{
	__u64 h = ds_hash(k);
	struct hm_bucket __arena *b = hm_bucket_of(m, h);
	struct hm_node __arena *n;
	int ret = 0;

	if (hm_lock(&b->lock)) {
		ds_stuck = 1;
		return -1;
	}
	n = b->head;
	while (n) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			ret = -1;
			goto out;
		}
		if (n->hash == h && DS_KEY_EQ(&n->key, k)) {
			DS_VAL_COPY(&n->val, v);
			ret = 2;
			goto out;
		}
		n = n->next;
	}
	n = hm_alloc(m, sizeof(*n));
	if (!n)
		goto out;
	n->hash = h;
	DS_KEY_COPY(&n->key, k);
	DS_VAL_COPY(&n->val, v);
	n->next = b->head;
	b->head = n;
	__sync_fetch_and_add(&m->count, 1);
	ret = 1;
out:
	hm_unlock(&b->lock);
	return ret;
}

/* Remove `k`: 1 removed, 0 absent, -1 lock not taken or budget spent. */
static __always_inline int hm_erase(struct hm_map *m, const struct ds_key *k)
{
	__u64 h = ds_hash(k);
	struct hm_bucket __arena *b = hm_bucket_of(m, h);
	struct hm_node __arena *n, *prev = NULL;
	int ret = 0;

	if (hm_lock(&b->lock)) {
		ds_stuck = 1;
		return -1;
	}
	n = b->head;
	while (n) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			ret = -1;
			goto out;
		}
		if (n->hash == h && DS_KEY_EQ(&n->key, k)) {
			if (prev)
				prev->next = n->next;
			else
				b->head = n->next;
			hm_free(m, n);
			__sync_fetch_and_sub(&m->count, 1);
			ret = 1;
			goto out;
		}
		prev = n;
		n = n->next;
	}
out:
	hm_unlock(&b->lock);
	return ret;
}

/*
 * Free every node and the buckets (single CPU: no locks taken). Returns
 * the nodes freed; sets ds_stuck and keeps the buckets if the loop budget
 * ran out.
 */
static __always_inline __u64 hm_destroy(struct hm_map *m)
{
	struct hm_bucket __arena *b = m->buckets;
	struct hm_node __arena *n, *next;
	__u64 i, nb, freed = 0;

	if (!b)
		return 0;
	nb = m->mask + 1;
	bpf_for(i, 0, nb) {
		n = b[i].head;
		while (n) {
			if (!ds_can_loop) {
				ds_stuck = 1;
				break;
			}
			next = n->next;
			ds_free(n);
			freed++;
			n = next;
		}
		b[i].head = n;
		if (n)
			break;
	}
	m->count -= freed;
	if (ds_stuck)
		return freed;
	ds_free(b);
	m->buckets = NULL;
	m->mask = 0;
	return freed;
}

#endif /* __KFLEX_DS_HASHMAP_H */
