//! The load generator, run as its own process (`xtask loadgen`) so that its CPU time never lands
//! in the relay's account. It speaks JSON lines: one command per line on stdin, one reply per
//! command on stdout; end of stdin ends it.
//!
//! Sockets: one caller socket sends every call's media, each message addressed to that call's
//! relay port, so one sendmmsg carries a batch of 32 across calls; every call has its own callee
//! socket, so a relay that delivers to the wrong call is caught. The callers' SDPs all name the
//! shared caller socket; a relay keys its state on its own ports, so this costs it nothing extra.

use std::io::{self, BufRead, Write};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::packet::{self, PACKET_LEN, Stamp, Verdict};
use crate::sys::{self, Epoll, RecvBatch, SendBatch, TimerFd};

/// Packets per sendmmsg: one timer tick sends one batch.
pub const BATCH: usize = 32;
/// After the generator falls behind (descheduled on a busy machine), it catches up at most this
/// many packets at once and reports the rest as skipped: a larger burst is traffic no real
/// endpoint sends, and a relay that reads a bounded number per wakeup (rtpengine: 50) would
/// lose it for the generator's fault.
const MAX_CATCH_UP: u64 = 8 * BATCH as u64;
/// How long after the last send the receiver keeps counting stragglers.
const DRAIN: Duration = Duration::from_millis(300);
/// A latency probe not back by then counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause between latency probes: one packet in flight, and the relay idle (asleep in its
/// poller) when the next one arrives, as at a real call's 50 packets/s.
const PROBE_GAP: Duration = Duration::from_millis(1);
/// Per-wakeup receive batches per socket, so one busy call cannot starve the timer.
const RECV_ROUNDS: usize = 4;
const TIMER_TOKEN: u64 = u64::MAX;

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Where the caller sends each call's media (the relay's caller-facing ports, call order).
    Targets { dests: Vec<SocketAddrV4> },
    /// Paced load of `rate` packets/s shared equally by all calls, for `secs`.
    Load { rate: u32, secs: f64 },
    /// `samples` probes per path, one in flight at a time, alternating between the direct path
    /// (caller -> callee socket, bypassing the relay) and the path through the relay.
    Latency { samples: u32 },
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LoadReport {
    pub rate: u32,
    pub secs: f64,
    pub sent: u64,
    /// Packets the generator could not send in time (see MAX_CATCH_UP) or the kernel refused.
    pub skipped: u64,
    /// Intact packets of this step.
    pub received: u64,
    /// Packets that arrived changed or on the wrong call's socket.
    pub mangled: u64,
    /// Intact packets whose counter was not above the last one seen on their call.
    pub reordered: u64,
    /// Intact packets of an earlier step.
    pub late: u64,
    /// Calls of which nothing arrived.
    pub silent_calls: u32,
}

impl LoadReport {
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - (self.received.min(self.sent) as f64 / self.sent as f64)
    }

    pub fn delivered_pps(&self) -> f64 {
        self.received as f64 / self.secs
    }

    pub fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LatencyReport {
    pub count: u32,
    pub lost: u32,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ready {
        caller: SocketAddrV4,
        callees: Vec<SocketAddrV4>,
    },
    Ok,
    Load(LoadReport),
    Latency {
        direct: LatencyReport,
        relayed: LatencyReport,
    },
    Error {
        message: String,
    },
}

struct Loadgen {
    caller: UdpSocket,
    callees: Vec<UdpSocket>,
    callee_addrs: Vec<SocketAddrV4>,
    targets: Vec<SocketAddrV4>,
    /// Next packet counter per call; it runs on across steps like a real RTP stream's sequence.
    counters: Vec<u32>,
    next_call: usize,
    step: u32,
    epoll: Epoll,
    events: Vec<libc::epoll_event>,
    timer: TimerFd,
    rx: RecvBatch,
    tx: SendBatch,
    bufs: Vec<[u8; PACKET_LEN]>,
}

/// Receive-side tallies of one load step.
struct Tally {
    step: u32,
    report: LoadReport,
    last: Vec<Option<u32>>,
    per_call: Vec<u64>,
}

