//! sluice data plane: RTP/RTCP wire views, latching, receive statistics and the userspace
//! forwarding engine (the embedded default path), the XDP fast path loader, and the AF_XDP
//! worker pool (`afxdp` sockets, `worker` threads) for flows that need userspace work.

pub mod afxdp;
pub mod clock;
pub mod engine;
pub mod mmsg;
pub mod worker;
pub mod xdp;

// The per-packet work itself lives in sluice-media, which has no sockets and no clock; its
// modules keep their old paths here so that callers need not know where the line runs.
pub use sluice_media::{
    codec, handover, latch, rtcp_report, rtp, rtp_stats, srtp, stats, stream_core, transcode,
};

#[cfg(test)]
pub(crate) use sluice_media::test_alloc;

#[cfg(test)]
#[global_allocator]
static GLOBAL: sluice_media::test_alloc::Counting = sluice_media::test_alloc::Counting;
