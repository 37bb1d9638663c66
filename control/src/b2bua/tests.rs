//! The B2BUA driven in simulated time by a scripted caller (A) and callee (B): SIP text in,
//! what sluice sends out checked header by header, with a recording media plane. No socket,
//! no sleep.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_relay::engine::{Command, EndpointId, EngineGone};
use sluice_sip::{HeaderName, Limits, Message, Method, parse_datagram};

use super::*;
use crate::codecs::TranscodeMode;
use crate::session::{MediaPlane, SessionConfig, SessionEnv, Sessions};

#[derive(Clone, Default)]
struct Plane(Arc<Mutex<HashSet<EndpointId>>>);
impl MediaPlane for Plane {
    fn send(&mut self, cmd: Command) -> Result<(), EngineGone> {
        let mut live = self.0.lock().unwrap();
        match cmd {
            Command::Add { id, .. } => assert!(live.insert(id)),
            Command::Remove { id } => assert!(live.remove(&id)),
            Command::Pool { .. } | Command::Reuse { .. } => panic!("no socket pool here"),
            _ => {}
        }
        Ok(())
    }
}

const SLUICE: &str = "127.0.0.1:5060";
const A: &str = "127.0.0.1:5070";
const B: &str = "127.0.0.1:5080";
/// A second route (failover).
const B2: &str = "127.0.0.1:5090";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp(s: &str) -> Peer {
    Peer {
        transport: sluice_sip::Transport::Udp,
        addr: sa(s),
    }
}

struct Sim {
    b2b: B2bua,
    plane: Plane,
    sessions: Arc<Sessions>,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(tune: impl FnOnce(&mut B2buaConfig)) -> Self {
        let plane = Plane::default();
        let sessions = Sessions::new(
            SessionConfig {
                media_ips: vec!["127.0.0.1".parse().unwrap()],
                port_low: 30_000,
                port_high: 30_999,
                timeout: Duration::from_secs(60),
                transcode: TranscodeMode::Auto,
                opus_complexity: sluice_relay::transcode::DEFAULT_OPUS_COMPLEXITY,
                opus_bitrate: sluice_relay::transcode::OpusParams::default().bitrate,
                socket_pool: 0,
            },
            SessionEnv::system(),
            Box::new(plane.clone()),
            None,
        )
        .unwrap();
        let mut cfg = B2buaConfig::udp(sa(SLUICE), sa(B));
        tune(&mut cfg);
        Self {
            b2b: B2bua::new(cfg, sessions.clone(), 7),
            plane,
            sessions,
            now: Instant::now(),
        }
    }

    fn from(&mut self, who: &str, text: &str) {
        let bytes = text.replace('\n', "\r\n");
        self.b2b.on_bytes(bytes.as_bytes(), udp(who), self.now);
    }

    fn send(&mut self, who: &str, m: &Message) {
        self.b2b.on_bytes(&m.to_bytes(), udp(who), self.now);
    }

    /// Everything sluice sent since the last call, to A and to B.
    fn out(&mut self) -> (Vec<Message>, Vec<Message>) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        while let Some(t) = self.b2b.poll_transmit() {
            let m = parse_datagram(&t.bytes, &Limits::default()).expect("sluice sends SIP");
            match t.peer.addr {
                x if x == sa(A) => a.push(m),
                x if x == sa(B) || x == sa(B2) => b.push(m),
                x => panic!("sent to {x}"),
            }
        }
        (a, b)
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.b2b.poll_timeout() {
            if t > end {
                break;
            }
            self.now = t.max(self.now);
            self.b2b.handle_timeout(self.now);
        }
        self.now = end;
        self.b2b.handle_timeout(self.now);
    }

    /// Nothing left: calls, transactions, media endpoints, sessions.
    fn assert_clean(&mut self) {
        self.advance(Duration::from_secs(40));
        self.out();
        assert_eq!(self.b2b.live(), (0, 0), "calls and transactions left");
        assert!(
            self.plane.0.lock().unwrap().is_empty(),
            "media endpoints left"
        );
        assert!(self.sessions.list(10).is_empty(), "media sessions left");
    }
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=x 1 1 IN IP4 10.9.9.9\r\ns=-\r\nc=IN IP4 10.9.9.9\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

fn invite(branch: &str, body: Option<&str>) -> String {
    let (ct, b) = match body {
        Some(b) => ("Content-Type: application/sdp\n", b.replace("\r\n", "\n")),
        None => ("", String::new()),
    };
    format!(
        "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5070;branch={branch};rport
Max-Forwards: 70
From: \"Alice\" <sip:alice@example.com>;tag=alice1
To: <sip:bob@example.com>
Call-ID: a-call-1@10.0.0.1
CSeq: 1 INVITE
Contact: <sip:alice@10.0.0.1:5070>
Record-Route: <sip:proxy.internal.example;lr>
{ct}Content-Length: {}

{b}",
        b.replace('\n', "\r\n").len()
    )
}

/// B's response to `req` with its tag, Contact and an optional SDP.
fn answer(req: &Message, code: u16, tag: &str, body: Option<&str>) -> Message {
    let mut r = sluice_sip::response_for(req, code, None);
    if code > 100 {
        let to = r
            .headers
            .iter_mut()
            .find(|h| h.name == HeaderName::To)
            .unwrap();
        to.value = format!("{};tag={tag}", to.value);
    }
    r.push(HeaderName::Contact, "<sip:bob@127.0.0.1:5080>");
    if let Some(b) = body {
        r.push(HeaderName::ContentType, "application/sdp");
        r.body = b.as_bytes().to_vec();
    }
    r
}

/// A request from A in the dialog sluice made with it (`to_tag` is sluice's tag for A).
fn from_a(method: &str, cseq: u32, to_tag: &str, branch: &str, body: Option<&str>) -> String {
    let (ct, b) = match body {
        Some(b) => ("Content-Type: application/sdp\n", b.to_owned()),
        None => ("", String::new()),
    };
    format!(
        "{method} sip:sluice@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:5070;branch={branch}
Max-Forwards: 70
From: \"Alice\" <sip:alice@example.com>;tag=alice1
To: <sip:bob@example.com>;tag={to_tag}
Call-ID: a-call-1@10.0.0.1
CSeq: {cseq} {}
Contact: <sip:alice@10.0.0.1:5070>
{ct}Content-Length: {}

{}",
        if method == "ACK" { "ACK" } else { method },
        b.len(),
        b.replace("\r\n", "\n")
    )
}

