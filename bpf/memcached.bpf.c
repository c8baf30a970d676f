// SPDX-License-Identifier: GPL-2.0
/*
 * memcached offload (kflex-load --kmemcached): the memcached text protocol
 * over UDP, answered at XDP from a hash table on a KFlex heap.
 *
 * The offload owns the UDP key space of its port while attached: keyed
 * commands are executed here and never reach memcached (which may hold an
 * older value); keyless ones go on to memcached. A miss is answered as a
 * miss. Anything this program cannot parse goes on to memcached untouched,
 * so memcached answers it with its own ERROR or CLIENT_ERROR.
 *
 *   get/gets <key>...        VALUE lines of the hits, then END (1-24 keys)
 *   set/add/replace <key> <flags> <exptime> <bytes> [noreply]
 *                            STORED / NOT_STORED; SERVER_ERROR out of memory
 *                            storing object when the value cannot be held
 *   delete <key> [noreply]   DELETED / NOT_FOUND
 *   flush_all ...            empties the table, then goes on to memcached
 *   append, prepend, cas, incr, decr, touch, gat, gats, mg, ms, md, ma, me
 *                            SERVER_ERROR command not offloaded
 *   stats, version, verbosity, mn, quit, others: on to memcached
 *
 * Datagram: 8-byte frame header (request id, sequence, total, reserved) and
 * one command; a reply is one datagram of at most MC_REPLY_MAX bytes of UDP
 * payload (memaslap's limit), sent back with XDP_TX.
 *
 * With mc_bmc set (kflex-load --kmemcached --policy bmc) the same code runs
 * BMC's policy instead, the baseline `make bench-offloads` compares with:
 * the table is a look-aside cache and memcached owns the key space. A get
 * is answered here only when every key is a hit, else it goes on to
 * memcached; every other command goes on to memcached, and one naming a key
 * first drops that key from the table; the tc egress program kmc_fill fills
 * the table from memcached's one-key VALUE replies. The cache does not know
 * a value's expiry time (memcached's replies do not carry it) and a reply in
 * flight can refill a key a later set just dropped: BMC's own limits.
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include "kflex.h"

KFLEX_HEAP(kmc_heap, 1 << 30);
#define DS_HEAP kmc_heap
#include "ds/kv.h"

/* Set by the loader before loading. */
const volatile __u16 mc_port = 6969;
const volatile __u8 mc_bmc = 0;		/* BMC's look-aside policy */

#define ETH_P_IP 0x0800
#define IPPROTO_UDP 17
#define MC_HDR 8		/* memcached UDP frame header */
#define MC_PAYLOAD_OFF 42	/* Ethernet + IPv4 (no options) + UDP */
#define MC_REQ_MAX 2048		/* UDP payload bytes we parse */
#define MC_REPLY_MAX 1400	/* UDP payload bytes of a reply, header included */
#define MC_KEY_MAX 250
#define MC_MAX_KEYS 24
#define MC_MAX_TOKENS 32
#define MC_30_DAYS (60 * 60 * 24 * 30)
/* Bytes a reply may grow at the head when the tail has no room (within
 * XDP_PACKET_HEADROOM, minus the kernel's struct xdp_frame). */
#define MC_HEAD_GROW 192
/* XDP metadata of a get left to the tc ingress program. */
#define MC_META_BIG_GET 0x4b4d4347


/* Statistics, per CPU; kflex-load sums them. Keep in sync with the loader
 * (loader/src/memcached.rs, struct Counters). */
struct mc_stats {
	__u64 requests;		/* datagrams to the port */
	__u64 gets;		/* get/gets commands */
	__u64 hits;		/* keys found */
	__u64 misses;		/* keys not found (absent, expired, too big) */
	__u64 sets;		/* set/add/replace stored */
	__u64 not_stored;	/* add/replace refused */
	__u64 deletes;		/* delete commands */
	__u64 expired;		/* entries found expired */
	__u64 flushes;		/* flush_all seen */
	__u64 refused;		/* keyed commands answered "not offloaded" */
	__u64 passed;		/* handed to memcached (keyless or not parsable) */
	__u64 malformed;	/* of those, not parsable by this program */
	__u64 lock_timeouts;	/* bucket lock or loop budget ran out */
	__u64 store_failures;	/* values the table could not hold */
	__u64 reply_too_big;	/* hits left out to keep a reply in one datagram */
	__u64 not_ipv4_udp;	/* other traffic, passed */
	__u64 to_tc;		/* gets answered by kmc_tc: no room in the XDP frame */
	__u64 fills;		/* BMC policy: entries filled from memcached's replies */
	__u64 invalidations;	/* BMC policy: keyed commands that dropped their key */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mc_stats);
} mc_stats SEC(".maps");

/* Per-CPU scratch space: the request, the reply, the tokens. Slot 0 for
 * the ingress programs, slot 1 for kmc_fill (egress). */
