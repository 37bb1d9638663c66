//! The per-stream packet core: what happens to a datagram between arriving at sluice and
//! leaving it, written once and driven by both paths that carry media in userspace, the
//! engine's event loop (`engine.rs`, sockets and `recvmmsg`/`sendmmsg`) and the AF_XDP workers
//! (`worker/`, UMEM frames and rings).
//!
//! ```text
//!  datagram (bytes, source, arrival time)
//!    -> classify (RFC 5761 demux; an RFC 3605 RTCP port takes RTCP only)
//!    -> unprotect (SRTP/SRTCP, RFC 3711 3.3 / 3.4) - before latching: only authenticated
//!       packets may move a latch
//!    -> latch (engine only: a worker flow's source was checked by the XDP program)
//!    -> count, receive statistics, RTCP reports
//!    -> direction (RFC 3264 6.1; RTCP exempt, 5.1)
//!    -> transcode (RTP into the transcoder, RTCP terminated) or forward
//!    -> protect (SRTP/SRTCP towards the partner)
//!  = Verdict: Forward { len, to } / Transcoder / Drop(reason), counts in `StreamCore::tally`
//! ```
//!
//! Sans-IO: it takes no clock (`now_ns` comes with the datagram), opens no socket and knows no
//! file descriptor; where a packet goes is the driver's opaque `D` in [`Egress`] (the engine's
//! socket and address, nothing for a worker, whose flow has one destination). Nothing here
//! allocates or locks per packet; counts go into a plain [`Tally`] the driver adds to the
//! shared counters once per batch. The crate it lives in (sluice-media) does not depend on
//! `libc`, `mio` or `socket2`, so the compiler refuses sockets here; `no_clock_or_lock_in_the_core`
//! (tests) keeps std's clock and locks out of this module tree.
//!
//! A new per-packet step (recording, forking media, DTLS-SRTP, RTCP generation) goes into
//! [`StreamCore::receive`] (and [`StreamCore::pull`] for what the transcoder sends), with its
//! state in [`StreamCore`]: both paths then have it.

mod tally;

use std::net::SocketAddr;

use crate::handover::StreamHandover;
use crate::latch::{DropReason, Latch, LatchConfig, Verdict as LatchVerdict};
use crate::rtcp_report::RtcpReports;
use crate::rtp::{PacketKind, RtpPacket, classify_relay};
use crate::rtp_stats::RtpStats;
use crate::srtp::{SrtpContext, SrtpError};
use crate::stats::TranscodePublished;
use crate::transcode::Transcoder;

pub use tally::Tally;

/// A received datagram, as the driver got it.
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The datagram is `buf[..len]`; the rest of `buf` is room to grow (an SRTP tag, an SRTCP
    /// index: [`crate::srtp::MAX_RTCP_OVERHEAD`] at most).
    pub buf: &'a mut [u8],
    pub len: usize,
    /// Where it came from; `None` where the source was checked before (a worker flow's, by
    /// the XDP program). Latching needs it.
    pub src: Option<SocketAddr>,
    /// Arrival time (the relay's monotonic clock, ns), read once per batch by the driver.
    pub now_ns: u64,
    /// It came to a separate RTCP port (RFC 3605).
    pub rtcp_port: bool,
}

/// What the core needs of the partner (the endpoint packets are sent to), copied by the
/// driver once per batch. `D` is where a packet goes, in the driver's terms.
#[derive(Debug, Clone, Copy)]
pub struct Egress<D> {
    /// Where RTP goes (`None`: nowhere yet, dropped as `NoPeer`).
    pub rtp: Option<D>,
    pub rtcp: Option<D>,
    /// The partner's SDP direction lets it receive media.
    pub receives: bool,
    /// Packets to the partner are SRTP-protected (the context comes with each call).
    pub srtp: bool,
    /// For a transcoded stream: which report block of this endpoint's RTCP is about the
    /// stream sluice sends it (its loss sets that stream's Opus FEC).
    pub loss_report: LossReport,
}

