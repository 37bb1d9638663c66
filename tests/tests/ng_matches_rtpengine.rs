//! Differential test: the same ng offer/answer sequences sent to rtpengine (Debian's
//! rtpengine-daemon) and to sluice give the same SDPs, apart from what may differ (ports, keys)
//! and the differences sluice makes on purpose, each named here and in the README:
//! - `a=rtcp:PORT IN IP4 ADDR`: sluice writes the address too (RFC 3605 allows both);
//! - SRTP offers: sluice offers the suites it implements (AES_CM_128_HMAC_SHA1_80/_32,
//!   AEAD_AES_128/256_GCM), a subset of rtpengine's twelve, and no DTLS-SRTP (`a=setup`,
//!   `a=fingerprint`), which it does not terminate.
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
    let d = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{sluice_port}")]).await;
    let mut rtpengine = Ng::new(rtpe_port);
    let mut sluice = Ng::new(sluice_port);
    let ping = Value::dict([("command", Value::str("ping"))]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rtpengine.call(&ping).is_none() {
        assert!(Instant::now() < deadline, "rtpengine did not answer ping");
    }

    let hold = OFFER.replace("a=sendrecv", "a=sendonly");
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
    drop(rtpe);
    drop(d);
}
