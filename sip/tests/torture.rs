//! The torture messages of RFC 4475 and RFC 5118, byte-exact from their Appendix A archives
//! (see `tests/corpus/SOURCE.md`), each classified by the RFC section that describes it and
//! checked against the layer that must object.

use sluice_sip::{Fault, Limits, Message, parse_datagram, validate_request, validate_response};

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Parses, every known header reads, validation passes, and written back it parses to
    /// the same message.
    Valid,
    /// The parser refuses it with this fault.
    Parse(Fault),
    /// Parses; reading one of these headers fails.
    Header(&'static [&'static str]),
    /// Parses and every header reads; validation answers this status code.
    Reject(u16),
}
use Expect::*;

const RFC4475: &[(&str, &str, Expect)] = &[
    // 3.1.1 Valid messages
    ("wsinv", "3.1.1.1", Valid),
    ("intmeth", "3.1.1.2", Valid),
    ("esc01", "3.1.1.3", Valid),
    ("escnull", "3.1.1.4", Valid),
    ("esc02", "3.1.1.5", Valid),
    ("lwsdisp", "3.1.1.6", Valid),
    ("longreq", "3.1.1.7", Valid),
    ("dblreq", "3.1.1.8", Valid),
    ("semiuri", "3.1.1.9", Valid),
    ("transports", "3.1.1.10", Valid),
    ("mpart01", "3.1.1.11", Valid),
    ("unreason", "3.1.1.12", Valid),
    ("noreason", "3.1.1.13", Valid),
    // 3.1.2 Invalid messages
    ("badinv01", "3.1.2.1", Header(&["Via"])),
    ("clerr", "3.1.2.2", Parse(Fault::Framing)),
    ("ncl", "3.1.2.3", Parse(Fault::Framing)),
    // Overlarge CSeq, Max-Forwards, Expires and Contact expires: whichever is read first.
    (
        "scalar02",
        "3.1.2.4",
        Header(&["CSeq", "Max-Forwards", "Expires", "Contact"]),
    ),
    (
        "scalarlg",
        "3.1.2.5",
        Header(&["CSeq", "Retry-After", "Warning"]),
    ),
    ("quotbal", "3.1.2.6", Header(&["To"])),
    ("ltgtruri", "3.1.2.7", Parse(Fault::StartLine)),
    ("lwsruri", "3.1.2.8", Parse(Fault::StartLine)),
    ("lwsstart", "3.1.2.9", Parse(Fault::StartLine)),
    ("trws", "3.1.2.10", Parse(Fault::StartLine)),
    ("escruri", "3.1.2.11", Reject(400)),
    ("baddate", "3.1.2.12", Header(&["Date"])),
    ("regbadct", "3.1.2.13", Header(&["Contact"])),
    ("badaspec", "3.1.2.14", Header(&["To"])),
    // The archive's baddn has no blank line ending its header section (the only one of the
    // fifty): on a datagram that is a truncated message. The display-name fault itself is
    // tested in name_addr.rs.
    ("baddn", "3.1.2.15", Parse(Fault::Framing)),
    ("badvers", "3.1.2.16", Reject(505)),
    ("mismatch01", "3.1.2.17", Reject(400)),
    ("mismatch02", "3.1.2.18", Reject(400)),
    ("bigcode", "3.1.2.19", Parse(Fault::StartLine)),
    // 3.2 Transaction layer: an RFC 2543 branch is matched the old way, not refused.
    ("badbranch", "3.2.1", Valid),
    // 3.3 Application layer: these parse; the UAS answers them (416, 420, 415, 483, ...).
    ("insuf", "3.3.1", Reject(400)),
    ("unkscm", "3.3.2", Reject(416)),
    ("novelsc", "3.3.3", Reject(416)),
    ("unksm2", "3.3.4", Valid),
    ("bext01", "3.3.5", Valid),
    ("invut", "3.3.6", Valid),
    ("regaut01", "3.3.7", Valid),
    ("multi01", "3.3.8", Reject(400)),
    // Two Content-Lengths leave the body's extent unknown: a framing fault, not a 400.
    ("mcl01", "3.3.9", Parse(Fault::Framing)),
    ("bcast", "3.3.10", Valid),
    ("zeromf", "3.3.11", Valid),
    ("cparam01", "3.3.12", Valid),
    ("cparam02", "3.3.13", Valid),
    ("regescrt", "3.3.14", Valid),
    ("sdp01", "3.3.15", Valid),
    // 3.4 Backward compatibility.
    ("inv2543", "3.4.1", Valid),
];

const RFC5118: &[(&str, &str, Expect)] = &[
    ("ipv6-good", "4.1", Valid),
    ("ipv6-bad", "4.2", Parse(Fault::StartLine)),
    ("port-ambiguous", "4.3", Valid),
    ("port-unambiguous", "4.4", Valid),
    ("via-received-param-with-delim", "4.5", Valid),
    ("via-received-param-no-delim", "4.5", Valid),
    ("ipv6-in-sdp", "4.6", Valid),
    ("mult-ip-in-header", "4.7", Valid),
    ("mult-ip-in-sdp", "4.8", Valid),
    ("ipv4-mapped-ipv6", "4.9", Valid),
    ("ipv6-bug-abnf-3-colons", "4.10", Valid),
    ("ipv6-correct-abnf-2-colons", "4.10", Valid),
];

