/* SPDX-License-Identifier: GPL-2.0 */
/*
 * rbtree.h - red-black tree of key/value nodes in the heap.
 *
 * Nodes carry parent pointers and an explicit colour; absent children are
 * NULL (black). Insertion and deletion follow the textbook algorithm
 * (Guibas and Sedgewick's red-black invariants): the root is black, a red
 * node has black children, every path from a node down to a NULL child
 * crosses the same number of black nodes. Every loop is bounded by the
 * program's loop budget (ds_can_loop); when it runs out ds_stuck is set.
 */
#ifndef __KFLEX_DS_RBTREE_H
#define __KFLEX_DS_RBTREE_H

#include "ds.h"

#define RB_RED 0
#define RB_BLACK 1

struct rbt_node {
	struct rbt_node __arena *left;
	struct rbt_node __arena *right;
	struct rbt_node __arena *parent;
	__u64 color;
	struct ds_key key;
	struct ds_val val;
};

struct rbt_tree {
	struct rbt_node __arena *root;
	__u64 count;
};

#define rb_is_red(n) ((n) && (n)->color == RB_RED)

/* Replace `old`, a child of `p` (or the root), with `new` in its parent. */
static __always_inline void rb_replace_child(struct rbt_tree *t, struct rbt_node __arena *p,
					     struct rbt_node __arena *old,
					     struct rbt_node __arena *new)
{
	/*
	 * Volatile stores: clang must not merge the root's store (map value)
	 * and the child's (heap) into one instruction, which the verifier
	 * refuses.
	 */
	if (!p)
		DS_SET(t->root, new);
	else if (p->left == old)
		DS_SET(p->left, new);
	else
		DS_SET(p->right, new);
}

/* x's right child y takes x's place; x becomes y's left child. */
static __always_inline void rb_rotate_left(struct rbt_tree *t, struct rbt_node __arena *x)
{
	struct rbt_node __arena *y = x->right;
	struct rbt_node __arena *b = y->left;
	struct rbt_node __arena *p = x->parent;

	x->right = b;
	if (b)
		b->parent = x;
	y->parent = p;
	rb_replace_child(t, p, x, y);
	y->left = x;
	x->parent = y;
}

/* x's left child y takes x's place; x becomes y's right child. */
static __always_inline void rb_rotate_right(struct rbt_tree *t, struct rbt_node __arena *x)
{
	struct rbt_node __arena *y = x->left;
	struct rbt_node __arena *b = y->right;
	struct rbt_node __arena *p = x->parent;

	x->left = b;
	if (b)
		b->parent = x;
	y->parent = p;
	rb_replace_child(t, p, x, y);
	y->right = x;
	x->parent = y;
}

/* The node holding `k`, or NULL. */
static __always_inline struct rbt_node __arena *rb_find(struct rbt_tree *t, const struct ds_key *k)
{
	struct rbt_node __arena *n = t->root;
	int c;

	while (n) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			return NULL;
		}
		c = DS_KEY_CMP(k, &n->key);
		if (c == 0)
			return n;
		n = c < 0 ? n->left : n->right;
	}
	return NULL;
}

/* Restore the invariants after inserting the red node z. */
static __always_inline void rb_insert_fixup(struct rbt_tree *t, struct rbt_node __arena *z)
{
	struct rbt_node __arena *p, *g, *u;

	while ((p = z->parent) && p->color == RB_RED) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			return;
		}
		/* p is red, so it is not the root: g exists. */
		g = p->parent;
		if (p == g->left) {
			u = g->right;
			if (rb_is_red(u)) {
				p->color = RB_BLACK;
				u->color = RB_BLACK;
				g->color = RB_RED;
				z = g;
				continue;
			}
			if (z == p->right) {
				rb_rotate_left(t, p);
				z = p;
				p = z->parent;
			}
			p->color = RB_BLACK;
			g->color = RB_RED;
			rb_rotate_right(t, g);
		} else {
			u = g->left;
			if (rb_is_red(u)) {
				p->color = RB_BLACK;
				u->color = RB_BLACK;
				g->color = RB_RED;
				z = g;
				continue;
			}
			if (z == p->left) {
				rb_rotate_right(t, p);
				z = p;
				p = z->parent;
			}
			p->color = RB_BLACK;
			g->color = RB_RED;
			rb_rotate_left(t, g);
		}
		break;
	}
	t->root->color = RB_BLACK;
}

/*
 * Insert `k` with value `v`, or replace the value if `k` is there.
 * Returns 1 inserted, 2 replaced, 0 heap exhausted (or loop budget spent).
 */
