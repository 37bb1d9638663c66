//! SRTP/SRTCP behaviour, one scenario per test: round trips for every profile, ROC rollover
//! at sequence 65535 (in order, reordered, on the sending side too), replays, tampered tags,
//! the bounded SSRC table, and malformed input that must never panic.

use proptest::prelude::*;
use sluice_relay::srtp::{
    KeyError, MAX_RTCP_OVERHEAD, MAX_RTP_OVERHEAD, RTP_REPLAY_WINDOW, SrtpConfig, SrtpContext,
    SrtpError, SrtpProfile,
};

const SSRC: u32 = 0x1234_5678;

/// Counts this thread's allocations, for `no_allocation_per_packet`.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised thread local
// that never allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

fn master(profile: SrtpProfile, fill: u8) -> Vec<u8> {
    (0..profile.master_len())
        .map(|i| fill.wrapping_add(i as u8).wrapping_mul(31))
        .collect()
}

/// A sender and a receiver context sharing one key.
fn pair(profile: SrtpProfile) -> (SrtpContext, SrtpContext) {
    let key = master(profile, 1);
    (
        SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap(),
        SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap(),
    )
}

fn rtp(seq: u16, ssrc: u32, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

fn rtcp_sr(ssrc: u32) -> Vec<u8> {
    // SR without report blocks, then SDES with one CNAME chunk.
    let mut p = vec![0x80, 0xc8, 0x00, 0x06];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[
        0xe6, 0x3a, 0x1b, 0x2c, 0, 0, 0, 0, 0, 1, 0xf4, 0, 0, 0, 0, 0x64,
    ]);
    p.extend_from_slice(&[0, 0, 0x3e, 0x80]);
    p.extend_from_slice(&[0x81, 0xca, 0x00, 0x03]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[1, 3, b'a', b'b', b'c', 0, 0, 0]);
    p
}

fn protect(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; plain.len() + MAX_RTP_OVERHEAD];
    buf[..plain.len()].copy_from_slice(plain);
    let len = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(len);
    buf
}

fn unprotect(ctx: &mut SrtpContext, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtp.to_vec();
    let len = ctx.unprotect_rtp(&mut buf, srtp.len())?;
    buf.truncate(len);
    Ok(buf)
}

fn protect_rtcp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; plain.len() + MAX_RTCP_OVERHEAD];
    buf[..plain.len()].copy_from_slice(plain);
    let len = ctx.protect_rtcp(&mut buf, plain.len()).unwrap();
    buf.truncate(len);
    buf
}

fn unprotect_rtcp(ctx: &mut SrtpContext, srtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = srtcp.to_vec();
    let len = ctx.unprotect_rtcp(&mut buf, srtcp.len())?;
    buf.truncate(len);
    Ok(buf)
}

#[test]
fn round_trip_every_profile_and_header_shape() {
    let mut with_csrc_ext_padding = vec![0xb2, 0x60, 0x00, 0x07, 0, 0, 3, 0x20];
    with_csrc_ext_padding.extend_from_slice(&SSRC.to_be_bytes());
    with_csrc_ext_padding.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // 2 CSRCs
    with_csrc_ext_padding.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // extension
    with_csrc_ext_padding.extend_from_slice(&[1, 2, 3, 0, 0, 0, 4]); // payload + padding
    let packets = [
        rtp(1, SSRC, 160),
        rtp(2, SSRC, 0),
        rtp(3, SSRC, 1),
        rtp(4, SSRC, 1200),
        with_csrc_ext_padding,
    ];
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        for plain in &packets {
            let srtp = protect(&mut tx, plain);
            assert_eq!(srtp.len(), plain.len() + profile.rtp_overhead());
            if plain.len() > 16 {
                assert_ne!(
                    &srtp[16..plain.len()],
                    &plain[16..],
                    "{profile}: not encrypted"
                );
            }
            assert_eq!(unprotect(&mut rx, &srtp).unwrap(), *plain, "{profile}");
        }
        for _ in 0..3 {
            let plain = rtcp_sr(SSRC);
            let srtcp = protect_rtcp(&mut tx, &plain);
            assert_eq!(srtcp.len(), plain.len() + profile.rtcp_overhead());
            assert_ne!(&srtcp[8..plain.len()], &plain[8..]);
            assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), plain, "{profile}");
        }
        assert_eq!(tx.next_srtcp_index(SSRC), 3);
        let c = rx.counters();
        assert_eq!((c.rtp_unprotected, c.rtcp_unprotected), (5, 3));
        assert_eq!(tx.counters().rtp_protected, 5);
    }
}

