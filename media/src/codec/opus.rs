//! A narrowband Opus encoder and decoder over libopus (`sluice-opus-sys`: the system library,
//! or the vendored 1.3.1 release built with the C compiler alone).
//!
//! Both run at 8 kHz mono: the other side of every transcode is G.711, which carries nothing
//! above 4 kHz, so asking libopus for wideband would spend bits on an empty band and force a
//! resampler into the path. The RTP clock of Opus stays 48 kHz regardless (RFC 7587); the
//! transcoder does that scaling.
//!
//! All calls take caller-provided buffers: nothing here allocates after construction.

use std::ffi::c_int;
use std::ptr::NonNull;

use sluice_opus_sys as ffi;

use crate::transcode::OpusParams;

/// Sample rate the codecs run at (G.711's).
pub const RATE: u32 = 8000;
/// Samples per millisecond at [`RATE`].
pub const SAMPLES_PER_MS: usize = 8;
/// The longest Opus packet (120 ms, RFC 6716 3.2.5) in samples at [`RATE`].
pub const MAX_PACKET_SAMPLES: usize = 120 * SAMPLES_PER_MS;
/// libopus wants loss/FEC durations in multiples of 2.5 ms.
pub const PLC_GRANULE: usize = 20;

/// An Opus or parameter failure, with the libopus operation it came from and libopus' error
/// code (`OPUS_BAD_ARG`, `OPUS_INVALID_PACKET`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("opus {op}: {} ({code})", ffi::strerror(*.code))]
pub struct OpusError {
    pub op: &'static str,
    pub code: i32,
}

/// A libopus return value: negative is an error code, anything else a count.
fn check(op: &'static str, r: c_int) -> Result<usize, OpusError> {
    if r < 0 {
        Err(OpusError { op, code: r })
    } else {
        Ok(r as usize)
    }
}

/// Which libopus this build links and what it says its version is, for the start line.
pub fn library() -> String {
    format!("{} ({})", ffi::version(), ffi::LINKED)
}

/// Mono encoder at [`RATE`].
pub struct OpusEncoder {
    enc: NonNull<ffi::OpusEncoder>,
}

// SAFETY: the encoder state is plain memory owned by this value; libopus keeps no global or
// thread-local state for it, so it may move between threads (it is not shared: no Sync).
unsafe impl Send for OpusEncoder {}

impl Drop for OpusEncoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_encoder_create and destroyed once.
        unsafe { ffi::opus_encoder_destroy(self.enc.as_ptr()) }
    }
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusEncoder")
    }
}

impl OpusEncoder {
    /// A VoIP-application encoder at 8 kHz with libopus' defaults, configured by the setters.
    pub fn voip() -> Result<Self, OpusError> {
        let mut err: c_int = 0;
        // SAFETY: valid rate/channels/application; err is a valid out pointer.
        let enc = unsafe {
            ffi::opus_encoder_create(RATE as i32, 1, ffi::OPUS_APPLICATION_VOIP, &mut err)
        };
        check("encoder_create", err)?;
        let enc = NonNull::new(enc).ok_or(OpusError {
            op: "encoder_create",
            code: ffi::OPUS_ALLOC_FAIL,
        })?;
        Ok(Self { enc })
    }

    /// The encoder sluice transcodes with, configured from the receiving leg's [`OpusParams`].
    pub fn new(params: &OpusParams) -> Result<Self, OpusError> {
        let mut enc = Self::voip()?;
        enc.set_bitrate(params.bitrate.clamp(6_000, 510_000))?;
        enc.set_complexity(params.complexity.min(10))?;
        enc.set_inband_fec(params.inband_fec)?;
        enc.set_expected_loss(params.expected_loss_pct)?;
        // Redundant at 8 kHz input, but keeps the promise explicit should the rate change:
        // the G.711 side has nothing above 4 kHz, and `maxplaybackrate` can only lower this.
        enc.set_narrowband()?;
        Ok(enc)
    }

    fn ctl(&mut self, op: &'static str, request: c_int, value: i32) -> Result<(), OpusError> {
        // SAFETY: every request passed here is a SET taking one opus_int32.
        check(op, unsafe {
            ffi::opus_encoder_ctl(self.enc.as_ptr(), request, value)
        })
        .map(drop)
    }

