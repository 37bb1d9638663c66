//! Receive statistics per leg (RFC 3550 A.3 loss, A.8 interarrival jitter) as seen by Query.

use std::time::Duration;

use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_jitter_are_reported() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;

        // Call 1, caller: 105 sequence numbers of which 5 (none at either end) are never sent.
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "loss", &a, &b).await;
        let skipped = [10u16, 33, 60, 61, 90];
        let mut sent = 0;
        for i in 0..105u16 {
            if skipped.contains(&i) {
                continue;
            }
            a.send_rtp(call.a_sends_rtp(), &pcmu(500 + i, 160 * i as u32, 0xa));
            sent += 1;
            if i % 20 == 0 {
                // Keep the relay's and B's socket buffers far from full.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert_eq!(sent, 100);
        assert_eq!(b.recv_rtp_n(100).len(), 100, "B missed packets");
        let info = wait_query(&mut c, &call.id, "100 packets from A", |i| {
            stream(i, 0).packets == 100
        })
        .await;
        assert_eq!(stream(&info, 0).rtp_lost, 5, "{info:#?}");

        // Call 1, callee: 20 packets paced like a real phone (20 ms apart, 160 samples apart).
        for i in 0..20u16 {
            b.send_rtp(
                call.b_sends_rtp(),
                &pcmu(7000 + i, 77 + 160 * i as u32, 0xb),
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(a.recv_rtp_n(20).len(), 20, "A missed packets");
        let info = wait_query(&mut c, &call.id, "20 packets from B", |i| {
            stream(i, 1).packets == 20
        })
        .await;
        let paced = stream(&info, 1);
        assert_eq!(paced.rtp_lost, 0);
        let paced_jitter = paced.jitter_ms;

        // Call 2, caller: the same 20 ms timestamp steps, all sent back to back, so every
        // packet arrives ~20 ms "early": a large jitter.
        let (a2, b2) = (Peer::v4(), Peer::v4());
        let call2 = establish(&mut c, "burst", &a2, &b2).await;
        for i in 0..50u16 {
            a2.send_rtp(call2.a_sends_rtp(), &pcmu(i, 160 * i as u32, 0xc));
        }
        assert_eq!(b2.recv_rtp_n(50).len(), 50, "B2 missed packets");
        let info = wait_query(&mut c, &call2.id, "50 packets from A2", |i| {
            stream(i, 0).packets == 50
        })
        .await;
        let burst = stream(&info, 0);
        assert_eq!(burst.rtp_lost, 0);
        assert!(
            burst.jitter_ms > 1.0,
            "a burst of 20 ms-spaced timestamps must show jitter, got {} ms",
            burst.jitter_ms
        );
        assert!(
            paced_jitter < burst.jitter_ms,
            "paced stream jitter {paced_jitter} ms should be below the burst's {} ms",
            burst.jitter_ms
        );
        assert!(
            paced_jitter < 10.0,
            "a paced loopback stream should have small jitter, got {paced_jitter} ms"
        );
    })
    .await
}
