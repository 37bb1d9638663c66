//! Packet index estimation (RFC 3711 section 3.3.1 and Appendix A) and the replay list
//! (section 3.3.2) as a sliding bitmap.

/// Size in packets of the SRTP replay window: an authenticated packet up to 1023 indices
/// behind the highest one seen is accepted once; older ones are dropped as too old.
///
/// RFC 3711 3.3.2 requires at least 64; libsrtp defaults to 128. A relay sees the jitter and
/// reordering of both legs' networks and of video bursts at 1000+ packets/s, where 128 packets
/// is only a few tens of milliseconds, so sluice keeps 1024 (20 s of 50 packet/s audio, about
/// a second of video). The bitmap costs 128 bytes per SSRC and is a ring indexed by
/// `index mod 1024`, so advancing the window costs nothing per packet in the common case.
pub const RTP_REPLAY_WINDOW: u64 = 1024;

/// Size in packets of the SRTCP replay window. RTCP runs at a few packets per second, so
/// libsrtp's 128 is ample.
pub const RTCP_REPLAY_WINDOW: u64 = 128;

/// Why an index is refused by a replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayVerdict {
    Replayed,
    TooOld,
}

/// A replay list of `64 * WORDS` packets below and including the highest index accepted. Opaque
/// outside this module: it travels in a [`super::SrtpHandover`] when a stream moves between
/// contexts, so that the new one refuses what the old one accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow<const WORDS: usize> {
    /// The highest index accepted so far (meaningless until `started`).
    top: u64,
    started: bool,
    /// Bit `i mod SIZE` is set when index `i` (within the window) has been accepted.
    bits: [u64; WORDS],
}

impl<const WORDS: usize> Default for ReplayWindow<WORDS> {
    fn default() -> Self {
        Self {
            top: 0,
            started: false,
            bits: [0; WORDS],
        }
    }
}

impl<const WORDS: usize> ReplayWindow<WORDS> {
    const SIZE: u64 = 64 * WORDS as u64;

    #[inline]
    fn bit(index: u64) -> (usize, u64) {
        let pos = index % Self::SIZE;
        ((pos / 64) as usize, 1u64 << (pos % 64))
    }

    /// The highest index accepted so far, if any.
    pub fn top(&self) -> Option<u64> {
        self.started.then_some(self.top)
    }

    /// A window that has accepted `index` only (nothing below it).
    pub fn starting_at(index: u64) -> Self {
        let mut w = Self::default();
        w.accept(index);
        w
    }

    /// Whether `index` was accepted (it is within the window and marked).
    pub fn has(&self, index: u64) -> bool {
        self.check(index) == Err(ReplayVerdict::Replayed)
    }

    /// Adds what `other` accepted: the top becomes the higher of the two (sliding out what
    /// falls below the window), and every index within the window that either accepted stays
    /// refused. Up to `64 * WORDS` steps: for a stream changing owner, not per packet.
    pub fn absorb(&mut self, other: &Self) {
        let Some(other_top) = other.top() else {
            return;
        };
        if self.top().is_none_or(|t| other_top > t) {
            self.accept(other_top);
        }
        let lo =
            (self.top.saturating_sub(Self::SIZE - 1)).max(other_top.saturating_sub(Self::SIZE - 1));
        for i in lo..=other_top.min(self.top) {
            if other.has(i) {
                let (word, mask) = Self::bit(i);
                self.bits[word] |= mask;
            }
        }
    }