static __always_inline int rb_upsert(struct rbt_tree *t, const struct ds_key *k,
				     const struct ds_val *v)
{
	struct rbt_node __arena *n = t->root, *p = NULL, *z;
	int c = 0;

	while (n) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			return 0;
		}
		c = DS_KEY_CMP(k, &n->key);
		if (c == 0) {
			DS_VAL_COPY(&n->val, v);
			return 2;
		}
		p = n;
		n = c < 0 ? n->left : n->right;
	}
	z = ds_alloc(sizeof(*z));
	if (!z)
		return 0;
	DS_KEY_COPY(&z->key, k);
	DS_VAL_COPY(&z->val, v);
	DS_SET(z->left, NULL);
	DS_SET(z->right, NULL);
	z->parent = p;
	z->color = RB_RED;
	if (!p)
		t->root = z;
	else if (c < 0)
		p->left = z;
	else
		p->right = z;
	t->count++;
	rb_insert_fixup(t, z);
	return 1;
}

/*
 * Restore the invariants after removing a black node whose place the
 * (possibly NULL) node x took as a child of xp.
 */
static __always_inline void rb_erase_fixup(struct rbt_tree *t, struct rbt_node __arena *x,
					   struct rbt_node __arena *xp)
{
	struct rbt_node __arena *w;

	while (xp && !rb_is_red(x)) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			return;
		}
		/*
		 * x has a non-NULL sibling w (its side of xp is one black
		 * node short); if x is NULL, xp->left == x still tells
		 * the sides apart because w is not NULL.
		 */
		if (x == xp->left) {
			w = xp->right;
			if (rb_is_red(w)) {
				w->color = RB_BLACK;
				xp->color = RB_RED;
				rb_rotate_left(t, xp);
				w = xp->right;
			}
			if (!rb_is_red(w->left) && !rb_is_red(w->right)) {
				w->color = RB_RED;
				x = xp;
				xp = x->parent;
				continue;
			}
			if (!rb_is_red(w->right)) {
				w->left->color = RB_BLACK;
				w->color = RB_RED;
				rb_rotate_right(t, w);
				w = xp->right;
			}
			w->color = xp->color;
			xp->color = RB_BLACK;
			w->right->color = RB_BLACK;
			rb_rotate_left(t, xp);
		} else {
			w = xp->left;
			if (rb_is_red(w)) {
				w->color = RB_BLACK;
				xp->color = RB_RED;
				rb_rotate_right(t, xp);
				w = xp->left;
			}
			if (!rb_is_red(w->left) && !rb_is_red(w->right)) {
				w->color = RB_RED;
				x = xp;
				xp = x->parent;
				continue;
			}
			if (!rb_is_red(w->left)) {
				w->right->color = RB_BLACK;
				w->color = RB_RED;
				rb_rotate_left(t, w);
				w = xp->left;
			}
			w->color = xp->color;
			xp->color = RB_BLACK;
			w->left->color = RB_BLACK;
			rb_rotate_right(t, xp);
		}
		x = t->root;
		break;
	}
	if (x)
		x->color = RB_BLACK;
}

/* Remove `k`: 1 removed, 0 absent. */
static __always_inline int rb_erase(struct rbt_tree *t, const struct ds_key *k)
{
	struct rbt_node __arena *z = rb_find(t, k), *y, *x, *xp;

	if (!z)
		return 0;
	if (z->left && z->right) {
		/* Move the successor's entry here and remove the successor. */
		y = z->right;
		while (y->left) {
			if (!ds_can_loop) {
				ds_stuck = 1;
				return 0;
			}
			y = y->left;
		}
		DS_KEY_COPY(&z->key, &y->key);
		DS_VAL_COPY(&z->val, &y->val);
		z = y;
	}
	x = z->left ? z->left : z->right;
	xp = z->parent;
	if (x)
		x->parent = xp;
	rb_replace_child(t, xp, z, x);
	if (z->color == RB_BLACK)
		rb_erase_fixup(t, x, xp);
	ds_free(z);
	t->count--;
	return 1;
}

/*
 * Free every node (post-order walk over the parent pointers, no stack).
 * Returns the nodes freed; when the loop budget runs out it stops early
 * and sets ds_stuck, leaving a search tree that may be out of balance.
 */
static __always_inline __u64 rb_clear(struct rbt_tree *t)
{
	struct rbt_node __arena *n = t->root, *p;
	__u64 freed = 0;

	while (n) {
		if (!ds_can_loop) {
			ds_stuck = 1;
			break;
		}
		if (n->left) {
			n = n->left;
			continue;
		}
		if (n->right) {
			n = n->right;
			continue;
		}
		p = n->parent;
		rb_replace_child(t, p, n, NULL);
		ds_free(n);
		freed++;
		t->count--;
		n = p;
	}
	return freed;
}

#endif /* __KFLEX_DS_RBTREE_H */
