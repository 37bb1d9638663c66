//! One ng request against the media-session API, and its reply dictionary.
//!
//! Defaults are rtpengine's, because Kamailio and OpenSIPS configurations were written against
//! them: nothing is appended to an offer's codecs unless the request asks (`codec-transcode`,
//! `codec-offer`), SRTP passes through unless `transport-protocol` or `SDES` says otherwise, the
//! source of media is not enforced unless `strict-source`. sluice's own richer defaults stay on
//! gRPC and the B2BUA.

use std::net::SocketAddr;

use crate::codecs::TranscodeMode;
use crate::load::Overload;
use crate::session::{
    CallReport, CodecRequest, Family, LegOptions, QualityPoint, RtcpMuxMode, SessionError,
    Sessions, SrtpMode, Statistics, StreamReport,
};

use super::bencode::Value;
use super::request::{Command, Request, RequestError};

/// The reply to one decoded message (without the cookie).
pub fn handle(sessions: &Sessions, msg: &Value) -> Value {
    match Request::parse(msg) {
        Ok(mut req) => match run(sessions, &mut req) {
            Ok(mut entries) => {
                let mut d = vec![("result", Value::str("ok"))];
                if req.command == Some(Command::Ping) {
                    d = vec![("result", Value::str("pong"))];
                }
                d.append(&mut entries);
                if !req.warnings.is_empty() {
                    d.push(("warning", Value::str(&req.warnings.join("; "))));
                }
                Value::dict(d)
            }
            Err(Fail::Reason(reason)) => error(&reason),
            // The client fails over silently to its next node on this result.
            Err(Fail::LoadLimit) => Value::dict([("result", Value::str("load limit"))]),
        },
        Err(RequestError(reason)) => error(&reason),
    }
}

/// Why a request got no `ok`.
enum Fail {
    Reason(String),
    /// The session limit, to a client that said it `supports` "load limit".
    LoadLimit,
}

impl From<String> for Fail {
    fn from(s: String) -> Fail {
        Fail::Reason(s)
    }
}

pub fn error(reason: &str) -> Value {
    Value::dict([
        ("result", Value::str("error")),
        ("error-reason", Value::str(reason)),
    ])
}

/// rtpengine's `error-reason` for each session failure (see `SessionError`): the exact strings
/// Kamailio and OpenSIPS match to fail over to another relay.
pub fn reason(e: &SessionError) -> String {
    match e {
        SessionError::NoPorts(_) => "Ran out of ports".into(),
        // Exactly rtpengine's string: Kamailio and OpenSIPS match it to fail over.
        SessionError::SessionLimit(_) => "Parallel session limit reached".into(),
        // rtpengine's words, matched literally by OpenSIPS to fail over.
        SessionError::Overloaded(Overload::Cpu { .. }) => "CPU usage limit exceeded".into(),
        SessionError::Overloaded(Overload::Load { .. }) => "Load limit exceeded".into(),
        SessionError::NotFound(_) => "Unknown call-id".into(),
        SessionError::BadSdp(e) => format!("Failed to parse SDP: {e}"),
        other => other.to_string(),
    }
}

fn need<'a>(what: &str, v: &'a Option<String>) -> Result<&'a str, String> {
    match v.as_deref() {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(format!("No {what} in message")),
    }
}

