//! `cargo xtask bench sip`: SIP calls per second through sluice's B2BUA, side by side with
//! Kamailio (stateful proxy, record-route) + rtpengine, after RFC 7502's basic session setup:
//! the highest call rate sustained for a fixed window with zero failed calls, SIPp UAC ->
//! system under test -> SIPp UAS, and the CPU of the system's processes per call.
//!
//! Two modes, each a ladder of rates, each step a fresh SIPp pair, the systems interleaved at
//! every rate (sluice step, then Kamailio step):
//! - media: tests/sipp/uac_rr_pcma.xml (sip-tester's g711a.pcap played into the call for the
//!   hold time) to tests/sipp/uas_rr_pcma.xml with `-rtp_echo`, so RTP crosses the relay both
//!   ways. sluice (one process: B2BUA + relay) against Kamailio with `rtpengine_manage()` +
//!   rtpengine (CPU of every Kamailio process and of rtpengine, apart and summed).
//! - signalling: no RTP. sluice with SIPp's built-in `-sn uac`/`-sn uas` (sluice still
//!   allocates its relay ports per call: the B2BUA always anchors media) against Kamailio alone
//!   (no rtpengine module) with the rr scenarios minus the pcap: the built-in `uac` ignores the
//!   route set and would send ACK and BYE past a record-routing proxy.
//!
//! A step passes when SIPp's caller exits 0 and its final statistics (`-trace_stat`) count
//! every call successful and none failed. A system's ladder stops at its first failing step;
//! a step that failed while other work on the (shared) machine took more than 15 % of its CPUs
//! is tried once more, and the report says so. Each step also reports the SIPp processes' CPU
//! and the CPU nobody in the bench used ("other load"), from /proc/stat.
//! Then a memory step: a fresh sluice with `--concurrent` calls up at once (signalling
//! scenario, hold = concurrent / rate), its RSS sampled against its idle RSS.

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::child::Proc;
use crate::netns::Placement;
use crate::proc_cpu::process_cpu_ns;
use crate::relays::{NgClient, SluiceProc, describe, free_port, spawn_rtpengine, start_sluice};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// RTP both ways through the relay (PCMA pcap from the caller, echoed by the callee).
    Media,
    /// SIP only: sluice B2BUA vs Kamailio proxy without rtpengine.
    Signalling,
}

#[derive(clap::Args)]
pub struct SipArgs {
    /// Call rates to step through, calls per second (each step a fresh SIPp run per system).
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400")]
    rates: Vec<u32>,
    /// Seconds of new calls per step (SIPp -m RATE*DURATION).
    #[arg(long, default_value_t = 30)]
    duration: u32,
    /// Hold time of every call, ms between ACK and BYE (RTP flows during it in media mode).
    #[arg(long, default_value_t = 2000)]
    hold_ms: u32,
    /// Which ladders to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "media,signalling"
    )]
    modes: Vec<Mode>,
    /// Memory step: about this many sluice calls up at once (0: no memory step).
    #[arg(long, default_value_t = 5000)]
    concurrent: u32,
    /// Call rate of the memory step; its hold time is concurrent / rate.
    #[arg(long, default_value_t = 250)]
    concurrent_rate: u32,
    /// Kamailio's UDP worker processes (`children=`).
    #[arg(long, default_value_t = 2)]
    kamailio_children: u32,
    /// rtpengine's media threads (--num-threads); 1 matches sluice's one relay thread.
    #[arg(long, default_value_t = 1)]
    rtpengine_threads: u32,
    /// SIPp's socket send and receive buffers (-buff_size), bytes.
    #[arg(long, default_value_t = 4 << 20)]
    sipp_buff: u32,
    /// The sluice executable (default: target/release/sluice, built first).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Do not run `cargo build --release -p sluice-control` first.
    #[arg(long)]
    no_build: bool,
    /// The rtpengine executable (default: rtpengine on PATH, /usr/bin, /usr/sbin).
    #[arg(long)]
    rtpengine: Option<PathBuf>,
    /// The kamailio executable (default: kamailio on PATH, /usr/sbin).
    #[arg(long)]
    kamailio: Option<PathBuf>,
    /// Also write the Markdown report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// sluice's relay ports start here, 4 per call (RTP and RTCP on both legs), below the kernel's
/// ephemeral range (32768-60999) where SIPp's and Kamailio's sockets live; at most 22,000
/// (5,500 calls), fewer where the open-file limit is lower (sluice warns when its ports would
/// not fit).
const SLUICE_PORT_LOW: u16 = 10_000;
const SLUICE_PORTS_MAX: u64 = 22_000;
/// rtpengine's: inside the ephemeral range (it skips ports it cannot bind); ~1,000 calls up at
/// 400 cps with a 2 s hold need 4,000.
const RTPENGINE_PORTS: (u16, u16) = (40_000, 49_999);
/// Open files for the children (sluice's 5,000 calls are 20,000 sockets).
const NOFILE: u64 = 65_536;
/// A call waiting longer than this for a message fails (SIPp -recv_timeout).
const RECV_TIMEOUT_MS: u32 = 10_000;
/// SIPp's own global timeout past the step's expected length, and ours past SIPp's.
const SIPP_SLACK_S: u32 = 30;
const KILL_SLACK: Duration = Duration::from_secs(15);
/// After the caller exits: CPU still counted (BYE transactions ending, deletes), then read.
const SETTLE: Duration = Duration::from_secs(1);
/// Kamailio's shared and private memory (MiB): its transactions stay 5 s after their final
/// reply, ~0.15 MiB per cps (shared/MEASURED.md).
const KAMAILIO_SHM_MB: u32 = 256;
const KAMAILIO_PKG_MB: u32 = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Sluice,
    Kamailio,
}

impl System {
    fn name(self, mode: Mode) -> &'static str {
        match (self, mode) {
            (System::Sluice, _) => "sluice B2BUA",
            (System::Kamailio, Mode::Media) => "Kamailio + rtpengine",
            (System::Kamailio, Mode::Signalling) => "Kamailio (proxy only)",
        }
    }
}

/// One SIPp run against one system at one rate.
struct Step {
    mode: Mode,
    system: System,
    rate: u32,
    /// Calls asked for (rate * duration).
    calls: u64,
    /// From SIPp's final statistics: calls created, successful, failed.
    created: u64,
    ok: u64,
    failed: u64,
    pass: bool,
    wall: Duration,
    /// CPU ns of the signalling process(es) and of the media process, where apart; sluice is
    /// one process: all of it in `sig_ns`.
    sig_ns: u64,
    media_ns: Option<u64>,
    /// Share of all CPUs busy over the step (every process on the machine).
    box_busy: Option<f64>,
    /// CPU ns of the SIPp caller and callee.
    harness_ns: u64,
    /// Share of all CPUs busy with neither the system nor SIPp (other work on the machine).
    other: Option<f64>,
    /// Why it failed, retransmissions, packets relayed...
    note: String,
}