fn corpus(path: &str) -> Vec<u8> {
    let p = format!("{}/tests/corpus/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// RFC 5118's archived files end lines with a bare LF and two lack the blank line that ends
/// the header section; on the wire that is CRLF and a blank line. Three of them (sections
/// 4.6, 4.8, 4.9) declare a Content-Length that matches their body in neither line-ending
/// form, so it is set to the body's length; `rfc5118_content_lengths_as_published` pins
/// what the RFC says. Nothing else changes.
fn rfc5118_wire(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).expect("RFC 5118 files are ASCII");
    let mut out = text.replace("\r\n", "\n").replace('\n', "\r\n");
    if !out.contains("\r\n\r\n") {
        out.push_str("\r\n");
    }
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| match l.strip_prefix("Content-Length:") {
            Some(_) => format!("Content-Length: {}", body.len()),
            None => l.to_owned(),
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n")).into_bytes()
}

#[test]
fn rfc5118_content_lengths_as_published() {
    for (name, declared, body_crlf) in [
        ("ipv6-in-sdp", 268, 251),
        ("mult-ip-in-sdp", 181, 189),
        ("ipv4-mapped-ipv6", 236, 245),
    ] {
        let raw = String::from_utf8(corpus(&format!("rfc5118/{name}"))).unwrap();
        assert!(
            raw.contains(&format!("Content-Length: {declared}\n")),
            "{name}"
        );
        let wire = rfc5118_wire(raw.as_bytes());
        let at = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        assert_eq!(wire.len() - at - 4, body_crlf, "{name}");
    }
}

fn validate(m: &Message) -> Result<(), sluice_sip::Rejection> {
    if m.is_request() {
        validate_request(m)
    } else {
        validate_response(m)
    }
}

fn check(name: &str, section: &str, bytes: &[u8], expect: Expect) {
    let what = format!("{name} (section {section})");
    let parsed = parse_datagram(bytes, &Limits::default());
    match expect {
        Parse(fault) => {
            let e = parsed.expect_err(&format!("{what}: parsed but must not"));
            assert_eq!(e.fault(), fault, "{what}: {e}");
        }
        Valid => {
            let m = parsed.unwrap_or_else(|e| panic!("{what}: {e}"));
            m.check_headers().unwrap_or_else(|e| panic!("{what}: {e}"));
            validate(&m).unwrap_or_else(|r| panic!("{what}: {} {}", r.code, r.reason));
            let again = parse_datagram(&m.to_bytes(), &Limits::default())
                .unwrap_or_else(|e| panic!("{what} written back: {e}"));
            assert_eq!(again, m, "{what}: parse(write(m)) != m");
        }
        Header(names) => {
            let m = parsed.unwrap_or_else(|e| panic!("{what}: {e}"));
            let e = m
                .check_headers()
                .expect_err(&format!("{what}: every header read"));
            assert!(names.contains(&e.header), "{what}: {e}");
            let r = validate(&m).expect_err(&format!("{what}: validated"));
            assert_eq!(r.code, 400, "{what}");
        }
        Reject(code) => {
            let m = parsed.unwrap_or_else(|e| panic!("{what}: {e}"));
            let r = validate(&m).expect_err(&format!("{what}: validated"));
            assert_eq!(r.code, code, "{what}: {}", r.reason);
        }
    }
}

#[test]
fn rfc4475_torture_messages_meet_the_layer_their_section_names() {
    assert_eq!(RFC4475.len(), 49, "every referenced message of RFC 4475");
    for (name, section, expect) in RFC4475 {
        check(
            name,
            section,
            &corpus(&format!("rfc4475/{name}.dat")),
            *expect,
        );
    }
}

#[test]
fn rfc5118_ipv6_torture_messages() {
    for (name, section, expect) in RFC5118 {
        check(
            name,
            section,
            &rfc5118_wire(&corpus(&format!("rfc5118/{name}"))),
            *expect,
        );
    }
}

#[test]
fn every_prefix_and_every_single_byte_change_of_the_corpus_is_handled_without_panic() {
    let mut all: Vec<Vec<u8>> = RFC4475
        .iter()
        .map(|(n, _, _)| corpus(&format!("rfc4475/{n}.dat")))
        .collect();
    all.extend(
        RFC5118
            .iter()
            .map(|(n, _, _)| rfc5118_wire(&corpus(&format!("rfc5118/{n}")))),
    );
    let limits = Limits::default();
    for msg in &all {
        for cut in 0..msg.len() {
            let _ = parse_datagram(&msg[..cut], &limits).map(|m| {
                let _ = m.check_headers();
                let _ = validate(&m);
            });
            let _ = sluice_sip::frame_stream(&msg[..cut], &limits);
        }
        let mut m = msg.clone();
        for i in (0..m.len()).step_by(11) {
            let old = m[i];
            for b in [
                0u8, b'\r', b'\n', b' ', b':', b';', b',', b'"', b'<', b'>', 0xff,
            ] {
                m[i] = b;
                if let Ok(p) = parse_datagram(&m, &limits) {
                    let _ = p.check_headers();
                    let _ = validate(&p);
                    let _ = parse_datagram(&p.to_bytes(), &limits);
                }
            }
            m[i] = old;
        }
    }
}