type Entries = Vec<(&'static str, Value)>;

fn run(sessions: &Sessions, req: &mut Request) -> Result<Entries, Fail> {
    let Some(command) = req.command else {
        return Err(Fail::Reason("No command in message".into()));
    };
    match command {
        Command::Ping => Ok(Vec::new()),
        Command::Offer => {
            let call_id = need("call-id", &req.call_id)?.to_string();
            let from_tag = need("from-tag", &req.from_tag)?.to_string();
            let sdp = prepare_sdp(req)?;
            let opts = options(req, true)?;
            // via-branch: each branch of a forked INVITE gets callee-facing ports of its own.
            let branch = req.via_branch.clone().unwrap_or_default();
            let out = sessions
                .offer_branch(&call_id, &from_tag, &branch, &sdp, opts)
                .map_err(|e| match e {
                    SessionError::SessionLimit(_) | SessionError::Overloaded(_)
                        if req.supports_load_limit =>
                    {
                        Fail::LoadLimit
                    }
                    e => Fail::Reason(reason(&e)),
                })?;
            Ok(vec![("sdp", Value::str(&finish_sdp(req, out)))])
        }
        Command::Answer => {
            let call_id = need("call-id", &req.call_id)?.to_string();
            let from_tag = need("from-tag", &req.from_tag)?.to_string();
            let to_tag = need("to-tag", &req.to_tag)?.to_string();
            let sdp = prepare_sdp(req)?;
            let opts = options(req, false)?;
            let branch = req.via_branch.clone().unwrap_or_default();
            // A 2xx (when the client says which reply this is) confirms its branch and frees
            // the others' ports; otherwise they go with their own delete or the call's.
            let final_answer = req.sip_code.is_some_and(|c| (200..300).contains(&c));
            let out = sessions
                .answer_branch(
                    &call_id,
                    &from_tag,
                    &to_tag,
                    &branch,
                    &sdp,
                    opts,
                    final_answer,
                )
                .map_err(|e| reason(&e))?;
            Ok(vec![("sdp", Value::str(&finish_sdp(req, out)))])
        }
        Command::Delete => {
            let call_id = need("call-id", &req.call_id)?.to_string();
            if req.delete_delay.is_some_and(|d| d > 0) && !req.flags.fatal {
                req.warnings
                    .push("delete-delay ignored: sluice deletes at once".into());
            }
            if let Some(branch) = req.via_branch.as_deref().filter(|b| !b.is_empty()) {
                // One branch of a forked call failed: only its ports go, unless it was the last.
                return match sessions.delete_branch(&call_id, branch) {
                    Ok(Some(report)) => Ok(call_stats(&report)),
                    Ok(None) => Ok(Vec::new()),
                    Err(e) => Err(Fail::Reason(reason(&e))),
                };
            }
            let from_tag = req.from_tag.as_deref().unwrap_or("");
            // Kamailio sends the to-tag only to end one branch (with the to-tag flag); the
            // whole call goes otherwise.
            let to_tag = if req.flags.to_tag_flag {
                req.to_tag.as_deref().unwrap_or("")
            } else {
                ""
            };
            let report = sessions
                .delete(&call_id, from_tag, to_tag)
                .map_err(|e| reason(&e))?;
            Ok(call_stats(&report))
        }
        Command::Query => {
            let call_id = need("call-id", &req.call_id)?;
            let report = sessions.query(call_id).map_err(|e| reason(&e))?;
            Ok(call_stats(&report))
        }
        Command::List => {
            let limit = req.limit.unwrap_or(32).clamp(0, 1_000_000) as usize;
            let ids = sessions.list(limit);
            Ok(vec![(
                "calls",
                Value::List(ids.iter().map(|c| Value::str(c)).collect()),
            )])
        }
        Command::Statistics => Ok(statistics(&sessions.statistics())),
    }
}

/// The request's SDP, ICE attributes removed: sluice is not an ICE agent, so the endpoint's
/// candidates must not reach the other side (they would lead media around the relay). That is
/// `ICE=remove`; rtpengine without the flag would answer ICE itself, so then a warning says
/// that sluice removed them anyway.
fn prepare_sdp(req: &mut Request) -> Result<String, String> {
    const ICE: [&str; 7] = [
        "a=candidate:",
        "a=ice-ufrag:",
        "a=ice-pwd:",
        "a=ice-options:",
        "a=ice-lite",
        "a=end-of-candidates",
        "a=remote-candidates:",
    ];
    let sdp = need("SDP", &req.sdp)?;
    let has_ice = sdp.lines().any(|l| ICE.iter().any(|p| l.starts_with(p)));
    if !has_ice {
        return Ok(sdp.to_string());
    }
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        if !ICE.iter().any(|p| line.starts_with(p)) {
            out.push_str(line);
        }
    }
    if req.ice.as_deref() != Some("remove") {
        req.warnings
            .push("ICE attributes removed: sluice is not an ICE agent".into());
    }
    Ok(out)
}

/// `replace-origin`: the o= line's address becomes the relay's.
fn finish_sdp(req: &Request, sdp: String) -> String {
    if req.replace_origin {
        crate::sdp::origin_from_connection(sdp)
    } else {
        sdp
    }
}

