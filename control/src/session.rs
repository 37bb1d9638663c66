//! The media-session API: calls, their legs and media streams, driven by offer/answer/delete.
//!
//! Every front end (gRPC today; the ng protocol and the B2BUA later) calls [`Sessions`]. It owns
//! the port allocator and the calls, turns SDP into forwarding decisions, and tells the data plane
//! what to do through the [`MediaPlane`] seam, so it is tested here without a relay thread.
//!
//! Model: a call has two sides, 0 = the caller (from-tag of the first offer) and 1 = the callee.
//! Each m= line is a [`Stream`] with one relay endpoint per side: the socket(s) *that side's*
//! endpoint sends to. Media from side X's endpoint is sent on from side Y's socket to Y's peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_relay::clock::now_ns;
use sluice_relay::engine::{
    Command, EndpointConfig, EndpointId, EngineEvent, EngineGone, EngineHandle, Signalling,
};
use sluice_relay::latch::{LatchConfig, LatchMode};
use sluice_relay::stats::EndpointCounters;
use tokio::sync::broadcast;

use sluice_relay::xdp::{FlowCounters, FlowValue};

use crate::codecs::{
    self, CodecError, CodecOptions, Decision, DirectionPlan, OfferCodecs, TranscodeMode,
};
use crate::kernel::{FlowIds, KernelPath, WorkerFlowSpec};
use crate::port_alloc::{DEFAULT_MAX_TRIES, PortAllocError, PortAllocator};
use crate::proto;
use crate::sdes::{OFFERED, SdesError, SdesKey};
use crate::sdp::{Direction, Media, Sdp, SdpError};

/// Where the session layer's commands go: the relay engine, or a recorder in tests.
pub trait MediaPlane: Send {
    fn send(&mut self, cmd: Command) -> Result<(), EngineGone>;
    /// Closes every socket and stops the data plane; later sends fail.
    fn stop(&mut self) {}
}

