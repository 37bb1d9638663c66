//! The bare XDP redirect of `bench forward --netns`: the machine's limit for forwarding a
//! packet from one veth to another. xtask/bpf/bare_redirect.c is compiled with clang at bench
//! time and loaded with aya by `xtask bare-xdp`, a process of its own started in the relay
//! namespace (so that it is placed and stopped like any relay, and its links die with it).

use std::io::{self, BufRead, Write};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::child::{Lines, Proc};
use crate::netns::{BARE_IP, Placement};
use crate::relays::{CallDests, Relay};

const PROGRAM: &str = "bare_redirect";
const MAP: &str = "bare_ports";
pub const SOURCE: &str = "bare_redirect.c";
/// The load generator's XDP receiver (sink.rs) and sender (xdpgen.rs).
pub const SINK_SOURCE: &str = "sink.c";
pub const GEN_SOURCE: &str = "gen.c";
const STARTUP: Duration = Duration::from_secs(10);

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf")
}

/// Compiles xtask/bpf/`source` into `out_dir`; returns the object's path.
pub fn compile(source: &str, out_dir: &Path) -> Result<PathBuf> {
    let clang = ["clang-19", "clang"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            anyhow!("clang-19 (or clang) not found: `apt-get install clang-19 libbpf-dev`")
        })?;
    let src = source_dir().join(source);
    let out = out_dir.join(Path::new(source).with_extension("o"));
    let mut cmd = Command::new(clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"]);
    for inc in ["/usr/include", "/usr/include/x86_64-linux-gnu"] {
        if Path::new(inc).is_dir() {
            cmd.arg("-I").arg(inc);
        }
    }
    cmd.arg("-c").arg(&src).arg("-o").arg(&out);
    let o = cmd.output().with_context(|| format!("running {clang}"))?;
    if !o.status.success() {
        bail!(
            "{clang} failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

/// `xtask bare-xdp`: loads the object, attaches it natively to both interfaces, points each at
/// the other in the devmap, prints one line, and holds everything until stdin closes.
pub fn run(object: &Path, a: &str, b: &str) -> Result<()> {
    use aya::maps::DevMapHash;
    use aya::programs::{Xdp, XdpMode};
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let mut ebpf = aya::Ebpf::load(&bytes).context("loading the bare redirect object")?;
    let index = |name: &str| -> Result<u32> {
        let c = std::ffi::CString::new(name)?;
        // SAFETY: a valid NUL-terminated string.
        match unsafe { libc::if_nametoindex(c.as_ptr()) } {
            0 => bail!("no interface {name} here: {}", io::Error::last_os_error()),
            i => Ok(i),
        }
    };
    let (ia, ib) = (index(a)?, index(b)?);
    {
        let mut ports: DevMapHash<_> = ebpf
            .map_mut(MAP)
            .ok_or_else(|| anyhow!("map {MAP} missing"))?
            .try_into()?;
        ports.insert(ia, ib, None, 0).context("devmap insert")?;
        ports.insert(ib, ia, None, 0).context("devmap insert")?;
    }
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| anyhow!("program {PROGRAM} missing"))?
        .try_into()?;
    prog.load().context("loading the program (verifier)")?;
    for iface in [a, b] {
        prog.attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching natively to {iface}"))?;
    }
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    // Until the bench closes our stdin (or dies, which closes it too).
    let mut line = String::new();
    while io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    drop(ebpf); // detaches
    Ok(())
}

/// The bare redirect as a relay of the bench: the caller sends to the callee's own port on
/// BARE_IP, the frame crosses the relay namespace untouched.
pub struct Bare {
    /// Held open: closing it is what tells the loader to detach and exit.
    _stdin: ChildStdin,
    proc: Proc,
    cmdline: String,
}

impl Bare {
    pub fn start(
        exe: &Path,
        object: &Path,
        ifaces: [&str; 2],
        placement: &Placement,
        log: &Path,
    ) -> Result<Self> {
        let mut cmd = placement.command(exe);
        cmd.arg("bare-xdp")
            .arg("--object")
            .arg(object)
            .args(["--iface", ifaces[0], "--iface", ifaces[1]])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(log)
                    .with_context(|| format!("creating {}", log.display()))?,
            );
        let cmdline = crate::relays::describe(&cmd);
        let mut proc = Proc::spawn("bare redirect loader", &mut cmd, Some(log.to_path_buf()))?;
        let child = proc.child_mut();
        let stdin = child.stdin.take().context("loader stdin")?;
        let lines = Lines::new(
            "bare redirect loader",
            child.stdout.take().context("loader stdout")?,
        );
        let line = lines
            .next(STARTUP)
            .map_err(|e| anyhow!("{e}{}", proc.log_tail()))?;
        if line.trim() != "ready" {
            bail!("bare redirect loader said {line:?}{}", proc.log_tail());
        }
        Ok(Self {
            _stdin: stdin,
            proc,
            cmdline,
        })
    }
}

impl Relay for Bare {
    fn name(&self) -> &'static str {
        "bare-redirect"
    }

    fn command_line(&self) -> String {
        self.cmdline.clone()
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn setup(&mut self, _: SocketAddrV4, callees: &[SocketAddrV4]) -> Result<Vec<CallDests>> {
        Ok(callees
            .iter()
            .map(|c| CallDests {
                a: SocketAddrV4::new(BARE_IP, c.port()),
                b: None,
                callee_key: None,
            })
            .collect())
    }

    fn teardown(&mut self) -> Result<()> {
        Ok(())
    }

    fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_sources_are_where_compile_looks() {
        assert!(source_dir().join(SOURCE).is_file());
        assert!(source_dir().join(SINK_SOURCE).is_file());
        assert!(source_dir().join(GEN_SOURCE).is_file());
    }
}