struct mc_scratch {
	__u8 req[KV_BUF + 8];
	__u8 rep[KV_BUF + 8];
	__u16 tok_off[MC_MAX_TOKENS];
	__u16 tok_len[MC_MAX_TOKENS];
	__u32 ntok;		/* tokens of the command line */
	__u32 len;		/* request bytes (after the frame header) */
	__u32 rlen;		/* reply bytes, frame header included */
	__u32 nlen;		/* put_u64(): digits */
	__u32 need;		/* mc_get_key(): where the item was copied */
	__u8 num[32];		/* put_u64(): digit window */
	__u8 hdr[MC_PAYLOAD_OFF];	/* the request's Ethernet/IPv4/UDP headers */
	__u8 is_get;		/* the command was a get/gets */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct mc_scratch);
} mc_scratch SEC(".maps");

/* The table; its buckets are allocated by mc_init. */
struct kv_table mc_table;

/* What to do with a request. */
enum mc_verdict {
	MC_PASS,	/* on to memcached */
	MC_REPLY,	/* send the reply in the scratch space */
	MC_QUIET,	/* done, no reply (noreply) */
};

#define MC_BYTE(buf, i) (((__u8 *)(buf))[(i) & (KV_BUF - 1)])

/* Byte `i` of token `t`. */
static __always_inline __u8 tok_byte(struct mc_scratch *sc, __u32 t, __u32 i)
{
	return MC_BYTE(sc->req, sc->tok_off[t & (MC_MAX_TOKENS - 1)] + i);
}

static __always_inline __u32 tok_len(struct mc_scratch *sc, __u32 t)
{
	return sc->tok_len[t & (MC_MAX_TOKENS - 1)];
}

static __always_inline __u32 tok_off(struct mc_scratch *sc, __u32 t)
{
	return sc->tok_off[t & (MC_MAX_TOKENS - 1)];
}

/* Whether token `t` is the word `w` (a string literal of at most 9 bytes). */
#define TOK_IS(sc, t, w) tok_is(sc, t, w, sizeof(w) - 1)
static __always_inline bool tok_is(struct mc_scratch *sc, __u32 t, const char *w, __u32 n)
{
	__u32 i;

	if (tok_len(sc, t) != n)
		return false;
	for (i = 0; i < 9; i++) {
		if (i >= n)
			break;
		if (tok_byte(sc, t, i) != (__u8)w[i])
			return false;
	}
	return true;
}

