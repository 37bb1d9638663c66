//! SDES-SRTP negotiation (RFC 4568): which key each side encrypts with, whether sluice
//! terminates a side's SRTP or passes it through, and how the transport protocol of a rewritten
//! m= line follows. Kept apart from offer/answer because both consult it and its RFC rules
//! (key choice, one a=crypto in an answer) are easier to check in one place.

use crate::sdes::SdesKey;
use crate::sdp::Media;

use super::error::{SessionError, bad};
use super::options::SrtpMode;

/// SRTP as seen from one side's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SideCrypto {
    #[default]
    Plain,
    /// SRTP relayed untouched between two SRTP endpoints.
    Passthrough,
    /// sluice decrypts what the endpoint sends with `rx` (its key) and encrypts what it receives
    /// with `tx` (sluice's key, given to it in SDP).
    Terminated { rx: SdesKey, tx: SdesKey },
}

pub(super) fn is_savp(proto: &str) -> bool {
    proto
        .split('/')
        .any(|p| p.eq_ignore_ascii_case("SAVP") || p.eq_ignore_ascii_case("SAVPF"))
}

/// RTP/AVP <-> RTP/SAVP, keeping feedback (AVPF/SAVPF) as it was.
pub(super) fn with_srtp(proto: &str, srtp: bool) -> String {
    proto
        .split('/')
        .map(|p| match (p.to_ascii_uppercase().as_str(), srtp) {
            ("AVP", true) => "SAVP",
            ("AVPF", true) => "SAVPF",
            ("SAVP", false) => "AVP",
            ("SAVPF", false) => "AVPF",
            _ => p,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The key an offerer encrypts with, if its media section uses SDES-SRTP with a suite sluice
/// supports, after checking what `mode` demands of it. `None` for plain RTP, and for SRTP that
/// is passed through (mode Default) with suites sluice does not know.
pub(super) fn srtp_incoming(m: &Media, mode: SrtpMode) -> Result<Option<SdesKey>, SessionError> {
    let lines = m.crypto();
    let srtp = is_savp(&m.proto) && !lines.is_empty();
    if mode != SrtpMode::Default && m.proto.to_ascii_uppercase().starts_with("UDP/TLS") {
        return Err(bad(format!(
            "{} media uses DTLS-SRTP ({}), which sluice does not terminate; relay it without an \
             srtp option",
            m.media, m.proto
        )));
    }
    if mode == SrtpMode::Require && !srtp {
        return Err(bad(format!(
            "the {} media section is not SDES-SRTP (RTP/SAVP with a=crypto), which the srtp \
             REQUIRE option demands",
            m.media
        )));
    }
    if !srtp {
        return Ok(None);
    }
    // RFC 4568 5.1.2: the first supported line in the offerer's order wins.
    let mut first_err = None;
    for c in &lines {
        match SdesKey::from_crypto(c) {
            Ok(k) => return Ok(Some(k)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match (mode, first_err) {
        (SrtpMode::Default, _) | (_, None) => Ok(None),
        (_, Some(e)) => Err(e.into()),
    }
}

/// How the answerer's side does SRTP, given the keys sluice offered it.
pub(super) fn srtp_answer(
    i: usize,
    m: &Media,
    offered: &[SdesKey],
    mode: SrtpMode,
) -> Result<SideCrypto, SessionError> {
    let lines = m.crypto();
    let srtp = is_savp(&m.proto) && !lines.is_empty();
    if mode == SrtpMode::Require && !srtp {
        return Err(bad(format!(
            "m= line {} of the answer is not SDES-SRTP, which the srtp REQUIRE option demands",
            i + 1
        )));
    }
    if offered.is_empty() {
        return Ok(if srtp {
            SideCrypto::Passthrough
        } else {
            SideCrypto::Plain
        });
    }
    if !srtp {
        // The answerer declined SRTP (best-effort SRTP offers allow that).
        return Ok(SideCrypto::Plain);
    }
    if lines.len() != 1 {
        return Err(bad(format!(
            "m= line {} of the answer has {} a=crypto lines; RFC 4568 5.1.2 allows exactly one",
            i + 1,
            lines.len()
        )));
    }
    let rx = SdesKey::from_crypto(&lines[0])?;
    let tx = offered
        .iter()
        .find(|k| k.tag == rx.tag && k.suite == rx.suite)
        .cloned()
        .ok_or_else(|| {
            bad(format!(
                "the answer's a=crypto:{} {} matches no key sluice offered (RFC 4568 5.1.2)",
                rx.tag,
                rx.suite.sdes_name()
            ))
        })?;
    Ok(SideCrypto::Terminated { rx, tx })
}