pub fn run(calls: u32) -> Result<()> {
    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    let mut lg = Loadgen::new(calls as usize)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let ready = Reply::Ready {
        caller: sys::local_v4(&lg.caller)?,
        callees: lg.callee_addrs.clone(),
    };
    writeln!(out, "{}", serde_json::to_string(&ready)?)?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        let line = line.context("reading a command from stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Command>(&line) {
            Ok(cmd) => lg.handle(cmd).unwrap_or_else(|e| Reply::Error {
                message: format!("{e:#}"),
            }),
            Err(e) => Reply::Error {
                message: format!("bad command {line:?}: {e}"),
            },
        };
        writeln!(out, "{}", serde_json::to_string(&reply)?)?;
        out.flush()?;
    }
    Ok(())
}

impl Loadgen {
    fn new(calls: usize) -> Result<Self> {
        let caller = sys::bind_loopback().context("binding the caller socket")?;
        sys::set_buffer(&caller, false, 4 << 20);
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        epoll.add(timer.fd(), TIMER_TOKEN)?;
        // Enough queue for a few ms of the top rate in total, so the generator's own sockets
        // are never where packets are lost.
        let per_socket = ((8usize << 20) / calls).max(256 << 10);
        let mut callees = Vec::with_capacity(calls);
        let mut callee_addrs = Vec::with_capacity(calls);
        for i in 0..calls {
            let s = sys::bind_loopback().with_context(|| format!("binding callee socket {i}"))?;
            sys::set_buffer(&s, true, per_socket);
            epoll.add(s.as_raw_fd(), i as u64)?;
            callee_addrs.push(sys::local_v4(&s)?);
            callees.push(s);
        }
        Ok(Self {
            caller,
            callees,
            callee_addrs,
            targets: Vec::new(),
            counters: vec![0; calls],
            next_call: 0,
            step: 0,
            epoll,
            events: Epoll::events(64),
            timer,
            rx: RecvBatch::new(BATCH),
            tx: SendBatch::new(BATCH),
            bufs: vec![[0; PACKET_LEN]; BATCH],
        })
    }

    fn handle(&mut self, cmd: Command) -> Result<Reply> {
        match cmd {
            Command::Targets { dests } => {
                if dests.len() != self.callees.len() {
                    bail!(
                        "got {} targets for {} calls",
                        dests.len(),
                        self.callees.len()
                    );
                }
                self.targets = dests;
                Ok(Reply::Ok)
            }
            Command::Load { rate, secs } => {
                if self.targets.is_empty() {
                    bail!("load before targets");
                }
                if rate == 0 || !(0.05..=60.0).contains(&secs) {
                    bail!("load needs rate > 0 and 0.05 <= secs <= 60, got {rate} and {secs}");
                }
                Ok(Reply::Load(self.load(rate, secs)?))
            }
            Command::Latency { samples } => {
                if self.targets.is_empty() {
                    bail!("latency before targets");
                }
                if samples == 0 || samples > 100_000 {
                    bail!("latency needs 1..=100000 samples, got {samples}");
                }
                let (direct, relayed) = self.latency(samples)?;
                Ok(Reply::Latency { direct, relayed })
            }
        }
    }

    fn next_stamp(&mut self, sent_ns: u64) -> Stamp {
        let call = self.next_call;
        self.next_call = (self.next_call + 1) % self.callees.len();
        let counter = self.counters[call];
        self.counters[call] = counter.wrapping_add(1);
        Stamp {
            sent_ns,
            step: self.step,
            call: call as u32,
            counter,
        }
    }