impl Step {
    fn total_ns(&self) -> u64 {
        self.sig_ns + self.media_ns.unwrap_or(0)
    }
    /// CPU ms per call of the whole system (per call created).
    fn ms_per_call(&self) -> f64 {
        self.total_ns() as f64 / 1e6 / self.created.max(1) as f64
    }
    fn calls_per_cpu_s(&self) -> f64 {
        self.created as f64 / (self.total_ns().max(1) as f64 / 1e9)
    }
}

struct Memory {
    calls_wanted: u32,
    rate: u32,
    hold_ms: u32,
    idle_kib: u64,
    peak_kib: u64,
    /// The most calls up (sluice's Statistics) and relay ports held at any sample.
    calls_max: u64,
    ports_max: u64,
    /// Why fewer calls than --concurrent, if so.
    capped: Option<String>,
    after_kib: u64,
    ok: u64,
    failed: u64,
    note: String,
}

/// The peers found on this machine, and what is missing.
struct Tools {
    sipp: Option<PathBuf>,
    kamailio: Option<PathBuf>,
    rtpengine: Option<PathBuf>,
}

fn find_exe(given: Option<&Path>, name: &str) -> Option<PathBuf> {
    if let Some(p) = given {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Everything one run holds: the work directory, scenarios, and the systems' processes.
struct Bench<'a> {
    args: &'a SipArgs,
    sipp: PathBuf,
    work: PathBuf,
    /// The callee's SIP port, the same for every step (each step's UAS binds it afresh).
    uas_port: u16,
    /// The media caller scenario with the hold time, and its copy without RTP (Kamailio's
    /// signalling ladder), and the callee's.
    uac_media: PathBuf,
    uac_nomedia: PathBuf,
    uas_rr: PathBuf,
    step_no: u32,
}

pub fn run(args: SipArgs) -> Result<()> {
    ensure!(
        !args.rates.is_empty() && args.rates.iter().all(|&r| r > 0),
        "--rates needs positive rates"
    );
    ensure!(args.duration > 0, "--duration must be positive");
    ensure!(args.hold_ms > 0, "--hold-ms must be positive");
    let tools = Tools {
        sipp: find_exe(None, "sipp"),
        kamailio: find_exe(args.kamailio.as_deref(), "kamailio"),
        rtpengine: find_exe(args.rtpengine.as_deref(), "rtpengine"),
    };
    let Some(sipp) = tools.sipp.clone() else {
        println!("[bench sip] SIPp is not installed (Debian: apt-get install sip-tester)");
        bail!("nothing to measure without SIPp");
    };
    if tools.kamailio.is_none() {
        println!(
            "[bench sip] Kamailio is not installed (Debian: apt-get install kamailio): sluice alone"
        );
    }
    if tools.rtpengine.is_none() && args.modes.contains(&Mode::Media) {
        println!(
            "[bench sip] rtpengine is not installed (Debian: apt-get install rtpengine-daemon): \
             no Kamailio + rtpengine media ladder"
        );
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let exe = match &args.sluice {
        Some(p) => p.clone(),
        None => {
            if !args.no_build {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let mut cmd = Command::new(cargo);
                cmd.current_dir(&root)
                    .args(["build", "--release", "-p", "sluice-control"]);
                println!("[bench sip] {}", describe(&cmd));
                let status = cmd.status().context("running cargo build")?;
                ensure!(status.success(), "`{}` failed ({status})", describe(&cmd));
            }
            target.join("release").join("sluice")
        }
    };
    ensure!(
        exe.is_file(),
        "{} does not exist: cargo build --release -p sluice-control",
        exe.display()
    );
    let work = target.join("bench-sip");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let got = crate::netns::nofile_capacity(NOFILE);
    if got < NOFILE {
        println!("[bench sip] open files limited to {got} (wanted {NOFILE})");
    }

    // The scenarios: the repository's rr pair, the caller's pause set to the hold time.
    let scen = root.join("tests").join("sipp");
    let uac_src = std::fs::read_to_string(scen.join("uac_rr_pcma.xml"))
        .context("reading tests/sipp/uac_rr_pcma.xml")?;
    let pause = "<pause milliseconds=\"2500\"/>";
    ensure!(
        uac_src.contains(pause),
        "tests/sipp/uac_rr_pcma.xml no longer has `{pause}` to set the hold time in"
    );
    let uac_media_xml = uac_src.replace(
        pause,
        &format!("<pause milliseconds=\"{}\"/>", args.hold_ms),
    );
    let (Some(nop_at), Some(nop_end)) = (uac_media_xml.find("<nop>"), uac_media_xml.find("</nop>"))
    else {
        bail!("tests/sipp/uac_rr_pcma.xml no longer plays its pcap in a <nop>");
    };
    let uac_nomedia_xml = format!(
        "{}{}",
        &uac_media_xml[..nop_at],
        &uac_media_xml[nop_end + "</nop>".len()..]
    );
    let uac_media = work.join("uac_rr_pcma_hold.xml");
    let uac_nomedia = work.join("uac_rr_nomedia_hold.xml");
    std::fs::write(&uac_media, uac_media_xml)?;
    std::fs::write(&uac_nomedia, uac_nomedia_xml)?;

    let mut b = Bench {
        args: &args,
        sipp,
        work: work.clone(),
        uas_port: free_port()?,
        uac_media,
        uac_nomedia,
        uas_rr: scen.join("uas_rr_pcma.xml"),
        step_no: 0,
    };
    let started = Instant::now();
    let mut cmdlines: Vec<(String, String)> = Vec::new();

    // Kamailio and rtpengine, up for the whole run (idle between their steps); sluice per
    // ladder, below.
    let hold_s = args.hold_ms / 1000 + 1;
    let mut rtpengine = None;
    let mut kam_media = None;
    let mut kam_sig = None;
    if let Some(kam) = &tools.kamailio {
        let mpath = kamailio_modules()?;
        if args.modes.contains(&Mode::Media)
            && let Some(rtp) = &tools.rtpengine
        {
            let (proc, cmdline, ng) = spawn_rtpengine(
                rtp,
                RTPENGINE_PORTS,
                args.rtpengine_threads,
                std::net::Ipv4Addr::LOCALHOST,
                &Placement::default(),
                &work.join("rtpengine.log"),
            )?;
            cmdlines.push(("rtpengine".into(), cmdline));
            let ng_port = ng.server()?.port();
            let k = start_kamailio(
                kam,
                &work,
                "kamailio-media",
                &mpath,
                b.uas_port,
                Some(ng_port),
                &args,
            )?;
            cmdlines.push(("Kamailio (media)".into(), k.cmdline.clone()));
            kam_media = Some(k);
            rtpengine = Some((proc, ng));
        }
        if args.modes.contains(&Mode::Signalling) {
            let k = start_kamailio(kam, &work, "kamailio-sig", &mpath, b.uas_port, None, &args)?;
            cmdlines.push(("Kamailio (signalling)".into(), k.cmdline.clone()));
            kam_sig = Some(k);
        }
    }

    let mut steps: Vec<Step> = Vec::new();
    for &mode in &args.modes {
        let mut kam = match mode {
            Mode::Media => kam_media.as_mut(),
            Mode::Signalling => kam_sig.as_mut(),
        };
        // A fresh sluice per ladder: calls a failed step left behind do not weigh on the next.
        let name = match mode {
            Mode::Media => "sluice-media",
            Mode::Signalling => "sluice-signalling",
        };
        let mut sluice = start_b2bua(&exe, &work, name, b.uas_port, hold_s)?;
        cmdlines.push((name.into(), sluice.sluice.cmdline.clone()));
        let (mut sluice_on, mut kam_on) = (true, kam.is_some());
        // Bounded: at most two tries per system per rate.
        for &rate in &args.rates {
            if sluice_on {
                let mut s = b.step_sluice(&mut sluice, mode, rate)?;
                print_step(&s);
                if let Some(why) = retry_reason(&s) {
                    // What the failed try left behind goes with its sluice.
                    drop(sluice);
                    sluice = start_b2bua(&exe, &work, name, b.uas_port, hold_s)?;
                    s = b.step_sluice(&mut sluice, mode, rate)?;
                    s.note = join_note(&why, &s.note);
                    print_step(&s);
                }
                sluice_on = s.pass;
                steps.push(s);
            }
            if kam_on && let Some(k) = kam.as_deref_mut() {
                let rtp = match mode {
                    Mode::Media => rtpengine
                        .as_ref()
                        .map(|(p, ng): &(Proc, NgClient)| (p.pid(), ng)),
                    Mode::Signalling => None,
                };
                let mut s = b.step_kamailio(k, rtp, mode, rate)?;
                print_step(&s);
                if let Some(why) = retry_reason(&s) {
                    s = b.step_kamailio(k, rtp, mode, rate)?;
                    s.note = join_note(&why, &s.note);
                    print_step(&s);
                }
                kam_on = s.pass;
                steps.push(s);
            }
            if !sluice_on && !kam_on {
                break;
            }
        }
    }
    drop(kam_media);
    drop(kam_sig);
    drop(rtpengine);

    let memory = if args.concurrent > 0 {
        let m = b.memory_step(&exe)?;
        println!(
            "[bench sip] memory: up to {} calls up at once, {:.1} KiB per call (idle {} KiB, \
             peak {} KiB)",
            m.calls_max,
            per_call_kib(&m),
            m.idle_kib,
            m.peak_kib
        );
        Some(m)
    } else {
        None
    };

    let report = report(
        &args,
        &tools,
        &steps,
        memory.as_ref(),
        &cmdlines,
        &exe,
        started.elapsed(),
    );
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
        println!("[bench sip] report written to {}", out.display());
    }
    println!("[bench sip] logs and SIPp statistics in {}", work.display());
    Ok(())
}

/// A failed step is tried once more when other work on the machine took more than this share
/// of its CPUs meanwhile (the machine is shared; the retry and its reason are reported).
const RETRY_OTHER_LOAD: f64 = 0.15;

fn retry_reason(s: &Step) -> Option<String> {
    let other = s.other?;
    (!s.pass && other > RETRY_OTHER_LOAD).then(|| {
        format!(
            "second try: the first failed ({} of {} ok) with {:.0} % of the CPUs busy with other work",
            s.ok,
            s.calls,
            other * 100.0
        )
    })
}

fn join_note(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else {
        format!("{a}; {b}")
    }
}

fn print_step(s: &Step) {
    println!(
        "[bench sip] {:<10} {:<22} {:>4} cps: {} ({} of {} ok, {} failed), {:.3} ms CPU per call{}",
        format!("{:?}", s.mode).to_lowercase(),
        s.system.name(s.mode),
        s.rate,
        if s.pass { "pass" } else { "FAIL" },
        s.ok,
        s.calls,
        s.failed,
        s.ms_per_call(),
        if s.note.is_empty() {
            String::new()
        } else {
            format!("; {}", s.note)
        }
    );
}

// ---------------------------------------------------------------------------------------------
// The systems

struct B2bua {
    sluice: SluiceProc,
}

impl B2bua {
    fn stats(&mut self) -> Result<sluice_control::proto::StatisticsReply> {
        use sluice_control::proto::StatisticsRequest;
        let SluiceProc { rt, client, .. } = &mut self.sluice;
        Ok(rt
            .block_on(client.statistics(StatisticsRequest {}))
            .context("sluice Statistics")?
            .into_inner())
    }

    /// Statistics once the calls have drained (at most 5 s).
    fn settled(&mut self) -> Result<sluice_control::proto::StatisticsReply> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.sluice.proc.ensure_running()?;
            let s = self.stats()?;
            if (s.calls_current == 0 && s.ports_in_use == 0) || Instant::now() >= deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sip_port(&self) -> Result<u16> {
        let c = &self.sluice.cmdline;
        c.split_whitespace()
            .skip_while(|a| *a != "--sip")
            .nth(1)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .context("no --sip port in sluice's command line")
    }
}

/// The relay port range that fits sluice's open-file limit (its other files: 200).
fn sluice_ports() -> (u16, u16) {
    let n = SLUICE_PORTS_MAX.min(crate::netns::nofile_capacity(NOFILE).saturating_sub(200));
    (SLUICE_PORT_LOW, SLUICE_PORT_LOW + n as u16 - 1)
}

fn start_b2bua(
    exe: &Path,
    work: &Path,
    name: &'static str,
    uas_port: u16,
    hold_s: u32,
) -> Result<B2bua> {
    use sluice_control::config::ControlAddr;
    let sock = work.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let control = ControlAddr::Unix(sock);
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .args(["--control", &control.to_string()])
        .args(["--sip", &format!("udp:127.0.0.1:{}", free_port()?)])
        .args(["--route", &format!("sip:127.0.0.1:{uas_port}")])
        .args(["--media-ip", "127.0.0.1"])
        .args(["--ports", &{
            let (lo, hi) = sluice_ports();
            format!("{lo}-{hi}")
        }])
        .args(["--xdp", "off", "--log-level", "warn"])
        // No inactivity deletion of a call held longer than the default 60 s.
        .args(["--timeout", &(hold_s + 60).max(60).to_string()]);
    let sluice = start_sluice(name, cmd, &control, &work.join(format!("{name}.log")))?;
    Ok(B2bua { sluice })
}

/// Kamailio and every process it forked: its own process group, all killed on drop.
struct Kamailio {
    proc: Proc,
    port: u16,
    cmdline: String,
}

impl Kamailio {
    fn pgid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let pg = self.pgid() as libc::pid_t;
        // SAFETY: signalling the process group of our own (unreaped) child.
        unsafe { libc::kill(-pg, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !group_pids(self.pgid()).is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            let _ = self.proc.child_mut().try_wait();
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
        self.proc.stop();
    }
}

/// The processes of process group `pgid` (from /proc/PID/stat).
fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the name: state, ppid, pgrp.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                return false;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            // A zombie has no CPU left to read.
            f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
        .collect()
}

/// CPU ns of every live process of the group, all threads.
fn group_cpu_ns(pgid: u32) -> u64 {
    group_pids(pgid)
        .into_iter()
        .filter_map(|p| process_cpu_ns(p).ok())
        .sum()
}

fn kamailio_modules() -> Result<String> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/aarch64-linux-gnu/kamailio/modules",
        "/usr/lib64/kamailio/modules",
        "/usr/lib/kamailio/modules",
        "/usr/local/lib64/kamailio/modules",
        "/usr/local/lib/kamailio/modules",
    ];
    candidates
        .iter()
        .find(|d| Path::new(d).join("tm.so").is_file())
        .map(|d| format!("{d}/"))
        .context("Kamailio's modules (tm.so) not found in the usual places")
}

