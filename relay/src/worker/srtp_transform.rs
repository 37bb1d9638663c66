//! SRTP termination as a worker [`PayloadTransform`]: the per-stream core
//! ([`crate::stream_core`], the same steps the userspace engine runs) for one direction of a
//! stream, on an AF_XDP worker.
//!
//! Packets from side k's endpoint are unprotected with side k's receive key when sluice
//! terminates k's SRTP, then protected with the other side's transmit key when sluice terminates
//! the other side's SRTP. A flow of a separate RTCP port refuses RTP, as the engine does. The
//! source was checked by the XDP program (strict source), so the core does no latching here.
//!
//! The contexts continue from the state handed over when the stream moves here
//! ([`SrtpTransform::resume`]).

use std::sync::Arc;

use crate::handover::{FlowHandover, StreamHandover};
use crate::srtp::SrtpKeys;
use crate::srtp::{KeyError, SrtpConfig, SrtpContext, SrtpError};
use crate::stats::EndpointCounters;
use crate::stream_core::{Datagram, Dropped, Egress, LossReport, StreamCore, Verdict};
use crate::worker::{PayloadTransform, TransformError};

/// Unprotect with `rx` (if any), then protect with `tx` (if any), per packet, in place.
pub struct SrtpTransform {
    /// The per-packet steps; holds the receive context.
    core: StreamCore,
    tx: Option<Box<SrtpContext>>,
    /// The flow's one destination (the worker rewrites the frame towards it).
    egress: Egress<()>,
    /// The flow serves a separate RTCP port (RFC 3605): RTP there is malformed.
    rtcp_port: bool,
    /// The receiving leg's counters: authentication failures and replays are counted there too,
    /// so `Query` shows them whichever path the stream is on.
    counters: Option<Arc<EndpointCounters>>,
}

impl std::fmt::Debug for SrtpTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Contexts redact their keys themselves; keep the output short anyway.
        f.debug_struct("SrtpTransform")
            .field("rx", &self.rx().map(|c| c.profile()))
            .field("tx", &self.tx.as_ref().map(|c| c.profile()))
            .field("rtcp_port", &self.rtcp_port)
            .finish()
    }
}

/// The egress of a worker flow: one destination, which takes RTP and RTCP.
pub(crate) fn flow_egress(srtp: bool) -> Egress<()> {
    Egress {
        rtp: Some(()),
        rtcp: Some(()),
        // The control plane hands only sendrecv streams to workers.
        receives: true,
        srtp,
        loss_report: LossReport::Ignore,
    }
}

impl SrtpTransform {
    /// Contexts from SDES keys: `rx` decrypts what arrives, `tx` encrypts what leaves.
    pub fn new(rx: Option<&SrtpKeys>, tx: Option<&SrtpKeys>) -> Result<Self, KeyError> {
        let mut core = StreamCore::default();
        core.srtp_rx = rx.map(context).transpose()?;
        let tx = tx.map(context).transpose()?;
        Ok(Self {
            core,
            egress: flow_egress(tx.is_some()),
            tx,
            rtcp_port: false,
            counters: None,
        })
    }

    /// For a flow of a separate RTCP port.
    pub fn rtcp_port(mut self, yes: bool) -> Self {
        self.rtcp_port = yes;
        self
    }

