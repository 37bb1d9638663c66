//! What a front end can show about calls and the relay: per-leg stream state and counters of one
//! call, and relay-wide statistics. Counters of both paths (userspace and kernel) are summed here
//! so that no front end has to know a stream moved.
//!
//! The types are the session layer's own, in Rust terms (addresses, `Option` for what is not
//! known yet, enums for closed sets), so that each front end renders them its own way: gRPC
//! messages, ng-protocol dictionaries, log lines. They carry exactly what the gRPC messages
//! carry; a field added here is a field every front end can offer.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use sluice_relay::stats::EndpointCounters;
use sluice_relay::xdp::FlowCounters;

use crate::kernel::KernelPath;
use crate::sdes::Suite;
use crate::sdp::Direction;

use super::env::Clock;
use super::model::{Call, State, Stream};
use super::offload::kernel_counters;
use super::quality::{QualitySample, QualitySummary};
use super::srtp::SideCrypto;

/// One call: its legs' streams with their state and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct CallReport {
    pub call_id: String,
    pub created_unix_ms: u64,
    pub last_signal_unix_ms: u64,
    /// The first offerer's leg (from-tag of the call's first offer), then the answerer's: the
    /// caller's first, except with a late offer (RFC 3261 13.2.1), where the callee offered.
    pub legs: [LegReport; 2],
}

#[derive(Debug, Clone, PartialEq)]
pub struct LegReport {
    /// `None` for the answerer's leg until its first answer.
    pub tag: Option<String>,
    /// One per m= line, in SDP order.
    pub streams: Vec<StreamReport>,
}

/// One media section (m= line) as seen from one leg. Counters count packets received from this
/// leg's endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamReport {
    /// The m= line's position, from 0.
    pub index: usize,
    /// `audio`, `video`, ...
    pub media: String,
    /// Where this leg's endpoint sends RTP, and RTCP (the same address with rtcp-mux).
    pub local_rtp: SocketAddr,
    pub local_rtcp: SocketAddr,
    /// The RTP address this leg's SDP gave.
    pub sdp_peer: Option<SocketAddr>,
    /// The source media actually comes from; `None` before latching.
    pub latched_peer: Option<SocketAddr>,
    /// As this leg's SDP (or a direction option) said.
    pub direction: Direction,
    pub rtcp_mux: bool,
    pub strict_source: bool,
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    /// Of `bytes`: RTCP (counted on the userspace path only).
    pub rtcp_bytes: u64,
    /// Includes `dropped_unconfirmed`.
    pub dropped_wrong_source: u64,
    pub dropped_direction: u64,
    pub dropped_malformed: u64,
    /// `None` before the first packet.
    pub last_packet_unix_ms: Option<u64>,
    /// Sequence gaps (RFC 3550 A.3 style).
    pub rtp_lost: u64,
    /// Interarrival jitter (RFC 3550 A.8).
    pub jitter_ms: f64,
    /// Of `packets`/`bytes`: what went through the userspace path and what XDP forwarded (or
    /// handed to a worker).
    pub userspace_packets: u64,
    pub userspace_bytes: u64,
    pub kernel_packets: u64,
    pub kernel_bytes: u64,
    /// 0 before the first RTP packet.
    pub ssrc: u32,
    /// From a new source that latching has not confirmed yet.
    pub dropped_unconfirmed: u64,
    /// Nowhere to go yet: the other leg has neither an SDP address nor a latched source.
    pub dropped_no_peer: u64,
    /// Relayed on to the other leg.
    pub forwarded: u64,
    /// XDP forwards the stream now, so its userspace socket sees no packets.
    pub kernel_forwarded: bool,
    pub srtp: SrtpReport,
    pub srtp_auth_failures: u64,
    pub srtp_replayed: u64,
    /// sluice transcodes between this leg's codec and the other leg's.
    pub transcoded: bool,
    /// The codec this leg sends and receives as SDP names it (`PCMU/8000`, `opus/48000/2`);
    /// `None` before the answer, or when the answer's codec is not one sluice names.
    pub codec: Option<String>,
    /// The codec's payload type on this leg, when transcoded.
    pub payload_type: Option<u8>,
    /// RTCP not forwarded because the stream is transcoded.
    pub rtcp_terminated: u64,
    /// Transcoding of what this leg sends: packets produced towards the other leg, frames
    /// concealed, frames rebuilt from Opus in-band FEC, telephone-events relayed, packets the
    /// transcoder dropped.
    pub transcoded_out: u64,
    pub transcode_concealed: u64,
    pub transcode_fec_recovered: u64,
    pub transcode_dtmf: u64,
    pub transcode_dropped: u64,
    /// The loss (percent) the Opus encoder towards the other leg spends in-band FEC on.
    pub opus_fec_loss_pct: u32,
    /// The loss (percent, rounded up) this leg reports in RTCP about the transcoded stream sluice
    /// sends it; `None` before its first report.
    pub reported_loss_pct: Option<u8>,
    /// What this leg's endpoint reports in RTCP about the stream it receives (loss, jitter,
    /// round trip, MOS); `None` before its first report block.
    pub quality: Option<QualityReport>,
}

