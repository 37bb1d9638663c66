//! The transaction layer (RFC 3261 section 17, RFC 6026) driven in simulated time: every
//! instant is a fixed base plus an offset, timers run at the deadlines the layer asks for,
//! nothing sleeps and no socket is opened.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sluice_sip::{
    HeaderName, Limits, Message, Method, Peer, TimerConfig, TransactionLayer, Transmit, Transport,
    TxError, TxEvent, TxId, parse_datagram, response_for,
};

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

fn peer(transport: Transport) -> Peer {
    Peer {
        transport,
        addr: "192.0.2.4:5060".parse().unwrap(),
    }
}

const UDP: Transport = Transport::Udp;
const TCP: Transport = Transport::Tcp;

/// A message from SIP text written with bare LF line ends.
fn parse(text: &str) -> Message {
    let wire = text.replace('\n', "\r\n");
    parse_datagram(wire.as_bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{e:?}: {text}"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// An INVITE (or another method) from 192.0.2.1 with top Via branch `branch`.
fn request(method: &str, branch: &str, cseq: u32) -> Message {
    parse(&format!(
        "{method} sip:bob@example.com SIP/2.0\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\n\
         Via: SIP/2.0/UDP 192.0.2.200:5060;branch=z9hG4bKdownstream\n\
         Max-Forwards: 70\n\
         Route: <sip:proxy1.example.com;lr>\n\
         Route: <sip:proxy2.example.com;lr>\n\
         To: Bob <sip:bob@example.com>\n\
         From: Alice <sip:alice@example.com>;tag=1928301774\n\
         Call-ID: a84b4c76e66710@pc33.example.com\n\
         CSeq: {cseq} {method}\n\
         Contact: <sip:alice@192.0.2.1>\n\
         Content-Length: 0\n\n"
    ))
}

fn invite(branch: &str) -> Message {
    request("INVITE", branch, 314159)
}

/// The ACK of a non-2xx: same branch as the INVITE, To with the response's tag.
fn ack_for(branch: &str, to_tag: &str) -> Message {
    parse(&format!(
        "ACK sip:bob@example.com SIP/2.0\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\n\
         Max-Forwards: 70\n\
         To: Bob <sip:bob@example.com>;tag={to_tag}\n\
         From: Alice <sip:alice@example.com>;tag=1928301774\n\
         Call-ID: a84b4c76e66710@pc33.example.com\n\
         CSeq: 314159 ACK\n\
         Content-Length: 0\n\n"
    ))
}

/// A response to `req` with `to_tag` added to To.
fn reply(req: &Message, code: u16, to_tag: Option<&str>) -> Message {
    let mut r = response_for(req, code, None);
    if let Some(tag) = to_tag {
        let to = format!("{};tag={tag}", req.header(&HeaderName::To).unwrap());
        r.set(HeaderName::To, to);
    }
    r
}

/// What a test saw, with the offset from the base instant at which it came out.
struct Sim {
    layer: TransactionLayer,
    base: Instant,
    now: Instant,
    sent: Vec<(Duration, Transmit)>,
    events: Vec<(Duration, TxEvent)>,
    /// Every TxId handed out, for the leak check.
    ids: BTreeSet<TxId>,
    terminated: BTreeMap<TxId, usize>,
}

impl Sim {
    fn new() -> Self {
        let base = Instant::now();
        Self {
            layer: TransactionLayer::new(TimerConfig::default()),
            base,
            now: base,
            sent: Vec::new(),
            events: Vec::new(),
            ids: BTreeSet::new(),
            terminated: BTreeMap::new(),
        }
    }

    fn offset(&self) -> Duration {
        self.now - self.base
    }

    fn drain(&mut self) {
        let at = self.offset();
        while let Some(t) = self.layer.poll_transmit() {
            self.sent.push((at, t));
        }
        while let Some(e) = self.layer.poll_event() {
            match &e {
                TxEvent::Terminated { tx } => {
                    assert!(self.ids.contains(tx), "{tx:?} terminated, never seen");
                    *self.terminated.entry(*tx).or_default() += 1;
                }
                TxEvent::Request { tx: Some(tx), .. } => {
                    self.ids.insert(*tx);
                }
                _ => {}
            }
            self.events.push((at, e));
        }
    }

    /// Moves the clock to base + `s` (never back; a nanosecond lost converting to and from
    /// f64 is not going back).
    fn go(&mut self, s: f64) {
        let t = self.base + secs(s);
        assert!(
            t + Duration::from_micros(1) >= self.now,
            "time runs forward"
        );
        self.now = self.now.max(t);
    }

    fn recv(&mut self, at: f64, msg: Message, transport: Transport) {
        self.run_until(at);
        self.layer.on_message(msg, peer(transport), self.now);
        self.drain();
    }

    fn send(&mut self, at: f64, req: Message, transport: Transport) -> TxId {
        self.run_until(at);
        let id = self.layer.send_request(req, peer(transport), self.now);
        self.ids.insert(id);
        self.drain();
        id
    }

    fn respond(&mut self, at: f64, tx: TxId, resp: Message) -> Result<(), TxError> {
        self.run_until(at);
        let r = self.layer.respond(tx, resp, self.now);
        self.drain();
        r
    }

    /// Fires every timer up to base + `s`, each at its own deadline.
    fn run_until(&mut self, s: f64) {
        let end = self.base + secs(s);
        while let Some(d) = self.layer.poll_timeout() {
            if d > end {
                break;
            }
            assert!(d >= self.now, "a deadline in the past: {d:?}");
            self.now = d;
            self.layer.handle_timeout(d);
            self.drain();
            if let Some(next) = self.layer.poll_timeout() {
                assert!(next > d, "handle_timeout left a due timer");
            }
        }
        self.go(s);
        self.layer.handle_timeout(self.now);
        self.drain();
    }

    fn take_sent(&mut self) -> Vec<(Duration, Transmit)> {
        std::mem::take(&mut self.sent)
    }

    fn take_events(&mut self) -> Vec<(Duration, TxEvent)> {
        std::mem::take(&mut self.events)
    }

    /// Runs long after every timer and checks nothing leaked: the table is empty, no
    /// deadline is left, and every transaction was reported terminated exactly once.
    fn finish(mut self) {
        let end = (self.offset() + Duration::from_secs(3600)).as_secs_f64();
        self.run_until(end);
        assert_eq!(self.layer.len(), 0, "transactions left");
        assert!(self.layer.is_empty());
        assert_eq!(self.layer.poll_timeout(), None);
        for id in &self.ids {
            assert_eq!(self.terminated.get(id), Some(&1), "{id:?} terminated once");
        }
    }
}

fn offsets(sent: &[(Duration, Transmit)]) -> Vec<f64> {
    sent.iter().map(|(d, _)| d.as_secs_f64()).collect()
}

fn parsed(t: &Transmit) -> Message {
    parse_datagram(&t.bytes, &Limits::default()).unwrap()
}

fn code_of(t: &Transmit) -> Option<u16> {
    parsed(t).code()
}

/// The events as short names, for order checks.
fn names(events: &[(Duration, TxEvent)]) -> Vec<String> {
    events
        .iter()
        .map(|(at, e)| {
            let at = at.as_secs_f64();
            match e {
                TxEvent::Request { tx, msg, .. } => format!(
                    "{at} request {} {}",
                    msg.method().unwrap(),
                    if tx.is_some() { "tx" } else { "none" }
                ),
                TxEvent::Response { msg, .. } => format!("{at} response {}", msg.code().unwrap()),
                TxEvent::Timeout { .. } => format!("{at} timeout"),
                TxEvent::TransportError { .. } => format!("{at} transport-error"),
                TxEvent::StrayResponse { msg, .. } => format!("{at} stray {}", msg.code().unwrap()),
                TxEvent::Terminated { .. } => format!("{at} terminated"),
            }
        })
        .collect()
}

fn server_tx(events: &[(Duration, TxEvent)]) -> TxId {
    events
        .iter()
        .find_map(|(_, e)| match e {
            TxEvent::Request { tx: Some(tx), .. } => Some(*tx),
            _ => None,
        })
        .expect("a request passed up in a new transaction")
}

// ---------------------------------------------------------------------------------------
// INVITE client (RFC 3261 17.1.1, RFC 6026 7.2)
// ---------------------------------------------------------------------------------------

#[test]
fn invite_client_over_udp_retransmits_on_timer_a_doubling_and_times_out_on_timer_b_at_32s() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKa1");
    let wire = req.to_bytes();
    let tx = s.send(0.0, req, UDP);
    let first = s.take_sent();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1.bytes, wire);
    assert_eq!(first[0].1.peer, peer(UDP));
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(0.5)));

    s.run_until(40.0);
    let sent = s.take_sent();
    // Intervals 0.5, 1, 2, 4, 8, 16 s; the next (32 s) would come after timer B.
    assert_eq!(offsets(&sent), [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]);
    assert!(
        sent.iter()
            .all(|(_, t)| t.bytes == wire && t.peer == peer(UDP))
    );
    assert_eq!(names(&s.take_events()), ["32 timeout", "32 terminated"]);
    assert_eq!(s.layer.request(tx), None);
    let c = s.layer.counters();
    assert_eq!((c.retransmissions, c.timeouts), (6, 1));
    s.finish();
}

