//! Interop with libsrtp2 both ways, for every profile: RTP across the ROC rollover at
//! sequence 65535 (with reordering on either side), SRTCP encrypted and authentication-only,
//! and libsrtp refusing what sluice tampered with.
//!
//! libsrtp runs in `tests/srtp_harness/harness.c`, compiled here with the C compiler against
//! the system libsrtp2 (`pkg-config libsrtp2`, Debian package libsrtp2-dev). Without
//! libsrtp2-dev the tests print why and pass without checking anything.

mod common;
use common::{hex, unhex};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use sluice_relay::srtp::{
    MAX_RTCP_OVERHEAD, MAX_RTP_OVERHEAD, SrtpConfig, SrtpContext, SrtpError, SrtpProfile,
};

const SSRC: u32 = 0xcafe_babe;

/// Builds the harness once per test binary; `None` (after saying why) without libsrtp2-dev.
fn harness() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let flags = match Command::new("pkg-config")
                .args(["--cflags", "--libs", "libsrtp2"])
                .output()
            {
                Ok(out) if out.status.success() => String::from_utf8(out.stdout).unwrap(),
                _ => {
                    let why = "libsrtp2 not found by pkg-config; install the Debian packages \
                               libsrtp2-dev and pkg-config to run the libsrtp interop tests";
                    // CI installs libsrtp2-dev: there a missing oracle is a failure.
                    assert!(std::env::var_os("CI").is_none(), "under CI: {why}");
                    common::skipped(why);
                    return None;
                }
            };
            let src =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/srtp_harness/harness.c");
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("srtp_harness");
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            let status = Command::new(&cc)
                .args(["-O2", "-Wall", "-o"])
                .arg(&out)
                .arg(&src)
                .args(flags.split_whitespace())
                .status()
                .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
            assert!(status.success(), "compiling {} failed", src.display());
            Some(out)
        })
        .clone()
}

/// One libsrtp sender session and one receiver session keyed alike.
struct Libsrtp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Libsrtp {
    fn start(path: &PathBuf, profile: SrtpProfile, master: &[u8], option: &str) -> Self {
        let mut child = Command::new(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the libsrtp harness");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut me = Self {
            child,
            stdin,
            stdout,
        };
        let line = format!("init {} {} {option}", profile.sdes_name(), hex(master));
        assert_eq!(me.ask(&line), "ok", "libsrtp refused {profile}");
        me
    }

    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        answer.trim_end().to_owned()
    }

    /// Runs one libsrtp call; `Err(status)` carries libsrtp's srtp_err_status_t.
    fn call(&mut self, cmd: &str, packet: &[u8]) -> Result<Vec<u8>, i32> {
        let answer = self.ask(&format!("{cmd} {}", hex(packet)));
        match answer.split_once(' ') {
            Some(("ok", h)) => Ok(unhex(h)),
            Some(("err", code)) => Err(code.parse().unwrap_or(-1)),
            _ => panic!("harness answered {answer:?}"),
        }
    }
}

impl Drop for Libsrtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// libsrtp's srtp_err_status_auth_fail.
const LIBSRTP_AUTH_FAIL: i32 = 7;

fn master(profile: SrtpProfile) -> Vec<u8> {
    (0..profile.master_len())
        .map(|i| (i as u8).wrapping_mul(37) ^ 0x5a)
        .collect()
}

fn rtp(seq: u16, payload_len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8).wrapping_add(seq as u8)));
    p
}

/// RTP with two CSRCs, a one-word header extension, marker and padding.
fn rtp_with_extras(seq: u16) -> Vec<u8> {
    let mut p = vec![0xb2, 0xe0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x12, 0x34]);
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
    p.extend_from_slice(&[9; 37]);
    p.extend_from_slice(&[0, 0, 3]);
    p
}

fn rtcp(n: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0xc8, 0x00, 0x06];
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[n; 20]);
    p.extend_from_slice(&[0x81, 0xca, 0x00, 0x03]);
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend_from_slice(&[1, 3, b'a', b'b', b'c', 0, 0, 0]);
    p
}

fn sluice(profile: SrtpProfile) -> SrtpContext {
    SrtpContext::new(profile, &master(profile), SrtpConfig::default()).unwrap()
}

fn protect(ctx: &mut SrtpContext, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + MAX_RTP_OVERHEAD, 0);
    let len = ctx.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(len);
    buf
}

fn unprotect(ctx: &mut SrtpContext, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = packet.to_vec();
    let len = ctx.unprotect_rtp(&mut buf, packet.len())?;
    buf.truncate(len);
    Ok(buf)
}

/// Sequence numbers across the wrap: 65500..=65535 then 0..=40.
fn across_the_wrap() -> Vec<u16> {
    (65_500..=65_535).chain(0..=40).collect()
}

/// The same numbers, with neighbours swapped around the wrap (each packet at most 3 late).
fn reordered_across_the_wrap() -> Vec<u16> {
    let mut seqs = across_the_wrap();
    for i in (30..46).step_by(3) {
        seqs.swap(i, i + 2);
    }
    seqs
}

