// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sluice XDP fast path: forwards pinned RTP/RTCP flows without reaching userspace.
 *
 * For every IPv4/IPv6 UDP packet the program looks up (destination address, destination port)
 * in sluice_flows. A miss, and anything it does not understand, is XDP_PASS untouched: the
 * kernel stack delivers it to the userspace relay, which is always able to handle it.
 * A FORWARD or WORKER hit:
 *   1. strict source check (drop + count on mismatch),
 *   2. anything unusual (fragments, IP options, inconsistent lengths, a bad IPv4 header
 *      checksum, zero IPv6 UDP checksum, a payload userspace would drop as not RTP/RTCP,
 *      TTL/hop limit <= 1) -> XDP_PASS + count,
 *   3. bpf_fib_lookup() of the rewritten addresses -> egress ifindex and MACs; any failure ->
 *      XDP_PASS + count (the packet is still untouched at this point),
 *   4. egress must be an interface sluice is attached to (sluice_egress), else XDP_PASS + count,
 *   5. rewrite MACs, IP src/dst, UDP ports, TTL/hop limit - 1, incremental checksums
 *      (RFC 1624), count, then XDP_TX (egress == ingress) or bpf_redirect().
 * A WORKER hit takes steps 1 and 2, then bpf_redirect_map() to the AF_XDP socket registered for
 * the (ingress interface, RX queue) in sluice_xsks, whose worker transforms, rewrites and
 * transmits (a queue without a socket: XDP_PASS, counted). When the value names the rewrite,
 * the fib lookup of step 3 (and the check of step 4) runs first and its result travels with the
 * frame as struct sluice_xsk_meta (or, without metadata, in sluice_routes): the worker sends from
 * its TX ring on that interface. A failed lookup does not stop the packet; the worker then hands
 * it to the kernel's IP stack.
 *
 * A UDP datagram that hits no flow is passed, unless it is addressed to a guarded relay
 * address and port range (sluice_guard) and no socket of this host would receive it: a scan of
 * the relay's ports, dropped and counted in sluice_stats (see struct sluice_port_guard).
 *
 * Kernel features: bpf_xdp_adjust_meta is optional. Some kernels refuse it to XDP programs
 * (e.g. 6.18.44-fc-v1300) and some drivers fail it at run time. The loader probes the helper and
 * sets sluice_use_meta; at 0 the verifier prunes the branch that calls it before checking the
 * call, so one object loads on both kinds of kernel. Without metadata the route goes to the worker
 * through sluice_routes instead, a map every kernel since 5.5 offers.
 *
 * Build: clang-19 -target bpf -O2 -g -c sluice_xdp.c (relay/build.rs does this).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice_maps.h"

/* Not available to BPF programs from <sys/socket.h>. */
#define SLUICE_AF_INET 2
#define SLUICE_AF_INET6 10

#define SLUICE_IP_MF 0x2000
#define SLUICE_IP_OFFSET 0x1fff
#define SLUICE_IPV6_FLOWINFO_MASK bpf_htonl(0x0FFFFFFF)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_FLOWS);
	__type(key, struct sluice_flow_key);
	__type(value, struct sluice_flow_value);
} sluice_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLUICE_MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct sluice_flow_counters);
} sluice_counters SEC(".maps");

/*
 * ifindex -> slot for every interface the program is attached to (written by the loader; the
 * slot is the interface's position in the attach list, < SLUICE_MAX_EGRESS). Presence makes the
 * interface a redirect target; the slot selects its row in sluice_xsks.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_EGRESS);
	__type(key, __u32);
	__type(value, __u32);
} sluice_egress SEC(".maps");

/*
 * AF_XDP sockets of the workers, key slot * SLUICE_MAX_QUEUES + rx_queue_index. One map serves
 * every attached interface, so the key includes the interface's slot: a socket only receives
 * from the (device, queue) it is bound to, and queue 0 exists on every interface.
 */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, SLUICE_MAX_XSKS);
	__type(key, __u32);
	__type(value, __u32);
} sluice_xsks SEC(".maps");

