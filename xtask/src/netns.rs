//! The network-namespace topology of `bench forward --netns`, and where each process runs.
//!
//! ```text
//!  caller ns                  relay ns                            callee ns
//!  sc0 10.201.1.2   <->   sr1 10.201.1.1                           (lo 10.201.9.9: bare target)
//!                         lo  10.201.0.1 (media address)
//!                         sr2 10.201.2.1              <->    se0 10.201.2.2 (MAC = sr1's)
//!  sc1 10.201.3.1   <------------------------------------>   se1 10.201.3.2   (direct path)
//! ```
//!
//! Every relay binds its media sockets on 10.201.0.1 (one address for both legs, as sluice and
//! rtpengine take one address per family). The direct link sc1-se1 bypasses the relay
//! namespace: latency probes sent over it are the baseline that "added latency" subtracts.
//!
//! The bare redirect program forwards frames untouched from sr1 to sr2. For such a frame to
//! reach a callee socket, the callee side must accept it as it is: se0 carries sr1's MAC, and
//! the callee namespace owns 10.201.9.9, the address the caller sends to in that run. The
//! relays never use either, so the other runs are unaffected.
//!
//! Traps (shared/MEASURED.md and relay/tests/xdp_netns.rs): forwarding is on in the relay ns
//! (bpf_fib_lookup needs it); GRO is on for every relay-path veth so that each has NAPI (an
//! XDP_REDIRECT into a veth is dropped unless its peer has NAPI, and threaded NAPI needs NAPI);
//! `tx off` on the sending veths so packets from sockets carry full checksums; namespaces are
//! entered with setns(2) on a dedicated thread; neighbours are static.
//!
//! CPU placement on a 2-CPU machine: the load generator (sender and receiver), the bench
//! itself and the NAPI threads of the harness-side veths (sc0, se0) run on CPU 0; the relay
//! process and the NAPI threads of the relay's veths (sr1, sr2) on CPU 1. Threaded NAPI
//! (`/sys/class/net/DEV/threaded`) moves each veth's receive work (XDP included) out of
//! softirq on whichever CPU happened to send into a kthread `napi/DEV-ID` of its own, whose
//! runtime /proc/PID/schedstat reports: that is how softirq work is both placed and counted.
//!
//! Teardown: namespaces are deleted on drop, by a signal thread on SIGINT/SIGTERM/SIGHUP
//! (`install_signal_cleanup`), and namespaces left by a bench that was SIGKILLed are deleted
//! at the next start (their owner pid is in the name). The plumbing (namespaces, veths,
//! setns, teardown) is the workspace's `sluice-netns`, shared with the tests; what is here is
//! this bench's topology, CPU placement and counters.

use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use sluice_netns::{Chain, ChainSpec, End, Link, ns_exec, run_in, sysctl};

pub use sluice_netns::{enter, in_ns, ns_path, with_ns};

/// Relay media address (on the relay namespace's lo).
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
pub const CALLER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
pub const R1_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
pub const R2_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
pub const CALLEE_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
pub const DIRECT_CALLER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 3, 1);
pub const DIRECT_CALLEE_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 3, 2);
/// Where the caller sends in the bare redirect run: owned by the callee namespace.
pub const BARE_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 9, 9);

pub const C0_MAC: &str = "02:00:c9:01:00:02";
pub const R1_MAC: &str = "02:00:c9:01:00:01";
const R2_MAC: &str = "02:00:c9:02:00:01";
/// se0 shares sr1's MAC: see the module comment (bare redirect).
const E0_MAC: &str = R1_MAC;
const C1_MAC: &str = "02:00:c9:03:00:01";
const E1_MAC: &str = "02:00:c9:03:00:02";

/// The CPU of the load generator, the bench and the harness-side NAPI threads.
pub const HARNESS_CPU: usize = 0;
/// The CPU of the relay process and the relay-side NAPI threads.
pub const RELAY_CPU: usize = 1;

/// How the bench's pinned threads are scheduled. On a machine shared with other work, a thread
/// pinned to a CPU at the normal policy waits behind whatever else runs there: measured here,
/// a NAPI thread pinned next to a compiler woke 1-2 ms late even at nice -20 (EEVDF lets the
/// running task finish its slice), which turned into ring overflows and millisecond latencies.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sched {
    /// SCHED_FIFO (default): processes (generator, relay) at priority 10, NAPI threads at 20,
    /// so that receive work preempts processes on its CPU as softirq does without threaded
    /// NAPI; other work on the machine cannot delay either. The kernel's RT throttling (95%
    /// per second) still leaves the rest of the machine some time.
    Fifo,
    /// SCHED_OTHER at nice -20, NAPI threads too.
    Nice,
}

