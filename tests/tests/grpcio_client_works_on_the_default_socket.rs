//! A standard gRPC client, Python grpcio, reaches every method of the control API on the
//! default Unix socket with no channel option, and lists it by server reflection.
//!
//! grpc-core sends the socket path (percent-encoded) as `:authority`; before
//! control/src/h2_authority.rs every call failed with "Stream removed" (RST_STREAM
//! PROTOCOL_ERROR). The script (tests/python/grpcio_client.py) also times 20 Offers over TCP
//! control, which Nagle's algorithm once held for 40 ms each.
//!
//! Needs python3 with grpcio, grpcio-tools and grpcio-reflection: required under CI (`.ci/run`
//! installs them), skipped with a line saying so elsewhere.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_tests::*;

fn grpcio_missing() -> Option<String> {
    let o = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_reflection"])
        .output();
    match o {
        Ok(o) if o.status.success() => None,
        // The exception's own line, e.g. "ModuleNotFoundError: No module named 'grpc'".
        Ok(o) => Some(
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string(),
        ),
        Err(e) => Some(format!("python3: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_drives_a_call_and_reflection_on_the_unix_socket() {
    if let Some(why) = grpcio_missing() {
        if std::env::var_os("CI").is_some() {
            panic!("python3 grpcio is required in CI: {why}");
        }
        skipped(&format!(
            "needs python3 grpcio (pip install grpcio grpcio-tools grpcio-reflection): {why}"
        ));
        return;
    }
    bounded(async {
        let unix = Daemon::start(&[]).await;
        let port = free_tcp_port();
        let tcp = Daemon::start(&["--control", &format!("tcp:127.0.0.1:{port}")]).await;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/grpcio_client.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .arg(format!("unix:{}", unix.socket.display()))
            .arg(format!("127.0.0.1:{port}"));
        let (out, killed) =
            tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(60)))
                .await
                .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{stdout}");
        assert!(!killed, "grpcio_client.py did not finish in 60 s\n{stderr}");
        assert!(
            out.status.success(),
            "grpcio_client.py failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
            unix.log_text()
        );
        for step in [
            "ok Ping",
            "ok Offer and Answer",
            "ok Query",
            "ok Delete",
            "ok reflection",
        ] {
            assert!(stdout.contains(step), "no '{step}' in:\n{stdout}");
        }
        drop(tcp);
    })
    .await;
}
