//! WatchEvents reports a call's life as it happens, in order, naming the call and the leg.

use std::time::Duration;

use sluice_tests::pb::EventKind;
use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_streamed() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let mut events = Events::watch(&mut c).await;
        let (a, b) = (Peer::v4(), Peer::v4());

        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let call = establish(&mut c, "evented", &a, &b).await;
        let ev = events.next().await;
        assert_eq!(kind(&ev), EventKind::CallCreated, "{ev:?}");
        assert_eq!(ev.call_id, call.id);
        assert_eq!(ev.tag, FROM_TAG);
        assert!(
            ev.unix_ms + 1000 >= before && ev.unix_ms <= before + 10_000,
            "event time {} far from now {before}",
            ev.unix_ms
        );
        // The answer is not an event of its own; nothing until media.
        assert!(
            events
                .next_within(Duration::from_millis(300))
                .await
                .is_none(),
            "unexpected event before media"
        );

        for i in 0..3u16 {
            b.send_rtp(call.b_sends_rtp(), &pcmu(i, 160 * i as u32, 0xb));
        }
        assert_eq!(a.recv_rtp_n(3).len(), 3);
        let ev = events.next().await;
        assert_eq!(kind(&ev), EventKind::MediaStarted, "{ev:?}");
        assert_eq!(ev.call_id, call.id);
        assert_eq!(ev.tag, TO_TAG, "media came from the callee's leg");
        // Once per leg, not per packet.
        assert!(
            events
                .next_within(Duration::from_millis(300))
                .await
                .is_none(),
            "MEDIA_STARTED repeated"
        );

        c.delete(pb::DeleteRequest {
            call_id: call.id.clone(),
            from_tag: FROM_TAG.into(),
            to_tag: TO_TAG.into(),
        })
        .await
        .expect("Delete");
        let ev = events.next().await;
        assert_eq!(kind(&ev), EventKind::Deleted, "{ev:?}");
        assert_eq!(ev.call_id, call.id);
        assert_eq!(ev.tag, FROM_TAG);
        assert!(
            events
                .next_within(Duration::from_millis(300))
                .await
                .is_none(),
            "unexpected event after delete"
        );
    })
    .await
}
