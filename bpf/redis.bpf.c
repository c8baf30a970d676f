// SPDX-License-Identifier: GPL-2.0
/*
 * Redis offloads: RESP over TCP, answered at the sk_skb hooks of the
 * server's accepted sockets from a KFlex heap, in front of a real
 * redis-server. One object, two command families (rd_zset, set by the
 * loader): GET/SET on a hash table of values (kflex-load --kmemcache), or
 * the sorted sets (kflex-load --kredis): the same table maps each key to a
 * set of ds/zset.h (a skiplist ordered by (score, member) and a member
 * table shared by all sets).
 *
 *   rd_sockops   (cgroup sockops, root cgroup) puts every connection
 *                accepted on rd_port into rd_socks and gives it a state in
 *                rd_conns; the state goes when the connection closes.
 *   rd_parse     (stream parser) frames: the exact length of the next
 *                request (a RESP array of bulk strings, or an inline
 *                command up to '\n'), 0 when more bytes are needed. A
 *                request longer than RD_MSG_MAX is framed in chunks of at
 *                most RD_MSG_MAX bytes, the position inside it carried in
 *                the connection's state.
 *   rd_verdict   (stream verdict) executes: GET and SET are answered here
 *                (the skb becomes the reply, redirected to the egress of
 *                the same socket); everything else goes on to redis-server
 *                (SK_PASS) unchanged.
 *
 * --kmemcache owns GET and SET: they never reach redis-server's keyspace.
 *   GET k          $<n> value, or $-1 (a miss)
 *   SET k v        +OK; values up to rd_max_value bytes (keys up to
 *                  KV_KEY_MAX); a larger value is consumed whole and
 *                  answered -ERR value too large for the KFlex offload; SET
 *                  with options: -ERR SET option not supported by the
 *                  offload
 *   wrong arity    Redis's own -ERR wrong number of arguments for '<cmd>'
 *                  command
 * --kredis owns ZADD, ZREM, ZCARD, ZSCORE and ZRANGE by index, with Redis
 * 7.0's replies and errors, byte for byte:
 *   ZADD k [NX|XX] [GT|LT] [CH] [INCR] score member ...
 *                  :<added> (:<added+changed> with CH; with INCR the new
 *                  score, or $-1); scores must be integers within +/-2^53
 *                  (BPF has no floating point; Redis prints such a double
 *                  as the integer): others get -ERR only integer scores
 *                  within +/-2^53 are offloaded by KFlex, and what is not a
 *                  number Redis's -ERR value is not a valid float; members
 *                  up to ZS_MEMBER_MAX bytes. Every score and member is
 *                  checked before the set changes.
 *   ZREM k m ...   :<removed>; a set that loses its last member reads as
 *                  absent
 *   ZCARD k, ZSCORE k m
 *   ZRANGE k start stop [WITHSCORES]
 *                  negative indices as Redis; replies up to RD_STAGE_MAX
 *                  bytes (else -ERR ZRANGE reply too large ...);
 *                  BYSCORE/BYLEX/REV/LIMIT: -ERR ZRANGE option not
 *                  supported by the KFlex offload
 * A request over RD_MSG_MAX bytes is consumed whole and refused (-ERR
 * request too large for the KFlex offload).
 * Another command whose key arguments (positions from redis-server's COMMAND
 * table, in rd_cmds, for every argument of a multibulk request and the first
 * RD_OWN_ARGS words of an inline one) name a key the offload holds is
 * refused here: -ERR key is held by the KFlex offload.
 * Replies keep request order on a connection: while nothing was passed on
 * a connection, owned requests are answered from the kernel; once it has
 * passed a request to redis-server, an owned request is still executed
 * here but rewritten into an EVAL whose reply redis-server sends, byte for
 * byte the kernel's (return ARGV[1] for a value, return false for a miss,
 * redis.status_reply('OK'), redis.error_reply(...), tonumber(ARGV[1]) for
 * an integer, {double=...} for a score, return ARGV for an array, and a
 * script that pairs members and scores for ZRANGE WITHSCORES on a
 * connection that sent HELLO 3), and passed behind the earlier requests.
 * Such replies follow the connection's protocol, RESP2 or RESP3.
 *
 * A request the parser cannot frame (a bad '*' or '$' line) switches its
 * connection to raw passthrough for the rest of its life: every byte goes
 * on to redis-server in order, which answers its own protocol error.
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include "kflex.h"

KFLEX_HEAP(rd_heap, 1 << 30);
#define DS_HEAP rd_heap
#include "ds/zset.h"

/* Set by the loader before loading. */
const volatile __u16 rd_port = 6969;
const volatile __u32 rd_max_value = 65536;
/* 0: the GET/SET family (--kmemcache); 1: the sorted sets (--kredis). */
const volatile __u32 rd_zset;
/* rd_big's values hold rd_big_mask + 1 bytes (a power of two, at least
 * rd_max_value) and a spare word. */
const volatile __u32 rd_big_mask = 65535;

#define RD_MSG_MAX 8192		/* bytes of one framed message (a chunk) */
#define RD_ARGS_MAX 1024	/* arguments of a framed request */
#define RD_INLINE_MAX 1024	/* bytes of an inline command */
#define RD_HDR 32		/* bytes of a '*' or '$' line we read */
#define RD_BUF 8192		/* scratch buffers (a power of two, >= RD_MSG_MAX) */
#define RD_OWN_ARGS 8		/* arguments of an owned request we look at */
#define RD_CMD_NAME 32		/* bytes of a command name in rd_cmds */

#define TCP_CLOSE_STATE 7	/* enum tcp_state's TCP_CLOSE */

/* Statistics, per CPU; kflex-load sums them. Keep in sync with the loader
 * (loader/src/redis.rs, COUNTERS). */
struct rd_stats {
	__u64 conns;		/* connections offloaded */
	__u64 requests;		/* requests framed (chunked ones once) */
	__u64 gets;		/* GET executed */
	__u64 hits;		/* of those, found */
	__u64 sets;		/* SET stored */
	__u64 passed;		/* requests passed to redis-server */
	__u64 eval_routed;	/* owned requests answered through EVAL */
	__u64 refused;		/* owned requests answered with an error */
	__u64 raw_conns;	/* connections switched to raw passthrough */
	__u64 lock_timeouts;	/* bucket lock or loop budget ran out */
	__u64 store_failures;	/* values the heap could not hold */
	__u64 reply_failures;	/* replies the skb could not be turned into
				 * (the connection then passes) */
	__u64 held_refused;	/* other commands refused on keys the offload
				 * holds */
	__u64 zwrites;		/* ZADD and ZREM executed */
	__u64 zreads;		/* ZCARD, ZSCORE and ZRANGE executed */
	__u64 cancelled;	/* runs cancelled (their request went on to
				 * redis-server, an owned one renamed) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rd_stats);
} rd_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} rd_socks SEC(".maps");

/*
 * Per CPU (indexed by CPU number: the loader gives it an entry per possible
 * CPU and sizes its values, rd_big_mask + 9 bytes): a long value on its way
 * from the heap to a reply (rd_get_big()).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 65536 + 8);
} rd_big SEC(".maps");

/* Per-connection state, by socket cookie. */
struct rd_conn {
	__u32 raw;		/* raw passthrough for the rest of its life */
	__u32 passed;		/* a request went on to redis-server */
	/* inside a request framed in chunks: */
	__u32 args_left;	/* arguments whose '$' line is still to come */
	__u32 bulk_left;	/* bytes of the current argument (with its CRLF) */
	__u32 consume;		/* the request is consumed, not passed, and
				 * refused at its end (RD_CONSUME_*) */
	__u32 filled;		/* bytes of the value written to `big` */
	__u64 big;		/* the entry (kv_new_big) that a SET framed
				 * in chunks fills; 0 none */
	__u32 resp3;		/* it switched to RESP3 (HELLO 3) */
	__u32 running;		/* a verdict runs on it: still set at the next
				 * one if that run was cancelled */
};

/* Why a request framed in chunks is consumed. */
#define RD_CONSUME_TOO_LARGE 1	/* an owned one */
#define RD_CONSUME_HELD 2	/* another command on a key the offload holds */
#define RD_CONSUME_BUSY 3	/* the check of its keys could not be made */
#define RD_CONSUME_STORE 4	/* a SET whose value fills c->big */
#define RD_CONSUME_KEY 5	/* a SET whose key the offload cannot hold */
#define RD_CONSUME_OOM 6	/* a SET whose value the heap cannot hold */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct rd_conn);
} rd_conns SEC(".maps");

/*
 * Key positions of redis-server's commands (COMMAND's first key, last key
 * and step; a negative last counts from the end), by lowercase name
 * zero-padded to RD_CMD_NAME bytes. Filled by the loader at attach; commands
 * without keys are not in it.
 */
struct rd_keyspec {
	__s32 first;
	__s32 last;
	__s32 step;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u8[RD_CMD_NAME]);
	__type(value, struct rd_keyspec);
} rd_cmds SEC(".maps");

/* Walks the arguments of the request in sc->req: a multibulk one by its
 * '$' lines, an inline one by the words split() recorded. */
struct rd_cursor {
	__u32 pos;		/* multibulk: the next '$' line */
	__u32 a;		/* arguments taken */
	__u32 nargs;
	__u32 multi;
};

/* Per-CPU scratch: the request, the reply, the arguments. */
struct rd_scratch {
	__u8 req[RD_BUF + 128];
	__u8 rep[RD_BUF + 128];
	__u32 arg_off[RD_OWN_ARGS];
	__u32 arg_len[RD_OWN_ARGS];
	__u32 nargs;		/* arguments split() found (at most RD_OWN_ARGS) */
	__u32 acount;		/* elements of an array reply staged at RD_VAL */
	__u64 upd[SKL_MAX_LEVEL];	/* a skiplist walk's predecessors */
	__u64 rank[SKL_MAX_LEVEL];	/* and their positions */
	__u8 hdr[RD_HDR];
	__u8 name[RD_CMD_NAME];
	__u8 num[32];		/* digits being formatted */
	/* the sorted-set commands' (off the stack: their calls nest) */
	struct rd_cursor cu, pairs;
	struct kv_stats kst;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rd_scratch);
} rd_scratch SEC(".maps");

/* The table (keys to values, or to sorted sets); its buckets are allocated
 * by rd_init. */
struct kv_table rd_table;
/* Sorted sets' members (zset.h), by rd_minit; --kredis only. */
struct kv_table rd_members;

/* Set by the loader when it stops: no new connections, and the offloaded
 * ones pass every request from their next one on. */
__u32 rd_detaching;

/* `x` & `mask`, kept as an AND the verifier sees (the compiler would drop a
 * mask it can prove redundant). */
#define RD_MASK(x, mask)						\
	({								\
		__u32 __x = (x);					\
		barrier_var(__x);					\
		__x & (mask);						\
	})
