//! The userspace forwarding path: one event-loop thread (mio) owns every relay socket.
//!
//! The control plane never touches a socket after handing it over: it sends [`Command`]s through a
//! crossbeam channel and wakes the loop. The loop reads each readable socket in batches with
//! `recvmmsg`, hands every datagram to the endpoint's per-stream core
//! ([`crate::stream_core`]: SRTP, latching, statistics, direction, transcoding; the same code the
//! AF_XDP workers run), and sends what the core forwards with one `sendmmsg` per output socket.
//! This module is the driver: sockets, batches, timers and the partner's addresses. Buffers,
//! iovecs and address arrays are allocated once per thread; the per-packet path does not
//! allocate, lock or read the clock (the clock is read once per batch).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::clock::now_ns;
use crate::handover::{EndpointState, StreamHandover};
use crate::latch::LatchConfig;
use crate::mmsg::{send_runs, sockaddr_to_std, std_to_sockaddr};
use crate::rtcp_report::RtcpReports;
use crate::srtp::{SrtpConfig, SrtpContext, SrtpKeys};
use crate::stats::EndpointCounters;
use crate::stream_core::{self, Datagram, Dropped, LossReport, StreamCore, Verdict};
use crate::transcode::DirectionPlan;

/// Identifies one side of one media stream: the relay socket(s) one endpoint sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u64);

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "endpoint#{}", self.0)
    }
}

/// How an endpoint forwards, as decided by SDP offer/answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The other side of the stream: media received here is sent on from the partner's socket.
    pub partner: Option<EndpointId>,
    pub latch: LatchConfig,
    /// This endpoint's SDP direction lets it send media (sendrecv/sendonly).
    pub sends: bool,
    /// This endpoint's SDP direction lets it receive media (sendrecv/recvonly).
    pub receives: bool,
    /// RTCP towards this endpoint goes to its RTP port (RFC 5761).
    pub rtcp_mux: bool,
    /// RTP clock rate of the stream, for jitter in milliseconds.
    pub clock_rate: u32,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            partner: None,
            latch: LatchConfig::default(),
            sends: true,
            receives: true,
            rtcp_mux: false,
            clock_rate: 8000,
        }
    }
}

/// A signalling event for an endpoint: its SDP addresses, and a new latching window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signalling {
    pub sdp_rtp: Option<SocketAddr>,
    pub sdp_rtcp: Option<SocketAddr>,
    /// Where the endpoint's signalling came from, when the front end knows: new media sources
    /// must come from this IP or the SDP's (latch rule 5).
    pub source_ip: Option<std::net::IpAddr>,
}

#[derive(Debug)]
pub enum Command {
    Add {
        id: EndpointId,
        rtp: std::net::UdpSocket,
        rtcp: Option<std::net::UdpSocket>,
        config: EndpointConfig,
        counters: Arc<EndpointCounters>,
        /// Where the engine publishes latching and reported loss.
        state: Arc<EndpointState>,
    },
    Configure {
        id: EndpointId,
        config: EndpointConfig,
        signalling: Option<Signalling>,
    },
    /// SRTP termination for an endpoint: `rx` decrypts what it sends, `tx` encrypts what it is
    /// sent. `None` = plain (or SRTP passed through untouched). Unchanged keys keep their
    /// contexts (ROC and replay state survive a session refresh).
    SetSrtp {
        id: EndpointId,
        rx: Option<SrtpKeys>,
        tx: Option<SrtpKeys>,
    },
    /// Transcoding of what this endpoint sends, on its way to the partner: `None` relays it as
    /// is. An unchanged plan keeps its codec state.
    SetTranscode {
        id: EndpointId,
        plan: Option<crate::transcode::DirectionPlan>,
    },
    /// Closes the endpoint's sockets.
    Remove {
        id: EndpointId,
    },
    /// Ends the endpoint's stream but keeps its sockets open and registered under `id` (the
    /// control plane's socket pool), for a later [`Command::Reuse`] or [`Command::Remove`] to
    /// name: what reaches them meanwhile is read and dropped, counted as `dropped_no_peer`.
    Pool {
        id: EndpointId,
    },
    /// A new endpoint `id` on the sockets of the pooled endpoint `pooled`: the same as an
    /// [`Command::Add`] of them, without a system call.
    Reuse {
        pooled: EndpointId,
        id: EndpointId,
        config: EndpointConfig,
        counters: Arc<EndpointCounters>,
        state: Arc<EndpointState>,
    },
    /// The endpoint's streams move to an AF_XDP worker: the engine answers on `reply` with
    /// where its contexts stand (the worker continues from there), goes on relaying what reaches
    /// its sockets for [`HANDOVER_GRACE`] (until the XDP entry is in place), then drops it,
    /// counted as `dropped_no_peer`, until [`Command::Resume`]. Unknown endpoints answer an
    /// empty handover.
    HandOver {
        id: EndpointId,
        reply: Sender<StreamHandover>,
    },
    /// The endpoint's streams are back from the workers: continue from `handover`, what they
    /// handed back (past its margins), and relay again.
    Resume {
        id: EndpointId,
        /// Boxed: replay lists make it the largest command by far.
        handover: Box<StreamHandover>,
    },
    Shutdown,
}

/// How long the engine goes on relaying an endpoint after [`Command::HandOver`]: what still
/// reaches its sockets while the control plane installs the worker flows and the XDP entry
/// (microseconds to a few milliseconds). At 50 packets/s that is at most 5 packets and one
/// RTCP compound, well inside the margins the worker skips
/// ([`crate::handover::TRANSCODE_SEQ_MARGIN`], [`crate::handover::SRTCP_INDEX_MARGIN`]).
pub const HANDOVER_GRACE: Duration = Duration::from_millis(100);

/// What the engine tells the control plane. Sent at most once per endpoint per event, never per
/// packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineEvent {
    /// The first packet from this endpoint was accepted.
    MediaStarted { id: EndpointId },
    /// The endpoint latched onto a new source address.
    Latched {
        id: EndpointId,
        rtcp: bool,
        addr: SocketAddr,
    },
    /// The endpoint sent RTCP with a sender report or report blocks, received at `at_ns` (the
    /// relay's monotonic clock): one per compound packet, every few seconds per endpoint.
    Rtcp {
        id: EndpointId,
        at_ns: u64,
        reports: RtcpReports,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("the forwarding engine thread has stopped; restart sluice")]
