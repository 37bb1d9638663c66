//! A re-INVITE (re-offer on the same call from the same tag) must not move the relay ports, and
//! the o= version handed out follows RFC 3264 8 (same SDP: same version; changed: +1).

use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reoffer_keeps_ports() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call_id = "reinvite";

        let offer_sdp = a.sdp_version(5, &["a=ptime:20"]);
        let to_b = offer(&mut c, call_id, offer_sdp.clone(), None)
            .await
            .unwrap();
        let answer_sdp = b.sdp_version(70, &[]);
        let to_a = answer(&mut c, call_id, answer_sdp.clone(), None)
            .await
            .unwrap();

        // Identical re-offer (a session refresh) and identical answer.
        let to_b2 = offer(&mut c, call_id, offer_sdp.clone(), None)
            .await
            .unwrap();
        let to_a2 = answer(&mut c, call_id, answer_sdp.clone(), None)
            .await
            .unwrap();
        for (first, again, who) in [(&to_b, &to_b2, "callee"), (&to_a, &to_a2, "caller")] {
            assert_eq!(
                again.rtp_addr(),
                first.rtp_addr(),
                "{who}'s relay RTP address moved"
            );
            assert_eq!(
                again.rtcp_addr(),
                first.rtcp_addr(),
                "{who}'s relay RTCP address moved"
            );
            assert_eq!(
                again.version, first.version,
                "unchanged SDP to the {who} must keep its o= version:\n{}\n---\n{}",
                first.text, again.text
            );
        }

        // A changed re-offer: the caller bumps its own version by several and changes ptime;
        // the callee answers with a changed SDP too.
        let to_b3 = offer(&mut c, call_id, a.sdp_version(9, &["a=ptime:30"]), None)
            .await
            .unwrap();
        let to_a3 = answer(&mut c, call_id, b.sdp_version(71, &["a=ptime:30"]), None)
            .await
            .unwrap();
        for (first, again, who) in [(&to_b, &to_b3, "callee"), (&to_a, &to_a3, "caller")] {
            assert_eq!(
                again.rtp_addr(),
                first.rtp_addr(),
                "{who}'s relay RTP address moved"
            );
            assert_eq!(
                again.rtcp_addr(),
                first.rtcp_addr(),
                "{who}'s relay RTCP address moved"
            );
            assert_eq!(
                again.version,
                first.version + 1,
                "changed SDP to the {who} must carry o= version + 1:\n{}\n---\n{}",
                first.text,
                again.text
            );
        }
        assert!(to_b3.has_attr("ptime:30"), "{}", to_b3.text);

        let info = query(&mut c, call_id).await.unwrap();
        assert_eq!(info.legs.len(), 2);
        assert_eq!(info.legs[0].streams.len(), 1, "the re-offer added a stream");
        let st = statistics(&mut c).await;
        assert_eq!(st.ports_in_use, 4, "re-offers must not allocate ports");
        assert_eq!(st.calls_total, 1);

        // Media still flows both ways through the same ports.
        for i in 0..5u16 {
            a.send_rtp(to_a3.rtp_addr(), &pcmu(i, 160 * i as u32, 1));
            b.send_rtp(to_b3.rtp_addr(), &pcmu(i, 160 * i as u32, 2));
        }
        assert_eq!(b.recv_rtp_n(5).len(), 5, "A -> B broken after the re-offer");
        assert_eq!(a.recv_rtp_n(5).len(), 5, "B -> A broken after the re-offer");
    })
    .await
}

/// A re-INVITE from the callee (the offer now comes from the to-tag) also keeps the ports, and
/// the caller answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_reoffer_keeps_ports() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "callee-reinvite", &a, &b).await;

        let r = c
            .offer(pb::OfferRequest {
                call_id: call.id.clone(),
                from_tag: TO_TAG.into(),
                sdp: b.sdp_version(2, &["a=ptime:30"]),
                options: None,
            })
            .await
            .expect("re-offer from the callee")
            .into_inner();
        let to_a = SdpView::parse(&r.sdp);
        assert_eq!(
            to_a.rtp_addr(),
            call.a_sends_rtp(),
            "caller's relay port moved"
        );
        assert_eq!(to_a.rtcp_addr(), call.a_sends_rtcp());
        assert_eq!(to_a.version, call.to_a.version + 1, "{}", to_a.text);
        let r = c
            .answer(pb::AnswerRequest {
                call_id: call.id.clone(),
                from_tag: TO_TAG.into(),
                to_tag: FROM_TAG.into(),
                sdp: a.sdp_version(2, &["a=ptime:30"]),
                options: None,
            })
            .await
            .expect("answer from the caller")
            .into_inner();
        let to_b = SdpView::parse(&r.sdp);
        assert_eq!(
            to_b.rtp_addr(),
            call.b_sends_rtp(),
            "callee's relay port moved"
        );
        assert_eq!(to_b.version, call.to_b.version + 1, "{}", to_b.text);

        let info = query(&mut c, &call.id).await.unwrap();
        assert_eq!(
            info.legs[0].tag, FROM_TAG,
            "legs swapped by the callee's re-offer"
        );
        assert_eq!(info.legs[1].tag, TO_TAG);
        assert_eq!(statistics(&mut c).await.ports_in_use, 4);
        for i in 0..3u16 {
            a.send_rtp(call.a_sends_rtp(), &pcmu(i, 160 * i as u32, 1));
            b.send_rtp(call.b_sends_rtp(), &pcmu(i, 160 * i as u32, 2));
        }
        assert_eq!(b.recv_rtp_n(3).len(), 3);
        assert_eq!(a.recv_rtp_n(3).len(), 3);
    })
    .await
}

/// A re-offer naming a new address (call transfer, new device) moves the media there, on the
/// same relay ports, even though the old address had latched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reoffer_to_a_new_address_moves_media() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, a2, b) = (Peer::v4(), Peer::v4(), Peer::v4());
        let call = establish(&mut c, "moved", &a, &b).await;
        a.send_rtp(call.a_sends_rtp(), &pcmu(1, 160, 0xa));
        assert!(b.recv_rtp().is_some());
        wait_query(&mut c, &call.id, "A latched", |i| {
            stream(i, 0).latched_peer == a.rtp_addr().to_string()
        })
        .await;

        let to_b = offer(&mut c, &call.id, a2.sdp_version(2, &[]), None)
            .await
            .unwrap();
        assert_eq!(to_b.rtp_addr(), call.b_sends_rtp());
        let to_a = answer(&mut c, &call.id, b.sdp(&[]), None).await.unwrap();
        assert_eq!(to_a.rtp_addr(), call.a_sends_rtp());

        // Before the new device sends anything, B's media already goes to it.
        b.send_rtp(call.b_sends_rtp(), &pcmu(1, 160, 0xb));
        assert!(
            a2.recv_rtp().is_some(),
            "media did not move to the new SDP address"
        );
        assert!(
            !receives_anything(&a.rtp),
            "media still goes to the old device"
        );
        a2.send_rtp(call.a_sends_rtp(), &pcmu(50, 8000, 0xa2));
        assert!(b.recv_rtp().is_some(), "the new device cannot send");
        // The old device is now a stranger.
        a.send_rtp(call.a_sends_rtp(), &pcmu(2, 320, 0xa));
        b.assert_silent("the old device must not be heard any more");
    })
    .await
}
