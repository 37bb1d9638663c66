//! `cargo xtask bench forward`: plain RTP forwarding through sluice, rtpengine and a baseline
//! relay, side by side in one run, under the same load generator.
//!
//! Two modes. Loopback (default): every process on 127.0.0.1, nothing pinned. `--netns`: the
//! caller, the relay and the callee each in a network namespace joined by veth pairs
//! (netns.rs), which adds sluice's XDP path and a bare XDP redirect (bare.rs) to the relays,
//! pins the harness and the relay to a CPU each, and counts the relay-side veths' NAPI
//! threads (softirq work, XDP included) as the relay's CPU.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

mod netns_report;

use crate::bare::{self, Bare};
use crate::child::{Lines, Proc};
use crate::loadgen::{self, LatencyReport, LoadReport, NetnsSides, Reply};
use crate::netns::{self, HARNESS_CPU, Placement, RELAY_CPU, Topology};
use crate::packet;
use crate::proc_cpu::process_cpu_ns;
use crate::relays::{Baseline, CallDests, Relay, Rtpengine, Sluice, SluiceOpts};

/// A step passes while loss stays under this.
const LOSS_LIMIT: f64 = 0.01;
/// A step where the generator sent less than this share of the offered rate says nothing about
/// the relay: the ladder stops there and the table says the harness was the limit.
const MIN_SEND_SHARE: f64 = 0.95;
/// Runs of one step at most: a failed step is confirmed once, a generator shortfall retried.
const STEP_TRIES: u32 = 3;
/// Past 200k so that the baseline (about 1 us per packet here) finds its limit too; the
/// generator reaches about 400k on this machine kind.
const DEFAULT_RATES: &[u32] = &[
    10_000, 20_000, 40_000, 60_000, 80_000, 120_000, 160_000, 200_000, 300_000, 400_000,
];
const QUICK_RATES: &[u32] = &[10_000, 20_000, 40_000];
/// Relay port ranges: distinct per relay, below the kernel's ephemeral range (32768-60999)
/// where the generator's own sockets live.
const RTPENGINE_PORTS: (u16, u16) = (20_000, 23_999);
const SLUICE_PORTS: (u16, u16) = (24_000, 27_999);
/// Warm-up before measuring: lets relays latch and proves every call forwards.
const WARMUP_RATE: u32 = 5_000;
const WARMUP_SECS: f64 = 0.5;

/// --netns: one relay at a time owns the relay namespace, so each gets the whole range: 4 ports
/// per call (RTP and RTCP on both legs) for 12,000 calls.
const NETNS_PORTS: (u16, u16) = (16_000, 63_999);
/// Open files for relay processes (and the generator's own limit is raised to its needs):
/// 10,000 calls are 40,000 sockets.
const NETNS_NOFILE: u64 = 200_000;
/// Open files a relay needs beside its media sockets (control, epoll, logs, ...).
const NOFILE_SPARE: u64 = 512;
/// The XDP generator reaches about 3 Mpps here: past where the XDP paths stop.
const NETNS_RATES: &[u32] = &[
    20_000, 50_000, 100_000, 150_000, 200_000, 300_000, 500_000, 1_000_000, 1_500_000, 2_000_000,
    2_500_000, 3_000_000,
];
const NETNS_QUICK_RATES: &[u32] = &[20_000, 50_000, 200_000, 1_000_000];
/// Warm-up in --netns mode: about 10 packets per call, at most this fast (rtpengine discards a
/// stream for good after a few overloaded wakeups, so the warm-up must not overload it).
const NETNS_WARMUP_MAX_RATE: u32 = 40_000;
/// Packets each callee sends towards the relay before the warm-up, so that sluice latches the
/// callee side too (it moves a stream into the kernel only when both sides have latched).
const PRIME_PACKETS: u32 = 3;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum RelayKind {
    /// sluice's userspace path (`--xdp off`).
    Sluice,
    /// sluice's XDP path (`--xdp native` on the relay's veths; --netns only).
    SluiceXdp,
    /// sluice-xdp with `--xdp-metadata off`: the variant a kernel without
    /// `bpf_xdp_adjust_meta` gets (the route reaches the AF_XDP worker through a map).
    SluiceXdpNometa,
    Rtpengine,
    Baseline,
    /// An XDP program that does nothing but redirect (--netns only).
    BareRedirect,
}

impl RelayKind {
    fn name(self) -> &'static str {
        match self {
            RelayKind::Sluice => "sluice",
            RelayKind::SluiceXdp => "sluice-xdp",
            RelayKind::SluiceXdpNometa => "sluice-xdp-nometa",
            RelayKind::Rtpengine => "rtpengine",
            RelayKind::Baseline => "baseline",
            RelayKind::BareRedirect => "bare-redirect",
        }
    }

    fn needs_netns(self) -> bool {
        matches!(
            self,
            RelayKind::SluiceXdp | RelayKind::SluiceXdpNometa | RelayKind::BareRedirect
        )
    }

    fn is_sluice_xdp(self) -> bool {
        matches!(self, RelayKind::SluiceXdp | RelayKind::SluiceXdpNometa)
    }
}

#[derive(clap::Args, Debug)]
pub struct ForwardArgs {
    /// Caller, relay and callee in network namespaces joined by veth pairs (root): adds
    /// sluice's XDP path and a bare XDP redirect, pins the harness to CPU 0 and the relay to
    /// CPU 1, and counts the relay's veths' NAPI threads as relay CPU. See BENCHMARKS.md.
    #[arg(long)]
    netns: bool,
    /// With --netns: the relay bridges plain RTP from the caller to SDES-SRTP
    /// (AES_CM_128_HMAC_SHA1_80) towards the callee. sluice-xdp then runs one AF_XDP worker
    /// pinned to the relay CPU, which protects once the stream settles; rtpengine bridges in
    /// userspace. Relays: sluice-xdp, sluice, rtpengine [default: sluice-xdp,rtpengine;
    /// calls 1,100].
    #[arg(long, requires = "netns")]
    srtp: bool,
    /// Relays to measure, in this order [default: sluice,rtpengine,baseline; --netns:
    /// sluice-xdp,sluice,rtpengine,baseline,bare-redirect].
    #[arg(long, value_delimiter = ',')]
    relays: Option<Vec<RelayKind>>,
    /// Numbers of concurrent calls; the offered rate is shared equally among them
    /// [default: 1,100; --quick: 1; --netns: 1,100,10000, with --quick 1].
    #[arg(long, value_delimiter = ',')]
    calls: Option<Vec<u32>>,
    /// Offered rates in packets/s, climbed until loss reaches 1%
    /// [default: 10k,20k,40k,60k,80k,120k,160k,200k,300k,400k; --quick: 10k,20k,40k;
    /// --netns: 20k,50k,100k,150k,200k,300k,500k,1M,1.5M,2M,2.5M,3M, with --quick
    /// 20k,50k,200k,1M].
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    /// Seconds per rate step [default: 1.5; --quick: 0.8; --netns: 1.0, with --quick 0.5].
    #[arg(long)]
    step_secs: Option<f64>,
    /// The moderate rate at which CPU per packet is compared (added to the ladder if missing)
    /// [default: 20k; --netns: 50k].
    #[arg(long)]
    cpu_rate: Option<u32>,
    /// Latency probes per path (one in flight at a time, 1 ms apart) [default: 1000;
    /// --quick: 200; --netns: 500].
    #[arg(long)]
    latency_samples: Option<u32>,
    /// Threads for rtpengine's media (--num-threads); 1 matches sluice's userspace path.
    #[arg(long, default_value_t = 1)]
    rtpengine_threads: u32,
    /// Smoke test: 1 call, 10k/20k/40k pps, short steps, fewer latency probes (flags given
    /// explicitly still win).
    #[arg(long)]
    quick: bool,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip `cargo build --release`: run the load generator and baseline from this executable.
    #[arg(long)]
    no_build: bool,
    /// --netns: scheduling of the pinned processes and NAPI threads.
    #[arg(long, value_enum, default_value = "fifo")]
    sched: netns::Sched,
    /// --netns: run the ladder steps with the generator's sockets (every packet built and
    /// checked in userspace; ~2 us of harness CPU per packet, and the relay's veth gets skbs it
    /// must copy for XDP) instead of its XDP sender and sink (see BENCHMARKS.md).
    #[arg(long)]
    socket_harness: bool,
    /// The rtpengine executable (default: `rtpengine` on PATH).
    #[arg(long)]
    rtpengine: Option<PathBuf>,
    /// The sluice executable (default: target/release/sluice).
    #[arg(long)]
    sluice: Option<PathBuf>,
}

