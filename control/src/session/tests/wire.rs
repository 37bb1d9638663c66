//! Whole calls on a simulated wire: two fake phones, the session layer, the relay's per-stream
//! cores and the AF_XDP workers' transforms, a virtual network with latency, loss and reordering,
//! and the [`ManualClock`] of [`Sim`], advanced a millisecond at a time. In the style of quinn's
//! `Pair`: nothing opens a media socket, sleeps or reads the system clock, and a seed fixes
//! everything, so the cases that are hard to reach on a real network (a latching race, an SRTP
//! rollover under reordering, a stream moving between the engine and a worker in mid-call) run
//! in milliseconds and the same way every time.
//!
//! ```text
//!  Phone A --net--> relay address --+-- XDP entry? --+-- worker flow: worker_transform(spec)
//!                                   |                +-- plain XDP: rewrite and forward
//!                                   +-- engine: StreamCore of the endpoint --net--> Phone B
//! ```
//!
//! Why here and not in the relay crate: the commands that build the cores come from the session
//! layer (offer/answer, SDES keys, transcoding plans, when a stream moves to the workers and
//! back), and only this crate has it. What the harness plays:
//! - the engine thread ([`Relay`] behind [`WirePlane`]): each [`Command`] the sessions send
//!   builds, updates or removes a real [`StreamCore`] the way `engine.rs` does (HandOver and
//!   Resume included), and each datagram runs through it as a batch of one (receive, latching and
//!   counts published, the transcoder pumped). The engine's `Endpoint` is tied to its mio
//!   sockets, so this is a mirror of its command and batch handling, not the same code; the
//!   per-packet steps are the same code.
//! - the kernel path ([`WireKernel`]): the XDP flow map (strict source, plain rewrite) and the
//!   worker flows, whose transforms `kernel::worker_transform` builds from the session layer's
//!   `WorkerFlowSpec` exactly as the real workers get them (resumed from the engine's
//!   `StreamHandover`), and which hand their state back when removed.
//! - the daemon: a sweep every 500 ms of simulated time, engine events fed back.
//! - a move's overlap ([`Relay::straggle_ns`]): after a stream moves to the workers, the engine
//!   goes on for a while with what reaches its socket (its grace period after HandOver); that is
//!   what the handover margins are for, and the tests fail without them. A worker flow stops
//!   at once when removed: the worker confirms and hands back where it stood.
//!
//! The session layer still binds its relay sockets (port allocation is real); no media goes
//! through them. Kernel flow counters read as zero: calls here are shorter than the timeout.

use super::sim::{Sim, addr, port_of, sdp_at};
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_relay::codec::opus::{MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder};
use sluice_relay::engine::HANDOVER_GRACE;
use sluice_relay::handover::{EndpointState, FlowHandover, StreamHandover};
use sluice_relay::rtp::RtpPacket;
use sluice_relay::srtp::{MAX_RTCP_OVERHEAD, SrtpConfig, SrtpContext, SrtpError, SrtpKeys};
use sluice_relay::stats::EndpointCounters;
use sluice_relay::stream_core::{self, Datagram, Dropped, Egress, LossReport, StreamCore, Verdict};
use sluice_relay::transcode::DirectionPlan;
use sluice_relay::worker::{MAX_GROWTH, Transform, TransformError};
use sluice_relay::xdp::FlowValue;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

const MS: u64 = 1_000_000;
/// Receive buffers, as the engine's: room for the SRTP growth after the datagram.
const BUF_LEN: usize = 2048;
/// The relay's media address (`test_config`).
const RELAY_IP: &str = "127.0.0.1";

fn to_relay(a: SocketAddr) -> bool {
    a.ip().to_string() == RELAY_IP
}

/// A datagram on the simulated network.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// The engine's per-endpoint state (see `engine.rs`'s `Endpoint`), without sockets.
struct Ep {
    id: EndpointId,
    cfg: EndpointConfig,
    core: StreamCore,
    rx_keys: Option<SrtpKeys>,
    /// Protects what is sent to this endpoint (lent to the partner's batches).
    tx: Option<Box<SrtpContext>>,
    tx_keys: Option<SrtpKeys>,
    counters: Arc<EndpointCounters>,
    state: Arc<EndpointState>,
    /// The relay addresses of its sockets.
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
    pooled: bool,
    started: bool,
    /// `engine.rs`: when the engine answered HandOver, until Resume.
    handed_over_at: Option<u64>,
}

impl Ep {
    /// `engine.rs` `Endpoint::handover`.
    fn handover(&self) -> StreamHandover {
        self.core.handover(self.tx.as_deref())
    }

    /// `engine.rs` `Endpoint::resume`.
    fn resume(&mut self, h: &StreamHandover) {
        self.handed_over_at = None;
        let _ = self.core.resume(h, self.tx.as_deref_mut());
    }

    /// `engine.rs` `Endpoint::moved_away`, on the simulated clock.
    fn moved_away(&self, now: u64) -> bool {
        self.handed_over_at
            .is_some_and(|t| now.saturating_sub(t) > HANDOVER_GRACE.as_nanos() as u64)
    }

    fn new(
        id: EndpointId,
        cfg: EndpointConfig,
        counters: Arc<EndpointCounters>,
        state: Arc<EndpointState>,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
    ) -> Ep {
        let mut core = StreamCore::default();
        core.latching = Some(stream_core::Latching::new(cfg.latch));
        core.observe = Some(stream_core::Observe::new(cfg.clock_rate, 4));
        core.sends = cfg.sends;
        Ep {
            id,
            cfg,
            core,
            rx_keys: None,
            tx: None,
            tx_keys: None,
            counters,
            state,
            rtp,
            rtcp,
            pooled: false,
            started: false,
            handed_over_at: None,
        }
    }

    /// What a partner's batch needs of this endpoint: (relay address it leaves from, where it
    /// goes).
    fn egress(&self) -> Egress<(SocketAddr, SocketAddr)> {
        let (rtcp_from, rtcp_peer) = if self.cfg.rtcp_mux {
            (self.rtp, self.core.rtp_peer())
        } else {
            (self.rtcp.unwrap_or(self.rtp), self.core.rtcp_peer())
        };
        Egress {
            rtp: self.core.rtp_peer().map(|a| (self.rtp, a)),
            rtcp: rtcp_peer.map(|a| (rtcp_from, a)),
            receives: self.cfg.receives,
            srtp: self.tx.is_some(),
            loss_report: self
                .core
                .transcoder
                .as_ref()
                .map_or(LossReport::Ignore, |t| LossReport::About(t.plan().ssrc)),
        }
    }
}

/// A worker flow: the transform the session layer's spec built, and where it sends.
struct WorkerFlow {
    transform: Transform,
    new_src: SocketAddr,
    new_dst: SocketAddr,
}

impl WorkerFlow {
    fn receive(&mut self, bytes: &[u8], now: u64, drops: &mut Vec<TransformError>) -> Vec<Packet> {
        let mut buf = bytes.to_vec();
        buf.resize(bytes.len() + MAX_GROWTH, 0);
        match &mut self.transform {
            Transform::Identity => vec![self.out(buf)],
            Transform::Custom(t) => match t.apply(&mut buf, bytes.len(), now) {
                Ok(n) => {
                    buf.truncate(n);
                    vec![self.out(buf)]
                }
                Err(e) => {
                    drops.push(e);
                    Vec::new()
                }
            },
            Transform::Stream(t) => {
                if let Err(e) = t.push(bytes, now) {
                    drops.push(e);
                }
                self.pull()
            }
        }
    }

