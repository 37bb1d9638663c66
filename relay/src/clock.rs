//! One monotonic clock for the data plane and the control plane, so that a `last packet` time
//! written by the engine can be compared with `now` in the control plane's timeout sweep.

/// Nanoseconds on CLOCK_MONOTONIC. Read once per event-loop wake-up, not per packet.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
