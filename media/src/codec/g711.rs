//! ITU-T G.711 u-law and A-law, bit-exact with the classic Sun `g711.c` (which is what every
//! softswitch and phone interoperates with).
//!
//! Decoding is a 256-entry table computed at compile time. Encoding uses tables indexed by the
//! sample's significant bits (u-law looks at 14 bits, A-law at 13), built once on first use:
//! 24 KiB that stay in cache on a busy worker, instead of a segment search per sample.

use std::sync::OnceLock;

const fn ulaw_to_linear(u: u8) -> i16 {
    const BIAS: i32 = 0x84;
    let u = !u;
    let mut t = (((u & 0x0f) as i32) << 3) + BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 { BIAS - t } else { t - BIAS }) as i16
}

const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_decode(ulaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if ulaw {
            ulaw_to_linear(i as u8)
        } else {
            alaw_to_linear(i as u8)
        };
        i += 1;
    }
    table
}

static ULAW_DECODE: [i16; 256] = build_decode(true);
static ALAW_DECODE: [i16; 256] = build_decode(false);

/// u-law encoding of a 14-bit sample (`pcm >> 2`): the segment is found from the position of
/// the highest set bit of the biased magnitude rather than by a table search.
fn ulaw_from_14bit(v: i16) -> u8 {
    const BIAS: i32 = 0x84 >> 2;
    const CLIP: i32 = 8159;
    let (mag, mask) = if v < 0 {
        (-(v as i32), 0x7f)
    } else {
        (v as i32, 0xff)
    };
    let mag = mag.min(CLIP) + BIAS;
    // mag is in 33..=8192: segment 0 covers 32..=63, each next one doubles.
    let seg = (31 - mag.leading_zeros() as i32) - 5;
    if seg >= 8 {
        return (0x7f ^ mask) as u8;
    }
    let quant = (mag >> (seg + 1)) & 0x0f;
    (((seg << 4) | quant) ^ mask) as u8
}

/// A-law encoding of a 13-bit sample (`pcm >> 3`).
fn alaw_from_13bit(v: i16) -> u8 {
    let (mag, mask) = if v >= 0 {
        (v as i32, 0xd5)
    } else {
        (-(v as i32) - 1, 0x55)
    };
    // Segment 0 covers 0..=31, segment n >= 1 covers 2^(n+4)..2^(n+5)-1.
    let seg = if mag < 32 {
        0
    } else {
        (31 - mag.leading_zeros() as i32) - 4
    };
    if seg >= 8 {
        return (0x7f ^ mask) as u8;
    }
    let quant = if seg < 2 {
        (mag >> 1) & 0x0f
    } else {
        (mag >> seg) & 0x0f
    };
    (((seg << 4) | quant) ^ mask) as u8
}

fn ulaw_encode_table() -> &'static [u8; 1 << 14] {
    static TABLE: OnceLock<Box<[u8; 1 << 14]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0u8; 1 << 14]);
        for (i, e) in t.iter_mut().enumerate() {
            // Index is the 14-bit two's complement value reinterpreted as unsigned.
            let v = ((i as i32) << 18 >> 18) as i16;
            *e = ulaw_from_14bit(v);
        }
        t
    })
}

fn alaw_encode_table() -> &'static [u8; 1 << 13] {
    static TABLE: OnceLock<Box<[u8; 1 << 13]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0u8; 1 << 13]);
        for (i, e) in t.iter_mut().enumerate() {
            let v = ((i as i32) << 19 >> 19) as i16;
            *e = alaw_from_13bit(v);
        }
        t
    })
}

#[inline]
pub fn ulaw_decode(u: u8) -> i16 {
    ULAW_DECODE[usize::from(u)]
}

#[inline]
pub fn alaw_decode(a: u8) -> i16 {
    ALAW_DECODE[usize::from(a)]
}

#[inline]
pub fn ulaw_encode(pcm: i16) -> u8 {
    ulaw_encode_table()[((pcm >> 2) as u16 & 0x3fff) as usize]
}

#[inline]
pub fn alaw_encode(pcm: i16) -> u8 {
    alaw_encode_table()[((pcm >> 3) as u16 & 0x1fff) as usize]
}

/// Which G.711 law.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Ulaw,
    Alaw,
}