fn sdp_of(m: &Message) -> String {
    String::from_utf8(m.body.clone()).unwrap()
}

/// Runs A's INVITE to B's 200 and A's ACK; returns (B's INVITE, sluice's tag for A).
fn establish(sim: &mut Sim) -> (Message, String) {
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a[0].code(), Some(100));
    let b_inv = to_b.into_iter().next().expect("INVITE to B");
    sim.send(B, &answer(&b_inv, 180, "bob1", None));
    sim.send(B, &answer(&b_inv, 200, "bob1", Some(&sdp(5000))));
    let (to_a, to_b) = sim.out();
    let ok = to_a
        .iter()
        .find(|m| m.code() == Some(200))
        .expect("200 to A");
    assert!(
        to_b.iter().any(|m| m.method() == Some(&Method::Ack)),
        "ACK to B"
    );
    let tag = ok.to_hdr().unwrap().tag().unwrap().to_owned();
    sim.from(A, &from_a("ACK", 1, &tag, "z9hG4bKack1", None));
    (b_inv, tag)
}

#[test]
fn a_call_goes_through_with_a_new_identity_on_leg_b_and_media_through_the_relay() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_a[0].code(), Some(100));
    assert_eq!(to_b.len(), 1);
    let inv = &to_b[0];
    // Topology hiding: nothing of A's signalling path reaches B.
    let text = String::from_utf8(inv.to_bytes()).unwrap();
    for leak in [
        "a-call-1",
        "10.0.0.1",
        "alice1",
        "proxy.internal",
        "z9hG4bKa1",
        "10.9.9.9",
    ] {
        assert!(!text.contains(leak), "{leak} leaked to B:\n{text}");
    }
    assert_eq!(
        inv.request_uri().unwrap().to_string(),
        "sip:bob@127.0.0.1:5080"
    );
    assert_eq!(
        inv.from_hdr().unwrap().uri.to_string(),
        "sip:alice@example.com"
    );
    assert!(inv.from_hdr().unwrap().tag().is_some());
    assert_eq!(inv.max_forwards().unwrap(), Some(69));
    assert!(
        sdp_of(inv).contains("c=IN IP4 127.0.0.1"),
        "relay address in the offer"
    );
    assert!(
        sdp_of(inv).contains("o=x 1 1 IN IP4 127.0.0.1"),
        "o= rewritten"
    );

    sim.send(B, &answer(inv, 180, "bob1", None));
    let (to_a, _) = sim.out();
    assert_eq!(to_a[0].code(), Some(180));
    let a_tag = to_a[0].to_hdr().unwrap().tag().unwrap().to_owned();
    assert_ne!(a_tag, "bob1", "B's tag does not reach A");

    sim.send(B, &answer(inv, 200, "bob1", Some(&sdp(5000))));
    let (to_a, to_b) = sim.out();
    let ack = &to_b[0];
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(
        ack.request_uri().unwrap().to_string(),
        "sip:bob@127.0.0.1:5080"
    );
    assert_eq!(ack.to_hdr().unwrap().tag(), Some("bob1"));
    let ok = &to_a[0];
    assert_eq!(ok.code(), Some(200));
    assert_eq!(ok.to_hdr().unwrap().tag(), Some(a_tag.as_str()));
    assert_eq!(ok.call_id().unwrap(), "a-call-1@10.0.0.1");
    let ok_text = String::from_utf8(ok.to_bytes()).unwrap();
    assert!(!ok_text.contains("bob@127.0.0.1:5080") && !ok_text.contains("10.9.9.9"));
    assert!(
        ok.header(&HeaderName::Contact)
            .unwrap()
            .contains("127.0.0.1:5060")
    );
    // received/rport stamped on A's Via (RFC 3581).
    assert!(
        ok.header(&HeaderName::Via)
            .unwrap()
            .contains("received=127.0.0.1")
    );
    assert!(ok.header(&HeaderName::Via).unwrap().contains("rport=5070"));

    sim.from(A, &from_a("ACK", 1, &a_tag, "z9hG4bKack1", None));
    assert_eq!(sim.b2b.calls().len(), 1);
    assert_eq!(sim.b2b.calls()[0].state, "confirmed");
    // No 2xx retransmission after the ACK.
    sim.advance(Duration::from_secs(5));
    assert!(sim.out().0.is_empty());

    sim.from(A, &from_a("BYE", 2, &a_tag, "z9hG4bKbye1", None));
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a[0].code(), Some(200));
    let bye = &to_b[0];
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.cseq().unwrap().seq, 2);
    sim.send(B, &answer(bye, 200, "bob1", None));
    let r = sim.b2b.poll_record().expect("a call record");
    assert_eq!((r.code, r.reason.as_str()), (200, "caller hung up"));
    assert!(r.answer_ms.is_some());
    sim.assert_clean();
}

#[test]
fn the_callee_hangs_up_and_the_caller_gets_the_bye() {
    let mut sim = Sim::new();
    let (b_inv, a_tag) = establish(&mut sim);
    let mut d = sluice_sip::Dialog::uas(&b_inv, "bob1").unwrap();
    d.remote_target = sluice_sip::Uri::parse("sip:sluice@127.0.0.1:5060").unwrap();
    let via = Via::new(
        "UDP",
        Host::V4("127.0.0.1".parse().unwrap()),
        Some(5080),
        "z9hG4bKbb1",
    );
    let bye = d.request(Method::Bye, &via, None);
    sim.send(B, &bye);
    let (to_a, to_b) = sim.out();
    assert_eq!(to_b[0].code(), Some(200));
    let bye_a = &to_a[0];
    assert_eq!(bye_a.method(), Some(&Method::Bye));
    assert_eq!(
        bye_a.request_uri().unwrap().to_string(),
        "sip:alice@10.0.0.1:5070"
    );
    assert_eq!(bye_a.from_hdr().unwrap().tag(), Some(a_tag.as_str()));
    assert_eq!(bye_a.to_hdr().unwrap().tag(), Some("alice1"));
    assert_eq!(bye_a.call_id().unwrap(), "a-call-1@10.0.0.1");
    // A's dialog has its Record-Route as the route set (RFC 3261 12.1.1).
    assert_eq!(
        bye_a.header(&HeaderName::Route),
        Some("<sip:proxy.internal.example;lr>")
    );
    sim.send(A, &sluice_sip::response_for(bye_a, 200, None));
    sim.assert_clean();
}

