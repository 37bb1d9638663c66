//! rtpengine's ng protocol over UDP, as Kamailio's and OpenSIPS' `rtpengine` modules speak it:
//! a call set up with offer/answer carries media, a retransmitted offer gets the first reply
//! without allocating again, failures use the strings those modules match, and malformed
//! datagrams get an error reply while the daemon keeps serving.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sluice_control::ng::bencode::Value;
use sluice_tests::*;

struct Ng {
    sock: UdpSocket,
    to: SocketAddr,
}

impl Ng {
    fn new(port: u16) -> Ng {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Ng {
            sock,
            to: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn raw(&self, cookie: &str, body: &[u8]) -> Vec<u8> {
        let mut d = format!("{cookie} ").into_bytes();
        d.extend_from_slice(body);
        self.sock.send_to(&d, self.to).unwrap();
        let mut buf = vec![0u8; 65_536];
        let n = sluice_tests::recv_from_retrying(&self.sock, &mut buf)
            .expect("an ng reply")
            .0;
        buf.truncate(n);
        let prefix = format!("{cookie} ").into_bytes();
        assert!(
            buf.starts_with(&prefix),
            "reply to another cookie: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf
    }

    fn call(&self, cookie: &str, msg: Value) -> Value {
        let reply = self.raw(cookie, &msg.to_bytes());
        Value::decode(&reply[cookie.len() + 1..]).expect("a bencoded reply")
    }
}

fn offer_msg(call_id: &str, sdp: &str) -> Value {
    Value::dict([
        ("command", Value::str("offer")),
        ("call-id", Value::str(call_id)),
        ("from-tag", Value::str("caller")),
        ("sdp", Value::str(sdp)),
        ("supports", Value::List(vec![Value::str("load limit")])),
        (
            "replace",
            Value::List(vec![Value::str("origin"), Value::str("session-connection")]),
        ),
    ])
}

fn ports_in_use(ng: &Ng, cookie: &str) -> i64 {
    let r = ng.call(cookie, Value::dict([("command", Value::str("statistics"))]));
    match r
        .get("statistics")
        .and_then(|s| s.get("ports"))
        .and_then(|p| p.get("used"))
    {
        Some(Value::Int(n)) => *n,
        other => panic!("no statistics.ports.used in {r:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_ng_carries_media_and_a_retransmission_allocates_nothing() {
    bounded(async {
        let port = free_udp_port();
        let d = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{port}")]).await;
        let ng = Ng::new(port);
        let (caller, callee) = (Peer::v4(), Peer::v4());

        let pong = ng.call("p1", Value::dict([("command", Value::str("ping"))]));
        assert_eq!(pong.get_str("result").as_deref(), Some("pong"));

        let msg = offer_msg("ng-call-1", &caller.sdp(&[]));
        let first = ng.raw("o1", &msg.to_bytes());
        let used = ports_in_use(&ng, "s1");
        // Kamailio resends with the same cookie when the reply is late: same bytes back, and
        // no second set of ports.
        let again = ng.raw("o1", &msg.to_bytes());
        assert_eq!(first, again, "a retransmission must get the first reply");
        assert_eq!(ports_in_use(&ng, "s2"), used);

        let offer = Value::decode(&first[3..]).unwrap();
        assert_eq!(offer.get_str("result").as_deref(), Some("ok"), "{offer:?}");
        let to_callee = SdpView::parse(&offer.get_str("sdp").unwrap());
        let answer = ng.call(
            "a1",
            Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str("ng-call-1")),
                ("from-tag", Value::str("caller")),
                ("to-tag", Value::str("callee")),
                ("sdp", Value::str(&callee.sdp(&[]))),
            ]),
        );
        assert_eq!(
            answer.get_str("result").as_deref(),
            Some("ok"),
            "{answer:?}"
        );
        let to_caller = SdpView::parse(&answer.get_str("sdp").unwrap());

        for seq in 0..5u16 {
            caller.send_rtp(
                to_caller.rtp_addr(),
                &pcmu(seq, u32::from(seq) * 160, 0x1111),
            );
        }
        assert_eq!(
            callee.recv_rtp_n(5).len(),
            5,
            "callee got the caller's RTP through sluice"
        );
        for seq in 0..5u16 {
            callee.send_rtp(
                to_callee.rtp_addr(),
                &pcmu(seq, u32::from(seq) * 160, 0x2222),
            );
        }
        assert_eq!(
            caller.recv_rtp_n(5).len(),
            5,
            "caller got the callee's RTP through sluice"
        );

        let q = ng.call(
            "q1",
            Value::dict([
                ("command", Value::str("query")),
                ("call-id", Value::str("ng-call-1")),
            ]),
        );
        let packets = q
            .get("totals")
            .and_then(|t| t.get("RTP"))
            .and_then(|r| r.get("packets"));
        assert_eq!(packets, Some(&Value::Int(10)), "{q:?}");
        assert!(
            q.get("tags").and_then(|t| t.get("caller")).is_some(),
            "{q:?}"
        );

        let del = ng.call(
            "d1",
            Value::dict([
                ("command", Value::str("delete")),
                ("call-id", Value::str("ng-call-1")),
                ("from-tag", Value::str("caller")),
            ]),
        );
        assert_eq!(del.get_str("result").as_deref(), Some("ok"), "{del:?}");
        assert!(
            del.get("totals").is_some(),
            "delete carries the final stats: {del:?}"
        );
        assert_eq!(ports_in_use(&ng, "s3"), 0, "delete frees every port");
        let gone = ng.call(
            "q2",
            Value::dict([
                ("command", Value::str("query")),
                ("call-id", Value::str("ng-call-1")),
            ]),
        );
        assert_eq!(
            gone.get_str("error-reason").as_deref(),
            Some("Unknown call-id")
        );
        drop(d);
    })
    .await;
}

/// Kamailio and OpenSIPS compare `error-reason` with "Ran out of ports" to try their next relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_ports_say_ran_out_of_ports() {
    bounded(async {
        let port = free_udp_port();
        let d = Daemon::start(&[
            "--ng",
            &format!("udp:127.0.0.1:{port}"),
            "--ports",
            "31500-31503",
        ])
        .await;
        let ng = Ng::new(port);
        let caller = Peer::v4();
        let ok = ng.call("1", offer_msg("full-1", &caller.sdp(&[])));
        assert_eq!(ok.get_str("result").as_deref(), Some("ok"), "{ok:?}");
        let full = ng.call("2", offer_msg("full-2", &caller.sdp(&[])));
        assert_eq!(full.get_str("result").as_deref(), Some("error"));
        assert_eq!(
            full.get_str("error-reason").as_deref(),
            Some("Ran out of ports")
        );
        drop(d);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_the_daemon_keeps_serving() {
    bounded(async {
        let port = free_udp_port();
        let d = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{port}")]).await;
        let ng = Ng::new(port);
        let many_flags = Value::dict([
            ("command", Value::str("offer")),
            ("flags", Value::List(vec![Value::str("x"); 10_000])),
        ]);
        let huge = [
            b"d7:command5:offer3:sdp60000:".to_vec(),
            vec![b'x'; 60_000],
            b"e".to_vec(),
        ]
        .concat();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("t1", b"d7:command5:of".to_vec(), "bencode"),
            (
                "t2",
                b"d7:commandli5eee".to_vec(),
                "'command' must be a string",
            ),
            ("t3", b"l4:pinge".to_vec(), "not a dictionary"),
            ("t4", b"d7:command5:dancee".to_vec(), "Unknown command"),
            ("t5", many_flags.to_bytes(), "flags"),
            ("t6", b"d7:command5:offere".to_vec(), "No call-id"),
            ("t7", b"{\"command\": 5".to_vec(), "JSON"),
            ("t8", huge, "No call-id"),
            ("t9", vec![b'd'; 5_000], "bencode"),
        ];
        for (cookie, body, expect) in cases {
            let reply = ng.raw(cookie, &body);
            let v = Value::decode(&reply[cookie.len() + 1..]).unwrap();
            assert_eq!(
                v.get_str("result").as_deref(),
                Some("error"),
                "{cookie}: {v:?}"
            );
            let reason = v.get_str("error-reason").unwrap_or_default();
            assert!(
                reason.contains(expect),
                "{cookie}: '{reason}' lacks '{expect}'"
            );
        }
        // A datagram without a cookie cannot be answered: dropped, and nothing breaks.
        ng.sock.send_to(b"nocookie", ng.to).unwrap();
        let pong = ng.call("alive", Value::dict([("command", Value::str("ping"))]));
        assert_eq!(pong.get_str("result").as_deref(), Some("pong"));
        drop(d);
    })
    .await;
}

/// A forked INVITE as Kamailio handles it with `via-branch`: each branch's offer gets its own
/// callee-facing ports, a failed branch's delete frees only its ports, the surviving branch's
/// 200 confirms it, and the call's delete frees the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_branch_forks_get_their_own_ports_and_free_them() {
    bounded(async {
        let port = free_udp_port();
        let d = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{port}")]).await;
        let ng = Ng::new(port);
        let (caller, callee1, callee2) = (Peer::v4(), Peer::v4(), Peer::v4());
        let branch_offer = |cookie: &str, branch: &str| {
            let Value::Dict(mut d) = offer_msg("fork-1", &caller.sdp(&[])) else {
                unreachable!()
            };
            d.insert(b"via-branch".to_vec(), Value::str(branch));
            let r = ng.call(cookie, Value::Dict(d));
            assert_eq!(r.get_str("result").as_deref(), Some("ok"), "{r:?}");
            SdpView::parse(&r.get_str("sdp").unwrap()).rtp_addr()
        };
        let to_b1 = branch_offer("o1", "z9hG4bK-b1");
        let after_one = ports_in_use(&ng, "s1");
        let to_b2 = branch_offer("o2", "z9hG4bK-b2");
        let after_two = ports_in_use(&ng, "s2");
        assert_ne!(
            to_b1.port(),
            to_b2.port(),
            "each branch has ports of its own"
        );
        assert!(after_two > after_one, "{after_one} -> {after_two}");

        let answer = |cookie: &str, branch: &str, to_tag: &str, callee: &Peer, code: i64| {
            let r = ng.call(
                cookie,
                Value::dict([
                    ("command", Value::str("answer")),
                    ("call-id", Value::str("fork-1")),
                    ("from-tag", Value::str("caller")),
                    ("to-tag", Value::str(to_tag)),
                    ("via-branch", Value::str(branch)),
                    ("sip-code", Value::Int(code)),
                    ("sdp", Value::str(&callee.sdp(&[]))),
                ]),
            );
            assert_eq!(r.get_str("result").as_deref(), Some("ok"), "{r:?}");
        };
        answer("a1", "z9hG4bK-b1", "callee-1", &callee1, 183);
        answer("a2", "z9hG4bK-b2", "callee-2", &callee2, 183);

        // Branch 1 fails (486): Kamailio deletes it by its branch.
        let del = ng.call(
            "d1",
            Value::dict([
                ("command", Value::str("delete")),
                ("call-id", Value::str("fork-1")),
                ("from-tag", Value::str("caller")),
                ("via-branch", Value::str("z9hG4bK-b1")),
            ]),
        );
        assert_eq!(del.get_str("result").as_deref(), Some("ok"), "{del:?}");
        assert_eq!(
            ports_in_use(&ng, "s3"),
            after_one,
            "branch 1's ports are free again"
        );

        answer("a3", "z9hG4bK-b2", "callee-2", &callee2, 200);
        let q = ng.call(
            "q1",
            Value::dict([
                ("command", Value::str("query")),
                ("call-id", Value::str("fork-1")),
            ]),
        );
        assert!(
            q.get("tags").and_then(|t| t.get("callee-2")).is_some(),
            "{q:?}"
        );
        let del = ng.call(
            "d2",
            Value::dict([
                ("command", Value::str("delete")),
                ("call-id", Value::str("fork-1")),
                ("from-tag", Value::str("caller")),
            ]),
        );
        assert_eq!(del.get_str("result").as_deref(), Some("ok"), "{del:?}");
        assert_eq!(ports_in_use(&ng, "s4"), 0);
        drop(d);
    })
    .await;
}

/// The session limit speaks the clients' language: Kamailio sends `supports: ["load limit"]`
/// and gets `result: load limit` (it then tries its next node silently); a client that does not
/// gets rtpengine's "Parallel session limit reached". A runtime limit of 0 set over gRPC drains
/// the node: the call in progress is still answered and deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_answers_load_limit_and_drains() {
    bounded(async {
        let port = free_udp_port();
        let d = Daemon::start(&[
            "--ng",
            &format!("udp:127.0.0.1:{port}"),
            "--max-sessions",
            "1",
        ])
        .await;
        let ng = Ng::new(port);
        let (caller, callee) = (Peer::v4(), Peer::v4());
        let first = ng.call("1", offer_msg("lim-1", &caller.sdp(&[])));
        assert_eq!(first.get_str("result").as_deref(), Some("ok"), "{first:?}");
        let limited = ng.call("2", offer_msg("lim-2", &caller.sdp(&[])));
        assert_eq!(
            limited.get_str("result").as_deref(),
            Some("load limit"),
            "{limited:?}"
        );
        let Value::Dict(mut plain) = offer_msg("lim-3", &caller.sdp(&[])) else {
            unreachable!()
        };
        plain.remove(b"supports".as_slice());
        let refused = ng.call("3", Value::Dict(plain));
        assert_eq!(refused.get_str("result").as_deref(), Some("error"));
        assert_eq!(
            refused.get_str("error-reason").as_deref(),
            Some("Parallel session limit reached")
        );

        let mut c = d.client().await;
        let reply = c
            .set_max_sessions(pb::SetMaxSessionsRequest {
                max_sessions: Some(0),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.previous, reply.calls_current), (Some(1), 1));
        let answer = ng.call(
            "4",
            Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str("lim-1")),
                ("from-tag", Value::str("caller")),
                ("to-tag", Value::str("callee")),
                ("sdp", Value::str(&callee.sdp(&[]))),
            ]),
        );
        assert_eq!(
            answer.get_str("result").as_deref(),
            Some("ok"),
            "draining keeps calls: {answer:?}"
        );
        let stats = c
            .statistics(pb::StatisticsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.max_sessions, Some(0));
        let del = ng.call(
            "5",
            Value::dict([
                ("command", Value::str("delete")),
                ("call-id", Value::str("lim-1")),
            ]),
        );
        assert_eq!(del.get_str("result").as_deref(), Some("ok"));
        let still = ng.call("6", offer_msg("lim-4", &caller.sdp(&[])));
        assert_eq!(
            still.get_str("result").as_deref(),
            Some("load limit"),
            "drained: {still:?}"
        );
        c.set_max_sessions(pb::SetMaxSessionsRequest { max_sessions: None })
            .await
            .unwrap();
        let open = ng.call("7", offer_msg("lim-5", &caller.sdp(&[])));
        assert_eq!(open.get_str("result").as_deref(), Some("ok"), "{open:?}");
        drop(d);
    })
    .await;
}

