//! The kernel fast path: loads the XDP program (ebpf/sluice_xdp.c, compiled by build.rs and
//! embedded in the binary), attaches it to interfaces and manages its flow map.
//!
//! A flow is keyed by the local relay socket a packet is addressed to ([`FlowKey`]); its value
//! ([`FlowValue`]) says forward (rewrite source to the relay's socket on the other leg and
//! destination to the peer), pass to userspace, or drop. Counters ([`FlowCounters`]) live in a
//! per-CPU array indexed by the value's flow id and are summed here.
//!
//! Lifecycle and state: nothing is pinned. Programs are attached through BPF links owned by
//! this process, so a crash detaches them and frees the maps with them: a restart always
//! starts from empty maps. A sluice program left attached the legacy (netlink) way, e.g. by
//! `ip link set dev IFACE xdp obj ...` or by aya's netlink fallback on old kernels, is detached
//! and replaced by [`XdpPath::attach`]; any other XDP program on the interface is an error.
//!
//! Requirements the operator must meet (see ebpf/README.md): root (CAP_BPF + CAP_NET_ADMIN),
//! forwarding enabled on the attached interfaces (`net.ipv4.conf.IFACE.forwarding=1`,
//! `net.ipv6.conf.IFACE.forwarding=1`: `bpf_fib_lookup` refuses otherwise and every packet
//! goes up to userspace, counted as `passed_fwd_disabled`), and for veth egress an XDP
//! program or GRO on the peer.
//!
//! Threads: attach inside the network namespace of the interfaces (the calling thread's).
//! Map operations work from any thread afterwards.

mod abi;
mod features;
mod netlink;
mod routes;
mod table;

use std::io;
use std::net::{IpAddr, SocketAddr};

pub use abi::{
    FlowAction, FlowCounters, FlowKey, FlowValue, MAX_EGRESS, MAX_FLOWS, MAX_GUARDS, MAX_QUEUES,
    MAX_XSKS, PortGuard, RouteEntry, XSK_META_MAGIC, XdpStats, XskMeta,
};
pub use features::{Feature, KernelFeatures};
pub use routes::RouteCache;
use table::{FlowMaps, FlowTable};

/// Name of the program (and its section function) in ebpf/sluice_xdp.c; how a stale sluice
/// program is recognised on an interface.
pub const PROGRAM_NAME: &str = "sluice_xdp";
const MAP_FLOWS: &str = "sluice_flows";
const MAP_COUNTERS: &str = "sluice_counters";
const MAP_EGRESS: &str = "sluice_egress";
const MAP_XSKS: &str = "sluice_xsks";
const MAP_ROUTES: &str = "sluice_routes";
const MAP_GUARD: &str = "sluice_guard";
const MAP_STATS: &str = "sluice_stats";
/// The program's read-only switch for `bpf_xdp_adjust_meta` (see ebpf/sluice_xdp.c).
const GLOBAL_USE_META: &str = "sluice_use_meta";

#[cfg(not(sluice_no_xdp))]
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp.o"));
/// The same program without the route cache map, for kernels that cannot create mmapable arrays.
#[cfg(not(sluice_no_xdp))]
static OBJECT_NO_CACHE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice_xdp_nocache.o"));

/// The compiled XDP object embedded at build time, or None when the build had no clang.
/// (For tests and tools that need the ELF file itself, e.g. `ip link set ... xdp obj`.)
pub fn program_object() -> Option<&'static [u8]> {
    #[cfg(not(sluice_no_xdp))]
    {
        Some(OBJECT)
    }
    #[cfg(sluice_no_xdp)]
    {
        None
    }
}

/// [`program_object`] built without the route cache map (`sluice_routes`).
fn program_object_without_route_cache() -> Option<&'static [u8]> {
    #[cfg(not(sluice_no_xdp))]
    {
        Some(OBJECT_NO_CACHE)
    }
    #[cfg(sluice_no_xdp)]
    {
        None
    }
}

/// How the program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// In the driver, before any skb exists (fast; needs driver support).
    Native,
    /// In the generic network stack (works on every interface; slower).
    Generic,
}