#[test]
fn no_allocation_per_packet() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        let mut buf = [0u8; 1500];
        let mut rtcp_buf = [0u8; 1500];
        let sr = rtcp_sr(SSRC);
        let header = rtp(0, SSRC, 0);
        let mut round = |seq: u16| {
            buf[..12].copy_from_slice(&header);
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            let len = tx.protect_rtp(&mut buf, 172).unwrap();
            rx.unprotect_rtp(&mut buf, len).unwrap();
            rtcp_buf[..sr.len()].copy_from_slice(&sr);
            let len = tx.protect_rtcp(&mut rtcp_buf, sr.len()).unwrap();
            rx.unprotect_rtcp(&mut rtcp_buf, len).unwrap();
        };
        round(65_000); // the SSRC's state is created here
        let before = allocations();
        for seq in 65_001..=65_535u16 {
            round(seq);
        }
        for seq in 0..1000 {
            round(seq);
        }
        assert_eq!(allocations(), before, "{profile} allocated per packet");
    }
}

#[test]
fn contexts_can_move_to_worker_threads() {
    fn send<T: Send + 'static>() {}
    send::<SrtpContext>();
}

#[test]
fn keys_of_the_wrong_length_are_refused() {
    for profile in SrtpProfile::ALL {
        let short = vec![0u8; profile.master_len() - 1];
        assert_eq!(
            SrtpContext::new(profile, &short, SrtpConfig::default()).unwrap_err(),
            KeyError::WrongLength {
                profile,
                expected: profile.master_len(),
                got: profile.master_len() - 1
            }
        );
    }
}

#[test]
fn different_keys_fail_authentication() {
    for profile in SrtpProfile::ALL {
        let mut tx = SrtpContext::new(profile, &master(profile, 1), SrtpConfig::default()).unwrap();
        let mut rx = SrtpContext::new(profile, &master(profile, 2), SrtpConfig::default()).unwrap();
        let srtp = protect(&mut tx, &rtp(9, SSRC, 160));
        assert_eq!(
            unprotect(&mut rx, &srtp),
            Err(SrtpError::AuthFailed { ssrc: SSRC })
        );
        let srtcp = protect_rtcp(&mut tx, &rtcp_sr(SSRC));
        assert_eq!(
            unprotect_rtcp(&mut rx, &srtcp),
            Err(SrtpError::AuthFailed { ssrc: SSRC })
        );
        assert_eq!(rx.counters().auth_failed, 2);
        assert_eq!(
            rx.rtp_state(SSRC),
            None,
            "no state from unauthenticated packets"
        );
    }
}

#[test]
fn roc_rolls_over_at_sequence_65535() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        for seq in (65_500..=65_535).chain(0..=100) {
            let plain = rtp(seq, SSRC, 160);
            let srtp = protect(&mut tx, &plain);
            assert_eq!(
                unprotect(&mut rx, &srtp).unwrap(),
                plain,
                "{profile} seq {seq}"
            );
        }
        assert_eq!(tx.rtp_state(SSRC), Some((1, 100)));
        assert_eq!(rx.rtp_state(SSRC), Some((1, 100)));
    }
}

#[test]
fn roc_rollover_survives_reordering_around_the_wrap() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        let sent: Vec<(u16, Vec<u8>)> = (65_530..=65_535)
            .chain(0..=5)
            .map(|seq| (seq, protect(&mut tx, &rtp(seq, SSRC, 160))))
            .collect();
        // Delivery order: post-wrap packets overtake pre-wrap ones and vice versa.
        let order = [0, 1, 6, 2, 7, 3, 8, 5, 4, 11, 9, 10];
        for &i in &order {
            let (seq, srtp) = &sent[i];
            assert_eq!(
                unprotect(&mut rx, srtp).unwrap(),
                rtp(*seq, SSRC, 160),
                "{profile} seq {seq}"
            );
        }
        assert_eq!(rx.rtp_state(SSRC), Some((1, 5)));
        // Each of them again is a replay, on either side of the wrap.
        for (seq, srtp) in &sent {
            let index = if *seq >= 65_530 {
                u64::from(*seq)
            } else {
                (1 << 16) | u64::from(*seq)
            };
            assert_eq!(
                unprotect(&mut rx, srtp),
                Err(SrtpError::Replayed { ssrc: SSRC, index })
            );
        }
    }
}

#[test]
fn sender_estimates_the_index_of_reordered_input_across_the_wrap() {
    // A relay protects what it receives in the order it arrives; a late pre-wrap packet must
    // still be protected with ROC 0 after the sender has moved to ROC 1.
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        for seq in [65_533u16, 65_534, 0, 65_535, 2, 1, 3] {
            let plain = rtp(seq, SSRC, 160);
            let srtp = protect(&mut tx, &plain);
            assert_eq!(
                unprotect(&mut rx, &srtp).unwrap(),
                plain,
                "{profile} seq {seq}"
            );
        }
        assert_eq!(tx.rtp_state(SSRC), Some((1, 3)));
        assert_eq!(rx.rtp_state(SSRC), Some((1, 3)));
        // Protecting an index twice would reuse keystream: refused.
        let mut buf = rtp(2, SSRC, 160);
        buf.resize(buf.len() + 16, 0);
        assert_eq!(
            tx.protect_rtp(&mut buf, 172),
            Err(SrtpError::Replayed {
                ssrc: SSRC,
                index: (1 << 16) | 2
            })
        );
    }
}

