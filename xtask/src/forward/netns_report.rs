//! The report of `bench forward --netns`: the table, the targets with a verdict each,
//! and how it was measured.

use std::fmt::Write as _;
use std::time::Duration;

use super::{
    LOSS_LIMIT, MIN_SEND_SHARE, NETNS_PORTS, Plan, Run, STEP_TRIES, Step, fmt_int, fmt_rate,
    machine, us,
};
use crate::netns::{HARNESS_CPU, RELAY_CPU};

/// Issue 3's targets on this machine.
const TARGET_CPU_RATIO: f64 = 15.0;
/// --srtp: the worker path bridging RTP -> SRTP, per CPU, against rtpengine doing the same.
const TARGET_SRTP_CPU_RATIO: f64 = 3.0;
const TARGET_BARE_SHARE: f64 = 0.75;

const XDP: &str = "sluice-xdp";
const RTPENGINE: &str = "rtpengine";
const BARE: &str = "bare-redirect";

fn find<'a>(runs: &'a [Run], relay: &str, calls: u32) -> Option<&'a Run> {
    runs.iter()
        .find(|r| r.relay == relay && r.calls == calls && r.error.is_none())
}

/// Packets per CPU-second at a step.
fn pkts_per_cpu_s(s: &Step) -> Option<f64> {
    s.cpu_per_packet().filter(|&c| c > 0.0).map(|c| 1e9 / c)
}

/// Delivered pps at the highest passing step, and whether the relay's limit lies above it
/// (no step failed on loss: top of the ladder, or the generator fell short).
fn rate_of(run: &Run) -> Option<(f64, bool)> {
    run.best()
        .map(|s| (s.report.delivered_pps(), run.first_failure().is_none()))
}

/// The highest ladder rate at which both runs passed.
fn common_rate(a: &Run, b: &Run) -> Option<u32> {
    let ra = a.best()?.report.rate;
    let rb = b.best()?.report.rate;
    Some(ra.min(rb))
}

#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    Met,
    NotMet,
    Undecided(&'static str),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Met => write!(f, "**met**"),
            Verdict::NotMet => write!(f, "**not met**"),
            Verdict::Undecided(why) => write!(f, "**not decided** ({why})"),
        }
    }
}

/// Verdict on "v / base >= target" where either side's limit may only be known as a lower
/// bound (`*_above`: the relay passed every step it ran).
pub(super) fn bounded_verdict(v: (f64, bool), base: (f64, bool), target: f64) -> Verdict {
    let ratio = v.0 / base.0;
    match (v.1, base.1) {
        (false, false) => {
            if ratio >= target {
                Verdict::Met
            } else {
                Verdict::NotMet
            }
        }
        // v's true limit is higher: the ratio is a lower bound.
        (true, false) if ratio >= target => Verdict::Met,
        (true, false) => Verdict::Undecided("sluice-xdp's own limit was not reached"),
        // base's true limit is higher: the ratio is an upper bound.
        (false, true) if ratio < target => Verdict::NotMet,
        (false, true) => Verdict::Undecided("bare redirect's own limit was not reached"),
        (true, true) => Verdict::Undecided("neither limit was reached: the generator was"),
    }
}

fn cpu_cell(s: Option<&Step>) -> String {
    match s {
        Some(s) => match (s.cpu_per_packet(), s.napi_per_packet()) {
            (Some(t), Some(n)) => format!("{} ({} + {})", fmt_int(t), fmt_int(t - n), fmt_int(n)),
            _ => "-".into(),
        },
        None => "-".into(),
    }
}

