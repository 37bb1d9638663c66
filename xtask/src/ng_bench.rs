//! `cargo xtask bench ng`: the control path as Kamailio drives it. Calls set up and torn down
//! through rtpengine's ng protocol (offer, answer, delete per call) against sluice and against
//! rtpengine, same SDPs, one run: calls per second, the relay's CPU per call, and whether a
//! retransmitted request allocated anything twice.
//!
//! The client is one UDP socket keeping `--window` calls in flight (each call's three requests
//! in order, many calls at once, as a busy proxy's workers do), each request with its own
//! cookie. A request unanswered for 1 s is resent with the same cookie (Kamailio's behaviour);
//! every call's delete must say ok, and afterwards the relay must hold no call and no port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sluice_control::ng::bencode::Value;

use crate::child::Proc;
use crate::netns::Placement;
use crate::proc_cpu::process_cpu_ns;
use crate::relays::{free_port, spawn_rtpengine};
use crate::sdp;

#[derive(clap::Args)]
pub struct NgArgs {
    /// Calls per relay.
    #[arg(long, default_value_t = 20_000)]
    calls: u32,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    window: u32,
    #[arg(long, default_value = "/usr/bin/rtpengine")]
    rtpengine: PathBuf,
    /// The sluice executable (default: target/release/sluice).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Write the Markdown report here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Both relays' ports: 2 per side per call, far more than the window needs.
const PORTS: (u16, u16) = (40000, 44999);
const RESEND: Duration = Duration::from_secs(1);
/// A run that takes longer than this has failed.
const LIMIT: Duration = Duration::from_secs(300);

struct Outcome {
    name: &'static str,
    cmdline: String,
    calls: u32,
    wall: Duration,
    cpu_ns: u64,
    resent: u64,
    errors: Vec<String>,
    left: String,
}

pub fn run(args: NgArgs) -> Result<()> {
    let work = std::env::temp_dir().join(format!("sluice-bench-ng-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let exe = args.sluice.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sluice")
    });
    ensure!(
        exe.is_file(),
        "{} does not exist: cargo build --release -p sluice-control",
        exe.display()
    );
    ensure!(
        args.rtpengine.is_file(),
        "{} does not exist: apt-get install rtpengine-daemon, or --rtpengine PATH",
        args.rtpengine.display()
    );
    let mut results = Vec::new();
    {
        let port = free_port()?;
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "--control"])
            .arg(format!("unix:{}", work.join("control.sock").display()))
            .args([
                "--media-ip",
                "127.0.0.1",
                "--xdp",
                "off",
                "--log-level",
                "warn",
            ])
            .args(["--ports", &format!("{}-{}", PORTS.0, PORTS.1)])
            .args(["--ng", &format!("udp:127.0.0.1:{port}")])
            .stdin(Stdio::null());
        let log = work.join("sluice.log");
        let f = std::fs::File::create(&log)?;
        cmd.stdout(f.try_clone()?).stderr(f);
        let cmdline = crate::relays::describe(&cmd);
        let proc = Proc::spawn("sluice", &mut cmd, Some(log))?;
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        wait_pong(server)?;
        results.push(drive("sluice", cmdline, &proc, server, &args)?);
    }
    {
        let log = work.join("rtpengine.log");
        let (proc, cmdline, ng) = spawn_rtpengine(
            &args.rtpengine,
            PORTS,
            1,
            Ipv4Addr::LOCALHOST,
            &Placement::default(),
            &log,
        )?;
        let server = ng.server()?;
        results.push(drive("rtpengine", cmdline, &proc, server, &args)?);
    }
    let report = report(&results, &args);
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
        println!("[bench ng] report written to {}", out.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    for r in &results {
        ensure!(
            r.errors.is_empty(),
            "{}: {} requests failed, first: {}",
            r.name,
            r.errors.len(),
            r.errors[0]
        );
    }
    Ok(())
}

fn wait_pong(server: SocketAddrV4) -> Result<()> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        s.send_to(b"p d7:command4:pinge", server)?;
        if let Ok(n) = s.recv(&mut buf)
            && buf[..n].windows(4).any(|w| w == b"pong")
        {
            return Ok(());
        }
    }
    bail!("no ng pong from {server} within 10 s")
}

/// One call's progress: 0 offer, 1 answer, 2 delete, 3 done.
struct Call {
    step: u8,
    cookie: String,
    sent: Instant,
    msg: Vec<u8>,
}

fn request(i: u32, step: u8, seq: u64) -> (String, Vec<u8>) {
    let call_id = format!("bench-ng-{i}");
    let caller = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10_000 + (i % 20_000) as u16 * 2);
    let callee = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50_000 + (i % 7_000) as u16 * 2);
    let v = match step {
        0 => Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str("caller")),
            ("sdp", Value::str(&sdp::audio(u64::from(i), caller))),
            ("supports", Value::List(vec![Value::str("load limit")])),
            ("replace", Value::List(vec![Value::str("origin")])),
        ]),
        1 => Value::dict([
            ("command", Value::str("answer")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str("caller")),
            ("to-tag", Value::str("callee")),
            ("sdp", Value::str(&sdp::audio(u64::from(i), callee))),
            ("replace", Value::List(vec![Value::str("origin")])),
        ]),
        _ => Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str(&call_id)),
            ("from-tag", Value::str("caller")),
        ]),
    };
    // Its own prefix: the ping that started the relay used "PID_1" from another client.
    let cookie = format!("ng{}_{seq}", std::process::id());
    let mut msg = format!("{cookie} ").into_bytes();
    v.encode(&mut msg);
    (cookie, msg)
}

