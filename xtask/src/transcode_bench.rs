//! `cargo xtask bench transcode`: real-time bidirectional G.711 <-> Opus channels per core
//! (20 ms ptime, 24 kbit/s, 8 kHz), three ways in one run:
//!
//! - the bound set by libopus alone: CPU time to Opus-encode and Opus-decode the same 20 ms
//!   frames of speech (the encoder configured like sluice's: 8 kHz, VoIP, narrowband, in-band
//!   FEC for 5% expected loss), per complexity;
//! - sluice's sans-IO `Transcoder`, in process: the same frames as PCMU RTP through a
//!   PCMU -> Opus Transcoder and as Opus RTP through an Opus -> PCMU Transcoder (G.711, RTP,
//!   reorder window and all); a bidirectional channel is one of each;
//! - rtpengine transcoding real calls on loopback: the caller offers PCMU only, rtpengine is
//!   told to transcode to Opus (`codec: { transcode: [...] }`), the callee answers Opus only;
//!   both sides send real-time 20 ms RTP for a bounded time and rtpengine's CPU (all threads,
//!   /proc/PID/task/*/schedstat) gives channels per core.
//!
//! Channels per core = audio seconds processed / CPU seconds spent (for rtpengine: calls x wall
//! seconds / CPU seconds).
//!
//! The default complexity (5) trade-off, measured on the 2-core dev VM (libopus 1.3.1): with
//! 24 kbit/s and no FEC bits spent, PCMU -> sluice -> Opus scores PESQ NB 3.841 at complexity
//! 0, 3.929 at 5 and 3.937 at 10 against 3.957 for plain G.711 (target: within 0.1, so 0
//! misses by 0.016); complexity 0 gives 706 bidirectional channels per core in process, 5
//! gives 273. rtpengine (its own default Opus settings, one media thread) gave 58.
//!
//! The sluice daemon column is not measured yet: the daemon's engine
//! does not run transcoded streams on this branch.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Bandwidth, Bitrate, Channels, SampleRate};
use sluice_relay::codec::g711;
use sluice_relay::transcode::{
    Codec, DEFAULT_OPUS_COMPLEXITY, DirectionPlan, MAX_OUT_PACKET, OpusParams, Transcoder,
};

use crate::bencode::Value;
use crate::child::Proc;
use crate::proc_cpu::process_cpu_ns;
use crate::relays::{describe, free_port};

