//! The baseline relay (`xtask baseline-relay`): the floor of what a userspace UDP relay costs on
//! this machine. One socket pair per call, level-triggered epoll, recvmmsg/sendmmsg batches of
//! 32, fixed peers from the setup (no latching), no stats, one thread.
//!
//! Setup arrives as one JSON line on stdin, the bound ports go back as one JSON line on stdout;
//! then it relays until stdin is closed or readable again, so it never outlives the bench.

use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::sys::{self, Epoll, RecvBatch};
use sluice_relay::mmsg::SendBatch;

const BATCH: usize = 32;
/// Batches per socket per wakeup: enough to drain a burst, few enough to stay fair.
const ROUNDS: usize = 4;
const STDIN_TOKEN: u64 = u64::MAX;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct CallSetup {
    /// Where packets arriving on side B go (the caller, as its SDP says).
    pub a_peer: SocketAddrV4,
    /// Where packets arriving on side A go (the callee).
    pub b_peer: SocketAddrV4,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Setup {
    pub calls: Vec<CallSetup>,
    /// Address to bind both sides on (default 127.0.0.1).
    #[serde(default)]
    pub bind: Option<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub struct CallPorts {
    /// The caller sends here.
    pub a: SocketAddrV4,
    /// The callee sends here.
    pub b: SocketAddrV4,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Bound {
    pub calls: Vec<CallPorts>,
}

struct Pair {
    a: UdpSocket,
    b: UdpSocket,
    a_peer: SocketAddrV4,
    b_peer: SocketAddrV4,
}

pub fn run() -> Result<()> {
    let stdin = io::stdin();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the setup line")?;
    let setup: Setup = serde_json::from_str(&line).context("parsing the setup line")?;
    let epoll = Epoll::new()?;
    let mut pairs = Vec::with_capacity(setup.calls.len());
    let mut bound = Vec::with_capacity(setup.calls.len());
    let ip = setup.bind.unwrap_or(Ipv4Addr::LOCALHOST);
    for (i, c) in setup.calls.iter().enumerate() {
        let a = sys::bind_v4(ip).with_context(|| format!("binding call {i} on {ip}"))?;
        let b = sys::bind_v4(ip).with_context(|| format!("binding call {i} on {ip}"))?;
        epoll.add(a.as_raw_fd(), 2 * i as u64)?;
        epoll.add(b.as_raw_fd(), 2 * i as u64 + 1)?;
        bound.push(CallPorts {
            a: sys::local_v4(&a)?,
            b: sys::local_v4(&b)?,
        });
        pairs.push(Pair {
            a,
            b,
            a_peer: c.a_peer,
            b_peer: c.b_peer,
        });
    }
    epoll.add(stdin.as_raw_fd(), STDIN_TOKEN)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&Bound { calls: bound })?)?;
    out.flush()?;

    let mut events = Epoll::events(64);
    let mut rx = RecvBatch::new(BATCH);
    let mut tx = SendBatch::new(BATCH);
    // Ends when the bench closes our stdin (or dies, which closes it too).
    loop {
        let n = epoll.wait(&mut events, -1)?;
        for ev in &events[..n] {
            let token = ev.u64;
            if token == STDIN_TOKEN {
                return Ok(());
            }
            let p = &pairs[(token / 2) as usize];
            let (from, to, peer) = if token % 2 == 0 {
                (&p.a, &p.b, p.b_peer)
            } else {
                (&p.b, &p.a, p.a_peer)
            };
            for _ in 0..ROUNDS {
                let k = rx.recv(from.as_raw_fd())?;
                if k == 0 {
                    break;
                }
                // What the kernel does not take (full send buffer) is dropped, as any relay
                // would under overload.
                tx.send(to.as_raw_fd(), (0..k).map(|i| (rx.packet(i), peer)))?;
                if k < BATCH {
                    break;
                }
            }
        }
    }
}
