//! Zero-copy RTP and RTCP wire views (RFC 3550 sections 5.1 and 6.4, RFC 5761 section 4).
//!
//! The views follow the smoltcp pattern: [`RtpPacket::new_unchecked`] wraps any buffer, while
//! [`RtpPacket::new_checked`] validates the header once so that every later accessor is known to be
//! in bounds. Datagrams arrive from the network, so even the unchecked views never panic: a field
//! that lies past the end of the buffer reads as zero, a payload that does not fit reads as empty,
//! and a setter whose field does not fit does nothing. Nothing here allocates.

/// Length of the fixed RTP header, before the CSRC list (RFC 3550 section 5.1).
pub const RTP_HEADER_LEN: usize = 12;
/// The RTCP common header plus the sender SSRC that every packet type starting a compound carries.
pub const RTCP_MIN_LEN: usize = 8;

/// The only RTP/RTCP version in use (RFC 3550 section 5.1).
const VERSION: u8 = 2;
/// RFC 5761 section 4: RTCP packet types live in 192..=223 so that the second octet of a muxed
/// datagram tells RTCP from RTP (whose payload types 64..=95 are off limits for that reason).
const RTCP_PT_RANGE: std::ops::RangeInclusive<u8> = 192..=223;

/// Reads `N` bytes at `at`, or zeroes when the buffer is too short, so that unchecked views
/// cannot panic on hostile input.
#[inline]
fn read<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}

#[inline]
fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(read(buf, at))
}

#[inline]
fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(read(buf, at))
}

#[inline]
fn byte(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

#[inline]
fn write(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = at
        .checked_add(bytes.len())
        .and_then(|end| buf.get_mut(at..end))
    {
        dst.copy_from_slice(bytes);
    }
}

/// Why a datagram is not a well-formed RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    #[error("packet shorter than the 12-byte RTP header")]
    TooShort,
    #[error("RTP version {0} is not 2")]
    BadVersion(u8),
    #[error("CSRC list or header extension runs past the packet end")]
    Truncated,
    #[error("padding length is invalid")]
    BadPadding,
}

impl RtpError {
    /// A static description for places (counters, [`PacketKind::Invalid`]) that must not format.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::TooShort => "packet shorter than the 12-byte RTP header",
            Self::BadVersion(_) => "RTP version is not 2",
            Self::Truncated => "CSRC list or header extension runs past the packet end",
            Self::BadPadding => "RTP padding length is invalid",
        }
    }
}

