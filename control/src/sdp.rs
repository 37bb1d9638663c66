//! Sans-IO SDP (RFC 8866) parsing and writing for offer/answer rewriting.
//!
//! The relay understands only the lines it has to read or rewrite: `o=`, `c=`, `m=` and a
//! handful of attributes (`rtpmap`, `fmtp`, `ptime`, `rtcp`, `rtcp-mux`, `crypto` and the
//! direction attributes). Every other line is kept verbatim and in its original position, so
//! an SDP passes through sluice unchanged apart from what the relay deliberately touches:
//! endpoints add lines (ICE, `a=ssrc`, `a=extmap`, vendor extensions) faster than a relay can
//! learn them, and dropping or reordering them breaks calls in ways that are hard to debug.
//!
//! `o=`, `c=` and `m=` are written back from their parsed fields, so they come out in
//! canonical form (single spaces, canonical IP address text). Output always uses CRLF, the
//! line ending RFC 8866 section 5 prescribes; input may use CRLF or bare LF.
//!
//! Parsing is strict about what the relay relies on (addresses, ports, payload types, the
//! attributes above) and lenient about everything else. Errors carry the 1-based line number
//! and quote the offending line, because the person reading them is an operator looking at a
//! SIP trace, not a developer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Largest SDP body accepted. Real offers are a few kilobytes; the cap bounds the work a
/// hostile peer can cause per request.
pub const MAX_SDP_LEN: usize = 65536;

/// How much of an offending line an error quotes, so a multi-kilobyte garbage line cannot
/// flood the logs.
const QUOTE_CHARS: usize = 80;

/// Line types that RFC 8866 section 5 places before `c=` at session level; a `c=` created by
/// the relay goes right after them so the output keeps the mandated order.
const SESSION_BEFORE_C: &str = "vosiuep";
/// At media level only `i=` precedes `c=` (RFC 8866 section 5).
const MEDIA_BEFORE_C: &str = "i";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SDP line {line}: {reason}")]
pub struct SdpError {
    /// 1-based line number; 0 when the problem concerns the whole document (empty, too long,
    /// a required line missing).
    pub line: usize,
    pub reason: String,
}

impl SdpError {
    fn document(reason: impl Into<String>) -> SdpError {
        SdpError {
            line: 0,
            reason: reason.into(),
        }
    }

    fn at_line(line: usize, text: &str, problem: &str) -> SdpError {
        SdpError {
            line,
            reason: format!("{problem}: {}", quote(text)),
        }
    }
}

/// Debug formatting escapes control characters, so a quoted line can never smuggle a NUL or
/// a newline into a log record.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// Media direction attributes (RFC 8866 section 6.7), from the point of view of the party
/// that wrote the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// RFC 8866 section 6.7 makes sendrecv the default when no direction attribute is given.
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Attribute names are case-sensitive (RFC 8866 section 5.13), so only the lowercase
    /// spellings match.
    pub fn from_attr(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// What the other party's direction must be to mirror this one (sendonly<->recvonly),
    /// as an answerer does per RFC 3264 section 6.1.
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    pub fn from_flags(sends: bool, receives: bool) -> Direction {
        match (sends, receives) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `a=<name>[:<value>]` (RFC 8866 section 5.13). The value is kept exactly as received,
/// including any trailing whitespace, so unknown attributes round-trip byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

impl Attribute {
    /// A property attribute such as `a=rtcp-mux`.
    pub fn flag(name: impl Into<String>) -> Attribute {
        Attribute {
            name: name.into(),
            value: None,
        }
    }

    /// A value attribute such as `a=ptime:20`.
    pub fn with_value(name: impl Into<String>, value: impl Into<String>) -> Attribute {
        Attribute {
            name: name.into(),
            value: Some(value.into()),
        }
    }

    fn parse(text: &str) -> Attribute {
        match text.split_once(':') {
            Some((name, value)) => Attribute::with_value(name, value),
            None => Attribute::flag(text),
        }
    }
}

impl fmt::Display for Attribute {
    /// Writes `name[:value]`, without the `a=` prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(value) = &self.value {
            write!(f, ":{value}")?;
        }
        Ok(())
    }
}

/// `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<encoding parameters>]`
/// (RFC 8866 section 6.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    /// The encoding parameters, which for audio are the channel count; absent means one.
    pub channels: Option<u8>,
}

impl RtpMap {
    /// Parses the value of an `a=rtpmap` attribute (the part after the colon).
    pub fn parse(value: &str) -> Result<RtpMap, String> {
        let mut tokens = value.split_ascii_whitespace();
        let (Some(pt_text), Some(spec), None) = (tokens.next(), tokens.next(), tokens.next())
        else {
            return Err(
                "a=rtpmap must be \"<payload type> <encoding>/<clock rate>[/<channels>]\"".into(),
            );
        };
        let pt = payload_type(pt_text)
            .ok_or_else(|| format!("a=rtpmap payload type {pt_text:?} is not a number 0-127"))?;
        let mut parts = spec.split('/');
        let encoding = parts.next().unwrap_or_default();
        if encoding.is_empty() {
            return Err(format!(
                "a=rtpmap for payload type {pt} has an empty encoding name"
            ));
        }
        let rate = parts
            .next()
            .ok_or_else(|| format!("a=rtpmap for payload type {pt} has no clock rate"))?;
        let clock_rate = decimal::<u32>(rate)
            .filter(|r| *r > 0)
            .ok_or_else(|| format!("a=rtpmap clock rate {rate:?} is not a positive number"))?;
        let channels =
            match parts.next() {
                None => None,
                Some(ch) => Some(decimal::<u8>(ch).filter(|c| *c > 0).ok_or_else(|| {
                    format!("a=rtpmap channel count {ch:?} is not a number 1-255")
                })?),
            };
        if parts.next().is_some() {
            return Err("a=rtpmap has unexpected text after the channel count".into());
        }
        Ok(RtpMap {
            pt,
            encoding: encoding.to_owned(),
            clock_rate,
            channels,
        })
    }

    /// The static payload type assignments of RFC 3551 section 6, which old endpoints use
    /// without an `a=rtpmap` line.
    pub fn from_static(pt: u8) -> Option<RtpMap> {
        let (encoding, clock_rate, channels) = match pt {
            0 => ("PCMU", 8000, None),
            3 => ("GSM", 8000, None),
            4 => ("G723", 8000, None),
            5 => ("DVI4", 8000, None),
            6 => ("DVI4", 16000, None),
            7 => ("LPC", 8000, None),
            8 => ("PCMA", 8000, None),
            9 => ("G722", 8000, None),
            10 => ("L16", 44100, Some(2)),
            11 => ("L16", 44100, None),
            12 => ("QCELP", 8000, None),
            13 => ("CN", 8000, None),
            14 => ("MPA", 90000, None),
            15 => ("G728", 8000, None),
            16 => ("DVI4", 11025, None),
            17 => ("DVI4", 22050, None),
            18 => ("G729", 8000, None),
            25 => ("CelB", 90000, None),
            26 => ("JPEG", 90000, None),
            28 => ("nv", 90000, None),
            31 => ("H261", 90000, None),
            32 => ("MPV", 90000, None),
            33 => ("MP2T", 90000, None),
            34 => ("H263", 90000, None),
            _ => return None,
        };
        Some(RtpMap {
            pt,
            encoding: encoding.to_owned(),
            clock_rate,
            channels,
        })
    }
}

impl fmt::Display for RtpMap {
    /// Writes the attribute value, ready for `Attribute::with_value("rtpmap", ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.pt, self.encoding, self.clock_rate)?;
        if let Some(ch) = self.channels {
            write!(f, "/{ch}")?;
        }
        Ok(())
    }
}

/// `a=crypto:<tag> <crypto-suite> <key-params> [<session-params>]` (RFC 4568 section 9.1).
/// The suite and the key are opaque to the parser; SRTP setup decides what it supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: String,
    /// One or more `method:info` pairs separated by `;`, e.g. `inline:<key>|2^20|1:4`.
    pub key_params: String,
    pub session_params: Vec<String>,
}

impl Crypto {
    /// Parses the value of an `a=crypto` attribute (the part after the colon).
    pub fn parse(value: &str) -> Result<Crypto, String> {
        let mut tokens = value.split_ascii_whitespace();
        let tag_text = tokens
            .next()
            .ok_or("a=crypto is empty; expected \"<tag> <suite> inline:<key>\"")?;
        // RFC 4568 section 9.1: tag = 1*9DIGIT, which always fits a u32.
        let tag = decimal::<u32>(tag_text)
            .filter(|_| tag_text.len() <= 9)
            .ok_or_else(|| format!("a=crypto tag {tag_text:?} is not a number of 1-9 digits"))?;
        let suite = tokens
            .next()
            .ok_or_else(|| format!("a=crypto tag {tag} has no crypto suite"))?;
        let key_params = tokens
            .next()
            .ok_or_else(|| format!("a=crypto tag {tag} has no key parameters"))?;
        for param in key_params.split(';') {
            let well_formed = param
                .split_once(':')
                .is_some_and(|(method, info)| !method.is_empty() && !info.is_empty());
            if !well_formed {
                return Err(format!(
                    "a=crypto key parameter {param:?} is not \"<method>:<key info>\" (e.g. inline:...)"
                ));
            }
        }
        Ok(Crypto {
            tag,
            suite: suite.to_owned(),
            key_params: key_params.to_owned(),
            session_params: tokens.map(str::to_owned).collect(),
        })
    }
}

impl fmt::Display for Crypto {
    /// Writes the attribute value, ready for `Attribute::with_value("crypto", ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.tag, self.suite, self.key_params)?;
        for param in &self.session_params {
            write!(f, " {param}")?;
        }
        Ok(())
    }
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`
/// (RFC 8866 section 5.2). Only the version is interpreted, because the relay must bump it
/// whenever it changes the SDP (RFC 3264 section 8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: u64,
    pub net_type: String,
    pub addr_type: String,
    /// Often a hostname, so kept as text.
    pub address: String,
}

impl Origin {
    fn parse(value: &str) -> Result<Origin, String> {
        let fields: Vec<&str> = value.split_ascii_whitespace().collect();
        let [username, session_id, version, net_type, addr_type, address] = fields[..] else {
            return Err(format!(
                "o= needs 6 fields (<username> <sess-id> <sess-version> IN IP4|IP6 <address>), found {}",
                fields.len()
            ));
        };
        let session_version = decimal::<u64>(version).ok_or_else(|| {
            format!("o= session version {version:?} is not a number (0-18446744073709551615)")
        })?;
        Ok(Origin {
            username: username.to_owned(),
            session_id: session_id.to_owned(),
            session_version,
            net_type: net_type.to_owned(),
            addr_type: addr_type.to_owned(),
            address: address.to_owned(),
        })
    }
}

impl fmt::Display for Origin {
    /// Writes the line value, without `o=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {}",
            self.username,
            self.session_id,
            self.session_version,
            self.net_type,
            self.addr_type,
            self.address
        )
    }
}

/// `c=<nettype> <addrtype> <connection-address>` (RFC 8866 section 5.7). The relay needs a
/// literal address to send media to, so hostnames (which RFC 8866 allows) are rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Always "IN" after parsing.
    pub net_type: String,
    pub addr: IpAddr,
    /// Whatever followed the first `/` of the address (multicast TTL and/or address count,
    /// RFC 8866 section 5.7), kept so it is written back unchanged.
    pub ttl_etc: Option<String>,
}

