//! The SRTP/SRTCP crypto context of one direction (RFC 3711 section 3.2): session keys, and
//! per SSRC the rollover counter, highest sequence number, SRTCP index and replay lists.

use super::kdf::{KeyError, SessionKeys};
use super::primitives::{AesCm, GCM_TAG_LEN, Gcm, HmacSha1, tags_equal};
use super::replay::{ReplayVerdict, ReplayWindow, estimate_index};
use super::suites::SrtpProfile;
use crate::rtp::{RTCP_MIN_LEN, RTP_HEADER_LEN};

/// Why a packet was not protected or unprotected. The packet must be dropped; the context's
/// state is unchanged and the matching [`SrtpCounters`] field has been incremented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The bytes are not an RTP/RTCP packet of this profile (too short, wrong version, header
    /// running past the end, `len` beyond the buffer).
    #[error("malformed packet: {reason}")]
    Malformed { reason: &'static str },
    /// `protect_*` needs room after the packet for the tag (and SRTCP index).
    #[error(
        "buffer of {capacity} bytes cannot hold the {needed}-byte protected packet; \
         give protect_rtp/protect_rtcp a buffer with MAX_RTP_OVERHEAD/MAX_RTCP_OVERHEAD spare bytes"
    )]
    BufferTooSmall { needed: usize, capacity: usize },
    /// The authentication tag did not verify: a forged, corrupted or wrongly keyed packet.
    #[error("authentication failed for SSRC {ssrc:#010x} (forged, corrupted, or keys differ)")]
    AuthFailed { ssrc: u32 },
    /// This packet index was already received (or, on protect, already sent).
    #[error("replayed packet: SSRC {ssrc:#010x} index {index}")]
    Replayed { ssrc: u32, index: u64 },
    /// The index lies behind the replay window (or before the stream's first packet).
    #[error("packet too old for the replay window: SSRC {ssrc:#010x} index {index}")]
    TooOld { ssrc: u32, index: u64 },
    /// RFC 3711 9.2: the 48-bit SRTP (or 31-bit SRTCP) index is used up; re-key the leg.
    #[error("SRTP packet index exhausted for SSRC {ssrc:#010x}: the leg must be re-keyed")]
    IndexExhausted { ssrc: u32 },
}

/// Per-context outcome counters (monotonic; one context is owned by one worker thread).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SrtpCounters {
    pub rtp_protected: u64,
    pub rtp_unprotected: u64,
    pub rtcp_protected: u64,
    pub rtcp_unprotected: u64,
    /// Tags that did not verify.
    pub auth_failed: u64,
    /// Packets whose index was already seen.
    pub replayed: u64,
    /// Packets behind the replay window.
    pub too_old: u64,
    /// Packets that were not RTP/RTCP or did not fit the buffer.
    pub malformed: u64,
    /// Packets refused because the index space is used up.
    pub index_exhausted: u64,
    /// SSRC states dropped to make room for a new SSRC (see [`SrtpConfig::max_streams`]).
    pub streams_evicted: u64,
}

/// Tunables of a context: `SrtpConfig::default()`, adjusted with the `with_*` methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SrtpConfig {
    /// How many SSRCs one context tracks (ROC, highest sequence, replay lists). When a new
    /// SSRC arrives with the table full, the least recently used one is forgotten and counted
    /// in [`SrtpCounters::streams_evicted`]; should that SSRC return, its state restarts as
    /// for a new stream. Only authenticated packets create state on the receiving side.
    pub max_streams: usize,
}

impl Default for SrtpConfig {
    fn default() -> Self {
        Self { max_streams: 16 }
    }
}

impl SrtpConfig {
    /// See [`SrtpConfig::max_streams`] (at least 1).
    pub fn with_max_streams(mut self, max_streams: usize) -> Self {
        self.max_streams = max_streams.max(1);
        self
    }
}

