//! Bytes to [`Message`]: datagrams (RFC 3261 section 18.3) and stream framing by
//! Content-Length, with the double-CRLF keep-alive of RFC 5626 section 4.4.1.

use crate::grammar::{is_token, is_token_str, is_ws};
use crate::header::Header;
use crate::{HeaderName, Limits, Message, Method, ParseError, StartLine, Uri};

/// What the front of a stream buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole message yet: read more.
    Incomplete,
    /// CRLFCRLF: a keep-alive ping, answered with one CRLF (RFC 5626 section 4.4.1).
    Ping,
    /// A lone CRLF: the pong to our ping.
    Pong,
    /// A message that took `len` bytes of the buffer.
    Message(Box<Message>, usize),
}

impl Frame {
    /// How many bytes of the buffer this frame used.
    pub fn len(&self) -> usize {
        match self {
            Self::Incomplete => 0,
            Self::Ping => 4,
            Self::Pong => 2,
            Self::Message(_, n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One datagram. Octets past Content-Length are discarded (RFC 3261 section 18.3); with no
/// Content-Length the body runs to the end of the datagram.
pub fn parse_datagram(buf: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    if buf.len() > limits.max_message {
        return Err(ParseError::TooLarge {
            len: buf.len(),
            max: limits.max_message,
        });
    }
    let start = leading_crlfs(buf);
    let Some(head_end) = find_head_end(&buf[start..]) else {
        return Err(ParseError::Unterminated);
    };
    let head = &buf[start..start + head_end];
    let (msg, content_length) = parse_head(head, limits)?;
    let body_at = start + head_end + 4;
    let available = buf.len() - body_at;
    let body_len = match content_length {
        Some(n) if n > available => {
            return Err(ParseError::BodyTruncated {
                declared: n,
                present: available,
            });
        }
        Some(n) => n,
        None => available,
    };
    Ok(Message {
        body: buf[body_at..body_at + body_len].to_vec(),
        ..msg
    })
}

/// The first frame of a stream buffer (TCP, TLS). Content-Length is mandatory on streams
/// (RFC 3261 section 18.3); a message larger than `limits.max_message` is an error, never a
/// reason to keep buffering.
pub fn frame_stream(buf: &[u8], limits: &Limits) -> Result<Frame, ParseError> {
    if buf.starts_with(b"\r\n\r\n") {
        return Ok(Frame::Ping);
    }
    if buf.starts_with(b"\r\n") {
        return Ok(Frame::Pong);
    }
    let Some(head_end) = find_head_end(&buf[..buf.len().min(limits.max_message + 4)]) else {
        if buf.len() > limits.max_message {
            return Err(ParseError::TooLarge {
                len: buf.len(),
                max: limits.max_message,
            });
        }
        return Ok(Frame::Incomplete);
    };
    let (msg, content_length) = parse_head(&buf[..head_end], limits)?;
    let n = content_length.ok_or(ParseError::ContentLength("missing on a stream transport"))?;
    let total = head_end + 4 + n;
    if total > limits.max_message {
        return Err(ParseError::TooLarge {
            len: total,
            max: limits.max_message,
        });
    }
    if buf.len() < total {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message(
        Box::new(Message {
            body: buf[head_end + 4..total].to_vec(),
            ..msg
        }),
        total,
    ))
}

/// CRLFs before the start line are ignored (RFC 3261 section 7.5).
fn leading_crlfs(buf: &[u8]) -> usize {
    let mut i = 0;
    while buf[i..].starts_with(b"\r\n") {
        i += 2;
    }
    i
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The start line and header fields (no final CRLFCRLF); returns the Content-Length too.
fn parse_head(head: &[u8], limits: &Limits) -> Result<(Message, Option<usize>), ParseError> {
    let head = std::str::from_utf8(head)
        .map_err(|_| ParseError::HeaderLine("not UTF-8 (RFC 3261 section 7.3.1)"))?;
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or("");
    if start_line.len() > limits.max_line {
        return Err(ParseError::LineTooLong {
            max: limits.max_line,
        });
    }
    let start = parse_start_line(start_line)?;
    let mut headers: Vec<Header> = Vec::new();
    let mut content_length: Option<usize> = None;
    let mut pending: Option<(&str, String)> = None;
    let finish = |pending: Option<(&str, String)>,
                  headers: &mut Vec<Header>,
                  content_length: &mut Option<usize>|
     -> Result<(), ParseError> {
        let Some((name, value)) = pending else {
            return Ok(());
        };
        let hn = HeaderName::from_wire(name);
        if hn == HeaderName::ContentLength {
            if content_length.is_some() {
                // RFC 4475 section 3.3.9 (mcl01): which one frames the body is unknowable.
                return Err(ParseError::ContentLength("repeated"));
            }
            let v = value.trim();
            if v.is_empty() || v.len() > 9 || !v.bytes().all(|c| c.is_ascii_digit()) {
                return Err(ParseError::ContentLength("not a non-negative number"));
            }
            *content_length = Some(v.parse().unwrap_or(usize::MAX));
            return Ok(());
        }
        if headers.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        headers.push(Header {
            name: hn,
            wire_name: name.to_owned(),
            value,
        });
        Ok(())
    };
    for line in lines {
        if line.len() > limits.max_line {
            return Err(ParseError::LineTooLong {
                max: limits.max_line,
            });
        }
        if line.starts_with([' ', '\t']) {
            // Folding: the line continues the previous header, joined by one SP
            // (RFC 3261 section 7.3.1).
            let Some((_, value)) = pending.as_mut() else {
                return Err(ParseError::HeaderLine(
                    "continuation line before any header",
                ));
            };
            let more = line.trim_matches([' ', '\t']);
            if !more.is_empty() {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(more);
            }
            if value.len() > limits.max_line {
                return Err(ParseError::LineTooLong {
                    max: limits.max_line,
                });
            }
            continue;
        }
        finish(pending.take(), &mut headers, &mut content_length)?;
        let colon = line
            .find(':')
            .ok_or(ParseError::HeaderLine("no ':' in a header line"))?;
        let name = line[..colon].trim_end_matches([' ', '\t']);
        if !is_token_str(name) {
            return Err(ParseError::HeaderLine("header name is not a token"));
        }
        // Control characters stay: quoted-pair may escape any but CR and LF (RFC 3261
        // section 25.1; RFC 4475 section 3.1.1.2 carries BEL, NUL and DEL that way).
        let value = line[colon + 1..].trim_matches([' ', '\t']);
        pending = Some((name, value.to_owned()));
    }
    finish(pending.take(), &mut headers, &mut content_length)?;
    Ok((
        Message {
            start,
            headers,
            body: Vec::new(),
        },
        content_length,
    ))
}

fn valid_version(v: &str) -> bool {
    // SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT; "SIP" is case-insensitive.
    let Some(rest) = v.get(..4).filter(|p| p.eq_ignore_ascii_case("SIP/")) else {
        return false;
    };
    let Some((a, b)) = v[rest.len()..].split_once('.') else {
        return false;
    };
    !a.is_empty()
        && !b.is_empty()
        && a.bytes().all(|c| c.is_ascii_digit())
        && b.bytes().all(|c| c.is_ascii_digit())
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if line.is_empty() {
        return Err(ParseError::StartLine("empty"));
    }
    if line.bytes().any(|c| c < 0x20 && c != b'\t') {
        return Err(ParseError::StartLine("control character"));
    }
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (RFC 3261 section 7.2)
        let (version, rest) = line
            .split_once(' ')
            .ok_or(ParseError::StartLine("no status code"))?;
        if !valid_version(version) {
            return Err(ParseError::StartLine("bad SIP version"));
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::StartLine("status code is not three digits"));
        }
        let code: u16 = code.parse().unwrap_or(0);
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine("status code outside 100-699"));
        }
        return Ok(StartLine::Response {
            version: version.to_owned(),
            code,
            reason: reason.to_owned(),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly one SP each, none
    // trailing (RFC 3261 section 7.1; RFC 4475 sections 3.1.2.8-3.1.2.10).
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine(
            "not three elements separated by single spaces",
        ));
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(ParseError::StartLine("method is not a token"));
    }
    if uri.bytes().any(is_ws) {
        return Err(ParseError::StartLine("white space in the Request-URI"));
    }
    let uri = Uri::parse(uri).map_err(ParseError::StartLine)?;
    if !valid_version(version) {
        return Err(ParseError::StartLine("bad SIP version"));
    }
    Ok(StartLine::Request {
        method: Method::from_token(method),
        uri,
        version: version.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn a_datagram_parses_and_writes_back() {
        let m = parse_datagram(OPTIONS, &Limits::default()).unwrap();
        assert_eq!(m.method(), Some(&Method::Options));
        assert_eq!(m.body, b"body");
        assert_eq!(m.cseq().unwrap().seq, 1);
        assert_eq!(m.to_bytes(), OPTIONS);
    }

    #[test]
    fn streams_frame_by_content_length_and_answer_pings() {
        let l = Limits::default();
        let mut buf = OPTIONS.to_vec();
        buf.extend_from_slice(b"\r\n\r\n");
        for cut in 0..OPTIONS.len() {
            assert_eq!(
                frame_stream(&buf[..cut], &l).unwrap(),
                Frame::Incomplete,
                "{cut}"
            );
        }
        let f = frame_stream(&buf, &l).unwrap();
        assert_eq!(f.len(), OPTIONS.len());
        assert_eq!(frame_stream(&buf[f.len()..], &l).unwrap(), Frame::Ping);
        assert_eq!(frame_stream(b"\r\n", &l).unwrap(), Frame::Pong);
        let no_cl = b"OPTIONS sip:b@c SIP/2.0\r\nCall-ID: x\r\n\r\n";
        assert_eq!(
            frame_stream(no_cl, &l),
            Err(ParseError::ContentLength("missing on a stream transport"))
        );
    }

    #[test]
    fn limits_stop_big_and_many() {
        let l = Limits {
            max_message: 1000,
            max_headers: 3,
            max_line: 100,
        };
        assert!(matches!(
            parse_datagram(&[b'a'; 1001], &l),
            Err(ParseError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_datagram(OPTIONS, &l),
            Err(ParseError::TooManyHeaders { max: 3 })
        ));
        let long = format!("OPTIONS sip:b@c SIP/2.0\r\nX: {}\r\n\r\n", "a".repeat(200));
        assert!(matches!(
            parse_datagram(long.as_bytes(), &l),
            Err(ParseError::LineTooLong { .. })
        ));
        // A stream that never ends its header section is refused once over the limit.
        assert!(matches!(
            frame_stream(&[b'a'; 1001], &l),
            Err(ParseError::TooLarge { .. })
        ));
    }

    #[test]
    fn start_line_faults() {
        let l = Limits::default();
        for bad in [
            &b"INVITE  sip:a@b SIP/2.0\r\n\r\n"[..],
            b"INVITE sip:a@b SIP/2.0 \r\n\r\n",
            b"INVITE <sip:a@b> SIP/2.0\r\n\r\n",
            b"INVITE sip:a@b\r\n\r\n",
            b"SIP/2.0 4294967301 Funky\r\n\r\n",
            b"SIP/2.0 99 Low\r\n\r\n",
        ] {
            let e = parse_datagram(bad, &l).unwrap_err();
            assert_eq!(
                e.fault(),
                crate::Fault::StartLine,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