/* Token `t` as an unsigned decimal number (at most 20 digits, no overflow). */
static __always_inline bool tok_u64(struct mc_scratch *sc, __u32 t, __u64 *out)
{
	__u32 n = tok_len(sc, t), i;
	__u64 v = 0, d;

	if (!n || n > 20)
		return false;
	bpf_for(i, 0, n) {
		d = tok_byte(sc, t, i);
		if (d < '0' || d > '9')
			return false;
		d -= '0';
		if (v > (~0ULL - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

/* Token `t` as a signed decimal number (memcached's exptime). */
static __always_inline bool tok_s64(struct mc_scratch *sc, __u32 t, __s64 *out)
{
	__u32 n = tok_len(sc, t), i;
	__u64 v = 0, d;
	bool neg;

	if (!n || n > 20)
		return false;
	neg = tok_byte(sc, t, 0) == '-';
	bpf_for(i, 0, n) {
		if (i == 0 && neg)
			continue;
		d = tok_byte(sc, t, i);
		if (d < '0' || d > '9')
			return false;
		v = v * 10 + (d - '0');
		if (v > (1ULL << 62))
			return false;
	}
	if (neg && n == 1)
		return false;
	*out = neg ? -(__s64)v : (__s64)v;
	return true;
}

/*
 * The reply is appended at sc->rlen, which the helpers below read from and
 * write back to the scratch memory every time: a length kept in a register
 * would be tracked precisely by the verifier through every branch that
 * computed it, and their combinations would multiply its states.
 */

/* A scratch field read from memory, never from what the compiler knows. */
#define MEM(x) (*(volatile __typeof__(x) *)&(x))

/* Appends the literal `s`. */
#define PUT(sc, s) put_bytes(sc, s, sizeof(s) - 1)
static __always_inline void put_bytes(struct mc_scratch *sc, const char *s, __u32 n)
{
	__u32 off = MEM(sc->rlen), i;

	for (i = 0; i < 48; i++) {
		if (i >= n)
			break;
		MC_BYTE(sc->rep, off + i) = s[i];
	}
	sc->rlen = off + n;
}

/* Appends `v` in decimal. */
static __always_inline void put_u64(struct mc_scratch *sc, __u64 v)
{
	__u32 off, i, n = 0;

	/* Digits from the right end of a 20-byte window, then the window's
	 * used part moved to the front. */
	bpf_for(i, 0, 20) {
		sc->num[(19 - i) & 31] = '0' + v % 10;
		v /= 10;
		n++;
		if (!v)
			break;
	}
	MEM(sc->nlen) = n;
	off = MEM(sc->rlen);
	n = MEM(sc->nlen);
	bpf_for(i, 0, 20) {
		if (i >= n)
			break;
		MC_BYTE(sc->rep, off + i) = sc->num[(20 - n + i) & 31];
	}
	sc->rlen = off + (n & 31);
}

/* Appends token `t` (a key), word by word. */
static __always_inline void put_token(struct mc_scratch *sc, __u32 t)
{
	__u32 n = tok_len(sc, t), src = tok_off(sc, t), off = MEM(sc->rlen);
	__u64 i;

	bpf_for(i, 0, KV_WORDS(n)) {
		if (i >= KV_KEY_MAX / 8)
			break;
		KV_WORD(sc->rep, (off & KV_OFF_MASK) + i * 8) =
			KV_WORD(sc->req, (src & KV_OFF_MASK) + i * 8);
	}
	sc->rlen = off + n;
}

static __always_inline __u64 now_ns(void)
{
	return bpf_ktime_get_tai_ns();
}

/*
 * memcached's exptime: 0 never, up to 30 days relative seconds, beyond an
 * absolute Unix time (the kernel's CLOCK_TAI, which equals it unless a TAI
 * offset is set), negative already expired. Returns the deadline in TAI ns
 * (0: never).
 */
static __always_inline __u64 deadline(__s64 exptime, __u64 now)
{
	if (exptime == 0)
		return 0;
	if (exptime < 0)
		return 1;	/* in the past */
	if (exptime <= MC_30_DAYS)
		return now + (__u64)exptime * 1000000000ULL;
	return (__u64)exptime * 1000000000ULL;
}

/* A key token memcached would accept: 1..250 bytes, none of them NUL. */
static __always_inline bool key_ok(struct mc_scratch *sc, __u32 t)
{
	__u32 n = tok_len(sc, t), i;

	if (!n || n > MC_KEY_MAX)
		return false;
	bpf_for(i, 0, n) {
		if (!tok_byte(sc, t, i))
			return false;
	}
	return true;
}

/*
 * The command functions are global (not static): the verifier checks each
 * of them once, with its arguments unknown, instead of at every call site
 * and in every loop iteration. They find the request in sc (sc->len bytes,
 * sc->ntok tokens), append the reply at sc->rlen (frame header included)
 * and return an enum mc_verdict.
 */

static __always_inline int reply(struct mc_scratch *sc, const char *text, __u32 n)
{
	sc->rlen = MC_HDR;
	put_bytes(sc, text, n);
	return MC_REPLY;
}
#define REPLY(sc, s) reply(sc, s, sizeof(s) - 1)

/*
 * One key (token t) of a get: appends its VALUE block if it is a live hit
 * that fits in the datagram. Returns 0, 1 for a miss under BMC's policy
 * (the get goes on to memcached), or -1 when the bucket lock or the loop
 * budget ran out.
 */
__noinline int mc_get_key(struct mc_scratch *sc, __u32 t, int with_cas, struct mc_stats *st)
{
	struct kv_stats ks = {};
	struct kv_found f = {};
	__u32 off, lo, line, klen, need, i;
	bool too_big = false;
	__u64 w;
	int r;

	if (!sc || !st)
		return -1;
	off = sc->rlen & KV_OFF_MASK;
	klen = tok_len(sc, t);
	/* Room for the longest "VALUE <key> <flags> <bytes> <cas>\r\n"; the
	 * item (value and CRLF) is copied behind it, then moved down behind the
	 * real line once its length is known. */
	line = 6 + klen + 1 + 10 + 1 + 4 + (with_cas ? 21 : 0) + 2;
	need = off + line;
	MEM(sc->need) = need;
	if (need + 5 >= MC_REPLY_MAX) {
		st->reply_too_big++;
		st->misses++;
		return mc_bmc ? 1 : 0;
	}
	r = kv_get(&mc_table, sc->req, tok_off(sc, t), klen, now_ns(), sc->rep, need,
		   MC_REPLY_MAX - 5 - need, &f, &too_big, &ks);
	st->expired += ks.expired;
	st->lock_timeouts += ks.lock_timeouts;
	if (r < 0)
		return -1;
	if (r == 0) {
		if (too_big)
			st->reply_too_big++;
		st->misses++;
		return mc_bmc ? 1 : 0;
	}
	st->hits++;
	sc->rlen = off;
	PUT(sc, "VALUE ");
	put_token(sc, t);
	PUT(sc, " ");
	put_u64(sc, f.meta);
	PUT(sc, " ");
	put_u64(sc, f.ilen - 2);
	if (with_cas) {
		PUT(sc, " ");
		put_u64(sc, f.cas);
	}
	PUT(sc, "\r\n");
	/* Move the item down from `need` to the line's end (ascending copy:
	 * the destination is below the source). */
	lo = MEM(sc->rlen);
	need = MEM(sc->need);
	bpf_for(i, 0, KV_WORDS(f.ilen)) {
		if (i >= KV_ITEM_MAX / 8)
			break;
		w = KV_WORD(sc->rep, (need & KV_OFF_MASK) + i * 8);
		KV_WORD(sc->rep, (lo & KV_OFF_MASK) + i * 8) = w;
	}
	sc->rlen = lo + f.ilen;
	return 0;
}

/* get/gets: keys in tokens 1 .. ntok - 1. */
__noinline int mc_get(struct mc_scratch *sc, int with_cas, struct mc_stats *st)
{
	__u32 t, ntok;

	if (!sc || !st)
		return MC_PASS;
	ntok = sc->ntok;
	if (ntok < 2)
		return MC_PASS;		/* memcached: ERROR */
	if (ntok - 1 > MC_MAX_KEYS) {
		st->refused++;
		return REPLY(sc, "SERVER_ERROR too many keys for the offload\r\n");
	}
	bpf_for(t, 1, ntok) {
		if (!key_ok(sc, t))
			return MC_PASS;	/* memcached: CLIENT_ERROR */
	}
	st->gets++;
	sc->is_get = 1;
	sc->rlen = MC_HDR;
	bpf_for(t, 1, ntok) {
		int r = mc_get_key(sc, t, with_cas, st);

		if (r > 0)
			return MC_PASS;	/* BMC: a miss goes to memcached */
		if (r < 0) {
			if (mc_bmc)
				return MC_PASS;
			st->lock_timeouts++;
			return REPLY(sc, "SERVER_ERROR busy, try again\r\n");
		}
	}
	PUT(sc, "END\r\n");
	return MC_REPLY;
}

/*
 * set/add/replace (mode 0/1/2): tokens key flags exptime bytes [noreply];
 * the data starts at byte `data` and must end the datagram with CRLF.
 */
__noinline int mc_store(struct mc_scratch *sc, int mode, __u32 data, struct mc_stats *st)
{
	struct kv_stats ks = {};
	struct kv_entry __arena *e = NULL;
	__u64 flags, bytes, now = now_ns();
	__u32 ntok, len, klen;
	bool noreply = false;
	__s64 exptime;
	int r;

	if (!sc || !st)
		return MC_PASS;
	ntok = sc->ntok;
	len = sc->len;
	if (ntok != 5 && ntok != 6)
		return MC_PASS;
	if (ntok == 6) {
		if (!TOK_IS(sc, 5, "noreply"))
			return MC_PASS;
		noreply = true;
	}
	if (!key_ok(sc, 1) || !tok_u64(sc, 2, &flags) || flags > 0xffffffffULL ||
	    !tok_s64(sc, 3, &exptime) || !tok_u64(sc, 4, &bytes))
		return MC_PASS;
	/* Exactly the data and CRLF, to the end of the datagram. */
	if (bytes > MC_REQ_MAX || (__u64)data + bytes + 2 != len ||
	    MC_BYTE(sc->req, data + bytes) != '\r' || MC_BYTE(sc->req, data + bytes + 1) != '\n')
		return MC_PASS;		/* memcached: CLIENT_ERROR bad data chunk */
	klen = tok_len(sc, 1);
	/* A value every later gets must be able to return in one datagram. */
	if (MC_HDR + 6 + klen + 1 + 10 + 1 + 4 + 21 + 2 + bytes + 2 + 5 <= MC_REPLY_MAX)
		e = kv_new(&mc_table, sc->req, tok_off(sc, 1), klen, data, bytes + 2, flags,
			   deadline(exptime, now));
	if (!e) {
		/* As memcached: the key's old value goes too. */
		st->store_failures++;
		if (kv_erase(&mc_table, sc->req, tok_off(sc, 1), klen, now, &ks) < 0)
			st->lock_timeouts++;
		return REPLY(sc, "SERVER_ERROR out of memory storing object\r\n");
	}
	r = kv_store(&mc_table, e, mode, now, &ks);
	st->expired += ks.expired;
	if (r < 0) {
		st->lock_timeouts++;
		return REPLY(sc, "SERVER_ERROR busy, try again\r\n");
	}
	if (r == 1)
		st->sets++;
	else
		st->not_stored++;
	if (noreply)
		return MC_QUIET;
	if (r == 1)
		return REPLY(sc, "STORED\r\n");
	return REPLY(sc, "NOT_STORED\r\n");
}

/* delete <key> [0] [noreply] (memcached still accepts a zero time). */
__noinline int mc_delete(struct mc_scratch *sc, struct mc_stats *st)
{
	struct kv_stats ks = {};
	bool noreply = false;
	__u32 ntok;
	int r;

	if (!sc || !st)
		return MC_PASS;
	ntok = sc->ntok;
	if (ntok < 2 || ntok > 4 || !key_ok(sc, 1))
		return MC_PASS;
	if (ntok >= 3 && TOK_IS(sc, ntok - 1, "noreply"))
		noreply = true;
	if (ntok - noreply > 3 || (ntok - noreply == 3 && !TOK_IS(sc, 2, "0")))
		return MC_PASS;
	st->deletes++;
	r = kv_erase(&mc_table, sc->req, tok_off(sc, 1), tok_len(sc, 1), now_ns(), &ks);
	st->expired += ks.expired;
	if (r < 0) {
		st->lock_timeouts++;
		return REPLY(sc, "SERVER_ERROR busy, try again\r\n");
	}
	if (noreply)
		return MC_QUIET;
	if (r == 1)
		return REPLY(sc, "DELETED\r\n");
	return REPLY(sc, "NOT_FOUND\r\n");
}

/*
 * Splits the command line of sc->req into tokens (runs of bytes between
 * spaces). Returns the index of the line's LF, or -1 if there is none or
 * too many tokens.
 */
__noinline int mc_tokenize(struct mc_scratch *sc)
{
	__u32 i, eol = 0, ntok = 0, start = 0, len;
	bool found = false, in_tok = false, sep;
	__u8 c;

	if (!sc)
		return -1;
	len = sc->len;
	if (len == 0 || len > MC_REQ_MAX)
		return -1;
	/* One pass up to the first LF; a CR right before it ends the line. */
	bpf_for(i, 0, len) {
		c = MC_BYTE(sc->req, i);
		if (c == '\n') {
			eol = i;
			found = true;
			break;
		}
		sep = c == ' ' || (c == '\r' && MC_BYTE(sc->req, i + 1) == '\n');
		if (sep && in_tok) {
			if (ntok >= MC_MAX_TOKENS)
				return -1;
			sc->tok_off[ntok & (MC_MAX_TOKENS - 1)] = start;
			sc->tok_len[ntok & (MC_MAX_TOKENS - 1)] = i - start;
			ntok++;
			in_tok = false;
		} else if (!sep && !in_tok) {
			start = i;
			in_tok = true;
		}
	}
	if (!found)
		return -1;
	if (in_tok) {
		if (ntok >= MC_MAX_TOKENS)
			return -1;
		sc->tok_off[ntok & (MC_MAX_TOKENS - 1)] = start;
		sc->tok_len[ntok & (MC_MAX_TOKENS - 1)] = eol - start;
		ntok++;
	}
	sc->ntok = ntok;
	return eol;
}

/*
 * BMC's policy: gets of hits only (see the top of the file); every other
 * command goes on to memcached, after dropping the key it names (token 1)
 * from the table.
 */
__noinline int mc_run_bmc(struct mc_scratch *sc, struct mc_stats *st, __u32 next)
{
	struct kv_stats ks = {};

	if (!sc || !st)
		return MC_PASS;
	if (TOK_IS(sc, 0, "get"))
		return next == sc->len ? mc_get(sc, 0, st) : MC_PASS;
	if (TOK_IS(sc, 0, "flush_all")) {
		kv_flush(&mc_table);
		st->flushes++;
		return MC_PASS;
	}
	if (sc->ntok >= 2 && !TOK_IS(sc, 0, "gets") && key_ok(sc, 1)) {
		if (kv_erase(&mc_table, sc->req, tok_off(sc, 1), tok_len(sc, 1), now_ns(), &ks) < 0)
			st->lock_timeouts++;
		st->invalidations++;
	}
	return MC_PASS;
}

/* Runs the command in sc->req[0 .. sc->len). */
__noinline int mc_run(struct mc_scratch *sc, struct mc_stats *st)
{
	__u32 len, next;
	int eol;

	if (!sc || !st)
		return MC_PASS;
	eol = mc_tokenize(sc);
	if (eol < 0 || !sc->ntok)
		return MC_PASS;
	len = sc->len;
	next = eol + 1;
	sc->rlen = MC_HDR;
	sc->is_get = 0;
	if (mc_bmc)
		return mc_run_bmc(sc, st, next);
	if (TOK_IS(sc, 0, "get"))
		return next == len ? mc_get(sc, 0, st) : MC_PASS;
	if (TOK_IS(sc, 0, "gets"))
		return next == len ? mc_get(sc, 1, st) : MC_PASS;
	if (TOK_IS(sc, 0, "set"))
		return mc_store(sc, 0, next, st);
	if (TOK_IS(sc, 0, "add"))
		return mc_store(sc, 1, next, st);
	if (TOK_IS(sc, 0, "replace"))
		return mc_store(sc, 2, next, st);
	if (TOK_IS(sc, 0, "delete"))
		return next == len ? mc_delete(sc, st) : MC_PASS;
	if (TOK_IS(sc, 0, "flush_all")) {
		kv_flush(&mc_table);
		st->flushes++;
		return MC_PASS;		/* memcached answers OK */
	}
	if (sc->ntok >= 2 &&
	    (TOK_IS(sc, 0, "append") || TOK_IS(sc, 0, "prepend") || TOK_IS(sc, 0, "cas") ||
	     TOK_IS(sc, 0, "incr") || TOK_IS(sc, 0, "decr") || TOK_IS(sc, 0, "touch") ||
	     TOK_IS(sc, 0, "gat") || TOK_IS(sc, 0, "gats") || TOK_IS(sc, 0, "mg") ||
	     TOK_IS(sc, 0, "ms") || TOK_IS(sc, 0, "md") || TOK_IS(sc, 0, "ma") ||
	     TOK_IS(sc, 0, "me"))) {
		st->refused++;
		return REPLY(sc, "SERVER_ERROR command not offloaded\r\n");
	}
	return MC_PASS;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/*
 * Resizes the frame to `len` bytes. A driver leaves room for XDP at the
 * tail of its buffers, or only at the head: veth hands XDP a copy of each
 * skb with XDP_PACKET_HEADROOM in front and little behind. So grow at the
 * tail, else at the head, else some of each. Returns 0 or -1.
 */
static __always_inline int resize(struct xdp_md *ctx, int len)
{
	int delta = len - (int)bpf_xdp_get_buff_len(ctx);

	if (delta <= 0)
		return bpf_xdp_adjust_tail(ctx, delta) ? -1 : 0;
	if (!bpf_xdp_adjust_tail(ctx, delta) || !bpf_xdp_adjust_head(ctx, -delta))
		return 0;
	if (delta > MC_HEAD_GROW && !bpf_xdp_adjust_head(ctx, -MC_HEAD_GROW)) {
		if (!bpf_xdp_adjust_tail(ctx, delta - MC_HEAD_GROW))
			return 0;
		bpf_xdp_adjust_head(ctx, MC_HEAD_GROW);
	}
	return -1;
}

/*
 * Turns the request's headers saved in sc->hdr into those of a reply with
 * `rlen` bytes of UDP payload: addresses and ports swapped, lengths and the
 * IPv4 checksum fixed, UDP checksum 0.
 */
static __always_inline void reply_headers(struct mc_scratch *sc, __u32 rlen)
{
	struct ethhdr *eth = (void *)sc->hdr;
	struct iphdr *ip = (void *)(sc->hdr + sizeof(*eth));
	struct udphdr *udp = (void *)ip + sizeof(*ip);
	__u32 addr, sum = 0, i;
	__u8 mac[6];
	__u16 port;

	__builtin_memcpy(mac, eth->h_source, 6);
	__builtin_memcpy(eth->h_source, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, mac, 6);
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*udp) + rlen);
	ip->ttl = 64;
	ip->check = 0;
	for (i = 0; i < sizeof(*ip) / 2; i++)
		sum += ((__u16 *)ip)[i];
	ip->check = csum_fold(sum);
	port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(sizeof(*udp) + rlen);
	udp->check = 0;
}

/* The frame header of a one-datagram reply; the request id is in place. */
static __always_inline void reply_frame_header(struct mc_scratch *sc)
{
	sc->rep[2] = 0;
	sc->rep[3] = 0;
	sc->rep[4] = 0;
	sc->rep[5] = 1;
	sc->rep[6] = 0;
	sc->rep[7] = 0;
}

/*
 * Turns the request into the reply of sc->rlen bytes: addresses and ports
 * swapped, lengths and the IPv4 checksum fixed, UDP checksum 0, payload
 * from the scratch space. The original headers were saved in sc->hdr.
 * Returns XDP_TX, or -1 if the frame cannot hold the reply.
 */
static __always_inline int send_reply(struct xdp_md *ctx, struct mc_scratch *sc)
{
	__u64 rlen = sc->rlen;

	if (rlen > MC_REPLY_MAX)
		return -1;
	/* Bounds the verifier keeps: clang would fold a plain mask into the
	 * range check above, which the verifier does not follow. */
	asm volatile("%[r] &= 2047" : [r] "+r"(rlen));
	if (rlen < MC_HDR)
		return -1;
	if (resize(ctx, MC_PAYLOAD_OFF + rlen))
		return -1;
	reply_headers(sc, rlen);
	if (bpf_xdp_store_bytes(ctx, 0, sc->hdr, MC_PAYLOAD_OFF) ||
	    bpf_xdp_store_bytes(ctx, MC_PAYLOAD_OFF, sc->rep, rlen))
		return -1;
	return XDP_TX;
}

/* A big-endian 16-bit field as a bounded number. */
static __always_inline __u32 be16_at(const void *p)
{
	const volatile __u8 *b = p;

	return ((__u32)b[0] << 8) | b[1];
}

SEC("xdp")
int kmc_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)ip + sizeof(*ip);
	struct mc_scratch *sc;
	struct mc_stats *st;
	enum mc_verdict v;
	__u32 zero = 0, plen;
	int r;
	__u8 hdr[MC_HDR];

	st = bpf_map_lookup_elem(&mc_stats, &zero);
	sc = bpf_map_lookup_elem(&mc_scratch, &zero);
	if (!st || !sc)
		return XDP_PASS;
	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    ip->ihl != 5 || ip->version != 4 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)) || udp->dest != bpf_htons(mc_port)) {
		st->not_ipv4_udp++;
		return XDP_PASS;
	}
	st->requests++;
	/* Byte by byte: the verifier keeps the bounds of a u8, not of a bswap. */
	plen = be16_at(&udp->len);
	if (plen < sizeof(*udp) + MC_HDR || be16_at(&ip->tot_len) < sizeof(*ip) + plen ||
	    (void *)udp + plen > data_end || plen - sizeof(*udp) - MC_HDR > MC_REQ_MAX) {
		st->malformed++;
		st->passed++;
		return XDP_PASS;
	}
	plen -= sizeof(*udp);
	if (bpf_xdp_load_bytes(ctx, MC_PAYLOAD_OFF, hdr, MC_HDR)) {
		st->passed++;
		return XDP_PASS;
	}
	/* Only single-datagram requests: sequence 0 of 1. */
	if (hdr[2] || hdr[3] || hdr[4] || hdr[5] != 1) {
		st->passed++;
		return XDP_PASS;
	}
	plen -= MC_HDR;
	if (plen == 0 || plen > MC_REQ_MAX ||
	    bpf_xdp_load_bytes(ctx, MC_PAYLOAD_OFF + MC_HDR, sc->req, plen)) {
		st->malformed++;
		st->passed++;
		return XDP_PASS;
	}
	sc->len = plen;
	v = mc_run(sc, st);
	if (v == MC_PASS) {
		st->passed++;
		return XDP_PASS;
	}
	if (v == MC_QUIET)
		return XDP_DROP;
	/* Frame header: the request's id, sequence 0, one datagram. */
	sc->rep[0] = hdr[0];
	sc->rep[1] = hdr[1];
	reply_frame_header(sc);
	if (bpf_xdp_load_bytes(ctx, 0, sc->hdr, MC_PAYLOAD_OFF))
		return XDP_DROP;
	r = send_reply(ctx, sc);
	if (r >= 0)
		return r;
	/*
	 * No room for the reply in this frame (veth gives XDP a copy of each
	 * skb with little room around it). A get (read-only) goes on marked
	 * in its metadata: the tc ingress program kmc_tc answers it from an skb,
	 * which can grow. Anything else is dropped, never passed unmarked:
	 * memcached would act on its own, older copy of the key.
	 */
	if (sc->is_get && !bpf_xdp_adjust_meta(ctx, -(int)sizeof(__u32))) {
		void *meta = (void *)(long)ctx->data_meta;

		if (meta + sizeof(__u32) <= (void *)(long)ctx->data) {
			*(__u32 *)meta = MC_META_BIG_GET;
			st->to_tc++;
			return XDP_PASS;
		}
	}
	st->reply_too_big++;
	return XDP_DROP;
}

