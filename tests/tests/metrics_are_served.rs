//! `--metrics`: Prometheus scrapes `/metrics` and reads what the daemon counts. A call over gRPC
//! with media and a ping over ng show up in the call, stream, packet and port figures, in the
//! calls ended by reason and in the control request counters and latency histograms; every
//! sample follows the naming rules (`sluice_` prefix, counters ending in `_total`, seconds).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sluice_control::ng::bencode::Value;
use sluice_tests::*;

/// One `GET /metrics`: (status line, content type, body).
fn scrape(port: u16) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_string();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

/// The value of the sample line that starts with `series` (name and labels, exactly).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_calls_packets_and_control_requests() {
    bounded(async {
        let (mport, ngport) = (free_tcp_port(), free_udp_port());
        let d = Daemon::start(&[
            "--metrics",
            &format!("127.0.0.1:{mport}"),
            "--ng",
            &format!("udp:127.0.0.1:{ngport}"),
        ])
        .await;
        let mut c = d.client().await;
        let (a, b) = (Peer::v4(), Peer::v4());
        let call = establish(&mut c, "m1", &a, &b).await;
        for seq in 0..4u16 {
            a.send_rtp(call.a_sends_rtp(), &pcmu(seq, u32::from(seq) * 160, 0x51));
        }
        assert_eq!(b.recv_rtp_n(4).len(), 4);
        // A stranger after the caller latched: dropped as wrong_source (strict source).
        let stranger = Peer::v4();
        for seq in 0..3u16 {
            stranger.send_rtp(call.a_sends_rtp(), &pcmu(seq, 0, 0x66));
        }
        b.assert_silent("a stranger's packets were relayed");
        let during = scrape(mport).2;
        assert_eq!(
            sample(&during, "sluice_calls_active"),
            Some(1.0),
            "{during}"
        );
        assert!(sample(&during, "sluice_ports_in_use").unwrap_or(0.0) >= 2.0);
        // One plain stream on the userspace path (no XDP here), and every other combination
        // exported as a zero.
        for path in sluice_control::session::STREAM_PATHS {
            for kind in sluice_control::session::STREAM_KINDS {
                let want = if (path, kind) == ("userspace", "plain") {
                    1.0
                } else {
                    0.0
                };
                assert_eq!(
                    sample(
                        &during,
                        &format!(r#"sluice_streams{{path="{path}",kind="{kind}"}}"#)
                    ),
                    Some(want),
                    "{path} {kind}: {during}"
                );
            }
        }
        for zero in [
            "sluice_transcoder_channels",
            "sluice_transcoded_packets_total",
            "sluice_transcoder_concealed_frames_total",
            "sluice_transcoder_fec_recovered_frames_total",
        ] {
            assert_eq!(sample(&during, zero), Some(0.0), "{zero}: {during}");
        }
        c.delete(pb::DeleteRequest {
            call_id: "m1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let ng = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        ng.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut ping = b"p1 ".to_vec();
        Value::dict([("command", Value::str("ping"))]).encode(&mut ping);
        ng.send_to(&ping, ("127.0.0.1", ngport)).unwrap();
        let mut buf = [0u8; 512];
        recv_from_retrying(&ng, &mut buf).expect("pong");

        let (status, ctype, body) = scrape(mport);
        assert!(status.contains(" 200 "), "{status}");
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(sample(&body, "sluice_calls_total"), Some(1.0), "{body}");
        assert_eq!(sample(&body, "sluice_calls_active"), Some(0.0));
        assert_eq!(sample(&body, "sluice_ports_in_use"), Some(0.0));
        assert!(sample(&body, "sluice_packets_relayed_total").unwrap_or(0.0) >= 4.0);
        assert_eq!(
            sample(&body, r#"sluice_streams{path="userspace",kind="plain"}"#),
            Some(0.0),
            "{body}"
        );
        // The gRPC delete, and every other reason as a zero.
        for reason in sluice_control::session::CALL_END_REASONS {
            assert_eq!(
                sample(
                    &body,
                    &format!(r#"sluice_calls_ended_total{{reason="{reason}"}}"#)
                ),
                Some(if reason == "deleted" { 1.0 } else { 0.0 }),
                "{reason}: {body}"
            );
        }
        // Every drop reason is a series; the stranger's packets are in wrong_source.
        for reason in sluice_control::session::DROP_REASONS {
            assert!(
                sample(
                    &body,
                    &format!(r#"sluice_packets_dropped_total{{reason="{reason}"}}"#)
                )
                .is_some(),
                "{reason}: {body}"
            );
        }
        assert!(
            sample(
                &body,
                r#"sluice_packets_dropped_total{reason="wrong_source"}"#
            )
            .unwrap_or(0.0)
                >= 3.0,
            "{body}"
        );
        assert_eq!(
            sample(
                &body,
                r#"sluice_control_requests_total{frontend="grpc",method="Offer",result="ok"}"#
            ),
            Some(1.0),
            "{body}"
        );
        assert_eq!(
            sample(
                &body,
                r#"sluice_control_requests_total{frontend="ng",method="ping",result="ok"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &body,
                r#"sluice_control_request_duration_seconds_count{frontend="ng",method="ping"}"#
            ),
            Some(1.0)
        );
        // Naming: every sample is sluice_*, every counter sample ends in _total.
        let mut counters = Vec::new();
        for l in body.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut f = rest.split(' ');
                let (name, kind) = (f.next().unwrap(), f.next().unwrap());
                assert!(name.starts_with("sluice_"), "{l}");
                if kind == "counter" {
                    counters.push(name.to_string());
                }
            } else if !l.starts_with('#') && !l.is_empty() {
                assert!(l.starts_with("sluice_"), "{l}");
            }
        }
        assert!(counters.len() >= 5, "{counters:?}");
        let sample_names: Vec<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        for name in counters {
            let total = format!("{name}_total");
            assert!(
                sample_names.contains(&total.as_str()) && !sample_names.contains(&name.as_str()),
                "counter {name}: its samples must be {total}"
            );
        }
        drop(d);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_on_loopback_unless_allowed() {
    let out = std::process::Command::new(sluice_bin())
        .args(["run", "--metrics", "0.0.0.0:9464"])
        .output()
        .expect("run sluice");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics have no authentication"), "{err}");
}

/// The metric names in an expression: `sluice_` identifiers.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sluice_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// contrib/grafana/sluice.json uses only names the daemon exports: each name in each panel's
/// expression is a sample of a scrape of a daemon running every front end, or a sample name of
/// a family the scrape declares (`_total`, `_bucket`, `_count`, `_sum` of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_uses_only_exported_names() {
    bounded(async {
        let (mport, sip, route) = (free_tcp_port(), free_udp_port(), free_udp_port());
        let d = Daemon::start(&[
            "--metrics",
            &format!("127.0.0.1:{mport}"),
            "--sip",
            &format!("udp:127.0.0.1:{sip}"),
            "--route",
            &format!("sip:127.0.0.1:{route}"),
            "--max-cpu",
            "100",
        ])
        .await;
        let mut c = d.client().await;
        c.statistics(pb::StatisticsRequest {}).await.unwrap();
        // The host load is sampled once a second.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        let body = scrape(mport).2;
        let mut known: Vec<String> = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
            .collect();
        for l in body.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let family = rest.split(' ').next().unwrap();
                for suffix in ["", "_total", "_bucket", "_count", "_sum"] {
                    known.push(format!("{family}{suffix}"));
                }
            }
        }
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/sluice.json");
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut checked = 0;
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let names = names_in(expr);
                assert!(!names.is_empty(), "{expr}");
                for n in names {
                    assert!(
                        known.contains(&n),
                        "panel {:?} uses {n}, which the daemon does not export\n{body}",
                        panel["title"]
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 20, "{checked} names checked");
        drop(d);
    })
    .await;
}
