// SPDX-License-Identifier: GPL-2.0
/*
 * Hostile heap accesses, written in BPF assembly so that the instruction
 * sequence is exactly the one the guard pass has to handle: pointers forged
 * from heap data, huge variable offsets, arithmetic that overflows, constant
 * offsets outside the guard window. Each writes a marker; the guest test
 * checks that the marker landed inside the heap (or that the access faulted
 * harmlessly) and that the kernel log stays clean.
 */
#include "vmlinux.h"
#include "kflex.h"

KFLEX_HEAP(heap, 1 << 16);

struct gargs {
	__u64 ptr;	/* a user address in the heap (or anything) */
	__u64 var;	/* a variable offset */
	__u64 marker;	/* value to write */
	__u64 ret;
};

#define use_heap() kflex_use_heap(heap)

/* Load a pointer from the heap (at ptr) and store the marker through it. */
SEC("syscall")
int g_forge(struct gargs *a)
{
	__u64 p = a->ptr, m = a->marker;

	use_heap();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "%[p] = *(u64 *)(%[p] + 0)\n"
		     "%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "*(u64 *)(%[p] + 0) = %[m]\n"
		     : [p] "+r"(p) : [m] "r"(m) : "memory");
	return 0;
}

/* Add a variable offset after the cast, then store. */
SEC("syscall")
int g_varoff(struct gargs *a)
{
	__u64 p = a->ptr, v = a->var, m = a->marker;

	use_heap();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "%[p] += %[v]\n"
		     "*(u64 *)(%[p] + 0) = %[m]\n"
		     : [p] "+r"(p) : [v] "r"(v), [m] "r"(m) : "memory");
	return 0;
}

/* Constant arithmetic that leaves the window (and wraps), then store. */
SEC("syscall")
int g_const(struct gargs *a)
{
	__u64 p = a->ptr, m = a->marker;

	use_heap();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "%[p] += -40000\n"
		     "*(u64 *)(%[p] + 0) = %[m]\n"
		     "%[p] += 0x7fff0800\n"
		     "%[p] += 0x7fff0800\n"
		     "*(u64 *)(%[p] + 8) = %[m]\n"
		     : [p] "+r"(p) : [m] "r"(m) : "memory");
	return 0;
}

/* The largest instruction offsets: store and load 32760 past the pointer. */
SEC("syscall")
int g_bigoff(struct gargs *a)
{
	__u64 p = a->ptr, m = a->marker, r = 1;

	use_heap();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "*(u64 *)(%[p] + 32760) = %[m]\n"
		     "%[r] = *(u64 *)(%[p] + 32760)\n"
		     "*(u64 *)(%[p] - 32768) = %[m]\n"
		     : [p] "+r"(p), [r] "+r"(r) : [m] "r"(m) : "memory");
	a->ret = r;
	return 0;
}

/* A loop that moves the pointer by var each round (16 rounds). */
SEC("syscall")
int g_loop(struct gargs *a)
{
	__u64 p = a->ptr, v = a->var, i;

	use_heap();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n" : [p] "+r"(p));
	bpf_for(i, 0, 16) {
		asm volatile("*(u64 *)(%[p] + 0) = %[i]\n"
			     "%[p] += %[v]\n"
			     : [p] "+r"(p) : [v] "r"(v), [i] "r"(i) : "memory");
	}
	return 0;
}

/*
 * Known guard statistics: three accesses at constant offsets from a cast
 * pointer (elided), one after a variable add (guarded): 4 accesses, 3 elided.
 */
SEC("syscall")
int g_count(struct gargs *a)
{
	__u64 p = a->ptr, v = a->var, m = a->marker, r = 0;

	use_heap();
	asm volatile("%[p] = addr_space_cast(%[p], 0, 1)\n"
		     "*(u64 *)(%[p] + 0) = %[m]\n"
		     "*(u64 *)(%[p] + 8) = %[m]\n"
		     "%[r] = *(u64 *)(%[p] + 16)\n"
		     "%[p] += %[v]\n"
		     "*(u64 *)(%[p] + 0) = %[m]\n"
		     : [p] "+r"(p), [r] "+r"(r) : [v] "r"(v), [m] "r"(m) : "memory");
	a->ret = r;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
