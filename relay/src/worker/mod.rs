//! The AF_XDP worker pool: pinned threads that process WORKER flows (SRTP, later transcoding)
//! outside the kernel.
//!
//! ```text
//!  NIC queue q of iface I --XDP: flow action WORKER--> sluice_xsks[slot(I) * 64 + q]
//!      --> AF_XDP socket (I, q), owned by worker q % workers
//!      --> parse, flow lookup, PayloadTransform, rewrite IP/UDP, checksums, TTL - 1
//!      --> TX ring of the same worker's socket on the egress interface (same UMEM, no copy)
//!          or, without one, the flow's fallback UDP socket
//! ```
//!
//! Ownership: each worker thread owns one UMEM, the sockets on it (one per RX queue of each
//! attached interface it serves: queue `q` of every interface goes to worker `q % workers`),
//! and its flow table. The control plane talks to it only through a crossbeam channel
//! ([`WorkerHandle::add_flow`], [`WorkerHandle::remove_flow`]) and reads its counters
//! ([`WorkerHandle::stats`], single-writer atomics). No locks, no per-packet allocation.
//!
//! Next hop: a [`WorkerFlow`] says how its packets leave ([`NextHop`]): where the XDP program's
//! route lookup for the frame says (`Fib`: the daemon's choice; the program puts egress
//! interface, MACs and MTU in front of the frame as XDP metadata), back out of the ingress
//! interface with the MAC addresses swapped (`Ingress`: one-armed relays), out of an attached
//! interface with fixed MAC addresses (`Ethernet`), or through the kernel's IP stack (`Kernel`:
//! IPv4 through one raw socket per worker, IPv6 through the flow's `fallback`, a clone of the
//! relay's socket bound to the new source address; the kernel routes, resolves neighbours and
//! fragments). `Fib` falls back to the kernel when the lookup failed (e.g. no neighbour entry
//! yet), the packet exceeds the route's MTU, or the worker has no socket on the egress.
//!
//! Flow placement: per-flow state (SRTP rollover counters, replay windows) lives in exactly one
//! worker, so a flow must be added to the worker whose queue its packets arrive on. With one
//! RX queue per interface (veth, many VMs, or `ethtool -L IFACE combined 1`) that is worker 0;
//! with several, steer the relay ports to a queue (`ethtool -N IFACE flow-type udp4 dst-port P
//! action Q`) and add the flow to [`WorkerPool::worker_for_queue`]. Packets that reach a
//! worker without the flow are counted as `dropped_no_flow`.

mod flow_table;
mod packet;
pub mod placement;
mod run;
pub mod srtp_transform;
pub mod topology;
pub mod transcode_transform;
pub mod transform;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::afxdp::{self, AfXdpError, EventFd, Umem, XskConfig, XskSocket};
use crate::handover::FlowHandover;
use crate::xdp::{FlowKey, MAX_QUEUES, XdpError, XdpPath};
pub use srtp_transform::SrtpTransform;
pub use transcode_transform::TranscodeTransform;
pub use transform::{MAX_GROWTH, PayloadTransform, StreamTransform, Transform, TransformError};

/// How many workers, and where they run. The CLI maps `--workers N` and `--worker-cores LIST`
/// onto the first two fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Number of workers; default: one per RX queue (of the interface with the most queues),
    /// at most one per usable physical core.
    pub workers: Option<usize>,
    /// CPUs to pin worker i to (`cores[i % len]`); default: chosen by [`placement`] from the
    /// hwloc topology (physical cores first, the NIC's NUMA node first).
    pub cores: Option<Vec<usize>>,
    /// UMEM frame and ring sizes, copy or zero-copy.
    pub xsk: XskConfig,
    /// How long a worker busy-polls without traffic before it blocks in poll(2), in
    /// microseconds; default [`DEFAULT_SPIN_US`].
    pub spin_us: Option<u64>,
}

