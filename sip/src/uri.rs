//! SIP, SIPS and tel URIs (RFC 3261 section 19.1, RFC 3966), with IPv6 references as
//! RFC 5118 wants them read.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

/// A URI scheme. Schemes compare case-insensitively (RFC 3261 section 19.1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other(String),
}

/// The host of a SIP URI, Via or parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name, as written.
    Name(String),
    V4(Ipv4Addr),
    /// The text between `[` and `]`, as written. Not always an address std can parse:
    /// RFC 5118 section 4.10 asks receivers to accept `2001:db8:::192.0.2.1` as well.
    V6(String),
    /// tel: and unknown schemes have no host.
    None,
}

impl Host {
    /// Parses `host` (RFC 3261 section 25.1: hostname / IPv4address / IPv6reference).
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or("unterminated IPv6 reference")?;
            if inner.len() < 2
                || !inner.contains(':')
                || !inner
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
            {
                return Err("bad IPv6 reference");
            }
            return Ok(Self::V6(inner.to_owned()));
        }
        if s.is_empty() {
            return Err("empty host");
        }
        if s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            return s
                .parse::<Ipv4Addr>()
                .map(Self::V4)
                .map_err(|_| "bad IPv4 address");
        }
        if !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
            || s.starts_with(['-', '.'])
        {
            return Err("bad host name");
        }
        Ok(Self::Name(s.to_owned()))
    }

    /// The address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::V4(a) => Some(IpAddr::V4(*a)),
            Self::V6(s) => s.parse().ok().map(IpAddr::V6),
            _ => None,
        }
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(a),
            IpAddr::V6(a) => Self::V6(a.to_string()),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => f.write_str(n),
            Self::V4(a) => write!(f, "{a}"),
            Self::V6(s) => write!(f, "[{s}]"),
            Self::None => Ok(()),
        }
    }
}

/// A parsed URI. The user part is kept escaped as written: comparing or printing it never
/// changes what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// For sip/sips the user, for tel the number, for other schemes everything after `:`.
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    /// uri-parameters (names and values as written).
    pub params: crate::Params,
    /// The headers component after `?`, as written.
    pub headers: Option<String>,
}

/// Characters that may stand in a URI at all once the structure is removed: everything
/// printable but what delimits a URI inside a header (RFC 3261 section 25.1).
fn uri_char(c: u8) -> bool {
    c.is_ascii_graphic() && !matches!(c, b'<' | b'>' | b'"' | b'{' | b'}' | b'|' | b'\\')
}

fn valid_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

impl Uri {
    /// A `sip:` URI for `user@host:port`.
    pub fn sip(user: Option<&str>, host: Host, port: Option<u16>) -> Self {
        Self {
            scheme: Scheme::Sip,
            user: user.map(str::to_owned),
            password: None,
            host,
            port,
            params: crate::Params::default(),
            headers: None,
        }
    }

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() || !s.bytes().all(uri_char) {
            return Err("URI contains white space or a delimiter");
        }
        let (scheme, rest) = s.split_once(':').ok_or("URI without a scheme")?;
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            || !scheme
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
        {
            return Err("bad URI scheme");
        }
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            _ => Scheme::Other(scheme.to_owned()),
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => Self::parse_sip(scheme, rest),
            Scheme::Tel => {
                let (number, params) = match rest.split_once(';') {
                    Some((n, p)) => (n, parse_uri_params(p)?),
                    None => (rest, crate::Params::default()),
                };
                if number.is_empty() {
                    return Err("tel URI without a number");
                }
                Ok(Self {
                    scheme,
                    user: Some(number.to_owned()),
                    password: None,
                    host: Host::None,
                    port: None,
                    params,
                    headers: None,
                })
            }
            Scheme::Other(_) => {
                if rest.is_empty() {
                    return Err("URI without content after the scheme");
                }
                Ok(Self {
                    scheme,
                    user: Some(rest.to_owned()),
                    password: None,
                    host: Host::None,
                    port: None,
                    params: crate::Params::default(),
                    headers: None,
                })
            }
        }
    }

    fn parse_sip(scheme: Scheme, rest: &str) -> Result<Self, &'static str> {
        // The user part may hold ';', '?', '/' (user-unreserved) but never an unescaped '@',
        // so the first '@' ends it.
        let (userinfo, hostpart) = match rest.find('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                if u.is_empty() {
                    return Err("empty user part before '@'");
                }
                if !valid_escapes(u) {
                    return Err("bad %-escape in the user part");
                }
                (Some(u.to_owned()), p.map(str::to_owned))
            }
        };
        let (hostport, after) = if hostpart.starts_with('[') {
            let end = hostpart.find(']').ok_or("unterminated IPv6 reference")?;
            let after_bracket = &hostpart[end + 1..];
            let cut = after_bracket
                .find([';', '?'])
                .map_or(hostpart.len(), |i| end + 1 + i);
            (&hostpart[..cut], &hostpart[cut..])
        } else {
            let cut = hostpart.find([';', '?']).unwrap_or(hostpart.len());
            (&hostpart[..cut], &hostpart[cut..])
        };
        let (host, port) = split_host_port(hostport)?;
        let (params, headers) = match after.split_once('?') {
            Some((p, h)) => (p, Some(h)),
            None => (after, None),
        };
        let params = match params.strip_prefix(';') {
            Some(p) => parse_uri_params(p)?,
            None if params.is_empty() => crate::Params::default(),
            None => return Err("junk after the host"),
        };
        if headers.is_some_and(|h| h.is_empty() || !valid_escapes(h)) {
            return Err("bad URI headers component");
        }
        Ok(Self {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers: headers.map(str::to_owned),
        })
    }

    pub fn is_sips(&self) -> bool {
        self.scheme == Scheme::Sips
    }

    /// The `transport` URI parameter, lower-cased.
    pub fn transport(&self) -> Option<String> {
        self.params.value("transport").map(str::to_ascii_lowercase)
    }
}

