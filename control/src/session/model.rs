//! The call state every request works on: calls, their media streams, and each stream's two
//! sides (relay sockets, what the SDP said, what was negotiated), plus the ports and relay
//! endpoints a side holds from its creation to its release. Offer, answer, offload and reports
//! read and change these; the invariants of the fields are documented where they are declared.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use sluice_relay::engine::{Command, EndpointConfig, EndpointId};
use sluice_relay::handover::EndpointState;
use sluice_relay::latch::LatchConfig;
use sluice_relay::stats::EndpointCounters;
use sluice_relay::xdp::FlowCounters;

use crate::codecs::{self, DirectionPlan, OfferCodecs};
use crate::kernel::{FlowIds, KernelPath};
use crate::port_alloc::{DEFAULT_MAX_TRIES, PortAllocError, PortAllocator};
use crate::sdes::SdesKey;
use crate::sdp::{Direction, Sdp};

use super::MediaPlane;
use super::env::{Clock, Random};
use super::error::{SessionError, bad};
use super::options::SessionConfig;
use super::report::{CallReport, EndReason, call_report};
use super::socket_pool::{Pooled, SocketPool};
use super::srtp::SideCrypto;

pub(super) struct Side {
    pub(super) endpoint: EndpointId,
    pub(super) local_ip: IpAddr,
    pub(super) rtp_port: u16,
    /// None when only one port was reserved (rtcp-mux required).
    pub(super) rtcp_port: Option<u16>,
    pub(super) counters: Arc<EndpointCounters>,
    /// What the relay publishes about this side besides counts: latched addresses, reported
    /// loss, and the state a stream carries when it moves between the engine and a worker.
    pub(super) state: Arc<EndpointState>,
    pub(super) sdp_rtp: Option<SocketAddr>,
    pub(super) sdp_rtcp: Option<SocketAddr>,
    pub(super) direction: Direction,
    /// RTCP towards this side's endpoint goes to its RTP port.
    pub(super) rtcp_mux: bool,
    /// The SDP sent to this side offered rtcp-mux.
    pub(super) offered_mux: bool,
    pub(super) latch: LatchConfig,
    /// Where this side's signalling comes from, if a front end said (latch rule 5).
    pub(super) signalling_source: Option<IpAddr>,
    pub(super) clock_rate: u32,
    /// Kernel counters of this side's flows that were removed already.
    pub(super) kernel_base: FlowCounters,
    pub(super) crypto: SideCrypto,
    /// Keys offered to this side, one per suite, until its answer picks one.
    pub(super) offered_keys: Vec<SdesKey>,
    /// Duplicates of this side's relay sockets, kept only while AF_XDP workers run: a worker
    /// sends what it relays towards this side's endpoint through a clone of them.
    pub(super) sockets: Option<SideSockets>,
    /// The codec this side sends and receives, as SDP names it ("" before the answer).
    pub(super) codec: String,
    /// What this side's endpoint says in RTCP: its SRs, its leg's round trip, its reports.
    pub(super) quality: super::quality::SideQuality,
    /// Taken from the pool, until its [`Command::Reuse`] is sent: the pooled side whose
    /// sockets it has, for a rollback to return them as they were. Cleared when the command is
    /// sent.
    pub(super) reused: Option<Box<Pooled>>,
}

impl Side {
    fn new(
        endpoint: EndpointId,
        local_ip: IpAddr,
        rtp_port: u16,
        pair: bool,
        counters: Arc<EndpointCounters>,
        sockets: Option<SideSockets>,
    ) -> Side {
        Side {
            endpoint,
            local_ip,
            rtp_port,
            rtcp_port: pair.then_some(rtp_port + 1),
            counters,
            state: Arc::default(),
            sdp_rtp: None,
            sdp_rtcp: None,
            direction: Direction::SendRecv,
            rtcp_mux: false,
            offered_mux: false,
            latch: LatchConfig::default(),
            signalling_source: None,
            clock_rate: 8000,
            kernel_base: FlowCounters::default(),
            crypto: SideCrypto::Plain,
            offered_keys: Vec::new(),
            sockets,
            codec: String::new(),
            quality: Default::default(),
            reused: None,
        }
    }

    fn reusing(mut self, pooled: Pooled) -> Side {
        self.reused = Some(Box::new(pooled));
        self
    }
}

pub(super) struct SideSockets {
    pub(super) rtp: UdpSocket,
    pub(super) rtcp: Option<UdpSocket>,
}

