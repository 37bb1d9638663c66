//! Raw bindings to the part of libopus' API (`include/opus.h`, `opus_defines.h`) that sluice
//! uses: one mono encoder and decoder per transcoded stream, their controls, and packet
//! inspection. The safe wrapper is `sluice_relay::codec::opus`.
//!
//! Which libopus is linked (the system's or the vendored 1.3.1) is decided by `build.rs`;
//! [`LINKED`] says which, [`version`] what it reports.

#![allow(non_camel_case_types)]

use std::ffi::{CStr, c_char, c_int, c_uchar};

/// `opus_int32` and `opus_int16` on every platform libopus supports with a C99 compiler.
pub type opus_int32 = i32;
pub type opus_int16 = i16;

/// Opaque encoder state (`OpusEncoder` in opus.h).
#[repr(C)]
pub struct OpusEncoder {
    _private: [u8; 0],
}

/// Opaque decoder state (`OpusDecoder` in opus.h).
#[repr(C)]
pub struct OpusDecoder {
    _private: [u8; 0],
}

// Error codes (opus_defines.h).
pub const OPUS_OK: c_int = 0;
pub const OPUS_BAD_ARG: c_int = -1;
pub const OPUS_BUFFER_TOO_SMALL: c_int = -2;
pub const OPUS_INTERNAL_ERROR: c_int = -3;
pub const OPUS_INVALID_PACKET: c_int = -4;
pub const OPUS_UNIMPLEMENTED: c_int = -5;
pub const OPUS_INVALID_STATE: c_int = -6;
pub const OPUS_ALLOC_FAIL: c_int = -7;

// Applications and bandwidths (opus_defines.h).
pub const OPUS_APPLICATION_VOIP: c_int = 2048;
pub const OPUS_APPLICATION_AUDIO: c_int = 2049;
pub const OPUS_BANDWIDTH_NARROWBAND: c_int = 1101;
pub const OPUS_BANDWIDTH_WIDEBAND: c_int = 1103;
pub const OPUS_BANDWIDTH_FULLBAND: c_int = 1105;

// Control requests (opus_defines.h). SETs take an opus_int32, GETs an *mut opus_int32.
pub const OPUS_SET_BITRATE_REQUEST: c_int = 4002;
pub const OPUS_GET_BITRATE_REQUEST: c_int = 4003;
pub const OPUS_SET_MAX_BANDWIDTH_REQUEST: c_int = 4004;
pub const OPUS_GET_MAX_BANDWIDTH_REQUEST: c_int = 4005;
pub const OPUS_SET_COMPLEXITY_REQUEST: c_int = 4010;
pub const OPUS_GET_COMPLEXITY_REQUEST: c_int = 4011;
pub const OPUS_SET_INBAND_FEC_REQUEST: c_int = 4012;
pub const OPUS_GET_INBAND_FEC_REQUEST: c_int = 4013;
pub const OPUS_SET_PACKET_LOSS_PERC_REQUEST: c_int = 4014;
pub const OPUS_GET_PACKET_LOSS_PERC_REQUEST: c_int = 4015;
pub const OPUS_RESET_STATE: c_int = 4028;
/// `OPUS_SET_FORCE_MODE_REQUEST` from `src/opus_private.h`: not in the public header, but
/// handled by `opus_encoder_ctl` since 1.0.
pub const OPUS_SET_FORCE_MODE_REQUEST: c_int = 11002;
/// `MODE_SILK_ONLY` from `src/opus_private.h`.
pub const MODE_SILK_ONLY: c_int = 1000;

unsafe extern "C" {
    pub fn opus_encoder_create(
        fs: opus_int32,
        channels: c_int,
        application: c_int,
        error: *mut c_int,
    ) -> *mut OpusEncoder;
    pub fn opus_encoder_destroy(st: *mut OpusEncoder);
    pub fn opus_encode(
        st: *mut OpusEncoder,
        pcm: *const opus_int16,
        frame_size: c_int,
        data: *mut c_uchar,
        max_data_bytes: opus_int32,
    ) -> opus_int32;
    pub fn opus_encoder_ctl(st: *mut OpusEncoder, request: c_int, ...) -> c_int;

    pub fn opus_decoder_create(
        fs: opus_int32,
        channels: c_int,
        error: *mut c_int,
    ) -> *mut OpusDecoder;
    pub fn opus_decoder_destroy(st: *mut OpusDecoder);
    pub fn opus_decode(
        st: *mut OpusDecoder,
        data: *const c_uchar,
        len: opus_int32,
        pcm: *mut opus_int16,
        frame_size: c_int,
        decode_fec: c_int,
    ) -> c_int;
    pub fn opus_decoder_ctl(st: *mut OpusDecoder, request: c_int, ...) -> c_int;

    pub fn opus_packet_get_nb_samples(
        packet: *const c_uchar,
        len: opus_int32,
        fs: opus_int32,
    ) -> c_int;
    pub fn opus_strerror(error: c_int) -> *const c_char;
    pub fn opus_get_version_string() -> *const c_char;
}

