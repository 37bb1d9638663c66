//! sluice's own SIP B2BUA: every call is two dialogs, leg A (sluice answers the caller) and
//! leg B (sluice calls the next hop), with the media of both through the relay.
//!
//! Sans-IO like the `sluice-sip` crate it drives: datagrams and `now` go in
//! ([`B2bua::on_bytes`], [`B2bua::handle_timeout`]); datagrams to send, the next deadline
//! and call records come out ([`B2bua::poll_transmit`], [`B2bua::poll_timeout`],
//! [`B2bua::poll_record`]). The media goes through the same [`Sessions`] API as gRPC and ng,
//! so ports, latching, SRTP and transcoding behave exactly as there. `transport` is the
//! socket driver (UDP and TCP).
//!
//! Topology hiding: leg B gets a new Call-ID, new tags, sluice's own Via and Contact and no
//! Record-Route; the SDP each side sees carries relay addresses only (c= and o=). From and
//! To keep their URIs (the caller's and callee's identities), with sluice's tags.
//!
//! Files: this one holds the API and the dispatch of transaction events; `setup` takes a
//! call from INVITE to answer or failure (CANCEL included), `in_dialog` what happens inside
//! the dialogs (BYE, relayed re-INVITE/UPDATE/INFO), `session_timer` RFC 4028, `headers` the
//! message edits, `call` the per-call state, `record` call records, `transport` the sockets.

mod call;
pub mod config;
mod headers;
mod in_dialog;
mod record;
mod session_timer;
mod setup;
pub mod transport;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use sluice_sip::{
    HeaderName, Host, Message, Method, NameAddr, Peer, TransactionLayer, Transmit, TxEvent, TxId,
    Uri, Via, parse_datagram, response_for, validate_request, validate_response,
};

use crate::session::{EndReason, EventKind, EventSubscriber, SessionError, Sessions};
use call::{Call, CallState, Leg};
pub use config::B2buaConfig;
use headers::{add_to_tag, stamp_received};
pub use record::{CallRecord, CallSummary};

/// A B2BUA shared by its socket thread and the control API (which lists and hangs up
/// calls): locked once per datagram and per control request, never per media packet.
pub type Shared = Arc<std::sync::Mutex<B2bua>>;

/// Locks a shared B2BUA; a panic in another holder does not stop the others.
pub fn lock(b: &Shared) -> std::sync::MutexGuard<'_, B2bua> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Reason of the BYEs that end a call whose media stopped (RFC 3326: the cause is a
/// SIP status; 408 as for a request that got no answer).
const MEDIA_TIMEOUT_REASON: &str = "SIP;cause=408;text=\"Media timeout\"";

/// The Reason of the BYEs that end a session nobody refreshed (RFC 4028 section 10).
const SESSION_EXPIRED_REASON: &str = "SIP;cause=408;text=\"Session timer expired\"";

/// Methods sluice answers or relays (the Allow header, RFC 3261 20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE";

/// Extensions sluice takes in Require (RFC 4028 session timers, RFC 3262 reliable
/// provisionals); anything else gets 420.
pub const SUPPORTED: &[&str] = &["timer", "100rel"];

/// What a transaction is for, so its response or timeout goes to the right place.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// A's INVITE (server).
    AInvite(u64),
    /// The INVITE to B (client).
    BInvite(u64),
    /// A request sluice sends on its own whose answer changes nothing: the CANCEL to B,
    /// the PRACK of a reliable provisional A could not acknowledge.
    Own,
    /// A BYE sluice sends to end a leg (client); the call has already ended.
    ByeOut,
    /// The BYE to a losing fork's 2xx (client).
    ForkBye,
    /// A request relayed in a dialog: `server` is the transaction on the leg it came from.
    RelayOut { call: u64, server: TxId, to: Leg },
    /// The server side of a relayed in-dialog request.
    RelayIn,
}