fn drive(
    name: &'static str,
    cmdline: String,
    proc: &Proc,
    server: SocketAddrV4,
    args: &NgArgs,
) -> Result<Outcome> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut inflight: HashMap<String, (u32, Call)> = HashMap::new();
    let (mut next, mut done, mut seq, mut resent) = (0u32, 0u32, 0u64, 0u64);
    let mut errors = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let cpu0 = process_cpu_ns(proc.pid())?;
    let t0 = Instant::now();
    while done < args.calls {
        ensure!(t0.elapsed() < LIMIT, "{name}: not done within {LIMIT:?}");
        while next < args.calls && (inflight.len() as u32) < args.window {
            seq += 1;
            let (cookie, msg) = request(next, 0, seq);
            sock.send(&msg)?;
            let call = Call {
                step: 0,
                cookie: cookie.clone(),
                sent: Instant::now(),
                msg,
            };
            inflight.insert(cookie, (next, call));
            next += 1;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                let d = &buf[..n];
                let Some(sp) = d.iter().position(|&b| b == b' ') else {
                    continue;
                };
                let cookie = String::from_utf8_lossy(&d[..sp]).into_owned();
                let Some((i, mut call)) = inflight.remove(&cookie) else {
                    continue; // a reply to a resent copy, already handled
                };
                let reply = Value::decode(&d[sp + 1..]).context("reply bencode")?;
                if reply.get_str("result").as_deref() != Some("ok") {
                    errors.push(format!("call {i} step {}: {reply:?}", call.step));
                    done += 1;
                    continue;
                }
                call.step += 1;
                if call.step == 3 {
                    done += 1;
                    continue;
                }
                seq += 1;
                let (cookie, msg) = request(i, call.step, seq);
                sock.send(&msg)?;
                call.cookie = cookie.clone();
                call.sent = Instant::now();
                call.msg = msg;
                inflight.insert(cookie, (i, call));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        for (_, call) in inflight.values_mut() {
            if now.duration_since(call.sent) >= RESEND {
                sock.send(&call.msg)?;
                call.sent = now;
                resent += 1;
            }
        }
    }
    let wall = t0.elapsed();
    let cpu_ns = process_cpu_ns(proc.pid())? - cpu0;
    // What the relay holds afterwards: nothing, or a retransmission allocated twice.
    let stats = Value::dict([("command", Value::str("statistics"))]);
    let mut msg = b"s ".to_vec();
    stats.encode(&mut msg);
    sock.send(&msg)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let left = match sock.recv(&mut buf) {
        Ok(n) => summarize_left(&buf[2..n]),
        Err(e) => format!("no statistics reply: {e}"),
    };
    Ok(Outcome {
        name,
        cmdline,
        calls: args.calls,
        wall,
        cpu_ns,
        resent,
        errors,
        left,
    })
}

/// The sessions still held, from either relay's statistics reply.
fn summarize_left(reply: &[u8]) -> String {
    let Ok(v) = Value::decode(reply) else {
        return "unreadable statistics".into();
    };
    let cur = v
        .get("statistics")
        .and_then(|s| s.get("currentstatistics"))
        .and_then(|c| c.get("sessionsown"));
    match cur {
        Some(Value::Int(n)) => format!("{n} sessions"),
        _ => "statistics without currentstatistics.sessionsown".into(),
    }
}

fn report(rs: &[Outcome], args: &NgArgs) -> String {
    let per_cpu = |r: &Outcome| f64::from(r.calls) / (r.cpu_ns as f64 / 1e9);
    let base = rs.iter().find(|r| r.name == "rtpengine").map(per_cpu);
    let mut s = String::from(
        "| relay | calls | window | wall s | calls/s | relay CPU s | CPU µs per call | calls per CPU-second | vs rtpengine | resent | failed | held after |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rs {
        let pc = per_cpu(r);
        s += &format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.3} | {:.1} | {:.0} | {} | {} | {} | {} |\n",
            r.name,
            r.calls,
            args.window,
            r.wall.as_secs_f64(),
            f64::from(r.calls) / r.wall.as_secs_f64(),
            r.cpu_ns as f64 / 1e9,
            r.cpu_ns as f64 / 1e3 / f64::from(r.calls),
            pc,
            base.map_or("-".into(), |b| format!("{:.2}x", pc / b)),
            r.resent,
            r.errors.len(),
            r.left,
        );
    }
    s += "\nEach call: offer, answer, delete over ng (UDP, loopback), PCMU SDP, `replace-origin`; \
          relay CPU from /proc/PID/task/*/schedstat over the run, all threads.\n";
    for r in rs {
        s += &format!("- `{}`: `{}`\n", r.name, r.cmdline);
    }
    s
}
