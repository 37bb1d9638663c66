//! A second sluice pointed at a live control socket must refuse to start, and must leave the
//! first one's socket alone.

use std::time::Duration;

use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_cannot_share_a_control_socket() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut cmd = sluice_command();
        cmd.args(["run", "--control"])
            .arg(d.control_arg())
            .args(["--ports", "28000-28099"]);
        let (out, killed) = run_bounded(cmd, Duration::from_secs(5));
        assert!(!killed, "the second sluice kept running on a socket in use");
        assert!(
            !out.status.success(),
            "the second sluice exited with {}",
            out.status
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("in use"),
            "stderr does not say the socket is in use: {err}"
        );
        assert!(
            err.contains(&d.socket.display().to_string()),
            "stderr does not name the socket: {err}"
        );

        // The first daemon is unharmed and still reachable on the same path.
        assert!(
            d.socket.exists(),
            "the second sluice removed the first one's socket"
        );
        let mut c = d.client().await;
        let pong = c
            .ping(pb::PingRequest {})
            .await
            .expect("first daemon gone")
            .into_inner();
        assert_eq!(pong.result, "pong");
    })
    .await
}

/// A socket file left by a crashed sluice is not "in use": a new sluice takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_control_socket_is_replaced() {
    bounded(async {
        let mut first = Daemon::start(&[]).await;
        let path = first.socket.clone();
        // SAFETY: kill(2) on our own child; SIGKILL leaves the socket file behind.
        unsafe { libc::kill(first.pid() as libc::pid_t, libc::SIGKILL) };
        assert!(first.terminate(Duration::from_secs(5)).is_some());
        assert!(path.exists(), "SIGKILL should have left the socket file");

        let mut cmd = sluice_command();
        cmd.args(["run", "--control"])
            .arg(first.control_arg())
            .args(["--ports", "28100-28199"]);
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start second sluice");
        let mut ok = false;
        for _ in 0..100 {
            if let Ok(mut c) = sluice_control::client::connect(&first.addr()).await
                && c.ping(pb::PingRequest {}).await.is_ok()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // SAFETY: as above, our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_timeout(&mut child, Duration::from_secs(5));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(ok, "sluice did not take over a stale control socket");
        assert_eq!(status.and_then(|s| s.code()), Some(0));
    })
    .await
}
