//! The load generator's XDP sender for --netns ladder steps (xtask/bpf/gen.c): BPF_PROG_RUN in
//! live-frames mode turns a template frame into each call's next packet and redirects it into
//! the caller veth, so that the relay's veth receives xdp_frames as from a NIC driver, and the
//! harness CPU is not what limits the XDP paths. Warm-up and latency probes still use sockets.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, MapData};

/// Must match GEN_MAX_CALLS in gen.c.
pub const MAX_CALLS: usize = 16384;
const RTP_LEN: usize = crate::packet::PACKET_LEN;
const UDP_LEN: usize = 8 + RTP_LEN;
const FRAME_LEN: usize = 14 + 20 + UDP_LEN;
const HDR_LEN: usize = 14 + 20 + 8;
/// BPF_PROG_TEST_RUN in enum bpf_cmd.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct Cfg {
    tx_ifindex: u32,
    calls: u32,
    next_call: u32,
    step: u32,
    pseudo: u32,
    max_burst: u32,
    burst: u32,
    pad: u32,
    start_ns: u64,
    rate: u64,
    planned: u64,
    sent: u64,
    skipped: u64,
    min_gap_ns: u64,
    last_group_ns: u64,
    /// Ethernet + IPv4 + UDP header (HDR_LEN bytes used).
    hdr: [u8; 48],
}

impl Default for Cfg {
    fn default() -> Self {
        // SAFETY: all-zero is a valid Cfg (integers and bytes).
        unsafe { std::mem::zeroed() }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Call {
    dport: u16, // network byte order
    pad: u16,
    counter: u32,
}

// SAFETY: plain #[repr(C)] integers without padding; any bit pattern is valid.
unsafe impl aya::Pod for Cfg {}
// SAFETY: as above.
unsafe impl aya::Pod for Call {}

/// The BPF_PROG_TEST_RUN part of union bpf_attr (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

pub struct Gen {
    /// Holds the program (and the maps).
    ebpf: aya::Ebpf,
    cfg_map: Array<MapData, Cfg>,
    calls_map: Array<MapData, Call>,
    cfg: Cfg,
    template: Vec<u8>,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    caller: SocketAddrV4,
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC address {s:?}"))?;
    parts
        .try_into()
        .map_err(|_| anyhow!("bad MAC address {s:?}"))
}

impl Gen {
    /// Loads `object`; frames will leave through `tx_ifindex` (of the calling thread's
    /// namespace, which must also be the namespace `send` runs in) from `caller`, with these
    /// Ethernet addresses.
    pub fn load(
        object: &Path,
        tx_ifindex: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        caller: SocketAddrV4,
    ) -> Result<Self> {
        use aya::programs::Xdp;
        let bytes =
            std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
        let mut ebpf = aya::Ebpf::load(&bytes).context("loading the generator object")?;
        let take = |ebpf: &mut aya::Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the generator object"))
        };
        let cfg_map = Array::try_from(take(&mut ebpf, "gen_cfg")?)?;
        let calls_map = Array::try_from(take(&mut ebpf, "gen_calls")?)?;
        let prog: &mut Xdp = ebpf
            .program_mut("gen")
            .ok_or_else(|| anyhow!("program gen missing"))?
            .try_into()?;
        prog.load()
            .context("loading the generator program (verifier)")?;
        install_alarm_handler()?;
        Ok(Self {
            ebpf,
            cfg_map,
            calls_map,
            cfg: Cfg {
                tx_ifindex,
                ..Default::default()
            },
            template: Vec::new(),
            src_mac,
            dst_mac,
            caller,
        })
    }

    fn prog_fd(&self) -> Result<RawFd> {
        let prog: &aya::programs::Xdp = self
            .ebpf
            .program("gen")
            .ok_or_else(|| anyhow!("program gen missing"))?
            .try_into()?;
        Ok(prog.fd()?.as_fd().as_raw_fd())
    }

    /// Per call, where its packets go (one address for all; ports per call).
    pub fn targets(&mut self, dests: &[SocketAddrV4]) -> Result<()> {
        let Some(first) = dests.first() else {
            bail!("no targets");
        };
        if dests.len() > MAX_CALLS || dests.iter().any(|d| d.ip() != first.ip()) {
            bail!("the XDP generator sends to one address and at most {MAX_CALLS} calls");
        }
        self.template = template(self.src_mac, self.dst_mac, self.caller, *first.ip());
        self.cfg.hdr[..HDR_LEN].copy_from_slice(&self.template[..HDR_LEN]);
        self.cfg.pseudo = pseudo_sum(*self.caller.ip(), *first.ip());
        self.cfg.calls = dests.len() as u32;
        for (i, d) in dests.iter().enumerate() {
            self.calls_map.set(
                i as u32,
                Call {
                    dport: d.port().to_be(),
                    pad: 0,
                    counter: 0,
                },
                0,
            )?;
        }
        Ok(())
    }

    /// Makes the program's per-call counters (RTP sequence numbers) `counters` (call order),
    /// or, with `read_back`, stores the program's counters into `counters`: the generator's
    /// packets continue each call's stream where the socket sender left it (an SRTP relay
    /// refuses to protect sequence numbers it has already used).
    pub fn sync_counters(&mut self, counters: &mut [u32], read_back: bool) -> Result<()> {
        for (i, c) in counters.iter_mut().enumerate() {
            let mut call = self.calls_map.get(&(i as u32), 0)?;
            if read_back {
                *c = call.counter;
            } else {
                call.counter = *c;
                self.calls_map.set(i as u32, call, 0)?;
            }
        }
        Ok(())
    }

    /// One step: `rate` packets/s for `secs` in groups of `burst` packets, step id `step`;
    /// after a delay it owes at most `max_burst` packets and catches up at twice the rate.
    /// Returns (sent, skipped). Runs the program in one BPF_PROG_RUN call that
    /// a timer signal ends, busy on this CPU for the whole step; the calling thread is moved to
    /// SCHED_OTHER for that time (a SCHED_FIFO thread busy for a second would be throttled by
    /// the kernel, and with it every real-time thread on the CPU, the callee's NAPI included).
    pub fn run(
        &mut self,
        rate: u32,
        secs: f64,
        step: u32,
        burst: u32,
        max_burst: u32,
    ) -> Result<(u64, u64)> {
        if self.template.is_empty() {
            bail!("generator run before targets");
        }
        let start = crate::sys::monotonic_ns() + 200_000;
        self.cfg = Cfg {
            step,
            next_call: 0,
            max_burst,
            burst,
            start_ns: start,
            rate: rate as u64,
            planned: (rate as f64 * secs) as u64,
            sent: 0,
            skipped: 0,
            // Catching up at twice the rate at most.
            min_gap_ns: burst.max(1) as u64 * 1_000_000_000 / rate.max(1) as u64 / 2,
            last_group_ns: 0,
            ..self.cfg
        };
        self.cfg_map.set(0, self.cfg, 0)?;
        let normal = NormalPolicy::enter()?;
        // Ends the run: a little after the last packet is due.
        arm_alarm(secs + 0.02)?;
        let result = self.prog_run(u32::MAX, 0);
        arm_alarm(0.0)?;
        drop(normal);
        match result {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e).context("BPF_PROG_RUN (live frames)"),
        }
        let cfg = self.cfg_map.get(&0, 0)?;
        Ok((cfg.sent, cfg.skipped))
    }