/*
 * The relay's port range per relay address (struct sluice_port_guard in sluice_maps.h; key: the
 * address with port 0). Empty: nothing is guarded.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SLUICE_MAX_GUARDS);
	__type(key, struct sluice_flow_key);
	__type(value, struct sluice_port_guard);
} sluice_guard SEC(".maps");

/* Counters of packets that hit no flow (struct sluice_stats), one entry. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sluice_stats);
} sluice_stats SEC(".maps");

/*
 * Set by the loader before the program is loaded (.rodata is frozen, so the verifier knows the
 * value and never visits the dead branch): 1 when the kernel allows bpf_xdp_adjust_meta in XDP.
 * 0 by default, so that the object as built loads on every kernel, whoever loads it.
 */
const volatile __u32 sluice_use_meta = 0;

#ifndef SLUICE_NO_ROUTE_CACHE
/*
 * Routes of routed WORKER flows by flow id, for the workers when frames carry no metadata
 * (struct sluice_route in sluice_maps.h). Mmapable: the workers read it without a syscall.
 * Kernels before 5.5 cannot create it: relay/build.rs also builds the program without it
 * (-DSLUICE_NO_ROUTE_CACHE), which the loader picks there.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLUICE_MAX_FLOWS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct sluice_route);
} sluice_routes SEC(".maps");
#endif

/* --- checksums (RFC 1624: HC' = ~(~HC + ~m + m')), on 16-bit words as stored in memory --- */

static __always_inline __u32 csum_replace16(__u32 sum, __u16 old, __u16 new)
{
	return sum + (__u16)~old + new;
}

