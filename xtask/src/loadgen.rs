//! The load generator, run as its own process (`xtask loadgen`) so that its CPU time never lands
//! in the relay's account. It speaks JSON lines: one command per line on stdin, one reply per
//! command on stdout; end of stdin ends it.
//!
//! Sockets: one caller socket sends every call's media, each message addressed to that call's
//! relay port, so one sendmmsg carries a batch of 32 across calls; every call has its own callee
//! socket, so a relay that delivers to the wrong call is caught. The callers' SDPs all name the
//! shared caller socket; a relay keys its state on its own ports, so this costs it nothing extra.
//!
//! With `--netns` (bench forward --netns) the caller socket lives in the caller namespace and
//! the callee sockets in the callee namespace (bound to the wildcard address, so that they
//! receive both relayed packets and the direct probes that arrive over the direct link); a
//! second caller-side socket sends the direct probes. One process holds them all, so send and
//! receive times come from one clock.

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::netns;
use crate::packet::{self, PACKET_LEN, Stamp, Verdict};
use crate::sink::{self, Sink};
use crate::sys::{self, Epoll, RecvBatch, TimerFd};
use crate::xdpgen::{self, Gen};
use sluice_relay::mmsg::SendBatch;

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
/// Step id of priming packets (never a load step's).
const PRIME_STEP: u32 = u32::MAX;
/// Pause between priming rounds (one packet per call per round).
const PRIME_GAP: Duration = Duration::from_millis(20);
/// Within a round: this many packets, then a pause.
const PRIME_BURST: usize = 64;
const PRIME_BURST_GAP: Duration = Duration::from_millis(1);

/// Where the sockets live in `--netns` mode.
#[derive(clap::Args, Debug, Clone)]
pub struct NetnsSides {
    /// Namespace file of the caller side (e.g. /run/netns/NAME).
    #[arg(long, requires_all = ["callee_ns", "caller_ip", "callee_ip", "direct_ip"])]
    pub caller_ns: Option<PathBuf>,
    #[arg(long)]
    pub callee_ns: Option<PathBuf>,
    /// The caller's address as the relay sees it.
    #[arg(long)]
    pub caller_ip: Option<Ipv4Addr>,
    /// The callees' address as the relay sees it.
    #[arg(long)]
    pub callee_ip: Option<Ipv4Addr>,
    /// The callees' address on the direct link (latency baseline).
    #[arg(long)]
    pub direct_ip: Option<Ipv4Addr>,
    /// XDP receiver (xtask/bpf/sink.c, compiled) to attach to `callee_iface`, for load steps
    /// that ask for it.
    #[arg(long, requires = "callee_iface")]
    pub sink_object: Option<PathBuf>,
    /// The callee namespace's veth towards the relay.
    #[arg(long)]
    pub callee_iface: Option<String>,
    /// XDP sender (xtask/bpf/gen.c, compiled) for load steps that ask for it: frames leave
    /// through `caller_iface` with these MACs.
    #[arg(long, requires_all = ["caller_iface", "caller_mac", "gateway_mac"])]
    pub gen_object: Option<PathBuf>,
    /// The caller namespace's veth towards the relay.
    #[arg(long)]
    pub caller_iface: Option<String>,
    #[arg(long)]
    pub caller_mac: Option<String>,
    /// The relay veth's MAC (the caller's next hop).
    #[arg(long)]
    pub gateway_mac: Option<String>,
    /// The relay bridges to SDES-SRTP (bench forward --srtp): callees get 182-byte SRTP, of
    /// which only the clear header is checked.
    #[arg(long)]
    pub srtp: bool,
}

