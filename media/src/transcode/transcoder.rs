//! One transcoded direction, sans-IO: plain RTP in ([`Transcoder::push`]), plain RTP out
//! ([`Transcoder::pull`]), time only through `now_ns` arguments.
//!
//! Pipeline: a short reorder window over the input sequence numbers; then, in order, audio is
//! decoded into an 8 kHz PCM buffer (gaps filled by Opus FEC/PLC or the G.711 PLC), and every
//! full output frame is encoded and queued; telephone-events are remapped and queued as they
//! come. Output sequence numbers are assigned at queueing, so they never gap.
//!
//! Positions: every PCM sample has a position `pos` (8 kHz samples since the start, u64).
//! Input timestamps map to positions through an anchor (reset by a new SSRC or a backward
//! timestamp so output continues where it was); output timestamps are `base + pos * clock /
//! 8000`, so they are monotonic whatever the input did.

use crate::codec::opus::{MAX_PACKET_SAMPLES, PLC_GRANULE, combine_frames};
use crate::codec::{G711Plc, Law, OpusDecoder, OpusEncoder, OpusError};
use crate::rtp::{RTP_HEADER_LEN, RtpError, RtpPacket};

use super::plan::{Codec, DirectionPlan};

/// Room `pull` needs: an RTP header and 60 ms of G.711 with ample margin; Opus packets are
/// capped to fit (that is at least 150 kbit/s at 60 ms, far above any narrowband setting).
pub const MAX_OUT_PACKET: usize = 1200;
/// Largest input packet accepted (a 120 ms Opus or 240 ms G.711 packet fits easily).
pub const MAX_IN_PACKET: usize = 2048;
/// An out-of-order packet waits for the hole before it for at most this many packets held...
pub const REORDER_MAX_PACKETS: usize = 3;
/// ...or this long (wall clock), whichever comes first; then the hole is declared lost.
pub const REORDER_MAX_NS: u64 = 60_000_000;
/// Gaps up to this long (100 ms at 8 kHz) are concealed; longer ones are skipped over.
pub const MAX_CONCEAL_SAMPLES: u64 = 800;
/// Output packets queued between pulls; more are dropped oldest first (and counted).
const OUT_RING: usize = 32;
/// A sequence number this far behind or ahead is a restarted sender, not loss or reordering.
const SEQ_RESYNC: u64 = 200;
/// A forward timestamp jump this long is a sender reset rather than silence: re-anchor.
const MAX_TS_JUMP: u64 = 8000 * 60;
/// Samples per ms at the internal rate.
const SPM: usize = 8;

