//! Packet loss concealment for G.711, after ITU-T G.711 Appendix I: a lost stretch is filled by
//! repeating the last pitch period of the received signal, attenuated the longer the loss
//! lasts, and the first good audio after it is cross-faded in.
//!
//! Why this shape: silence or a repeated packet clicks audibly at both edges of every loss;
//! repeating one pitch period keeps voiced speech voiced, and the fades keep the edges smooth.
//! Differences from the reference code: no output delay (Appendix I holds back 3.75 ms to
//! rewrite the last received samples); instead the first period is bent onto the last received
//! sample by a decaying offset. And one period is repeated throughout (Appendix I widens to two
//! and three periods after 10 and 20 ms), which the attenuation makes inaudible in practice.

/// Shortest and longest pitch period searched: 5 to 15 ms at 8 kHz (66 to 200 Hz).
const PITCH_MIN: usize = 40;
const PITCH_MAX: usize = 120;
/// Window the pitch search correlates over (20 ms).
const CORR_LEN: usize = 160;
/// History kept: the correlation window plus the longest lag, plus the wrap overlap.
const HIST: usize = CORR_LEN + PITCH_MAX + PITCH_MAX / 4;
/// Full level for the first 10 ms of a loss, then 20 % less per 10 ms: silent at 60 ms.
const FULL_LEVEL: usize = 80;
const SILENT_AFTER: usize = 480;
/// Cross-fade into good audio: a quarter pitch period, plus 4 ms per 10 ms lost, at most
/// 10 ms (Appendix I's numbers).
const FADE_IN_STEP: usize = 32;
const FADE_IN_MAX: usize = 80;

/// G.711 concealment state for one stream. Holds no allocation.
#[derive(Debug, Clone)]
pub struct G711Plc {
    /// The most recent samples, oldest first; only the last `filled` are real.
    history: [i16; HIST],
    filled: usize,
    /// One pitch period, its end blended into the samples before its start so it loops
    /// without a step.
    period: [f32; PITCH_MAX],
    pitch: usize,
    phase: usize,
    /// Step between the last received sample and the looped period, removed over `overlap`.
    offset: f32,
    overlap: usize,
    /// Samples concealed in the current loss (0: not in a loss).
    lost: usize,
}

impl Default for G711Plc {
    fn default() -> Self {
        Self::new()
    }
}

impl G711Plc {
    pub const fn new() -> Self {
        Self {
            history: [0; HIST],
            filled: 0,
            period: [0.0; PITCH_MAX],
            pitch: PITCH_MIN,
            phase: 0,
            offset: 0.0,
            overlap: 0,
            lost: 0,
        }
    }

    /// Forgets the signal (a new source, or a gap too long to bridge).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Whether the last call was a concealment (good audio will be cross-faded in).
    pub fn in_loss(&self) -> bool {
        self.lost > 0
    }

    /// Records received audio; right after a loss, cross-fades its start from the concealment
    /// (in place) so the return of the real signal does not click.
    pub fn good(&mut self, pcm: &mut [i16]) {
        if self.lost > 0 {
            let frames_lost = self.lost.div_ceil(FULL_LEVEL);
            let len = (self.overlap + (frames_lost - 1) * FADE_IN_STEP)
                .min(FADE_IN_MAX)
                .min(pcm.len());
            for (i, s) in pcm[..len].iter_mut().enumerate() {
                let w = (i + 1) as f32 / (len + 1) as f32;
                let syn = self.next_sample();
                *s = (w * f32::from(*s) + (1.0 - w) * syn).round() as i16;
            }
            self.lost = 0;
        }
        self.remember(pcm);
    }

    /// Fills `out` with concealment, continuing any earlier call in the same loss.
    pub fn conceal(&mut self, out: &mut [i16]) {
        if self.lost == 0 && !self.start_loss() {
            out.fill(0);
            self.lost += out.len();
            self.remember(out);
            return;
        }
        for s in out.iter_mut() {
            *s = self.next_sample().round() as i16;
        }
        self.remember(out);
    }

    /// One concealed sample, advancing the loop and the loss length.
    fn next_sample(&mut self) -> f32 {
        let n = self.lost;
        self.lost += 1;
        if n >= SILENT_AFTER || self.filled < HIST {
            return 0.0;
        }
        let mut v = self.period[self.phase];
        if n < self.overlap {
            v += self.offset * (1.0 - n as f32 / self.overlap as f32);
        }
        self.phase += 1;
        if self.phase == self.pitch {
            self.phase = 0;
        }
        let gain = if n < FULL_LEVEL {
            1.0
        } else {
            1.0 - (n - FULL_LEVEL) as f32 / (SILENT_AFTER - FULL_LEVEL) as f32
        };
        (v * gain).clamp(-32768.0, 32767.0)
    }