/// One report's figures, with its time as wall-clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityPoint {
    /// 1.0-4.5; `None` without a known round trip.
    pub mos: Option<f64>,
    pub reported_unix_ms: u64,
    pub loss_pct: f64,
    pub jitter_ms: f64,
    pub rtt_us: Option<u64>,
    pub rtt_leg_us: Option<u64>,
}

/// A leg's RTCP reports about the stream it receives from `ssrc`, over the call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityReport {
    pub ssrc: u32,
    /// Reports with a MOS (a round trip known).
    pub samples: u32,
    /// Averages over those reports.
    pub average: Option<QualityPoint>,
    pub lowest: Option<QualityPoint>,
    pub highest: Option<QualityPoint>,
    pub latest: QualityPoint,
}

fn quality_report(q: &QualitySummary, clock: &dyn Clock) -> QualityReport {
    let point = |s: QualitySample| QualityPoint {
        mos: s.mos,
        reported_unix_ms: clock.unix_ms_of(s.at_ns),
        loss_pct: s.loss_pct,
        jitter_ms: s.jitter_ms,
        rtt_us: s.rtt_us,
        rtt_leg_us: s.rtt_leg_us,
    };
    QualityReport {
        ssrc: q.ssrc,
        samples: q.samples,
        average: q.average().map(point),
        lowest: q.lowest.map(point),
        highest: q.highest.map(point),
        latest: point(q.latest),
    }
}

/// SRTP on one leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpReport {
    Plain,
    /// SRTP relayed untouched, end to end.
    Passthrough,
    /// sluice decrypts and encrypts this leg's SRTP with this suite.
    Terminated(Suite),
}

