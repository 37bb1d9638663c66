//! Call quality from the endpoints' own RTCP: packet loss and jitter from their report blocks,
//! round-trip times from LSR/DLSR, and a MOS by the simplified ITU-T G.107 E-model. No RTCP,
//! no figures: sluice does not guess quality from its own counters.
//!
//! Round trip (RFC 3550 6.4.1): the relay notes when each sender report passes it. When the
//! other endpoint's receiver report names that SR (LSR) and how long it held it (DLSR), the
//! time from the SR passing to the RR arriving, less DLSR, is the round trip between the relay
//! and that endpoint: its leg. With both legs known, their sum is the end-to-end round trip,
//! the one the MOS uses (one leg alone when only one is known), as rtpengine reports them.

/// SRs remembered per side: endpoints send one every ~5 s and their peers answer the newest.
const SR_MEMORY: usize = 4;

/// G.107 equipment impairment of a codec (ITU-T G.113 Appendix I): `ie`, and the packet-loss
/// robustness `bpl` under random loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    pub ie: f64,
    pub bpl: f64,
}

/// G.711 with packet loss concealment (G.711 Appendix I): Ie 0, Bpl 25.1 (G.113 Table I.3).
/// Opus has no narrowband entry in G.113; sluice uses G.711's values for it too, which rates
/// low-bitrate Opus slightly high.
pub fn impairment(_codec: &str) -> CodecImpairment {
    CodecImpairment { ie: 0.0, bpl: 25.1 }
}

/// The transmission rating R (G.107) with the default values for everything not measured
/// (R0 - Is = 93.2), the delay impairment Id by the simplification of Cole and Rosenbluth
/// (2001), and the effective equipment impairment under random loss (G.107 eq. 7-29, BurstR 1).
pub fn r_factor(one_way_delay_ms: f64, loss_pct: f64, codec: CodecImpairment) -> f64 {
    let d = one_way_delay_ms.max(0.0);
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ppl = loss_pct.clamp(0.0, 100.0);
    let ie_eff = codec.ie + (95.0 - codec.ie) * ppl / (ppl + codec.bpl);
    93.2 - id - ie_eff
}

/// MOS (conversational quality, estimated) from R: G.107 Annex B.
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

/// One report block's figures, as received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualitySample {
    /// 1.0-4.5; `None` while no round trip is known (as rtpengine: no RTT, no MOS).
    pub mos: Option<f64>,
    /// When the report reached the relay (the session clock, ns).
    pub at_ns: u64,
    /// Lost since the reporter's previous report, percent.
    pub loss_pct: f64,
    pub jitter_ms: f64,
    /// End to end when both legs are known, else the reporter's leg.
    pub rtt_us: Option<u64>,
    /// Between the relay and the reporter.
    pub rtt_leg_us: Option<u64>,
}

/// What one side's endpoint reported, over the call, about the stream it receives from `ssrc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualitySummary {
    /// The SSRC the reports are about (the media the reporter receives).
    pub ssrc: u32,
    /// Reports with a MOS, and the sums of their figures (for averages).
    pub samples: u32,
    pub mos_sum: f64,
    pub loss_sum: f64,
    pub jitter_sum: f64,
    pub rtt_sum_us: u64,
    pub rtt_leg_sum_us: u64,
    pub lowest: Option<QualitySample>,
    pub highest: Option<QualitySample>,
    pub latest: QualitySample,
}

impl QualitySummary {
    fn new(ssrc: u32, latest: QualitySample) -> QualitySummary {
        QualitySummary {
            ssrc,
            samples: 0,
            mos_sum: 0.0,
            loss_sum: 0.0,
            jitter_sum: 0.0,
            rtt_sum_us: 0,
            rtt_leg_sum_us: 0,
            lowest: None,
            highest: None,
            latest,
        }
    }

    pub fn average_mos(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.mos_sum / f64::from(self.samples))
    }

    /// The averages over the reports with a MOS, as a sample (`at_ns` of the latest).
    pub fn average(&self) -> Option<QualitySample> {
        let n = self.samples;
        (n > 0).then(|| QualitySample {
            mos: Some(self.mos_sum / f64::from(n)),
            at_ns: self.latest.at_ns,
            loss_pct: self.loss_sum / f64::from(n),
            jitter_ms: self.jitter_sum / f64::from(n),
            rtt_us: Some(self.rtt_sum_us / u64::from(n)),
            rtt_leg_us: Some(self.rtt_leg_sum_us / u64::from(n)),
        })
    }
}

