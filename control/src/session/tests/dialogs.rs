//! SIP dialog shapes on the session API, in simulated time: early media (several answers to one
//! offer), late offer (the callee offers first), re-offers from either side.

use super::sim::*;
use super::*;
use crate::sdp::Direction;

const ALICE: &str = "192.0.2.10";
const BOB: &str = "192.0.2.20";

fn version(sdp: &str) -> u64 {
    Sdp::parse(sdp).unwrap().origin.session_version
}

fn direction(sdp: &str) -> Direction {
    Sdp::parse(sdp).unwrap().direction(0)
}

fn fmts(sdp: &str) -> Vec<String> {
    Sdp::parse(sdp).unwrap().media[0].fmts.clone()
}

/// PCMA only, with telephone-event.
fn pcma_at(user: &str, version: u64, ip: &str, port: u16) -> String {
    sdp_at(user, version, ip, port, "").replace(
        "RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000",
        "RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000",
    )
}

/// An Opus-only callee at `ip:port`, answering an offer into which sluice put opus as payload
/// type 96 and telephone-event/48000 as 97.
fn opus_at(user: &str, version: u64, ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no={user} 200 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 96 97\r\na=rtpmap:96 opus/48000/2\r\n\
         a=rtpmap:97 telephone-event/48000\r\n"
    )
}

impl Sim {
    fn plans(&self) -> usize {
        self.plane.0.lock().unwrap().plans.len()
    }
}

#[test]
fn early_media_then_a_200_with_a_new_address_and_codec() {
    let sim = Sim::new();
    let offer = sim.offer("c", "a", &sdp_at("alice", 1, ALICE, 4000, ""));
    assert_eq!(
        Sdp::parse(&offer).unwrap().media[0].fmts,
        ["0", "8", "96", "101", "97"],
        "sluice offers opus as 96 to the callee"
    );
    let (to_alice, to_bob) = (sim.endpoint("c", 0, 0), sim.endpoint("c", 0, 1));
    let endpoints = sim.live();
    assert_eq!((endpoints.len(), sim.ports_in_use()), (2, 4));

    // 183 Session Progress with SDP: early media flows to where it says.
    let early = sim.answer("c", "a", "b", &sdp_at("bob", 1, BOB, 5000, ""));
    assert_eq!(sim.destination(to_bob), Some(addr("192.0.2.20:5000")));
    assert_eq!(sim.destination(to_alice), Some(addr("192.0.2.10:4000")));
    assert_eq!(sim.flags(to_bob), (true, true));
    assert_eq!(sim.plans(), 0, "PCMU both ways is relayed");

    // The 200 repeats the 183's SDP: the caller gets exactly the same SDP, o= version included
    // (RFC 3264 8: unchanged SDP keeps its version).
    let same = sim.answer("c", "a", "b", &sdp_at("bob", 1, BOB, 5000, ""));
    assert_eq!(same, early);

    // A gateway's 200 from another media address, in Opus: the relay follows it and now
    // transcodes; the caller keeps PCMU on the same relay port, in an SDP with a new version.
    let final_ = sim.answer("c", "a", "b", &opus_at("bob", 2, "192.0.2.30", 6000));
    assert_eq!(sim.destination(to_bob), Some(addr("192.0.2.30:6000")));
    assert_eq!(sim.destination(to_alice), Some(addr("192.0.2.10:4000")));
    assert_eq!(port_of(&final_), port_of(&early));
    assert_eq!(version(&final_), version(&early) + 1);
    assert_eq!(Sdp::parse(&final_).unwrap().media[0].fmts[0], "0");
    assert_eq!(sim.plans(), 2, "a transcoding plan for each direction");
    let r = sim.s.query("c").unwrap();
    let (alice, bob) = (&r.legs[0].streams[0], &r.legs[1].streams[0]);
    assert!(alice.transcoded && bob.transcoded);
    assert_eq!(alice.codec.as_deref(), Some("PCMU/8000"));
    assert_eq!(bob.codec.as_deref(), Some("opus/48000/2"));
    assert_eq!(bob.sdp_peer, Some(addr("192.0.2.30:6000")));
    assert_eq!(r.legs[1].tag.as_deref(), Some("b"));

    // Nothing was added or closed: the ports given in the offer and the 183 stand.
    assert_eq!(sim.live(), endpoints);
    assert_eq!(sim.ports_in_use(), 4);
    assert_eq!(
        (alice.local_rtp.port(), bob.local_rtp.port()),
        (port_of(&early), port_of(&offer))
    );

    // A retransmitted 200 changes nothing, and another to-tag is still another dialog.
    let again = sim.answer("c", "a", "b", &opus_at("bob", 2, "192.0.2.30", 6000));
    assert_eq!(again, final_);
    let err = sim
        .s
        .answer(
            "c",
            "a",
            "x",
            &sdp_at("x", 1, BOB, 5000, ""),
            LegOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, SessionError::BadRequest(_)), "{err}");
}

