//! Each m= line is its own stream with its own relay ports: a rejected one carries nothing, and
//! a re-offer may add one without disturbing the others.

use std::net::SocketAddr;

use sluice_tests::*;

/// The RTP address of the `i`-th m= line of an SDP (port 0 included).
fn media_addr(v: &SdpView, i: usize) -> SocketAddr {
    let port = v
        .text
        .lines()
        .filter(|l| l.starts_with("m="))
        .nth(i)
        .and_then(|m| m.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no m= line {i} in:\n{}", v.text));
    SocketAddr::new(v.conn, port)
}

fn video(p: &Peer) -> [String; 2] {
    [
        format!("m=video {} RTP/AVP 96", p.rtp_addr().port()),
        "a=rtpmap:96 H264/90000".to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_stream_carries_nothing() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, av, b, bv) = (Peer::v4(), Peer::v4(), Peer::v4(), Peer::v4());
        let [m, r] = video(&av);
        let to_b = offer(&mut c, "av", a.sdp(&[&m, &r]), None).await.unwrap();
        assert_eq!(to_b.media_count, 2);
        assert_ne!(media_addr(&to_b, 1).port(), 0);
        assert_ne!(media_addr(&to_b, 1), media_addr(&to_b, 0));
        // The callee takes audio only.
        let to_a = answer(&mut c, "av", b.sdp(&["m=video 0 RTP/AVP 96"]), None)
            .await
            .unwrap();
        assert_eq!(to_a.media_count, 2);
        assert_eq!(
            media_addr(&to_a, 1).port(),
            0,
            "rejected stream must keep port 0:\n{}",
            to_a.text
        );

        // Audio flows.
        a.send_rtp(to_a.rtp_addr(), &pcmu(1, 160, 0xa));
        assert!(b.recv_rtp().is_some());
        // Video sent anyway to the relay's video port goes nowhere.
        bv.send_rtp(
            media_addr(&to_b, 1),
            &rtp_packet(1, 0, 0xbb, 96, true, &[0u8; 100]),
        );
        av.assert_silent("a rejected stream must not carry media");
        let info = query(&mut c, "av").await.unwrap();
        assert_eq!(info.legs[0].streams.len(), 2);
        assert_eq!(info.legs[0].streams[1].media, "video");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reoffer_can_add_a_stream() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, av, b, bv) = (Peer::v4(), Peer::v4(), Peer::v4(), Peer::v4());
        let call = establish(&mut c, "add-video", &a, &b).await;
        assert_eq!(statistics(&mut c).await.ports_in_use, 4);

        let [am, ar] = video(&av);
        let to_b = offer(&mut c, &call.id, a.sdp_version(2, &[&am, &ar]), None)
            .await
            .unwrap();
        let [bm, br] = video(&bv);
        let to_a = answer(&mut c, &call.id, b.sdp_version(2, &[&bm, &br]), None)
            .await
            .unwrap();
        assert_eq!(to_b.rtp_addr(), call.b_sends_rtp(), "audio port moved");
        assert_eq!(to_a.rtp_addr(), call.a_sends_rtp(), "audio port moved");
        assert_eq!(statistics(&mut c).await.ports_in_use, 8);

        let vp = rtp_packet(7, 90_000, 0x71de0, 96, true, &[0x5a; 300]);
        av.send_rtp(media_addr(&to_a, 1), &vp);
        let (got, _) = bv.recv_rtp().expect("video A -> B");
        assert_eq!(got, vp);
        bv.send_rtp(media_addr(&to_b, 1), &vp);
        assert_eq!(av.recv_rtp().map(|(p, _)| p), Some(vp));
        a.send_rtp(call.a_sends_rtp(), &pcmu(1, 160, 0xa));
        let (got, _) = b.recv_rtp().expect("audio A -> B");
        assert_eq!(got, pcmu(1, 160, 0xa), "audio and video crossed");
        let info = query(&mut c, &call.id).await.unwrap();
        assert_eq!(info.legs[1].streams.len(), 2);
        assert_eq!(info.legs[1].streams[1].media, "video");
        assert_eq!(info.legs[1].streams[1].packets, 1);
    })
    .await
}
