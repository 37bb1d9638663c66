//! `sluice run`: wires the relay engine, the session layer, the timeout sweep and the control
//! socket together, and takes everything down again on SIGINT/SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_relay::engine::{EngineEvent, EngineHandle};
use tokio::net::{TcpListener, UnixListener};

use crate::h2_authority::FixAuthority;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::config::{Config, ControlAddr, NgListen, XdpSetting};
use crate::grpc::ControlService;
use crate::kernel::{KernelPath, Xdp};
use crate::session::{SessionConfig, SessionEnv, Sessions};

/// Runs until a signal, or until `stop` resolves (tests).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    };
    run_until(cfg, shutdown).await
}

pub async fn run_until(
    cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    raise_fd_limit(&cfg);
    // Bounded so that a stuck control plane can never stall the packet path: the engine drops
    // events it cannot queue.
    let (ev_tx, ev_rx) = crossbeam_channel::bounded::<EngineEvent>(4096);
    let engine = EngineHandle::spawn(ev_tx).context("cannot start the relay thread")?;
    let sessions = Sessions::new(
        SessionConfig {
            media_ips: cfg.media_ips.clone(),
            port_low: cfg.port_low,
            port_high: cfg.port_high,
            timeout: cfg.timeout,
            transcode: cfg.transcode,
            opus_complexity: cfg.opus_complexity,
            opus_bitrate: cfg.opus_bitrate,
            socket_pool: cfg.socket_pool,
        },
        SessionEnv::system(),
        Box::new(engine),
        attach_xdp(&cfg)?,
    )?;

    let s = sessions.clone();
    let events = std::thread::Builder::new()
        .name("sluice-events".into())
        .spawn(move || {
            // Ends when the engine thread exits and drops the sender.
            for ev in ev_rx {
                s.on_engine_event(ev);
            }
        })?;

    let s = sessions.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            s.sweep();
        }
    });

    if cfg.max_sessions.is_some() {
        sessions.set_max_sessions(cfg.max_sessions);
    }
    let ng_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Not joined at shutdown: it holds nothing and would add up to a second of sleep.
    let _load_sampler = if cfg.load_limits.any() {
        sessions.set_load_limits(cfg.load_limits);
        tracing::info!(
            max_load = ?cfg.load_limits.max_load,
            max_cpu_percent = ?cfg.load_limits.max_cpu,
            "refusing new calls above these host load limits"
        );
        Some(crate::load::spawn_sampler(
            sessions.load_gauge().clone(),
            cfg.load_limits,
            ng_stop.clone(),
        )?)
    } else {
        None
    };
    let mut ng_servers = Vec::new();
    for listen in &cfg.ng {
        let (s, stop) = (sessions.clone(), ng_stop.clone());
        let thread = std::thread::Builder::new().name("sluice-ng".into());
        ng_servers.push(match *listen {
            NgListen::Udp(addr) => {
                let sock = crate::ng::server::bind(addr)?;
                thread.spawn(move || crate::ng::server::serve(sock, s, stop))?
            }
            NgListen::Tcp(addr) => {
                let l = crate::ng::tcp::bind(addr)?;
                thread.spawn(move || {
                    if let Err(e) = crate::ng::tcp::serve(l, s, stop) {
                        tracing::error!(error = %e, "the ng TCP listener failed; no more ng over TCP");
                    }
                })?
            }
        });
        tracing::info!(ng = %listen, "serving rtpengine's ng protocol");
    }

    let mut sip_servers = Vec::new();
    let mut sip_cores = Vec::new();
    if !cfg.routes.is_empty() && !cfg.sip.is_empty() {
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(crate::b2bua::transport::tls_config(cert, key)?),
            None => None,
        };
        let mut listeners = Vec::new();
        for peer in &cfg.sip {
            listeners.push(crate::b2bua::transport::bind(*peer).with_context(|| {
                format!(
                    "cannot bind the SIP socket {}:{}",
                    peer.transport.via_name().to_ascii_lowercase(),
                    peer.addr
                )
            })?);
        }
        let mut b2b_cfg = crate::b2bua::B2buaConfig::new(cfg.sip.clone(), cfg.routes.clone());
        b2b_cfg.max_calls = cfg.max_calls.map(|n| n as usize);
        let core: crate::b2bua::Shared = Arc::new(std::sync::Mutex::new(crate::b2bua::B2bua::new(
            b2b_cfg,
            sessions.clone(),
            rand::random(),
        )));
        sip_cores.push(core.clone());
        let cdr: Option<Box<dyn std::io::Write + Send>> = match &cfg.cdr {
            Some(path) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open the CDR file {}", path.display()))?,
            )),
            None => None,
        };
        let names: Vec<String> = cfg
            .sip
            .iter()
            .map(|p| format!("{}:{}", p.transport.via_name().to_ascii_lowercase(), p.addr))
            .collect();
        tracing::info!(
            sip = %names.join(","),
            route = %cfg
                .routes
                .iter()
                .map(|r| format!("sip:{};transport={}", r.addr, r.transport.via_name().to_ascii_lowercase()))
                .collect::<Vec<_>>()
                .join(","),
            "B2BUA taking SIP calls"
        );
        let stop = ng_stop.clone();
        sip_servers.push(
            std::thread::Builder::new()
                .name("sluice-sip".into())
                .spawn(move || {
                    if let Err(e) = crate::b2bua::transport::serve(listeners, tls, core, stop, cdr) {
                        tracing::error!(error = %e, "the SIP socket loop failed; no more SIP calls");
                    }
                })?,
        );
    }

    let metrics = match cfg.metrics {
        Some(addr) => {
            let listener = crate::metrics::bind(addr).await?;
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            let registry = crate::metrics::registry(crate::metrics::Scrape {
                sessions: sessions.clone(),
                sip: sip_cores.clone(),
            });
            let stop = sessions.closed();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(listener, registry, stop).await {
                    tracing::error!(error = %e, "the metrics server failed; no more scrapes");
                }
            }))
        }
        None => None,
    };
    let service = ControlService::new(sessions.clone())
        .with_sip(sip_cores)
        .into_server();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl asks v1 first, grpcio-reflection and older tools v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let router = Server::builder()
        .layer(crate::metrics::GrpcTimingLayer)
        .add_service(service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let ips: Vec<String> = cfg.media_ips.iter().map(|i| i.to_string()).collect();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let s = sessions.clone();
    let signal = async move {
        stop.await;
        s.begin_shutdown();
        let _ = stopping_tx.send(());
    };
    // A client that keeps its connection open must not hold the relay up for ever.
    let grace = async move {
        let _ = stopping_rx.await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let served = match &cfg.control {
        ControlAddr::Unix(path) => {
            let listener = bind_unix(path)?;
            announce(&cfg, &ips);
            // grpc-core clients send the socket path as :authority, which h2 refuses.
            let incoming =
                UnixListenerStream::new(listener).map(|conn| conn.map(FixAuthority::new));
            let serve = router.serve_with_incoming_shutdown(incoming, signal);
            let r = bounded(serve, grace).await;
            let _ = std::fs::remove_file(path);
            r
        }
        ControlAddr::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on control address tcp:{addr}"))?;
            announce(&cfg, &ips);
            // A reply goes out in pieces (HEADERS, DATA, trailers): with Nagle's algorithm the
            // later pieces wait for the client's delayed ACK, 40 ms per request.
            let incoming = TcpListenerStream::new(listener).map(|conn| {
                conn.inspect(|stream| {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::warn!(error = %e, "cannot set TCP_NODELAY on a control connection");
                    }
                })
            });
            let serve = router.serve_with_incoming_shutdown(incoming, signal);
            bounded(serve, grace).await
        }
    };
    sweeper.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    ng_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in ng_servers.into_iter().chain(sip_servers) {
        let _ = t.join();
    }
    let stats = sessions.statistics();
    let ended = sessions.shutdown();
    drop(sessions);
    // The engine thread has exited and dropped its event sender, so this thread ends too.
    let _ = events.join();
    tracing::info!(
        calls_ended = ended,
        calls_total = stats.calls_total,
        packets_relayed = stats.packets_relayed,
        "sluice stopped; every relay socket closed"
    );
    served.context("control server failed")?;
    Ok(())
}

