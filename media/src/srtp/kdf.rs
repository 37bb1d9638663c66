//! SRTP key derivation (RFC 3711 section 4.3) with key derivation rate 0, the only rate SDES
//! offers by default and the only one RFC 7714 and DTLS-SRTP use.
//!
//! The pseudo-random function is AES in counter mode keyed with the master key (AES-128, or
//! AES-256 for a 256-bit master key, RFC 6188 / RFC 7714 section 11). For label `l` the counter
//! block is `(master_salt XOR (l << 48)) << 16`: the salt, padded on the right with zero bytes
//! to 112 bits when it is the 96-bit AEAD salt, with the label XORed into its eighth byte.
//! This is libsrtp's layout, which the libsrtp interop tests pin down.

use zeroize::Zeroize;

use super::primitives::AesCm;
use super::suites::SrtpProfile;

/// The key derivation labels of RFC 3711 4.3.2 (and 4.3.3 for SRTCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KdfLabel {
    RtpEncryption = 0x00,
    RtpAuthentication = 0x01,
    RtpSalt = 0x02,
    RtcpEncryption = 0x03,
    RtcpAuthentication = 0x04,
    RtcpSalt = 0x05,
}

/// Why a master key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error(
        "{profile} needs a {expected}-byte master key and salt (key || salt, as in an SDES \
         inline key), got {got} bytes"
    )]
    WrongLength {
        profile: SrtpProfile,
        expected: usize,
        got: usize,
    },
}

/// Fills `out` with the PRF output of RFC 3711 4.3.1 for `label` (key derivation rate 0).
///
/// `master_key` must be 16 or 32 bytes and `master_salt` at most 14 bytes.
pub fn derive(master_key: &[u8], master_salt: &[u8], label: KdfLabel, out: &mut [u8]) {
    let prf = AesCm::new(master_key).expect("master key is 16 or 32 bytes");
    derive_with(&prf, master_salt, label, out);
}

fn derive_with(prf: &AesCm, master_salt: &[u8], label: KdfLabel, out: &mut [u8]) {
    assert!(master_salt.len() <= 14, "master salt longer than 112 bits");
    // key_id = label || r with r = 0 (kdr = 0); x = key_id XOR master_salt, right-aligned in
    // 112 bits, then shifted left by 16 bits to form the counter block.
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label as u8;
    out.fill(0);
    prf.apply_keystream(&iv, out);
}

/// The session keys of one direction of SRTP and SRTCP (RFC 3711 4.3.2).
///
/// Unused parts stay zero: AEAD profiles have no authentication key, and the 96-bit AEAD salt
/// leaves the last two salt bytes zero.
#[derive(Clone)]
pub struct SessionKeys {
    pub(crate) profile: SrtpProfile,
    pub(crate) rtp_key: [u8; 32],
    pub(crate) rtp_auth: [u8; 20],
    pub(crate) rtp_salt: [u8; 14],
    pub(crate) rtcp_key: [u8; 32],
    pub(crate) rtcp_auth: [u8; 20],
    pub(crate) rtcp_salt: [u8; 14],
}

