//! Kamailio drives sluice as it drives rtpengine: its `rtpengine` module, pointed at sluice's
//! ng socket, with `rtpengine_manage()` (offer on INVITE, answer on replies with SDP, delete on
//! BYE and failures). SIPp calls through Kamailio to a SIPp callee that echoes RTP: every call
//! succeeds, the RTP goes through sluice both ways, Kamailio's `$rtpestat` (read from sluice's
//! query reply) is filled in, and after the BYEs sluice holds no call and no port. Then callers
//! that CANCEL while it rings: Kamailio deletes those calls too, and nothing is left. And two
//! sluice nodes in one Kamailio set: calls spread over both; a node drained at run time answers
//! `load limit` and Kamailio sends every new call to the other.
//!
//! Needs kamailio and sipp (Debian: kamailio, sip-tester): required under CI, skipped with a
//! line saying so elsewhere.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::*;

const CALLS: u32 = 3;

fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = [("kamailio", "kamailio"), ("sipp", "sip-tester")]
        .into_iter()
        .filter(|(bin, _)| Command::new(bin).arg("-v").output().is_err())
        .map(|(_, pkg)| pkg)
        .collect();
    (!missing.is_empty()).then(|| format!("apt-get install {}", missing.join(" ")))
}

/// `rtpengine_sock`: one node (`udp:127.0.0.1:PORT`) or a set (`udp:...=1 udp:...=1`).
fn kamailio_cfg(sip_port: u16, uas_port: u16, rtpengine_sock: &str) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=2
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:{sip_port}
dns=no
rev_dns=no
use_dns_cache=off

mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "rtpengine.so"

modparam("rr", "enable_full_lr", 0)
modparam("rtpengine", "rtpengine_sock", "{rtpengine_sock}")

request_route {{
	if (!mf_process_maxfwd_header("10")) {{
		sl_send_reply("483", "Too Many Hops");
		exit;
	}}
	if (has_totag()) {{
		if (loose_route()) {{
			if (is_method("BYE")) {{
				xlog("L_NOTICE", "RTPESTAT $ci [$rtpstat]\n");
			}}
			rtpengine_manage("replace-origin replace-session-connection");
			route(RELAY);
		}}
		if (is_method("ACK")) {{
			if (t_check_trans()) {{
				route(RELAY);
			}}
			exit;
		}}
		sl_send_reply("404", "Not here");
		exit;
	}}
	if (is_method("CANCEL")) {{
		if (t_check_trans()) {{
			rtpengine_manage();
			route(RELAY);
		}}
		exit;
	}}
	if (!is_method("INVITE")) {{
		sl_send_reply("405", "Method Not Allowed");
		exit;
	}}
	t_check_trans();
	remove_hf("Route");
	record_route();
	rewritehostport("127.0.0.1:{uas_port}");
	rtpengine_manage("replace-origin replace-session-connection");
	t_on_reply("MANAGE_REPLY");
	t_on_failure("MANAGE_FAILURE");
	route(RELAY);
}}

route[RELAY] {{
	if (!t_relay()) {{
		sl_reply_error();
	}}
	exit;
}}

onreply_route[MANAGE_REPLY] {{
	if (has_body("application/sdp")) {{
		rtpengine_manage("replace-origin replace-session-connection");
	}}
}}

failure_route[MANAGE_FAILURE] {{
	rtpengine_manage();
}}
"#
    )
}