/// tests/tests/kamailio_drives_sluice_over_ng.rs's configuration: stateful proxy,
/// record-route, every call to the UAS; with `ng`, `rtpengine_manage()` on INVITE, replies
/// with SDP, BYE and failures (without: no rtpengine module at all).
fn kamailio_cfg(
    mpath: &str,
    sip_port: u16,
    uas_port: u16,
    ng: Option<u16>,
    children: u32,
) -> String {
    let manage = "rtpengine_manage(\"replace-origin replace-session-connection\");";
    let (module, sock, m_indialog, m_cancel, m_invite, reply_routes) = match ng {
        Some(port) => (
            "loadmodule \"rtpengine.so\"\n",
            format!("modparam(\"rtpengine\", \"rtpengine_sock\", \"udp:127.0.0.1:{port}\")\n"),
            manage,
            "rtpengine_manage();",
            format!(
                "{manage}\n\tt_on_reply(\"MANAGE_REPLY\");\n\tt_on_failure(\"MANAGE_FAILURE\");"
            ),
            format!(
                "onreply_route[MANAGE_REPLY] {{\n\tif (has_body(\"application/sdp\")) {{\n\t\t{manage}\n\t}}\n}}\n\n\
                 failure_route[MANAGE_FAILURE] {{\n\trtpengine_manage();\n}}\n"
            ),
        ),
        None => ("", String::new(), "", "", String::new(), String::new()),
    };
    format!(
        r#"#!KAMAILIO
debug=1
log_stderror=yes
fork=yes
children={children}
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:{sip_port}
dns=no
rev_dns=no
use_dns_cache=off
maxbuffer=4194304

mpath="{mpath}"
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
{module}
modparam("rr", "enable_full_lr", 0)
{sock}
request_route {{
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	if (has_totag()) {{
		if (loose_route()) {{
			{m_indialog}
			route(RELAY);
		}}
		if (is_method("ACK")) {{
			if (t_check_trans()) {{
				route(RELAY);
			}}
			exit;
		}}
		sl_send_reply("404", "Not here");
		exit;
	}}
	if (is_method("CANCEL")) {{
		if (t_check_trans()) {{
			{m_cancel}
			route(RELAY);
		}}
		exit;
	}}
	if (!is_method("INVITE")) {{
		sl_send_reply("405", "Method Not Allowed");
		exit;
	}}
	t_check_trans();
	remove_hf("Route");
	record_route();
	rewritehostport("127.0.0.1:{uas_port}");
	{m_invite}
	route(RELAY);
}}

route[RELAY] {{
	if (!t_relay()) {{
		sl_reply_error();
	}}
	exit;
}}

{reply_routes}"#
    )
}