impl Law {
    /// Decodes `src` into `dst[..src.len()]`; `dst` must be at least as long.
    pub fn decode(self, src: &[u8], dst: &mut [i16]) {
        let table = match self {
            Law::Ulaw => &ULAW_DECODE,
            Law::Alaw => &ALAW_DECODE,
        };
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = table[usize::from(s)];
        }
    }

    /// Encodes `src` into `dst[..src.len()]`; `dst` must be at least as long.
    pub fn encode(self, src: &[i16], dst: &mut [u8]) {
        match self {
            Law::Ulaw => {
                let t = ulaw_encode_table();
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = t[((s >> 2) as u16 & 0x3fff) as usize];
                }
            }
            Law::Alaw => {
                let t = alaw_encode_table();
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = t[((s >> 3) as u16 & 0x1fff) as usize];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classic Sun Microsystems g711.c, transcribed literally (table search and all) as
    /// the reference the table-driven code must match.
    mod sun {
        const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
        const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];

        fn search(val: i32, table: &[i32; 8]) -> i32 {
            for (i, &t) in table.iter().enumerate() {
                if val <= t {
                    return i as i32;
                }
            }
            8
        }

        pub fn linear2alaw(pcm: i16) -> u8 {
            let mut pcm_val = (pcm >> 3) as i32;
            let mask;
            if pcm_val >= 0 {
                mask = 0xD5;
            } else {
                mask = 0x55;
                pcm_val = -pcm_val - 1;
            }
            let seg = search(pcm_val, &SEG_AEND);
            if seg >= 8 {
                (0x7F ^ mask) as u8
            } else {
                let mut aval = seg << 4;
                if seg < 2 {
                    aval |= (pcm_val >> 1) & 0xF;
                } else {
                    aval |= (pcm_val >> seg) & 0xF;
                }
                (aval ^ mask) as u8
            }
        }

        pub fn alaw2linear(a_val: u8) -> i16 {
            let a_val = (a_val ^ 0x55) as i32;
            let mut t = (a_val & 0xF) << 4;
            let seg = (a_val & 0x70) >> 4;
            match seg {
                0 => t += 8,
                1 => t += 0x108,
                _ => {
                    t += 0x108;
                    t <<= seg - 1;
                }
            }
            (if a_val & 0x80 != 0 { t } else { -t }) as i16
        }

        pub fn linear2ulaw(pcm: i16) -> u8 {
            let mut pcm_val = (pcm >> 2) as i32;
            let mask;
            if pcm_val < 0 {
                pcm_val = -pcm_val;
                mask = 0x7F;
            } else {
                mask = 0xFF;
            }
            if pcm_val > 8159 {
                pcm_val = 8159;
            }
            pcm_val += 0x84 >> 2;
            let seg = search(pcm_val, &SEG_UEND);
            if seg >= 8 {
                (0x7F ^ mask) as u8
            } else {
                let uval = (seg << 4) | ((pcm_val >> (seg + 1)) & 0xF);
                (uval ^ mask) as u8
            }
        }

        pub fn ulaw2linear(u_val: u8) -> i16 {
            let u_val = (!u_val) as i32;
            let mut t = ((u_val & 0xF) << 3) + 0x84;
            t <<= (u_val & 0x70) >> 4;
            (if u_val & 0x80 != 0 {
                0x84 - t
            } else {
                t - 0x84
            }) as i16
        }
    }

    #[test]
    fn encode_matches_sun_on_all_inputs() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode(x), sun::linear2ulaw(x), "u-law {x}");
            assert_eq!(alaw_encode(x), sun::linear2alaw(x), "A-law {x}");
        }
    }

    #[test]
    fn decode_matches_sun_on_all_codes() {
        for c in 0..=255u8 {
            assert_eq!(ulaw_decode(c), sun::ulaw2linear(c), "u-law {c:#x}");
            assert_eq!(alaw_decode(c), sun::alaw2linear(c), "A-law {c:#x}");
        }
    }

    #[test]
    fn code_round_trips() {
        // Every code decodes to a value that encodes back to the same code, except u-law's
        // negative zero (0x7f) which the encoder never produces (it gives 0xff for 0).
        for c in 0..=255u8 {
            if c != 0x7f {
                assert_eq!(ulaw_encode(ulaw_decode(c)), c, "u-law {c:#x}");
            }
            assert_eq!(alaw_encode(alaw_decode(c)), c, "A-law {c:#x}");
        }
    }

    #[test]
    fn sample_round_trip_error_is_within_the_quantization_step() {
        for x in i16::MIN..=i16::MAX {
            let u = ulaw_decode(ulaw_encode(x)) as i32;
            let a = alaw_decode(alaw_encode(x)) as i32;
            let x = x as i32;
            // Largest step: 1024 (u-law, top segment, 16-bit scale) and 1024 (A-law); clipping
            // at the extremes adds a little for u-law (max output 32124).
            assert!(
                (u - x).abs() <= 1024 || x.abs() > 32124 - 512,
                "u-law {x} -> {u}"
            );
            assert!((a - x).abs() <= 1024, "A-law {x} -> {a}");
            // Sign is preserved for anything outside the first step.
            if x.abs() > 16 {
                assert_eq!(u.signum(), x.signum());
                assert_eq!(a.signum(), x.signum());
            }
        }
    }

    #[test]
    fn slice_helpers_agree_with_scalar() {
        let pcm: Vec<i16> = (0..1000)
            .map(|i| ((i * 977) % 65536 - 32768) as i16)
            .collect();
        let mut enc = vec![0u8; pcm.len()];
        let mut dec = vec![0i16; pcm.len()];
        for law in [Law::Ulaw, Law::Alaw] {
            law.encode(&pcm, &mut enc);
            law.decode(&enc, &mut dec);
            for i in 0..pcm.len() {
                let (e, d) = match law {
                    Law::Ulaw => (ulaw_encode(pcm[i]), ulaw_decode(enc[i])),
                    Law::Alaw => (alaw_encode(pcm[i]), alaw_decode(enc[i])),
                };
                assert_eq!(enc[i], e);
                assert_eq!(dec[i], d);
            }
        }
    }
}