    fn load(&mut self, rate: u32, secs: f64) -> Result<LoadReport> {
        self.step += 1;
        let calls = self.callees.len();
        let mut tally = Tally {
            step: self.step,
            report: LoadReport {
                rate,
                secs,
                ..Default::default()
            },
            last: vec![None; calls],
            per_call: vec![0; calls],
        };
        let planned = (rate as f64 * secs) as u64;
        let interval_ns = (BATCH as u64 * 1_000_000_000 / rate as u64).max(10_000);
        let start = sys::monotonic_ns();
        let end = start + (secs * 1e9) as u64;
        self.timer
            .set_periodic(Some(Duration::from_nanos(interval_ns)))?;
        let (mut sent, mut skipped) = (0u64, 0u64);
        // Bounded by `end`: every wait times out by then at the latest.
        loop {
            let now = sys::monotonic_ns();
            if now >= end {
                break;
            }
            let timeout_ms = ((end - now) / 1_000_000 + 1) as i32;
            let n = self.epoll.wait(&mut self.events, timeout_ms)?;
            for i in 0..n {
                let token = self.events[i].u64;
                if token != TIMER_TOKEN {
                    self.drain(token as usize, &mut tally)?;
                    continue;
                }
                self.timer.ack();
                let now = sys::monotonic_ns().min(end);
                let due = ((now - start) as u128 * rate as u128 / 1_000_000_000) as u64;
                self.send_due(due.min(planned), &mut sent, &mut skipped)?;
            }
        }
        // The last tick fell up to one interval before `end`: send what that interval owes.
        self.send_due(planned, &mut sent, &mut skipped)?;
        self.timer.set_periodic(None)?;
        self.timer.ack();
        let drain_end = sys::monotonic_ns() + DRAIN.as_nanos() as u64;
        // Bounded by `drain_end`.
        loop {
            let now = sys::monotonic_ns();
            let r = &tally.report;
            if now >= drain_end || r.received + r.mangled >= sent {
                break;
            }
            let timeout_ms = ((drain_end - now) / 1_000_000 + 1) as i32;
            let n = self.epoll.wait(&mut self.events, timeout_ms)?;
            for i in 0..n {
                let token = self.events[i].u64;
                if token != TIMER_TOKEN {
                    self.drain(token as usize, &mut tally)?;
                }
            }
        }
        let mut report = tally.report;
        report.sent = sent;
        report.skipped = skipped;
        report.silent_calls = tally.per_call.iter().filter(|&&c| c == 0).count() as u32;
        Ok(report)
    }

    /// Sends what is owed to reach `due` packets in this step, at most MAX_CATCH_UP.
    fn send_due(&mut self, due: u64, sent: &mut u64, skipped: &mut u64) -> Result<()> {
        let mut owed = due.saturating_sub(*sent + *skipped);
        if owed > MAX_CATCH_UP {
            *skipped += owed - MAX_CATCH_UP;
            owed = MAX_CATCH_UP;
        }
        while owed > 0 {
            let k = owed.min(BATCH as u64) as usize;
            let accepted = self.send_batch(k)?;
            *sent += accepted as u64;
            owed -= k as u64;
            if accepted < k {
                // Send buffer full: what the kernel did not take is gone, like on a real
                // wire, and counted so the table can say the generator fell short.
                *skipped += (k - accepted) as u64 + owed;
                break;
            }
        }
        Ok(())
    }

    fn send_batch(&mut self, k: usize) -> Result<usize> {
        let now = sys::monotonic_ns();
        let mut dests = [SocketAddrV4::new([0, 0, 0, 0].into(), 0); BATCH];
        for (i, dest) in dests.iter_mut().enumerate().take(k) {
            let stamp = self.next_stamp(now);
            *dest = self.targets[stamp.call as usize];
            packet::write(&mut self.bufs[i], &stamp);
        }
        let pkts = self.bufs[..k]
            .iter()
            .zip(dests)
            .map(|(b, d)| (b.as_slice(), d));
        self.tx
            .send(self.caller.as_raw_fd(), pkts)
            .context("sendmmsg on the caller socket")
    }

    fn drain(&mut self, call: usize, tally: &mut Tally) -> Result<()> {
        let fd = self.callees[call].as_raw_fd();
        for _ in 0..RECV_ROUNDS {
            let k = self.rx.recv(fd).context("recvmmsg on a callee socket")?;
            for i in 0..k {
                let r = &mut tally.report;
                match packet::check(self.rx.packet(i), call as u32) {
                    Verdict::Intact(s) if s.step == tally.step => {
                        r.received += 1;
                        tally.per_call[call] += 1;
                        if tally.last[call].is_some_and(|l| s.counter <= l) {
                            r.reordered += 1;
                        }
                        tally.last[call] = Some(s.counter);
                    }
                    Verdict::Intact(_) => r.late += 1,
                    Verdict::Mangled => r.mangled += 1,
                }
            }
            if k < self.rx.capacity() {
                break;
            }
        }
        Ok(())
    }

