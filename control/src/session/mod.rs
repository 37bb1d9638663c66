//! The media-session API: calls, their legs and media streams, driven by offer/answer/delete.
//!
//! Every front end (gRPC today; the ng protocol and the B2BUA later) calls [`Sessions`]. It owns
//! the port allocator and the calls, turns SDP into forwarding decisions, and tells the data plane
//! what to do through the [`MediaPlane`] seam, so it is tested here without a relay thread.
//!
//! Model: a call has two sides, 0 = the first offerer (the from-tag of the call's first offer)
//! and 1 = the one who answered it. That is the caller and then the callee, except with a late
//! offer (RFC 3261 13.2.1: an INVITE without SDP), where the callee offers in its 200 OK and the
//! caller answers in the ACK: `offer(from_tag = callee)`, `answer(from_tag = callee, to_tag =
//! caller)`, and side 0 is the callee. Sides are told apart by tag only, so later offers and
//! answers may come from either side in either role (re-INVITEs, RFC 3261 14).
//! Each m= line is a stream (`model::Stream`) with one relay endpoint per side: the socket(s)
//! *that side's* endpoint sends to. Media from side X's endpoint is sent on from side Y's socket
//! to Y's peer.
//!
//! The files follow the life of a request, so that a change to one rule touches one file:
//! `options` (what a request may ask for), `offer` and `answer` (SDP in, SDP out, streams set
//! up), `srtp` (SDES keys), `engine` (what the relay thread is told), `offload` (moving settled
//! streams into XDP and the AF_XDP workers and back), `report` (what a front end can show),
//! `fork` (the branches of a forked INVITE), `events`, `error`, `env` (the clock and random
//! source every request and sweep reads, given to [`Sessions::new`] so tests run calls in
//! simulated time), and `model` (the call state they all share).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_relay::engine::{Command, EndpointId, EngineEvent, EngineGone, EngineHandle};
use sluice_relay::handover::StreamHandover;
use sluice_relay::rtcp_report::RtcpReports;

use crate::kernel::{FlowIds, KernelPath};
use crate::load::{LoadGauge, LoadLimits};
use crate::port_alloc::{PortAllocError, PortAllocator};
use crate::sdp::Sdp;

mod answer;
mod engine;
mod env;
mod error;
mod events;
mod fork;
mod model;
mod offer;
mod offload;
mod options;
pub mod quality;
mod report;
mod socket_pool;
mod srtp;
#[cfg(test)]
mod tests;

pub use env::{Clock, ManualClock, Random, SessionEnv, SystemClock};
pub use error::SessionError;
pub use events::{CallEvent, EVENT_QUEUE_LEN, EventKind, EventSubscriber, unix_ms_of};
pub use options::{CodecRequest, Family, LegOptions, RtcpMuxMode, SessionConfig, SrtpMode};
pub use report::{
    CALL_END_REASONS, CallReport, DROP_REASONS, EndReason, KernelFeatureReport, LegReport,
    QualityPoint, QualityReport, STREAM_KINDS, STREAM_PATHS, SrtpReport, Statistics, StreamReport,
    WorkerReport,
};
pub use srtp::SideCrypto;

use error::bad;
use events::EventHub;
use model::{State, Totals};
use offload::last_activity;
use report::call_report;

/// Where the session layer's commands go: the relay engine, or a recorder in tests.
pub trait MediaPlane: Send {
    fn send(&mut self, cmd: Command) -> Result<(), EngineGone>;
    /// Where endpoint `id`'s per-stream state stands as its streams move to the AF_XDP workers
    /// (the engine's [`Command::HandOver`]; the stream comes back with [`Command::Resume`]).
    /// A plane that keeps no such state (a recorder in tests) hands over nothing.
    fn hand_over(&mut self, id: EndpointId) -> Result<StreamHandover, EngineGone> {
        let _ = id;
        Ok(StreamHandover::default())
    }
    /// Closes every socket and stops the data plane; later sends fail.
    fn stop(&mut self) {}
}

impl MediaPlane for EngineHandle {
    fn send(&mut self, cmd: Command) -> Result<(), EngineGone> {
        EngineHandle::send(self, cmd)
    }
    fn hand_over(&mut self, id: EndpointId) -> Result<StreamHandover, EngineGone> {
        EngineHandle::hand_over(self, id)
    }
    fn stop(&mut self) {
        if let Err(e) = EngineHandle::stop(self) {
            tracing::error!(error = %e, "relay thread ended with an error");
        }
    }
}

