//! sluice data plane: RTP/RTCP wire views, latching, receive statistics and the userspace
//! forwarding engine (the embedded default path; XDP and AF_XDP workers come later).

pub mod clock;
pub mod engine;
pub mod latch;
pub mod rtp;
pub mod rtp_stats;
pub mod stats;
pub mod xdp;
