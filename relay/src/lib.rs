//! sluice data plane: RTP/RTCP wire views, latching, receive statistics and the userspace
//! forwarding engine (the embedded default path), the XDP fast path loader, and the AF_XDP
//! worker pool (`afxdp` sockets, `worker` threads) for flows that need userspace work.

pub mod afxdp;
pub mod clock;
pub mod codec;
pub mod engine;
pub mod handover;
pub mod latch;
pub mod mmsg;
pub mod rtcp_report;
pub mod rtp;
pub mod rtp_stats;
pub mod srtp;
pub mod stats;
pub mod stream_core;
pub mod transcode;
pub mod worker;
pub mod xdp;

/// Counts the allocations of the calling thread, for the "no allocation per packet" tests of
/// the unit-test binary.
#[cfg(test)]
pub(crate) mod test_alloc {
    struct Counting;

    thread_local! {
        static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        static TRACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Allocations of every thread that called [`track_this_thread`] (the engine thread does
    /// in this binary), for tests that watch a thread other than their own.
    static TRACKED_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn count() {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        if TRACKED.with(|t| t.get()) {
            TRACKED_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub(crate) fn track_this_thread() {
        TRACKED.with(|t| t.set(true));
    }

    pub(crate) fn tracked_allocations() -> u64 {
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

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations (and reallocations) made by this thread so far.
    pub(crate) fn allocations() -> u64 {
        ALLOCATIONS.with(|a| a.get())
    }
}