#define RD_BYTE(buf, i) (((__u8 *)(buf))[RD_MASK(i, RD_BUF - 1)])

static __always_inline struct rd_stats *stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&rd_stats, &zero);
}

#define COUNT(field)					\
	do {						\
		struct rd_stats *__s = stats();		\
		if (__s)				\
			__s->field++;			\
	} while (0)

SEC("sockops")
int rd_sockops(struct bpf_sock_ops *ops)
{
	struct rd_conn fresh = {}, *c;
	__u64 cookie;

	kflex_use_heap(rd_heap);
	switch (ops->op) {
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (ops->local_port != rd_port || rd_detaching)
			return 1;
		cookie = bpf_get_socket_cookie(ops);
		if (bpf_map_update_elem(&rd_conns, &cookie, &fresh, BPF_ANY))
			return 1;
		if (bpf_sock_hash_update(ops, &rd_socks, &cookie, BPF_NOEXIST)) {
			bpf_map_delete_elem(&rd_conns, &cookie);
			return 1;
		}
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags |
					  BPF_SOCK_OPS_STATE_CB_FLAG);
		COUNT(conns);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] != TCP_CLOSE_STATE)
			return 1;
		cookie = bpf_get_socket_cookie(ops);
		c = bpf_map_lookup_elem(&rd_conns, &cookie);
		/* a SET cut off by the close: its value was never linked */
		if (c && c->big)
			kv_drop(&rd_table, (struct kv_entry __arena *)c->big);
		bpf_map_delete_elem(&rd_conns, &cookie);
		break;
	}
	return 1;
}

/*
 * Reads the '*' or '$' line at `pos` of the `len`-byte message: `mark` then
 * a decimal number (a leading '-' allowed) and CRLF. Returns the line's
 * length and the number in *v; 0 when the line is not complete yet; -1 when
 * it is malformed (what redis-server answers with a protocol error).
 */
static __always_inline int read_line(struct __sk_buff *skb, struct rd_scratch *sc, __u32 pos,
				     __u32 len, __u8 mark, __s64 *v)
{
	__u32 n = len - pos, i;
	__s64 val = 0;
	bool neg = false;
	__u8 c;

	if (pos >= len)
		return 0;
	if (n > RD_HDR)
		n = RD_HDR;
	/* 1..RD_HDR, in a form the verifier bounds */
	n = RD_MASK(n - 1, RD_HDR - 1) + 1;
	if (bpf_skb_load_bytes(skb, pos, sc->hdr, n))
		return -1;
	if (sc->hdr[0] != mark)
		return -1;
	bpf_for(i, 1, RD_HDR) {
		if (i >= n)
			return n >= RD_HDR ? -1 : 0;
		c = sc->hdr[RD_MASK(i, RD_HDR - 1)];
		if (c == '-' && i == 1) {
			neg = true;
			continue;
		}
		if (c == '\r') {
			if (i + 1 >= n)
				return n >= RD_HDR ? -1 : 0;
			if (sc->hdr[RD_MASK(i + 1, RD_HDR - 1)] != '\n' || i == 1 + (__u32)neg)
				return -1;
			*v = neg ? -val : val;
			return i + 2;
		}
		if (c < '0' || c > '9' || val > (1LL << 40))
			return -1;
		val = val * 10 + (c - '0');
	}
	return -1;
}

/* Where framing stopped. */
struct rd_walk {
	__u32 end;		/* bytes framed */
	__u32 args_left;	/* as in struct rd_conn, at `end` */
	__u32 bulk_left;
	__s32 status;		/* 1 request complete, 0 need more, -1 bad */
};

/*
 * Walks a multibulk request from the state (`args_left`, `bulk_left`) at
 * offset `pos` of the `len`-byte message, at most up to `limit` bytes:
 * status 1 with `end` just past the request, or `end` = the last boundary
 * before `limit` (a chunk) with the state there, 0 if more bytes are needed
 * first, -1 if malformed.
 */
static __always_inline void walk(struct __sk_buff *skb, struct rd_scratch *sc, __u32 pos,
				 __u32 len, __u32 args_left, __u32 bulk_left, __u32 limit,
				 struct rd_walk *w)
{
	__s64 v;
	int n;
	__u32 i;

	w->status = 0;
	/* the rest of the current argument */
	if (bulk_left) {
		if (pos + bulk_left > limit) {
			w->end = limit;
			w->args_left = args_left;
			w->bulk_left = bulk_left - (limit - pos);
			return;
		}
		pos += bulk_left;
	}
	bpf_for(i, 0, RD_ARGS_MAX) {
		if (!args_left) {
			w->status = 1;
			w->end = pos;
			w->args_left = 0;
			w->bulk_left = 0;
			return;
		}
		v = 0;
		n = read_line(skb, sc, pos, len, '$', &v);
		if (n < 0 || (n > 0 && (v < 0 || v > (512 << 20)))) {
			w->status = -1;
			return;
		}
		if (n == 0) {
			/* a '$' line not complete yet: frame up to it when it
			 * may cross the limit, else wait for it */
			if (pos + RD_HDR > limit)
				goto chunk;
			return;
		}
		args_left--;
		if (pos + n + v + 2 > limit) {
			if (pos + n > limit)
				goto chunk;
			w->end = limit;
			w->args_left = args_left;
			w->bulk_left = (pos + n + v + 2) - limit;
			return;
		}
		pos += n + v + 2;
	}
	w->status = -1;
	return;
chunk:
	w->end = pos;
	w->args_left = args_left;
	w->bulk_left = 0;
	if (!pos)
		w->status = -1;
}

/* The state of the connection whose socket cookie is `cookie`. */
static __always_inline struct rd_conn *conn_of(__u64 cookie)
{
	return bpf_map_lookup_elem(&rd_conns, &cookie);
}

static __always_inline void go_raw(struct rd_conn *c)
{
	if (!c->raw) {
		c->raw = 1;
		COUNT(raw_conns);
	}
}

SEC("sk_skb/stream_parser")
int rd_parse(struct __sk_buff *skb)
{
	__u32 zero = 0, len = skb->len, i, n;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct rd_conn *c = conn_of(bpf_get_socket_cookie(skb));
	struct rd_walk w = {};
	__s64 v;
	int h;

	if (!len)
		return 0;
	if (c && rd_detaching && !c->args_left && !c->bulk_left)
		c->raw = 1;
	if (!c || !sc || c->raw)
		return len > RD_MSG_MAX ? RD_MSG_MAX : len;
	if (c->args_left || c->bulk_left) {
		walk(skb, sc, 0, len, c->args_left, c->bulk_left, RD_MSG_MAX, &w);
		if (w.status < 0)
			goto bad;
		return w.end;
	}
	if (bpf_skb_load_bytes(skb, 0, sc->hdr, 1))
		return 0;
	if (sc->hdr[0] != '*') {
		/* an inline command: up to '\n' */
		n = len < RD_INLINE_MAX ? len : RD_INLINE_MAX;
		bpf_for(i, 0, RD_INLINE_MAX / RD_HDR) {
			__u32 k, m, at = i * RD_HDR;

			if (at >= n)
				break;
			m = n - at;
			if (m > RD_HDR)
				m = RD_HDR;
			m = RD_MASK(m - 1, RD_HDR - 1) + 1;
			if (bpf_skb_load_bytes(skb, at, sc->hdr, m))
				return 0;
			bpf_for(k, 0, RD_HDR) {
				if (k >= m)
					break;
				if (sc->hdr[RD_MASK(k, RD_HDR - 1)] == '\n')
					return at + k + 1;
			}
		}
		if (len < RD_INLINE_MAX)
			return 0;
		goto bad;
	}
	v = 0;
	h = read_line(skb, sc, 0, len, '*', &v);
	if (h == 0)
		return 0;
	if (h < 0 || v > RD_ARGS_MAX)
		goto bad;
	if (v <= 0)
		return h;	/* redis-server skips an empty or null array */
	walk(skb, sc, h, len, v, 0, RD_MSG_MAX, &w);
	if (w.status < 0)
		goto bad;
	return w.end;
bad:
	go_raw(c);
	return len > RD_MSG_MAX ? RD_MSG_MAX : len;
}

/* Whether the `len` bytes at `off` of the request in sc->req are the word
 * `w`, in any case (an upper-case string literal of at most 10 bytes). */
#define WORD_IS(sc, off, len, w) word_is(sc, off, len, w, sizeof(w) - 1)
static __always_inline bool word_is(struct rd_scratch *sc, __u32 off, __u32 len, const char *w,
				    __u32 n)
{
	__u32 i;
	__u8 c;

	if (len != n)
		return false;
	for (i = 0; i < 10; i++) {
		if (i >= n)
			break;
		c = RD_BYTE(sc->req, off + i);
		if (c >= 'a' && c <= 'z')
			c -= 'a' - 'A';
		if (c != (__u8)w[i])
			return false;
	}
	return true;
}

/* Whether argument `a` (of the first RD_OWN_ARGS, see split()) is the word
 * `w`. */
#define ARG_IS(sc, a, w)							\
	WORD_IS(sc, sc->arg_off[RD_MASK(a, RD_OWN_ARGS - 1)],			\
		sc->arg_len[RD_MASK(a, RD_OWN_ARGS - 1)], w)

/*
 * The number on the '*' or '$' line at `pos` of the request in sc->req
 * (checked by the parser) into *n; returns where the next line starts, 0
 * when no CR ends it within 24 bytes.
 */
static __always_inline __u32 count_line(struct rd_scratch *sc, __u32 pos, __u32 *n)
{
	__u32 i, v = 0;
	__u8 c;

	bpf_for(i, pos + 1, pos + 24) {
		c = RD_BYTE(sc->req, i);
		if (c == '\r') {
			*n = v;
			return i + 2;
		}
		v = v * 10 + (c - '0');
	}
	return 0;
}

/*
 * Splits the request in sc->req (`len` bytes) into arguments: a multibulk
 * request by its '$' lines, an inline one at spaces. Returns the number of
 * arguments (at most RD_OWN_ARGS are recorded), or -1 when the inline form
 * has quotes (redis-server's own splitting, which this does not do).
 */
