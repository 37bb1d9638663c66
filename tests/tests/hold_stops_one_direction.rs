//! Hold (RFC 3264 8.4, 6.1): a sendonly/recvonly pair lets media through one way only, the
//! direction option overrides what the SDP says, and resuming restores both directions.

use sluice_tests::pb::{Direction, LegOptions};
use sluice_tests::*;

/// Sends `n` packets each way; returns (received by B, received by A). `expect` says which
/// directions should deliver, so that a blocked one is only listened to for [`SILENCE`].
fn exchange(
    a: &Peer,
    b: &Peer,
    call: &Call,
    seq0: u16,
    n: u16,
    expect: (bool, bool),
) -> (usize, usize) {
    for i in 0..n {
        let seq = seq0 + i;
        a.send_rtp(call.a_sends_rtp(), &pcmu(seq, 160 * seq as u32, 0xa));
        b.send_rtp(call.b_sends_rtp(), &pcmu(seq, 160 * seq as u32, 0xb));
    }
    let wait = |delivers: bool| if delivers { RECV_TIMEOUT } else { SILENCE };
    let to_b = b.recv_rtp_n_within(n as usize, wait(expect.0)).len();
    let to_a = a.recv_rtp_n_within(n as usize, wait(expect.1)).len();
    // Nothing beyond what was sent, and nothing late.
    assert!(
        b.recv_rtp_n_within(1, SILENCE).is_empty(),
        "extra packets to B"
    );
    assert!(
        a.recv_rtp_n_within(1, SILENCE).is_empty(),
        "extra packets to A"
    );
    (to_b, to_a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_stops_one_direction() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "hold", &a, &b).await;
        assert_eq!(
            exchange(&a, &b, &call, 0, 5, (true, true)),
            (5, 5),
            "before hold"
        );

        // A puts B on hold.
        let to_b = offer(&mut c, &call.id, a.sdp_version(2, &["a=sendonly"]), None)
            .await
            .unwrap();
        assert!(
            to_b.has_attr("sendonly"),
            "hold not passed on:\n{}",
            to_b.text
        );
        let to_a = answer(&mut c, &call.id, b.sdp_version(2, &["a=recvonly"]), None)
            .await
            .unwrap();
        assert!(to_a.has_attr("recvonly"), "{}", to_a.text);
        assert_eq!(to_b.rtp_addr(), call.to_b.rtp_addr());
        assert_eq!(to_a.rtp_addr(), call.to_a.rtp_addr());
        let info = query(&mut c, &call.id).await.unwrap();
        assert_eq!(stream(&info, 0).direction, "sendonly");
        assert_eq!(stream(&info, 1).direction, "recvonly");

        assert_eq!(
            exchange(&a, &b, &call, 100, 5, (true, false)),
            (5, 0),
            "on hold: only A -> B flows"
        );
        let info = wait_query(&mut c, &call.id, "held packets counted", |i| {
            stream(i, 1).dropped_direction == 5
        })
        .await;
        assert_eq!(stream(&info, 0).dropped_direction, 0);
        assert_eq!(
            stream(&info, 1).packets,
            10,
            "B's packets are received, then dropped"
        );

        // Resume.
        offer(&mut c, &call.id, a.sdp_version(3, &["a=sendrecv"]), None)
            .await
            .unwrap();
        answer(&mut c, &call.id, b.sdp_version(3, &["a=sendrecv"]), None)
            .await
            .unwrap();
        assert_eq!(
            exchange(&a, &b, &call, 200, 5, (true, true)),
            (5, 5),
            "after resume"
        );

        // The direction option overrides the SDP: INACTIVE stops both ways even though both
        // SDPs say sendrecv.
        let inactive = Some(LegOptions {
            direction: Direction::Inactive as i32,
            ..Default::default()
        });
        let to_b = offer(
            &mut c,
            &call.id,
            a.sdp_version(4, &["a=sendrecv"]),
            inactive,
        )
        .await
        .unwrap();
        assert!(
            to_b.has_attr("inactive"),
            "override not in the SDP:\n{}",
            to_b.text
        );
        assert!(!to_b.has_attr("sendrecv"), "{}", to_b.text);
        answer(&mut c, &call.id, b.sdp_version(4, &["a=sendrecv"]), None)
            .await
            .unwrap();
        let info = query(&mut c, &call.id).await.unwrap();
        assert_eq!(stream(&info, 0).direction, "inactive");
        assert_eq!(
            exchange(&a, &b, &call, 300, 5, (false, false)),
            (0, 0),
            "inactive: nothing flows"
        );
        wait_query(&mut c, &call.id, "inactive drops counted", |i| {
            stream(i, 0).dropped_direction == 5 && stream(i, 1).dropped_direction == 10
        })
        .await;
    })
    .await
}