/// The per-SSRC state one context hands to another with the same keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtpHandover {
    pub ssrc: u32,
    /// SRTP: the highest packet index (ROC << 16 | SEQ) seen or sent, and which of those below
    /// it were accepted (RFC 3711 3.3.2), so that the new owner accepts none of them again.
    pub rtp: ReplayWindow<16>,
    /// The next SRTCP index to send.
    pub srtcp_next_index: u32,
    /// SRTCP received: the same replay list over the explicit index.
    pub srtcp: ReplayWindow<2>,
}

impl SrtpHandover {
    /// A stream whose highest SRTP index is `rtp_index`, with nothing accepted below it and
    /// no SRTCP received.
    pub fn at(ssrc: u32, rtp_index: Option<u64>, srtcp_next_index: u32) -> Self {
        SrtpHandover {
            ssrc,
            rtp: rtp_index.map(ReplayWindow::starting_at).unwrap_or_default(),
            srtcp_next_index,
            srtcp: ReplayWindow::default(),
        }
    }

    /// The highest SRTP index, if any packet was seen or sent.
    pub fn rtp_index(&self) -> Option<u64> {
        self.rtp.top()
    }

    /// Both owners' state of the same SSRC together: the higher indices, every accepted index
    /// of either (RFC 3711 3.3.2), and the higher next SRTCP index (3.4: never sent twice).
    pub fn merge(&self, other: &SrtpHandover) -> SrtpHandover {
        let mut m = *self;
        m.rtp.absorb(&other.rtp);
        m.srtcp.absorb(&other.srtcp);
        m.srtcp_next_index = m.srtcp_next_index.max(other.srtcp_next_index);
        m
    }
}

/// State of one SSRC (RFC 3711 3.2.1 and 3.2.2).
#[derive(Debug, Clone)]
struct Stream {
    ssrc: u32,
    last_used: u64,
    /// SRTP: highest index as ROC || s_l is `rtp_window.top()`.
    rtp_window: ReplayWindow<16>,
    /// SRTCP sender: the next index to use (RFC 3711 3.4: starts at 0).
    rtcp_next_index: u32,
    /// SRTCP receiver: replay list over the explicit index.
    rtcp_window: ReplayWindow<2>,
}

impl Stream {
    fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            last_used: 0,
            rtp_window: ReplayWindow::default(),
            rtcp_next_index: 0,
            rtcp_window: ReplayWindow::default(),
        }
    }

    /// RFC 3711 3.3.1: the packet index of `seq` given this stream's ROC and s_l (may be
    /// out of range: see [`estimate_index`]).
    fn estimate(&self, seq: u16) -> i64 {
        match self.rtp_window.top() {
            Some(top) => estimate_index((top >> 16) as u32, top as u16, seq),
            // The first packet of a stream: ROC 0, s_l := SEQ.
            None => i64::from(seq),
        }
    }
}

/// The SRTP packet index of `seq` for `ssrc`, refused when it is out of range or fails the
/// replay check (RFC 3711 3.3.1, 3.3.2). Changes nothing.
#[inline]
fn rtp_index(stream: Option<&Stream>, ssrc: u32, seq: u16) -> Result<u64, SrtpError> {
    let Some(stream) = stream else {
        return Ok(u64::from(seq));
    };
    let index = stream.estimate(seq);
    let index = match u64::try_from(index) {
        Ok(i) if i <= MAX_SRTP_INDEX => i,
        Ok(_) => return Err(SrtpError::IndexExhausted { ssrc }),
        // Before the stream's first packet: older than anything the window holds.
        Err(_) => return Err(SrtpError::TooOld { ssrc, index: 0 }),
    };
    stream
        .rtp_window
        .check(index)
        .map_err(|v| SrtpContext::replay_error(ssrc, index, v))?;
    Ok(index)
}

/// A small SSRC-keyed table, bounded by [`SrtpConfig::max_streams`]; lookups check the most
/// recently used entry first (a leg usually carries one SSRC).
#[derive(Debug)]
struct Streams {
    slots: Vec<Stream>,
    max: usize,
    last: usize,
    tick: u64,
}

