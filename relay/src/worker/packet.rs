//! Ethernet / IPv4 / IPv6 / UDP on a frame in place: parse to offsets (no copies), the flow key
//! of the destination, and the relay rewrite (addresses, ports, lengths, TTL, full checksums).
//!
//! What the XDP program hands to workers is already sane (it passes fragments, IP options,
//! inconsistent lengths, zero IPv6 UDP checksums and TTL <= 1 to the kernel stack), but the
//! worker checks again rather than trust its input: a bad frame is dropped and counted, never a
//! panic.

use std::net::{IpAddr, SocketAddr};

use crate::xdp::FlowKey;

pub(crate) const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const UDP_LEN: usize = 8;
const IPV6_LEN: usize = 40;

/// Why a frame was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Not Ethernet + IPv4/IPv6 + UDP, a fragment, or lengths that do not add up.
    Malformed,
    /// TTL / hop limit would reach 0.
    Ttl,
}

/// Offsets of a parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub v6: bool,
    /// Offset of the UDP header.
    pub l4: usize,
    /// UDP payload bytes.
    pub payload_len: usize,
}

impl Parsed {
    pub(crate) fn payload(&self) -> usize {
        self.l4 + UDP_LEN
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses `frame` (exactly the received bytes).
pub(crate) fn parse(frame: &[u8]) -> Result<Parsed, Bad> {
    if frame.len() < ETH_LEN + 20 {
        return Err(Bad::Malformed);
    }
    match be16(frame, 12) {
        ETH_P_IPV4 => {
            let ip = &frame[ETH_LEN..];
            let ihl = (ip[0] & 0x0f) as usize * 4;
            if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_UDP {
                return Err(Bad::Malformed);
            }
            // MF or a fragment offset: not a whole datagram.
            if be16(ip, 6) & 0x3fff != 0 {
                return Err(Bad::Malformed);
            }
            let tot = be16(ip, 2) as usize;
            if tot > ip.len() || tot < ihl + UDP_LEN {
                return Err(Bad::Malformed);
            }
            let udp_len = be16(ip, ihl + 4) as usize;
            if udp_len != tot - ihl {
                return Err(Bad::Malformed);
            }
            if ip[8] <= 1 {
                return Err(Bad::Ttl);
            }
            Ok(Parsed {
                v6: false,
                l4: ETH_LEN + ihl,
                payload_len: udp_len - UDP_LEN,
            })
        }
        ETH_P_IPV6 => {
            let ip = &frame[ETH_LEN..];
            if ip.len() < IPV6_LEN + UDP_LEN || ip[0] >> 4 != 6 || ip[6] != IPPROTO_UDP {
                return Err(Bad::Malformed);
            }
            let plen = be16(ip, 4) as usize;
            if plen > ip.len() - IPV6_LEN || plen < UDP_LEN {
                return Err(Bad::Malformed);
            }
            let udp_len = be16(ip, IPV6_LEN + 4) as usize;
            if udp_len != plen {
                return Err(Bad::Malformed);
            }
            if ip[7] <= 1 {
                return Err(Bad::Ttl);
            }
            Ok(Parsed {
                v6: true,
                l4: ETH_LEN + IPV6_LEN,
                payload_len: udp_len - UDP_LEN,
            })
        }
        _ => Err(Bad::Malformed),
    }
}

/// The flow key of the frame's destination (address + port), as the XDP map stores it.
pub(crate) fn flow_key(frame: &[u8], p: &Parsed) -> FlowKey {
    let mut addr = [0u32; 4];
    let dst = if p.v6 {
        &frame[ETH_LEN + 24..ETH_LEN + 40]
    } else {
        &frame[ETH_LEN + 16..ETH_LEN + 20]
    };
    for (w, chunk) in addr.iter_mut().zip(dst.chunks_exact(4)) {
        *w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    let port = u16::from_ne_bytes([frame[p.l4 + 2], frame[p.l4 + 3]]);
    FlowKey::from_wire(p.v6, port, addr)
}

/// The source of a frame (for logs and tests).
#[cfg(test)]
pub(crate) fn source(frame: &[u8], p: &Parsed) -> SocketAddr {
    let ip: IpAddr = if p.v6 {
        let b: [u8; 16] = frame[ETH_LEN + 8..ETH_LEN + 24].try_into().unwrap();
        b.into()
    } else {
        let b: [u8; 4] = frame[ETH_LEN + 12..ETH_LEN + 16].try_into().unwrap();
        b.into()
    };
    SocketAddr::new(ip, be16(frame, p.l4))
}

/// An address in wire form, prepared once when a flow is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireAddr {
    pub v6: bool,
    /// IPv4 in the first 4 bytes.
    pub ip: [u8; 16],
    pub port: [u8; 2],
}

impl WireAddr {
    pub(crate) fn new(sa: SocketAddr) -> Self {
        let mut ip = [0u8; 16];
        let v6 = match sa.ip().to_canonical() {
            IpAddr::V4(a) => {
                ip[..4].copy_from_slice(&a.octets());
                false
            }
            IpAddr::V6(a) => {
                ip.copy_from_slice(&a.octets());
                true
            }
        };
        Self {
            v6,
            ip,
            port: sa.port().to_be_bytes(),
        }
    }

    fn ip_bytes(&self) -> &[u8] {
        if self.v6 { &self.ip } else { &self.ip[..4] }
    }
}

/// One's complement sum of `data` as big-endian 16-bit words (odd tail padded with zero),
/// added to `acc`; fold with [`fold`]. Adds 32-bit words: a 32-bit word is congruent to the
/// sum of its two 16-bit halves modulo 0xffff (RFC 1071 2.(B)).
pub(crate) fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u16::from_be_bytes([rest[i], rest[i + 1]]) as u64;
        i += 2;
    }
    if i < rest.len() {
        acc += (rest[i] as u64) << 8;
    }
    acc
}

pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Rewrites a parsed frame whose payload now has `payload_len` bytes: source `src`,
/// destination `dst` (both of the frame's family), TTL / hop limit - 1, lengths, the IPv4
/// header checksum and the full UDP checksum (RFC 768; a computed 0 is sent as 0xffff).
/// Returns the new frame length. The caller checked that the frame has room for it.
pub(crate) fn rewrite(
    frame: &mut [u8],
    p: &Parsed,
    payload_len: usize,
    src: &WireAddr,
    dst: &WireAddr,
) -> usize {
    debug_assert_eq!(src.v6, p.v6);
    debug_assert_eq!(dst.v6, p.v6);
    let udp_len = UDP_LEN + payload_len;
    let end = p.l4 + udp_len;
    let (pseudo_src, pseudo_dst);
    if p.v6 {
        let ip = &mut frame[ETH_LEN..];
        ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        ip[7] -= 1;
        ip[8..24].copy_from_slice(&src.ip);
        ip[24..40].copy_from_slice(&dst.ip);
        pseudo_src = ETH_LEN + 8;
        pseudo_dst = ETH_LEN + 24;
    } else {
        let ihl = p.l4 - ETH_LEN;
        let ip = &mut frame[ETH_LEN..p.l4];
        ip[2..4].copy_from_slice(&((ihl + udp_len) as u16).to_be_bytes());
        ip[8] -= 1;
        ip[12..16].copy_from_slice(src.ip_bytes());
        ip[16..20].copy_from_slice(dst.ip_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let check = !fold(sum(ip, 0));
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        pseudo_src = ETH_LEN + 12;
        pseudo_dst = ETH_LEN + 16;
    }
    let addr_len = if p.v6 { 16 } else { 4 };
    {
        let udp = &mut frame[p.l4..end];
        udp[0..2].copy_from_slice(&src.port);
        udp[2..4].copy_from_slice(&dst.port);
        udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
    }
    // Pseudo-header (RFC 768 / RFC 8200 8.1): addresses, protocol, UDP length.
    let mut acc = sum(&frame[pseudo_src..pseudo_src + addr_len], 0);
    acc = sum(&frame[pseudo_dst..pseudo_dst + addr_len], acc);
    acc += IPPROTO_UDP as u64 + udp_len as u64;
    acc = sum(&frame[p.l4..end], acc);
    let check = match !fold(acc) {
        0 => 0xffff,
        c => c,
    };
    frame[p.l4 + 6..p.l4 + 8].copy_from_slice(&check.to_be_bytes());
    end
}

/// Next hop by swapping the frame's MAC addresses (reply out of the ingress interface).
pub(crate) fn swap_macs(frame: &mut [u8]) {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&dst);
}