/// Default busy-poll time of a worker after its last packet, in microseconds. Measured with
/// `bench forward --netns --srtp` at 50k packets/s: 50 us of spinning (twice what a halted vCPU
/// needs to wake) cost 4.6 us of CPU per packet, 5 us cost 3.0 us, at the same 300k packets/s
/// limit; media at 20 ms packet intervals gains nothing from the 20 us of wake-up it saves.
pub const DEFAULT_SPIN_US: u64 = 5;

/// What went wrong with the worker pool, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error(transparent)]
    AfXdp(#[from] AfXdpError),
    #[error(transparent)]
    Xdp(#[from] XdpError),
    #[error("invalid worker configuration: {0}")]
    Config(String),
    #[error(
        "CPU {cpu} is not available to this process (allowed: {allowed:?}): fix --worker-cores"
    )]
    CoreNotAllowed { cpu: usize, allowed: Vec<usize> },
    #[error(
        "flow for {key}: the new source and destination must be of the key's address family \
         (workers do not translate between IPv4 and IPv6)"
    )]
    FamilyMismatch { key: SocketAddr },
    #[error("worker {worker} has stopped; restart sluice")]
    Gone { worker: usize },
    #[error("worker {worker} panicked")]
    Panicked { worker: usize },
    #[error("starting worker thread {worker} failed: {source}")]
    Spawn {
        worker: usize,
        #[source]
        source: io::Error,
    },
    #[error("querying interface {iface}: {source}")]
    Interface {
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// How a flow's packets leave the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// Back out of the interface and queue they came in on, source and destination MAC
    /// swapped.
    Ingress,
    /// Out of interface `ifindex` (attached, with a socket in this worker; otherwise the
    /// fallback socket is used) from `src_mac` to `dst_mac`.
    Ethernet {
        ifindex: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
    },
    /// Through the flow's fallback UDP socket: the kernel routes it.
    Kernel,
    /// Where the XDP program's route lookup for the frame says (its flow value is
    /// `FlowValue::worker_routed`): out of this worker's socket on the egress interface, with
    /// the MACs of the lookup, when the lookup succeeded, this worker has a socket on that
    /// interface and the packet fits its MTU; otherwise as `Kernel` (the kernel routes it, and
    /// resolves a missing neighbour for the packets after it). The lookup comes with the frame
    /// as XDP metadata, or where the kernel gives XDP none from the program's route cache at
    /// the flow's `route_slot`.
    Fib,
}

/// Per-flow counters, written by the worker that owns the flow, read by the control plane.
#[derive(Debug, Default)]
pub struct FlowStats {
    /// Packets and UDP payload bytes received for this flow (before the transform).
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets and payload bytes sent on (after the transform).
    pub forwarded: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub transform_errors: AtomicU64,
    /// `clock::now_ns()` of the worker batch that carried the last packet; 0 = none yet.
    pub last_seen_ns: AtomicU64,
}

/// One flow's context as the control plane hands it to a worker.
#[derive(Debug)]
pub struct WorkerFlow {
    /// The relay's address and port on the other leg (the packet's new source).
    pub new_src: SocketAddr,
    /// The peer (the packet's new destination).
    pub new_dst: SocketAddr,
    pub next_hop: NextHop,
    /// A UDP socket bound to `new_src` (e.g. `try_clone()` of the relay's socket), used for
    /// `NextHop::Kernel` (IPv6, or IPv4 without a raw socket), for `NextHop::Fib` without a
    /// usable route, for stream transforms' output, and when the worker has no AF_XDP socket on
    /// the egress interface.
    pub fallback: Option<std::net::UdpSocket>,
    pub transform: Transform,
    pub stats: Arc<FlowStats>,
    /// `NextHop::Fib`: the flow id of its XDP value, where the program caches the route when
    /// frames carry no metadata. None: such frames go through the kernel.
    pub route_slot: Option<u32>,
}

impl WorkerFlow {
    /// An identity flow with fresh counters and no fallback socket.
    pub fn new(new_src: SocketAddr, new_dst: SocketAddr, next_hop: NextHop) -> Self {
        Self {
            new_src,
            new_dst,
            next_hop,
            fallback: None,
            transform: Transform::Identity,
            stats: Arc::default(),
            route_slot: None,
        }
    }

