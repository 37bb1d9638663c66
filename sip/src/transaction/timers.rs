//! The transaction timers (RFC 3261 section 17 and table 4 of appendix A; RFC 6026 section
//! 7) and the queue of their deadlines.
//!
//! Every transaction keeps the deadline of each of its armed timers in a [`Slots`]; the
//! layer keeps every deadline it ever armed in a [`TimerQueue`] (a min-heap). Disarming a
//! timer only clears the slot: the heap entry goes stale and is dropped when it reaches the
//! top, so an entry fires only while the slot still holds its instant. Nothing here
//! allocates once the heap has grown to the number of live timers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::{TimerConfig, TxId};

/// The timers by their RFC names, plus the two lifetime guards this layer adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// INVITE client: request retransmission (UDP only).
    A,
    /// INVITE client: transaction timeout in Calling.
    B,
    /// INVITE client: wait time for response retransmissions in Completed.
    D,
    /// Non-INVITE client: request retransmission (UDP only).
    E,
    /// Non-INVITE client: transaction timeout.
    F,
    /// Non-INVITE client: wait time for response retransmissions in Completed.
    K,
    /// INVITE server: final response retransmission (UDP only).
    G,
    /// INVITE server: wait time for the ACK.
    H,
    /// INVITE server: wait time for ACK retransmissions in Confirmed.
    I,
    /// Non-INVITE server: wait time for request retransmissions in Completed.
    J,
    /// INVITE server (RFC 6026): wait time in Accepted.
    L,
    /// INVITE client (RFC 6026): wait time for 2xx retransmissions and forks in Accepted.
    M,
    /// INVITE client: 64*T1 after the TU sent a CANCEL for it with no final response yet
    /// (RFC 3261 section 9.1).
    Cancelled,
    /// Non-INVITE server: 64*T1 after creation with no final response from the TU.
    Unanswered,
}

impl Timer {
    const COUNT: usize = Timer::Unanswered as usize + 1;
}

/// The deadline of each timer a transaction has armed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slots([Option<Instant>; Timer::COUNT]);

impl Slots {
    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }

    pub(crate) fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.0[t as usize] = at;
    }

    pub(crate) fn clear(&mut self, t: Timer) {
        self.set(t, None);
    }
}

/// Every armed deadline, earliest first; ties by transaction then timer, so the order in
/// which simultaneous timers fire is deterministic.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, TxId, Timer)>>,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, at: Instant, tx: TxId, t: Timer) {
        self.heap.push(Reverse((at, tx, t)));
    }

    pub(crate) fn peek(&self) -> Option<(Instant, TxId, Timer)> {
        self.heap.peek().map(|r| r.0)
    }

    pub(crate) fn pop(&mut self) {
        self.heap.pop();
    }
}

/// Timer D's floor for unreliable transports (RFC 3261 section 17.1.1.2: "at least 32
/// seconds").
const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// The durations of table 4 (RFC 3261 appendix A) for one configuration.
impl TimerConfig {
    /// 64*T1: timers B, F, H, J (unreliable), L, M and the two guards.
    pub(crate) fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D on an unreliable transport: at least 32 s, and never shorter than the
    /// server's timer H (64*T1) so a T1 above 500 ms still covers every retransmitted final.
    pub(crate) fn timer_d(&self) -> Duration {
        self.t1x64().max(TIMER_D_MIN)
    }

    /// The next interval of timers E and G: doubled, capped at T2 (RFC 3261 sections
    /// 17.1.2.2 and 17.2.1).
    pub(crate) fn double_capped(&self, interval: Duration) -> Duration {
        interval.saturating_mul(2).min(self.t2)
    }

    /// The configuration made safe to run: T1 of at least 1 ms (a zero interval would
    /// retransmit forever within one `handle_timeout`), T2 no shorter than T1.
    pub(crate) fn sanitized(self) -> Self {
        let t1 = self.t1.max(Duration::from_millis(1));
        Self {
            t1,
            t2: self.t2.max(t1),
            t4: self.t4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_4_defaults() {
        let c = TimerConfig::default();
        assert_eq!(c.t1x64(), Duration::from_secs(32));
        assert_eq!(c.timer_d(), Duration::from_secs(32));
        assert_eq!(
            c.double_capped(Duration::from_secs(2)),
            Duration::from_secs(4)
        );
        assert_eq!(
            c.double_capped(Duration::from_secs(4)),
            Duration::from_secs(4)
        );
        let slow = TimerConfig {
            t1: Duration::from_secs(1),
            ..c
        };
        assert_eq!(slow.timer_d(), Duration::from_secs(64));
    }

    #[test]
    fn zero_and_huge_configurations_are_made_safe() {
        let c = TimerConfig {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            t4: Duration::ZERO,
        }
        .sanitized();
        assert_eq!(c.t1, Duration::from_millis(1));
        assert_eq!(c.t2, c.t1);
        let huge = TimerConfig {
            t1: Duration::MAX,
            t2: Duration::MAX,
            t4: Duration::MAX,
        };
        assert_eq!(huge.t1x64(), Duration::MAX);
        assert_eq!(huge.double_capped(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn the_queue_pops_earliest_first() {
        let base = Instant::now();
        let mut q = TimerQueue::default();
        q.push(base + Duration::from_secs(2), TxId(1), Timer::B);
        q.push(base + Duration::from_secs(1), TxId(2), Timer::A);
        q.push(base + Duration::from_secs(1), TxId(1), Timer::A);
        assert_eq!(
            q.peek(),
            Some((base + Duration::from_secs(1), TxId(1), Timer::A))
        );
        q.pop();
        assert_eq!(q.peek().map(|e| e.1), Some(TxId(2)));
        q.pop();
        q.pop();
        assert_eq!(q.peek(), None);
    }
}
