//! RFC 5761 rtcp-mux is a per-side matter for a relay: a muxing caller and a non-muxing callee
//! each get RTCP where they expect it.

use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_mux_is_terminated_per_side() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish_with(&mut c, "mux", &a, &["a=rtcp-mux"], &b, &[]).await;

        // The caller asked for mux and gets it whatever the callee chose.
        assert!(
            call.to_a.rtcp_mux,
            "answer to the muxing caller lacks a=rtcp-mux:\n{}",
            call.to_a.text
        );
        assert_eq!(call.a_sends_rtcp(), call.a_sends_rtp());
        // The callee was offered mux, declined, and has a separate relay RTCP port.
        assert!(
            call.to_b.rtcp.is_some(),
            "offer to the callee lacks a=rtcp:\n{}",
            call.to_b.text
        );
        assert_ne!(call.b_sends_rtcp(), call.b_sends_rtp());

        // Caller: RTP and RTCP both from and to its RTP port.
        let sr_a = rtcp_sr(0xa, 4000, 25, 4000);
        a.send_rtp(call.a_sends_rtp(), &pcmu(1, 160, 0xa));
        a.send_rtp(call.a_sends_rtp(), &sr_a);
        let (got, _) = b.recv_rtp().expect("callee got no RTP");
        assert_eq!(got, pcmu(1, 160, 0xa));
        let (got, from) = b.recv_rtcp().expect("callee got no RTCP on its RTCP port");
        assert_eq!(got, sr_a);
        assert_eq!(
            from,
            call.b_sends_rtcp(),
            "RTCP to the callee from the wrong relay port"
        );
        b.assert_silent("the muxed RTCP must not also arrive on the callee's RTP port");

        // Callee: RTCP from its RTCP port to the relay's RTCP port, arriving muxed at the caller.
        let sr_b = rtcp_sr(0xb, 8000, 30, 4800);
        b.send_rtcp(call.b_sends_rtcp(), &sr_b);
        b.send_rtp(call.b_sends_rtp(), &pcmu(1, 160, 0xb));
        // They reach the relay on two sockets, so either may be relayed first.
        let mut got = a.recv_rtp_n(2);
        assert_eq!(
            got.len(),
            2,
            "caller did not get both RTCP and RTP on its RTP port"
        );
        assert!(got.iter().all(|(_, from)| *from == call.a_sends_rtp()));
        got.sort_by_key(|(p, _)| p[1] != 200);
        assert_eq!(got[0].0, sr_b, "the callee's RTCP did not arrive muxed");
        assert_eq!(got[1].0, pcmu(1, 160, 0xb));
        a.assert_silent("nothing else for the caller (its RTCP port is unused)");

        let info = wait_query(&mut c, &call.id, "RTCP counted", |i| {
            stream(i, 0).rtcp_packets == 1 && stream(i, 1).rtcp_packets == 1
        })
        .await;
        let (sa, sb) = (stream(&info, 0), stream(&info, 1));
        assert!(sa.rtcp_mux && !sb.rtcp_mux, "{info:#?}");
        assert_eq!(sa.local_rtcp_port, sa.local_rtp_port);
        assert_eq!(sb.local_rtcp_port, call.b_sends_rtcp().port() as u32);
        assert_eq!((sa.packets, sb.packets), (2, 2));
        assert_eq!((sa.dropped_malformed, sb.dropped_malformed), (0, 0));
    })
    .await
}
