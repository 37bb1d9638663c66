//! The SIP transaction layer (RFC 3261 section 17, as updated by RFC 6026), sans-IO.
//!
//! Messages come in through [`TransactionLayer::on_message`], requests go out through
//! [`TransactionLayer::send_request`], responses through [`TransactionLayer::respond`]; time
//! passes only when the caller says so ([`TransactionLayer::handle_timeout`] with the
//! instant [`TransactionLayer::poll_timeout`] asked for). What the layer wants sent comes out
//! of [`TransactionLayer::poll_transmit`], what the transaction user (TU) must know out of
//! [`TransactionLayer::poll_event`].
//!
//! # Matching
//!
//! * Server side, RFC 3261 section 17.2.3: a request whose top Via branch starts with the
//!   magic cookie `z9hG4bK` (and has something after it) matches the transaction with the
//!   same branch, the same sent-by (host and port of the top Via) and the same method, an
//!   ACK matching the INVITE transaction. CANCEL is a method of its own, so it creates its
//!   own transaction; [`TransactionLayer::find_invite_for_cancel`] finds the INVITE it
//!   targets (section 9.2).
//! * Without the cookie (an RFC 2543 sender, or a branch that is the bare cookie as in RFC
//!   4475 section 3.3.11), the fallback of section 17.2.3: Request-URI, From tag, Call-ID,
//!   CSeq number, method (INVITE for an ACK) and top Via are the key, and the To tag must
//!   match that of the request, or for an ACK that of the response the server sent.
//! * Client side, section 17.1.3: the top Via branch and the CSeq method of a response.
//!
//! # Lifetimes
//!
//! Every transaction ends by one of the timers of RFC 3261 table 4 (and RFC 6026's L and
//! M), a transport error, or, for two cases the RFCs leave to the TU, by these rules:
//!
//! * An INVITE server transaction lives until the TU answers it: ringing may legitimately
//!   last minutes, and only the TU knows when to give up (with a final response such as
//!   480 or 487). A TU that never answers leaks the transaction; the TU owns that.
//! * A non-INVITE server transaction the TU has not answered 64*T1 after it was created is
//!   terminated ([`TxEvent::Terminated`]): by then the client's timer F has fired and it
//!   has given up, so a late answer would reach nobody (RFC 3261 section 17.1.2.2).
//! * An INVITE client transaction in Proceeding waits for a final response for as long as
//!   the server takes. Once the TU sends a CANCEL for it (same branch, RFC 3261 section
//!   9.1) it waits 64*T1 more, then is destroyed with [`TxEvent::Timeout`] (section 9.1:
//!   "the client SHOULD then consider the original transaction cancelled and SHOULD destroy
//!   the client transaction").
//!
//! A terminated transaction is removed from the table at once (RFC 3261 sections 17.1.1.2
//! and 17.2.1: destroyed the instant it enters Terminated) and reported once with
//! [`TxEvent::Terminated`]; its timers that are still queued do nothing.
//!
//! # Timers
//!
//! Retransmission timers are rearmed from the instant they fired (the `now` given to
//! `handle_timeout`), so a caller that wakes up late never gets a burst of catch-up
//! retransmissions.

mod client_invite;
mod client_non_invite;
mod server_invite;
mod server_non_invite;
mod timers;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::via::MAGIC_COOKIE;
use crate::{Message, Method};

use client_invite::ClientInvite;
use client_non_invite::ClientNonInvite;
use server_invite::ServerInvite;
use server_non_invite::ServerNonInvite;
use timers::{Slots, Timer, TimerQueue};

/// A transport protocol of RFC 3261 section 18.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Whether the transport delivers reliably (RFC 3261 section 17: then no retransmission
    /// timers run and the wait timers D, I, J and K are zero).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Self::Udp)
    }

    /// The transport's name in a Via header (RFC 3261 section 20.42).
    pub fn via_name(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }
}

/// The other end of a message: where it came from or goes to, and over what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
}

/// T1, T2 and T4 of RFC 3261 table 4. T1 below 1 ms is taken as 1 ms and T2 below T1 as T1
/// (a zero retransmission interval would never let time pass).
#[derive(Clone, Copy, Debug)]
pub struct TimerConfig {
    /// RTT estimate; 500 ms.
    pub t1: Duration,
    /// The maximum retransmission interval of non-INVITE requests and INVITE responses; 4 s.
    pub t2: Duration,
    /// The maximum time a message stays in the network; 5 s.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// A transaction's identity: unique within one layer, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

/// Bytes to send: an encoded message ([`Message::to_bytes`]) and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub peer: Peer,
    pub bytes: Vec<u8>,
}

