//! Whether a parsed message may be acted on, and the response when not (RFC 3261 sections
//! 8.2.1-8.2.3 and 16.3).

use crate::{HeaderName, Message, Method, Scheme, StartLine};

/// Why a request is refused: the status code and the reason phrase that names the fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: u16,
    pub reason: String,
}

impl Rejection {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// Headers that may appear once only (RFC 3261 section 7.3.1; RFC 4475 section 3.3.8).
const SINGLE: [HeaderName; 5] = [
    HeaderName::To,
    HeaderName::From,
    HeaderName::CSeq,
    HeaderName::CallId,
    HeaderName::MaxForwards,
];

/// The checks every request passes before a transaction or dialog sees it. Max-Forwards
/// of 0 is not refused here: a request addressed to sluice itself (OPTIONS) is still
/// answered; the call layer answers 483 before sending anything on.
pub fn validate_request(m: &Message) -> Result<(), Rejection> {
    let StartLine::Request {
        method,
        uri,
        version,
    } = &m.start
    else {
        return Err(Rejection::new(400, "Not A Request"));
    };
    if version != "SIP/2.0" {
        // RFC 3261 section 8.2.4 / 21.5.19.
        return Err(Rejection::new(505, "Version Not Supported"));
    }
    common(m)?;
    let cseq = m
        .cseq()
        .map_err(|e| Rejection::new(400, format!("Bad Request ({e})")))?;
    if &cseq.method != method {
        return Err(Rejection::new(
            400,
            "CSeq Method Does Not Match The Request",
        ));
    }
    match uri.scheme {
        Scheme::Sip | Scheme::Sips | Scheme::Tel => {}
        // RFC 3261 section 8.2.2.1: 416 for a scheme we do not understand.
        Scheme::Other(_) => return Err(Rejection::new(416, "Unsupported URI Scheme")),
    }
    if uri.headers.is_some() {
        // RFC 3261 section 19.1.5: headers are not allowed in a Request-URI.
        return Err(Rejection::new(
            400,
            "Headers Not Allowed In The Request-URI",
        ));
    }
    if *method == Method::Invite
        && m.header(&HeaderName::Contact).is_none()
        && m.top_via().is_ok_and(|v| v.has_rfc3261_branch())
    {
        // RFC 3261 section 8.1.1.8: an INVITE MUST carry a Contact. An RFC 2543 sender
        // (no magic cookie) may omit it and is still served (RFC 4475 section 3.4.1).
        return Err(Rejection::new(400, "Missing Contact Header"));
    }
    Ok(())
}

/// A response is dropped (never answered) when this fails; the reason is for the log.
pub fn validate_response(m: &Message) -> Result<(), Rejection> {
    let StartLine::Response { version, .. } = &m.start else {
        return Err(Rejection::new(400, "Not A Response"));
    };
    if version != "SIP/2.0" {
        return Err(Rejection::new(505, "Version Not Supported"));
    }
    common(m)?;
    m.cseq()
        .map_err(|e| Rejection::new(400, format!("Bad Response ({e})")))?;
    Ok(())
}

fn common(m: &Message) -> Result<(), Rejection> {
    // RFC 3261 section 8.1.1: To, From, CSeq, Call-ID and Via. Max-Forwards is mandatory
    // too, but an RFC 2543 request lacks it and is served as if it said 70 (RFC 4475
    // section 3.4.1, RFC 3261 section 16.6 step 3).
    for name in [
        HeaderName::Via,
        HeaderName::To,
        HeaderName::From,
        HeaderName::CallId,
        HeaderName::CSeq,
    ] {
        if m.header(&name).is_none() {
            return Err(Rejection::new(
                400,
                format!("Missing {} Header", name.as_str()),
            ));
        }
    }
    for name in SINGLE {
        if m.header_lines(&name).count() > 1 {
            return Err(Rejection::new(
                400,
                format!("Multiple {} Headers", name.as_str()),
            ));
        }
    }
    m.check_headers()
        .map_err(|e| Rejection::new(400, format!("Bad Request ({e})")))?;
    Ok(())
}
