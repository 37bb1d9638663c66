//! Transcoder tests: simulated time, packets built by hand, output decoded and checked.

use super::*;
use crate::codec::{Law, OpusDecoder, OpusEncoder};
use crate::rtp::{RtpError, RtpPacket};

const SSRC_IN: u32 = 0x1111_2222;
const SSRC_OUT: u32 = 0xabcd_ef01;
const MS: u64 = 1_000_000;

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, (u8::from(marker) << 7) | pt];
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&ts.to_be_bytes());
    v.extend_from_slice(&ssrc.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn plan(input: Codec, output: Codec, ptime: u16) -> DirectionPlan {
    let pt = |c: Codec| c.static_pt().unwrap_or(111);
    DirectionPlan {
        input,
        input_pt: pt(input),
        output,
        output_pt: pt(output),
        output_ptime_ms: ptime,
        opus: OpusParams::default(),
        dtmf: None,
        cn_pts: vec![13],
        ssrc: SSRC_OUT,
    }
}

fn sine(n: usize, start: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

fn pull_all(t: &mut Transcoder) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; MAX_OUT_PACKET];
    while let Some(n) = t.pull(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// 20 ms (or `samples`) PCMU packets of the 440 Hz sine, ts from 1000.
fn pcmu_stream(count: usize, samples: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut p = vec![0u8; samples];
            Law::Ulaw.encode(&sine(samples, i * samples), &mut p);
            rtp(
                0,
                100 + i as u16,
                1000 + (i * samples) as u32,
                SSRC_IN,
                false,
                &p,
            )
        })
        .collect()
}

/// Opus packets of the 440 Hz sine, `ms` each; FEC on with 20 % expected loss.
fn opus_stream(count: usize, ms: usize) -> Vec<Vec<u8>> {
    let mut enc = OpusEncoder::new(&OpusParams {
        expected_loss_pct: 20,
        ..OpusParams::default()
    })
    .unwrap();
    let n = ms * 8;
    (0..count)
        .map(|i| {
            let mut p = [0u8; 1500];
            let len = enc.encode(&sine(n, i * n), &mut p).unwrap();
            rtp(
                111,
                7 + i as u16,
                5000 + (i * n * 6) as u32,
                SSRC_IN,
                false,
                &p[..len],
            )
        })
        .collect()
}

fn run(t: &mut Transcoder, packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        t.push(p, i as u64 * 20 * MS).unwrap();
        out.extend(pull_all(t));
    }
    out
}

fn decode_opus(packets: &[Vec<u8>]) -> Vec<i16> {
    let mut dec = OpusDecoder::new().unwrap();
    let mut pcm = Vec::new();
    let mut buf = [0i16; 960];
    for p in packets {
        let n = dec
            .decode(RtpPacket::new_unchecked(&p[..]).payload(), &mut buf)
            .unwrap();
        pcm.extend_from_slice(&buf[..n]);
    }
    pcm
}

fn decode_pcmu(packets: &[Vec<u8>]) -> Vec<i16> {
    let mut pcm = Vec::new();
    for p in packets {
        let pl = RtpPacket::new_unchecked(&p[..]).payload().to_vec();
        let mut buf = vec![0i16; pl.len()];
        Law::Ulaw.decode(&pl, &mut buf);
        pcm.extend_from_slice(&buf);
    }
    pcm
}

/// Best normalized correlation of `got` (after its first 800 samples) with the sine, over the
/// codec delays 0..=400 samples.
fn sine_correlation(got: &[i16]) -> f64 {
    let start = 800;
    let len = got.len() - start - 400;
    let mut best = f64::MIN;
    for lag in 0..=400 {
        let reference = sine(len, start - lag);
        let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
        for (a, b) in got[start..start + len].iter().zip(&reference) {
            let (a, b) = (f64::from(*a), f64::from(*b));
            xy += a * b;
            xx += a * a;
            yy += b * b;
        }
        best = best.max(xy / (xx * yy).sqrt());
    }
    best
}

