//! Inside a dialog: BYE from either side ends the call, other requests (re-INVITE, UPDATE,
//! INFO, ...) are relayed to the other leg with their SDP through the media session, and the
//! session timer (RFC 4028) is restarted by each successful refresh.

use std::cmp::Reverse;
use std::time::Instant;

use sluice_sip::{HeaderName, Message, Method, TxId, response_for};

use super::call::Leg;
use super::headers::{copy_session_timer, reason_of, sdp_body};
use super::session_timer::SessionTimer;
use super::{B2bua, Role, SESSION_EXPIRED_REASON, TimerKind};

impl B2bua {
    pub(super) fn in_dialog(&mut self, tx: TxId, msg: Message, _to_tag: &str, now: Instant) {
        let Some((id, leg)) = self.find(&msg) else {
            // RFC 3261 12.2.2: 481 for a request in a dialog sluice does not know.
            self.counters.rejected += 1;
            let r = response_for(&msg, 481, None);
            let _ = self.layer.respond(tx, r, now);
            return;
        };
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let known = self
            .calls
            .get_mut(&id)
            .and_then(|c| c.dialog_mut(leg))
            .map(|d| d.on_request(&msg));
        match known {
            None => {
                // Early dialog (no 2xx yet) or a call already ending.
                let code = if method == Method::Bye && leg == Leg::B {
                    200
                } else {
                    481
                };
                let r = response_for(&msg, code, None);
                let _ = self.layer.respond(tx, r, now);
                if code == 200 {
                    // B hung up before its 2xx reached A: the call fails towards A.
                    let a_tx = self.calls[&id].a_tx;
                    let resp = self.reply_in_call(id, 487, None);
                    let _ = self.layer.respond(a_tx, resp, now);
                    self.end(id, "callee hung up before answering", 487, now);
                }
                return;
            }
            Some(Err(_)) => {
                let r = response_for(&msg, 500, Some("CSeq Out Of Order"));
                let _ = self.layer.respond(tx, r, now);
                return;
            }
            Some(Ok(())) => {}
        }
        if method == Method::Bye {
            let r = response_for(&msg, 200, None);
            let _ = self.layer.respond(tx, r, now);
            tracing::info!(call = id, from = ?leg, "BYE");
            self.bye(id, leg.other(), now);
            let reason = match leg {
                Leg::A => "caller hung up",
                Leg::B => "callee hung up",
            };
            self.end(id, reason, 200, now);
            return;
        }
        if method == Method::Invite {
            let call = self.calls.get_mut(&id).expect("found");
            if call.reinvite_pending {
                // RFC 3261 14.2: a re-INVITE while one is in progress gets 491.
                let r = response_for(&msg, 491, None);
                let _ = self.layer.respond(tx, r, now);
                return;
            }
            call.reinvite_pending = true;
        }
        self.relay(id, leg, tx, msg, now);
    }