#[test]
fn invite_client_over_tcp_never_retransmits_and_times_out_at_64_t1() {
    let mut s = Sim::new();
    s.send(0.0, invite("z9hG4bKa2"), TCP);
    assert_eq!(s.take_sent().len(), 1);
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(32.0)));
    s.run_until(40.0);
    assert!(s.take_sent().is_empty());
    assert_eq!(names(&s.take_events()), ["32 timeout", "32 terminated"]);
    assert_eq!(s.layer.counters().retransmissions, 0);
    s.finish();
}

#[test]
fn invite_client_provisional_stops_timer_a_and_timer_b() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKa3");
    let tx = s.send(0.0, req.clone(), UDP);
    s.recv(0.7, reply(&req, 180, Some("bob1")), UDP);
    assert_eq!(offsets(&s.take_sent()), [0.0, 0.5]);
    assert_eq!(names(&s.take_events()), ["0.7 response 180"]);
    // RFC 3261 17.1.1.2: no retransmission in Proceeding and timer B only acts in Calling:
    // ringing may last minutes.
    assert_eq!(s.layer.poll_timeout(), None);
    s.run_until(600.0);
    assert!(s.take_sent().is_empty());
    assert!(s.take_events().is_empty());
    assert_eq!(s.layer.len(), 1);
    assert_eq!(s.layer.request(tx).unwrap().method(), Some(&Method::Invite));
    // The final ends it.
    s.recv(601.0, reply(&req, 486, Some("bob1")), UDP);
    assert_eq!(names(&s.take_events()), ["601 response 486"]);
    s.finish();
}

#[test]
fn invite_client_acks_a_486_itself_re_acks_its_retransmission_and_ends_on_timer_d() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKa4");
    let tx = s.send(0.0, req.clone(), UDP);
    s.recv(0.2, reply(&req, 180, Some("b4")), UDP);
    s.recv(2.0, reply(&req, 486, Some("b4")), UDP);
    let sent = s.take_sent();
    assert_eq!(offsets(&sent), [0.0, 2.0]);
    let (_, ack_tx) = &sent[1];
    assert_eq!(
        ack_tx.peer,
        peer(UDP),
        "RFC 3261 17.1.1.3: same address as the INVITE"
    );
    let ack = parsed(ack_tx);
    sluice_sip::validate_request(&ack).unwrap();
    // RFC 3261 17.1.1.3.
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.request_uri(), req.request_uri());
    assert_eq!(
        ack.header_lines(&HeaderName::Via).collect::<Vec<_>>(),
        ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa4"]
    );
    assert_eq!(
        ack.header_lines(&HeaderName::Route).collect::<Vec<_>>(),
        ["<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>"]
    );
    assert_eq!(ack.header(&HeaderName::From), req.header(&HeaderName::From));
    assert_eq!(
        ack.to_hdr().unwrap().tag(),
        Some("b4"),
        "To of the response"
    );
    assert_eq!(ack.call_id(), req.call_id());
    let cseq = ack.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (314159, Method::Ack));
    assert!(ack.header(&HeaderName::Contact).is_none());
    assert_eq!(
        names(&s.take_events()),
        ["0.2 response 180", "2 response 486"]
    );

    // A retransmitted 486 is re-ACKed and not passed up.
    s.recv(5.0, reply(&req, 486, Some("b4")), UDP);
    let again = s.take_sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.bytes, ack_tx.bytes);
    assert!(s.take_events().is_empty());
    assert_eq!(s.layer.counters().absorbed, 1);

    // Timer D: 32 s after the 486.
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(34.0)));
    s.run_until(33.9);
    assert_eq!(s.layer.len(), 1);
    s.run_until(34.0);
    assert_eq!(names(&s.take_events()), ["34 terminated"]);
    assert_eq!(s.layer.request(tx), None);
    // Too late now: stray.
    s.recv(35.0, reply(&req, 486, Some("b4")), UDP);
    assert_eq!(names(&s.take_events()), ["35 stray 486"]);
    assert!(s.take_sent().is_empty());
    s.finish();
}

