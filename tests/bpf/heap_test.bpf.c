// SPDX-License-Identifier: GPL-2.0
/*
 * Programs the guest tests drive through BPF_PROG_TEST_RUN to exercise a
 * KFlex heap and its allocator. The heap's size is set by the test before
 * loading (max_entries).
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 16);

#define MAX_PTRS 4096

struct node {
	struct node __arena *next;
	__u64 value;
};

/* Arguments and results of the syscall programs (ctx_in). */
struct args {
	__u64 size;	/* object size */
	__u64 n;	/* how many */
	__u64 arg;	/* program specific */
	__u64 ret;	/* result */
};

#define use_heap() kflex_use_heap(heap)

/* Roots the tests read through the skeleton's .bss. */
struct node __arena *list_head;
void __arena *ptrs[MAX_PTRS];
__u64 nptrs;
__u64 xdp_count;
struct node __arena *xdp_head;

/*
 * A list of n nodes with value i * 7 + arg in front of list_head; a node is
 * size bytes (0: a bare struct node).
 */
SEC("syscall")
int build_list(struct args *a)
{
	__u64 i, built = 0, size = a->size > sizeof(struct node) ? a->size : sizeof(struct node);
	struct node __arena *n;

	bpf_for(i, 0, a->n) {
		n = kflex_malloc(heap, size);
		if (!n)
			break;
		n->value = i * 7 + a->arg;
		n->next = list_head;
		list_head = n;
		built++;
	}
	a->ret = built;
	return 0;
}

SEC("syscall")
int free_list(struct args *a)
{
	struct node __arena *n, *next;
	__u64 i, freed = 0;

	bpf_for(i, 0, 1 << 20) {
		n = list_head;
		if (!n)
			break;
		next = n->next;
		kflex_free(heap, n);
		list_head = next;
		freed++;
	}
	a->ret = freed;
	return 0;
}

/* Allocate up to n objects of size bytes into ptrs[]; stops at NULL. */
SEC("syscall")
int alloc_n(struct args *a)
{
	__u64 i, got = 0;
	void __arena *p;

	bpf_for(i, 0, a->n) {
		if (i >= MAX_PTRS)
			break;
		p = kflex_malloc(heap, a->size);
		if (!p)
			break;
		*(__u64 __arena *)p = i;
		ptrs[i] = p;
		got++;
	}
	nptrs = got;
	a->ret = got;
	return 0;
}

/* Allocate n objects of size bytes into ptrs[arg ...] (two CPUs may run
 * this at once on disjoint ranges); returns how many succeeded. */
SEC("syscall")
int alloc_at(struct args *a)
{
	__u64 i, got = 0;
	void __arena *p;

	bpf_for(i, 0, a->n) {
		__u64 slot = a->arg + i;

		if (slot >= MAX_PTRS)
			break;
		p = kflex_malloc(heap, a->size);
		ptrs[slot] = p;
		if (p)
			got++;
	}
	a->ret = got;
	return 0;
}

/*
 * The inline fast path: n objects of 64 bytes (a constant, so the verifier
 * inlines the allocation) into ptrs[arg ...], each tagged with its slot;
 * then every tag is read back, so an object handed out twice shows as a
 * tag overwritten. a->ret: objects allocated; a->size: tags that did not
 * survive. The slots must be empty (free_n clears them).
 */
SEC("syscall")
int fast_n(struct args *a)
{
	__u64 i, got = 0, bad = 0, first = a->arg;
	__u64 __arena *p;

	bpf_for(i, 0, a->n) {
		if (first + i >= MAX_PTRS)
			break;
		p = kflex_malloc(heap, 64);
		if (!p)
			break;
		*p = first + i;
		ptrs[first + i] = p;
		got++;
	}
	bpf_for(i, 0, a->n) {
		if (first + i >= MAX_PTRS)
			break;
		p = ptrs[first + i];
		if (!p)
			break;
		if (*p != first + i)
			bad++;
	}
	a->ret = got;
	a->size = bad;
	return 0;
}

