//! The session layer's view of the in-kernel fast path: flows keyed by relay address, each with a
//! counter slot. The real implementation is the XDP program ([`XdpPath`]); tests use a fake.
//!
//! A stream is "kernelized" once both of its sides have latched and nothing changed for a moment:
//! from then on the XDP program rewrites and forwards its packets and the userspace socket sees
//! none. Any signalling event on the call (re-INVITE, hold) takes its streams back to userspace,
//! where latching runs again; they return to the kernel once settled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use sluice_relay::handover::{EndpointState, FlowHandover, StreamHandover};
use sluice_relay::srtp::SrtpKeys;
use sluice_relay::stats::EndpointCounters;
use sluice_relay::worker::{
    FlowStats, NextHop, SrtpTransform, TranscodeTransform, Transform, WorkerFlow, WorkerPool,
    WorkerStats,
};
use sluice_relay::xdp::{FlowCounters, FlowKey, FlowValue, MAX_FLOWS, XdpPath};

/// Kernel-path errors are logged and the stream stays in userspace, so a message is enough.
pub type KResult<T> = Result<T, String>;

pub trait KernelPath: Send {
    fn install(&mut self, local: SocketAddr, value: FlowValue) -> KResult<()>;
    fn remove(&mut self, local: SocketAddr) -> KResult<()>;
    /// Summed over CPUs.
    fn counters(&self, flow_id: u32) -> KResult<FlowCounters>;
    fn reset_counters(&mut self, flow_id: u32) -> KResult<()>;
    /// Entries in the flow map (leak checks).
    fn flow_count(&self) -> KResult<usize>;
    /// Where it runs, for logs and Statistics.
    fn describe(&self) -> String;
    /// Removes every flow, stops the workers and detaches.
    fn shutdown(&mut self) {}

    /// Drops, in the kernel, datagrams to `low..=high` on the relay's `addrs` that hit no flow
    /// and that no socket would receive (scans of free relay ports). Without a kernel guard
    /// the stack drops them (no socket), at its own cost.
    fn guard_ports(&mut self, addrs: &[IpAddr], low: u16, high: u16) -> KResult<()> {
        let _ = (addrs, low, high);
        Ok(())
    }
    /// Datagrams the kernel guard dropped since it started (`unknown_port`).
    fn unknown_port_drops(&self) -> u64 {
        0
    }

    /// Whether AF_XDP workers run, so that streams needing work (SRTP termination) can be
    /// handed to them as WORKER flows.
    fn has_workers(&self) -> bool {
        false
    }
    /// Installs the worker context for packets arriving at `local` (before the XDP entry that
    /// sends them there).
    fn add_worker_flow(&mut self, local: SocketAddr, spec: WorkerFlowSpec) -> KResult<()> {
        let _ = spec;
        Err(format!("no AF_XDP workers to take the flow for {local}"))
    }
    /// Removes the worker context for `local` (after its XDP entry is gone), and returns where
    /// its per-stream state stood: the engine continues from it.
    fn remove_worker_flow(&mut self, local: SocketAddr) -> KResult<FlowHandover> {
        Err(format!("no AF_XDP workers hold a flow for {local}"))
    }
    /// The worker-side counters of the flow for `local`, summed over workers.
    fn worker_flow_counters(&self, local: SocketAddr) -> KResult<WorkerFlowCounters> {
        Err(format!("no AF_XDP workers hold a flow for {local}"))
    }
    /// Per-worker counters and load, for Statistics.
    fn worker_stats(&self) -> Vec<WorkerStats> {
        Vec::new()
    }
    /// The kernel features probed at attach, for Statistics.
    fn kernel_features(&self) -> Vec<FeatureReport> {
        Vec::new()
    }
}

/// One probed kernel feature and what sluice makes of it (Statistics' `kernel_features`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureReport {
    pub name: &'static str,
    pub available: bool,
    pub used: bool,
    /// What sluice does without it; empty when used.
    pub without: &'static str,
}

