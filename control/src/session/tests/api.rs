//! The request API end to end on the fake plane: offer/answer rewriting, re-offers, hold,
//! errors, timeouts, and that no sequence of requests leaks ports or endpoints.

use super::*;
use proptest::prelude::*;
use std::net::IpAddr;

fn port_of(sdp: &str) -> u16 {
    let s = Sdp::parse(sdp).unwrap();
    s.media[0].port
}

#[test]
fn offer_answer_rewrites_addresses_and_pairs_endpoints() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    let o = s
        .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    let offer_port = port_of(&o);
    assert_eq!(offer_port % 2, 0);
    assert!((20000..=20999).contains(&offer_port));
    assert!(o.contains(&format!("a=rtcp:{} IN IP4 127.0.0.1", offer_port + 1)));
    let ans = s
        .answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    let answer_port = port_of(&ans);
    assert_ne!(offer_port, answer_port);
    let st = plane.0.lock().unwrap();
    assert_eq!(st.live.len(), 2);
    // Each endpoint's partner is the other, and each knows its own SDP address.
    let peers: Vec<_> = st
        .configured
        .values()
        .map(|(c, sig)| (c.partner.is_some(), sig.unwrap().sdp_rtp.unwrap().port()))
        .collect();
    assert!(peers.contains(&(true, 4000)) && peers.contains(&(true, 5000)));
}

#[test]
fn reoffer_keeps_ports_and_versions_follow_changes() {
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    let first = s
        .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    let same = s
        .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    assert_eq!(port_of(&first), port_of(&same));
    let v = |t: &str| Sdp::parse(t).unwrap().origin.session_version;
    assert_eq!(v(&first), v(&same), "identical re-offer keeps the version");
    let changed = s
        .offer(
            "c",
            "a",
            &sdp("alice", 4000, "a=sendonly\r\n"),
            LegOptions::default(),
        )
        .unwrap();
    assert_eq!(port_of(&first), port_of(&changed));
    assert_eq!(v(&changed), v(&first) + 1);
}

#[test]
fn hold_sets_direction_flags() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    s.answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    s.offer(
        "c",
        "a",
        &sdp("alice", 4000, "a=sendonly\r\n"),
        LegOptions::default(),
    )
    .unwrap();
    s.answer(
        "c",
        "a",
        "b",
        &sdp("bob", 5000, "a=recvonly\r\n"),
        LegOptions::default(),
    )
    .unwrap();
    let st = plane.0.lock().unwrap();
    let by_port = |p: u16| {
        st.configured
            .values()
            .find(|(_, sig)| sig.unwrap().sdp_rtp.unwrap().port() == p)
            .unwrap()
            .0
    };
    let (alice, bob) = (by_port(4000), by_port(5000));
    assert!(alice.sends && !alice.receives);
    assert!(!bob.sends && bob.receives);
}

#[test]
fn errors_name_the_problem() {
    let (s, _) = sessions(20000, 20003, Duration::from_secs(60));
    let err = s
        .offer("c", "a", "v=0\r\nbogus\r\n", LegOptions::default())
        .unwrap_err();
    assert!(
        matches!(err, SessionError::BadSdp(ref e) if e.line == 2),
        "{err}"
    );
    let err = s
        .offer("", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("call_id is required"));
    assert!(matches!(
        s.answer("x", "a", "b", &sdp("bob", 5000, ""), LegOptions::default()),
        Err(SessionError::NotFound(_))
    ));
    // 20000-20003 holds two pairs: exactly one stream.
    s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    let err = s
        .offer("d", "a", &sdp("alice", 4002, ""), LegOptions::default())
        .unwrap_err();
    assert!(matches!(err, SessionError::NoPorts(_)), "{err}");
    assert!(
        s.query("d").is_err(),
        "a failed offer leaves no call behind"
    );
    let err = s
        .offer("c", "zz", &sdp("mallory", 4000, ""), LegOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("matches neither"), "{err}");
    let two = format!(
        "{}m=video 5002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
        sdp("bob", 5000, "")
    );
    let err = s
        .answer("c", "a", "b", &two, LegOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("RFC 3264"), "{err}");
    let opts = LegOptions {
        rtcp_mux: RtcpMuxMode::Require,
        ..Default::default()
    };
    let err = s
        .answer("c", "a", "b", &sdp("bob", 5000, ""), opts)
        .unwrap_err();
    assert!(err.to_string().contains("rtcp-mux"), "{err}");
}