static __always_inline int split(struct rd_scratch *sc, __u32 len)
{
	__u32 pos = 0, i, k, off, v, nargs = 0, total = 0;
	bool inword = false;
	__u8 c;

	if (RD_BYTE(sc->req, 0) == '*') {
		/* '*' line: already checked by the parser */
		pos = count_line(sc, 0, &total);
		bpf_for(k, 0, RD_OWN_ARGS) {
			if (k >= total || !pos)
				break;
			off = count_line(sc, pos, &v);
			if (!off)
				break;
			sc->arg_off[RD_MASK(k, RD_OWN_ARGS - 1)] = off;
			sc->arg_len[RD_MASK(k, RD_OWN_ARGS - 1)] = v;
			pos = off + v + 2;
			nargs++;
		}
		sc->nargs = nargs;
		return total;
	}
	/* inline: words separated by spaces, up to CR or LF */
	bpf_for(i, 0, RD_INLINE_MAX) {
		if (i >= len)
			break;
		c = RD_BYTE(sc->req, i);
		if (c == '\r' || c == '\n')
			break;
		if (c == '"' || c == '\'')
			return -1;
		if (c == ' ') {
			if (inword) {
				sc->arg_len[RD_MASK(nargs, RD_OWN_ARGS - 1)] = i - pos;
				inword = false;
				nargs++;
			}
			continue;
		}
		if (!inword) {
			if (nargs >= RD_OWN_ARGS)
				return RD_OWN_ARGS + 1;
			sc->arg_off[RD_MASK(nargs, RD_OWN_ARGS - 1)] = i;
			pos = i;
			inword = true;
		}
	}
	if (inword) {
		if (nargs >= RD_OWN_ARGS)
			return RD_OWN_ARGS + 1;
		sc->arg_len[RD_MASK(nargs, RD_OWN_ARGS - 1)] = i - pos;
		nargs++;
	}
	sc->nargs = nargs;
	return nargs;
}

/* Appends string literal `s` (at most 96 bytes) to the reply at *rlen. */
#define PUT(sc, rlen, s)							\
	do {									\
		_Static_assert(sizeof(s) - 1 <= 96, "literal too long");	\
		__builtin_memcpy(&(sc)->rep[RD_MASK(*(rlen), RD_BUF - 1)], s,		\
				 sizeof(s) - 1);				\
		*(rlen) += sizeof(s) - 1;					\
	} while (0)

/* Appends the decimal form of `v` (below 10^7: lengths and sizes), without
 * a loop, so that the verifier's paths stay few. */
static __always_inline void put_u64(struct rd_scratch *sc, __u32 *rlen, __u32 v)
{
	__u32 at = *rlen, d;

	if (v > 9999999)
		v = 9999999;
	d = v >= 1000000 ? 7 : v >= 100000 ? 6 : v >= 10000 ? 5 : v >= 1000 ? 4 :
	    v >= 100 ? 3 : v >= 10 ? 2 : 1;
	RD_BYTE(sc->rep, at + d - 1) = '0' + v % 10;
	if (d > 1)
		RD_BYTE(sc->rep, at + d - 2) = '0' + v / 10 % 10;
	if (d > 2)
		RD_BYTE(sc->rep, at + d - 3) = '0' + v / 100 % 10;
	if (d > 3)
		RD_BYTE(sc->rep, at + d - 4) = '0' + v / 1000 % 10;
	if (d > 4)
		RD_BYTE(sc->rep, at + d - 5) = '0' + v / 10000 % 10;
	if (d > 5)
		RD_BYTE(sc->rep, at + d - 6) = '0' + v / 100000 % 10;
	if (d > 6)
		RD_BYTE(sc->rep, at) = '0' + v / 1000000 % 10;
	*rlen = at + d;
}

/* "<count>\r\n$4\r\nEVAL\r\n$<len>\r\n<script>\r\n$1\r\n0\r\n": an EVAL
 * of `script` with no keys (its argument, if any, follows). */
#define EVAL_HEAD(sc, rlen, count, script)					\
	do {									\
		PUT(sc, rlen, count "\r\n$4\r\nEVAL\r\n$");			\
		put_u64(sc, rlen, sizeof(script) - 1);				\
		PUT(sc, rlen, "\r\n" script "\r\n$1\r\n0\r\n");		\
	} while (0)

/* Reply kinds, so that EVAL can reproduce them. */
enum rd_reply {
	RD_BULK,	/* the value, in sc->rep from RD_VAL */
	RD_NIL,
	RD_OK,
	RD_ERR,		/* the message (without "-" and CRLF) at sc->rep + RD_VAL */
	RD_INT,		/* the digits at sc->rep + RD_VAL */
	RD_ARRAY,	/* sc->acount bulk strings, encoded, at sc->rep + RD_VAL */
	RD_DOUBLE,	/* a score's digits at sc->rep + RD_VAL: a bulk string in
			 * RESP2, a double in RESP3 */
	RD_PAIRS,	/* RD_ARRAY of members and scores: flat in RESP2, pairs of
			 * a bulk string and a double in RESP3 */
};
/* How a reply goes back: from the kernel (RESP2), or through an EVAL on a
 * connection in RESP2 or RESP3 (rd_conn.resp3). */
#define RD_DIRECT 0
#define RD_EVAL2 1
#define RD_EVAL3 2
/* Where a value or an error message is staged in sc->rep. */
#define RD_VAL 1024	/* kv.h masks offsets to KV_OFF_MASK */
/* The most bytes staged there: a reply stays within rewrite()'s 4096. */
#define RD_STAGE_MAX 3968

/*
 * Writes the head of the final reply (or of its EVAL) of `kind` for `n`
 * bytes to sc->rep from 0: all of it for RD_NIL and RD_OK, else what
 * precedes the `n` bytes (at most 128 bytes: staged bytes up to RD_STAGE_MAX
 * after it keep a reply within rewrite()'s 4096). Returns its length.
 */
static __always_inline __u32 build_head(struct rd_scratch *sc, enum rd_reply kind, __u32 n,
					__u32 eval)
{
	__u32 rlen = 0;
	bool bulk = true;	/* the staged bytes are one argument or value */

	if (!eval) {
		switch (kind) {
		case RD_NIL:
			PUT(sc, &rlen, "$-1\r\n");
			return rlen;
		case RD_OK:
			PUT(sc, &rlen, "+OK\r\n");
			return rlen;
		case RD_ERR:
			PUT(sc, &rlen, "-");
			break;
		case RD_INT:
			PUT(sc, &rlen, ":");
			break;
		case RD_BULK:
		case RD_DOUBLE:
			PUT(sc, &rlen, "$");
			put_u64(sc, &rlen, n);
			PUT(sc, &rlen, "\r\n");
			break;
		case RD_ARRAY:
		case RD_PAIRS:
			PUT(sc, &rlen, "*");
			put_u64(sc, &rlen, sc->acount);
			PUT(sc, &rlen, "\r\n");
			bulk = false;
			break;
		}
	} else if (kind == RD_PAIRS && eval == RD_EVAL3) {
		/* the elements are the script's arguments, paired by it */
		PUT(sc, &rlen, "*");
		put_u64(sc, &rlen, 3 + sc->acount);
		PUT(sc, &rlen, "\r\n$4\r\nEVAL\r\n$89\r\n");
		PUT(sc, &rlen, "local r={} for i=1,#ARGV,2 do r[#r+1]={ARGV[i],{double=tonumber(ARGV[i+1])}} end return r");
		PUT(sc, &rlen, "\r\n$1\r\n0\r\n");
		return rlen;
	} else {
		switch (kind) {
		case RD_NIL:
			EVAL_HEAD(sc, &rlen, "*3", "return false");
			return rlen;
		case RD_OK:
			EVAL_HEAD(sc, &rlen, "*3", "return redis.status_reply('OK')");
			return rlen;
		case RD_ERR:
			EVAL_HEAD(sc, &rlen, "*4", "return redis.error_reply(ARGV[1])");
			break;
		case RD_INT:
			EVAL_HEAD(sc, &rlen, "*4", "return tonumber(ARGV[1])");
			break;
		case RD_BULK:
			EVAL_HEAD(sc, &rlen, "*4", "return ARGV[1]");
			break;
		case RD_DOUBLE:
			/* Redis prints a double to a RESP2 client as the bulk
			 * string of its %.17g, as its own ZSCORE does */
			EVAL_HEAD(sc, &rlen, "*4", "return {double=tonumber(ARGV[1])}");
			break;
		case RD_ARRAY:
		case RD_PAIRS:
			/* the elements are the script's arguments */
			PUT(sc, &rlen, "*");
			put_u64(sc, &rlen, 3 + sc->acount);
			PUT(sc, &rlen, "\r\n$4\r\nEVAL\r\n$11\r\nreturn ARGV\r\n$1\r\n0\r\n");
			bulk = false;
			break;
		}
		if (bulk) {
			PUT(sc, &rlen, "$");
			put_u64(sc, &rlen, n);
			PUT(sc, &rlen, "\r\n");
		}
	}
	return rlen;
}

/*
 * Writes the final reply (or its EVAL) to sc->rep from 0, from what is
 * staged at RD_VAL (`n` bytes). Returns its length.
 */
static __always_inline __u32 build(struct rd_scratch *sc, enum rd_reply kind, __u32 n, __u32 eval)
{
	__u32 rlen, i, hdr;

	if (kind == RD_NIL || kind == RD_OK)
		return build_head(sc, kind, n, eval);
	/* the staged bytes follow the header */
	hdr = rlen = build_head(sc, kind, n, eval);
	bpf_for(i, 0, KV_WORDS(n)) {
		if (i >= RD_STAGE_MAX / 8)
			break;
		*(__u64 *)&sc->rep[RD_MASK(hdr + i * 8, RD_BUF - 1)] =
			*(__u64 *)&sc->rep[RD_MASK(RD_VAL + i * 8, RD_BUF - 1)];
	}
	rlen += n;
	if (kind != RD_ARRAY && kind != RD_PAIRS)
		PUT(sc, &rlen, "\r\n");
	return rlen;
}

/* Stages error message `s` (a literal) at RD_VAL; returns its length. */
#define STAGE(sc, s)								\
	({									\
		__u32 __at = RD_VAL;						\
		PUT(sc, &__at, s);						\
		(__u32)(sizeof(s) - 1);						\
	})

/* Redis's arity error for the command in argument 0 (an owned one: at
 * most 8 bytes). */
static __always_inline __u32 stage_arity(struct rd_scratch *sc)
{
	__u32 at = RD_VAL, i, len = sc->arg_len[0];
	__u8 c;

	PUT(sc, &at, "ERR wrong number of arguments for '");
	/* Redis prints the command in lower case */
	if (len > 8)
		len = 8;
	for (i = 0; i < 8; i++) {
		if (i >= len)
			break;
		c = RD_BYTE(sc->req, sc->arg_off[0] + i);
		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A';
		RD_BYTE(sc->rep, at + i) = c;
	}
	at += len;
	PUT(sc, &at, "' command");
	return at - RD_VAL;
}

/*
 * Turns the skb (the `len`-byte request) into the `rlen`-byte reply in
 * sc->rep. Returns 0, or -1 when the skb cannot be resized.
 */