fn start_kamailio(
    exe: &Path,
    work: &Path,
    name: &str,
    mpath: &str,
    uas_port: u16,
    ng: Option<u16>,
    args: &SipArgs,
) -> Result<Kamailio> {
    use std::os::unix::process::CommandExt;
    let port = free_port()?;
    let cfg = work.join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        kamailio_cfg(mpath, port, uas_port, ng, args.kamailio_children),
    )?;
    let rundir = work.join(name);
    std::fs::create_dir_all(&rundir)?;
    let log = work.join(format!("{name}.log"));
    let f = std::fs::File::create(&log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("-f")
        .arg(&cfg)
        .arg("-P")
        .arg(rundir.join("kamailio.pid"))
        .arg("-Y")
        .arg(&rundir)
        .args(["-DD", "-E"])
        .args(["-m", &KAMAILIO_SHM_MB.to_string()])
        .args(["-M", &KAMAILIO_PKG_MB.to_string()])
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .process_group(0);
    let cmdline = describe(&cmd);
    let mut proc = Proc::spawn(name, &mut cmd, Some(log.clone()))?;
    wait_sip(port, &mut proc)?;
    Ok(Kamailio {
        proc,
        port,
        cmdline,
    })
}

/// Waits (at most 10 s) until something answers OPTIONS on the SIP port.
fn wait_sip(port: u16, proc: &mut Proc) -> Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let local = s.local_addr()?;
    let options = format!(
        "OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe\r\n\
         From: <sip:probe@{local}>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: probe-{port}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        proc.ensure_running()?;
        s.send_to(options.as_bytes(), ("127.0.0.1", port))?;
        if s.recv(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!(
        "nothing answered SIP OPTIONS on 127.0.0.1:{port} within 10 s{}",
        proc.log_tail()
    )
}

// ---------------------------------------------------------------------------------------------
// SIPp

/// What SIPp's caller said about a run.
#[derive(Default)]
struct SippResult {
    exit: Option<i32>,
    killed: bool,
    created: u64,
    ok: u64,
    failed: u64,
    retrans: u64,
    /// Nonzero `Failed*` counters by name.
    causes: Vec<(String, u64)>,
    wall: Duration,
}

/// The last line of a `-trace_stat` file, by column name.
fn parse_stat_csv(text: &str) -> Option<Vec<(String, String)>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    Some(
        header
            .iter()
            .zip(last)
            .map(|(h, v)| (h.to_string(), v.trim().to_string()))
            .collect(),
    )
}

/// How the caller SIPp of a step runs.
struct Uac<'a> {
    target: u16,
    /// -sf FILE, or None for the built-in `-sn uac` with `-d hold`.
    scenario: Option<&'a Path>,
    rate: u32,
    calls: u64,
    hold_ms: u32,
    limit: u64,
}