    /// BPF_PROG_RUN for `n` frames, `batch` per kernel batch (0: default); returns the
    /// kernel's average duration per frame in ns.
    fn prog_run(&self, n: u32, batch: u32) -> std::io::Result<u32> {
        let mut attr = TestRunAttr {
            prog_fd: self.prog_fd().map_err(std::io::Error::other)? as u32,
            data_size_in: self.template.len() as u32,
            data_in: self.template.as_ptr() as u64,
            repeat: n,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: batch,
            ..Default::default()
        };
        // `template` outlives the call.
        test_run(&mut attr)?;
        Ok(attr.duration)
    }
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// SIGALRM interrupts the run (no SA_RESTART): BPF_PROG_RUN checks for pending signals
/// between batches and returns EINTR.
fn install_alarm_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()) != 0 {
            bail!("sigaction(SIGALRM): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A one-shot ITIMER_REAL in `secs` (0: disarm).
fn arm_alarm(secs: f64) -> Result<()> {
    let it = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: secs as libc::time_t,
            tv_usec: (secs.fract() * 1e6) as libc::suseconds_t,
        },
    };
    // SAFETY: a valid itimerval; the old value is not asked for.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) } != 0 {
        bail!("setitimer: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread at SCHED_OTHER, nice -20, while this lives; its policy before comes
/// back on drop.
struct NormalPolicy {
    policy: libc::c_int,
    param: libc::sched_param,
}

impl NormalPolicy {
    fn enter() -> Result<Self> {
        // SAFETY: plain system calls on the calling thread with valid sched_param structs.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param: libc::sched_param = std::mem::zeroed();
            libc::sched_getparam(0, &mut param);
            let normal = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) != 0 {
                bail!("sched_setscheduler: {}", std::io::Error::last_os_error());
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, -20);
            Ok(Self { policy, param })
        }
    }
}

