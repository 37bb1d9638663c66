//! IPv6: the relay answers an IP6 SDP with its IPv6 address and relays over ::1, and bridges the
//! families when asked to.

use std::net::IpAddr;

use sluice_tests::pb::{AddressFamily, LegOptions};
use sluice_tests::*;

const V4: &str = "127.0.0.1";
const V6: &str = "::1";

fn both_ways(a: &Peer, b: &Peer, call: &Call) {
    for i in 0..10u16 {
        a.send_rtp(call.a_sends_rtp(), &pcmu(i, 160 * i as u32, 0xa));
    }
    let got = b.recv_rtp_n(10);
    assert_eq!(got.len(), 10, "A -> B");
    assert_eq!(got[3].0, pcmu(3, 480, 0xa));
    assert_eq!(
        got[0].1,
        call.b_sends_rtp(),
        "B hears the relay from where it sends to"
    );
    for i in 0..10u16 {
        b.send_rtp(call.b_sends_rtp(), &pcmu(i, 160 * i as u32, 0xb));
    }
    let got = a.recv_rtp_n(10);
    assert_eq!(got.len(), 10, "B -> A");
    assert_eq!(got[0].1, call.a_sends_rtp());
    a.send_rtcp(call.a_sends_rtcp(), &rtcp_sr(0xa, 1600, 10, 1720));
    assert!(b.recv_rtcp().is_some(), "RTCP A -> B");
    b.send_rtcp(call.b_sends_rtcp(), &rtcp_sr(0xb, 1600, 10, 1720));
    assert!(a.recv_rtcp().is_some(), "RTCP B -> A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_media() {
    bounded(async {
        let d = Daemon::start(&["--media-ip", V4, "--media-ip", V6]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v6(), Peer::v6());
        let call = establish(&mut c, "v6", &a, &b).await;
        for (v, who) in [(&call.to_b, "offer reply"), (&call.to_a, "answer reply")] {
            assert_eq!(v.conn_family, "IP6", "{who}:\n{}", v.text);
            assert_eq!(v.conn, V6.parse::<IpAddr>().unwrap(), "{who}:\n{}", v.text);
            assert!(
                v.rtcp.is_none_or(|r| r.is_ipv6()),
                "{who}: a=rtcp with a v4 address:\n{}",
                v.text
            );
            assert!(
                !v.text.contains("IP4"),
                "{who} still mentions IP4:\n{}",
                v.text
            );
        }
        both_ways(&a, &b, &call);
        let info = query(&mut c, &call.id).await.unwrap();
        assert_eq!(stream(&info, 0).local_address, V6);
        assert_eq!(stream(&info, 0).latched_peer, a.rtp_addr().to_string());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_family_option_bridges_ipv4_to_ipv6() {
    bounded(async {
        let d = Daemon::start(&["--media-ip", V4, "--media-ip", V6]).await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v6());
        let ip6 = Some(LegOptions {
            address_family: AddressFamily::Ip6 as i32,
            ..Default::default()
        });
        let to_b = offer(&mut c, "bridge", a.sdp(&[]), ip6).await.unwrap();
        assert_eq!(to_b.conn_family, "IP6", "{}", to_b.text);
        assert_eq!(to_b.conn, V6.parse::<IpAddr>().unwrap(), "{}", to_b.text);
        // The callee on IPv6 answers; the caller keeps talking IPv4.
        let to_a = answer(&mut c, "bridge", b.sdp(&[]), None).await.unwrap();
        assert_eq!(to_a.conn, V4.parse::<IpAddr>().unwrap(), "{}", to_a.text);
        assert_eq!(to_a.conn_family, "IP4");
        let call = Call {
            id: "bridge".into(),
            to_b,
            to_a,
        };
        both_ways(&a, &b, &call);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_offer_without_ipv6_relay_address_is_refused() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;
        let a = Peer::v6();
        let err = offer(&mut c, "no-v6", a.sdp(&[]), None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("--media-ip"), "{err:?}");
        assert_eq!(statistics(&mut c).await.ports_in_use, 0);
    })
    .await
}