#[test]
fn invite_client_over_tcp_acks_a_final_and_terminates_at_once() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKa5");
    s.send(0.0, req.clone(), TCP);
    s.recv(1.0, reply(&req, 603, Some("x")), TCP);
    let sent = s.take_sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(parsed(&sent[1].1).method(), Some(&Method::Ack));
    // Timer D is zero on reliable transports.
    assert_eq!(names(&s.take_events()), ["1 response 603", "1 terminated"]);
    assert_eq!(s.layer.len(), 0);
    s.finish();
}

#[test]
fn invite_client_passes_up_every_2xx_of_every_fork_until_timer_m() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKa6");
    s.send(0.0, req.clone(), UDP);
    s.recv(1.0, reply(&req, 200, Some("fork-a")), UDP);
    s.recv(1.5, reply(&req, 200, Some("fork-a")), UDP);
    s.recv(2.0, reply(&req, 200, Some("fork-b")), UDP);
    s.recv(2.5, reply(&req, 180, Some("fork-c")), UDP);
    // The ACK of a 2xx is the TU's (RFC 3261 13.2.2.4): the layer sends nothing.
    assert_eq!(offsets(&s.take_sent()), [0.0, 0.5]);
    let ev = s.take_events();
    assert_eq!(
        names(&ev),
        ["1 response 200", "1.5 response 200", "2 response 200"]
    );
    let tags: Vec<_> = ev
        .iter()
        .map(|(_, e)| match e {
            TxEvent::Response { msg, .. } => msg.to_hdr().unwrap().tag().unwrap().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(tags, ["fork-a", "fork-a", "fork-b"]);
    // Timer M: 64*T1 after the first 2xx.
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(33.0)));
    s.run_until(33.0);
    assert_eq!(names(&s.take_events()), ["33 terminated"]);
    // A 2xx retransmission after timer M is stray: the TU decides.
    s.recv(34.0, reply(&req, 200, Some("fork-a")), UDP);
    assert_eq!(names(&s.take_events()), ["34 stray 200"]);
    assert_eq!(s.layer.counters().stray_responses, 1);
    s.finish();
}

#[test]
fn invite_client_cancelled_without_a_final_is_destroyed_64_t1_after_the_cancel() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKa7");
    let inv = s.send(0.0, req.clone(), UDP);
    s.recv(0.1, reply(&req, 180, Some("r")), UDP);
    let mut cancel = request("CANCEL", "z9hG4bKa7", 314159);
    cancel.remove(&HeaderName::Contact);
    let c = s.send(10.0, cancel.clone(), UDP);
    s.recv(10.1, reply(&cancel, 200, Some("r")), UDP);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["0.1 response 180", "10.1 response 200"]);
    assert!(matches!(ev[1].1, TxEvent::Response { tx, .. } if tx == c));
    // The server never sends the 487: RFC 3261 9.1.
    s.run_until(41.9);
    assert_eq!(names(&s.take_events()), ["15.1 terminated"]); // the CANCEL's timer K
    s.run_until(42.0);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["42 timeout", "42 terminated"]);
    assert!(matches!(ev[0].1, TxEvent::Timeout { tx } if tx == inv));
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Non-INVITE client (RFC 3261 17.1.2)
// ---------------------------------------------------------------------------------------

#[test]
fn non_invite_client_timer_e_doubles_up_to_t2_and_timer_f_times_out_at_32s() {
    let mut s = Sim::new();
    let req = request("OPTIONS", "z9hG4bKn1", 1);
    let wire = req.to_bytes();
    s.send(0.0, req, UDP);
    s.run_until(40.0);
    let sent = s.take_sent();
    // Intervals 0.5, 1, 2, 4, 4, 4, ...
    assert_eq!(
        offsets(&sent),
        [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    assert!(sent.iter().all(|(_, t)| t.bytes == wire));
    assert_eq!(names(&s.take_events()), ["32 timeout", "32 terminated"]);
    assert_eq!(s.layer.counters().retransmissions, 10);
    s.finish();
}

#[test]
fn non_invite_client_in_proceeding_retransmits_every_t2() {
    let mut s = Sim::new();
    let req = request("BYE", "z9hG4bKn2", 2);
    s.send(0.0, req.clone(), UDP);
    // Timer E fired at 0.5 and is set for 1.5; a provisional comes in between.
    s.recv(0.6, reply(&req, 100, None), UDP);
    s.run_until(14.0);
    assert_eq!(offsets(&s.take_sent()), [0.0, 0.5, 1.5, 5.5, 9.5, 13.5]);
    s.recv(14.0, reply(&req, 200, None), UDP);
    assert_eq!(
        names(&s.take_events()),
        ["0.6 response 100", "14 response 200"]
    );
    s.finish();
}

#[test]
fn non_invite_client_final_absorbs_retransmissions_until_timer_k() {
    let mut s = Sim::new();
    let req = request("OPTIONS", "z9hG4bKn3", 3);
    let tx = s.send(0.0, req.clone(), UDP);
    s.recv(1.0, reply(&req, 200, Some("t")), UDP);
    s.recv(2.0, reply(&req, 200, Some("t")), UDP);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["1 response 200"]);
    assert!(matches!(ev[0].1, TxEvent::Response { tx: t, .. } if t == tx));
    assert_eq!(s.layer.counters().absorbed, 1);
    // No retransmission after the final; timer K = T4.
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(6.0)));
    s.run_until(6.0);
    assert_eq!(offsets(&s.take_sent()), [0.0, 0.5]);
    assert_eq!(names(&s.take_events()), ["6 terminated"]);
    s.finish();
}

