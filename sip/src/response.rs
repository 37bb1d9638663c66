//! Building a response to a request (RFC 3261 section 8.2.6).

use crate::{HeaderName, Message};

/// The reason phrase RFC 3261 section 21 gives `code`, or a class default.
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        422 => "Session Interval Too Small",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        c if c < 200 => "Provisional",
        c if c < 300 => "Success",
        c if c < 400 => "Redirection",
        c if c < 500 => "Client Error",
        c if c < 600 => "Server Error",
        _ => "Global Failure",
    }
}

/// A response to `req`: Via lines (all, in order), From, To, Call-ID and CSeq copied
/// (RFC 3261 section 8.2.6.2), and Timestamp for a 100 (section 8.2.6.1). The To tag, when
/// the request had none and the response needs one, is the caller's to add.
pub fn response_for(req: &Message, code: u16, reason: Option<&str>) -> Message {
    let mut r = Message::response(code, reason.unwrap_or(default_reason(code)));
    for h in &req.headers {
        let copy = match h.name {
            HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::CSeq => true,
            HeaderName::Other(ref n) => code == 100 && n.eq_ignore_ascii_case("Timestamp"),
            _ => false,
        };
        if copy {
            r.headers.push(h.clone());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, parse_datagram};

    #[test]
    fn responses_copy_the_transaction_and_dialog_headers() {
        let req = parse_datagram(
            b"BYE sip:b@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\nMax-Forwards: 70\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nTimestamp: 54\r\nUser-Agent: x\r\n\r\n",
            &Limits::default(),
        )
        .unwrap();
        let r = response_for(&req, 200, None);
        let names: Vec<_> = r.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Via", "Via", "From", "To", "Call-ID", "CSeq"]);
        assert_eq!(r.code(), Some(200));
        let t = response_for(&req, 100, None);
        assert!(t.headers.iter().any(|h| h.wire_name == "Timestamp"));
    }
}