/// What a WORKER flow does, in a form from which each worker gets its own context: packets
/// arriving at the flow's relay address are unprotected with `rx` (if set), protected with
/// `tx` (if set), and sent from `new_src` to `new_dst`: from the worker's TX ring where the XDP
/// program's route lookup gave a next hop (`NextHop::Fib`), else through `fallback`, a socket
/// bound to `new_src` (the kernel routes them).
pub struct WorkerFlowSpec {
    /// The flow id of its XDP entry: where the program caches the route for the worker when
    /// the kernel gives XDP no metadata.
    pub flow_id: u32,
    pub new_src: SocketAddr,
    pub new_dst: SocketAddr,
    pub rx: Option<SrtpKeys>,
    pub tx: Option<SrtpKeys>,
    /// The flow serves a separate RTCP port.
    pub rtcp_port: bool,
    pub fallback: Option<UdpSocket>,
    /// The sending leg's counters (SRTP auth failures and replays are counted there).
    pub counters: Option<Arc<EndpointCounters>>,
    /// The sending leg's state, where a transcoding worker publishes the loss it reports.
    pub state: Option<Arc<EndpointState>>,
    /// Where the sending leg's streams stood when the engine handed them over (SRTP of what it
    /// sends, this direction's transcoder sequence): the worker continues from there.
    pub handover: StreamHandover,
    /// Transcoding of the flow's direction (after `rx`, before `tx`). On a separate RTCP port's
    /// flow it marks the stream as transcoded: its reports describe sources sluice replaced.
    pub transcode: Option<sluice_relay::transcode::DirectionPlan>,
    /// The other leg's state: the loss it reports sets this direction's Opus FEC.
    pub peer_state: Option<Arc<EndpointState>>,
    /// Where the other leg's streams stood when the engine handed them over (SRTP of what is
    /// protected towards it).
    pub peer_handover: StreamHandover,
    /// SSRC of the stream sluice sends to this flow's sender (its RTCP reports on it).
    pub report_ssrc: Option<u32>,
}

impl std::fmt::Debug for WorkerFlowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SrtpKeys redacts the keys.
        f.debug_struct("WorkerFlowSpec")
            .field("flow_id", &self.flow_id)
            .field("new_src", &self.new_src)
            .field("new_dst", &self.new_dst)
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("rtcp_port", &self.rtcp_port)
            .field("fallback", &self.fallback.is_some())
            .field("transcode", &self.transcode)
            .finish()
    }
}

/// A WORKER flow's counters as the workers see them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerFlowCounters {
    /// Received by the workers (before the transform), payload bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Sent on after the transform.
    pub forwarded: u64,
    pub transform_errors: u64,
    /// `clock::now_ns()` of the last packet; 0 = none.
    pub last_seen_ns: u64,
}

impl WorkerFlowCounters {
    fn add(&mut self, s: &FlowStats) {
        self.packets += s.packets.load(Relaxed);
        self.bytes += s.bytes.load(Relaxed);
        self.forwarded += s.forwarded.load(Relaxed);
        self.transform_errors += s.transform_errors.load(Relaxed);
        self.last_seen_ns = self.last_seen_ns.max(s.last_seen_ns.load(Relaxed));
    }
}

/// The XDP program, and the AF_XDP worker pool on the same interfaces when it started.
pub struct Xdp {
    path: Option<XdpPath>,
    pool: Option<WorkerPool>,
    /// Per WORKER flow: the counters of its context in each worker.
    worker_flows: HashMap<SocketAddr, Vec<Arc<FlowStats>>>,
}

impl Xdp {
    pub fn new(path: XdpPath, pool: Option<WorkerPool>) -> Self {
        Xdp {
            path: Some(path),
            pool,
            worker_flows: HashMap::new(),
        }
    }
}