    /// Sends an in-dialog request from `from` on to the other leg.
    pub(super) fn relay(&mut self, id: u64, from: Leg, tx: TxId, msg: Message, now: Instant) {
        let method = msg.method().cloned().unwrap_or(Method::Options);
        let to = from.other();
        let mut body = None;
        match sdp_body(&msg) {
            Ok(Some(sdp)) if matches!(method, Method::Invite | Method::Update) => {
                let media_id = self.calls[&id].media_id.clone();
                let opts = super::offer_opts(
                    self.cfg.media,
                    self.leg_peer(id, from),
                    self.leg_peer(id, from.other()),
                );
                match self.media.offer(&media_id, from.media_tag(), &sdp, opts) {
                    Ok(out) => {
                        body = Some((
                            "application/sdp".to_owned(),
                            crate::sdp::origin_from_connection(out).into_bytes(),
                        ))
                    }
                    Err(e) => {
                        if method == Method::Invite {
                            self.calls.get_mut(&id).expect("found").reinvite_pending = false;
                        }
                        let code = e.sip_status();
                        let mut r = response_for(&msg, code, None);
                        r.push(
                            HeaderName::Warning,
                            format!("399 sluice \"{}\"", e.to_string().replace('"', "'")),
                        );
                        let _ = self.layer.respond(tx, r, now);
                        return;
                    }
                }
            }
            Ok(Some(_)) if method == Method::Prack => {
                // An SDP answer in a PRACK (the offer was in a reliable provisional of a late
                // offer) is not carried through the media session yet: dropped, never passed
                // raw, since it holds the endpoint's addresses.
                tracing::info!(
                    call = id,
                    "SDP in a PRACK is not supported; sent on without it"
                );
            }
            _ if !msg.body.is_empty() => {
                let ct = msg
                    .header(&HeaderName::ContentType)
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                body = Some((ct, msg.body.clone()));
            }
            _ => {}
        }
        let via = self.via(self.leg_peer(id, to));
        let contact = self.contact(self.leg_peer(id, to));
        let call = self.calls.get_mut(&id).expect("found");
        let peer = call.peer(to);
        let Some(d) = call.dialog_mut(to) else { return };
        let with_contact = matches!(method, Method::Invite | Method::Update);
        let mut out = d.request(method.clone(), &via, with_contact.then_some(&contact));
        for h in &msg.headers {
            // Relay what the far end needs to act on the request; never Via, Route,
            // Contact or Record-Route (topology hiding).
            if matches!(
                h.name,
                HeaderName::Reason
                    | HeaderName::SessionExpires
                    | HeaderName::MinSe
                    | HeaderName::Supported
            ) || matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case("Info-Package") || n.eq_ignore_ascii_case("Content-Disposition"))
            {
                out.headers.push(h.clone());
            }
            if h.name == HeaderName::RAck {
                // RFC 3262 section 7.2: RSeq (passed through unchanged), then the CSeq of the
                // INVITE on this leg, which sluice sent as 1.
                let rseq = h.value.split_whitespace().next().unwrap_or("1");
                out.push(HeaderName::RAck, format!("{rseq} 1 INVITE"));
            }
        }
        if let Some((ct, b)) = body {
            out.push(HeaderName::ContentType, ct);
            out.body = b;
        }
        let t = self.layer.send_request(out, peer, now);
        self.roles.insert(
            t,
            Role::RelayOut {
                call: id,
                server: tx,
                to,
            },
        );
        self.roles.insert(tx, Role::RelayIn);
    }

    /// Sends a BYE on `leg` (no answer expected by anyone but the call's end).
    pub(super) fn bye(&mut self, id: u64, leg: Leg, now: Instant) {
        self.bye_with(id, leg, "SIP;cause=200;text=\"Call completed\"", now);
    }

    pub(super) fn bye_with(&mut self, id: u64, leg: Leg, reason: &str, now: Instant) {
        let via = self.via(self.leg_peer(id, leg));
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let peer = call.peer(leg);
        let Some(d) = call.dialog_mut(leg) else {
            return;
        };
        let mut bye = d.request(Method::Bye, &via, None);
        bye.push(HeaderName::Reason, reason);
        let t = self.layer.send_request(bye, peer, now);
        self.roles.insert(t, Role::ByeOut);
    }

    /// RFC 4028 section 10: no refresh before the deadline ends the session with BYE.
    pub(super) fn session_expiry(&mut self, id: u64, at: Instant, now: Instant) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        // Only the timer of the latest refresh counts; earlier heap entries are stale.
        if call.session_timer.map(|t| t.deadline()) != Some(at) {
            return;
        }
        tracing::info!(call = id, "session timer expired; ending the call");
        self.bye_with(id, Leg::A, SESSION_EXPIRED_REASON, now);
        self.bye_with(id, Leg::B, SESSION_EXPIRED_REASON, now);
        self.end(id, "session timer expired", 408, now);
    }

    pub(super) fn on_relayed_response(
        &mut self,
        id: u64,
        server: TxId,
        to: Leg,
        msg: Message,
        code: u16,
        now: Instant,
    ) {
        if code == 100 {
            return;
        }
        let Some(req) = self.layer.request(server).cloned() else {
            return;
        };
        let method = req.method().cloned().unwrap_or(Method::Options);
        let from = to.other();
        let mut r = response_for(&req, code, Some(&reason_of(&msg)));
        let mut ack_seq = None;
        if let Some(call) = self.calls.get_mut(&id) {
            if method == Method::Invite && code >= 200 {
                call.reinvite_pending = false;
            }
            if (200..300).contains(&code) {
                if let Some(d) = call.dialog_mut(to) {
                    d.on_refresh_response(&msg);
                }
                if matches!(method, Method::Invite | Method::Update) {
                    // A successful refresh restarts the session timer (RFC 4028 section 10),
                    // with the interval its 2xx names.
                    if let Some(t) = SessionTimer::from_2xx(&msg, now) {
                        call.session_timer = Some(t);
                        self.timers
                            .push(Reverse((t.deadline(), id, TimerKind::SessionExpiry)));
                    } else if let Some(t) = call.session_timer.as_mut() {
                        t.refreshed = now;
                        let at = t.deadline();
                        self.timers
                            .push(Reverse((at, id, TimerKind::SessionExpiry)));
                    }
                    copy_session_timer(&msg, &mut r);
                }
                if method == Method::Invite {
                    ack_seq = msg.cseq().ok().map(|c| c.seq);
                }
            }
            let media_id = call.media_id.clone();
            if (200..300).contains(&code) || (101..200).contains(&code) {
                if let Ok(Some(sdp)) = sdp_body(&msg)
                    && matches!(method, Method::Invite | Method::Update)
                {
                    match self.media.answer(
                        &media_id,
                        from.media_tag(),
                        to.media_tag(),
                        &sdp,
                        super::from_source(self.cfg.media, call.peer(from)),
                    ) {
                        Ok(out) => {
                            r.push(HeaderName::ContentType, "application/sdp");
                            r.body = crate::sdp::origin_from_connection(out).into_bytes();
                        }
                        Err(e) => {
                            tracing::info!(call = id, error = %e, "answer to a re-offer refused")
                        }
                    }
                } else if !msg.body.is_empty() {
                    let ct = msg
                        .header(&HeaderName::ContentType)
                        .unwrap_or("application/octet-stream")
                        .to_owned();
                    r.push(HeaderName::ContentType, ct);
                    r.body = msg.body.clone();
                }
            }
            if matches!(method, Method::Invite | Method::Update) && (200..300).contains(&code) {
                r.push(
                    HeaderName::Contact,
                    self.contact(self.leg_peer(id, from)).to_string(),
                );
            }
        }
        self.decorate(&mut r, code);
        let _ = self.layer.respond(server, r, now);
        if let Some(seq) = ack_seq {
            // sluice ACKs the 2xx of the re-INVITE it sent; the originator's ACK is absorbed.
            let via = self.via(self.leg_peer(id, to));
            if let Some(call) = self.calls.get_mut(&id)
                && let Some(d) = call.dialog_mut(to)
            {
                let ack = d.ack(seq, &via);
                let peer = call.peer(to);
                self.layer.send_stateless(ack, peer);
            }
        }
    }
}
