//! SRTP protect and unprotect of one 172-byte RTP packet (12-byte header, 160-byte payload:
//! 20 ms of G.711) for every profile. Only the call is timed: building the input packet
//! (plain for protect, protected for unprotect) is criterion's untimed batch setup.
//!
//! With `SLUICE_SRTP_BENCH=PACKETS` in the environment the binary instead runs the measurement
//! of `cargo xtask bench srtp`: the same chunked loop as libsrtp's side of that comparison
//! (relay/tests/srtp_harness/harness.c, `bench` mode), printing one line per profile.

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use sluice_relay::srtp::{MAX_RTP_OVERHEAD, SrtpConfig, SrtpContext, SrtpProfile};

const PAYLOAD: usize = 160;
const LEN: usize = 12 + PAYLOAD;

/// harness.c's packet: PCMU header, SSRC 0x12345678, payload bytes 0xd5 (mu-law silence).
fn packet(seq: u16) -> [u8; LEN + MAX_RTP_OVERHEAD] {
    let mut p = [0xd5u8; LEN + MAX_RTP_OVERHEAD];
    p[..12].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]);
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p
}

fn srtp(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp");
    g.throughput(Throughput::Elements(1));
    for profile in SrtpProfile::ALL {
        let key: Vec<u8> = (0..profile.master_len()).map(|i| i as u8).collect();
        let new = || SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap();

        // Context creation: key derivation and key schedules (once per leg and direction).
        g.bench_function(format!("new/{profile}"), |b| b.iter(new));

        let mut tx = new();
        let mut seq = 0u16;
        g.bench_function(format!("protect/{profile}"), |b| {
            b.iter_batched_ref(
                || {
                    seq = seq.wrapping_add(1);
                    packet(seq)
                },
                |buf| tx.protect_rtp(buf, LEN).unwrap(),
                BatchSize::SmallInput,
            )
        });

        let (mut tx, mut rx) = (new(), new());
        let mut seq = 0u16;
        g.bench_function(format!("unprotect/{profile}"), |b| {
            b.iter_batched_ref(
                || {
                    seq = seq.wrapping_add(1);
                    let mut p = packet(seq);
                    let len = tx.protect_rtp(&mut p, LEN).unwrap();
                    (p, len)
                },
                |(buf, len)| rx.unprotect_rtp(buf, *len).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// `cargo xtask bench srtp`'s loop, kept identical to harness.c's `bench()`: chunks of 1024
/// packets with fresh sequence numbers (the ROC rolls over), filled untimed, then protected
/// (timed) and unprotected (timed).
fn chunked(packets: u64) {
    const CHUNK: usize = 1024;
    const SLOT: usize = 256;
    for profile in SrtpProfile::ALL {
        // harness.c's key: byte i is i * 7 + 1.
        let key: Vec<u8> = (0..profile.master_len())
            .map(|i| (i * 7 + 1) as u8)
            .collect();
        let mut tx = SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap();
        let mut rx = SrtpContext::new(profile, &key, SrtpConfig::default()).unwrap();
        let mut bufs = vec![[0u8; SLOT]; CHUNK];
        let mut lens = [0usize; CHUNK];
        let (mut t_protect, mut t_unprotect) = (0u128, 0u128);
        let mut seq = 0u16;
        let mut done = 0u64;
        while done < packets {
            for (buf, len) in bufs.iter_mut().zip(&mut lens) {
                buf[..LEN].copy_from_slice(&packet(seq)[..LEN]);
                *len = LEN;
                seq = seq.wrapping_add(1);
            }
            let t0 = std::time::Instant::now();
            for (buf, len) in bufs.iter_mut().zip(&mut lens) {
                *len = tx.protect_rtp(buf, *len).expect("protect");
            }
            let t1 = std::time::Instant::now();
            for (buf, len) in bufs.iter_mut().zip(&mut lens) {
                *len = rx.unprotect_rtp(buf, *len).expect("unprotect");
            }
            let t2 = std::time::Instant::now();
            t_protect += (t1 - t0).as_nanos();
            t_unprotect += (t2 - t1).as_nanos();
            done += CHUNK as u64;
        }
        println!(
            "{profile} protect_ns {:.1} unprotect_ns {:.1}",
            t_protect as f64 / done as f64,
            t_unprotect as f64 / done as f64
        );
    }
}

criterion_group!(benches, srtp);

fn main() {
    if let Some(packets) = std::env::var("SLUICE_SRTP_BENCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        chunked(packets);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