/// Which RTCP report block describes the stream sluice sends an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReport {
    /// None (the partner does not transcode).
    Ignore,
    /// The block about this SSRC.
    About(u32),
    /// The first block, whatever its SSRC.
    FirstBlock,
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<D> {
    /// Send `buf[..len]` to `to` (the partner's RTCP destination when `rtcp`).
    Forward { len: usize, rtcp: bool, to: D },
    /// The transcoder has it (RTP pushed, `accepted` unless the transcoder refused it, which its
    /// own statistics count) or it was terminated (RTCP of a transcoded stream). What the
    /// transcoder sends comes from [`StreamCore::pull`].
    Transcoder { accepted: bool },
    /// Dropped, and counted in the tally.
    Drop(Dropped),
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not RTP/RTCP (or RTP on an RTCP port), truncated, no source address.
    Malformed,
    /// Strict source: not from the latched source.
    WrongSource,
    /// A new source still proving itself.
    Unconfirmed,
    /// The stream's direction forbids it (hold, sendonly, recvonly).
    Direction,
    /// No partner, or the partner's address is not known yet.
    NoPeer,
    /// SRTP/SRTCP unprotect failed: forged, replayed, too old or malformed.
    Unprotect(SrtpError),
    /// SRTP/SRTCP protect towards the partner failed.
    Protect(SrtpError),
    /// SRTP is due towards the partner but its context is missing: never send plain.
    NoTransmitContext,
    /// A transcoding plan was given but no transcoder could be built: never relay a codec the
    /// other leg did not agree to.
    TranscoderBroken,
}

/// Latching state of an endpoint (the engine's; see `latch.rs`).
#[derive(Debug, Clone)]
pub struct Latching {
    pub rtp: Latch,
    pub rtcp: Latch,
    strict_source: bool,
}

impl Latching {
    pub fn new(cfg: LatchConfig) -> Self {
        Self {
            rtp: Latch::new(cfg),
            rtcp: Latch::new(rtcp_latch_config(cfg)),
            strict_source: cfg.strict_source,
        }
    }

    pub fn set_config(&mut self, cfg: LatchConfig) {
        self.rtp.set_config(cfg);
        self.rtcp.set_config(rtcp_latch_config(cfg));
        self.strict_source = cfg.strict_source;
    }

    /// `Some(addr)` when the packet moved a latch to `addr`.
    #[inline]
    fn on_packet(
        &mut self,
        src: SocketAddr,
        rtcp: bool,
        rtcp_port: bool,
        pkt: &[u8],
        now_ns: u64,
    ) -> Result<Option<SocketAddr>, Dropped> {
        let v = if rtcp && rtcp_port {
            // RTCP has no sequence number to confirm a source with, so it never moves the RTP
            // latch. On its own port it latches at once, but (strict) only from the host the
            // RTP comes from.
            let rtp_host = self.rtp.peer().map(|a| a.ip());
            if self.strict_source && rtp_host.is_some_and(|ip| ip != src.ip()) {
                LatchVerdict::Drop(DropReason::WrongSource)
            } else {
                self.rtcp.on_packet(src, None, now_ns)
            }
        } else if rtcp {
            // Muxed RTCP comes from the RTP source or is not accepted (strict).
            if self.rtp.peer() == Some(src) || !self.strict_source {
                LatchVerdict::Accept
            } else {
                LatchVerdict::Drop(DropReason::Unconfirmed)
            }
        } else {
            let seq = RtpPacket::new_unchecked(pkt).sequence();
            self.rtp.on_packet(src, Some(seq), now_ns)
        };
        match v {
            LatchVerdict::Accept => Ok(None),
            LatchVerdict::Latched(addr) => Ok(Some(addr)),
            LatchVerdict::Drop(DropReason::WrongSource) => Err(Dropped::WrongSource),
            LatchVerdict::Drop(DropReason::Unconfirmed) => Err(Dropped::Unconfirmed),
        }
    }
}

