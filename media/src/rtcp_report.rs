//! What an endpoint's RTCP says about call quality (RFC 3550 6.4): the sender report's NTP
//! timestamp (so that a later receiver report's LSR/DLSR give a round-trip time) and the report
//! blocks (loss, jitter). Read without allocating from the plain (or already unprotected)
//! compound packet the relay forwards; the control plane turns it into RTT and MOS.

/// Report blocks kept from one compound packet; an endpoint reports on one or two sources.
pub const MAX_BLOCKS: usize = 2;

/// One report block (RFC 3550 6.4.1): what the sender of the RTCP knows about the stream from
/// `ssrc` it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Lost since the previous report, in 1/256ths.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost (24-bit signed).
    pub cumulative_lost: i32,
    pub ext_highest_seq: u32,
    /// Interarrival jitter, in timestamp units of the stream's clock.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from `ssrc` (0: none yet).
    pub lsr: u32,
    /// Delay since that SR was received, in 1/65536 s.
    pub dlsr: u32,
}

/// The quality-relevant content of one compound RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtcpReports {
    /// (sender SSRC, middle 32 bits of its NTP timestamp) when the compound holds an SR.
    pub sender_report: Option<(u32, u32)>,
    /// The SSRC of the reporter (of the SR or RR).
    pub reporter: u32,
    pub blocks: [ReportBlock; MAX_BLOCKS],
    pub n_blocks: u8,
}

impl RtcpReports {
    pub fn blocks(&self) -> &[ReportBlock] {
        &self.blocks[..usize::from(self.n_blocks)]
    }
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// The SR and RR content of a compound packet; `None` when it has neither (or its first
/// packet is malformed). Stops at the first malformed packet of the compound, keeping what
/// came before.
pub fn parse(buf: &[u8]) -> Option<RtcpReports> {
    let mut out = RtcpReports::default();
    let mut found = false;
    let mut at = 0;
    while at + 8 <= buf.len() {
        let p = &buf[at..];
        if p[0] >> 6 != 2 {
            break;
        }
        let len = (usize::from(u16::from_be_bytes([p[2], p[3]])) + 1) * 4;
        let Some(p) = p.get(..len) else {
            break;
        };
        let blocks_at = match p[1] {
            // SR: header, SSRC, NTP (8), RTP timestamp, packet and octet counts.
            200 if p.len() >= 28 => {
                out.sender_report = Some((be32(p, 4), be32(p, 10)));
                28
            }
            // RR: header and SSRC. A length of 0 says 4 bytes: no room for the SSRC.
            201 if p.len() >= 8 => 8,
            _ => {
                at += len;
                continue;
            }
        };
        found = true;
        out.reporter = be32(p, 4);
        for i in 0..usize::from(p[0] & 0x1f) {
            let b = blocks_at + 24 * i;
            if b + 24 > p.len() || usize::from(out.n_blocks) == MAX_BLOCKS {
                break;
            }
            // Sign-extend the 24-bit cumulative count.
            let cumulative = (be32(p, b + 4) << 8) as i32 >> 8;
            out.blocks[usize::from(out.n_blocks)] = ReportBlock {
                ssrc: be32(p, b),
                fraction_lost: p[b + 4],
                cumulative_lost: cumulative,
                ext_highest_seq: be32(p, b + 8),
                jitter: be32(p, b + 12),
                lsr: be32(p, b + 16),
                dlsr: be32(p, b + 20),
            };
            out.n_blocks += 1;
        }
        at += len;
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SR from 0x11111111 with NTP 0xAAAA_BBBB_CCCC_DDDD and one block on 0x22222222,
    /// followed by an SDES (skipped).
    fn sr_with_block() -> Vec<u8> {
        let mut p = vec![0x81, 200, 0, 12];
        p.extend_from_slice(&0x1111_1111u32.to_be_bytes());
        p.extend_from_slice(&[0xAA, 0xAA, 0xBB, 0xBB, 0xCC, 0xCC, 0xDD, 0xDD]);
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&0x2222_2222u32.to_be_bytes());
        p.extend_from_slice(&[64, 0xFF, 0xFF, 0xFE]); // 25% lately, -2 in all
        p.extend_from_slice(&70_000u32.to_be_bytes());
        p.extend_from_slice(&80u32.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(&0x0001_8000u32.to_be_bytes());
        p.extend_from_slice(&[0x81, 202, 0, 1, 0x11, 0x11, 0x11, 0x11]);
        p
    }

    /// Found by the `rtp` fuzz target (fuzz/crashes/rtp/): an RR whose length field is 0
    /// (4 bytes, no SSRC) in a compound long enough to pass the outer check read past it.
    #[test]
    fn an_rr_too_short_for_its_ssrc_is_skipped() {
        let mut p = vec![0x81, 201, 0, 0];
        p.extend_from_slice(&[0x81, 202, 0, 1, 0x11, 0x11, 0x11, 0x11]);
        assert_eq!(parse(&p), None);
        let mut sr_after = vec![0x80, 201, 0, 0];
        sr_after.extend_from_slice(&sr_with_block());
        assert_eq!(parse(&sr_after), parse(&sr_with_block()));
    }

    #[test]
    fn sender_and_receiver_reports_are_read() {
        let r = parse(&sr_with_block()).unwrap();
        assert_eq!(r.sender_report, Some((0x1111_1111, 0xBBBB_CCCC)));
        assert_eq!(r.reporter, 0x1111_1111);
        assert_eq!(
            r.blocks(),
            &[ReportBlock {
                ssrc: 0x2222_2222,
                fraction_lost: 64,
                cumulative_lost: -2,
                ext_highest_seq: 70_000,
                jitter: 80,
                lsr: 0x1234_5678,
                dlsr: 0x0001_8000,
            }]
        );
        let mut rr = vec![0x80, 201, 0, 1];
        rr.extend_from_slice(&7u32.to_be_bytes());
        let r = parse(&rr).unwrap();
        assert_eq!(
            (r.sender_report, r.reporter, r.blocks().len()),
            (None, 7, 0)
        );
    }

    #[test]
    fn truncated_and_foreign_packets_give_what_is_whole() {
        let sr = sr_with_block();
        for n in 0..sr.len() {
            // Never panics; the SR counts only once its 52 bytes are there.
            let r = parse(&sr[..n]);
            assert_eq!(r.is_some(), n >= 52, "{n} bytes");
        }
        assert_eq!(parse(&[0x81, 202, 0, 1, 1, 2, 3, 4]), None, "SDES only");
        assert_eq!(parse(&[0x40, 200, 0, 6]), None, "version 1");
    }
}
