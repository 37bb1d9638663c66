//! Locating a SIP server (RFC 3263 section 4): which transport, address and port a request
//! for a URI goes to, through NAPTR, SRV and address records.
//!
//! Sans-IO: the lookups go through [`Resolver`], so the selection rules are tested with a
//! fake; [`HostsFile`] answers from /etc/hosts text (address records only, no NAPTR or SRV),
//! which is what a machine without DNS has.

use std::net::{IpAddr, SocketAddr};

use crate::{Host, Peer, Scheme, Transport, Uri};

/// A NAPTR record (RFC 3403) as RFC 3263 section 4.1 reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    /// "s" for records that point to SRV names.
    pub flags: String,
    /// `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`, ...
    pub service: String,
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The lookups RFC 3263 needs. Empty answers mean "no such records".
pub trait Resolver {
    fn naptr(&mut self, domain: &str) -> Vec<Naptr>;
    fn srv(&mut self, name: &str) -> Vec<Srv>;
    fn addresses(&mut self, host: &str) -> Vec<IpAddr>;
}

/// Address records from an /etc/hosts text; no NAPTR, no SRV.
#[derive(Debug, Clone, Default)]
pub struct HostsFile {
    entries: Vec<(IpAddr, Vec<String>)>,
}

impl HostsFile {
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let ip = f.next()?.parse().ok()?;
                let names: Vec<String> = f.map(str::to_ascii_lowercase).collect();
                (!names.is_empty()).then_some((ip, names))
            })
            .collect();
        Self { entries }
    }
}

impl Resolver for HostsFile {
    fn naptr(&mut self, _: &str) -> Vec<Naptr> {
        Vec::new()
    }
    fn srv(&mut self, _: &str) -> Vec<Srv> {
        Vec::new()
    }
    fn addresses(&mut self, host: &str) -> Vec<IpAddr> {
        let host = host.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|(_, names)| names.contains(&host))
            .map(|(ip, _)| *ip)
            .collect()
    }
}

fn default_port(t: Transport) -> u16 {
    match t {
        Transport::Tls => 5061,
        Transport::Udp | Transport::Tcp => 5060,
    }
}

fn naptr_service(service: &str) -> Option<Transport> {
    match service.to_ascii_uppercase().as_str() {
        "SIP+D2U" => Some(Transport::Udp),
        "SIP+D2T" => Some(Transport::Tcp),
        "SIPS+D2T" => Some(Transport::Tls),
        _ => None,
    }
}

fn srv_prefix(t: Transport, sips: bool) -> &'static str {
    match (t, sips) {
        (Transport::Tls, _) | (_, true) => "_sips._tcp.",
        (Transport::Tcp, false) => "_sip._tcp.",
        (Transport::Udp, false) => "_sip._udp.",
    }
}

/// Every address of `host` as a peer on transport `t` and `port`.
fn peers(r: &mut impl Resolver, t: Transport, host: &str, port: u16) -> Vec<Peer> {
    r.addresses(host)
        .into_iter()
        .map(|ip| Peer {
            transport: t,
            addr: SocketAddr::new(ip, port),
        })
        .collect()
}

