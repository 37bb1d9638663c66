//! Per-endpoint counters, written by the data plane and read by the control plane.
//!
//! A stream's packets are processed by the userspace engine or by an AF_XDP worker, and while
//! the stream moves between the two both may count into the same endpoint (the old owner
//! drains what its socket still holds while the new one takes the rest). So every count is a
//! [`Counter`], which only adds atomically: a relaxed load + store from two threads would lose
//! increments. The state that is not a count is elsewhere: latched addresses and reported loss
//! in [`crate::handover::EndpointState`], and what moves with a stream (SRTP and transcoder
//! state) in the [`crate::handover::StreamHandover`] messages. Gauges (last packet time,
//! jitter, clock rate) stay plain atomics with stores: the latest value wins, which is what they
//! mean.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

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
    /// Transcoding of what this endpoint sends (the transcoders' own figures, added as they
    /// grow, per batch or packet): packets produced towards the partner, frames concealed by PLC,
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
    /// `clock::now_ns()` of the last accepted packet; 0 = none yet.
    pub last_packet_ns: AtomicU64,
    pub rtp_lost: AtomicU64,
    /// RFC 3550 A.8 interarrival jitter in RTP timestamp units.
    pub jitter_ts: AtomicU32,
    pub clock_rate: AtomicU32,
    pub ssrc: AtomicU32,
}

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
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl EndpointCounters {
    /// Adds what a transcoder counted since `last` (its previous publication) to these
    /// counters, from whichever path (engine or worker) runs it. A transcoder's figures start at 0 and the stream gets a new one each time it
    /// moves, so only their growth is added: a store would lose what the previous one counted.
    pub fn publish_transcoder(
        &self,
        t: &crate::transcode::Transcoder,
        last: &mut TranscodePublished,
    ) {
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
