//! Latching: learning where a leg's endpoint really sends media from, without letting anyone else
//! redirect the media (RTP Bleed, CVE-2017-14114).
//!
//! Endpoints behind NAT announce an address in SDP that the relay cannot reach, so the relay must
//! send media back to wherever the endpoint's packets actually come from. Done naively ("latch
//! onto whoever sends first, at any time"), any host that can reach the relay port can redirect a
//! call's media to itself. DESIGN.md's security defaults drive the rules below:
//!
//! 1. **Latch only in a short window after signalling.** [`Latch::signalling`] (offer, answer,
//!    re-INVITE) opens `[now, now + window_ns)`; outside it the latched source never changes,
//!    so an attacker must race the real endpoint within seconds of a signalling event.
//! 2. **Prefer the SDP address.** Signalling is the trusted channel: a packet from exactly the
//!    SDP address latches at once, overrides a NAT-learned source, and once it has latched
//!    within a window nothing else can take over in that window.
//! 3. **Require consecutive sequence numbers from a new source** (heuristic mode). Any other
//!    source is a candidate until `confirm_packets` of its packets arrive with consecutive RTP
//!    sequence numbers (wrapping; RTCP and other non-RTP packets count one each). A stray or
//!    spoofed single packet therefore never moves the media. The first source that latches in a
//!    window wins it; later candidates in the same window are refused (the SDP address excepted).
//! 4. **Strict source afterwards.** With `strict_source`, once latched only the latched source is
//!    accepted; before any latch only the SDP address is (plus, inside the window, candidates that
//!    are being confirmed, whose media is dropped as [`DropReason::Unconfirmed`] until they are).
//!    Without `strict_source` every packet is accepted and forwarded: latching then only decides
//!    where media for this endpoint goes, never what is let in.
//!
//! 5. **Only hosts signalling vouches for.** When the front end knows where this endpoint's
//!    signalling came from ([`Latch::signalling_from`]: the B2BUA always, ng `received-from`, a
//!    gRPC option), a new source may latch only from that IP or the SDP's IP (any port: NATs
//!    rewrite ports). Anything else is [`DropReason::WrongSource`] and never a candidate, so an
//!    attacker elsewhere on the internet can neither inject media before the endpoint speaks
//!    (RTP Inject) nor take the other side's media (RTP Bleed) even when the SDP address is
//!    unreachable. Without that knowledge rules 1-4 are all there is: a host that races the
//!    endpoint inside the window with consecutive packets can still win it.
//!
//! [`LatchMode::Immediate`] trades rule 3 for speed: the first source in each window latches at
//! once. [`LatchMode::Off`] never latches and always sends to the SDP address.
//!
//! A signalling event that *changes* the SDP address forgets the latched source, because the
//! endpoint has moved (call transfer, new device): keeping the old source would send the media to
//! the old device, and a recvonly endpoint would never send the packet needed to fix that. An
//! unchanged or absent (hold, `0.0.0.0`) address keeps the latch, so that a NAT-ed endpoint
//! refreshing its session does not lose media.
//!
//! For SRTP, only feed packets whose authentication tag verified (DESIGN.md: "never latch on an
//! SRTP packet whose auth tag was not verified").
//!
//! Addresses are compared with IPv4-mapped IPv6 addresses folded to IPv4 (and IPv6 flow labels
//! ignored), because a dual-stack socket reports `::ffff:a.b.c.d` sources while SDP carries
//! `a.b.c.d`. The address stored and returned is the one given, so it stays usable on the socket
//! it came from.

use std::net::{IpAddr, SocketAddr};

/// How a leg learns its endpoint's media source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatchMode {
    /// Never latch; media goes to the SDP address.
    Off,
    /// The first source in each signalling window latches at once.
    Immediate,
    /// The SDP address latches at once, other sources after consecutive packets (the default).
    #[default]
    Heuristic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatchConfig {
    pub mode: LatchMode,
    /// Drop packets that do not come from the latched source (or, before any latch, the SDP address).
    pub strict_source: bool,
    /// Length of the latching window opened by each signalling event.
    pub window_ns: u64,
    /// Consecutive packets a non-SDP source needs to latch in heuristic mode; 0 behaves as 1.
    pub confirm_packets: u8,
}