static __always_inline int rewrite(struct __sk_buff *skb, struct rd_scratch *sc, __u32 len,
				   __u32 rlen)
{
	__s32 diff = (__s32)rlen - (__s32)len;
	__u32 i, off, n;

	if (rlen > 4096 || len > RD_MSG_MAX)
		return -1;
	/* at most 4095 bytes per call: a request of up to RD_MSG_MAX bytes
	 * shrinks in at most three */
	if (diff < -4095) {
		if (bpf_skb_adjust_room(skb, -4095, 0, 0))
			return -1;
		diff += 4095;
	}
	if (diff < -4095) {
		if (bpf_skb_adjust_room(skb, -4095, 0, 0))
			return -1;
		diff += 4095;
	}
	if (diff < -4095 || diff > 4095)
		return -1;
	if (diff && bpf_skb_adjust_room(skb, diff, 0, 0))
		return -1;
	for (i = 0; i < 4; i++) {
		off = i * 1024;
		if (off >= rlen)
			break;
		n = rlen - off;
		if (n > 1024)
			n = 1024;
		n = RD_MASK(n - 1, 1023) + 1;
		if (bpf_skb_store_bytes(skb, off, &sc->rep[RD_MASK(off, 4095)], n, 0))
			return -1;
	}
	return 0;
}

/*
 * Turns the skb (the request) into the reply of `kind` from what is staged
 * at RD_VAL (`n` bytes), or into its EVAL when `eval`. A global function:
 * the verifier checks it once, not once per way of reaching it. Returns 0,
 * or -1 when the skb could not be rewritten.
 */
__noinline int rd_answer(struct __sk_buff *skb, __u32 kind, __u32 n, __u32 eval)
{
	__u32 zero = 0, rlen;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);

	if (!skb || !sc || n > RD_STAGE_MAX)
		return -1;
	rlen = build(sc, kind, n, eval);
	return rewrite(skb, sc, skb->len, rlen);
}

/*
 * GET of a value longer than KV_ITEM_MAX (kv_get() found it too big to
 * stage): the value is copied from the heap to this CPU's rd_big under the
 * bucket lock (a SET on another CPU can neither free nor replace it
 * half-way); then the skb becomes the reply (or its EVAL) at its full
 * length in three stores, with no loop after the skb has changed: a run
 * cancelled before that leaves the request as it was. Returns 0 answered,
 * 1 the key is absent (replaced by then), -1 busy (the lock or the loop
 * budget, or no memory for the reply: the skb is then back to the
 * request's length).
 */
__noinline int rd_get_big(struct __sk_buff *skb, __u32 eval)
{
	__u32 zero = 0, klen, koff, hdr, ilen = 0, i, old, cpu = bpf_get_smp_processor_id();
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	__u8 *buf = bpf_map_lookup_elem(&rd_big, &cpu);
	struct kv_entry __arena *e;
	struct hm_bucket __arena *b;
	__u8 __arena *item;
	bool busy = false;
	__u64 h;
	int ret = -1;

	if (!skb || !sc || !buf)
		return -1;
	old = skb->len;
	klen = sc->arg_len[1];
	koff = sc->arg_off[1];
	if (!klen || klen > KV_KEY_MAX || koff > KV_OFF_MASK)
		return 1;
	h = kv_hash(sc->req, koff, klen);
	b = hm_bucket_of(&rd_table.m, h);
	if (hm_lock(&b->lock))
		return -1;
	e = kv_find_locked(&rd_table, b, h, sc->req, koff, klen, 0, &busy, &sc->kst);
	if (busy)
		goto out;
	if (!e) {
		ret = 1;
		goto out;
	}
	ilen = e->ilen;
	if (!ilen || ilen > rd_big_mask + 1 || ilen > KV_BIG_MAX)
		goto out;
	item = kv_item(e);
	bpf_for(i, 0, KV_WORDS(ilen)) {
		if (i >= KV_BIG_MAX / 8)
			break;
		*(__u64 *)&buf[RD_MASK(i * 8, rd_big_mask)] = *(__u64 __arena *)(item + i * 8);
	}
	ret = 0;
out:
	hm_unlock(&b->lock);
	if (ret || !ilen)
		return ret;
	hdr = build_head(sc, RD_BULK, ilen, eval);
	if (hdr > 96 || bpf_skb_change_tail(skb, hdr + ilen + 2, 0))
		return -1;
	sc->rep[hdr] = '\r';
	sc->rep[RD_MASK(hdr + 1, 127)] = '\n';
	if (bpf_skb_store_bytes(skb, hdr + ilen, &sc->rep[RD_MASK(hdr, 127)], 2, 0) ||
	    bpf_skb_store_bytes(skb, hdr, buf, RD_MASK(ilen - 1, rd_big_mask) + 1, 0) ||
	    bpf_skb_store_bytes(skb, 0, sc->rep, RD_MASK(hdr - 1, 127) + 1, 0)) {
		/* the caller answers "busy" by rewriting the skb from this
		 * length */
		bpf_skb_change_tail(skb, old, 0);
		return -1;
	}
	return 0;
}

/*
 * Whether the key `klen` bytes at `off` of the request in the scratch
 * buffer is in the table: 1 yes, 0 no, -1 a bucket lock or the loop budget
 * ran out. A key beyond the table's reach in the request (KV_OFF_MASK) is
 * first copied to the start of the reply buffer.
 */
static __always_inline int held_key(struct rd_scratch *sc, __u32 off, __u32 klen)
{
	struct kv_stats st = {};
	struct kv_found f = {};
	bool too_big = false;
	void *kbuf = sc->req;
	__u64 set;
	__u32 i;
	int r;

	if (!klen || klen > KV_KEY_MAX)
		return 0;
	if (off > KV_OFF_MASK) {
		bpf_for(i, 0, KV_KEY_MAX) {
			if (i >= klen)
				break;
			sc->rep[RD_MASK(i, KV_KEY_MAX - 1)] = RD_BYTE(sc->req, off + i);
		}
		kbuf = sc->rep;
		off = 0;
	}
	/* kv.h masks the offset; keep the compiler from proving it need not */
	barrier_var(off);
	/* sorted sets: held while the set has members */
	if (rd_zset) {
		set = kv_peek_word(&rd_table, kbuf, off, klen);
		return set && ((struct zs_set __arena *)set)->count > 0;
	}
	/* values: cap 0, the item is not copied, found counts as too big */
	r = kv_get(&rd_table, kbuf, off, klen, 0, sc->rep, RD_VAL, 0, &f, &too_big, &st);
	if (r < 0)
		return -1;
	return r > 0 || too_big;
}

/*
 * Whether a key argument of the request in the scratch buffer (a command
 * the offload does not own, `nargs` arguments) names a key the table holds,
 * by the command's key positions in rd_cmds (the loader widens commands
 * whose keys move, and container commands, to every argument after the
 * name or subcommand). A multibulk request is walked whole; of an inline
 * one the first RD_OWN_ARGS words are looked at. A global function: the
 * verifier checks it once. Returns 1 held, 0 not (or not a known command
 * with keys), -1 a bucket lock or the loop budget ran out.
 */
__noinline int rd_held(int nargs, __u32 len)
{
	__u32 zero = 0, i, nlen, pos, off, v, step;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct rd_keyspec *ks;
	int a, first, last, r;
	__u8 ch;

	if (!sc || nargs < 2)
		return 0;
	nlen = sc->arg_len[0];
	if (!nlen || nlen > RD_CMD_NAME)
		return 0;
	__builtin_memset(sc->name, 0, sizeof(sc->name));
	bpf_for(i, 0, RD_CMD_NAME) {
		if (i >= nlen)
			break;
		ch = RD_BYTE(sc->req, sc->arg_off[0] + i);
		if (ch >= 'A' && ch <= 'Z')
			ch += 'a' - 'A';
		sc->name[RD_MASK(i, RD_CMD_NAME - 1)] = ch;
	}
	ks = bpf_map_lookup_elem(&rd_cmds, sc->name);
	if (!ks || ks->first < 1)
		return 0;
	first = ks->first;
	last = ks->last < 0 ? nargs + ks->last : ks->last;
	step = ks->step > 0 ? ks->step : 1;
	if (RD_BYTE(sc->req, 0) != '*') {
		/* inline: the words split() recorded */
		bpf_for(a, first, RD_OWN_ARGS) {
			if (a > last || a >= nargs)
				break;
			if ((a - first) % step)
				continue;
			r = held_key(sc, sc->arg_off[RD_MASK(a, RD_OWN_ARGS - 1)],
				     sc->arg_len[RD_MASK(a, RD_OWN_ARGS - 1)]);
			if (r)
				return r;
		}
		return 0;
	}
	/* multibulk: past the '*' line (checked by the parser), then each
	 * argument's '$' line and bytes */
	pos = count_line(sc, 0, &v);
	bpf_for(a, 0, RD_ARGS_MAX) {
		if (!pos || a > last || a >= nargs || pos >= len || pos >= RD_MSG_MAX)
			break;
		off = count_line(sc, pos, &v);
		/* only what the message holds (a chunk ends before the rest) */
		if (!off || off + v > len)
			break;
		pos = off + v + 2;
		if (a < first || (a - first) % step)
			continue;
		r = held_key(sc, off, v);
		if (r)
			return r;
	}
	return 0;
}

/*
 * The sorted-set commands (--kredis). Each is a global function (the
 * verifier checks it once) that reads the request from the scratch buffer
 * and stages the reply at RD_VAL; it returns REPLY(kind, staged bytes),
 * or -1 when a lock was not taken or the loop budget ran out.
 *
 * Layout of sc->rep while one runs (below RD_VAL): the member-table key
 * (the set's address, then the member) from 0, a copy of the command's
 * key from RD_ZKEY, the set's address (the key table's item) at RD_ZSET,
 * a score (the member table's item) at RD_ZSCORE, the address of a member's
 * entry in the member table at RD_ZENTRY.
 */
#define RD_ZKEY 272
#define RD_ZSET 768
#define RD_ZSCORE 776
#define RD_ZENTRY 784
#define REPLY(kind, n) (((kind) << 16) | (n))
#define RD_GET_BIG -2
#define ERR_REPLY(sc, s) REPLY(RD_ERR, STAGE(sc, s))

/* ZADD's options. */
#define ZF_NX 1
#define ZF_XX 2
#define ZF_GT 4
#define ZF_LT 8
#define ZF_CH 16
#define ZF_INCR 32

static __always_inline void cur_init(struct rd_scratch *sc, struct rd_cursor *cu, int nargs)
{
	__u32 v;

	cu->a = 0;
	cu->nargs = nargs;
	cu->multi = RD_BYTE(sc->req, 0) == '*';
	cu->pos = cu->multi ? count_line(sc, 0, &v) : 0;
}

/* The next argument's offset and length: false when there is none. A
 * global function: the verifier does not follow the count of arguments
 * taken through the callers' loops. */
