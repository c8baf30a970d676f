// SPDX-License-Identifier: GPL-2.0
/*
 * LD_PRELOAD shim: turns every BPF arena map a process creates into a KFlex
 * heap, so the kernel's upstream arena selftests run unchanged on KFlex.
 *
 * libbpf (tools/lib/bpf/bpf.c, sys_bpf) issues bpf(2) through glibc's
 * syscall() and maps arenas with glibc's mmap(); test_progs links libbpf
 * statically but glibc dynamically, so the definitions below are the ones it
 * calls. For BPF_MAP_CREATE of BPF_MAP_TYPE_ARENA the shim
 *  - ORs BPF_F_KFLEX (bit 28, include/uapi/linux/kflex.h of the KFlex
 *    patches) into map_flags;
 *  - rounds max_entries (the size in pages) up to a power of two of at least
 *    16 pages: a KFlex heap is a power of two from 64 KiB to 256 GiB;
 *  - aligns map_extra (the user address) down to that size, as KFlex
 *    requires (an arena ending at a 4 GiB boundary still does).
 * libbpf still knows the map by its declared size and address, so an mmap()
 * of a KFlex heap's fd (told by /proc/self/fdinfo: libbpf dup3()s map fds)
 * is widened to the whole heap at the heap's address, and a munmap() of that
 * mapping to the whole heap. Everything else is passed
 * through. Each converted map is reported ("kflex-shim: ...") on stderr or
 * in the file $KFLEX_SHIM_LOG.
 * Built with the 6.12 tree's uapi headers (BPF_MAP_TYPE_ARENA is newer than
 * the host's).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <linux/bpf.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#ifndef offsetofend
#define offsetofend(type, field) (offsetof(type, field) + sizeof(((type *)0)->field))
#endif

#define KFLEX_SHIM_F_KFLEX (1U << 28)
#define KFLEX_SHIM_MIN_PAGES 16U
#define KFLEX_SHIM_MAX 64

/* Mappings of heaps made through the shim, for munmap(). */
static struct mapping {
	void *addr;
	unsigned long size;
} maps[KFLEX_SHIM_MAX];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static unsigned int round_pages(unsigned int pages)
{
	unsigned int p = KFLEX_SHIM_MIN_PAGES;

	while (p < pages && p < (1U << 31))
		p <<= 1;
	return p;
}

/*
 * If fd is a KFlex heap (its fdinfo says map_type 33 with BPF_F_KFLEX; libbpf
 * moves map fds around with dup3, so the fd is not the one create returned),
 * returns its size in bytes and its address (map_extra).
 */
static unsigned long heap_of_fd(int fd, unsigned long *addr)
{
	unsigned long type = 0, pages = 0, flags = 0, extra = 0;
	char path[64], line[128];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	f = fopen(path, "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		sscanf(line, "map_type: %lu", &type);
		sscanf(line, "max_entries: %lu", &pages);
		sscanf(line, "map_flags: %lx", &flags);
		sscanf(line, "map_extra: %lx", &extra);
	}
	fclose(f);
	if (type != BPF_MAP_TYPE_ARENA || !(flags & KFLEX_SHIM_F_KFLEX))
		return 0;
	*addr = extra;
	return pages * 4096;
}

/*
 * A line for the report: appended to $KFLEX_SHIM_LOG when set (test_progs
 * keeps the stdio output of passing tests to itself), else to stderr.
 */
static void note(const char *fmt, ...)
{
	const char *path = getenv("KFLEX_SHIM_LOG");
	va_list ap;
	int fd;

	va_start(ap, fmt);
	if (path && (fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) >= 0) {
		vdprintf(fd, fmt, ap);
		close(fd);
	} else {
		vfprintf(stderr, fmt, ap);
	}
	va_end(ap);
}

long syscall(long nr, ...)
{
	static long (*real)(long, ...);
	long a[6], ret;
	va_list ap;
	int i;

	va_start(ap, nr);
	for (i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	if (!real)
		real = next("syscall");

	if (nr == __NR_bpf && a[0] == BPF_MAP_CREATE && a[1]) {
		const union bpf_attr *in = (const union bpf_attr *)a[1];
		size_t size = (size_t)a[2];
		union bpf_attr attr;

		if (size >= offsetofend(union bpf_attr, map_extra) && size <= sizeof(attr) &&
		    in->map_type == BPF_MAP_TYPE_ARENA) {
			unsigned long bytes;

			memset(&attr, 0, sizeof(attr));
			memcpy(&attr, in, size);
			attr.map_flags |= KFLEX_SHIM_F_KFLEX;
			attr.max_entries = round_pages(attr.max_entries);
			bytes = (unsigned long)attr.max_entries * 4096;
			attr.map_extra &= ~(__u64)(bytes - 1);
			ret = real(nr, a[0], (long)&attr, a[2], a[3], a[4], a[5]);
			note("kflex-shim: arena map '%.16s' (%u pages at 0x%llx) created as a KFlex heap of %u pages at 0x%llx: %s\n",
				attr.map_name, in->max_entries, (unsigned long long)in->map_extra,
				attr.max_entries, (unsigned long long)attr.map_extra,
				ret < 0 ? "refused" : "ok");
			return ret;
		}
	}
	return real(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}

static void *heap_mmap(void *(*real)(void *, size_t, int, int, int, off_t), void *addr, size_t len,
		       int prot, int flags, int fd, off_t off)
{
	unsigned long size = 0, at = 0;
	void *p;

	if (fd >= 0 && !off && (flags & MAP_SHARED))
		size = heap_of_fd(fd, &at);
	if (size) {
		if (len < size)
			len = size;
		if (addr && at)
			addr = (void *)at;
	}
	p = real(addr, len, prot, flags, fd, off);
	if (size && p != MAP_FAILED) {
		pthread_mutex_lock(&lock);
		for (int i = 0; i < KFLEX_SHIM_MAX; i++) {
			if (!maps[i].addr) {
				maps[i] = (struct mapping){ p, len };
				break;
			}
		}
		pthread_mutex_unlock(&lock);
	}
	return p;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	static void *(*real)(void *, size_t, int, int, int, off_t);

	if (!real)
		real = next("mmap");
	return heap_mmap(real, addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	static void *(*real)(void *, size_t, int, int, int, off_t);

	if (!real)
		real = next("mmap64");
	return heap_mmap(real, addr, len, prot, flags, fd, off);
}

int munmap(void *addr, size_t len)
{
	static int (*real)(void *, size_t);

	if (!real)
		real = next("munmap");
	pthread_mutex_lock(&lock);
	for (int i = 0; i < KFLEX_SHIM_MAX; i++) {
		if (maps[i].addr && maps[i].addr == addr) {
			len = maps[i].size;
			maps[i].addr = NULL;
		}
	}
	pthread_mutex_unlock(&lock);
	return real(addr, len);
}