pub struct Sessions {
    state: Mutex<State>,
    events: EventHub,
    /// Turns true when shutdown begins, so that event streams end and clients let go.
    closing: tokio::sync::watch::Sender<bool>,
    clock: Arc<dyn Clock>,
    started_ns: u64,
    /// Host load readings for `--max-load` / `--max-cpu` (written by the daemon's sampler).
    load: Arc<LoadGauge>,
}

impl Sessions {
    /// Every reading of the time and every random draw of the session layer goes through
    /// `env`: the daemon passes [`SessionEnv::system`], tests a manual clock and a seeded rng.
    pub fn new(
        cfg: SessionConfig,
        env: SessionEnv,
        plane: Box<dyn MediaPlane>,
        kernel: Option<Box<dyn KernelPath>>,
    ) -> Result<Arc<Sessions>, PortAllocError> {
        let SessionEnv { clock, mut rng } = env;
        let ports = PortAllocator::from_rng(cfg.port_low, cfg.port_high, &mut rng)?;
        let cfg_pool = cfg.socket_pool;
        Ok(Arc::new(Sessions {
            started_ns: clock.now_ns(),
            state: Mutex::new(State {
                cfg,
                ports,
                plane,
                clock: clock.clone(),
                rng,
                calls: HashMap::new(),
                by_endpoint: HashMap::new(),
                next_endpoint: 1,
                totals: Totals::default(),
                shutting_down: false,
                max_sessions: None,
                load_limits: LoadLimits::default(),
                kernel,
                flow_ids: FlowIds::default(),
                pool: socket_pool::SocketPool::new(cfg_pool),
            }),
            events: EventHub::new(EVENT_QUEUE_LEN),
            closing: tokio::sync::watch::Sender::new(false),
            clock,
            load: Arc::default(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than poison forever.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events of every call from now on, in order, in a queue of [`EVENT_QUEUE_LEN`] events
    /// of this subscriber's own (see [`EventKind::Overflow`] for what happens when it is full).
    pub fn subscribe(&self) -> EventSubscriber {
        self.events.subscribe()
    }

    /// Marks the start of shutdown: new offers are refused and event streams end.
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
        self.closing.send_replace(true);
    }

    /// Caps the number of calls: offers that would create a call beyond it are refused with
    /// [`SessionError::SessionLimit`], calls in progress go on. `Some(0)` drains the node;
    /// `None` lifts the cap. Returns the previous cap.
    pub fn set_max_sessions(&self, max: Option<u64>) -> Option<u64> {
        let mut st = self.lock();
        std::mem::replace(&mut st.max_sessions, max)
    }

    /// Refuses new calls (with [`SessionError::Overloaded`]) while the host is above `limits`,
    /// as read into [`Sessions::load_gauge`]; calls in progress go on.
    pub fn set_load_limits(&self, limits: LoadLimits) {
        self.lock().load_limits = limits;
    }

    /// The readings the load limits are checked against.
    pub fn load_gauge(&self) -> &Arc<LoadGauge> {
        &self.load
    }

    /// Resolves once shutdown has begun.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    /// Handles an SDP offer; returns the SDP for the other party.
    pub fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        self.offer_branch(call_id, from_tag, "", sdp, opts)
    }

    /// [`Sessions::offer`] to one branch of a forked INVITE, named by `branch` (rtpengine's
    /// `via-branch`; "" for the branch the call holds). A branch the call has not seen gets
    /// relay ports of its own facing its callee; the returned SDP carries them. Labels count
    /// only until a branch is confirmed ([`Sessions::answer_branch`]).
    pub fn offer_branch(
        &self,
        call_id: &str,
        from_tag: &str,
        branch: &str,
        sdp: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        require("call_id", call_id)?;
        require("from_tag", from_tag)?;
        if !branch.is_empty() {
            require("branch", branch)?;
        }
        let offer = Sdp::parse(sdp)?;
        let mut st = self.lock();
        if st.shutting_down {
            return Err(SessionError::ShuttingDown);
        }
        let created = !st.calls.contains_key(call_id);
        if created
            && let Some(max) = st.max_sessions
            && st.calls.len() as u64 >= max
        {
            return Err(SessionError::SessionLimit(max));
        }
        if created {
            self.load.check(&st.load_limits)?;
        }
        let o = match st.calls.get(call_id) {
            None => 0,
            Some(c) if c.tags[0] == from_tag => 0,
            Some(c) if c.tags[1] == from_tag => 1,
            Some(c) => {
                return Err(bad(format!(
                    "call '{call_id}' has tags '{}' and '{}'; an offer from tag '{from_tag}' \
                     matches neither (the branches of a forked INVITE are offered with the \
                     caller's tag and a branch label)",
                    c.tags[0], c.tags[1]
                )));
            }
        };
        let out = st
            .branch_for_offer(call_id, o, branch)
            .and_then(|new_fork| {
                st.offer(call_id, from_tag, o, branch, new_fork, &offer, sdp, opts)
            });
        if let Err(e) = &out {
            tracing::warn!(%call_id, error = %e, "offer rejected");
        }
        let out = out?;
        // Published under the state lock, so that every subscriber sees a call's events in the
        // order its state changed (a concurrent delete cannot overtake CallCreated).
        if created {
            self.emit(EventKind::CallCreated, call_id, from_tag, String::new());
        }
        Ok(out)
    }

    /// Handles an SDP answer; returns the SDP for the offerer.
    pub fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        self.answer_branch(call_id, from_tag, to_tag, "", sdp, opts, false)
    }

    /// [`Sessions::answer`] from one branch of a forked INVITE, named as in its offer ("" for
    /// the branch the call holds). Answers from several branches may come (183s from each);
    /// the one answering last is relayed. A `final_answer` (the 200) confirms the branch and
    /// closes every other branch's sockets and ports.
    #[allow(clippy::too_many_arguments)]
    pub fn answer_branch(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        branch: &str,
        sdp: &str,
        opts: LegOptions,
        final_answer: bool,
    ) -> Result<String, SessionError> {
        require("call_id", call_id)?;
        require("from_tag", from_tag)?;
        require("to_tag", to_tag)?;
        let answer = Sdp::parse(sdp)?;
        let mut st = self.lock();
        let out = st
            .branch_for_answer(call_id, branch)
            .and_then(|()| st.answer(call_id, from_tag, to_tag, &answer, sdp, opts));
        match &out {
            Ok(_) if final_answer => st.confirm_branch(call_id),
            Ok(_) => {}
            Err(e) => tracing::warn!(%call_id, error = %e, "answer rejected"),
        }
        out
    }

    /// Ends one branch of a forked call (its callee declined, or the front end gave up on
    /// it): closes its sockets and frees its ports. Deleting the last branch ends the call,
    /// and its final state is returned.
    pub fn delete_branch(
        &self,
        call_id: &str,
        branch: &str,
    ) -> Result<Option<CallReport>, SessionError> {
        require("call_id", call_id)?;
        let mut st = self.lock();
        if st.delete_branch(call_id, branch)? {
            return Ok(None);
        }
        let info = st
            .remove_call(call_id, EndReason::Deleted)
            .expect("delete_branch found it");
        let tag = info.legs[0].tag.clone().unwrap_or_default();
        self.emit(
            EventKind::Deleted,
            call_id,
            &tag,
            format!("its last branch '{branch}' was deleted"),
        );
        Ok(Some(info))
    }

    /// Ends a call and frees its ports; returns its final state.
    pub fn delete(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
    ) -> Result<CallReport, SessionError> {
        self.delete_for(call_id, from_tag, to_tag, EndReason::Deleted)
    }

    /// [`Sessions::delete`], counted under `why` in [`Statistics::calls_ended`].
    pub fn delete_for(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        why: EndReason,
    ) -> Result<CallReport, SessionError> {
        require("call_id", call_id)?;
        let mut st = self.lock();
        let call = st
            .calls
            .get(call_id)
            .ok_or_else(|| SessionError::NotFound(call_id.into()))?;
        for tag in [from_tag, to_tag] {
            if !tag.is_empty() && !call.tags.iter().any(|t| t == tag) {
                return Err(bad(format!(
                    "tag '{tag}' does not belong to call '{call_id}' (tags '{}', '{}')",
                    call.tags[0], call.tags[1]
                )));
            }
        }
        let info = st.remove_call(call_id, why).expect("checked above");
        self.emit(
            EventKind::Deleted,
            call_id,
            from_tag,
            "deleted by request".into(),
        );
        Ok(info)
    }

    pub fn query(&self, call_id: &str) -> Result<CallReport, SessionError> {
        require("call_id", call_id)?;
        let st = self.lock();
        let call = st
            .calls
            .get(call_id)
            .ok_or_else(|| SessionError::NotFound(call_id.into()))?;
        Ok(call_report(call, st.kernel.as_deref(), &*st.clock))
    }

    pub fn list(&self, limit: usize) -> Vec<String> {
        let st = self.lock();
        let mut ids: Vec<String> = st.calls.keys().cloned().collect();
        ids.sort();
        if limit > 0 {
            ids.truncate(limit);
        }
        ids
    }

    pub fn statistics(&self) -> Statistics {
        let uptime = self.clock.now_ns().saturating_sub(self.started_ns);
        let mut stats = self
            .lock()
            .statistics(std::time::Duration::from_nanos(uptime));
        stats.events_missed = self.events.missed();
        stats
    }

    /// Deletes calls with neither media nor signalling for the configured timeout.
    /// Also moves settled streams into the kernel fast path, when there is one.
    pub fn sweep(&self) -> Vec<String> {
        self.sweep_at(self.clock.now_ns())
    }

    /// [`Sessions::sweep`] at a given [`Clock::now_ns`] time, for tests that step the time
    /// themselves.
    pub fn sweep_at(&self, now: u64) -> Vec<String> {
        let mut st = self.lock();
        let timeout = st.cfg.timeout.as_nanos() as u64;
        let kernel = st.kernel.as_deref();
        // Kernel counters cost a syscall each: read them only for calls userspace thinks idle.
        let expired: Vec<String> = st
            .calls
            .values()
            .filter(|c| now.saturating_sub(last_activity(c, None)) >= timeout)
            .filter(|c| now.saturating_sub(last_activity(c, kernel)) >= timeout)
            .map(|c| c.call_id.clone())
            .collect();
        for id in &expired {
            st.remove_call(id, EndReason::Timeout);
            st.totals.timed_out += 1;
        }
        st.kernelize(now);
        st.expire_pool(now);
        let secs = st.cfg.timeout.as_secs();
        for id in &expired {
            self.emit(
                EventKind::TimedOut,
                id,
                "",
                format!("no media or signalling for {secs} s"),
            );
        }
        expired
    }

    /// Feeds an event from the relay engine.
    pub fn on_engine_event(&self, ev: EngineEvent) {
        let id = match ev {
            EngineEvent::MediaStarted { id } => id,
            EngineEvent::Rtcp { id, at_ns, reports } => return self.on_rtcp(id, at_ns, &reports),
            EngineEvent::Latched { .. } => return,
        };
        let mut st = self.lock();
        let Some((call_id, side)) = st.by_endpoint.get(&id).cloned() else {
            return;
        };
        let Some(call) = st.calls.get_mut(&call_id) else {
            return;
        };
        let held = call.streams.iter().any(|s| s.sides[side].endpoint == id);
        // A parked branch's endpoint (early media before it is swapped in) reports with its
        // own tag.
        let (started, tag) = match call
            .forks
            .iter_mut()
            .find(|f| !held && f.state.sides.iter().any(|s| s.endpoint == id))
        {
            Some(f) => (&mut f.state.media_started, &f.state.tag),
            None => (&mut call.media_started[side], &call.tags[side]),
        };
        if std::mem::replace(started, true) {
            return;
        }
        let tag = tag.clone();
        self.emit(
            EventKind::MediaStarted,
            &call_id,
            &tag,
            format!("first packet from side {side}"),
        );
    }

    /// An endpoint's SR is remembered for the round trip of the other side's next report; its
    /// report blocks become the quality of the stream it receives ([`quality`]).
    fn on_rtcp(&self, id: EndpointId, at_ns: u64, reports: &RtcpReports) {
        let mut st = self.lock();
        let Some((call_id, side)) = st.by_endpoint.get(&id).cloned() else {
            return;
        };
        let Some(call) = st.calls.get_mut(&call_id) else {
            return;
        };
        let Some(stream) = call
            .streams
            .iter_mut()
            .find(|s| s.sides[side].endpoint == id)
        else {
            return;
        };
        if let Some((_, ntp_mid)) = reports.sender_report {
            stream.sides[side].quality.on_sender_report(ntp_mid, at_ns);
        }
        let [a, b] = &mut stream.sides;
        let (reporter, sender) = if side == 0 { (a, &*b) } else { (b, &*a) };
        for block in reports.blocks() {
            let codec = quality::impairment(&reporter.codec);
            quality::on_report_block(
                &mut reporter.quality,
                &sender.quality,
                block,
                at_ns,
                reporter.clock_rate,
                codec,
            );
        }
    }

    /// Stops taking offers, deletes every call and stops the data plane (every relay socket is
    /// closed when this returns); returns how many calls there were.
    pub fn shutdown(&self) -> usize {
        let mut st = self.lock();
        st.shutting_down = true;
        let ids: Vec<String> = st.calls.keys().cloned().collect();
        for id in &ids {
            st.remove_call(id, EndReason::Shutdown);
        }
        if let Some(k) = st.kernel.as_mut() {
            k.shutdown();
        }
        st.plane.stop();
        ids.len()
    }
}

fn require(name: &str, value: &str) -> Result<(), SessionError> {
    if value.is_empty() {
        return Err(bad(format!("{name} is required")));
    }
    if value.len() > 256 || value.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "{name} must be at most 256 characters without control characters"
        )));
    }
    Ok(())
}