impl Drop for NormalPolicy {
    fn drop(&mut self) {
        // SAFETY: restores what `enter` read.
        unsafe { libc::sched_setscheduler(0, self.policy, &self.param) };
    }
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The UDP pseudo header's sum as csum_partial() would leave it: 16-bit words read in memory
/// (little-endian) order, so that the program's bpf_csum_diff continues it.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
    let mut ph = Vec::with_capacity(12);
    ph.extend_from_slice(&src.octets());
    ph.extend_from_slice(&dst.octets());
    ph.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    ph.extend_from_slice(&(UDP_LEN as u16).to_be_bytes());
    ph.chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
        .sum()
}

/// Ethernet + IPv4 (checksummed) + UDP (ports and checksum filled per packet) + an RTP packet
/// of the benchmark (call 0, counter 0: header and pattern; per-packet fields are rewritten).
fn template(src_mac: [u8; 6], dst_mac: [u8; 6], caller: SocketAddrV4, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + UDP_LEN) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = libc::IPPROTO_UDP as u8;
    ip[12..16].copy_from_slice(&caller.ip().octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&caller.port().to_be_bytes());
    f.extend_from_slice(&[0, 0]); // destination port: per packet
    f.extend_from_slice(&(UDP_LEN as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // checksum: per packet
    let mut rtp = [0u8; RTP_LEN];
    crate::packet::write(
        &mut rtp,
        &crate::packet::Stamp {
            sent_ns: 0,
            step: 0,
            call: 0,
            counter: 0,
        },
    );
    f.extend_from_slice(&rtp);
    f
}

/// BPF_PROG_TEST_RUN with `attr`, whose data pointers must stay valid for the call. The kernel
/// writes its results (`retval`, `duration`) back into `attr`.
fn test_run(attr: &mut TestRunAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, writable BPF_PROG_TEST_RUN attribute block of the size
    // passed; the caller keeps the buffers it points to alive.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Why this kernel refuses BPF_PROG_RUN in live-frames mode, if it does (6.18.44-fc-v1300
/// answers EPERM even to root; 6.18.44-fc-v669 allowed it). Probed with a two-instruction XDP
/// program (`return XDP_DROP`) run once on a zeroed 64-byte frame, so that the bench can fall
/// back to its socket harness with one line instead of failing every step.
pub fn live_frames_refused() -> Option<String> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    #[repr(C)]
    #[derive(Default)]
    struct LoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    // r0 = 1 (XDP_DROP); exit.
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let load = LoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: a valid BPF_PROG_LOAD attribute block of the size passed; the instructions and
    // the license outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const LoadAttr,
            std::mem::size_of::<LoadAttr>() as u32,
        )
    };
    if fd < 0 {
        return Some(format!(
            "loading an XDP program failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
    let frame = [0u8; 64];
    let mut attr = TestRunAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    // `frame` outlives the call.
    test_run(&mut attr)
        .err()
        .map(|e| format!("this kernel refuses BPF_PROG_RUN in live-frames mode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum the program computes (pseudo seed + csum_partial over the datagram, folded,
    /// stored in memory order) equals the textbook one.
    #[test]
    fn program_checksum_matches_rfc768() {
        let caller = SocketAddrV4::new(Ipv4Addr::new(10, 201, 1, 2), 40000);
        let dst = Ipv4Addr::new(10, 201, 0, 1);
        let mut f = template([2; 6], [4; 6], caller, dst);
        f[36..38].copy_from_slice(&20000u16.to_be_bytes());
        // What the program does, with little-endian word sums standing in for csum_partial.
        let udp = &f[34..];
        let mut s = pseudo_sum(*caller.ip(), dst);
        s += udp
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .sum::<u32>();
        let stored = (!fold(s)).to_le_bytes();
        // Textbook: one's complement sum of big-endian words, pseudo header included.
        let mut ph = Vec::new();
        ph.extend_from_slice(&caller.ip().octets());
        ph.extend_from_slice(&dst.octets());
        ph.extend_from_slice(&[0, 17]);
        ph.extend_from_slice(&(UDP_LEN as u16).to_be_bytes());
        let textbook = !fold(sum16(&ph) + sum16(udp));
        assert_eq!(stored, textbook.to_be_bytes());
        // And the IPv4 header checksum verifies.
        assert_eq!(fold(sum16(&f[14..34])), 0xffff);
        assert_eq!(f.len(), FRAME_LEN);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:00:c9:01:00:01").unwrap(),
            [2, 0, 0xc9, 1, 0, 1]
        );
        assert!(parse_mac("02:00").is_err());
    }
}
