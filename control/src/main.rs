use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_control::config::{Config, ControlAddr, FileConfig, Overrides, default_control};
use sluice_control::{ctl, daemon};

/// sluice: RTP media relay beside a SIP server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the media relay. With no flags: media on 127.0.0.1, ports 30000-39999, control on
    /// a Unix socket, userspace forwarding.
    Run {
        /// TOML file with the same keys as these flags (media-ip = ["..."], ports = "LOW-HIGH").
        #[arg(long)]
        config: Option<PathBuf>,
        /// unix:PATH or tcp:IP:PORT (default: unix:/run/sluice/control.sock for root, else
        /// $XDG_RUNTIME_DIR/sluice/control.sock or /tmp/sluice-UID/control.sock).
        #[arg(long)]
        control: Option<String>,
        /// Serve rtpengine's ng protocol (Kamailio/OpenSIPS `rtpengine` module) on udp:IP:PORT
        /// or udp6:[IP]:PORT; repeatable (default: not served).
        #[arg(long)]
        ng: Vec<String>,
        /// Answer SIP calls as a B2BUA on udp:IP:PORT (repeatable; needs --route). Default:
        /// no SIP, sluice is a media relay for gRPC and ng clients.
        #[arg(long)]
        sip: Vec<String>,
        /// The next hop of every call the B2BUA takes: sip:IP:PORT[;transport=tcp]. Repeat for
        /// failover: a 5xx, 408 or no answer from one sends the call to the next.
        #[arg(long)]
        route: Vec<String>,
        /// The B2BUA answers 503 beyond this many live calls (default: no limit).
        #[arg(long = "max-calls")]
        max_calls: Option<u64>,
        /// Append one JSON line per ended SIP call to this file.
        #[arg(long)]
        cdr: Option<PathBuf>,
        /// PEM certificate chain of `--sip tls:` (with --tls-key).
        #[arg(long = "tls-cert")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of `--sip tls:`.
        #[arg(long = "tls-key")]
        tls_key: Option<PathBuf>,
        /// Refuse new calls beyond this many (ng: "load limit" so Kamailio tries its next node);
        /// `sluice ctl max-sessions N|none` changes it at run time, 0 drains (default: no limit).
        #[arg(long = "max-sessions")]
        max_sessions: Option<u64>,
        /// Relay sides whose sockets stay open after their call, for new calls to reuse after
        /// 100 ms quiet (saves the system calls of opening and closing them); 0: close at once
        /// (default: half the range's port pairs, at most 4096).
        #[arg(long = "socket-pool")]
        socket_pool: Option<u64>,
        /// Serve Prometheus metrics at http://IP:PORT/metrics (loopback unless
        /// --allow-remote-control), e.g. 127.0.0.1:9464.
        #[arg(long)]
        metrics: Option<String>,
        /// Refuse new calls while the 1-minute load average is above this (as rtpengine's).
        #[arg(long = "max-load")]
        max_load: Option<f64>,
        /// Refuse new calls while more than this percent of all CPUs is busy (as rtpengine's).
        #[arg(long = "max-cpu")]
        max_cpu: Option<f64>,
        /// Relay address media is received on; repeat for IPv4 and IPv6.
        #[arg(long = "media-ip")]
        media_ip: Vec<String>,
        /// Relay port range LOW-HIGH (default 30000-39999).
        #[arg(long)]
        ports: Option<String>,
        /// Seconds without media or signalling before a call is deleted (default 60).
        #[arg(long)]
        timeout: Option<u64>,
        /// error, warn, info (default), debug or trace; RUST_LOG overrides.
        #[arg(long)]
        log_level: Option<String>,
        /// Allow a TCP control address that is not loopback.
        #[arg(long)]
        allow_remote_control: bool,
        /// In-kernel forwarding of settled streams: off, auto (default: attach where permitted,
        /// else userspace), native, generic.
        #[arg(long)]
        xdp: Option<String>,
        /// Interface media arrives on, for the XDP program; repeatable.
        #[arg(long = "xdp-iface")]
        xdp_iface: Vec<String>,
        /// Whether the XDP program hands a worker's frame its route as XDP metadata, so the
        /// worker sends from its AF_XDP TX ring: auto (default: where the kernel allows
        /// bpf_xdp_adjust_meta) or off (the kernel's IP stack routes worker output).
        #[arg(long = "xdp-metadata")]
        xdp_metadata: Option<String>,
        /// AF_XDP workers for streams that need work (SRTP termination) while XDP is attached
        /// (default: one per RX queue, at most one per physical core; 0: none, SRTP stays in
        /// userspace).
        #[arg(long)]
        workers: Option<u64>,
        /// CPUs to pin the workers to, e.g. 2,3 or 4-7 (default: from the CPU topology,
        /// physical cores on the NIC's NUMA node first).
        #[arg(long = "worker-cores")]
        worker_cores: Option<String>,
        /// Transcoding of offers that do not choose: auto (default: append PCMU, PCMA and opus
        /// where the offer lacks them, transcode when the answer picks one) or off.
        #[arg(long)]
        transcode: Option<String>,
        /// Complexity of sluice's Opus encoder, 0-10 (default 5: within 0.1 PESQ MOS of G.711;
        /// 0 gives about twice the channels per core at 0.12 below).
        #[arg(long = "opus-complexity")]
        opus_complexity: Option<u64>,
        /// Bitrate of sluice's Opus encoder in bit/s, 6000-64000 (default 24000); a receiver's
        /// maxaveragebitrate caps it.
        #[arg(long = "opus-bitrate")]
        opus_bitrate: Option<u64>,
        /// How long an AF_XDP worker busy-polls after its last packet before it sleeps, in
        /// microseconds (default 5; more trades CPU for less wake-up latency).
        #[arg(long = "worker-spin-us")]
        worker_spin_us: Option<u64>,
    },
    /// Call the control API of a running sluice and print the reply as JSON.
    Ctl {
        /// unix:PATH or tcp:IP:PORT (default: the same as `sluice run`'s default).
        #[arg(long, global = true)]
        control: Option<String>,
        #[command(subcommand)]
        method: ctl::Method,
    },
}

