//! Session timers (RFC 4028) across the B2BUA: Session-Expires and Min-SE pass end to end, the
//! refreshes (re-INVITE, UPDATE) are relayed like any in-dialog request, and sluice ends a call
//! whose session was not refreshed in time.
//!
//! Passing the headers through is consistent on both legs because every refresh is relayed:
//! `refresher=uac` on leg B names sluice, which refreshes towards B exactly when A's refresh
//! (A being the UAC of leg A, named by the same header relayed to A) arrives.

use std::time::{Duration, Instant};

use sluice_sip::{HeaderName, Message};

/// The smallest session interval sluice accepts, RFC 4028 section 4's floor (and the Min-SE a
/// 422 names).
pub const MIN_SE_SECS: u32 = 90;

/// Why a request's Session-Expires is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct TooSmall {
    /// The Min-SE the 422 carries (RFC 4028 section 6: MUST be present).
    pub min_se: u32,
}

/// The interval a message asks for (`Session-Expires: 1800;refresher=uac`), if any.
pub fn session_expires(m: &Message) -> Option<u32> {
    let v = m.header(&HeaderName::SessionExpires)?;
    v.split(';').next()?.trim().parse().ok()
}

fn min_se(m: &Message) -> u32 {
    m.header(&HeaderName::MinSe)
        .and_then(|v| v.split(';').next()?.trim().parse().ok())
        .unwrap_or(0)
}

/// RFC 4028 section 8.1: a Session-Expires below the Min-SE (sluice's, or a larger one the
/// request carries) is answered 422.
pub fn check_request(m: &Message) -> Result<(), TooSmall> {
    let Some(se) = session_expires(m) else {
        return Ok(());
    };
    let floor = MIN_SE_SECS.max(min_se(m));
    if se < floor {
        return Err(TooSmall { min_se: floor });
    }
    Ok(())
}

/// A running session timer: refreshed by every successful re-INVITE or UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    pub interval: Duration,
    pub refreshed: Instant,
}

impl SessionTimer {
    /// From the 2xx that set or refreshed the session: its Session-Expires is the interval
    /// both sides agreed (RFC 4028 section 7.4 / 9).
    pub fn from_2xx(resp: &Message, now: Instant) -> Option<Self> {
        let secs = session_expires(resp)?;
        Some(Self {
            interval: Duration::from_secs(u64::from(secs.max(1))),
            refreshed: now,
        })
    }

    /// When sluice gives up on a refresh: RFC 4028 section 10 has the side that does not
    /// refresh send BYE at the interval minus min(32 s, a third of it).
    pub fn deadline(&self) -> Instant {
        let margin = (self.interval / 3).min(Duration::from_secs(32));
        self.refreshed + self.interval - margin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sip::{Limits, parse_datagram};

    fn msg(extra: &str) -> Message {
        let text = format!(
            "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n\
             From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}\r\n"
        );
        parse_datagram(text.as_bytes(), &Limits::default()).unwrap()
    }

    #[test]
    fn intervals_below_min_se_get_422_with_the_floor_rfc4028_8_1() {
        assert_eq!(check_request(&msg("")), Ok(()));
        assert_eq!(
            check_request(&msg("Session-Expires: 1800;refresher=uac\r\n")),
            Ok(())
        );
        assert_eq!(
            check_request(&msg("Session-Expires: 60\r\n")),
            Err(TooSmall { min_se: 90 })
        );
        assert_eq!(
            check_request(&msg("x: 100\r\nMin-SE: 120\r\n")),
            Err(TooSmall { min_se: 120 })
        );
    }

    #[test]
    fn bye_comes_before_expiry_by_a_third_or_32_s_rfc4028_10() {
        let now = Instant::now();
        let t = SessionTimer::from_2xx(&msg("Session-Expires: 90;refresher=uas\r\n"), now).unwrap();
        assert_eq!(t.deadline() - now, Duration::from_secs(60));
        let t = SessionTimer::from_2xx(&msg("Session-Expires: 1800\r\n"), now).unwrap();
        assert_eq!(t.deadline() - now, Duration::from_secs(1768));
        assert!(SessionTimer::from_2xx(&msg(""), now).is_none());
    }
}
