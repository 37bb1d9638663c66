//! Call setup: from A's INVITE to the answer or the failure. The INVITE to B, B's
//! provisionals and 2xx (early media, forks, late offers), the ACK on each leg, the 2xx
//! retransmitted to A until its ACK (RFC 3261 13.3.1.4) and CANCEL (RFC 3261 9).

use std::cmp::Reverse;
use std::time::Instant;

use sluice_sip::{Dialog, HeaderName, Host, Message, Method, Peer, TxId, Uri};

use super::call::{Call, CallState, Leg, Unacked};
use super::headers::{cancel_for, copy_session_timer, reason_of, sdp_body};
use super::session_timer::{self, SessionTimer};
use super::{ALLOW, B2bua, Role, SUPPORTED, TimerKind};
use crate::session::{EventKind, SessionError};

impl B2bua {
    pub(super) fn new_call(&mut self, tx: TxId, msg: Message, from: Peer, now: Instant) {
        if msg.max_forwards().ok().flatten() == Some(0) {
            // RFC 3261 16.3 step 2 (as a B2BUA forwards the call on): 483.
            return self.refuse(tx, &msg, 483, "Too Many Hops", None, now);
        }
        if let Some(max) = self.cfg.max_calls
            && self.calls.len() >= max
        {
            return self.refuse(
                tx,
                &msg,
                503,
                "Service Unavailable",
                Some("call limit reached"),
                now,
            );
        }
        let required: Vec<String> = msg
            .option_tags(&HeaderName::Require)
            .into_iter()
            .filter(|t| !SUPPORTED.contains(t))
            .map(str::to_owned)
            .collect();
        if !required.is_empty() {
            // RFC 3261 8.2.2.3: 420 listing the extensions sluice does not support.
            self.counters.rejected += 1;
            let mut r = self.reply(&msg, 420, None);
            r.push(HeaderName::Unsupported, required.join(", "));
            let _ = self.layer.respond(tx, r, now);
            return;
        }
        if let Err(e) = session_timer::check_request(&msg) {
            // RFC 4028 section 8.1: 422 with the Min-SE sluice accepts.
            self.counters.rejected += 1;
            let mut r = self.reply(&msg, 422, None);
            r.push(HeaderName::MinSe, e.min_se.to_string());
            let _ = self.layer.respond(tx, r, now);
            return;
        }
        let sdp = match sdp_body(&msg) {
            Ok(s) => s,
            Err(()) => {
                // RFC 3261 21.4.13: 415 with Accept naming what sluice reads.
                self.counters.rejected += 1;
                let mut r = self.reply(&msg, 415, None);
                r.push(HeaderName::Accept, "application/sdp");
                let _ = self.layer.respond(tx, r, now);
                return;
            }
        };
        let (Ok(a_from), Ok(a_to), Ok(a_call_id)) = (msg.from_hdr(), msg.to_hdr(), msg.call_id())
        else {
            return self.refuse(tx, &msg, 400, "Bad Request", None, now);
        };
        let a_call_id = a_call_id.to_owned();
        let a_remote_tag = a_from.tag().unwrap_or_default().to_owned();
        let id = self.next_call;
        self.next_call += 1;
        let media_id = format!("sip-{id}-{}", self.token());
        let body_for_b = match &sdp {
            Some(offer) => {
                match self.media.offer(
                    &media_id,
                    Leg::A.media_tag(),
                    offer,
                    super::offer_opts(self.cfg.media, from, self.cfg.routes[0]),
                ) {
                    Ok(out) => Some(crate::sdp::origin_from_connection(out)),
                    Err(e) => {
                        let code = e.sip_status();
                        let reason = if code == 488 {
                            "Not Acceptable Here"
                        } else {
                            sluice_sip::default_reason(code)
                        };
                        tracing::info!(call = id, error = %e, code, "INVITE refused by the media layer");
                        return self.refuse(tx, &msg, code, reason, Some(&e.to_string()), now);
                    }
                }
            }
            None => None,
        };
        // Leg B: new Call-ID, tags, Via, Contact; From/To keep their URIs.
        let b_call_id = self.token();
        let b_tag = self.token();
        let a_uri = msg
            .request_uri()
            .cloned()
            .unwrap_or_else(|| a_to.uri.clone());
        let mut ruri = Uri::sip(
            a_uri.user.as_deref(),
            Host::from(self.cfg.routes[0].addr.ip()),
            Some(self.cfg.routes[0].addr.port()),
        );
        if a_uri.user.is_none() {
            ruri.user = a_to.uri.user.clone();
        }
        let mut invite = Message::request(Method::Invite, ruri);
        let via = self.via(self.cfg.routes[0]);
        invite.push(HeaderName::Via, via.to_string());
        let mf = msg
            .max_forwards()
            .ok()
            .flatten()
            .unwrap_or(70)
            .saturating_sub(1);
        invite.push(HeaderName::MaxForwards, mf.to_string());
        let mut from_b = a_from.clone();
        from_b.params = Default::default();
        from_b.params.set("tag", Some(&b_tag));
        invite.push(HeaderName::From, from_b.to_string());
        let mut to_b = a_to.clone();
        to_b.params = Default::default();
        invite.push(HeaderName::To, to_b.to_string());
        invite.push(HeaderName::CallId, b_call_id.clone());
        invite.push(HeaderName::CSeq, "1 INVITE");
        invite.push(
            HeaderName::Contact,
            self.contact(self.cfg.routes[0]).to_string(),
        );
        invite.push(HeaderName::Allow, ALLOW);
        invite.push(HeaderName::UserAgent, self.cfg.product.clone());
        // Session timers pass end to end (session_timer.rs says why that is consistent).
        for h in &msg.headers {
            if matches!(h.name, HeaderName::SessionExpires | HeaderName::MinSe) {
                invite.headers.push(h.clone());
            }
        }
        // Extensions A takes pass to B as supported: timers (RFC 4028) and reliable
        // provisionals (RFC 3262), whose PRACKs are relayed like any early-dialog request.
        let a_tags: Vec<&str> = msg
            .option_tags(&HeaderName::Supported)
            .into_iter()
            .chain(msg.option_tags(&HeaderName::Require))
            .collect();
        let a_100rel = a_tags.contains(&"100rel");
        let passed: Vec<&str> = SUPPORTED
            .iter()
            .copied()
            .filter(|t| a_tags.contains(t))
            .collect();
        if !passed.is_empty() {
            invite.push(HeaderName::Supported, passed.join(", "));
        }
        if let Some(b) = body_for_b {
            invite.push(HeaderName::ContentType, "application/sdp");
            invite.body = b.into_bytes();
        }
        let b_peer = self.cfg.routes[0];
        let b_tx = self.layer.send_request(invite.clone(), b_peer, now);
        let a_tag = self.token();
        let call = Call {
            id,
            media_id,
            state: CallState::Calling,
            offerer: sdp.as_ref().map(|_| Leg::A),
            caller: a_from.uri.to_string(),
            callee: a_to.uri.to_string(),
            a_invite: msg,
            a_tx: tx,
            a_peer: from,
            a_call_id: a_call_id.clone(),
            a_remote_tag: a_remote_tag.clone(),
            a_tag,
            a_dialog: None,
            a_unacked: None,
            b_invite: invite,
            b_peer,
            b_tx,
            route_index: 0,
            b_call_id: b_call_id.clone(),
            b_dialog: None,
            b_answered_tag: None,
            a_100rel,
            b_provisional: false,
            b_final: false,
            cancel_pending: false,
            b_ack_pending: false,
            reinvite_pending: false,
            session_timer: None,
            started: now,
            rang: None,
            answered: None,
        };
        let media_id_of_call = call.media_id.clone();
        tracing::info!(call = id, caller = %call.caller, callee = %call.callee, "call started");
        self.media.announce(
            EventKind::SipCallStarted,
            &call.a_call_id,
            serde_json::json!({
                "call": id,
                "caller": call.caller,
                "callee": call.callee,
                "media_call_id": call.media_id,
            })
            .to_string(),
        );
        self.calls.insert(id, call);
        self.by_a.insert((a_call_id, a_remote_tag), id);
        self.by_b.insert(b_call_id, id);
        self.by_media.insert(media_id_of_call, id);
        self.roles.insert(tx, Role::AInvite(id));
        self.roles.insert(b_tx, Role::BInvite(id));
        self.counters.calls_started += 1;
    }

