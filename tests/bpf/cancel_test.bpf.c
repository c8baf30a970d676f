// SPDX-License-Identifier: GPL-2.0
/*
 * Programs the cancellation tests drive through BPF_PROG_TEST_RUN: loops
 * that end only when the run is cancelled (or, for nested bpf_repeat(), after
 * 2^46 steps) (KFlex cancellation points,
 * kernel.kflex_budget_us), in the main program, in a subprogram and in
 * callbacks (bpf_loop(), which the verifier may inline, and
 * bpf_for_each_map_elem(), which it never does), over a heap list whose only
 * node points to itself, and nested bpf_loop()s whose callbacks have no loop.
 * A packet (or syscall argument) without the mark does not loop.
 */
#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "kflex.h"

extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern void bpf_preempt_disable(void) __ksym;
extern void bpf_preempt_enable(void) __ksym;
extern void *bpf_obj_new_impl(__u64 local_type_id, void *meta) __ksym;
extern void bpf_obj_drop_impl(void *kptr, void *meta) __ksym;

KFLEX_HEAP(heap, 1 << 16);

#define MARK 0xCA

struct node {
	struct node __arena *next;
	__u64 value;
};

/* The ring: one node whose next is itself (made by make_ring). */
struct node __arena *ring;
/* Nodes visited by the loops; runs that got past their loop. */
__u64 spins;
__u64 finished;

SEC("syscall")
int make_ring(void *ctx)
{
	struct node __arena *n = kflex_malloc(heap, sizeof(*n));

	if (!n)
		return 1;
	n->next = n;
	n->value = MARK;
	ring = n;
	return 0;
}

/* Walks the ring until the run is cancelled (the walk never ends). */
static __always_inline void walk_ring(void)
{
	struct node __arena *p = ring;

	while (p && can_loop) {
		p = p->next;
		spins++;
	}
}

static bool marked(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *b = data;

	return data + 1 <= end && b[0] == MARK;
}

SEC("xdp")
int spin_main(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	walk_ring();
	finished++;
	return XDP_TX;
}

static __noinline int spin_in_subprog(__u64 depth)
{
	if (depth)
		return spin_in_subprog(depth - 1) + 1;
	walk_ring();
	return 0;
}

SEC("xdp")
int spin_sub(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	spin_in_subprog(3);
	finished++;
	return XDP_TX;
}

static int spin_cb(__u64 i, void *data)
{
	walk_ring();
	return 1;
}

SEC("xdp")
int spin_callback(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_loop(1, spin_cb, NULL, 0);
	finished++;
	return XDP_TX;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} one SEC(".maps");

static long spin_elem(struct bpf_map *map, __u32 *key, __u64 *val, void *data)
{
	walk_ring();
	return 1;
}

/* bpf_for_each_map_elem() calls its callback from the kernel, never inline. */
SEC("xdp")
int spin_foreach(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_for_each_map_elem(&one, spin_elem, NULL, 0);
	finished++;
	return XDP_TX;
}

/* BPF_MAX_LOOPS (include/linux/bpf.h) */
#define MAX_LOOPS (1 << 23)

/*
 * Nested bpf_repeat(BPF_MAX_LOOPS): 2^46 steps, no may_goto; the verifier
 * proves it ends, the loops' own points cancel it.
 */
SEC("xdp")
int spin_repeat(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_repeat(MAX_LOOPS) {
		bpf_repeat(MAX_LOOPS)
			(*(volatile __u64 *)&spins)++;
	}
	finished++;
	return XDP_TX;
}

/*
 * Nested bpf_loop(BPF_MAX_LOOPS) with callbacks that have no loop of their
 * own: 2^46 calls. With constant zero flags the verifier inlines both
 * loops; with flags it cannot know (loop_flags, 0 at run time) the helper
 * calls the callbacks.
 */
__u64 loop_flags;

static int inner_cb(__u64 i, void *data)
{
	spins++;
	return 0;
}

static int outer_cb(__u64 i, void *data)
{
	bpf_loop(MAX_LOOPS, inner_cb, NULL, 0);
	return 0;
}

SEC("xdp")
int nested_loops(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_loop(MAX_LOOPS, outer_cb, NULL, 0);
	finished++;
	return XDP_TX;
}

static int outer_cb_helper(__u64 i, void *data)
{
	bpf_loop(MAX_LOOPS, inner_cb, NULL, loop_flags);
	return 0;
}

