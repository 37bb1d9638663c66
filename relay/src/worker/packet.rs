//! Ethernet / IPv4 / IPv6 / UDP on a frame in place: views with named field ranges (the
//! smoltcp pattern `media/src/rtp.rs` follows), parsing to offsets (no copies), the flow key of
//! the destination, and the relay rewrite (addresses, ports, lengths, TTL, full checksums).
//!
//! What the XDP program hands to workers is already sane (it passes fragments, IP options,
//! inconsistent lengths, zero IPv6 UDP checksums and TTL <= 1 to the kernel stack), but the
//! worker checks again rather than trust its input: a bad frame is dropped and counted, never a
//! panic. Views are made by checked constructors, after which every field lies inside the
//! buffer (or, inside this module, over a frame [`parse`] accepted).

use std::net::{IpAddr, SocketAddr};

use crate::xdp::FlowKey;

pub(crate) const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const UDP_LEN: usize = 8;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;

/// Where each header field lives, relative to the start of its header.
mod field {
    pub type Field = std::ops::Range<usize>;

    /// IEEE 802.3 (no VLAN tag: a tagged frame is not relayed).
    pub mod eth {
        use super::Field;
        pub const DST: Field = 0..6;
        pub const SRC: Field = 6..12;
        pub const ETHERTYPE: Field = 12..14;
    }

    /// RFC 791 3.1.
    pub mod ipv4 {
        use super::Field;
        pub const VER_IHL: usize = 0;
        pub const TOTAL_LEN: Field = 2..4;
        pub const FLAGS_FRAG: Field = 6..8;
        pub const TTL: usize = 8;
        pub const PROTOCOL: usize = 9;
        pub const CHECKSUM: Field = 10..12;
        pub const SRC: Field = 12..16;
        pub const DST: Field = 16..20;
    }

    /// RFC 8200 3.
    pub mod ipv6 {
        use super::Field;
        pub const VER: usize = 0;
        pub const PAYLOAD_LEN: Field = 4..6;
        pub const NEXT_HEADER: usize = 6;
        pub const HOP_LIMIT: usize = 7;
        pub const SRC: Field = 8..24;
        pub const DST: Field = 24..40;
    }

    /// RFC 768.
    pub mod udp {
        use super::Field;
        pub const SRC_PORT: Field = 0..2;
        pub const DST_PORT: Field = 2..4;
        pub const LENGTH: Field = 4..6;
        pub const CHECKSUM: Field = 6..8;
    }
}

/// Why a frame was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Not Ethernet + IPv4/IPv6 + UDP, a fragment, or lengths that do not add up.
    Malformed,
    /// TTL / hop limit would reach 0.
    Ttl,
}

#[inline]
fn be16(b: &[u8], f: field::Field) -> u16 {
    u16::from_be_bytes([b[f.start], b[f.start + 1]])
}

/// An Ethernet frame.
pub(crate) struct EthernetFrame<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub(crate) fn new_checked(buf: T) -> Result<Self, Bad> {
        if buf.as_ref().len() < ETH_LEN {
            return Err(Bad::Malformed);
        }
        Ok(Self(buf))
    }
    pub(crate) fn ethertype(&self) -> u16 {
        be16(self.0.as_ref(), field::eth::ETHERTYPE)
    }
    pub(crate) fn payload(&self) -> &[u8] {
        &self.0.as_ref()[ETH_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub(crate) fn set_macs(&mut self, src: &[u8; 6], dst: &[u8; 6]) {
        let b = self.0.as_mut();
        b[field::eth::DST].copy_from_slice(dst);
        b[field::eth::SRC].copy_from_slice(src);
    }
    pub(crate) fn swap_macs(&mut self) {
        let b = self.0.as_mut();
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&b[field::eth::DST]);
        b.copy_within(field::eth::SRC, field::eth::DST.start);
        b[field::eth::SRC].copy_from_slice(&dst);
    }
}

