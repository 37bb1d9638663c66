//! Codec negotiation on offer and answer, and the transcoding plans the engine gets.

use super::*;
use crate::codecs::{self, Codec, CodecOptions, DirectionPlan};

fn endpoints(s: &Sessions, call: &str) -> [EndpointId; 2] {
    let st = s.lock();
    let sides = &st.calls[call].streams[0].sides;
    [sides[0].endpoint, sides[1].endpoint]
}

fn plans(plane: &FakePlane) -> HashMap<EndpointId, DirectionPlan> {
    plane.0.lock().unwrap().plans.clone()
}

#[test]
fn opus_encoder_settings_come_from_the_config_capped_by_the_receiver() {
    let plane = FakePlane::default();
    let s = Sessions::new(
        SessionConfig {
            opus_complexity: 0,
            opus_bitrate: 32_000,
            ..test_config(20000, 20999)
        },
        SessionEnv::system(),
        Box::new(plane.clone()),
        None,
    )
    .unwrap();
    transcoded_call_up(&s, "c");
    let [alice, _] = endpoints(&s, "c");
    let towards_bob = plans(&plane)[&alice].opus;
    assert_eq!((towards_bob.complexity, towards_bob.bitrate), (0, 32_000));
    // A callee whose fmtp caps the average bitrate gets no more.
    s.offer("d", "a", &sdp("alice", 4002, ""), LegOptions::default())
        .unwrap();
    s.answer(
        "d",
        "a",
        "b",
        &opus_sdp("bob", 5002, "").replace(
            "maxplaybackrate=16000",
            "maxplaybackrate=16000;maxaveragebitrate=20000",
        ),
        LegOptions::default(),
    )
    .unwrap();
    let [alice, _] = endpoints(&s, "d");
    let towards_bob = plans(&plane)[&alice].opus;
    assert_eq!((towards_bob.complexity, towards_bob.bitrate), (0, 20_000));
}

#[test]
fn transcoding_sends_a_plan_per_endpoint_and_follows_the_codec_clocks() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    let back = transcoded_call_up(&s, "c");
    let back = Sdp::parse(&back).unwrap();
    assert_eq!(back.media[0].fmts, ["0", "101"], "the caller hears of PCMU");
    let [alice, bob] = endpoints(&s, "c");
    let p = plans(&plane);
    let (from_alice, from_bob) = (&p[&alice], &p[&bob]);
    assert_eq!(
        (from_alice.input, from_alice.input_pt, from_alice.output),
        (Codec::Pcmu, 0, Codec::Opus)
    );
    assert_eq!((from_alice.output_pt, from_alice.output_ptime_ms), (96, 40));
    assert_eq!(from_alice.opus.max_playback_rate, Some(16000));
    assert_eq!(from_alice.dtmf.unwrap().out_pt, 97);
    assert_eq!(
        (from_bob.input, from_bob.output, from_bob.output_pt),
        (Codec::Opus, Codec::Pcmu, 0)
    );
    assert_eq!(from_bob.output_ptime_ms, 20);
    assert_ne!(from_alice.ssrc, from_bob.ssrc);
    {
        let st = plane.0.lock().unwrap();
        assert_eq!(st.configured[&alice].0.clock_rate, 8000);
        assert_eq!(st.configured[&bob].0.clock_rate, 48000);
    }
    let q = s.query("c").unwrap();
    let (a, b) = (&q.legs[0].streams[0], &q.legs[1].streams[0]);
    assert!(a.transcoded && b.transcoded);
    assert_eq!(
        (a.codec.as_deref(), a.payload_type),
        (Some("PCMU/8000"), Some(0))
    );
    assert_eq!(
        (b.codec.as_deref(), b.payload_type),
        (Some("opus/48000/2"), Some(96))
    );
}

#[test]
fn reoffer_keeps_plans_and_relaying_again_removes_them() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    transcoded_call_up(&s, "c");
    let before = plans(&plane);
    // A session refresh: same SDP, same payload types, plans and SSRCs.
    transcoded_call_up(&s, "c");
    assert_eq!(plans(&plane), before);
    // The callee re-offers with PCMU, and the caller answers PCMU: relayed.
    s.offer("c", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    assert_eq!(plans(&plane), before, "plans stay until the answer decides");
    s.answer(
        "c",
        "b",
        "a",
        &sdp("alice", 4000, ""),
        LegOptions::default(),
    )
    .unwrap();
    assert!(plans(&plane).is_empty());
    let q = s.query("c").unwrap();
    assert!(!q.legs[0].streams[0].transcoded);
    assert_eq!(q.legs[0].streams[0].codec.as_deref(), Some("PCMU/8000"));
    let [alice, bob] = endpoints(&s, "c");
    let st = plane.0.lock().unwrap();
    assert_eq!(st.configured[&alice].0.clock_rate, 8000);
    assert_eq!(st.configured[&bob].0.clock_rate, 8000);
}

#[test]
fn callee_reoffer_swaps_the_roles() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    transcoded_call_up(&s, "c");
    let before = plans(&plane);
    // Bob re-offers Opus; Alice still only takes PCMU, appended for her.
    let o = s
        .offer("c", "b", &opus_sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    assert_eq!(
        Sdp::parse(&o).unwrap().media[0].fmts,
        ["96", "0", "8", "97", "98"]
    );
    let back = s
        .answer(
            "c",
            "b",
            "a",
            &sdp("alice", 4000, ""),
            LegOptions::default(),
        )
        .unwrap();
    assert_eq!(Sdp::parse(&back).unwrap().media[0].fmts, ["96", "97"]);
    let after = plans(&plane);
    let [alice, bob] = endpoints(&s, "c");
    assert_eq!(
        (after[&alice].input, after[&alice].output),
        (Codec::Pcmu, Codec::Opus)
    );
    assert_eq!(
        after[&alice].ssrc, before[&alice].ssrc,
        "SSRCs survive re-offers"
    );
    assert_eq!(after[&bob].ssrc, before[&bob].ssrc);
    // DTMF: alice's telephone-event/8000 (her answer's 101) <-> bob's 97.
    assert_eq!(after[&alice].dtmf.unwrap().in_pt, 101);
    assert_eq!(after[&bob].dtmf.unwrap().out_pt, 101);
}

