//! Latching (DESIGN.md security defaults): an endpoint behind NAT, whose packets come from an
//! address other than its SDP's, gets its media once it has proved itself with consecutive
//! packets; the LegOptions latching and strict_source switches do what they say.

use std::net::SocketAddr;

use sluice_tests::pb::{Latching, LegOptions};
use sluice_tests::*;

/// Sends `n` consecutive RTP packets from `from`'s RTP socket.
fn burst(from: &Peer, to: SocketAddr, seq0: u16, n: u16, ssrc: u32) {
    for i in 0..n {
        let seq = seq0 + i;
        from.send_rtp(to, &pcmu(seq, 160 * seq as u32, ssrc));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_source_is_latched_after_consecutive_packets() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        // `a_sdp` is what A's SDP says (its private address); `a_nat` is where its packets
        // really come from.
        let (a_sdp, a_nat, b) = (Peer::v4(), Peer::v4(), Peer::v4());
        let call = establish(&mut c, "nat", &a_sdp, &b).await;

        burst(&a_nat, call.a_sends_rtp(), 10, 6, 0xa);
        let got = b.recv_rtp_n(6).len();
        assert!(got >= 1, "the NAT-ed caller's media never got through");
        let info = wait_query(&mut c, &call.id, "NAT source latched", |i| {
            stream(i, 0).latched_peer == a_nat.rtp_addr().to_string()
        })
        .await;
        let sa = stream(&info, 0);
        assert_eq!(
            sa.packets as usize + sa.dropped_wrong_source as usize,
            6,
            "{info:#?}"
        );
        assert_eq!(
            sa.packets as usize, got,
            "accepted packets are the forwarded ones"
        );

        // B's media now goes to where A's packets come from, not to A's SDP address.
        burst(&b, call.b_sends_rtp(), 1, 3, 0xb);
        assert_eq!(
            a_nat.recv_rtp_n(3).len(),
            3,
            "media did not follow the latch"
        );
        a_sdp.assert_silent("media still sent to the SDP address after latching");
    })
    .await
}

/// Once a NAT-ed endpoint's RTP has latched, its RTCP (from the same NAT host, one report every
/// few seconds per RFC 3550 6.2) must get through too, and the other side's RTCP must reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rtcp_follows_the_latched_rtp_source() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a_sdp, a_nat, b) = (Peer::v4(), Peer::v4(), Peer::v4());
        let call = establish(&mut c, "nat-rtcp", &a_sdp, &b).await;
        burst(&a_nat, call.a_sends_rtp(), 10, 6, 0xa);
        assert!(!b.recv_rtp_n(6).is_empty());
        wait_query(&mut c, &call.id, "NAT source latched", |i| {
            stream(i, 0).latched_peer == a_nat.rtp_addr().to_string()
        })
        .await;

        // The first RTCP report from the NAT-ed caller's RTCP port.
        let sr = rtcp_sr(0xa, 1600, 6, 960);
        a_nat.send_rtcp(call.a_sends_rtcp(), &sr);
        let got = b.recv_rtcp().map(|(p, _)| p);
        // And the callee's report towards the caller.
        let sr_b = rtcp_sr(0xb, 480, 3, 480);
        b.send_rtcp(call.b_sends_rtcp(), &sr_b);
        let back = a_nat.recv_rtcp().map(|(p, _)| p);
        let info = query(&mut c, &call.id).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&sr[..]),
            "the NAT-ed caller's first RTCP report was not relayed: {:#?}",
            stream(&info, 0)
        );
        assert_eq!(
            back.as_deref(),
            Some(&sr_b[..]),
            "the callee's RTCP did not reach the NAT-ed caller's RTCP port"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latching_off_sends_to_the_sdp_address_only() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a_sdp, a_nat, b) = (Peer::v4(), Peer::v4(), Peer::v4());
        let off = Some(LegOptions {
            latching: Latching::Off as i32,
            ..Default::default()
        });
        let to_b = offer(&mut c, "no-latch", a_sdp.sdp(&[]), off)
            .await
            .unwrap();
        let to_a = answer(&mut c, "no-latch", b.sdp(&[]), None).await.unwrap();
        let call = Call {
            id: "no-latch".into(),
            to_b,
            to_a,
        };
        burst(&a_nat, call.a_sends_rtp(), 10, 5, 0xa);
        b.assert_silent("strict source without latching: only the SDP address may send");
        let info = wait_query(&mut c, &call.id, "drops counted", |i| {
            stream(i, 0).dropped_wrong_source == 5
        })
        .await;
        assert_eq!(stream(&info, 0).latched_peer, "");
        burst(&b, call.b_sends_rtp(), 1, 3, 0xb);
        assert_eq!(
            a_sdp.recv_rtp_n(3).len(),
            3,
            "media must go to the SDP address"
        );
        assert!(!receives_anything(&a_nat.rtp));
        // The SDP address itself may send.
        burst(&a_sdp, call.a_sends_rtp(), 20, 3, 0xa);
        assert_eq!(b.recv_rtp_n(3).len(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_source_off_lets_any_source_in() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a_sdp, a_other, b) = (Peer::v4(), Peer::v4(), Peer::v4());
        let loose = Some(LegOptions {
            strict_source: Some(false),
            latching: Latching::Off as i32,
            ..Default::default()
        });
        let to_b = offer(&mut c, "loose", a_sdp.sdp(&[]), loose).await.unwrap();
        let to_a = answer(&mut c, "loose", b.sdp(&[]), None).await.unwrap();
        let info = query(&mut c, "loose").await.unwrap();
        assert!(!stream(&info, 0).strict_source);
        assert!(
            stream(&info, 1).strict_source,
            "the option leaked to the other leg"
        );
        let call = Call {
            id: "loose".into(),
            to_b,
            to_a,
        };
        burst(&a_other, call.a_sends_rtp(), 1, 4, 0xa);
        assert_eq!(
            b.recv_rtp_n(4).len(),
            4,
            "non-strict leg must accept any source"
        );
        burst(&b, call.b_sends_rtp(), 1, 2, 0xb);
        assert_eq!(
            a_sdp.recv_rtp_n(2).len(),
            2,
            "without latching, media goes to the SDP"
        );
    })
    .await
}

