//! Offload to the kernel: streams whose latched sources have settled move into the XDP program
//! (plain forwarding) or, when their packets need work (SRTP termination, transcoding), to the
//! AF_XDP workers; any signalling event takes them back to userspace. Counters of removed flows
//! are kept so that reports and timeouts see every packet, whichever path carried it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use sluice_relay::engine::Command;
use sluice_relay::handover::StreamHandover;
use sluice_relay::latch::LatchConfig;
use sluice_relay::xdp::{FlowCounters, FlowValue};

use crate::kernel::{FlowIds, KernelPath, WorkerFlowSpec};
use crate::sdp::Direction;

use super::MediaPlane;
use super::model::{Call, KernelFlow, State, Stream};
use super::srtp::SideCrypto;

/// How long both latched sources must stay the same, with no signalling, before a stream moves
/// into the kernel.
const SETTLE_NS: u64 = 1_000_000_000;

impl State {
    pub(super) fn unkernelize_call(&mut self, call_id: &str) {
        if let Some(call) = self.calls.get_mut(call_id) {
            unkernelize(
                call,
                self.kernel.as_deref_mut(),
                &mut self.flow_ids,
                self.plane.as_mut(),
            );
        }
    }

    /// Installs XDP flows for streams whose latched sources have settled.
    pub(super) fn kernelize(&mut self, now: u64) {
        let Some(kernel) = self.kernel.as_deref_mut() else {
            return;
        };
        let workers = kernel.has_workers();
        for call in self.calls.values_mut() {
            if call.pending_offer.is_some() || now.saturating_sub(call.last_signal_ns) < SETTLE_NS {
                continue;
            }
            for s in call.streams.iter_mut() {
                if !s.kernel.is_empty() || s.kernel_failed || !kernel_eligible(s, workers) {
                    s.settle = None;
                    continue;
                }
                let (Some(l0), Some(l1)) = (
                    s.sides[0].state.latched_rtp(),
                    s.sides[1].state.latched_rtp(),
                ) else {
                    s.settle = None;
                    continue;
                };
                // Inside the latching window the SDP address may still take over from a source
                // latched by the sequence rule; the kernel would then hold the wrong one.
                let window_open =
                    now.saturating_sub(call.last_signal_ns) < LatchConfig::default().window_ns;
                if window_open && (Some(l0) != s.sides[0].sdp_rtp || Some(l1) != s.sides[1].sdp_rtp)
                {
                    s.settle = None;
                    continue;
                }
                match s.settle {
                    Some((seen, since)) if seen == [l0, l1] => {
                        if now.saturating_sub(since) >= SETTLE_NS {
                            install_stream(
                                s,
                                [l0, l1],
                                kernel,
                                &mut self.flow_ids,
                                self.plane.as_mut(),
                                &call.call_id,
                            );
                        }
                    }
                    _ => s.settle = Some(([l0, l1], now)),
                }
            }
        }
    }
}

/// The last packet or signalling event of a call; with `kernel`, kernel-forwarded packets count.
pub(super) fn last_activity(c: &Call, kernel: Option<&dyn KernelPath>) -> u64 {
    let mut last = c.last_signal_ns;
    for s in &c.streams {
        for (k, side) in s.sides.iter().enumerate() {
            last = last.max(side.counters.last_packet_ns.load(Relaxed));
            if kernel.is_some() && !s.kernel.is_empty() {
                last = last.max(kernel_counters(s, k, kernel).last_seen_ns);
            }
        }
    }
    last
}

/// Kernel counters of packets from side `k`'s endpoint: removed flows plus live ones.
pub(super) fn kernel_counters(
    s: &Stream,
    k: usize,
    kernel: Option<&dyn KernelPath>,
) -> FlowCounters {
    let mut c = s.sides[k].kernel_base;
    if let Some(kernel) = kernel {
        for f in s.kernel.iter().filter(|f| f.side == k) {
            match flow_counters(kernel, f) {
                Ok(live) => c.merge(&live),
                Err(e) => {
                    tracing::warn!(error = %e, flow_id = f.flow_id, "cannot read kernel counters")
                }
            }
        }
    }
    c
}

/// The XDP program forwards every datagram of a port alike, so only streams whose two sides treat
/// RTP and RTCP the same way, and that forward both ways, go into the kernel. Held streams stay in
/// userspace, where RTCP keeps flowing while RTP does not. Streams whose SRTP sluice terminates,
/// and transcoded ones, need work on every packet (never a plain FORWARD entry): they leave the kernel through AF_XDP to the workers when there are
/// some (`workers`), and otherwise stay on the userspace path.
fn kernel_eligible(s: &Stream, workers: bool) -> bool {
    !s.disabled
        && s.sides[0].local_ip.is_ipv4() == s.sides[1].local_ip.is_ipv4()
        && (!needs_worker(s) || (workers && s.sides.iter().all(|d| d.sockets.is_some())))
        && s.sides[0].rtcp_mux == s.sides[1].rtcp_mux
        && s.sides.iter().all(|d| d.direction == Direction::SendRecv)
}

