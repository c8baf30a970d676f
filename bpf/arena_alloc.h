/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Allocators over the *upstream* BPF arena, written in BPF, for programs
 * built with -DKFLEX_UPSTREAM_ARENA (the baselines KFlex is compared with):
 *
 * - a free-list allocator in BPF subprograms: size classes like KFlex's,
 *   an 8-byte header before each object naming its class, one free list
 *   per class linked through the free objects, pages from
 *   bpf_arena_alloc_pages() (the design of the KFlex paper's artifact);
 * - a bump allocator: objects are carved from the current page and never
 *   reused (free does nothing).
 *
 * bpf_arena_alloc_pages() may sleep: these allocators only work in
 * sleepable programs (SEC("syscall")), which is one reason KFlex has an
 * allocator of its own.
 */
#ifndef __KFLEX_ARENA_ALLOC_H
#define __KFLEX_ARENA_ALLOC_H

#ifndef NUMA_NO_NODE
#define NUMA_NO_NODE (-1)
#endif

extern void __arena *bpf_arena_alloc_pages(void *map, void __arena *addr, __u32 page_cnt,
					   int node_id, __u64 flags) __ksym __weak;
extern void bpf_arena_free_pages(void *map, void __arena *ptr, __u32 page_cnt) __ksym __weak;

#define ARENA_NR_CLASSES 11
#define ARENA_PAGE 4096

struct arena_obj {
	struct arena_obj __arena *next;
};

/* Free-list heads and the bump allocator's state (in .bss). */
struct arena_obj __arena *arena_free_lists[ARENA_NR_CLASSES];
char __arena *arena_bump_cur;
__u64 arena_bump_left;
/* Pages the free-list allocator holds (carved class pages and large ones). */
__u64 arena_fl_pages;

static __always_inline int arena_class(__u64 size)
{
	if (size <= 16) return 0;
	if (size <= 32) return 1;
	if (size <= 64) return 2;
	if (size <= 96) return 3;
	if (size <= 128) return 4;
	if (size <= 192) return 5;
	if (size <= 256) return 6;
	if (size <= 512) return 7;
	if (size <= 1024) return 8;
	if (size <= 2048) return 9;
	if (size <= 4096) return 10;
	return -1;
}

static __always_inline __u64 arena_class_size(int class)
{
	switch (class) {
	case 0: return 16;
	case 1: return 32;
	case 2: return 64;
	case 3: return 96;
	case 4: return 128;
	case 5: return 192;
	case 6: return 256;
	case 7: return 512;
	case 8: return 1024;
	case 9: return 2048;
	default: return 4096;
	}
}

/* Free-list allocation of `size` bytes from `heap`. */
static __noinline __attribute__((unused)) void __arena *arena_fl_alloc(void *heap, __u64 size)
{
	struct arena_obj __arena *o;
	char __arena *page;
	__u64 csize, i, n;
	int class;

	class = arena_class(size + 8);
	if (class < 0) {
		__u32 pages = (size + 8 + ARENA_PAGE - 1) / ARENA_PAGE;

		page = bpf_arena_alloc_pages(heap, NULL, pages, NUMA_NO_NODE, 0);
		if (!page)
			return NULL;
		arena_fl_pages += pages;
		*(__u64 __arena *)page = 100 + pages;
		return page + 8;
	}
	if (class >= ARENA_NR_CLASSES)
		return NULL;
	o = arena_free_lists[class];
	if (!o) {
		/* Carve a new page into objects of this class. */
		page = bpf_arena_alloc_pages(heap, NULL, 1, NUMA_NO_NODE, 0);
		if (!page)
			return NULL;
		arena_fl_pages++;
		csize = arena_class_size(class);
		n = ARENA_PAGE / csize;
		bpf_for(i, 1, n) {
			struct arena_obj __arena *f = (void __arena *)(page + i * csize);

			f->next = arena_free_lists[class];
			arena_free_lists[class] = f;
		}
		o = (void __arena *)page;
	} else {
		arena_free_lists[class] = o->next;
	}
	*(__u64 __arena *)o = class;
	return (char __arena *)o + 8;
}

static __noinline __attribute__((unused)) void arena_fl_free(void *heap, void __arena *ptr)
{
	struct arena_obj __arena *o;
	__u64 class;

	if (!ptr)
		return;
	o = (void __arena *)((char __arena *)ptr - 8);
	class = *(__u64 __arena *)o;
	if (class >= 100) {
		bpf_arena_free_pages(heap, o, class - 100);
		arena_fl_pages -= class - 100;
		return;
	}
	if (class >= ARENA_NR_CLASSES)
		return;
	o->next = arena_free_lists[class];
	arena_free_lists[class] = o;
}

/* Bump allocation: objects are 8-byte aligned and never reused. */
static __noinline __attribute__((unused)) void __arena *arena_bump_alloc(void *heap, __u64 size)
{
	char __arena *p;

	size = (size + 7) & ~7ULL;
	if (size > ARENA_PAGE)
		return NULL;
	if (arena_bump_left < size) {
		arena_bump_cur = bpf_arena_alloc_pages(heap, NULL, 1, NUMA_NO_NODE, 0);
		if (!arena_bump_cur)
			return NULL;
		arena_bump_left = ARENA_PAGE;
	}
	p = arena_bump_cur;
	arena_bump_cur += size;
	arena_bump_left -= size;
	return p;
}

#endif /* __KFLEX_ARENA_ALLOC_H */