impl Bench<'_> {
    fn sipp_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.sipp);
        cmd.current_dir(&self.work)
            .args(["-i", "127.0.0.1", "-nostdin"])
            .args(["-buff_size", &self.args.sipp_buff.to_string()]);
        cmd
    }

    /// The callee: `scenario` None is the built-in `-sn uas`.
    fn start_uas(&mut self, tag: &str, scenario: Option<&Path>, echo: bool) -> Result<Proc> {
        let mut cmd = self.sipp_cmd();
        match scenario {
            Some(s) => cmd.arg("-sf").arg(s),
            None => cmd.args(["-sn", "uas"]),
        };
        cmd.args(["-p", &self.uas_port.to_string()]).args([
            "-mi",
            "127.0.0.1",
            "-mp",
            &free_port()?.to_string(),
        ]);
        if echo {
            cmd.arg("-rtp_echo");
        }
        let log = self.work.join(format!("{tag}-uas.log"));
        let f = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        let mut p = Proc::spawn("SIPp callee", &mut cmd, Some(log))?;
        // It binds its port before reading the scenario's first message.
        std::thread::sleep(Duration::from_millis(300));
        p.ensure_running()?;
        Ok(p)
    }

    /// Runs the caller to its end (bounded), calling `sample` every 250 ms meanwhile.
    fn run_uac(&mut self, tag: &str, u: &Uac, mut sample: impl FnMut()) -> Result<SippResult> {
        let mut cmd = self.sipp_cmd();
        cmd.arg(format!("127.0.0.1:{}", u.target));
        match u.scenario {
            Some(s) => cmd.arg("-sf").arg(s),
            None => cmd.args(["-sn", "uac", "-d", &u.hold_ms.to_string()]),
        };
        let stat = self.work.join(format!("{tag}-stat.csv"));
        let expected_s = u.calls / u64::from(u.rate) + u64::from(u.hold_ms / 1000) + 1;
        let timeout_s = expected_s + u64::from(SIPP_SLACK_S);
        cmd.args(["-p", &free_port()?.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &free_port()?.to_string()])
            .args(["-s", "callee"])
            .args(["-r", &u.rate.to_string(), "-m", &u.calls.to_string()])
            .args(["-l", &u.limit.to_string()])
            .args(["-recv_timeout", &RECV_TIMEOUT_MS.to_string()])
            .args(["-timeout", &format!("{timeout_s}s"), "-timeout_error"])
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(&stat)
            .args(["-trace_err", "-error_file"])
            .arg(self.work.join(format!("{tag}-errors.log")));
        let log = self.work.join(format!("{tag}-uac.log"));
        let f = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        let t0 = Instant::now();
        let mut p = Proc::spawn("SIPp caller", &mut cmd, Some(log))?;
        let deadline = t0 + Duration::from_secs(timeout_s) + KILL_SLACK;
        let mut next_sample = t0;
        // Bounded by `deadline`.
        let (exit, killed) = loop {
            if let Some(st) = p.child_mut().try_wait()? {
                break (st.code(), false);
            }
            if Instant::now() >= deadline {
                p.stop();
                break (None, true);
            }
            if Instant::now() >= next_sample {
                sample();
                next_sample += Duration::from_millis(250);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let wall = t0.elapsed();
        let mut r = SippResult {
            exit,
            killed,
            wall,
            ..Default::default()
        };
        if let Some(cols) = std::fs::read_to_string(&stat)
            .ok()
            .as_deref()
            .and_then(parse_stat_csv)
        {
            let get = |name: &str| {
                cols.iter()
                    .find(|(h, _)| h == name)
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            r.created = get("OutgoingCall(C)");
            r.ok = get("SuccessfulCall(C)");
            r.failed = get("FailedCall(C)");
            r.retrans = get("Retransmissions(C)");
            r.causes = cols
                .iter()
                .filter(|(h, _)| {
                    h.starts_with("Failed") && h.ends_with("(C)") && h != "FailedCall(C)"
                })
                .filter_map(|(h, v)| {
                    let n: u64 = v.parse().ok()?;
                    (n > 0).then(|| (h.trim_end_matches("(C)").to_string(), n))
                })
                .collect();
        }
        Ok(r)
    }

    fn next_tag(&mut self, what: &str, rate: u32) -> String {
        self.step_no += 1;
        format!("{:02}-{what}-{rate}", self.step_no)
    }

    fn limit_for(&self, rate: u32) -> u64 {
        // Calls up at once: rate * (hold + set-up and teardown); far more than needed so that
        // SIPp never throttles the offered rate itself.
        (u64::from(rate) * (u64::from(self.args.hold_ms) / 1000 + 10)).max(100)
    }

    fn step_sluice(&mut self, b: &mut B2bua, mode: Mode, rate: u32) -> Result<Step> {
        let tag = self.next_tag(&format!("sluice-{mode:?}").to_lowercase(), rate);
        let calls = u64::from(rate) * u64::from(self.args.duration);
        let (uas_scen, uac_scen) = match mode {
            Mode::Media => (Some(self.uas_rr.clone()), Some(self.uac_media.clone())),
            Mode::Signalling => (None, None),
        };
        let uas = self.start_uas(&tag, uas_scen.as_deref(), mode == Mode::Media)?;
        let before = b.stats()?;
        let pid = b.sluice.proc.pid();
        let window = Window::start();
        let cpu0 = process_cpu_ns(pid)?;
        let u = Uac {
            target: b.sip_port()?,
            scenario: uac_scen.as_deref(),
            rate,
            calls,
            hold_ms: self.args.hold_ms,
            limit: self.limit_for(rate),
        };
        let r = self.run_uac(&tag, &u, || {})?;
        std::thread::sleep(SETTLE);
        let cpu = process_cpu_ns(pid)? - cpu0;
        let load = window.end(uas, cpu);
        let after = b.settled()?;
        let mut notes = Vec::new();
        let relayed = after.packets_relayed - before.packets_relayed;
        if mode == Mode::Media || relayed > 0 {
            notes.push(format!(
                "{:.0} RTP packets relayed per call",
                relayed as f64 / r.created.max(1) as f64
            ));
        }
        let dropped = after.packets_dropped.saturating_sub(before.packets_dropped);
        if dropped > 0 {
            notes.push(format!("{dropped} packets dropped by sluice"));
        }
        if after.calls_current > 0 || after.ports_in_use > 0 {
            notes.push(format!(
                "sluice still held {} calls and {} ports 5 s after",
                after.calls_current, after.ports_in_use
            ));
        }
        Ok(self.finish(mode, System::Sluice, rate, calls, r, cpu, None, load, notes))
    }

    fn step_kamailio(
        &mut self,
        k: &mut Kamailio,
        rtp: Option<(u32, &NgClient)>,
        mode: Mode,
        rate: u32,
    ) -> Result<Step> {
        let tag = self.next_tag(&format!("kamailio-{mode:?}").to_lowercase(), rate);
        let calls = u64::from(rate) * u64::from(self.args.duration);
        let uac_scen = match mode {
            Mode::Media => self.uac_media.clone(),
            Mode::Signalling => self.uac_nomedia.clone(),
        };
        let uas_scen = self.uas_rr.clone();
        let uas = self.start_uas(&tag, Some(&uas_scen), mode == Mode::Media)?;
        let procs = group_pids(k.pgid()).len();
        let relayed0 = rtp.map(|(_, ng)| rtpengine_counts(ng)).transpose()?;
        let window = Window::start();
        let kam0 = group_cpu_ns(k.pgid());
        let rtp0 = rtp.map(|(pid, _)| process_cpu_ns(pid)).transpose()?;
        let u = Uac {
            target: k.port,
            scenario: Some(&uac_scen),
            rate,
            calls,
            hold_ms: self.args.hold_ms,
            limit: self.limit_for(rate),
        };
        let r = self.run_uac(&tag, &u, || {})?;
        std::thread::sleep(SETTLE);
        let kam = group_cpu_ns(k.pgid()).saturating_sub(kam0);
        let media = match (rtp, rtp0) {
            (Some((pid, _)), Some(c0)) => Some(process_cpu_ns(pid)? - c0),
            _ => None,
        };
        let load = window.end(uas, kam + media.unwrap_or(0));
        k.proc.ensure_running()?;
        let mut notes = Vec::new();
        if let (Some((_, ng)), Some((p0, _))) = (rtp, relayed0) {
            // Deletes follow the BYEs by a moment: wait (at most 5 s) for none to be left.
            let deadline = Instant::now() + Duration::from_secs(5);
            let (p1, left) = loop {
                let (p1, left) = rtpengine_counts(ng)?;
                if left == 0 || Instant::now() >= deadline {
                    break (p1, left);
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            notes.push(format!(
                "{:.0} RTP packets relayed per call",
                p1.saturating_sub(p0) as f64 / r.created.max(1) as f64
            ));
            if left > 0 {
                notes.push(format!("rtpengine still held {left} sessions 5 s after"));
            }
        }
        notes.push(format!("{procs} Kamailio processes"));
        Ok(self.finish(
            mode,
            System::Kamailio,
            rate,
            calls,
            r,
            kam,
            media,
            load,
            notes,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mode: Mode,
        system: System,
        rate: u32,
        calls: u64,
        r: SippResult,
        sig_ns: u64,
        media_ns: Option<u64>,
        load: Load,
        mut notes: Vec<String>,
    ) -> Step {
        let pass = r.exit == Some(0) && !r.killed && r.failed == 0 && r.ok == calls;
        if !pass {
            let mut why = match (r.exit, r.killed) {
                (_, true) => "SIPp killed past its time limit".to_string(),
                (Some(c), _) => format!("SIPp exit {c}"),
                (None, _) => "SIPp ended by a signal".to_string(),
            };
            for (c, n) in &r.causes {
                let _ = write!(why, ", {c} {n}");
            }
            notes.insert(0, why);
        }
        if r.retrans > 0 {
            notes.push(format!("{} SIP retransmissions", r.retrans));
        }
        Step {
            mode,
            system,
            rate,
            calls,
            created: r.created,
            ok: r.ok,
            failed: r.failed,
            pass,
            wall: r.wall,
            sig_ns,
            media_ns,
            box_busy: load.busy,
            harness_ns: load.harness_ns,
            other: load.other,
            note: notes.join("; "),
        }
    }

    /// A fresh sluice, idle RSS, then `--concurrent` calls held so that all are up at once.
    fn memory_step(&mut self, exe: &Path) -> Result<Memory> {
        let rate = self.args.concurrent_rate.max(1);
        // 4 relay sockets per call (RTP and RTCP, both legs) and some spare must fit.
        let nofile = crate::netns::nofile_capacity(NOFILE);
        let (lo, hi) = sluice_ports();
        let fits = ((u32::from(hi - lo) + 1) / 4).min((nofile.saturating_sub(1024) / 4) as u32);
        let (n, capped) = if self.args.concurrent > fits {
            (
                fits,
                Some(format!(
                    "--concurrent {} asked for, {fits} run: sluice's open-file limit here is \
                     {nofile} (RLIMIT_NOFILE, a hard limit this container cannot raise) and each \
                     call holds 4 relay sockets",
                    self.args.concurrent
                )),
            )
        } else {
            (self.args.concurrent, None)
        };
        let hold_ms = (u64::from(n) * 1000 / u64::from(rate)) as u32 + self.args.hold_ms;
        let mut b = start_b2bua(
            exe,
            &self.work,
            "sluice-memory",
            self.uas_port,
            hold_ms / 1000 + 1,
        )?;
        let pid = b.sluice.proc.pid();
        // Let it finish starting up before the idle figure.
        std::thread::sleep(Duration::from_millis(500));
        let idle_kib = rss_kib(pid)?;
        let tag = self.next_tag("sluice-memory", rate);
        let _uas = self.start_uas(&tag, None, false)?;
        let u = Uac {
            target: b.sip_port()?,
            scenario: None,
            rate,
            calls: u64::from(n),
            hold_ms,
            limit: u64::from(n) + u64::from(rate) * 10,
        };
        let (mut peak_kib, mut calls_max, mut ports_max) = (idle_kib, 0u64, 0u64);
        let mut sample_err = None;
        let r = self.run_uac(&tag, &u, || {
            let rss = rss_kib(pid);
            let up = b.stats();
            match (rss, up) {
                (Ok(rss), Ok(up)) => {
                    calls_max = calls_max.max(up.calls_current);
                    ports_max = ports_max.max(up.ports_in_use);
                    peak_kib = peak_kib.max(rss);
                }
                (Err(e), _) | (_, Err(e)) => {
                    sample_err.get_or_insert(e);
                }
            }
        })?;
        if let Some(e) = sample_err {
            return Err(e.context("sampling sluice during the memory step"));
        }
        drop(_uas);
        let _ = b.settled()?;
        let after_kib = rss_kib(pid)?;
        let mut note = String::new();
        if r.exit != Some(0) || r.failed > 0 {
            note = format!("SIPp exit {:?}, {} failed", r.exit, r.failed);
            for (c, k) in &r.causes {
                let _ = write!(note, ", {c} {k}");
            }
        }
        Ok(Memory {
            calls_wanted: n,
            rate,
            hold_ms,
            idle_kib,
            peak_kib,
            calls_max,
            ports_max,
            capped,
            after_kib,
            ok: r.ok,
            failed: r.failed,
            note,
        })
    }
}

/// rtpengine's packets relayed since it started and the sessions it holds now.
fn rtpengine_counts(ng: &NgClient) -> Result<(u64, u64)> {
    use sluice_control::ng::bencode::Value;
    let reply = ng.command(&Value::dict([("command", Value::str("statistics"))]))?;
    let st = reply.get("statistics");
    let int = |section: &str, key: &str| match st.and_then(|s| s.get(section)?.get(key)) {
        Some(Value::Int(n)) => Ok(*n as u64),
        _ => Err(anyhow::anyhow!(
            "rtpengine statistics without {section}.{key}"
        )),
    };
    Ok((
        int("totalstatistics", "relayedpackets")?,
        int("currentstatistics", "sessionsown")?,
    ))
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// (peak RSS - idle RSS) / the most calls up at once.
fn per_call_kib(m: &Memory) -> f64 {
    m.peak_kib.saturating_sub(m.idle_kib) as f64 / m.calls_max.max(1) as f64
}

/// All CPUs' jiffies from /proc/stat: (total, idle + iowait).
fn box_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Some((f.iter().take(8).sum(), f.get(3)? + f.get(4)?))
}

/// CPU ns of this process's reaped children (the SIPp runs, once waited for).
fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage writes the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

/// What the machine did during a step besides the system under test.
struct Load {
    busy: Option<f64>,
    harness_ns: u64,
    other: Option<f64>,
}

/// The machine around one step: all CPUs' busy time (/proc/stat) and the SIPp processes' CPU
/// (reaped children), so that other work on the machine shows up in the report.
struct Window {
    box0: Option<(u64, u64)>,
    children0: u64,
}

impl Window {
    fn start() -> Self {
        Self {
            box0: box_jiffies(),
            children0: children_cpu_ns(),
        }
    }

    /// Stops and reaps the callee (the caller has been reaped already); `system_ns`: the CPU
    /// the system under test used over the window.
    fn end(self, mut uas: Proc, system_ns: u64) -> Load {
        uas.stop();
        let harness_ns = children_cpu_ns().saturating_sub(self.children0);
        let (busy, other) = match (self.box0, box_jiffies()) {
            (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
                let total = (t1 - t0) as f64;
                let busy = total - i1.saturating_sub(i0) as f64;
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                let ours = (system_ns + harness_ns) as f64 / 1e9 * hz;
                (Some(busy / total), Some(((busy - ours) / total).max(0.0)))
            }
            _ => (None, None),
        };
        Load {
            busy,
            harness_ns,
            other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// Per system and mode: the highest passing rate and its step.
fn best(steps: &[Step], mode: Mode, system: System) -> Option<&Step> {
    steps
        .iter()
        .filter(|s| s.mode == mode && s.system == system && s.pass)
        .max_by_key(|s| s.rate)
}

fn at(steps: &[Step], mode: Mode, system: System, rate: u32) -> Option<&Step> {
    steps
        .iter()
        .find(|s| s.mode == mode && s.system == system && s.rate == rate && s.pass)
}

/// The highest rate both systems passed in `mode`.
fn common_rate(steps: &[Step], mode: Mode) -> Option<u32> {
    steps
        .iter()
        .filter(|s| s.mode == mode && s.system == System::Sluice && s.pass)
        .map(|s| s.rate)
        .filter(|&r| at(steps, mode, System::Kamailio, r).is_some())
        .max()
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.0} %", x * 100.0))
}

fn fmt_ms(s: Option<&Step>) -> String {
    s.map_or("-".into(), |s| format!("{:.3}", s.ms_per_call()))
}

fn fmt_cps(s: Option<&Step>) -> String {
    s.map_or("-".into(), |s| format!("{:.0}", s.calls_per_cpu_s()))
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &SipArgs,
    tools: &Tools,
    steps: &[Step],
    memory: Option<&Memory>,
    cmdlines: &[(String, String)],
    exe: &Path,
    took: Duration,
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Steps: {} s of new calls at each rate, hold {} ms, a fresh SIPp caller and callee per step; \
         CPU from /proc/PID/task/*/schedstat (all threads; Kamailio: every process of its group) \
         from the caller's start to {} s after it exits, per call created. SIPp CPU: the caller \
         and callee (getrusage of the reaped children). Other load: the share of all CPUs busy \
         with neither (machine-wide /proc/stat minus both); a step that failed with more than \
         {:.0} % other load is tried once more.\n",
        args.duration,
        args.hold_ms,
        SETTLE.as_secs(),
        RETRY_OTHER_LOAD * 100.0
    );
    o += "| mode | system | rate cps | calls | ok | failed | result | signalling CPU ms/call | media CPU ms/call | total CPU ms/call | calls per CPU-s | SIPp CPU ms/call | box busy | other load | wall s | note |\n\
          |---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for s in steps {
        let (sig, media) = match s.media_ns {
            Some(m) => (
                format!("{:.3}", s.sig_ns as f64 / 1e6 / s.created.max(1) as f64),
                format!("{:.3}", m as f64 / 1e6 / s.created.max(1) as f64),
            ),
            None if s.system == System::Sluice => ("(one process)".into(), "(one process)".into()),
            None => (
                format!("{:.3}", s.sig_ns as f64 / 1e6 / s.created.max(1) as f64),
                "-".into(),
            ),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.0} | {:.3} | {} | {} | {:.1} | {} |",
            format!("{:?}", s.mode).to_lowercase(),
            s.system.name(s.mode),
            s.rate,
            s.calls,
            s.ok,
            s.failed,
            if s.pass { "pass" } else { "**fail**" },
            sig,
            media,
            s.ms_per_call(),
            s.calls_per_cpu_s(),
            s.harness_ns as f64 / 1e6 / s.created.max(1) as f64,
            pct(s.box_busy),
            pct(s.other),
            s.wall.as_secs_f64(),
            s.note
        );
    }

    o += "\n| mode | system | highest passing rate | common rate | CPU ms/call @ common | calls per CPU-s @ common | vs peer @ common | CPU ms/call @ own max | calls per CPU-s @ own max |\n\
          |---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for &mode in &args.modes {
        let common = common_rate(steps, mode);
        for system in [System::Sluice, System::Kamailio] {
            if !steps.iter().any(|s| s.mode == mode && s.system == system) {
                continue;
            }
            let own = best(steps, mode, system);
            let c = common.and_then(|r| at(steps, mode, system, r));
            let ratio = common.and_then(|r| {
                let s = at(steps, mode, System::Sluice, r)?;
                let k = at(steps, mode, System::Kamailio, r)?;
                let me = if system == System::Sluice { s } else { k };
                Some(me.calls_per_cpu_s() / k.calls_per_cpu_s())
            });
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                format!("{mode:?}").to_lowercase(),
                system.name(mode),
                own.map_or("none".into(), |s| {
                    if Some(&s.rate) == args.rates.iter().max() {
                        format!("{} cps (top of the ladder)", s.rate)
                    } else {
                        format!("{} cps", s.rate)
                    }
                }),
                common.map_or("-".into(), |r| format!("{r} cps")),
                fmt_ms(c),
                fmt_cps(c),
                ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                fmt_ms(own),
                fmt_cps(own),
            );
        }
    }

    if let Some(m) = memory {
        let _ = writeln!(
            o,
            "\nMemory: a fresh sluice, {} calls at {} cps held {} ms each (signalling scenario: \
             every call holds its relay ports, no RTP flows), RSS (/proc/PID/status VmRSS) and \
             Statistics sampled every 250 ms.\n\n\
             | idle RSS KiB | peak RSS KiB | most calls up | relay ports held | KiB per call (peak - idle) / calls | RSS after KiB | ok | failed |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            m.calls_wanted,
            m.rate,
            m.hold_ms,
            m.idle_kib,
            m.peak_kib,
            m.calls_max,
            m.ports_max,
            per_call_kib(m),
            m.after_kib,
            m.ok,
            m.failed,
        );
        for n in m
            .capped
            .iter()
            .chain((!m.note.is_empty()).then_some(&m.note))
        {
            let _ = writeln!(o, "\n{n}.");
        }
    }

    o += "\nTargets:\n";
    let media_common = common_rate(steps, Mode::Media);
    match media_common.and_then(|r| {
        Some((
            r,
            at(steps, Mode::Media, System::Sluice, r)?,
            at(steps, Mode::Media, System::Kamailio, r)?,
        ))
    }) {
        Some((r, s, k)) => {
            let ratio = s.calls_per_cpu_s() / k.calls_per_cpu_s();
            let max_ratio = match (
                best(steps, Mode::Media, System::Sluice),
                best(steps, Mode::Media, System::Kamailio),
            ) {
                (Some(s), Some(k)) => format!(
                    "; at each one's highest passing rate ({} and {} cps): {:.2}x",
                    s.rate,
                    k.rate,
                    s.calls_per_cpu_s() / k.calls_per_cpu_s()
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                o,
                "- sluice >= 2x the calls per CPU-second of Kamailio + rtpengine with media: **{}** \
                 ({:.2}x at {r} cps: {:.0} vs {:.0} calls per CPU-second{max_ratio})",
                if ratio >= 2.0 { "met" } else { "not met" },
                ratio,
                s.calls_per_cpu_s(),
                k.calls_per_cpu_s()
            );
        }
        None => {
            let why = if !args.modes.contains(&Mode::Media) {
                "the media ladder was not run"
            } else if tools.kamailio.is_none() || tools.rtpengine.is_none() {
                "Kamailio or rtpengine is not installed"
            } else {
                "no rate passed on both"
            };
            let _ = writeln!(
                o,
                "- sluice >= 2x the calls per CPU-second of Kamailio + rtpengine with media: \
                 **not evaluated** ({why})"
            );
        }
    }
    let sig_max = best(steps, Mode::Signalling, System::Sluice);
    match sig_max {
        Some(s) => {
            let common = common_rate(steps, Mode::Signalling)
                .and_then(|r| at(steps, Mode::Signalling, System::Sluice, r))
                .filter(|c| c.rate != s.rate)
                .map_or(String::new(), |c| {
                    format!(
                        "; {:.3} ms at the common rate {} cps",
                        c.ms_per_call(),
                        c.rate
                    )
                });
            let _ = writeln!(
                o,
                "- B2BUA signalling cost <= 0.1 ms CPU per call: **{}** ({:.3} ms per call at \
                 sluice's highest passing rate, {} cps{common}; reference siphon-sip ~0.36 ms: \
                 9,912 calls/s at 358 % CPU)",
                if s.ms_per_call() <= 0.1 {
                    "met"
                } else {
                    "not met"
                },
                s.ms_per_call(),
                s.rate
            );
        }
        None => {
            let _ = writeln!(
                o,
                "- B2BUA signalling cost <= 0.1 ms CPU per call: **not evaluated** (no passing \
                 signalling step)"
            );
        }
    }

    o += "\nSetup:\n";
    let _ = writeln!(
        o,
        "- Media: caller `uac_rr_pcma_hold.xml` (tests/sipp/uac_rr_pcma.xml, pause set to the hold; it plays \
         /usr/share/sip-tester/g711a.pcap, 30 ms PCMA packets, cut at the BYE), callee \
         tests/sipp/uas_rr_pcma.xml with `-rtp_echo`. Signalling: sluice with `-sn uac -d HOLD` / \
         `-sn uas`; Kamailio with the same rr scenarios without the pcap (the built-in uac sends \
         ACK and BYE past a record-routing proxy)."
    );
    let _ = writeln!(
        o,
        "- SIPp: `-r RATE -m RATE*{} -l RATE*(HOLD_S+10) -recv_timeout {} -timeout EXPECTED+{}s \
         -timeout_error -buff_size {} -trace_stat -fd 1`; pass = exit 0, SuccessfulCall = calls, \
         FailedCall = 0.",
        args.duration, RECV_TIMEOUT_MS, SIPP_SLACK_S, args.sipp_buff
    );
    let _ = writeln!(
        o,
        "- sluice: {} (`{}`); Kamailio `children={}`, `-m {} -M {}`; rtpengine \
         `--num-threads={}`.",
        exe.display(),
        if args.sluice.is_some() {
            "given with --sluice".to_string()
        } else {
            git_state()
        },
        args.kamailio_children,
        KAMAILIO_SHM_MB,
        KAMAILIO_PKG_MB,
        args.rtpengine_threads
    );
    for (name, cmd) in cmdlines {
        let _ = writeln!(o, "- `{name}`: `{cmd}`");
    }
    let _ = writeln!(
        o,
        "- Machine: {}; the SIPp harness shares its CPUs (box busy = all processes). Run took \
         {:.0} s.",
        crate::forward::machine(),
        took.as_secs_f64()
    );
    o
}

/// The commit the tree is at, and whether sluice's sources differ from it now.
fn git_state() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown commit".into());
    match git(&[
        "status",
        "--porcelain",
        "--",
        "control",
        "relay",
        "sip",
        "opus-sys",
    ]) {
        Some(s) if !s.is_empty() => format!(
            "tree at {head} with {} uncommitted file(s) in sluice's crates",
            s.lines().count()
        ),
        Some(_) => format!("tree at {head}, sluice's crates unmodified"),
        None => format!("tree at {head}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_statistics_line_is_read_by_column() {
        let csv = "StartTime;SuccessfulCall(C);FailedCall(C);\n\
                   t0;3;0;\n\
                   t1;10;2;\n";
        let cols = parse_stat_csv(csv).unwrap();
        assert!(cols.contains(&("SuccessfulCall(C)".into(), "10".into())));
        assert!(cols.contains(&("FailedCall(C)".into(), "2".into())));
        assert!(parse_stat_csv("StartTime;SuccessfulCall(C);\n").is_none());
    }

    #[test]
    fn the_signalling_config_has_no_rtpengine() {
        let media = kamailio_cfg("/m/", 5060, 5080, Some(2223), 2);
        assert!(media.contains("udp:127.0.0.1:2223") && media.contains("rtpengine_manage"));
        let sig = kamailio_cfg("/m/", 5060, 5080, None, 2);
        assert!(!sig.contains("rtpengine"), "{sig}");
        assert!(sig.contains("record_route()") && sig.contains("127.0.0.1:5080"));
    }
}
