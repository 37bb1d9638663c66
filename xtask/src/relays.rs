//! The relays under test, each its own process, each driven by its own control protocol:
//! sluice over gRPC, rtpengine over ng (bencode over UDP), the baseline over a JSON line.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::baseline;
use crate::child::{Lines, Proc};
use crate::netns::{self, Placement};
use crate::sdp;
use sluice_control::ng::bencode::Value;

/// How long a relay gets to come up and answer its control protocol.
const STARTUP: Duration = Duration::from_secs(10);

/// Where the two endpoints of one call send their media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDests {
    /// The caller sends here (the relay's caller-facing port).
    pub a: SocketAddrV4,
    /// The callee would send here (the relay's callee-facing port); None where the relay has
    /// no such side (the bare redirect).
    pub b: Option<SocketAddrV4>,
    /// The callee's SRTP master key and salt (AES_CM_128_HMAC_SHA1_80) where the relay
    /// bridges to SDES-SRTP towards the callee (--srtp): what the callee protects with.
    pub callee_key: Option<[u8; 30]>,
}

/// Bridging to SDES-SRTP towards the callee: the callee's answer to the relay's offer, with a
/// fresh key of its own. Returns (answer SDP, key).
fn srtp_callee_answer(
    i: usize,
    callee: SocketAddrV4,
    offer_sdp: &str,
) -> Result<(String, [u8; 30])> {
    let tag = crate::bridge_bench::offered_tag(offer_sdp)?;
    let key: [u8; 30] = rand::random();
    Ok((
        crate::bridge_bench::srtp_answer_with_key(i as u64, callee, tag, &key),
        key,
    ))
}

pub trait Relay {
    fn name(&self) -> &'static str;
    /// The command line that started it, for the report.
    fn command_line(&self) -> String;
    /// The process whose CPU time is measured.
    fn pid(&self) -> u32;
    /// Sets up one call per callee, all from `caller`; returns, per call, where each side must
    /// send its media.
    fn setup(&mut self, caller: SocketAddrV4, callees: &[SocketAddrV4]) -> Result<Vec<CallDests>>;
    /// Ends the calls of the last `setup`.
    fn teardown(&mut self) -> Result<()>;
    fn ensure_running(&mut self) -> Result<()>;
    /// After the warm-up: waits (at most `timeout`) until the relay forwards the calls of the
    /// last `setup` on the path under test, and says how it knows. Only sluice's XDP path has
    /// anything to wait for (streams move into the kernel after they settle).
    fn settle(&mut self, _timeout: Duration) -> Result<Option<String>> {
        Ok(None)
    }
    /// Packets forwarded in the kernel so far, where the relay counts them (sluice with XDP):
    /// lets the report prove that the path measured is the one named.
    fn kernel_packets(&mut self) -> Option<u64> {
        None
    }
    /// The AF_XDP workers' counters since they started, where the relay has any (sluice with
    /// `--workers`): proves the worker path carried the packets, and says where it dropped.
    fn worker_summary(&mut self) -> Option<String> {
        None
    }
}

/// A free TCP/UDP port on 127.0.0.1 for a control socket. Racy in principle (someone could take
/// it before the relay binds it); a clash shows up as a startup error quoting the relay's log.
pub fn free_port() -> Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let t = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, s.local_addr()?.port()));
    match t {
        Ok(t) => Ok(t.local_addr()?.port()),
        Err(_) => Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port()),
    }
}

fn log_file(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating log file {}", path.display()))
}

pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sluice daemon started for a bench, and a gRPC client it answered Ping on.
pub struct SluiceProc {
    pub proc: Proc,
    pub cmdline: String,
    /// One thread: the gRPC client's tasks run on the calling thread, which is also the one
    /// that spawns children (see Proc::spawn) and the one whose CPU is not measured.
    pub rt: tokio::runtime::Runtime,
    pub client: sluice_control::proto::control_client::ControlClient<tonic::transport::Channel>,
}

