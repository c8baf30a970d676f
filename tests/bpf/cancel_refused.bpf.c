// SPDX-License-Identifier: GPL-2.0
/*
 * Programs the verifier must refuse: each reaches a cancellation point
 * (a may_goto, the point of a loop without one, the point after a heap lock
 * call) of a KFlex program while holding something a cancelled run could
 * not release, or takes heap locks and calls a kfunc that sleeps. The test
 * loads them one at a time.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 16);

extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern void bpf_preempt_disable(void) __ksym;
extern void bpf_preempt_enable(void) __ksym;
extern struct task_struct *bpf_task_acquire(struct task_struct *p) __ksym;
extern void bpf_task_release(struct task_struct *p) __ksym;

__u64 __arena *cell;
__u64 n;

#define SPIN()							\
	do {							\
		__u64 __arena *c = cell;			\
							\
		kflex_use_heap(heap);				\
		while (c && *c && can_loop)			\
			n++;					\
	} while (0)

SEC("syscall")
int hold_rcu(void *ctx)
{
	bpf_rcu_read_lock();
	SPIN();
	bpf_rcu_read_unlock();
	return 0;
}

SEC("syscall")
int hold_preempt(void *ctx)
{
	bpf_preempt_disable();
	SPIN();
	bpf_preempt_enable();
	return 0;
}

SEC("tp_btf/sched_switch")
int hold_task(u64 *ctx)
{
	struct task_struct *t = bpf_task_acquire(bpf_get_current_task_btf());

	if (!t)
		return 0;
	SPIN();
	bpf_task_release(t);
	return 0;
}

/* An iterator loop's point, reached holding an RCU read lock. */
SEC("syscall")
int hold_rcu_for(void *ctx)
{
	int i;

	kflex_use_heap(heap);
	bpf_rcu_read_lock();
	bpf_for(i, 0, 10)
		n++;
	bpf_rcu_read_unlock();
	return 0;
}

/* Holds nothing at its point: loads. */
SEC("syscall")
int hold_nothing(void *ctx)
{
	bpf_rcu_read_lock();
	bpf_rcu_read_unlock();
	SPIN();
	return 0;
}

/* The point after a heap lock call, reached holding an RCU read lock. */
SEC("syscall")
int lock_under_rcu(void *ctx)
{
	__u64 __arena *c = cell;

	if (!c)
		return 0;
	bpf_rcu_read_lock();
	if (!kflex_lock(heap, c))
		kflex_unlock(heap, c);
	bpf_rcu_read_unlock();
	return 0;
}

/*
 * Heap locks keep preemption disabled: a program that takes them may not
 * call anything that sleeps (SEC("syscall") programs are sleepable).
 */
SEC("syscall")
int lock_and_sleep(void *ctx)
{
	__u64 __arena *c = cell;

	if (c && !kflex_lock(heap, c))
		kflex_unlock(heap, c);
	return kflex_reserve(heap, 4096);
}

char LICENSE[] SEC("license") = "GPL";
