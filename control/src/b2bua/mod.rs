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

mod call;
pub mod config;
mod record;
mod session_timer;
pub mod transport;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use sluice_sip::{
    Dialog, HeaderName, Host, Message, Method, NameAddr, Peer, TransactionLayer, Transmit, TxEvent,
    TxId, Uri, Via, parse_datagram, response_for, validate_request, validate_response,
};

use crate::session::{EventKind, EventSubscriber, SessionError, Sessions};
use call::{Call, CallState, Leg, Unacked};
pub use config::B2buaConfig;
pub use record::{CallRecord, CallSummary};
use session_timer::SessionTimer;

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

/// Extensions sluice takes in Require (RFC 4028 session timers); anything else gets 420.
pub const SUPPORTED: &[&str] = &["timer"];

/// What a transaction is for, so its response or timeout goes to the right place.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// A's INVITE (server).
    AInvite(u64),
    /// The INVITE to B (client).
    BInvite(u64),
    /// The CANCEL sent to B (client): its answer needs nothing.
    CancelOut,
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
            self.end(id, "media timeout", 408);
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
                self.end(id, "hung up by operator", 200);
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
            .unwrap_or(self.cfg.route)
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
            TxEvent::Timeout { tx } | TxEvent::TransportError { tx } => self.on_failure(tx, now),
            TxEvent::StrayResponse { msg, from } => self.on_stray(msg, from),
            TxEvent::Terminated { tx } => {
                self.roles.remove(&tx);
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Requests

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

    fn new_call(&mut self, tx: TxId, msg: Message, from: Peer, now: Instant) {
        if msg.max_forwards().ok().flatten() == Some(0) {
            // RFC 3261 16.3 step 2 (as a B2BUA forwards the call on): 483.
            return self.refuse(tx, &msg, 483, "Too Many Hops", None, now);
        }
        if let Some(max) = self.cfg.max_calls
            && self.calls.len() >= max
        {
            return self.refuse(
                tx,
                &msg,
                503,
                "Service Unavailable",
                Some("call limit reached"),
                now,
            );
        }
        let required: Vec<String> = msg
            .option_tags(&HeaderName::Require)
            .into_iter()
            .filter(|t| !SUPPORTED.contains(t))
            .map(str::to_owned)
            .collect();
        if !required.is_empty() {
            // RFC 3261 8.2.2.3: 420 listing the extensions sluice does not support.
            self.counters.rejected += 1;
            let mut r = self.reply(&msg, 420, None);
            r.push(HeaderName::Unsupported, required.join(", "));
            let _ = self.layer.respond(tx, r, now);
            return;
        }
        if let Err(e) = session_timer::check_request(&msg) {
            // RFC 4028 section 8.1: 422 with the Min-SE sluice accepts.
            self.counters.rejected += 1;
            let mut r = self.reply(&msg, 422, None);
            r.push(HeaderName::MinSe, e.min_se.to_string());
            let _ = self.layer.respond(tx, r, now);
            return;
        }
        let sdp = match sdp_body(&msg) {
            Ok(s) => s,
            Err(()) => {
                // RFC 3261 21.4.13: 415 with Accept naming what sluice reads.
                self.counters.rejected += 1;
                let mut r = self.reply(&msg, 415, None);
                r.push(HeaderName::Accept, "application/sdp");
                let _ = self.layer.respond(tx, r, now);
                return;
            }
        };
        let (Ok(a_from), Ok(a_to), Ok(a_call_id)) = (msg.from_hdr(), msg.to_hdr(), msg.call_id())
        else {
            return self.refuse(tx, &msg, 400, "Bad Request", None, now);
        };
        let a_call_id = a_call_id.to_owned();
        let a_remote_tag = a_from.tag().unwrap_or_default().to_owned();
        let id = self.next_call;
        self.next_call += 1;
        let media_id = format!("sip-{id}-{}", self.token());
        let body_for_b = match &sdp {
            Some(offer) => {
                match self
                    .media
                    .offer(&media_id, Leg::A.media_tag(), offer, self.cfg.media)
                {
                    Ok(out) => Some(crate::sdp::origin_from_connection(out)),
                    Err(e) => {
                        let code = e.sip_status();
                        let reason = if code == 488 {
                            "Not Acceptable Here"
                        } else {
                            sluice_sip::default_reason(code)
                        };
                        tracing::info!(call = id, error = %e, code, "INVITE refused by the media layer");
                        return self.refuse(tx, &msg, code, reason, Some(&e.to_string()), now);
                    }
                }
            }
            None => None,
        };
        // Leg B: new Call-ID, tags, Via, Contact; From/To keep their URIs.
        let b_call_id = self.token();
        let b_tag = self.token();
        let a_uri = msg
            .request_uri()
            .cloned()
            .unwrap_or_else(|| a_to.uri.clone());
        let mut ruri = Uri::sip(
            a_uri.user.as_deref(),
            Host::from(self.cfg.route.addr.ip()),
            Some(self.cfg.route.addr.port()),
        );
        if a_uri.user.is_none() {
            ruri.user = a_to.uri.user.clone();
        }
        let mut invite = Message::request(Method::Invite, ruri);
        let via = self.via(self.cfg.route);
        invite.push(HeaderName::Via, via.to_string());
        let mf = msg
            .max_forwards()
            .ok()
            .flatten()
            .unwrap_or(70)
            .saturating_sub(1);
        invite.push(HeaderName::MaxForwards, mf.to_string());
        let mut from_b = a_from.clone();
        from_b.params = Default::default();
        from_b.params.set("tag", Some(&b_tag));
        invite.push(HeaderName::From, from_b.to_string());
        let mut to_b = a_to.clone();
        to_b.params = Default::default();
        invite.push(HeaderName::To, to_b.to_string());
        invite.push(HeaderName::CallId, b_call_id.clone());
        invite.push(HeaderName::CSeq, "1 INVITE");
        invite.push(
            HeaderName::Contact,
            self.contact(self.cfg.route).to_string(),
        );
        invite.push(HeaderName::Allow, ALLOW);
        invite.push(HeaderName::UserAgent, self.cfg.product.clone());
        // Session timers pass end to end (session_timer.rs says why that is consistent).
        for h in &msg.headers {
            if matches!(h.name, HeaderName::SessionExpires | HeaderName::MinSe) {
                invite.headers.push(h.clone());
            }
        }
        if msg.option_tags(&HeaderName::Supported).contains(&"timer")
            || msg.option_tags(&HeaderName::Require).contains(&"timer")
        {
            invite.push(HeaderName::Supported, "timer");
        }
        if let Some(b) = body_for_b {
            invite.push(HeaderName::ContentType, "application/sdp");
            invite.body = b.into_bytes();
        }
        let b_peer = self.cfg.route;
        let b_tx = self.layer.send_request(invite.clone(), b_peer, now);
        let a_tag = self.token();
        let call = Call {
            id,
            media_id,
            state: CallState::Calling,
            offerer: sdp.as_ref().map(|_| Leg::A),
            caller: a_from.uri.to_string(),
            callee: a_to.uri.to_string(),
            a_invite: msg,
            a_tx: tx,
            a_peer: from,
            a_call_id: a_call_id.clone(),
            a_remote_tag: a_remote_tag.clone(),
            a_tag,
            a_dialog: None,
            a_unacked: None,
            b_invite: invite,
            b_peer,
            b_call_id: b_call_id.clone(),
            b_dialog: None,
            b_provisional: false,
            cancel_pending: false,
            b_ack_pending: false,
            reinvite_pending: false,
            session_timer: None,
            started: now,
            rang: None,
            answered: None,
        };
        let media_id_of_call = call.media_id.clone();
        tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "call started");
        self.calls.insert(id, call);
        self.by_a.insert((a_call_id, a_remote_tag), id);
        self.by_b.insert(b_call_id, id);
        self.by_media.insert(media_id_of_call, id);
        self.roles.insert(tx, Role::AInvite(id));
        self.roles.insert(b_tx, Role::BInvite(id));
        self.counters.calls_started += 1;
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

    fn on_cancel(&mut self, tx: TxId, msg: Message, now: Instant) {
        let target = self.layer.find_invite_for_cancel(&msg);
        let call = target.and_then(|t| match self.roles.get(&t) {
            Some(Role::AInvite(id)) => Some(*id),
            _ => None,
        });
        let Some(id) = call else {
            // RFC 3261 9.2: no matching transaction -> 481.
            let r = self.reply(&msg, 481, None);
            let _ = self.layer.respond(tx, r, now);
            return;
        };
        let r = self.reply(&msg, 200, None);
        let _ = self.layer.respond(tx, r, now);
        let state = self.calls[&id].state;
        if matches!(state, CallState::Calling | CallState::Early) {
            // RFC 3261 9.2: the INVITE is answered 487.
            let a_tx = self.calls[&id].a_tx;
            let resp = self.reply_in_call(id, 487, None);
            let _ = self.layer.respond(a_tx, resp, now);
            self.cancel_b(id, now);
        }
    }

    /// Cancels the INVITE to B, now if B sent a provisional, else once it does (RFC 3261
    /// 9.1). The call ends when B's final answer comes (487, or a 2xx that is ACKed and
    /// BYEd) or timer B fires.
    fn cancel_b(&mut self, id: u64, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.state = CallState::Cancelling;
        if !call.b_provisional {
            call.cancel_pending = true;
            return;
        }
        let cancel = cancel_for(&call.b_invite);
        let peer = call.b_peer;
        let t = self.layer.send_request(cancel, peer, now);
        self.roles.insert(t, Role::CancelOut);
    }

    fn on_ack(&mut self, msg: Message, now: Instant) {
        let Some((id, leg)) = self.find(&msg) else {
            return;
        };
        if leg != Leg::A {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Ok(cseq) = msg.cseq() else { return };
        if cseq.seq != call.a_invite.cseq().map(|c| c.seq).unwrap_or(0) {
            // The ACK of a relayed re-INVITE's 2xx: sluice ACKed the other leg itself.
            return;
        }
        if call.a_unacked.take().is_none() {
            return;
        }
        if call.b_ack_pending {
            call.b_ack_pending = false;
            // Late offer: A's ACK carries the answer to B's offer.
            let answer = match sdp_body(&msg) {
                Ok(Some(s)) => s,
                _ => {
                    tracing::info!(
                        call = id,
                        "late-offer ACK without an SDP answer; ending the call"
                    );
                    self.bye(id, Leg::A, now);
                    self.bye(id, Leg::B, now);
                    self.end(id, "ACK without SDP answer", 488);
                    return;
                }
            };
            let out = self.media.answer(
                &call.media_id,
                Leg::B.media_tag(),
                Leg::A.media_tag(),
                &answer,
                self.cfg.media,
            );
            let via = self.via(self.leg_peer(id, Leg::B));
            let call = self.calls.get_mut(&id).expect("looked up above");
            let Some(d) = call.b_dialog.as_ref() else {
                return;
            };
            let mut ack = d.ack(1, &via);
            match out {
                Ok(sdp) => {
                    ack.push(HeaderName::ContentType, "application/sdp");
                    ack.body = crate::sdp::origin_from_connection(sdp).into_bytes();
                    let peer = call.b_peer;
                    self.layer.send_stateless(ack, peer);
                }
                Err(e) => {
                    tracing::info!(call = id, error = %e, "late-offer answer refused; ending the call");
                    let peer = call.b_peer;
                    self.layer.send_stateless(ack, peer);
                    self.bye(id, Leg::A, now);
                    self.bye(id, Leg::B, now);
                    self.end(id, "late-offer answer refused", e.sip_status());
                }
            }
        }
    }

    fn in_dialog(&mut self, tx: TxId, msg: Message, _to_tag: &str, now: Instant) {
        let Some((id, leg)) = self.find(&msg) else {
            // RFC 3261 12.2.2: 481 for a request in a dialog sluice does not know.
            self.counters.rejected += 1;
            let r = response_for(&msg, 481, None);
            let _ = self.layer.respond(tx, r, now);
            return;
        };
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let known = self
            .calls
            .get_mut(&id)
            .and_then(|c| c.dialog_mut(leg))
            .map(|d| d.on_request(&msg));
        match known {
            None => {
                // Early dialog (no 2xx yet) or a call already ending.
                let code = if method == Method::Bye && leg == Leg::B {
                    200
                } else {
                    481
                };
                let r = response_for(&msg, code, None);
                let _ = self.layer.respond(tx, r, now);
                if code == 200 {
                    // B hung up before its 2xx reached A: the call fails towards A.
                    let a_tx = self.calls[&id].a_tx;
                    let resp = self.reply_in_call(id, 487, None);
                    let _ = self.layer.respond(a_tx, resp, now);
                    self.end(id, "callee hung up before answering", 487);
                }
                return;
            }
            Some(Err(_)) => {
                let r = response_for(&msg, 500, Some("CSeq Out Of Order"));
                let _ = self.layer.respond(tx, r, now);
                return;
            }
            Some(Ok(())) => {}
        }
        if method == Method::Bye {
            let r = response_for(&msg, 200, None);
            let _ = self.layer.respond(tx, r, now);
            tracing::info!(call = id, from = ?leg, "BYE");
            self.bye(id, leg.other(), now);
            let reason = match leg {
                Leg::A => "caller hung up",
                Leg::B => "callee hung up",
            };
            self.end(id, reason, 200);
            return;
        }
        if method == Method::Invite {
            let call = self.calls.get_mut(&id).expect("found");
            if call.reinvite_pending {
                // RFC 3261 14.2: a re-INVITE while one is in progress gets 491.
                let r = response_for(&msg, 491, None);
                let _ = self.layer.respond(tx, r, now);
                return;
            }
            call.reinvite_pending = true;
        }
        self.relay(id, leg, tx, msg, now);
    }

    /// Sends an in-dialog request from `from` on to the other leg.
    fn relay(&mut self, id: u64, from: Leg, tx: TxId, msg: Message, now: Instant) {
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let to = from.other();
        let mut body = None;
        match sdp_body(&msg) {
            Ok(Some(sdp)) if matches!(method, Method::Invite | Method::Update) => {
                let media_id = self.calls[&id].media_id.clone();
                match self
                    .media
                    .offer(&media_id, from.media_tag(), &sdp, self.cfg.media)
                {
                    Ok(out) => {
                        body = Some((
                            "application/sdp".to_owned(),
                            crate::sdp::origin_from_connection(out).into_bytes(),
                        ))
                    }
                    Err(e) => {
                        if method == Method::Invite {
                            self.calls.get_mut(&id).expect("found").reinvite_pending = false;
                        }
                        let code = e.sip_status();
                        let mut r = response_for(&msg, code, None);
                        r.push(
                            HeaderName::Warning,
                            format!("399 sluice \"{}\"", e.to_string().replace('"', "'")),
                        );
                        let _ = self.layer.respond(tx, r, now);
                        return;
                    }
                }
            }
            _ if !msg.body.is_empty() => {
                let ct = msg
                    .header(&HeaderName::ContentType)
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                body = Some((ct, msg.body.clone()));
            }
            _ => {}
        }
        let via = self.via(self.leg_peer(id, to));
        let contact = self.contact(self.leg_peer(id, to));
        let call = self.calls.get_mut(&id).expect("found");
        let peer = call.peer(to);
        let Some(d) = call.dialog_mut(to) else { return };
        let with_contact = matches!(method, Method::Invite | Method::Update);
        let mut out = d.request(method.clone(), &via, with_contact.then_some(&contact));
        for h in &msg.headers {
            // Relay what the far end needs to act on the request; never Via, Route,
            // Contact or Record-Route (topology hiding).
            if matches!(
                h.name,
                HeaderName::Reason
                    | HeaderName::SessionExpires
                    | HeaderName::MinSe
                    | HeaderName::Supported
            ) || matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case("Info-Package") || n.eq_ignore_ascii_case("Content-Disposition"))
            {
                out.headers.push(h.clone());
            }
        }
        if let Some((ct, b)) = body {
            out.push(HeaderName::ContentType, ct);
            out.body = b;
        }
        let t = self.layer.send_request(out, peer, now);
        self.roles.insert(
            t,
            Role::RelayOut {
                call: id,
                server: tx,
                to,
            },
        );
        self.roles.insert(tx, Role::RelayIn);
    }

    /// Sends a BYE on `leg` (no answer expected by anyone but the call's end).
    fn bye(&mut self, id: u64, leg: Leg, now: Instant) {
        self.bye_with(id, leg, "SIP;cause=200;text=\"Call completed\"", now);
    }

    fn bye_with(&mut self, id: u64, leg: Leg, reason: &str, now: Instant) {
        let via = self.via(self.leg_peer(id, leg));
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let peer = call.peer(leg);
        let Some(d) = call.dialog_mut(leg) else {
            return;
        };
        let mut bye = d.request(Method::Bye, &via, None);
        bye.push(HeaderName::Reason, reason);
        let t = self.layer.send_request(bye, peer, now);
        self.roles.insert(t, Role::ByeOut);
    }

    // ---------------------------------------------------------------------------------
    // Responses

    fn on_response(&mut self, tx: TxId, msg: Message, now: Instant) {
        let Some(role) = self.roles.get(&tx).copied() else {
            return;
        };
        let code = msg.code().unwrap_or(0);
        match role {
            Role::BInvite(id) => self.on_b_invite_response(id, msg, code, now),
            Role::RelayOut { call, server, to } => {
                self.on_relayed_response(call, server, to, msg, code, now)
            }
            Role::CancelOut | Role::ByeOut | Role::ForkBye | Role::AInvite(_) | Role::RelayIn => {}
        }
    }

    fn on_b_invite_response(&mut self, id: u64, msg: Message, code: u16, now: Instant) {
        if !self.calls.contains_key(&id) {
            // The call ended (A cancelled and B answered late, or timed out): a 2xx still
            // needs its ACK and a BYE.
            if (200..300).contains(&code) {
                self.ack_and_bye_stray(&msg, now);
            }
            return;
        }
        if code < 200 {
            return self.on_b_provisional(id, msg, code, now);
        }
        if code < 300 {
            return self.on_b_2xx(id, msg, now);
        }
        // 300-699: the transaction layer ACKed it (RFC 3261 17.1.1.3).
        let state = self.calls[&id].state;
        if state != CallState::Cancelling {
            // A 3xx would hand A the callee's Contacts (topology hiding): 480 instead.
            let (out_code, reason) = if code < 400 {
                (480, "Temporarily Unavailable".to_owned())
            } else {
                (code, reason_of(&msg))
            };
            let a_tx = self.calls[&id].a_tx;
            let mut r = self.reply_in_call(id, out_code, Some(&reason));
            for h in &msg.headers {
                if matches!(
                    h.name,
                    HeaderName::Warning | HeaderName::Reason | HeaderName::Unsupported
                ) || matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case("Retry-After"))
                {
                    r.headers.push(h.clone());
                }
            }
            let _ = self.layer.respond(a_tx, r, now);
        }
        self.end(id, "callee refused", code);
    }

    fn on_b_provisional(&mut self, id: u64, msg: Message, code: u16, now: Instant) {
        let call = self.calls.get_mut(&id).expect("checked");
        call.b_provisional = true;
        if call.cancel_pending {
            call.cancel_pending = false;
            let cancel = cancel_for(&call.b_invite);
            let peer = call.b_peer;
            let t = self.layer.send_request(cancel, peer, now);
            self.roles.insert(t, Role::CancelOut);
            return;
        }
        // 100 Trying is hop by hop: it lets a CANCEL go, and goes no further.
        if call.state == CallState::Cancelling || code == 100 {
            return;
        }
        if call.state == CallState::Calling {
            call.state = CallState::Early;
        }
        call.rang.get_or_insert(now);
        let mut body = None;
        if call.offerer == Some(Leg::A)
            && let Ok(Some(sdp)) = sdp_body(&msg)
        {
            let media_id = call.media_id.clone();
            match self.media.answer(
                &media_id,
                Leg::A.media_tag(),
                Leg::B.media_tag(),
                &sdp,
                self.cfg.media,
            ) {
                Ok(out) => body = Some(crate::sdp::origin_from_connection(out)),
                Err(e) => {
                    tracing::info!(call = id, error = %e, "early media answer refused; relaying the provisional without SDP")
                }
            }
        }
        let a_tx = self.calls[&id].a_tx;
        let reason = reason_of(&msg);
        let mut r = self.reply_in_call(id, code, Some(&reason));
        r.push(
            HeaderName::Contact,
            self.contact(self.leg_peer(id, Leg::A)).to_string(),
        );
        if let Some(b) = body {
            r.push(HeaderName::ContentType, "application/sdp");
            r.body = b.into_bytes();
        }
        let _ = self.layer.respond(a_tx, r, now);
    }

    fn on_b_2xx(&mut self, id: u64, msg: Message, now: Instant) {
        let via = self.via(self.leg_peer(id, Leg::B));
        let call = self.calls.get_mut(&id).expect("checked");
        let to_tag = msg
            .to_hdr()
            .ok()
            .and_then(|t| t.tag().map(str::to_owned))
            .unwrap_or_default();
        if let Some(d) = &call.b_dialog {
            if d.remote_tag == to_tag {
                // A retransmitted 2xx: its ACK was lost (RFC 3261 13.2.2.4), unless the
                // late-offer ACK still waits for A.
                if !call.b_ack_pending {
                    let ack = d.ack(1, &via);
                    let peer = call.b_peer;
                    self.layer.send_stateless(ack, peer);
                }
            } else {
                // A second fork answered: ACK and BYE it; the first 2xx won.
                self.ack_and_bye_stray(&msg, now);
            }
            return;
        }
        let d = match Dialog::uac(&call.b_invite, &msg) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(call = id, error = %e, "2xx from B cannot make a dialog; ending the call");
                self.ack_and_bye_stray(&msg, now);
                return;
            }
        };
        if call.state == CallState::Cancelling {
            // A cancelled and already has its 487: this 2xx lost the race.
            call.b_dialog = Some(d);
            let ack = call.b_dialog.as_ref().expect("set").ack(1, &via);
            let peer = call.b_peer;
            self.layer.send_stateless(ack, peer);
            self.bye(id, Leg::B, now);
            self.end(id, "cancelled; callee answered too late", 487);
            return;
        }
        let media_id = call.media_id.clone();
        let sdp = sdp_body(&msg).ok().flatten();
        let late = call.offerer.is_none();
        let body = match (&sdp, late) {
            (Some(s), false) => self
                .media
                .answer(
                    &media_id,
                    Leg::A.media_tag(),
                    Leg::B.media_tag(),
                    s,
                    self.cfg.media,
                )
                .map(Some),
            (Some(s), true) => self
                .media
                .offer(&media_id, Leg::B.media_tag(), s, self.cfg.media)
                .map(Some),
            // No SDP in the 2xx: the answer came in a reliable provisional or is missing;
            // the session keeps what it has.
            (None, false) => Ok(None),
            (None, true) => Err(SessionError::BadRequest(
                "late offer: the 2xx carries no SDP offer".into(),
            )),
        };
        let call = self.calls.get_mut(&id).expect("checked");
        call.b_dialog = Some(d);
        let body = match body {
            Ok(b) => b.map(crate::sdp::origin_from_connection),
            Err(e) => {
                tracing::info!(call = id, error = %e, "callee's SDP refused; ending the call");
                let ack = call.b_dialog.as_ref().expect("set").ack(1, &via);
                let peer = call.b_peer;
                self.layer.send_stateless(ack, peer);
                self.bye(id, Leg::B, now);
                let a_tx = self.calls[&id].a_tx;
                let mut r = self.reply_in_call(id, e.sip_status(), None);
                r.push(
                    HeaderName::Warning,
                    format!("399 sluice \"{}\"", e.to_string().replace('"', "'")),
                );
                let _ = self.layer.respond(a_tx, r, now);
                self.end(id, "callee's SDP refused", e.sip_status());
                return;
            }
        };
        if late {
            call.b_ack_pending = true;
        } else {
            let ack = call.b_dialog.as_ref().expect("set").ack(1, &via);
            let peer = call.b_peer;
            self.layer.send_stateless(ack, peer);
        }
        let a_tx = call.a_tx;
        let mut r = self.reply_in_call(id, 200, Some(&reason_of(&msg)));
        r.push(
            HeaderName::Contact,
            self.contact(self.leg_peer(id, Leg::A)).to_string(),
        );
        copy_session_timer(&msg, &mut r);
        if let Some(b) = body {
            r.push(HeaderName::ContentType, "application/sdp");
            r.body = b.into_bytes();
        }
        let call = self.calls.get_mut(&id).expect("checked");
        call.a_dialog = Dialog::uas(&call.a_invite, &call.a_tag).ok();
        call.state = CallState::Confirmed;
        call.answered = Some(now);
        call.session_timer = SessionTimer::from_2xx(&msg, now);
        if let Some(t) = call.session_timer {
            self.timers
                .push(Reverse((t.deadline(), id, TimerKind::SessionExpiry)));
        }
        let t1 = self.cfg.timers.t1;
        call.a_unacked = Some(Unacked {
            response: r.clone(),
            interval: t1,
            next: now + t1,
            give_up: now + self.cfg.ack_wait(),
        });
        self.timers
            .push(Reverse((now + t1, id, TimerKind::Retransmit2xx)));
        self.counters.calls_answered += 1;
        tracing::info!(call = id, "answered");
        let _ = self.layer.respond(a_tx, r, now);
    }

    /// RFC 3261 13.3.1.4: the 2xx is retransmitted at T1, doubling to T2, until the ACK
    /// comes; after 64*T1 without one the call is ended with BYE.
    fn retransmit_2xx(&mut self, id: u64, at: Instant, now: Instant) {
        let t2 = self.cfg.timers.t2;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(u) = call.a_unacked.as_mut() else {
            return;
        };
        if u.next != at {
            return;
        }
        if now >= u.give_up {
            call.a_unacked = None;
            tracing::info!(call = id, "no ACK for the 2xx; ending the call");
            self.bye(id, Leg::A, now);
            self.bye(id, Leg::B, now);
            self.end(id, "caller never ACKed the 2xx", 408);
            return;
        }
        let resp = u.response.clone();
        u.interval = (u.interval * 2).min(t2);
        u.next = now + u.interval;
        let next = u.next;
        let peer = call.a_peer;
        self.layer.send_stateless(resp, peer);
        self.timers
            .push(Reverse((next, id, TimerKind::Retransmit2xx)));
    }

    /// RFC 4028 section 10: no refresh before the deadline ends the session with BYE.
    fn session_expiry(&mut self, id: u64, at: Instant, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        // Only the timer of the latest refresh counts; earlier heap entries are stale.
        if call.session_timer.map(|t| t.deadline()) != Some(at) {
            return;
        }
        tracing::info!(call = id, "session timer expired; ending the call");
        self.bye_with(id, Leg::A, SESSION_EXPIRED_REASON, now);
        self.bye_with(id, Leg::B, SESSION_EXPIRED_REASON, now);
        self.end(id, "session timer expired", 408);
    }

    fn on_relayed_response(
        &mut self,
        id: u64,
        server: TxId,
        to: Leg,
        msg: Message,
        code: u16,
        now: Instant,
    ) {
        if code == 100 {
            return;
        }
        let Some(req) = self.layer.request(server).cloned() else {
            return;
        };
        let method = req.method().cloned().unwrap_or(Method::Options);
        let from = to.other();
        let mut r = response_for(&req, code, Some(&reason_of(&msg)));
        let mut ack_seq = None;
        if let Some(call) = self.calls.get_mut(&id) {
            if method == Method::Invite && code >= 200 {
                call.reinvite_pending = false;
            }
            if (200..300).contains(&code) {
                if let Some(d) = call.dialog_mut(to) {
                    d.on_refresh_response(&msg);
                }
                if matches!(method, Method::Invite | Method::Update) {
                    // A successful refresh restarts the session timer (RFC 4028 section 10),
                    // with the interval its 2xx names.
                    if let Some(t) = SessionTimer::from_2xx(&msg, now) {
                        call.session_timer = Some(t);
                        self.timers
                            .push(Reverse((t.deadline(), id, TimerKind::SessionExpiry)));
                    } else if let Some(t) = call.session_timer.as_mut() {
                        t.refreshed = now;
                        let at = t.deadline();
                        self.timers
                            .push(Reverse((at, id, TimerKind::SessionExpiry)));
                    }
                    copy_session_timer(&msg, &mut r);
                }
                if method == Method::Invite {
                    ack_seq = msg.cseq().ok().map(|c| c.seq);
                }
            }
            let media_id = call.media_id.clone();
            if (200..300).contains(&code) || (101..200).contains(&code) {
                if let Ok(Some(sdp)) = sdp_body(&msg)
                    && matches!(method, Method::Invite | Method::Update)
                {
                    match self.media.answer(
                        &media_id,
                        from.media_tag(),
                        to.media_tag(),
                        &sdp,
                        self.cfg.media,
                    ) {
                        Ok(out) => {
                            r.push(HeaderName::ContentType, "application/sdp");
                            r.body = crate::sdp::origin_from_connection(out).into_bytes();
                        }
                        Err(e) => {
                            tracing::info!(call = id, error = %e, "answer to a re-offer refused")
                        }
                    }
                } else if !msg.body.is_empty() {
                    let ct = msg
                        .header(&HeaderName::ContentType)
                        .unwrap_or("application/octet-stream")
                        .to_owned();
                    r.push(HeaderName::ContentType, ct);
                    r.body = msg.body.clone();
                }
            }
            if matches!(method, Method::Invite | Method::Update) && (200..300).contains(&code) {
                r.push(
                    HeaderName::Contact,
                    self.contact(self.leg_peer(id, from)).to_string(),
                );
            }
        }
        self.decorate(&mut r, code);
        let _ = self.layer.respond(server, r, now);
        if let Some(seq) = ack_seq {
            // sluice ACKs the 2xx of the re-INVITE it sent; the originator's ACK is absorbed.
            let via = self.via(self.leg_peer(id, to));
            if let Some(call) = self.calls.get_mut(&id)
                && let Some(d) = call.dialog_mut(to)
            {
                let ack = d.ack(seq, &via);
                let peer = call.peer(to);
                self.layer.send_stateless(ack, peer);
            }
        }
    }

    fn on_failure(&mut self, tx: TxId, now: Instant) {
        match self.roles.get(&tx).copied() {
            Some(Role::BInvite(id)) => {
                if let Some(call) = self.calls.get(&id) {
                    if matches!(call.state, CallState::Calling | CallState::Early) {
                        let a_tx = call.a_tx;
                        let r = self.reply_in_call(id, 408, None);
                        let _ = self.layer.respond(a_tx, r, now);
                    }
                    self.end(id, "callee did not answer (timer B)", 408);
                }
            }
            Some(Role::RelayOut { call, server, .. }) => {
                if let Some(c) = self.calls.get_mut(&call) {
                    c.reinvite_pending = false;
                }
                if let Some(req) = self.layer.request(server).cloned() {
                    let r = response_for(&req, 408, None);
                    let _ = self.layer.respond(server, r, now);
                }
            }
            _ => {}
        }
    }

    fn on_stray(&mut self, msg: Message, _from: Peer) {
        // A 2xx retransmitted after the INVITE transaction ended (timer M): ACK it again if
        // it belongs to a call sluice still has.
        let Ok(cseq) = msg.cseq() else { return };
        if cseq.method != Method::Invite || !msg.code().is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        let Some((id, Leg::B)) = self.find(&msg) else {
            return;
        };
        let via = self.via(self.leg_peer(id, Leg::B));
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if let Some(d) = &call.b_dialog
            && !call.b_ack_pending
        {
            let ack = d.ack(cseq.seq, &via);
            self.layer.send_stateless(ack, call.b_peer);
        }
    }

    /// A 2xx sluice does not want (a losing fork, or after a CANCEL): ACK, then BYE.
    fn ack_and_bye_stray(&mut self, msg: &Message, now: Instant) {
        let id = self.find(msg).map(|(id, _)| id);
        let Some(invite) = id
            .and_then(|id| self.calls.get(&id))
            .map(|c| (c.b_invite.clone(), c.b_peer))
        else {
            return;
        };
        let Ok(mut d) = Dialog::uac(&invite.0, msg) else {
            return;
        };
        let via = self.via(invite.1);
        self.layer.send_stateless(d.ack(1, &via), invite.1);
        let via = self.via(invite.1);
        let bye = d.request(Method::Bye, &via, None);
        let t = self.layer.send_request(bye, invite.1, now);
        self.roles.insert(t, Role::ForkBye);
    }

    /// The call is over: media deleted, record queued, indexes dropped. Transactions still
    /// running (a BYE, a CANCEL) finish on their own.
    fn end(&mut self, id: u64, reason: &str, code: u16) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        self.by_a
            .remove(&(call.a_call_id.clone(), call.a_remote_tag.clone()));
        self.by_b.remove(&call.b_call_id);
        self.by_media.remove(&call.media_id);
        let media = match self.media.delete(&call.media_id, "", "") {
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
        self.records
            .push_back(CallRecord::of(&call, reason, code, media));
        // Bounded: a driver that never reads records must not grow without limit.
        if self.records.len() > 10_000 {
            self.records.pop_front();
        }
    }
}

