//! What a stream carries from one path to the other when it moves between the userspace engine
//! and an AF_XDP worker ([`StreamHandover`], one value per endpoint), and the rest of what the
//! data plane tells the control plane about an endpoint besides its counts ([`EndpointState`]:
//! where latching settled, the loss the endpoint reports).
//!
//! [`crate::stats::EndpointCounters`] holds counts only; this is the state that is not a count.
//!
//! How the handover travels today: whichever path processes a stream publishes its state here
//! (the engine once per batch, a worker per packet); a worker flow is built from the value read
//! when the stream moves ([`EndpointState::handover`]), and the engine continues from it when it
//! sees a value it did not publish itself. The old owner may still process a few packets after
//! the new one read the value (what its socket or RX ring still holds), hence the margins below.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

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
}

/// One endpoint's shared state besides counts: published by the data plane, read by the
/// control plane (and by the path that takes a stream over). Changes when latching decides, per
/// batch or per packet for the handover slots (relaxed stores of whole words, one writer at a
/// time: the path that owns the stream).
#[derive(Debug, Default)]
pub struct EndpointState {
    /// SRTP handover slots, `srtp_rx_*` and `srtp_tx_*` (see [`StreamHandover`]).
    /// Index: ROC << 16 | SEQ with bit 63 set once known.
    srtp_rx_ssrc: AtomicU32,
    srtp_rx_index: AtomicU64,
    srtp_rx_rtcp: AtomicU32,
    srtp_tx_ssrc: AtomicU32,
    srtp_tx_index: AtomicU64,
    srtp_tx_rtcp: AtomicU32,
    srtp_published: AtomicBool,
    /// The transcoder's next sequence number, with bit 16 set once there is one.
    transcode_next_seq: AtomicU32,
    /// Loss this endpoint reports (RTCP RR/SR fraction lost, 1/256ths, bit 8 set once there is
    /// a report) about the transcoded stream sluice sends it: drives that stream's Opus FEC.
    reported_loss: AtomicU32,
    /// Changes only when latching decides, never per packet.
    latched_rtp: Mutex<Option<SocketAddr>>,
    latched_rtcp: Mutex<Option<SocketAddr>>,
}

impl EndpointState {
    /// The state a path taking this endpoint's streams over continues from.
    pub fn handover(&self) -> StreamHandover {
        let seq = self.transcode_next_seq.load(Relaxed);
        StreamHandover {
            srtp_rx: self.srtp_state(false),
            srtp_tx: self.srtp_state(true),
            transcode_next_seq: (seq & 1 << 16 != 0).then_some(seq as u16),
        }
    }

    /// Publishes the SRTP state of one direction (`tx`: what sluice protects towards this
    /// endpoint). On a worker a stream with separate RTCP ports has two flows, each with its
    /// own contexts: the RTP flow's knows the RTP index, the RTCP flow's the SRTCP index. So
    /// for the same SSRC what is published merges: an unknown RTP index keeps the known one,
    /// and the SRTCP index only grows (RFC 3711 3.4: an index is never sent twice).
    pub fn publish_srtp(&self, tx: bool, h: SrtpHandover) {
        let (ssrc, index, rtcp) = self.srtp_slots(tx);
        let same = self.srtp_published.load(Relaxed) && ssrc.load(Relaxed) == h.ssrc;
        if same {
            // A locked max only when it grows (once per SRTCP compound, not per packet).
            if h.srtcp_next_index > rtcp.load(Relaxed) {
                rtcp.fetch_max(h.srtcp_next_index, Relaxed);
            }
            if let Some(i) = h.rtp_index {
                index.store(i | 1 << 63, Relaxed);
            }
        } else {
            ssrc.store(h.ssrc, Relaxed);
            rtcp.store(h.srtcp_next_index, Relaxed);
            index.store(h.rtp_index.map_or(0, |i| i | 1 << 63), Relaxed);
        }
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

    /// Published by the transcoder's owner after each batch.
    pub fn publish_transcode_seq(&self, next: u16) {
        self.transcode_next_seq
            .store(u32::from(next) | 1 << 16, Relaxed);
    }

    /// The next sequence number last published by this direction's transcoder.
    pub fn transcode_next_seq(&self) -> Option<u16> {
        self.handover().transcode_next_seq
    }

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

    /// A worker's RTP flow and RTCP flow (separate ports) publish for the same direction: the
    /// one's RTP index and the other's SRTCP index both survive, whichever comes last.
    #[test]
    fn the_rtp_and_rtcp_flows_of_one_direction_merge_what_they_publish() {
        let rtp_flow = SrtpHandover {
            ssrc: 9,
            rtp_index: Some(2 << 16 | 5),
            srtcp_next_index: 0,
        };
        let rtcp_flow = SrtpHandover {
            ssrc: 9,
            rtp_index: None,
            srtcp_next_index: 40,
        };
        for order in [[rtp_flow, rtcp_flow], [rtcp_flow, rtp_flow]] {
            let s = EndpointState::default();
            for h in order {
                s.publish_srtp(true, h);
            }
            assert_eq!(
                s.srtp_state(true),
                Some(SrtpHandover {
                    ssrc: 9,
                    rtp_index: Some(2 << 16 | 5),
                    srtcp_next_index: 40,
                })
            );
        }
        // A new SSRC starts over.
        let s = EndpointState::default();
        s.publish_srtp(false, rtcp_flow);
        let other = SrtpHandover {
            ssrc: 10,
            rtp_index: Some(7),
            srtcp_next_index: 1,
        };
        s.publish_srtp(false, other);
        assert_eq!(s.srtp_state(false), Some(other));
    }

    #[test]
    fn nothing_published_is_no_handover_and_the_margins_apply_on_resume() {
        let s = EndpointState::default();
        assert_eq!(s.handover(), StreamHandover::default());
        s.publish_transcode_seq(65530);
        assert_eq!(s.handover().transcode_seq_start(), Some(10), "wraps");
        let h = SrtpHandover {
            ssrc: 7,
            rtp_index: Some(1 << 16 | 3),
            srtcp_next_index: 40,
        };
        s.publish_srtp(true, h);
        assert_eq!(s.handover().srtp_tx, Some(h));
        assert_eq!(s.handover().srtp_rx, None);
        let key = [9u8; 30];
        let profile = crate::srtp::SrtpProfile::AesCm128HmacSha1_80;
        let mut ctx = SrtpContext::new(profile, &key, crate::srtp::SrtpConfig::default()).unwrap();
        s.handover().resume_srtp(&mut ctx, true);
        assert_eq!(ctx.next_srtcp_index(7), 40 + SRTCP_INDEX_MARGIN);
        assert_eq!(ctx.rtp_state(7), Some((1, 3)));
    }
}
