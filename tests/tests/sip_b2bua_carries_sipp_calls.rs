//! sluice as a B2BUA between two SIPp instances (Debian `sip-tester`): SIPp calls sluice's SIP
//! port, sluice calls the SIPp callee at its `--route`, and the caller's PCMA (sip-tester's
//! g711a.pcap) goes through sluice's relay to the callee, which echoes it back. Every call
//! succeeds, the media went through the relay, a call record per call lands in `--cdr`, and
//! afterwards sluice holds no call and no port. Then callers that CANCEL while it rings get
//! their 487 through sluice, and nothing is left either.
//!
//! Needs sipp (Debian: sip-tester): required under CI, skipped with a line saying so elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::*;

const CALLS: u32 = 4;

fn sipp_missing() -> bool {
    if Command::new("sipp").arg("-v").output().is_ok() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "under CI: apt-get install sip-tester"
    );
    skipped("needs SIPp (apt-get install sip-tester)");
    true
}

fn scenarios() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// A SIPp callee on `port` running `scenario`, echoing RTP when `echo`.
fn callee(dir: &Path, scenario: &str, port: u16, calls: u32, echo: bool) -> Group {
    let mut uas = Command::new("sipp");
    uas.arg("-sf")
        .arg(scenarios().join(scenario))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args(["-m", &calls.to_string(), "-nostdin"]);
    if echo {
        uas.arg("-rtp_echo");
    }
    let g = spawn_group(uas, &dir.join(format!("{scenario}.log")));
    std::thread::sleep(Duration::from_millis(300));
    g
}

/// A SIPp caller to sluice's SIP port; returns SIPp's exit status and its stderr.
async fn caller(dir: &Path, scenario: &str, sip_port: u16, calls: u32) -> (bool, String) {
    let mut uac = Command::new("sipp");
    uac.arg(format!("127.0.0.1:{sip_port}"))
        .arg("-sf")
        .arg(scenarios().join(scenario))
        .args(["-i", "127.0.0.1", "-p", &free_udp_port().to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args([
            "-s",
            "callee",
            "-m",
            &calls.to_string(),
            "-r",
            "2",
            "-l",
            "4",
        ])
        .args(["-nostdin", "-timeout", "30", "-timeout_error"])
        .current_dir(dir);
    let (out, killed) =
        tokio::task::spawn_blocking(move || run_bounded(uac, Duration::from_secs(45)))
            .await
            .unwrap();
    (
        !killed && out.status.success(),
        format!(
            "sipp caller: {} (killed: {killed})\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n"),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The statistics once the calls have drained (BYE answers and deletes race the last
/// SIPp exit by a few milliseconds).
async fn settled(d: &Daemon) -> pb::StatisticsReply {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = d
            .client()
            .await
            .statistics(pb::StatisticsRequest {})
            .await
            .unwrap()
            .into_inner();
        if (s.calls_current == 0 && s.ports_in_use == 0) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cdr_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_calls_through_the_b2bua_carry_media_and_leave_nothing_behind() {
    if sipp_missing() {
        return;
    }
    let (sip_port, uas_port) = (free_udp_port(), free_udp_port());
    let dir = std::env::temp_dir().join(format!("sluice-b2bua-{}-{sip_port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cdr = dir.join("cdr.jsonl");
    let d = Daemon::start(&[
        "--sip",
        &format!("udp:127.0.0.1:{sip_port}"),
        "--route",
        &format!("sip:127.0.0.1:{uas_port}"),
        "--cdr",
        cdr.to_str().unwrap(),
    ])
    .await;
    assert!(
        d.log_text().contains("B2BUA taking SIP calls"),
        "{}",
        d.log_text()
    );

    let _uas = callee(&dir, "uas_rr_pcma.xml", uas_port, CALLS, true);
    let (ok, why) = caller(&dir, "uac_rr_pcma.xml", sip_port, CALLS).await;
    assert!(
        ok,
        "not every call succeeded\n{why}\nsluice log:\n{}",
        d.log_text()
    );
    let stats = settled(&d).await;
    assert_eq!(stats.calls_total, u64::from(CALLS), "{}", d.log_text());
    assert_eq!(
        stats.calls_current,
        0,
        "BYE ended every call\n{}",
        d.log_text()
    );
    assert_eq!(
        stats.ports_in_use,
        0,
        "no port left behind\n{}",
        d.log_text()
    );
    // Each call: 2 s of the caller's PCMA through sluice to the callee and echoed back.
    assert!(
        stats.packets_relayed >= u64::from(CALLS) * 2 * 50,
        "only {} packets relayed\n{}",
        stats.packets_relayed,
        d.log_text()
    );
    let records = cdr_lines(&cdr);
    assert_eq!(records.len(), CALLS as usize, "one record per call");
    for r in &records {
        assert_eq!(r["code"], 200, "{r}");
        assert_eq!(r["reason"], "caller hung up", "{r}");
        assert!(r["answer_ms"].is_u64(), "{r}");
        let legs = r["media"]["legs"].as_array().expect("media per leg");
        let packets: u64 = legs
            .iter()
            .flat_map(|l| l["streams"].as_array().unwrap().iter())
            .map(|s| s["packets"].as_u64().unwrap())
            .sum();
        assert!(packets >= 2 * 50, "media counted in the record: {r}");
    }

    // Callers that give up while it rings: 487 through sluice, CANCEL to the callee.
    const CANCELS: u32 = 2;
    let _uas = callee(&dir, "uas_cancel_one_hop.xml", uas_port, CANCELS, false);
    let (ok, why) = caller(&dir, "uac_cancel.xml", sip_port, CANCELS).await;
    assert!(
        ok,
        "cancelled calls did not complete\n{why}\nsluice log:\n{}",
        d.log_text()
    );
    let stats = settled(&d).await;
    assert_eq!(
        stats.calls_total,
        u64::from(CALLS + CANCELS),
        "{}",
        d.log_text()
    );
    assert_eq!(
        stats.calls_current,
        0,
        "CANCEL ended the calls\n{}",
        d.log_text()
    );
    assert_eq!(
        stats.ports_in_use,
        0,
        "no port left behind\n{}",
        d.log_text()
    );
    let records = cdr_lines(&cdr);
    assert_eq!(records.len(), (CALLS + CANCELS) as usize);
    assert!(
        records[CALLS as usize..].iter().all(|r| r["code"] == 487),
        "{records:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