impl Connection {
    pub fn new(addr: IpAddr) -> Connection {
        Connection {
            net_type: "IN".to_owned(),
            addr,
            ttl_etc: None,
        }
    }

    /// Derived from the address, so the two can never disagree.
    pub fn addr_type(&self) -> &'static str {
        addr_type(self.addr)
    }

    fn parse(value: &str) -> Result<Connection, String> {
        let mut tokens = value.split_ascii_whitespace();
        let (Some(net_type), Some(addr_type), Some(address), None) =
            (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return Err("c= must be \"IN IP4 <address>\" or \"IN IP6 <address>\"".into());
        };
        Connection::from_fields(net_type, addr_type, address)
    }

    fn from_fields(net_type: &str, addr_type: &str, address: &str) -> Result<Connection, String> {
        if net_type != "IN" {
            return Err(format!("network type {net_type:?} is not IN"));
        }
        let (host, ttl_etc) = match address.split_once('/') {
            Some((host, rest)) => (host, Some(rest)),
            None => (address, None),
        };
        if let Some(rest) = ttl_etc
            && !rest.split('/').all(|part| decimal::<u32>(part).is_some())
        {
            return Err(format!(
                "TTL/address count {rest:?} after the address must be numbers separated by '/'"
            ));
        }
        let addr = match addr_type {
            "IP4" => match host.parse::<Ipv4Addr>() {
                Ok(v4) => IpAddr::V4(v4),
                Err(_) if host.parse::<Ipv6Addr>().is_ok() => {
                    return Err(format!(
                        "address {host} is IPv6 but the address type says IP4"
                    ));
                }
                Err(_) => return Err(format!("{host:?} is not a valid IPv4 address")),
            },
            "IP6" => match host.parse::<Ipv6Addr>() {
                Ok(v6) => IpAddr::V6(v6),
                Err(_) if host.parse::<Ipv4Addr>().is_ok() => {
                    return Err(format!(
                        "address {host} is IPv4 but the address type says IP6"
                    ));
                }
                Err(_) => return Err(format!("{host:?} is not a valid IPv6 address")),
            },
            other => return Err(format!("address type {other:?} is not IP4 or IP6")),
        };
        Ok(Connection {
            net_type: net_type.to_owned(),
            addr,
            ttl_etc: ttl_etc.map(str::to_owned),
        })
    }
}

impl fmt::Display for Connection {
    /// Writes the line value, without `c=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.net_type, self.addr_type(), self.addr)?;
        if let Some(rest) = &self.ttl_etc {
            write!(f, "/{rest}")?;
        }
        Ok(())
    }
}

fn addr_type(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// One line of a session or media section other than `m=`, in document order. `o=` and
/// `c=` are placeholders: their content lives in the owning struct's public fields so
/// callers can edit them directly, and the placeholder remembers where to write them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Origin,
    Connection,
    Attribute(Attribute),
    Other(char, String),
}

impl Line {
    fn kind(&self) -> char {
        match self {
            Line::Origin => 'o',
            Line::Connection => 'c',
            Line::Attribute(_) => 'a',
            Line::Other(kind, _) => *kind,
        }
    }
}

fn attributes_of(lines: &[Line]) -> impl Iterator<Item = &Attribute> {
    lines.iter().filter_map(|line| match line {
        Line::Attribute(a) => Some(a),
        _ => None,
    })
}

fn other_lines_of(lines: &[Line]) -> impl Iterator<Item = (char, &str)> {
    lines.iter().filter_map(|line| match line {
        Line::Other(kind, value) => Some((*kind, value.as_str())),
        _ => None,
    })
}

/// Replacing in place (rather than remove + append) keeps the attribute where the endpoint
/// put it, which keeps diffs of rewritten SDPs minimal; later duplicates are dropped so the
/// result is unambiguous.
fn replace_or_push(lines: &mut Vec<Line>, matches: impl Fn(&Attribute) -> bool, new: Attribute) {
    let mut pending = Some(new);
    lines.retain_mut(|line| match line {
        Line::Attribute(a) if matches(a) => match pending.take() {
            Some(new) => {
                *a = new;
                true
            }
            None => false,
        },
        _ => true,
    });
    if let Some(new) = pending {
        lines.push(Line::Attribute(new));
    }
}

fn remove_where(lines: &mut Vec<Line>, matches: impl Fn(&Attribute) -> bool) {
    lines.retain(|line| !matches!(line, Line::Attribute(a) if matches(a)));
}

/// Index at which a new `c=` belongs: after the line types that precede it.
fn connection_slot(lines: &[Line], before_c: &str) -> usize {
    lines
        .iter()
        .position(|line| !before_c.contains(line.kind()))
        .unwrap_or(lines.len())
}

fn ensure_connection_line(lines: &mut Vec<Line>, before_c: &str) {
    if !lines.contains(&Line::Connection) {
        let at = connection_slot(lines, before_c);
        lines.insert(at, Line::Connection);
    }
}

/// Writes a section's lines. A `connection` set through the public field on a section that
/// had no `c=` still gets written, at the position RFC 8866 section 5 prescribes.
fn write_lines(
    f: &mut fmt::Formatter<'_>,
    lines: &[Line],
    origin: Option<&Origin>,
    connection: Option<&Connection>,
    before_c: &str,
) -> fmt::Result {
    let fallback = match connection {
        Some(c) if !lines.contains(&Line::Connection) => {
            Some((connection_slot(lines, before_c), c))
        }
        _ => None,
    };
    for (i, line) in lines.iter().enumerate() {
        if let Some((at, c)) = fallback
            && at == i
        {
            write!(f, "c={c}\r\n")?;
        }
        match line {
            Line::Origin => {
                if let Some(o) = origin {
                    write!(f, "o={o}\r\n")?;
                }
            }
            Line::Connection => {
                if let Some(c) = connection {
                    write!(f, "c={c}\r\n")?;
                }
            }
            Line::Attribute(a) => write!(f, "a={a}\r\n")?,
            Line::Other(kind, value) => write!(f, "{kind}={value}\r\n")?,
        }
    }
    if let Some((at, c)) = fallback
        && at == lines.len()
    {
        write!(f, "c={c}\r\n")?;
    }
    Ok(())
}

/// Strict decimal as in RFC 8866's grammar (`1*DIGIT`): `str::parse` alone would also take
/// a leading `+`.
fn decimal<T: FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// RTP payload types are 7 bits (RFC 3550 section 5.1).
fn payload_type(text: &str) -> Option<u8> {
    decimal::<u8>(text).filter(|pt| *pt <= 127)
}

fn port_number(text: &str, what: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {text:?} is not a number"));
    }
    text.parse()
        .map_err(|_| format!("{what} {text} is out of range 0-65535"))
}

/// `a=ptime` is a number of milliseconds; RFC 8866 section 6.4 allows non-integral values
/// (`non-zero-int-or-real`). The relay works in whole milliseconds, so fractions are rounded
/// to the nearest one (never down to zero).
fn parse_ptime(value: &str) -> Result<u32, String> {
    let text = value.trim();
    let bad = || format!("a=ptime {text:?} is not a positive number of milliseconds");
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => {
            if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            (whole, fraction)
        }
        None => (text, ""),
    };
    let whole: u32 = decimal(whole).ok_or_else(bad)?;
    if whole == 0 && fraction.bytes().all(|d| d == b'0') {
        return Err(bad());
    }
    let round_up = fraction.bytes().next().is_some_and(|d| d >= b'5');
    let ms = whole.checked_add(u32::from(round_up)).ok_or_else(bad)?;
    Ok(ms.max(1))
}

/// `a=rtcp:<port> [<nettype> <addrtype> <connection-address>]` (RFC 3605 section 2.1).
fn parse_rtcp(value: &str) -> Result<(u16, Option<IpAddr>), String> {
    let tokens: Vec<&str> = value.split_ascii_whitespace().collect();
    match tokens[..] {
        [port] => Ok((port_number(port, "a=rtcp port")?, None)),
        [port, net_type, addr_type, address] => {
            let port = port_number(port, "a=rtcp port")?;
            let conn = Connection::from_fields(net_type, addr_type, address)
                .map_err(|e| format!("a=rtcp address: {e}"))?;
            if conn.ttl_etc.is_some() {
                return Err("a=rtcp address must not carry a /TTL or address count".into());
            }
            Ok((port, Some(conn.addr)))
        }
        _ => Err("a=rtcp must be \"<port>\" or \"<port> IN IP4|IP6 <address>\"".into()),
    }
}

/// Rejects at parse time the attributes the relay interprets, so a bad one surfaces as a
/// clear error on the offer rather than as a silently ignored codec or RTCP port later.
fn check_attribute(a: &Attribute) -> Result<(), String> {
    if a.name.is_empty() {
        return Err("attribute has an empty name".into());
    }
    let value = || {
        a.value
            .as_deref()
            .ok_or_else(|| format!("a={} needs a value (a={}:...)", a.name, a.name))
    };
    match a.name.as_str() {
        "rtpmap" => RtpMap::parse(value()?).map(drop),
        "rtcp" => parse_rtcp(value()?).map(drop),
        "ptime" => parse_ptime(value()?).map(drop),
        "crypto" => Crypto::parse(value()?).map(drop),
        _ => Ok(()),
    }
}

/// RTP-based transports (RTP/AVP, RTP/SAVPF, UDP/TLS/RTP/SAVPF, TCP/RTP/AVP, ...) carry
/// payload type numbers as formats (RFC 8866 section 5.14); others (UDP/DTLS/SCTP, udptl)
/// carry arbitrary tokens.
fn is_rtp_proto(proto: &str) -> bool {
    proto
        .split('/')
        .any(|part| part.eq_ignore_ascii_case("RTP"))
}

/// One media section: the `m=` line and everything up to the next `m=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// audio, video, image, application, ...
    pub media: String,
    pub port: u16,
    /// The `/<number of ports>` suffix of the port (RFC 8866 section 5.14).
    pub port_count: Option<u16>,
    /// RTP/AVP, RTP/SAVP, UDP/TLS/RTP/SAVPF, ...
    pub proto: String,
    pub fmts: Vec<String>,
    pub connection: Option<Connection>,
    lines: Vec<Line>,
}

