// SPDX-License-Identifier: GPL-2.0
/*
 * Programs the verifier must refuse: each reaches a cancellation point
 * (a may_goto, the point of a loop without one, the point after a heap lock
 * call) of a KFlex program while holding something a cancelled run could
 * not release (a bpf_spin_lock, a reference kept where the point's object
 * table cannot name it, different holdings on different paths), or takes
 * heap locks and calls a kfunc that sleeps. The test loads them one at a
 * time.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 16);

extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym;
extern void bpf_task_release(struct task_struct *p) __ksym;
extern void *bpf_percpu_obj_new_impl(__u64 local_type_id, void *meta) __ksym;
extern void bpf_percpu_obj_drop_impl(void *kptr, void *meta) __ksym;

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

/* A bpf_spin_lock held at a point. */
struct locked_val {
	struct bpf_spin_lock lock;
	__u64 n;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct locked_val);
} locked SEC(".maps");

SEC("xdp")
int hold_spin(struct xdp_md *ctx)
{
	struct locked_val *v;
	__u32 k = 0;

	v = bpf_map_lookup_elem(&locked, &k);
	if (!v)
		return XDP_PASS;
	bpf_spin_lock(&v->lock);
	{
		__u64 __arena *c = cell;

		kflex_use_heap(heap);
		while (c && *c && can_loop)
			v->n++;
	}
	bpf_spin_unlock(&v->lock);
	return XDP_PASS;
}

/* A task on one path, nothing on the other: no one table fits both. */
SEC("syscall")
int hold_paths(void *ctx)
{
	struct task_struct *t = NULL;

	if (n)
		t = bpf_task_from_pid(1);
	SPIN();
	if (t)
		bpf_task_release(t);
	return 0;
}

static __noinline int spin_sub(void)
{
	SPIN();
	return 0;
}

/* The task stays in the caller's register while the subprogram loops. */
SEC("syscall")
int hold_in_caller(void *ctx)
{
	struct task_struct *t = bpf_task_from_pid(1);

	if (!t)
		return 0;
	spin_sub();
	bpf_task_release(t);
	return 0;
}

static int nop_cb(__u64 i, void *data)
{
	return 0;
}

/* A task held across bpf_loop(), whose inlined loop has a point. */
SEC("syscall")
int hold_across_loop(void *ctx)
{
	struct task_struct *t = bpf_task_from_pid(1);

	kflex_use_heap(heap);
	if (!t)
		return 0;
	bpf_loop(10, nop_cb, NULL, 0);
	bpf_task_release(t);
	return 0;
}

/* A global function (verified on its own) that loops. */
__noinline int global_spin(void)
{
	SPIN();
	return 0;
}

/* A task held across a call of it: its points cannot see the caller. */
SEC("syscall")
int hold_across_global(void *ctx)
{
	struct task_struct *t = bpf_task_from_pid(1);

	if (!t)
		return 0;
	global_spin();
	bpf_task_release(t);
	return 0;
}

/* A per-CPU bpf_obj_new object: a kind cancellation does not release. */
struct obj {
	__u64 a;
	__u64 b;
};

SEC("syscall")
int hold_percpu(void *ctx)
{
	struct obj *o = bpf_percpu_obj_new_impl(bpf_core_type_id_local(struct obj), NULL);

	if (!o)
		return 0;
	SPIN();
	bpf_percpu_obj_drop_impl(o, NULL);
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

static __noinline int lock_sub(void)
{
	__u64 __arena *c = cell;

	if (c && !kflex_lock(heap, c))
		kflex_unlock(heap, c);
	return 0;
}

/* The point after the lock call in the subprogram: the task is in the
 * caller's register. */
SEC("syscall")
int lock_in_sub_holding(void *ctx)
{
	struct task_struct *t = bpf_task_from_pid(1);

	if (!t)
		return 0;
	lock_sub();
	bpf_task_release(t);
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