/// LegOptions from the request, with rtpengine's defaults; what sluice does not do becomes a
/// warning.
fn options(req: &mut Request, offer: bool) -> Result<LegOptions, String> {
    let mut warn = Vec::new();
    if matches!(req.ice.as_deref(), Some(i) if i != "remove") {
        warn.push(format!(
            "ICE={} ignored: no ICE support",
            req.ice.as_deref().unwrap_or("")
        ));
    }
    if matches!(req.dtls.as_deref(), Some(d) if d != "off") {
        warn.push("DTLS ignored: no DTLS-SRTP support".to_string());
    }
    if matches!(req.record_call.as_deref(), Some("yes" | "on")) {
        warn.push("record-call ignored: no recording".to_string());
    }
    if !req.direction.is_empty() {
        warn.push("direction ignored: sluice relays on its media addresses".to_string());
    }
    if req.flags.sip_source_address {
        warn.push(
            "SIP-source-address: the SDP address is used until media latches to the real source"
                .to_string(),
        );
    }
    for s in &req.sdes {
        if s != "off" {
            warn.push(format!("SDES-{s} ignored"));
        }
    }
    req.warnings.append(&mut warn);
    let mut o = LegOptions {
        // rtpengine learns the source and forwards from wherever media comes unless told.
        strict_source: req.flags.strict_source,
        ..LegOptions::default()
    };
    // Latch rule 5: media only from the host the SIP message came from, or the SDP's.
    // `media-handover` (rtpengine: let media move to any new source) opts out.
    if let Some((_, addr)) = &req.received_from
        && !req.flags.media_handover
    {
        o.signalling_source = Some(
            addr.parse()
                .map_err(|_| format!("received-from address '{addr}' is not an IP address"))?,
        );
    }
    o.family = match req.address_family.as_deref() {
        None => Family::Auto,
        Some("IP4") => Family::V4,
        Some("IP6") => Family::V6,
        Some(other) => return Err(format!("Unsupported address family '{other}'")),
    };
    for m in &req.rtcp_mux {
        o.rtcp_mux = match m.as_str() {
            "offer" => RtcpMuxMode::Offer,
            "demux" | "reject" => RtcpMuxMode::Strip,
            "require" => RtcpMuxMode::Require,
            // Accepting what the endpoint offered is what sluice does anyway.
            "accept" => RtcpMuxMode::Default,
            other => return Err(format!("Unknown rtcp-mux mode '{other}'")),
        };
    }
    o.srtp = match req.transport_protocol.as_deref() {
        None => SrtpMode::Default,
        Some("RTP/AVP") | Some("RTP/AVPF") => SrtpMode::Strip,
        Some("RTP/SAVP") | Some("RTP/SAVPF") => SrtpMode::Offer,
        Some(other) => return Err(format!("Unsupported transport protocol '{other}'")),
    };
    if req.sdes.iter().any(|s| s == "off") && o.srtp == SrtpMode::Offer {
        return Err("SDES=off with an SRTP transport protocol: no way to key SRTP".into());
    }
    if offer {
        let c = &req.codec;
        let mut transcode = c.transcode.clone();
        transcode.extend(c.offer.iter().cloned());
        // rtpengine touches the codecs only when asked: strip and mask remove, transcode and
        // offer add exactly what they list.
        let mode = if transcode.is_empty() && c.strip.is_empty() && c.mask.is_empty() {
            TranscodeMode::Off
        } else {
            TranscodeMode::Auto
        };
        o.codecs = CodecRequest {
            mode: Some(mode),
            transcode: &transcode,
            strip: &c.strip,
            mask: &c.mask,
            append_only_listed: true,
        }
        .parse()
        .map_err(|e| e.to_string())?;
    }
    Ok(o)
}

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn endpoint(a: SocketAddr) -> Value {
    Value::dict([
        (
            "family",
            Value::str(if a.is_ipv4() { "IPv4" } else { "IPv6" }),
        ),
        ("address", Value::str(&a.ip().to_string())),
        ("port", Value::Int(i64::from(a.port()))),
    ])
}

