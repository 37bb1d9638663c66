//! The benchmark's test packet: a 172-byte RTP packet (12-byte header, 160-byte PCMU payload)
//! whose payload carries what the receiver needs to prove the relay passed it through unchanged.
//!
//! Payload layout (offsets from the start of the packet):
//! `12..20` CLOCK_MONOTONIC send time in ns, `20..24` step id, `24..28` call index,
//! `28..32` per-call packet counter, `32..172` a pattern derived from call and counter.
//! The RTP sequence number and timestamp are derived from the counter too, so a relay that
//! rewrote them (sluice and rtpengine must not, for plain forwarding) is counted as an error.

pub const PACKET_LEN: usize = 172;
const HEADER_LEN: usize = 12;
const SAMPLES_PER_PACKET: u32 = 160;
const PT_PCMU: u8 = 0;
const SSRC_BASE: u32 = 0x5100_0000;
const PATTERN_START: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub step: u32,
    pub call: u32,
    pub counter: u32,
}

fn pattern_byte(call: u32, counter: u32, j: usize) -> u8 {
    let seed = counter.wrapping_mul(0x9E37_79B1) ^ call.wrapping_mul(0x85EB_CA6B);
    (seed >> 24) as u8 ^ (j as u8).wrapping_mul(37)
}

pub fn write(buf: &mut [u8; PACKET_LEN], s: &Stamp) {
    buf[0] = 0x80; // RTP version 2, no padding, extension or CSRCs
    buf[1] = PT_PCMU;
    buf[2..4].copy_from_slice(&(s.counter as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&s.counter.wrapping_mul(SAMPLES_PER_PACKET).to_be_bytes());
    buf[8..12].copy_from_slice(&(SSRC_BASE ^ s.call).to_be_bytes());
    buf[12..20].copy_from_slice(&s.sent_ns.to_be_bytes());
    buf[20..24].copy_from_slice(&s.step.to_be_bytes());
    buf[24..28].copy_from_slice(&s.call.to_be_bytes());
    buf[28..32].copy_from_slice(&s.counter.to_be_bytes());
    for (j, b) in buf.iter_mut().enumerate().skip(PATTERN_START) {
        *b = pattern_byte(s.call, s.counter, j);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact(Stamp),
    /// Anything that does not match what the sender wrote: length, header, payload, or a
    /// packet of another call delivered to this call's socket.
    Mangled,
    /// An SRTP packet (`check_srtp`): what stays in clear matched; the payload is encrypted.
    Protected {
        seq: u16,
    },
}

/// SRTP of AES_CM_128_HMAC_SHA1_80: the packet plus a 10-byte authentication tag.
pub const SRTP_LEN: usize = PACKET_LEN + 10;

/// Checks an SRTP packet (`bench forward --srtp`) that arrived on the socket of call `call`:
/// length, RTP version and type, and SSRC, the parts SRTP leaves in clear. The tag is not
/// verified (the harness does not hold the relay's key).
pub fn check_srtp(pkt: &[u8], call: u32) -> Verdict {
    if pkt.len() != SRTP_LEN
        || pkt[0] != 0x80
        || pkt[1] != PT_PCMU
        || be32(pkt, 8) != SSRC_BASE ^ call
    {
        return Verdict::Mangled;
    }
    Verdict::Protected {
        seq: u16::from_be_bytes([pkt[2], pkt[3]]),
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks a packet that arrived on the socket of call `call`.
pub fn check(pkt: &[u8], call: u32) -> Verdict {
    if pkt.len() != PACKET_LEN || pkt[0] != 0x80 || pkt[1] != PT_PCMU {
        return Verdict::Mangled;
    }
    let counter = be32(pkt, 28);
    let header_ok = u16::from_be_bytes([pkt[2], pkt[3]]) == counter as u16
        && be32(pkt, 4) == counter.wrapping_mul(SAMPLES_PER_PACKET)
        && be32(pkt, 8) == SSRC_BASE ^ call
        && be32(pkt, 24) == call;
    if !header_ok {
        return Verdict::Mangled;
    }
    let pattern_ok = pkt[PATTERN_START..]
        .iter()
        .enumerate()
        .all(|(k, &b)| b == pattern_byte(call, counter, k + PATTERN_START));
    if !pattern_ok {
        return Verdict::Mangled;
    }
    Verdict::Intact(Stamp {
        sent_ns: u64::from_be_bytes(pkt[12..20].try_into().expect("8 bytes")),
        step: be32(pkt, 20),
        call,
        counter,
    })
}

const _: () = assert!(HEADER_LEN + 160 == PACKET_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            sent_ns: 123_456_789,
            step: 7,
            call: 3,
            counter: 70_000,
        }
    }

    #[test]
    fn written_packet_checks_intact() {
        let mut buf = [0; PACKET_LEN];
        write(&mut buf, &stamp());
        assert_eq!(check(&buf, 3), Verdict::Intact(stamp()));
        // Sequence number is the counter mod 2^16, as RTP wraps.
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 70_000u32 as u16);
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let mut buf = [0; PACKET_LEN];
        write(&mut buf, &stamp());
        for i in 0..PACKET_LEN {
            // Send time and step id carry no redundancy: a flipped bit there shows up as a
            // latency outlier or a late packet instead.
            if (12..24).contains(&i) {
                continue;
            }
            let mut bad = buf;
            bad[i] ^= 0x01;
            assert_eq!(check(&bad, 3), Verdict::Mangled, "byte {i}");
        }
    }

    #[test]
    fn srtp_checks_what_stays_in_clear() {
        let mut buf = [0; PACKET_LEN];
        write(&mut buf, &stamp());
        let mut srtp = buf.to_vec();
        srtp[12..].iter_mut().for_each(|b| *b ^= 0x5a); // "encrypted"
        srtp.extend_from_slice(&[0xaa; 10]); // "tag"
        assert_eq!(
            check_srtp(&srtp, 3),
            Verdict::Protected {
                seq: 70_000u32 as u16
            }
        );
        assert_eq!(
            check_srtp(&srtp, 4),
            Verdict::Mangled,
            "another call's SSRC"
        );
        assert_eq!(check_srtp(&buf, 3), Verdict::Mangled, "172 bytes: in clear");
        assert_eq!(check_srtp(&srtp[..181], 3), Verdict::Mangled);
    }

    #[test]
    fn wrong_call_or_length_is_caught() {
        let mut buf = [0; PACKET_LEN];
        write(&mut buf, &stamp());
        assert_eq!(check(&buf, 4), Verdict::Mangled);
        assert_eq!(check(&buf[..171], 3), Verdict::Mangled);
    }
}
