//! Transcoding as a worker [`StreamTransform`]: the per-stream core ([`crate::stream_core`],
//! the same steps the userspace engine runs) for one direction of a transcoded stream: SRTP
//! unprotect (when sluice terminates the sending leg's SRTP), the [`Transcoder`], and SRTP
//! protect (when it terminates the receiving leg's).
//!
//! RTCP of a transcoded stream is terminated: its reports describe a stream the other leg never
//! sees (sluice sends its own SSRC there). It is counted in the leg's `rtcp_terminated`.

use std::sync::Arc;

use crate::handover::{EndpointState, FlowHandover, StreamHandover};
use crate::srtp::SrtpKeys;
use crate::srtp::{KeyError, SrtpContext};
use crate::stats::EndpointCounters;
use crate::stream_core::{Datagram, Egress, LossReport, StreamCore, Verdict};
use crate::transcode::{DirectionPlan, TranscodeError, Transcoder};
use crate::worker::srtp_transform::{context, dropped_error, flow_egress, flush, resume_srtp};
use crate::worker::{StreamTransform, TransformError};

/// Size of the scratch buffer a pushed packet is unprotected in.
const SCRATCH: usize = 2048;

pub struct TranscodeTransform {
    /// The per-packet steps; holds the receive context and the transcoder (always one).
    core: StreamCore,
    tx: Option<Box<SrtpContext>>,
    /// The flow's one destination; which report block of the sender's RTCP is about the
    /// stream sluice sends it.
    egress: Egress<()>,
    counters: Option<Arc<EndpointCounters>>,
    /// The sending leg's state: the loss it reports is published there.
    state: Option<Arc<EndpointState>>,
    /// The receiving leg's state: the loss it reports (its RTCP, terminated by the flow of
    /// the other direction) sets this direction's Opus FEC.
    peer: Option<Arc<EndpointState>>,
    /// Where a pushed packet is unprotected (the frame is the caller's, read-only).
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
        let mut core = StreamCore::default();
        core.srtp_rx = rx.map(context).transpose()?;
        core.transcoder = Some(Box::new(Transcoder::new(plan, seq_start)?));
        let tx = tx.map(context).transpose()?;
        let mut egress = flow_egress(tx.is_some());
        egress.loss_report = LossReport::FirstBlock;
        Ok(Self {
            core,
            tx,
            egress,
            counters: None,
            state: None,
            peer: None,
            scratch: Box::new([0; SCRATCH]),
        })
    }

    /// Continues from the SRTP state handed over for this flow's two directions (see
    /// `SrtpTransform::resume`); the transcoder starts at `new`'s `seq_start`, which
    /// [`StreamHandover::transcode_seq_start`] gives.
    pub fn resume(mut self, sender: &StreamHandover, receiver: &StreamHandover) -> Self {
        resume_srtp(
            self.core.srtp_rx.as_deref_mut(),
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
    /// the other direction sends with, which this flow's sender reports on (`None`: its first
    /// report block).
    pub fn with_feedback(mut self, peer: Arc<EndpointState>, report_ssrc: Option<u32>) -> Self {
        self.peer = Some(peer);
        self.egress.loss_report = report_ssrc.map_or(LossReport::FirstBlock, LossReport::About);
        self
    }

    pub fn transcoder(&self) -> &Transcoder {
        self.core
            .transcoder
            .as_deref()
            .expect("a TranscodeTransform is built with its transcoder")
    }

    /// Where this flow stands, for the path that takes the stream back: its contexts, and
    /// the transcoder's next sequence number once it sent something (the workers that saw no
    /// packet of the flow hand back none).
    pub fn handover(&self) -> FlowHandover {
        let t = self.transcoder();
        FlowHandover {
            sender: StreamHandover {
                srtp_rx: self.core.srtp_rx.as_ref().and_then(|c| c.handover()),
                transcode_next_seq: (t.stats().packets_out > 0).then(|| t.next_out_seq()),
                ..Default::default()
            },
            receiver: StreamHandover {
                srtp_tx: self.tx.as_ref().and_then(|c| c.handover()),
                ..Default::default()
            },
        }
    }

    /// Publishes the transcoder's figures, the loss the sender reported, and the counts of the
    /// last packet.
    fn mirror(&mut self) {
        if let (Some(c), Some(t)) = (&self.counters, self.core.transcoder.as_deref()) {
            c.publish_transcoder(t, &mut self.core.transcode_published);
        }
        if let (Some(s), Some(f)) = (&self.state, self.core.take_reported_loss()) {
            s.report_loss(f);
        }
        flush(&mut self.core, self.counters.as_deref());
    }
}

impl StreamTransform for TranscodeTransform {
    fn push(&mut self, payload: &[u8], now_ns: u64) -> Result<(), TransformError> {
        if let (Some(pct), Some(t)) = (
            self.peer.as_ref().and_then(|p| p.reported_loss_pct()),
            self.core.transcoder.as_deref_mut(),
        ) {
            t.set_expected_loss(pct);
        }
        let len = payload.len();
        if len > SCRATCH {
            return Err(TransformError::Malformed);
        }
        // Unprotected in the scratch buffer: the frame is the caller's.
        self.scratch[..len].copy_from_slice(payload);
        let d = Datagram {
            buf: &mut self.scratch[..],
            len,
            src: None,
            now_ns,
            rtcp_port: false,
        };
        let v = self.core.receive(d, Some(&self.egress), None);
        self.mirror();
        match v {
            Verdict::Transcoder { accepted: true } => Ok(()),
            Verdict::Transcoder { accepted: false } => Err(TransformError::Malformed),
            Verdict::Drop(d) => Err(dropped_error(d)),
            // The core has a transcoder: nothing is forwarded as received.
            Verdict::Forward { .. } => Err(TransformError::Other("forwarded untranscoded")),
        }
    }

    fn pull(&mut self, out: &mut [u8]) -> Option<usize> {
        let room = out.len().checked_sub(crate::worker::MAX_GROWTH)?;
        loop {
            let v = self
                .core
                .pull(out, room, Some(&self.egress), self.tx.as_deref_mut())?;
            match v {
                Verdict::Forward { len, .. } => return Some(len),
                // Never send plain where SRTP is due: skip the packet.
                Verdict::Drop(d) => {
                    self.core.tally = Default::default();
                    tracing::debug!(reason = ?d, "transcoded packet dropped");
                }
                Verdict::Transcoder { .. } => {}
            }
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.transcoder().poll_timeout()
    }

    fn handle_timeout(&mut self, now_ns: u64) {
        if let Some(t) = self.core.transcoder.as_deref_mut() {
            t.handle_timeout(now_ns);
        }
        self.mirror();
    }

    fn handover(&self) -> FlowHandover {
        TranscodeTransform::handover(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::{SrtpConfig, SrtpProfile};
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