    /// Also counts auth failures and replays in the receiving leg's counters.
    pub fn with_counters(mut self, counters: Arc<EndpointCounters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Continues from the state the userspace engine (or another worker) left this flow's two
    /// directions in, handed over when the stream moves here: `sender`, the leg whose packets
    /// this flow receives, and `receiver`, the leg they are sent to. Nothing is then sent or
    /// accepted twice and the rollover counters stay right.
    pub fn resume(mut self, sender: &StreamHandover, receiver: &StreamHandover) -> Self {
        resume_srtp(
            self.core.srtp_rx.as_deref_mut(),
            self.tx.as_deref_mut(),
            sender,
            receiver,
        );
        self
    }

    /// The receive context (tests, statistics).
    pub fn rx(&self) -> Option<&SrtpContext> {
        self.core.srtp_rx.as_deref()
    }

    /// The transmit context (tests, statistics).
    pub fn tx(&self) -> Option<&SrtpContext> {
        self.tx.as_deref()
    }

    /// Where this flow's two contexts stand, for the path that takes the stream back.
    pub fn handover(&self) -> FlowHandover {
        FlowHandover {
            sender: StreamHandover {
                srtp_rx: self.rx().and_then(|c| c.handover()),
                ..Default::default()
            },
            receiver: StreamHandover {
                srtp_tx: self.tx().and_then(|c| c.handover()),
                ..Default::default()
            },
        }
    }
}

pub(crate) fn context(k: &SrtpKeys) -> Result<Box<SrtpContext>, KeyError> {
    SrtpContext::new(k.profile, &k.master, SrtpConfig::default()).map(Box::new)
}

/// Adds what the core counted for the leg (SRTP failures, terminated RTCP) to its counters,
/// with atomic adds: the engine may count into the same leg at once while the stream moves.
#[inline]
pub(crate) fn flush(core: &mut StreamCore, counters: Option<&EndpointCounters>) {
    match counters {
        Some(c) => core.tally.flush_worker_into(c),
        None => core.tally = Default::default(),
    }
}

/// Continues a flow's two SRTP contexts from handed-over state: `rx` from what its sender
/// sends, `tx` from what is protected towards the receiving leg.
pub(crate) fn resume_srtp(
    rx: Option<&mut SrtpContext>,
    tx: Option<&mut SrtpContext>,
    sender: &StreamHandover,
    receiver: &StreamHandover,
) {
    if let Some(rx) = rx {
        sender.resume_srtp(rx, false);
    }
    if let Some(tx) = tx {
        receiver.resume_srtp(tx, true);
    }
}

/// How an SRTP failure is counted by the worker.
pub fn transform_error(e: SrtpError) -> TransformError {
    match e {
        SrtpError::AuthFailed { .. } => TransformError::AuthFailed,
        SrtpError::Replayed { .. } | SrtpError::TooOld { .. } => TransformError::Replay,
        SrtpError::Malformed { .. } => TransformError::Malformed,
        SrtpError::BufferTooSmall { .. } => TransformError::NoRoom,
        SrtpError::IndexExhausted { .. } => {
            TransformError::Other("SRTP index exhausted: the leg must be re-keyed")
        }
    }
}

/// How the core's drop reasons are counted by the worker.
pub(crate) fn dropped_error(d: Dropped) -> TransformError {
    match d {
        Dropped::Unprotect(e) | Dropped::Protect(e) => transform_error(e),
        Dropped::Malformed => TransformError::Malformed,
        Dropped::WrongSource => TransformError::Other("not from the latched source"),
        Dropped::Unconfirmed => TransformError::Other("unconfirmed source"),
        Dropped::Direction => TransformError::Other("the stream's direction forbids it"),
        Dropped::NoPeer => TransformError::Other("no peer"),
        Dropped::NoTransmitContext => TransformError::Other("no SRTP context towards the peer"),
        Dropped::TranscoderBroken => TransformError::Other("no transcoder"),
    }
}

impl PayloadTransform for SrtpTransform {
    fn apply(&mut self, buf: &mut [u8], len: usize, now_ns: u64) -> Result<usize, TransformError> {
        let d = Datagram {
            buf,
            len,
            src: None,
            now_ns,
            rtcp_port: self.rtcp_port,
        };
        let v = self
            .core
            .receive(d, Some(&self.egress), self.tx.as_deref_mut());
        flush(&mut self.core, self.counters.as_deref());
        match v {
            Verdict::Forward { len, .. } => Ok(len),
            Verdict::Drop(d) => Err(dropped_error(d)),
            // No transcoder in this core.
            Verdict::Transcoder { .. } => Err(TransformError::Other("transcoded in place")),
        }
    }