/// RTCP comes every few seconds: waiting for several packets would outlast the latching window.
pub fn rtcp_latch_config(rtp: LatchConfig) -> LatchConfig {
    LatchConfig {
        confirm_packets: 1,
        ..rtp
    }
}

/// Receive statistics and the RTCP reports of the current batch (the engine's).
#[derive(Debug)]
pub struct Observe {
    pub stats: RtpStats,
    /// SR/RR content of the RTCP accepted since the driver last took them, with arrival times
    /// (capacity fixed at creation: never grows).
    pub reports: Vec<(u64, RtcpReports)>,
}

impl Observe {
    pub fn new(clock_rate: u32, reports_per_batch: usize) -> Self {
        Self {
            stats: RtpStats::new(clock_rate),
            reports: Vec::with_capacity(reports_per_batch),
        }
    }
}

/// The per-packet state of one direction of a stream: what one endpoint sends, on its way to
/// the partner. The SRTP context protecting towards the partner is lent with each call (in
/// the engine it belongs to the partner; a worker flow owns its own).
#[derive(Debug)]
pub struct StreamCore {
    /// Unprotects what the endpoint sends (sluice terminates its SRTP).
    pub srtp_rx: Option<Box<SrtpContext>>,
    /// `None`: the source was checked before the core.
    pub latching: Option<Latching>,
    /// `None`: no receive statistics (a worker flow; the XDP program counts).
    pub observe: Option<Observe>,
    /// Transcoding of what the endpoint sends.
    pub transcoder: Option<Box<Transcoder>>,
    /// What `transcoder` has added to the counters so far.
    pub transcode_published: TranscodePublished,
    /// A plan was given but no transcoder could be built.
    pub transcode_broken: bool,
    /// The endpoint's SDP direction lets it send media (sendrecv/sendonly).
    pub sends: bool,
    /// Counts since the driver last flushed them.
    pub tally: Tally,
    /// Latches moved since the driver last looked: [RTP, RTCP port].
    latched: [Option<SocketAddr>; 2],
    /// Loss (1/256ths) the endpoint last reported about the transcoded stream sent to it.
    reported_loss: Option<u8>,
}

impl Default for StreamCore {
    fn default() -> Self {
        Self {
            srtp_rx: None,
            latching: None,
            observe: None,
            transcoder: None,
            transcode_published: TranscodePublished::default(),
            transcode_broken: false,
            sends: true,
            tally: Tally::default(),
            latched: [None; 2],
            reported_loss: None,
        }
    }
}

impl StreamCore {
    /// A new transcoder for `plan` whose first sequence number is `seq` (its figures start at
    /// 0). When none can be built, the endpoint's RTP is dropped rather than sent untranscoded.
    pub fn start_transcoder(
        &mut self,
        plan: &crate::transcode::DirectionPlan,
        seq: u16,
    ) -> Result<(), crate::transcode::TranscodeError> {
        match Transcoder::new(plan, seq) {
            Ok(t) => {
                self.transcoder = Some(Box::new(t));
                self.transcode_published = TranscodePublished::default();
                self.transcode_broken = false;
                Ok(())
            }
            Err(e) => {
                self.transcoder = None;
                self.transcode_broken = true;
                Err(e)
            }
        }
    }

    /// Where this endpoint's streams stand, for the path that takes them over: `self` holds
    /// what it sends (SRTP receive context, transcoder), `tx` protects what is sent to it.
    pub fn handover(&self, tx: Option<&SrtpContext>) -> StreamHandover {
        StreamHandover {
            srtp_rx: self.srtp_rx.as_ref().and_then(|c| c.handover()),
            srtp_tx: tx.and_then(|c| c.handover()),
            transcode_next_seq: self.transcoder.as_ref().map(|t| t.next_out_seq()),
        }
    }

