//! Moving settled streams into XDP and the AF_XDP workers, and back on signalling.

use super::*;
use crate::codecs::Codec;
use sluice_relay::clock::now_ns;
use sluice_relay::srtp::SrtpHandover;

fn sessions_with_kernel() -> (Arc<Sessions>, FakeKernel) {
    sessions_with_kernel_and(false)
}

fn sessions_with_kernel_and(workers: bool) -> (Arc<Sessions>, FakeKernel) {
    let (s, kernel, _) = sessions_with_plane(workers);
    (s, kernel)
}

fn sessions_with_plane(workers: bool) -> (Arc<Sessions>, FakeKernel, FakePlane) {
    let kernel = FakeKernel::default();
    kernel.0.lock().unwrap().workers = workers;
    let plane = FakePlane::default();
    let s = Sessions::new(
        test_config(22000, 22999),
        SessionEnv::system(),
        Box::new(plane.clone()),
        Some(Box::new(kernel.clone())),
    )
    .unwrap();
    (s, kernel, plane)
}

fn srtp_state(ssrc: u32, rtp_index: u64, srtcp_next_index: u32) -> Option<SrtpHandover> {
    Some(SrtpHandover::at(ssrc, Some(rtp_index), srtcp_next_index))
}

/// What the engine does when latching decides: both sides of every stream latch.
fn latch_all(s: &Sessions, call_id: &str, rtcp: bool) {
    let st = s.lock();
    for (i, stream) in st.calls[call_id].streams.iter().enumerate() {
        for (k, side) in stream.sides.iter().enumerate() {
            let addr: SocketAddr = format!("127.0.0.{}:{}", 10 + k, 6000 + 10 * i)
                .parse()
                .unwrap();
            side.state.set_latched(false, Some(addr));
            if rtcp {
                side.state
                    .set_latched(true, Some(SocketAddr::new(addr.ip(), addr.port() + 1)));
            }
        }
    }
}

fn call_up(s: &Sessions, call_id: &str, extra: &str) {
    s.offer(
        call_id,
        "a",
        &sdp("alice", 4000, extra),
        LegOptions::default(),
    )
    .unwrap();
    s.answer(
        call_id,
        "a",
        "b",
        &sdp("bob", 5000, extra),
        LegOptions::default(),
    )
    .unwrap();
}

const SEC: u64 = 1_000_000_000;

/// An SRTP caller (terminated by `--srtp strip`) and a plain callee, with separate RTCP.
fn srtp_call_up(s: &Sessions, call_id: &str) {
    s.offer(
        call_id,
        "a",
        &savp("alice", 4000, ALICE_KEY),
        opts(SrtpMode::Strip),
    )
    .unwrap();
    s.answer(
        call_id,
        "a",
        "b",
        &sdp("bob", 5000, ""),
        LegOptions::default(),
    )
    .unwrap();
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::new("127.0.0.1".parse().unwrap(), port)
}

#[test]
fn settled_stream_moves_into_the_kernel_with_strict_rewrites() {
    let (s, kernel) = sessions_with_kernel();
    call_up(&s, "c", "");
    latch_all(&s, "c", true);
    let t0 = now_ns();
    s.sweep_at(t0 + 2 * SEC);
    s.sweep_at(t0 + 4 * SEC);
    assert_eq!(
        kernel.flow_count().unwrap(),
        0,
        "a source other than the SDP address waits for the latching window to close"
    );
    s.sweep_at(t0 + 11 * SEC);
    assert_eq!(
        kernel.flow_count().unwrap(),
        0,
        "must stay latched for a while first"
    );
    s.sweep_at(t0 + 12 * SEC + 1);
    // RTP and RTCP, both directions.
    assert_eq!(kernel.flow_count().unwrap(), 4);
    let q = s.query("c").unwrap();
    let (a, b) = (&q.legs[0].streams[0], &q.legs[1].streams[0]);
    assert!(a.kernel_forwarded && b.kernel_forwarded);
    let flows = kernel.0.lock().unwrap().flows.clone();
    let from_a = flows[&SocketAddr::new("127.0.0.1".parse().unwrap(), a.local_rtp.port())];
    assert_eq!(
        from_a.expected_source(),
        Some("127.0.0.10:6000".parse().unwrap())
    );
    assert_eq!(
        from_a.rewrite(),
        Some((
            SocketAddr::new("127.0.0.1".parse().unwrap(), b.local_rtp.port()),
            "127.0.0.11:6000".parse().unwrap()
        ))
    );
    let from_b_rtcp = flows[&SocketAddr::new("127.0.0.1".parse().unwrap(), b.local_rtcp.port())];
    assert_eq!(
        from_b_rtcp.expected_source(),
        Some("127.0.0.11:6001".parse().unwrap())
    );
}

