//! sluice takes SIP calls over TLS (`--sip tls:`, rustls): a caller written here with rustls
//! (Debian's SIPp is built without TLS) trusts a certificate made for the test, calls through
//! sluice to a SIPp callee over UDP, and hangs up. Before that, bytes that are not TLS and a
//! TLS record cut short reach the TLS port: they are closed and counted, and the call after
//! them goes through.
//!
//! Needs sipp (Debian: sip-tester) for the callee: required under CI, skipped elsewhere.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_sip::{Frame, Limits, Message, frame_stream};
use sluice_tests::*;

/// Reads SIP messages off a stream until one satisfies `want` (bounded by `limit`).
fn read_until<S: Read>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
    want: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = Instant::now() + limit;
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Frame::Message(m, n)) = frame_stream(buf, &Limits::default()) {
            buf.drain(..n);
            if want(&m) {
                return *m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no matching message within {limit:?}"
        );
        match s.read(&mut chunk) {
            Ok(0) => panic!("sluice closed the TLS connection"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("TLS read: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_tls_reaches_a_udp_callee_and_junk_on_the_tls_port_is_counted() {
    if Command::new("sipp").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "under CI: apt-get install sip-tester"
        );
        skipped("needs SIPp (apt-get install sip-tester)");
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "sluice-tls-{}-{}",
        std::process::id(),
        free_tcp_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();

    let (tls_port, uas_port) = (free_tcp_port(), free_udp_port());
    let d = Daemon::start(&[
        "--sip",
        &format!("tls:127.0.0.1:{tls_port}"),
        // The callee is reached over UDP, from this socket.
        "--sip",
        &format!("udp:127.0.0.1:{tls_port}"),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--route",
        &format!("sip:127.0.0.1:{uas_port}"),
    ])
    .await;
    let mut uas = Command::new("sipp");
    uas.args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas_port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port().to_string()])
        .args(["-m", "1", "-nostdin"]);
    let _uas = spawn_group(uas, &dir.join("uas.log"));
    std::thread::sleep(Duration::from_millis(300));

    // Junk: an HTTP request, and a TLS ClientHello cut short.
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01",
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(junk).unwrap();
        if junk.starts_with(b"GET") {
            let mut b = [0u8; 64];
            // sluice answers a non-TLS byte stream with a TLS alert at most, then closes.
            let mut total = 0;
            while let Ok(n) = s.read(&mut b) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            assert!(total < 64, "closed after at most an alert");
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let local = tcp.local_addr().unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let sdp = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let head = |method: &str, cseq: u32, to_tag: &str, branch: &str| {
        format!(
            "{method} sips:bob@127.0.0.1:{tls_port} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch={branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sips:alice@example.com>;tag=tlsa\r\nTo: <sips:bob@example.com>{to_tag}\r\n\
             Call-ID: tls-call-1\r\nCSeq: {cseq} {method}\r\nContact: <sips:alice@{local}>\r\n"
        )
    };
    let invite = format!(
        "{}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        head("INVITE", 1, "", "z9hG4bKtls1"),
        sdp.len()
    );
    tls.write_all(invite.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let ok = read_until(&mut tls, &mut buf, Duration::from_secs(10), |m| {
        m.code() == Some(200)
    });
    assert!(
        ok.header(&sluice_sip::HeaderName::Contact)
            .unwrap()
            .contains("transport=tls"),
        "{ok:?}"
    );
    assert!(String::from_utf8_lossy(&ok.body).contains("c=IN IP4 127.0.0.1"));
    let tag = format!(";tag={}", ok.to_hdr().unwrap().tag().unwrap());
    tls.write_all(
        format!(
            "{}Content-Length: 0\r\n\r\n",
            head("ACK", 1, &tag, "z9hG4bKtls2")
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    tls.write_all(
        format!(
            "{}Content-Length: 0\r\n\r\n",
            head("BYE", 2, &tag, "z9hG4bKtls3")
        )
        .as_bytes(),
    )
    .unwrap();
    let bye_ok = read_until(&mut tls, &mut buf, Duration::from_secs(10), |m| {
        m.code() == Some(200) && m.cseq().is_ok_and(|c| c.method == sluice_sip::Method::Bye)
    });
    assert_eq!(bye_ok.call_id().unwrap(), "tls-call-1");

    let stats = d.statistics_once(|s| s.calls_current == 0).await;
    let sip = stats.sip.expect("SIP counters");
    assert_eq!((sip.calls_answered, sip.calls_current), (1, 0), "{sip:?}");
    assert!(sip.malformed >= 1, "the junk was counted: {sip:?}");
    assert_eq!(stats.ports_in_use, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
