//! `#[repr(C)]` mirrors of ebpf/sluice_maps.h: the flow map key and value and the per-flow
//! counters the XDP program reads and writes. The test `xdp_abi_layout` compiles the header with
//! the host C compiler and compares every size, offset and constant with these types.
//!
//! Addresses and ports are kept in network byte order, as in the packet; the constructors take
//! `SocketAddr`s so callers never see that.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `SLUICE_MAX_FLOWS`: capacity of the flow map, and the number of flow ids (counter slots).
pub const MAX_FLOWS: u32 = 65536;
/// `SLUICE_MAX_EGRESS`: how many interfaces one program can be attached to.
pub const MAX_EGRESS: u32 = 64;
/// `SLUICE_MAX_QUEUES`: RX queues per interface that can have an AF_XDP socket.
pub const MAX_QUEUES: u32 = 64;
/// `SLUICE_MAX_XSKS`: capacity of the XSKMAP (one slot per interface slot and RX queue).
pub const MAX_XSKS: u32 = MAX_EGRESS * MAX_QUEUES;

/// `SLUICE_MAX_GUARDS`: how many relay addresses can have their port range guarded.
pub const MAX_GUARDS: u32 = 16;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const ACTION_PASS: u8 = 0;
pub const ACTION_FORWARD: u8 = 1;
pub const ACTION_WORKER: u8 = 2;
pub const ACTION_DROP: u8 = 3;

pub const FLAG_STRICT_SOURCE: u8 = 0x01;

/// `SLUICE_XSK_META_MAGIC`: marks a valid [`XskMeta`] in front of a frame.
pub const XSK_META_MAGIC: u32 = 0x534c_4d31;

/// `struct sluice_xsk_meta`: the XDP program's route for a routed WORKER flow's frame, in the
/// bytes right before the packet in the UMEM. Host byte order (written by the program on this
/// machine).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XskMeta {
    pub magic: u32,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Egress MTU, IP header included.
    pub mtu: u16,
    pub pad: u16,
}

/// `struct sluice_route`: the value of `sluice_routes`, the route of a routed WORKER flow by flow
/// id, for kernels whose XDP gives no metadata. `seq` is odd while the program writes the entry;
/// `ifindex` 0 means no route. Host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RouteEntry {
    pub seq: u32,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Egress MTU, IP header included.
    pub mtu: u16,
    pub pad: u16,
}

/// What the kernel does with a packet that hits a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlowAction {
    /// Hand it to the kernel stack untouched (the userspace relay handles it).
    Pass = ACTION_PASS,
    /// Rewrite and forward in the kernel.
    Forward = ACTION_FORWARD,
    /// Redirect to the AF_XDP socket of the RX queue the packet arrived on (a worker rewrites
    /// and transmits it); `Pass` when that queue has no socket.
    Worker = ACTION_WORKER,
    /// Drop in the kernel (e.g. a leg on hold that must not reach userspace either).
    Drop = ACTION_DROP,
}

impl FlowAction {
    fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            ACTION_PASS => Self::Pass,
            ACTION_FORWARD => Self::Forward,
            ACTION_WORKER => Self::Worker,
            ACTION_DROP => Self::Drop,
            _ => return None,
        })
    }
}

/// An address as stored in the maps: IPv4 in word 0, the rest zero; bytes in network order.
fn addr_words(ip: IpAddr) -> [u32; 4] {
    let mut bytes = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(a) => bytes[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => bytes.copy_from_slice(&a.octets()),
    }
    let mut words = [0u32; 4];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

fn words_addr(family: u8, words: [u32; 4]) -> IpAddr {
    let mut bytes = [0u8; 16];
    for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers)
/// are IPv4 on the wire, so they are stored as IPv4.
fn family_of(ip: IpAddr) -> u8 {
    match ip.to_canonical() {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

/// `struct sluice_flow_key`: the local relay socket a packet is addressed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowKey {
    pub(crate) family: u8,
    pub(crate) pad: u8,
    /// Network byte order.
    pub(crate) port: u16,
    pub(crate) addr: [u32; 4],
}

impl FlowKey {
    /// The key for packets addressed to the relay socket `local` (its address and port).
    pub fn new(local: SocketAddr) -> Self {
        Self {
            family: family_of(local.ip()),
            pad: 0,
            port: local.port().to_be(),
            addr: addr_words(local.ip()),
        }
    }

    /// The key from wire-format parts (a worker's parsed frame): `port` and `addr` hold the
    /// bytes exactly as in the packet (`from_ne_bytes` of them), IPv4 in `addr[0]`.
    pub(crate) fn from_wire(v6: bool, port: u16, addr: [u32; 4]) -> Self {
        Self {
            family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
            pad: 0,
            port,
            addr,
        }
    }

    pub(crate) fn is_v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(words_addr(self.family, self.addr), u16::from_be(self.port))
    }
}

// SAFETY: repr(C), only integer fields, no implicit padding (checked by the layout test), every
// bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}

/// Family byte of a value naming no address (PASS, DROP).
pub(crate) const FAMILY_NONE: u8 = 0;
/// Family byte of a value built from addresses of different families; insert refuses it.
pub(crate) const FAMILY_MIXED: u8 = 0xff;

impl FlowKey {
    /// The key of `ip` in the port guard map: the address with port 0.
    pub(crate) fn guard(ip: IpAddr) -> Self {
        Self::new(SocketAddr::new(ip, 0))
    }
}

/// `struct sluice_port_guard`: the relay's port range on one address (inclusive, host byte
/// order), the value of the port guard map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PortGuard {
    pub port_low: u16,
    pub port_high: u16,
}

