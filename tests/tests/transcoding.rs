//! G.711 <-> Opus transcoding end to end, through the real daemon: a PCMU-only caller (with
//! telephone-event/8000) and an Opus-only callee (with telephone-event/48000) complete a call.
//! sluice appends opus to the offer, the callee answers opus, the caller's answer names PCMU.
//! Each side sends a tone in its own codec; the other side must receive the same tone in its
//! codec, with sluice's own SSRC, consecutive sequence numbers and timestamps on its clock, and
//! DTMF events must arrive with their timestamps and durations mapped onto the callee's clock.
//!
//! On loopback (userspace engine, no privileges), and in network namespaces with XDP on, where the
//! transcoded stream leaves the kernel through AF_XDP to a worker (root and the XDP program
//! needed; otherwise that test prints why and passes), and again there with `--xdp off`.

use std::time::{Duration, Instant};

use sluice_control::proto;
use sluice_control::proto::control_client::ControlClient;
use sluice_relay::codec::g711::{ulaw_decode, ulaw_encode};
use sluice_relay::codec::{OpusDecoder, OpusEncoder};
use sluice_relay::handover::TRANSCODE_SEQ_MARGIN;
use sluice_relay::transcode::OpusParams;
use sluice_tests::netns::{self, Topology};
use sluice_tests::*;
use tonic::transport::Channel;

const A_SSRC: u32 = 0x0a0a_7777;
const B_SSRC: u32 = 0x0b0b_8888;
const A_TONE: f64 = 440.0;
const B_TONE: f64 = 700.0;
const FRAME: usize = 160;

