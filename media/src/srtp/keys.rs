//! The SDES keys of one direction as the control plane hands them to the data plane.

use super::SrtpProfile;

/// SRTP master key and salt of one direction, as negotiated by SDES (RFC 4568).
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub profile: SrtpProfile,
    /// Master key followed by master salt.
    pub master: Vec<u8>,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SrtpKeys({:?}, <redacted>)", self.profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_never_printed() {
        let k = SrtpKeys {
            profile: SrtpProfile::AesCm128HmacSha1_80,
            master: vec![0xab; 30],
        };
        let shown = format!("{k:?}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