__noinline bool cur_next(struct rd_scratch *sc, struct rd_cursor *cu, __u32 *off, __u32 *len)
{
	__u32 o;

	if (!sc || !cu || !off || !len)
		return false;
	if (cu->a >= cu->nargs)
		return false;
	if (!cu->multi) {
		if (cu->a >= RD_OWN_ARGS)
			return false;
		*off = sc->arg_off[RD_MASK(cu->a, RD_OWN_ARGS - 1)];
		*len = sc->arg_len[RD_MASK(cu->a, RD_OWN_ARGS - 1)];
		cu->a++;
		return true;
	}
	if (!cu->pos || cu->pos >= RD_MSG_MAX)
		return false;
	o = count_line(sc, cu->pos, len);
	if (!o)
		return false;
	*off = o;
	cu->pos = o + *len + 2;
	cu->a++;
	return true;
}

/*
 * A Redis integer (string2ll's form: "0", or an optional '-' and digits
 * without a leading zero) at `off`, `len` bytes, into *v: 0, or -1 if it is
 * not one or does not fit in 64 bits.
 */
__noinline int rd_parse_ll(struct rd_scratch *sc, __u32 off, __u32 len, __s64 *v)
{
	__u64 u = 0;
	__u32 i, neg;
	__u8 c;

	if (!sc || !v || !len || len > 20)
		return -1;
	neg = RD_BYTE(sc->req, off) == '-';
	if (neg && len == 1)
		return -1;
	if (RD_BYTE(sc->req, off + neg) == '0' && len > 1)
		return -1;
	bpf_for(i, 0, 20) {
		if (i + neg >= len)
			break;
		c = RD_BYTE(sc->req, off + neg + i);
		if (c < '0' || c > '9' || u > 922337203685477580ULL)
			return -1;
		u = u * 10 + (c - '0');
	}
	if (u > (neg ? 9223372036854775808ULL : 9223372036854775807ULL))
		return -1;
	*v = neg ? -(__s64)u : (__s64)u;
	return 0;
}

/*
 * A ZADD score at `off` (`len` bytes) into *v: 0 an integer within
 * +/-ZS_SCORE_MAX (an optional sign and digits, not -0), 1 a number the
 * offload does not take (a fraction, an exponent, an infinity, -0, a hex
 * form, a larger integer), 2 not a number at all: what Redis's strtod-based
 * string2d() refuses ("not a valid float").
 */
__noinline int rd_parse_score(struct rd_scratch *sc, __u32 off, __u32 len, __s64 *v)
{
	/* seen: 1 digits, 2 '.', 4 'e', 8 exponent digits, 16 not a number */
	__u32 i, sign, seen = 0, at = 0;
	__u64 u = 0;
	__u8 c;

	if (!sc || !v || !len)
		return 2;
	if (len > 512)
		return 1;
	c = RD_BYTE(sc->req, off);
	sign = c == '-' || c == '+';
	if (len > sign + 1 && RD_BYTE(sc->req, off + sign) == '0' &&
	    (RD_BYTE(sc->req, off + sign + 1) | 0x20) == 'x')
		return 1;	/* a hex float (strtod's); not taken */
	bpf_for(i, 0, 512) {
		if (i >= len)
			break;
		c = RD_BYTE(sc->req, off + i);
		if (i < sign)
			continue;
		if (c >= '0' && c <= '9') {
			seen |= (seen & 4) ? 8 : 1;
			if (!(seen & 6) && u <= ZS_SCORE_MAX)
				u = u * 10 + (c - '0');
		} else if (c == '.' && !(seen & 6)) {
			seen |= 2;
		} else if ((c == 'e' || c == 'E') && (seen & 1) && !(seen & 4)) {
			seen |= 4;
			at = i;
		} else if ((c == '-' || c == '+') && (seen & 4) && !(seen & 8) &&
			   i == at + 1) {
			continue;
		} else {
			seen |= 16;
		}
	}
	if (seen == 1 && u <= ZS_SCORE_MAX &&
	    !(u == 0 && RD_BYTE(sc->req, off) == '-')) {
		*v = RD_BYTE(sc->req, off) == '-' ? -(__s64)u : (__s64)u;
		return 0;
	}
	/* digits, with an exponent only if it has digits: a number */
	if (!(seen & 16) && (seen & 1) && (!(seen & 4) || (seen & 8)))
		return 1;
	/* inf, +inf, -inf, infinity in any case */
	if (WORD_IS(sc, off + sign, len - sign, "INF") ||
	    WORD_IS(sc, off + sign, len - sign, "INFINITY"))
		return 1;
	return 2;
}

/*
 * Writes the digits of |v| to the end of sc->num; returns how many (1..20).
 * The count comes from the loop's index, which the verifier does not track
 * exactly, so the loop's states converge.
 */
static __always_inline __u32 num_digits(struct rd_scratch *sc, __s64 v)
{
	__u64 u = v < 0 ? -v : v;
	__u32 i, k = 20;

	bpf_for(i, 0, 20) {
		sc->num[RD_MASK(19 - i, 31)] = '0' + u % 10;
		u /= 10;
		if (!u) {
			k = i + 1;
			break;
		}
	}
	return k;
}

/* Characters of the decimal form of `v`. */
__noinline __u32 rd_s64_len(struct rd_scratch *sc, __s64 v)
{
	if (!sc)
		return 1;
	return num_digits(sc, v) + (v < 0);
}

/* Writes the decimal form of `v` at `at` of sc->rep; returns where it
 * ends. */
__noinline __u32 rd_put_s64(struct rd_scratch *sc, __u32 at, __s64 v)
{
	__u32 i, k;

	if (!sc)
		return at;
	k = num_digits(sc, v);
	if (v < 0)
		RD_BYTE(sc->rep, at++) = '-';
	bpf_for(i, 0, 20) {
		if (i >= k)
			break;
		RD_BYTE(sc->rep, at + i) = sc->num[RD_MASK(20 - k + i, 31)];
	}
	return at + k;
}
#define put_s64(sc, at, v) (*(at) = rd_put_s64(sc, *(at), v))

/* An integer reply of `v`. */
static __always_inline int zint(struct rd_scratch *sc, __s64 v)
{
	__u32 at = RD_VAL;

	put_s64(sc, &at, v);
	return REPLY(RD_INT, at - RD_VAL);
}

/* A score as a bulk string (Redis 7.0 prints it with %.17g: the same digits
 * for an integer within +/-2^53). */
static __always_inline int zscore_reply(struct rd_scratch *sc, __s64 v)
{
	__u32 at = RD_VAL;

	put_s64(sc, &at, v);
	return REPLY(RD_DOUBLE, at - RD_VAL);
}

/*
 * Copies the key argument (`off`, `len`) to RD_ZKEY of sc->rep. Returns 0,
 * or an error reply (ZREPLY) for a key the table cannot hold.
 */
__noinline int rd_zkey(struct rd_scratch *sc, __u32 off, __u32 len)
{
	__u32 i;

	if (!sc)
		return -1;
	if (!len)
		return ERR_REPLY(sc, "ERR empty key not supported by the KFlex offload");
	if (len > KV_KEY_MAX)
		return ERR_REPLY(sc, "ERR key too long for the KFlex offload");
	bpf_for(i, 0, KV_WORDS(len)) {
		if (i >= KV_KEY_MAX / 8)
			break;
		KV_WORD(sc->rep, RD_ZKEY + i * 8) = *(__u64 *)&sc->req[RD_MASK(off + i * 8, RD_BUF - 1)];
	}
	return 0;
}

/* The set under the key at RD_ZKEY (`klen` bytes): its address, 0 when
 * there is none. No lock: the key table only ever gains entries. */
__noinline __s64 rd_zset_of(struct rd_scratch *sc, __u32 klen)
{
	if (!sc)
		return -1;
	return (__s64)kv_peek_word(&rd_table, sc->rep, RD_ZKEY, klen);
}

/* The member-table key of the `mlen`-byte member at `off` of the request
 * in set `set`, staged at 0 of sc->rep; the member's score, if it has one,
 * into *score and RD_ZSCORE, its entry's address at RD_ZENTRY: 1 found, 0
 * not, -1 busy. The caller holds the set's lock. */
__noinline int rd_zmember(struct rd_scratch *sc, __u64 set, __u32 off, __u32 mlen, __s64 *score)
{
	struct kv_entry __arena *e;
	bool busy = false;

	if (!sc || !score || mlen > ZS_MEMBER_MAX)
		return -1;
	zs_stage_member(sc->rep, set, sc->req, RD_BUF - 1, off, mlen);
	e = kv_lookup(&rd_members, sc->rep, 0, ZS_MEMBER + mlen, &busy);
	if (busy)
		return -1;
	if (!e)
		return 0;
	*score = (__s64)e->data[KV_WORDS(e->klen) & (KV_KEY_MAX / 8 * 2 - 1)];
	KV_WORD(sc->rep, RD_ZSCORE) = *score;
	KV_WORD(sc->rep, RD_ZENTRY) = (__u64)e;
	return 1;
}

/*
 * The member staged at 0 of sc->rep, new in set `set`, gets `score`: its
 * member-table entry is allocated before its node is linked, so that
 * running out of heap changes nothing. Returns 1, 0 heap exhausted, -1
 * busy. Each of these is a global function: checked once, and the stack of
 * the deepest call chain stays within 512 bytes.
 */
__noinline int rd_zins(struct rd_scratch *sc, __u64 set, __s64 score, __u32 mlen)
{
	struct kv_entry __arena *e;
	int r;

	if (!sc || mlen > ZS_MEMBER_MAX)
		return -1;
	KV_WORD(sc->rep, RD_ZSCORE) = score;
	e = kv_new(&rd_members, sc->rep, 0, ZS_MEMBER + mlen, RD_ZSCORE, 8, 0, 0);
	if (!e)
		return 0;
	r = zs_insert((struct zs_set __arena *)set, score, sc->rep, mlen, sc->upd, sc->rank);
	if (r <= 0) {
		kv_drop(&rd_members, e);
		return r;
	}
	return kv_store(&rd_members, e, 0, 0, &sc->kst) < 0 ? -1 : 1;
}

/*
 * The member staged at 0 of sc->rep, found by rd_zmember() (its score at
 * RD_ZSCORE, its entry at RD_ZENTRY), gets `score`: its node moves
 * (zs_move()) and its entry's one-word score is rewritten in place (ZSCORE
 * copies the old or the new word). Returns 1, or -1.
 */
