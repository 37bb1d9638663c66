//! An ng request as its parts: the command, the call's identifiers, the SDP, and every option
//! Kamailio and OpenSIPS send, whether as parsed dictionary keys (`flags`, `replace`, `codec`,
//! ...) or as tokens of one `rtpp-flags` string. Both forms go through one token parser, so
//! `codec-strip=PCMU` in rtpp-flags and `codec: {strip: [PCMU]}` mean the same.
//!
//! Keys and flags match with spaces and hyphens as aliases and without regard to case
//! (`trust address` = `trust-address`, `ICE` = `ice`), as rtpengine matches them. An unknown
//! flag is a warning in the reply, never a failure; a wrong type for a key is an error.

use super::bencode::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Ping,
    Offer,
    Answer,
    Delete,
    Query,
    List,
    Statistics,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match norm(s).as_str() {
            "ping" => Command::Ping,
            "offer" => Command::Offer,
            "answer" => Command::Answer,
            "delete" => Command::Delete,
            "query" => Command::Query,
            "list" => Command::List,
            "statistics" => Command::Statistics,
            _ => return None,
        })
    }
}

/// Bare-word flags (`flags: [...]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// Use the SDP's addresses as they are (no `received-from` substitution).
    pub trust_address: bool,
    /// Use the SIP message's source address instead of the SDP's (NATed endpoints).
    pub sip_source_address: bool,
    pub symmetric: bool,
    pub asymmetric: bool,
    pub strict_source: bool,
    pub port_latching: bool,
    pub media_handover: bool,
    pub no_rtcp_attribute: bool,
    pub loop_protect: bool,
    pub generate_mid: bool,
    /// `delete`: the call ends now, regardless of delete-delay.
    pub fatal: bool,
    /// `delete`: only the branch of this to-tag ends.
    pub to_tag_flag: bool,
}

/// `codec: {...}` and the `codec-<verb>=<name>` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecFlags {
    pub strip: Vec<String>,
    pub offer: Vec<String>,
    pub transcode: Vec<String>,
    pub mask: Vec<String>,
    pub accept: Vec<String>,
    pub consume: Vec<String>,
    pub set: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub command: Option<Command>,
    pub call_id: Option<String>,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    pub sdp: Option<String>,
    pub label: Option<String>,
    /// `sip_request` or `sip_reply`.
    pub sip_message_type: Option<String>,
    /// `[IP4|IP6, address]`: where the SIP message came from.
    pub received_from: Option<(String, String)>,
    pub flags: Flags,
    pub replace_origin: bool,
    /// `direction: [internal, external]`: interface names by side.
    pub direction: Vec<String>,
    /// `IP4` or `IP6`.
    pub address_family: Option<String>,
    /// `remove`, `force`, ...
    pub ice: Option<String>,
    pub transport_protocol: Option<String>,
    /// `offer`, `demux`, `accept`, `reject`, `require`.
    pub rtcp_mux: Vec<String>,
    /// `off`, `no-<suite>`, `only-<suite>`, `nonew`, ...
    pub sdes: Vec<String>,
    pub dtls: Option<String>,
    pub codec: CodecFlags,
    pub record_call: Option<String>,
    /// Seconds; `delete` only.
    pub delete_delay: Option<i64>,
    /// The SIP reply's status code, when the client sends it: a 2xx answer confirms its
    /// branch of a forked call.
    pub sip_code: Option<i64>,
    /// `list`: at most this many call-ids.
    pub limit: Option<i64>,
    /// The client understands `result: load limit` (Kamailio sends `supports: ["load limit"]`).
    pub supports_load_limit: bool,
    /// Things ignored, for the reply's `warning`.
    pub warnings: Vec<String>,
}

/// A request that cannot be acted on: `error-reason` of the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

fn bad(msg: impl Into<String>) -> RequestError {
    RequestError(msg.into())
}

/// Lower case, spaces and underscores as hyphens: the alias rule of ng keys and flags.
pub fn norm(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            ' ' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn text(key: &str, v: &Value) -> Result<String, RequestError> {
    match v {
        Value::Bytes(b) => {
            String::from_utf8(b.clone()).map_err(|_| bad(format!("'{key}' is not UTF-8 text")))
        }
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(bad(format!("'{key}' must be a string"))),
    }
}

/// A list of strings; a single string counts as a one-element list (clients send either).
fn texts(key: &str, v: &Value) -> Result<Vec<String>, RequestError> {
    match v {
        Value::List(items) => items.iter().map(|i| text(key, i)).collect(),
        Value::Bytes(_) => Ok(vec![text(key, v)?]),
        _ => Err(bad(format!("'{key}' must be a list of strings"))),
    }
}

fn int(key: &str, v: &Value) -> Result<i64, RequestError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Bytes(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad(format!("'{key}' must be an integer"))),
        _ => Err(bad(format!("'{key}' must be an integer"))),
    }
}

