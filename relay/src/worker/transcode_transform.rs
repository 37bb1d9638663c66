//! Transcoding as a worker [`StreamTransform`]: SRTP unprotect (when sluice terminates the
//! sending leg's SRTP), the [`Transcoder`], and SRTP protect (when it terminates the receiving
//! leg's): what the userspace engine does for one direction of a transcoded stream.
//!
//! RTCP of a transcoded stream is terminated: its reports describe a stream the other leg never
//! sees (sluice sends its own SSRC there). It is counted in the leg's `rtcp_terminated`.

use std::sync::Arc;

use crate::engine::SrtpKeys;
use crate::handover::{EndpointState, StreamHandover};
use crate::rtp::{PacketKind, classify_relay};
use crate::srtp::{KeyError, SrtpConfig, SrtpContext, SrtpError};
use crate::stats::{EndpointCounters, TranscodePublished};
use crate::transcode::{DirectionPlan, TranscodeError, Transcoder};
use crate::worker::srtp_transform::{count_rx_failure, resume_srtp};
use crate::worker::{StreamTransform, TransformError};

/// Size of the scratch buffer a pushed packet is unprotected in.
const SCRATCH: usize = 2048;

pub struct TranscodeTransform {
    rx: Option<Box<SrtpContext>>,
    tx: Option<Box<SrtpContext>>,
    transcoder: Box<Transcoder>,
    /// What `transcoder` has added to `counters` so far.
    published: TranscodePublished,
    counters: Option<Arc<EndpointCounters>>,
    /// The sending leg's state: the SRTP state of what it sends, this direction's next
    /// sequence number, and the loss it reports are published there.
    state: Option<Arc<EndpointState>>,
    /// The receiving leg's state: the loss it reports (its RTCP, terminated by the flow of
    /// the other direction) sets this direction's Opus FEC; the SRTP state of what is protected
    /// towards it is published there.
    peer: Option<Arc<EndpointState>>,
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
            published: TranscodePublished::default(),
            counters: None,
            state: None,
            peer: None,
            report_ssrc: None,
            scratch: Box::new([0; SCRATCH]),
        })
    }

    /// Continues from the SRTP state handed over for this flow's two directions (see
    /// `SrtpTransform::resume`); the transcoder starts at `new`'s `seq_start`, which
    /// [`StreamHandover::transcode_seq_start`] gives.
    pub fn resume(mut self, sender: &StreamHandover, receiver: &StreamHandover) -> Self {
        resume_srtp(
            self.rx.as_deref_mut(),
            self.tx.as_deref_mut(),
            sender,
            receiver,
        );
        self
    }

    /// The sending leg's state (see the field).
    pub fn with_state(mut self, state: Arc<EndpointState>) -> Self {
        self.state = Some(state);
        self
    }

    /// Counts terminated RTCP, SRTP failures and the transcoder's figures in the sending leg's
    /// counters, so `Query` shows them whichever path the stream is on.
    pub fn with_counters(mut self, counters: Arc<EndpointCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// The receiving leg's state (loss feedback for this direction's encoder), and the SSRC
    /// the other direction sends with, which this flow's sender reports on.
    pub fn with_feedback(mut self, peer: Arc<EndpointState>, report_ssrc: Option<u32>) -> Self {
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

    /// Terminates an RTCP packet from this flow's sender: authenticates it (SRTCP) and keeps
    /// the loss it reports about the stream sluice sends it.
    fn terminate_rtcp(&mut self, payload: &[u8]) -> Result<(), TransformError> {
        let fraction = match self.rx.as_deref_mut() {
            None => crate::rtp::rtcp_fraction_lost(payload, self.report_ssrc),
            Some(rx) => {
                let len = payload.len();
                if len > SCRATCH {
                    return Err(TransformError::Malformed);
                }
                self.scratch[..len].copy_from_slice(payload);
                match rx.unprotect_rtcp(&mut self.scratch[..], len) {
                    Ok(l) => crate::rtp::rtcp_fraction_lost(&self.scratch[..l], self.report_ssrc),
                    Err(e) => return Err(self.rx_failed(e)),
                }
            }
        };
        if let Some(c) = &self.counters {
            c.rtcp_terminated.add(1);
        }
        if let (Some(s), Some(f)) = (&self.state, fraction) {
            s.report_loss(f);
        }
        Ok(())
    }

    fn mirror(&mut self) {
        if let Some(c) = &self.counters {
            c.publish_transcoder(&self.transcoder, &mut self.published);
        }
        if let Some(s) = &self.state {
            s.publish_transcode_seq(self.transcoder.next_out_seq());
        }
    }
}

impl StreamTransform for TranscodeTransform {
    fn push(&mut self, payload: &[u8], now_ns: u64) -> Result<(), TransformError> {
        match classify_relay(payload) {
            PacketKind::Rtp => {}
            PacketKind::Rtcp => return self.terminate_rtcp(payload),
            PacketKind::Invalid(_) => return Err(TransformError::Malformed),
        }
        if let Some(pct) = self.peer.as_ref().and_then(|p| p.reported_loss_pct()) {
            self.transcoder.set_expected_loss(pct);
        }
        let r = match self.rx.as_deref_mut() {
            // SRTP is unprotected in the scratch buffer (the frame has no room to spare for the
            // caller); plain RTP goes to the transcoder as it is, without a copy.
            Some(rx) => {
                let len = payload.len();
                if len > SCRATCH {
                    return Err(TransformError::Malformed);
                }
                self.scratch[..len].copy_from_slice(payload);
                let len = match rx.unprotect_rtp(&mut self.scratch[..], len) {
                    Ok(l) => l,
                    Err(e) => return Err(self.rx_failed(e)),
                };
                if let (Some(c), Some(h)) = (&self.state, rx.handover()) {
                    c.publish_srtp(false, h);
                }
                self.transcoder.push(&self.scratch[..len], now_ns)
            }
            None => self.transcoder.push(payload, now_ns),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::SrtpProfile;
    use crate::transcode::{Codec, OpusParams};
    use std::sync::atomic::Ordering::Relaxed;

    fn plan(input: Codec, output: Codec, ssrc: u32) -> DirectionPlan {
        DirectionPlan {
            input,
            input_pt: input.static_pt().unwrap_or(96),
            output,
            output_pt: output.static_pt().unwrap_or(96),
            output_ptime_ms: 20,
            opus: OpusParams::default(),
            dtmf: None,
            cn_pts: vec![13],
            ssrc,
        }
    }

    fn pcmu(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0a, 0x0a, 0x0a];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend([0xffu8; 160]);
        p
    }

    /// An RR from `from` with one report block about `about` saying `fraction`/256 lost.
    fn rr(from: u32, about: u32, fraction: u8) -> Vec<u8> {
        let mut p = vec![0x81, 201, 0, 7];
        p.extend(from.to_be_bytes());
        p.extend(about.to_be_bytes());
        p.extend([fraction, 0, 0, 1]);
        p.extend([0u8; 16]);
        p
    }

    #[test]
    fn rtcp_is_terminated_and_its_loss_drives_the_other_directions_fec() {
        // Side A sends PCMU, side B receives Opus (SSRC 0xb0b0) and sends RR about it.
        let (a, b) = (
            Arc::new(EndpointCounters::default()),
            Arc::new(EndpointCounters::default()),
        );
        let (a_state, b_state) = (
            Arc::new(EndpointState::default()),
            Arc::new(EndpointState::default()),
        );
        let mut a_to_b =
            TranscodeTransform::new(&plan(Codec::Pcmu, Codec::Opus, 0xb0b0), 1, None, None)
                .unwrap()
                .with_counters(a.clone())
                .with_state(a_state.clone())
                .with_feedback(b_state.clone(), Some(0xa0a0));
        let mut b_to_a =
            TranscodeTransform::new(&plan(Codec::Opus, Codec::Pcmu, 0xa0a0), 1, None, None)
                .unwrap()
                .with_counters(b.clone())
                .with_state(b_state.clone())
                .with_feedback(a_state.clone(), Some(0xb0b0));
        a_to_b.push(&pcmu(1), 0).unwrap();
        assert_eq!(a_to_b.transcoder().expected_loss(), 0);

        // B's RR about another source changes nothing; about sluice's stream, it counts.
        b_to_a.push(&rr(0xbbbb, 0x1234, 128), 0).unwrap();
        assert_eq!(b_state.reported_loss_pct(), None);
        b_to_a.push(&rr(0xbbbb, 0xb0b0, 26), 0).unwrap();
        assert_eq!(b_state.reported_loss_pct(), Some(11));
        assert_eq!(b.rtcp_terminated.load(Relaxed), 2);
        let mut out = [0u8; 2048];
        assert!(b_to_a.pull(&mut out).is_none(), "RTCP never leaves");

        // The next packet A sends is encoded protecting against what B reports.
        a_to_b.push(&pcmu(2), 20_000_000).unwrap();
        assert_eq!(a_to_b.transcoder().expected_loss(), 11);
        assert_eq!(a.transcode_fec_loss_pct.load(Relaxed), 11);
        assert!(a_to_b.pull(&mut out).is_some());
    }

    /// A stream that moves gets a new transcoder, whose figures start at 0: what the previous
    /// one counted stays in the leg's counters.
    #[test]
    fn transcoded_counts_survive_a_move_to_a_new_transcoder() {
        let c = Arc::new(EndpointCounters::default());
        let mut out = [0u8; 2048];
        let mut run = |seqs: std::ops::Range<u16>| {
            let mut t = TranscodeTransform::new(
                &plan(Codec::Pcmu, Codec::Pcma, 0xb0b0),
                seqs.start,
                None,
                None,
            )
            .unwrap()
            .with_counters(c.clone());
            for seq in seqs {
                t.push(&pcmu(seq), u64::from(seq) * 20_000_000).unwrap();
                while t.pull(&mut out).is_some() {}
            }
            t.handle_timeout(u64::MAX / 2);
            t.transcoder().stats().packets_out
        };
        let first = run(1..11);
        assert!(first > 0);
        assert_eq!(c.transcoded_out.load(Relaxed), first);
        let second = run(30..40);
        assert!(second > 0);
        assert_eq!(c.transcoded_out.load(Relaxed), first + second);
    }

    #[test]
    fn forged_srtcp_is_counted_not_believed() {
        let key = SrtpKeys {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            master: vec![3; 30],
        };
        let b = Arc::new(EndpointCounters::default());
        let b_state = Arc::new(EndpointState::default());
        let mut b_to_a =
            TranscodeTransform::new(&plan(Codec::Opus, Codec::Pcmu, 0xa0a0), 1, Some(&key), None)
                .unwrap()
                .with_counters(b.clone())
                .with_state(b_state.clone())
                .with_feedback(Arc::new(EndpointState::default()), Some(0xb0b0));
        let mut sender = SrtpContext::new(key.profile, &key.master, SrtpConfig::default()).unwrap();
        let plain = rr(0xbbbb, 0xb0b0, 64);
        let mut wire = plain.clone();
        wire.resize(plain.len() + 64, 0);
        let n = sender.protect_rtcp(&mut wire, plain.len()).unwrap();
        wire.truncate(n);
        let mut forged = wire.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(b_to_a.push(&forged, 0), Err(TransformError::AuthFailed));
        assert_eq!(
            b_state.reported_loss_pct(),
            None,
            "a forged report is not believed"
        );
        assert_eq!(b.srtp_auth_failures.load(Relaxed), 1);
        b_to_a.push(&wire, 0).unwrap();
        assert_eq!(b_state.reported_loss_pct(), Some(25));
    }
}
