//! `cargo xtask bench transcode`: real-time bidirectional G.711 <-> Opus channels per core
//! (20 ms ptime, 24 kbit/s, 8 kHz), three ways in one run:
//!
//! - the bound set by libopus alone: CPU time to Opus-encode and Opus-decode the same 20 ms
//!   frames of speech (the encoder configured like sluice's at the start of a call: 8 kHz, VoIP,
//!   narrowband, in-band FEC negotiated with 0% expected loss, so no FEC bits until the receiver
//!   reports loss), per complexity;
//! - sluice's sans-IO `Transcoder`, in process: the same frames as PCMU RTP through a
//!   PCMU -> Opus Transcoder and as Opus RTP through an Opus -> PCMU Transcoder (G.711, RTP,
//!   reorder window and all); a bidirectional channel is one of each;
//! - rtpengine transcoding real calls on loopback: the caller offers PCMU only, rtpengine is
//!   told to transcode to Opus (`codec: { transcode: [...] }`), the callee answers Opus only;
//!   both sides send real-time 20 ms RTP for a bounded time and rtpengine's CPU (all threads,
//!   /proc/PID/task/*/schedstat) gives channels per core;
//! - the sluice daemon (`sluice run --xdp off`, driven over gRPC on a Unix socket) with the same
//!   calls and traffic: offered PCMU only it appends opus itself (dynamic PT), the callee
//!   answers Opus only with that PT; it encodes at its default complexity
//!   (`DEFAULT_OPUS_COMPLEXITY`).
//!
//! Channels per core = audio seconds processed / CPU seconds spent (for the daemons: calls x
//! wall seconds / CPU seconds).
//!
//! The default complexity (5) trade-off, measured on the 2-core dev VM (libopus 1.3.1): with
//! 24 kbit/s and no FEC bits spent, PCMU -> sluice -> Opus scores PESQ NB 3.841 at complexity
//! 0, 3.929 at 5 and 3.937 at 10 against 3.957 for plain G.711 (target: within 0.1, so 0
//! misses by 0.016); complexity 0 gives 706 bidirectional channels per core in process, 5
//! gives 273. rtpengine (its own default Opus settings, one media thread) gave 58.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sluice_control::proto::control_client::ControlClient;
use sluice_relay::codec::g711;
use sluice_relay::codec::{OpusDecoder, OpusEncoder};
use sluice_relay::transcode::{
    Codec, DEFAULT_OPUS_COMPLEXITY, DirectionPlan, MAX_OUT_PACKET, OpusParams, Transcoder,
};

use crate::child::Proc;
use crate::netns::Placement;
use crate::proc_cpu::process_cpu_ns;
use crate::relays::{NgClient, SluiceProc, spawn_rtpengine, start_sluice};
use sluice_control::ng::bencode::Value;

const FRAME: usize = 160;
const BITRATE: u32 = 24_000;
const PT_OPUS: u8 = 96;
const RTPENGINE_PORTS: (u16, u16) = (30_000, 33_999);
const SLUICE_PORTS: (u16, u16) = (34_000, 37_999);

#[derive(clap::Args, Debug)]
pub struct TranscodeArgs {
    /// Complexities measured in process (sluice's default is added).
    #[arg(long, value_delimiter = ',', default_value = "0,5")]
    complexity: Vec<u8>,
    /// Audio seconds per in-process measurement (per direction).
    #[arg(long, default_value_t = 60)]
    audio_secs: u32,
    /// Concurrent calls through each daemon, rtpengine and sluice (0: skip both).
    #[arg(long, default_value_t = 50)]
    calls: u32,
    /// Seconds of real-time media through each daemon (after a 2 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// The codec rtpengine transcodes to (its ng `codec: { transcode: [...] }` entry).
    #[arg(long, default_value = "opus/48000/2/24000")]
    rtpengine_codec: String,
    /// The rtpengine executable.
    #[arg(long, default_value = "/usr/bin/rtpengine")]
    rtpengine: PathBuf,
    /// The sluice executable (default: target/release/sluice).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Also write the report as Markdown to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The speech sample of the quality test (8 kHz mono 16-bit), as whole 20 ms frames.
fn speech() -> Result<Vec<i16>> {
    let path = repo_root().join("tests/data/speech_8k.wav");
    let b = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let at = b
        .windows(4)
        .position(|w| w == b"data")
        .context("no data chunk in the speech WAV")?;
    let len = u32::from_le_bytes(b[at + 4..at + 8].try_into()?) as usize;
    let data = b.get(at + 8..at + 8 + len).context("short WAV")?;
    let mut s: Vec<i16> = data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    s.truncate(s.len() / FRAME * FRAME);
    Ok(s)
}

/// This thread's CPU time (ns).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn opus_params(complexity: u8) -> OpusParams {
    OpusParams {
        bitrate: BITRATE,
        complexity,
        ..OpusParams::default()
    }
}