/// Whether the stream's packets need work (SRTP termination on either side, transcoding).
fn needs_worker(s: &Stream) -> bool {
    s.transcode.is_some()
        || s.sides
            .iter()
            .any(|d| matches!(d.crypto, SideCrypto::Terminated { .. }))
}

fn install_stream(
    s: &mut Stream,
    latched: [SocketAddr; 2],
    kernel: &mut dyn KernelPath,
    flow_ids: &mut FlowIds,
    plane: &mut dyn MediaPlane,
    call_id: &str,
) {
    let worker = needs_worker(s);
    // A worker continues from where the engine's contexts stand, which the engine says as it
    // lets the stream go (it relays on for a grace period, until the XDP entries are in).
    let mut handovers = [StreamHandover::default(); 2];
    if worker {
        for (k, h) in handovers.iter_mut().enumerate() {
            match plane.hand_over(s.sides[k].endpoint) {
                Ok(got) => *h = got,
                Err(_) => {
                    tracing::warn!(%call_id, "the relay did not hand the stream over; it stays in userspace");
                    s.kernel_failed = true;
                    resume(s, plane, &handovers[..k]);
                    return;
                }
            }
        }
    }
    // (side, relay address the packets arrive at, their source, relay socket they leave from,
    // where they go, whether it is a separate RTCP port)
    let mut wanted = Vec::new();
    for k in 0..2 {
        let (me, other) = (&s.sides[k], &s.sides[1 - k]);
        let local = SocketAddr::new(me.local_ip, me.rtp_port);
        let new_src = SocketAddr::new(other.local_ip, other.rtp_port);
        wanted.push((k, local, latched[k], new_src, latched[1 - k], false));
        // Separate RTCP ports: kernelize RTCP too once both of its sources latched.
        if !me.rtcp_mux
            && let (Some(my_port), Some(other_port)) = (me.rtcp_port, other.rtcp_port)
            && let (Some(from), Some(to)) = (me.state.latched_rtcp(), other.state.latched_rtcp())
        {
            let local = SocketAddr::new(me.local_ip, my_port);
            let new_src = SocketAddr::new(other.local_ip, other_port);
            wanted.push((k, local, from, new_src, to, true));
        }
    }
    let mut installed = Vec::new();
    for (side, local, from, new_src, to, rtcp_port) in wanted {
        let Some(flow_id) = flow_ids.take() else {
            tracing::warn!(%call_id, "no free kernel flow slot; the stream stays in userspace");
            break;
        };
        let mut value = if worker {
            // The program routes it, so the worker can send from its TX ring.
            FlowValue::worker_routed(flow_id, new_src, to)
        } else {
            FlowValue::forward(flow_id, new_src, to)
        };
        if s.sides[side].latch.strict_source {
            value = value.strict_source(from);
        }
        // The worker's context goes in first, so the first redirected packet finds it.
        if worker {
            let added = worker_spec(s, side, flow_id, new_src, to, rtcp_port, &handovers)
                .and_then(|spec| kernel.add_worker_flow(local, spec));
            if let Err(e) = added {
                flow_ids.give_back(flow_id);
                tracing::warn!(%call_id, %local, error = %e, "cannot install worker flow; the stream stays in userspace");
                break;
            }
        }
        match kernel.install(local, value) {
            Ok(()) => installed.push(KernelFlow {
                side,
                local,
                flow_id,
                worker,
            }),
            Err(e) => {
                if worker {
                    let _ = kernel.remove_worker_flow(local);
                }
                flow_ids.give_back(flow_id);
                tracing::warn!(%call_id, %local, error = %e, "cannot install kernel flow; the stream stays in userspace");
                break;
            }
        }
    }
    let complete = installed.len() >= 2
        && installed.iter().any(|f| f.side == 0)
        && installed.iter().any(|f| f.side == 1);
    if !complete {
        for f in installed {
            let _ = kernel.remove(f.local);
            if f.worker {
                let _ = kernel.remove_worker_flow(f.local);
            }
            flow_ids.give_back(f.flow_id);
        }
        s.kernel_failed = true;
        if worker {
            // Back to relaying from where the engine stood; the margins cover what it relayed
            // meanwhile.
            resume(s, plane, &handovers);
        }
        return;
    }
    if worker {
        tracing::info!(%call_id, flows = installed.len(), transcoded = s.transcode.is_some(), "stream handed to the AF_XDP workers");
    } else {
        tracing::info!(%call_id, flows = installed.len(), "stream forwarded in the kernel");
    }
    s.kernel = installed;
}