#[test]
fn ipv6_relay_address_by_option() {
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    let opts = LegOptions {
        family: Family::V6,
        ..Default::default()
    };
    let o = s.offer("c", "a", &sdp("alice", 4000, ""), opts).unwrap();
    let parsed = Sdp::parse(&o).unwrap();
    assert_eq!(
        parsed.media_connection(0),
        Some("::1".parse::<IpAddr>().unwrap())
    );
}

#[test]
fn timeout_sweep_deletes_idle_calls() {
    let (s, plane) = sessions(20000, 20999, Duration::ZERO);
    let mut ev = s.subscribe();
    s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    assert_eq!(s.sweep(), vec!["c".to_string()]);
    assert!(plane.0.lock().unwrap().live.is_empty());
    let st = s.statistics();
    assert_eq!((st.ports_in_use, st.calls_timed_out), (0, 1));
    assert_eq!(ev.try_recv().unwrap().kind, EventKind::CallCreated);
    assert_eq!(ev.try_recv().unwrap().kind, EventKind::TimedOut);
}

#[derive(Debug, Clone)]
enum Op {
    Offer {
        call: u8,
        streams: u8,
        reoffer_from_callee: bool,
    },
    Answer {
        call: u8,
    },
    Delete {
        call: u8,
    },
    /// An offer or answer naming a branch ("" = the one the call holds), and deleting one.
    ForkOffer {
        call: u8,
        branch: u8,
    },
    ForkAnswer {
        call: u8,
        branch: u8,
        final_answer: bool,
    },
    DeleteBranch {
        call: u8,
        branch: u8,
    },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 1u8..3, any::<bool>()).prop_map(|(call, streams, r)| Op::Offer {
            call,
            streams,
            reoffer_from_callee: r
        }),
        (0u8..4).prop_map(|call| Op::Answer { call }),
        (0u8..4).prop_map(|call| Op::Delete { call }),
        (0u8..4, 0u8..4).prop_map(|(call, branch)| Op::ForkOffer { call, branch }),
        (0u8..4, 0u8..4, any::<bool>()).prop_map(|(call, branch, final_answer)| Op::ForkAnswer {
            call,
            branch,
            final_answer
        }),
        (0u8..4, 0u8..4).prop_map(|(call, branch)| Op::DeleteBranch { call, branch }),
        Just(Op::Sweep),
    ]
}

fn multi(user: &str, streams: u8) -> String {
    let mut s = sdp(user, 4000, "");
    for k in 1..streams {
        s.push_str(&format!(
            "m=video {} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
            4000 + 2 * k as u16
        ));
    }
    s
}

