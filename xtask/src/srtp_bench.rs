//! `cargo xtask bench srtp`: SRTP protect and unprotect of a 172-byte RTP packet (160-byte
//! payload), per profile and per core, for sluice and libsrtp2 in the same run.
//!
//! - sluice: the `srtp` criterion bench binary in its chunked mode (`SLUICE_SRTP_BENCH`),
//!   built with the bench profile.
//! - libsrtp2 as Debian ships it (built on NSS): relay/tests/srtp_harness/harness.c in its
//!   `bench` mode, compiled against `pkg-config libsrtp2`.
//! - libsrtp2 built on OpenSSL (the build the targets come from): the same harness
//!   linked against a static libsrtp2 configured with `--enable-openssl`, from `--libsrtp-src`
//!   or Debian's source package (fetched once with `apt-get source` into
//!   target/srtp-bench); skipped, with the reason, when that is not possible.
//!
//! All three run the same loop: chunks of 1024 packets with fresh sequence numbers, filled
//! untimed, protected (timed), then unprotected (timed). Runs are interleaved and the median
//! of `--runs` is reported. Everything is pinned to one CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Profiles in report order (SDES names, as both sides print them).
const PROFILES: [&str; 4] = [
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
];
const PAYLOAD: usize = 160;

#[derive(clap::Args)]
pub struct SrtpArgs {
    /// Packets per profile and run (libsrtp on NSS, about 5x slower, gets a fifth).
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Interleaved runs per implementation; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// CPU to pin the measurement to (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// A libsrtp 2.x source tree to build on OpenSSL (default: Debian's source package).
    #[arg(long)]
    libsrtp_src: Option<PathBuf>,
    /// Leave out libsrtp2 on OpenSSL.
    #[arg(long)]
    no_openssl: bool,
}

/// ns per packet for protect and unprotect, per profile.
type Figures = HashMap<String, (f64, f64)>;

struct Contender {
    name: String,
    run: Box<dyn Fn() -> Result<Figures>>,
    runs: Vec<Figures>,
}

pub fn run(args: SrtpArgs) -> Result<()> {
    let root = workspace_root();
    let work = target_dir(&root).join("srtp-bench");
    std::fs::create_dir_all(&work)?;

    let mut contenders = vec![sluice(&root, args.packets)?];
    match build_harness(&root, &work, Flavour::Debian) {
        Ok(bin) => contenders.push(libsrtp("libsrtp2 Debian (NSS)", bin, args.packets / 5)),
        Err(e) => eprintln!("libsrtp2 (Debian, NSS) left out: {e:#}"),
    }
    if !args.no_openssl {
        match build_harness(&root, &work, Flavour::OpenSsl(args.libsrtp_src.as_deref())) {
            Ok(bin) => contenders.push(libsrtp("libsrtp2 + OpenSSL", bin, args.packets)),
            Err(e) => eprintln!("libsrtp2 on OpenSSL left out: {e:#}"),
        }
    }

    // Pinned only now, so that the builds above had every CPU.
    pin(args.cpu)?;
    for run in 0..args.runs {
        for c in &mut contenders {
            eprintln!("run {}/{}: {}", run + 1, args.runs, c.name);
            c.runs
                .push((c.run)().with_context(|| format!("measuring {}", c.name))?);
        }
    }
    print!("{}", report(&contenders, args.runs));
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Pins this process (and so the benchmark processes it starts) to one CPU.
fn pin(cpu: Option<usize>) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = cpu.unwrap_or(cpus - 1);
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            bail!(
                "cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    eprintln!("pinned to CPU {cpu}");
    Ok(())
}

/// Builds the criterion bench binary (bench profile) and measures through its chunked mode.
fn sluice(root: &Path, packets: u64) -> Result<Contender> {
    eprintln!("building the srtp bench (bench profile)...");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "bench",
            "-p",
            "sluice-benches",
            "--bench",
            "srtp",
            "--no-run",
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo bench --no-run")?;
    if !out.status.success() {
        bail!("building the srtp bench failed");
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "srtp")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo bench --no-run named no srtp executable")?;
    Ok(Contender {
        name: "sluice".into(),
        run: Box::new(move || {
            let out = Command::new(&exe)
                .env("SLUICE_SRTP_BENCH", packets.to_string())
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!("srtp bench: {}", String::from_utf8_lossy(&out.stderr));
            }
            parse(&String::from_utf8_lossy(&out.stdout), true)
        }),
        runs: Vec::new(),
    })
}

