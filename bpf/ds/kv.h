/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kv.h - chained hash table of variable-length keys and items in the heap,
 * the table of the offloads (bpf/memcached.bpf.c).
 *
 * It is hashmap.h generalised: the same buckets (struct hm_bucket, a lock
 * word and a chain head), the same bucket locks (heap locks on a KFlex heap) and
 * the same allocation path; what changes is the entry, which holds a key of
 * up to KV_KEY_MAX bytes and an opaque item of up to KV_ITEM_MAX bytes in
 * one heap object, word-padded, after a small header. An item that arrives
 * in pieces (a Redis value of up to KV_BIG_MAX bytes, framed in chunks) is
 * allocated empty by kv_new_big() and written by its caller before it is
 * linked.
 *
 * Entries are immutable once linked. An overwrite allocates and fills the
 * new entry first, then under the bucket lock links it in place of the old
 * one and frees the old one; readers copy an item out under the bucket
 * lock. So a reader never sees a torn or mixed item, whatever another CPU
 * writes at the same time.
 *
 * Keys and items are copied word by word from and to a scratch buffer (a
 * per-CPU map value of at least KV_BUF bytes): callers pass offsets into
 * it, which are masked so the verifier can bound every access.
 *
 * Removal without a lookup: flush bumps the table's generation; entries of
 * an older generation read as absent and are freed when a write meets them.
 * Expired entries likewise. Nothing else ever removes an entry: no eviction.
 */
#ifndef __KFLEX_DS_KV_H
#define __KFLEX_DS_KV_H

#include "hashmap.h"

#define KV_KEY_MAX 256		/* bytes, a multiple of 8 */
#define KV_ITEM_MAX 2048	/* bytes, a multiple of 8 */
#define KV_BIG_MAX (1 << 20)	/* bytes of an item made by kv_new_big() */
/*
 * Scratch buffers: an offset (masked to KV_OFF_MASK) plus a key or an item
 * stays below KV_BUF; a buffer has KV_BUF + 8 bytes, for the word that
 * straddles the end.
 */
#define KV_OFF_MASK 2047
#define KV_BUF 4096

struct kv_entry {
	struct kv_entry __arena *next;
	__u64 hash;
	__u64 gen;		/* table generation when stored */
	__u64 expires;		/* CLOCK_TAI ns; 0: never */
	__u64 cas;		/* unique per store */
	__u32 meta;		/* the caller's (memcached: client flags) */
	__u32 ilen;
	__u16 klen;
	__u16 pad[3];
	__u64 data[];		/* key, padded to 8 bytes, then the item */
};

struct kv_table {
	struct hm_map m;	/* buckets and count (hashmap.h) */
	__u64 gen;		/* bumped by kv_flush() */
	__u64 cas_seq;
};

/* Words of `n` bytes. */
#define KV_WORDS(n) (((n) + 7) / 8)

/* What the table's operations report besides their result. */
struct kv_stats {
	__u64 expired;		/* entries found expired (and freed) */
	__u64 stale;		/* entries of an older generation freed */
	__u64 lock_timeouts;	/* bucket locks not taken within the loop budget */
};

/* The 64-bit word at byte `off` of a scratch buffer (unaligned is fine). */
#define KV_WORD(buf, off) (*(__u64 *)((__u8 *)(buf) + ((off) & (KV_BUF - 1))))

/* A key's last word keeps only its `rem` (1..7) low bytes: x86 is
 * little-endian, so the bytes after the key are the high ones. */
static __always_inline __u64 kv_tail(__u64 w, __u32 rem)
{
	return rem ? w & ((1ULL << (rem * 8)) - 1) : w;
}

/* Hash of the `klen`-byte key at `koff` of `buf`. */
static __always_inline __u64 kv_hash(const void *buf, __u32 koff, __u32 klen)
{
	__u64 h = DS_GOLDEN ^ klen, i, nw = KV_WORDS(klen), w;

	bpf_for(i, 0, nw) {
		if (i >= KV_KEY_MAX / 8)
			break;
		w = KV_WORD(buf, (koff & KV_OFF_MASK) + i * 8);
		if (i == nw - 1)
			w = kv_tail(w, klen & 7);
		h = (h ^ w) * DS_M1;
		h ^= h >> 32;
	}
	return ds_mix(h);
}

