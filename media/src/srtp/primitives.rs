//! The three primitives SRTP is built from, behind small allocation-free wrappers:
//! AES in counter mode (RFC 3711 4.1.1), HMAC-SHA1 with precomputed pads (RFC 3711 4.2.1)
//! and AES-GCM (RFC 7714). Which crate backs each was decided by measurement; see the module
//! documentation of [`super`].

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use sha1::digest::generic_array::GenericArray;
use zeroize::Zeroize;

type Ctr128<C> = ctr::Ctr128BE<C>;

/// An expanded AES key used as a keystream generator (RFC 3711 4.1.1 "AES-CM").
///
/// The encryption key schedule is computed once; each packet clones it into a fresh
/// counter-mode state (a few hundred bytes of copying, cheaper than re-expanding the key).
/// Unboxed on purpose: the size is paid once per context, a pointer chase on every packet.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum AesCm {
    Aes128(aes::Aes128Enc),
    Aes256(aes::Aes256Enc),
}

impl AesCm {
    /// `key` must be 16 or 32 bytes.
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        match key.len() {
            16 => aes::Aes128Enc::new_from_slice(key).ok().map(Self::Aes128),
            32 => aes::Aes256Enc::new_from_slice(key).ok().map(Self::Aes256),
            _ => None,
        }
    }

    /// XORs `data` with the keystream AES(IV), AES(IV + 1), ... (128-bit big-endian counter).
    #[inline]
    pub(crate) fn apply_keystream(&self, iv: &[u8; 16], data: &mut [u8]) {
        let iv = GenericArray::from_slice(iv);
        match self {
            Self::Aes128(key) => {
                let mut c = Ctr128::<aes::Aes128Enc>::from_core(ctr::CtrCore::inner_iv_init(
                    key.clone(),
                    iv,
                ));
                c.apply_keystream(data);
            }
            Self::Aes256(key) => {
                let mut c = Ctr128::<aes::Aes256Enc>::from_core(ctr::CtrCore::inner_iv_init(
                    key.clone(),
                    iv,
                ));
                c.apply_keystream(data);
            }
        }
    }
}

/// SHA-1 initial hash value (FIPS 180-4 5.3.1).
const SHA1_IV: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];
const BLOCK: usize = 64;