/*
 * tc ingress, for the gets kmc_xdp could not answer in its frame: runs the
 * get again (it is read-only) and turns the skb into the reply, resized as
 * needed, sent back out of the same interface. Every other packet goes on.
 */
SEC("tc")
int kmc_tc(struct __sk_buff *skb)
{
	void *meta = (void *)(long)skb->data_meta, *data = (void *)(long)skb->data;
	struct mc_scratch *sc;
	struct mc_stats *st;
	__u32 zero = 0, rlen;
	__u64 plen, len;
	int r;

	if (meta + sizeof(__u32) > data || *(__u32 *)meta != MC_META_BIG_GET)
		return TCX_NEXT;
	st = bpf_map_lookup_elem(&mc_stats, &zero);
	sc = bpf_map_lookup_elem(&mc_scratch, &zero);
	if (!st || !sc)
		return TCX_DROP;
	/* kmc_xdp checked the headers; the payload after the frame header. */
	if (skb->len < MC_PAYLOAD_OFF + MC_HDR + 1)
		return TCX_DROP;
	plen = skb->len - MC_PAYLOAD_OFF - MC_HDR;
	if (plen > MC_REQ_MAX)
		return TCX_DROP;
	asm volatile("%[r] &= 4095" : [r] "+r"(plen));
	if (plen == 0 ||
	    bpf_skb_load_bytes(skb, 0, sc->hdr, MC_PAYLOAD_OFF) ||
	    bpf_skb_load_bytes(skb, MC_PAYLOAD_OFF, sc->rep, MC_HDR) ||
	    bpf_skb_load_bytes(skb, MC_PAYLOAD_OFF + MC_HDR, sc->req, plen))
		return TCX_DROP;
	sc->len = plen;
	r = mc_run(sc, st);
	if (r == MC_PASS && mc_bmc)
		return TCX_NEXT;	/* BMC: now a miss, on to memcached */
	if (r != MC_REPLY || !sc->is_get)
		return TCX_DROP;	/* it was a get in kmc_xdp */
	reply_frame_header(sc);
	len = sc->rlen;
	if (len > MC_REPLY_MAX)
		return TCX_DROP;
	asm volatile("%[r] &= 2047" : [r] "+r"(len));
	if (len < MC_HDR)
		return TCX_DROP;
	rlen = len;
	if (bpf_skb_change_tail(skb, MC_PAYLOAD_OFF + rlen, 0))
		return TCX_DROP;
	reply_headers(sc, rlen);
	if (bpf_skb_store_bytes(skb, 0, sc->hdr, MC_PAYLOAD_OFF, 0) ||
	    bpf_skb_store_bytes(skb, MC_PAYLOAD_OFF, sc->rep, len, 0))
		return TCX_DROP;
	return bpf_redirect(skb->ifindex, 0);
}