const FIFO_PROCESS_PRIO: i32 = 10;
const FIFO_NAPI_PRIO: i32 = 20;
const NICE: i32 = -20;

impl Sched {
    pub fn describe(self) -> String {
        match self {
            Sched::Fifo => format!(
                "SCHED_FIFO: generator and relay processes priority {FIFO_PROCESS_PRIO}, NAPI threads {FIFO_NAPI_PRIO}"
            ),
            Sched::Nice => format!("SCHED_OTHER, nice {NICE}, processes and NAPI threads"),
        }
    }

    /// Applies to thread/process `pid` (0: the caller); `napi` picks the NAPI priority.
    /// Async-signal-safe (used between fork and exec).
    fn apply(self, pid: libc::pid_t, napi: bool) -> io::Result<()> {
        // SAFETY: plain system calls on a pid with a valid sched_param.
        let rc = unsafe {
            match self {
                Sched::Fifo => {
                    let p = libc::sched_param {
                        sched_priority: if napi {
                            FIFO_NAPI_PRIO
                        } else {
                            FIFO_PROCESS_PRIO
                        },
                    };
                    libc::sched_setscheduler(pid, libc::SCHED_FIFO, &p)
                }
                Sched::Nice => libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, NICE),
            }
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

const NS_PREFIX: &str = "sbx";

pub struct Devs {
    /// Relay side, towards the caller.
    pub r1: String,
    /// Relay side, towards the callee.
    pub r2: String,
    pub c0: String,
    pub e0: String,
    pub c1: String,
    pub e1: String,
}

pub struct Topology {
    pub caller: String,
    pub relay: String,
    pub callee: String,
    pub devs: Devs,
    /// Owns the namespaces: deletes them on drop.
    _chain: Chain,
}

/// Blocks SIGINT, SIGTERM and SIGHUP and deletes the live namespaces on any of them (see
/// [`sluice_netns::delete_on_signals`]); call it from main before any other thread exists.
pub fn install_signal_cleanup() -> Result<()> {
    sluice_netns::delete_on_signals("bench forward").context("starting the signal thread")
}

impl Topology {
    /// Builds the three namespaces and their links; everything is deleted again on drop (or on
    /// error half way).
    pub fn create() -> Result<Self> {
        if !sluice_netns::is_root() {
            bail!("--netns needs root (network namespaces, XDP, threaded NAPI)");
        }
        for name in sluice_netns::remove_stale(NS_PREFIX) {
            eprintln!("[bench forward] deleted namespace {name} left by an earlier bench");
        }
        let pid = std::process::id();
        let tag = pid % 100_000;
        let devs = Devs {
            r1: format!("sr1-{tag}"),
            r2: format!("sr2-{tag}"),
            c0: format!("sc0-{tag}"),
            e0: format!("se0-{tag}"),
            c1: format!("sc1-{tag}"),
            e1: format!("se1-{tag}"),
        };
        let cidr = |ip: Ipv4Addr| format!("{ip}/24");
        let (caller, r1, r2, callee) = (cidr(CALLER_IP), cidr(R1_IP), cidr(R2_IP), cidr(CALLEE_IP));
        // From here on, drop deletes whatever exists (on error half way too).
        let chain = Chain::create(&ChainSpec {
            names: ["c", "r", "e"].map(|role| format!("{NS_PREFIX}{pid}{role}")),
            caller: Link {
                dev: &devs.c0,
                mac: C0_MAC,
                addrs: &[&caller],
            },
            r1: Link {
                dev: &devs.r1,
                mac: R1_MAC,
                addrs: &[&r1],
            },
            r2: Link {
                dev: &devs.r2,
                mac: R2_MAC,
                addrs: &[&r2],
            },
            callee: Link {
                dev: &devs.e0,
                mac: E0_MAC,
                addrs: &[&callee],
            },
            // No IPv6: no router solicitations or MLD reports wandering into the XDP programs.
            ipv6: false,
        })
        .context("building the namespace topology")?;
        let topo = Self {
            caller: chain.caller.clone(),
            relay: chain.relay.clone(),
            callee: chain.callee.clone(),
            devs,
            _chain: chain,
        };
        topo.build().context("building the namespace topology")?;
        Ok(topo)
    }

    /// What this bench adds to the chain: the direct link, the media and bare addresses, and
    /// the callee side's acceptance of frames the bare program forwards untouched.
    fn build(&self) -> io::Result<()> {
        let (c, r, e) = (&self.caller, &self.relay, &self.callee);
        let d = &self.devs;
        let (direct_c, direct_e) = (
            format!("{DIRECT_CALLER_IP}/24"),
            format!("{DIRECT_CALLEE_IP}/24"),
        );
        sluice_netns::veth(
            End {
                ns: c,
                dev: &d.c1,
                mac: C1_MAC,
                addrs: &[&direct_c],
            },
            End {
                ns: e,
                dev: &d.e1,
                mac: E1_MAC,
                addrs: &[&direct_e],
            },
        )?;
        sluice_netns::addr_add(r, "lo", &format!("{RELAY_IP}/32"))?;
        sluice_netns::addr_add(e, "lo", &format!("{BARE_IP}/32"))?;
        // The bare run's frames come from the caller's subnet on se0; the direct probes on se1.
        for dev in ["all", "default", &d.e0, &d.e1] {
            sysctl(e, &format!("net.ipv4.conf.{dev}.rp_filter"), "0")?;
        }
        // NAPI on the relay side as well: threaded NAPI needs it (`threaded_napi`).
        for dev in [&d.r1, &d.r2] {
            run_in(r, "ethtool", &["-K", dev, "gro", "on"])?;
        }
        Ok(())
    }

    /// Turns threaded NAPI on (afresh) for the relay-side veths and pins their NAPI threads to
    /// the relay CPU, and the harness-side ones to the harness CPU. Call it after every XDP
    /// attach: attaching recreates a veth's NAPI. Returns the relay-side NAPI threads, whose
    /// runtime counts as the relay's.
    pub fn threaded_napi(&self, sched: Sched) -> Result<Vec<u32>> {
        let d = &self.devs;
        let mut relay_side = Vec::new();
        for (ns, dev, cpu, relay) in [
            (&self.relay, &d.r1, RELAY_CPU, true),
            (&self.relay, &d.r2, RELAY_CPU, true),
            (&self.caller, &d.c0, HARNESS_CPU, false),
            (&self.callee, &d.e0, HARNESS_CPU, false),
        ] {
            let path = format!("/sys/class/net/{dev}/threaded");
            ns_exec(
                ns,
                &["sh", "-c", &format!("echo 0 > {path} && echo 1 > {path}")],
            )?;
            let pids = napi_threads(dev)?;
            if pids.is_empty() {
                bail!("no NAPI thread for {dev} after turning threaded NAPI on");
            }
            for &pid in &pids {
                set_affinity(pid, cpu)
                    .with_context(|| format!("pinning NAPI thread {pid} of {dev} to CPU {cpu}"))?;
                sched
                    .apply(pid as libc::pid_t, true)
                    .with_context(|| format!("scheduling NAPI thread {pid} of {dev}"))?;
            }
            if relay {
                relay_side.extend(pids);
            }
        }
        Ok(relay_side)
    }

    /// Errors unless both relay-side veths carry an XDP program (the relay attached it).
    pub fn ensure_xdp_attached(&self) -> Result<()> {
        for dev in [&self.devs.r1, &self.devs.r2] {
            let out = Command::new("ip")
                .args(["-n", &self.relay, "link", "show", "dev", dev])
                .output()
                .context("running ip link show")?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.contains("xdp") {
                bail!(
                    "no XDP program on {dev} after the relay started: {}",
                    text.trim()
                );
            }
        }
        Ok(())
    }

    /// Frames the veth driver dropped on the way from the relay to the callee so far: sr2's
    /// tx drops (se0's ring full, skb path) plus its XDP xmit errors (the same for redirected
    /// frames). That ring is emptied by se0's NAPI thread on the harness CPU, so these drops
    /// can be the harness's as much as the relay's; the report shows them beside the loss.
    pub fn callee_ring_drops(&self) -> Result<u64> {
        veth_tx_drops(&self.relay, &self.devs.r2)
    }

    /// The same on the way in: frames the caller veth could not put into the relay veth's
    /// ring (emptied by the relay-side NAPI thread, so these are the relay's losses).
    pub fn relay_ring_drops(&self) -> Result<u64> {
        veth_tx_drops(&self.caller, &self.devs.c0)
    }
}

/// TX drops of veth `dev` in `ns`: XDP xmit errors plus the skb path's tx_dropped.
fn veth_tx_drops(ns: &str, dev: &str) -> Result<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-S", dev])
        .output()
        .context("running ethtool -S")?;
    let mut total = parse_xmit_errors(&String::from_utf8_lossy(&out.stdout));
    let out = Command::new("ip")
        .args(["-n", ns, "-s", "-s", "link", "show", "dev", dev])
        .output()
        .context("running ip -s link")?;
    total += parse_tx_dropped(&String::from_utf8_lossy(&out.stdout));
    Ok(total)
}

/// UDP receive errors (RcvbufErrors, InErrors counts them too) in the network namespace of
/// process `pid`, from /proc/PID/net/snmp: datagrams the relay's sockets had no room for.
pub fn udp_in_errors(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/snmp"))
        .with_context(|| format!("reading /proc/{pid}/net/snmp"))?;
    parse_snmp(&text, "Udp:", "InErrors").context("no Udp InErrors in /proc/net/snmp")
}

fn parse_snmp(text: &str, proto: &str, field: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(proto));
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = header.iter().position(|h| *h == field)?;
    values.get(i)?.parse().ok()
}