#[test]
fn non_invite_client_over_tcp_terminates_on_the_final_at_once() {
    let mut s = Sim::new();
    let req = request("OPTIONS", "z9hG4bKn4", 4);
    s.send(0.0, req.clone(), TCP);
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(32.0)));
    s.recv(3.0, reply(&req, 404, Some("t")), TCP);
    assert_eq!(names(&s.take_events()), ["3 response 404", "3 terminated"]);
    assert_eq!(offsets(&s.take_sent()), [0.0]);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// INVITE server (RFC 3261 17.2.1, RFC 6026 7.1)
// ---------------------------------------------------------------------------------------

#[test]
fn invite_server_sends_100_at_once_and_answers_a_retransmission_with_the_last_provisional() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKs1");
    s.recv(0.0, req.clone(), UDP);
    let sent = s.take_sent();
    assert_eq!(sent.len(), 1);
    let trying = parsed(&sent[0].1);
    assert_eq!(trying.code(), Some(100));
    assert_eq!(sent[0].1.peer, peer(UDP));
    assert_eq!(
        trying.header_lines(&HeaderName::Via).collect::<Vec<_>>(),
        req.header_lines(&HeaderName::Via).collect::<Vec<_>>()
    );
    let ev = s.take_events();
    assert_eq!(names(&ev), ["0 request INVITE tx"]);
    let tx = server_tx(&ev);
    assert_eq!(s.layer.request(tx), Some(&req));

    // A retransmission re-sends the 100.
    s.recv(0.5, req.clone(), UDP);
    let again = s.take_sent();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.bytes, sent[0].1.bytes);
    // After a 180, a retransmission re-sends the 180.
    s.respond(1.0, tx, reply(&req, 180, Some("s1"))).unwrap();
    s.recv(1.5, req.clone(), UDP);
    let sent = s.take_sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(code_of(&sent[1].1), Some(180));
    assert_eq!(sent[0].1.bytes, sent[1].1.bytes);
    assert!(s.take_events().is_empty(), "retransmissions are absorbed");
    assert_eq!(s.layer.counters().absorbed, 2);
    // The INVITE server transaction waits for the TU however long ringing lasts.
    assert_eq!(s.layer.poll_timeout(), None);
    s.run_until(900.0);
    assert_eq!(s.layer.len(), 1);
    s.respond(900.0, tx, reply(&req, 480, Some("s1"))).unwrap();
    s.finish();
}

#[test]
fn invite_server_retransmits_a_486_on_timer_g_and_times_out_on_timer_h_without_ack() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKs2");
    s.recv(0.0, req.clone(), UDP);
    let tx = server_tx(&s.take_events());
    s.respond(0.0, tx, reply(&req, 486, Some("s2"))).unwrap();
    s.run_until(40.0);
    let sent = s.take_sent();
    let codes: Vec<_> = sent.iter().map(|(_, t)| code_of(t).unwrap()).collect();
    assert_eq!(codes[..2], [100, 486]);
    assert!(codes[2..].iter().all(|&c| c == 486));
    // Timer G: T1 doubling up to T2.
    assert_eq!(
        offsets(&sent[2..]),
        [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    );
    // Timer H: 64*T1, the ACK never came.
    let ev = s.take_events();
    assert_eq!(names(&ev), ["32 timeout", "32 terminated"]);
    assert!(matches!(ev[0].1, TxEvent::Timeout { tx: t } if t == tx));
    assert_eq!(
        s.layer.respond(tx, reply(&req, 500, None), s.now),
        Err(TxError::Unknown)
    );
    s.finish();
}

#[test]
fn invite_server_ack_confirms_stops_timer_g_and_timer_i_terminates() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKs3");
    s.recv(0.0, req.clone(), UDP);
    let tx = server_tx(&s.take_events());
    s.respond(0.0, tx, reply(&req, 486, Some("s3"))).unwrap();
    // A retransmitted INVITE in Completed gets the final again.
    s.recv(1.0, req.clone(), UDP);
    assert_eq!(
        s.take_sent()
            .iter()
            .map(|(d, t)| (d.as_secs_f64(), code_of(t).unwrap()))
            .collect::<Vec<_>>(),
        [(0.0, 100), (0.0, 486), (0.5, 486), (1.0, 486)]
    );
    // The ACK is absorbed: Confirmed.
    s.recv(1.2, ack_for("z9hG4bKs3", "s3"), UDP);
    s.recv(1.3, ack_for("z9hG4bKs3", "s3"), UDP);
    s.recv(1.4, req.clone(), UDP);
    assert!(s.take_events().is_empty());
    // Timer I = T4 after the ACK; no more 486.
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(6.2)));
    s.run_until(6.2);
    assert!(s.take_sent().is_empty());
    assert_eq!(names(&s.take_events()), ["6.2 terminated"]);
    assert_eq!(s.layer.counters().absorbed, 4);
    assert_eq!(
        s.layer.respond(tx, reply(&req, 486, None), s.now),
        Err(TxError::Unknown)
    );
    s.finish();
}

#[test]
fn invite_server_over_tcp_sends_no_retransmission_and_ends_on_the_ack() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKs4");
    s.recv(0.0, req.clone(), TCP);
    let tx = server_tx(&s.take_events());
    s.respond(0.0, tx, reply(&req, 404, Some("s4"))).unwrap();
    // Only timer H runs.
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(32.0)));
    s.run_until(10.0);
    assert_eq!(offsets(&s.take_sent()), [0.0, 0.0]);
    // Timer I is zero on reliable transports.
    s.recv(10.0, ack_for("z9hG4bKs4", "s4"), TCP);
    assert_eq!(names(&s.take_events()), ["10 terminated"]);
    s.finish();
}