/// What the TU must learn.
#[derive(Debug)]
pub enum TxEvent {
    /// A request for the TU. Retransmissions never appear here (absorbed). A new request
    /// creates a server transaction (tx = Some). An ACK that matches no server transaction
    /// (the ACK of a 2xx, which is end-to-end) has tx = None. An ACK matching an INVITE
    /// server transaction in the RFC 6026 Accepted state (i.e. after a 2xx) is ALSO passed
    /// up with tx = None (it is for the TU/dialog).
    Request {
        tx: Option<TxId>,
        msg: Message,
        from: Peer,
    },
    /// A response matched to client transaction `tx`: each provisional, the final. For
    /// INVITE: every 2xx, including retransmissions and 2xx from other forks while in the
    /// RFC 6026 Accepted state (timer M), so the TU can ACK each one.
    Response { tx: TxId, msg: Message },
    /// Timer B or F fired: the TU treats it as a 408 (RFC 3261 8.1.3.1). Also timer H of an
    /// INVITE server transaction (the ACK never came, RFC 3261 17.2.1), and an INVITE
    /// client transaction given up 64*T1 after its CANCEL with no final response (RFC 3261
    /// 9.1).
    Timeout { tx: TxId },
    /// The transport failed for this transaction (RFC 3261 17.1.4 / 17.2.4).
    TransportError { tx: TxId },
    /// A response that matches no client transaction (RFC 3261 17.1.3; e.g. a 2xx
    /// retransmission after timer M). The TU decides (a UAC core ACKs a stray 2xx of a
    /// dialog it knows).
    StrayResponse { msg: Message, from: Peer },
    /// The transaction is gone: a server transaction whose TU never answered is reported
    /// too.
    Terminated { tx: TxId },
}

/// Why [`TransactionLayer::respond`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("no such transaction")]
    Unknown,
    #[error("a final response was already sent in this transaction")]
    FinalAlreadySent,
    #[error("not a server transaction")]
    NotAServerTransaction,
    #[error("bad response: {0}")]
    BadResponse(&'static str),
}

/// Running totals since the layer was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxCounters {
    /// Messages re-sent because a retransmission timer fired (A, E, G).
    pub retransmissions: u64,
    /// Inbound messages that matched a transaction and were not passed up: retransmitted
    /// requests and responses (whether or not the layer re-sent something in reply) and the
    /// ACKs of non-2xx finals.
    pub absorbed: u64,
    /// [`TxEvent::Timeout`]s reported.
    pub timeouts: u64,
    /// [`TxEvent::StrayResponse`]s reported.
    pub stray_responses: u64,
    /// [`TxEvent::TransportError`]s reported.
    pub transport_errors: u64,
}

/// Whether a transaction goes on after handling something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Step {
    Live,
    /// The transaction entered Terminated: the layer removes it.
    Done,
}

/// What the machines produce, owned by the layer.
#[derive(Debug, Default)]
struct Outputs {
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    counters: TxCounters,
    timers: TimerQueue,
}

/// What a machine may do while it handles one input.
pub(crate) struct Ctx<'a> {
    pub(crate) id: TxId,
    pub(crate) now: Instant,
    pub(crate) cfg: TimerConfig,
    out: &'a mut Outputs,
}

impl<'a> Ctx<'a> {
    fn new(id: TxId, now: Instant, cfg: TimerConfig, out: &'a mut Outputs) -> Self {
        Self { id, now, cfg, out }
    }

    pub(crate) fn send(&mut self, peer: Peer, bytes: &[u8]) {
        self.out.transmits.push_back(Transmit {
            peer,
            bytes: bytes.to_vec(),
        });
    }

    /// A timer-driven retransmission.
    pub(crate) fn retransmit(&mut self, peer: Peer, bytes: &[u8]) {
        self.out.counters.retransmissions += 1;
        self.send(peer, bytes);
    }

    pub(crate) fn emit(&mut self, e: TxEvent) {
        self.out.events.push_back(e);
    }

    /// An inbound message consumed without reaching the TU.
    pub(crate) fn absorb(&mut self) {
        self.out.counters.absorbed += 1;
    }

    /// Reports a timeout of this transaction.
    pub(crate) fn timeout(&mut self) {
        self.out.counters.timeouts += 1;
        let tx = self.id;
        self.emit(TxEvent::Timeout { tx });
    }

