//! Host load limits (`--max-load`, `--max-cpu`): new calls are refused while the machine is
//! busier than the operator allows, so that a set of relays behind Kamailio or OpenSIPS sheds
//! new calls to the next node before the calls already here start losing packets.
//!
//! The readings come from `/proc` once a second on a thread of their own ([`spawn_sampler`]);
//! a request only compares two numbers. Parsing and the arithmetic are plain functions, tested
//! on recorded `/proc` text.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The limits; `None` = not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadLimits {
    /// 1-minute load average (`/proc/loadavg`), as rtpengine's `--max-load`.
    pub max_load: Option<f64>,
    /// Busy share of all CPUs over the last sample, in percent (0-100), as rtpengine's
    /// `--max-cpu`.
    pub max_cpu: Option<f64>,
}

impl LoadLimits {
    pub fn any(&self) -> bool {
        self.max_load.is_some() || self.max_cpu.is_some()
    }
}

/// Which limit refused a call, with the reading and the limit.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Overload {
    #[error("CPU usage limit exceeded ({used:.1}% of all CPUs busy, limit {max}%)")]
    Cpu { used: f64, max: f64 },
    #[error("Load limit exceeded (1-minute load average {load:.2}, limit {max})")]
    Load { load: f64, max: f64 },
}

/// The latest readings, written by the sampler and read by every request. Stored as f64 bits;
/// NaN until the first sample, which no limit refuses.
#[derive(Debug)]
pub struct LoadGauge {
    load: AtomicU64,
    cpu: AtomicU64,
}

impl Default for LoadGauge {
    fn default() -> Self {
        LoadGauge {
            load: AtomicU64::new(f64::NAN.to_bits()),
            cpu: AtomicU64::new(f64::NAN.to_bits()),
        }
    }
}

impl LoadGauge {
    pub fn set(&self, load: Option<f64>, cpu_percent: Option<f64>) {
        if let Some(l) = load {
            self.load.store(l.to_bits(), Relaxed);
        }
        if let Some(c) = cpu_percent {
            self.cpu.store(c.to_bits(), Relaxed);
        }
    }

    /// (1-minute load average, CPU percent); NaN when not sampled yet.
    pub fn readings(&self) -> (f64, f64) {
        (
            f64::from_bits(self.load.load(Relaxed)),
            f64::from_bits(self.cpu.load(Relaxed)),
        )
    }

    /// Whether a new call may start under `limits`. A limit is exceeded strictly above it, as
    /// rtpengine's; a reading not taken yet refuses nothing.
    pub fn check(&self, limits: &LoadLimits) -> Result<(), Overload> {
        let (load, cpu) = self.readings();
        if let Some(max) = limits.max_cpu
            && cpu > max
        {
            return Err(Overload::Cpu { used: cpu, max });
        }
        if let Some(max) = limits.max_load
            && load > max
        {
            return Err(Overload::Load { load, max });
        }
        Ok(())
    }
}

/// The 1-minute load average: the first field of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// The aggregate `cpu` line of `/proc/stat` (proc(5)): jiffies spent busy and in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_ascii_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is
        // already inside user and nice, so it is left out of the total.
        if v.len() < 4 {
            return None;
        }
        let total: u64 = v.iter().take(8).sum();
        let idle = v[3] + v.get(4).copied().unwrap_or(0);
        Some(CpuTimes {
            busy: total - idle,
            total,
        })
    }

    /// Percent of all CPUs busy between `earlier` and `self`; None when no time passed.
    pub fn percent_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| 100.0 * busy as f64 / total as f64)
    }
}

/// How often the sampler reads `/proc`.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Reads `/proc/loadavg` and `/proc/stat` every [`SAMPLE_EVERY`] into `gauge` until `stop`.
/// Logs once when a limit starts refusing calls and once when it stops.
pub fn spawn_sampler(
    gauge: Arc<LoadGauge>,
    limits: LoadLimits,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sluice-load".into())
        .spawn(move || {
            let read = |p: &str| std::fs::read_to_string(p).ok();
            let mut last = read("/proc/stat").as_deref().and_then(CpuTimes::parse);
            let mut refusing = false;
            while !stop.load(Relaxed) {
                std::thread::sleep(SAMPLE_EVERY);
                let now = read("/proc/stat").as_deref().and_then(CpuTimes::parse);
                let cpu = match (now, last) {
                    (Some(n), Some(l)) => n.percent_since(&l),
                    _ => None,
                };
                last = now.or(last);
                gauge.set(
                    read("/proc/loadavg").as_deref().and_then(parse_loadavg),
                    cpu,
                );
                match gauge.check(&limits) {
                    Err(why) if !refusing => {
                        refusing = true;
                        tracing::warn!(%why, "refusing new calls until the load drops");
                    }
                    Ok(()) if refusing => {
                        refusing = false;
                        let (load, cpu) = gauge.readings();
                        tracing::info!(
                            load,
                            cpu_percent = cpu,
                            "load back under the limits; taking new calls"
                        );
                    }
                    _ => {}
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded on this project's 2-vCPU test machine.
    const STAT_A: &str = "cpu  2255 34 2290 22625563 6290 127 456 0 0 0\n\
                          cpu0 1132 34 1441 11311521 3099 63 178 0 0 0\n\
                          intr 114930548 129 9 0 1 1 0 5 0 1 1 0 0 0\n";
    const STAT_B: &str = "cpu  2355 34 2390 22625763 6290 127 456 0 0 0\n";

    #[test]
    fn cpu_percent_is_the_busy_share_of_the_interval() {
        let (a, b) = (
            CpuTimes::parse(STAT_A).unwrap(),
            CpuTimes::parse(STAT_B).unwrap(),
        );
        assert_eq!(a.total, 2255 + 34 + 2290 + 22625563 + 6290 + 127 + 456);
        assert_eq!(a.busy, a.total - 22625563 - 6290);
        // 200 busy jiffies of 400.
        assert_eq!(b.percent_since(&a), Some(50.0));
        assert_eq!(a.percent_since(&a), None, "no time passed");
        assert_eq!(a.percent_since(&b), None, "counters never go back");
    }

    #[test]
    fn malformed_proc_text_gives_no_reading() {
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4\n"), None, "no aggregate line");
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3\n"), None);
        assert_eq!(parse_loadavg("0.42 0.30 0.25 1/123 4567\n"), Some(0.42));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("high 1 2"), None);
    }

    #[test]
    fn limits_refuse_strictly_above_and_never_before_the_first_sample() {
        let g = LoadGauge::default();
        let both = LoadLimits {
            max_load: Some(2.0),
            max_cpu: Some(80.0),
        };
        assert_eq!(g.check(&both), Ok(()), "nothing sampled yet");
        g.set(Some(2.0), Some(80.0));
        assert_eq!(g.check(&both), Ok(()), "at the limit is allowed");
        g.set(Some(2.5), None);
        assert_eq!(
            g.check(&both),
            Err(Overload::Load {
                load: 2.5,
                max: 2.0
            })
        );
        g.set(None, Some(93.0));
        assert_eq!(
            g.check(&both),
            Err(Overload::Cpu {
                used: 93.0,
                max: 80.0
            }),
            "CPU is named first"
        );
        assert_eq!(g.check(&LoadLimits::default()), Ok(()), "no limits");
        assert!(
            Overload::Cpu {
                used: 93.0,
                max: 80.0
            }
            .to_string()
            .starts_with("CPU usage limit exceeded")
        );
    }
}
