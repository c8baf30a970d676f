// SPDX-License-Identifier: GPL-2.0
/*
 * Programs that hold a kernel resource across a loop that, when `mark` is
 * set, ends only when the run is cancelled: a task, a cgroup, a cpumask, a
 * bpf_obj_new object, an open-coded iterator (over a task's VMAs, holding
 * its mmap lock), a ring buffer reservation or dynptr, a socket from
 * bpf_sk_lookup_tcp, an RCU read-side section, preemption disabled, or
 * several at once with heap locks. The cancellation releases them (the
 * point's object table); the tests check that nothing leaked and nothing
 * was released twice. Unmarked runs release them themselves.
 */
#include "vmlinux.h"
#include <bpf/bpf_core_read.h>
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 16);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} rb SEC(".maps");

extern struct task_struct *bpf_task_from_pid(s32 pid) __ksym;
extern void bpf_task_release(struct task_struct *p) __ksym;
extern struct cgroup *bpf_cgroup_from_id(u64 cgid) __ksym;
extern void bpf_cgroup_release(struct cgroup *cgrp) __ksym;
extern struct bpf_cpumask *bpf_cpumask_create(void) __ksym;
extern void bpf_cpumask_release(struct bpf_cpumask *cpumask) __ksym;
extern void *bpf_obj_new_impl(__u64 local_type_id, void *meta) __ksym;
extern void bpf_obj_drop_impl(void *kptr, void *meta) __ksym;
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern void bpf_preempt_disable(void) __ksym;
extern void bpf_preempt_enable(void) __ksym;
extern int bpf_iter_task_vma_new(struct bpf_iter_task_vma *it, struct task_struct *task,
				 __u64 addr) __ksym;
extern struct vm_area_struct *bpf_iter_task_vma_next(struct bpf_iter_task_vma *it) __ksym;
extern void bpf_iter_task_vma_destroy(struct bpf_iter_task_vma *it) __ksym;

struct obj {
	__u64 a;
	__u64 b;
};

#define obj_new() ((struct obj *)bpf_obj_new_impl(bpf_core_type_id_local(struct obj), NULL))
#define obj_drop(o) bpf_obj_drop_impl(o, NULL)

/* A heap word that stays 1 (made by setup): the marked loops never end. */
__u64 __arena *cell;
/* Heap lock words (rel_many). */
__u32 __arena *words;
__u32 mark;
__s32 pid;
__u64 cgid;
/* The value of the next ring buffer record. */
__u64 record;
/* The connection rel_sock looks up. */
__u32 saddr, daddr;
__u16 sport, dport;
/* Runs that got past their loop; steps of the loops. */
__u64 after;
__u64 spins;
/* The task's rcu_users count (task_users). */
__u64 users;

SEC("syscall")
int setup(void *ctx)
{
	__u64 __arena *c = kflex_malloc(heap, 8);
	__u32 __arena *w = kflex_malloc(heap, 64);

	if (!c || !w)
		return 1;
	*c = 1;
	cell = c;
	words = w;
	return 0;
}

/* Reads the rcu_users count of task pid (its own reference included). */
SEC("syscall")
int task_users(void *ctx)
{
	struct task_struct *t = bpf_task_from_pid(pid);

	if (!t)
		return 1;
	users = t->rcu_users.refs.counter;
	bpf_task_release(t);
	return 0;
}

#define SPIN()							\
	do {							\
		__u64 __arena *c = cell;			\
								\
		kflex_use_heap(heap);				\
		if (mark)					\
			while (c && *c && can_loop)		\
				spins++;			\
	} while (0)

SEC("syscall")
int rel_task(void *ctx)
{
	struct task_struct *t = bpf_task_from_pid(pid);

	if (!t)
		return 1;
	SPIN();
	bpf_task_release(t);
	after++;
	return 0;
}

SEC("syscall")
int rel_cgroup(void *ctx)
{
	struct cgroup *cg = bpf_cgroup_from_id(cgid);

	if (!cg)
		return 1;
	SPIN();
	bpf_cgroup_release(cg);
	after++;
	return 0;
}

SEC("syscall")
int rel_cpumask(void *ctx)
{
	struct bpf_cpumask *m = bpf_cpumask_create();

	if (!m)
		return 1;
	SPIN();
	bpf_cpumask_release(m);
	after++;
	return 0;
}

