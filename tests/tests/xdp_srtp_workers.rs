//! SRTP termination on the AF_XDP worker path, end to end: the real daemon in the relay
//! namespace of a caller - relay - callee topology (tests/src/netns.rs), XDP attached natively to
//! both relay interfaces and one AF_XDP worker; an SDES-SRTP caller (AES_CM_128_HMAC_SHA1_80,
//! `srtp: strip`) and a plain-RTP callee. Once the stream has settled it leaves the kernel through
//! AF_XDP to the worker, which unprotects the caller's SRTP and protects the callee's RTP: the
//! audio must arrive intact both ways and the worker's counters in `Statistics` must grow by
//! exactly what was sent. The same call with `--xdp off` (the userspace engine does the SRTP)
//! must deliver the same bytes.
//!
//! Where the worker's packets leave: every packet by the worker's TX ring, the XDP route lookup
//! reaching the worker with the frame as XDP metadata (a kernel that allows
//! `bpf_xdp_adjust_meta`), or with `--xdp-metadata off` (what a kernel without the helper gets)
//! through the program's route cache map. The metadata case is reported as ignored, with one line
//! naming the helper, on a kernel that refuses it (a libtest-mimic harness).
//!
//! The far-end SRTP endpoint is sluice's own `SrtpContext`, whose wire format is proven against
//! libsrtp by relay/tests/srtp_libsrtp_interop.rs.
//!
//! Needs root (namespaces, BPF, AF_XDP) and the XDP program; otherwise it prints why and passes.
//! About 10 s a test.

use std::time::{Duration, Instant};

use sluice_control::proto;
use sluice_control::proto::control_client::ControlClient;
use sluice_relay::srtp::{SrtpConfig, SrtpContext, SrtpProfile};
use sluice_tests::netns::{self, Topology};
use sluice_tests::*;
use tonic::transport::Channel;