impl XdpMode {
    fn aya(self) -> aya::programs::XdpMode {
        match self {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

/// Whether routed WORKER frames carry the XDP route lookup to the worker as XDP metadata
/// (`bpf_xdp_adjust_meta`). Without it the program puts the route in its route cache map
/// ([`RouteCache`]) instead, where the workers read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MetadataPolicy {
    /// When the kernel allows the helper (probed at load).
    #[default]
    Auto,
    /// Always: a kernel that refuses the helper fails the load (tests of the probe).
    On,
    /// Never, whatever the kernel allows (the variant a refusing kernel gets; tests run it
    /// everywhere, and an operator may choose it for a driver whose metadata misbehaves).
    Off,
}

/// How [`XdpPath::attach_with`] loads and attaches the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpOptions {
    pub mode: XdpMode,
    /// Flow map entries, and flow ids `0..max_flows`.
    pub max_flows: u32,
    pub metadata: MetadataPolicy,
    /// Load the program with its route cache map where the kernel can create it (default);
    /// false loads the variant without it, as on kernels before 5.5 (tests).
    pub route_cache: bool,
}

impl XdpOptions {
    pub fn new(mode: XdpMode) -> XdpOptions {
        XdpOptions {
            mode,
            max_flows: MAX_FLOWS,
            metadata: MetadataPolicy::Auto,
            route_cache: true,
        }
    }
}

/// What went wrong in the XDP path, and what the operator can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    #[error(
        "this sluice was built without the XDP program (clang was missing at build time): \
         apt-get install clang-19 libbpf-dev and rebuild, or run with --xdp off"
    )]
    NotBuilt,
    #[error(
        "not permitted to {what}: run sluice as root (or with CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON), or run with --xdp off"
    )]
    PermissionDenied {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("no interfaces given to attach the XDP program to: pass --xdp-iface IFACE")]
    NoInterfaces,
    #[error("too many interfaces ({count}); the XDP program supports at most {max}")]
    TooManyInterfaces { count: usize, max: u32 },
    #[error("network interface {iface:?} not found (in this network namespace): check --xdp-iface")]
    InterfaceNotFound { iface: String },
    #[error(
        "the driver of {iface} does not support native XDP: use --xdp generic (or auto), \
         or run with --xdp off"
    )]
    NativeUnsupported {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "another XDP program ({name:?}, id {prog_id}) is attached to {iface}: sluice will not \
         replace it; detach it (`ip link set dev {iface} xdp off`) or leave {iface} out of \
         --xdp-iface"
    )]
    OtherProgramAttached {
        iface: String,
        prog_id: u32,
        name: String,
    },
    #[error(
        "a sluice XDP program (id {prog_id}) on {iface} is held by a live BPF link: another \
         sluice instance is running on this interface; stop it first"
    )]
    InUse { iface: String, prog_id: u32 },
    #[error("loading the XDP program failed: {detail}")]
    Load { detail: String },
    #[error("the kernel verifier rejected the XDP program (a bug in ebpf/sluice_xdp.c): {log}")]
    Verifier { log: String },
    #[error("this kernel does not offer {feature} to the XDP fast path: {without}")]
    MissingKernelFeature {
        feature: String,
        without: &'static str,
    },
    #[error("attaching the XDP program to {iface} failed: {source}")]
    Attach {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the XDP flow map is full ({max} flows): this flow stays on the userspace path; \
         configure a larger XDP flow capacity to kernelize more"
    )]
    MapFull { max: u32 },
    #[error("flow id {flow_id} is out of range (must be < {max})")]
    FlowIdOutOfRange { flow_id: u32, max: u32 },
    #[error(
        "flow for {key}: the rewrite/source addresses are not all of the key's address family \
         (the kernel path does not translate IPv4 <-> IPv6; keep this flow in userspace)"
    )]
    FamilyMismatch { key: SocketAddr },
    #[error("invalid flow for {key}: {reason}")]
    InvalidFlow {
        key: SocketAddr,
        reason: &'static str,
    },
    #[error(
        "{iface} is not one of the interfaces the XDP program is attached to: an AF_XDP \
         worker socket can only serve an attached interface (add it to --xdp-iface)"
    )]
    NotAttached { iface: String },
    #[error(
        "RX queue {queue} of {iface} is beyond the {max} queues per interface the XDP program \
         can hand to workers; reduce the queues (ethtool -L {iface} combined {max})"
    )]
    QueueOutOfRange { iface: String, queue: u32, max: u32 },
    #[error("invalid XDP flow capacity {requested}: must be between 1 and {max}")]
    InvalidCapacity { requested: u32, max: u32 },
    #[error("invalid XDP port guard: {reason}")]
    InvalidPortGuard { reason: &'static str },
    #[error("BPF map {op} failed: {source}")]
    Map {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("querying or detaching XDP programs on {iface} over netlink failed: {source}")]
    Netlink {
        iface: String,
        #[source]
        source: io::Error,
    },
}

impl XdpError {
    /// True when retrying in generic mode may work.
    pub fn is_native_unsupported(&self) -> bool {
        matches!(self, XdpError::NativeUnsupported { .. })
    }
}

pub(crate) fn is_eperm(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

fn map_syscall_io(e: aya::maps::MapError) -> io::Error {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error,
        aya::maps::MapError::KeyNotFound => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other.to_string()),
    }
}

/// The real maps, through aya.
struct AyaMaps {
    flows: aya::maps::HashMap<aya::maps::MapData, FlowKey, FlowValue>,
    counters: aya::maps::PerCpuArray<aya::maps::MapData, FlowCounters>,
    cpus: usize,
}

impl FlowMaps for AyaMaps {
    fn insert(&mut self, key: &FlowKey, value: &FlowValue) -> io::Result<()> {
        self.flows.insert(key, value, 0).map_err(map_syscall_io)
    }

