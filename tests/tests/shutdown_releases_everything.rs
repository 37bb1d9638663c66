//! SIGTERM ends sluice cleanly and promptly: exit status 0, control socket removed, every relay
//! port closed, even with calls, media and control clients still active.

use std::time::{Duration, Instant};

use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_everything() {
    bounded(async {
        let mut d = Daemon::start(&[]).await;
        // A connected control client (a SIP proxy keeps one open) stays connected throughout.
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "in-progress", &a, &b).await;
        for i in 0..5u16 {
            a.send_rtp(call.a_sends_rtp(), &pcmu(i, 160 * i as u32, 0xa));
        }
        assert_eq!(b.recv_rtp_n(5).len(), 5);

        let t = Instant::now();
        let status = d
            .terminate(Duration::from_secs(5))
            .expect("sluice did not exit within 5 s of SIGTERM");
        assert_eq!(
            status.code(),
            Some(0),
            "exit status after SIGTERM: {status}"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            !d.socket.exists(),
            "control socket {} left behind",
            d.socket.display()
        );
        for addr in [
            call.a_sends_rtp(),
            call.a_sends_rtcp(),
            call.b_sends_rtp(),
            call.b_sends_rtcp(),
        ] {
            std::net::UdpSocket::bind(addr)
                .unwrap_or_else(|e| panic!("relay port {addr} still bound after exit: {e}"));
        }
        assert!(
            d.log_text().contains("every relay socket closed"),
            "no orderly shutdown in the log"
        );
        // The client notices: its next request fails instead of hanging.
        let r = tokio::time::timeout(Duration::from_secs(3), c.ping(pb::PingRequest {})).await;
        assert!(matches!(r, Ok(Err(_))), "ping after shutdown: {r:?}");
    })
    .await
}

/// An operator's `sluice ctl watch` (an open WatchEvents stream) must not keep sluice from
/// stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_an_event_watcher() {
    bounded(async {
        let mut d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let mut events = Events::watch(&mut c).await;
        let (a, b) = (Peer::v4(), Peer::v4());
        establish(&mut c, "watched", &a, &b).await;
        assert_eq!(kind(&events.next().await), pb::EventKind::CallCreated);

        let status = d.terminate(Duration::from_secs(5));
        assert!(
            status.is_some(),
            "sluice did not exit within 5 s of SIGTERM while a WatchEvents stream was open"
        );
        assert_eq!(status.and_then(|s| s.code()), Some(0));
        assert!(!d.socket.exists(), "control socket left behind");
        // The watcher is told the stream ended rather than waiting forever.
        let end = tokio::time::timeout(
            Duration::from_secs(3),
            events.next_within(Duration::from_secs(3)),
        )
        .await;
        assert!(matches!(end, Ok(None)), "watcher not released: {end:?}");
    })
    .await
}