const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

async fn bounded<E>(
    serve: impl std::future::Future<Output = Result<(), E>>,
    grace: impl std::future::Future<Output = ()>,
) -> Result<(), E> {
    tokio::select! {
        r = serve => r,
        _ = grace => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "control clients still connected after the grace period; closing anyway"
            );
            Ok(())
        }
    }
}

/// Attaches the XDP program as `--xdp` says. In `auto` mode every failure is one log line and the
/// userspace path; an explicit mode fails the start.
fn attach_xdp(cfg: &Config) -> anyhow::Result<Option<Box<dyn KernelPath>>> {
    use sluice_relay::xdp::{XdpMode, XdpOptions, XdpPath};
    let ifaces: Vec<&str> = cfg.xdp_ifaces.iter().map(String::as_str).collect();
    let attach = |mode| {
        XdpPath::attach_with(
            &ifaces,
            XdpOptions {
                metadata: cfg.xdp_metadata,
                ..XdpOptions::new(mode)
            },
        )
    };
    let attached = match cfg.xdp {
        XdpSetting::Off => return Ok(None),
        XdpSetting::Auto if ifaces.is_empty() => {
            tracing::info!("XDP: no --xdp-iface given; all media takes the userspace path");
            return Ok(None);
        }
        XdpSetting::Auto => match attach(XdpMode::Native) {
            Err(e) if e.is_native_unsupported() => {
                tracing::info!(error = %e, "XDP: native mode unsupported; trying generic mode");
                attach(XdpMode::Generic)
            }
            r => r,
        },
        XdpSetting::Native => attach(XdpMode::Native),
        XdpSetting::Generic => attach(XdpMode::Generic),
    };
    match attached {
        Ok(mut p) => {
            let pool = start_workers(cfg, &mut p, &ifaces)?;
            let mut k = Xdp::new(p, pool);
            // Scans of free relay ports die in XDP (the program checks that no socket would
            // take them, so held ports and other programs' sockets still receive).
            match k.guard_ports(&cfg.media_ips, cfg.port_low, cfg.port_high) {
                Ok(()) => tracing::info!(
                    ports = %format!("{}-{}", cfg.port_low, cfg.port_high),
                    addrs = ?cfg.media_ips,
                    "XDP drops datagrams to relay ports no call holds"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "XDP port guard unavailable: scans of free relay ports reach the kernel stack"
                ),
            }
            tracing::info!(path = %k.describe(), "XDP attached: settled streams are forwarded in the kernel");
            Ok(Some(Box::new(k)))
        }
        Err(e) if cfg.xdp == XdpSetting::Auto => {
            tracing::warn!(error = %e, "XDP unavailable; all media takes the userspace path");
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!(e).context("cannot attach the XDP program")),
    }
}

