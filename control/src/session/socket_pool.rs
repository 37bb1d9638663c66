//! Relay sockets kept bound after their call ended, for the next calls to reuse.
//!
//! Opening a side costs a socket, a bind, a buffer size, an epoll registration and, at the end,
//! a deregistration and a close per port: `cargo xtask bench ng` measured them at ~28% of the
//! CPU of an offer/answer/delete (perf, 4 ports per call). A retired side's sockets therefore stay
//! open, still registered with the relay thread (which reads and drops whatever reaches them,
//! counted as strays), and a later side on the same address takes them over with no system call
//! at all.
//!
//! What it must not weaken:
//! - **Port unpredictability.** A side is given a random one of the eligible pooled sockets, not
//!   the oldest, so knowing when a call ended does not tell which call gets its port.
//! - **A new call's latching.** The previous call's endpoints may go on sending for a round trip
//!   after the delete, or for as long as their BYE is lost; a port that got that media after its
//!   new SDP went out could latch the old endpoint. A socket is only handed out once it has been
//!   in the pool and quiet (no packet at all) for [`QUARANTINE`]: RTP comes every 20-60 ms, so
//!   a stream still flowing never looks quiet that long, and whatever reached the socket
//!   meanwhile was read and dropped. A late straggler or two after that cannot latch: a new
//!   source needs consecutive packets (latch rule 3).
//! - **Ports going back to the system.** A pooled socket is closed after [`IDLE`] unused, and the
//!   pool holds at most its capacity (`--socket-pool`, at most half the range's ports); with
//!   capacity 0 every side closes at once, as before. When the range runs out, a new side takes
//!   the longest-held pooled sockets of its shape, quarantine or not (or, if there are none, one
//!   is closed for the next request to find its port).
//!
//! Pooled ports stay reserved in the [`crate::port_alloc::PortAllocator`] (they are bound), but
//! the statistics count them as free: any new call may be given them.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use rand::RngCore;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use sluice_relay::engine::EndpointId;
use sluice_relay::stats::EndpointCounters;

use super::model::SideSockets;

/// How long a retired side's sockets must have been pooled, and quiet, before another call may
/// have them: five packet times of 20 ms media.
pub const QUARANTINE: Duration = Duration::from_millis(100);
/// Pooled sockets unused this long are closed, so that an idle relay gives its ports back.
pub const IDLE: Duration = Duration::from_secs(2);

/// A retired side whose sockets the relay thread keeps open under `endpoint`.
pub(super) struct Pooled {
    pub(super) endpoint: EndpointId,
    pub(super) ip: IpAddr,
    pub(super) rtp_port: u16,
    /// An RTP/RTCP pair (else a single rtcp-mux port).
    pub(super) pair: bool,
    /// When it was retired (the session clock).
    pub(super) since_ns: u64,
    /// The worker path's duplicates, when workers run.
    pub(super) sockets: Option<SideSockets>,
    /// The retired side's counters, which the relay thread goes on counting strays in (and
    /// stamping the last one's time in `last_packet_ns`), and their `dropped_no_peer` at
    /// retirement.
    pub(super) counters: Arc<EndpointCounters>,
    pub(super) strays_before: u64,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pooled {} at {}:{}",
            self.endpoint, self.ip, self.rtp_port
        )
    }
}

pub(super) struct SocketPool {
    /// In the order they were retired, except that taking one moves the oldest into its place:
    /// so every entry before the first still in quarantine is out of it.
    entries: VecDeque<Pooled>,
    capacity: usize,
}