impl Media {
    /// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...` (RFC 8866 section 5.14).
    fn parse_line(value: &str) -> Result<Media, String> {
        let mut tokens = value.split_ascii_whitespace();
        let media = tokens
            .next()
            .ok_or("m= is empty; expected \"<media> <port> <proto> <fmt> ...\"")?;
        let port_text = tokens.next().ok_or("m= has no port")?;
        let (port, port_count) = match port_text.split_once('/') {
            Some((port, count)) => {
                let count = decimal::<u16>(count)
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("m= port count {count:?} is not a number 1-65535"))?;
                (port_number(port, "m= port")?, Some(count))
            }
            None => (port_number(port_text, "m= port")?, None),
        };
        let proto = tokens
            .next()
            .ok_or("m= has no transport protocol (e.g. RTP/AVP)")?;
        let fmts: Vec<String> = tokens.map(str::to_owned).collect();
        if fmts.is_empty() {
            return Err("m= lists no media formats (payload types)".into());
        }
        if is_rtp_proto(proto)
            && let Some(bad) = fmts.iter().find(|f| payload_type(f).is_none())
        {
            return Err(format!(
                "m= payload type {bad:?} is not a number 0-127 (required for {proto})"
            ));
        }
        Ok(Media {
            media: media.to_owned(),
            port,
            port_count,
            proto: proto.to_owned(),
            fmts,
            connection: None,
            lines: Vec::new(),
        })
    }

    /// Media-level attributes, in document order.
    pub fn attributes(&self) -> impl Iterator<Item = &Attribute> {
        attributes_of(&self.lines)
    }

    /// The first media-level attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes().find(|a| a.name == name)
    }

    /// Media-level lines that are neither `c=` nor `a=` (`i=`, `b=`, `k=`, unknown types),
    /// as (type letter, value), in document order.
    pub fn other_lines(&self) -> impl Iterator<Item = (char, &str)> {
        other_lines_of(&self.lines)
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.attributes()
            .filter(move |a| a.name == name)
            .filter_map(|a| a.value.as_deref())
    }

    /// The `a=rtpmap` lines in document order. Only a malformed attribute added through
    /// `push_attribute` can be skipped here, since parsing rejects malformed ones.
    pub fn rtpmaps(&self) -> Vec<RtpMap> {
        self.values("rtpmap")
            .filter_map(|v| RtpMap::parse(v).ok())
            .collect()
    }

    /// The explicit `a=rtpmap` for a payload type; see `codec` for the static fallback.
    pub fn rtpmap(&self, pt: u8) -> Option<RtpMap> {
        self.values("rtpmap")
            .filter_map(|v| RtpMap::parse(v).ok())
            .find(|m| m.pt == pt)
    }

    /// `a=rtpmap` for the payload type, else its RFC 3551 static assignment.
    pub fn codec(&self, pt: u8) -> Option<RtpMap> {
        self.rtpmap(pt).or_else(|| RtpMap::from_static(pt))
    }

    /// The format parameters of `a=fmtp:<pt> <params>` (RFC 8866 section 6.15), with the
    /// whitespace around them trimmed.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.values("fmtp").find_map(|v| {
            let v = v.trim_start();
            let (format, params) = v
                .split_once(|c: char| c.is_ascii_whitespace())
                .unwrap_or((v, ""));
            (payload_type(format) == Some(pt)).then(|| params.trim())
        })
    }

    pub fn ptime(&self) -> Option<u32> {
        self.values("ptime").find_map(|v| parse_ptime(v).ok())
    }

    /// The media-level direction attribute only; `Sdp::direction` resolves inheritance.
    pub fn direction_attr(&self) -> Option<Direction> {
        self.attributes()
            .find_map(|a| Direction::from_attr(&a.name))
    }

    /// RFC 5761 section 5.1.1.
    pub fn rtcp_mux(&self) -> bool {
        self.attribute("rtcp-mux").is_some()
    }

    /// `a=rtcp:<port> [IN IP4|IP6 <address>]` (RFC 3605 section 2.1).
    pub fn rtcp(&self) -> Option<(u16, Option<IpAddr>)> {
        self.values("rtcp").find_map(|v| parse_rtcp(v).ok())
    }

    /// All `a=crypto` offers (RFC 4568 section 9.1), in document (preference) order.
    pub fn crypto(&self) -> Vec<Crypto> {
        self.values("crypto")
            .filter_map(|v| Crypto::parse(v).ok())
            .collect()
    }

    /// Whether the transport carries RTP (formats are payload types).
    pub fn is_rtp(&self) -> bool {
        is_rtp_proto(&self.proto)
    }

    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Sets (or creates, right after `m=`/`i=`) the media-level `c=`. Any multicast TTL is
    /// dropped: the relay only ever advertises unicast addresses, and IPv6 has no TTL.
    pub fn set_connection(&mut self, addr: IpAddr) {
        self.connection = Some(Connection::new(addr));
        ensure_connection_line(&mut self.lines, MEDIA_BEFORE_C);
    }

    /// Replaces the first media-level direction attribute in place (dropping any further
    /// ones), or appends one.
    pub fn set_direction(&mut self, d: Direction) {
        replace_or_push(
            &mut self.lines,
            |a| Direction::from_attr(&a.name).is_some(),
            Attribute::flag(d.as_str()),
        );
    }

    /// `Some` replaces the first `a=rtcp` in place or appends one, always with an explicit
    /// address (RFC 3605 section 2.1) since the relay's RTCP address need not match `c=`;
    /// `None` removes every `a=rtcp`.
    pub fn set_rtcp(&mut self, rtcp: Option<(u16, IpAddr)>) {
        match rtcp {
            Some((port, addr)) => {
                let value = format!("{port} IN {} {addr}", addr_type(addr));
                replace_or_push(
                    &mut self.lines,
                    |a| a.name == "rtcp",
                    Attribute::with_value("rtcp", value),
                );
            }
            None => self.remove_attributes("rtcp"),
        }
    }

    /// Adds `a=rtcp-mux` at the end of the section unless present, or removes every one
    /// (RFC 5761 section 5.1.1).
    pub fn set_rtcp_mux(&mut self, on: bool) {
        if !on {
            self.remove_attributes("rtcp-mux");
        } else if !self.rtcp_mux() {
            self.push_attribute(Attribute::flag("rtcp-mux"));
        }
    }

    pub fn remove_attributes(&mut self, name: &str) {
        remove_where(&mut self.lines, |a| a.name == name);
    }

    /// Removes every media-level attribute `matches` selects.
    pub fn remove_attributes_where(&mut self, matches: impl Fn(&Attribute) -> bool) {
        remove_where(&mut self.lines, matches);
    }

    /// Appends at the end of this media section.
    pub fn push_attribute(&mut self, a: Attribute) {
        self.lines.push(Line::Attribute(a));
    }

    /// Port 0 rejects or disables a stream (RFC 3264 section 6).
    pub fn is_disabled(&self) -> bool {
        self.port == 0
    }
}

impl fmt::Display for Media {
    /// Writes the whole media section, `m=` line first, with CRLF line endings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(count) = self.port_count {
            write!(f, "/{count}")?;
        }
        write!(f, " {}", self.proto)?;
        for format in &self.fmts {
            write!(f, " {format}")?;
        }
        f.write_str("\r\n")?;
        write_lines(
            f,
            &self.lines,
            None,
            self.connection.as_ref(),
            MEDIA_BEFORE_C,
        )
    }
}

/// A parsed session description. `Display` writes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    pub origin: Origin,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    pub media: Vec<Media>,
    lines: Vec<Line>,
}

impl Sdp {
    /// Parses an SDP body with CRLF or bare LF line endings; blank lines at the end are
    /// ignored. Never panics: any input is either accepted or rejected with an `SdpError`.
    pub fn parse(text: &str) -> Result<Sdp, SdpError> {
        if text.len() > MAX_SDP_LEN {
            return Err(SdpError::document(format!(
                "SDP is {} bytes, more than the {MAX_SDP_LEN}-byte limit",
                text.len()
            )));
        }
        let mut raw_lines: Vec<&str> = text
            .split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .collect();
        // SIP bodies often end with an extra CRLF; blank lines at the end carry nothing.
        while raw_lines.last().is_some_and(|line| line.is_empty()) {
            raw_lines.pop();
        }
        if raw_lines.is_empty() {
            return Err(SdpError::document("SDP body is empty"));
        }

        let mut origin = None;
        let mut connection = None;
        let mut session = Vec::new();
        let mut media: Vec<(usize, Media)> = Vec::new();
        let mut has_name = false;
        let mut has_timing = false;

        for (index, &raw) in raw_lines.iter().enumerate() {
            let n = index + 1;
            let err = |problem: &str| SdpError::at_line(n, raw, problem);
            // RFC 8866 section 9 only bans NUL, CR and LF inside values; other control
            // characters are never legitimate in signalling either and usually mean
            // corruption or an injection attempt. Tab is real-world whitespace.
            if let Some(c) = raw.chars().find(|c| c.is_control() && *c != '\t') {
                return Err(err(&format!(
                    "control character U+{:04X} is not allowed",
                    u32::from(c)
                )));
            }
            let (kind, value) = split_line(raw).ok_or_else(|| {
                if raw.is_empty() {
                    err("blank line inside the SDP")
                } else {
                    // RFC 8866 section 5: no whitespace on either side of '='.
                    err("expected <type>=<value> with a single-letter type and no spaces around '='")
                }
            })?;
            // RFC 8866 section 5.1: the version line comes first, and 0 is the only version.
            if n == 1 {
                if kind != 'v' || value != "0" {
                    return Err(err("first line must be \"v=0\""));
                }
                session.push(Line::Other(kind, value.to_owned()));
                continue;
            }
            match (kind, media.last_mut()) {
                ('v', _) => {
                    return Err(err("duplicate v= line; v=0 must appear once, as line 1"));
                }
                ('m', _) => {
                    let m = Media::parse_line(value).map_err(|e| err(&e))?;
                    media.push((n, m));
                }
                ('a', current) => {
                    let a = Attribute::parse(value);
                    check_attribute(&a).map_err(|e| err(&e))?;
                    let lines = match current {
                        Some((_, m)) => &mut m.lines,
                        None => &mut session,
                    };
                    lines.push(Line::Attribute(a));
                }
                ('c', None) => {
                    if connection.is_some() {
                        return Err(err("duplicate session-level c= line"));
                    }
                    connection = Some(Connection::parse(value).map_err(|e| err(&e))?);
                    session.push(Line::Connection);
                }
                ('c', Some((_, m))) => {
                    // RFC 8866 section 5.7 allows several c= only for layered multicast,
                    // which a unicast relay cannot serve.
                    if m.connection.is_some() {
                        return Err(err("duplicate c= line in media section"));
                    }
                    m.connection = Some(Connection::parse(value).map_err(|e| err(&e))?);
                    m.lines.push(Line::Connection);
                }
                ('o', None) => {
                    if origin.is_some() {
                        return Err(err("duplicate o= line"));
                    }
                    origin = Some(Origin::parse(value).map_err(|e| err(&e))?);
                    session.push(Line::Origin);
                }
                ('s', None) => {
                    if has_name {
                        return Err(err("duplicate s= line"));
                    }
                    has_name = true;
                    session.push(Line::Other(kind, value.to_owned()));
                }
                ('t', None) => {
                    has_timing = true;
                    session.push(Line::Other(kind, value.to_owned()));
                }
                // Usually two SDPs glued together, or a truncated-and-retried body.
                ('o' | 's' | 't' | 'r' | 'z', Some(_)) => {
                    return Err(err(&format!(
                        "{kind}= is a session-level line but appears after the first m= line"
                    )));
                }
                (_, None) => session.push(Line::Other(kind, value.to_owned())),
                (_, Some((_, m))) => m.lines.push(Line::Other(kind, value.to_owned())),
            }
        }

        // RFC 8866 section 5: v=, o=, s= and t= are required.
        let origin = origin.ok_or_else(|| SdpError::document("missing o= line (origin)"))?;
        if !has_name {
            return Err(SdpError::document("missing s= line (session name)"));
        }
        if !has_timing {
            return Err(SdpError::document("missing t= line (timing)"));
        }
        if connection.is_none() {
            // RFC 8866 section 5.7: every media needs c= at one level; a rejected (port 0)
            // stream carries no media, so it gets a pass.
            if let Some((n, m)) = media
                .iter()
                .find(|(_, m)| !m.is_disabled() && m.connection.is_none())
            {
                return Err(SdpError {
                    line: *n,
                    reason: format!(
                        "{} stream on port {} has no c= line at media or session level",
                        m.media, m.port
                    ),
                });
            }
        }

        Ok(Sdp {
            origin,
            connection,
            media: media.into_iter().map(|(_, m)| m).collect(),
            lines: session,
        })
    }

