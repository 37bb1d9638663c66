/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * sluice XDP fast path: the layout shared by the XDP program (sluice_xdp.c) and userspace
 * (relay/src/xdp/abi.rs mirrors every struct and constant here with #[repr(C)] types; the test
 * `xdp_abi_layout` compiles this header with the host C compiler and fails if any size, offset
 * or constant differs).
 *
 * Rules: fixed-size fields only, explicit padding, no implicit holes (both sides must agree on
 * every byte because the key is hashed byte-wise by the kernel). Addresses and ports are stored
 * in network byte order, exactly as they appear in the packet. An IPv4 address occupies addr[0];
 * addr[1..3] are zero.
 */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include <linux/types.h>

/* Capacity of the flow map (entries) and of the per-flow counter array (flow ids). */
#define SLUICE_MAX_FLOWS 65536
/* Capacity of the egress interface set (interfaces the program is attached to). */
#define SLUICE_MAX_EGRESS 64
/* RX queues per interface that can have an AF_XDP socket (queues above go to the kernel stack). */
#define SLUICE_MAX_QUEUES 64
/* Capacity of the XSKMAP: one slot per (interface slot, RX queue), see sluice_xsks. */
#define SLUICE_MAX_XSKS (SLUICE_MAX_EGRESS * SLUICE_MAX_QUEUES)

/* Capacity of the port guard (sluice_guard): relay addresses whose port range is guarded. */
#define SLUICE_MAX_GUARDS 16

/* sluice_flow_key.family */
#define SLUICE_FAMILY_V4 4
#define SLUICE_FAMILY_V6 6

/* sluice_flow_value.action */
#define SLUICE_ACTION_PASS 0    /* hand to the kernel stack (userspace relay) untouched */
#define SLUICE_ACTION_FORWARD 1 /* rewrite and redirect in the kernel */
#define SLUICE_ACTION_WORKER 2  /* redirect to the AF_XDP socket of the RX queue (a worker) */
#define SLUICE_ACTION_DROP 3    /* drop (hold without userspace involvement) */

/* sluice_flow_value.flags */
#define SLUICE_FLAG_STRICT_SOURCE 0x01 /* drop packets whose source != expect_addr:expect_port */

/* Map key: the local relay socket a packet is addressed to (destination address + port). */
struct sluice_flow_key {
	__u8 family;   /* SLUICE_FAMILY_V4 / SLUICE_FAMILY_V6 */
	__u8 pad;      /* must be 0 */
	__be16 port;   /* UDP destination port, network byte order */
	__be32 addr[4];/* destination address, network byte order; IPv4 in addr[0] */
};

/* Map value: what to do with a packet that hit the key. */
struct sluice_flow_value {
	__u8 action;           /* SLUICE_ACTION_* */
	__u8 flags;            /* SLUICE_FLAG_* */
	__u8 family;           /* family of the addresses below (0: none); must equal the key's */
	__u8 pad0;             /* must be 0 */
	__be16 expect_port;    /* expected UDP source port (STRICT_SOURCE) */
	__be16 new_src_port;   /* rewrite: relay's port on the other leg */
	__be16 new_dst_port;   /* rewrite: the peer's port */
	__u16 pad1;            /* must be 0 */
	__u32 flow_id;         /* index into sluice_counters, < SLUICE_MAX_FLOWS */
	__be32 expect_addr[4]; /* expected source address (STRICT_SOURCE) */
	__be32 new_src_addr[4];/* rewrite: relay's address on the other leg */
	__be32 new_dst_addr[4];/* rewrite: the peer's address */
};

/*
 * Per-flow counters, one copy per CPU (BPF_MAP_TYPE_PERCPU_ARRAY indexed by flow_id);
 * userspace sums packets/bytes/drops/passes and takes the maximum of last_seen_ns.
 */
