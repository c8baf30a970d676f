/* SPDX-License-Identifier: GPL-2.0 */
/*
 * skiplist.h - skiplist (Pugh, 1990) of key/value nodes in the heap.
 *
 * Each node has 1..SKL_MAX_LEVEL forward pointers; level i links, in key
 * order, the nodes of height > i. A node's height comes from its key's
 * hash (P = 1/4 per extra level), so the same keys always build the same
 * list. The head is a node of full height allocated by skl_init.
 */
#ifndef __KFLEX_DS_SKIPLIST_H
#define __KFLEX_DS_SKIPLIST_H

#include "ds.h"

#define SKL_MAX_LEVEL 32
#define SKL_SEED 0x5bd1e9955bd1e995ULL

struct skl_node {
	struct ds_key key;
	struct ds_val val;
	__u64 level;
	struct skl_node __arena *next[];
};

struct skl_list {
	struct skl_node __arena *head;
	__u64 level;	/* levels in use, 1..SKL_MAX_LEVEL */
	__u64 count;
};

/*
 * Height of a new node for key hash h: 1 + the trailing zero bit pairs of
 * a second hash (capped at SKL_MAX_LEVEL). Computed without a loop (a
 * popcount of the bits below the lowest set bit) so that the verifier
 * sees one unknown value rather than one path per height.
 */
static __always_inline __u64 sl_height(__u64 h)
{
	__u64 x = ds_mix(h ^ SKL_SEED) | (1ULL << 62), t;

	x = (x & -x) - 1;
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	t = 1 + (((x * 0x0101010101010101ULL) >> 56) >> 1);
	return t > SKL_MAX_LEVEL ? SKL_MAX_LEVEL : t;
}

/* Allocate the head: 0, or -1 if the heap is exhausted. */
static __always_inline int sl_init(struct skl_list *l)
{
	struct skl_node __arena *h;
	int i;

	if (l->head)
		return 0;
	h = ds_alloc(sizeof(*h) + SKL_MAX_LEVEL * sizeof(h->next[0]));
	if (!h)
		return -1;
	h->level = SKL_MAX_LEVEL;
	for (i = 0; i < SKL_MAX_LEVEL; i++)
		DS_SET(h->next[i], NULL);
	l->level = 1;
	l->count = 0;
	l->head = h;
	return 0;
}

/*
 * Walk down to `k`: fills upd[i] with the last node of level i before `k`
 * (when upd is not NULL) and returns the level-0 successor of the last one
 * (the node holding `k`, if any). Sets ds_stuck if the budget ran out.
 */
static __always_inline struct skl_node __arena *
sl_descend(struct skl_list *l, const struct ds_key *k, struct skl_node __arena **upd)
{
	struct skl_node __arena *x = l->head, *nx;
	__u64 lvl = l->level;

	while (lvl > 0) {
		lvl--;
		while (1) {
			if (!ds_can_loop) {
				ds_stuck = 1;
				return NULL;
			}
			nx = x->next[lvl & (SKL_MAX_LEVEL - 1)];
			if (!nx || DS_KEY_CMP(&nx->key, k) >= 0)
				break;
			x = nx;
		}
		if (upd)
			upd[lvl & (SKL_MAX_LEVEL - 1)] = x;
	}
	return x->next[0];
}

/* The node holding `k`, or NULL. */
static __always_inline struct skl_node __arena *sl_find(struct skl_list *l,
							 const struct ds_key *k)
{
	struct skl_node __arena *n = sl_descend(l, k, NULL);

	if (n && DS_KEY_EQ(&n->key, k))
		return n;
	return NULL;
}

/*
 * Insert `k` with value `v`, or replace the value if `k` is there.
 * Returns 1 inserted, 2 replaced, 0 heap exhausted or budget spent.
 *
 * Loops over levels count from values the verifier does not know (the
 * list's level, the node's height), never up from a constant: see dl_find.
 */
static __always_inline int sl_upsert(struct skl_list *l, const struct ds_key *k,
				     const struct ds_val *v)
{
	struct skl_node __arena *upd[SKL_MAX_LEVEL];
	struct skl_node __arena *n, *p;
	__u64 i, h, top;

	n = sl_descend(l, k, upd);
	if (ds_stuck)
		return 0;
	if (n && DS_KEY_EQ(&n->key, k)) {
		DS_VAL_COPY(&n->val, v);
		return 2;
	}
	h = sl_height(ds_hash(k));
	n = ds_alloc(sizeof(*n) + h * sizeof(n->next[0]));
	if (!n)
		return 0;
	DS_KEY_COPY(&n->key, k);
	DS_VAL_COPY(&n->val, v);
	n->level = h;
	/* Levels the list does not use yet start at the head. */
	top = l->level;
	for (i = top; i < h; i++) {
		if (!ds_loop_ok())
			return 0;
		upd[i & (SKL_MAX_LEVEL - 1)] = l->head;
	}
	i = h;
	while (i > 0) {
		if (!ds_loop_ok())
			return 0;
		i--;
		p = upd[i & (SKL_MAX_LEVEL - 1)];
		n->next[i & (SKL_MAX_LEVEL - 1)] = p->next[i & (SKL_MAX_LEVEL - 1)];
		p->next[i & (SKL_MAX_LEVEL - 1)] = n;
	}
	if (h > top)
		l->level = h;
	l->count++;
	return 1;
}

/* Remove `k`: 1 removed, 0 absent (or budget spent). */
static __always_inline int sl_erase(struct skl_list *l, const struct ds_key *k)
{
	struct skl_node __arena *upd[SKL_MAX_LEVEL];
	struct skl_node __arena *n, *p, *head = l->head;
	__u64 i, lvl;

	n = sl_descend(l, k, upd);
	if (ds_stuck || !n || !DS_KEY_EQ(&n->key, k))
		return 0;
	/* upd[] is filled below the list's level, which bounds every height. */
	lvl = l->level;
	i = n->level;
	if (i > lvl)
		i = lvl;
	while (i > 0) {
		if (!ds_loop_ok())
			return 0;
		i--;
		p = upd[i & (SKL_MAX_LEVEL - 1)];
		if (p->next[i & (SKL_MAX_LEVEL - 1)] == n)
			p->next[i & (SKL_MAX_LEVEL - 1)] = n->next[i & (SKL_MAX_LEVEL - 1)];
	}
	ds_free(n);
	l->count--;
	while (lvl > 1 && !head->next[(lvl - 1) & (SKL_MAX_LEVEL - 1)]) {
		if (!ds_loop_ok())
			break;
		lvl--;
	}
	l->level = lvl;
	return 1;
}

/*
 * Free every node and the head. Returns the nodes freed; if the loop
 * budget runs out, sets ds_stuck and leaves the rest as a one-level list.
 */
static __always_inline __u64 sl_destroy(struct skl_list *l)
{
	struct skl_node __arena *head = l->head, *n, *next;
	__u64 freed = 0;
	int i;

	if (!head)
		return 0;
	for (i = 1; i < SKL_MAX_LEVEL; i++)
		DS_SET(head->next[i], NULL);
	l->level = 1;
	n = head->next[0];
	while (n) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			break;
		}
		next = n->next[0];
		ds_free(n);
		freed++;
		n = next;
	}
	head->next[0] = n;
	l->count -= freed;
	if (n)
		return freed;
	ds_free(head);
	l->head = NULL;
	return freed;
}

#endif /* __KFLEX_DS_SKIPLIST_H */