impl SocketPool {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity,
        }
    }

    /// Takes `p` in, or gives it back when the pool is full (the caller then closes it).
    pub(super) fn put(&mut self, p: Pooled) -> Result<(), Pooled> {
        if self.entries.len() >= self.capacity {
            return Err(p);
        }
        debug_assert!(self.entries.back().is_none_or(|b| b.since_ns <= p.since_ns));
        self.entries.push_back(p);
        Ok(())
    }

    /// Returns a side [`SocketPool::take`] gave out, whose new use was abandoned before the
    /// relay heard of it: it keeps its place among those out of quarantine.
    pub(super) fn put_back(&mut self, p: Pooled) -> Result<(), Pooled> {
        if self.entries.len() >= self.capacity {
            return Err(p);
        }
        self.entries.push_front(p);
        Ok(())
    }

    /// A random pooled side on `ip` with the same port shape, out of quarantine and quiet at
    /// `now_ns`.
    pub(super) fn take(
        &mut self,
        ip: IpAddr,
        pair: bool,
        now_ns: u64,
        rng: &mut dyn RngCore,
    ) -> Option<Pooled> {
        let q = QUARANTINE.as_nanos() as u64;
        let eligible = self
            .entries
            .partition_point(|p| p.since_ns.saturating_add(q) <= now_ns);
        if eligible == 0 {
            return None;
        }
        let start = (rng.next_u64() % eligible as u64) as usize;
        let i = (0..eligible).map(|k| (start + k) % eligible).find(|&i| {
            let p = &self.entries[i];
            p.ip == ip
                && p.pair == pair
                && p.counters.last_packet_ns.load(Relaxed).saturating_add(q) <= now_ns
        })?;
        // The front entry (out of quarantine) moves into the hole, so the entries still in
        // quarantine stay a sorted tail.
        self.entries.swap_remove_front(i)
    }

    /// The side pooled longest (the front, out of quarantine if any is), for the caller to
    /// close when the port range runs out.
    pub(super) fn pop_oldest(&mut self) -> Option<Pooled> {
        self.entries.pop_front()
    }

    /// The side on `ip` with this port shape pooled longest, in quarantine or not: for when the
    /// port range runs out. Keeps the order of the rest (a rare path: the O(n) shift is fine).
    pub(super) fn take_oldest(&mut self, ip: IpAddr, pair: bool) -> Option<Pooled> {
        let i = self
            .entries
            .iter()
            .position(|p| p.ip == ip && p.pair == pair)?;
        self.entries.remove(i)
    }

    /// Removes the sides unused for [`IDLE`] at `now_ns`, for the caller to close.
    pub(super) fn expire(&mut self, now_ns: u64) -> Vec<Pooled> {
        let idle = IDLE.as_nanos() as u64;
        let stale = |p: &Pooled| p.since_ns.saturating_add(idle) <= now_ns;
        if !self.entries.iter().any(stale) {
            return Vec::new();
        }
        let (gone, kept): (Vec<_>, Vec<_>) = self.entries.drain(..).partition(stale);
        self.entries = kept.into();
        gone
    }

    /// Ports held by pooled sides.
    pub(super) fn ports(&self) -> usize {
        self.entries.iter().map(|p| 1 + usize::from(p.pair)).sum()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: u64 = 1_000_000;

    fn pooled(id: u64, ip: [u8; 4], pair: bool, since_ns: u64) -> Pooled {
        Pooled {
            endpoint: EndpointId(id),
            ip: IpAddr::from(ip),
            rtp_port: 30_000 + 2 * id as u16,
            pair,
            since_ns,
            sockets: None,
            counters: Arc::default(),
            strays_before: 0,
        }
    }

    #[test]
    fn nothing_leaves_quarantine_early() {
        let mut pool = SocketPool::new(8);
        let mut rng = StdRng::seed_from_u64(1);
        pool.put(pooled(1, [10, 0, 0, 1], true, 1000 * MS)).unwrap();
        assert!(
            pool.take([10, 0, 0, 1].into(), true, 1099 * MS, &mut rng)
                .is_none()
        );
        let p = pool.take([10, 0, 0, 1].into(), true, 1100 * MS, &mut rng);
        assert_eq!(p.map(|p| p.endpoint), Some(EndpointId(1)));
        assert_eq!(pool.len(), 0);
    }

    /// The old call's media still arriving (a lost BYE) keeps the socket out of use for as
    /// long as it lasts.
    #[test]
    fn a_socket_still_receiving_is_not_handed_out() {
        let mut pool = SocketPool::new(8);
        let mut rng = StdRng::seed_from_u64(5);
        let p = pooled(1, [10, 0, 0, 1], true, 1000 * MS);
        let counters = p.counters.clone();
        pool.put(p).unwrap();
        let ip = IpAddr::from([10, 0, 0, 1]);
        for t in (1000..3000).step_by(20) {
            counters.last_packet_ns.store(t * MS, Relaxed);
            assert!(
                pool.take(ip, true, t * MS + 19 * MS, &mut rng).is_none(),
                "{t}"
            );
        }
        assert!(pool.take(ip, true, 3079 * MS, &mut rng).is_none());
        assert!(pool.take(ip, true, 3080 * MS, &mut rng).is_some());
    }

    #[test]
    fn only_the_same_address_and_port_shape_is_reused() {
        let mut pool = SocketPool::new(8);
        let mut rng = StdRng::seed_from_u64(2);
        pool.put(pooled(1, [10, 0, 0, 1], false, 0)).unwrap();
        pool.put(pooled(2, [10, 0, 0, 2], true, 0)).unwrap();
        let now = 1000 * MS;
        assert!(
            pool.take([10, 0, 0, 1].into(), true, now, &mut rng)
                .is_none()
        );
        assert!(
            pool.take([10, 0, 0, 3].into(), true, now, &mut rng)
                .is_none()
        );
        let p = pool
            .take([10, 0, 0, 2].into(), true, now, &mut rng)
            .unwrap();
        assert_eq!(p.endpoint, EndpointId(2));
        let p = pool
            .take([10, 0, 0, 1].into(), false, now, &mut rng)
            .unwrap();
        assert_eq!(p.endpoint, EndpointId(1));
    }

    #[test]
    fn a_full_pool_gives_the_side_back() {
        let mut pool = SocketPool::new(1);
        pool.put(pooled(1, [10, 0, 0, 1], true, 0)).unwrap();
        let back = pool.put(pooled(2, [10, 0, 0, 1], true, 0)).unwrap_err();
        assert_eq!(back.endpoint, EndpointId(2));
        assert_eq!(pool.ports(), 2);
        let mut none = SocketPool::new(0);
        assert!(none.put(pooled(3, [10, 0, 0, 1], true, 0)).is_err());
    }

    /// Taking entries out of the middle keeps the quarantined ones a sorted tail, so that a side
    /// still in quarantine is never handed out, whatever was taken before.
    #[test]
    fn random_takes_never_hand_out_a_quarantined_side() {
        let mut pool = SocketPool::new(1000);
        let mut rng = StdRng::seed_from_u64(3);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let mut now = 0;
        let (mut taken, mut expired) = (0, 0);
        for id in 0..5000u64 {
            now += MS;
            let _ = pool.put(pooled(id, [10, 0, 0, 1], true, now));
            if id % 3 != 0
                && let Some(p) = pool.take(ip, true, now, &mut rng)
            {
                assert!(p.since_ns + QUARANTINE.as_nanos() as u64 <= now, "{id}");
                taken += 1;
            }
            for p in pool.expire(now) {
                assert!(p.since_ns + IDLE.as_nanos() as u64 <= now);
                expired += 1;
            }
        }
        assert!(
            taken > 3000 && expired > 0,
            "{taken} taken, {expired} expired"
        );
    }

    /// Random, not oldest first: knowing when a call ended does not say which call gets its port.
    #[test]
    fn takes_are_in_random_order() {
        let mut pool = SocketPool::new(100);
        let mut rng = StdRng::seed_from_u64(4);
        for id in 0..100 {
            pool.put(pooled(id, [10, 0, 0, 1], true, id * MS)).unwrap();
        }
        let ip = IpAddr::from([10, 0, 0, 1]);
        let order: Vec<u64> = std::iter::from_fn(|| pool.take(ip, true, 1000 * MS, &mut rng))
            .map(|p| p.endpoint.0)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "each exactly once");
        let in_place = order.iter().zip(0..).filter(|(a, b)| **a == *b).count();
        assert!(in_place < 10, "{in_place} of 100 taken in retirement order");
    }

    #[test]
    fn idle_sides_expire() {
        let mut pool = SocketPool::new(8);
        pool.put(pooled(1, [10, 0, 0, 1], true, 0)).unwrap();
        pool.put(pooled(2, [10, 0, 0, 1], false, 1000 * MS))
            .unwrap();
        assert!(pool.expire(1999 * MS).is_empty());
        let gone = pool.expire(2000 * MS);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].endpoint, EndpointId(1));
        assert_eq!(pool.ports(), 1);
        assert_eq!(pool.expire(3000 * MS).len(), 1);
        assert_eq!(pool.len(), 0);
    }
}
