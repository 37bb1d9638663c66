//! sluice as a B2BUA between two SIPp instances (Debian `sip-tester`): SIPp calls sluice's SIP
//! port, sluice calls the SIPp callee at its `--route`, and the caller's PCMA (sip-tester's
//! g711a.pcap) goes through sluice's relay to the callee, which echoes it back. Every call
//! succeeds, the media went through the relay, a call record per call lands in `--cdr`, and
//! afterwards sluice holds no call and no port. Then callers that CANCEL while it rings get
//! their 487 through sluice, and nothing is left either.
//!
//! The other tests: a G.711 caller reaches an Opus-only callee through transcoding; the
//! callee hangs up; a late offer (SDP in the 200 and the ACK) carries media; a reliable 183 and
//! its PRACK cross sluice (RFC 3262); an unreliable 183 with SDP gives the caller early media
//! from the relay; a re-INVITE holds the call (the callee's media stops) and another resumes
//! it (it flows again); session timers (RFC 4028): 422 for a short interval, re-INVITE and
//! UPDATE refreshes, and a session nobody refreshes ended with BYE on both legs; a forking
//! callee's second 200 is ACKed and BYEd and the caller sees one; an offer no codec can
//! bridge gets 488 with a Warning; callers over TCP reach callees over UDP and over TCP;
//! refusals (486, 503) are passed on; 1,000 calls at 50 calls/s with 3 s holds all succeed
//! and leave no call, transaction or port; hostile and malformed datagrams are counted and
//! never stop the B2BUA.
//!
//! The SIPp callees check what reaches them too (`ereg check_it`): the runs through
//! `calls_through` require the callee's exit status to say every call passed.
//!
//! Needs sipp (Debian: sip-tester): required under CI, skipped with a line saying so elsewhere.
//! The tests run one at a time (SIPp and the daemon share 2 cores).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::*;

const CALLS: u32 = 4;

/// One SIPp test at a time: they time calls, and the machine has 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    callee_with(dir, scenario, port, calls, echo, &[])
}

/// [`callee`] with more SIPp arguments; `scenario` "uas" is SIPp's built-in one.
fn callee_with(
    dir: &Path,
    scenario: &str,
    port: u16,
    calls: u32,
    echo: bool,
    extra: &[&str],
) -> Group {
    let mut uas = Command::new("sipp");
    if scenario == "uas" {
        uas.args(["-sn", "uas"]);
    } else {
        uas.arg("-sf").arg(scenarios().join(scenario));
    }
    uas.args(extra)
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
    let calls = calls.to_string();
    caller_with(
        dir,
        scenario,
        sip_port,
        &["-m", &calls, "-r", "2", "-l", "4"],
        45,
    )
    .await
}