SEC("syscall")
int rel_obj(void *ctx)
{
	struct obj *o = obj_new();

	if (!o)
		return 1;
	o->a = 1;
	SPIN();
	obj_drop(o);
	after++;
	return 0;
}

SEC("syscall")
int rel_ringbuf(void *ctx)
{
	__u64 *r = bpf_ringbuf_reserve(&rb, sizeof(*r), 0);

	if (!r)
		return 1;
	*r = record;
	SPIN();
	bpf_ringbuf_submit(r, 0);
	after++;
	return 0;
}

SEC("syscall")
int rel_dynptr(void *ctx)
{
	struct bpf_dynptr d;
	__u64 v = record;

	bpf_ringbuf_reserve_dynptr(&rb, sizeof(v), 0, &d);
	bpf_dynptr_write(&d, 0, &v, sizeof(v), 0);
	SPIN();
	bpf_ringbuf_submit_dynptr(&d, 0);
	after++;
	return 0;
}

SEC("syscall")
int rel_rcu(void *ctx)
{
	bpf_rcu_read_lock();
	SPIN();
	bpf_rcu_read_unlock();
	after++;
	return 0;
}

SEC("syscall")
int rel_preempt(void *ctx)
{
	bpf_preempt_disable();
	bpf_preempt_disable();
	SPIN();
	bpf_preempt_enable();
	bpf_preempt_enable();
	after++;
	return 0;
}

/*
 * An open-coded iterator over the task's VMAs: it holds the task and the
 * mmap lock (read) until destroyed.
 */
SEC("syscall")
int rel_iter(void *ctx)
{
	struct task_struct *t = bpf_task_from_pid(pid);
	struct bpf_iter_task_vma it;
	struct vm_area_struct *v;

	if (!t)
		return 1;
	bpf_iter_task_vma_new(&it, t, 0);
	while ((v = bpf_iter_task_vma_next(&it))) {
		SPIN();
		break;
	}
	bpf_iter_task_vma_destroy(&it);
	bpf_task_release(t);
	after++;
	return 0;
}

/* The spin in a subprogram: the task is in the caller's stack slot. */
static __noinline int spin_sub(void)
{
	SPIN();
	return 0;
}

SEC("syscall")
int rel_task_sub(void *ctx)
{
	struct task_struct *volatile t = bpf_task_from_pid(pid);

	if (!t)
		return 1;
	spin_sub();
	bpf_task_release(t);
	after++;
	return 0;
}

/* Everything at once: two heap locks, a task, an object, a reservation,
 * an RCU section and preemption disabled. */
SEC("xdp")
int rel_many(struct xdp_md *ctx)
{
	__u32 __arena *w = words;
	struct task_struct *t;
	struct obj *o;
	__u64 *r;

	if (!w || kflex_lock(heap, &w[0]))
		return XDP_DROP;
	if (kflex_lock(heap, &w[4])) {
		kflex_unlock(heap, &w[0]);
		return XDP_DROP;
	}
	t = bpf_task_from_pid(pid);
	o = obj_new();
	r = bpf_ringbuf_reserve(&rb, sizeof(*r), 0);
	if (!t || !o || !r) {
		if (t)
			bpf_task_release(t);
		if (o)
			obj_drop(o);
		if (r)
			bpf_ringbuf_discard(r, 0);
		kflex_unlock(heap, &w[4]);
		kflex_unlock(heap, &w[0]);
		return XDP_DROP;
	}
	*r = record;
	bpf_rcu_read_lock();
	bpf_preempt_disable();
	SPIN();
	bpf_preempt_enable();
	bpf_rcu_read_unlock();
	bpf_ringbuf_submit(r, 0);
	obj_drop(o);
	bpf_task_release(t);
	kflex_unlock(heap, &w[4]);
	kflex_unlock(heap, &w[0]);
	after++;
	return XDP_TX;
}

SEC("xdp")
int rel_sock(struct xdp_md *ctx)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	t.ipv4.saddr = saddr;
	t.ipv4.daddr = daddr;
	t.ipv4.sport = sport;
	t.ipv4.dport = dport;
	sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), -1 /* BPF_F_CURRENT_NETNS */, 0);
	if (!sk)
		return XDP_DROP;
	SPIN();
	bpf_sk_release(sk);
	after++;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