/// The servers to try for `uri`, in order (RFC 3263 section 4), among the transports in
/// `supported`. SRV records of equal priority are tried heaviest first (a deterministic
/// stand-in for RFC 2782's weighted random pick). Empty when nothing resolves.
pub fn locate(uri: &Uri, supported: &[Transport], r: &mut impl Resolver) -> Vec<Peer> {
    let sips = uri.scheme == Scheme::Sips;
    let ok = |t: Transport| supported.contains(&t) && (!sips || t == Transport::Tls);
    // RFC 3263 4.1: an explicit transport parameter decides.
    let explicit = uri.transport().and_then(|t| match t.as_str() {
        "udp" => Some(Transport::Udp),
        "tcp" if sips => Some(Transport::Tls),
        "tcp" => Some(Transport::Tcp),
        "tls" => Some(Transport::Tls),
        _ => None,
    });
    if uri.transport().is_some() && explicit.is_none() {
        return Vec::new();
    }
    let fallback = if sips { Transport::Tls } else { Transport::Udp };
    let host = match &uri.host {
        Host::None => return Vec::new(),
        // RFC 3263 4.1/4.2: a numeric host takes the given or default port, no lookups.
        h if h.ip().is_some() => {
            let t = explicit.unwrap_or(fallback);
            let port = uri.port.unwrap_or(default_port(t));
            return ok(t)
                .then(|| Peer {
                    transport: t,
                    addr: SocketAddr::new(h.ip().expect("checked"), port),
                })
                .into_iter()
                .collect();
        }
        Host::Name(n) => n.clone(),
        // An IPv6 reference std cannot parse (RFC 5118 4.10's three colons) names nothing.
        _ => return Vec::new(),
    };
    if let Some(port) = uri.port {
        // RFC 3263 4.2: a port given means address records only.
        let t = explicit.unwrap_or(fallback);
        return if ok(t) {
            peers(r, t, &host, port)
        } else {
            Vec::new()
        };
    }
    // (transport, SRV name) candidates, in preference order.
    let mut candidates: Vec<(Transport, String)> = Vec::new();
    if let Some(t) = explicit {
        candidates.push((t, format!("{}{host}", srv_prefix(t, sips))));
    } else {
        let mut naptrs: Vec<Naptr> = r
            .naptr(&host)
            .into_iter()
            .filter(|n| n.flags.eq_ignore_ascii_case("s"))
            .filter(|n| naptr_service(&n.service).is_some_and(ok))
            .collect();
        naptrs.sort_by_key(|n| (n.order, n.preference));
        candidates.extend(
            naptrs
                .into_iter()
                .map(|n| (naptr_service(&n.service).expect("filtered"), n.replacement)),
        );
        if candidates.is_empty() {
            // RFC 3263 4.1: no NAPTR: SRV for each supported transport.
            for t in [Transport::Tls, Transport::Tcp, Transport::Udp] {
                if ok(t) {
                    candidates.push((t, format!("{}{host}", srv_prefix(t, sips))));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (t, name) in &candidates {
        let mut srvs = r.srv(name);
        srvs.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
        for s in srvs {
            out.extend(peers(r, *t, s.target.trim_end_matches('.'), s.port));
        }
        if !out.is_empty() && explicit.is_none() {
            // The first transport with SRV records is the one used (RFC 3263 4.1).
            return out;
        }
    }
    if out.is_empty() {
        // RFC 3263 4.2: no SRV records: address records with the default port.
        let t = explicit.unwrap_or(fallback);
        if ok(t) {
            out = peers(r, t, &host, default_port(t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        naptr: HashMap<String, Vec<Naptr>>,
        srv: HashMap<String, Vec<Srv>>,
        a: HashMap<String, Vec<IpAddr>>,
        asked: Vec<String>,
    }

    impl Resolver for Fake {
        fn naptr(&mut self, d: &str) -> Vec<Naptr> {
            self.asked.push(format!("NAPTR {d}"));
            self.naptr.get(d).cloned().unwrap_or_default()
        }
        fn srv(&mut self, n: &str) -> Vec<Srv> {
            self.asked.push(format!("SRV {n}"));
            self.srv.get(n).cloned().unwrap_or_default()
        }
        fn addresses(&mut self, h: &str) -> Vec<IpAddr> {
            self.asked.push(format!("A {h}"));
            self.a.get(h).cloned().unwrap_or_default()
        }
    }

    const ALL: &[Transport] = &[Transport::Udp, Transport::Tcp, Transport::Tls];

    fn uri(s: &str) -> Uri {
        Uri::parse(s).unwrap()
    }

    fn peer(t: Transport, a: &str) -> Peer {
        Peer {
            transport: t,
            addr: a.parse().unwrap(),
        }
    }

    fn srv(p: u16, w: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority: p,
            weight: w,
            port,
            target: target.into(),
        }
    }

    #[test]
    fn numeric_hosts_need_no_lookup_rfc3263_4_1() {
        let mut r = Fake::default();
        assert_eq!(
            locate(&uri("sip:192.0.2.1"), ALL, &mut r),
            [peer(Transport::Udp, "192.0.2.1:5060")]
        );
        assert_eq!(
            locate(&uri("sip:192.0.2.1:5080;transport=tcp"), ALL, &mut r),
            [peer(Transport::Tcp, "192.0.2.1:5080")]
        );
        assert_eq!(
            locate(&uri("sips:[2001:db8::1]"), ALL, &mut r),
            [peer(Transport::Tls, "[2001:db8::1]:5061")]
        );
        assert!(r.asked.is_empty());
        assert!(locate(&uri("sip:192.0.2.1;transport=sctp"), ALL, &mut r).is_empty());
        assert!(
            locate(
                &uri("sip:192.0.2.1;transport=tls"),
                &[Transport::Udp],
                &mut r
            )
            .is_empty()
        );
    }

    #[test]
    fn naptr_then_srv_then_addresses_in_order_rfc3263_4() {
        let mut r = Fake::default();
        r.naptr.insert(
            "example.com".into(),
            vec![
                Naptr {
                    order: 50,
                    preference: 50,
                    flags: "s".into(),
                    service: "SIP+D2U".into(),
                    replacement: "_sip._udp.example.com".into(),
                },
                Naptr {
                    order: 10,
                    preference: 50,
                    flags: "s".into(),
                    service: "SIP+D2T".into(),
                    replacement: "_sip._tcp.example.com".into(),
                },
            ],
        );
        r.srv.insert(
            "_sip._tcp.example.com".into(),
            vec![
                srv(20, 0, 5060, "backup.example.com."),
                srv(10, 60, 5070, "a.example.com."),
                srv(10, 40, 5071, "b.example.com."),
            ],
        );
        r.a.insert("a.example.com".into(), vec!["192.0.2.10".parse().unwrap()]);
        r.a.insert("b.example.com".into(), vec!["192.0.2.11".parse().unwrap()]);
        r.a.insert(
            "backup.example.com".into(),
            vec!["192.0.2.12".parse().unwrap()],
        );
        assert_eq!(
            locate(&uri("sip:bob@example.com"), ALL, &mut r),
            [
                peer(Transport::Tcp, "192.0.2.10:5070"),
                peer(Transport::Tcp, "192.0.2.11:5071"),
                peer(Transport::Tcp, "192.0.2.12:5060")
            ]
        );
        // A transport the caller cannot use is skipped: UDP only leaves the UDP NAPTR, whose
        // SRV name has no records, so the domain's own address with 5060.
        r.a.insert("example.com".into(), vec!["192.0.2.1".parse().unwrap()]);
        assert_eq!(
            locate(&uri("sip:bob@example.com"), &[Transport::Udp], &mut r),
            [peer(Transport::Udp, "192.0.2.1:5060")]
        );
    }

    #[test]
    fn without_naptr_srv_per_transport_and_a_port_means_addresses_only() {
        let mut r = Fake::default();
        r.srv.insert(
            "_sip._udp.pbx.example".into(),
            vec![srv(1, 1, 5090, "pbx1.example")],
        );
        r.a.insert("pbx1.example".into(), vec!["192.0.2.20".parse().unwrap()]);
        r.a.insert("pbx.example".into(), vec!["192.0.2.21".parse().unwrap()]);
        assert_eq!(
            locate(&uri("sip:pbx.example"), ALL, &mut r),
            [peer(Transport::Udp, "192.0.2.20:5090")]
        );
        r.asked.clear();
        assert_eq!(
            locate(&uri("sip:pbx.example:5062"), ALL, &mut r),
            [peer(Transport::Udp, "192.0.2.21:5062")]
        );
        assert_eq!(r.asked, ["A pbx.example"]);
        assert!(locate(&uri("sip:nowhere.example"), ALL, &mut r).is_empty());
    }

    #[test]
    fn etc_hosts_gives_addresses() {
        let mut h = HostsFile::parse(
            "127.0.0.1 localhost\n# c\n192.0.2.5  pbx PBX.lan # x\n::1 localhost ip6-localhost\n",
        );
        assert_eq!(
            locate(&uri("sip:pbx.lan:5070"), ALL, &mut h),
            [peer(Transport::Udp, "192.0.2.5:5070")]
        );
        assert_eq!(h.addresses("localhost").len(), 2);
        assert!(h.srv("_sip._udp.pbx").is_empty());
    }
}