/// Counters for `statistics` and leak checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct B2buaCounters {
    pub calls_started: u64,
    pub calls_answered: u64,
    pub calls_failed: u64,
    /// Datagrams that are not SIP at all (dropped, no answer possible).
    pub malformed: u64,
    /// Requests answered 4xx/5xx before they reached a call (bad headers, no such dialog,
    /// unsupported method or extension, limits).
    pub rejected: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Retransmit the unACKed 2xx to A.
    Retransmit2xx,
    /// The session timer runs out unless a refresh came (RFC 4028).
    SessionExpiry,
}

pub struct B2bua {
    cfg: B2buaConfig,
    layer: TransactionLayer,
    media: Arc<Sessions>,
    rng: StdRng,
    calls: HashMap<u64, Call>,
    /// (A's Call-ID, A's tag) -> call.
    by_a: HashMap<(String, String), u64>,
    /// B's Call-ID (sluice's) -> call.
    by_b: HashMap<String, u64>,
    /// The media session's call id -> call, to end a call whose media timed out.
    by_media: HashMap<String, u64>,
    /// The session layer's events: a media timeout ends the SIP call with BYEs.
    media_events: EventSubscriber,
    roles: HashMap<TxId, Role>,
    /// INVITEs of ended calls that sluice cancelled (one CANCEL each).
    cancelled: std::collections::HashSet<TxId>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKind)>>,
    records: VecDeque<CallRecord>,
    next_call: u64,
    counters: B2buaCounters,
}

impl B2bua {
    pub fn new(cfg: B2buaConfig, media: Arc<Sessions>, seed: u64) -> Self {
        Self {
            layer: TransactionLayer::new(cfg.timers),
            media_events: media.subscribe(),
            cfg,
            media,
            rng: StdRng::seed_from_u64(seed),
            calls: HashMap::new(),
            by_a: HashMap::new(),
            by_b: HashMap::new(),
            by_media: HashMap::new(),
            roles: HashMap::new(),
            cancelled: Default::default(),
            timers: BinaryHeap::new(),
            records: VecDeque::new(),
            next_call: 1,
            counters: B2buaCounters::default(),
        }
    }

    pub fn counters(&self) -> B2buaCounters {
        self.counters
    }

    pub fn limits(&self) -> sluice_sip::Limits {
        self.cfg.limits
    }

    /// Bytes on a stream connection that cannot be framed as SIP (the driver closes it).
    pub fn count_malformed(&mut self) {
        self.counters.malformed += 1;
    }

    /// Live calls and transactions (0 and 0 once everything has ended).
    pub fn live(&self) -> (usize, usize) {
        (self.calls.len(), self.layer.len())
    }

    pub fn calls(&self) -> Vec<CallSummary> {
        let mut v: Vec<_> = self.calls.values().map(CallSummary::of).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.layer.poll_transmit()
    }