pub(crate) fn set_macs(frame: &mut [u8], src: &[u8; 6], dst: &[u8; 6]) {
    frame[0..6].copy_from_slice(dst);
    frame[6..12].copy_from_slice(src);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Reference checksum: RFC 1071 over 16-bit words, the slow obvious way.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            s += w as u32;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// A frame as a sender's kernel would build it, with valid checksums.
    fn frame(src: &str, dst: &str, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = (sa(src), sa(dst));
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        let udp_len = 8 + payload.len();
        let mut udp = Vec::new();
        udp.extend_from_slice(&src.port().to_be_bytes());
        udp.extend_from_slice(&dst.port().to_be_bytes());
        udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let mut pseudo = Vec::new();
        match (src.ip().to_canonical(), dst.ip().to_canonical()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, ttl, 17, 0, 0];
                ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                let c = !naive(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
                ip.extend_from_slice(&[17, ttl]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                f.extend_from_slice(&ip);
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
            }
            _ => unreachable!(),
        }
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
        pseudo.extend_from_slice(&udp);
        let c = !naive(&pseudo);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&udp);
        f
    }

    #[test]
    fn ipv4_header_checksum_known_answer() {
        // The classic example header (checksum field zeroed): b861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!fold(sum(&hdr, 0)), 0xb861);
    }

    #[test]
    fn fast_sum_matches_rfc1071_for_every_length() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 37 + 11) as u8).collect();
        for n in 0..data.len() {
            assert_eq!(fold(sum(&data[..n], 0)), naive(&data[..n]), "length {n}");
        }
        assert_eq!(fold(sum(&[0xff; 64], 0)), 0xffff);
    }

    #[test]
    fn parses_ipv4_and_ipv6_and_keys_by_destination() {
        let f = frame("10.0.0.2:4000", "10.0.0.1:30000", 64, &[1, 2, 3]);
        let p = parse(&f).unwrap();
        assert_eq!((p.v6, p.l4, p.payload_len), (false, 34, 3));
        assert_eq!(flow_key(&f, &p), FlowKey::new(sa("10.0.0.1:30000")));
        assert_eq!(source(&f, &p), sa("10.0.0.2:4000"));
        let f = frame("[fd00::2]:4000", "[fd00::1]:30000", 64, &[9; 172]);
        let p = parse(&f).unwrap();
        assert_eq!((p.v6, p.l4, p.payload_len), (true, 54, 172));
        assert_eq!(flow_key(&f, &p), FlowKey::new(sa("[fd00::1]:30000")));
    }

    #[test]
    fn refuses_what_it_does_not_relay() {
        let good = frame("10.0.0.2:4000", "10.0.0.1:30000", 64, &[1; 20]);
        assert_eq!(parse(&good[..30]), Err(Bad::Malformed));
        let mut frag = good.clone();
        frag[ETH_LEN + 6] |= 0x20; // MF
        assert_eq!(parse(&frag), Err(Bad::Malformed));
        let mut tcp = good.clone();
        tcp[ETH_LEN + 9] = 6;
        assert_eq!(parse(&tcp), Err(Bad::Malformed));
        let mut long = good.clone();
        long[ETH_LEN + 3] += 1; // total length beyond the frame
        assert_eq!(parse(&long), Err(Bad::Malformed));
        let mut udp_len = good.clone();
        udp_len[34 + 5] -= 1;
        assert_eq!(parse(&udp_len), Err(Bad::Malformed));
        let mut vlan = good.clone();
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(parse(&vlan), Err(Bad::Malformed));
        let ttl1 = frame("10.0.0.2:4000", "10.0.0.1:30000", 1, &[1; 20]);
        assert_eq!(parse(&ttl1), Err(Bad::Ttl));
        let hop1 = frame("[fd00::2]:4000", "[fd00::1]:30000", 1, &[1; 20]);
        assert_eq!(parse(&hop1), Err(Bad::Ttl));
        // Trailing Ethernet padding after the datagram is fine.
        let mut padded = frame("10.0.0.2:4000", "10.0.0.1:30000", 64, &[1; 2]);
        padded.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&padded).unwrap().payload_len, 2);
    }

    /// Rewrites with a grown payload and compares with a frame built from scratch.
    fn rewrite_case(from: &str, to: &str, new_src: &str, new_dst: &str) {
        let payload: Vec<u8> = (0..172u8).collect();
        let mut buf = frame(from, to, 64, &payload);
        let len = buf.len();
        buf.resize(len + 40, 0xee);
        let p = parse(&buf[..len]).unwrap();
        // The transform appends 10 bytes.
        let at = p.payload() + p.payload_len;
        buf[at..at + 10].copy_from_slice(&[0xab; 10]);
        let n = rewrite(
            &mut buf,
            &p,
            p.payload_len + 10,
            &WireAddr::new(sa(new_src)),
            &WireAddr::new(sa(new_dst)),
        );
        let mut grown = payload.clone();
        grown.extend_from_slice(&[0xab; 10]);
        let want = frame(new_src, new_dst, 63, &grown);
        assert_eq!(n, want.len());
        assert_eq!(&buf[..n], &want[..], "{from} -> {to}");
    }

    #[test]
    fn rewrite_matches_a_frame_built_from_scratch() {
        rewrite_case(
            "10.200.1.2:4000",
            "10.200.1.1:30000",
            "10.200.2.1:30002",
            "10.200.2.2:5000",
        );
        rewrite_case(
            "[fd00:200:1::2]:4000",
            "[fd00:200:1::1]:30000",
            "[fd00:200:2::1]:30002",
            "[fd00:200:2::2]:5000",
        );
        // IPv4-mapped addresses are IPv4 on the wire.
        rewrite_case(
            "10.0.0.2:1",
            "10.0.0.1:2",
            "[::ffff:10.0.1.1]:3",
            "10.0.1.2:65535",
        );
    }

    #[test]
    fn a_computed_zero_udp_checksum_is_sent_as_ffff() {
        // Find a payload whose checksum folds to zero, then check it goes out as 0xffff.
        let base = frame("10.0.0.2:4000", "10.0.0.1:30000", 64, &[0, 0]);
        let p = parse(&base).unwrap();
        let (s, d) = (
            WireAddr::new(sa("10.0.1.1:30002")),
            WireAddr::new(sa("10.0.1.2:5000")),
        );
        for w in 0..=u16::MAX {
            let mut f = base.clone();
            let at = p.payload();
            f[at..at + 2].copy_from_slice(&w.to_be_bytes());
            rewrite(&mut f, &p, 2, &s, &d);
            let c = u16::from_be_bytes([f[p.l4 + 6], f[p.l4 + 7]]);
            assert_ne!(c, 0);
            if c == 0xffff {
                return;
            }
        }
        panic!("no payload produced a zero checksum");
    }

    #[test]
    fn macs_are_swapped_or_set() {
        let mut f = frame("10.0.0.2:4000", "10.0.0.1:30000", 64, &[1]);
        swap_macs(&mut f);
        assert_eq!(&f[0..12], &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        set_macs(&mut f, &[1; 6], &[3; 6]);
        assert_eq!(&f[0..12], &[3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1]);
    }
}