/// Starts the AF_XDP worker pool on the interfaces XDP is attached to, for streams that need
/// work (SRTP termination). A failure is one warning (those streams stay on the userspace
/// path), unless `--workers`/`--worker-cores` asked for workers with an explicit `--xdp` mode.
fn start_workers(
    cfg: &Config,
    xdp: &mut sluice_relay::xdp::XdpPath,
    ifaces: &[&str],
) -> anyhow::Result<Option<sluice_relay::worker::WorkerPool>> {
    let Some(wcfg) = cfg.worker_config() else {
        tracing::info!("--workers 0: streams with SRTP termination stay on the userspace path");
        return Ok(None);
    };
    match sluice_relay::worker::WorkerPool::start(xdp, ifaces, &wcfg) {
        Ok(pool) => Ok(Some(pool)),
        Err(e)
            if cfg.xdp != XdpSetting::Auto
                && (cfg.workers.is_some() || cfg.worker_cores.is_some()) =>
        {
            Err(anyhow::anyhow!(e).context("cannot start the AF_XDP workers"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "AF_XDP workers unavailable; streams with SRTP termination stay on the userspace path");
            Ok(None)
        }
    }
}

/// Every stream holds up to four sockets, so the usual soft limit of 1024 descriptors would cap
/// sluice at about 250 calls: raise it to the hard limit, and say so if the range needs more.
fn raise_fd_limit(cfg: &Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    let needed = (cfg.port_high - cfg.port_low) as u64 + 1 + 64;
    if lim.rlim_cur < needed {
        tracing::warn!(
            limit = lim.rlim_cur,
            needed,
            "the open-file limit is below the number of relay ports; raise it (ulimit -n, \
             LimitNOFILE=) or calls will fail to get ports"
        );
    }
}

fn announce(cfg: &Config, ips: &[String]) {
    tracing::info!(
        control = %cfg.control,
        media_ips = %ips.join(","),
        ports = %format!("{}-{}", cfg.port_low, cfg.port_high),
        timeout_s = cfg.timeout.as_secs(),
        opus = %sluice_relay::codec::opus_library(),
        "sluice ready"
    );
}

/// Binds the control socket with owner+group access only (0660 inside a 0750 directory).
fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create control socket directory {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    if path.exists() {
        // A live socket means another sluice owns it; a dead one is left over from a crash.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "control socket {} is in use by another running sluice; stop it or pass --control",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Keeps `Arc` in the public signature honest for embedders that share the sessions.
pub type SharedSessions = Arc<Sessions>;
