//! The session layer's view of the in-kernel fast path: flows keyed by relay address, each with a
//! counter slot. The real implementation is the XDP program ([`XdpPath`]); tests use a fake.
//!
//! A stream is "kernelized" once both of its sides have latched and nothing changed for a moment:
//! from then on the XDP program rewrites and forwards its packets and the userspace socket sees
//! none. Any signalling event on the call (re-INVITE, hold) takes its streams back to userspace,
//! where latching runs again; they return to the kernel once settled.

use std::net::SocketAddr;

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
    /// Removes every flow and detaches.
    fn shutdown(&mut self) {}
}

pub struct Xdp(pub Option<XdpPath>);

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
    fn describe(&self) -> String {
        match &self.0 {
            Some(p) => format!(
                "xdp-{} on {}",
                format!("{:?}", p.mode()).to_lowercase(),
                p.interfaces().join(",")
            ),
            None => "xdp (detached)".into(),
        }
    }
    fn shutdown(&mut self) {
        if let Some(mut p) = self.0.take() {
            match p.clear() {
                Ok(n) if n > 0 => tracing::info!(flows = n, "removed kernel flows"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot clear kernel flows"),
            }
            if let Err(e) = p.detach() {
                tracing::warn!(error = %e, "cannot detach the XDP program");
            }
        }
    }
}

impl Xdp {
    fn path(&self) -> KResult<&XdpPath> {
        self.0
            .as_ref()
            .ok_or_else(|| "the XDP program is detached".into())
    }
    fn path_mut(&mut self) -> KResult<&mut XdpPath> {
        self.0
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