    /// Target bitrate in bit/s.
    pub fn set_bitrate(&mut self, bps: u32) -> Result<(), OpusError> {
        let bps = i32::try_from(bps).unwrap_or(i32::MAX);
        self.ctl("set_bitrate", ffi::OPUS_SET_BITRATE_REQUEST, bps)
    }

    /// Complexity 0-10.
    pub fn set_complexity(&mut self, complexity: u8) -> Result<(), OpusError> {
        let c = i32::from(complexity);
        self.ctl("set_complexity", ffi::OPUS_SET_COMPLEXITY_REQUEST, c)
    }

    /// In-band FEC (LBRR) on or off.
    pub fn set_inband_fec(&mut self, on: bool) -> Result<(), OpusError> {
        let on = i32::from(on);
        self.ctl("set_inband_fec", ffi::OPUS_SET_INBAND_FEC_REQUEST, on)
    }

    /// How much loss in percent the encoder should protect against with in-band FEC (0 spends
    /// no bits on it).
    pub fn set_expected_loss(&mut self, pct: u8) -> Result<(), OpusError> {
        let pct = i32::from(pct.min(100));
        self.ctl(
            "set_packet_loss_perc",
            ffi::OPUS_SET_PACKET_LOSS_PERC_REQUEST,
            pct,
        )
    }

    /// Caps the coded bandwidth at narrowband (4 kHz).
    pub fn set_narrowband(&mut self) -> Result<(), OpusError> {
        self.ctl(
            "set_max_bandwidth",
            ffi::OPUS_SET_MAX_BANDWIDTH_REQUEST,
            ffi::OPUS_BANDWIDTH_NARROWBAND,
        )
    }

    /// Pins the encoder to SILK so that every frame carries the same TOC configuration, which
    /// a multi-frame (code 3) packet requires of all its frames.
    pub fn force_silk(&mut self) -> Result<(), OpusError> {
        self.ctl(
            "set_force_mode",
            ffi::OPUS_SET_FORCE_MODE_REQUEST,
            ffi::MODE_SILK_ONLY,
        )
    }

    /// Encodes one frame (`pcm.len()` samples: 2.5, 5, 10, 20, 40 or 60 ms at 8 kHz) into `out`,
    /// returning the packet length.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        let frame = c_int::try_from(pcm.len()).map_err(|_| OpusError {
            op: "encode",
            code: ffi::OPUS_BAD_ARG,
        })?;
        let max = i32::try_from(out.len()).unwrap_or(i32::MAX);
        // SAFETY: pcm holds `frame` samples (mono); out has `max` writable bytes.
        check("encode", unsafe {
            ffi::opus_encode(
                self.enc.as_ptr(),
                pcm.as_ptr(),
                frame,
                out.as_mut_ptr(),
                max,
            )
        })
    }
}

/// Narrowband Opus decoder: normal decode, in-band FEC and PLC.
pub struct OpusDecoder {
    dec: NonNull<ffi::OpusDecoder>,
}

// SAFETY: as for OpusEncoder.
unsafe impl Send for OpusDecoder {}

impl Drop for OpusDecoder {
    fn drop(&mut self) {
        // SAFETY: created by opus_decoder_create and destroyed once.
        unsafe { ffi::opus_decoder_destroy(self.dec.as_ptr()) }
    }
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpusDecoder")
    }
}

impl OpusDecoder {
    pub fn new() -> Result<Self, OpusError> {
        let mut err: c_int = 0;
        // SAFETY: valid rate and channels; err is a valid out pointer.
        let dec = unsafe { ffi::opus_decoder_create(RATE as i32, 1, &mut err) };
        check("decoder_create", err)?;
        let dec = NonNull::new(dec).ok_or(OpusError {
            op: "decoder_create",
            code: ffi::OPUS_ALLOC_FAIL,
        })?;
        Ok(Self { dec })
    }

    /// Samples (at 8 kHz) the packet decodes to, or an error if its framing is invalid.
    pub fn packet_samples(packet: &[u8]) -> Result<usize, OpusError> {
        Self::packet_samples_at(packet, RATE)
    }

    /// Samples the packet decodes to at `rate` Hz (48000 for the RTP clock of RFC 7587).
    pub fn packet_samples_at(packet: &[u8], rate: u32) -> Result<usize, OpusError> {
        if packet.is_empty() {
            return Err(OpusError {
                op: "packet_get_nb_samples",
                code: ffi::OPUS_INVALID_PACKET,
            });
        }
        let len = i32::try_from(packet.len()).unwrap_or(i32::MAX);
        let rate = i32::try_from(rate).unwrap_or(i32::MAX);
        // SAFETY: packet has `len` readable bytes.
        check("packet_get_nb_samples", unsafe {
            ffi::opus_packet_get_nb_samples(packet.as_ptr(), len, rate)
        })
    }

