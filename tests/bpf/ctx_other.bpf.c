// SPDX-License-Identifier: GPL-2.0
/*
 * A kprobe inside the allocator that allocates from *another* heap (guest
 * test ctx::*): it runs while the allocator holds, or is about to take, a
 * lock of the first heap, so its own allocator section is nested and may
 * only try the second heap's locks. Every hit allocates (mode 1) or frees
 * (mode 2) one node, kept on a list per CPU.
 */
#include "vmlinux.h"
#include <bpf/bpf_tracing.h>
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 20);

#define MAX_CPUS 64

struct node {
	struct node __arena *next;
	__u64 pad[3];
};

struct node __arena *heads[MAX_CPUS];
__u64 ok[MAX_CPUS], nfail[MAX_CPUS], freed[MAX_CPUS], hits[MAX_CPUS];
int mode;

SEC("kprobe/rust_helper_kflex_raw_lock")
int on_other_heap_lock(struct pt_regs *ctx)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct node __arena *n;

	if (cpu >= MAX_CPUS)
		return 0;
	hits[cpu]++;
	if (mode == 1) {
		n = kflex_malloc(heap, sizeof(*n));
		if (!n) {
			nfail[cpu]++;
			return 0;
		}
		n->next = heads[cpu];
		heads[cpu] = n;
		ok[cpu]++;
	} else if (mode == 2) {
		n = heads[cpu];
		if (!n)
			return 0;
		heads[cpu] = n->next;
		kflex_free(heap, n);
		freed[cpu]++;
	}
	return 0;
}

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