#[test]
fn cancel_before_answer_gives_487_to_the_caller_and_cancels_the_callee() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    let inv = to_b[0].clone();
    sim.send(B, &answer(&inv, 180, "bob1", None));
    sim.out();
    let cancel = invite("z9hG4bKa1", None)
        .replace("INVITE sip:bob", "CANCEL sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    sim.from(A, &cancel);
    let (to_a, to_b) = sim.out();
    let codes: Vec<_> = to_a.iter().filter_map(Message::code).collect();
    assert!(codes.contains(&200) && codes.contains(&487), "{codes:?}");
    let c = &to_b[0];
    assert_eq!(c.method(), Some(&Method::Cancel));
    // RFC 3261 9.1: the CANCEL matches the INVITE's branch and CSeq number.
    assert_eq!(
        c.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    assert_eq!(c.cseq().unwrap().seq, 1);
    sim.send(B, &sluice_sip::response_for(c, 200, None));
    sim.send(B, &answer(&inv, 487, "bob1", None));
    let (_, to_b) = sim.out();
    assert_eq!(
        to_b[0].method(),
        Some(&Method::Ack),
        "the transaction layer ACKs the 487"
    );
    // A ACKs its 487.
    let ack = invite("z9hG4bKa1", None)
        .replace("INVITE sip:bob", "ACK sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
    sim.from(A, &ack);
    sim.assert_clean();
}

#[test]
fn a_cancel_before_any_provisional_waits_for_one_rfc3261_9_1() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    let inv = to_b[0].clone();
    let cancel = invite("z9hG4bKa1", None)
        .replace("INVITE sip:bob", "CANCEL sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    sim.from(A, &cancel);
    let (_, to_b) = sim.out();
    assert!(to_b.is_empty(), "no CANCEL before B's provisional");
    sim.send(B, &answer(&inv, 100, "", None));
    let (_, to_b) = sim.out();
    assert_eq!(to_b[0].method(), Some(&Method::Cancel));
}

#[test]
fn failures_from_the_callee_are_passed_on_by_class() {
    for (code, expect) in [(486, 486), (503, 503), (404, 404), (603, 603), (302, 480)] {
        let mut sim = Sim::new();
        sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
        let (_, to_b) = sim.out();
        sim.send(B, &answer(&to_b[0], code, "bob1", None));
        let (to_a, to_b) = sim.out();
        assert_eq!(to_a.last().unwrap().code(), Some(expect), "{code}");
        assert!(
            !String::from_utf8(to_a.last().unwrap().to_bytes())
                .unwrap()
                .contains("bob@127.0.0.1")
        );
        assert_eq!(to_b[0].method(), Some(&Method::Ack));
        let ack = invite("z9hG4bKa1", None)
            .replace("INVITE sip:bob", "ACK sip:bob")
            .replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
        sim.from(A, &ack);
        assert_eq!(sim.b2b.poll_record().unwrap().code, code);
        sim.assert_clean();
    }
}

#[test]
fn a_retransmitted_invite_is_absorbed_not_sent_twice() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    sim.out();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (to_a, to_b) = sim.out();
    assert!(to_b.is_empty(), "no second INVITE to B");
    assert_eq!(to_a[0].code(), Some(100));
    assert_eq!(sim.b2b.live().0, 1);
}

#[test]
fn a_second_fork_answering_gets_ack_then_bye() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    let inv = to_b[0].clone();
    sim.send(B, &answer(&inv, 200, "fork1", Some(&sdp(5000))));
    sim.out();
    sim.send(B, &answer(&inv, 200, "fork2", Some(&sdp(5002))));
    let (to_a, to_b) = sim.out();
    assert!(to_a.is_empty(), "the losing fork's 200 does not reach A");
    let methods: Vec<_> = to_b
        .iter()
        .map(|m| {
            (
                m.method().cloned(),
                m.to_hdr().unwrap().tag().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [
            (Some(Method::Ack), Some("fork2".to_owned())),
            (Some(Method::Bye), Some("fork2".to_owned()))
        ]
    );
}

#[test]
fn an_unacked_2xx_is_retransmitted_then_the_call_ends_rfc3261_13_3_1_4() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    let inv = to_b[0].clone();
    sim.send(B, &answer(&inv, 200, "bob1", Some(&sdp(5000))));
    sim.out();
    let mut at = Vec::new();
    let start = sim.now;
    for _ in 0..400 {
        sim.advance(Duration::from_millis(100));
        let (to_a, to_b) = sim.out();
        for m in to_a {
            if m.code() == Some(200) {
                at.push((sim.now - start).as_millis() / 100 * 100);
            }
        }
        if to_b.iter().any(|m| m.method() == Some(&Method::Bye)) {
            break;
        }
    }
    // T1 doubling, capped at T2 = 4 s.
    assert_eq!(&at[..5], &[500, 1500, 3500, 7500, 11500]);
    assert_eq!(sim.b2b.live().0, 0, "the call ended after 64*T1");
}

#[test]
fn timer_b_ends_an_unanswered_call_with_408() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    sim.out();
    sim.advance(Duration::from_secs(33));
    let (to_a, _) = sim.out();
    assert_eq!(to_a.last().unwrap().code(), Some(408));
    assert_eq!(sim.b2b.live().0, 0);
}

