// SPDX-License-Identifier: GPL-2.0
/*
 * Allocator benchmark: alloc+free pairs and batches of 256 allocations then
 * 256 frees, from SEC("syscall") programs and (pairs) from an XDP program.
 * Built twice: for a KFlex heap (bpf_kflex_alloc/free; `kind` 2 picks
 * bpf_obj_new/bpf_obj_drop, 6.12's own BPF allocator) and with
 * -DKFLEX_UPSTREAM_ARENA for the upstream arena, where `kind` picks the BPF
 * free-list allocator (0) or the bump allocator (1) of arena_alloc.h.
 */
#include "vmlinux.h"
#include "kflex.h"
#include <bpf/bpf_core_read.h>

KFLEX_HEAP(heap, 1 << 28);

#define BATCH 256

struct bench_args {
	__u64 size;	/* object size */
	__u64 n;	/* operations (pairs, or objects in batches) */
	__u64 kind;	/* 0 KFlex or free list, 1 bump, 2 bpf_obj_new; parts: mode */
	__u64 ret;	/* failed allocations */
};

void __arena *batch[BATCH];

#ifndef KFLEX_UPSTREAM_ARENA
/* The arguments of the XDP program, which has no context to carry them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_args);
} xdp_args SEC(".maps");
#endif

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

/*
 * Remote frees: remote_alloc fills `remote_objs` on one CPU, remote_free empties
 * it on another (user space pins the thread in between).
 */
#define REMOTE 4096
void __arena *remote_objs[REMOTE];

static __always_inline __u64 run_remote_alloc(__u64 kind, __u64 size)
{
	__u64 i, fails = 0;
	void __arena *p;

	bpf_for(i, 0, REMOTE) {
		p = bench_alloc(kind, size);
		if (p)
			*(__u64 __arena *)p = i;
		else
			fails++;
		remote_objs[i & (REMOTE - 1)] = p;
	}
	return fails;
}

#define REMOTE_ALLOC(size, kind) run_remote_alloc(kind, size)

SEC("syscall")
int remote_free(struct bench_args *a)
{
	__u64 i, kind = a->kind;
	void __arena *p;

	bpf_for(i, 0, REMOTE) {
		p = remote_objs[i & (REMOTE - 1)];
		remote_objs[i & (REMOTE - 1)] = NULL;
		if (p)
			bench_free(kind, p);
	}
	return 0;
}

/*
 * Fragmentation: a seeded random workload over FRAG_SLOTS slots; each
 * operation frees the slot's object if it has one, else allocates one of a
 * memcached-like size (16 B - 4 KiB, skewed to small) into it. Live bytes
 * (requested) and their peak are tracked here; the populated memory is the
 * allocator's (KFlex: heap statistics; free list: arena_fl_pages).
 */
#define FRAG_SLOTS 65536

struct frag_args {
	__u64 seed;		/* xorshift state, carried across runs */
	__u64 n;		/* operations this run */
	__u64 live;		/* out: live bytes */
	__u64 peak_live;	/* out: their peak so far */
	__u64 pages;		/* out (free list): pages held now */
	__u64 peak_pages;	/* out (free list): their peak so far */
	__u64 fails;		/* out: failed allocations so far */
};

void __arena *frag_obj[FRAG_SLOTS];
__u32 frag_size[FRAG_SLOTS];
__u64 frag_live, frag_peak_live, frag_peak_pages, frag_fails;

