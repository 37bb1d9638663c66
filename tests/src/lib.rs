//! End-to-end test harness: the real `sluice` binary on loopback, driven over its gRPC control
//! socket, with UDP media endpoints ([`Peer`]) standing in for phones.
//!
//! Every test starts its own [`Daemon`] (own control socket, own relay port range), so the tests
//! of one binary run in parallel without seeing each other's calls.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sluice_control::config::ControlAddr;
use sluice_control::proto::control_client::ControlClient;
use sluice_control::proto::{self, CallInfo, StreamInfo};
use tonic::transport::Channel;

pub use sluice_control::proto as pb;

pub mod netns;

/// How long a test may take at most, start to end.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);
/// How long a receiving peer waits for a packet that should arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a receiving peer listens to be sure that nothing arrives.
pub const SILENCE: Duration = Duration::from_millis(300);

/// Says that the running test skips and why, on stderr past libtest's output capture (which
/// hides `println!` of a passing test), so the line shows in a plain `cargo test`.
pub fn skipped(why: &str) {
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("test").to_string();
    let _ = writeln!(std::io::stderr().lock(), "skipped {name}: {why}");
}

/// A loopback UDP port nothing listens on now (the kernel's pick, released at once).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback UDP port")
        .port()
}

/// A loopback TCP port nothing listens on now.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free loopback TCP port")
        .port()
}

/// Runs a test body with an upper bound on its duration. The daemon binary is built (if need
/// be) before the clock starts: a `cargo build` waiting for a busy target directory is not the
/// test's time.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    sluice_bin();
    match tokio::time::timeout(TEST_LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The `sluice` binary, built once per test process with the same profile as this test binary
/// (`SLUICE_BIN` overrides).
pub fn sluice_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SLUICE_BIN") {
            return PathBuf::from(p);
        }
        let release = std::env::current_exe()
            .map(|p| p.to_string_lossy().contains("/release/"))
            .unwrap_or(false);
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&root)
            .args(["build", "-p", "sluice-control", "--bin", "sluice"]);
        if release {
            cmd.arg("--release");
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo to build sluice: {e}"));
        assert!(
            out.status.success(),
            "building sluice failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
            Some(t) => root.join(t),
            None => root.join("target"),
        };
        let bin = target
            .join(if release { "release" } else { "debug" })
            .join("sluice");
        if bin.exists() {
            return bin;
        }
        // A target dir set some other way (.cargo/config): this test binary lives in
        // <target>/<profile>/deps/, the daemon in <target>/<profile>/.
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("sluice")))
            .filter(|p| p.exists());
        beside.unwrap_or_else(|| panic!("{} missing after cargo build", bin.display()))
    })
}

/// A `sluice` command line with nothing set up.
pub fn sluice_command() -> Command {
    Command::new(sluice_bin())
}

/// Runs a command to completion, killing it after `limit`; returns its output and whether it
/// had to be killed.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (Output, bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // Read both pipes on threads so that a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let so = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let se = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let (status, killed) = match wait_timeout(&mut child, limit) {
        Some(s) => (s, false),
        None => {
            let _ = child.kill();
            (child.wait().expect("wait after kill"), true)
        }
    };
    let out = Output {
        status,
        stdout: so.join().unwrap_or_default(),
        stderr: se.join().unwrap_or_default(),
    };
    (out, killed)
}

/// Waits for a child for at most `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon

static DAEMONS: AtomicU32 = AtomicU32::new(0);

/// A running `sluice run`, stopped (SIGTERM, then SIGKILL) when dropped. Its log is printed when
/// the test fails.
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The relay port range it was given (None when left to the daemon's default).
    pub ports: Option<(u16, u16)>,
    /// Where its control API listens: `unix:` at `socket` unless started with `--control`.
    control: ControlAddr,
}