const FRAME: usize = 160;
const BITRATE: u32 = 24_000;
const PT_OPUS: u8 = 96;
const RTPENGINE_PORTS: (u16, u16) = (30_000, 33_999);
const STARTUP: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct TranscodeArgs {
    /// Complexities measured in process (sluice's default is added).
    #[arg(long, value_delimiter = ',', default_value = "0,5")]
    complexity: Vec<u8>,
    /// Audio seconds per in-process measurement (per direction).
    #[arg(long, default_value_t = 60)]
    audio_secs: u32,
    /// Concurrent calls through rtpengine (0: skip rtpengine).
    #[arg(long, default_value_t = 50)]
    calls: u32,
    /// Seconds of real-time media through rtpengine (after a 2 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// The codec rtpengine transcodes to (its ng `codec: { transcode: [...] }` entry).
    #[arg(long, default_value = "opus/48000/2/24000")]
    rtpengine_codec: String,
    /// The rtpengine executable.
    #[arg(long, default_value = "/usr/bin/rtpengine")]
    rtpengine: PathBuf,
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

/// An encoder set up like sluice's (relay/src/codec/opus.rs).
fn encoder(p: &OpusParams) -> Result<Encoder> {
    let mut e = Encoder::new(SampleRate::Hz8000, Channels::Mono, Application::Voip)?;
    e.set_bitrate(Bitrate::BitsPerSecond(p.bitrate as i32))?;
    e.set_complexity(p.complexity)?;
    e.set_inband_fec(p.inband_fec)?;
    e.set_packet_loss_perc(p.expected_loss_pct)?;
    e.set_max_bandwidth(Bandwidth::Narrowband)?;
    Ok(e)
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
    let enc = encoder(&p)?;
    let mut packets = Vec::with_capacity(frames);
    let mut buf = [0u8; 1500];
    let t0 = thread_cpu_ns();
    for f in frames_of(speech, frames) {
        let n = enc.encode(f, &mut buf)?;
        packets.push(buf[..n].to_vec());
    }
    let enc_ns = thread_cpu_ns() - t0;
    let mut dec = Decoder::new(SampleRate::Hz8000, Channels::Mono)?;
    let mut pcm = [0i16; FRAME];
    let t0 = thread_cpu_ns();
    for pkt in &packets {
        let n = dec.decode(
            Some(Packet::try_from(&pkt[..])?),
            (&mut pcm[..]).try_into()?,
            false,
        )?;
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
    ng: UdpSocket,
    seq: u64,
}

impl Rtpengine {
    fn start(exe: &Path, log: &Path) -> Result<Self> {
        if !exe.is_file() {
            bail!(
                "rtpengine not found at {} (apt-get install rtpengine-daemon)",
                exe.display()
            );
        }
        let ng_port = free_port()?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "--config-file=none".to_string(),
            "--table=-1".to_string(),
            "--interface=127.0.0.1".to_string(),
            format!("--listen-ng=127.0.0.1:{ng_port}"),
            "--foreground".to_string(),
            "--log-stderr".to_string(),
            "--log-level=4".to_string(),
            // One media thread: channels per core is then what one core does.
            "--num-threads=1".to_string(),
            format!("--port-min={}", RTPENGINE_PORTS.0),
            format!("--port-max={}", RTPENGINE_PORTS.1),
            "--delete-delay=0".to_string(),
        ]);
        let log_out = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(log_out.try_clone()?)
            .stderr(log_out);
        let cmdline = describe(&cmd);
        let proc = Proc::spawn("rtpengine", &mut cmd, Some(log.to_path_buf()))?;
        let ng = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        ng.connect((Ipv4Addr::LOCALHOST, ng_port))?;
        ng.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut me = Self {
            proc,
            cmdline,
            ng,
            seq: 0,
        };
        let deadline = Instant::now() + STARTUP;
        // Bounded by STARTUP.
        loop {
            me.proc.ensure_running()?;
            match me.request(&Value::dict([("command", Value::str("ping"))])) {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("rtpengine startup{}", me.proc.log_tail())));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(me)
    }

    /// `<cookie> <bencoded dict>` over UDP; retries reuse the cookie (rtpengine caches replies).
    fn request(&mut self, cmd: &Value) -> Result<Value> {
        self.seq += 1;
        let cookie = format!("{}_{}", std::process::id(), self.seq);
        let mut msg = format!("{cookie} ").into_bytes();
        cmd.encode(&mut msg);
        let mut buf = vec![0u8; 65536];
        for _ in 0..5 {
            if self.ng.send(&msg).is_err() {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            while let Ok(n) = self.ng.recv(&mut buf) {
                let reply = &buf[..n];
                if let Some(sp) = reply.iter().position(|&b| b == b' ')
                    && &reply[..sp] == cookie.as_bytes()
                {
                    let v = Value::decode(&reply[sp + 1..])?;
                    return match v.get_str("result").as_deref() {
                        Some("ok") | Some("pong") => Ok(v),
                        _ => bail!("rtpengine refused: {v:?}"),
                    };
                }
            }
        }
        bail!("no reply from rtpengine's ng port")
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

struct EngineRun {
    calls: u32,
    secs: f64,
    cpu_ns: u64,
    /// Packets each side sent, and received in the other codec, in the measured interval.
    caller_sent: u64,
    caller_rcvd: u64,
    callee_sent: u64,
    callee_rcvd: u64,
    offer_pt: u8,
}

impl EngineRun {
    fn per_core(&self) -> f64 {
        self.calls as f64 * self.secs / (self.cpu_ns as f64 / 1e9)
    }
}

fn rtpengine_run(args: &TranscodeArgs, speech: &[i16], log: &Path) -> Result<(EngineRun, String)> {
    let mut rtpe = Rtpengine::start(&args.rtpengine, log)?;
    let cmdline = rtpe.cmdline.clone();
    let calls = args.calls as usize;
    let mut callers = Vec::new();
    let mut callees = Vec::new();
    let mut to_a = Vec::new(); // where each caller sends (rtpengine's caller-facing port)
    let mut to_b = Vec::new(); // where each callee sends
    let mut offer_pt = 0;
    for i in 0..calls {
        let a = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let b = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let a_at = crate::sys::local_v4(&a)?;
        let b_at = crate::sys::local_v4(&b)?;
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
            (
                "sdp",
                Value::str(&sdp(i as u64, a_at, "0", "a=rtpmap:0 PCMU/8000\r\n")),
            ),
        ]))?;
        let offer_sdp = offer.get_str("sdp").unwrap_or_default();
        offer_pt = opus_pt(&offer_sdp).ok_or_else(|| {
            anyhow!("rtpengine's offer to the callee has no opus (transcode flag not taken):\n{offer_sdp}")
        })?;
        to_b.push(crate::sdp::audio_destination(&offer_sdp)?);
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
        to_a.push(crate::sdp::audio_destination(&answer_sdp)?);
        for s in [&a, &b] {
            s.set_nonblocking(true)?;
        }
        callers.push(a);
        callees.push(b);
    }
    // Media: the same speech, PCMU from callers and Opus (24 kbit/s, FEC) from callees.
    let frames = speech.len() / FRAME;
    let enc = encoder(&opus_params(DEFAULT_OPUS_COMPLEXITY))?;
    let mut buf = [0u8; 1500];
    let mut opus_frames = Vec::with_capacity(frames);
    let mut pcmu_frames = Vec::with_capacity(frames);
    for f in speech.chunks_exact(FRAME) {
        let n = enc.encode(f, &mut buf)?;
        opus_frames.push(buf[..n].to_vec());
        pcmu_frames.push(f.iter().map(|&s| g711::ulaw_encode(s)).collect::<Vec<u8>>());
    }
    let warmup = Duration::from_secs(2);
    let total = warmup + Duration::from_secs_f64(args.secs);
    let start = Instant::now();
    let mut tick = 0u64;
    let (mut a_sent, mut b_sent, mut a_rcvd, mut b_rcvd) = (0u64, 0u64, 0u64, 0u64);
    let mut counting = None;
    let mut rbuf = [0u8; 2048];
    // Bounded: one tick per 20 ms until `total` has passed.
    while start.elapsed() < total {
        if counting.is_none() && start.elapsed() >= warmup {
            counting = Some((Instant::now(), process_cpu_ns(rtpe.proc.pid())?));
            (a_sent, b_sent, a_rcvd, b_rcvd) = (0, 0, 0, 0);
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
                offer_pt,
                seq,
                (tick * 960) as u32,
                0xB000 + i as u32,
                &opus_frames[f],
            );
            a_sent += callers[i].send_to(&pa, to_a[i]).is_ok() as u64;
            b_sent += callees[i].send_to(&pb, to_b[i]).is_ok() as u64;
        }
        for i in 0..calls {
            // Bounded by the socket buffers: each recv takes one queued packet.
            // Only what was transcoded counts: PCMU (PT 0) to the caller, Opus to the callee.
            while let Ok(n) = callers[i].recv(&mut rbuf) {
                a_rcvd += (n > 12 && rbuf[1] & 0x7F == 0) as u64;
            }
            while let Ok(n) = callees[i].recv(&mut rbuf) {
                b_rcvd += (n > 12 && rbuf[1] & 0x7F == offer_pt) as u64;
            }
        }
        tick += 1;
        let next = start + Duration::from_millis(20 * tick);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let (t0, cpu0) = counting.context("no measured interval")?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu_ns = process_cpu_ns(rtpe.proc.pid())? - cpu0;
    rtpe.proc.ensure_running()?;
    for i in 0..calls {
        let _ = rtpe.request(&Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(&format!("transcode-{i}"))),
            ("from-tag", Value::str("caller")),
        ]));
    }
    Ok((
        EngineRun {
            calls: args.calls,
            secs,
            cpu_ns,
            caller_sent: a_sent,
            caller_rcvd: a_rcvd,
            callee_sent: b_sent,
            callee_rcvd: b_rcvd,
            offer_pt,
        },
        cmdline,
    ))
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
    let engine = if args.calls > 0 {
        let work = target_dir().join("bench-transcode");
        std::fs::create_dir_all(&work)?;
        let r = rtpengine_run(&args, &speech, &work.join("rtpengine.log"))?;
        eprintln!(
            "[bench transcode] rtpengine x{}: {:.0} ch/core",
            r.0.calls,
            r.0.per_core()
        );
        Some(r)
    } else {
        None
    };
    let report = report(&args, &rows, engine.as_ref());
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::File::create(out)?.write_all(report.as_bytes())?;
    }
    Ok(())
}