/* Whether entry `e` holds the `klen`-byte key at `koff` of `buf`. */
static __always_inline bool kv_key_eq(struct kv_entry __arena *e, const void *buf, __u32 koff,
				      __u32 klen)
{
	__u64 i, nw = KV_WORDS(klen), w;

	if (e->klen != klen)
		return false;
	bpf_for(i, 0, nw) {
		if (i >= KV_KEY_MAX / 8)
			break;
		w = KV_WORD(buf, (koff & KV_OFF_MASK) + i * 8);
		if (i == nw - 1)
			w = kv_tail(w, klen & 7);
		if (e->data[i] != w)
			return false;
	}
	return true;
}

/* Whether `e` is live: current generation and not expired at `now`. */
static __always_inline bool kv_live(struct kv_table *t, struct kv_entry __arena *e, __u64 now)
{
	return e->gen == t->gen && (!e->expires || e->expires > now);
}

/* Fills entry `e`'s header and key (the key at `koff` of `buf`) for an
 * `ilen`-byte item; the caller writes the item. */
static __always_inline void kv_fill(struct kv_table *t, struct kv_entry __arena *e,
				   const void *buf, __u32 koff, __u32 klen, __u32 ilen, __u32 meta,
				   __u64 expires)
{
	__u64 kw = KV_WORDS(klen), i, w;

	bpf_for(i, 0, kw) {
		if (i >= KV_KEY_MAX / 8)
			break;
		w = KV_WORD(buf, (koff & KV_OFF_MASK) + i * 8);
		if (i == kw - 1)
			w = kv_tail(w, klen & 7);
		e->data[i] = w;
	}
	e->next = NULL;
	e->hash = kv_hash(buf, koff, klen);
	e->gen = t->gen;
	e->expires = expires;
	e->cas = __sync_fetch_and_add(&t->cas_seq, 1) + 1;
	e->meta = meta;
	e->klen = klen;
	e->ilen = ilen;
}

/*
 * Allocates and fills an entry for the key at `koff` and the `ilen`-byte
 * item at `ioff` of `buf`; NULL if the heap is exhausted or the sizes are
 * out of range. The entry is not linked yet.
 */
static __always_inline struct kv_entry __arena *
kv_new(struct kv_table *t, const void *buf, __u32 koff, __u32 klen, __u32 ioff, __u32 ilen,
       __u32 meta, __u64 expires)
{
	struct kv_entry __arena *e;
	__u64 kw = KV_WORDS(klen), iw = KV_WORDS(ilen), i;

	if (!klen || klen > KV_KEY_MAX || ilen > KV_ITEM_MAX)
		return NULL;
	e = hm_alloc(&t->m, sizeof(*e) + (kw + iw) * 8);
	if (!e)
		return NULL;
	kv_fill(t, e, buf, koff, klen, ilen, meta, expires);
	bpf_for(i, 0, iw) {
		if (i >= KV_ITEM_MAX / 8)
			break;
		e->data[kw + i] = KV_WORD(buf, (ioff & KV_OFF_MASK) + i * 8);
	}
	return e;
}

/*
 * Allocates an entry for the key at `koff` of `buf` and an `ilen`-byte item
 * (up to KV_BIG_MAX bytes) that the caller writes through kv_item() before
 * kv_store() links it: an item that arrives in pieces. A spare word follows
 * the item, so that the caller may write whole words at any byte offset of
 * it. NULL if the heap is exhausted or the sizes are out of range.
 */