/*
 * BMC's policy: one-key get replies of memcached ("VALUE <key> <flags>
 * <bytes> [<cas>]\r\n<data>\r\nEND\r\n") fill the table.
 */
__noinline int mc_fill(struct mc_scratch *sc, struct mc_stats *st)
{
	struct kv_entry __arena *e = NULL;
	struct kv_stats ks = {};
	__u64 flags, bytes;
	__u32 data, len, klen;
	int eol;

	if (!sc || !st)
		return 0;
	eol = mc_tokenize(sc);
	if (eol < 0 || (sc->ntok != 4 && sc->ntok != 5) || !TOK_IS(sc, 0, "VALUE") ||
	    !key_ok(sc, 1) || !tok_u64(sc, 2, &flags) || flags > 0xffffffffULL ||
	    !tok_u64(sc, 3, &bytes))
		return 0;
	data = eol + 1;
	len = sc->len;
	if (bytes > MC_REQ_MAX || (__u64)data + bytes + 2 + 5 != len ||
	    MC_BYTE(sc->req, data + bytes) != '\r' || MC_BYTE(sc->req, data + bytes + 1) != '\n' ||
	    MC_BYTE(sc->req, len - 5) != 'E' || MC_BYTE(sc->req, len - 4) != 'N' ||
	    MC_BYTE(sc->req, len - 3) != 'D')
		return 0;
	klen = tok_len(sc, 1);
	if (MC_HDR + 6 + klen + 1 + 10 + 1 + 4 + 21 + 2 + bytes + 2 + 5 > MC_REPLY_MAX)
		return 0;
	e = kv_new(&mc_table, sc->req, tok_off(sc, 1), klen, data, bytes + 2, flags, 0);
	if (!e) {
		st->store_failures++;
		return 0;
	}
	if (kv_store(&mc_table, e, 0, now_ns(), &ks) == 1)
		st->fills++;
	else
		st->lock_timeouts++;
	return 0;
}