    /// Session-level attributes, in document order.
    pub fn attributes(&self) -> impl Iterator<Item = &Attribute> {
        attributes_of(&self.lines)
    }

    /// The first session-level attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes().find(|a| a.name == name)
    }

    /// Session-level lines other than `o=`, `c=` and `a=` (`v=`, `s=`, `t=`, `b=`, ...), as
    /// (type letter, value), in document order.
    pub fn other_lines(&self) -> impl Iterator<Item = (char, &str)> {
        other_lines_of(&self.lines)
    }

    /// Appends at the end of the session section (before the first `m=`).
    pub fn push_attribute(&mut self, a: Attribute) {
        self.lines.push(Line::Attribute(a));
    }

    /// Removes session-level attributes only.
    pub fn remove_attributes(&mut self, name: &str) {
        remove_where(&mut self.lines, |a| a.name == name);
    }

    pub fn session_direction(&self) -> Option<Direction> {
        self.attributes()
            .find_map(|a| Direction::from_attr(&a.name))
    }

    /// Effective direction of media `i`, as the SDP's author sees it: the media-level
    /// attribute, else the session-level one, else sendrecv (RFC 8866 section 6.7).
    ///
    /// A connection address of 0.0.0.0 (or `::`) is the RFC 2543 way of putting a call on
    /// hold, which RFC 3264 section 8.4 says to still honour: it means "do not send to me",
    /// so the receive half is removed from whatever the attributes say (sendrecv becomes
    /// sendonly, recvonly becomes inactive). A disabled (port 0) stream, or an index out of
    /// range, is inactive.
    pub fn direction(&self, i: usize) -> Direction {
        let Some(m) = self.media.get(i) else {
            return Direction::Inactive;
        };
        if m.is_disabled() {
            return Direction::Inactive;
        }
        let d = m
            .direction_attr()
            .or_else(|| self.session_direction())
            .unwrap_or_default();
        match self.media_connection(i) {
            Some(addr) if addr.is_unspecified() => Direction::from_flags(d.sends(), false),
            _ => d,
        }
    }

    /// The media-level `c=` address, else the session-level one.
    pub fn media_connection(&self, i: usize) -> Option<IpAddr> {
        let m = self.media.get(i)?;
        m.connection
            .as_ref()
            .or(self.connection.as_ref())
            .map(|c| c.addr)
    }

    /// Where the author wants RTP sent. `None` for a disabled stream and for an unspecified
    /// (hold) address: sending to 0.0.0.0 would reach the relay host itself on Linux.
    pub fn rtp_endpoint(&self, i: usize) -> Option<SocketAddr> {
        let m = self.media.get(i)?;
        if m.is_disabled() {
            return None;
        }
        let addr = self.media_connection(i)?;
        if addr.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(addr, m.port))
    }

    /// Where the author wants RTCP sent: the RTP endpoint when `a=rtcp-mux` is present
    /// (RFC 5761 section 5.1.1; for an offer this presumes the answer accepts muxing), else
    /// the `a=rtcp` port with its own address if it gives one (RFC 3605 section 2.1), else
    /// the RTP port + 1 (RFC 3550 section 11). `None` whenever `rtp_endpoint` is.
    pub fn rtcp_endpoint(&self, i: usize) -> Option<SocketAddr> {
        let rtp = self.rtp_endpoint(i)?;
        let m = &self.media[i];
        if m.rtcp_mux() {
            return Some(rtp);
        }
        let (ip, port) = match m.rtcp() {
            Some((port, addr)) => (addr.unwrap_or(rtp.ip()), port),
            None => (rtp.ip(), rtp.port().checked_add(1)?),
        };
        if port == 0 || ip.is_unspecified() {
            return None;
        }
        Some(SocketAddr::new(ip, port))
    }

    /// Rewrites the session-level `c=` if there is one; when there is none every media
    /// section has its own, which `Media::set_connection` handles. Any TTL is dropped.
    pub fn set_session_connection(&mut self, addr: IpAddr) {
        if let Some(c) = &mut self.connection {
            *c = Connection::new(addr);
        }
    }

    /// RFC 3264 section 8: a modified SDP must carry a higher version than the last one
    /// sent. Wraps at u64::MAX, which no real endpoint approaches (NTP-based versions are
    /// around 2^32).
    pub fn bump_origin_version(&mut self) {
        self.origin.session_version = self.origin.session_version.wrapping_add(1);
    }

    /// Removes session-level direction attributes and sets `d` on every media section, so
    /// no inherited value can contradict it.
    pub fn set_direction_all(&mut self, d: Direction) {
        remove_where(&mut self.lines, |a| Direction::from_attr(&a.name).is_some());
        for m in &mut self.media {
            m.set_direction(d);
        }
    }
}

fn split_line(raw: &str) -> Option<(char, &str)> {
    let bytes = raw.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b'=' {
        Some((char::from(bytes[0]), &raw[2..]))
    } else {
        None
    }
}

/// The o= line's address replaced by the first c= address (the relay's, in an SDP sluice
/// wrote), so the endpoint's address does not reach the other side there either (rtpengine's
/// `replace-origin`; the B2BUA always does it).
pub fn origin_from_connection(sdp: String) -> String {
    let Some(conn) = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=").map(|c| c.trim().to_string()))
    else {
        return sdp;
    };
    let mut out = String::with_capacity(sdp.len() + 16);
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let fields: Vec<&str> = body.split(' ').collect();
        // o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address> (RFC 8866 5.2);
        // c= gives <nettype> <addrtype> <address>.
        if body.starts_with("o=") && fields.len() == 6 {
            out.push_str(&fields[..3].join(" "));
            out.push(' ');
            out.push_str(&conn);
            out.push_str(&line[body.len()..]);
        } else {
            out.push_str(line);
        }
    }
    out
}

impl FromStr for Sdp {
    type Err = SdpError;

    fn from_str(text: &str) -> Result<Sdp, SdpError> {
        Sdp::parse(text)
    }
}