/// Starts `cmd` (a `sluice run` command line) with its output in `log` and waits, at most
/// STARTUP, until it answers gRPC Ping on `control`.
pub fn start_sluice(
    name: &'static str,
    mut cmd: Command,
    control: &sluice_control::config::ControlAddr,
    log: &Path,
) -> Result<SluiceProc> {
    use sluice_control::proto::PingRequest;
    let log_out = log_file(log)?;
    cmd.stdin(Stdio::null())
        .stdout(log_out.try_clone()?)
        .stderr(log_out);
    let cmdline = describe(&cmd);
    let mut proc = Proc::spawn(name, &mut cmd, Some(log.to_path_buf()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + STARTUP;
    // Bounded by STARTUP.
    let client = loop {
        proc.ensure_running()
            .context("sluice exited during startup")?;
        let attempt = rt.block_on(async {
            let mut c = sluice_control::client::connect(control).await?;
            c.ping(PingRequest {}).await?;
            anyhow::Ok(c)
        });
        match attempt {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "sluice did not answer gRPC Ping on {control} within {} s{}",
                    STARTUP.as_secs(),
                    proc.log_tail()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    Ok(SluiceProc {
        proc,
        cmdline,
        rt,
        client,
    })
}

/// Tags and ids per call; `run` keeps call-ids unique across the setups of one relay process.
fn call_ids(run: u32, i: usize) -> (String, String, String) {
    (
        format!("bench-{run}-{i}"),
        format!("caller-{i}"),
        format!("callee-{i}"),
    )
}

// ---------------------------------------------------------------------------------------------

pub struct Rtpengine {
    proc: Proc,
    cmdline: String,
    ng: NgClient,
    run: u32,
    calls: Vec<(String, String)>,
    /// Bridge to SDES-SRTP towards the callee (bench forward --srtp).
    pub srtp: bool,
}

impl Rtpengine {
    /// `exe` defaults to `rtpengine` on PATH.
    pub fn find(exe: Option<&Path>) -> Result<PathBuf> {
        if let Some(p) = exe {
            if p.is_file() {
                return Ok(p.to_path_buf());
            }
            bail!(
                "rtpengine not found at {} (on Debian/Ubuntu: `apt-get install \
                 rtpengine-daemon`)",
                p.display()
            );
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
            .map(|d| d.join("rtpengine"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "rtpengine is not installed: install it with `apt-get install rtpengine-daemon` \
                     (Debian/Ubuntu), pass --rtpengine PATH, or leave it out with \
                     --relays sluice,baseline"
                )
            })
    }

    /// `interface`: its media address; `placement`: where it runs (its ng port is then opened
    /// inside that namespace too).
    pub fn start(
        exe: &Path,
        ports: (u16, u16),
        threads: u32,
        interface: Ipv4Addr,
        placement: &Placement,
        log: &Path,
    ) -> Result<Self> {
        let (proc, cmdline, ng) = spawn_rtpengine(exe, ports, threads, interface, placement, log)?;
        Ok(Self {
            proc,
            cmdline,
            ng,
            run: 0,
            calls: Vec::new(),
            srtp: false,
        })
    }

    fn command(&self, cmd: Value) -> Result<Value> {
        let reply = self.ng.request(&cmd)?;
        match reply.get_str("result").as_deref() {
            Some("ok") => Ok(reply),
            _ => bail!(
                "rtpengine refused {}: {}",
                cmd.get_str("command").unwrap_or_default(),
                reply
                    .get_str("error-reason")
                    .unwrap_or_else(|| format!("{reply:?}"))
            ),
        }
    }
}

impl Relay for Rtpengine {
    fn name(&self) -> &'static str {
        "rtpengine"
    }

    fn command_line(&self) -> String {
        self.cmdline.clone()
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn setup(&mut self, caller: SocketAddrV4, callees: &[SocketAddrV4]) -> Result<Vec<CallDests>> {
        self.run += 1;
        let mut dests = Vec::with_capacity(callees.len());
        for (i, &callee) in callees.iter().enumerate() {
            let (call_id, from_tag, to_tag) = call_ids(self.run, i);
            let mut offer = vec![
                ("command", Value::str("offer")),
                ("call-id", Value::str(&call_id)),
                ("from-tag", Value::str(&from_tag)),
                ("sdp", Value::str(&sdp::audio(i as u64, caller))),
            ];
            if self.srtp {
                offer.push(("transport-protocol", Value::str("RTP/SAVP")));
            }
            let offer = self.command(Value::dict(offer))?;
            self.calls.push((call_id.clone(), from_tag.clone()));
            // Where the callee sends (priming in --netns mode; else it proves the offer worked).
            let offer_sdp = offer.get_str("sdp").unwrap_or_default();
            let b = sdp::audio_destination(&offer_sdp).context("rtpengine's offer reply")?;
            let (answer_sdp, callee_key) = if self.srtp {
                let (sdp, key) = srtp_callee_answer(i, callee, &offer_sdp)?;
                (sdp, Some(key))
            } else {
                (sdp::audio(i as u64, callee), None)
            };
            let answer = self.command(Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str(&call_id)),
                ("from-tag", Value::str(&from_tag)),
                ("to-tag", Value::str(&to_tag)),
                ("sdp", Value::str(&answer_sdp)),
            ]))?;
            dests.push(CallDests {
                a: sdp::audio_destination(&answer.get_str("sdp").unwrap_or_default())
                    .context("rtpengine's answer reply")?,
                b: Some(b),
                callee_key,
            });
        }
        Ok(dests)
    }

    fn teardown(&mut self) -> Result<()> {
        let mut first_err = None;
        for (call_id, from_tag) in std::mem::take(&mut self.calls) {
            let r = self.command(Value::dict([
                ("command", Value::str("delete")),
                ("call-id", Value::str(&call_id)),
                ("from-tag", Value::str(&from_tag)),
            ]));
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }
}

/// Starts rtpengine the way every bench runs it (no config file, no kernel table, its own ports,
/// `threads` media threads) and waits until its ng port answers a ping.
pub(crate) fn spawn_rtpengine(
    exe: &Path,
    ports: (u16, u16),
    threads: u32,
    interface: Ipv4Addr,
    placement: &Placement,
    log: &Path,
) -> Result<(Proc, String, NgClient)> {
    // A free port of the namespace it runs in (its loopback is its own).
    let ng_port = match &placement.netns {
        Some(ns) => netns::in_ns(ns, free_port)??,
        None => free_port()?,
    };
    let mut cmd = placement.command(exe);
    cmd.args([
        // The Debian package's /etc/rtpengine/rtpengine.conf would add a kernel table and
        // CLI/HTTP listeners on fixed ports; start from nothing instead.
        "--config-file=none".to_string(),
        "--table=-1".to_string(),
        format!("--interface={interface}"),
        format!("--listen-ng=127.0.0.1:{ng_port}"),
        "--foreground".to_string(),
        "--log-stderr".to_string(),
        "--log-level=4".to_string(),
        format!("--num-threads={threads}"),
        format!("--port-min={}", ports.0),
        format!("--port-max={}", ports.1),
        // Free a deleted call's ports at once, so the next setup of the run starts clean.
        "--delete-delay=0".to_string(),
    ]);
    let log_out = log_file(log)?;
    cmd.stdin(Stdio::null())
        .stdout(log_out.try_clone()?)
        .stderr(log_out);
    let cmdline = describe(&cmd);
    let mut proc = Proc::spawn("rtpengine", &mut cmd, Some(log.to_path_buf()))?;
    let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, ng_port);
    let ng = match &placement.netns {
        Some(ns) => netns::in_ns(ns, || NgClient::new(server))??,
        None => NgClient::new(server)?,
    };
    let deadline = Instant::now() + STARTUP;
    // Bounded by STARTUP.
    loop {
        proc.ensure_running()?;
        match ng.request(&Value::dict([("command", Value::str("ping"))])) {
            Ok(r) if r.get_str("result").as_deref() == Some("pong") => break,
            Ok(r) => bail!("rtpengine answered ping with {r:?}"),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "rtpengine did not answer ng ping on 127.0.0.1:{ng_port} within {} s{}",
                    STARTUP.as_secs(),
                    proc.log_tail()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Ok((proc, cmdline, ng))
}

/// rtpengine's ng protocol: `<cookie> <bencoded dict>` over UDP, the reply echoing the cookie.
pub(crate) struct NgClient {
    sock: UdpSocket,
    seq: std::cell::Cell<u64>,
}

impl NgClient {
    const TRIES: u32 = 3;
    const TIMEOUT: Duration = Duration::from_millis(700);

    fn new(server: SocketAddrV4) -> Result<Self> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(Self::TIMEOUT))?;
        Ok(Self {
            sock,
            seq: std::cell::Cell::new(0),
        })
    }

    /// The ng address this client talks to.
    pub(crate) fn server(&self) -> Result<SocketAddrV4> {
        match self.sock.peer_addr()? {
            std::net::SocketAddr::V4(a) => Ok(a),
            other => bail!("ng server {other} is not IPv4"),
        }
    }

    /// A request whose reply must say `result: ok` (or `pong`); anything else is an error
    /// carrying rtpengine's reply.
    pub(crate) fn command(&self, cmd: &Value) -> Result<Value> {
        let reply = self.request(cmd)?;
        match reply.get_str("result").as_deref() {
            Some("ok") | Some("pong") => Ok(reply),
            _ => bail!(
                "rtpengine refused {}: {reply:?}",
                cmd.get_str("command").unwrap_or_default()
            ),
        }
    }

    /// Retries reuse the cookie: rtpengine caches replies per cookie, so a retransmitted offer
    /// is answered from the cache instead of creating the call twice.
    fn request(&self, cmd: &Value) -> Result<Value> {
        self.seq.set(self.seq.get() + 1);
        let cookie = format!("{}_{}", std::process::id(), self.seq.get());
        let mut msg = format!("{cookie} ").into_bytes();
        cmd.encode(&mut msg);
        let mut buf = vec![0u8; 65536];
        for _ in 0..Self::TRIES {
            // A refused send (nothing listening yet) is retried like a lost one.
            if self.sock.send(&msg).is_err() {
                std::thread::sleep(Self::TIMEOUT / 4);
                continue;
            }
            let deadline = Instant::now() + Self::TIMEOUT;
            // Bounded by `deadline`: every recv times out by then.
            while Instant::now() < deadline {
                let Ok(n) = self.sock.recv(&mut buf) else {
                    break;
                };
                let reply = &buf[..n];
                let Some(space) = reply.iter().position(|&b| b == b' ') else {
                    continue;
                };
                if &reply[..space] != cookie.as_bytes() {
                    continue; // a late reply to an earlier request
                }
                return Value::decode(&reply[space + 1..]).context("decoding rtpengine's reply");
            }
        }
        bail!(
            "no reply from rtpengine's ng port {} after {} tries",
            self.sock.peer_addr()?,
            Self::TRIES
        )
    }
}

// ---------------------------------------------------------------------------------------------

pub struct Sluice {
    name: &'static str,
    proc: Proc,
    cmdline: String,
    rt: tokio::runtime::Runtime,
    client: sluice_control::proto::control_client::ControlClient<tonic::transport::Channel>,
    run: u32,
    calls: Vec<(String, String)>,
    /// Bridge to SDES-SRTP towards the callee (bench forward --srtp): the callee-side Offer
    /// asks for `srtp: SRTP_OFFER`.
    pub srtp: bool,
}

/// How to run sluice.
pub struct SluiceOpts {
    /// Its name in the report.
    pub name: &'static str,
    pub ports: (u16, u16),
    pub media_ip: Ipv4Addr,
    /// Control over this Unix socket (needed when it runs in another network namespace);
    /// else TCP on a free loopback port.
    pub control_socket: Option<PathBuf>,
    /// `--xdp native --xdp-iface ...` on these interfaces; None: `--xdp off`.
    pub xdp_ifaces: Option<Vec<String>>,
    /// `--workers 1 --worker-cores CPU`: one AF_XDP worker pinned there (with `xdp_ifaces`).
    pub worker_cpu: Option<usize>,
    /// `--xdp-metadata off`: the program variant a kernel without `bpf_xdp_adjust_meta` gets
    /// (workers route through the kernel), on any kernel.
    pub xdp_metadata_off: bool,
    pub placement: Placement,
}

impl Sluice {
    pub fn start(exe: &Path, opts: SluiceOpts, log: &Path) -> Result<Self> {
        use sluice_control::config::ControlAddr;
        if !exe.is_file() {
            bail!(
                "the sluice binary {} does not exist: build it with \
                 `cargo build --release -p sluice-control`",
                exe.display()
            );
        }
        let control = match &opts.control_socket {
            Some(path) => {
                let _ = std::fs::remove_file(path);
                ControlAddr::Unix(path.clone())
            }
            None => ControlAddr::Tcp((Ipv4Addr::LOCALHOST, free_port()?).into()),
        };
        let mut cmd = opts.placement.command(exe);
        cmd.args([
            "run".to_string(),
            "--control".to_string(),
            control.to_string(),
            "--media-ip".to_string(),
            opts.media_ip.to_string(),
            "--ports".to_string(),
            format!("{}-{}", opts.ports.0, opts.ports.1),
            "--log-level".to_string(),
            "warn".to_string(),
        ]);
        if opts.placement.netns.is_some() {
            // No inactivity timeout during a long run (10,000 calls take a while to set up).
            cmd.args(["--timeout", "3600"]);
        }
        // The path under test and nothing else: never "auto".
        match &opts.xdp_ifaces {
            Some(ifaces) => {
                cmd.args(["--xdp", "native"]);
                for i in ifaces {
                    cmd.args(["--xdp-iface", i]);
                }
            }
            None => {
                cmd.args(["--xdp", "off"]);
            }
        }
        if let Some(cpu) = opts.worker_cpu {
            cmd.args(["--workers", "1", "--worker-cores", &cpu.to_string()]);
        }
        if opts.xdp_metadata_off {
            cmd.args(["--xdp-metadata", "off"]);
        }
        let SluiceProc {
            proc,
            cmdline,
            rt,
            client,
        } = start_sluice(opts.name, cmd, &control, log)?;
        Ok(Self {
            name: opts.name,
            proc,
            cmdline,
            rt,
            client,
            run: 0,
            calls: Vec::new(),
            srtp: false,
        })
    }

    fn statistics(&mut self) -> Result<sluice_control::proto::StatisticsReply> {
        use sluice_control::proto::StatisticsRequest;
        Ok(self
            .rt
            .block_on(self.client.statistics(StatisticsRequest {}))
            .context("sluice Statistics")?
            .into_inner())
    }

    /// Calls of the last setup whose streams are not all forwarded in the kernel (by Query).
    fn not_kernel_forwarded(&mut self) -> Result<usize> {
        use sluice_control::proto::QueryRequest;
        let mut missing = 0;
        for (call_id, _) in &self.calls {
            let reply = self
                .rt
                .block_on(self.client.query(QueryRequest {
                    call_id: call_id.clone(),
                }))
                .with_context(|| format!("sluice Query of call {call_id}"))?
                .into_inner();
            let streams: Vec<_> = reply
                .call
                .iter()
                .flat_map(|c| &c.legs)
                .flat_map(|l| &l.streams)
                .collect();
            if streams.is_empty() || !streams.iter().all(|s| s.kernel_forwarded) {
                missing += 1;
            }
        }
        Ok(missing)
    }
}

impl Relay for Sluice {
    fn name(&self) -> &'static str {
        self.name
    }

    fn command_line(&self) -> String {
        self.cmdline.clone()
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn setup(&mut self, caller: SocketAddrV4, callees: &[SocketAddrV4]) -> Result<Vec<CallDests>> {
        use sluice_control::proto::{AnswerRequest, LegOptions, OfferRequest, Srtp};
        self.run += 1;
        let mut dests = Vec::with_capacity(callees.len());
        for (i, &callee) in callees.iter().enumerate() {
            let (call_id, from_tag, to_tag) = call_ids(self.run, i);
            let offer = OfferRequest {
                call_id: call_id.clone(),
                from_tag: from_tag.clone(),
                sdp: sdp::audio(i as u64, caller),
                options: self.srtp.then(|| LegOptions {
                    srtp: Srtp::Offer as i32,
                    ..Default::default()
                }),
            };
            let offer_sdp = self
                .rt
                .block_on(self.client.offer(offer))
                .with_context(|| format!("sluice Offer of call {call_id}"))?
                .into_inner()
                .sdp;
            self.calls.push((call_id.clone(), from_tag.clone()));
            let b = sdp::audio_destination(&offer_sdp).context("sluice's Offer reply")?;
            let (answer_sdp, callee_key) = if self.srtp {
                let (sdp, key) = srtp_callee_answer(i, callee, &offer_sdp)?;
                (sdp, Some(key))
            } else {
                (sdp::audio(i as u64, callee), None)
            };
            let answer = AnswerRequest {
                call_id: call_id.clone(),
                from_tag,
                to_tag,
                sdp: answer_sdp,
                ..Default::default()
            };
            let answer_sdp = self
                .rt
                .block_on(self.client.answer(answer))
                .with_context(|| format!("sluice Answer of call {call_id}"))?
                .into_inner()
                .sdp;
            dests.push(CallDests {
                a: sdp::audio_destination(&answer_sdp).context("sluice's Answer reply")?,
                b: Some(b),
                callee_key,
            });
        }
        Ok(dests)
    }

    fn teardown(&mut self) -> Result<()> {
        use sluice_control::proto::DeleteRequest;
        let mut first_err = None;
        for (call_id, from_tag) in std::mem::take(&mut self.calls) {
            let req = DeleteRequest {
                call_id: call_id.clone(),
                from_tag,
                ..Default::default()
            };
            if let Err(e) = self.rt.block_on(self.client.delete(req)) {
                first_err.get_or_insert(anyhow!("sluice Delete of call {call_id}: {e}"));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }

    /// Waits for Statistics to count two kernel flows per call (one per direction of its RTP
    /// stream), then asks Query about every call: each stream must say `kernel_forwarded`.
    fn settle(&mut self, timeout: Duration) -> Result<Option<String>> {
        if !self.cmdline.contains("--xdp native") {
            return Ok(None);
        }
        let started = Instant::now();
        let want = 2 * self.calls.len() as u64;
        // Bounded by `timeout`.
        loop {
            self.proc.ensure_running()?;
            let flows = self.statistics()?.kernel_flows;
            if flows >= want {
                break;
            }
            if started.elapsed() >= timeout {
                bail!(
                    "{} of {want} kernel flows installed after {:.1} s: the streams did not move \
                     into the kernel{}",
                    flows,
                    timeout.as_secs_f64(),
                    self.proc.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let waited = started.elapsed();
        let missing = self.not_kernel_forwarded()?;
        if missing > 0 {
            bail!(
                "Query says {missing} of {} calls are not kernel_forwarded although Statistics \
                 counts {want} kernel flows",
                self.calls.len()
            );
        }
        Ok(Some(format!(
            "all {} calls kernel_forwarded (Query) {:.1} s after the warm-up",
            self.calls.len(),
            waited.as_secs_f64()
        )))
    }

    fn kernel_packets(&mut self) -> Option<u64> {
        self.statistics().ok().map(|s| s.kernel_packets)
    }

    fn worker_summary(&mut self) -> Option<String> {
        let s = self.statistics().ok()?;
        let metadata = match s
            .kernel_features
            .iter()
            .find(|f| f.name == "bpf_xdp_adjust_meta")
        {
            Some(f) if f.used => "XDP metadata used (route travels with the frame)".to_string(),
            Some(f) if f.available => {
                "XDP metadata switched off (--xdp-metadata off): route via the route cache".into()
            }
            Some(_) => "XDP metadata refused by this kernel: route via the route cache".into(),
            None => "XDP metadata: not reported".into(),
        };
        (!s.workers.is_empty()).then(|| {
            std::iter::once(metadata)
                .chain(s.workers.iter().map(|w| {
                    format!(
                        "AF_XDP worker {} on CPU {}: rx {}, tx {} ({} from its TX ring, {} \
                         through the kernel stack), dropped {}, transform errors {} (since it \
                         started, warm-up and repeated steps included)",
                        w.index,
                        w.cpu,
                        w.rx,
                        w.tx,
                        w.tx_ring,
                        w.tx_kernel,
                        w.dropped,
                        w.transform_errors
                    )
                }))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

// ---------------------------------------------------------------------------------------------

/// The baseline relay takes its calls at startup, so each setup starts a fresh process.
pub struct Baseline {
    exe: PathBuf,
    log: PathBuf,
    bind: Option<Ipv4Addr>,
    placement: Placement,
    /// Held open: closing it is what tells the relay to exit.
    running: Option<(Proc, ChildStdin)>,
}

impl Baseline {
    /// `bind`: the address both sides bind on (default 127.0.0.1).
    pub fn new(exe: &Path, log: &Path, bind: Option<Ipv4Addr>, placement: Placement) -> Self {
        Self {
            exe: exe.to_path_buf(),
            log: log.to_path_buf(),
            bind,
            placement,
            running: None,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = self.placement.command(&self.exe);
        cmd.arg("baseline-relay");
        cmd
    }
}

impl Relay for Baseline {
    fn name(&self) -> &'static str {
        "baseline"
    }

    fn command_line(&self) -> String {
        format!(
            "{} (calls as one JSON line on stdin)",
            describe(&self.command())
        )
    }

    fn pid(&self) -> u32 {
        self.running.as_ref().map_or(0, |(p, _)| p.pid())
    }

    fn setup(&mut self, caller: SocketAddrV4, callees: &[SocketAddrV4]) -> Result<Vec<CallDests>> {
        self.teardown()?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(&self.log)?);
        let mut proc = Proc::spawn("baseline relay", &mut cmd, Some(self.log.clone()))?;
        let child = proc.child_mut();
        let mut stdin = child.stdin.take().context("baseline relay stdin")?;
        let lines = Lines::new(
            "baseline relay",
            child.stdout.take().context("baseline relay stdout")?,
        );
        let setup = baseline::Setup {
            calls: callees
                .iter()
                .map(|&callee| baseline::CallSetup {
                    a_peer: caller,
                    b_peer: callee,
                })
                .collect(),
            bind: self.bind,
        };
        writeln!(stdin, "{}", serde_json::to_string(&setup)?)?;
        stdin.flush()?;
        let line = lines
            .next(STARTUP)
            .map_err(|e| anyhow!("{e}{}", proc.log_tail()))?;
        let bound: baseline::Bound = serde_json::from_str(&line)
            .with_context(|| format!("baseline relay's reply {line:?}"))?;
        if bound.calls.len() != callees.len() {
            bail!(
                "baseline relay bound {} calls, asked for {}",
                bound.calls.len(),
                callees.len()
            );
        }
        self.running = Some((proc, stdin));
        Ok(bound
            .calls
            .iter()
            .map(|c| CallDests {
                a: c.a,
                b: Some(c.b),
                callee_key: None,
            })
            .collect())
    }

    fn teardown(&mut self) -> Result<()> {
        if let Some((mut proc, stdin)) = self.running.take() {
            drop(stdin);
            proc.stop();
        }
        Ok(())
    }

    fn ensure_running(&mut self) -> Result<()> {
        match &mut self.running {
            Some((p, _)) => p.ensure_running(),
            None => bail!("baseline relay is not running"),
        }
    }
}
