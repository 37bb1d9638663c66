//! cargo xtask: the project's own tooling.
//!
//! `cargo xtask bench forward` measures plain RTP forwarding through sluice, rtpengine and a
//! baseline relay side by side (see forward.rs); with `--netns` it does so across network
//! namespaces, adding sluice's XDP path and a bare XDP redirect (netns.rs, bare.rs).
//! `loadgen`, `baseline-relay` and `bare-xdp` are the processes it starts.

mod bare;
mod baseline;
mod bridge_bench;
mod child;
mod forward;
mod fresh_machine;
mod loadgen;
mod netns;
mod ng_bench;
mod packet;
mod proc_cpu;
mod relays;
mod sdp;
mod sink;
mod sip_bench;
mod srtp_bench;
mod sys;
mod transcode_bench;
mod xdpgen;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sluice project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmarks, side by side with peers.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
    /// The README's two commands on a fresh Debian 12 root (debootstrap: Rust, gcc, make,
    /// pkg-config, Python; no -dev packages), from a clean clone of HEAD. Needs root.
    FreshMachine {
        /// Where the debootstrapped root lives (kept between runs).
        #[arg(long, default_value = "/var/tmp/sluice-fresh")]
        root: std::path::PathBuf,
        /// Only command 1 (build and run), not the test suite.
        #[arg(long)]
        build_only: bool,
    },
    /// Load generator process of `bench forward` (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Loadgen {
        #[arg(long)]
        calls: u32,
        #[command(flatten)]
        sides: loadgen::NetnsSides,
    },
    /// Baseline relay process of `bench forward` (setup as one JSON line on stdin).
    #[command(hide = true)]
    BaselineRelay,
    /// Bare XDP redirect of `bench forward --netns`: holds the program attached to both
    /// interfaces (each redirects to the other) until stdin closes.
    #[command(hide = true)]
    BareXdp {
        #[arg(long)]
        object: std::path::PathBuf,
        /// Exactly two interfaces.
        #[arg(long, num_args = 1, required = true)]
        iface: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Plain RTP forwarding: max rate at <1% loss, CPU per packet, added latency; on loopback,
    /// or with --netns across caller/relay/callee namespaces (XDP paths included).
    Forward(forward::ForwardArgs),
    /// SRTP protect/unprotect per profile and core, against libsrtp2 (srtp_bench.rs).
    Srtp(srtp_bench::SrtpArgs),
    /// Plain RTP -> SDES-SRTP bridging through sluice and rtpengine (bridge_bench.rs).
    Bridge(bridge_bench::BridgeArgs),
    /// Bidirectional G.711 <-> Opus channels per core: sluice's Transcoder, libopus alone and
    /// rtpengine (transcode_bench.rs).
    Transcode(transcode_bench::TranscodeArgs),
    /// Calls set up and torn down over rtpengine's ng protocol (offer, answer, delete):
    /// calls/s and CPU per call, sluice vs rtpengine (ng_bench.rs).
    Ng(ng_bench::NgArgs),
    /// SIP calls per second with zero failures (RFC 7502) through sluice's B2BUA and through
    /// Kamailio + rtpengine, with RTP and signalling only: CPU per call, memory (sip_bench.rs).
    Sip(sip_bench::SipArgs),
}

fn main() -> ExitCode {
    let result: Result<()> = match Cli::parse().cmd {
        Cmd::Bench {
            which: Bench::Forward(args),
        } => forward::run(args),
        Cmd::Bench {
            which: Bench::Ng(args),
        } => ng_bench::run(args),
        Cmd::Bench {
            which: Bench::Sip(args),
        } => sip_bench::run(args),
        Cmd::Bench {
            which: Bench::Srtp(args),
        } => srtp_bench::run(args),
        Cmd::Bench {
            which: Bench::Bridge(args),
        } => bridge_bench::run(args),
        Cmd::Bench {
            which: Bench::Transcode(args),
        } => transcode_bench::run(args),
        Cmd::FreshMachine { root, build_only } => {
            fresh_machine::run(fresh_machine::Args { root, build_only })
        }
        Cmd::Loadgen { calls, sides } => loadgen::run(calls, sides),
        Cmd::BaselineRelay => baseline::run(),
        Cmd::BareXdp { object, iface } => match iface.as_slice() {
            [a, b] => bare::run(&object, a, b),
            _ => Err(anyhow::anyhow!("bare-xdp needs exactly two --iface")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes is the useful part; a backtrace of xtask itself is not.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