struct sluice_flow_counters {
	__u64 packets;              /* forwarded in the kernel */
	__u64 bytes;                /* UDP payload bytes forwarded in the kernel */
	__u64 last_seen_ns;         /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) of the last forwarded packet */
	__u64 dropped_wrong_source; /* STRICT_SOURCE mismatch: dropped */
	__u64 dropped_action;       /* action DROP */
	__u64 passed_action;        /* action PASS (and unknown actions): handed to the kernel stack */
	__u64 passed_fib_miss;      /* bpf_fib_lookup found no route / no neighbour: passed */
	__u64 passed_fwd_disabled;  /* forwarding sysctl off on the ingress interface: passed */
	__u64 passed_mtu;           /* rewritten packet would exceed the egress MTU: passed */
	__u64 passed_egress;        /* egress interface not one sluice is attached to: passed */
	__u64 passed_ttl;           /* TTL / hop limit <= 1: passed */
	__u64 passed_unusual;       /* fragment, IP options, bad lengths, bad IPv4 header
				       checksum, zero IPv6 UDP checksum, address family mismatch,
				       payload not RTP/RTCP-shaped: passed */
	__u64 to_worker;            /* action WORKER: redirected to the AF_XDP socket of the queue */
	__u64 passed_no_worker;     /* action WORKER, but no AF_XDP socket on this interface/queue:
				       handed to the kernel stack */
};

/*
 * Value of sluice_guard, whose key is a struct sluice_flow_key with port 0: the relay's port
 * range on that address (inclusive, host byte order). A UDP datagram to the address with a
 * destination port in the range that hits no flow is looked up in the host's UDP sockets
 * (bpf_sk_lookup_udp, the lookup the kernel's own delivery does): when no socket would receive
 * it (a scan of a port no call holds) it is dropped here instead of costing the stack an skb
 * and an ICMP error. A bound socket (a stream not in the kernel path yet, or another program's
 * socket in the range, e.g. an ephemeral port) gets it as without the guard. Fragments pass.
 */
struct sluice_port_guard {
	__u16 port_low;
	__u16 port_high;
};

/*
 * Per-CPU counters of packets that hit no flow (sluice_stats: one entry, key 0); userspace sums
 * them over CPUs.
 */
struct sluice_stats {
	__u64 dropped_unknown_port; /* guarded address and port, no flow, no socket: dropped */
	__u64 passed_bound_port;    /* guarded address and port, no flow, a socket: passed */
};

/*
 * XDP metadata in front of a frame handed to a worker (bpf_xdp_adjust_meta; AF_XDP copies it
 * into the UMEM right before the packet, also in copy mode): the bpf_fib_lookup() result for
 * the flow's rewritten addresses, so the worker can send the frame from its own TX ring on that
 * interface instead of through the kernel's IP stack. Absent (no magic) when the value names no
 * rewrite, the lookup failed (no route, no neighbour entry yet) or the egress is not an
 * interface sluice is attached to: the worker then lets the kernel route the packet, which
 * also resolves the neighbour for the next one.
 */
#define SLUICE_XSK_META_MAGIC 0x534c4d31 /* "SLM1" */
struct sluice_xsk_meta {
	__u32 magic;     /* SLUICE_XSK_META_MAGIC; the worker clears it after reading */
	__u32 ifindex;   /* egress interface */
	__u8 smac[6];    /* egress interface's address */
	__u8 dmac[6];    /* next hop's address */
	__u16 mtu;       /* egress MTU (L3 bytes) */
	__u16 pad;       /* 0 */
};

/*
 * Value of sluice_routes (ARRAY, BPF_F_MMAPABLE, indexed by flow id): the route of a routed
 * WORKER flow, for kernels that give XDP no metadata. The program writes it when the route
 * changes, before it redirects the frame; the worker reads it through a read-only mmap. A
 * sequence counter guards the write (odd while written, seqlock-style): a reader that sees an
 * odd or changed seq ignores the entry and lets the kernel route that packet. ifindex 0: no
 * route (lookup failed, or an egress sluice is not attached to). Host byte order.
 */
struct sluice_route {
	__u32 seq;
	__u32 ifindex;
	__u8 smac[6];
	__u8 dmac[6];
	__u16 mtu;
	__u16 pad;
};

#endif /* SLUICE_MAPS_H */
