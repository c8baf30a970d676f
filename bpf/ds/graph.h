/* SPDX-License-Identifier: GPL-2.0 */
/*
 * graph.h - the BPF graph kfuncs of Linux 6.12 (kernel/bpf/helpers.c):
 * kernel-allocated objects (bpf_obj_new/drop) linked into a list or a
 * red-black tree that lives in a map value next to the bpf_spin_lock that
 * protects it. The baselines the heap structures are compared with.
 *
 * 6.12 offers push/pop at the list's ends, and add, first and remove for
 * the tree: neither structure can be searched by key.
 */
#ifndef __KFLEX_DS_GRAPH_H
#define __KFLEX_DS_GRAPH_H

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

extern void *bpf_obj_new_impl(__u64 local_type_id, void *meta) __ksym;
extern void bpf_obj_drop_impl(void *obj, void *meta) __ksym;
extern int bpf_list_push_front_impl(struct bpf_list_head *head, struct bpf_list_node *node,
				    void *meta, __u64 off) __ksym;
extern struct bpf_list_node *bpf_list_pop_back(struct bpf_list_head *head) __ksym;
extern int bpf_rbtree_add_impl(struct bpf_rb_root *root, struct bpf_rb_node *node,
			       bool (less)(struct bpf_rb_node *a, const struct bpf_rb_node *b),
			       void *meta, __u64 off) __ksym;
extern struct bpf_rb_node *bpf_rbtree_first(struct bpf_rb_root *root) __ksym;
extern struct bpf_rb_node *bpf_rbtree_remove(struct bpf_rb_root *root,
					     struct bpf_rb_node *node) __ksym;

/* A new object of `type` (the verifier learns the type from its BTF id). */
#define graph_new(type) ((type *)bpf_obj_new_impl(bpf_core_type_id_local(type), NULL))
#define graph_drop(obj) bpf_obj_drop_impl((obj), NULL)
#define graph_push_front(head, node) bpf_list_push_front_impl((head), (node), NULL, 0)
#define graph_rb_add(root, node, less) bpf_rbtree_add_impl((root), (node), (less), NULL, 0)

/* Tells the verifier which node type a list head or tree root holds. */
#define graph_contains(type, field) \
	__attribute__((btf_decl_tag("contains:" #type ":" #field)))

/*
 * Graph roots and their lock must share a map value: put them in their own
 * data section (one map per section name).
 */
#define graph_section(name) SEC(".data." #name) __hidden __attribute__((aligned(8)))

#define graph_container(ptr, type, member) \
	((type *)((void *)(ptr) - __builtin_offsetof(type, member)))

#endif /* __KFLEX_DS_GRAPH_H */
