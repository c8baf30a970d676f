// SPDX-License-Identifier: GPL-2.0
/*
 * Cost of loop termination (kflex-bench cancel/loop/<body>/<variant>): the
 * same inner loop of CL_INNER steps and the same body, bounded four ways:
 *
 * - none:   a constant bound the verifier explores (no point, no counter);
 * - points: a constant bound and can_loop: a KFlex cancellation point per
 *           step, or, loaded with kernel.kflex_cancel_points=1, the upstream
 *           may_goto counter (the "may_goto" variant);
 * - for:    bpf_for() (a bpf_iter_num_next() call per step);
 * - loop:   bpf_loop() (an indirect callback call per step).
 *
 * Bodies: empty (an add), load (a heap word), chase (a heap list step).
 * An outer bpf_for() repeats the inner loop; its cost is the same in every
 * variant. Inner loops are never unrolled.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 20);

#define CL_INNER 64

struct cl_args {
	__u64 outer;	/* repetitions of the inner loop */
	__u64 ret;	/* the bodies' sum (keeps them alive) */
};

struct node {
	struct node __arena *next;
	__u64 value;
};

struct node __arena *cl_ring;
__u64 __arena *cl_words;

SEC("syscall")
int cl_setup(struct cl_args *a)
{
	struct node __arena *first = NULL, *prev = NULL, *n;
	__u64 i;

	cl_words = kflex_malloc(heap, CL_INNER * sizeof(__u64));
	if (!cl_words)
		return 1;
	bpf_for(i, 0, CL_INNER) {
		n = kflex_malloc(heap, sizeof(*n));
		if (!n)
			return 1;
		n->value = i;
		cl_words[i] = i;
		if (prev)
			prev->next = n;
		else
			first = n;
		prev = n;
	}
	if (!prev)
		return 1;
	prev->next = first;
	cl_ring = first;
	return 0;
}

struct cl_state {
	__u64 acc;
	struct node __arena *p;
	__u64 __arena *w;
};

/* barrier_var: the compiler may not fold the loop into a closed form */
#define BODY_empty(s, j) do { (s)->acc += (j); barrier_var((s)->acc); } while (0)
#define BODY_load(s, j) ((s)->acc += (s)->w[(j) & (CL_INNER - 1)])
#define BODY_chase(s, j) ((s)->p = (s)->p->next, (s)->acc += (j))

#define UNROLL_OFF _Pragma("clang loop unroll(disable)")

/* One program: `inner`, a loop over j on s, repeated a->outer times. */
#define CL_PROG(body, variant, inner)					\
SEC("syscall")								\
int cl_##body##_##variant(struct cl_args *a)				\
{									\
	struct cl_state s = { 0, cl_ring, cl_words };			\
	__u64 o;							\
	int j __attribute__((unused));					\
									\
	kflex_use_heap(heap);						\
	bpf_for(o, 0, a->outer) {					\
		inner;							\
	}								\
	a->ret = s.acc;							\
	return 0;							\
}

#define CL_PROGS(body)							\
static int cl_cb_##body(__u64 j, struct cl_state *s)			\
{									\
	BODY_##body(s, j);						\
	return 0;							\
}									\
CL_PROG(body, none, UNROLL_OFF						\
	for (j = 0; j < CL_INNER; j++) BODY_##body(&s, (__u64)j))	\
CL_PROG(body, points, UNROLL_OFF					\
	for (j = 0; j < CL_INNER && can_loop; j++)			\
		BODY_##body(&s, (__u64)j))				\
CL_PROG(body, for, bpf_for(j, 0, CL_INNER) BODY_##body(&s, (__u64)j))	\
CL_PROG(body, loop, bpf_loop(CL_INNER, cl_cb_##body, &s, 0))

CL_PROGS(empty)
CL_PROGS(load)
CL_PROGS(chase)


/*
 * Per-run cost of cancellation points (kflex-bench cancel/entry/xdp-empty):
 * an XDP program whose one loop never runs (ce_n is 0), loaded with points
 * (exception-boundary prologue, the frame's point slots) or without.
 */
__u64 ce_n;

SEC("xdp")
int ce_entry(struct xdp_md *ctx)
{
	__u64 i, n = ce_n;

	kflex_use_heap(heap);
	for (i = 0; i < n && can_loop; i++)
		barrier_var(i);
	return XDP_PASS;
}

/*
 * Cost of an uncontended lock/unlock pair (kflex-bench locks/pair/<variant>)
 * on the same heap word: a KFlex heap lock (two kfunc calls, the run's
 * bookkeeping, a point after the lock) or a test-and-test-and-set spin lock
 * written in BPF (hashmap.h's upstream-arena lock); and, to break the pair
 * down, a KFlex kfunc call that returns at once and an unlock that finds
 * the word not held (locks/call/<variant>, ns per call).
 */
#ifndef KFLEX_UPSTREAM_ARENA
SEC("syscall")
int lk_kflex(struct cl_args *a)
{
	__u64 __arena *w = cl_words;
	__u64 o;

	if (!w)
		return 1;
	bpf_for(o, 0, a->outer) {
		if (kflex_lock(heap, w))
			return 2;
		kflex_unlock(heap, w);
	}
	return 0;
}

/* Breakdown: a kfunc call that returns at once (bpf_kflex_free of NULL). */
SEC("syscall")
int lk_call(struct cl_args *a)
{
	__u64 o;

	kflex_use_heap(heap);
	bpf_for(o, 0, a->outer)
		bpf_kflex_free(&heap, NULL);
	return 0;
}

/* Breakdown: an unlock of a word not held: the glue and the table lookup. */
SEC("syscall")
int lk_unheld(struct cl_args *a)
{
	__u64 __arena *w = cl_words;
	__u64 o;

	if (!w)
		return 1;
	bpf_for(o, 0, a->outer)
		if (kflex_unlock(heap, w) != -1)
			return 2;
	return 0;
}
#endif

/*
 * 6.12's own lock: a bpf_spin_lock in a map value (the verifier allows no
 * call and no cancellation point while it is held).
 */
struct lk_val {
	struct bpf_spin_lock lock;
	__u64 n;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lk_val);
} lk_map SEC(".maps");

SEC("syscall")
int lk_spin(struct cl_args *a)
{
	struct lk_val *v;
	__u32 zero = 0;
	__u64 o;

	kflex_use_heap(heap);
	v = bpf_map_lookup_elem(&lk_map, &zero);
	if (!v)
		return 1;
	bpf_for(o, 0, a->outer) {
		bpf_spin_lock(&v->lock);
		v->n++;
		bpf_spin_unlock(&v->lock);
	}
	return 0;
}

/*
 * A loop that never ends (kflex-bench cancel/latency/<budget>): the run is
 * cancelled when it has run past kernel.kflex_budget_us.
 */
SEC("syscall")
int cl_forever(struct cl_args *a)
{
	__u64 i = 0;

	kflex_use_heap(heap);
	while (can_loop)
		barrier_var(i);
	a->ret = i;
	return 0;
}

SEC("syscall")
int lk_ttas(struct cl_args *a)
{
	__u64 __arena *w = cl_words;
	__u64 o;

	kflex_use_heap(heap);
	if (!w)
		return 1;
	bpf_for(o, 0, a->outer) {
		while (*(volatile __u64 __arena *)w || __sync_lock_test_and_set(w, 1))
			if (!can_loop)
				return 2;
		asm volatile("" : : : "memory");
		*(volatile __u64 __arena *)w = 0;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