/// Why a packet or a plan was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranscodeError {
    #[error("invalid transcoding plan: {0}")]
    InvalidPlan(&'static str),
    #[error("codec setup failed: {0}")]
    Codec(#[from] OpusError),
    #[error("malformed RTP: {0}")]
    Malformed(#[from] RtpError),
    #[error("RTP packet of {0} bytes exceeds the transcoder's {MAX_IN_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("malformed payload: {0}")]
    BadPayload(&'static str),
}

/// Counters, all plain totals since creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TranscodeStats {
    pub packets_in: u64,
    pub packets_out: u64,
    /// Input audio packets decoded.
    pub decoded_frames: u64,
    /// Lost input packets filled by PLC (Opus decoder PLC or the G.711 PLC).
    pub concealed_frames: u64,
    /// Lost input packets rebuilt from the next packet's in-band FEC (the next packet was
    /// SILK or hybrid; should its sender not have added FEC, libopus conceals instead).
    pub fec_recovered: u64,
    /// Packets that arrived after a later one and were put back in order.
    pub reordered: u64,
    /// Packets that came after their hole had been declared lost.
    pub late_dropped: u64,
    pub duplicate_dropped: u64,
    pub dtmf_relayed: u64,
    pub cn_dropped: u64,
    /// Payload types not in the plan, telephone-event without a mapping included.
    pub unknown_pt_dropped: u64,
    /// RTP or payload that failed to parse or decode.
    pub malformed: u64,
    /// Gaps too long to conceal, skipped over (output timestamps jump).
    pub gaps_skipped: u64,
    /// Output packets dropped because `pull` fell more than the queue's length behind.
    pub queue_overflow: u64,
    /// Output frames the encoder failed on (not sent).
    pub encode_failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Audio,
    Dtmf,
    /// Counted on arrival; still occupies its sequence number.
    Dropped,
}

/// A packet held by the reorder window.
struct Slot {
    used: bool,
    ext_seq: u64,
    arrival_ns: u64,
    kind: Kind,
    len: usize,
    buf: Box<[u8]>,
}

enum Decoder {
    G711(Law, Box<G711Plc>),
    Opus(OpusDecoder),
}

enum Encoder {
    G711(Law),
    Opus(OpusEncoder),
}

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// Extended input timestamp (audio clock) that maps to `pos`.
    in_ext: i64,
    pos: u64,
}

/// One direction of a G.711 <-> Opus transcode. See the module docs.
pub struct Transcoder {
    plan: DirectionPlan,
    stats: TranscodeStats,
    dec: Decoder,
    enc: Encoder,
    /// Input RTP clock divided by 8000 (1 for G.711, 6 for Opus).
    in_div: i64,
    frame: usize,

    in_ssrc: Option<u32>,
    next_seq: u64,
    highest_seq: u64,
    /// Bit i: sequence `next_seq - 1 - i` was processed (tells duplicates from late ones).
    seen: u64,
    /// Sequence numbers declared lost since the last audio packet.
    lost_pending: u64,
    slots: Vec<Slot>,

    anchor: Option<Anchor>,
    last_in_ts: u32,
    last_in_ext: i64,

    pcm: Box<[i16]>,
    pcm_len: usize,
    pcm_pos: u64,
    scratch: Box<[i16]>,
    marker_pos: Option<u64>,

    out_seq: u16,
    /// What the Opus encoder was told to expect (percent).
    expected_loss: u8,
    out_ts_base: u32,
    ring: Box<[u8]>,
    ring_lens: [usize; OUT_RING],
    ring_head: usize,
    ring_count: usize,
    /// 10 ms Opus packets waiting to be combined into one 30 ms packet.
    sub_frames: Box<[u8]>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("plan", &self.plan)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Output timestamps start at an SSRC-derived offset rather than 0: RFC 3550 wants a random
/// start (a known one helps known-plaintext attacks on SRTP), and this keeps the transcoder
/// deterministic for tests.
fn ts_base(ssrc: u32) -> u32 {
    let mut z = u64::from(ssrc).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

impl Transcoder {
    pub fn new(plan: &DirectionPlan, seq_start: u16) -> Result<Self, TranscodeError> {
        if !matches!(plan.output_ptime_ms, 10 | 20 | 30 | 40 | 60) {
            return Err(TranscodeError::InvalidPlan(
                "output ptime must be 10, 20, 30, 40 or 60 ms",
            ));
        }
        if plan.input_pt > 127 || plan.output_pt > 127 {
            return Err(TranscodeError::InvalidPlan("payload type above 127"));
        }
        if let Some(d) = plan.dtmf {
            if d.in_clock == 0 || d.out_clock == 0 || d.in_pt > 127 || d.out_pt > 127 {
                return Err(TranscodeError::InvalidPlan("bad telephone-event mapping"));
            }
            if d.in_pt == plan.input_pt {
                return Err(TranscodeError::InvalidPlan(
                    "telephone-event and audio share a payload type",
                ));
            }
        }
        let dec = match plan.input {
            Codec::Pcmu => Decoder::G711(Law::Ulaw, Box::default()),
            Codec::Pcma => Decoder::G711(Law::Alaw, Box::default()),
            Codec::Opus => Decoder::Opus(OpusDecoder::new()?),
        };
        let enc = match plan.output {
            Codec::Pcmu => Encoder::G711(Law::Ulaw),
            Codec::Pcma => Encoder::G711(Law::Alaw),
            Codec::Opus => {
                let mut e = OpusEncoder::new(&plan.opus)?;
                if plan.output_ptime_ms == 30 {
                    e.force_silk()?;
                }
                Encoder::Opus(e)
            }
        };
        let frame = usize::from(plan.output_ptime_ms) * SPM;
        let slots = (0..REORDER_MAX_PACKETS)
            .map(|_| Slot {
                used: false,
                ext_seq: 0,
                arrival_ns: 0,
                kind: Kind::Dropped,
                len: 0,
                buf: vec![0u8; MAX_IN_PACKET].into_boxed_slice(),
            })
            .collect();
        Ok(Self {
            plan: plan.clone(),
            stats: TranscodeStats::default(),
            dec,
            enc,
            in_div: i64::from(plan.input.clock_rate() / 8000),
            frame,
            in_ssrc: None,
            next_seq: 0,
            highest_seq: 0,
            seen: 0,
            lost_pending: 0,
            slots,
            anchor: None,
            last_in_ts: 0,
            last_in_ext: 0,
            pcm: vec![0i16; frame + MAX_PACKET_SAMPLES].into_boxed_slice(),
            pcm_len: 0,
            pcm_pos: 0,
            scratch: vec![0i16; MAX_PACKET_SAMPLES].into_boxed_slice(),
            marker_pos: None,
            out_seq: seq_start,
            expected_loss: plan.opus.expected_loss_pct,
            out_ts_base: ts_base(plan.ssrc),
            ring: vec![0u8; OUT_RING * MAX_OUT_PACKET].into_boxed_slice(),
            ring_lens: [0; OUT_RING],
            ring_head: 0,
            ring_count: 0,
            sub_frames: vec![0u8; 3 * MAX_OUT_PACKET].into_boxed_slice(),
        })
    }

    pub fn plan(&self) -> &DirectionPlan {
        &self.plan
    }

    /// Tells the Opus encoder how much loss the receiving leg reports (percent, e.g. from its
    /// RTCP receiver reports), so that it spends in-band FEC bits only where they pay: FEC on a
    /// clean path costs about 0.2-0.4 MOS at 24 kbit/s. Capped at 20 %. No effect on G.711
    /// output or when the receiver did not ask for FEC (`useinbandfec`).
    pub fn set_expected_loss(&mut self, pct: u8) {
        let pct = pct.min(20);
        if !self.plan.opus.inband_fec || pct == self.expected_loss {
            return;
        }
        if let Encoder::Opus(e) = &mut self.enc
            && e.set_expected_loss(pct).is_ok()
        {
            self.expected_loss = pct;
        }
    }

    /// The loss percentage the Opus encoder currently protects against.
    pub fn expected_loss(&self) -> u8 {
        self.expected_loss
    }

    /// The sequence number the next output packet gets: published so that a transcoder for
    /// the same stream built elsewhere can continue the sequence.
    pub fn next_out_seq(&self) -> u16 {
        self.out_seq
    }

    pub fn stats(&self) -> &TranscodeStats {
        &self.stats
    }

    /// One plain RTP packet from the incoming leg (already SRTP-unprotected). May buffer it.
    pub fn push(&mut self, rtp: &[u8], now_ns: u64) -> Result<(), TranscodeError> {
        if rtp.len() > MAX_IN_PACKET {
            self.stats.malformed += 1;
            return Err(TranscodeError::TooLarge(rtp.len()));
        }
        let pkt = match RtpPacket::new_checked(rtp) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e.into());
            }
        };
        self.stats.packets_in += 1;
        let pt = pkt.payload_type();
        let kind = if pt == self.plan.input_pt {
            if pkt.payload().is_empty() {
                self.stats.malformed += 1;
                return Err(TranscodeError::BadPayload("empty audio payload"));
            }
            Kind::Audio
        } else if self.plan.dtmf.is_some_and(|d| d.in_pt == pt) {
            if pkt.payload().len() < 4 {
                self.stats.malformed += 1;
                return Err(TranscodeError::BadPayload(
                    "telephone-event payload shorter than 4 bytes",
                ));
            }
            Kind::Dtmf
        } else if self.plan.cn_pts.contains(&pt) {
            self.stats.cn_dropped += 1;
            Kind::Dropped
        } else {
            self.stats.unknown_pt_dropped += 1;
            Kind::Dropped
        };

        let ssrc = pkt.ssrc();
        if self.in_ssrc != Some(ssrc) {
            if self.in_ssrc.is_some() {
                self.new_source();
            }
            self.in_ssrc = Some(ssrc);
            self.next_seq = (1 << 32) + u64::from(pkt.sequence());
            self.highest_seq = self.next_seq;
            self.seen = 0;
        }

        let seq = pkt.sequence();
        let ext = (self.next_seq as i64 + i64::from(seq.wrapping_sub(self.next_seq as u16) as i16))
            as u64;
        if ext < self.next_seq {
            let behind = self.next_seq - ext;
            if behind <= 64 && self.seen & (1 << (behind - 1)) != 0 {
                self.stats.duplicate_dropped += 1;
                return Ok(());
            }
            if behind <= SEQ_RESYNC {
                self.stats.late_dropped += 1;
                return Ok(());
            }
            self.resync(ext);
        } else if ext - self.next_seq > SEQ_RESYNC {
            self.resync(ext);
        }
        if self.slots.iter().any(|s| s.used && s.ext_seq == ext) {
            self.stats.duplicate_dropped += 1;
            return Ok(());
        }
        if ext < self.highest_seq {
            self.stats.reordered += 1;
        }
        self.highest_seq = self.highest_seq.max(ext);

        if ext == self.next_seq {
            let r = self.process(kind, rtp, ext);
            self.drain();
            return r;
        }
        // Ahead of a hole: hold it.
        let Some(slot) = self.slots.iter_mut().find(|s| !s.used) else {
            unreachable!("a full window is always released below");
        };
        slot.used = true;
        slot.ext_seq = ext;
        slot.arrival_ns = now_ns;
        slot.kind = kind;
        slot.len = rtp.len();
        slot.buf[..rtp.len()].copy_from_slice(rtp);
        while self.slots.iter().all(|s| s.used) {
            self.release_oldest();
        }
        Ok(())
    }

    /// Next RTP packet for the outgoing leg, written whole into `out` (at least
    /// [`MAX_OUT_PACKET`] long); `None` when nothing is ready.
    pub fn pull(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.ring_count == 0 {
            return None;
        }
        let i = self.ring_head;
        let len = self.ring_lens[i];
        let src = &self.ring[i * MAX_OUT_PACKET..i * MAX_OUT_PACKET + len];
        out.get_mut(..len)?.copy_from_slice(src);
        self.ring_head = (self.ring_head + 1) % OUT_RING;
        self.ring_count -= 1;
        Some(len)
    }

    /// When [`Self::handle_timeout`] must run next (the reorder window's expiry), monotonic ns.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.used)
            .map(|s| s.arrival_ns.saturating_add(REORDER_MAX_NS))
            .min()
    }

    pub fn handle_timeout(&mut self, now_ns: u64) {
        while self.poll_timeout().is_some_and(|t| t <= now_ns) {
            self.release_oldest();
        }
    }

    // --- sequencing ---------------------------------------------------------------------------

    /// Gives up on the hole before the lowest held packet: everything up to it is lost.
    fn release_oldest(&mut self) {
        let Some(lowest) = self
            .slots
            .iter()
            .filter(|s| s.used)
            .map(|s| s.ext_seq)
            .min()
        else {
            return;
        };
        let skipped = lowest - self.next_seq;
        self.lost_pending += skipped;
        // The skipped numbers stay unmarked in `seen`: should one arrive, it is late.
        self.seen = if skipped >= 64 {
            0
        } else {
            self.seen << skipped
        };
        self.next_seq = lowest;
        self.drain();
    }

    /// Processes held packets that are next in sequence.
    fn drain(&mut self) {
        while let Some(i) = self
            .slots
            .iter()
            .position(|s| s.used && s.ext_seq == self.next_seq)
        {
            let buf = std::mem::take(&mut self.slots[i].buf);
            let (kind, len, ext) = (self.slots[i].kind, self.slots[i].len, self.slots[i].ext_seq);
            self.slots[i].used = false;
            // Errors of held packets were counted; there is no caller to give them to.
            let _ = self.process(kind, &buf[..len], ext);
            self.slots[i].buf = buf;
        }
    }

    /// Flushes the window and restarts sequencing at `ext` (a sender that restarted).
    fn resync(&mut self, ext: u64) {
        while self.slots.iter().any(|s| s.used) {
            self.release_oldest();
        }
        self.next_seq = ext;
        self.highest_seq = ext;
        self.seen = 0;
    }

    /// A new input SSRC: what is held goes out first, then the new source's timestamps are
    /// anchored to continue the output where it stands, with fresh decoder state.
    fn new_source(&mut self) {
        while self.slots.iter().any(|s| s.used) {
            self.release_oldest();
        }
        self.anchor = None;
        self.lost_pending = 0;
        self.reset_decoder();
    }

    /// Processes the packet at sequence `ext` (== `next_seq`, after any holes were skipped).
    fn process(&mut self, kind: Kind, rtp: &[u8], ext: u64) -> Result<(), TranscodeError> {
        let shift = ext + 1 - self.next_seq;
        self.seen = if shift >= 64 { 0 } else { self.seen << shift } | 1;
        self.next_seq = ext + 1;
        let pkt = RtpPacket::new_unchecked(rtp);
        match kind {
            Kind::Audio => {
                let lost = std::mem::take(&mut self.lost_pending);
                self.audio(pkt.payload(), pkt.timestamp(), pkt.marker(), lost)
            }
            Kind::Dtmf => {
                self.dtmf(&pkt);
                Ok(())
            }
            Kind::Dropped => Ok(()),
        }
    }

    // --- audio ------------------------------------------------------------------------------

    fn pos_end(&self) -> u64 {
        self.pcm_pos + self.pcm_len as u64
    }

    fn unwrap_ts(&self, ts: u32) -> i64 {
        self.last_in_ext + i64::from(ts.wrapping_sub(self.last_in_ts) as i32)
    }

    fn audio(
        &mut self,
        payload: &[u8],
        ts: u32,
        marker: bool,
        lost: u64,
    ) -> Result<(), TranscodeError> {
        // Validate before touching any state.
        if matches!(self.dec, Decoder::Opus(_))
            && !OpusDecoder::packet_samples(payload).is_ok_and(|n| n <= MAX_PACKET_SAMPLES)
        {
            self.stats.malformed += 1;
            return Err(TranscodeError::BadPayload("invalid Opus packet"));
        }
        let ext = if self.anchor.is_some() {
            self.unwrap_ts(ts)
        } else {
            i64::from(ts)
        };
        self.last_in_ts = ts;
        self.last_in_ext = ext;
        if self.anchor.is_none() && self.stats.packets_out == 0 && self.pos_end() == 0 {
            // The very first audio: output timestamps are a fixed function of the input's
            // (scaled, plus the SSRC-derived base), so a transcoder for the same plan built
            // elsewhere (the stream moving between the userspace engine and an AF_XDP worker)
            // continues the same timeline.
            let pos = ext.div_euclid(self.in_div);
            self.anchor = Some(Anchor {
                in_ext: pos * self.in_div,
                pos: pos as u64,
            });
            self.pcm_pos = pos as u64;
        }
        let end = self.pos_end();
        let anchor = *self.anchor.get_or_insert(Anchor {
            in_ext: ext,
            pos: end,
        });
        let pos = anchor.pos as i64 + (ext - anchor.in_ext).div_euclid(self.in_div);
        let gap = pos - end as i64;
        if gap < 0 || gap as u64 > MAX_TS_JUMP {
            // Timestamps went backwards or leapt: a sender reset. Continue seamlessly.
            self.anchor = Some(Anchor {
                in_ext: ext,
                pos: end,
            });
        } else if gap as u64 > MAX_CONCEAL_SAMPLES {
            self.skip_gap(pos as u64, true);
        } else if gap > 0 && lost == 0 {
            // Timestamps moved on with no packet missing: the sender was silent on purpose
            // (DTX, comfort noise dropped here, a DTMF event). Filling that with concealment
            // would replay speech over the silence; the output jumps too.
            self.skip_gap(pos as u64, false);
        } else if gap > 0 {
            self.fill_gap(gap as usize, lost, payload);
        }
        if marker {
            self.marker_pos = Some(self.pos_end());
        }
        self.decode(payload)
    }

    /// A gap not to conceal (too long, or silence the sender chose): the partial frame is
    /// completed by concealment, then output resumes at `pos` (so output timestamps jump as the
    /// input's did); decoders are reset after a loss (`reset`).
    fn skip_gap(&mut self, pos: u64, reset: bool) {
        self.stats.gaps_skipped += 1;
        if self.pcm_len > 0 {
            let fill = self.frame - self.pcm_len;
            self.conceal(fill);
        }
        debug_assert_eq!(self.pcm_len, 0);
        self.pcm_pos = pos.max(self.pcm_pos);
        self.lost_pending = 0;
        if reset {
            self.reset_decoder();
        }
    }

    fn reset_decoder(&mut self) {
        match &mut self.dec {
            Decoder::G711(_, plc) => plc.reset(),
            Decoder::Opus(d) => {
                let _ = d.reset();
            }
        }
    }

    /// Fills `gap` samples before `next` (the packet that revealed the gap): from `next`'s
    /// in-band FEC where Opus has it, else by concealment.
    fn fill_gap(&mut self, gap: usize, lost: u64, next: &[u8]) {
        if let Decoder::Opus(dec) = &mut self.dec
            && lost > 0
            && OpusDecoder::may_carry_fec(next)
        {
            let n = gap.div_ceil(PLC_GRANULE) * PLC_GRANULE;
            let mut scratch = std::mem::take(&mut self.scratch);
            if dec.decode_fec(next, &mut scratch[..n]).is_ok() {
                self.stats.fec_recovered += 1;
                self.stats.concealed_frames += lost - 1;
                self.append(&scratch[..gap]);
                self.scratch = scratch;
                return;
            }
            self.scratch = scratch;
        }
        self.stats.concealed_frames += lost;
        self.conceal(gap);
    }

    /// `n` samples of concealment appended to the PCM buffer.
    fn conceal(&mut self, mut n: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        while n > 0 {
            let chunk = n.min(scratch.len());
            match &mut self.dec {
                Decoder::G711(_, plc) => plc.conceal(&mut scratch[..chunk]),
                Decoder::Opus(d) => {
                    let m = chunk.div_ceil(PLC_GRANULE) * PLC_GRANULE;
                    let m = m.min(scratch.len());
                    if d.conceal(&mut scratch[..m]).is_err() {
                        scratch[..chunk].fill(0);
                    }
                }
            }
            self.append(&scratch[..chunk]);
            n -= chunk;
        }
        self.scratch = scratch;
    }

    fn decode(&mut self, payload: &[u8]) -> Result<(), TranscodeError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut r = Ok(());
        for chunk in payload.chunks(scratch.len()) {
            let n = match &mut self.dec {
                Decoder::G711(law, plc) => {
                    let pcm = &mut scratch[..chunk.len()];
                    law.decode(chunk, pcm);
                    plc.good(pcm);
                    chunk.len()
                }
                // An Opus packet is never split (validated to fit the scratch buffer).
                Decoder::Opus(d) => match d.decode(payload, &mut scratch) {
                    Ok(n) => n,
                    Err(_) => {
                        r = Err(TranscodeError::BadPayload("Opus decoding failed"));
                        break;
                    }
                },
            };
            self.append(&scratch[..n]);
            if matches!(self.dec, Decoder::Opus(_)) {
                break;
            }
        }
        self.scratch = scratch;
        match r {
            Ok(()) => self.stats.decoded_frames += 1,
            Err(_) => self.stats.malformed += 1,
        }
        r
    }

    /// Appends PCM, encoding and queueing every frame that completes.
    fn append(&mut self, mut pcm: &[i16]) {
        while !pcm.is_empty() {
            let n = pcm.len().min(self.pcm.len() - self.pcm_len);
            self.pcm[self.pcm_len..self.pcm_len + n].copy_from_slice(&pcm[..n]);
            self.pcm_len += n;
            pcm = &pcm[n..];
            while self.pcm_len >= self.frame {
                self.emit_frame();
            }
        }
    }

    // --- output -----------------------------------------------------------------------------

    fn out_ts(&self, pos: u64, clock: u32) -> u32 {
        self.out_ts_base
            .wrapping_add(pos.wrapping_mul(u64::from(clock)).wrapping_div(8000) as u32)
    }

    /// The ring slot the next packet goes into (dropping the oldest when full).
    fn tail_slot(&mut self) -> usize {
        if self.ring_count == OUT_RING {
            self.ring_head = (self.ring_head + 1) % OUT_RING;
            self.ring_count -= 1;
            self.stats.queue_overflow += 1;
        }
        (self.ring_head + self.ring_count) % OUT_RING
    }

    /// Writes the header into `slot`, commits it with `payload_len` bytes of payload.
    fn commit(&mut self, slot: usize, marker: bool, pt: u8, ts: u32, payload_len: usize) {
        let buf = &mut self.ring[slot * MAX_OUT_PACKET..(slot + 1) * MAX_OUT_PACKET];
        buf[0] = 0x80;
        buf[1] = (u8::from(marker) << 7) | (pt & 0x7f);
        buf[2..4].copy_from_slice(&self.out_seq.to_be_bytes());
        buf[4..8].copy_from_slice(&ts.to_be_bytes());
        buf[8..12].copy_from_slice(&self.plan.ssrc.to_be_bytes());
        self.ring_lens[slot] = RTP_HEADER_LEN + payload_len;
        self.ring_count += 1;
        self.out_seq = self.out_seq.wrapping_add(1);
        self.stats.packets_out += 1;
    }

    fn emit_frame(&mut self) {
        let frame = self.frame;
        let pos = self.pcm_pos;
        let marker = self.marker_pos.is_some_and(|m| m < pos + frame as u64);
        let clock = self.plan.output.clock_rate();
        let ts = self.out_ts(pos, clock);
        let slot = self.tail_slot();
        let payload =
            &mut self.ring[slot * MAX_OUT_PACKET + RTP_HEADER_LEN..(slot + 1) * MAX_OUT_PACKET];
        let samples = &self.pcm[..frame];
        let len = match &mut self.enc {
            Encoder::G711(law) => {
                law.encode(samples, payload);
                Some(frame)
            }
            Encoder::Opus(enc) if frame == 30 * SPM => {
                let sub = 10 * SPM;
                let cap = MAX_OUT_PACKET / 3 - 4;
                let mut lens = [0usize; 3];
                let mut ok = true;
                for (i, len) in lens.iter_mut().enumerate() {
                    let dst = &mut self.sub_frames[i * MAX_OUT_PACKET..i * MAX_OUT_PACKET + cap];
                    match enc.encode(&samples[i * sub..(i + 1) * sub], dst) {
                        Ok(n) => *len = n,
                        Err(_) => ok = false,
                    }
                }
                let f =
                    |i: usize| &self.sub_frames[i * MAX_OUT_PACKET..i * MAX_OUT_PACKET + lens[i]];
                if ok {
                    combine_frames(&[f(0), f(1), f(2)], payload)
                } else {
                    None
                }
            }
            Encoder::Opus(enc) => enc.encode(samples, payload).ok(),
        };
        match len {
            Some(n) => {
                self.commit(slot, marker, self.plan.output_pt, ts, n);
                if marker {
                    self.marker_pos = None;
                }
            }
            None => self.stats.encode_failed += 1,
        }
        self.pcm.copy_within(frame..self.pcm_len, 0);
        self.pcm_len -= frame;
        self.pcm_pos += frame as u64;
    }

    // --- telephone-event --------------------------------------------------------------------

    fn dtmf(&mut self, pkt: &RtpPacket<&[u8]>) {
        let Some(map) = self.plan.dtmf else { return };
        let ts = pkt.timestamp();
        let end = self.pos_end();
        if self.anchor.is_none() {
            // Events before any audio: anchor on them so the audio that follows lines up.
            self.last_in_ts = ts;
            self.last_in_ext = i64::from(ts);
            self.anchor = Some(Anchor {
                in_ext: i64::from(ts),
                pos: end,
            });
        }
        let anchor = self.anchor.unwrap_or(Anchor { in_ext: 0, pos: 0 });
        let ext = self.unwrap_ts(ts);
        // Relative to the audio anchor, in the event clock (RFC 4733 2.1 asks for the audio's).
        let delta = (ext - anchor.in_ext) * 8000 / i64::from(map.in_clock);
        let pos = (anchor.pos as i64 + delta).max(0) as u64;
        let out_ts = self.out_ts(pos, map.out_clock);
        let payload = pkt.payload();
        let duration = u64::from(u16::from_be_bytes([payload[2], payload[3]]));
        let duration =
            (duration * u64::from(map.out_clock) / u64::from(map.in_clock)).min(0xffff) as u16;
        let len = payload.len().min(MAX_OUT_PACKET - RTP_HEADER_LEN);
        let slot = self.tail_slot();
        let buf = &mut self.ring[slot * MAX_OUT_PACKET + RTP_HEADER_LEN..];
        buf[..len].copy_from_slice(&payload[..len]);
        buf[2..4].copy_from_slice(&duration.to_be_bytes());
        self.commit(slot, pkt.marker(), map.out_pt, out_ts, len);
        self.stats.dtmf_relayed += 1;
    }
}