fn report(
    args: &TranscodeArgs,
    rows: &[InProcess],
    engine: Option<&(EngineRun, String)>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## G.711 <-> Opus transcoding, bidirectional channels per core\n\n\
         20 ms frames of speech (tests/data/speech_8k.wav, looped), Opus 8 kHz narrowband VoIP \
         {} kbit/s, in-band FEC for 5% expected loss. In process: {} audio seconds per \
         direction, thread CPU time. sluice's default complexity: {DEFAULT_OPUS_COMPLEXITY}.\n",
        BITRATE / 1000,
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
    match engine {
        Some((e, cmdline)) => {
            let def = rows
                .iter()
                .find(|r| r.complexity == DEFAULT_OPUS_COMPLEXITY)
                .map(InProcess::sluice);
            let _ = writeln!(
                s,
                "\nrtpengine (`{cmdline}`), {} calls offered PCMU, transcoded to `{}` (callee \
                 answers opus PT {}), real-time 20 ms RTP both ways for {:.1} s: CPU {:.3} s \
                 -> **{:.0} bidirectional channels per core**. Packets in the interval: caller \
                 sent {} / received {}, callee sent {} / received {}.",
                e.calls,
                args.rtpengine_codec,
                e.offer_pt,
                e.secs,
                e.cpu_ns as f64 / 1e9,
                e.per_core(),
                e.caller_sent,
                e.caller_rcvd,
                e.callee_sent,
                e.callee_rcvd
            );
            if let Some(d) = def {
                let _ = writeln!(
                    s,
                    "\nsluice (in process, complexity {DEFAULT_OPUS_COMPLEXITY}) / rtpengine: \
                     {:.2}x.",
                    d / e.per_core()
                );
            }
        }
        None => {
            let _ = writeln!(s, "\nrtpengine: not run (--calls 0).");
        }
    }
    let _ = writeln!(
        s,
        "\nsluice daemon: NOT MEASURED (the daemon's engine does not run transcoded streams on \
         this branch yet)."
    );
    s
}
