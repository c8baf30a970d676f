// SPDX-License-Identifier: GPL-2.0
/*
 * Stream parser and verdict of the sockmap message-bounds test (patch
 * "bpf, sockmap: a stream parser and verdict see exactly their message"):
 * requests are lines ending in '\n' (at most MAX_LINE bytes); the parser
 * frames one line, the verdict answers it in the kernel with a reply of
 * another length, redirected to the egress of the same socket, or passes
 * it to the server:
 *   "#..."  -> "ok\n"                  (shorter)
 *   "p..."  -> passed unchanged to the server
 *   "d..."  -> dropped (SK_DROP: neither answered nor passed)
 *   other   -> "echo <line> <len>\n"   (longer)
 * A line longer than MAX_LINE is framed as MAX_LINE bytes and passed.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define MAX_LINE 200
#define REPLY_MAX 256	/* a power of two, for the verifier's bounds */

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, __u64);
	__type(value, __u64);
} socks SEC(".maps");

struct buf {
	char in[256];
	char out[REPLY_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct buf);
} scratch SEC(".maps");

/* Messages the verdict answered, passed, dropped, failed to answer. */
__u64 answered, passed, dropped, failed;

SEC("sk_skb/stream_parser")
int strp_parse(struct __sk_buff *skb)
{
	char c[1];
	int i;

	for (i = 0; i < MAX_LINE; i++) {
		if (i >= skb->len)
			return 0;	/* the line is not complete yet */
		if (bpf_skb_load_bytes(skb, i, c, 1))
			return 0;
		if (c[0] == '\n')
			return i + 1;
	}
	return MAX_LINE;
}

/* Writes decimal @v at @p (at most 3 digits: @v <= MAX_LINE); returns digits. */
static __always_inline int put_dec(char *p, __u32 v)
{
	int n = v >= 100 ? 3 : v >= 10 ? 2 : 1, i;

	for (i = n - 1; i >= 0; i--) {
		p[i & 3] = '0' + v % 10;
		v /= 10;
	}
	return n;
}

SEC("sk_skb/stream_verdict")
int strp_verdict(struct __sk_buff *skb)
{
	__u32 len = skb->len, zero = 0, rlen, i;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct buf *b = bpf_map_lookup_elem(&scratch, &zero);

	if (!b || len == 0 || len > MAX_LINE)
		goto pass;
	/* the same value, in a form whose bounds (1..256) the verifier sees */
	len -= 1;
	barrier_var(len);
	len = (len & 0xff) + 1;
	if (bpf_skb_load_bytes(skb, 0, b->in, len))
		goto fail;
	if (b->in[len - 1] != '\n' || b->in[0] == 'p')
		goto pass;
	if (b->in[0] == 'd') {
		__sync_fetch_and_add(&dropped, 1);
		return SK_DROP;
	}
	if (b->in[0] == '#') {
		b->out[0] = 'o';
		b->out[1] = 'k';
		b->out[2] = '\n';
		rlen = 3;
	} else {
		/* "echo " + line without '\n' + " " + len + "\n" */
		__builtin_memcpy(b->out, "echo ", 5);
		for (i = 0; i < MAX_LINE; i++) {
			if (i >= len - 1)
				break;
			b->out[5 + i] = b->in[i];
		}
		rlen = 5 + (len - 1);
		if (rlen > REPLY_MAX - 5)
			goto fail;
		b->out[rlen++] = ' ';
		rlen += put_dec(&b->out[rlen], len - 1);
		b->out[rlen++ & (REPLY_MAX - 1)] = '\n';
	}
	if (rlen > REPLY_MAX)
		goto fail;
	if (bpf_skb_adjust_room(skb, (__s32)rlen - (__s32)len, 0, 0))
		goto fail;
	if (bpf_skb_store_bytes(skb, 0, b->out, rlen, 0))
		goto fail;
	__sync_fetch_and_add(&answered, 1);
	return bpf_sk_redirect_hash(skb, &socks, &cookie, 0);
fail:
	__sync_fetch_and_add(&failed, 1);
	return SK_DROP;
pass:
	__sync_fetch_and_add(&passed, 1);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
