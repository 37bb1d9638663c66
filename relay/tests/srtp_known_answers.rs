//! Known-answer tests: RFC 3711 Appendix B.2 (AES-CM keystream), RFC 7714 section 16/17
//! (AEAD_AES_128_GCM and AEAD_AES_256_GCM, SRTP and SRTCP, session keys given directly) and
//! libsrtp's own `srtp_validate` packet (master key in: key derivation, AES-CM and HMAC-SHA1
//! together). RFC 3711 B.3 (key derivation) is a unit test in `srtp/kdf.rs`.

mod common;
use common::{hex, unhex};
use sluice_relay::srtp::{SessionKeys, SrtpConfig, SrtpContext, SrtpProfile};

fn context(profile: SrtpProfile, key: &str, salt: &str) -> SrtpContext {
    let keys =
        SessionKeys::from_session_keys(profile, &unhex(key), &unhex(salt), &[0; 20]).unwrap();
    SrtpContext::from_keys(&keys, SrtpConfig::default())
}

/// Protects `plain` and checks the result; then unprotects it with a fresh context.
fn protect_and_back(
    tx: &mut SrtpContext,
    rx: &mut SrtpContext,
    rtcp: bool,
    plain: &[u8],
    expected: &[u8],
) {
    let mut buf = vec![0u8; plain.len() + 64];
    buf[..plain.len()].copy_from_slice(plain);
    let len = if rtcp {
        tx.protect_rtcp(&mut buf, plain.len())
    } else {
        tx.protect_rtp(&mut buf, plain.len())
    }
    .unwrap();
    assert_eq!(hex(&buf[..len]), hex(expected));
    let len = if rtcp {
        rx.unprotect_rtcp(&mut buf, len)
    } else {
        rx.unprotect_rtp(&mut buf, len)
    }
    .unwrap();
    assert_eq!(hex(&buf[..len]), hex(plain));
}

/// RFC 3711 B.2: session key 2B7E1516..., salt F0F1...FCFD, SSRC 0, index 0. An all-zero
/// payload encrypts to the keystream itself; the RFC lists the first three blocks and the
/// blocks at counters 0xFEFF, 0xFF00 and 0xFF01.
#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let mut ctx = context(
        SrtpProfile::AesCm128HmacSha1_80,
        "2B7E151628AED2A6ABF7158809CF4F3C",
        "F0F1F2F3F4F5F6F7F8F9FAFBFCFD",
    );
    let blocks = 0xff02;
    let len = 12 + 16 * blocks;
    let mut packet = vec![0u8; len + 10];
    packet[0] = 0x80; // V=2, seq 0, SSRC 0
    assert_eq!(ctx.protect_rtp(&mut packet, len).unwrap(), len + 10);
    let block = |i: usize| hex(&packet[12 + 16 * i..12 + 16 * (i + 1)]);
    assert_eq!(block(0), "e03ead0935c95e80e166b16dd92b4eb4");
    assert_eq!(block(1), "d23513162b02d0f72a43a2fe4a5f97ab");
    assert_eq!(block(2), "41e95b3bb0a2e8dd477901e4fca894c0");
    assert_eq!(block(0xfeff), "ec8cdf7398607cb0f2d21675ea9ea1e4");
    assert_eq!(block(0xff00), "362b7c3c6773516318a077d7fc5073ae");
    assert_eq!(block(0xff01), "6a2cc3787889374fbeb4c81b17ba6c44");
}

const RFC7714_KEY_128: &str = "000102030405060708090a0b0c0d0e0f";
const RFC7714_KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// "Quid pro quo"
const RFC7714_SALT: &str = "517569642070726f2071756f";
/// SSRC 0x5501a0b2, seq 0xf17b, ROC 0, payload "Gallia est omnis divisa in partes tres".
const RFC7714_RTP: &str = "8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973
                           20646976 69736120 696e2070 61727465 73207472 6573";
/// Sender report of SSRC "Mars", sent with SRTCP index 0x5d4.
const RFC7714_RTCP: &str = "81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930
                            4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef";
const RFC7714_RTCP_INDEX: u32 = 0x5d4;

#[test]
fn rfc7714_16_1_aead_aes_128_gcm_rtp() {
    let p = SrtpProfile::AeadAes128Gcm;
    protect_and_back(
        &mut context(p, RFC7714_KEY_128, RFC7714_SALT),
        &mut context(p, RFC7714_KEY_128, RFC7714_SALT),
        false,
        &unhex(RFC7714_RTP),
        &unhex(
            "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5 0d294e6f
             42a5f47a 51c7d19b 36de3adf 8833899d 7f27beb1 6a9152cf 765ee439 0cce",
        ),
    );
}

