use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::*;
use crate::handover::StreamHandover;
use crate::latch::{LatchConfig, LatchMode};
use crate::srtp::{SrtpConfig, SrtpProfile};
use crate::stats::EndpointCounters;

const KEY: [u8; 30] = [7; 30];
const PROFILE: SrtpProfile = SrtpProfile::AesCm128HmacSha1_80;

fn ctx() -> Box<SrtpContext> {
    Box::new(SrtpContext::new(PROFILE, &KEY, SrtpConfig::default()).unwrap())
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend((0..160).map(|i| i as u8 ^ seq as u8));
    p
}

fn sr() -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6, 0x12, 0x34, 0x56, 0x78];
    p.extend([0u8; 20]);
    p
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Runs one datagram through `core`, the way a driver does.
fn run(
    core: &mut StreamCore,
    pkt: &[u8],
    src: &str,
    rtcp_port: bool,
    egress: Option<&Egress<SocketAddr>>,
    tx: Option<&mut SrtpContext>,
) -> (Verdict<SocketAddr>, Vec<u8>) {
    let mut buf = pkt.to_vec();
    buf.resize(pkt.len() + crate::srtp::MAX_RTCP_OVERHEAD, 0);
    let v = core.receive(
        Datagram {
            buf: &mut buf,
            len: pkt.len(),
            src: Some(addr(src)),
            now_ns: 1_000_000,
            rtcp_port,
        },
        egress,
        tx,
    );
    if let Verdict::Forward { len, .. } = v {
        buf.truncate(len);
    }
    (v, buf)
}

fn egress(srtp: bool) -> Egress<SocketAddr> {
    Egress {
        rtp: Some(addr("10.0.0.9:5000")),
        rtcp: Some(addr("10.0.0.9:5001")),
        receives: true,
        srtp,
        loss_report: LossReport::Ignore,
    }
}

fn latching_core() -> StreamCore {
    let mut l = Latching::new(LatchConfig {
        mode: LatchMode::Heuristic,
        ..LatchConfig::default()
    });
    l.rtp.signalling(Some(addr("10.0.0.2:4000")), 0);
    l.rtcp.signalling(Some(addr("10.0.0.2:4001")), 0);
    StreamCore {
        latching: Some(l),
        observe: Some(Observe::new(8000, 4)),
        ..StreamCore::default()
    }
}

#[test]
fn plain_rtp_from_the_sdp_address_is_forwarded_and_counted() {
    let mut core = latching_core();
    let eg = egress(false);
    let (v, out) = run(&mut core, &rtp(1), "10.0.0.2:4000", false, Some(&eg), None);
    assert_eq!(
        v,
        Verdict::Forward {
            len: 172,
            rtcp: false,
            to: addr("10.0.0.9:5000")
        }
    );
    assert_eq!(out, rtp(1));
    assert_eq!(core.take_latched(false), Some(addr("10.0.0.2:4000")));
    assert_eq!(core.take_latched(false), None, "reported once");
    assert_eq!((core.tally.packets, core.tally.bytes), (1, 172));
    assert_eq!(
        core.observe.as_ref().unwrap().stats.ssrc(),
        Some(0x1234_5678)
    );
    // A stranger is not forwarded.
    let (v, _) = run(&mut core, &rtp(2), "10.6.6.6:4000", false, Some(&eg), None);
    assert!(matches!(
        v,
        Verdict::Drop(Dropped::WrongSource | Dropped::Unconfirmed)
    ));
    // RTP on the RTCP port is malformed, RTCP there goes to the partner's RTCP address.
    let (v, _) = run(&mut core, &rtp(3), "10.0.0.2:4001", true, Some(&eg), None);
    assert_eq!(v, Verdict::Drop(Dropped::Malformed));
    let (v, _) = run(&mut core, &sr(), "10.0.0.2:4001", true, Some(&eg), None);
    assert_eq!(
        v,
        Verdict::Forward {
            len: 28,
            rtcp: true,
            to: addr("10.0.0.9:5001")
        }
    );
    assert_eq!(core.observe.as_ref().unwrap().reports.len(), 1);
    assert_eq!(core.tally.dropped_malformed, 1);
    assert_eq!(core.tally.rtcp_packets, 1);
}

