// SPDX-License-Identifier: GPL-2.0
/*
 * Redis GET/SET offload (kflex-load --kmemcache): RESP over TCP, answered at
 * the sk_skb hooks of the server's accepted sockets from a hash table on a
 * KFlex heap, in front of a real redis-server.
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
 * The offload owns GET and SET: they never reach redis-server's keyspace.
 *   GET k          $<n> value, or $-1 (a miss)
 *   SET k v        +OK; values up to rd_max_value bytes (keys up to
 *                  KV_KEY_MAX); a larger value is consumed whole and
 *                  answered -ERR value too large for the KFlex offload; SET
 *                  with options: -ERR SET option not supported by the
 *                  offload
 *   wrong arity    Redis's own -ERR wrong number of arguments for '<cmd>'
 *                  command
 * Another command whose key arguments (positions from redis-server's COMMAND
 * table, in rd_cmds, for every argument of a multibulk request and the first
 * RD_OWN_ARGS words of an inline one) name a key the offload holds is
 * refused here: -ERR key is held by the KFlex offload.
 * Replies keep request order on a connection: while nothing was passed on
 * a connection, owned requests are answered from the kernel; once it has
 * passed a request to redis-server, an owned request is still executed
 * here but rewritten into an EVAL whose reply redis-server sends, byte for
 * byte the kernel's (return ARGV[1] for a value, return false for a miss,
 * redis.status_reply('OK'), redis.error_reply(...)), and passed behind the
 * earlier requests.
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
#include "ds/kv.h"

/* Set by the loader before loading. */
const volatile __u16 rd_port = 6969;
const volatile __u32 rd_max_value = KV_ITEM_MAX;

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

/* Per-connection state, by socket cookie. */
struct rd_conn {
	__u32 raw;		/* raw passthrough for the rest of its life */
	__u32 passed;		/* a request went on to redis-server */
	/* inside a request framed in chunks: */
	__u32 args_left;	/* arguments whose '$' line is still to come */
	__u32 bulk_left;	/* bytes of the current argument (with its CRLF) */
	__u32 consume;		/* the request is consumed, not passed */
	__u32 pad;
};

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

/* Per-CPU scratch: the request, the reply, the arguments. */
struct rd_scratch {
	__u8 req[RD_BUF + 128];
	__u8 rep[RD_BUF + 128];
	__u32 arg_off[RD_OWN_ARGS];
	__u32 arg_len[RD_OWN_ARGS];
	__u32 nargs;
	__u8 hdr[RD_HDR];
	__u8 name[RD_CMD_NAME];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rd_scratch);
} rd_scratch SEC(".maps");

/* The table; its buckets are allocated by rd_init. */
struct kv_table rd_table;

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
	struct rd_conn fresh = {};
	__u64 cookie;

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

/* Whether argument `a` (of the request in sc->req) is the command `w`, in
 * any case (a string literal of at most 8 bytes). */
#define ARG_IS(sc, a, w) arg_is(sc, a, w, sizeof(w) - 1)
static __always_inline bool arg_is(struct rd_scratch *sc, __u32 a, const char *w, __u32 n)
{
	__u32 i;
	__u8 c;

	if (sc->arg_len[RD_MASK(a, RD_OWN_ARGS - 1)] != n)
		return false;
	for (i = 0; i < 8; i++) {
		if (i >= n)
			break;
		c = RD_BYTE(sc->req, sc->arg_off[RD_MASK(a, RD_OWN_ARGS - 1)] + i);
		if (c >= 'a' && c <= 'z')
			c -= 'a' - 'A';
		if (c != (__u8)w[i])
			return false;
	}
	return true;
}

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

/* Appends the decimal form of `v` (below 100000: lengths and sizes), without
 * a loop, so that the verifier's paths stay few. */
