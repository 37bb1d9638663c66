//! `cargo xtask bench bridge`: plain RTP from a caller, relayed as SDES-SRTP
//! (AES_CM_128_HMAC_SHA1_80) to the callee, through sluice's userspace path (`--xdp off`) and
//! through rtpengine in userspace, side by side (issue 4, "Benchmark").
//!
//! Loopback only: one caller socket sends 172-byte RTP packets (12-byte header, 160 bytes of
//! payload) round-robin to every call's relay port at a paced rate; one callee socket counts
//! what arrives and checks that every packet is 182 bytes (the 10-byte HMAC-SHA1-80 tag added
//! by SRTP). Relay CPU is the relay process's, all threads, from /proc/PID/task/*/schedstat.
//! The harness is self-contained (it does not use the `bench forward` load generator, whose
//! checker expects the packets unchanged).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::child::Proc;
use crate::netns::Placement;
use crate::proc_cpu::process_cpu_ns;
use crate::relays::{NgClient, SluiceProc, free_port, spawn_rtpengine, start_sluice};
use crate::sdp;
use crate::sys::{RecvBatch, bind_loopback, local_v4, poll_readable, set_buffer};
use sluice_control::ng::bencode::Value;
use sluice_relay::mmsg::SendBatch;

const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
const RTP_LEN: usize = 172;
/// SRTP adds the 10-byte authentication tag of HMAC-SHA1-80 (AES-CM keeps the length).
const SRTP_LEN: usize = RTP_LEN + 10;
const LOSS_LIMIT: f64 = 0.01;
const MIN_SEND_SHARE: f64 = 0.95;
const RTPENGINE_PORTS: (u16, u16) = (20_000, 23_999);
const SLUICE_PORTS: (u16, u16) = (24_000, 27_999);
const BATCH: usize = 64;

#[derive(clap::Args, Debug)]
pub struct BridgeArgs {
    /// Numbers of concurrent calls; the offered rate is shared equally among them.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    calls: Vec<u32>,
    /// Offered rates (packets/s), climbed until loss reaches 1%.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "20000,50000,100000,150000,200000,300000,400000"
    )]
    rates: Vec<u32>,
    /// The rate at which CPU per packet is compared (must be one of --rates).
    #[arg(long, default_value_t = 20_000)]
    cpu_rate: u32,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 1.0)]
    step_secs: f64,
    /// rtpengine's --num-threads (1 matches sluice's single userspace worker).
    #[arg(long, default_value_t = 1)]
    rtpengine_threads: u32,
    /// The rtpengine executable (default: /usr/bin/rtpengine).
    #[arg(long, default_value = "/usr/bin/rtpengine")]
    rtpengine: PathBuf,
    /// The sluice executable (default: target/release/sluice).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask lives inside the workspace")
                .join("target")
        })
}