impl Daemon {
    /// The statistics once `done` holds, or the last ones after 5 s: counters settle a moment
    /// after the signalling that ends a call (a BYE's delete, a CANCEL's).
    pub async fn statistics_once(
        &self,
        done: impl Fn(&proto::StatisticsReply) -> bool,
    ) -> proto::StatisticsReply {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let s = statistics(&mut self.client().await).await;
            if done(&s) || std::time::Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `sluice run` with a fresh control socket, its own port range (unless `args` has
    /// `--ports`) and debug logs (unless `args` has `--log-level`), plus `args`. Returns once it
    /// answers Ping.
    pub async fn start(args: &[&str]) -> Daemon {
        Self::start_in(None, args).await
    }

    /// [`Daemon::start`] inside network namespace `netns` (a name under /run/netns) when given.
    /// The control socket is a filesystem path, so the test drives it from its own namespace.
    pub async fn start_in(netns: Option<&str>, args: &[&str]) -> Daemon {
        let n = DAEMONS.fetch_add(1, Ordering::Relaxed);
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let ports;
        if let Some(i) = args.iter().position(|a| *a == "--ports") {
            ports = args.get(i + 1).and_then(|r| {
                let (lo, hi) = r.split_once('-')?;
                Some((lo.parse().ok()?, hi.parse().ok()?))
            });
        } else {
            // 20 ranges of 500 ports below the ephemeral range (32768+), so that relay ports
            // and the peers' kernel-chosen ports do not collide.
            let slot = (std::process::id().wrapping_mul(31).wrapping_add(n)) % 20;
            let lo = 20000 + slot as u16 * 500;
            let hi = lo + 499;
            all.push("--ports".into());
            all.push(format!("{lo}-{hi}"));
            ports = Some((lo, hi));
        }
        if !args.contains(&"--log-level") {
            all.push("--log-level".into());
            all.push("debug".into());
        }
        Self::spawn(n, all, ports, netns).await
    }

    /// `sluice run --control unix:PATH` and nothing else: the out-of-the-box configuration.
    pub async fn start_bare() -> Daemon {
        let n = DAEMONS.fetch_add(1, Ordering::Relaxed);
        Self::spawn(n, Vec::new(), None, None).await
    }

    async fn spawn(
        n: u32,
        args: Vec<String>,
        ports: Option<(u16, u16)>,
        netns: Option<&str>,
    ) -> Daemon {
        let dir = PathBuf::from(format!("/tmp/sluice-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the daemon's temp dir");
        let socket = dir.join("control.sock");
        let log = dir.join("sluice.log");
        let log_file = std::fs::File::create(&log).expect("create the daemon log");
        // `args` may name the control address itself (e.g. tcp:); else a socket in `dir`.
        let control = match args.iter().position(|a| a == "--control") {
            Some(i) => args[i + 1]
                .parse()
                .expect("a valid --control in the test's args"),
            None => ControlAddr::Unix(socket.clone()),
        };
        let mut cmd = sluice_command();
        cmd.arg("run");
        if !args.iter().any(|a| a == "--control") {
            cmd.arg("--control").arg(control.to_string());
        }
        cmd.args(&args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup log fd"))
            .stderr(log_file);
        if let Some(ns) = netns {
            netns::enter_on_exec(&mut cmd, ns);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", sluice_bin().display()));
        let mut d = Daemon {
            child: Some(child),
            dir,
            socket,
            log,
            ports,
            control,
        };
        d.wait_ready().await;
        d
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "sluice exited ({status}) before answering Ping; its log:\n{}",
                    self.log_text()
                );
            }
            if (self.socket.exists() || matches!(self.control, ControlAddr::Tcp(_)))
                && let Ok(mut c) = sluice_control::client::connect(&self.addr()).await
                && c.ping(proto::PingRequest {}).await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not answer Ping within 10 s; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> ControlAddr {
        self.control.clone()
    }

    /// The `--control` argument naming this daemon.
    pub fn control_arg(&self) -> String {
        self.control.to_string()
    }

    pub async fn client(&self) -> ControlClient<Channel> {
        sluice_control::client::connect(&self.addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; `None` if it did not
    /// (it is then still running, and killed on drop).
    /// SIGTERM, then asserts the daemon exited successfully within 10 s.
    pub fn stop_cleanly(&mut self) {
        let status = self.terminate(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "sluice did not stop cleanly: {status:?}\n{}",
            self.log_text()
        );
    }

    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_timeout(child, limit)?;
        self.child = None;
        Some(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `terminate`.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            if wait_timeout(&mut child, Duration::from_secs(5)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "----- sluice log {} -----\n{}\n----- end of sluice log -----",
                self.log.display(),
                self.log_text()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Media endpoints

/// A phone's media side: an RTP socket and an RTCP socket on loopback.
pub struct Peer {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
}

impl Peer {
    /// On 127.0.0.1.
    pub fn v4() -> Peer {
        Peer::on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// On ::1.
    pub fn v6() -> Peer {
        Peer::on(IpAddr::V6(Ipv6Addr::LOCALHOST))
    }

    /// RTP on port p and RTCP on p+1 when such a pair is free, else on any two ports.
    pub fn on(ip: IpAddr) -> Peer {
        let (rtp, rtcp) = (0..20)
            .find_map(|_| {
                let rtp = UdpSocket::bind((ip, 0)).ok()?;
                let p = rtp.local_addr().ok()?.port();
                let rtcp = UdpSocket::bind((ip, p.checked_add(1)?)).ok()?;
                Some((rtp, rtcp))
            })
            .unwrap_or_else(|| {
                (
                    UdpSocket::bind((ip, 0)).expect("bind RTP socket"),
                    UdpSocket::bind((ip, 0)).expect("bind RTCP socket"),
                )
            });
        for s in [&rtp, &rtcp] {
            s.set_read_timeout(Some(RECV_TIMEOUT)).expect("timeout");
        }
        Peer { rtp, rtcp }
    }

    pub fn ip(&self) -> IpAddr {
        self.rtp_addr().ip()
    }

    pub fn rtp_addr(&self) -> SocketAddr {
        self.rtp.local_addr().expect("local addr")
    }

    pub fn rtcp_addr(&self) -> SocketAddr {
        self.rtcp.local_addr().expect("local addr")
    }

    /// A small offer/answer naming this peer's ports (o= version 1).
    pub fn sdp(&self, extra: &[&str]) -> String {
        self.sdp_version(1, extra)
    }

    /// Like [`Peer::sdp`] with a chosen o= session version.
    pub fn sdp_version(&self, version: u64, extra: &[&str]) -> String {
        let fam = if self.ip().is_ipv6() { "IP6" } else { "IP4" };
        let ip = self.ip();
        let rtp = self.rtp_addr().port();
        let rtcp = self.rtcp_addr().port();
        let mut s = format!(
            "v=0\r\n\
             o=- {rtp} {version} IN {fam} {ip}\r\n\
             s=-\r\n\
             c=IN {fam} {ip}\r\n\
             t=0 0\r\n\
             m=audio {rtp} RTP/AVP 0 101\r\n\
             a=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\n"
        );
        if rtcp != rtp + 1 {
            s.push_str(&format!("a=rtcp:{rtcp}\r\n"));
        }
        for line in extra {
            s.push_str(line);
            s.push_str("\r\n");
        }
        s
    }

    pub fn send_rtp(&self, to: SocketAddr, packet: &[u8]) {
        self.rtp.send_to(packet, to).expect("send from RTP socket");
    }

    pub fn send_rtcp(&self, to: SocketAddr, packet: &[u8]) {
        self.rtcp
            .send_to(packet, to)
            .expect("send from RTCP socket");
    }

    /// The next datagram on the RTP socket, or None after [`RECV_TIMEOUT`].
    pub fn recv_rtp(&self) -> Option<(Vec<u8>, SocketAddr)> {
        recv(&self.rtp)
    }

    /// The next datagram on the RTCP socket, or None after [`RECV_TIMEOUT`].
    pub fn recv_rtcp(&self) -> Option<(Vec<u8>, SocketAddr)> {
        recv(&self.rtcp)
    }

    /// Receives `n` datagrams on the RTP socket, stopping early on a timeout.
    pub fn recv_rtp_n(&self, n: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        (0..n).map_while(|_| self.recv_rtp()).collect()
    }

    /// Receives up to `n` datagrams on the RTP socket, waiting at most `limit` for each.
    pub fn recv_rtp_n_within(&self, n: usize, limit: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
        self.rtp.set_read_timeout(Some(limit)).expect("timeout");
        let got = (0..n).map_while(|_| self.recv_rtp()).collect();
        self.rtp
            .set_read_timeout(Some(RECV_TIMEOUT))
            .expect("timeout");
        got
    }

    /// Asserts that neither socket receives anything for [`SILENCE`].
    pub fn assert_silent(&self, why: &str) {
        for (name, s) in [("RTP", &self.rtp), ("RTCP", &self.rtcp)] {
            if let Some(got) = recv_within(s, SILENCE) {
                panic!(
                    "{why}: {name} socket {} received {} bytes from {}",
                    s.local_addr().unwrap(),
                    got.0.len(),
                    got.1
                );
            }
        }
    }
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 4096];
    let (n, from) = recv_from_retrying(s, &mut buf).ok()?;
    buf.truncate(n);
    Some((buf, from))
}

/// `recv_from` that starts again after EINTR: a receive with a read timeout set fails with
/// EINTR on any signal, SA_RESTART or not (signal(7)), and a CI run saw one turn into a
/// "never arrived". Each retry waits the socket's timeout again, so the wait stays bounded.
pub fn recv_from_retrying(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match s.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn recv_within(s: &UdpSocket, limit: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let got = recv(s);
    s.set_read_timeout(Some(RECV_TIMEOUT)).expect("timeout");
    got
}

/// A socket that is not part of any call.
pub fn stranger(ip: IpAddr) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind stranger socket");
    s.set_read_timeout(Some(RECV_TIMEOUT)).expect("timeout");
    s
}

/// Whether `s` receives anything within [`SILENCE`].
pub fn receives_anything(s: &UdpSocket) -> bool {
    recv_within(s, SILENCE).is_some()
}

/// An RTP packet: 12-byte header (RFC 3550 5.1, version 2, no CSRC) + payload.
pub fn rtp_packet(seq: u16, ts: u32, ssrc: u32, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.push(0x80);
    p.push((pt & 0x7f) | if marker { 0x80 } else { 0 });
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A PCMU packet of 20 ms (160 bytes), with a payload that differs per sequence number.
pub fn pcmu(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..160u16).map(|i| (i ^ seq) as u8).collect();
    rtp_packet(seq, ts, ssrc, 0, seq == 0, &payload)
}

/// An RTCP sender report without report blocks (RFC 3550 6.4.1), 28 bytes.
pub fn rtcp_sr(ssrc: u32, rtp_ts: u32, packets: u32, octets: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.push(0x80); // V=2, P=0, RC=0
    p.push(200); // SR
    p.extend_from_slice(&6u16.to_be_bytes()); // 7 words - 1
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&0xe8a0_0000u32.to_be_bytes()); // NTP seconds
    p.extend_from_slice(&packets.wrapping_mul(0x0100_0000).to_be_bytes()); // NTP fraction
    p.extend_from_slice(&rtp_ts.to_be_bytes());
    p.extend_from_slice(&packets.to_be_bytes());
    p.extend_from_slice(&octets.to_be_bytes());
    p
}

/// The middle 32 bits of the NTP timestamp [`rtcp_sr`] writes for `packets`: what a receiver
/// report names as LSR.
pub fn rtcp_sr_ntp_mid(packets: u32) -> u32 {
    packets.wrapping_mul(0x0100_0000) >> 16
}

/// An RTCP receiver report (RFC 3550 6.4.2) from `reporter` with one block about `source`:
/// `fraction` lost in 1/256ths, `jitter` in timestamp units, `lsr` and `dlsr` (1/65536 s).
pub fn rtcp_rr(
    reporter: u32,
    source: u32,
    fraction: u8,
    jitter: u32,
    lsr: u32,
    dlsr: u32,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&[0x81, 201, 0, 7]);
    p.extend_from_slice(&reporter.to_be_bytes());
    p.extend_from_slice(&source.to_be_bytes());
    p.extend_from_slice(&[fraction, 0, 0, 1]);
    p.extend_from_slice(&100u32.to_be_bytes());
    p.extend_from_slice(&jitter.to_be_bytes());
    p.extend_from_slice(&lsr.to_be_bytes());
    p.extend_from_slice(&dlsr.to_be_bytes());
    p
}

// ---------------------------------------------------------------------------------------------
// Reading the relay's SDP

/// What a test needs of an SDP the relay returned (its first media section).
#[derive(Debug, Clone)]
pub struct SdpView {
    pub text: String,
    /// o= session version.
    pub version: u64,
    /// c= of the first media section (media level, else session level).
    pub conn: IpAddr,
    /// "IP4" or "IP6" as written on that c= line.
    pub conn_family: String,
    pub media_count: usize,
    pub rtp_port: u16,
    /// a=rtcp port and address (address defaults to c=).
    pub rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// Attribute lines (without "a=") of the first media section.
    pub media_attrs: Vec<String>,
}

impl SdpView {
    pub fn parse(text: &str) -> SdpView {
        let mut version = None;
        let mut session_c = None;
        let mut media_c = None;
        let mut media_count = 0;
        let mut rtp_port = None;
        let mut rtcp_raw = None;
        let mut media_attrs = Vec::new();
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(o) = line.strip_prefix("o=") {
                version = o.split_whitespace().nth(2).and_then(|v| v.parse().ok());
            } else if let Some(m) = line.strip_prefix("m=") {
                media_count += 1;
                if media_count == 1 {
                    rtp_port = m.split_whitespace().nth(1).and_then(|p| p.parse().ok());
                }
            } else if let Some(c) = line.strip_prefix("c=") {
                let f: Vec<&str> = c.split_whitespace().collect();
                assert_eq!(f.len(), 3, "bad c= line {line:?} in:\n{text}");
                let v = (
                    f[1].to_string(),
                    f[2].parse::<IpAddr>()
                        .unwrap_or_else(|_| panic!("bad c= address in {line:?}")),
                );
                match media_count {
                    0 => session_c = Some(v),
                    1 => media_c = Some(v),
                    _ => {}
                }
            } else if let Some(a) = line.strip_prefix("a=")
                && media_count == 1
            {
                if let Some(r) = a.strip_prefix("rtcp:") {
                    rtcp_raw = Some(r.to_string());
                }
                media_attrs.push(a.to_string());
            }
        }
        let (conn_family, conn) = media_c
            .or(session_c)
            .unwrap_or_else(|| panic!("no c= line in:\n{text}"));
        let rtcp = rtcp_raw.map(|r| {
            let f: Vec<&str> = r.split_whitespace().collect();
            let port = f[0].parse().expect("a=rtcp port");
            let ip = f
                .get(3)
                .map_or(conn, |a| a.parse().expect("a=rtcp address"));
            SocketAddr::new(ip, port)
        });
        let rtcp_mux = media_attrs.iter().any(|a| a == "rtcp-mux");
        SdpView {
            text: text.to_string(),
            version: version.unwrap_or_else(|| panic!("no o= version in:\n{text}")),
            conn,
            conn_family,
            media_count,
            rtp_port: rtp_port.unwrap_or_else(|| panic!("no m= line in:\n{text}")),
            rtcp,
            rtcp_mux,
            media_attrs,
        }
    }

    /// Where RTP for this side goes.
    pub fn rtp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.conn, self.rtp_port)
    }

    /// Where RTCP for this side goes: a=rtcp, else the RTP port with rtcp-mux, else port + 1.
    pub fn rtcp_addr(&self) -> SocketAddr {
        match self.rtcp {
            Some(a) => a,
            None if self.rtcp_mux => self.rtp_addr(),
            None => SocketAddr::new(self.conn, self.rtp_port + 1),
        }
    }

    pub fn has_attr(&self, name: &str) -> bool {
        self.media_attrs
            .iter()
            .any(|a| a == name || a.starts_with(&format!("{name}:")))
    }
}

// ---------------------------------------------------------------------------------------------
// Calls

pub const FROM_TAG: &str = "tag-caller";
pub const TO_TAG: &str = "tag-callee";

pub async fn offer(
    c: &mut ControlClient<Channel>,
    call_id: &str,
    sdp: String,
    options: Option<proto::LegOptions>,
) -> Result<SdpView, tonic::Status> {
    let r = c
        .offer(proto::OfferRequest {
            call_id: call_id.into(),
            from_tag: FROM_TAG.into(),
            sdp,
            options,
        })
        .await?;
    Ok(SdpView::parse(&r.into_inner().sdp))
}

pub async fn answer(
    c: &mut ControlClient<Channel>,
    call_id: &str,
    sdp: String,
    options: Option<proto::LegOptions>,
) -> Result<SdpView, tonic::Status> {
    let r = c
        .answer(proto::AnswerRequest {
            call_id: call_id.into(),
            from_tag: FROM_TAG.into(),
            to_tag: TO_TAG.into(),
            sdp,
            options,
        })
        .await?;
    Ok(SdpView::parse(&r.into_inner().sdp))
}

/// An established call between caller `a` and callee `b`.
pub struct Call {
    pub id: String,
    /// The SDP the relay gave the callee (from the offer): where `b` sends.
    pub to_b: SdpView,
    /// The SDP the relay gave the caller (from the answer): where `a` sends.
    pub to_a: SdpView,
}

impl Call {
    /// Relay address the caller sends RTP to.
    pub fn a_sends_rtp(&self) -> SocketAddr {
        self.to_a.rtp_addr()
    }
    pub fn a_sends_rtcp(&self) -> SocketAddr {
        self.to_a.rtcp_addr()
    }
    /// Relay address the callee sends RTP to.
    pub fn b_sends_rtp(&self) -> SocketAddr {
        self.to_b.rtp_addr()
    }
    pub fn b_sends_rtcp(&self) -> SocketAddr {
        self.to_b.rtcp_addr()
    }
}

/// Offer from `a` (plain SDP + `a_extra`), answer from `b` (plain SDP + `b_extra`).
pub async fn establish_with(
    c: &mut ControlClient<Channel>,
    call_id: &str,
    a: &Peer,
    a_extra: &[&str],
    b: &Peer,
    b_extra: &[&str],
) -> Call {
    let to_b = offer(c, call_id, a.sdp(a_extra), None)
        .await
        .unwrap_or_else(|s| panic!("offer of {call_id} failed: {s:?}"));
    let to_a = answer(c, call_id, b.sdp(b_extra), None)
        .await
        .unwrap_or_else(|s| panic!("answer of {call_id} failed: {s:?}"));
    Call {
        id: call_id.into(),
        to_b,
        to_a,
    }
}

pub async fn establish(c: &mut ControlClient<Channel>, call_id: &str, a: &Peer, b: &Peer) -> Call {
    establish_with(c, call_id, a, &[], b, &[]).await
}

pub async fn query(
    c: &mut ControlClient<Channel>,
    call_id: &str,
) -> Result<CallInfo, tonic::Status> {
    let r = c
        .query(proto::QueryRequest {
            call_id: call_id.into(),
        })
        .await?;
    Ok(r.into_inner().call.expect("QueryReply without call"))
}

pub async fn statistics(c: &mut ControlClient<Channel>) -> proto::StatisticsReply {
    c.statistics(proto::StatisticsRequest {})
        .await
        .expect("Statistics")
        .into_inner()
}

/// The first stream of leg `leg` (0 = caller, 1 = callee).
pub fn stream(info: &CallInfo, leg: usize) -> &StreamInfo {
    info.legs
        .get(leg)
        .and_then(|l| l.streams.first())
        .unwrap_or_else(|| panic!("call has no stream on leg {leg}: {info:#?}"))
}

/// Polls Query until `cond` holds (the relay counts asynchronously); panics with the last state
/// after 3 s.
pub async fn wait_query(
    c: &mut ControlClient<Channel>,
    call_id: &str,
    what: &str,
    cond: impl Fn(&CallInfo) -> bool,
) -> CallInfo {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let info = query(c, call_id)
            .await
            .unwrap_or_else(|s| panic!("query {call_id}: {s:?}"));
        if cond(&info) {
            return info;
        }
        if Instant::now() >= deadline {
            panic!("waiting for {what}: not reached within 3 s; last state: {info:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tries to bind `addr` for up to 4 s: a relay socket whose call ended waits in the socket pool
/// for up to its idle time (2 s) and one sweep (0.5 s) before sluice closes it.
pub fn can_bind(addr: SocketAddr) -> Result<(), std::io::Error> {
    can_bind_within(addr, Duration::from_secs(4))
}

/// Tries to bind `addr` until `within` has passed.
pub fn can_bind_within(addr: SocketAddr, within: Duration) -> Result<(), std::io::Error> {
    let deadline = Instant::now() + within;
    loop {
        match UdpSocket::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A WatchEvents subscription.
pub struct Events(tonic::Streaming<proto::Event>);

impl Events {
    /// Subscribes; events that happen after this returns are seen.
    pub async fn watch(c: &mut ControlClient<Channel>) -> Events {
        let s = c
            .watch_events(proto::WatchEventsRequest {})
            .await
            .expect("WatchEvents")
            .into_inner();
        Events(s)
    }

    /// The next event, or None if none comes within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<proto::Event> {
        match tokio::time::timeout(limit, self.0.message()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(s)) => panic!("event stream failed: {s:?}"),
            Err(_) => None,
        }
    }

    /// The next event; panics if none comes within 3 s.
    pub async fn next(&mut self) -> proto::Event {
        self.next_within(Duration::from_secs(3))
            .await
            .expect("no event within 3 s")
    }
}

/// The kind of an event, as the enum.
pub fn kind(ev: &proto::Event) -> proto::EventKind {
    proto::EventKind::try_from(ev.kind).unwrap_or(proto::EventKind::Unspecified)
}

/// A child in its own process group, killed with the group when dropped (Kamailio forks).
pub struct Group(pub Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

pub fn spawn_group(mut cmd: Command, log: &Path) -> Group {
    let f = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .process_group(0);
    Group(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
    )
}