fn stream_stats(s: &StreamReport) -> Value {
    let errors = s.dropped_wrong_source
        + s.dropped_direction
        + s.dropped_malformed
        + s.srtp_auth_failures
        + s.srtp_replayed;
    let mut d = vec![
        ("local port", Value::Int(i64::from(s.local_rtp.port()))),
        (
            "stats",
            Value::dict([
                ("packets", int(s.packets)),
                ("bytes", int(s.bytes)),
                ("errors", int(errors)),
            ]),
        ),
    ];
    if let Some(p) = s.latched_peer.or(s.sdp_peer) {
        d.push(("endpoint", endpoint(p)));
    }
    if let Some(p) = s.sdp_peer {
        d.push(("advertised endpoint", endpoint(p)));
    }
    if s.ssrc != 0 {
        d.push(("SSRC", int(u64::from(s.ssrc))));
    }
    Value::dict(d)
}

/// One MOS figure the way rtpengine's `SSRC` entries carry it: MOS x10 and whole units, as
/// Kamailio's `mos_*` variables read them.
fn mos_point(p: &QualityPoint, samples: Option<u32>) -> Value {
    let mut d = vec![
        ("MOS", int((p.mos.unwrap_or(0.0) * 10.0).round() as u64)),
        ("packet loss", int(p.loss_pct.round() as u64)),
        ("jitter", int(p.jitter_ms.round() as u64)),
        ("round-trip time", int(p.rtt_us.unwrap_or(0))),
        ("round-trip time leg", int(p.rtt_leg_us.unwrap_or(0))),
        ("reported at", int(p.reported_unix_ms / 1000)),
    ];
    if let Some(n) = samples {
        d.push(("samples", int(u64::from(n))));
    }
    Value::dict(d)
}

/// rtpengine's `SSRC` dictionary: per reported-on source, the average, lowest and highest MOS
/// of the receiver's RTCP reports (only sources with a MOS: no round trip, no entry).
fn ssrc_stats(r: &CallReport) -> Value {
    let mut out = std::collections::BTreeMap::new();
    for q in r
        .legs
        .iter()
        .flat_map(|l| &l.streams)
        .filter_map(|s| s.quality.as_ref())
    {
        let (Some(avg), Some(lo), Some(hi)) = (&q.average, &q.lowest, &q.highest) else {
            continue;
        };
        out.insert(
            q.ssrc.to_string().into_bytes(),
            Value::dict([
                ("average MOS", mos_point(avg, Some(q.samples))),
                ("lowest MOS", mos_point(lo, None)),
                ("highest MOS", mos_point(hi, None)),
            ]),
        );
    }
    Value::Dict(out)
}

/// rtpengine's call statistics shape: what Kamailio's `$rtpestat` reads (`totals`), the
/// per-tag, per-media, per-stream tree, and `SSRC` with MOS from the endpoints' RTCP.
pub fn call_stats(r: &CallReport) -> Entries {
    let (mut rtp_p, mut rtp_b, mut rtp_e, mut rtcp_p, mut rtcp_b) = (0, 0, 0, 0, 0);
    let mut tags = std::collections::BTreeMap::new();
    for (i, leg) in r.legs.iter().enumerate() {
        let Some(tag) = &leg.tag else { continue };
        let other = r.legs[1 - i].tag.clone().unwrap_or_default();
        let medias: Vec<Value> = leg
            .streams
            .iter()
            .map(|s| {
                // The relay's packet counters include RTCP; rtpengine's totals keep them apart.
                rtp_p += s.packets.saturating_sub(s.rtcp_packets);
                rtp_b += s.bytes.saturating_sub(s.rtcp_bytes);
                rtp_e += s.dropped_wrong_source + s.dropped_direction + s.dropped_malformed;
                rtcp_p += s.rtcp_packets;
                rtcp_b += s.rtcp_bytes;
                Value::dict([
                    ("index", int(s.index as u64 + 1)),
                    ("type", Value::str(&s.media)),
                    ("streams", Value::List(vec![stream_stats(s)])),
                ])
            })
            .collect();
        tags.insert(
            tag.as_bytes().to_vec(),
            Value::dict([
                ("tag", Value::str(tag)),
                ("in dialogue with", Value::str(&other)),
                ("medias", Value::List(medias)),
            ]),
        );
    }
    vec![
        ("created", int(r.created_unix_ms / 1000)),
        ("created_us", int(r.created_unix_ms * 1000)),
        ("last signal", int(r.last_signal_unix_ms / 1000)),
        (
            "totals",
            Value::dict([
                (
                    "RTP",
                    Value::dict([
                        ("packets", int(rtp_p)),
                        ("bytes", int(rtp_b)),
                        ("errors", int(rtp_e)),
                    ]),
                ),
                (
                    "RTCP",
                    // RTCP drops are counted with RTP's (`errors` above), not apart: no key
                    // rather than a made-up 0 (Kamailio shows -1, rtpengine's "unknown").
                    Value::dict([("packets", int(rtcp_p)), ("bytes", int(rtcp_b))]),
                ),
            ]),
        ),
        ("tags", Value::Dict(tags)),
        ("SSRC", ssrc_stats(r)),
    ]
}