#[test]
fn reinvite_takes_streams_back_to_userspace_and_keeps_kernel_counts() {
    let (s, kernel) = sessions_with_kernel();
    call_up(&s, "c", "");
    latch_all(&s, "c", false);
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    assert_eq!(kernel.flow_count().unwrap(), 2);
    let flows = kernel.0.lock().unwrap().flows.clone();
    for v in flows.values() {
        kernel.0.lock().unwrap().counters.insert(
            v.flow_id(),
            FlowCounters {
                packets: 100,
                bytes: 17200,
                ..Default::default()
            },
        );
    }
    s.offer(
        "c",
        "a",
        &sdp(
            "alice",
            4000,
            "a=sendonly
",
        ),
        LegOptions::default(),
    )
    .unwrap();
    assert_eq!(
        kernel.flow_count().unwrap(),
        0,
        "a re-offer falls back to userspace"
    );
    let q = s.query("c").unwrap();
    assert_eq!(q.legs[0].streams[0].kernel_packets, 100);
    assert_eq!(q.legs[1].streams[0].kernel_bytes, 17200);
    assert!(!q.legs[0].streams[0].kernel_forwarded);
    // On hold the stream stays in userspace however long it is latched.
    s.answer(
        "c",
        "a",
        "b",
        &sdp(
            "bob",
            5000,
            "a=recvonly
",
        ),
        LegOptions::default(),
    )
    .unwrap();
    s.sweep_at(t0 + 10 * SEC);
    s.sweep_at(t0 + 20 * SEC);
    assert_eq!(kernel.flow_count().unwrap(), 0);
    let st = s.statistics();
    assert_eq!((st.kernel_flows, st.kernel_packets), (0, 200));
}

#[test]
fn sdp_address_sources_move_into_the_kernel_inside_the_window() {
    let (s, kernel) = sessions_with_kernel();
    call_up(&s, "c", "");
    {
        let st = s.lock();
        for side in &st.calls["c"].streams[0].sides {
            side.state.set_latched(false, side.sdp_rtp);
        }
    }
    let t0 = now_ns();
    s.sweep_at(t0 + 2 * SEC);
    s.sweep_at(t0 + 3 * SEC + 1);
    assert_eq!(kernel.flow_count().unwrap(), 2);
}

#[test]
fn mixed_rtcp_mux_stays_in_userspace() {
    let (s, kernel) = sessions_with_kernel();
    s.offer(
        "c",
        "a",
        &sdp(
            "alice",
            4000,
            "a=rtcp-mux
",
        ),
        LegOptions::default(),
    )
    .unwrap();
    s.answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    latch_all(&s, "c", true);
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    assert_eq!(kernel.flow_count().unwrap(), 0);
}

#[test]
fn delete_and_shutdown_leave_no_kernel_flows() {
    let (s, kernel) = sessions_with_kernel();
    for c in ["c1", "c2", "c3"] {
        call_up(&s, c, "");
        latch_all(&s, c, true);
    }
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    assert_eq!(kernel.flow_count().unwrap(), 12);
    s.delete("c1", "", "").unwrap();
    assert_eq!(kernel.flow_count().unwrap(), 8);
    assert_eq!(s.shutdown(), 2);
    assert_eq!(kernel.flow_count().unwrap(), 0);
    assert_eq!(s.lock().flow_ids.in_use(), 0);
}

