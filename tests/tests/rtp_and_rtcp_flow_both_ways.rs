//! The basic promise of a relay: RTP and RTCP go through unchanged in both directions, and the
//! control API counts exactly what went through.

use sluice_tests::*;

const A_SSRC: u32 = 0x1111_aaaa;
const B_SSRC: u32 = 0x2222_bbbb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_and_rtcp_flow_both_ways() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "flow-1", &a, &b).await;
        assert_eq!(call.to_a.conn.to_string(), "127.0.0.1");
        assert_eq!(call.to_b.conn.to_string(), "127.0.0.1");
        assert_ne!(call.a_sends_rtp(), call.b_sends_rtp());

        // A -> B, 50 RTP packets, byte for byte.
        let sent_a: Vec<Vec<u8>> = (0..50u16)
            .map(|i| pcmu(1000 + i, 160 * i as u32, A_SSRC))
            .collect();
        for p in &sent_a {
            a.send_rtp(call.a_sends_rtp(), p);
        }
        let got_b = b.recv_rtp_n(50);
        assert_eq!(
            got_b.len(),
            50,
            "B received {} of 50 RTP packets",
            got_b.len()
        );
        for (i, (bytes, from)) in got_b.iter().enumerate() {
            assert_eq!(bytes, &sent_a[i], "packet {i} changed on its way A -> B");
            // Symmetric RTP: media comes from the address B sends to.
            assert_eq!(
                *from,
                call.b_sends_rtp(),
                "A -> B packet {i} came from elsewhere"
            );
        }

        // B -> A, 50 RTP packets.
        let sent_b: Vec<Vec<u8>> = (0..50u16)
            .map(|i| pcmu(7 + i, 9000 + 160 * i as u32, B_SSRC))
            .collect();
        for p in &sent_b {
            b.send_rtp(call.b_sends_rtp(), p);
        }
        let got_a = a.recv_rtp_n(50);
        assert_eq!(
            got_a.len(),
            50,
            "A received {} of 50 RTP packets",
            got_a.len()
        );
        for (i, (bytes, from)) in got_a.iter().enumerate() {
            assert_eq!(bytes, &sent_b[i], "packet {i} changed on its way B -> A");
            assert_eq!(
                *from,
                call.a_sends_rtp(),
                "B -> A packet {i} came from elsewhere"
            );
        }

        // RTCP both ways, port to port (no rtcp-mux anywhere).
        assert!(!call.to_a.rtcp_mux && !call.to_b.rtcp_mux);
        let sr_a: Vec<Vec<u8>> = (0..3)
            .map(|i| rtcp_sr(A_SSRC, 160 * 50, 50 + i, 8600))
            .collect();
        for p in &sr_a {
            a.send_rtcp(call.a_sends_rtcp(), p);
        }
        for (i, want) in sr_a.iter().enumerate() {
            let (got, from) = b
                .recv_rtcp()
                .unwrap_or_else(|| panic!("B got no RTCP #{i}"));
            assert_eq!(&got, want, "RTCP #{i} changed A -> B");
            assert_eq!(from, call.b_sends_rtcp());
        }
        let sr_b: Vec<Vec<u8>> = (0..2)
            .map(|i| rtcp_sr(B_SSRC, 9000, 50 + i, 8600))
            .collect();
        for p in &sr_b {
            b.send_rtcp(call.b_sends_rtcp(), p);
        }
        for (i, want) in sr_b.iter().enumerate() {
            let (got, from) = a
                .recv_rtcp()
                .unwrap_or_else(|| panic!("A got no RTCP #{i}"));
            assert_eq!(&got, want, "RTCP #{i} changed B -> A");
            assert_eq!(from, call.a_sends_rtcp());
        }
        // Nothing extra on the RTP sockets (RTCP must not leak onto RTP ports).
        a.assert_silent("after the exchange");
        b.assert_silent("after the exchange");

        let bytes = |v: &[Vec<u8>]| v.iter().map(|p| p.len() as u64).sum::<u64>();
        // `packets`/`bytes` count every accepted packet from the endpoint, RTP and RTCP.
        let info = wait_query(&mut c, &call.id, "all packets counted", |i| {
            stream(i, 0).packets == 53 && stream(i, 1).packets == 52
        })
        .await;
        assert_eq!(info.legs[0].tag, FROM_TAG);
        assert_eq!(info.legs[1].tag, TO_TAG);
        let (sa, sb) = (stream(&info, 0), stream(&info, 1));
        assert_eq!(sa.packets, 53);
        assert_eq!(sa.rtcp_packets, 3);
        assert_eq!(sa.bytes, bytes(&sent_a) + bytes(&sr_a));
        assert_eq!(sb.packets, 52);
        assert_eq!(sb.rtcp_packets, 2);
        assert_eq!(sb.bytes, bytes(&sent_b) + bytes(&sr_b));
        assert_eq!(sa.latched_peer, a.rtp_addr().to_string());
        assert_eq!(sb.latched_peer, b.rtp_addr().to_string());
        assert_eq!(sa.sdp_peer, a.rtp_addr().to_string());
        assert_eq!(sb.sdp_peer, b.rtp_addr().to_string());
        assert_eq!(sa.ssrc, A_SSRC);
        assert_eq!(sb.ssrc, B_SSRC);
        assert_eq!(sa.local_rtp_port, call.a_sends_rtp().port() as u32);
        assert_eq!(sb.local_rtp_port, call.b_sends_rtp().port() as u32);
        assert_eq!(sa.local_rtcp_port, call.a_sends_rtcp().port() as u32);
        assert_eq!(sb.local_rtcp_port, call.b_sends_rtcp().port() as u32);
        for s in [sa, sb] {
            assert_eq!(s.rtp_lost, 0);
            assert_eq!(s.dropped_wrong_source, 0);
            assert_eq!(s.dropped_direction, 0);
            assert_eq!(s.dropped_malformed, 0);
            assert_eq!(s.direction, "sendrecv");
            assert!(s.last_packet_unix_ms > 0);
            assert_eq!(s.userspace_packets, s.packets);
            assert_eq!(s.kernel_packets, 0);
        }

        let st = statistics(&mut c).await;
        assert_eq!(st.calls_current, 1);
        assert_eq!(st.calls_total, 1);
        assert_eq!(st.ports_in_use, 4, "one stream: an RTP+RTCP pair per side");
        assert_eq!(st.packets_relayed, 105);
        assert_eq!(
            st.bytes_relayed,
            bytes(&sent_a) + bytes(&sr_a) + bytes(&sent_b) + bytes(&sr_b)
        );
        assert_eq!(st.packets_dropped, 0);
        assert_eq!(st.forwarding_path, "userspace");
    })
    .await
}
