//! rtpengine's ng protocol over TCP (`--ng tcp:IP:PORT`, rtpengine's `listen-tcp-ng`): messages
//! back to back on one connection, delimited by their bencode, answered in order on it. A call
//! set up over TCP carries media and is deleted with nothing left; a message split across
//! writes waits for its end; two messages in one write get two replies; JSON, which cannot be
//! delimited on a stream, gets an error naming why and the connection is closed while the
//! listener keeps serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sluice_control::ng::bencode::Value;
use sluice_tests::*;

struct NgTcp {
    s: TcpStream,
    pending: Vec<u8>,
}

impl NgTcp {
    fn connect(port: u16) -> NgTcp {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("the ng TCP listener");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        NgTcp {
            s,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// The next reply: `<cookie> <bencoded dictionary>`, read until its value is whole.
    fn reply(&mut self) -> (String, Value) {
        let mut buf = [0u8; 65_536];
        loop {
            if let Some(space) = self.pending.iter().position(|&b| b == b' ')
                && let Ok((v, n)) = Value::decode_prefix(&self.pending[space + 1..])
            {
                let cookie = String::from_utf8_lossy(&self.pending[..space]).into_owned();
                self.pending.drain(..space + 1 + n);
                return (cookie, v);
            }
            let n = self
                .s
                .read(&mut buf)
                .expect("an ng reply on the connection");
            assert!(n > 0, "connection closed before a whole reply");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    fn call(&mut self, cookie: &str, msg: &Value) -> Value {
        let mut m = format!("{cookie} ").into_bytes();
        msg.encode(&mut m);
        self.send(&m);
        let (c, v) = self.reply();
        assert_eq!(c, cookie, "replies come in request order");
        v
    }
}

fn ports_in_use(ng: &mut NgTcp, cookie: &str) -> i64 {
    let r = ng.call(
        cookie,
        &Value::dict([("command", Value::str("statistics"))]),
    );
    match r
        .get("statistics")
        .and_then(|s| s.get("ports"))
        .and_then(|p| p.get("used"))
    {
        Some(Value::Int(n)) => *n,
        other => panic!("statistics.ports.used missing: {other:?} in {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_ng_tcp_carries_media_and_leaves_nothing() {
    bounded(async {
        let port = free_tcp_port();
        let d = Daemon::start(&["--ng", &format!("tcp:127.0.0.1:{port}")]).await;
        assert!(d.log_text().contains("tcp:127.0.0.1"), "{}", d.log_text());
        let mut ng = NgTcp::connect(port);
        let (caller, callee) = (Peer::v4(), Peer::v4());

        // The offer in three writes: nothing is answered until it is whole.
        let offer = Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str("tcp-call-1")),
            ("from-tag", Value::str("caller")),
            ("sdp", Value::str(&caller.sdp(&[]))),
        ]);
        let mut bytes = b"o1 ".to_vec();
        offer.encode(&mut bytes);
        let (a, rest) = bytes.split_at(2);
        let (b, c) = rest.split_at(rest.len() / 2);
        ng.send(a);
        std::thread::sleep(Duration::from_millis(50));
        ng.send(b);
        std::thread::sleep(Duration::from_millis(50));
        ng.send(c);
        let (cookie, offered) = ng.reply();
        assert_eq!(cookie, "o1");
        assert_eq!(
            offered.get_str("result").as_deref(),
            Some("ok"),
            "{offered:?}"
        );
        let to_callee = SdpView::parse(&offered.get_str("sdp").unwrap());

        let answered = ng.call(
            "a1",
            &Value::dict([
                ("command", Value::str("answer")),
                ("call-id", Value::str("tcp-call-1")),
                ("from-tag", Value::str("caller")),
                ("to-tag", Value::str("callee")),
                ("sdp", Value::str(&callee.sdp(&[]))),
            ]),
        );
        assert_eq!(answered.get_str("result").as_deref(), Some("ok"));
        let to_caller = SdpView::parse(&answered.get_str("sdp").unwrap());
        for seq in 0..5u16 {
            caller.send_rtp(
                to_caller.rtp_addr(),
                &pcmu(seq, u32::from(seq) * 160, 0x7001),
            );
            callee.send_rtp(
                to_callee.rtp_addr(),
                &pcmu(seq, u32::from(seq) * 160, 0x7002),
            );
        }
        assert_eq!(callee.recv_rtp_n(5).len(), 5, "caller to callee");
        assert_eq!(caller.recv_rtp_n(5).len(), 5, "callee to caller");
        assert!(ports_in_use(&mut ng, "s1") > 0);

        // Two messages in one write: two replies, in order.
        let mut two = b"q1 ".to_vec();
        Value::dict([
            ("command", Value::str("query")),
            ("call-id", Value::str("tcp-call-1")),
        ])
        .encode(&mut two);
        two.extend_from_slice(b"\r\nd1 ");
        Value::dict([
            ("command", Value::str("delete")),
            ("call-id", Value::str("tcp-call-1")),
        ])
        .encode(&mut two);
        ng.send(&two);
        let (c1, q) = ng.reply();
        let (c2, del) = ng.reply();
        assert_eq!((c1.as_str(), c2.as_str()), ("q1", "d1"));
        assert_eq!(
            q.get("totals")
                .and_then(|t| t.get("RTP"))
                .and_then(|r| r.get("packets")),
            Some(&Value::Int(10)),
            "{q:?}"
        );
        assert_eq!(del.get_str("result").as_deref(), Some("ok"), "{del:?}");
        assert_eq!(ports_in_use(&mut ng, "s2"), 0, "delete freed every port");

        // JSON cannot be delimited on a stream: an error naming why, then the close.
        let mut bad = NgTcp::connect(port);
        bad.send(br#"j1 {"command":"ping"}"#);
        let (cookie, err) = bad.reply();
        assert_eq!(cookie, "j1");
        assert_eq!(err.get_str("result").as_deref(), Some("error"));
        assert!(
            err.get_str("error-reason")
                .is_some_and(|r| r.contains("JSON is not accepted on TCP")),
            "{err:?}"
        );
        let mut rest = [0u8; 16];
        assert_eq!(
            bad.s.read(&mut rest).unwrap_or(0),
            0,
            "the connection is closed"
        );
        // The first connection and new ones are still served.
        let pong = ng.call("p1", &Value::dict([("command", Value::str("ping"))]));
        assert_eq!(pong.get_str("result").as_deref(), Some("pong"));
        let pong = NgTcp::connect(port).call("p2", &Value::dict([("command", Value::str("ping"))]));
        assert_eq!(pong.get_str("result").as_deref(), Some("pong"));
        drop(d);
    })
    .await;
}
