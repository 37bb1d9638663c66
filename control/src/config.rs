//! `sluice run` configuration: command-line flags over an optional TOML file over defaults.
//!
//! Every key of the file has the same name as its flag (`media-ip`, `ports`, ...). Validation
//! happens once, here, so the rest of the daemon only sees a [`Config`] that makes sense.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the control socket is created when nothing else is said. Under /run for a root daemon,
/// else under $XDG_RUNTIME_DIR, else /tmp; `sluice ctl` looks in the same place.
pub fn default_control() -> ControlAddr {
    ControlAddr::Unix(default_socket_path())
}

fn default_socket_path() -> PathBuf {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/sluice/control.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("sluice/control.sock"),
        _ => PathBuf::from(format!("/tmp/sluice-{}/control.sock", unsafe {
            // SAFETY: as above.
            libc::geteuid()
        })),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ControlAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl std::str::FromStr for ControlAddr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::Invalid {
            key: "control",
            value: s.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("give a socket path after unix:"));
            }
            return Ok(ControlAddr::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| bad("expected tcp:IP:PORT, e.g. tcp:127.0.0.1:2223"))?;
            return Ok(ControlAddr::Tcp(addr));
        }
        Err(bad("expected unix:PATH or tcp:IP:PORT"))
    }
}

/// Where rtpengine's ng protocol is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NgListen {
    /// `udp:IP:PORT` / `udp6:[IP]:PORT`: what Kamailio and OpenSIPS send.
    Udp(SocketAddr),
    /// `tcp:IP:PORT` / `tcp6:[IP]:PORT`: rtpengine's `listen-tcp-ng`.
    Tcp(SocketAddr),
}

impl NgListen {
    pub fn addr(&self) -> SocketAddr {
        match self {
            NgListen::Udp(a) | NgListen::Tcp(a) => *a,
        }
    }
}

impl std::fmt::Display for NgListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NgListen::Udp(a) => write!(f, "udp:{a}"),
            NgListen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// `--ng udp:IP:PORT` (`udp6:[IP]:PORT`, `tcp:IP:PORT`, `tcp6:[IP]:PORT`).
pub fn parse_ng(s: &str) -> Result<NgListen, ConfigError> {
    const FORMS: &str = "expected udp:IP:PORT, udp6:[IP]:PORT, tcp:IP:PORT or tcp6:[IP]:PORT, \
                         e.g. udp:127.0.0.1:2223";
    let bad = |why: &str| ConfigError::Invalid {
        key: "ng",
        value: s.to_string(),
        why: why.to_string(),
    };
    let (scheme, addr) = s.split_once(':').ok_or_else(|| bad(FORMS))?;
    let a: SocketAddr = addr.parse().map_err(|_| bad(FORMS))?;
    if scheme.ends_with('6') && !a.is_ipv6() {
        return Err(bad("udp6:/tcp6: need an IPv6 address in brackets"));
    }
    match scheme {
        "udp" | "udp6" => Ok(NgListen::Udp(a)),
        "tcp" | "tcp6" => Ok(NgListen::Tcp(a)),
        _ => Err(bad(FORMS)),
    }
}

/// `--sip udp:IP:PORT` / `tcp:IP:PORT` / `tls:IP:PORT` (`udp6:[IP]:PORT`, ...): where the B2BUA
/// listens. The address goes into Via and Contact, so it must be one the peers reach: not
/// 0.0.0.0 or ::.
pub fn parse_sip_listen(s: &str) -> Result<sluice_sip::Peer, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid {
        key: "sip",
        value: s.to_string(),
        why: why.to_string(),
    };
    const FORMS: &str = "expected udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT, e.g. udp:127.0.0.1:5060";
    let (transport, addr) = [
        ("tls6:", sluice_sip::Transport::Tls),
        ("tls:", sluice_sip::Transport::Tls),
        ("udp6:", sluice_sip::Transport::Udp),
        ("udp:", sluice_sip::Transport::Udp),
        ("tcp6:", sluice_sip::Transport::Tcp),
        ("tcp:", sluice_sip::Transport::Tcp),
    ]
    .into_iter()
    .find_map(|(p, t)| s.strip_prefix(p).map(|a| (t, a)))
    .ok_or_else(|| bad(FORMS))?;
    let a: SocketAddr = addr.parse().map_err(|_| bad(FORMS))?;
    if a.ip().is_unspecified() {
        return Err(bad(
            "the address is written into Via and Contact: give the one peers reach, not 0.0.0.0",
        ));
    }
    Ok(sluice_sip::Peer { transport, addr: a })
}

/// `--route sip:HOST[:PORT][;transport=tcp]`: the next hop(s), located as RFC 3263 says
/// (`sluice_sip::locate`). A numeric host needs no lookup; a name is read from /etc/hosts
/// (this build has no DNS client), once, at start.
pub fn parse_route(s: &str) -> Result<Vec<sluice_sip::Peer>, ConfigError> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    parse_route_with(s, &mut sluice_sip::HostsFile::parse(&hosts))
}