#[test]
fn delete_removes_plans_and_no_bridge_leaks_nothing() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    let g722 = sdp("bob", 5000, "").replace("RTP/AVP 0 101", "RTP/AVP 9");
    let err = s
        .answer("c", "a", "b", &g722, LegOptions::default())
        .unwrap_err();
    assert!(matches!(err, SessionError::NoCodecBridge(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("G722/8000") && msg.contains("PCMU/8000") && msg.contains("opus"),
        "{msg}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(s.statistics().ports_in_use, 4);
    assert!(plans(&plane).is_empty());
    // The offer still waits for a good answer.
    s.answer(
        "c",
        "a",
        "b",
        &opus_sdp("bob", 5000, ""),
        LegOptions::default(),
    )
    .unwrap();
    assert_eq!(plans(&plane).len(), 2);
    s.delete("c", "", "").unwrap();
    let st = plane.0.lock().unwrap();
    assert!(st.plans.is_empty() && st.live.is_empty());
    drop(st);
    assert_eq!(s.statistics().ports_in_use, 0);
}

#[test]
fn codec_options_mask_strip_off() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    let with = |codecs: CodecOptions| LegOptions {
        codecs,
        ..Default::default()
    };
    let mask = CodecOptions {
        mask: codecs::CodecList::of(&[Codec::Pcmu]),
        ..Default::default()
    };
    let o = s
        .offer("c", "a", &sdp("alice", 4000, ""), with(mask))
        .unwrap();
    assert_eq!(
        Sdp::parse(&o).unwrap().media[0].fmts,
        ["8", "96", "101", "97"]
    );
    // The callee takes PCMA, which alice lacks: PCMU <-> PCMA.
    let pcma = sdp("bob", 5000, "").replace("RTP/AVP 0 101", "RTP/AVP 8 101");
    s.answer("c", "a", "b", &pcma, LegOptions::default())
        .unwrap();
    let [alice, _] = endpoints(&s, "c");
    let p = &plans(&plane)[&alice];
    assert_eq!((p.input, p.output), (Codec::Pcmu, Codec::Pcma));
    assert_eq!(p.dtmf.unwrap().out_pt, 101);

    let off = CodecOptions {
        mode: Some(TranscodeMode::Off),
        ..Default::default()
    };
    let o = s
        .offer("d", "a", &sdp("alice", 4000, ""), with(off))
        .unwrap();
    assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts, ["0", "101"]);
    // Off is plain relaying, as before transcoding existed: the answer is not judged.
    s.answer(
        "d",
        "a",
        "b",
        &opus_sdp("bob", 5000, ""),
        LegOptions::default(),
    )
    .unwrap();
    assert_eq!(plans(&plane).len(), 2, "only call c's");

    let bad = CodecOptions {
        mode: Some(TranscodeMode::Off),
        strip: codecs::CodecList::of(&[Codec::Pcma]),
        ..Default::default()
    };
    let err = s
        .offer("e", "a", &sdp("alice", 4000, ""), with(bad))
        .unwrap_err();
    assert!(matches!(err, SessionError::BadRequest(_)), "{err}");
    assert!(
        s.query("e").is_err(),
        "nothing allocated for a refused offer"
    );
}

#[test]
fn server_default_off_and_srtp_passthrough_leave_the_offer_alone() {
    let plane = FakePlane::default();
    let s = Sessions::new(
        SessionConfig {
            transcode: TranscodeMode::Off,
            ..test_config(20000, 20999)
        },
        SessionEnv::system(),
        Box::new(plane),
        None,
    )
    .unwrap();
    let o = s
        .offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts, ["0", "101"]);
    let auto = LegOptions {
        codecs: CodecOptions {
            mode: Some(TranscodeMode::Auto),
            ..Default::default()
        },
        ..Default::default()
    };
    let o = s.offer("d", "a", &sdp("alice", 4000, ""), auto).unwrap();
    assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts.len(), 5);

    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    let o = s
        .offer(
            "c",
            "a",
            &savp("alice", 4000, ALICE_KEY),
            LegOptions::default(),
        )
        .unwrap();
    assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts, ["0", "101"]);
    // Terminated SRTP is plain inside sluice: transcodable.
    let o = s
        .offer(
            "d",
            "a",
            &savp("alice", 4000, ALICE_KEY),
            opts(SrtpMode::Strip),
        )
        .unwrap();
    assert_eq!(Sdp::parse(&o).unwrap().media[0].fmts.len(), 5);
}

#[test]
fn an_answer_needing_transcoding_on_srtp_sluice_cannot_decrypt_is_refused() {
    let (s, plane) = sessions(20000, 20999, Duration::from_secs(60));
    // A plain PCMU caller: sluice appends opus. The callee answers opus over SRTP keyed
    // end to end (no `srtp` option), which sluice could not decrypt to transcode.
    s.offer("c", "a", &sdp("alice", 4000, ""), LegOptions::default())
        .unwrap();
    let answer = opus_sdp("bob", 5000, ALICE_KEY).replace("RTP/AVP", "RTP/SAVP");
    let err = s
        .answer("c", "a", "b", &answer, LegOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("cannot decrypt"), "{err}");
    assert!(plans(&plane).is_empty(), "no transcoder was set up");
}
