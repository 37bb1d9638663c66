//! Property tests: what sluice writes parses back to the same message, and no input bytes
//! make the parser panic.

use proptest::prelude::*;
use sluice_sip::{
    HeaderName, Host, Limits, Message, Method, Uri, Via, frame_stream, parse_datagram,
};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,15}"
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9]{0,8}){0,2}".prop_map(Host::Name),
        any::<[u8; 4]>().prop_map(|o| Host::V4(o.into())),
        any::<[u16; 8]>().prop_map(|s| Host::V6(std::net::Ipv6Addr::from(s).to_string())),
    ]
}

fn uri() -> impl Strategy<Value = Uri> {
    (
        proptest::option::of("[a-z0-9+._-]{1,12}"),
        host(),
        proptest::option::of(1u16..),
        proptest::collection::vec(("[a-z]{1,8}", proptest::option::of("[a-z0-9]{1,8}")), 0..3),
    )
        .prop_map(|(user, host, port, params)| {
            let mut u = Uri::sip(user.as_deref(), host, port);
            for (n, v) in params {
                u.params.set(&n, v.as_deref());
            }
            u
        })
}

fn message() -> impl Strategy<Value = Message> {
    let start = prop_oneof![
        (token(), uri()).prop_map(|(m, u)| Message::request(Method::from_token(&m), u)),
        (100u16..700, "[A-Za-z ]{0,20}").prop_map(|(c, r)| Message::response(c, r)),
    ];
    (
        start,
        host(),
        token(),
        1u32..(1 << 31),
        proptest::collection::vec(("X-[A-Za-z]{1,10}", "[ -~]{0,30}"), 0..5),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(mut m, via_host, branch, seq, extra, body)| {
            let method = m.method().cloned().unwrap_or(Method::Invite);
            m.push(
                HeaderName::Via,
                Via::new("UDP", via_host, Some(5060), &format!("z9hG4bK{branch}")).to_string(),
            );
            m.push(HeaderName::From, "<sip:a@example.com>;tag=1");
            m.push(HeaderName::To, "<sip:b@example.com>");
            m.push(HeaderName::CallId, format!("{branch}@x"));
            m.push(HeaderName::CSeq, format!("{seq} {method}"));
            for (n, v) in extra {
                m.push(HeaderName::from_wire(&n), v.trim().to_owned());
            }
            m.body = body;
            m
        })
}

proptest! {
    #[test]
    fn parse_of_write_is_the_message(m in message()) {
        let bytes = m.to_bytes();
        let back = parse_datagram(&bytes, &Limits::default()).expect("parses");
        prop_assert_eq!(&back, &m);
        back.check_headers().expect("known headers read");
        // The same bytes on a stream frame as exactly one message.
        match frame_stream(&bytes, &Limits::default()).expect("frames") {
            sluice_sip::Frame::Message(s, n) => {
                prop_assert_eq!(n, bytes.len());
                prop_assert_eq!(*s, m);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = parse_datagram(&b, &Limits::default()) {
            let _ = m.check_headers();
            let _ = sluice_sip::validate_request(&m);
            let _ = m.vias();
            let _ = m.contacts();
        }
        let _ = frame_stream(&b, &Limits::default());
    }

    #[test]
    fn sip_shaped_noise_never_panics(s in "(INVITE|SIP/2.0) [ -~]{0,40}\r\n([A-Za-z-]{1,12} ?: ?[ -~]{0,40}\r\n){0,8}\r\n[ -~]{0,20}") {
        if let Ok(m) = parse_datagram(s.as_bytes(), &Limits::default()) {
            let _ = m.check_headers();
            let _ = sluice_sip::validate_request(&m);
            let _ = sluice_sip::validate_response(&m);
        }
    }
}