fn parse_route_with(
    s: &str,
    resolver: &mut impl sluice_sip::Resolver,
) -> Result<Vec<sluice_sip::Peer>, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid {
        key: "route",
        value: s.to_string(),
        why: why.to_string(),
    };
    let uri = sluice_sip::Uri::parse(s).map_err(bad)?;
    if !matches!(uri.scheme, sluice_sip::Scheme::Sip) {
        return Err(bad("expected sip:HOST[:PORT][;transport=udp|tcp]"));
    }
    match uri.transport().as_deref() {
        None | Some("udp") | Some("tcp") => {}
        Some("tls") => {
            return Err(bad(
                "TLS towards the next hop is not built yet (sluice takes TLS calls, --sip tls:)",
            ));
        }
        Some(_) => return Err(bad("transport must be udp or tcp")),
    }
    let found = sluice_sip::locate(
        &uri,
        &[sluice_sip::Transport::Udp, sluice_sip::Transport::Tcp],
        resolver,
    );
    if found.is_empty() {
        return Err(bad(
            "the host resolves to no address: give an IP address or a name in /etc/hosts \
             (sluice has no DNS client yet)",
        ));
    }
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid {key} '{value}': {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The `[sluice run]` keys of the TOML file; every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub control: Option<String>,
    pub metrics: Option<String>,
    pub ng: Option<Vec<String>>,
    pub sip: Option<Vec<String>>,
    pub route: Option<Vec<String>>,
    pub max_calls: Option<u64>,
    pub cdr: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_sessions: Option<u64>,
    pub socket_pool: Option<u64>,
    pub max_load: Option<f64>,
    pub max_cpu: Option<f64>,
    pub media_ip: Option<Vec<String>>,
    pub ports: Option<String>,
    pub timeout: Option<u64>,
    pub log_level: Option<String>,
    pub allow_remote_control: Option<bool>,
    pub xdp: Option<String>,
    pub xdp_iface: Option<Vec<String>>,
    pub xdp_metadata: Option<String>,
    pub workers: Option<u64>,
    pub worker_cores: Option<String>,
    pub transcode: Option<String>,
    pub opus_complexity: Option<u64>,
    pub opus_bitrate: Option<u64>,
    pub worker_spin_us: Option<u64>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }
}

/// Values given on the command line; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub control: Option<String>,
    pub metrics: Option<String>,
    pub ng: Vec<String>,
    pub sip: Vec<String>,
    pub route: Vec<String>,
    pub max_calls: Option<u64>,
    pub cdr: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_sessions: Option<u64>,
    pub socket_pool: Option<u64>,
    pub max_load: Option<f64>,
    pub max_cpu: Option<f64>,
    pub media_ip: Vec<String>,
    pub ports: Option<String>,
    pub timeout: Option<u64>,
    pub log_level: Option<String>,
    pub allow_remote_control: bool,
    pub xdp: Option<String>,
    pub xdp_iface: Vec<String>,
    pub xdp_metadata: Option<String>,
    pub workers: Option<u64>,
    pub worker_cores: Option<String>,
    pub transcode: Option<String>,
    pub opus_complexity: Option<u64>,
    pub opus_bitrate: Option<u64>,
    pub worker_spin_us: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub control: ControlAddr,
    /// `--ng`: where rtpengine's ng protocol is served (Kamailio, OpenSIPS); none by default.
    pub ng: Vec<NgListen>,
    /// `--metrics`: where Prometheus scrapes `/metrics` (none by default).
    pub metrics: Option<SocketAddr>,
    /// `--sip`: where the B2BUA takes calls (none: sluice is a media relay only).
    pub sip: Vec<sluice_sip::Peer>,
    /// `--route`: the next hops of every call the B2BUA takes, tried in this order.
    pub routes: Vec<sluice_sip::Peer>,
    /// `--max-calls`: the B2BUA answers 503 beyond this many live calls.
    pub max_calls: Option<u64>,
    /// `--cdr`: one JSON line per ended call is appended here.
    pub cdr: Option<PathBuf>,
    /// `--tls-cert`, `--tls-key`: the PEM certificate chain and key of `--sip tls:`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--max-sessions`: new calls are refused beyond this many (None: no limit); changeable
    /// at run time through the control API.
    pub max_sessions: Option<u64>,
    /// `--max-load`, `--max-cpu`: new calls are refused while the host is above them.
    pub load_limits: crate::load::LoadLimits,
    /// `--socket-pool`: relay sides whose sockets are kept for reuse after their call.
    pub socket_pool: usize,
    pub media_ips: Vec<IpAddr>,
    pub port_low: u16,
    pub port_high: u16,
    /// A call with no media and no signalling for this long is deleted.
    pub timeout: Duration,
    pub log_level: String,
    pub xdp: XdpSetting,
    pub xdp_ifaces: Vec<String>,
    /// `--xdp-metadata`: whether routed worker frames carry their route as XDP metadata (auto:
    /// where the kernel allows `bpf_xdp_adjust_meta`; off: never).
    pub xdp_metadata: sluice_relay::xdp::MetadataPolicy,
    /// `--workers`: AF_XDP workers to start with XDP (None: one per RX queue; Some(0): none,
    /// so SRTP streams stay on the userspace path).
    pub workers: Option<usize>,
    /// `--worker-cores`: CPUs to pin the workers to (None: chosen from the CPU topology).
    pub worker_cores: Option<Vec<usize>>,
    /// `--transcode`: the transcoding mode of offers that do not choose one.
    pub transcode: crate::codecs::TranscodeMode,
    /// `--opus-complexity` (0-10) and `--opus-bitrate` (bit/s) of sluice's Opus encoder.
    pub opus_complexity: u8,
    pub opus_bitrate: u32,
    /// `--worker-spin-us`: how long a worker busy-polls after its last packet (None: the
    /// relay's default).
    pub worker_spin_us: Option<u64>,
}

