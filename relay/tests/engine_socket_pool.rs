//! The engine's side of the control plane's socket pool, through real loopback sockets: a
//! pooled endpoint forwards nothing (not even to its old partner, which keeps its id), counts
//! what reaches it as `dropped_no_peer` with the time of the last one, and a reused one relays
//! for its new call on the same sockets.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sluice_relay::engine::{Command, EndpointConfig, EndpointId, EngineHandle, Signalling};
use sluice_relay::stats::EndpointCounters;

fn rtp(seq: u16) -> [u8; 172] {
    let mut p = [0u8; 172];
    p[0] = 0x80;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    p
}

/// Adds (or reuses) endpoints `ids` as partners, each with its endpoint's SDP address.
fn pair(
    engine: &EngineHandle,
    ids: [u64; 2],
    sockets: Option<[UdpSocket; 2]>,
    pooled: [u64; 2],
    peers: [&UdpSocket; 2],
) -> [Arc<EndpointCounters>; 2] {
    let counters = [Arc::<EndpointCounters>::default(), Arc::default()];
    let mut sockets = sockets.map(|[a, b]| [Some(a), Some(b)]);
    for k in 0..2 {
        let cmd = match sockets.as_mut() {
            Some(s) => Command::Add {
                id: EndpointId(ids[k]),
                rtp: s[k].take().unwrap(),
                rtcp: None,
                config: EndpointConfig::default(),
                counters: counters[k].clone(),
                state: Arc::default(),
            },
            None => Command::Reuse {
                pooled: EndpointId(pooled[k]),
                id: EndpointId(ids[k]),
                config: EndpointConfig::default(),
                counters: counters[k].clone(),
                state: Arc::default(),
            },
        };
        engine.send(cmd).unwrap();
    }
    for k in 0..2 {
        engine
            .send(Command::Configure {
                id: EndpointId(ids[k]),
                config: EndpointConfig {
                    partner: Some(EndpointId(ids[1 - k])),
                    ..Default::default()
                },
                signalling: Some(Signalling {
                    sdp_rtp: Some(peers[k].local_addr().unwrap()),
                    ..Signalling::default()
                }),
            })
            .unwrap();
    }
    counters
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pooled_endpoints_drop_everything_and_reused_ones_relay() {
    let (ev_tx, _ev_rx) = crossbeam_channel::bounded(64);
    let engine = EngineHandle::spawn(ev_tx).unwrap();
    let bind = || UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ra, rb, a, b) = (bind(), bind(), bind(), bind());
    let (ra_addr, rb_addr) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
    }
    let mut buf = [0u8; 2048];
    let first = pair(&engine, [1, 2], Some([ra, rb]), [0, 0], [&a, &b]);
    a.send_to(&rtp(1), ra_addr).unwrap();
    assert_eq!(b.recv_from(&mut buf).unwrap().0, 172, "call 1 relays");

    // Only side 1 is pooled: its partner, still live under id 2, must not get its packets, nor
    // may side 2's packets leave through the pooled socket.
    engine.send(Command::Pool { id: EndpointId(1) }).unwrap();
    for seq in 2..7 {
        a.send_to(&rtp(seq), ra_addr).unwrap();
    }
    wait_for("5 strays counted", || {
        first[0].dropped_no_peer.load(Relaxed) == 5
    });
    assert!(first[0].last_packet_ns.load(Relaxed) > 0);
    b.send_to(&rtp(1), rb_addr).unwrap();
    assert!(b.recv_from(&mut buf).is_err(), "nothing relayed to b");
    assert!(a.recv_from(&mut buf).is_err(), "nothing relayed to a");
    engine.send(Command::Pool { id: EndpointId(2) }).unwrap();

    // A new call on the same sockets, with endpoints that swapped places.
    let second = pair(&engine, [3, 4], None, [2, 1], [&a, &b]);
    // Endpoint 3 is on rb (b's old socket) and faces a.
    a.send_to(&rtp(100), rb_addr).unwrap();
    let (n, from) = b.recv_from(&mut buf).unwrap();
    assert_eq!(
        (n, from),
        (172, ra_addr),
        "call 2 relays a -> rb -> ra -> b"
    );
    assert_eq!(second[0].packets.load(Relaxed), 1);
    assert_eq!(
        first[0].packets.load(Relaxed),
        1,
        "the strays are not packets of call 1"
    );
    engine.send(Command::Remove { id: EndpointId(3) }).unwrap();
    engine.send(Command::Remove { id: EndpointId(4) }).unwrap();
    engine.shutdown().unwrap();
    assert!(UdpSocket::bind(ra_addr).is_ok() && UdpSocket::bind(rb_addr).is_ok());
}
