//! Source checks (DESIGN.md security defaults, RTP Bleed): once a leg has latched onto its
//! endpoint, nobody else can inject media into the call or pull media out of it.

use std::net::IpAddr;

use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_source_is_dropped() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "intruded", &a, &b).await;

        // A's source latches.
        for i in 0..5u16 {
            a.send_rtp(call.a_sends_rtp(), &pcmu(100 + i, 160 * i as u32, 0xa));
        }
        assert_eq!(b.recv_rtp_n(5).len(), 5);
        let info = wait_query(&mut c, &call.id, "A latched", |i| {
            !stream(i, 0).latched_peer.is_empty()
        })
        .await;
        assert_eq!(stream(&info, 0).latched_peer, a.rtp_addr().to_string());

        // An intruder sends well-formed RTP with consecutive sequence numbers, as an attacker
        // would, to the same relay port.
        let intruder = stranger(IpAddr::from([127, 0, 0, 1]));
        for i in 0..10u16 {
            let p = pcmu(40_000 + i, 999 + 160 * i as u32, 0xbad);
            intruder.send_to(&p, call.a_sends_rtp()).unwrap();
        }
        b.assert_silent("the intruder's packets must not reach B");
        assert!(
            !receives_anything(&intruder),
            "the intruder must get nothing back"
        );
        let info = wait_query(&mut c, &call.id, "intruder's packets counted", |i| {
            stream(i, 0).dropped_wrong_source == 10
        })
        .await;
        let sa = stream(&info, 0);
        assert_eq!(sa.packets, 5, "only A's packets are accepted");
        assert_eq!(sa.latched_peer, a.rtp_addr().to_string(), "latch moved");
        assert_eq!(sa.ssrc, 0xa);

        // A is still the one heard, and B's media still goes to A only.
        a.send_rtp(call.a_sends_rtp(), &pcmu(105, 800, 0xa));
        assert!(
            b.recv_rtp().is_some(),
            "A's media stopped after the intrusion"
        );
        b.send_rtp(call.b_sends_rtp(), &pcmu(1, 160, 0xb));
        assert!(a.recv_rtp().is_some(), "B's media no longer reaches A");
        assert!(
            !receives_anything(&intruder),
            "B's media leaked to the intruder"
        );
    })
    .await
}

/// RTP Bleed (CVE-2017-14114): a stranger probing a relay port of a call before any media must
/// not become the call's media destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_before_media_gets_nothing() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "probed", &a, &b).await;

        // The probe: one small RTP packet to each relay port of the call, like rtpnatscan.
        let prober = stranger(IpAddr::from([127, 0, 0, 1]));
        for to in [call.a_sends_rtp(), call.b_sends_rtp()] {
            prober
                .send_to(&rtp_packet(1, 0, 0x5ca7, 0, false, b"?"), to)
                .unwrap();
        }
        assert!(!receives_anything(&prober), "the probe got an answer");
        a.assert_silent("the probe must not reach A");
        b.assert_silent("the probe must not reach B");

        // Then the call's media starts: it goes to the SDP endpoints, never to the prober.
        for i in 0..5u16 {
            b.send_rtp(call.b_sends_rtp(), &pcmu(i, 160 * i as u32, 0xb));
            a.send_rtp(call.a_sends_rtp(), &pcmu(i, 160 * i as u32, 0xa));
        }
        assert_eq!(a.recv_rtp_n(5).len(), 5, "B's media did not reach A");
        assert_eq!(b.recv_rtp_n(5).len(), 5, "A's media did not reach B");
        assert!(
            !receives_anything(&prober),
            "call media leaked to the prober"
        );

        let info = wait_query(&mut c, &call.id, "probes counted", |i| {
            stream(i, 0).dropped_wrong_source == 1 && stream(i, 1).dropped_wrong_source == 1
        })
        .await;
        assert_eq!(stream(&info, 0).latched_peer, a.rtp_addr().to_string());
        assert_eq!(stream(&info, 1).latched_peer, b.rtp_addr().to_string());
        assert_eq!(stream(&info, 0).packets, 5);
        assert_eq!(stream(&info, 1).packets, 5);
    })
    .await
}