#[test]
fn invite_server_2xx_goes_to_accepted_passes_the_ack_up_absorbs_retransmissions_until_timer_l() {
    let mut s = Sim::new();
    let req = invite("z9hG4bKs5");
    s.recv(0.0, req.clone(), UDP);
    let tx = server_tx(&s.take_events());
    s.respond(1.0, tx, reply(&req, 200, Some("s5"))).unwrap();
    // A retransmitted INVITE is absorbed: no new transaction, nothing sent (the 2xx
    // retransmissions are the TU's).
    s.recv(1.5, req.clone(), UDP);
    assert_eq!(
        s.take_sent()
            .iter()
            .map(|(_, t)| code_of(t).unwrap())
            .collect::<Vec<_>>(),
        [100, 200]
    );
    assert_eq!(s.layer.len(), 1);
    // The ACK of the 2xx has a branch of its own (RFC 3261 13.2.2.4): no transaction, up.
    s.recv(2.0, ack_for("z9hG4bKother", "s5"), UDP);
    // An ACK matching the transaction in Accepted is passed up too.
    s.recv(2.1, ack_for("z9hG4bKs5", "s5"), UDP);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["2 request ACK none", "2.1 request ACK none"]);
    // The TU's 2xx retransmission goes through; another final does not.
    s.respond(3.0, tx, reply(&req, 200, Some("s5"))).unwrap();
    assert_eq!(s.take_sent().len(), 1);
    assert_eq!(
        s.respond(3.0, tx, reply(&req, 486, Some("s5"))),
        Err(TxError::FinalAlreadySent)
    );
    assert_eq!(
        s.respond(3.0, tx, reply(&req, 180, Some("s5"))),
        Err(TxError::FinalAlreadySent)
    );
    // Timer L: 64*T1 after the 2xx.
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(33.0)));
    s.run_until(33.0);
    assert_eq!(names(&s.take_events()), ["33 terminated"]);
    assert_eq!(s.layer.counters().absorbed, 1);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Non-INVITE server (RFC 3261 17.2.2)
// ---------------------------------------------------------------------------------------

#[test]
fn non_invite_server_absorbs_retransmissions_re_sends_the_final_until_timer_j() {
    let mut s = Sim::new();
    let req = request("OPTIONS", "z9hG4bKs6", 7);
    s.recv(0.0, req.clone(), UDP);
    assert!(s.take_sent().is_empty(), "no 100 for a non-INVITE");
    let tx = server_tx(&s.take_events());
    // Trying: a retransmission is discarded.
    s.recv(0.5, req.clone(), UDP);
    assert!(s.take_sent().is_empty());
    // Proceeding: the last provisional.
    s.respond(0.6, tx, reply(&req, 183, Some("s6"))).unwrap();
    s.recv(0.7, req.clone(), UDP);
    // Completed: the final.
    s.respond(1.0, tx, reply(&req, 200, Some("s6"))).unwrap();
    s.recv(1.5, req.clone(), UDP);
    s.recv(9.0, req.clone(), UDP);
    assert_eq!(
        s.take_sent()
            .iter()
            .map(|(d, t)| (d.as_secs_f64(), code_of(t).unwrap()))
            .collect::<Vec<_>>(),
        [(0.6, 183), (0.7, 183), (1.0, 200), (1.5, 200), (9.0, 200)]
    );
    assert!(s.take_events().is_empty());
    assert_eq!(s.layer.counters().absorbed, 4);
    assert_eq!(
        s.respond(9.0, tx, reply(&req, 500, None)),
        Err(TxError::FinalAlreadySent)
    );
    // Timer J: 64*T1 after the final.
    assert_eq!(s.layer.poll_timeout(), Some(s.base + secs(33.0)));
    s.run_until(33.0);
    assert_eq!(names(&s.take_events()), ["33 terminated"]);
    s.finish();
}

#[test]
fn non_invite_server_over_tcp_terminates_on_the_final_at_once() {
    let mut s = Sim::new();
    let req = request("BYE", "z9hG4bKs7", 8);
    s.recv(0.0, req.clone(), TCP);
    let tx = server_tx(&s.take_events());
    s.respond(0.1, tx, reply(&req, 200, None)).unwrap();
    assert_eq!(names(&s.take_events()), ["0.1 terminated"]);
    // A late retransmission is a new request (the client would not send one over TCP).
    s.finish();
}

#[test]
fn non_invite_server_the_tu_never_answers_is_terminated_after_64_t1() {
    let mut s = Sim::new();
    s.recv(0.0, request("INFO", "z9hG4bKs8", 9), UDP);
    s.recv(0.0, invite("z9hG4bKs8"), UDP);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["0 request INFO tx", "0 request INVITE tx"]);
    let invite_tx = match ev[1].1 {
        TxEvent::Request { tx: Some(tx), .. } => tx,
        _ => unreachable!(),
    };
    s.run_until(31.9);
    assert_eq!(s.layer.len(), 2);
    s.run_until(32.0);
    assert_eq!(names(&s.take_events()), ["32 terminated"]);
    // The INVITE lives until answered.
    s.run_until(3000.0);
    assert_eq!(s.layer.len(), 1);
    s.respond(
        3000.0,
        invite_tx,
        reply(&invite("z9hG4bKs8"), 487, Some("q")),
    )
    .unwrap();
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Matching (RFC 3261 17.2.3, 17.1.3, 9.2)
// ---------------------------------------------------------------------------------------

#[test]
fn rfc2543_request_without_magic_cookie_is_matched_by_the_fallback() {
    let mut s = Sim::new();
    let req = invite("2543branch");
    s.recv(0.0, req.clone(), UDP);
    let tx = server_tx(&s.take_events());
    // The same request again is a retransmission.
    s.recv(0.5, req.clone(), UDP);
    assert!(s.take_events().is_empty());
    assert_eq!(s.layer.len(), 1);
    assert_eq!(s.layer.counters().absorbed, 1);
    // Another CSeq is another transaction.
    let req2 = request("INVITE", "2543branch", 314160);
    s.recv(0.6, req2.clone(), UDP);
    let other = server_tx(&s.take_events());
    assert_ne!(other, tx);
    s.respond(0.7, other, reply(&req2, 500, Some("o"))).unwrap();
    // A 486 with a To tag; the ACK matches by that tag (RFC 3261 17.2.3).
    s.respond(1.0, tx, reply(&req, 486, Some("legacy")))
        .unwrap();
    // An ACK with another To tag is not this transaction's: passed up.
    s.recv(1.1, ack_for("2543branch", "nottheone"), UDP);
    assert_eq!(names(&s.take_events()), ["1.1 request ACK none"]);
    s.recv(1.2, ack_for("2543branch", "legacy"), UDP);
    assert!(s.take_events().is_empty(), "the ACK of the 486 is absorbed");
    s.take_sent();
    s.run_until(5.0);
    assert!(
        s.take_sent().iter().all(|(_, t)| code_of(t) != Some(486)),
        "Confirmed: timer G stopped"
    );
    s.finish();
}

