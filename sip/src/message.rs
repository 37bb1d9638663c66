//! A SIP message: start line, header fields in order, body; typed readers of the headers
//! the transaction, dialog and call layers need, and the writer.

use std::fmt::Write as _;

use crate::grammar::{Scanner, is_token_str, split_commas};
use crate::{HeaderError, HeaderName, Method, NameAddr, Uri, Via, header::Header};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        uri: Uri,
        /// As written; anything but `SIP/2.0` is answered 505 by [`crate::validate_request`].
        version: String,
    },
    Response {
        version: String,
        code: u16,
        reason: String,
    },
}

/// A request or response. Content-Length is not among the headers: it is framing, taken
/// by the parser and written from the body's length, so a message written is always framed
/// right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// The CSeq header (RFC 3261 section 20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let err = |r| HeaderError::new("CSeq", r);
        let mut s = Scanner::new(value);
        s.skip_ws();
        let n = s.take_while(|c| c.is_ascii_digit());
        // RFC 3261 section 8.1.1.5: the sequence number MUST be less than 2**31.
        let seq = n
            .parse::<u32>()
            .ok()
            .filter(|&v| v < 1 << 31 && n.len() <= 10)
            .ok_or(err("sequence number missing or not below 2^31"))?;
        s.skip_ws();
        let m = s.token().ok_or(err("no method"))?;
        s.skip_ws();
        if !s.at_end() {
            return Err(err("junk after the method"));
        }
        Ok(Self {
            seq,
            method: Method::from_token(m),
        })
    }
}