fn libsrtp(name: &str, bin: PathBuf, packets: u64) -> Contender {
    Contender {
        name: name.into(),
        run: Box::new(move || {
            let mut figures = Figures::new();
            for profile in PROFILES {
                let out = Command::new(&bin)
                    .args(["bench", profile, &packets.to_string(), &PAYLOAD.to_string()])
                    .output()
                    .with_context(|| format!("running {}", bin.display()))?;
                if !out.status.success() {
                    bail!(
                        "{} bench {profile}: {}",
                        bin.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                let line = format!("{profile} {}", String::from_utf8_lossy(&out.stdout));
                figures.extend(parse(&line, false)?);
            }
            Ok(figures)
        }),
        runs: Vec::new(),
    }
}

/// Parses "PROFILE protect_ns X unprotect_ns Y" lines.
fn parse(text: &str, all_profiles: bool) -> Result<Figures> {
    let mut figures = Figures::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [profile, "protect_ns", p, "unprotect_ns", u] = words[..] {
            figures.insert(profile.to_owned(), (p.parse()?, u.parse()?));
        }
    }
    if all_profiles && figures.len() != PROFILES.len() {
        bail!("expected a line per profile, got {text:?}");
    }
    Ok(figures)
}

enum Flavour<'a> {
    /// The system libsrtp2 (Debian's is built on NSS).
    Debian,
    /// libsrtp2 configured with --enable-openssl, from this source tree or Debian's source.
    OpenSsl(Option<&'a Path>),
}

fn harness_source(root: &Path) -> PathBuf {
    root.join("relay/tests/srtp_harness/harness.c")
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn build_harness(root: &Path, work: &Path, flavour: Flavour) -> Result<PathBuf> {
    let src = harness_source(root);
    let mut cmd = Command::new(cc());
    cmd.args(["-O2", "-o"]);
    let out = match flavour {
        Flavour::Debian => {
            let flags = Command::new("pkg-config")
                .args(["--cflags", "--libs", "libsrtp2"])
                .output()
                .context("running pkg-config (install pkg-config)")?;
            if !flags.status.success() {
                bail!("pkg-config finds no libsrtp2 (install libsrtp2-dev)");
            }
            let out = work.join("harness-debian");
            cmd.arg(&out).arg(&src);
            cmd.args(String::from_utf8(flags.stdout)?.split_whitespace());
            out
        }
        Flavour::OpenSsl(source) => {
            let lib = libsrtp_openssl(work, source)?;
            let out = work.join("harness-openssl");
            cmd.arg(&out)
                .arg(&src)
                .arg(format!("-I{}", lib.include.display()))
                .arg(&lib.archive)
                .arg("-lcrypto");
            out
        }
    };
    let status = cmd.status().context("running the C compiler")?;
    if !status.success() {
        bail!("compiling {} failed", src.display());
    }
    Ok(out)
}

struct StaticLibsrtp {
    archive: PathBuf,
    /// A directory holding srtp2/srtp.h.
    include: PathBuf,
}

/// libsrtp2.a configured with --enable-openssl, built once under `work`.
fn libsrtp_openssl(work: &Path, source: Option<&Path>) -> Result<StaticLibsrtp> {
    let build = work.join("libsrtp-openssl");
    let lib = StaticLibsrtp {
        archive: build.join("libsrtp2.a"),
        include: build.join("include"),
    };
    if lib.archive.exists() && lib.include.join("srtp2/srtp.h").exists() {
        return Ok(lib);
    }
    let source = match source {
        Some(s) => s.to_path_buf(),
        None => debian_source(work)?,
    };
    eprintln!(
        "building libsrtp2 on OpenSSL from {} (needs libssl-dev)...",
        source.display()
    );
    let _ = std::fs::remove_dir_all(&build);
    copy_tree(&source, &build)?;
    let configure = Command::new("sh")
        .current_dir(&build)
        .args(["./configure", "--enable-openssl"])
        .output()
        .context("running libsrtp's configure")?;
    if !configure.status.success() {
        bail!(
            "libsrtp configure --enable-openssl failed (is libssl-dev installed?): {}",
            tail(&configure.stdout, &configure.stderr)
        );
    }
    let make = Command::new("make")
        .current_dir(&build)
        .args(["-j2", "libsrtp2.a"])
        .output()
        .context("running make")?;
    if !make.status.success() {
        bail!(
            "building libsrtp2.a failed: {}",
            tail(&make.stdout, &make.stderr)
        );
    }
    std::fs::create_dir_all(lib.include.join("srtp2"))?;
    std::fs::copy(
        build.join("include/srtp.h"),
        lib.include.join("srtp2/srtp.h"),
    )?;
    Ok(lib)
}

fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("copying {} to {} failed", from.display(), to.display());
    }
    Ok(())
}

