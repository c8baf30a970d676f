// SPDX-License-Identifier: GPL-2.0
/*
 * Programs the heap-lock tests drive through BPF_PROG_TEST_RUN (SEC("syscall"),
 * so a cancelled run returns -ECANCELED): take and release
 * locks on words of one heap object, in every way the kernel must catch:
 * AA, ABBA between two CPUs, a ninth lock, an unlock of a lock the run does
 * not hold, a return with locks held, a wait for a word user space holds,
 * and a nested run (a kprobe program) on the CPU of a run holding locks.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 20);

#define NWORDS 16

/* The lock words: NWORDS u32 in one heap object (made by setup). */
__u32 __arena *words;

struct lock_args {
	__u32 first;	/* first word */
	__u32 n;	/* words to take, first, first+1, ... */
	__u32 release;	/* release them before returning */
	__u32 second;	/* abba: the word taken second */
	__u32 spin;	/* abba: iterations between the two locks */
	__s32 ret;	/* out: the last kfunc's return value */
	__u32 taken;	/* out: locks taken */
	__u32 done;	/* out: the run reached its end */
};

SEC("syscall")
int setup(void *ctx)
{
	__u32 __arena *w = kflex_malloc(heap, NWORDS * sizeof(*w));
	int i;

	if (!w)
		return 1;
	bpf_for(i, 0, NWORDS)
		w[i] = 0;
	words = w;
	return 0;
}

/* Takes n words from first on; releases them (in reverse) if asked. */
SEC("syscall")
int take(struct lock_args *a)
{
	__u32 __arena *w = words;
	__u32 n = a->n < NWORDS ? a->n : NWORDS, first = a->first;
	int i;

	a->taken = 0;
	a->done = 0;
	if (!w)
		return 1;
	bpf_for(i, 0, n) {
		a->ret = kflex_lock(heap, &w[(first + i) % NWORDS]);
		if (a->ret)
			return 2;
		a->taken++;
	}
	if (a->release) {
		bpf_for(i, 0, n) {
			a->ret = kflex_unlock(heap, &w[(first + n - 1 - i) % NWORDS]);
			if (a->ret)
				return 3;
		}
	}
	a->done = 1;
	return 0;
}

/* The same lock twice (AA). */
SEC("syscall")
int aa(struct lock_args *a)
{
	__u32 __arena *w = words;

	a->done = 0;
	if (!w)
		return 1;
	a->ret = kflex_lock(heap, &w[a->first % NWORDS]);
	if (a->ret)
		return 2;
	a->ret = kflex_lock(heap, &w[a->first % NWORDS]);
	a->done = 1;
	return 0;
}

/* Releases a word without taking it first. */
SEC("syscall")
int unlock_only(struct lock_args *a)
{
	__u32 __arena *w = words;

	if (!w)
		return 1;
	a->ret = kflex_unlock(heap, &w[a->first % NWORDS]);
	a->done = 1;
	return 0;
}

__u64 abba_spins;

/* Takes first, spins, takes second, releases both. */
SEC("syscall")
int abba(struct lock_args *a)
{
	__u32 __arena *w = words;
	int i;

	a->done = 0;
	if (!w)
		return 1;
	a->ret = kflex_lock(heap, &w[a->first % NWORDS]);
	if (a->ret)
		return 2;
	bpf_for(i, 0, a->spin)
		__sync_fetch_and_add(&abba_spins, 1);
	a->ret = kflex_lock(heap, &w[a->second % NWORDS]);
	if (a->ret)
		return 3;
	kflex_unlock(heap, &w[a->second % NWORDS]);
	kflex_unlock(heap, &w[a->first % NWORDS]);
	a->done = 1;
	return 0;
}

/* A lock word outside the heap's objects (offset 8: the system page). */
SEC("syscall")
int bad_word(struct lock_args *a)
{
	__u32 __arena *w = words;

	if (!w)
		return 1;
	a->ret = kflex_lock(heap, (__u32 __arena *)((__u64)w & ~0xfffffULL) + 2);
	a->done = 1;
	return 0;
}

/*
 * Nesting: `outer` holds words 0 and 1 and, while it releases word 1, the
 * kprobe program `inner` runs on the same CPU inside that call and asks for
 * word 0, which the interrupted run holds: only `inner` is cancelled.
 */
__u32 nest_armed;
__u64 inner_runs;
__u64 inner_done;

SEC("kprobe/kflex_heap_unlock")
int inner(void *ctx)
{
	__u32 __arena *w = words;

	if (!nest_armed || !w)
		return 0;
	nest_armed = 0;
	inner_runs++;
	if (kflex_lock(heap, &w[0]))
		return 0;
	inner_done++;
	kflex_unlock(heap, &w[0]);
	return 0;
}

SEC("syscall")
int outer(struct lock_args *a)
{
	__u32 __arena *w = words;

	a->done = 0;
	if (!w)
		return 1;
	if (kflex_lock(heap, &w[0]))
		return 2;
	if (kflex_lock(heap, &w[1]))
		return 3;
	nest_armed = 1;
	a->ret = kflex_unlock(heap, &w[1]);
	nest_armed = 0;
	kflex_unlock(heap, &w[0]);
	a->done = 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