    /// Whether the packet's frames are SILK or hybrid, the modes that can carry in-band FEC
    /// (LBRR); a CELT-only packet never does.
    pub fn may_carry_fec(packet: &[u8]) -> bool {
        packet.first().is_some_and(|toc| toc >> 3 < 16)
    }

    /// One opus_decode call. An empty `packet` asks for concealment (libopus takes a NULL
    /// pointer for that).
    fn run(
        &mut self,
        op: &'static str,
        packet: &[u8],
        out: &mut [i16],
        fec: bool,
    ) -> Result<usize, OpusError> {
        let frame = c_int::try_from(out.len()).map_err(|_| OpusError {
            op,
            code: ffi::OPUS_BAD_ARG,
        })?;
        let (data, len) = if packet.is_empty() {
            (std::ptr::null(), 0)
        } else {
            let len = i32::try_from(packet.len()).map_err(|_| OpusError {
                op,
                code: ffi::OPUS_INVALID_PACKET,
            })?;
            (packet.as_ptr(), len)
        };
        // SAFETY: data is null or `len` readable bytes; out has `frame` writable samples.
        check(op, unsafe {
            ffi::opus_decode(
                self.dec.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                frame,
                c_int::from(fec),
            )
        })
    }

    /// Decodes `packet` into `out` (at least [`Self::packet_samples`] long); returns samples.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if packet.is_empty() {
            return Err(OpusError {
                op: "decode",
                code: ffi::OPUS_INVALID_PACKET,
            });
        }
        self.run("decode", packet, out, false)
    }

    /// Reconstructs the `out.len()` samples lost just before `next`, using the in-band FEC that
    /// `next` carries for its predecessor. libopus conceals (PLC) whatever part of the gap the
    /// FEC does not cover, and falls back to PLC entirely when `next` has none. `out.len()`
    /// must be a multiple of [`PLC_GRANULE`].
    pub fn decode_fec(&mut self, next: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if next.is_empty() {
            return Err(OpusError {
                op: "decode_fec",
                code: ffi::OPUS_INVALID_PACKET,
            });
        }
        self.run("decode_fec", next, out, true)
    }

    /// Packet loss concealment for `out.len()` samples (a multiple of [`PLC_GRANULE`]).
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, OpusError> {
        self.run("plc", &[], out, false)
    }

    /// Forgets the previous signal, e.g. after a long gap or a new source.
    pub fn reset(&mut self) -> Result<(), OpusError> {
        // SAFETY: OPUS_RESET_STATE takes no argument.
        check("reset", unsafe {
            ffi::opus_decoder_ctl(self.dec.as_ptr(), ffi::OPUS_RESET_STATE)
        })
        .map(drop)
    }
}