impl Default for LatchConfig {
    /// Secure by default: heuristic latching, strict source, 10 s window, 3 confirming packets.
    fn default() -> Self {
        Self {
            mode: LatchMode::Heuristic,
            strict_source: true,
            window_ns: 10_000_000_000,
            confirm_packets: 3,
        }
    }
}

/// Why a packet must not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Strict source: the packet is not from the latched source (or the SDP address).
    WrongSource,
    /// A new source inside the window that has not yet proved itself with consecutive packets.
    Unconfirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the packet.
    Accept,
    /// Forward the packet; the latched source is now this address, so media for this endpoint
    /// goes there from now on.
    Latched(SocketAddr),
    /// Do not forward the packet.
    Drop(DropReason),
}

/// A source being confirmed in heuristic mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    addr: SocketAddr,
    last_seq: Option<u16>,
    count: u8,
}

/// Latching state of one leg; see the module documentation for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latch {
    cfg: LatchConfig,
    sdp: Option<SocketAddr>,
    /// The last address signalling named, kept across a hold to tell a resume from a move.
    last_sdp: Option<SocketAddr>,
    /// `[start, end)` of the current window; `None` before the first signalling event.
    window: Option<(u64, u64)>,
    latched: Option<SocketAddr>,
    /// Something latched inside the current window (rule 2 and "first source wins").
    won_in_window: bool,
    /// The SDP address latched inside the current window, so it needs no further checks.
    sdp_won_in_window: bool,
    candidate: Option<Candidate>,
    /// Where the endpoint's signalling came from (rule 5); `None`: unknown.
    signalling_ip: Option<IpAddr>,
}

impl Latch {
    pub fn new(cfg: LatchConfig) -> Self {
        Self {
            cfg,
            sdp: None,
            last_sdp: None,
            window: None,
            latched: None,
            won_in_window: false,
            sdp_won_in_window: false,
            candidate: None,
            signalling_ip: None,
        }
    }

    /// Rule 5: new sources must come from `ip` (where this endpoint's signalling came from) or
    /// from the SDP address's IP. `None` lifts the rule.
    pub fn signalling_from(&mut self, ip: Option<IpAddr>) {
        self.signalling_ip = ip;
    }

    /// Whether a source may be let in or become a candidate (rule 5): its IP is the signalling
    /// source's or the SDP address's (the latched source is let in by the caller).
    fn vouched_for(&self, src: SocketAddr) -> bool {
        let Some(sig) = self.signalling_ip else {
            return true;
        };
        let ip = canonical(src).ip();
        ip == canonical(SocketAddr::new(sig, 0)).ip()
            || self
                .sdp
                .or(self.last_sdp)
                .is_some_and(|sdp| canonical(sdp).ip() == ip)
    }

    /// Replaces the configuration. Switching to [`LatchMode::Off`] forgets the latched source so
    /// that media goes to the SDP address; a changed `window_ns` applies from the next window.
    pub fn set_config(&mut self, cfg: LatchConfig) {
        if cfg.mode == LatchMode::Off {
            self.latched = None;
            self.candidate = None;
            self.won_in_window = false;
            self.sdp_won_in_window = false;
        }
        self.cfg = cfg;
    }

    /// A signalling event (offer/answer/re-INVITE) for this leg: remembers the SDP address
    /// (None = unknown/hold 0.0.0.0) and opens the latching window [now, now+window).
    pub fn signalling(&mut self, sdp_addr: Option<SocketAddr>, now_ns: u64) {
        if let Some(new) = sdp_addr {
            if self.last_sdp.is_some_and(|old| !same(old, new)) {
                self.latched = None;
            }
            self.last_sdp = Some(new);
        }
        self.sdp = sdp_addr;
        self.window = Some((now_ns, now_ns.saturating_add(self.cfg.window_ns)));
        self.won_in_window = false;
        self.sdp_won_in_window = false;
        self.candidate = None;
    }

