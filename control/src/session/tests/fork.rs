//! Forking (rtpengine's via-branch): branches of one offer with ports of their own facing their
//! callees, the last to answer relayed, the others released when one is confirmed or deleted.

use super::sim::*;
use super::*;

const ALICE: &str = "192.0.2.10";

fn alice() -> String {
    sdp_at("alice", 1, ALICE, 4000, "")
}

impl Sim {
    fn offer_to(&self, branch: &str) -> String {
        self.s
            .offer_branch("c", "a", branch, &alice(), LegOptions::default())
            .unwrap()
    }

    /// An answer from the callee of `branch` (tag `to`) at `ip:5000`.
    fn answer_from(&self, branch: &str, to: &str, ip: &str, final_answer: bool) -> String {
        self.s
            .answer_branch(
                "c",
                "a",
                to,
                branch,
                &sdp_at(to, 1, ip, 5000, ""),
                LegOptions::default(),
                final_answer,
            )
            .unwrap()
    }

    fn partner(&self, id: EndpointId) -> Option<EndpointId> {
        self.configures(id).last().unwrap().0.partner
    }

    /// A packet from endpoint `id`, parked or not, as the relay thread reports it.
    fn packet_from(&self, id: EndpointId) {
        let counters = {
            let st = self.s.lock();
            let call = &st.calls["c"];
            let held = call.streams.iter().flat_map(|s| s.sides.iter());
            let parked = call.forks.iter().flat_map(|f| f.state.sides.iter());
            held.chain(parked)
                .find(|s| s.endpoint == id)
                .unwrap()
                .counters
                .clone()
        };
        counters
            .last_packet_ns
            .store(self.clock.now_ns(), std::sync::atomic::Ordering::Relaxed);
        self.s.on_engine_event(EngineEvent::MediaStarted { id });
    }
}

#[test]
fn two_branches_ring_one_answers_and_the_others_ports_are_released() {
    let sim = Sim::new();
    let mut ev = sim.s.subscribe();
    let to_b1 = sim.offer_to("z9hG4bK.1");
    let (caller, b1) = (sim.endpoint("c", 0, 0), sim.endpoint("c", 0, 1));
    assert_eq!(sim.ports_in_use(), 4);
    let to_b2 = sim.offer_to("z9hG4bK.2");
    let b2 = sim.endpoint("c", 0, 1);
    assert_eq!(
        sim.ports_in_use(),
        6,
        "the second branch has ports of its own facing its callee; the caller's are shared"
    );
    assert_ne!(port_of(&to_b1), port_of(&to_b2));
    assert_eq!(sim.live(), HashSet::from([caller, b1, b2]));

    // A 183 from each: the caller sees the same relay port in both, and hears the branch that
    // answered last; the other's sockets stay open but silent.
    let early1 = sim.answer_from("z9hG4bK.1", "b1", "192.0.2.21", false);
    assert_eq!(sim.partner(caller), Some(b1));
    let early2 = sim.answer_from("z9hG4bK.2", "b2", "192.0.2.22", false);
    assert_eq!(port_of(&early1), port_of(&early2));
    assert_eq!(sim.partner(caller), Some(b2));
    assert_eq!(sim.flags(b2), (true, true));
    assert_eq!(sim.flags(b1), (false, false));
    assert_eq!(sim.destination(b1), Some(addr("192.0.2.21:5000")));
    assert_eq!(sim.destination(b2), Some(addr("192.0.2.22:5000")));
    assert_eq!(sim.s.query("c").unwrap().legs[1].tag.as_deref(), Some("b2"));
    // Early media from the parked branch is still that branch's.
    sim.packet_from(b1);

    // The 200 comes from branch 1: it is relayed, the same SDP as its 183 goes to the caller,
    // and branch 2's sockets and ports are gone.
    let ok = sim.answer_from("z9hG4bK.1", "b1", "192.0.2.21", true);
    assert_eq!(ok, early1);
    assert_eq!(sim.ports_in_use(), 4);
    assert_eq!(sim.live(), HashSet::from([caller, b1]));
    assert_eq!(sim.partner(caller), Some(b1));
    assert_eq!(sim.flags(b1), (true, true));
    let r = sim.s.query("c").unwrap();
    assert_eq!(r.legs[1].tag.as_deref(), Some("b1"));
    assert_eq!(r.legs[1].streams[0].sdp_peer, Some(addr("192.0.2.21:5000")));

    // Confirmed: a re-INVITE's new Via branch is just a re-offer, and branch 2's late 200 is
    // another dialog.
    let re = sim
        .s
        .offer_branch(
            "c",
            "a",
            "z9hG4bK.3",
            &sdp_at("alice", 2, ALICE, 4000, "a=sendonly\r\n"),
            LegOptions::default(),
        )
        .unwrap();
    assert_eq!(port_of(&re), port_of(&to_b1));
    assert_eq!(sim.ports_in_use(), 4);
    let late = sim.s.answer_branch(
        "c",
        "a",
        "b2",
        "z9hG4bK.2",
        &sdp_at("b2", 1, "192.0.2.22", 5000, ""),
        LegOptions::default(),
        true,
    );
    assert!(matches!(late, Err(SessionError::BadRequest(_))), "{late:?}");

    sim.s.delete("c", "a", "b1").unwrap();
    assert_eq!(sim.ports_in_use(), 0);
    assert!(sim.live().is_empty());
    let got: Vec<_> = drain(&mut ev)
        .into_iter()
        .map(|e| (e.kind, e.tag))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::CallCreated, "a".into()),
            (EventKind::MediaStarted, "b1".into()),
            (EventKind::Deleted, "a".into()),
        ]
    );
}

