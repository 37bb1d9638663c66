//! SDES (RFC 4568): SRTP master keys carried in `a=crypto` lines, for the suites sluice
//! implements. Parsing validates everything the data plane will rely on; generation draws fresh
//! keys from the OS for every leg. Key material never appears in `Debug` output or logs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::{RngCore, TryRngCore};

use crate::sdp::{Attribute, Crypto};

/// The suites are the data plane's SRTP profiles, named as SDES names them.
pub use sluice_relay::srtp::SrtpProfile as Suite;

/// The order sluice offers suites in: the most widely deployed first (what SIP phones and
/// gateways answer), then the AEAD suites (RFC 7714) for endpoints that prefer them.
pub const OFFERED: [Suite; 4] = [
    Suite::AesCm128HmacSha1_80,
    Suite::AesCm128HmacSha1_32,
    Suite::AeadAes128Gcm,
    Suite::AeadAes256Gcm,
];

/// One direction's SRTP master key and salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey {
    pub tag: u32,
    pub suite: Suite,
    pub key: Vec<u8>,
    pub salt: Vec<u8>,
}

impl std::fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdesKey")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdesError {
    #[error(
        "crypto suite {0} is not supported; sluice supports AES_CM_128_HMAC_SHA1_80, \
         AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM and AEAD_AES_256_GCM"
    )]
    UnsupportedSuite(String),
    #[error("a=crypto:{tag}: {reason}")]
    BadKey { tag: u32, reason: String },
}

impl SdesKey {
    /// A fresh random key for `suite`, drawn from the OS.
    pub fn generate(tag: u32, suite: Suite) -> SdesKey {
        SdesKey::generate_with(&mut rand::rngs::OsRng.unwrap_err(), tag, suite)
    }

    /// A fresh key drawn from `rng`, which must be a cryptographic source outside tests: the
    /// key protects the media.
    pub fn generate_with(rng: &mut (impl RngCore + ?Sized), tag: u32, suite: Suite) -> SdesKey {
        let (kl, sl) = (suite.master_key_len(), suite.master_salt_len());
        let mut buf = vec![0u8; kl + sl];
        rng.fill_bytes(&mut buf);
        let salt = buf.split_off(kl);
        SdesKey {
            tag,
            suite,
            key: buf,
            salt,
        }
    }

    /// Reads an `a=crypto` line; only single `inline:` keys without MKI are accepted, which is
    /// what SIP endpoints send (RFC 4568 6.1 allows several keys with MKIs; none use them).
    pub fn from_crypto(c: &Crypto) -> Result<SdesKey, SdesError> {
        let suite = Suite::from_sdes_name(&c.suite)
            .ok_or_else(|| SdesError::UnsupportedSuite(c.suite.clone()))?;
        let bad = |reason: &str| SdesError::BadKey {
            tag: c.tag,
            reason: reason.into(),
        };
        if c.key_params.contains(';') {
            return Err(bad("several keys in one line are not supported"));
        }
        let inline = c
            .key_params
            .strip_prefix("inline:")
            .ok_or_else(|| bad("the key must be given as inline:<base64>"))?;
        let mut parts = inline.split('|');
        let b64 = parts.next().unwrap_or_default();
        for p in parts {
            // Lifetime (2^n or a number) is harmless; an MKI (n:len) would change the packet
            // format, and sluice does not add or strip MKIs.
            if p.contains(':') {
                return Err(bad("MKI is not supported; offer keys without MKI"));
            }
        }
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| bad("the inline key is not valid base64"))?;
        let (kl, sl) = (suite.master_key_len(), suite.master_salt_len());
        if raw.len() != kl + sl {
            return Err(bad(&format!(
                "{} needs {} bytes of key and salt, the line has {}",
                suite.sdes_name(),
                kl + sl,
                raw.len()
            )));
        }
        if let Some(p) = c.session_params.iter().find(|p| {
            !matches!(
                p.as_str(),
                "UNENCRYPTED_SRTCP" | "UNENCRYPTED_SRTP" | "UNAUTHENTICATED_SRTP"
            ) && !p.starts_with("KDR=")
                && !p.starts_with("WSH=")
        }) {
            return Err(bad(&format!("session parameter {p} is not supported")));
        }
        if c.session_params
            .iter()
            .any(|p| p.starts_with("UN") || (p.starts_with("KDR=") && p != "KDR=0"))
        {
            return Err(bad(
                "unencrypted/unauthenticated SRTP and key derivation rates are not supported",
            ));
        }
        let mut key = raw;
        let salt = key.split_off(kl);
        Ok(SdesKey {
            tag: c.tag,
            suite,
            key,
            salt,
        })
    }

    /// The data plane's form of this key.
    pub fn to_engine(&self) -> sluice_relay::srtp::SrtpKeys {
        let mut master = self.key.clone();
        master.extend_from_slice(&self.salt);
        sluice_relay::srtp::SrtpKeys {
            profile: self.suite,
            master,
        }
    }

    /// The `a=crypto` attribute carrying this key.
    pub fn to_attribute(&self) -> Attribute {
        let mut raw = self.key.clone();
        raw.extend_from_slice(&self.salt);
        Attribute {
            name: "crypto".into(),
            value: Some(format!(
                "{} {} inline:{}",
                self.tag,
                self.suite.sdes_name(),
                STANDARD.encode(raw)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto(line: &str) -> Crypto {
        Crypto::parse(line).unwrap()
    }

    #[test]
    fn rfc4568_example_key_parses() {
        // RFC 4568 section 9.1's example (lifetime 2^20, MKI 1:4) has an MKI: refused clearly.
        let err = SdesKey::from_crypto(&crypto(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("MKI"), "{err}");
        let k = SdesKey::from_crypto(&crypto(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        ))
        .unwrap();
        assert_eq!((k.key.len(), k.salt.len()), (16, 14));
        assert_eq!(&k.key[..4], b"=-n@");
    }

    #[test]
    fn generated_keys_round_trip_and_differ() {
        for suite in OFFERED {
            let a = SdesKey::generate(3, suite);
            let b = SdesKey::generate(3, suite);
            assert_ne!(a.key, b.key);
            let attr = a.to_attribute();
            let back = SdesKey::from_crypto(&crypto(attr.value.as_deref().unwrap())).unwrap();
            assert_eq!(back, a);
        }
    }

    #[test]
    fn bad_lines_are_rejected_with_reasons() {
        let cases = [
            (
                "1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
                "not supported",
            ),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!", "base64"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:QUJD", "needs 30 bytes"),
            (
                "1 AEAD_AES_256_GCM inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
                "needs 44 bytes",
            ),
            ("1 AES_CM_128_HMAC_SHA1_80 uri:http://x", "inline"),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR UNENCRYPTED_SRTP",
                "unencrypted",
            ),
        ];
        for (line, want) in cases {
            let err = SdesKey::from_crypto(&crypto(line)).unwrap_err().to_string();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let k = SdesKey::generate(1, Suite::AeadAes128Gcm);
        let shown = format!("{k:?}");
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&format!("{:?}", k.key)));
    }
}