/// Tells the engine to relay side k's stream again, from `handovers[k]`, for each given.
fn resume(s: &Stream, plane: &mut dyn MediaPlane, handovers: &[StreamHandover]) {
    for (k, h) in handovers.iter().enumerate() {
        let cmd = Command::Resume {
            id: s.sides[k].endpoint,
            handover: Box::new(*h),
        };
        if plane.send(cmd).is_err() {
            tracing::error!("relay thread gone; cannot resume a stream");
        }
    }
}

/// The worker context for packets from side `k`'s endpoint: what the engine does for that
/// direction (unprotect with k's key if sluice terminates k's SRTP, protect with the other side's
/// key if it terminates the other side's), sent from `new_src` to `to` through a clone of the
/// other side's relay socket.
fn worker_spec(
    s: &Stream,
    k: usize,
    flow_id: u32,
    new_src: SocketAddr,
    to: SocketAddr,
    rtcp_port: bool,
    handovers: &[StreamHandover; 2],
) -> Result<WorkerFlowSpec, String> {
    let (me, other) = (&s.sides[k], &s.sides[1 - k]);
    let rx = match &me.crypto {
        SideCrypto::Terminated { rx, .. } => Some(rx.to_engine()),
        _ => None,
    };
    let tx = match &other.crypto {
        SideCrypto::Terminated { tx, .. } => Some(tx.to_engine()),
        _ => None,
    };
    let socks = other
        .sockets
        .as_ref()
        .ok_or("no duplicate of the relay socket to send from")?;
    let sock = if rtcp_port {
        socks
            .rtcp
            .as_ref()
            .ok_or("no RTCP relay socket to send from")?
    } else {
        &socks.rtp
    };
    let fallback = sock
        .try_clone()
        .map_err(|e| format!("cannot clone the relay socket: {e}"))?;
    Ok(WorkerFlowSpec {
        flow_id,
        new_src,
        new_dst: to,
        rx,
        tx,
        rtcp_port,
        fallback: Some(fallback),
        counters: Some(me.counters.clone()),
        state: Some(me.state.clone()),
        // Where the engine left the two legs: the worker continues from there.
        handover: handovers[k],
        transcode: s.transcode.as_ref().map(|t| t.plans[k].clone()),
        peer_state: Some(other.state.clone()),
        peer_handover: handovers[1 - k],
        report_ssrc: s.transcode.as_ref().map(|t| t.plans[1 - k].ssrc),
    })
}

/// A flow's counters. XDP counts a WORKER flow's packets as `to_worker` only: those are its
/// `packets` here (what XDP handed to the worker), with the worker's byte count and last packet.
fn flow_counters(kernel: &dyn KernelPath, f: &KernelFlow) -> crate::kernel::KResult<FlowCounters> {
    let mut c = kernel.counters(f.flow_id)?;
    if f.worker {
        c.packets = c.to_worker;
        match kernel.worker_flow_counters(f.local) {
            Ok(w) => {
                c.bytes = w.bytes;
                c.last_seen_ns = c.last_seen_ns.max(w.last_seen_ns);
            }
            Err(e) => tracing::warn!(error = %e, local = %f.local, "cannot read worker counters"),
        }
    }
    Ok(c)
}

/// Takes a call's streams out of the kernel, keeping their counters; streams that were on the
/// workers go back to the engine with what the workers hand back.
pub(super) fn unkernelize(
    call: &mut Call,
    mut kernel: Option<&mut (dyn KernelPath + 'static)>,
    flow_ids: &mut FlowIds,
    plane: &mut dyn MediaPlane,
) {
    for s in call.streams.iter_mut() {
        s.settle = None;
        s.kernel_failed = false;
        let Some(kernel) = kernel.as_deref_mut() else {
            continue;
        };
        let mut back = [StreamHandover::default(); 2];
        let mut on_workers = false;
        for f in std::mem::take(&mut s.kernel) {
            on_workers |= f.worker;
            if let Err(e) = kernel.remove(f.local) {
                tracing::error!(local = %f.local, error = %e, "cannot remove kernel flow");
            }
            match flow_counters(kernel, &f) {
                Ok(c) => s.sides[f.side].kernel_base.merge(&c),
                Err(e) => tracing::warn!(error = %e, "cannot read kernel counters"),
            }
            // After the XDP entry: nothing is redirected to the worker any more.
            if f.worker {
                match kernel.remove_worker_flow(f.local) {
                    // This flow received what side `f.side` sends and protected towards the
                    // other side.
                    Ok(h) => {
                        back[f.side].merge(&h.sender);
                        back[1 - f.side].merge(&h.receiver);
                    }
                    Err(e) => {
                        tracing::error!(local = %f.local, error = %e, "cannot remove worker flow")
                    }
                }
            }
            if let Err(e) = kernel.reset_counters(f.flow_id) {
                tracing::warn!(error = %e, "cannot reset kernel counters");
            }
            flow_ids.give_back(f.flow_id);
        }
        if on_workers {
            resume(s, plane, &back);
        }
    }
}
