//! Header fields: names (with the compact forms of RFC 3261 section 7.3.3) and raw values.

use std::fmt;

/// The headers sluice reads. Anything else is `Other` and passes through as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Accept,
    Allow,
    Authorization,
    CallId,
    Contact,
    ContentEncoding,
    ContentLength,
    ContentType,
    CSeq,
    Date,
    Expires,
    From,
    MaxForwards,
    MinSe,
    ProxyAuthenticate,
    ProxyAuthorization,
    ProxyRequire,
    RAck,
    Reason,
    RecordRoute,
    Require,
    Route,
    RSeq,
    SessionExpires,
    Subject,
    Supported,
    To,
    Unsupported,
    UserAgent,
    Via,
    Warning,
    WwwAuthenticate,
    Other(String),
}

/// (canonical name, compact form, variant)
const KNOWN: &[(&str, Option<&str>, HeaderName)] = &[
    ("Accept", None, HeaderName::Accept),
    ("Allow", None, HeaderName::Allow),
    ("Authorization", None, HeaderName::Authorization),
    ("Call-ID", Some("i"), HeaderName::CallId),
    ("Contact", Some("m"), HeaderName::Contact),
    ("Content-Encoding", Some("e"), HeaderName::ContentEncoding),
    ("Content-Length", Some("l"), HeaderName::ContentLength),
    ("Content-Type", Some("c"), HeaderName::ContentType),
    ("CSeq", None, HeaderName::CSeq),
    ("Date", None, HeaderName::Date),
    ("Expires", None, HeaderName::Expires),
    ("From", Some("f"), HeaderName::From),
    ("Max-Forwards", None, HeaderName::MaxForwards),
    ("Min-SE", None, HeaderName::MinSe),
    ("Proxy-Authenticate", None, HeaderName::ProxyAuthenticate),
    ("Proxy-Authorization", None, HeaderName::ProxyAuthorization),
    ("Proxy-Require", None, HeaderName::ProxyRequire),
    ("RAck", None, HeaderName::RAck),
    ("Reason", None, HeaderName::Reason),
    ("Record-Route", None, HeaderName::RecordRoute),
    ("Require", None, HeaderName::Require),
    ("Route", None, HeaderName::Route),
    ("RSeq", None, HeaderName::RSeq),
    // RFC 4028 section 4: compact form "x".
    ("Session-Expires", Some("x"), HeaderName::SessionExpires),
    ("Subject", Some("s"), HeaderName::Subject),
    ("Supported", Some("k"), HeaderName::Supported),
    ("To", Some("t"), HeaderName::To),
    ("Unsupported", None, HeaderName::Unsupported),
    ("User-Agent", None, HeaderName::UserAgent),
    ("Via", Some("v"), HeaderName::Via),
    ("Warning", None, HeaderName::Warning),
    ("WWW-Authenticate", None, HeaderName::WwwAuthenticate),
];

impl HeaderName {
    /// The name as written on the wire (any case, compact or long).
    pub fn from_wire(s: &str) -> Self {
        for (long, short, name) in KNOWN {
            if long.eq_ignore_ascii_case(s) || short.is_some_and(|c| c.eq_ignore_ascii_case(s)) {
                return name.clone();
            }
        }
        Self::Other(s.to_owned())
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Other(s) => s,
            known => KNOWN
                .iter()
                .find(|(_, _, n)| n == known)
                .map_or("", |(long, _, _)| long),
        }
    }

    /// The canonical name of a known header, for error messages.
    pub(crate) fn canonical(&self) -> &'static str {
        KNOWN
            .iter()
            .find(|(_, _, n)| n == self)
            .map_or("extension", |(long, _, _)| long)
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One header field: its name as written (a compact `v` stays `v`) and its value with
/// folding undone (RFC 3261 section 7.3.1) and surrounding white space trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub wire_name: String,
    pub value: String,
}

impl Header {
    /// A header sluice writes: the canonical name.
    pub fn new(name: HeaderName, value: impl Into<String>) -> Self {
        Self {
            wire_name: name.as_str().to_owned(),
            name,
            value: value.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_odd_case_names_map_to_one_header() {
        assert_eq!(HeaderName::from_wire("v"), HeaderName::Via);
        assert_eq!(
            HeaderName::from_wire("MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_wire("i"), HeaderName::CallId);
        assert_eq!(HeaderName::from_wire("x"), HeaderName::SessionExpires);
        assert_eq!(
            HeaderName::from_wire("NewFangledHeader"),
            HeaderName::Other("NewFangledHeader".into())
        );
        assert_eq!(HeaderName::CallId.as_str(), "Call-ID");
    }
}
