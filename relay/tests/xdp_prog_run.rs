//! The verifier-approved XDP program on hostile frames, through `BPF_PROG_TEST_RUN`: the real
//! object as the daemon loads it, the real maps filled through the flow table API, and frames
//! no socket could send (truncated at every header boundary, fragments, VLAN tags, IPv4
//! options, IPv6 extension headers, zero UDP checksums, oversized, bad header checksums, payloads
//! that are not RTP). Each one must get the verdict the design gives it (ebpf/README.md "Per
//! packet"), which for a malformed frame is always `XDP_PASS` (the kernel stack and the userspace
//! relay judge it) or `XDP_DROP`, never a redirect or `XDP_TX`; and the flow's counters must say
//! why, which proves the frame reached the flow lookup where it should.
//!
//! Well-formed frames of the same flows come out `XDP_REDIRECT` (and `XDP_TX` on a hairpin)
//! with the rewrite checked byte for byte, so the harness demonstrably reaches the forwarding
//! path: a PASS below is the program's decision, not a harness that never gets that far.
//!
//! One network namespace holds the relay's two veths (r1, r2) with static neighbours and
//! forwarding on, so that `bpf_fib_lookup` succeeds exactly as on a live relay; the program is
//! attached to both (its egress set), and every frame runs as if it arrived on r1.
//!
//! Needs root; otherwise every test prints "skipped: needs root" and passes.

use std::net::{IpAddr, SocketAddr};

mod common;
use common::{C_MAC, E_MAC, R1_MAC, R2_MAC, fold, in_ns, mac, sa, sum16};

use sluice_relay::xdp::{FlowCounters, FlowKey, FlowValue, ProgramRun, XdpMode, XdpPath};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

fn verdict_name(v: u32) -> &'static str {
    match v {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

const H_MAC: [u8; 6] = [2, 0, 0, 0, 1, 3];

// Addresses: caller 10.201.1.2 / fd00:201:1::2 behind r1, callee 10.201.2.2 / fd00:201:2::2
// behind r2, a hairpin peer 10.201.1.3 behind r1 too.
const CALLER4: &str = "10.201.1.2:4000";
const RELAY_A4: &str = "10.201.1.1:30000";
const RELAY_B4: &str = "10.201.2.1:30002";
const CALLEE4: &str = "10.201.2.2:5000";
const HAIRPIN_IN4: &str = "10.201.1.1:30010";
const HAIRPIN_OUT4: &str = "10.201.1.1:30012";
const HAIRPIN_PEER4: &str = "10.201.1.3:6000";
const CALLER6: &str = "[fd00:201:1::2]:4000";
const RELAY_A6: &str = "[fd00:201:1::1]:30000";
const RELAY_B6: &str = "[fd00:201:2::1]:30002";
const CALLEE6: &str = "[fd00:201:2::2]:5000";

const FLOW4: u32 = 10;
const FLOW6: u32 = 11;
const FLOW_HAIRPIN: u32 = 12;
/// A WORKER flow (SRTP termination in an AF_XDP worker) with strict source; no worker socket is
/// registered, so a frame it would hand over passes up (`passed_no_worker`).
const FLOW_WORKER: u32 = 13;
const RELAY_WORKER4: &str = "10.201.1.1:30060";

/// The relay namespace (deleted on drop) and r1's interface index.
struct Relay {
    ns: String,
    _guard: sluice_netns::Namespaces,
}

fn relay_ns() -> Relay {
    use sluice_netns::{End, addr_add, neigh, veth};
    let ns = sluice_netns::unique("sp", "r");
    let guard = sluice_netns::Namespaces::create(&[&ns]).unwrap_or_else(|e| panic!("{e}"));
    // The far ends stay in the same namespace without addresses: nothing is sent, the veths
    // only have to be up for their routes to be usable.
    let end = |dev, mac| End {
        ns: &ns,
        dev,
        mac,
        addrs: &[],
    };
    let (r1, c0, r2, e0) = (mac(R1_MAC), mac(C_MAC), mac(R2_MAC), mac(E_MAC));
    let ok = |r: std::io::Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(veth(end("r1", &r1), end("c0", &c0)));
    ok(veth(end("r2", &r2), end("e0", &e0)));
    for (dev, v4, v6) in [
        ("r1", "10.201.1.1/24", "fd00:201:1::1/64"),
        ("r2", "10.201.2.1/24", "fd00:201:2::1/64"),
    ] {
        ok(addr_add(&ns, dev, v4));
        ok(addr_add(&ns, dev, v6));
    }
    for (dev, addr, m) in [
        ("r1", "10.201.1.2", C_MAC),
        ("r1", "fd00:201:1::2", C_MAC),
        ("r1", "10.201.1.3", H_MAC),
        ("r2", "10.201.2.2", E_MAC),
        ("r2", "fd00:201:2::2", E_MAC),
    ] {
        ok(neigh(&ns, dev, addr, &mac(m)));
    }
    // bpf_fib_lookup() answers FWD_DISABLED unless forwarding is on for the ingress device.
    ok(sluice_netns::sysctl(&ns, "net.ipv4.ip_forward", "1"));
    ok(sluice_netns::sysctl(
        &ns,
        "net.ipv6.conf.all.forwarding",
        "1",
    ));
    Relay { ns, _guard: guard }
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "interface {name} not found");
    idx
}