    /// Direct and relayed probes alternate, so that both paths see the same background noise
    /// (other processes, CPU frequency) and their difference is the relay's own.
    fn latency(&mut self, samples: u32) -> Result<(LatencyReport, LatencyReport)> {
        self.step += 1;
        let mut lat = [
            Vec::with_capacity(samples as usize),
            Vec::with_capacity(samples as usize),
        ];
        let mut lost = [0u32; 2];
        for _ in 0..samples {
            for (path, direct) in [(0, true), (1, false)] {
                match self.probe(direct)? {
                    Some(ns) => lat[path].push(ns),
                    None => lost[path] += 1,
                }
                std::thread::sleep(PROBE_GAP);
            }
        }
        let [direct, relayed] = lat.map(|mut v| {
            v.sort_unstable();
            v
        });
        Ok((
            latency_report(&direct, lost[0]),
            latency_report(&relayed, lost[1]),
        ))
    }

    /// One packet, then waits for it: its one-way time, or `None` if it was lost.
    fn probe(&mut self, direct: bool) -> Result<Option<u64>> {
        let stamp = self.next_stamp(sys::monotonic_ns());
        let call = stamp.call as usize;
        let dest = if direct {
            self.callee_addrs[call]
        } else {
            self.targets[call]
        };
        packet::write(&mut self.bufs[0], &stamp);
        let pkt = (self.bufs[0].as_slice(), dest);
        if self
            .tx
            .send(self.caller.as_raw_fd(), std::iter::once(pkt))?
            == 0
        {
            return Ok(None);
        }
        self.await_probe(&stamp)
    }

    /// Waits for `probe` on its call's socket; other packets (stragglers) are dropped.
    fn await_probe(&mut self, probe: &Stamp) -> Result<Option<u64>> {
        let fd = self.callees[probe.call as usize].as_raw_fd();
        let deadline = probe.sent_ns + PROBE_TIMEOUT.as_nanos() as u64;
        // Bounded by `deadline`.
        loop {
            let now = sys::monotonic_ns();
            if now >= deadline {
                return Ok(None);
            }
            if !sys::poll_readable(fd, Duration::from_nanos(deadline - now + 999_999))? {
                continue;
            }
            let k = self.rx.recv(fd)?;
            let arrived = sys::monotonic_ns();
            for i in 0..k {
                if let Verdict::Intact(s) = packet::check(self.rx.packet(i), probe.call)
                    && s.step == probe.step
                    && s.counter == probe.counter
                {
                    return Ok(Some(arrived.saturating_sub(s.sent_ns)));
                }
            }
        }
    }
}

fn latency_report(sorted: &[u64], lost: u32) -> LatencyReport {
    LatencyReport {
        count: sorted.len() as u32,
        lost,
        p50_ns: percentile(sorted, 0.50),
        p99_ns: percentile(sorted, 0.99),
        max_ns: sorted.last().copied().unwrap_or(0),
    }
}

/// Nearest-rank percentile of sorted samples; 0 for none.
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn commands_round_trip_as_json_lines() {
        let line = r#"{"cmd":"load","rate":20000,"secs":1.5}"#;
        let cmd: Command = serde_json::from_str(line).unwrap();
        assert!(matches!(cmd, Command::Load { rate: 20000, .. }));
        let reply = serde_json::to_string(&Reply::Load(LoadReport::default())).unwrap();
        assert!(matches!(
            serde_json::from_str::<Reply>(&reply).unwrap(),
            Reply::Load(_)
        ));
    }

    /// The direct path (no relay) through the real generator: everything sent arrives intact.
    #[test]
    fn direct_load_and_latency_are_lossless() {
        let mut lg = Loadgen::new(3).unwrap();
        lg.targets = lg.callee_addrs.clone();
        let r = lg.load(3000, 0.2).unwrap();
        assert!(r.sent >= 500, "{r:?}");
        assert_eq!(r.received, r.sent, "{r:?}");
        assert_eq!((r.mangled, r.reordered, r.silent_calls), (0, 0, 0));
        // With the callees as targets both "paths" are direct.
        let (d, r) = lg.latency(20).unwrap();
        for l in [d, r] {
            assert_eq!((l.count, l.lost), (20, 0));
            assert!(l.p50_ns > 0 && l.p50_ns <= l.p99_ns);
        }
    }
}