fn hdr(p: &[u8]) -> (bool, u8, u16, u32, u32) {
    let r = RtpPacket::new_checked(p).unwrap();
    (
        r.marker(),
        r.payload_type(),
        r.sequence(),
        r.timestamp(),
        r.ssrc(),
    )
}

/// Output sequence numbers run on from `start` without a gap, timestamps step by `step`.
fn assert_continuous(out: &[Vec<u8>], start: u16, step: u32) {
    let first_ts = hdr(&out[0]).3;
    for (i, p) in out.iter().enumerate() {
        let (_, _, seq, ts, ssrc) = hdr(p);
        assert_eq!(seq, start.wrapping_add(i as u16), "seq of packet {i}");
        assert_eq!(
            ts,
            first_ts.wrapping_add(step * i as u32),
            "ts of packet {i}"
        );
        assert_eq!(ssrc, SSRC_OUT);
    }
}

#[test]
fn pcmu_to_opus_keeps_a_sine() {
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 20), 65530).unwrap();
    let out = run(&mut t, &pcmu_stream(100, 160));
    assert_eq!(out.len(), 100);
    assert_continuous(&out, 65530, 960);
    assert!(out.iter().all(|p| hdr(p).1 == 111));
    let c = sine_correlation(&decode_opus(&out));
    assert!(c > 0.95, "correlation {c}");
    assert_eq!(t.stats().decoded_frames, 100);
    assert_eq!(t.stats().packets_out, 100);
}

#[test]
fn opus_to_pcmu_keeps_a_sine() {
    let mut t = Transcoder::new(&plan(Codec::Opus, Codec::Pcmu, 20), 1).unwrap();
    let out = run(&mut t, &opus_stream(100, 20));
    assert_eq!(out.len(), 100);
    assert_continuous(&out, 1, 160);
    assert!(out.iter().all(|p| hdr(p).1 == 0 && p.len() == 12 + 160));
    let c = sine_correlation(&decode_pcmu(&out));
    assert!(c > 0.95, "correlation {c}");
}

#[test]
fn ptime_20_to_60_and_60_to_20() {
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 60), 0).unwrap();
    let out = run(&mut t, &pcmu_stream(30, 160));
    assert_eq!(out.len(), 10);
    assert_continuous(&out, 0, 2880);
    for p in &out {
        let pl = RtpPacket::new_unchecked(&p[..]).payload().to_vec();
        assert_eq!(OpusDecoder::packet_samples(&pl).unwrap(), 480);
    }
    assert!(sine_correlation(&decode_opus(&out)) > 0.9);

    let mut t = Transcoder::new(&plan(Codec::Opus, Codec::Pcmu, 20), 0).unwrap();
    let out = run(&mut t, &opus_stream(20, 60));
    assert_eq!(out.len(), 60);
    assert_continuous(&out, 0, 160);
    assert!(sine_correlation(&decode_pcmu(&out)) > 0.9);
}

#[test]
fn ptime_20_to_30_opus_decodes() {
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 30), 0).unwrap();
    let out = run(&mut t, &pcmu_stream(30, 160));
    assert_eq!(out.len(), 20);
    assert_continuous(&out, 0, 1440);
    for p in &out {
        let pl = RtpPacket::new_unchecked(&p[..]).payload().to_vec();
        assert_eq!(pl[0] & 3, 3, "code-3 packet");
        assert_eq!(OpusDecoder::packet_samples(&pl).unwrap(), 240);
    }
    let pcm = decode_opus(&out);
    assert_eq!(pcm.len(), 20 * 240);
    assert!(sine_correlation(&pcm) > 0.9);
}

#[test]
fn odd_input_ptime_and_g711_to_g711_is_exact() {
    // 25 ms PCMU in, 10 ms PCMU out: payload bytes pass through unchanged.
    let input = pcmu_stream(8, 200);
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Pcmu, 10), 0).unwrap();
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 20);
    assert_continuous(&out, 0, 80);
    let in_bytes: Vec<u8> = input.iter().flat_map(|p| p[12..].to_vec()).collect();
    let out_bytes: Vec<u8> = out.iter().flat_map(|p| p[12..].to_vec()).collect();
    assert_eq!(in_bytes, out_bytes);
}