#[test]
fn srtp_stream_goes_to_the_workers_as_worker_flows() {
    let (s, kernel, plane) = sessions_with_plane(true);
    srtp_call_up(&s, "c");
    latch_all(&s, "c", true);
    // Where the engine's contexts stand when it lets the stream go.
    let (alice, bob) = {
        let st = s.lock();
        let sides = &st.calls["c"].streams[0].sides;
        (sides[0].endpoint, sides[1].endpoint)
    };
    let alice_state = StreamHandover {
        srtp_rx: srtp_state(0xa, 1 << 16 | 7, 3),
        srtp_tx: srtp_state(0xb, 9, 4),
        transcode_next_seq: None,
    };
    plane.0.lock().unwrap().handovers.insert(alice, alice_state);
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    let (alice_rx, alice_tx) = match crypto_of(&s, "c", 0) {
        SideCrypto::Terminated { rx, tx } => (rx.to_engine(), tx.to_engine()),
        other => panic!("{other:?}"),
    };
    let q = s.query("c").unwrap();
    let (a, b) = (&q.legs[0].streams[0], &q.legs[1].streams[0]);
    assert!(a.kernel_forwarded && b.kernel_forwarded);
    let st = kernel.0.lock().unwrap();
    // RTP and RTCP, both directions: four WORKER entries, each with its worker context.
    assert_eq!(st.flows.len(), 4);
    assert_eq!(st.worker_flows.len(), 4);
    for (local, v) in &st.flows {
        assert_eq!(v.action(), Some(sluice_relay::xdp::FlowAction::Worker));
        // The worker rewrites; the program only routes with the same addresses.
        let spec = &st.worker_flows[local];
        assert_eq!(v.rewrite(), Some((spec.new_src, spec.new_dst)), "{local}");
    }
    let a_rtp = local(a.local_rtp.port());
    assert_eq!(
        st.flows[&a_rtp].expected_source(),
        Some("127.0.0.10:6000".parse().unwrap())
    );
    // From the SRTP caller: unprotect with its key, nothing to protect towards bob, sent
    // from bob's relay port to bob's latched address.
    let from_a = &st.worker_flows[&a_rtp];
    // The workers continue from what the engine handed over, by message, for both legs.
    assert_eq!(from_a.handover, alice_state);
    assert_eq!(from_a.peer_handover, StreamHandover::default());
    assert!(plane.0.lock().unwrap().handed_over.contains(&bob));
    assert_eq!(from_a.rx.as_ref(), Some(&alice_rx));
    assert_eq!(from_a.tx, None);
    assert_eq!(from_a.new_src, local(b.local_rtp.port()));
    assert_eq!(from_a.new_dst, "127.0.0.11:6000".parse().unwrap());
    assert!(!from_a.rtcp_port);
    assert_eq!(
        from_a.fallback.as_ref().unwrap().local_addr().unwrap(),
        local(b.local_rtp.port()),
        "sent through a clone of bob's relay socket"
    );
    // From the plain callee: protect with sluice's key for alice.
    let from_b = &st.worker_flows[&local(b.local_rtp.port())];
    assert_eq!(
        (from_b.rx.as_ref(), from_b.tx.as_ref()),
        (None, Some(&alice_tx))
    );
    assert_eq!(
        (from_b.handover, from_b.peer_handover),
        (StreamHandover::default(), alice_state)
    );
    assert_eq!(from_b.new_dst, "127.0.0.10:6000".parse().unwrap());
    let from_b_rtcp = &st.worker_flows[&local(b.local_rtcp.port())];
    assert!(from_b_rtcp.rtcp_port);
    assert_eq!(from_b_rtcp.new_src, local(a.local_rtcp.port()));
    assert_eq!(from_b_rtcp.new_dst, "127.0.0.10:6001".parse().unwrap());
    assert_eq!(
        from_b_rtcp.fallback.as_ref().unwrap().local_addr().unwrap(),
        local(a.local_rtcp.port())
    );
}