#[test]
fn a_reinvite_for_hold_goes_through_the_media_session_to_the_other_leg() {
    let mut sim = Sim::new();
    let (_, a_tag) = establish(&mut sim);
    sim.out();
    let hold = sdp(4000) + "a=sendonly\r\n";
    sim.from(A, &from_a("INVITE", 2, &a_tag, "z9hG4bKre1", Some(&hold)));
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a[0].code(), Some(100));
    let re = &to_b[0];
    assert_eq!(re.method(), Some(&Method::Invite));
    assert_eq!(re.to_hdr().unwrap().tag(), Some("bob1"));
    assert!(sdp_of(re).contains("a=sendonly"), "{}", sdp_of(re));
    assert!(sdp_of(re).contains("c=IN IP4 127.0.0.1"));
    // A second re-INVITE while this one is pending: 491 (RFC 3261 14.2).
    sim.from(A, &from_a("INVITE", 3, &a_tag, "z9hG4bKre2", Some(&hold)));
    let (to_a, _) = sim.out();
    assert!(to_a.iter().any(|m| m.code() == Some(491)));
    sim.send(
        B,
        &answer(re, 200, "bob1", Some(&(sdp(5000) + "a=recvonly\r\n"))),
    );
    let (to_a, to_b) = sim.out();
    assert_eq!(to_b[0].method(), Some(&Method::Ack));
    assert_eq!(to_b[0].cseq().unwrap().seq, re.cseq().unwrap().seq);
    let ok = &to_a[0];
    assert_eq!(ok.code(), Some(200));
    assert!(sdp_of(ok).contains("a=recvonly"));
    assert!(!sdp_of(ok).contains("10.9.9.9"));
}

#[test]
fn a_late_offer_takes_the_offer_from_the_2xx_and_the_answer_from_the_ack() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", None));
    let (_, to_b) = sim.out();
    let inv = to_b[0].clone();
    assert!(inv.body.is_empty(), "no SDP invented for B");
    sim.send(B, &answer(&inv, 200, "bob1", Some(&sdp(5000))));
    let (to_a, to_b) = sim.out();
    assert!(to_b.is_empty(), "B's ACK waits for A's answer");
    let ok = &to_a[0];
    assert!(sdp_of(ok).contains("c=IN IP4 127.0.0.1"));
    let tag = ok.to_hdr().unwrap().tag().unwrap().to_owned();
    sim.from(A, &from_a("ACK", 1, &tag, "z9hG4bKack1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    let ack = &to_b[0];
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert!(
        sdp_of(ack).contains("c=IN IP4 127.0.0.1"),
        "answer in the ACK"
    );
}

#[test]
fn options_unsupported_methods_extensions_and_limits_get_their_answers() {
    let mut sim = Sim::with(|c| c.max_calls = Some(1));
    let opts = invite("z9hG4bKo1", None)
        .replace("INVITE sip:bob", "OPTIONS sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
    sim.from(A, &opts);
    let (to_a, _) = sim.out();
    assert_eq!(to_a[0].code(), Some(200));
    assert_eq!(to_a[0].header(&HeaderName::Allow), Some(ALLOW));
    let reg = invite("z9hG4bKr1", None)
        .replace("INVITE sip:bob", "REGISTER sip:bob")
        .replace("CSeq: 1 INVITE", "CSeq: 1 REGISTER");
    sim.from(A, &reg);
    let (to_a, _) = sim.out();
    assert_eq!(to_a[0].code(), Some(405));
    assert_eq!(to_a[0].header(&HeaderName::Allow), Some(ALLOW));
    let req = invite("z9hG4bKx1", Some(&sdp(4000))).replace(
        "Max-Forwards: 70",
        "Max-Forwards: 70\nRequire: timer, sec-agree",
    );
    sim.from(A, &req);
    let (to_a, _) = sim.out();
    let r = to_a.iter().find(|m| m.code() == Some(420)).expect("420");
    assert_eq!(r.header(&HeaderName::Unsupported), Some("sec-agree"));
    sim.from(
        A,
        &invite("z9hG4bKm1", Some(&sdp(4000))).replace("Max-Forwards: 70", "Max-Forwards: 0"),
    );
    let (to_a, _) = sim.out();
    assert!(to_a.iter().any(|m| m.code() == Some(483)));
    // One call fills --max-calls 1; the next INVITE gets 503.
    sim.from(A, &invite("z9hG4bKc1", Some(&sdp(4000))));
    sim.out();
    sim.from(
        A,
        &invite("z9hG4bKc2", Some(&sdp(4002))).replace("a-call-1", "a-call-2"),
    );
    let (to_a, _) = sim.out();
    assert!(to_a.iter().any(|m| m.code() == Some(503)));
    // A BYE for no dialog: 481.
    sim.from(
        A,
        &from_a("BYE", 5, "nosuchtag", "z9hG4bKb9", None).replace("a-call-1", "a-call-9"),
    );
    let (to_a, _) = sim.out();
    assert_eq!(to_a[0].code(), Some(481));
}

#[test]
fn malformed_sip_is_counted_and_answered_400_when_it_can_be() {
    let mut sim = Sim::new();
    sim.b2b
        .on_bytes(b"\x16\x03\x01 not sip at all\r\n\r\n", udp(A), sim.now);
    sim.b2b.on_bytes(&[0u8; 3000], udp(A), sim.now);
    assert_eq!(sim.b2b.counters().malformed, 2);
    assert!(sim.out().0.is_empty());
    sim.from(
        A,
        &invite("z9hG4bKa1", Some(&sdp(4000))).replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
    );
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a[0].code(), Some(400));
    assert!(
        to_a[0].to_bytes().windows(5).any(|w| w == b"CSeq "),
        "reason names the fault"
    );
    assert!(to_b.is_empty());
    assert_eq!(sim.b2b.counters().rejected, 1);
    sim.assert_clean();
}

#[test]
fn an_sdp_sluice_cannot_read_gets_a_clear_answer() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some("v=0\r\nthis is not sdp\r\n")));
    let (to_a, to_b) = sim.out();
    let r = to_a
        .iter()
        .find(|m| m.code().is_some_and(|c| c >= 400))
        .expect("refused");
    assert_eq!(r.code(), Some(400));
    assert!(
        r.header(&HeaderName::Warning)
            .unwrap()
            .starts_with("399 sluice \"bad SDP")
    );
    assert!(to_b.is_empty());
    sim.assert_clean();
}