/// `host[:port]`, the host possibly an IPv6 reference.
pub(crate) fn split_host_port(s: &str) -> Result<(Host, Option<u16>), &'static str> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or("unterminated IPv6 reference")?;
        match &s[end + 1..] {
            "" => (&s[..=end], None),
            p => (
                &s[..=end],
                Some(p.strip_prefix(':').ok_or("junk after an IPv6 reference")?),
            ),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| "port over 65535")?)
        }
        Some(_) => return Err("bad port"),
    };
    Ok((Host::parse(host)?, port))
}

fn parse_uri_params(s: &str) -> Result<crate::Params, &'static str> {
    let mut out = Vec::new();
    for p in s.split(';') {
        let (n, v) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        if n.is_empty() || !valid_escapes(n) || v.is_some_and(|v| !valid_escapes(v)) {
            return Err("bad URI parameter");
        }
        out.push((n.to_owned(), v.map(str::to_owned)));
    }
    Ok(crate::Params(out))
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scheme {
            Scheme::Sip => f.write_str("sip:")?,
            Scheme::Sips => f.write_str("sips:")?,
            Scheme::Tel => {
                write!(f, "tel:{}", self.user.as_deref().unwrap_or(""))?;
                return write!(f, "{}", self.params);
            }
            Scheme::Other(s) => return write!(f, "{s}:{}", self.user.as_deref().unwrap_or("")),
        }
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> Uri {
        let u = Uri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(u.to_string(), s, "written back");
        u
    }

    #[test]
    fn sip_uris_with_user_password_port_params_and_headers() {
        let u = rt("sip:alice:secret@atlanta.com:5061;transport=TCP;lr?subject=project");
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(u.host, Host::Name("atlanta.com".into()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.transport().as_deref(), Some("tcp"));
        assert!(u.params.has("lr"));
        assert_eq!(u.headers.as_deref(), Some("subject=project"));
        let u = rt("sips:192.0.2.4");
        assert!(u.is_sips());
        assert_eq!(u.host.ip(), Some("192.0.2.4".parse().unwrap()));
    }

    #[test]
    fn user_part_may_hold_semicolons_and_escapes() {
        // RFC 4475 section 3.1.1.9 (semiuri).
        let u = rt("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert!(Uri::parse("sip:us%4xer@example.com").is_err());
    }

    #[test]
    fn ipv6_references_and_ports_rfc5118() {
        let u = rt("sip:[2001:db8::10]:5070");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.host.ip(), Some("2001:db8::10".parse().unwrap()));
        // Section 4.3: inside the brackets, ":5070" belongs to the address.
        let u = rt("sip:[2001:db8::10:5070]");
        assert_eq!(u.port, None);
        // Section 4.10: three colons are accepted although no address parses.
        let u = rt("sip:user@[2001:db8:::192.0.2.1]");
        assert_eq!(u.host, Host::V6("2001:db8:::192.0.2.1".into()));
        assert!(Uri::parse("sip:[2001:db8::10").is_err());
        assert!(Uri::parse("sip:host:99999").is_err());
    }

    #[test]
    fn tel_and_unknown_schemes() {
        let u = rt("tel:+358-555-1234567;postd=pp22");
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user.as_deref(), Some("+358-555-1234567"));
        assert_eq!(u.params.value("postd"), Some("pp22"));
        let u = rt("nobodyKnowsThisScheme:totallyopaquecontent");
        assert_eq!(u.scheme, Scheme::Other("nobodyKnowsThisScheme".into()));
    }

    #[test]
    fn delimiters_and_spaces_are_refused() {
        for bad in [
            "<sip:a@b>",
            "sip:a @b",
            "sip:",
            "sip:a@",
            "sip:a@b;",
            "sip:a@-b",
            "sip:a@1.2.3.400",
            "nocolon",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad}");
        }
    }
}
