//! Audio codecs for the transcoder: G.711 (u-law, A-law) with its packet loss concealment, and
//! narrowband Opus over libopus. Sample-level and sans-IO; RTP lives in `transcode`.

pub mod g711;
pub mod opus;
pub mod plc;

pub use g711::Law;
pub use opus::{OpusDecoder, OpusEncoder, OpusError, library as opus_library};
pub use plc::G711Plc;