/// One XDP flow entry: packets from side `side`'s endpoint arriving at `local`.
#[derive(Debug, Clone, Copy)]
pub(super) struct KernelFlow {
    pub(super) side: usize,
    pub(super) local: SocketAddr,
    pub(super) flow_id: u32,
    /// A WORKER entry: XDP hands the packets to an AF_XDP worker, which holds a context for
    /// `local` (SRTP termination).
    pub(super) worker: bool,
}

pub(super) struct Stream {
    pub(super) media: String,
    pub(super) sides: [Side; 2],
    /// Rejected by the answer (port 0): sockets stay until the call ends, nothing is forwarded.
    pub(super) disabled: bool,
    /// Rejected by the last offer already, whatever its answers say: a later answer to the same
    /// offer (the 200 after a 183) decides `disabled` afresh from this.
    pub(super) offer_disabled: bool,
    /// Installed XDP flows; empty while the stream is on the userspace path.
    pub(super) kernel: Vec<KernelFlow>,
    /// Latched RTP sources of both sides and when they were first seen like that.
    pub(super) settle: Option<([SocketAddr; 2], u64)>,
    /// Installing failed since the last signalling event: do not retry until the next one.
    pub(super) kernel_failed: bool,
    /// What the last offer's codec negotiation left to decide on its answer; `None` when it
    /// did not negotiate (not audio, transcoding off, SRTP passed through).
    pub(super) codecs: Option<OfferCodecs>,
    pub(super) transcode: Option<StreamTranscode>,
    /// sluice's own SSRC for what it sends when transcoding, by the side whose packets it
    /// transcodes: drawn once, so re-offers do not make the far end see a new source.
    pub(super) ssrcs: [u32; 2],
}

/// A transcoded stream, by side.
pub(super) struct StreamTranscode {
    /// Codec and payload type each side sends and receives.
    pub(super) formats: [codecs::Format; 2],
    /// For packets from each side's endpoint.
    pub(super) plans: [DirectionPlan; 2],
}

pub(super) struct Call {
    pub(super) call_id: String,
    /// [first offerer's tag, first answerer's tag] (module docs: with a late offer the callee's
    /// comes first); the second is empty until the first answer.
    pub(super) tags: [String; 2],
    pub(super) streams: Vec<Stream>,
    pub(super) created_unix_ms: u64,
    pub(super) last_signal_ns: u64,
    /// The side whose offer awaits an answer.
    pub(super) pending_offer: Option<usize>,
    /// The side whose offer was answered last. Until the next offer, more answers to it from
    /// the same answerer update the call: RFC 3261 13.2.1 lets provisional responses carry the
    /// answer before the 200 does (early media), a 200 may be retransmitted, and gateways do
    /// change the SDP between their 183 and their 200, which the relay must follow for media
    /// to keep flowing.
    pub(super) answered_offer: Option<usize>,
    /// Per receiving side: the SDP text last received from the other side and the o= version we
    /// gave its rewrite, so an unchanged re-offer keeps the version (RFC 3264 8).
    pub(super) sdp_versions: [Option<(String, u64)>; 2],
    pub(super) media_started: [bool; 2],
    /// The branch (rtpengine's via-branch) side 1 of the streams belongs to; "" when the
    /// front end does not fork. See `fork`.
    pub(super) branch: String,
    /// The other branches of a forked offer, parked: their sockets stay open, nothing is relayed
    /// to or from them until a request names them again.
    pub(super) forks: Vec<Fork>,
    /// An answer was final: branches are settled, and their labels no longer matter.
    pub(super) confirmed: bool,
}

/// A parked branch of a forked call.
pub(super) struct Fork {
    pub(super) label: String,
    pub(super) state: BranchState,
}

/// What a call holds per branch: what it would hold in `Call` and `Stream` if it were the
/// branch the call's state shows.
#[derive(Default)]
pub(super) struct BranchState {
    /// The branch's to-tag ("" before its first answer).
    pub(super) tag: String,
    /// Per stream: the side facing this branch's endpoint, and what was decided with it.
    pub(super) sides: Vec<Side>,
    pub(super) transcode: Vec<Option<StreamTranscode>>,
    pub(super) disabled: Vec<bool>,
    pub(super) sdp_versions: [Option<(String, u64)>; 2],
    pub(super) media_started: bool,
}

