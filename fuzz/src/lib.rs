//! The bodies of sluice's fuzz targets: one `fn(&[u8])` per parser that takes bytes from
//! outside. The AFL++ binaries (`afl/src/bin/`) and the corpus replay test
//! (`tests/replay.rs`) call these same functions, so what the fuzzer explored is what CI
//! replays. A target must not panic on any input; where a parser documents a property
//! (written-back SDP parses again, bencode encodes back to the same value), the target asserts
//! it, so that breaking it is a crash too.
//!
//! Targets go past the first parse into the accessors that the daemon calls on a parsed value,
//! since those parse further (headers of a SIP message, attributes of an SDP).

use std::net::IpAddr;

use sluice_control::config::{Config, FileConfig, Overrides};
use sluice_control::ng::bencode::Value;
use sluice_control::ng::request::Request;
use sluice_control::ng::tcp::{Framed, next_message};
use sluice_control::sdes::SdesKey;
use sluice_control::sdp::Sdp;
use sluice_relay::srtp::{
    MAX_RTCP_OVERHEAD, MAX_RTP_OVERHEAD, SrtpConfig, SrtpContext, SrtpProfile,
};
use sluice_sip::{
    Dialog, HeaderName, Limits, Message, frame_stream, parse_datagram, response_for,
    validate_request, validate_response,
};

/// A target's body: any bytes in, no panic.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("sip", sip),
    ("sdp", sdp),
    ("ng", ng),
    ("rtp", rtp),
    ("srtp", srtp),
    ("frame", frame),
    ("config", config),
    ("grpc", grpc),
];

/// A SIP message as a datagram (UDP) and as the front of a stream buffer (TCP/TLS), then
/// what the B2BUA reads of it: validation, the headers it parses, the dialog, a response.
pub fn sip(data: &[u8]) {
    let limits = Limits::default();
    let mut rest = data;
    // A stream of back-to-back messages, as a TCP connection delivers them.
    while !rest.is_empty() {
        match frame_stream(rest, &limits) {
            Ok(f) if !f.is_empty() => rest = &rest[f.len()..],
            _ => break,
        }
    }
    let Ok(m) = parse_datagram(data, &limits) else {
        return;
    };
    sip_message(&m);
    // What sluice writes must not trip its own parser either.
    if let Ok(again) = parse_datagram(&m.to_bytes(), &limits) {
        sip_message(&again);
    }
}

fn sip_message(m: &Message) {
    let _ = m.check_headers();
    let _ = m.call_id();
    let _ = m.cseq();
    let _ = m.from_hdr();
    let _ = m.to_hdr();
    let _ = m.max_forwards();
    let _ = m.vias();
    let _ = m.top_via();
    let _ = m.contacts();
    let _ = m.contact_is_star();
    let _ = m.routes();
    let _ = m.record_routes();
    let _ = m.option_tags(&HeaderName::Supported);
    let _ = m.option_tags(&HeaderName::Require);
    if m.is_request() {
        if validate_request(m).is_ok() {
            let _ = Dialog::uas(m, "fuzz").ok();
            let r = response_for(m, 200, None);
            let _ = Dialog::uac(m, &r);
            let _ = r.to_bytes();
        }
    } else {
        let _ = validate_response(m);
    }
}

