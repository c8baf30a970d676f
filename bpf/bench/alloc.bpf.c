// SPDX-License-Identifier: GPL-2.0
/*
 * Allocator benchmark: alloc+free pairs and batches of 256 allocations then
 * 256 frees. Built twice: for a KFlex heap (bpf_kflex_alloc/free) and with
 * -DKFLEX_UPSTREAM_ARENA for the upstream arena, where `kind` picks the BPF
 * free-list allocator (0) or the bump allocator (1) of arena_alloc.h.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 28);

#define BATCH 256

struct bench_args {
	__u64 size;	/* object size */
	__u64 n;	/* operations (pairs, or objects in batches) */
	__u64 kind;	/* arena builds: 0 free list, 1 bump */
	__u64 ret;	/* failed allocations */
};

void __arena *batch[BATCH];

static __always_inline void __arena *bench_alloc(__u64 kind, __u64 size)
{
#ifdef KFLEX_UPSTREAM_ARENA
	if (kind == 1)
		return arena_bump_alloc(&heap, size);
#endif
	return kflex_malloc(heap, size);
}

static __always_inline void bench_free(__u64 kind, void __arena *p)
{
	if (kind != 1)
		kflex_free(heap, p);
}

SEC("syscall")
int pairs(struct bench_args *a)
{
	__u64 i, kind = a->kind, size = a->size, fails = 0;
	void __arena *p;

	bpf_for(i, 0, a->n) {
		p = bench_alloc(kind, size);
		if (!p) {
			fails++;
			continue;
		}
		*(__u64 __arena *)p = i;
		bench_free(kind, p);
	}
	a->ret = fails;
	return 0;
}

SEC("syscall")
int batches(struct bench_args *a)
{
	__u64 r, i, kind = a->kind, size = a->size, fails = 0;
	void __arena *p;

	bpf_for(r, 0, a->n / BATCH) {
		bpf_for(i, 0, BATCH) {
			p = bench_alloc(kind, size);
			if (p)
				*(__u64 __arena *)p = i;
			else
				fails++;
			batch[i & (BATCH - 1)] = p;
		}
		bpf_for(i, 0, BATCH) {
			p = batch[i & (BATCH - 1)];
			if (p)
				bench_free(kind, p);
		}
	}
	a->ret = fails;
	return 0;
}

#ifndef KFLEX_UPSTREAM_ARENA
/*
 * The calls of a pair without the allocator: two bpf_kflex_free() calls
 * that return at once (NULL is ignored by the kfunc's C side).
 */
SEC("syscall")
int calls(struct bench_args *a)
{
	__u64 i;

	bpf_for(i, 0, a->n) {
		bpf_kflex_free(&heap, NULL);
		bpf_kflex_free(&heap, NULL);
	}
	return 0;
}
#endif

/* Populate a KFlex heap ahead (no-op for the arena). */
SEC("syscall")
int prepare(struct bench_args *a)
{
#ifdef KFLEX_UPSTREAM_ARENA
	a->ret = 0;
#else
	a->ret = bpf_kflex_reserve(&heap, a->n);
#endif
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