struct Plan {
    netns: bool,
    /// --srtp: RTP -> SDES-SRTP bridging.
    srtp: bool,
    /// --netns ladder steps through the generator's sockets instead of its XDP sender/sink.
    socket_harness: bool,
    /// Why the plan differs from what was asked, for the report.
    notes: Vec<String>,
    relays: Vec<RelayKind>,
    calls: Vec<u32>,
    rates: Vec<u32>,
    step_secs: f64,
    cpu_rate: u32,
    latency_samples: u32,
    rtpengine_threads: u32,
}

impl Plan {
    fn new(a: &ForwardArgs) -> Result<Self> {
        let (calls, rates, step_secs, latency_samples) = match (a.netns, a.quick) {
            (false, true) => (vec![1], QUICK_RATES.to_vec(), 0.8, 200),
            (false, false) => (vec![1, 100], DEFAULT_RATES.to_vec(), 1.5, 1000),
            (true, true) => (vec![1], NETNS_QUICK_RATES.to_vec(), 0.5, 200),
            (true, false) if a.srtp => (vec![1, 100], NETNS_RATES.to_vec(), 1.0, 500),
            (true, false) => (vec![1, 100, 10_000], NETNS_RATES.to_vec(), 1.0, 500),
        };
        let cpu_rate = a.cpu_rate.unwrap_or(if a.netns { 50_000 } else { 20_000 });
        let calls = a.calls.clone().unwrap_or(calls);
        let rates = a.rates.clone().unwrap_or(rates);
        let step_secs = a.step_secs.unwrap_or(step_secs);
        let latency_samples = a.latency_samples.unwrap_or(latency_samples);
        let mut rates = rates;
        rates.push(cpu_rate);
        rates.sort_unstable();
        rates.dedup();
        let mut relays = a.relays.clone().unwrap_or_else(|| {
            use RelayKind::*;
            if a.srtp {
                vec![SluiceXdp, Rtpengine]
            } else if a.netns {
                vec![SluiceXdp, Sluice, Rtpengine, Baseline, BareRedirect]
            } else {
                vec![Sluice, Rtpengine, Baseline]
            }
        });
        relays.dedup();
        if relays.is_empty() || calls.is_empty() {
            bail!("nothing to measure: give at least one relay and one call count");
        }
        if !a.netns
            && let Some(k) = relays.iter().find(|k| k.needs_netns())
        {
            bail!("{} is measured with --netns only", k.name());
        }
        if a.srtp
            && let Some(k) = relays
                .iter()
                .find(|k| matches!(k, RelayKind::Baseline | RelayKind::BareRedirect))
        {
            bail!(
                "{} cannot bridge to SRTP: leave it out with --srtp",
                k.name()
            );
        }
        // rtpengine takes 4 ports per call (RTP and RTCP on both sides) from its range.
        let ports = if a.netns {
            NETNS_PORTS
        } else {
            RTPENGINE_PORTS
        };
        let max_calls = (ports.1 - ports.0 + 1) as u32 / 4;
        let mut calls = calls;
        let mut notes = Vec::new();
        if a.netns {
            // Each relay holds its sockets in one process: 4 per call (RTP and RTCP on both
            // legs), and sluice with XDP twice that (it duplicates every socket for its AF_XDP
            // workers). The open-file limit caps the call count where it cannot be raised.
            let per_call: u64 = if relays.iter().any(|k| k.is_sluice_xdp()) {
                8
            } else {
                4
            };
            let cap = netns::nofile_capacity(NETNS_NOFILE);
            let fits = (cap.saturating_sub(NOFILE_SPARE) / per_call) as u32;
            let why = |n: u32| {
                format!(
                    "{n} calls need {} open files in one relay process ({per_call} per call{}); \
                     RLIMIT_NOFILE is {cap} here, a hard limit this container cannot raise (no \
                     CAP_SYS_RESOURCE)",
                    per_call * n as u64 + NOFILE_SPARE,
                    if per_call == 8 {
                        ": sluice with XDP duplicates each of its 4 sockets"
                    } else {
                        ""
                    }
                )
            };
            if let Some(&too_many) = calls.iter().find(|&&c| c > fits) {
                if a.calls.is_some() {
                    bail!("{}: at most {fits} calls", why(too_many));
                }
                let instead = (fits / 1000 * 1000).max(fits.min(1000));
                notes.push(format!(
                    "{}: measured at {instead} calls instead",
                    why(too_many)
                ));
                eprintln!("[bench forward] {}", notes.last().expect("just pushed"));
                for c in calls.iter_mut().filter(|c| **c > fits) {
                    *c = instead;
                }
                calls.dedup();
            }
        }
        if rates.first() == Some(&0) || calls.iter().any(|&c| c == 0 || c > max_calls) {
            bail!("rates must be > 0 and call counts within 1..={max_calls}");
        }
        if !(0.2..=10.0).contains(&step_secs) || !(1..=20_000).contains(&latency_samples) {
            bail!("--step-secs must be within 0.2..=10 and --latency-samples within 1..=20000");
        }
        if a.rtpengine_threads == 0 {
            bail!("--rtpengine-threads must be at least 1");
        }
        // The XDP harness needs BPF_PROG_RUN live frames, which some kernels refuse: probe it
        // and fall back to the socket harness with one line, as the relay falls back itself.
        let mut socket_harness = a.socket_harness;
        if a.netns
            && !socket_harness
            && let Some(why) = crate::xdpgen::live_frames_refused()
        {
            socket_harness = true;
            notes.push(format!(
                "Harness: the socket harness, not the XDP sender and sink: {why}"
            ));
            eprintln!("[bench forward] {}", notes.last().expect("just pushed"));
        }
        Ok(Self {
            netns: a.netns,
            srtp: a.srtp,
            socket_harness,
            notes,
            relays,
            calls,
            rates,
            step_secs,
            cpu_rate,
            latency_samples,
            rtpengine_threads: a.rtpengine_threads,
        })
    }

    /// Upper bound of one relay-and-call-count run, for the generator's reply timeouts.
    fn step_timeout(&self) -> Duration {
        let warmup = self
            .calls
            .iter()
            .map(|&n| self.warmup(n).1)
            .fold(WARMUP_SECS, f64::max);
        Duration::from_secs_f64(self.step_secs.max(warmup) + 10.0)
    }

    /// (rate, seconds) of the warm-up for `calls` calls: at least ~10 packets per call, so that
    /// a relay dropping a call's first few (before it latches) still shows the call working.
    fn warmup(&self, calls: u32) -> (u32, f64) {
        if !self.netns {
            return (WARMUP_RATE.max(20 * calls), WARMUP_SECS);
        }
        let rate = (20 * calls).clamp(WARMUP_RATE, NETNS_WARMUP_MAX_RATE);
        (rate, WARMUP_SECS.max(10.0 * calls as f64 / rate as f64))
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo_build(packages: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--release"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    eprintln!("[bench forward] {}", describe_cmd(&cmd));
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe_cmd(&cmd));
    }
    Ok(())
}