/// A view of an RTP packet (RFC 3550 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> RtpPacket<T> {
    /// Wraps `buf` without validation; accessors stay panic-free but may read zeroes.
    pub const fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// Wraps `buf` after checking the version, that the CSRC list and header extension fit,
    /// and that the padding count is consistent (RFC 3550 section 5.1, appendix A.1).
    pub fn new_checked(buf: T) -> Result<Self, RtpError> {
        let packet = Self::new_unchecked(buf);
        packet.check()?;
        Ok(packet)
    }

    fn check(&self) -> Result<(), RtpError> {
        let buf = self.buf.as_ref();
        if buf.len() < RTP_HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        let version = self.version();
        if version != VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let csrc_end = RTP_HEADER_LEN + 4 * usize::from(self.csrc_count());
        if self.extension() && csrc_end + 4 > buf.len() {
            return Err(RtpError::Truncated);
        }
        let header_len = self.header_len();
        if header_len > buf.len() {
            return Err(RtpError::Truncated);
        }
        if self.padding() {
            // RFC 3550 5.1: the last octet counts the padding including itself, so zero is
            // malformed, and padding may not reach back into the header.
            let pad = usize::from(byte(buf, buf.len() - 1));
            if pad == 0 || header_len + pad > buf.len() {
                return Err(RtpError::BadPadding);
            }
        }
        Ok(())
    }

    #[inline]
    pub fn version(&self) -> u8 {
        byte(self.buf.as_ref(), 0) >> 6
    }

    #[inline]
    pub fn padding(&self) -> bool {
        byte(self.buf.as_ref(), 0) & 0x20 != 0
    }

    #[inline]
    pub fn extension(&self) -> bool {
        byte(self.buf.as_ref(), 0) & 0x10 != 0
    }

    #[inline]
    pub fn csrc_count(&self) -> u8 {
        byte(self.buf.as_ref(), 0) & 0x0f
    }

    #[inline]
    pub fn marker(&self) -> bool {
        byte(self.buf.as_ref(), 1) & 0x80 != 0
    }

    #[inline]
    pub fn payload_type(&self) -> u8 {
        byte(self.buf.as_ref(), 1) & 0x7f
    }

    #[inline]
    pub fn sequence(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }

    #[inline]
    pub fn timestamp(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }

    #[inline]
    pub fn ssrc(&self) -> u32 {
        be32(self.buf.as_ref(), 8)
    }

    /// Fixed header, CSRC list and header extension (RFC 3550 5.3.1), i.e. where the payload starts.
    #[inline]
    pub fn header_len(&self) -> usize {
        let mut len = RTP_HEADER_LEN + 4 * usize::from(self.csrc_count());
        if self.extension() {
            let words = usize::from(be16(self.buf.as_ref(), len + 2));
            len += 4 + 4 * words;
        }
        len
    }

    /// Bytes of padding at the end, as announced by the last octet when the P bit is set.
    #[inline]
    pub fn padding_len(&self) -> usize {
        let buf = self.buf.as_ref();
        if self.padding() {
            buf.last().map_or(0, |&pad| usize::from(pad))
        } else {
            0
        }
    }

    /// The payload, without header, CSRCs, extension or padding.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let buf = self.buf.as_ref();
        let end = buf.len().saturating_sub(self.padding_len());
        buf.get(self.header_len()..end).unwrap_or(&[])
    }

    pub fn into_inner(self) -> T {
        self.buf
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RtpPacket<T> {
    #[inline]
    pub fn set_marker(&mut self, marker: bool) {
        if let Some(b) = self.buf.as_mut().get_mut(1) {
            *b = (*b & 0x7f) | if marker { 0x80 } else { 0 };
        }
    }

    /// Sets the 7-bit payload type; the high bit of `pt` is ignored so the marker survives.
    #[inline]
    pub fn set_payload_type(&mut self, pt: u8) {
        if let Some(b) = self.buf.as_mut().get_mut(1) {
            *b = (*b & 0x80) | (pt & 0x7f);
        }
    }

    #[inline]
    pub fn set_sequence(&mut self, seq: u16) {
        write(self.buf.as_mut(), 2, &seq.to_be_bytes());
    }

    #[inline]
    pub fn set_timestamp(&mut self, ts: u32) {
        write(self.buf.as_mut(), 4, &ts.to_be_bytes());
    }

    #[inline]
    pub fn set_ssrc(&mut self, ssrc: u32) {
        write(self.buf.as_mut(), 8, &ssrc.to_be_bytes());
    }
}

/// The fraction lost (RFC 3550 6.4.1: lost/expected in 1/256ths) that a receiver reports for
/// the source `ssrc` (`None`: the first report block, whatever its source) in an RTCP compound
/// packet's SR or RR report blocks; `None` when it has no such block. Stops at the first
/// malformed packet of the compound.
pub fn rtcp_fraction_lost(buf: &[u8], ssrc: Option<u32>) -> Option<u8> {
    let mut at = 0;
    while at + 8 <= buf.len() {
        let p = &buf[at..];
        if p[0] >> 6 != VERSION {
            return None;
        }
        let len = (usize::from(be16(p, 2)) + 1) * 4;
        let p = p.get(..len)?;
        let blocks_at = match p[1] {
            200 => 28,
            201 => 8,
            _ => {
                at += len;
                continue;
            }
        };
        for i in 0..usize::from(p[0] & 0x1f) {
            let b = blocks_at + 24 * i;
            if b + 24 > p.len() {
                return None;
            }
            if ssrc.is_none_or(|s| be32(p, b) == s) {
                return Some(p[b + 4]);
            }
        }
        at += len;
    }
    None
}

/// RFC 5761 section 4: distinguishes RTCP from RTP on a muxed port by the second byte
/// (payload type 192..=223 means RTCP).
#[inline]
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.get(1).is_some_and(|pt| RTCP_PT_RANGE.contains(pt))
}

/// Why a datagram is not a well-formed (compound) RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    #[error("RTCP packet shorter than its header plus sender SSRC")]
    TooShort,
    #[error("RTCP version {0} is not 2")]
    BadVersion(u8),
    #[error("RTCP packet type {0} is outside 192..=223")]
    BadPacketType(u8),
    #[error("RTCP length fields do not chain exactly to the datagram end")]
    BadLength,
    #[error("RTCP padding is invalid or not on the last packet")]
    BadPadding,
}