__noinline int rd_zmove(struct rd_scratch *sc, __u64 set, __s64 score, __u32 mlen)
{
	struct kv_entry __arena *e;

	if (!sc || mlen > ZS_MEMBER_MAX)
		return -1;
	e = (struct kv_entry __arena *)KV_WORD(sc->rep, RD_ZENTRY);
	if (zs_move((struct zs_set __arena *)set, (__s64)KV_WORD(sc->rep, RD_ZSCORE), score,
		    sc->rep, mlen, sc->upd, sc->rank) <= 0)
		return -1;
	e->data[KV_WORDS(e->klen) & (KV_KEY_MAX / 8 * 2 - 1)] = score;
	return 1;
}

/* zs_erase() of the member staged at 0 of sc->rep. */
__noinline int rd_zdel(struct rd_scratch *sc, __u64 set, __s64 score, __u32 mlen)
{
	if (!sc || mlen > ZS_MEMBER_MAX)
		return -1;
	return zs_erase((struct zs_set __arena *)set, score, sc->rep, mlen, sc->upd, sc->rank);
}

/*
 * Creates the set under the key at RD_ZKEY (`klen` bytes), unless another
 * CPU did meanwhile. Returns its address, 0 when the heap is exhausted, -1
 * when busy.
 */
__noinline __s64 rd_zcreate(struct rd_scratch *sc, __u32 klen)
{
	struct zs_set __arena *s;
	struct kv_entry __arena *e;
	__s64 set;
	int r;

	if (!sc)
		return -1;
	s = zs_new();
	if (!s)
		return 0;
	KV_WORD(sc->rep, RD_ZSET) = (__u64)s;
	e = kv_new(&rd_table, sc->rep, RD_ZKEY, klen, RD_ZSET, 8, 0, 0);
	if (!e) {
		zs_drop(s);
		return 0;
	}
	/* mode 1: only if the key is still absent */
	r = kv_store(&rd_table, e, 1, 0, &sc->kst);
	if (r > 0)
		return (__s64)s;
	zs_drop(s);
	if (r < 0)
		return -1;
	/* another CPU's */
	set = rd_zset_of(sc, klen);
	return set > 0 ? set : -1;
}

/* The ZADD option (ZF_*) at `off`, or 0. */
__noinline int rd_zflag(struct rd_scratch *sc, __u32 off, __u32 len)
{
	if (!sc)
		return 0;
	return WORD_IS(sc, off, len, "NX") ? ZF_NX :
	       WORD_IS(sc, off, len, "XX") ? ZF_XX :
	       WORD_IS(sc, off, len, "GT") ? ZF_GT :
	       WORD_IS(sc, off, len, "LT") ? ZF_LT :
	       WORD_IS(sc, off, len, "CH") ? ZF_CH :
	       WORD_IS(sc, off, len, "INCR") ? ZF_INCR : 0;
}

/* ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...] */
__noinline int rd_zadd(int nargs)
{
	__u32 zero = 0, off, len, koff, klen, flags = 0, f, i, elements;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct zs_set __arena *s;
	struct rd_cursor *cu, *pairs;
	__s64 set, score, old, added = 0, changed = 0;
	int r, had, done = 0;

	if (!sc)
		return -1;
	if (nargs < 4)
		return REPLY(RD_ERR, stage_arity(sc));
	cu = &sc->cu;
	pairs = &sc->pairs;
	cur_init(sc, cu, nargs);
	if (!cur_next(sc, cu, &off, &len) || !cur_next(sc, cu, &koff, &klen))
		return -1;
	bpf_for(i, 0, RD_ARGS_MAX) {
		*pairs = *cu;
		if (!cur_next(sc, cu, &off, &len))
			break;
		f = rd_zflag(sc, off, len);
		if (!f) {
			*cu = *pairs;
			break;
		}
		flags |= f;
	}
	*pairs = *cu;
	elements = nargs - cu->a;
	if (!elements || elements % 2)
		return ERR_REPLY(sc, "ERR syntax error");
	elements /= 2;
	if ((flags & ZF_NX) && (flags & ZF_XX))
		return ERR_REPLY(sc, "ERR XX and NX options at the same time are not compatible");
	if (((flags & ZF_GT) && (flags & ZF_NX)) || ((flags & ZF_LT) && (flags & ZF_NX)) ||
	    ((flags & ZF_GT) && (flags & ZF_LT)))
		return ERR_REPLY(sc, "ERR GT, LT, and/or NX options at the same time are not compatible");
	if ((flags & ZF_INCR) && elements > 1)
		return ERR_REPLY(sc, "ERR INCR option supports a single increment-element pair");
	/* every score and member first: an error leaves the set as it was;
	 * Redis's own error (a score that is no number) before the offload's */
	f = 0;
	bpf_for(i, 0, RD_ARGS_MAX / 2) {
		if (i >= elements)
			break;
		if (!cur_next(sc, cu, &off, &len))
			return -1;
		r = rd_parse_score(sc, off, len, &score);
		if (r == 2)
			return ERR_REPLY(sc, "ERR value is not a valid float");
		if (r)
			f |= 1;
		if (!cur_next(sc, cu, &off, &len))
			return -1;
		if (len > ZS_MEMBER_MAX)
			f |= 2;
	}
	if (f & 1)
		return ERR_REPLY(sc, "ERR only integer scores within +/-2^53 are offloaded by KFlex");
	if (f & 2)
		return ERR_REPLY(sc, "ERR member too long for the KFlex offload");
	r = rd_zkey(sc, koff, klen);
	if (r)
		return r;
	set = rd_zset_of(sc, klen);
	if (set < 0)
		return -1;
	if (!set) {
		if (flags & ZF_XX)
			return (flags & ZF_INCR) ? REPLY(RD_NIL, 0) : zint(sc, 0);
		set = rd_zcreate(sc, klen);
		if (set < 0)
			return -1;
		if (!set)
			goto oom;
	}
	s = (struct zs_set __arena *)set;
	if (hm_lock(&s->lock))
		return -1;
	*cu = *pairs;
	bpf_for(i, 0, RD_ARGS_MAX / 2) {
		if (i >= elements)
			break;
		if (!cur_next(sc, cu, &off, &len))
			break;
		rd_parse_score(sc, off, len, &score);
		if (!cur_next(sc, cu, &off, &len))
			break;
		had = rd_zmember(sc, (__u64)s, off, len, &old);
		if (had < 0)
			goto busy;
		if (had) {
			if (flags & ZF_NX)
				continue;
			if (flags & ZF_INCR) {
				score += old;
				if (score > ZS_SCORE_MAX || score < -ZS_SCORE_MAX) {
					hm_unlock(&s->lock);
					return ERR_REPLY(sc, "ERR only integer scores within +/-2^53 are "
						    "offloaded by KFlex");
				}
			}
			if (((flags & ZF_GT) && score <= old) || ((flags & ZF_LT) && score >= old))
				continue;
			done = 1;
			if (score == old)
				continue;
			r = rd_zmove(sc, (__u64)s, score, len);
			if (r < 0)
				goto busy;
			if (!r)
				goto oom_locked;
			changed++;
		} else {
			if (flags & ZF_XX)
				continue;
			done = 1;
			r = rd_zins(sc, (__u64)s, score, len);
			if (r < 0)
				goto busy;
			if (!r)
				goto oom_locked;
			added++;
		}
	}
	hm_unlock(&s->lock);
	COUNT(zwrites);
	if (flags & ZF_INCR)
		return done ? zscore_reply(sc, score) : REPLY(RD_NIL, 0);
	return zint(sc, added + ((flags & ZF_CH) ? changed : 0));
busy:
	hm_unlock(&s->lock);
	return -1;
oom_locked:
	hm_unlock(&s->lock);
oom:
	COUNT(store_failures);
	return ERR_REPLY(sc, "OOM command not allowed when used memory > 'maxmemory'.");
}

/* ZREM key member [member ...] */
__noinline int rd_zrem(int nargs)
{
	__u32 zero = 0, off, len, i;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct rd_cursor cu = {};
	struct kv_stats st = {};
	struct zs_set __arena *s;
	__s64 set, score, removed = 0;
	int r;

	if (!sc)
		return -1;
	if (nargs < 3)
		return REPLY(RD_ERR, stage_arity(sc));
	cur_init(sc, &cu, nargs);
	if (!cur_next(sc, &cu, &off, &len) || !cur_next(sc, &cu, &off, &len))
		return -1;
	COUNT(zwrites);
	if (!len || len > KV_KEY_MAX)
		return zint(sc, 0);
	rd_zkey(sc, off, len);
	set = rd_zset_of(sc, len);
	if (set <= 0)
		return set < 0 ? -1 : zint(sc, 0);
	s = (struct zs_set __arena *)set;
	if (hm_lock(&s->lock))
		return -1;
	bpf_for(i, 2, RD_ARGS_MAX) {
		if (!cur_next(sc, &cu, &off, &len))
			break;
		if (len > ZS_MEMBER_MAX)
			continue;
		r = rd_zmember(sc, set, off, len, &score);
		if (r < 0)
			goto busy;
		if (!r)
			continue;
		if (rd_zdel(sc, set, score, len) < 0)
			goto busy;
		if (kv_erase(&rd_members, sc->rep, 0, ZS_MEMBER + len, 0, &st) < 0)
			goto busy;
		removed++;
	}
	hm_unlock(&s->lock);
	return zint(sc, removed);
busy:
	hm_unlock(&s->lock);
	return -1;
}

/* ZCARD key, ZSCORE key member */
__noinline int rd_zread(int nargs)
{
	__u32 zero = 0, off, len, klen;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct rd_cursor cu = {};
	struct zs_set __arena *s;
	bool card;
	__s64 set, score;
	int r;

	if (!sc)
		return -1;
	card = WORD_IS(sc, sc->arg_off[0], sc->arg_len[0], "ZCARD");
	if (nargs != (card ? 2 : 3))
		return REPLY(RD_ERR, stage_arity(sc));
	COUNT(zreads);
	cur_init(sc, &cu, nargs);
	if (!cur_next(sc, &cu, &off, &klen) || !cur_next(sc, &cu, &off, &klen))
		return -1;
	if (!klen || klen > KV_KEY_MAX)
		return card ? zint(sc, 0) : REPLY(RD_NIL, 0);
	rd_zkey(sc, off, klen);
	set = rd_zset_of(sc, klen);
	if (set < 0)
		return -1;
	s = (struct zs_set __arena *)set;
	if (card)
		return zint(sc, set ? s->count : 0);
	if (!cur_next(sc, &cu, &off, &len))
		return -1;
	if (!set || !s->count || len > ZS_MEMBER_MAX)
		return REPLY(RD_NIL, 0);
	/* the member's entry lives while the set's lock is held */
	if (hm_lock(&s->lock))
		return -1;
	r = rd_zmember(sc, set, off, len, &score);
	hm_unlock(&s->lock);
	if (r < 0)
		return -1;
	return r ? zscore_reply(sc, score) : REPLY(RD_NIL, 0);
}