/// An encoder set up like sluice's (media/src/codec/opus.rs).
fn encoder(p: &OpusParams) -> Result<OpusEncoder> {
    Ok(OpusEncoder::new(p)?)
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.extend_from_slice(&[0x80, pt]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The speech looped to `frames` frames.
fn frames_of(speech: &[i16], frames: usize) -> impl Iterator<Item = &[i16]> {
    speech.chunks_exact(FRAME).cycle().take(frames)
}

struct InProcess {
    complexity: u8,
    audio_secs: f64,
    /// CPU ns: libopus encode, libopus decode, sluice PCMU -> Opus, sluice Opus -> PCMU.
    enc_ns: u64,
    dec_ns: u64,
    to_opus_ns: u64,
    to_pcmu_ns: u64,
}

impl InProcess {
    fn bound(&self) -> f64 {
        self.audio_secs / ((self.enc_ns + self.dec_ns) as f64 / 1e9)
    }
    fn sluice(&self) -> f64 {
        self.audio_secs / ((self.to_opus_ns + self.to_pcmu_ns) as f64 / 1e9)
    }
}

fn plan(input: Codec, input_pt: u8, output: Codec, output_pt: u8, c: u8) -> DirectionPlan {
    DirectionPlan {
        input,
        input_pt,
        output,
        output_pt,
        output_ptime_ms: 20,
        opus: opus_params(c),
        dtmf: None,
        cn_pts: Vec::new(),
        ssrc: 0x5EA1_0001,
    }
}

/// Runs `frames` frames through `t`, a packet every 20 ms of media time; returns CPU ns.
fn run_transcoder(t: &mut Transcoder, packets: &[Vec<u8>]) -> Result<u64> {
    let mut out = [0u8; MAX_OUT_PACKET];
    let mut emitted = 0usize;
    let t0 = thread_cpu_ns();
    for (i, p) in packets.iter().enumerate() {
        let now = i as u64 * 20_000_000;
        if t.poll_timeout().is_some_and(|d| d <= now) {
            t.handle_timeout(now);
        }
        t.push(p, now)
            .map_err(|e| anyhow!("Transcoder::push: {e:?}"))?;
        while let Some(n) = t.pull(&mut out) {
            std::hint::black_box(&out[..n]);
            emitted += 1;
        }
    }
    let ns = thread_cpu_ns() - t0;
    if emitted != packets.len() {
        bail!(
            "the transcoder emitted {emitted} packets for {} in",
            packets.len()
        );
    }
    Ok(ns)
}

fn in_process(speech: &[i16], complexity: u8, audio_secs: u32) -> Result<InProcess> {
    let frames = audio_secs as usize * 50;
    let p = opus_params(complexity);
    // libopus alone: encode every frame, then decode every packet.
    let mut enc = encoder(&p)?;
    let mut packets = Vec::with_capacity(frames);
    let mut buf = [0u8; 1500];
    let t0 = thread_cpu_ns();
    for f in frames_of(speech, frames) {
        let n = enc.encode(f, &mut buf)?;
        packets.push(buf[..n].to_vec());
    }
    let enc_ns = thread_cpu_ns() - t0;
    let mut dec = OpusDecoder::new()?;
    let mut pcm = [0i16; FRAME];
    let t0 = thread_cpu_ns();
    for pkt in &packets {
        let n = dec.decode(pkt, &mut pcm[..])?;
        std::hint::black_box(&pcm[..n]);
    }
    let dec_ns = thread_cpu_ns() - t0;

    // sluice: the same frames as PCMU RTP one way and as Opus RTP (the packets above, as the
    // Opus far end would send them) the other way.
    let pcmu: Vec<Vec<u8>> = frames_of(speech, frames)
        .enumerate()
        .map(|(i, f)| {
            let mut payload = [0u8; FRAME];
            for (u, &s) in payload.iter_mut().zip(f) {
                *u = g711::ulaw_encode(s);
            }
            rtp(0, i as u16, (i * FRAME) as u32, 1, &payload)
        })
        .collect();
    let opus: Vec<Vec<u8>> = packets
        .iter()
        .enumerate()
        .map(|(i, pl)| rtp(PT_OPUS, i as u16, (i * 960) as u32, 2, pl))
        .collect();
    let mk = |pl: DirectionPlan| Transcoder::new(&pl, 1).map_err(|e| anyhow!("{e:?}"));
    let mut to_opus = mk(plan(Codec::Pcmu, 0, Codec::Opus, PT_OPUS, complexity))?;
    let mut to_pcmu = mk(plan(Codec::Opus, PT_OPUS, Codec::Pcmu, 0, complexity))?;
    let to_opus_ns = run_transcoder(&mut to_opus, &pcmu)?;
    let to_pcmu_ns = run_transcoder(&mut to_pcmu, &opus)?;
    Ok(InProcess {
        complexity,
        audio_secs: frames as f64 / 50.0,
        enc_ns,
        dec_ns,
        to_opus_ns,
        to_pcmu_ns,
    })
}

// --- rtpengine -------------------------------------------------------------------------------

struct Rtpengine {
    proc: Proc,
    cmdline: String,
    ng: NgClient,
}

impl Rtpengine {
    fn start(exe: &Path, log: &Path) -> Result<Self> {
        if !exe.is_file() {
            bail!(
                "rtpengine not found at {} (apt-get install rtpengine-daemon)",
                exe.display()
            );
        }
        // One media thread: channels per core is then what one core does.
        let (proc, cmdline, ng) = spawn_rtpengine(
            exe,
            RTPENGINE_PORTS,
            1,
            Ipv4Addr::LOCALHOST,
            &Placement::default(),
            log,
        )?;
        Ok(Self { proc, cmdline, ng })
    }

    fn request(&mut self, cmd: &Value) -> Result<Value> {
        self.ng.command(cmd)
    }
}

fn sdp(session: u64, at: SocketAddrV4, formats: &str, attrs: &str) -> String {
    format!(
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=sluice-bench\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {formats}\r\n{attrs}a=ptime:20\r\na=sendrecv\r\n",
        ip = at.ip(),
        port = at.port()
    )
}

/// The payload type the SDP maps to `opus/48000`.
fn opus_pt(sdp: &str) -> Option<u8> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=rtpmap:"))
        .find(|l| l.to_ascii_lowercase().contains("opus/48000"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

/// What one daemon did with `calls` transcoded calls.
struct EngineRun {
    name: &'static str,
    cmdline: String,
    /// The Opus encoder setting the daemon transcodes with, in words.
    opus: String,
    calls: u32,
    /// The Opus PT the daemon offered the callee (the callee answers with it).
    offer_pt: u8,
    traffic: Traffic,
}

impl EngineRun {
    fn per_core(&self) -> f64 {
        self.calls as f64 * self.traffic.secs / (self.traffic.cpu_ns as f64 / 1e9)
    }
}

/// The sockets of K calls: each caller (PCMU) and callee (Opus), and where each sends.
struct Legs {
    callers: Vec<UdpSocket>,
    callees: Vec<UdpSocket>,
    /// Where each caller sends (the daemon's caller-facing port).
    to_a: Vec<SocketAddrV4>,
    /// Where each callee sends (the daemon's callee-facing port).
    to_b: Vec<SocketAddrV4>,
    opus_pt: u8,
}

impl Legs {
    fn new() -> Self {
        Self {
            callers: Vec::new(),
            callees: Vec::new(),
            to_a: Vec::new(),
            to_b: Vec::new(),
            opus_pt: 0,
        }
    }

    /// A caller and a callee socket on loopback, not yet added.
    fn pair() -> Result<(UdpSocket, UdpSocket, SocketAddrV4, SocketAddrV4)> {
        let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let (a_at, b_at) = (crate::sys::local_v4(&a)?, crate::sys::local_v4(&b)?);
        Ok((a, b, a_at, b_at))
    }

    fn add(
        &mut self,
        a: UdpSocket,
        b: UdpSocket,
        to_a: SocketAddrV4,
        to_b: SocketAddrV4,
    ) -> Result<()> {
        for s in [&a, &b] {
            s.set_nonblocking(true)?;
        }
        self.callers.push(a);
        self.callees.push(b);
        self.to_a.push(to_a);
        self.to_b.push(to_b);
        Ok(())
    }
}

/// The caller's PCMU-only offer.
fn caller_sdp(i: usize, at: SocketAddrV4) -> String {
    sdp(i as u64, at, "0", "a=rtpmap:0 PCMU/8000\r\n")
}

/// Counters of the measured interval: packets each side sent, received in the other codec
/// (PT 0 with 160 bytes of payload at the caller, 20 ms Opus with the offered PT at the
/// callee), and received as anything else (RTCP, which a daemon may send to port + 1, is not
/// counted).
struct Traffic {
    secs: f64,
    cpu_ns: u64,
    caller_sent: u64,
    caller_rcvd: u64,
    caller_other: u64,
    callee_sent: u64,
    callee_rcvd: u64,
    callee_other: u64,
}

impl Traffic {
    /// The share of what one side sent that arrived, transcoded, at the other.
    fn delivered(&self) -> (f64, f64) {
        (
            self.callee_rcvd as f64 / self.caller_sent.max(1) as f64,
            self.caller_rcvd as f64 / self.callee_sent.max(1) as f64,
        )
    }

    /// Every packet arrived in the expected codec, and at least 99% of them (both ways).
    fn verified(&self) -> bool {
        let (ab, ba) = self.delivered();
        self.caller_other == 0 && self.callee_other == 0 && ab >= 0.99 && ba >= 0.99
    }
}

/// An Opus packet of 20 ms (RFC 6716 TOC, frame count), not G.711 relabelled.
fn is_opus_20ms(payload: &[u8]) -> bool {
    payload.len() != FRAME && OpusDecoder::packet_samples_at(payload, 48_000).ok() == Some(960)
}

fn is_rtcp(p: &[u8]) -> bool {
    p.len() >= 8 && (192..=223).contains(&p[1])
}

/// Real-time media for a 2 s warm-up then `secs`: every 20 ms each caller sends a PCMU frame
/// and each callee an Opus frame (24 kbit/s, FEC) of the same speech; what arrives is checked
/// and counted, and `proc`'s CPU (all threads) is read over the measured interval.
fn drive(proc: &mut Proc, legs: &Legs, speech: &[i16], secs: f64) -> Result<Traffic> {
    let calls = legs.callers.len();
    let frames = speech.len() / FRAME;
    let mut enc = encoder(&opus_params(DEFAULT_OPUS_COMPLEXITY))?;
    let mut buf = [0u8; 1500];
    let mut opus_frames = Vec::with_capacity(frames);
    let mut pcmu_frames = Vec::with_capacity(frames);
    for f in speech.chunks_exact(FRAME) {
        let n = enc.encode(f, &mut buf)?;
        opus_frames.push(buf[..n].to_vec());
        pcmu_frames.push(f.iter().map(|&s| g711::ulaw_encode(s)).collect::<Vec<u8>>());
    }
    let opus_pt = legs.opus_pt;
    let warmup = Duration::from_secs(2);
    let total = warmup + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tick = 0u64;
    let mut t = Traffic {
        secs: 0.0,
        cpu_ns: 0,
        caller_sent: 0,
        caller_rcvd: 0,
        caller_other: 0,
        callee_sent: 0,
        callee_rcvd: 0,
        callee_other: 0,
    };
    let mut counting = None;
    let mut rbuf = [0u8; 2048];
    // Bounded: one tick per 20 ms until `total` has passed.
    while start.elapsed() < total {
        if counting.is_none() && start.elapsed() >= warmup {
            proc.ensure_running()?;
            counting = Some((Instant::now(), process_cpu_ns(proc.pid())?));
            t.caller_sent = 0;
            t.caller_rcvd = 0;
            t.caller_other = 0;
            t.callee_sent = 0;
            t.callee_rcvd = 0;
            t.callee_other = 0;
        }
        let f = tick as usize % frames;
        for i in 0..calls {
            let seq = tick as u16;
            let pa = rtp(
                0,
                seq,
                (tick * 160) as u32,
                0xA000 + i as u32,
                &pcmu_frames[f],
            );
            let pb = rtp(
                opus_pt,
                seq,
                (tick * 960) as u32,
                0xB000 + i as u32,
                &opus_frames[f],
            );
            t.caller_sent += legs.callers[i].send_to(&pa, legs.to_a[i]).is_ok() as u64;
            t.callee_sent += legs.callees[i].send_to(&pb, legs.to_b[i]).is_ok() as u64;
        }
        for i in 0..calls {
            // Bounded by the socket buffers: each recv takes one queued packet.
            // Only what was transcoded counts: PCMU (PT 0) to the caller, Opus to the callee.
            while let Ok(n) = legs.callers[i].recv(&mut rbuf) {
                let p = &rbuf[..n];
                if n == 12 + FRAME && p[1] & 0x7F == 0 {
                    t.caller_rcvd += 1;
                } else if !is_rtcp(p) {
                    t.caller_other += 1;
                }
            }
            while let Ok(n) = legs.callees[i].recv(&mut rbuf) {
                let p = &rbuf[..n];
                if n > 12 && p[1] & 0x7F == opus_pt && is_opus_20ms(&p[12..]) {
                    t.callee_rcvd += 1;
                } else if !is_rtcp(p) {
                    t.callee_other += 1;
                }
            }
        }
        tick += 1;
        let next = start + Duration::from_millis(20 * tick);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let (t0, cpu0) = counting.context("no measured interval")?;
    t.secs = t0.elapsed().as_secs_f64();
    t.cpu_ns = process_cpu_ns(proc.pid())? - cpu0;
    proc.ensure_running()?;
    Ok(t)
}

fn rtpengine_run(args: &TranscodeArgs, speech: &[i16], log: &Path) -> Result<EngineRun> {
    let mut rtpe = Rtpengine::start(&args.rtpengine, log)?;
    let cmdline = rtpe.cmdline.clone();
    let calls = args.calls as usize;
    let mut legs = Legs::new();
    for i in 0..calls {
        let (a, b, a_at, b_at) = Legs::pair()?;
        let call_id = format!("transcode-{i}");
        let offer = rtpe.request(&Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str("caller")),
            (
                "codec",
                Value::dict([(
                    "transcode",
                    Value::List(vec![Value::str(&args.rtpengine_codec)]),
                )]),
            ),
            ("sdp", Value::str(&caller_sdp(i, a_at))),
        ]))?;
        let offer_sdp = offer.get_str("sdp").unwrap_or_default();
        let offer_pt = opus_pt(&offer_sdp).ok_or_else(|| {
            anyhow!("rtpengine's offer to the callee has no opus (transcode flag not taken):\n{offer_sdp}")
        })?;
        legs.opus_pt = offer_pt;
        let to_b = crate::sdp::audio_destination(&offer_sdp)?;
        // The callee takes Opus only.
        let answer = rtpe.request(&Value::dict([
            ("command", Value::str("answer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str("caller")),
            ("to-tag", Value::str("callee")),
            (
                "sdp",
                Value::str(&sdp(
                    i as u64,
                    b_at,
                    &offer_pt.to_string(),
                    &format!(
                        "a=rtpmap:{offer_pt} opus/48000/2\r\na=fmtp:{offer_pt} \
                         useinbandfec=1;maxaveragebitrate=24000\r\n"
                    ),
                )),
            ),
        ]))?;
        let answer_sdp = answer.get_str("sdp").unwrap_or_default();
        if !answer_sdp.contains("PCMU") {
            bail!("rtpengine's answer to the caller has no PCMU:\n{answer_sdp}");
        }
        legs.add(a, b, crate::sdp::audio_destination(&answer_sdp)?, to_b)?;
    }
    let traffic = drive(&mut rtpe.proc, &legs, speech, args.secs)?;
    for i in 0..calls {
        let _ = rtpe.request(&Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(&format!("transcode-{i}"))),
            ("from-tag", Value::str("caller")),
        ]));
    }
    Ok(EngineRun {
        name: "rtpengine",
        cmdline,
        opus: format!("`{}`, its own default complexity", args.rtpengine_codec),
        calls: args.calls,
        offer_pt: legs.opus_pt,
        traffic,
    })
}

// --- sluice daemon ---------------------------------------------------------------------------

/// `sluice run --xdp off` on a Unix control socket, driven over gRPC (as `bench bridge` does).
struct SluiceDaemon {
    proc: Proc,
    cmdline: String,
    sock: PathBuf,
    rt: tokio::runtime::Runtime,
    client: ControlClient<tonic::transport::Channel>,
}

impl SluiceDaemon {
    fn start(exe: &Path, sock: &Path, log: &Path) -> Result<Self> {
        use sluice_control::config::ControlAddr;
        if !exe.is_file() {
            bail!(
                "{} does not exist (cargo build --release -p sluice-control)",
                exe.display()
            );
        }
        // A socket left by an earlier run would make the bind fail.
        let _ = std::fs::remove_file(sock);
        let control = ControlAddr::Unix(sock.to_path_buf());
        let mut cmd = Command::new(exe);
        cmd.args(["run", "--xdp", "off", "--control", &control.to_string()])
            .args(["--media-ip", "127.0.0.1"])
            .args(["--ports", &format!("{}-{}", SLUICE_PORTS.0, SLUICE_PORTS.1)])
            .args(["--log-level", "warn"]);
        let SluiceProc {
            proc,
            cmdline,
            rt,
            client,
        } = start_sluice("sluice", cmd, &control, log)?;
        Ok(Self {
            proc,
            cmdline,
            sock: sock.to_path_buf(),
            rt,
            client,
        })
    }

    /// A control call, bounded in time.
    fn call<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnOnce(
            &mut ControlClient<tonic::transport::Channel>,
        ) -> std::result::Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T> {
        let client = &mut self.client;
        let r = self.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), f(client))
                .await
                .map_err(|_| anyhow!("sluice {what}: no reply in 5 s"))
        })?;
        match r {
            Ok(r) => Ok(r.into_inner()),
            Err(e) => Err(anyhow!("sluice {what}: {e}{}", self.proc.log_tail())),
        }
    }
}