    fn handover(&self) -> FlowHandover {
        SrtpTransform::handover(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::SrtpProfile;
    use std::sync::atomic::Ordering::Relaxed;

    fn keys(profile: SrtpProfile, seed: u8) -> SrtpKeys {
        SrtpKeys {
            profile,
            master: (0..profile.master_len() as u8)
                .map(|i| i.wrapping_mul(13) ^ seed)
                .collect(),
        }
    }

    fn ctx(k: &SrtpKeys) -> SrtpContext {
        SrtpContext::new(k.profile, &k.master, SrtpConfig::default()).unwrap()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend((0..160).map(|i| i as u8 ^ seq as u8));
        p
    }

    fn sr() -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6, 0x12, 0x34, 0x56, 0x78];
        p.extend([0u8; 20]);
        p
    }

    fn run(t: &mut SrtpTransform, pkt: &[u8]) -> Result<Vec<u8>, TransformError> {
        let mut buf = pkt.to_vec();
        buf.resize(pkt.len() + crate::worker::MAX_GROWTH, 0);
        let n = t.apply(&mut buf, pkt.len(), 0)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn protect(c: &mut SrtpContext, pkt: &[u8], rtcp: bool) -> Vec<u8> {
        let mut buf = pkt.to_vec();
        buf.resize(pkt.len() + 64, 0);
        let n = if rtcp {
            c.protect_rtcp(&mut buf, pkt.len())
        } else {
            c.protect_rtp(&mut buf, pkt.len())
        }
        .unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect(c: &mut SrtpContext, pkt: &[u8], rtcp: bool) -> Vec<u8> {
        let mut buf = pkt.to_vec();
        let n = if rtcp {
            c.unprotect_rtcp(&mut buf, pkt.len())
        } else {
            c.unprotect_rtp(&mut buf, pkt.len())
        }
        .unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn protects_plain_rtp_and_rtcp_towards_an_srtp_side() {
        for profile in [
            SrtpProfile::AesCm128HmacSha1_80,
            SrtpProfile::AesCm128HmacSha1_32,
            SrtpProfile::AeadAes128Gcm,
            SrtpProfile::AeadAes256Gcm,
        ] {
            let k = keys(profile, 1);
            let mut t = SrtpTransform::new(None, Some(&k)).unwrap();
            let mut peer = ctx(&k);
            for seq in 1..5 {
                let wire = run(&mut t, &rtp(seq)).unwrap();
                assert_ne!(wire, rtp(seq));
                assert_eq!(unprotect(&mut peer, &wire, false), rtp(seq), "{profile:?}");
            }
            let wire = run(&mut t, &sr()).unwrap();
            assert_eq!(unprotect(&mut peer, &wire, true), sr(), "{profile:?}");
        }
    }

    #[test]
    fn unprotects_and_reprotects_and_refuses_forgeries_and_replays() {
        let (ka, kb) = (
            keys(SrtpProfile::AesCm128HmacSha1_80, 2),
            keys(SrtpProfile::AeadAes128Gcm, 3),
        );
        let counters = Arc::new(EndpointCounters::default());
        let mut t = SrtpTransform::new(Some(&ka), Some(&kb))
            .unwrap()
            .with_counters(counters.clone());
        let (mut a_tx, mut b_rx) = (ctx(&ka), ctx(&kb));
        let first = protect(&mut a_tx, &rtp(7), false);
        let out = run(&mut t, &first).unwrap();
        assert_eq!(unprotect(&mut b_rx, &out, false), rtp(7));
        let out = run(&mut t, &protect(&mut a_tx, &sr(), true)).unwrap();
        assert_eq!(unprotect(&mut b_rx, &out, true), sr());

        assert_eq!(run(&mut t, &first), Err(TransformError::Replay));
        let mut forged = protect(&mut a_tx, &rtp(8), false);
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(run(&mut t, &forged), Err(TransformError::AuthFailed));
        assert_eq!(run(&mut t, &[1, 2, 3]), Err(TransformError::Malformed));
        assert_eq!(counters.srtp_auth_failures.load(Relaxed), 1);
        assert_eq!(counters.srtp_replayed.load(Relaxed), 1);
    }

    #[test]
    fn a_worker_continues_the_engines_srtp_state_after_a_rollover() {
        // The engine's contexts have been through a sequence number wrap (ROC 1) when the stream
        // moves to a worker; the worker's fresh contexts take over what the engine handed over.
        let (ka, kb) = (
            keys(SrtpProfile::AesCm128HmacSha1_80, 5),
            keys(SrtpProfile::AeadAes128Gcm, 6),
        );
        let mut a_tx = ctx(&ka);
        let mut b_rx = ctx(&kb);
        let mut engine = SrtpTransform::new(Some(&ka), Some(&kb)).unwrap();
        for seq in (65530..=65535).chain(0..3) {
            let out = run(&mut engine, &protect(&mut a_tx, &rtp(seq), false)).unwrap();
            assert_eq!(unprotect(&mut b_rx, &out, false), rtp(seq));
        }
        let sr_out = run(&mut engine, &protect(&mut a_tx, &sr(), true)).unwrap();
        assert_eq!(unprotect(&mut b_rx, &sr_out, true), sr());
        assert_eq!(engine.rx().unwrap().rtp_state(0x1234_5678), Some((1, 2)));

        // Without the hand-over a fresh context would take seq 3 for ROC 0: auth fails.
        let mut naive = SrtpTransform::new(Some(&ka), Some(&kb)).unwrap();
        let next = protect(&mut a_tx, &rtp(3), false);
        assert_eq!(run(&mut naive, &next), Err(TransformError::AuthFailed));

        let given = engine.handover();
        let mut worker = SrtpTransform::new(Some(&ka), Some(&kb))
            .unwrap()
            .resume(&given.sender, &given.receiver);
        let out = run(&mut worker, &next).unwrap();
        assert_eq!(
            unprotect(&mut b_rx, &out, false),
            rtp(3),
            "ROC 1 on both sides"
        );
        // What the engine already accepted is a replay for the worker too: its highest packet,
        // and one from before the wrap.
        let old = protect(&mut ctx(&ka), &rtp(2), false);
        assert_eq!(run(&mut worker, &old), Err(TransformError::Replay));
        let mut again = ctx(&ka);
        let before_wrap = (65530..=65533)
            .map(|s| protect(&mut again, &rtp(s), false))
            .last()
            .unwrap();
        assert_eq!(run(&mut worker, &before_wrap), Err(TransformError::Replay));
        // SRTCP towards B continues past the engine's index (with a margin): B accepts it.
        let sr_out = run(&mut worker, &protect(&mut a_tx, &sr(), true)).unwrap();
        assert_eq!(unprotect(&mut b_rx, &sr_out, true), sr());
        let engine_next = engine.tx().unwrap().next_srtcp_index(0x1234_5678);
        let worker_next = worker.tx().unwrap().next_srtcp_index(0x1234_5678);
        assert_eq!(
            worker_next,
            engine_next + crate::handover::SRTCP_INDEX_MARGIN + 1
        );
        // What the worker hands back is where it stands.
        let back = worker.handover();
        assert_eq!(back.sender.srtp_rx.unwrap().rtp_index(), Some(1 << 16 | 3));
        assert_eq!(back.receiver.srtp_tx.unwrap().srtcp_next_index, worker_next);
        assert_eq!(back.sender.srtp_tx, None);
        assert_eq!(back.receiver.srtp_rx, None);
    }

    #[test]
    fn unprotects_towards_a_plain_side_and_an_rtcp_port_refuses_rtp() {
        let k = keys(SrtpProfile::AesCm128HmacSha1_80, 4);
        let mut t = SrtpTransform::new(Some(&k), None).unwrap();
        let mut a_tx = ctx(&k);
        let out = run(&mut t, &protect(&mut a_tx, &rtp(1), false)).unwrap();
        assert_eq!(out, rtp(1));
        let mut t = SrtpTransform::new(Some(&k), None).unwrap().rtcp_port(true);
        assert_eq!(
            run(&mut t, &protect(&mut a_tx, &rtp(2), false)),
            Err(TransformError::Malformed)
        );
        assert_eq!(run(&mut t, &protect(&mut a_tx, &sr(), true)).unwrap(), sr());
    }
}
