//! The socket pool seen from the requests: a retired side's sockets are kept, handed to a later
//! side only after the quarantine, closed when there is no room or when unused for long, and
//! never lost on the way (a rollback puts them back).

use super::sim::Sim;
use super::*;
use crate::session::socket_pool::{IDLE, QUARANTINE};

/// The relay port of each side of call `call`'s first stream.
fn ports(sim: &Sim, call: &str) -> [u16; 2] {
    let st = sim.s.lock();
    let s = &st.calls[call].streams[0];
    [s.sides[0].rtp_port, s.sides[1].rtp_port]
}

fn up(sim: &Sim, call: &str) -> [u16; 2] {
    sim.offer(call, "a", &sdp("alice", 4000, ""));
    sim.answer(call, "a", "b", &sdp("bob", 5000, ""));
    ports(sim, call)
}

fn counts(sim: &Sim) -> (usize, usize) {
    let st = sim.plane.0.lock().unwrap();
    (st.live.len(), st.pooled.len())
}

#[test]
fn ended_sides_are_reused_after_the_quarantine_and_closed_when_idle() {
    let sim = Sim::new();
    let a = up(&sim, "a");
    sim.s.delete("a", "", "").unwrap();
    assert_eq!(counts(&sim), (0, 2));
    let st = sim.s.statistics();
    assert_eq!((st.ports_in_use, st.ports_free), (0, 1000));
    // Still in quarantine: fresh ports.
    let b = up(&sim, "b");
    assert!(b.iter().all(|p| !a.contains(p)), "{a:?} {b:?}");
    sim.s.delete("b", "", "").unwrap();
    assert_eq!(counts(&sim), (0, 4));
    sim.advance(QUARANTINE);
    let c = up(&sim, "c");
    assert!(
        c.iter().all(|p| a.contains(p) || b.contains(p)),
        "{a:?} {b:?} {c:?}"
    );
    assert_eq!(counts(&sim), (2, 2));
    assert_eq!(sim.s.statistics().ports_in_use, 4);
    // The pool holds 4 (the test config's size): with c, d and e ending, e's sides find no
    // room and close.
    let d = up(&sim, "d");
    assert_eq!(counts(&sim), (4, 0));
    let e = up(&sim, "e");
    assert!(e.iter().all(|p| !a.contains(p) && !b.contains(p)));
    for call in ["c", "d", "e"] {
        sim.s.delete(call, "", "").unwrap();
    }
    assert_eq!(counts(&sim), (0, 4));
    let st = sim.s.lock();
    assert!(e.iter().all(|&p| !st.ports.is_allocated(p)), "{e:?}");
    assert!(c.iter().chain(&d).all(|&p| st.ports.is_allocated(p)));
    assert_eq!(st.ports.in_use(), 8);
    drop(st);
    // Unused for IDLE: closed, and their ports back in the allocator.
    sim.advance(IDLE);
    assert_eq!(counts(&sim), (0, 0));
    assert_eq!(sim.s.lock().ports.in_use(), 0);
    let st = sim.s.statistics();
    assert_eq!((st.ports_in_use, st.ports_free), (0, 1000));
}

/// A side taken from the pool for an offer that then fails goes back to the pool, not lost
/// and not closed under the relay's feet.
#[test]
fn a_failed_offer_puts_pooled_sides_back() {
    let sim = Sim::with(
        SessionConfig {
            media_ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            ..test_config(25000, 25003)
        },
        7,
    );
    up(&sim, "a");
    sim.s.delete("a", "", "").unwrap();
    sim.advance(QUARANTINE);
    // The IPv4 side comes from the pool; the IPv6 one finds the range full, and the pool's
    // other (IPv4) side is closed for a later request.
    let v6 = LegOptions {
        family: Family::V6,
        ..Default::default()
    };
    let err = sim
        .s
        .offer("b", "a", &sdp("alice", 4000, ""), v6)
        .unwrap_err();
    assert!(err.to_string().contains("no free relay ports"), "{err}");
    assert_eq!(counts(&sim), (0, 1));
    // The side taken for "b" is still there for the next call.
    up(&sim, "c");
    assert_eq!(counts(&sim), (2, 0));
}

/// The relay thread counts what reaches a pooled socket in the retired side's counters; it
/// joins the totals (as no_peer) when the socket leaves the pool.
#[test]
fn strays_to_pooled_sockets_are_counted_as_no_peer() {
    let sim = Sim::new();
    up(&sim, "a");
    let counters = {
        let st = sim.s.lock();
        st.calls["a"].streams[0].sides[0].counters.clone()
    };
    sim.s.delete("a", "", "").unwrap();
    counters.dropped_no_peer.add(3);
    sim.advance(IDLE);
    let st = sim.s.statistics();
    assert_eq!(st.dropped_by_reason[4], ("no_peer", 3));
    assert_eq!(st.packets_dropped, 3);
}

/// A pool that holds the last free ports of the range gives them up to a new call, even in
/// quarantine, rather than the call failing.
#[test]
fn the_pool_makes_room_when_the_range_runs_out() {
    let sim = Sim::with(test_config(25000, 25007), 9);
    up(&sim, "a");
    up(&sim, "b");
    sim.s.delete("a", "", "").unwrap();
    sim.s.delete("b", "", "").unwrap();
    assert_eq!(counts(&sim), (0, 4));
    up(&sim, "c");
    assert_eq!(counts(&sim), (2, 2));
    assert_eq!(sim.s.lock().ports.in_use(), 8);
}