    fn pull(&mut self) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Transform::Stream(t) = &mut self.transform {
            let mut buf = vec![0; BUF_LEN];
            let Some(n) = t.pull(&mut buf) else { break };
            buf.truncate(n);
            out.push(buf);
        }
        out.into_iter().map(|b| self.out(b)).collect()
    }

    fn timers(&mut self, now: u64) -> Vec<Packet> {
        match &mut self.transform {
            Transform::Stream(t) if t.poll_timeout().is_some_and(|d| d <= now) => {
                t.handle_timeout(now);
                self.pull()
            }
            _ => Vec::new(),
        }
    }

    fn out(&self, bytes: Vec<u8>) -> Packet {
        Packet {
            from: self.new_src,
            to: self.new_dst,
            bytes,
        }
    }
}

/// Which path handled the datagrams that reached the relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Handled {
    engine: u64,
    worker: u64,
    xdp: u64,
    /// Dropped by the XDP program's strict source check.
    xdp_wrong_source: u64,
    /// To a relay address nobody holds.
    nowhere: u64,
    /// Of `engine` and `worker`: handled by the old owner of a stream that had moved.
    straggled: u64,
}

/// The relay: the engine's endpoints and the kernel path's flows, shared by [`WirePlane`] and
/// [`WireKernel`] (the sessions drive both) and by the network (which feeds it datagrams).
#[derive(Default)]
struct Relay {
    eps: HashMap<EndpointId, Ep>,
    /// Relay address -> (endpoint, separate RTCP port).
    ports: HashMap<SocketAddr, (EndpointId, bool)>,
    xdp: HashMap<SocketAddr, FlowValue>,
    workers: HashMap<SocketAddr, WorkerFlow>,
    has_workers: bool,
    /// How long the old owner of a stream that moved goes on with what was already queued for
    /// it (a socket's receive queue, a worker's RX ring) after the new owner read the handover.
    straggle_ns: u64,
    /// When each worker flow was added.
    added_at: HashMap<SocketAddr, u64>,
    /// The time of the current tick (the kernel path is told nothing else).
    now: u64,
    handled: Handled,
    /// Every drop of the engine's cores, with the endpoint whose packet it was.
    engine_drops: Vec<(EndpointId, Dropped)>,
    worker_drops: Vec<TransformError>,
    /// For the sessions, once the relay lock is released.
    events: Vec<EngineEvent>,
}

/// `engine.rs` `set_transcode`, with a first sequence number from the endpoint id instead of
/// the system's random source.
fn set_transcode(ep: &mut Ep, plan: Option<DirectionPlan>) {
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
        .map_or(1000 + ep.id.0 as u16, |t| t.next_out_seq());
    let _ = ep.core.start_transcoder(&plan, seq);
}

/// `engine.rs` `rekey`: unchanged keys keep their context.
fn rekey(cur: &mut Option<SrtpKeys>, ctx: &mut Option<Box<SrtpContext>>, keys: Option<SrtpKeys>) {
    match keys {
        None => (*cur, *ctx) = (None, None),
        Some(k) if cur.as_ref() == Some(&k) && ctx.is_some() => {}
        Some(k) => {
            let c = SrtpContext::new(k.profile, &k.master, SrtpConfig::default()).unwrap();
            (*cur, *ctx) = (Some(k), Some(Box::new(c)));
        }
    }
}

impl Relay {
    /// What the engine thread does with a command (`Engine::apply`).
    fn apply(&mut self, cmd: &Command, now: u64) {
        match cmd {
            Command::Add {
                id,
                rtp,
                rtcp,
                config,
                counters,
                state,
            } => {
                let rtp = rtp.local_addr().unwrap();
                let rtcp = rtcp.as_ref().map(|s| s.local_addr().unwrap());
                self.add(*id, *config, counters.clone(), state.clone(), rtp, rtcp);
            }
            Command::Reuse {
                pooled,
                id,
                config,
                counters,
                state,
            } => {
                let old = self.eps.remove(pooled).expect("reuse of a known endpoint");
                self.add(
                    *id,
                    *config,
                    counters.clone(),
                    state.clone(),
                    old.rtp,
                    old.rtcp,
                );
            }
            Command::Configure {
                id,
                config,
                signalling,
            } => {
                let ep = self.eps.get_mut(id).expect("configure of a known endpoint");
                ep.cfg = *config;
                ep.core.sends = config.sends;
                let l = ep.core.latching.as_mut().unwrap();
                l.set_config(config.latch);
                if let Some(sig) = signalling {
                    l.rtp.signalling(sig.sdp_rtp, now);
                    l.rtcp.signalling(sig.sdp_rtcp, now);
                    l.rtp.signalling_from(sig.source_ip);
                    l.rtcp.signalling_from(sig.source_ip);
                }
                ep.state.set_latched(false, l.rtp.latched());
                ep.state.set_latched(true, l.rtcp.latched());
            }
            Command::SetSrtp { id, rx, tx } => {
                let ep = self.eps.get_mut(id).expect("keys of a known endpoint");
                rekey(&mut ep.rx_keys, &mut ep.core.srtp_rx, rx.clone());
                rekey(&mut ep.tx_keys, &mut ep.tx, tx.clone());
            }
            Command::SetTranscode { id, plan } => {
                let ep = self.eps.get_mut(id).expect("plan of a known endpoint");
                set_transcode(ep, plan.clone());
            }
            Command::Remove { id } => {
                let ep = self.eps.remove(id).expect("remove of a known endpoint");
                self.ports.retain(|_, (e, _)| *e != ep.id);
            }
            Command::Pool { id } => {
                let ep = self.eps.get_mut(id).expect("pooling of a known endpoint");
                ep.pooled = true;
                ep.cfg.partner = None;
                ep.core.srtp_rx = None;
                ep.rx_keys = None;
                ep.tx = None;
                ep.tx_keys = None;
                ep.core.transcoder = None;
            }
            Command::Resume { id, handover } => {
                let ep = self.eps.get_mut(id).expect("resume of a known endpoint");
                ep.resume(handover);
            }
            Command::HandOver { .. } => unreachable!("handovers go through MediaPlane::hand_over"),
            Command::Shutdown => {}
        }
    }

    /// `engine.rs`'s answer to HandOver.
    fn hand_over(&mut self, id: EndpointId, now: u64) -> StreamHandover {
        let ep = self.eps.get_mut(&id).expect("handover of a known endpoint");
        ep.handed_over_at = Some(now);
        ep.handover()
    }

    fn add(
        &mut self,
        id: EndpointId,
        cfg: EndpointConfig,
        counters: Arc<EndpointCounters>,
        state: Arc<EndpointState>,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
    ) {
        self.ports.insert(rtp, (id, false));
        if let Some(r) = rtcp {
            self.ports.insert(r, (id, true));
        }
        let ep = Ep::new(id, cfg, counters, state, rtp, rtcp);
        assert!(self.eps.insert(id, ep).is_none(), "{id} added twice");
    }