    /// Sets up the loop for a new loss; false if there is too little history to do so.
    fn start_loss(&mut self) -> bool {
        if self.filled < HIST {
            return false;
        }
        let h = &self.history;
        let n = HIST;
        let x = &h[n - CORR_LEN..];
        let mut best = (f32::MIN, PITCH_MIN);
        for p in PITCH_MIN..=PITCH_MAX {
            let y = &h[n - CORR_LEN - p..n - p];
            let (mut xy, mut yy) = (0.0f32, 0.0f32);
            for (&a, &b) in x.iter().zip(y) {
                xy += f32::from(a) * f32::from(b);
                yy += f32::from(b) * f32::from(b);
            }
            let score = if yy > 0.0 { xy / yy.sqrt() } else { 0.0 };
            if score > best.0 {
                best = (score, p);
            }
        }
        let p = best.1;
        let ov = p / 4;
        for i in 0..p {
            self.period[i] = f32::from(h[n - p + i]);
        }
        // The loop's end fades into what preceded the period, so the wrap to its start
        // continues the signal as it originally did.
        for i in 0..ov {
            let w = (i + 1) as f32 / (ov + 1) as f32;
            let end = f32::from(h[n - ov + i]);
            let before = f32::from(h[n - p - ov + i]);
            self.period[p - ov + i] = (1.0 - w) * end + w * before;
        }
        self.pitch = p;
        self.phase = 0;
        self.overlap = ov.max(1);
        // The period's first sample follows h[n-p-1]; continue from h[n-1] instead.
        self.offset = f32::from(h[n - 1]) - f32::from(h[n - p - 1]);
        true
    }

    fn remember(&mut self, pcm: &[i16]) {
        if pcm.len() >= HIST {
            self.history.copy_from_slice(&pcm[pcm.len() - HIST..]);
        } else {
            self.history.copy_within(pcm.len().., 0);
            self.history[HIST - pcm.len()..].copy_from_slice(pcm);
        }
        self.filled = (self.filled + pcm.len()).min(HIST);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(n: usize, start: usize) -> Vec<i16> {
        (start..start + n)
            .map(|i| {
                (10000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect()
    }

    fn max_jump(s: &[i16]) -> i32 {
        s.windows(2)
            .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
            .max()
            .unwrap()
    }

    /// Runs 20 ms frames with frames `lost` concealed; returns the output.
    fn run(lost: &[usize], frames: usize) -> Vec<i16> {
        let mut plc = G711Plc::new();
        let mut out = Vec::new();
        for f in 0..frames {
            let mut buf = sine(160, f * 160);
            if lost.contains(&f) {
                plc.conceal(&mut buf);
            } else {
                plc.good(&mut buf);
            }
            out.extend_from_slice(&buf);
        }
        out
    }

    #[test]
    fn concealment_edges_are_smooth() {
        let clean = sine(160 * 10, 0);
        let within = max_jump(&clean);
        for lost in [&[4usize][..], &[4, 5], &[4, 5, 6]] {
            let out = run(lost, 10);
            let first = lost[0] * 160;
            let after = (lost[lost.len() - 1] + 1) * 160;
            for edge in [first, after] {
                let j = max_jump(&out[edge - 2..edge + 80]);
                assert!(
                    f64::from(j) <= 1.3 * f64::from(within),
                    "lost {lost:?}: jump {j} at {edge} vs {within} within the sine"
                );
            }
            // And nowhere inside the concealment either.
            let j = max_jump(&out[first..after]);
            assert!(f64::from(j) <= 1.3 * f64::from(within), "inside: {j}");
        }
    }

    #[test]
    fn first_10ms_follow_the_sine_closely() {
        let out = run(&[4], 6);
        let clean = sine(160 * 6, 0);
        let err: f64 = (640..720)
            .map(|i| (f64::from(out[i]) - f64::from(clean[i])).powi(2))
            .sum::<f64>()
            / 80.0;
        let sig: f64 = (640..720).map(|i| f64::from(clean[i]).powi(2)).sum::<f64>() / 80.0;
        assert!(sig / err > 30.0, "SNR {}", 10.0 * (sig / err).log10());
    }

    #[test]
    fn concealment_decays_to_silence() {
        let mut plc = G711Plc::new();
        for f in 0..5 {
            plc.good(&mut sine(160, f * 160));
        }
        let mut energy = Vec::new();
        for _ in 0..8 {
            let mut buf = [0i16; 80];
            plc.conceal(&mut buf);
            energy.push(buf.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>());
        }
        assert!(energy[0] > 1e8, "first 10 ms at full level: {}", energy[0]);
        for w in energy[1..6].windows(2) {
            assert!(w[1] < w[0], "{energy:?}");
        }
        assert_eq!(energy[6], 0.0);
        assert_eq!(energy[7], 0.0);
    }

    #[test]
    fn without_history_conceals_silence() {
        let mut plc = G711Plc::new();
        let mut buf = [7i16; 80];
        plc.conceal(&mut buf);
        assert!(buf.iter().all(|&s| s == 0));
    }
}
