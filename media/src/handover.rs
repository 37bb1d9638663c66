//! What a stream carries from one path to the other when it moves between the userspace engine
//! and an AF_XDP worker ([`StreamHandover`], one value per endpoint), and the rest of what the
//! data plane tells the control plane about an endpoint besides its counts ([`EndpointState`]:
//! where latching settled, the loss the endpoint reports).
//!
//! [`crate::stats::EndpointCounters`] holds counts only; this is the state that is not a count.
//!
//! How the handover travels: by message, through the control plane, which moves streams.
//! - Engine -> worker: the control plane asks the engine for an endpoint's handover; the engine
//!   answers with the state of its own contexts and keeps relaying the endpoint's packets for a
//!   short grace period (what reaches its socket before the XDP entry is in place), then drops
//!   them until the stream comes back. The worker flows start from the answer.
//! - Worker -> engine: the control plane removes the XDP entry, then each worker removes its
//!   flow and answers with the flow's final state ([`FlowHandover`]); the merged value goes to
//!   the engine, which continues from it.
//!
//! The old owner may still have processed a few packets after its answer (the engine's grace
//! period), hence the margins below: the new owner skips ahead by them, so nothing is sent twice
//! under one key or sequence number.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::srtp::{SrtpContext, SrtpHandover};

/// Sequence numbers skipped when a transcoded stream moves between the engine and a worker: the
/// old owner may send a few more packets (already queued in its socket) after the new one read
/// where to start. A receiver sees the jump as that many lost packets, never duplicates.
pub const TRANSCODE_SEQ_MARGIN: u16 = 16;

/// SRTCP indices skipped when an SRTP stream moves between the engine and a worker, for the
/// same reason: RFC 3711 3.4 and 9.2 forbid sending an SRTCP index twice under one key (it would
/// reuse keystream), and the old owner may still protect a few compounds.
pub const SRTCP_INDEX_MARGIN: u32 = 16;

/// The per-packet state of one endpoint's streams that must survive a move between paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamHandover {
    /// SRTP of what this endpoint sends (what sluice unprotects): its highest index, so that
    /// the rollover counter is right after a wrap (RFC 3711 3.3.1) and nothing it accepted is
    /// accepted again (3.3.2).
    pub srtp_rx: Option<SrtpHandover>,
    /// SRTP of what is sent to this endpoint (what sluice protects towards it): its highest
    /// index and next SRTCP index, never to be used twice.
    pub srtp_tx: Option<SrtpHandover>,
    /// The next sequence number the transcoder of this endpoint's direction sends.
    pub transcode_next_seq: Option<u16>,
}

impl StreamHandover {
    /// The sequence number a new transcoder for this direction starts at: past what the
    /// previous one sent, by [`TRANSCODE_SEQ_MARGIN`].
    pub fn transcode_seq_start(&self) -> Option<u16> {
        self.transcode_next_seq
            .map(|s| s.wrapping_add(TRANSCODE_SEQ_MARGIN))
    }

    /// Continues `ctx` from this state: `tx` for the context protecting towards this endpoint,
    /// else the one unprotecting what it sends. Only moves forward.
    pub fn resume_srtp(&self, ctx: &mut SrtpContext, tx: bool) {
        let h = if tx { self.srtp_tx } else { self.srtp_rx };
        if let Some(h) = h {
            ctx.take_over(h, SRTCP_INDEX_MARGIN);
        }
    }

    /// Folds in what another flow of the same endpoint handed back: a worker keeps one context
    /// per flow, so a stream with separate RTCP ports hands its RTP index back from the RTP flow
    /// and its SRTCP index from the RTCP flow, and the workers that saw no packet (RSS sends a
    /// flow to one RX queue) hand back nothing.
    pub fn merge(&mut self, other: &StreamHandover) {
        self.srtp_rx = merge_srtp(self.srtp_rx, other.srtp_rx);
        self.srtp_tx = merge_srtp(self.srtp_tx, other.srtp_tx);
        self.transcode_next_seq = match (self.transcode_next_seq, other.transcode_next_seq) {
            // Serial number arithmetic (RFC 1982): the one further ahead.
            (Some(a), Some(b)) => Some(if (b.wrapping_sub(a) as i16) > 0 { b } else { a }),
            (a, b) => a.or(b),
        };
    }
}