    /// A datagram reaching relay address `to`: the XDP program looks first (its flow map), then
    /// a worker or the engine has it.
    fn receive(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8], now: u64) -> Vec<Packet> {
        if let Some(v) = self.xdp.get(&to).copied() {
            if v.expected_source().is_some_and(|e| e != from) {
                self.handled.xdp_wrong_source += 1;
                return Vec::new();
            }
            if let Some(w) = self.workers.get_mut(&to) {
                // Until the old owner is through with what was queued for it.
                if now >= self.added_at[&to] + self.straggle_ns {
                    self.handled.worker += 1;
                    return w.receive(bytes, now, &mut self.worker_drops);
                }
                self.handled.straggled += 1;
            } else if let Some((src, dst)) = v.rewrite() {
                self.handled.xdp += 1;
                return vec![Packet {
                    from: src,
                    to: dst,
                    bytes: bytes.to_vec(),
                }];
            }
        }
        let Some(&(id, rtcp_port)) = self.ports.get(&to) else {
            self.handled.nowhere += 1;
            return Vec::new();
        };
        self.handled.engine += 1;
        let mut ep = self.eps.remove(&id).expect("ports name live endpoints");
        let out = self.engine_batch(&mut ep, from, rtcp_port, bytes, now);
        self.eps.insert(id, ep);
        out
    }

    /// `Engine::read_socket` and `process_batch` for a batch of one datagram.
    fn engine_batch(
        &mut self,
        ep: &mut Ep,
        from: SocketAddr,
        rtcp_port: bool,
        bytes: &[u8],
        now: u64,
    ) -> Vec<Packet> {
        if ep.pooled || ep.moved_away(now) {
            ep.counters.dropped_no_peer.add(1);
            return Vec::new();
        }
        let mut partner = ep
            .cfg
            .partner
            .and_then(|p| self.eps.get_mut(&p))
            .filter(|p| !p.pooled);
        let egress = partner.as_deref().map(Ep::egress);
        let mut tx = match (&mut partner, egress) {
            (Some(p), Some(e)) if e.srtp => p.tx.take(),
            _ => None,
        };
        let mut buf = bytes.to_vec();
        buf.resize(bytes.len() + MAX_RTCP_OVERHEAD, 0);
        let v = ep.core.receive(
            Datagram {
                buf: &mut buf,
                len: bytes.len(),
                src: Some(from),
                now_ns: now,
                rtcp_port,
            },
            egress.as_ref(),
            tx.as_deref_mut(),
        );
        let mut out = Vec::new();
        match v {
            Verdict::Forward {
                len,
                to: (src, dst),
                ..
            } => {
                buf.truncate(len);
                out.push(Packet {
                    from: src,
                    to: dst,
                    bytes: buf,
                });
            }
            Verdict::Drop(d) => self.engine_drops.push((ep.id, d)),
            Verdict::Transcoder { .. } => {}
        }
        for rtcp in [false, true] {
            if let Some(a) = ep.core.take_latched(rtcp) {
                ep.state.set_latched(rtcp, Some(a));
            }
        }
        if let Some(f) = ep.core.take_reported_loss() {
            ep.state.report_loss(f);
        }
        let accepted = ep.core.tally.packets > 0;
        ep.core.tally.flush_into(&ep.counters);
        if accepted {
            ep.counters.last_packet_ns.store(now, Relaxed);
        }
        if !ep.started && ep.counters.packets.load(Relaxed) > 0 {
            ep.started = true;
            self.events.push(EngineEvent::MediaStarted { id: ep.id });
        }
        if let Some(p) = partner {
            if let Some(t) = tx.take() {
                p.tx = Some(t);
            }
            if let (Some(pct), Some(t)) = (
                ep.state.reported_loss_pct(),
                p.core.transcoder.as_deref_mut(),
            ) {
                t.set_expected_loss(pct);
            }
        }
        if ep.core.transcoder.is_some() {
            out.extend(self.pump(ep, None));
        }
        out
    }

    /// `Engine::pump_transcoder` and `drain_transcoded`: what the transcoder has ready, after
    /// its timers when `timeout` is set.
    fn pump(&mut self, ep: &mut Ep, timeout: Option<u64>) -> Vec<Packet> {
        let mut partner = ep
            .cfg
            .partner
            .and_then(|p| self.eps.get_mut(&p))
            .filter(|p| !p.pooled);
        let egress = partner.as_deref().map(Ep::egress);
        let mut tx = match (&mut partner, egress) {
            (Some(p), Some(e)) if e.srtp => p.tx.take(),
            _ => None,
        };
        let mut out = Vec::new();
        if let Some(t) = ep.core.transcoder.as_deref_mut() {
            if let Some(now) = timeout {
                t.handle_timeout(now);
            }
            loop {
                let mut buf = vec![0; BUF_LEN];
                let room = BUF_LEN - MAX_RTCP_OVERHEAD;
                match ep
                    .core
                    .pull(&mut buf, room, egress.as_ref(), tx.as_deref_mut())
                {
                    None => break,
                    Some(Verdict::Forward {
                        len,
                        to: (src, dst),
                        ..
                    }) => {
                        buf.truncate(len);
                        out.push(Packet {
                            from: src,
                            to: dst,
                            bytes: buf,
                        });
                    }
                    Some(Verdict::Drop(d)) => self.engine_drops.push((ep.id, d)),
                    Some(Verdict::Transcoder { .. }) => {}
                }
            }
            ep.core.tally.flush_into(&ep.counters);
            let t = ep.core.transcoder.as_deref().unwrap();
            ep.counters
                .publish_transcoder(t, &mut ep.core.transcode_published);
        }
        if let (Some(p), Some(t)) = (partner, tx) {
            p.tx = Some(t);
        }
        out
    }

    /// The transcoders' reorder windows that expired, in the engine and the workers.
    fn timers(&mut self, now: u64) -> Vec<Packet> {
        let mut out = Vec::new();
        let mut due: Vec<EndpointId> = self
            .eps
            .values()
            // The engine stops an endpoint's timers when it hands it over.
            .filter(|ep| ep.handed_over_at.is_none())
            .filter(|ep| {
                ep.core
                    .transcoder
                    .as_ref()
                    .and_then(|t| t.poll_timeout())
                    .is_some_and(|t| t <= now)
            })
            .map(|ep| ep.id)
            .collect();
        due.sort();
        for id in due {
            let mut ep = self.eps.remove(&id).unwrap();
            out.extend(self.pump(&mut ep, Some(now)));
            self.eps.insert(id, ep);
        }
        let mut locals: Vec<SocketAddr> = self.workers.keys().copied().collect();
        locals.sort();
        for l in locals {
            out.extend(self.workers.get_mut(&l).unwrap().timers(now));
        }
        out
    }
}

/// The engine thread, as the sessions see it: every command goes to the [`Relay`] and to the
/// recording plane (whose bookkeeping and leak checks the other tests use).
struct WirePlane {
    fake: FakePlane,
    relay: Arc<Mutex<Relay>>,
    clock: ManualClock,
}

impl MediaPlane for WirePlane {
    fn send(&mut self, cmd: Command) -> Result<(), EngineGone> {
        self.relay.lock().unwrap().apply(&cmd, self.clock.now_ns());
        self.fake.send(cmd)
    }