    pub(super) fn on_cancel(&mut self, tx: TxId, msg: Message, now: Instant) {
        let target = self.layer.find_invite_for_cancel(&msg);
        let call = target.and_then(|t| match self.roles.get(&t) {
            Some(Role::AInvite(id)) => Some(*id),
            _ => None,
        });
        let Some(id) = call else {
            // RFC 3261 9.2: no matching transaction -> 481.
            let r = self.reply(&msg, 481, None);
            let _ = self.layer.respond(tx, r, now);
            return;
        };
        let r = self.reply(&msg, 200, None);
        let _ = self.layer.respond(tx, r, now);
        // RFC 3261 9.2: a CANCEL of an INVITE already answered (or of a call already over)
        // gets its 200 and changes nothing.
        let state = self.calls.get(&id).map(|c| c.state);
        if matches!(state, Some(CallState::Calling | CallState::Early)) {
            // RFC 3261 9.2: the INVITE is answered 487.
            let a_tx = self.calls[&id].a_tx;
            let resp = self.reply_in_call(id, 487, None);
            let _ = self.layer.respond(a_tx, resp, now);
            self.cancel_b(id, now);
        }
    }

    /// Cancels the INVITE to B, now if B sent a provisional, else once it does (RFC 3261
    /// 9.1). The call ends when B's final answer comes (487, or a 2xx that is ACKed and
    /// BYEd) or timer B fires.
    pub(super) fn cancel_b(&mut self, id: u64, now: Instant) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.state = CallState::Cancelling;
        if !call.b_provisional {
            call.cancel_pending = true;
            return;
        }
        let cancel = cancel_for(&call.b_invite);
        let peer = call.b_peer;
        let t = self.layer.send_request(cancel, peer, now);
        self.roles.insert(t, Role::Own);
    }

    pub(super) fn on_ack(&mut self, msg: Message, now: Instant) {
        let Some((id, leg)) = self.find(&msg) else {
            return;
        };
        if leg != Leg::A {
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Ok(cseq) = msg.cseq() else { return };
        if cseq.seq != call.a_invite.cseq().map(|c| c.seq).unwrap_or(0) {
            // The ACK of a relayed re-INVITE's 2xx: sluice ACKed the other leg itself.
            return;
        }
        if call.a_unacked.take().is_none() {
            return;
        }
        if call.b_ack_pending {
            call.b_ack_pending = false;
            // Late offer: A's ACK carries the answer to B's offer.
            let answer = match sdp_body(&msg) {
                Ok(Some(s)) => s,
                _ => {
                    tracing::info!(
                        call = id,
                        "late-offer ACK without an SDP answer; ending the call"
                    );
                    self.bye(id, Leg::A, now);
                    self.bye(id, Leg::B, now);
                    self.end(id, "ACK without SDP answer", 488, now);
                    return;
                }
            };
            let opts = super::from_source(self.cfg.media, call.a_peer);
            let out = self.media.answer(
                &call.media_id,
                Leg::B.media_tag(),
                Leg::A.media_tag(),
                &answer,
                opts,
            );
            let via = self.via(self.leg_peer(id, Leg::B));
            let call = self.calls.get_mut(&id).expect("looked up above");
            let Some(d) = call.b_dialog.as_ref() else {
                return;
            };
            let mut ack = d.ack(1, &via);
            match out {
                Ok(sdp) => {
                    ack.push(HeaderName::ContentType, "application/sdp");
                    ack.body = crate::sdp::origin_from_connection(sdp).into_bytes();
                    let peer = call.b_peer;
                    self.layer.send_stateless(ack, peer);
                }
                Err(e) => {
                    tracing::info!(call = id, error = %e, "late-offer answer refused; ending the call");
                    let peer = call.b_peer;
                    self.layer.send_stateless(ack, peer);
                    self.bye(id, Leg::A, now);
                    self.bye(id, Leg::B, now);
                    self.end(id, "late-offer answer refused", e.sip_status(), now);
                }
            }
        }
    }

    pub(super) fn on_b_invite_response(&mut self, id: u64, msg: Message, code: u16, now: Instant) {
        if !self.calls.contains_key(&id) {
            // The call ended (A cancelled and B answered late, or timed out): a 2xx still
            // needs its ACK and a BYE.
            if (200..300).contains(&code) {
                self.ack_and_bye_stray(&msg, now);
            }
            return;
        }
        if code < 200 {
            return self.on_b_provisional(id, msg, code, now);
        }
        if code < 300 {
            return self.on_b_2xx(id, msg, now);
        }
        // 300-699: the transaction layer ACKed it (RFC 3261 17.1.1.3). A 5xx or 408 lets the
        // next route try; a 6xx ends the search (RFC 3261 16.7 step 5), a 4xx is the callee's
        // own answer.
        if (code == 408 || (500..600).contains(&code)) && self.try_next_route(id, now) {
            return;
        }
        let state = self.calls[&id].state;
        if state != CallState::Cancelling {
            // A 3xx would hand A the callee's Contacts (topology hiding): 480 instead.
            let (out_code, reason) = if code < 400 {
                (480, "Temporarily Unavailable".to_owned())
            } else {
                (code, reason_of(&msg))
            };
            let a_tx = self.calls[&id].a_tx;
            let mut r = self.reply_in_call(id, out_code, Some(&reason));
            for h in &msg.headers {
                if matches!(
                    h.name,
                    HeaderName::Warning | HeaderName::Reason | HeaderName::Unsupported
                ) || matches!(&h.name, HeaderName::Other(n) if n.eq_ignore_ascii_case("Retry-After"))
                {
                    r.headers.push(h.clone());
                }
            }
            let _ = self.layer.respond(a_tx, r, now);
        }
        self.end(id, "callee refused", code, now);
    }

    /// Sends the INVITE of call `id` to the next `--route`, if there is one and A has not
    /// cancelled: a new transaction with a new branch and Call-ID, the same SDP offer.
    pub(super) fn try_next_route(&mut self, id: u64, now: Instant) -> bool {
        let Some(call) = self.calls.get(&id) else {
            return false;
        };
        let next = call.route_index + 1;
        if next >= self.cfg.routes.len() || call.state == CallState::Cancelling {
            return false;
        }
        let route = self.cfg.routes[next];
        let via = self.via(route);
        let contact = self.contact(route);
        let b_call_id = self.token();
        let call = self.calls.get_mut(&id).expect("checked");
        let mut invite = call.b_invite.clone();
        if let sluice_sip::StartLine::Request { uri, .. } = &mut invite.start {
            uri.host = Host::from(route.addr.ip());
            uri.port = Some(route.addr.port());
        }
        invite.set(HeaderName::Via, via.to_string());
        invite.set(HeaderName::CallId, b_call_id.clone());
        invite.set(HeaderName::Contact, contact.to_string());
        tracing::info!(call = id, route = %route.addr, "trying the next route");
        self.by_b.remove(&call.b_call_id);
        self.by_b.insert(b_call_id.clone(), id);
        call.b_call_id = b_call_id;
        call.b_invite = invite.clone();
        call.b_peer = route;
        call.route_index = next;
        call.b_dialog = None;
        call.b_answered_tag = None;
        call.b_provisional = false;
        call.b_final = false;
        let t = self.layer.send_request(invite, route, now);
        self.roles.insert(t, Role::BInvite(id));
        self.calls.get_mut(&id).expect("checked").b_tx = t;
        true
    }

    pub(super) fn on_b_provisional(&mut self, id: u64, msg: Message, code: u16, now: Instant) {
        let call = self.calls.get_mut(&id).expect("checked");
        call.b_provisional = true;
        if call.cancel_pending {
            call.cancel_pending = false;
            let cancel = cancel_for(&call.b_invite);
            let peer = call.b_peer;
            let t = self.layer.send_request(cancel, peer, now);
            self.roles.insert(t, Role::Own);
            return;
        }
        // 100 Trying is hop by hop: it lets a CANCEL go, and goes no further.
        if call.state == CallState::Cancelling || code == 100 {
            return;
        }
        if call.state == CallState::Calling {
            call.state = CallState::Early;
        }
        if call.rang.is_none() {
            call.rang = Some(now);
            let a_call_id = call.a_call_id.clone();
            self.media.announce(
                EventKind::SipCallRinging,
                &a_call_id,
                serde_json::json!({ "call": id, "code": code }).to_string(),
            );
        }
        let call = self.calls.get_mut(&id).expect("checked");
        let mut body = None;
        if call.offerer == Some(Leg::A)
            && let Ok(Some(sdp)) = sdp_body(&msg)
        {
            let media_id = call.media_id.clone();
            match self.media.answer(
                &media_id,
                Leg::A.media_tag(),
                Leg::B.media_tag(),
                &sdp,
                super::from_source(self.cfg.media, call.b_peer),
            ) {
                Ok(out) => body = Some(crate::sdp::origin_from_connection(out)),
                Err(e) => {
                    tracing::info!(call = id, error = %e, "early media answer refused; relaying the provisional without SDP")
                }
            }
        }
        let reliable = msg.option_tags(&HeaderName::Require).contains(&"100rel");
        let rseq = msg.header(&HeaderName::RSeq).map(str::to_owned);
        let call = self.calls.get_mut(&id).expect("checked");
        if reliable && let Some(rseq) = &rseq {
            // RFC 3262: the provisional makes an early dialog on each leg; the PRACK runs in
            // them. A new To tag (another fork) replaces B's early dialog.
            if call.b_dialog.as_ref().map(|d| d.remote_tag.as_str())
                != msg
                    .to_hdr()
                    .ok()
                    .and_then(|t| t.tag().map(str::to_owned))
                    .as_deref()
            {
                call.b_dialog = Dialog::uac(&call.b_invite, &msg).ok();
            }
            if call.a_100rel {
                if call.a_dialog.is_none() {
                    let early_remote_seq = call.a_dialog.as_ref().and_then(|d| d.remote_seq);
                    call.a_dialog = Dialog::uas(&call.a_invite, &call.a_tag).ok().map(|mut d| {
                        // PRACKs in the early dialog moved A's CSeq on.
                        d.remote_seq = d.remote_seq.max(early_remote_seq);
                        d
                    });
                }
            } else {
                // A does not do 100rel (so B should not have sent this): sluice PRACKs B
                // itself (RFC 3262 section 4) and A gets an ordinary provisional.
                let b_peer = call.b_peer;
                let via = self.via(b_peer);
                let call = self.calls.get_mut(&id).expect("checked");
                if let Some(d) = call.b_dialog.as_mut() {
                    let mut prack = d.request(Method::Prack, &via, None);
                    prack.push(HeaderName::RAck, format!("{rseq} 1 INVITE"));
                    let t = self.layer.send_request(prack, b_peer, now);
                    self.roles.insert(t, Role::Own);
                }
            }
        }
        let a_100rel = self.calls[&id].a_100rel;
        let a_tx = self.calls[&id].a_tx;
        let reason = reason_of(&msg);
        let mut r = self.reply_in_call(id, code, Some(&reason));
        r.push(
            HeaderName::Contact,
            self.contact(self.leg_peer(id, Leg::A)).to_string(),
        );
        if reliable
            && a_100rel
            && let Some(rseq) = rseq
        {
            // Passed through: B's retransmissions of it (until the PRACK) reach A as
            // retransmissions too, and A's PRACK names B's RSeq.
            r.push(HeaderName::Require, "100rel");
            r.push(HeaderName::RSeq, rseq);
        }
        if let Some(b) = body {
            r.push(HeaderName::ContentType, "application/sdp");
            r.body = b.into_bytes();
        }
        let _ = self.layer.respond(a_tx, r, now);
    }

    pub(super) fn on_b_2xx(&mut self, id: u64, msg: Message, now: Instant) {
        let via = self.via(self.leg_peer(id, Leg::B));
        let call = self.calls.get_mut(&id).expect("checked");
        let to_tag = msg
            .to_hdr()
            .ok()
            .and_then(|t| t.tag().map(str::to_owned))
            .unwrap_or_default();
        if let Some(won) = &call.b_answered_tag {
            if *won == to_tag {
                let Some(d) = &call.b_dialog else { return };
                // A retransmitted 2xx: its ACK was lost (RFC 3261 13.2.2.4), unless the
                // late-offer ACK still waits for A.
                if !call.b_ack_pending {
                    let ack = d.ack(1, &via);
                    let peer = call.b_peer;
                    self.layer.send_stateless(ack, peer);
                }
            } else {
                // A second fork answered: ACK and BYE it; the first 2xx won.
                self.ack_and_bye_stray(&msg, now);
            }
            return;
        }
        let d = match Dialog::uac(&call.b_invite, &msg) {
            Ok(mut d) => {
                // An early dialog with this tag (reliable provisionals) sent PRACKs: its
                // CSeq goes on (RFC 3261 12.2.1.1).
                if let Some(early) = &call.b_dialog
                    && early.remote_tag == d.remote_tag
                {
                    d.local_seq = d.local_seq.max(early.local_seq);
                }
                call.b_answered_tag = Some(d.remote_tag.clone());
                d
            }
            Err(e) => {
                tracing::info!(call = id, error = %e, "2xx from B cannot make a dialog; ending the call");
                self.ack_and_bye_stray(&msg, now);
                return;
            }
        };
        if call.state == CallState::Cancelling {
            // A cancelled and already has its 487: this 2xx lost the race.
            call.b_dialog = Some(d);
            let ack = call.b_dialog.as_ref().expect("set").ack(1, &via);
            let peer = call.b_peer;
            self.layer.send_stateless(ack, peer);
            self.bye(id, Leg::B, now);
            self.end(id, "cancelled; callee answered too late", 487, now);
            return;
        }
        let media_id = call.media_id.clone();
        let sdp = sdp_body(&msg).ok().flatten();
        let late = call.offerer.is_none();
        let body = match (&sdp, late) {
            (Some(s), false) => self
                .media
                .answer(
                    &media_id,
                    Leg::A.media_tag(),
                    Leg::B.media_tag(),
                    s,
                    super::from_source(self.cfg.media, call.b_peer),
                )
                .map(Some),
            (Some(s), true) => self
                .media
                .offer(
                    &media_id,
                    Leg::B.media_tag(),
                    s,
                    super::offer_opts(self.cfg.media, call.b_peer, call.a_peer),
                )
                .map(Some),
            // No SDP in the 2xx: the answer came in a reliable provisional or is missing;
            // the session keeps what it has.
            (None, false) => Ok(None),
            (None, true) => Err(SessionError::BadRequest(
                "late offer: the 2xx carries no SDP offer".into(),
            )),
        };
        let call = self.calls.get_mut(&id).expect("checked");
        call.b_dialog = Some(d);
        let body = match body {
            Ok(b) => b.map(crate::sdp::origin_from_connection),
            Err(e) => {
                tracing::info!(call = id, error = %e, "callee's SDP refused; ending the call");
                let ack = call.b_dialog.as_ref().expect("set").ack(1, &via);
                let peer = call.b_peer;
                self.layer.send_stateless(ack, peer);
                self.bye(id, Leg::B, now);
                let a_tx = self.calls[&id].a_tx;
                let mut r = self.reply_in_call(id, e.sip_status(), None);
                r.push(
                    HeaderName::Warning,
                    format!("399 sluice \"{}\"", e.to_string().replace('"', "'")),
                );
                let _ = self.layer.respond(a_tx, r, now);
                self.end(id, "callee's SDP refused", e.sip_status(), now);
                return;
            }
        };
        if late {
            call.b_ack_pending = true;
        } else {
            let ack = call.b_dialog.as_ref().expect("set").ack(1, &via);
            let peer = call.b_peer;
            self.layer.send_stateless(ack, peer);
        }
        let a_tx = call.a_tx;
        let mut r = self.reply_in_call(id, 200, Some(&reason_of(&msg)));
        r.push(
            HeaderName::Contact,
            self.contact(self.leg_peer(id, Leg::A)).to_string(),
        );
        copy_session_timer(&msg, &mut r);
        if let Some(b) = body {
            r.push(HeaderName::ContentType, "application/sdp");
            r.body = b.into_bytes();
        }
        let call = self.calls.get_mut(&id).expect("checked");
        let early_remote_seq = call.a_dialog.as_ref().and_then(|d| d.remote_seq);
        call.a_dialog = Dialog::uas(&call.a_invite, &call.a_tag).ok().map(|mut d| {
            // PRACKs in the early dialog moved A's CSeq on.
            d.remote_seq = d.remote_seq.max(early_remote_seq);
            d
        });
        call.state = CallState::Confirmed;
        call.answered = Some(now);
        call.session_timer = SessionTimer::from_2xx(&msg, now);
        if let Some(t) = call.session_timer {
            self.timers
                .push(Reverse((t.deadline(), id, TimerKind::SessionExpiry)));
        }
        let t1 = self.cfg.timers.t1;
        call.a_unacked = Some(Unacked {
            response: r.clone(),
            interval: t1,
            next: now + t1,
            give_up: now + self.cfg.ack_wait(),
        });
        self.timers
            .push(Reverse((now + t1, id, TimerKind::Retransmit2xx)));
        self.counters.calls_answered += 1;
        let a_call_id = self.calls[&id].a_call_id.clone();
        self.media.announce(
            EventKind::SipCallAnswered,
            &a_call_id,
            serde_json::json!({ "call": id }).to_string(),
        );
        tracing::info!(call = id, "answered");
        let _ = self.layer.respond(a_tx, r, now);
    }

    /// RFC 3261 13.3.1.4: the 2xx is retransmitted at T1, doubling to T2, until the ACK
    /// comes; after 64*T1 without one the call is ended with BYE.
    pub(super) fn retransmit_2xx(&mut self, id: u64, at: Instant, now: Instant) {
        let t2 = self.cfg.timers.t2;
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let Some(u) = call.a_unacked.as_mut() else {
            return;
        };
        if u.next != at {
            return;
        }
        if now >= u.give_up {
            call.a_unacked = None;
            tracing::info!(call = id, "no ACK for the 2xx; ending the call");
            self.bye(id, Leg::A, now);
            self.bye(id, Leg::B, now);
            self.end(id, "caller never ACKed the 2xx", 408, now);
            return;
        }
        let resp = u.response.clone();
        u.interval = (u.interval * 2).min(t2);
        u.next = now + u.interval;
        let next = u.next;
        let peer = call.a_peer;
        self.layer.send_stateless(resp, peer);
        self.timers
            .push(Reverse((next, id, TimerKind::Retransmit2xx)));
    }

    pub(super) fn on_stray(&mut self, msg: Message, _from: Peer) {
        // A 2xx retransmitted after the INVITE transaction ended (timer M): ACK it again if
        // it belongs to a call sluice still has.
        let Ok(cseq) = msg.cseq() else { return };
        if cseq.method != Method::Invite || !msg.code().is_some_and(|c| (200..300).contains(&c)) {
            return;
        }
        let Some((id, Leg::B)) = self.find(&msg) else {
            return;
        };
        let via = self.via(self.leg_peer(id, Leg::B));
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if let Some(d) = &call.b_dialog
            && !call.b_ack_pending
        {
            let ack = d.ack(cseq.seq, &via);
            self.layer.send_stateless(ack, call.b_peer);
        }
    }

    /// A 2xx sluice does not want (a losing fork, or after a CANCEL): ACK, then BYE.
    pub(super) fn ack_and_bye_stray(&mut self, msg: &Message, now: Instant) {
        let id = self.find(msg).map(|(id, _)| id);
        let Some(invite) = id
            .and_then(|id| self.calls.get(&id))
            .map(|c| (c.b_invite.clone(), c.b_peer))
        else {
            return;
        };
        let Ok(mut d) = Dialog::uac(&invite.0, msg) else {
            return;
        };
        let via = self.via(invite.1);
        self.layer.send_stateless(d.ack(1, &via), invite.1);
        let via = self.via(invite.1);
        let bye = d.request(Method::Bye, &via, None);
        let t = self.layer.send_request(bye, invite.1, now);
        self.roles.insert(t, Role::ForkBye);
    }
}
