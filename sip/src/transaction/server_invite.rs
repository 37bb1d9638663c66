//! The INVITE server transaction (RFC 3261 section 17.2.1, with the Accepted state of RFC
//! 6026 section 7.1).
//!
//! ```text
//! Proceeding --300-699 from TU--> Completed --ACK--> Confirmed --timer I--> Terminated
//!     |                              \--timer H (Timeout)--> Terminated
//!     +--2xx from TU--> Accepted --timer L--> Terminated
//! ```
//!
//! The transaction lives in Proceeding until the TU answers: see the module documentation
//! of [`crate::transaction`].

use std::time::Duration;

use super::timers::{Slots, Timer};
use super::{Ctx, Peer, Step, TxError, TxEvent};
use crate::{Message, Method, response_for};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

#[derive(Debug)]
pub(crate) struct ServerInvite {
    pub(crate) request: Message,
    pub(crate) timers: Slots,
    /// Where the request came from, where every response goes.
    pub(super) peer: Peer,
    state: State,
    /// The most recent provisional response sent, re-sent on a retransmitted INVITE.
    provisional: Vec<u8>,
    /// The 300-699 final, re-sent on a retransmitted INVITE and by timer G.
    final_response: Vec<u8>,
    /// Timer G's current interval.
    interval: Duration,
}

impl ServerInvite {
    pub(crate) fn start(request: Message, peer: Peer, ctx: &mut Ctx<'_>) -> Self {
        // RFC 3261 17.2.1: the server transaction MUST generate a 100 (Trying) unless it
        // knows the TU will answer within 200 ms; it cannot know, so it always does (8.2.6).
        let trying = response_for(&request, 100, None).to_bytes();
        ctx.send(peer, &trying);
        // RFC 3261 17.2.1: the request MUST be passed to the TU.
        ctx.emit(TxEvent::Request {
            tx: Some(ctx.id),
            msg: request.clone(),
            from: peer,
        });
        Self {
            request,
            timers: Slots::default(),
            peer,
            state: State::Proceeding,
            provisional: trying,
            final_response: Vec::new(),
            interval: ctx.cfg.t1,
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// A retransmitted INVITE, or an ACK, matched this transaction.
    pub(crate) fn on_request(&mut self, msg: Message, from: Peer, ctx: &mut Ctx<'_>) -> Step {
        let ack = msg.method() == Some(&Method::Ack);
        match (self.state, ack) {
            (State::Proceeding, false) => {
                // RFC 3261 17.2.1: a retransmission in Proceeding: the most recent
                // provisional response MUST be passed to the transport for retransmission.
                ctx.absorb();
                ctx.send(self.peer, &self.provisional);
                Step::Live
            }
            (State::Completed, false) => {
                // RFC 3261 17.2.1: a retransmission in Completed: the final response is
                // passed to the transport for retransmission.
                ctx.absorb();
                ctx.send(self.peer, &self.final_response);
                Step::Live
            }
            (State::Completed, true) => {
                // RFC 3261 17.2.1: an ACK in Completed MUST move to Confirmed, where timer G
                // is ignored (and H no longer matters).
                ctx.absorb();
                self.state = State::Confirmed;
                self.timers.clear(Timer::G);
                self.timers.clear(Timer::H);
                if self.peer.transport.is_reliable() {
                    // RFC 3261 17.2.1: timer I is zero for reliable transports.
                    return Step::Done;
                }
                // RFC 3261 17.2.1: timer I = T4 for unreliable transports.
                ctx.arm(&mut self.timers, Timer::I, ctx.cfg.t4);
                Step::Live
            }
            (State::Accepted, true) => {
                // RFC 6026 7.1: an ACK in Accepted (the ACK of the 2xx) is passed up to the
                // TU; it belongs to the dialog, not to the transaction.
                ctx.emit(TxEvent::Request {
                    tx: None,
                    msg,
                    from,
                });
                Step::Live
            }
            // RFC 6026 7.1: a retransmitted INVITE in Accepted is absorbed (never passed up,
            // the 2xx retransmissions are the TU's). RFC 3261 17.2.1: Confirmed absorbs ACKs
            // (and retransmitted INVITEs). An ACK in Proceeding acknowledges nothing.
            _ => {
                ctx.absorb();
                Step::Live
            }
        }
    }

    /// A response from the TU; the layer has checked `code` is 100-699.
    pub(crate) fn respond(
        &mut self,
        resp: Message,
        code: u16,
        ctx: &mut Ctx<'_>,
    ) -> Result<Step, TxError> {
        match self.state {
            State::Proceeding => {}
            State::Accepted if (200..300).contains(&code) => {
                // RFC 6026 7.1: a 2xx the TU passes in Accepted (its own retransmission,
                // RFC 3261 13.3.1.4) is sent; the transaction retransmits nothing itself.
                ctx.send(self.peer, &resp.to_bytes());
                return Ok(Step::Live);
            }
            State::Completed | State::Confirmed | State::Accepted => {
                return Err(TxError::FinalAlreadySent);
            }
        }
        let bytes = resp.to_bytes();
        ctx.send(self.peer, &bytes);
        match code {
            // RFC 3261 17.2.1: provisional responses from the TU are passed to the
            // transport; the transaction stays in Proceeding.
            100..=199 => self.provisional = bytes,
            200..=299 => {
                // RFC 6026 7.1: a 2xx from the TU moves to Accepted (not Terminated) and
                // starts timer L = 64*T1.
                self.state = State::Accepted;
                ctx.arm(&mut self.timers, Timer::L, ctx.cfg.t1x64());
            }
            _ => {
                // RFC 3261 17.2.1: a 300-699 response from the TU moves to Completed.
                self.state = State::Completed;
                self.final_response = bytes;
                if !self.peer.transport.is_reliable() {
                    // RFC 3261 17.2.1: timer G = T1 for unreliable transports only.
                    ctx.arm(&mut self.timers, Timer::G, self.interval);
                }
                // RFC 3261 17.2.1: timer H = 64*T1 for all transports.
                ctx.arm(&mut self.timers, Timer::H, ctx.cfg.t1x64());
            }
        }
        Ok(Step::Live)
    }

    pub(crate) fn on_timer(&mut self, t: Timer, ctx: &mut Ctx<'_>) -> Step {
        match (t, self.state) {
            (Timer::G, State::Completed) => {
                // RFC 3261 17.2.1: timer G: the response is passed to the transport for
                // retransmission and timer G reset to MIN(2*previous, T2).
                ctx.retransmit(self.peer, &self.final_response);
                self.interval = ctx.cfg.double_capped(self.interval);
                ctx.arm(&mut self.timers, Timer::G, self.interval);
                Step::Live
            }
            (Timer::H, State::Completed) => {
                // RFC 3261 17.2.1: timer H in Completed (no ACK): the transaction MUST move
                // to Terminated and MUST indicate a transaction failure to the TU.
                ctx.timeout();
                Step::Done
            }
            // RFC 3261 17.2.1: timer I in Confirmed: the transaction MUST move to Terminated.
            (Timer::I, State::Confirmed) => Step::Done,
            // RFC 6026 7.1: timer L in Accepted: the transaction MUST move to Terminated.
            (Timer::L, State::Accepted) => Step::Done,
            _ => Step::Live,
        }
    }
}