impl Streams {
    fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            slots: Vec::with_capacity(max.min(2)),
            max,
            last: 0,
            tick: 0,
        }
    }

    #[inline]
    fn find(&self, ssrc: u32) -> Option<usize> {
        if self.slots.get(self.last).is_some_and(|s| s.ssrc == ssrc) {
            return Some(self.last);
        }
        self.slots.iter().position(|s| s.ssrc == ssrc)
    }

    #[inline]
    fn get(&self, ssrc: u32) -> Option<&Stream> {
        self.find(ssrc).map(|i| &self.slots[i])
    }

    /// The stream of `ssrc`, created (and perhaps evicting the least recently used one) if
    /// needed; the bool says whether one was evicted.
    #[inline]
    fn get_or_insert(&mut self, ssrc: u32) -> (&mut Stream, bool) {
        self.tick += 1;
        let mut evicted = false;
        let i = match self.find(ssrc) {
            Some(i) => i,
            None if self.slots.len() < self.max => {
                // Grows only when a new SSRC appears, never per packet.
                self.slots.push(Stream::new(ssrc));
                self.slots.len() - 1
            }
            None => {
                let i = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.last_used)
                    .map_or(0, |(i, _)| i);
                self.slots[i] = Stream::new(ssrc);
                evicted = true;
                i
            }
        };
        self.last = i;
        let stream = &mut self.slots[i];
        stream.last_used = self.tick;
        (stream, evicted)
    }
}

/// The transforms of one direction: SRTP and SRTCP keys ready for use. Unboxed on purpose
/// (one indirection less per packet; the size is paid once per context).
#[allow(clippy::large_enum_variant)]
enum Transform {
    CmHmac {
        rtp_cipher: AesCm,
        rtp_auth: HmacSha1,
        rtcp_cipher: AesCm,
        rtcp_auth: HmacSha1,
    },
    Gcm {
        rtp: Gcm,
        rtcp: Gcm,
    },
}

/// An SRTP/SRTCP crypto context for one direction of one leg (RFC 3711 3.2): use one to
/// `protect_*` what sluice sends, and another, keyed with the peer's key, to `unprotect_*`
/// what it receives. It tracks every SSRC of that direction separately (ROC, highest
/// sequence number, SRTCP index, replay lists).
///
/// Sans-IO and allocation-free per packet: the caller passes the packet in a buffer, the
/// context transforms it in place and returns the new length.
pub struct SrtpContext {
    profile: SrtpProfile,
    transform: Transform,
    rtp_salt: [u8; 14],
    rtcp_salt: [u8; 14],
    streams: Streams,
    counters: SrtpCounters,
}

impl std::fmt::Debug for SrtpContext {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext")
            .field("profile", &self.profile)
            .field("streams", &self.streams.slots.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Checks `len` against the buffer and returns the packet.
#[inline]
fn packet_len(buf: &[u8], len: usize) -> Result<usize, &'static str> {
    if len > buf.len() {
        Err("length beyond the buffer")
    } else {
        Ok(len)
    }
}

/// RFC 3550 5.1: fixed header, CSRCs and extension must fit in `avail` bytes.
#[inline]
fn rtp_header_len(pkt: &[u8], avail: usize) -> Result<usize, &'static str> {
    if avail < RTP_HEADER_LEN {
        return Err("shorter than an RTP header plus tag");
    }
    if pkt[0] >> 6 != 2 {
        return Err("RTP version is not 2");
    }
    let mut hlen = RTP_HEADER_LEN + 4 * usize::from(pkt[0] & 0x0f);
    if pkt[0] & 0x10 != 0 {
        if hlen + 4 > avail {
            return Err("RTP header extension runs past the packet");
        }
        let words = usize::from(u16::from_be_bytes([pkt[hlen + 2], pkt[hlen + 3]]));
        hlen += 4 + 4 * words;
    }
    if hlen > avail {
        return Err("RTP CSRC list or extension runs past the packet");
    }
    Ok(hlen)
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// RFC 3711 4.1.1: IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16).
#[inline]
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    for (d, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *d ^= s;
    }
    iv
}