static __always_inline __u32 csum_replace32(__u32 sum, __u32 old, __u32 new)
{
	sum = csum_replace16(sum, (__u16)old, (__u16)new);
	return csum_replace16(sum, (__u16)(old >> 16), (__u16)(new >> 16));
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/*
 * RFC 1812 5.2.2: a router verifies the IPv4 header checksum before forwarding. The incremental
 * update below would carry a bad one on unchanged, so a corrupted header is left to the kernel
 * (which drops and counts it) instead of being forwarded. Only IHL 5 reaches this point: the
 * header is exactly 10 words.
 */
static __always_inline int ipv4_header_ok(const struct iphdr *ip)
{
	const __u16 *w = (const __u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return csum_fold(sum) == 0xffff;
}

/*
 * The payload has the shape the userspace relay accepts (media/src/rtp.rs classify_relay):
 * version 2, an RTCP packet (type 192..223) whose first length field fits, or an RTP header
 * whose CSRC list fits. Whatever userspace would drop as malformed is passed to it (it counts
 * the drop) rather than forwarded here, so both paths relay the same packets. The header
 * extension's length is left to userspace: it only shows in what the peer receives.
 */
static __always_inline int rtp_shaped(const __u8 *p, __u32 len, void *data_end)
{
	if (len < 8 || (void *)(p + 4) > data_end)
		return 0;
	if ((p[0] >> 6) != 2)
		return 0;
	if (p[1] >= 192 && p[1] <= 223)
		return ((__u32)((p[2] << 8) | p[3]) + 1) * 4 <= len;
	return 12 + 4 * (__u32)(p[0] & 0x0f) <= len;
}

/* --- counters --- */

static __always_inline struct sluice_flow_counters *counters(const struct sluice_flow_value *v)
{
	__u32 id = v->flow_id;
	return bpf_map_lookup_elem(&sluice_counters, &id);
}

#define COUNT(v, field)                                            \
	do {                                                       \
		struct sluice_flow_counters *c_ = counters(v);     \
		if (c_)                                            \
			c_->field += 1;                            \
	} while (0)

#define STAT(field)                                                        \
	do {                                                               \
		__u32 zero_ = 0;                                           \
		struct sluice_stats *s_ =                                  \
			bpf_map_lookup_elem(&sluice_stats, &zero_);         \
		if (s_)                                                    \
			s_->field += 1;                                    \
	} while (0)

/*
 * A datagram that hit no flow: dropped when it is addressed to a guarded relay address and
 * port and no socket of this host would receive it (see struct sluice_port_guard), else passed
 * untouched. `key` is the packet's flow key (its port is cleared here), `tuple` its addresses
 * and ports as bpf_sk_lookup_udp takes them. Only a datagram in a guarded range pays for the
 * socket lookup (a scan, or a stream not in the kernel yet); everything else that hits no flow
 * pays one hash lookup.
 */
static __always_inline int guard(struct xdp_md *ctx, struct sluice_flow_key *key,
				 struct bpf_sock_tuple *tuple, __u32 tuple_len)
{
	__u16 port = bpf_ntohs(key->port);
	key->port = 0;
	struct sluice_port_guard *g = bpf_map_lookup_elem(&sluice_guard, key);
	if (!g || port < g->port_low || port > g->port_high)
		return XDP_PASS;
	struct bpf_sock *sk = bpf_sk_lookup_udp(ctx, tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		bpf_sk_release(sk);
		STAT(passed_bound_port);
		return XDP_PASS;
	}
	STAT(dropped_unknown_port);
	return XDP_DROP;
}

static __always_inline int pass_fib(const struct sluice_flow_value *v, int rc)
{
	switch (rc) {
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		COUNT(v, passed_fwd_disabled);
		break;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		COUNT(v, passed_mtu);
		break;
	default:
		COUNT(v, passed_fib_miss);
		break;
	}
	return XDP_PASS;
}

/*
 * Checks common to both families before anything is written. Returns -1 to continue with the
 * rewrite, or the XDP verdict to return.
 */
static __always_inline int check_action(const struct sluice_flow_value *v)
{
	if (v->action == SLUICE_ACTION_FORWARD || v->action == SLUICE_ACTION_WORKER)
		return -1;
	if (v->action == SLUICE_ACTION_DROP) {
		COUNT(v, dropped_action);
		return XDP_DROP;
	}
	/* PASS and unknown actions. */
	COUNT(v, passed_action);
	return XDP_PASS;
}

static __always_inline int finish(struct xdp_md *ctx, const struct sluice_flow_value *v,
				  struct ethhdr *eth, const struct bpf_fib_lookup *fib,
				  __u16 payload_len)
{
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);

	struct sluice_flow_counters *c = counters(v);
	if (c) {
		c->packets += 1;
		c->bytes += payload_len;
		c->last_seen_ns = bpf_ktime_get_ns();
	}
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib->ifindex, 0);
}

static __always_inline int egress_allowed(__u32 ifindex)
{
	return bpf_map_lookup_elem(&sluice_egress, &ifindex) != 0;
}

/*
 * The value's addresses are of the packet's family. A WORKER value may name no address at all
 * (the worker holds the rewrite), FORWARD always does.
 */
static __always_inline int family_ok(const struct sluice_flow_value *v, __u8 family)
{
	return v->family == family || (v->action == SLUICE_ACTION_WORKER && v->family == 0);
}

/*
 * Keeps sluice_routes[flow id] equal to this packet's route lookup (ifindex 0: none). Written
 * only when it changes, so a settled flow costs one read per packet and no shared cache line
 * bounces between CPUs.
 */
static __always_inline void cache_route(const struct sluice_flow_value *v,
					const struct bpf_fib_lookup *fib)
{
#ifdef SLUICE_NO_ROUTE_CACHE
	(void)v;
	(void)fib;
#else
	__u32 id = v->flow_id;
	struct sluice_route *r = bpf_map_lookup_elem(&sluice_routes, &id);
	if (!r)
		return;
	__u32 ifindex = fib ? fib->ifindex : 0;
	__u16 mtu = fib ? fib->mtu_result : 0;
	if (r->ifindex == ifindex &&
	    (!fib || (r->mtu == mtu && !__builtin_memcmp(r->smac, fib->smac, ETH_ALEN) &&
		      !__builtin_memcmp(r->dmac, fib->dmac, ETH_ALEN))))
		return;
	__sync_fetch_and_add(&r->seq, 1); /* odd: being written */
	r->ifindex = ifindex;
	r->mtu = mtu;
	if (fib) {
		__builtin_memcpy(r->smac, fib->smac, ETH_ALEN);
		__builtin_memcpy(r->dmac, fib->dmac, ETH_ALEN);
	}
	__sync_fetch_and_add(&r->seq, 1); /* even: stable */
#endif
}

