// SPDX-License-Identifier: GPL-2.0
/*
 * Guard-cost benchmark: the same heap-heavy code run on the upstream arena
 * (-DKFLEX_UPSTREAM_ARENA) and on a KFlex heap loaded under each guard mode.
 *
 * - chase: walk a linked list of nodes scattered in the heap, summing and
 *   updating their values (pointers loaded from the heap, cast each time);
 * - scatter: increment pseudo-random words of a 64 KiB array through a
 *   pointer plus a variable index (a guard on every access unless elided).
 *   The array is small on purpose: under QEMU TCG, random accesses over a
 *   few hundred pages make the emulated TLB, not the program, set the time
 *   (1 MiB gave 22 to 118 ns/op for the same code from run to run).
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

#define GB_ARRAY_BYTES (64 << 10)
/*
 * Inner loops are plain bounded loops of GB_INNER steps, so that the time
 * goes to heap accesses and not to a bpf_iter_num_next() call per step
 * (under TCG, those calls also made the timing depend on where the JIT put
 * the program: 21 or 40 ns/op for the same code).
 */
#define GB_INNER 64

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
	gb_array = kflex_malloc(heap, GB_ARRAY_BYTES);
	if (!gb_array)
		return 1;
	gb_words = GB_ARRAY_BYTES / 8;
	return 0;
}

SEC("syscall")
int gb_chase(struct gb_args *a)
{
	struct node __arena *n;
	__u64 r, c, sum = 0;
	int j;

	kflex_use_heap(heap);
	bpf_for(r, 0, a->rounds) {
		n = gb_list;
		bpf_for(c, 0, (a->n + GB_INNER - 1) / GB_INNER) {
			for (j = 0; j < GB_INNER && n; j++) {
				sum += n->value;
				n->value = sum;
				n = n->next;
			}
		}
	}
	a->ret = sum;
	return 0;
}

/* a->rounds / GB_INNER batches of GB_INNER increments. */
SEC("syscall")
int gb_scatter(struct gb_args *a)
{
	__u64 __arena *arr = gb_array;
	__u64 i, x = a->seed | 1, mask = gb_words - 1;
	int j;

	kflex_use_heap(heap);
	if (!arr)
		return 1;
	bpf_for(i, 0, a->rounds / GB_INNER) {
		for (j = 0; j < GB_INNER; j++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			arr[x & mask] += j;
		}
	}
	a->ret = x;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