fn describe_cmd(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Results of one relay at one call count.
#[derive(Default)]
struct Run {
    relay: &'static str,
    calls: u32,
    steps: Vec<Step>,
    warmup: Option<LoadReport>,
    direct: Option<LatencyReport>,
    through: Option<LatencyReport>,
    /// The ladder stopped because the generator could not send the offered rate.
    harness_limited: Option<LoadReport>,
    error: Option<String>,
    /// What the run found worth a line in the report (--netns: kernelization, kernel share).
    notes: Vec<String>,
}

#[derive(Default)]
struct Step {
    report: LoadReport,
    /// Relay CPU: its process (all threads) plus, in --netns mode, `napi_ns`.
    cpu_ns: u64,
    /// The relay-side veths' NAPI threads (--netns mode): softirq work, XDP included.
    napi_ns: u64,
    /// Frames dropped by the veth driver between relay and callee (--netns mode).
    ring_drops: Option<u64>,
    /// Where the relay itself lost packets (--netns mode): frames its ingress veth's ring had
    /// no room for, and datagrams its sockets had no room for.
    relay_drops: Option<(u64, u64)>,
    /// Packets the relay says it forwarded in the kernel (sluice-xdp).
    kernel_packets: Option<u64>,
}

impl Step {
    fn passed(&self) -> bool {
        self.report.loss() < LOSS_LIMIT && self.sent_in_full()
    }

    /// Share of the packets sent that the veth driver dropped on the callee side (--netns):
    /// that ring is emptied by the harness CPU, so these losses are the harness's.
    fn ring_loss(&self) -> f64 {
        match (self.ring_drops, self.report.sent) {
            (Some(d), sent) if sent > 0 => d as f64 / sent as f64,
            _ => 0.0,
        }
    }

    /// Loss that the harness does not explain.
    fn relay_loss(&self) -> f64 {
        (self.report.loss() - self.ring_loss()).max(0.0)
    }

    /// A loss failure of the relay, not a harness shortfall: the generator sent the rate and
    /// the loss is there even without the callee-side ring drops.
    ///
    /// In --netns mode the relay's loss is its own even when the generator sent less than
    /// asked (the harness there runs on another CPU, and the drops are counted where they
    /// happen), as long as the generator sent at least half the rate; the report then names
    /// the rate actually sent.
    fn relay_failed(&self) -> bool {
        if self.relay_loss() < LOSS_LIMIT {
            return false;
        }
        match self.ring_drops {
            Some(_) => self.report.sent_pps() >= 0.5 * self.report.rate as f64,
            None => self.sent_in_full(),
        }
    }

    fn sent_in_full(&self) -> bool {
        self.report.sent_pps() >= MIN_SEND_SHARE * self.report.rate as f64
    }

    fn cpu_per_packet(&self) -> Option<f64> {
        (self.report.received > 0).then(|| self.cpu_ns as f64 / self.report.received as f64)
    }

    fn napi_per_packet(&self) -> Option<f64> {
        (self.report.received > 0).then(|| self.napi_ns as f64 / self.report.received as f64)
    }
}

impl Run {
    /// A report row for a run that failed before its first step (`columns` cells in all), or
    /// None when it has steps to report.
    fn failed_row(&self, columns: usize) -> Option<String> {
        let e = self.error.as_ref().filter(|_| self.steps.is_empty())?;
        let first_line = e.lines().next().unwrap_or_default();
        let calls = match self.calls {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        Some(format!(
            "| {} | {calls} | failed: {} |{}",
            self.relay,
            first_line.replace('|', "/"),
            " |".repeat(columns.saturating_sub(3))
        ))
    }

    /// The "max rate <1% loss" cell: the best passing step, ">=" when it is the ladder's `top`
    /// or the load generator fell short (`short`: what to call that), "<" the lowest rate when
    /// none passed.
    fn max_rate_cell(&self, top: u32, lowest: u32, short: &str) -> String {
        match (self.best(), &self.harness_limited) {
            (Some(s), _) if s.report.rate == top => {
                format!(">= {} (top of ladder)", fmt_rate(top))
            }
            (Some(s), Some(h)) => format!(
                ">= {} ({short} at {})",
                fmt_rate(s.report.rate),
                fmt_rate(h.rate)
            ),
            (Some(s), None) => fmt_rate(s.report.rate),
            (None, _) => format!("< {}", fmt_rate(lowest)),
        }
    }

    fn best(&self) -> Option<&Step> {
        self.steps.iter().take_while(|s| s.passed()).last()
    }

    fn first_failure(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.relay_failed())
    }

    /// The step at `rate`, if it passed: CPU per packet of a step the relay failed (an overload
    /// cliff delivering a fraction of the packets) is no basis for a comparison.
    fn at_rate(&self, rate: u32) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| s.report.rate == rate && s.passed())
    }

    fn reports(&self) -> impl Iterator<Item = &LoadReport> {
        self.warmup
            .iter()
            .chain(self.steps.iter().map(|s| &s.report))
    }
}

/// The load generator process for one relay and call count.
struct Generator {
    /// Declared before `proc` so it closes first on drop: end of stdin ends the generator.
    stdin: ChildStdin,
    proc: Proc,
    lines: Lines,
    caller: SocketAddrV4,
    callees: Vec<SocketAddrV4>,
    timeout: Duration,
}