pub struct EngineGone;

/// The control plane's handle on the engine thread.
pub struct EngineHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// A wake is on its way, or the engine is lingering (see `Engine::run`): a command sent now
    /// needs no wake of its own (an offer sends several back to back; each eventfd write and wake-up cost
    /// ~8% of the ng path's CPU).
    awake: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl EngineHandle {
    /// Starts the engine thread. Events go to `events` (bounded: when full, they are dropped
    /// rather than stalling the packet path).
    pub fn spawn(events: Sender<EngineEvent>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let awake = Arc::new(AtomicBool::new(false));
        let engine_awake = awake.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-relay".into())
            .spawn(move || {
                #[cfg(test)]
                crate::test_alloc::track_this_thread();
                Engine::new(poll, rx, events, engine_awake).run()
            })?;
        Ok(Self {
            tx,
            waker,
            awake,
            thread: Some(thread),
        })
    }

    pub fn send(&self, cmd: Command) -> Result<(), EngineGone> {
        self.tx.send(cmd).map_err(|_| EngineGone)?;
        // The engine clears the flag before its last drain when it stops lingering: a command
        // queued before a swap that saw `true` is drained after that clear.
        if self.awake.swap(true, SeqCst) {
            return Ok(());
        }
        self.waker.wake().map_err(|_| EngineGone)
    }

    /// Asks for endpoint `id`'s per-stream state as its streams move to a worker (see
    /// [`Command::HandOver`]) and waits for the answer, at most a second: the engine answers
    /// between two batches.
    pub fn hand_over(&self, id: EndpointId) -> Result<StreamHandover, EngineGone> {
        let (reply, wait) = crossbeam_channel::bounded(1);
        self.send(Command::HandOver { id, reply })?;
        wait.recv_timeout(Duration::from_secs(1))
            .map_err(|_| EngineGone)
    }

    /// Stops the loop and waits for it: every relay socket is closed when this returns.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    /// Like [`EngineHandle::shutdown`] for a handle behind a reference; later sends fail.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.send(Command::Shutdown);
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")))
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

const WAKER: Token = Token(usize::MAX);
/// How long the engine goes on looking for commands without being woken (see [`Engine::run`]):
/// a command waits at most this long, and its packets meanwhile wait in their socket.
const LINGER: Duration = Duration::from_millis(1);
const BATCH: usize = 32;
/// Spare buffers for transcoder output sent in one round.
const SPARE: usize = 32;
/// Large enough for any RTP packet on a 1500-byte MTU path with room for jumbo-ish video;
/// longer datagrams are truncated by the kernel and dropped as malformed.
const BUF_LEN: usize = 2048;
const SRTP_TAILROOM: usize = crate::srtp::MAX_RTCP_OVERHEAD;

struct Endpoint {
    id: EndpointId,
    rtp: UdpSocket,
    rtcp: Option<UdpSocket>,
    cfg: EndpointConfig,
    /// Slot of `cfg.partner`, checked against its id before use (slots are reused).
    partner_slot: Option<usize>,
    /// The per-packet state of what this endpoint sends: SRTP receive context, latching,
    /// receive statistics, transcoder, counts of the current batch.
    core: StreamCore,
    counters: Arc<EndpointCounters>,
    state: Arc<EndpointState>,
    started: bool,
    /// Keys of `core.srtp_rx`.
    srtp_rx_keys: Option<SrtpKeys>,
    /// Protects what is sent to this endpoint (lent to the partner's batches) and its keys.
    srtp_tx: Option<Box<SrtpContext>>,
    srtp_tx_keys: Option<SrtpKeys>,
    /// Between [`Command::Pool`] and [`Command::Reuse`]: belongs to no call.
    pooled: bool,
    /// When the engine answered [`Command::HandOver`] (`clock::now_ns`), until
    /// [`Command::Resume`]: the stream belongs to a worker.
    handed_over_at: Option<u64>,
}

impl Endpoint {
    fn new(
        id: EndpointId,
        rtp: UdpSocket,
        rtcp: Option<UdpSocket>,
        config: EndpointConfig,
        counters: Arc<EndpointCounters>,
        state: Arc<EndpointState>,
        partner_slot: Option<usize>,
    ) -> Self {
        Endpoint {
            id,
            rtp,
            rtcp,
            cfg: config,
            partner_slot,
            core: {
                let mut core = StreamCore::default();
                core.latching = Some(stream_core::Latching::new(config.latch));
                core.observe = Some(stream_core::Observe::new(
                    config.clock_rate,
                    RTCP_REPORTS_PER_BATCH,
                ));
                core.sends = config.sends;
                core
            },
            counters,
            state,
            started: false,
            srtp_rx_keys: None,
            srtp_tx: None,
            srtp_tx_keys: None,
            pooled: false,
            handed_over_at: None,
        }
    }

    /// Where this endpoint's contexts stand, for a worker to continue from.
    fn handover(&self) -> StreamHandover {
        self.core.handover(self.srtp_tx.as_deref())
    }

    /// Continues from what the workers handed back.
    fn resume(&mut self, h: &StreamHandover) {
        self.handed_over_at = None;
        if let Err(e) = self.core.resume(h, self.srtp_tx.as_deref_mut()) {
            tracing::error!(id = %self.id, error = %e, "cannot rebuild the transcoder; dropping this endpoint's RTP");
        }
    }

    /// Handed over to a worker longer ago than [`HANDOVER_GRACE`]: its packets are dropped.
    fn moved_away(&self) -> bool {
        self.handed_over_at
            .is_some_and(|t| now_ns().saturating_sub(t) > HANDOVER_GRACE.as_nanos() as u64)
    }
}

/// RTCP reports kept per endpoint per batch; an endpoint sends one compound every few seconds.
const RTCP_REPORTS_PER_BATCH: usize = 4;

/// Keeps the transcoder (and its codec state) when the plan did not change; a new plan
/// continues the old one's sequence numbers (the SSRC is the stream's), else starts at random.
fn set_transcode(ep: &mut Endpoint, plan: Option<DirectionPlan>) {
    ep.core.transcode_broken = false;
    let Some(plan) = plan else {
        ep.core.transcoder = None;
        return;
    };
    if let Some(t) = &ep.core.transcoder
        && *t.plan() == plan
    {
        return;
    }
    let seq = ep
        .core
        .transcoder
        .as_ref()
        .map(|t| t.next_out_seq())
        .unwrap_or_else(|| {
            let mut seq = [0u8; 2];
            // A random first sequence number (RFC 3550 5.1); a failing RNG only makes it
            // predictable.
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seq);
            u16::from_be_bytes(seq)
        });
    match ep.core.start_transcoder(&plan, seq) {
        Ok(()) => {
            tracing::info!(id = %ep.id, input = ?plan.input, output = ?plan.output, "transcoding")
        }
        Err(e) => {
            tracing::error!(id = %ep.id, error = %e, "cannot build the transcoder; dropping this endpoint's RTP")
        }
    }
}

