//! Dialogs (RFC 3261 section 12): the state two user agents share between an INVITE's 2xx
//! and the BYE, and the requests sent inside one.

use crate::{HeaderError, HeaderName, Message, Method, NameAddr, Uri, Via};

/// What identifies a dialog at this end (RFC 3261 section 12).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// The local and remote URIs (From/To without tags).
    pub local: NameAddr,
    pub remote: NameAddr,
    /// The CSeq number of the last request sent in the dialog.
    pub local_seq: u32,
    /// The CSeq number of the last request received, once one was.
    pub remote_seq: Option<u32>,
    /// Where requests in the dialog go (the peer's Contact), before the route set applies.
    pub remote_target: Uri,
    /// Record-Route of the dialog-creating exchange, in the order requests visit it.
    pub route_set: Vec<NameAddr>,
    pub secure: bool,
}

/// Why an in-dialog request is refused (RFC 3261 section 12.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDialogError {
    /// CSeq lower than the last one received: 500.
    CSeqOutOfOrder,
}

fn without_tag(mut a: NameAddr) -> NameAddr {
    a.params.remove("tag");
    a
}

fn contact_uri(m: &Message) -> Result<Uri, HeaderError> {
    m.contacts()?
        .into_iter()
        .next()
        .map(|c| c.uri)
        .ok_or(HeaderError::new("Contact", "missing"))
}

impl Dialog {
    /// The UAS side of a dialog created by `req` answered with a response carrying
    /// `local_tag` (RFC 3261 section 12.1.1).
    pub fn uas(req: &Message, local_tag: &str) -> Result<Self, HeaderError> {
        let from = req.from_hdr()?;
        let remote_tag = from.tag().unwrap_or_default().to_owned();
        let cseq = req.cseq()?;
        Ok(Self {
            call_id: req.call_id()?.to_owned(),
            local_tag: local_tag.to_owned(),
            remote_tag,
            local: without_tag(req.to_hdr()?),
            remote: without_tag(from),
            local_seq: 0,
            remote_seq: Some(cseq.seq),
            // RFC 3261 12.1.1: the remote target is the Contact of the request.
            remote_target: contact_uri(req)?,
            // RFC 3261 12.1.1: the route set is the request's Record-Route, in order.
            route_set: req.record_routes()?,
            secure: req.request_uri().is_some_and(Uri::is_sips),
        })
    }