impl NetnsSides {
    /// Arguments that make a `loadgen` child place its sockets like this.
    pub fn args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut push = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push(k.to_string());
                v.push(val);
            }
        };
        push(
            "--caller-ns",
            self.caller_ns.as_ref().map(|p| p.display().to_string()),
        );
        push(
            "--callee-ns",
            self.callee_ns.as_ref().map(|p| p.display().to_string()),
        );
        push("--caller-ip", self.caller_ip.map(|a| a.to_string()));
        push("--callee-ip", self.callee_ip.map(|a| a.to_string()));
        push("--direct-ip", self.direct_ip.map(|a| a.to_string()));
        push(
            "--sink-object",
            self.sink_object.as_ref().map(|p| p.display().to_string()),
        );
        push("--callee-iface", self.callee_iface.clone());
        push(
            "--gen-object",
            self.gen_object.as_ref().map(|p| p.display().to_string()),
        );
        push("--caller-iface", self.caller_iface.clone());
        push("--caller-mac", self.caller_mac.clone());
        push("--gateway-mac", self.gateway_mac.clone());
        if self.srtp {
            v.push("--srtp".into());
        }
        v
    }
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Where the caller sends each call's media (the relay's caller-facing ports, call order).
    Targets { dests: Vec<SocketAddrV4> },
    /// `packets` packets from each callee socket to its `dests` entry (the relay's callee-facing
    /// port), one per call per round, 20 ms apart: lets a relay latch the callee side, which
    /// sluice needs before it moves a stream into the kernel. What the relay forwards to the
    /// caller is not read.
    ///
    /// `payloads` (per call, per round), where given, are sent instead of the generator's own
    /// packets: SRTP protected with the callee's key (--srtp), as a relay latches only on
    /// packets that authenticate.
    Prime {
        dests: Vec<SocketAddrV4>,
        packets: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payloads: Option<Vec<Vec<Vec<u8>>>>,
    },
    /// Paced load of `rate` packets/s shared equally by all calls, for `secs`. With `xdp`
    /// (--netns, generator and sink loaded), the XDP generator sends instead of the caller
    /// socket and the XDP sink counts on the callee veth instead of the sockets: cheaper checks
    /// (length, RTP version and type, SSRC and call index), no reordering check.
    Load {
        rate: u32,
        secs: f64,
        #[serde(default)]
        xdp: bool,
    },
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
        /// Where direct probes go per call (empty: the callee addresses themselves).
        #[serde(default)]
        direct: Vec<SocketAddrV4>,
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
    /// Sends the direct probes (netns mode; else the caller socket does).
    direct_tx: Option<UdpSocket>,
    caller_addr: SocketAddrV4,
    callees: Vec<UdpSocket>,
    callee_addrs: Vec<SocketAddrV4>,
    /// Where direct probes go, per call.
    direct_addrs: Vec<SocketAddrV4>,
    sink: Option<Sink>,
    sender: Option<Gen>,
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
    /// Callees receive SRTP (NetnsSides::srtp).
    srtp: bool,
}

/// Receive-side tallies of one load step.
struct Tally {
    step: u32,
    report: LoadReport,
    last: Vec<Option<u32>>,
    per_call: Vec<u64>,
}

