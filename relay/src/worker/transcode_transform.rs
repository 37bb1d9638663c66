//! Transcoding as a worker [`StreamTransform`]: SRTP unprotect (when sluice terminates the
//! sending leg's SRTP), the [`Transcoder`], and SRTP protect (when it terminates the receiving
//! leg's): what the userspace engine does for one direction of a transcoded stream.
//!
//! RTCP of a transcoded stream is terminated: its reports describe a stream the other leg never
//! sees (sluice sends its own SSRC there). It is counted in the leg's `rtcp_terminated`.

use std::sync::Arc;

use crate::engine::SrtpKeys;
use crate::rtp::{PacketKind, classify_relay};
use crate::srtp::{KeyError, SrtpConfig, SrtpContext, SrtpError};
use crate::stats::{EndpointCounters, bump};
use crate::transcode::{DirectionPlan, TranscodeError, Transcoder};
use crate::worker::srtp_transform::{count_rx_failure, take_over_srtp};
use crate::worker::{StreamTransform, TransformError};

/// Size of the scratch buffer a pushed packet is unprotected in.
const SCRATCH: usize = 2048;

pub struct TranscodeTransform {
    rx: Option<Box<SrtpContext>>,
    tx: Option<Box<SrtpContext>>,
    transcoder: Box<Transcoder>,
    counters: Option<Arc<EndpointCounters>>,
    /// The receiving leg's counters: the loss it reports (its RTCP, terminated by the flow of
    /// the other direction) sets this direction's Opus FEC.
    peer: Option<Arc<EndpointCounters>>,
    /// SSRC of the stream the other direction sends to this flow's sender (what its RTCP
    /// reports are about); `None` takes the first report block.
    report_ssrc: Option<u32>,
    scratch: Box<[u8; SCRATCH]>,
}

/// Why a [`TranscodeTransform`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeSetupError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
}

impl TranscodeTransform {
    /// `rx` decrypts what arrives, `tx` encrypts what leaves; `seq_start` is the first
    /// sequence number sent.
    pub fn new(
        plan: &DirectionPlan,
        seq_start: u16,
        rx: Option<&SrtpKeys>,
        tx: Option<&SrtpKeys>,
    ) -> Result<Self, TranscodeSetupError> {
        let ctx = |k: &SrtpKeys| {
            SrtpContext::new(k.profile, &k.master, SrtpConfig::default()).map(Box::new)
        };
        Ok(Self {
            rx: rx.map(ctx).transpose()?,
            tx: tx.map(ctx).transpose()?,
            transcoder: Box::new(Transcoder::new(plan, seq_start)?),
            counters: None,
            peer: None,
            report_ssrc: None,
            scratch: Box::new([0; SCRATCH]),
        })
    }

    /// Continues from the SRTP state published for this flow's two directions (see
    /// `SrtpTransform::take_over`); call after `with_counters` and `with_feedback`.
    pub fn take_over(mut self) -> Self {
        take_over_srtp(
            self.rx.as_deref_mut(),
            self.tx.as_deref_mut(),
            self.counters.as_deref(),
            self.peer.as_deref(),
        );
        self
    }

    /// Counts terminated RTCP, SRTP failures and the transcoder's figures in the sending leg's
    /// counters, so `Query` shows them whichever path the stream is on.
    pub fn with_counters(mut self, counters: Arc<EndpointCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// The receiving leg's counters (loss feedback for this direction's encoder), and the SSRC
    /// the other direction sends with, which this flow's sender reports on.
    pub fn with_feedback(mut self, peer: Arc<EndpointCounters>, report_ssrc: Option<u32>) -> Self {
        self.peer = Some(peer);
        self.report_ssrc = report_ssrc;
        self
    }

    pub fn transcoder(&self) -> &Transcoder {
        &self.transcoder
    }

    #[cold]
    fn rx_failed(&self, e: SrtpError) -> TransformError {
        count_rx_failure(self.counters.as_deref(), e)
    }

    /// The fraction lost in an RTCP packet from this flow's sender (SRTCP unprotected first).
    fn rtcp_loss(&mut self, payload: &[u8]) -> Option<u8> {
        let len = payload.len().min(SCRATCH);
        self.scratch[..len].copy_from_slice(&payload[..len]);
        let len = match self.rx.as_deref_mut() {
            Some(rx) => rx.unprotect_rtcp(&mut self.scratch[..], len).ok()?,
            None => len,
        };
        let rtcp = &self.scratch[..len];
        match self.report_ssrc {
            Some(ssrc) => crate::rtp::rtcp_fraction_lost(rtcp, ssrc),
            None => first_fraction_lost(rtcp),
        }
    }

    fn mirror(&self) {
        if let Some(c) = &self.counters {
            c.publish_transcoder(&self.transcoder);
        }
    }
}

impl StreamTransform for TranscodeTransform {
    fn push(&mut self, payload: &[u8], now_ns: u64) -> Result<(), TransformError> {
        match classify_relay(payload) {
            PacketKind::Rtp => {}
            PacketKind::Rtcp => {
                if let Some(c) = self.counters.clone() {
                    bump(&c.rtcp_terminated, 1);
                    if let Some(f) = self.rtcp_loss(payload) {
                        c.report_loss(f);
                    }
                }
                return Ok(());
            }
            PacketKind::Invalid(_) => return Err(TransformError::Malformed),
        }
        let len = payload.len();
        if len > SCRATCH {
            return Err(TransformError::Malformed);
        }
        let len = match self.rx.as_deref_mut() {
            Some(rx) => {
                self.scratch[..len].copy_from_slice(payload);
                match rx.unprotect_rtp(&mut self.scratch[..], len) {
                    Ok(l) => l,
                    Err(e) => return Err(self.rx_failed(e)),
                }
            }
            None => {
                self.scratch[..len].copy_from_slice(payload);
                len
            }
        };
        if let Some(pct) = self.peer.as_ref().and_then(|p| p.reported_loss_pct()) {
            self.transcoder.set_expected_loss(pct);
        }
        if let (Some(rx), Some(c)) = (self.rx.as_deref(), &self.counters)
            && let Some(h) = rx.handover()
        {
            c.publish_srtp(false, h);
        }
        let r = self.transcoder.push(&self.scratch[..len], now_ns);
        self.mirror();
        r.map_err(|_| TransformError::Malformed)
    }

    fn pull(&mut self, out: &mut [u8]) -> Option<usize> {
        let room = out.len().checked_sub(crate::worker::MAX_GROWTH)?;
        loop {
            let len = self.transcoder.pull(&mut out[..room])?;
            let Some(tx) = self.tx.as_deref_mut() else {
                return Some(len);
            };
            match tx.protect_rtp(out, len) {
                Ok(l) => {
                    if let (Some(p), Some(h)) = (&self.peer, tx.handover()) {
                        p.publish_srtp(true, h);
                    }
                    return Some(l);
                }
                // Never send plain where SRTP is due: skip the packet.
                Err(e) => tracing::debug!(error = %e, "SRTP protect of transcoded packet failed"),
            }
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.transcoder.poll_timeout()
    }

    fn handle_timeout(&mut self, now_ns: u64) {
        self.transcoder.handle_timeout(now_ns);
        self.mirror();
    }
}

/// The fraction lost of the first report block of an SR or RR.
fn first_fraction_lost(rtcp: &[u8]) -> Option<u8> {
    let at = match *rtcp.get(1)? {
        200 => 28,
        201 => 8,
        _ => return None,
    };
    (rtcp[0] & 0x1f > 0).then(|| rtcp.get(at + 4).copied())?
}