#[test]
fn rfc4475_badbranch_creates_a_transaction_and_its_retransmission_is_absorbed() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/rfc4475/badbranch.dat"
    );
    let bytes = std::fs::read(path).unwrap();
    let msg = parse_datagram(&bytes, &Limits::default()).unwrap();
    sluice_sip::validate_request(&msg).unwrap();
    let mut s = Sim::new();
    s.recv(0.0, msg.clone(), UDP);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["0 request OPTIONS tx"]);
    let tx = server_tx(&ev);
    assert_eq!(s.layer.len(), 1);
    // The bare cookie identifies nothing: matched by the RFC 2543 rules, absorbed.
    s.recv(0.5, msg.clone(), UDP);
    assert!(s.take_events().is_empty());
    assert_eq!(s.layer.len(), 1);
    s.respond(1.0, tx, reply(&msg, 200, Some("bb"))).unwrap();
    s.recv(1.5, msg, UDP);
    assert_eq!(
        s.take_sent()
            .iter()
            .map(|(_, t)| code_of(t).unwrap())
            .collect::<Vec<_>>(),
        [200, 200]
    );
    s.finish();
}

#[test]
fn requests_differing_in_sent_by_or_method_are_separate_transactions() {
    let mut s = Sim::new();
    let mut a = request("OPTIONS", "z9hG4bKm1", 1);
    a.set(
        HeaderName::Via,
        "SIP/2.0/UDP pc33.example.com;branch=z9hG4bKm1",
    );
    let mut other_host = a.clone();
    other_host.set(
        HeaderName::Via,
        "SIP/2.0/UDP pc34.example.com;branch=z9hG4bKm1",
    );
    let mut other_port = a.clone();
    other_port.set(
        HeaderName::Via,
        "SIP/2.0/UDP pc33.example.com:5070;branch=z9hG4bKm1",
    );
    let mut other_method = request("INFO", "z9hG4bKm1", 1);
    other_method.set(
        HeaderName::Via,
        "SIP/2.0/UDP pc33.example.com;branch=z9hG4bKm1",
    );
    s.recv(0.0, a.clone(), UDP);
    s.recv(0.0, other_host, UDP);
    s.recv(0.0, other_port, UDP);
    s.recv(0.0, other_method, UDP);
    assert_eq!(s.layer.len(), 4);
    assert_eq!(s.take_events().len(), 4);
    // Host names in sent-by compare case-insensitively: a retransmission.
    let mut a_upper = a.clone();
    a_upper.set(
        HeaderName::Via,
        "SIP/2.0/UDP PC33.Example.COM;branch=z9hG4bKm1",
    );
    s.recv(0.1, a_upper, UDP);
    assert_eq!(s.layer.len(), 4);
    assert!(s.take_events().is_empty());
    assert_eq!(s.layer.counters().absorbed, 1);
    s.finish();
}

#[test]
fn cancel_finds_its_invite_and_is_a_transaction_of_its_own() {
    let mut s = Sim::new();
    let inv = invite("z9hG4bKc1");
    s.recv(0.0, inv.clone(), UDP);
    let inv_tx = server_tx(&s.take_events());
    s.respond(0.1, inv_tx, reply(&inv, 180, Some("c1")))
        .unwrap();
    let mut cancel = request("CANCEL", "z9hG4bKc1", 314159);
    cancel.remove(&HeaderName::Contact);
    assert_eq!(s.layer.find_invite_for_cancel(&cancel), Some(inv_tx));
    s.recv(1.0, cancel.clone(), UDP);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["1 request CANCEL tx"]);
    let cancel_tx = server_tx(&ev);
    assert_ne!(cancel_tx, inv_tx);
    assert_eq!(s.layer.find_invite_for_cancel(&cancel), Some(inv_tx));
    // Another branch cancels nothing.
    let stranger = request("CANCEL", "z9hG4bKc2", 314159);
    assert_eq!(s.layer.find_invite_for_cancel(&stranger), None);
    // The TU: 200 to the CANCEL, 487 to the INVITE; the ACK confirms.
    s.respond(1.0, cancel_tx, reply(&cancel, 200, Some("c1")))
        .unwrap();
    s.respond(1.0, inv_tx, reply(&inv, 487, Some("c1")))
        .unwrap();
    s.recv(1.1, ack_for("z9hG4bKc1", "c1"), UDP);
    assert!(s.take_events().is_empty());
    // RFC 2543 too.
    let old = invite("oldbranch");
    s.recv(2.0, old.clone(), UDP);
    let old_tx = server_tx(&s.take_events());
    let mut old_cancel = request("CANCEL", "oldbranch", 314159);
    old_cancel.remove(&HeaderName::Contact);
    assert_eq!(s.layer.find_invite_for_cancel(&old_cancel), Some(old_tx));
    let late = request("CANCEL", "oldbranch", 314158);
    assert_eq!(s.layer.find_invite_for_cancel(&late), None);
    s.respond(2.0, old_tx, reply(&old, 487, Some("o"))).unwrap();
    s.finish();
}

