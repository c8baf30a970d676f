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
	/* `level` forward pointers, `level` spans (how many level-0 steps
	 * each pointer skips, as in Redis's zskiplist), then the member */
	struct zs_node __arena *next[];
};

struct zs_set {
	__u64 lock;		/* heap lock */
	__u64 count;		/* members */
	__u64 level;		/* levels in use, 1..SKL_MAX_LEVEL */
	struct zs_node __arena *head;	/* full height, no member */
};

/* Level `i`'s span of node `n`, and its member words. */
#define ZS_SPAN(n, i)								\
	(((__u64 __arena *)&(n)->next[(n)->level & (SKL_MAX_LEVEL * 2 - 1)])	\
		[(i) & (SKL_MAX_LEVEL - 1)])
#define ZS_WORDS(n)								\
	((__u64 __arena *)&(n)->next[((n)->level & (SKL_MAX_LEVEL * 2 - 1)) * 2])
#define ZS_NEXT(n, i) ((n)->next[(i) & (SKL_MAX_LEVEL - 1)])
/* Per-level arrays of a walk (upd[], rank[]: scratch memory). */
#define ZS_AT(a, i) ((a)[(i) & (SKL_MAX_LEVEL - 1)])

/* A new empty set (and its head), or NULL if the heap is exhausted. */
static __always_inline struct zs_set __arena *zs_new(void)
{
	struct zs_set __arena *s = ds_alloc(sizeof(*s));
	struct zs_node __arena *h;
	int i;

	if (!s)
		return NULL;
	h = ds_alloc(sizeof(*h) + 2 * SKL_MAX_LEVEL * sizeof(h->next[0]));
	if (!h) {
		ds_free(s);
		return NULL;
	}
	/* DS_SET: adjacent zero stores must not become a memset (ds.h) */
	DS_SET(h->score, 0);
	DS_SET(h->mlen, 0);
	h->level = SKL_MAX_LEVEL;
	for (i = 0; i < SKL_MAX_LEVEL; i++) {
		DS_SET(h->next[i], NULL);
		DS_SET(ZS_SPAN(h, i), 0);
	}
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
 * level i before it, rank[i] = that node's position (the head's is 0).
 * Returns the level-0 successor of upd[0] (the node itself, if present),
 * or NULL; *stuck set when the loop budget ran out.
 */
static __always_inline struct zs_node __arena *
zs_descend(struct zs_set __arena *s, __s64 score, const void *buf, __u32 mlen, __u64 *upd,
	   __u64 *rank, bool *stuck)
{
	struct zs_node __arena *x = s->head, *nx;
	__u64 lvl = s->level, r = 0;

	while (lvl > 0) {
		lvl--;
		while (1) {
			if (!can_loop) {
				*stuck = true;
				return NULL;
			}
			nx = ZS_NEXT(x, lvl);
			if (!nx || zs_cmp(nx, score, buf, mlen) >= 0)
				break;
			r += ZS_SPAN(x, lvl);
			x = nx;
		}
		ZS_AT(upd, lvl) = (__u64)x;
		ZS_AT(rank, lvl) = r;
	}
	return ZS_NEXT(x, 0);
}

/*
 * Links node `n` (height n->level) where zs_descend() to its (score,
 * member) left upd[] and rank[], keeping every span right (Redis's
 * zslInsert); `len` is the number of the set's other nodes. The caller
 * counts it.
 */
static __always_inline void zs_link(struct zs_set __arena *s, struct zs_node __arena *n,
				    __u64 *upd, __u64 *rank, __u64 len)
{
	struct zs_node __arena *p;
	__u64 i, h = n->level, top = s->level, r0 = ZS_AT(rank, 0);

	/* levels the set does not use yet start at the head */
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (i >= h)
			break;
		if (i < top)
			continue;
		ZS_AT(upd, i) = (__u64)s->head;
		ZS_AT(rank, i) = 0;
		ZS_SPAN(s->head, i) = len;
	}
	if (h > top)
		s->level = top = h;
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (i >= top)
			break;
		p = (struct zs_node __arena *)ZS_AT(upd, i);
		if (i >= h) {
			/* a pointer above the new node now skips it too */
			ZS_SPAN(p, i) += 1;
			continue;
		}
		ZS_NEXT(n, i) = ZS_NEXT(p, i);
		ZS_NEXT(p, i) = n;
		ZS_SPAN(n, i) = ZS_SPAN(p, i) - (r0 - ZS_AT(rank, i));
		ZS_SPAN(p, i) = r0 - ZS_AT(rank, i) + 1;
	}
}