/// Most workers `--workers` accepts: the XDP program hands at most this many RX queues of an
/// interface to workers, and a worker without a queue has nothing to do.
pub const MAX_WORKERS: usize = sluice_relay::xdp::MAX_QUEUES as usize;
/// CPU numbers above this are refused as typos.
pub const MAX_CPU: usize = 4095;

/// `--xdp`: whether plain forwarded streams move into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpSetting {
    Off,
    /// Attach where permitted and supported (native, else generic); otherwise log one line and
    /// stay on the userspace path.
    #[default]
    Auto,
    /// Native (driver) mode or fail.
    Native,
    /// Generic (skb) mode or fail.
    Generic,
}

pub const DEFAULT_PORTS: (u16, u16) = (30000, 39999);
/// `--socket-pool` unless the port range is smaller: 4096 sides, enough for every socket of
/// ~20,000 calls/s to be reused after the 100 ms quarantine.
pub const DEFAULT_SOCKET_POOL: usize = 4096;
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

impl Config {
    /// Flags win over the file, the file over defaults.
    pub fn resolve(file: FileConfig, cli: Overrides) -> Result<Config, ConfigError> {
        let control = match cli.control.or(file.control) {
            Some(s) => s.parse()?,
            None => default_control(),
        };
        let allow_remote = cli.allow_remote_control || file.allow_remote_control.unwrap_or(false);
        if let ControlAddr::Tcp(a) = &control
            && !a.ip().is_loopback()
            && !allow_remote
        {
            return Err(ConfigError::Invalid {
                key: "control",
                value: control.to_string(),
                why: "the control API has no authentication; listen on loopback or a unix socket, \
                      or set allow-remote-control = true if a firewall protects it"
                    .into(),
            });
        }
        let ng_list = if cli.ng.is_empty() {
            file.ng.unwrap_or_default()
        } else {
            cli.ng
        };
        let mut ng = Vec::new();
        for s in &ng_list {
            let a = parse_ng(s)?;
            if !a.addr().ip().is_loopback() && !allow_remote {
                return Err(ConfigError::Invalid {
                    key: "ng",
                    value: s.clone(),
                    why: "the ng protocol has no authentication; listen on loopback, or set \
                          allow-remote-control = true if a firewall protects it"
                        .into(),
                });
            }
            ng.push(a);
        }
        let metrics = match cli.metrics.or(file.metrics) {
            None => None,
            Some(m) => {
                let a: SocketAddr = m.parse().map_err(|_| ConfigError::Invalid {
                    key: "metrics",
                    value: m.clone(),
                    why: "expected IP:PORT, e.g. 127.0.0.1:9464".into(),
                })?;
                if !a.ip().is_loopback() && !allow_remote {
                    return Err(ConfigError::Invalid {
                        key: "metrics",
                        value: m,
                        why: "metrics have no authentication; listen on loopback, or set \
                              allow-remote-control = true if a firewall protects it"
                            .into(),
                    });
                }
                Some(a)
            }
        };
        let sip_list = if cli.sip.is_empty() {
            file.sip.unwrap_or_default()
        } else {
            cli.sip
        };
        let sip = sip_list
            .iter()
            .map(|s| parse_sip_listen(s))
            .collect::<Result<Vec<_>, _>>()?;
        let route_list = if cli.route.is_empty() {
            file.route.unwrap_or_default()
        } else {
            cli.route
        };
        let mut routes = Vec::new();
        for r in &route_list {
            routes.extend(parse_route(r)?);
        }
        let tls = match (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "tls-cert",
                    value: String::new(),
                    why: "--tls-cert and --tls-key go together".into(),
                });
            }
        };
        if tls.is_none()
            && sip
                .iter()
                .any(|p| p.transport == sluice_sip::Transport::Tls)
        {
            return Err(ConfigError::Invalid {
                key: "sip",
                value: "tls:".into(),
                why: "a tls: listener needs --tls-cert FILE and --tls-key FILE (PEM)".into(),
            });
        }
        for r in &routes {
            if !sip.is_empty() && !sip.iter().any(|l| l.transport == r.transport) {
                let t = r.transport.via_name().to_ascii_lowercase();
                return Err(ConfigError::Invalid {
                    key: "route",
                    value: format!("sip:{};transport={t}", r.addr),
                    why: format!(
                        "a route over {t} needs a --sip {t}:IP:PORT listener: requests to it are \
                         sent from there, and its answers and requests come back there"
                    ),
                });
            }
        }
        if !sip.is_empty() && routes.is_empty() {
            return Err(ConfigError::Invalid {
                key: "route",
                value: String::new(),
                why: "--sip needs --route sip:HOST:PORT, the next hop of every call".into(),
            });
        }
        let ips = if cli.media_ip.is_empty() {
            file.media_ip.unwrap_or_default()
        } else {
            cli.media_ip
        };
        let media_ips = if ips.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        } else {
            ips.iter()
                .map(|s| parse_media_ip(s))
                .collect::<Result<Vec<_>, _>>()?
        };
        let (port_low, port_high) = match cli.ports.or(file.ports) {
            Some(s) => parse_ports(&s)?,
            None => DEFAULT_PORTS,
        };
        // Half the range's RTP/RTCP pairs, so that most of the range stays for live calls
        // (the pool gives up sockets when the range runs out, but each costs a close then).
        let pool_max = (usize::from(port_high - port_low) + 1) / 4;
        let socket_pool = match cli.socket_pool.or(file.socket_pool) {
            None => pool_max.min(DEFAULT_SOCKET_POOL),
            Some(n) if n as usize <= pool_max => n as usize,
            Some(n) => {
                return Err(ConfigError::Invalid {
                    key: "socket-pool",
                    value: n.to_string(),
                    why: format!(
                        "at most {pool_max} with ports {port_low}-{port_high} (half of its \
                         RTP/RTCP pairs)"
                    ),
                });
            }
        };
        let timeout = cli.timeout.or(file.timeout).unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout == 0 || timeout > 86_400 {
            return Err(ConfigError::Invalid {
                key: "timeout",
                value: timeout.to_string(),
                why: "give seconds between 1 and 86400".into(),
            });
        }
        let log_level = cli
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(ConfigError::Invalid {
                key: "log-level",
                value: log_level,
                why: "one of error, warn, info, debug, trace".into(),
            });
        }
        let xdp = match cli.xdp.or(file.xdp).as_deref() {
            None | Some("auto") => XdpSetting::Auto,
            Some("off") => XdpSetting::Off,
            Some("native") => XdpSetting::Native,
            Some("generic") => XdpSetting::Generic,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "xdp",
                    value: other.into(),
                    why: "one of off, auto, native, generic".into(),
                });
            }
        };
        let xdp_metadata = match cli.xdp_metadata.or(file.xdp_metadata).as_deref() {
            None | Some("auto") => sluice_relay::xdp::MetadataPolicy::Auto,
            Some("off") => sluice_relay::xdp::MetadataPolicy::Off,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "xdp-metadata",
                    value: other.into(),
                    why: "one of auto, off".into(),
                });
            }
        };
        let xdp_ifaces = if cli.xdp_iface.is_empty() {
            file.xdp_iface.unwrap_or_default()
        } else {
            cli.xdp_iface
        };
        if let Some(bad) = xdp_ifaces
            .iter()
            .find(|i| i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
        {
            return Err(ConfigError::Invalid {
                key: "xdp-iface",
                value: bad.clone(),
                why: "not a network interface name (at most 15 characters, no '/' or spaces)"
                    .into(),
            });
        }
        if matches!(xdp, XdpSetting::Native | XdpSetting::Generic) && xdp_ifaces.is_empty() {
            return Err(ConfigError::Invalid {
                key: "xdp",
                value: format!("{xdp:?}").to_lowercase(),
                why: "name the interfaces media arrives on with --xdp-iface".into(),
            });
        }
        let workers = match cli.workers.or(file.workers) {
            None => None,
            Some(n) if n as usize > MAX_WORKERS => {
                return Err(ConfigError::Invalid {
                    key: "workers",
                    value: n.to_string(),
                    why: format!(
                        "give 0 (no AF_XDP workers: SRTP stays on the userspace path) to \
                         {MAX_WORKERS}; more workers than RX queues would have nothing to do"
                    ),
                });
            }
            Some(n) => Some(n as usize),
        };
        let worker_cores = cli
            .worker_cores
            .or(file.worker_cores)
            .map(|s| parse_cpu_list(&s))
            .transpose()?;
        if workers == Some(0) && worker_cores.is_some() {
            return Err(ConfigError::Invalid {
                key: "worker-cores",
                value: format!("{:?}", worker_cores.unwrap_or_default()),
                why: "workers = 0 starts no worker to pin; drop one of the two".into(),
            });
        }
        let transcode = match cli.transcode.or(file.transcode) {
            None => crate::codecs::TranscodeMode::default(),
            Some(s) => s.parse().map_err(|_| ConfigError::Invalid {
                key: "transcode",
                value: s.clone(),
                why: "one of auto, off".into(),
            })?,
        };
        let opus_complexity = match cli.opus_complexity.or(file.opus_complexity) {
            None => sluice_relay::transcode::DEFAULT_OPUS_COMPLEXITY,
            Some(c) if c <= 10 => c as u8,
            Some(c) => {
                return Err(ConfigError::Invalid {
                    key: "opus-complexity",
                    value: c.to_string(),
                    why: "0 (cheapest, about 2x the channels per core of 5) to 10 (best); see \
                          README, Transcoding"
                        .into(),
                });
            }
        };
        let opus_bitrate = match cli.opus_bitrate.or(file.opus_bitrate) {
            None => sluice_relay::transcode::OpusParams::default().bitrate,
            Some(b) if (6_000..=64_000).contains(&b) => b as u32,
            Some(b) => {
                return Err(ConfigError::Invalid {
                    key: "opus-bitrate",
                    value: b.to_string(),
                    why: "bit/s from 6000 to 64000 (narrowband Opus gains nothing above)".into(),
                });
            }
        };
        let worker_spin_us = match cli.worker_spin_us.or(file.worker_spin_us) {
            Some(us) if us > 10_000 => {
                return Err(ConfigError::Invalid {
                    key: "worker-spin-us",
                    value: us.to_string(),
                    why: "at most 10000 (10 ms); 0 blocks in poll(2) at once".into(),
                });
            }
            us => us,
        };
        let max_load = cli.max_load.or(file.max_load);
        if let Some(l) = max_load
            && !(l.is_finite() && l > 0.0)
        {
            return Err(ConfigError::Invalid {
                key: "max-load",
                value: l.to_string(),
                why: "a 1-minute load average above 0, e.g. 2 x the CPU count".into(),
            });
        }
        let max_cpu = cli.max_cpu.or(file.max_cpu);
        if let Some(c) = max_cpu
            && !(c > 0.0 && c <= 100.0)
        {
            return Err(ConfigError::Invalid {
                key: "max-cpu",
                value: c.to_string(),
                why: "percent of all CPUs busy, above 0 and at most 100".into(),
            });
        }
        Ok(Config {
            control,
            ng,
            metrics,
            max_sessions: cli.max_sessions.or(file.max_sessions),
            socket_pool,
            load_limits: crate::load::LoadLimits { max_load, max_cpu },
            sip,
            routes,
            max_calls: cli.max_calls.or(file.max_calls),
            cdr: cli.cdr.or(file.cdr),
            tls,
            media_ips,
            port_low,
            port_high,
            timeout: Duration::from_secs(timeout),
            log_level,
            xdp,
            xdp_ifaces,
            xdp_metadata,
            workers,
            worker_cores,
            transcode,
            opus_complexity,
            opus_bitrate,
            worker_spin_us,
        })
    }

    /// The worker pool's configuration, or None when `--workers 0` disables it.
    pub fn worker_config(&self) -> Option<sluice_relay::worker::WorkerConfig> {
        if self.workers == Some(0) {
            return None;
        }
        Some(sluice_relay::worker::WorkerConfig {
            workers: self.workers,
            cores: self.worker_cores.clone(),
            spin_us: self.worker_spin_us,
            ..Default::default()
        })
    }

    /// The relay address for a family, if one is configured.
    pub fn media_ip(&self, v6: bool) -> Option<IpAddr> {
        self.media_ips.iter().copied().find(|ip| ip.is_ipv6() == v6)
    }
}

