//! Child processes that cannot outlive the bench: killed on drop (SIGTERM, then SIGKILL), and
//! by the kernel if the bench itself dies (PR_SET_PDEATHSIG).

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub struct Proc {
    name: String,
    child: Child,
    /// Where its stderr goes, quoted in errors.
    log: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd`. Must be called from the main thread: the death signal fires when the
    /// spawning *thread* exits, and the main thread is the one that lives as long as the bench.
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<PathBuf>) -> Result<Self> {
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Errors, quoting the end of its log, if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of its log, formatted to append to an error message.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        if tail.is_empty() {
            format!("; its log {} is empty", path.display())
        } else {
            format!("; end of its log {}:\n{tail}", path.display())
        }
    }

    /// SIGTERM, up to 2 s to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet so cannot be reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lines from a child's stdout with a timeout, so a hung child cannot hang the bench. The
/// reader thread ends when the child's stdout closes, which killing the child guarantees.
pub struct Lines {
    rx: mpsc::Receiver<io::Result<String>>,
    what: String,
}

impl Lines {
    pub fn new(what: &str, out: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            rx,
            what: what.to_string(),
        }
    }

    pub fn next(&self, timeout: Duration) -> Result<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(line) => line.with_context(|| format!("reading from {}", self.what)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow!(
                "{} did not answer within {:.1} s",
                self.what,
                timeout.as_secs_f64()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(anyhow!("{} closed its output (exited?)", self.what))
            }
        }
    }
}