/// Attaches the program to r1 and r2 (generic mode: these runs never touch the driver) and
/// installs the flows the frames below aim at.
fn install_flows() -> XdpPath {
    let mut xdp =
        XdpPath::attach(&["r1", "r2"], XdpMode::Generic).unwrap_or_else(|e| panic!("attach: {e}"));
    for (key, value, id) in [
        (
            RELAY_A4,
            FlowValue::forward(FLOW4, sa(RELAY_B4), sa(CALLEE4)).strict_source(sa(CALLER4)),
            FLOW4,
        ),
        (
            RELAY_A6,
            FlowValue::forward(FLOW6, sa(RELAY_B6), sa(CALLEE6)).strict_source(sa(CALLER6)),
            FLOW6,
        ),
        (
            HAIRPIN_IN4,
            FlowValue::forward(FLOW_HAIRPIN, sa(HAIRPIN_OUT4), sa(HAIRPIN_PEER4)),
            FLOW_HAIRPIN,
        ),
        (
            RELAY_WORKER4,
            FlowValue::worker(FLOW_WORKER).strict_source(sa(CALLER4)),
            FLOW_WORKER,
        ),
    ] {
        xdp.insert(FlowKey::new(sa(key)), value).unwrap();
        xdp.reset_counters(id).unwrap();
    }
    xdp
}

// ---------------------------------------------------------------------------------------------
// frames

/// An RTP packet (version 2, PT 0) of `len` bytes.
fn rtp(len: usize) -> Vec<u8> {
    let mut p = vec![
        0x80, 0x00, 0x12, 0x34, 0, 0, 0x0c, 0x80, 0x51, 0x51, 0x1c, 0xe0,
    ];
    p.extend((0..len.saturating_sub(12)).map(|i| i as u8));
    p.truncate(len);
    p
}

/// An RTCP receiver report without report blocks (8 bytes, length field 1).
fn rtcp_rr() -> Vec<u8> {
    vec![0x80, 201, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]
}

/// The UDP checksum of `udp` (header with a zero checksum field, then payload) between
/// `src` and `dst`; 0 computed is sent as 0xffff (RFC 768).
fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = sum16(&s.octets(), sum);
            sum = sum16(&d.octets(), sum);
            sum += 17 + udp.len() as u32;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = sum16(&s.octets(), sum);
            sum = sum16(&d.octets(), sum);
            sum += udp.len() as u32;
            sum += 17;
        }
        _ => unreachable!(),
    }
    let c = !fold(sum16(udp, sum));
    if c == 0 { 0xffff } else { c }
}