#[inline]
fn compress(state: &mut [u32; 5], block: &[u8]) {
    sha1::compress(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// HMAC-SHA1 (RFC 2104) with the inner and outer pad blocks compressed once per key, so a
/// 172-byte packet costs four SHA-1 block compressions (three inner, one outer).
///
/// Built on the RustCrypto `sha1` compression function, which uses the SHA-NI instructions
/// when the CPU has them (runtime detection).
pub(crate) struct HmacSha1 {
    inner: [u32; 5],
    outer: [u32; 5],
}

impl HmacSha1 {
    /// `key` is at most one block (SRTP session authentication keys are 20 bytes).
    pub(crate) fn new(key: &[u8]) -> Self {
        assert!(key.len() <= BLOCK, "HMAC key longer than a block");
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = SHA1_IV;
        let mut outer = SHA1_IV;
        compress(&mut inner, &ipad);
        compress(&mut outer, &opad);
        ipad.zeroize();
        opad.zeroize();
        Self { inner, outer }
    }

    /// HMAC-SHA1 of `a || b`, where `b` (the SRTP ROC) is at most one block.
    #[inline]
    pub(crate) fn mac(&self, a: &[u8], b: &[u8]) -> [u8; 20] {
        debug_assert!(b.len() <= BLOCK);
        let mut state = self.inner;
        let full = a.len() - a.len() % BLOCK;
        for block in a[..full].chunks_exact(BLOCK) {
            compress(&mut state, block);
        }
        // What is left of `a` (< 64), then `b` (<= 64), then 0x80 and the 64-bit length.
        let rest = &a[full..];
        let mut tail = [0u8; 3 * BLOCK];
        let n = rest.len() + b.len();
        tail[..rest.len()].copy_from_slice(rest);
        tail[rest.len()..n].copy_from_slice(b);
        tail[n] = 0x80;
        let total = (n + 9).div_ceil(BLOCK) * BLOCK;
        let bits = ((BLOCK + a.len() + b.len()) as u64) * 8;
        tail[total - 8..total].copy_from_slice(&bits.to_be_bytes());
        for block in tail[..total].chunks_exact(BLOCK) {
            compress(&mut state, block);
        }

        let mut outer_block = [0u8; BLOCK];
        for (dst, word) in outer_block.chunks_exact_mut(4).zip(state) {
            dst.copy_from_slice(&word.to_be_bytes());
        }
        outer_block[20] = 0x80;
        outer_block[56..].copy_from_slice(&(((BLOCK + 20) as u64) * 8).to_be_bytes());
        let mut state = self.outer;
        compress(&mut state, &outer_block);

        let mut out = [0u8; 20];
        for (dst, word) in out.chunks_exact_mut(4).zip(state) {
            dst.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

impl Drop for HmacSha1 {
    fn drop(&mut self) {
        self.inner.zeroize();
        self.outer.zeroize();
    }
}

/// Compares a received tag with a computed one without an early exit.
#[inline]
pub(crate) fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// An AES-GCM key (ring).
pub(crate) struct Gcm(ring::aead::LessSafeKey);

/// RFC 7714: the GCM tag is always 16 bytes for SRTP.
pub(crate) const GCM_TAG_LEN: usize = 16;

impl Gcm {
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        let alg = match key.len() {
            16 => &ring::aead::AES_128_GCM,
            32 => &ring::aead::AES_256_GCM,
            _ => return None,
        };
        let key = ring::aead::UnboundKey::new(alg, key).ok()?;
        Some(Self(ring::aead::LessSafeKey::new(key)))
    }

    /// Encrypts `in_out` in place and returns the tag.
    #[inline]
    pub(crate) fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), in_out)
            // ring fails only for inputs beyond GCM's 64 GiB limit, which no datagram reaches.
            .expect("AES-GCM seal of a datagram cannot fail");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Verifies and decrypts `in_out` = ciphertext || tag in place; returns the plaintext length.
    /// On failure the bytes of `in_out` are unspecified (ring may have overwritten them).
    #[inline]
    pub(crate) fn open(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> Option<usize> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
        self.0
            .open_in_place(nonce, ring::aead::Aad::from(aad), in_out)
            .ok()
            .map(|plain| plain.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::srtp::unhex;

    /// RFC 2202 test cases 1, 2 and 6-style lengths: the precomputed-pad HMAC must equal the
    /// textbook one for every message length around the block boundaries.
    #[test]
    fn hmac_sha1_rfc2202() {
        let h = HmacSha1::new(&[0x0b; 20]);
        assert_eq!(
            h.mac(b"Hi There", &[]).to_vec(),
            unhex("b617318655057264e28bc0b6fb378c8ef146be00")
        );
        let h = HmacSha1::new(b"Jefe");
        assert_eq!(
            h.mac(b"what do ya want ", b"for nothing?").to_vec(),
            unhex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        );
        // Test case 3: key 0xaa x 20, 50 bytes of 0xdd.
        let h = HmacSha1::new(&[0xaa; 20]);
        assert_eq!(
            h.mac(&[0xdd; 46], &[0xdd; 4]).to_vec(),
            unhex("125d7342b9ac11cd91a39af48aa17b4f63f175d3")
        );
    }

    #[test]
    fn hmac_split_points_agree() {
        let h = HmacSha1::new(&[7; 20]);
        let msg: Vec<u8> = (0..200u8).collect();
        for len in 0..=196 {
            let whole = h.mac(&msg[..len + 4], &[]);
            assert_eq!(h.mac(&msg[..len], &msg[len..len + 4]), whole, "len {len}");
        }
    }

    #[test]
    fn tag_comparison() {
        assert!(tags_equal(&[1, 2, 3], &[1, 2, 3]));
        assert!(!tags_equal(&[1, 2, 3], &[1, 2, 4]));
        assert!(!tags_equal(&[1, 2], &[1, 2, 3]));
    }
}