    /// RFC 3711 3.3.2: would `index` be fresh? Does not change the window.
    #[inline]
    pub(crate) fn check(&self, index: u64) -> Result<(), ReplayVerdict> {
        if !self.started || index > self.top {
            return Ok(());
        }
        if self.top - index >= Self::SIZE {
            return Err(ReplayVerdict::TooOld);
        }
        let (word, mask) = Self::bit(index);
        if self.bits[word] & mask != 0 {
            Err(ReplayVerdict::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `index` as received; call only after [`Self::check`] passed and the packet
    /// authenticated. Indices that slide out of the window are forgotten.
    #[inline]
    pub(crate) fn accept(&mut self, index: u64) {
        if !self.started {
            self.started = true;
            self.top = index;
            self.bits = [0; WORDS];
        } else if index > self.top {
            let advance = index - self.top;
            if advance >= Self::SIZE {
                self.bits = [0; WORDS];
            } else {
                // Clear the slots of the indices skipped over (top+1 ..= index).
                for skipped in self.top + 1..=index {
                    let (word, mask) = Self::bit(skipped);
                    self.bits[word] &= !mask;
                }
            }
            self.top = index;
        }
        let (word, mask) = Self::bit(index);
        self.bits[word] |= mask;
    }
}

/// RFC 3711 Appendix A: the rollover counter `v` that puts sequence number `seq` closest to
/// the highest index seen (`roc`, `s_l`). Returns the packet index `v * 2^16 + seq`, which is
/// negative when that needs a ROC below 0 and above 2^48 - 1 when it needs one above
/// 2^32 - 1; the caller refuses both.
#[inline]
pub(crate) fn estimate_index(roc: u32, s_l: u16, seq: u16) -> i64 {
    let v = if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            i64::from(roc) - 1
        } else {
            i64::from(roc)
        }
    } else if s_l - 0x8000 > seq {
        i64::from(roc) + 1
    } else {
        i64::from(roc)
    };
    v * 0x1_0000 + i64::from(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two owners of one stream, each having accepted part of it: the union is refused, the
    /// rest (never seen by either) is still fresh, whichever absorbs which.
    #[test]
    fn absorbing_another_window_refuses_what_either_accepted() {
        let (mut a, mut b) = (ReplayWindow::<2>::default(), ReplayWindow::<2>::default());
        for i in [100, 101, 103, 110] {
            a.accept(i);
        }
        for i in [102, 111, 140] {
            b.accept(i);
        }
        let (mut ab, mut ba) = (a, b);
        ab.absorb(&b);
        ba.absorb(&a);
        for w in [ab, ba] {
            assert_eq!(w.top(), Some(140));
            for i in [100, 101, 102, 103, 110, 111, 140] {
                assert_eq!(w.check(i), Err(ReplayVerdict::Replayed), "{i}");
            }
            for i in [104, 112, 139] {
                assert_eq!(w.check(i), Ok(()), "{i}");
            }
        }
        // Far ahead: what falls out of the window is too old, not mistaken for newer indices.
        let mut far = ReplayWindow::<2>::starting_at(1000);
        far.absorb(&a);
        assert_eq!(far.top(), Some(1000));
        assert_eq!(far.check(110), Err(ReplayVerdict::TooOld));
        assert_eq!(far.check(999), Ok(()));
        let mut behind = a;
        behind.absorb(&ReplayWindow::starting_at(1000));
        // 878 has the slot 110 had: a's bit there must not read as 878 accepted.
        assert_eq!((behind.top(), behind.check(878)), (Some(1000), Ok(())));
        // An empty window adds nothing.
        let mut same = a;
        same.absorb(&ReplayWindow::default());
        assert_eq!(same, a);
    }

    #[test]
    fn estimate_follows_appendix_a() {
        // Plain in-order progress.
        assert_eq!(estimate_index(0, 10, 11), 11);
        // Wrap forward: highest 65535, next 0 belongs to the next ROC.
        assert_eq!(estimate_index(0, 0xffff, 0), 0x1_0000);
        assert_eq!(estimate_index(3, 0xfff0, 5), (4 << 16) | 5);
        // Late packet from before the wrap: highest is 2 with ROC 1, 65534 is ROC 0.
        assert_eq!(estimate_index(1, 2, 0xfffe), 0xfffe);
        // A ROC below zero does not exist...
        assert_eq!(estimate_index(0, 2, 0xfffe), 0xfffe - 0x1_0000);
        // ... nor one above 2^32 - 1 (the index would need 49 bits).
        assert_eq!(estimate_index(u32::MAX, 0xffff, 0), 1 << 48);
        // Half a sequence space away is still the same ROC (boundary of the estimate).
        assert_eq!(estimate_index(0, 0, 0x8000), 0x8000);
        assert_eq!(estimate_index(1, 0x8000, 0), 0x1_0000);
    }

    #[test]
    fn window_accepts_once_and_forgets_old() {
        let mut w = ReplayWindow::<16>::default();
        assert_eq!(w.check(5), Ok(()));
        w.accept(5);
        assert_eq!(w.check(5), Err(ReplayVerdict::Replayed));
        assert_eq!(w.check(4), Ok(()));
        w.accept(4);
        assert_eq!(w.check(4), Err(ReplayVerdict::Replayed));
        w.accept(2000);
        assert_eq!(w.top(), Some(2000));
        assert_eq!(w.check(2000 - 1023), Ok(()));
        assert_eq!(w.check(2000 - 1024), Err(ReplayVerdict::TooOld));
        assert_eq!(w.check(5), Err(ReplayVerdict::TooOld));
        // A slot reused by a newer index is not confused with the old one.
        w.accept(2001);
        assert_eq!(w.check(2001 - 1024), Err(ReplayVerdict::TooOld));
        assert_eq!(w.check(2002), Ok(()));
    }

    #[test]
    fn window_matches_a_set_model() {
        // Deterministic pseudo-random walk compared against the obvious model.
        let mut w = ReplayWindow::<2>::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut top: Option<u64> = None;
        let mut x = 0x1234_5678u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = top.unwrap_or(1000);
            let index = (base + (x % 300)).saturating_sub(200);
            let expected = match top {
                None => Ok(()),
                Some(t) if index > t => Ok(()),
                Some(t) if t - index >= 128 => Err(ReplayVerdict::TooOld),
                Some(_) if seen.contains(&index) => Err(ReplayVerdict::Replayed),
                Some(_) => Ok(()),
            };
            assert_eq!(w.check(index), expected, "index {index} top {top:?}");
            if expected.is_ok() {
                w.accept(index);
                seen.insert(index);
                top = Some(top.map_or(index, |t| t.max(index)));
            }
        }
    }
}