    fn hand_over(&mut self, id: EndpointId) -> Result<StreamHandover, EngineGone> {
        let h = self
            .relay
            .lock()
            .unwrap()
            .hand_over(id, self.clock.now_ns());
        self.fake.hand_over(id)?;
        Ok(h)
    }
}

/// The XDP program and the AF_XDP workers.
struct WireKernel(Arc<Mutex<Relay>>);

impl KernelPath for WireKernel {
    fn install(&mut self, local: SocketAddr, value: FlowValue) -> crate::kernel::KResult<()> {
        self.0.lock().unwrap().xdp.insert(local, value);
        Ok(())
    }
    fn remove(&mut self, local: SocketAddr) -> crate::kernel::KResult<()> {
        let mut r = self.0.lock().unwrap();
        r.xdp.remove(&local).map(|_| ()).ok_or("no flow".into())
    }
    fn counters(&self, _: u32) -> crate::kernel::KResult<sluice_relay::xdp::FlowCounters> {
        Ok(Default::default())
    }
    fn reset_counters(&mut self, _: u32) -> crate::kernel::KResult<()> {
        Ok(())
    }
    fn flow_count(&self) -> crate::kernel::KResult<usize> {
        Ok(self.0.lock().unwrap().xdp.len())
    }
    fn describe(&self) -> String {
        "simulated".into()
    }
    fn has_workers(&self) -> bool {
        self.0.lock().unwrap().has_workers
    }
    fn add_worker_flow(
        &mut self,
        local: SocketAddr,
        spec: WorkerFlowSpec,
    ) -> crate::kernel::KResult<()> {
        let transform = crate::kernel::worker_transform(&spec)?;
        let flow = WorkerFlow {
            transform,
            new_src: spec.new_src,
            new_dst: spec.new_dst,
        };
        let mut r = self.0.lock().unwrap();
        let now = r.now;
        r.added_at.insert(local, now);
        r.workers.insert(local, flow);
        Ok(())
    }
    fn remove_worker_flow(&mut self, local: SocketAddr) -> crate::kernel::KResult<FlowHandover> {
        let mut r = self.0.lock().unwrap();
        let flow = r.workers.remove(&local).ok_or("no flow")?;
        Ok(flow.transform.handover())
    }
    fn worker_flow_counters(
        &self,
        _: SocketAddr,
    ) -> crate::kernel::KResult<crate::kernel::WorkerFlowCounters> {
        Ok(Default::default())
    }
}

/// One direction of the network: every datagram waits `latency_ms` plus up to `jitter_ms`
/// (uniform, so datagrams sent closer than the jitter may overtake each other) and is lost with
/// probability `loss`.
#[derive(Debug, Clone, Copy)]
struct Link {
    latency_ms: u64,
    jitter_ms: u64,
    loss: f64,
}

impl Link {
    const CLEAN: Link = Link {
        latency_ms: 5,
        jitter_ms: 0,
        loss: 0.0,
    };
}

struct Net {
    rng: StdRng,
    /// Phones to the relay.
    up: Link,
    /// The relay to phones.
    down: Link,
    /// By (delivery time, order sent).
    in_flight: BTreeMap<(u64, u64), Packet>,
    sent: u64,
    lost: Vec<Packet>,
    /// Delivered to an address nobody listens on.
    nowhere: Vec<Packet>,
}

impl Net {
    fn send(&mut self, p: Packet, now: u64) {
        let link = if to_relay(p.to) { self.up } else { self.down };
        self.sent += 1;
        if link.loss > 0.0 && self.rng.random_bool(link.loss) {
            self.lost.push(p);
            return;
        }
        let jitter = if link.jitter_ms > 0 {
            self.rng.random_range(0..=link.jitter_ms)
        } else {
            0
        };
        let at = now + (link.latency_ms + jitter) * MS;
        self.in_flight.insert((at, self.sent), p);
    }

    /// RTP lost on its way from `from` (to the relay) or to `to` (from the relay).
    fn lost_between(&self, from: SocketAddr, to: SocketAddr) -> usize {
        self.lost
            .iter()
            .filter(|p| !sluice_relay::rtp::is_rtcp(&p.bytes))
            .filter(|p| p.from == from || p.to == to)
            .count()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    /// PT 0, 20 ms of 8 kHz.
    Pcmu,
    /// PT 96, 20 ms frames, 48 kHz RTP clock (RFC 7587).
    Opus,
}

/// An RTP packet a phone received, after SRTP.
#[derive(Debug, Clone)]
struct Got {
    seq: u16,
    ts: u32,
    ssrc: u32,
    pt: u8,
    payload: Vec<u8>,
}

/// A fake endpoint: sends RTP every 20 ms while talking (and RTCP sender reports when
/// `rtcp_every_ms`), protected when its SDP said SRTP, and records what it receives.
struct Phone {
    /// Where its datagrams come from (its SDP address, or its NAT's).
    addr: SocketAddr,
    /// The relay addresses it sends RTP and RTCP to.
    relay: SocketAddr,
    relay_rtcp: SocketAddr,
    codec: Codec,
    ssrc: u32,
    seq: u16,
    ts: u32,
    talking: bool,
    /// Sends a sender report this often (ms) while talking, when set.
    rtcp_every_ms: Option<u64>,
    next_at: u64,
    next_rtcp_at: u64,
    srtp_tx: Option<SrtpContext>,
    srtp_rx: Option<SrtpContext>,
    enc: OpusEncoder,
    dec: OpusDecoder,
    /// Every RTP datagram it sent, as on the wire, with its sequence number.
    sent: Vec<(u16, Vec<u8>)>,
    got: Vec<Got>,
    /// Opus payloads that did not decode.
    undecodable: usize,
    rtcp_sent: usize,
    rtcp_got: usize,
    /// The index of every SRTCP packet received (RFC 3711 3.4).
    srtcp_indices: Vec<u32>,
    rejected: Vec<SrtpError>,
}

/// The payload of a PCMU packet: a function of its sequence number, to check identity.
fn pcmu_payload(seq: u16) -> Vec<u8> {
    (0..160u16)
        .map(|i| (i as u8) ^ (seq as u8) ^ ((seq >> 8) as u8).rotate_left(3))
        .collect()
}

fn srtp(k: &crate::sdes::SdesKey) -> SrtpContext {
    let k = k.to_engine();
    SrtpContext::new(k.profile, &k.master, SrtpConfig::default()).unwrap()
}

impl Phone {
    fn rtp(&mut self) -> Vec<u8> {
        let (pt, step) = match self.codec {
            Codec::Pcmu => (0, 160),
            Codec::Opus => (96, 960),
        };
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&self.seq.to_be_bytes());
        p[4..8].copy_from_slice(&self.ts.to_be_bytes());
        p[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        match self.codec {
            Codec::Pcmu => p.extend(pcmu_payload(self.seq)),
            Codec::Opus => {
                // 20 ms of a 440 Hz tone at 8 kHz.
                let pcm: Vec<i16> = (0..160)
                    .map(|i| {
                        let t = (self.ts / 6 + i) as f32 / 8000.0;
                        (8000.0 * (t * 440.0 * std::f32::consts::TAU).sin()) as i16
                    })
                    .collect();
                let mut out = [0u8; 400];
                let n = self.enc.encode(&pcm, &mut out).unwrap();
                p.extend_from_slice(&out[..n]);
            }
        }
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(step);
        p
    }