#[test]
fn marker_goes_to_the_packet_with_the_marked_sample() {
    let mut input = pcmu_stream(12, 160);
    input[4][1] |= 0x80; // samples 640..800 -> second 60 ms output packet
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 60), 0).unwrap();
    let out = run(&mut t, &input);
    let marks: Vec<bool> = out.iter().map(|p| hdr(p).0).collect();
    assert_eq!(marks, [false, true, false, false]);
}

#[test]
fn reordering_within_the_window_is_undone() {
    let input = pcmu_stream(20, 160);
    let mut reordered = input.clone();
    reordered.swap(5, 6);
    reordered.swap(10, 12);
    let mut a = Transcoder::new(&plan(Codec::Pcmu, Codec::Pcmu, 20), 0).unwrap();
    let mut b = Transcoder::new(&plan(Codec::Pcmu, Codec::Pcmu, 20), 0).unwrap();
    let out_a = run(&mut a, &input);
    let out_b = run(&mut b, &reordered);
    assert_eq!(out_a, out_b);
    // 6 came after 5; 11 and 10 both came after 12.
    assert_eq!(b.stats().reordered, 3);
    assert_eq!(b.stats().concealed_frames, 0);
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn reorder_window_expires_by_time() {
    let input = pcmu_stream(10, 160);
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Pcmu, 20), 0).unwrap();
    for p in &input[..3] {
        t.push(p, 0).unwrap();
    }
    assert_eq!(pull_all(&mut t).len(), 3);
    t.push(&input[4], 80 * MS).unwrap(); // 3 is missing
    assert!(pull_all(&mut t).is_empty());
    assert_eq!(t.poll_timeout(), Some(80 * MS + REORDER_MAX_NS));
    t.handle_timeout(80 * MS + REORDER_MAX_NS - 1);
    assert!(pull_all(&mut t).is_empty());
    t.handle_timeout(80 * MS + REORDER_MAX_NS);
    let out = pull_all(&mut t);
    assert_eq!(out.len(), 2, "concealed frame and packet 4");
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.stats().concealed_frames, 1);
    // Packet 3 now is too late.
    t.push(&input[3], 200 * MS).unwrap();
    assert_eq!(t.stats().late_dropped, 1);
    assert!(pull_all(&mut t).is_empty());
}

#[test]
fn opus_loss_is_recovered_with_fec() {
    let mut input = opus_stream(30, 20);
    input.remove(10);
    let mut t = Transcoder::new(&plan(Codec::Opus, Codec::Pcmu, 20), 0).unwrap();
    let out = run(&mut t, &input);
    // Flushed by the packet-count limit of the reorder window; nothing missing in the output.
    assert_eq!(out.len(), 30);
    assert_continuous(&out, 0, 160);
    assert_eq!(t.stats().fec_recovered, 1);
    assert_eq!(t.stats().concealed_frames, 0);
    assert!(sine_correlation(&decode_pcmu(&out)) > 0.9);
}

#[test]
fn g711_loss_is_concealed() {
    let mut input = pcmu_stream(30, 160);
    input.remove(10);
    input.remove(10);
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 20), 0).unwrap();
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 30);
    assert_continuous(&out, 0, 960);
    assert_eq!(t.stats().concealed_frames, 2);
    assert_eq!(t.stats().fec_recovered, 0);
}

#[test]
fn long_gap_is_skipped_not_concealed() {
    let mut input = pcmu_stream(30, 160);
    input.drain(10..20); // 200 ms
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Pcmu, 20), 0).unwrap();
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 20);
    let ts: Vec<u32> = out.iter().map(|p| hdr(p).3).collect();
    assert_eq!(
        ts[10].wrapping_sub(ts[9]),
        11 * 160,
        "timestamps jump with the input"
    );
    let seqs: Vec<u16> = out.iter().map(|p| hdr(p).2).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<u16>>());
    assert_eq!(t.stats().gaps_skipped, 1);
    assert_eq!(t.stats().concealed_frames, 0);
}

