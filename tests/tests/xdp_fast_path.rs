//! The XDP fast path, end to end: the real daemon in the relay namespace of a caller - relay -
//! callee topology (tests/src/netns.rs) with its XDP program on both relay interfaces, calls set
//! up over the control API, media sent from sockets in the caller and callee namespaces.
//!
//! A stream moves into the kernel once both sides have latched and nothing changed for a second
//! without signalling; from then on its packets must never reach the userspace relay, and
//! arrive rewritten, with valid checksums, having crossed exactly one router hop (TTL - 1, which
//! also tells kernel-forwarded packets from ones the userspace relay sent with a fresh TTL).
//!
//! What is proved, one test each: forwarding of RTP and RTCP both ways over IPv4 and IPv6
//! (addresses, ports, payload, checksums on the captured frames, exact kernel counters, nothing
//! in userspace); strict source in the kernel; hold and delete; a re-INVITE to a moved endpoint;
//! kernel-only media keeping a call alive and the timeout removing its flows; no flow-map entry
//! left after 1,000 kernelized calls (read from the daemon's real BPF map); `--xdp off`/`auto`
//! falling back to userspace and a missing interface failing the start.
//!
//! Needs root (namespaces, BPF); otherwise each test prints "skipped: needs root" and passes
//! (`xdp_off_and_auto_fall_back` then runs on loopback). The whole file takes about 30 s.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sluice_tests::netns::{self, Capture, DaemonMaps, Frame, Topology};
use sluice_tests::*;

const A_SSRC: u32 = 0x0a0a_0001;
const B_SSRC: u32 = 0x0b0b_0002;
/// How long a stream may take to move into the kernel once media flows (settle time 1 s, checked
/// by a 500 ms sweep: 1.5-2.5 s expected).
const KERNELIZE_LIMIT: Duration = Duration::from_secs(5);

/// The daemon in the relay namespace of its own topology. Field order is drop order: the daemon
/// stops before the namespaces go.
struct Setup {
    daemon: Daemon,
    topo: Topology,
}

async fn xdp_relay() -> Setup {
    let topo = Topology::new();
    let args = Topology::sluice_args("native");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_in(Some(&topo.relay), &args).await;
    Setup { daemon, topo }
}

/// What one side sends: RTP with consecutive sequence numbers, and RTCP sender reports.
struct Sender {
    ssrc: u32,
    seq: u16,
    ts: u32,
    reports: u32,
}

impl Sender {
    fn new(ssrc: u32) -> Sender {
        Sender {
            ssrc,
            seq: 1,
            ts: 0,
            reports: 0,
        }
    }
    fn rtp(&mut self) -> Vec<u8> {
        let p = pcmu(self.seq, self.ts, self.ssrc);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
        p
    }
    fn rtcp(&mut self) -> Vec<u8> {
        self.reports += 1;
        rtcp_sr(self.ssrc, self.ts, self.reports, self.reports * 172)
    }
    fn rtp_n(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.rtp()).collect()
    }
    fn rtcp_n(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.rtcp()).collect()
    }
}

fn bytes(v: &[Vec<u8>]) -> u64 {
    v.iter().map(|p| p.len() as u64).sum()
}

/// Sends `packets` from `tx` to `to` one at a time; each must arrive at `rx`, byte for byte,
/// from `from`.
fn pass_through(
    tx: &UdpSocket,
    to: SocketAddr,
    rx: &UdpSocket,
    from: SocketAddr,
    packets: &[Vec<u8>],
    what: &str,
) {
    let mut buf = [0u8; 4096];
    for (i, p) in packets.iter().enumerate() {
        tx.send_to(p, to).expect("send");
        let (n, src) = sluice_tests::recv_from_retrying(rx, &mut buf).unwrap_or_else(|e| {
            panic!(
                "{what}: packet {i} of {} never arrived at {} ({e})",
                packets.len(),
                rx.local_addr().unwrap()
            )
        });
        assert_eq!(src, from, "{what}: packet {i} came from elsewhere");
        assert_eq!(&buf[..n], &p[..], "{what}: packet {i} changed on its way");
    }
}

/// The captured frames to `dst` are exactly `sent`, from `src`, with valid checksums and one
/// hop's TTL decrement (forwarded by the XDP program, not re-sent by the userspace relay).
fn check_wire(frames: &[Frame], dst: SocketAddr, src: SocketAddr, sent: &[Vec<u8>], what: &str) {
    let got: Vec<&Frame> = frames.iter().filter(|f| f.dst == dst).collect();
    assert_eq!(
        got.len(),
        sent.len(),
        "{what}: {} frames to {dst} on the wire, {} sent",
        got.len(),
        sent.len()
    );
    for (i, (f, p)) in got.iter().zip(sent).enumerate() {
        assert_eq!(f.src, src, "{what}: frame {i}: {f:?}");
        assert!(
            f.checksums_ok,
            "{what}: frame {i} has a bad checksum: {f:?}"
        );
        assert_ne!(
            f.udp_checksum, 0,
            "{what}: frame {i} lost its UDP checksum: {f:?}"
        );
        assert_eq!(
            f.ttl,
            netns::SENT_TTL - 1,
            "{what}: frame {i}: TTL/hop limit must be decremented once (kernel forwarding)"
        );
        assert_eq!(&f.payload, p, "{what}: frame {i} payload changed");
    }
}