    /// A sender report (RFC 3550 6.4.1) without report blocks.
    fn sr(&self) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend(self.ssrc.to_be_bytes());
        p.extend([0u8; 8]);
        p.extend(self.ts.to_be_bytes());
        p.extend((self.sent.len() as u32).to_be_bytes());
        p.extend((self.sent.len() as u32 * 160).to_be_bytes());
        p
    }

    /// `bytes` as this phone puts them on the wire (protected when it speaks SRTP).
    fn protect(&mut self, bytes: Vec<u8>, rtcp: bool) -> Vec<u8> {
        let Some(c) = self.srtp_tx.as_mut() else {
            return bytes;
        };
        let len = bytes.len();
        let mut buf = bytes;
        buf.resize(len + MAX_RTCP_OVERHEAD, 0);
        let n = if rtcp {
            c.protect_rtcp(&mut buf, len)
        } else {
            c.protect_rtp(&mut buf, len)
        }
        .unwrap();
        buf.truncate(n);
        buf
    }

    /// What it sends at `now`.
    fn tick(&mut self, now: u64) -> Vec<Packet> {
        let mut out = Vec::new();
        if self.talking && now >= self.next_at {
            self.next_at = now + 20 * MS;
            let seq = self.seq;
            let p = self.rtp();
            let wire = self.protect(p, false);
            self.sent.push((seq, wire.clone()));
            out.push(Packet {
                from: self.addr,
                to: self.relay,
                bytes: wire,
            });
        }
        if let Some(every) = self.rtcp_every_ms.filter(|_| self.talking)
            && now >= self.next_rtcp_at
        {
            self.next_rtcp_at = now + every * MS;
            let sr = self.sr();
            self.rtcp_sent += 1;
            let wire = self.protect(sr, true);
            out.push(Packet {
                from: self.addr,
                to: self.relay_rtcp,
                bytes: wire,
            });
        }
        out
    }

    fn receive(&mut self, mut bytes: Vec<u8>) {
        let rtcp = sluice_relay::rtp::is_rtcp(&bytes);
        let len = bytes.len();
        if let Some(c) = self.srtp_rx.as_mut() {
            let r = if rtcp {
                // E flag and 31-bit index before the 80-bit tag (RFC 3711 3.4).
                let i = u32::from_be_bytes(bytes[len - 14..len - 10].try_into().unwrap());
                self.srtcp_indices.push(i & 0x7fff_ffff);
                c.unprotect_rtcp(&mut bytes, len)
            } else {
                c.unprotect_rtp(&mut bytes, len)
            };
            match r {
                Ok(n) => bytes.truncate(n),
                Err(e) => return self.rejected.push(e),
            }
        }
        if rtcp {
            self.rtcp_got += 1;
            return;
        }
        let p = RtpPacket::new_checked(&bytes[..]).expect("RTP");
        let g = Got {
            seq: p.sequence(),
            ts: p.timestamp(),
            ssrc: p.ssrc(),
            pt: p.payload_type(),
            payload: p.payload().to_vec(),
        };
        if g.pt == 96 {
            let mut pcm = [0i16; MAX_PACKET_SAMPLES];
            if self.dec.decode(&g.payload, &mut pcm).is_err() {
                self.undecodable += 1;
            }
        }
        self.got.push(g);
    }

    fn got_seqs(&self) -> Vec<u16> {
        self.got.iter().map(|g| g.seq).collect()
    }
}

/// Which kernel path the relay has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    None,
    /// XDP and AF_XDP workers.
    Workers,
}

/// The whole call: sessions, relay, network, phones A (the caller, side 0) and B (side 1).
struct Wire {
    sim: Sim,
    relay: Arc<Mutex<Relay>>,
    net: Net,
    phones: Vec<Phone>,
}

const CALL: &str = "call";

impl Wire {
    fn new(seed: u64, kernel: Kernel) -> Wire {
        let relay = Arc::new(Mutex::new(Relay {
            has_workers: kernel == Kernel::Workers,
            ..Relay::default()
        }));
        let r = relay.clone();
        let k: Option<Box<dyn KernelPath>> = match kernel {
            Kernel::None => None,
            Kernel::Workers => Some(Box::new(WireKernel(relay.clone()))),
        };
        let sim = Sim::wired(
            test_config(25000, 25999),
            seed,
            |fake, clock| {
                Box::new(WirePlane {
                    fake,
                    relay: r,
                    clock,
                })
            },
            k,
        );
        Wire {
            sim,
            relay,
            net: Net {
                rng: StdRng::seed_from_u64(seed),
                up: Link::CLEAN,
                down: Link::CLEAN,
                in_flight: BTreeMap::new(),
                sent: 0,
                lost: Vec::new(),
                nowhere: Vec::new(),
            },
            phones: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.sim.clock.now_ns()
    }

    /// Offer from A, answer from B, with A's options; returns (what A got, what B got).
    fn call_up(&mut self, offer: &str, answer: &str, a: LegOptions) -> (String, String) {
        let to_b = self.sim.s.offer(CALL, "a", offer, a).unwrap();
        let to_a = self
            .sim
            .s
            .answer(CALL, "a", "b", answer, LegOptions::default())
            .unwrap();
        (to_a, to_b)
    }

    /// Phone for `side`, sending from `from` to the relay address of `sdp` (what sluice told
    /// it), with the SRTP keys the session layer terminates for it.
    fn phone(&mut self, side: usize, sdp: &str, codec: Codec, from: &str) {
        assert_eq!(self.phones.len(), side);
        let id = self.sim.endpoint(CALL, 0, side);
        let (rtp, rtcp) = {
            let r = self.relay.lock().unwrap();
            (r.eps[&id].rtp, r.eps[&id].rtcp)
        };
        assert_eq!(
            rtp.port(),
            port_of(sdp),
            "the SDP names the endpoint's socket"
        );
        let (srtp_tx, srtp_rx) = match crypto_of(&self.sim.s, CALL, side) {
            SideCrypto::Terminated { rx, tx } => (Some(srtp(&rx)), Some(srtp(&tx))),
            _ => (None, None),
        };
        self.phones.push(Phone {
            addr: addr(from),
            relay: rtp,
            relay_rtcp: rtcp.unwrap_or(rtp),
            codec,
            ssrc: 0xa11c_e000 + side as u32,
            seq: 1000,
            ts: 5000,
            talking: false,
            rtcp_every_ms: None,
            next_at: 0,
            next_rtcp_at: 0,
            srtp_tx,
            srtp_rx,
            enc: OpusEncoder::voip().unwrap(),
            dec: OpusDecoder::new().unwrap(),
            sent: Vec::new(),
            got: Vec::new(),
            undecodable: 0,
            rtcp_sent: 0,
            rtcp_got: 0,
            srtcp_indices: Vec::new(),
            rejected: Vec::new(),
        });
    }

    fn talk(&mut self, on: bool) {
        let now = self.now();
        for p in &mut self.phones {
            p.talking = on;
            p.next_at = p.next_at.max(now);
            p.next_rtcp_at = p.next_rtcp_at.max(now);
        }
    }

    /// Puts a datagram on the network now (a stranger, a replay).
    fn inject(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let now = self.now();
        self.net.send(Packet { from, to, bytes }, now);
    }

    /// Moves the time on by `ms`, a millisecond at a time: deliveries, the relay's timers, the
    /// phones, and a sweep every 500 ms.
    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.sim.clock.advance(Duration::from_millis(1));
            let now = self.now();
            self.relay.lock().unwrap().now = now;
            while let Some(e) = self.net.in_flight.first_entry() {
                if e.key().0 > now {
                    break;
                }
                let p = e.remove();
                self.deliver(p, now);
            }
            let out = self.relay.lock().unwrap().timers(now);
            for p in out {
                self.net.send(p, now);
            }
            for i in 0..self.phones.len() {
                for p in self.phones[i].tick(now) {
                    self.net.send(p, now);
                }
            }
            if (now / MS).is_multiple_of(500) {
                self.sim.s.sweep();
            }
            let events = std::mem::take(&mut self.relay.lock().unwrap().events);
            for ev in events {
                self.sim.s.on_engine_event(ev);
            }
        }
    }

    fn deliver(&mut self, p: Packet, now: u64) {
        if to_relay(p.to) {
            let out = self
                .relay
                .lock()
                .unwrap()
                .receive(p.from, p.to, &p.bytes, now);
            for o in out {
                self.net.send(o, now);
            }
        } else if let Some(ph) = self.phones.iter_mut().find(|ph| ph.addr == p.to) {
            ph.receive(p.bytes);
        } else {
            self.net.nowhere.push(p);
        }
    }

    fn counters(&self, side: usize) -> Arc<EndpointCounters> {
        let id = self.sim.endpoint(CALL, 0, side);
        self.relay.lock().unwrap().eps[&id].counters.clone()
    }

    fn drops_of(&self, side: usize) -> Vec<Dropped> {
        let id = self.sim.endpoint(CALL, 0, side);
        let r = self.relay.lock().unwrap();
        r.engine_drops
            .iter()
            .filter(|(e, _)| *e == id)
            .map(|&(_, d)| d)
            .collect()
    }

    fn handled(&self) -> Handled {
        self.relay.lock().unwrap().handled
    }

    fn on_workers(&self) -> bool {
        !self.relay.lock().unwrap().workers.is_empty()
    }
}

