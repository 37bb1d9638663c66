//! One worker: the thread loop over its AF_XDP sockets.
//!
//! Per iteration: apply control commands, reclaim transmitted frames from the completion rings,
//! top up the fill rings, then for each socket take a batch of up to [`BATCH`] frames from its
//! RX ring, process every frame in place (parse, flow lookup, transform, rewrite) and queue it
//! on the TX ring of the egress socket (one submit and one `sendto()` kick per socket and batch).
//! Frames live in the worker's one UMEM and move between its sockets without copies. Nothing on
//! this path allocates or locks: the flow table is only modified by commands, the free-frame
//! stack and the TX staging arrays are allocated up front.
//!
//! Idle: after [`WorkerSettings::spin_ns`] without work the worker blocks in poll(2) on its
//! sockets and the control eventfd, so an idle pool costs no CPU.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crossbeam_channel::{Receiver, TryRecvError};

use super::flow_table::{FlowTable, Slot};
use super::packet::{self, Bad, WireAddr};
use super::transform::{StreamTransform, Transform, TransformError};
use super::{Command, FlowStats, NextHop, WorkerCounters, WorkerFlow};
use crate::afxdp::{EventFd, Umem, XskSocket};
use crate::clock::now_ns;
use crate::mmsg::{sockaddr, sockaddr_len};
use crate::stats::bump;
use crate::xdp::{FlowKey, RouteCache, RouteEntry, XSK_META_MAGIC, XskMeta};

/// Frames taken from an RX ring per batch.
pub(crate) const BATCH: usize = 64;
/// Commands applied per loop iteration (the rest wait for the next one).
const COMMANDS_PER_ITERATION: usize = 64;
const PUBLISH_NS: u64 = 10_000_000;
const LOAD_WINDOW_NS: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
pub(crate) struct WorkerSettings {
    pub spin_ns: u64,
    pub idle_poll_ms: i32,
    /// The XDP program's route cache, where routed frames come without metadata.
    pub routes: Option<Arc<RouteCache>>,
}

/// The flows, by slot; a frame's outcome names its flow by slot.
type FlowMap = FlowTable<FlowCtx>;

enum Hop {
    /// Out of the socket it came in on, MACs swapped.
    Ingress,
    /// Out of this worker's socket `sock`.
    Xsk {
        sock: usize,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
    },
    /// Through the fallback UDP socket (the kernel routes it).
    Kernel,
    /// The frame's [`Route`] when it has one (its metadata, else the route cache entry of
    /// flow id `slot`), else as `Kernel`.
    Fib { slot: Option<u32> },
}

/// The XDP program's route for one frame (from its [`XskMeta`]), resolved to a socket of this
/// worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Route {
    sock: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// Largest IP packet the egress takes.
    mtu: usize,
}

fn take_meta(umem: &mut Umem, addr: u64) -> Option<XskMeta> {
    const N: usize = std::mem::size_of::<XskMeta>();
    let head = umem.head_mut(addr, N)?;
    // SAFETY: XskMeta is plain integers (any bit pattern is valid), N bytes are readable.
    let meta: XskMeta = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    if meta.magic != XSK_META_MAGIC {
        return None;
    }
    head[..4].fill(0);
    Some(meta)
}

/// Reads and clears the metadata in front of the frame at `addr`: the route, when the XDP
/// program left one and `socks` has a socket on its interface. Clearing matters because frames
/// are reused and a later frame may arrive without metadata.
fn take_route(umem: &mut Umem, addr: u64, socks: &[XskSocket]) -> Option<Route> {
    let meta = take_meta(umem, addr)?;
    route_via(socks, meta.ifindex, meta.smac, meta.dmac, meta.mtu)
}

fn route_via(
    socks: &[XskSocket],
    ifindex: u32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    mtu: u16,
) -> Option<Route> {
    let sock = socks.iter().position(|s| s.ifindex() == ifindex)?;
    Some(Route {
        sock,
        src_mac,
        dst_mac,
        mtu: mtu as usize,
    })
}

/// Where a frame's route comes from: its metadata, or the XDP program's route cache.
struct Routes<'a> {
    meta: Option<Route>,
    cache: Option<(&'a RouteCache, &'a [XskSocket])>,
}

impl Routes<'_> {
    /// Only what came with the frame (tests, and workers without a cache).
    #[cfg(test)]
    fn given(meta: Option<Route>) -> Self {
        Routes { meta, cache: None }
    }

    fn for_slot(&self, slot: Option<u32>) -> Option<Route> {
        if self.meta.is_some() {
            return self.meta;
        }
        let (cache, socks) = self.cache?;
        let RouteEntry {
            ifindex,
            smac,
            dmac,
            mtu,
            ..
        } = cache.get(slot?)?;
        route_via(socks, ifindex, smac, dmac, mtu)
    }
}