/// RFC 7714 8.1: IV = (0x0000 || SSRC || ROC || SEQ) XOR salt.
#[inline]
fn gcm_rtp_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
    for (d, s) in iv.iter_mut().zip(salt) {
        *d ^= s;
    }
    iv
}

/// RFC 7714 9.1: IV = (0x0000 || SSRC || 0x0000 || 0 || SRTCP index) XOR salt.
#[inline]
fn gcm_rtcp_iv(salt: &[u8; 14], ssrc: u32, index: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[8..12].copy_from_slice(&index.to_be_bytes());
    for (d, s) in iv.iter_mut().zip(salt) {
        *d ^= s;
    }
    iv
}

/// RFC 3711 3.4: the E flag, set when the SRTCP payload is encrypted.
const E_FLAG: u32 = 0x8000_0000;
/// RFC 3711 3.4: the SRTCP index is 31 bits.
const MAX_SRTCP_INDEX: u32 = 0x7fff_ffff;
/// RFC 3711 3.2.1: the SRTP packet index is 48 bits.
const MAX_SRTP_INDEX: u64 = (1 << 48) - 1;

impl SrtpContext {
    /// A context from an SDES inline key (RFC 4568 6.1): `master` is the base64-decoded
    /// `inline:` key, master key followed by master salt ([`SrtpProfile::master_len`] bytes).
    pub fn new(profile: SrtpProfile, master: &[u8], config: SrtpConfig) -> Result<Self, KeyError> {
        if master.len() != profile.master_len() {
            return Err(KeyError::WrongLength {
                profile,
                expected: profile.master_len(),
                got: master.len(),
            });
        }
        let (key, salt) = master.split_at(profile.master_key_len());
        Ok(Self::from_keys(
            &SessionKeys::derive(profile, key, salt)?,
            config,
        ))
    }