fn parse_xmit_errors(ethtool_s: &str) -> u64 {
    ethtool_s
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().ends_with("xdp_xmit_errors"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// The "dropped" column of the TX block of `ip -s -s link show`.
fn parse_tx_dropped(ip_s: &str) -> u64 {
    let mut lines = ip_s.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if l.starts_with("TX:") {
            let header: Vec<&str> = l.split_whitespace().skip(1).collect();
            let values: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
            if let Some(i) = header.iter().position(|h| *h == "dropped") {
                return values.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
    }
    0
}

/// The kthreads `napi/DEV-ID` of a device (comm is cut at 15 bytes; device names here are
/// unique per bench, so the prefix identifies them).
fn napi_threads(dev: &str) -> Result<Vec<u32>> {
    let mut prefix = format!("napi/{dev}-");
    prefix.truncate(15);
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.trim_end().starts_with(&prefix) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

fn cpu_set(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Pins a thread (or, for pid 0, the calling thread) to one CPU.
pub fn set_affinity(pid: u32, cpu: usize) -> io::Result<()> {
    let set = cpu_set(cpu);
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe {
        libc::sched_setaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The most open files a process started by this one can have: raises this process's limit
/// towards `want` (soft and hard; the hard limit only moves with CAP_SYS_RESOURCE, which a
/// container may lack) and returns what it got.
pub fn nofile_capacity(want: u64) -> u64 {
    let _ = raise_nofile(want);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max.min(want);
        // SAFETY: as above; lowering nothing, raising the soft limit up to the hard one.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    lim.rlim_cur.min(want)
}

/// Raises the calling process's open-file limit (soft and hard; root may raise the hard one).
pub fn raise_nofile(n: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur >= n {
            return Ok(());
        }
        lim.rlim_cur = n;
        lim.rlim_max = lim.rlim_max.max(n);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Where a child process runs: network namespace (entered with `ip netns exec`, which also
/// mounts the namespace's /sys), CPU, and open-file limit.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub netns: Option<String>,
    pub cpu: Option<usize>,
    pub nofile: Option<u64>,
    pub sched: Option<Sched>,
}

impl Placement {
    /// A Command for `program` placed as asked; add arguments to it as usual.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => sluice_netns::ns_exec_command(ns, program),
            None => Command::new(program),
        };
        let cpu = self.cpu.map(cpu_set);
        let nofile = self.nofile;
        let sched = self.sched;
        // SAFETY: only async-signal-safe system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(set) = &cpu
                    && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if let Some(s) = sched {
                    s.apply(0, false)?;
                }
                if let Some(n) = nofile {
                    let mut lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    // Without CAP_SYS_RESOURCE the hard limit stays: take all of it.
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        lim.rlim_cur = lim.rlim_max.min(n);
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                }
                Ok(())
            });
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_wraps_the_command() {
        let p = Placement {
            netns: Some("x".into()),
            cpu: Some(1),
            nofile: Some(1000),
            sched: Some(Sched::Nice),
        };
        let cmd = p.command(Path::new("/bin/true"));
        assert_eq!(cmd.get_program(), "ip");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["netns", "exec", "x", "/bin/true"]);
        let plain = Placement::default().command(Path::new("/bin/true"));
        assert_eq!(plain.get_program(), "/bin/true");
    }

    #[test]
    fn counters_parse() {
        let ethtool = "NIC statistics:\n     peer_ifindex: 2\n     tx_queue_0_xdp_xmit: 10\n     tx_queue_0_xdp_xmit_errors: 7\n";
        assert_eq!(parse_xmit_errors(ethtool), 7);
        let ip_s = "2: sr2@if2: <UP>\n    RX:  bytes packets errors dropped  missed   mcast\n           1       2      0       0       0       0\n    TX:  bytes packets errors dropped carrier collsns\n           3       4      0       5       0       0\n";
        assert_eq!(parse_tx_dropped(ip_s), 5);
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 3 9 3\n";
        assert_eq!(parse_snmp(snmp, "Udp:", "InErrors"), Some(3));
        assert_eq!(parse_snmp(snmp, "Udp:", "Nope"), None);
    }

    #[test]
    fn napi_prefix_is_cut_like_comm() {
        let mut prefix = format!("napi/{}-", "sr1-12345");
        prefix.truncate(15);
        assert_eq!(prefix, "napi/sr1-12345-");
    }
}