static __always_inline struct kv_entry __arena *
kv_new_big(struct kv_table *t, const void *buf, __u32 koff, __u32 klen, __u32 ilen)
{
	struct kv_entry __arena *e;

	if (!klen || klen > KV_KEY_MAX || ilen > KV_BIG_MAX)
		return NULL;
	e = hm_alloc(&t->m, sizeof(*e) + (KV_WORDS(klen) + KV_WORDS(ilen) + 1) * 8);
	if (e)
		kv_fill(t, e, buf, koff, klen, ilen, 0, 0);
	return e;
}

/* The first byte of entry `e`'s item. */
static __always_inline __u8 __arena *kv_item(struct kv_entry __arena *e)
{
	return (__u8 __arena *)&e->data[KV_WORDS(e->klen) & (KV_KEY_MAX / 8 * 2 - 1)];
}

/* Whether entries `n` and `e` hold the same key (keys are stored with their
 * last word's spare bytes zeroed). */
static __always_inline bool kv_same_key(struct kv_entry __arena *n, struct kv_entry __arena *e)
{
	__u64 i, nw = KV_WORDS(e->klen);

	if (n->klen != e->klen)
		return false;
	bpf_for(i, 0, nw) {
		if (i >= KV_KEY_MAX / 8)
			break;
		if (n->data[i] != e->data[i])
			return false;
	}
	return true;
}

/*
 * Unlinks `n` from bucket `b` (`prev` its predecessor, NULL at the head)
 * and frees it. The bucket lock is held.
 */
static __always_inline void kv_unlink(struct kv_table *t, struct hm_bucket __arena *b,
				      struct kv_entry __arena *prev, struct kv_entry __arena *n)
{
	struct kv_entry __arena *next = n->next;

	if (prev)
		prev->next = next;
	else
		b->head = (struct hm_node __arena *)next;
	hm_free(&t->m, n);
	__sync_fetch_and_sub(&t->m.count, 1);
}

/* Counts a dead entry met on a walk: flushed (stale) or expired. */
static __always_inline void kv_count_dead(struct kv_table *t, struct kv_entry __arena *n,
					  struct kv_stats *st)
{
	if (n->gen != t->gen)
		st->stale++;
	else
		st->expired++;
}

/* Frees an entry that was never linked (or is unlinked). */
static __always_inline void kv_drop(struct kv_table *t, struct kv_entry __arena *e)
{
	hm_free(&t->m, e);
}

/*
 * Links `e` (from kv_new or kv_new_big) under its key. mode 0 stores unconditionally
 * (set), 1 only if the key is absent (add), 2 only if present (replace).
 * Returns 1 stored (the old entry, if any, freed), 0 not stored (`e` freed),
 * -1 lock not taken or loop budget spent (`e` freed).
 */
static __always_inline int kv_store(struct kv_table *t, struct kv_entry __arena *e, int mode,
				    __u64 now, struct kv_stats *st)
{
	struct hm_bucket __arena *b = hm_bucket_of(&t->m, e->hash);
	struct kv_entry __arena *n, *prev = NULL, *next;
	int ret = 0, found = 0;

	if (hm_lock(&b->lock)) {
		st->lock_timeouts++;
		kv_drop(t, e);
		return -1;
	}
	n = (struct kv_entry __arena *)b->head;
	while (n) {
		if (!can_loop) {
			ret = -1;
			goto out_drop;
		}
		next = n->next;
		if (n->hash == e->hash && kv_same_key(n, e)) {
			if (kv_live(t, n, now)) {
				found = 1;
				break;
			}
			/* Dead entry of this key: unlink and free it. */
			kv_count_dead(t, n, st);
			kv_unlink(t, b, prev, n);
			n = next;
			continue;
		}
		prev = n;
		n = next;
	}
	if ((mode == 1 && found) || (mode == 2 && !found))
		goto out_drop;
	if (found) {
		e->next = n->next;
		if (prev)
			prev->next = e;
		else
			b->head = (struct hm_node __arena *)e;
		hm_free(&t->m, n);
	} else {
		e->next = (struct kv_entry __arena *)b->head;
		b->head = (struct hm_node __arena *)e;
		__sync_fetch_and_add(&t->m.count, 1);
	}
	hm_unlock(&b->lock);
	return 1;
out_drop:
	hm_unlock(&b->lock);
	kv_drop(t, e);
	return ret;
}