/// Relay-wide counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statistics {
    pub uptime: Duration,
    pub calls_current: u64,
    pub calls_total: u64,
    pub calls_timed_out: u64,
    pub ports_in_use: u64,
    pub ports_free: u64,
    pub packets_relayed: u64,
    pub bytes_relayed: u64,
    pub packets_dropped: u64,
    /// `packets_dropped` by [`DROP_REASONS`].
    pub dropped_by_reason: [(&'static str, u64); 9],
    /// Events dropped because a subscriber's queue was full, summed over subscribers since
    /// start; each subscriber was told its own count ([`super::EventKind::Overflow`]).
    pub events_missed: u64,
    /// The session limit ([`super::Sessions::set_max_sessions`]); `None`: none.
    pub max_sessions: Option<u64>,
    /// The in-kernel fast path beside userspace, as it describes itself (`xdp-native on eth0`);
    /// `None` when there is only the userspace path.
    pub kernel_path: Option<String>,
    /// XDP flow entries installed now.
    pub kernel_flows: u64,
    /// Packets XDP forwarded (or handed to a worker) since start.
    pub kernel_packets: u64,
    /// The AF_XDP workers; empty without a worker pool.
    pub workers: Vec<WorkerReport>,
    /// The kernel features the XDP path probed when it attached; empty without XDP.
    pub kernel_features: Vec<KernelFeatureReport>,
    /// Live calls' streams (media sections, both sides together; those an answer rejected
    /// carry nothing and are left out), `[path][kind]` by [`STREAM_PATHS`] and
    /// [`STREAM_KINDS`].
    pub streams: [[u64; 3]; 3],
    /// Live transcoded directions: two per transcoded stream, one per side's endpoint.
    pub transcoder_channels: u64,
    /// Since start, ended calls included: packets the transcoders produced, frames they
    /// concealed, frames they rebuilt from Opus in-band FEC.
    pub transcoded_packets: u64,
    pub transcoder_concealed_frames: u64,
    pub transcoder_fec_recovered_frames: u64,
    /// Calls ended since start, by [`CALL_END_REASONS`].
    pub calls_ended: [(&'static str, u64); 4],
}

/// Where a stream's packets go now, in the order of [`Statistics::streams`]: the relay thread's
/// sockets, the XDP program's plain forwarding, or an AF_XDP worker (SRTP, transcoding).
pub const STREAM_PATHS: [&str; 3] = ["userspace", "xdp", "worker"];

/// What sluice does to a stream's packets: relays them as they are (SRTP passed through
/// included), terminates SRTP on either side, or transcodes (which wins over SRTP).
pub const STREAM_KINDS: [&str; 3] = ["plain", "srtp", "transcoded"];

/// Why calls ended, in the order of [`Statistics::calls_ended`]: a control request (ng or
/// gRPC delete, or the last branch of a forked call deleted), the timeout, the SIP B2BUA's own
/// teardown (a BYE, CANCEL, failure or hangup request of its call), sluice shutting down.
pub const CALL_END_REASONS: [&str; 4] = ["deleted", "timeout", "b2bua", "shutdown"];

/// Why a call ends; indexes [`CALL_END_REASONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Deleted = 0,
    Timeout = 1,
    B2bua = 2,
    Shutdown = 3,
}

/// One AF_XDP worker; counters count since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    pub index: usize,
    /// The CPU it is pinned to; `None` when pinning failed.
    pub cpu: Option<usize>,
    /// Frames taken from its AF_XDP RX rings.
    pub rx: u64,
    /// Packets sent on: `tx_ring` + `tx_kernel`.
    pub tx: u64,
    /// Every packet it dropped, transform errors included.
    pub dropped: u64,
    /// SRTP auth failures, replays, malformed packets.
    pub transform_errors: u64,
    /// Busy fraction over the last second, in thousandths.
    pub load_permille: u64,
    /// Sent from its AF_XDP TX rings.
    pub tx_ring: u64,
    /// Handed to the kernel's IP stack.
    pub tx_kernel: u64,
}

/// One kernel feature the XDP path uses, as probed at attach time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFeatureReport {
    /// e.g. `bpf_xdp_adjust_meta`.
    pub name: &'static str,
    /// The running kernel offers it to XDP programs.
    pub available: bool,
    /// sluice uses it (an available optional one may be switched off).
    pub used: bool,
    /// What sluice does without it; `None` when used.
    pub without: Option<&'static str>,
}

pub(super) fn call_report(
    call: &Call,
    kernel: Option<&dyn KernelPath>,
    clock: &dyn Clock,
) -> CallReport {
    let leg = |k: usize| LegReport {
        tag: Some(call.tags[k].clone()).filter(|t| !t.is_empty()),
        streams: call
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| stream_report(i, s, k, kernel_counters(s, k, kernel), clock))
            .collect(),
    };
    CallReport {
        call_id: call.call_id.clone(),
        created_unix_ms: call.created_unix_ms,
        last_signal_unix_ms: clock.unix_ms_of(call.last_signal_ns),
        legs: [leg(0), leg(1)],
    }
}

