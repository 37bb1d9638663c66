// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The load generator's receiver for `cargo xtask bench forward --netns` ladder steps: counts
 * the benchmark's RTP packets on the callee veth and drops them there, so that the harness CPU
 * does not spend ~1 us per packet building skbs and waking sockets it only needs to count.
 * Warm-up and latency probes still go to the callee sockets (sink off: XDP_PASS).
 *
 * Per packet addressed to a callee port (sink_ports[port] = call + 1): cheap integrity checks
 * (UDP length, RTP version and payload type, SSRC and call index of that call: a relay that
 * delivers to the wrong call or changes the packet is caught), then the step id: counted as
 * received (this step), late (an earlier step) or mangled, and XDP_DROP. Anything else passes.
 * Payload layout: xtask/src/packet.rs.
 *
 * Build (xtask does this at bench time): clang-19 -target bpf -O2 -g -c sink.c
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SINK_MAX_CALLS 16384
#define RTP_LEN 172
#define SRTP_TAG_LEN 10
#define SSRC_BASE 0x51000000

struct sink_cfg {
	__u32 on;
	__u32 step;
	/* 1: SRTP (bench forward --srtp): 10 bytes longer (HMAC-SHA1-80 tag); step id and call
	 * index are encrypted, so only the clear header (version, type, SSRC) is checked and every
	 * packet counts as received. */
	__u32 srtp;
};

struct sink_count {
	__u64 received;
	__u64 mangled;
	__u64 late;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_cfg);
} sink_cfg SEC(".maps");

/* UDP destination port (host order) -> call index + 1; 0: not a callee port. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} sink_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SINK_MAX_CALLS);
	__type(key, __u32);
	__type(value, struct sink_count);
} sink_counts SEC(".maps");

/* Everything counted, all calls: what the generator polls while draining. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_total SEC(".maps");

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	struct sink_cfg *cfg = bpf_map_lookup_elem(&sink_cfg, &zero);
	if (!cfg || !cfg->on)
		return XDP_PASS;
	__u32 port = bpf_ntohs(udp->dest);
	__u32 *slot = bpf_map_lookup_elem(&sink_ports, &port);
	if (!slot || !*slot)
		return XDP_PASS;
	__u32 call = *slot - 1;
	struct sink_count *c = bpf_map_lookup_elem(&sink_counts, &call);
	__u64 *total = bpf_map_lookup_elem(&sink_total, &zero);
	if (!c || !total)
		return XDP_PASS;
	*total += 1;

	__u8 *p = (void *)(udp + 1);
	__u32 len = cfg->srtp ? RTP_LEN + SRTP_TAG_LEN : RTP_LEN;
	if ((void *)(p + 32) > end || bpf_ntohs(udp->len) != sizeof(*udp) + len ||
	    p[0] != 0x80 || p[1] != 0) {
		c->mangled += 1;
		return XDP_DROP;
	}
	__u32 ssrc = bpf_ntohl(*(__u32 *)(p + 8));
	if (cfg->srtp) {
		if (ssrc != (SSRC_BASE ^ call))
			c->mangled += 1;
		else
			c->received += 1;
		return XDP_DROP;
	}
	__u32 step = bpf_ntohl(*(__u32 *)(p + 20));
	__u32 idx = bpf_ntohl(*(__u32 *)(p + 24));
	if (ssrc != (SSRC_BASE ^ call) || idx != call) {
		c->mangled += 1;
		return XDP_DROP;
	}
	if (step == cfg->step)
		c->received += 1;
	else
		c->late += 1;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