impl KernelPath for Xdp {
    fn install(&mut self, local: SocketAddr, value: FlowValue) -> KResult<()> {
        self.path_mut()?
            .insert(FlowKey::new(local), value)
            .map_err(|e| e.to_string())
    }
    fn remove(&mut self, local: SocketAddr) -> KResult<()> {
        self.path_mut()?
            .remove(&FlowKey::new(local))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn counters(&self, flow_id: u32) -> KResult<FlowCounters> {
        self.path()?.counters(flow_id).map_err(|e| e.to_string())
    }
    fn reset_counters(&mut self, flow_id: u32) -> KResult<()> {
        self.path_mut()?
            .reset_counters(flow_id)
            .map_err(|e| e.to_string())
    }
    fn flow_count(&self) -> KResult<usize> {
        self.path()?.flow_count().map_err(|e| e.to_string())
    }
    fn guard_ports(&mut self, addrs: &[IpAddr], low: u16, high: u16) -> KResult<()> {
        self.path_mut()?
            .guard_ports(addrs, low, high)
            .map_err(|e| e.to_string())
    }
    fn unknown_port_drops(&self) -> u64 {
        // A failed read (detached) reports none rather than failing the whole Statistics.
        self.path()
            .ok()
            .and_then(|p| p.stats().ok())
            .map_or(0, |s| s.dropped_unknown_port)
    }
    fn describe(&self) -> String {
        // The workers are listed in Statistics on their own (`workers`).
        match &self.path {
            Some(p) => format!(
                "xdp-{} on {}",
                format!("{:?}", p.mode()).to_lowercase(),
                p.interfaces().join(",")
            ),
            None => "xdp (detached)".into(),
        }
    }
    fn kernel_features(&self) -> Vec<FeatureReport> {
        use sluice_relay::xdp::Feature;
        let Some(p) = &self.path else {
            return Vec::new();
        };
        p.kernel_features()
            .iter()
            .map(|(f, available)| {
                let used = available
                    && match f {
                        Feature::XdpMeta => p.metadata(),
                        Feature::MmapArray => p.route_cache().is_some(),
                        _ => true,
                    };
                FeatureReport {
                    name: f.name(),
                    available,
                    used,
                    without: if used { "" } else { f.without() },
                }
            })
            .collect()
    }
    fn shutdown(&mut self) {
        if let Some(mut p) = self.path.take() {
            match p.clear() {
                Ok(n) if n > 0 => tracing::info!(flows = n, "removed kernel flows"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot clear kernel flows"),
            }
            // The workers go before the program: no packet is redirected to a closed socket.
            self.worker_flows.clear();
            if let Some(pool) = self.pool.take() {
                match pool.stop() {
                    Ok(()) => tracing::info!("AF_XDP workers stopped"),
                    Err(e) => tracing::warn!(error = %e, "stopping the AF_XDP workers failed"),
                }
            }
            if let Err(e) = p.detach() {
                tracing::warn!(error = %e, "cannot detach the XDP program");
            }
        }
    }

    fn has_workers(&self) -> bool {
        self.pool.is_some() && self.path.is_some()
    }

    /// Every worker gets its own context for the flow (fresh SRTP contexts, its own clone of
    /// the fallback socket): RSS keeps one 5-tuple on one RX queue, so exactly one of them
    /// sees its packets, whichever queue that is.
    fn add_worker_flow(&mut self, local: SocketAddr, spec: WorkerFlowSpec) -> KResult<()> {
        let pool = self.pool.as_ref().ok_or("no AF_XDP workers are running")?;
        let key = FlowKey::new(local);
        let mut stats = Vec::with_capacity(pool.workers().len());
        let mut result = Ok(());
        for w in pool.workers() {
            let made = (|| -> KResult<WorkerFlow> {
                let transform = worker_transform(&spec)?;
                let mut flow = WorkerFlow::new(spec.new_src, spec.new_dst, NextHop::Fib)
                    .with_transform(transform)
                    .with_route_slot(spec.flow_id);
                if let Some(s) = &spec.fallback {
                    flow = flow.with_fallback(
                        s.try_clone()
                            .map_err(|e| format!("cannot clone the relay socket: {e}"))?,
                    );
                }
                Ok(flow)
            })();
            let added = made.and_then(|flow| {
                let st = flow.stats.clone();
                w.add_flow(key, flow).map_err(|e| e.to_string())?;
                // Applied before the XDP entry sends packets there.
                w.sync().map_err(|e| e.to_string())?;
                Ok(st)
            });
            match added {
                Ok(st) => stats.push(st),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_err() {
            for w in pool.workers() {
                let _ = w.remove_flow(key);
            }
            return result;
        }
        self.worker_flows.insert(local, stats);
        Ok(())
    }

    /// Every worker removes its context of the flow and hands back where it stood; one of
    /// them saw the flow's packets (RSS), the others stand where the engine left them, and the
    /// merge keeps what is furthest on.
    fn remove_worker_flow(&mut self, local: SocketAddr) -> KResult<FlowHandover> {
        let pool = self.pool.as_ref().ok_or("no AF_XDP workers are running")?;
        if self.worker_flows.remove(&local).is_none() {
            return Err(format!("no worker flow for {local}"));
        }
        let mut back = FlowHandover::default();
        for w in pool.workers() {
            match w.take_flow(FlowKey::new(local)) {
                Ok(h) => {
                    back.sender.merge(&h.sender);
                    back.receiver.merge(&h.receiver);
                }
                // A worker thread that is gone took its copy of the flow with it; what the
                // others hand back still counts.
                Err(e) => {
                    tracing::error!(%local, error = %e, "a worker did not hand its flow back")
                }
            }
        }
        Ok(back)
    }

    fn worker_flow_counters(&self, local: SocketAddr) -> KResult<WorkerFlowCounters> {
        let stats = self
            .worker_flows
            .get(&local)
            .ok_or_else(|| format!("no worker flow for {local}"))?;
        let mut c = WorkerFlowCounters::default();
        for s in stats {
            c.add(s);
        }
        Ok(c)
    }

    fn worker_stats(&self) -> Vec<WorkerStats> {
        self.pool
            .as_ref()
            .map(WorkerPool::stats)
            .unwrap_or_default()
    }
}

impl Xdp {
    fn path(&self) -> KResult<&XdpPath> {
        self.path
            .as_ref()
            .ok_or_else(|| "the XDP program is detached".into())
    }
    fn path_mut(&mut self) -> KResult<&mut XdpPath> {
        self.path
            .as_mut()
            .ok_or_else(|| "the XDP program is detached".into())
    }
}

/// Counter slots of the per-CPU array, handed out and taken back with the flows.
#[derive(Debug, Default)]
pub struct FlowIds {
    next: u32,
    free: Vec<u32>,
}

impl FlowIds {
    pub fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        (self.next < MAX_FLOWS).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    pub fn give_back(&mut self, id: u32) {
        self.free.push(id);
    }
    pub fn in_use(&self) -> usize {
        self.next as usize - self.free.len()
    }
}

/// A random first RTP sequence number (RFC 3550 5.1).
/// The worker's per-packet transform for a flow: the transcoder (with SRTP around it) or SRTP
/// termination, continuing from where the previous owner of the stream left it. Shared with the
/// session tests' simulated relay, so that they move streams the way the workers take them.
pub(crate) fn worker_transform(spec: &WorkerFlowSpec) -> KResult<Transform> {
    Ok(match &spec.transcode {
        Some(plan) => {
            // Continue the sequence the engine's transcoder sent.
            let seq = spec
                .handover
                .transcode_seq_start()
                .unwrap_or_else(random_seq);
            let mut t = TranscodeTransform::new(plan, seq, spec.rx.as_ref(), spec.tx.as_ref())
                .map_err(|e| format!("transcoder: {e}"))?;
            if let Some(c) = &spec.counters {
                t = t.with_counters(c.clone());
            }
            if let Some(s) = &spec.state {
                t = t.with_state(s.clone());
            }
            if let Some(p) = &spec.peer_state {
                t = t.with_feedback(p.clone(), spec.report_ssrc);
            }
            Transform::Stream(Box::new(t.resume(&spec.handover, &spec.peer_handover)))
        }
        None => {
            let mut t = SrtpTransform::new(spec.rx.as_ref(), spec.tx.as_ref())
                .map_err(|e| format!("SRTP keys: {e}"))?
                .rtcp_port(spec.rtcp_port);
            if let Some(c) = &spec.counters {
                t = t.with_counters(c.clone());
            }
            Transform::custom(t.resume(&spec.handover, &spec.peer_handover))
        }
    })
}

fn random_seq() -> u16 {
    rand::random()
}
