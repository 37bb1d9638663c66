//! Per-endpoint counters, written by the data plane and read by the control plane.
//!
//! A stream's packets are processed by the userspace engine or by an AF_XDP worker, and while
//! the stream moves between the two both may count into the same endpoint (the old owner
//! drains what its socket still holds while the new one takes the rest). So every count is a
//! [`Counter`], which only adds atomically: a relaxed load + store from two threads would lose
//! increments. Gauges (last packet time, jitter, clock rate) stay plain atomics with stores:
//! the latest value wins, which is what they mean.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::srtp::SrtpHandover;

/// A count that only goes up, by atomic adds: any number of threads may add to it at once
/// without losing an increment (there is no `store` to race with).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` and returns the value before.
    #[inline]
    pub fn add(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Relaxed)
    }
    /// The current value (`order` as for [`AtomicU64::load`]).
    #[inline]
    pub fn load(&self, order: std::sync::atomic::Ordering) -> u64 {
        self.0.load(order)
    }
}

#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// RTP and RTCP packets received from this endpoint and accepted (source checks passed).
    pub packets: Counter,
    pub bytes: Counter,
    pub rtcp_packets: Counter,
    /// Of `bytes`: RTCP (the userspace path; the kernel path counts RTP and RTCP together).
    pub rtcp_bytes: Counter,
    /// Packets sent on towards the partner endpoint.
    pub forwarded: Counter,
    pub forwarded_bytes: Counter,
    pub dropped_wrong_source: Counter,
    pub dropped_unconfirmed: Counter,
    pub dropped_direction: Counter,
    pub dropped_malformed: Counter,
    pub dropped_no_peer: Counter,
    pub send_errors: Counter,
    /// SRTP/SRTCP packets whose authentication tag did not verify.
    pub srtp_auth_failures: Counter,
    /// SRTP/SRTCP replays and packets behind the replay window.
    pub srtp_replayed: Counter,
    /// RTCP from this endpoint not forwarded because the stream is transcoded: its reports
    /// describe a stream the other leg never sees (sluice sends its own SSRC there).
    pub rtcp_terminated: Counter,
    /// Transcoding of what this endpoint sends (mirrors of the transcoder's own figures,
    /// refreshed per batch): packets produced towards the partner, frames concealed by PLC,
    /// frames recovered from Opus in-band FEC, telephone-events relayed, and packets the
    /// transcoder refused or dropped (late, duplicate, comfort noise, unknown payload type,
    /// malformed).
    pub transcoded_out: Counter,
    pub transcode_concealed: Counter,
    pub transcode_fec: Counter,
    pub transcode_dtmf: Counter,
    pub transcode_dropped: Counter,
    /// The loss (percent) this direction's Opus encoder spends in-band FEC on, from what the
    /// receiving leg reports.
    pub transcode_fec_loss_pct: AtomicU32,
    /// The next sequence number the transcoder of this direction sends, with bit 16 set once
    /// there is one: whichever path (engine or worker) takes the stream over continues from it.
    pub transcode_next_seq: AtomicU32,
    /// SRTP state of the stream this endpoint sends (`srtp_rx_*`, what sluice unprotects) and of
    /// the one sent to it (`srtp_tx_*`, what sluice protects), published by whichever path
    /// (engine or worker) processes it, so that the other continues from it when the stream
    /// moves. Index: ROC << 16 | SEQ with bit 63 set once known.
    srtp_rx_ssrc: AtomicU32,
    srtp_rx_index: AtomicU64,
    srtp_rx_rtcp: AtomicU32,
    srtp_tx_ssrc: AtomicU32,
    srtp_tx_index: AtomicU64,
    srtp_tx_rtcp: AtomicU32,
    srtp_published: std::sync::atomic::AtomicBool,
    /// Loss this endpoint reports (RTCP RR/SR fraction lost, 1/256ths, bit 8 set once there is
    /// a report) about the transcoded stream sluice sends it: drives that stream's Opus FEC.
    pub reported_loss: AtomicU32,
    /// `clock::now_ns()` of the last accepted packet; 0 = none yet.
    pub last_packet_ns: AtomicU64,
    pub rtp_lost: AtomicU64,
    /// RFC 3550 A.8 interarrival jitter in RTP timestamp units.
    pub jitter_ts: AtomicU32,
    pub clock_rate: AtomicU32,
    pub ssrc: AtomicU32,
    /// Changes only when latching decides, never per packet.
    latched_rtp: Mutex<Option<SocketAddr>>,
    latched_rtcp: Mutex<Option<SocketAddr>>,
}

/// Sequence numbers skipped when a transcoded stream moves between the engine and a worker: the
/// old owner may send a few more packets (already queued in its socket) after the new one read
/// where to start. A receiver sees the jump as that many lost packets, never duplicates.
pub const TRANSCODE_SEQ_MARGIN: u16 = 16;

/// SRTCP indices skipped when an SRTP stream moves between the engine and a worker, for the
/// same reason (an SRTCP index must never be sent twice).
pub const SRTCP_INDEX_MARGIN: u32 = 16;

/// What one transcoder has already added to an endpoint's transcode counters (see
/// [`EndpointCounters::publish_transcoder`]); a new transcoder starts from the default.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TranscodePublished {
    out: u64,
    concealed: u64,
    fec: u64,
    dtmf: u64,
    dropped: u64,
}

impl TranscodePublished {
    fn of(t: &crate::transcode::Transcoder) -> Self {
        let s = t.stats();
        Self {
            out: s.packets_out,
            concealed: s.concealed_frames,
            fec: s.fec_recovered,
            dtmf: s.dtmf_relayed,
            dropped: s.late_dropped
                + s.duplicate_dropped
                + s.cn_dropped
                + s.unknown_pt_dropped
                + s.malformed,
        }
    }
}

