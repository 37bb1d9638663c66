//! Relay ports go back to the pool, and to the operating system, when a call ends: by Delete, or
//! by the inactivity timeout. With the socket pool (the default) a later call reuses them after
//! 100 ms, and unused they are closed within 2.5 s; without it they are closed at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_tests::pb::EventKind;
use sluice_tests::*;

fn relay_sockets(call: &Call) -> [SocketAddr; 4] {
    [
        call.a_sends_rtp(),
        call.a_sends_rtcp(),
        call.b_sends_rtp(),
        call.b_sends_rtcp(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_frees_ports() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "to-delete", &a, &b).await;
        a.send_rtp(call.a_sends_rtp(), &pcmu(1, 160, 1));
        assert!(b.recv_rtp().is_some());
        assert_eq!(statistics(&mut c).await.ports_in_use, 4);
        for addr in relay_sockets(&call) {
            assert!(
                std::net::UdpSocket::bind(addr).is_err(),
                "relay port {addr} is not actually bound by sluice"
            );
        }

        let reply = c
            .delete(pb::DeleteRequest {
                call_id: call.id.clone(),
                from_tag: FROM_TAG.into(),
                to_tag: String::new(),
            })
            .await
            .expect("Delete")
            .into_inner();
        let last = reply.call.expect("final state in the DeleteReply");
        assert_eq!(
            stream(&last, 0).packets,
            1,
            "final counters in the DeleteReply"
        );

        let st = statistics(&mut c).await;
        assert_eq!(st.ports_in_use, 0);
        assert_eq!(st.calls_current, 0);
        assert_eq!(st.calls_total, 1);
        assert_eq!(st.packets_relayed, 1, "totals survive the call");
        let err = query(&mut c, &call.id).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        // A stray to a pooled port (the ended call's caller still talking) goes nowhere.
        a.send_rtp(call.a_sends_rtp(), &pcmu(2, 320, 1));
        assert!(b.recv_rtp().is_none(), "a pooled socket relayed");
        // After the quarantine, the next call gets the pooled sockets, which relay for it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (a2, b2) = (Peer::v4(), Peer::v4());
        let next = establish(&mut c, "next", &a2, &b2).await;
        let mut reused = relay_sockets(&next);
        let mut old = relay_sockets(&call);
        reused.sort();
        old.sort();
        assert_eq!(
            reused, old,
            "the second call reuses the first one's sockets"
        );
        a2.send_rtp(next.a_sends_rtp(), &pcmu(1, 160, 2));
        assert!(b2.recv_rtp().is_some(), "reused sockets relay");
        let st = statistics(&mut c).await;
        assert_eq!(st.ports_in_use, 4);
        assert_eq!(
            st.packets_dropped, 1,
            "the stray, counted when its socket left the pool"
        );
        c.delete(pb::DeleteRequest {
            call_id: next.id.clone(),
            from_tag: FROM_TAG.into(),
            to_tag: String::new(),
        })
        .await
        .expect("Delete");
        // Unused, they go back to the system.
        let ended = Instant::now();
        for addr in relay_sockets(&next) {
            can_bind(addr).unwrap_or_else(|e| panic!("freed relay port {addr} still bound: {e}"));
        }
        assert!(
            ended.elapsed() > Duration::from_millis(1500),
            "closed before the pool's idle time"
        );
    })
    .await
}

/// `--socket-pool 0`: an ended call's sockets close at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pool_ports_close_at_once() {
    bounded(async {
        let d = Daemon::start(&["--socket-pool", "0"]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "to-delete", &a, &b).await;
        c.delete(pb::DeleteRequest {
            call_id: call.id.clone(),
            from_tag: FROM_TAG.into(),
            to_tag: String::new(),
        })
        .await
        .expect("Delete");
        for addr in relay_sockets(&call) {
            can_bind_within(addr, Duration::from_millis(500))
                .unwrap_or_else(|e| panic!("freed relay port {addr} still bound: {e}"));
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_frees_ports() {
    bounded(async {
        let d = Daemon::start(&["--timeout", "1"]).await;
        let mut c = d.client().await;
        let mut events = Events::watch(&mut c).await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "idle", &a, &b).await;
        let signalled = Instant::now();
        assert_eq!(kind(&events.next().await), EventKind::CallCreated);
        assert_eq!(statistics(&mut c).await.ports_in_use, 4);

        // No media, no signalling: gone 1 s later, plus up to one sweep period.
        let gone = loop {
            match query(&mut c, &call.id).await {
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::NotFound, "{s:?}");
                    break signalled.elapsed();
                }
                Ok(_) => {
                    assert!(
                        signalled.elapsed() < Duration::from_millis(2500),
                        "idle call still there after 2.5 s with --timeout 1"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert!(
            gone >= Duration::from_millis(900),
            "call timed out after {gone:?}, before its 1 s timeout"
        );
        let st = statistics(&mut c).await;
        assert_eq!(st.calls_timed_out, 1);
        assert_eq!(st.calls_current, 0);
        assert_eq!(st.ports_in_use, 0);
        for addr in relay_sockets(&call) {
            can_bind(addr)
                .unwrap_or_else(|e| panic!("timed-out relay port {addr} still bound: {e}"));
        }
        let ev = events.next().await;
        assert_eq!(kind(&ev), EventKind::TimedOut, "{ev:?}");
        assert_eq!(ev.call_id, call.id);
    })
    .await
}

/// Media keeps a call alive past the timeout; only silence ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_keeps_a_call_alive() {
    bounded(async {
        let d = Daemon::start(&["--timeout", "1"]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "talking", &a, &b).await;
        let start = Instant::now();
        let mut seq = 0u16;
        while start.elapsed() < Duration::from_millis(2200) {
            a.send_rtp(call.a_sends_rtp(), &pcmu(seq, 160 * seq as u32, 1));
            seq += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let info = query(&mut c, &call.id)
            .await
            .expect("a call with media timed out");
        assert!(stream(&info, 0).packets >= 10);
        assert_eq!(statistics(&mut c).await.calls_timed_out, 0);
    })
    .await
}