/*
 * Stages node `node`'s member at `at` of sc->rep as a bulk string, and its
 * score after it when `scores`: "$<len>\r\n<member>\r\n$<len>\r\n<score>\r\n".
 * Returns where it ends. A global function: the caller's loop does not
 * carry the offsets the stores need.
 */
__noinline __u32 rd_zemit(struct rd_scratch *sc, __u32 at, __u64 node, bool scores)
{
	struct zs_node __arena *n = (struct zs_node __arena *)node;
	__u64 __arena *m;
	__u32 k, mlen;

	if (!sc || !n)
		return at;
	mlen = n->mlen;
	if (mlen > ZS_MEMBER_MAX)
		mlen = ZS_MEMBER_MAX;
	PUT(sc, &at, "$");
	put_u64(sc, &at, mlen);
	PUT(sc, &at, "\r\n");
	m = ZS_WORDS(n);
	bpf_for(k, 0, KV_WORDS(mlen)) {
		if (k >= ZS_MEMBER_MAX / 8)
			break;
		*(__u64 *)&sc->rep[RD_MASK(at + k * 8, RD_BUF - 1)] = m[k];
	}
	at += mlen;
	PUT(sc, &at, "\r\n");
	if (scores) {
		PUT(sc, &at, "$");
		put_u64(sc, &at, rd_s64_len(sc, n->score));
		PUT(sc, &at, "\r\n");
		put_s64(sc, &at, n->score);
		PUT(sc, &at, "\r\n");
	}
	return at;
}

/* ZRANGE's options. */
#define ZR_LIMIT 1
#define ZR_BYSCORE 2
#define ZR_BYLEX 4
#define ZR_REV 8
#define ZR_WITHSCORES 16

/* The ZRANGE option (ZR_*) at `off`, or 0. */
__noinline int rd_zrange_opt(struct rd_scratch *sc, __u32 off, __u32 len)
{
	if (!sc)
		return 0;
	return WORD_IS(sc, off, len, "WITHSCORES") ? ZR_WITHSCORES :
	       WORD_IS(sc, off, len, "LIMIT") ? ZR_LIMIT :
	       WORD_IS(sc, off, len, "BYSCORE") ? ZR_BYSCORE :
	       WORD_IS(sc, off, len, "BYLEX") ? ZR_BYLEX :
	       WORD_IS(sc, off, len, "REV") ? ZR_REV : 0;
}

/* ZRANGE key start stop [WITHSCORES] (by index) */
__noinline int rd_zrange(int nargs)
{
	__u32 zero = 0, off, len, koff, klen, at = RD_VAL, i, count = 0;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct rd_cursor cu = {}, opts;
	struct zs_set __arena *s;
	struct zs_node __arena *n;
	__s64 set, start, stop, size;
	bool scores = false;
	__u32 other = 0, o;	/* ZR_* but WITHSCORES */

	if (!sc)
		return -1;
	if (nargs < 4)
		return REPLY(RD_ERR, stage_arity(sc));
	cur_init(sc, &cu, nargs);
	if (!cur_next(sc, &cu, &off, &len) || !cur_next(sc, &cu, &koff, &klen))
		return -1;
	opts = cu;
	if (!cur_next(sc, &opts, &off, &len) || !cur_next(sc, &opts, &off, &len))
		return -1;
	/* Redis's syntax first (LIMIT takes two arguments), then what the
	 * offload does not do */
	bpf_for(i, 4, RD_ARGS_MAX) {
		if (!cur_next(sc, &opts, &off, &len))
			break;
		o = rd_zrange_opt(sc, off, len);
		if (!o)
			return ERR_REPLY(sc, "ERR syntax error");
		if (o == ZR_LIMIT &&
		    (!cur_next(sc, &opts, &off, &len) || !cur_next(sc, &opts, &off, &len)))
			return ERR_REPLY(sc, "ERR syntax error");
		if (o == ZR_WITHSCORES)
			scores = true;
		else
			other |= o;
	}
	if ((other & ZR_LIMIT) && !(other & (ZR_BYSCORE | ZR_BYLEX)))
		return ERR_REPLY(sc, "ERR syntax error, LIMIT is only supported in combination with "
				 "either BYSCORE or BYLEX");
	if (scores && (other & ZR_BYLEX))
		return ERR_REPLY(sc, "ERR syntax error, WITHSCORES not supported in combination with "
				 "BYLEX");
	if (other)
		return ERR_REPLY(sc, "ERR ZRANGE option not supported by the KFlex offload");
	if (!cur_next(sc, &cu, &off, &len) || rd_parse_ll(sc, off, len, &start) ||
	    !cur_next(sc, &cu, &off, &len) || rd_parse_ll(sc, off, len, &stop))
		return ERR_REPLY(sc, "ERR value is not an integer or out of range");
	COUNT(zreads);
	sc->acount = 0;
	if (!klen || klen > KV_KEY_MAX)
		return REPLY(RD_ARRAY, 0);
	rd_zkey(sc, koff, klen);
	set = rd_zset_of(sc, klen);
	if (set <= 0)
		return set < 0 ? -1 : REPLY(RD_ARRAY, 0);
	s = (struct zs_set __arena *)set;
	if (hm_lock(&s->lock))
		return -1;
	/* Redis's index rules */
	size = s->count;
	if (start < 0)
		start += size;
	if (stop < 0)
		stop += size;
	if (start < 0)
		start = 0;
	if (start > stop || start >= size) {
		hm_unlock(&s->lock);
		return REPLY(RD_ARRAY, 0);
	}
	if (stop >= size)
		stop = size - 1;
	/* down the levels to the first, then along level 0 */
	n = zs_at(s, start);
	if (!n)
		goto busy;	/* start < size: only a spent budget */
	stop -= start;
	while (n && stop >= 0) {
		if (!can_loop)
			goto busy;
		if (at + n->mlen + 60 > RD_VAL + RD_STAGE_MAX) {
			hm_unlock(&s->lock);
			return ERR_REPLY(sc, "ERR ZRANGE reply too large for the KFlex offload (3968 "
				    "bytes at most)");
		}
		at = rd_zemit(sc, at, (__u64)n, scores);
		count += scores ? 2 : 1;
		n = n->next[0];
		stop--;
	}
	hm_unlock(&s->lock);
	sc->acount = count;
	return REPLY(scores ? RD_PAIRS : RD_ARRAY, at - RD_VAL);
busy:
	hm_unlock(&s->lock);
	return -1;
}

/* Whether the request in sc->req is one of the sorted-set commands. */
static __always_inline bool zowned(struct rd_scratch *sc)
{
	return ARG_IS(sc, 0, "ZADD") || ARG_IS(sc, 0, "ZREM") || ARG_IS(sc, 0, "ZCARD") ||
	       ARG_IS(sc, 0, "ZSCORE") || ARG_IS(sc, 0, "ZRANGE");
}

/*
 * Copies the `n` bytes (at most RD_BUF) at `off` of the request in sc->req to
 * `dst` in the heap, in whole words: up to 7 bytes after them are written
 * too (an entry from kv_new_big() has a spare word for them).
 */
static __always_inline void fill(struct rd_scratch *sc, __u8 __arena *dst, __u32 off, __u32 n)
{
	__u32 i;

	bpf_for(i, 0, KV_WORDS(n)) {
		if (i >= RD_BUF / 8)
			break;
		*(__u64 __arena *)(dst + i * 8) = *(__u64 *)&sc->req[RD_MASK(off + i * 8, RD_BUF - 1)];
	}
}

/* GET k, SET k v (--kmemcache): as the sorted-set commands, a global
 * function returning REPLY(kind, staged bytes), -1 when busy, or RD_GET_BIG
 * for a GET whose value is too long to stage (rd_get_big() answers it). */
__noinline int rd_getset(int nargs)
{
	__u32 zero = 0, klen, vlen;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct kv_entry __arena *e;
	struct kv_found f = {};
	bool too_big = false;
	int r;

	if (!sc)
		return -1;
	if (ARG_IS(sc, 0, "GET")) {
		if (nargs != 2)
			return REPLY(RD_ERR, stage_arity(sc));
		klen = sc->arg_len[1];
		COUNT(gets);
		if (klen > KV_KEY_MAX || !klen || sc->arg_off[1] > KV_OFF_MASK)
			return REPLY(RD_NIL, 0);
		r = kv_get(&rd_table, sc->req, sc->arg_off[1], klen, 0, sc->rep, RD_VAL,
			   KV_ITEM_MAX, &f, &too_big, &sc->kst);
		if (!r && too_big)
			return RD_GET_BIG;
		if (r <= 0)
			return r < 0 ? -1 : REPLY(RD_NIL, 0);
		COUNT(hits);
		return REPLY(RD_BULK, f.ilen);
	}
	/* SET */
	if (nargs < 3)
		return REPLY(RD_ERR, stage_arity(sc));
	if (nargs > 3) {
		COUNT(refused);
		return ERR_REPLY(sc, "ERR SET option not supported by the offload");
	}
	klen = sc->arg_len[1];
	vlen = sc->arg_len[2];
	if (vlen > rd_max_value || vlen > KV_BIG_MAX) {
		COUNT(refused);
		return ERR_REPLY(sc, "ERR value too large for the KFlex offload");
	}
	if (klen > KV_KEY_MAX || !klen || sc->arg_off[1] > KV_OFF_MASK) {
		COUNT(refused);
		return ERR_REPLY(sc, "ERR key too long for the KFlex offload");
	}
	if (vlen > KV_ITEM_MAX || sc->arg_off[2] > KV_OFF_MASK) {
		/* all of it in this message, longer than kv_new() takes */
		e = kv_new_big(&rd_table, sc->req, sc->arg_off[1], klen, vlen);
		if (e)
			fill(sc, kv_item(e), sc->arg_off[2], vlen);
	} else {
		e = kv_new(&rd_table, sc->req, sc->arg_off[1], klen, sc->arg_off[2], vlen, 0, 0);
	}
	if (!e) {
		COUNT(store_failures);
		return ERR_REPLY(sc, "OOM command not allowed when used memory > 'maxmemory'.");
	}
	r = kv_store(&rd_table, e, 0, 0, &sc->kst);
	if (r < 0)
		return -1;
	COUNT(sets);
	return REPLY(RD_OK, 0);
}

/*
 * The first chunk (`len` bytes, in sc->req) of a SET framed in chunks on
 * connection `c`: its value is longer than one message. When the offload can
 * hold it, allocates its entry (c->big) and writes the value's first bytes
 * (c->filled); returns the connection's RD_CONSUME_* for the rest of the
 * request.
 */