#[derive(Default)]
pub(super) struct Totals {
    pub(super) calls: u64,
    pub(super) timed_out: u64,
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) dropped: u64,
    pub(super) dropped_by_reason: [u64; 9],
    pub(super) kernel_packets: u64,
    /// Transcoder counters of retired sides (see [`super::report::add_transcoded`]), so that
    /// the relay-wide ones never go down when a call ends.
    pub(super) transcoded: [u64; 3],
    /// By [`super::report::CALL_END_REASONS`].
    pub(super) calls_ended: [u64; 4],
}

pub(super) struct State {
    pub(super) cfg: SessionConfig,
    pub(super) ports: PortAllocator,
    pub(super) plane: Box<dyn MediaPlane>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) rng: Random,
    pub(super) calls: HashMap<String, Call>,
    pub(super) by_endpoint: HashMap<EndpointId, (String, usize)>,
    pub(super) next_endpoint: u64,
    pub(super) totals: Totals,
    pub(super) shutting_down: bool,
    /// New calls are refused at this many (None: no limit); set at run time to drain a node.
    pub(super) max_sessions: Option<u64>,
    /// `--max-load` / `--max-cpu`: new calls are refused above them.
    pub(super) load_limits: crate::load::LoadLimits,
    pub(super) kernel: Option<Box<dyn KernelPath>>,
    pub(super) flow_ids: FlowIds,
    /// Sockets of retired sides, open for the next sides to take over.
    pub(super) pool: SocketPool,
}

const RECV_BUFFER: usize = 1 << 20;