/// At most this many flag tokens in one request: a hostile list cannot make parsing expensive.
pub const MAX_TOKENS: usize = 1_000;

impl Request {
    /// Parses a decoded ng message (a dictionary).
    pub fn parse(msg: &Value) -> Result<Request, RequestError> {
        let Value::Dict(d) = msg else {
            return Err(bad("message is not a dictionary"));
        };
        let mut r = Request::default();
        let mut tokens = 0usize;
        for (k, v) in d {
            let key = norm(&String::from_utf8_lossy(k));
            match key.as_str() {
                "command" => {
                    let c = text("command", v)?;
                    r.command = Some(
                        Command::parse(&c).ok_or_else(|| bad(format!("Unknown command '{c}'")))?,
                    );
                }
                "flags" => {
                    for f in texts("flags", v)? {
                        tokens += 1;
                        r.flag(&f);
                    }
                }
                "rtpp-flags" => {
                    for t in text("rtpp-flags", v)?.split_whitespace() {
                        tokens += 1;
                        if tokens > MAX_TOKENS {
                            break;
                        }
                        r.token(t);
                    }
                }
                "replace" => {
                    for x in texts("replace", v)? {
                        tokens += 1;
                        r.replace(&x);
                    }
                }
                "codec" => {
                    let Value::Dict(c) = v else {
                        return Err(bad("'codec' must be a dictionary"));
                    };
                    for (verb, names) in c {
                        let verb = norm(&String::from_utf8_lossy(verb));
                        for n in texts("codec", names)? {
                            tokens += 1;
                            r.codec_verb(&verb, &n);
                        }
                    }
                }
                "supports" => {
                    r.supports_load_limit = texts("supports", v)?
                        .iter()
                        .any(|s| norm(s) == "load-limit");
                }
                "received-from" => {
                    let l = texts("received-from", v)?;
                    let [fam, addr] = l.as_slice() else {
                        return Err(bad("'received-from' must be [family, address]"));
                    };
                    r.received_from = Some((fam.clone(), addr.clone()));
                }
                "delete-delay" => r.delete_delay = Some(int("delete-delay", v)?),
                "sip-code" => r.sip_code = Some(int("sip-code", v)?),
                "limit" => r.limit = Some(int("limit", v)?),
                _ => {
                    let value = match v {
                        Value::List(_) => texts(&key, v)?,
                        _ => vec![text(&key, v)?],
                    };
                    for x in value {
                        tokens += 1;
                        r.key_value(&key, &x);
                    }
                }
            }
            if tokens > MAX_TOKENS {
                return Err(bad(format!("more than {MAX_TOKENS} flags")));
            }
        }
        Ok(r)
    }

    fn warn(&mut self, what: String) {
        if self.warnings.len() < 16 {
            self.warnings.push(what);
        }
    }

    /// A top-level `key: value` (or `key=value` in rtpp-flags).
    fn key_value(&mut self, key: &str, value: &str) {
        let v = value.to_string();
        match key {
            "call-id" => self.call_id = Some(v),
            "from-tag" => self.from_tag = Some(v),
            "to-tag" => self.to_tag = Some(v),
            "via-branch" => self.via_branch = Some(v),
            "sdp" => self.sdp = Some(v),
            "label" => self.label = Some(v),
            "sip-message-type" => self.sip_message_type = Some(v),
            "direction" => self.direction.push(v),
            "address-family" => self.address_family = Some(v.to_ascii_uppercase()),
            "ice" => self.ice = Some(norm(&v)),
            "transport-protocol" => self.transport_protocol = Some(v.to_ascii_uppercase()),
            "rtcp-mux" => self.rtcp_mux.push(norm(&v)),
            "sdes" => self.sdes.push(norm(&v)),
            "dtls" => self.dtls = Some(norm(&v)),
            "record-call" => self.record_call = Some(norm(&v)),
            "delete-delay" => match v.trim().parse() {
                Ok(n) => self.delete_delay = Some(n),
                Err(_) => self.warn(format!("delete-delay '{v}' is not a number")),
            },
            "replace" => self.replace(&v),
            // Sent by Kamailio/OpenSIPS, meaningful to rtpengine's features sluice does not
            // have or does not need (the reply says so for those it ignores).
            "sip-code" => match v.trim().parse() {
                Ok(n) => self.sip_code = Some(n),
                Err(_) => self.warn(format!("sip-code '{v}' is not a number")),
            },
            "from-tags" | "interface" | "xmlrpc-callback" | "media-address" => {
                self.warn(format!("'{key}' ignored"))
            }
            _ => self.warn(format!("unknown key '{key}' ignored")),
        }
    }

