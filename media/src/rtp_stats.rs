//! Per-source receive statistics as specified by RFC 3550 appendix A: sequence number tracking
//! with probation, wraparound and restart detection (A.1), cumulative and interval loss (A.3),
//! and the interarrival jitter estimator (A.8).
//!
//! The per-packet path uses integer arithmetic only, so it is cheap, deterministic and free of
//! float rounding drift; floats appear only in [`RtpStats::jitter_ms`], which is for reporting.
//!
//! One deliberate deviation from the A.1 sample code: when a source leaves probation (or is
//! re-synchronised after a restart), the `MIN_SEQUENTIAL` packets that proved it are counted as
//! received and the base sequence number is moved back to the first of them. A.1 drops them
//! from the counts; counting them keeps `received` equal to what the relay actually forwarded,
//! while `expected - received` stays exactly the same.

/// RFC 3550 A.1: a forward jump of at least this many is treated as a possible restart.
const MAX_DROPOUT: u32 = 3000;
/// RFC 3550 A.1: packets up to this far behind the highest sequence are late, not a restart.
const MAX_MISORDER: u32 = 100;
/// RFC 3550 A.1: consecutive packets needed before a new source is believed.
const MIN_SEQUENTIAL: u16 = 2;
const SEQ_MOD: u32 = 1 << 16;
/// `bad_seq` value that no 16-bit sequence number can match.
const NO_BAD_SEQ: u32 = SEQ_MOD + 1;
const DEFAULT_CLOCK_RATE: u32 = 8000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What the sequence tracker made of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqOutcome {
    /// Counted in the statistics (in order, late, or a duplicate).
    Counted,
    /// Still proving a new source; not counted yet.
    Probation,
    /// Statistics were restarted at this packet (A.1 "two sequential packets" re-sync).
    Restarted,
    /// A large jump that may be the start of a restart; ignored for now.
    Rejected,
}

/// Receive statistics for the media source of one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpStats {
    clock_rate: u32,
    ssrc: Option<u32>,
    max_seq: u16,
    /// Shifted count of sequence number wraps (a multiple of 2^16), as `cycles` in A.1.
    cycles: u64,
    /// Extended sequence number of the first counted packet; -1 when the proving packets started
    /// just before a wrap.
    base_seq: i64,
    bad_seq: u32,
    probation: u16,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Relative transit time of the previous packet, in timestamp units (A.8).
    transit: u32,
    have_transit: bool,
    /// A.8 jitter estimate scaled by 16, so that the 1/16 gain needs no division or float.
    jitter_q4: u64,
}