fn statistics(s: &Statistics) -> Entries {
    vec![(
        "statistics",
        Value::dict([
            (
                "currentstatistics",
                Value::dict([
                    ("sessionsown", int(s.calls_current)),
                    ("sessionsforeign", Value::Int(0)),
                    ("sessionstotal", int(s.calls_current)),
                ]),
            ),
            (
                "totalstatistics",
                Value::dict([
                    ("uptime", int(s.uptime.as_secs())),
                    ("managedsessions", int(s.calls_total)),
                    ("timeoutsessions", int(s.calls_timed_out)),
                    ("packets", int(s.packets_relayed)),
                    ("bytes", int(s.bytes_relayed)),
                    ("errors", int(s.packets_dropped)),
                ]),
            ),
            (
                "ports",
                Value::dict([("used", int(s.ports_in_use)), ("free", int(s.ports_free))]),
            ),
        ]),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_from_vouches_for_the_signalling_host_unless_media_handover() {
        let mut req = Request {
            received_from: Some(("IP4".into(), "203.0.113.9".into())),
            ..Request::default()
        };
        assert_eq!(
            options(&mut req, true).unwrap().signalling_source,
            Some("203.0.113.9".parse().unwrap())
        );
        req.flags.media_handover = true;
        assert_eq!(options(&mut req, true).unwrap().signalling_source, None);
        let mut bad = Request {
            received_from: Some(("IP4".into(), "proxy.example".into())),
            ..Request::default()
        };
        assert!(
            options(&mut bad, true)
                .unwrap_err()
                .contains("not an IP address")
        );
    }

    #[test]
    fn replace_origin_puts_the_relay_address_in_o() {
        let req = Request {
            replace_origin: true,
            ..Request::default()
        };
        let sdp = "v=0\r\no=alice 1 2 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
        assert_eq!(
            finish_sdp(&req, sdp.into()),
            "v=0\r\no=alice 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        );
        let v6 = "v=0\r\no=- 1 2 IN IP4 10.0.0.9\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP6 ::1\r\n";
        assert!(finish_sdp(&req, v6.into()).contains("o=- 1 2 IN IP6 ::1\r\n"));
        let keep = Request::default();
        assert_eq!(finish_sdp(&keep, sdp.into()), sdp);
    }

    #[test]
    fn ice_lines_are_removed_with_a_warning_unless_asked() {
        let sdp = "v=0\r\nm=audio 1 RTP/AVP 0\r\na=ice-ufrag:x\r\na=candidate:1 1 UDP 1 10.0.0.1 5 typ host\r\na=rtpmap:0 PCMU/8000\r\n";
        let mut req = Request {
            sdp: Some(sdp.into()),
            ..Request::default()
        };
        let out = prepare_sdp(&mut req).unwrap();
        assert_eq!(
            out,
            "v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        assert_eq!(req.warnings.len(), 1);
        let mut asked = Request {
            sdp: Some(sdp.into()),
            ice: Some("remove".into()),
            ..Request::default()
        };
        assert_eq!(prepare_sdp(&mut asked).unwrap(), out);
        assert!(asked.warnings.is_empty());
    }

    #[test]
    fn session_errors_use_rtpengines_strings() {
        let e = SessionError::NotFound("c".into());
        assert_eq!(reason(&e), "Unknown call-id");
        for e in [
            crate::port_alloc::PortAllocError::Exhausted {
                low: 1,
                high: 2,
                capacity: 2,
            },
            crate::port_alloc::PortAllocError::BindFailed {
                tried: 3,
                last: "in use".into(),
            },
        ] {
            assert_eq!(reason(&SessionError::NoPorts(e)), "Ran out of ports");
        }
    }
}