    fn replace(&mut self, what: &str) {
        match norm(what).as_str() {
            "origin" => self.replace_origin = true,
            // rtpengine always rewrites c= since 2024 and ignores this; so does sluice.
            "session-connection" | "session-name" | "sdp-version" | "username" => {}
            other => self.warn(format!("replace-{other} ignored")),
        }
    }

    fn codec_verb(&mut self, verb: &str, name: &str) {
        let list = match verb {
            "strip" => &mut self.codec.strip,
            "offer" => &mut self.codec.offer,
            "transcode" => &mut self.codec.transcode,
            "mask" => &mut self.codec.mask,
            "accept" => &mut self.codec.accept,
            "consume" => &mut self.codec.consume,
            "set" => &mut self.codec.set,
            other => {
                self.warn(format!("codec-{other} ignored"));
                return;
            }
        };
        list.push(name.to_string());
    }

    /// One bare word of `flags: [...]`.
    fn flag(&mut self, f: &str) {
        if f.contains('=') {
            return self.token(f);
        }
        let n = norm(f);
        let fl = &mut self.flags;
        match n.as_str() {
            "trust-address" => fl.trust_address = true,
            "sip-source-address" => fl.sip_source_address = true,
            "symmetric" => fl.symmetric = true,
            "asymmetric" => fl.asymmetric = true,
            "strict-source" => fl.strict_source = true,
            "port-latching" => fl.port_latching = true,
            "media-handover" => fl.media_handover = true,
            "no-rtcp-attribute" => fl.no_rtcp_attribute = true,
            "loop-protect" => fl.loop_protect = true,
            "generate-mid" => fl.generate_mid = true,
            "fatal" => fl.fatal = true,
            "to-tag" => fl.to_tag_flag = true,
            "rtp/avp" | "rtp/savp" | "rtp/avpf" | "rtp/savpf" => {
                self.transport_protocol = Some(f.trim().to_ascii_uppercase())
            }
            "record-call" => self.record_call = Some("yes".into()),
            _ => {
                for (prefix, key) in [
                    ("replace-", "replace"),
                    ("rtcp-mux-", "rtcp-mux"),
                    ("sdes-", "sdes"),
                    ("ice-", "ice"),
                    ("dtls-", "dtls"),
                    ("direction-", "direction"),
                ] {
                    if let Some(rest) = n.strip_prefix(prefix) {
                        return self.key_value(key, rest);
                    }
                }
                if let Some(rest) = n.strip_prefix("codec-") {
                    // `codec-strip-PCMU` keeps the codec name's case.
                    let orig = &f.trim()[f.trim().len() - rest.len()..];
                    if let Some((verb, name)) = orig.split_once('-') {
                        return self.codec_verb(&norm(verb), name);
                    }
                }
                self.warn(format!("unknown flag '{f}' ignored"));
            }
        }
    }