    pub fn poll_record(&mut self) -> Option<CallRecord> {
        self.records.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = self.timers.peek().map(|Reverse((t, _, _))| *t);
        match (own, self.layer.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The transport could not reach `peer` (a TCP connection sluice opened was refused, or
    /// failed before it connected): the transactions sending to it fail now, so that a call
    /// goes to its next route or gets its 503 at once instead of after timer B (32 s).
    pub fn unreachable(&mut self, peer: Peer, now: Instant) {
        for tx in self.layer.clients_to(peer) {
            self.layer.transport_error(tx, now);
        }
        self.drain(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.media_timeouts(now);
        self.layer.handle_timeout(now);
        self.drain(now);
        while let Some(Reverse((at, call, kind))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match kind {
                TimerKind::Retransmit2xx => self.retransmit_2xx(call, at, now),
                TimerKind::SessionExpiry => self.session_expiry(call, at, now),
            }
        }
        self.drain(now);
    }

    /// Calls whose media session timed out (`--timeout` without RTP or signalling) end
    /// with a BYE on both legs carrying a Reason (RFC 3326).
    fn media_timeouts(&mut self, now: Instant) {
        let mut ended = Vec::new();
        while let Some(ev) = self.media_events.try_recv() {
            match ev.kind {
                EventKind::TimedOut => ended.extend(self.by_media.get(&ev.call_id).copied()),
                EventKind::Overflow { .. } => {
                    // Events were missed: ask the session layer about every call.
                    ended.extend(
                        self.calls
                            .values()
                            .filter(|c| {
                                matches!(
                                    self.media.query(&c.media_id),
                                    Err(SessionError::NotFound(_))
                                )
                            })
                            .map(|c| c.id),
                    );
                }
                _ => {}
            }
        }
        for id in ended {
            let Some(call) = self.calls.get(&id) else {
                continue;
            };
            tracing::info!(call = id, "media timed out; ending the call");
            match call.state {
                CallState::Confirmed => {
                    self.bye_with(id, Leg::A, MEDIA_TIMEOUT_REASON, now);
                    self.bye_with(id, Leg::B, MEDIA_TIMEOUT_REASON, now);
                }
                CallState::Calling | CallState::Early => {
                    let a_tx = call.a_tx;
                    let r = self.reply_in_call(id, 408, Some("Media Timeout"));
                    let _ = self.layer.respond(a_tx, r, now);
                    self.cancel_b(id, now);
                }
                CallState::Cancelling => {}
            }
            self.end(id, "media timeout", 408, now);
        }
    }

    /// One message from `peer`: a UDP datagram, or one framed off a stream connection
    /// (`sluice_sip::frame_stream`).
    pub fn on_bytes(&mut self, bytes: &[u8], peer: Peer, now: Instant) {
        let from = peer.addr;
        let mut msg = match parse_datagram(bytes, &self.cfg.limits) {
            Ok(m) => m,
            Err(e) => {
                // Nothing parsed, so no Via to answer to: dropped and counted.
                self.counters.malformed += 1;
                tracing::debug!(%from, error = %e, "not SIP; dropped");
                return;
            }
        };
        if msg.is_request() {
            if let Err(r) = validate_request(&msg) {
                self.counters.rejected += 1;
                tracing::debug!(%from, code = r.code, reason = %r.reason, "request refused");
                if msg.method() != Some(&Method::Ack) && msg.top_via().is_ok() {
                    let resp = self.reply(&msg, r.code, Some(&r.reason));
                    self.layer.send_stateless(resp, peer);
                }
                return;
            }
            stamp_received(&mut msg, from);
        } else if let Err(r) = validate_response(&msg) {
            self.counters.malformed += 1;
            tracing::debug!(%from, reason = %r.reason, "response dropped");
            return;
        }
        self.layer.on_message(msg, peer, now);
        self.drain(now);
    }

    /// Ends call `id` from outside (`sluice ctl hangup`): CANCEL before the answer, BYE on
    /// both legs after it.
    pub fn hangup(&mut self, id: u64, now: Instant) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        match call.state {
            CallState::Calling | CallState::Early => {
                let a_tx = call.a_tx;
                let resp = self.reply_in_call(id, 480, Some("Call Ended By Operator"));
                let _ = self.layer.respond(a_tx, resp, now);
                self.cancel_b(id, now);
            }
            CallState::Confirmed => {
                self.bye(id, Leg::A, now);
                self.bye(id, Leg::B, now);
                self.end(id, "hung up by operator", 200, now);
            }
            CallState::Cancelling => {}
        }
        self.drain(now);
        true
    }

    fn drain(&mut self, now: Instant) {
        while let Some(ev) = self.layer.poll_event() {
            self.on_event(ev, now);
        }
    }

    fn token(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }

    /// A Via for a request to `to`: sluice's address on the transport that reaches it, a new
    /// branch, and rport (RFC 3581 section 3: the response comes back to the source port).
    fn via(&mut self, to: Peer) -> Via {
        let branch = format!("z9hG4bK{}", self.token());
        let local = self.cfg.local_for(to);
        let mut v = Via::new(
            local.transport.via_name(),
            Host::from(local.addr.ip()),
            Some(local.addr.port()),
            &branch,
        );
        v.params.set("rport", None);
        v
    }

    /// sluice's Contact towards `to` (with `;transport=tcp` on TCP, RFC 3261 19.1.4).
    fn contact(&self, to: Peer) -> NameAddr {
        let local = self.cfg.local_for(to);
        let mut uri = Uri::sip(
            Some("sluice"),
            Host::from(local.addr.ip()),
            Some(local.addr.port()),
        );
        if local.transport != sluice_sip::Transport::Udp {
            uri.params.set(
                "transport",
                Some(&local.transport.via_name().to_ascii_lowercase()),
            );
        }
        NameAddr::new(uri)
    }

    /// The peer of one leg of a call (the route when the call is gone).
    fn leg_peer(&self, id: u64, leg: Leg) -> Peer {
        self.calls
            .get(&id)
            .map(|c| c.peer(leg))
            .unwrap_or(self.cfg.routes[0])
    }

    /// A response sluice generates itself: a To tag when the request had none (RFC 3261
    /// 8.2.6.2), Server, and Allow/Accept/Supported where the code asks for them.
    fn reply(&mut self, req: &Message, code: u16, reason: Option<&str>) -> Message {
        let mut r = response_for(req, code, reason);
        if code > 100 {
            let tag = self.token();
            add_to_tag(&mut r, &tag);
        }
        self.decorate(&mut r, code);
        r
    }

    fn decorate(&self, r: &mut Message, code: u16) {
        r.push(HeaderName::Other("Server".into()), self.cfg.product.clone());
        if code == 405 || (200..300).contains(&code) {
            r.push(HeaderName::Allow, ALLOW);
        }
    }

    /// A response to A's INVITE of call `id`, with the call's tag for A.
    fn reply_in_call(&mut self, id: u64, code: u16, reason: Option<&str>) -> Message {
        let call = &self.calls[&id];
        let mut r = response_for(&call.a_invite, code, reason);
        add_to_tag(&mut r, &call.a_tag.clone());
        self.decorate(&mut r, code);
        r
    }

    fn on_event(&mut self, ev: TxEvent, now: Instant) {
        match ev {
            TxEvent::Request { tx, msg, from } => match tx {
                Some(tx) => self.on_request(tx, msg, from, now),
                None => self.on_ack(msg, now),
            },
            TxEvent::Response { tx, msg } => self.on_response(tx, msg, now),
            TxEvent::Timeout { tx } => self.on_failure(tx, false, now),
            TxEvent::TransportError { tx } => self.on_failure(tx, true, now),
            TxEvent::StrayResponse { msg, from } => self.on_stray(msg, from),
            TxEvent::Terminated { tx } => {
                self.roles.remove(&tx);
                self.cancelled.remove(&tx);
            }
        }
    }

    // Requests: dispatched here, call setup in `setup`, dialogs in `in_dialog`.

    fn on_request(&mut self, tx: TxId, msg: Message, from: Peer, now: Instant) {
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let to_tag = msg.to_hdr().ok().and_then(|t| t.tag().map(str::to_owned));
        if method == Method::Cancel {
            return self.on_cancel(tx, msg, now);
        }
        if let Some(tag) = to_tag {
            return self.in_dialog(tx, msg, &tag, now);
        }
        match method {
            Method::Invite => self.new_call(tx, msg, from, now),
            Method::Options => {
                // RFC 3261 11.2: what sluice supports.
                let mut r = self.reply(&msg, 200, None);
                r.push(HeaderName::Accept, "application/sdp");
                r.push(HeaderName::Supported, "");
                r.headers
                    .retain(|h| h.name != HeaderName::Supported || !h.value.is_empty());
                let _ = self.layer.respond(tx, r, now);
            }
            Method::Bye | Method::Info | Method::Update | Method::Prack => {
                // RFC 3261 15.1.2 / 12.2.2: no dialog matches a request without a To tag.
                self.counters.rejected += 1;
                let r = self.reply(&msg, 481, None);
                let _ = self.layer.respond(tx, r, now);
            }
            _ => {
                // RFC 3261 8.2.1: 405 with the methods sluice does take.
                self.counters.rejected += 1;
                let r = self.reply(&msg, 405, None);
                let _ = self.layer.respond(tx, r, now);
            }
        }
    }

    fn refuse(
        &mut self,
        tx: TxId,
        req: &Message,
        code: u16,
        reason: &str,
        warning: Option<&str>,
        now: Instant,
    ) {
        self.counters.rejected += 1;
        let mut r = self.reply(req, code, Some(reason));
        if let Some(w) = warning {
            // RFC 3261 20.43: 399 is the miscellaneous warning; the text is for the operator.
            r.push(
                HeaderName::Warning,
                format!("399 sluice \"{}\"", w.replace('"', "'")),
            );
        }
        let _ = self.layer.respond(tx, r, now);
    }

    /// Which call and leg an in-dialog message belongs to.
    fn find(&self, msg: &Message) -> Option<(u64, Leg)> {
        let call_id = msg.call_id().ok()?;
        if let Some(&id) = self.by_b.get(call_id) {
            return Some((id, Leg::B));
        }
        let from_tag = msg.from_hdr().ok()?.tag()?.to_owned();
        let to_tag = msg.to_hdr().ok()?.tag().map(str::to_owned);
        // A request from A carries A's tag in From; a response to a request sluice sent
        // to A carries it in To.
        let tag = if msg.is_request() {
            Some(from_tag)
        } else {
            to_tag
        };
        self.by_a
            .get(&(call_id.to_owned(), tag?))
            .map(|&id| (id, Leg::A))
    }

    // Responses: matched to what their transaction was for.

    fn on_response(&mut self, tx: TxId, msg: Message, now: Instant) {
        let Some(role) = self.roles.get(&tx).copied() else {
            return;
        };
        let code = msg.code().unwrap_or(0);
        match role {
            Role::BInvite(id) if !self.calls.contains_key(&id) && code < 200 => {
                // A provisional for a call that already ended (B hung up early, A went
                // away): the INVITE would stay open forever in Proceeding, so cancel it
                // (RFC 3261 9.1), once.
                if self.cancelled.insert(tx)
                    && let (Some(invite), Some(peer)) =
                        (self.layer.request(tx), self.layer.peer(tx))
                {
                    let cancel = headers::cancel_for(invite);
                    let t = self.layer.send_request(cancel, peer, now);
                    self.roles.insert(t, Role::Own);
                }
            }
            Role::BInvite(id) => {
                if code >= 200
                    && let Some(c) = self.calls.get_mut(&id)
                    && c.b_tx == tx
                {
                    c.b_final = true;
                }
                if self.calls.get(&id).is_some_and(|c| c.b_tx != tx) {
                    // From a route the call has left (failover): only a 2xx needs an answer.
                    if (200..300).contains(&code) {
                        self.ack_and_bye_stray(&msg, now);
                    }
                    return;
                }
                self.on_b_invite_response(id, msg, code, now)
            }
            Role::RelayOut { call, server, to } => {
                self.on_relayed_response(call, server, to, msg, code, now)
            }
            Role::Own | Role::ByeOut | Role::ForkBye | Role::AInvite(_) | Role::RelayIn => {}
        }
    }

    /// A client transaction got no final response: timer B/F fired, or (`transport`) the
    /// transport could not reach the peer, which RFC 3261 8.1.3.1 treats as a 503.
    fn on_failure(&mut self, tx: TxId, transport: bool, now: Instant) {
        let (code, why) = if transport {
            (503, "callee unreachable (transport error)")
        } else {
            (408, "callee did not answer (timer B)")
        };
        match self.roles.get(&tx).copied() {
            Some(Role::BInvite(id)) => {
                if self.calls.get(&id).is_some_and(|c| c.b_tx != tx) {
                    return;
                }
                if self.try_next_route(id, now) {
                    return;
                }
                if let Some(call) = self.calls.get(&id) {
                    if matches!(call.state, CallState::Calling | CallState::Early) {
                        let a_tx = call.a_tx;
                        let r = self.reply_in_call(id, code, None);
                        let _ = self.layer.respond(a_tx, r, now);
                    }
                    self.end(id, why, code, now);
                }
            }
            Some(Role::RelayOut { call, server, .. }) => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.reinvite_pending = false;
                }
                if let Some(req) = self.layer.request(server).cloned() {
                    let r = response_for(&req, code, None);
                    let _ = self.layer.respond(server, r, now);
                }
            }
            _ => {}
        }
    }

    /// The call is over: media deleted, record queued, indexes dropped. Transactions still
    /// running (a BYE, a CANCEL) finish on their own.
    fn end(&mut self, id: u64, reason: &str, code: u16, now: Instant) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        if !call.b_final && call.b_provisional {
            // B's INVITE is still open (no final answer): an INVITE client transaction in
            // Proceeding has no timeout of its own, so it is cancelled (RFC 3261 9.1).
            let t = self
                .layer
                .send_request(headers::cancel_for(&call.b_invite), call.b_peer, now);
            self.roles.insert(t, Role::Own);
        }
        self.by_a
            .remove(&(call.a_call_id.clone(), call.a_remote_tag.clone()));
        self.by_b.remove(&call.b_call_id);
        self.by_media.remove(&call.media_id);
        let media = match self
            .media
            .delete_for(&call.media_id, "", "", EndReason::B2bua)
        {
            Ok(report) => Some(report),
            Err(SessionError::NotFound(_)) => None,
            Err(e) => {
                tracing::warn!(call = id, error = %e, "media session delete failed");
                None
            }
        };
        if call.answered.is_none() {
            self.counters.calls_failed += 1;
        }
        tracing::info!(call = id, reason, code, "call ended");
        let record = CallRecord::of(&call, reason, code, media);
        self.media.announce(
            EventKind::SipCallEnded,
            &call.a_call_id,
            serde_json::to_string(&record).unwrap_or_default(),
        );
        self.records.push_back(record);
        // Bounded: a driver that never reads records must not grow without limit.
        if self.records.len() > 10_000 {
            self.records.pop_front();
        }
    }
}

#[cfg(test)]
mod tests;

/// The media options of an SDP whose signalling came from `source`: the configured ones, with
/// that source, so that media only from its host (or the SDP's) is let in (latch rule 5: no
/// RTP Inject, no RTP Bleed behind NAT).
fn from_source(opts: crate::session::LegOptions, source: Peer) -> crate::session::LegOptions {
    crate::session::LegOptions {
        signalling_source: Some(source.addr.ip()),
        ..opts
    }
}

/// `opts` for an offer whose signalling came from `source` and that goes on to `target`. SDES
/// keys travel in the SDP, so an offer towards a leg whose signalling is not TLS never carries
/// any: sluice terminates the SRTP of the offering side and offers plain RTP (RFC 4568 section
/// 8.3: the key parameters MUST only be sent over secure signalling). Towards a TLS leg the
/// configured mode applies (by default the SDP's own choice, SDES included).
fn offer_opts(
    opts: crate::session::LegOptions,
    source: Peer,
    target: Peer,
) -> crate::session::LegOptions {
    let mut o = from_source(opts, source);
    if target.transport != sluice_sip::Transport::Tls {
        o.srtp = crate::session::SrtpMode::Strip;
    }
    o
}
