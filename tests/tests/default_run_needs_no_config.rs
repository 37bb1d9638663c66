//! `sluice run` works out of the box: no config file, no flags beyond where to put the control
//! socket; media on 127.0.0.1, ports 30000-39999.

use std::os::unix::fs::PermissionsExt;

use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_run_needs_no_config() {
    bounded(async {
        let d = Daemon::start_bare().await;
        let mut c = d.client().await;
        let pong = c.ping(pb::PingRequest {}).await.expect("Ping").into_inner();
        assert_eq!(pong.result, "pong");
        assert!(!pong.version.is_empty());

        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "defaults", &a, &b).await;
        for v in [&call.to_b, &call.to_a] {
            assert_eq!(v.conn_family, "IP4", "{}", v.text);
            assert_eq!(v.conn.to_string(), "127.0.0.1", "{}", v.text);
            assert!(
                (30000..=39999).contains(&v.rtp_port),
                "relay port {} outside the default 30000-39999",
                v.rtp_port
            );
            assert_eq!(v.rtp_port % 2, 0, "RTP port should be even (RFC 3550 11)");
        }
        a.send_rtp(call.a_sends_rtp(), &pcmu(1, 160, 1));
        assert!(
            b.recv_rtp().is_some(),
            "media does not flow with the defaults"
        );

        // DESIGN.md: the control socket is protected by file permissions by default.
        let mode = std::fs::metadata(&d.socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o007,
            0,
            "control socket is open to everyone: {mode:o}"
        );

        let st = statistics(&mut c).await;
        assert_eq!(st.ports_in_use + st.ports_free, 10000, "{st:?}");
        assert_eq!(st.forwarding_path, "userspace");
        assert!(
            d.log_text().contains("ports=30000-39999"),
            "log does not announce the default range:\n{}",
            d.log_text()
        );
    })
    .await
}
