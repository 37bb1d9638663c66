//! G.711 <-> Opus transcoding, sans-IO: a [`plan::DirectionPlan`] per direction.

pub mod plan;

pub use plan::*;
