//! CPU time of a whole process, all threads, in nanoseconds.
//!
//! Read from `/proc/PID/task/*/schedstat` (on-CPU ns per thread, exact) rather than the
//! utime+stime of `/proc/PID/stat`, which counts in 10 ms ticks and under-counts short bursts on
//! this VM (shared/MEASURED.md). Falls back to `/proc/PID/stat` where schedstat is missing
//! (kernels without CONFIG_SCHED_INFO).

use std::fs;

use anyhow::{Context, Result, bail};

pub fn process_cpu_ns(pid: u32) -> Result<u64> {
    match schedstat_ns(pid) {
        Ok(ns) => Ok(ns),
        Err(_) => stat_ns(pid),
    }
}

fn schedstat_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    let mut threads = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        // A thread can exit between the listing and the read; its time is gone either way.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total += parse_schedstat(&text).with_context(|| format!("parsing {}", path.display()))?;
        threads += 1;
    }
    if threads == 0 {
        bail!("process {pid} has no readable thread schedstat");
    }
    Ok(total)
}

fn parse_schedstat(text: &str) -> Result<u64> {
    let first = text.split_whitespace().next().context("empty schedstat")?;
    Ok(first.parse()?)
}

fn stat_ns(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_ticks(&text).with_context(|| format!("parsing {path}"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// utime + stime from /proc/PID/stat. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its last ')'.
fn parse_stat_ticks(text: &str) -> Result<u64> {
    let rest = &text[text.rfind(')').context("no ')' in stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = f.get(11).context("stat too short")?.parse()?;
    let stime: u64 = f.get(12).context("stat too short")?.parse()?;
    Ok(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats() {
        assert_eq!(parse_schedstat("123456 789 10\n").unwrap(), 123456);
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 10);
    }

    #[test]
    fn own_process_accumulates_cpu() {
        let pid = std::process::id();
        let t0 = process_cpu_ns(pid).unwrap();
        let mut x = 0u64;
        // black_box per iteration: in a release build the loop would otherwise fold away.
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
        assert!(process_cpu_ns(pid).unwrap() > t0);
    }
}