static __always_inline void put_u64(struct rd_scratch *sc, __u32 *rlen, __u32 v)
{
	__u32 at = *rlen, d;

	if (v > 99999)
		v = 99999;
	d = v >= 10000 ? 5 : v >= 1000 ? 4 : v >= 100 ? 3 : v >= 10 ? 2 : 1;
	RD_BYTE(sc->rep, at + d - 1) = '0' + v % 10;
	if (d > 1)
		RD_BYTE(sc->rep, at + d - 2) = '0' + v / 10 % 10;
	if (d > 2)
		RD_BYTE(sc->rep, at + d - 3) = '0' + v / 100 % 10;
	if (d > 3)
		RD_BYTE(sc->rep, at + d - 4) = '0' + v / 1000 % 10;
	if (d > 4)
		RD_BYTE(sc->rep, at) = '0' + v / 10000 % 10;
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
};
/* Where a value or an error message is staged in sc->rep. */
#define RD_VAL 1024	/* kv.h masks offsets to KV_OFF_MASK */

/*
 * Writes the final reply (or its EVAL) to sc->rep from 0, from what is
 * staged at RD_VAL (`n` bytes). Returns its length.
 */
static __always_inline __u32 build(struct rd_scratch *sc, enum rd_reply kind, __u32 n, bool eval)
{
	__u32 rlen = 0, i, hdr;

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
		case RD_BULK:
			PUT(sc, &rlen, "$");
			put_u64(sc, &rlen, n);
			PUT(sc, &rlen, "\r\n");
			break;
		}
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
		case RD_BULK:
			EVAL_HEAD(sc, &rlen, "*4", "return ARGV[1]");
			break;
		}
		PUT(sc, &rlen, "$");
		put_u64(sc, &rlen, n);
		PUT(sc, &rlen, "\r\n");
	}
	/* the staged bytes follow the header (the header is < 96 bytes) */
	hdr = rlen;
	bpf_for(i, 0, KV_WORDS(n)) {
		if (i >= KV_ITEM_MAX / 8)
			break;
		*(__u64 *)&sc->rep[RD_MASK(hdr + i * 8, RD_BUF - 1)] =
			*(__u64 *)&sc->rep[RD_MASK(RD_VAL + i * 8, RD_BUF - 1)];
	}
	rlen += n;
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

