//! The INVITE client transaction (RFC 3261 section 17.1.1, with the Accepted state of RFC
//! 6026 section 7.2).
//!
//! ```text
//! Calling --1xx--> Proceeding --300-699 (send ACK)--> Completed --timer D--> Terminated
//!    |                 |  \--2xx--> Accepted --timer M--> Terminated
//!    +--timer B (Timeout)--> Terminated
//! ```

use std::time::Duration;

use super::timers::{Slots, Timer};
use super::{Ctx, Peer, Step, TxEvent};
use crate::grammar::split_commas;
use crate::{HeaderName, Message, Method, StartLine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Calling,
    Proceeding,
    Completed,
    Accepted,
}

#[derive(Debug)]
pub(crate) struct ClientInvite {
    pub(crate) request: Message,
    pub(crate) timers: Slots,
    /// The request as sent, for retransmissions.
    bytes: Vec<u8>,
    pub(super) peer: Peer,
    state: State,
    /// Timer A's current interval.
    interval: Duration,
    /// The ACK of the 300-699 final, re-sent for each retransmission of that final.
    ack: Vec<u8>,
}

impl ClientInvite {
    pub(crate) fn start(request: Message, peer: Peer, ctx: &mut Ctx<'_>) -> Self {
        let bytes = request.to_bytes();
        ctx.send(peer, &bytes);
        let mut me = Self {
            request,
            timers: Slots::default(),
            bytes,
            peer,
            state: State::Calling,
            interval: ctx.cfg.t1,
            ack: Vec::new(),
        };
        if !peer.transport.is_reliable() {
            // RFC 3261 17.1.1.2: over an unreliable transport the client transaction MUST
            // start timer A with a value of T1 (and none over a reliable one).
            ctx.arm(&mut me.timers, Timer::A, me.interval);
        }
        // RFC 3261 17.1.1.2: for any transport, timer B MUST be started with 64*T1.
        ctx.arm(&mut me.timers, Timer::B, ctx.cfg.t1x64());
        me
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    fn leave_calling(&mut self) {
        self.timers.clear(Timer::A);
        self.timers.clear(Timer::B);
        self.timers.clear(Timer::Cancelled);
    }

    pub(crate) fn on_response(&mut self, msg: Message, ctx: &mut Ctx<'_>) -> Step {
        let Some(code) = msg.code() else {
            return Step::Live;
        };
        let tx = ctx.id;
        match (self.state, code) {
            (State::Calling | State::Proceeding, 100..=199) => {
                // RFC 3261 17.1.1.2: a provisional response moves Calling to Proceeding,
                // the request SHOULD NOT be retransmitted any longer, and the response
                // MUST be passed to the TU. Timer B only acts in Calling.
                self.state = State::Proceeding;
                self.timers.clear(Timer::A);
                self.timers.clear(Timer::B);
                ctx.emit(TxEvent::Response { tx, msg });
                Step::Live
            }
            (State::Calling | State::Proceeding, 200..=299) => {
                // RFC 6026 7.2: a 2xx moves to Accepted (not Terminated), starts timer M =
                // 64*T1, and MUST be passed up; the TU sends the ACK (RFC 3261 13.2.2.4).
                self.state = State::Accepted;
                self.leave_calling();
                ctx.arm(&mut self.timers, Timer::M, ctx.cfg.t1x64());
                ctx.emit(TxEvent::Response { tx, msg });
                Step::Live
            }
            (State::Calling | State::Proceeding, _) => {
                // RFC 3261 17.1.1.2: a 300-699 response MUST move to Completed, the client
                // transaction MUST generate an ACK (17.1.1.3) and the response MUST be
                // passed up to the TU.
                self.state = State::Completed;
                self.leave_calling();
                if let Some(ack) = build_ack(&self.request, &msg) {
                    self.ack = ack.to_bytes();
                    ctx.send(self.peer, &self.ack);
                }
                ctx.emit(TxEvent::Response { tx, msg });
                if self.peer.transport.is_reliable() {
                    // RFC 3261 17.1.1.2: timer D is zero for reliable transports.
                    return Step::Done;
                }
                // RFC 3261 17.1.1.2: timer D, at least 32 s for unreliable transports.
                ctx.arm(&mut self.timers, Timer::D, ctx.cfg.timer_d());
                Step::Live
            }
            (State::Completed, 300..=699) => {
                // RFC 3261 17.1.1.2: a retransmitted final in Completed MUST cause the ACK
                // to be re-sent, and MUST NOT be passed up to the TU.
                ctx.absorb();
                if !self.ack.is_empty() {
                    ctx.send(self.peer, &self.ack);
                }
                Step::Live
            }
            (State::Accepted, 200..=299) => {
                // RFC 6026 7.2: every 2xx received in Accepted (retransmissions and other
                // forks) MUST be passed up to the TU, and is not ACKed by the transaction.
                ctx.emit(TxEvent::Response { tx, msg });
                Step::Live
            }
            // Provisionals and other finals after a final: nothing to do.
            _ => {
                ctx.absorb();
                Step::Live
            }
        }
    }

    pub(crate) fn on_timer(&mut self, t: Timer, ctx: &mut Ctx<'_>) -> Step {
        match (t, self.state) {
            (Timer::A, State::Calling) => {
                // RFC 3261 17.1.1.2: when timer A fires the request MUST be retransmitted
                // and timer A reset to twice its value.
                ctx.retransmit(self.peer, &self.bytes);
                self.interval = self.interval.saturating_mul(2);
                ctx.arm(&mut self.timers, Timer::A, self.interval);
                Step::Live
            }
            (Timer::B, State::Calling) => {
                // RFC 3261 17.1.1.2: timer B in Calling: inform the TU of the timeout and
                // go to Terminated.
                ctx.timeout();
                Step::Done
            }
            (Timer::Cancelled, State::Calling | State::Proceeding) => {
                // RFC 3261 9.1: no final response 64*T1 after the CANCEL: the client SHOULD
                // consider the transaction cancelled and destroy it.
                ctx.timeout();
                Step::Done
            }
            // RFC 3261 17.1.1.2: timer D in Completed MUST move to Terminated.
            (Timer::D, State::Completed) => Step::Done,
            // RFC 6026 7.2: timer M in Accepted MUST move to Terminated.
            (Timer::M, State::Accepted) => Step::Done,
            _ => Step::Live,
        }
    }

    /// The TU sent a CANCEL for this INVITE: bound the wait for its final response.
    pub(crate) fn on_cancel_sent(&mut self, ctx: &mut Ctx<'_>) {
        if matches!(self.state, State::Calling | State::Proceeding)
            && self.timers.get(Timer::Cancelled).is_none()
        {
            ctx.arm(&mut self.timers, Timer::Cancelled, ctx.cfg.t1x64());
        }
    }
}

/// The ACK of a 300-699 final response `resp` to INVITE `req` (RFC 3261 section 17.1.1.3).
/// None when `req` is not a request.
pub(crate) fn build_ack(req: &Message, resp: &Message) -> Option<Message> {
    let StartLine::Request { uri, .. } = &req.start else {
        return None;
    };
    // RFC 3261 17.1.1.3: the Request-URI MUST equal that of the original request.
    let mut ack = Message::request(Method::Ack, uri.clone());
    // RFC 3261 17.1.1.3: the ACK MUST contain a single Via, equal to the top Via of the
    // original request.
    if let Some(top) = req
        .header(&HeaderName::Via)
        .and_then(|line| split_commas(line).first().copied())
    {
        ack.push(HeaderName::Via, top);
    }
    // RFC 3261 8.1.1: every request carries Max-Forwards; the INVITE's, or 70 (8.1.1.6).
    ack.push(
        HeaderName::MaxForwards,
        req.header(&HeaderName::MaxForwards).unwrap_or("70"),
    );
    // RFC 3261 17.1.1.3: if the INVITE had Route header fields, the ACK MUST contain them.
    for route in req.header_lines(&HeaderName::Route) {
        ack.push(HeaderName::Route, route);
    }
    // RFC 3261 17.1.1.3: From MUST equal the From of the original request.
    if let Some(from) = req.header(&HeaderName::From) {
        ack.push(HeaderName::From, from);
    }
    // RFC 3261 17.1.1.3: To MUST equal the To of the response being acknowledged.
    if let Some(to) = resp
        .header(&HeaderName::To)
        .or_else(|| req.header(&HeaderName::To))
    {
        ack.push(HeaderName::To, to);
    }
    // RFC 3261 17.1.1.3: Call-ID MUST equal the Call-ID of the original request.
    if let Some(call_id) = req.header(&HeaderName::CallId) {
        ack.push(HeaderName::CallId, call_id);
    }
    // RFC 3261 17.1.1.3: the CSeq number MUST equal the request's, the method MUST be ACK.
    if let Ok(cseq) = req.cseq() {
        ack.push(HeaderName::CSeq, format!("{} ACK", cseq.seq));
    }
    Some(ack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, parse_datagram};

    fn parse(s: &str) -> Message {
        parse_datagram(s.replace('\n', "\r\n").as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn the_ack_of_a_non_2xx_follows_rfc3261_17_1_1_3() {
        let inv = parse(
            "INVITE sip:bob@192.0.2.4 SIP/2.0\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKx\n\
             Max-Forwards: 69\n\
             Route: <sip:p1.example.com;lr>\n\
             Route: <sip:p2.example.com;lr>\n\
             To: Bob <sip:bob@example.com>\n\
             From: Alice <sip:alice@example.com>;tag=1928301774\n\
             Call-ID: a84b4c76e66710\n\
             CSeq: 314159 INVITE\n\
             Contact: <sip:alice@192.0.2.1>\n\
             Content-Type: application/sdp\n\
             Content-Length: 4\n\n\
             v=0\n",
        );
        let busy = parse(
            "SIP/2.0 486 Busy Here\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8, SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKx\n\
             To: Bob <sip:bob@example.com>;tag=a6c85cf\n\
             From: Alice <sip:alice@example.com>;tag=1928301774\n\
             Call-ID: a84b4c76e66710\n\
             CSeq: 314159 INVITE\n\
             Content-Length: 0\n\n",
        );
        let ack = build_ack(&inv, &busy).unwrap();
        assert_eq!(ack.method(), Some(&Method::Ack));
        assert_eq!(ack.request_uri(), inv.request_uri());
        let vias: Vec<_> = ack.header_lines(&HeaderName::Via).collect();
        assert_eq!(vias, ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8"]);
        let routes: Vec<_> = ack.header_lines(&HeaderName::Route).collect();
        assert_eq!(
            routes,
            ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(
            ack.header(&HeaderName::To),
            Some("Bob <sip:bob@example.com>;tag=a6c85cf")
        );
        assert_eq!(ack.from_hdr().unwrap().tag(), Some("1928301774"));
        assert_eq!(ack.call_id().unwrap(), "a84b4c76e66710");
        let cseq = ack.cseq().unwrap();
        assert_eq!((cseq.seq, cseq.method), (314159, Method::Ack));
        assert_eq!(ack.header(&HeaderName::MaxForwards), Some("69"));
        assert!(ack.body.is_empty());
        assert!(ack.header(&HeaderName::Contact).is_none());
        // Written and parsed back, it is a valid request.
        let back = parse_datagram(&ack.to_bytes(), &Limits::default()).unwrap();
        crate::validate_request(&back).unwrap();
        assert!(build_ack(&busy, &busy).is_none());
    }
}
