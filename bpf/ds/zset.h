/* SPDX-License-Identifier: GPL-2.0 */
/*
 * zset.h - sorted sets in the heap: Redis's ZADD family (bpf/redis.bpf.c,
 * kflex-load --kredis).
 *
 * A set is a skiplist.h skiplist whose nodes hold a variable-length member
 * and an integer score, ordered by (score, member bytes) as Redis orders
 * them (memcmp, then the shorter first), plus, in a kv.h table shared by
 * every set, member -> score: the key there is the set's address (8 bytes)
 * followed by the member, the item the 8-byte score. Heights are geometric
 * (P = 1/4) from the member's hash, as in skiplist.h.
 *
 * The caller builds the member-table key in a scratch buffer (kv.h's
 * rules): the set's address at offset 0, the member from ZS_MEMBER, its
 * last word padded with zeros (zs_stage_member). The skiplist functions
 * compare nodes with the member there. Every operation on one set's
 * skiplist runs under the set's heap lock; the member table's bucket locks
 * nest inside it. A member whose score changes keeps its node (zs_move) and
 * its member-table entry, whose one-word item the caller rewrites in place
 * under the set's lock (the one exception to kv.h's immutable entries: a
 * reader copies the old or the new word, never a mix). A set is never freed: one that lost its last member
 * keeps its head and reads as absent, and ZADD fills it again (so a
 * pointer read from the key table stays valid without a reference).
 */
#ifndef __KFLEX_DS_ZSET_H
#define __KFLEX_DS_ZSET_H

#include "kv.h"
#include "skiplist.h"

#define ZS_MEMBER 8		/* offset of the member in the key buffer */
#define ZS_MEMBER_MAX (KV_KEY_MAX - ZS_MEMBER)
#define ZS_SCORE_MAX (1LL << 53)	/* |score| a double holds exactly */

struct zs_node {
	__s64 score;
	__u32 mlen;
	__u32 level;
	struct zs_node __arena *next[];	/* `level` of them, then the member */
};

struct zs_set {
	__u64 lock;		/* heap lock */
	__u64 count;		/* members */
	__u64 level;		/* levels in use, 1..SKL_MAX_LEVEL */
	struct zs_node __arena *head;	/* full height, no member */
};

/* The member words of node `n`. */
#define ZS_WORDS(n) ((__u64 __arena *)&(n)->next[(n)->level & (SKL_MAX_LEVEL * 2 - 1)])

/* A new empty set (and its head), or NULL if the heap is exhausted. */
static __always_inline struct zs_set __arena *zs_new(void)
{
	struct zs_set __arena *s = ds_alloc(sizeof(*s));
	struct zs_node __arena *h;
	int i;

	if (!s)
		return NULL;
	h = ds_alloc(sizeof(*h) + SKL_MAX_LEVEL * sizeof(h->next[0]));
	if (!h) {
		ds_free(s);
		return NULL;
	}
	/* DS_SET: adjacent zero stores must not become a memset (ds.h) */
	DS_SET(h->score, 0);
	DS_SET(h->mlen, 0);
	h->level = SKL_MAX_LEVEL;
	for (i = 0; i < SKL_MAX_LEVEL; i++)
		DS_SET(h->next[i], NULL);
	DS_SET(s->lock, 0);
	DS_SET(s->count, 0);
	s->level = 1;
	s->head = h;
	return s;
}

/* Frees a set that was never published (and holds no member). */
static __always_inline void zs_drop(struct zs_set __arena *s)
{
	ds_free(s->head);
	ds_free(s);
}

/*
 * Where node `n` sorts against (score, the `mlen`-byte member at ZS_MEMBER
 * of `buf`): < 0 before, 0 the same, > 0 after. Member words compare as
 * big-endian numbers, which is memcmp order; the zero padding then makes
 * a prefix sort first, and equal words leave it to the lengths.
 */
static __always_inline int zs_cmp(struct zs_node __arena *n, __s64 score, const void *buf,
				  __u32 mlen)
{
	__u64 __arena *m;
	__u64 i, nw, a, b;

	if (n->score != score)
		return n->score < score ? -1 : 1;
	m = ZS_WORDS(n);
	nw = KV_WORDS(n->mlen < mlen ? n->mlen : mlen);
	bpf_for(i, 0, nw) {
		if (i >= ZS_MEMBER_MAX / 8)
			break;
		a = __builtin_bswap64(m[i]);
		b = __builtin_bswap64(KV_WORD(buf, ZS_MEMBER + i * 8));
		if (a != b)
			return a < b ? -1 : 1;
	}
	if (n->mlen != mlen)
		return n->mlen < mlen ? -1 : 1;
	return 0;
}

/*
 * Walks down to (score, member): upd[i] = the address of the last node of
 * level i before it. Returns the level-0 successor of upd[0] (the node
 * itself, if present), or NULL; *stuck set when the loop budget ran out.
 */
static __always_inline struct zs_node __arena *
zs_descend(struct zs_set __arena *s, __s64 score, const void *buf, __u32 mlen, __u64 *upd,
	   bool *stuck)
{
	struct zs_node __arena *x = s->head, *nx;
	__u64 lvl = s->level;

	while (lvl > 0) {
		lvl--;
		while (1) {
			if (!can_loop) {
				*stuck = true;
				return NULL;
			}
			nx = x->next[lvl & (SKL_MAX_LEVEL - 1)];
			if (!nx || zs_cmp(nx, score, buf, mlen) >= 0)
				break;
			x = nx;
		}
		upd[lvl & (SKL_MAX_LEVEL - 1)] = (__u64)x;
	}
	return x->next[0];
}

