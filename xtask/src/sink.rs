//! The load generator's XDP receiver for --netns ladder steps (xtask/bpf/sink.c): counts and
//! drops the benchmark's packets on the callee veth, so that the harness CPU is not the first
//! thing to run out at the rates the XDP paths reach. Loaded and attached by the load generator
//! itself (its links die with it).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, MapData, PerCpuArray};

/// Must match SINK_MAX_CALLS in sink.c.
pub const MAX_CALLS: usize = 16384;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Cfg {
    on: u32,
    step: u32,
    /// Must match sink.c: SRTP packets (10 bytes longer, only the clear header checked).
    srtp: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Count {
    pub received: u64,
    pub mangled: u64,
    pub late: u64,
}

// SAFETY: plain #[repr(C)] integers, no padding, any bit pattern valid.
unsafe impl aya::Pod for Cfg {}
// SAFETY: as above.
unsafe impl aya::Pod for Count {}

pub struct Sink {
    /// Holds the program and its link.
    _ebpf: aya::Ebpf,
    cfg: Array<MapData, Cfg>,
    counts: PerCpuArray<MapData, Count>,
    total: PerCpuArray<MapData, u64>,
    /// Per-call counts at the start of the step running now.
    base: Vec<Count>,
    /// Expect SRTP (bench forward --srtp).
    pub srtp: bool,
}

impl Sink {
    /// Loads `object`, marks `ports` (one per call, call order) and attaches natively to
    /// `iface` of the calling thread's network namespace.
    pub fn attach(object: &Path, iface: &str, ports: &[u16]) -> Result<Self> {
        use aya::programs::{Xdp, XdpMode};
        if ports.len() > MAX_CALLS {
            bail!("the sink counts at most {MAX_CALLS} calls");
        }
        let bytes =
            std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
        let mut ebpf = aya::Ebpf::load(&bytes).context("loading the sink object")?;
        let take = |ebpf: &mut aya::Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the sink object"))
        };
        let mut port_map: Array<MapData, u32> = Array::try_from(take(&mut ebpf, "sink_ports")?)?;
        for (call, &port) in ports.iter().enumerate() {
            port_map
                .set(port as u32, call as u32 + 1, 0)
                .context("filling sink_ports")?;
        }
        let cfg = Array::try_from(take(&mut ebpf, "sink_cfg")?)?;
        let counts = PerCpuArray::try_from(take(&mut ebpf, "sink_counts")?)?;
        let total = PerCpuArray::try_from(take(&mut ebpf, "sink_total")?)?;
        let prog: &mut Xdp = ebpf
            .program_mut("sink")
            .ok_or_else(|| anyhow!("program sink missing"))?
            .try_into()?;
        prog.load().context("loading the sink program (verifier)")?;
        prog.attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching the sink natively to {iface}"))?;
        drop(port_map); // the program holds the map
        Ok(Self {
            _ebpf: ebpf,
            cfg,
            counts,
            total,
            base: vec![Count::default(); ports.len()],
            srtp: false,
        })
    }

    /// Counts (and drops) from now on, as step `step`.
    pub fn start(&mut self, step: u32) -> Result<()> {
        for (i, b) in self.base.iter_mut().enumerate() {
            *b = read_count(&self.counts, i as u32)?;
        }
        self.cfg
            .set(
                0,
                Cfg {
                    on: 1,
                    step,
                    srtp: self.srtp as u32,
                },
                0,
            )
            .context("turning the sink on")
    }

    /// Everything counted so far, all calls.
    pub fn total(&self) -> Result<u64> {
        Ok(self.total.get(&0, 0)?.iter().sum())
    }

    /// Stops counting (packets go to the sockets again); returns each call's counts of the step.
    pub fn stop(&mut self) -> Result<Vec<Count>> {
        self.cfg
            .set(0, Cfg::default(), 0)
            .context("turning the sink off")?;
        let mut out = Vec::with_capacity(self.base.len());
        for (i, b) in self.base.iter().enumerate() {
            let now = read_count(&self.counts, i as u32)?;
            out.push(Count {
                received: now.received - b.received,
                mangled: now.mangled - b.mangled,
                late: now.late - b.late,
            });
        }
        Ok(out)
    }
}

fn read_count(map: &PerCpuArray<MapData, Count>, i: u32) -> Result<Count> {
    let per_cpu = map.get(&i, 0)?;
    Ok(per_cpu.iter().fold(Count::default(), |a, c| Count {
        received: a.received + c.received,
        mangled: a.mangled + c.mangled,
        late: a.late + c.late,
    }))
}
