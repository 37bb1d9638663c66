//! `cargo xtask fresh-machine`: the README's two commands on a machine that has only what a
//! Rust image has (Rust, gcc, make, pkg-config, Python; no -dev packages, no CMake, no clang).
//!
//! The machine is a Debian 12 root built by debootstrap (minbase plus exactly those packages)
//! under `--root`, entered with chroot; the host's Rust toolchain and cargo registry are bound
//! in (the image would carry them), `/proc`, `/sys` and `/dev` too. A clean clone of this
//! repository's HEAD is built from scratch inside, then:
//! 1. `cargo run --release -p sluice-control --bin sluice -- run` must print `sluice ready`
//!    (stopped after a few seconds with SIGINT, which must end it cleanly);
//! 2. `cargo test --workspace` (without `CI`) must pass; every test that needs an absent tool
//!    prints one `skipped:` line naming it, and those lines are listed.
//!
//! Needs root and debootstrap (`apt-get install debootstrap`); the root is kept between runs
//! (about 650 MB, 1-2 minutes to make) and the clone and its target directory are replaced.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

/// Packages of the "fresh machine" besides debootstrap's minbase: what a Rust image has.
const PACKAGES: &str = "gcc,libc6-dev,make,pkg-config,python3,git,ca-certificates";
/// Packages that must NOT be there, or the check proves nothing.
const ABSENT: &[&str] = &[
    "libopus-dev",
    "libhwloc-dev",
    "libudev-dev",
    "libsrtp2-dev",
    "libbpf-dev",
    "clang-19",
    "clang",
    "cmake",
    "protobuf-compiler",
    "iproute2",
];
const MIRROR: &str = "http://deb.debian.org/debian";

pub struct Args {
    pub root: PathBuf,
    /// Skip command 2 (the test suite).
    pub build_only: bool,
}

pub fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "fresh-machine needs root (chroot, mount)"
    );
    let repo = repo_root()?;
    let root = &args.root;
    make_root(root)?;
    check_absent(root)?;

    let src = root.join("src");
    let _ = std::fs::remove_dir_all(&src);
    sh(Command::new("git")
        .args(["clone", "-q", "--no-local"])
        .arg(&repo)
        .arg(&src))?;
    let head = capture(
        Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["log", "--oneline", "-1"]),
    )?;
    println!("fresh-machine: clean clone of {}", head.trim());

    let mounts = Mounts::new(root)?;
    let result = (|| -> Result<()> {
        let t = Instant::now();
        // Command 1, built first so the daemon's run below is not timed against the build.
        inside(
            root,
            "cargo build --release -p sluice-control --bin sluice 2>&1 | tail -3",
        )?;
        println!(
            "fresh-machine: release build took {:.0} s",
            t.elapsed().as_secs_f64()
        );
        let out = inside_capture(
            root,
            "timeout -s INT 8 cargo run --release -p sluice-control --bin sluice -- run 2>&1; \
             echo exit=$?",
        )?;
        print!("{out}");
        ensure!(
            out.contains("sluice ready"),
            "command 1 did not print 'sluice ready'"
        );
        ensure!(
            out.contains("sluice stopped"),
            "command 1 did not stop cleanly on SIGINT"
        );
        println!("fresh-machine: command 1 OK (built, ran, stopped)");
        if args.build_only {
            return Ok(());
        }
        let t = Instant::now();
        let log = "/src/target/fresh-machine-tests.log";
        // --no-fail-fast: the same pass/fail as the README's command, but every failure is
        // listed, not only the first failing test binary's.
        let status = inside_status(
            root,
            &format!("cargo test --workspace --no-fail-fast > {log} 2>&1"),
        )?;
        let text = std::fs::read_to_string(root.join(log.trim_start_matches('/')))
            .with_context(|| format!("reading {log}"))?;
        let (passed, failed, ignored) = totals(&text);
        println!(
            "fresh-machine: command 2 took {:.0} s: {passed} passed, {failed} failed, \
             {ignored} ignored",
            t.elapsed().as_secs_f64()
        );
        let mut skips: Vec<&str> = text
            .lines()
            // Our skip lines, and libtest-mimic's "... skipped" ones; not test names.
            .filter(|l| l.trim_start().starts_with("skipped ") || l.contains("... skipped"))
            .collect();
        skips.sort_unstable();
        skips.dedup();
        println!("fresh-machine: {} distinct skip lines:", skips.len());
        for s in &skips {
            println!("  {s}");
        }
        if !status {
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            for l in tail.iter().rev() {
                println!("{l}");
            }
            bail!(
                "command 2 (cargo test --workspace) failed; full log in {}",
                root.join(&log[1..]).display()
            );
        }
        Ok(())
    })();
    drop(mounts);
    result
}

