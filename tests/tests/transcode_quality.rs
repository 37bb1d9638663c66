//! Transcoding quality, scored with PESQ narrowband (ITU-T P.862, MOS-LQO) against the original
//! speech (`tests/data/speech_8k.wav`, see tests/data/README.md).
//!
//! Drives the real sans-IO [`Transcoder`] of sluice-relay directly (no daemon):
//!
//! - (a) reference: the speech through plain G.711 (PCMU encode + decode);
//! - (b) speech -> PCMU RTP (20 ms) -> Transcoder(PCMU -> Opus) -> Opus decoded at 8 kHz;
//! - (c) speech -> Opus, encoded as the Opus far end would (8 kHz, 24 kbit/s, in-band FEC) ->
//!   RTP -> Transcoder(Opus -> PCMU) -> G.711 decode;
//! - (d) as (c) with 5% seeded random loss on the Opus leg, once with FEC available and once
//!   with packet loss concealment (PLC) alone.
//!
//! Asserts MOS(b) >= MOS(a) - 0.1, MOS(c) >= MOS(a) - 0.1 and MOS(FEC) > MOS(PLC).
//!
//! PESQ is `tests/scripts/pesq_nb.py` (`pip install pesq numpy`). Without it the test fails
//! when `CI` is set and is skipped, saying why, otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_relay::codec::{OpusDecoder, OpusEncoder};
use sluice_relay::transcode::{Codec, DirectionPlan, MAX_OUT_PACKET, OpusParams, Transcoder};

const RATE: usize = 8000;
/// 20 ms at 8 kHz.
const FRAME: usize = 160;
const PT_PCMU: u8 = 0;
const PT_OPUS: u8 = 111;
/// Opus on the far end and out of sluice: 24 kbit/s (the operating point).
const OPUS_BITRATE: u32 = 24_000;
const LOSS_PCT: u32 = 5;
const LOSS_SEED: u64 = 0x005E_ED0F_1055;
/// The largest alignment shift searched, in samples (100 ms).
const MAX_LAG: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// --- WAV (8 kHz mono 16-bit PCM only) --------------------------------------------------------

fn read_wav(path: &Path) -> Vec<i16> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        &b[0..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "not a WAV file"
    );
    let mut at = 12;
    let mut fmt_ok = false;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &b[at + 8..(at + 8 + len).min(b.len())];
        if id == b"fmt " {
            let format = u16::from_le_bytes([body[0], body[1]]);
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert!(
                format == 1 && channels == 1 && rate == RATE as u32 && bits == 16,
                "{}: want 8 kHz mono 16-bit PCM",
                path.display()
            );
            fmt_ok = true;
        } else if id == b"data" {
            assert!(fmt_ok, "data before fmt");
            return body
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]))
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("{}: no data chunk", path.display());
}

