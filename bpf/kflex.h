/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kflex.h - the header every KFlex BPF program includes.
 *
 * Declares KFlex heaps and the KFlex kfuncs. A heap is a BPF arena map with
 * the BPF_F_KFLEX flag, so the same source builds for the upstream arena
 * (define KFLEX_UPSTREAM_ARENA) or for a KFlex heap.
 */
#ifndef __KFLEX_H
#define __KFLEX_H

#include <bpf/bpf_helpers.h>

#ifndef __arena
#define __arena __attribute__((address_space(1)))
#endif

/* Keep in sync with include/uapi/linux/kflex.h (not in vmlinux.h). */
#define BPF_F_KFLEX (1U << 30)

/* Counters shared by the packet counter and user space. */
struct kflex_counters {
	__u64 packets;
	__u64 bytes;
};

#endif /* __KFLEX_H */