/// `--max-cpu`: while more of the machine's CPU is busy than allowed, new calls get
/// `result: load limit` (Kamailio, which `supports` it) or rtpengine's "CPU usage limit
/// exceeded" (the string OpenSIPS matches). The test keeps one core busy so that a 1% limit
/// is exceeded on any machine; the sampler reads /proc/stat once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_host_answers_load_limit_with_max_cpu() {
    bounded(async {
        let port = free_udp_port();
        let d = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{port}"), "--max-cpu", "1"]).await;
        assert!(
            d.log_text().contains("host load limits"),
            "{}",
            d.log_text()
        );
        let spin = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let s = spin.clone();
        let burner = std::thread::spawn(move || {
            let mut x = 0u64;
            while s.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        let ng = Ng::new(port);
        let caller = Peer::v4();
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        let mut i = 0;
        let limited = loop {
            i += 1;
            let r = ng.call(
                &format!("c{i}"),
                offer_msg(&format!("cpu-{i}"), &caller.sdp(&[])),
            );
            if r.get_str("result").as_deref() == Some("load limit")
                || std::time::Instant::now() > deadline
            {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            limited.get_str("result").as_deref(),
            Some("load limit"),
            "{limited:?}\n{}",
            d.log_text()
        );
        let Value::Dict(mut plain) = offer_msg("cpu-plain", &caller.sdp(&[])) else {
            unreachable!()
        };
        plain.remove(b"supports".as_slice());
        let refused = ng.call("plain", Value::Dict(plain));
        assert_eq!(
            refused.get_str("error-reason").as_deref(),
            Some("CPU usage limit exceeded"),
            "{refused:?}"
        );
        spin.store(false, std::sync::atomic::Ordering::Relaxed);
        burner.join().unwrap();
        assert!(
            d.log_text()
                .contains("refusing new calls until the load drops"),
            "one log line when the limit trips\n{}",
            d.log_text()
        );
        drop(d);
    })
    .await;
}

/// MOS from the endpoints' RTCP, in the shape Kamailio's `mos_*` variables read: each side's SR
/// crosses the relay, the other side answers with an RR naming it (LSR) and its own delay
/// (DLSR); the relay turns that into a round trip, and the RR's loss and jitter into a MOS by
/// the E-model. `query` then carries `SSRC` entries keyed by the reported-on source with
/// average, lowest and highest MOS; gRPC's Query carries the same per stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_reports_give_mos_in_the_ssrc_dictionary() {
    bounded(async {
        let port = free_udp_port();
        let d = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{port}")]).await;
        let ng = Ng::new(port);
        let (caller, callee) = (Peer::v4(), Peer::v4());
        let offer = ng.call("o", offer_msg("mos-1", &caller.sdp(&[])));
        let to_callee = SdpView::parse(&offer.get_str("sdp").unwrap());
        let answer = ng.call(
            "a",
            Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str("mos-1")),
                ("from-tag", Value::str("caller")),
                ("to-tag", Value::str("callee")),
                ("sdp", Value::str(&callee.sdp(&[]))),
            ]),
        );
        let to_caller = SdpView::parse(&answer.get_str("sdp").unwrap());
        let (a_ssrc, b_ssrc) = (0xA0A0_0001u32, 0xB0B0_0002u32);
        for seq in 0..3u16 {
            caller.send_rtp(
                to_caller.rtp_addr(),
                &pcmu(seq, u32::from(seq) * 160, a_ssrc),
            );
            callee.send_rtp(
                to_callee.rtp_addr(),
                &pcmu(seq, u32::from(seq) * 160, b_ssrc),
            );
        }
        assert_eq!(callee.recv_rtp_n(3).len(), 3);
        assert_eq!(caller.recv_rtp_n(3).len(), 3);

        // Each SR crosses the relay; 30 ms later the other side reports on it, saying it held
        // it 10 ms (655/65536 s): the relay measures each leg's round trip as about 20 ms.
        for (sender, receiver, to_relay, back_to_relay, ssrc, peer_ssrc, packets, fraction) in [
            (
                &caller,
                &callee,
                to_caller.rtcp_addr(),
                to_callee.rtcp_addr(),
                a_ssrc,
                b_ssrc,
                5,
                13u8,
            ),
            (
                &callee,
                &caller,
                to_callee.rtcp_addr(),
                to_caller.rtcp_addr(),
                b_ssrc,
                a_ssrc,
                7,
                0u8,
            ),
        ] {
            sender.send_rtcp(to_relay, &rtcp_sr(ssrc, 480, packets, 480));
            assert!(receiver.recv_rtcp().is_some(), "the SR crossed the relay");
            std::thread::sleep(Duration::from_millis(30));
            receiver.send_rtcp(
                back_to_relay,
                &rtcp_rr(peer_ssrc, ssrc, fraction, 80, rtcp_sr_ntp_mid(packets), 655),
            );
            assert!(sender.recv_rtcp().is_some(), "the RR crossed the relay");
        }
        // The reports reach the session layer beside the forwarding: allow them a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let q = loop {
            let q = ng.call(
                &format!("q{}", deadline.elapsed().as_nanos()),
                Value::dict([
                    ("command", Value::str("query")),
                    ("call-id", Value::str("mos-1")),
                ]),
            );
            let n = match q.get("SSRC") {
                Some(Value::Dict(m)) => m.len(),
                _ => 0,
            };
            if n == 2 || std::time::Instant::now() > deadline {
                break q;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let entry = |ssrc: u32, which: &str, key: &str| -> i64 {
            match q
                .get("SSRC")
                .and_then(|m| m.get(&ssrc.to_string()))
                .and_then(|e| e.get(which))
                .and_then(|p| p.get(key))
            {
                Some(Value::Int(i)) => *i,
                other => panic!("SSRC.{ssrc}.{which}.{key}: {other:?} in {q:?}"),
            }
        };
        // The caller's media as the callee reports it: 13/256 lost (5%), 10 ms jitter.
        assert_eq!(entry(a_ssrc, "average MOS", "packet loss"), 5);
        assert_eq!(entry(a_ssrc, "average MOS", "jitter"), 10);
        assert_eq!(entry(a_ssrc, "average MOS", "samples"), 1);
        assert_eq!(entry(b_ssrc, "average MOS", "packet loss"), 0);
        let (mos_a, mos_b) = (
            entry(a_ssrc, "average MOS", "MOS"),
            entry(b_ssrc, "average MOS", "MOS"),
        );
        assert!(
            (30..=44).contains(&mos_a) && (40..=44).contains(&mos_b),
            "{mos_a} {mos_b}"
        );
        assert!(mos_a < mos_b, "5% loss costs MOS: {mos_a} vs {mos_b}");
        assert_eq!(entry(a_ssrc, "lowest MOS", "MOS"), mos_a);
        // The callee's leg was measured from the first exchange, the caller's from the
        // second; the caller's report then knows both legs.
        let leg = entry(a_ssrc, "average MOS", "round-trip time leg");
        assert!((15_000..1_000_000).contains(&leg), "callee's leg {leg} us");
        let both = entry(b_ssrc, "average MOS", "round-trip time");
        let caller_leg = entry(b_ssrc, "average MOS", "round-trip time leg");
        assert_eq!(both, caller_leg + leg, "end to end = both legs");
        assert!(entry(a_ssrc, "highest MOS", "reported at") > 1_700_000_000);
        println!("MOS x10: {mos_a} (5% loss), {mos_b}; legs {leg} + {caller_leg} us");

        let reply = d
            .client()
            .await
            .query(pb::QueryRequest {
                call_id: "mos-1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let callee_leg = &reply.call.unwrap().legs[1].streams[0];
        let quality = callee_leg.quality.as_ref().expect("the callee's reports");
        assert_eq!((quality.ssrc, quality.samples), (a_ssrc, 1));
        let avg = quality.average.as_ref().unwrap();
        assert!((avg.mos.unwrap() * 10.0).round() as i64 == mos_a, "{avg:?}");
        drop(d);
    })
    .await;
}