#[test]
fn a_media_timeout_ends_the_call_with_bye_and_reason_on_both_legs() {
    let mut sim = Sim::new();
    let (_, _) = establish(&mut sim);
    sim.out();
    // The session layer's sweep finds no media for --timeout.
    let expired = sim.sessions.sweep_at(u64::MAX / 2);
    assert_eq!(expired.len(), 1);
    sim.advance(Duration::from_millis(10));
    let (to_a, to_b) = sim.out();
    for (leg, msgs) in [("A", &to_a), ("B", &to_b)] {
        let bye = msgs
            .iter()
            .find(|m| m.method() == Some(&Method::Bye))
            .unwrap_or_else(|| panic!("BYE to {leg}"));
        assert!(
            bye.header(&HeaderName::Reason)
                .unwrap()
                .contains("cause=408"),
            "{leg}"
        );
    }
    let r = sim.b2b.poll_record().unwrap();
    assert_eq!(r.reason, "media timeout");
    assert_eq!(sim.b2b.live().0, 0);
}

#[test]
fn hangup_cancels_before_the_answer_and_byes_both_legs_after() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    sim.send(B, &answer(&to_b[0], 180, "bob1", None));
    sim.out();
    let id = sim.b2b.calls()[0].id;
    assert!(sim.b2b.hangup(id, sim.now));
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a.last().unwrap().code(), Some(480));
    assert_eq!(to_b[0].method(), Some(&Method::Cancel));
    assert!(!sim.b2b.hangup(999, sim.now), "unknown call");

    let mut sim = Sim::new();
    let _ = establish(&mut sim);
    sim.out();
    let id = sim.b2b.calls()[0].id;
    assert!(sim.b2b.hangup(id, sim.now));
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a[0].method(), Some(&Method::Bye));
    assert_eq!(to_b[0].method(), Some(&Method::Bye));
    assert_eq!(sim.b2b.live().0, 0);
}

fn with_timer(inv: &str, se: &str) -> String {
    inv.replace(
        "Max-Forwards: 70\n",
        &format!("Max-Forwards: 70\nSupported: timer\nSession-Expires: {se}\n"),
    )
    .replace(
        "Max-Forwards: 70\r\n",
        &format!("Max-Forwards: 70\r\nSupported: timer\r\nSession-Expires: {se}\r\n"),
    )
}

#[test]
fn a_session_interval_below_min_se_gets_422_rfc4028() {
    let mut sim = Sim::new();
    sim.from(A, &with_timer(&invite("z9hG4bKa1", Some(&sdp(4000))), "60"));
    let (to_a, to_b) = sim.out();
    let r = to_a.iter().find(|m| m.code() == Some(422)).expect("422");
    assert_eq!(r.header(&HeaderName::MinSe), Some("90"));
    assert!(to_b.is_empty());
}

#[test]
fn session_timers_pass_end_to_end_and_an_unrefreshed_session_ends_with_bye_rfc4028() {
    let mut sim = Sim::new();
    sim.from(
        A,
        &with_timer(&invite("z9hG4bKa1", Some(&sdp(4000))), "90;refresher=uac"),
    );
    let (_, to_b) = sim.out();
    let inv = to_b[0].clone();
    assert_eq!(
        inv.header(&HeaderName::SessionExpires),
        Some("90;refresher=uac")
    );
    assert!(inv.option_tags(&HeaderName::Supported).contains(&"timer"));
    let mut ok = answer(&inv, 200, "bob1", Some(&sdp(5000)));
    ok.push(HeaderName::SessionExpires, "90;refresher=uac");
    ok.push(HeaderName::Require, "timer");
    sim.send(B, &ok);
    let (to_a, _) = sim.out();
    let ok_a = to_a.iter().find(|m| m.code() == Some(200)).unwrap();
    assert_eq!(
        ok_a.header(&HeaderName::SessionExpires),
        Some("90;refresher=uac")
    );
    assert!(ok_a.option_tags(&HeaderName::Require).contains(&"timer"));
    let tag = ok_a.to_hdr().unwrap().tag().unwrap().to_owned();
    sim.from(A, &from_a("ACK", 1, &tag, "z9hG4bKack1", None));

    // A refreshes at 45 s (half the interval): relayed, and the timer starts again.
    sim.advance(Duration::from_secs(45));
    sim.out();
    sim.from(
        A,
        &with_timer(
            &from_a("INVITE", 2, &tag, "z9hG4bKre1", Some(&sdp(4000))),
            "90;refresher=uac",
        ),
    );
    let (_, to_b) = sim.out();
    let re = to_b
        .iter()
        .find(|m| m.method() == Some(&Method::Invite))
        .unwrap()
        .clone();
    assert_eq!(
        re.header(&HeaderName::SessionExpires),
        Some("90;refresher=uac")
    );
    let mut ok = answer(&re, 200, "bob1", Some(&sdp(5000)));
    ok.push(HeaderName::SessionExpires, "90;refresher=uac");
    sim.send(B, &ok);
    sim.out();
    // The first deadline (60 s after the answer) passes without a BYE...
    sim.advance(Duration::from_secs(50));
    let (to_a, to_b) = sim.out();
    assert!(
        !to_a
            .iter()
            .chain(&to_b)
            .any(|m| m.method() == Some(&Method::Bye)),
        "refreshed"
    );
    // ...and 60 s after the refresh, with no further one, both legs get BYE.
    sim.advance(Duration::from_secs(11));
    let (to_a, to_b) = sim.out();
    for (leg, msgs) in [("A", &to_a), ("B", &to_b)] {
        let bye = msgs
            .iter()
            .find(|m| m.method() == Some(&Method::Bye))
            .unwrap_or_else(|| panic!("BYE to {leg}"));
        assert!(
            bye.header(&HeaderName::Reason)
                .unwrap()
                .contains("Session timer expired")
        );
    }
    assert_eq!(
        sim.b2b.poll_record().unwrap().reason,
        "session timer expired"
    );
}

