//! A simulated relay for driving whole calls, in the style of quinn's `Pair` test harness: the
//! sessions run on the recording plane with a manual clock and a seeded random source, and the
//! test plays the daemon (a sweep every 500 ms of simulated time) and the relay thread (packet
//! times and MediaStarted events). Nothing sleeps and nothing reads the system clock, so a
//! five-minute call takes microseconds and runs the same way every time.

use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::sync::atomic::Ordering::Relaxed;

/// How often the daemon sweeps (daemon.rs).
pub(super) const SWEEP: Duration = Duration::from_millis(500);

pub(super) struct Sim {
    pub(super) s: Arc<Sessions>,
    pub(super) plane: FakePlane,
    pub(super) clock: ManualClock,
}

impl Sim {
    /// Ports 25000-25999, a 60 s timeout, seed 1.
    pub(super) fn new() -> Sim {
        Sim::with(test_config(25000, 25999), 1)
    }

    pub(super) fn with(cfg: SessionConfig, seed: u64) -> Sim {
        Sim::wired(cfg, seed, |p, _| Box::new(p), None)
    }

    /// Like [`Sim::with`], with the recording plane wrapped by `plane` (which gets the clock:
    /// `wire.rs` runs real per-stream cores behind it) and an optional kernel path.
    pub(super) fn wired(
        cfg: SessionConfig,
        seed: u64,
        plane: impl FnOnce(FakePlane, ManualClock) -> Box<dyn MediaPlane>,
        kernel: Option<Box<dyn KernelPath>>,
    ) -> Sim {
        let fake = FakePlane::default();
        let clock = ManualClock::default();
        let env = SessionEnv::new(
            Arc::new(clock.clone()),
            Box::new(StdRng::seed_from_u64(seed)),
        );
        let s = Sessions::new(cfg, env, plane(fake.clone(), clock.clone()), kernel).unwrap();
        Sim {
            s,
            plane: fake,
            clock,
        }
    }

    pub(super) fn offer(&self, call: &str, from: &str, sdp: &str) -> String {
        self.s
            .offer(call, from, sdp, LegOptions::default())
            .unwrap_or_else(|e| panic!("offer from {from}: {e}"))
    }

    pub(super) fn answer(&self, call: &str, from: &str, to: &str, sdp: &str) -> String {
        self.s
            .answer(call, from, to, sdp, LegOptions::default())
            .unwrap_or_else(|e| panic!("answer from {to}: {e}"))
    }

    /// Moves the time on by `by`, sweeping at every sweep period as the daemon does; returns
    /// the calls that timed out.
    pub(super) fn advance(&self, by: Duration) -> Vec<String> {
        let mut left = by;
        let mut expired = Vec::new();
        while !left.is_zero() {
            let step = left.min(SWEEP);
            self.clock.advance(step);
            left -= step;
            expired.extend(self.s.sweep());
        }
        expired
    }

    /// What the relay thread does when a packet from `side`'s endpoint of stream `stream` is
    /// accepted now: stamps it, and reports the first one.
    pub(super) fn packet(&self, call: &str, stream: usize, side: usize) {
        let (id, counters) = {
            let st = self.s.lock();
            let sd = &st.calls[call].streams[stream].sides[side];
            (sd.endpoint, sd.counters.clone())
        };
        counters.last_packet_ns.store(self.clock.now_ns(), Relaxed);
        if counters.packets.add(1) == 0 {
            self.s.on_engine_event(EngineEvent::MediaStarted { id });
        }
    }

    /// The relay endpoint of `side` of stream `stream`.
    pub(super) fn endpoint(&self, call: &str, stream: usize, side: usize) -> EndpointId {
        self.s.lock().calls[call].streams[stream].sides[side].endpoint
    }

    /// Every Configure the relay was sent for `id`, in order.
    pub(super) fn configures(&self, id: EndpointId) -> Vec<(EndpointConfig, Option<Signalling>)> {
        let st = self.plane.0.lock().unwrap();
        st.configure_log
            .iter()
            .filter(|(e, ..)| *e == id)
            .map(|&(_, c, s)| (c, s))
            .collect()
    }

    /// Where the relay sends `id`'s media now: the SDP address of its last signalling, until
    /// latching finds another.
    pub(super) fn destination(&self, id: EndpointId) -> Option<SocketAddr> {
        self.configures(id)
            .iter()
            .rev()
            .find_map(|(_, s)| s.as_ref())
            .and_then(|s| s.sdp_rtp)
    }

    /// (sends, receives) of `id` as last configured.
    pub(super) fn flags(&self, id: EndpointId) -> (bool, bool) {
        let (c, _) = *self.configures(id).last().unwrap();
        (c.sends, c.receives)
    }

