// SPDX-License-Identifier: GPL-2.0
/*
 * Baselines for the list and the red-black tree: the same workload on the
 * 6.12 BPF graph kfuncs (bpf/ds/graph.h). They cannot search, so:
 *   glist_update pushes to the front, glist_delete pops the back (as the
 *   heap list does), there is no lookup;
 *   grbt_update inserts without looking for the key first (duplicates
 *   stay), grbt_delete removes the smallest key, there is no lookup.
 */
#include "vmlinux.h"
#include "ds/ds.h"
#include "ds/graph.h"

DS_WORKLOAD_MAPS();

struct gl_node {
	struct bpf_list_node link;
	struct ds_key key;
	struct ds_val val;
};

struct gr_node {
	struct bpf_rb_node link;
	struct ds_key key;
	struct ds_val val;
};

graph_section(gl) struct bpf_spin_lock gl_lock;
graph_section(gl) struct bpf_list_head gl_head graph_contains(gl_node, link);
graph_section(gr) struct bpf_spin_lock gr_lock;
graph_section(gr) struct bpf_rb_root gr_root graph_contains(gr_node, link);

__u64 gl_len;
__u64 gr_count;

static bool gr_less(struct bpf_rb_node *a, const struct bpf_rb_node *b)
{
	struct gr_node *x = graph_container(a, struct gr_node, link);
	struct gr_node *y = graph_container(b, struct gr_node, link);

	return DS_KEY_CMP(&x->key, &y->key) < 0;
}

SEC("syscall")
int glist_update(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, fails = 0, done = 0;
	struct gl_node *e;
	struct ds_key *k;

	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		e = graph_new(struct gl_node);
		if (!e) {
			fails++;
			ds_record(flags, start + i, 0);
			done++;
			continue;
		}
		DS_KEY_COPY(&e->key, k);
		ds_make_val(&e->val, k, start + i);
		bpf_spin_lock(&gl_lock);
		graph_push_front(&gl_head, &e->link);
		gl_len++;
		bpf_spin_unlock(&gl_lock);
		hits++;
		ds_record(flags, start + i, 1);
		done++;
	}
	a->hits = hits;
	a->fails = fails;
	a->done = done;
	return 0;
}

/* Pop the back node: DS_KEY_CSUM of its key, 0 if the list is empty. */
static __always_inline __u64 gl_pop_back(void)
{
	struct bpf_list_node *l;
	struct gl_node *e;
	__u64 res;

	bpf_spin_lock(&gl_lock);
	l = bpf_list_pop_back(&gl_head);
	if (l)
		gl_len--;
	bpf_spin_unlock(&gl_lock);
	if (!l)
		return 0;
	e = graph_container(l, struct gl_node, link);
	res = DS_KEY_CSUM(&e->key);
	graph_drop(e);
	return res;
}

SEC("syscall")
int glist_delete(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, done = 0, res;

	bpf_for(i, 0, n) {
		res = gl_pop_back();
		if (res)
			hits++;
		ds_record(flags, start + i, res);
		done++;
	}
	a->hits = hits;
	a->done = done;
	return 0;
}

SEC("syscall")
int glist_clear(struct ds_args *a)
{
	__u64 i, freed = 0;

	bpf_for(i, 0, 1 << 23) {
		if (!gl_pop_back())
			break;
		freed++;
	}
	a->hits = freed;
	a->done = 1;
	return 0;
}

SEC("syscall")
int grbt_update(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, fails = 0, done = 0;
	struct gr_node *e;
	struct ds_key *k;

	bpf_for(i, 0, n) {
		k = ds_key_at(start + i);
		if (!k)
			break;
		e = graph_new(struct gr_node);
		if (!e) {
			fails++;
			ds_record(flags, start + i, 0);
			done++;
			continue;
		}
		DS_KEY_COPY(&e->key, k);
		ds_make_val(&e->val, k, start + i);
		bpf_spin_lock(&gr_lock);
		graph_rb_add(&gr_root, &e->link, gr_less);
		gr_count++;
		bpf_spin_unlock(&gr_lock);
		hits++;
		ds_record(flags, start + i, 1);
		done++;
	}
	a->hits = hits;
	a->fails = fails;
	a->done = done;
	return 0;
}

/* Remove the smallest key: DS_KEY_CSUM of it, 0 if the tree is empty. */
static __always_inline __u64 gr_pop_first(void)
{
	struct bpf_rb_node *r;
	struct gr_node *e;
	__u64 res;

	bpf_spin_lock(&gr_lock);
	r = bpf_rbtree_first(&gr_root);
	if (r) {
		r = bpf_rbtree_remove(&gr_root, r);
		if (r)
			gr_count--;
	}
	bpf_spin_unlock(&gr_lock);
	if (!r)
		return 0;
	e = graph_container(r, struct gr_node, link);
	res = DS_KEY_CSUM(&e->key);
	graph_drop(e);
	return res;
}

SEC("syscall")
int grbt_delete(struct ds_args *a)
{
	__u64 i, n = a->count, start = a->start, flags = a->flags, hits = 0, done = 0, res;

	bpf_for(i, 0, n) {
		res = gr_pop_first();
		if (res)
			hits++;
		ds_record(flags, start + i, res);
		done++;
	}
	a->hits = hits;
	a->done = done;
	return 0;
}

SEC("syscall")
int grbt_clear(struct ds_args *a)
{
	__u64 i, freed = 0;

	bpf_for(i, 0, 1 << 23) {
		if (!gr_pop_first())
			break;
		freed++;
	}
	a->hits = freed;
	a->done = 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
