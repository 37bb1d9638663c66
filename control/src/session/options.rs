//! What a request may ask of the side whose SDP it carries, and the relay-wide configuration the
//! session layer runs with. Front ends map their own option syntax onto these types, so the
//! types name what sluice does, not how one protocol spells it.

use std::net::IpAddr;
use std::time::Duration;

use sluice_relay::latch::{LatchConfig, LatchMode};

use crate::codecs::{CodecOptions, TranscodeMode};
use crate::sdp::Direction;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// The family of the SDP the request carries.
    #[default]
    Auto,
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtcpMuxMode {
    /// Pass through what the endpoint offered.
    #[default]
    Default,
    /// Offer rtcp-mux in the returned SDP even if the incoming one lacks it.
    Offer,
    /// Never use rtcp-mux in the returned SDP.
    Strip,
    /// Reject an incoming SDP whose media lack a=rtcp-mux.
    Require,
}

/// What the SDP returned by a request does about SRTP (see `Srtp` in sluice.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpMode {
    #[default]
    Default,
    Offer,
    Strip,
    Require,
}

/// Per-request options, applying to the side whose SDP the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegOptions {
    /// Offer only: the family of the relay address written into the returned SDP.
    pub family: Family,
    pub strict_source: bool,
    pub latching: LatchMode,
    pub rtcp_mux: RtcpMuxMode,
    /// Overrides the direction of every media section of this side (hold).
    pub direction: Option<Direction>,
    pub srtp: SrtpMode,
    /// Offer only (ignored in answers): transcoding mode and codec lists (see `codecs`).
    pub codecs: CodecOptions,
}

impl Default for LegOptions {
    fn default() -> Self {
        Self {
            family: Family::Auto,
            strict_source: true,
            latching: LatchMode::Heuristic,
            rtcp_mux: RtcpMuxMode::Default,
            direction: None,
            srtp: SrtpMode::Default,
            codecs: CodecOptions::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub media_ips: Vec<IpAddr>,
    pub port_low: u16,
    pub port_high: u16,
    pub timeout: Duration,
    /// The transcoding mode of offers that do not set one.
    pub transcode: TranscodeMode,
    /// sluice's Opus encoder: complexity (0-10) and bitrate (bit/s; a receiver's
    /// `maxaveragebitrate` caps it).
    pub opus_complexity: u8,
    pub opus_bitrate: u32,
}

pub(super) fn latch_config(opts: &LegOptions) -> LatchConfig {
    LatchConfig {
        mode: opts.latching,
        strict_source: opts.strict_source,
        ..LatchConfig::default()
    }
}