// SAFETY: repr(C), u16 fields, no padding.
unsafe impl aya::Pod for PortGuard {}

/// `struct sluice_stats`: counters of packets that hit no flow, one CPU's copy or (from
/// [`XdpPath::stats`](super::XdpPath::stats)) the sum over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XdpStats {
    /// To a guarded relay address and port, no flow, no socket: dropped in XDP (a port scan,
    /// or a peer still sending to a port whose call ended).
    pub dropped_unknown_port: u64,
    /// To a guarded relay address and port, no flow, a bound socket: passed (a stream not in
    /// the kernel path yet, or another program's socket in the range).
    pub passed_bound_port: u64,
}

// SAFETY: repr(C), u64 fields only.
unsafe impl aya::Pod for XdpStats {}

impl XdpStats {
    /// Adds another CPU's copy.
    pub fn merge(&mut self, other: &XdpStats) {
        self.dropped_unknown_port += other.dropped_unknown_port;
        self.passed_bound_port += other.passed_bound_port;
    }
}

/// `struct sluice_flow_value`: what to do with a packet that hits a [`FlowKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowValue {
    pub(crate) action: u8,
    pub(crate) flags: u8,
    pub(crate) family: u8,
    pub(crate) pad0: u8,
    pub(crate) expect_port: u16,
    pub(crate) new_src_port: u16,
    pub(crate) new_dst_port: u16,
    pub(crate) pad1: u16,
    pub(crate) flow_id: u32,
    pub(crate) expect_addr: [u32; 4],
    pub(crate) new_src_addr: [u32; 4],
    pub(crate) new_dst_addr: [u32; 4],
}

// SAFETY: as for FlowKey.
unsafe impl aya::Pod for FlowValue {}

impl FlowValue {
    fn with_action(action: FlowAction, flow_id: u32) -> Self {
        Self {
            action: action as u8,
            flags: 0,
            family: FAMILY_NONE,
            pad0: 0,
            expect_port: 0,
            new_src_port: 0,
            new_dst_port: 0,
            pad1: 0,
            flow_id,
            expect_addr: [0; 4],
            new_src_addr: [0; 4],
            new_dst_addr: [0; 4],
        }
    }

    fn add_family(&mut self, ip: IpAddr) {
        let f = family_of(ip);
        self.family = match self.family {
            FAMILY_NONE => f,
            same if same == f => f,
            _ => FAMILY_MIXED,
        };
    }

    /// Forward in the kernel: the packet leaves from `new_src` (the relay's socket on the other
    /// leg) to `new_dst` (the peer). Counted under `flow_id`. Both addresses must have the
    /// key's address family (the kernel path does not translate between IPv4 and IPv6; insert
    /// refuses such a value with `XdpError::FamilyMismatch`).
    pub fn forward(flow_id: u32, new_src: SocketAddr, new_dst: SocketAddr) -> Self {
        let mut v = Self::with_action(FlowAction::Forward, flow_id);
        v.new_src_port = new_src.port().to_be();
        v.new_src_addr = addr_words(new_src.ip());
        v.new_dst_port = new_dst.port().to_be();
        v.new_dst_addr = addr_words(new_dst.ip());
        v.add_family(new_src.ip());
        v.add_family(new_dst.ip());
        v
    }

    /// Hand matching packets to the AF_XDP worker of the queue they arrive on (after the strict
    /// source check, when set), counting them as `to_worker`; the worker owns the rewrite
    /// (see `crate::worker`). A queue without a worker socket passes them to the kernel stack
    /// (`passed_no_worker`).
    pub fn worker(flow_id: u32) -> Self {
        Self::with_action(FlowAction::Worker, flow_id)
    }

    /// As [`worker`](Self::worker), and the program also looks up the route from `new_src` to
    /// `new_dst` (`bpf_fib_lookup`, as for `Forward`) and hands the result to the worker with
    /// the frame ([`XskMeta`]), so the worker can send from its own TX ring on the egress
    /// interface. The worker still owns the rewrite; the addresses here only route. Both must
    /// have the key's family.
    pub fn worker_routed(flow_id: u32, new_src: SocketAddr, new_dst: SocketAddr) -> Self {
        let mut v = Self::forward(flow_id, new_src, new_dst);
        v.action = ACTION_WORKER;
        v
    }

