//! Per-packet work of the userspace path, without the syscalls: classify, parse the RTP header,
//! run the latch and the RFC 3550 receive statistics. This is what the engine adds on top of
//! recvmmsg/sendmmsg for every packet.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_relay::latch::{Latch, LatchConfig};
use sluice_relay::rtp::{PacketKind, RtpPacket, classify};
use sluice_relay::rtp_stats::RtpStats;

fn packet(seq: u16) -> [u8; 172] {
    let mut p = [0u8; 172];
    p[0] = 0x80;
    p[1] = 0; // PCMU
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(seq as u32 * 160).to_be_bytes());
    p[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    p
}

fn per_packet(c: &mut Criterion) {
    let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let mut g = c.benchmark_group("per_packet");
    g.throughput(Throughput::Elements(1));
    let packets: Vec<[u8; 172]> = (0..1024u16).map(packet).collect();

    g.bench_function("classify+parse", |b| {
        let mut i = 0;
        b.iter(|| {
            let p = &packets[i & 1023];
            i += 1;
            match classify(black_box(p)) {
                PacketKind::Rtp => RtpPacket::new_unchecked(&p[..]).sequence(),
                _ => 0,
            }
        })
    });

    g.bench_function("latch+stats (steady state)", |b| {
        let mut latch = Latch::new(LatchConfig::default());
        latch.signalling(Some(src), 0);
        let mut stats = RtpStats::new(8000);
        let mut seq = 0u16;
        let mut now = 1_000_000u64;
        b.iter(|| {
            seq = seq.wrapping_add(1);
            now += 20_000_000;
            let v = latch.on_packet(black_box(src), Some(seq), now);
            stats.on_rtp(0x1234_5678, seq, seq as u32 * 160, now);
            black_box(v)
        })
    });
    g.finish();
}

criterion_group!(benches, per_packet);
criterion_main!(benches);
