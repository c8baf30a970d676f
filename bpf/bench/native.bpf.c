// SPDX-License-Identifier: GPL-2.0
/*
 * Drives the native data structures of the KFlex component (the "KMod"
 * baseline, CONFIG_KFLEX_BENCH) with the same keys as the BPF data
 * structures, over the same heap (validated accesses) or on kernel memory:
 * one bpf_kflex_bench_native() call per operation.
 */
#include "vmlinux.h"
#include "kflex.h"

#ifndef KFLEX_UPSTREAM_ARENA

KFLEX_HEAP(heap, 1 << 28);

/* Keys of the workload (32 bytes each), filled by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[32]);
} nat_keys SEC(".maps");

struct kflex_native_req___bpf {
	__u64 root;
	__u32 ds;
	__u32 op;
	__u64 result;
};

extern int bpf_kflex_bench_native(void *heap, void *req, __u32 req__sz, const void *key,
				  __u32 key__sz) __ksym __weak;

struct kflex_native_batch___bpf {
	__u64 root;
	__u32 ds;
	__u32 op;
	__u32 first;
	__u32 count;
	__u64 found;
	__u64 errors;
};

extern int bpf_kflex_bench_native_batch(void *heap, void *req, __u32 req__sz, const void *keys,
					__u32 keys__sz) __ksym __weak;

/*
 * The same keys in blocks of NAT_BLOCK, back to back (filled by user space):
 * a batch call takes a range of one block.
 */
#define NAT_BLOCK 4096

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[32 * NAT_BLOCK]);
} nat_blocks SEC(".maps");

/* Root objects of the three structures (user addresses in the heap). */
__u64 nat_roots[3];

struct nat_args {
	__u64 ds;	/* 0 list, 1 rbtree, 2 skiplist; 3-5 the same on kernel memory, 6 hash map there */
	__u64 op;	/* 0 update, 1 lookup, 2 delete */
	__u64 first;	/* first key index */
	__u64 count;	/* operations */
	__u64 found;	/* out: keys found or inserted */
	__u64 errors;	/* out: failed operations */
	__u64 arg;	/* the hash map's bucket order */
};

/*
 * The root (heap structures) or argument (kernel memory) of a request for
 * structure `ds`; `arg` is read from the context by the caller (the verifier
 * refuses a context load through a pointer the compiler has moved).
 */
static __always_inline __u64 nat_root(__u64 ds, __u64 arg)
{
	if (ds < 3)
		return nat_roots[ds];
	return ds == 6 ? arg : 0;
}


SEC("syscall")
int nat_init(struct nat_args *a)
{
	__u64 i;

	/* Populate ahead: `count` bytes if given (benchmarks), else 4 MiB. */
	if (kflex_reserve(heap, a->count ? a->count : 4 << 20))
		return 1;
	bpf_for(i, 0, 3) {
		void __arena *r = kflex_malloc(heap, 512);
		__u64 j;

		if (!r)
			return 1;
		bpf_for(j, 0, 64)
			((__u64 __arena *)r)[j] = 0;
		nat_roots[i] = (__u64)r;
	}
	return 0;
}

SEC("syscall")
int nat_run(struct nat_args *a)
{
	struct kflex_native_req___bpf req = {};
	__u64 i, found = 0, errors = 0;
	__u64 ds = a->ds, arg = a->arg;
	__u32 idx;
	void *key;

	if (ds > 6)
		return 1;
	barrier_var(arg);
	req.root = nat_root(ds, arg);
	req.ds = a->ds;
	req.op = a->op;
	bpf_for(i, 0, a->count) {
		idx = a->first + i;
		key = bpf_map_lookup_elem(&nat_keys, &idx);
		if (!key)
			break;
		if (bpf_kflex_bench_native(&heap, &req, sizeof(req), key, 32))
			errors++;
		else
			found += req.result;
	}
	a->found = found;
	a->errors = errors;
	return 0;
}

/*
 * The same operations with the loop in the kernel: one kfunc call per block
 * of keys (`count` at most 64 blocks).
 */
SEC("syscall")
int nat_batch(struct nat_args *a)
{
	struct kflex_native_batch___bpf b = {};
	__u64 ds = a->ds, arg = a->arg, first = a->first, count = a->count;
	__u64 done = 0, found = 0, errors = 0, at, n;
	__u32 blk;
	void *keys;
	int i;

	if (ds > 6)
		return 1;
	barrier_var(arg);
	b.root = nat_root(ds, arg);
	b.ds = ds;
	b.op = a->op;
	bpf_for(i, 0, 64) {
		if (done >= count)
			break;
		at = first + done;
		blk = at / NAT_BLOCK;
		n = NAT_BLOCK - at % NAT_BLOCK;
		if (n > count - done)
			n = count - done;
		keys = bpf_map_lookup_elem(&nat_blocks, &blk);
		if (!keys)
			return 1;
		b.first = at % NAT_BLOCK;
		b.count = n;
		if (bpf_kflex_bench_native_batch(&heap, &b, sizeof(b), keys, 32 * NAT_BLOCK))
			return 1;
		found += b.found;
		errors += b.errors;
		done += n;
	}
	if (done < count)
		return 1;
	a->found = found;
	a->errors = errors;
	return 0;
}

#endif /* !KFLEX_UPSTREAM_ARENA */

char LICENSE[] SEC("license") = "GPL";