impl SessionKeys {
    /// Derives all six session keys from an SDES/DTLS master key and salt.
    pub fn derive(
        profile: SrtpProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Self, KeyError> {
        if master_key.len() != profile.master_key_len()
            || master_salt.len() != profile.master_salt_len()
        {
            return Err(KeyError::WrongLength {
                profile,
                expected: profile.master_len(),
                got: master_key.len() + master_salt.len(),
            });
        }
        let prf = AesCm::new(master_key).expect("checked length");
        let key_len = profile.master_key_len();
        let salt_len = profile.master_salt_len();
        let mut keys = Self::zero(profile);
        derive_with(
            &prf,
            master_salt,
            KdfLabel::RtpEncryption,
            &mut keys.rtp_key[..key_len],
        );
        derive_with(
            &prf,
            master_salt,
            KdfLabel::RtpSalt,
            &mut keys.rtp_salt[..salt_len],
        );
        derive_with(
            &prf,
            master_salt,
            KdfLabel::RtcpEncryption,
            &mut keys.rtcp_key[..key_len],
        );
        derive_with(
            &prf,
            master_salt,
            KdfLabel::RtcpSalt,
            &mut keys.rtcp_salt[..salt_len],
        );
        if !profile.is_aead() {
            derive_with(
                &prf,
                master_salt,
                KdfLabel::RtpAuthentication,
                &mut keys.rtp_auth,
            );
            derive_with(
                &prf,
                master_salt,
                KdfLabel::RtcpAuthentication,
                &mut keys.rtcp_auth,
            );
        }
        Ok(keys)
    }

    /// Session keys given directly, as the RFC 3711 B.2 and RFC 7714 section 16 known-answer
    /// vectors do; the same keys serve SRTP and SRTCP. Real callers use [`SessionKeys::derive`].
    ///
    /// Returns `None` when a length does not match the profile (the auth key is ignored for
    /// AEAD profiles and must be 20 bytes otherwise).
    pub fn from_session_keys(
        profile: SrtpProfile,
        key: &[u8],
        salt: &[u8],
        auth: &[u8],
    ) -> Option<Self> {
        if key.len() != profile.master_key_len()
            || salt.len() != profile.master_salt_len()
            || (!profile.is_aead() && auth.len() != 20)
        {
            return None;
        }
        let mut keys = Self::zero(profile);
        keys.rtp_key[..key.len()].copy_from_slice(key);
        keys.rtcp_key[..key.len()].copy_from_slice(key);
        keys.rtp_salt[..salt.len()].copy_from_slice(salt);
        keys.rtcp_salt[..salt.len()].copy_from_slice(salt);
        if !profile.is_aead() {
            keys.rtp_auth.copy_from_slice(auth);
            keys.rtcp_auth.copy_from_slice(auth);
        }
        Some(keys)
    }

    fn zero(profile: SrtpProfile) -> Self {
        Self {
            profile,
            rtp_key: [0; 32],
            rtp_auth: [0; 20],
            rtp_salt: [0; 14],
            rtcp_key: [0; 32],
            rtcp_auth: [0; 20],
            rtcp_salt: [0; 14],
        }
    }

    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// The SRTP session encryption key (for known-answer tests; never log it).
    pub fn rtp_key(&self) -> &[u8] {
        &self.rtp_key[..self.profile.master_key_len()]
    }

    /// The SRTP session salt (for known-answer tests; never log it).
    pub fn rtp_salt(&self) -> &[u8] {
        &self.rtp_salt[..self.profile.master_salt_len()]
    }

    /// The SRTP session authentication key; empty for AEAD profiles.
    pub fn rtp_auth_key(&self) -> &[u8] {
        if self.profile.is_aead() {
            &[]
        } else {
            &self.rtp_auth
        }
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.rtp_key.zeroize();
        self.rtp_auth.zeroize();
        self.rtp_salt.zeroize();
        self.rtcp_key.zeroize();
        self.rtcp_auth.zeroize();
        self.rtcp_salt.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::srtp::unhex;

    /// RFC 3711 Appendix B.3: key derivation test vectors.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let master_key = unhex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let master_salt = unhex("0EC675AD498AFEEBB6960B3AABE6");

        let mut cipher_key = [0u8; 16];
        derive(
            &master_key,
            &master_salt,
            KdfLabel::RtpEncryption,
            &mut cipher_key,
        );
        assert_eq!(
            cipher_key.to_vec(),
            unhex("C61E7A93744F39EE10734AFE3FF7A087")
        );

        let mut cipher_salt = [0u8; 14];
        derive(
            &master_key,
            &master_salt,
            KdfLabel::RtpSalt,
            &mut cipher_salt,
        );
        assert_eq!(cipher_salt.to_vec(), unhex("30CBBC08863D8C85D49DB34A9AE1"));

        let mut auth_key = [0u8; 94];
        derive(
            &master_key,
            &master_salt,
            KdfLabel::RtpAuthentication,
            &mut auth_key,
        );
        assert_eq!(
            auth_key.to_vec(),
            unhex(
                "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE
                 E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
                 6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
            )
        );

        let keys = SessionKeys::derive(SrtpProfile::AesCm128HmacSha1_80, &master_key, &master_salt)
            .unwrap();
        assert_eq!(keys.rtp_key(), &cipher_key[..]);
        assert_eq!(keys.rtp_salt(), &cipher_salt[..]);
        assert_eq!(keys.rtp_auth_key(), &auth_key[..20]);
        assert!(!format!("{keys:?}").contains("c61e"));
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        for p in SrtpProfile::ALL {
            let long = [0u8; 64];
            assert!(
                SessionKeys::derive(p, &long[..p.master_key_len()], &long[..p.master_salt_len()])
                    .is_ok()
            );
            assert_eq!(
                SessionKeys::derive(
                    p,
                    &long[..p.master_key_len()],
                    &long[..p.master_salt_len() - 1]
                )
                .unwrap_err(),
                KeyError::WrongLength {
                    profile: p,
                    expected: p.master_len(),
                    got: p.master_len() - 1
                }
            );
        }
    }
}
