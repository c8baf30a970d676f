// SPDX-License-Identifier: GPL-2.0
/*
 * Allocation from the contexts the allocator must survive (guest test
 * ctx::*): tracing programs inside the scheduler (tp_btf/sched_switch) and
 * inside the workqueue code (tp_btf/workqueue_queue_work), perf-event
 * programs (NMI where the CPU has a PMU, hard interrupt otherwise), a
 * kprobe on the raw-spinlock helper the allocator takes its own locks with,
 * so that it runs inside the allocator on the same heap, and kprobes on the
 * allocator's kfuncs.
 *
 * Every hit of a program allocates (mode 1) or frees (mode 2) a few 64-byte
 * nodes, kept on a list per CPU; user space switches the mode.
 */
#include "vmlinux.h"
#include <bpf/bpf_tracing.h>
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 20);

#define MAX_CPUS 64
#define PER_HIT 8

struct node {
	struct node __arena *next;
	__u64 pad[7];
};

/* One list per CPU: a program never nests with itself on a CPU. */
struct node __arena *heads[MAX_CPUS];
__u64 ok[MAX_CPUS], nfail[MAX_CPUS], freed[MAX_CPUS], hits[MAX_CPUS];
/* 0 idle, 1 allocate and keep, 2 free what was kept. */
int mode;

static __always_inline void step(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct node __arena *n;
	int i;

	if (cpu >= MAX_CPUS)
		return;
	hits[cpu]++;
	for (i = 0; i < PER_HIT; i++) {
		if (mode == 1) {
			n = kflex_malloc(heap, sizeof(*n));
			if (!n) {
				nfail[cpu]++;
				return;
			}
			n->next = heads[cpu];
			heads[cpu] = n;
			ok[cpu]++;
		} else if (mode == 2) {
			n = heads[cpu];
			if (!n)
				return;
			heads[cpu] = n->next;
			kflex_free(heap, n);
			freed[cpu]++;
		}
	}
}

SEC("tp_btf/sched_switch")
int BPF_PROG(on_sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	step();
	return 0;
}

SEC("tp_btf/workqueue_queue_work")
int BPF_PROG(on_queue_work, int req_cpu, struct pool_workqueue *pwq,
	     struct work_struct *work)
{
	step();
	return 0;
}

SEC("perf_event")
int on_perf_event(struct bpf_perf_event_data *ctx)
{
	step();
	return 0;
}

/* Inside the allocator: the CPU's cache of this heap is in use. */
SEC("kprobe/rust_helper_kflex_raw_lock")
int on_alloc_lock(struct pt_regs *ctx)
{
	step();
	return 0;
}

/* On the kfuncs themselves, entered where the inline paths fall back. */
SEC("kprobe/bpf_kflex_alloc")
int on_alloc_kfunc(struct pt_regs *ctx)
{
	step();
	return 0;
}

SEC("kprobe/bpf_kflex_free")
int on_free_kfunc(struct pt_regs *ctx)
{
	step();
	return 0;
}

/* The driver of the kprobe tests: allocation churn on this heap, one
 * array of pointers per caller (slot 0 or 1). */
struct churn_args {
	__u64 rounds;
	__u64 slot;
	__u64 fails;
};

void __arena *churn_ptrs[2][1024];

/* a->rounds rounds of 1024 allocations of size bytes, then their frees. */
static __always_inline __u64 churn_size(struct churn_args *a, __u64 size)
{
	__u64 r, i, fails = 0, s = a->slot & 1;

	bpf_for(r, 0, a->rounds) {
		bpf_for(i, 0, 1024) {
			churn_ptrs[s][i] = kflex_malloc(heap, size);
			if (!churn_ptrs[s][i])
				fails++;
		}
		bpf_for(i, 0, 1024) {
			kflex_free(heap, churn_ptrs[s][i]);
			churn_ptrs[s][i] = 0;
		}
	}
	return fails;
}

SEC("syscall")
int churn(struct churn_args *a)
{
	a->fails = churn_size(a, 16);
	return 0;
}

/*
 * The churn in the nodes' class: the inline fast path of the interrupted
 * run and of a perf-event program that interrupts it use the same
 * magazines.
 */
SEC("syscall")
int churn_nodes(struct churn_args *a)
{
	a->fails = churn_size(a, sizeof(struct node));
	return 0;
}

/* Puts a->rounds nodes on the list of each of CPUs 0 and 1, for programs
 * that free them later (allocated here, in an ordinary section). */
SEC("syscall")
int fill(struct churn_args *a)
{
	struct node __arena *n;
	__u64 cpu, i;

	/* The whole heap populated: the nodes must not depend on the worker. */
	if (kflex_reserve(heap, 1 << 20))
		return 2;
	bpf_for(cpu, 0, 2) {
		bpf_for(i, 0, a->rounds) {
			n = kflex_malloc(heap, sizeof(*n));
			if (!n)
				return 1;
			n->next = heads[cpu];
			heads[cpu] = n;
			ok[cpu]++;
		}
	}
	return 0;
}

/* Frees what the tracing programs kept (after they are detached). */
SEC("syscall")
int free_all(void *ctx)
{
	struct node __arena *n;
	__u64 cpu, i;

	bpf_for(cpu, 0, MAX_CPUS) {
		bpf_for(i, 0, 1 << 16) {
			n = heads[cpu];
			if (!n)
				break;
			heads[cpu] = n->next;
			kflex_free(heap, n);
			freed[cpu]++;
		}
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