/*
 * Inserts (score, member), which is not in the set. Returns 1, 0 when the
 * heap is exhausted, -1 when the loop budget ran out (nothing changed).
 */
static __always_inline int zs_insert(struct zs_set __arena *s, __s64 score, const void *buf,
				     __u32 mlen, __u64 *upd)
{
	struct zs_node __arena *n, *p;
	__u64 i, h, top, mw = KV_WORDS(mlen);
	__u64 __arena *m;
	bool stuck = false;

	zs_descend(s, score, buf, mlen, upd, &stuck);
	if (stuck)
		return -1;
	h = sl_height(kv_hash(buf, ZS_MEMBER, mlen));
	n = ds_alloc(sizeof(*n) + (h + mw) * 8);
	if (!n)
		return 0;
	n->score = score;
	n->mlen = mlen;
	n->level = h;
	m = ZS_WORDS(n);
	bpf_for(i, 0, mw) {
		if (i >= ZS_MEMBER_MAX / 8)
			break;
		m[i] = KV_WORD(buf, ZS_MEMBER + i * 8);
	}
	/* levels the set does not use yet start at the head */
	top = s->level;
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (i >= h)
			break;
		if (i >= top)
			upd[i & (SKL_MAX_LEVEL - 1)] = (__u64)s->head;
		p = (struct zs_node __arena *)upd[i & (SKL_MAX_LEVEL - 1)];
		n->next[i & (SKL_MAX_LEVEL - 1)] = p->next[i & (SKL_MAX_LEVEL - 1)];
		p->next[i & (SKL_MAX_LEVEL - 1)] = n;
	}
	if (h > top)
		s->level = h;
	s->count++;
	return 1;
}

/*
 * Finds (score, member) and unlinks its node from every level: returns the
 * node, NULL when absent (or when the loop budget ran out: *stuck).
 */
static __always_inline struct zs_node __arena *
zs_unlink(struct zs_set __arena *s, __s64 score, const void *buf, __u32 mlen, __u64 *upd,
	  bool *stuck)
{
	struct zs_node __arena *n, *p;
	__u64 i, lvl = s->level;

	n = zs_descend(s, score, buf, mlen, upd, stuck);
	if (*stuck || !n || zs_cmp(n, score, buf, mlen))
		return NULL;
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (i >= n->level || i >= lvl)
			break;
		p = (struct zs_node __arena *)upd[i & (SKL_MAX_LEVEL - 1)];
		if (p->next[i & (SKL_MAX_LEVEL - 1)] == n)
			p->next[i & (SKL_MAX_LEVEL - 1)] = n->next[i & (SKL_MAX_LEVEL - 1)];
	}
	return n;
}

/*
 * Removes (score, member). Returns 1 removed, 0 absent, -1 when the loop
 * budget ran out (nothing changed).
 */
static __always_inline int zs_erase(struct zs_set __arena *s, __s64 score, const void *buf,
				    __u32 mlen, __u64 *upd)
{
	struct zs_node __arena *n, *head = s->head;
	bool stuck = false;
	__u64 i, lvl = s->level;

	n = zs_unlink(s, score, buf, mlen, upd, &stuck);
	if (stuck)
		return -1;
	if (!n)
		return 0;
	ds_free(n);
	s->count--;
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (lvl <= 1 || head->next[(lvl - 1) & (SKL_MAX_LEVEL - 1)])
			break;
		lvl--;
	}
	s->level = lvl;
	return 1;
}

/*
 * Moves the node of (old, member) to `score` without reallocating it:
 * unlinks it, changes its score and links it where the new score sorts.
 * Returns 1, 0 absent, -1 when the loop budget ran out.
 */
static __always_inline int zs_move(struct zs_set __arena *s, __s64 old, __s64 score,
				   const void *buf, __u32 mlen, __u64 *upd)
{
	struct zs_node __arena *n, *p;
	bool stuck = false;
	__u64 i, lvl = s->level;

	n = zs_unlink(s, old, buf, mlen, upd, &stuck);
	if (stuck)
		return -1;
	if (!n)
		return 0;
	n->score = score;
	zs_descend(s, score, buf, mlen, upd, &stuck);
	if (stuck)
		return -1;
	/* its height is below the set's levels: it was linked at all of them */
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (i >= n->level || i >= lvl)
			break;
		p = (struct zs_node __arena *)upd[i & (SKL_MAX_LEVEL - 1)];
		n->next[i & (SKL_MAX_LEVEL - 1)] = p->next[i & (SKL_MAX_LEVEL - 1)];
		p->next[i & (SKL_MAX_LEVEL - 1)] = n;
	}
	return 1;
}

/*
 * Copies the `mlen`-byte member at `off` of `src` (a scratch buffer of
 * RD_BUF-style size `src_mask` + 1 + 8 bytes) to ZS_MEMBER of `buf`, its
 * last word padded with zeros, after the set's address.
 */
static __always_inline void zs_stage_member(void *buf, __u64 set, const __u8 *src,
					    __u32 src_mask, __u32 off, __u32 mlen)
{
	__u64 i, mw = KV_WORDS(mlen), w;

	KV_WORD(buf, 0) = set;
	bpf_for(i, 0, mw) {
		if (i >= ZS_MEMBER_MAX / 8)
			break;
		w = *(__u64 *)(src + ((off + i * 8) & src_mask));
		if (i == mw - 1)
			w = kv_tail(w, mlen & 7);
		KV_WORD(buf, ZS_MEMBER + i * 8) = w;
	}
}

#endif /* __KFLEX_DS_ZSET_H */
