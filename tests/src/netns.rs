//! Network namespaces for the end-to-end tests of the XDP fast path: a caller, a relay and a
//! callee namespace joined by two veth pairs, UDP sockets created inside them, raw captures of
//! the frames on the wire, and a look into the BPF maps of a running daemon.
//!
//! ```text
//!  caller ns                 relay ns (sluice, XDP on r1 and r2)              callee ns
//!  c0 10.201.1.2    <->  r1 10.201.1.1          r2 10.201.2.1    <->  e0 10.201.2.2
//!     10.201.1.3 (intruder)
//!     fd00:201:0:1::2        fd00:201:0:1::1        fd00:201:0:2::1       fd00:201:0:2::2
//!     fd00:201:0:1::3
//! ```
//!
//! sluice's media address is r1's (10.201.1.1 / fd00:201:0:1::1); the callee reaches it through
//! r2. Every namespace is private to one [`Topology`] and deleted when it drops, panics included,
//! so tests run in parallel with the same addresses.
//!
//! The namespaces, links, static neighbours and the traps of XDP on veth are
//! [`sluice_netns::Chain`]'s (shared with the relay's tests and the benches); what is here is
//! this harness's addresses, sockets, captures and the daemon's maps.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_netns::{Chain, ChainSpec, Link};
use sluice_relay::xdp::{FlowCounters, FlowKey, FlowValue, XdpStats};

use crate::Peer;

pub const CALLER_V4: &str = "10.201.1.2";
pub const CALLER_V6: &str = "fd00:201:0:1::2";
/// A second address in the caller namespace (an intruder on the caller's network).
pub const INTRUDER_V4: &str = "10.201.1.3";
pub const INTRUDER_V6: &str = "fd00:201:0:1::3";
/// sluice's media addresses (r1's).
pub const RELAY_V4: &str = "10.201.1.1";
pub const RELAY_V6: &str = "fd00:201:0:1::1";
pub const CALLEE_V4: &str = "10.201.2.2";
pub const CALLEE_V6: &str = "fd00:201:0:2::2";
/// The relay's interfaces towards the caller and the callee.
pub const RELAY_IFACES: [&str; 2] = ["r1", "r2"];

const C_MAC: &str = "02:00:00:01:01:02";
const R1_MAC: &str = "02:00:00:01:01:01";
const R2_MAC: &str = "02:00:00:01:02:01";
const E_MAC: &str = "02:00:00:01:02:02";

/// TTL / hop limit of packets sent by the peers' sockets (the namespaces' default).
pub const SENT_TTL: u8 = 64;

/// Names of the BPF maps in ebpf/sluice_xdp.c.
const MAP_FLOWS: &str = "sluice_flows";
const MAP_COUNTERS: &str = "sluice_counters";
const MAP_STATS: &str = "sluice_stats";

pub use sluice_netns::{has_iproute2, is_root};

/// True (after printing why) when a test that builds namespaces cannot run here: not root, or
/// no `ip` (iproute2). Under CI (`CI` set) either is a failure instead.
pub fn skip_without_root() -> bool {
    let why = if !is_root() {
        "needs root"
    } else if !has_iproute2() {
        "needs iproute2 for network namespaces (apt-get install iproute2)"
    } else {
        return false;
    };
    assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
    crate::skipped(why);
    true
}

/// True (after printing why) when the XDP tests cannot run: not root, or sluice built without
/// the XDP program (clang missing). With `SLUICE_REQUIRE_XDP` set (CI) the latter is an error.
pub fn skip_without_xdp() -> bool {
    if skip_without_root() {
        return true;
    }
    if sluice_relay::xdp::program_object().is_none() {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_XDP").is_none_or(|v| v == "0"),
            "SLUICE_REQUIRE_XDP is set but sluice was built without the XDP program"
        );
        println!(
            "skipped: sluice was built without the XDP program (apt-get install clang-19 \
             libbpf-dev, then rebuild)"
        );
        return true;
    }
    false
}