/*
 * Action WORKER: hand the untouched packet to the AF_XDP socket of the queue it arrived on. The
 * worker rewrites it (and runs its payload transform, e.g. SRTP). No socket there: XDP_PASS, so
 * the kernel stack and the userspace relay see it. `routed`: the value names the rewrite, and
 * `fib` is its successful route lookup (0 when the lookup failed), which travels with the frame
 * as metadata where the kernel allows it, else through sluice_routes.
 */
static __always_inline int to_worker(struct xdp_md *ctx, const struct sluice_flow_value *v,
				     int routed, const struct bpf_fib_lookup *fib)
{
	if (fib && !egress_allowed(fib->ifindex))
		fib = 0;
	int meta = 0;
	if (sluice_use_meta && fib &&
	    bpf_xdp_adjust_meta(ctx, -(int)sizeof(struct sluice_xsk_meta)) == 0) {
		/* adjust_meta invalidated every packet pointer: only ctx is used from here on. */
		struct sluice_xsk_meta *m = (void *)(long)ctx->data_meta;
		if ((void *)(m + 1) <= (void *)(long)ctx->data) {
			m->magic = SLUICE_XSK_META_MAGIC;
			m->ifindex = fib->ifindex;
			__builtin_memcpy(m->smac, fib->smac, ETH_ALEN);
			__builtin_memcpy(m->dmac, fib->dmac, ETH_ALEN);
			m->mtu = fib->mtu_result;
			m->pad = 0;
			meta = 1;
		}
	}
	if (routed && !meta)
		cache_route(v, fib);
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 queue = ctx->rx_queue_index;
	__u32 *slot = bpf_map_lookup_elem(&sluice_egress, &ifindex);
	if (!slot || *slot >= SLUICE_MAX_EGRESS || queue >= SLUICE_MAX_QUEUES) {
		COUNT(v, passed_no_worker);
		return XDP_PASS;
	}
	__u32 key = *slot * SLUICE_MAX_QUEUES + queue;
	long rc = bpf_redirect_map(&sluice_xsks, key, XDP_PASS);
	if (rc == XDP_REDIRECT)
		COUNT(v, to_worker);
	else
		COUNT(v, passed_no_worker);
	return rc;
}