#[test]
fn duplicates_are_dropped() {
    let input = pcmu_stream(5, 160);
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Pcmu, 20), 0).unwrap();
    for p in [
        &input[0], &input[1], &input[1], &input[3], &input[3], &input[0],
    ] {
        t.push(p, 0).unwrap();
    }
    assert_eq!(t.stats().duplicate_dropped, 3);
    assert_eq!(pull_all(&mut t).len(), 2);
}

#[test]
fn new_ssrc_and_timestamp_wrap_keep_output_continuous() {
    let mut input = pcmu_stream(20, 160);
    for (i, p) in input.iter_mut().enumerate() {
        // First source wraps its timestamp; the second starts elsewhere with other seqs.
        let (ts, ssrc, seq) = if i < 10 {
            (
                (u32::MAX - 500).wrapping_add(i as u32 * 160),
                SSRC_IN,
                65530u16.wrapping_add(i as u16),
            )
        } else {
            (77 + i as u32 * 160, 0x5555, 9000 + i as u16)
        };
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 20), 40000).unwrap();
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 20);
    assert_continuous(&out, 40000, 960);
    assert_eq!(t.stats().concealed_frames + t.stats().gaps_skipped, 0);
}

fn dtmf_event(seq: u16, ts: u32, duration: u16, end: bool, marker: bool) -> Vec<u8> {
    let mut ev = [5u8, 10, 0, 0];
    if end {
        ev[1] |= 0x80;
    }
    ev[2..4].copy_from_slice(&duration.to_be_bytes());
    rtp(101, seq, ts, SSRC_IN, marker, &ev)
}

#[test]
fn dtmf_is_relayed_with_mapped_pt_timestamp_and_duration() {
    let mut p = plan(Codec::Pcmu, Codec::Opus, 20);
    p.dtmf = Some(DtmfMap {
        in_pt: 101,
        in_clock: 8000,
        out_pt: 110,
        out_clock: 48000,
    });
    let mut t = Transcoder::new(&p, 0).unwrap();
    let audio = pcmu_stream(10, 160);
    let mut input: Vec<Vec<u8>> = audio[..5].to_vec();
    // The event starts at audio packet 5's timestamp; audio sequence numbers make room.
    let ev_ts = 1000 + 5 * 160;
    input.push(dtmf_event(105, ev_ts, 160, false, true));
    input.push(dtmf_event(106, ev_ts, 320, false, false));
    input.push(dtmf_event(107, ev_ts, 480, true, false));
    for (i, a) in audio[5..].iter().enumerate() {
        let mut a = a.clone();
        a[2..4].copy_from_slice(&(108 + i as u16).to_be_bytes());
        input.push(a);
    }
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 13);
    assert_eq!(t.stats().dtmf_relayed, 3);
    let seqs: Vec<u16> = out.iter().map(|p| hdr(p).2).collect();
    assert_eq!(seqs, (0..13).collect::<Vec<u16>>());
    let events: Vec<&Vec<u8>> = out.iter().filter(|p| hdr(p).1 == 110).collect();
    assert_eq!(events.len(), 3);
    let audio_out: Vec<&Vec<u8>> = out.iter().filter(|p| hdr(p).1 == 111).collect();
    let audio5_ts = hdr(audio_out[5]).3;
    for (k, e) in events.iter().enumerate() {
        let (m, _, _, ts, ssrc) = hdr(e);
        assert_eq!(m, k == 0);
        assert_eq!(ts, audio5_ts, "event timestamp maps like audio");
        assert_eq!(ssrc, SSRC_OUT);
        let pl = RtpPacket::new_unchecked(&e[..]).payload().to_vec();
        assert_eq!(pl[0], 5);
        assert_eq!(pl[1] & 0x80 != 0, k == 2);
        assert_eq!(u16::from_be_bytes([pl[2], pl[3]]), 960 * (k as u16 + 1));
    }
    assert_eq!(t.stats().concealed_frames, 0);
}

