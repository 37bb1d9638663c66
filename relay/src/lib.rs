//! sluice data plane: RTP/RTCP wire views, latching, receive statistics and the userspace
//! forwarding engine (the embedded default path), the XDP fast path loader, and the AF_XDP
//! worker pool (`afxdp` sockets, `worker` threads) for flows that need userspace work.

pub mod afxdp;
pub mod clock;
pub mod codec;
pub mod engine;
pub mod latch;
pub mod rtp;
pub mod rtp_stats;
pub mod srtp;
pub mod stats;
pub mod transcode;
pub mod worker;
pub mod xdp;
