//! Relay-wide figures that outlive calls: transcoder counters and calls ended by reason.

use super::*;
use sluice_relay::clock::now_ns;

fn ended(s: &Sessions) -> Vec<(&'static str, u64)> {
    s.statistics().calls_ended.to_vec()
}

#[test]
fn transcoder_counters_keep_what_ended_calls_counted() {
    let (s, _plane) = sessions(20000, 20999, Duration::from_secs(60));
    transcoded_call_up(&s, "c");
    transcoded_call_up(&s, "d");
    {
        let st = s.lock();
        for (call, n) in [("c", 1), ("d", 100)] {
            for side in &st.calls[call].streams[0].sides {
                side.counters.transcoded_out.add(10 * n);
                side.counters.transcode_concealed.add(2 * n);
                side.counters.transcode_fec.add(n);
            }
        }
    }
    let figures = |s: &Sessions| {
        let st = s.statistics();
        (
            st.transcoder_channels,
            st.transcoded_packets,
            st.transcoder_concealed_frames,
            st.transcoder_fec_recovered_frames,
        )
    };
    assert_eq!(figures(&s), (4, 2020, 404, 202));
    s.delete("c", "", "").unwrap();
    assert_eq!(figures(&s), (2, 2020, 404, 202), "ended calls still count");
    s.shutdown();
    assert_eq!(figures(&s), (0, 2020, 404, 202));
}

#[test]
fn a_plain_call_is_not_transcoded() {
    let (s, _plane) = sessions(20000, 20999, Duration::from_secs(60));
    s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    s.answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    let st = s.statistics();
    assert_eq!(st.streams, [[1, 0, 0], [0; 3], [0; 3]]);
    assert_eq!((st.transcoder_channels, st.transcoded_packets), (0, 0));
}

#[test]
fn calls_ended_are_counted_by_reason() {
    let (s, _plane) = sessions(20000, 20999, Duration::from_secs(60));
    let up = |c: &str| {
        s.offer(c, "a", &sdp("alice", 4000, ""), LegOptions::default())
            .unwrap();
    };
    assert_eq!(
        ended(&s),
        [
            ("deleted", 0),
            ("timeout", 0),
            ("b2bua", 0),
            ("shutdown", 0)
        ],
        "every reason from the start"
    );
    for c in ["del", "forked", "b2bua", "old"] {
        up(c);
    }
    s.delete("del", "a", "").unwrap();
    // A forked call ends with its last branch, at a front end's request.
    s.offer_branch(
        "forked",
        "a",
        "b2",
        &sdp("alice", 4000, ""),
        LegOptions::default(),
    )
    .unwrap();
    assert!(s.delete_branch("forked", "").unwrap().is_none());
    assert!(s.delete_branch("forked", "b2").unwrap().is_some());
    s.delete_for("b2bua", "", "", EndReason::B2bua).unwrap();
    // A failed delete ends nothing.
    assert!(s.delete("nope", "", "").is_err());
    assert!(s.delete("old", "zz", "").is_err());
    let timed_out = s.sweep_at(now_ns() + 61 * 1_000_000_000);
    assert_eq!(timed_out, ["old"]);
    for c in ["x", "y"] {
        up(c);
    }
    assert_eq!(s.shutdown(), 2);
    assert_eq!(
        ended(&s),
        [
            ("deleted", 2),
            ("timeout", 1),
            ("b2bua", 1),
            ("shutdown", 2)
        ]
    );
    assert_eq!(s.statistics().calls_timed_out, 1);
}