    /// Hand matching packets to the kernel stack (userspace), counting them as `passed_action`.
    pub fn pass(flow_id: u32) -> Self {
        Self::with_action(FlowAction::Pass, flow_id)
    }

    /// Drop matching packets in the kernel, counting them as `dropped_action`.
    pub fn drop_all(flow_id: u32) -> Self {
        Self::with_action(FlowAction::Drop, flow_id)
    }

    /// Only packets from `source` are accepted; others are dropped and counted
    /// (`dropped_wrong_source`). Applies to `Forward` and `Worker`.
    pub fn strict_source(mut self, source: SocketAddr) -> Self {
        self.flags |= FLAG_STRICT_SOURCE;
        self.expect_port = source.port().to_be();
        self.expect_addr = addr_words(source.ip());
        self.add_family(source.ip());
        self
    }

    pub fn action(&self) -> Option<FlowAction> {
        FlowAction::from_raw(self.action)
    }

    pub fn flow_id(&self) -> u32 {
        self.flow_id
    }

    /// The expected source when strict source checking is on.
    pub fn expected_source(&self) -> Option<SocketAddr> {
        (self.flags & FLAG_STRICT_SOURCE != 0).then(|| {
            SocketAddr::new(
                words_addr(self.family, self.expect_addr),
                u16::from_be(self.expect_port),
            )
        })
    }

    /// (new source, new destination) of a `Forward` flow, or of a routed `Worker` flow.
    pub fn rewrite(&self) -> Option<(SocketAddr, SocketAddr)> {
        (self.action == ACTION_FORWARD || (self.action == ACTION_WORKER && self.new_dst_port != 0))
            .then(|| {
                (
                    SocketAddr::new(
                        words_addr(self.family, self.new_src_addr),
                        u16::from_be(self.new_src_port),
                    ),
                    SocketAddr::new(
                        words_addr(self.family, self.new_dst_addr),
                        u16::from_be(self.new_dst_port),
                    ),
                )
            })
    }

    /// Every address this value names has the key's family (what the program assumes).
    pub(crate) fn family_matches(&self, key: &FlowKey) -> bool {
        self.family == FAMILY_NONE || self.family == key.family
    }
}

/// `struct sluice_flow_counters`: one CPU's copy in the map, or (from
/// [`XdpPath::counters`](super::XdpPath::counters)) the sum over all CPUs, with `last_seen_ns`
/// the latest of them. `bytes` counts UDP payload bytes, as the userspace engine does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowCounters {
    /// Forwarded in the kernel.
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_ns: u64,
    pub dropped_wrong_source: u64,
    pub dropped_action: u64,
    pub passed_action: u64,
    pub passed_fib_miss: u64,
    pub passed_fwd_disabled: u64,
    pub passed_mtu: u64,
    pub passed_egress: u64,
    pub passed_ttl: u64,
    /// Fragments, IP options, bad lengths or header checksum, zero IPv6 UDP checksum, family
    /// mismatch, a payload userspace would drop as not RTP/RTCP: passed.
    pub passed_unusual: u64,
    /// Action WORKER: redirected to the AF_XDP socket of the queue.
    pub to_worker: u64,
    /// Action WORKER without a socket on the interface/queue: passed to the kernel stack.
    pub passed_no_worker: u64,
}

// SAFETY: repr(C), u64 fields only.
unsafe impl aya::Pod for FlowCounters {}

impl FlowCounters {
    /// Adds another CPU's copy: sums every counter, keeps the latest `last_seen_ns`.
    pub fn merge(&mut self, other: &FlowCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.last_seen_ns = self.last_seen_ns.max(other.last_seen_ns);
        self.dropped_wrong_source += other.dropped_wrong_source;
        self.dropped_action += other.dropped_action;
        self.passed_action += other.passed_action;
        self.passed_fib_miss += other.passed_fib_miss;
        self.passed_fwd_disabled += other.passed_fwd_disabled;
        self.passed_mtu += other.passed_mtu;
        self.passed_egress += other.passed_egress;
        self.passed_ttl += other.passed_ttl;
        self.passed_unusual += other.passed_unusual;
        self.to_worker += other.to_worker;
        self.passed_no_worker += other.passed_no_worker;
    }

    /// Every packet the kernel dropped for this flow.
    pub fn dropped(&self) -> u64 {
        self.dropped_wrong_source + self.dropped_action
    }

    /// Every packet of this flow the kernel handed up to the stack (userspace path).
    pub fn passed(&self) -> u64 {
        self.passed_action
            + self.passed_fib_miss
            + self.passed_fwd_disabled
            + self.passed_mtu
            + self.passed_egress
            + self.passed_ttl
            + self.passed_unusual
            + self.passed_no_worker
    }
}