pub fn run(calls: u32, sides: NetnsSides) -> Result<()> {
    let max = sink::MAX_CALLS.min(xdpgen::MAX_CALLS);
    if calls == 0 || (sides.sink_object.is_some() && calls as usize > max) {
        bail!("--calls must be within 1..={max}");
    }
    let mut lg = if sides.caller_ns.is_some() {
        // One socket per callee, plus a few: the soft limit is often 1024.
        let want = calls as u64 + 256;
        let got = netns::nofile_capacity(want);
        if got < want {
            bail!("{calls} calls need {want} open files; RLIMIT_NOFILE allows {got}");
        }
        Loadgen::new_netns(calls as usize, &sides)?
    } else {
        Loadgen::new(calls as usize)?
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let ready = Reply::Ready {
        caller: lg.caller_addr,
        callees: lg.callee_addrs.clone(),
        direct: lg.direct_addrs.clone(),
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
        let caller_addr = sys::local_v4(&caller)?;
        let mut callees = Vec::with_capacity(calls);
        for i in 0..calls {
            callees
                .push(sys::bind_loopback().with_context(|| format!("binding callee socket {i}"))?);
        }
        let callee_addrs = callees
            .iter()
            .map(sys::local_v4)
            .collect::<io::Result<Vec<_>>>()?;
        Self::assemble(
            caller,
            None,
            caller_addr,
            callees,
            callee_addrs.clone(),
            callee_addrs,
        )
    }

    /// Sockets in the caller and callee namespaces; addresses as seen from the relay.
    fn new_netns(calls: usize, sides: &NetnsSides) -> Result<Self> {
        let (Some(caller_ns), Some(callee_ns), Some(caller_ip), Some(callee_ip), Some(direct_ip)) = (
            &sides.caller_ns,
            &sides.callee_ns,
            sides.caller_ip,
            sides.callee_ip,
            sides.direct_ip,
        ) else {
            bail!("--caller-ns needs --callee-ns, --caller-ip, --callee-ip and --direct-ip");
        };
        let any = || sys::bind_v4(Ipv4Addr::UNSPECIFIED);
        let (caller, direct_tx) = netns::with_ns(caller_ns, || -> Result<_> {
            Ok((
                any().context("binding the caller socket")?,
                any().context("binding the direct-probe socket")?,
            ))
        })??;
        let callees = netns::with_ns(callee_ns, || {
            (0..calls)
                .map(|i| any().with_context(|| format!("binding callee socket {i}")))
                .collect::<Result<Vec<_>>>()
        })??;
        let ports = callees
            .iter()
            .map(|s| sys::local_v4(s).map(|a| a.port()))
            .collect::<io::Result<Vec<_>>>()?;
        let caller_addr = SocketAddrV4::new(caller_ip, sys::local_v4(&caller)?.port());
        let at = |ip: Ipv4Addr| ports.iter().map(|&p| SocketAddrV4::new(ip, p)).collect();
        let sink = match (&sides.sink_object, &sides.callee_iface) {
            (Some(object), Some(iface)) => Some(netns::with_ns(callee_ns, || {
                Sink::attach(object, iface, &ports)
            })??),
            _ => None,
        };
        let mut lg = Self::assemble(
            caller,
            Some(direct_tx),
            caller_addr,
            callees,
            at(callee_ip),
            at(direct_ip),
        )?;
        lg.sink = sink;
        lg.srtp = sides.srtp;
        if let Some(s) = lg.sink.as_mut() {
            s.srtp = sides.srtp;
        }
        if let Some(object) = &sides.gen_object {
            let (Some(iface), Some(src), Some(dst)) =
                (&sides.caller_iface, &sides.caller_mac, &sides.gateway_mac)
            else {
                bail!("--gen-object needs --caller-iface, --caller-mac and --gateway-mac");
            };
            // BPF_PROG_RUN redirects within the namespace of the thread that runs it: this
            // process stays in the caller namespace from here on (its sockets are bound).
            netns::enter(caller_ns)?;
            let index = sys::ifindex(iface)?;
            lg.sender = Some(Gen::load(
                object,
                index,
                xdpgen::parse_mac(src)?,
                xdpgen::parse_mac(dst)?,
                caller_addr,
            )?);
        }
        Ok(lg)
    }

    fn assemble(
        caller: UdpSocket,
        direct_tx: Option<UdpSocket>,
        caller_addr: SocketAddrV4,
        callees: Vec<UdpSocket>,
        callee_addrs: Vec<SocketAddrV4>,
        direct_addrs: Vec<SocketAddrV4>,
    ) -> Result<Self> {
        let calls = callees.len();
        sys::set_buffer(&caller, false, 4 << 20);
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        epoll.add(timer.fd(), TIMER_TOKEN)?;
        // Enough queue for a few ms of the top rate in total, so the generator's own sockets
        // are never where packets are lost.
        let per_socket = ((8usize << 20) / calls).max(256 << 10);
        for (i, s) in callees.iter().enumerate() {
            sys::set_buffer(s, true, per_socket);
            epoll.add(s.as_raw_fd(), i as u64)?;
        }
        Ok(Self {
            caller,
            direct_tx,
            caller_addr,
            callees,
            callee_addrs,
            direct_addrs,
            sink: None,
            sender: None,
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
            srtp: false,
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
                if let Some(g) = self.sender.as_mut() {
                    g.targets(&dests)?;
                }
                self.targets = dests;
                Ok(Reply::Ok)
            }
            Command::Prime {
                dests,
                packets,
                payloads,
            } => {
                if dests.len() != self.callees.len()
                    || packets > 100
                    || payloads.as_ref().is_some_and(|p| {
                        p.len() != dests.len() || p.iter().any(|c| c.len() < packets as usize)
                    })
                {
                    bail!(
                        "prime needs one destination (and payloads) per call ({}) and at most \
                         100 packets",
                        self.callees.len()
                    );
                }
                self.prime(&dests, packets, payloads.as_deref())?;
                Ok(Reply::Ok)
            }
            Command::Load { rate, secs, xdp } => {
                if self.targets.is_empty() {
                    bail!("load before targets");
                }
                if rate == 0 || !(0.05..=60.0).contains(&secs) {
                    bail!("load needs rate > 0 and 0.05 <= secs <= 60, got {rate} and {secs}");
                }
                if xdp && (self.sink.is_none() || self.sender.is_none()) {
                    bail!("load with the XDP generator and sink, but they are not loaded");
                }
                Ok(Reply::Load(self.load(rate, secs, xdp)?))
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

    fn prime(
        &mut self,
        dests: &[SocketAddrV4],
        packets: u32,
        payloads: Option<&[Vec<Vec<u8>>]>,
    ) -> Result<()> {
        let mut buf = [0u8; PACKET_LEN];
        for round in 0..packets {
            for (call, (sock, &dest)) in self.callees.iter().zip(dests).enumerate() {
                let stamp = Stamp {
                    sent_ns: sys::monotonic_ns(),
                    step: PRIME_STEP,
                    call: call as u32,
                    counter: round,
                };
                packet::write(&mut buf, &stamp);
                let pkt = match payloads {
                    Some(p) => &p[call][round as usize][..],
                    None => &buf[..],
                };
                match sock.send_to(pkt, dest) {
                    Ok(_) => {}
                    // A full buffer loses this one; the next round sends another.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e).with_context(|| format!("priming call {call}")),
                }
                // Paced: a veth ring holds 256 frames, and 10,000 back to back would overflow
                // it before the relay's NAPI thread had a chance to drain it.
                if call % PRIME_BURST == PRIME_BURST - 1 {
                    std::thread::sleep(PRIME_BURST_GAP);
                }
            }
            std::thread::sleep(PRIME_GAP);
        }
        Ok(())
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

    fn load(&mut self, rate: u32, secs: f64, xdp: bool) -> Result<LoadReport> {
        self.step += 1;
        let sink_base = match (xdp, self.sink.as_mut()) {
            (true, Some(s)) => {
                s.start(self.step)?;
                Some(s.total()?)
            }
            _ => None,
        };
        let use_gen = xdp && self.sender.is_some();
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
        let (mut sent, mut skipped) = (0u64, 0u64);
        if use_gen && let Some(g) = self.sender.as_mut() {
            g.sync_counters(&mut self.counters, false)?;
            (sent, skipped) = g.run(rate, secs, self.step, BATCH as u32, MAX_CATCH_UP as u32)?;
            g.sync_counters(&mut self.counters, true)?;
        } else {
            self.send_paced(rate, secs, &mut tally, &mut sent, &mut skipped)?;
        }
        let drain_end = sys::monotonic_ns() + DRAIN.as_nanos() as u64;
        // Bounded by `drain_end`.
        loop {
            let now = sys::monotonic_ns();
            let r = &tally.report;
            let counted = match (sink_base, &self.sink) {
                (Some(base), Some(s)) => s.total()?.saturating_sub(base),
                _ => r.received + r.mangled,
            };
            if now >= drain_end || counted >= sent {
                break;
            }
            if sink_base.is_some() {
                std::thread::sleep(Duration::from_millis(5));
                continue;
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
        if let (Some(_), Some(s)) = (sink_base, self.sink.as_mut()) {
            for (call, c) in s.stop()?.iter().enumerate() {
                let r = &mut tally.report;
                r.received += c.received;
                r.mangled += c.mangled;
                r.late += c.late;
                tally.per_call[call] += c.received;
            }
        }
        let mut report = tally.report;
        report.sent = sent;
        report.skipped = skipped;
        report.silent_calls = tally.per_call.iter().filter(|&&c| c == 0).count() as u32;
        Ok(report)
    }

    /// The socket sender: sendmmsg batches on a timer, receiving what arrives meanwhile.
    fn send_paced(
        &mut self,
        rate: u32,
        secs: f64,
        tally: &mut Tally,
        sent: &mut u64,
        skipped: &mut u64,
    ) -> Result<()> {
        let planned = (rate as f64 * secs) as u64;
        let interval_ns = (BATCH as u64 * 1_000_000_000 / rate as u64).max(10_000);
        let start = sys::monotonic_ns();
        let end = start + (secs * 1e9) as u64;
        self.timer
            .set_periodic(Some(Duration::from_nanos(interval_ns)))?;
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
                    self.drain(token as usize, tally)?;
                    continue;
                }
                self.timer.ack();
                let now = sys::monotonic_ns().min(end);
                let due = ((now - start) as u128 * rate as u128 / 1_000_000_000) as u64;
                self.send_due(due.min(planned), sent, skipped)?;
            }
        }
        // The last tick fell up to one interval before `end`: send what that interval owes.
        self.send_due(planned, sent, skipped)?;
        self.timer.set_periodic(None)?;
        self.timer.ack();
        Ok(())
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
                let pkt = self.rx.packet(i);
                let verdict = match (self.srtp, packet::check(pkt, call as u32)) {
                    // Sent in clear where SRTP was due.
                    (true, Verdict::Intact(_)) => Verdict::Mangled,
                    (true, _) => packet::check_srtp(pkt, call as u32),
                    (false, v) => v,
                };
                match verdict {
                    // Step and counter are encrypted: neither late nor reordering is known.
                    Verdict::Protected { .. } => {
                        r.received += 1;
                        tally.per_call[call] += 1;
                    }
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
        let (dest, sock) = if direct {
            (
                self.direct_addrs[call],
                self.direct_tx.as_ref().unwrap_or(&self.caller),
            )
        } else {
            (self.targets[call], &self.caller)
        };
        packet::write(&mut self.bufs[0], &stamp);
        let pkt = (self.bufs[0].as_slice(), dest);
        if self.tx.send(sock.as_raw_fd(), std::iter::once(pkt))? == 0 {
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
                let pkt = self.rx.packet(i);
                if let Verdict::Intact(s) = packet::check(pkt, probe.call)
                    && s.step == probe.step
                    && s.counter == probe.counter
                {
                    return Ok(Some(arrived.saturating_sub(s.sent_ns)));
                }
                // Through an SRTP bridge: the probe is known by its sequence number.
                if self.srtp
                    && packet::check_srtp(pkt, probe.call)
                        == (Verdict::Protected {
                            seq: probe.counter as u16,
                        })
                {
                    return Ok(Some(arrived.saturating_sub(probe.sent_ns)));
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
        // `sink` may be left out (the loopback bench never sends it).
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
        let r = lg.load(3000, 0.2, false).unwrap();
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