    /// Arms `t` to fire `after` from now. A deadline past the end of `Instant` is never
    /// reached: the timer stays disarmed.
    pub(crate) fn arm(&mut self, slots: &mut Slots, t: Timer, after: Duration) {
        let at = self.now.checked_add(after);
        slots.set(t, at);
        if let Some(at) = at {
            self.out.timers.push(at, self.id, t);
        }
    }
}

/// RFC 3261 section 17.2.3 matching with the magic cookie.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BranchKey {
    branch: String,
    /// sent-by host, lower-cased (host names compare case-insensitively).
    host: String,
    port: Option<u16>,
    method: Method,
}

/// RFC 3261 section 17.2.3, the RFC 2543 fallback, less the To tag (compared apart: for an
/// ACK it is the tag of the response sent, not of the request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LegacyKey {
    request_uri: String,
    from_tag: Option<String>,
    call_id: String,
    cseq: u32,
    method: Method,
    /// The top Via as written back, lower-cased.
    top_via: String,
}

#[derive(Debug)]
enum ServerKey {
    Branch(BranchKey),
    Legacy(LegacyKey, Option<String>),
}

/// RFC 3261 section 17.1.3: top Via branch and CSeq method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

/// Whether `branch` carries an RFC 3261 transaction identifier: the magic cookie and
/// something after it (RFC 3261 section 8.1.1.7). A bare cookie identifies nothing (RFC
/// 4475 section 3.3.11), so such a request is matched by the RFC 2543 rules.
fn rfc3261_branch(branch: Option<&str>) -> Option<&str> {
    branch.filter(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
}

/// The server key of request `msg` looking for a transaction of `method` (INVITE for an
/// ACK or for a CANCEL's target). None when the request lacks what matching needs: such a
/// request cannot be answered either, and is dropped.
fn server_key(msg: &Message, method: Method) -> Option<ServerKey> {
    let via = msg.top_via().ok()?;
    if let Some(branch) = rfc3261_branch(via.branch()) {
        // RFC 3261 17.2.3: branch, sent-by and method.
        return Some(ServerKey::Branch(BranchKey {
            branch: branch.to_owned(),
            host: via.host.to_string().to_ascii_lowercase(),
            port: via.port,
            method,
        }));
    }
    // RFC 3261 17.2.3: Request-URI, To tag, From tag, Call-ID, CSeq and top Via for a
    // request without the magic cookie.
    let to_tag = msg.to_hdr().ok()?.tag().map(str::to_owned);
    let key = LegacyKey {
        request_uri: msg.request_uri()?.to_string(),
        from_tag: msg.from_hdr().ok()?.tag().map(str::to_owned),
        call_id: msg.call_id().ok()?.to_owned(),
        cseq: msg.cseq().ok()?.seq,
        method,
        top_via: via.to_string().to_ascii_lowercase(),
    };
    Some(ServerKey::Legacy(key, to_tag))
}

/// The client key a request sent creates (its own branch and method).
fn client_key_of_request(req: &Message) -> Option<ClientKey> {
    let via = req.top_via().ok()?;
    Some(ClientKey {
        branch: via.branch()?.to_owned(),
        method: req.method()?.clone(),
    })
}

/// RFC 3261 17.1.3: the top Via branch and the CSeq method of a response.
fn client_key_of_response(resp: &Message) -> Option<ClientKey> {
    let via = resp.top_via().ok()?;
    Some(ClientKey {
        branch: via.branch()?.to_owned(),
        method: resp.cseq().ok()?.method,
    })
}

/// The four machines of RFC 3261 section 17, named as the RFC names them.
#[derive(Debug)]
#[allow(clippy::enum_variant_names)]
enum Machine {
    ClientInvite(ClientInvite),
    ClientNonInvite(ClientNonInvite),
    ServerInvite(ServerInvite),
    ServerNonInvite(ServerNonInvite),
}

impl Machine {
    fn slots(&self) -> &Slots {
        match self {
            Self::ClientInvite(m) => &m.timers,
            Self::ClientNonInvite(m) => &m.timers,
            Self::ServerInvite(m) => &m.timers,
            Self::ServerNonInvite(m) => &m.timers,
        }
    }

    fn slots_mut(&mut self) -> &mut Slots {
        match self {
            Self::ClientInvite(m) => &mut m.timers,
            Self::ClientNonInvite(m) => &mut m.timers,
            Self::ServerInvite(m) => &mut m.timers,
            Self::ServerNonInvite(m) => &mut m.timers,
        }
    }

    fn request(&self) -> &Message {
        match self {
            Self::ClientInvite(m) => &m.request,
            Self::ClientNonInvite(m) => &m.request,
            Self::ServerInvite(m) => &m.request,
            Self::ServerNonInvite(m) => &m.request,
        }
    }

    fn peer(&self) -> Peer {
        match self {
            Self::ClientInvite(m) => m.peer,
            Self::ClientNonInvite(m) => m.peer,
            Self::ServerInvite(m) => m.peer,
            Self::ServerNonInvite(m) => m.peer,
        }
    }

    fn on_timer(&mut self, t: Timer, ctx: &mut Ctx<'_>) -> Step {
        match self {
            Self::ClientInvite(m) => m.on_timer(t, ctx),
            Self::ClientNonInvite(m) => m.on_timer(t, ctx),
            Self::ServerInvite(m) => m.on_timer(t, ctx),
            Self::ServerNonInvite(m) => m.on_timer(t, ctx),
        }
    }
}

/// How a transaction is found again, kept to unindex it.
#[derive(Debug)]
enum Index {
    /// A client transaction whose request had no branch, or the branch and method of
    /// another live one: no response can match it.
    None,
    Client(ClientKey),
    Branch(BranchKey),
    Legacy {
        key: LegacyKey,
        request_to_tag: Option<String>,
        /// The To tag of the last response sent, which an RFC 2543 ACK carries.
        response_to_tag: Option<String>,
    },
}

#[derive(Debug)]
struct Tx {
    machine: Machine,
    index: Index,
}

/// The transaction layer: every live client and server transaction, their timers, and
/// what they want sent and reported.
#[derive(Debug)]
pub struct TransactionLayer {
    cfg: TimerConfig,
    next_id: u64,
    txs: HashMap<TxId, Tx>,
    by_branch: HashMap<BranchKey, TxId>,
    by_legacy: HashMap<LegacyKey, Vec<TxId>>,
    clients: HashMap<ClientKey, TxId>,
    out: Outputs,
}

impl TransactionLayer {
    pub fn new(timers: TimerConfig) -> Self {
        Self {
            cfg: timers.sanitized(),
            next_id: 1,
            txs: HashMap::new(),
            by_branch: HashMap::new(),
            by_legacy: HashMap::new(),
            clients: HashMap::new(),
            out: Outputs::default(),
        }
    }

    fn alloc_id(&mut self) -> TxId {
        let id = TxId(self.next_id);
        self.next_id += 1;
        id
    }

    /// A parsed message (already validated by the caller) arrived from `from` at `now`.
    pub fn on_message(&mut self, msg: Message, from: Peer, now: Instant) {
        if msg.is_request() {
            self.on_request(msg, from, now);
        } else {
            self.on_response(msg, from, now);
        }
        self.prune();
    }

    fn on_request(&mut self, msg: Message, from: Peer, now: Instant) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let ack = method == Method::Ack;
        // RFC 3261 17.2.3: an ACK matches the INVITE transaction it acknowledges.
        let target = if ack { Method::Invite } else { method.clone() };
        let Some(key) = server_key(&msg, target) else {
            return;
        };
        if let Some(id) = self.find_server(&key, ack) {
            let Some(tx) = self.txs.get_mut(&id) else {
                return;
            };
            let mut ctx = Ctx::new(id, now, self.cfg, &mut self.out);
            let step = match &mut tx.machine {
                Machine::ServerInvite(m) => m.on_request(msg, from, &mut ctx),
                Machine::ServerNonInvite(m) => m.on_request(&mut ctx),
                // The server indices hold server transactions only.
                Machine::ClientInvite(_) | Machine::ClientNonInvite(_) => Step::Live,
            };
            if step == Step::Done {
                self.remove(id);
            }
            return;
        }
        if ack {
            // RFC 3261 17.2.3 and 13.3.1.4: an ACK matching no server transaction is the
            // ACK of a 2xx, end to end: the TU's.
            self.out.events.push_back(TxEvent::Request {
                tx: None,
                msg,
                from,
            });
            return;
        }
        let id = self.alloc_id();
        let mut ctx = Ctx::new(id, now, self.cfg, &mut self.out);
        let machine = if method == Method::Invite {
            Machine::ServerInvite(ServerInvite::start(msg, from, &mut ctx))
        } else {
            Machine::ServerNonInvite(ServerNonInvite::start(msg, from, &mut ctx))
        };
        let index = match key {
            ServerKey::Branch(k) => {
                self.by_branch.insert(k.clone(), id);
                Index::Branch(k)
            }
            ServerKey::Legacy(k, to_tag) => {
                self.by_legacy.entry(k.clone()).or_default().push(id);
                Index::Legacy {
                    key: k,
                    // The 100 (Trying) the layer sends carries the request's To.
                    response_to_tag: to_tag.clone(),
                    request_to_tag: to_tag,
                }
            }
        };
        self.txs.insert(id, Tx { machine, index });
    }

    /// The server transaction `key` names; `ack` picks the To tag rule of the RFC 2543
    /// fallback.
    fn find_server(&self, key: &ServerKey, ack: bool) -> Option<TxId> {
        match key {
            ServerKey::Branch(k) => self.by_branch.get(k).copied(),
            ServerKey::Legacy(k, to_tag) => {
                self.by_legacy.get(k)?.iter().copied().find(|id| {
                    match self.txs.get(id).map(|t| &t.index) {
                        Some(Index::Legacy {
                            request_to_tag,
                            response_to_tag,
                            ..
                        }) => {
                            // RFC 3261 17.2.3: the To tag of an ACK matches that of the
                            // response sent; of any other request, that of the request.
                            if ack {
                                response_to_tag == to_tag
                            } else {
                                request_to_tag == to_tag
                            }
                        }
                        _ => false,
                    }
                })
            }
        }
    }

    fn on_response(&mut self, msg: Message, from: Peer, now: Instant) {
        // RFC 3261 17.1.3: branch of the top Via and CSeq method.
        let id = client_key_of_response(&msg).and_then(|k| self.clients.get(&k).copied());
        let Some((id, tx)) = id.and_then(|id| self.txs.get_mut(&id).map(|t| (id, t))) else {
            // RFC 3261 17.1.3: a response matching no client transaction goes to the TU
            // (the core), which decides. RFC 6026's update of RFC 3261 18.1.2 has anything
            // but a stateless proxy discard it: a UA core drops what it does not know.
            self.out.counters.stray_responses += 1;
            self.out
                .events
                .push_back(TxEvent::StrayResponse { msg, from });
            return;
        };
        let mut ctx = Ctx::new(id, now, self.cfg, &mut self.out);
        let step = match &mut tx.machine {
            Machine::ClientInvite(m) => m.on_response(msg, &mut ctx),
            Machine::ClientNonInvite(m) => m.on_response(msg, &mut ctx),
            // The client index holds client transactions only.
            Machine::ServerInvite(_) | Machine::ServerNonInvite(_) => Step::Live,
        };
        if step == Step::Done {
            self.remove(id);
        }
    }

    /// Starts a client transaction for `req` (INVITE -> INVITE client machine; anything
    /// else but ACK -> non-INVITE machine). The caller has put the top Via with a z9hG4bK
    /// branch in `req`; the layer adds nothing. Sends it to `to` at once (a Transmit).
    ///
    /// An ACK (or a response) is no transaction: it is sent once, and the id returned is
    /// reported terminated at once.
    pub fn send_request(&mut self, req: Message, to: Peer, now: Instant) -> TxId {
        let id = self.alloc_id();
        let method = req.method().cloned();
        let mut ctx = Ctx::new(id, now, self.cfg, &mut self.out);
        let machine = match method {
            Some(Method::Invite) => Machine::ClientInvite(ClientInvite::start(req, to, &mut ctx)),
            Some(Method::Ack) | None => {
                ctx.send(to, &req.to_bytes());
                ctx.emit(TxEvent::Terminated { tx: id });
                return id;
            }
            Some(_) => Machine::ClientNonInvite(ClientNonInvite::start(req, to, &mut ctx)),
        };
        let key = client_key_of_request(machine.request());
        if let (Some(Method::Cancel), Some(k)) = (&method, &key) {
            // RFC 3261 9.1: the CANCEL carries the branch of the INVITE it cancels.
            let invite = ClientKey {
                branch: k.branch.clone(),
                method: Method::Invite,
            };
            if let Some(inv) = self.clients.get(&invite).copied()
                && let Some(Tx {
                    machine: Machine::ClientInvite(m),
                    ..
                }) = self.txs.get_mut(&inv)
            {
                let mut ctx = Ctx::new(inv, now, self.cfg, &mut self.out);
                m.on_cancel_sent(&mut ctx);
            }
        }
        let index = match key {
            // A second live request with the same branch and method (a TU bug) matches no
            // response: it ends by timer B or F, and the first one keeps its responses.
            Some(k) if !self.clients.contains_key(&k) => {
                self.clients.insert(k.clone(), id);
                Index::Client(k)
            }
            _ => Index::None,
        };
        self.txs.insert(id, Tx { machine, index });
        self.prune();
        id
    }

    /// Sends a message outside any transaction once (the ACK of a 2xx is end-to-end, RFC
    /// 3261 13.2.2.4; 2xx retransmissions by the UAS core).
    pub fn send_stateless(&mut self, msg: Message, to: Peer) {
        self.out.transmits.push_back(Transmit {
            peer: to,
            bytes: msg.to_bytes(),
        });
    }

    /// Responds in server transaction `tx`. The response goes to the peer the request came
    /// from.
    pub fn respond(&mut self, tx: TxId, resp: Message, now: Instant) -> Result<(), TxError> {
        let t = self.txs.get_mut(&tx).ok_or(TxError::Unknown)?;
        if !matches!(
            t.machine,
            Machine::ServerInvite(_) | Machine::ServerNonInvite(_)
        ) {
            return Err(TxError::NotAServerTransaction);
        }
        let code = resp
            .code()
            .ok_or(TxError::BadResponse("a request, not a response"))?;
        if !(100..=699).contains(&code) {
            return Err(TxError::BadResponse("status code outside 100-699"));
        }
        let to_tag = match t.index {
            Index::Legacy { .. } => resp.to_hdr().ok().and_then(|n| n.tag().map(str::to_owned)),
            _ => None,
        };
        let mut ctx = Ctx::new(tx, now, self.cfg, &mut self.out);
        let step = match &mut t.machine {
            Machine::ServerInvite(m) => m.respond(resp, code, &mut ctx)?,
            Machine::ServerNonInvite(m) => m.respond(resp, code, &mut ctx)?,
            Machine::ClientInvite(_) | Machine::ClientNonInvite(_) => {
                return Err(TxError::NotAServerTransaction);
            }
        };
        if let Index::Legacy {
            response_to_tag, ..
        } = &mut t.index
        {
            *response_to_tag = to_tag;
        }
        if step == Step::Done {
            self.remove(tx);
        }
        self.prune();
        Ok(())
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, id, t)) = self.out.timers.peek() {
            if at > now {
                break;
            }
            self.out.timers.pop();
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if tx.machine.slots().get(t) != Some(at) {
                continue;
            }
            tx.machine.slots_mut().clear(t);
            let mut ctx = Ctx::new(id, now, self.cfg, &mut self.out);
            if tx.machine.on_timer(t, &mut ctx) == Step::Done {
                self.remove(id);
            }
        }
        self.prune();
    }

    /// Drops queued deadlines that no longer fire (their transaction is gone, or the timer
    /// was disarmed or rearmed), so the top of the queue is always a live deadline.
    fn prune(&mut self) {
        while let Some((at, id, t)) = self.out.timers.peek() {
            if self
                .txs
                .get(&id)
                .is_some_and(|tx| tx.machine.slots().get(t) == Some(at))
            {
                break;
            }
            self.out.timers.pop();
        }
    }

    /// The earliest deadline of any transaction, None when there is none.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.out.timers.peek().map(|(at, _, _)| at)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.out.events.pop_front()
    }

    /// The transport could not deliver for `tx` (TCP connect failure, ICMP unreachable).
    pub fn transport_error(&mut self, tx: TxId, _now: Instant) {
        if !self.txs.contains_key(&tx) {
            return;
        }
        // RFC 3261 17.1.4 and 17.2.4: the transaction informs the TU of the transport
        // failure and moves to Terminated (17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2).
        self.out.counters.transport_errors += 1;
        self.out.events.push_back(TxEvent::TransportError { tx });
        self.remove(tx);
        self.prune();
    }

    /// Removes a terminated transaction and reports it.
    fn remove(&mut self, id: TxId) {
        let Some(tx) = self.txs.remove(&id) else {
            return;
        };
        match tx.index {
            Index::None => {}
            Index::Client(k) => {
                if self.clients.get(&k) == Some(&id) {
                    self.clients.remove(&k);
                }
            }
            Index::Branch(k) => {
                if self.by_branch.get(&k) == Some(&id) {
                    self.by_branch.remove(&k);
                }
            }
            Index::Legacy { key, .. } => {
                if let Some(ids) = self.by_legacy.get_mut(&key) {
                    ids.retain(|x| *x != id);
                    if ids.is_empty() {
                        self.by_legacy.remove(&key);
                    }
                }
            }
        }
        self.out.events.push_back(TxEvent::Terminated { tx: id });
    }

    /// Live transactions (leak checks: 0 once everything has terminated).
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    pub fn counters(&self) -> TxCounters {
        self.out.counters
    }

    /// RFC 3261 9.2: the INVITE server transaction a CANCEL request targets (same
    /// branch/sent-by as the INVITE, method INVITE; RFC 2543 fallback too). The layer
    /// itself answers nothing for CANCEL: a CANCEL is a normal non-INVITE request that
    /// creates its own server transaction and is passed up.
    pub fn find_invite_for_cancel(&self, cancel: &Message) -> Option<TxId> {
        // RFC 3261 9.2: apply the matching of 17.2.3 as if the method were not CANCEL
        // (the INVITE's); for the RFC 2543 fallback the CANCEL carries the INVITE's To
        // (9.1), so the request rule for the To tag applies.
        let key = server_key(cancel, Method::Invite)?;
        let id = self.find_server(&key, false)?;
        matches!(self.txs.get(&id)?.machine, Machine::ServerInvite(_)).then_some(id)
    }

    /// The request that created server transaction `tx`, or that client transaction `tx`
    /// sent.
    pub fn request(&self, tx: TxId) -> Option<&Message> {
        self.txs.get(&tx).map(|t| t.machine.request())
    }

    /// The client transactions that send to `peer`: what a transport that cannot reach it
    /// fails at once ([`TransactionLayer::transport_error`]) rather than at timer B or F.
    pub fn clients_to(&self, peer: Peer) -> Vec<TxId> {
        self.txs
            .iter()
            .filter(|(_, t)| {
                matches!(
                    t.machine,
                    Machine::ClientInvite(_) | Machine::ClientNonInvite(_)
                ) && t.machine.peer() == peer
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The peer of transaction `tx`: where a client transaction sends, where a server
    /// transaction's request came from.
    pub fn peer(&self, tx: TxId) -> Option<Peer> {
        self.txs.get(&tx).map(|t| t.machine.peer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeaderName, Limits, parse_datagram, response_for};

    fn peer(transport: Transport) -> Peer {
        Peer {
            transport,
            addr: "192.0.2.4:5060".parse().unwrap(),
        }
    }

    fn req(method: &str, branch: &str) -> Message {
        let text = format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch={branch}\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:a@example.com>;tag=f\r\nCall-ID: unit\r\nCSeq: 1 {method}\r\nContact: <sip:a@192.0.2.1>\r\n\r\n"
        );
        parse_datagram(text.as_bytes(), &Limits::default()).unwrap()
    }

    fn resp(r: &Message, code: u16) -> Message {
        let mut m = response_for(r, code, None);
        m.set(HeaderName::To, "<sip:bob@example.com>;tag=t");
        m
    }

    impl TransactionLayer {
        /// The state of transaction `id`, by name.
        fn state_of(&self, id: TxId) -> Option<String> {
            Some(match &self.txs.get(&id)?.machine {
                Machine::ClientInvite(m) => format!("{:?}", m.state()),
                Machine::ClientNonInvite(m) => format!("{:?}", m.state()),
                Machine::ServerInvite(m) => format!("{:?}", m.state()),
                Machine::ServerNonInvite(m) => format!("{:?}", m.state()),
            })
        }

        fn new_server(&mut self) -> TxId {
            let mut id = None;
            while let Some(e) = self.poll_event() {
                if let TxEvent::Request { tx: Some(t), .. } = e {
                    id = Some(t);
                }
            }
            id.unwrap()
        }
    }

    #[test]
    fn invite_client_walks_calling_proceeding_completed_terminated() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(TimerConfig::default());
        let r = req("INVITE", "z9hG4bKu1");
        let id = l.send_request(r.clone(), peer(Transport::Udp), t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Calling"));
        l.on_message(resp(&r, 180), peer(Transport::Udp), t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Proceeding"));
        l.on_message(resp(&r, 500), peer(Transport::Udp), t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Completed"));
        l.handle_timeout(t0 + Duration::from_secs(32));
        assert_eq!(l.state_of(id), None);

        let r = req("INVITE", "z9hG4bKu2");
        let id = l.send_request(r.clone(), peer(Transport::Udp), t0);
        l.on_message(resp(&r, 200), peer(Transport::Udp), t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Accepted"));
    }

    #[test]
    fn non_invite_client_walks_trying_proceeding_completed() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(TimerConfig::default());
        let r = req("REGISTER", "z9hG4bKu3");
        let id = l.send_request(r.clone(), peer(Transport::Udp), t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Trying"));
        l.on_message(resp(&r, 100), peer(Transport::Udp), t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Proceeding"));
        l.on_message(resp(&r, 401), peer(Transport::Udp), t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Completed"));
    }

    #[test]
    fn servers_walk_their_states() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(TimerConfig::default());
        let u = peer(Transport::Udp);
        let inv = req("INVITE", "z9hG4bKu4");
        l.on_message(inv.clone(), u, t0);
        let id = l.new_server();
        assert_eq!(l.state_of(id).as_deref(), Some("Proceeding"));
        l.respond(id, resp(&inv, 183), t0).unwrap();
        assert_eq!(l.state_of(id).as_deref(), Some("Proceeding"));
        l.respond(id, resp(&inv, 404), t0).unwrap();
        assert_eq!(l.state_of(id).as_deref(), Some("Completed"));
        let mut ack = req("ACK", "z9hG4bKu4");
        ack.set(HeaderName::To, "<sip:bob@example.com>;tag=t");
        l.on_message(ack, u, t0);
        assert_eq!(l.state_of(id).as_deref(), Some("Confirmed"));

        let inv = req("INVITE", "z9hG4bKu5");
        l.on_message(inv.clone(), u, t0);
        let id = l.new_server();
        l.respond(id, resp(&inv, 200), t0).unwrap();
        assert_eq!(l.state_of(id).as_deref(), Some("Accepted"));

        let bye = req("BYE", "z9hG4bKu6");
        l.on_message(bye.clone(), u, t0);
        let id = l.new_server();
        assert_eq!(l.state_of(id).as_deref(), Some("Trying"));
        l.respond(id, resp(&bye, 100), t0).unwrap();
        assert_eq!(l.state_of(id).as_deref(), Some("Proceeding"));
        l.respond(id, resp(&bye, 200), t0).unwrap();
        assert_eq!(l.state_of(id).as_deref(), Some("Completed"));
    }

    #[test]
    fn timers_of_a_removed_transaction_do_nothing_and_never_show_in_poll_timeout() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(TimerConfig::default());
        let a = l.send_request(req("OPTIONS", "z9hG4bKu7"), peer(Transport::Udp), t0);
        let later = t0 + Duration::from_millis(100);
        let b = l.send_request(req("OPTIONS", "z9hG4bKu8"), peer(Transport::Udp), later);
        while l.poll_transmit().is_some() {}
        while l.poll_event().is_some() {}
        l.transport_error(a, t0);
        // a's timers E (0.5 s) and F (32 s) are still queued, but only b's show.
        assert_eq!(l.poll_timeout(), Some(later + Duration::from_millis(500)));
        l.handle_timeout(t0 + Duration::from_millis(500));
        assert!(l.poll_transmit().is_none());
        assert!(matches!(l.poll_event(), Some(TxEvent::TransportError { tx }) if tx == a));
        assert!(matches!(l.poll_event(), Some(TxEvent::Terminated { tx }) if tx == a));
        assert!(l.poll_event().is_none());
        l.transport_error(b, later);
        assert_eq!(l.poll_timeout(), None);
        assert!(l.out.timers.peek().is_none(), "stale entries pruned");
        l.handle_timeout(t0 + Duration::from_secs(100));
        assert!(l.poll_transmit().is_none());
        assert_eq!(l.len(), 0);
        assert!(l.by_branch.is_empty() && l.by_legacy.is_empty() && l.clients.is_empty());
    }

    #[test]
    fn a_zero_t1_cannot_hang_handle_timeout() {
        let t0 = Instant::now();
        let mut l = TransactionLayer::new(TimerConfig {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            t4: Duration::ZERO,
        });
        l.send_request(req("INVITE", "z9hG4bKu9"), peer(Transport::Udp), t0);
        l.handle_timeout(t0 + Duration::from_secs(1));
        assert!(l.is_empty(), "64 ms of timer B passed");
        // A T1 too large for Instant arithmetic arms nothing rather than panicking.
        let mut l = TransactionLayer::new(TimerConfig {
            t1: Duration::MAX,
            t2: Duration::MAX,
            t4: Duration::MAX,
        });
        let id = l.send_request(req("INVITE", "z9hG4bKu10"), peer(Transport::Udp), t0);
        assert_eq!(l.poll_timeout(), None);
        l.transport_error(id, t0);
        assert!(l.is_empty());
    }
}