    /// The flow id of the flow's `FlowValue::worker_routed` entry (see `route_slot`).
    pub fn with_route_slot(mut self, flow_id: u32) -> Self {
        self.route_slot = Some(flow_id);
        self
    }

    pub fn with_transform(mut self, transform: Transform) -> Self {
        self.transform = transform;
        self
    }

    pub fn with_fallback(mut self, socket: std::net::UdpSocket) -> Self {
        self.fallback = Some(socket);
        self
    }
}

macro_rules! worker_counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// A worker's counters: written only by its thread (relaxed load + store), read by
        /// anyone. Byte counters count whole frames.
        #[derive(Debug, Default)]
        pub struct WorkerCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A snapshot of [`WorkerCounters`] plus where the worker runs.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct WorkerStats {
            pub worker: usize,
            /// The CPU the worker is pinned to (None: pinning failed, see the log).
            pub cpu: Option<usize>,
            $($(#[$doc])* pub $name: u64,)*
        }

        impl WorkerCounters {
            fn snapshot(&self, worker: usize, cpu: Option<usize>) -> WorkerStats {
                WorkerStats {
                    worker,
                    cpu,
                    $($name: self.$name.load(Relaxed),)*
                }
            }
        }
    };
}

worker_counters! {
    /// Frames taken from the RX rings.
    rx_packets,
    rx_bytes,
    /// Frames queued on TX rings.
    tx_packets,
    tx_bytes,
    /// Packets sent through a flow's fallback UDP socket.
    tx_socket_packets,
    /// Not Ethernet/IP/UDP, a fragment, inconsistent lengths.
    dropped_malformed,
    /// TTL / hop limit would expire.
    dropped_ttl,
    /// No flow context for the destination in this worker.
    dropped_no_flow,
    /// No AF_XDP socket on the egress interface and no fallback socket.
    dropped_no_egress,
    /// The egress TX ring was full.
    dropped_tx_ring_full,
    /// The fallback socket's sendto failed.
    dropped_socket_error,
    /// Packets the transform refused (the sum of the four below).
    transform_errors,
    transform_auth_failed,
    transform_replay,
    transform_malformed,
    transform_other,
    /// Flow contexts installed.
    flows,
    /// Nanoseconds spent in loop iterations that did work, and since the worker started
    /// (updated every 10 ms); their ratio is the long-run busy fraction.
    busy_ns,
    run_ns,
    /// Busy fraction over the last full second, in thousandths.
    load_permille,
    /// Times the worker blocked in poll(2) for lack of work.
    sleeps,
    /// The kernel's XDP_STATISTICS summed over the worker's sockets (updated every second):
    /// frames dropped because the RX ring was full (the worker fell behind), because the fill
    /// ring was empty, for other reasons, and invalid descriptors.
    kernel_rx_ring_full,
    kernel_fill_ring_empty,
    kernel_rx_dropped,
    kernel_invalid_descs,
}

impl WorkerStats {
    /// Every packet the worker dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_ttl
            + self.dropped_no_flow
            + self.dropped_no_egress
            + self.dropped_tx_ring_full
            + self.dropped_socket_error
            + self.transform_errors
    }

    /// Busy fraction over the last second (0.0 - 1.0).
    pub fn load(&self) -> f64 {
        self.load_permille as f64 / 1000.0
    }
}

pub(crate) enum Command {
    Add(FlowKey, Box<WorkerFlow>),
    /// Removes a flow; with a sender, answers with what the flow hands back.
    Remove(FlowKey, Option<Sender<FlowHandover>>),
    Barrier(Sender<()>),
    Shutdown,
}

/// The control plane's handle on one worker thread.
pub struct WorkerHandle {
    id: usize,
    cpu: Option<usize>,
    /// (interface, queue) of every socket the worker owns.
    queues: Vec<(String, u32)>,
    tx: Sender<Command>,
    wake: Arc<EventFd>,
    counters: Arc<WorkerCounters>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.id)
            .field("cpu", &self.cpu)
            .field("queues", &self.queues)
            .finish()
    }
}

