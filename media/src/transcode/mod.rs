//! G.711 <-> Opus transcoding, sans-IO: a [`plan::DirectionPlan`] per direction, carried out
//! by a [`Transcoder`].

pub mod plan;
mod transcoder;

pub use plan::*;
pub use transcoder::{
    MAX_CONCEAL_SAMPLES, MAX_IN_PACKET, MAX_OUT_PACKET, REORDER_MAX_NS, REORDER_MAX_PACKETS,
    TranscodeError, TranscodeStats, Transcoder,
};

#[cfg(test)]
mod tests;