    /// One token of an `rtpp-flags` string: `key=value`, `codec-<verb>=<name>`, or a bare flag.
    fn token(&mut self, t: &str) {
        let Some((k, v)) = t.split_once('=') else {
            return self.flag(t);
        };
        let key = norm(k);
        if let Some(verb) = key.strip_prefix("codec-") {
            for name in v.split(',').filter(|s| !s.is_empty()) {
                self.codec_verb(verb, name);
            }
            return;
        }
        match key.as_str() {
            "replace" | "rtcp-mux" | "sdes" | "direction" => {
                for x in v.split(',').filter(|s| !s.is_empty()) {
                    self.key_value(&key, x);
                }
            }
            _ => self.key_value(&key, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(entries: &[(&str, Value)]) -> Request {
        Request::parse(&Value::dict(entries.iter().cloned())).unwrap()
    }

    fn list(items: &[&str]) -> Value {
        Value::List(items.iter().map(|s| Value::str(s)).collect())
    }

    /// What Kamailio's rtpengine module sends for `rtpengine_offer("replace-origin
    /// replace-session-connection trust-address codec-strip=PCMA ICE=remove RTP/SAVP")`.
    #[test]
    fn kamailio_parsed_keys() {
        let r = req(&[
            ("command", Value::str("offer")),
            ("call-id", Value::str("c1@host")),
            ("from-tag", Value::str("ft")),
            ("sip-message-type", Value::str("sip_request")),
            ("supports", list(&["load limit"])),
            ("flags", list(&["trust-address"])),
            ("replace", list(&["origin", "session-connection"])),
            ("codec", Value::dict([("strip", list(&["PCMA"]))])),
            ("ICE", Value::str("remove")),
            ("transport-protocol", Value::str("RTP/SAVP")),
            ("received-from", list(&["IP4", "10.0.0.9"])),
            ("sdp", Value::str("v=0\r\n")),
        ]);
        assert_eq!(r.command, Some(Command::Offer));
        assert_eq!(r.call_id.as_deref(), Some("c1@host"));
        assert!(r.flags.trust_address && r.replace_origin && r.supports_load_limit);
        assert_eq!(r.codec.strip, vec!["PCMA"]);
        assert_eq!(r.ice.as_deref(), Some("remove"));
        assert_eq!(r.transport_protocol.as_deref(), Some("RTP/SAVP"));
        assert_eq!(r.received_from, Some(("IP4".into(), "10.0.0.9".into())));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    /// The same options as one rtpp-flags string give the same request.
    #[test]
    fn rtpp_flags_string_means_the_same() {
        let parsed = req(&[
            ("command", Value::str("offer")),
            ("call-id", Value::str("c1")),
            ("flags", list(&["trust-address", "symmetric"])),
            ("replace", list(&["origin"])),
            (
                "codec",
                Value::dict([("strip", list(&["PCMA"])), ("transcode", list(&["opus"]))]),
            ),
            ("rtcp-mux", list(&["demux"])),
            ("SDES", list(&["off"])),
            ("ICE", Value::str("remove")),
            ("transport-protocol", Value::str("RTP/AVP")),
            ("via-branch", Value::str("z9hG4bK1")),
        ]);
        let string = req(&[
            ("command", Value::str("offer")),
            ("call-id", Value::str("c1")),
            (
                "rtpp-flags",
                Value::str(
                    "trust-address symmetric replace-origin codec-strip=PCMA \
                     codec-transcode=opus rtcp-mux-demux SDES-off ICE=remove RTP/AVP \
                     via-branch=z9hG4bK1",
                ),
            ),
        ]);
        assert_eq!(parsed, string);
    }

    #[test]
    fn spaces_hyphens_and_case_are_aliases() {
        let r = req(&[
            ("command", Value::str("Answer")),
            (
                "flags",
                list(&["trust address", "Strict-Source", "codec-mask-PCMU"]),
            ),
            ("transport protocol", Value::str("rtp/avp")),
            ("delete delay", Value::Int(0)),
        ]);
        assert_eq!(r.command, Some(Command::Answer));
        assert!(r.flags.trust_address && r.flags.strict_source);
        assert_eq!(r.codec.mask, vec!["PCMU"]);
        assert_eq!(r.transport_protocol.as_deref(), Some("RTP/AVP"));
        assert_eq!(r.delete_delay, Some(0));
    }

    #[test]
    fn unknown_flags_warn_and_wrong_types_fail() {
        let r = req(&[
            ("command", Value::str("offer")),
            ("flags", list(&["no-such-flag"])),
            ("replace", list(&["zebra"])),
            ("frobnicate", Value::str("1")),
        ]);
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
        let e = |entries: Vec<(&str, Value)>| Request::parse(&Value::dict(entries)).unwrap_err();
        assert_eq!(
            e(vec![("command", Value::str("dance"))]).0,
            "Unknown command 'dance'"
        );
        assert!(e(vec![("flags", Value::dict([]))]).0.contains("'flags'"));
        assert!(e(vec![("codec", Value::str("x"))]).0.contains("'codec'"));
        assert!(
            e(vec![("received-from", list(&["IP4"]))])
                .0
                .contains("received-from")
        );
        assert!(Request::parse(&Value::str("x")).is_err());
        let many: Vec<&str> = vec!["symmetric"; MAX_TOKENS + 1];
        assert!(e(vec![("flags", list(&many))]).0.contains("flags"));
        assert!(
            e(vec![("rtpp-flags", Value::str(&"x ".repeat(10_000)))])
                .0
                .contains("flags")
        );
        // Warnings are capped: a reply stays small whatever the request.
        let r = req(&[("rtpp-flags", Value::str(&"x ".repeat(MAX_TOKENS)))]);
        assert_eq!(r.warnings.len(), 16);
    }
}