impl WorkerHandle {
    pub fn id(&self) -> usize {
        self.id
    }

    /// The CPU the worker was pinned to.
    pub fn cpu(&self) -> Option<usize> {
        self.cpu
    }

    /// The (interface, RX queue) pairs this worker has sockets on.
    pub fn queues(&self) -> &[(String, u32)] {
        &self.queues
    }

    fn send(&self, cmd: Command) -> Result<(), WorkerError> {
        self.tx
            .send(cmd)
            .map_err(|_| WorkerError::Gone { worker: self.id })?;
        self.wake.wake();
        Ok(())
    }

    /// Installs (or replaces) the context for packets addressed to `key`. The XDP flow map
    /// needs a WORKER entry for `key` (`FlowValue::worker`) for packets to arrive here.
    pub fn add_flow(&self, key: FlowKey, flow: WorkerFlow) -> Result<(), WorkerError> {
        let v6 = key.is_v6();
        let family_ok = |a: &SocketAddr| a.ip().to_canonical().is_ipv6() == v6;
        if !family_ok(&flow.new_src) || !family_ok(&flow.new_dst) {
            return Err(WorkerError::FamilyMismatch { key: key.local() });
        }
        self.send(Command::Add(key, Box::new(flow)))
    }

    /// Removes the context for `key` (its transform and fallback socket are dropped on the
    /// worker thread). Packets still redirected to the worker afterwards are dropped as
    /// `dropped_no_flow`: remove or change the XDP entry first.
    pub fn remove_flow(&self, key: FlowKey) -> Result<(), WorkerError> {
        self.send(Command::Remove(key, None))
    }

    /// Like [`WorkerHandle::remove_flow`], and returns once the worker removed it, with where
    /// its per-stream state stood after the last packet it processed: the stream continues from
    /// that on the userspace path. A worker that had no such flow hands back nothing.
    pub fn take_flow(&self, key: FlowKey) -> Result<FlowHandover, WorkerError> {
        let (reply, wait) = crossbeam_channel::bounded(1);
        self.send(Command::Remove(key, Some(reply)))?;
        wait.recv()
            .map_err(|_| WorkerError::Gone { worker: self.id })
    }

    /// Returns once the worker has applied every command sent before.
    pub fn sync(&self) -> Result<(), WorkerError> {
        let (done, wait) = crossbeam_channel::bounded(1);
        self.send(Command::Barrier(done))?;
        wait.recv()
            .map_err(|_| WorkerError::Gone { worker: self.id })
    }

    pub fn stats(&self) -> WorkerStats {
        self.counters.snapshot(self.id, self.cpu)
    }

    /// Stops the thread and waits for it; its sockets and UMEM are released when this returns.
    pub fn stop(&mut self) -> Result<(), WorkerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.tx.send(Command::Shutdown);
        self.wake.wake();
        thread
            .join()
            .map_err(|_| WorkerError::Panicked { worker: self.id })
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// An interface the pool serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolInterface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// RX queues with a socket (all of the interface's, up to `xdp::MAX_QUEUES`).
    pub queues: u32,
}

/// The running workers. Dropping the pool stops them (see [`WorkerPool::stop`]).
#[derive(Debug)]
pub struct WorkerPool {
    workers: Vec<WorkerHandle>,
    ifaces: Vec<PoolInterface>,
}