struct Fallback {
    sock: UdpSocket,
    addr: libc::sockaddr_storage,
    addr_len: libc::socklen_t,
}

struct FlowCtx {
    src: WireAddr,
    dst: WireAddr,
    hop: Hop,
    fallback: Option<Fallback>,
    transform: Transform,
    stats: Arc<FlowStats>,
}

/// What became of a received frame.
enum Outcome {
    /// Queue on socket `.0`'s TX ring with length `.1`.
    Tx(usize, u32),
    /// Send `len` bytes of the frame from offset `at` (the UDP payload, or the whole IPv4
    /// packet for the raw socket) through `fd` to `addr`, with the other packets of the batch
    /// (one `sendmmsg` per socket). A value: offsets into the frame and the flow's key, no
    /// pointers (the queue makes its iovecs when it sends).
    Kernel {
        fd: libc::c_int,
        at: usize,
        len: usize,
        addr: libc::sockaddr_storage,
        /// The flow whose counters count the packet once sent.
        flow: Slot,
        /// UDP payload bytes (what the flow's byte counters count).
        payload_len: usize,
    },
    /// Sent through the fallback socket; the frame is free again.
    Sent,
    Drop(Reason),
}

#[derive(Clone, Copy)]
enum Reason {
    Malformed,
    Ttl,
    NoFlow,
    NoEgress,
    AuthFailed,
    Replay,
    TransformMalformed,
    TransformOther,
}

impl Reason {
    fn counter(self, c: &WorkerCounters) -> &std::sync::atomic::AtomicU64 {
        match self {
            Reason::Malformed => &c.dropped_malformed,
            Reason::Ttl => &c.dropped_ttl,
            Reason::NoFlow => &c.dropped_no_flow,
            Reason::NoEgress => &c.dropped_no_egress,
            Reason::AuthFailed => &c.transform_auth_failed,
            Reason::Replay => &c.transform_replay,
            Reason::TransformMalformed => &c.transform_malformed,
            Reason::TransformOther => &c.transform_other,
        }
    }
}

pub(crate) struct Worker {
    // Field order is drop order: flows (fallback sockets), sockets (rings, fds), then the
    // UMEM the sockets were registered with.
    flows: FlowMap,
    socks: Vec<XskSocket>,
    umem: Umem,
    free: Vec<u64>,
    pending: Vec<Vec<libc::xdp_desc>>,
    pollfds: Vec<libc::pollfd>,
    commands: Receiver<Command>,
    wake: Arc<EventFd>,
    counters: Arc<WorkerCounters>,
    settings: WorkerSettings,
    /// Flows with a [`Transform::Stream`]: their timers run from the loop.
    streams: Vec<FlowKey>,
    /// Where stream transforms write the packets they give out.
    scratch: Box<[u8; SCRATCH]>,
    /// Packets of the current batch for the kernel's UDP stack.
    kernel_q: Box<KernelQueue>,
    /// A raw IPv4 socket (IPPROTO_RAW: send only, headers included) through which IPv4 packets
    /// of `Hop::Kernel` flows leave, all flows in one `sendmmsg`; without CAP_NET_RAW, each
    /// flow's fallback socket is used instead.
    raw4: Option<std::os::fd::OwnedFd>,
}

/// `sendmmsg` staging for the packets of one RX batch that leave through fallback sockets:
/// one system call per socket and batch instead of one `sendto` per packet.
struct KernelQueue {
    len: usize,
    fd: [libc::c_int; BATCH],
    frame: [u64; BATCH],
    /// Offset and length in the frame of the bytes to send.
    at: [usize; BATCH],
    sizes: [usize; BATCH],
    flow: [Slot; BATCH],
    bytes: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    iov: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
}

// SAFETY: the iovecs and message headers hold pointers only while `send_kernel` runs (it makes
// them from the frames' offsets, on the worker's thread); the queue moves to that thread with
// the worker.
unsafe impl Send for KernelQueue {}

impl KernelQueue {
    fn new() -> Box<Self> {
        // SAFETY: every field is plain data for which all-zero bytes are valid (null pointers
        // are never dereferenced: `len` says which entries are set).
        unsafe { Box::<Self>::new_zeroed().assume_init() }
    }
}

/// Room for one UDP payload a stream transform gives out.
const SCRATCH: usize = 2048;