fn init_logs(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{level},h2=warn,tower=warn,hyper=warn,loona_hpack=warn"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// glibc's malloc cost a fifth of the ng control path's CPU (BENCHMARKS.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::Run {
            config,
            control,
            ng,
            sip,
            route,
            max_calls,
            cdr,
            tls_cert,
            tls_key,
            max_sessions,
            socket_pool,
            metrics,
            max_load,
            max_cpu,
            media_ip,
            ports,
            timeout,
            log_level,
            allow_remote_control,
            xdp,
            xdp_iface,
            xdp_metadata,
            workers,
            worker_cores,
            transcode,
            opus_complexity,
            opus_bitrate,
            worker_spin_us,
        } => {
            let file = match config.as_deref().map(FileConfig::load).transpose() {
                Ok(f) => f.unwrap_or_default(),
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
            };
            let cfg = match Config::resolve(
                file,
                Overrides {
                    control,
                    ng,
                    sip,
                    route,
                    max_calls,
                    cdr,
                    tls_cert,
                    tls_key,
                    max_sessions,
                    socket_pool,
                    metrics,
                    max_load,
                    max_cpu,
                    media_ip,
                    ports,
                    timeout,
                    log_level,
                    allow_remote_control,
                    xdp,
                    xdp_iface,
                    xdp_metadata,
                    workers,
                    worker_cores,
                    transcode,
                    opus_complexity,
                    opus_bitrate,
                    worker_spin_us,
                },
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(&cfg.log_level);
            rt.block_on(daemon::run(cfg))
        }
        Cmd::Ctl { control, method } => {
            let addr: ControlAddr = match control.map(|c| c.parse()).transpose() {
                Ok(a) => a.unwrap_or_else(default_control),
                Err(e) => {
                    eprintln!("sluice: {e}");
                    return ExitCode::from(2);
                }
            };
            rt.block_on(ctl::run(&addr, method))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