#[test]
fn sluice_protects_rtp_libsrtp_unprotects_across_the_rollover() {
    let Some(path) = harness() else { return };
    for profile in SrtpProfile::ALL {
        let mut theirs = Libsrtp::start(&path, profile, &master(profile), "");
        let mut ours = sluice(profile);
        // sluice's input is reordered around the wrap: it must still pick the right ROC.
        for seq in reordered_across_the_wrap() {
            let plain = if seq % 7 == 0 {
                rtp_with_extras(seq)
            } else {
                rtp(seq, 160)
            };
            let srtp = protect(&mut ours, &plain);
            assert_eq!(
                theirs.call("u", &srtp),
                Ok(plain),
                "{profile}: libsrtp could not unprotect seq {seq}"
            );
        }
        assert_eq!(ours.rtp_state(SSRC), Some((1, 40)));
        // And libsrtp rejects a tampered one.
        let mut srtp = protect(&mut ours, &rtp(41, 160));
        srtp[20] ^= 1;
        assert_eq!(theirs.call("u", &srtp), Err(LIBSRTP_AUTH_FAIL), "{profile}");
    }
}

#[test]
fn libsrtp_protects_rtp_sluice_unprotects_across_the_rollover() {
    let Some(path) = harness() else { return };
    for profile in SrtpProfile::ALL {
        let mut theirs = Libsrtp::start(&path, profile, &master(profile), "");
        let mut ours = sluice(profile);
        let mut sent = std::collections::HashMap::new();
        for seq in across_the_wrap() {
            let plain = if seq % 5 == 0 {
                rtp_with_extras(seq)
            } else {
                rtp(seq, 160)
            };
            let srtp = theirs.call("p", &plain).unwrap();
            assert_eq!(srtp.len(), plain.len() + profile.rtp_overhead());
            sent.insert(seq, (plain, srtp));
        }
        // Delivered to sluice out of order around the wrap.
        for seq in reordered_across_the_wrap() {
            let (plain, srtp) = &sent[&seq];
            assert_eq!(
                unprotect(&mut ours, srtp).as_ref(),
                Ok(plain),
                "{profile}: sluice could not unprotect libsrtp's seq {seq}"
            );
        }
        assert_eq!(ours.rtp_state(SSRC), Some((1, 40)));
        let (_, replay) = &sent[&65_535];
        assert_eq!(
            unprotect(&mut ours, replay),
            Err(SrtpError::Replayed {
                ssrc: SSRC,
                index: 65_535
            })
        );
    }
}

#[test]
fn srtcp_both_ways() {
    let Some(path) = harness() else { return };
    for profile in SrtpProfile::ALL {
        let mut theirs = Libsrtp::start(&path, profile, &master(profile), "");
        let mut ours = sluice(profile);
        for n in 0..5u8 {
            // sluice -> libsrtp (sluice's SRTCP indices start at 0).
            let plain = rtcp(n);
            let mut buf = plain.clone();
            buf.resize(plain.len() + MAX_RTCP_OVERHEAD, 0);
            let len = ours.protect_rtcp(&mut buf, plain.len()).unwrap();
            assert_eq!(len, plain.len() + profile.rtcp_overhead());
            assert_eq!(
                theirs.call("uc", &buf[..len]),
                Ok(plain.clone()),
                "{profile}: libsrtp could not unprotect SRTCP {n}"
            );
            // libsrtp -> sluice (libsrtp's start at 1).
            let srtcp = theirs.call("pc", &plain).unwrap();
            assert_eq!(srtcp.len(), plain.len() + profile.rtcp_overhead());
            let mut buf = srtcp.clone();
            let len = ours
                .unprotect_rtcp(&mut buf, srtcp.len())
                .unwrap_or_else(|e| {
                    panic!("{profile}: sluice could not unprotect libsrtp SRTCP {n}: {e}")
                });
            assert_eq!(&buf[..len], &plain[..]);
            let mut again = srtcp.clone();
            assert!(matches!(
                ours.unprotect_rtcp(&mut again, srtcp.len()),
                Err(SrtpError::Replayed { .. })
            ));
        }
        assert_eq!(ours.next_srtcp_index(SSRC), 5);
    }
}

#[test]
fn unencrypted_srtcp_from_libsrtp_is_authenticated_and_passed() {
    let Some(path) = harness() else { return };
    for profile in SrtpProfile::ALL {
        let mut theirs = Libsrtp::start(&path, profile, &master(profile), "rtcp-auth-only");
        let mut ours = sluice(profile);
        for n in 0..3u8 {
            let plain = rtcp(n);
            let srtcp = theirs.call("pc", &plain).unwrap();
            // E flag clear: the payload travels in the clear.
            assert_eq!(&srtcp[..plain.len()], &plain[..], "{profile}");
            // A changed byte fails authentication (checked first: a replay is refused
            // before its tag is looked at).
            let mut bad = srtcp.clone();
            bad[12] ^= 0x40;
            assert_eq!(
                ours.unprotect_rtcp(&mut bad, srtcp.len()),
                Err(SrtpError::AuthFailed { ssrc: SSRC })
            );
            let mut buf = srtcp.clone();
            let len = ours
                .unprotect_rtcp(&mut buf, srtcp.len())
                .unwrap_or_else(|e| panic!("{profile}: E=0 SRTCP {n}: {e}"));
            assert_eq!(&buf[..len], &plain[..]);
        }
    }
}