#[test]
fn a_transcoded_183_then_a_relayed_200_drops_the_plans() {
    let sim = Sim::new();
    sim.offer("c", "a", &sdp_at("alice", 1, ALICE, 4000, ""));
    sim.answer("c", "a", "b", &opus_at("bob", 1, BOB, 5000));
    assert_eq!(sim.plans(), 2);
    let ok = sim.answer("c", "a", "b", &sdp_at("bob", 2, BOB, 5000, ""));
    assert_eq!(sim.plans(), 0, "PCMU both ways again: nothing to transcode");
    assert_eq!(Sdp::parse(&ok).unwrap().media[0].fmts, ["0", "101"]);
    let r = sim.s.query("c").unwrap();
    assert!(!r.legs[0].streams[0].transcoded);
    assert_eq!(r.legs[1].streams[0].codec.as_deref(), Some("PCMU/8000"));
}

#[test]
fn a_183_that_rejects_a_stream_does_not_bind_the_200() {
    let sim = Sim::new();
    let video = "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
    sim.offer("c", "a", &sdp_at("alice", 1, ALICE, 4000, video));
    let no_video = "m=video 0 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
    let early = sim.answer("c", "a", "b", &sdp_at("bob", 1, BOB, 5000, no_video));
    assert_eq!(Sdp::parse(&early).unwrap().media[1].port, 0);
    let video_bob = sim.endpoint("c", 1, 1);
    assert_eq!(sim.flags(video_bob), (false, false));
    let yes_video = "m=video 5002 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n";
    let ok = sim.answer("c", "a", "b", &sdp_at("bob", 2, BOB, 5000, yes_video));
    assert_ne!(Sdp::parse(&ok).unwrap().media[1].port, 0);
    assert_eq!(sim.flags(video_bob), (true, true));
    assert_eq!(sim.destination(video_bob), Some(addr("192.0.2.20:5002")));
}

/// RFC 3261 13.2.1: an INVITE without SDP. The callee offers in its 200 OK and the caller
/// answers in the ACK, so the first offer's from-tag is the callee's.
#[test]
fn late_offer_the_callee_offers_in_its_200_and_the_caller_answers_in_the_ack() {
    let sim = Sim::new();
    let mut ev = sim.s.subscribe();
    let to_alice = sim.offer("c", "b", &sdp_at("bob", 1, BOB, 5000, ""));
    assert_eq!(
        sim.s.query("c").unwrap().legs.map(|l| l.tag),
        [Some("b".to_string()), None],
        "the caller's tag is known with its answer"
    );
    let to_bob = sim.answer("c", "b", "a", &sdp_at("alice", 1, ALICE, 4000, ""));

    // Each leg names its own party, with that party's addresses.
    let r = sim.s.query("c").unwrap();
    let (bob, alice) = (&r.legs[0], &r.legs[1]);
    assert_eq!(bob.tag.as_deref(), Some("b"));
    assert_eq!(bob.streams[0].sdp_peer, Some(addr("192.0.2.20:5000")));
    assert_eq!(bob.streams[0].local_rtp.port(), port_of(&to_bob));
    assert_eq!(alice.tag.as_deref(), Some("a"));
    assert_eq!(alice.streams[0].sdp_peer, Some(addr("192.0.2.10:4000")));
    assert_eq!(alice.streams[0].local_rtp.port(), port_of(&to_alice));
    let (to_bob_id, to_alice_id) = (sim.endpoint("c", 0, 0), sim.endpoint("c", 0, 1));
    assert_eq!(sim.destination(to_bob_id), Some(addr("192.0.2.20:5000")));
    assert_eq!(sim.destination(to_alice_id), Some(addr("192.0.2.10:4000")));

    // Media from the caller is reported with the caller's tag.
    sim.packet("c", 0, 1);
    // The caller's re-INVITE, now with SDP, is an offer from the answering side.
    let hold = sim.offer("c", "a", &sdp_at("alice", 2, ALICE, 4000, "a=sendonly\r\n"));
    assert_eq!(port_of(&hold), port_of(&to_bob), "bob keeps his relay port");
    let held = sim.answer(
        "c",
        "a",
        "b",
        &sdp_at("bob", 2, BOB, 5000, "a=recvonly\r\n"),
    );
    assert_eq!(port_of(&held), port_of(&to_alice), "alice keeps hers");
    assert_eq!(sim.flags(to_alice_id), (true, false));
    assert_eq!(sim.flags(to_bob_id), (false, true));

    // The caller's BYE names the tags as SIP does: from-tag a, to-tag b.
    let last = sim.s.delete("c", "a", "b").unwrap();
    assert_eq!(
        last.legs.map(|l| l.tag),
        [Some("b".into()), Some("a".into())]
    );
    let got: Vec<_> = drain(&mut ev)
        .into_iter()
        .map(|e| (e.kind, e.tag))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::CallCreated, "b".into()),
            (EventKind::MediaStarted, "a".into()),
            (EventKind::Deleted, "a".into()),
        ]
    );
    assert_eq!(sim.ports_in_use(), 0);
}

