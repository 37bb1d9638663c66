//! SRTP and SRTCP (RFC 3711, RFC 7714) as sans-IO crypto contexts.
//!
//! # Use
//! One [`SrtpContext`] per direction of a leg, created from the SDES key of that direction
//! (RFC 4568: the base64-decoded `inline:` key is master key || master salt):
//!
//! ```
//! use sluice_media::srtp::{SrtpConfig, SrtpContext, SrtpProfile, MAX_RTP_OVERHEAD};
//!
//! let profile: SrtpProfile = "AES_CM_128_HMAC_SHA1_80".parse().unwrap();
//! let master = [7u8; 30]; // base64-decoded a=crypto inline key
//! let mut tx = SrtpContext::new(profile, &master, SrtpConfig::default()).unwrap();
//! let mut rx = SrtpContext::new(profile, &master, SrtpConfig::default()).unwrap();
//!
//! let mut buf = [0u8; 1500];
//! let rtp = [0x80, 0, 0, 1, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78, 0xff, 0xff];
//! buf[..rtp.len()].copy_from_slice(&rtp);
//! let srtp_len = tx.protect_rtp(&mut buf, rtp.len()).unwrap(); // needs len + 10 bytes here
//! assert!(srtp_len <= rtp.len() + MAX_RTP_OVERHEAD);
//! let rtp_len = rx.unprotect_rtp(&mut buf, srtp_len).unwrap();
//! assert_eq!(&buf[..rtp_len], &rtp);
//! ```
//!
//! Every call works in place on `buf[..len]` and returns the new length: protecting needs
//! [`SrtpProfile::rtp_overhead`] (at most [`MAX_RTP_OVERHEAD`] = 16) spare bytes after an RTP
//! packet and [`SrtpProfile::rtcp_overhead`] (at most [`MAX_RTCP_OVERHEAD`] = 20) after an
//! RTCP compound; an AF_XDP frame or a 2048-byte receive buffer always has them. Nothing is
//! allocated per packet (a new SSRC grows the context's small SSRC table once).
//!
//! RTP and RTCP share a port under RFC 5761: tell them apart with [`crate::rtp::is_rtcp`]
//! (the second byte of an SRTCP packet is in the clear) and call `unprotect_rtp` or
//! `unprotect_rtcp` accordingly.
//!
//! A failed call returns a [`SrtpError`] (the packet must be dropped), leaves the context's
//! state as it was, and bumps the matching field of [`SrtpContext::counters`]. Only packets
//! whose tag verified change the rollover counter, highest sequence number or replay lists,
//! which is also the rule for latching: latch an SRTP flow only on `Ok` from `unprotect_*`.
//!
//! Keys are never logged: the `Debug` output of contexts and [`SessionKeys`] leaves them out.
//! Session key copies, salts and the HMAC pad states are zeroed on drop; the AES key
//! schedules inside `aes` and `ring` are not (neither crate offers it without a cost per
//! packet).
//!
//! # What is implemented
//! - Profiles: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32 (SRTCP keeps the 80-bit tag,
//!   RFC 4568 6.2.2), AEAD_AES_128_GCM and AEAD_AES_256_GCM (RFC 7714).
//! - Key derivation with key derivation rate 0 ([`kdf`], RFC 3711 4.3).
//! - ROC estimation and rollover (RFC 3711 3.3.1, Appendix A), per SSRC, also on the
//!   sending side so that reordered input is protected with the right index.
//! - Replay lists of [`RTP_REPLAY_WINDOW`] = 1024 SRTP packets and [`RTCP_REPLAY_WINDOW`] =
//!   128 SRTCP packets per SSRC (why: see [`RTP_REPLAY_WINDOW`]).
//! - SRTCP with the E flag and 31-bit index (RFC 3711 3.4): sent encrypted with indices
//!   0, 1, 2, ...; received encrypted or not.
//! - Not implemented: MKI, key derivation rates other than 0, the F8 and NULL ciphers,
//!   unencrypted sending (UNENCRYPTED_SRTP/SRTCP session parameters).
//!
//! # Crypto backends, chosen by measurement
//! Measured on the development VM (Intel Xeon, AES-NI, PCLMULQDQ, SHA-NI, VAES; one core,
//! best of 7 runs of 200,000 operations), on the per-packet work of a 172-byte RTP packet:
//!
//! | primitive | candidate | ns |
//! |---|---|---|
//! | AES-128-CTR, 160 bytes | RustCrypto `aes` 0.8 + `ctr` 0.9, key schedule reused | 34-39 |
//! | | `aws-lc-rs` 1.x `EncryptingKey::ctr` | 45-49 |
//! | | RustCrypto, key expanded per packet | 70-113 |
//! | HMAC-SHA1, 176 bytes | `ring` 0.17 `hmac::Key` (pads precomputed) | 530-714 |
//! | | `aws-lc-rs` 1.x `hmac::Key` | 238-297 |
//! | | RustCrypto `hmac` + `sha1` (cloned keyed state) | 164-191 |
//! | | pads precomputed + RustCrypto `sha1::compress` (SHA-NI) | 142-148 |
//! | AES-128-GCM seal, 160 bytes | `ring` 0.17 | 71-76 |
//! | | `aws-lc-rs` 1.x | 94-95 |
//! | AES-256-GCM seal, 160 bytes | `ring` 0.17 | 74-95 |
//!
//! So: `ring` for AES-GCM (fastest, and the project's choice where it has the primitive);
//! RustCrypto `aes` + `ctr` for AES-CM (ring has no raw CTR; aws-lc-rs is slower here and
//! builds a C library); and for HMAC-SHA1 the RustCrypto `sha1` compression function with the
//! inner/outer pads compressed once per key (`primitives.rs`). ring's SHA-1 is portable code
//! without SHA-NI and costs about four times as much, which on a 172-byte packet would be
//! more than the whole of libsrtp+OpenSSL's budget.
//!
//! # Throughput
//! `cargo xtask bench srtp` on the same VM (one pinned core, 172-byte packets, median of 5
//! runs), ns per packet, sluice / libsrtp 2.5 on OpenSSL 3.0 / Debian's libsrtp 2.5 on NSS:
//! AES_CM_128_HMAC_SHA1_80 protect 211 / 394 / 1808, unprotect 197 / 405 / 1821;
//! AES_CM_128_HMAC_SHA1_32 205 / 403 / 1827 and 196 / 418 / 1858; AEAD_AES_128_GCM
//! 89 / 320 / 645 and 91 / 323 / 654; AEAD_AES_256_GCM 89 / 286 / 647 and 88 / 310 / 648.
//! Creating a context (key derivation and key schedules) takes about 0.5-0.7 us.

pub mod context;
pub mod kdf;
mod keys;
mod primitives;
pub mod replay;
pub mod suites;

pub use context::{SrtpConfig, SrtpContext, SrtpCounters, SrtpError, SrtpHandover};
pub use kdf::{KdfLabel, KeyError, SessionKeys};
pub use keys::SrtpKeys;
pub use replay::{RTCP_REPLAY_WINDOW, RTP_REPLAY_WINDOW, ReplayWindow};
pub use suites::{
    MAX_MASTER_LEN, MAX_RTCP_OVERHEAD, MAX_RTP_OVERHEAD, SrtpProfile, UnsupportedSuite,
};

/// Bytes from hex digits (whitespace ignored), for the unit tests' vectors.
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
