//! cargo xtask: the project's own tooling.
//!
//! `cargo xtask bench forward` measures plain RTP forwarding through sluice, rtpengine and a
//! baseline relay side by side (see forward.rs); `loadgen` and `baseline-relay` are the
//! processes it starts.

mod baseline;
mod bencode;
mod child;
mod forward;
mod loadgen;
mod packet;
mod proc_cpu;
mod relays;
mod sdp;
mod sys;

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
    /// Load generator process of `bench forward` (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Loadgen {
        #[arg(long)]
        calls: u32,
    },
    /// Baseline relay process of `bench forward` (setup as one JSON line on stdin).
    #[command(hide = true)]
    BaselineRelay,
}

#[derive(Subcommand)]
enum Bench {
    /// Plain RTP forwarding: max rate at <1% loss, CPU per packet, added latency.
    Forward(forward::ForwardArgs),
}

fn main() -> ExitCode {
    let result: Result<()> = match Cli::parse().cmd {
        Cmd::Bench {
            which: Bench::Forward(args),
        } => forward::run(args),
        Cmd::Loadgen { calls } => loadgen::run(calls),
        Cmd::BaselineRelay => baseline::run(),
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