/// Debian's libsrtp2 source package, fetched with `apt-get source --download-only` through a
/// private apt configuration (deb-src line, lists and cache under `work`), and unpacked.
fn debian_source(work: &Path) -> Result<PathBuf> {
    let dir = work.join("debian-source");
    if let Some(tree) = unpacked(&dir)? {
        return Ok(tree);
    }
    let codename = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_owned))
        })
        .context("no VERSION_CODENAME in /etc/os-release: not Debian; pass --libsrtp-src")?;
    for sub in ["parts", "lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join("apt").join(sub))?;
    }
    std::fs::write(
        dir.join("apt/parts/src.sources"),
        format!(
            "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: {codename}\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )?;
    let apt = |args: &[&str]| -> Result<()> {
        let d = dir.join("apt");
        let out = Command::new("apt-get")
            .current_dir(&dir)
            .arg("-q")
            .arg("-o")
            .arg("Dir::Etc::SourceList=/dev/null")
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceParts={}",
                d.join("parts").display()
            ))
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", d.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", d.join("cache").display()))
            .args(args)
            .output()
            .context("running apt-get (Debian only; or pass --libsrtp-src)")?;
        if !out.status.success() {
            bail!(
                "apt-get {} failed: {}",
                args.join(" "),
                tail(&out.stdout, &out.stderr)
            );
        }
        Ok(())
    };
    eprintln!("fetching Debian's libsrtp2 source package...");
    apt(&["update"])?;
    apt(&["source", "--download-only", "libsrtp2"])?;
    let tarball = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libsrtp2_") && n.contains(".orig.tar"))
        })
        .context("apt-get source left no libsrtp2 .orig tarball")?;
    let status = Command::new("tar")
        .current_dir(&dir)
        .arg("xf")
        .arg(&tarball)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("unpacking {} failed", tarball.display());
    }
    unpacked(&dir)?.context("the libsrtp2 tarball held no libsrtp-* directory")
}

/// The libsrtp-* source directory under `dir`, if unpacked.
fn unpacked(dir: &Path) -> Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    Ok(std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.join("configure").exists()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libsrtp"))
        }))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn report(contenders: &[Contender], runs: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nSRTP, one 172-byte RTP packet (160-byte payload), one core; median of {runs} runs.\n\
         ns per packet (Mpackets/s); ratio = peer ns / sluice ns (above 1: sluice is faster)\n"
    );
    let _ = write!(s, "{:<24} {:<10}", "profile", "op");
    for (i, c) in contenders.iter().enumerate() {
        let _ = write!(s, " {:>22}", c.name);
        if i > 0 {
            let _ = write!(s, " {:>6}", "ratio");
        }
    }
    s.push('\n');
    for profile in PROFILES {
        for (op, pick) in [("protect", 0usize), ("unprotect", 1usize)] {
            let _ = write!(s, "{profile:<24} {op:<10}");
            let ns_of = |c: &Contender| -> Option<f64> {
                let xs: Vec<f64> = c
                    .runs
                    .iter()
                    .filter_map(|r| r.get(profile))
                    .map(|&(p, u)| if pick == 0 { p } else { u })
                    .collect();
                (!xs.is_empty()).then(|| median(xs))
            };
            let ours = ns_of(&contenders[0]);
            for (i, c) in contenders.iter().enumerate() {
                match ns_of(c) {
                    Some(ns) => {
                        let cell = format!("{ns:.0} ns ({:.2})", 1e3 / ns);
                        let _ = write!(s, " {cell:>22}");
                        if i > 0 {
                            let ratio =
                                ours.map_or(String::from("-"), |o| format!("{:.2}", ns / o));
                            let _ = write!(s, " {ratio:>6}");
                        }
                    }
                    None => {
                        let _ = write!(s, " {:>22}", "-");
                        if i > 0 {
                            let _ = write!(s, " {:>6}", "-");
                        }
                    }
                }
            }
            s.push('\n');
        }
    }
    s
}