/// Per side of a stream: the SRs its endpoint sent, its leg's round trip, and what it reports.
#[derive(Debug, Clone, Default)]
pub struct SideQuality {
    srs: [(u32, u64); SR_MEMORY],
    next_sr: usize,
    pub rtt_leg_us: Option<u64>,
    pub received: Option<QualitySummary>,
}

impl SideQuality {
    /// This side's endpoint sent an SR with NTP middle bits `ntp_mid`, seen at `at_ns`.
    pub fn on_sender_report(&mut self, ntp_mid: u32, at_ns: u64) {
        self.srs[self.next_sr] = (ntp_mid, at_ns);
        self.next_sr = (self.next_sr + 1) % SR_MEMORY;
    }

    fn sr_seen_at(&self, lsr: u32) -> Option<u64> {
        (lsr != 0)
            .then(|| self.srs.iter().find(|(m, at)| *m == lsr && *at != 0))
            .flatten()
            .map(|(_, at)| *at)
    }
}

/// A report block from `reporter`'s endpoint about the stream it receives, whose sender's SRs
/// are in `sender`. `clock_rate` converts its jitter; `at_ns` and `sender`'s SR times are on one
/// clock (the relay's). Updates the reporter's leg and summary; returns the sample.
pub fn on_report_block(
    reporter: &mut SideQuality,
    sender: &SideQuality,
    block: &sluice_relay::rtcp_report::ReportBlock,
    at_ns: u64,
    clock_rate: u32,
    codec: CodecImpairment,
) -> QualitySample {
    if let Some(sr_at) = sender.sr_seen_at(block.lsr) {
        let held_ns = u64::from(block.dlsr) * 1_000_000_000 / 65_536;
        if let Some(rtt) = at_ns
            .checked_sub(sr_at)
            .and_then(|d| d.checked_sub(held_ns))
        {
            reporter.rtt_leg_us = Some(rtt / 1_000);
        }
    }
    let rtt_us = match (reporter.rtt_leg_us, sender.rtt_leg_us) {
        (Some(a), Some(b)) => Some(a + b),
        (leg, _) => leg,
    };
    let loss_pct = f64::from(block.fraction_lost) * 100.0 / 256.0;
    let jitter_ms = f64::from(block.jitter) * 1_000.0 / f64::from(clock_rate.max(1));
    // Mouth to ear, one way: half the round trip, a jitter buffer of twice the jitter, and
    // one 20 ms packet.
    let mos = rtt_us.map(|rtt| {
        let delay_ms = rtt as f64 / 2_000.0 + 2.0 * jitter_ms + 20.0;
        mos_from_r(r_factor(delay_ms, loss_pct, codec))
    });
    let sample = QualitySample {
        mos,
        at_ns,
        loss_pct,
        jitter_ms,
        rtt_us,
        rtt_leg_us: reporter.rtt_leg_us,
    };
    let s = reporter
        .received
        .get_or_insert(QualitySummary::new(block.ssrc, sample));
    if s.ssrc != block.ssrc {
        // A new source (a re-INVITE, a transfer): the summary follows the current one.
        *s = QualitySummary::new(block.ssrc, sample);
    }
    s.latest = sample;
    if let Some(m) = mos {
        s.samples += 1;
        s.mos_sum += m;
        s.loss_sum += loss_pct;
        s.jitter_sum += jitter_ms;
        s.rtt_sum_us += rtt_us.unwrap_or(0);
        s.rtt_leg_sum_us += reporter.rtt_leg_us.unwrap_or(0);
        if s.lowest.is_none_or(|l| l.mos.is_some_and(|lm| m < lm)) {
            s.lowest = Some(sample);
        }
        if s.highest.is_none_or(|h| h.mos.is_some_and(|hm| m > hm)) {
            s.highest = Some(sample);
        }
    }
    sample
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_relay::rtcp_report::ReportBlock;

    const G711: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };

    #[test]
    fn the_e_model_matches_g107_reference_points() {
        // No loss, short delay: R 93.2 - 0.48, MOS 4.40 (G.711's ceiling).
        let best = mos_from_r(r_factor(20.0, 0.0, G711));
        assert!((best - 4.40).abs() < 0.01, "{best}");
        // Delay beyond 177.3 ms costs steeply: 300 ms one way is R ~ 72.5.
        let r = r_factor(300.0, 0.0, G711);
        assert!(
            (r - (93.2 - 7.2 - 0.11 * (300.0 - 177.3))).abs() < 1e-9,
            "{r}"
        );
        // 5% random loss on G.711 with PLC: Ie,eff = 95 * 5 / 30.1 = 15.8.
        let r = r_factor(0.0, 5.0, G711);
        assert!((r - (93.2 - 95.0 * 5.0 / 30.1)).abs() < 1e-9, "{r}");
        assert_eq!(mos_from_r(-3.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
        // Monotonic in loss and in delay.
        let mut last = 5.0;
        for loss in 0..40 {
            let m = mos_from_r(r_factor(50.0, f64::from(loss), G711));
            assert!(m <= last, "loss {loss}");
            last = m;
        }
    }

    fn block(ssrc: u32, fraction: u8, jitter: u32, lsr: u32, dlsr: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: fraction,
            jitter,
            lsr,
            dlsr,
            ..ReportBlock::default()
        }
    }

    #[test]
    fn round_trips_come_from_lsr_and_dlsr_and_legs_add_up() {
        let (mut a, mut b) = (SideQuality::default(), SideQuality::default());
        // A's SR passes the relay at t = 1 s; B answers 250 ms later having held it 200 ms
        // (DLSR 0.2 * 65536): B's leg is 50 ms.
        a.on_sender_report(0xABCD_0001, 1_000_000_000);
        let s = on_report_block(
            &mut b,
            &a,
            &block(7, 0, 80, 0xABCD_0001, 13_107),
            1_250_000_000,
            8000,
            G711,
        );
        assert_eq!(s.rtt_leg_us, Some(50_003), "250 ms less 13107/65536 s");
        assert_eq!(s.rtt_us, s.rtt_leg_us, "one leg known");
        assert_eq!(s.jitter_ms, 10.0, "80 units at 8 kHz");
        assert!(s.mos.is_some());
        // B's SR, answered by A over a 30 ms leg: the round trip is both legs.
        b.on_sender_report(0x1234_0002, 2_000_000_000);
        let s = on_report_block(
            &mut a,
            &b,
            &block(9, 0, 0, 0x1234_0002, 0),
            2_030_000_000,
            8000,
            G711,
        );
        assert_eq!(s.rtt_leg_us, Some(30_000));
        assert_eq!(s.rtt_us, Some(30_000 + 50_003));
        // An LSR the relay never saw (or 0: no SR yet) gives no round trip and no MOS.
        let mut c = SideQuality::default();
        let s = on_report_block(
            &mut c,
            &a,
            &block(9, 0, 0, 0x5555_0000, 0),
            3_000_000_000,
            8000,
            G711,
        );
        assert_eq!((s.rtt_us, s.mos), (None, None));
        assert_eq!(c.received.unwrap().samples, 0, "no MOS, no sample");
    }

    #[test]
    fn the_summary_keeps_average_lowest_and_highest() {
        let (mut a, mut b) = (SideQuality::default(), SideQuality::default());
        for (i, fraction) in [0u8, 26, 0, 13].into_iter().enumerate() {
            let t = (i as u64 + 1) * 5_000_000_000;
            a.on_sender_report(i as u32 + 1, t);
            on_report_block(
                &mut b,
                &a,
                &block(7, fraction, 40, i as u32 + 1, 0),
                t + 20_000_000,
                8000,
                G711,
            );
        }
        let s = b.received.unwrap();
        assert_eq!((s.ssrc, s.samples), (7, 4));
        let (lo, hi) = (s.lowest.unwrap(), s.highest.unwrap());
        assert!(
            (lo.loss_pct - 26.0 * 100.0 / 256.0).abs() < 1e-9,
            "the 10% report is lowest"
        );
        assert_eq!(hi.loss_pct, 0.0);
        let avg = s.average_mos().unwrap();
        assert!(lo.mos.unwrap() < avg && avg < hi.mos.unwrap());
        assert_eq!(s.latest.loss_pct, 13.0 * 100.0 / 256.0);
        // A new source starts a new summary.
        a.on_sender_report(99, 40_000_000_000);
        on_report_block(
            &mut b,
            &a,
            &block(8, 0, 0, 99, 0),
            40_010_000_000,
            8000,
            G711,
        );
        assert_eq!(b.received.unwrap().ssrc, 8);
        assert_eq!(b.received.unwrap().samples, 1);
    }
}
