/* SPDX-License-Identifier: GPL-2.0 */
/*
 * list.h - doubly linked list of key/value nodes in the heap.
 *
 * The list is used as a queue: new nodes go to the front, the oldest
 * leaves at the back; a lookup walks from the front. The list's ends live
 * wherever the program keeps its struct dl_list (usually .bss).
 */
#ifndef __KFLEX_DS_LIST_H
#define __KFLEX_DS_LIST_H

#include "ds.h"

struct dl_node {
	struct dl_node __arena *next;
	struct dl_node __arena *prev;
	struct ds_key key;
	struct ds_val val;
};

struct dl_list {
	struct dl_node __arena *head;
	struct dl_node __arena *tail;
	__u64 len;
};

/* Insert a node with `k`, `v` at the front: 0, or -1 if the heap is full. */
static __always_inline int dl_push_front(struct dl_list *l, const struct ds_key *k,
					 const struct ds_val *v)
{
	struct dl_node __arena *n = ds_alloc(sizeof(*n));
	struct dl_node __arena *h;

	if (!n)
		return -1;
	DS_KEY_COPY(&n->key, k);
	DS_VAL_COPY(&n->val, v);
	h = l->head;
	DS_SET(n->prev, NULL);
	n->next = h;
	if (h)
		h->prev = n;
	else
		l->tail = n;
	l->head = n;
	l->len++;
	return 0;
}

/*
 * The first node from the front holding `k`, looking at no more than
 * `max` nodes; NULL if none (sets ds_stuck if the loop budget ran out).
 */
static __always_inline struct dl_node __arena *dl_find(struct dl_list *l, const struct ds_key *k,
						       __u64 max)
{
	struct dl_node __arena *n = l->head;

	/*
	 * Count down from `max` rather than up from 0: a counter that the
	 * verifier knows exactly, compared with an unknown bound, would make
	 * it walk every iteration separately.
	 */
	while (n && max) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			return NULL;
		}
		if (DS_KEY_EQ(&n->key, k))
			return n;
		n = n->next;
		max--;
	}
	return NULL;
}

/* Unlink `n` (a node of `l`); the caller frees it. */
static __always_inline void dl_unlink(struct dl_list *l, struct dl_node __arena *n)
{
	struct dl_node __arena *p = n->prev;
	struct dl_node __arena *x = n->next;

	if (p)
		p->next = x;
	else
		l->head = x;
	if (x)
		x->prev = p;
	else
		l->tail = p;
	l->len--;
}

/* Remove the back node: DS_KEY_CSUM of its key, or 0 if the list is empty. */
static __always_inline __u64 dl_pop_back(struct dl_list *l)
{
	struct dl_node __arena *n = l->tail;
	__u64 c;

	if (!n)
		return 0;
	c = DS_KEY_CSUM(&n->key);
	dl_unlink(l, n);
	ds_free(n);
	return c;
}

#endif /* __KFLEX_DS_LIST_H */
