//! The Via header (RFC 3261 section 20.42), with `received`/`rport` (RFC 3581).

use std::fmt;

use crate::grammar::{Scanner, split_commas};
use crate::{HeaderError, Host, Params};

/// The branch prefix of RFC 3261-compliant transactions (section 8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `SIP/2.0` unless something else was written.
    pub protocol: String,
    /// Upper-cased: UDP, TCP, TLS, SCTP or an extension.
    pub transport: String,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

fn err(reason: &'static str) -> HeaderError {
    HeaderError::new("Via", reason)
}

impl Via {
    pub fn new(transport: &str, host: Host, port: Option<u16>, branch: &str) -> Self {
        let mut params = Params::default();
        params.set("branch", Some(branch));
        Self {
            protocol: "SIP/2.0".into(),
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        }
    }

    /// Every Via value of one header line.
    pub fn parse_all(value: &str) -> Result<Vec<Self>, HeaderError> {
        split_commas(value).into_iter().map(Self::parse).collect()
    }

    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let mut s = Scanner::new(value);
        s.skip_ws();
        let name = s.token().ok_or(err("no protocol name"))?;
        if !s.eat_sep(b'/') {
            return Err(err("no '/' after the protocol name"));
        }
        let version = s.token().ok_or(err("no protocol version"))?;
        if !s.eat_sep(b'/') {
            return Err(err("no '/' after the protocol version"));
        }
        let transport = s.token().ok_or(err("no transport"))?;
        let before = s.rest().len();
        s.skip_ws();
        if s.rest().len() == before {
            return Err(err("no white space before sent-by"));
        }
        let host_text = if s.peek() == Some(b'[') {
            let h = s.take_while(|c| c != b']');
            if !s.eat(b']') {
                return Err(err("unterminated IPv6 reference"));
            }
            format!("{h}]")
        } else {
            s.take_while(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
                .to_owned()
        };
        let host = Host::parse(&host_text).map_err(err)?;
        let port = if s.eat_sep(b':') {
            let p = s.take_while(|c| c.is_ascii_digit());
            Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|_| p.len() <= 5)
                    .ok_or(err("bad port"))?,
            )
        } else {
            None
        };
        let params = Params::parse_generic(&mut s).map_err(err)?;
        s.skip_ws();
        if !s.at_end() {
            return Err(err("junk after the parameters"));
        }
        Ok(Self {
            protocol: format!("{name}/{version}"),
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// Whether the branch says the sender follows RFC 3261 transaction matching
    /// (section 17.2.3); otherwise the RFC 2543 rules apply.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(MAGIC_COOKIE))
    }

    /// `rport` (RFC 3581 section 4): `Some(None)` when asked for, `Some(Some(p))` once filled.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.parse().ok()))
    }
}

/// The first Via value of a header line and the rest after its comma, untouched.
pub fn split_top(line: &str) -> (&str, Option<&str>) {
    let first = split_commas(line).into_iter().next().unwrap_or("");
    // `first` is a trimmed slice of `line`: the rest starts after the comma that ends it.
    let end = first.as_ptr() as usize - line.as_ptr() as usize + first.len();
    match line[end..].find(',') {
        Some(i) => (first, Some(line[end + i + 1..].trim_start())),
        None => (first, None),
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.protocol, self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_and_spaced_vias_parse_rfc4475_wsinv() {
        let v = Via::parse("SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, Host::V4("192.0.2.2".parse().unwrap()));
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_rfc3261_branch());
        let all = Via::parse_all(
            "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  , SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239",
        )
        .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].branch(), Some("z9hG4bK30239"));
        assert!(all[0].has_rfc3261_branch());
    }

    #[test]
    fn stray_separators_are_refused_rfc4475_badinv01() {
        assert!(Via::parse_all("SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:99999").is_err());
    }

    #[test]
    fn the_top_value_splits_from_the_rest() {
        assert_eq!(
            split_top("SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b"),
            ("SIP/2.0/UDP a;branch=z9hG4bK1", Some("SIP/2.0/UDP b"))
        );
        assert_eq!(split_top("SIP/2.0/UDP a"), ("SIP/2.0/UDP a", None));
    }

    #[test]
    fn rport_and_ipv6_received_rfc3581_rfc5118() {
        let v = Via::parse("SIP/2.0/UDP [2001:db8::9:1]:5060;received=[2001:db8::9:255];branch=z9hG4bKas3-111;rport").unwrap();
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.params.value("received"), Some("[2001:db8::9:255]"));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP [2001:db8::9:1]:5060;received=[2001:db8::9:255];branch=z9hG4bKas3-111;rport"
        );
    }
}
