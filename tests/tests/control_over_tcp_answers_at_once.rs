//! The control API over TCP (`--control tcp:...`) answers as fast as over the Unix socket.
//!
//! A reply is written in pieces (HTTP/2 HEADERS, DATA, trailers). Without TCP_NODELAY on the
//! accepted connection, Nagle's algorithm holds the second piece until the client ACKs the
//! first, and the client delays that ACK by up to 40 ms: every Offer took 40+ ms over TCP
//! against well under 1 ms over the Unix socket. The test makes 20 Offers on one connection
//! (as a signalling proxy does) over each transport and requires the TCP median to stay below
//! 20 ms, half the delayed-ACK time, whatever the machine's load.

use std::time::{Duration, Instant};

use sluice_tests::*;

async fn median_offer_ms(d: &Daemon) -> f64 {
    let mut c = d.client().await;
    let caller = Peer::v4();
    let mut ms = Vec::new();
    for i in 0..21 {
        let call_id = format!("nodelay-{i}");
        let t = Instant::now();
        offer(&mut c, &call_id, caller.sdp(&[]), None)
            .await
            .unwrap();
        let took = t.elapsed();
        c.delete(pb::DeleteRequest {
            call_id,
            from_tag: String::new(),
            to_tag: String::new(),
        })
        .await
        .unwrap();
        // The first Offer also pays for the connection's start.
        if i > 0 {
            ms.push(took.as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_over_tcp_is_not_held_by_nagle() {
    bounded(async {
        let port = free_tcp_port();
        let tcp = Daemon::start(&["--control", &format!("tcp:127.0.0.1:{port}")]).await;
        let unix = Daemon::start(&[]).await;
        let (over_tcp, over_unix) = (median_offer_ms(&tcp).await, median_offer_ms(&unix).await);
        println!("median Offer: {over_tcp:.2} ms over TCP, {over_unix:.2} ms over the Unix socket");
        assert!(
            Duration::from_secs_f64(over_tcp / 1e3) < Duration::from_millis(20),
            "Offer over TCP took {over_tcp:.1} ms (median of 20; Unix socket: {over_unix:.2} ms): \
             a reply held back by Nagle's algorithm?"
        );
    })
    .await;
}