/* Redis's arity error for the command in argument 0. */
static __always_inline __u32 stage_arity(struct rd_scratch *sc)
{
	__u32 at = RD_VAL;

	PUT(sc, &at, "ERR wrong number of arguments for '");
	/* Redis prints the command in lower case */
	if (ARG_IS(sc, 0, "GET"))
		PUT(sc, &at, "get");
	else
		PUT(sc, &at, "set");
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

	if (!skb || !sc || n > KV_ITEM_MAX)
		return -1;
	rlen = build(sc, kind, n, eval);
	return rewrite(skb, sc, skb->len, rlen);
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
	/* cap 0: the item is not copied, found counts as too big */
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
__noinline int rd_held(int nargs)
{
	__u32 zero = 0, i, len, pos, off, v, step;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	struct rd_keyspec *ks;
	int a, first, last, r;
	__u8 ch;

	if (!sc || nargs < 2)
		return 0;
	len = sc->arg_len[0];
	if (!len || len > RD_CMD_NAME)
		return 0;
	__builtin_memset(sc->name, 0, sizeof(sc->name));
	bpf_for(i, 0, RD_CMD_NAME) {
		if (i >= len)
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
		if (!pos || a > last || a >= nargs || pos >= RD_MSG_MAX)
			break;
		off = count_line(sc, pos, &v);
		if (!off)
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

SEC("sk_skb/stream_verdict")
int rd_verdict(struct __sk_buff *skb)
{
	__u32 zero = 0, len = skb->len, n = 0, klen, vlen;
	struct rd_scratch *sc = bpf_map_lookup_elem(&rd_scratch, &zero);
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct rd_conn *c = conn_of(cookie);
	enum rd_reply kind = RD_NIL;
	struct kv_stats st = {};
	struct kv_found f = {};
	struct kv_entry __arena *e;
	struct rd_walk w = {};
	bool too_big = false, chunked = false;
	int nargs, r, h;
	__s64 v;

	kflex_use_heap(rd_heap);
	if (!c || !sc)
		return SK_PASS;
	if (c->raw)
		return SK_PASS;
	if (c->args_left || c->bulk_left) {
		/* a later chunk of a long request: where it leaves off */
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
		c->consume = 0;
		n = STAGE(sc, "ERR value too large for the KFlex offload");
		kind = RD_ERR;
		COUNT(refused);
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
	if (!ARG_IS(sc, 0, "GET") && !ARG_IS(sc, 0, "SET")) {
		if (chunked) {
			c->args_left = w.args_left;
			c->bulk_left = w.bulk_left;
			goto pass;
		}
		/* another command on a key the offload holds: refused */
		r = rd_held(nargs);
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
		/* an owned request too long to hold: consume it, answer at
		 * its end */
		c->args_left = w.args_left;
		c->bulk_left = w.bulk_left;
		c->consume = 1;
		return SK_DROP;
	}
	if (nargs < 0) {
		n = STAGE(sc, "ERR inline command form not supported by the KFlex offload");
		kind = RD_ERR;
		COUNT(refused);
		goto answer;
	}
	if (ARG_IS(sc, 0, "GET")) {
		if (nargs != 2) {
			n = stage_arity(sc);
			kind = RD_ERR;
			goto answer;
		}
		klen = sc->arg_len[1];
		COUNT(gets);
		if (klen > KV_KEY_MAX || !klen || sc->arg_off[1] > KV_OFF_MASK) {
			kind = RD_NIL;
			goto answer;
		}
		r = kv_get(&rd_table, sc->req, sc->arg_off[1], klen, 0, sc->rep, RD_VAL,
			   KV_ITEM_MAX, &f, &too_big, &st);
		if (r < 0)
			goto busy;
		if (r == 0)
			goto answer;
		COUNT(hits);
		kind = RD_BULK;
		n = f.ilen;
		goto answer;
	}
	/* SET */
	if (nargs < 3) {
		n = stage_arity(sc);
		kind = RD_ERR;
		goto answer;
	}
	if (nargs > 3) {
		n = STAGE(sc, "ERR SET option not supported by the offload");
		kind = RD_ERR;
		COUNT(refused);
		goto answer;
	}
	klen = sc->arg_len[1];
	vlen = sc->arg_len[2];
	if (vlen > rd_max_value || vlen > KV_ITEM_MAX) {
		n = STAGE(sc, "ERR value too large for the KFlex offload");
		kind = RD_ERR;
		COUNT(refused);
		goto answer;
	}
	if (klen > KV_KEY_MAX || !klen || sc->arg_off[2] > KV_OFF_MASK) {
		n = STAGE(sc, "ERR key too long for the KFlex offload");
		kind = RD_ERR;
		COUNT(refused);
		goto answer;
	}
	e = kv_new(&rd_table, sc->req, sc->arg_off[1], klen, sc->arg_off[2], vlen, 0, 0);
	if (!e) {
		COUNT(store_failures);
		n = STAGE(sc, "OOM command not allowed when used memory > 'maxmemory'.");
		kind = RD_ERR;
		goto answer;
	}
	r = kv_store(&rd_table, e, 0, 0, sc->req, sc->arg_off[1], &st);
	if (r < 0)
		goto busy;
	COUNT(sets);
	kind = RD_OK;
	goto answer;
busy:
	/* a bucket lock not taken or the loop budget spent */
	COUNT(lock_timeouts);
	n = STAGE(sc, "ERR busy, retry");
	kind = RD_ERR;
answer:
	if (rd_answer(skb, kind, n, c->passed)) {
		/* cannot happen by construction (replies are bounded); should
		 * it, redis-server gets the bytes and the connection, rather
		 * than the client waiting for a reply that never comes */
		COUNT(reply_failures);
		go_raw(c);
		return SK_PASS;
	}
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

/* Creates the table (run by the loader, a part at a time). */
KV_TABLE_INIT(rd_init, rd_heap, rd_table);

char LICENSE[] SEC("license") = "GPL";