/// RFC 3261 14: either side may re-offer. Here the callee (who answered the first offer) puts
/// the caller on hold, then makes the call inactive, then resumes with another codec; the
/// caller answers each time. Relay ports never change; directions, codecs and o= versions
/// follow each exchange.
#[test]
fn the_callee_holds_and_resumes_with_another_codec_by_re_invite() {
    let sim = Sim::new();
    let to_bob = sim.offer("c", "a", &sdp_at("alice", 1, ALICE, 4000, ""));
    let to_alice = sim.answer("c", "a", "b", &sdp_at("bob", 1, BOB, 5000, ""));
    let (alice, bob) = (sim.endpoint("c", 0, 0), sim.endpoint("c", 0, 1));
    let endpoints = sim.live();

    // Hold: bob sendonly, alice recvonly. Each side gets its own relay port again, in an SDP
    // whose version grew by one because its content changed (RFC 3264 8).
    let hold = sim.offer("c", "b", &sdp_at("bob", 2, BOB, 5000, "a=sendonly\r\n"));
    assert_eq!(port_of(&hold), port_of(&to_alice));
    assert_eq!(direction(&hold), Direction::SendOnly);
    assert_eq!(version(&hold), version(&to_alice) + 1);
    let held = sim.answer(
        "c",
        "b",
        "a",
        &sdp_at("alice", 2, ALICE, 4000, "a=recvonly\r\n"),
    );
    assert_eq!(port_of(&held), port_of(&to_bob));
    assert_eq!(direction(&held), Direction::RecvOnly);
    assert_eq!(version(&held), version(&to_bob) + 1);
    assert_eq!(
        sim.flags(bob),
        (true, false),
        "bob still sends (music on hold)"
    );
    assert_eq!(sim.flags(alice), (false, true));
    let r = sim.s.query("c").unwrap();
    assert_eq!(r.legs[1].streams[0].direction, Direction::SendOnly);
    assert_eq!(r.legs[0].streams[0].direction, Direction::RecvOnly);

    // Inactive: nothing flows either way.
    let inactive = sim.offer("c", "b", &sdp_at("bob", 3, BOB, 5000, "a=inactive\r\n"));
    assert_eq!(direction(&inactive), Direction::Inactive);
    sim.answer(
        "c",
        "b",
        "a",
        &sdp_at("alice", 3, ALICE, 4000, "a=inactive\r\n"),
    );
    assert_eq!(sim.flags(bob), (false, false));
    assert_eq!(sim.flags(alice), (false, false));

    // Resume, now in PCMA only: sluice offers alice PCMU beside it, she keeps PCMU, and the
    // relay transcodes between the two.
    let resume = sim.offer("c", "b", &pcma_at("bob", 4, BOB, 5000));
    assert_eq!(direction(&resume), Direction::SendRecv);
    assert_eq!(fmts(&resume)[..2], ["8", "0"]);
    let resumed = sim.answer("c", "b", "a", &sdp_at("alice", 4, ALICE, 4000, ""));
    assert_eq!(fmts(&resumed)[0], "8", "bob is answered in his own codec");
    assert_eq!(sim.flags(bob), (true, true));
    assert_eq!(sim.flags(alice), (true, true));
    assert_eq!(sim.plans(), 2);
    let r = sim.s.query("c").unwrap();
    let codec = |k: usize| r.legs[k].streams[0].codec.clone();
    assert_eq!(codec(0).as_deref(), Some("PCMU/8000"));
    assert_eq!(codec(1).as_deref(), Some("PCMA/8000"));
    assert!(r.legs[0].streams[0].transcoded);

    // The caller re-offers in turn, PCMU again; bob takes it and transcoding stops.
    sim.offer("c", "a", &sdp_at("alice", 5, ALICE, 4000, ""));
    sim.answer("c", "a", "b", &sdp_at("bob", 5, BOB, 5000, ""));
    assert_eq!(sim.plans(), 0);
    assert_eq!(
        sim.s.query("c").unwrap().legs[1].streams[0]
            .codec
            .as_deref(),
        Some("PCMU/8000")
    );

    assert_eq!(sim.live(), endpoints, "no socket was opened or closed");
    assert_eq!(sim.ports_in_use(), 4);
    assert_eq!(sim.destination(bob), Some(addr("192.0.2.20:5000")));
    assert_eq!(sim.destination(alice), Some(addr("192.0.2.10:4000")));
}

#[test]
fn an_answer_must_come_from_the_side_that_did_not_offer() {
    let sim = Sim::new();
    sim.offer("c", "a", &sdp_at("alice", 1, ALICE, 4000, ""));
    sim.answer("c", "a", "b", &sdp_at("bob", 1, BOB, 5000, ""));
    sim.offer("c", "b", &sdp_at("bob", 2, BOB, 5000, "a=sendonly\r\n"));
    // A late answer to alice's first offer (a stray retransmitted 200) is not an answer to
    // bob's pending one.
    let err = sim
        .s
        .answer(
            "c",
            "a",
            "b",
            &sdp_at("bob", 1, BOB, 5000, ""),
            LegOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("not the offerer's tag"), "{err}");
    sim.answer(
        "c",
        "b",
        "a",
        &sdp_at("alice", 2, ALICE, 4000, "a=recvonly\r\n"),
    );
    assert_eq!(sim.flags(sim.endpoint("c", 0, 1)), (true, false));
}