impl fmt::Display for Sdp {
    /// Writes the full SDP, in original line order, with CRLF line endings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_lines(
            f,
            &self.lines,
            Some(&self.origin),
            self.connection.as_ref(),
            SESSION_BEFORE_C,
        )?;
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kamailio/FreeSWITCH-style G.711 offer with RFC 4733 DTMF.
    const FREESWITCH: &[u8] = b"v=0\r\n\
        o=FreeSWITCH 1700000000 1700000001 IN IP4 192.0.2.10\r\n\
        s=FreeSWITCH\r\n\
        c=IN IP4 192.0.2.10\r\n\
        t=0 0\r\n\
        m=audio 16384 RTP/AVP 0 8 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n";

    const OPUS: &[u8] = b"v=0\r\n\
        o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 198.51.100.7\r\n\
        t=0 0\r\n\
        m=audio 40000 RTP/AVP 111 0 126\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=fmtp:111 minptime=10;useinbandfec=1\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:126 telephone-event/8000\r\n\
        a=ptime:20\r\n\
        a=maxptime:60\r\n";

    const AUDIO_VIDEO: &[u8] = b"v=0\r\n\
        o=alice 2890844526 2890844527 IN IP4 host.example.com\r\n\
        s=-\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/AVP 0\r\n\
        c=IN IP4 203.0.113.1\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        m=video 51372 RTP/AVP 99\r\n\
        i=main camera\r\n\
        c=IN IP4 203.0.113.2\r\n\
        a=rtpmap:99 H264/90000\r\n\
        a=fmtp:99 profile-level-id=42e01f;packetization-mode=1\r\n\
        a=recvonly\r\n";

    const IPV6: &[u8] = b"v=0\r\n\
        o=- 1 1 IN IP6 2001:db8::1\r\n\
        s=-\r\n\
        c=IN IP6 2001:db8::10\r\n\
        t=0 0\r\n\
        m=audio 30000 RTP/AVP 8 101\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n";

    const RTCP_MUX: &[u8] = b"v=0\r\n\
        o=- 20518 0 IN IP4 203.0.113.5\r\n\
        s=-\r\n\
        c=IN IP4 203.0.113.5\r\n\
        t=0 0\r\n\
        m=audio 54400 RTP/AVPF 0 96\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:96 opus/48000/2\r\n\
        a=rtcp:54400\r\n\
        a=rtcp-mux\r\n\
        a=sendrecv\r\n";

    /// RFC 3605 section 2.1: RTCP to a different address than RTP.
    const RTCP_ADDR: &[u8] = b"v=0\r\n\
        o=- 5 5 IN IP4 192.0.2.1\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.1\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/AVP 0\r\n\
        a=rtcp:53020 IN IP4 198.51.100.99\r\n";

    /// RFC 4568 section 4-style SDES offer with two suites.
    const SRTP: &[u8] = b"v=0\r\n\
        o=- 7 7 IN IP4 192.0.2.20\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.20\r\n\
        t=0 0\r\n\
        m=audio 20000 RTP/SAVP 0 101\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n\
        a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32 UNENCRYPTED_SRTCP\r\n";

    /// RFC 3264 section 8.4 hold.
    const HOLD_SENDONLY: &[u8] = b"v=0\r\n\
        o=- 8 9 IN IP4 192.0.2.30\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.30\r\n\
        t=0 0\r\n\
        m=audio 16000 RTP/AVP 0\r\n\
        a=sendonly\r\n";

    /// RFC 2543 hold: connection address 0.0.0.0.
    const HOLD_ZERO: &[u8] = b"v=0\r\n\
        o=- 8 10 IN IP4 192.0.2.30\r\n\
        s=-\r\n\
        c=IN IP4 0.0.0.0\r\n\
        t=0 0\r\n\
        m=audio 16000 RTP/AVP 0\r\n";

    /// RFC 3264 section 6: the video stream is rejected with port 0.
    const REJECTED: &[u8] = b"v=0\r\n\
        o=- 11 11 IN IP4 192.0.2.50\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.50\r\n\
        t=0 0\r\n\
        m=audio 10000 RTP/AVP 0\r\n\
        m=video 0 RTP/AVP 31\r\n";

    /// WebRTC-ish offer full of lines the relay does not interpret.
    const UNKNOWN_LINES: &[u8] = b"v=0\r\n\
        o=- 3 3 IN IP4 192.0.2.40\r\n\
        s=Session\r\n\
        i=A session\r\n\
        u=http://example.com/\r\n\
        e=ops@example.com\r\n\
        b=AS:256\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        a=msid-semantic: WMS\r\n\
        m=audio 9000 UDP/TLS/RTP/SAVPF 111\r\n\
        c=IN IP4 192.0.2.40\r\n\
        b=AS:64\r\n\
        b=TIAS:64000\r\n\
        k=prompt\r\n\
        a=mid:0\r\n\
        a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=ssrc:12345 cname:abc\r\n\
        a=ssrc:12345 msid:stream track\r\n\
        a=x-custom\r\n\
        a=rtcp-fb:111 transport-cc\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        c=IN IP4 192.0.2.40\r\n\
        a=sctp-port:5000\r\n";

    const EXAMPLES: &[(&str, &[u8])] = &[
        ("freeswitch", FREESWITCH),
        ("opus", OPUS),
        ("audio_video", AUDIO_VIDEO),
        ("ipv6", IPV6),
        ("rtcp_mux", RTCP_MUX),
        ("rtcp_addr", RTCP_ADDR),
        ("srtp", SRTP),
        ("hold_sendonly", HOLD_SENDONLY),
        ("hold_zero", HOLD_ZERO),
        ("rejected", REJECTED),
        ("unknown_lines", UNKNOWN_LINES),
    ];

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).expect("test SDP is UTF-8")
    }

    fn parse(bytes: &[u8]) -> Sdp {
        Sdp::parse(text(bytes)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    // ---- round trips ----

    #[test]
    fn examples_round_trip_byte_for_byte() {
        for (name, bytes) in EXAMPLES {
            let sdp = parse(bytes);
            assert_eq!(sdp.to_string(), text(bytes), "{name}");
            assert_eq!(Sdp::parse(&sdp.to_string()).unwrap(), sdp, "{name}");
        }
    }

    #[test]
    fn bare_lf_input_is_written_with_crlf() {
        for (name, bytes) in EXAMPLES {
            let lf = text(bytes).replace("\r\n", "\n");
            let sdp = Sdp::parse(&lf).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(sdp.to_string(), text(bytes), "{name}");
            assert_eq!(sdp, parse(bytes), "{name}");
        }
    }

    #[test]
    fn trailing_blank_lines_and_missing_final_newline_are_tolerated() {
        let crlf = text(FREESWITCH);
        for variant in [
            format!("{crlf}\r\n"),
            format!("{crlf}\r\n\r\n"),
            format!("{crlf}\n"),
            crlf.trim_end().to_owned(),
        ] {
            let sdp = Sdp::parse(&variant).unwrap_or_else(|e| panic!("{variant:?}: {e}"));
            assert_eq!(sdp.to_string(), crlf);
        }
    }

    #[test]
    fn sloppy_whitespace_in_known_lines_is_normalised() {
        let input = text(FREESWITCH)
            .replace("m=audio 16384 RTP/AVP", "m=audio  16384\tRTP/AVP")
            .replace("c=IN IP4 192.0.2.10", "c=IN  IP4 192.0.2.10 ");
        let sdp = Sdp::parse(&input).unwrap();
        assert_eq!(sdp.to_string(), text(FREESWITCH));
    }

    #[test]
    fn from_str_matches_parse() {
        let sdp: Sdp = text(OPUS).parse().unwrap();
        assert_eq!(sdp, parse(OPUS));
    }

    // ---- reading the examples ----

    #[test]
    fn freeswitch_offer() {
        let sdp = parse(FREESWITCH);
        assert_eq!(
            sdp.origin,
            Origin {
                username: "FreeSWITCH".into(),
                session_id: "1700000000".into(),
                session_version: 1_700_000_001,
                net_type: "IN".into(),
                addr_type: "IP4".into(),
                address: "192.0.2.10".into(),
            }
        );
        assert_eq!(
            sdp.connection,
            Some(Connection {
                net_type: "IN".into(),
                addr: ip("192.0.2.10"),
                ttl_etc: None,
            })
        );
        assert_eq!(sdp.media.len(), 1);
        let m = &sdp.media[0];
        assert_eq!(m.media, "audio");
        assert_eq!(m.port, 16384);
        assert_eq!(m.port_count, None);
        assert_eq!(m.proto, "RTP/AVP");
        assert_eq!(m.fmts, ["0", "8", "101"]);
        assert!(m.connection.is_none());
        assert!(m.is_rtp());
        let pts: Vec<u8> = m.rtpmaps().iter().map(|r| r.pt).collect();
        assert_eq!(pts, [0, 8, 101]);
        assert_eq!(
            m.rtpmap(101),
            Some(RtpMap {
                pt: 101,
                encoding: "telephone-event".into(),
                clock_rate: 8000,
                channels: None,
            })
        );
        assert_eq!(m.rtpmap(9), None);
        assert_eq!(m.fmtp(101), Some("0-16"));
        assert_eq!(m.fmtp(0), None);
        assert_eq!(m.ptime(), Some(20));
        assert_eq!(m.direction_attr(), Some(Direction::SendRecv));
        assert!(!m.rtcp_mux());
        assert_eq!(m.rtcp(), None);
        assert!(m.crypto().is_empty());
        assert_eq!(m.attribute("ptime").unwrap().value.as_deref(), Some("20"));
        assert_eq!(m.attributes().count(), 6);
        assert_eq!(sdp.media_connection(0), Some(ip("192.0.2.10")));
        assert_eq!(sdp.rtp_endpoint(0), Some(sock("192.0.2.10:16384")));
        assert_eq!(sdp.rtcp_endpoint(0), Some(sock("192.0.2.10:16385")));
        assert_eq!(sdp.direction(0), Direction::SendRecv);
        assert_eq!(sdp.session_direction(), None);
    }

    #[test]
    fn opus_offer_with_fmtp() {
        let sdp = parse(OPUS);
        let m = &sdp.media[0];
        assert_eq!(
            m.rtpmap(111),
            Some(RtpMap {
                pt: 111,
                encoding: "opus".into(),
                clock_rate: 48000,
                channels: Some(2),
            })
        );
        assert_eq!(m.fmtp(111), Some("minptime=10;useinbandfec=1"));
        assert_eq!(m.rtpmap(126).unwrap().encoding, "telephone-event");
        assert_eq!(m.ptime(), Some(20));
        assert_eq!(
            m.attribute("maxptime").unwrap().value.as_deref(),
            Some("60")
        );
        assert_eq!(m.direction_attr(), None);
        assert_eq!(sdp.direction(0), Direction::SendRecv);
        assert_eq!(sdp.origin.session_id, "4611731400430051336");
        assert_eq!(sdp.origin.session_version, 2);
    }

    #[test]
    fn audio_and_video_with_media_level_connections() {
        let sdp = parse(AUDIO_VIDEO);
        assert_eq!(sdp.connection, None);
        assert_eq!(sdp.origin.address, "host.example.com");
        assert_eq!(sdp.media.len(), 2);
        assert_eq!(sdp.media[1].media, "video");
        assert_eq!(sdp.media_connection(0), Some(ip("203.0.113.1")));
        assert_eq!(sdp.media_connection(1), Some(ip("203.0.113.2")));
        assert_eq!(sdp.media_connection(2), None);
        assert_eq!(sdp.rtp_endpoint(0), Some(sock("203.0.113.1:49170")));
        assert_eq!(sdp.rtp_endpoint(1), Some(sock("203.0.113.2:51372")));
        assert_eq!(sdp.rtcp_endpoint(1), Some(sock("203.0.113.2:51373")));
        assert_eq!(sdp.direction(0), Direction::SendRecv);
        assert_eq!(sdp.direction(1), Direction::RecvOnly);
        assert_eq!(sdp.media[1].rtpmap(99).unwrap().clock_rate, 90000);
        assert_eq!(
            sdp.media[1].fmtp(99),
            Some("profile-level-id=42e01f;packetization-mode=1")
        );
        let others: Vec<_> = sdp.media[1].other_lines().collect();
        assert_eq!(others, [('i', "main camera")]);
    }

    #[test]
    fn ipv6_offer() {
        let sdp = parse(IPV6);
        assert_eq!(sdp.origin.addr_type, "IP6");
        let c = sdp.connection.as_ref().unwrap();
        assert_eq!(c.addr, ip("2001:db8::10"));
        assert_eq!(c.addr_type(), "IP6");
        assert_eq!(sdp.rtp_endpoint(0), Some(sock("[2001:db8::10]:30000")));
        assert_eq!(sdp.rtcp_endpoint(0), Some(sock("[2001:db8::10]:30001")));
    }

    #[test]
    fn rtcp_mux_offer() {
        let sdp = parse(RTCP_MUX);
        let m = &sdp.media[0];
        assert!(m.rtcp_mux());
        assert_eq!(m.rtcp(), Some((54400, None)));
        assert_eq!(m.proto, "RTP/AVPF");
        assert_eq!(sdp.rtcp_endpoint(0), sdp.rtp_endpoint(0));
        assert_eq!(sdp.rtcp_endpoint(0), Some(sock("203.0.113.5:54400")));
    }

    #[test]
    fn rtcp_attribute_with_its_own_address() {
        let sdp = parse(RTCP_ADDR);
        assert_eq!(
            sdp.media[0].rtcp(),
            Some((53020, Some(ip("198.51.100.99"))))
        );
        assert_eq!(sdp.rtp_endpoint(0), Some(sock("192.0.2.1:49170")));
        assert_eq!(sdp.rtcp_endpoint(0), Some(sock("198.51.100.99:53020")));
        // No static rtpmap line, but PT 0 is statically PCMU.
        assert_eq!(sdp.media[0].rtpmap(0), None);
        assert_eq!(sdp.media[0].codec(0).unwrap().encoding, "PCMU");
    }

    #[test]
    fn rtcp_port_without_address_uses_connection_address() {
        let sdp = Sdp::parse(
            &text(FREESWITCH).replace("a=sendrecv\r\n", "a=sendrecv\r\na=rtcp:17000\r\n"),
        )
        .unwrap();
        assert_eq!(sdp.rtcp_endpoint(0), Some(sock("192.0.2.10:17000")));
    }

    #[test]
    fn srtp_offer_with_two_crypto_lines() {
        let sdp = parse(SRTP);
        let m = &sdp.media[0];
        assert_eq!(m.proto, "RTP/SAVP");
        assert!(m.is_rtp());
        let crypto = m.crypto();
        assert_eq!(crypto.len(), 2);
        assert_eq!(
            crypto[0],
            Crypto {
                tag: 1,
                suite: "AES_CM_128_HMAC_SHA1_80".into(),
                key_params: "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4".into(),
                session_params: vec![],
            }
        );
        assert_eq!(crypto[1].tag, 2);
        assert_eq!(crypto[1].suite, "AES_CM_128_HMAC_SHA1_32");
        assert_eq!(crypto[1].session_params, ["UNENCRYPTED_SRTCP"]);
        // Display is the attribute value, so a crypto line can be re-emitted.
        assert_eq!(
            format!("a=crypto:{}", crypto[1]),
            text(SRTP).lines().last().unwrap()
        );
    }

    #[test]
    fn hold_with_sendonly() {
        let sdp = parse(HOLD_SENDONLY);
        assert_eq!(sdp.direction(0), Direction::SendOnly);
        assert_eq!(sdp.direction(0).reversed(), Direction::RecvOnly);
        assert_eq!(sdp.rtp_endpoint(0), Some(sock("192.0.2.30:16000")));
    }

    #[test]
    fn hold_with_zero_address() {
        let sdp = parse(HOLD_ZERO);
        assert_eq!(sdp.media_connection(0), Some(ip("0.0.0.0")));
        assert_eq!(sdp.direction(0), Direction::SendOnly);
        assert_eq!(sdp.rtp_endpoint(0), None);
        assert_eq!(sdp.rtcp_endpoint(0), None);

        let recvonly = Sdp::parse(&format!("{}a=recvonly\r\n", text(HOLD_ZERO))).unwrap();
        assert_eq!(recvonly.direction(0), Direction::Inactive);
        let inactive = Sdp::parse(&format!("{}a=inactive\r\n", text(HOLD_ZERO))).unwrap();
        assert_eq!(inactive.direction(0), Direction::Inactive);
        let v6 = Sdp::parse(&text(HOLD_ZERO).replace("c=IN IP4 0.0.0.0", "c=IN IP6 ::")).unwrap();
        assert_eq!(v6.direction(0), Direction::SendOnly);
    }

    #[test]
    fn rejected_stream_with_port_zero() {
        let sdp = parse(REJECTED);
        assert!(!sdp.media[0].is_disabled());
        assert!(sdp.media[1].is_disabled());
        assert_eq!(sdp.rtp_endpoint(1), None);
        assert_eq!(sdp.rtcp_endpoint(1), None);
        assert_eq!(sdp.direction(1), Direction::Inactive);
        assert_eq!(sdp.media[1].codec(31).unwrap().encoding, "H261");
    }

    #[test]
    fn rejected_stream_needs_no_connection_line() {
        let input = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
                     m=audio 10000 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n\
                     m=video 0 RTP/AVP 31\r\n";
        let sdp = Sdp::parse(input).unwrap();
        assert_eq!(sdp.media_connection(1), None);
        assert_eq!(sdp.to_string(), input);
    }

    #[test]
    fn unknown_lines_are_preserved_in_order() {
        let sdp = parse(UNKNOWN_LINES);
        assert_eq!(sdp.to_string(), text(UNKNOWN_LINES));
        let session: Vec<_> = sdp.other_lines().collect();
        assert_eq!(
            session,
            [
                ('v', "0"),
                ('s', "Session"),
                ('i', "A session"),
                ('u', "http://example.com/"),
                ('e', "ops@example.com"),
                ('b', "AS:256"),
                ('t', "0 0"),
            ]
        );
        assert_eq!(
            sdp.attribute("msid-semantic").unwrap().value.as_deref(),
            Some(" WMS")
        );
        let m = &sdp.media[0];
        let names: Vec<&str> = m.attributes().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mid", "extmap", "rtpmap", "ssrc", "ssrc", "x-custom", "rtcp-fb"
            ]
        );
        let others: Vec<_> = m.other_lines().collect();
        assert_eq!(
            others,
            [('b', "AS:64"), ('b', "TIAS:64000"), ('k', "prompt")]
        );
        // Non-RTP formats are opaque tokens.
        assert_eq!(sdp.media[1].fmts, ["webrtc-datachannel"]);
        assert!(!sdp.media[1].is_rtp());
    }

    #[test]
    fn multicast_ttl_is_kept() {
        let input = text(FREESWITCH).replace("c=IN IP4 192.0.2.10", "c=IN IP4 224.2.1.1/127/3");
        let sdp = Sdp::parse(&input).unwrap();
        let c = sdp.connection.as_ref().unwrap();
        assert_eq!(c.addr, ip("224.2.1.1"));
        assert_eq!(c.ttl_etc.as_deref(), Some("127/3"));
        assert_eq!(sdp.to_string(), input);
    }

    #[test]
    fn port_count_is_kept() {
        let input = text(FREESWITCH).replace("m=audio 16384 ", "m=audio 16384/2 ");
        let sdp = Sdp::parse(&input).unwrap();
        assert_eq!(sdp.media[0].port_count, Some(2));
        assert_eq!(sdp.to_string(), input);
    }

    #[test]
    fn fractional_ptime_is_rounded() {
        for (value, expected) in [
            ("20", 20),
            ("20.0", 20),
            ("22.5", 23),
            ("0.4", 1),
            (" 30 ", 30),
        ] {
            let input = text(FREESWITCH).replace("a=ptime:20", &format!("a=ptime:{value}"));
            let sdp = Sdp::parse(&input).unwrap_or_else(|e| panic!("{value}: {e}"));
            assert_eq!(sdp.media[0].ptime(), Some(expected), "{value}");
        }
    }

    #[test]
    fn session_level_direction_is_inherited() {
        let input = text(AUDIO_VIDEO).replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let sdp = Sdp::parse(&input).unwrap();
        assert_eq!(sdp.session_direction(), Some(Direction::SendOnly));
        assert_eq!(sdp.direction(0), Direction::SendOnly);
        // The media-level attribute wins over the session-level one.
        assert_eq!(sdp.direction(1), Direction::RecvOnly);
        assert_eq!(sdp.direction(7), Direction::Inactive);
    }

    #[test]
    fn direction_helpers() {
        use Direction::*;
        for d in [SendRecv, SendOnly, RecvOnly, Inactive] {
            assert_eq!(Direction::from_attr(d.as_str()), Some(d));
            assert_eq!(d.to_string(), d.as_str());
            assert_eq!(d.reversed().reversed(), d);
            assert_eq!(d.reversed().sends(), d.receives());
            assert_eq!(Direction::from_flags(d.sends(), d.receives()), d);
        }
        assert_eq!(SendOnly.reversed(), RecvOnly);
        assert_eq!(SendRecv.reversed(), SendRecv);
        assert_eq!(Inactive.reversed(), Inactive);
        assert!(SendRecv.sends() && SendRecv.receives());
        assert!(SendOnly.sends() && !SendOnly.receives());
        assert!(!RecvOnly.sends() && RecvOnly.receives());
        assert!(!Inactive.sends() && !Inactive.receives());
        assert_eq!(Direction::from_attr("SENDONLY"), None);
        assert_eq!(Direction::from_attr("rtcp-mux"), None);
        assert_eq!(Direction::default(), SendRecv);
    }

    #[test]
    fn static_payload_types() {
        assert_eq!(RtpMap::from_static(8).unwrap().to_string(), "8 PCMA/8000");
        assert_eq!(
            RtpMap::from_static(10).unwrap().to_string(),
            "10 L16/44100/2"
        );
        assert_eq!(RtpMap::from_static(2), None);
        assert_eq!(RtpMap::from_static(96), None);
    }

    // ---- mutators ----

    #[test]
    fn set_port_rewrites_m_line() {
        let mut sdp = parse(FREESWITCH);
        sdp.media[0].set_port(30000);
        let out = sdp.to_string();
        assert!(
            out.contains("\r\nm=audio 30000 RTP/AVP 0 8 101\r\n"),
            "{out}"
        );
        assert_eq!(out, text(FREESWITCH).replace("16384", "30000"));
    }

    #[test]
    fn set_connection_replaces_existing_media_c_in_place() {
        let mut sdp = parse(AUDIO_VIDEO);
        sdp.media[1].set_connection(ip("2001:db8::99"));
        assert_eq!(
            sdp.to_string(),
            text(AUDIO_VIDEO).replace("c=IN IP4 203.0.113.2", "c=IN IP6 2001:db8::99")
        );
        assert_eq!(sdp.media_connection(1), Some(ip("2001:db8::99")));
    }

    #[test]
    fn set_connection_creates_media_c_after_m_and_i() {
        let mut sdp = parse(FREESWITCH);
        sdp.media[0].set_connection(ip("198.51.100.1"));
        assert_eq!(
            sdp.to_string(),
            text(FREESWITCH).replace(
                "m=audio 16384 RTP/AVP 0 8 101\r\n",
                "m=audio 16384 RTP/AVP 0 8 101\r\nc=IN IP4 198.51.100.1\r\n"
            )
        );
        assert_eq!(sdp.media_connection(0), Some(ip("198.51.100.1")));
        assert_eq!(Sdp::parse(&sdp.to_string()).unwrap(), sdp);

        let mut av = parse(AUDIO_VIDEO);
        av.media[1].connection = None;
        av.media[1].lines.retain(|l| *l != Line::Connection);
        av.media[1].set_connection(ip("198.51.100.2"));
        assert_eq!(
            av.to_string(),
            text(AUDIO_VIDEO).replace("203.0.113.2", "198.51.100.2")
        );
    }

    #[test]
    fn set_connection_drops_multicast_ttl() {
        let input = text(FREESWITCH).replace(
            "m=audio 16384 RTP/AVP 0 8 101\r\n",
            "m=audio 16384 RTP/AVP 0 8 101\r\nc=IN IP4 224.2.1.1/64\r\n",
        );
        let mut sdp = Sdp::parse(&input).unwrap();
        sdp.media[0].set_connection(ip("192.0.2.77"));
        assert!(
            sdp.to_string()
                .contains("\r\nc=IN IP4 192.0.2.77\r\na=rtpmap:0")
        );
    }

    #[test]
    fn connection_set_through_field_is_written_in_rfc_order() {
        let mut sdp = parse(AUDIO_VIDEO);
        sdp.connection = Some(Connection::new(ip("192.0.2.200")));
        sdp.media[1].connection = None;
        sdp.media[1].lines.retain(|l| *l != Line::Connection);
        sdp.media[1].connection = Some(Connection::new(ip("192.0.2.201")));
        let expected = text(AUDIO_VIDEO)
            .replace("s=-\r\n", "s=-\r\nc=IN IP4 192.0.2.200\r\n")
            .replace("203.0.113.2", "192.0.2.201");
        assert_eq!(sdp.to_string(), expected);
        let reparsed = Sdp::parse(&expected).unwrap();
        assert_eq!(reparsed.connection, sdp.connection);
        assert_eq!(reparsed.to_string(), expected);
    }

    #[test]
    fn set_direction_replaces_in_place() {
        let mut sdp = parse(RTCP_MUX);
        sdp.media[0].set_direction(Direction::RecvOnly);
        assert_eq!(
            sdp.to_string(),
            text(RTCP_MUX).replace("a=sendrecv", "a=recvonly")
        );
        assert_eq!(sdp.direction(0), Direction::RecvOnly);
    }

    #[test]
    fn set_direction_appends_when_absent() {
        let mut sdp = parse(OPUS);
        sdp.media[0].set_direction(Direction::Inactive);
        assert_eq!(sdp.to_string(), format!("{}a=inactive\r\n", text(OPUS)));
    }

    #[test]
    fn set_direction_drops_duplicates() {
        let input = format!("{}a=sendonly\r\n", text(RTCP_MUX));
        let mut sdp = Sdp::parse(&input).unwrap();
        sdp.media[0].set_direction(Direction::SendOnly);
        assert_eq!(
            sdp.to_string(),
            text(RTCP_MUX).replace("a=sendrecv", "a=sendonly")
        );
    }

    #[test]
    fn set_rtcp_replaces_appends_and_removes() {
        let mut sdp = parse(RTCP_ADDR);
        sdp.media[0].set_rtcp(Some((40001, ip("192.0.2.9"))));
        assert_eq!(
            sdp.to_string(),
            text(RTCP_ADDR).replace(
                "a=rtcp:53020 IN IP4 198.51.100.99",
                "a=rtcp:40001 IN IP4 192.0.2.9"
            )
        );
        assert_eq!(sdp.rtcp_endpoint(0), Some(sock("192.0.2.9:40001")));

        sdp.media[0].set_rtcp(None);
        assert_eq!(sdp.media[0].rtcp(), None);
        assert!(!sdp.to_string().contains("a=rtcp"));

        let mut fs = parse(FREESWITCH);
        fs.media[0].set_rtcp(Some((40001, ip("2001:db8::5"))));
        assert_eq!(
            fs.to_string(),
            format!("{}a=rtcp:40001 IN IP6 2001:db8::5\r\n", text(FREESWITCH))
        );
        assert_eq!(fs.media[0].rtcp(), Some((40001, Some(ip("2001:db8::5")))));
    }

    #[test]
    fn set_rtcp_mux_adds_once_and_removes() {
        let mut sdp = parse(FREESWITCH);
        sdp.media[0].set_rtcp_mux(true);
        sdp.media[0].set_rtcp_mux(true);
        assert_eq!(
            sdp.to_string(),
            format!("{}a=rtcp-mux\r\n", text(FREESWITCH))
        );
        assert!(sdp.media[0].rtcp_mux());
        assert_eq!(sdp.rtcp_endpoint(0), sdp.rtp_endpoint(0));

        let mut mux = parse(RTCP_MUX);
        mux.media[0].set_rtcp_mux(false);
        assert_eq!(
            mux.to_string(),
            text(RTCP_MUX).replace("a=rtcp-mux\r\n", "")
        );
        assert!(!mux.media[0].rtcp_mux());
        assert_eq!(mux.rtcp_endpoint(0), Some(sock("203.0.113.5:54400")));
    }

    #[test]
    fn remove_and_push_attributes() {
        let mut sdp = parse(SRTP);
        sdp.media[0].remove_attributes("crypto");
        assert!(sdp.media[0].crypto().is_empty());
        sdp.media[0].push_attribute(Attribute::with_value(
            "crypto",
            "3 AES_256_CM_HMAC_SHA1_80 inline:abc",
        ));
        sdp.media[0].push_attribute(Attribute::flag("x-flag"));
        let expected_tail = "a=rtpmap:101 telephone-event/8000\r\n\
                             a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:abc\r\n\
                             a=x-flag\r\n";
        let out = sdp.to_string();
        assert!(out.ends_with(expected_tail), "{out}");
        assert_eq!(sdp.media[0].crypto()[0].tag, 3);

        let mut session = parse(UNKNOWN_LINES);
        session.remove_attributes("group");
        session.push_attribute(Attribute::with_value("tool", "sluice"));
        let out = session.to_string();
        assert!(!out.contains("a=group"));
        assert!(
            out.contains("a=msid-semantic: WMS\r\na=tool:sluice\r\nm=audio"),
            "{out}"
        );
    }

    #[test]
    fn set_session_connection_rewrites_only_when_present() {
        let mut sdp = parse(FREESWITCH);
        sdp.set_session_connection(ip("203.0.113.77"));
        assert_eq!(
            sdp.to_string(),
            text(FREESWITCH).replace("c=IN IP4 192.0.2.10", "c=IN IP4 203.0.113.77")
        );
        sdp.set_session_connection(ip("2001:db8::77"));
        assert!(sdp.to_string().contains("\r\nc=IN IP6 2001:db8::77\r\n"));
        // The o= address is the author's, not the media address, and stays.
        assert_eq!(sdp.origin.address, "192.0.2.10");

        let mut av = parse(AUDIO_VIDEO);
        av.set_session_connection(ip("203.0.113.77"));
        assert_eq!(av.connection, None);
        assert_eq!(av.to_string(), text(AUDIO_VIDEO));
    }

    #[test]
    fn bump_origin_version_increments() {
        let mut sdp = parse(FREESWITCH);
        sdp.bump_origin_version();
        assert_eq!(sdp.origin.session_version, 1_700_000_002);
        assert_eq!(
            sdp.to_string(),
            text(FREESWITCH).replace("1700000001", "1700000002")
        );
        sdp.origin.session_version = u64::MAX;
        sdp.bump_origin_version();
        assert_eq!(sdp.origin.session_version, 0);
    }

    #[test]
    fn set_direction_all_replaces_session_and_media_attributes() {
        let input = text(AUDIO_VIDEO).replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let mut sdp = Sdp::parse(&input).unwrap();
        sdp.set_direction_all(Direction::Inactive);
        assert_eq!(sdp.session_direction(), None);
        assert_eq!(sdp.direction(0), Direction::Inactive);
        assert_eq!(sdp.direction(1), Direction::Inactive);
        let expected = text(AUDIO_VIDEO)
            .replace(
                "a=rtpmap:0 PCMU/8000\r\n",
                "a=rtpmap:0 PCMU/8000\r\na=inactive\r\n",
            )
            .replace("a=recvonly", "a=inactive");
        assert_eq!(sdp.to_string(), expected);
    }

    #[test]
    fn typical_relay_rewrite() {
        let mut sdp = parse(SRTP);
        sdp.set_session_connection(ip("203.0.113.9"));
        let m = &mut sdp.media[0];
        m.set_port(35000);
        m.set_rtcp(Some((35001, ip("203.0.113.9"))));
        m.set_direction(Direction::SendRecv);
        sdp.bump_origin_version();
        let expected = text(SRTP)
            .replace("o=- 7 7", "o=- 7 8")
            .replace("c=IN IP4 192.0.2.20", "c=IN IP4 203.0.113.9")
            .replace("m=audio 20000", "m=audio 35000")
            + "a=rtcp:35001 IN IP4 203.0.113.9\r\na=sendrecv\r\n";
        assert_eq!(sdp.to_string(), expected);
        assert_eq!(Sdp::parse(&expected).unwrap(), sdp);
    }

    // ---- malformed input ----

    const BASE: [&str; 7] = [
        "v=0",
        "o=- 1 1 IN IP4 192.0.2.1",
        "s=-",
        "c=IN IP4 192.0.2.1",
        "t=0 0",
        "m=audio 10000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    ];

    fn join(lines: &[&str]) -> String {
        lines.iter().map(|l| format!("{l}\r\n")).collect()
    }

    /// BASE with 1-based line `n` replaced.
    fn base_with(n: usize, line: &str) -> String {
        let mut lines = BASE.to_vec();
        lines[n - 1] = line;
        join(&lines)
    }

    fn base_without(n: usize) -> String {
        let mut lines = BASE.to_vec();
        lines.remove(n - 1);
        join(&lines)
    }

    fn base_plus(extra: &str) -> String {
        let mut lines = BASE.to_vec();
        lines.push(extra);
        join(&lines)
    }

    #[track_caller]
    fn rejects(input: &str, line: usize, needle: &str) {
        match Sdp::parse(input) {
            Ok(sdp) => panic!("accepted {input:?} as {sdp:?}"),
            Err(e) => {
                assert_eq!(e.line, line, "wrong line for {input:?}: {e}");
                assert!(e.reason.contains(needle), "{e:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn base_is_valid() {
        let sdp = Sdp::parse(&join(&BASE)).unwrap();
        assert_eq!(sdp.to_string(), join(&BASE));
    }

    #[test]
    fn rejects_empty_input() {
        rejects("", 0, "empty");
        rejects("\r\n", 0, "empty");
        rejects("\n\n\n", 0, "empty");
    }

    #[test]
    fn enforces_max_length() {
        let base = join(&BASE);
        // "a=x:" + padding + CRLF fills the body to exactly the limit.
        let pad = MAX_SDP_LEN - base.len() - "a=x:\r\n".len();
        let at_limit = format!("{base}a=x:{}\r\n", "y".repeat(pad));
        assert_eq!(at_limit.len(), MAX_SDP_LEN);
        assert!(Sdp::parse(&at_limit).is_ok());
        let over = format!("{at_limit}\n");
        rejects(&over, 0, "65536");
    }

    #[test]
    fn rejects_lines_not_of_the_form_type_equals_value() {
        rejects(&base_with(3, "session"), 3, "expected <type>=<value>");
        rejects(&base_with(3, "s =-"), 3, "expected <type>=<value>");
        rejects(&base_with(3, " s=-"), 3, "expected <type>=<value>");
        rejects(&base_with(3, "=-"), 3, "expected <type>=<value>");
        rejects(&base_with(3, "1=-"), 3, "expected <type>=<value>");
        rejects(&base_with(3, "s"), 3, "expected <type>=<value>");
        rejects(&base_with(3, ""), 3, "blank line");
    }

    #[test]
    fn rejects_first_line_other_than_v0() {
        rejects(&base_with(1, "v=1"), 1, "v=0");
        rejects(&base_with(1, "v=00"), 1, "v=0");
        rejects(&base_without(1), 1, "first line must be \"v=0\"");
        rejects(&base_plus("v=0"), 8, "duplicate v=");
    }

    #[test]
    fn rejects_missing_required_lines() {
        rejects(&base_without(2), 0, "missing o=");
        rejects(&base_without(3), 0, "missing s=");
        rejects(&base_without(5), 0, "missing t=");
    }

    #[test]
    fn rejects_bad_origin() {
        rejects(&base_with(2, "o=- 1 IN IP4 192.0.2.1"), 2, "6 fields");
        rejects(&base_with(2, "o=- 1 1 1 IN IP4 192.0.2.1"), 2, "found 7");
        rejects(
            &base_with(2, "o=- 1 one IN IP4 192.0.2.1"),
            2,
            "session version \"one\"",
        );
        rejects(
            &base_with(2, "o=- 1 -1 IN IP4 192.0.2.1"),
            2,
            "session version",
        );
        rejects(
            &base_with(2, "o=- 1 99999999999999999999 IN IP4 192.0.2.1"),
            2,
            "session version",
        );
        let mut lines = BASE.to_vec();
        lines.insert(3, "o=- 2 2 IN IP4 192.0.2.1");
        rejects(&join(&lines), 4, "duplicate o=");
    }

    #[test]
    fn rejects_bad_connection() {
        rejects(&base_with(4, "c=IN IP4"), 4, "IN IP4 <address>");
        rejects(
            &base_with(4, "c=IN IP4 192.0.2.1 extra"),
            4,
            "IN IP4 <address>",
        );
        rejects(&base_with(4, "c=ATM NSAP 47.0005"), 4, "not IN");
        rejects(&base_with(4, "c=IN IP5 192.0.2.1"), 4, "not IP4 or IP6");
        rejects(
            &base_with(4, "c=IN IP4 2001:db8::1"),
            4,
            "is IPv6 but the address type says IP4",
        );
        rejects(
            &base_with(4, "c=IN IP6 192.0.2.1"),
            4,
            "is IPv4 but the address type says IP6",
        );
        rejects(
            &base_with(4, "c=IN IP4 300.1.1.1"),
            4,
            "not a valid IPv4 address",
        );
        rejects(
            &base_with(4, "c=IN IP4 media.example.com"),
            4,
            "not a valid IPv4 address",
        );
        rejects(
            &base_with(4, "c=IN IP6 2001:db8::zz"),
            4,
            "not a valid IPv6 address",
        );
        rejects(&base_with(4, "c=IN IP4 224.2.1.1/"), 4, "TTL");
        rejects(&base_with(4, "c=IN IP4 224.2.1.1/ttl"), 4, "TTL");
        rejects(
            &base_plus("c=IN IP4 192.0.2.2\r\nc=IN IP4 192.0.2.3"),
            9,
            "duplicate c=",
        );
        let mut lines = BASE.to_vec();
        lines.insert(4, "c=IN IP4 192.0.2.9");
        rejects(&join(&lines), 5, "duplicate session-level c=");
        // The ttl suffix is accepted and kept.
        let ttl = Sdp::parse(&base_with(4, "c=IN IP4 224.2.1.1/127")).unwrap();
        assert_eq!(ttl.connection.unwrap().ttl_etc.as_deref(), Some("127"));
    }

    #[test]
    fn rejects_bad_media_line() {
        rejects(&base_with(6, "m="), 6, "m= is empty");
        rejects(&base_with(6, "m=audio"), 6, "no port");
        rejects(
            &base_with(6, "m=audio abc RTP/AVP 0"),
            6,
            "m= port \"abc\" is not a number",
        );
        rejects(&base_with(6, "m=audio -1 RTP/AVP 0"), 6, "not a number");
        rejects(
            &base_with(6, "m=audio 70000 RTP/AVP 0"),
            6,
            "m= port 70000 is out of range",
        );
        rejects(
            &base_with(6, "m=audio 10000/0 RTP/AVP 0"),
            6,
            "port count \"0\"",
        );
        rejects(
            &base_with(6, "m=audio 10000/x RTP/AVP 0"),
            6,
            "port count \"x\"",
        );
        rejects(&base_with(6, "m=audio 10000/ RTP/AVP 0"), 6, "port count");
        rejects(&base_with(6, "m=audio 10000"), 6, "no transport protocol");
        rejects(
            &base_with(6, "m=audio 10000 RTP/AVP"),
            6,
            "no media formats",
        );
        rejects(
            &base_with(6, "m=audio 10000 RTP/AVP 0 128"),
            6,
            "payload type \"128\"",
        );
        rejects(
            &base_with(6, "m=audio 10000 RTP/AVP PCMU"),
            6,
            "payload type \"PCMU\"",
        );
        rejects(&base_with(6, "m=audio 10000 RTP/SAVPF 0 x"), 6, "RTP/SAVPF");
        rejects(
            &base_with(6, "m=audio 10000 UDP/TLS/RTP/SAVPF 1000"),
            6,
            "0-127",
        );
        // Non-RTP transports carry arbitrary format tokens.
        assert!(Sdp::parse(&base_with(6, "m=image 10000 udptl t38")).is_ok());
        assert!(
            Sdp::parse(&base_with(
                6,
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel"
            ))
            .is_ok()
        );
    }

    #[test]
    fn rejects_session_lines_inside_media() {
        rejects(
            &base_plus("t=0 0"),
            8,
            "session-level line but appears after the first m=",
        );
        rejects(&base_plus("o=- 1 1 IN IP4 192.0.2.1"), 8, "session-level");
        rejects(&base_plus("s=again"), 8, "session-level");
        rejects(&base_plus("r=7d 1h 0 25h"), 8, "session-level");
        let mut lines = BASE.to_vec();
        lines.insert(3, "s=twice");
        rejects(&join(&lines), 4, "duplicate s=");
    }

    #[test]
    fn rejects_bad_rtpmap() {
        rejects(
            &base_with(7, "a=rtpmap:200 PCMU/8000"),
            7,
            "payload type \"200\"",
        );
        rejects(
            &base_with(7, "a=rtpmap:x PCMU/8000"),
            7,
            "payload type \"x\"",
        );
        rejects(
            &base_with(7, "a=rtpmap:0 PCMU/abc"),
            7,
            "clock rate \"abc\"",
        );
        rejects(&base_with(7, "a=rtpmap:0 PCMU/0"), 7, "clock rate \"0\"");
        rejects(
            &base_with(7, "a=rtpmap:0 PCMU/99999999999"),
            7,
            "clock rate",
        );
        rejects(&base_with(7, "a=rtpmap:0 PCMU"), 7, "no clock rate");
        rejects(&base_with(7, "a=rtpmap:0 /8000"), 7, "empty encoding name");
        rejects(&base_with(7, "a=rtpmap:0 PCMU/8000/x"), 7, "channel count");
        rejects(
            &base_with(7, "a=rtpmap:0 PCMU/8000/1/2"),
            7,
            "unexpected text",
        );
        rejects(&base_with(7, "a=rtpmap:0"), 7, "a=rtpmap must be");
        rejects(
            &base_with(7, "a=rtpmap:0 PCMU/8000 extra"),
            7,
            "a=rtpmap must be",
        );
        rejects(&base_with(7, "a=rtpmap"), 7, "needs a value");
        // Session level too: a broken rtpmap is broken wherever it is.
        let mut lines = BASE.to_vec();
        lines.insert(5, "a=rtpmap:300 X/1");
        rejects(&join(&lines), 6, "payload type");
    }

    #[test]
    fn rejects_bad_rtcp() {
        rejects(
            &base_plus("a=rtcp:abc"),
            8,
            "a=rtcp port \"abc\" is not a number",
        );
        rejects(
            &base_plus("a=rtcp:70000"),
            8,
            "a=rtcp port 70000 is out of range",
        );
        rejects(&base_plus("a=rtcp:"), 8, "a=rtcp must be");
        rejects(&base_plus("a=rtcp"), 8, "needs a value");
        rejects(&base_plus("a=rtcp:5001 IN IP4"), 8, "a=rtcp must be");
        rejects(
            &base_plus("a=rtcp:5001 IN IP4 999.1.1.1"),
            8,
            "a=rtcp address",
        );
        rejects(&base_plus("a=rtcp:5001 IN IP4 2001:db8::1"), 8, "IPv6");
        rejects(&base_plus("a=rtcp:5001 IN IP4 224.2.1.1/127"), 8, "TTL");
    }

    #[test]
    fn rejects_bad_ptime() {
        rejects(&base_plus("a=ptime:abc"), 8, "a=ptime \"abc\"");
        rejects(&base_plus("a=ptime:"), 8, "a=ptime \"\"");
        rejects(&base_plus("a=ptime:0"), 8, "positive");
        rejects(&base_plus("a=ptime:0.0"), 8, "positive");
        rejects(&base_plus("a=ptime:20ms"), 8, "a=ptime");
        rejects(&base_plus("a=ptime:20."), 8, "a=ptime");
        rejects(&base_plus("a=ptime:.5"), 8, "a=ptime");
        rejects(&base_plus("a=ptime:-20"), 8, "a=ptime");
    }

    #[test]
    fn rejects_bad_crypto() {
        rejects(&base_plus("a=crypto:"), 8, "a=crypto is empty");
        rejects(
            &base_plus("a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:abc"),
            8,
            "tag \"x\"",
        );
        rejects(
            &base_plus("a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:abc"),
            8,
            "1-9 digits",
        );
        rejects(&base_plus("a=crypto:1"), 8, "no crypto suite");
        rejects(
            &base_plus("a=crypto:1 AES_CM_128_HMAC_SHA1_80"),
            8,
            "no key parameters",
        );
        rejects(
            &base_plus("a=crypto:1 AES_CM_128_HMAC_SHA1_80 abc"),
            8,
            "key parameter \"abc\"",
        );
        rejects(
            &base_plus("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            8,
            "key parameter",
        );
        rejects(
            &base_plus("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:a;b"),
            8,
            "key parameter \"b\"",
        );
    }

    #[test]
    fn rejects_empty_attribute_name() {
        rejects(&base_plus("a="), 8, "empty name");
        rejects(&base_plus("a=:x"), 8, "empty name");
    }

    #[test]
    fn rejects_media_without_any_connection() {
        rejects(
            &base_without(4),
            5,
            "audio stream on port 10000 has no c= line",
        );
        let two = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
                   m=audio 10000 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\n\
                   m=video 10002 RTP/AVP 31\r\n";
        rejects(two, 7, "video stream on port 10002");
    }

    #[test]
    fn rejects_control_characters() {
        rejects(&base_with(3, "s=a\0b"), 3, "U+0000");
        rejects(&base_with(3, "s=a\u{7}b"), 3, "U+0007");
        rejects(&base_with(3, "s=a\rb"), 3, "U+000D");
        rejects(&base_with(3, "s=a\u{1b}[2J"), 3, "U+001B");
        rejects(&base_with(3, "s=a\u{7f}"), 3, "U+007F");
        rejects(&base_with(3, "s=a\u{85}"), 3, "U+0085");
        rejects(&format!("{}\r\r\n", join(&BASE).trim_end()), 7, "U+000D");
        // The quote escapes the character instead of echoing it into logs.
        let e = Sdp::parse(&base_with(3, "s=a\0b")).unwrap_err();
        assert!(!e.to_string().contains('\0'));
        assert!(e.reason.contains("\\0"), "{e}");
        // Tab is whitespace, and non-ASCII text is fine.
        let ok = Sdp::parse(&base_with(3, "s=caf\u{e9}\tlounge")).unwrap();
        assert!(ok.to_string().contains("s=caf\u{e9}\tlounge\r\n"));
    }

    #[test]
    fn error_quotes_line_truncated_to_80_chars() {
        let long = format!("m=audio x RTP/AVP {}", "0 ".repeat(200));
        let e = Sdp::parse(&base_with(6, &long)).unwrap_err();
        assert_eq!(e.line, 6);
        let quoted = format!("{:?}...", &long[..80]);
        assert!(e.reason.ends_with(&quoted), "{e}");
        assert!(e.reason.len() < 200);
        // Multibyte characters are cut on a character boundary.
        let wide = format!("s={}", "\u{e9}".repeat(200));
        let mut lines = BASE.to_vec();
        lines.insert(3, &wide);
        let e = Sdp::parse(&join(&lines)).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("..."));
    }

    #[test]
    fn error_display_names_the_line() {
        let e = Sdp::parse(&base_with(6, "m=audio 70000 RTP/AVP 0")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SDP line 6: m= port 70000 is out of range 0-65535: \"m=audio 70000 RTP/AVP 0\""
        );
        let e = Sdp::parse("").unwrap_err();
        assert_eq!(e.to_string(), "SDP line 0: SDP body is empty");
    }

    // ---- robustness ----

    /// Deterministic xorshift, so failures reproduce without extra crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Parse must never panic, and whatever it accepts must survive write -> parse
    /// unchanged.
    fn check_no_panic(input: &str) {
        if let Ok(sdp) = Sdp::parse(input) {
            let written = sdp.to_string();
            let again = Sdp::parse(&written)
                .unwrap_or_else(|e| panic!("rewrite of {input:?} rejected: {e}\n{written}"));
            assert_eq!(again, sdp, "{input:?}");
            for i in 0..sdp.media.len() + 1 {
                let _ = (sdp.direction(i), sdp.rtp_endpoint(i), sdp.rtcp_endpoint(i));
            }
            for m in &sdp.media {
                let _ = (m.rtpmaps(), m.crypto(), m.ptime(), m.rtcp(), m.fmtp(0));
            }
        }
    }

    const REPLACEMENTS: &[&str] = &[
        "", " ", "\0", "=", ":", "/", "x", "9", "0", "\n", "\r", "\r\n", "-1", "99999", "\t",
        "\u{e9}", "a=", "m=", "c=", "IP6", "::",
    ];

    #[test]
    fn truncated_and_mutated_inputs_never_panic() {
        let mut parsed_ok = 0usize;
        for (_, bytes) in EXAMPLES {
            let original = text(bytes);
            let boundaries: Vec<usize> = original
                .char_indices()
                .map(|(i, _)| i)
                .chain([original.len()])
                .collect();
            for &cut in &boundaries {
                check_no_panic(&original[..cut]);
                check_no_panic(&original[cut..]);
            }
            for window in boundaries.windows(2) {
                let (start, end) = (window[0], window[1]);
                for replacement in REPLACEMENTS {
                    let mutated =
                        format!("{}{replacement}{}", &original[..start], &original[end..]);
                    if Sdp::parse(&mutated).is_ok() {
                        parsed_ok += 1;
                    }
                    check_no_panic(&mutated);
                }
            }
        }
        // Sanity check that mutations also exercise the accept path.
        assert!(parsed_ok > 1000, "only {parsed_ok} mutants parsed");
    }

    #[test]
    fn random_multi_mutations_never_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..3000 {
            let (_, bytes) = EXAMPLES[round % EXAMPLES.len()];
            let mut s = text(bytes).to_owned();
            for _ in 0..1 + rng.below(4) {
                let boundaries: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
                if boundaries.is_empty() {
                    break;
                }
                let at = boundaries[rng.below(boundaries.len())];
                let len = s[at..].chars().next().map_or(0, char::len_utf8);
                let replacement = REPLACEMENTS[rng.below(REPLACEMENTS.len())];
                match rng.below(3) {
                    0 => s.replace_range(at..at + len, replacement),
                    1 => s.insert_str(at, replacement),
                    _ => {
                        let (a, b) = s.split_at(at);
                        s = format!("{b}{a}");
                    }
                }
            }
            check_no_panic(&s);
        }
    }
}