fn write_wav(path: &Path, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + samples.len() * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&(RATE as u32).to_le_bytes());
    b.extend_from_slice(&(RATE as u32 * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

// --- G.711 u-law (ITU-T G.711; independent of sluice-relay's tables) ------------------------

fn ulaw_encode(pcm: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = pcm as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exp = (31 - (s as u32).leading_zeros() as i32 - 7).clamp(0, 7);
    let mant = (s >> (exp + 3)) & 0x0F;
    !(sign | (exp << 4) as u8 | mant as u8)
}

fn ulaw_decode(u: u8) -> i16 {
    let u = !u;
    let exp = ((u >> 4) & 0x07) as i32;
    let mant = (u & 0x0F) as i32;
    let mag = (((mant << 3) + 0x84) << exp) - 0x84;
    (if u & 0x80 != 0 { -mag } else { mag }) as i16
}

// --- RTP ---------------------------------------------------------------------------------------

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.extend_from_slice(&[0x80, pt]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// (payload type, sequence number, timestamp, payload).
fn parse_rtp(p: &[u8]) -> (u8, u16, u32, &[u8]) {
    assert!(p.len() >= 12 && p[0] >> 6 == 2, "not RTP: {p:02x?}");
    let mut at = 12 + 4 * (p[0] & 0x0F) as usize;
    if p[0] & 0x10 != 0 {
        let words = u16::from_be_bytes([p[at + 2], p[at + 3]]) as usize;
        at += 4 + 4 * words;
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        end -= p[end - 1] as usize;
    }
    (
        p[1] & 0x7F,
        u16::from_be_bytes([p[2], p[3]]),
        u32::from_be_bytes(p[4..8].try_into().unwrap()),
        &p[at..end],
    )
}

// --- The transcoder, driven with packets at their real-time instants --------------------------

/// sluice's plan for one direction; `expected_loss_pct` is what it tells its Opus encoder.
fn plan(
    input: Codec,
    input_pt: u8,
    output: Codec,
    output_pt: u8,
    expected_loss_pct: u8,
) -> DirectionPlan {
    DirectionPlan {
        input,
        input_pt,
        output,
        output_pt,
        output_ptime_ms: 20,
        opus: OpusParams {
            bitrate: OPUS_BITRATE,
            expected_loss_pct,
            ..OpusParams::default()
        },
        dtmf: None,
        cn_pts: Vec::new(),
        ssrc: 0x5EA1_0001,
    }
}

/// Pushes `(send instant in ns, packet)` in order, firing the transcoder's timers in between;
/// returns every packet it emits.
fn transcode(plan: &DirectionPlan, input: &[(u64, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut t = Transcoder::new(plan, 1000).expect("Transcoder::new");
    let mut out = Vec::new();
    let mut buf = vec![0u8; MAX_OUT_PACKET];
    let mut drain = |t: &mut Transcoder, out: &mut Vec<Vec<u8>>| {
        while let Some(n) = t.pull(&mut buf) {
            out.push(buf[..n].to_vec());
        }
    };
    let end = input.last().map_or(0, |(at, _)| *at) + 200_000_000;
    let mut next = input.iter().peekable();
    let mut now = 0u64;
    // Bounded: time only moves forward, to the next packet or timer, and stops at `end`.
    loop {
        let timer = t.poll_timeout();
        let packet_at = next.peek().map(|(at, _)| *at);
        let step = match (packet_at, timer) {
            (Some(p), Some(d)) => p.min(d),
            (Some(p), None) => p,
            (None, Some(d)) if d <= end => d,
            _ => break,
        };
        now = now.max(step);
        if timer.is_some_and(|d| d <= now) {
            t.handle_timeout(now);
            drain(&mut t, &mut out);
        }
        if packet_at.is_some_and(|p| p <= now) {
            let (_, pkt) = next.next().unwrap();
            t.push(pkt, now).expect("Transcoder::push");
            drain(&mut t, &mut out);
        }
    }
    let st = t.stats();
    eprintln!(
        "  transcoder: in {} out {} decoded {} fec_recovered {} concealed {}",
        st.packets_in, st.packets_out, st.decoded_frames, st.fec_recovered, st.concealed_frames
    );
    out
}

// --- The far ends --------------------------------------------------------------------------

/// The Opus far end's encoder: 8 kHz mono, VoIP, 24 kbit/s, libopus's default complexity (10).
/// `fec`: in-band FEC on, with the loss it expects (libopus spends LBRR bits only when the
/// expected loss is above 0).
fn opus_encoder(fec: bool, expected_loss_pct: u8) -> OpusEncoder {
    let mut e = OpusEncoder::voip().unwrap();
    e.set_bitrate(OPUS_BITRATE).unwrap();
    e.set_inband_fec(fec).unwrap();
    e.set_expected_loss(expected_loss_pct).unwrap();
    e
}

/// The speech as the PCMU far end sends it: one 20 ms packet every 20 ms.
fn pcmu_stream(speech: &[i16]) -> Vec<(u64, Vec<u8>)> {
    speech
        .chunks_exact(FRAME)
        .enumerate()
        .map(|(i, f)| {
            let payload: Vec<u8> = f.iter().map(|&s| ulaw_encode(s)).collect();
            let pkt = rtp(
                PT_PCMU,
                5000 + i as u16,
                (i * FRAME) as u32,
                0xCA11_E000,
                &payload,
            );
            (i as u64 * 20_000_000, pkt)
        })
        .collect()
}

/// The speech as the Opus far end sends it (RTP clock 48 kHz, RFC 7587), `drop` deciding which
/// packets the network loses.
fn opus_stream(
    mut enc: OpusEncoder,
    speech: &[i16],
    drop: impl Fn(usize) -> bool,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    for (i, f) in speech.chunks_exact(FRAME).enumerate() {
        let n = enc.encode(f, &mut buf).unwrap();
        if drop(i) {
            continue;
        }
        let pkt = rtp(
            PT_OPUS,
            7000 + i as u16,
            (i * 960) as u32,
            0x0905_0000,
            &buf[..n],
        );
        out.push((i as u64 * 20_000_000, pkt));
    }
    out
}

/// The PCMU far end's playout: samples placed by RTP timestamp, silence where nothing came.
fn play_pcmu(packets: &[Vec<u8>]) -> Vec<i16> {
    let Some(first) = packets.first() else {
        return Vec::new();
    };
    let ts0 = parse_rtp(first).2;
    let mut pcm = Vec::new();
    for p in packets {
        let (pt, _, ts, payload) = parse_rtp(p);
        assert_eq!(pt, PT_PCMU, "PCMU leg got payload type {pt}");
        let at = ts.wrapping_sub(ts0) as usize;
        if pcm.len() < at + payload.len() {
            pcm.resize(at + payload.len(), 0);
        }
        for (k, &u) in payload.iter().enumerate() {
            pcm[at + k] = ulaw_decode(u);
        }
    }
    pcm
}

/// The Opus far end's playout: decoded at 8 kHz in sequence order, PLC for any gap.
fn play_opus(packets: &[Vec<u8>]) -> Vec<i16> {
    let mut dec = OpusDecoder::new().unwrap();
    let mut pcm = Vec::new();
    let mut frame = vec![0i16; 960];
    let mut last_seq: Option<u16> = None;
    for p in packets {
        let (pt, seq, _, payload) = parse_rtp(p);
        assert_eq!(pt, PT_OPUS, "Opus leg got payload type {pt}");
        if let Some(l) = last_seq {
            for _ in 1..seq.wrapping_sub(l) {
                let n = dec.conceal(&mut frame[..FRAME]).unwrap();
                pcm.extend_from_slice(&frame[..n]);
            }
        }
        last_seq = Some(seq);
        let n = dec.decode(payload, &mut frame[..]).unwrap();
        pcm.extend_from_slice(&frame[..n]);
    }
    pcm
}

// --- Scoring ---------------------------------------------------------------------------------

/// Shifts `deg` by the delay that maximises its cross-correlation with `reference` (searching
/// +-MAX_LAG samples) and cuts/pads it to the reference's length.
fn align(reference: &[i16], deg: &[i16]) -> (Vec<i16>, isize) {
    let r: Vec<f64> = reference.iter().map(|&s| s as f64).collect();
    let d: Vec<f64> = deg.iter().map(|&s| s as f64).collect();
    let corr = |lag: isize| -> f64 {
        // deg[i + lag] against ref[i]
        let mut acc = 0.0;
        for (i, &x) in r.iter().enumerate() {
            let j = i as isize + lag;
            if j >= 0 && (j as usize) < d.len() {
                acc += x * d[j as usize];
            }
        }
        acc
    };
    let lag = (-(MAX_LAG as isize)..=MAX_LAG as isize)
        .max_by(|&a, &b| corr(a).total_cmp(&corr(b)))
        .unwrap();
    let out = (0..reference.len() as isize)
        .map(|i| {
            let j = i + lag;
            if j >= 0 && (j as usize) < deg.len() {
                deg[j as usize]
            } else {
                0
            }
        })
        .collect();
    (out, lag)
}

/// Whether PESQ can run here; Err(reason) if not.
fn pesq_available() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import pesq, numpy"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "python3 cannot import pesq/numpy (pip install pesq numpy): {}",
            // The exception's own line, e.g. "ModuleNotFoundError: No module named 'pesq'".
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
        )),
        Err(e) => Err(format!("python3 not runnable: {e}")),
    }
}

fn pesq(dir: &Path, name: &str, reference: &Path, deg: &[i16]) -> f64 {
    let path = dir.join(format!("{name}.wav"));
    write_wav(&path, deg);
    let o = Command::new("python3")
        .arg(root().join("scripts/pesq_nb.py"))
        .arg(reference)
        .arg(&path)
        .output()
        .expect("running pesq_nb.py");
    assert!(
        o.status.success(),
        "pesq_nb.py {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("pesq_nb.py prints a number")
}

#[test]
fn transcoded_speech_scores_close_to_g711() {
    if let Err(why) = pesq_available() {
        if std::env::var_os("CI").is_some() {
            panic!("PESQ is required in CI: {why}");
        }
        sluice_tests::skipped(&why);
        return;
    }
    let ref_path = root().join("data/speech_8k.wav");
    let speech = read_wav(&ref_path);
    let speech = &speech[..speech.len() / FRAME * FRAME];
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("transcode_quality");
    std::fs::create_dir_all(&dir).unwrap();
    let reference = dir.join("reference.wav");
    write_wav(&reference, speech);
    let complexity = OpusParams::default().complexity;
    eprintln!(
        "speech {:.2} s; Opus {} kbit/s, sluice's complexity {complexity}",
        speech.len() as f64 / RATE as f64,
        OPUS_BITRATE / 1000
    );

    let score = |name: &str, deg: Vec<i16>| -> f64 {
        let (aligned, lag) = align(speech, &deg);
        let mos = pesq(&dir, name, &reference, &aligned);
        eprintln!(
            "  {name:<28} PESQ NB MOS-LQO {mos:.3} (delay {:.2} ms)",
            lag as f64 * 1000.0 / RATE as f64
        );
        mos
    };

    // (a) plain G.711.
    let g711: Vec<i16> = speech
        .iter()
        .map(|&s| ulaw_decode(ulaw_encode(s)))
        .collect();
    let a = score("a_g711", g711);

    // (b) PCMU -> sluice -> Opus, on a leg without loss: sluice's encoder at its default
    // complexity, FEC negotiated but no loss reported yet (so no LBRR bits are spent).
    let pcmu_in = pcmu_stream(speech);
    let b = score(
        "b_pcmu_to_opus",
        play_opus(&transcode(
            &plan(Codec::Pcmu, PT_PCMU, Codec::Opus, PT_OPUS, 0),
            &pcmu_in,
        )),
    );
    // Not asserted, for the record: the same once the callee reports 5% loss (its RTCP sets the
    // encoder's expected loss), where libopus spends part of the 24 kbit/s on LBRR (FEC) data.
    let default_loss = LOSS_PCT as u8;
    let b_fec = score(
        "b_pcmu_to_opus_fec_default",
        play_opus(&transcode(
            &plan(Codec::Pcmu, PT_PCMU, Codec::Opus, PT_OPUS, default_loss),
            &pcmu_in,
        )),
    );

    // (c) Opus -> sluice -> PCMU, no loss: the far end has FEC on and expects no loss.
    let to_pcmu = plan(Codec::Opus, PT_OPUS, Codec::Pcmu, PT_PCMU, 0);
    let c = score(
        "c_opus_to_pcmu",
        play_pcmu(&transcode(
            &to_pcmu,
            &opus_stream(opus_encoder(true, 0), speech, |_| false),
        )),
    );
    // Not asserted: the same far end expecting 5% loss (LBRR bits, fewer for the audio).
    let c_fec = score(
        "c_opus_to_pcmu_fec_5pct",
        play_pcmu(&transcode(
            &to_pcmu,
            &opus_stream(opus_encoder(true, LOSS_PCT as u8), speech, |_| false),
        )),
    );

    // (d) 5% seeded random loss on the Opus leg, the same packets lost in both runs.
    let frames = speech.len() / FRAME;
    let mut rng = StdRng::seed_from_u64(LOSS_SEED);
    let lost: Vec<bool> = (0..frames)
        .map(|i| i > 0 && rng.random_range(0..100) < LOSS_PCT)
        .collect();
    let n_lost = lost.iter().filter(|&&l| l).count();
    eprintln!(
        "  loss: {n_lost} of {frames} packets ({:.1}%)",
        100.0 * n_lost as f64 / frames as f64
    );
    // FEC: the far end encodes with in-band FEC expecting 5% loss, and the transcoder, seeing
    // the packet after a lost one, can recover the lost frame from its LBRR data.
    let fec = score(
        "d_opus_to_pcmu_loss_fec",
        play_pcmu(&transcode(
            &to_pcmu,
            &opus_stream(opus_encoder(true, LOSS_PCT as u8), speech, |i| lost[i]),
        )),
    );
    // PLC alone: the far end encodes without in-band FEC, so the packet after a loss carries
    // no redundancy and the transcoder can only conceal (same transcoder, same lost packets).
    let plc = score(
        "d_opus_to_pcmu_loss_plc_only",
        play_pcmu(&transcode(
            &to_pcmu,
            &opus_stream(opus_encoder(false, 0), speech, |i| lost[i]),
        )),
    );

    eprintln!(
        "PESQ NB: G.711 {a:.3} | PCMU->Opus {b:.3} ({b_fec:.3} at {default_loss}% expected \
         loss) | Opus->PCMU {c:.3} ({c_fec:.3} far end FEC for 5%) | 5% loss: FEC {fec:.3}, PLC \
         only {plc:.3}"
    );
    assert!(
        b >= a - 0.1,
        "PCMU -> Opus scores {b:.3}, more than 0.1 below plain G.711 ({a:.3})"
    );
    assert!(
        c >= a - 0.1,
        "Opus -> PCMU scores {c:.3}, more than 0.1 below plain G.711 ({a:.3})"
    );
    assert!(
        fec > plc,
        "with 5% loss, FEC ({fec:.3}) does not score above PLC alone ({plc:.3})"
    );
}