/// Builds one code-3 Opus packet (RFC 6716 3.2.5) from single-frame (code 0) packets of the
/// same TOC configuration, into `out`. This is how 30 ms packets are made: libopus cannot
/// encode a 30 ms frame, but three 10 ms frames in one packet are valid. Returns `None` when
/// the frames' configurations differ, a packet is not code 0, or `out` is too short.
pub fn combine_frames(frames: &[&[u8]], out: &mut [u8]) -> Option<usize> {
    let first = frames.first()?;
    let toc = *first.first()?;
    if frames.len() > 48 {
        return None;
    }
    for f in frames {
        let t = *f.first()?;
        if t & 0x03 != 0 || t & 0xfc != toc & 0xfc {
            return None;
        }
    }
    let cbr = frames.iter().all(|f| f.len() == first.len());
    let mut at = 0;
    let mut put = |out: &mut [u8], b: u8| -> Option<()> {
        *out.get_mut(at)? = b;
        at += 1;
        Some(())
    };
    put(out, (toc & 0xfc) | 3)?;
    put(out, (if cbr { 0 } else { 0x80 }) | frames.len() as u8)?;
    if !cbr {
        for f in &frames[..frames.len() - 1] {
            let len = f.len() - 1;
            if len < 252 {
                put(out, len as u8)?;
            } else if len <= 1275 {
                let first = 252 + (len & 3);
                put(out, first as u8)?;
                put(out, ((len - first) >> 2) as u8)?;
            } else {
                return None;
            }
        }
    }
    for f in frames {
        let body = &f[1..];
        out.get_mut(at..at + body.len())?.copy_from_slice(body);
        at += body.len();
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(n: usize, freq: f64, amp: f64, phase0: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = (i + phase0) as f64 / RATE as f64;
                (amp * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn encode_decode_keeps_a_tone() {
        let mut enc = OpusEncoder::new(&OpusParams::default()).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pkt = [0u8; 1500];
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        let mut energy = 0.0;
        for f in 0..50 {
            let pcm = sine(160, 440.0, 8000.0, f * 160);
            let n = enc.encode(&pcm, &mut pkt).unwrap();
            assert_eq!(OpusDecoder::packet_samples(&pkt[..n]).unwrap(), 160);
            let m = dec.decode(&pkt[..n], &mut out).unwrap();
            assert_eq!(m, 160);
            if f > 10 {
                energy += out[..m].iter().map(|&s| (s as f64).powi(2)).sum::<f64>();
            }
        }
        let rms = (energy / (39.0 * 160.0)).sqrt();
        // Input RMS is 8000/sqrt(2) = 5657.
        assert!(rms > 4000.0 && rms < 7500.0, "rms {rms}");
    }

    #[test]
    fn fec_and_plc_fill_the_requested_duration() {
        let params = OpusParams {
            expected_loss_pct: 20,
            ..OpusParams::default()
        };
        let mut enc = OpusEncoder::new(&params).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pkts = Vec::new();
        for f in 0..20 {
            let mut pkt = [0u8; 400];
            let n = enc
                .encode(&sine(160, 300.0, 8000.0, f * 160), &mut pkt)
                .unwrap();
            pkts.push(pkt[..n].to_vec());
        }
        let mut out = [0i16; 320];
        for p in &pkts[..10] {
            dec.decode(p, &mut out).unwrap();
        }
        assert!(OpusDecoder::may_carry_fec(&pkts[11]));
        assert_eq!(dec.decode_fec(&pkts[11], &mut out[..160]).unwrap(), 160);
        let e: f64 = out[..160].iter().map(|&s| (s as f64).powi(2)).sum();
        assert!(e > 0.0, "FEC produced silence");
        assert_eq!(dec.decode(&pkts[11], &mut out).unwrap(), 160);
        assert_eq!(dec.conceal(&mut out[..320]).unwrap(), 320);
    }

    #[test]
    fn combined_code3_packet_decodes_to_30ms() {
        let mut enc = OpusEncoder::new(&OpusParams::default()).unwrap();
        enc.force_silk().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        for k in 0..10 {
            let mut bufs = [[0u8; 400]; 3];
            let mut lens = [0usize; 3];
            for i in 0..3 {
                lens[i] = enc
                    .encode(&sine(80, 440.0, 8000.0, (k * 3 + i) * 80), &mut bufs[i])
                    .unwrap();
            }
            let frames = [
                &bufs[0][..lens[0]],
                &bufs[1][..lens[1]],
                &bufs[2][..lens[2]],
            ];
            let mut pkt = [0u8; 1500];
            let n = combine_frames(&frames, &mut pkt).unwrap();
            assert_eq!(pkt[0] & 3, 3);
            assert_eq!(OpusDecoder::packet_samples(&pkt[..n]).unwrap(), 240);
            assert_eq!(dec.decode(&pkt[..n], &mut out).unwrap(), 240);
        }
    }

    #[test]
    fn combine_rejects_mixed_configurations() {
        let a = [0x08u8, 1, 2];
        let b = [0x80u8, 1, 2];
        assert_eq!(combine_frames(&[&a, &b], &mut [0u8; 64]), None);
        // Long frames use the two-byte length (RFC 6716 3.2.1).
        let long = {
            let mut v = vec![0x08u8];
            v.extend(std::iter::repeat_n(0u8, 300));
            v
        };
        let mut out = [0u8; 700];
        let n = combine_frames(&[&long, &a], &mut out).unwrap();
        assert_eq!(out[1], 0x82);
        assert_eq!(usize::from(out[2]) + 4 * usize::from(out[3]), 300);
        assert_eq!(n, 2 + 2 + 300 + 2);
    }
}