/// Sends RTP and RTCP both ways until Query shows both legs forwarded in the kernel (at most
/// [`KERNELIZE_LIMIT`]), then lets in-flight packets land and drains both peers. The first
/// round must get through the userspace path.
async fn until_kernelized(
    c: &mut Client,
    call: &Call,
    a: &Peer,
    b: &Peer,
    sa: &mut Sender,
    sb: &mut Sender,
) -> Duration {
    let t0 = Instant::now();
    let mut first = true;
    loop {
        a.send_rtp(call.a_sends_rtp(), &sa.rtp());
        a.send_rtcp(call.a_sends_rtcp(), &sa.rtcp());
        b.send_rtp(call.b_sends_rtp(), &sb.rtp());
        b.send_rtcp(call.b_sends_rtcp(), &sb.rtcp());
        if first {
            first = false;
            for (peer, rtp_from, rtcp_from, who) in [
                (b, call.b_sends_rtp(), call.b_sends_rtcp(), "A -> B"),
                (a, call.a_sends_rtp(), call.a_sends_rtcp(), "B -> A"),
            ] {
                let (_, from) = peer
                    .recv_rtp()
                    .unwrap_or_else(|| panic!("{who}: first RTP packet (userspace) lost"));
                assert_eq!(from, rtp_from, "{who} RTP");
                let (_, from) = peer
                    .recv_rtcp()
                    .unwrap_or_else(|| panic!("{who}: first RTCP packet (userspace) lost"));
                assert_eq!(from, rtcp_from, "{who} RTCP");
            }
        }
        let info = query(c, &call.id).await.expect("Query");
        if stream(&info, 0).kernel_forwarded && stream(&info, 1).kernel_forwarded {
            break;
        }
        assert!(
            t0.elapsed() < KERNELIZE_LIMIT,
            "call {} not forwarded in the kernel within {KERNELIZE_LIMIT:?} of media both \
             ways; last state: {info:#?}",
            call.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    netns::drain_peer(a);
    netns::drain_peer(b);
    took
}

type Client = pb::control_client::ControlClient<tonic::transport::Channel>;

async fn delete(c: &mut Client, call_id: &str) {
    c.delete(pb::DeleteRequest {
        call_id: call_id.into(),
        from_tag: String::new(),
        to_tag: String::new(),
    })
    .await
    .unwrap_or_else(|s| panic!("Delete {call_id}: {s:?}"));
}

fn maps_of(d: &Daemon) -> DaemonMaps {
    DaemonMaps::of(d.pid()).expect("the daemon holds no sluice_flows/sluice_counters map")
}

// ---------------------------------------------------------------------------------------------
// 1. Forwarding

async fn forwards_both_ways(v6: bool) {
    if netns::skip_without_xdp() {
        return;
    }
    let s = xdp_relay().await;
    let mut c = s.daemon.client().await;
    let (a, b) = (s.topo.caller_peer(v6), s.topo.callee_peer(v6));
    let call = establish(&mut c, "xdp-flow", &a, &b).await;
    let relay = Topology::relay_ip(v6);
    assert_eq!(call.to_a.conn, relay);
    assert_eq!(call.to_b.conn, relay);
    assert!(!call.to_a.rtcp_mux && !call.to_b.rtcp_mux);
    let st = statistics(&mut c).await;
    assert_eq!(st.forwarding_path, "userspace+xdp-native on r1,r2");
    assert_eq!(st.kernel_flows, 0, "nothing is kernelized before media");

    let (mut sa, mut sb) = (Sender::new(A_SSRC), Sender::new(B_SSRC));
    let took = until_kernelized(&mut c, &call, &a, &b, &mut sa, &mut sb).await;
    println!("kernelized {took:?} after media started");
    let st0 = statistics(&mut c).await;
    assert_eq!(
        st0.kernel_flows, 4,
        "RTP and RTCP of both legs in the kernel"
    );
    let q0 = query(&mut c, &call.id).await.unwrap();

    // The real flow map: strict source and the rewrite of each relay socket.
    let mut flows = maps_of(&s.daemon).flows();
    flows.sort_by_key(|(k, _)| *k);
    let mut want = vec![
        (
            call.a_sends_rtp(),
            a.rtp_addr(),
            call.b_sends_rtp(),
            b.rtp_addr(),
        ),
        (
            call.a_sends_rtcp(),
            a.rtcp_addr(),
            call.b_sends_rtcp(),
            b.rtcp_addr(),
        ),
        (
            call.b_sends_rtp(),
            b.rtp_addr(),
            call.a_sends_rtp(),
            a.rtp_addr(),
        ),
        (
            call.b_sends_rtcp(),
            b.rtcp_addr(),
            call.a_sends_rtcp(),
            a.rtcp_addr(),
        ),
    ];
    want.sort_by_key(|w| w.0);
    assert_eq!(flows.len(), 4, "{flows:?}");
    for ((key, value), (local, source, new_src, new_dst)) in flows.iter().zip(&want) {
        assert_eq!(key, local, "{flows:?}");
        assert_eq!(value.expected_source(), Some(*source), "flow {key}");
        assert_eq!(value.rewrite(), Some((*new_src, *new_dst)), "flow {key}");
    }

    let cap_a = Capture::open(&s.topo.caller, "c0");
    let cap_b = Capture::open(&s.topo.callee, "e0");
    const N: usize = 50;
    const M: usize = 5;
    let (rtp_a, rtcp_a) = (sa.rtp_n(N), sa.rtcp_n(M));
    let (rtp_b, rtcp_b) = (sb.rtp_n(N), sb.rtcp_n(M));
    pass_through(
        &a.rtp,
        call.a_sends_rtp(),
        &b.rtp,
        call.b_sends_rtp(),
        &rtp_a,
        "A -> B RTP",
    );
    pass_through(
        &a.rtcp,
        call.a_sends_rtcp(),
        &b.rtcp,
        call.b_sends_rtcp(),
        &rtcp_a,
        "A -> B RTCP",
    );
    pass_through(
        &b.rtp,
        call.b_sends_rtp(),
        &a.rtp,
        call.a_sends_rtp(),
        &rtp_b,
        "B -> A RTP",
    );
    pass_through(
        &b.rtcp,
        call.b_sends_rtcp(),
        &a.rtcp,
        call.a_sends_rtcp(),
        &rtcp_b,
        "B -> A RTCP",
    );
    a.assert_silent("nothing but what B sent");
    b.assert_silent("nothing but what A sent");

    // On the wire, as the receiving kernel got them.
    let to_b = cap_b.frames_to(&[b.rtp_addr(), b.rtcp_addr()]);
    check_wire(
        &to_b,
        b.rtp_addr(),
        call.b_sends_rtp(),
        &rtp_a,
        "A -> B RTP",
    );
    check_wire(
        &to_b,
        b.rtcp_addr(),
        call.b_sends_rtcp(),
        &rtcp_a,
        "A -> B RTCP",
    );
    let to_a = cap_a.frames_to(&[a.rtp_addr(), a.rtcp_addr()]);
    check_wire(
        &to_a,
        a.rtp_addr(),
        call.a_sends_rtp(),
        &rtp_b,
        "B -> A RTP",
    );
    check_wire(
        &to_a,
        a.rtcp_addr(),
        call.a_sends_rtcp(),
        &rtcp_b,
        "B -> A RTCP",
    );

    // Counters: the userspace path saw none of it, the kernel exactly all of it.
    let q1 = query(&mut c, &call.id).await.unwrap();
    for (leg, sent) in [(0, [&rtp_a, &rtcp_a]), (1, [&rtp_b, &rtcp_b])] {
        let (s0, s1) = (stream(&q0, leg), stream(&q1, leg));
        let n = (sent[0].len() + sent[1].len()) as u64;
        let by = bytes(sent[0]) + bytes(sent[1]);
        assert!(s1.kernel_forwarded, "leg {leg}: {s1:#?}");
        assert_eq!(
            (s1.userspace_packets, s1.userspace_bytes),
            (s0.userspace_packets, s0.userspace_bytes),
            "leg {leg}: the userspace path saw packets of a kernel-forwarded stream"
        );
        assert_eq!(
            s1.kernel_packets - s0.kernel_packets,
            n,
            "leg {leg}: kernel_packets must grow by exactly what was sent; {s1:#?}"
        );
        assert_eq!(s1.kernel_bytes - s0.kernel_bytes, by, "leg {leg}");
        assert_eq!(
            s1.packets - s0.packets,
            n,
            "leg {leg}: packets = both paths"
        );
        assert_eq!(s1.packets, s1.userspace_packets + s1.kernel_packets);
        assert_eq!(s1.dropped_wrong_source, 0, "leg {leg}");
        assert_eq!(s1.dropped_direction, 0, "leg {leg}");
    }
    let st1 = statistics(&mut c).await;
    assert_eq!(st1.kernel_flows, 4);
    assert_eq!(st1.kernel_packets - st0.kernel_packets, 2 * (N + M) as u64);
    assert_eq!(
        st1.packets_relayed - st0.packets_relayed,
        2 * (N + M) as u64
    );
    assert_eq!(st1.packets_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_forwards_rtp_and_rtcp_both_ways() {
    bounded(forwards_both_ways(false)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_forwards_ipv6() {
    bounded(forwards_both_ways(true)).await
}

// ---------------------------------------------------------------------------------------------
// 2. Strict source in the kernel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_drops_wrong_source_in_kernel() {
    if netns::skip_without_xdp() {
        return;
    }
    bounded(async {
        let s = xdp_relay().await;
        let mut c = s.daemon.client().await;
        let (a, b) = (s.topo.caller_peer(false), s.topo.callee_peer(false));
        let call = establish(&mut c, "xdp-intruded", &a, &b).await;
        let (mut sa, mut sb) = (Sender::new(A_SSRC), Sender::new(B_SSRC));
        until_kernelized(&mut c, &call, &a, &b, &mut sa, &mut sb).await;
        let maps = maps_of(&s.daemon);
        let k0 = maps.installed_counters();
        let q0 = query(&mut c, &call.id).await.unwrap();
        let st0 = statistics(&mut c).await;

        // Another host on the caller's network, and another port of the caller's own host,
        // inject well-formed RTP (consecutive sequence numbers, as an attacker would) and RTCP.
        let other_host = s.topo.udp(&s.topo.caller, Topology::intruder_ip(false));
        let other_port = s.topo.udp(&s.topo.caller, Topology::caller_ip(false));
        let mut seq = 40_000u16;
        let mut inject = |from: &UdpSocket, to: SocketAddr, n: usize, rtcp: bool| {
            for i in 0..n {
                let p = if rtcp {
                    rtcp_sr(0xbad, 0, i as u32, 0)
                } else {
                    pcmu(seq, seq as u32 * 160, 0xbad)
                };
                seq = seq.wrapping_add(1);
                from.send_to(&p, to).expect("send");
            }
        };
        inject(&other_host, call.a_sends_rtp(), 10, false);
        inject(&other_host, call.a_sends_rtcp(), 5, true);
        inject(&other_port, call.a_sends_rtp(), 10, false);
        // The callee's relay socket, from the caller's side: only the callee may send there.
        inject(&other_host, call.b_sends_rtp(), 4, false);
        inject(&other_host, call.b_sends_rtcp(), 3, true);
        b.assert_silent("injected packets must not reach B");
        a.assert_silent("injected packets must not reach A");
        assert!(
            !receives_anything(&other_host) && !receives_anything(&other_port),
            "an intruder got something back"
        );

        // Dropped in the kernel: the XDP counters say so, and the userspace relay saw nothing.
        let k1 = maps.installed_counters();
        assert_eq!(
            k1.dropped_wrong_source - k0.dropped_wrong_source,
            32,
            "kernel counters: {k1:?}"
        );
        assert_eq!(k1.packets, k0.packets, "nothing was forwarded: {k1:?}");
        assert_eq!(k1.passed(), k0.passed(), "nothing went up: {k1:?}");
        let q1 = query(&mut c, &call.id).await.unwrap();
        for (leg, dropped) in [(0, 25), (1, 7)] {
            let (s0, s1) = (stream(&q0, leg), stream(&q1, leg));
            assert_eq!(
                s1.dropped_wrong_source - s0.dropped_wrong_source,
                dropped,
                "leg {leg}: {s1:#?}"
            );
            assert_eq!(s1.userspace_packets, s0.userspace_packets, "leg {leg}");
            assert_eq!(
                s1.packets, s0.packets,
                "leg {leg}: injected packets accepted"
            );
            assert!(s1.kernel_forwarded, "leg {leg} left the kernel");
            assert_eq!(
                s1.latched_peer, s0.latched_peer,
                "leg {leg}: the latch moved"
            );
        }
        assert_eq!(stream(&q1, 0).latched_peer, a.rtp_addr().to_string());
        let st1 = statistics(&mut c).await;
        assert_eq!(st1.packets_dropped - st0.packets_dropped, 32);

        // The call itself goes on, in the kernel.
        pass_through(
            &a.rtp,
            call.a_sends_rtp(),
            &b.rtp,
            call.b_sends_rtp(),
            &sa.rtp_n(5),
            "A -> B after the injection",
        );
        pass_through(
            &b.rtp,
            call.b_sends_rtp(),
            &a.rtp,
            call.a_sends_rtp(),
            &sb.rtp_n(5),
            "B -> A after the injection",
        );
        let q2 = query(&mut c, &call.id).await.unwrap();
        for leg in 0..2 {
            assert_eq!(
                stream(&q2, leg).kernel_packets - stream(&q1, leg).kernel_packets,
                5,
                "leg {leg}"
            );
            assert_eq!(
                stream(&q2, leg).userspace_packets,
                stream(&q1, leg).userspace_packets
            );
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. Hold and delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_hold_and_delete_take_effect() {
    if netns::skip_without_xdp() {
        return;
    }
    bounded(async {
        let s = xdp_relay().await;
        let mut c = s.daemon.client().await;
        let maps = maps_of(&s.daemon);
        let (a, b) = (s.topo.caller_peer(false), s.topo.callee_peer(false));
        let call = establish(&mut c, "xdp-hold", &a, &b).await;
        let (mut sa, mut sb) = (Sender::new(A_SSRC), Sender::new(B_SSRC));
        until_kernelized(&mut c, &call, &a, &b, &mut sa, &mut sb).await;
        assert_eq!(maps.flows().len(), 4);

        // Hold: A re-offers sendonly. The stream leaves the kernel at once.
        let to_b = offer(&mut c, &call.id, a.sdp_version(2, &["a=sendonly"]), None)
            .await
            .expect("re-offer (hold)");
        assert_eq!(to_b.rtp_port, call.to_b.rtp_port, "a re-offer keeps ports");
        let q = query(&mut c, &call.id).await.unwrap();
        assert!(
            !stream(&q, 0).kernel_forwarded && !stream(&q, 1).kernel_forwarded,
            "a re-offer must take the stream out of the kernel: {q:#?}"
        );
        assert_eq!(statistics(&mut c).await.kernel_flows, 0);
        let left = maps.flows();
        assert!(left.is_empty(), "flow map after the re-offer: {left:?}");
        let to_a = answer(&mut c, &call.id, b.sdp_version(2, &["a=recvonly"]), None)
            .await
            .expect("answer (hold)");
        assert_eq!(to_a.rtp_port, call.to_a.rtp_port);
        let q0 = query(&mut c, &call.id).await.unwrap();
        assert_eq!(stream(&q0, 0).direction, "sendonly");
        assert_eq!(stream(&q0, 1).direction, "recvonly");

        // On hold for longer than the settle time: A's media and RTCP both ways flow (userspace),
        // B's RTP never reaches A, and the held stream stays out of the kernel.
        const ROUNDS: usize = 26;
        let started = Instant::now();
        for round in 0..ROUNDS {
            let (pa, ra, pb, rb) = (sa.rtp(), sa.rtcp(), sb.rtp(), sb.rtcp());
            pass_through(
                &a.rtp,
                call.a_sends_rtp(),
                &b.rtp,
                call.b_sends_rtp(),
                &[pa],
                &format!("on hold, round {round}: A -> B RTP"),
            );
            b.send_rtp(call.b_sends_rtp(), &pb);
            pass_through(
                &a.rtcp,
                call.a_sends_rtcp(),
                &b.rtcp,
                call.b_sends_rtcp(),
                &[ra],
                &format!("on hold, round {round}: A -> B RTCP"),
            );
            pass_through(
                &b.rtcp,
                call.b_sends_rtcp(),
                &a.rtcp,
                call.a_sends_rtcp(),
                &[rb],
                &format!("on hold, round {round}: B -> A RTCP"),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() > Duration::from_millis(2500));
        let leaked = netns::drain(&a.rtp);
        assert_eq!(leaked, 0, "B's RTP reached A while A was sendonly");
        let q1 = query(&mut c, &call.id).await.unwrap();
        for leg in 0..2 {
            let (s0, s1) = (stream(&q0, leg), stream(&q1, leg));
            assert!(
                !s1.kernel_forwarded,
                "leg {leg}: a held stream went back into the kernel: {s1:#?}"
            );
            assert_eq!(s1.kernel_packets, s0.kernel_packets, "leg {leg}");
            assert_eq!(
                s1.userspace_packets - s0.userspace_packets,
                2 * ROUNDS as u64,
                "leg {leg}: RTP + RTCP per round through userspace"
            );
        }
        assert_eq!(
            stream(&q1, 1).dropped_direction - stream(&q0, 1).dropped_direction,
            ROUNDS as u64,
            "B's RTP is dropped by direction"
        );
        assert_eq!(statistics(&mut c).await.kernel_flows, 0);
        assert!(maps.flows().is_empty());

        // Resume: sendrecv again, and back into the kernel.
        offer(&mut c, &call.id, a.sdp_version(3, &[]), None)
            .await
            .expect("re-offer (resume)");
        answer(&mut c, &call.id, b.sdp_version(3, &[]), None)
            .await
            .expect("answer (resume)");
        until_kernelized(&mut c, &call, &a, &b, &mut sa, &mut sb).await;
        let q2 = query(&mut c, &call.id).await.unwrap();
        pass_through(
            &b.rtp,
            call.b_sends_rtp(),
            &a.rtp,
            call.a_sends_rtp(),
            &sb.rtp_n(5),
            "B -> A after the resume",
        );
        let q3 = query(&mut c, &call.id).await.unwrap();
        assert_eq!(
            stream(&q3, 1).kernel_packets - stream(&q2, 1).kernel_packets,
            5
        );
        assert_eq!(maps.flows().len(), 4);

        // Delete while kernelized: no flow is left, and the former relay ports reach nobody.
        delete(&mut c, &call.id).await;
        let st = statistics(&mut c).await;
        assert_eq!((st.kernel_flows, st.calls_current), (0, 0));
        let left = maps.flows();
        assert!(left.is_empty(), "flow map after Delete: {left:?}");
        let ns = s.topo.relay.clone();
        for to in [call.a_sends_rtp(), call.a_sends_rtcp()] {
            a.rtp.send_to(&sa.rtp(), to).unwrap();
        }
        for to in [call.b_sends_rtp(), call.b_sends_rtcp()] {
            b.rtp.send_to(&sb.rtp(), to).unwrap();
        }
        a.assert_silent("after Delete");
        b.assert_silent("after Delete");
        // The ports are free again in the relay namespace.
        netns::in_ns(&ns, || {
            for addr in [call.a_sends_rtp(), call.b_sends_rtp()] {
                can_bind(addr).unwrap_or_else(|e| panic!("{addr} still bound: {e}"));
            }
        });
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Re-INVITE to a moved endpoint

/// A re-INVITE moves the callee to a new address (transfer, new media server) that does not send
/// at once. The relay forgets the old latched source (media/src/latch.rs: a changed SDP address
/// means the endpoint moved), so media towards the callee goes to the new SDP address, and it
/// must keep going there once the stream settles and moves back into the kernel: never to the
/// old device, and the new device's own media must get through when it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_reinvite_to_a_moved_endpoint_does_not_kernelize_the_old_address() {
    if netns::skip_without_xdp() {
        return;
    }
    bounded(async {
        let s = xdp_relay().await;
        let mut c = s.daemon.client().await;
        let (a, b) = (s.topo.caller_peer(false), s.topo.callee_peer(false));
        let call = establish(&mut c, "xdp-moved", &a, &b).await;
        let (mut sa, mut sb) = (Sender::new(A_SSRC), Sender::new(B_SSRC));
        until_kernelized(&mut c, &call, &a, &b, &mut sa, &mut sb).await;

        // Re-INVITE: the callee answers from a new device, which only listens for a while.
        let moved = s.topo.callee_peer(false);
        offer(&mut c, &call.id, a.sdp_version(2, &[]), None)
            .await
            .expect("re-offer");
        let to_a = answer(&mut c, &call.id, moved.sdp_version(2, &[]), None)
            .await
            .expect("answer from the moved callee");
        assert_eq!(to_a.rtp_port, call.to_a.rtp_port, "a re-INVITE keeps ports");

        // 3 s of A's media (past the settle time): all of it reaches the new device.
        let started = Instant::now();
        let mut round = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let p = sa.rtp();
            a.send_rtp(call.a_sends_rtp(), &p);
            match moved.recv_rtp() {
                Some((got, from)) => {
                    assert_eq!((got, from), (p, call.b_sends_rtp()), "round {round}");
                }
                None => {
                    let at = started.elapsed();
                    let to_old = netns::drain(&b.rtp);
                    let q = query(&mut c, &call.id).await.unwrap();
                    let sb = stream(&q, 1);
                    panic!(
                        "{at:.2?} after the re-INVITE (round {round}), A's RTP no longer reaches \
                         the callee's new address {}; the old device {} got {to_old} packet(s); \
                         callee leg: kernel_forwarded={}, latched_peer={}, sdp_peer={}",
                        moved.rtp_addr(),
                        b.rtp_addr(),
                        sb.kernel_forwarded,
                        sb.latched_peer,
                        sb.sdp_peer
                    );
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            netns::drain_peer(&b),
            0,
            "media went to the callee's old address after the re-INVITE"
        );
        let q = query(&mut c, &call.id).await.unwrap();
        assert_ne!(
            stream(&q, 1).latched_peer,
            b.rtp_addr().to_string(),
            "Query reports the old device as the callee's latched source: {q:#?}"
        );

        // The new device starts sending: its media reaches A.
        pass_through(
            &moved.rtp,
            call.b_sends_rtp(),
            &a.rtp,
            call.a_sends_rtp(),
            &sb.rtp_n(3),
            "moved callee -> A",
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Inactivity timeout with kernel-only media

/// Media that only the kernel sees still counts as activity; once it stops, the timeout deletes
/// the call and its flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_kernel_media_keeps_the_call_alive_and_timeout_removes_flows() {
    if netns::skip_without_xdp() {
        return;
    }
    bounded(async {
        let topo = Topology::new();
        let mut args = Topology::sluice_args("native");
        args.extend(["--timeout".into(), "2".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = Daemon::start_in(Some(&topo.relay), &args).await;
        let mut c = d.client().await;
        let maps = maps_of(&d);
        let (a, b) = (topo.caller_peer(false), topo.callee_peer(false));
        let call = establish(&mut c, "xdp-timeout", &a, &b).await;
        let (mut sa, mut sb) = (Sender::new(A_SSRC), Sender::new(B_SSRC));
        until_kernelized(&mut c, &call, &a, &b, &mut sa, &mut sb).await;
        let q0 = query(&mut c, &call.id).await.unwrap();

        // 3 s of media in the kernel only, longer than the 2 s timeout.
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(3) {
            pass_through(
                &a.rtp,
                call.a_sends_rtp(),
                &b.rtp,
                call.b_sends_rtp(),
                &[sa.rtp()],
                "A -> B",
            );
            pass_through(
                &b.rtp,
                call.b_sends_rtp(),
                &a.rtp,
                call.a_sends_rtp(),
                &[sb.rtp()],
                "B -> A",
            );
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let q1 = query(&mut c, &call.id).await.unwrap_or_else(|s| {
            panic!("the call timed out while media flowed in the kernel: {s:?}")
        });
        for leg in 0..2 {
            let (s0, s1) = (stream(&q0, leg), stream(&q1, leg));
            assert!(s1.kernel_forwarded, "leg {leg}");
            assert_eq!(s1.userspace_packets, s0.userspace_packets, "leg {leg}");
            assert_eq!(s1.kernel_packets - s0.kernel_packets, sent, "leg {leg}");
        }

        // Silence: the call times out, and its flows go with it.
        let stopped = Instant::now();
        loop {
            match query(&mut c, &call.id).await {
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(s) => panic!("Query: {s:?}"),
                Ok(_) => {}
            }
            assert!(
                stopped.elapsed() < Duration::from_secs(5),
                "the call did not time out within 5 s of silence (timeout 2 s)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let st = statistics(&mut c).await;
        assert_eq!(st.calls_timed_out, 1);
        assert_eq!((st.calls_current, st.kernel_flows), (0, 0));
        assert!(
            st.kernel_packets >= 2 * sent,
            "kernel packets of the ended call are kept in the totals: {st:?}"
        );
        let left = maps.flows();
        assert!(left.is_empty(), "flow map after the timeout: {left:?}");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. No leaks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_no_map_entries_leak() {
    if netns::skip_without_xdp() {
        return;
    }
    // 1,000 calls: 5 batches of 200 concurrent calls. Each batch waits out the settle time
    // (1.5-2.5 s) once, so fewer, larger batches keep the test short.
    const BATCHES: usize = 5;
    const CALLS: usize = 200;
    const LIMIT: Duration = Duration::from_secs(55);
    netns::raise_fd_limit();
    sluice_bin();
    let run = async {
        let mut s = xdp_relay().await;
        let mut c = s.daemon.client().await;
        let maps = maps_of(&s.daemon);
        assert!(maps.flows().is_empty());
        let callers: Vec<Peer> = netns::in_ns(&s.topo.caller, || {
            (0..CALLS)
                .map(|_| Peer::on(Topology::caller_ip(false)))
                .collect()
        });
        let callees: Vec<Peer> = netns::in_ns(&s.topo.callee, || {
            (0..CALLS)
                .map(|_| Peer::on(Topology::callee_ip(false)))
                .collect()
        });
        let started = Instant::now();
        let mut seq = 0u16;
        let mut times = Vec::new();
        for batch in 0..BATCHES {
            let t0 = Instant::now();
            let mut calls = Vec::with_capacity(CALLS);
            for i in 0..CALLS {
                let id = format!("leak-{batch}-{i}");
                calls.push(establish(&mut c, &id, &callers[i], &callees[i]).await);
            }
            let t_setup = t0.elapsed();

            // A few packets both ways per call until every stream is in the kernel: RTP and
            // RTCP of both legs, 4 flows per call.
            let want = 4 * CALLS as u64;
            let deadline = Instant::now() + Duration::from_secs(8);
            loop {
                seq = seq.wrapping_add(1);
                for (i, call) in calls.iter().enumerate() {
                    let (a, b) = (&callers[i], &callees[i]);
                    a.send_rtp(call.a_sends_rtp(), &pcmu(seq, 0, A_SSRC));
                    a.send_rtcp(call.a_sends_rtcp(), &rtcp_sr(A_SSRC, 0, 1, 1));
                    b.send_rtp(call.b_sends_rtp(), &pcmu(seq, 0, B_SSRC));
                    b.send_rtcp(call.b_sends_rtcp(), &rtcp_sr(B_SSRC, 0, 1, 1));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                callers.iter().chain(&callees).for_each(|p| {
                    netns::drain_peer(p);
                });
                let st = statistics(&mut c).await;
                assert_eq!(st.calls_current, CALLS as u64);
                if st.kernel_flows == want {
                    break;
                }
                if Instant::now() > deadline {
                    let mut out = 0;
                    let mut example = None;
                    for call in &calls {
                        let q = query(&mut c, &call.id).await.unwrap();
                        if !stream(&q, 0).kernel_forwarded || !stream(&q, 1).kernel_forwarded {
                            out += 1;
                            example.get_or_insert(q);
                        }
                    }
                    panic!(
                        "batch {batch}: kernel_flows {} of {want} after 8 s; {out} calls not \
                         kernelized, e.g. {example:#?}",
                        st.kernel_flows
                    );
                }
            }
            let t_kernel = t0.elapsed();
            tokio::time::sleep(Duration::from_millis(50)).await;
            callers.iter().chain(&callees).for_each(|p| {
                netns::drain_peer(p);
            });

            // Each call forwards in the kernel, and the real map holds exactly what the daemon
            // reports.
            let k0 = statistics(&mut c).await;
            seq = seq.wrapping_add(1);
            for (i, call) in calls.iter().enumerate() {
                let (a, b) = (&callers[i], &callees[i]);
                let p = pcmu(seq, 0, A_SSRC);
                pass_through(
                    &a.rtp,
                    call.a_sends_rtp(),
                    &b.rtp,
                    call.b_sends_rtp(),
                    &[p],
                    &call.id,
                );
                let p = pcmu(seq, 0, B_SSRC);
                pass_through(
                    &b.rtp,
                    call.b_sends_rtp(),
                    &a.rtp,
                    call.a_sends_rtp(),
                    &[p],
                    &call.id,
                );
            }
            let k1 = statistics(&mut c).await;
            assert_eq!(
                k1.kernel_packets - k0.kernel_packets,
                2 * CALLS as u64,
                "batch {batch}: every packet forwarded by the kernel"
            );
            assert_eq!(maps.flows().len() as u64, k1.kernel_flows);

            for call in &calls {
                delete(&mut c, &call.id).await;
            }
            let st = statistics(&mut c).await;
            assert_eq!(
                (st.calls_current, st.kernel_flows, st.ports_in_use),
                (0, 0, 0),
                "batch {batch} after Delete"
            );
            let left = maps.flows();
            assert!(
                left.is_empty(),
                "batch {batch}: {} flows left in the kernel after Delete: {:?}",
                left.len(),
                &left[..left.len().min(5)]
            );
            times.push((t_setup, t_kernel, t0.elapsed()));
        }
        let total = started.elapsed();
        for (i, (setup, kernel, all)) in times.iter().enumerate() {
            println!(
                "batch {i}: {CALLS} calls set up in {setup:.2?}, all kernelized at \
                 {kernel:.2?}, deleted at {all:.2?}"
            );
        }
        println!(
            "{} create/kernelize/delete cycles in {total:.2?}",
            BATCHES * CALLS
        );
        let st = statistics(&mut c).await;
        assert_eq!(st.calls_total, (BATCHES * CALLS) as u64);
        assert_eq!(st.kernel_flows, 0);
        assert!(st.kernel_packets >= 2 * (BATCHES * CALLS) as u64);
        assert!(maps.flows().is_empty());

        // Shutdown detaches the program and the maps go with the process.
        drop(c);
        let status = s
            .daemon
            .terminate(Duration::from_secs(10))
            .expect("sluice did not stop on SIGTERM");
        assert!(status.success(), "sluice exited with {status}");
        for iface in netns::RELAY_IFACES {
            assert!(
                !s.topo.xdp_attached(iface),
                "XDP program still attached to {iface} after shutdown"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while maps.flow_map_exists() {
            assert!(
                Instant::now() < deadline,
                "the flow map outlived the daemon"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(LIMIT, run).await {
        Ok(()) => {}
        Err(_) => panic!("xdp_no_map_entries_leak did not finish within {LIMIT:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 4b. Scans

/// What the userspace relay made of leg `leg`'s packets: accepted, or dropped for a reason of
/// its own (each packet counts once: `dropped_wrong_source` includes `dropped_unconfirmed`).
fn userspace_judged(info: &pb::CallInfo, leg: usize) -> u64 {
    let s = stream(info, leg);
    s.packets + s.dropped_wrong_source + s.dropped_malformed
}

/// Datagrams to relay ports no call holds die in the XDP program (`unknown_port`, in
/// Statistics' drops); a port a call holds still reaches the userspace relay before its stream
/// settles; a deleted call's ports are dropped like any free port once the socket pool closes
/// them, and nothing of the call is left in the maps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_drops_scans_of_ports_no_call_holds() {
    if netns::skip_without_xdp() {
        return;
    }
    bounded(async {
        let s = xdp_relay().await;
        let mut c = s.daemon.client().await;
        let (a, b) = (s.topo.caller_peer(false), s.topo.callee_peer(false));
        let call = establish(&mut c, "xdp-scanned", &a, &b).await;
        let maps = maps_of(&s.daemon);
        let held = [
            call.a_sends_rtp(),
            call.a_sends_rtcp(),
            call.b_sends_rtp(),
            call.b_sends_rtcp(),
        ];
        let relay = Topology::relay_ip(false);
        // 20 ports of the daemon's range (40000-44999) that the call does not hold.
        let free: Vec<SocketAddr> = (40000..45000)
            .step_by(97)
            .filter(|p| !held.iter().any(|h| h.port() == *p))
            .take(20)
            .map(|p| SocketAddr::new(relay, p))
            .collect();
        let scanner = s.topo.udp(&s.topo.caller, Topology::intruder_ip(false));
        let k0 = maps.no_flow_stats();
        let st0 = statistics(&mut c).await;
        for (i, to) in free.iter().enumerate() {
            scanner.send_to(&pcmu(i as u16, 0, 0x5ca7), *to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let k1 = maps.no_flow_stats();
        assert_eq!(
            k1.dropped_unknown_port - k0.dropped_unknown_port,
            20,
            "{k1:?}"
        );
        assert_eq!(k1.passed_bound_port, k0.passed_bound_port, "{k1:?}");
        let st1 = statistics(&mut c).await;
        assert_eq!(st1.packets_dropped - st0.packets_dropped, 20, "{st1:#?}");

        // The caller's relay port before the caller speaks: held, so the userspace relay gets
        // the packets and judges them (latching is its business).
        let q0 = query(&mut c, &call.id).await.unwrap();
        for i in 0..5u16 {
            scanner
                .send_to(&pcmu(100 + i, 0, 0x5ca7), call.a_sends_rtp())
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let q = query(&mut c, &call.id).await.unwrap();
            let judged = userspace_judged(&q, 0) - userspace_judged(&q0, 0);
            if judged == 5 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "userspace saw {judged} of 5: {q:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let k2 = maps.no_flow_stats();
        assert_eq!(k2.passed_bound_port - k1.passed_bound_port, 5, "{k2:?}");
        assert_eq!(k2.dropped_unknown_port, k1.dropped_unknown_port, "{k2:?}");

        // The call ends: its ports are free ports once its sockets close, which the socket
        // pool does within its idle time (2 s) and a sweep (0.5 s); until then they are held.
        delete(&mut c, &call.id).await;
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let before = maps.no_flow_stats().dropped_unknown_port;
            scanner.send_to(&pcmu(0, 0, 0x5ca7), held[0]).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if maps.no_flow_stats().dropped_unknown_port > before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the deleted call's port still receives"
            );
        }
        let k3 = maps.no_flow_stats();
        for to in held {
            scanner.send_to(&pcmu(0, 0, 0x5ca7), to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        let k4 = maps.no_flow_stats();
        assert_eq!(
            k4.dropped_unknown_port - k3.dropped_unknown_port,
            4,
            "{k4:?}"
        );
        assert_eq!(k4.passed_bound_port, k3.passed_bound_port, "{k4:?}");
        assert!(maps.flows().is_empty(), "{:?}", maps.flows());
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. Off and auto

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_off_and_auto_fall_back() {
    bounded(async {
        let topo = if netns::is_root() && netns::has_iproute2() {
            Some(Topology::new())
        } else {
            println!("not root or no iproute2: running on loopback instead of namespaces");
            None
        };

        // An explicit mode with an interface that does not exist: no start, and the message
        // names the interface.
        let dir = std::env::temp_dir().join(format!("sluice-xdp-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = sluice_command();
        cmd.arg("run")
            .arg("--control")
            .arg(format!("unix:{}", dir.join("control.sock").display()))
            .args(["--xdp", "native", "--xdp-iface", "doesnotexist"]);
        if let Some(t) = &topo {
            cmd.args(["--media-ip", netns::RELAY_V4]);
            netns::enter_on_exec(&mut cmd, &t.relay);
        }
        let (out, killed) = run_bounded(cmd, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&dir);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !killed,
            "sluice kept running with a missing interface:\n{text}"
        );
        assert!(!out.status.success(), "sluice exited 0:\n{text}");
        if sluice_relay::xdp::program_object().is_some() {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("doesnotexist"),
                "the error must name the interface:\n{text}"
            );
        } else {
            println!("built without the XDP program: the error is about that instead");
        }

        // `auto` without interfaces, `auto` with one that does not exist, and `off`: media is
        // relayed on the userspace path, before and after the settle time.
        let modes: [(&str, &[&str]); 3] = [
            ("auto", &["--xdp", "auto"]),
            (
                "auto-missing",
                &["--xdp", "auto", "--xdp-iface", "doesnotexist"],
            ),
            ("off", &["--xdp", "off"]),
        ];
        let mut daemons = Vec::new();
        for (i, (name, flags)) in modes.iter().enumerate() {
            let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            let (a, b) = match &topo {
                Some(t) => {
                    let lo = 40000 + i * 1000;
                    args.extend([
                        "--media-ip".into(),
                        netns::RELAY_V4.into(),
                        "--ports".into(),
                        format!("{lo}-{}", lo + 999),
                    ]);
                    (t.caller_peer(false), t.callee_peer(false))
                }
                None => (Peer::v4(), Peer::v4()),
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let d = Daemon::start_in(topo.as_ref().map(|t| t.relay.as_str()), &args).await;
            let mut c = d.client().await;
            let call = establish(&mut c, name, &a, &b).await;
            daemons.push((name, d, c, call, a, b));
        }
        const ROUNDS: usize = 26;
        let (mut sa, mut sb) = (Sender::new(A_SSRC), Sender::new(B_SSRC));
        for _ in 0..ROUNDS {
            let (pa, ra, pb, rb) = (sa.rtp(), sa.rtcp(), sb.rtp(), sb.rtcp());
            for (name, _, _, call, a, b) in &daemons {
                pass_through(
                    &a.rtp,
                    call.a_sends_rtp(),
                    &b.rtp,
                    call.b_sends_rtp(),
                    std::slice::from_ref(&pa),
                    &format!("{name}: A -> B RTP"),
                );
                pass_through(
                    &a.rtcp,
                    call.a_sends_rtcp(),
                    &b.rtcp,
                    call.b_sends_rtcp(),
                    std::slice::from_ref(&ra),
                    &format!("{name}: A -> B RTCP"),
                );
                pass_through(
                    &b.rtp,
                    call.b_sends_rtp(),
                    &a.rtp,
                    call.a_sends_rtp(),
                    std::slice::from_ref(&pb),
                    &format!("{name}: B -> A RTP"),
                );
                pass_through(
                    &b.rtcp,
                    call.b_sends_rtcp(),
                    &a.rtcp,
                    call.a_sends_rtcp(),
                    std::slice::from_ref(&rb),
                    &format!("{name}: B -> A RTCP"),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (name, d, c, call, _, _) in &mut daemons {
            let q = query(c, &call.id).await.unwrap();
            for leg in 0..2 {
                let st = stream(&q, leg);
                assert!(!st.kernel_forwarded, "{name}: leg {leg} in the kernel");
                assert_eq!(st.kernel_packets, 0, "{name}: leg {leg}");
                assert_eq!(st.userspace_packets, 2 * ROUNDS as u64, "{name}: leg {leg}");
            }
            let st = statistics(c).await;
            assert_eq!(st.forwarding_path, "userspace", "{name}");
            assert_eq!((st.kernel_flows, st.kernel_packets), (0, 0), "{name}");
            assert!(
                DaemonMaps::of(d.pid()).is_none(),
                "{name}: the daemon holds XDP maps"
            );
            if name.starts_with("auto") {
                let log = d.log_text();
                assert!(
                    log.lines()
                        .any(|l| l.contains("XDP") && l.contains("userspace path")),
                    "{name}: `auto` must say in one line that it uses the userspace path:\n{log}"
                );
            }
        }
        if let Some(t) = &topo {
            for iface in netns::RELAY_IFACES {
                assert!(!t.xdp_attached(iface), "XDP attached to {iface}");
            }
        }
    })
    .await
}

/// `sluice run --xdp generic` attaches on every kernel the fast path can run on, and says which
/// optional kernel features it found: where the kernel refuses `bpf_xdp_adjust_meta`
/// (6.18.44-fc-v1300) one warning at start, and `Statistics.kernel_features` shows the feature
/// unavailable with what sluice does without it; the log line lists every feature probed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_generic_attaches_and_reports_the_kernel_features() {
    if netns::skip_without_xdp() {
        return;
    }
    bounded(async {
        let probed = sluice_relay::xdp::KernelFeatures::probe().unwrap();
        let has_meta = probed.has(sluice_relay::xdp::Feature::XdpMeta);
        let topo = Topology::new();
        let args = Topology::sluice_args("generic");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = Daemon::start_in(Some(&topo.relay), &args).await;
        let mut c = d.client().await;
        let s = statistics(&mut c).await;
        assert_eq!(s.forwarding_path, "userspace+xdp-generic on r1,r2");
        let names: Vec<&str> = s.kernel_features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            sluice_relay::xdp::Feature::ALL.map(|f| f.name()),
            "{s:#?}"
        );
        for f in &s.kernel_features {
            use sluice_relay::xdp::Feature;
            let expect = if f.name == Feature::XdpMeta.name() {
                has_meta
            } else if f.name == Feature::MmapArray.name() {
                probed.has(Feature::MmapArray)
            } else {
                true
            };
            assert_eq!((f.available, f.used), (expect, expect), "{f:#?}");
            assert_eq!(f.without.is_empty(), expect, "{f:#?}");
        }
        d.stop_cleanly();
        let log = d.log_text();
        assert!(log.contains("XDP fast path attached"), "{log}");
        assert!(
            log.contains(&format!("kernel_features={probed}")),
            "the start line lists the probed features:\n{log}"
        );
        assert_eq!(
            log.matches("XDP metadata unavailable").count(),
            usize::from(!has_meta),
            "one warning exactly when the kernel refuses the helper:\n{log}"
        );
        assert!(!log.contains("a bug in ebpf"), "{log}");
        assert!(!topo.xdp_attached("r1"), "detached at shutdown");
    })
    .await;
}
