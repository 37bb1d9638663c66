//! What the control plane decides for one transcoded direction of a stream, and hands to the
//! data plane (the userspace engine or a worker). Plain data: no codec state lives here.
//!
//! One [`DirectionPlan`] describes the packets arriving from one leg (its codec, payload types)
//! and what must leave towards the other leg (codec, payload type, ptime, own SSRC). A
//! transcoded stream has two plans, one per direction.

/// A codec sluice can transcode between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 u-law, `PCMU/8000`, static payload type 0.
    Pcmu,
    /// G.711 A-law, `PCMA/8000`, static payload type 8.
    Pcma,
    /// Opus, `opus/48000/2` (RFC 7587): the RTP clock is always 48 kHz.
    Opus,
}

impl Codec {
    /// RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::Opus => 48000,
        }
    }

    /// The SDP encoding name (`a=rtpmap`).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::Opus => "opus",
        }
    }

    /// The static payload type, if the codec has one.
    pub fn static_pt(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::Opus => None,
        }
    }
}

/// Opus encoder settings for the leg that receives Opus (from its SDP `a=fmtp` and sluice's
/// configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusParams {
    /// Target bitrate in bit/s.
    pub bitrate: u32,
    /// libopus complexity 0-10.
    pub complexity: u8,
    /// Add in-band FEC (the receiver said `useinbandfec=1`).
    pub inband_fec: bool,
    /// Expected loss in percent at the start, which tells libopus how much FEC to spend (none
    /// at 0); the receiver's RTCP reports adjust it during the call.
    pub expected_loss_pct: u8,
    /// The receiver's `maxplaybackrate` (Hz), if it gave one; caps the encoded bandwidth.
    pub max_playback_rate: Option<u32>,
    /// The receiver's `maxaveragebitrate` (bit/s), if it gave one; caps `bitrate`.
    pub max_average_bitrate: Option<u32>,
}

impl Default for OpusParams {
    fn default() -> Self {
        Self {
            bitrate: 24_000,
            complexity: DEFAULT_OPUS_COMPLEXITY,
            inband_fec: true,
            // Raised from the receiver's RTCP reports (Transcoder::set_expected_loss): in-band
            // FEC costs quality on a clean path (see README, "Transcoding").
            expected_loss_pct: 0,
            max_playback_rate: None,
            max_average_bitrate: None,
        }
    }
}

/// The complexity used unless configured otherwise; chosen by the quality test and
/// `cargo xtask bench transcode` together (see README, "Transcoding").
pub const DEFAULT_OPUS_COMPLEXITY: u8 = 5;

/// An RFC 4733 telephone-event mapping between the two legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfMap {
    /// Payload type of telephone-event on the incoming leg, and its clock rate.
    pub in_pt: u8,
    pub in_clock: u32,
    /// Payload type of telephone-event towards the outgoing leg, and its clock rate.
    pub out_pt: u8,
    pub out_clock: u32,
}

/// One transcoded direction: packets from the incoming leg in `input`, sent on in `output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionPlan {
    /// Codec and payload type the incoming leg sends.
    pub input: Codec,
    pub input_pt: u8,
    /// Codec and payload type the outgoing leg receives.
    pub output: Codec,
    pub output_pt: u8,
    /// Packetization of what is sent, in ms: 10, 20, 30, 40 or 60.
    pub output_ptime_ms: u16,
    /// Encoder settings when `output` is Opus.
    pub opus: OpusParams,
    /// telephone-event, when both legs negotiated it; without a mapping, events are dropped
    /// and counted.
    pub dtmf: Option<DtmfMap>,
    /// Comfort-noise payload types (RFC 3389, e.g. 13) of the incoming leg: dropped on
    /// purpose and counted (the outgoing leg may not support CN).
    pub cn_pts: Vec<u8>,
    /// SSRC of the stream sluice sends (its own: the transcoded stream is a new source).
    pub ssrc: u32,
}