pub(super) fn render(
    plan: &Plan,
    runs: &[Run],
    cmdlines: &[(&'static str, String)],
    notes: &[String],
    took: Duration,
    noise: &str,
) -> String {
    let mut o = String::new();
    let cr = fmt_rate(plan.cpu_rate);
    let top = *plan.rates.last().expect("plan has rates");
    if plan.srtp {
        let _ = writeln!(
            o,
            "## bench forward --netns --srtp: plain RTP -> SDES-SRTP (AES_CM_128_HMAC_SHA1_80) bridging caller ns -> relay ns -> callee ns (veth), 172-byte RTP in, 182-byte SRTP out\n"
        );
    } else {
        let _ = writeln!(
            o,
            "## bench forward --netns: RTP relaying caller ns -> relay ns -> callee ns (veth), 172-byte packets\n"
        );
    }
    let _ = writeln!(
        o,
        "| relay | calls | max rate <1% loss | delivered pps | loss at next step | CPU ns/pkt @{cr}: total (process + NAPI) | CPU ns/pkt @max | packets per CPU-second @{cr} | added latency p50 / p99 (us) | mangled / reordered | pps vs bare-redirect | packets/CPU-s vs rtpengine @{cr} |"
    );
    let _ = writeln!(
        o,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        if let Some(row) = r.failed_row(12) {
            let _ = writeln!(o, "{row}");
            continue;
        }
        let best = r.best();
        let max_rate = r.max_rate_cell(top, plan.rates[0], "harness limit");
        let delivered = best.map_or("-".into(), |s| fmt_int(s.report.delivered_pps()));
        let next = r.first_failure().map_or("-".into(), |s| {
            let sent = if s.sent_in_full() {
                String::new()
            } else {
                format!(" (sent {})", fmt_int(s.report.sent_pps()))
            };
            format!(
                "{:.1}% @{}{sent}",
                s.report.loss() * 100.0,
                fmt_rate(s.report.rate)
            )
        });
        let at_cpu = r.at_rate(plan.cpu_rate);
        let lat = match (&r.direct, &r.through) {
            (Some(d), Some(t)) if t.count > 0 => format!(
                "{} / {}",
                us(t.p50_ns as i64 - d.p50_ns as i64),
                us(t.p99_ns as i64 - d.p99_ns as i64)
            ),
            _ => "-".into(),
        };
        let mangled: u64 = r.reports().map(|x| x.mangled).sum();
        let reordered: u64 = r.reports().map(|x| x.reordered).sum();
        let vs_bare = if r.relay == BARE {
            "base".into()
        } else {
            match (rate_of(r), find(runs, BARE, r.calls).and_then(rate_of)) {
                (Some(v), Some(b)) => super::rate_ratio(Some(v), Some(b)),
                _ => "-".into(),
            }
        };
        let vs_rtpe = if r.relay == RTPENGINE {
            "base".into()
        } else {
            let base = find(runs, RTPENGINE, r.calls)
                .and_then(|b| b.at_rate(plan.cpu_rate))
                .and_then(pkts_per_cpu_s);
            match (at_cpu.and_then(pkts_per_cpu_s), base) {
                (Some(v), Some(b)) => format!("{:.1}x", v / b),
                _ => "-".into(),
            }
        };
        let _ = writeln!(
            o,
            "| {} | {} | {max_rate} | {delivered} | {next} | {} | {} | {} | {lat} | {mangled} / {reordered} | {vs_bare} | {vs_rtpe} |",
            r.relay,
            r.calls,
            cpu_cell(at_cpu),
            cpu_cell(best),
            at_cpu.and_then(pkts_per_cpu_s).map_or("-".into(), fmt_int),
        );
    }

    render_targets(&mut o, plan, runs);

    let _ = writeln!(o, "\n### Detail\n");
    let _ = writeln!(
        o,
        "| relay | calls | direct p50 / p99 (us) | through relay p50 / p99 / max (us) | probes lost | veth drops relay -> callee (ladder) | delivered pps @max: sent pps |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let (Some(d), Some(t)) = (&r.direct, &r.through) else {
            continue;
        };
        let drops: Option<u64> = r.steps.iter().map(|s| s.ring_drops).sum();
        let at_max = r.best().map_or("-".into(), |s| {
            format!(
                "{}: {}",
                fmt_int(s.report.delivered_pps()),
                fmt_int(s.report.sent_pps())
            )
        });
        let _ = writeln!(
            o,
            "| {} | {} | {} / {} | {} / {} / {} | {} + {} | {} | {at_max} |",
            r.relay,
            r.calls,
            us(d.p50_ns as i64),
            us(d.p99_ns as i64),
            us(t.p50_ns as i64),
            us(t.p99_ns as i64),
            us(t.max_ns as i64),
            d.lost,
            t.lost,
            drops.map_or("-".into(), |d| fmt_int(d as f64)),
        );
    }

    let _ = writeln!(o, "\n### How it was measured\n");
    let rates: Vec<String> = plan.rates.iter().map(|&r| fmt_rate(r)).collect();
    let _ = writeln!(
        o,
        "- Topology: caller ns -> veth -> relay ns -> veth -> callee ns, private addresses (10.201.0.0/16) inside the namespaces only; every relay binds its media on 10.201.0.1 (relay ns lo) and runs alone in the relay ns, ports {}-{}. Forwarding on in the relay ns, GRO on for the four veths of the relay path (so each has NAPI), `tx off` on the sending veths, static neighbours, IPv6 off. A third veth pair joins caller and callee directly: the latency baseline.",
        NETNS_PORTS.0, NETNS_PORTS.1
    );
    let _ = writeln!(
        o,
        "- Placement (2 CPUs): CPU {HARNESS_CPU}: the load generator (one process: sender, sink reader and every callee socket), the bench, and the NAPI threads of the caller/callee veths; CPU {RELAY_CPU}: the relay process (all its threads) and the NAPI threads of the relay's two veths. Threaded NAPI (`/sys/class/net/DEV/threaded` = 1, set again after every XDP attach, which recreates a veth's NAPI) on all four veths of the relay path."
    );
    let _ = writeln!(
        o,
        "- CPU counted for a relay: on-CPU time of every thread of the relay process plus the NAPI kthreads (`napi/DEV-ID`) of the relay ns's two veths, from /proc/PID/task/*/schedstat and /proc/PID/schedstat, over each step, divided by packets delivered intact. The NAPI part is the softirq work of receiving on the relay's veths: for the XDP paths it is all of the forwarding (program, redirect, transmit into the callee veth's ring); for userspace relays it is the receive up to the socket queue (skb, GRO, IP, UDP). The callee veth's NAPI runs on CPU {HARNESS_CPU} and is the harness's. Shown as total (process + NAPI). Packets per CPU-second = 10^9 / total."
    );
    if plan.socket_harness {
        let _ = writeln!(
            o,
            "- Harness (--socket-harness): ladder steps sent by one caller socket with sendmmsg (batches of 32 on a timer) and received by one socket per call (every packet checked in userspace). The relay veth receives skbs from a local socket, which veth must copy into a page before XDP can run on them."
        );
    } else {
        let _ = writeln!(
            o,
            "- Harness: ladder steps are sent by the generator's XDP program (xtask/bpf/gen.c) run with BPF_PROG_RUN in live-frames mode for the whole step inside the caller ns: each run writes the next call's packet (headers, RTP sequence/timestamp/SSRC, step, call, counter, send time, UDP checksum) and redirects it into the caller veth, so the relay veth receives xdp_frames as a NIC driver hands them over. Packets are due in groups of 32 every 32/rate s (like one sendmmsg); a generator that fell behind catches up at twice the rate, never in one burst, and skips what it owes beyond 256. They are counted by the XDP sink (xtask/bpf/sink.c) on the callee veth: UDP length, RTP version and type, SSRC and call index of the call whose port it reached (else mangled), step id (else late), then dropped. Reordering is not checked in these steps; warm-up and latency probes go through sockets with every packet checked."
        );
    }
    let _ = writeln!(
        o,
        "- Ladder (pps, all calls together, one direction caller -> relay -> callee): {}; {:.1} s per step. A step fails at >= {:.0}% loss in two runs in a row. Loss is located: drops at the relay's ingress veth ring (its NAPI did not keep up) and at its sockets (Udp InErrors in the relay ns) are the relay's; drops at the callee veth's ring are the harness's (its CPU did not drain it). A step whose loss is the harness's, or where the generator sent < {:.0}% of the offered rate, is run again (up to {STEP_TRIES} tries) and then ends the ladder as harness-limited; a relay losing >= {:.0}% on its own fails the step even if the generator sent less (the table then gives the rate sent).",
        rates.join(", "),
        plan.step_secs,
        LOSS_LIMIT * 100.0,
        MIN_SEND_SHARE * 100.0,
        LOSS_LIMIT * 100.0,
    );
    if plan.srtp {
        let _ = writeln!(
            o,
            "- --srtp: each call's callee-side Offer asks sluice for `srtp: SRTP_OFFER` (rtpengine: `transport-protocol: RTP/SAVP`); the callee answers RTP/SAVP with an `a=crypto` line of its own key for the offered AES_CM_128_HMAC_SHA1_80, and its priming packets are SRTP protected with that key (a relay latches only on packets that authenticate). sluice-xdp runs `--workers 1 --worker-cores {RELAY_CPU}`: once settled the stream is a WORKER flow (XDP looks up the route, redirects to the AF_XDP worker with the next hop as XDP metadata, and the worker protects the packet and sends it from its TX ring; where the kernel refuses `bpf_xdp_adjust_meta`, and always for sluice-xdp-nometa (`--xdp-metadata off`), the program writes the next hop into its route cache map instead, where the worker reads it: the worker summary says which); the worker thread is a thread of the sluice process, so its CPU is counted. The sink and the callee sockets expect 182 bytes (172 + 10-byte tag) and check what SRTP leaves in clear (RTP version, payload type, SSRC = the call's); the tag is not verified, step and call index are encrypted, so late packets are not told apart and reordering is not checked; latency probes through the relay are matched by RTP sequence number."
        );
    }
    let _ = writeln!(
        o,
        "- Before measuring: each callee sends 3 packets to the relay's callee-facing port (so sluice latches both sides), a warm-up proves every call forwards, and for sluice-xdp the bench waits until Statistics counts two kernel flows per call and Query says `kernel_forwarded` for every call, then proves every call forwards again."
    );
    let _ = writeln!(
        o,
        "- Latency: {} probes per path, one in flight, 1 ms apart; direct = caller ns -> callee ns over the direct veth pair (one veth hop), through = via the relay (two veth hops + relay); added = through minus direct, per percentile.",
        plan.latency_samples
    );
    let _ = writeln!(
        o,
        "- bare-redirect: xtask/bpf/bare_redirect.c, `bpf_redirect_map` on a devmap keyed by ingress ifindex, nothing else (no parsing, no rewrite); the caller addresses 10.201.9.9 (owned by the callee ns) and the callee veth carries the relay ingress veth's MAC, so untouched frames reach the callee sockets."
    );
    let _ = writeln!(
        o,
        "- Threads: rtpengine --num-threads={} (its housekeeping threads counted too); sluice's userspace path is one thread (its tokio control threads counted too); baseline is one thread.",
        plan.rtpengine_threads
    );
    for (name, cmd) in cmdlines {
        let _ = writeln!(o, "- `{name}`: `{cmd}`");
    }
    for r in runs {
        for n in &r.notes {
            let _ = writeln!(o, "- {} calls={}: {n}", r.relay, r.calls);
        }
    }
    for n in notes {
        let _ = writeln!(o, "- {n}");
    }
    let _ = writeln!(
        o,
        "- Machine: {}; run took {:.0} s. Other work on the machine skews the figures: {}.",
        machine(),
        took.as_secs_f64(),
        noise
    );
    super::render_warnings(&mut o, runs);
    o
}

fn render_targets(o: &mut String, plan: &Plan, runs: &[Run]) {
    let cr = fmt_rate(plan.cpu_rate);
    let target = if plan.srtp {
        let _ = writeln!(
            o,
            "\n### Target: RTP -> SRTP through the worker path >= {TARGET_SRTP_CPU_RATIO:.0}x rtpengine per CPU\n"
        );
        TARGET_SRTP_CPU_RATIO
    } else {
        let _ = writeln!(o, "\n### Targets (issue 3)\n");
        TARGET_CPU_RATIO
    };
    for &calls in &plan.calls {
        let xdp = find(runs, XDP, calls);
        let rtpe = find(runs, RTPENGINE, calls);
        let bare = find(runs, BARE, calls);
        let _ = writeln!(o, "calls={calls}:");
        // Packets per CPU-second, sluice XDP vs rtpengine: at the same offered rate, and each
        // at its highest passing rate (where a relay is most efficient: per-wakeup costs are
        // shared by the most packets).
        let cpu_ratio = |what: String, x: Option<f64>, b: Option<f64>, o: &mut String| match (x, b)
        {
            (Some(x), Some(b)) => {
                let ratio = x / b;
                let v = if ratio >= target {
                    Verdict::Met
                } else {
                    Verdict::NotMet
                };
                let _ = writeln!(
                    o,
                    "- packets per CPU-second {what}, sluice-xdp / rtpengine: {} / {} = **{ratio:.1}x** (target >= {target:.0}x): {v}",
                    fmt_int(x),
                    fmt_int(b)
                );
            }
            _ => {
                let _ = writeln!(
                    o,
                    "- packets per CPU-second {what}, sluice-xdp / rtpengine: not measured (a run failed or did not reach the rate)"
                );
            }
        };
        let at =
            |r: Option<&Run>, rate: u32| r.and_then(|r| r.at_rate(rate)).and_then(pkts_per_cpu_s);
        cpu_ratio(
            format!("@{cr} (same offered rate)"),
            at(xdp, plan.cpu_rate),
            at(rtpe, plan.cpu_rate),
            o,
        );
        fn best(r: Option<&Run>) -> Option<&Step> {
            r.and_then(Run::best)
        }
        let label = match (best(xdp), best(rtpe)) {
            (Some(x), Some(b)) => format!(
                "each at its highest passing rate ({} vs {})",
                fmt_rate(x.report.rate),
                fmt_rate(b.report.rate)
            ),
            _ => "each at its highest passing rate".to_string(),
        };
        cpu_ratio(
            label,
            best(xdp).and_then(pkts_per_cpu_s),
            best(rtpe).and_then(pkts_per_cpu_s),
            o,
        );
        if plan.srtp {
            continue; // no bare redirect can bridge to SRTP
        }
        // Delivered pps at <1% loss, sluice XDP vs bare redirect.
        match (xdp.and_then(rate_of), bare.and_then(rate_of)) {
            (Some(x), Some(b)) => {
                let v = bounded_verdict(x, b, TARGET_BARE_SHARE);
                let _ = writeln!(
                    o,
                    "- delivered pps at <1% loss, sluice-xdp / bare-redirect: {} / {} = **{}** (target >= {:.0}%): {v}",
                    fmt_int(x.0),
                    fmt_int(b.0),
                    super::rate_ratio(Some(x), Some(b)),
                    TARGET_BARE_SHARE * 100.0
                );
            }
            _ => {
                let _ = writeln!(
                    o,
                    "- delivered pps, sluice-xdp / bare-redirect: not measured (a run failed)"
                );
            }
        }
        // The same question answered by CPU cost, which the generator's limit does not hide.
        if let (Some(x), Some(b)) = (xdp, bare)
            && let Some(rate) = common_rate(x, b)
            && let (Some(xs), Some(bs)) = (x.at_rate(rate), b.at_rate(rate))
            && let (Some(xe), Some(be)) = (pkts_per_cpu_s(xs), pkts_per_cpu_s(bs))
        {
            let share = xe / be;
            let _ = writeln!(
                o,
                "- by CPU cost instead (at {}, the highest rate both passed): sluice-xdp {} ns/pkt vs bare-redirect {} ns/pkt, i.e. sluice-xdp forwards **{:.0}%** of the bare redirect's packets per CPU-second ({} the 75% target if the relay CPU were the bottleneck)",
                fmt_rate(rate),
                fmt_int(1e9 / xe),
                fmt_int(1e9 / be),
                share * 100.0,
                if share >= TARGET_BARE_SHARE {
                    "meets"
                } else {
                    "misses"
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_verdicts() {
        assert_eq!(
            bounded_verdict((80.0, false), (100.0, false), 0.75),
            Verdict::Met
        );
        assert_eq!(
            bounded_verdict((70.0, false), (100.0, false), 0.75),
            Verdict::NotMet
        );
        // sluice-xdp not at its limit, already >= 75%: met.
        assert_eq!(
            bounded_verdict((80.0, true), (100.0, false), 0.75),
            Verdict::Met
        );
        assert!(matches!(
            bounded_verdict((70.0, true), (100.0, false), 0.75),
            Verdict::Undecided(_)
        ));
        // bare not at its limit: a ratio below target only gets worse.
        assert_eq!(
            bounded_verdict((70.0, false), (100.0, true), 0.75),
            Verdict::NotMet
        );
        assert!(matches!(
            bounded_verdict((100.0, true), (100.0, true), 0.75),
            Verdict::Undecided(_)
        ));
    }
}