/// A relay that bridges plain RTP (caller) to SDES-SRTP (callee).
trait Bridge {
    fn name(&self) -> &'static str;
    fn cmdline(&self) -> String;
    fn pid(&self) -> u32;
    /// One call per index, all from `caller` to `callee`; returns where the caller sends.
    fn setup(
        &mut self,
        run: u32,
        calls: u32,
        caller: SocketAddrV4,
        callee: SocketAddrV4,
    ) -> Result<Vec<SocketAddrV4>>;
    fn teardown(&mut self) -> Result<()>;
    fn ensure_running(&mut self) -> Result<()>;
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// The callee's SRTP answer: RTP/SAVP with one crypto line answering the relay's offered `tag`.
fn srtp_answer(session: u64, at: SocketAddrV4, tag: u32) -> String {
    srtp_answer_with_key(session, at, tag, &rand::random())
}

/// `srtp_answer` with the callee's master key and salt given (the sender needs it to protect).
pub(crate) fn srtp_answer_with_key(
    session: u64,
    at: SocketAddrV4,
    tag: u32,
    key: &[u8; 30],
) -> String {
    sdp::audio(session, at).replace("RTP/AVP", "RTP/SAVP")
        + &format!("a=crypto:{tag} {SUITE} inline:{}\r\n", b64(key))
}

/// The tag of the relay's offered AES_CM_128_HMAC_SHA1_80 crypto line.
pub(crate) fn offered_tag(sdp: &str) -> Result<u32> {
    if !sdp.contains("RTP/SAVP") {
        bail!("the relay's offer towards the callee is not RTP/SAVP:\n{sdp}");
    }
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=crypto:"))
        .find(|l| l.split_whitespace().nth(1) == Some(SUITE))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {SUITE} a=crypto line in the relay's offer:\n{sdp}"))
}

// ---------------------------------------------------------------------------------------------

struct Sluice {
    proc: Proc,
    cmdline: String,
    rt: tokio::runtime::Runtime,
    client: sluice_control::proto::control_client::ControlClient<tonic::transport::Channel>,
    calls: Vec<(String, String)>,
}

impl Sluice {
    fn start(exe: &std::path::Path, log: &std::path::Path) -> Result<Self> {
        use sluice_control::config::ControlAddr;
        if !exe.is_file() {
            bail!(
                "{} does not exist (cargo build --release -p sluice-control)",
                exe.display()
            );
        }
        let control = ControlAddr::Tcp((Ipv4Addr::LOCALHOST, free_port()?).into());
        let mut cmd = Command::new(exe);
        cmd.args([
            "run",
            "--control",
            &control.to_string(),
            "--media-ip",
            "127.0.0.1",
        ])
        .args(["--ports", &format!("{}-{}", SLUICE_PORTS.0, SLUICE_PORTS.1)])
        .args(["--log-level", "warn", "--xdp", "off"]);
        let SluiceProc {
            proc,
            cmdline,
            rt,
            client,
        } = start_sluice("sluice", cmd, &control, log)?;
        Ok(Self {
            proc,
            cmdline,
            rt,
            client,
            calls: Vec::new(),
        })
    }
}

impl Bridge for Sluice {
    fn name(&self) -> &'static str {
        "sluice (--xdp off)"
    }
    fn cmdline(&self) -> String {
        self.cmdline.clone()
    }
    fn pid(&self) -> u32 {
        self.proc.pid()
    }
    fn setup(
        &mut self,
        run: u32,
        calls: u32,
        caller: SocketAddrV4,
        callee: SocketAddrV4,
    ) -> Result<Vec<SocketAddrV4>> {
        use sluice_control::proto::{AnswerRequest, LegOptions, OfferRequest, Srtp};
        let mut dests = Vec::new();
        for i in 0..calls {
            let call_id = format!("bridge-{run}-{i}");
            let offer = OfferRequest {
                call_id: call_id.clone(),
                from_tag: format!("caller-{i}"),
                sdp: sdp::audio(i as u64, caller),
                options: Some(LegOptions {
                    srtp: Srtp::Offer as i32,
                    ..Default::default()
                }),
            };
            let offer_sdp = self
                .rt
                .block_on(self.client.offer(offer))
                .context("sluice Offer")?
                .into_inner()
                .sdp;
            self.calls.push((call_id.clone(), format!("caller-{i}")));
            let tag = offered_tag(&offer_sdp)?;
            let answer = AnswerRequest {
                call_id,
                from_tag: format!("caller-{i}"),
                to_tag: format!("callee-{i}"),
                sdp: srtp_answer(i as u64, callee, tag),
                ..Default::default()
            };
            let answer_sdp = self
                .rt
                .block_on(self.client.answer(answer))
                .context("sluice Answer")?
                .into_inner()
                .sdp;
            dests.push(sdp::audio_destination(&answer_sdp)?);
        }
        Ok(dests)
    }
    fn teardown(&mut self) -> Result<()> {
        use sluice_control::proto::DeleteRequest;
        for (call_id, from_tag) in std::mem::take(&mut self.calls) {
            let req = DeleteRequest {
                call_id,
                from_tag,
                ..Default::default()
            };
            self.rt
                .block_on(self.client.delete(req))
                .context("sluice Delete")?;
        }
        Ok(())
    }
    fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }
}

// ---------------------------------------------------------------------------------------------

struct Rtpengine {
    proc: Proc,
    cmdline: String,
    ng: NgClient,
    calls: Vec<(String, String)>,
}

impl Rtpengine {
    fn start(exe: &std::path::Path, threads: u32, log: &std::path::Path) -> Result<Self> {
        if !exe.is_file() {
            bail!("rtpengine not found at {}", exe.display());
        }
        let (proc, cmdline, ng) = spawn_rtpengine(
            exe,
            RTPENGINE_PORTS,
            threads,
            Ipv4Addr::LOCALHOST,
            &Placement::default(),
            log,
        )?;
        Ok(Self {
            proc,
            cmdline,
            ng,
            calls: Vec::new(),
        })
    }