#[test]
fn a_caller_over_tcp_gets_answers_and_a_contact_on_tcp_and_the_callee_stays_on_udp() {
    let mut sim = Sim::with(|c| {
        c.listen.push(Peer {
            transport: sluice_sip::Transport::Tcp,
            addr: sa(SLUICE),
        })
    });
    let tcp_a = Peer {
        transport: sluice_sip::Transport::Tcp,
        addr: sa(A),
    };
    let inv = invite("z9hG4bKa1", Some(&sdp(4000)))
        .replace("SIP/2.0/UDP 10.0.0.1", "SIP/2.0/TCP 10.0.0.1");
    sim.b2b
        .on_bytes(inv.replace('\n', "\r\n").as_bytes(), tcp_a, sim.now);
    let mut to_a = Vec::new();
    let mut to_b = Vec::new();
    while let Some(t) = sim.b2b.poll_transmit() {
        let m = parse_datagram(&t.bytes, &Limits::default()).unwrap();
        if t.peer == tcp_a {
            to_a.push(m);
        } else {
            assert_eq!(
                t.peer.transport,
                sluice_sip::Transport::Udp,
                "the route is UDP"
            );
            to_b.push(m);
        }
    }
    assert_eq!(
        to_a[0].code(),
        Some(100),
        "the 100 goes back on the connection's transport"
    );
    assert!(
        to_b[0]
            .header(&HeaderName::Via)
            .unwrap()
            .starts_with("SIP/2.0/UDP 127.0.0.1:5060")
    );
    sim.send(B, &answer(&to_b[0], 200, "bob1", Some(&sdp(5000))));
    let mut ok = None;
    while let Some(t) = sim.b2b.poll_transmit() {
        if t.peer == tcp_a {
            ok = Some(parse_datagram(&t.bytes, &Limits::default()).unwrap());
        }
    }
    let ok = ok.expect("200 to A over TCP");
    assert_eq!(
        ok.header(&HeaderName::Contact),
        Some("<sip:sluice@127.0.0.1:5060;transport=tcp>")
    );
}

#[test]
fn reliable_provisionals_pass_through_and_the_prack_goes_to_the_callee_rfc3262() {
    let mut sim = Sim::new();
    let inv = invite("z9hG4bKa1", Some(&sdp(4000))).replace(
        "Max-Forwards: 70\n",
        "Max-Forwards: 70\nSupported: 100rel, timer\n",
    );
    sim.from(A, &inv);
    let (_, to_b) = sim.out();
    let b_inv = to_b[0].clone();
    assert_eq!(b_inv.header(&HeaderName::Supported), Some("timer, 100rel"));
    let mut p183 = answer(&b_inv, 183, "bob1", Some(&sdp(5000)));
    p183.push(HeaderName::Require, "100rel");
    p183.push(HeaderName::RSeq, "7");
    sim.send(B, &p183);
    let (to_a, _) = sim.out();
    let r = &to_a[0];
    assert_eq!(r.code(), Some(183));
    assert_eq!(r.header(&HeaderName::RSeq), Some("7"));
    assert!(r.option_tags(&HeaderName::Require).contains(&"100rel"));
    assert!(
        sdp_of(r).contains("c=IN IP4 127.0.0.1"),
        "early media answer through the relay"
    );
    let a_tag = r.to_hdr().unwrap().tag().unwrap().to_owned();
    // B retransmits the 183 until it is PRACKed: A gets it again.
    sim.send(B, &p183);
    let (to_a, _) = sim.out();
    assert_eq!(to_a[0].header(&HeaderName::RSeq), Some("7"));
    let prack = from_a("PRACK", 2, &a_tag, "z9hG4bKpr1", None)
        .replace("Contact:", "RAck: 7 1 INVITE\nContact:");
    sim.from(A, &prack);
    let (_, to_b) = sim.out();
    let p = to_b
        .iter()
        .find(|m| m.method() == Some(&Method::Prack))
        .expect("PRACK to B");
    assert_eq!(p.header(&HeaderName::RAck), Some("7 1 INVITE"));
    assert_eq!(p.to_hdr().unwrap().tag(), Some("bob1"));
    assert_eq!(p.cseq().unwrap().seq, 2);
    sim.send(B, &sluice_sip::response_for(p, 200, None));
    let (to_a, _) = sim.out();
    assert_eq!(
        (to_a[0].code(), to_a[0].cseq().unwrap().method),
        (Some(200), Method::Prack)
    );
    sim.send(B, &answer(&b_inv, 200, "bob1", None));
    let (to_a, _) = sim.out();
    let ok = to_a.iter().find(|m| m.code() == Some(200)).unwrap();
    assert!(ok.body.is_empty(), "the answer was in the reliable 183");
    sim.from(A, &from_a("ACK", 1, &a_tag, "z9hG4bKack1", None));
    sim.from(A, &from_a("BYE", 3, &a_tag, "z9hG4bKbye1", None));
    let (to_a, to_b) = sim.out();
    assert_eq!(
        to_a[0].code(),
        Some(200),
        "CSeq 3 after the PRACK's 2 is in order"
    );
    let bye = to_b
        .iter()
        .find(|m| m.method() == Some(&Method::Bye))
        .unwrap();
    assert_eq!(
        bye.cseq().unwrap().seq,
        3,
        "B's dialog CSeq goes on after the PRACK"
    );
}

#[test]
fn a_reliable_provisional_to_a_caller_without_100rel_is_pracked_by_sluice() {
    let mut sim = Sim::new();
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    assert!(to_b[0].header(&HeaderName::Supported).is_none());
    let mut p180 = answer(&to_b[0], 180, "bob1", None);
    p180.push(HeaderName::Require, "100rel");
    p180.push(HeaderName::RSeq, "1");
    sim.send(B, &p180);
    let (to_a, to_b) = sim.out();
    assert_eq!(to_a[0].code(), Some(180));
    assert!(to_a[0].header(&HeaderName::RSeq).is_none());
    let p = to_b
        .iter()
        .find(|m| m.method() == Some(&Method::Prack))
        .expect("sluice's PRACK");
    assert_eq!(p.header(&HeaderName::RAck), Some("1 1 INVITE"));
}