static __always_inline __u64 frag_next(__u64 *s)
{
	__u64 x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* 50% 16-64 B, 30% 65-256 B, 15% 257-1024 B, 5% 1025-4096 B. */
static __always_inline __u64 frag_pick(__u64 r)
{
	__u64 p = r % 100, u = r >> 32;

	if (p < 50)
		return 16 + u % 49;
	if (p < 80)
		return 65 + u % 192;
	if (p < 95)
		return 257 + u % 768;
	return 1025 + u % 3072;
}

SEC("syscall")
int frag(struct frag_args *a)
{
	__u64 i, r, size, seed = a->seed;
	void __arena *p;
	__u32 slot;

	bpf_for(i, 0, a->n) {
		r = frag_next(&seed);
		slot = (r >> 16) & (FRAG_SLOTS - 1);
		p = frag_obj[slot];
		if (p) {
			bench_free(0, p);
			frag_live -= frag_size[slot];
			frag_obj[slot] = NULL;
			continue;
		}
		size = frag_pick(frag_next(&seed));
		p = bench_alloc(0, size);
		if (!p) {
			frag_fails++;
			continue;
		}
		*(__u64 __arena *)p = i;
		frag_obj[slot] = p;
		frag_size[slot] = size;
		frag_live += size;
		if (frag_live > frag_peak_live)
			frag_peak_live = frag_live;
#ifdef KFLEX_UPSTREAM_ARENA
		if (arena_fl_pages > frag_peak_pages)
			frag_peak_pages = arena_fl_pages;
#endif
	}
	a->seed = seed;
	a->live = frag_live;
	a->peak_live = frag_peak_live;
#ifdef KFLEX_UPSTREAM_ARENA
	a->pages = arena_fl_pages;
#endif
	a->peak_pages = frag_peak_pages;
	a->fails = frag_fails;
	return 0;
}

#ifndef KFLEX_UPSTREAM_ARENA
/*
 * bpf_obj_new() objects of the benchmark's sizes. bpf_mem_alloc() puts an
 * 8-byte header in front of each, so 4096 bytes is beyond its largest
 * cache: no 4096-byte row.
 */
extern void *bpf_obj_new_impl(__u64 local_type_id, void *meta) __ksym;
extern void bpf_obj_drop_impl(void *obj, void *meta) __ksym;

#define OBJ_TYPE(n)							\
	struct obj##n { __u64 w[n / 8]; };				\
	struct slot##n { struct obj##n __kptr *p; };			\
	struct {							\
		__uint(type, BPF_MAP_TYPE_ARRAY);			\
		__uint(max_entries, BATCH);				\
		__type(key, __u32);					\
		__type(value, struct slot##n);				\
	} slots##n SEC(".maps");

OBJ_TYPE(16)
OBJ_TYPE(64)
OBJ_TYPE(256)

/* One bpf_obj_new() + bpf_obj_drop() pair of struct obj<n>; 1 if it failed. */
#define OBJ_PAIR(n, i) ({						\
	struct obj##n *o = bpf_obj_new_impl(bpf_core_type_id_local(struct obj##n), NULL); \
	if (o) {							\
		o->w[0] = (i);						\
		bpf_obj_drop_impl(o, NULL);				\
	}								\
	!o;								\
})

static __always_inline __u64 obj_pair(__u64 size, __u64 i)
{
	switch (size) {
	case 16:
		return OBJ_PAIR(16, i);
	case 64:
		return OBJ_PAIR(64, i);
	case 256:
		return OBJ_PAIR(256, i);
	}
	return 1;
}

/*
 * A batch of bpf_obj_new() objects lives in an array of kptrs: the objects
 * are owned references, which the verifier only lets a program keep across
 * loop iterations in a map.
 */
#define OBJ_BATCH(n) ({							\
	__u64 fails = 0;						\
	__u32 k;							\
	bpf_for(k, 0, BATCH) {						\
		struct slot##n *v = bpf_map_lookup_elem(&slots##n, &k);	\
		struct obj##n *o = bpf_obj_new_impl(bpf_core_type_id_local(struct obj##n), NULL); \
		if (!o) {						\
			fails++;					\
			continue;					\
		}							\
		o->w[0] = k;						\
		if (!v) {						\
			bpf_obj_drop_impl(o, NULL);			\
			continue;					\
		}							\
		o = bpf_kptr_xchg(&v->p, o);				\
		if (o)							\
			bpf_obj_drop_impl(o, NULL);			\
	}								\
	bpf_for(k, 0, BATCH) {						\
		struct slot##n *v = bpf_map_lookup_elem(&slots##n, &k);	\
		struct obj##n *o;					\
		if (!v)							\
			continue;					\
		o = bpf_kptr_xchg(&v->p, NULL);				\
		if (o)							\
			bpf_obj_drop_impl(o, NULL);			\
	}								\
	fails;								\
})