    /// The endpoints the relay holds.
    pub(super) fn live(&self) -> HashSet<EndpointId> {
        self.plane.0.lock().unwrap().live.clone()
    }

    pub(super) fn ports_in_use(&self) -> u64 {
        self.s.statistics().ports_in_use
    }
}

/// An audio SDP from `ip:port` with o= version `version`, PCMU and telephone-event.
pub(super) fn sdp_at(user: &str, version: u64, ip: &str, port: u16, extra: &str) -> String {
    format!(
        "v=0\r\no={user} 100 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n{extra}"
    )
}

pub(super) fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn drain(ev: &mut EventSubscriber) -> Vec<CallEvent> {
    std::iter::from_fn(|| ev.try_recv()).collect()
}

const T0_UNIX_MS: u64 = 1_700_000_000_000;

#[test]
fn a_whole_call_runs_in_simulated_time() {
    let sim = Sim::new();
    let mut ev = sim.s.subscribe();
    assert_eq!(sim.clock.unix_ms(), T0_UNIX_MS);
    sim.offer("call", "a", &sdp_at("alice", 1, "192.0.2.10", 4000, ""));
    // Ringing for 2 s, then the callee answers and both sides talk for five minutes: far
    // longer than the timeout, which media keeps from firing.
    assert!(sim.advance(Duration::from_secs(2)).is_empty());
    sim.answer("call", "a", "b", &sdp_at("bob", 1, "192.0.2.20", 5000, ""));
    for _ in 0..300 {
        sim.packet("call", 0, 0);
        sim.packet("call", 0, 1);
        assert!(sim.advance(Duration::from_secs(1)).is_empty());
    }
    let r = sim.s.query("call").unwrap();
    assert_eq!(r.created_unix_ms, T0_UNIX_MS);
    assert_eq!(r.last_signal_unix_ms, T0_UNIX_MS + 2_000);
    assert_eq!(
        r.legs[1].streams[0].last_packet_unix_ms,
        Some(T0_UNIX_MS + 301_000),
        "the last packet, 1 s before now"
    );
    // Media stops: the call ends at the first sweep 60 s after the last packet, not before.
    assert!(sim.advance(Duration::from_millis(58_500)).is_empty());
    assert_eq!(sim.advance(SWEEP), ["call"]);
    assert_eq!(sim.clock.unix_ms(), T0_UNIX_MS + 361_000);

    let got: Vec<_> = drain(&mut ev)
        .into_iter()
        .map(|e| (e.kind, e.tag, e.unix_ms))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::CallCreated, "a".into(), T0_UNIX_MS),
            (EventKind::MediaStarted, "a".into(), T0_UNIX_MS + 2_000),
            (EventKind::MediaStarted, "b".into(), T0_UNIX_MS + 2_000),
            (EventKind::TimedOut, "".into(), T0_UNIX_MS + 361_000),
        ]
    );
    let st = sim.s.statistics();
    assert_eq!(st.uptime, Duration::from_secs(361));
    assert_eq!((st.calls_timed_out, st.ports_in_use), (1, 0));
    assert!(sim.plane.0.lock().unwrap().live.is_empty());
}

/// What a call draws: relay ports, SDES keys offered and answered, transcoding SSRCs.
fn drawn(seed: u64) -> (String, String, [u32; 2]) {
    let sim = Sim::with(test_config(25000, 25999), seed);
    let o = sim
        .s
        .offer(
            "c",
            "a",
            &savp("alice", 4000, ALICE_KEY),
            opts(SrtpMode::Strip),
        )
        .unwrap();
    let a = sim
        .s
        .answer(
            "c",
            "a",
            "b",
            &opus_sdp("bob", 5000, ""),
            LegOptions::default(),
        )
        .unwrap();
    let ssrcs = sim.s.lock().calls["c"].streams[0].ssrcs;
    (o, a, ssrcs)
}

#[test]
fn a_seed_fixes_everything_the_session_layer_draws() {
    let first = drawn(7);
    assert_eq!(first, drawn(7), "same seed, same ports, keys and SSRCs");
    let other = drawn(8);
    assert_ne!(first.2, other.2);
    assert_ne!(port_of(&first.0), port_of(&other.0));
    let key = |sdp: &str| {
        Sdp::parse(sdp).unwrap().media[0]
            .crypto()
            .first()
            .map(|c| c.key_params.clone())
    };
    assert!(key(&first.1).is_some(), "the answer carries sluice's key");
    assert_ne!(key(&first.1), key(&other.1));
}

pub(super) fn port_of(sdp: &str) -> u16 {
    Sdp::parse(sdp).unwrap().media[0].port
}