#[test]
fn a_5xx_or_no_answer_from_one_route_sends_the_call_to_the_next() {
    let mut sim = Sim::with(|c| c.routes.push(udp(B2)));
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    let (_, to_b) = sim.out();
    let first = to_b[0].clone();
    assert_eq!(first.request_uri().unwrap().port, Some(5080));
    sim.send(B, &answer(&first, 503, "x", None));
    let (to_a, to_b) = sim.out();
    assert!(
        to_a.iter().all(|m| m.code() != Some(503)),
        "A does not see the 503"
    );
    let second = to_b
        .iter()
        .find(|m| m.method() == Some(&Method::Invite))
        .expect("INVITE to the next route")
        .clone();
    assert_eq!(second.request_uri().unwrap().port, Some(5090));
    assert_ne!(second.call_id().unwrap(), first.call_id().unwrap());
    assert_ne!(
        second.top_via().unwrap().branch(),
        first.top_via().unwrap().branch()
    );
    assert_eq!(sdp_of(&second), sdp_of(&first), "the same offer");
    sim.b2b.on_bytes(
        &answer(&second, 200, "bob2", Some(&sdp(5000))).to_bytes(),
        udp(B2),
        sim.now,
    );
    let (to_a, to_b) = sim.out();
    assert_eq!(
        to_a.iter().find(|m| m.code() == Some(200)).unwrap().code(),
        Some(200)
    );
    assert!(to_b.iter().any(|m| m.method() == Some(&Method::Ack)));

    // No answer at all from the first route: timer B moves on; the last route's 6xx ends it.
    let mut sim = Sim::with(|c| c.routes.push(udp(B2)));
    sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
    sim.out();
    sim.advance(Duration::from_secs(33));
    let (to_a, to_b) = sim.out();
    assert!(to_a.iter().all(|m| m.code() != Some(408)));
    let second = to_b
        .iter()
        .rev()
        .find(|m| m.method() == Some(&Method::Invite))
        .unwrap()
        .clone();
    assert_eq!(second.request_uri().unwrap().port, Some(5090));
    sim.b2b.on_bytes(
        &answer(&second, 603, "bob2", None).to_bytes(),
        udp(B2),
        sim.now,
    );
    let (to_a, _) = sim.out();
    assert_eq!(to_a.last().unwrap().code(), Some(603));
    assert_eq!(sim.b2b.live().0, 0);
}

mod random {
    //! Random interleavings of what callers, callees and the clock do: the B2BUA never panics,
    //! and once every call is hung up and time has passed, nothing is left.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Caller `n` sends (or retransmits) its INVITE, with SDP or without.
        Invite(u8, bool),
        /// The callee answers the INVITE it saw `i`-th (modulo) with a code from the list.
        Respond(u8, u8),
        Cancel(u8),
        Ack(u8),
        ByeFromA(u8),
        ByeFromB(u8),
        Advance(u16),
        Junk(Vec<u8>),
    }

    const CODES: [u16; 9] = [100, 180, 183, 200, 404, 486, 488, 503, 603];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, any::<bool>()).prop_map(|(n, s)| Op::Invite(n, s)),
            (any::<u8>(), 0u8..CODES.len() as u8).prop_map(|(i, c)| Op::Respond(i, c)),
            (0u8..4).prop_map(Op::Cancel),
            (0u8..4).prop_map(Op::Ack),
            (0u8..4).prop_map(Op::ByeFromA),
            (any::<u8>()).prop_map(Op::ByeFromB),
            (1u16..40_000).prop_map(Op::Advance),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Op::Junk),
        ]
    }

    fn caller_invite(n: u8, with_sdp: bool) -> String {
        invite(
            &format!("z9hG4bKr{n}"),
            with_sdp.then(|| sdp(4000 + 2 * n as u16)).as_deref(),
        )
        .replace("a-call-1@", &format!("a-call-{n}@"))
        .replace("tag=alice1", &format!("tag=alice{n}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn random_calls_never_panic_and_leave_nothing(ops in proptest::collection::vec(op(), 1..60)) {
            let mut sim = Sim::with(|c| c.max_calls = Some(3));
            let mut at_b: Vec<Message> = Vec::new();
            let mut a_tags: HashMap<u8, String> = HashMap::new();
            let mut b_tags: Vec<String> = Vec::new();
            for op in ops {
                match op {
                    Op::Invite(n, s) => sim.from(A, &caller_invite(n, s)),
                    Op::Respond(i, c) if !at_b.is_empty() => {
                        let inv = at_b[i as usize % at_b.len()].clone();
                        let code = CODES[c as usize];
                        let tag = format!("b{}", i % 3);
                        let body = (code == 183 || code == 200).then(|| sdp(5000));
                        sim.send(B, &answer(&inv, code, &tag, body.as_deref()));
                        if code == 200 {
                            b_tags.push(inv.call_id().unwrap().to_owned());
                        }
                    }
                    Op::Respond(..) => {}
                    Op::Cancel(n) => sim.from(
                        A,
                        &caller_invite(n, false)
                            .replace("INVITE sip:bob", "CANCEL sip:bob")
                            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL"),
                    ),
                    Op::Ack(n) => {
                        if let Some(tag) = a_tags.get(&n) {
                            let ack = from_a("ACK", 1, tag, "z9hG4bKack", Some(&sdp(4000)))
                                .replace("a-call-1@", &format!("a-call-{n}@"))
                                .replace("tag=alice1", &format!("tag=alice{n}"));
                            sim.from(A, &ack);
                        }
                    }
                    Op::ByeFromA(n) => {
                        if let Some(tag) = a_tags.get(&n) {
                            let bye = from_a("BYE", 9, tag, &format!("z9hG4bKbye{n}"), None)
                                .replace("a-call-1@", &format!("a-call-{n}@"))
                                .replace("tag=alice1", &format!("tag=alice{n}"));
                            sim.from(A, &bye);
                        }
                    }
                    Op::ByeFromB(i) if !at_b.is_empty() => {
                        let inv = &at_b[i as usize % at_b.len()];
                        if let Ok(mut d) = sluice_sip::Dialog::uas(inv, &format!("b{}", i % 3)) {
                            d.remote_target = sluice_sip::Uri::parse("sip:sluice@127.0.0.1:5060").unwrap();
                            let via = Via::new("UDP", Host::V4("127.0.0.1".parse().unwrap()), Some(5080), &format!("z9hG4bKbb{i}"));
                            let bye = d.request(Method::Bye, &via, None);
                            sim.send(B, &bye);
                        }
                    }
                    Op::ByeFromB(_) => {}
                    Op::Advance(ms) => sim.advance(Duration::from_millis(u64::from(ms))),
                    Op::Junk(b) => sim.b2b.on_bytes(&b, udp(A), sim.now),
                }
                let (to_a, to_b) = sim.out();
                for m in to_a {
                    if let (Some(code), Ok(to)) = (m.code(), m.to_hdr())
                        && code > 100
                        && let (Some(tag), Ok(from)) = (to.tag(), m.from_hdr())
                        && let Some(n) = from.tag().and_then(|t| t.strip_prefix("alice")).and_then(|n| n.parse().ok())
                    {
                        a_tags.insert(n, tag.to_owned());
                    }
                }
                at_b.extend(to_b.into_iter().filter(|m| m.method() == Some(&Method::Invite)));
            }
            let _ = b_tags;
            // Hang up whatever is left; nobody answers the BYEs, and after timer F nothing
            // may remain.
            for c in sim.b2b.calls() {
                sim.b2b.hangup(c.id, sim.now);
            }
            sim.advance(Duration::from_secs(100));
            sim.out();
            prop_assert_eq!(sim.b2b.live(), (0, 0));
            prop_assert!(sim.plane.0.lock().unwrap().is_empty(), "media endpoints left");
            prop_assert!(sim.sessions.list(10).is_empty(), "media sessions left");
        }
    }
}