/* One object of size bytes; its address in a->ret (0: failed). */
SEC("syscall")
int alloc_one(struct args *a)
{
	a->ret = (__u64)kflex_malloc(heap, a->size);
	return 0;
}

/* Free ptrs[0 .. nptrs), or with n > 0 ptrs[arg .. arg + n). */
SEC("syscall")
int free_n(struct args *a)
{
	__u64 i, first = a->n ? a->arg : 0, n = a->n ? a->n : nptrs;

	bpf_for(i, 0, n) {
		if (first + i >= MAX_PTRS)
			break;
		kflex_free(heap, ptrs[first + i]);
		ptrs[first + i] = 0;
	}
	if (!a->n)
		nptrs = 0;
	a->ret = n;
	return 0;
}

/* Free the pointer a->arg (whatever it is). */
SEC("syscall")
int free_ptr(struct args *a)
{
	kflex_free(heap, (void __arena *)a->arg);
	return 0;
}

/* Write a->n at heap address a->arg (a user address), read it back. */
SEC("syscall")
int poke(struct args *a)
{
	__u64 __arena *p = (__u64 __arena *)a->arg;

	use_heap();
	*p = a->n;
	a->ret = *p;
	return 0;
}

/* Read heap address a->arg into a->ret (0 if unpopulated). */
SEC("syscall")
int peek(struct args *a)
{
	use_heap();
	a->ret = *(__u64 __arena *)a->arg;
	return 0;
}

/* Overwrite the first word of every freed object in ptrs[] (stale
 * pointers) with a->arg: free-list links, if the allocator kept them there. */
SEC("syscall")
int scribble(struct args *a)
{
	__u64 i;

	use_heap();
	bpf_for(i, 0, a->n) {
		void __arena *p;

		if (i >= MAX_PTRS)
			break;
		p = ptrs[i];
		if (p)
			*(__u64 __arena *)p = a->arg + i * a->size;
	}
	return 0;
}

/* Populate the heap ahead of allocations (sleepable kfunc). */
SEC("syscall")
int reserve(struct args *a)
{
	a->ret = bpf_kflex_reserve(&heap, a->n);
	return 0;
}

/* Alloc/free round trips of random sizes: a->n rounds, a->arg seeds. */
SEC("syscall")
int churn(struct args *a)
{
	void __arena *live[16] = {};
	__u64 i, seed = a->arg, fails = 0;

	bpf_for(i, 0, a->n) {
		__u32 slot = (seed >> 7) & 15;
		__u64 size = 1 + ((seed >> 17) % 2000);

		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		if (live[slot]) {
			kflex_free(heap, live[slot]);
			live[slot] = 0;
		} else {
			live[slot] = kflex_malloc(heap, size);
			if (live[slot])
				*(__u64 __arena *)live[slot] = seed;
			else
				fails++;
		}
	}
	bpf_for(i, 0, 16) {
		if (live[i & 15])
			kflex_free(heap, live[i & 15]);
	}
	a->ret = fails;
	return 0;
}

/* XDP: every packet allocates a node (value = packet length) and links it. */
SEC("xdp")
int xdp_alloc(struct xdp_md *ctx)
{
	struct node __arena *n = kflex_malloc(heap, sizeof(*n));

	if (n) {
		n->value = ctx->data_end - ctx->data;
		n->next = xdp_head;
		xdp_head = n;
		__sync_fetch_and_add(&xdp_count, 1);
	}
	return XDP_PASS;
}

/* XDP: every packet frees one node of the XDP list. */
SEC("xdp")
int xdp_free(struct xdp_md *ctx)
{
	struct node __arena *n = xdp_head;

	if (n) {
		xdp_head = n->next;
		kflex_free(heap, n);
		__sync_fetch_and_sub(&xdp_count, 1);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