impl RtcpError {
    /// A static description for places (counters, [`PacketKind::Invalid`]) that must not format.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::TooShort => "RTCP packet shorter than its header plus sender SSRC",
            Self::BadVersion(_) => "RTCP version is not 2",
            Self::BadPacketType(_) => "RTCP packet type is outside 192..=223",
            Self::BadLength => "RTCP length fields do not chain exactly to the datagram end",
            Self::BadPadding => "RTCP padding is invalid or not on the last packet",
        }
    }
}

/// A view of the first packet of an RTCP compound (RFC 3550 section 6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> RtcpPacket<T> {
    /// Wraps `buf` without validation; accessors stay panic-free but may read zeroes.
    pub const fn new_unchecked(buf: T) -> Self {
        Self { buf }
    }

    /// Wraps `buf` after the RFC 3550 appendix A.2 validity checks: every packet of the compound
    /// is version 2, the first has an RFC 5761 RTCP type and room for the sender SSRC, the
    /// length fields chain exactly to the end of the datagram (section 6.1), and only the last
    /// packet carries padding (section 6.4.1).
    ///
    /// The first packet is deliberately not required to be SR or RR (A.2 suggests it), because
    /// RFC 5506 reduced-size RTCP is legitimate traffic a relay must pass.
    pub fn new_checked(buf: T) -> Result<Self, RtcpError> {
        let packet = Self::new_unchecked(buf);
        packet.check()?;
        Ok(packet)
    }

    fn check(&self) -> Result<(), RtcpError> {
        let buf = self.buf.as_ref();
        if buf.len() < RTCP_MIN_LEN {
            return Err(RtcpError::TooShort);
        }
        let version = self.version();
        if version != VERSION {
            return Err(RtcpError::BadVersion(version));
        }
        let pt = self.packet_type();
        if !RTCP_PT_RANGE.contains(&pt) {
            return Err(RtcpError::BadPacketType(pt));
        }
        if self.packet_len() < RTCP_MIN_LEN {
            return Err(RtcpError::TooShort);
        }
        let mut offset = 0;
        while offset < buf.len() {
            let rest = &buf[offset..];
            if rest.len() < 4 {
                return Err(RtcpError::BadLength);
            }
            let version = rest[0] >> 6;
            if version != VERSION {
                return Err(RtcpError::BadVersion(version));
            }
            let len = (usize::from(be16(rest, 2)) + 1) * 4;
            if len > rest.len() {
                return Err(RtcpError::BadLength);
            }
            if rest[0] & 0x20 != 0 {
                // RFC 3550 6.4.1: padding may only be added to the last packet of a compound,
                // and its count (last octet, including itself) must stay inside that packet's body.
                let pad = usize::from(rest[rest.len() - 1]);
                if len != rest.len() || pad == 0 || pad > len - 4 {
                    return Err(RtcpError::BadPadding);
                }
            }
            offset += len;
        }
        Ok(())
    }

    #[inline]
    pub fn version(&self) -> u8 {
        byte(self.buf.as_ref(), 0) >> 6
    }

    #[inline]
    pub fn padding(&self) -> bool {
        byte(self.buf.as_ref(), 0) & 0x20 != 0
    }

    /// Reception report count, source count or feedback message type, depending on the packet type.
    #[inline]
    pub fn count(&self) -> u8 {
        byte(self.buf.as_ref(), 0) & 0x1f
    }

    #[inline]
    pub fn packet_type(&self) -> u8 {
        byte(self.buf.as_ref(), 1)
    }

    /// The raw length field: the packet length in 32-bit words minus one.
    #[inline]
    pub fn length_words(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }

    /// Length in bytes of the first packet of the compound.
    #[inline]
    pub fn packet_len(&self) -> usize {
        (usize::from(self.length_words()) + 1) * 4
    }

    #[inline]
    pub fn sender_ssrc(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }

    pub fn into_inner(self) -> T {
        self.buf
    }
}

/// What a datagram received on an RTP port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Rtp,
    Rtcp,
    Invalid(&'static str),
}

