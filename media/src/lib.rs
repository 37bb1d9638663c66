//! sluice's per-packet media work, with no sockets and no clock: RTP/RTCP wire views
//! ([`rtp`], [`rtcp_report`]), SRTP/SRTCP ([`srtp`]), latching ([`latch`]), receive statistics
//! ([`rtp_stats`]), G.711 and Opus ([`codec`]) and the transcoder ([`transcode`]), and the
//! per-stream core that puts them together ([`stream_core`]): given a datagram, its source and
//! its arrival time, a stream's state returns a verdict and updates its counters ([`stats`]).
//!
//! The userspace engine and the AF_XDP workers (sluice-relay) are drivers around the core: they
//! differ only in how bytes arrive and leave. This crate depends on neither `libc`, `mio` nor
//! `socket2`, so the compiler keeps I/O out of the core. What a stream carries when it moves
//! from one driver to the other is [`handover::StreamHandover`].
//!
//! A new per-packet feature (recording, forking media, RTCP generation) goes into the core once
//! and both drivers get it.

pub mod codec;
pub mod handover;
pub mod latch;
pub mod rtcp_report;
pub mod rtp;
pub mod rtp_stats;
pub mod srtp;
pub mod stats;
pub mod stream_core;
pub mod transcode;

/// Counts allocations, for the "no allocation per packet" tests: this crate's unit tests and,
/// through the `test-alloc` feature, sluice-relay's (a test binary installs [`Counting`] as its
/// global allocator).
#[cfg(any(test, feature = "test-alloc"))]
#[doc(hidden)]
pub mod test_alloc {
    /// The counting allocator: the system allocator plus a thread-local count.
    pub struct Counting;

    thread_local! {
        static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        static TRACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Allocations of every thread that called [`track_this_thread`] (the engine thread does
    /// in sluice-relay's tests), for tests that watch a thread other than their own.
    static TRACKED_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn count() {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        if TRACKED.with(|t| t.get()) {
            TRACKED_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn track_this_thread() {
        TRACKED.with(|t| t.set(true));
    }

    pub fn tracked_allocations() -> u64 {
        TRACKED_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
    }

    // SAFETY: forwards to the system allocator; the counter is a const-initialised thread local
    // that never allocates.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            count();
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            count();
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    /// Allocations (and reallocations) made by this thread so far.
    pub fn allocations() -> u64 {
        ALLOCATIONS.with(|a| a.get())
    }
}

#[cfg(test)]
#[global_allocator]
static GLOBAL: test_alloc::Counting = test_alloc::Counting;