fn repo_root() -> Result<PathBuf> {
    let top = capture(Command::new("git").args(["rev-parse", "--show-toplevel"]))?;
    Ok(PathBuf::from(top.trim()))
}

/// debootstrap's minbase plus [`PACKAGES`], once; `.sluice-fresh` marks a finished root.
fn make_root(root: &Path) -> Result<()> {
    let mark = root.join(".sluice-fresh");
    if mark.exists() {
        println!("fresh-machine: reusing {}", root.display());
        return Ok(());
    }
    ensure!(
        Path::new("/usr/sbin/debootstrap").exists(),
        "debootstrap is missing: apt-get install debootstrap"
    );
    let _ = std::fs::remove_dir_all(root);
    println!(
        "fresh-machine: debootstrap bookworm into {} (1-2 minutes)",
        root.display()
    );
    let t = Instant::now();
    sh(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(root)
        .arg(MIRROR)
        .stdout(std::process::Stdio::null()))?;
    std::fs::write(&mark, PACKAGES)?;
    println!(
        "fresh-machine: root made in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_absent(root: &Path) -> Result<()> {
    let listed = capture(Command::new("chroot").arg(root).args([
        "dpkg-query",
        "-W",
        "-f",
        "${Package} ${Status}\\n",
    ]))?;
    let installed: Vec<&str> = listed
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| ABSENT.contains(p))
        .collect();
    ensure!(
        installed.is_empty(),
        "the fresh root has {installed:?}: it proves nothing"
    );
    println!("fresh-machine: none of {} is installed", ABSENT.join(", "));
    Ok(())
}

/// Bind mounts into the root, undone (in reverse) on drop.
struct Mounts {
    done: Vec<PathBuf>,
}

impl Mounts {
    fn new(root: &Path) -> Result<Mounts> {
        let mut m = Mounts { done: Vec::new() };
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or("/root".into());
        let rustup = std::env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .unwrap_or(home.join(".rustup"));
        let cargo = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or(home.join(".cargo"));
        m.mount(&["-t", "proc", "proc"], None, &root.join("proc"))?;
        m.mount(&["-t", "sysfs", "sysfs"], None, &root.join("sys"))?;
        m.mount(&["--rbind"], Some(Path::new("/dev")), &root.join("dev"))?;
        m.mount(&["--bind"], Some(&rustup), &root.join("root/.rustup"))?;
        m.mount(&["--bind"], Some(&cargo), &root.join("root/.cargo"))?;
        // The registries are the only network this machine kind reaches; DNS as the host's.
        std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))?;
        Ok(m)
    }

    fn mount(&mut self, how: &[&str], from: Option<&Path>, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        let mut c = Command::new("mount");
        c.args(how);
        if let Some(f) = from {
            c.arg(f);
        }
        sh(c.arg(to))?;
        self.done.push(to.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.done.iter().rev() {
            let _ = Command::new("umount").arg("-R").arg(p).status();
        }
    }
}

/// The environment of a new user's shell: no CI, no SLUICE_*, the toolchain on PATH.
fn chroot_cmd(root: &Path, script: &str) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .args([
            "/usr/bin/env",
            "-i",
            "HOME=/root",
            "TERM=dumb",
            "LANG=C.UTF-8",
        ])
        .arg("PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .args(["/bin/bash", "-c"])
        .arg(format!("cd /src && {script}"));
    c
}

fn inside(root: &Path, script: &str) -> Result<()> {
    sh(&mut chroot_cmd(root, script))
}

fn inside_status(root: &Path, script: &str) -> Result<bool> {
    Ok(chroot_cmd(root, script).status()?.success())
}

fn inside_capture(root: &Path, script: &str) -> Result<String> {
    let o = chroot_cmd(root, script).output()?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
}

fn sh(c: &mut Command) -> Result<()> {
    let st = c.status().with_context(|| format!("cannot run {c:?}"))?;
    ensure!(st.success(), "{c:?} failed: {st}");
    Ok(())
}

fn capture(c: &mut Command) -> Result<String> {
    let o = c.output().with_context(|| format!("cannot run {c:?}"))?;
    ensure!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Sums libtest's `test result:` lines.
fn totals(log: &str) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for l in log.lines().filter(|l| l.starts_with("test result:")) {
        let num = |key: &str| -> u64 {
            l.split(';')
                .find_map(|part| part.trim().strip_suffix(key))
                .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                .unwrap_or(0)
        };
        t.0 += num(" passed");
        t.1 += num(" failed");
        t.2 += num(" ignored");
    }
    t
}
