//! `sluice ctl` is the operator's view of the control API: JSON on stdout, errors with their
//! gRPC code on stderr and a failing exit status.

use std::time::Duration;

use serde_json::Value;
use sluice_tests::*;

fn ctl(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut cmd = sluice_command();
    cmd.arg("ctl")
        .arg("--control")
        .arg(d.control_arg())
        .args(args);
    let (out, killed) = run_bounded(cmd, Duration::from_secs(10));
    assert!(!killed, "sluice ctl {args:?} hung");
    out
}

fn json(out: &std::process::Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} did not print JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_prints_json() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let mut c = d.client().await;

        let v = json(&ctl(&d, &["ping"]), "ctl ping");
        assert_eq!(v["result"], "pong", "{v}");
        assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()), "{v}");

        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "ctl-call", &a, &b).await;
        a.send_rtp(call.a_sends_rtp(), &pcmu(1, 160, 0xa));
        assert!(b.recv_rtp().is_some());
        wait_query(&mut c, &call.id, "packet counted", |i| {
            stream(i, 0).packets == 1
        })
        .await;

        let v = json(&ctl(&d, &["statistics"]), "ctl statistics");
        assert_eq!(v["calls_current"], 1, "{v}");
        assert_eq!(v["calls_total"], 1, "{v}");
        assert_eq!(v["ports_in_use"], 4, "{v}");
        assert_eq!(v["packets_relayed"], 1, "{v}");
        assert_eq!(v["forwarding_path"], "userspace", "{v}");

        let v = json(&ctl(&d, &["query", "--call-id", "ctl-call"]), "ctl query");
        assert_eq!(v["call"]["call_id"], "ctl-call", "{v}");
        assert_eq!(v["call"]["legs"][0]["tag"], FROM_TAG, "{v}");
        assert_eq!(v["call"]["legs"][0]["streams"][0]["packets"], 1, "{v}");
        assert_eq!(
            v["call"]["legs"][0]["streams"][0]["latched_peer"],
            a.rtp_addr().to_string(),
            "{v}"
        );

        let v = json(&ctl(&d, &["list"]), "ctl list");
        assert_eq!(v["call_ids"], serde_json::json!(["ctl-call"]), "{v}");

        let out = ctl(&d, &["query", "--call-id", "nope"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "query of an unknown call: {}",
            out.status
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("NotFound"),
            "stderr does not name the code: {err}"
        );
        assert!(err.contains("nope"), "stderr does not name the call: {err}");
        assert!(out.stdout.is_empty(), "nothing on stdout for an error");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_without_a_daemon_says_so() {
    bounded(async {
        let dir = std::env::temp_dir().join(format!("sluice-test-noone-{}", std::process::id()));
        let mut cmd = sluice_command();
        cmd.args(["ctl", "--control"])
            .arg(format!("unix:{}/control.sock", dir.display()))
            .arg("ping");
        let (out, killed) = run_bounded(cmd, Duration::from_secs(10));
        assert!(!killed, "ctl hung without a daemon");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("sluice run"), "no hint to start sluice: {err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_offer_reads_sdp_and_options() {
    bounded(async {
        let d = Daemon::start(&[]).await;
        let a = Peer::v4();
        let file = d.dir.join("offer.sdp");
        std::fs::write(&file, a.sdp(&[])).unwrap();
        let file = file.display().to_string();
        let args = [
            "offer",
            "--call-id",
            "from-shell",
            "--from-tag",
            "t1",
            "--sdp",
            &file,
            "--direction",
            "sendonly",
        ];
        let v = json(&ctl(&d, &args), "ctl offer");
        let sdp = SdpView::parse(v["sdp"].as_str().expect("sdp string in the reply"));
        assert!(sdp.has_attr("sendonly"), "{}", sdp.text);
        assert_eq!(sdp.conn.to_string(), "127.0.0.1");
        let mut c = d.client().await;
        let info = query(&mut c, "from-shell").await.expect("call made by ctl");
        assert_eq!(info.legs[0].tag, "t1");
        assert_eq!(stream(&info, 0).direction, "sendonly");
    })
    .await
}

/// The control API on loopback TCP works; on any other address it needs explicit permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_control_is_loopback_only_by_default() {
    bounded(async {
        let mut cmd = sluice_command();
        cmd.args(["run", "--control", "tcp:192.0.2.1:2223"]);
        let (out, killed) = run_bounded(cmd, Duration::from_secs(5));
        assert!(
            !killed,
            "sluice started with an unauthenticated remote control address"
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("allow-remote-control"),
            "no hint how to allow it: {err}"
        );

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let control = format!("tcp:127.0.0.1:{port}");
        let mut cmd = sluice_command();
        cmd.args(["run", "--control", &control, "--ports", "28200-28299"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("start sluice");
        let mut pong = None;
        for _ in 0..100 {
            let mut cmd = sluice_command();
            cmd.args(["ctl", "--control", &control, "ping"]);
            let (out, _) = run_bounded(cmd, Duration::from_secs(5));
            if out.status.success() {
                pong = serde_json::from_slice::<Value>(&out.stdout).ok();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let status = wait_timeout(&mut child, Duration::from_secs(5));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(pong.map(|v| v["result"].clone()), Some(Value::from("pong")));
        assert_eq!(status.and_then(|s| s.code()), Some(0));
    })
    .await
}