/// A SIPp caller with the given load arguments, killed after `limit_s`; `scenario` "uac" is
/// SIPp's built-in one.
async fn caller_with(
    dir: &Path,
    scenario: &str,
    sip_port: u16,
    load: &[&str],
    limit_s: u64,
) -> (bool, String) {
    let mut uac = Command::new("sipp");
    uac.arg(format!("127.0.0.1:{sip_port}"));
    if scenario == "uac" {
        uac.args(["-sn", "uac"]);
    } else {
        uac.arg("-sf").arg(scenarios().join(scenario));
    }
    uac.args(["-i", "127.0.0.1", "-p", &free_udp_port().to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args(["-s", "callee"])
        .args(load)
        .args(["-nostdin", "-timeout", "30", "-timeout_error"])
        .current_dir(dir);
    let (out, killed) =
        tokio::task::spawn_blocking(move || run_bounded(uac, Duration::from_secs(limit_s)))
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
    d.statistics_once(|s| s.calls_current == 0 && s.ports_in_use == 0)
        .await
}

/// A daemon taking SIP on a free port and routing to `uas_port`, with a CDR file in `dir`.
async fn b2bua(dir: &Path, uas_port: u16) -> (Daemon, u16, PathBuf) {
    b2bua_with(dir, uas_port, &[]).await
}

async fn b2bua_with(dir: &Path, uas_port: u16, extra: &[&str]) -> (Daemon, u16, PathBuf) {
    let sip_port = free_udp_port();
    let cdr = dir.join("cdr.jsonl");
    let (sip, route) = (
        format!("udp:127.0.0.1:{sip_port}"),
        format!("sip:127.0.0.1:{uas_port}"),
    );
    let mut args = vec![
        "--sip",
        &sip,
        "--route",
        &route,
        "--cdr",
        cdr.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let d = Daemon::start(&args).await;
    assert!(
        d.log_text().contains("B2BUA taking SIP calls"),
        "{}",
        d.log_text()
    );
    (d, sip_port, cdr)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-{name}-{}-{}",
        std::process::id(),
        free_udp_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What one [`calls_through`] run leaves to check.
struct Run {
    d: Daemon,
    dir: PathBuf,
    stats: pb::StatisticsReply,
    records: Vec<serde_json::Value>,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `calls` calls from SIPp scenario `uac` through a fresh B2BUA to SIPp scenario `uas`
/// (echoing RTP when `echo`): every call must succeed, and afterwards sluice must hold no
/// call and no port.
async fn calls_through(name: &str, uas: &str, uac: &str, calls: u32, echo: bool) -> Run {
    let dir = scratch(name);
    let uas_port = free_udp_port();
    let (d, sip_port, cdr) = b2bua(&dir, uas_port).await;
    let mut callee = callee(&dir, uas, uas_port, calls, echo);
    let (ok, why) = caller(&dir, uac, sip_port, calls).await;
    assert!(
        ok,
        "{uac} -> {uas}: {why}\nsluice log:\n{}",
        tail(&d.log_text())
    );
    if let Err(why) = callee_verdict(&mut callee, &dir, uas) {
        panic!(
            "{uac} -> {uas}: {why}\nsluice log:\n{}",
            tail(&d.log_text())
        );
    }
    let stats = settled(&d).await;
    assert_eq!(
        (stats.calls_current, stats.ports_in_use),
        (0, 0),
        "no call and no port left\n{}",
        tail(&d.log_text())
    );
    let records = cdr_lines(&cdr);
    assert_eq!(records.len(), calls as usize, "one record per call");
    Run {
        d,
        dir,
        stats,
        records,
    }
}

/// A SIPp callee's verdict: started with `-m`, it exits once its calls are done, with 0 only
/// when every call followed its scenario, its own checks (`ereg check_it`) included.
fn callee_verdict(uas: &mut Group, dir: &Path, scenario: &str) -> Result<(), String> {
    match wait_timeout(&mut uas.0, Duration::from_secs(10)) {
        Some(status) if status.success() => Ok(()),
        status => Err(format!(
            "sipp callee {scenario}: {status:?} (None: still running)\n{}",
            tail(&std::fs::read_to_string(dir.join(format!("{scenario}.log"))).unwrap_or_default())
        )),
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
    let _serial = SERIAL.lock().await;
    let dir = scratch("b2bua");
    let uas_port = free_udp_port();
    let (d, sip_port, cdr) = b2bua(&dir, uas_port).await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callee_hangs_up_and_the_caller_gets_the_bye_through_sluice() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = calls_through(
        "b2bua-bye",
        "uas_hangs_up.xml",
        "uac_waits_for_bye.xml",
        2,
        true,
    )
    .await;
    assert!(
        run.records.iter().all(|r| r["reason"] == "callee hung up"),
        "{:?}",
        run.records
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_the_callee_reach_the_caller_with_their_code() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    for (code, scenario) in [(486, "uas_busy.xml"), (503, "uas_unavailable.xml")] {
        let run = calls_through("b2bua-refused", scenario, "uac_refused.xml", 2, false).await;
        let sip = run.stats.sip.expect("SIP counters with --sip");
        assert_eq!(
            (sip.calls_total, sip.calls_answered, sip.calls_failed),
            (2, 0, 2)
        );
        assert!(
            run.records.iter().all(|r| r["code"] == code),
            "{:?}",
            run.records
        );
    }
}

/// The SIP counters once every transaction has ended (a BYE's server transaction lingers
/// 64*T1 = 32 s over UDP to absorb retransmissions, RFC 3261 17.2.2).
async fn transactions_drained(d: &Daemon) -> pb::SipStatistics {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let s = d
            .client()
            .await
            .statistics(pb::StatisticsRequest {})
            .await
            .unwrap()
            .into_inner()
            .sip
            .expect("SIP counters with --sip");
        if s.transactions == 0 || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_calls_at_50_per_second_all_succeed_and_leave_nothing() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    const N: u64 = 1000;
    let dir = scratch("b2bua-1000");
    let uas_port = free_udp_port();
    // About 150 calls are up at once, 4 relay ports each (RTP and RTCP per side): more than
    // the test harness's default 500-port slice. Debug logs would cost more than the calls.
    let (d, sip_port, cdr) = b2bua_with(
        &dir,
        uas_port,
        &["--ports", "20000-29999", "--log-level", "info"],
    )
    .await;
    let _uas = callee_with(
        &dir,
        "uas",
        uas_port,
        N as u32,
        false,
        &["-buff_size", "4194304"],
    );
    let (ok, why) = caller_with(
        &dir,
        "uac",
        sip_port,
        &[
            "-m",
            &N.to_string(),
            "-r",
            "50",
            "-d",
            "3000",
            "-l",
            "400",
            "-buff_size",
            "4194304",
        ],
        90,
    )
    .await;
    assert!(
        ok,
        "not every call succeeded\n{why}\nsluice log tail:\n{}",
        tail(&d.log_text())
    );
    let stats = settled(&d).await;
    assert_eq!(stats.calls_total, N, "one media session per call");
    assert_eq!((stats.calls_current, stats.ports_in_use), (0, 0));
    let sip = transactions_drained(&d).await;
    assert_eq!(
        (
            sip.calls_total,
            sip.calls_answered,
            sip.calls_failed,
            sip.calls_current
        ),
        (N, N, 0, 0),
        "{sip:?}"
    );
    assert_eq!(sip.transactions, 0, "no transaction left: {sip:?}");
    assert_eq!(cdr_lines(&cdr).len() as u64, N);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_malformed_sip_is_counted_and_calls_still_go_through() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = scratch("b2bua-hostile");
    let uas_port = free_udp_port();
    let (d, sip_port, _cdr) = b2bua(&dir, uas_port).await;
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to = ("127.0.0.1", sip_port);
    let local = s.local_addr().unwrap();
    let request = |extra: &str, body: &str| {
        format!(
            "OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKh{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:h@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\n\
             Call-ID: hostile-{}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            free_udp_port(),
            free_udp_port(),
            body.len()
        )
    };
    let mut hostile: Vec<Vec<u8>> = vec![
        // Not SIP at all: TLS ClientHello bytes, NULs, a CRLF flood.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        vec![0u8; 1200],
        b"\r\n".repeat(4000),
        // Content-Length larger than the datagram; negative; twice.
        request("", "")
            .replace("Content-Length: 0", "Content-Length: 900")
            .into_bytes(),
        request("", "")
            .replace("Content-Length: 0", "Content-Length: -1")
            .into_bytes(),
        request("Content-Length: 3\r\n", "").into_bytes(),
    ];
    // 10,000 headers (over the 256-header limit) in one 60 kB datagram.
    hostile.push(request(&"X-A: b\r\n".repeat(7_000), "").into_bytes());
    // One line over the 8 kB line limit.
    hostile.push(request(&format!("X-Long: {}\r\n", "a".repeat(9000)), "").into_bytes());
    for _ in 0..50 {
        for h in &hostile {
            let _ = s.send_to(h, to);
        }
    }
    // A bad CSeq in an otherwise fine request is answered 400 with the fault in the reason.
    s.send_to(
        request("", "")
            .replace("CSeq: 1 OPTIONS", "CSeq: x OPTIONS")
            .as_bytes(),
        to,
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut got_400 = false;
    while let Ok((n, _)) = recv_from_retrying(&s, &mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("SIP/2.0 400") && text.contains("CSeq") {
            got_400 = true;
        }
    }
    assert!(got_400, "no 400 naming the CSeq fault");
    // The B2BUA still answers and still carries a call.
    let _uas = callee_with(&dir, "uas", uas_port, 1, false, &[]);
    let (ok, why) = caller_with(&dir, "uac", sip_port, &["-m", "1"], 30).await;
    assert!(ok, "{why}\nsluice log:\n{}", tail(&d.log_text()));
    let stats = settled(&d).await;
    let sip = stats.sip.expect("SIP counters");
    assert!(sip.malformed >= 50 * 8, "counted: {sip:?}");
    assert!(sip.rejected >= 1, "{sip:?}");
    assert_eq!(sip.calls_answered, 1, "{sip:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_g711_caller_reaches_an_opus_only_callee_through_transcoding() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = calls_through("b2bua-opus", "uas_opus.xml", "uac_rr_pcma.xml", 2, true).await;
    for r in &run.records {
        let streams: Vec<&serde_json::Value> = r["media"]["legs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|l| l["streams"].as_array().unwrap())
            .collect();
        assert!(
            streams.iter().any(|s| s["transcoded"] == true),
            "transcoded: {r}"
        );
        // PCMA from the caller, Opus back from the echoing callee: both ways carried media.
        assert!(
            streams.iter().all(|s| s["packets"].as_u64().unwrap() >= 50),
            "media both ways: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_over_tcp_reach_callees_over_udp_and_over_tcp() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    for callee_tcp in [false, true] {
        let dir = scratch("b2bua-tcp");
        let (uas_port, sip_port) = (free_tcp_port(), free_tcp_port());
        let route = if callee_tcp {
            format!("sip:127.0.0.1:{uas_port};transport=tcp")
        } else {
            format!("sip:127.0.0.1:{uas_port}")
        };
        let d = Daemon::start(&[
            "--sip",
            &format!("tcp:127.0.0.1:{sip_port}"),
            "--sip",
            &format!("udp:127.0.0.1:{sip_port}"),
            "--route",
            &route,
        ])
        .await;
        let transport = if callee_tcp { "t1" } else { "u1" };
        let _uas = callee_with(&dir, "uas", uas_port, 2, false, &["-t", transport]);
        let (ok, why) = caller_with(
            &dir,
            "uac",
            sip_port,
            &["-m", "2", "-r", "2", "-t", "t1"],
            30,
        )
        .await;
        assert!(
            ok,
            "callee over {transport}: {why}\nsluice log:\n{}",
            tail(&d.log_text())
        );
        let stats = settled(&d).await;
        let sip = stats.sip.expect("SIP counters");
        assert_eq!((sip.calls_answered, sip.calls_current), (2, 0), "{sip:?}");
        assert_eq!(stats.ports_in_use, 0);
        // A stream that cannot be framed is closed and counted; calls go on.
        use std::io::Write as _;
        let mut junk = std::net::TcpStream::connect(("127.0.0.1", sip_port)).unwrap();
        junk.write_all(b"OPTIONS sip:x@y SIP/2.0\r\nContent-Length: -5\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 16];
        junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        use std::io::Read as _;
        assert_eq!(
            junk.read(&mut buf).unwrap_or(0),
            0,
            "the connection is closed"
        );
        let sip = settled(&d).await.sip.unwrap();
        assert!(sip.malformed >= 1, "{sip:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_183_and_its_prack_cross_sluice_rfc3262() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = calls_through("b2bua-100rel", "uas_100rel.xml", "uac_100rel.xml", 2, false).await;
    assert!(
        run.records
            .iter()
            .all(|r| r["code"] == 200 && r["reason"] == "caller hung up"),
        "{:?}",
        run.records
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_offer_takes_its_sdp_from_the_200_and_the_ack_and_carries_media() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = calls_through(
        "b2bua-late",
        "uas_rr_pcma.xml",
        "uac_late_offer.xml",
        2,
        true,
    )
    .await;
    assert!(
        run.stats.packets_relayed >= 2 * 2 * 50,
        "media both ways: {} packets\n{}",
        run.stats.packets_relayed,
        tail(&run.d.log_text())
    );
}

/// Packets sluice received from one side of the calls in `records` (`tag` "a": the callers,
/// "b": the callees), summed over the calls.
fn packets_from(records: &[serde_json::Value], tag: &str) -> u64 {
    records
        .iter()
        .flat_map(|r| r["media"]["legs"].as_array().unwrap())
        .filter(|l| l["tag"] == tag)
        .flat_map(|l| l["streams"].as_array().unwrap())
        .map(|s| s["packets"].as_u64().unwrap())
        .sum()
}

/// Hold and resume by re-INVITE (RFC 3264 8.4) with media: the caller plays g711a.pcap (about
/// 33 packets/s) and the callee echoes it. 1 s into the call the caller holds (a=sendonly):
/// both SIPp ends check the SDP crossing sluice (sendonly to the callee, recvonly back, relay
/// address and ports in c= and m=). For the 2 s of hold the callee's echo reaches sluice and
/// must be dropped; after the resume (a=sendrecv both ways) it must flow again for 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinvite_holds_and_resumes_the_media_through_sluice() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    const N: u64 = 2;
    let run = calls_through("b2bua-hold", "uas_hold.xml", "uac_hold.xml", N as u32, true).await;
    assert!(
        run.records
            .iter()
            .all(|r| r["code"] == 200 && r["reason"] == "caller hung up"),
        "{:?}",
        run.records
    );
    // Everything the caller sent was relayed (it only stopped receiving), so the rest of
    // what was relayed is echo that reached the caller.
    let echo_relayed = run.stats.packets_relayed - packets_from(&run.records, "a");
    let (dropped, log) = (run.stats.packets_dropped, tail(&run.d.log_text()));
    // About 66 echoed packets a call arrive during the hold: most must have been dropped.
    assert!(
        dropped >= N * 30,
        "the hold stopped the callee's media: {dropped} dropped\n{log}"
    );
    // The second before the hold carries at most about 35 a call; more means it resumed.
    assert!(
        echo_relayed >= N * 50,
        "the resume let the callee's media through again: {echo_relayed} relayed\n{log}"
    );
}

/// Early media without 100rel (RFC 3261 13.2.1 allows SDP in an unreliable provisional): the
/// callee's 183 carries its answer, and the caller must get the 183 with an SDP of sluice's
/// relay (c= 127.0.0.1, a relay port, checked by the caller scenario), unreliable as it came,
/// then, 1 s later, the 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreliable_183_with_sdp_reaches_the_caller_with_the_relays_address() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = calls_through(
        "b2bua-early",
        "uas_early_media.xml",
        "uac_early_media.xml",
        2,
        false,
    )
    .await;
    for r in &run.records {
        assert_eq!(
            (&r["code"], &r["reason"]),
            (&200.into(), &"caller hung up".into())
        );
        let (ring, answer) = (r["ring_ms"].as_u64(), r["answer_ms"].as_u64());
        // The callee waits 1 s between its 183 and its 200.
        assert!(
            ring.zip(answer)
                .is_some_and(|(ring, answer)| answer >= ring + 900),
            "the 183 was relayed when it came: {r}"
        );
    }
}

/// Session timers (RFC 4028) through sluice. First the refreshes: a caller asking for 60 s
/// gets 422 with Min-SE 90 from sluice (section 8.1) and retries with 90 s, which reaches the
/// callee; the 200 carries Session-Expires and Require: timer back; a re-INVITE and an UPDATE
/// refresh cross sluice both ways with Session-Expires (both SIPp ends check the headers).
/// Then expiry (section 10): a callee that names itself refresher of a 3 s session and never
/// refreshes; sluice must BYE both legs with Reason "Session timer expired" (both ends check
/// it) at 3 s minus a third, 2 s. 3 s is below the 90 s floor a UAS may choose (section 9),
/// so that expiry takes seconds, not a minute: sluice keeps the interval the 2xx names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timers_are_refreshed_through_sluice_and_expire_with_bye_rfc4028() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = calls_through(
        "b2bua-timer",
        "uas_session_timer.xml",
        "uac_session_timer.xml",
        2,
        false,
    )
    .await;
    let sip = run.stats.sip.expect("SIP counters with --sip");
    assert_eq!(
        (sip.calls_total, sip.calls_answered, sip.rejected),
        (2, 2, 2),
        "the 60 s INVITEs were refused before they made a call: {sip:?}"
    );
    assert!(
        run.records.iter().all(|r| r["reason"] == "caller hung up"),
        "{:?}",
        run.records
    );
    drop(run);

    let run = calls_through(
        "b2bua-expiry",
        "uas_session_expires.xml",
        "uac_session_expires.xml",
        2,
        false,
    )
    .await;
    for r in &run.records {
        assert_eq!(
            (&r["code"], &r["reason"]),
            (&408.into(), &"session timer expired".into())
        );
        let lasted = r["duration_ms"].as_u64().unwrap();
        assert!(
            (1_900..3_000).contains(&lasted),
            "BYE at 2 s (3 s minus a third): {r}"
        );
    }
}

/// The messages a SIPp run with `-trace_msg` in `dir` received, for scenario file `scenario`.
fn received_by(dir: &Path, scenario: &str) -> Vec<String> {
    let stem = scenario.trim_end_matches(".xml");
    let mut got = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !(name.starts_with(stem) && name.ends_with("_messages.log")) {
            continue;
        }
        let log = std::fs::read_to_string(dir.join(&name)).unwrap();
        // Each message follows a line of dashes and a timestamp.
        for entry in log.split("-----------------------------------------------") {
            let text = entry.split_once('\n').map_or("", |(_, rest)| rest);
            if let Some(msg) = text.strip_prefix("UDP message received") {
                got.push(
                    msg.split_once('\n')
                        .map_or("", |(_, m)| m)
                        .trim()
                        .to_owned(),
                );
            }
        }
    }
    got
}

/// A forking callee answers one INVITE twice (two 200s, different To tags, RFC 3261
/// 13.2.2.4): the caller must get one 200 per call (its message trace is counted: sluice gives
/// the caller one tag, so SIPp alone would take a second 200 for a retransmission; on loopback
/// the ACK comes long before sluice's first retransmission at T1), and sluice
/// must ACK the second and BYE it, then BYE the first when the caller hangs up (the callee
/// scenario checks the To tag of each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_second_200_is_acked_and_byed_and_the_caller_sees_one() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    const N: u32 = 2;
    let dir = scratch("b2bua-forks");
    let uas_port = free_udp_port();
    let (d, sip_port, cdr) = b2bua(&dir, uas_port).await;
    let mut uas = callee(&dir, "uas_forks.xml", uas_port, N, false);
    let calls = N.to_string();
    let (ok, why) = caller_with(
        &dir,
        "uac_rr_pcma.xml",
        sip_port,
        &["-m", &calls, "-r", "2", "-l", "4", "-trace_msg"],
        45,
    )
    .await;
    assert!(ok, "{why}\nsluice log:\n{}", tail(&d.log_text()));
    if let Err(why) = callee_verdict(&mut uas, &dir, "uas_forks.xml") {
        panic!("{why}\nsluice log:\n{}", tail(&d.log_text()));
    }
    let stats = settled(&d).await;
    assert_eq!((stats.calls_current, stats.ports_in_use), (0, 0));
    let sip = stats.sip.expect("SIP counters with --sip");
    assert_eq!(
        (sip.calls_total, sip.calls_answered),
        (N as u64, N as u64),
        "{sip:?}"
    );
    let answers: Vec<String> = received_by(&dir, "uac_rr_pcma.xml")
        .into_iter()
        .filter(|m| m.starts_with("SIP/2.0 200") && m.contains("CSeq: 1 INVITE"))
        .collect();
    assert_eq!(answers.len(), N as usize, "one 200 per call: {answers:#?}");
    let records = cdr_lines(&cdr);
    assert_eq!(records.len(), N as usize);
    assert!(
        records
            .iter()
            .all(|r| r["code"] == 200 && r["reason"] == "caller hung up"),
        "{records:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A caller offering only G.729 (which sluice does not transcode) to a callee that answers
/// PCMA: no codec bridges the two, so the caller gets 488 with sluice's Warning naming the
/// codecs (the caller scenario checks it), and the callee's answered leg is ACKed and BYEd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_no_codec_can_bridge_gets_488_with_a_warning() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let run = calls_through(
        "b2bua-488",
        "uas_pcma_only.xml",
        "uac_g729_only.xml",
        2,
        false,
    )
    .await;
    let sip = run.stats.sip.expect("SIP counters with --sip");
    assert_eq!(
        (sip.calls_total, sip.calls_answered, sip.calls_failed),
        (2, 0, 2),
        "{sip:?}"
    );
    assert!(
        run.records
            .iter()
            .all(|r| r["code"] == 488 && r["reason"] == "callee's SDP refused"),
        "{:?}",
        run.records
    );
}

/// A next hop over TCP where nothing listens: the refused connection fails the INVITE at once
/// (RFC 3261 8.1.3.1, a transport error is a 503), so the caller gets 503 in well under timer
/// B's 32 s, and the call record says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tcp_next_hop_gives_the_caller_503_at_once() {
    if sipp_missing() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = scratch("b2bua-unreachable");
    let (sip_port, tcp_port, closed) = (free_udp_port(), free_tcp_port(), free_tcp_port());
    let cdr = dir.join("cdr.jsonl");
    let (udp, tcp, route) = (
        format!("udp:127.0.0.1:{sip_port}"),
        format!("tcp:127.0.0.1:{tcp_port}"),
        format!("sip:127.0.0.1:{closed};transport=tcp"),
    );
    let d = Daemon::start(&[
        "--sip",
        &udp,
        "--sip",
        &tcp,
        "--route",
        &route,
        "--cdr",
        cdr.to_str().unwrap(),
    ])
    .await;
    let started = Instant::now();
    let (ok, why) = caller_with(
        &dir,
        "uac_refused.xml",
        sip_port,
        &["-m", "2", "-r", "2"],
        15,
    )
    .await;
    assert!(ok, "{why}\nsluice log:\n{}", tail(&d.log_text()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}: the failure waited for a timer",
        started.elapsed()
    );
    let stats = settled(&d).await;
    assert_eq!((stats.calls_current, stats.ports_in_use), (0, 0));
    let records = cdr_lines(&cdr);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r["code"] == 503 && r["reason"] == "callee unreachable (transport error)"),
        "{records:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