/// An SDP body, everything the offer/answer code asks of it, the SDES keys of its crypto
/// lines; and the SDP written back must parse again.
pub fn sdp(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(mut s) = Sdp::parse(&text) else {
        return;
    };
    let _ = s.session_direction();
    for i in 0..s.media.len() {
        let _ = s.direction(i);
        let _ = s.media_connection(i);
        let _ = s.rtp_endpoint(i);
        let _ = s.rtcp_endpoint(i);
        let m = &s.media[i];
        let _ = m.rtpmaps();
        for pt in 0..=127u8 {
            let _ = m.codec(pt);
            let _ = m.fmtp(pt);
        }
        let _ = m.ptime();
        let _ = m.direction_attr();
        let _ = m.rtcp_mux();
        let _ = m.rtcp();
        let _ = m.is_rtp();
        let _ = m.is_disabled();
        for c in m.crypto() {
            if let Ok(k) = SdesKey::from_crypto(&c) {
                let _ = k.to_engine();
                let _ = k.to_attribute().to_string();
            }
        }
    }
    let written = s.to_string();
    if let Err(e) = Sdp::parse(&written) {
        panic!("written SDP does not parse again: {e}\n{written}");
    }
    // What an offer does to it before writing it out.
    let addr: IpAddr = [203, 0, 113, 5].into();
    s.set_session_connection(addr);
    s.bump_origin_version();
    for m in &mut s.media {
        m.set_port(30000);
        m.set_connection(addr);
        m.set_rtcp(Some((30001, addr)));
        m.set_rtcp_mux(true);
    }
    let written = s.to_string();
    if let Err(e) = Sdp::parse(&written) {
        panic!("rewritten SDP does not parse again: {e}\n{written}");
    }
}

/// An ng message: a UDP datagram (`<cookie> <bencode or JSON>`) and a TCP stream of them,
/// decoded and mapped to a request; decoded bencode must encode back to the same value.
pub fn ng(data: &[u8]) {
    // TCP: messages back to back.
    let mut rest = data;
    while let Framed::Message { body, used, .. } = next_message(rest) {
        let _ = Request::parse(&body);
        rest = &rest[used..];
    }
    // UDP: the cookie up to the first space, then one dictionary.
    let body = match data.iter().position(|&b| b == b' ') {
        Some(space) => &data[space + 1..],
        None => data,
    };
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let body = &body[start..];
    let value = if body.first() == Some(&b'{') {
        Value::from_json(body).ok()
    } else {
        Value::decode(body).ok()
    };
    let Some(value) = value else { return };
    let bytes = value.to_bytes();
    match Value::decode(&bytes) {
        Ok(again) => assert_eq!(again, value, "bencode does not encode back to itself"),
        Err(e) => panic!("encoded bencode does not decode: {e}"),
    }
    let _ = value.as_text();
    let _ = value.get_str("command");
    let _ = Request::parse(&value);
}

/// RTP and RTCP on a relay socket: the classification, the views and their fields, the RTCP
/// report parser and the fraction-lost reader.
pub fn rtp(data: &[u8]) {
    use sluice_relay::rtp::{
        RtcpPacket, RtpPacket, classify, classify_relay, is_rtcp, rtcp_fraction_lost,
    };
    let _ = classify(data);
    let _ = classify_relay(data);
    let _ = is_rtcp(data);
    let _ = rtcp_fraction_lost(data, None);
    let _ = rtcp_fraction_lost(data, Some(0x1234_5678));
    if let Some(r) = sluice_relay::rtcp_report::parse(data) {
        let _ = format!("{r:?}");
    }
    if let Ok(p) = RtpPacket::new_checked(data) {
        let _ = (
            p.version(),
            p.padding(),
            p.extension(),
            p.csrc_count(),
            p.marker(),
        );
        let _ = (p.payload_type(), p.sequence(), p.timestamp(), p.ssrc());
        let _ = (p.header_len(), p.padding_len(), p.payload().len());
        let mut owned = RtpPacket::new_checked(data.to_vec()).expect("checked once already");
        owned.set_marker(true);
        owned.set_payload_type(8);
        owned.set_sequence(1);
        owned.set_timestamp(2);
        owned.set_ssrc(3);
    }
    // Compound RTCP: walk it packet by packet as the views allow.
    let mut at = 0;
    while at < data.len() {
        let Ok(p) = RtcpPacket::new_checked(&data[at..]) else {
            break;
        };
        let _ = (p.version(), p.padding(), p.count(), p.packet_type());
        let _ = (p.length_words(), p.sender_ssrc());
        let n = p.packet_len();
        if n == 0 {
            break;
        }
        at += n;
    }
}