/// Branch 0 is "": the branch the call holds.
fn label(branch: u8) -> String {
    if branch == 0 {
        String::new()
    } else {
        format!("br{branch}")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// No port or endpoint leaks across any offer/answer/delete/timeout sequence, with or
    /// without forking, including failures from exhaustion (the tiny range runs out often).
    /// Every parked branch has a side for each of its call's streams.
    #[test]
    fn no_port_leaks(ops in proptest::collection::vec(op(), 1..40), timeout_zero in any::<bool>()) {
        let timeout = if timeout_zero { Duration::ZERO } else { Duration::from_secs(3600) };
        let (s, plane) = sessions(21000, 21023, timeout);
        for op in ops {
            match op {
                Op::Offer { call, streams, reoffer_from_callee } => {
                    let tag = if reoffer_from_callee { "b" } else { "a" };
                    let _ = s.offer(&format!("c{call}"), tag, &multi("x", streams), LegOptions::default());
                }
                Op::Answer { call } => {
                    let _ = s.answer(&format!("c{call}"), "a", "b", &multi("y", 1), LegOptions::default());
                }
                Op::Delete { call } => { let _ = s.delete(&format!("c{call}"), "", ""); }
                Op::ForkOffer { call, branch } => {
                    let (id, label) = (format!("c{call}"), label(branch));
                    let _ = s.offer_branch(&id, "a", &label, &multi("x", 1), LegOptions::default());
                }
                Op::ForkAnswer { call, branch, final_answer } => {
                    let (id, label, to) = (format!("c{call}"), label(branch), format!("b{branch}"));
                    let sdp = multi("y", 1);
                    let opts = LegOptions::default();
                    let _ = s.answer_branch(&id, "a", &to, &label, &sdp, opts, final_answer);
                }
                Op::DeleteBranch { call, branch } => {
                    let _ = s.delete_branch(&format!("c{call}"), &label(branch));
                }
                Op::Sweep => { s.sweep(); }
            }
            // Every side of a stream, held or parked, holds a pair (2 ports) and an endpoint,
            // nothing else.
            let sides: usize = {
                let st = s.lock();
                for c in st.calls.values() {
                    for f in &c.forks {
                        prop_assert_eq!(f.state.sides.len(), c.streams.len());
                    }
                }
                let parked = |c: &model::Call| c.forks.iter().map(|f| f.state.sides.len()).sum::<usize>();
                st.calls.values().map(|c| 2 * c.streams.len() + parked(c)).sum()
            };
            let st = s.statistics();
            prop_assert_eq!(st.ports_in_use as usize, sides * 2);
            prop_assert_eq!(plane.0.lock().unwrap().live.len(), sides);
        }
        for id in s.list(0) { s.delete(&id, "", "").unwrap(); }
        let st = s.statistics();
        prop_assert_eq!(st.ports_in_use, 0);
        prop_assert!(plane.0.lock().unwrap().live.is_empty());
    }
}

/// `--max-sessions` and draining: new calls are refused at the cap, calls in progress go on
/// (re-offers and answers included), and lifting the cap lets new calls in again.
#[test]
fn the_session_limit_refuses_new_calls_only() {
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    assert_eq!(s.set_max_sessions(Some(1)), None);
    s.offer("c1", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    let e = s
        .offer("c2", "a", &sdp("alice", 4002, ""), LegOptions::default())
        .unwrap_err();
    assert!(matches!(e, SessionError::SessionLimit(1)), "{e}");
    assert!(e.to_string().starts_with("Parallel session limit reached"));
    // Draining: the call in progress is answered and re-offered; nothing new gets in.
    assert_eq!(s.set_max_sessions(Some(0)), Some(1));
    s.answer("c1", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    s.offer(
        "c1",
        "a",
        &sdp("alice", 4000, "a=sendonly\r\n"),
        LegOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        s.offer("c3", "a", &sdp("alice", 4004, ""), LegOptions::default()),
        Err(SessionError::SessionLimit(0))
    ));
    assert_eq!(s.statistics().max_sessions, Some(0));
    assert_eq!(s.set_max_sessions(None), Some(0));
    s.offer("c3", "a", &sdp("alice", 4004, ""), LegOptions::default())
        .unwrap();
    assert_eq!(s.statistics().calls_current, 2);
}

/// `--max-cpu` / `--max-load`: while a reading is above its limit new calls are refused, calls
/// in progress go on; when it drops, new calls are taken again.
#[test]
fn load_limits_refuse_new_calls_only_while_exceeded() {
    use crate::load::{LoadLimits, Overload};
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    s.set_load_limits(LoadLimits {
        max_load: Some(4.0),
        max_cpu: Some(85.0),
    });
    s.offer("c1", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .expect("no reading yet refuses nothing");
    s.load_gauge().set(Some(1.0), Some(97.5));
    let e = s
        .offer("c2", "a", &sdp("alice", 4002, ""), LegOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, SessionError::Overloaded(Overload::Cpu { .. })),
        "{e}"
    );
    assert_eq!(e.sip_status(), 503);
    assert!(e.to_string().contains("97.5%"), "{e}");
    s.answer("c1", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .expect("the call in progress is answered");
    s.load_gauge().set(Some(6.0), Some(10.0));
    assert!(matches!(
        s.offer("c2", "a", &sdp("alice", 4002, ""), LegOptions::default()),
        Err(SessionError::Overloaded(Overload::Load { .. }))
    ));
    s.load_gauge().set(Some(0.5), None);
    s.offer("c2", "a", &sdp("alice", 4002, ""), LegOptions::default())
        .expect("under the limits again");
    assert_eq!(s.statistics().calls_current, 2);
}