#[test]
fn worker_flows_count_what_xdp_handed_over_and_leave_on_reoffer_and_delete() {
    let (s, kernel, plane) = sessions_with_plane(true);
    for c in ["c1", "c2"] {
        srtp_call_up(&s, c);
        latch_all(&s, c, false);
    }
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    {
        let mut st = kernel.0.lock().unwrap();
        assert_eq!((st.flows.len(), st.worker_flows.len()), (4, 4));
        let flows: Vec<(SocketAddr, u32)> =
            st.flows.iter().map(|(l, v)| (*l, v.flow_id())).collect();
        for (l, id) in flows {
            st.counters.insert(
                id,
                FlowCounters {
                    to_worker: 50,
                    ..Default::default()
                },
            );
            st.worker_counters.insert(
                l,
                crate::kernel::WorkerFlowCounters {
                    packets: 50,
                    bytes: 50 * 182,
                    forwarded: 50,
                    last_seen_ns: t0 + 30 * SEC,
                    ..Default::default()
                },
            );
        }
    }
    let q = s.query("c1").unwrap();
    assert_eq!(q.legs[0].streams[0].kernel_packets, 50);
    assert_eq!(q.legs[0].streams[0].kernel_bytes, 50 * 182);
    // Worker-only media keeps the call alive past the timeout of its userspace counters.
    assert!(s.sweep_at(t0 + 62 * SEC).is_empty());
    // What c1's workers hand back: the flow from alice knows what alice sends and what is
    // protected towards bob; the one from bob the reverse.
    let q = s.query("c1").unwrap();
    let c1_local = |k: usize| local(q.legs[k].streams[0].local_rtp.port());
    let (alice, bob) = {
        let st = s.lock();
        let sides = &st.calls["c1"].streams[0].sides;
        (sides[0].endpoint, sides[1].endpoint)
    };
    {
        let mut st = kernel.0.lock().unwrap();
        st.hand_back.insert(
            c1_local(0),
            FlowHandover {
                sender: StreamHandover {
                    srtp_rx: srtp_state(0xa, 2 << 16 | 1, 0),
                    ..Default::default()
                },
                receiver: StreamHandover::default(),
            },
        );
        st.hand_back.insert(
            c1_local(1),
            FlowHandover {
                sender: StreamHandover::default(),
                receiver: StreamHandover {
                    srtp_tx: srtp_state(0xb, 40, 12),
                    ..Default::default()
                },
            },
        );
    }
    // A re-offer takes c1 back to userspace: its XDP entries and worker contexts go.
    s.offer(
        "c1",
        "a",
        &savp("alice", 4000, ALICE_KEY),
        opts(SrtpMode::Strip),
    )
    .unwrap();
    {
        let st = kernel.0.lock().unwrap();
        assert_eq!((st.flows.len(), st.worker_flows.len()), (2, 2));
    }
    // ... and the engine continues from what they handed back, merged per endpoint.
    let resumed = plane.0.lock().unwrap().resumed.clone();
    assert_eq!(
        resumed,
        vec![
            (
                alice,
                StreamHandover {
                    srtp_rx: srtp_state(0xa, 2 << 16 | 1, 0),
                    srtp_tx: srtp_state(0xb, 40, 12),
                    transcode_next_seq: None,
                }
            ),
            (bob, StreamHandover::default()),
        ]
    );
    let q = s.query("c1").unwrap();
    assert!(!q.legs[0].streams[0].kernel_forwarded);
    assert_eq!(
        q.legs[1].streams[0].kernel_packets, 50,
        "kept after removal"
    );
    s.delete("c2", "", "").unwrap();
    {
        let st = kernel.0.lock().unwrap();
        assert_eq!((st.flows.len(), st.worker_flows.len()), (0, 0));
    }
    assert_eq!(s.statistics().kernel_packets, 200);
    // c2 went back to the engine before its endpoints were removed; nothing is left with the
    // workers.
    assert_eq!(plane.0.lock().unwrap().resumed.len(), 4);
    assert!(plane.0.lock().unwrap().handed_over.is_empty());
    s.shutdown();
    assert_eq!(s.lock().flow_ids.in_use(), 0);
}

#[test]
fn srtp_stream_stays_in_userspace_without_workers() {
    let (s, kernel) = sessions_with_kernel_and(false);
    srtp_call_up(&s, "c");
    latch_all(&s, "c", true);
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    assert_eq!(kernel.flow_count().unwrap(), 0);
    assert!(kernel.0.lock().unwrap().worker_flows.is_empty());
    // No duplicate sockets are kept either.
    assert!(
        s.lock().calls["c"].streams[0]
            .sides
            .iter()
            .all(|d| d.sockets.is_none())
    );
}