const A_SSRC: u32 = 0x0a0a_5151;
const B_SSRC: u32 = 0x0b0b_5252;
const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
/// Packets sent each way once the stream is on its final path.
const N: u16 = 100;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The key of the `a=crypto` line of `suite` in an SDP.
fn offered_key(sdp: &str, suite: &str) -> Vec<u8> {
    use base64::Engine as _;
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=crypto:") && l.contains(suite))
        .unwrap_or_else(|| panic!("no {suite} a=crypto line in\n{sdp}"));
    let b64 = line.split_whitespace().nth(2).unwrap();
    let b64 = b64.trim_start_matches("inline:").split('|').next().unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn protect(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + 64, 0);
    let n = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

fn unprotect(ctx: &mut SrtpContext, wire: &[u8], what: &str) -> Vec<u8> {
    let mut buf = wire.to_vec();
    let n = ctx
        .unprotect_rtp(&mut buf, wire.len())
        .unwrap_or_else(|e| panic!("{what}: what sluice sent does not unprotect: {e}"));
    buf.truncate(n);
    buf
}

/// The caller's and callee's media state.
struct Ends {
    a: Peer,
    b: Peer,
    a_tx: SrtpContext,
    a_rx: SrtpContext,
    a_sends: std::net::SocketAddr,
    b_sends: std::net::SocketAddr,
    a_seq: u16,
    b_seq: u16,
}

impl Ends {
    /// One packet each way, checked byte for byte; returns false if one did not arrive.
    fn exchange(&mut self, what: &str) -> bool {
        let (sa, sb) = (self.a_seq, self.b_seq);
        self.a_seq += 1;
        self.b_seq += 1;
        // A -> B: SRTP in, plain out.
        let plain = pcmu(sa, 160 * sa as u32, A_SSRC);
        self.a
            .send_rtp(self.a_sends, &protect(&mut self.a_tx, &plain));
        let Some((got, from)) = self.b.recv_rtp() else {
            return false;
        };
        assert_eq!(got, plain, "{what}: A -> B packet {sa} changed");
        assert_eq!(from, self.b_sends, "{what}: B hears from its relay port");
        // B -> A: plain in, SRTP out.
        let plain = pcmu(sb, 160 * sb as u32, B_SSRC);
        self.b.send_rtp(self.b_sends, &plain);
        let Some((wire, from)) = self.a.recv_rtp() else {
            return false;
        };
        assert_eq!(from, self.a_sends, "{what}: A hears from its relay port");
        assert_ne!(wire, plain, "{what}: sent to A in the clear");
        assert_eq!(
            unprotect(&mut self.a_rx, &wire, what),
            plain,
            "{what}: B -> A packet {sb} changed"
        );
        true
    }
}

async fn set_up_call(c: &mut ControlClient<Channel>, topo: &Topology, call_id: &str) -> Ends {
    let a = topo.caller_peer(false);
    let b = topo.callee_peer(false);
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let a_master: Vec<u8> = (0..30u8).map(|i| i.wrapping_mul(29) ^ 0x5a).collect();
    let a_sdp = a
        .sdp(&[&format!("a=crypto:1 {SUITE} inline:{}", b64(&a_master))])
        .replace("RTP/AVP", "RTP/SAVP");
    let to_b = offer(
        c,
        call_id,
        a_sdp,
        Some(proto::LegOptions {
            srtp: proto::Srtp::Strip as i32,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert!(!to_b.text.contains("a=crypto"), "{}", to_b.text);
    let to_a = answer(c, call_id, b.sdp(&[]), None).await.unwrap();
    let sluice_key = offered_key(&to_a.text, SUITE);
    let ctx = |k: &[u8]| SrtpContext::new(profile, k, SrtpConfig::default()).unwrap();
    Ends {
        a_tx: ctx(&a_master),
        a_rx: ctx(&sluice_key),
        a_sends: to_a.rtp_addr(),
        b_sends: to_b.rtp_addr(),
        a,
        b,
        a_seq: 1,
        b_seq: 30_000,
    }
}

fn worker_totals(s: &proto::StatisticsReply) -> (u64, u64, u64, u64) {
    s.workers.iter().fold((0, 0, 0, 0), |t, w| {
        (
            t.0 + w.rx,
            t.1 + w.tx,
            t.2 + w.dropped,
            t.3 + w.transform_errors,
        )
    })
}

/// How the route of a worker's frame reaches it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RouteFrom {
    /// XDP metadata in front of the frame.
    Metadata,
    /// The program's route cache map (no XDP metadata).
    Cache,
}

async fn run_call(d: &Daemon, topo: &Topology, workers: Option<RouteFrom>) {
    let route = workers;
    let workers = route.is_some();
    let mut c = d.client().await;
    let call_id = if workers {
        "srtp-worker"
    } else {
        "srtp-userspace"
    };
    let mut ends = set_up_call(&mut c, topo, call_id).await;
    let what = if workers {
        "worker path"
    } else {
        "userspace path"
    };

    // Talk until the stream has moved to its final path.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        assert!(
            ends.exchange(what),
            "{what}: a packet was lost while settling"
        );
        let q = query(&mut c, call_id).await.unwrap();
        let moved = stream(&q, 0).kernel_forwarded && stream(&q, 1).kernel_forwarded;
        if !workers {
            assert!(!moved, "--xdp off never moves a stream");
            if ends.a_seq > 60 {
                break;
            }
        } else if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the SRTP stream never went to the worker: {q:#?}\nlog:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stats0 = statistics(&mut c).await;
    let q0 = query(&mut c, call_id).await.unwrap();
    for _ in 0..N {
        assert!(ends.exchange(what), "{what}: a packet was lost");
    }
    let stats1 = statistics(&mut c).await;
    let q1 = query(&mut c, call_id).await.unwrap();
    let n = N as u64;
    let (rx0, tx0, drop0, err0) = worker_totals(&stats0);
    let (rx1, tx1, drop1, err1) = worker_totals(&stats1);
    if workers {
        assert_eq!(stats1.workers.len(), 1, "{stats1:#?}");
        assert_eq!(stats1.forwarding_path, "userspace+xdp-native on r1,r2");
        assert_eq!(rx1 - rx0, 2 * n, "worker rx: {stats0:#?} -> {stats1:#?}");
        assert_eq!(tx1 - tx0, 2 * n, "worker tx: {stats0:#?} -> {stats1:#?}");
        // The neighbours are known by now (the userspace relay talked to both ends first): the
        // XDP route lookup gives the next hop, with the frame or through the route cache, and
        // every packet leaves by the TX ring.
        let ring = |s: &proto::StatisticsReply| s.workers.iter().map(|w| w.tx_ring).sum::<u64>();
        let kern = |s: &proto::StatisticsReply| s.workers.iter().map(|w| w.tx_kernel).sum::<u64>();
        assert_eq!(
            (ring(&stats1) - ring(&stats0), kern(&stats1) - kern(&stats0)),
            (2 * n, 0),
            "{route:?}: worker TX ring vs kernel stack: {stats0:#?} -> {stats1:#?}"
        );
        // Statistics say which kernel features the path uses, and what it does without one.
        let meta = stats1
            .kernel_features
            .iter()
            .find(|f| f.name == "bpf_xdp_adjust_meta")
            .unwrap_or_else(|| panic!("no bpf_xdp_adjust_meta in {stats1:#?}"));
        assert_eq!(meta.used, route == Some(RouteFrom::Metadata), "{meta:#?}");
        assert_eq!(meta.without.is_empty(), meta.used, "{meta:#?}");
        assert!(
            stats1
                .kernel_features
                .iter()
                .filter(|f| f.name != "bpf_xdp_adjust_meta")
                .all(|f| f.available && f.used),
            "{stats1:#?}"
        );
        assert_eq!((drop1 - drop0, err1 - err0), (0, 0), "{stats1:#?}");
        for leg in 0..2 {
            let (s0, s1) = (stream(&q0, leg), stream(&q1, leg));
            assert!(s1.kernel_forwarded);
            assert_eq!(
                s1.kernel_packets - s0.kernel_packets,
                n,
                "leg {leg}: kernel_packets counts what XDP handed to the worker"
            );
            assert_eq!(
                s1.userspace_packets, s0.userspace_packets,
                "leg {leg}: nothing reached the userspace relay"
            );
        }
        // A forged packet is dropped by the worker and counted on the caller's leg.
        let mut forged = protect(&mut ends.a_tx, &pcmu(ends.a_seq, 0, A_SSRC));
        *forged.last_mut().unwrap() ^= 1;
        ends.a.send_rtp(ends.a_sends, &forged);
        ends.b
            .assert_silent("a forged SRTP packet got through the worker");
        let q2 = query(&mut c, call_id).await.unwrap();
        assert_eq!(stream(&q2, 0).srtp_auth_failures, 1);
        let (_, _, _, err2) = worker_totals(&statistics(&mut c).await);
        assert_eq!(err2 - err1, 1);
    } else {
        assert!(stats1.workers.is_empty(), "{stats1:#?}");
        for leg in 0..2 {
            let (s0, s1) = (stream(&q0, leg), stream(&q1, leg));
            assert_eq!(s1.userspace_packets - s0.userspace_packets, n, "leg {leg}");
            assert_eq!(s1.kernel_packets, 0);
        }
    }
    c.delete(proto::DeleteRequest {
        call_id: call_id.into(),
        from_tag: String::new(),
        to_tag: String::new(),
    })
    .await
    .unwrap();
    if workers {
        let s = statistics(&mut c).await;
        assert_eq!(s.kernel_flows, 0, "delete removes the WORKER entries");
    }
}

/// The call through one worker, then through the userspace engine (`--xdp off`); `extra` are
/// the worker daemon's extra flags.
fn worker_then_userspace(route: RouteFrom, extra: &'static [&'static str]) {
    if netns::skip_without_xdp() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bounded(async {
        let topo = Topology::new();
        for workers in [Some(route), None] {
            let mut d = topo.start_sluice_with(workers.is_some(), extra).await;
            run_call(&d, &topo, workers).await;
            d.stop_cleanly();
            if workers.is_some() {
                let log = d.log_text();
                assert!(log.contains("AF_XDP workers stopped"), "{log}");
                assert_eq!(
                    log.contains("XDP metadata unavailable"),
                    route == RouteFrom::Cache,
                    "one warning when the workers get no route with a frame:\n{log}"
                );
                assert!(
                    !topo.xdp_attached("r1"),
                    "the program is detached at shutdown"
                );
            }
        }
    }));
}

fn main() -> std::process::ExitCode {
    use libtest_mimic::{Arguments, Trial};
    let mut args = Arguments::from_args();
    // One at a time: each starts a daemon with XDP and a busy-polling worker on two CPUs.
    args.test_threads.get_or_insert(1);
    let no_metadata = netns::metadata_skip_reason();
    let trials = vec![
        Trial::test(
            "srtp_caller_and_plain_callee_through_the_worker_with_xdp_metadata_and_userspace",
            || {
                worker_then_userspace(RouteFrom::Metadata, &[]);
                Ok(())
            },
        )
        .with_ignored_flag(no_metadata.is_some()),
        Trial::test(
            "srtp_caller_and_plain_callee_through_the_worker_with_the_route_cache_and_userspace",
            || {
                worker_then_userspace(RouteFrom::Cache, &["--xdp-metadata", "off"]);
                Ok(())
            },
        ),
    ];
    if let Some(why) = &no_metadata {
        println!("ignored: the worker case with XDP metadata: {why}");
    }
    libtest_mimic::run(&args, trials).exit_code()
}