impl WorkerPool {
    /// Starts workers for every RX queue of `ifaces` (interfaces `xdp` is attached to) and
    /// registers their sockets in its XSKMAP. Call it from a thread in the interfaces' network
    /// namespace; the sockets are created and bound here, so a setup error is returned rather
    /// than found later on a worker thread.
    pub fn start(
        xdp: &mut XdpPath,
        ifaces: &[&str],
        cfg: &WorkerConfig,
    ) -> Result<WorkerPool, WorkerError> {
        if ifaces.is_empty() {
            return Err(WorkerError::Config(
                "no interfaces given for AF_XDP workers".into(),
            ));
        }
        let mut pool_ifaces = Vec::with_capacity(ifaces.len());
        for &name in ifaces {
            let ifindex = xdp.ifindex(name).ok_or_else(|| XdpError::NotAttached {
                iface: name.to_string(),
            })?;
            let err = |source| WorkerError::Interface {
                iface: name.to_string(),
                source,
            };
            let mac = afxdp::iface_mac(name).map_err(err)?;
            let mut queues = afxdp::rx_queues(name).map_err(err)?;
            if queues > MAX_QUEUES {
                tracing::warn!(
                    iface = name,
                    queues,
                    max = MAX_QUEUES,
                    "more RX queues than the XDP program can hand to workers; the rest go to \
                     the kernel stack"
                );
                queues = MAX_QUEUES;
            }
            pool_ifaces.push(PoolInterface {
                name: name.to_string(),
                ifindex,
                mac,
                queues,
            });
        }
        let max_queues = pool_ifaces.iter().map(|i| i.queues).max().unwrap_or(1) as usize;

        let allowed = placement::allowed_cpus();
        let cores = placement::cores();
        let n = match cfg.workers {
            Some(0) => {
                return Err(WorkerError::Config(
                    "--workers must be at least 1 (or run with --xdp off)".into(),
                ));
            }
            Some(n) if n > max_queues => {
                tracing::warn!(
                    workers = n,
                    queues = max_queues,
                    "more workers than RX queues: only {max_queues} get sockets"
                );
                max_queues
            }
            Some(n) => n,
            None => max_queues
                .min(placement::usable_cores(&cores, &allowed))
                .max(1),
        };
        let cpus: Vec<usize> = match &cfg.cores {
            Some(list) if list.is_empty() => {
                return Err(WorkerError::Config("--worker-cores is empty".into()));
            }
            Some(list) => {
                if let Some(&cpu) = list.iter().find(|c| !allowed.contains(c)) {
                    return Err(WorkerError::CoreNotAllowed { cpu, allowed });
                }
                (0..n).map(|i| list[i % list.len()]).collect()
            }
            None => {
                let numa = pool_ifaces
                    .iter()
                    .find_map(|i| afxdp::iface_numa_node(&i.name));
                placement::choose(&cores, &allowed, numa, n)
            }
        };
        let settings = run::WorkerSettings {
            spin_ns: cfg.spin_us.unwrap_or(DEFAULT_SPIN_US) * 1000,
            idle_poll_ms: 100,
            routes: xdp.route_cache(),
        };

        let mut workers = Vec::with_capacity(n);
        for id in 0..n {
            let queues: Vec<(String, u32)> = pool_ifaces
                .iter()
                .flat_map(|i| {
                    (0..i.queues)
                        .filter(move |q| *q as usize % n == id)
                        .map(move |q| (i.name.clone(), q))
                })
                .collect();
            let handle = Self::spawn(
                xdp,
                id,
                cpus.get(id).copied(),
                queues,
                cfg,
                settings.clone(),
            )?;
            workers.push(handle);
        }
        tracing::info!(workers = n, ?cpus, ?ifaces, "AF_XDP workers started");
        Ok(WorkerPool {
            workers,
            ifaces: pool_ifaces,
        })
    }

