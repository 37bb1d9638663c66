//! The call shapes SIP produces, against the real daemon over gRPC, with media checked:
//! early media (a 183 with SDP, then a 200 from another address), a late offer (the callee's
//! offer in its 200, the caller's answer in the ACK), and a re-offer by the callee (hold and
//! resume). The session tests cover the same shapes in simulated time; these prove the wiring.

use sluice_control::proto::control_client::ControlClient;
use sluice_tests::*;
use tonic::transport::Channel;

async fn offer_from(
    c: &mut ControlClient<Channel>,
    call_id: &str,
    tag: &str,
    sdp: String,
) -> SdpView {
    let r = c
        .offer(pb::OfferRequest {
            call_id: call_id.into(),
            from_tag: tag.into(),
            sdp,
            options: None,
        })
        .await
        .unwrap_or_else(|e| panic!("offer from {tag}: {e}"));
    SdpView::parse(&r.into_inner().sdp)
}

async fn answer_to(
    c: &mut ControlClient<Channel>,
    call_id: &str,
    from_tag: &str,
    to_tag: &str,
    sdp: String,
) -> SdpView {
    let r = c
        .answer(pb::AnswerRequest {
            call_id: call_id.into(),
            from_tag: from_tag.into(),
            to_tag: to_tag.into(),
            sdp,
            options: None,
        })
        .await
        .unwrap_or_else(|e| panic!("answer from {to_tag}: {e}"));
    SdpView::parse(&r.into_inner().sdp)
}

fn relays(from: &Peer, to: &Peer, via: std::net::SocketAddr, seq0: u16) -> usize {
    for i in 0..3u16 {
        from.send_rtp(via, &pcmu(seq0 + i, u32::from(seq0 + i) * 160, 0x5150));
    }
    to.recv_rtp_n(3).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_then_a_200_from_another_address() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (caller, early, answered) = (Peer::v4(), Peer::v4(), Peer::v4());
        let to_callee = offer_from(&mut c, "early", "a", caller.sdp(&[])).await;
        // 183 with SDP: the announcement server's media reaches the caller.
        let to_caller = answer_to(&mut c, "early", "a", "b", early.sdp(&[])).await;
        assert_eq!(relays(&early, &caller, to_callee.rtp_addr(), 0), 3);
        assert_eq!(relays(&caller, &early, to_caller.rtp_addr(), 0), 3);
        // 200 with SDP from another address: the call moves there, the ports stay.
        let to_caller2 = answer_to(&mut c, "early", "a", "b", answered.sdp(&[])).await;
        assert_eq!(
            to_caller2.rtp_addr(),
            to_caller.rtp_addr(),
            "relay ports stay"
        );
        assert_eq!(relays(&caller, &answered, to_caller.rtp_addr(), 10), 3);
        early.assert_silent("the 183's address no longer gets the caller's media");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_offer_then_a_callee_hold_and_resume() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (caller, callee) = (Peer::v4(), Peer::v4());
        // INVITE without SDP: the callee's offer comes in its 200, the caller's answer in the ACK.
        let to_caller = offer_from(&mut c, "late", "callee", callee.sdp(&[])).await;
        let to_callee = answer_to(&mut c, "late", "callee", "caller", caller.sdp(&[])).await;
        assert_eq!(relays(&caller, &callee, to_caller.rtp_addr(), 0), 3);
        assert_eq!(relays(&callee, &caller, to_callee.rtp_addr(), 0), 3);

        // The callee puts the call on hold (re-INVITE with sendonly); the caller answers
        // recvonly. The callee's music still reaches the caller; the caller's media is held.
        let held = offer_from(&mut c, "late", "callee", callee.sdp(&["a=sendonly"])).await;
        assert_eq!(
            held.rtp_addr(),
            to_caller.rtp_addr(),
            "hold keeps the ports"
        );
        assert!(held.has_attr("sendonly"), "{}", held.text);
        answer_to(
            &mut c,
            "late",
            "callee",
            "caller",
            caller.sdp(&["a=recvonly"]),
        )
        .await;
        assert_eq!(relays(&callee, &caller, to_callee.rtp_addr(), 10), 3);
        for i in 0..3u16 {
            caller.send_rtp(to_caller.rtp_addr(), &pcmu(20 + i, 3200, 0x5150));
        }
        callee.assert_silent("a held callee gets nothing from the caller");

        // Resume.
        offer_from(&mut c, "late", "callee", callee.sdp(&[])).await;
        answer_to(&mut c, "late", "callee", "caller", caller.sdp(&[])).await;
        assert_eq!(relays(&caller, &callee, to_caller.rtp_addr(), 30), 3);
        let q = c
            .query(pb::QueryRequest {
                call_id: "late".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .call
            .unwrap();
        let tags: Vec<&str> = q.legs.iter().map(|l| l.tag.as_str()).collect();
        assert_eq!(
            tags,
            ["callee", "caller"],
            "the first offerer's leg comes first"
        );
    })
    .await;
}