#[test]
fn call_records_reach_event_watchers_started_ringing_answered_ended() {
    use crate::session::EventKind;
    let mut sim = Sim::new();
    let mut watch = sim.sessions.subscribe();
    let (_, a_tag) = establish(&mut sim);
    sim.from(A, &from_a("BYE", 2, &a_tag, "z9hG4bKbye1", None));
    let (_, to_b) = sim.out();
    sim.send(B, &answer(&to_b[0], 200, "bob1", None));
    let mut sip = Vec::new();
    while let Some(ev) = watch.try_recv() {
        if matches!(
            ev.kind,
            EventKind::SipCallStarted
                | EventKind::SipCallRinging
                | EventKind::SipCallAnswered
                | EventKind::SipCallEnded
        ) {
            assert_eq!(ev.call_id, "a-call-1@10.0.0.1");
            sip.push((ev.kind, ev.detail));
        }
    }
    let kinds: Vec<_> = sip.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            EventKind::SipCallStarted,
            EventKind::SipCallRinging,
            EventKind::SipCallAnswered,
            EventKind::SipCallEnded
        ]
    );
    let started: serde_json::Value = serde_json::from_str(&sip[0].1).unwrap();
    assert_eq!(started["caller"], "sip:alice@example.com");
    let ended: serde_json::Value = serde_json::from_str(&sip[3].1).unwrap();
    assert_eq!(ended["reason"], "caller hung up");
    assert_eq!(ended["code"], 200);
}

/// RFC 4568 section 8.3: SDES keys only over secure signalling. A caller's SRTP offer (over TLS
/// or not) reaches a callee on UDP as plain RTP, its key nowhere in B's INVITE; sluice
/// terminates the caller's SRTP and answers it with a key of its own.
#[test]
fn sdes_keys_never_go_to_a_leg_without_tls_rfc4568_8_3() {
    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    let savp = sdp(4000).replace("RTP/AVP 0 8", "RTP/SAVP 0 8")
        + &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n");
    for transport in [sluice_sip::Transport::Tls, sluice_sip::Transport::Udp] {
        let mut sim = Sim::with(|c| {
            c.listen.push(Peer {
                transport: sluice_sip::Transport::Tls,
                addr: sa(SLUICE),
            })
        });
        let a = Peer {
            transport,
            addr: sa(A),
        };
        let via = format!("SIP/2.0/{} 10.0.0.1", transport.via_name());
        let inv = invite("z9hG4bKa1", Some(&savp)).replace("SIP/2.0/UDP 10.0.0.1", &via);
        sim.b2b
            .on_bytes(inv.replace('\n', "\r\n").as_bytes(), a, sim.now);
        let (_, to_b) = sim.out();
        let b_inv = to_b.into_iter().next().expect("INVITE to B");
        let offered = sdp_of(&b_inv);
        assert!(offered.contains("RTP/AVP 0 8"), "{transport:?}: {offered}");
        assert!(
            !offered.contains("a=crypto"),
            "{transport:?}: a key went to B: {offered}"
        );
        sim.send(B, &answer(&b_inv, 200, "bob1", Some(&sdp(5000))));
        let mut ok = None;
        while let Some(t) = sim.b2b.poll_transmit() {
            let m = parse_datagram(&t.bytes, &Limits::default()).unwrap();
            if t.peer.addr == sa(A) && m.code() == Some(200) {
                ok = Some(m);
            }
        }
        let answered = sdp_of(&ok.expect("200 to A"));
        assert!(answered.contains("RTP/SAVP"), "{transport:?}: {answered}");
        assert!(
            answered.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:")
                && !answered.contains(KEY),
            "{transport:?}: sluice answers with its own key: {answered}"
        );
    }
}

/// A TCP next hop that refuses the connection fails the INVITE at once (RFC 3261 8.1.3.1: a
/// transport error counts as a 503): the call goes to the next route without waiting for
/// timer B, and with no route left the caller gets its 503 at once.
#[test]
fn an_unreachable_tcp_next_hop_fails_over_at_once_and_the_last_one_gets_503() {
    let tcp_b = Peer {
        transport: sluice_sip::Transport::Tcp,
        addr: sa(B),
    };
    for with_second_route in [true, false] {
        let mut sim = Sim::with(|c| {
            c.listen.push(Peer {
                transport: sluice_sip::Transport::Tcp,
                addr: sa(SLUICE),
            });
            c.routes = vec![tcp_b];
            if with_second_route {
                c.routes.push(udp(B2));
            }
        });
        sim.from(A, &invite("z9hG4bKa1", Some(&sdp(4000))));
        let (_, to_b) = sim.out();
        assert_eq!(to_b.len(), 1, "the INVITE for the TCP hop");
        sim.b2b.unreachable(tcp_b, sim.now);
        let (to_a, to_b) = sim.out();
        if with_second_route {
            let next = to_b
                .iter()
                .find(|m| m.method() == Some(&Method::Invite))
                .expect("INVITE to the next route at once");
            assert_eq!(next.request_uri().unwrap().port, Some(5090));
            assert!(to_a.iter().all(|m| m.code().is_none_or(|c| c < 300)));
        } else {
            assert!(
                to_a.iter().any(|m| m.code() == Some(503)),
                "503 to the caller at once: {to_a:?}"
            );
            assert_eq!(sim.b2b.live().0, 0, "the call ended");
        }
    }
}