/// Keeps the context when the keys did not change, else builds a new one.
fn rekey(
    cur: &mut Option<SrtpKeys>,
    ctx: &mut Option<Box<SrtpContext>>,
    keys: Option<SrtpKeys>,
    id: EndpointId,
) {
    match keys {
        None => (*cur, *ctx) = (None, None),
        Some(k) if cur.as_ref() == Some(&k) && ctx.is_some() => {}
        Some(k) => match SrtpContext::new(k.profile, &k.master, SrtpConfig::default()) {
            Ok(c) => (*cur, *ctx) = (Some(k), Some(Box::new(c))),
            Err(e) => {
                // The session layer validated the key lengths: this is a bug, and this
                // endpoint's media must not flow unencrypted.
                tracing::error!(%id, error = %e, "cannot build SRTP context; dropping its media");
                (*cur, *ctx) = (None, None);
            }
        },
    }
}

/// What the packet loop needs of the partner, copied once per batch so that the receiving
/// endpoint can be borrowed mutably.
#[derive(Clone, Copy)]
struct Egress {
    slot: usize,
    /// Where packets to the partner go (the socket they leave from and the partner's latched
    /// address), whether they are SRTP-protected (its context is lent to the batch), and which
    /// of this endpoint's RTCP report blocks is about the partner's transcoded stream.
    core: stream_core::Egress<(RawFd, SocketAddr)>,
}

struct Engine {
    poll: Poll,
    rx: Receiver<Command>,
    /// See [`EngineHandle::send`].
    awake: Arc<AtomicBool>,
    events: Sender<EngineEvent>,
    slots: Vec<Option<Endpoint>>,
    free: Vec<usize>,
    by_id: HashMap<EndpointId, usize>,
    io: Box<BatchIo>,
    /// Slots of endpoints with a transcoder: their reorder windows expire on timers.
    timers: Vec<usize>,
}

impl Engine {
    fn new(
        poll: Poll,
        rx: Receiver<Command>,
        events: Sender<EngineEvent>,
        awake: Arc<AtomicBool>,
    ) -> Self {
        Self {
            poll,
            rx,
            awake,
            events,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            io: BatchIo::new(),
            timers: Vec::new(),
        }
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // After commands, the loop lingers: `awake` stays set, so that commands sent meanwhile
        // need no wake of their own (ng requests come every ~100 µs under load, each with a few
        // commands: one eventfd write and wake-up per request was ~15% of the control path's
        // CPU), and the channel is looked at every LINGER instead. A LINGER without a command
        // ends it.
        let mut lingering = false;
        loop {
            let mut timeout = self
                .next_timer()
                .map(|t| Duration::from_nanos(t.saturating_sub(now_ns())));
            if lingering {
                timeout = Some(timeout.map_or(LINGER, |t| t.min(LINGER)));
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // Commands before packets: a packet read below may have been sent after a command
            // that changes how it is handled (a new SDP address, new keys).
            if !self.rx.is_empty() {
                if !self.drain_commands() {
                    return Ok(());
                }
                lingering = true;
            } else if lingering && events.is_empty() {
                // A sender that saw the flag set before this store queued its command without
                // a wake: the drain after it finds the command.
                self.awake.store(false, SeqCst);
                lingering = false;
                if !self.drain_commands() {
                    return Ok(());
                }
            }
            self.run_timers();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let slot = ev.token().0 >> 1;
                let rtcp = ev.token().0 & 1 == 1;
                self.read_socket(slot, rtcp);
            }
        }
    }

