// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The machine's limit for `cargo xtask bench forward --netns`: an XDP program that does nothing
 * but redirect. Every frame arriving on an interface is sent out of the interface the devmap
 * names for it (key: ingress ifindex), untouched: no parsing, no rewrite, no checksum, no
 * counters. A frame whose ingress is not in the map goes up the stack (XDP_PASS).
 *
 * This is the same shape as the kernel's samples/bpf/xdp_redirect_map and costs one devmap
 * lookup plus the redirect itself; sluice's program does the redirect plus its parsing, flow
 * lookup, fib lookup, rewrite and counters, so the difference between the two is sluice's
 * own work.
 *
 * The bench makes untouched frames land in the callee's socket by construction of the
 * topology: the callee veth carries the relay's ingress MAC, and the callee namespace owns the
 * address the caller sends to (xtask/src/netns.rs).
 *
 * Build (xtask does this at bench time): clang-19 -target bpf -O2 -g -c bare_redirect.c
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} bare_ports SEC(".maps");

SEC("xdp")
int bare_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&bare_ports, ctx->ingress_ifindex, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