/// For the same SSRC: the highest RTP index (every worker's context starts from the same
/// handed-over index; the one that saw packets went further), and the SRTCP index only grows
/// (RFC 3711 3.4: an index is never sent twice). Different SSRCs (the endpoint changed
/// its SSRC on one flow): the one with a known RTP index, which carries media.
fn merge_srtp(a: Option<SrtpHandover>, b: Option<SrtpHandover>) -> Option<SrtpHandover> {
    match (a, b) {
        (Some(a), Some(b)) if a.ssrc == b.ssrc => Some(a.merge(&b)),
        (Some(a), Some(b)) => Some(if b.rtp_index().is_some() && a.rtp_index().is_none() {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

/// What one worker flow hands back when it is removed: it receives what `sender` sends and
/// protects towards `receiver`, so it knows the sender's receive side (SRTP unprotect,
/// transcoder) and the receiver's transmit side (SRTP protect).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowHandover {
    pub sender: StreamHandover,
    pub receiver: StreamHandover,
}

/// One endpoint's shared state besides counts: published by the data plane, read by the
/// control plane. Changes when latching decides or an RTCP report arrives, never per packet.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Loss this endpoint reports (RTCP RR/SR fraction lost, 1/256ths, bit 8 set once there is
    /// a report) about the transcoded stream sluice sends it: drives that stream's Opus FEC.
    reported_loss: AtomicU32,
    /// Changes only when latching decides, never per packet.
    latched_rtp: Mutex<Option<SocketAddr>>,
    latched_rtcp: Mutex<Option<SocketAddr>>,
}

impl EndpointState {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker's RTP flow and RTCP flow (separate ports) hand back the same direction: the
    /// one's RTP index and the other's SRTCP index both survive, whichever comes first, and a
    /// worker that saw nothing changes nothing.
    #[test]
    fn the_rtp_and_rtcp_flows_of_one_direction_merge_what_they_hand_back() {
        let rtp_flow = SrtpHandover::at(9, Some(2 << 16 | 5), 0);
        let rtcp_flow = SrtpHandover::at(9, None, 40);
        let merged = SrtpHandover::at(9, Some(2 << 16 | 5), 40);
        for order in [[rtp_flow, rtcp_flow], [rtcp_flow, rtp_flow]] {
            let mut h = StreamHandover::default();
            for f in order {
                h.merge(&StreamHandover {
                    srtp_tx: Some(f),
                    ..Default::default()
                });
                h.merge(&StreamHandover::default());
            }
            assert_eq!(h.srtp_tx, Some(merged));
            assert_eq!(h.srtp_rx, None);
        }
        // Another SSRC on one flow: the one that carried media wins.
        let other = SrtpHandover::at(10, None, 1);
        assert_eq!(merge_srtp(Some(other), Some(rtp_flow)), Some(rtp_flow));
        assert_eq!(merge_srtp(Some(rtp_flow), Some(other)), Some(rtp_flow));
        // An idle worker's context stands where the handover left it; the busy one went on.
        let idle = SrtpHandover::at(9, Some(1 << 16 | 9), 0);
        assert_eq!(merge_srtp(Some(idle), Some(rtp_flow)), Some(rtp_flow));
        // The transcoder further ahead wins, across the wrap.
        let seq = |s| StreamHandover {
            transcode_next_seq: Some(s),
            ..Default::default()
        };
        let mut h = seq(65530);
        h.merge(&seq(3));
        assert_eq!(h.transcode_next_seq, Some(3));
        h.merge(&seq(65000));
        assert_eq!(h.transcode_next_seq, Some(3));
    }

    #[test]
    fn the_margins_apply_on_resume() {
        assert_eq!(StreamHandover::default().transcode_seq_start(), None);
        let h = StreamHandover {
            transcode_next_seq: Some(65530),
            ..Default::default()
        };
        assert_eq!(h.transcode_seq_start(), Some(10), "wraps");
        let srtp = SrtpHandover::at(7, Some(1 << 16 | 3), 40);
        let h = StreamHandover {
            srtp_tx: Some(srtp),
            ..Default::default()
        };
        let key = [9u8; 30];
        let profile = crate::srtp::SrtpProfile::AesCm128HmacSha1_80;
        let mut ctx = SrtpContext::new(profile, &key, crate::srtp::SrtpConfig::default()).unwrap();
        h.resume_srtp(&mut ctx, true);
        assert_eq!(ctx.next_srtcp_index(7), 40 + SRTCP_INDEX_MARGIN);
        assert_eq!(ctx.rtp_state(7), Some((1, 3)));
        // The receive side was not handed over: a receive context is left alone.
        let mut rx = SrtpContext::new(profile, &key, crate::srtp::SrtpConfig::default()).unwrap();
        h.resume_srtp(&mut rx, false);
        assert_eq!(rx.rtp_state(7), None);
    }
}
