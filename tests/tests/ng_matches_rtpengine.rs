//! Differential test: the same ng offer/answer sequences sent to rtpengine (Debian's
//! rtpengine-daemon) and to sluice give the same SDPs, apart from what may differ (ports, keys)
//! and the differences sluice makes on purpose, each named here and in the README:
//! - `a=rtcp:PORT IN IP4 ADDR`: sluice writes the address too (RFC 3605 allows both);
//! - SRTP offers: sluice offers the suites it implements (AES_CM_128_HMAC_SHA1_80/_32,
//!   AEAD_AES_128/256_GCM), a subset of rtpengine's twelve, and no DTLS-SRTP (`a=setup`,
//!   `a=fingerprint`), which it does not terminate.
//!
//! Cases: plain, hold, codec-strip, codec-mask, RTP/SAVP, an IPv6 offer, an IPv4 offer turned
//! IPv6 (`address family`), and a forked offer (`via-branch`) answered by its second branch.
//!
//! Needs rtpengine: required under CI, skipped with a line saying so elsewhere.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_control::ng::bencode::Value;
use sluice_tests::*;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Ng {
    sock: UdpSocket,
    port: u16,
    n: u32,
}

impl Ng {
    fn new(port: u16) -> Ng {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Ng { sock, port, n: 0 }
    }

    fn call(&mut self, msg: &Value) -> Option<Value> {
        self.n += 1;
        let cookie = format!("d{}", self.n);
        let mut d = format!("{cookie} ").into_bytes();
        msg.encode(&mut d);
        self.sock.send_to(&d, ("127.0.0.1", self.port)).unwrap();
        let mut buf = vec![0u8; 65_536];
        let n = sluice_tests::recv_from_retrying(&self.sock, &mut buf)
            .ok()?
            .0;
        Value::decode(&buf[cookie.len() + 1..n]).ok()
    }
}

const OFFER: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
                     a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
                     a=fmtp:101 0-15\r\na=sendrecv\r\n";

/// The lines of an SDP with what may differ masked: ports, SDES keys; DTLS lines and crypto
/// lines are returned apart (suite names only).
fn normalize(sdp: &str) -> (Vec<String>, Vec<String>, bool) {
    let mut lines = Vec::new();
    let mut suites = Vec::new();
    let mut dtls = false;
    for l in sdp.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = l.strip_prefix("m=") {
            let mut f: Vec<&str> = rest.split(' ').collect();
            if f.len() > 1 {
                f[1] = "PORT";
            }
            lines.push(format!("m={}", f.join(" ")));
        } else if l.starts_with("a=rtcp:") {
            lines.push("a=rtcp:PORT".into());
        } else if let Some(rest) = l.strip_prefix("a=crypto:") {
            suites.push(rest.split(' ').nth(1).unwrap_or("").to_string());
        } else if l.starts_with("a=setup:") || l.starts_with("a=fingerprint:") {
            dtls = true;
        } else {
            lines.push(l.to_string());
        }
    }
    lines.sort();
    (lines, suites, dtls)
}

/// The callee's answer to `offered` (the SDP the relay gave it), as a UA writes one (RFC 3264
/// 6.1): the first codec offered and telephone-event if offered, on the callee's port.
fn answer_to(offered: &str) -> String {
    let m = offered
        .lines()
        .find_map(|l| l.strip_prefix("m="))
        .expect("an m= line");
    let f: Vec<&str> = m.split(' ').collect();
    let (proto, pts) = (f[2], &f[3..]);
    let codec = pts[0];
    let mut sdp = format!(
        "v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 40010 {proto} {codec}{}\r\n",
        if pts.contains(&"101") { " 101" } else { "" }
    );
    for l in offered.lines() {
        let keep = [
            format!("a=rtpmap:{codec} "),
            "a=rtpmap:101 ".into(),
            "a=fmtp:101 ".into(),
        ];
        if keep.iter().any(|k| l.starts_with(k.as_str())) {
            sdp += l;
            sdp += "\r\n";
        }
    }
    sdp + "a=sendrecv\r\n"
}

fn offer_msg(name: &str, extra: &[(&str, Value)], offer_sdp: &str) -> Value {
    let mut offer = vec![
        ("command", Value::str("offer")),
        ("call-id", Value::str(name)),
        ("from-tag", Value::str("alice")),
        ("sdp", Value::str(offer_sdp)),
        ("replace", Value::List(vec![Value::str("origin")])),
    ];
    offer.extend(extra.iter().cloned());
    Value::dict(offer)
}