impl Worker {
    /// A worker over `socks`, all registered with `umem`; every frame starts free and the fill
    /// rings are filled right away, so the sockets can receive as soon as they are in the
    /// XSKMAP, before the thread runs.
    pub(crate) fn new(
        umem: Umem,
        socks: Vec<XskSocket>,
        commands: Receiver<Command>,
        wake: Arc<EventFd>,
        counters: Arc<WorkerCounters>,
        settings: WorkerSettings,
    ) -> Self {
        let free = (0..umem.frames())
            .rev()
            .map(|i| umem.frame_addr(i))
            .collect();
        let pending = socks.iter().map(|_| Vec::with_capacity(BATCH)).collect();
        let mut pollfds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        pollfds.push(libc::pollfd {
            fd: wake.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let mut w = Self {
            flows: FlowMap::default(),
            socks,
            umem,
            free,
            pending,
            pollfds,
            commands,
            wake,
            counters,
            settings,
            streams: Vec::new(),
            scratch: Box::new([0; SCRATCH]),
            kernel_q: KernelQueue::new(),
            raw4: raw_socket_v4(),
        };
        w.refill();
        w
    }

    /// The socket on `queue` of `iface`, for registering it in the XSKMAP.
    pub(crate) fn socket_fd(&self, iface: &str, queue: u32) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.socks
            .iter()
            .find(|s| s.iface() == iface && s.queue() == queue)
            .map(|s| s.fd())
    }

    pub(crate) fn run(mut self) {
        let start = now_ns();
        let (mut last_work, mut last_publish) = (start, start);
        let (mut window_start, mut window_busy, mut busy_total) = (start, 0u64, 0u64);
        loop {
            let t0 = now_ns();
            let Some(mut work) = self.apply_commands() else {
                break;
            };
            work += self.reclaim();
            self.refill();
            for s in 0..self.socks.len() {
                work += self.receive(s, t0);
            }
            work += self.run_timers(t0);
            let t1 = now_ns();
            if work > 0 {
                window_busy += t1 - t0;
                busy_total += t1 - t0;
                last_work = t1;
            }
            if t1 - last_publish >= PUBLISH_NS {
                last_publish = t1;
                let c = &self.counters;
                c.busy_ns
                    .store(busy_total, std::sync::atomic::Ordering::Relaxed);
                c.run_ns
                    .store(t1 - start, std::sync::atomic::Ordering::Relaxed);
                if t1 - window_start >= LOAD_WINDOW_NS {
                    let permille = window_busy * 1000 / (t1 - window_start);
                    c.load_permille
                        .store(permille, std::sync::atomic::Ordering::Relaxed);
                    (window_start, window_busy) = (t1, 0);
                    self.publish_kernel_stats();
                }
            }
            if work == 0 && t1 - last_work > self.settings.spin_ns {
                self.sleep();
                last_work = now_ns();
            }
        }
        self.publish_kernel_stats();
    }

    /// Applies pending commands; None on shutdown. Returns how many were applied.
    fn apply_commands(&mut self) -> Option<usize> {
        for n in 0..COMMANDS_PER_ITERATION {
            match self.commands.try_recv() {
                Ok(Command::Add(key, flow)) => {
                    self.add(key, *flow);
                    self.publish_flow_count();
                }
                Ok(Command::Remove(key, reply)) => {
                    let flow = self.flows.remove(&key);
                    if let Some(reply) = reply {
                        let _ =
                            reply.send(flow.map(|f| f.transform.handover()).unwrap_or_default());
                    }
                    self.streams.retain(|k| *k != key);
                    self.publish_flow_count();
                }
                Ok(Command::Barrier(done)) => {
                    let _ = done.send(());
                }
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => return Some(n),
            }
        }
        Some(COMMANDS_PER_ITERATION)
    }

    fn publish_flow_count(&self) {
        self.counters.flows.store(
            self.flows.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn add(&mut self, key: FlowKey, flow: WorkerFlow) {
        let hop = match flow.next_hop {
            NextHop::Ingress => Hop::Ingress,
            NextHop::Ethernet {
                ifindex,
                src_mac,
                dst_mac,
            } => match self.socks.iter().position(|s| s.ifindex() == ifindex) {
                Some(sock) => Hop::Xsk {
                    sock,
                    src_mac,
                    dst_mac,
                },
                None => Hop::Kernel,
            },
            NextHop::Kernel => Hop::Kernel,
            NextHop::Fib => Hop::Fib {
                slot: flow.route_slot,
            },
        };
        let fallback = flow.fallback.map(|sock| {
            let (addr, addr_len) = sockaddr(flow.new_dst);
            Fallback {
                sock,
                addr,
                addr_len,
            }
        });
        self.streams.retain(|k| *k != key);
        if matches!(flow.transform, Transform::Stream(_)) {
            self.streams.push(key);
        }
        self.flows.insert(
            key,
            FlowCtx {
                src: WireAddr::new(flow.new_src),
                dst: WireAddr::new(flow.new_dst),
                hop,
                fallback,
                transform: flow.transform,
                stats: flow.stats,
            },
        );
    }

    /// Frames the kernel finished transmitting go back to the free stack.
    fn reclaim(&mut self) -> usize {
        let mut total = 0;
        for sock in &mut self.socks {
            let n = sock.comp.available(sock.comp.size());
            for i in 0..n {
                self.free.push(self.umem.chunk(sock.comp.read(i)));
            }
            if n > 0 {
                sock.comp.release(n);
            }
            total += n as usize;
        }
        total
    }

    /// Tops up every fill ring from the free stack.
    fn refill(&mut self) {
        for sock in &mut self.socks {
            let n = sock.fill.free(sock.fill.size()).min(self.free.len() as u32);
            if n == 0 {
                continue;
            }
            for i in 0..n {
                let addr = self.free.pop().expect("counted above");
                sock.fill.write(i, addr);
            }
            sock.fill.submit(n);
            sock.kick_fill_if_needed();
        }
    }

    /// One RX batch of socket `s`; returns the frames taken.
    fn receive(&mut self, s: usize, now: u64) -> usize {
        let n = self.socks[s].rx.available(BATCH as u32);
        if n == 0 {
            return 0;
        }
        let c = &*self.counters;
        let mut rx_bytes = 0u64;
        for i in 0..n {
            let desc = self.socks[s].rx.read(i);
            rx_bytes += desc.len as u64;
            let routes = Routes {
                meta: take_route(&mut self.umem, desc.addr, &self.socks),
                cache: self
                    .settings
                    .routes
                    .as_deref()
                    .map(|c| (c, &self.socks[..])),
            };
            let outcome = match self.umem.tail_mut(desc.addr) {
                Some(frame) if desc.len as usize <= frame.len() => process(
                    frame,
                    desc.len as usize,
                    s,
                    routes,
                    &mut self.flows,
                    c,
                    now,
                    &mut self.scratch[..],
                    self.raw4.as_ref().map(|f| f.as_raw_fd()),
                ),
                _ => Outcome::Drop(Reason::Malformed),
            };
            match outcome {
                Outcome::Tx(d, len) => self.pending[d].push(libc::xdp_desc {
                    addr: desc.addr,
                    len,
                    options: 0,
                }),
                Outcome::Sent => self.free.push(self.umem.chunk(desc.addr)),
                Outcome::Kernel {
                    fd,
                    at,
                    len,
                    addr,
                    flow,
                    payload_len,
                } => {
                    let q = &mut *self.kernel_q;
                    let k = q.len;
                    q.fd[k] = fd;
                    q.frame[k] = desc.addr;
                    q.at[k] = at;
                    q.sizes[k] = len;
                    q.flow[k] = flow;
                    q.bytes[k] = payload_len;
                    q.addrs[k] = addr;
                    q.len += 1;
                }
                Outcome::Drop(reason) => {
                    bump(reason.counter(c), 1);
                    self.free.push(self.umem.chunk(desc.addr));
                }
            }
        }
        self.socks[s].rx.release(n);
        bump(&c.rx_packets, n as u64);
        bump(&c.rx_bytes, rx_bytes);
        if self.kernel_q.len > 0 {
            self.send_kernel();
        }
        for d in 0..self.socks.len() {
            if !self.pending[d].is_empty() {
                self.transmit(d);
            }
        }
        n as usize
    }

    /// Sends the batch's fallback-socket packets, one `sendmmsg` per run of the same socket, and
    /// frees their frames. A full socket buffer drops that packet (counted), never blocks.
    fn send_kernel(&mut self) {
        let c = &*self.counters;
        let q = &mut *self.kernel_q;
        let n = q.len;
        for k in 0..n {
            // The frame held at + len bytes when the outcome was made; should it not now, the
            // message goes to no socket and is counted as a send error (never a panic).
            match self
                .umem
                .tail_mut(q.frame[k])
                .and_then(|f| f.get_mut(q.at[k]..q.at[k] + q.sizes[k]))
            {
                Some(bytes) => {
                    q.iov[k] = libc::iovec {
                        iov_base: bytes.as_mut_ptr().cast(),
                        iov_len: bytes.len(),
                    }
                }
                None => {
                    q.fd[k] = -1;
                    q.iov[k] = libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    };
                }
            }
            let h = &mut q.hdrs[k].msg_hdr;
            h.msg_iov = &mut q.iov[k];
            h.msg_iovlen = 1;
            h.msg_name = (&mut q.addrs[k] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = sockaddr_len(&q.addrs[k]);
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
        }
        let flows = &self.flows;
        let (sent, failed) = crate::mmsg::send_runs(&mut q.hdrs[..n], &q.fd[..n], |k| {
            // Flows are only removed by commands, between batches.
            if let Some(f) = flows.get(q.flow[k]) {
                bump(&f.stats.forwarded, 1);
                bump(&f.stats.forwarded_bytes, q.bytes[k] as u64);
            }
        });
        bump(&c.tx_socket_packets, sent);
        bump(&c.dropped_socket_error, failed);
        for k in 0..n {
            self.free.push(self.umem.chunk(q.frame[k]));
        }
        q.len = 0;
    }

    /// Moves socket `d`'s staged frames to its TX ring and kicks the kernel.
    fn transmit(&mut self, d: usize) {
        let sock = &mut self.socks[d];
        let staged = &mut self.pending[d];
        let room = sock.tx.free(staged.len() as u32) as usize;
        let n = staged.len().min(room);
        let mut bytes = 0u64;
        for (i, desc) in staged[..n].iter().enumerate() {
            sock.tx.write(i as u32, *desc);
            bytes += desc.len as u64;
        }
        sock.tx.submit(n as u32);
        let c = &*self.counters;
        for desc in &staged[n..] {
            self.free.push(self.umem.chunk(desc.addr));
        }
        bump(&c.dropped_tx_ring_full, (staged.len() - n) as u64);
        bump(&c.tx_packets, n as u64);
        bump(&c.tx_bytes, bytes);
        staged.clear();
        sock.kick_tx();
    }

    /// Runs the due timers of stream transforms and sends what they give out; returns how many
    /// ran.
    fn run_timers(&mut self, now: u64) -> usize {
        let mut ran = 0;
        for key in &self.streams {
            let Some(flow) = self.flows.get_mut_by_key(key) else {
                continue;
            };
            let Transform::Stream(st) = &mut flow.transform else {
                continue;
            };
            if st.poll_timeout().is_some_and(|t| t <= now) {
                st.handle_timeout(now);
                if let Some(fb) = &flow.fallback {
                    drain_stream(
                        &mut **st,
                        fb,
                        &mut self.scratch[..],
                        &flow.stats,
                        &self.counters,
                    );
                }
                ran += 1;
            }
        }
        ran
    }

    /// Milliseconds until the earliest stream-transform timer, rounded up.
    fn next_timer_ms(&self) -> Option<i32> {
        let now = now_ns();
        self.streams
            .iter()
            .filter_map(|k| match &self.flows.get_by_key(k)?.transform {
                Transform::Stream(st) => st.poll_timeout(),
                _ => None,
            })
            .min()
            .map(|t| {
                t.saturating_sub(now)
                    .div_ceil(1_000_000)
                    .min(i32::MAX as u64) as i32
            })
    }

    fn sleep(&mut self) {
        let outstanding = self.socks.iter_mut().any(|s| s.tx.outstanding() > 0);
        let mut timeout = if outstanding {
            1
        } else {
            self.settings.idle_poll_ms
        };
        if let Some(ms) = self.next_timer_ms() {
            timeout = if timeout < 0 { ms } else { timeout.min(ms) };
        }
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        bump(&self.counters.sleeps, 1);
        // SAFETY: pollfds is a valid array of pollfd for its length.
        unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                timeout,
            )
        };
        if outstanding {
            for s in &mut self.socks {
                s.kick_tx();
            }
        }
        self.wake.drain();
    }

    fn publish_kernel_stats(&self) {
        let mut sum = crate::afxdp::XskStats::default();
        for s in &self.socks {
            if let Ok(k) = s.statistics() {
                sum.rx_dropped += k.rx_dropped;
                sum.rx_ring_full += k.rx_ring_full;
                sum.rx_fill_ring_empty += k.rx_fill_ring_empty;
                sum.rx_invalid_descs += k.rx_invalid_descs;
                sum.tx_invalid_descs += k.tx_invalid_descs;
            }
        }
        let c = &self.counters;
        use std::sync::atomic::Ordering::Relaxed;
        c.kernel_rx_dropped.store(sum.rx_dropped, Relaxed);
        c.kernel_rx_ring_full.store(sum.rx_ring_full, Relaxed);
        c.kernel_fill_ring_empty
            .store(sum.rx_fill_ring_empty, Relaxed);
        c.kernel_invalid_descs
            .store(sum.rx_invalid_descs + sum.tx_invalid_descs, Relaxed);
    }
}

/// The per-frame work: parse, look up, transform, rewrite, choose the way out.
/// `frame` runs from the packet's first byte to the end of its UMEM frame; `len` bytes are the
/// received packet.
#[inline]
#[allow(clippy::too_many_arguments)]
fn process(
    frame: &mut [u8],
    len: usize,
    ingress: usize,
    routes: Routes<'_>,
    flows: &mut FlowMap,
    c: &WorkerCounters,
    now: u64,
    scratch: &mut [u8],
    raw4: Option<libc::c_int>,
) -> Outcome {
    let p = match packet::parse(&frame[..len]) {
        Ok(p) => p,
        Err(Bad::Malformed) => return Outcome::Drop(Reason::Malformed),
        Err(Bad::Ttl) => return Outcome::Drop(Reason::Ttl),
    };
    let key = packet::flow_key(frame, &p);
    let Some((slot, flow)) = flows.find_mut(&key) else {
        return Outcome::Drop(Reason::NoFlow);
    };
    let st = &*flow.stats;
    bump(&st.packets, 1);
    bump(&st.bytes, p.payload_len as u64);
    st.last_seen_ns
        .store(now, std::sync::atomic::Ordering::Relaxed);
    let at = p.payload();
    if let Transform::Stream(stream) = &mut flow.transform {
        // Its packets leave through the kernel: a transcoder's output is not the frame it got.
        let Some(fb) = &flow.fallback else {
            return Outcome::Drop(Reason::NoEgress);
        };
        if let Err(e) = stream.push(&frame[at..at + p.payload_len], now) {
            bump(&flow.stats.transform_errors, 1);
            bump(&c.transform_errors, 1);
            return Outcome::Drop(reason_of(e));
        }
        drain_stream(&mut **stream, fb, scratch, &flow.stats, c);
        return Outcome::Sent;
    }
    let new_len = match flow.transform.apply(&mut frame[at..], p.payload_len, now) {
        Ok(n) => n,
        Err(e) => {
            bump(&st.transform_errors, 1);
            bump(&c.transform_errors, 1);
            return Outcome::Drop(reason_of(e));
        }
    };
    // The IP packet's length once rewritten, for the route's MTU.
    let l3_len = p.payload() - packet::ETH_LEN + new_len;
    let route = match flow.hop {
        Hop::Fib { slot } => routes.for_slot(slot),
        _ => None,
    };
    let (sock, macs) = match (&flow.hop, route) {
        (Hop::Ingress, _) => (ingress, None),
        (
            Hop::Xsk {
                sock,
                src_mac,
                dst_mac,
            },
            _,
        ) => (*sock, Some((*src_mac, *dst_mac))),
        (Hop::Fib { .. }, Some(r)) if l3_len <= r.mtu => (r.sock, Some((r.src_mac, r.dst_mac))),
        (Hop::Kernel | Hop::Fib { .. }, route) => {
            let Some(fb) = &flow.fallback else {
                return Outcome::Drop(Reason::NoEgress);
            };
            // Too big for the route: the flow's UDP socket, which fragments as the userspace
            // relay's does (the raw socket would keep the sender's DF bit and drop it).
            let too_big = matches!(flow.hop, Hop::Fib { .. }) && route.is_some();
            if let (Some(fd), false, false) = (raw4, p.v6, too_big) {
                // The whole IPv4 packet through the worker's one raw socket: the batch leaves in
                // one sendmmsg whatever the number of flows, and the kernel still routes it.
                let end = packet::rewrite(frame, &p, new_len, &flow.src, &flow.dst);
                return Outcome::Kernel {
                    fd,
                    at: packet::ETH_LEN,
                    len: end - packet::ETH_LEN,
                    addr: fb.addr,
                    flow: slot,
                    payload_len: new_len,
                };
            }
            return Outcome::Kernel {
                fd: fb.sock.as_raw_fd(),
                at,
                len: new_len,
                addr: fb.addr,
                flow: slot,
                payload_len: new_len,
            };
        }
    };
    let end = packet::rewrite(frame, &p, new_len, &flow.src, &flow.dst);
    match macs {
        None => packet::swap_macs(frame),
        Some((src, dst)) => packet::set_macs(frame, &src, &dst),
    }
    bump(&st.forwarded, 1);
    bump(&st.forwarded_bytes, new_len as u64);
    Outcome::Tx(sock, end as u32)
}

fn reason_of(e: TransformError) -> Reason {
    match e {
        TransformError::AuthFailed => Reason::AuthFailed,
        TransformError::Replay => Reason::Replay,
        TransformError::Malformed => Reason::TransformMalformed,
        _ => Reason::TransformOther,
    }
}

/// Sends everything `st` has ready through the flow's fallback socket.
fn drain_stream(
    st: &mut dyn StreamTransform,
    fb: &Fallback,
    scratch: &mut [u8],
    fs: &FlowStats,
    c: &WorkerCounters,
) {
    while let Some(len) = st.pull(scratch) {
        // SAFETY: the scratch slice and the prepared address are valid for the call.
        let rc = unsafe {
            libc::sendto(
                fb.sock.as_raw_fd(),
                scratch.as_ptr().cast(),
                len,
                libc::MSG_DONTWAIT,
                (&fb.addr as *const libc::sockaddr_storage).cast(),
                fb.addr_len,
            )
        };
        if rc < 0 {
            bump(&c.dropped_socket_error, 1);
            continue;
        }
        bump(&c.tx_socket_packets, 1);
        bump(&fs.forwarded, 1);
        bump(&fs.forwarded_bytes, len as u64);
    }
}

/// The worker's raw IPv4 send socket, if this process may have one.
fn raw_socket_v4() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2) call; the descriptor is owned by the returned OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        tracing::info!(
            error = %std::io::Error::last_os_error(),
            "no raw socket for the worker; packets leave through each flow's UDP socket"
        );
        return None;
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::SrtpKeys;
    use crate::srtp::SrtpProfile;
    use crate::worker::srtp_transform::SrtpTransform;
    use std::net::SocketAddr;

    const LOCAL: &str = "10.0.1.1:30000";
    const PEER: &str = "10.0.1.2:4000";
    const NEW_SRC: &str = "10.0.2.1:30002";
    const NEW_DST: &str = "10.0.2.2:5000";

    /// Ethernet + IPv4 + UDP + a 172-byte RTP packet from PEER to LOCAL.
    fn rtp_frame() -> Vec<u8> {
        let (src, dst): (SocketAddr, SocketAddr) = (PEER.parse().unwrap(), LOCAL.parse().unwrap());
        let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
            unreachable!()
        };
        let payload = 172usize;
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let tot = (20 + 8 + payload) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f[16..18].copy_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&src.ip().octets());
        f.extend_from_slice(&dst.ip().octets());
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&(8 + payload as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44]);
        f.extend((0..payload - 12).map(|i| i as u8));
        f
    }

    fn srtp_flow(hop: Hop) -> FlowMap {
        let keys = SrtpKeys {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            master: (0..30).collect(),
        };
        let mut flows = FlowMap::default();
        flows.insert(
            FlowKey::new(LOCAL.parse().unwrap()),
            FlowCtx {
                src: WireAddr::new(NEW_SRC.parse().unwrap()),
                dst: WireAddr::new(NEW_DST.parse().unwrap()),
                hop,
                fallback: None,
                transform: Transform::custom(SrtpTransform::new(None, Some(&keys)).unwrap()),
                stats: Arc::default(),
            },
        );
        flows
    }

    /// The per-frame path of a routed SRTP-protect flow (parse, lookup, protect, rewrite, MACs
    /// from the route) allocates nothing once the flow is warm.
    #[test]
    fn a_frame_is_protected_and_routed_without_allocating() {
        let template = rtp_frame();
        let len = template.len();
        let mut flows = srtp_flow(Hop::Fib { slot: None });
        let route = Route {
            sock: 1,
            src_mac: [2, 0, 0, 0, 0, 0xaa],
            dst_mac: [2, 0, 0, 0, 0, 0xbb],
            mtu: 1500,
        };
        let c = WorkerCounters::default();
        let mut frame = vec![0u8; 2048];
        let mut scratch = vec![0u8; SCRATCH];
        let mut before = 0;
        for seq in 0..1100u16 {
            if seq == 100 {
                before = crate::test_alloc::allocations();
            }
            frame[..len].copy_from_slice(&template);
            frame[44..46].copy_from_slice(&seq.to_be_bytes());
            let out = process(
                &mut frame,
                len,
                0,
                Routes::given(Some(route)),
                &mut flows,
                &c,
                1_000_000 + seq as u64,
                &mut scratch,
                None,
            );
            assert!(
                matches!(out, Outcome::Tx(1, n) if n as usize == len + 10),
                "packet {seq} not sent on the route's socket with a 10-byte tag"
            );
        }
        let allocated = crate::test_alloc::allocations() - before;
        assert_eq!(allocated, 0, "allocations for 1,000 packets");
        // What left: the route's MACs, the new addresses, a consistent packet.
        assert_eq!(&frame[..6], &route.dst_mac);
        assert_eq!(&frame[6..12], &route.src_mac);
        let p = packet::parse(&frame[..len + 10]).unwrap();
        assert_eq!(p.payload_len, 172 + 10);
        assert_eq!(
            packet::source(&frame, &p),
            NEW_SRC.parse::<SocketAddr>().unwrap()
        );
    }

    /// Which socket the kernel path uses: IPv4 goes through the worker's raw socket, except a
    /// `Fib` packet too big for its route, which goes through the flow's UDP socket (the kernel
    /// fragments it there). A route in front of a `Kernel` flow's frame changes nothing.
    #[test]
    fn the_kernel_path_uses_the_udp_socket_only_for_packets_too_big() {
        const RAW: libc::c_int = 1234;
        let template = rtp_frame();
        let len = template.len();
        let c = WorkerCounters::default();
        let mut scratch = vec![0u8; SCRATCH];
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let route = |mtu| Route {
            sock: 1,
            src_mac: [0; 6],
            dst_mac: [0; 6],
            mtu,
        };
        // (hop, route, through the raw socket)
        for (hop, route, raw) in [
            (Hop::Fib { slot: None }, None, true),
            (Hop::Fib { slot: None }, Some(route(100)), false),
            (Hop::Kernel, None, true),
            (Hop::Kernel, Some(route(100)), true),
            (Hop::Kernel, Some(route(1500)), true),
        ] {
            let mut flows = srtp_flow(hop);
            let (addr, addr_len) = sockaddr(NEW_DST.parse().unwrap());
            let sock = udp.try_clone().unwrap();
            let fd = if raw { RAW } else { sock.as_raw_fd() };
            flows.values_mut().next().unwrap().fallback = Some(Fallback {
                sock,
                addr,
                addr_len,
            });
            let mut frame = vec![0u8; 2048];
            frame[..len].copy_from_slice(&template);
            let out = process(
                &mut frame,
                len,
                0,
                Routes::given(route),
                &mut flows,
                &c,
                1,
                &mut scratch,
                Some(RAW),
            );
            match out {
                Outcome::Kernel { fd: got, .. } => assert_eq!(got, fd, "{route:?}"),
                _ => panic!("{route:?}: not the kernel path"),
            }
        }
    }

    /// `Fib` without a route, or with one whose MTU the grown packet exceeds, goes to the
    /// kernel: here there is no fallback socket, so the frame is dropped as having no egress.
    #[test]
    fn a_frame_without_a_usable_route_goes_to_the_kernel() {
        let template = rtp_frame();
        let len = template.len();
        let c = WorkerCounters::default();
        let mut scratch = vec![0u8; SCRATCH];
        let small = Route {
            sock: 1,
            src_mac: [0; 6],
            dst_mac: [0; 6],
            mtu: 20 + 8 + 172 + 9,
        };
        let fits = Route {
            mtu: small.mtu + 1,
            ..small
        };
        for (route, sent) in [(None, false), (Some(small), false), (Some(fits), true)] {
            let mut flows = srtp_flow(Hop::Fib { slot: None });
            let mut frame = vec![0u8; 2048];
            frame[..len].copy_from_slice(&template);
            let out = process(
                &mut frame,
                len,
                0,
                Routes::given(route),
                &mut flows,
                &c,
                1,
                &mut scratch,
                None,
            );
            if sent {
                assert!(matches!(out, Outcome::Tx(1, _)), "{route:?}");
            } else {
                assert!(matches!(out, Outcome::Drop(Reason::NoEgress)), "{route:?}");
            }
        }
    }

    fn meta_bytes(m: &XskMeta) -> [u8; std::mem::size_of::<XskMeta>()] {
        // SAFETY: XskMeta is repr(C) plain integers without padding (layout test).
        unsafe { std::mem::transmute_copy(m) }
    }

    #[test]
    fn route_metadata_is_read_once_and_only_with_its_magic() {
        let mut umem = Umem::new(4, 2048).unwrap();
        let meta = XskMeta {
            magic: XSK_META_MAGIC,
            ifindex: 7,
            smac: [2, 0, 0, 0, 0, 1],
            dmac: [2, 0, 0, 0, 0, 2],
            mtu: 1500,
            pad: 0,
        };
        // Frame 1, packet at headroom 256 (where copy mode puts it).
        let addr = umem.frame_addr(1) + 256;
        let n = std::mem::size_of::<XskMeta>();
        umem.head_mut(addr, n)
            .unwrap()
            .copy_from_slice(&meta_bytes(&meta));
        assert_eq!(take_meta(&mut umem, addr), Some(meta));
        // Cleared: a later frame in the same buffer without metadata is not misread.
        assert_eq!(take_meta(&mut umem, addr), None);

        let mut other = meta;
        other.magic ^= 1;
        umem.head_mut(addr, n)
            .unwrap()
            .copy_from_slice(&meta_bytes(&other));
        assert_eq!(take_meta(&mut umem, addr), None, "no magic, no route");

        // No room before the packet inside its frame: nothing is read from the frame before.
        let start = umem.frame_addr(2);
        assert!(umem.head_mut(start, n).is_none());
        assert_eq!(take_meta(&mut umem, start + 8), None);
        assert_eq!(take_meta(&mut umem, 1 << 40), None, "outside the UMEM");
    }
}
