//! Per-request SDP work: parse an offer and write the rewritten one, as `Offer` does.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_control::sdp::Sdp;

const OFFER: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n\
c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 9 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn sdp(c: &mut Criterion) {
    c.bench_function("sdp parse+rewrite+write", |b| {
        b.iter(|| {
            let mut s = Sdp::parse(black_box(OFFER)).unwrap();
            let ip = "127.0.0.1".parse().unwrap();
            s.set_session_connection(ip);
            s.media[0].set_port(30000);
            s.media[0].set_rtcp(Some((30001, ip)));
            s.to_string()
        })
    });
}

criterion_group!(benches, sdp);
criterion_main!(benches);