#[test]
fn dtmf_without_mapping_cn_and_unknown_pt_are_dropped() {
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Pcmu, 20), 0).unwrap();
    let audio = pcmu_stream(6, 160);
    let mut input = audio[..3].to_vec();
    input.push(dtmf_event(103, 1000 + 3 * 160, 160, false, true));
    input.push(rtp(13, 104, 1000 + 3 * 160, SSRC_IN, false, &[40]));
    input.push(rtp(99, 105, 1000 + 3 * 160, SSRC_IN, false, &[1, 2, 3]));
    for (i, a) in audio[3..].iter().enumerate() {
        let mut a = a.clone();
        a[2..4].copy_from_slice(&(106 + i as u16).to_be_bytes());
        input.push(a);
    }
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|p| hdr(p).1 == 0));
    let s = t.stats();
    assert_eq!(
        (s.unknown_pt_dropped, s.cn_dropped, s.dtmf_relayed),
        (2, 1, 0)
    );
    // The dropped packets' sequence numbers are no hole: nothing waits, nothing concealed.
    assert_eq!(s.concealed_frames, 0);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn malformed_input_is_refused() {
    let mut t = Transcoder::new(&plan(Codec::Opus, Codec::Pcmu, 20), 0).unwrap();
    assert_eq!(
        t.push(&[0x80, 0, 1], 0),
        Err(TranscodeError::Malformed(RtpError::TooShort))
    );
    let mut bad = rtp(111, 1, 0, SSRC_IN, false, &[0xfc]);
    bad[0] = 0x40;
    assert_eq!(
        t.push(&bad, 0),
        Err(TranscodeError::Malformed(RtpError::BadVersion(1)))
    );
    assert!(matches!(
        t.push(&rtp(111, 1, 0, SSRC_IN, false, &[]), 0),
        Err(TranscodeError::BadPayload(_))
    ));
    // Code 3 packet without its frame count byte.
    assert!(matches!(
        t.push(&rtp(111, 2, 0, SSRC_IN, false, &[0x0b]), 0),
        Err(TranscodeError::BadPayload(_))
    ));
    assert!(matches!(
        t.push(&vec![0x80; MAX_IN_PACKET + 1], 0),
        Err(TranscodeError::TooLarge(_))
    ));
    assert_eq!(t.stats().malformed, 5);
    assert!(pull_all(&mut t).is_empty());

    let mut p = plan(Codec::Pcmu, Codec::Opus, 25);
    assert!(matches!(
        Transcoder::new(&p, 0),
        Err(TranscodeError::InvalidPlan(_))
    ));
    p.output_ptime_ms = 20;
    assert_eq!(Transcoder::new(&p, 0).unwrap().plan(), &p);
    let msg = TranscodeError::Malformed(RtpError::TooShort).to_string();
    assert!(msg.contains("12-byte"), "{msg}");
}

#[test]
fn silence_without_loss_is_not_concealed_and_timestamps_jump() {
    // Packets 10.. come 60 ms later on the timestamp clock, with no sequence number missing:
    // the sender was silent (DTX, or comfort noise sluice dropped).
    let mut input = pcmu_stream(20, 160);
    for (i, p) in input.iter_mut().enumerate().skip(10) {
        let ts = 1000 + (i as u32 + 3) * 160;
        p[4..8].copy_from_slice(&ts.to_be_bytes());
    }
    let mut t = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 20), 0).unwrap();
    let out = run(&mut t, &input);
    assert_eq!(out.len(), 20, "no concealment frames are added");
    let ts: Vec<u32> = out.iter().map(|p| hdr(p).3).collect();
    assert_eq!(
        ts[10].wrapping_sub(ts[9]),
        4 * 960,
        "the output is silent too"
    );
    let seqs: Vec<u16> = out.iter().map(|p| hdr(p).2).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<u16>>());
    assert_eq!(t.stats().concealed_frames, 0);
}