    /// A datagram from `src`; `seq` is the RTP sequence number, None for RTCP or non-RTP.
    pub fn on_packet(&mut self, src: SocketAddr, seq: Option<u16>, now_ns: u64) -> Verdict {
        // Rule 5 holds with or without strict source: it is what signalling says.
        if !self.vouched_for(src) && !self.latched.is_some_and(|l| same(l, src)) {
            return Verdict::Drop(DropReason::WrongSource);
        }
        match self.cfg.mode {
            LatchMode::Off => self.filter(self.sdp, src),
            _ if !self.window_open(now_ns) => self.filter(self.latched.or(self.sdp), src),
            LatchMode::Immediate => self.immediate(src),
            LatchMode::Heuristic => self.heuristic(src, seq),
        }
    }

    /// Immediate mode inside the window: the first new source wins the window.
    fn immediate(&mut self, src: SocketAddr) -> Verdict {
        if self.latched.is_some_and(|l| same(l, src)) {
            // In-flight packets from the current peer must not claim a re-INVITE's window, or a
            // moved endpoint could never latch.
            return Verdict::Accept;
        }
        if self.won_in_window {
            return self.filter(self.latched, src);
        }
        self.won_in_window = true;
        self.latch(src)
    }

    /// Heuristic mode inside the window.
    fn heuristic(&mut self, src: SocketAddr, seq: Option<u16>) -> Verdict {
        if self.sdp.is_some_and(|sdp| same(sdp, src)) {
            if self.sdp_won_in_window {
                return Verdict::Accept;
            }
            self.sdp_won_in_window = true;
            self.won_in_window = true;
            self.candidate = None;
            return self.latch(src);
        }
        if self.latched.is_some_and(|l| same(l, src)) {
            // The current peer keeps flowing while a moved endpoint may still prove itself.
            return Verdict::Accept;
        }
        if self.won_in_window {
            return self.filter(self.latched, src);
        }
        let count = match self.candidate {
            Some(c) if same(c.addr, src) && follows(c.last_seq, seq) => c.count.saturating_add(1),
            _ => 1,
        };
        if count >= self.cfg.confirm_packets.max(1) {
            self.candidate = None;
            self.won_in_window = true;
            return self.latch(src);
        }
        let last_seq = match self.candidate {
            Some(c) if seq.is_none() && same(c.addr, src) => c.last_seq,
            _ => seq,
        };
        self.candidate = Some(Candidate {
            addr: src,
            last_seq,
            count,
        });
        if self.cfg.strict_source {
            Verdict::Drop(DropReason::Unconfirmed)
        } else {
            Verdict::Accept
        }
    }

    /// Latches onto `src`, reporting [`Verdict::Latched`] only when that changes the latched source.
    fn latch(&mut self, src: SocketAddr) -> Verdict {
        if self.latched.is_some_and(|l| same(l, src)) {
            Verdict::Accept
        } else {
            self.latched = Some(src);
            Verdict::Latched(src)
        }
    }

    /// Strict-source filter against the one address allowed to send (if any).
    fn filter(&self, allowed: Option<SocketAddr>, src: SocketAddr) -> Verdict {
        if !self.cfg.strict_source || allowed.is_some_and(|a| same(a, src)) {
            Verdict::Accept
        } else {
            Verdict::Drop(DropReason::WrongSource)
        }
    }

    /// Where media towards this leg's endpoint goes: the latched source if any, else the SDP address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.latched.or(self.sdp)
    }

    pub fn latched(&self) -> Option<SocketAddr> {
        self.latched
    }

    pub fn window_open(&self, now_ns: u64) -> bool {
        self.window
            .is_some_and(|(start, end)| start <= now_ns && now_ns < end)
    }
}