    fn spawn(
        xdp: &mut XdpPath,
        id: usize,
        cpu: Option<usize>,
        queues: Vec<(String, u32)>,
        cfg: &WorkerConfig,
        settings: run::WorkerSettings,
    ) -> Result<WorkerHandle, WorkerError> {
        let ring = cfg.xsk.ring_size;
        // Per socket: a full fill ring plus as many frames again in flight (RX ring, TX ring,
        // being processed).
        let frames = (queues.len() as u32).max(1) * 2 * ring;
        let umem = Umem::new(frames, cfg.xsk.frame_size)?;
        let mut socks: Vec<XskSocket> = Vec::with_capacity(queues.len());
        for (iface, q) in &queues {
            let sock = match socks.first() {
                None => XskSocket::new(&umem, iface, *q, &cfg.xsk)?,
                Some(owner) => XskSocket::new_shared(&umem, owner, iface, *q, &cfg.xsk)?,
            };
            socks.push(sock);
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake =
            Arc::new(EventFd::new().map_err(|source| WorkerError::Spawn { worker: id, source })?);
        let counters = Arc::new(WorkerCounters::default());
        let worker = run::Worker::new(umem, socks, rx, wake.clone(), counters.clone(), settings);
        // The fill rings are full: register the sockets only now, so the first redirected
        // frames find room.
        for (sock_iface, q) in &queues {
            let fd = worker.socket_fd(sock_iface, *q);
            if let Some(fd) = fd {
                xdp.register_xsk(sock_iface, *q, fd)?;
            }
        }
        let thread = std::thread::Builder::new()
            .name(format!("sluice-worker-{id}"))
            .spawn(move || {
                if let Some(cpu) = cpu
                    && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
                {
                    tracing::warn!(worker = id, cpu, "pinning the worker thread failed");
                }
                worker.run();
            })
            .map_err(|source| WorkerError::Spawn { worker: id, source })?;
        Ok(WorkerHandle {
            id,
            cpu,
            queues,
            tx,
            wake,
            counters,
            thread: Some(thread),
        })
    }

    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    pub fn worker(&self, id: usize) -> Option<&WorkerHandle> {
        self.workers.get(id)
    }

    /// The worker that owns RX queue `queue` of `iface`.
    pub fn worker_for_queue(&self, iface: &str, queue: u32) -> Option<&WorkerHandle> {
        self.workers
            .iter()
            .find(|w| w.queues.iter().any(|(i, q)| i == iface && *q == queue))
    }

    pub fn interfaces(&self) -> &[PoolInterface] {
        &self.ifaces
    }

    pub fn interface(&self, name: &str) -> Option<&PoolInterface> {
        self.ifaces.iter().find(|i| i.name == name)
    }

    pub fn stats(&self) -> Vec<WorkerStats> {
        self.workers.iter().map(WorkerHandle::stats).collect()
    }

    /// Stops every worker and waits for them. When this returns, every socket is closed (the
    /// kernel removed it from the XSKMAP: WORKER flows fall back to the kernel stack) and
    /// every UMEM is unmapped.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        let mut first = None;
        for w in &mut self.workers {
            if let Err(e) = w.stop() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The frame parser for the fuzz targets (`fuzz/`), which cannot reach the crate-private
/// `packet` module; not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::packet;

    /// What a worker does with a received frame: parse it, and when it is relayed, take its
    /// flow key and rewrite it in a copy (the payload length kept, then shortened by the
    /// frame's last byte). Returns the rewritten length, `None` for a dropped frame.
    pub fn frame(frame: &[u8]) -> Option<usize> {
        let p = packet::parse(frame).ok()?;
        let _ = packet::flow_key(frame, &p);
        let (src, dst): (SocketAddr, SocketAddr) = if p.v6 {
            (
                (Ipv6Addr::LOCALHOST, 30000).into(),
                (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7), 5004).into(),
            )
        } else {
            (
                (Ipv4Addr::new(192, 0, 2, 1), 30000).into(),
                (Ipv4Addr::new(198, 51, 100, 7), 5004).into(),
            )
        };
        let (src, dst) = (packet::WireAddr::new(src), packet::WireAddr::new(dst));
        let mut copy = frame.to_vec();
        packet::swap_macs(&mut copy);
        packet::set_macs(&mut copy, &[2; 6], &[4; 6]);
        let n = packet::rewrite(&mut copy, &p, p.payload_len, &src, &dst);
        let shorter = p
            .payload_len
            .saturating_sub(usize::from(frame[frame.len() - 1]));
        packet::rewrite(&mut copy, &p, shorter, &src, &dst);
        Some(n)
    }
}