/*
 * Removes the key at `koff` of `buf`: 1 removed, 0 absent (or dead), -1 lock
 * not taken or loop budget spent.
 */
static __always_inline int kv_erase(struct kv_table *t, const void *buf, __u32 koff, __u32 klen,
				    __u64 now, struct kv_stats *st)
{
	__u64 h = kv_hash(buf, koff, klen);
	struct hm_bucket __arena *b = hm_bucket_of(&t->m, h);
	struct kv_entry __arena *n, *prev = NULL, *next;
	int ret = 0;

	if (hm_lock(&b->lock)) {
		st->lock_timeouts++;
		return -1;
	}
	n = (struct kv_entry __arena *)b->head;
	while (n) {
		if (!can_loop) {
			ret = -1;
			break;
		}
		next = n->next;
		if (n->hash == h && kv_key_eq(n, buf, koff, klen)) {
			if (kv_live(t, n, now))
				ret = 1;
			else
				kv_count_dead(t, n, st);
			kv_unlink(t, b, prev, n);
			break;
		}
		prev = n;
		n = next;
	}
	hm_unlock(&b->lock);
	return ret;
}

/*
 * With bucket `b`'s lock held (`h` the key's hash): the live entry of the
 * key at `koff` of `kbuf`, or NULL. A dead entry of the key (expired at
 * `now`, or flushed) is unlinked and freed; *busy is set when the loop
 * budget ran out.
 */
static __always_inline struct kv_entry __arena *
kv_find_locked(struct kv_table *t, struct hm_bucket __arena *b, __u64 h, const void *kbuf,
	       __u32 koff, __u32 klen, __u64 now, bool *busy, struct kv_stats *st)
{
	struct kv_entry __arena *n = (struct kv_entry __arena *)b->head, *prev = NULL, *next;

	while (n) {
		if (!can_loop) {
			*busy = true;
			return NULL;
		}
		next = n->next;
		if (n->hash == h && kv_key_eq(n, kbuf, koff, klen)) {
			if (kv_live(t, n, now))
				return n;
			kv_count_dead(t, n, st);
			kv_unlink(t, b, prev, n);
			return NULL;
		}
		prev = n;
		n = next;
	}
	return NULL;
}

/* What kv_get() found. */
struct kv_found {
	__u64 cas;
	__u32 meta;
	__u32 ilen;
};

/*
 * Copies the item of the key at `koff` of `kbuf` to `dst` + `doff` (at most
 * `cap` bytes, else it counts as absent) under the bucket lock. Returns 1
 * found (`f` filled), 0 absent, dead or too big (*too_big set for the last),
 * -1 lock not taken or budget spent. An expired entry is unlinked and freed.
 */
static __always_inline int kv_get(struct kv_table *t, const void *kbuf, __u32 koff, __u32 klen,
				  __u64 now, void *dst, __u32 doff, __u32 cap, struct kv_found *f,
				  bool *too_big, struct kv_stats *st)
{
	__u64 h = kv_hash(kbuf, koff, klen), i, iw, kw;
	struct hm_bucket __arena *b = hm_bucket_of(&t->m, h);
	struct kv_entry __arena *n;
	bool busy = false;
	int ret = 0;

	if (hm_lock(&b->lock)) {
		st->lock_timeouts++;
		return -1;
	}
	n = kv_find_locked(t, b, h, kbuf, koff, klen, now, &busy, st);
	if (busy) {
		ret = -1;
	} else if (n && (n->ilen > cap || n->ilen > KV_ITEM_MAX)) {
		*too_big = true;
	} else if (n) {
		kw = KV_WORDS(n->klen);
		iw = KV_WORDS(n->ilen);
		bpf_for(i, 0, iw) {
			if (i >= KV_ITEM_MAX / 8)
				break;
			KV_WORD(dst, (doff & KV_OFF_MASK) + i * 8) = n->data[kw + i];
		}
		f->cas = n->cas;
		f->meta = n->meta;
		f->ilen = n->ilen;
		ret = 1;
	}
	hm_unlock(&b->lock);
	return ret;
}