#[test]
fn several_rollovers_with_sparse_sequence_numbers() {
    let (mut tx, mut rx) = pair(SrtpProfile::AesCm128HmacSha1_80);
    // Steps of 20,000 up to index 200,000 = 3 * 65,536 + 3,392.
    for i in 0..=10u32 {
        let plain = rtp((i * 20_000) as u16, SSRC, 20);
        let srtp = protect(&mut tx, &plain);
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain);
    }
    assert_eq!(rx.rtp_state(SSRC), Some((3, 3_392)));
    assert_eq!(tx.rtp_state(SSRC), rx.rtp_state(SSRC));
}

#[test]
fn replayed_and_too_old_packets_are_dropped() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        let first = protect(&mut tx, &rtp(10, SSRC, 160));
        let late = protect(&mut tx, &rtp(11, SSRC, 160));
        unprotect(&mut rx, &first).unwrap();
        assert_eq!(
            unprotect(&mut rx, &first),
            Err(SrtpError::Replayed {
                ssrc: SSRC,
                index: 10
            })
        );
        // Move the window past packet 11 without delivering it.
        let window = RTP_REPLAY_WINDOW as u16;
        for seq in 12..=(11 + window) {
            let srtp = protect(&mut tx, &rtp(seq, SSRC, 10));
            unprotect(&mut rx, &srtp).unwrap();
        }
        // 11 is now exactly RTP_REPLAY_WINDOW behind: too old.
        assert_eq!(
            unprotect(&mut rx, &late),
            Err(SrtpError::TooOld {
                ssrc: SSRC,
                index: 11
            })
        );
        let c = *rx.counters();
        assert_eq!((c.replayed, c.too_old), (1, 1), "{profile}");

        // Late but inside the window: accepted once.
        let (mut tx, mut rx) = pair(profile);
        let late = protect(&mut tx, &rtp(100, SSRC, 160));
        for seq in 101..(100 + window) {
            let srtp = protect(&mut tx, &rtp(seq, SSRC, 10));
            unprotect(&mut rx, &srtp).unwrap();
        }
        assert!(unprotect(&mut rx, &late).is_ok());
        assert!(matches!(
            unprotect(&mut rx, &late),
            Err(SrtpError::Replayed { .. })
        ));
    }
}

#[test]
fn replayed_srtcp_is_dropped() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        let a = protect_rtcp(&mut tx, &rtcp_sr(SSRC));
        let b = protect_rtcp(&mut tx, &rtcp_sr(SSRC));
        unprotect_rtcp(&mut rx, &b).unwrap();
        unprotect_rtcp(&mut rx, &a).unwrap();
        assert_eq!(
            unprotect_rtcp(&mut rx, &a),
            Err(SrtpError::Replayed {
                ssrc: SSRC,
                index: 0
            })
        );
        assert_eq!(
            unprotect_rtcp(&mut rx, &b),
            Err(SrtpError::Replayed {
                ssrc: SSRC,
                index: 1
            })
        );
    }
}

/// Every bit of every byte of an SRTP and an SRTCP packet flipped in turn: never accepted,
/// payload/tag changes are authentication failures, and the context state is unchanged (the
/// untouched packet still unprotects, and the ROC/highest sequence did not move).
#[test]
fn tampered_packets_fail_authentication_and_change_nothing() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile);
        unprotect(&mut rx, &protect(&mut tx, &rtp(65_535, SSRC, 160))).unwrap();
        let srtp = protect(&mut tx, &rtp(0, SSRC, 160));
        let srtcp = protect_rtcp(&mut tx, &rtcp_sr(SSRC));
        let state = rx.rtp_state(SSRC);
        let mut auth_failures = 0;
        for (packet, is_rtcp) in [(&srtp, false), (&srtcp, true)] {
            for byte in 0..packet.len() {
                for bit in 0..8 {
                    let mut bad = packet.clone();
                    bad[byte] ^= 1 << bit;
                    let got = if is_rtcp {
                        unprotect_rtcp(&mut rx, &bad)
                    } else {
                        unprotect(&mut rx, &bad)
                    };
                    match got {
                        Err(SrtpError::AuthFailed { .. }) => auth_failures += 1,
                        // Header bits (version, CSRC count, extension) may make it malformed.
                        Err(SrtpError::Malformed { .. }) if byte < 12 => {}
                        // A flipped sequence number bit may land behind the replay window,
                        // which is checked before the tag.
                        Err(SrtpError::TooOld { .. }) if !is_rtcp && (2..4).contains(&byte) => {}
                        other => panic!(
                            "{profile} rtcp={is_rtcp} byte {byte} bit {bit}: {other:?} accepted"
                        ),
                    }
                    assert_eq!(rx.rtp_state(SSRC), state);
                }
            }
        }
        assert_eq!(rx.counters().auth_failed, auth_failures);
        let payload_and_tag = (srtp.len() - 12) * 8 + (srtcp.len() - 8) * 8;
        assert!(auth_failures >= payload_and_tag as u64, "{profile}");
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), rtp(0, SSRC, 160));
        assert_eq!(unprotect_rtcp(&mut rx, &srtcp).unwrap(), rtcp_sr(SSRC));
        assert_eq!(rx.rtp_state(SSRC), Some((1, 0)));
    }
}

