//! The non-INVITE server transaction (RFC 3261 section 17.2.2).
//!
//! ```text
//! Trying --1xx from TU--> Proceeding --200-699 from TU--> Completed --timer J--> Terminated
//!   \------------------200-699 from TU-----------------------^
//! Trying, Proceeding --64*T1 unanswered--> Terminated
//! ```
//!
//! The last transition is this layer's rule (see the module documentation of
//! [`crate::transaction`]): a TU that never answers does not keep the transaction forever.

use super::timers::{Slots, Timer};
use super::{Ctx, Peer, Step, TxError, TxEvent};
use crate::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Trying,
    Proceeding,
    Completed,
}

#[derive(Debug)]
pub(crate) struct ServerNonInvite {
    pub(crate) request: Message,
    pub(crate) timers: Slots,
    /// Where the request came from, where every response goes.
    pub(super) peer: Peer,
    state: State,
    /// The most recent provisional response sent.
    provisional: Vec<u8>,
    /// The final response sent.
    final_response: Vec<u8>,
}

impl ServerNonInvite {
    pub(crate) fn start(request: Message, peer: Peer, ctx: &mut Ctx<'_>) -> Self {
        // RFC 3261 17.2.2: the request is passed to the TU.
        ctx.emit(TxEvent::Request {
            tx: Some(ctx.id),
            msg: request.clone(),
            from: peer,
        });
        let mut me = Self {
            request,
            timers: Slots::default(),
            peer,
            state: State::Trying,
            provisional: Vec::new(),
            final_response: Vec::new(),
        };
        // This layer's rule: unanswered for 64*T1 (the client's timer F), it ends.
        ctx.arm(&mut me.timers, Timer::Unanswered, ctx.cfg.t1x64());
        me
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// A retransmission of the request matched this transaction.
    pub(crate) fn on_request(&mut self, ctx: &mut Ctx<'_>) -> Step {
        ctx.absorb();
        match self.state {
            // RFC 3261 17.2.2: in Trying, request retransmissions are discarded.
            State::Trying => {}
            // RFC 3261 17.2.2: in Proceeding, a retransmission MUST cause the most recent
            // provisional response to be passed to the transport.
            State::Proceeding => ctx.send(self.peer, &self.provisional),
            // RFC 3261 17.2.2: in Completed, a retransmission MUST cause the final response
            // to be passed to the transport.
            State::Completed => ctx.send(self.peer, &self.final_response),
        }
        Step::Live
    }

    /// A response from the TU; the layer has checked `code` is 100-699.
    pub(crate) fn respond(
        &mut self,
        resp: Message,
        code: u16,
        ctx: &mut Ctx<'_>,
    ) -> Result<Step, TxError> {
        if self.state == State::Completed {
            // RFC 3261 17.2.2: in Completed, further finals from the TU are discarded.
            return Err(TxError::FinalAlreadySent);
        }
        let bytes = resp.to_bytes();
        ctx.send(self.peer, &bytes);
        if code < 200 {
            // RFC 3261 17.2.2: a provisional from the TU is sent and moves Trying to
            // Proceeding.
            self.state = State::Proceeding;
            self.provisional = bytes;
            return Ok(Step::Live);
        }
        // RFC 3261 17.2.2: a final (200-699) from the TU is sent and moves to Completed.
        self.state = State::Completed;
        self.final_response = bytes;
        self.timers.clear(Timer::Unanswered);
        if self.peer.transport.is_reliable() {
            // RFC 3261 17.2.2: timer J is zero for reliable transports.
            return Ok(Step::Done);
        }
        // RFC 3261 17.2.2: timer J = 64*T1 for unreliable transports.
        ctx.arm(&mut self.timers, Timer::J, ctx.cfg.t1x64());
        Ok(Step::Live)
    }

    pub(crate) fn on_timer(&mut self, t: Timer, _ctx: &mut Ctx<'_>) -> Step {
        match (t, self.state) {
            // RFC 3261 17.2.2: timer J in Completed: the transaction MUST move to Terminated.
            (Timer::J, State::Completed) => Step::Done,
            (Timer::Unanswered, State::Trying | State::Proceeding) => Step::Done,
            _ => Step::Live,
        }
    }
}
