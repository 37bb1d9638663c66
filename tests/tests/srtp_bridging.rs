//! SRTP termination on the userspace path (`--xdp off`): a plain RTP caller and an SDES-SRTP
//! callee talk through sluice, for every suite; forged and replayed SRTP never get through. The
//! far-end SRTP endpoint is sluice's own SRTP context, whose wire format is proven against
//! libsrtp by relay/tests/srtp_libsrtp_interop.rs.

use sluice_control::proto;
use sluice_relay::srtp::{SrtpConfig, SrtpContext, SrtpProfile};
use sluice_tests::*;

const A_SSRC: u32 = 0x0a0a_0a0a;
const B_SSRC: u32 = 0x0b0b_0b0b;

fn options(srtp: proto::Srtp) -> Option<proto::LegOptions> {
    Some(proto::LegOptions {
        srtp: srtp as i32,
        ..Default::default()
    })
}

/// The key of `a=crypto:<tag> <suite> inline:<b64>` lines in an SDP, by suite name.
fn offered_key(sdp: &str, suite: &str) -> (u32, Vec<u8>) {
    use base64::Engine as _;
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=crypto:") && l.contains(suite))
        .unwrap_or_else(|| panic!("no {suite} a=crypto line in\n{sdp}"));
    let mut parts = line["a=crypto:".len()..].split_whitespace();
    let tag: u32 = parts.next().unwrap().parse().unwrap();
    let b64 = parts.nth(1).unwrap().trim_start_matches("inline:");
    let b64 = b64.split('|').next().unwrap();
    (
        tag,
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn context(profile: SrtpProfile, master: &[u8]) -> SrtpContext {
    SrtpContext::new(profile, master, SrtpConfig::default()).unwrap()
}

fn protect_rtp(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + 64, 0);
    let n = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

fn unprotect_rtp(ctx: &mut SrtpContext, wire: &[u8]) -> Vec<u8> {
    let mut buf = wire.to_vec();
    let n = ctx
        .unprotect_rtp(&mut buf, wire.len())
        .unwrap_or_else(|e| panic!("what sluice sent does not unprotect: {e}"));
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_caller_talks_to_srtp_callee_in_every_suite() {
    bounded(async {
        let d = Daemon::start(&["--xdp", "off"]).await;
        let mut c = d.client().await;
        for (n, profile) in [
            SrtpProfile::AesCm128HmacSha1_80,
            SrtpProfile::AesCm128HmacSha1_32,
            SrtpProfile::AeadAes128Gcm,
            SrtpProfile::AeadAes256Gcm,
        ]
        .into_iter()
        .enumerate()
        {
            let suite = profile.sdes_name();
            let call_id = format!("srtp-{n}");
            let (a, b) = (Peer::v4(), Peer::v4());
            let to_b = offer(&mut c, &call_id, a.sdp(&[]), options(proto::Srtp::Offer))
                .await
                .unwrap();
            assert!(to_b.text.contains("RTP/SAVP"), "{}", to_b.text);
            let (tag, sluice_key) = offered_key(&to_b.text, suite);
            assert_eq!(sluice_key.len(), profile.master_len());
            let b_master: Vec<u8> = (0..profile.master_len() as u8)
                .map(|i| i.wrapping_mul(7) ^ n as u8)
                .collect();
            let b_sdp = b
                .sdp(&[&format!("a=crypto:{tag} {suite} inline:{}", b64(&b_master))])
                .replace("RTP/AVP", "RTP/SAVP");
            let to_a = answer(&mut c, &call_id, b_sdp, None).await.unwrap();
            assert!(
                to_a.text.contains("RTP/AVP") && !to_a.text.contains("a=crypto"),
                "the caller gets plain RTP: {}",
                to_a.text
            );
            let mut b_tx = context(profile, &b_master);
            let mut b_rx = context(profile, &sluice_key);

            // A (plain) -> B (SRTP).
            let sent: Vec<Vec<u8>> = (0..20u16)
                .map(|i| pcmu(100 + i, 160 * i as u32, A_SSRC))
                .collect();
            for p in &sent {
                a.send_rtp(to_a.rtp_addr(), p);
            }
            let got = b.recv_rtp_n(20);
            assert_eq!(got.len(), 20, "{suite}: B got {} of 20", got.len());
            for (i, (wire, _)) in got.iter().enumerate() {
                assert_ne!(wire, &sent[i], "{suite}: sent in the clear");
                assert_eq!(
                    unprotect_rtp(&mut b_rx, wire),
                    sent[i],
                    "{suite}: packet {i}"
                );
            }

            // B (SRTP) -> A (plain).
            let plain: Vec<Vec<u8>> = (0..20u16)
                .map(|i| pcmu(5000 + i, 80_000 + 160 * i as u32, B_SSRC))
                .collect();
            let wire: Vec<Vec<u8>> = plain.iter().map(|p| protect_rtp(&mut b_tx, p)).collect();
            for w in &wire {
                b.send_rtp(to_b.rtp_addr(), w);
            }
            let got = a.recv_rtp_n(20);
            assert_eq!(got.len(), 20, "{suite}: A got {} of 20", got.len());
            for (i, (bytes, _)) in got.iter().enumerate() {
                assert_eq!(bytes, &plain[i], "{suite}: packet {i} B -> A");
            }

            // A forged tag and a replay never reach A, and are counted on B's leg.
            let mut forged = protect_rtp(&mut b_tx, &pcmu(5020, 90_000, B_SSRC));
            let last = forged.len() - 1;
            forged[last] ^= 0x01;
            b.send_rtp(to_b.rtp_addr(), &forged);
            b.send_rtp(to_b.rtp_addr(), &wire[3]);
            a.assert_silent(&format!("{suite}: forged or replayed SRTP was forwarded"));
            let q = c
                .query(proto::QueryRequest {
                    call_id: call_id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .call
                .unwrap();
            let leg_b = &q.legs[1].streams[0];
            assert_eq!(leg_b.srtp, suite);
            assert_eq!(leg_b.srtp_auth_failures, 1, "{suite}");
            assert_eq!(leg_b.srtp_replayed, 1, "{suite}");
            assert_eq!(q.legs[0].streams[0].srtp, "plain");
            assert!(!leg_b.kernel_forwarded, "SRTP is never forwarded by XDP");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_caller_is_terminated_towards_a_plain_callee() {
    bounded(async {
        let d = Daemon::start(&["--xdp", "off"]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let profile = SrtpProfile::AesCm128HmacSha1_80;
        let a_master = [0x5au8; 30];
        let a_sdp = a
            .sdp(&[&format!(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}",
                b64(&a_master)
            )])
            .replace("RTP/AVP", "RTP/SAVP");
        let to_b = offer(&mut c, "strip", a_sdp, options(proto::Srtp::Strip))
            .await
            .unwrap();
        assert!(!to_b.text.contains("a=crypto") && to_b.text.contains("RTP/AVP"));
        let to_a = answer(&mut c, "strip", b.sdp(&[]), None).await.unwrap();
        let (tag, sluice_key) = offered_key(&to_a.text, "AES_CM_128_HMAC_SHA1_80");
        assert_eq!(tag, 1);
        assert_ne!(sluice_key, a_master, "sluice keys its own direction");
        let mut a_tx = context(profile, &a_master);
        let mut a_rx = context(profile, &sluice_key);

        let plain = pcmu(1, 160, A_SSRC);
        a.send_rtp(to_a.rtp_addr(), &protect_rtp(&mut a_tx, &plain));
        let (got, _) = b.recv_rtp().expect("B gets the decrypted packet");
        assert_eq!(got, plain);

        let back = pcmu(9, 1600, B_SSRC);
        b.send_rtp(to_b.rtp_addr(), &back);
        let (wire, _) = a.recv_rtp().expect("A gets the encrypted packet");
        assert_eq!(unprotect_rtp(&mut a_rx, &wire), back);

        // SRTCP: A's protected sender report reaches B as plain RTCP on its RTCP port.
        let sr = rtcp_sr(A_SSRC, 160, 1, 172);
        let mut buf = sr.clone();
        buf.resize(sr.len() + 64, 0);
        let n = a_tx.protect_rtcp(&mut buf, sr.len()).unwrap();
        a.send_rtcp(to_a.rtcp_addr(), &buf[..n]);
        let (got, _) = b.recv_rtcp().expect("B gets the decrypted RTCP");
        assert_eq!(got, sr);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_options_reject_what_cannot_work() {
    bounded(async {
        let d = Daemon::start(&["--xdp", "off"]).await;
        let mut c = d.client().await;
        let a = Peer::v4();
        let err = offer(&mut c, "req", a.sdp(&[]), options(proto::Srtp::Require))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("REQUIRE"), "{}", err.message());
        let f8 = a
            .sdp(&[
                "a=crypto:1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            ])
            .replace("RTP/AVP", "RTP/SAVP");
        let err = offer(&mut c, "f8", f8, options(proto::Srtp::Strip))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("not supported"), "{}", err.message());
    })
    .await;
}