#[test]
fn a_response_matching_no_client_transaction_is_reported_stray() {
    let mut s = Sim::new();
    let req = request("OPTIONS", "z9hG4bKr1", 1);
    s.send(0.0, req.clone(), UDP);
    // Same branch, other CSeq method (RFC 3261 17.1.3): not this transaction.
    let mut wrong_method = reply(&req, 200, None);
    wrong_method.set(HeaderName::CSeq, "1 INVITE");
    s.recv(0.1, wrong_method, UDP);
    s.recv(0.2, reply(&invite("z9hG4bKnobody"), 200, Some("x")), TCP);
    let ev = s.take_events();
    assert_eq!(names(&ev), ["0.1 stray 200", "0.2 stray 200"]);
    assert!(matches!(&ev[1].1, TxEvent::StrayResponse { from, .. } if *from == peer(TCP)));
    assert_eq!(s.layer.counters().stray_responses, 2);
    assert_eq!(s.layer.len(), 1);
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Transport errors, misuse
// ---------------------------------------------------------------------------------------

#[test]
fn transport_error_terminates_client_and_server_transactions() {
    let mut s = Sim::new();
    let client = s.send(0.0, invite("z9hG4bKt1"), TCP);
    s.recv(0.0, request("OPTIONS", "z9hG4bKt2", 1), UDP);
    let server = server_tx(&s.take_events());
    assert_eq!(s.layer.len(), 2);
    s.layer.transport_error(client, s.now);
    s.layer.transport_error(server, s.now);
    // Twice, or for an unknown id: nothing.
    s.layer.transport_error(server, s.now);
    s.layer.transport_error(TxId(999), s.now);
    s.drain();
    let ev = s.take_events();
    assert_eq!(
        names(&ev),
        [
            "0 transport-error",
            "0 terminated",
            "0 transport-error",
            "0 terminated"
        ]
    );
    assert!(matches!(ev[0].1, TxEvent::TransportError { tx } if tx == client));
    assert_eq!(s.layer.counters().transport_errors, 2);
    assert_eq!(s.layer.len(), 0);
    assert_eq!(s.layer.poll_timeout(), None);
    assert_eq!(
        s.layer.respond(server, Message::response(200, "OK"), s.now),
        Err(TxError::Unknown)
    );
    s.finish();
}

#[test]
fn respond_refuses_client_transactions_unknown_ids_and_non_responses() {
    let mut s = Sim::new();
    let req = request("OPTIONS", "z9hG4bKe1", 1);
    let client = s.send(0.0, req.clone(), UDP);
    s.recv(0.0, request("OPTIONS", "z9hG4bKe2", 1), UDP);
    let server = server_tx(&s.take_events());
    let now = s.now;
    assert_eq!(
        s.layer.respond(client, reply(&req, 200, None), now),
        Err(TxError::NotAServerTransaction)
    );
    assert_eq!(
        s.layer.respond(TxId(12345), reply(&req, 200, None), now),
        Err(TxError::Unknown)
    );
    assert!(matches!(
        s.layer.respond(server, req.clone(), now),
        Err(TxError::BadResponse(_))
    ));
    let mut low = reply(&req, 200, None);
    low.start = sluice_sip::StartLine::Response {
        version: "SIP/2.0".into(),
        code: 42,
        reason: "Odd".into(),
    };
    assert!(matches!(
        s.layer.respond(server, low, now),
        Err(TxError::BadResponse(_))
    ));
    s.drain();
    assert_eq!(
        offsets(&s.take_sent()),
        [0.0],
        "nothing sent for the refusals"
    );
    s.respond(1.0, server, reply(&req, 200, None)).unwrap();
    s.finish();
}

#[test]
fn ack_and_stateless_sends_go_out_once_and_leave_nothing_behind() {
    let mut s = Sim::new();
    let ack = ack_for("z9hG4bK2xxack", "t");
    let id = s.send(0.0, ack.clone(), UDP);
    assert_eq!(names(&s.take_events()), ["0 terminated"]);
    assert_eq!(s.layer.request(id), None);
    s.layer.send_stateless(ack.clone(), peer(TCP));
    s.drain();
    let sent = s.take_sent();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|(_, t)| t.bytes == ack.to_bytes()));
    assert_eq!(sent[1].1.peer, peer(TCP));
    assert_eq!(s.layer.len(), 0);
    assert_eq!(s.layer.poll_timeout(), None);
    s.finish();
}

#[test]
fn ids_are_unique_and_never_reused() {
    let mut s = Sim::new();
    let a = s.send(0.0, request("OPTIONS", "z9hG4bKu1", 1), TCP);
    s.layer.transport_error(a, s.now);
    let b = s.send(0.0, request("OPTIONS", "z9hG4bKu1", 1), TCP);
    assert!(b > a);
    s.drain();
    s.finish();
}

#[test]
fn transport_via_names_and_reliability() {
    assert_eq!(Transport::Udp.via_name(), "UDP");
    assert_eq!(Transport::Tcp.via_name(), "TCP");
    assert_eq!(Transport::Tls.via_name(), "TLS");
    assert!(!Transport::Udp.is_reliable());
    assert!(Transport::Tcp.is_reliable() && Transport::Tls.is_reliable());
    let d = TimerConfig::default();
    assert_eq!(
        (d.t1, d.t2, d.t4),
        (
            Duration::from_millis(500),
            Duration::from_secs(4),
            Duration::from_secs(5)
        )
    );
}

// ---------------------------------------------------------------------------------------
// No allocation in handle_timeout when nothing fires
// ---------------------------------------------------------------------------------------

/// Counts the allocations of the current thread (tests run on threads of their own).
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local Cell without destructor, so touching it never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

#[test]
fn handle_timeout_allocates_nothing_when_no_timer_fires() {
    let mut s = Sim::new();
    for i in 0..50 {
        s.send(0.0, request("OPTIONS", &format!("z9hG4bKal{i}"), 1), UDP);
        s.recv(0.0, request("INFO", &format!("z9hG4bKas{i}"), 1), UDP);
    }
    s.take_sent();
    s.take_events();
    let base = s.base;
    let before = allocations();
    for ms in 0..500 {
        s.layer
            .handle_timeout(base + Duration::from_micros(ms * 900));
        assert!(s.layer.poll_timeout().is_some());
    }
    assert_eq!(allocations() - before, 0, "idle ticks allocated");
    assert!(s.layer.poll_transmit().is_none());
    s.finish();
}

