//! What the B2BUA reads from and writes into messages, apart from any call.

use std::net::SocketAddr;

use sluice_sip::{HeaderName, Host, Message, Method, NameAddr, Uri, Via};

/// The SDP body of a message: `Ok(None)` when it has no body, `Err` for a body sluice
/// cannot read (another Content-Type).
pub(super) fn sdp_body(m: &Message) -> Result<Option<String>, ()> {
    if m.body.is_empty() {
        return Ok(None);
    }
    let ct = m.header(&HeaderName::ContentType).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err(());
    }
    String::from_utf8(m.body.clone()).map(Some).map_err(|_| ())
}

pub(super) fn reason_of(m: &Message) -> String {
    match &m.start {
        sluice_sip::StartLine::Response { reason, code, .. } if reason.is_empty() => {
            sluice_sip::default_reason(*code).to_owned()
        }
        sluice_sip::StartLine::Response { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

/// The session timer of a 2xx, relayed: Session-Expires, and Require: timer with it.
pub(super) fn copy_session_timer(from: &Message, to: &mut Message) {
    if let Some(se) = from.header(&HeaderName::SessionExpires) {
        to.push(HeaderName::SessionExpires, se.to_owned());
        // RFC 4028 section 9: a 2xx with Session-Expires carries Require: timer.
        to.push(HeaderName::Require, "timer");
    }
}

pub(super) fn add_to_tag(r: &mut Message, tag: &str) {
    let Some(h) = r.headers.iter_mut().find(|h| h.name == HeaderName::To) else {
        return;
    };
    if let Ok(mut to) = NameAddr::parse("To", &h.value)
        && to.tag().is_none()
    {
        to.params.set("tag", Some(tag));
        h.value = to.to_string();
    }
}

/// RFC 3261 18.2.1: `received` when the source address differs from the Via host, and
/// RFC 3581 section 4: `rport` filled in when asked for.
pub(super) fn stamp_received(m: &mut Message, from: SocketAddr) {
    let Some(h) = m.headers.iter_mut().find(|h| h.name == HeaderName::Via) else {
        return;
    };
    let (first, rest) = sluice_sip::via::split_top(&h.value);
    let rest = rest.map(str::to_owned);
    let Ok(mut via) = Via::parse(first) else {
        return;
    };
    if via.host.ip() != Some(from.ip()) {
        via.params.set("received", Some(&from.ip().to_string()));
    }
    if via.rport().is_some() {
        via.params.set("rport", Some(&from.port().to_string()));
    }
    let top = via.to_string();
    h.value = match rest {
        Some(rest) => format!("{top}, {rest}"),
        None => top,
    };
}

/// RFC 3261 9.1: the CANCEL of an INVITE: same Request-URI, Call-ID, From, To, CSeq number
/// and top Via; method CANCEL.
pub(super) fn cancel_for(invite: &Message) -> Message {
    let uri = invite
        .request_uri()
        .cloned()
        .unwrap_or_else(|| Uri::sip(None, Host::None, None));
    let mut c = Message::request(Method::Cancel, uri);
    for h in &invite.headers {
        match h.name {
            HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::MaxForwards
            | HeaderName::Route => c.headers.push(h.clone()),
            HeaderName::CSeq => {
                let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
                c.push(HeaderName::CSeq, format!("{seq} CANCEL"));
            }
            _ => {}
        }
    }
    c
}