impl Drop for SluiceDaemon {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn sluice_run(args: &TranscodeArgs, speech: &[i16], work: &Path) -> Result<EngineRun> {
    use sluice_control::proto::{AnswerRequest, DeleteRequest, OfferRequest};
    let exe = args
        .sluice
        .clone()
        .unwrap_or_else(|| target_dir().join("release/sluice"));
    let sock = work.join(format!("sluice-{}.sock", std::process::id()));
    let mut d = SluiceDaemon::start(&exe, &sock, &work.join("sluice.log"))?;
    let cmdline = d.cmdline.clone();
    let calls = args.calls as usize;
    let mut legs = Legs::new();
    let mut created = Vec::new();
    let result = (|| -> Result<Traffic> {
        for i in 0..calls {
            let (a, b, a_at, b_at) = Legs::pair()?;
            let call_id = format!("transcode-{i}");
            // PCMU only, no options: sluice appends opus (and telephone-event) itself.
            let req = OfferRequest {
                call_id: call_id.clone(),
                from_tag: "caller".into(),
                sdp: caller_sdp(i, a_at),
                options: None,
            };
            let offer_sdp = d.call("Offer", async |c| c.offer(req).await)?.sdp;
            created.push(call_id.clone());
            let pt = opus_pt(&offer_sdp)
                .ok_or_else(|| anyhow!("sluice's offer to the callee has no opus:\n{offer_sdp}"))?;
            legs.opus_pt = pt;
            let to_b = crate::sdp::audio_destination(&offer_sdp)?;
            // The callee takes Opus only.
            let req = AnswerRequest {
                call_id,
                from_tag: "caller".into(),
                to_tag: "callee".into(),
                sdp: sdp(
                    i as u64,
                    b_at,
                    &pt.to_string(),
                    &format!(
                        "a=rtpmap:{pt} opus/48000/2\r\na=fmtp:{pt} \
                         useinbandfec=1;maxplaybackrate=8000;stereo=0\r\n"
                    ),
                ),
                options: None,
            };
            let answer_sdp = d.call("Answer", async |c| c.answer(req).await)?.sdp;
            if !answer_sdp.contains("a=rtpmap:0 PCMU/8000") && !answer_sdp.contains(" RTP/AVP 0") {
                bail!("sluice's answer to the caller has no PCMU:\n{answer_sdp}");
            }
            legs.add(a, b, crate::sdp::audio_destination(&answer_sdp)?, to_b)?;
        }
        drive(&mut d.proc, &legs, speech, args.secs)
    })();
    for call_id in created {
        let req = DeleteRequest {
            call_id,
            from_tag: "caller".into(),
            ..Default::default()
        };
        let _ = d.call("Delete", async |c| c.delete(req).await);
    }
    Ok(EngineRun {
        name: "sluice daemon",
        cmdline,
        opus: format!(
            "complexity {DEFAULT_OPUS_COMPLEXITY} (the daemon's default), {} kbit/s",
            BITRATE / 1000
        ),
        calls: args.calls,
        offer_pt: legs.opus_pt,
        traffic: result?,
    })
}

pub fn run(args: TranscodeArgs) -> Result<()> {
    if args.audio_secs == 0 || args.audio_secs > 3600 || !(1.0..=120.0).contains(&args.secs) {
        bail!("--audio-secs must be within 1..=3600 and --secs within 1..=120");
    }
    if args.calls > 2000 {
        bail!("--calls must be at most 2000");
    }
    let speech = speech()?;
    let mut cs = args.complexity.clone();
    cs.push(DEFAULT_OPUS_COMPLEXITY);
    cs.sort_unstable();
    cs.dedup();
    let mut rows = Vec::new();
    for &c in &cs {
        let r = in_process(&speech, c, args.audio_secs)?;
        eprintln!(
            "[bench transcode] complexity {c}: libopus {:.0} ch/core, sluice {:.0} ch/core ({:.1}%)",
            r.bound(),
            r.sluice(),
            100.0 * r.sluice() / r.bound()
        );
        rows.push(r);
    }
    let mut daemons = Vec::new();
    if args.calls > 0 {
        let work = target_dir().join("bench-transcode");
        std::fs::create_dir_all(&work)?;
        let runs: [(&str, &dyn Fn() -> Result<EngineRun>); 2] = [
            ("rtpengine", &|| {
                rtpengine_run(&args, &speech, &work.join("rtpengine.log"))
            }),
            ("sluice daemon", &|| sluice_run(&args, &speech, &work)),
        ];
        for (name, f) in runs {
            let r = f().with_context(|| format!("{name} x{}", args.calls))?;
            let (ab, ba) = r.traffic.delivered();
            eprintln!(
                "[bench transcode] {name} x{}: {:.0} ch/core (delivered PCMU->Opus {:.1}%, \
                 Opus->PCMU {:.1}%, wrong {} / {})",
                r.calls,
                r.per_core(),
                100.0 * ab,
                100.0 * ba,
                r.traffic.callee_other,
                r.traffic.caller_other
            );
            daemons.push(r);
        }
    }
    let report = report(&args, &rows, &daemons);
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::File::create(out)?.write_all(report.as_bytes())?;
    }
    Ok(())
}