    fn request(&mut self, cmd: &Value) -> Result<Value> {
        self.ng.command(cmd)
    }
}

impl Bridge for Rtpengine {
    fn name(&self) -> &'static str {
        "rtpengine (userspace)"
    }
    fn cmdline(&self) -> String {
        self.cmdline.clone()
    }
    fn pid(&self) -> u32 {
        self.proc.pid()
    }
    fn setup(
        &mut self,
        run: u32,
        calls: u32,
        caller: SocketAddrV4,
        callee: SocketAddrV4,
    ) -> Result<Vec<SocketAddrV4>> {
        let mut dests = Vec::new();
        for i in 0..calls {
            let call_id = format!("bridge-{run}-{i}");
            let from_tag = format!("caller-{i}");
            let offer = self.request(&Value::dict([
                ("command", Value::str("offer")),
                ("call-id", Value::str(&call_id)),
                ("from-tag", Value::str(&from_tag)),
                ("transport-protocol", Value::str("RTP/SAVP")),
                ("sdp", Value::str(&sdp::audio(i as u64, caller))),
            ]))?;
            self.calls.push((call_id.clone(), from_tag.clone()));
            let tag = offered_tag(&offer.get_str("sdp").unwrap_or_default())?;
            let answer = self.request(&Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str(&call_id)),
                ("from-tag", Value::str(&from_tag)),
                ("to-tag", Value::str(&format!("callee-{i}"))),
                ("sdp", Value::str(&srtp_answer(i as u64, callee, tag))),
            ]))?;
            dests.push(sdp::audio_destination(
                &answer.get_str("sdp").unwrap_or_default(),
            )?);
        }
        Ok(dests)
    }
    fn teardown(&mut self) -> Result<()> {
        for (call_id, from_tag) in std::mem::take(&mut self.calls) {
            self.request(&Value::dict([
                ("command", Value::str("delete")),
                ("call-id", Value::str(&call_id)),
                ("from-tag", Value::str(&from_tag)),
            ]))?;
        }
        Ok(())
    }
    fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }
}

// ---------------------------------------------------------------------------------------------

/// Callee-side counters, kept by a receiver thread for the whole run.
#[derive(Default)]
struct Counts {
    srtp: AtomicU64,
    other: AtomicU64,
    stop: AtomicBool,
}

fn receiver(sock: UdpSocket, counts: Arc<Counts>) {
    let mut batch = RecvBatch::new(BATCH);
    let fd = sock.as_raw_fd();
    while !counts.stop.load(Ordering::Relaxed) {
        let _ = poll_readable(fd, Duration::from_millis(20));
        while let Ok(n) = batch.recv(fd) {
            if n == 0 {
                break;
            }
            let srtp = (0..n)
                .filter(|&i| batch.packet(i).len() == SRTP_LEN)
                .count();
            counts.srtp.fetch_add(srtp as u64, Ordering::Relaxed);
            counts.other.fetch_add((n - srtp) as u64, Ordering::Relaxed);
        }
    }
}

/// Per-call RTP state of the caller.
struct Caller {
    sock: UdpSocket,
    dests: Vec<SocketAddrV4>,
    seq: Vec<u16>,
    next: usize,
    bufs: Vec<[u8; RTP_LEN]>,
    batch: SendBatch,
}

impl Caller {
    fn new(sock: UdpSocket, dests: Vec<SocketAddrV4>) -> Self {
        let n = dests.len();
        Self {
            sock,
            dests,
            seq: vec![0; n],
            next: 0,
            bufs: vec![[0u8; RTP_LEN]; BATCH],
            batch: SendBatch::new(BATCH),
        }
    }

    /// Sends up to `want` (at most BATCH) packets round-robin over the calls; returns how many.
    fn send(&mut self, want: usize) -> Result<usize> {
        let want = want.min(BATCH);
        let mut to = Vec::with_capacity(want);
        for buf in self.bufs.iter_mut().take(want) {
            let c = self.next;
            self.next = (self.next + 1) % self.dests.len();
            let seq = self.seq[c];
            self.seq[c] = seq.wrapping_add(1);
            buf[0] = 0x80;
            buf[1] = 0; // PCMU
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[4..8].copy_from_slice(&(seq as u32 * 160).to_be_bytes());
            buf[8..12].copy_from_slice(&(0x5100_0000 + c as u32).to_be_bytes());
            to.push(self.dests[c]);
        }
        let fd = self.sock.as_raw_fd();
        let pkts = self.bufs.iter().map(|b| &b[..]).zip(to);
        Ok(self.batch.send(fd, pkts)?)
    }
}