/// Classifies a datagram received on an RTP port: RFC 5761 demultiplexing, then the matching
/// checked constructor, so that `Rtp`/`Rtcp` guarantee the corresponding view is valid.
pub fn classify(buf: &[u8]) -> PacketKind {
    if is_rtcp(buf) {
        match RtcpPacket::new_checked(buf) {
            Ok(_) => PacketKind::Rtcp,
            Err(e) => PacketKind::Invalid(e.as_str()),
        }
    } else {
        match RtpPacket::new_checked(buf) {
            Ok(_) => PacketKind::Rtp,
            Err(e) => PacketKind::Invalid(e.as_str()),
        }
    }
}

/// Like [`classify`], checking only what a relay can check on any RTP flavour: SRTP and SRTCP
/// carry a trailer (tag, SRTCP index) after the packet and encrypt the RTP padding count, so the
/// RTCP compound need not end at the datagram end and RTP padding is not checked. The version,
/// the fixed headers, the CSRC list, the header extension and the first RTCP packet's length
/// must still fit.
pub fn classify_relay(buf: &[u8]) -> PacketKind {
    if buf.len() < RTCP_MIN_LEN.min(RTP_HEADER_LEN) || buf[0] >> 6 != 2 {
        return PacketKind::Invalid("not RTP version 2");
    }
    if is_rtcp(buf) {
        let words = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if buf.len() < RTCP_MIN_LEN || (words + 1) * 4 > buf.len() {
            return PacketKind::Invalid("RTCP length runs past the packet end");
        }
        return PacketKind::Rtcp;
    }
    if buf.len() < RTP_HEADER_LEN {
        return PacketKind::Invalid("packet shorter than the 12-byte RTP header");
    }
    let mut end = RTP_HEADER_LEN + 4 * (buf[0] & 0x0f) as usize;
    if buf[0] & 0x10 != 0 {
        if buf.len() < end + 4 {
            return PacketKind::Invalid("CSRC list or header extension runs past the packet end");
        }
        end += 4 + 4 * u16::from_be_bytes([buf[end + 2], buf[end + 3]]) as usize;
    }
    if end > buf.len() {
        return PacketKind::Invalid("CSRC list or header extension runs past the packet end");
    }
    PacketKind::Rtp
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn relay_classification_accepts_srtcp_trailers_and_rejects_broken_headers() {
        // An RTCP RR (1 word after the header: 8 bytes) followed by an SRTCP index and a tag.
        let mut srtcp = vec![0x80, 201, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef];
        srtcp.extend_from_slice(&[0x80, 0, 0, 1]);
        srtcp.extend_from_slice(&[0xaa; 10]);
        assert!(matches!(classify(&srtcp), PacketKind::Invalid(_)));
        assert!(matches!(classify_relay(&srtcp), PacketKind::Rtcp));
        let mut long = srtcp.clone();
        long[3] = 9;
        assert!(matches!(classify_relay(&long), PacketKind::Invalid(_)));
        // SRTP with the padding bit: the count is encrypted, so it is not checked.
        let mut srtp = PCMU_HEADER.to_vec();
        srtp[0] |= 0x20;
        srtp.extend_from_slice(&[0x00; 20]);
        assert!(matches!(classify_relay(&srtp), PacketKind::Rtp));
        let mut csrc = PCMU_HEADER.to_vec();
        csrc[0] |= 0x0f;
        assert!(matches!(classify_relay(&csrc), PacketKind::Invalid(_)));
        assert!(matches!(
            classify_relay(&[0x40; 20]),
            PacketKind::Invalid(_)
        ));
        assert!(matches!(classify_relay(&[]), PacketKind::Invalid(_)));
    }

    proptest! {
        #[test]
        fn relay_classification_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = classify_relay(&bytes);
        }
    }

    /// PCMU (PT 0), seq 0x1234, ts 0x0001F400, SSRC 0xDEADBEEF, 160 bytes of mu-law silence.
    const PCMU_HEADER: [u8; 12] = [
        0x80, 0x00, 0x12, 0x34, 0x00, 0x01, 0xf4, 0x00, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn pcmu() -> Vec<u8> {
        let mut p = PCMU_HEADER.to_vec();
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    /// Marker set, PT 8 (PCMA), two CSRCs, 4-byte payload.
    const WITH_CSRCS: [u8; 24] = [
        0x82, 0x88, 0x00, 0x07, 0x00, 0x00, 0x03, 0x20, 0x11, 0x22, 0x33, 0x44, // header
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, // CSRCs
        0xd5, 0xd5, 0xd5, 0xd5, // payload
    ];

    /// PT 111 (opus), RFC 8285 one-byte header extension of one word, 3-byte payload.
    const WITH_EXTENSION: [u8; 23] = [
        0x90, 0x6f, 0xff, 0xff, 0x12, 0x34, 0x56, 0x78, 0x01, 0x02, 0x03, 0x04, // header
        0xbe, 0xde, 0x00, 0x01, // extension profile and length (1 word)
        0x10, 0xaa, 0x00, 0x00, // ext data: id 1, len 1, value 0xaa, padding
        0x01, 0x02, 0x03, // payload
    ];

    /// PT 0, 2-byte payload followed by 4 bytes of padding (count 4 in the last octet).
    const WITH_PADDING: [u8; 18] = [
        0xa0, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0xa0, 0x00, 0x00, 0x00, 0x09, // header
        0x7f, 0x7e, // payload
        0x00, 0x00, 0x00, 0x04, // padding
    ];

    /// SR (no report blocks) followed by SDES with one CNAME chunk.
    const SR_SDES: [u8; 48] = [
        0x80, 0xc8, 0x00, 0x06, 0xde, 0xad, 0xbe, 0xef, // SR header, sender SSRC
        0xe6, 0x3a, 0x1b, 0x2c, 0x00, 0x00, 0x00, 0x00, // NTP timestamp
        0x00, 0x01, 0xf4, 0x00, // RTP timestamp
        0x00, 0x00, 0x00, 0x64, 0x00, 0x00, 0x3e, 0x80, // packet and octet counts
        0x81, 0xca, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef, // SDES header, chunk SSRC
        0x01, 0x06, b'u', b'@', b'h', b'o', b's', b't', // CNAME "u@host"
        0x00, 0x00, 0x00, 0x00, // end of items, then null padding to the word boundary
    ];

    #[derive(Debug)]
    struct RtpExpect {
        marker: bool,
        pt: u8,
        seq: u16,
        ts: u32,
        ssrc: u32,
        cc: u8,
        header_len: usize,
        payload: &'static [u8],
    }

    #[test]
    fn rtp_table() {
        let pcmu = pcmu();
        let cases: [(&str, &[u8], Result<RtpExpect, RtpError>); 12] = [
            (
                "pcmu",
                &pcmu,
                Ok(RtpExpect {
                    marker: false,
                    pt: 0,
                    seq: 0x1234,
                    ts: 0x0001_f400,
                    ssrc: 0xdead_beef,
                    cc: 0,
                    header_len: 12,
                    payload: &[0xff; 160],
                }),
            ),
            (
                "csrcs",
                &WITH_CSRCS,
                Ok(RtpExpect {
                    marker: true,
                    pt: 8,
                    seq: 7,
                    ts: 800,
                    ssrc: 0x1122_3344,
                    cc: 2,
                    header_len: 20,
                    payload: &[0xd5; 4],
                }),
            ),
            (
                "extension",
                &WITH_EXTENSION,
                Ok(RtpExpect {
                    marker: false,
                    pt: 111,
                    seq: 0xffff,
                    ts: 0x1234_5678,
                    ssrc: 0x0102_0304,
                    cc: 0,
                    header_len: 20,
                    payload: &[1, 2, 3],
                }),
            ),
            (
                "padding",
                &WITH_PADDING,
                Ok(RtpExpect {
                    marker: false,
                    pt: 0,
                    seq: 1,
                    ts: 160,
                    ssrc: 9,
                    cc: 0,
                    header_len: 12,
                    payload: &[0x7f, 0x7e],
                }),
            ),
            (
                "header only",
                &PCMU_HEADER,
                Ok(RtpExpect {
                    marker: false,
                    pt: 0,
                    seq: 0x1234,
                    ts: 0x0001_f400,
                    ssrc: 0xdead_beef,
                    cc: 0,
                    header_len: 12,
                    payload: &[],
                }),
            ),
            ("empty", &[], Err(RtpError::TooShort)),
            ("11 bytes", &PCMU_HEADER[..11], Err(RtpError::TooShort)),
            (
                "version 1",
                &[0x40, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
                Err(RtpError::BadVersion(1)),
            ),
            ("csrcs cut", &WITH_CSRCS[..16], Err(RtpError::Truncated)),
            (
                "extension header cut",
                &WITH_EXTENSION[..14],
                Err(RtpError::Truncated),
            ),
            (
                "extension data cut",
                &WITH_EXTENSION[..18],
                Err(RtpError::Truncated),
            ),
            (
                "padding zero",
                &[0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x55, 0x00],
                Err(RtpError::BadPadding),
            ),
        ];
        for (name, bytes, expect) in cases {
            let got = RtpPacket::new_checked(bytes);
            match (got, expect) {
                (Ok(p), Ok(e)) => {
                    assert_eq!(p.version(), 2, "{name}");
                    assert_eq!(p.marker(), e.marker, "{name}");
                    assert_eq!(p.payload_type(), e.pt, "{name}");
                    assert_eq!(p.sequence(), e.seq, "{name}");
                    assert_eq!(p.timestamp(), e.ts, "{name}");
                    assert_eq!(p.ssrc(), e.ssrc, "{name}");
                    assert_eq!(p.csrc_count(), e.cc, "{name}");
                    assert_eq!(p.header_len(), e.header_len, "{name}");
                    assert_eq!(p.payload(), e.payload, "{name}");
                }
                (Err(g), Err(e)) => assert_eq!(g, e, "{name}"),
                (g, e) => panic!("{name}: got {g:?}, expected {e:?}"),
            }
        }
    }

    #[test]
    fn rtp_padding_into_header_is_rejected() {
        let mut p = WITH_PADDING;
        p[17] = 7; // 12-byte header + 7 > 18
        assert_eq!(RtpPacket::new_checked(&p[..]), Err(RtpError::BadPadding));
        p[17] = 6; // exactly header + padding: empty payload is fine
        let pkt = RtpPacket::new_checked(&p[..]).unwrap();
        assert_eq!(pkt.payload(), &[] as &[u8]);
        // P bit set with nothing after the header: the count octet would be header.
        let mut h = PCMU_HEADER;
        h[0] |= 0x20;
        h[11] = 1;
        assert_eq!(RtpPacket::new_checked(&h[..]), Err(RtpError::BadPadding));
    }

    #[test]
    fn rtp_setters_round_trip() {
        let mut p = RtpPacket::new_checked(pcmu()).unwrap();
        p.set_marker(true);
        p.set_payload_type(0xff);
        p.set_sequence(0xabcd);
        p.set_timestamp(0x0102_0304);
        p.set_ssrc(0xcafe_f00d);
        assert!(p.marker());
        assert_eq!(p.payload_type(), 0x7f);
        p.set_payload_type(8);
        assert!(p.marker(), "payload type setter must keep the marker");
        assert_eq!(p.payload_type(), 8);
        p.set_marker(false);
        assert_eq!(p.payload_type(), 8);
        assert_eq!(p.sequence(), 0xabcd);
        assert_eq!(p.timestamp(), 0x0102_0304);
        assert_eq!(p.ssrc(), 0xcafe_f00d);
        assert_eq!(p.payload(), &[0xff; 160]);
        let buf = p.into_inner();
        assert_eq!(
            buf[..12],
            [0x80, 0x08, 0xab, 0xcd, 1, 2, 3, 4, 0xca, 0xfe, 0xf0, 0x0d]
        );
    }

    #[test]
    fn unchecked_setters_on_short_buffer_do_nothing() {
        let mut buf = [0x80u8, 0x00, 0x00];
        let mut p = RtpPacket::new_unchecked(&mut buf[..]);
        p.set_sequence(0xffff);
        p.set_timestamp(1);
        p.set_ssrc(1);
        p.set_marker(true);
        assert_eq!(buf, [0x80, 0x80, 0x00]);
    }

    #[test]
    fn fraction_lost_is_found_in_sr_and_rr_blocks_of_a_compound() {
        fn block(ssrc: u32, fraction: u8) -> Vec<u8> {
            let mut b = ssrc.to_be_bytes().to_vec();
            b.push(fraction);
            b.extend([0u8; 19]);
            b
        }
        // RR with two blocks, then SDES.
        let mut rr = vec![0x82, 201, 0, 13, 0, 0, 0, 9];
        rr.extend(block(0x1111, 10));
        rr.extend(block(0x2222, 64));
        let mut compound = rr.clone();
        compound.extend([0x81, 202, 0, 1, 0, 0, 0, 9]);
        assert_eq!(rtcp_fraction_lost(&compound, Some(0x2222)), Some(64));
        assert_eq!(rtcp_fraction_lost(&compound, Some(0x1111)), Some(10));
        assert_eq!(rtcp_fraction_lost(&compound, Some(0x3333)), None);
        assert_eq!(
            rtcp_fraction_lost(&compound, None),
            Some(10),
            "the first block"
        );
        // SR: blocks after the 20-byte sender info; an SDES first is skipped.
        let mut sr = vec![0x81, 200, 0, 12, 0, 0, 0, 9];
        sr.extend([0u8; 20]);
        sr.extend(block(0x2222, 26));
        let mut compound = vec![0x81, 202, 0, 1, 0, 0, 0, 9];
        compound.extend(&sr);
        assert_eq!(rtcp_fraction_lost(&compound, Some(0x2222)), Some(26));
        assert_eq!(
            rtcp_fraction_lost(&compound, None),
            Some(26),
            "past the SDES"
        );
        // A count larger than the packet, or a length past the end: nothing, no panic.
        let mut bad = rr.clone();
        bad[0] = 0x85;
        assert_eq!(rtcp_fraction_lost(&bad, Some(0x9999)), None);
        assert_eq!(rtcp_fraction_lost(&rr[..20], Some(0x2222)), None);
        assert_eq!(rtcp_fraction_lost(&[], Some(1)), None);
        let mut no_blocks = rr[..8].to_vec();
        no_blocks[0] = 0x80;
        no_blocks[3] = 1;
        assert_eq!(rtcp_fraction_lost(&no_blocks, None), None);
    }

    #[test]
    fn rtcp_demux_by_second_octet() {
        assert!(is_rtcp(&SR_SDES));
        assert!(!is_rtcp(&pcmu()));
        // RTP PT 72..=76 with the marker set looks like 200..=204: why RFC 5761 forbids 64..=95.
        assert!(is_rtcp(&[0x80, 0x80 | 72]));
        assert!(!is_rtcp(&[0x80, 0xe0]));
        assert!(!is_rtcp(&[0x80]));
        assert!(!is_rtcp(&[]));
    }

    /// Packet type, count, length words and sender SSRC of the first packet.
    type RtcpFields = (u8, u8, u16, u32);

    #[test]
    fn rtcp_table() {
        let mut bad_len = SR_SDES;
        bad_len[3] = 0x0c; // SR claims more words than the whole datagram holds
        let mut misaligned = SR_SDES;
        misaligned[3] = 0x07; // one word too many: the next "header" is the SDES SSRC
        let mut too_long = SR_SDES;
        too_long[31] = 0x05; // SDES runs past the datagram end
        let mut bad_inner_version = SR_SDES;
        bad_inner_version[28] = 0x41;
        let mut padding_on_first = SR_SDES;
        padding_on_first[0] |= 0x20;
        let mut padded_last = SR_SDES;
        padded_last[28] |= 0x20;
        padded_last[47] = 4;
        let mut pad_too_big = padded_last;
        pad_too_big[47] = 17; // SDES body is 16 bytes
        let mut rtp_pt = SR_SDES;
        rtp_pt[1] = 0x60;
        let zero_len_first: [u8; 8] = [0x80, 0xc9, 0x00, 0x00, 0x80, 0xc9, 0x00, 0x00];
        let mut trailing = SR_SDES.to_vec();
        trailing.extend_from_slice(&[0, 0]);

        let cases: [(&str, &[u8], Result<RtcpFields, RtcpError>); 14] = [
            ("sr+sdes", &SR_SDES, Ok((200, 0, 6, 0xdead_beef))),
            ("sr alone", &SR_SDES[..28], Ok((200, 0, 6, 0xdead_beef))),
            ("sdes alone", &SR_SDES[28..], Ok((202, 1, 4, 0xdead_beef))),
            ("padded last", &padded_last, Ok((200, 0, 6, 0xdead_beef))),
            ("bad length", &bad_len, Err(RtcpError::BadLength)),
            ("misaligned", &misaligned, Err(RtcpError::BadVersion(3))),
            ("runs past end", &too_long, Err(RtcpError::BadLength)),
            ("trailing bytes", &trailing, Err(RtcpError::BadLength)),
            ("truncated sr", &SR_SDES[..20], Err(RtcpError::BadLength)),
            (
                "inner version",
                &bad_inner_version,
                Err(RtcpError::BadVersion(1)),
            ),
            (
                "padding on first",
                &padding_on_first,
                Err(RtcpError::BadPadding),
            ),
            ("padding too big", &pad_too_big, Err(RtcpError::BadPadding)),
            ("rtp pt", &rtp_pt, Err(RtcpError::BadPacketType(0x60))),
            ("no ssrc", &zero_len_first, Err(RtcpError::TooShort)),
        ];
        for (name, bytes, expect) in cases {
            let got = RtcpPacket::new_checked(bytes).map(|p| {
                assert_eq!(p.version(), 2, "{name}");
                (
                    p.packet_type(),
                    p.count(),
                    p.length_words(),
                    p.sender_ssrc(),
                )
            });
            assert_eq!(got, expect, "{name}");
        }
        assert_eq!(
            RtcpPacket::new_checked(&SR_SDES[..7]),
            Err(RtcpError::TooShort)
        );
        assert!(!RtcpPacket::new_checked(&padded_last[..]).unwrap().padding());
    }

    #[test]
    fn classify_table() {
        let mut bad_rtcp = SR_SDES;
        bad_rtcp[3] = 0x0c;
        let cases: [(&[u8], PacketKind); 7] = [
            (&pcmu(), PacketKind::Rtp),
            (&WITH_EXTENSION, PacketKind::Rtp),
            (&SR_SDES, PacketKind::Rtcp),
            (
                &bad_rtcp,
                PacketKind::Invalid(RtcpError::BadLength.as_str()),
            ),
            (&[], PacketKind::Invalid(RtpError::TooShort.as_str())),
            // A STUN binding request (first two bits zero) on the media port.
            (
                &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0],
                PacketKind::Invalid(RtpError::BadVersion(0).as_str()),
            ),
            (
                &WITH_CSRCS[..13],
                PacketKind::Invalid(RtpError::Truncated.as_str()),
            ),
        ];
        for (bytes, expect) in cases {
            assert_eq!(classify(bytes), expect, "{bytes:02x?}");
        }
    }

    fn fixtures() -> Vec<Vec<u8>> {
        vec![
            pcmu(),
            WITH_CSRCS.to_vec(),
            WITH_EXTENSION.to_vec(),
            WITH_PADDING.to_vec(),
            SR_SDES.to_vec(),
        ]
    }

    /// Touches every accessor; returns the payload bounds so that the optimiser keeps the calls.
    fn exercise(bytes: &[u8]) -> usize {
        let rtp = RtpPacket::new_unchecked(bytes);
        let rtcp = RtcpPacket::new_unchecked(bytes);
        let _ = (
            rtp.version(),
            rtp.padding(),
            rtp.extension(),
            rtp.csrc_count(),
            rtp.marker(),
            rtp.payload_type(),
            rtp.sequence(),
            rtp.timestamp(),
            rtp.ssrc(),
            rtcp.version(),
            rtcp.padding(),
            rtcp.count(),
            rtcp.packet_type(),
            rtcp.length_words(),
            rtcp.sender_ssrc(),
            classify(bytes),
        );
        if let Ok(p) = RtpPacket::new_checked(bytes) {
            assert!(p.header_len() + p.payload().len() + p.padding_len() == bytes.len());
        }
        if let Ok(p) = RtcpPacket::new_checked(bytes) {
            assert!(p.packet_len() <= bytes.len());
        }
        rtp.payload().len() + rtp.header_len()
    }

    #[test]
    fn every_prefix_is_safe() {
        for f in fixtures() {
            for end in 0..=f.len() {
                exercise(&f[..end]);
                let mut owned = f[..end].to_vec();
                let mut p = RtpPacket::new_unchecked(&mut owned[..]);
                p.set_marker(true);
                p.set_payload_type(1);
                p.set_sequence(1);
                p.set_timestamp(1);
                p.set_ssrc(1);
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            exercise(&bytes);
        }

        /// Forcing version 2 and plausible flags reaches the CSRC/extension/padding paths that
        /// uniformly random bytes rarely get past.
        #[test]
        fn version2_bytes_never_panic(
            first in 0x80u8..=0xbf,
            second in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut bytes = vec![first, second];
            bytes.extend_from_slice(&rest);
            exercise(&bytes);
        }
    }
}