fn stream_report(
    i: usize,
    s: &Stream,
    k: usize,
    kc: FlowCounters,
    clock: &dyn Clock,
) -> StreamReport {
    let side = &s.sides[k];
    let c = &side.counters;
    let last = c.last_packet_ns.load(Relaxed).max(kc.last_seen_ns);
    let rtcp_port = if side.rtcp_mux {
        side.rtp_port
    } else {
        side.rtcp_port.unwrap_or(side.rtp_port)
    };
    StreamReport {
        index: i,
        media: s.media.clone(),
        local_rtp: SocketAddr::new(side.local_ip, side.rtp_port),
        local_rtcp: SocketAddr::new(side.local_ip, rtcp_port),
        sdp_peer: side.sdp_rtp,
        latched_peer: side.state.latched_rtp(),
        direction: side.direction,
        rtcp_mux: side.rtcp_mux,
        strict_source: side.latch.strict_source,
        packets: c.packets.load(Relaxed) + kc.packets,
        bytes: c.bytes.load(Relaxed) + kc.bytes,
        rtcp_packets: c.rtcp_packets.load(Relaxed),
        rtcp_bytes: c.rtcp_bytes.load(Relaxed),
        dropped_wrong_source: c.dropped_wrong_source.load(Relaxed)
            + c.dropped_unconfirmed.load(Relaxed)
            + kc.dropped_wrong_source,
        dropped_direction: c.dropped_direction.load(Relaxed),
        dropped_malformed: c.dropped_malformed.load(Relaxed),
        last_packet_unix_ms: (last != 0).then(|| clock.unix_ms_of(last)),
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
            SideCrypto::Plain => SrtpReport::Plain,
            SideCrypto::Passthrough => SrtpReport::Passthrough,
            SideCrypto::Terminated { rx, .. } => SrtpReport::Terminated(rx.suite),
        },
        srtp_auth_failures: c.srtp_auth_failures.load(Relaxed),
        srtp_replayed: c.srtp_replayed.load(Relaxed),
        transcoded: s.transcode.is_some(),
        codec: Some(side.codec.clone()).filter(|c| !c.is_empty()),
        payload_type: s.transcode.as_ref().map(|t| t.formats[k].pt),
        rtcp_terminated: c.rtcp_terminated.load(Relaxed),
        transcoded_out: c.transcoded_out.load(Relaxed),
        transcode_concealed: c.transcode_concealed.load(Relaxed),
        transcode_fec_recovered: c.transcode_fec.load(Relaxed),
        transcode_dtmf: c.transcode_dtmf.load(Relaxed),
        transcode_dropped: c.transcode_dropped.load(Relaxed),
        opus_fec_loss_pct: c.transcode_fec_loss_pct.load(Relaxed),
        reported_loss_pct: side.state.reported_loss_pct(),
        quality: side
            .quality
            .received
            .as_ref()
            .map(|q| quality_report(q, clock)),
    }
}

/// Why packets were dropped, in the order of [`Statistics::dropped_by_reason`]: strict source,
/// a new source not confirmed yet, direction (hold), malformed, no peer to send to yet, SRTP
/// authentication, SRTP replay, the XDP program's own drops (its action table), and datagrams
/// to relay ports no call holds that the XDP program dropped (scans; without XDP the kernel
/// stack drops them, no socket being bound, and sluice never sees them).
pub const DROP_REASONS: [&str; 9] = [
    "wrong_source",
    "unconfirmed",
    "direction",
    "malformed",
    "no_peer",
    "srtp_auth",
    "srtp_replay",
    "xdp",
    "unknown_port",
];

/// Index of `no_peer` in [`DROP_REASONS`]: also what reaches a pooled socket.
pub(super) const NO_PEER: usize = 4;

/// Index of `unknown_port` in [`DROP_REASONS`]: counted by the XDP program, not per call.
const UNKNOWN_PORT: usize = 8;

/// One side's drops by [`DROP_REASONS`], userspace and kernel together.
pub(super) fn drops(c: &EndpointCounters, kc: &FlowCounters) -> [u64; 9] {
    [
        c.dropped_wrong_source.load(Relaxed) + kc.dropped_wrong_source,
        c.dropped_unconfirmed.load(Relaxed),
        c.dropped_direction.load(Relaxed),
        c.dropped_malformed.load(Relaxed),
        c.dropped_no_peer.load(Relaxed),
        c.srtp_auth_failures.load(Relaxed),
        c.srtp_replayed.load(Relaxed),
        kc.dropped_action,
        0,
    ]
}

fn add(into: &mut [u64; 9], from: [u64; 9]) {
    into.iter_mut().zip(from).for_each(|(a, b)| *a += b);
}