#[test]
fn streams_are_tracked_per_ssrc_and_bounded() {
    let profile = SrtpProfile::AeadAes128Gcm;
    let key = master(profile, 1);
    let config = SrtpConfig::default().with_max_streams(2);
    let mut tx = SrtpContext::new(profile, &key, config).unwrap();
    let mut rx = SrtpContext::new(profile, &key, config).unwrap();
    for (ssrc, seq) in [(1, 100), (2, 65_000), (1, 101), (3, 7)] {
        let plain = rtp(seq, ssrc, 20);
        assert_eq!(
            unprotect(&mut rx, &protect(&mut tx, &plain)).unwrap(),
            plain
        );
    }
    assert_eq!(rx.rtp_state(1), Some((0, 101)));
    assert_eq!(rx.rtp_state(2), None, "least recently used SSRC evicted");
    assert_eq!(rx.rtp_state(3), Some((0, 7)));
    assert_eq!(rx.counters().streams_evicted, 1);
    assert_eq!(tx.counters().streams_evicted, 1);
}

#[test]
fn protect_needs_room_for_the_tag() {
    for profile in SrtpProfile::ALL {
        let (mut tx, _) = pair(profile);
        let mut buf = rtp(1, SSRC, 160);
        let len = buf.len();
        assert_eq!(
            tx.protect_rtp(&mut buf, len),
            Err(SrtpError::BufferTooSmall {
                needed: len + profile.rtp_overhead(),
                capacity: len
            })
        );
        let mut buf = rtcp_sr(SSRC);
        let len = buf.len();
        assert!(matches!(
            tx.protect_rtcp(&mut buf, len),
            Err(SrtpError::BufferTooSmall { .. })
        ));
        assert_eq!(tx.counters().malformed, 2);
        assert_eq!(tx.rtp_state(SSRC), None);
        assert_eq!(tx.next_srtcp_index(SSRC), 0);
    }
}

fn profile_strategy() -> impl Strategy<Value = SrtpProfile> {
    prop::sample::select(SrtpProfile::ALL.to_vec())
}

proptest! {
    /// Arbitrary bytes, lengths and capacities through all four calls: errors, never panics.
    #[test]
    fn arbitrary_input_never_panics(
        profile in profile_strategy(),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        len in 0usize..320,
        spare in 0usize..24,
    ) {
        let (mut tx, mut rx) = pair(profile);
        let mut buf = bytes.clone();
        buf.resize(bytes.len() + spare, 0);
        let _ = rx.unprotect_rtp(&mut buf.clone(), len);
        let _ = rx.unprotect_rtcp(&mut buf.clone(), len);
        let _ = tx.protect_rtp(&mut buf.clone(), len);
        let _ = tx.protect_rtcp(&mut buf, len);
    }

    /// Version-2 headers with random flags reach the CSRC/extension parsing.
    #[test]
    fn version_2_garbage_never_panics_or_authenticates(
        profile in profile_strategy(),
        first in 0x80u8..=0xbf,
        rest in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let (_, mut rx) = pair(profile);
        let mut buf = vec![first];
        buf.extend_from_slice(&rest);
        let len = buf.len();
        prop_assert!(rx.unprotect_rtp(&mut buf.clone(), len).is_err());
        prop_assert!(rx.unprotect_rtcp(&mut buf, len).is_err());
    }

    /// Any RTP packet survives the round trip for any profile.
    #[test]
    fn any_rtp_packet_round_trips(
        profile in profile_strategy(),
        seq in any::<u16>(),
        ssrc in any::<u32>(),
        payload in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let (mut tx, mut rx) = pair(profile);
        let mut plain = rtp(seq, ssrc, 0);
        plain.extend_from_slice(&payload);
        let srtp = protect(&mut tx, &plain);
        prop_assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain);
    }
}