/*
 * The live entry of the key at `koff` of `kbuf`, found under the bucket
 * lock, which is released before it returns: only for callers that keep
 * the entry from being freed by other means (the sorted sets' member table,
 * whose entries of one set change only under that set's lock). NULL when
 * absent; *busy set when the lock or the loop budget ran out.
 */
static __always_inline struct kv_entry __arena *
kv_lookup(struct kv_table *t, const void *kbuf, __u32 koff, __u32 klen, bool *busy)
{
	__u64 h = kv_hash(kbuf, koff, klen);
	struct hm_bucket __arena *b = hm_bucket_of(&t->m, h);
	struct kv_entry __arena *n, *found = NULL;

	if (hm_lock(&b->lock)) {
		*busy = true;
		return NULL;
	}
	n = (struct kv_entry __arena *)b->head;
	while (n) {
		if (!can_loop) {
			*busy = true;
			break;
		}
		if (n->hash == h && kv_key_eq(n, kbuf, koff, klen)) {
			if (kv_live(t, n, 0))
				found = n;
			break;
		}
		n = n->next;
	}
	hm_unlock(&b->lock);
	return found;
}

/*
 * The first word of the item of the key at `koff` of `kbuf`, without the
 * bucket lock: only for a table whose linked entries are never replaced or
 * removed (the sorted sets' key table: a set is published once, with mode
 * 1, and never freed), where a walk cannot meet a freed entry. 0 when
 * absent (or the loop budget ran out).
 */
static __always_inline __u64 kv_peek_word(struct kv_table *t, const void *kbuf, __u32 koff,
					  __u32 klen)
{
	__u64 h = kv_hash(kbuf, koff, klen);
	struct hm_bucket __arena *b = hm_bucket_of(&t->m, h);
	struct kv_entry __arena *n;

	n = *(struct kv_entry __arena * volatile __arena *)&b->head;
	while (n) {
		if (!can_loop)
			return 0;
		if (n->hash == h && kv_key_eq(n, kbuf, koff, klen))
			return *(__u64 __arena *)kv_item(n);
		n = n->next;
	}
	return 0;
}

/* Every entry now reads as absent (freed lazily by later writes). */
static __always_inline void kv_flush(struct kv_table *t)
{
	__sync_fetch_and_add(&t->gen, 1);
}

/* Arguments of a table's initialiser (KV_TABLE_INIT); the loader's
 * ds::init_table() fills them. */
struct kv_init_args {
	__u32 order;		/* log2 of the buckets */
	__u32 ret;		/* 0 ok, 1 no room in the heap, 2 reserve failed */
	__u64 from;		/* first bucket of this part */
	__u64 count;		/* buckets in this part */
	__u64 prefill;		/* bytes to populate for entries up front */
};

/*
 * Defines SEC("syscall") program `name`, which allocates the buckets of
 * `table` on `heap` and clears them, a part per run (hm_init_part()): the
 * loader calls it for consecutive parts. The first part populates the heap
 * for the buckets and `prefill` bytes of entries, so that a burst of writes
 * right after attach does not outrun the background reserve (which grows
 * only when it runs dry).
 */
#define KV_TABLE_INIT(name, heap, table)					\
	static struct hm_bucket __arena *name##_pending;			\
	SEC("syscall")								\
	int name(struct kv_init_args *a)					\
	{									\
		__u64 buckets = (1ULL << (a->order & 31)) *			\
				sizeof(struct hm_bucket);			\
										\
		if (!a->from && kflex_reserve(heap, buckets + a->prefill)) {	\
			a->ret = 2;						\
			return 0;						\
		}								\
		a->ret = hm_init_part(&(table).m, &name##_pending, a->order,	\
				      a->from, a->count) ? 1 : 0;		\
		return 0;							\
	}

#endif /* __KFLEX_DS_KV_H */
