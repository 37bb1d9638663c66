//! The non-INVITE client transaction (RFC 3261 section 17.1.2).
//!
//! ```text
//! Trying --1xx--> Proceeding --200-699--> Completed --timer K--> Terminated
//!   \---------------200-699-------------------^
//! Trying, Proceeding --timer F (Timeout)--> Terminated
//! ```

use std::time::Duration;

use super::timers::{Slots, Timer};
use super::{Ctx, Peer, Step, TxEvent};
use crate::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Trying,
    Proceeding,
    Completed,
}

#[derive(Debug)]
pub(crate) struct ClientNonInvite {
    pub(crate) request: Message,
    pub(crate) timers: Slots,
    /// The request as sent, for retransmissions.
    bytes: Vec<u8>,
    pub(super) peer: Peer,
    state: State,
    /// Timer E's current interval.
    interval: Duration,
}

impl ClientNonInvite {
    pub(crate) fn start(request: Message, peer: Peer, ctx: &mut Ctx<'_>) -> Self {
        let bytes = request.to_bytes();
        ctx.send(peer, &bytes);
        let mut me = Self {
            request,
            timers: Slots::default(),
            bytes,
            peer,
            state: State::Trying,
            interval: ctx.cfg.t1,
        };
        if !peer.transport.is_reliable() {
            // RFC 3261 17.1.2.2: over an unreliable transport timer E MUST be set to T1.
            ctx.arm(&mut me.timers, Timer::E, me.interval);
        }
        // RFC 3261 17.1.2.2: timer F MUST be set to 64*T1 for any transport.
        ctx.arm(&mut me.timers, Timer::F, ctx.cfg.t1x64());
        me
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn on_response(&mut self, msg: Message, ctx: &mut Ctx<'_>) -> Step {
        let Some(code) = msg.code() else {
            return Step::Live;
        };
        let tx = ctx.id;
        match self.state {
            State::Completed => {
                // RFC 3261 17.1.2.2: Completed buffers response retransmissions.
                ctx.absorb();
                Step::Live
            }
            State::Trying | State::Proceeding if code < 200 => {
                // RFC 3261 17.1.2.2: a provisional response MUST be passed to the TU and
                // moves Trying to Proceeding.
                self.state = State::Proceeding;
                ctx.emit(TxEvent::Response { tx, msg });
                Step::Live
            }
            State::Trying | State::Proceeding => {
                // RFC 3261 17.1.2.2: a final response (200-699) MUST be passed to the TU
                // and moves to Completed.
                self.state = State::Completed;
                self.timers.clear(Timer::E);
                self.timers.clear(Timer::F);
                ctx.emit(TxEvent::Response { tx, msg });
                if self.peer.transport.is_reliable() {
                    // RFC 3261 17.1.2.2: timer K is zero for reliable transports.
                    return Step::Done;
                }
                // RFC 3261 17.1.2.2: timer K = T4 for unreliable transports.
                ctx.arm(&mut self.timers, Timer::K, ctx.cfg.t4);
                Step::Live
            }
        }
    }

    pub(crate) fn on_timer(&mut self, t: Timer, ctx: &mut Ctx<'_>) -> Step {
        match (t, self.state) {
            (Timer::E, State::Trying) => {
                // RFC 3261 17.1.2.2: timer E in Trying MUST retransmit the request and be
                // reset to MIN(2*previous, T2).
                ctx.retransmit(self.peer, &self.bytes);
                self.interval = ctx.cfg.double_capped(self.interval);
                ctx.arm(&mut self.timers, Timer::E, self.interval);
                Step::Live
            }
            (Timer::E, State::Proceeding) => {
                // RFC 3261 17.1.2.2: timer E in Proceeding MUST retransmit the request and
                // MUST be reset to T2.
                ctx.retransmit(self.peer, &self.bytes);
                self.interval = ctx.cfg.t2;
                ctx.arm(&mut self.timers, Timer::E, self.interval);
                Step::Live
            }
            (Timer::F, State::Trying | State::Proceeding) => {
                // RFC 3261 17.1.2.2: timer F: the client transaction SHOULD inform the TU
                // of the timeout and SHOULD enter Terminated.
                ctx.timeout();
                Step::Done
            }
            // RFC 3261 17.1.2.2: timer K in Completed MUST move to Terminated.
            (Timer::K, State::Completed) => Step::Done,
            _ => Step::Live,
        }
    }
}
