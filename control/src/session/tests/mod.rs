//! Session tests against a recording media plane and an in-memory kernel path: what the relay
//! would be told, and that nothing (ports, endpoints, flows) leaks. Shared fakes and SDP builders
//! live here; the tests are grouped by the idea they check.

use super::*;
use crate::codecs::{DirectionPlan, TranscodeMode};
use crate::kernel::WorkerFlowSpec;
use crate::sdp::Sdp;
use sluice_relay::engine::{EndpointConfig, EndpointId, Signalling};
use sluice_relay::handover::{FlowHandover, StreamHandover};
use sluice_relay::xdp::{FlowCounters, FlowValue};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Records which endpoints the data plane would hold, so leaks show up as leftovers.
#[derive(Clone, Default)]
struct FakePlane(Arc<Mutex<FakeState>>);
#[derive(Default)]
struct FakeState {
    live: HashSet<EndpointId>,
    /// Endpoints whose sockets wait in the socket pool.
    pooled: HashSet<EndpointId>,
    configured: HashMap<EndpointId, (EndpointConfig, Option<Signalling>)>,
    /// Transcoding plans in force.
    plans: HashMap<EndpointId, DirectionPlan>,
    transcode_commands: usize,
    /// Every Configure, in order: what a sequence of requests told the relay, not only where
    /// it ended.
    configure_log: Vec<(EndpointId, EndpointConfig, Option<Signalling>)>,
    /// What the engine answers when asked to hand an endpoint's streams over (default: empty).
    handovers: HashMap<EndpointId, StreamHandover>,
    /// Endpoints handed over to the workers and not resumed yet.
    handed_over: HashSet<EndpointId>,
    /// Every Resume, in order.
    resumed: Vec<(EndpointId, StreamHandover)>,
}
impl MediaPlane for FakePlane {
    fn hand_over(&mut self, id: EndpointId) -> Result<StreamHandover, EngineGone> {
        let mut st = self.0.lock().unwrap();
        assert!(st.live.contains(&id), "handover of dead {id}");
        assert!(st.handed_over.insert(id), "{id} handed over twice");
        Ok(st.handovers.get(&id).copied().unwrap_or_default())
    }

    fn send(&mut self, cmd: Command) -> Result<(), EngineGone> {
        let mut st = self.0.lock().unwrap();
        match cmd {
            Command::Add { id, .. } => assert!(st.live.insert(id), "{id} added twice"),
            Command::Configure {
                id,
                config,
                signalling,
            } => {
                assert!(st.live.contains(&id), "configure of dead {id}");
                st.configured.insert(id, (config, signalling));
                st.configure_log.push((id, config, signalling));
            }
            Command::Pool { id } => {
                assert!(st.live.remove(&id), "pooling of dead {id}");
                assert!(st.pooled.insert(id));
                st.configured.remove(&id);
                st.plans.remove(&id);
            }
            Command::Reuse { pooled, id, .. } => {
                assert!(st.pooled.remove(&pooled), "reuse of unpooled {pooled}");
                assert!(st.live.insert(id), "{id} added twice");
            }
            Command::Remove { id } => {
                assert!(
                    st.live.remove(&id) || st.pooled.remove(&id),
                    "remove of dead {id}"
                );
                st.configured.remove(&id);
                st.plans.remove(&id);
            }
            Command::SetTranscode { id, plan } => {
                assert!(st.live.contains(&id), "transcode plan for dead {id}");
                st.transcode_commands += 1;
                match plan {
                    Some(p) => st.plans.insert(id, p),
                    None => st.plans.remove(&id),
                };
            }
            Command::Resume { id, handover } => {
                assert!(st.live.contains(&id), "resume of dead {id}");
                assert!(
                    st.handed_over.remove(&id),
                    "resume of {id} never handed over"
                );
                st.resumed.push((id, *handover));
            }
            Command::Shutdown | Command::SetSrtp { .. } => {}
            Command::HandOver { .. } => panic!("handovers go through MediaPlane::hand_over"),
        }
        Ok(())
    }
}