/*
 * Inserts (score, member), which is not in the set. Returns 1, 0 when the
 * heap is exhausted, -1 when the loop budget ran out (nothing changed).
 */
static __always_inline int zs_insert(struct zs_set __arena *s, __s64 score, const void *buf,
				     __u32 mlen, __u64 *upd, __u64 *rank)
{
	struct zs_node __arena *n;
	__u64 i, h, mw = KV_WORDS(mlen);
	__u64 __arena *m;
	bool stuck = false;

	zs_descend(s, score, buf, mlen, upd, rank, &stuck);
	if (stuck)
		return -1;
	h = sl_height(kv_hash(buf, ZS_MEMBER, mlen));
	n = ds_alloc(sizeof(*n) + (2 * h + mw) * 8);
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
	zs_link(s, n, upd, rank, s->count);
	s->count++;
	return 1;
}

/*
 * Finds (score, member) and unlinks its node from every level, keeping the
 * spans right and dropping levels left empty (Redis's zslDeleteNode):
 * returns the node, NULL when absent (or when the loop budget ran out:
 * *stuck). The caller counts it.
 */
static __always_inline struct zs_node __arena *
zs_unlink(struct zs_set __arena *s, __s64 score, const void *buf, __u32 mlen, __u64 *upd,
	  __u64 *rank, bool *stuck)
{
	struct zs_node __arena *n, *p, *head = s->head;
	__u64 i, lvl = s->level;

	n = zs_descend(s, score, buf, mlen, upd, rank, stuck);
	if (*stuck || !n || zs_cmp(n, score, buf, mlen))
		return NULL;
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (i >= lvl)
			break;
		p = (struct zs_node __arena *)ZS_AT(upd, i);
		if (ZS_NEXT(p, i) == n) {
			ZS_SPAN(p, i) += ZS_SPAN(n, i) - 1;
			ZS_NEXT(p, i) = ZS_NEXT(n, i);
		} else {
			ZS_SPAN(p, i) -= 1;
		}
	}
	bpf_for(i, 0, SKL_MAX_LEVEL) {
		if (lvl <= 1 || ZS_NEXT(head, lvl - 1))
			break;
		lvl--;
	}
	s->level = lvl;
	return n;
}

/*
 * Removes (score, member). Returns 1 removed, 0 absent, -1 when the loop
 * budget ran out (nothing changed).
 */
static __always_inline int zs_erase(struct zs_set __arena *s, __s64 score, const void *buf,
				    __u32 mlen, __u64 *upd, __u64 *rank)
{
	struct zs_node __arena *n;
	bool stuck = false;

	n = zs_unlink(s, score, buf, mlen, upd, rank, &stuck);
	if (stuck)
		return -1;
	if (!n)
		return 0;
	s->count--;
	ds_free(n);
	return 1;
}

/*
 * Moves the node of (old, member) to `score` without reallocating it:
 * unlinks it, changes its score and links it where the new score sorts;
 * the count stays as it is throughout (readers without the set's lock read
 * it). Returns 1, 0 absent, -1 when the loop budget ran out.
 */
static __always_inline int zs_move(struct zs_set __arena *s, __s64 old, __s64 score,
				   const void *buf, __u32 mlen, __u64 *upd, __u64 *rank)
{
	struct zs_node __arena *n;
	bool stuck = false;

	n = zs_unlink(s, old, buf, mlen, upd, rank, &stuck);
	if (stuck)
		return -1;
	if (!n)
		return 0;
	n->score = score;
	zs_descend(s, score, buf, mlen, upd, rank, &stuck);
	if (stuck)
		return -1;
	zs_link(s, n, upd, rank, s->count - 1);
	return 1;
}

/*
 * The node at 0-based position `at` (Redis's zslGetElementByRank), or
 * NULL past the end or when the loop budget ran out: a walk down the
 * levels, O(log n).
 */
static __always_inline struct zs_node __arena *zs_at(struct zs_set __arena *s, __u64 at)
{
	struct zs_node __arena *x = s->head, *nx;
	__u64 lvl = s->level, done = 0, want = at + 1;

	while (lvl > 0) {
		lvl--;
		while (1) {
			if (!can_loop)
				return NULL;
			nx = ZS_NEXT(x, lvl);
			if (!nx || done + ZS_SPAN(x, lvl) > want)
				break;
			done += ZS_SPAN(x, lvl);
			x = nx;
		}
		if (done == want)
			return x;
	}
	return NULL;
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