static __noinline __u64 obj_batch(__u64 size)
{
	switch (size) {
	case 16:
		return OBJ_BATCH(16);
	case 64:
		return OBJ_BATCH(64);
	case 256:
		return OBJ_BATCH(256);
	}
	return BATCH;
}

/*
 * The fragmentation workload with bpf_obj_new(): sizes are rounded up to
 * bpf_mem_alloc()'s caches (16 ... 2048 B, and 4088 B, the most its
 * 4096-B cache holds after its 8-byte header; requests of 4089-4096 B
 * get 4088). Each slot of frag_objs holds one kptr per type; frag_cls
 * says which is in use. The memory held is the kernel's slab (measured by
 * kflex-bench from /proc/meminfo).
 */
#define FRAG_TYPES(X)							\
	X(16) X(32) X(64) X(96) X(128) X(192) X(256) X(512) X(1024)	\
	X(2048) X(4088)
#define FOBJ_TYPE(n) struct fobj##n { __u64 w[n / 8]; };
FRAG_TYPES(FOBJ_TYPE)
#define FOBJ_FIELD(n) struct fobj##n __kptr *p##n;
struct frag_slot {
	FRAG_TYPES(FOBJ_FIELD)
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, FRAG_SLOTS);
	__type(key, __u32);
	__type(value, struct frag_slot);
} frag_objs SEC(".maps");

/* The type (its size) slot `slot` holds, 0: none. */
__u16 frag_cls[FRAG_SLOTS];

#define FOBJ_NEW(n)							\
	if (size <= n) {						\
		struct fobj##n *o = bpf_obj_new_impl(bpf_core_type_id_local(struct fobj##n), NULL); \
		if (!o)							\
			return 0;					\
		o->w[0] = size;						\
		o = bpf_kptr_xchg(&v->p##n, o);				\
		if (o)							\
			bpf_obj_drop_impl(o, NULL);			\
		return n;						\
	}

/* A new object of at least `size` bytes (at most 4088) in slot v: its type. */
static __noinline __u64 fobj_new(struct frag_slot *v, __u64 size)
{
	if (!v)
		return 0;
	FRAG_TYPES(FOBJ_NEW)
	return 0;
}

#define FOBJ_DROP(n)							\
	if (cls == n) {							\
		struct fobj##n *o = bpf_kptr_xchg(&v->p##n, NULL);	\
		if (o)							\
			bpf_obj_drop_impl(o, NULL);			\
		return 0;						\
	}

static __noinline __u64 fobj_drop(struct frag_slot *v, __u64 cls)
{
	if (!v)
		return 0;
	FRAG_TYPES(FOBJ_DROP)
	return 0;
}

SEC("syscall")
int frag_objnew(struct frag_args *a)
{
	__u64 i, r, size, cls, seed = a->seed;
	struct frag_slot *v;
	__u32 slot, key;

	bpf_for(i, 0, a->n) {
		r = frag_next(&seed);
		slot = (r >> 16) & (FRAG_SLOTS - 1);
		/* the lookup's key on the stack; slot stays a bounded register */
		key = slot;
		v = bpf_map_lookup_elem(&frag_objs, &key);
		if (frag_cls[slot]) {
			fobj_drop(v, frag_cls[slot]);
			frag_live -= frag_size[slot];
			frag_cls[slot] = 0;
			continue;
		}
		size = frag_pick(frag_next(&seed));
		cls = fobj_new(v, size > 4088 ? 4088 : size);
		if (!cls) {
			frag_fails++;
			continue;
		}
		frag_cls[slot] = cls;
		frag_size[slot] = size;
		frag_live += size;
		if (frag_live > frag_peak_live)
			frag_peak_live = frag_live;
	}
	a->seed = seed;
	a->live = frag_live;
	a->peak_live = frag_peak_live;
	a->fails = frag_fails;
	return 0;
}
#endif

/* n alloc+free pairs of `size` bytes with allocator `kind`; the failures. */
static __always_inline __u64 run_pairs(__u64 kind, __u64 size, __u64 n)
{
	__u64 i, fails = 0;
	void __arena *p;

	bpf_for(i, 0, n) {
#ifndef KFLEX_UPSTREAM_ARENA
		if (kind == 2) {
			fails += obj_pair(size, i);
			continue;
		}
#endif
		p = bench_alloc(kind, size);
		if (!p) {
			fails++;
			continue;
		}
		*(__u64 __arena *)p = i;
		bench_free(kind, p);
	}
	return fails;
}

/*
 * Programs pass the size of what they allocate as a constant (sizeof): the
 * verifier then puts KFlex's inline fast path in place of the call. Each
 * benchmark size gets its own copy of the loop, with a literal size, for
 * every allocator alike.
 */
#define BY_SIZE(f, size, ...) ({					\
	__u64 __r;							\
	switch (size) {							\
	case 16:							\
		__r = f(16, __VA_ARGS__);				\
		break;							\
	case 64:							\
		__r = f(64, __VA_ARGS__);				\
		break;							\
	case 256:							\
		__r = f(256, __VA_ARGS__);				\
		break;							\
	case 4096:							\
		__r = f(4096, __VA_ARGS__);				\
		break;							\
	default:							\
		__r = f(size, __VA_ARGS__);				\
	}								\
	__r;								\
})

