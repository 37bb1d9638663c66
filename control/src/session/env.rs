//! What the session layer takes from the world outside the requests: the time and randomness.
//! Injected rather than read from the system, so that tests (and a front end's own tests)
//! can run a whole call in simulated time with reproducible SSRCs, keys and ports, and so that
//! nothing in offer/answer/sweep depends on when or how fast it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, TryRngCore};

/// The session layer's clock.
pub trait Clock: Send + Sync {
    /// Monotonic nanoseconds. Production must read the relay's clock
    /// (`sluice_relay::clock::now_ns`): the relay thread stamps packets with it, and timeouts
    /// and offload compare those stamps with this.
    fn now_ns(&self) -> u64;
    /// Wall-clock time in milliseconds since the Unix epoch, for what front ends show.
    fn unix_ms(&self) -> u64;
    /// The wall-clock time of a past `now_ns()` reading. Computed from the age of the reading,
    /// because the two clocks have no fixed offset (the wall clock may be stepped).
    fn unix_ms_of(&self, mono_ns: u64) -> u64 {
        let age_ms = self.now_ns().saturating_sub(mono_ns) / 1_000_000;
        self.unix_ms().saturating_sub(age_ms)
    }
}

/// The relay's monotonic clock and the system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        sluice_relay::clock::now_ns()
    }
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
    }
}

/// A clock that moves only when told to. Clones share one time, so a test keeps a clone to
/// advance the clock the sessions read.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<ManualTime>);

#[derive(Debug)]
struct ManualTime {
    mono_ns: AtomicU64,
    /// The wall-clock time at `mono_ns == 0`.
    unix_ms_at_zero: u64,
}

impl ManualClock {
    /// Starts at `mono_ns`, when the wall clock reads `unix_ms`.
    pub fn starting_at(mono_ns: u64, unix_ms: u64) -> ManualClock {
        ManualClock(Arc::new(ManualTime {
            mono_ns: AtomicU64::new(mono_ns),
            unix_ms_at_zero: unix_ms.saturating_sub(mono_ns / 1_000_000),
        }))
    }

    pub fn advance(&self, by: Duration) {
        self.0.mono_ns.fetch_add(by.as_nanos() as u64, Relaxed);
    }
}

impl Default for ManualClock {
    /// 1000 s after an arbitrary boot, on 2023-11-14: not 0, so that nothing mistakes the start
    /// for "never" (a zero packet time means no packet yet).
    fn default() -> Self {
        ManualClock::starting_at(1_000_000_000_000, 1_700_000_000_000)
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.mono_ns.load(Relaxed)
    }
    fn unix_ms(&self) -> u64 {
        self.0.unix_ms_at_zero + self.now_ns() / 1_000_000
    }
}

/// Everything the session layer draws: SSRCs, SDES keys, and the port allocator's seed.
pub type Random = Box<dyn RngCore + Send>;

/// The time and randomness given to [`super::Sessions::new`].
pub struct SessionEnv {
    pub clock: Arc<dyn Clock>,
    pub rng: Random,
}

impl SessionEnv {
    /// The system clock and a CSPRNG seeded from the OS random source: what the daemon runs
    /// with. Keys and ports must be unpredictable, so nothing weaker than a cryptographic
    /// generator with an OS seed will do here: `StdRng` is ChaCha12 (as the kernel's own
    /// generator is ChaCha20 over its entropy), and, unlike reading the OS source directly, costs
    /// no system call per draw (a `getrandom` per SSRC and port was 3% of an ng call's CPU).
    pub fn system() -> SessionEnv {
        SessionEnv {
            clock: Arc::new(SystemClock),
            rng: Box::new(StdRng::from_rng(&mut OsRng.unwrap_err())),
        }
    }

    pub fn new(clock: Arc<dyn Clock>, rng: Random) -> SessionEnv {
        SessionEnv { clock, rng }
    }
}