    /// The UAC side of a dialog created by `req` and the response `resp` (a 2xx, or a 1xx
    /// with a To tag for an early dialog; RFC 3261 section 12.1.2).
    pub fn uac(req: &Message, resp: &Message) -> Result<Self, HeaderError> {
        let to = resp.to_hdr()?;
        let from = req.from_hdr()?;
        let mut route_set = resp.record_routes()?;
        // RFC 3261 12.1.2: the route set is the response's Record-Route in reverse order.
        route_set.reverse();
        Ok(Self {
            call_id: req.call_id()?.to_owned(),
            local_tag: from.tag().unwrap_or_default().to_owned(),
            remote_tag: to.tag().unwrap_or_default().to_owned(),
            local: without_tag(from),
            remote: without_tag(to),
            local_seq: req.cseq()?.seq,
            remote_seq: None,
            remote_target: contact_uri(resp)?,
            route_set,
            secure: req.request_uri().is_some_and(Uri::is_sips),
        })
    }

    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone(),
        }
    }

    /// A new request in the dialog (RFC 3261 section 12.2.1.1), with `via` on top, the
    /// next CSeq, Max-Forwards 70 and `contact` when given. ACK and CANCEL take their CSeq
    /// number from the request they answer: use [`Dialog::ack`] for the ACK of a 2xx.
    pub fn request(&mut self, method: Method, via: &Via, contact: Option<&NameAddr>) -> Message {
        self.local_seq = self.local_seq.wrapping_add(1).max(1);
        let seq = self.local_seq;
        self.build(method, seq, via, contact)
    }

    /// The ACK of a 2xx to the INVITE whose CSeq number was `invite_seq` (RFC 3261
    /// section 13.2.2.4: same CSeq number, method ACK, a new branch).
    pub fn ack(&self, invite_seq: u32, via: &Via) -> Message {
        self.build(Method::Ack, invite_seq, via, None)
    }

    fn build(&self, method: Method, seq: u32, via: &Via, contact: Option<&NameAddr>) -> Message {
        // RFC 3261 12.2.1.1: with a loose-routing first hop the Request-URI is the remote
        // target and the route set goes in Route; with a strict router the first route
        // becomes the Request-URI and the remote target the last Route.
        let strict = self
            .route_set
            .first()
            .is_some_and(|r| !r.uri.params.has("lr"));
        let (uri, routes): (Uri, Vec<String>) = if strict {
            let mut routes: Vec<String> = self.route_set[1..]
                .iter()
                .map(ToString::to_string)
                .collect();
            routes.push(format!("<{}>", self.remote_target));
            let mut first = self.route_set[0].uri.clone();
            first.headers = None;
            (first, routes)
        } else {
            (
                self.remote_target.clone(),
                self.route_set.iter().map(ToString::to_string).collect(),
            )
        };
        let mut m = Message::request(method.clone(), uri);
        m.push(HeaderName::Via, via.to_string());
        m.push(HeaderName::MaxForwards, "70");
        let mut from = self.local.clone();
        from.params.set("tag", Some(&self.local_tag));
        m.push(HeaderName::From, from.to_string());
        let mut to = self.remote.clone();
        if !self.remote_tag.is_empty() {
            to.params.set("tag", Some(&self.remote_tag));
        }
        m.push(HeaderName::To, to.to_string());
        m.push(HeaderName::CallId, self.call_id.clone());
        m.push(HeaderName::CSeq, format!("{seq} {method}"));
        for r in routes {
            m.push(HeaderName::Route, r);
        }
        if let Some(c) = contact {
            m.push(HeaderName::Contact, c.to_string());
        }
        m
    }

    /// A request received in the dialog (RFC 3261 section 12.2.2): checks the CSeq order
    /// and applies a target refresh (re-INVITE, UPDATE) from its Contact.
    pub fn on_request(&mut self, req: &Message) -> Result<(), InDialogError> {
        let Ok(cseq) = req.cseq() else {
            return Ok(());
        };
        // ACK and CANCEL carry the number of the request they belong to.
        if !matches!(cseq.method, Method::Ack | Method::Cancel) {
            if let Some(last) = self.remote_seq
                && cseq.seq <= last
            {
                // RFC 3261 12.2.2: lower CSeq than the last one MUST get a 500. An equal one
                // is a retransmission the transaction layer absorbs before it gets here.
                return Err(InDialogError::CSeqOutOfOrder);
            }
            self.remote_seq = Some(cseq.seq);
        }
        if matches!(cseq.method, Method::Invite | Method::Update)
            && let Ok(Some(c)) = req.contacts().map(|c| c.into_iter().next())
        {
            self.remote_target = c.uri;
        }
        Ok(())
    }

    /// A 2xx to a target-refresh request this end sent updates the remote target
    /// (RFC 3261 section 12.2.1.2).
    pub fn on_refresh_response(&mut self, resp: &Message) {
        if resp.code().is_some_and(|c| (200..300).contains(&c))
            && let Ok(Some(c)) = resp.contacts().map(|c| c.into_iter().next())
        {
            self.remote_target = c.uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Host, Limits, parse_datagram};

    fn msg(s: &str) -> Message {
        parse_datagram(s.replace('\n', "\r\n").as_bytes(), &Limits::default()).unwrap()
    }

    const INVITE: &str = "INVITE sip:bob@b.example SIP/2.0
Via: SIP/2.0/UDP a.example;branch=z9hG4bK1
Max-Forwards: 70
From: Alice <sip:alice@a.example>;tag=at
To: <sip:bob@b.example>
Call-ID: c1
CSeq: 10 INVITE
Contact: <sip:alice@192.0.2.1:5070>
Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>

";

    const OK: &str = "SIP/2.0 200 OK
Via: SIP/2.0/UDP a.example;branch=z9hG4bK1
From: Alice <sip:alice@a.example>;tag=at
To: <sip:bob@b.example>;tag=bt
Call-ID: c1
CSeq: 10 INVITE
Contact: <sip:bob@192.0.2.2>
Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>

";

    fn via() -> Via {
        Via::new("UDP", Host::Name("me.example".into()), None, "z9hG4bKx")
    }

    #[test]
    fn uac_dialog_reverses_record_route_and_routes_a_bye_rfc3261_12_1_2() {
        let mut d = Dialog::uac(&msg(INVITE), &msg(OK)).unwrap();
        assert_eq!(d.remote_tag, "bt");
        assert_eq!(d.local_tag, "at");
        let bye = d.request(Method::Bye, &via(), None);
        assert_eq!(bye.request_uri().unwrap().to_string(), "sip:bob@192.0.2.2");
        let routes: Vec<_> = bye.header_lines(&HeaderName::Route).collect();
        assert_eq!(routes, ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]);
        assert_eq!(bye.cseq().unwrap().seq, 11);
        assert_eq!(bye.to_hdr().unwrap().tag(), Some("bt"));
        assert_eq!(bye.from_hdr().unwrap().tag(), Some("at"));
        let ack = d.ack(10, &via());
        assert_eq!(ack.cseq().unwrap().seq, 10);
        assert_eq!(ack.cseq().unwrap().method, Method::Ack);
    }

    #[test]
    fn uas_dialog_keeps_record_route_order_and_refuses_old_cseq_rfc3261_12_2_2() {
        let inv = msg(INVITE);
        let mut d = Dialog::uas(&inv, "bt").unwrap();
        assert_eq!(d.remote_target.to_string(), "sip:alice@192.0.2.1:5070");
        assert_eq!(d.route_set[0].uri.to_string(), "sip:p1.example;lr");
        let mut bye = d.request(Method::Bye, &via(), None);
        assert_eq!(bye.cseq().unwrap().seq, 1);
        assert_eq!(bye.to_hdr().unwrap().tag(), Some("at"));
        // A re-INVITE from the peer with a new Contact refreshes the target.
        bye = msg(&INVITE
            .replace("CSeq: 10", "CSeq: 11")
            .replace("192.0.2.1:5070", "192.0.2.9"));
        d.on_request(&bye).unwrap();
        assert_eq!(d.remote_target.to_string(), "sip:alice@192.0.2.9");
        let old = msg(&INVITE
            .replace("CSeq: 10 INVITE", "CSeq: 9 BYE")
            .replace("INVITE sip", "BYE sip"));
        assert_eq!(d.on_request(&old), Err(InDialogError::CSeqOutOfOrder));
    }

    #[test]
    fn strict_router_first_hop_becomes_the_request_uri_rfc3261_12_2_1_1() {
        let ok = OK.replace(
            "<sip:p1.example;lr>, <sip:p2.example;lr>",
            "<sip:p1.example>, <sip:p2.example>",
        );
        let mut d = Dialog::uac(&msg(INVITE), &msg(&ok)).unwrap();
        let bye = d.request(Method::Bye, &via(), None);
        assert_eq!(bye.request_uri().unwrap().to_string(), "sip:p2.example");
        let routes: Vec<_> = bye.header_lines(&HeaderName::Route).collect();
        assert_eq!(routes, ["<sip:p1.example>", "<sip:bob@192.0.2.2>"]);
    }
}