/// Why a test that needs XDP metadata (`bpf_xdp_adjust_meta`) cannot run on this kernel, if it
/// cannot (probed as the loader probes it). None also when the XDP tests skip anyway.
pub fn metadata_skip_reason() -> Option<String> {
    use sluice_relay::xdp::{Feature, KernelFeatures};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || sluice_relay::xdp::program_object().is_none() {
        return None;
    }
    match KernelFeatures::probe() {
        Ok(k) => k.missing_reason(Feature::XdpMeta),
        Err(e) => Some(format!("probing the kernel's XDP features failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Entering namespaces

/// Runs `f` on a thread inside network namespace `ns`; sockets it creates stay in `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    sluice_netns::in_ns(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Makes `cmd` run inside network namespace `ns` (see [`sluice_netns::enter_on_exec`]).
pub fn enter_on_exec(cmd: &mut Command, ns: &str) {
    sluice_netns::enter_on_exec(cmd, ns).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// The topology

const PREFIX: &str = "slx";

/// Caller, relay and callee namespaces joined by veth pairs; deleted on drop.
pub struct Topology {
    pub caller: String,
    pub relay: String,
    pub callee: String,
    _chain: Chain,
}

impl Topology {
    pub fn new() -> Topology {
        let link = |dev, mac, addrs| Link { dev, mac, addrs };
        let chain = Chain::create(&ChainSpec {
            names: sluice_netns::fresh_names(PREFIX, ["c", "r", "e"]),
            caller: link(
                "c0",
                C_MAC,
                &[
                    "10.201.1.2/24",
                    "10.201.1.3/24",
                    "fd00:201:0:1::2/64",
                    "fd00:201:0:1::3/64",
                ],
            ),
            r1: link("r1", R1_MAC, &["10.201.1.1/24", "fd00:201:0:1::1/64"]),
            r2: link("r2", R2_MAC, &["10.201.2.1/24", "fd00:201:0:2::1/64"]),
            callee: link("e0", E_MAC, &["10.201.2.2/24", "fd00:201:0:2::2/64"]),
            ipv6: true,
        })
        .unwrap_or_else(|e| panic!("building the namespaces: {e}"));
        Topology {
            caller: chain.caller.clone(),
            relay: chain.relay.clone(),
            callee: chain.callee.clone(),
            _chain: chain,
        }
    }

    /// sluice's media address of a family.
    pub fn relay_ip(v6: bool) -> IpAddr {
        (if v6 { RELAY_V6 } else { RELAY_V4 }).parse().unwrap()
    }

    pub fn caller_ip(v6: bool) -> IpAddr {
        (if v6 { CALLER_V6 } else { CALLER_V4 }).parse().unwrap()
    }

    pub fn intruder_ip(v6: bool) -> IpAddr {
        (if v6 { INTRUDER_V6 } else { INTRUDER_V4 })
            .parse()
            .unwrap()
    }

    pub fn callee_ip(v6: bool) -> IpAddr {
        (if v6 { CALLEE_V6 } else { CALLEE_V4 }).parse().unwrap()
    }

    /// A phone in the caller namespace.
    pub fn caller_peer(&self, v6: bool) -> Peer {
        in_ns(&self.caller, || Peer::on(Self::caller_ip(v6)))
    }

    /// A phone in the callee namespace.
    pub fn callee_peer(&self, v6: bool) -> Peer {
        in_ns(&self.callee, || Peer::on(Self::callee_ip(v6)))
    }

    /// A UDP socket on `ip` (any port) in namespace `ns`, with the harness's receive timeout.
    pub fn udp(&self, ns: &str, ip: IpAddr) -> UdpSocket {
        in_ns(ns, || crate::stranger(ip))
    }

    /// sluice in the relay namespace, either with XDP attached natively and one AF_XDP worker
    /// (`workers`) or with `--xdp off`: the two paths a stream that needs work can take.
    pub async fn start_sluice(&self, workers: bool) -> crate::Daemon {
        self.start_sluice_with(workers, &[]).await
    }

    /// [`Topology::start_sluice`] with `extra` flags for `sluice run`.
    pub async fn start_sluice_with(&self, workers: bool, extra: &[&str]) -> crate::Daemon {
        let mut args = Self::sluice_args(if workers { "native" } else { "off" });
        if workers {
            args.extend(["--workers".into(), "1".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::Daemon::start_in(Some(&self.relay), &args).await
    }

    /// Arguments for `sluice run` in the relay namespace: both media addresses, the XDP program
    /// on both relay interfaces in `mode`, and a port range of its own (the namespace is ours).
    pub fn sluice_args(mode: &str) -> Vec<String> {
        let mut v: Vec<String> = [
            "--media-ip",
            RELAY_V4,
            "--media-ip",
            RELAY_V6,
            "--ports",
            "40000-44999",
            "--xdp",
            mode,
            // aya's debug output (a BTF dump per load) would drown the log printed on failure.
            "--log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for i in RELAY_IFACES {
            v.push("--xdp-iface".into());
            v.push(i.into());
        }
        v
    }

    /// Whether an XDP program is attached to `iface` of the relay namespace.
    pub fn xdp_attached(&self, iface: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.relay, "-d", "link", "show", "dev", iface])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets

/// Reads everything queued on `s` without waiting; returns how many datagrams there were.
pub fn drain(s: &UdpSocket) -> usize {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while s.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    s.set_nonblocking(false).expect("blocking");
    n
}

/// Drains both sockets of a peer.
pub fn drain_peer(p: &Peer) -> usize {
    drain(&p.rtp) + drain(&p.rtcp)
}

/// Raises this process's open-file limit to its hard limit (tests with hundreds of peers).
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Captures

/// An AF_PACKET socket on an interface: sees the frames exactly as they cross the veth.
pub struct Capture(OwnedFd);

/// A captured UDP datagram, checksums verified from scratch.
#[derive(Debug, Clone)]
pub struct Frame {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    pub udp_checksum: u16,
    /// IPv4 header checksum and UDP checksum (over the pseudo-header) both valid.
    pub checksums_ok: bool,
    pub payload: Vec<u8>,
}

impl Capture {
    pub fn open(ns: &str, iface: &str) -> Capture {
        let iface = iface.to_string();
        let fd = in_ns(ns, move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket/bind/setsockopt calls on an fd we own.
            unsafe {
                let fd = libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    proto as i32,
                );
                assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
                let fd = OwnedFd::from_raw_fd(fd);
                let name = std::ffi::CString::new(iface).unwrap();
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                let rc = libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(rc, 0, "bind packet socket: {}", io::Error::last_os_error());
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                let big: libc::c_int = 4 << 20;
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&big as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                );
                fd
            }
        });
        Capture(fd)
    }

    /// Every UDP datagram captured so far (until the socket stays quiet for 200 ms) whose
    /// destination is one of `dsts`.
    pub fn frames_to(&self, dsts: &[SocketAddr]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // SAFETY: buf is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                break; // quiet
            }
            if let Some(f) = parse_frame(&buf[..n as usize])
                && dsts.contains(&f.dst)
            {
                out.push(f);
            }
        }
        out
    }
}

fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for chunk in data.chunks(2) {
        let hi = chunk[0];
        let lo = chunk.get(1).copied().unwrap_or(0);
        sum += u16::from_be_bytes([hi, lo]) as u32;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An Ethernet frame carrying IPv4/IPv6 UDP, with its checksums verified; None for anything else.
pub fn parse_frame(frame: &[u8]) -> Option<Frame> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let l3 = frame.get(14..)?;
    let (src_ip, dst_ip, ttl, l4, pseudo, ip_ok): (IpAddr, IpAddr, u8, &[u8], u32, bool) =
        match ethertype {
            0x0800 => {
                let ihl = (*l3.first()? & 0x0f) as usize * 4;
                if l3.get(9) != Some(&17) || l3.len() < ihl || ihl < 20 {
                    return None;
                }
                let tot = u16::from_be_bytes([l3[2], l3[3]]) as usize;
                let l4 = l3.get(ihl..tot)?;
                let src: [u8; 4] = l3[12..16].try_into().ok()?;
                let dst: [u8; 4] = l3[16..20].try_into().ok()?;
                let pseudo = sum16(&l3[12..20], 0) + 17 + l4.len() as u32;
                let ip_ok = fold(sum16(&l3[..ihl], 0)) == 0xffff;
                (src.into(), dst.into(), l3[8], l4, pseudo, ip_ok)
            }
            0x86dd => {
                if l3.get(6) != Some(&17) {
                    return None;
                }
                let plen = u16::from_be_bytes([*l3.get(4)?, *l3.get(5)?]) as usize;
                let l4 = l3.get(40..40 + plen)?;
                let src: [u8; 16] = l3[8..24].try_into().ok()?;
                let dst: [u8; 16] = l3[24..40].try_into().ok()?;
                let pseudo = sum16(&l3[8..40], 0) + 17 + l4.len() as u32;
                (src.into(), dst.into(), l3[7], l4, pseudo, true)
            }
            _ => return None,
        };
    if l4.len() < 8 {
        return None;
    }
    let udp_checksum = u16::from_be_bytes([l4[6], l4[7]]);
    let udp_ok = if udp_checksum == 0 {
        ethertype == 0x0800 // "no checksum" exists only in IPv4
    } else {
        fold(sum16(l4, pseudo)) == 0xffff
    };
    Some(Frame {
        src: SocketAddr::new(src_ip, u16::from_be_bytes([l4[0], l4[1]])),
        dst: SocketAddr::new(dst_ip, u16::from_be_bytes([l4[2], l4[3]])),
        ttl,
        udp_checksum,
        checksums_ok: ip_ok && udp_ok,
        payload: l4[8..].to_vec(),
    })
}

// ---------------------------------------------------------------------------------------------
// The daemon's BPF maps

/// The flow and counter maps of one running sluice, found through the map fds it holds
/// (/proc/PID/fdinfo), so that other sluice instances on the machine do not count.
pub struct DaemonMaps {
    pub flows_id: u32,
    pub counters_id: u32,
    /// The counters of packets that hit no flow (the port guard's).
    pub stats_id: Option<u32>,
}

impl DaemonMaps {
    /// The maps of process `pid`; None if it holds no sluice flow map (XDP not attached).
    pub fn of(pid: u32) -> Option<DaemonMaps> {
        let (mut flows, mut counters, mut stats) = (None, None, None);
        for id in map_ids_of(pid) {
            let Ok(info) = aya::maps::MapInfo::from_id(id) else {
                continue;
            };
            match info.name_as_str() {
                Some(MAP_FLOWS) => flows = Some(id),
                Some(MAP_COUNTERS) => counters = Some(id),
                Some(MAP_STATS) => stats = Some(id),
                _ => {}
            }
        }
        Some(DaemonMaps {
            flows_id: flows?,
            counters_id: counters?,
            stats_id: stats,
        })
    }

    /// Every entry of the flow map, read from the kernel.
    pub fn flows(&self) -> Vec<(SocketAddr, FlowValue)> {
        let data = aya::maps::MapData::from_id(self.flows_id)
            .unwrap_or_else(|e| panic!("open flow map {}: {e}", self.flows_id));
        let map: aya::maps::HashMap<_, FlowKey, FlowValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))
                .unwrap_or_else(|e| panic!("flow map {}: {e}", self.flows_id));
        map.iter()
            .map(|kv| {
                let (k, v) = kv.unwrap_or_else(|e| panic!("read flow map: {e}"));
                (k.local(), v)
            })
            .collect()
    }

    /// The counters of the flows installed now, summed over flows and CPUs (`last_seen_ns`:
    /// the latest), read from the kernel.
    pub fn installed_counters(&self) -> FlowCounters {
        let data = aya::maps::MapData::from_id(self.counters_id)
            .unwrap_or_else(|e| panic!("open counter map {}: {e}", self.counters_id));
        let map: aya::maps::PerCpuArray<_, FlowCounters> =
            aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .unwrap_or_else(|e| panic!("counter map {}: {e}", self.counters_id));
        let mut total = FlowCounters::default();
        for (_, flow) in self.flows() {
            let per_cpu = map
                .get(&flow.flow_id(), 0)
                .unwrap_or_else(|e| panic!("read counters of flow {}: {e}", flow.flow_id()));
            for c in per_cpu.iter() {
                total.merge(c);
            }
        }
        total
    }

    /// The program's counters of packets that hit no flow, summed over CPUs.
    pub fn no_flow_stats(&self) -> XdpStats {
        let id = self.stats_id.expect("the daemon holds no sluice_stats map");
        let data =
            aya::maps::MapData::from_id(id).unwrap_or_else(|e| panic!("open stats map {id}: {e}"));
        let map: aya::maps::PerCpuArray<_, XdpStats> =
            aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .unwrap_or_else(|e| panic!("stats map {id}: {e}"));
        let mut total = XdpStats::default();
        for c in map
            .get(&0, 0)
            .unwrap_or_else(|e| panic!("read stats: {e}"))
            .iter()
        {
            total.merge(c);
        }
        total
    }

    /// Whether the flow map still exists anywhere on the machine.
    pub fn flow_map_exists(&self) -> bool {
        aya::maps::MapInfo::from_id(self.flows_id).is_ok()
    }
}

/// Ids of the BPF maps whose fds process `pid` holds.
fn map_ids_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}