impl State {
    pub(super) fn relay_ip(&self, v6: bool) -> Result<IpAddr, SessionError> {
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

    /// Reserves ports and binds sockets for one side of a new stream, or takes over a retired
    /// side's (see [`super::socket_pool`]).
    pub(super) fn new_side(
        &mut self,
        ip: IpAddr,
        pair: bool,
    ) -> Result<(Side, Command), SessionError> {
        let now = self.clock.now_ns();
        if let Some(p) = self.pool.take(ip, pair, now, &mut *self.rng) {
            return Ok(self.reuse_side(p));
        }
        let bind = |p| {
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
        };
        let (rtp_port, (rtp, rtcp)) = match self.ports.allocate_with(pair, DEFAULT_MAX_TRIES, bind)
        {
            Ok(bound) => bound,
            // Rather than refuse the call, the pool gives up its longest-held sockets of this
            // shape, quiet or not: fewer ports than calls want is worse than a possible stray.
            Err(e @ PortAllocError::Exhausted { .. }) => {
                if let Some(p) = self.pool.take_oldest(ip, pair) {
                    return Ok(self.reuse_side(p));
                }
                // Sockets of another address or shape: their ports are free once the relay
                // thread has closed them, for the next request (this one would race the close).
                if let Some(p) = self.pool.pop_oldest() {
                    self.close_pooled(p);
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let endpoint = EndpointId(self.next_endpoint);
        let counters = Arc::new(EndpointCounters::default());
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
        let side = Side::new(endpoint, ip, rtp_port, pair, counters.clone(), sockets);
        let state = side.state.clone();
        let cmd = Command::Add {
            id: endpoint,
            rtp,
            rtcp,
            config: EndpointConfig::default(),
            counters,
            state,
        };
        Ok((side, cmd))
    }

    /// A new side on a pooled side's sockets.
    fn reuse_side(&mut self, mut p: Pooled) -> (Side, Command) {
        self.pooled_strays(&p);
        let endpoint = EndpointId(self.next_endpoint);
        self.next_endpoint += 1;
        let counters = Arc::new(EndpointCounters::default());
        let sockets = p.sockets.take();
        let side = Side::new(
            endpoint,
            p.ip,
            p.rtp_port,
            p.pair,
            counters.clone(),
            sockets,
        );
        let cmd = Command::Reuse {
            pooled: p.endpoint,
            id: endpoint,
            config: EndpointConfig::default(),
            counters,
            state: side.state.clone(),
        };
        (side.reusing(p), cmd)
    }

    /// Undoes a [`State::new_side`] whose command was never sent: its sockets close with the
    /// command, or, taken from the pool, go back there.
    pub(super) fn release_side(&mut self, side: &mut Side) {
        self.by_endpoint.remove(&side.endpoint);
        if let Some(mut back) = side.reused.take() {
            back.sockets = side.sockets.take();
            // Its strays so far are in the totals already.
            back.strays_before = back.counters.dropped_no_peer.load(Relaxed);
            if let Err(p) = self.pool.put_back(*back) {
                self.close_pooled(p);
            }
            return;
        }
        self.free_ports(side);
    }

    fn free_ports(&mut self, side: &Side) {
        self.release_ports(side.rtp_port, side.rtcp_port.is_some());
    }

    fn release_ports(&mut self, rtp_port: u16, pair: bool) {
        if let Err(e) = self.ports.release(rtp_port, pair) {
            tracing::error!(error = %e, port = rtp_port, "port release failed (bug)");
        }
    }

    fn pooled(&self, side: &mut Side) -> Pooled {
        Pooled {
            endpoint: side.endpoint,
            ip: side.local_ip,
            rtp_port: side.rtp_port,
            pair: side.rtcp_port.is_some(),
            since_ns: self.clock.now_ns(),
            sockets: side.sockets.take(),
            counters: side.counters.clone(),
            strays_before: side.counters.dropped_no_peer.load(Relaxed),
        }
    }

    /// Closes for good the sockets of a side that leaves the pool unused.
    pub(super) fn close_pooled(&mut self, p: Pooled) {
        self.pooled_strays(&p);
        if let Err(e) = self.plane.send(Command::Remove { id: p.endpoint }) {
            tracing::error!(error = %e, "cannot close relay sockets");
        }
        self.release_ports(p.rtp_port, p.pair);
    }

    /// What reached a pooled side's sockets while it belonged to no call: dropped, no peer.
    fn pooled_strays(&mut self, p: &Pooled) {
        let strays = p
            .counters
            .dropped_no_peer
            .load(Relaxed)
            .saturating_sub(p.strays_before);
        self.totals.dropped += strays;
        self.totals.dropped_by_reason[super::report::NO_PEER] += strays;
    }

    /// Closes a side for good: its counters go into the totals, its sockets into the pool or
    /// away, its ports with them.
    pub(super) fn retire_side(&mut self, side: &mut Side) {
        self.totals.packets += side.counters.forwarded.load(Relaxed) + side.kernel_base.packets;
        self.totals.bytes += side.counters.forwarded_bytes.load(Relaxed) + side.kernel_base.bytes;
        self.totals.dropped += side.counters.dropped() + side.kernel_base.dropped();
        let by_reason = super::report::drops(&side.counters, &side.kernel_base);
        for (t, d) in self.totals.dropped_by_reason.iter_mut().zip(by_reason) {
            *t += d;
        }
        self.totals.kernel_packets += side.kernel_base.packets;
        super::report::add_transcoded(&mut self.totals.transcoded, &side.counters);
        self.by_endpoint.remove(&side.endpoint);
        if !self.shutting_down {
            let p = self.pooled(side);
            match self.pool.put(p) {
                Ok(()) => {
                    if let Err(e) = self.plane.send(Command::Pool { id: side.endpoint }) {
                        tracing::error!(error = %e, "cannot pool relay sockets");
                    }
                    return;
                }
                Err(p) => side.sockets = p.sockets,
            }
        }
        if let Err(e) = self.plane.send(Command::Remove { id: side.endpoint }) {
            tracing::error!(error = %e, "cannot close relay sockets");
        }
        self.free_ports(side);
    }

    /// Closes the pooled sockets unused for [`super::socket_pool::IDLE`].
    pub(super) fn expire_pool(&mut self, now: u64) {
        for p in self.pool.expire(now) {
            self.close_pooled(p);
        }
    }

    pub(super) fn remove_call(&mut self, call_id: &str, why: EndReason) -> Option<CallReport> {
        self.unkernelize_call(call_id);
        self.release_forks(call_id);
        let mut call = self.calls.remove(call_id)?;
        self.totals.calls_ended[why as usize] += 1;
        let info = call_report(&call, None, &*self.clock);
        for s in &mut call.streams {
            for side in &mut s.sides {
                if let Some(mos) = side.quality.received.and_then(|q| q.average_mos()) {
                    crate::metrics::ended_stream_mos(mos);
                }
                self.retire_side(side);
            }
        }
        Some(info)
    }
}

/// RFC 3264 8: the o= version of what we send a side grows by one whenever what we send changes,
/// and stays when a session refresh repeats the same SDP.
pub(super) fn set_version(slot: &mut Option<(String, u64)>, out: &mut Sdp, input: &str) {
    let version = match slot {
        Some((prev, v)) if prev == input => *v,
        Some((_, v)) => *v + 1,
        None => out.origin.session_version,
    };
    out.origin.session_version = version;
    *slot = Some((input.to_string(), version));
}