#[test]
fn rfc7714_16_2_aead_aes_256_gcm_rtp() {
    let p = SrtpProfile::AeadAes256Gcm;
    protect_and_back(
        &mut context(p, RFC7714_KEY_256, RFC7714_SALT),
        &mut context(p, RFC7714_KEY_256, RFC7714_SALT),
        false,
        &unhex(RFC7714_RTP),
        &unhex(
            "8040f17b 8041f8d3 5501a0b2 32b1de78 a822fe12 ef9f78fa 332e33aa b1801238 9a58e2f3
             b50b2a02 76ffae0f 1ba63799 b87b7aa3 db36dfff d6b0f9bb 7878d7a7 6c13",
        ),
    );
}

/// The sender's SRTCP index starts at 0 (RFC 3711 3.4), so the RFC's packet is the
/// 0x5d5th one the context protects.
fn rfc7714_rtcp(profile: SrtpProfile, key: &str, expected: &str) {
    let mut tx = context(profile, key, RFC7714_SALT);
    let plain = unhex(RFC7714_RTCP);
    let mut scratch = vec![0u8; plain.len() + 20];
    for _ in 0..RFC7714_RTCP_INDEX {
        scratch[..plain.len()].copy_from_slice(&plain);
        tx.protect_rtcp(&mut scratch, plain.len()).unwrap();
    }
    assert_eq!(tx.next_srtcp_index(0x4d61_7273), RFC7714_RTCP_INDEX);
    protect_and_back(
        &mut tx,
        &mut context(profile, key, RFC7714_SALT),
        true,
        &plain,
        &unhex(expected),
    );
}

#[test]
fn rfc7714_17_1_aead_aes_128_gcm_rtcp() {
    rfc7714_rtcp(
        SrtpProfile::AeadAes128Gcm,
        RFC7714_KEY_128,
        "81c8000d 4d617273 63e94885 dcdab67c a727d766 2f6b7e99 7ff5c0f7 6c06f32d c676a5f1
         730d6fda 4ce09b46 86303ded 0bb9275b c84aa458 96cf4d2f c5abf872 45d9eade 800005d4",
    );
}

#[test]
fn rfc7714_17_2_aead_aes_256_gcm_rtcp() {
    rfc7714_rtcp(
        SrtpProfile::AeadAes256Gcm,
        RFC7714_KEY_256,
        "81c8000d 4d617273 d50ae4d1 f5ce5d30 4ba297e4 7d470c28 2c3ece5d bffe0a50 a2eaa5c1
         110555be 8415f658 c61de047 6f1b6fad 1d1eb30c 4446839f 57ff6f6c b26ac3be 800005d4",
    );
}

/// libsrtp `test/srtp_driver.c` `srtp_validate()`: master key and salt in, so this covers the
/// key derivation, AES-CM and HMAC-SHA1 of both SRTP and SRTCP (whose first index libsrtp
/// numbers 1, so its packet is the second one sluice sends).
#[test]
fn libsrtp_validate_aes_cm_128_hmac_sha1_80() {
    let master = unhex("e1f97a0d3e018be0d64fa32c06de4139 0ec675ad498afeebb6960b3aabe6");
    let p = SrtpProfile::AesCm128HmacSha1_80;
    let new = || SrtpContext::new(p, &master, SrtpConfig::default()).unwrap();
    protect_and_back(
        &mut new(),
        &mut new(),
        false,
        &unhex("800f1234 decafbad cafebabe abababab abababab abababab abababab"),
        &unhex(
            "800f1234 decafbad cafebabe 4e55dc4c e79978d8 8ca4d215 949d2402 b78d6acc
             99ea179b 8dbb",
        ),
    );

    let rtcp = unhex("81c8000b cafebabe abababab abababab abababab abababab");
    let mut tx = new();
    let mut scratch = [0u8; 64];
    scratch[..rtcp.len()].copy_from_slice(&rtcp);
    tx.protect_rtcp(&mut scratch, rtcp.len()).unwrap();
    protect_and_back(
        &mut tx,
        &mut new(),
        true,
        &rtcp,
        &unhex(
            "81c8000b cafebabe 7128035b e487b9bd bef89041 f977a5a8 80000001 993e08cd
             54d6c123 0798",
        ),
    );
}