// ---------------------------------------------------------------------------------------
// Property: any interleaving is survived, and everything ends
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// A request arrives: method, branch index (0-2 cookie, 3 RFC 2543), CSeq, To tag,
    /// transport.
    Inbound(&'static str, usize, u32, bool, bool),
    /// A response arrives for the n-th request sent (or a stranger's), with a code.
    Response(usize, u16, bool, bool),
    /// The TU sends a request.
    Send(&'static str, bool),
    /// The TU answers the n-th server transaction.
    Respond(usize, u16),
    TransportError(usize),
    /// Time passes by so many milliseconds; timers run at their deadlines or late.
    Advance(u64, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let method = prop::sample::select(vec!["INVITE", "OPTIONS", "CANCEL", "ACK", "BYE"]);
    let code = prop::sample::select(vec![100u16, 180, 183, 200, 202, 302, 404, 486, 487, 603]);
    prop_oneof![
        4 => (method.clone(), 0..4usize, 1..3u32, any::<bool>(), any::<bool>())
            .prop_map(|(m, b, c, t, tcp)| Op::Inbound(m, b, c, t, tcp)),
        4 => (0..8usize, code.clone(), any::<bool>(), any::<bool>())
            .prop_map(|(n, c, tag, tcp)| Op::Response(n, c, tag, tcp)),
        3 => (method, any::<bool>()).prop_map(|(m, tcp)| Op::Send(m, tcp)),
        3 => (0..8usize, code).prop_map(|(n, c)| Op::Respond(n, c)),
        1 => (0..16usize).prop_map(Op::TransportError),
        4 => (0..40_000u64, any::<bool>()).prop_map(|(ms, late)| Op::Advance(ms, late)),
    ]
}

fn transport(tcp: bool) -> Transport {
    if tcp { TCP } else { UDP }
}

/// A request with the given pieces; Contact only where validation wants it.
fn prop_request(method: &str, branch: &str, cseq: u32, to_tag: bool) -> Message {
    let cseq_method = method;
    let to = if to_tag {
        "<sip:bob@example.com>;tag=totag"
    } else {
        "<sip:bob@example.com>"
    };
    parse(&format!(
        "{method} sip:bob@example.com SIP/2.0\n\
         Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\n\
         Max-Forwards: 70\n\
         To: {to}\n\
         From: <sip:alice@example.com>;tag=f\n\
         Call-ID: prop@example.com\n\
         CSeq: {cseq} {cseq_method}\n\
         Contact: <sip:alice@192.0.2.1>\n\
         Content-Length: 0\n\n"
    ))
}

struct Model {
    sim: Sim,
    /// Requests the TU sent: id, request, transport.
    sent: Vec<(TxId, Message, Transport)>,
    servers: Vec<TxId>,
    gone: BTreeSet<TxId>,
    seen: usize,
    next_branch: u32,
}

impl Model {
    /// Checks the events since the last call: nothing about a transaction after its end.
    fn check_events(&mut self) {
        for (_, e) in &self.sim.events[self.seen..] {
            let tx = match e {
                TxEvent::Request { tx, .. } => *tx,
                TxEvent::Response { tx, .. }
                | TxEvent::Timeout { tx }
                | TxEvent::TransportError { tx } => Some(*tx),
                TxEvent::StrayResponse { .. } => None,
                TxEvent::Terminated { tx } => {
                    assert!(self.gone.insert(*tx), "{tx:?} terminated twice");
                    None
                }
            };
            if let Some(tx) = tx {
                assert!(
                    !self.gone.contains(&tx),
                    "event for {tx:?} after its end: {e:?}"
                );
            }
            if let TxEvent::Request { tx: Some(tx), .. } = e {
                self.servers.push(*tx);
            }
        }
        self.seen = self.sim.events.len();
    }

    fn apply(&mut self, op: Op) {
        let now = self.sim.offset().as_secs_f64();
        match op {
            Op::Inbound(m, b, cseq, tag, tcp) => {
                let branch = ["z9hG4bKp0", "z9hG4bKp1", "z9hG4bKp2", "rfc2543"][b];
                self.sim
                    .recv(now, prop_request(m, branch, cseq, tag), transport(tcp));
            }
            Op::Response(n, code, tag, tcp) => {
                let req = match self.sent.get(n) {
                    Some((_, r, _)) => r.clone(),
                    None => prop_request("INVITE", "z9hG4bKstranger", 1, false),
                };
                let tag = tag.then_some("rt");
                self.sim.recv(now, reply(&req, code, tag), transport(tcp));
            }
            Op::Send(m, tcp) => {
                // A CANCEL carries the branch of the last INVITE sent; everything else a
                // fresh branch, as a TU does.
                let branch = match self
                    .sent
                    .iter()
                    .rev()
                    .find(|(_, r, _)| r.method() == Some(&Method::Invite))
                {
                    Some((_, r, _)) if m == "CANCEL" => {
                        r.top_via().unwrap().branch().unwrap().to_owned()
                    }
                    _ => {
                        self.next_branch += 1;
                        format!("z9hG4bKc{}", self.next_branch)
                    }
                };
                let req = prop_request(m, &branch, 1, false);
                let id = self.sim.send(now, req.clone(), transport(tcp));
                self.sent.push((id, req, transport(tcp)));
            }
            Op::Respond(n, code) => {
                if let Some(&tx) = self.servers.get(n) {
                    let req = self.sim.layer.request(tx).cloned();
                    let resp = match &req {
                        Some(r) => reply(r, code, Some("srv")),
                        None => Message::response(code, "X"),
                    };
                    let r = self.sim.respond(now, tx, resp);
                    if req.is_none() {
                        assert_eq!(r, Err(TxError::Unknown));
                    }
                }
            }
            Op::TransportError(n) => {
                let ids: Vec<_> = self.sim.ids.iter().copied().collect();
                if let Some(&tx) = ids.get(n) {
                    self.sim.layer.transport_error(tx, self.sim.now);
                    self.sim.drain();
                }
            }
            Op::Advance(ms, late) => {
                let to = now + ms as f64 / 1000.0;
                if late {
                    // One call long after the deadlines.
                    self.sim.go(to);
                    self.sim.layer.handle_timeout(self.sim.now);
                    self.sim.drain();
                    if let Some(next) = self.sim.layer.poll_timeout() {
                        assert!(next > self.sim.now);
                    }
                } else {
                    self.sim.run_until(to);
                }
            }
        }
        self.check_events();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_never_panic_and_every_transaction_ends(
        ops in prop::collection::vec(op(), 0..60)
    ) {
        let mut m = Model {
            sim: Sim::new(),
            sent: Vec::new(),
            servers: Vec::new(),
            gone: BTreeSet::new(),
            seen: 0,
            next_branch: 0,
        };
        for o in ops {
            m.apply(o);
        }
        // The TU's duty: answer every INVITE server transaction (non-INVITE ones it leaves
        // unanswered end by themselves), CANCEL every INVITE it sent (RFC 3261 9.1 bounds
        // the wait for its final then).
        let now = m.sim.offset().as_secs_f64();
        for tx in m.servers.clone() {
            if let Some(req) = m
                .sim
                .layer
                .request(tx)
                .filter(|r| r.method() == Some(&Method::Invite))
                .cloned()
            {
                let _ = m.sim.respond(now, tx, reply(&req, 486, Some("end")));
            }
        }
        for (_, req, t) in m.sent.clone() {
            if req.method() == Some(&Method::Invite) {
                let mut cancel = req.clone();
                cancel.start = sluice_sip::StartLine::Request {
                    method: Method::Cancel,
                    uri: req.request_uri().unwrap().clone(),
                    version: "SIP/2.0".into(),
                };
                cancel.set(HeaderName::CSeq, "1 CANCEL");
                m.sim.send(now, cancel, t);
            }
        }
        m.check_events();
        let Model { sim, .. } = m;
        sim.finish();
    }
}
