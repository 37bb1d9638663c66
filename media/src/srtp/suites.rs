//! The SRTP protection profiles sluice speaks, named as in SDES (RFC 4568 section 6.2,
//! RFC 7714 section 14.1), with the lengths that follow from each.

use std::fmt;
use std::str::FromStr;

/// An SRTP crypto suite: cipher, authentication and their key/salt/tag lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SrtpProfile {
    /// RFC 4568 6.2.1: AES-128 counter mode, HMAC-SHA1 with an 80-bit tag.
    AesCm128HmacSha1_80,
    /// RFC 4568 6.2.2: as `_80` but a 32-bit SRTP tag (SRTCP keeps the 80-bit tag).
    AesCm128HmacSha1_32,
    /// RFC 7714: AES-128-GCM, 16-byte tag, 96-bit salt.
    AeadAes128Gcm,
    /// RFC 7714: AES-256-GCM, 16-byte tag, 96-bit salt.
    AeadAes256Gcm,
}

/// The largest SRTP trailer of any profile: what `protect_rtp` may add to a packet.
pub const MAX_RTP_OVERHEAD: usize = 16;
/// The largest SRTCP trailer of any profile (tag plus the 4-byte E flag and SRTCP index).
pub const MAX_RTCP_OVERHEAD: usize = 20;
/// The longest master key plus master salt of any profile (AEAD_AES_256_GCM: 32 + 12).
pub const MAX_MASTER_LEN: usize = 44;

impl SrtpProfile {
    /// Every profile, strongest-first in the order an offer should list them.
    pub const ALL: [SrtpProfile; 4] = [
        SrtpProfile::AeadAes256Gcm,
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AesCm128HmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32,
    ];

    /// The crypto-suite name of an SDP `a=crypto` line.
    pub const fn sdes_name(self) -> &'static str {
        match self {
            Self::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Self::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Self::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Self::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// The profile of an SDES crypto-suite name (case-sensitive, as RFC 4568 registers them).
    pub fn from_sdes_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.sdes_name() == name)
    }

    /// Master (and session encryption) key length in bytes.
    pub const fn master_key_len(self) -> usize {
        match self {
            Self::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    /// Master (and session) salt length in bytes: 112 bits for AES-CM, 96 bits for AEAD.
    pub const fn master_salt_len(self) -> usize {
        if self.is_aead() { 12 } else { 14 }
    }

    /// Length of an SDES inline key after base64 decoding: master key followed by master salt.
    pub const fn master_len(self) -> usize {
        self.master_key_len() + self.master_salt_len()
    }

    /// SRTP authentication tag length in bytes.
    pub const fn rtp_tag_len(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80 => 10,
            Self::AesCm128HmacSha1_32 => 4,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => 16,
        }
    }

    /// SRTCP authentication tag length in bytes. RFC 4568 6.2.2: the `_32` suite still uses
    /// an 80-bit tag for SRTCP.
    pub const fn rtcp_tag_len(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80 | Self::AesCm128HmacSha1_32 => 10,
            Self::AeadAes128Gcm | Self::AeadAes256Gcm => 16,
        }
    }

    /// Bytes `protect_rtp` appends; the buffer needs this much room after the packet.
    pub const fn rtp_overhead(self) -> usize {
        self.rtp_tag_len()
    }

    /// Bytes `protect_rtcp` appends (E flag + SRTCP index, and the tag).
    pub const fn rtcp_overhead(self) -> usize {
        self.rtcp_tag_len() + 4
    }

    /// Whether this is an RFC 7714 AEAD profile (no separate authentication key).
    pub const fn is_aead(self) -> bool {
        matches!(self, Self::AeadAes128Gcm | Self::AeadAes256Gcm)
    }
}

impl fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sdes_name())
    }
}

/// An SDES crypto-suite name sluice does not implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported SRTP crypto suite {0:?}; supported: AEAD_AES_256_GCM, AEAD_AES_128_GCM, \
     AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32"
)]
pub struct UnsupportedSuite(pub String);

impl FromStr for SrtpProfile {
    type Err = UnsupportedSuite;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_sdes_name(s).ok_or_else(|| UnsupportedSuite(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lengths_match_the_rfcs() {
        for p in SrtpProfile::ALL {
            assert_eq!(p.sdes_name().parse::<SrtpProfile>(), Ok(p));
            assert!(p.rtp_overhead() <= MAX_RTP_OVERHEAD);
            assert!(p.rtcp_overhead() <= MAX_RTCP_OVERHEAD);
            assert!(p.master_len() <= MAX_MASTER_LEN);
        }
        // RFC 4568 6.2.1 / RFC 7714 14.2: inline key lengths (key || salt).
        assert_eq!(SrtpProfile::AesCm128HmacSha1_80.master_len(), 30);
        assert_eq!(SrtpProfile::AesCm128HmacSha1_32.master_len(), 30);
        assert_eq!(SrtpProfile::AeadAes128Gcm.master_len(), 28);
        assert_eq!(SrtpProfile::AeadAes256Gcm.master_len(), 44);
        assert!("F8_128_HMAC_SHA1_80".parse::<SrtpProfile>().is_err());
        assert!("aes_cm_128_hmac_sha1_80".parse::<SrtpProfile>().is_err());
    }
}