impl Generator {
    /// In --netns mode (`topo`), its sockets go into the caller and callee namespaces and the
    /// process onto the harness CPU.
    fn spawn(exe: &Path, calls: u32, timeout: Duration, env: Option<&NetnsEnv>) -> Result<Self> {
        let mut cmd = match env {
            Some(env) => {
                let mut cmd = Placement {
                    cpu: Some(HARNESS_CPU),
                    sched: Some(env.sched),
                    ..Default::default()
                }
                .command(exe);
                cmd.args(["loadgen", "--calls", &calls.to_string()])
                    .args(generator_sides(env).args());
                cmd
            }
            None => {
                let mut cmd = Command::new(exe);
                cmd.args(["loadgen", "--calls", &calls.to_string()]);
                cmd
            }
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut proc = Proc::spawn("load generator", &mut cmd, None)?;
        let child = proc.child_mut();
        let stdin = child.stdin.take().context("load generator stdin")?;
        let lines = Lines::new(
            "load generator",
            child.stdout.take().context("load generator stdout")?,
        );
        let mut g = Self {
            stdin,
            proc,
            lines,
            caller: SocketAddrV4::new([0, 0, 0, 0].into(), 0),
            callees: Vec::new(),
            timeout,
        };
        match g.read_reply(Duration::from_secs(10))? {
            Reply::Ready {
                caller, callees, ..
            } => {
                g.caller = caller;
                g.callees = callees;
                Ok(g)
            }
            other => bail!("load generator started with {other:?}"),
        }
    }

    fn read_reply(&mut self, timeout: Duration) -> Result<Reply> {
        let line = match self.lines.next(timeout) {
            Ok(line) => line,
            Err(e) => {
                self.proc.ensure_running()?;
                return Err(e);
            }
        };
        match serde_json::from_str(&line)
            .with_context(|| format!("load generator said {line:?}"))?
        {
            Reply::Error { message } => bail!("load generator: {message}"),
            r => Ok(r),
        }
    }

    fn call(&mut self, cmd: &loadgen::Command, timeout: Duration) -> Result<Reply> {
        writeln!(self.stdin, "{}", serde_json::to_string(cmd)?)
            .and_then(|_| self.stdin.flush())
            .context("writing to the load generator")?;
        self.read_reply(timeout)
    }

    fn targets(&mut self, dests: Vec<SocketAddrV4>) -> Result<()> {
        match self.call(&loadgen::Command::Targets { dests }, self.timeout)? {
            Reply::Ok => Ok(()),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    fn prime(
        &mut self,
        dests: Vec<SocketAddrV4>,
        packets: u32,
        payloads: Option<Vec<Vec<Vec<u8>>>>,
    ) -> Result<()> {
        let cmd = loadgen::Command::Prime {
            dests,
            packets,
            payloads,
        };
        match self.call(&cmd, self.timeout)? {
            Reply::Ok => Ok(()),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    /// `xdp`: send with the generator's XDP sender and count with its XDP sink (--netns)
    /// instead of its sockets.
    fn load(&mut self, rate: u32, secs: f64, xdp: bool) -> Result<LoadReport> {
        match self.call(&loadgen::Command::Load { rate, secs, xdp }, self.timeout)? {
            Reply::Load(r) => Ok(r),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    /// (direct, through the relay).
    fn latency(&mut self, samples: u32) -> Result<(LatencyReport, LatencyReport)> {
        // Each probe takes at most the probe timeout (100 ms) plus the 1 ms gap, two per sample.
        let timeout = self.timeout + Duration::from_millis(2 * 101) * samples;
        match self.call(&loadgen::Command::Latency { samples }, timeout)? {
            Reply::Latency { direct, relayed } => Ok((direct, relayed)),
            other => bail!("unexpected reply {other:?}"),
        }
    }
}

fn generator_sides(env: &NetnsEnv) -> NetnsSides {
    let t = &env.topo;
    let (gen_object, sink_object) = env.xdp_harness.clone().unzip();
    NetnsSides {
        sink_object,
        callee_iface: Some(t.devs.e0.clone()),
        gen_object,
        caller_iface: Some(t.devs.c0.clone()),
        caller_mac: Some(netns::C0_MAC.to_string()),
        gateway_mac: Some(netns::R1_MAC.to_string()),
        caller_ns: Some(netns::ns_path(&t.caller)),
        callee_ns: Some(netns::ns_path(&t.callee)),
        caller_ip: Some(netns::CALLER_IP),
        callee_ip: Some(netns::CALLEE_IP),
        direct_ip: Some(netns::DIRECT_CALLEE_IP),
        srtp: env.srtp,
    }
}

pub fn run(args: ForwardArgs) -> Result<()> {
    let plan = Plan::new(&args)?;
    if plan.netns {
        // First, while the bench is still one thread: ctrl-C must delete the namespaces.
        netns::install_signal_cleanup()?;
    }
    let logs = target_dir().join(if plan.netns {
        "bench-forward-netns"
    } else {
        "bench-forward"
    });
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let mut sluice_build_error = None;
    let exe = if args.no_build {
        if cfg!(debug_assertions) {
            eprintln!(
                "[bench forward] warning: --no-build with a debug xtask: the load generator \
                 and baseline run unoptimised and may limit the rates"
            );
        }
        std::env::current_exe()?
    } else {
        cargo_build(&["xtask"])?;
        if plan
            .relays
            .iter()
            .any(|k| matches!(k, RelayKind::Sluice) || k.is_sluice_xdp())
            && let Err(e) = cargo_build(&["sluice-control"])
        {
            sluice_build_error = Some(e);
        }
        target_dir().join("release").join("xtask")
    };
    let sluice_exe = args
        .sluice
        .clone()
        .unwrap_or_else(|| target_dir().join("release").join("sluice"));

    let started = Instant::now();
    let load_at_start = loadavg();
    let jiffies_at_start = cpu_jiffies();
    let mut runs: Vec<Run> = Vec::new();
    let mut cmdlines: Vec<(&'static str, String)> = Vec::new();
    let mut notes: Vec<String> = plan.notes.clone();
    if plan.netns {
        notes.push(format!("Scheduling: {}", args.sched.describe()));
    }
    // --netns: the topology lives as long as the runs (deleted on drop, error or not).
    let mut env = if plan.netns {
        let topo = Topology::create()?;
        eprintln!(
            "[bench forward] namespaces {} / {} / {} up",
            topo.caller, topo.relay, topo.callee
        );
        // SAFETY: sysconf has no preconditions.
        if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } <= RELAY_CPU as libc::c_long {
            bail!(
                "--netns pins the harness to CPU {HARNESS_CPU} and the relay to CPU {RELAY_CPU}: this machine has one CPU"
            );
        }
        // The bench itself (idle while the generator runs) stays off the relay's CPU.
        netns::set_affinity(0, HARNESS_CPU).context("pinning the bench to the harness CPU")?;
        Some(NetnsEnv {
            topo,
            sched: args.sched,
            xdp_harness: None,
            srtp: plan.srtp,
        })
    } else {
        None
    };
    let bare_object = if plan.relays.contains(&RelayKind::BareRedirect) {
        Some(bare::compile(bare::SOURCE, &logs))
    } else {
        None
    };
    if let Some(env) = env.as_mut()
        && !plan.socket_harness
    {
        env.xdp_harness = Some((
            bare::compile(bare::GEN_SOURCE, &logs)
                .context("compiling the generator's XDP sender")?,
            bare::compile(bare::SINK_SOURCE, &logs)
                .context("compiling the generator's XDP sink")?,
        ));
    }
    for &kind in &plan.relays {
        let name = kind.name();
        eprintln!("[bench forward] {name}: starting");
        let log = logs.join(format!("{name}.log"));
        let relay: Result<Box<dyn Relay>> = match &env {
            None => match kind {
                RelayKind::Sluice => match sluice_build_error.take() {
                    Some(e) => Err(e),
                    None => Sluice::start(
                        &sluice_exe,
                        SluiceOpts {
                            name,
                            ports: SLUICE_PORTS,
                            media_ip: std::net::Ipv4Addr::LOCALHOST,
                            control_socket: None,
                            xdp_ifaces: None,
                            worker_cpu: None,
                            xdp_metadata_off: false,
                            placement: Placement::default(),
                        },
                        &log,
                    )
                    .map(|r| Box::new(r) as _),
                },
                RelayKind::Rtpengine => {
                    Rtpengine::find(args.rtpengine.as_deref()).and_then(|exe| {
                        Rtpengine::start(
                            &exe,
                            RTPENGINE_PORTS,
                            plan.rtpengine_threads,
                            std::net::Ipv4Addr::LOCALHOST,
                            &Placement::default(),
                            &log,
                        )
                        .map(|r| Box::new(r) as _)
                    })
                }
                RelayKind::Baseline => Ok(Box::new(Baseline::new(
                    &exe,
                    &log,
                    None,
                    Placement::default(),
                ))),
                RelayKind::SluiceXdp | RelayKind::SluiceXdpNometa | RelayKind::BareRedirect => {
                    unreachable!("Plan::new refuses these without --netns")
                }
            },
            Some(env) => start_in_netns(
                kind,
                env,
                &exe,
                &sluice_exe,
                &mut sluice_build_error,
                bare_object.as_ref(),
                &args,
                &plan,
                &logs,
            ),
        };
        let mut relay = match relay {
            Ok(r) => r,
            Err(e) => {
                eprintln!("[bench forward] {name}: failed to start: {e:#}");
                runs.push(Run {
                    relay: name,
                    error: Some(format!("did not start: {e:#}")),
                    ..Default::default()
                });
                continue;
            }
        };
        cmdlines.push((name, relay.command_line()));
        for &calls in &plan.calls {
            let mut run = Run {
                relay: name,
                calls,
                ..Default::default()
            };
            let result = measure(relay.as_mut(), &exe, &plan, &mut run, env.as_ref());
            let teardown = relay.teardown();
            if let Err(e) = result.and(teardown) {
                eprintln!("[bench forward] {name} calls={calls}: {e:#}");
                run.error = Some(format!("{e:#}"));
            }
            let died = run.error.is_some() && relay.ensure_running().is_err();
            runs.push(run);
            if died {
                break; // later call counts would only fail the same way
            }
        }
        if kind == RelayKind::Rtpengine {
            notes.extend(rtpengine_log_notes(&log));
        }
        // Dropping the relay stops its process before the next one starts.
    }

    notes.push(format!("Relay logs: {}", logs.display()));
    let noise = match (jiffies_at_start, cpu_jiffies()) {
        (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => format!(
            "load average {load_at_start} at the start, {} at the end; {:.1}% of CPU time stolen by the hypervisor",
            loadavg(),
            (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64
        ),
        _ => format!(
            "load average {load_at_start} at the start, {} at the end",
            loadavg()
        ),
    };
    let report = if plan.netns {
        netns_report::render(&plan, &runs, &cmdlines, &notes, started.elapsed(), &noise)
    } else {
        render(&plan, &runs, &cmdlines, &notes, started.elapsed(), &noise)
    };
    // The namespaces go before the report is printed: nothing of the bench outlives it.
    drop(env);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("[bench forward] report written to {}", out.display());
    }
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| match r.calls {
            0 => r.relay.to_string(),
            n => format!("{} (calls={n})", r.relay),
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} run(s) failed: {}; relay logs in {}",
            failed.len(),
            failed.join(", "),
            logs.display()
        );
    }
    Ok(())
}

/// Starts one relay in the relay namespace, pinned to the relay CPU.
#[allow(clippy::too_many_arguments)]
fn start_in_netns(
    kind: RelayKind,
    env: &NetnsEnv,
    exe: &Path,
    sluice_exe: &Path,
    sluice_build_error: &mut Option<anyhow::Error>,
    bare_object: Option<&Result<PathBuf>>,
    args: &ForwardArgs,
    plan: &Plan,
    logs: &Path,
) -> Result<Box<dyn Relay>> {
    let name = kind.name();
    let log = logs.join(format!("{name}.log"));
    let topo = &env.topo;
    let placement = Placement {
        netns: Some(topo.relay.clone()),
        cpu: Some(RELAY_CPU),
        nofile: Some(NETNS_NOFILE),
        sched: Some(env.sched),
    };
    let relay_ifaces = vec![topo.devs.r1.clone(), topo.devs.r2.clone()];
    let relay: Box<dyn Relay> = match kind {
        RelayKind::Sluice | RelayKind::SluiceXdp | RelayKind::SluiceXdpNometa => {
            if let Some(e) = sluice_build_error.as_ref() {
                bail!("{e:#}");
            }
            let xdp = kind.is_sluice_xdp();
            let mut sluice = Sluice::start(
                sluice_exe,
                SluiceOpts {
                    name,
                    ports: NETNS_PORTS,
                    media_ip: netns::RELAY_IP,
                    control_socket: Some(logs.join(format!("{name}.sock"))),
                    xdp_ifaces: xdp.then(|| relay_ifaces.clone()),
                    // SRTP streams settle into WORKER flows: one AF_XDP worker on the relay CPU.
                    worker_cpu: (xdp && plan.srtp).then_some(RELAY_CPU),
                    xdp_metadata_off: kind == RelayKind::SluiceXdpNometa,
                    placement,
                },
                &log,
            )?;
            sluice.srtp = plan.srtp;
            if xdp {
                topo.ensure_xdp_attached()?;
            }
            Box::new(sluice)
        }
        RelayKind::Rtpengine => {
            let rtpe = Rtpengine::find(args.rtpengine.as_deref())?;
            let mut r = Rtpengine::start(
                &rtpe,
                NETNS_PORTS,
                plan.rtpengine_threads,
                netns::RELAY_IP,
                &placement,
                &log,
            )?;
            r.srtp = plan.srtp;
            Box::new(r)
        }
        RelayKind::Baseline => Box::new(Baseline::new(exe, &log, Some(netns::RELAY_IP), placement)),
        RelayKind::BareRedirect => {
            let object = match bare_object {
                Some(Ok(o)) => o,
                Some(Err(e)) => bail!("compiling the bare redirect program: {e:#}"),
                None => bail!("the bare redirect program was not compiled"),
            };
            let b = Bare::start(
                exe,
                object,
                [&topo.devs.r1, &topo.devs.r2],
                &placement,
                &log,
            )?;
            topo.ensure_xdp_attached()?;
            Box::new(b)
        }
    };
    Ok(relay)
}

/// What a --netns run needs beside the relay: the topology, and the relay-side NAPI threads
/// whose runtime counts as the relay's.
struct NetnsEnv {
    topo: Topology,
    sched: netns::Sched,
    /// The compiled XDP sender and sink of the generator, unless --socket-harness.
    xdp_harness: Option<(PathBuf, PathBuf)>,
    /// --srtp: callees receive SRTP.
    srtp: bool,
}

fn measure(
    relay: &mut dyn Relay,
    exe: &Path,
    plan: &Plan,
    run: &mut Run,
    env: Option<&NetnsEnv>,
) -> Result<()> {
    let name = relay.name();
    let n = run.calls;
    let mut lg = Generator::spawn(exe, n, plan.step_timeout(), env)?;
    // After every XDP attach (the relay's at its start, the generator's sink just now): that
    // recreates a veth's NAPI. The relay-side threads' runtime counts as the relay's.
    let napi: Vec<u32> = match env {
        Some(e) => e.topo.threaded_napi(e.sched).context("threaded NAPI")?,
        None => Vec::new(),
    };
    let xdp_harness = env.is_some_and(|e| e.xdp_harness.is_some());
    let setup_started = Instant::now();
    let dests: Vec<CallDests> = relay
        .setup(lg.caller, &lg.callees)
        .with_context(|| format!("setting up {n} calls"))?;
    if n >= 1000 {
        eprintln!(
            "[bench forward] {name} calls={n}: set up in {:.1} s",
            setup_started.elapsed().as_secs_f64()
        );
    }
    lg.targets(dests.iter().map(|d| d.a).collect())?;
    if env.is_some()
        && let Some(b) = dests.iter().map(|d| d.b).collect::<Option<Vec<_>>>()
    {
        lg.prime(b, PRIME_PACKETS, srtp_prime_payloads(&dests)?)?;
    }

    let (rate, secs) = plan.warmup(n);
    let w = lg.load(rate, secs, false)?;
    relay.ensure_running()?;
    check_warmup(name, n, &w, "warm-up")?;
    run.warmup = Some(w);
    if env.is_some() {
        let timeout = Duration::from_secs(15) + Duration::from_millis(2 * n as u64);
        if let Some(note) = relay.settle(timeout)? {
            eprintln!("[bench forward] {name} calls={n}: {note}");
            run.notes.push(note);
            // Prove every call forwards on the path now in place.
            let w = lg.load(rate, secs, false)?;
            check_warmup(name, n, &w, "check after kernelization")?;
        }
    }

    eprintln!(
        "[bench forward] {name} calls={n}: latency, {} probes per path",
        plan.latency_samples
    );
    let (direct, through) = lg.latency(plan.latency_samples)?;
    run.direct = Some(direct);
    run.through = Some(through);

    let pid = relay.pid();
    let napi_cpu = || -> Result<u64> {
        napi.iter()
            .map(|&p| process_cpu_ns(p).with_context(|| format!("NAPI thread {p}")))
            .sum()
    };
    let ring_drops = || env.and_then(|e| e.topo.callee_ring_drops().ok());
    let relay_drops = |pid: u32| {
        env.and_then(|e| {
            Some((
                e.topo.relay_ring_drops().ok()?,
                netns::udp_in_errors(pid).ok()?,
            ))
        })
    };
    for (i, &rate) in plan.rates.iter().enumerate() {
        let mut attempt = 1;
        let mut failed_once: Option<Step> = None;
        // Bounded: at most STEP_TRIES attempts.
        let step = loop {
            eprint!(
                "[bench forward] {name} calls={n}: step {}/{} {rate} pps ... ",
                i + 1,
                plan.rates.len()
            );
            let k0 = relay.kernel_packets();
            let d0 = ring_drops();
            let r0 = relay_drops(pid);
            let (n0, c0) = (napi_cpu()?, process_cpu_ns(pid)?);
            let report = lg.load(rate, plan.step_secs, xdp_harness)?;
            let (n1, c1) = (napi_cpu()?, process_cpu_ns(pid)?);
            let d1 = ring_drops();
            let r1 = relay_drops(pid);
            let k1 = relay.kernel_packets();
            relay.ensure_running()?;
            let napi_ns = n1.saturating_sub(n0);
            let step = Step {
                report,
                cpu_ns: c1.saturating_sub(c0) + napi_ns,
                napi_ns,
                ring_drops: d0.zip(d1).map(|(a, b)| b.saturating_sub(a)),
                relay_drops: r0
                    .zip(r1)
                    .map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))),
                kernel_packets: k0.zip(k1).map(|(a, b)| b.saturating_sub(a)),
            };
            let figures = format!(
                "delivered {:.0} pps, loss {:.2}%, {} ns CPU/pkt{}",
                step.report.delivered_pps(),
                step.report.loss() * 100.0,
                step.cpu_per_packet()
                    .map_or("-".into(), |c| format!("{c:.0}")),
                if env.is_some() {
                    format!(
                        " ({} NAPI), drops: relay ingress ring {} / relay sockets {} / callee ring {}",
                        step.napi_per_packet()
                            .map_or("-".into(), |c| format!("{c:.0}")),
                        step.relay_drops.map_or("-".into(), |d| d.0.to_string()),
                        step.relay_drops.map_or("-".into(), |d| d.1.to_string()),
                        step.ring_drops.map_or("-".into(), |d| d.to_string())
                    )
                } else {
                    String::new()
                },
            );
            let short = if step.sent_in_full() {
                format!(
                    "{:.1}% dropped at the callee veth's ring, drained by the harness CPU",
                    step.ring_loss() * 100.0
                )
            } else {
                format!("generator sent only {:.0} pps", step.report.sent_pps())
            };
            let (verdict, done) = judge(step, attempt, &mut failed_once);
            let verdict = match verdict {
                Verdict::Passed | Verdict::Failed => String::new(),
                Verdict::Confirmed => " (confirmed)".into(),
                Verdict::Confirming => " (loss over 1%: confirming)".into(),
                Verdict::HarnessLimited => format!(" ({short}: harness-limited)"),
                Verdict::TryAgain => format!(" ({short}: trying again)"),
            };
            eprintln!("{figures}{verdict}");
            if let Some(step) = done {
                if !step.passed() && !step.relay_failed() {
                    run.harness_limited = Some(step.report.clone());
                }
                break step;
            }
            attempt += 1;
        };
        let passed = step.passed();
        run.steps.push(step);
        if !passed {
            break;
        }
    }
    run.notes.extend(relay.worker_summary());
    let kernel: Option<u64> = run.steps.iter().map(|s| s.kernel_packets).sum();
    if let Some(k) = kernel {
        let sent: u64 = run.steps.iter().map(|s| s.report.sent).sum();
        let received: u64 = run.steps.iter().map(|s| s.report.received).sum();
        run.notes.push(format!(
            "the relay counted {} packets forwarded in the kernel (with workers: handed to a \
             worker by XDP, which may still drop them when overloaded) during the recorded \
             ladder steps, against {} sent and {} received ({:.1}% of received)",
            fmt_int(k as f64),
            fmt_int(sent as f64),
            fmt_int(received as f64),
            k as f64 * 100.0 / received.max(1) as f64
        ));
    }
    Ok(())
}

/// --srtp: the callees' priming packets, protected with each callee's key (a relay latches
/// only on SRTP that authenticates); None where the calls are plain.
fn srtp_prime_payloads(dests: &[CallDests]) -> Result<Option<Vec<Vec<Vec<u8>>>>> {
    use sluice_relay::srtp::{SrtpConfig, SrtpContext, SrtpProfile};
    let Some(keys) = dests
        .iter()
        .map(|d| d.callee_key)
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let mut all = Vec::with_capacity(keys.len());
    for (call, key) in keys.iter().enumerate() {
        let mut ctx =
            SrtpContext::new(SrtpProfile::AesCm128HmacSha1_80, key, SrtpConfig::default())
                .map_err(|e| anyhow::anyhow!("SRTP key of call {call}: {e:?}"))?;
        let mut rounds = Vec::new();
        for counter in 0..PRIME_PACKETS {
            let mut plain = [0u8; packet::PACKET_LEN];
            packet::write(
                &mut plain,
                &packet::Stamp {
                    sent_ns: 0,
                    step: u32::MAX,
                    call: call as u32,
                    counter,
                },
            );
            let mut buf = vec![0u8; packet::SRTP_LEN + 16];
            buf[..plain.len()].copy_from_slice(&plain);
            let n = ctx
                .protect_rtp(&mut buf, plain.len())
                .map_err(|e| anyhow::anyhow!("protecting a priming packet: {e:?}"))?;
            buf.truncate(n);
            rounds.push(buf);
        }
        all.push(rounds);
    }
    Ok(Some(all))
}

fn check_warmup(name: &str, n: u32, w: &LoadReport, what: &str) -> Result<()> {
    if w.received == 0 || w.silent_calls > 0 {
        bail!(
            "{name} forwarded nothing for {} of {n} calls during the {what} \
             (sent {}, received {}, mangled {})",
            if w.received == 0 { n } else { w.silent_calls },
            w.sent,
            w.received,
            w.mangled
        );
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Passed,
    /// Failed with no retry left.
    Failed,
    /// Failed twice in a row.
    Confirmed,
    /// Failed once: run it again.
    Confirming,
    /// The generator fell short with no retry left.
    HarnessLimited,
    TryAgain,
}

/// What one run (`attempt`, from 1) of a ladder step means, and the step to record once the
/// step is settled. A step fails only when it fails twice in a row: one loss spike on a shared
/// 2-CPU machine (a relay thread descheduled for a few ms overflows its socket) should not end
/// the ladder. A run where the harness fell short (the generator sent less than asked, or, in
/// --netns mode, the loss is explained by drops at the callee veth's ring, which the harness CPU
/// empties) says nothing about the relay and is repeated. When a failure is confirmed, the first failing run is recorded: it shows the loss
/// at the onset, whereas rtpengine, once overloaded, drops all of a stream.
fn judge(step: Step, attempt: u32, failed_once: &mut Option<Step>) -> (Verdict, Option<Step>) {
    if step.passed() {
        return (Verdict::Passed, Some(step));
    }
    if step.relay_failed() {
        if let Some(first) = failed_once.take() {
            return (Verdict::Confirmed, Some(first));
        }
        if attempt >= STEP_TRIES {
            return (Verdict::Failed, Some(step));
        }
        *failed_once = Some(step);
        return (Verdict::Confirming, None);
    }
    if attempt >= STEP_TRIES {
        return match failed_once.take() {
            Some(first) => (Verdict::Failed, Some(first)),
            None => (Verdict::HarnessLimited, Some(step)),
        };
    }
    (Verdict::TryAgain, None)
}

// ---------------------------------------------------------------------------------------------
// Report

fn fmt_int(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_rate(r: u32) -> String {
    if r.is_multiple_of(1000) {
        format!("{}k", r / 1000)
    } else {
        r.to_string()
    }
}

fn us(ns: i64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".into(),
    }
}

/// A rate ratio where either side may have passed every step it ran (top of the ladder, or the
/// generator fell short), so that its true limit is only known to be at least what was measured.
fn rate_ratio(v: Option<(f64, bool)>, base: Option<(f64, bool)>) -> String {
    match (v, base) {
        (Some((_, true)), Some((_, true))) => "both limits unknown".into(),
        (Some((v, at_top)), Some((b, base_at_top))) if b > 0.0 => {
            let bound = match (at_top, base_at_top) {
                (true, false) => ">= ",
                (false, true) => "<= ",
                _ => "",
            };
            format!("{bound}{:.2}x", v / b)
        }
        _ => "-".into(),
    }
}

fn render(
    plan: &Plan,
    runs: &[Run],
    cmdlines: &[(&'static str, String)],
    notes: &[String],
    took: Duration,
    noise: &str,
) -> String {
    let mut o = String::new();
    let cpu_rate = fmt_rate(plan.cpu_rate);
    let top = *plan.rates.last().expect("plan has rates");
    let _ = writeln!(
        o,
        "## bench forward: plain RTP relaying, 172-byte packets\n"
    );
    let _ = writeln!(
        o,
        "| relay | calls | max rate <1% loss | delivered pps | loss at next step | CPU ns/pkt @{cpu_rate} | CPU ns/pkt @max | added latency p50 / p99 (us) | mangled / reordered | pps vs rtpengine | CPU @{cpu_rate} vs rtpengine |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let rtpe = |calls: u32| {
        runs.iter()
            .find(|r| r.relay == "rtpengine" && r.calls == calls && r.error.is_none())
    };
    for r in runs {
        if let Some(row) = r.failed_row(11) {
            let _ = writeln!(o, "{row}");
            continue;
        }
        let best = r.best();
        let max_rate = r.max_rate_cell(top, plan.rates[0], "generator short");
        let delivered = best.map_or("-".into(), |s| fmt_int(s.report.delivered_pps()));
        let next = r.first_failure().map_or("-".into(), |s| {
            format!(
                "{:.1}% @{}",
                s.report.loss() * 100.0,
                fmt_rate(s.report.rate)
            )
        });
        let cpu_mod = r.at_rate(plan.cpu_rate).and_then(Step::cpu_per_packet);
        let cpu_max = best.and_then(Step::cpu_per_packet);
        let lat = match (&r.direct, &r.through) {
            (Some(d), Some(t)) if t.count > 0 => format!(
                "{} / {}",
                us(t.p50_ns as i64 - d.p50_ns as i64),
                us(t.p99_ns as i64 - d.p99_ns as i64)
            ),
            _ => "-".into(),
        };
        let mangled: u64 = r.reports().map(|x| x.mangled).sum();
        let reordered: u64 = r.reports().map(|x| x.reordered).sum();
        let base = rtpe(r.calls);
        // (rate, whether the relay's limit lies above it: no step failed on loss)
        let rate_of = |run: &Run| {
            run.best()
                .map(|s| (s.report.delivered_pps(), run.first_failure().is_none()))
        };
        let base_pps = base.and_then(rate_of);
        let is_base = r.relay == "rtpengine";
        let base_cpu = base
            .and_then(|b| b.at_rate(plan.cpu_rate))
            .and_then(Step::cpu_per_packet);
        let _ = writeln!(
            o,
            "| {} | {} | {max_rate} | {delivered} | {next} | {} | {} | {lat} | {mangled} / {reordered} | {} | {} |",
            r.relay,
            r.calls,
            cpu_mod.map_or("-".into(), fmt_int),
            cpu_max.map_or("-".into(), fmt_int),
            if is_base {
                "base".into()
            } else {
                rate_ratio(rate_of(r), base_pps)
            },
            if is_base {
                "base".into()
            } else {
                ratio(cpu_mod, base_cpu)
            },
        );
    }

    let _ = writeln!(o, "\n### Latency detail (one-way, us)\n");
    let _ = writeln!(
        o,
        "| relay | calls | direct p50 / p99 | through relay p50 / p99 / max | probes lost |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|");
    for r in runs {
        if let (Some(d), Some(t)) = (&r.direct, &r.through) {
            let _ = writeln!(
                o,
                "| {} | {} | {} / {} | {} / {} / {} | {} + {} |",
                r.relay,
                r.calls,
                us(d.p50_ns as i64),
                us(d.p99_ns as i64),
                us(t.p50_ns as i64),
                us(t.p99_ns as i64),
                us(t.max_ns as i64),
                d.lost,
                t.lost
            );
        }
    }

    let _ = writeln!(o, "\n### How it was measured\n");
    let rates: Vec<String> = plan.rates.iter().map(|&r| fmt_rate(r)).collect();
    let _ = writeln!(
        o,
        "- Ladder (pps, all calls together, equal share per call, one direction caller -> relay -> callee): {}; {:.1} s per step; stops at the first step with >= 1% loss in two runs in a row. A step counts only if the generator sent >= {:.0}% of the offered rate (up to {STEP_TRIES} tries).",
        rates.join(", "),
        plan.step_secs,
        MIN_SEND_SHARE * 100.0
    );
    let _ = writeln!(
        o,
        "- CPU: the relay process's on-CPU time, all threads (/proc/PID/task/*/schedstat), over each step, divided by packets delivered intact. `@max` is at the highest passing step."
    );
    let _ = writeln!(
        o,
        "- Latency: {} probes per path, one in flight, 1 ms apart, CLOCK_MONOTONIC send time in the payload; added = through relay minus direct socket-to-socket, per percentile.",
        plan.latency_samples
    );
    let _ = writeln!(
        o,
        "- Load generator: its own process; one caller socket sends sendmmsg batches of 32 on a timerfd (each message addressed to its call's relay port), one callee socket per call receives with recvmmsg and checks every packet's RTP header and payload."
    );
    let _ = writeln!(
        o,
        "- Threads: rtpengine --num-threads={} (its other housekeeping threads are counted too); sluice's userspace path is one thread; baseline is one thread.",
        plan.rtpengine_threads
    );
    for (name, cmd) in cmdlines {
        let _ = writeln!(o, "- `{name}`: `{cmd}`");
    }
    for n in notes {
        let _ = writeln!(o, "- {n}");
    }
    let _ = writeln!(
        o,
        "- Machine: {}; run took {:.0} s. Other work on the machine skews the figures: {}.",
        machine(),
        took.as_secs_f64(),
        noise
    );

    render_warnings(&mut o, runs);
    o
}

fn render_warnings(o: &mut String, runs: &[Run]) {
    let mut warnings = Vec::new();
    for r in runs {
        if let Some(e) = &r.error {
            let who = match r.calls {
                0 => r.relay.to_string(),
                n => format!("{} calls={n}", r.relay),
            };
            warnings.push(format!("{who}: {}", e.replace('\n', " / ")));
        }
        if let Some(h) = &r.harness_limited {
            warnings.push(format!(
                "{} calls={}: the generator sent only {} of {} pps; the relay's limit lies above what was measured",
                r.relay,
                r.calls,
                fmt_int(h.sent_pps()),
                fmt_int(h.rate as f64)
            ));
        }
        let late: u64 = r.reports().map(|x| x.late).sum();
        if late > 0 {
            warnings.push(format!(
                "{} calls={}: {late} packets arrived after their step ended",
                r.relay, r.calls
            ));
        }
    }
    if !warnings.is_empty() {
        let _ = writeln!(o, "\n### Warnings\n");
        for w in warnings {
            let _ = writeln!(o, "- {w}");
        }
    }
}

/// rtpengine says in its log when it hit its per-socket read limit; that is where its loss
/// comes from, worth a line next to the numbers.
fn rtpengine_log_notes(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let over = text
        .matches("Too many packets in UDP receive queue")
        .count();
    let discard = text.matches("discarding packet").count();
    (over + discard > 0).then(|| {
        format!(
            "rtpengine logged \"Too many packets in UDP receive queue (more than 50), aborting \
             loop\" {over}x and \"UDP receive queue exceeded 5 times: discarding packet\" \
             {discard}x. That is its overload cliff: a socket with more than 50 packets queued at \
             one wakeup earns a strike, and after 5 strikes it discards everything until the \
             call ends (stream_fd_readable in its daemon/media_socket.c)"
        )
    })
}

/// (all jiffies, steal jiffies) from the first line of /proc/stat: on a VM, time the host gave
/// this machine's vCPUs to someone else still counts as on-CPU time of the relay that was
/// running, so steal inflates CPU per packet and is worth reporting beside it.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((fields.iter().take(8).sum(), *fields.get(7)?))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    // Online CPUs, not this thread's affinity (--netns pins the bench to one).
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0);
    format!(
        "{model}, {cpus} CPUs, Linux {}",
        read("/proc/sys/kernel/osrelease").trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rate: u32, sent: u64, received: u64) -> Step {
        Step {
            report: LoadReport {
                rate,
                secs: 1.0,
                sent,
                received,
                ..Default::default()
            },
            cpu_ns: received * 3000,
            ..Default::default()
        }
    }

    #[test]
    fn ladder_verdicts() {
        let run = Run {
            steps: vec![
                step(10_000, 10_000, 10_000),
                step(20_000, 20_000, 19_900),
                step(40_000, 40_000, 30_000),
            ],
            ..Default::default()
        };
        assert_eq!(run.best().unwrap().report.rate, 20_000);
        assert_eq!(run.first_failure().unwrap().report.rate, 40_000);
        assert_eq!(run.at_rate(20_000).unwrap().cpu_per_packet(), Some(3000.0));
        // A failed step is no basis for comparing CPU per packet at its rate.
        assert!(run.at_rate(40_000).is_none());
        // A generator shortfall is neither a pass nor the relay's failure.
        let short = Run {
            steps: vec![step(10_000, 10_000, 10_000), step(20_000, 15_000, 15_000)],
            ..Default::default()
        };
        assert_eq!(short.best().unwrap().report.rate, 10_000);
        assert!(short.first_failure().is_none());
    }

    #[test]
    fn report_cells_for_max_rate_and_failed_runs() {
        let passed_all = Run {
            steps: vec![step(10_000, 10_000, 10_000), step(40_000, 40_000, 40_000)],
            ..Default::default()
        };
        assert_eq!(
            passed_all.max_rate_cell(40_000, 10_000, "x"),
            ">= 40k (top of ladder)"
        );
        let stopped = Run {
            steps: vec![step(10_000, 10_000, 10_000), step(20_000, 20_000, 10_000)],
            ..Default::default()
        };
        assert_eq!(stopped.max_rate_cell(40_000, 10_000, "x"), "10k");
        let short = Run {
            steps: vec![step(10_000, 10_000, 10_000)],
            harness_limited: Some(step(20_000, 12_000, 12_000).report),
            ..Default::default()
        };
        assert_eq!(
            short.max_rate_cell(40_000, 10_000, "harness limit"),
            ">= 10k (harness limit at 20k)"
        );
        let none = Run {
            steps: vec![step(10_000, 10_000, 0)],
            ..Default::default()
        };
        assert_eq!(none.max_rate_cell(40_000, 10_000, "x"), "< 10k");
        assert_eq!(none.failed_row(11), None, "it has steps to report");

        let failed = Run {
            relay: "rtpengine",
            calls: 100,
            error: Some("cannot start | exit 1\nmore".into()),
            ..Default::default()
        };
        let row = failed.failed_row(11).unwrap();
        assert_eq!(
            row,
            "| rtpengine | 100 | failed: cannot start / exit 1 | | | | | | | | |"
        );
        assert_eq!(row.matches('|').count(), 12, "11 cells");
    }

    #[test]
    fn a_step_fails_only_twice_in_a_row() {
        let mut once = None;
        let (v, done) = judge(step(40_000, 40_000, 30_000), 1, &mut once);
        assert_eq!((v, done.is_none()), (Verdict::Confirming, true));
        // Passing the second time records the passing run.
        let (v, done) = judge(step(40_000, 40_000, 40_000), 2, &mut once);
        assert_eq!(v, Verdict::Passed);
        assert_eq!(done.unwrap().report.received, 40_000);

        let mut once = None;
        judge(step(40_000, 40_000, 30_000), 1, &mut once);
        let (v, done) = judge(step(40_000, 40_000, 0), 2, &mut once);
        assert_eq!(v, Verdict::Confirmed);
        assert_eq!(
            done.unwrap().report.received,
            30_000,
            "the onset is recorded"
        );
    }

    #[test]
    fn generator_shortfalls_are_retried_then_reported() {
        let mut once = None;
        for attempt in 1..STEP_TRIES {
            let (v, done) = judge(step(400_000, 300_000, 300_000), attempt, &mut once);
            assert_eq!((v, done.is_none()), (Verdict::TryAgain, true));
        }
        let (v, done) = judge(step(400_000, 300_000, 300_000), STEP_TRIES, &mut once);
        assert_eq!(v, Verdict::HarnessLimited);
        assert!(!done.unwrap().sent_in_full());

        // A loss failure followed by shortfalls stays a loss failure.
        let mut once = None;
        judge(step(40_000, 40_000, 30_000), 1, &mut once);
        judge(step(40_000, 30_000, 30_000), 2, &mut once);
        let (v, done) = judge(step(40_000, 30_000, 30_000), 3, &mut once);
        assert_eq!(v, Verdict::Failed);
        assert_eq!(done.unwrap().report.sent, 40_000);
    }

    #[test]
    fn callee_ring_drops_are_the_harness_s() {
        let mut once = None;
        let ringed = |drops| Step {
            ring_drops: Some(drops),
            ..step(400_000, 400_000, 390_000)
        };
        // 10,000 lost, 9,000 of them in the callee ring: the relay lost 0.25%.
        let (v, _) = judge(ringed(9_000), 1, &mut once);
        assert_eq!(v, Verdict::TryAgain);
        let (v, done) = judge(ringed(9_000), STEP_TRIES, &mut once);
        assert_eq!(v, Verdict::HarnessLimited);
        assert!(!done.unwrap().relay_failed());
        // Only 1,000 in the ring: the relay's own loss is 2.25%.
        let (v, _) = judge(ringed(1_000), 1, &mut once);
        assert_eq!(v, Verdict::Confirming);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_int(1234567.4), "1,234,567");
        assert_eq!(fmt_int(999.0), "999");
        assert_eq!(fmt_rate(20_000), "20k");
        assert_eq!(ratio(Some(3.0), Some(6.0)), "0.50x");
        assert_eq!(ratio(Some(3.0), None), "-");
        assert_eq!(
            rate_ratio(Some((2.0, true)), Some((1.0, false))),
            ">= 2.00x"
        );
        assert_eq!(
            rate_ratio(Some((1.0, false)), Some((2.0, true))),
            "<= 0.50x"
        );
        assert_eq!(
            rate_ratio(Some((2.0, true)), Some((2.0, true))),
            "both limits unknown"
        );
    }
}