    /// Continues from what the other path handed back: SRTP past its indices and replay lists,
    /// and a transcoder (same plan, fresh codec state) past its sequence numbers.
    pub fn resume(
        &mut self,
        h: &StreamHandover,
        tx: Option<&mut SrtpContext>,
    ) -> Result<(), crate::transcode::TranscodeError> {
        if let Some(rx) = self.srtp_rx.as_deref_mut() {
            h.resume_srtp(rx, false);
        }
        if let Some(tx) = tx {
            h.resume_srtp(tx, true);
        }
        if let (Some(seq), Some(t)) = (h.transcode_seq_start(), &self.transcoder) {
            let plan = t.plan().clone();
            self.start_transcoder(&plan, seq)?;
        }
        Ok(())
    }

    /// The per-packet steps for a datagram the endpoint sent (see the module documentation).
    /// `egress` is `None` when there is no partner; `tx` protects towards it when
    /// `egress.srtp`. Every drop is counted in the tally.
    #[inline]
    pub fn receive<D: Copy>(
        &mut self,
        d: Datagram<'_>,
        egress: Option<&Egress<D>>,
        tx: Option<&mut SrtpContext>,
    ) -> Verdict<D> {
        match self.steps(d, egress, tx) {
            Ok(v) => v,
            Err(drop) => {
                self.tally.count_drop(drop);
                Verdict::Drop(drop)
            }
        }
    }

    #[inline]
    fn steps<D: Copy>(
        &mut self,
        d: Datagram<'_>,
        egress: Option<&Egress<D>>,
        tx: Option<&mut SrtpContext>,
    ) -> Result<Verdict<D>, Dropped> {
        let Datagram {
            buf,
            len: wire_len,
            src,
            now_ns,
            rtcp_port,
        } = d;
        let rtcp = classify(buf.get(..wire_len).ok_or(Dropped::Malformed)?, rtcp_port)?;
        let mut len = wire_len;
        // SRTP is checked before latching: only authenticated packets may move a latch
        // (DESIGN security defaults; RFC 3711 3.3 step 5: a packet whose tag fails is
        // discarded, and state is updated only after authentication).
        if let Some(rx) = self.srtp_rx.as_deref_mut() {
            let r = if rtcp {
                rx.unprotect_rtcp(buf, len)
            } else {
                rx.unprotect_rtp(buf, len)
            };
            len = r.map_err(Dropped::Unprotect)?;
        }
        if let Some(l) = self.latching.as_mut() {
            let src = src.ok_or(Dropped::Malformed)?;
            if let Some(addr) = l.on_packet(src, rtcp, rtcp_port, &buf[..len], now_ns)? {
                self.latched[usize::from(rtcp_port)] = Some(addr);
            }
        }
        let t = &mut self.tally;
        t.packets += 1;
        t.bytes += wire_len as u64;
        if rtcp {
            t.rtcp_packets += 1;
            t.rtcp_bytes += wire_len as u64;
            if let Some(o) = self.observe.as_mut()
                && o.reports.len() < o.reports.capacity()
                && let Some(r) = crate::rtcp_report::parse(&buf[..len])
            {
                o.reports.push((now_ns, r));
            }
        } else if let Some(o) = self.observe.as_mut() {
            let rtp = RtpPacket::new_unchecked(&buf[..len]);
            o.stats
                .on_rtp(rtp.ssrc(), rtp.sequence(), rtp.timestamp(), now_ns);
        }
        let eg = egress.ok_or(Dropped::NoPeer)?;
        // RFC 3264 6.1: a sendonly/inactive stream is not sent, a recvonly/inactive one is not
        // sent to. RTCP keeps flowing on hold (RFC 3264 5.1), so it is exempt.
        if !rtcp && (!self.sends || !eg.receives) {
            return Err(Dropped::Direction);
        }
        if self.transcode_broken {
            return Err(Dropped::TranscoderBroken);
        }
        if let Some(tr) = self.transcoder.as_deref_mut() {
            if rtcp {
                // Its reports describe a stream the other leg never sees (sluice sends its own
                // SSRC there): terminated, but what it says about sluice's stream is kept.
                self.tally.rtcp_terminated += 1;
                let about = match eg.loss_report {
                    LossReport::Ignore => None,
                    LossReport::About(ssrc) => Some(Some(ssrc)),
                    LossReport::FirstBlock => Some(None),
                };
                if let Some(f) =
                    about.and_then(|ssrc| crate::rtp::rtcp_fraction_lost(&buf[..len], ssrc))
                {
                    self.reported_loss = Some(f);
                }
                return Ok(Verdict::Transcoder { accepted: true });
            }
            // Refusals are counted in the transcoder's own statistics.
            let accepted = tr.push(&buf[..len], now_ns).is_ok();
            return Ok(Verdict::Transcoder { accepted });
        }
        let to = if rtcp { eg.rtcp } else { eg.rtp }.ok_or(Dropped::NoPeer)?;
        if eg.srtp {
            len = protect(tx, buf, len, rtcp)?;
        }
        Ok(Verdict::Forward { len, rtcp, to })
    }