fn answer_msg(name: &str, sdp: &str) -> Value {
    Value::dict([
        ("command", Value::str("answer")),
        ("call-id", Value::str(name)),
        ("from-tag", Value::str("alice")),
        ("to-tag", Value::str("bob")),
        ("sdp", Value::str(sdp)),
        ("replace", Value::List(vec![Value::str("origin")])),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_and_answers_match_rtpengines() {
    if Command::new("rtpengine").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI: apt-get install rtpengine-daemon"
        );
        skipped("needs rtpengine (apt-get install rtpengine-daemon)");
        return;
    }
    let rtpe_port = free_udp_port();
    let rtpe = Killed(
        Command::new("rtpengine")
            .args(["--config-file=none", "--table=-1", "--interface=127.0.0.1"])
            .arg("--interface=::1")
            .arg(format!("--listen-ng=127.0.0.1:{rtpe_port}"))
            .args([
                "--foreground",
                "--log-stderr",
                "--log-level=3",
                "--num-threads=1",
            ])
            .args(["--port-min=47000", "--port-max=47999", "--delete-delay=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rtpengine"),
    );
    let sluice_port = free_udp_port();
    let d = Daemon::start(&[
        "--ng",
        &format!("udp:127.0.0.1:{sluice_port}"),
        "--media-ip",
        "127.0.0.1",
        "--media-ip",
        "::1",
    ])
    .await;
    let mut rtpengine = Ng::new(rtpe_port);
    let mut sluice = Ng::new(sluice_port);
    let ping = Value::dict([("command", Value::str("ping"))]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rtpengine.call(&ping).is_none() {
        assert!(Instant::now() < deadline, "rtpengine did not answer ping");
    }

    let hold = OFFER.replace("a=sendrecv", "a=sendonly");
    let v6 = OFFER.replace("IN IP4 127.0.0.1", "IN IP6 ::1");
    let codec = |verb: &str, name: &str| {
        (
            "codec",
            Value::dict([(verb, Value::List(vec![Value::str(name)]))]),
        )
    };
    type Case<'a> = (&'a str, Vec<(&'a str, Value)>, &'a str);
    let cases: Vec<Case> = vec![
        ("plain", vec![], OFFER),
        ("hold", vec![], hold.as_str()),
        ("strip", vec![codec("strip", "PCMA")], OFFER),
        ("mask", vec![codec("mask", "PCMU")], OFFER),
        (
            "srtp",
            vec![("transport-protocol", Value::str("RTP/SAVP"))],
            OFFER,
        ),
        ("ipv6", vec![], v6.as_str()),
        (
            "to-ipv6",
            vec![("address family", Value::str("IP6"))],
            OFFER,
        ),
    ];
    for (name, extra, sdp) in cases {
        let offer = offer_msg(name, &extra, sdp);
        let mut answer = None;
        for step in ["offer", "answer"] {
            let msg = match step {
                "offer" => offer.clone(),
                _ => answer.take().expect("built from the offer"),
            };
            let r = rtpengine.call(&msg).expect("rtpengine replied");
            let s = sluice.call(&msg).expect("sluice replied");
            for (who, v) in [("rtpengine", &r), ("sluice", &s)] {
                assert_eq!(
                    v.get_str("result").as_deref(),
                    Some("ok"),
                    "{name} {step} {who}: {v:?}"
                );
            }
            let (rl, rs, rdtls) = normalize(&r.get_str("sdp").unwrap());
            let (sl, ss, sdtls) = normalize(&s.get_str("sdp").unwrap());
            assert_eq!(
                sl, rl,
                "{name} {step}: SDP lines differ (sluice vs rtpengine)"
            );
            assert_eq!(
                ss.is_empty(),
                rs.is_empty(),
                "{name} {step}: SDES offered by one only"
            );
            for suite in &ss {
                assert!(
                    rs.contains(suite),
                    "{name} {step}: sluice offers {suite}, rtpengine not"
                );
            }
            assert!(!sdtls, "{name} {step}: sluice offers DTLS");
            if name.ends_with("ipv6") && step == "offer" {
                assert!(
                    sl.iter().any(|l| l == "c=IN IP6 ::1"),
                    "{name}: the callee is offered the IPv6 relay address: {sl:?}"
                );
            }
            if name == "srtp" && step == "offer" {
                assert!(
                    rdtls && !ss.is_empty(),
                    "rtpengine offers SDES and DTLS, sluice SDES"
                );
            }
            if step == "offer" {
                // The same answer to both: the callee's, to what it was offered (the lines
                // compared equal above); a SAVP callee answers with one of the keys offered.
                let offered = r.get_str("sdp").unwrap();
                let mut a = answer_to(&offered);
                if let Some(c) = s
                    .get_str("sdp")
                    .unwrap()
                    .lines()
                    .find(|l| l.starts_with("a=crypto:"))
                {
                    a += c;
                    a += "\r\n";
                }
                answer = Some(answer_msg(name, &a));
            }
        }
    }

    // A forked INVITE: the same offer to two branches (via-branch), each of which gets ports
    // of its own from both relays; the second branch answers.
    let branch = |b: &str| ("via-branch", Value::str(b));
    let mut ports = Vec::new();
    let mut offered_b2 = String::new();
    for b in ["z9hG4bK-b1", "z9hG4bK-b2"] {
        let msg = offer_msg("fork", &[branch(b)], OFFER);
        let r = rtpengine.call(&msg).expect("rtpengine replied");
        let s = sluice.call(&msg).expect("sluice replied");
        let (rsdp, ssdp) = (r.get_str("sdp").unwrap(), s.get_str("sdp").unwrap());
        assert_eq!(
            normalize(&ssdp).0,
            normalize(&rsdp).0,
            "fork offer {b}: SDP lines differ"
        );
        ports.push((
            SdpView::parse(&rsdp).rtp_port,
            SdpView::parse(&ssdp).rtp_port,
        ));
        offered_b2 = rsdp;
    }
    assert!(
        ports[0].0 != ports[1].0 && ports[0].1 != ports[1].1,
        "each branch gets its own port from both: (rtpengine, sluice) {ports:?}"
    );
    let mut answer = answer_msg("fork", &answer_to(&offered_b2));
    if let Value::Dict(m) = &mut answer {
        m.insert(b"via-branch".to_vec(), Value::str("z9hG4bK-b2"));
    }
    let r = rtpengine.call(&answer).expect("rtpengine replied");
    let s = sluice.call(&answer).expect("sluice replied");
    for (who, v) in [("rtpengine", &r), ("sluice", &s)] {
        assert_eq!(
            v.get_str("result").as_deref(),
            Some("ok"),
            "fork answer {who}: {v:?}"
        );
    }
    let (rl, _, _) = normalize(&r.get_str("sdp").unwrap());
    let (sl, _, _) = normalize(&s.get_str("sdp").unwrap());
    assert_eq!(sl, rl, "fork answer: SDP lines differ");
    drop(rtpe);
    drop(d);
}