/// RTP sequence numbers that go forward (RFC 3550 A.1 style, modulo 2^16): each one later
/// than the one before, by less than half the space.
fn forward(seqs: &[u16]) -> bool {
    seqs.windows(2)
        .all(|w| (1..0x8000).contains(&w[1].wrapping_sub(w[0])))
}

/// How many received packets arrived after one with a later sequence number.
fn overtaken(seqs: &[u16]) -> usize {
    seqs.windows(2)
        .filter(|w| !(1..0x8000).contains(&w[1].wrapping_sub(w[0])))
        .count()
}

/// Phone `to` received exactly phone `from`'s packets that the network did not lose, each once
/// and unchanged.
fn received_all_once(w: &Wire, from: usize, to: usize) {
    let (src, dst) = (&w.phones[from], &w.phones[to]);
    let mut got = dst.got_seqs();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), dst.got.len(), "nothing delivered twice");
    // Lost on the way in (from the phone) or on the way out (towards the other).
    let lost = w.net.lost_between(src.addr, dst.addr);
    assert_eq!(dst.got.len(), src.sent.len() - lost);
    for g in &dst.got {
        assert_eq!(g.payload, pcmu_payload(g.seq), "seq {}", g.seq);
        assert_eq!(g.ssrc, src.ssrc);
    }
}

/// (a) A behind a NAT: its media comes from an address its SDP does not name. The relay
/// latches to it within the window after three consecutive packets; a stranger's packets,
/// before, during and after the window, are dropped with the right reason and never reach B.
#[test]
fn latching_follows_a_nat_and_never_lets_a_stranger_in() {
    let mut w = Wire::new(1, Kernel::None);
    let (to_a, to_b) = w.call_up(
        &sdp_at("alice", 1, "192.0.2.10", 4000, ""),
        &sdp_at("bob", 1, "192.0.2.20", 5000, ""),
        LegOptions::default(),
    );
    let nat = "198.51.100.7:31000";
    w.phone(0, &to_a, Codec::Pcmu, nat);
    w.phone(1, &to_b, Codec::Pcmu, "192.0.2.20:5000");
    let (relay_a, stranger) = (w.phones[0].relay, addr("203.0.113.66:40000"));
    let strange = |seq: u16| {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xba, 0xad, 0xf0, 0x0d];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend([0x55; 160]);
        p
    };
    // The stranger speaks first: a candidate, until A's own packets replace it.
    w.run(5);
    w.inject(stranger, relay_a, strange(77));
    w.run(5);
    w.talk(true);
    w.run(1000);
    assert_eq!(
        w.sim.s.lock().calls[CALL].streams[0].sides[0]
            .state
            .latched_rtp(),
        Some(addr(nat))
    );
    // Inside the window, consecutive packets: A won the window.
    for seq in 0..5 {
        w.inject(stranger, relay_a, strange(200 + seq));
    }
    w.run(10_000);
    // After the window.
    for seq in 0..5 {
        w.inject(stranger, relay_a, strange(300 + seq));
    }
    w.run(1000);
    w.talk(false);
    w.run(100);

    let unconfirmed = Dropped::Unconfirmed;
    let wrong = Dropped::WrongSource;
    assert_eq!(
        w.drops_of(0),
        [[unconfirmed; 3].as_slice(), &[wrong; 10]].concat(),
        "the stranger's first packet and A's first two, then the stranger's ten"
    );
    let c = w.counters(0);
    assert_eq!(c.dropped_unconfirmed.load(Relaxed), 3);
    assert_eq!(c.dropped_wrong_source.load(Relaxed), 10);
    // B heard A from its third packet on, and nothing of the stranger's.
    let (a, b) = (&w.phones[0], &w.phones[1]);
    assert_eq!(b.got.len(), a.sent.len() - 2);
    assert!(b.got.iter().all(|g| g.ssrc == a.ssrc));
    assert_eq!(b.got[0].seq, 1002);
    assert!(
        b.got
            .windows(2)
            .all(|x| x[1].seq == x[0].seq.wrapping_add(1))
    );
    assert!(b.got.iter().all(|g| g.payload == pcmu_payload(g.seq)));
    // What B sent before A latched went to A's SDP address, where nobody listens; the rest
    // reached A behind its NAT.
    let to_sdp = w
        .net
        .nowhere
        .iter()
        .filter(|p| p.to == addr("192.0.2.10:4000"))
        .count();
    assert!(to_sdp > 0);
    assert_eq!(w.net.nowhere.len(), to_sdp);
    assert_eq!(a.got.len() + to_sdp, b.sent.len());
    assert!(
        a.got
            .windows(2)
            .all(|x| x[1].seq == x[0].seq.wrapping_add(1))
    );
    assert_eq!(a.got.last().unwrap().seq, b.sent.last().unwrap().0);
    assert_eq!(w.handled().nowhere, 0);
}

