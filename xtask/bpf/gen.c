// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The load generator's sender for `cargo xtask bench forward --netns` ladder steps, in the way
 * of xdp-trafficgen: the generator runs this program with BPF_PROG_RUN in live-frames mode
 * (BPF_F_TEST_XDP_LIVE_FRAMES) for a whole step, in one system call that a timer signal ends;
 * each run either turns the template frame (eth/IPv4/UDP/172-byte RTP, built by the generator)
 * into the next call's packet and redirects it into the caller veth, or, when no packet is due
 * yet, drops it (that is the pacing: a run costs well under 0.1 us). The relay's veth then
 * receives xdp_frames, as a NIC driver would hand them over, instead of skbs from a local
 * socket (which veth must copy before XDP can run on them), and the harness is not what limits
 * the XDP paths.
 *
 * Pacing: packets become due in groups of `burst` (32, like one sendmmsg of the socket
 * sender), group k at start + k * burst / rate. A generator that fell behind (preempted) owes
 * at most max_burst packets (the rest are counted as skipped, as the socket sender does) and
 * catches up at twice the rate (groups at least min_gap_ns apart), never in one burst: frames
 * built into skbs are charged a whole page each against a relay's socket buffer.
 *
 * Per packet: the Ethernet/IPv4/UDP headers are copied from gen_cfg.hdr (the frame's page may
 * come back from a relay that rewrote them: live-frames pages are recycled as they are); calls
 * are taken round robin; the UDP destination port and the per-call counter
 * come from gen_calls; the RTP sequence number, timestamp and SSRC, and the payload's send
 * time, step, call and counter fields are written as xtask/src/packet.rs lays them out (the
 * pattern bytes 32..172 stay as in the template: the sink does not check them); the UDP
 * checksum is computed over the whole datagram (seeded with the pseudo-header sum).
 *
 * Build (xtask does this at bench time): clang-19 -target bpf -O2 -g -c gen.c
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define GEN_MAX_CALLS 16384
#define RTP_LEN 172
#define UDP_LEN (8 + RTP_LEN)
#define SSRC_BASE 0x51000000
#define SAMPLES_PER_PACKET 160
#define HDR_LEN (14 + 20 + 8)
#define HDR_ALLOC 48

struct gen_cfg {
	__u32 tx_ifindex;
	__u32 calls;
	__u32 next_call;
	__u32 step;
	/* Partial checksum of the UDP pseudo header, in memory byte order. */
	__u32 pseudo;
	__u32 max_burst;
	__u32 burst;
	__u32 pad;
	__u64 start_ns;
	__u64 rate;
	__u64 planned;
	__u64 sent;
	__u64 skipped;
	__u64 min_gap_ns;
	__u64 last_group_ns;
	/* Ethernet + IPv4 + UDP header of every packet (ports and checksum set per packet). */
	__u8 hdr[HDR_ALLOC];
};

struct gen_call {
	__be16 dport;
	__u16 pad;
	__u32 counter;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gen_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GEN_MAX_CALLS);
	__type(key, __u32);
	__type(value, struct gen_call);
} gen_calls SEC(".maps");

static __always_inline void put32(__u8 *p, __u32 v)
{
	*(__be32 *)p = bpf_htonl(v);
}

SEC("xdp")
int gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;

	struct gen_cfg *cfg = bpf_map_lookup_elem(&gen_cfg, &zero);
	if (!cfg || !cfg->calls)
		return XDP_ABORTED;
	__u64 done = cfg->sent + cfg->skipped;
	if (done >= cfg->planned)
		return XDP_DROP;
	__u64 now = bpf_ktime_get_ns();
	if (now < cfg->start_ns)
		return XDP_DROP;
	__u64 due = (now - cfg->start_ns) * cfg->rate / 1000000000ULL;
	if (cfg->burst > 1)
		due -= due % cfg->burst;
	if (due > cfg->planned)
		due = cfg->planned;
	if (due <= done)
		return XDP_DROP;
	if (due - done > cfg->max_burst) {
		__u64 skip = due - done - cfg->max_burst;
		if (cfg->burst > 1)
			skip -= skip % cfg->burst;
		cfg->skipped += skip;
		done += skip;
	}
	if (cfg->burst <= 1 || done % cfg->burst == 0) {
		if (now < cfg->last_group_ns + cfg->min_gap_ns)
			return XDP_DROP;
		cfg->last_group_ns = now;
	}
	cfg->sent += 1;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *p = (void *)(udp + 1);
	if ((void *)(p + RTP_LEN) > end)
		return XDP_ABORTED;

	__builtin_memcpy(data, cfg->hdr, HDR_LEN);

	__u32 call = cfg->next_call;
	cfg->next_call = call + 1 >= cfg->calls ? 0 : call + 1;
	struct gen_call *gc = bpf_map_lookup_elem(&gen_calls, &call);
	if (!gc)
		return XDP_ABORTED;
	__u32 counter = gc->counter;
	gc->counter = counter + 1;

	udp->dest = gc->dport;
	udp->check = 0;
	*(__be16 *)(p + 2) = bpf_htons((__u16)counter);
	put32(p + 4, counter * SAMPLES_PER_PACKET);
	put32(p + 8, SSRC_BASE ^ call);
	put32(p + 12, (__u32)(now >> 32));
	put32(p + 16, (__u32)now);
	put32(p + 20, cfg->step);
	put32(p + 24, call);
	put32(p + 28, counter);

	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)udp, UDP_LEN, cfg->pseudo);
	if (sum < 0)
		return XDP_ABORTED;
	__u32 s = (__u32)sum;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	__u16 check = ~s & 0xffff;
	udp->check = check ? check : 0xffff;
	return bpf_redirect(cfg->tx_ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