impl RtpStats {
    /// `clock_rate` is the RTP timestamp rate in Hz (8000 for PCMU, 48000 for opus); 0 means 8000.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: normalise_rate(clock_rate),
            ssrc: None,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: NO_BAD_SEQ,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: 0,
            have_transit: false,
            jitter_q4: 0,
        }
    }

    /// Changes the timestamp rate (e.g. after a re-INVITE switched codecs). The jitter estimate is
    /// rescaled to the new units, and the transit baseline dropped because timestamps of the
    /// old and new codec are not comparable.
    pub fn set_clock_rate(&mut self, hz: u32) {
        let hz = normalise_rate(hz);
        if hz != self.clock_rate {
            let scaled = u128::from(self.jitter_q4) * u128::from(hz) / u128::from(self.clock_rate);
            self.jitter_q4 = u64::try_from(scaled).unwrap_or(u64::MAX);
            self.clock_rate = hz;
            self.have_transit = false;
        }
    }

    /// Accounts one RTP packet. `arrival_ns` is a monotonic arrival time in nanoseconds.
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16, rtp_ts: u32, arrival_ns: u64) {
        if self.ssrc != Some(ssrc) {
            // A new SSRC is a new source (RFC 3550 8.2): its sequence and timestamp spaces are
            // unrelated to the old one's, so nothing carries over but the clock rate.
            *self = Self::new(self.clock_rate);
            self.ssrc = Some(ssrc);
            // A.1: start in probation, expecting `seq` to be the next in order.
            self.max_seq = seq.wrapping_sub(1);
        }
        let transit = self.arrival_ts(arrival_ns).wrapping_sub(rtp_ts);
        match self.update_seq(seq) {
            SeqOutcome::Counted => {
                if self.have_transit {
                    self.update_jitter(transit);
                }
                self.transit = transit;
                self.have_transit = true;
            }
            SeqOutcome::Probation | SeqOutcome::Restarted => {
                // After a restart the sender's timestamps usually jumped too; comparing across
                // the jump would inject one huge spurious D into the estimate.
                self.transit = transit;
                self.have_transit = true;
            }
            SeqOutcome::Rejected => {}
        }
    }

    /// RFC 3550 A.1 `update_seq`.
    fn update_seq(&mut self, seq: u16) -> SeqOutcome {
        let udelta = u32::from(seq.wrapping_sub(self.max_seq));
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    return SeqOutcome::Counted;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqOutcome::Probation;
        }
        if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles += u64::from(SEQ_MOD);
            }
            self.max_seq = seq;
        } else if udelta <= SEQ_MOD - MAX_MISORDER {
            // A very large jump: believe it only if the next packet follows it, since a single
            // stray packet must not destroy the statistics.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
                return SeqOutcome::Restarted;
            }
            self.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
            return SeqOutcome::Rejected;
        }
        // Otherwise a duplicate or a late packet: counted, which is why loss can go negative.
        self.received += 1;
        SeqOutcome::Counted
    }

    /// RFC 3550 A.1 `init_seq`, at the packet that completed a proof of `MIN_SEQUENTIAL`
    /// consecutive packets; those packets are counted (see the module documentation).
    fn init_seq(&mut self, seq: u16) {
        self.max_seq = seq;
        self.cycles = 0;
        self.base_seq = i64::from(seq) - i64::from(MIN_SEQUENTIAL - 1);
        self.bad_seq = NO_BAD_SEQ;
        self.probation = 0;
        self.received = u64::from(MIN_SEQUENTIAL);
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// RFC 3550 A.8, in the integer form given there: `jitter += |D| - ((jitter + 8) >> 4)` with
    /// `jitter` kept scaled by 16.
    fn update_jitter(&mut self, transit: u32) {
        // Transit times are meaningful modulo 2^32; the signed difference recovers D.
        let d = u64::from((transit.wrapping_sub(self.transit) as i32).unsigned_abs());
        self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
    }

    /// Arrival time in timestamp units, modulo 2^32. Seconds and the sub-second remainder are
    /// converted separately so that nothing overflows and no 128-bit division is needed.
    fn arrival_ts(&self, arrival_ns: u64) -> u32 {
        let rate = u64::from(self.clock_rate);
        let secs = arrival_ns / NANOS_PER_SEC;
        let sub = arrival_ns % NANOS_PER_SEC;
        // Truncation to u32 is the intended modulo-2^32 timestamp arithmetic.
        secs.wrapping_mul(rate)
            .wrapping_add(sub * rate / NANOS_PER_SEC) as u32
    }

    /// SSRC of the source being tracked.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// Packets counted since the source was validated, duplicates included (as in A.1).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// RFC 3550 A.3: extended highest sequence number minus the base, plus one.
    pub fn expected(&self) -> u64 {
        if self.probation > 0 {
            return 0;
        }
        let ext_max = i64::try_from(self.extended_max()).unwrap_or(i64::MAX);
        u64::try_from(ext_max - self.base_seq + 1).unwrap_or(0)
    }

    /// Cumulative packets lost (A.3), clamped at 0 because duplicates can make it negative.
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// RFC 3550 A.3 fraction lost since the previous call, in 1/256 units as carried in a
    /// reception report; 0 when nothing was lost or duplicates outnumber losses.
    pub fn take_fraction_lost(&mut self) -> u8 {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            u8::try_from((lost_interval << 8) / expected_interval).unwrap_or(u8::MAX)
        }
    }

    /// Extended highest sequence number received, as carried in a reception report (modulo 2^32).
    pub fn extended_max_seq(&self) -> u32 {
        // Truncation is the wire format: the report field is 32 bits wide.
        self.extended_max() as u32
    }

    fn extended_max(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// Interarrival jitter in timestamp units (A.8 `jitter >> 4`), saturating at `u32::MAX`.
    pub fn jitter_ts(&self) -> u32 {
        u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX)
    }

    /// Interarrival jitter in milliseconds, for reporting.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_q4 as f64 / 16.0 * 1000.0 / f64::from(self.clock_rate)
    }
}

