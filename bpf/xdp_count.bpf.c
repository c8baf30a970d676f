// SPDX-License-Identifier: GPL-2.0
/*
 * Per-CPU packet and byte counter at XDP. Passes every packet on.
 * kflex-load attaches it when no offload mode is given.
 */
#include "vmlinux.h"
#include "kflex.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kflex_counters);
} counters SEC(".maps");

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	struct kflex_counters *c;
	__u32 key = 0;

	c = bpf_map_lookup_elem(&counters, &key);
	if (c) {
		c->packets++;
		c->bytes += ctx->data_end - ctx->data;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