/// SRTP and SRTCP unprotect. Random bytes never authenticate, so the input is a script of
/// packets: each either goes raw to `unprotect` (the checks before authentication: lengths,
/// replay, indexes) or is first protected by the sending side and then optionally damaged
/// (the decrypting paths, ROC and replay state). The first byte picks the profile.
///
/// Script: `profile` then records `op len bytes[len]`. `op` bit 0: RTCP; bit 1: protect
/// first; bit 2: flip a bit of the protected packet (at the record's first byte).
pub fn srtp(data: &[u8]) {
    let Some((&profile, mut script)) = data.split_first() else {
        return;
    };
    let profile = SrtpProfile::ALL[usize::from(profile) % SrtpProfile::ALL.len()];
    let master: Vec<u8> = (0..profile.master_len() as u8).collect();
    let config = SrtpConfig::default().with_max_streams(4);
    let mut tx = SrtpContext::new(profile, &master, config).expect("key of its length");
    let mut rx = SrtpContext::new(profile, &master, config).expect("key of its length");
    while let [op, len, rest @ ..] = script {
        let len = usize::from(*len).min(rest.len());
        let (packet, next) = rest.split_at(len);
        script = next;
        let rtcp = op & 1 != 0;
        let mut buf = packet.to_vec();
        buf.resize(len + MAX_RTP_OVERHEAD.max(MAX_RTCP_OVERHEAD), 0);
        let mut n = len;
        if op & 2 != 0 {
            let sealed = if rtcp {
                tx.protect_rtcp(&mut buf, len)
            } else {
                tx.protect_rtp(&mut buf, len)
            };
            match sealed {
                Ok(m) => n = m,
                Err(_) => continue,
            }
            if op & 4 != 0 && n > 0 {
                let at = usize::from(packet.first().copied().unwrap_or(0)) % n;
                buf[at] ^= 1 << (op >> 5);
            }
        }
        let opened = if rtcp {
            rx.unprotect_rtcp(&mut buf, n)
        } else {
            rx.unprotect_rtp(&mut buf, n)
        };
        if let Ok(m) = opened {
            assert!(m <= n, "unprotect grew the packet: {m} > {n}");
            if op & 6 == 2 {
                assert_eq!(
                    &buf[..m],
                    packet,
                    "protect then unprotect changed the packet"
                );
            }
        }
    }
    let _ = rx.counters();
    let _ = rx.handover();
}

/// A frame as AF_XDP hands it to a worker: Ethernet, IPv4/IPv6, UDP.
pub fn frame(data: &[u8]) {
    let _ = sluice_relay::worker::fuzzing::frame(data);
}

/// The TOML configuration file of `sluice run`, resolved as the daemon resolves it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<FileConfig>(text) else {
        return;
    };
    if let Ok(c) = Config::resolve(file, Overrides::default()) {
        let _ = c.worker_config();
        let _ = c.media_ip(false);
        let _ = c.media_ip(true);
    }
}

/// A gRPC request as the control service receives it: protobuf bytes of an offer or answer
/// (the first byte picks which), mapped to session options as the service maps them.
pub fn grpc(data: &[u8]) {
    use prost::Message as _;
    use sluice_control::grpc::leg_options;
    use sluice_control::proto;
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let options = match which % 4 {
        0 => proto::OfferRequest::decode(bytes).map(|r| r.options),
        1 => proto::AnswerRequest::decode(bytes).map(|r| r.options),
        2 => proto::LegOptions::decode(bytes).map(Some),
        _ => {
            let _ = proto::DeleteRequest::decode(bytes);
            let _ = proto::QueryRequest::decode(bytes);
            let _ = proto::ListRequest::decode(bytes);
            let _ = proto::HangupSipCallRequest::decode(bytes);
            let _ = proto::SetMaxSessionsRequest::decode(bytes);
            return;
        }
    };
    if let Ok(options) = options {
        let _ = leg_options(options);
    }
}
