//! Namespace plumbing shared by the relay's netns tests (xdp_netns.rs, afxdp_netns.rs).
//! Each test binary uses its own subset.
#![allow(dead_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why the netns tests cannot run here, if they cannot: they need root and the XDP program.
pub fn skip_reason() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root");
    }
    if sluice_relay::xdp::program_object().is_none() {
        return Some(
            "sluice was built without the XDP program (apt-get install clang-19 libbpf-dev)",
        );
    }
    None
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn ip(args: &str) {
    run("ip", &args.split_whitespace().collect::<Vec<_>>());
}

pub fn ns_exec(ns: &str, args: &str) {
    let mut v = vec!["netns", "exec", ns];
    v.extend(args.split_whitespace());
    run("ip", &v);
}

/// Runs `f` on a thread inside network namespace `ns`. Sockets it creates stay in `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: valid fd; setns only affects this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e),
        }
    })
}

/// Namespaces deleted on drop, panics included.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test process or test of this one uses: `tag` tells the binaries apart.
pub fn unique(tag: &str, prefix: &str) -> String {
    format!(
        "{tag}{}-{}{prefix}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
    )
}