impl Message {
    pub fn request(method: Method, uri: Uri) -> Self {
        Self {
            start: StartLine::Request {
                method,
                uri,
                version: "SIP/2.0".into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn response(code: u16, reason: impl Into<String>) -> Self {
        Self {
            start: StartLine::Response {
                version: "SIP/2.0".into(),
                code,
                reason: reason.into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&Uri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn code(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The first value of `name`.
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Every header line of `name`, in order.
    pub fn header_lines<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |h| &h.name == name)
            .map(|h| h.value.as_str())
    }

    /// Appends a header line.
    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.headers.push(Header::new(name, value));
    }

    /// Replaces every line of `name` by one with `value`, at the first one's place.
    pub fn set(&mut self, name: HeaderName, value: impl Into<String>) {
        let value = value.into();
        match self.headers.iter().position(|h| h.name == name) {
            Some(i) => {
                self.headers[i] = Header::new(name.clone(), value);
                let mut seen = false;
                self.headers.retain(|h| {
                    if h.name != name {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    pub fn remove(&mut self, name: &HeaderName) {
        self.headers.retain(|h| &h.name != name);
    }

    fn single(&self, name: HeaderName) -> Result<&str, HeaderError> {
        let canonical = name.canonical();
        self.header(&name)
            .ok_or(HeaderError::new(canonical, "missing"))
    }

    pub fn call_id(&self) -> Result<&str, HeaderError> {
        let v = self.single(HeaderName::CallId)?;
        // callid = word [ "@" word ]: no white space inside.
        if v.is_empty() || v.bytes().any(|c| c.is_ascii_whitespace()) {
            return Err(HeaderError::new("Call-ID", "empty or contains white space"));
        }
        Ok(v)
    }

    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        CSeq::parse(self.single(HeaderName::CSeq)?)
    }

    pub fn from_hdr(&self) -> Result<NameAddr, HeaderError> {
        NameAddr::parse("From", self.single(HeaderName::From)?)
    }

    pub fn to_hdr(&self) -> Result<NameAddr, HeaderError> {
        NameAddr::parse("To", self.single(HeaderName::To)?)
    }

    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        match self.header(&HeaderName::MaxForwards) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|_| v.trim().bytes().all(|c| c.is_ascii_digit()))
                .map(Some)
                .ok_or(HeaderError::new(
                    "Max-Forwards",
                    "not a number from 0 to 255",
                )),
        }
    }

    /// Every Via, top first, across all Via lines.
    pub fn vias(&self) -> Result<Vec<Via>, HeaderError> {
        let mut out = Vec::new();
        for line in self.header_lines(&HeaderName::Via) {
            out.extend(Via::parse_all(line)?);
        }
        Ok(out)
    }

    pub fn top_via(&self) -> Result<Via, HeaderError> {
        let line = self.single(HeaderName::Via)?;
        let first = split_commas(line).into_iter().next().unwrap_or("");
        Via::parse(first)
    }

    fn name_addrs(&self, name: HeaderName) -> Result<Vec<NameAddr>, HeaderError> {
        let canonical = name.canonical();
        let mut out = Vec::new();
        for line in self.header_lines(&name) {
            out.extend(NameAddr::parse_all(canonical, line)?);
        }
        Ok(out)
    }

    /// Contact values; `Contact: *` (REGISTER only) reads as an empty list with
    /// [`Message::contact_is_star`].
    pub fn contacts(&self) -> Result<Vec<NameAddr>, HeaderError> {
        if self.contact_is_star() {
            return Ok(Vec::new());
        }
        self.name_addrs(HeaderName::Contact)
    }

    pub fn contact_is_star(&self) -> bool {
        self.header(&HeaderName::Contact)
            .is_some_and(|v| v.trim() == "*")
    }

    pub fn routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.name_addrs(HeaderName::Route)
    }

    pub fn record_routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.name_addrs(HeaderName::RecordRoute)
    }

    /// Option tags of Require, Supported, Proxy-Require, Unsupported.
    pub fn option_tags<'a>(&'a self, name: &'a HeaderName) -> Vec<&'a str> {
        self.header_lines(name)
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Reads every header whose grammar this crate knows, so a message whose known headers
    /// are malformed is found before any layer acts on it.
    pub fn check_headers(&self) -> Result<(), HeaderError> {
        for h in &self.headers {
            match &h.name {
                HeaderName::Via => {
                    Via::parse_all(&h.value)?;
                }
                HeaderName::From | HeaderName::To => {
                    NameAddr::parse(h.name.canonical(), &h.value)?;
                }
                HeaderName::Contact if h.value.trim() != "*" => {
                    NameAddr::parse_all("Contact", &h.value)?;
                }
                HeaderName::Route | HeaderName::RecordRoute => {
                    NameAddr::parse_all(h.name.canonical(), &h.value)?;
                }
                HeaderName::CSeq => {
                    CSeq::parse(&h.value)?;
                }
                HeaderName::CallId => {
                    self.call_id()?;
                }
                HeaderName::MaxForwards => {
                    self.max_forwards()?;
                }
                HeaderName::Expires | HeaderName::RSeq | HeaderName::MinSe => {
                    delta_seconds(h.name.canonical(), &h.value)?;
                }
                HeaderName::Date => check_date(&h.value)?,
                HeaderName::Require
                | HeaderName::Supported
                | HeaderName::ProxyRequire
                | HeaderName::Unsupported => {
                    for t in h.value.split(',') {
                        if !is_token_str(t.trim()) && !t.trim().is_empty() {
                            return Err(HeaderError::new(
                                h.name.canonical(),
                                "non-token option tag",
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the message (RFC 3261 section 7): CRLF line ends, Content-Length last.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut s = String::with_capacity(512);
        match &self.start {
            StartLine::Request {
                method,
                uri,
                version,
            } => {
                let _ = write!(s, "{method} {uri} {version}\r\n");
            }
            StartLine::Response {
                version,
                code,
                reason,
            } => {
                let _ = write!(s, "{version} {code} {reason}\r\n");
            }
        }
        for h in &self.headers {
            let _ = write!(s, "{}: {}\r\n", h.wire_name, h.value);
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n", self.body.len());
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(&self.body);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(512 + self.body.len());
        self.write(&mut v);
        v
    }
}

/// delta-seconds: a number of seconds that fits 32 bits (RFC 3261 section 25.1 leaves it
/// unbounded; RFC 4475 section 3.1.2.4 expects larger values to be refused).
pub(crate) fn delta_seconds(header: &'static str, v: &str) -> Result<u32, HeaderError> {
    let t = v.split(';').next().unwrap_or("").trim();
    if t.is_empty() || t.len() > 10 || !t.bytes().all(|c| c.is_ascii_digit()) {
        return Err(HeaderError::new(header, "not a number of seconds"));
    }
    t.parse()
        .map_err(|_| HeaderError::new(header, "over 2^32-1 seconds"))
}

/// rfc1123-date; the zone MUST be "GMT" (RFC 3261 section 20.17).
fn check_date(v: &str) -> Result<(), HeaderError> {
    let v = v.trim();
    if !v.ends_with(" GMT") || v.len() < 20 {
        return Err(HeaderError::new("Date", "not an RFC 1123 date in GMT"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq_bounds_rfc3261_8_1_1_5() {
        assert_eq!(CSeq::parse(" 0009\t INVITE").unwrap().seq, 9);
        assert!(CSeq::parse("2147483648 INVITE").is_err());
        assert!(CSeq::parse("36893488147419103232 INVITE").is_err());
        assert!(CSeq::parse("1").is_err());
        assert!(CSeq::parse("1 INVITE x").is_err());
    }

    #[test]
    fn set_replaces_every_line_in_place() {
        let mut m = Message::response(200, "OK");
        m.push(HeaderName::Via, "a");
        m.push(HeaderName::To, "t");
        m.push(HeaderName::Via, "b");
        m.set(HeaderName::Via, "c");
        let names: Vec<_> = m.headers.iter().map(|h| h.value.as_str()).collect();
        assert_eq!(names, ["c", "t"]);
    }
}