impl MediaPlane for EngineHandle {
    fn send(&mut self, cmd: Command) -> Result<(), EngineGone> {
        EngineHandle::send(self, cmd)
    }
    fn stop(&mut self) {
        if let Err(e) = EngineHandle::stop(self) {
            tracing::error!(error = %e, "relay thread ended with an error");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("bad SDP: {0}")]
    BadSdp(#[from] SdpError),
    #[error("SDES: {0}")]
    Sdes(#[from] SdesError),
    #[error("{0}")]
    BadRequest(String),
    #[error("call '{0}' not found (deleted, timed out, or never offered)")]
    NotFound(String),
    #[error("{0}")]
    NoPorts(#[from] PortAllocError),
    #[error("{0}")]
    Engine(#[from] EngineGone),
    #[error("sluice is shutting down and takes no new calls")]
    ShuttingDown,
    /// The answer's codec can be neither relayed nor transcoded to the offerer's (a SIP B2BUA
    /// answers 488).
    #[error("{0}")]
    NoCodecBridge(String),
}

impl From<CodecError> for SessionError {
    fn from(e: CodecError) -> SessionError {
        match e {
            CodecError::BadOption(m) => SessionError::BadRequest(m),
            CodecError::NoBridge(m) => SessionError::NoCodecBridge(m),
        }
    }
}

fn bad(msg: impl Into<String>) -> SessionError {
    SessionError::BadRequest(msg.into())
}

impl SessionError {
    /// Says which m= line (0-based `i`) the error is about.
    fn in_line(self, i: usize) -> SessionError {
        match self {
            SessionError::NoCodecBridge(m) => {
                SessionError::NoCodecBridge(format!("m= line {}: {m}", i + 1))
            }
            SessionError::BadRequest(m) => {
                SessionError::BadRequest(format!("m= line {}: {m}", i + 1))
            }
            e => e,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// The family of the SDP the request carries.
    #[default]
    Auto,
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtcpMuxMode {
    /// Pass through what the endpoint offered.
    #[default]
    Default,
    /// Offer rtcp-mux in the returned SDP even if the incoming one lacks it.
    Offer,
    /// Never use rtcp-mux in the returned SDP.
    Strip,
    /// Reject an incoming SDP whose media lack a=rtcp-mux.
    Require,
}

/// What the SDP returned by a request does about SRTP (see `Srtp` in sluice.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpMode {
    #[default]
    Default,
    Offer,
    Strip,
    Require,
}

/// SRTP as seen from one side's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SideCrypto {
    #[default]
    Plain,
    /// SRTP relayed untouched between two SRTP endpoints.
    Passthrough,
    /// sluice decrypts what the endpoint sends with `rx` (its key) and encrypts what it receives
    /// with `tx` (sluice's key, given to it in SDP).
    Terminated { rx: SdesKey, tx: SdesKey },
}

/// Per-request options, applying to the side whose SDP the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegOptions {
    /// Offer only: the family of the relay address written into the returned SDP.
    pub family: Family,
    pub strict_source: bool,
    pub latching: LatchMode,
    pub rtcp_mux: RtcpMuxMode,
    /// Overrides the direction of every media section of this side (hold).
    pub direction: Option<Direction>,
    pub srtp: SrtpMode,
    /// Offer only (ignored in answers): transcoding mode and codec lists (see `codecs`).
    pub codecs: CodecOptions,
}

impl Default for LegOptions {
    fn default() -> Self {
        Self {
            family: Family::Auto,
            strict_source: true,
            latching: LatchMode::Heuristic,
            rtcp_mux: RtcpMuxMode::Default,
            direction: None,
            srtp: SrtpMode::Default,
            codecs: CodecOptions::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub media_ips: Vec<IpAddr>,
    pub port_low: u16,
    pub port_high: u16,
    pub timeout: Duration,
    /// The transcoding mode of offers that do not set one.
    pub transcode: TranscodeMode,
    /// sluice's Opus encoder: complexity (0-10) and bitrate (bit/s; a receiver's
    /// `maxaveragebitrate` caps it).
    pub opus_complexity: u8,
    pub opus_bitrate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    CallCreated,
    MediaStarted,
    TimedOut,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEvent {
    pub kind: EventKind,
    pub call_id: String,
    pub tag: String,
    pub unix_ms: u64,
    pub detail: String,
}

struct Side {
    endpoint: EndpointId,
    local_ip: IpAddr,
    rtp_port: u16,
    /// None when only one port was reserved (rtcp-mux required).
    rtcp_port: Option<u16>,
    counters: Arc<EndpointCounters>,
    sdp_rtp: Option<SocketAddr>,
    sdp_rtcp: Option<SocketAddr>,
    direction: Direction,
    /// RTCP towards this side's endpoint goes to its RTP port.
    rtcp_mux: bool,
    /// The SDP sent to this side offered rtcp-mux.
    offered_mux: bool,
    latch: LatchConfig,
    clock_rate: u32,
    /// Kernel counters of this side's flows that were removed already.
    kernel_base: FlowCounters,
    crypto: SideCrypto,
    /// Keys offered to this side, one per suite, until its answer picks one.
    offered_keys: Vec<SdesKey>,
    /// Duplicates of this side's relay sockets, kept only while AF_XDP workers run: a worker
    /// sends what it relays towards this side's endpoint through a clone of them.
    sockets: Option<SideSockets>,
    /// The codec this side sends and receives, as SDP names it ("" before the answer).
    codec: String,
}

struct SideSockets {
    rtp: UdpSocket,
    rtcp: Option<UdpSocket>,
}

/// One XDP flow entry: packets from side `side`'s endpoint arriving at `local`.
#[derive(Debug, Clone, Copy)]
struct KernelFlow {
    side: usize,
    local: SocketAddr,
    flow_id: u32,
    /// A WORKER entry: XDP hands the packets to an AF_XDP worker, which holds a context for
    /// `local` (SRTP termination).
    worker: bool,
}

struct Stream {
    media: String,
    sides: [Side; 2],
    /// Rejected by the answer (port 0): sockets stay until the call ends, nothing is forwarded.
    disabled: bool,
    /// Installed XDP flows; empty while the stream is on the userspace path.
    kernel: Vec<KernelFlow>,
    /// Latched RTP sources of both sides and when they were first seen like that.
    settle: Option<([SocketAddr; 2], u64)>,
    /// Installing failed since the last signalling event: do not retry until the next one.
    kernel_failed: bool,
    /// What the last offer's codec negotiation left to decide on its answer; `None` when it
    /// did not negotiate (not audio, transcoding off, SRTP passed through).
    codecs: Option<OfferCodecs>,
    transcode: Option<StreamTranscode>,
    /// sluice's own SSRC for what it sends when transcoding, by the side whose packets it
    /// transcodes: drawn once, so re-offers do not make the far end see a new source.
    ssrcs: [u32; 2],
}

/// A transcoded stream, by side.
struct StreamTranscode {
    /// Codec and payload type each side sends and receives.
    formats: [codecs::Format; 2],
    /// For packets from each side's endpoint.
    plans: [DirectionPlan; 2],
}

struct Call {
    call_id: String,
    /// [caller's tag, callee's tag]; the callee's is empty until the first answer.
    tags: [String; 2],
    streams: Vec<Stream>,
    created_unix_ms: u64,
    last_signal_ns: u64,
    /// The side whose offer awaits an answer.
    pending_offer: Option<usize>,
    /// Per receiving side: the SDP text last received from the other side and the o= version we
    /// gave its rewrite, so an unchanged re-offer keeps the version (RFC 3264 8).
    sdp_versions: [Option<(String, u64)>; 2],
    media_started: [bool; 2],
}

#[derive(Default)]
struct Totals {
    calls: u64,
    timed_out: u64,
    packets: u64,
    bytes: u64,
    dropped: u64,
    kernel_packets: u64,
}

struct State {
    cfg: SessionConfig,
    ports: PortAllocator,
    plane: Box<dyn MediaPlane>,
    calls: HashMap<String, Call>,
    by_endpoint: HashMap<EndpointId, (String, usize)>,
    next_endpoint: u64,
    totals: Totals,
    shutting_down: bool,
    kernel: Option<Box<dyn KernelPath>>,
    flow_ids: FlowIds,
}

pub struct Sessions {
    state: Mutex<State>,
    events: broadcast::Sender<CallEvent>,
    /// Turns true when shutdown begins, so that event streams end and clients let go.
    closing: tokio::sync::watch::Sender<bool>,
    started: std::time::Instant,
}

/// A unix-ms wall-clock time for a monotonic `now_ns()` reading.
pub fn unix_ms_of(mono_ns: u64) -> u64 {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let age_ms = now_ns().saturating_sub(mono_ns) / 1_000_000;
    now_unix.saturating_sub(age_ms)
}

fn unix_ms_now() -> u64 {
    unix_ms_of(now_ns())
}

/// RTP clock rate of a media section's first (preferred) payload type: RFC 3551 table 4 for
/// static types, a=rtpmap for dynamic ones.
fn clock_rate(sdp: &Sdp, i: usize) -> u32 {
    let m = &sdp.media[i];
    let Some(pt) = m.fmts.first().and_then(|f| f.parse::<u8>().ok()) else {
        return 8000;
    };
    if let Some(map) = m.rtpmap(pt) {
        return map.clock_rate;
    }
    match pt {
        0..=9 | 12 | 13 | 15 | 18 => 8000,
        10 | 11 => 44100,
        14 | 25 | 26 | 28 | 31..=34 => 90000,
        16 => 11025,
        17 => 22050,
        _ => 8000,
    }
}

impl Sessions {
    pub fn new(
        cfg: SessionConfig,
        plane: Box<dyn MediaPlane>,
        kernel: Option<Box<dyn KernelPath>>,
    ) -> Result<Arc<Sessions>, PortAllocError> {
        let ports = PortAllocator::new(cfg.port_low, cfg.port_high)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Sessions {
            state: Mutex::new(State {
                cfg,
                ports,
                plane,
                calls: HashMap::new(),
                by_endpoint: HashMap::new(),
                next_endpoint: 1,
                totals: Totals::default(),
                shutting_down: false,
                kernel,
                flow_ids: FlowIds::default(),
            }),
            events,
            closing: tokio::sync::watch::Sender::new(false),
            started: std::time::Instant::now(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than poison forever.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.events.subscribe()
    }

    /// Marks the start of shutdown: new offers are refused and event streams end.
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
        self.closing.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    fn emit(&self, kind: EventKind, call_id: &str, tag: &str, detail: String) {
        let ev = CallEvent {
            kind,
            call_id: call_id.to_string(),
            tag: tag.to_string(),
            unix_ms: unix_ms_now(),
            detail,
        };
        tracing::info!(event = ?ev.kind, call_id = %ev.call_id, tag = %ev.tag, detail = %ev.detail, "call event");
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    /// Handles an SDP offer; returns the SDP for the other party.
    pub fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        require("call_id", call_id)?;
        require("from_tag", from_tag)?;
        let offer = Sdp::parse(sdp)?;
        let mut st = self.lock();
        if st.shutting_down {
            return Err(SessionError::ShuttingDown);
        }
        let created = !st.calls.contains_key(call_id);
        let o = match st.calls.get(call_id) {
            None => 0,
            Some(c) if c.tags[0] == from_tag => 0,
            Some(c) if c.tags[1] == from_tag => 1,
            Some(c) => {
                return Err(bad(format!(
                    "call '{call_id}' has tags '{}' and '{}'; an offer from tag '{from_tag}' \
                     matches neither (forked calls are not supported)",
                    c.tags[0], c.tags[1]
                )));
            }
        };
        let out = st.offer(call_id, from_tag, o, &offer, sdp, opts);
        if let Err(e) = &out {
            tracing::warn!(%call_id, error = %e, "offer rejected");
        }
        let out = out?;
        drop(st);
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
        require("call_id", call_id)?;
        require("from_tag", from_tag)?;
        require("to_tag", to_tag)?;
        let answer = Sdp::parse(sdp)?;
        let mut st = self.lock();
        let out = st.answer(call_id, from_tag, to_tag, &answer, sdp, opts);
        if let Err(e) = &out {
            tracing::warn!(%call_id, error = %e, "answer rejected");
        }
        out
    }

    /// Ends a call and frees its ports; returns its final state.
    pub fn delete(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
    ) -> Result<proto::CallInfo, SessionError> {
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
        let info = st.remove_call(call_id).expect("checked above");
        drop(st);
        self.emit(
            EventKind::Deleted,
            call_id,
            from_tag,
            "deleted by request".into(),
        );
        Ok(info)
    }

    pub fn query(&self, call_id: &str) -> Result<proto::CallInfo, SessionError> {
        require("call_id", call_id)?;
        let st = self.lock();
        let call = st
            .calls
            .get(call_id)
            .ok_or_else(|| SessionError::NotFound(call_id.into()))?;
        Ok(call_info(call, st.kernel.as_deref()))
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

    pub fn statistics(&self) -> proto::StatisticsReply {
        let st = self.lock();
        let (mut packets, mut bytes, mut dropped) =
            (st.totals.packets, st.totals.bytes, st.totals.dropped);
        let mut kernel_flows = 0;
        let mut kernel_packets = 0;
        for call in st.calls.values() {
            for s in &call.streams {
                kernel_flows += s.kernel.len() as u64;
                for (k, side) in s.sides.iter().enumerate() {
                    let kc = kernel_counters(s, k, st.kernel.as_deref());
                    packets += side.counters.forwarded.load(Relaxed) + kc.packets;
                    bytes += side.counters.forwarded_bytes.load(Relaxed) + kc.bytes;
                    dropped += side.counters.dropped() + kc.dropped();
                    kernel_packets += kc.packets;
                }
            }
        }
        proto::StatisticsReply {
            uptime_secs: self.started.elapsed().as_secs(),
            calls_current: st.calls.len() as u64,
            calls_total: st.totals.calls,
            calls_timed_out: st.totals.timed_out,
            ports_in_use: st.ports.in_use() as u64,
            ports_free: st.ports.free() as u64,
            packets_relayed: packets,
            bytes_relayed: bytes,
            packets_dropped: dropped,
            forwarding_path: match &st.kernel {
                Some(k) => format!("userspace+{}", k.describe()),
                None => "userspace".into(),
            },
            kernel_flows,
            kernel_packets: st.totals.kernel_packets + kernel_packets,
            workers: st
                .kernel
                .as_ref()
                .map(|k| k.worker_stats())
                .unwrap_or_default()
                .iter()
                .map(|w| proto::WorkerInfo {
                    index: w.worker as u32,
                    cpu: w.cpu.map_or(-1, |c| c as i32),
                    rx: w.rx_packets,
                    tx: w.tx_packets + w.tx_socket_packets,
                    dropped: w.dropped(),
                    transform_errors: w.transform_errors,
                    load_permille: w.load_permille as u32,
                    tx_ring: w.tx_packets,
                    tx_kernel: w.tx_socket_packets,
                })
                .collect(),
            kernel_features: st
                .kernel
                .as_ref()
                .map(|k| k.kernel_features())
                .unwrap_or_default()
                .into_iter()
                .map(|f| proto::KernelFeature {
                    name: f.name.into(),
                    available: f.available,
                    used: f.used,
                    without: f.without.into(),
                })
                .collect(),
        }
    }

    /// Deletes calls with neither media nor signalling for the configured timeout.
    /// Also moves settled streams into the kernel fast path, when there is one.
    pub fn sweep(&self) -> Vec<String> {
        self.sweep_at(now_ns())
    }

    /// [`Sessions::sweep`] at a given `clock::now_ns()` time (tests run it in simulated time).
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
            st.remove_call(id);
            st.totals.timed_out += 1;
        }
        st.kernelize(now);
        let secs = st.cfg.timeout.as_secs();
        drop(st);
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
        let EngineEvent::MediaStarted { id } = ev else {
            return;
        };
        let mut st = self.lock();
        let Some((call_id, side)) = st.by_endpoint.get(&id).cloned() else {
            return;
        };
        let Some(call) = st.calls.get_mut(&call_id) else {
            return;
        };
        if std::mem::replace(&mut call.media_started[side], true) {
            return;
        }
        let tag = call.tags[side].clone();
        drop(st);
        self.emit(
            EventKind::MediaStarted,
            &call_id,
            &tag,
            format!("first packet from side {side}"),
        );
    }

    /// Stops taking offers, deletes every call and stops the data plane (every relay socket is
    /// closed when this returns); returns how many calls there were.
    pub fn shutdown(&self) -> usize {
        let mut st = self.lock();
        st.shutting_down = true;
        let ids: Vec<String> = st.calls.keys().cloned().collect();
        for id in &ids {
            st.remove_call(id);
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

/// The last packet or signalling event of a call; with `kernel`, kernel-forwarded packets count.
fn last_activity(c: &Call, kernel: Option<&dyn KernelPath>) -> u64 {
    let mut last = c.last_signal_ns;
    for s in &c.streams {
        for (k, side) in s.sides.iter().enumerate() {
            last = last.max(side.counters.last_packet_ns.load(Relaxed));
            if kernel.is_some() && !s.kernel.is_empty() {
                last = last.max(kernel_counters(s, k, kernel).last_seen_ns);
            }
        }
    }
    last
}

/// Kernel counters of packets from side `k`'s endpoint: removed flows plus live ones.
fn kernel_counters(s: &Stream, k: usize, kernel: Option<&dyn KernelPath>) -> FlowCounters {
    let mut c = s.sides[k].kernel_base;
    if let Some(kernel) = kernel {
        for f in s.kernel.iter().filter(|f| f.side == k) {
            match flow_counters(kernel, f) {
                Ok(live) => c.merge(&live),
                Err(e) => {
                    tracing::warn!(error = %e, flow_id = f.flow_id, "cannot read kernel counters")
                }
            }
        }
    }
    c
}

const RECV_BUFFER: usize = 1 << 20;

/// How long both latched sources must stay the same, with no signalling, before a stream moves
/// into the kernel.
const SETTLE_NS: u64 = 1_000_000_000;

fn latch_config(opts: &LegOptions) -> LatchConfig {
    LatchConfig {
        mode: opts.latching,
        strict_source: opts.strict_source,
        ..LatchConfig::default()
    }
}

impl State {
    fn relay_ip(&self, v6: bool) -> Result<IpAddr, SessionError> {
        self.cfg
            .media_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == v6)
            .ok_or_else(|| {
                bad(format!(
                    "no relay address of family {} is configured; start sluice with --media-ip \
                     of that family",
                    if v6 { "IPv6" } else { "IPv4" }
                ))
            })
    }

    /// Reserves ports and binds sockets for one side of a new stream.
    fn new_side(&mut self, ip: IpAddr, pair: bool) -> Result<(Side, Command), SessionError> {
        let (rtp_port, (rtp, rtcp)) = self.ports.allocate_with(pair, DEFAULT_MAX_TRIES, |p| {
            let rtp = UdpSocket::bind((ip, p))?;
            // The default buffer holds ~2 ms of a 160 kpps stream; one scheduling hiccup of the
            // relay thread would overflow it. The kernel only charges what is queued.
            let _ = socket2::SockRef::from(&rtp).set_recv_buffer_size(RECV_BUFFER);
            let rtcp = if pair {
                Some(UdpSocket::bind((ip, p + 1))?)
            } else {
                None
            };
            Ok::<_, std::io::Error>((rtp, rtcp))
        })?;
        let endpoint = EndpointId(self.next_endpoint);
        self.next_endpoint += 1;
        let sockets = if self.kernel.as_ref().is_some_and(|k| k.has_workers()) {
            let dup = || -> std::io::Result<SideSockets> {
                Ok(SideSockets {
                    rtp: rtp.try_clone()?,
                    rtcp: rtcp.as_ref().map(UdpSocket::try_clone).transpose()?,
                })
            };
            match dup() {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot duplicate relay sockets; streams with SRTP termination of this side stay in userspace");
                    None
                }
            }
        } else {
            None
        };
        let counters = Arc::new(EndpointCounters::default());
        let side = Side {
            endpoint,
            local_ip: ip,
            rtp_port,
            rtcp_port: pair.then_some(rtp_port + 1),
            counters: counters.clone(),
            sdp_rtp: None,
            sdp_rtcp: None,
            direction: Direction::SendRecv,
            rtcp_mux: false,
            offered_mux: false,
            latch: LatchConfig::default(),
            clock_rate: 8000,
            kernel_base: FlowCounters::default(),
            crypto: SideCrypto::Plain,
            offered_keys: Vec::new(),
            sockets,
            codec: String::new(),
        };
        let cmd = Command::Add {
            id: endpoint,
            rtp,
            rtcp,
            config: EndpointConfig::default(),
            counters,
        };
        Ok((side, cmd))
    }

    fn release_side(&mut self, side: &Side) {
        if let Err(e) = self.ports.release(side.rtp_port, side.rtcp_port.is_some()) {
            tracing::error!(error = %e, port = side.rtp_port, "port release failed (bug)");
        }
        self.by_endpoint.remove(&side.endpoint);
    }

    fn offer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        o: usize,
        offer: &Sdp,
        offer_text: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        let a = 1 - o;
        let existing = self.calls.get(call_id).map_or(0, |c| c.streams.len());
        let mode = opts.codecs.mode.unwrap_or(self.cfg.transcode);
        // Check everything that can fail for a reason of the request before any port is taken.
        let mut ips = Vec::with_capacity(offer.media.len());
        let mut rewrites = Vec::with_capacity(offer.media.len());
        for (i, m) in offer.media.iter().enumerate() {
            // SRTP relayed untouched is opaque to sluice: there is nothing it could transcode.
            let opaque = opts.srtp == SrtpMode::Default && is_savp(&m.proto);
            let previous = self
                .calls
                .get(call_id)
                .and_then(|c| c.streams.get(i))
                .and_then(|s| s.codecs.as_ref());
            rewrites.push(if opaque {
                if opts.codecs.has_lists() && !m.is_disabled() {
                    return Err(bad(format!(
                        "m= line {} is SRTP relayed end to end ({}), which sluice cannot                          transcode; drop the codec options or terminate SRTP with an srtp option",
                        i + 1,
                        m.proto
                    )));
                }
                None
            } else {
                codecs::rewrite_offer(m, &opts.codecs, mode, previous)?
            });
            if opts.rtcp_mux == RtcpMuxMode::Require && !m.is_disabled() && !m.rtcp_mux() {
                return Err(bad(format!(
                    "m= line {} ({}) lacks a=rtcp-mux, which the rtcp_mux REQUIRE option demands",
                    i + 1,
                    m.media
                )));
            }
            if !m.is_disabled() {
                srtp_incoming(m, opts.srtp)?;
            }
            let offer_v6 = offer.media_connection(i).map(|ip| ip.is_ipv6());
            if !m.is_disabled() && offer_v6.is_none() {
                return Err(bad(format!("m= line {} has no connection address", i + 1)));
            }
            let own_v6 = offer_v6.unwrap_or(false);
            let other_v6 = match opts.family {
                Family::Auto => own_v6,
                Family::V4 => false,
                Family::V6 => true,
            };
            ips.push((self.relay_ip(own_v6)?, self.relay_ip(other_v6)?));
        }
        if offer.media.len() < existing {
            return Err(bad(format!(
                "the offer has {} m= lines but the call already has {existing}; RFC 3264 8 \
                 forbids removing m= lines (set the port to 0 instead)",
                offer.media.len()
            )));
        }
        // New streams: bind everything first, roll back on failure.
        let mut new_streams = Vec::new();
        let mut adds = Vec::new();
        for (i, m) in offer.media.iter().enumerate().skip(existing) {
            let (own_ip, other_ip) = ips[i];
            let pair_o = opts.rtcp_mux != RtcpMuxMode::Require;
            let made = self.new_side(own_ip, pair_o).and_then(|(so, co)| {
                match self.new_side(other_ip, true) {
                    Ok((sa, ca)) => Ok((so, co, sa, ca)),
                    Err(e) => {
                        self.release_side(&so);
                        Err(e)
                    }
                }
            });
            match made {
                Ok((so, co, sa, ca)) => {
                    adds.push(co);
                    adds.push(ca);
                    let sides = if o == 0 { [so, sa] } else { [sa, so] };
                    new_streams.push(Stream {
                        media: m.media.clone(),
                        sides,
                        disabled: false,
                        kernel: Vec::new(),
                        settle: None,
                        kernel_failed: false,
                        codecs: None,
                        transcode: None,
                        ssrcs: [rand::random(), rand::random()],
                    });
                }
                Err(e) => {
                    for s in &new_streams {
                        for side in &s.sides {
                            self.release_side(side);
                        }
                    }
                    // Sockets in `adds` close when it drops.
                    return Err(e);
                }
            }
        }
        for cmd in adds {
            self.plane.send(cmd)?;
        }
        // A signalling event: media goes back through userspace, where latching runs again.
        self.unkernelize_call(call_id);
        let now = now_ns();
        let call = self
            .calls
            .entry(call_id.to_string())
            .or_insert_with(|| Call {
                call_id: call_id.to_string(),
                tags: [from_tag.to_string(), String::new()],
                streams: Vec::new(),
                created_unix_ms: unix_ms_now(),
                last_signal_ns: now,
                pending_offer: None,
                sdp_versions: [None, None],
                media_started: [false; 2],
            });
        if call.streams.is_empty() {
            self.totals.calls += 1;
        }
        for s in &new_streams {
            for (k, side) in s.sides.iter().enumerate() {
                self.by_endpoint
                    .insert(side.endpoint, (call_id.to_string(), k));
            }
        }
        call.streams.extend(new_streams);
        call.last_signal_ns = now;
        call.pending_offer = Some(o);

        let mut out = offer.clone();
        for (i, m) in out.media.iter_mut().enumerate() {
            let stream = &mut call.streams[i];
            stream.media = m.media.clone();
            stream.codecs = match rewrites[i].take() {
                Some((media, codecs)) => {
                    *m = media;
                    Some(codecs)
                }
                None => None,
            };
            let offered_mux = m.rtcp_mux();
            {
                let so = &mut stream.sides[o];
                so.sdp_rtp = offer.rtp_endpoint(i);
                so.sdp_rtcp = offer.rtcp_endpoint(i);
                so.direction = opts.direction.unwrap_or_else(|| offer.direction(i));
                // RFC 5761 5.1.1: until the answer, the offerer may send RTCP either way and
                // accepts it on the RTP port if it offered mux.
                so.rtcp_mux = offered_mux && opts.rtcp_mux != RtcpMuxMode::Strip;
                so.latch = latch_config(&opts);
                // A transcoded stream keeps each side's codec clock until the answer decides.
                if stream.transcode.is_none() {
                    so.clock_rate = clock_rate(offer, i);
                }
            }
            let mux_out = match opts.rtcp_mux {
                RtcpMuxMode::Default => offered_mux,
                RtcpMuxMode::Offer | RtcpMuxMode::Require => true,
                RtcpMuxMode::Strip => false,
            };
            let clock = stream.sides[o].clock_rate;
            stream.disabled = m.is_disabled();
            if m.is_disabled() {
                continue;
            }
            // SDES: what the offerer sends, then what the answerer is offered.
            let incoming = srtp_incoming(m, opts.srtp)?;
            let so = &mut stream.sides[o];
            so.crypto = match incoming {
                Some(rx) if opts.srtp != SrtpMode::Default => {
                    // Keep our key across re-offers that keep the suite: re-keying on every
                    // session refresh would make the endpoint reset its contexts for nothing.
                    let tx = match &so.crypto {
                        SideCrypto::Terminated { tx, .. }
                            if tx.suite == rx.suite && tx.tag == rx.tag =>
                        {
                            tx.clone()
                        }
                        _ => SdesKey::generate(rx.tag, rx.suite),
                    };
                    SideCrypto::Terminated { rx, tx }
                }
                Some(_) => SideCrypto::Passthrough,
                None => SideCrypto::Plain,
            };
            let transcoding = stream.transcode.is_some();
            let sa = &mut stream.sides[a];
            sa.offered_mux = mux_out;
            if !transcoding {
                sa.clock_rate = clock;
            }
            match opts.srtp {
                SrtpMode::Default => sa.offered_keys.clear(),
                SrtpMode::Offer | SrtpMode::Require => {
                    m.proto = with_srtp(&m.proto, true);
                    m.remove_attributes("crypto");
                    let keys: Vec<SdesKey> = OFFERED
                        .iter()
                        .enumerate()
                        .map(|(t, &suite)| {
                            sa.offered_keys
                                .iter()
                                .find(|k| k.suite == suite)
                                .cloned()
                                .unwrap_or_else(|| SdesKey::generate(t as u32 + 1, suite))
                        })
                        .collect();
                    for k in &keys {
                        m.push_attribute(k.to_attribute());
                    }
                    sa.offered_keys = keys;
                }
                SrtpMode::Strip => {
                    m.proto = with_srtp(&m.proto, false);
                    m.remove_attributes("crypto");
                    sa.offered_keys.clear();
                }
            }
            if m.connection.is_some() || offer.connection.is_none() || ips[0].1 != sa.local_ip {
                m.set_connection(sa.local_ip);
            }
            m.set_port(sa.rtp_port);
            m.set_rtcp_mux(mux_out);
            m.set_rtcp(sa.rtcp_port.map(|p| (p, sa.local_ip)));
            if let Some(d) = opts.direction {
                m.set_direction(d);
            }
        }
        if let Some((_, other_ip)) = ips.first() {
            out.set_session_connection(*other_ip);
        }
        set_version(&mut call.sdp_versions[a], &mut out, offer_text);
        // The offerer starts sending once it has the answer, but early media from the callee may
        // come before: open both latching windows now (the callee's without an SDP address yet).
        let mut cmds = Vec::new();
        for s in &call.streams {
            cmds.push(configure(s, o));
            cmds.push(configure(s, a));
            cmds.push(srtp_command(s, o));
            cmds.push(srtp_command(s, a));
        }
        for cmd in cmds {
            self.plane.send(cmd)?;
        }
        Ok(out.to_string())
    }

    fn answer(
        &mut self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        answer: &Sdp,
        answer_text: &str,
        opts: LegOptions,
    ) -> Result<String, SessionError> {
        let (opus_complexity, opus_bitrate) = (self.cfg.opus_complexity, self.cfg.opus_bitrate);
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| SessionError::NotFound(call_id.into()))?;
        let o = call.pending_offer.ok_or_else(|| {
            bad(format!(
                "call '{call_id}' has no offer waiting for an answer"
            ))
        })?;
        let a = 1 - o;
        if call.tags[o] != from_tag {
            return Err(bad(format!(
                "from_tag '{from_tag}' is not the offerer's tag '{}' of call '{call_id}'",
                call.tags[o]
            )));
        }
        if !call.tags[a].is_empty() && call.tags[a] != to_tag {
            return Err(bad(format!(
                "to_tag '{to_tag}' differs from the answerer's tag '{}' of call '{call_id}' \
                 (forked answers are not supported)",
                call.tags[a]
            )));
        }
        if answer.media.len() != call.streams.len() {
            return Err(bad(format!(
                "the answer has {} m= lines but the offer had {}; RFC 3264 6 requires the same \
                 number",
                answer.media.len(),
                call.streams.len()
            )));
        }
        if opts.family != Family::Auto {
            let v6 = opts.family == Family::V6;
            if call
                .streams
                .iter()
                .any(|s| s.sides[o].local_ip.is_ipv6() != v6)
            {
                return Err(bad(
                    "the address family of the answer's relay address was fixed by the offer; \
                     set address_family in the offer instead",
                ));
            }
        }
        for (i, m) in answer.media.iter().enumerate() {
            if opts.rtcp_mux == RtcpMuxMode::Require && !m.is_disabled() && !m.rtcp_mux() {
                return Err(bad(format!(
                    "m= line {} ({}) of the answer lacks a=rtcp-mux, which the rtcp_mux REQUIRE \
                     option demands",
                    i + 1,
                    m.media
                )));
            }
            if !m.is_disabled() && answer.media_connection(i).is_none() {
                return Err(bad(format!("m= line {} has no connection address", i + 1)));
            }
        }
        let mut answer_crypto = Vec::with_capacity(answer.media.len());
        for (i, m) in answer.media.iter().enumerate() {
            let sa = &call.streams[i].sides[a];
            answer_crypto.push(if m.is_disabled() {
                SideCrypto::Plain
            } else {
                srtp_answer(i, m, &sa.offered_keys, opts.srtp)?
            });
        }
        let mut decisions = Vec::with_capacity(answer.media.len());
        for (i, m) in answer.media.iter().enumerate() {
            let s = &call.streams[i];
            let decided = match &s.codecs {
                Some(oc) if !m.is_disabled() && !s.disabled => {
                    let (mut d, back) = codecs::decide(oc, m, [s.ssrcs[o], s.ssrcs[a]])
                        .map_err(|e| SessionError::from(e).in_line(i))?;
                    if let Decision::Transcode(t) = &mut d {
                        for p in &mut t.plans {
                            p.opus.complexity = opus_complexity;
                            p.opus.bitrate =
                                opus_bitrate.min(p.opus.max_average_bitrate.unwrap_or(u32::MAX));
                        }
                    }
                    if matches!(d, Decision::Transcode(_))
                        && answer_crypto[i] == SideCrypto::Passthrough
                    {
                        return Err(bad(format!(
                            "m= line {} of the answer needs transcoding but is SRTP that sluice \
                             did not offer and cannot decrypt",
                            i + 1
                        )));
                    }
                    Some((d, back))
                }
                _ => None,
            };
            decisions.push(decided);
        }
        let had_transcode: Vec<bool> = call.streams.iter().map(|s| s.transcode.is_some()).collect();
        call.tags[a] = to_tag.to_string();
        call.last_signal_ns = now_ns();
        call.pending_offer = None;
        unkernelize(call, self.kernel.as_deref_mut(), &mut self.flow_ids);
        let mut out = answer.clone();
        let first_ip = call.streams.first().map(|s| s.sides[o].local_ip);
        for (i, m) in out.media.iter_mut().enumerate() {
            let stream = &mut call.streams[i];
            {
                let sa = &mut stream.sides[a];
                sa.sdp_rtp = answer.rtp_endpoint(i);
                sa.sdp_rtcp = answer.rtcp_endpoint(i);
                sa.direction = opts.direction.unwrap_or_else(|| answer.direction(i));
                sa.rtcp_mux = sa.offered_mux && m.rtcp_mux();
                sa.latch = latch_config(&opts);
                sa.crypto = std::mem::take(&mut answer_crypto[i]);
            }
            {
                let so = &mut stream.sides[o];
                // The relay terminates rtcp-mux per side, so the offerer gets mux if it asked for
                // it, whatever the answerer chose.
                so.rtcp_mux = so.rtcp_mux && opts.rtcp_mux != RtcpMuxMode::Strip;
            }
            stream.disabled = m.is_disabled() || stream.disabled;
            if stream.disabled {
                m.set_port(0);
                stream.transcode = None;
                continue;
            }
            match decisions[i].take() {
                Some((Decision::Transcode(t), back)) => {
                    *m = back;
                    let [from_o, from_a] = t.plans;
                    let mut formats = [t.offerer; 2];
                    formats[a] = t.answerer;
                    let mut plans = [from_o.clone(), from_o];
                    plans[a] = from_a;
                    for (k, side) in stream.sides.iter_mut().enumerate() {
                        side.clock_rate = formats[k].codec.clock_rate();
                        side.codec = codecs::codec_label(formats[k].codec);
                    }
                    stream.transcode = Some(StreamTranscode { formats, plans });
                }
                decided => {
                    if let Some((_, back)) = decided {
                        *m = back;
                    }
                    stream.transcode = None;
                    let codec = codecs::relayed_codec(&answer.media[i]).unwrap_or_default();
                    for side in stream.sides.iter_mut() {
                        side.clock_rate = clock_rate(answer, i);
                        side.codec = codec.clone();
                    }
                }
            }
            let so = &stream.sides[o];
            if m.connection.is_some()
                || answer.connection.is_none()
                || first_ip != Some(so.local_ip)
            {
                m.set_connection(so.local_ip);
            }
            m.set_port(so.rtp_port);
            m.set_rtcp_mux(so.rtcp_mux);
            m.set_rtcp(if so.rtcp_mux {
                None
            } else {
                so.rtcp_port.map(|p| (p, so.local_ip))
            });
            if let Some(d) = opts.direction {
                m.set_direction(d);
            }
            match &so.crypto {
                SideCrypto::Terminated { tx, .. } => {
                    m.proto = with_srtp(&m.proto, true);
                    m.remove_attributes("crypto");
                    m.push_attribute(tx.to_attribute());
                }
                SideCrypto::Plain => {
                    m.proto = with_srtp(&m.proto, false);
                    m.remove_attributes("crypto");
                }
                SideCrypto::Passthrough => {}
            }
        }
        if let Some(ip) = first_ip {
            out.set_session_connection(ip);
        }
        set_version(&mut call.sdp_versions[o], &mut out, answer_text);
        let mut cmds = Vec::new();
        for (i, s) in call.streams.iter().enumerate() {
            cmds.push(configure(s, a));
            cmds.push(configure(s, o));
            cmds.push(srtp_command(s, a));
            cmds.push(srtp_command(s, o));
            if s.transcode.is_some() || had_transcode[i] {
                for k in [a, o] {
                    cmds.push(Command::SetTranscode {
                        id: s.sides[k].endpoint,
                        plan: s.transcode.as_ref().map(|t| t.plans[k].clone()),
                    });
                }
            }
        }
        for cmd in cmds {
            self.plane.send(cmd)?;
        }
        Ok(out.to_string())
    }

    fn unkernelize_call(&mut self, call_id: &str) {
        if let Some(call) = self.calls.get_mut(call_id) {
            unkernelize(call, self.kernel.as_deref_mut(), &mut self.flow_ids);
        }
    }

    /// Installs XDP flows for streams whose latched sources have settled.
    fn kernelize(&mut self, now: u64) {
        let Some(kernel) = self.kernel.as_deref_mut() else {
            return;
        };
        let workers = kernel.has_workers();
        for call in self.calls.values_mut() {
            if call.pending_offer.is_some() || now.saturating_sub(call.last_signal_ns) < SETTLE_NS {
                continue;
            }
            for s in call.streams.iter_mut() {
                if !s.kernel.is_empty() || s.kernel_failed || !kernel_eligible(s, workers) {
                    s.settle = None;
                    continue;
                }
                let (Some(l0), Some(l1)) = (
                    s.sides[0].counters.latched_rtp(),
                    s.sides[1].counters.latched_rtp(),
                ) else {
                    s.settle = None;
                    continue;
                };
                // Inside the latching window the SDP address may still take over from a source
                // latched by the sequence rule; the kernel would then hold the wrong one.
                let window_open =
                    now.saturating_sub(call.last_signal_ns) < LatchConfig::default().window_ns;
                if window_open && (Some(l0) != s.sides[0].sdp_rtp || Some(l1) != s.sides[1].sdp_rtp)
                {
                    s.settle = None;
                    continue;
                }
                match s.settle {
                    Some((seen, since)) if seen == [l0, l1] => {
                        if now.saturating_sub(since) >= SETTLE_NS {
                            install_stream(s, [l0, l1], kernel, &mut self.flow_ids, &call.call_id);
                        }
                    }
                    _ => s.settle = Some(([l0, l1], now)),
                }
            }
        }
    }

    fn remove_call(&mut self, call_id: &str) -> Option<proto::CallInfo> {
        self.unkernelize_call(call_id);
        let call = self.calls.remove(call_id)?;
        let info = call_info(&call, None);
        for s in &call.streams {
            for side in &s.sides {
                self.totals.packets +=
                    side.counters.forwarded.load(Relaxed) + side.kernel_base.packets;
                self.totals.bytes +=
                    side.counters.forwarded_bytes.load(Relaxed) + side.kernel_base.bytes;
                self.totals.dropped += side.counters.dropped() + side.kernel_base.dropped();
                self.totals.kernel_packets += side.kernel_base.packets;
                if let Err(e) = self.plane.send(Command::Remove { id: side.endpoint }) {
                    tracing::error!(error = %e, "cannot close relay sockets");
                }
                self.release_side(side);
            }
        }
        Some(info)
    }
}

fn is_savp(proto: &str) -> bool {
    proto
        .split('/')
        .any(|p| p.eq_ignore_ascii_case("SAVP") || p.eq_ignore_ascii_case("SAVPF"))
}

/// RTP/AVP <-> RTP/SAVP, keeping feedback (AVPF/SAVPF) as it was.
fn with_srtp(proto: &str, srtp: bool) -> String {
    proto
        .split('/')
        .map(|p| match (p.to_ascii_uppercase().as_str(), srtp) {
            ("AVP", true) => "SAVP",
            ("AVPF", true) => "SAVPF",
            ("SAVP", false) => "AVP",
            ("SAVPF", false) => "AVPF",
            _ => p,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The key an offerer encrypts with, if its media section uses SDES-SRTP with a suite sluice
/// supports, after checking what `mode` demands of it. `None` for plain RTP, and for SRTP that
/// is passed through (mode Default) with suites sluice does not know.
fn srtp_incoming(m: &Media, mode: SrtpMode) -> Result<Option<SdesKey>, SessionError> {
    let lines = m.crypto();
    let srtp = is_savp(&m.proto) && !lines.is_empty();
    if mode != SrtpMode::Default && m.proto.to_ascii_uppercase().starts_with("UDP/TLS") {
        return Err(bad(format!(
            "{} media uses DTLS-SRTP ({}), which sluice does not terminate; relay it without an \
             srtp option",
            m.media, m.proto
        )));
    }
    if mode == SrtpMode::Require && !srtp {
        return Err(bad(format!(
            "the {} media section is not SDES-SRTP (RTP/SAVP with a=crypto), which the srtp \
             REQUIRE option demands",
            m.media
        )));
    }
    if !srtp {
        return Ok(None);
    }
    // RFC 4568 5.1.2: the first supported line in the offerer's order wins.
    let mut first_err = None;
    for c in &lines {
        match SdesKey::from_crypto(c) {
            Ok(k) => return Ok(Some(k)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (mode, first_err) {
        (SrtpMode::Default, _) | (_, None) => Ok(None),
        (_, Some(e)) => Err(e.into()),
    }
}

/// How the answerer's side does SRTP, given the keys sluice offered it.
fn srtp_answer(
    i: usize,
    m: &Media,
    offered: &[SdesKey],
    mode: SrtpMode,
) -> Result<SideCrypto, SessionError> {
    let lines = m.crypto();
    let srtp = is_savp(&m.proto) && !lines.is_empty();
    if mode == SrtpMode::Require && !srtp {
        return Err(bad(format!(
            "m= line {} of the answer is not SDES-SRTP, which the srtp REQUIRE option demands",
            i + 1
        )));
    }
    if offered.is_empty() {
        return Ok(if srtp {
            SideCrypto::Passthrough
        } else {
            SideCrypto::Plain
        });
    }
    if !srtp {
        // The answerer declined SRTP (best-effort SRTP offers allow that).
        return Ok(SideCrypto::Plain);
    }
    if lines.len() != 1 {
        return Err(bad(format!(
            "m= line {} of the answer has {} a=crypto lines; RFC 4568 5.1.2 allows exactly one",
            i + 1,
            lines.len()
        )));
    }
    let rx = SdesKey::from_crypto(&lines[0])?;
    let tx = offered
        .iter()
        .find(|k| k.tag == rx.tag && k.suite == rx.suite)
        .cloned()
        .ok_or_else(|| {
            bad(format!(
                "the answer's a=crypto:{} {} matches no key sluice offered (RFC 4568 5.1.2)",
                rx.tag,
                rx.suite.sdes_name()
            ))
        })?;
    Ok(SideCrypto::Terminated { rx, tx })
}

/// The XDP program forwards every datagram of a port alike, so only streams whose two sides treat
/// RTP and RTCP the same way, and that forward both ways, go into the kernel. Held streams stay in
/// userspace, where RTCP keeps flowing while RTP does not. Streams whose SRTP sluice terminates,
/// and transcoded ones, need work on every packet (never a plain FORWARD entry): they leave the kernel through AF_XDP to the workers when there are
/// some (`workers`), and otherwise stay on the userspace path.
fn kernel_eligible(s: &Stream, workers: bool) -> bool {
    !s.disabled
        && s.sides[0].local_ip.is_ipv4() == s.sides[1].local_ip.is_ipv4()
        && (!needs_worker(s) || (workers && s.sides.iter().all(|d| d.sockets.is_some())))
        && s.sides[0].rtcp_mux == s.sides[1].rtcp_mux
        && s.sides.iter().all(|d| d.direction == Direction::SendRecv)
}

/// Whether the stream's packets need work (SRTP termination on either side, transcoding).
fn needs_worker(s: &Stream) -> bool {
    s.transcode.is_some()
        || s.sides
            .iter()
            .any(|d| matches!(d.crypto, SideCrypto::Terminated { .. }))
}

fn install_stream(
    s: &mut Stream,
    latched: [SocketAddr; 2],
    kernel: &mut dyn KernelPath,
    flow_ids: &mut FlowIds,
    call_id: &str,
) {
    let worker = needs_worker(s);
    // (side, relay address the packets arrive at, their source, relay socket they leave from,
    // where they go, whether it is a separate RTCP port)
    let mut wanted = Vec::new();
    for k in 0..2 {
        let (me, other) = (&s.sides[k], &s.sides[1 - k]);
        let local = SocketAddr::new(me.local_ip, me.rtp_port);
        let new_src = SocketAddr::new(other.local_ip, other.rtp_port);
        wanted.push((k, local, latched[k], new_src, latched[1 - k], false));
        // Separate RTCP ports: kernelize RTCP too once both of its sources latched.
        if !me.rtcp_mux
            && let (Some(my_port), Some(other_port)) = (me.rtcp_port, other.rtcp_port)
            && let (Some(from), Some(to)) =
                (me.counters.latched_rtcp(), other.counters.latched_rtcp())
        {
            let local = SocketAddr::new(me.local_ip, my_port);
            let new_src = SocketAddr::new(other.local_ip, other_port);
            wanted.push((k, local, from, new_src, to, true));
        }
    }
    let mut installed = Vec::new();
    for (side, local, from, new_src, to, rtcp_port) in wanted {
        let Some(flow_id) = flow_ids.take() else {
            tracing::warn!(%call_id, "no free kernel flow slot; the stream stays in userspace");
            break;
        };
        let mut value = if worker {
            // The program routes it, so the worker can send from its TX ring.
            FlowValue::worker_routed(flow_id, new_src, to)
        } else {
            FlowValue::forward(flow_id, new_src, to)
        };
        if s.sides[side].latch.strict_source {
            value = value.strict_source(from);
        }
        // The worker's context goes in first, so the first redirected packet finds it.
        if worker {
            let added = worker_spec(s, side, flow_id, new_src, to, rtcp_port)
                .and_then(|spec| kernel.add_worker_flow(local, spec));
            if let Err(e) = added {
                flow_ids.give_back(flow_id);
                tracing::warn!(%call_id, %local, error = %e, "cannot install worker flow; the stream stays in userspace");
                break;
            }
        }
        match kernel.install(local, value) {
            Ok(()) => installed.push(KernelFlow {
                side,
                local,
                flow_id,
                worker,
            }),
            Err(e) => {
                if worker {
                    let _ = kernel.remove_worker_flow(local);
                }
                flow_ids.give_back(flow_id);
                tracing::warn!(%call_id, %local, error = %e, "cannot install kernel flow; the stream stays in userspace");
                break;
            }
        }
    }
    let complete = installed.len() >= 2
        && installed.iter().any(|f| f.side == 0)
        && installed.iter().any(|f| f.side == 1);
    if !complete {
        for f in installed {
            let _ = kernel.remove(f.local);
            if f.worker {
                let _ = kernel.remove_worker_flow(f.local);
            }
            flow_ids.give_back(f.flow_id);
        }
        s.kernel_failed = true;
        return;
    }
    if worker {
        tracing::info!(%call_id, flows = installed.len(), transcoded = s.transcode.is_some(), "stream handed to the AF_XDP workers");
    } else {
        tracing::info!(%call_id, flows = installed.len(), "stream forwarded in the kernel");
    }
    s.kernel = installed;
}

/// The worker context for packets from side `k`'s endpoint: what the engine does for that
/// direction (unprotect with k's key if sluice terminates k's SRTP, protect with the other side's
/// key if it terminates the other side's), sent from `new_src` to `to` through a clone of the
/// other side's relay socket.
fn worker_spec(
    s: &Stream,
    k: usize,
    flow_id: u32,
    new_src: SocketAddr,
    to: SocketAddr,
    rtcp_port: bool,
) -> Result<WorkerFlowSpec, String> {
    let (me, other) = (&s.sides[k], &s.sides[1 - k]);
    let rx = match &me.crypto {
        SideCrypto::Terminated { rx, .. } => Some(rx.to_engine()),
        _ => None,
    };
    let tx = match &other.crypto {
        SideCrypto::Terminated { tx, .. } => Some(tx.to_engine()),
        _ => None,
    };
    let socks = other
        .sockets
        .as_ref()
        .ok_or("no duplicate of the relay socket to send from")?;
    let sock = if rtcp_port {
        socks
            .rtcp
            .as_ref()
            .ok_or("no RTCP relay socket to send from")?
    } else {
        &socks.rtp
    };
    let fallback = sock
        .try_clone()
        .map_err(|e| format!("cannot clone the relay socket: {e}"))?;
    Ok(WorkerFlowSpec {
        flow_id,
        new_src,
        new_dst: to,
        rx,
        tx,
        rtcp_port,
        fallback: Some(fallback),
        counters: Some(me.counters.clone()),
        transcode: s.transcode.as_ref().map(|t| t.plans[k].clone()),
        peer_counters: Some(other.counters.clone()),
        report_ssrc: s.transcode.as_ref().map(|t| t.plans[1 - k].ssrc),
    })
}

/// A flow's counters. XDP counts a WORKER flow's packets as `to_worker` only: those are its
/// `packets` here (what XDP handed to the worker), with the worker's byte count and last packet.
fn flow_counters(kernel: &dyn KernelPath, f: &KernelFlow) -> crate::kernel::KResult<FlowCounters> {
    let mut c = kernel.counters(f.flow_id)?;
    if f.worker {
        c.packets = c.to_worker;
        match kernel.worker_flow_counters(f.local) {
            Ok(w) => {
                c.bytes = w.bytes;
                c.last_seen_ns = c.last_seen_ns.max(w.last_seen_ns);
            }
            Err(e) => tracing::warn!(error = %e, local = %f.local, "cannot read worker counters"),
        }
    }
    Ok(c)
}

/// Takes a call's streams out of the kernel, keeping their counters.
fn unkernelize(
    call: &mut Call,
    mut kernel: Option<&mut (dyn KernelPath + 'static)>,
    flow_ids: &mut FlowIds,
) {
    for s in call.streams.iter_mut() {
        s.settle = None;
        s.kernel_failed = false;
        let Some(kernel) = kernel.as_deref_mut() else {
            continue;
        };
        for f in std::mem::take(&mut s.kernel) {
            if let Err(e) = kernel.remove(f.local) {
                tracing::error!(local = %f.local, error = %e, "cannot remove kernel flow");
            }
            match flow_counters(kernel, &f) {
                Ok(c) => s.sides[f.side].kernel_base.merge(&c),
                Err(e) => tracing::warn!(error = %e, "cannot read kernel counters"),
            }
            // After the XDP entry: nothing is redirected to the worker any more.
            if f.worker
                && let Err(e) = kernel.remove_worker_flow(f.local)
            {
                tracing::error!(local = %f.local, error = %e, "cannot remove worker flow");
            }
            if let Err(e) = kernel.reset_counters(f.flow_id) {
                tracing::warn!(error = %e, "cannot reset kernel counters");
            }
            flow_ids.give_back(f.flow_id);
        }
    }
}

/// The SRTP keys of side `k` for the engine.
fn srtp_command(s: &Stream, k: usize) -> Command {
    let side = &s.sides[k];
    let (rx, tx) = match &side.crypto {
        SideCrypto::Terminated { rx, tx } => (Some(rx.to_engine()), Some(tx.to_engine())),
        SideCrypto::Plain | SideCrypto::Passthrough => (None, None),
    };
    Command::SetSrtp {
        id: side.endpoint,
        rx,
        tx,
    }
}

/// The engine configuration of side `k` of a stream after a signalling event: it also opens a
/// new latching window for that side.
fn configure(s: &Stream, k: usize) -> Command {
    let me = &s.sides[k];
    let other = &s.sides[1 - k];
    let (sends, receives) = if s.disabled {
        (false, false)
    } else {
        (me.direction.sends(), me.direction.receives())
    };
    Command::Configure {
        id: me.endpoint,
        config: EndpointConfig {
            partner: Some(other.endpoint),
            latch: me.latch,
            sends,
            receives,
            rtcp_mux: me.rtcp_mux,
            clock_rate: me.clock_rate,
        },
        signalling: Some(Signalling {
            sdp_rtp: me.sdp_rtp,
            sdp_rtcp: me.sdp_rtcp,
        }),
    }
}

/// RFC 3264 8: the o= version of what we send a side grows by one whenever what we send changes,
/// and stays when a session refresh repeats the same SDP.
fn set_version(slot: &mut Option<(String, u64)>, out: &mut Sdp, input: &str) {
    let version = match slot {
        Some((prev, v)) if prev == input => *v,
        Some((_, v)) => *v + 1,
        None => out.origin.session_version,
    };
    out.origin.session_version = version;
    *slot = Some((input.to_string(), version));
}

fn call_info(call: &Call, kernel: Option<&dyn KernelPath>) -> proto::CallInfo {
    let legs = (0..2)
        .map(|k| proto::LegInfo {
            tag: call.tags[k].clone(),
            streams: call
                .streams
                .iter()
                .enumerate()
                .map(|(i, s)| stream_info(i, s, k, kernel_counters(s, k, kernel)))
                .collect(),
        })
        .collect();
    proto::CallInfo {
        call_id: call.call_id.clone(),
        created_unix_ms: call.created_unix_ms,
        last_signal_unix_ms: unix_ms_of(call.last_signal_ns),
        legs,
    }
}

fn stream_info(i: usize, s: &Stream, k: usize, kc: FlowCounters) -> proto::StreamInfo {
    let side = &s.sides[k];
    let c = &side.counters;
    let fmt = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    let last = c.last_packet_ns.load(Relaxed).max(kc.last_seen_ns);
    proto::StreamInfo {
        index: i as u32,
        media: s.media.clone(),
        local_address: side.local_ip.to_string(),
        local_rtp_port: side.rtp_port as u32,
        local_rtcp_port: if side.rtcp_mux {
            side.rtp_port
        } else {
            side.rtcp_port.unwrap_or(side.rtp_port)
        } as u32,
        sdp_peer: fmt(side.sdp_rtp),
        latched_peer: fmt(c.latched_rtp()),
        direction: side.direction.as_str().into(),
        rtcp_mux: side.rtcp_mux,
        strict_source: side.latch.strict_source,
        packets: c.packets.load(Relaxed) + kc.packets,
        bytes: c.bytes.load(Relaxed) + kc.bytes,
        rtcp_packets: c.rtcp_packets.load(Relaxed),
        dropped_wrong_source: c.dropped_wrong_source.load(Relaxed)
            + c.dropped_unconfirmed.load(Relaxed)
            + kc.dropped_wrong_source,
        dropped_direction: c.dropped_direction.load(Relaxed),
        dropped_malformed: c.dropped_malformed.load(Relaxed),
        last_packet_unix_ms: if last == 0 { 0 } else { unix_ms_of(last) },
        rtp_lost: c.rtp_lost.load(Relaxed),
        jitter_ms: c.jitter_ms(),
        userspace_packets: c.packets.load(Relaxed),
        userspace_bytes: c.bytes.load(Relaxed),
        kernel_packets: kc.packets,
        kernel_bytes: kc.bytes,
        ssrc: c.ssrc.load(Relaxed),
        dropped_unconfirmed: c.dropped_unconfirmed.load(Relaxed),
        dropped_no_peer: c.dropped_no_peer.load(Relaxed),
        forwarded: c.forwarded.load(Relaxed) + kc.packets,
        kernel_forwarded: !s.kernel.is_empty(),
        srtp: match &side.crypto {
            SideCrypto::Plain => "plain".into(),
            SideCrypto::Passthrough => "passthrough".into(),
            SideCrypto::Terminated { rx, .. } => rx.suite.sdes_name().into(),
        },
        srtp_auth_failures: c.srtp_auth_failures.load(Relaxed),
        srtp_replayed: c.srtp_replayed.load(Relaxed),
        transcoded: s.transcode.is_some(),
        codec: side.codec.clone(),
        payload_type: s
            .transcode
            .as_ref()
            .map_or(-1, |t| i32::from(t.formats[k].pt)),
        rtcp_terminated: c.rtcp_terminated.load(Relaxed),
        transcoded_out: c.transcoded_out.load(Relaxed),
        transcode_concealed: c.transcode_concealed.load(Relaxed),
        transcode_fec_recovered: c.transcode_fec.load(Relaxed),
        transcode_dtmf: c.transcode_dtmf.load(Relaxed),
        transcode_dropped: c.transcode_dropped.load(Relaxed),
        opus_fec_loss_pct: c.transcode_fec_loss_pct.load(Relaxed),
        reported_loss_pct: c.reported_loss_pct().map_or(-1, i32::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::Codec;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// Records which endpoints the data plane would hold, so leaks show up as leftovers.
    #[derive(Clone, Default)]
    struct FakePlane(Arc<Mutex<FakeState>>);
    #[derive(Default)]
    struct FakeState {
        live: HashSet<EndpointId>,
        configured: HashMap<EndpointId, (EndpointConfig, Option<Signalling>)>,
        /// Transcoding plans in force.
        plans: HashMap<EndpointId, DirectionPlan>,
        transcode_commands: usize,
    }
    impl MediaPlane for FakePlane {
        fn send(&mut self, cmd: Command) -> Result<(), EngineGone> {
            let mut st = self.0.lock().unwrap();
            match cmd {
                Command::Add { id, .. } => assert!(st.live.insert(id), "{id} added twice"),
                Command::Configure {
                    id,
                    config,
                    signalling,
                } => {
                    assert!(st.live.contains(&id), "configure of dead {id}");
                    st.configured.insert(id, (config, signalling));
                }
                Command::Remove { id } => {
                    assert!(st.live.remove(&id), "remove of dead {id}");
                    st.configured.remove(&id);
                    st.plans.remove(&id);
                }
                Command::SetTranscode { id, plan } => {
                    assert!(st.live.contains(&id), "transcode plan for dead {id}");
                    st.transcode_commands += 1;
                    match plan {
                        Some(p) => st.plans.insert(id, p),
                        None => st.plans.remove(&id),
                    };
                }
                Command::Shutdown | Command::SetSrtp { .. } => {}
            }
            Ok(())
        }
    }

    /// A kernel path that keeps its flow map in memory, with counters the test sets.
    #[derive(Clone, Default)]
    struct FakeKernel(Arc<Mutex<FakeKernelState>>);
    #[derive(Default)]
    struct FakeKernelState {
        flows: HashMap<SocketAddr, FlowValue>,
        counters: HashMap<u32, FlowCounters>,
        /// AF_XDP workers run.
        workers: bool,
        worker_flows: HashMap<SocketAddr, WorkerFlowSpec>,
        worker_counters: HashMap<SocketAddr, crate::kernel::WorkerFlowCounters>,
    }
    impl KernelPath for FakeKernel {
        fn install(&mut self, local: SocketAddr, value: FlowValue) -> crate::kernel::KResult<()> {
            self.0.lock().unwrap().flows.insert(local, value);
            Ok(())
        }
        fn remove(&mut self, local: SocketAddr) -> crate::kernel::KResult<()> {
            self.0
                .lock()
                .unwrap()
                .flows
                .remove(&local)
                .map(|_| ())
                .ok_or_else(|| format!("no flow {local}"))
        }
        fn counters(&self, flow_id: u32) -> crate::kernel::KResult<FlowCounters> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .counters
                .get(&flow_id)
                .copied()
                .unwrap_or_default())
        }
        fn reset_counters(&mut self, flow_id: u32) -> crate::kernel::KResult<()> {
            self.0.lock().unwrap().counters.remove(&flow_id);
            Ok(())
        }
        fn flow_count(&self) -> crate::kernel::KResult<usize> {
            Ok(self.0.lock().unwrap().flows.len())
        }
        fn describe(&self) -> String {
            "fake".into()
        }
        fn has_workers(&self) -> bool {
            self.0.lock().unwrap().workers
        }
        fn add_worker_flow(
            &mut self,
            local: SocketAddr,
            spec: WorkerFlowSpec,
        ) -> crate::kernel::KResult<()> {
            let mut st = self.0.lock().unwrap();
            assert!(st.workers, "worker flow without workers");
            assert!(
                !st.flows.contains_key(&local),
                "the worker context must come before the XDP entry"
            );
            st.worker_flows.insert(local, spec);
            Ok(())
        }
        fn remove_worker_flow(&mut self, local: SocketAddr) -> crate::kernel::KResult<()> {
            let mut st = self.0.lock().unwrap();
            assert!(
                !st.flows.contains_key(&local),
                "the XDP entry must go before the worker context"
            );
            st.worker_counters.remove(&local);
            st.worker_flows
                .remove(&local)
                .map(|_| ())
                .ok_or_else(|| format!("no worker flow {local}"))
        }
        fn worker_flow_counters(
            &self,
            local: SocketAddr,
        ) -> crate::kernel::KResult<crate::kernel::WorkerFlowCounters> {
            let st = self.0.lock().unwrap();
            if !st.worker_flows.contains_key(&local) {
                return Err(format!("no worker flow {local}"));
            }
            Ok(st.worker_counters.get(&local).copied().unwrap_or_default())
        }
    }

    fn sessions_with_kernel() -> (Arc<Sessions>, FakeKernel) {
        sessions_with_kernel_and(false)
    }

    fn sessions_with_kernel_and(workers: bool) -> (Arc<Sessions>, FakeKernel) {
        let kernel = FakeKernel::default();
        kernel.0.lock().unwrap().workers = workers;
        let s = Sessions::new(
            test_config(22000, 22999),
            Box::new(FakePlane::default()),
            Some(Box::new(kernel.clone())),
        )
        .unwrap();
        (s, kernel)
    }

    /// What the engine does when latching decides: both sides of every stream latch.
    fn latch_all(s: &Sessions, call_id: &str, rtcp: bool) {
        let st = s.lock();
        for (i, stream) in st.calls[call_id].streams.iter().enumerate() {
            for (k, side) in stream.sides.iter().enumerate() {
                let addr: SocketAddr = format!("127.0.0.{}:{}", 10 + k, 6000 + 10 * i)
                    .parse()
                    .unwrap();
                side.counters.set_latched(false, Some(addr));
                if rtcp {
                    side.counters
                        .set_latched(true, Some(SocketAddr::new(addr.ip(), addr.port() + 1)));
                }
            }
        }
    }

    fn call_up(s: &Sessions, call_id: &str, extra: &str) {
        s.offer(
            call_id,
            "a",
            &sdp("alice", 4000, extra),
            LegOptions::default(),
        )
        .unwrap();
        s.answer(
            call_id,
            "a",
            "b",
            &sdp("bob", 5000, extra),
            LegOptions::default(),
        )
        .unwrap();
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn settled_stream_moves_into_the_kernel_with_strict_rewrites() {
        let (s, kernel) = sessions_with_kernel();
        call_up(&s, "c", "");
        latch_all(&s, "c", true);
        let t0 = now_ns();
        s.sweep_at(t0 + 2 * SEC);
        s.sweep_at(t0 + 4 * SEC);
        assert_eq!(
            kernel.flow_count().unwrap(),
            0,
            "a source other than the SDP address waits for the latching window to close"
        );
        s.sweep_at(t0 + 11 * SEC);
        assert_eq!(
            kernel.flow_count().unwrap(),
            0,
            "must stay latched for a while first"
        );
        s.sweep_at(t0 + 12 * SEC + 1);
        // RTP and RTCP, both directions.
        assert_eq!(kernel.flow_count().unwrap(), 4);
        let q = s.query("c").unwrap();
        let (a, b) = (&q.legs[0].streams[0], &q.legs[1].streams[0]);
        assert!(a.kernel_forwarded && b.kernel_forwarded);
        let flows = kernel.0.lock().unwrap().flows.clone();
        let from_a = flows[&SocketAddr::new("127.0.0.1".parse().unwrap(), a.local_rtp_port as u16)];
        assert_eq!(
            from_a.expected_source(),
            Some("127.0.0.10:6000".parse().unwrap())
        );
        assert_eq!(
            from_a.rewrite(),
            Some((
                SocketAddr::new("127.0.0.1".parse().unwrap(), b.local_rtp_port as u16),
                "127.0.0.11:6000".parse().unwrap()
            ))
        );
        let from_b_rtcp =
            flows[&SocketAddr::new("127.0.0.1".parse().unwrap(), b.local_rtcp_port as u16)];
        assert_eq!(
            from_b_rtcp.expected_source(),
            Some("127.0.0.11:6001".parse().unwrap())
        );
    }

    #[test]
    fn reinvite_takes_streams_back_to_userspace_and_keeps_kernel_counts() {
        let (s, kernel) = sessions_with_kernel();
        call_up(&s, "c", "");
        latch_all(&s, "c", false);
        let t0 = now_ns();
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        assert_eq!(kernel.flow_count().unwrap(), 2);
        let flows = kernel.0.lock().unwrap().flows.clone();
        for v in flows.values() {
            kernel.0.lock().unwrap().counters.insert(
                v.flow_id(),
                FlowCounters {
                    packets: 100,
                    bytes: 17200,
                    ..Default::default()
                },
            );
        }
        s.offer(
            "c",
            "a",
            &sdp(
                "alice",
                4000,
                "a=sendonly
",
            ),
            LegOptions::default(),
        )
        .unwrap();
        assert_eq!(
            kernel.flow_count().unwrap(),
            0,
            "a re-offer falls back to userspace"
        );
        let q = s.query("c").unwrap();
        assert_eq!(q.legs[0].streams[0].kernel_packets, 100);
        assert_eq!(q.legs[1].streams[0].kernel_bytes, 17200);
        assert!(!q.legs[0].streams[0].kernel_forwarded);
        // On hold the stream stays in userspace however long it is latched.
        s.answer(
            "c",
            "a",
            "b",
            &sdp(
                "bob",
                5000,
                "a=recvonly
",
            ),
            LegOptions::default(),
        )
        .unwrap();
        s.sweep_at(t0 + 10 * SEC);
        s.sweep_at(t0 + 20 * SEC);
        assert_eq!(kernel.flow_count().unwrap(), 0);
        let st = s.statistics();
        assert_eq!((st.kernel_flows, st.kernel_packets), (0, 200));
    }

    #[test]
    fn sdp_address_sources_move_into_the_kernel_inside_the_window() {
        let (s, kernel) = sessions_with_kernel();
        call_up(&s, "c", "");
        {
            let st = s.lock();
            for side in &st.calls["c"].streams[0].sides {
                side.counters.set_latched(false, side.sdp_rtp);
            }
        }
        let t0 = now_ns();
        s.sweep_at(t0 + 2 * SEC);
        s.sweep_at(t0 + 3 * SEC + 1);
        assert_eq!(kernel.flow_count().unwrap(), 2);
    }

    #[test]
    fn mixed_rtcp_mux_stays_in_userspace() {
        let (s, kernel) = sessions_with_kernel();
        s.offer(
            "c",
            "a",
            &sdp(
                "alice",
                4000,
                "a=rtcp-mux
",
            ),
            LegOptions::default(),
        )
        .unwrap();
        s.answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
            .unwrap();
        latch_all(&s, "c", true);
        let t0 = now_ns();
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        assert_eq!(kernel.flow_count().unwrap(), 0);
    }

    #[test]
    fn delete_and_shutdown_leave_no_kernel_flows() {
        let (s, kernel) = sessions_with_kernel();
        for c in ["c1", "c2", "c3"] {
            call_up(&s, c, "");
            latch_all(&s, c, true);
        }
        let t0 = now_ns();
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        assert_eq!(kernel.flow_count().unwrap(), 12);
        s.delete("c1", "", "").unwrap();
        assert_eq!(kernel.flow_count().unwrap(), 8);
        assert_eq!(s.shutdown(), 2);
        assert_eq!(kernel.flow_count().unwrap(), 0);
        assert_eq!(s.lock().flow_ids.in_use(), 0);
    }

    /// An SRTP caller (terminated by `--srtp strip`) and a plain callee, with separate RTCP.
    fn srtp_call_up(s: &Sessions, call_id: &str) {
        s.offer(
            call_id,
            "a",
            &savp("alice", 4000, ALICE_KEY),
            opts(SrtpMode::Strip),
        )
        .unwrap();
        s.answer(
            call_id,
            "a",
            "b",
            &sdp("bob", 5000, ""),
            LegOptions::default(),
        )
        .unwrap();
    }

    fn local(port: u32) -> SocketAddr {
        SocketAddr::new("127.0.0.1".parse().unwrap(), port as u16)
    }

    #[test]
    fn srtp_stream_goes_to_the_workers_as_worker_flows() {
        let (s, kernel) = sessions_with_kernel_and(true);
        srtp_call_up(&s, "c");
        latch_all(&s, "c", true);
        let t0 = now_ns();
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        let (alice_rx, alice_tx) = match crypto_of(&s, "c", 0) {
            SideCrypto::Terminated { rx, tx } => (rx.to_engine(), tx.to_engine()),
            other => panic!("{other:?}"),
        };
        let q = s.query("c").unwrap();
        let (a, b) = (&q.legs[0].streams[0], &q.legs[1].streams[0]);
        assert!(a.kernel_forwarded && b.kernel_forwarded);
        let st = kernel.0.lock().unwrap();
        // RTP and RTCP, both directions: four WORKER entries, each with its worker context.
        assert_eq!(st.flows.len(), 4);
        assert_eq!(st.worker_flows.len(), 4);
        for (local, v) in &st.flows {
            assert_eq!(v.action(), Some(sluice_relay::xdp::FlowAction::Worker));
            // The worker rewrites; the program only routes with the same addresses.
            let spec = &st.worker_flows[local];
            assert_eq!(v.rewrite(), Some((spec.new_src, spec.new_dst)), "{local}");
        }
        let a_rtp = local(a.local_rtp_port);
        assert_eq!(
            st.flows[&a_rtp].expected_source(),
            Some("127.0.0.10:6000".parse().unwrap())
        );
        // From the SRTP caller: unprotect with its key, nothing to protect towards bob, sent
        // from bob's relay port to bob's latched address.
        let from_a = &st.worker_flows[&a_rtp];
        assert_eq!(from_a.rx.as_ref(), Some(&alice_rx));
        assert_eq!(from_a.tx, None);
        assert_eq!(from_a.new_src, local(b.local_rtp_port));
        assert_eq!(from_a.new_dst, "127.0.0.11:6000".parse().unwrap());
        assert!(!from_a.rtcp_port);
        assert_eq!(
            from_a.fallback.as_ref().unwrap().local_addr().unwrap(),
            local(b.local_rtp_port),
            "sent through a clone of bob's relay socket"
        );
        // From the plain callee: protect with sluice's key for alice.
        let from_b = &st.worker_flows[&local(b.local_rtp_port)];
        assert_eq!(
            (from_b.rx.as_ref(), from_b.tx.as_ref()),
            (None, Some(&alice_tx))
        );
        assert_eq!(from_b.new_dst, "127.0.0.10:6000".parse().unwrap());
        let from_b_rtcp = &st.worker_flows[&local(b.local_rtcp_port)];
        assert!(from_b_rtcp.rtcp_port);
        assert_eq!(from_b_rtcp.new_src, local(a.local_rtcp_port));
        assert_eq!(from_b_rtcp.new_dst, "127.0.0.10:6001".parse().unwrap());
        assert_eq!(
            from_b_rtcp.fallback.as_ref().unwrap().local_addr().unwrap(),
            local(a.local_rtcp_port)
        );
    }

    #[test]
    fn worker_flows_count_what_xdp_handed_over_and_leave_on_reoffer_and_delete() {
        let (s, kernel) = sessions_with_kernel_and(true);
        for c in ["c1", "c2"] {
            srtp_call_up(&s, c);
            latch_all(&s, c, false);
        }
        let t0 = now_ns();
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        {
            let mut st = kernel.0.lock().unwrap();
            assert_eq!((st.flows.len(), st.worker_flows.len()), (4, 4));
            let flows: Vec<(SocketAddr, u32)> =
                st.flows.iter().map(|(l, v)| (*l, v.flow_id())).collect();
            for (l, id) in flows {
                st.counters.insert(
                    id,
                    FlowCounters {
                        to_worker: 50,
                        ..Default::default()
                    },
                );
                st.worker_counters.insert(
                    l,
                    crate::kernel::WorkerFlowCounters {
                        packets: 50,
                        bytes: 50 * 182,
                        forwarded: 50,
                        last_seen_ns: t0 + 30 * SEC,
                        ..Default::default()
                    },
                );
            }
        }
        let q = s.query("c1").unwrap();
        assert_eq!(q.legs[0].streams[0].kernel_packets, 50);
        assert_eq!(q.legs[0].streams[0].kernel_bytes, 50 * 182);
        // Worker-only media keeps the call alive past the timeout of its userspace counters.
        assert!(s.sweep_at(t0 + 62 * SEC).is_empty());
        // A re-offer takes c1 back to userspace: its XDP entries and worker contexts go.
        s.offer(
            "c1",
            "a",
            &savp("alice", 4000, ALICE_KEY),
            opts(SrtpMode::Strip),
        )
        .unwrap();
        {
            let st = kernel.0.lock().unwrap();
            assert_eq!((st.flows.len(), st.worker_flows.len()), (2, 2));
        }
        let q = s.query("c1").unwrap();
        assert!(!q.legs[0].streams[0].kernel_forwarded);
        assert_eq!(
            q.legs[1].streams[0].kernel_packets, 50,
            "kept after removal"
        );
        s.delete("c2", "", "").unwrap();
        {
            let st = kernel.0.lock().unwrap();
            assert_eq!((st.flows.len(), st.worker_flows.len()), (0, 0));
        }
        assert_eq!(s.statistics().kernel_packets, 200);
        s.shutdown();
        assert_eq!(s.lock().flow_ids.in_use(), 0);
    }

    #[test]
    fn srtp_stream_stays_in_userspace_without_workers() {
        let (s, kernel) = sessions_with_kernel_and(false);
        srtp_call_up(&s, "c");
        latch_all(&s, "c", true);
        let t0 = now_ns();
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        assert_eq!(kernel.flow_count().unwrap(), 0);
        assert!(kernel.0.lock().unwrap().worker_flows.is_empty());
        // No duplicate sockets are kept either.
        assert!(
            s.lock().calls["c"].streams[0]
                .sides
                .iter()
                .all(|d| d.sockets.is_none())
        );
    }

    /// A callee that speaks Opus only, with telephone-event at 48 kHz.
    fn opus_sdp(user: &str, port: u16, extra: &str) -> String {
        format!(
            "v=0\r\no={user} 100 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 96 97\r\na=rtpmap:96 opus/48000/2\r\n\
             a=fmtp:96 useinbandfec=1;maxplaybackrate=16000\r\n\
             a=rtpmap:97 telephone-event/48000\r\n{extra}"
        )
    }

    fn endpoints(s: &Sessions, call: &str) -> [EndpointId; 2] {
        let st = s.lock();
        let sides = &st.calls[call].streams[0].sides;
        [sides[0].endpoint, sides[1].endpoint]
    }

    fn plans(plane: &FakePlane) -> HashMap<EndpointId, DirectionPlan> {
        plane.0.lock().unwrap().plans.clone()
    }

    /// PCMU caller, Opus callee.
    fn transcoded_call_up(s: &Sessions, call: &str) -> String {
        let o = s
            .offer(call, "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        let m = &Sdp::parse(&o).unwrap().media[0];
        assert_eq!(m.fmts, ["0", "8", "96", "101", "97"], "{o}");
        s.answer(
            call,
            "a",
            "b",
            &opus_sdp("bob", 5000, "a=ptime:40\r\n"),
            LegOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn opus_encoder_settings_come_from_the_config_capped_by_the_receiver() {
        let plane = FakePlane::default();
        let s = Sessions::new(
            SessionConfig {
                opus_complexity: 0,
                opus_bitrate: 32_000,
                ..test_config(20000, 20999)
            },
            Box::new(plane.clone()),
            None,
        )
        .unwrap();
        transcoded_call_up(&s, "c");
        let [alice, _] = endpoints(&s, "c");
        let towards_bob = plans(&plane)[&alice].opus;
        assert_eq!((towards_bob.complexity, towards_bob.bitrate), (0, 32_000));
        // A callee whose fmtp caps the average bitrate gets no more.
        s.offer("d", "a", &sdp("alice", 4002, ""), LegOptions::default())
            .unwrap();
        s.answer(
            "d",
            "a",
            "b",
            &opus_sdp("bob", 5002, "").replace(
                "maxplaybackrate=16000",
                "maxplaybackrate=16000;maxaveragebitrate=20000",
            ),
            LegOptions::default(),
        )
        .unwrap();
        let [alice, _] = endpoints(&s, "d");
        let towards_bob = plans(&plane)[&alice].opus;
        assert_eq!((towards_bob.complexity, towards_bob.bitrate), (0, 20_000));
    }

    #[test]
    fn transcoding_sends_a_plan_per_endpoint_and_follows_the_codec_clocks() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        let back = transcoded_call_up(&s, "c");
        let back = Sdp::parse(&back).unwrap();
        assert_eq!(back.media[0].fmts, ["0", "101"], "the caller hears of PCMU");
        let [alice, bob] = endpoints(&s, "c");
        let p = plans(&plane);
        let (from_alice, from_bob) = (&p[&alice], &p[&bob]);
        assert_eq!(
            (from_alice.input, from_alice.input_pt, from_alice.output),
            (Codec::Pcmu, 0, Codec::Opus)
        );
        assert_eq!((from_alice.output_pt, from_alice.output_ptime_ms), (96, 40));
        assert_eq!(from_alice.opus.max_playback_rate, Some(16000));
        assert_eq!(from_alice.dtmf.unwrap().out_pt, 97);
        assert_eq!(
            (from_bob.input, from_bob.output, from_bob.output_pt),
            (Codec::Opus, Codec::Pcmu, 0)
        );
        assert_eq!(from_bob.output_ptime_ms, 20);
        assert_ne!(from_alice.ssrc, from_bob.ssrc);
        {
            let st = plane.0.lock().unwrap();
            assert_eq!(st.configured[&alice].0.clock_rate, 8000);
            assert_eq!(st.configured[&bob].0.clock_rate, 48000);
        }
        let q = s.query("c").unwrap();
        let (a, b) = (&q.legs[0].streams[0], &q.legs[1].streams[0]);
        assert!(a.transcoded && b.transcoded);
        assert_eq!((a.codec.as_str(), a.payload_type), ("PCMU/8000", 0));
        assert_eq!((b.codec.as_str(), b.payload_type), ("opus/48000/2", 96));
    }

    #[test]
    fn reoffer_keeps_plans_and_relaying_again_removes_them() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        transcoded_call_up(&s, "c");
        let before = plans(&plane);
        // A session refresh: same SDP, same payload types, plans and SSRCs.
        transcoded_call_up(&s, "c");
        assert_eq!(plans(&plane), before);
        // The callee re-offers with PCMU, and the caller answers PCMU: relayed.
        s.offer("c", "b", &sdp("bob", 5000, ""), LegOptions::default())
            .unwrap();
        assert_eq!(plans(&plane), before, "plans stay until the answer decides");
        s.answer(
            "c",
            "b",
            "a",
            &sdp("alice", 4000, ""),
            LegOptions::default(),
        )
        .unwrap();
        assert!(plans(&plane).is_empty());
        let q = s.query("c").unwrap();
        assert!(!q.legs[0].streams[0].transcoded);
        assert_eq!(q.legs[0].streams[0].codec, "PCMU/8000");
        let [alice, bob] = endpoints(&s, "c");
        let st = plane.0.lock().unwrap();
        assert_eq!(st.configured[&alice].0.clock_rate, 8000);
        assert_eq!(st.configured[&bob].0.clock_rate, 8000);
    }

    #[test]
    fn callee_reoffer_swaps_the_roles() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        transcoded_call_up(&s, "c");
        let before = plans(&plane);
        // Bob re-offers Opus; Alice still only takes PCMU, appended for her.
        let o = s
            .offer("c", "b", &opus_sdp("bob", 5000, ""), LegOptions::default())
            .unwrap();
        assert_eq!(
            Sdp::parse(&o).unwrap().media[0].fmts,
            ["96", "0", "8", "97", "98"]
        );
        let back = s
            .answer(
                "c",
                "b",
                "a",
                &sdp("alice", 4000, ""),
                LegOptions::default(),
            )
            .unwrap();
        assert_eq!(Sdp::parse(&back).unwrap().media[0].fmts, ["96", "97"]);
        let after = plans(&plane);
        let [alice, bob] = endpoints(&s, "c");
        assert_eq!(
            (after[&alice].input, after[&alice].output),
            (Codec::Pcmu, Codec::Opus)
        );
        assert_eq!(
            after[&alice].ssrc, before[&alice].ssrc,
            "SSRCs survive re-offers"
        );
        assert_eq!(after[&bob].ssrc, before[&bob].ssrc);
        // DTMF: alice's telephone-event/8000 (her answer's 101) <-> bob's 97.
        assert_eq!(after[&alice].dtmf.unwrap().in_pt, 101);
        assert_eq!(after[&bob].dtmf.unwrap().out_pt, 101);
    }

    #[test]
    fn delete_removes_plans_and_no_bridge_leaks_nothing() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        let g722 = sdp("bob", 5000, "").replace("RTP/AVP 0 101", "RTP/AVP 9");
        let err = s
            .answer("c", "a", "b", &g722, LegOptions::default())
            .unwrap_err();
        assert!(matches!(err, SessionError::NoCodecBridge(_)), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("G722/8000") && msg.contains("PCMU/8000") && msg.contains("opus"),
            "{msg}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(s.statistics().ports_in_use, 4);
        assert!(plans(&plane).is_empty());
        // The offer still waits for a good answer.
        s.answer(
            "c",
            "a",
            "b",
            &opus_sdp("bob", 5000, ""),
            LegOptions::default(),
        )
        .unwrap();
        assert_eq!(plans(&plane).len(), 2);
        s.delete("c", "", "").unwrap();
        let st = plane.0.lock().unwrap();
        assert!(st.plans.is_empty() && st.live.is_empty());
        drop(st);
        assert_eq!(s.statistics().ports_in_use, 0);
    }

    #[test]
    fn codec_options_mask_strip_off() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        let with = |codecs: CodecOptions| LegOptions {
            codecs,
            ..Default::default()
        };
        let mask = CodecOptions {
            mask: codecs::CodecList::of(&[Codec::Pcmu]),
            ..Default::default()
        };
        let o = s
            .offer("c", "a", &sdp("alice", 4000, ""), with(mask))
            .unwrap();
        assert_eq!(
            Sdp::parse(&o).unwrap().media[0].fmts,
            ["8", "96", "101", "97"]
        );
        // The callee takes PCMA, which alice lacks: PCMU <-> PCMA.
        let pcma = sdp("bob", 5000, "").replace("RTP/AVP 0 101", "RTP/AVP 8 101");
        s.answer("c", "a", "b", &pcma, LegOptions::default())
            .unwrap();
        let [alice, _] = endpoints(&s, "c");
        let p = &plans(&plane)[&alice];
        assert_eq!((p.input, p.output), (Codec::Pcmu, Codec::Pcma));
        assert_eq!(p.dtmf.unwrap().out_pt, 101);

        let off = CodecOptions {
            mode: Some(TranscodeMode::Off),
            ..Default::default()
        };
        let o = s
            .offer("d", "a", &sdp("alice", 4000, ""), with(off))
            .unwrap();
        assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts, ["0", "101"]);
        // Off is plain relaying, as before transcoding existed: the answer is not judged.
        s.answer(
            "d",
            "a",
            "b",
            &opus_sdp("bob", 5000, ""),
            LegOptions::default(),
        )
        .unwrap();
        assert_eq!(plans(&plane).len(), 2, "only call c's");

        let bad = CodecOptions {
            mode: Some(TranscodeMode::Off),
            strip: codecs::CodecList::of(&[Codec::Pcma]),
            ..Default::default()
        };
        let err = s
            .offer("e", "a", &sdp("alice", 4000, ""), with(bad))
            .unwrap_err();
        assert!(matches!(err, SessionError::BadRequest(_)), "{err}");
        assert!(
            s.query("e").is_err(),
            "nothing allocated for a refused offer"
        );
    }

    #[test]
    fn server_default_off_and_srtp_passthrough_leave_the_offer_alone() {
        let plane = FakePlane::default();
        let s = Sessions::new(
            SessionConfig {
                transcode: TranscodeMode::Off,
                ..test_config(20000, 20999)
            },
            Box::new(plane),
            None,
        )
        .unwrap();
        let o = s
            .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts, ["0", "101"]);
        let auto = LegOptions {
            codecs: CodecOptions {
                mode: Some(TranscodeMode::Auto),
                ..Default::default()
            },
            ..Default::default()
        };
        let o = s.offer("d", "a", &sdp("alice", 4000, ""), auto).unwrap();
        assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts.len(), 5);

        let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
        let o = s
            .offer(
                "c",
                "a",
                &savp("alice", 4000, ALICE_KEY),
                LegOptions::default(),
            )
            .unwrap();
        assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts, ["0", "101"]);
        // Terminated SRTP is plain inside sluice: transcodable.
        let o = s
            .offer(
                "d",
                "a",
                &savp("alice", 4000, ALICE_KEY),
                opts(SrtpMode::Strip),
            )
            .unwrap();
        assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts.len(), 5);
    }

    #[test]
    fn transcoded_stream_goes_to_the_workers_never_to_plain_forward() {
        let (s, kernel) = sessions_with_kernel_and(true);
        transcoded_call_up(&s, "c");
        latch_all(&s, "c", true);
        let t0 = now_ns();
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        let q = s.query("c").unwrap();
        assert!(q.legs[0].streams[0].kernel_forwarded);
        let st = kernel.0.lock().unwrap();
        assert_eq!((st.flows.len(), st.worker_flows.len()), (4, 4));
        for v in st.flows.values() {
            assert_eq!(v.action(), Some(sluice_relay::xdp::FlowAction::Worker));
        }
        let from_a = &st.worker_flows[&local(q.legs[0].streams[0].local_rtp_port)];
        let plan = from_a.transcode.as_ref().unwrap();
        assert_eq!((plan.input, plan.output), (Codec::Pcmu, Codec::Opus));
        let from_b = &st.worker_flows[&local(q.legs[1].streams[0].local_rtp_port)];
        assert_eq!(from_b.transcode.as_ref().unwrap().input, Codec::Opus);
        drop(st);

        let (s, kernel) = sessions_with_kernel_and(false);
        transcoded_call_up(&s, "c");
        latch_all(&s, "c", true);
        s.sweep_at(t0 + 11 * SEC);
        s.sweep_at(t0 + 13 * SEC);
        assert_eq!(
            kernel.flow_count().unwrap(),
            0,
            "no workers: stays in userspace"
        );
    }

    const ALICE_KEY: &str =
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";

    fn savp(user: &str, port: u16, crypto: &str) -> String {
        sdp(user, port, crypto).replace("RTP/AVP", "RTP/SAVP")
    }

    fn opts(srtp: SrtpMode) -> LegOptions {
        LegOptions {
            srtp,
            ..Default::default()
        }
    }

    fn crypto_of(s: &Sessions, call: &str, side: usize) -> SideCrypto {
        s.lock().calls[call].streams[0].sides[side].crypto.clone()
    }

    #[test]
    fn srtp_offer_bridges_plain_caller_to_srtp_callee() {
        let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
        let o = s
            .offer("c", "a", &sdp("alice", 4000, ""), opts(SrtpMode::Offer))
            .unwrap();
        let parsed = Sdp::parse(&o).unwrap();
        assert_eq!(parsed.media[0].proto, "RTP/SAVP");
        let offered = parsed.media[0].crypto();
        assert_eq!(offered.len(), 4, "{o}");
        assert_eq!(offered[0].suite, "AES_CM_128_HMAC_SHA1_80");
        // The callee picks the GCM line (tag 3) and answers with its own key.
        let bob = SdesKey::generate(3, crate::sdes::Suite::AeadAes128Gcm);
        let ans_line = format!("a={}:{}\r\n", "crypto", bob.to_attribute().value.unwrap());
        let ans = s
            .answer(
                "c",
                "a",
                "b",
                &savp("bob", 5000, &ans_line),
                LegOptions::default(),
            )
            .unwrap();
        let back = Sdp::parse(&ans).unwrap();
        assert_eq!(back.media[0].proto, "RTP/AVP");
        assert!(back.media[0].crypto().is_empty());
        assert_eq!(crypto_of(&s, "c", 0), SideCrypto::Plain);
        match crypto_of(&s, "c", 1) {
            SideCrypto::Terminated { rx, tx } => {
                assert_eq!(rx, bob);
                assert_eq!(tx.tag, 3);
                assert_eq!(SdesKey::from_crypto(&offered[2]).unwrap(), tx);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn srtp_strip_terminates_the_callers_srtp() {
        let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
        let o = s
            .offer(
                "c",
                "a",
                &savp("alice", 4000, ALICE_KEY),
                opts(SrtpMode::Strip),
            )
            .unwrap();
        let parsed = Sdp::parse(&o).unwrap();
        assert_eq!(parsed.media[0].proto, "RTP/AVP");
        assert!(parsed.media[0].crypto().is_empty());
        let ans = s
            .answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
            .unwrap();
        let back = Sdp::parse(&ans).unwrap();
        assert_eq!(back.media[0].proto, "RTP/SAVP");
        let ours = back.media[0].crypto();
        assert_eq!(ours.len(), 1);
        let ours = SdesKey::from_crypto(&ours[0]).unwrap();
        let alice = SdesKey::from_crypto(
            &crate::sdp::Crypto::parse(&ALICE_KEY[9..ALICE_KEY.len() - 2]).unwrap(),
        )
        .unwrap();
        assert_eq!((ours.tag, ours.suite), (alice.tag, alice.suite));
        assert_ne!(ours.key, alice.key, "sluice keys its own direction");
        assert_eq!(
            crypto_of(&s, "c", 0),
            SideCrypto::Terminated {
                rx: alice,
                tx: ours.clone()
            }
        );
        // A session refresh keeps sluice's key.
        s.offer(
            "c",
            "a",
            &savp("alice", 4000, ALICE_KEY),
            opts(SrtpMode::Strip),
        )
        .unwrap();
        let again = s
            .answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
            .unwrap();
        let again =
            SdesKey::from_crypto(&Sdp::parse(&again).unwrap().media[0].crypto()[0]).unwrap();
        assert_eq!(again, ours);
    }

    #[test]
    fn srtp_passes_through_untouched_by_default() {
        let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
        let o = s
            .offer(
                "c",
                "a",
                &savp("alice", 4000, ALICE_KEY),
                LegOptions::default(),
            )
            .unwrap();
        assert!(o.contains(ALICE_KEY), "{o}");
        let bob = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3\r\n";
        let ans = s
            .answer(
                "c",
                "a",
                "b",
                &savp("bob", 5000, bob),
                LegOptions::default(),
            )
            .unwrap();
        assert!(ans.contains(bob), "{ans}");
        assert_eq!(crypto_of(&s, "c", 0), SideCrypto::Passthrough);
        assert_eq!(crypto_of(&s, "c", 1), SideCrypto::Passthrough);
    }

    #[test]
    fn srtp_errors_say_what_is_wrong() {
        let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
        let err = s
            .offer("c", "a", &sdp("alice", 4000, ""), opts(SrtpMode::Require))
            .unwrap_err();
        assert!(err.to_string().contains("REQUIRE"), "{err}");
        assert!(
            s.query("c").is_err(),
            "nothing allocated for a refused offer"
        );
        let f8 =
            "a=crypto:1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
        let err = s
            .offer("c", "a", &savp("alice", 4000, f8), opts(SrtpMode::Strip))
            .unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        s.offer("c", "a", &sdp("alice", 4000, ""), opts(SrtpMode::Offer))
            .unwrap();
        let wrong_tag = "a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
        let err = s
            .answer(
                "c",
                "a",
                "b",
                &savp("bob", 5000, wrong_tag),
                LegOptions::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("matches no key"), "{err}");
        let two = format!("{ALICE_KEY}{wrong_tag}");
        let err = s
            .answer(
                "c",
                "a",
                "b",
                &savp("bob", 5000, &two),
                LegOptions::default(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
        let dtls = sdp("alice", 4000, "").replace("RTP/AVP", "UDP/TLS/RTP/SAVPF");
        let err = s.offer("d", "a", &dtls, opts(SrtpMode::Strip)).unwrap_err();
        assert!(err.to_string().contains("DTLS"), "{err}");
    }

    #[test]
    fn an_answer_needing_transcoding_on_srtp_sluice_cannot_decrypt_is_refused() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        // A plain PCMU caller: sluice appends opus. The callee answers opus over SRTP keyed
        // end to end (no `srtp` option), which sluice could not decrypt to transcode.
        s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        let answer = opus_sdp("bob", 5000, ALICE_KEY).replace("RTP/AVP", "RTP/SAVP");
        let err = s
            .answer("c", "a", "b", &answer, LegOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("cannot decrypt"), "{err}");
        assert!(plans(&plane).is_empty(), "no transcoder was set up");
    }

    /// Loopback media, ports `low..=high`, 60 s timeout, transcoding on demand, the daemon's
    /// Opus defaults.
    fn test_config(low: u16, high: u16) -> SessionConfig {
        SessionConfig {
            media_ips: vec!["127.0.0.1".parse().unwrap()],
            port_low: low,
            port_high: high,
            timeout: Duration::from_secs(60),
            transcode: TranscodeMode::Auto,
            opus_complexity: sluice_relay::transcode::DEFAULT_OPUS_COMPLEXITY,
            opus_bitrate: sluice_relay::transcode::OpusParams::default().bitrate,
        }
    }

    fn sessions(low: u16, high: u16, timeout: Duration) -> (Arc<Sessions>, FakePlane) {
        let plane = FakePlane::default();
        let s = Sessions::new(
            SessionConfig {
                media_ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
                timeout,
                ..test_config(low, high)
            },
            Box::new(plane.clone()),
            None,
        )
        .unwrap();
        (s, plane)
    }

    fn sdp(user: &str, port: u16, extra: &str) -> String {
        format!(
            "v=0\r\no={user} 100 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n{extra}"
        )
    }

    fn port_of(sdp: &str) -> u16 {
        let s = Sdp::parse(sdp).unwrap();
        s.media[0].port
    }

    #[test]
    fn offer_answer_rewrites_addresses_and_pairs_endpoints() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        let o = s
            .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        let offer_port = port_of(&o);
        assert_eq!(offer_port % 2, 0);
        assert!((20000..=20999).contains(&offer_port));
        assert!(o.contains(&format!("a=rtcp:{} IN IP4 127.0.0.1", offer_port + 1)));
        let ans = s
            .answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
            .unwrap();
        let answer_port = port_of(&ans);
        assert_ne!(offer_port, answer_port);
        let st = plane.0.lock().unwrap();
        assert_eq!(st.live.len(), 2);
        // Each endpoint's partner is the other, and each knows its own SDP address.
        let peers: Vec<_> = st
            .configured
            .values()
            .map(|(c, sig)| (c.partner.is_some(), sig.unwrap().sdp_rtp.unwrap().port()))
            .collect();
        assert!(peers.contains(&(true, 4000)) && peers.contains(&(true, 5000)));
    }

    #[test]
    fn reoffer_keeps_ports_and_versions_follow_changes() {
        let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
        let first = s
            .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        let same = s
            .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        assert_eq!(port_of(&first), port_of(&same));
        let v = |t: &str| Sdp::parse(t).unwrap().origin.session_version;
        assert_eq!(v(&first), v(&same), "identical re-offer keeps the version");
        let changed = s
            .offer(
                "c",
                "a",
                &sdp("alice", 4000, "a=sendonly\r\n"),
                LegOptions::default(),
            )
            .unwrap();
        assert_eq!(port_of(&first), port_of(&changed));
        assert_eq!(v(&changed), v(&first) + 1);
    }

    #[test]
    fn hold_sets_direction_flags() {
        let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
        s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        s.answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
            .unwrap();
        s.offer(
            "c",
            "a",
            &sdp("alice", 4000, "a=sendonly\r\n"),
            LegOptions::default(),
        )
        .unwrap();
        s.answer(
            "c",
            "a",
            "b",
            &sdp("bob", 5000, "a=recvonly\r\n"),
            LegOptions::default(),
        )
        .unwrap();
        let st = plane.0.lock().unwrap();
        let by_port = |p: u16| {
            st.configured
                .values()
                .find(|(_, sig)| sig.unwrap().sdp_rtp.unwrap().port() == p)
                .unwrap()
                .0
        };
        let (alice, bob) = (by_port(4000), by_port(5000));
        assert!(alice.sends && !alice.receives);
        assert!(!bob.sends && bob.receives);
    }

    #[test]
    fn errors_name_the_problem() {
        let (s, _) = sessions(20000, 20003, Duration::from_secs(60));
        let err = s
            .offer("c", "a", "v=0\r\nbogus\r\n", LegOptions::default())
            .unwrap_err();
        assert!(
            matches!(err, SessionError::BadSdp(ref e) if e.line == 2),
            "{err}"
        );
        let err = s
            .offer("", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("call_id is required"));
        assert!(matches!(
            s.answer("x", "a", "b", &sdp("bob", 5000, ""), LegOptions::default()),
            Err(SessionError::NotFound(_))
        ));
        // 20000-20003 holds two pairs: exactly one stream.
        s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        let err = s
            .offer("d", "a", &sdp("alice", 4002, ""), LegOptions::default())
            .unwrap_err();
        assert!(matches!(err, SessionError::NoPorts(_)), "{err}");
        assert!(
            s.query("d").is_err(),
            "a failed offer leaves no call behind"
        );
        let err = s
            .offer("c", "zz", &sdp("mallory", 4000, ""), LegOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("matches neither"), "{err}");
        let two = format!(
            "{}m=video 5002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
            sdp("bob", 5000, "")
        );
        let err = s
            .answer("c", "a", "b", &two, LegOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("RFC 3264"), "{err}");
        let opts = LegOptions {
            rtcp_mux: RtcpMuxMode::Require,
            ..Default::default()
        };
        let err = s
            .answer("c", "a", "b", &sdp("bob", 5000, ""), opts)
            .unwrap_err();
        assert!(err.to_string().contains("rtcp-mux"), "{err}");
    }

    #[test]
    fn ipv6_relay_address_by_option() {
        let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
        let opts = LegOptions {
            family: Family::V6,
            ..Default::default()
        };
        let o = s.offer("c", "a", &sdp("alice", 4000, ""), opts).unwrap();
        let parsed = Sdp::parse(&o).unwrap();
        assert_eq!(
            parsed.media_connection(0),
            Some("::1".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn timeout_sweep_deletes_idle_calls() {
        let (s, plane) = sessions(20000, 20999, Duration::ZERO);
        let mut ev = s.subscribe();
        s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
        assert_eq!(s.sweep(), vec!["c".to_string()]);
        assert!(plane.0.lock().unwrap().live.is_empty());
        let st = s.statistics();
        assert_eq!((st.ports_in_use, st.calls_timed_out), (0, 1));
        assert_eq!(ev.try_recv().unwrap().kind, EventKind::CallCreated);
        assert_eq!(ev.try_recv().unwrap().kind, EventKind::TimedOut);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Offer {
            call: u8,
            streams: u8,
            reoffer_from_callee: bool,
        },
        Answer {
            call: u8,
        },
        Delete {
            call: u8,
        },
        Sweep,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 1u8..3, any::<bool>()).prop_map(|(call, streams, r)| Op::Offer {
                call,
                streams,
                reoffer_from_callee: r
            }),
            (0u8..4).prop_map(|call| Op::Answer { call }),
            (0u8..4).prop_map(|call| Op::Delete { call }),
            Just(Op::Sweep),
        ]
    }

    fn multi(user: &str, streams: u8) -> String {
        let mut s = sdp(user, 4000, "");
        for k in 1..streams {
            s.push_str(&format!(
                "m=video {} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
                4000 + 2 * k as u16
            ));
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// No port or endpoint leaks across any offer/answer/delete/timeout sequence, including
        /// failures from exhaustion (the tiny range runs out often).
        #[test]
        fn no_port_leaks(ops in proptest::collection::vec(op(), 1..40), timeout_zero in any::<bool>()) {
            let timeout = if timeout_zero { Duration::ZERO } else { Duration::from_secs(3600) };
            let (s, plane) = sessions(21000, 21023, timeout);
            for op in ops {
                match op {
                    Op::Offer { call, streams, reoffer_from_callee } => {
                        let tag = if reoffer_from_callee { "b" } else { "a" };
                        let _ = s.offer(&format!("c{call}"), tag, &multi("x", streams), LegOptions::default());
                    }
                    Op::Answer { call } => {
                        let _ = s.answer(&format!("c{call}"), "a", "b", &multi("y", 1), LegOptions::default());
                    }
                    Op::Delete { call } => { let _ = s.delete(&format!("c{call}"), "", ""); }
                    Op::Sweep => { s.sweep(); }
                }
                // Every stream holds two pairs (4 ports) and two endpoints, nothing else.
                let streams: usize = s.list(0).iter().map(|id| s.query(id).unwrap().legs[0].streams.len()).sum();
                let st = s.statistics();
                prop_assert_eq!(st.ports_in_use as usize, streams * 4);
                prop_assert_eq!(plane.0.lock().unwrap().live.len(), streams * 2);
            }
            for id in s.list(0) { s.delete(&id, "", "").unwrap(); }
            let st = s.statistics();
            prop_assert_eq!(st.ports_in_use, 0);
            prop_assert!(plane.0.lock().unwrap().live.is_empty());
        }
    }
}