    /// A context from already-derived (or directly given) session keys.
    pub fn from_keys(keys: &SessionKeys, config: SrtpConfig) -> Self {
        let profile = keys.profile;
        let key_len = profile.master_key_len();
        let transform = if profile.is_aead() {
            Transform::Gcm {
                rtp: Gcm::new(&keys.rtp_key[..key_len]).expect("16 or 32-byte key"),
                rtcp: Gcm::new(&keys.rtcp_key[..key_len]).expect("16 or 32-byte key"),
            }
        } else {
            Transform::CmHmac {
                rtp_cipher: AesCm::new(&keys.rtp_key[..key_len]).expect("16-byte key"),
                rtp_auth: HmacSha1::new(&keys.rtp_auth),
                rtcp_cipher: AesCm::new(&keys.rtcp_key[..key_len]).expect("16-byte key"),
                rtcp_auth: HmacSha1::new(&keys.rtcp_auth),
            }
        };
        Self {
            profile,
            transform,
            rtp_salt: keys.rtp_salt,
            rtcp_salt: keys.rtcp_salt,
            streams: Streams::new(config.max_streams),
            counters: SrtpCounters::default(),
        }
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    pub fn counters(&self) -> &SrtpCounters {
        &self.counters
    }

    /// The rollover counter and highest sequence number tracked for `ssrc`, if any.
    pub fn rtp_state(&self, ssrc: u32) -> Option<(u32, u16)> {
        let top = self.streams.get(ssrc)?.rtp_window.top()?;
        Some(((top >> 16) as u32, top as u16))
    }

    /// What this context knows of its most recently used SSRC, for a context with the same keys
    /// elsewhere to continue from ([`SrtpContext::take_over`]).
    pub fn handover(&self) -> Option<SrtpHandover> {
        let s = self.streams.slots.get(self.streams.last)?;
        Some(SrtpHandover {
            ssrc: s.ssrc,
            rtp: s.rtp_window,
            srtcp_next_index: s.rtcp_next_index,
            srtcp: s.rtcp_window,
        })
    }

    /// Continues where another context with the same keys left off (a stream moving between
    /// the userspace engine and an AF_XDP worker): the SSRC's highest RTP index (so the rollover
    /// counter is right after a wrap) and the replay lists (nothing the other accepted is
    /// accepted again), and its next SRTCP index, plus `srtcp_margin` for packets the other may
    /// still send. Only moves forward.
    pub fn take_over(&mut self, h: SrtpHandover, srtcp_margin: u32) {
        let (s, _) = self.streams.get_or_insert(h.ssrc);
        s.rtp_window.absorb(&h.rtp);
        s.rtcp_window.absorb(&h.srtcp);
        let next = h.srtcp_next_index.saturating_add(srtcp_margin);
        s.rtcp_next_index = s.rtcp_next_index.max(next);
    }

    /// The SRTCP index the next `protect_rtcp` for `ssrc` will use.
    pub fn next_srtcp_index(&self, ssrc: u32) -> u32 {
        self.streams.get(ssrc).map_or(0, |s| s.rtcp_next_index)
    }

    /// Counts an error and passes it on.
    #[cold]
    fn fail(&mut self, e: SrtpError) -> SrtpError {
        let c = &mut self.counters;
        match e {
            SrtpError::Malformed { .. } | SrtpError::BufferTooSmall { .. } => c.malformed += 1,
            SrtpError::AuthFailed { .. } => c.auth_failed += 1,
            SrtpError::Replayed { .. } => c.replayed += 1,
            SrtpError::TooOld { .. } => c.too_old += 1,
            SrtpError::IndexExhausted { .. } => c.index_exhausted += 1,
        }
        e
    }

    fn replay_error(ssrc: u32, index: u64, verdict: ReplayVerdict) -> SrtpError {
        match verdict {
            ReplayVerdict::Replayed => SrtpError::Replayed { ssrc, index },
            ReplayVerdict::TooOld => SrtpError::TooOld { ssrc, index },
        }
    }

    /// Encrypts and authenticates the RTP packet `buf[..len]` in place (RFC 3711 3.3,
    /// RFC 7714 8) and returns the SRTP length, `len + profile.rtp_overhead()`; `buf` must have
    /// that much room. Refuses to reuse a packet index already sent (a duplicate or a packet
    /// more than [`super::RTP_REPLAY_WINDOW`] behind), since that would reuse keystream.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.protect_rtp_inner(buf, len) {
            Ok(n) => {
                self.counters.rtp_protected += 1;
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    #[inline]
    fn protect_rtp_inner(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let malformed = |reason| SrtpError::Malformed { reason };
        let len = packet_len(buf, len).map_err(malformed)?;
        let hlen = rtp_header_len(buf, len).map_err(malformed)?;
        let tag_len = self.profile.rtp_tag_len();
        let needed = len + tag_len;
        if buf.len() < needed {
            return Err(SrtpError::BufferTooSmall {
                needed,
                capacity: buf.len(),
            });
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be32(buf, 8);
        let index = rtp_index(self.streams.get(ssrc), ssrc, seq)?;
        match &self.transform {
            Transform::CmHmac {
                rtp_cipher,
                rtp_auth,
                ..
            } => {
                // RFC 3711 3.3: encrypt the payload, then tag header || payload || ROC.
                let iv = cm_iv(&self.rtp_salt, ssrc, index);
                rtp_cipher.apply_keystream(&iv, &mut buf[hlen..len]);
                let roc = ((index >> 16) as u32).to_be_bytes();
                let tag = rtp_auth.mac(&buf[..len], &roc);
                buf[len..needed].copy_from_slice(&tag[..tag_len]);
            }
            Transform::Gcm { rtp, .. } => {
                // RFC 7714 8.2: AAD is the header, the tag follows the ciphertext.
                let iv = gcm_rtp_iv(&self.rtp_salt, ssrc, index);
                let (header, rest) = buf.split_at_mut(hlen);
                let tag = rtp.seal(iv, header, &mut rest[..len - hlen]);
                buf[len..needed].copy_from_slice(&tag);
            }
        }
        let (stream, evicted) = self.streams.get_or_insert(ssrc);
        stream.rtp_window.accept(index);
        self.counters.streams_evicted += u64::from(evicted);
        Ok(needed)
    }

    /// Verifies and decrypts the SRTP packet `buf[..len]` in place (RFC 3711 3.3,
    /// RFC 7714 8) and returns the RTP length. The replay check comes before the
    /// authentication and the state (ROC, highest sequence, replay list) changes only for a
    /// packet whose tag verified. On `AuthFailed` the packet bytes are unspecified (AES-GCM
    /// decrypts in place before the tag comparison fails); drop the packet.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.unprotect_rtp_inner(buf, len) {
            Ok(n) => {
                self.counters.rtp_unprotected += 1;
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    #[inline]
    fn unprotect_rtp_inner(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let malformed = |reason| SrtpError::Malformed { reason };
        let len = packet_len(buf, len).map_err(malformed)?;
        let tag_len = self.profile.rtp_tag_len();
        let body_len = len
            .checked_sub(tag_len)
            .ok_or(malformed("shorter than an RTP header plus tag"))?;
        let hlen = rtp_header_len(buf, body_len).map_err(malformed)?;
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be32(buf, 8);
        // RFC 3711 3.3.2: the replay check may come before authentication (cheap reject).
        let index = rtp_index(self.streams.get(ssrc), ssrc, seq)?;
        match &self.transform {
            Transform::CmHmac {
                rtp_cipher,
                rtp_auth,
                ..
            } => {
                let roc = ((index >> 16) as u32).to_be_bytes();
                let tag = rtp_auth.mac(&buf[..body_len], &roc);
                if !tags_equal(&tag[..tag_len], &buf[body_len..len]) {
                    return Err(SrtpError::AuthFailed { ssrc });
                }
                let iv = cm_iv(&self.rtp_salt, ssrc, index);
                rtp_cipher.apply_keystream(&iv, &mut buf[hlen..body_len]);
            }
            Transform::Gcm { rtp, .. } => {
                let iv = gcm_rtp_iv(&self.rtp_salt, ssrc, index);
                let (header, rest) = buf.split_at_mut(hlen);
                rtp.open(iv, header, &mut rest[..len - hlen])
                    .ok_or(SrtpError::AuthFailed { ssrc })?;
            }
        }
        // RFC 3711 3.3.1: update ROC and s_l (and the replay list) only after authentication.
        let (stream, evicted) = self.streams.get_or_insert(ssrc);
        stream.rtp_window.accept(index);
        self.counters.streams_evicted += u64::from(evicted);
        Ok(body_len)
    }

    /// Encrypts and authenticates the RTCP compound `buf[..len]` in place (RFC 3711 3.4,
    /// RFC 7714 9) with the next SRTCP index of its sender SSRC, E flag set. Returns the
    /// SRTCP length, `len + profile.rtcp_overhead()`; `buf` must have that much room.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.protect_rtcp_inner(buf, len) {
            Ok(n) => {
                self.counters.rtcp_protected += 1;
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn protect_rtcp_inner(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let malformed = |reason| SrtpError::Malformed { reason };
        let len = packet_len(buf, len).map_err(malformed)?;
        if len < RTCP_MIN_LEN {
            return Err(malformed("shorter than an RTCP header plus sender SSRC"));
        }
        if buf[0] >> 6 != 2 {
            return Err(malformed("RTCP version is not 2"));
        }
        let tag_len = self.profile.rtcp_tag_len();
        let needed = len + 4 + tag_len;
        if buf.len() < needed {
            return Err(SrtpError::BufferTooSmall {
                needed,
                capacity: buf.len(),
            });
        }
        let ssrc = be32(buf, 4);
        let index = self.streams.get(ssrc).map_or(0, |s| s.rtcp_next_index);
        if index > MAX_SRTCP_INDEX {
            return Err(SrtpError::IndexExhausted { ssrc });
        }
        let e_index = (E_FLAG | index).to_be_bytes();
        match &self.transform {
            Transform::CmHmac {
                rtcp_cipher,
                rtcp_auth,
                ..
            } => {
                // RFC 3711 3.4: encrypt after the first 8 bytes, append E || index, then tag
                // everything before the tag.
                let iv = cm_iv(&self.rtcp_salt, ssrc, u64::from(index));
                rtcp_cipher.apply_keystream(&iv, &mut buf[RTCP_MIN_LEN..len]);
                buf[len..len + 4].copy_from_slice(&e_index);
                let tag = rtcp_auth.mac(&buf[..len + 4], &[]);
                buf[len + 4..needed].copy_from_slice(&tag[..tag_len]);
            }
            Transform::Gcm { rtcp, .. } => {
                // RFC 7714 9.2: AAD = header and sender SSRC || E || index; the tag follows the
                // ciphertext and E || index comes last.
                let iv = gcm_rtcp_iv(&self.rtcp_salt, ssrc, index);
                let mut aad = [0u8; RTCP_MIN_LEN + 4];
                aad[..RTCP_MIN_LEN].copy_from_slice(&buf[..RTCP_MIN_LEN]);
                aad[RTCP_MIN_LEN..].copy_from_slice(&e_index);
                let tag = rtcp.seal(iv, &aad, &mut buf[RTCP_MIN_LEN..len]);
                buf[len..len + GCM_TAG_LEN].copy_from_slice(&tag);
                buf[len + GCM_TAG_LEN..needed].copy_from_slice(&e_index);
            }
        }
        let (stream, evicted) = self.streams.get_or_insert(ssrc);
        stream.rtcp_next_index = index + 1;
        self.counters.streams_evicted += u64::from(evicted);
        Ok(needed)
    }

    /// Verifies and (when its E flag is set) decrypts the SRTCP packet `buf[..len]` in place
    /// (RFC 3711 3.4, RFC 7714 9) and returns the RTCP length. Replayed or too old SRTCP
    /// indices are refused; the replay list changes only for authenticated packets.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        match self.unprotect_rtcp_inner(buf, len) {
            Ok(n) => {
                self.counters.rtcp_unprotected += 1;
                Ok(n)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn unprotect_rtcp_inner(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let malformed = |reason| SrtpError::Malformed { reason };
        let len = packet_len(buf, len).map_err(malformed)?;
        let tag_len = self.profile.rtcp_tag_len();
        let plain_len = len
            .checked_sub(4 + tag_len)
            .filter(|&n| n >= RTCP_MIN_LEN)
            .ok_or(malformed("shorter than an SRTCP header, index and tag"))?;
        if buf[0] >> 6 != 2 {
            return Err(malformed("RTCP version is not 2"));
        }
        let ssrc = be32(buf, 4);
        // CM: header | payload | E+index | tag.  GCM: header | payload | tag | E+index.
        let e_index_at = if self.profile.is_aead() {
            len - 4
        } else {
            plain_len
        };
        let e_index = be32(buf, e_index_at);
        let encrypted = e_index & E_FLAG != 0;
        let index = e_index & MAX_SRTCP_INDEX;
        if let Some(stream) = self.streams.get(ssrc) {
            stream
                .rtcp_window
                .check(u64::from(index))
                .map_err(|v| Self::replay_error(ssrc, u64::from(index), v))?;
        }
        match &self.transform {
            Transform::CmHmac {
                rtcp_cipher,
                rtcp_auth,
                ..
            } => {
                let tag = rtcp_auth.mac(&buf[..plain_len + 4], &[]);
                if !tags_equal(&tag[..tag_len], &buf[plain_len + 4..len]) {
                    return Err(SrtpError::AuthFailed { ssrc });
                }
                if encrypted {
                    let iv = cm_iv(&self.rtcp_salt, ssrc, u64::from(index));
                    rtcp_cipher.apply_keystream(&iv, &mut buf[RTCP_MIN_LEN..plain_len]);
                }
            }
            Transform::Gcm { rtcp, .. } => {
                let iv = gcm_rtcp_iv(&self.rtcp_salt, ssrc, index);
                let e_index = e_index.to_be_bytes();
                if encrypted {
                    let mut aad = [0u8; RTCP_MIN_LEN + 4];
                    aad[..RTCP_MIN_LEN].copy_from_slice(&buf[..RTCP_MIN_LEN]);
                    aad[RTCP_MIN_LEN..].copy_from_slice(&e_index);
                    rtcp.open(iv, &aad, &mut buf[RTCP_MIN_LEN..len - 4])
                        .ok_or(SrtpError::AuthFailed { ssrc })?;
                } else {
                    // RFC 7714 9.3: unencrypted SRTCP authenticates the whole packet and
                    // E || index as AAD with an empty plaintext. Move E || index next to the
                    // packet so that the AAD is contiguous, keeping the tag aside.
                    let mut tag = [0u8; GCM_TAG_LEN];
                    tag.copy_from_slice(&buf[plain_len..plain_len + GCM_TAG_LEN]);
                    buf[plain_len..plain_len + 4].copy_from_slice(&e_index);
                    let ok = rtcp.open(iv, &buf[..plain_len + 4], &mut tag).is_some();
                    if !ok {
                        return Err(SrtpError::AuthFailed { ssrc });
                    }
                }
            }
        }
        let (stream, evicted) = self.streams.get_or_insert(ssrc);
        stream.rtcp_window.accept(u64::from(index));
        self.counters.streams_evicted += u64::from(evicted);
        Ok(plain_len)
    }
}

impl Drop for SrtpContext {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.rtp_salt.zeroize();
        self.rtcp_salt.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16) -> [u8; 64] {
        let mut p = [0u8; 64];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&7u32.to_be_bytes());
        p
    }

    /// RFC 3711 3.2.1 / 9.2: after 2^48 packets the sender must stop; so must the receiver.
    #[test]
    fn index_exhaustion_stops_both_sides() {
        for profile in SrtpProfile::ALL {
            let key = vec![3u8; profile.master_len()];
            let mut tx = SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap();
            let mut rx = SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap();
            let mut buf = packet(0xfff0);
            let len = tx.protect_rtp(&mut buf, 30).unwrap();
            rx.unprotect_rtp(&mut buf, len).unwrap();
            let last = (u64::from(u32::MAX) << 16) | 0xfff0;
            for ctx in [&mut tx, &mut rx] {
                let (stream, _) = ctx.streams.get_or_insert(7);
                stream.rtp_window = ReplayWindow::default();
                stream.rtp_window.accept(last);
            }
            // The last ROC still works up to sequence 65535...
            let mut buf = packet(0xffff);
            let len = tx.protect_rtp(&mut buf, 30).unwrap();
            assert_eq!(rx.unprotect_rtp(&mut buf, len), Ok(30));
            assert_eq!(rx.rtp_state(7), Some((u32::MAX, 0xffff)));
            // ... and then the index space is used up.
            let mut buf = packet(0);
            assert_eq!(
                tx.protect_rtp(&mut buf, 30),
                Err(SrtpError::IndexExhausted { ssrc: 7 })
            );
            assert_eq!(
                rx.unprotect_rtp(&mut buf, 30 + profile.rtp_tag_len()),
                Err(SrtpError::IndexExhausted { ssrc: 7 })
            );
            assert_eq!(tx.counters().index_exhausted, 1);
        }
    }

    #[test]
    fn srtcp_index_exhaustion() {
        let profile = SrtpProfile::AesCm128HmacSha1_80;
        let mut tx = SrtpContext::new(profile, &[1; 30], SrtpConfig::default()).unwrap();
        let mut buf = [0u8; 64];
        buf[0] = 0x80;
        buf[1] = 200;
        buf[4..8].copy_from_slice(&7u32.to_be_bytes());
        tx.protect_rtcp(&mut buf.clone(), 8).unwrap();
        tx.streams.get_or_insert(7).0.rtcp_next_index = MAX_SRTCP_INDEX;
        tx.protect_rtcp(&mut buf.clone(), 8).unwrap();
        assert_eq!(
            tx.protect_rtcp(&mut buf, 8),
            Err(SrtpError::IndexExhausted { ssrc: 7 })
        );
    }
}