SEC("xdp")
int nested_loops_helper(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_loop(MAX_LOOPS, outer_cb_helper, NULL, loop_flags);
	finished++;
	return XDP_TX;
}

/*
 * Heap faults (kernel.kflex_fault_mode): accesses 32 KiB past the heap's
 * last word and before its first land in the guard zones. fault_ptr is a
 * user address in the heap (set by the test), fault_val what a load read.
 */
__u64 fault_ptr;
__u64 fault_val;

#define FAULT_LOAD_ABOVE(p, r)						\
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"		\
		     "%[r] = *(u64 *)(%[p] + 32760)\n"			\
		     : [p] "+r"(p), [r] "+r"(r) : : "memory")

SEC("xdp")
int fault_load(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, r = 0xdead;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	FAULT_LOAD_ABOVE(p, r);
	fault_val = r;
	finished++;
	return XDP_TX;
}

SEC("xdp")
int fault_store(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, v = 7;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "*(u64 *)(%[p] - 32768) = %[v]\n"
		     : [p] "+r"(p) : [v] "r"(v) : "memory");
	finished++;
	return XDP_TX;
}

static __noinline __u64 load_in_subprog(__u64 p)
{
	__u64 r = 0xdead;

	FAULT_LOAD_ABOVE(p, r);
	return r;
}

SEC("xdp")
int fault_sub(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	fault_val = load_in_subprog(fault_ptr);
	finished++;
	return XDP_TX;
}

/* Under an RCU read lock: the cancellation leaves the read-side section. */
SEC("xdp")
int fault_rcu(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, r = 0xdead;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_rcu_read_lock();
	FAULT_LOAD_ABOVE(p, r);
	bpf_rcu_read_unlock();
	fault_val = r;
	finished++;
	return XDP_TX;
}

/* Atomics on the heap: a plain add 32 KiB past the last word, a fetch-add
 * before the first word (its operation's code once equalled the mark). */
SEC("xdp")
int fault_atomic_add(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, v = 1;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "lock *(u64 *)(%[p] + 32760) += %[v]\n"
		     : [p] "+r"(p) : [v] "r"(v) : "memory");
	finished++;
	return XDP_TX;
}

SEC("xdp")
int fault_atomic_fetch(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, v = 1;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "%[v] = atomic_fetch_add((u64 *)(%[p] - 32768), %[v])\n"
		     : [p] "+r"(p), [v] "+r"(v) : : "memory");
	fault_val = v;
	finished++;
	return XDP_TX;
}

/*
 * A fetch-add under an RCU read lock, in a program that has cancellation
 * frames anyway (its other heap load may cancel).
 */
SEC("xdp")
int fault_atomic_rcu(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, v = 1, r = 0;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	if (fault_val == 0x5eed)	/* never at run time */
		FAULT_LOAD_ABOVE(p, r);
	bpf_rcu_read_lock();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "%[v] = atomic_fetch_add((u64 *)(%[p] + 32760), %[v])\n"
		     : [p] "+r"(p), [v] "+r"(v) : : "memory");
	bpf_rcu_read_unlock();
	fault_val = v + r;
	finished++;
	return XDP_TX;
}

struct fault_obj {
	__u64 a;
};

/* Holding a bpf_obj_new object (in a callee-saved register across the
 * access): the cancellation drops it. */
SEC("xdp")
int fault_obj(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, r = 0xdead;
	struct fault_obj *o;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	o = bpf_obj_new_impl(bpf_core_type_id_local(struct fault_obj), NULL);
	if (!o)
		return XDP_ABORTED;
	FAULT_LOAD_ABOVE(p, r);
	o->a = r;
	fault_val = o->a;
	bpf_obj_drop_impl(o, NULL);
	finished++;
	return XDP_TX;
}

/* With preemption disabled: the cancellation enables it again. */
SEC("xdp")
int fault_preempt(struct xdp_md *ctx)
{
	__u64 p = fault_ptr, v = 7;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_preempt_disable();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "*(u64 *)(%[p] - 32768) = %[v]\n"
		     : [p] "+r"(p) : [v] "r"(v) : "memory");
	bpf_preempt_enable();
	finished++;
	return XDP_TX;
}