#define PAIRS(size, kind, n) run_pairs(kind, size, n)

SEC("syscall")
int pairs(struct bench_args *a)
{
	a->ret = BY_SIZE(PAIRS, a->size, a->kind, a->n);
	return 0;
}

SEC("syscall")
int remote_alloc(struct bench_args *a)
{
	a->ret = BY_SIZE(REMOTE_ALLOC, a->size, a->kind);
	return 0;
}

#ifndef KFLEX_UPSTREAM_ARENA
/*
 * The pairs from an XDP program (arguments in xdp_args); passes the packet.
 * Not in the arena build: the BPF allocators of arena_alloc.h take pages
 * with bpf_arena_alloc_pages(), which 6.12 allows in sleepable programs only.
 */
SEC("xdp")
int xdp_pairs(struct xdp_md *ctx)
{
	struct bench_args *a;
	__u32 zero = 0;

	a = bpf_map_lookup_elem(&xdp_args, &zero);
	if (a)
		a->ret = BY_SIZE(PAIRS, a->size, a->kind, a->n);
	return XDP_PASS;
}
#endif

static __always_inline __u64 run_batches(__u64 kind, __u64 size, __u64 n)
{
	__u64 r, i, fails = 0;
	void __arena *p;

	bpf_for(r, 0, n / BATCH) {
#ifndef KFLEX_UPSTREAM_ARENA
		if (kind == 2) {
			fails += obj_batch(size);
			continue;
		}
#endif
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
	return fails;
}

#define BATCHES(size, kind, n) run_batches(kind, size, n)

SEC("syscall")
int batches(struct bench_args *a)
{
	a->ret = BY_SIZE(BATCHES, a->size, a->kind, a->n);
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

extern __s64 bpf_kflex_bench_alloc(void *heap, __u32 mode, __u64 size, __u64 n) __ksym __weak;

/*
 * The allocator's cost taken apart: a->n iterations of part a->kind (enum
 * kflex_bench_alloc_mode) in the kernel, in calls of at most 2^20.
 */
SEC("syscall")
int parts(struct bench_args *a)
{
	__u64 done = 0, fails = 0, chunk;
	__s64 r;
	int i;

	bpf_for(i, 0, 1024) {
		if (done >= a->n)
			break;
		chunk = a->n - done;
		if (chunk > (1 << 20))
			chunk = 1 << 20;
		r = bpf_kflex_bench_alloc(&heap, a->kind, a->size, chunk);
		if (r < 0) {
			a->ret = r;
			return 0;
		}
		fails += r;
		done += chunk;
	}
	a->ret = fails;
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