#[test]
fn srtp_is_unprotected_before_latching_and_reprotected_towards_the_partner() {
    let mut core = latching_core();
    core.srtp_rx = Some(ctx());
    let (mut sender, mut partner_tx, mut partner_rx) = (ctx(), ctx(), ctx());
    let eg = egress(true);
    let protect = |c: &mut SrtpContext, p: &[u8]| {
        let mut b = p.to_vec();
        b.resize(p.len() + 16, 0);
        let n = c.protect_rtp(&mut b, p.len()).unwrap();
        b.truncate(n);
        b
    };
    let wire = protect(&mut sender, &rtp(1));
    let mut forged = wire.clone();
    *forged.last_mut().unwrap() ^= 1;
    // A forged packet from the SDP address moves no latch.
    let (v, _) = run(
        &mut core,
        &forged,
        "10.0.0.2:4000",
        false,
        Some(&eg),
        Some(&mut partner_tx),
    );
    assert!(matches!(
        v,
        Verdict::Drop(Dropped::Unprotect(SrtpError::AuthFailed { .. }))
    ));
    assert_eq!(core.take_latched(false), None);
    let (v, mut out) = run(
        &mut core,
        &wire,
        "10.0.0.2:4000",
        false,
        Some(&eg),
        Some(&mut partner_tx),
    );
    assert!(matches!(v, Verdict::Forward { len: 182, .. }));
    let n = out.len();
    assert_eq!(partner_rx.unprotect_rtp(&mut out, n), Ok(172));
    assert_eq!(&out[..172], &rtp(1)[..]);
    let (v, _) = run(
        &mut core,
        &wire,
        "10.0.0.2:4000",
        false,
        Some(&eg),
        Some(&mut partner_tx),
    );
    assert!(matches!(
        v,
        Verdict::Drop(Dropped::Unprotect(SrtpError::Replayed { .. }))
    ));
    // Never plain where SRTP is due.
    let wire2 = protect(&mut sender, &rtp(2));
    let (v, _) = run(&mut core, &wire2, "10.0.0.2:4000", false, Some(&eg), None);
    assert_eq!(v, Verdict::Drop(Dropped::NoTransmitContext));
    let t = core.tally;
    assert_eq!(
        (t.srtp_auth_failures, t.srtp_replayed, t.send_errors),
        (1, 1, 1)
    );
}

#[test]
fn direction_and_missing_peers_drop_rtp_but_rtcp_flows_on_hold() {
    let mut core = StreamCore {
        sends: false,
        ..StreamCore::default()
    };
    let eg = egress(false);
    let (v, _) = run(&mut core, &rtp(1), "10.0.0.2:4000", false, Some(&eg), None);
    assert_eq!(v, Verdict::Drop(Dropped::Direction));
    let (v, _) = run(&mut core, &sr(), "10.0.0.2:4000", false, Some(&eg), None);
    assert!(matches!(v, Verdict::Forward { rtcp: true, .. }));
    let (v, _) = run(&mut core, &sr(), "10.0.0.2:4000", false, None, None);
    assert_eq!(v, Verdict::Drop(Dropped::NoPeer));
    let c = EndpointCounters::default();
    core.tally.flush_into(&c);
    assert_eq!(core.tally, Tally::default(), "flushing starts over");
    assert_eq!(
        (
            c.packets.load(Relaxed),
            c.dropped_direction.load(Relaxed),
            c.dropped_no_peer.load(Relaxed)
        ),
        (3, 1, 1)
    );
}

/// Sockets and system calls are kept out by the crate's dependencies (see
/// [`the_crate_cannot_reach_sockets`]); std's clock and locks are not, so the core's files are
/// read for them: time comes in as an argument and a stream has one owner at a time.
#[test]
fn no_clock_or_lock_in_the_core() {
    for (file, text) in [
        ("mod.rs", include_str!("mod.rs")),
        ("tally.rs", include_str!("tally.rs")),
    ] {
        for banned in [
            concat!("lib", "c::"),
            concat!("mi", "o::"),
            concat!("sock", "et2::"),
            concat!("Udp", "Socket"),
            concat!("now", "_ns()"),
            concat!("Inst", "ant"),
            concat!("Mut", "ex"),
        ] {
            assert!(!text.contains(banned), "{file} uses {banned}");
        }
    }
}

/// The compiler refuses `libc::`, `mio::` and `socket2::` in this crate as long as its manifest
/// does not name them: this keeps it that way.
#[test]
fn the_crate_cannot_reach_sockets() {
    let manifest = include_str!("../../Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .expect("a [dependencies] table")
        .split("\n[")
        .next()
        .unwrap();
    for line in deps.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let name = line.split(['=', '.', ' ']).next().unwrap_or("").trim();
        assert!(
            !["libc", "mio", "socket2", "nix", "tokio"].contains(&name),
            "sluice-media depends on {name}"
        );
    }
}