/// A kernel path that keeps its flow map in memory, with counters the test sets.
#[derive(Clone, Default)]
struct FakeKernel(Arc<Mutex<FakeKernelState>>);
#[derive(Default)]
struct FakeKernelState {
    flows: HashMap<SocketAddr, FlowValue>,
    counters: HashMap<u32, FlowCounters>,
    /// AF_XDP workers run.
    workers: bool,
    worker_flows: HashMap<SocketAddr, WorkerFlowSpec>,
    worker_counters: HashMap<SocketAddr, crate::kernel::WorkerFlowCounters>,
    /// What the workers hand back when a flow is removed (default: nothing).
    hand_back: HashMap<SocketAddr, FlowHandover>,
}
impl KernelPath for FakeKernel {
    fn install(&mut self, local: SocketAddr, value: FlowValue) -> crate::kernel::KResult<()> {
        self.0.lock().unwrap().flows.insert(local, value);
        Ok(())
    }
    fn remove(&mut self, local: SocketAddr) -> crate::kernel::KResult<()> {
        self.0
            .lock()
            .unwrap()
            .flows
            .remove(&local)
            .map(|_| ())
            .ok_or_else(|| format!("no flow {local}"))
    }
    fn counters(&self, flow_id: u32) -> crate::kernel::KResult<FlowCounters> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .counters
            .get(&flow_id)
            .copied()
            .unwrap_or_default())
    }
    fn reset_counters(&mut self, flow_id: u32) -> crate::kernel::KResult<()> {
        self.0.lock().unwrap().counters.remove(&flow_id);
        Ok(())
    }
    fn flow_count(&self) -> crate::kernel::KResult<usize> {
        Ok(self.0.lock().unwrap().flows.len())
    }
    fn describe(&self) -> String {
        "fake".into()
    }
    fn has_workers(&self) -> bool {
        self.0.lock().unwrap().workers
    }
    fn add_worker_flow(
        &mut self,
        local: SocketAddr,
        spec: WorkerFlowSpec,
    ) -> crate::kernel::KResult<()> {
        let mut st = self.0.lock().unwrap();
        assert!(st.workers, "worker flow without workers");
        assert!(
            !st.flows.contains_key(&local),
            "the worker context must come before the XDP entry"
        );
        st.worker_flows.insert(local, spec);
        Ok(())
    }
    fn remove_worker_flow(&mut self, local: SocketAddr) -> crate::kernel::KResult<FlowHandover> {
        let mut st = self.0.lock().unwrap();
        assert!(
            !st.flows.contains_key(&local),
            "the XDP entry must go before the worker context"
        );
        st.worker_counters.remove(&local);
        let back = st.hand_back.remove(&local).unwrap_or_default();
        st.worker_flows
            .remove(&local)
            .map(|_| back)
            .ok_or_else(|| format!("no worker flow {local}"))
    }
    fn worker_flow_counters(
        &self,
        local: SocketAddr,
    ) -> crate::kernel::KResult<crate::kernel::WorkerFlowCounters> {
        let st = self.0.lock().unwrap();
        if !st.worker_flows.contains_key(&local) {
            return Err(format!("no worker flow {local}"));
        }
        Ok(st.worker_counters.get(&local).copied().unwrap_or_default())
    }
}

/// Loopback media, ports `low..=high`, 60 s timeout, transcoding on demand, the daemon's
/// Opus defaults.
fn test_config(low: u16, high: u16) -> SessionConfig {
    SessionConfig {
        media_ips: vec!["127.0.0.1".parse().unwrap()],
        port_low: low,
        port_high: high,
        timeout: Duration::from_secs(60),
        transcode: TranscodeMode::Auto,
        opus_complexity: sluice_relay::transcode::DEFAULT_OPUS_COMPLEXITY,
        opus_bitrate: sluice_relay::transcode::OpusParams::default().bitrate,
        // Small, so that the tests see sides pooled, reused and closed for want of room.
        socket_pool: 4,
    }
}

fn sessions(low: u16, high: u16, timeout: Duration) -> (Arc<Sessions>, FakePlane) {
    let plane = FakePlane::default();
    let s = Sessions::new(
        SessionConfig {
            media_ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            timeout,
            ..test_config(low, high)
        },
        SessionEnv::system(),
        Box::new(plane.clone()),
        None,
    )
    .unwrap();
    (s, plane)
}

fn sdp(user: &str, port: u16, extra: &str) -> String {
    format!(
        "v=0\r\no={user} 100 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n{extra}"
    )
}

/// A callee that speaks Opus only, with telephone-event at 48 kHz.
fn opus_sdp(user: &str, port: u16, extra: &str) -> String {
    format!(
        "v=0\r\no={user} 100 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 96 97\r\na=rtpmap:96 opus/48000/2\r\n\
         a=fmtp:96 useinbandfec=1;maxplaybackrate=16000\r\n\
         a=rtpmap:97 telephone-event/48000\r\n{extra}"
    )
}

/// PCMU caller, Opus callee.
fn transcoded_call_up(s: &Sessions, call: &str) -> String {
    let o = s
        .offer(call, "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    let m = &Sdp::parse(&o).unwrap().media[0];
    assert_eq!(m.fmts, ["0", "8", "96", "101", "97"], "{o}");
    s.answer(
        call,
        "a",
        "b",
        &opus_sdp("bob", 5000, "a=ptime:40\r\n"),
        LegOptions::default(),
    )
    .unwrap()
}

const ALICE_KEY: &str =
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";

fn savp(user: &str, port: u16, crypto: &str) -> String {
    sdp(user, port, crypto).replace("RTP/AVP", "RTP/SAVP")
}

fn opts(srtp: SrtpMode) -> LegOptions {
    LegOptions {
        srtp,
        ..Default::default()
    }
}

fn crypto_of(s: &Sessions, call: &str, side: usize) -> SideCrypto {
    s.lock().calls[call].streams[0].sides[side].crypto.clone()
}

mod api;
mod dialogs;
mod events;
mod fork;
mod offload;
mod sim;
mod socket_pool;
mod srtp;
mod statistics;
mod transcode;
mod wire;
