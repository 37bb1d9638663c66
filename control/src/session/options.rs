//! What a request may ask of the side whose SDP it carries, and the relay-wide configuration the
//! session layer runs with. Front ends map their own option syntax onto these types, so the
//! types name what sluice does, not how one protocol spells it; the checks every front end would
//! otherwise repeat (codec names) are made here, so each refuses the same request with the same
//! words.

use std::net::IpAddr;
use std::time::Duration;

use sluice_relay::latch::{LatchConfig, LatchMode};

use crate::codecs::{CodecList, CodecOptions, TranscodeMode};
use crate::sdp::Direction;

use super::error::{SessionError, bad};

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

/// What the SDP returned by a request does about SRTP (SDES, RFC 4568).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpMode {
    /// Mirror the incoming SDP: plain RTP stays plain, SDES-SRTP passes through untouched
    /// (encrypted end to end; sluice does not decrypt it).
    #[default]
    Default,
    /// Offer SRTP with sluice's own keys, one per supported suite; incoming SRTP is terminated.
    Offer,
    /// Return plain RTP; incoming SRTP is terminated.
    Strip,
    /// Refuse an incoming SDP that is not SDES-SRTP with a supported suite; it is terminated,
    /// and the returned SDP uses SRTP with sluice's keys.
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
    /// Where this side's signalling came from, when the front end knows it (the B2BUA's peer,
    /// ng `received-from`, gRPC `signalling_source`): media from any other IP than this or the
    /// SDP's is dropped and never latched (latch rule 5). Kept from earlier requests when absent.
    pub signalling_source: Option<IpAddr>,
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
            signalling_source: None,
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
    /// Sides whose sockets stay open after their call for new calls to reuse (0: every side
    /// closes its sockets at once); see `socket_pool`.
    pub socket_pool: usize,
}

/// An offer's codec options as a request names them. Named fields rather than three slices in a
/// row, so that a front end cannot swap two lists unnoticed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodecRequest<'a> {
    /// `None`: the server's configured default.
    pub mode: Option<TranscodeMode>,
    /// Codec names; an element may hold several, comma-separated, as command lines give them.
    pub transcode: &'a [String],
    pub strip: &'a [String],
    pub mask: &'a [String],
    /// See [`CodecOptions::append_only_listed`].
    pub append_only_listed: bool,
}

impl CodecRequest<'_> {
    /// Checks the names (sluice knows PCMU, PCMA and opus, case-insensitively). An error names
    /// the list as `codec_transcode`, `codec_strip` or `codec_mask`. Whether the lists fit the
    /// offer (transcoding on, something left to offer) is decided with the offer's SDP.
    pub fn parse(self) -> Result<CodecOptions, SessionError> {
        let list = |option, names| CodecList::parse(option, names).map_err(bad);
        Ok(CodecOptions {
            mode: self.mode,
            transcode: list("codec_transcode", self.transcode)?,
            strip: list("codec_strip", self.strip)?,
            mask: list("codec_mask", self.mask)?,
            append_only_listed: self.append_only_listed,
        })
    }
}

pub(super) fn latch_config(opts: &LegOptions) -> LatchConfig {
    LatchConfig {
        mode: opts.latching,
        strict_source: opts.strict_source,
        ..LatchConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::Codec;

    #[test]
    fn codec_names_are_checked_once_for_every_front_end() {
        let names = |s: &[&str]| s.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let (transcode, mask) = (names(&["opus, PCMA", "pcma"]), names(&["PCMU"]));
        let o = CodecRequest {
            mode: Some(TranscodeMode::Auto),
            transcode: &transcode,
            mask: &mask,
            ..Default::default()
        }
        .parse()
        .unwrap();
        assert_eq!(o.mode, Some(TranscodeMode::Auto));
        assert_eq!(
            o.transcode.iter().collect::<Vec<_>>(),
            [Codec::Opus, Codec::Pcma]
        );
        assert!(o.mask.contains(Codec::Pcmu) && o.strip.is_empty());

        let strip = names(&["PCMU", "G729"]);
        let err = CodecRequest {
            strip: &strip,
            ..Default::default()
        }
        .parse()
        .unwrap_err();
        assert!(
            matches!(&err, SessionError::BadRequest(m) if m.starts_with("codec_strip: ") && m.contains("'G729'")),
            "{err}"
        );
    }
}