/// An SRTP caller (sluice terminates its SRTP) and a plain callee, at their SDP addresses.
fn srtp_call(w: &mut Wire) {
    let savp = sdp_at("alice", 1, "192.0.2.10", 4000, ALICE_KEY).replace("RTP/AVP", "RTP/SAVP");
    let bob = sdp_at("bob", 1, "192.0.2.20", 5000, "");
    let (to_a, to_b) = w.call_up(&savp, &bob, opts(SrtpMode::Strip));
    w.phone(0, &to_a, Codec::Pcmu, "192.0.2.10:4000");
    w.phone(1, &to_b, Codec::Pcmu, "192.0.2.20:5000");
}

/// A PCMU caller and an Opus callee (40 ms packets), at their SDP addresses: the session layer
/// transcodes both directions.
fn transcoded_call(w: &mut Wire, a_sdp: &str, a: LegOptions) {
    let bob = opus_sdp("bob", 5000, "a=ptime:40\r\n").replace("127.0.0.1", "192.0.2.20");
    let (to_a, to_b) = w.call_up(a_sdp, &bob, a);
    w.phone(0, &to_a, Codec::Pcmu, "192.0.2.10:4000");
    w.phone(1, &to_b, Codec::Opus, "192.0.2.20:5000");
}

fn srtp_counts(c: &EndpointCounters) -> (u64, u64) {
    (
        c.srtp_auth_failures.load(Relaxed),
        c.srtp_replayed.load(Relaxed),
    )
}

/// (b) Both phones start 36 packets before the sequence number wraps, on links that lose 5%
/// and reorder: every packet that arrives is accepted once with the right rollover counter
/// (SRTP from A unprotected by the relay, SRTP towards A protected by it), and A's packets sent
/// again later are refused as replays.
#[test]
fn srtp_rolls_over_under_loss_and_reordering_and_replays_are_refused() {
    let mut w = Wire::new(2, Kernel::None);
    srtp_call(&mut w);
    for p in &mut w.phones {
        p.seq = 65500;
    }
    let lossy = Link {
        latency_ms: 10,
        jitter_ms: 45,
        loss: 0.05,
    };
    (w.net.up, w.net.down) = (lossy, lossy);
    w.talk(true);
    w.run(4000);
    w.talk(false);
    w.run(200);

    let (a, b) = (&w.phones[0], &w.phones[1]);
    assert_eq!(a.sent.len(), 200);
    assert!(!w.net.lost.is_empty());
    for p in [a, b] {
        let seqs = p.got_seqs();
        assert!(overtaken(&seqs) > 0, "the links reordered");
        assert!(seqs.iter().any(|&s| s >= 65500) && seqs.iter().any(|&s| s < 100));
    }
    received_all_once(&w, 0, 1);
    received_all_once(&w, 1, 0);
    assert_eq!(a.rejected, [], "A decrypts everything the relay protected");
    assert_eq!(w.drops_of(0), []);
    let id = w.sim.endpoint(CALL, 0, 0);
    {
        let r = w.relay.lock().unwrap();
        let rx = r.eps[&id].core.srtp_rx.as_deref().unwrap();
        assert_eq!(rx.rtp_state(a.ssrc).unwrap().0, 1, "ROC 1 after the wrap");
    }

    // A recording of A's packets, played again: ten from before the wrap, ten after.
    w.net.up = Link::CLEAN;
    let accepted: Vec<u16> = w.phones[1].got_seqs();
    let pick = |pre: bool| {
        w.phones[0]
            .sent
            .iter()
            .filter(|(s, _)| accepted.contains(s) && (*s >= 65500) == pre)
            .take(10)
            .map(|(_, b)| b.clone())
            .collect::<Vec<_>>()
    };
    let replays = [pick(true), pick(false)].concat();
    assert_eq!(replays.len(), 20);
    let before = w.phones[1].got.len();
    let (from, to) = (w.phones[0].addr, w.phones[0].relay);
    for r in replays {
        w.inject(from, to, r);
    }
    w.run(100);
    assert_eq!(w.phones[1].got.len(), before, "none reached B again");
    let drops = w.drops_of(0);
    assert_eq!(drops.len(), 20);
    assert!(
        drops
            .iter()
            .all(|d| matches!(d, Dropped::Unprotect(SrtpError::Replayed { .. }))),
        "{drops:?}"
    );
    assert_eq!(srtp_counts(&w.counters(0)), (0, 20));
}

/// (c) PCMU on one side, Opus on the other, with the link into the relay reordering within the
/// transcoders' window: the far sides receive decodable packets numbered one after the other,
/// none concealed, none lost.
#[test]
fn transcoders_put_reordered_input_back_in_order() {
    let mut w = Wire::new(3, Kernel::None);
    transcoded_call(
        &mut w,
        &sdp_at("alice", 1, "192.0.2.10", 4000, ""),
        LegOptions::default(),
    );
    w.net.up = Link {
        latency_ms: 10,
        jitter_ms: 30,
        loss: 0.0,
    };
    w.talk(true);
    w.run(2000);
    w.talk(false);
    w.run(300);

    let (a, b) = (&w.phones[0], &w.phones[1]);
    assert_eq!((a.sent.len(), b.sent.len()), (100, 100));
    // B: 40 ms Opus packets (1920 ticks of its 48 kHz clock), one after the other.
    assert!(b.got.iter().all(|g| g.pt == 96));
    assert_eq!(b.undecodable, 0);
    assert_eq!(b.got.len(), 50);
    assert!(
        b.got
            .windows(2)
            .all(|x| x[1].seq == x[0].seq.wrapping_add(1))
    );
    assert!(
        b.got
            .windows(2)
            .all(|x| x[1].ts.wrapping_sub(x[0].ts) == 1920)
    );
    // A: 20 ms PCMU packets.
    assert!(a.got.iter().all(|g| g.pt == 0 && g.payload.len() == 160));
    assert_eq!(a.got.len(), 100);
    assert!(
        a.got
            .windows(2)
            .all(|x| x[1].seq == x[0].seq.wrapping_add(1))
    );
    assert!(
        a.got
            .windows(2)
            .all(|x| x[1].ts.wrapping_sub(x[0].ts) == 160)
    );
    let r = w.relay.lock().unwrap();
    for side in 0..2 {
        let t = r.eps[&w.sim.endpoint(CALL, 0, side)]
            .core
            .transcoder
            .as_deref()
            .unwrap()
            .stats();
        assert!(t.reordered > 0, "side {side}: the link reordered");
        assert_eq!(
            (t.packets_in, t.concealed_frames, t.late_dropped),
            (100, 0, 0),
            "side {side}"
        );
    }
}

/// Runs until the stream is (`true`) or is not on the workers, at most `ms`; returns how long it
/// took.
fn run_until_workers(w: &mut Wire, on: bool, ms: u64) -> u64 {
    for t in 0..ms {
        if w.on_workers() == on {
            return t;
        }
        w.run(1);
    }
    panic!("the stream did not move within {ms} ms");
}

/// A re-INVITE from A with the same SDP: takes the stream back to the engine.
fn reinvite(w: &mut Wire, offer: &str, answer: &str, a: LegOptions, version: u64) {
    let v = format!(" 100 {version} IN");
    w.call_up(
        &offer.replace(" 100 1 IN", &v),
        &answer.replace(" 100 1 IN", &v),
        a,
    );
}