/* tc egress under BMC's policy: memcached's replies from the port go out
 * unchanged, and fill the table on the way. */
SEC("tc")
int kmc_fill(struct __sk_buff *skb)
{
	__u32 zero = 0, one = 1;
	struct mc_scratch *sc;
	struct mc_stats *st;
	struct udphdr udp;
	struct iphdr ip;
	__u8 hdr[MC_HDR];
	__u64 plen;

	if (!mc_bmc || skb->protocol != bpf_htons(ETH_P_IP) ||
	    skb->len < MC_PAYLOAD_OFF + MC_HDR + 1 ||
	    bpf_skb_load_bytes(skb, sizeof(struct ethhdr), &ip, sizeof(ip)) ||
	    ip.ihl != 5 || ip.protocol != IPPROTO_UDP || (ip.frag_off & bpf_htons(0x3fff)) ||
	    bpf_skb_load_bytes(skb, MC_PAYLOAD_OFF - sizeof(udp), &udp, sizeof(udp)) ||
	    udp.source != bpf_htons(mc_port) ||
	    bpf_skb_load_bytes(skb, MC_PAYLOAD_OFF, hdr, MC_HDR) ||
	    hdr[2] || hdr[3] || hdr[4] || hdr[5] != 1)
		return TCX_NEXT;
	plen = skb->len - MC_PAYLOAD_OFF - MC_HDR;
	if (plen > MC_REQ_MAX)
		return TCX_NEXT;
	asm volatile("%[r] &= 4095" : [r] "+r"(plen));
	st = bpf_map_lookup_elem(&mc_stats, &zero);
	sc = bpf_map_lookup_elem(&mc_scratch, &one);
	if (!st || !sc || plen == 0 ||
	    bpf_skb_load_bytes(skb, MC_PAYLOAD_OFF + MC_HDR, sc->req, plen))
		return TCX_NEXT;
	sc->len = plen;
	mc_fill(sc, st);
	return TCX_NEXT;
}

/* Creates the table (run by the loader, a part at a time). */
KV_TABLE_INIT(mc_init, kmc_heap, mc_table);

char LICENSE[] SEC("license") = "GPL";