#[test]
fn transcoders_of_one_plan_share_a_timeline_wherever_they_start() {
    // The userspace engine transcodes the first packets, then the stream moves to a worker,
    // whose transcoder starts in the middle: its timestamps must continue the engine's.
    for (input, output, stream) in [
        (Codec::Pcmu, Codec::Opus, pcmu_stream(20, 160)),
        (Codec::Opus, Codec::Pcmu, opus_stream(20, 20)),
    ] {
        let p = plan(input, output, 20);
        let mut engine = Transcoder::new(&p, 0).unwrap();
        let mut worker = Transcoder::new(&p, 500).unwrap();
        let early = run(&mut engine, &stream);
        let late = run(&mut worker, &stream[10..]);
        assert_eq!(late.len(), 10);
        for (a, b) in early[10..].iter().zip(&late) {
            assert_eq!(hdr(a).3, hdr(b).3, "{input:?} -> {output:?}: timestamps");
            assert_eq!(hdr(b).2, hdr(a).2 + 490, "sequence from seq_start");
        }
        assert_eq!(worker.next_out_seq(), 510);
    }
}

#[test]
fn reported_loss_sets_the_opus_fec_budget() {
    let mut p = plan(Codec::Pcmu, Codec::Opus, 20);
    let mut t = Transcoder::new(&p, 0).unwrap();
    assert_eq!(
        t.expected_loss(),
        0,
        "no FEC bits on a path nobody reported loss on"
    );
    t.set_expected_loss(7);
    assert_eq!(t.expected_loss(), 7);
    t.set_expected_loss(90);
    assert_eq!(t.expected_loss(), 20, "capped");
    // Still encodes.
    let out = run(&mut t, &pcmu_stream(10, 160));
    assert_eq!(out.len(), 10);
    // A receiver that did not ask for FEC gets none, whatever it reports.
    p.opus.inband_fec = false;
    let mut t = Transcoder::new(&p, 0).unwrap();
    t.set_expected_loss(10);
    assert_eq!(t.expected_loss(), 0);
    // G.711 output has no FEC to tune.
    let mut t = Transcoder::new(&plan(Codec::Opus, Codec::Pcmu, 20), 0).unwrap();
    t.set_expected_loss(10);
    assert_eq!(t.expected_loss(), 0);
}

/// Transcoding both ways, with a loss concealed on the Opus side, allocates nothing per packet
/// once the streams are warm (the packets are built before counting starts).
#[test]
fn transcoding_allocates_nothing_per_packet() {
    let pcmu = pcmu_stream(600, 160);
    let mut opus = opus_stream(600, 20);
    opus.remove(400); // one lost: FEC/PLC fill the gap
    let mut to_opus = Transcoder::new(&plan(Codec::Pcmu, Codec::Opus, 20), 0).unwrap();
    let mut to_pcmu = Transcoder::new(&plan(Codec::Opus, Codec::Pcmu, 20), 0).unwrap();
    let mut buf = [0u8; MAX_OUT_PACKET];
    let mut out = 0;
    let mut before = 0;
    for (i, (a, b)) in pcmu.iter().zip(&opus).enumerate() {
        if i == 100 {
            before = crate::test_alloc::allocations();
        }
        let now = i as u64 * 20 * MS;
        to_opus.push(a, now).unwrap();
        to_pcmu.push(b, now).unwrap();
        for t in [&mut to_opus, &mut to_pcmu] {
            if t.poll_timeout().is_some_and(|due| due <= now) {
                t.handle_timeout(now);
            }
            while t.pull(&mut buf).is_some() {
                out += 1;
            }
        }
    }
    let allocated = crate::test_alloc::allocations() - before;
    assert!(out >= 2 * 590, "{out} packets out");
    let s = to_pcmu.stats();
    assert!(s.concealed_frames + s.fec_recovered >= 1, "{s:?}");
    assert_eq!(allocated, 0, "allocations for 2 x 500 packets");
}