/// Which libopus the build linked: `"system"` (found by pkg-config) or `"vendored"` (1.3.1).
#[cfg(sluice_opus_system)]
pub const LINKED: &str = "system";
#[cfg(not(sluice_opus_system))]
pub const LINKED: &str = "vendored";

/// libopus' own version string, e.g. "libopus 1.3.1".
pub fn version() -> &'static str {
    // SAFETY: libopus returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(opus_get_version_string()) }
        .to_str()
        .unwrap_or("libopus (version not UTF-8)")
}

/// libopus' text for an error code.
pub fn strerror(code: c_int) -> &'static str {
    // SAFETY: opus_strerror returns a static string for any code (unknown ones included).
    unsafe { CStr::from_ptr(opus_strerror(code)) }
        .to_str()
        .unwrap_or("unknown error")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers above are the ones libopus understands: each SET is accepted and
    /// its GET reads the value back (a wrong number gives OPUS_UNIMPLEMENTED or another value).
    #[test]
    fn control_requests_round_trip() {
        let mut err = 0;
        let enc = unsafe { opus_encoder_create(8000, 1, OPUS_APPLICATION_VOIP, &mut err) };
        assert_eq!(err, OPUS_OK);
        assert!(!enc.is_null());
        for (set, get, value) in [
            (OPUS_SET_BITRATE_REQUEST, OPUS_GET_BITRATE_REQUEST, 24_000),
            (OPUS_SET_COMPLEXITY_REQUEST, OPUS_GET_COMPLEXITY_REQUEST, 5),
            (OPUS_SET_INBAND_FEC_REQUEST, OPUS_GET_INBAND_FEC_REQUEST, 1),
            (
                OPUS_SET_PACKET_LOSS_PERC_REQUEST,
                OPUS_GET_PACKET_LOSS_PERC_REQUEST,
                7,
            ),
            (
                OPUS_SET_MAX_BANDWIDTH_REQUEST,
                OPUS_GET_MAX_BANDWIDTH_REQUEST,
                OPUS_BANDWIDTH_NARROWBAND,
            ),
        ] {
            let mut got: opus_int32 = -12345;
            unsafe {
                assert_eq!(opus_encoder_ctl(enc, set, value as opus_int32), OPUS_OK);
                assert_eq!(
                    opus_encoder_ctl(enc, get, &mut got as *mut opus_int32),
                    OPUS_OK
                );
            }
            assert_eq!(got, value, "request {set}/{get}");
        }
        unsafe {
            assert_eq!(
                opus_encoder_ctl(enc, OPUS_SET_FORCE_MODE_REQUEST, MODE_SILK_ONLY),
                OPUS_OK
            );
            assert_eq!(opus_encoder_ctl(enc, OPUS_RESET_STATE), OPUS_OK);
            assert_eq!(opus_encoder_ctl(enc, 999_999), OPUS_UNIMPLEMENTED);
            opus_encoder_destroy(enc);
        }
        assert!(version().starts_with("libopus 1."), "{}", version());
        assert_eq!(strerror(OPUS_INVALID_PACKET), "corrupted stream");
    }

    /// 20 ms of a tone encodes and decodes back to 160 samples at 8 kHz; the packet says so.
    #[test]
    fn encodes_and_decodes_a_frame() {
        let mut err = 0;
        let enc = unsafe { opus_encoder_create(8000, 1, OPUS_APPLICATION_VOIP, &mut err) };
        assert_eq!(err, OPUS_OK);
        let dec = unsafe { opus_decoder_create(8000, 1, &mut err) };
        assert_eq!(err, OPUS_OK);
        let pcm: Vec<i16> = (0..160)
            .map(|i| ((i as f32 * 0.3).sin() * 8000.0) as i16)
            .collect();
        let mut packet = [0u8; 400];
        let n = unsafe { opus_encode(enc, pcm.as_ptr(), 160, packet.as_mut_ptr(), 400) };
        assert!(n > 0, "encode: {}", strerror(n));
        let samples = unsafe { opus_packet_get_nb_samples(packet.as_ptr(), n, 48_000) };
        assert_eq!(samples, 960);
        let mut out = [0i16; 160];
        let got = unsafe { opus_decode(dec, packet.as_ptr(), n, out.as_mut_ptr(), 160, 0) };
        assert_eq!(got, 160);
        let bad = unsafe { opus_packet_get_nb_samples([0xffu8].as_ptr(), 1, 8000) };
        assert_eq!(bad, OPUS_INVALID_PACKET);
        unsafe {
            opus_encoder_destroy(enc);
            opus_decoder_destroy(dec);
        }
    }
}