fn udp_segment(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src.port().to_be_bytes());
    u.extend_from_slice(&dst.port().to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = udp_checksum(src.ip(), dst.ip(), &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

fn ethernet(ethertype: u16, rest: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + rest.len());
    f.extend_from_slice(&R1_MAC);
    f.extend_from_slice(&C_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(rest);
    f
}

const ETH_IP: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;

/// Offsets in an untagged frame.
const IP: usize = 14;
const UDP4: usize = IP + 20;
const UDP6: usize = IP + 40;

/// An IPv4 header (IHL 5 + `options`) with a valid checksum, then `l4`.
fn ipv4(src: SocketAddr, dst: SocketAddr, proto: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        unreachable!()
    };
    assert_eq!(options.len() % 4, 0);
    let hlen = 20 + options.len();
    let mut h = vec![0x40 | (hlen / 4) as u8, 0];
    h.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]); // id, DF, TTL 64
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(options);
    let c = !fold(sum16(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// The IPv4 header checksum of the frame's header recomputed after an edit (so the frame is
/// malformed only in the way the case means).
fn fix_ipv4_checksum(f: &mut [u8], at: usize) {
    let hlen = ((f[at] & 0x0f) as usize * 4).min(f.len() - at);
    f[at + 10..at + 12].copy_from_slice(&[0, 0]);
    let c = !fold(sum16(&f[at..at + hlen], 0));
    f[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

fn udp4_frame(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (sa(src), sa(dst));
    ethernet(
        ETH_IP,
        &ipv4(src, dst, 17, &[], &udp_segment(src, dst, payload)),
    )
}

/// An IPv6 header whose next header is `next` (`ext` are the extension headers' bytes, the
/// first of which is `next`), then `l4` (UDP).
fn ipv6(src: SocketAddr, dst: SocketAddr, next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        unreachable!()
    };
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(ext);
    h.extend_from_slice(l4);
    h
}

fn udp6_frame(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (sa(src), sa(dst));
    ethernet(
        ETH_IPV6,
        &ipv6(src, dst, 17, &[], &udp_segment(src, dst, payload)),
    )
}

fn good4() -> Vec<u8> {
    udp4_frame(CALLER4, RELAY_A4, &rtp(172))
}

fn good6() -> Vec<u8> {
    udp6_frame(CALLER6, RELAY_A6, &rtp(172))
}

/// `frame` with a VLAN tag (`tpid`, VLAN 100) after the MAC addresses.
fn vlan_tagged(frame: &[u8], tpid: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&100u16.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

// ---------------------------------------------------------------------------------------------
// expectations

/// Which flow counter a case must move (by exactly one), if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    /// The frame never reached a flow: no counter of any flow moves.
    Nothing,
    Forwarded,
    PassedUnusual,
    PassedMtu,
    PassedTtl,
    PassedNoWorker,
    DroppedWrongSource,
}

fn field(c: &FlowCounters, what: Counted) -> u64 {
    match what {
        Counted::Nothing => 0,
        Counted::Forwarded => c.packets,
        Counted::PassedUnusual => c.passed_unusual,
        Counted::PassedMtu => c.passed_mtu,
        Counted::PassedTtl => c.passed_ttl,
        Counted::PassedNoWorker => c.passed_no_worker,
        Counted::DroppedWrongSource => c.dropped_wrong_source,
    }
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    flow: u32,
    counted: Counted,
}

fn case(name: &'static str, frame: Vec<u8>, verdict: u32, flow: u32, counted: Counted) -> Case {
    Case {
        name,
        frame,
        verdict,
        flow,
        counted,
    }
}

/// Runs every case on r1 and checks verdict and counters; returns each case's outcome (for
/// the checks of rewritten frames) and prints the table of verdicts.
fn run_cases(xdp: &XdpPath, cases: Vec<Case>) -> Vec<(Case, ProgramRun)> {
    let r1 = ifindex("r1");
    let flows = [FLOW4, FLOW6, FLOW_HAIRPIN, FLOW_WORKER];
    let mut failures = Vec::new();
    let mut out = Vec::new();
    for c in cases {
        let before: Vec<FlowCounters> = flows.iter().map(|&f| xdp.counters(f).unwrap()).collect();
        let run = xdp
            .test_run(&c.frame, r1, 1)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let after: Vec<FlowCounters> = flows.iter().map(|&f| xdp.counters(f).unwrap()).collect();
        eprintln!(
            "  {:<58} {:>4} bytes -> {}",
            c.name,
            c.frame.len(),
            verdict_name(run.action)
        );
        if run.action != c.verdict {
            failures.push(format!(
                "{}: {} (expected {})",
                c.name,
                verdict_name(run.action),
                verdict_name(c.verdict)
            ));
        }
        for (i, &f) in flows.iter().enumerate() {
            let moved = before[i] != after[i];
            if c.counted == Counted::Nothing || f != c.flow {
                if moved {
                    failures.push(format!(
                        "{}: flow {f}'s counters moved: {:?} -> {:?}",
                        c.name, before[i], after[i]
                    ));
                }
                continue;
            }
            let delta = field(&after[i], c.counted) - field(&before[i], c.counted);
            // Exactly the expected counter moved by one, nothing else (last_seen aside).
            let mut rest_before = before[i];
            let mut rest_after = after[i];
            for r in [&mut rest_before, &mut rest_after] {
                r.last_seen_ns = 0;
                match c.counted {
                    Counted::Forwarded => {
                        r.packets = 0;
                        r.bytes = 0;
                    }
                    Counted::PassedUnusual => r.passed_unusual = 0,
                    Counted::PassedMtu => r.passed_mtu = 0,
                    Counted::PassedTtl => r.passed_ttl = 0,
                    Counted::PassedNoWorker => r.passed_no_worker = 0,
                    Counted::DroppedWrongSource => r.dropped_wrong_source = 0,
                    Counted::Nothing => {}
                }
            }
            if delta != 1 || rest_before != rest_after {
                failures.push(format!(
                    "{}: expected {:?} + 1 on flow {f}, counters went {:?} -> {:?}",
                    c.name, c.counted, before[i], after[i]
                ));
            }
        }
        out.push((c, run));
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    out
}

/// The frame as rewritten for the callee: MACs from the fib, addresses and ports of the other
/// leg, TTL/hop limit one less, IPv4 header and UDP checksums valid, payload untouched.
fn check_rewritten(out: &[u8], input: &[u8], src: &str, dst: &str, smac: [u8; 6], dmac: [u8; 6]) {
    let (src, dst) = (sa(src), sa(dst));
    assert_eq!(out.len(), input.len(), "length changed");
    assert_eq!(&out[0..6], &dmac, "destination MAC");
    assert_eq!(&out[6..12], &smac, "source MAC");
    let (udp_at, ttl_at) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(&out[IP + 12..IP + 16], &s.octets(), "IPv4 source");
            assert_eq!(&out[IP + 16..IP + 20], &d.octets(), "IPv4 destination");
            assert_eq!(
                fold(sum16(&out[IP..IP + 20], 0)),
                0xffff,
                "IPv4 header checksum"
            );
            (UDP4, IP + 8)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(&out[IP + 8..IP + 24], &s.octets(), "IPv6 source");
            assert_eq!(&out[IP + 24..IP + 40], &d.octets(), "IPv6 destination");
            (UDP6, IP + 7)
        }
        _ => unreachable!(),
    };
    assert_eq!(out[ttl_at], input[ttl_at] - 1, "TTL / hop limit");
    assert_eq!(
        &out[udp_at..udp_at + 4],
        &[src.port().to_be_bytes(), dst.port().to_be_bytes()].concat()[..],
        "UDP ports"
    );
    let udp_len = u16::from_be_bytes([out[udp_at + 4], out[udp_at + 5]]) as usize;
    let udp = &out[udp_at..udp_at + udp_len];
    let check = u16::from_be_bytes([udp[6], udp[7]]);
    if check != 0 {
        let mut zeroed = udp.to_vec();
        zeroed[6..8].copy_from_slice(&[0, 0]);
        assert_eq!(
            check,
            udp_checksum(src.ip(), dst.ip(), &zeroed),
            "UDP checksum"
        );
    }
    assert_eq!(
        &out[udp_at + 8..],
        &input[udp_at + 8..],
        "payload (and any padding) untouched"
    );
}

fn skip() -> bool {
    match common::skip_reason() {
        Some(why) => {
            common::skipped(why);
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn prog_run_forwards_well_formed_rtp_and_rtcp() {
    if skip() {
        return;
    }
    let relay = relay_ns();
    in_ns(&relay.ns, || {
        let xdp = install_flows();
        // RTCP in a minimum-size Ethernet frame: 50 bytes padded to 60, as on a wire.
        let mut padded_rtcp = udp4_frame(CALLER4, RELAY_A4, &rtcp_rr());
        padded_rtcp.resize(60, 0);
        let mut zero_check = good4();
        zero_check[UDP4 + 6..UDP4 + 8].copy_from_slice(&[0, 0]);
        let cases = vec![
            case("IPv4 RTP", good4(), XDP_REDIRECT, FLOW4, Counted::Forwarded),
            case("IPv6 RTP", good6(), XDP_REDIRECT, FLOW6, Counted::Forwarded),
            case(
                "IPv4 RTCP RR in a padded 60-byte frame",
                padded_rtcp,
                XDP_REDIRECT,
                FLOW4,
                Counted::Forwarded,
            ),
            // RFC 768: zero means "no checksum" in IPv4; it is legal and stays zero.
            case(
                "IPv4 UDP checksum 0 (legal)",
                zero_check,
                XDP_REDIRECT,
                FLOW4,
                Counted::Forwarded,
            ),
            case(
                "IPv4 RTP, hairpin back out of r1",
                udp4_frame(CALLER4, HAIRPIN_IN4, &rtp(172)),
                XDP_TX,
                FLOW_HAIRPIN,
                Counted::Forwarded,
            ),
        ];
        let runs = run_cases(&xdp, cases);
        check_rewritten(
            &runs[0].1.frame,
            &runs[0].0.frame,
            RELAY_B4,
            CALLEE4,
            R2_MAC,
            E_MAC,
        );
        check_rewritten(
            &runs[1].1.frame,
            &runs[1].0.frame,
            RELAY_B6,
            CALLEE6,
            R2_MAC,
            E_MAC,
        );
        check_rewritten(
            &runs[2].1.frame,
            &runs[2].0.frame,
            RELAY_B4,
            CALLEE4,
            R2_MAC,
            E_MAC,
        );
        check_rewritten(
            &runs[3].1.frame,
            &runs[3].0.frame,
            RELAY_B4,
            CALLEE4,
            R2_MAC,
            E_MAC,
        );
        assert_eq!(
            &runs[3].1.frame[UDP4 + 6..UDP4 + 8],
            &[0, 0],
            "zero IPv4 UDP checksum stays zero"
        );
        check_rewritten(
            &runs[4].1.frame,
            &runs[4].0.frame,
            HAIRPIN_OUT4,
            HAIRPIN_PEER4,
            R1_MAC,
            H_MAC,
        );
        let c = xdp.counters(FLOW4).unwrap();
        assert_eq!(
            c.bytes,
            172 + 8 + 172,
            "UDP payload bytes of the three IPv4 frames"
        );
        xdp.detach().unwrap();
    });
}

#[test]
fn prog_run_never_forwards_a_malformed_ipv4_frame() {
    if skip() {
        return;
    }
    let relay = relay_ns();
    in_ns(&relay.ns, || {
        let xdp = install_flows();
        let good = good4();
        let len = good.len();
        let mut cases = Vec::new();
        use Counted::*;

        // Truncated at each header boundary (and inside each header), the headers still
        // claiming the whole datagram. Before the UDP header nothing can be looked up.
        for (name, cut) in [
            ("truncated: Ethernet header only", IP),
            ("truncated: inside the IPv4 header", IP + 10),
            ("truncated: IPv4 header, no UDP header", UDP4),
            ("truncated: inside the UDP header", UDP4 + 4),
        ] {
            cases.push(case(name, good[..cut].to_vec(), XDP_PASS, FLOW4, Nothing));
        }
        for (name, cut) in [
            ("truncated: UDP header, no RTP", UDP4 + 8),
            ("truncated: inside the RTP header", UDP4 + 8 + 6),
            ("truncated: one byte short", len - 1),
        ] {
            cases.push(case(
                name,
                good[..cut].to_vec(),
                XDP_PASS,
                FLOW4,
                PassedUnusual,
            ));
        }

        // Consistent lengths, but the payload is not what userspace relays (classify_relay).
        for (name, payload) in [
            ("UDP payload empty", vec![]),
            ("UDP payload 7 bytes", rtp(7)),
            ("RTP header cut to 11 bytes", rtp(11)),
            ("version 0 (a STUN binding request)", {
                let mut p = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
                p.extend_from_slice(&[7; 12]);
                p
            }),
            ("RTP with 15 CSRCs in 40 bytes", {
                let mut p = rtp(40);
                p[0] = 0x8f;
                p
            }),
            ("RTCP whose length field runs past the datagram", {
                let mut p = rtcp_rr();
                p[3] = 9;
                p
            }),
        ] {
            cases.push(case(
                name,
                udp4_frame(CALLER4, RELAY_A4, &payload),
                XDP_PASS,
                FLOW4,
                PassedUnusual,
            ));
        }

        // Fragments. A first fragment has the UDP header, so it finds the flow and is passed
        // for the kernel to reassemble; later ones carry no UDP header at all, even when the
        // bytes where it would be name the flow's port (this one carries a copy of the
        // datagram's own first bytes there).
        let mut first = good.clone();
        first[IP + 6] |= 0x20; // MF
        first[IP + 6] &= !0x40; // no DF on a fragment
        fix_ipv4_checksum(&mut first, IP);
        cases.push(case(
            "fragment: first (MF, offset 0)",
            first,
            XDP_PASS,
            FLOW4,
            PassedUnusual,
        ));
        for (name, flags_offset) in [
            ("fragment: middle (MF, offset 185)", 0x2000u16 | 185),
            ("fragment: last (offset 185)", 185),
        ] {
            let mut f = good.clone();
            f[IP + 6..IP + 8].copy_from_slice(&flags_offset.to_be_bytes());
            fix_ipv4_checksum(&mut f, IP);
            cases.push(case(name, f, XDP_PASS, FLOW4, Nothing));
        }

        // VLAN tags: the kernel's business, whatever they carry.
        cases.push(case(
            "802.1Q tag",
            vlan_tagged(&good, 0x8100),
            XDP_PASS,
            FLOW4,
            Nothing,
        ));
        cases.push(case(
            "802.1ad (QinQ) tag",
            vlan_tagged(&good, 0x88a8),
            XDP_PASS,
            FLOW4,
            Nothing,
        ));

        // IP options: NOP NOP NOP EOL, then the same UDP datagram.
        let (src, dst) = (sa(CALLER4), sa(RELAY_A4));
        let with_options = ethernet(
            ETH_IP,
            &ipv4(
                src,
                dst,
                17,
                &[1, 1, 1, 0],
                &udp_segment(src, dst, &rtp(172)),
            ),
        );
        cases.push(case(
            "IPv4 options (IHL 6)",
            with_options,
            XDP_PASS,
            FLOW4,
            PassedUnusual,
        ));
        let mut ihl4 = good.clone();
        ihl4[IP] = 0x44;
        fix_ipv4_checksum(&mut ihl4, IP);
        cases.push(case(
            "IHL 4 (shorter than an IPv4 header)",
            ihl4,
            XDP_PASS,
            FLOW4,
            Nothing,
        ));
        let mut v6_nibble = good.clone();
        v6_nibble[IP] = 0x65;
        cases.push(case(
            "version 6 in an IPv4 ethertype",
            v6_nibble,
            XDP_PASS,
            FLOW4,
            Nothing,
        ));

        // Header fields that disagree.
        let mut bad_csum = good.clone();
        bad_csum[IP + 10] ^= 0x01;
        cases.push(case(
            "IPv4 header checksum wrong",
            bad_csum,
            XDP_PASS,
            FLOW4,
            PassedUnusual,
        ));
        let mut short_tot = good.clone();
        short_tot[IP + 2..IP + 4].copy_from_slice(&((len - IP - 4) as u16).to_be_bytes());
        fix_ipv4_checksum(&mut short_tot, IP);
        cases.push(case(
            "IPv4 total length < IP + UDP length",
            short_tot,
            XDP_PASS,
            FLOW4,
            PassedUnusual,
        ));
        let mut long_tot = good.clone();
        long_tot[IP + 2..IP + 4].copy_from_slice(&((len - IP + 100) as u16).to_be_bytes());
        fix_ipv4_checksum(&mut long_tot, IP);
        cases.push(case(
            "IPv4 total length past the frame",
            long_tot,
            XDP_PASS,
            FLOW4,
            PassedUnusual,
        ));
        for (name, udp_len) in [("UDP length 7", 7u16), ("UDP length 0", 0)] {
            let mut f = good.clone();
            f[UDP4 + 4..UDP4 + 6].copy_from_slice(&udp_len.to_be_bytes());
            cases.push(case(name, f, XDP_PASS, FLOW4, PassedUnusual));
        }
        let mut tcp = good.clone();
        tcp[IP + 9] = 6;
        fix_ipv4_checksum(&mut tcp, IP);
        cases.push(case(
            "TCP to the flow's port",
            tcp,
            XDP_PASS,
            FLOW4,
            Nothing,
        ));

        // Oversized: a 3000-byte datagram for a 1500-byte path (the kernel fragments it).
        cases.push(case(
            "oversized: 3000-byte datagram, MTU 1500",
            udp4_frame(CALLER4, RELAY_A4, &rtp(3000 - 28)),
            XDP_PASS,
            FLOW4,
            PassedMtu,
        ));
        let mut ttl1 = good.clone();
        ttl1[IP + 8] = 1;
        fix_ipv4_checksum(&mut ttl1, IP);
        cases.push(case("TTL 1", ttl1, XDP_PASS, FLOW4, PassedTtl));

        // A WORKER flow: the same checks come before the hand-over to a worker. (No worker
        // socket here, so even a good frame passes up, as passed_no_worker; the worker tests
        // in afxdp_netns cover the redirect.)
        let worker_good = udp4_frame(CALLER4, RELAY_WORKER4, &rtp(172));
        cases.push(case(
            "WORKER flow: good frame, no worker socket",
            worker_good.clone(),
            XDP_PASS,
            FLOW_WORKER,
            PassedNoWorker,
        ));
        cases.push(case(
            "WORKER flow: truncated inside the RTP header",
            worker_good[..UDP4 + 8 + 6].to_vec(),
            XDP_PASS,
            FLOW_WORKER,
            PassedUnusual,
        ));
        cases.push(case(
            "WORKER flow: UDP payload 7 bytes",
            udp4_frame(CALLER4, RELAY_WORKER4, &rtp(7)),
            XDP_PASS,
            FLOW_WORKER,
            PassedUnusual,
        ));
        let mut worker_bad_csum = worker_good.clone();
        worker_bad_csum[IP + 10] ^= 0x01;
        cases.push(case(
            "WORKER flow: IPv4 header checksum wrong",
            worker_bad_csum,
            XDP_PASS,
            FLOW_WORKER,
            PassedUnusual,
        ));
        let mut worker_frag = worker_good.clone();
        worker_frag[IP + 6] = 0x20;
        fix_ipv4_checksum(&mut worker_frag, IP);
        cases.push(case(
            "WORKER flow: first fragment",
            worker_frag,
            XDP_PASS,
            FLOW_WORKER,
            PassedUnusual,
        ));
        cases.push(case(
            "WORKER flow: wrong source (strict)",
            udp4_frame("10.201.1.66:4000", RELAY_WORKER4, &rtp(172)),
            XDP_DROP,
            FLOW_WORKER,
            DroppedWrongSource,
        ));
        cases.push(case(
            "wrong source (strict)",
            udp4_frame("10.201.1.66:4000", RELAY_A4, &rtp(172)),
            XDP_DROP,
            FLOW4,
            DroppedWrongSource,
        ));

        run_cases(&xdp, cases);
        xdp.detach().unwrap();
    });
}

#[test]
fn prog_run_never_forwards_a_malformed_ipv6_frame() {
    if skip() {
        return;
    }
    let relay = relay_ns();
    in_ns(&relay.ns, || {
        let xdp = install_flows();
        let good = good6();
        let len = good.len();
        let mut cases = Vec::new();
        use Counted::*;

        for (name, cut) in [
            ("truncated: Ethernet header only", IP),
            ("truncated: inside the IPv6 header", IP + 20),
            ("truncated: IPv6 header, no UDP header", UDP6),
            ("truncated: inside the UDP header", UDP6 + 4),
        ] {
            cases.push(case(name, good[..cut].to_vec(), XDP_PASS, FLOW6, Nothing));
        }
        for (name, cut) in [
            ("truncated: UDP header, no RTP", UDP6 + 8),
            ("truncated: inside the RTP header", UDP6 + 8 + 6),
            ("truncated: one byte short", len - 1),
        ] {
            cases.push(case(
                name,
                good[..cut].to_vec(),
                XDP_PASS,
                FLOW6,
                PassedUnusual,
            ));
        }
        cases.push(case(
            "UDP payload 7 bytes",
            udp6_frame(CALLER6, RELAY_A6, &rtp(7)),
            XDP_PASS,
            FLOW6,
            PassedUnusual,
        ));

        // Extension headers, each followed by the very UDP datagram of the good frame.
        let (src, dst) = (sa(CALLER6), sa(RELAY_A6));
        let udp = udp_segment(src, dst, &rtp(172));
        // Hop-by-hop: next header UDP, length 0 (8 bytes), PadN of 4 and Pad1 x2.
        let hbh = [17, 0, 1, 2, 0, 0, 0, 0];
        cases.push(case(
            "IPv6 hop-by-hop options header",
            ethernet(ETH_IPV6, &ipv6(src, dst, 0, &hbh, &udp)),
            XDP_PASS,
            FLOW6,
            Nothing,
        ));
        // Fragment header: next header UDP, offset 0, M set (a first fragment).
        let frag = [17, 0, 0x00, 0x01, 0xca, 0xfe, 0xba, 0xbe];
        cases.push(case(
            "IPv6 fragment header (first fragment)",
            ethernet(ETH_IPV6, &ipv6(src, dst, 44, &frag, &udp)),
            XDP_PASS,
            FLOW6,
            Nothing,
        ));
        let routing = [17, 0, 0, 0, 0, 0, 0, 0];
        cases.push(case(
            "IPv6 routing header (segments left 0)",
            ethernet(ETH_IPV6, &ipv6(src, dst, 43, &routing, &udp)),
            XDP_PASS,
            FLOW6,
            Nothing,
        ));

        // RFC 8200 8.1: a zero UDP checksum is invalid in IPv6.
        let mut zero = good.clone();
        zero[UDP6 + 6..UDP6 + 8].copy_from_slice(&[0, 0]);
        cases.push(case(
            "IPv6 UDP checksum 0",
            zero,
            XDP_PASS,
            FLOW6,
            PassedUnusual,
        ));

        cases.push(case(
            "802.1Q tag",
            vlan_tagged(&good, 0x8100),
            XDP_PASS,
            FLOW6,
            Nothing,
        ));
        let mut v4_nibble = good.clone();
        v4_nibble[IP] = 0x45;
        cases.push(case(
            "version 4 in an IPv6 ethertype",
            v4_nibble,
            XDP_PASS,
            FLOW6,
            Nothing,
        ));
        let mut short_payload = good.clone();
        short_payload[IP + 4..IP + 6].copy_from_slice(&((len - UDP6 - 4) as u16).to_be_bytes());
        cases.push(case(
            "IPv6 payload length < UDP length",
            short_payload,
            XDP_PASS,
            FLOW6,
            PassedUnusual,
        ));
        let mut long_payload = good.clone();
        long_payload[IP + 4..IP + 6].copy_from_slice(&((len - UDP6 + 100) as u16).to_be_bytes());
        long_payload[UDP6 + 4..UDP6 + 6]
            .copy_from_slice(&((len - UDP6 + 100) as u16).to_be_bytes());
        cases.push(case(
            "IPv6 payload length past the frame",
            long_payload,
            XDP_PASS,
            FLOW6,
            PassedUnusual,
        ));
        cases.push(case(
            "oversized: 3000-byte datagram, MTU 1500",
            udp6_frame(CALLER6, RELAY_A6, &rtp(3000 - 48)),
            XDP_PASS,
            FLOW6,
            PassedMtu,
        ));
        let mut hop1 = good.clone();
        hop1[IP + 7] = 1;
        cases.push(case("hop limit 1", hop1, XDP_PASS, FLOW6, PassedTtl));
        cases.push(case(
            "wrong source (strict)",
            udp6_frame("[fd00:201:1::66]:4000", RELAY_A6, &rtp(172)),
            XDP_DROP,
            FLOW6,
            DroppedWrongSource,
        ));

        run_cases(&xdp, cases);
        xdp.detach().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// the port guard

/// Which no-flow counter a guard case must move by one, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guarded {
    /// Outside the guard (address, range, not a whole UDP datagram): no counter moves.
    Untouched,
    DroppedUnknownPort,
    PassedBoundPort,
}

/// Runs frames that hit no flow: verdict, exactly the expected `XdpStats` counter, no flow's
/// counters.
fn run_guard_cases(xdp: &XdpPath, cases: Vec<(&'static str, Vec<u8>, u32, Guarded)>) {
    let r1 = ifindex("r1");
    let flows = [FLOW4, FLOW6, FLOW_HAIRPIN, FLOW_WORKER];
    let mut failures = Vec::new();
    for (name, frame, verdict, guarded) in cases {
        let flows_before: Vec<FlowCounters> =
            flows.iter().map(|&f| xdp.counters(f).unwrap()).collect();
        let before = xdp.stats().unwrap();
        let run = xdp
            .test_run(&frame, r1, 1)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let after = xdp.stats().unwrap();
        let flows_after: Vec<FlowCounters> =
            flows.iter().map(|&f| xdp.counters(f).unwrap()).collect();
        eprintln!(
            "  {name:<58} {:>4} bytes -> {}",
            frame.len(),
            verdict_name(run.action)
        );
        if run.action != verdict {
            failures.push(format!(
                "{name}: {} (expected {})",
                verdict_name(run.action),
                verdict_name(verdict)
            ));
        }
        let mut expect = before;
        match guarded {
            Guarded::Untouched => {}
            Guarded::DroppedUnknownPort => expect.dropped_unknown_port += 1,
            Guarded::PassedBoundPort => expect.passed_bound_port += 1,
        }
        if after != expect {
            failures.push(format!(
                "{name}: expected {guarded:?}, no-flow counters went {before:?} -> {after:?}"
            ));
        }
        if flows_before != flows_after {
            failures.push(format!("{name}: a flow's counters moved"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn prog_run_drops_scans_of_free_relay_ports_and_passes_bound_ones() {
    if skip() {
        return;
    }
    let relay = relay_ns();
    in_ns(&relay.ns, || {
        let mut xdp = install_flows();
        let relay_ips: [IpAddr; 2] = [
            "10.201.1.1".parse().unwrap(),
            "fd00:201:1::1".parse().unwrap(),
        ];
        xdp.guard_ports(&relay_ips, 29990, 30100).unwrap();
        // Ports a call holds, not yet in the kernel path (its sockets are bound), and another
        // program's wildcard socket in the range.
        let held4 = std::net::UdpSocket::bind("10.201.1.1:30020").unwrap();
        let held6 = std::net::UdpSocket::bind("[fd00:201:1::1]:30020").unwrap();
        let other = std::net::UdpSocket::bind("0.0.0.0:30040").unwrap();
        let to4 = |dst: &str| udp4_frame("192.0.2.7:5555", dst, &rtp(172));
        let to6 = |dst: &str| udp6_frame("[2001:db8::7]:5555", dst, &rtp(172));
        use Guarded::*;

        let mut first_fragment = to4("10.201.1.1:30030");
        first_fragment[IP + 6] = 0x20; // MF, offset 0
        fix_ipv4_checksum(&mut first_fragment, IP);
        let mut later_fragment = to4("10.201.1.1:30030");
        later_fragment[IP + 6..IP + 8].copy_from_slice(&185u16.to_be_bytes());
        fix_ipv4_checksum(&mut later_fragment, IP);
        let mut tcp = to4("10.201.1.1:30030");
        tcp[IP + 9] = 6;
        fix_ipv4_checksum(&mut tcp, IP);
        let (s6, d6) = (sa("[2001:db8::7]:5555"), sa("[fd00:201:1::1]:30030"));
        let hbh = [17, 0, 1, 2, 0, 0, 0, 0];
        let hbh_frame = ethernet(
            ETH_IPV6,
            &ipv6(s6, d6, 0, &hbh, &udp_segment(s6, d6, &rtp(172))),
        );
        let cases = vec![
            (
                "IPv4 scan of a free relay port",
                to4("10.201.1.1:30030"),
                XDP_DROP,
                DroppedUnknownPort,
            ),
            (
                "IPv4 scan, lowest port of the range",
                to4("10.201.1.1:29990"),
                XDP_DROP,
                DroppedUnknownPort,
            ),
            (
                "IPv4 scan, highest port of the range",
                to4("10.201.1.1:30100"),
                XDP_DROP,
                DroppedUnknownPort,
            ),
            (
                "IPv4 to a held port not in the kernel yet",
                to4("10.201.1.1:30020"),
                XDP_PASS,
                PassedBoundPort,
            ),
            (
                "IPv4 to another program's socket in the range",
                to4("10.201.1.1:30040"),
                XDP_PASS,
                PassedBoundPort,
            ),
            (
                "IPv4 below the range",
                to4("10.201.1.1:29989"),
                XDP_PASS,
                Untouched,
            ),
            (
                "IPv4 above the range",
                to4("10.201.1.1:30101"),
                XDP_PASS,
                Untouched,
            ),
            (
                "IPv4 to an address that is not guarded",
                to4("10.201.2.1:30030"),
                XDP_PASS,
                Untouched,
            ),
            (
                "IPv4 in transit (not the relay's address)",
                to4("10.99.0.1:30030"),
                XDP_PASS,
                Untouched,
            ),
            (
                "IPv4 first fragment to a free port",
                first_fragment,
                XDP_PASS,
                Untouched,
            ),
            (
                "IPv4 later fragment to a free port",
                later_fragment,
                XDP_PASS,
                Untouched,
            ),
            ("TCP to a free port", tcp, XDP_PASS, Untouched),
            (
                "802.1Q-tagged scan",
                vlan_tagged(&to4("10.201.1.1:30030"), 0x8100),
                XDP_PASS,
                Untouched,
            ),
            (
                "IPv4 scan truncated inside the payload",
                to4("10.201.1.1:30030")[..60].to_vec(),
                XDP_DROP,
                DroppedUnknownPort,
            ),
            (
                "IPv6 scan of a free relay port",
                to6("[fd00:201:1::1]:30030"),
                XDP_DROP,
                DroppedUnknownPort,
            ),
            (
                "IPv6 to a held port not in the kernel yet",
                to6("[fd00:201:1::1]:30020"),
                XDP_PASS,
                PassedBoundPort,
            ),
            (
                "IPv6 to an address that is not guarded",
                to6("[fd00:201:2::1]:30030"),
                XDP_PASS,
                Untouched,
            ),
            (
                "IPv6 scan behind a hop-by-hop header",
                hbh_frame,
                XDP_PASS,
                Untouched,
            ),
        ];
        run_guard_cases(&xdp, cases);

        // The flows come first: their traffic never meets the guard.
        run_cases(
            &xdp,
            vec![
                case(
                    "IPv4 RTP of a flow in the range",
                    good4(),
                    XDP_REDIRECT,
                    FLOW4,
                    Counted::Forwarded,
                ),
                case(
                    "IPv4 stranger to a flow in the range",
                    udp4_frame("192.0.2.7:5555", RELAY_A4, &rtp(172)),
                    XDP_DROP,
                    FLOW4,
                    Counted::DroppedWrongSource,
                ),
            ],
        );

        // A call that ends closes its sockets: its ports are scans' ports again at once, with
        // no map entry to remove (the sockets are the guard's truth).
        // (The check the wait below relies on sees both held sockets.)
        assert!(common::udp_socket_bound(sa("10.201.1.1:30020")));
        assert!(common::udp_socket_bound(sa("[fd00:201:1::1]:30020")));
        drop(held4);
        common::wait_udp_socket_closed(sa("10.201.1.1:30020"));
        run_guard_cases(
            &xdp,
            vec![(
                "IPv4 to a port whose call ended",
                to4("10.201.1.1:30020"),
                XDP_DROP,
                DroppedUnknownPort,
            )],
        );

        // Unguarded: everything that hits no flow passes again, nothing left in the map.
        assert_eq!(xdp.port_guards().unwrap().len(), 2);
        assert_eq!(xdp.unguard_ports().unwrap(), 2);
        assert!(xdp.port_guards().unwrap().is_empty());
        run_guard_cases(
            &xdp,
            vec![(
                "IPv4 to a free port, guard off",
                to4("10.201.1.1:30030"),
                XDP_PASS,
                Untouched,
            )],
        );
        drop((held6, other));
        xdp.detach().unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// cost

/// Mean time of the program alone per frame (the kernel's BPF_PROG_TEST_RUN timing), for the
/// verdicts that matter to a flood: a forwarded frame (one run per call, since the rewrite
/// changes the frame the next run would see), and repeated runs of frames the program leaves
/// as they are (a scan dropped by the guard, the same frame unguarded, a port outside the range,
/// a held port's frame passed after the socket lookup). A measurement, not a check: run with
/// `cargo test -p sluice-relay --test xdp_prog_run -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; prints nanoseconds per frame"]
fn prog_run_cost_per_verdict() {
    if skip() {
        return;
    }
    let relay = relay_ns();
    in_ns(&relay.ns, || {
        let mut xdp = install_flows();
        let r1 = ifindex("r1");
        let relay_ips: [IpAddr; 1] = ["10.201.1.1".parse().unwrap()];
        let _held = std::net::UdpSocket::bind("10.201.1.1:30020").unwrap();
        let to4 = |dst: &str| udp4_frame("192.0.2.7:5555", dst, &rtp(172));
        const REPEAT: u32 = 200_000;
        let mean = |xdp: &XdpPath, frame: &[u8], expect: u32| {
            let run = xdp.test_run(frame, r1, REPEAT).unwrap();
            assert_eq!(run.action, expect);
            run.duration.as_nanos()
        };
        let forward = {
            let mut total = 0u128;
            const N: u32 = 20_000;
            for _ in 0..N {
                let run = xdp.test_run(&good4(), r1, 1).unwrap();
                assert_eq!(run.action, XDP_REDIRECT);
                total += run.duration.as_nanos();
            }
            total / N as u128
        };
        let unguarded = mean(&xdp, &to4("10.201.1.1:30030"), XDP_PASS);
        // TTL 1: every check of the forwarding path (lengths, header checksum, payload shape),
        // then PASS, leaving the frame as it was: repeatable, unlike a forwarded frame.
        let mut ttl1 = good4();
        ttl1[IP + 8] = 1;
        fix_ipv4_checksum(&mut ttl1, IP);
        let checks = mean(&xdp, &ttl1, XDP_PASS);
        xdp.guard_ports(&relay_ips, 30000, 30100).unwrap();
        let scan = mean(&xdp, &to4("10.201.1.1:30030"), XDP_DROP);
        let held = mean(&xdp, &to4("10.201.1.1:30020"), XDP_PASS);
        let outside = mean(&xdp, &to4("10.201.1.1:31000"), XDP_PASS);
        let wrong_source = mean(
            &xdp,
            &udp4_frame("192.0.2.7:5555", RELAY_A4, &rtp(172)),
            XDP_DROP,
        );
        eprintln!(
            "kernel {}, ns per frame (BPF_PROG_TEST_RUN, program only):",
            common::kernel_release()
        );
        eprintln!("  forwarded (REDIRECT, 1 run per call)      {forward}");
        eprintln!("  wrong source to a flow (DROP)             {wrong_source}");
        eprintln!("  flow's checks, TTL 1 (PASS)               {checks}");
        eprintln!("  free port, guard off (PASS)               {unguarded}");
        eprintln!("  free port, guarded: scan (DROP)           {scan}");
        eprintln!("  held port, guarded (PASS after lookup)    {held}");
        eprintln!("  outside the range, guarded (PASS)         {outside}");
        let s = xdp.stats().unwrap();
        assert_eq!(s.dropped_unknown_port, REPEAT as u64);
        assert_eq!(s.passed_bound_port, REPEAT as u64);
        xdp.detach().unwrap();
    });
}
