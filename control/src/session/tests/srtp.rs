//! SDES-SRTP: bridging plain and SRTP sides, passthrough, and the errors SRTP options cause.

use super::*;
use crate::sdes::SdesKey;

#[test]
fn srtp_offer_bridges_plain_caller_to_srtp_callee() {
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    let o = s
        .offer("c", "a", &sdp("alice", 4000, ""), opts(SrtpMode::Offer))
        .unwrap();
    let parsed = Sdp::parse(&o).unwrap();
    assert_eq!(parsed.media[0].proto, "RTP/SAVP");
    let offered = parsed.media[0].crypto();
    assert_eq!(offered.len(), 4, "{o}");
    assert_eq!(offered[0].suite, "AES_CM_128_HMAC_SHA1_80");
    // The callee picks the GCM line (tag 3) and answers with its own key.
    let bob = SdesKey::generate(3, crate::sdes::Suite::AeadAes128Gcm);
    let ans_line = format!("a={}:{}\r\n", "crypto", bob.to_attribute().value.unwrap());
    let ans = s
        .answer(
            "c",
            "a",
            "b",
            &savp("bob", 5000, &ans_line),
            LegOptions::default(),
        )
        .unwrap();
    let back = Sdp::parse(&ans).unwrap();
    assert_eq!(back.media[0].proto, "RTP/AVP");
    assert!(back.media[0].crypto().is_empty());
    assert_eq!(crypto_of(&s, "c", 0), SideCrypto::Plain);
    match crypto_of(&s, "c", 1) {
        SideCrypto::Terminated { rx, tx } => {
            assert_eq!(rx, bob);
            assert_eq!(tx.tag, 3);
            assert_eq!(SdesKey::from_crypto(&offered[2]).unwrap(), tx);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn srtp_strip_terminates_the_callers_srtp() {
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    let o = s
        .offer(
            "c",
            "a",
            &savp("alice", 4000, ALICE_KEY),
            opts(SrtpMode::Strip),
        )
        .unwrap();
    let parsed = Sdp::parse(&o).unwrap();
    assert_eq!(parsed.media[0].proto, "RTP/AVP");
    assert!(parsed.media[0].crypto().is_empty());
    let ans = s
        .answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    let back = Sdp::parse(&ans).unwrap();
    assert_eq!(back.media[0].proto, "RTP/SAVP");
    let ours = back.media[0].crypto();
    assert_eq!(ours.len(), 1);
    let ours = SdesKey::from_crypto(&ours[0]).unwrap();
    let alice = SdesKey::from_crypto(
        &crate::sdp::Crypto::parse(&ALICE_KEY[9..ALICE_KEY.len() - 2]).unwrap(),
    )
    .unwrap();
    assert_eq!((ours.tag, ours.suite), (alice.tag, alice.suite));
    assert_ne!(ours.key, alice.key, "sluice keys its own direction");
    assert_eq!(
        crypto_of(&s, "c", 0),
        SideCrypto::Terminated {
            rx: alice,
            tx: ours.clone()
        }
    );
    // A session refresh keeps sluice's key.
    s.offer(
        "c",
        "a",
        &savp("alice", 4000, ALICE_KEY),
        opts(SrtpMode::Strip),
    )
    .unwrap();
    let again = s
        .answer("c", "a", "b", &sdp("bob", 5000, ""), LegOptions::default())
        .unwrap();
    let again = SdesKey::from_crypto(&Sdp::parse(&again).unwrap().media[0].crypto()[0]).unwrap();
    assert_eq!(again, ours);
}

#[test]
fn srtp_passes_through_untouched_by_default() {
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    let o = s
        .offer(
            "c",
            "a",
            &savp("alice", 4000, ALICE_KEY),
            LegOptions::default(),
        )
        .unwrap();
    assert!(o.contains(ALICE_KEY), "{o}");
    let bob =
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3\r\n";
    let ans = s
        .answer(
            "c",
            "a",
            "b",
            &savp("bob", 5000, bob),
            LegOptions::default(),
        )
        .unwrap();
    assert!(ans.contains(bob), "{ans}");
    assert_eq!(crypto_of(&s, "c", 0), SideCrypto::Passthrough);
    assert_eq!(crypto_of(&s, "c", 1), SideCrypto::Passthrough);
}

#[test]
fn srtp_errors_say_what_is_wrong() {
    let (s, _) = sessions(20000, 20999, Duration::from_secs(60));
    let err = s
        .offer("c", "a", &sdp("alice", 4000, ""), opts(SrtpMode::Require))
        .unwrap_err();
    assert!(err.to_string().contains("REQUIRE"), "{err}");
    assert!(
        s.query("c").is_err(),
        "nothing allocated for a refused offer"
    );
    let f8 = "a=crypto:1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
    let err = s
        .offer("c", "a", &savp("alice", 4000, f8), opts(SrtpMode::Strip))
        .unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
    s.offer("c", "a", &sdp("alice", 4000, ""), opts(SrtpMode::Offer))
        .unwrap();
    let wrong_tag =
        "a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
    let err = s
        .answer(
            "c",
            "a",
            "b",
            &savp("bob", 5000, wrong_tag),
            LegOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("matches no key"), "{err}");
    let two = format!("{ALICE_KEY}{wrong_tag}");
    let err = s
        .answer(
            "c",
            "a",
            "b",
            &savp("bob", 5000, &two),
            LegOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("exactly one"), "{err}");
    let dtls = sdp("alice", 4000, "").replace("RTP/AVP", "UDP/TLS/RTP/SAVPF");
    let err = s.offer("d", "a", &dtls, opts(SrtpMode::Strip)).unwrap_err();
    assert!(err.to_string().contains("DTLS"), "{err}");
}
