// SPDX-License-Identifier: GPL-2.0
/*
 * A program that chooses what its cancelled runs return
 * (KFLEX_CANCEL_VERDICT, which the test sets before load): an XDP program
 * whose marked packets loop until cancelled, and a syscall program that
 * does not use the override and keeps its type's default.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 16);
KFLEX_CANCEL_VERDICT(XDP_DROP);

#define MARK 0xCA

struct node {
	struct node __arena *next;
};

struct node __arena *ring;

SEC("syscall")
int make_ring(void *ctx)
{
	struct node __arena *n = kflex_malloc(heap, sizeof(*n));

	if (!n)
		return 1;
	n->next = n;
	ring = n;
	return 0;
}

static __always_inline void walk_ring(void)
{
	struct node __arena *p = ring;

	while (p && can_loop)
		p = p->next;
}

SEC("xdp")
int spin_own_verdict(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;

	kflex_use_cancel_verdict();
	kflex_use_heap(heap);
	if ((void *)(data + 1) > (void *)(long)ctx->data_end || *data != MARK)
		return XDP_TX;
	walk_ring();
	return XDP_ABORTED;
}

SEC("syscall")
int spin_default(__u64 *arg)
{
	kflex_use_heap(heap);
	walk_ring();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