    /// The transcoder's next packet towards the partner, written to `out` (at most `room`
    /// bytes of RTP, the rest of `out` for the SRTP tag) and protected where due. `None` when
    /// the transcoder has nothing ready; a dropped packet is counted in the tally.
    #[inline]
    pub fn pull<D: Copy>(
        &mut self,
        out: &mut [u8],
        room: usize,
        egress: Option<&Egress<D>>,
        tx: Option<&mut SrtpContext>,
    ) -> Option<Verdict<D>> {
        let t = self.transcoder.as_deref_mut()?;
        let len = t.pull(out.get_mut(..room)?)?;
        let v = (|| {
            // Hold or a vanished peer may have come between the packet's arrival and now.
            let eg = egress.ok_or(Dropped::NoPeer)?;
            if !self.sends || !eg.receives {
                return Err(Dropped::Direction);
            }
            let to = eg.rtp.ok_or(Dropped::NoPeer)?;
            let len = if eg.srtp {
                protect(tx, out, len, false)?
            } else {
                len
            };
            Ok(Verdict::Forward {
                len,
                rtcp: false,
                to,
            })
        })();
        Some(v.unwrap_or_else(|drop| {
            self.tally.count_drop(drop);
            Verdict::Drop(drop)
        }))
    }

    /// The address a latch moved to since the last call, per latch (`rtcp`: the separate RTCP
    /// port's), for the driver to publish.
    pub fn take_latched(&mut self, rtcp: bool) -> Option<SocketAddr> {
        self.latched[usize::from(rtcp)].take()
    }

    /// The loss the endpoint reported since the last call (1/256ths).
    pub fn take_reported_loss(&mut self) -> Option<u8> {
        self.reported_loss.take()
    }

    /// Where the RTP latch points (media for this endpoint goes there).
    pub fn rtp_peer(&self) -> Option<SocketAddr> {
        self.latching.as_ref().and_then(|l| l.rtp.peer())
    }

    /// Where the RTCP-port latch points.
    pub fn rtcp_peer(&self) -> Option<SocketAddr> {
        self.latching.as_ref().and_then(|l| l.rtcp.peer())
    }
}

/// RTP or RTCP (`Ok(true)`), by RFC 5761 demultiplexing; a separate RTCP port (RFC 3605) carries
/// RTCP only, validated like a muxed one.
#[inline]
pub fn classify(pkt: &[u8], rtcp_port: bool) -> Result<bool, Dropped> {
    match classify_relay(pkt) {
        PacketKind::Rtcp => Ok(true),
        PacketKind::Rtp if !rtcp_port => Ok(false),
        _ => Err(Dropped::Malformed),
    }
}

#[inline]
fn protect(
    tx: Option<&mut SrtpContext>,
    buf: &mut [u8],
    len: usize,
    rtcp: bool,
) -> Result<usize, Dropped> {
    let tx = tx.ok_or(Dropped::NoTransmitContext)?;
    let r = if rtcp {
        tx.protect_rtcp(buf, len)
    } else {
        tx.protect_rtp(buf, len)
    };
    r.map_err(Dropped::Protect)
}

#[cfg(test)]
mod tests;
