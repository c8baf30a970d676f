/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kflex.h - the header every KFlex BPF program includes.
 *
 * Declares KFlex heaps and the KFlex kfuncs. A heap is a BPF arena map with
 * the BPF_F_KFLEX flag, so the same source builds for the upstream arena
 * (define KFLEX_UPSTREAM_ARENA) or for a KFlex heap.
 */
#ifndef __KFLEX_H
#define __KFLEX_H

#include <bpf/bpf_helpers.h>

#ifndef __arena
#define __arena __attribute__((address_space(1)))
#endif

/*
 * BPF_F_KFLEX and the heap limits: the kernel's UAPI header (vmlinux.h has
 * no macros). `make tools` puts it next to vmlinux.h; on a machine with the
 * KFlex kernel's headers installed it is <linux/kflex.h> as well.
 */
#include <linux/kflex.h>

/*
 * KFLEX_HEAP(name, bytes) declares a heap of `bytes` (a power of two from
 * 64 KiB to 256 GiB). Built with -DKFLEX_UPSTREAM_ARENA, the same source
 * declares an upstream arena instead (at most 4 GiB).
 */
#ifdef KFLEX_UPSTREAM_ARENA
#define KFLEX_HEAP_FLAGS 0
#else
#define KFLEX_HEAP_FLAGS BPF_F_KFLEX
#endif

#define KFLEX_HEAP(name, bytes)						\
	struct {							\
		__uint(type, BPF_MAP_TYPE_ARENA);			\
		__uint(map_flags, BPF_F_MMAPABLE | KFLEX_HEAP_FLAGS);	\
		__uint(max_entries, (bytes) / 4096);			\
	} name SEC(".maps")

/* KFlex kfuncs (kernel/bpf/kflex_glue.c). */
extern void __arena *bpf_kflex_alloc(void *heap, __u64 size) __ksym __weak;
extern void bpf_kflex_free(void *heap, void __arena *ptr) __ksym __weak;
extern int bpf_kflex_reserve(void *heap, __u64 bytes) __ksym __weak;
/* The last argument is set by the verifier (the calling frame): pass 0. */
extern int bpf_kflex_lock(void *heap, void __arena *word, void *fp__ign) __ksym __weak;
extern int bpf_kflex_unlock(void *heap, void __arena *word, void *fp__ign) __ksym __weak;

#ifdef KFLEX_UPSTREAM_ARENA
/* Upstream arena: the BPF free-list allocator (sleepable programs only). */
#include "arena_alloc.h"
#define kflex_malloc(heap, size) arena_fl_alloc(&(heap), (size))
#define kflex_free(heap, ptr) arena_fl_free(&(heap), (ptr))
#define kflex_reserve(heap, bytes) 0
#else
/* Allocate `size` bytes from `heap`: NULL when exhausted. Any context. */
#define kflex_malloc(heap, size) bpf_kflex_alloc(&(heap), (size))
/* Free an object of `heap`; bad pointers are refused and counted. */
#define kflex_free(heap, ptr) bpf_kflex_free(&(heap), (ptr))
/* Populate `heap` so that `bytes` more can be allocated without waiting for
 * the background refill; sleepable programs only. 0 or -ENOMEM. */
#define kflex_reserve(heap, bytes) bpf_kflex_reserve(&(heap), (bytes))
/*
 * Heap locks: `word` is an __arena pointer to a 4-byte aligned word (the
 * first 4 bytes of an 8-byte one), 0 when free. kflex_lock() returns 0 with
 * the lock held; a lock that would deadlock (AA, or a cycle of CPUs), that
 * is not granted within the run's budget, or a ninth lock held on the CPU
 * cancels the run instead (the program returns its default verdict, its
 * locks are released). Non-zero only where the run cannot be cancelled (a
 * callback called by a helper, kernel.kflex_cancel_points=1, NMI) or for a
 * word that is not in the heap's objects. A program that calls them may not
 * call anything that sleeps (bpf_kflex_reserve, bpf_copy_from_user, ...).
 * kflex_unlock(): 0, or -EPERM if this run does not hold the lock. Locks
 * still held when the program returns are released (and counted).
 */
#define kflex_lock(heap, word) bpf_kflex_lock(&(heap), (word), (void *)0)
#define kflex_unlock(heap, word) bpf_kflex_unlock(&(heap), (word), (void *)0)
#endif

/*
 * can_loop: true while the program's loop budget lasts (may_goto), as in
 * the kernel's selftests (bpf_experimental.h); for loops the verifier cannot
 * bound: while (cond && can_loop) ...
 */
#ifndef can_loop
#define can_loop							\
	({								\
		__label__ l_break, l_continue;				\
		bool ret = true;					\
		asm volatile goto("may_goto %l[l_break]" :::: l_break);	\
		goto l_continue;					\
	l_break:							\
		ret = false;						\
	l_continue:;							\
		ret;							\
	})
#endif

/*
 * The verifier associates a program with its heap when the program names
 * the heap map. A program that dereferences heap pointers without calling a
 * heap kfunc (say, it only walks a structure) must name it with this.
 */
#define kflex_use_heap(heap) asm volatile("" : : "r"(&(heap)))

/*
 * What a cancelled run of this object's programs returns instead of the
 * hook's default (XDP_PASS, TC_ACT_OK, SK_PASS, 0 for tracing, -ECANCELED for
 * SEC("syscall")). User space may change it before load (it is read-only
 * data); the verifier reads it at load, refuses a value the hook does not
 * accept, and uses it for programs that name it with
 * kflex_use_cancel_verdict() (it looks in the read-only data the program
 * uses).
 */
#define KFLEX_CANCEL_VERDICT(v) const volatile __u32 kflex_cancel_verdict = (v)
#define kflex_use_cancel_verdict() ((void)kflex_cancel_verdict)

/* Counters shared by the packet counter and user space. */
struct kflex_counters {
	__u64 packets;
	__u64 bytes;
};

#endif /* __KFLEX_H */