/// An IPv4 header (and what follows it in the buffer).
pub(crate) struct Ipv4Header<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Ipv4Header<T> {
    /// Version 4 with a header length of at least 20 bytes that fits the buffer.
    pub(crate) fn new_checked(buf: T) -> Result<Self, Bad> {
        let b = buf.as_ref();
        if b.len() < IPV4_MIN_LEN || b[field::ipv4::VER_IHL] >> 4 != 4 {
            return Err(Bad::Malformed);
        }
        let ihl = usize::from(b[field::ipv4::VER_IHL] & 0x0f) * 4;
        if ihl < IPV4_MIN_LEN || ihl > b.len() {
            return Err(Bad::Malformed);
        }
        Ok(Self(buf))
    }
    pub(crate) fn header_len(&self) -> usize {
        usize::from(self.0.as_ref()[field::ipv4::VER_IHL] & 0x0f) * 4
    }
    pub(crate) fn total_len(&self) -> usize {
        usize::from(be16(self.0.as_ref(), field::ipv4::TOTAL_LEN))
    }
    /// MF set or a fragment offset: not a whole datagram.
    pub(crate) fn fragment(&self) -> bool {
        be16(self.0.as_ref(), field::ipv4::FLAGS_FRAG) & 0x3fff != 0
    }
    pub(crate) fn ttl(&self) -> u8 {
        self.0.as_ref()[field::ipv4::TTL]
    }
    pub(crate) fn protocol(&self) -> u8 {
        self.0.as_ref()[field::ipv4::PROTOCOL]
    }
    #[cfg(test)]
    pub(crate) fn src(&self) -> [u8; 4] {
        self.0.as_ref()[field::ipv4::SRC]
            .try_into()
            .expect("4 bytes")
    }
    pub(crate) fn dst(&self) -> [u8; 4] {
        self.0.as_ref()[field::ipv4::DST]
            .try_into()
            .expect("4 bytes")
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Header<T> {
    /// Rewrites the header for a datagram of `udp_len` bytes from `src` to `dst`, one hop on,
    /// with its checksum (RFC 791 3.1: TTL - 1; RFC 1071 checksum over the header).
    pub(crate) fn relay(&mut self, udp_len: usize, src: &[u8], dst: &[u8]) {
        let ihl = self.header_len();
        let b = self.0.as_mut();
        b[field::ipv4::TOTAL_LEN].copy_from_slice(&((ihl + udp_len) as u16).to_be_bytes());
        b[field::ipv4::TTL] -= 1;
        b[field::ipv4::SRC].copy_from_slice(src);
        b[field::ipv4::DST].copy_from_slice(dst);
        b[field::ipv4::CHECKSUM].copy_from_slice(&[0, 0]);
        let check = !fold(sum(&b[..ihl], 0));
        b[field::ipv4::CHECKSUM].copy_from_slice(&check.to_be_bytes());
    }
}

/// An IPv6 header (and what follows it in the buffer).
pub(crate) struct Ipv6Header<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> Ipv6Header<T> {
    pub(crate) fn new_checked(buf: T) -> Result<Self, Bad> {
        let b = buf.as_ref();
        if b.len() < IPV6_LEN || b[field::ipv6::VER] >> 4 != 6 {
            return Err(Bad::Malformed);
        }
        Ok(Self(buf))
    }
    pub(crate) fn payload_len(&self) -> usize {
        usize::from(be16(self.0.as_ref(), field::ipv6::PAYLOAD_LEN))
    }
    pub(crate) fn next_header(&self) -> u8 {
        self.0.as_ref()[field::ipv6::NEXT_HEADER]
    }
    pub(crate) fn hop_limit(&self) -> u8 {
        self.0.as_ref()[field::ipv6::HOP_LIMIT]
    }
    #[cfg(test)]
    pub(crate) fn src(&self) -> [u8; 16] {
        self.0.as_ref()[field::ipv6::SRC]
            .try_into()
            .expect("16 bytes")
    }
    pub(crate) fn dst(&self) -> [u8; 16] {
        self.0.as_ref()[field::ipv6::DST]
            .try_into()
            .expect("16 bytes")
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Header<T> {
    /// Rewrites the header for a datagram of `udp_len` bytes from `src` to `dst`, one hop on
    /// (RFC 8200 3: hop limit - 1; IPv6 has no header checksum).
    pub(crate) fn relay(&mut self, udp_len: usize, src: &[u8], dst: &[u8]) {
        let b = self.0.as_mut();
        b[field::ipv6::PAYLOAD_LEN].copy_from_slice(&(udp_len as u16).to_be_bytes());
        b[field::ipv6::HOP_LIMIT] -= 1;
        b[field::ipv6::SRC].copy_from_slice(src);
        b[field::ipv6::DST].copy_from_slice(dst);
    }
}

/// A UDP header and its payload.
pub(crate) struct UdpDatagram<T: AsRef<[u8]>>(T);

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    pub(crate) fn new_checked(buf: T) -> Result<Self, Bad> {
        if buf.as_ref().len() < UDP_LEN {
            return Err(Bad::Malformed);
        }
        Ok(Self(buf))
    }
    #[cfg(test)]
    pub(crate) fn src_port(&self) -> u16 {
        be16(self.0.as_ref(), field::udp::SRC_PORT)
    }
    /// The destination port as it is on the wire (network byte order in memory).
    pub(crate) fn dst_port_raw(&self) -> u16 {
        let b = self.0.as_ref();
        u16::from_ne_bytes([
            b[field::udp::DST_PORT.start],
            b[field::udp::DST_PORT.start + 1],
        ])
    }
    pub(crate) fn length(&self) -> usize {
        usize::from(be16(self.0.as_ref(), field::udp::LENGTH))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpDatagram<T> {
    /// Rewrites ports and length of a datagram of `udp_len` bytes (the buffer holds at least
    /// that many) and fills the full checksum over `pseudo` (the pseudo-header's address sum,
    /// RFC 768 / RFC 8200 8.1); a computed 0 is sent as 0xffff.
    pub(crate) fn relay(
        &mut self,
        udp_len: usize,
        src_port: [u8; 2],
        dst_port: [u8; 2],
        pseudo: u64,
    ) {
        let b = self.0.as_mut();
        b[field::udp::SRC_PORT].copy_from_slice(&src_port);
        b[field::udp::DST_PORT].copy_from_slice(&dst_port);
        b[field::udp::LENGTH].copy_from_slice(&(udp_len as u16).to_be_bytes());
        b[field::udp::CHECKSUM].copy_from_slice(&[0, 0]);
        let acc = sum(
            &b[..udp_len],
            pseudo + u64::from(IPPROTO_UDP) + udp_len as u64,
        );
        let check = match !fold(acc) {
            0 => 0xffff,
            c => c,
        };
        b[field::udp::CHECKSUM].copy_from_slice(&check.to_be_bytes());
    }
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

/// Parses `frame` (exactly the received bytes).
pub(crate) fn parse(frame: &[u8]) -> Result<Parsed, Bad> {
    if frame.len() < ETH_LEN + IPV4_MIN_LEN {
        return Err(Bad::Malformed);
    }
    let eth = EthernetFrame::new_checked(frame)?;
    match eth.ethertype() {
        ETH_P_IPV4 => {
            let ip = Ipv4Header::new_checked(eth.payload())?;
            let ihl = ip.header_len();
            if ip.protocol() != IPPROTO_UDP || ip.fragment() {
                return Err(Bad::Malformed);
            }
            let tot = ip.total_len();
            if tot > eth.payload().len() || tot < ihl + UDP_LEN {
                return Err(Bad::Malformed);
            }
            let udp = UdpDatagram::new_checked(&eth.payload()[ihl..tot])?;
            if udp.length() != tot - ihl {
                return Err(Bad::Malformed);
            }
            if ip.ttl() <= 1 {
                return Err(Bad::Ttl);
            }
            Ok(Parsed {
                v6: false,
                l4: ETH_LEN + ihl,
                payload_len: udp.length() - UDP_LEN,
            })
        }
        ETH_P_IPV6 => {
            let ip = Ipv6Header::new_checked(eth.payload())?;
            if ip.next_header() != IPPROTO_UDP {
                return Err(Bad::Malformed);
            }
            let plen = ip.payload_len();
            let room = eth.payload().len() - IPV6_LEN;
            if plen > room || plen < UDP_LEN {
                return Err(Bad::Malformed);
            }
            let udp = UdpDatagram::new_checked(&eth.payload()[IPV6_LEN..IPV6_LEN + plen])?;
            if udp.length() != plen {
                return Err(Bad::Malformed);
            }
            if ip.hop_limit() <= 1 {
                return Err(Bad::Ttl);
            }
            Ok(Parsed {
                v6: true,
                l4: ETH_LEN + IPV6_LEN,
                payload_len: plen - UDP_LEN,
            })
        }
        _ => Err(Bad::Malformed),
    }
}

/// The flow key of the frame's destination (address + port), as the XDP map stores it.
/// `p` comes from [`parse`] of this frame.
pub(crate) fn flow_key(frame: &[u8], p: &Parsed) -> FlowKey {
    let mut addr = [0u32; 4];
    let ip = &frame[ETH_LEN..];
    let word = |c: &[u8]| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    if p.v6 {
        let dst = Ipv6Header(ip).dst();
        for (w, chunk) in addr.iter_mut().zip(dst.chunks_exact(4)) {
            *w = word(chunk);
        }
    } else {
        addr[0] = word(&Ipv4Header(ip).dst());
    }
    let port = UdpDatagram(&frame[p.l4..]).dst_port_raw();
    FlowKey::from_wire(p.v6, port, addr)
}

/// The source of a frame (for logs and tests).
#[cfg(test)]
pub(crate) fn source(frame: &[u8], p: &Parsed) -> SocketAddr {
    let ip = &frame[ETH_LEN..];
    let ip: IpAddr = if p.v6 {
        Ipv6Header(ip).src().into()
    } else {
        Ipv4Header(ip).src().into()
    };
    SocketAddr::new(ip, UdpDatagram(&frame[p.l4..]).src_port())
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
    let (ip, udp) = frame[ETH_LEN..p.l4 + udp_len].split_at_mut(p.l4 - ETH_LEN);
    if p.v6 {
        Ipv6Header(ip).relay(udp_len, src.ip_bytes(), dst.ip_bytes());
    } else {
        Ipv4Header(ip).relay(udp_len, src.ip_bytes(), dst.ip_bytes());
    }
    // Pseudo-header (RFC 768 / RFC 8200 8.1): addresses; protocol and length are added by
    // the UDP view.
    let pseudo = sum(dst.ip_bytes(), sum(src.ip_bytes(), 0));
    UdpDatagram(udp).relay(udp_len, src.port, dst.port, pseudo);
    p.l4 + udp_len
}

/// Next hop by swapping the frame's MAC addresses (reply out of the ingress interface).
pub(crate) fn swap_macs(frame: &mut [u8]) {
    if let Ok(mut eth) = EthernetFrame::new_checked(frame) {
        eth.swap_macs();
    }
}

pub(crate) fn set_macs(frame: &mut [u8], src: &[u8; 6], dst: &[u8; 6]) {
    if let Ok(mut eth) = EthernetFrame::new_checked(frame) {
        eth.set_macs(src, dst);
    }
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