fn report(args: &TranscodeArgs, rows: &[InProcess], daemons: &[EngineRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## G.711 <-> Opus transcoding, bidirectional channels per core\n\n\
         20 ms frames of speech (tests/data/speech_8k.wav, looped), Opus 8 kHz narrowband VoIP \
         {} kbit/s, in-band FEC negotiated with {}% expected loss (sluice's start value: RTCP \
         reports of loss raise it). In process: {} audio seconds per direction, thread CPU \
         time. sluice's default complexity: {DEFAULT_OPUS_COMPLEXITY}.\n",
        BITRATE / 1000,
        OpusParams::default().expected_loss_pct,
        args.audio_secs
    );
    let _ = writeln!(
        s,
        "| complexity | libopus alone (enc+dec) | sluice Transcoder pair | sluice / bound | \
         enc µs/frame | dec µs/frame | PCMU->Opus µs/frame | Opus->PCMU µs/frame |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let us = |ns: u64| ns as f64 / 1e3 / (r.audio_secs * 50.0);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.1}% | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.complexity,
            r.bound(),
            r.sluice(),
            100.0 * r.sluice() / r.bound(),
            us(r.enc_ns),
            us(r.dec_ns),
            us(r.to_opus_ns),
            us(r.to_pcmu_ns)
        );
    }
    if daemons.is_empty() {
        let _ = writeln!(s, "\nDaemons: not run (--calls 0).");
        return s;
    }
    let _ = writeln!(
        s,
        "\n### Daemons transcoding real calls on loopback\n\n\
         Each call: the caller offers PCMU only, the callee answers Opus only (the PT the daemon \
         offered it); both send real-time 20 ms RTP of the speech for a 2 s warm-up then the \
         measured interval. Channels per core = calls x wall seconds / daemon CPU seconds (all \
         threads, /proc/PID/task/*/schedstat). Delivered: packets that arrived in the other \
         codec (PT 0 with 160 bytes at the caller, a 20 ms Opus packet with the Opus PT at the \
         callee) / packets sent the other way; wrong: anything else but RTCP.\n"
    );
    let _ = writeln!(
        s,
        "| daemon | Opus encoder | calls | seconds | CPU s | channels per core | vs rtpengine | \
         PCMU->Opus delivered | Opus->PCMU delivered | wrong (callee / caller) | verified |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    let base = daemons
        .iter()
        .find(|d| d.name == "rtpengine")
        .map(EngineRun::per_core);
    for d in daemons {
        let t = &d.traffic;
        let (ab, ba) = t.delivered();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.3} | **{:.0}** | {} | {}/{} ({:.1}%) | {}/{} ({:.1}%) | \
             {} / {} | {} |",
            d.name,
            d.opus,
            d.calls,
            t.secs,
            t.cpu_ns as f64 / 1e9,
            d.per_core(),
            base.map_or("-".into(), |b| format!("{:.2}x", d.per_core() / b)),
            t.callee_rcvd,
            t.caller_sent,
            100.0 * ab,
            t.caller_rcvd,
            t.callee_sent,
            100.0 * ba,
            t.callee_other,
            t.caller_other,
            if t.verified() { "yes" } else { "NO" }
        );
    }
    let _ = writeln!(s);
    for d in daemons {
        let _ = writeln!(
            s,
            "- {}: `{}` (callee answered opus PT {})",
            d.name, d.cmdline, d.offer_pt
        );
    }
    if let Some(d) = rows
        .iter()
        .find(|r| r.complexity == DEFAULT_OPUS_COMPLEXITY)
        .map(InProcess::sluice)
    {
        for e in daemons {
            let _ = writeln!(
                s,
                "\nsluice (in process, complexity {DEFAULT_OPUS_COMPLEXITY}) / {}: {:.2}x.",
                e.name,
                d / e.per_core()
            );
        }
    }
    s
}
