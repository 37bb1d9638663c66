//! Bad requests are refused with a gRPC code a SIP proxy can act on and a message an operator
//! can act on; bad packets are counted and dropped. Neither leaks anything.

use std::net::IpAddr;

use sluice_tests::pb::{Direction, LegOptions};
use sluice_tests::*;
use tonic::Code;

fn assert_code(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, what: &str) -> String {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(!s.message().is_empty(), "{what}: empty error message");
            s.message().to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sdp_names_the_line() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let a = Peer::v4();
        // Line 6 is the m= line; give it a payload type that is not a number.
        let sdp = a.sdp(&[]).replace("RTP/AVP 0 101", "RTP/AVP 0 pcmu");
        assert_eq!(sdp.lines().nth(5).map(|l| l.starts_with("m=")), Some(true));
        let msg = assert_code(
            offer(&mut c, "bad-sdp", sdp, None).await,
            Code::InvalidArgument,
            "bad m=",
        );
        assert!(
            msg.contains("line 6"),
            "message does not name SDP line 6: {msg}"
        );
        assert!(
            msg.contains("pcmu"),
            "message does not quote the culprit: {msg}"
        );

        // Line 4 (c=) with an address that is not one.
        let sdp = a
            .sdp(&[])
            .replace("c=IN IP4 127.0.0.1", "c=IN IP4 127.0.0.300");
        let msg = assert_code(
            offer(&mut c, "bad-sdp", sdp, None).await,
            Code::InvalidArgument,
            "bad c=",
        );
        assert!(
            msg.contains("line 4"),
            "message does not name SDP line 4: {msg}"
        );

        // Not SDP at all.
        let msg = assert_code(
            offer(&mut c, "bad-sdp", "hello\r\n".into(), None).await,
            Code::InvalidArgument,
            "not SDP",
        );
        assert!(msg.contains("line 1"), "{msg}");

        // Nothing was created by the failures.
        assert_code(
            query(&mut c, "bad-sdp").await,
            Code::NotFound,
            "call after bad offers",
        );
        let st = statistics(&mut c).await;
        assert_eq!((st.calls_total, st.ports_in_use), (0, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ids_and_unknown_calls() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());

        let msg = assert_code(
            offer(&mut c, "", a.sdp(&[]), None).await,
            Code::InvalidArgument,
            "empty call_id",
        );
        assert!(msg.contains("call_id"), "{msg}");
        let r = c
            .offer(pb::OfferRequest {
                call_id: "x".into(),
                from_tag: String::new(),
                sdp: a.sdp(&[]),
                options: None,
            })
            .await;
        let msg = assert_code(r, Code::InvalidArgument, "empty from_tag");
        assert!(msg.contains("from_tag"), "{msg}");
        assert_code(
            query(&mut c, "").await,
            Code::InvalidArgument,
            "query with empty call_id",
        );
        let long = "x".repeat(10_000);
        assert_code(
            offer(&mut c, &long, a.sdp(&[]), None).await,
            Code::InvalidArgument,
            "huge call_id",
        );
        assert_code(
            offer(&mut c, "ctl\nchar", a.sdp(&[]), None).await,
            Code::InvalidArgument,
            "call_id with a newline (log injection)",
        );

        assert_code(
            answer(&mut c, "nope", b.sdp(&[]), None).await,
            Code::NotFound,
            "answer unknown",
        );
        assert_code(query(&mut c, "nope").await, Code::NotFound, "query unknown");
        let r = c
            .delete(pb::DeleteRequest {
                call_id: "nope".into(),
                ..Default::default()
            })
            .await;
        let msg = assert_code(r, Code::NotFound, "delete unknown");
        assert!(
            msg.contains("nope"),
            "message does not name the call: {msg}"
        );
        assert_eq!(statistics(&mut c).await.calls_total, 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_must_match_the_offer() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        offer(&mut c, "mlines", a.sdp(&[]), None).await.unwrap();
        // Two m= lines in answer to one.
        let extra = format!("m=video {} RTP/AVP 96", b.rtp_addr().port() + 10);
        let two = b.sdp(&[&extra, "a=rtpmap:96 H264/90000"]);
        assert_eq!(two.matches("m=").count(), 2);
        let msg = assert_code(
            answer(&mut c, "mlines", two, None).await,
            Code::InvalidArgument,
            "2 m= for 1",
        );
        assert!(msg.contains("m= lines"), "{msg}");
        // The refused answer did no harm: the right one still works.
        let to_a = answer(&mut c, "mlines", b.sdp(&[]), None).await.unwrap();
        a.send_rtp(to_a.rtp_addr(), &pcmu(1, 160, 1));
        assert!(
            b.recv_rtp().is_some(),
            "media broken after a refused answer"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_option_values_are_refused() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let a = Peer::v4();
        let cases = [
            (
                "direction",
                LegOptions {
                    direction: 42,
                    ..Default::default()
                },
            ),
            (
                "address_family",
                LegOptions {
                    address_family: 7,
                    ..Default::default()
                },
            ),
            (
                "latching",
                LegOptions {
                    latching: -1,
                    ..Default::default()
                },
            ),
            (
                "rtcp_mux",
                LegOptions {
                    rtcp_mux: 99,
                    ..Default::default()
                },
            ),
        ];
        for (field, opts) in cases {
            let msg = assert_code(
                offer(&mut c, "opts", a.sdp(&[]), Some(opts)).await,
                Code::InvalidArgument,
                field,
            );
            assert!(msg.contains(field), "message does not name {field}: {msg}");
        }
        assert_code(
            query(&mut c, "opts").await,
            Code::NotFound,
            "call after refused offers",
        );
        // A known value is fine.
        let ok = LegOptions {
            direction: Direction::Sendrecv as i32,
            ..Default::default()
        };
        offer(&mut c, "opts", a.sdp(&[]), Some(ok)).await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_exhaustion_is_reported_and_recovers() {
    bounded(async {
        // 8 ports: two streams, each taking an RTP+RTCP pair per side.
        let d = Daemon::start(&["--ports", "31000-31007"]).await;
        let mut c = d.client().await;
        let peers: Vec<Peer> = (0..3).map(|_| Peer::v4()).collect();
        let first = offer(&mut c, "call-1", peers[0].sdp(&[]), None)
            .await
            .unwrap();
        let second = offer(&mut c, "call-2", peers[1].sdp(&[]), None)
            .await
            .unwrap();
        for v in [&first, &second] {
            assert!(
                (31000..=31007).contains(&v.rtp_port),
                "port {} outside --ports",
                v.rtp_port
            );
        }
        let st = statistics(&mut c).await;
        assert_eq!((st.ports_in_use, st.ports_free), (8, 0));

        let msg = assert_code(
            offer(&mut c, "call-3", peers[2].sdp(&[]), None).await,
            Code::ResourceExhausted,
            "third call",
        );
        assert!(
            msg.contains("31000"),
            "message does not name the range: {msg}"
        );
        let st = statistics(&mut c).await;
        assert_eq!(st.ports_in_use, 8, "a refused offer must not keep ports");
        assert_eq!(st.calls_current, 2);
        assert_code(
            query(&mut c, "call-3").await,
            Code::NotFound,
            "refused call",
        );

        c.delete(pb::DeleteRequest {
            call_id: "call-1".into(),
            ..Default::default()
        })
        .await
        .expect("Delete");
        let third = offer(&mut c, "call-3", peers[2].sdp(&[]), None)
            .await
            .expect("an offer after a delete must find ports again");
        assert!((31000..=31007).contains(&third.rtp_port));
        let st = statistics(&mut c).await;
        assert_eq!((st.ports_in_use, st.calls_current), (8, 2));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_media_is_counted_and_dropped() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "garbage", &a, &b).await;

        let mut too_many_csrcs = pcmu(1, 0, 1)[..12].to_vec();
        too_many_csrcs[0] = 0x8f; // 15 CSRCs announced, none there
        let to_rtp: [&[u8]; 4] = [
            b"hello, this is not RTP",
            &[0x80, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00], // truncated header
            &too_many_csrcs,
            &[0x80, 200, 0x00, 0x10, 0, 0, 0, 1], // RTCP SR whose length runs past the end
        ];
        for g in to_rtp {
            a.send_rtp(call.a_sends_rtp(), g);
        }
        // RTP where only RTCP belongs.
        a.send_rtcp(call.a_sends_rtcp(), &pcmu(2, 160, 1));
        b.assert_silent("garbage must not be forwarded");

        let info = wait_query(&mut c, &call.id, "garbage counted", |i| {
            stream(i, 0).dropped_malformed == 5
        })
        .await;
        let sa = stream(&info, 0);
        assert_eq!(sa.packets, 0, "garbage counted as media");
        assert_eq!(sa.bytes, 0);
        assert_eq!(statistics(&mut c).await.packets_relayed, 0);

        // Valid media after the garbage still flows.
        a.send_rtp(call.a_sends_rtp(), &pcmu(3, 320, 1));
        let (got, _) = b.recv_rtp().expect("media after garbage");
        assert_eq!(got, pcmu(3, 320, 1));
        // A stranger's garbage is counted too, and answered by nothing.
        let s = stranger(IpAddr::from([127, 0, 0, 1]));
        s.send_to(b"\x00\x01garbage", call.b_sends_rtp()).unwrap();
        assert!(!receives_anything(&s));
        wait_query(&mut c, &call.id, "stranger's garbage counted", |i| {
            stream(i, 1).dropped_malformed == 1
        })
        .await;
    })
    .await
}