/// RTP packets of a candidate must be consecutive (RFC 3550 5.1: the sequence number increments
/// by one per packet, modulo 2^16); RTCP/non-RTP packets carry no number and count as they come.
fn follows(last: Option<u16>, seq: Option<u16>) -> bool {
    match (last, seq) {
        (Some(last), Some(seq)) => seq == last.wrapping_add(1),
        _ => true,
    }
}

/// Address equality as a socket would mean it: IPv4-mapped IPv6 equals IPv4, flow label ignored.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    canonical(a) == canonical(b)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => {
                let mut v6 = v6;
                v6.set_flowinfo(0);
                SocketAddr::V6(v6)
            }
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;
    const T0: u64 = 100 * SEC;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sdp() -> SocketAddr {
        addr("192.168.1.10:4000")
    }
    fn nat() -> SocketAddr {
        addr("203.0.113.7:31000")
    }
    fn attacker() -> SocketAddr {
        addr("198.51.100.66:5555")
    }

    fn cfg(mode: LatchMode, strict: bool) -> LatchConfig {
        LatchConfig {
            mode,
            strict_source: strict,
            ..LatchConfig::default()
        }
    }

    /// A latch in `mode` that has seen the offer/answer at `T0`.
    fn signalled(mode: LatchMode, strict: bool, sdp_addr: Option<SocketAddr>) -> Latch {
        let mut l = Latch::new(cfg(mode, strict));
        l.signalling(sdp_addr, T0);
        l
    }

    /// Sends `n` consecutive RTP packets from `src` starting at `seq0`, 20 ms apart from `t`.
    fn burst(l: &mut Latch, src: SocketAddr, seq0: u16, n: u16, t: u64) -> Vec<Verdict> {
        (0..n)
            .map(|i| l.on_packet(src, Some(seq0.wrapping_add(i)), t + u64::from(i) * 20 * MS))
            .collect()
    }

    #[test]
    fn defaults_are_secure() {
        let c = LatchConfig::default();
        assert_eq!(c.mode, LatchMode::Heuristic);
        assert!(c.strict_source);
        assert_eq!(c.window_ns, 10 * SEC);
        assert_eq!(c.confirm_packets, 3);
    }

    #[test]
    fn sdp_address_latches_at_once() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        assert_eq!(l.peer(), Some(sdp()));
        assert_eq!(l.latched(), None);
        assert_eq!(
            l.on_packet(sdp(), Some(1), T0 + MS),
            Verdict::Latched(sdp())
        );
        assert_eq!(l.on_packet(sdp(), Some(2), T0 + 21 * MS), Verdict::Accept);
        assert_eq!(l.latched(), Some(sdp()));
        assert_eq!(l.peer(), Some(sdp()));
    }

    #[test]
    fn nat_source_latches_after_three_consecutive() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        let v = burst(&mut l, nat(), 500, 4, T0 + MS);
        assert_eq!(
            v,
            [
                Verdict::Drop(DropReason::Unconfirmed),
                Verdict::Drop(DropReason::Unconfirmed),
                Verdict::Latched(nat()),
                Verdict::Accept,
            ]
        );
        assert_eq!(l.peer(), Some(nat()));
        // Strict source afterwards: the unreachable SDP address itself is still preferred...
        assert_eq!(
            l.on_packet(sdp(), Some(9), T0 + SEC),
            Verdict::Latched(sdp())
        );
        // ...but once the window closes nothing moves any more.
        let after = T0 + 11 * SEC;
        assert_eq!(
            l.on_packet(nat(), Some(600), after),
            Verdict::Drop(DropReason::WrongSource)
        );
    }

    #[test]
    fn nat_source_latches_when_sdp_address_unknown() {
        let mut l = signalled(LatchMode::Heuristic, true, None);
        assert_eq!(l.peer(), None);
        let v = burst(&mut l, nat(), 1, 3, T0);
        assert_eq!(v[2], Verdict::Latched(nat()));
        assert_eq!(l.peer(), Some(nat()));
    }

    #[test]
    fn rtcp_packets_count_towards_confirmation() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        assert_eq!(
            l.on_packet(nat(), Some(10), T0),
            Verdict::Drop(DropReason::Unconfirmed)
        );
        assert_eq!(
            l.on_packet(nat(), None, T0 + MS),
            Verdict::Drop(DropReason::Unconfirmed)
        );
        // The RTCP packet did not disturb the RTP numbering: 11 still follows 10.
        assert_eq!(
            l.on_packet(nat(), Some(11), T0 + 2 * MS),
            Verdict::Latched(nat())
        );
    }

    #[test]
    fn attacker_outside_window_cannot_latch() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        let late = T0 + 10 * SEC; // the window is half-open: [T0, T0 + 10 s)
        assert!(!l.window_open(late));
        for v in burst(&mut l, attacker(), 1000, 50, late) {
            assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
        }
        assert_eq!(l.latched(), None);
        assert_eq!(l.peer(), Some(sdp()));
        // The real endpoint is accepted from its SDP address, without latching.
        assert_eq!(l.on_packet(sdp(), Some(1), late), Verdict::Accept);
    }

    #[test]
    fn attacker_cannot_steal_after_latch() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        burst(&mut l, nat(), 1, 3, T0);
        assert_eq!(l.latched(), Some(nat()));
        // Inside the same window: the window is already won.
        for v in burst(&mut l, attacker(), 1, 10, T0 + SEC) {
            assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
        }
        // After the window.
        for v in burst(&mut l, attacker(), 100, 10, T0 + 20 * SEC) {
            assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
        }
        assert_eq!(l.peer(), Some(nat()));
        assert_eq!(l.on_packet(nat(), Some(4), T0 + 30 * SEC), Verdict::Accept);
    }

    #[test]
    fn attacker_cannot_steal_sdp_latch_within_window() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        assert_eq!(l.on_packet(sdp(), Some(1), T0), Verdict::Latched(sdp()));
        for v in burst(&mut l, attacker(), 1, 10, T0 + MS) {
            assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
        }
        assert_eq!(l.peer(), Some(sdp()));
    }

    #[test]
    fn reinvite_window_allows_move() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        burst(&mut l, nat(), 1, 3, T0);
        // The NAT rebinds (new public port) long after the window: dropped, no latch.
        let moved = addr("203.0.113.7:31002");
        let t1 = T0 + 60 * SEC;
        assert_eq!(
            l.on_packet(moved, Some(4), t1),
            Verdict::Drop(DropReason::WrongSource)
        );
        // The re-INVITE with the same SDP opens a new window; the old source keeps flowing
        // while the new one proves itself.
        l.signalling(Some(sdp()), t1 + SEC);
        assert_eq!(l.latched(), Some(nat()));
        let t2 = t1 + 2 * SEC;
        assert_eq!(l.on_packet(nat(), Some(5), t2), Verdict::Accept);
        let v = burst(&mut l, moved, 6, 3, t2 + MS);
        assert_eq!(v[2], Verdict::Latched(moved));
        assert_eq!(l.peer(), Some(moved));
        assert_eq!(
            l.on_packet(nat(), Some(7), t2 + SEC),
            Verdict::Drop(DropReason::WrongSource)
        );
    }

    #[test]
    fn changed_sdp_address_forgets_latched_source() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        burst(&mut l, nat(), 1, 3, T0);
        let new_phone = addr("10.0.0.5:7000");
        l.signalling(Some(new_phone), T0 + 60 * SEC);
        assert_eq!(l.latched(), None);
        assert_eq!(
            l.peer(),
            Some(new_phone),
            "a recvonly endpoint must still get media"
        );
    }

    #[test]
    fn hold_keeps_latched_source() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        burst(&mut l, nat(), 1, 3, T0);
        l.signalling(None, T0 + 60 * SEC);
        assert_eq!(l.peer(), Some(nat()));
        l.signalling(Some(sdp()), T0 + 120 * SEC);
        assert_eq!(l.peer(), Some(nat()));
    }

    #[test]
    fn non_consecutive_candidate_never_latches() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        for (i, seq) in [1u16, 3, 5, 4, 4, 9, 8, 7, 100, 102]
            .into_iter()
            .enumerate()
        {
            let v = l.on_packet(attacker(), Some(seq), T0 + i as u64 * MS);
            assert_eq!(v, Verdict::Drop(DropReason::Unconfirmed), "seq {seq}");
        }
        assert_eq!(l.latched(), None);
    }

    #[test]
    fn interleaved_candidates_restart_counting() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        let other = addr("198.51.100.67:5555");
        for i in 0..10u16 {
            assert_eq!(
                l.on_packet(attacker(), Some(i), T0 + u64::from(i) * MS),
                Verdict::Drop(DropReason::Unconfirmed)
            );
            assert_eq!(
                l.on_packet(other, Some(i), T0 + u64::from(i) * MS),
                Verdict::Drop(DropReason::Unconfirmed)
            );
        }
        assert_eq!(l.latched(), None);
    }

    #[test]
    fn seq_wrap_counts_as_consecutive() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        let v = burst(&mut l, nat(), 65_534, 3, T0);
        assert_eq!(v[2], Verdict::Latched(nat()));
    }

    #[test]
    fn off_mode_strict_drops_others() {
        let mut l = signalled(LatchMode::Off, true, Some(sdp()));
        for v in burst(&mut l, nat(), 1, 10, T0) {
            assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
        }
        assert_eq!(l.on_packet(sdp(), Some(1), T0), Verdict::Accept);
        assert_eq!(l.latched(), None);
        assert_eq!(l.peer(), Some(sdp()));
    }

    #[test]
    fn off_mode_forgets_previous_latch() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        burst(&mut l, nat(), 1, 3, T0);
        l.set_config(cfg(LatchMode::Off, false));
        assert_eq!(l.latched(), None);
        assert_eq!(l.peer(), Some(sdp()));
        assert_eq!(l.on_packet(nat(), Some(4), T0 + SEC), Verdict::Accept);
        assert_eq!(l.latched(), None);
    }

    #[test]
    fn non_strict_accepts_all() {
        for mode in [LatchMode::Off, LatchMode::Immediate, LatchMode::Heuristic] {
            let mut l = signalled(mode, false, Some(sdp()));
            let verdicts = burst(&mut l, attacker(), 1, 2, T0)
                .into_iter()
                .chain(burst(&mut l, nat(), 1, 5, T0 + MS))
                .chain(burst(&mut l, attacker(), 9, 5, T0 + 20 * SEC));
            for v in verdicts {
                assert!(!matches!(v, Verdict::Drop(_)), "{mode:?}: {v:?}");
            }
        }
        // Latching rules are unchanged: heuristic still needs consecutive packets.
        let mut l = signalled(LatchMode::Heuristic, false, Some(sdp()));
        let v = burst(&mut l, nat(), 1, 3, T0);
        assert_eq!(
            v,
            [Verdict::Accept, Verdict::Accept, Verdict::Latched(nat())]
        );
        assert_eq!(
            l.on_packet(attacker(), Some(1), T0 + 20 * SEC),
            Verdict::Accept
        );
        assert_eq!(l.peer(), Some(nat()));
    }

    #[test]
    fn immediate_first_source_in_window_wins() {
        let mut l = signalled(LatchMode::Immediate, true, Some(sdp()));
        assert_eq!(l.on_packet(nat(), None, T0), Verdict::Latched(nat()));
        assert_eq!(
            l.on_packet(sdp(), Some(1), T0 + MS),
            Verdict::Drop(DropReason::WrongSource)
        );
        assert_eq!(
            l.on_packet(attacker(), Some(1), T0 + MS),
            Verdict::Drop(DropReason::WrongSource)
        );
        // Outside the window: no change.
        assert_eq!(
            l.on_packet(attacker(), Some(2), T0 + 11 * SEC),
            Verdict::Drop(DropReason::WrongSource)
        );
        // A new window lets the endpoint move; the first source of that window wins again.
        l.signalling(Some(sdp()), T0 + 60 * SEC);
        assert_eq!(
            l.on_packet(sdp(), Some(3), T0 + 61 * SEC),
            Verdict::Latched(sdp())
        );
        assert_eq!(
            l.on_packet(nat(), Some(3), T0 + 61 * SEC),
            Verdict::Drop(DropReason::WrongSource)
        );
    }

    #[test]
    fn immediate_reinvite_allows_move_despite_old_source_tail() {
        let mut l = signalled(LatchMode::Immediate, true, None);
        assert_eq!(l.on_packet(nat(), Some(1), T0), Verdict::Latched(nat()));
        let moved = addr("203.0.113.7:31002");
        l.signalling(None, T0 + 60 * SEC);
        assert_eq!(l.on_packet(nat(), Some(2), T0 + 60 * SEC), Verdict::Accept);
        assert_eq!(
            l.on_packet(moved, Some(3), T0 + 60 * SEC + MS),
            Verdict::Latched(moved)
        );
        assert_eq!(
            l.on_packet(nat(), Some(4), T0 + 60 * SEC + 2 * MS),
            Verdict::Drop(DropReason::WrongSource)
        );
    }

    #[test]
    fn resume_at_a_new_address_after_hold_forgets_latched_source() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        burst(&mut l, nat(), 1, 3, T0);
        l.signalling(None, T0 + 60 * SEC);
        let new_phone = addr("10.0.0.5:7000");
        l.signalling(Some(new_phone), T0 + 120 * SEC);
        assert_eq!(l.peer(), Some(new_phone));
    }

    #[test]
    fn immediate_non_strict_accepts_later_sources_without_latching() {
        let mut l = signalled(LatchMode::Immediate, false, Some(sdp()));
        assert_eq!(l.on_packet(nat(), Some(1), T0), Verdict::Latched(nat()));
        assert_eq!(l.on_packet(attacker(), Some(1), T0 + MS), Verdict::Accept);
        assert_eq!(l.latched(), Some(nat()));
    }

    #[test]
    fn nothing_latches_before_first_signalling() {
        let mut l = Latch::new(LatchConfig::default());
        assert!(!l.window_open(0));
        for v in burst(&mut l, nat(), 1, 5, 0) {
            assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
        }
        assert_eq!(l.peer(), None);
    }

    #[test]
    fn closed_window_without_sdp_or_latch_drops_when_strict() {
        let mut l = signalled(LatchMode::Heuristic, true, None);
        assert_eq!(
            l.on_packet(nat(), Some(1), T0 + 10 * SEC),
            Verdict::Drop(DropReason::WrongSource)
        );
    }

    #[test]
    fn unconfirmed_candidate_is_forgotten_with_the_window() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        burst(&mut l, nat(), 1, 2, T0 + 10 * SEC - 40 * MS);
        l.signalling(Some(sdp()), T0 + 30 * SEC);
        // Had the two earlier packets still counted, this one would latch.
        assert_eq!(
            l.on_packet(nat(), Some(3), T0 + 30 * SEC),
            Verdict::Drop(DropReason::Unconfirmed)
        );
    }

    #[test]
    fn confirm_zero_behaves_as_one() {
        let mut l = Latch::new(LatchConfig {
            confirm_packets: 0,
            ..LatchConfig::default()
        });
        l.signalling(Some(sdp()), T0);
        assert_eq!(l.on_packet(nat(), Some(1), T0), Verdict::Latched(nat()));
    }

    #[test]
    fn window_end_saturates() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        l.signalling(Some(sdp()), u64::MAX - 1);
        assert!(l.window_open(u64::MAX - 1));
        assert!(!l.window_open(T0), "time before the window is outside it");
    }

    #[test]
    fn ipv4_mapped_source_matches_ipv4_sdp() {
        let mut l = signalled(LatchMode::Heuristic, true, Some(sdp()));
        let mapped = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(192, 168, 1, 10).to_ipv6_mapped(),
            4000,
            7,
            0,
        ));
        // Latched with the address as the socket reported it, so it can be sent to.
        assert_eq!(l.on_packet(mapped, Some(1), T0), Verdict::Latched(mapped));
        assert_eq!(l.on_packet(sdp(), Some(2), T0 + 11 * SEC), Verdict::Accept);
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 4000, 0, 0));
        assert!(!same(v6, sdp()));
    }

    /// The attack the issue measured: 10 consecutive packets from a stranger before the caller
    /// speaks. Without a signalling source 8 get through (heuristic, 3 to confirm) and the
    /// stranger holds the latch; with one, none does and the NAT-ed caller still latches.
    #[test]
    fn a_signalling_source_keeps_strangers_out_and_lets_the_nat_in() {
        for strict in [true, false] {
            let mut open = signalled(LatchMode::Heuristic, true, Some(sdp()));
            let forwarded = (0..10u16)
                .filter(|&i| {
                    !matches!(
                        open.on_packet(attacker(), Some(100 + i), T0 + u64::from(i) * MS),
                        Verdict::Drop(_)
                    )
                })
                .count();
            assert_eq!(forwarded, 8, "the gap rule 5 closes");
            assert_eq!(open.peer(), Some(attacker()));

            let mut l = signalled(LatchMode::Heuristic, strict, Some(sdp()));
            l.signalling_from(Some(nat().ip()));
            for i in 0..10u16 {
                assert_eq!(
                    l.on_packet(attacker(), Some(100 + i), T0 + u64::from(i) * MS),
                    Verdict::Drop(DropReason::WrongSource),
                    "strict {strict}: packet {i} from a host signalling never named"
                );
            }
            assert_eq!(
                l.peer(),
                Some(sdp()),
                "no bleed: media still goes to the SDP address"
            );
            // The caller's NAT (its signalling IP, another port) proves itself and latches.
            let from_nat = SocketAddr::new(nat().ip(), 40_000);
            let verdicts: Vec<Verdict> = (0..3u16)
                .map(|i| l.on_packet(from_nat, Some(7 + i), T0 + SEC + u64::from(i) * MS))
                .collect();
            assert_eq!(verdicts[2], Verdict::Latched(from_nat), "strict {strict}");
            // Outside the window too, strangers stay out.
            assert_eq!(
                l.on_packet(attacker(), Some(1), T0 + 60 * SEC),
                Verdict::Drop(DropReason::WrongSource)
            );
        }
    }

    #[test]
    fn the_sdp_ip_is_vouched_for_on_any_port_and_immediate_mode_obeys_too() {
        let mut l = signalled(LatchMode::Immediate, true, Some(sdp()));
        l.signalling_from(Some(nat().ip()));
        assert_eq!(
            l.on_packet(attacker(), None, T0),
            Verdict::Drop(DropReason::WrongSource)
        );
        let sdp_host_other_port = SocketAddr::new(sdp().ip(), 4444);
        assert_eq!(
            l.on_packet(sdp_host_other_port, None, T0 + MS),
            Verdict::Latched(sdp_host_other_port)
        );
        // IPv4-mapped sources compare as IPv4.
        let mut m = signalled(LatchMode::Heuristic, true, None);
        m.signalling_from(Some(nat().ip()));
        let mapped = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(203, 0, 113, 7).to_ipv6_mapped(),
            5000,
            0,
            0,
        ));
        assert_eq!(
            m.on_packet(mapped, Some(1), T0),
            Verdict::Drop(DropReason::Unconfirmed)
        );
    }
}