/// Adds to a counter that has exactly one writer thread (a worker's own counters): a relaxed
/// load + store, cheaper than a locked add. Never for [`EndpointCounters`], whose counts two
/// paths may add to at once (they are [`Counter`]s, which this does not take).
#[inline]
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl EndpointCounters {
    pub fn latched_rtp(&self) -> Option<SocketAddr> {
        *self.latched_rtp.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn latched_rtcp(&self) -> Option<SocketAddr> {
        *self.latched_rtcp.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Written by the engine when latching decides; public for tests of the layers above.
    pub fn set_latched(&self, rtcp: bool, addr: Option<SocketAddr>) {
        let slot = if rtcp {
            &self.latched_rtcp
        } else {
            &self.latched_rtp
        };
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }
    /// The sequence number a new transcoder for this direction should start at: past what the
    /// previous one sent (by a margin for packets it may still send while the stream moves).
    pub fn transcode_seq_start(&self) -> Option<u16> {
        let v = self.transcode_next_seq.load(Relaxed);
        (v & 1 << 16 != 0).then(|| (v as u16).wrapping_add(TRANSCODE_SEQ_MARGIN))
    }
    /// Publishes the SRTP state of one direction (`tx`: what sluice protects towards this
    /// endpoint).
    pub fn publish_srtp(&self, tx: bool, h: SrtpHandover) {
        let (ssrc, index, rtcp) = self.srtp_slots(tx);
        ssrc.store(h.ssrc, Relaxed);
        rtcp.store(h.srtcp_next_index, Relaxed);
        index.store(h.rtp_index.map_or(0, |i| i | 1 << 63), Relaxed);
        self.srtp_published.store(true, Relaxed);
    }
    /// The SRTP state last published for one direction.
    pub fn srtp_state(&self, tx: bool) -> Option<SrtpHandover> {
        if !self.srtp_published.load(Relaxed) {
            return None;
        }
        let (ssrc, index, rtcp) = self.srtp_slots(tx);
        let i = index.load(Relaxed);
        let rtcp_next = rtcp.load(Relaxed);
        let rtp_index = (i & 1 << 63 != 0).then_some(i & !(1 << 63));
        if rtp_index.is_none() && rtcp_next == 0 {
            return None;
        }
        Some(SrtpHandover {
            ssrc: ssrc.load(Relaxed),
            rtp_index,
            srtcp_next_index: rtcp_next,
        })
    }
    fn srtp_slots(&self, tx: bool) -> (&AtomicU32, &AtomicU64, &AtomicU32) {
        if tx {
            (&self.srtp_tx_ssrc, &self.srtp_tx_index, &self.srtp_tx_rtcp)
        } else {
            (&self.srtp_rx_ssrc, &self.srtp_rx_index, &self.srtp_rx_rtcp)
        }
    }
    /// Adds what a transcoder counted since `last` (its previous publication) to these
    /// counters, and publishes its next sequence number, from whichever path (engine or worker)
    /// runs it. A transcoder's figures start at 0 and the stream gets a new one each time it
    /// moves, so only their growth is added: a store would lose what the previous one counted.
    pub fn publish_transcoder(
        &self,
        t: &crate::transcode::Transcoder,
        last: &mut TranscodePublished,
    ) {
        self.publish_transcode_seq(t.next_out_seq());
        self.transcode_fec_loss_pct
            .store(u32::from(t.expected_loss()), Relaxed);
        let now = TranscodePublished::of(t);
        if now == *last {
            return;
        }
        let grown = |n: u64, l: u64| n.saturating_sub(l);
        self.transcoded_out.add(grown(now.out, last.out));
        self.transcode_concealed
            .add(grown(now.concealed, last.concealed));
        self.transcode_fec.add(grown(now.fec, last.fec));
        self.transcode_dtmf.add(grown(now.dtmf, last.dtmf));
        self.transcode_dropped.add(grown(now.dropped, last.dropped));
        *last = now;
    }
    /// Records the fraction lost (1/256ths) this endpoint reported about the stream sent to it.
    pub fn report_loss(&self, fraction: u8) {
        self.reported_loss
            .store(u32::from(fraction) | 1 << 8, Relaxed);
    }
    /// The loss this endpoint last reported, in percent (rounded up), if it reported any.
    pub fn reported_loss_pct(&self) -> Option<u8> {
        let v = self.reported_loss.load(Relaxed);
        (v & 1 << 8 != 0).then(|| ((v & 0xff) * 100).div_ceil(256) as u8)
    }
    /// Published by the transcoder's owner after each batch.
    pub fn publish_transcode_seq(&self, next: u16) {
        self.transcode_next_seq
            .store(u32::from(next) | 1 << 16, Relaxed);
    }
    /// Sum of every drop reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_wrong_source.load(Relaxed)
            + self.dropped_unconfirmed.load(Relaxed)
            + self.dropped_direction.load(Relaxed)
            + self.dropped_malformed.load(Relaxed)
            + self.dropped_no_peer.load(Relaxed)
            + self.srtp_auth_failures.load(Relaxed)
            + self.srtp_replayed.load(Relaxed)
    }
    /// Jitter in milliseconds, from the timestamp-unit estimate and the stream's clock rate.
    pub fn jitter_ms(&self) -> f64 {
        let rate = match self.clock_rate.load(Relaxed) {
            0 => 8000,
            r => r,
        };
        self.jitter_ts.load(Relaxed) as f64 * 1000.0 / rate as f64
    }
}