#[test]
fn transcoded_stream_goes_to_the_workers_never_to_plain_forward() {
    let (s, kernel) = sessions_with_kernel_and(true);
    transcoded_call_up(&s, "c");
    latch_all(&s, "c", true);
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    let q = s.query("c").unwrap();
    assert!(q.legs[0].streams[0].kernel_forwarded);
    let st = kernel.0.lock().unwrap();
    assert_eq!((st.flows.len(), st.worker_flows.len()), (4, 4));
    for v in st.flows.values() {
        assert_eq!(v.action(), Some(sluice_relay::xdp::FlowAction::Worker));
    }
    let from_a = &st.worker_flows[&local(q.legs[0].streams[0].local_rtp.port())];
    let plan = from_a.transcode.as_ref().unwrap();
    assert_eq!((plan.input, plan.output), (Codec::Pcmu, Codec::Opus));
    let from_b = &st.worker_flows[&local(q.legs[1].streams[0].local_rtp.port())];
    assert_eq!(from_b.transcode.as_ref().unwrap().input, Codec::Opus);
    drop(st);

    let (s, kernel) = sessions_with_kernel_and(false);
    transcoded_call_up(&s, "c");
    latch_all(&s, "c", true);
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    assert_eq!(
        kernel.flow_count().unwrap(),
        0,
        "no workers: stays in userspace"
    );
}

/// `Statistics::streams` as `(path, kind)` pairs with their counts, zeros left out.
fn stream_counts(s: &Sessions) -> Vec<(&'static str, &'static str, u64)> {
    let st = s.statistics();
    let mut out = Vec::new();
    for (path, by_kind) in STREAM_PATHS.into_iter().zip(st.streams) {
        for (kind, n) in STREAM_KINDS.into_iter().zip(by_kind) {
            if n > 0 {
                out.push((path, kind, n));
            }
        }
    }
    out
}

#[test]
fn streams_are_counted_by_path_and_kind_as_they_move() {
    let (s, _kernel) = sessions_with_kernel_and(true);
    call_up(&s, "plain", "");
    srtp_call_up(&s, "srtp");
    transcoded_call_up(&s, "tc");
    assert_eq!(
        stream_counts(&s),
        [
            ("userspace", "plain", 1),
            ("userspace", "srtp", 1),
            ("userspace", "transcoded", 1)
        ]
    );
    assert_eq!(s.statistics().transcoder_channels, 2);
    for c in ["plain", "srtp", "tc"] {
        latch_all(&s, c, true);
    }
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    assert_eq!(
        stream_counts(&s),
        [
            ("xdp", "plain", 1),
            ("worker", "srtp", 1),
            ("worker", "transcoded", 1)
        ]
    );
    assert_eq!(s.statistics().transcoder_channels, 2);
    // Signalling takes a stream back to userspace.
    s.offer(
        "srtp",
        "a",
        &savp("alice", 4000, ALICE_KEY),
        opts(SrtpMode::Strip),
    )
    .unwrap();
    assert_eq!(
        stream_counts(&s),
        [
            ("userspace", "srtp", 1),
            ("xdp", "plain", 1),
            ("worker", "transcoded", 1)
        ]
    );
    s.delete("tc", "", "").unwrap();
    assert_eq!(s.statistics().transcoder_channels, 0);
    assert_eq!(
        stream_counts(&s),
        [("userspace", "srtp", 1), ("xdp", "plain", 1)]
    );
}

#[test]
fn without_workers_srtp_and_transcoded_streams_stay_in_userspace() {
    let (s, _kernel) = sessions_with_kernel_and(false);
    call_up(&s, "plain", "");
    srtp_call_up(&s, "srtp");
    transcoded_call_up(&s, "tc");
    for c in ["plain", "srtp", "tc"] {
        latch_all(&s, c, true);
    }
    let t0 = now_ns();
    s.sweep_at(t0 + 11 * SEC);
    s.sweep_at(t0 + 13 * SEC);
    assert_eq!(
        stream_counts(&s),
        [
            ("userspace", "srtp", 1),
            ("userspace", "transcoded", 1),
            ("xdp", "plain", 1)
        ]
    );
}