/// A stream moved back and forth between two paths (think engine and worker) under load: each
/// move hands the state over as a value while the old owner still drains its tail, both count
/// into the same leg at once, and no count is lost.
#[test]
fn a_stream_moved_back_and_forth_under_load_loses_no_count() {
    const CHUNKS: usize = 200;
    const CHUNK: usize = 64;
    const TAIL: usize = 16;
    // The stream, chunk by chunk: every packet, plus a forged copy and a replay of one.
    let mut sender = ctx();
    let start: u16 = 65_000; // wraps during the test: the rollover counter must follow
    let mut chunks = Vec::new();
    for c in 0..CHUNKS {
        let mut pkts = Vec::new();
        for i in 0..CHUNK {
            let seq = start.wrapping_add((c * CHUNK + i) as u16);
            let p = rtp(seq);
            let mut b = p.clone();
            b.resize(p.len() + 16, 0);
            let n = sender.protect_rtp(&mut b, p.len()).unwrap();
            b.truncate(n);
            pkts.push(b);
        }
        // A forged copy of a packet not yet seen (one of a seen packet is a replay first:
        // RFC 3711 3.3 checks the index before the tag).
        let mut forged = pkts[40].clone();
        forged[20] ^= 1;
        let replay = pkts[3].clone();
        // In the head: the forged copy; in the tail (the old owner's), a replay.
        pkts.insert(10, forged);
        pkts.push(replay);
        chunks.push(pkts);
    }
    let chunks = Arc::new(chunks);
    let counters = Arc::new(EndpointCounters::default());
    // Ping-pong: whoever has chunk i hands over to the other before draining its tail.
    let (to_a, inbox_a) = crossbeam_channel::unbounded::<(usize, StreamHandover)>();
    let (to_b, inbox_b) = crossbeam_channel::unbounded::<(usize, StreamHandover)>();
    let path = |inbox: crossbeam_channel::Receiver<(usize, StreamHandover)>,
                outbox: crossbeam_channel::Sender<(usize, StreamHandover)>| {
        let (chunks, counters) = (chunks.clone(), counters.clone());
        std::thread::spawn(move || {
            let mut core = StreamCore {
                srtp_rx: Some(ctx()),
                ..StreamCore::default()
            };
            let eg = Egress {
                rtp: Some(()),
                rtcp: Some(()),
                receives: true,
                srtp: false,
                loss_report: LossReport::Ignore,
            };
            let mut buf = [0u8; 2048];
            let mut process = |core: &mut StreamCore, pkts: &[Vec<u8>]| {
                for p in pkts {
                    buf[..p.len()].copy_from_slice(p);
                    let d = Datagram {
                        buf: &mut buf,
                        len: p.len(),
                        src: None,
                        now_ns: 0,
                        rtcp_port: false,
                    };
                    core.receive(d, Some(&eg), None);
                }
                core.tally.flush_into(&counters);
            };
            while let Ok((i, h)) = inbox.recv() {
                if i == usize::MAX {
                    return;
                }
                h.resume_srtp(core.srtp_rx.as_deref_mut().unwrap(), false);
                let pkts = &chunks[i];
                let split = pkts.len() - TAIL;
                process(&mut core, &pkts[..split]);
                let handover = StreamHandover {
                    srtp_rx: core.srtp_rx.as_ref().unwrap().handover(),
                    ..StreamHandover::default()
                };
                let next = if i + 1 == CHUNKS { usize::MAX } else { i + 1 };
                let _ = outbox.send((next, handover));
                // The old owner drains what it still holds while the new one starts.
                process(&mut core, &pkts[split..]);
                if next == usize::MAX {
                    return;
                }
            }
        })
    };
    let a = path(inbox_a, to_b);
    let b = path(inbox_b, to_a.clone());
    to_a.send((0, StreamHandover::default())).unwrap();
    a.join().unwrap();
    b.join().unwrap();
    let load = |c: &crate::stats::Counter| c.load(Relaxed);
    assert_eq!(
        (
            load(&counters.packets),
            load(&counters.srtp_auth_failures),
            load(&counters.srtp_replayed),
            load(&counters.dropped_malformed),
        ),
        ((CHUNKS * CHUNK) as u64, CHUNKS as u64, CHUNKS as u64, 0),
        "accepted, forged, replayed, other"
    );
}