impl State {
    pub(super) fn statistics(&self, uptime: Duration) -> Statistics {
        let (mut packets, mut bytes, mut dropped) =
            (self.totals.packets, self.totals.bytes, self.totals.dropped);
        let mut by_reason = self.totals.dropped_by_reason;
        let mut kernel_flows = 0;
        let mut kernel_packets = 0;
        let mut streams = [[0; 3]; 3];
        let mut transcoder_channels = 0;
        let mut transcoded = self.totals.transcoded;
        for call in self.calls.values() {
            // A parked branch's sides counted while they were the call's: leaving them out
            // would make the counters go down.
            for side in call.forks.iter().flat_map(|f| &f.state.sides) {
                add_transcoded(&mut transcoded, &side.counters);
            }
            for s in &call.streams {
                kernel_flows += s.kernel.len() as u64;
                if !s.disabled {
                    let (path, kind) = stream_class(s);
                    streams[path][kind] += 1;
                    if s.transcode.is_some() {
                        transcoder_channels += 2;
                    }
                }
                for (k, side) in s.sides.iter().enumerate() {
                    add_transcoded(&mut transcoded, &side.counters);
                    let kc = kernel_counters(s, k, self.kernel.as_deref());
                    packets += side.counters.forwarded.load(Relaxed) + kc.packets;
                    bytes += side.counters.forwarded_bytes.load(Relaxed) + kc.bytes;
                    dropped += side.counters.dropped() + kc.dropped();
                    add(&mut by_reason, drops(&side.counters, &kc));
                    kernel_packets += kc.packets;
                }
            }
        }
        let unknown_port = self.kernel.as_ref().map_or(0, |k| k.unknown_port_drops());
        by_reason[UNKNOWN_PORT] += unknown_port;
        dropped += unknown_port;
        Statistics {
            uptime,
            calls_current: self.calls.len() as u64,
            calls_total: self.totals.calls,
            calls_timed_out: self.totals.timed_out,
            // Pooled ports are bound but any new call may have them.
            ports_in_use: (self.ports.in_use() - self.pool.ports()) as u64,
            ports_free: (self.ports.free() + self.pool.ports()) as u64,
            packets_relayed: packets,
            bytes_relayed: bytes,
            packets_dropped: dropped,
            dropped_by_reason: std::array::from_fn(|i| (DROP_REASONS[i], by_reason[i])),
            // Kept by the event hub, outside the state; filled in by `Sessions::statistics`.
            events_missed: 0,
            max_sessions: self.max_sessions,
            kernel_path: self.kernel.as_ref().map(|k| k.describe()),
            kernel_flows,
            kernel_packets: self.totals.kernel_packets + kernel_packets,
            workers: self
                .kernel
                .as_ref()
                .map(|k| k.worker_stats())
                .unwrap_or_default()
                .iter()
                .map(|w| WorkerReport {
                    index: w.worker,
                    cpu: w.cpu,
                    rx: w.rx_packets,
                    tx: w.tx_packets + w.tx_socket_packets,
                    dropped: w.dropped(),
                    transform_errors: w.transform_errors,
                    load_permille: w.load_permille,
                    tx_ring: w.tx_packets,
                    tx_kernel: w.tx_socket_packets,
                })
                .collect(),
            kernel_features: self
                .kernel
                .as_ref()
                .map(|k| k.kernel_features())
                .unwrap_or_default()
                .into_iter()
                .map(|f| KernelFeatureReport {
                    name: f.name,
                    available: f.available,
                    used: f.used,
                    without: Some(f.without).filter(|w| !w.is_empty()),
                })
                .collect(),
            streams,
            transcoder_channels,
            transcoded_packets: transcoded[0],
            transcoder_concealed_frames: transcoded[1],
            transcoder_fec_recovered_frames: transcoded[2],
            calls_ended: std::array::from_fn(|i| (CALL_END_REASONS[i], self.totals.calls_ended[i])),
        }
    }
}

/// A stream's indexes into [`STREAM_PATHS`] and [`STREAM_KINDS`]. A worker flow means the
/// stream's packets need work, so one is enough to call the stream a worker's.
fn stream_class(s: &Stream) -> (usize, usize) {
    let path = if s.kernel.is_empty() {
        0
    } else if s.kernel.iter().any(|f| f.worker) {
        2
    } else {
        1
    };
    let terminated = s
        .sides
        .iter()
        .any(|d| matches!(d.crypto, SideCrypto::Terminated { .. }));
    let kind = if s.transcode.is_some() {
        2
    } else if terminated {
        1
    } else {
        0
    };
    (path, kind)
}

/// Adds a side's transcoder counters: `[packets out, concealed, FEC recovered]`.
pub(super) fn add_transcoded(into: &mut [u64; 3], c: &EndpointCounters) {
    into[0] += c.transcoded_out.load(Relaxed);
    into[1] += c.transcode_concealed.load(Relaxed);
    into[2] += c.transcode_fec.load(Relaxed);
}