    fn remove(&mut self, key: &FlowKey) -> io::Result<bool> {
        match self.flows.remove(key).map_err(map_syscall_io) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &FlowKey) -> io::Result<Option<FlowValue>> {
        match self.flows.get(key, 0).map_err(map_syscall_io) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn keys(&self) -> io::Result<Vec<FlowKey>> {
        self.flows
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_syscall_io)
    }

    fn counters(&self, flow_id: u32) -> io::Result<Vec<FlowCounters>> {
        let values = self.counters.get(&flow_id, 0).map_err(map_syscall_io)?;
        Ok(values.iter().copied().collect())
    }

    fn zero_counters(&mut self, flow_id: u32) -> io::Result<()> {
        let zeros = aya::maps::PerCpuValues::try_from(vec![FlowCounters::default(); self.cpus])
            .map_err(io::Error::other)?;
        self.counters.set(flow_id, zeros, 0).map_err(map_syscall_io)
    }
}

/// The loaded program, attached to a set of interfaces, with its flow table.
/// Dropping it detaches the program everywhere and frees the maps.
pub struct XdpPath {
    // Field order matters for Drop: the table's map fds go before the program.
    table: FlowTable<AyaMaps>,
    _egress: aya::maps::HashMap<aya::maps::MapData, u32, u32>,
    guard: aya::maps::HashMap<aya::maps::MapData, FlowKey, PortGuard>,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, XdpStats>,
    xsks: aya::maps::XskMap<aya::maps::MapData>,
    /// In attach order: the position is the interface's slot (its row in `sluice_xsks`).
    ifaces: Vec<(String, u32)>,
    links: Vec<(String, aya::programs::xdp::XdpLinkId)>,
    ebpf: aya::Ebpf,
    mode: XdpMode,
    max_flows: u32,
    features: KernelFeatures,
    metadata: bool,
    routes: Option<std::sync::Arc<RouteCache>>,
}

impl std::fmt::Debug for XdpPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpPath")
            .field("ifaces", &self.interfaces())
            .field("mode", &self.mode)
            .finish()
    }
}

fn ifindex(iface: &str) -> Result<u32, XdpError> {
    let not_found = || XdpError::InterfaceNotFound {
        iface: iface.to_string(),
    };
    let c = std::ffi::CString::new(iface).map_err(|_| not_found())?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(not_found());
    }
    Ok(idx)
}

fn program_name(prog_id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
        .map(|p| String::from_utf8_lossy(p.name()).into_owned())
}

/// Detaches a sluice program left on `iface` by an earlier run; refuses to touch others.
fn replace_stale(iface: &str, index: u32) -> Result<(), XdpError> {
    let nl_err = |source| XdpError::Netlink {
        iface: iface.to_string(),
        source,
    };
    let attached = netlink::query(index).map_err(nl_err)?;
    for a in attached {
        let name = program_name(a.prog_id).unwrap_or_default();
        if name != PROGRAM_NAME {
            return Err(XdpError::OtherProgramAttached {
                iface: iface.to_string(),
                prog_id: a.prog_id,
                name,
            });
        }
        match netlink::detach(index, a.mode_flags) {
            Ok(()) => tracing::warn!(
                iface,
                prog_id = a.prog_id,
                "replaced a stale sluice XDP program left attached by an earlier run"
            ),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(XdpError::InUse {
                    iface: iface.to_string(),
                    prog_id: a.prog_id,
                });
            }
            Err(e) if is_eperm(&e) => {
                return Err(XdpError::PermissionDenied {
                    what: "detach a stale XDP program",
                    source: e,
                });
            }
            Err(e) => return Err(nl_err(e)),
        }
    }
    Ok(())
}

fn forwarding_enabled(iface: &str) -> (bool, bool) {
    let read = |path: String| {
        std::fs::read_to_string(path)
            .map(|s| s.trim() != "0")
            .unwrap_or(false)
    };
    (
        read(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding")),
        read(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding")),
    )
}

fn load_error(e: aya::EbpfError) -> XdpError {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) = &e
        && is_eperm(io_error)
    {
        let source = io::Error::from_raw_os_error(io_error.raw_os_error().unwrap_or(libc::EPERM));
        return XdpError::PermissionDenied {
            what: "create BPF maps",
            source,
        };
    }
    XdpError::Load {
        detail: e.to_string(),
    }
}

fn attach_error(iface: &str, mode: XdpMode, e: aya::programs::ProgramError) -> XdpError {
    use aya::programs::ProgramError;
    let io = match e {
        ProgramError::SyscallError(s) => s.io_error,
        ProgramError::UnknownInterface { .. } => {
            return XdpError::InterfaceNotFound {
                iface: iface.to_string(),
            };
        }
        other => io::Error::other(other.to_string()),
    };
    match io.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => XdpError::PermissionDenied {
            what: "attach XDP programs",
            source: io,
        },
        Some(libc::EOPNOTSUPP) if mode == XdpMode::Native => XdpError::NativeUnsupported {
            iface: iface.to_string(),
            source: io,
        },
        _ => XdpError::Attach {
            iface: iface.to_string(),
            source: io,
        },
    }
}

