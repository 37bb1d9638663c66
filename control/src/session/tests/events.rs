//! Event delivery: every subscriber gets every event of its own in order, a subscriber that
//! stops reading loses only its own events and is told how many, and timeouts reach everyone.

use super::sim::*;
use super::*;

fn kinds(evs: &[CallEvent]) -> Vec<(EventKind, String)> {
    evs.iter().map(|e| (e.kind, e.call_id.clone())).collect()
}

#[test]
fn a_timed_out_call_reaches_every_subscriber() {
    let sim = Sim::new();
    let (mut first, mut second) = (sim.s.subscribe(), sim.s.subscribe());
    sim.offer("c", "a", &sdp_at("alice", 1, "192.0.2.10", 4000, ""));
    sim.answer("c", "a", "b", &sdp_at("bob", 1, "192.0.2.20", 5000, ""));
    assert!(sim.advance(Duration::from_millis(59_500)).is_empty());
    assert_eq!(sim.advance(SWEEP), ["c"]);
    for ev in [&mut first, &mut second] {
        let got = drain(ev);
        assert_eq!(
            kinds(&got),
            [
                (EventKind::CallCreated, "c".into()),
                (EventKind::TimedOut, "c".into())
            ]
        );
        assert_eq!(got[1].detail, "no media or signalling for 60 s");
        assert_eq!(got[1].unix_ms, sim.clock.unix_ms());
    }
    assert!(matches!(sim.s.query("c"), Err(SessionError::NotFound(_))));
}

#[tokio::test(flavor = "current_thread")]
async fn recv_wakes_for_the_next_event_and_ends_with_the_sessions() {
    let sim = Sim::new();
    let mut ev = sim.s.subscribe();
    let waiter = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(e) = ev.recv().await {
            got.push(e.kind);
        }
        got
    });
    // The waiter parks on an empty queue before anything happens.
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    sim.offer("c", "a", &sdp_at("alice", 1, "192.0.2.10", 4000, ""));
    tokio::task::yield_now().await;
    assert_eq!(sim.advance(Duration::from_secs(60)), ["c"]);
    // With the sessions gone, the waiter reads what is queued and then sees the end.
    drop(sim);
    assert_eq!(
        waiter.await.unwrap(),
        [EventKind::CallCreated, EventKind::TimedOut]
    );
}

/// A `MakeWriter` that keeps what tracing writes, to count log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Captured {
    fn warnings(&self) -> usize {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains("WARN") && l.contains("not keeping up"))
            .count()
    }
}

/// `n` events: a call created and deleted, `n / 2` times.
fn churn(sim: &Sim, from: usize, n: usize, mut after_each: impl FnMut()) {
    for i in from..from + n / 2 {
        let id = format!("c{i}");
        sim.offer(&id, "a", &sdp_at("alice", 1, "192.0.2.10", 4000, ""));
        after_each();
        sim.s.delete(&id, "", "").unwrap();
        after_each();
    }
}

#[test]
fn a_stalled_subscriber_gets_its_queue_then_the_missed_count_then_what_follows() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = Sim::new();
    let mut stalled = sim.s.subscribe();
    let mut reader = sim.s.subscribe();
    let mut read = Vec::new();
    churn(&sim, 0, 10_000, || read.extend(drain(&mut reader)));
    let expected: Vec<_> = (0..5_000)
        .flat_map(|i| {
            [
                (EventKind::CallCreated, format!("c{i}")),
                (EventKind::Deleted, format!("c{i}")),
            ]
        })
        .collect();
    assert_eq!(kinds(&read), expected, "the reader lost nothing");
    assert_eq!(log.warnings(), 1, "one warning for the episode");
    let missed = (10_000 - EVENT_QUEUE_LEN) as u64;
    assert_eq!(sim.s.statistics().events_missed, missed);

    // The stalled one starts reading; an event happens while it is part way through.
    let mut got: Vec<_> = (0..100).map_while(|_| stalled.try_recv()).collect();
    sim.offer("later", "a", &sdp_at("alice", 1, "192.0.2.10", 4000, ""));
    got.extend(drain(&mut stalled));
    assert_eq!(got.len(), EVENT_QUEUE_LEN + 2);
    assert_eq!(
        kinds(&got[..EVENT_QUEUE_LEN]),
        expected[..EVENT_QUEUE_LEN],
        "the first {EVENT_QUEUE_LEN} in order"
    );
    let overflow = &got[EVENT_QUEUE_LEN];
    assert_eq!(overflow.kind, EventKind::Overflow { missed });
    assert_eq!(
        (overflow.call_id.as_str(), overflow.detail.as_str()),
        ("", "5904")
    );
    assert_eq!(
        kinds(&got[EVENT_QUEUE_LEN + 1..]),
        [(EventKind::CallCreated, "later".into())]
    );
    assert_eq!(
        kinds(&drain(&mut reader)),
        [(EventKind::CallCreated, "later".into())]
    );

    // Caught up: the next event comes as it is, with no overflow of its own.
    sim.s.delete("later", "", "").unwrap();
    assert_eq!(
        kinds(&drain(&mut stalled)),
        [(EventKind::Deleted, "later".into())]
    );

    // A second episode, drained only after it: the count comes after the queue, and is logged
    // once more.
    churn(&sim, 5_000, EVENT_QUEUE_LEN + 10, || {
        drain(&mut reader);
    });
    let got = drain(&mut stalled);
    assert_eq!(got.len(), EVENT_QUEUE_LEN + 1);
    assert_eq!(got.last().unwrap().kind, EventKind::Overflow { missed: 10 });
    assert_eq!(log.warnings(), 2);
    assert_eq!(sim.s.statistics().events_missed, missed + 10);
    assert!(drain(&mut stalled).is_empty());
}

#[test]
fn a_dropped_subscriber_is_forgotten() {
    let sim = Sim::new();
    let gone = sim.s.subscribe();
    drop(gone);
    churn(&sim, 0, EVENT_QUEUE_LEN + 2, || {});
    assert_eq!(
        sim.s.statistics().events_missed,
        0,
        "nobody is counted as missing events after unsubscribing"
    );
}