fn parse_media_ip(s: &str) -> Result<IpAddr, ConfigError> {
    let ip: IpAddr = s.parse().map_err(|_| ConfigError::Invalid {
        key: "media-ip",
        value: s.into(),
        why: "not an IPv4 or IPv6 address".into(),
    })?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(ConfigError::Invalid {
            key: "media-ip",
            value: s.into(),
            why: "give the address peers send media to, not a wildcard or multicast address".into(),
        });
    }
    Ok(ip)
}

/// `--worker-cores`: CPU numbers and ranges, `0,2,4-7`, in the order workers take them.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, ConfigError> {
    let bad = |why: String| ConfigError::Invalid {
        key: "worker-cores",
        value: s.into(),
        why,
    };
    let cpu = |t: &str| -> Result<usize, ConfigError> {
        let n: usize = t.trim().parse().map_err(|_| {
            bad(format!(
                "'{t}' is not a CPU number; expected e.g. 2,3 or 4-7"
            ))
        })?;
        if n > MAX_CPU {
            return Err(bad(format!("CPU {n} is above {MAX_CPU}")));
        }
        Ok(n)
    };
    let mut out = Vec::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            return Err(bad("empty entry; expected a list like 2,3 or 4-7".into()));
        }
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (cpu(lo)?, cpu(hi)?);
                if hi < lo {
                    return Err(bad(format!("range {lo}-{hi} runs backwards")));
                }
                out.extend(lo..=hi);
            }
            None => out.push(cpu(part)?),
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = out.iter().find(|c| !seen.insert(**c)) {
        return Err(bad(format!(
            "CPU {dup} is listed twice; each worker needs a core of its own"
        )));
    }
    Ok(out)
}