/// (d) An SRTP call moves from the engine to the workers once settled, back to the engine on a
/// re-INVITE and to the workers again, under loss and reordering and across a rollover, the old
/// owner going on for 100 ms with what was queued for it each time: every packet that arrives
/// is accepted exactly once on whichever path, nothing is refused as a replay, and no SRTCP
/// index towards A is used twice.
#[test]
fn an_srtp_stream_moves_between_engine_and_workers_without_replays_or_reuse() {
    let mut w = Wire::new(4, Kernel::Workers);
    srtp_call(&mut w);
    let savp = sdp_at("alice", 1, "192.0.2.10", 4000, ALICE_KEY).replace("RTP/AVP", "RTP/SAVP");
    let bob = sdp_at("bob", 1, "192.0.2.20", 5000, "");
    for p in &mut w.phones {
        p.seq = 65400;
        // Often, so that the old owner protects some after the new one took over.
        p.rtcp_every_ms = Some(100);
    }
    w.relay.lock().unwrap().straggle_ns = 100 * MS;
    let lossy = Link {
        latency_ms: 10,
        jitter_ms: 30,
        loss: 0.03,
    };
    (w.net.up, w.net.down) = (lossy, lossy);
    w.talk(true);
    run_until_workers(&mut w, true, 3000);
    let first = w.handled();
    w.run(2000);
    reinvite(&mut w, &savp, &bob, opts(SrtpMode::Strip), 2);
    assert!(!w.on_workers(), "signalling takes the stream back");
    w.run(500);
    run_until_workers(&mut w, true, 3000);
    w.run(1500);
    w.talk(false);
    w.run(200);

    let h = w.handled();
    assert!(
        first.engine > 0 && h.worker > 0 && h.engine > first.engine,
        "{h:?}"
    );
    assert!(h.straggled > 0);
    assert_eq!(h.xdp_wrong_source, 0);
    let (a, b) = (&w.phones[0], &w.phones[1]);
    assert!(a.sent.len() > 300, "past the wrap");
    assert!(b.rtcp_sent >= 70);
    received_all_once(&w, 0, 1);
    received_all_once(&w, 1, 0);
    assert_eq!(a.rejected, []);
    assert_eq!(w.drops_of(0), []);
    assert_eq!(w.relay.lock().unwrap().worker_drops, []);
    assert_eq!(srtp_counts(&w.counters(0)), (0, 0));
    // B's sender reports reached A as SRTCP, each index once.
    let mut idx = a.srtcp_indices.clone();
    idx.sort();
    idx.dedup();
    assert_eq!(idx.len(), a.srtcp_indices.len(), "{:?}", a.srtcp_indices);
    assert!(a.srtcp_indices.is_sorted());
    // Each of the three moves skips the margin: what the old owner still protected lies below.
    let skips = a.srtcp_indices.windows(2).filter(|x| x[1] - x[0] > 8);
    assert_eq!(skips.count(), 3, "{:?}", a.srtcp_indices);
    assert_eq!(a.rtcp_got, a.srtcp_indices.len());
    // All of B's reports but those lost and the first, sent to A's SDP RTCP port before A's
    // own RTCP latched the real one.
    let rtcp_lost = w
        .net
        .lost
        .iter()
        .filter(|p| sluice_relay::rtp::is_rtcp(&p.bytes) && (p.from == b.addr || p.to == a.addr))
        .count();
    let early = w.net.nowhere.len();
    assert!((1..=2).contains(&early));
    assert!(
        w.net
            .nowhere
            .iter()
            .all(|p| p.to == addr("192.0.2.10:4001"))
    );
    assert_eq!(a.rtcp_got, b.rtcp_sent - rtcp_lost - early);
}

/// (d) A transcoded call (SRTP PCMU caller, Opus callee) moves to the workers and back under
/// loss and reordering, the old owner going on for 100 ms each time: the sequence numbers each side receives only go forward (the new
/// owner's transcoder starts past the old one's), every packet decodes, and A decrypts them all.
#[test]
fn a_transcoded_stream_moves_between_engine_and_workers_with_sequences_going_forward() {
    let mut w = Wire::new(5, Kernel::Workers);
    let savp = sdp_at("alice", 1, "192.0.2.10", 4000, ALICE_KEY).replace("RTP/AVP", "RTP/SAVP");
    transcoded_call(&mut w, &savp, opts(SrtpMode::Strip));
    let bob = opus_sdp("bob", 5000, "a=ptime:40\r\n").replace("127.0.0.1", "192.0.2.20");
    w.relay.lock().unwrap().straggle_ns = 100 * MS;
    w.net.up = Link {
        latency_ms: 10,
        jitter_ms: 30,
        loss: 0.03,
    };
    w.net.down = Link {
        latency_ms: 10,
        jitter_ms: 0,
        loss: 0.03,
    };
    w.talk(true);
    run_until_workers(&mut w, true, 3000);
    let first = w.handled();
    w.run(2000);
    reinvite(&mut w, &savp, &bob, opts(SrtpMode::Strip), 2);
    assert!(!w.on_workers());
    w.run(500);
    run_until_workers(&mut w, true, 3000);
    w.run(1500);
    w.talk(false);
    w.run(300);

    let h = w.handled();
    assert!(
        first.engine > 0 && h.worker > 0 && h.engine > first.engine,
        "{h:?}"
    );
    assert!(h.straggled > 0);
    let (a, b) = (&w.phones[0], &w.phones[1]);
    assert!(forward(&b.got_seqs()), "{:?}", b.got_seqs());
    assert!(forward(&a.got_seqs()), "{:?}", a.got_seqs());
    assert_eq!(b.undecodable, 0);
    assert!(b.got.iter().all(|g| g.pt == 96));
    assert!(a.got.iter().all(|g| g.pt == 0 && g.payload.len() == 160));
    assert_eq!(a.rejected, []);
    assert_eq!(w.drops_of(0), []);
    assert_eq!(srtp_counts(&w.counters(0)), (0, 0));
    // Two moves each way: the jumps past what the old owner may still send.
    let jumps = |g: &[Got]| {
        g.windows(2)
            .filter(|x| x[1].seq.wrapping_sub(x[0].seq) > 8)
            .count()
    };
    assert_eq!((jumps(&b.got), jumps(&a.got)), (3, 3));
}

/// A recording of A's packets that the engine accepted, played to the worker that took the
/// stream over: refused as replays, as the engine itself would have (RFC 3711 3.3.2). Failed
/// (9 of the 10 accepted a second time) while `StreamHandover` carried the highest SRTP index
/// only; it now carries the replay list below it.
#[test]
fn packets_the_engine_accepted_are_refused_by_the_worker_that_takes_over() {
    let mut w = Wire::new(6, Kernel::Workers);
    srtp_call(&mut w);
    w.talk(true);
    run_until_workers(&mut w, true, 3000);
    let heard = w.phones[1].got_seqs();
    assert!(heard.len() > 50);
    let replays: Vec<Vec<u8>> = w.phones[0]
        .sent
        .iter()
        .filter(|(s, _)| heard[heard.len() - 10..].contains(s))
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(replays.len(), 10);
    let (from, to) = (w.phones[0].addr, w.phones[0].relay);
    for r in replays {
        w.inject(from, to, r);
    }
    w.run(100);
    let b = &w.phones[1];
    let mut seqs = b.got_seqs();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), b.got.len(), "nothing accepted twice");
    assert_eq!(
        w.relay.lock().unwrap().worker_drops,
        [TransformError::Replay; 10]
    );
}