/// The SDP body of a message: `Ok(None)` when it has no body, `Err` for a body sluice
/// cannot read (another Content-Type).
fn sdp_body(m: &Message) -> Result<Option<String>, ()> {
    if m.body.is_empty() {
        return Ok(None);
    }
    let ct = m.header(&HeaderName::ContentType).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err(());
    }
    String::from_utf8(m.body.clone()).map(Some).map_err(|_| ())
}

fn reason_of(m: &Message) -> String {
    match &m.start {
        sluice_sip::StartLine::Response { reason, code, .. } if reason.is_empty() => {
            sluice_sip::default_reason(*code).to_owned()
        }
        sluice_sip::StartLine::Response { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

/// The session timer of a 2xx, relayed: Session-Expires, and Require: timer with it.
fn copy_session_timer(from: &Message, to: &mut Message) {
    if let Some(se) = from.header(&HeaderName::SessionExpires) {
        to.push(HeaderName::SessionExpires, se.to_owned());
        // RFC 4028 section 9: a 2xx with Session-Expires carries Require: timer.
        to.push(HeaderName::Require, "timer");
    }
}

fn add_to_tag(r: &mut Message, tag: &str) {
    let Some(h) = r.headers.iter_mut().find(|h| h.name == HeaderName::To) else {
        return;
    };
    if let Ok(mut to) = NameAddr::parse("To", &h.value)
        && to.tag().is_none()
    {
        to.params.set("tag", Some(tag));
        h.value = to.to_string();
    }
}

/// RFC 3261 18.2.1: `received` when the source address differs from the Via host, and
/// RFC 3581 section 4: `rport` filled in when asked for.
fn stamp_received(m: &mut Message, from: SocketAddr) {
    let Some(h) = m.headers.iter_mut().find(|h| h.name == HeaderName::Via) else {
        return;
    };
    let (first, rest) = sluice_sip::via::split_top(&h.value);
    let rest = rest.map(str::to_owned);
    let Ok(mut via) = Via::parse(first) else {
        return;
    };
    if via.host.ip() != Some(from.ip()) {
        via.params.set("received", Some(&from.ip().to_string()));
    }
    if via.rport().is_some() {
        via.params.set("rport", Some(&from.port().to_string()));
    }
    let top = via.to_string();
    h.value = match rest {
        Some(rest) => format!("{top}, {rest}"),
        None => top,
    };
}

/// RFC 3261 9.1: the CANCEL of an INVITE: same Request-URI, Call-ID, From, To, CSeq number
/// and top Via; method CANCEL.
fn cancel_for(invite: &Message) -> Message {
    let uri = invite
        .request_uri()
        .cloned()
        .unwrap_or_else(|| Uri::sip(None, Host::None, None));
    let mut c = Message::request(Method::Cancel, uri);
    for h in &invite.headers {
        match h.name {
            HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::MaxForwards
            | HeaderName::Route => c.headers.push(h.clone()),
            HeaderName::CSeq => {
                let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
                c.push(HeaderName::CSeq, format!("{seq} CANCEL"));
            }
            _ => {}
        }
    }
    c
}

#[cfg(test)]
mod tests;