/// Share of a signal's energy at `freq` (1.0 for a pure sine of that frequency), by Goertzel.
fn tone_share(pcm: &[i16], freq: f64) -> f64 {
    let n = pcm.len() as f64;
    let w = 2.0 * std::f64::consts::PI * freq / 8000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in pcm {
        let s = x as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let energy: f64 = pcm.iter().map(|&x| (x as f64) * (x as f64)).sum();
    if energy == 0.0 {
        return 0.0;
    }
    2.0 * power / (n * energy)
}

fn tone(freq: f64, frame: u32) -> Vec<i16> {
    (0..FRAME)
        .map(|i| {
            let t = (frame as usize * FRAME + i) as f64 / 8000.0;
            (8000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// The RTCP port next to an RTP address (RFC 3550: RTP + 1).
fn to_rtcp(rtp: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(rtp.ip(), rtp.port() + 1)
}

/// The payload type of `encoding` (e.g. "opus/48000") in an SDP's rtpmaps.
fn pt_of(sdp: &str, encoding: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.strip_prefix("a=rtpmap:")?;
        let (pt, enc) = rest.split_once(' ')?;
        enc.starts_with(encoding).then(|| pt.parse().ok())?
    })
}

/// An Opus-only answer (plus telephone-event/48000) from `peer`, using the offer's PTs.
fn opus_answer(peer: &Peer, opus_pt: u8, te_pt: u8) -> String {
    let ip = peer.ip();
    let rtp = peer.rtp_addr().port();
    let mut s = format!(
        "v=0\r\no=- {rtp} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {rtp} RTP/AVP {opus_pt} {te_pt}\r\n\
         a=rtpmap:{opus_pt} opus/48000/2\r\n\
         a=fmtp:{opus_pt} useinbandfec=1;maxplaybackrate=8000;stereo=0\r\n\
         a=rtpmap:{te_pt} telephone-event/48000\r\n\
         a=fmtp:{te_pt} 0-15\r\n"
    );
    let rtcp = peer.rtcp_addr().port();
    if rtcp != rtp + 1 {
        s.push_str(&format!("a=rtcp:{rtcp}\r\n"));
    }
    s
}

struct Header {
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
}

fn header(p: &[u8]) -> Header {
    assert!(p.len() >= 12 && p[0] >> 6 == 2, "not RTP: {p:?}");
    Header {
        marker: p[1] & 0x80 != 0,
        pt: p[1] & 0x7f,
        seq: u16::from_be_bytes([p[2], p[3]]),
        ts: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        ssrc: u32::from_be_bytes([p[8], p[9], p[10], p[11]]),
    }
}

/// The caller's and callee's media state.
struct Ends {
    a: Peer,
    b: Peer,
    a_sends: std::net::SocketAddr,
    b_sends: std::net::SocketAddr,
    opus_pt: u8,
    te48_pt: u8,
    enc: OpusEncoder,
    dec: OpusDecoder,
    frames: u32,
    b_seq: u16,
    /// What each side received: (frame number, header fields, decoded audio).
    at_b: Vec<(u32, Header, Vec<i16>)>,
    at_a: Vec<(u32, Header, Vec<i16>)>,
    /// Frame numbers after which A sent a DTMF event (five packets).
    dtmf_after: Vec<u32>,
}

impl Ends {
    /// One 20 ms frame each way; returns false if one did not arrive.
    fn exchange(&mut self) -> bool {
        let f = self.frames;
        self.frames += 1;
        let seq = 1000u16.wrapping_add(f as u16);
        // A -> B: PCMU in, Opus out.
        let ulaw: Vec<u8> = tone(A_TONE, f).iter().map(|&s| ulaw_encode(s)).collect();
        let pkt = rtp_packet(seq, 8000 + 160 * f, A_SSRC, 0, f == 0, &ulaw);
        self.a.send_rtp(self.a_sends, &pkt);
        let Some((got, _)) = self.b.recv_rtp() else {
            return false;
        };
        let h = header(&got);
        assert_eq!(h.pt, self.opus_pt, "A -> B leaves as opus");
        let mut pcm = vec![0i16; 960];
        let n = self.dec.decode(&got[12..], &mut pcm).expect("valid opus");
        pcm.truncate(n);
        self.at_b.push((f, h, pcm));
        // B -> A: Opus in, PCMU out.
        let mut opus = [0u8; 400];
        let len = self.enc.encode(&tone(B_TONE, f), &mut opus).unwrap();
        // B's sequence numbers run on without gaps while A sends DTMF: its timestamps jump.
        self.b_seq = self.b_seq.wrapping_add(1);
        let pkt = rtp_packet(
            self.b_seq,
            96_000 + 960 * f,
            B_SSRC,
            self.opus_pt,
            f == 0,
            &opus[..len],
        );
        self.b.send_rtp(self.b_sends, &pkt);
        let Some((got, _)) = self.a.recv_rtp() else {
            return false;
        };
        let h = header(&got);
        assert_eq!(h.pt, 0, "B -> A leaves as PCMU");
        let pcm = got[12..].iter().map(|&u| ulaw_decode(u)).collect();
        self.at_a.push((f, h, pcm));
        true
    }

    /// Sends one DTMF event from A (digit 5, three packets, the last one three times with the
    /// end bit, as RFC 4733 2.5.1.4 says) at the timestamp of the next audio frame, and checks
    /// what B gets: telephone-event/48000 with the timestamp on B's audio clock and durations
    /// times six.
    fn dtmf(&mut self) {
        let f = self.frames;
        let in_ts = 8000 + 160 * f;
        self.dtmf_after.push(f - 1);
        let (_, last_h, _) = self.at_b.last().expect("audio came first");
        let (last_in_ts, last_out_ts) = (8000 + 160 * (f - 1), last_h.ts);
        let expect_ts = last_out_ts.wrapping_add((in_ts - last_in_ts) * 6);
        let mut sent = Vec::new();
        for (i, (dur, end)) in [
            (160u16, false),
            (320, false),
            (480, true),
            (480, true),
            (480, true),
        ]
        .into_iter()
        .enumerate()
        {
            let payload = [
                5u8,
                if end { 0x80 | 10 } else { 10 },
                (dur >> 8) as u8,
                dur as u8,
            ];
            let seq = 1000u16.wrapping_add(f as u16).wrapping_add(i as u16);
            let pkt = rtp_packet(seq, in_ts, A_SSRC, 101, i == 0, &payload);
            self.a.send_rtp(self.a_sends, &pkt);
            sent.push((dur, end));
        }
        // Audio resumes after the event; its sequence numbers continue past the event's.
        self.frames += 5;
        let got = self.b.recv_rtp_n(5);
        assert_eq!(got.len(), 5, "B got {} of 5 DTMF packets", got.len());
        let first_seq = header(&got[0].0).seq;
        assert_eq!(
            first_seq,
            last_h.seq.wrapping_add(1),
            "events continue the audio's sequence"
        );
        for (i, ((p, _), (dur, end))) in got.iter().zip(&sent).enumerate() {
            let h = header(p);
            assert_eq!(h.pt, self.te48_pt, "event {i}: telephone-event/48000 PT");
            assert_eq!(h.ts, expect_ts, "event {i}: timestamp on B's 48 kHz clock");
            assert_eq!(h.seq, first_seq.wrapping_add(i as u16));
            assert_eq!(h.ssrc, last_h.ssrc, "same stream as the audio");
            assert_eq!(
                h.marker,
                i == 0,
                "event {i}: marker on the first packet only"
            );
            assert_eq!(p[12], 5, "event code");
            assert_eq!(p[13] & 0x80 != 0, *end, "event {i}: end bit");
            let d = u16::from_be_bytes([p[14], p[15]]);
            assert_eq!(d, dur * 6, "event {i}: duration on the 48 kHz clock");
        }
    }

    /// The audio each side received is the other side's tone, in a well-formed stream: one SSRC
    /// of sluice's own, sequence numbers without gaps (DTMF packets take theirs from the same
    /// space), timestamps on the receiver's clock that follow the sender's frame timing.
    ///
    /// `moved`: the stream moved from the userspace engine to a worker mid-call, which may skip
    /// up to [`TRANSCODE_SEQ_MARGIN`] sequence numbers once per direction (never reuse one).
    fn check_audio(&self, what: &str, moved: bool) {
        for (name, got, clock, tone_hz, other_hz, sender, dtmf) in [
            (
                "A -> B",
                &self.at_b,
                960u32,
                A_TONE,
                B_TONE,
                A_SSRC,
                &self.dtmf_after[..],
            ),
            ("B -> A", &self.at_a, 160, B_TONE, A_TONE, B_SSRC, &[][..]),
        ] {
            assert!(got.len() >= 30, "{what} {name}: only {} frames", got.len());
            let (f0, h0, _) = &got[0];
            assert_ne!(h0.ssrc, sender, "{what} {name}: sluice sends its own SSRC");
            let mut skipped = 0;
            for (k, (f, h, _)) in got.iter().enumerate() {
                assert_eq!(h.ssrc, h0.ssrc, "{what} {name}: one SSRC");
                let events = dtmf.iter().filter(|&&d| d < *f && d >= *f0).count();
                let want = k + 5 * events + skipped;
                let seq = h.seq.wrapping_sub(h0.seq) as usize;
                // The old owner may still send a few packets after the new one read where to
                // start, so the jump is up to the margin, not exactly it.
                let jump = seq.wrapping_sub(want);
                if moved && skipped == 0 && (1..=TRANSCODE_SEQ_MARGIN as usize).contains(&jump) {
                    skipped = jump;
                } else {
                    assert_eq!(seq, want, "{what} {name}: sequence number of frame {f}");
                }
                assert_eq!(
                    h.ts.wrapping_sub(h0.ts),
                    clock * (f - f0),
                    "{what} {name}: timestamp of frame {f}"
                );
            }
            let audio: Vec<i16> = got
                .iter()
                .skip(5) // codec warm-up
                .flat_map(|(_, _, pcm)| pcm.iter().copied())
                .collect();
            let (mine, other) = (tone_share(&audio, tone_hz), tone_share(&audio, other_hz));
            assert!(
                mine > 0.6 && other < 0.05,
                "{what} {name}: the tone did not survive transcoding: {tone_hz} Hz share {mine:.3}, {other_hz} Hz share {other:.3}"
            );
        }
        assert!(
            self.at_b[0].1.marker,
            "{what}: the first frame's marker is kept"
        );
    }
}

async fn set_up_call(c: &mut ControlClient<Channel>, a: Peer, b: Peer, call_id: &str) -> Ends {
    let to_b = offer(c, call_id, a.sdp(&[]), None).await.unwrap();
    let opus_pt = pt_of(&to_b.text, "opus/48000/2")
        .unwrap_or_else(|| panic!("sluice appends opus to a PCMU offer:\n{}", to_b.text));
    let te48_pt = pt_of(&to_b.text, "telephone-event/48000").unwrap_or_else(|| {
        panic!(
            "sluice offers telephone-event/48000 for opus:\n{}",
            to_b.text
        )
    });
    assert_eq!(
        pt_of(&to_b.text, "PCMU/8000"),
        Some(0),
        "caller's codec first"
    );
    let to_a = answer(c, call_id, opus_answer(&b, opus_pt, te48_pt), None)
        .await
        .unwrap();
    assert_eq!(
        pt_of(&to_a.text, "PCMU/8000"),
        Some(0),
        "the caller's answer names PCMU:\n{}",
        to_a.text
    );
    assert_eq!(
        pt_of(&to_a.text, "opus"),
        None,
        "the caller never sees opus:\n{}",
        to_a.text
    );
    let params = OpusParams {
        inband_fec: true,
        ..OpusParams::default()
    };
    Ends {
        a_sends: to_a.rtp_addr(),
        b_sends: to_b.rtp_addr(),
        a,
        b,
        opus_pt,
        te48_pt,
        enc: OpusEncoder::new(&params).unwrap(),
        dec: OpusDecoder::new().unwrap(),
        frames: 0,
        b_seq: 20_000,
        at_b: Vec::new(),
        at_a: Vec::new(),
        dtmf_after: Vec::new(),
    }
}

async fn check_query(c: &mut ControlClient<Channel>, call_id: &str) -> proto::CallInfo {
    let q = query(c, call_id).await.unwrap();
    let (s0, s1) = (stream(&q, 0), stream(&q, 1));
    assert!(s0.transcoded && s1.transcoded, "{q:#?}");
    assert_eq!(s0.codec, "PCMU/8000", "{q:#?}");
    assert_eq!(s1.codec, "opus/48000/2", "{q:#?}");
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_caller_and_opus_callee_on_loopback() {
    bounded(async {
        let d = Daemon::start(&["--xdp", "off"]).await;
        let mut c = d.client().await;
        let mut ends = set_up_call(&mut c, Peer::v4(), Peer::v4(), "tc-loopback").await;
        for i in 0..40 {
            assert!(ends.exchange(), "frame {i} was lost\n{}", d.log_text());
        }
        ends.dtmf();
        for i in 0..10 {
            assert!(ends.exchange(), "frame {i} after DTMF was lost");
        }
        ends.check_audio("loopback", false);
        check_query(&mut c, "tc-loopback").await;

        let q = query(&mut c, "tc-loopback").await.unwrap();
        let (a, b) = (stream(&q, 0), stream(&q, 1));
        assert_eq!(
            a.transcoded_out,
            50 + 5,
            "A's frames and events went out as opus: {a:#?}"
        );
        assert_eq!(a.transcode_dtmf, 5);
        assert_eq!(b.transcoded_out, 50, "B's frames went out as PCMU: {b:#?}");
        assert_eq!((a.transcode_concealed, b.transcode_concealed), (0, 0));
        assert_eq!(
            (a.reported_loss_pct, a.opus_fec_loss_pct),
            (-1, 0),
            "no FEC bits yet"
        );

        // B reports 10 % loss (26/256) on the opus stream it receives: the encoder towards B
        // starts spending in-band FEC on it. The report itself is not forwarded to A.
        let opus_ssrc = ends.at_b[0].1.ssrc;
        let mut rr = vec![0x81, 201, 0, 7];
        rr.extend(B_SSRC.to_be_bytes());
        rr.extend(opus_ssrc.to_be_bytes());
        rr.extend([26, 0, 0, 3]);
        rr.extend([0u8; 16]);
        ends.b.send_rtcp(to_rtcp(ends.b_sends), &rr);
        for i in 0..3 {
            assert!(ends.exchange(), "frame {i} after the RR was lost");
        }
        assert!(ends.a.recv_rtcp().is_none(), "B's RTCP reached A");
        let q = query(&mut c, "tc-loopback").await.unwrap();
        let (a, b) = (stream(&q, 0), stream(&q, 1));
        assert_eq!(b.rtcp_terminated, 1, "{b:#?}");
        assert_eq!(b.reported_loss_pct, 11, "26/256 rounded up");
        assert_eq!(
            a.opus_fec_loss_pct, 11,
            "A -> B encoder protects against it: {a:#?}"
        );

        // Comfort noise and unknown payload types are dropped, never passed to the other leg.
        let dropped = a.transcode_dropped;
        let (seq, ts) = (1000 + ends.frames as u16, 8000 + 160 * ends.frames);
        let cn = rtp_packet(seq, ts, A_SSRC, 13, false, &[40]);
        ends.a.send_rtp(ends.a_sends, &cn);
        let odd = rtp_packet(seq + 1, ts, A_SSRC, 99, false, &[0; 20]);
        ends.a.send_rtp(ends.a_sends, &odd);
        ends.b
            .assert_silent("CN or an unknown payload type got through");
        let q = query(&mut c, "tc-loopback").await.unwrap();
        assert_eq!(stream(&q, 0).transcode_dropped, dropped + 2);
    })
    .await;
}

async fn run_netns(d: &Daemon, topo: &Topology, workers: bool) {
    let mut c = d.client().await;
    let call_id = if workers { "tc-worker" } else { "tc-userspace" };
    let what = if workers {
        "worker path"
    } else {
        "userspace path"
    };
    let mut ends = set_up_call(
        &mut c,
        topo.caller_peer(false),
        topo.callee_peer(false),
        call_id,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        assert!(ends.exchange(), "{what}: a frame was lost while settling");
        let q = query(&mut c, call_id).await.unwrap();
        let moved = stream(&q, 0).kernel_forwarded && stream(&q, 1).kernel_forwarded;
        if !workers {
            assert!(!moved, "--xdp off never moves a stream");
            if ends.frames > 60 {
                break;
            }
        } else if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the transcoded stream never went to the worker: {q:#?}\nlog:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let q0 = check_query(&mut c, call_id).await;
    for i in 0..50 {
        assert!(ends.exchange(), "{what}: frame {i} was lost");
    }
    ends.dtmf();
    for i in 0..5 {
        assert!(ends.exchange(), "{what}: frame {i} after DTMF was lost");
    }
    ends.check_audio(what, workers);
    let q1 = check_query(&mut c, call_id).await;
    for leg in 0..2 {
        let (s0, s1) = (stream(&q0, leg), stream(&q1, leg));
        if workers {
            assert!(s1.kernel_forwarded);
            assert!(
                s1.kernel_packets - s0.kernel_packets >= 55,
                "leg {leg}: XDP handed the frames to the worker: {s0:#?} -> {s1:#?}"
            );
            assert_eq!(
                s1.userspace_packets, s0.userspace_packets,
                "leg {leg}: nothing reached the userspace relay"
            );
        } else {
            assert!(
                s1.userspace_packets - s0.userspace_packets >= 55,
                "leg {leg}"
            );
            assert_eq!(s1.kernel_packets, 0);
        }
    }
    c.delete(proto::DeleteRequest {
        call_id: call_id.into(),
        from_tag: String::new(),
        to_tag: String::new(),
    })
    .await
    .unwrap();
    if workers {
        let s = statistics(&mut c).await;
        assert_eq!(s.kernel_flows, 0, "delete removes the WORKER entries");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_caller_and_opus_callee_through_the_worker_and_userspace() {
    if netns::skip_without_xdp() {
        return;
    }
    bounded(async {
        let topo = Topology::new();
        for workers in [true, false] {
            let mut d = topo.start_sluice(workers).await;
            run_netns(&d, &topo, workers).await;
            d.stop_cleanly();
        }
    })
    .await;
}