static __always_inline int handle_v4(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	if (ip->version != 4 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	__u32 ihl = ip->ihl;
	if (ihl < 5)
		return XDP_PASS;
	/* Non-first fragments carry no UDP header. */
	if (ip->frag_off & bpf_htons(SLUICE_IP_OFFSET))
		return XDP_PASS;
	struct udphdr *udp = (void *)ip + ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;

	struct sluice_flow_key key = {
		.family = SLUICE_FAMILY_V4,
		.pad = 0,
		.port = udp->dest,
		.addr = { ip->daddr, 0, 0, 0 },
	};
	struct sluice_flow_value *v = bpf_map_lookup_elem(&sluice_flows, &key);
	if (!v) {
		/* A first fragment: the kernel reassembles the datagram and judges it whole. */
		if (ip->frag_off & bpf_htons(SLUICE_IP_MF))
			return XDP_PASS;
		struct bpf_sock_tuple t = {};
		t.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		t.ipv4.sport = udp->source;
		t.ipv4.dport = udp->dest;
		return guard(ctx, &key, &t, sizeof(t.ipv4));
	}
	int verdict = check_action(v);
	if (verdict >= 0)
		return verdict;

	if ((v->flags & SLUICE_FLAG_STRICT_SOURCE) &&
	    (ip->saddr != v->expect_addr[0] || udp->source != v->expect_port)) {
		COUNT(v, dropped_wrong_source);
		return XDP_DROP;
	}

	__u16 tot_len = bpf_ntohs(ip->tot_len);
	__u16 udp_len = bpf_ntohs(udp->len);
	if (ihl != 5 || (ip->frag_off & bpf_htons(SLUICE_IP_MF)) || udp_len < sizeof(*udp) ||
	    tot_len != 20 + udp_len || (void *)ip + tot_len > data_end ||
	    !family_ok(v, SLUICE_FAMILY_V4) || !ipv4_header_ok(ip) ||
	    !rtp_shaped((void *)(udp + 1), udp_len - sizeof(*udp), data_end)) {
		COUNT(v, passed_unusual);
		return XDP_PASS;
	}
	if (ip->ttl <= 1) {
		COUNT(v, passed_ttl);
		return XDP_PASS;
	}
	int worker = v->action == SLUICE_ACTION_WORKER;
	if (worker && !v->new_dst_port)
		return to_worker(ctx, v, 0, 0);

	struct bpf_fib_lookup fib = {};
	fib.family = SLUICE_AF_INET;
	fib.tos = ip->tos;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = v->new_src_port;
	fib.dport = v->new_dst_port;
	/* A worker's transform may grow the packet: ask for the MTU instead of a verdict on it. */
	fib.tot_len = worker ? 0 : tot_len;
	fib.ipv4_src = v->new_src_addr[0];
	fib.ipv4_dst = v->new_dst_addr[0];
	fib.ifindex = ctx->ingress_ifindex;
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (worker)
		return to_worker(ctx, v, 1, rc == BPF_FIB_LKUP_RET_SUCCESS ? &fib : 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return pass_fib(v, rc);
	if (!egress_allowed(fib.ifindex)) {
		COUNT(v, passed_egress);
		return XDP_PASS;
	}

	/* Rewrite. IPv4 header checksum: addresses and the TTL/protocol word. */
	__u32 new_saddr = v->new_src_addr[0];
	__u32 new_daddr = v->new_dst_addr[0];
	__u16 *ttl_word = (__u16 *)&ip->ttl;
	__u16 old_ttl_word = *ttl_word;
	ip->ttl -= 1;
	__u32 sum = (__u16)~ip->check;
	sum = csum_replace32(sum, ip->saddr, new_saddr);
	sum = csum_replace32(sum, ip->daddr, new_daddr);
	sum = csum_replace16(sum, old_ttl_word, *ttl_word);
	ip->check = ~csum_fold(sum);

	/* UDP checksum: pseudo-header addresses and ports. Zero means "none" for IPv4 and stays. */
	if (udp->check) {
		__u32 usum = (__u16)~udp->check;
		usum = csum_replace32(usum, ip->saddr, new_saddr);
		usum = csum_replace32(usum, ip->daddr, new_daddr);
		usum = csum_replace16(usum, udp->source, v->new_src_port);
		usum = csum_replace16(usum, udp->dest, v->new_dst_port);
		__u16 check = ~csum_fold(usum);
		udp->check = check ? check : 0xffff; /* RFC 768: computed 0 is sent as all ones */
	}
	ip->saddr = new_saddr;
	ip->daddr = new_daddr;
	udp->source = v->new_src_port;
	udp->dest = v->new_dst_port;

	return finish(ctx, v, eth, &fib, udp_len - sizeof(*udp));
}

static __always_inline int handle_v6(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return XDP_PASS;
	/* Extension headers (fragments included) are left to the kernel. */
	if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;

	struct sluice_flow_key key = {
		.family = SLUICE_FAMILY_V6,
		.pad = 0,
		.port = udp->dest,
		.addr = { ip6->daddr.in6_u.u6_addr32[0], ip6->daddr.in6_u.u6_addr32[1],
			  ip6->daddr.in6_u.u6_addr32[2], ip6->daddr.in6_u.u6_addr32[3] },
	};
	struct sluice_flow_value *v = bpf_map_lookup_elem(&sluice_flows, &key);
	if (!v) {
		struct bpf_sock_tuple t = {};
#pragma unroll
		for (int i = 0; i < 4; i++) {
			t.ipv6.saddr[i] = ip6->saddr.in6_u.u6_addr32[i];
			t.ipv6.daddr[i] = ip6->daddr.in6_u.u6_addr32[i];
		}
		t.ipv6.sport = udp->source;
		t.ipv6.dport = udp->dest;
		return guard(ctx, &key, &t, sizeof(t.ipv6));
	}
	int verdict = check_action(v);
	if (verdict >= 0)
		return verdict;

	if (v->flags & SLUICE_FLAG_STRICT_SOURCE) {
		__u32 diff = udp->source ^ v->expect_port;
#pragma unroll
		for (int i = 0; i < 4; i++)
			diff |= ip6->saddr.in6_u.u6_addr32[i] ^ v->expect_addr[i];
		if (diff) {
			COUNT(v, dropped_wrong_source);
			return XDP_DROP;
		}
	}

	__u16 payload_len = bpf_ntohs(ip6->payload_len);
	__u16 udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) || payload_len != udp_len ||
	    (void *)(ip6 + 1) + payload_len > data_end || udp->check == 0 ||
	    !family_ok(v, SLUICE_FAMILY_V6) ||
	    !rtp_shaped((void *)(udp + 1), udp_len - sizeof(*udp), data_end)) {
		COUNT(v, passed_unusual);
		return XDP_PASS;
	}
	if (ip6->hop_limit <= 1) {
		COUNT(v, passed_ttl);
		return XDP_PASS;
	}
	int worker = v->action == SLUICE_ACTION_WORKER;
	if (worker && !v->new_dst_port)
		return to_worker(ctx, v, 0, 0);

	struct bpf_fib_lookup fib = {};
	fib.family = SLUICE_AF_INET6;
	fib.flowinfo = *(__be32 *)ip6 & SLUICE_IPV6_FLOWINFO_MASK;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = v->new_src_port;
	fib.dport = v->new_dst_port;
	fib.tot_len = worker ? 0 : sizeof(*ip6) + payload_len;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		fib.ipv6_src[i] = v->new_src_addr[i];
		fib.ipv6_dst[i] = v->new_dst_addr[i];
	}
	fib.ifindex = ctx->ingress_ifindex;
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (worker)
		return to_worker(ctx, v, 1, rc == BPF_FIB_LKUP_RET_SUCCESS ? &fib : 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return pass_fib(v, rc);
	if (!egress_allowed(fib.ifindex)) {
		COUNT(v, passed_egress);
		return XDP_PASS;
	}

	/* No IPv6 header checksum; the UDP checksum covers the pseudo-header and is mandatory. */
	__u32 usum = (__u16)~udp->check;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		usum = csum_replace32(usum, ip6->saddr.in6_u.u6_addr32[i], v->new_src_addr[i]);
		usum = csum_replace32(usum, ip6->daddr.in6_u.u6_addr32[i], v->new_dst_addr[i]);
		ip6->saddr.in6_u.u6_addr32[i] = v->new_src_addr[i];
		ip6->daddr.in6_u.u6_addr32[i] = v->new_dst_addr[i];
	}
	usum = csum_replace16(usum, udp->source, v->new_src_port);
	usum = csum_replace16(usum, udp->dest, v->new_dst_port);
	__u16 check = ~csum_fold(usum);
	udp->check = check ? check : 0xffff;
	udp->source = v->new_src_port;
	udp->dest = v->new_dst_port;
	ip6->hop_limit -= 1;

	return finish(ctx, v, eth, &fib, udp_len - sizeof(*udp));
}

SEC("xdp")
int sluice_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	/* VLAN-tagged and every other ethertype: the kernel's business. */
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_v4(ctx, eth, data_end);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return handle_v6(ctx, eth, data_end);
	return XDP_PASS;
}

/* bpf_fib_lookup() is a GPL-only helper. */
char LICENSE[] SEC("license") = "Dual BSD/GPL";
