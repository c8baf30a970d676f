// SPDX-License-Identifier: GPL-2.0
/*
 * Guard-cost benchmark: the same heap-heavy code run on the upstream arena
 * (-DKFLEX_UPSTREAM_ARENA) and on a KFlex heap loaded under each guard mode.
 *
 * - chase: walk a linked list of nodes scattered in the heap, summing and
 *   updating their values (pointers loaded from the heap, cast each time);
 * - scatter: increment pseudo-random words of a 1 MiB array through a
 *   pointer plus a variable index (a guard on every access unless elided).
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 28);

struct node {
	struct node __arena *next;
	__u64 value;
	__u64 pad[6];
};

struct gb_args {
	__u64 n;	/* nodes, or array words */
	__u64 rounds;	/* walks, or increments */
	__u64 seed;
	__u64 ret;
};

struct node __arena *gb_list;
__u64 __arena *gb_array;
__u64 gb_words;

SEC("syscall")
int gb_setup(struct gb_args *a)
{
	struct node __arena *n;
	__u64 i;

	if (kflex_reserve(heap, 4 << 20))
		return 1;
	bpf_for(i, 0, a->n) {
		n = kflex_malloc(heap, sizeof(*n));
		if (!n)
			return 1;
		n->value = i;
		n->next = gb_list;
		gb_list = n;
	}
	gb_array = kflex_malloc(heap, 1 << 20);
	if (!gb_array)
		return 1;
	gb_words = (1 << 20) / 8;
	return 0;
}

SEC("syscall")
int gb_chase(struct gb_args *a)
{
	struct node __arena *n;
	__u64 r, i, sum = 0;

	kflex_use_heap(heap);
	bpf_for(r, 0, a->rounds) {
		n = gb_list;
		bpf_for(i, 0, a->n) {
			if (!n)
				break;
			sum += n->value;
			n->value = sum;
			n = n->next;
		}
	}
	a->ret = sum;
	return 0;
}

SEC("syscall")
int gb_scatter(struct gb_args *a)
{
	__u64 __arena *arr = gb_array;
	__u64 i, x = a->seed | 1, mask = gb_words - 1;

	kflex_use_heap(heap);
	if (!arr)
		return 1;
	bpf_for(i, 0, a->rounds) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		arr[x & mask] += i;
	}
	a->ret = x;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