/// RTP Inject and RTP Bleed (issue 13), closed where the signalling source is known: the caller's
/// offer says its signalling came from 127.0.0.1 (gRPC `signalling_source`; the B2BUA passes the
/// SIP peer's address, ng `received-from`). A host elsewhere (127.0.0.66) that sends 10
/// consecutive packets to the caller's relay port before the caller speaks gets none of them
/// forwarded and never receives the callee's media, even without strict source; the caller's
/// own NAT mapping (its signalling IP, another port than its SDP's) still latches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_signalling_source_keeps_strangers_out_but_lets_the_nat_in() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let stranger_ip: std::net::IpAddr = "127.0.0.66".parse().unwrap();
        let (a_sdp, a_nat, b, stranger) =
            (Peer::v4(), Peer::v4(), Peer::v4(), Peer::on(stranger_ip));
        let opts = |strict| {
            Some(LegOptions {
                signalling_source: "127.0.0.1".into(),
                strict_source: Some(strict),
                ..LegOptions::default()
            })
        };
        for (id, strict) in [("sig-strict", true), ("sig-loose", false)] {
            let to_b = offer(&mut c, id, a_sdp.sdp(&[]), opts(strict))
                .await
                .unwrap();
            let to_a = answer(&mut c, id, b.sdp(&[]), opts(strict)).await.unwrap();
            let call = Call {
                id: id.into(),
                to_b,
                to_a,
            };
            burst(&stranger, call.a_sends_rtp(), 100, 10, 0xbad);
            b.assert_silent("the stranger's packets reached the callee (RTP Inject)");
            burst(&b, call.b_sends_rtp(), 1, 3, 0xb);
            assert_eq!(
                a_sdp.recv_rtp_n(3).len(),
                3,
                "the callee's media goes to the SDP address"
            );
            stranger.assert_silent("the stranger got the callee's media (RTP Bleed)");
            let info = wait_query(&mut c, id, "the stranger's packets counted", |i| {
                stream(i, 0).dropped_wrong_source >= 10
            })
            .await;
            assert_eq!(
                stream(&info, 0).latched_peer,
                "",
                "strict {strict}: nothing latched"
            );

            burst(&a_nat, call.a_sends_rtp(), 500, 6, 0xa);
            assert!(
                !b.recv_rtp_n(3).is_empty(),
                "the NAT-ed caller's media got through"
            );
            wait_query(&mut c, id, "the caller's NAT latched", |i| {
                stream(i, 0).latched_peer == a_nat.rtp_addr().to_string()
            })
            .await;
            while b.recv_rtp().is_some() {}
            c.delete(pb::DeleteRequest {
                call_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    })
    .await
}
