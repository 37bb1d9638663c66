//! The ng protocol on UDP (TCP: [`super::tcp`]): `<cookie> <dictionary>` in, `<cookie> <reply>` out, through the
//! [`CookieCache`] so that a retransmission never runs twice.
//!
//! One thread per socket handles requests in arrival order: a request costs the session layer
//! tens of microseconds, less than handing it to another thread and back would (measured with
//! `cargo xtask bench ng`: 6 thread switches per call were a quarter of the CPU). A copy of a
//! request that arrives while the first is handled waits in the socket buffer and is answered
//! from the cache, with the first one's reply.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sluice_relay::clock::now_ns;

use super::bencode::Value;
use super::cookie::{CookieCache, Lookup};
use super::handler;
use crate::session::Sessions;

/// The largest request accepted. An offer with a dozen media sections and ICE candidates is
/// under 8 KB; a datagram that fills this buffer is refused (it may have been truncated).
pub const MAX_DATAGRAM: usize = 65_000;
/// How often a waiting server looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Binds `addr` now, so that a taken port fails the start.
pub fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let sock =
        UdpSocket::bind(addr).with_context(|| format!("cannot listen for ng on udp:{addr}"))?;
    sock.set_read_timeout(Some(POLL))?;
    Ok(sock)
}

/// Serves until `stop` is set (checked at least every 200 ms).
pub fn serve(sock: UdpSocket, sessions: Arc<Sessions>, stop: Arc<AtomicBool>) {
    let mut cache = CookieCache::default();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        // With a read timeout set, any signal (SIGTERM at shutdown) gives
                        // EINTR here whatever SA_RESTART says (signal(7)): not a failure.
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "ng socket receive failed");
                continue;
            }
        };
        let datagram = &buf[..n];
        let Some(space) = datagram.iter().position(|&b| b == b' ') else {
            tracing::debug!(%peer, len = n, "ng datagram without a cookie dropped");
            continue;
        };
        let (cookie, body) = (&datagram[..space], &datagram[space + 1..]);
        let body = if n > MAX_DATAGRAM {
            Err(format!("Message too large (over {MAX_DATAGRAM} bytes)"))
        } else {
            decode(body)
        };
        match respond(&mut cache, &sessions, peer, cookie, body, &mut out) {
            Reply::Cached(reply) => send(&sock, &reply, peer),
            Reply::Held => {}
            Reply::Fresh { copies } => {
                for _ in 0..=copies {
                    send(&sock, &out, peer);
                }
            }
        }
    }
}

/// What a request gets, through the cache.
pub(super) enum Reply {
    /// A retransmission: this reply again.
    Cached(Vec<u8>),
    /// A copy of a request still being handled (only where requests run in parallel).
    Held,
    /// Handled now: the reply is in `out`, to be sent `copies + 1` times (once per copy held).
    Fresh { copies: usize },
}

/// Answers one request (`body` decoded, or why not) from `peer` with `cookie`, writing
/// `<cookie> <reply>` into `out` unless the cache already holds the reply.
pub(super) fn respond(
    cache: &mut CookieCache,
    sessions: &Sessions,
    peer: SocketAddr,
    cookie: &[u8],
    body: Result<Value, String>,
    out: &mut Vec<u8>,
) -> Reply {
    match cache.begin(peer, cookie, now_ns()) {
        Lookup::Cached(reply) => {
            tracing::debug!(%peer, cookie = %String::from_utf8_lossy(cookie), "ng retransmission answered from the cache");
            Reply::Cached(reply)
        }
        // Cannot happen with one thread per socket; a later parallel server would hold it.
        Lookup::InFlight => Reply::Held,
        Lookup::New => {
            let started = std::time::Instant::now();
            let (method, reply) = match body {
                Ok(msg) => (command_label(&msg), handler::handle(sessions, &msg)),
                Err(reason) => ("malformed", handler::error(&reason)),
            };
            let ok = matches!(reply.get_str("result").as_deref(), Some("ok" | "pong"));
            crate::metrics::request("ng", method, ok, started.elapsed());
            out.clear();
            out.extend_from_slice(cookie);
            out.push(b' ');
            reply.encode(out);
            Reply::Fresh {
                copies: cache.finish(peer, cookie, out, now_ns()),
            }
        }
    }
}

fn send(sock: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = sock.send_to(reply, peer) {
        tracing::warn!(%peer, error = %e, "ng reply not sent");
    }
}

/// The command as a metrics label: one of a fixed set, whatever the request says.
fn command_label(msg: &Value) -> &'static str {
    const KNOWN: [&str; 7] = [
        "ping",
        "offer",
        "answer",
        "delete",
        "query",
        "list",
        "statistics",
    ];
    let cmd = msg
        .get_str("command")
        .unwrap_or_default()
        .to_ascii_lowercase();
    KNOWN.into_iter().find(|k| *k == cmd).unwrap_or("other")
}

/// The message after the cookie: a bencoded dictionary, or a JSON object.
fn decode(body: &[u8]) -> Result<Value, String> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let body = &body[start..];
    match body.first() {
        Some(b'{') => Value::from_json(body),
        Some(_) => Value::decode(body).map_err(|e| e.to_string()),
        None => Err("empty message".into()),
    }
}