pub fn parse_ports(s: &str) -> Result<(u16, u16), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid {
        key: "ports",
        value: s.into(),
        why: why.into(),
    };
    let (lo, hi) = s.split_once('-').ok_or_else(|| bad("expected LOW-HIGH"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad("LOW is not a port"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad("HIGH is not a port"))?;
    if lo < 1024 {
        return Err(bad("LOW must be 1024 or more (ports below are privileged)"));
    }
    if hi <= lo {
        return Err(bad("HIGH must be above LOW"));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(file: &str, cli: Overrides) -> Result<Config, ConfigError> {
        Config::resolve(toml::from_str(file).unwrap(), cli)
    }

    #[test]
    fn defaults_are_the_embedded_loopback_setup() {
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(c.media_ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!((c.port_low, c.port_high), DEFAULT_PORTS);
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert!(matches!(c.control, ControlAddr::Unix(_)));
        assert_eq!(c.transcode, crate::codecs::TranscodeMode::Auto);
    }

    #[test]
    fn opus_settings_default_and_bounds() {
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!((c.opus_complexity, c.opus_bitrate), (5, 24_000));
        let c = resolve(
            "opus-complexity = 0\nopus-bitrate = 32000\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!((c.opus_complexity, c.opus_bitrate), (0, 32_000));
        let c = resolve(
            "opus-complexity = 0\n",
            Overrides {
                opus_complexity: Some(10),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.opus_complexity, 10, "the flag wins");
        let err = resolve("opus-complexity = 11\n", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("opus-complexity"), "{err}");
        let err = resolve("opus-bitrate = 500\n", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("opus-bitrate"), "{err}");
    }

    #[test]
    fn worker_spin_reaches_the_worker_config() {
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(
            c.worker_config().unwrap().spin_us,
            None,
            "the relay's default"
        );
        let c = resolve("xdp-metadata = \"off\"\n", Overrides::default()).unwrap();
        assert_eq!(c.xdp_metadata, sluice_relay::xdp::MetadataPolicy::Off);
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(c.xdp_metadata, sluice_relay::xdp::MetadataPolicy::Auto);
        let err = resolve("xdp-metadata = \"on\"\n", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("xdp-metadata"), "{err}");
        let c = resolve("worker-spin-us = 50\n", Overrides::default()).unwrap();
        assert_eq!(c.worker_config().unwrap().spin_us, Some(50));
        let err = resolve("worker-spin-us = 20000\n", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("worker-spin-us"), "{err}");
    }

    #[test]
    fn transcode_default_from_file_or_flag() {
        let c = resolve("transcode = \"off\"\n", Overrides::default()).unwrap();
        assert_eq!(c.transcode, crate::codecs::TranscodeMode::Off);
        let c = resolve(
            "transcode = \"off\"\n",
            Overrides {
                transcode: Some("auto".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.transcode, crate::codecs::TranscodeMode::Auto);
        let err = resolve("transcode = \"maybe\"\n", Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("auto, off"), "{err}");
    }

    #[test]
    fn flags_win_over_file() {
        let file = "ports = \"40000-40099\"\ntimeout = 5\nmedia-ip = [\"127.0.0.2\"]\n";
        let c = resolve(
            file,
            Overrides {
                ports: Some("50000-50999".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((c.port_low, c.port_high), (50000, 50999));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.media_ips, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn both_families_pick_by_family() {
        let c = resolve(
            "",
            Overrides {
                media_ip: vec!["127.0.0.1".into(), "::1".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.media_ip(true), Some("::1".parse().unwrap()));
        assert_eq!(c.media_ip(false), Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_values_say_what_to_change() {
        let cases: &[(Overrides, &str)] = &[
            (
                Overrides {
                    ports: Some("100-200".into()),
                    ..Default::default()
                },
                "LOW must be 1024",
            ),
            (
                Overrides {
                    ports: Some("40000".into()),
                    ..Default::default()
                },
                "expected LOW-HIGH",
            ),
            (
                Overrides {
                    ports: Some("40000-30000".into()),
                    ..Default::default()
                },
                "HIGH must be above LOW",
            ),
            (
                Overrides {
                    media_ip: vec!["0.0.0.0".into()],
                    ..Default::default()
                },
                "not a wildcard",
            ),
            (
                Overrides {
                    media_ip: vec!["example.org".into()],
                    ..Default::default()
                },
                "not an IPv4 or IPv6",
            ),
            (
                Overrides {
                    control: Some("tcp:10.1.2.3:2223".into()),
                    ..Default::default()
                },
                "no authentication",
            ),
            (
                Overrides {
                    control: Some("udp:1".into()),
                    ..Default::default()
                },
                "expected unix:PATH or tcp:IP:PORT",
            ),
            (
                Overrides {
                    timeout: Some(0),
                    ..Default::default()
                },
                "between 1 and 86400",
            ),
            (
                Overrides {
                    log_level: Some("loud".into()),
                    ..Default::default()
                },
                "one of error",
            ),
            (
                Overrides {
                    xdp: Some("fast".into()),
                    ..Default::default()
                },
                "one of off, auto, native, generic",
            ),
            (
                Overrides {
                    xdp: Some("native".into()),
                    ..Default::default()
                },
                "--xdp-iface",
            ),
            (
                Overrides {
                    xdp_iface: vec!["eth0/1".into()],
                    ..Default::default()
                },
                "not a network interface name",
            ),
        ];
        for (cli, want) in cases {
            let err = resolve("", cli.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn workers_and_cores_map_to_the_pool_configuration() {
        let c = resolve(
            "workers = 2\nworker-cores = \"1,3-4\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.workers, Some(2));
        assert_eq!(c.worker_cores, Some(vec![1, 3, 4]));
        let w = c.worker_config().unwrap();
        assert_eq!((w.workers, w.cores), (Some(2), Some(vec![1, 3, 4])));
        // Flags win; nothing given: the pool chooses.
        let c = resolve(
            "workers = 2",
            Overrides {
                workers: Some(1),
                worker_cores: Some("6".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((c.workers, c.worker_cores), (Some(1), Some(vec![6])));
        let d = resolve("", Overrides::default())
            .unwrap()
            .worker_config()
            .unwrap();
        assert_eq!((d.workers, d.cores), (None, None));
        // 0 = no pool.
        let c = resolve("workers = 0", Overrides::default()).unwrap();
        assert!(c.worker_config().is_none());
    }

    #[test]
    fn bad_worker_settings_say_what_to_change() {
        let cases: &[(Overrides, &str)] = &[
            (
                Overrides {
                    workers: Some(65),
                    ..Default::default()
                },
                "give 0 (no AF_XDP workers",
            ),
            (
                Overrides {
                    worker_cores: Some("1,x".into()),
                    ..Default::default()
                },
                "'x' is not a CPU number",
            ),
            (
                Overrides {
                    worker_cores: Some("5-2".into()),
                    ..Default::default()
                },
                "runs backwards",
            ),
            (
                Overrides {
                    worker_cores: Some("1,,2".into()),
                    ..Default::default()
                },
                "empty entry",
            ),
            (
                Overrides {
                    worker_cores: Some("2,1-3".into()),
                    ..Default::default()
                },
                "CPU 2 is listed twice",
            ),
            (
                Overrides {
                    worker_cores: Some("99999".into()),
                    ..Default::default()
                },
                "above 4095",
            ),
            (
                Overrides {
                    workers: Some(0),
                    worker_cores: Some("1".into()),
                    ..Default::default()
                },
                "workers = 0 starts no worker",
            ),
        ];
        for (cli, want) in cases {
            let err = resolve("", cli.clone()).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(
                err.starts_with("invalid worker"),
                "{err:?} should name the key"
            );
        }
    }

    #[test]
    fn unknown_file_key_is_rejected() {
        let err = toml::from_str::<FileConfig>("prots = \"1-2\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn remote_control_needs_explicit_permission() {
        let c = resolve(
            "allow-remote-control = true\ncontrol = \"tcp:10.1.2.3:2223\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.control, "tcp:10.1.2.3:2223".parse().unwrap());
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn load_limits_and_the_metrics_address_are_checked() {
        let resolve = |o: Overrides| Config::resolve(FileConfig::default(), o);
        let ok = resolve(Overrides {
            max_cpu: Some(85.0),
            max_load: Some(3.5),
            metrics: Some("127.0.0.1:9464".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(
            ok.load_limits,
            crate::load::LoadLimits {
                max_load: Some(3.5),
                max_cpu: Some(85.0)
            }
        );
        assert_eq!(ok.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        for (o, key) in [
            (
                Overrides {
                    max_cpu: Some(0.0),
                    ..Overrides::default()
                },
                "max-cpu",
            ),
            (
                Overrides {
                    max_cpu: Some(101.0),
                    ..Overrides::default()
                },
                "max-cpu",
            ),
            (
                Overrides {
                    max_cpu: Some(f64::NAN),
                    ..Overrides::default()
                },
                "max-cpu",
            ),
            (
                Overrides {
                    max_load: Some(-1.0),
                    ..Overrides::default()
                },
                "max-load",
            ),
            (
                Overrides {
                    max_load: Some(f64::INFINITY),
                    ..Overrides::default()
                },
                "max-load",
            ),
            (
                Overrides {
                    metrics: Some("localhost:9464".into()),
                    ..Overrides::default()
                },
                "metrics",
            ),
            (
                Overrides {
                    metrics: Some("10.0.0.1:9464".into()),
                    ..Overrides::default()
                },
                "metrics",
            ),
        ] {
            let e = resolve(o).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if *k == key),
                "{e}"
            );
        }
    }
}

#[cfg(test)]
mod ng_tests {
    use super::*;

    #[test]
    fn ng_addresses_parse_and_stay_on_loopback_unless_allowed() {
        assert_eq!(
            parse_ng("udp:127.0.0.1:2223").unwrap(),
            NgListen::Udp("127.0.0.1:2223".parse().unwrap())
        );
        assert_eq!(
            parse_ng("udp6:[::1]:2223").unwrap(),
            NgListen::Udp("[::1]:2223".parse().unwrap())
        );
        assert_eq!(
            parse_ng("tcp:127.0.0.1:2223").unwrap(),
            NgListen::Tcp("127.0.0.1:2223".parse().unwrap())
        );
        assert_eq!(
            parse_ng("tcp6:[::1]:2223").unwrap().to_string(),
            "tcp:[::1]:2223"
        );
        for bad in [
            "127.0.0.1:2223",
            "sctp:127.0.0.1:1",
            "tcp6:127.0.0.1:1",
            "udp:localhost:1",
            "udp6:127.0.0.1:1",
            "udp:",
        ] {
            assert!(parse_ng(bad).is_err(), "{bad}");
        }
        let cli = |ng: &str, allow: bool| Overrides {
            ng: vec![ng.to_string()],
            allow_remote_control: allow,
            max_sessions: Some(5),
            ..Overrides::default()
        };
        let c = Config::resolve(FileConfig::default(), cli("udp:127.0.0.1:2223", false)).unwrap();
        assert_eq!((c.ng.len(), c.max_sessions), (1, Some(5)));
        assert_eq!(c.load_limits, crate::load::LoadLimits::default());
        let e =
            Config::resolve(FileConfig::default(), cli("udp:10.1.2.3:2223", false)).unwrap_err();
        assert!(e.to_string().contains("no authentication"), "{e}");
        assert!(Config::resolve(FileConfig::default(), cli("udp:10.1.2.3:2223", true)).is_ok());
    }
}

#[cfg(test)]
mod sip_tests {
    use super::*;
    use sluice_sip::Transport;

    #[test]
    fn sip_listen_addresses_name_a_transport_and_a_reachable_address() {
        let p = parse_sip_listen("tcp:127.0.0.1:5060").unwrap();
        assert_eq!(
            (p.transport, p.addr),
            (Transport::Tcp, "127.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(
            parse_sip_listen("udp6:[::1]:5060").unwrap().transport,
            Transport::Udp
        );
        for (bad, why) in [
            ("udp:0.0.0.0:5060", "Via and Contact"),
            ("tls:127.0.0.1", "expected udp:IP:PORT"),
            ("127.0.0.1:5060", "expected udp:IP:PORT"),
            ("udp:127.0.0.1", "expected udp:IP:PORT"),
        ] {
            let e = parse_sip_listen(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn routes_are_located_as_rfc3263_says_and_sip_needs_one() {
        let r = parse_route("sip:192.0.2.7;transport=tcp").unwrap();
        assert_eq!(
            (r[0].transport, r[0].addr),
            (Transport::Tcp, "192.0.2.7:5060".parse().unwrap())
        );
        let mut hosts = sluice_sip::HostsFile::parse("192.0.2.9 pbx.lan\n");
        let r = parse_route_with("sip:pbx.lan:5070", &mut hosts).unwrap();
        assert_eq!(r[0].addr, "192.0.2.9:5070".parse().unwrap());
        let e = parse_route_with("sip:nowhere.lan", &mut hosts).unwrap_err();
        assert!(e.to_string().contains("/etc/hosts"), "{e}");
        assert!(parse_route("sip:192.0.2.7;transport=sctp").is_err());
        assert!(parse_route("tel:+15551234").is_err());
        let cli = |routes: &[&str]| Overrides {
            sip: vec!["udp:127.0.0.1:5060".into()],
            route: routes.iter().map(|r| r.to_string()).collect(),
            ..Overrides::default()
        };
        let e = Config::resolve(FileConfig::default(), cli(&[])).unwrap_err();
        assert!(e.to_string().contains("--sip needs --route"), "{e}");
        let e = Config::resolve(
            FileConfig::default(),
            cli(&["sip:127.0.0.1:5080", "sip:127.0.0.1:5090;transport=tcp"]),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("needs a --sip tcp:IP:PORT listener"),
            "{e}"
        );
        let mut both = cli(&["sip:127.0.0.1:5080", "sip:127.0.0.1:5090;transport=tcp"]);
        both.sip.push("tcp:127.0.0.1:5060".into());
        let c = Config::resolve(FileConfig::default(), both).unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].transport, Transport::Tcp);
    }
}

#[cfg(test)]
mod socket_pool_tests {
    use super::*;

    #[test]
    fn the_socket_pool_is_bounded_by_the_port_range() {
        let resolve = |ports: &str, pool: Option<u64>| {
            Config::resolve(
                FileConfig::default(),
                Overrides {
                    ports: Some(ports.into()),
                    socket_pool: pool,
                    ..Overrides::default()
                },
            )
        };
        // Default: half the pairs of the range, at most 4096.
        assert_eq!(resolve("30000-39999", None).unwrap().socket_pool, 2500);
        assert_eq!(resolve("20000-59999", None).unwrap().socket_pool, 4096);
        assert_eq!(resolve("40000-40099", Some(0)).unwrap().socket_pool, 0);
        assert_eq!(resolve("40000-40099", Some(25)).unwrap().socket_pool, 25);
        let err = resolve("40000-40099", Some(26)).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "socket-pool",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("at most 25"), "{err}");
        let file: FileConfig = toml::from_str("socket-pool = 7").unwrap();
        let c = Config::resolve(file, Overrides::default()).unwrap();
        assert_eq!(c.socket_pool, 7);
    }
}