/*
 * A store of an immediate under an RCU read lock: the verifier makes it a
 * store of BPF_REG_AX so that its mark can carry the object table; its
 * fault cancels the run and releases the RCU read lock.
 */
SEC("xdp")
int fault_imm_rcu(struct xdp_md *ctx)
{
	__u64 p = fault_ptr;

	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_rcu_read_lock();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "*(u64 *)(%[p] - 32768) = 7\n"
		     : [p] "+r"(p) : : "memory");
	bpf_rcu_read_unlock();
	finished++;
	return XDP_TX;
}

static long fault_elem(struct bpf_map *map, __u32 *key, __u64 *val, void *data)
{
	__u64 p = fault_ptr, r = 0xdead;

	FAULT_LOAD_ABOVE(p, r);
	fault_val = r;
	return 1;
}

/* In a callback the kernel calls, which cannot reach the main frame. */
SEC("xdp")
int fault_callback(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!marked(ctx))
		return XDP_DROP;
	bpf_for_each_map_elem(&one, fault_elem, NULL, 0);
	finished++;
	return XDP_TX;
}

/*
 * Real traffic: a UDP datagram to UDP_PORT whose payload starts with the
 * mark walks the ring until the run is cancelled (then XDP_PASS lets it
 * through to the socket); other datagrams to the port are counted and
 * passed; everything else (ARP, ping) is passed untouched.
 */
#define UDP_PORT 7777
#define ETH_P_IP 0x0800
__u64 udp_marked, udp_unmarked;

/* Whether ctx is a marked datagram to UDP_PORT; counts both kinds. */
static __always_inline bool udp_marked_datagram(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *payload = (void *)(udp + 1);

	if ((void *)(payload + 1) > end ||
	    eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(UDP_PORT))
		return false;
	if (*payload != MARK) {
		__sync_fetch_and_add(&udp_unmarked, 1);
		return false;
	}
	__sync_fetch_and_add(&udp_marked, 1);
	return true;
}

SEC("xdp")
int spin_udp(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!udp_marked_datagram(ctx))
		return XDP_PASS;
	walk_ring();
	finished++;
	return XDP_DROP;
}

/*
 * The same in callbacks: nested bpf_loop(BPF_MAX_LOOPS) that the helper
 * calls back (run in the receiving softirq, so the JIT arms this CPU's
 * kflex_cb, not the task's).
 */
SEC("xdp")
int spin_udp_cb(struct xdp_md *ctx)
{
	kflex_use_heap(heap);
	if (!udp_marked_datagram(ctx))
		return XDP_PASS;
	bpf_loop(MAX_LOOPS, outer_cb_helper, NULL, loop_flags);
	finished++;
	return XDP_DROP;
}

SEC("syscall")
int spin_syscall(__u64 *arg)
{
	kflex_use_heap(heap);
	if (*arg != MARK)
		return 0;
	walk_ring();
	finished++;
	return 1;
}

/*
 * Two sleepable runs on one CPU, each inside a helper call that calls back
 * (bpf_loop() with flags the verifier cannot know, so the helper calls the
 * callbacks and the JIT arms the call). The test parks each in
 * bpf_copy_from_user() on a userfaultfd page (*arg is its address): first
 * the sleeper, in its first callback, then the parker. Woken while the
 * parker stays parked, the sleeper's later callbacks must see its own
 * arming: stopped past the budget, the run cancelled, long before
 * BPF_MAX_LOOPS calls.
 */
__u64 sleeper_calls;
__u64 parker_runs;

static int sleeper_cb(__u64 i, void *data)
{
	__u64 v;

	if (i == 0)
		bpf_copy_from_user(&v, sizeof(v), (void *)*(__u64 *)data);
	sleeper_calls++;
	return 0;
}

SEC("syscall")
int sleeper(__u64 *arg)
{
	__u64 addr = *arg;

	kflex_use_heap(heap);
	bpf_loop(MAX_LOOPS, sleeper_cb, &addr, loop_flags);
	finished++;
	return 1;
}

static int parker_cb(__u64 i, void *data)
{
	__u64 v;

	bpf_copy_from_user(&v, sizeof(v), (void *)*(__u64 *)data);
	return 1;
}

SEC("syscall")
int parker(__u64 *arg)
{
	__u64 addr = *arg;

	kflex_use_heap(heap);
	bpf_loop(1, parker_cb, &addr, loop_flags);
	parker_runs++;
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
