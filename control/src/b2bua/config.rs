//! What the B2BUA is told at start: where it listens, where calls go, how many it takes.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_sip::{Limits, Peer, TimerConfig, Transport};

use crate::session::LegOptions;

#[derive(Debug, Clone)]
pub struct B2buaConfig {
    /// The addresses sluice's SIP sockets are bound to, one per transport and family: written
    /// into Via and Contact, so they must be ones the peers can reach (not 0.0.0.0).
    pub listen: Vec<Peer>,
    /// `--route`: every new INVITE goes to the first of these next hops, over its transport;
    /// a 5xx, 408 or no answer from one sends it on to the next. Never empty.
    pub routes: Vec<Peer>,
    /// `--max-calls`: INVITEs beyond this many live calls get 503 (None: no cap).
    pub max_calls: Option<usize>,
    pub timers: TimerConfig,
    pub limits: Limits,
    /// Media options for each leg's SDP.
    pub media: LegOptions,
    /// How long a call whose 2xx was never ACKed keeps retransmitting it (RFC 3261 13.3.1.4:
    /// 64*T1) is derived from `timers`; this is the User-Agent/Server header value.
    pub product: String,
}

impl B2buaConfig {
    pub fn udp(local: SocketAddr, route: SocketAddr) -> Self {
        Self::new(
            vec![Peer {
                transport: Transport::Udp,
                addr: local,
            }],
            vec![Peer {
                transport: Transport::Udp,
                addr: route,
            }],
        )
    }

    /// `routes` must not be empty (the daemon refuses `--sip` without `--route`).
    pub fn new(listen: Vec<Peer>, routes: Vec<Peer>) -> Self {
        assert!(!routes.is_empty(), "a B2BUA needs a route");
        Self {
            listen,
            routes,
            max_calls: None,
            timers: TimerConfig::default(),
            limits: Limits::default(),
            media: LegOptions::default(),
            product: format!("sluice/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The listening address that reaches `to`: its transport and address family first,
    /// then its transport, then anything.
    pub fn local_for(&self, to: Peer) -> Peer {
        let same_family = |p: &&Peer| p.addr.is_ipv4() == to.addr.is_ipv4();
        self.listen
            .iter()
            .filter(|p| p.transport == to.transport)
            .find(same_family)
            .or_else(|| self.listen.iter().find(|p| p.transport == to.transport))
            .or_else(|| self.listen.iter().find(same_family))
            .or(self.listen.first())
            .copied()
            .unwrap_or(to)
    }

    /// RFC 3261 13.3.1.4: a UAS gives up retransmitting its 2xx after 64*T1.
    pub fn ack_wait(&self) -> Duration {
        self.timers.t1 * 64
    }
}