impl Default for RtpStats {
    fn default() -> Self {
        Self::new(DEFAULT_CLOCK_RATE)
    }
}

fn normalise_rate(hz: u32) -> u32 {
    if hz == 0 { DEFAULT_CLOCK_RATE } else { hz }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SSRC: u32 = 0x1234_5678;
    /// An arbitrary, non-zero monotonic clock origin.
    const T0: u64 = 5_000 * MS;

    /// Feeds packets `(seq, ts, arrival_ns)` into fresh 8 kHz statistics.
    fn feed(packets: impl IntoIterator<Item = (u16, u32, u64)>) -> RtpStats {
        let mut s = RtpStats::new(8000);
        for (seq, ts, at) in packets {
            s.on_rtp(SSRC, seq, ts, at);
        }
        s
    }

    /// Packet `i` of a perfect 20 ms PCMU stream starting at `seq0`.
    fn pcmu(seq0: u16, i: u64) -> (u16, u32, u64) {
        (
            seq0.wrapping_add(i as u16),
            1000 + 160 * i as u32,
            T0 + 20 * MS * i,
        )
    }

    #[test]
    fn perfect_stream_has_no_jitter_and_no_loss() {
        let s = feed((0..100).map(|i| pcmu(1000, i)));
        assert_eq!(s.ssrc(), Some(SSRC));
        assert_eq!(s.received(), 100);
        assert_eq!(s.expected(), 100);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.jitter_ts(), 0);
        assert_eq!(s.jitter_ms(), 0.0);
        assert_eq!(s.extended_max_seq(), 1099);
    }

    #[test]
    fn dropping_five_of_hundred_loses_five() {
        let dropped = [10, 25, 50, 51, 90];
        let s = feed(
            (0..100)
                .filter(|i| !dropped.contains(i))
                .map(|i| pcmu(1000, i)),
        );
        assert_eq!(s.expected(), 100);
        assert_eq!(s.received(), 95);
        assert_eq!(s.lost(), 5);
    }

    #[test]
    fn wrap_without_loss_crosses_65536() {
        let s = feed((0..100).map(|i| pcmu(65_500, i)));
        assert_eq!(s.lost(), 0);
        assert_eq!(s.received(), 100);
        assert_eq!(s.extended_max_seq(), 65_500 + 99);
        assert!(s.extended_max_seq() > 65_536);
    }

    #[test]
    fn probation_spanning_the_wrap_counts_both_packets() {
        let s = feed((0..10).map(|i| pcmu(65_535, i)));
        assert_eq!(s.expected(), 10);
        assert_eq!(s.received(), 10);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn reordered_pair_loses_nothing() {
        let mut order: Vec<u64> = (0..50).collect();
        order.swap(20, 21);
        let s = feed(order.into_iter().map(|i| pcmu(7, i)));
        assert_eq!(s.lost(), 0);
        assert_eq!(s.received(), 50);
        assert_eq!(s.extended_max_seq(), 7 + 49);
    }

    #[test]
    fn duplicates_clamp_loss_at_zero() {
        let s = feed((0..20).chain(5..10).map(|i| pcmu(300, i)));
        assert_eq!(s.received(), 25);
        assert_eq!(s.expected(), 20);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn nothing_is_counted_during_probation() {
        let mut s = RtpStats::new(8000);
        assert_eq!(
            (s.ssrc(), s.received(), s.expected(), s.lost()),
            (None, 0, 0, 0)
        );
        s.on_rtp(SSRC, 10, 0, T0);
        assert_eq!((s.received(), s.expected()), (0, 0));
        // Not consecutive: probation starts over from this packet.
        s.on_rtp(SSRC, 20, 160, T0 + 20 * MS);
        assert_eq!((s.received(), s.expected()), (0, 0));
        s.on_rtp(SSRC, 21, 320, T0 + 40 * MS);
        assert_eq!((s.received(), s.expected(), s.lost()), (2, 2, 0));
    }

    #[test]
    fn single_stray_jump_is_ignored() {
        let mut s = feed((0..50).map(|i| pcmu(100, i)));
        s.on_rtp(SSRC, 40_000, 123, T0 + 1000 * MS);
        for i in 50..60 {
            let (seq, ts, at) = pcmu(100, i);
            s.on_rtp(SSRC, seq, ts, at);
        }
        assert_eq!(s.received(), 60);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.extended_max_seq(), 159);
        assert_eq!(
            s.jitter_ts(),
            0,
            "the stray packet must not feed the jitter"
        );
    }

    #[test]
    fn two_sequential_after_a_jump_restart_the_statistics() {
        let mut s = feed((0..50).map(|i| pcmu(100, i)));
        // The sender restarted with new numbering and a new timestamp base.
        for i in 0..10u64 {
            s.on_rtp(
                SSRC,
                30_000 + i as u16,
                9_999_000 + 160 * i as u32,
                T0 + 2000 * MS + 20 * MS * i,
            );
        }
        assert_eq!(s.received(), 10);
        assert_eq!(s.expected(), 10);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.extended_max_seq(), 30_009);
        assert_eq!(
            s.jitter_ts(),
            0,
            "timestamp jump at the restart is not jitter"
        );
    }

    #[test]
    fn late_packet_behind_a_wrap_is_not_a_restart() {
        // 65534, 65535, 0, 1, then 65533 arrives very late.
        let mut s = feed((1..5).map(|i| pcmu(65_533, i)));
        s.on_rtp(SSRC, 65_533, 1000, T0 + 200 * MS);
        assert_eq!(s.extended_max_seq(), 65_537);
        assert_eq!(s.received(), 5);
        assert_eq!(s.expected(), 4);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn ssrc_change_resets_state() {
        let dropped = [3, 4, 5];
        let mut s = feed((0..40).filter(|i| !dropped.contains(i)).map(|i| {
            let (seq, ts, at) = pcmu(1, i);
            (seq, ts, at + (i % 3) * 7 * MS)
        }));
        assert_eq!(s.lost(), 3);
        assert!(s.jitter_ts() > 0);
        for i in 0..10 {
            let (seq, ts, at) = pcmu(50_000, i);
            s.on_rtp(0xfeed, seq, ts.wrapping_add(77_777), at + 10_000 * MS);
        }
        assert_eq!(s.ssrc(), Some(0xfeed));
        assert_eq!(s.received(), 10);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.jitter_ts(), 0);
        assert_eq!(s.extended_max_seq(), 50_009);
    }

    /// Deterministic pseudo-random arrival offsets (an LCG), compared against the floating-point
    /// definition of RFC 3550 6.4.1: J += (|D(i-1,i)| - J) / 16.
    #[test]
    fn jitter_matches_rfc_float_formula() {
        for rate in [8000u32, 48_000] {
            let samples_per_packet = u64::from(rate) / 50;
            let mut lcg: u64 = 0x2545_f491_4f6c_dd1d;
            let mut s = RtpStats::new(rate);
            let mut j = 0.0f64;
            let mut prev: Option<(f64, f64)> = None;
            for i in 0..500u64 {
                lcg = lcg
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                // Up to 30 ms of delay, in whole microseconds so that it is not a multiple of the
                // timestamp period: the integer path must cope with truncation too.
                let delay_ns = (lcg >> 33) % 30_000 * 1000;
                let ts = 3_000_000_000u32.wrapping_add((samples_per_packet * i) as u32);
                let arrival = T0 + 20 * MS * i + delay_ns;
                s.on_rtp(SSRC, 40_000 + i as u16, ts, arrival);

                let r = arrival as f64 * f64::from(rate) / 1e9;
                let sent = (samples_per_packet * i) as f64;
                if let Some((pr, ps)) = prev {
                    let d = (r - pr) - (sent - ps);
                    j += (d.abs() - j) / 16.0;
                }
                prev = Some((r, sent));
            }
            // The estimator itself tracks the float closely; the reported value additionally
            // truncates (A.8 reports `jitter >> 4`), which is why the tolerance is one unit.
            assert!((s.jitter_q4 as f64 / 16.0 - j).abs() <= 0.5, "rate {rate}");
            let got = f64::from(s.jitter_ts());
            assert!(j > 10.0, "the pattern must actually be jittery: {j}");
            assert!(
                (got - j).abs() <= 1.0,
                "rate {rate}: got {got}, expected {j}"
            );
            let ms = j * 1000.0 / f64::from(rate);
            assert!((s.jitter_ms() - ms).abs() <= 1000.0 / f64::from(rate));
        }
    }

    #[test]
    fn timestamp_wrap_is_not_jitter() {
        let s = feed((0..100).map(|i| {
            let (seq, _, at) = pcmu(0, i);
            (seq, (u32::MAX - 5_000).wrapping_add(160 * i as u32), at)
        }));
        assert_eq!(s.jitter_ts(), 0);
    }

    #[test]
    fn arrival_clock_far_from_zero_does_not_overflow() {
        let base = u64::MAX - 10_000 * MS;
        let s = feed((0..100).map(|i| {
            let (seq, ts, _) = pcmu(0, i);
            (seq, ts, base + 20 * MS * i)
        }));
        // The 32-bit timestamp space wraps in the arrival clock at this magnitude, but relative
        // transit stays exact, so a perfect stream still shows no jitter.
        assert!(s.jitter_ts() <= 1);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn clock_rate_change_keeps_jitter_in_milliseconds() {
        let mut s = feed((0..200).map(|i| {
            let (seq, ts, at) = pcmu(0, i);
            (seq, ts, at + (i % 2) * 4 * MS)
        }));
        let before = s.jitter_ms();
        assert!(before > 1.0);
        s.set_clock_rate(48_000);
        assert!((s.jitter_ms() - before).abs() < 0.01);
        assert_eq!(s.jitter_ts(), (s.jitter_q4 >> 4) as u32);
        s.set_clock_rate(0);
        assert_eq!(s.clock_rate, 8000);
    }

    #[test]
    fn fraction_lost_covers_the_interval_only() {
        let mut s = feed((0..100).filter(|i| i % 4 != 3).map(|i| pcmu(0, i)));
        // 25 of 100 lost (the last lost is seq 99, beyond the highest seen: 24 of 99 so far).
        let f = s.take_fraction_lost();
        assert_eq!(f, ((24u64 << 8) / 99) as u8);
        for i in 100..200 {
            let (seq, ts, at) = pcmu(0, i);
            s.on_rtp(SSRC, seq, ts, at);
        }
        // One lost in the interval (99), 101 expected.
        assert_eq!(s.take_fraction_lost(), ((1u64 << 8) / 101) as u8);
        assert_eq!(s.take_fraction_lost(), 0);
    }
}