impl XdpPath {
    /// Loads the program and attaches it to every interface in `ifaces` (names in the calling
    /// thread's network namespace), with room for [`MAX_FLOWS`] flows. All or nothing: if one
    /// attach fails, the program is detached from the others and the error says why.
    pub fn attach(ifaces: &[&str], mode: XdpMode) -> Result<XdpPath, XdpError> {
        Self::attach_with(ifaces, XdpOptions::new(mode))
    }

    /// [`XdpPath::attach`] with room for `max_flows` flows (flow map entries, and flow ids
    /// `0..max_flows`). Memory: the preallocated flow map takes roughly 150 bytes per flow and
    /// the per-CPU counters `96 * max_flows * possible CPUs` bytes (6 MiB per CPU at 65536).
    pub fn attach_with_capacity(
        ifaces: &[&str],
        mode: XdpMode,
        max_flows: u32,
    ) -> Result<XdpPath, XdpError> {
        Self::attach_with(
            ifaces,
            XdpOptions {
                max_flows,
                ..XdpOptions::new(mode)
            },
        )
    }

    /// [`XdpPath::attach`] with every option. The kernel's features are probed first
    /// ([`KernelFeatures::probe`]): a missing required one is [`XdpError::MissingKernelFeature`],
    /// a missing optional one a warning and the variant of the program without it.
    pub fn attach_with(ifaces: &[&str], opts: XdpOptions) -> Result<XdpPath, XdpError> {
        let XdpOptions {
            mode,
            max_flows,
            metadata,
            route_cache,
        } = opts;
        program_object().ok_or(XdpError::NotBuilt)?;
        const CAPACITY_LIMIT: u32 = 1 << 24;
        if max_flows == 0 || max_flows > CAPACITY_LIMIT {
            return Err(XdpError::InvalidCapacity {
                requested: max_flows,
                max: CAPACITY_LIMIT,
            });
        }
        if ifaces.is_empty() {
            return Err(XdpError::NoInterfaces);
        }
        if ifaces.len() > MAX_EGRESS as usize {
            return Err(XdpError::TooManyInterfaces {
                count: ifaces.len(),
                max: MAX_EGRESS,
            });
        }
        let indexes = ifaces
            .iter()
            .map(|i| ifindex(i))
            .collect::<Result<Vec<_>, _>>()?;

        let features = KernelFeatures::probe()?;
        features.check_required()?;
        let use_meta = match metadata {
            MetadataPolicy::Auto => features.has(Feature::XdpMeta),
            MetadataPolicy::On => true,
            MetadataPolicy::Off => false,
        };
        let use_cache = route_cache && features.has(Feature::MmapArray);
        let object = if use_cache {
            program_object()
        } else {
            program_object_without_route_cache()
        }
        .ok_or(XdpError::NotBuilt)?;

        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries(MAP_FLOWS, max_flows)
            .map_max_entries(MAP_COUNTERS, max_flows)
            .map_max_entries(MAP_ROUTES, max_flows)
            .override_global(GLOBAL_USE_META, &u32::from(use_meta), true)
            .load(object)
            .map_err(load_error)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| XdpError::Load {
            detail: format!("{what}: {e}"),
        })?;
        let take = |ebpf: &mut aya::Ebpf, name: &str| {
            ebpf.take_map(name).ok_or_else(|| XdpError::Load {
                detail: format!("map {name} missing from the object"),
            })
        };
        let flows = aya::maps::HashMap::try_from(take(&mut ebpf, MAP_FLOWS)?).map_err(|e| {
            XdpError::Load {
                detail: format!("{MAP_FLOWS}: {e}"),
            }
        })?;
        let counters =
            aya::maps::PerCpuArray::try_from(take(&mut ebpf, MAP_COUNTERS)?).map_err(|e| {
                XdpError::Load {
                    detail: format!("{MAP_COUNTERS}: {e}"),
                }
            })?;
        let mut egress: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(take(&mut ebpf, MAP_EGRESS)?).map_err(|e| {
                XdpError::Load {
                    detail: format!("{MAP_EGRESS}: {e}"),
                }
            })?;
        let guard = aya::maps::HashMap::try_from(take(&mut ebpf, MAP_GUARD)?).map_err(|e| {
            XdpError::Load {
                detail: format!("{MAP_GUARD}: {e}"),
            }
        })?;
        let stats = aya::maps::PerCpuArray::try_from(take(&mut ebpf, MAP_STATS)?).map_err(|e| {
            XdpError::Load {
                detail: format!("{MAP_STATS}: {e}"),
            }
        })?;
        let xsks = aya::maps::XskMap::try_from(take(&mut ebpf, MAP_XSKS)?).map_err(|e| {
            XdpError::Load {
                detail: format!("{MAP_XSKS}: {e}"),
            }
        })?;
        // Without it the workers still work, sending routed packets through the kernel.
        let routes = match use_cache.then(|| take(&mut ebpf, MAP_ROUTES)).transpose()? {
            None => None,
            Some(map) => match RouteCache::map(map, max_flows) {
                Ok(r) => Some(std::sync::Arc::new(r)),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "cannot map the XDP route cache: without XDP metadata, AF_XDP workers \
                         send routed packets through the kernel's IP stack"
                    );
                    None
                }
            },
        };

        let program: &mut aya::programs::Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| XdpError::Load {
                detail: format!("program {PROGRAM_NAME} missing from the object"),
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load {
                detail: e.to_string(),
            })?;
        program.load().map_err(|e| match e {
            aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                if io_error.raw_os_error() == Some(libc::EPERM) {
                    XdpError::PermissionDenied {
                        what: "load BPF programs",
                        source: io_error,
                    }
                } else if let Some(helper) = features::missing_helper(&verifier_log.to_string()) {
                    // The probe passed yet the kernel refused a helper (MetadataPolicy::On, or
                    // a helper the probe does not cover): the kernel's fault, not the program's.
                    XdpError::MissingKernelFeature {
                        feature: format!("helper {helper}"),
                        without: "the kernel refused the program variant that calls it (load \
                                  with XDP metadata auto or off to get the variant without it)",
                    }
                } else {
                    XdpError::Verifier {
                        log: format!("{io_error}: {verifier_log}"),
                    }
                }
            }
            other => XdpError::Load {
                detail: other.to_string(),
            },
        })?;

        let mut links = Vec::with_capacity(ifaces.len());
        let result = (|| {
            for (slot, (iface, &index)) in ifaces.iter().zip(&indexes).enumerate() {
                replace_stale(iface, index)?;
                // The value is the interface's slot: its row in sluice_xsks.
                egress
                    .insert(index, slot as u32, 0)
                    .map_err(|e| XdpError::Map {
                        op: "insert egress interface",
                        source: map_syscall_io(e),
                    })?;
                let id = program
                    .attach_to_if_index(index, mode.aya())
                    .map_err(|e| attach_error(iface, mode, e))?;
                links.push((iface.to_string(), id));
                let (v4, v6) = forwarding_enabled(iface);
                if !v4 || !v6 {
                    tracing::warn!(
                        iface,
                        ipv4 = v4,
                        ipv6 = v6,
                        "forwarding is disabled on this interface: the XDP fast path passes \
                         its packets to userspace (sysctl net.ipv4.conf.IFACE.forwarding=1 and \
                         net.ipv6.conf.IFACE.forwarding=1 to enable it)"
                    );
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for (_, id) in links.drain(..) {
                let _ = program.detach(id);
            }
            return Err(e);
        }
        tracing::info!(?ifaces, ?mode, kernel_features = %features, "XDP fast path attached");
        for (feature, used, what, switch) in [
            (
                Feature::XdpMeta,
                use_meta,
                "XDP metadata",
                "MetadataPolicy::Off",
            ),
            (
                Feature::MmapArray,
                use_cache,
                "XDP route cache",
                "XdpOptions::route_cache",
            ),
        ] {
            if !used {
                let why = if features.has(feature) {
                    format!("switched off ({switch})")
                } else {
                    "not offered by this kernel".to_string()
                };
                tracing::warn!(
                    feature = feature.name(),
                    why,
                    "{what} unavailable: {}",
                    feature.without()
                );
            }
        }

        Ok(XdpPath {
            table: FlowTable::new(
                AyaMaps {
                    flows,
                    counters,
                    cpus,
                },
                max_flows,
            ),
            _egress: egress,
            guard,
            stats,
            xsks,
            ifaces: ifaces
                .iter()
                .zip(&indexes)
                .map(|(i, &x)| (i.to_string(), x))
                .collect(),
            links,
            ebpf,
            mode,
            max_flows,
            features,
            metadata: use_meta,
            routes,
        })
    }

    /// The route cache the program fills for routed WORKER flows whose frames carry no
    /// metadata (None when it could not be mapped).
    pub fn route_cache(&self) -> Option<std::sync::Arc<RouteCache>> {
        self.routes.clone()
    }

    /// What the kernel offered when the program was loaded.
    pub fn kernel_features(&self) -> &KernelFeatures {
        &self.features
    }

    /// Whether routed WORKER frames carry their route to the worker (XDP metadata). When false
    /// the route reaches the workers through [`XdpPath::route_cache`].
    pub fn metadata(&self) -> bool {
        self.metadata
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> Vec<&str> {
        self.links.iter().map(|(i, _)| i.as_str()).collect()
    }

    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// How many flows fit (flow ids are `0..capacity`).
    pub fn capacity(&self) -> u32 {
        self.max_flows
    }

    /// Installs or replaces the flow for `key`. Does not touch the flow id's counters (see
    /// [`XdpPath::reset_counters`]).
    pub fn insert(&mut self, key: FlowKey, value: FlowValue) -> Result<(), XdpError> {
        self.table.insert(key, value)
    }

    /// Removes the flow for `key`; Ok(false) when there was none.
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool, XdpError> {
        self.table.remove(key)
    }

    /// The installed value for `key`.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>, XdpError> {
        self.table.get(key)
    }

    /// Counters of `flow_id`, summed over CPUs.
    pub fn counters(&self, flow_id: u32) -> Result<FlowCounters, XdpError> {
        self.table.counters(flow_id)
    }

    /// Zeroes the counters of `flow_id` (do this when giving the id to a new flow).
    pub fn reset_counters(&mut self, flow_id: u32) -> Result<(), XdpError> {
        self.table.reset_counters(flow_id)
    }

    /// Number of entries in the flow map (walks the map: for stats and leak checks, not per
    /// packet).
    pub fn flow_count(&self) -> Result<usize, XdpError> {
        self.table.flow_count()
    }

    /// The XSKMAP key of RX queue `queue` of the attached interface `iface`.
    fn xsk_key(&self, iface: &str, queue: u32) -> Result<u32, XdpError> {
        let slot = self
            .ifaces
            .iter()
            .position(|(name, _)| name == iface)
            .ok_or_else(|| XdpError::NotAttached {
                iface: iface.to_string(),
            })?;
        if queue >= MAX_QUEUES {
            return Err(XdpError::QueueOutOfRange {
                iface: iface.to_string(),
                queue,
                max: MAX_QUEUES,
            });
        }
        Ok(slot as u32 * MAX_QUEUES + queue)
    }

    /// Interface index of the attached interface `iface` (resolved at attach time).
    pub fn ifindex(&self, iface: &str) -> Option<u32> {
        self.ifaces
            .iter()
            .find(|(name, _)| name == iface)
            .map(|&(_, index)| index)
    }

    /// Registers the AF_XDP socket `xsk` (bound to RX queue `queue` of `iface`) as the
    /// destination of WORKER flows arriving on that queue. Replaces an earlier registration.
    /// The kernel drops the entry by itself when the socket is closed, so a crashed or stopped
    /// worker never leaves a dangling redirect: its queue falls back to the kernel stack.
    pub fn register_xsk(
        &mut self,
        iface: &str,
        queue: u32,
        xsk: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), XdpError> {
        use std::os::fd::AsRawFd;
        let key = self.xsk_key(iface, queue)?;
        self.xsks
            .set(key, xsk.as_raw_fd(), 0)
            .map_err(|e| XdpError::Map {
                op: "register AF_XDP socket",
                source: map_syscall_io(e),
            })
    }

    /// Removes the AF_XDP socket of `queue` on `iface`; Ok(false) when there was none. WORKER
    /// flows arriving there go to the kernel stack again (`passed_no_worker`).
    pub fn unregister_xsk(&mut self, iface: &str, queue: u32) -> Result<bool, XdpError> {
        let key = self.xsk_key(iface, queue)?;
        match self.xsks.unset(key).map_err(map_syscall_io) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(XdpError::Map {
                op: "unregister AF_XDP socket",
                source: e,
            }),
        }
    }

    /// Guards the relay's ports `low..=high` on each of `addrs` (the relay's own unicast
    /// addresses), replacing any earlier guard: a UDP datagram to one of them with a port in the
    /// range that hits no flow, and that no socket of this host would receive (the program asks
    /// the kernel's socket lookup), is dropped in XDP and counted in
    /// [`XdpStats::dropped_unknown_port`]. A port whose socket is bound (a stream still in
    /// userspace, or another program's socket) receives as before. Needs no update when ports
    /// are allocated or freed: the sockets are the truth.
    pub fn guard_ports(&mut self, addrs: &[IpAddr], low: u16, high: u16) -> Result<(), XdpError> {
        let guards = port_guards(addrs, low, high)?;
        self.unguard_ports()?;
        for (key, value) in guards {
            self.guard
                .insert(key, value, 0)
                .map_err(|e| XdpError::Map {
                    op: "insert port guard",
                    source: map_syscall_io(e),
                })?;
        }
        Ok(())
    }

    /// Removes every port guard; returns how many addresses were guarded.
    pub fn unguard_ports(&mut self) -> Result<usize, XdpError> {
        let keys = self
            .guard
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| XdpError::Map {
                op: "iterate port guards",
                source: map_syscall_io(e),
            })?;
        for k in &keys {
            self.guard.remove(k).map_err(|e| XdpError::Map {
                op: "remove port guard",
                source: map_syscall_io(e),
            })?;
        }
        Ok(keys.len())
    }

    /// The guarded addresses and their port ranges.
    pub fn port_guards(&self) -> Result<Vec<(IpAddr, PortGuard)>, XdpError> {
        self.guard
            .iter()
            .map(|r| r.map(|(k, v)| (k.local().ip(), v)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| XdpError::Map {
                op: "iterate port guards",
                source: map_syscall_io(e),
            })
    }

    /// The counters of packets that hit no flow, summed over CPUs.
    pub fn stats(&self) -> Result<XdpStats, XdpError> {
        let per_cpu = self.stats.get(&0, 0).map_err(|e| XdpError::Map {
            op: "read counters",
            source: map_syscall_io(e),
        })?;
        let mut sum = XdpStats::default();
        for c in per_cpu.iter() {
            sum.merge(c);
        }
        Ok(sum)
    }

    /// Removes every flow; returns how many there were.
    pub fn clear(&mut self) -> Result<usize, XdpError> {
        self.table.clear()
    }

    /// Runs the loaded program once per `repeat` on `frame` with `BPF_PROG_TEST_RUN`, as if it
    /// had arrived on RX queue 0 of `ingress_ifindex` (an interface of the calling thread's
    /// network namespace; its route lookups and socket lookups happen there). Nothing is sent:
    /// a redirect or `XDP_TX` only shows in [`ProgramRun::action`] and the rewritten frame.
    /// For tests and measurements of the program alone (the flows and counters are the real
    /// maps).
    #[doc(hidden)]
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<ProgramRun, XdpError> {
        use aya::programs::{TestRun, TestRunOptions};
        let program: &aya::programs::Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| XdpError::Load {
                detail: format!("program {PROGRAM_NAME} missing from the object"),
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| XdpError::Load {
                detail: e.to_string(),
            })?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end == the frame's length and no metadata.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        // Room for what the program may add in front (metadata) besides the frame itself.
        let mut out = vec![0u8; frame.len() + 256];
        let run = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: repeat.max(1),
                ..TestRunOptions::new()
            })
            .map_err(|e| XdpError::Load {
                detail: format!("BPF_PROG_TEST_RUN: {e}"),
            })?;
        out.truncate(run.data_size_out as usize);
        Ok(ProgramRun {
            action: run.return_value,
            frame: out,
            duration: run.duration,
        })
    }

    /// Detaches the program from every interface, reporting the first failure (Drop does the
    /// same silently).
    pub fn detach(mut self) -> Result<(), XdpError> {
        let mut first = None;
        let links = std::mem::take(&mut self.links);
        if let Some(program) = self.ebpf.program_mut(PROGRAM_NAME) {
            let program: Result<&mut aya::programs::Xdp, _> = program.try_into();
            if let Ok(program) = program {
                for (iface, id) in links {
                    if let Err(e) = program.detach(id) {
                        first.get_or_insert(XdpError::Attach {
                            iface,
                            source: io::Error::other(format!("detach: {e}")),
                        });
                    }
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The port guard entries for `addrs` and `low..=high`, or why they are refused.
fn port_guards(
    addrs: &[IpAddr],
    low: u16,
    high: u16,
) -> Result<Vec<(FlowKey, PortGuard)>, XdpError> {
    let bad = |reason| Err(XdpError::InvalidPortGuard { reason });
    if low == 0 || low > high {
        return bad("the port range must be LOW-HIGH with 0 < LOW <= HIGH");
    }
    if addrs.len() > MAX_GUARDS as usize {
        return bad("more relay addresses than the guard map holds (SLUICE_MAX_GUARDS)");
    }
    let mut out: Vec<(FlowKey, PortGuard)> = Vec::with_capacity(addrs.len());
    for &ip in addrs {
        let ip = ip.to_canonical();
        if ip.is_unspecified() || ip.is_multicast() {
            // No packet is addressed to a wildcard; a multicast group is not the relay's.
            return bad("only the relay's own unicast addresses can be guarded");
        }
        let key = FlowKey::guard(ip);
        if !out.iter().any(|(k, _)| *k == key) {
            out.push((
                key,
                PortGuard {
                    port_low: low,
                    port_high: high,
                },
            ));
        }
    }
    Ok(out)
}

/// One [`XdpPath::test_run`]: the program's verdict (`XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3,
/// `XDP_REDIRECT` 4), the frame as it left the program, and the kernel's mean time per run.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct ProgramRun {
    pub action: u32,
    pub frame: Vec<u8>,
    pub duration: std::time::Duration,
}

/// Layout of the Rust mirrors of ebpf/sluice_maps.h, as `(name, value)` pairs: `struct` for a
/// size, `struct.field` for an offset, `struct.field.size` for a field size, and constants by
/// their C name. The test `xdp_abi_layout` prints the same list from C and compares.
#[doc(hidden)]
pub fn abi_layout() -> Vec<(String, u64)> {
    use abi::*;
    use std::mem::{offset_of, size_of};
    let mut out: Vec<(String, u64)> = Vec::new();
    macro_rules! s {
        ($cname:literal, $ty:ty, [$($field:ident),* $(,)?]) => {{
            out.push(($cname.to_string(), size_of::<$ty>() as u64));
            $(
                out.push((
                    format!("{}.{}", $cname, stringify!($field)),
                    offset_of!($ty, $field) as u64,
                ));
                let probe: $ty = unsafe { std::mem::zeroed() };
                out.push((
                    format!("{}.{}.size", $cname, stringify!($field)),
                    std::mem::size_of_val(&probe.$field) as u64,
                ));
            )*
        }};
    }
    s!("sluice_flow_key", FlowKey, [family, pad, port, addr]);
    s!(
        "sluice_flow_value",
        FlowValue,
        [
            action,
            flags,
            family,
            pad0,
            expect_port,
            new_src_port,
            new_dst_port,
            pad1,
            flow_id,
            expect_addr,
            new_src_addr,
            new_dst_addr,
        ]
    );
    s!(
        "sluice_flow_counters",
        FlowCounters,
        [
            packets,
            bytes,
            last_seen_ns,
            dropped_wrong_source,
            dropped_action,
            passed_action,
            passed_fib_miss,
            passed_fwd_disabled,
            passed_mtu,
            passed_egress,
            passed_ttl,
            passed_unusual,
            to_worker,
            passed_no_worker,
        ]
    );
    s!("sluice_port_guard", PortGuard, [port_low, port_high]);
    s!(
        "sluice_stats",
        XdpStats,
        [dropped_unknown_port, passed_bound_port]
    );
    s!(
        "sluice_xsk_meta",
        XskMeta,
        [magic, ifindex, smac, dmac, mtu, pad]
    );
    s!(
        "sluice_route",
        RouteEntry,
        [seq, ifindex, smac, dmac, mtu, pad]
    );
    for (name, v) in [
        ("SLUICE_XSK_META_MAGIC", XSK_META_MAGIC as u64),
        ("SLUICE_MAX_FLOWS", MAX_FLOWS as u64),
        ("SLUICE_MAX_EGRESS", MAX_EGRESS as u64),
        ("SLUICE_MAX_QUEUES", MAX_QUEUES as u64),
        ("SLUICE_MAX_XSKS", MAX_XSKS as u64),
        ("SLUICE_MAX_GUARDS", MAX_GUARDS as u64),
        ("SLUICE_FAMILY_V4", FAMILY_V4 as u64),
        ("SLUICE_FAMILY_V6", FAMILY_V6 as u64),
        ("SLUICE_ACTION_PASS", ACTION_PASS as u64),
        ("SLUICE_ACTION_FORWARD", ACTION_FORWARD as u64),
        ("SLUICE_ACTION_WORKER", ACTION_WORKER as u64),
        ("SLUICE_ACTION_DROP", ACTION_DROP as u64),
        ("SLUICE_FLAG_STRICT_SOURCE", FLAG_STRICT_SOURCE as u64),
    ] {
        out.push((name.to_string(), v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_without_the_program_says_how_to_fix_it() {
        if program_object().is_some() {
            // Built with clang: the netns tests cover attach.
            return;
        }
        let err = XdpPath::attach(&["lo"], XdpMode::Native).unwrap_err();
        assert!(matches!(err, XdpError::NotBuilt), "{err}");
        assert!(
            err.to_string()
                .contains("apt-get install clang-19 libbpf-dev")
        );
    }

    #[test]
    fn unprivileged_attach_says_run_as_root() {
        // SAFETY: geteuid has no preconditions.
        if program_object().is_none() || unsafe { libc::geteuid() } == 0 {
            return; // root: the netns tests cover attach
        }
        let err = XdpPath::attach(&["lo"], XdpMode::Generic).unwrap_err();
        assert!(matches!(err, XdpError::PermissionDenied { .. }), "{err}");
        assert!(err.to_string().contains("root"), "{err}");
    }

    #[test]
    fn port_guards_take_the_relay_addresses_once_and_refuse_what_no_packet_is_sent_to() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let g = port_guards(&[v4, mapped, v6], 30000, 39999).unwrap();
        assert_eq!(g.len(), 2, "an IPv4-mapped address is the IPv4 one: {g:?}");
        assert_eq!(g[0].0, FlowKey::new(SocketAddr::new(v4, 0)));
        assert_eq!(g[0].0.port, 0);
        assert_eq!(
            g[1].1,
            PortGuard {
                port_low: 30000,
                port_high: 39999
            }
        );
        for (addrs, low, high) in [
            (vec![v4], 0, 10),
            (vec![v4], 40000, 30000),
            (vec!["0.0.0.0".parse().unwrap()], 1, 2),
            (vec!["::".parse().unwrap()], 1, 2),
            (vec!["239.1.1.1".parse().unwrap()], 1, 2),
            (
                (0..=MAX_GUARDS)
                    .map(|i| IpAddr::from([10, 0, 0, i as u8]))
                    .collect(),
                1,
                2,
            ),
        ] {
            let e = port_guards(&addrs, low, high).unwrap_err();
            assert!(matches!(e, XdpError::InvalidPortGuard { .. }), "{e}");
        }
    }

    #[test]
    fn errors_tell_the_operator_what_to_do() {
        let e = XdpError::NativeUnsupported {
            iface: "eth0".into(),
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        assert!(e.is_native_unsupported());
        assert!(e.to_string().contains("--xdp generic"), "{e}");
        let e = XdpError::PermissionDenied {
            what: "load BPF programs",
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e.to_string().contains("root"), "{e}");
        let e = attach_error(
            "eth0",
            XdpMode::Native,
            aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_link_create",
                io_error: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
            }),
        );
        assert!(e.is_native_unsupported(), "{e}");
        let e = attach_error(
            "eth0",
            XdpMode::Generic,
            aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_link_create",
                io_error: io::Error::from_raw_os_error(libc::EPERM),
            }),
        );
        assert!(matches!(e, XdpError::PermissionDenied { .. }), "{e}");
    }
}