#[test]
fn declined_branches_are_deleted_one_by_one() {
    let sim = Sim::new();
    sim.offer_to("1");
    let b1 = sim.endpoint("c", 0, 1);
    sim.offer_to("2");
    let b2 = sim.endpoint("c", 0, 1);
    sim.offer_to("3");
    let (caller, b3) = (sim.endpoint("c", 0, 0), sim.endpoint("c", 0, 1));
    assert_eq!(sim.ports_in_use(), 8);
    sim.answer_from("2", "b2", "192.0.2.22", false);
    assert_eq!(sim.partner(caller), Some(b2));

    // Branch 2, the one relayed, answers 486: the branch with the latest request before it
    // (3) takes over.
    assert!(sim.s.delete_branch("c", "2").unwrap().is_none());
    assert_eq!(sim.ports_in_use(), 6);
    assert_eq!(sim.live(), HashSet::from([caller, b1, b3]));
    assert_eq!(sim.partner(caller), Some(b3));
    assert_eq!(sim.flags(b3), (true, true));
    assert!(matches!(
        sim.s.delete_branch("c", "2"),
        Err(SessionError::BadRequest(_))
    ));

    assert!(sim.s.delete_branch("c", "1").unwrap().is_none());
    assert_eq!(sim.ports_in_use(), 4);
    // The last branch ends the call.
    let mut ev = sim.s.subscribe();
    let last = sim
        .s
        .delete_branch("c", "3")
        .unwrap()
        .expect("the call ended");
    assert_eq!(last.legs[0].tag.as_deref(), Some("a"));
    assert_eq!(sim.ports_in_use(), 0);
    assert!(sim.live().is_empty());
    assert_eq!(drain(&mut ev)[0].kind, EventKind::Deleted);
}

#[test]
fn a_transcoded_branch_and_a_relayed_one_each_get_their_own_plans() {
    let sim = Sim::new();
    sim.offer_to("1");
    let b1 = sim.endpoint("c", 0, 1);
    sim.offer_to("2");
    let caller = sim.endpoint("c", 0, 0);
    let opus = "v=0\r\no=b1 1 1 IN IP4 192.0.2.21\r\ns=-\r\nc=IN IP4 192.0.2.21\r\nt=0 0\r\n\
                m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n";
    let answer_b1 = |final_answer| {
        sim.s
            .answer_branch(
                "c",
                "a",
                "b1",
                "1",
                opus,
                LegOptions::default(),
                final_answer,
            )
            .unwrap()
    };
    let planned = |sim: &Sim| -> HashSet<EndpointId> {
        sim.plane.0.lock().unwrap().plans.keys().copied().collect()
    };
    let early = answer_b1(false);
    assert_eq!(planned(&sim), HashSet::from([caller, b1]));
    // Branch 2 speaks PCMU like the caller: while it is relayed, nothing is transcoded.
    sim.answer_from("2", "b2", "192.0.2.22", false);
    assert!(planned(&sim).is_empty());
    // Branch 1's 200 brings its transcoding back, as decided for its 183.
    assert_eq!(answer_b1(true), early);
    assert_eq!(planned(&sim), HashSet::from([caller, b1]));
    let r = sim.s.query("c").unwrap();
    assert!(r.legs[0].streams[0].transcoded);
    assert_eq!(r.legs[1].streams[0].codec.as_deref(), Some("opus/48000/2"));
    assert_eq!(sim.ports_in_use(), 4);
}