struct Step {
    rate: u32,
    sent: u64,
    received: u64,
    wrong_len: u64,
    secs: f64,
    cpu_ns: u64,
}

impl Step {
    fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.sent.max(1) as f64
    }
    fn passed(&self) -> bool {
        self.loss() < LOSS_LIMIT && self.sent_in_full() && self.wrong_len == 0
    }
    fn sent_in_full(&self) -> bool {
        self.sent as f64 / self.secs >= MIN_SEND_SHARE * self.rate as f64
    }
    fn ns_per_pkt(&self) -> f64 {
        self.cpu_ns as f64 / self.received.max(1) as f64
    }
}

fn run_step(
    relay: &dyn Bridge,
    caller: &mut Caller,
    counts: &Counts,
    rate: u32,
    secs: f64,
) -> Result<Step> {
    let rx0 = (
        counts.srtp.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed),
    );
    let cpu0 = process_cpu_ns(relay.pid())?;
    let start = Instant::now();
    let mut sent = 0u64;
    let dur = Duration::from_secs_f64(secs);
    loop {
        let el = start.elapsed();
        if el >= dur {
            break;
        }
        let due = (rate as f64 * el.as_secs_f64()) as u64;
        if due > sent {
            sent += caller.send((due - sent) as usize)? as u64;
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // Drain what is still queued in the relay.
    std::thread::sleep(Duration::from_millis(150));
    let cpu1 = process_cpu_ns(relay.pid())?;
    Ok(Step {
        rate,
        sent,
        received: counts.srtp.load(Ordering::Relaxed) - rx0.0,
        wrong_len: counts.other.load(Ordering::Relaxed) - rx0.1,
        secs,
        cpu_ns: cpu1 - cpu0,
    })
}

struct Run {
    relay: &'static str,
    calls: u32,
    verified: String,
    steps: Vec<Step>,
}

fn measure(
    relay: &mut dyn Bridge,
    run: u32,
    calls: u32,
    args: &BridgeArgs,
    rates: &[u32],
) -> Result<Run> {
    let caller_sock = bind_loopback()?;
    set_buffer(&caller_sock, false, 8 << 20);
    let callee_sock = bind_loopback()?;
    set_buffer(&callee_sock, true, 16 << 20);
    let callee = local_v4(&callee_sock)?;
    let counts = Arc::new(Counts::default());
    let rx = {
        let counts = counts.clone();
        std::thread::spawn(move || receiver(callee_sock, counts))
    };
    let result = (|| -> Result<Run> {
        let dests = relay.setup(run, calls, local_v4(&caller_sock)?, callee)?;
        let mut caller = Caller::new(caller_sock, dests);
        // One packet per call first: every call must come out as SRTP (+10 bytes).
        let mut left = calls as usize;
        while left > 0 {
            left -= caller.send(left)?;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while counts.srtp.load(Ordering::Relaxed) + counts.other.load(Ordering::Relaxed)
            < calls as u64
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (s, o) = (
            counts.srtp.load(Ordering::Relaxed),
            counts.other.load(Ordering::Relaxed),
        );
        if s != calls as u64 || o != 0 {
            bail!(
                "{}: single-packet check: sent 1 x {RTP_LEN} B per call to {calls} calls, got \
                 {s} of {SRTP_LEN} B and {o} of another length",
                relay.name()
            );
        }
        let verified = format!(
            "1 packet per call: {s}/{calls} arrived as {SRTP_LEN} B (RTP {RTP_LEN} B + 10 B tag)"
        );
        eprintln!("[bench bridge] {} x{calls}: {verified}", relay.name());
        // Warm-up.
        run_step(relay, &mut caller, &counts, 5_000, 0.3)?;
        let mut steps = Vec::new();
        for &rate in rates {
            relay.ensure_running()?;
            let step = run_step(relay, &mut caller, &counts, rate, args.step_secs)?;
            eprintln!(
                "[bench bridge] {} x{calls} {rate} pps: sent {} recv {} (wrong length {}) loss \
                 {:.2}% cpu {:.0} ns/pkt",
                relay.name(),
                step.sent,
                step.received,
                step.wrong_len,
                100.0 * step.loss(),
                step.ns_per_pkt()
            );
            let stop = !step.passed() && rate > args.cpu_rate;
            steps.push(step);
            if stop {
                break;
            }
        }
        Ok(Run {
            relay: relay.name(),
            calls,
            verified,
            steps,
        })
    })();
    counts.stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
    let torn = relay.teardown();
    let r = result?;
    torn?;
    Ok(r)
}

pub fn run(args: BridgeArgs) -> Result<()> {
    let mut rates = args.rates.clone();
    rates.push(args.cpu_rate);
    rates.sort_unstable();
    rates.dedup();
    if args.calls.iter().any(|&c| c == 0 || c > 900) || !(0.2..=10.0).contains(&args.step_secs) {
        bail!("calls must be within 1..=900 and --step-secs within 0.2..=10");
    }
    let work = target_dir().join("bench-bridge");
    std::fs::create_dir_all(&work)?;
    let sluice_exe = args
        .sluice
        .clone()
        .unwrap_or_else(|| target_dir().join("release/sluice"));
    let started = Instant::now();
    let mut relays: Vec<Box<dyn Bridge>> = vec![
        Box::new(Sluice::start(&sluice_exe, &work.join("sluice.log"))?),
        Box::new(Rtpengine::start(
            &args.rtpengine,
            args.rtpengine_threads,
            &work.join("rtpengine.log"),
        )?),
    ];
    let mut runs = Vec::new();
    for (n, &calls) in args.calls.iter().enumerate() {
        for relay in relays.iter_mut() {
            runs.push(measure(relay.as_mut(), n as u32, calls, &args, &rates)?);
        }
    }
    let report = report(&args, &relays, &runs, started.elapsed());
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::File::create(out)?.write_all(report.as_bytes())?;
    }
    Ok(())
}

fn report(args: &BridgeArgs, relays: &[Box<dyn Bridge>], runs: &[Run], took: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## RTP -> SDES-SRTP ({SUITE}) bridging, loopback\n\n\
         {RTP_LEN}-byte RTP in from the caller, {SRTP_LEN}-byte SRTP out to the callee; \
         {:.1} s per step, loss limit 1%; CPU = relay process, all threads \
         (/proc/PID/task/*/schedstat), over the step and a 150 ms drain. Run took {:.0} s.\n",
        args.step_secs,
        took.as_secs_f64()
    );
    for r in relays {
        let _ = writeln!(s, "- {}: `{}`", r.name(), r.cmdline());
    }
    let _ = writeln!(
        s,
        "\n| relay | calls | CPU ns/pkt @ {} pps | max pps <1% loss | pkts per CPU-s @ {} | \
         sluice/rtpengine (pkts per CPU-s) |\n|---|---|---|---|---|---|",
        args.cpu_rate, args.cpu_rate
    );
    for r in runs {
        let at = r.steps.iter().find(|st| st.rate == args.cpu_rate);
        let ns = at.map(Step::ns_per_pkt);
        let best = r.steps.iter().take_while(|st| st.passed()).last();
        let limit = match (best, r.steps.last()) {
            (Some(b), Some(l)) if l.passed() => {
                format!("≥ {:.0} (ladder top)", b.received as f64 / b.secs)
            }
            (Some(b), _) => format!("{:.0}", b.received as f64 / b.secs),
            (None, _) => "< lowest step".into(),
        };
        let ratio = if r.relay.starts_with("sluice") {
            runs.iter()
                .find(|o| o.calls == r.calls && o.relay.starts_with("rtpengine"))
                .and_then(|o| o.steps.iter().find(|st| st.rate == args.cpu_rate))
                .zip(ns)
                .map(|(o, ns)| format!("{:.2}x", o.ns_per_pkt() / ns))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.relay,
            r.calls,
            ns.map_or("-".into(), |v| format!("{v:.0}")),
            limit,
            ns.map_or("-".into(), |v| format!("{:.0}", 1e9 / v)),
            ratio
        );
    }
    let _ = writeln!(
        s,
        "\nSteps (offered pps: delivered pps, loss, CPU ns/pkt):\n"
    );
    for r in runs {
        let _ = write!(s, "- {} x{} ({}):", r.relay, r.calls, r.verified);
        for st in &r.steps {
            let _ = write!(
                s,
                " {}k: {:.0}, {:.2}%, {:.0}{};",
                st.rate / 1000,
                st.received as f64 / st.secs,
                100.0 * st.loss(),
                st.ns_per_pkt(),
                if st.sent_in_full() {
                    ""
                } else {
                    " (harness short)"
                }
            );
        }
        let _ = writeln!(s);
    }
    s
}