/// Kamailio with `cfg`, its files and `kamailio.log` in `dir`, killed on drop.
fn start_kamailio(dir: &Path, cfg: &str) -> Group {
    let path = dir.join("kamailio.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut kam = Command::new("kamailio");
    kam.arg("-f")
        .arg(&path)
        .arg("-P")
        .arg(dir.join("kamailio.pid"))
        .arg("-Y")
        .arg(dir)
        .args(["-DD", "-E", "-m", "64", "-M", "8"]);
    spawn_group(kam, &dir.join("kamailio.log"))
}

/// Kamailio answers (405 to OPTIONS) once it listens.
fn wait_sip(port: u16, log: &Path) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let local = s.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe\r\n\
         From: <sip:probe@{local}>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: probe\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        s.send_to(options.as_bytes(), ("127.0.0.1", port)).unwrap();
        if s.recv(&mut buf).is_ok() {
            return;
        }
    }
    panic!(
        "kamailio did not answer on port {port}; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamailio_calls_go_through_sluice_and_end_with_bye() {
    if let Some(install) = missing_tools() {
        assert!(std::env::var_os("CI").is_none(), "under CI: {install}");
        skipped(&format!("needs Kamailio and SIPp ({install})"));
        return;
    }
    let (ng_port, sip_port, uas_port) = (free_udp_port(), free_udp_port(), free_udp_port());
    let d = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{ng_port}")]).await;
    let dir = d.dir.clone();
    let kam_log = dir.join("kamailio.log");
    let _kamailio = start_kamailio(
        &dir,
        &kamailio_cfg(sip_port, uas_port, &format!("udp:127.0.0.1:{ng_port}")),
    );
    wait_sip(sip_port, &kam_log);

    let scenarios = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipp");
    let (uac_media, uas_media) = (free_udp_port(), free_udp_port());
    let mut uas = Command::new("sipp");
    uas.arg("-sf")
        .arg(scenarios.join("uas_rr_pcma.xml"))
        .args(["-i", "127.0.0.1", "-p", &uas_port.to_string()])
        .args([
            "-mi",
            "127.0.0.1",
            "-mp",
            &uas_media.to_string(),
            "-rtp_echo",
        ])
        .args(["-m", &CALLS.to_string(), "-nostdin"]);
    // Its own process group, killed on drop even when the test fails.
    let uas_log = dir.join("sipp_uas.log");
    let uas = spawn_group(uas, &uas_log);
    std::thread::sleep(Duration::from_millis(300));

    let mut uac = Command::new("sipp");
    uac.arg(format!("127.0.0.1:{sip_port}"))
        .arg("-sf")
        .arg(scenarios.join("uac_rr_pcma.xml"))
        .args(["-i", "127.0.0.1", "-p", &free_udp_port().to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &uac_media.to_string()])
        .args([
            "-s",
            "sluice",
            "-m",
            &CALLS.to_string(),
            "-r",
            "2",
            "-l",
            "3",
        ])
        .args(["-nostdin", "-timeout", "30", "-timeout_error"])
        .current_dir(&dir);
    let (out, killed) =
        tokio::task::spawn_blocking(move || run_bounded(uac, Duration::from_secs(45)))
            .await
            .unwrap();
    let kam_text = std::fs::read_to_string(&kam_log).unwrap_or_default();
    let why = || {
        format!(
            "sipp uac: {}\n{}\nkamailio log:\n{kam_text}\nsluice log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            d.log_text()
        )
    };
    assert!(!killed, "the SIPp caller did not finish in 45 s\n{}", why());
    assert!(out.status.success(), "not every call succeeded\n{}", why());

    let stats = d
        .client()
        .await
        .statistics(pb::StatisticsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.calls_total, u64::from(CALLS), "{}", why());
    assert_eq!(stats.calls_current, 0, "BYE deleted every call\n{}", why());
    assert_eq!(stats.ports_in_use, 0, "no port left behind\n{}", why());
    // Each call: the caller's pcap through sluice to the callee and echoed back.
    assert!(
        stats.packets_relayed >= u64::from(CALLS) * 2 * 50,
        "only {} packets relayed\n{}",
        stats.packets_relayed,
        why()
    );
    let rtpstat: Vec<&str> = kam_text
        .lines()
        .filter(|l| l.contains("RTPESTAT"))
        .collect();
    assert_eq!(rtpstat.len(), CALLS as usize, "{}", why());
    for l in &rtpstat {
        assert!(
            !l.contains("[]") && l.contains("RTP"),
            "empty $rtpstat: {l}"
        );
    }
    println!("{}", rtpstat.join("\n"));
    drop(uas);

    // Callers that give up while it rings: Kamailio's rtpengine_manage() deletes on the
    // CANCEL (and on the 487 in its failure route).
    const CANCELS: u32 = 2;
    let mut uas = Command::new("sipp");
    uas.arg("-sf")
        .arg(scenarios.join("uas_cancel.xml"))
        .args(["-i", "127.0.0.1", "-p", &uas_port.to_string()])
        .args(["-m", &CANCELS.to_string(), "-nostdin"]);
    let _uas = spawn_group(uas, &dir.join("sipp_uas_cancel.log"));
    std::thread::sleep(Duration::from_millis(300));
    let mut uac = Command::new("sipp");
    uac.arg(format!("127.0.0.1:{sip_port}"))
        .arg("-sf")
        .arg(scenarios.join("uac_cancel.xml"))
        .args(["-i", "127.0.0.1", "-p", &free_udp_port().to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args(["-s", "sluice", "-m", &CANCELS.to_string(), "-r", "2"])
        .args(["-nostdin", "-timeout", "30", "-timeout_error"])
        .current_dir(&dir);
    let (out, killed) =
        tokio::task::spawn_blocking(move || run_bounded(uac, Duration::from_secs(45)))
            .await
            .unwrap();
    let kam_text = std::fs::read_to_string(&kam_log).unwrap_or_default();
    assert!(
        !killed && out.status.success(),
        "cancelled calls did not complete: {}\n{}\nkamailio log:\n{kam_text}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Kamailio may delete twice (on the CANCEL, then in the failure route); either way the
    // call is gone. The delete reaches sluice beside the SIP exchange: allow it a moment.
    let stats = d.statistics_once(|s| s.calls_current == 0).await;
    assert_eq!(
        stats.calls_total,
        u64::from(CALLS + CANCELS),
        "{}",
        d.log_text()
    );
    assert_eq!(
        stats.calls_current,
        0,
        "CANCEL deleted the calls\n{}",
        d.log_text()
    );
    assert_eq!(
        stats.ports_in_use,
        0,
        "no port left behind\n{}",
        d.log_text()
    );
}

/// `calls` SIPp calls with echoed PCMA through Kamailio at `sip_port` to a SIPp callee at
/// `uas_port`; panics with the logs unless every call succeeds.
async fn calls_with_media(dir: &Path, sip_port: u16, uas_port: u16, calls: u32, what: &str) {
    let scenarios = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sipp");
    let mut uas = Command::new("sipp");
    uas.arg("-sf")
        .arg(scenarios.join("uas_rr_pcma.xml"))
        .args(["-i", "127.0.0.1", "-p", &uas_port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args(["-rtp_echo", "-m", &calls.to_string(), "-nostdin"]);
    let _uas = spawn_group(uas, &dir.join(format!("sipp_uas_{what}.log")));
    std::thread::sleep(Duration::from_millis(300));
    let mut uac = Command::new("sipp");
    uac.arg(format!("127.0.0.1:{sip_port}"))
        .arg("-sf")
        .arg(scenarios.join("uac_rr_pcma.xml"))
        .args(["-i", "127.0.0.1", "-p", &free_udp_port().to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args([
            "-s",
            "sluice",
            "-m",
            &calls.to_string(),
            "-r",
            "4",
            "-l",
            "4",
        ])
        .args(["-nostdin", "-timeout", "30", "-timeout_error"])
        .current_dir(dir);
    let (out, killed) =
        tokio::task::spawn_blocking(move || run_bounded(uac, Duration::from_secs(45)))
            .await
            .unwrap();
    assert!(
        !killed && out.status.success(),
        "{what}: not every call succeeded: {} (killed: {killed})\n{}\nkamailio log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default()
    );
}

/// A node's statistics once its calls have ended (the BYE's delete reaches sluice beside the
/// SIP exchange).
async fn idle_stats(d: &Daemon) -> pb::StatisticsReply {
    d.statistics_once(|s| s.calls_current == 0).await
}

/// Two sluice nodes in one Kamailio rtpengine set, as a deployment grows across hosts: every
/// call lands on exactly one node and carries media there. Then node A is drained at run time
/// (`SetMaxSessions 0`, what `sluice ctl max-sessions 0` sends): it answers new offers with
/// `load limit`, Kamailio silently sends them to node B, every call still succeeds, and A takes
/// none of them. Afterwards neither node holds a call or a port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_sends_kamailio_to_the_next_one_in_its_set() {
    if let Some(install) = missing_tools() {
        assert!(std::env::var_os("CI").is_none(), "under CI: {install}");
        skipped(&format!("needs Kamailio and SIPp ({install})"));
        return;
    }
    let (ng_a, ng_b, sip_port, uas_port) = (
        free_udp_port(),
        free_udp_port(),
        free_udp_port(),
        free_udp_port(),
    );
    let a = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{ng_a}")]).await;
    let b = Daemon::start(&["--ng", &format!("udp:127.0.0.1:{ng_b}")]).await;
    let dir = a.dir.clone();
    let set = format!("udp:127.0.0.1:{ng_a}=1 udp:127.0.0.1:{ng_b}=1");
    let _kamailio = start_kamailio(&dir, &kamailio_cfg(sip_port, uas_port, &set));
    wait_sip(sip_port, &dir.join("kamailio.log"));

    const FIRST: u32 = 6;
    calls_with_media(&dir, sip_port, uas_port, FIRST, "both").await;
    let (sa, sb) = (idle_stats(&a).await, idle_stats(&b).await);
    assert_eq!(
        sa.calls_total + sb.calls_total,
        u64::from(FIRST),
        "each call on exactly one node (A {}, B {})",
        sa.calls_total,
        sb.calls_total
    );
    for (name, s, total) in [("A", &sa, sa.calls_total), ("B", &sb, sb.calls_total)] {
        assert!(
            s.packets_relayed >= total * 2 * 50,
            "node {name}: {} packets for {total} calls",
            s.packets_relayed
        );
    }

    let drained = a
        .client()
        .await
        .set_max_sessions(pb::SetMaxSessionsRequest {
            max_sessions: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.previous, None);
    const SECOND: u32 = 6;
    calls_with_media(&dir, sip_port, uas_port, SECOND, "drained").await;
    let (a2, b2) = (idle_stats(&a).await, idle_stats(&b).await);
    assert_eq!(
        a2.calls_total, sa.calls_total,
        "the drained node took no new call"
    );
    assert_eq!(
        b2.calls_total,
        sb.calls_total + u64::from(SECOND),
        "node B took every new call"
    );
    assert!(b2.packets_relayed >= sb.packets_relayed + u64::from(SECOND) * 2 * 50);
    println!(
        "calls on A/B: {}/{} before the drain, {}/{} after",
        sa.calls_total,
        sb.calls_total,
        a2.calls_total - sa.calls_total,
        b2.calls_total - sb.calls_total
    );
    for (name, s) in [("A", &a2), ("B", &b2)] {
        assert_eq!(
            (s.calls_current, s.ports_in_use),
            (0, 0),
            "node {name} holds nothing"
        );
    }
}