__noinline int rd_set_begin(struct rd_conn *c, __u32 len)
{
	__u32 zero = 0, klen, vlen, off, n;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct kv_entry __arena *e;

	if (!sc || !c)
		return RD_CONSUME_BUSY;
	klen = sc->arg_len[1];
	vlen = sc->arg_len[2];
	off = sc->arg_off[2];
	if (sc->nargs < 3 || !klen || klen > KV_KEY_MAX || sc->arg_off[1] > KV_OFF_MASK)
		return RD_CONSUME_KEY;
	if (vlen > rd_max_value || vlen > KV_BIG_MAX)
		return RD_CONSUME_TOO_LARGE;
	e = kv_new_big(&rd_table, sc->req, sc->arg_off[1], klen, vlen);
	if (!e)
		return RD_CONSUME_OOM;
	n = off < len ? len - off : 0;
	if (n > vlen)
		n = vlen;
	c->big = (__u64)e;
	fill(sc, kv_item(e), off, n);
	c->filled = n;
	return RD_CONSUME_STORE;
}

/*
 * A later chunk (`len` bytes) of a SET whose value fills `big`: writes the
 * value's bytes in it at `filled` (`left` of the value still to come).
 * Returns the bytes written, or -1 if the chunk could not be read.
 */
__noinline int rd_set_more(struct __sk_buff *skb, __u64 big, __u32 filled, __u32 left, __u32 len)
{
	__u32 zero = 0, n = len < left ? len : left;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct kv_entry __arena *e = (struct kv_entry __arena *)big;

	if (!skb || !sc || !e || filled > KV_BIG_MAX || filled + n > e->ilen)
		return -1;
	if (!n)
		return 0;
	if (n > RD_MSG_MAX ||
	    bpf_skb_load_bytes(skb, 0, sc->req, RD_MASK(n - 1, RD_MSG_MAX - 1) + 1))
		return -1;
	fill(sc, kv_item(e) + filled, 0, n);
	return n;
}

/* An owned command's name as a cancelled run leaves it (redis-server has no
 * such command): its first letters of KFLEX? (3 to 6 bytes), ending in '?'. */
static const char rd_renamed[8] = "KFLEX?";

static __always_inline int verdict(struct __sk_buff *skb, struct rd_scratch *sc,
				   struct rd_conn *c, __u64 cookie)
{
	__u32 len = skb->len, n = 0;
	enum rd_reply kind = RD_NIL;
	struct kv_entry __arena *e;
	struct rd_walk w = {};
	bool chunked = false;
	__u32 eval, at;
	int nargs, r, h;
	__s64 v;

	if (c->args_left || c->bulk_left) {
		/* a later chunk of a long request: where it leaves off */
		if (c->consume == RD_CONSUME_STORE && c->big) {
			/* the value's bytes (its CRLF not) */
			r = rd_set_more(skb, c->big, c->filled,
					c->bulk_left > 2 ? c->bulk_left - 2 : 0, len);
			if (r < 0) {
				kv_drop(&rd_table, (struct kv_entry __arena *)c->big);
				c->big = 0;
				c->consume = RD_CONSUME_BUSY;
			} else {
				c->filled += r;
			}
		}
		walk(skb, sc, 0, len, c->args_left, c->bulk_left, len, &w);
		if (w.status == 1) {
			c->args_left = 0;
			c->bulk_left = 0;
		} else {
			c->args_left = w.args_left;
			c->bulk_left = w.bulk_left;
		}
		if (!c->consume)
			return SK_PASS;
		if (w.status != 1)
			return SK_DROP;
		kind = RD_ERR;
		if (c->consume == RD_CONSUME_STORE) {
			/* the whole value is in its entry: link it */
			e = (struct kv_entry __arena *)c->big;
			c->big = 0;
			c->consume = 0;
			if (!e)
				goto busy;
			if (c->filled != e->ilen) {
				/* cannot happen: the chunks carried the value */
				kv_drop(&rd_table, e);
				COUNT(store_failures);
				goto busy;
			}
			if (kv_store(&rd_table, e, 0, 0, &sc->kst) < 0)
				goto busy;
			COUNT(sets);
			kind = RD_OK;
			goto answer;
		}
		if (c->consume == RD_CONSUME_HELD) {
			n = STAGE(sc, "ERR key is held by the KFlex offload");
			COUNT(held_refused);
		} else if (c->consume == RD_CONSUME_BUSY) {
			n = STAGE(sc, "ERR busy, retry");
			COUNT(lock_timeouts);
		} else if (c->consume == RD_CONSUME_KEY) {
			n = STAGE(sc, "ERR key too long for the KFlex offload");
			COUNT(refused);
		} else if (c->consume == RD_CONSUME_OOM) {
			n = STAGE(sc, "OOM command not allowed when used memory > 'maxmemory'.");
			COUNT(store_failures);
		} else if (rd_zset) {
			n = STAGE(sc, "ERR request too large for the KFlex offload");
			COUNT(refused);
		} else {
			n = STAGE(sc, "ERR value too large for the KFlex offload");
			COUNT(refused);
		}
		c->consume = 0;
		goto answer;
	}
	COUNT(requests);
	if (len < 1 || len > RD_MSG_MAX)
		goto pass;
	if (bpf_skb_load_bytes(skb, 0, sc->req, RD_MASK(len - 1, RD_MSG_MAX - 1) + 1))
		goto pass;
	if (sc->req[0] == '*') {
		h = read_line(skb, sc, 0, len, '*', &v);
		if (h <= 0 || v <= 0)
			goto pass;
		walk(skb, sc, h, len, v, 0, len, &w);
		if (w.status < 0)
			goto pass;
		chunked = w.status != 1;
	}
	nargs = split(sc, len);
	if (nargs == 0)
		goto pass;
	if (rd_zset ? !zowned(sc) : !ARG_IS(sc, 0, "GET") && !ARG_IS(sc, 0, "SET")) {
		/* the protocol the connection's later EVAL replies come in */
		if (ARG_IS(sc, 0, "HELLO") && nargs >= 2 && nargs <= RD_OWN_ARGS) {
			if (ARG_IS(sc, 1, "3"))
				c->resp3 = 1;
			else if (ARG_IS(sc, 1, "2"))
				c->resp3 = 0;
		} else if (ARG_IS(sc, 0, "RESET")) {
			c->resp3 = 0;
		}
		/* another command on a key the offload holds: refused (of a
		 * request framed in chunks, the keys in its first chunk: the
		 * later ones are passed before they are seen) */
		r = rd_held(nargs, len);
		if (chunked) {
			c->args_left = w.args_left;
			c->bulk_left = w.bulk_left;
			if (!r)
				goto pass;
			/* consumed chunk by chunk, refused at its end */
			c->consume = r > 0 ? RD_CONSUME_HELD : RD_CONSUME_BUSY;
			return SK_DROP;
		}
		if (!r)
			goto pass;
		if (r < 0)
			goto busy;
		COUNT(held_refused);
		n = STAGE(sc, "ERR key is held by the KFlex offload");
		kind = RD_ERR;
		goto answer;
	}
	if (chunked) {
		/* an owned request longer than a message: a SET whose value
		 * fills its entry chunk by chunk, or one too long to hold;
		 * consumed, answered at its end */
		c->args_left = w.args_left;
		c->bulk_left = w.bulk_left;
		c->consume = RD_CONSUME_TOO_LARGE;
		if (!rd_zset && nargs == 3 && ARG_IS(sc, 0, "SET"))
			c->consume = rd_set_begin(c, len);
		return SK_DROP;
	}
	/*
	 * Should this run be cancelled, the request goes on to redis-server
	 * (SK_PASS): renamed, so that redis-server answers an unknown-command
	 * error in its place and stores nothing. A completed run rewrites the
	 * whole skb into the reply.
	 */
	n = sc->arg_len[0];
	at = sc->arg_off[0];
	if (n >= 3 && n <= 6 && at < RD_MSG_MAX) {
		__builtin_memcpy(sc->name, rd_renamed, 8);
		sc->name[RD_MASK(n - 1, 7)] = '?';
		if (bpf_skb_store_bytes(skb, at, sc->name, RD_MASK(n - 1, 7) + 1, 0))
			goto pass;
	}
	n = 0;
	if (nargs < 0 || (rd_zset && sc->req[0] != '*' && nargs > RD_OWN_ARGS)) {
		n = STAGE(sc, "ERR inline command form not supported by the KFlex offload");
		kind = RD_ERR;
		COUNT(refused);
		goto answer;
	}
	if (rd_zset) {
		if (ARG_IS(sc, 0, "ZADD"))
			r = rd_zadd(nargs);
		else if (ARG_IS(sc, 0, "ZREM"))
			r = rd_zrem(nargs);
		else if (ARG_IS(sc, 0, "ZRANGE"))
			r = rd_zrange(nargs);
		else
			r = rd_zread(nargs);
		if (r < 0)
			goto busy;
		kind = (r >> 16) & 7;
		n = r & 0xffff;
		goto answer;
	}
	r = rd_getset(nargs);
	if (r == RD_GET_BIG) {
		r = rd_get_big(skb, c->passed ? RD_EVAL2 : RD_DIRECT);
		if (r == 0) {
			COUNT(hits);
			goto sent;
		}
		if (r < 0)
			goto busy;
		r = REPLY(RD_NIL, 0);
	}
	if (r < 0)
		goto busy;
	kind = (r >> 16) & 7;
	n = r & 0xffff;
	goto answer;
busy:
	/* a bucket lock not taken or the loop budget spent */
	COUNT(lock_timeouts);
	n = STAGE(sc, "ERR busy, retry");
	kind = RD_ERR;
answer:
	eval = c->passed ? (c->resp3 ? RD_EVAL3 : RD_EVAL2) : RD_DIRECT;
	if (rd_answer(skb, kind, n, eval)) {
		/* cannot happen by construction (replies are bounded); should
		 * it, redis-server gets the bytes and the connection, rather
		 * than the client waiting for a reply that never comes */
		COUNT(reply_failures);
		go_raw(c);
		return SK_PASS;
	}
sent:
	if (c->passed) {
		COUNT(eval_routed);
		return SK_PASS;
	}
	return bpf_sk_redirect_hash(skb, &rd_socks, &cookie, 0);
pass:
	c->passed = 1;
	COUNT(passed);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int rd_verdict(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct rd_conn *c = conn_of(cookie);
	int ret;

	kflex_use_heap(rd_heap);
	if (!c || !sc || c->raw)
		return SK_PASS;
	if (c->running) {
		/* The last run on this connection was cancelled: its request
		 * went on to redis-server, whose reply later ones must not
		 * overtake. */
		c->passed = 1;
		COUNT(cancelled);
	}
	c->running = 1;
	ret = verdict(skb, sc, c, cookie);
	c->running = 0;
	return ret;
}

/* Create the tables (run by the loader, a part at a time). */
KV_TABLE_INIT(rd_init, rd_heap, rd_table);
KV_TABLE_INIT(rd_minit, rd_heap, rd_members);

char LICENSE[] SEC("license") = "GPL";
