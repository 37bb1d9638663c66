//! What the relay thread is told about one side of a stream after a signalling event: its
//! forwarding configuration (partner, directions, latching, rtcp-mux, clock rate) and its SRTP
//! keys. Built from the model in one place so that offer and answer cannot disagree on it.

use sluice_relay::engine::{Command, EndpointConfig, Signalling};

use crate::sdp::Sdp;

use super::model::Stream;
use super::srtp::SideCrypto;

/// RTP clock rate of a media section's first (preferred) payload type: RFC 3551 table 4 for
/// static types, a=rtpmap for dynamic ones.
pub(super) fn clock_rate(sdp: &Sdp, i: usize) -> u32 {
    let m = &sdp.media[i];
    let Some(pt) = m.fmts.first().and_then(|f| f.parse::<u8>().ok()) else {
        return 8000;
    };
    if let Some(map) = m.rtpmap(pt) {
        return map.clock_rate;
    }
    match pt {
        0..=9 | 12 | 13 | 15 | 18 => 8000,
        10 | 11 => 44100,
        14 | 25 | 26 | 28 | 31..=34 => 90000,
        16 => 11025,
        17 => 22050,
        _ => 8000,
    }
}

/// The SRTP keys of side `k` for the engine.
pub(super) fn srtp_command(s: &Stream, k: usize) -> Command {
    let side = &s.sides[k];
    let (rx, tx) = match &side.crypto {
        SideCrypto::Terminated { rx, tx } => (Some(rx.to_engine()), Some(tx.to_engine())),
        SideCrypto::Plain | SideCrypto::Passthrough => (None, None),
    };
    Command::SetSrtp {
        id: side.endpoint,
        rx,
        tx,
    }
}

/// The engine configuration of side `k` of a stream after a signalling event: it also opens a
/// new latching window for that side.
pub(super) fn configure(s: &Stream, k: usize) -> Command {
    let me = &s.sides[k];
    let other = &s.sides[1 - k];
    let (sends, receives) = if s.disabled {
        (false, false)
    } else {
        (me.direction.sends(), me.direction.receives())
    };
    Command::Configure {
        id: me.endpoint,
        config: EndpointConfig {
            partner: Some(other.endpoint),
            latch: me.latch,
            sends,
            receives,
            rtcp_mux: me.rtcp_mux,
            clock_rate: me.clock_rate,
        },
        signalling: Some(Signalling {
            sdp_rtp: me.sdp_rtp,
            sdp_rtcp: me.sdp_rtcp,
            source_ip: me.signalling_source,
        }),
    }
}