    /// Returns false on shutdown.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Ok(cmd) => self.apply(cmd),
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Add {
                id,
                rtp,
                rtcp,
                config,
                counters,
                state,
            } => {
                if let Err(e) = self.add(id, rtp, rtcp, config, counters, state) {
                    tracing::error!(%id, error = %e, "cannot register relay socket; its media will not flow");
                }
            }
            Command::Configure {
                id,
                config,
                signalling,
            } => {
                let Some(&slot) = self.by_id.get(&id) else {
                    tracing::warn!(%id, "configure for an unknown endpoint ignored");
                    return;
                };
                let partner_slot = config.partner.and_then(|p| self.by_id.get(&p).copied());
                let ep = self.slots[slot]
                    .as_mut()
                    .expect("by_id points at a live slot");
                ep.cfg = config;
                ep.partner_slot = partner_slot;
                ep.core.sends = config.sends;
                if let Some(o) = ep.core.observe.as_mut() {
                    o.stats.set_clock_rate(config.clock_rate);
                }
                ep.counters.clock_rate.store(config.clock_rate, Relaxed);
                let Some(l) = ep.core.latching.as_mut() else {
                    return;
                };
                l.set_config(config.latch);
                if let Some(sig) = signalling {
                    let now = now_ns();
                    l.rtp.signalling(sig.sdp_rtp, now);
                    l.rtcp.signalling(sig.sdp_rtcp, now);
                    l.rtp.signalling_from(sig.source_ip);
                    l.rtcp.signalling_from(sig.source_ip);
                }
                // A new SDP address makes the latch forget the old source: the control plane
                // must not go on seeing (and kernelizing) it.
                ep.state.set_latched(false, l.rtp.latched());
                ep.state.set_latched(true, l.rtcp.latched());
            }
            Command::SetSrtp { id, rx, tx } => {
                let Some(&slot) = self.by_id.get(&id) else {
                    tracing::warn!(%id, "SRTP keys for an unknown endpoint ignored");
                    return;
                };
                let ep = self.slots[slot]
                    .as_mut()
                    .expect("by_id points at a live slot");
                rekey(&mut ep.srtp_rx_keys, &mut ep.core.srtp_rx, rx, id);
                rekey(&mut ep.srtp_tx_keys, &mut ep.srtp_tx, tx, id);
            }
            Command::SetTranscode { id, plan } => {
                let Some(&slot) = self.by_id.get(&id) else {
                    tracing::warn!(%id, "transcoding plan for an unknown endpoint ignored");
                    return;
                };
                let ep = self.slots[slot]
                    .as_mut()
                    .expect("by_id points at a live slot");
                set_transcode(ep, plan);
                self.timers.retain(|&s| s != slot);
                if ep.core.transcoder.is_some() && ep.handed_over_at.is_none() {
                    self.timers.push(slot);
                }
            }
            Command::Remove { id } => {
                let Some(slot) = self.by_id.remove(&id) else {
                    tracing::warn!(%id, "remove for an unknown endpoint ignored");
                    return;
                };
                if let Some(mut ep) = self.slots[slot].take() {
                    let _ = self.poll.registry().deregister(&mut ep.rtp);
                    if let Some(s) = ep.rtcp.as_mut() {
                        let _ = self.poll.registry().deregister(s);
                    }
                    // Dropping `ep` closes its sockets.
                }
                self.timers.retain(|&s| s != slot);
                self.free.push(slot);
            }
            Command::HandOver { id, reply } => {
                let handover = match self.by_id.get(&id) {
                    Some(&slot) => {
                        let ep = self.slots[slot]
                            .as_mut()
                            .expect("by_id points at a live slot");
                        ep.handed_over_at = Some(now_ns());
                        // The worker runs the reorder window from now on.
                        self.timers.retain(|&s| s != slot);
                        ep.handover()
                    }
                    None => {
                        tracing::warn!(%id, "handover of an unknown endpoint");
                        StreamHandover::default()
                    }
                };
                // The control plane may have given up waiting: nothing to do then.
                let _ = reply.send(handover);
            }
            Command::Resume { id, handover } => {
                let Some(&slot) = self.by_id.get(&id) else {
                    tracing::warn!(%id, "resume of an unknown endpoint ignored");
                    return;
                };
                let ep = self.slots[slot]
                    .as_mut()
                    .expect("by_id points at a live slot");
                ep.resume(&handover);
                self.timers.retain(|&s| s != slot);
                if ep.core.transcoder.is_some() {
                    self.timers.push(slot);
                }
            }
            Command::Pool { id } => self.pool(id),
            Command::Reuse {
                pooled,
                id,
                config,
                counters,
                state,
            } => {
                if let Err(e) = self.reuse(pooled, id, config, counters, state) {
                    tracing::error!(%id, error = %e, "cannot reuse a pooled endpoint; its media will not flow");
                }
            }
            Command::Shutdown => unreachable!("handled by drain_commands"),
        }
    }

    fn add(
        &mut self,
        id: EndpointId,
        rtp: std::net::UdpSocket,
        rtcp: Option<std::net::UdpSocket>,
        config: EndpointConfig,
        counters: Arc<EndpointCounters>,
        state: Arc<EndpointState>,
    ) -> io::Result<()> {
        if self.by_id.contains_key(&id) {
            return Err(io::Error::other(format!("{id} added twice")));
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        rtp.set_nonblocking(true)?;
        let mut rtp = UdpSocket::from_std(rtp);
        let registry = self.poll.registry();
        let reg = registry
            .register(&mut rtp, Token(slot << 1), Interest::READABLE)
            .and_then(|_| {
                rtcp.map(|s| {
                    s.set_nonblocking(true)?;
                    let mut s = UdpSocket::from_std(s);
                    registry.register(&mut s, Token(slot << 1 | 1), Interest::READABLE)?;
                    Ok(s)
                })
                .transpose()
            });
        let rtcp = match reg {
            Ok(r) => r,
            Err(e) => {
                self.free.push(slot);
                return Err(e);
            }
        };
        let partner_slot = config.partner.and_then(|p| self.by_id.get(&p).copied());
        self.slots[slot] = Some(Endpoint::new(
            id,
            rtp,
            rtcp,
            config,
            counters,
            state,
            partner_slot,
        ));
        self.by_id.insert(id, slot);
        Ok(())
    }

    /// See [`Command::Pool`]. Its stream state goes at once; its sockets stay registered, so
    /// that pooling and reusing cost no system call.
    fn pool(&mut self, id: EndpointId) {
        let Some(&slot) = self.by_id.get(&id) else {
            tracing::warn!(%id, "pooling of an unknown endpoint ignored");
            return;
        };
        let ep = self.slots[slot]
            .as_mut()
            .expect("by_id points at a live slot");
        ep.pooled = true;
        ep.cfg.partner = None;
        ep.partner_slot = None;
        ep.core.srtp_rx = None;
        ep.srtp_rx_keys = None;
        ep.srtp_tx = None;
        ep.srtp_tx_keys = None;
        ep.core.transcoder = None;
        self.timers.retain(|&s| s != slot);
    }

    /// See [`Command::Reuse`].
    fn reuse(
        &mut self,
        pooled: EndpointId,
        id: EndpointId,
        config: EndpointConfig,
        counters: Arc<EndpointCounters>,
        state: Arc<EndpointState>,
    ) -> io::Result<()> {
        if self.by_id.contains_key(&id) {
            return Err(io::Error::other(format!("{id} added twice")));
        }
        let slot = match self.by_id.get(&pooled) {
            Some(&slot) if self.slots[slot].as_ref().is_some_and(|ep| ep.pooled) => slot,
            _ => return Err(io::Error::other(format!("{pooled} is not pooled"))),
        };
        self.by_id.remove(&pooled);
        let old = self.slots[slot].take().expect("checked above");
        let partner_slot = config.partner.and_then(|p| self.by_id.get(&p).copied());
        let ep = Endpoint::new(id, old.rtp, old.rtcp, config, counters, state, partner_slot);
        self.slots[slot] = Some(ep);
        self.by_id.insert(id, slot);
        Ok(())
    }

    /// Reads and drops what reached a pooled endpoint's socket (its sockets are edge-triggered:
    /// left unread, they would never signal again).
    fn drop_strays(&mut self, slot: usize, fd: RawFd) {
        loop {
            match self.io.recv(fd) {
                Ok(n) => {
                    if let Some(ep) = self.slots[slot].as_ref() {
                        ep.counters.dropped_no_peer.add(n as u64);
                        // The pool hands out only sockets quiet for a while (a stream still
                        // arriving could latch the next call): the last stray's time says.
                        ep.counters.last_packet_ns.store(now_ns(), Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => tracing::debug!(error = %e, "recvmmsg on a pooled socket"),
            }
        }
    }

    fn egress(&self, ep: &Endpoint) -> Option<Egress> {
        let p = self.slots.get(ep.partner_slot?)?.as_ref()?;
        // A pooled partner keeps its id until reused: its stream ended all the same.
        if Some(p.id) != ep.cfg.partner || p.pooled {
            return None;
        }
        let rtp_fd = p.rtp.as_raw_fd();
        let (rtcp_fd, rtcp_peer) = if p.cfg.rtcp_mux {
            (rtp_fd, p.core.rtp_peer())
        } else {
            (
                p.rtcp.as_ref().map_or(rtp_fd, |s| s.as_raw_fd()),
                p.core.rtcp_peer(),
            )
        };
        Some(Egress {
            slot: ep.partner_slot?,
            core: stream_core::Egress {
                rtp: p.core.rtp_peer().map(|a| (rtp_fd, a)),
                rtcp: rtcp_peer.map(|a| (rtcp_fd, a)),
                receives: p.cfg.receives,
                srtp: p.srtp_tx.is_some(),
                // What this endpoint's RTCP says about the stream the partner's transcoder
                // sends it.
                loss_report: p
                    .core
                    .transcoder
                    .as_ref()
                    .map_or(LossReport::Ignore, |t| LossReport::About(t.plan().ssrc)),
            },
        })
    }

    /// The earliest deadline of any transcoder's reorder window.
    fn next_timer(&self) -> Option<u64> {
        self.timers
            .iter()
            .filter_map(|&s| {
                self.slots[s]
                    .as_ref()?
                    .core
                    .transcoder
                    .as_ref()?
                    .poll_timeout()
            })
            .min()
    }

    fn run_timers(&mut self) {
        if self.timers.is_empty() {
            return;
        }
        let now = now_ns();
        for i in 0..self.timers.len() {
            let slot = self.timers[i];
            let due = self.slots[slot]
                .as_ref()
                .and_then(|ep| ep.core.transcoder.as_ref()?.poll_timeout())
                .is_some_and(|t| t <= now);
            if due {
                self.pump_transcoder(slot, Some(now));
            }
        }
    }

    /// Sends what `slot`'s transcoder has ready (after running its timers when `timeout` is
    /// set), in rounds of the spare buffers.
    fn pump_transcoder(&mut self, slot: usize, timeout: Option<u64>) {
        loop {
            let Some(ep) = self.slots[slot].as_ref() else {
                return;
            };
            let egress = self.egress(ep);
            let mut tx = egress
                .filter(|e| e.core.srtp && e.slot != slot)
                .and_then(|e| self.slots[e.slot].as_mut())
                .and_then(|p| p.srtp_tx.take());
            let ep = self.slots[slot].as_mut().expect("checked above");
            let Some(t) = ep.core.transcoder.as_deref_mut() else {
                return;
            };
            if let Some(now) = timeout {
                t.handle_timeout(now);
            }
            let (queued, more) = drain_transcoded(&mut self.io, ep, egress, tx.as_deref_mut());
            if let (Some(e), Some(t)) = (egress, tx.take())
                && let Some(p) = self.slots[e.slot].as_mut()
            {
                p.srtp_tx = Some(t);
            }
            let (sent, sent_bytes, failed) = self.io.flush(queued);
            let c = &self.slots[slot].as_ref().expect("checked above").counters;
            c.forwarded.add(sent);
            c.forwarded_bytes.add(sent_bytes);
            c.send_errors.add(failed);
            if !more {
                return;
            }
        }
    }

    /// Reads `slot`'s socket until the kernel queue is empty (mio is edge-triggered).
    fn read_socket(&mut self, slot: usize, from_rtcp_port: bool) {
        loop {
            let Some(ep) = self.slots.get(slot).and_then(|s| s.as_ref()) else {
                return;
            };
            let fd = if from_rtcp_port {
                match &ep.rtcp {
                    Some(s) => s.as_raw_fd(),
                    None => return,
                }
            } else {
                ep.rtp.as_raw_fd()
            };
            // A worker's now: what still reaches this socket would be processed with contexts
            // the worker has moved past (an SRTCP index sent twice reuses keystream).
            if ep.pooled || ep.moved_away() {
                return self.drop_strays(slot, fd);
            }
            let egress = self.egress(ep);
            let n = match self.io.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP port unreachable from an earlier send surfaces here as ECONNREFUSED
                    // on Linux; it is no reason to stop reading.
                    tracing::debug!(error = %e, "recvmmsg");
                    continue;
                }
            };
            let now = now_ns();
            // The partner's SRTP context is lent to this batch: both endpoints are borrowed
            // mutably, and they are never the same slot.
            let mut tx = egress
                .filter(|e| e.core.srtp && e.slot != slot)
                .and_then(|e| self.slots[e.slot].as_mut())
                .and_then(|p| p.srtp_tx.take());
            let ep = self.slots[slot].as_mut().expect("checked above");
            let queued = process_batch(
                &mut self.io,
                ep,
                egress,
                tx.as_deref_mut(),
                from_rtcp_port,
                n,
                now,
            );
            if !ep.started && ep.counters.packets.load(Relaxed) > 0 {
                ep.started = true;
                let _ = self
                    .events
                    .try_send(EngineEvent::MediaStarted { id: ep.id });
            }
            let reports = ep.core.observe.as_mut().map(|o| o.reports.drain(..));
            for (at_ns, reports) in reports.into_iter().flatten() {
                let _ = self.events.try_send(EngineEvent::Rtcp {
                    id: ep.id,
                    at_ns,
                    reports,
                });
            }
            let loss = ep.state.reported_loss_pct();
            if let Some(e) = egress
                && let Some(p) = self.slots[e.slot].as_mut()
            {
                if let Some(t) = tx.take() {
                    p.srtp_tx = Some(t);
                }
                // What this endpoint reports losing of the stream the partner's transcoder
                // sends it sets that encoder's FEC.
                if let (Some(pct), Some(t)) = (loss, p.core.transcoder.as_deref_mut()) {
                    t.set_expected_loss(pct);
                }
            }
            let (sent, sent_bytes, failed) = self.io.flush(queued);
            let ep = self.slots[slot].as_ref().expect("checked above");
            let c = &ep.counters;
            c.forwarded.add(sent);
            c.forwarded_bytes.add(sent_bytes);
            c.send_errors.add(failed);
            if ep.core.transcoder.is_some() {
                self.pump_transcoder(slot, None);
            }
            if n < BATCH {
                return;
            }
        }
    }
}

/// Runs the per-stream core over a received batch and queues what is to be forwarded.
/// Returns the number of packets queued for sending.
fn process_batch(
    io: &mut BatchIo,
    ep: &mut Endpoint,
    egress: Option<Egress>,
    mut srtp_tx: Option<&mut SrtpContext>,
    from_rtcp_port: bool,
    n: usize,
    now: u64,
) -> usize {
    let eg = egress.map(|e| e.core);
    let core = &mut ep.core;
    let mut queued = 0;
    for i in 0..n {
        let len = io.rx_len(i);
        let src = io.rx_src(i);
        if src.is_none() || io.rx_truncated(i) {
            core.tally.count_drop(Dropped::Malformed);
            continue;
        }
        let d = Datagram {
            buf: &mut io.bufs[i],
            len,
            src,
            now_ns: now,
            rtcp_port: from_rtcp_port,
        };
        match core.receive(d, eg.as_ref(), srtp_tx.as_deref_mut()) {
            Verdict::Forward {
                len,
                to: (fd, dest),
                ..
            } => {
                io.queue(queued, i, len, fd, dest);
                queued += 1;
            }
            // Transcoder input: its output leaves from spare buffers (`Engine::pump_transcoder`).
            Verdict::Transcoder { .. } => {}
            Verdict::Drop(Dropped::Protect(e)) => {
                tracing::debug!(error = %e, "SRTP protect failed");
            }
            Verdict::Drop(_) => {}
        }
    }
    for rtcp in [false, true] {
        if let Some(addr) = core.take_latched(rtcp) {
            ep.state.set_latched(rtcp, Some(addr));
            tracing::info!(id = %ep.id, %addr, rtcp, "latched");
        }
    }
    if let Some(f) = core.take_reported_loss() {
        ep.state.report_loss(f);
    }
    let c = &*ep.counters;
    let accepted = core.tally.packets > 0;
    core.tally.flush_into(c);
    if accepted {
        c.last_packet_ns.store(now, Relaxed);
        if let Some(stats) = core.observe.as_ref().map(|o| &o.stats) {
            if let Some(ssrc) = stats.ssrc() {
                c.ssrc.store(ssrc, Relaxed);
            }
            c.rtp_lost.store(stats.lost(), Relaxed);
            c.jitter_ts.store(stats.jitter_ts(), Relaxed);
        }
    }
    queued
}

/// Pulls the transcoder's ready packets into the spare buffers and queues them for sending
/// (SRTP-protected for the partner where due). Returns the number queued, and whether the spare
/// buffers ran out before the transcoder did.
fn drain_transcoded(
    io: &mut BatchIo,
    ep: &mut Endpoint,
    egress: Option<Egress>,
    mut srtp_tx: Option<&mut SrtpContext>,
) -> (usize, bool) {
    let eg = egress.map(|e| e.core);
    let core = &mut ep.core;
    if core.transcoder.is_none() {
        return (0, false);
    }
    let mut queued = 0;
    let mut more = true;
    while queued < SPARE {
        let b = BATCH + queued;
        let room = BUF_LEN - SRTP_TAILROOM;
        match core.pull(&mut io.bufs[b], room, eg.as_ref(), srtp_tx.as_deref_mut()) {
            None => {
                more = false;
                break;
            }
            Some(Verdict::Forward {
                len,
                to: (fd, dest),
                ..
            }) => {
                io.queue(queued, b, len, fd, dest);
                queued += 1;
            }
            Some(Verdict::Drop(Dropped::Protect(e))) => {
                tracing::debug!(error = %e, "SRTP protect failed");
            }
            Some(_) => {}
        }
    }
    core.tally.flush_into(&ep.counters);
    if let Some(t) = core.transcoder.as_deref() {
        ep.counters
            .publish_transcoder(t, &mut core.transcode_published);
    }
    (queued, more)
}

/// Preallocated `recvmmsg`/`sendmmsg` state. Boxed once so the raw pointers inside the message
/// headers stay valid.
/// Buffers `BATCH..BATCH + SPARE` hold packets that were not received as such (transcoder
/// output); every buffer can be queued for sending.
struct BatchIo {
    bufs: [[u8; BUF_LEN]; BATCH + SPARE],
    rx_addrs: [libc::sockaddr_storage; BATCH],
    rx_iov: [libc::iovec; BATCH],
    rx_hdrs: [libc::mmsghdr; BATCH],
    tx_addrs: [libc::sockaddr_storage; BATCH + SPARE],
    tx_iov: [libc::iovec; BATCH + SPARE],
    tx_hdrs: [libc::mmsghdr; BATCH + SPARE],
    tx_fd: [RawFd; BATCH + SPARE],
}

impl BatchIo {
    fn new() -> Box<Self> {
        // SAFETY: every field is plain old data for which all-zero bytes are valid.
        let mut io: Box<Self> = unsafe { Box::new_zeroed().assume_init() };
        for i in 0..BATCH + SPARE {
            let iov = &mut io.tx_iov[i] as *mut libc::iovec;
            let name = &mut io.tx_addrs[i] as *mut libc::sockaddr_storage;
            let h = &mut io.tx_hdrs[i].msg_hdr;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_name = name.cast();
        }
        for i in 0..BATCH {
            // Room after the datagram for the SRTP/SRTCP tag and index added by protect.
            io.rx_iov[i] = libc::iovec {
                iov_base: io.bufs[i].as_mut_ptr().cast(),
                iov_len: BUF_LEN - SRTP_TAILROOM,
            };
            let iov = &mut io.rx_iov[i] as *mut libc::iovec;
            let name = &mut io.rx_addrs[i] as *mut libc::sockaddr_storage;
            let h = &mut io.rx_hdrs[i].msg_hdr;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_name = name.cast();
        }
        io
    }

    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.rx_hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: the headers point into buffers owned by `self`, which outlives the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.rx_hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn rx_len(&self, i: usize) -> usize {
        (self.rx_hdrs[i].msg_len as usize).min(BUF_LEN - SRTP_TAILROOM)
    }

    fn rx_truncated(&self, i: usize) -> bool {
        self.rx_hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    fn rx_src(&self, i: usize) -> Option<SocketAddr> {
        sockaddr_to_std(&self.rx_addrs[i], self.rx_hdrs[i].msg_hdr.msg_namelen)
    }

    /// Queues received buffer `rx` for sending as message `slot`, without copying the payload.
    fn queue(&mut self, slot: usize, rx: usize, len: usize, fd: RawFd, dest: SocketAddr) {
        self.tx_iov[slot] = libc::iovec {
            iov_base: self.bufs[rx].as_mut_ptr().cast(),
            iov_len: len,
        };
        self.tx_hdrs[slot].msg_hdr.msg_namelen = std_to_sockaddr(dest, &mut self.tx_addrs[slot]);
        self.tx_fd[slot] = fd;
    }

    /// Sends queued messages, one `sendmmsg` per run of equal output sockets. A full socket buffer
    /// drops the rest of that run rather than blocking the loop. Returns (sent, sent bytes, failed).
    fn flush(&mut self, queued: usize) -> (u64, u64, u64) {
        let mut bytes = 0u64;
        let iov = &self.tx_iov;
        let (sent, failed) = send_runs(&mut self.tx_hdrs[..queued], &self.tx_fd[..queued], |k| {
            bytes += iov[k].iov_len as u64
        });
        (sent, bytes, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::SrtpProfile;

    /// The userspace path relaying plain RTP into SRTP, through real sockets: once warm, the
    /// engine thread allocates nothing per packet. (The only test in this binary that starts
    /// an engine thread, so the tracked count is this engine's.)
    #[test]
    fn the_engine_relays_rtp_into_srtp_without_allocating() {
        use std::net::UdpSocket;
        let (ev_tx, _ev_rx) = crossbeam_channel::bounded(64);
        let engine = EngineHandle::spawn(ev_tx).unwrap();
        let bind = || UdpSocket::bind("127.0.0.1:0").unwrap();
        let (ra, rb, a, b) = (bind(), bind(), bind(), bind());
        let ra_addr = ra.local_addr().unwrap();
        for (id, partner, sock) in [(1, 2, ra), (2, 1, rb)] {
            engine
                .send(Command::Add {
                    id: EndpointId(id),
                    rtp: sock,
                    rtcp: None,
                    config: EndpointConfig {
                        partner: Some(EndpointId(partner)),
                        ..Default::default()
                    },
                    counters: Arc::default(),
                    state: Arc::default(),
                })
                .unwrap();
        }
        // Partners known now that both exist; each side's SDP address is its socket.
        for (id, partner, peer) in [(1, 2, &a), (2, 1, &b)] {
            engine
                .send(Command::Configure {
                    id: EndpointId(id),
                    config: EndpointConfig {
                        partner: Some(EndpointId(partner)),
                        ..Default::default()
                    },
                    signalling: Some(Signalling {
                        sdp_rtp: Some(peer.local_addr().unwrap()),
                        ..Signalling::default()
                    }),
                })
                .unwrap();
        }
        let keys = SrtpKeys {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            master: (0..30).collect(),
        };
        engine
            .send(Command::SetSrtp {
                id: EndpointId(2),
                rx: None,
                tx: Some(keys.clone()),
            })
            .unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut pkt = [0u8; 172];
        pkt[0] = 0x80;
        pkt[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let mut buf = [0u8; 2048];
        let mut relay = |seq: u16| {
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            a.send_to(&pkt, ra_addr).unwrap();
            let (n, _) = b.recv_from(&mut buf).expect("relayed packet");
            assert_eq!(n, 182, "RTP 172 + 10-byte tag");
        };
        for seq in 0..300 {
            relay(seq);
        }
        let before = crate::test_alloc::tracked_allocations();
        for seq in 300..2300 {
            relay(seq);
        }
        let allocated = crate::test_alloc::tracked_allocations() - before;
        assert_eq!(allocated, 0, "engine allocations for 2,000 relayed packets");
        engine.shutdown().unwrap();
    }

    fn endpoint() -> Endpoint {
        let sock = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Endpoint::new(
            EndpointId(1),
            sock,
            None,
            EndpointConfig::default(),
            Arc::default(),
            Arc::default(),
            None,
        )
    }

    fn pcmu_to_pcma() -> crate::transcode::DirectionPlan {
        use crate::transcode::{Codec, DirectionPlan, OpusParams};
        DirectionPlan {
            input: Codec::Pcmu,
            input_pt: 0,
            output: Codec::Pcma,
            output_pt: 8,
            output_ptime_ms: 20,
            opus: OpusParams::default(),
            dtmf: None,
            cn_pts: vec![],
            ssrc: 7,
        }
    }

    /// The engine hands a worker exactly where its contexts stand, and continues from what the
    /// worker hands back: past the worker's SRTP index (a wrap the engine never saw) and past
    /// the worker's transcoder sequence numbers, by the margins.
    #[test]
    fn an_endpoint_hands_over_its_state_and_resumes_from_the_workers() {
        let key = vec![7u8; 30];
        let profile = SrtpProfile::AesCm128HmacSha1_80;
        let new = || SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap();
        let rtp = |seq: u16| {
            let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd];
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p.extend([0u8; 160]);
            p.resize(172 + 64, 0);
            p
        };
        let (mut sender, mut worker) = (new(), new());
        let mut ep = endpoint();
        ep.core.srtp_rx = Some(Box::new(new()));
        set_transcode(&mut ep, Some(pcmu_to_pcma()));
        let seq0 = ep.core.transcoder.as_ref().unwrap().next_out_seq();
        // The engine saw packets 65530..=65533 (ROC 0).
        for seq in 65530..=65533 {
            let mut p = rtp(seq);
            let n = sender.protect_rtp(&mut p, 172).unwrap();
            ep.core
                .srtp_rx
                .as_mut()
                .unwrap()
                .unprotect_rtp(&mut p, n)
                .unwrap();
        }
        let given = ep.handover();
        assert_eq!(given.srtp_rx.unwrap().rtp_index(), Some(65533));
        assert_eq!(given.srtp_tx, None, "nothing is protected towards it");
        assert_eq!(given.transcode_next_seq, Some(seq0));
        // The worker continues from it and sees the stream wrap (ROC 1) and go on to 40000.
        given.resume_srtp(&mut worker, false);
        // A copy of a packet the engine accepted before the move is a replay for the worker.
        let mut early = rtp(65531);
        let mut s2 = new();
        for seq in 65530..=65531 {
            early = rtp(seq);
            let n = s2.protect_rtp(&mut early, 172).unwrap();
            early.truncate(n);
        }
        let n = early.len();
        early.resize(n + 64, 0);
        assert!(
            matches!(
                worker.unprotect_rtp(&mut early, n),
                Err(crate::srtp::SrtpError::Replayed { .. })
            ),
            "accepted by the engine, refused by the worker"
        );
        let mut accepted = Vec::new();
        for seq in (65534..=65535).chain((0..=40_000).step_by(1000)) {
            let mut p = rtp(seq);
            let n = sender.protect_rtp(&mut p, 172).unwrap();
            accepted.push((p.clone(), n));
            worker.unprotect_rtp(&mut p, n).unwrap();
        }
        let back = StreamHandover {
            srtp_rx: worker.handover(),
            srtp_tx: None,
            transcode_next_seq: Some(given.transcode_seq_start().unwrap().wrapping_add(40)),
        };
        // Before resuming the engine's context is stale: ROC 0 is closer to what it saw.
        let mut p = rtp(40_002);
        let n = sender.protect_rtp(&mut p, 172).unwrap();
        let mut copy = p.clone();
        let rx = ep.core.srtp_rx.as_mut().unwrap();
        assert!(rx.unprotect_rtp(&mut copy, n).is_err(), "stale ROC");
        ep.handed_over_at = Some(now_ns());
        ep.resume(&back);
        assert_eq!(ep.handed_over_at, None, "relaying again");
        let rx = ep.core.srtp_rx.as_mut().unwrap();
        assert_eq!(rx.unprotect_rtp(&mut p, n), Ok(172));
        assert_eq!(rx.rtp_state(0xaabb_ccdd), Some((1, 40_002)));
        // And what the worker accepted is a replay for the engine.
        let (mut last, n) = accepted.pop().unwrap();
        assert!(matches!(
            rx.unprotect_rtp(&mut last, n),
            Err(crate::srtp::SrtpError::Replayed { .. })
        ));
        for (mut p, n) in accepted {
            assert!(rx.unprotect_rtp(&mut p, n).is_err(), "replayed or too old");
        }
        assert_eq!(
            ep.core.transcoder.as_ref().unwrap().next_out_seq(),
            seq0.wrapping_add(40 + 2 * crate::handover::TRANSCODE_SEQ_MARGIN),
            "past the worker's numbers, by the margin"
        );
        // Nothing handed back (the stream never reached a worker): the engine goes on as it was.
        let before = ep.handover();
        ep.resume(&StreamHandover::default());
        assert_eq!(ep.handover(), before);
    }

    /// After the grace period a handed-over endpoint's packets are the worker's to process.
    #[test]
    fn a_handed_over_endpoint_stops_relaying_after_the_grace_period() {
        let mut ep = endpoint();
        assert!(!ep.moved_away());
        ep.handed_over_at = Some(now_ns());
        assert!(!ep.moved_away(), "within the grace period");
        ep.handed_over_at = Some(now_ns() - HANDOVER_GRACE.as_nanos() as u64 - 1);
        assert!(ep.moved_away());
        ep.resume(&StreamHandover::default());
        assert!(!ep.moved_away());
    }

    /// A changed plan keeps the stream's sequence numbers going; an unchanged one keeps the
    /// transcoder itself.
    #[test]
    fn a_new_transcoding_plan_continues_the_sequence_numbers() {
        let mut ep = endpoint();
        set_transcode(&mut ep, Some(pcmu_to_pcma()));
        let seq = ep.core.transcoder.as_ref().unwrap().next_out_seq();
        let mut plan = pcmu_to_pcma();
        plan.output_ptime_ms = 40;
        set_transcode(&mut ep, Some(plan.clone()));
        let t = ep.core.transcoder.as_ref().unwrap();
        assert_eq!((t.next_out_seq(), t.plan()), (seq, &plan));
        set_transcode(&mut ep, None);
        assert!(ep.core.transcoder.is_none());
    }

    /// While a stream moves between the engine and a worker, both count SRTP failures of the
    /// same leg (the old owner drains what its socket still holds, the new one gets the rest):
    /// no increment may be lost. Two threads hammer the same counters, one the way the engine
    /// counts (a batch's tally flushed at its end) and one the way a worker does (flushed per
    /// packet), and every failure must be there.
    #[test]
    fn srtp_failures_counted_by_the_engine_and_a_worker_at_once_are_all_kept() {
        use crate::srtp::SrtpError;
        const N: u64 = 4_000_000;
        let c = Arc::new(EndpointCounters::default());
        let start = Arc::new(std::sync::Barrier::new(2));
        let worker = {
            let (c, start) = (c.clone(), start.clone());
            std::thread::spawn(move || {
                let mut core = StreamCore::default();
                start.wait();
                for i in 0..N {
                    let e = if i % 2 == 0 {
                        SrtpError::AuthFailed { ssrc: 1 }
                    } else {
                        SrtpError::Replayed { ssrc: 1, index: i }
                    };
                    core.tally.count_drop(Dropped::Unprotect(e));
                    crate::worker::srtp_transform::flush(&mut core, Some(&c));
                }
            })
        };
        let mut core = StreamCore::default();
        start.wait();
        for i in 0..N {
            let e = if i % 2 == 0 {
                SrtpError::AuthFailed { ssrc: 1 }
            } else {
                SrtpError::TooOld { ssrc: 1, index: i }
            };
            core.tally.count_drop(Dropped::Unprotect(e));
            if i % BATCH as u64 == BATCH as u64 - 1 {
                core.tally.flush_into(&c);
            }
        }
        core.tally.flush_into(&c);
        worker.join().unwrap();
        let auth = c.srtp_auth_failures.load(Relaxed);
        let replayed = c.srtp_replayed.load(Relaxed);
        assert_eq!(
            (auth, replayed),
            (N, N),
            "lost {} authentication failures and {} replays of {} each",
            N - auth,
            N - replayed,
            N
        );
    }
}
